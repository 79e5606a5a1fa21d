"""InstaTune: fine-tune a pretrained model once into a super-network whose sub-networks are all good.

Slicing alone ruins sub-networks (on SmolLM2-135M, keeping 26 of 30 layers takes ARC-Easy from ~50% to
~32%). InstaTune (LLaMA-NAS) fine-tunes the importance-ordered model on instruction data so that the
full network and its sub-networks are trained together:

- ``full``: plain fine-tuning of the full network only (the baseline).
- ``alternate`` (the paper): the full network and one sampled sub-network on alternating steps.
- ``sandwich`` (BigNAS): the largest, the smallest and ``num_random`` sampled sub-networks every step,
  gradients accumulated before one optimizer step.

``distill`` makes sub-networks learn from the full network's logits (in-place distillation, OFA) while
the full network learns from the labels. ``lora`` trains LoRA adapters (peft) that are sliced together
with the weights they adapt and merged into plain weights at the end. Which sub-networks are drawn when
is the schedule's business (``sampling.py``).

The output folder is an HF checkpoint plus ``llamanas_supernet.json`` (ordered, the search space, how
it was trained); every command takes it as ``--model``. Training runs under ``accelerate``:

    llamanas finetune --data alpaca.json --out runs/supernet                       # CPU or one GPU
    accelerate launch -m llamanas.cli finetune --data alpaca.json --out runs/sn   # several GPUs
"""

from __future__ import annotations

import csv
import functools
import json
import random
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llamanas.errors import LlamanasError, from_dict_strict, unknown
from llamanas.model.data import Example, load_alpaca
from llamanas.model.families import LINEARS
from llamanas.supernet.elastic import ElasticLinear, SuperNet, read_supernet_meta, write_supernet_meta
from llamanas.supernet.space import SearchSpace, SubnetConfig
from llamanas.tuning.sampling import SCHEDULES, Role, Sampler


class Strategy(str, Enum):
    """Which sub-networks train together (module docstring); members equal their CLI/JSON strings."""

    FULL = "full"
    ALTERNATE = "alternate"
    SANDWICH = "sandwich"

    __str__ = str.__str__


STRATEGIES = tuple(s.value for s in Strategy)
DISTILL_TOKENS = ("all", "response")
PRECISIONS = ("auto", "fp32", "bf16")
LORA_TARGETS = LINEARS
CHECKPOINT_DIR = "checkpoint"
# Arguments that may change between an interrupted run and its resumption (they do not change results).
RESUME_FREE = ("out", "save_every", "keep_checkpoint")  # a moved folder still resumes
IGNORE = -100  # label of tokens without loss (prompt and padding)


@dataclass
class TuneArgs:
    """Everything that defines a fine-tuning run; saved with its output (``training.args``)."""

    data: str = ""
    """Alpaca-format JSON/JSONL file (instruction/input/output records) or a hub dataset id."""
    out: str = ""
    """Output folder: the super-network, its loss curves and, while training, its checkpoint."""
    model: str = "default"
    """Base model: 'default', an HF folder, a hub id, or a super-network folder (not re-ordered)."""
    space: str | None = None
    """YAML/JSON file narrowing the search space; default: the model's default space."""
    strategy: str = "alternate"
    """full | alternate | sandwich (see the module docstring)."""
    schedule: str = "uniform"
    """uniform | progressive | delayed | complexity (see ``llamanas.sampling``)."""
    distill: bool = False
    """Sub-networks learn from the full network's logits (KL) instead of the labels."""
    distill_temperature: float = 1.0
    distill_tokens: str = "all"
    """``all``: distil on every non-padding position (prompt too: the teacher's logits need no labels,
    ~3x the signal of an Alpaca example); ``response``: only where the labels have a loss."""
    num_random: int = 2
    """Random sub-networks per step with ``sandwich`` (besides the largest and the smallest)."""
    lora: bool = False
    """Train LoRA adapters on every decoder linear instead of all weights; merged into the output."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 8
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_length: int = 256
    """Tokens per example; longer ones are truncated (the prompt is kept, the response cut)."""
    lr: float | None = None
    """Peak learning rate; default 2e-5, or 2e-4 with LoRA."""
    weight_decay: float = 0.0
    warmup: float = 0.05
    """Fraction of the steps with a linear warm-up; then cosine decay to zero."""
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 100
    """Checkpoint every N steps (0: only at the end); re-running the same command resumes."""
    keep_checkpoint: bool = False
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

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise unknown("strategy", self.strategy, STRATEGIES)
        if self.schedule not in SCHEDULES:
            raise unknown("schedule", self.schedule, SCHEDULES)
        if self.distill_tokens not in DISTILL_TOKENS:
            raise unknown("distill_tokens", self.distill_tokens, DISTILL_TOKENS)
        if self.precision not in PRECISIONS:
            raise unknown("precision", self.precision, PRECISIONS)
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

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.lora else 2e-5)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TuneArgs:
        return from_dict_strict(cls, d, "TuneArgs keys")


# --- data -------------------------------------------------------------------------------------------


def encode(examples: list[Example], tokenizer, max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per example: prompt, response, EOS, truncated to ``max_length``.

    Examples whose prompt fills ``max_length`` have no response token left and are dropped.
    """
    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    responses = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for p, r in zip(prompts, responses, strict=True):
        ids = (p + r + eos)[:max_length]
        if len(ids) > len(p):
            out.append((ids, len(p)))
    if not out:
        raise LlamanasError(
            f"No example has a response token within max_length={max_length}; raise --max-length."
        )
    return out


