"""What ``llamanas baselines`` runs (``BaselineArgs``): the Python API and the command's options in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llamanas.config import check_at_least
from llamanas.errors import LlamanasError
from llamanas.evaluation.questions import Questions
from llamanas.supernet.importance import check_importance

METHODS = ("depth", "shortgpt", "width")  # the default set
ALL_METHODS = (*METHODS, "attention", "sensitivity", "hidden")
# Calibration windows (of 128 tokens) for block influence and sensitivity: they rank layers and widths, which
# 16 windows do as well as 64 on the default model (docs/benchmarks.md, front vs baselines, disjoint re-run:
# the sensitivity baseline measured on 16 was the strongest at 80% and 70%) at a quarter of the cost
# (64 windows took over 30 CPU minutes for sensitivity).
CALIBRATION_WINDOWS = 16
DEFAULT_WIDTH_MULTIPLE = 8  # MLP widths in multiples of 8: vector-friendly, and < 1% from the target size


@dataclass(frozen=True)
class BaselineArgs:
    """Which pruning baselines to build at which sizes, and the questions they are scored on."""

    tasks: tuple[str, ...] = ()
    """Tasks, e.g. arc_easy,piqa. See `llamanas tasks`."""
    out: str | None = None
    """Folder for baselines.json and baselines.csv."""
    model: str = "default"
    """'default' (SmolLM2-135M-Instruct, offline), a local HF model folder, a super-network folder, or a hub id."""
    sizes: tuple[float, ...] = (0.9, 0.8, 0.7)
    """Target sizes as fractions of the model's parameters, e.g. 0.9,0.8,0.7."""
    methods: tuple[str, ...] = METHODS
    """Of depth, shortgpt, width, attention (skip the attention blocks of least block influence, MLPs kept),
    sensitivity (per-layer widths allocated by each layer's measured loss increase per parameter saved), hidden
    (the residual stream cut to its most important channels, every layer whole: SliceGPT without its rotation)."""
    supernet: str | None = None
    """A fine-tuned super-network folder: run the same baselines on its weights too."""
    questions: Questions = Questions()
    """The questions each baseline is scored on (split, limit, num_fewshot, seed, offset)."""
    calibration: str | None = None
    """Calibration text for importance and block influence (default: built in)."""
    calibration_samples: int = CALIBRATION_WINDOWS
    """Calibration windows of 128 tokens for block influence and sensitivity (a ranking)."""
    seq_len: int = 128
    """Tokens per calibration window."""
    width_multiple: int = DEFAULT_WIDTH_MULTIPLE
    """MLP widths of the width and sensitivity baselines are multiples of this."""
    recover: bool = False
    """With --supernet: also prune the original model and fine-tune each baseline with the super-network's
    recorded budget (same data, steps, batch, learning rate), in OUT/recovered."""
    importance: str = "rms"
    """Importance score that orders channels before slicing: rms | wanda | taylor."""
    compensate: bool = False
    """Bias compensation (FLAP) for every baseline."""
    device: str = "auto"
    """auto (CUDA if present, else cpu) | cpu | cuda | cuda:N."""
    dtype: str = "auto"
    """auto (float32 on the CPU below 1B parameters, bfloat16 on a GPU) | bfloat16 | float16 | float32."""

    def __post_init__(self):
        for name in ("tasks", "methods"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        try:
            sizes = tuple(float(s) for s in self.sizes)
        except (TypeError, ValueError):
            raise LlamanasError(
                f"--sizes must be comma-separated fractions like 0.9,0.8,0.7; got {self.sizes!r}."
            ) from None
        object.__setattr__(self, "sizes", sizes)
        if not self.tasks:
            raise LlamanasError("Baselines need at least one task, e.g. --tasks arc_easy.")
        if not sizes or any(not 0 < s <= 1 for s in sizes):
            raise LlamanasError(f"--sizes must be fractions in (0, 1], e.g. 0.9,0.8,0.7; got {self.sizes!r}.")
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown or not self.methods:
            raise LlamanasError(
                f"Unknown --methods {unknown or '(none)'}; choose from {', '.join(ALL_METHODS)}."
            )
        check_importance(self.importance)
        check_at_least(
            ("--calibration-samples", self.calibration_samples, 1),
            ("--seq-len", self.seq_len, 2),
            ("--width-multiple", self.width_multiple, 1),
        )
        if self.recover and not (self.supernet and self.out):
            raise LlamanasError("--recover needs the fine-tuned super-network (--supernet) and --out.")

    def to_dict(self) -> dict:
        return asdict(self)
