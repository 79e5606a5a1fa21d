"""What a fine-tuning run is: ``TuneArgs``, saved with its output and checked when a run resumes.

A leaf module (the trainer, the checkpoint and the CLI read it; it reads none of them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llamanas.config import from_dict_strict, resumable
from llamanas.errors import LlamanasError, unknown
from llamanas.model.device import DTYPE_CHOICES
from llamanas.supernet.importance import check_importance
from llamanas.supernet.routing import ROUTERS
from llamanas.tuning.sampling import SCHEDULES, STRATEGIES, Strategy

DISTILL_TOKENS = ("all", "response")
PRECISIONS = ("auto", "fp32", "bf16")
ROUTINGS = ("none", *ROUTERS)


@dataclass
class TuneArgs:
    """Everything that defines a fine-tuning run; saved with its output (``training.args``)."""

    data: str = ""
    """Alpaca-format JSON/JSONL file (instruction/input/output records) or a hub dataset id."""
    out: str = resumable("")
    """Output folder: the super-network, its loss curves and, while training, its checkpoint."""
    model: str = "default"
    """Base model: 'default', an HF folder, a hub id, or a super-network folder (not re-ordered)."""
    space: str | None = None
    """YAML/JSON file narrowing the search space; default: the model's default space."""
    strategy: str = "alternate"
    """full (plain fine-tuning) | alternate (the full network and one sampled sub-network on alternating
    steps, the paper) | sandwich (largest, smallest and ``num_random`` sampled sub-networks every step)."""
    schedule: str = "uniform"
    """Which sub-networks are sampled when: uniform | progressive (OFA shrinking) | delayed (DεpS: the full
    network only at first) | complexity (more steps for high-loss sizes)."""
    distill: bool = False
    """Sub-networks learn from the full network's logits (KL) instead of the labels."""
    distill_temperature: float = 1.0
    """Softmax temperature of the distillation."""
    distill_tokens: str = "all"
    """``all``: distil on every non-padding position (prompt too: the teacher's logits need no labels,
    ~3x the signal of an Alpaca example); ``response``: only where the labels have a loss."""
    num_random: int = 2
    """Random sub-networks per step with ``sandwich`` (besides the largest and the smallest)."""
    lora: bool = False
    """Train LoRA adapters on every decoder linear instead of all weights; merged into the output."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    routing: str = "none"
    """Sub-networks get their own low-rank adapters on the frozen base (``supernet/routing.py``): none |
    split (few-shot NAS: one adapter per choice of the gene whose sub-networks' gradients disagree most) |
    mixture (Mixture-of-Supernets: a router from the architecture to a mixture of ``experts`` adapters) |
    precision (LLM-QFA: one adapter per weight precision, picked by each layer's bits; needs a space with
    precision genes, trained fake-quantized).
    Rank and scale are ``lora_r`` and ``lora_alpha``; extraction merges what a sub-network selects."""
    experts: int = 4
    """``mixture``: the number of adapters the router mixes."""
    split_samples: int = 8
    """``split``: sampled sub-networks whose gradients (on ``split_batches`` training batches, before the
    first step) decide the split."""
    split_batches: int = 2
    """``split``: training batches per sampled sub-network for the gradient matching."""
    ticket_sparsity: float = 0.0
    """SuperTickets: the fraction of every decoder linear's weights pruned by magnitude while the
    super-network trains (0: none); the pruned weights are saved as zeros, so every sub-network keeps the
    ticket (``tuning/tickets.py``)."""
    ticket_start: float = 0.2
    """Fraction of the steps before pruning starts."""
    ticket_end: float = 0.8
    """Fraction of the steps at which the full ``ticket_sparsity`` is reached (cubic schedule between)."""
    ticket_every: int = 10
    """Steps between pruning rounds."""
    steps: int = 200
    """Optimizer steps. On the default model with the 999-record Alpaca demo (batch 8), 140 steps (1.2
    epochs) gave better 80-100% sub-networks than 280 (2.4 epochs over-fit; docs/benchmarks.md)."""
    batch_size: int = 8
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_length: int = 256
    """Tokens per example; longer ones are truncated (the prompt is kept, the response cut)."""
    lr: float | None = None
    """Peak learning rate (default 2e-5, or 2e-4 with LoRA). On the 135M default model, sandwich with
    distillation at 3e-4 gave the best sub-networks of 1e-4, 3e-4 and 6e-4 (docs/benchmarks.md)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup: float = 0.05
    """Fraction of the steps with a linear warm-up; then cosine decay to zero."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0: none)."""
    seed: int = 0
    """Seed of the data order, the sampling and the held-out split."""
    save_every: int = resumable(100)
    """Checkpoint every N steps (0: only at the end); re-running the same command resumes."""
    keep_checkpoint: bool = resumable(False)
    """Keep the last checkpoint (optimizer state included) after training finishes."""
    eval_size: int = 64
    """Examples held out to report final losses of the largest and smallest sub-networks (0: none)."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA with bf16 support, else fp32) | fp32 | bf16."""
    calibration: str | None = None
    """Text for importance ordering; default: the training data when it is a file."""
    num_buckets: int = 4
    """Size buckets for the loss curves and the complexity schedule."""
    delay_fraction: float = 0.3
    """``delayed``: the fraction of steps that trains only the full network."""
    progressive_stages: int = 4
    """``progressive``: how many times the sampled space widens."""
    complexity_power: float = 2.0
    """``complexity``: bucket probability ∝ (loss / lowest bucket loss) ** power."""
    min_params: float = 0.0
    """Sample only sub-networks with at least this fraction of the full network's parameters, embeddings
    included (0: the whole space); the loss-curve buckets count decoder parameters only."""
    dtype: str = "auto"
    """Weights' dtype: auto (bfloat16 on a GPU, float32 on the CPU below 1B parameters, else the
    checkpoint's own) | bfloat16 | float16 | float32. With --lora the base stays in it and the adapters
    train in float32."""
    device: str = resumable("auto")
    """auto (CUDA if present, else cpu) | cpu | cuda | cuda:N; under `accelerate launch`, each process's."""
    importance: str = "rms"
    """Importance score that orders the channels before training: rms | wanda | taylor."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them: less memory (7B with --lora),
    about a third more compute."""

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise unknown("strategy", self.strategy, STRATEGIES)
        if self.schedule not in SCHEDULES:
            raise unknown("schedule", self.schedule, SCHEDULES)
        if self.distill_tokens not in DISTILL_TOKENS:
            raise unknown("distill_tokens", self.distill_tokens, DISTILL_TOKENS)
        if self.precision not in PRECISIONS:
            raise unknown("precision", self.precision, PRECISIONS)
        if self.dtype not in DTYPE_CHOICES:
            raise unknown("dtype", self.dtype, DTYPE_CHOICES)
        check_importance(self.importance)
        for name in ("steps", "batch_size", "grad_accum", "max_length", "lora_r", "num_buckets"):
            if getattr(self, name) < 1:
                raise LlamanasError(f"{name} must be >= 1; got {getattr(self, name)}.")
        for name in ("save_every", "eval_size", "num_random", "weight_decay"):
            if getattr(self, name) < 0:
                raise LlamanasError(f"{name} must be >= 0; got {getattr(self, name)}.")
        if self.lr is not None and self.lr <= 0:
            raise LlamanasError(f"lr must be > 0; got {self.lr}.")
        if not 0.0 <= self.min_params < 1.0:
            raise LlamanasError(
                f"min_params is a fraction of the full network's parameters in [0, 1); got {self.min_params}."
            )
        if not 0.0 <= self.warmup < 1.0:
            raise LlamanasError(f"warmup is a fraction of the steps in [0, 1); got {self.warmup}.")
        if self.distill_temperature <= 0:
            raise LlamanasError(f"distill_temperature must be > 0; got {self.distill_temperature}.")
        if self.distill and self.strategy == Strategy.FULL:
            raise LlamanasError("distill needs sub-networks to teach: use strategy alternate or sandwich.")
        if self.routing not in ROUTINGS:
            raise unknown("routing", self.routing, ROUTINGS)
        if self.routing != "none":
            if self.lora:
                raise LlamanasError(f"routing {self.routing!r} trains its own adapters: drop --lora.")
            if self.strategy == Strategy.FULL:
                raise LlamanasError(
                    f"routing {self.routing!r} routes sub-networks: use strategy alternate or sandwich."
                )
        if not 0.0 <= self.ticket_sparsity < 1.0:
            raise LlamanasError(f"ticket_sparsity is a fraction in [0, 1); got {self.ticket_sparsity}.")
        if not 0.0 <= self.ticket_start <= self.ticket_end <= 1.0:
            raise LlamanasError(
                f"ticket_start and ticket_end must satisfy 0 <= start <= end <= 1; got {self.ticket_start} and "
                f"{self.ticket_end}."
            )
        if self.ticket_every < 1:
            raise LlamanasError(f"ticket_every must be >= 1; got {self.ticket_every}.")
        if self.ticket_sparsity and self.adapters:
            raise LlamanasError(
                "ticket_sparsity prunes the weights that train; with --lora or --routing the base is frozen."
            )
        if self.experts < 2 and self.routing == "mixture":
            raise LlamanasError(f"A mixture needs experts >= 2; got {self.experts}.")
        if self.split_samples < 2 or self.split_batches < 1:
            raise LlamanasError(
                f"split_samples must be >= 2 and split_batches >= 1; got {self.split_samples} and {self.split_batches}."
            )

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.adapters else 2e-5)

    @property
    def adapters(self) -> bool:
        """Only low-rank adapters train (``lora`` or ``routing``): the base stays frozen."""
        return self.lora or self.routing != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TuneArgs:
        return from_dict_strict(cls, d, "TuneArgs keys")