def collate(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are IGNORE on prompt and padding."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, (ids, plen) in enumerate(items):
        t = torch.tensor(ids)
        input_ids[row, : len(ids)] = t
        mask[row, : len(ids)] = 1
        labels[row, plen : len(ids)] = t[plen:]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class Batches:
    """Length-sorted micro-batches (little padding on CPU), visited in a seeded order per epoch.

    The micro-batch of global index i is a pure function of (seed, i), so resuming needs only the
    step counter, and process r of W takes indices i * W + r.
    """

    def __init__(self, encoded: list[tuple[list[int], int]], batch_size: int, pad_id: int, seed: int = 0):
        order = sorted(range(len(encoded)), key=lambda k: (len(encoded[k][0]), k))
        self.batches = [
            [encoded[k] for k in order[s : s + batch_size]] for s in range(0, len(order), batch_size)
        ]
        self.pad_id, self.seed = pad_id, seed
        self._epoch, self._perm = -1, np.arange(0)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(i, len(self.batches))
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))
        return collate(self.batches[int(self._perm[pos])], self.pad_id)

    def __iter__(self):
        """Each batch once, in length order (for evaluation)."""
        return (collate(b, self.pad_id) for b in self.batches)


def split_examples(examples: list[Example], eval_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out) with a seeded shuffle."""
    if eval_size >= len(examples):
        raise LlamanasError(
            f"eval_size={eval_size} leaves no training data: the data has {len(examples)} records."
        )
    perm = np.random.default_rng(seed).permutation(len(examples))
    held = {int(k) for k in perm[:eval_size]}
    return [e for k, e in enumerate(examples) if k not in held], [examples[k] for k in sorted(held)]


# --- losses -----------------------------------------------------------------------------------------


def response_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, vocab) and targets (N,) at the response positions only (next-token shift)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE  # (B, T-1)
    return logits[:, :-1][keep].float(), targets[keep]


def token_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits (N, vocab) at every position that predicts a real (non-padding) next token."""
    keep = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return logits[:, :-1][keep].float()


@dataclass
class SoftTargets:
    """The teacher's side of in-place distillation, computed once per batch and shared by every student."""

    probs: torch.Tensor
    """Teacher probabilities at temperature ``temperature`` (N, vocab)."""
    neg_entropy: torch.Tensor
    """Mean over tokens of sum p log p: turns the students' soft cross-entropy into KL."""
    temperature: float = 1.0

    @classmethod
    @torch.no_grad()
    def from_logits(cls, teacher: torch.Tensor, temperature: float = 1.0) -> SoftTargets:
        log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
        probs = log_p.exp()
        return cls(probs, (probs * log_p).sum() / max(1, teacher.shape[0]), temperature)


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor | SoftTargets, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) per token, averaged over tokens, times T² (Hinton) so gradients keep scale.

    Computed as soft-target cross-entropy minus the teacher's entropy, with the teacher's side computed
    once per batch: 1.2-1.3x faster on CPU than ``kl_div`` over two log-softmaxes per student
    (``bench/bench_distill.py``, three students per teacher). ``temperature`` applies to teacher logits;
    ``SoftTargets`` carry the temperature they were made at.
    """
    if not isinstance(teacher, SoftTargets):
        teacher = SoftTargets.from_logits(teacher, temperature)
    t = teacher.temperature
    ce = F.cross_entropy(student.float() / t, teacher.probs, reduction="sum") / max(1, student.shape[0])
    return (ce + teacher.neg_entropy) * t * t


@torch.no_grad()
def eval_loss(supernet: SuperNet, batches: Batches, cfg: SubnetConfig) -> float:
    """Token-weighted mean response cross-entropy of sub-network ``cfg`` over ``batches``."""
    model = supernet.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with supernet.subnet(cfg):
            for b in batches:
                b = {k: v.to(device) for k, v in b.items()}
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
                z, y = response_logits(logits.logits, b["labels"])
                total += F.cross_entropy(z, y, reduction="sum").item()
                count += y.numel()
    finally:
        model.train(was_training)
    return total / max(1, count)


# --- LoRA on sliced linears -------------------------------------------------------------------------


@functools.cache
def elastic_lora_class():
    """peft's ``lora.Linear`` whose adapter is sliced like the ElasticLinear it wraps.

    The base layer uses ``W[:active_out, :active_in]``; the adapter must add ``B[:active_out] @
    A[:, :active_in]`` so that the merged weight ``W + s·B·A`` sliced the same way gives the same
    sub-network. ``SuperNet.activate`` sets ``active_in``/``active_out`` on this wrapper; the properties
    pass them to the base layer and to ``lora_A`` (columns) and ``lora_B`` (rows), which are
    ElasticLinears too, so peft's own forward, merge and unload work unchanged.
    """
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        raise LlamanasError("--lora needs peft: pip install peft") from None

    class ElasticLoraLinear(LoraLinear):
        def __init__(self, base_layer, adapter_name: str, config, r: int, lora_alpha: int, **rest):
            if not isinstance(base_layer, ElasticLinear):
                raise TypeError(f"Unsupported layer type {type(base_layer)}; expected ElasticLinear.")
            super().__init__(base_layer, adapter_name, config=config, r=r, lora_alpha=lora_alpha, **rest)
            self._sync_adapters()

        def _sync_adapters(self) -> None:
            base = self.get_base_layer()
            for a in self.lora_A.values():  # (r, in): columns follow the base layer's input slice
                if not isinstance(a, ElasticLinear):
                    ElasticLinear.convert(a)
                a.active_in = base.active_in
            for b in self.lora_B.values():  # (out, r): rows follow the base layer's output slice
                if not isinstance(b, ElasticLinear):
                    ElasticLinear.convert(b)
                b.active_out = base.active_out

        @property
        def active_in(self) -> int | None:
            return self.get_base_layer().active_in

        @active_in.setter
        def active_in(self, value: int | None) -> None:
            self.get_base_layer().active_in = value
            self._sync_adapters()

        @property
        def active_out(self) -> int | None:
            return self.get_base_layer().active_out

        @active_out.setter
        def active_out(self, value: int | None) -> None:
            self.get_base_layer().active_out = value
            self._sync_adapters()

    return ElasticLoraLinear


def attach_lora(supernet: SuperNet, r: int = 16, alpha: int = 32, dropout: float = 0.05):
    """Wrap every decoder linear of ``supernet.model`` with a sliced LoRA adapter, in place.

    Only the adapters stay trainable. Returns the ``PeftModel`` (keep it for ``merge_lora``); keep
    calling ``supernet.model``, whose modules now hold the adapters.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise LlamanasError("--lora needs peft: pip install peft") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS))
    config._register_custom_module({ElasticLinear: elastic_lora_class()})  # peft's custom-layer hook
    with warnings.catch_warnings():  # peft calls a transformers API that v5 deprecates; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(supernet.model, config)
    if peft_model.get_base_model() is not supernet.model:
        raise LlamanasError("peft did not wrap the model in place; cannot attach LoRA to the super-network.")
    return peft_model


def merge_lora(supernet: SuperNet, peft_model) -> None:
    """Fold the adapters into the weights; ``supernet.model`` is a plain model again (all trainable)."""
    active = supernet.active
    supernet.reset()
    model = peft_model.merge_and_unload()
    if model is not supernet.model:
        raise LlamanasError("peft returned a different model object after merging.")
    for p in model.parameters():
        p.requires_grad_(True)
    supernet.activate(active)


# --- training ---------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """The trained super-network (plain weights, full network active) and its training record."""

    out: Path
    supernet: SuperNet
    tokenizer: object
    record: dict
    main_process: bool = True
    """False on the other processes of a multi-process run (they should stay quiet)."""


StepCallback = Callable[[int, dict[str, float]], None]


def finetune(args: TuneArgs, callback: StepCallback | None = None, progress: bool = True) -> TuneResult:
    """Fine-tune ``args.model`` into a super-network written to ``args.out`` (resuming if interrupted).

    ``callback(step, losses)`` is called after every optimizer step (1-based step; losses by series).
    """
    if not args.data:
        raise LlamanasError("finetune needs training data: pass --data FILE_OR_HUB_ID.")
    if not args.out:
        raise LlamanasError("finetune needs an output folder: pass --out DIR.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LlamanasError(f"Output {str(out)!r} exists and is not a folder.")
    done = _finished_record(out, args)
    if done is not None:
        from llamanas.supernet.elastic import load_supernet

        supernet, tokenizer = load_supernet(str(out))
        return TuneResult(out, supernet, tokenizer, done)
    return _Trainer(args, callback, progress).run()


def _finished_record(out: Path, args: TuneArgs) -> dict | None:
    """The training record if ``out`` already holds this run's finished super-network."""
    meta = read_supernet_meta(out)
    if not meta:
        return None
    record = meta.get("training")
    if record is None:
        raise LlamanasError(
            f"{out} already holds a super-network not made by finetune; choose another --out."
        )
    _check_same_args(TuneArgs.from_dict(record["args"]), args, f"{out} already holds a super-network")
    return record


def _check_same_args(saved: TuneArgs, now: TuneArgs, what: str) -> None:
    a, b = saved.to_dict(), now.to_dict()
    diff = [k for k in a if k not in RESUME_FREE and a[k] != b[k]]
    if diff:
        shown = ", ".join(f"{k}: {b[k]!r} now vs {a[k]!r} there" for k in diff)
        raise LlamanasError(
            f"{what} trained with different arguments ({shown}); "
            "re-run with the same arguments to resume, or choose another --out."
        )


class _Trainer:
    """One run of ``finetune``: setup, the step loop, checkpoints and the final save."""

    def __init__(self, args: TuneArgs, callback: StepCallback | None, progress: bool):
        self.args, self.callback, self.progress = args, callback, progress
        self.out = Path(args.out)
        self.ckpt = self.out / CHECKPOINT_DIR

    # --- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
        from transformers import get_cosine_schedule_with_warmup

        from llamanas.model.load import resolve
        from llamanas.supernet.elastic import load_supernet
        from llamanas.supernet.importance import Ordering, order_model

        a = self.args
        # Skipped layers get no gradient on a step; DDP must be told that this is expected. Autocast is
        # ours, not accelerate's: its precision is fixed once per process, and a process may run
        # several fine-tunings (tests, benchmarks).
        self.acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        bf16 = a.precision == "bf16" or (
            a.precision == "auto" and self.acc.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.mixed = "bf16" if bf16 else "no"
        random.seed(a.seed)
        torch.manual_seed(a.seed)

        examples = load_alpaca(a.data)
        train, held = split_examples(examples, a.eval_size, a.seed)

        state = self._read_checkpoint_state()
        supernet, tok = load_supernet(a.model, space_file=a.space, order=False)
        already_ordered = read_supernet_meta(resolve(a.model)).get("ordered", False)
        self.ordering = None
        if state is not None and (self.ckpt / "ordering.json").is_file():
            # Re-measuring could flip near-ties and misalign the saved weights; apply the saved one.
            self.ordering = Ordering.from_dict(json.loads((self.ckpt / "ordering.json").read_text()))
            self.ordering.apply(supernet.model)
        elif state is None and not already_ordered:
            calibration = a.calibration or (a.data if Path(a.data).is_file() else None)
            self.ordering = order_model(supernet.model, tok, calibration)
        self.supernet, self.tokenizer = supernet, tok
        space: SearchSpace = supernet.space
        model = supernet.model

        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.train_batches = Batches(encode(train, tok, a.max_length), a.batch_size, pad, a.seed)
        self.eval_batches = Batches(encode(held, tok, a.max_length), a.batch_size, pad) if held else None
        self.train_tokens = sum(len(ids) for b in self.train_batches.batches for ids, _ in b)

        self.peft_model = None
        if a.lora:
            self.peft_model = attach_lora(supernet, a.lora_r, a.lora_alpha, a.lora_dropout)
        model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=a.peak_lr, weight_decay=a.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, round(a.warmup * a.steps), a.steps)
        self.sampler = Sampler(
            space,
            a.schedule,
            total_steps=a.steps,
            seed=a.seed,
            num_buckets=a.num_buckets,
            delay_fraction=a.delay_fraction,
            stages=a.progressive_stages,
            complexity_power=a.complexity_power,
            min_params=a.min_params,
        )
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.step, self.records, self.wall, self.tokens, self.forward_tokens = 0, [], 0.0, 0, 0
        if state is not None:
            self._load_checkpoint(state)

    # --- the loop ------------------------------------------------------------------------------
    def plan(self, step: int) -> list[tuple[Role, SubnetConfig]]:
        """(role, config) of the sub-networks trained at ``step``; the largest comes first."""
        a, s = self.args, self.sampler
        strategy = Strategy(a.strategy)
        largest = (Role.LARGEST, s.largest())
        if strategy is Strategy.FULL or not s.shrinking(step):
            return [largest]
        if strategy is Strategy.ALTERNATE:
            return [largest] if step % 2 == 0 else [(Role.RANDOM, s.sample(step))]
        return [largest, (Role.SMALLEST, s.smallest(step))] + [
            (Role.RANDOM, s.sample(step)) for _ in range(a.num_random)
        ]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the active sub-network (B, T, vocab), under bf16 autocast when enabled."""
        with torch.autocast(self.acc.device.type, dtype=torch.bfloat16, enabled=self.mixed == "bf16"):
            out = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            )
        return out.logits

    def distill_logits(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The positions teacher and student are compared at (``distill_tokens``)."""
        if self.args.distill_tokens == "all":
            return token_logits(logits, batch["attention_mask"])
        return response_logits(logits, batch["labels"])[0]

    def soft_targets(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> SoftTargets:
        return SoftTargets.from_logits(self.distill_logits(logits, batch), self.args.distill_temperature)

    def train_step(self, step: int) -> list[dict]:
        """One optimizer step; returns one loss record per trained sub-network."""
        a, acc, model = self.args, self.acc, self.model
        plan = self.plan(step)
        sums = [0.0] * len(plan)
        kinds = ["ce"] * len(plan)
        world, rank = acc.num_processes, acc.process_index
        tokens = forward_tokens = 0  # this process's; summed over processes below
        for micro in range(a.grad_accum):
            batch = self.train_batches[(step * a.grad_accum + micro) * world + rank]
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            n_tokens = int(batch["attention_mask"].sum())
            tokens += n_tokens
            teacher = None
            for j, (role, cfg) in enumerate(plan):
                last = micro == a.grad_accum - 1 and j == len(plan) - 1
                student = a.distill and role is not Role.LARGEST
                if student and teacher is None:
                    with torch.no_grad(), self.supernet.subnet(self.sampler.largest()):
                        teacher = self.soft_targets(self.forward(batch), batch)
                    forward_tokens += n_tokens
                self.supernet.activate(cfg)
                # Only the last backward of the step synchronises gradients across processes.
                with nullcontext() if last else acc.no_sync(model):
                    logits = self.forward(batch)
                    if student:
                        loss = distill_loss(self.distill_logits(logits, batch), teacher)
                        kinds[j] = "kd"
                    else:
                        loss = F.cross_entropy(*response_logits(logits, batch["labels"]))
                        if a.distill and role is Role.LARGEST:
                            teacher = self.soft_targets(logits.detach(), batch)
                    acc.backward(loss / a.grad_accum)
                sums[j] += loss.item() / a.grad_accum
                forward_tokens += n_tokens
        self.supernet.reset()
        lr = self.scheduler.get_last_lr()[0]
        if a.max_grad_norm > 0:
            acc.clip_grad_norm_(self.params, a.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Every process must see the same losses, or their samplers (complexity) would diverge.
        losses = acc.reduce(torch.tensor(sums, device=acc.device), reduction="mean").tolist()
        counts = acc.reduce(torch.tensor([tokens, forward_tokens], device=acc.device), reduction="sum")
        self.tokens += int(counts[0])
        self.forward_tokens += int(counts[1])
        records = []
        for (role, cfg), loss, kind in zip(plan, losses, kinds, strict=True):
            if role is not Role.LARGEST:
                self.sampler.update(cfg, loss)
            records.append(
                {
                    "step": step + 1,
                    "role": role.value,
                    "series": self.series(role, cfg),
                    "params": self.sampler.buckets.params(cfg),
                    "kind": kind,
                    "loss": loss,
                    "lr": lr,
                }
            )
        return records

    def series(self, role: Role, cfg: SubnetConfig) -> str:
        """The loss-curve label of a sub-network: 'largest' or its size bucket."""
        if role is Role.LARGEST:
            return Role.LARGEST.value
        return self.sampler.buckets.label(self.sampler.buckets.index(cfg))

    def run(self) -> TuneResult:
        from tqdm.auto import tqdm

        self.setup()
        a = self.args
        bar = tqdm(
            total=a.steps,
            initial=self.step,
            desc=f"finetune {a.strategy}/{a.schedule}",
            disable=not (self.progress and self.acc.is_local_main_process),
            dynamic_ncols=True,
        )
        while self.step < a.steps:
            t0 = time.perf_counter()
            records = self.train_step(self.step)
            self.step += 1
            self.wall += time.perf_counter() - t0
            self.records.extend(records)
            losses = {r["series"]: r["loss"] for r in records}
            bar.update(1)
            bar.set_postfix({k[:12]: f"{v:.3f}" for k, v in losses.items()})
            if a.save_every and self.step % a.save_every == 0 and self.step < a.steps:
                self.save_checkpoint()
            if self.callback is not None:
                self.callback(self.step, losses)
        bar.close()
        return self.finish()

    # --- checkpoints ---------------------------------------------------------------------------
    def _read_checkpoint_state(self) -> dict | None:
        path = self.ckpt / "trainer.pt"
        if not path.is_file():
            return None
        saved = TuneArgs.from_dict(json.loads((self.ckpt / "args.json").read_text()))
        _check_same_args(saved, self.args, f"{self.out} has a checkpoint from a run")
        return torch.load(path, weights_only=False)

    def save_checkpoint(self) -> None:
        """Write model, optimizer, scheduler, RNG and sampler states atomically (tmp folder + rename)."""
        from safetensors.torch import save_file

        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            tmp = self.out / (CHECKPOINT_DIR + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            model = self.acc.unwrap_model(self.model)
            # Trainable parameters only: with LoRA the frozen base is re-created from the model + ordering.
            tensors = {
                n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
            }
            save_file(tensors, str(tmp / "params.safetensors"))
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "records": self.records,
                "wall": self.wall,
                "tokens": self.tokens,
                "forward_tokens": self.forward_tokens,
                "rng": {
                    "python": random.getstate(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                },
            }
            torch.save(state, tmp / "trainer.pt")
            (tmp / "args.json").write_text(json.dumps(self.args.to_dict(), indent=2, sort_keys=True))
            if self.ordering is not None:
                (tmp / "ordering.json").write_text(json.dumps(self.ordering.to_dict()))
            self._write_curves(tmp)
            old = self.out / (CHECKPOINT_DIR + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if self.ckpt.exists():
                self.ckpt.rename(old)
            tmp.rename(self.ckpt)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def _load_checkpoint(self, state: dict) -> None:
        from safetensors.torch import load_file

        model = self.acc.unwrap_model(self.model)
        tensors = load_file(str(self.ckpt / "params.safetensors"))
        named = dict(model.named_parameters())
        missing = [n for n, p in named.items() if p.requires_grad and n not in tensors]
        if missing or set(tensors) - set(named):
            raise LlamanasError(
                f"Checkpoint {self.ckpt} does not match the model ({len(missing)} parameters missing); "
                "delete it to start over."
            )
        with torch.no_grad():
            for n, t in tensors.items():
                named[n].copy_(t)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.records, self.wall = state["step"], state["records"], state["wall"]
        self.tokens, self.forward_tokens = state["tokens"], state["forward_tokens"]
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    # --- the end -------------------------------------------------------------------------------
    def final_losses(self) -> dict:
        """Mean training loss of the last 10% of steps per series, and held-out losses."""
        tail = max(2, self.args.steps // 10)
        train: dict[str, list[float]] = {}
        for r in self.records:
            if r["step"] > self.args.steps - tail:
                train.setdefault(f"{r['series']} ({r['kind']})", []).append(r["loss"])
        held = {}
        if self.eval_batches is not None:
            space = self.supernet.space
            for role, cfg in ((Role.LARGEST, space.largest()), (Role.SMALLEST, space.smallest())):
                held[role.value] = eval_loss(self.supernet, self.eval_batches, cfg)
        return {"train": {k: float(np.mean(v)) for k, v in train.items()}, "held_out": held}

    def finish(self) -> TuneResult:
        self.acc.wait_for_everyone()
        if self.peft_model is not None:
            merge_lora(self.supernet, self.peft_model)
        self.supernet.reset()
        model = self.supernet.model
        model.eval()
        a = self.args
        record = {
            "args": a.to_dict(),
            "lr": a.peak_lr,
            "steps": self.step,
            "tokens": self.tokens,
            "forward_tokens": self.forward_tokens,
            "train_examples": sum(len(b) for b in self.train_batches.batches),
            "train_tokens_per_epoch": self.train_tokens,
            "epochs": self.tokens / max(1, self.train_tokens),
            "wall_time_s": round(self.wall, 2),
            "processes": self.acc.num_processes,
            "device": str(self.acc.device),
            "mixed_precision": self.mixed,
            "final_losses": self.final_losses(),
        }
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(self.out)
            self.tokenizer.save_pretrained(self.out)
            self._write_curves(self.out)
            write_supernet_meta(self.out, self.supernet.space, record)
            if not a.keep_checkpoint:
                shutil.rmtree(self.ckpt, ignore_errors=True)
        self.acc.wait_for_everyone()
        return TuneResult(self.out, self.supernet, self.tokenizer, record, self.acc.is_main_process)

    def _write_curves(self, folder: Path) -> None:
        write_loss_curves(self.records, folder / "losses.csv", folder / "losses.png")


CSV_COLUMNS = ("step", "role", "series", "params", "kind", "loss", "lr")


def write_loss_curves(records: list[dict], csv_path: Path, png_path: Path | None = None) -> None:
    """One row per trained sub-network per step; the PNG plots a smoothed curve per size series."""
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in CSV_COLUMNS} for r in records)
    if png_path is None or not records:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is a convenience; the CSV holds the data
        return
    kinds = sorted({r["kind"] for r in records})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in records:
            if r["kind"] == kind:
                series.setdefault(r["series"], []).append((r["step"], r["loss"]))
        for name in sorted(series, key=lambda s: (s != "largest", s)):
            steps, losses = zip(*series[name], strict=True)
            ax.plot(steps, _ema(losses), label=f"{name} ({len(steps)} steps)")
        ax.set_xlabel("step")
        ax.set_ylabel("response cross-entropy" if kind == "ce" else "KL to the full network")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _ema(values, beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (smooths noisy per-step losses)."""
    out, m = [], 0.0
    for k, v in enumerate(values, 1):
        m = beta * m + (1 - beta) * v
        out.append(m / (1 - beta**k))
    return out
