"""Where a model runs and in which dtype, and whether it fits there: decided before anything loads.

``--device auto`` picks CUDA when there is one. ``--dtype auto`` picks bfloat16 on a GPU that supports it
(else float16), and on the CPU float32 for small models (so results match the reference numbers) but the
checkpoint's own 16-bit dtype for big ones (a 7B model in float32 needs 28 GB). Memory is estimated from
the config alone, so a command that cannot fit refuses before it spends minutes loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llamanas.errors import LlamanasError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
DEVICE_HELP = "auto (CUDA if present, else cpu) | cpu | cuda | cuda:N"
DTYPE_HELP = (
    "auto (bfloat16 on a GPU that has it, else float16; on the CPU float32 below 1B parameters, the "
    "checkpoint's own 16-bit dtype from 1B up) | bfloat16 | float16 | float32"
)
BIG_MODEL = 1_000_000_000  # parameters from which `auto` keeps a 16-bit checkpoint 16-bit on the CPU
GB = 1e9


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device that exists here, or a clear error."""
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise LlamanasError(f"Unknown device {device!r}. Allowed: {DEVICE_HELP}.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LlamanasError(
                f"Device {device!r} was asked for, but this machine has no CUDA GPU; use cpu."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LlamanasError(
                f"Device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)."
            )
    return dev


def resolve_dtype(
    dtype: str | torch.dtype = "auto",
    device: torch.device | str = "cpu",
    checkpoint_dtype: torch.dtype | str | None = None,
    num_params: int | None = None,
) -> torch.dtype:
    """The compute dtype for ``dtype`` (``auto`` or a name) on ``device`` (see the module docstring)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_CHOICES:
        raise LlamanasError(f"Unknown dtype {dtype!r}. Allowed: {', '.join(DTYPE_CHOICES)}.")
    if dtype != "auto":
        return DTYPES[dtype]
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(checkpoint_dtype, str):
        checkpoint_dtype = DTYPES.get(checkpoint_dtype.removeprefix("torch."))
    if (
        num_params is not None
        and num_params >= BIG_MODEL
        and checkpoint_dtype in (torch.bfloat16, torch.float16)
    ):
        return checkpoint_dtype
    return torch.float32


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in, from its HF config (None when it does not say)."""
    value = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        return DTYPES.get(value.removeprefix("torch."))
    return None


def free_bytes(device: torch.device) -> int:
    """Memory that a new allocation can use now: free GPU memory, or the OS's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# Bytes per byte of weights beyond the weights themselves, by kind of work: rough estimates that
# docs/benchmarks.md (scale table) compares with measured peaks (activations are small next to the weights at
# batch 1 and the evaluator's token budget).
WORK = {
    "inference": 0.15,  # activations, KV cache, logits for the evaluator's token budget
    "ordering": 0.25,  # the same plus per-channel statistics, one layer at a time
    "extract": 0.0,  # extraction streams layer by layer: the sub-network's copy is counted separately
    "finetune-lora": 0.6,  # adapters, their optimizer state, checkpointed activations, a teacher pass
    "finetune": 3.5,  # gradients and AdamW's two moments, each the size of the weights, + activations
}


@dataclass(frozen=True)
class MemoryPlan:
    """What a piece of work will need on a device, against what is free there."""

    what: str
    needed: int
    free: int
    device: str

    @property
    def fits(self) -> bool:
        return self.needed <= self.free

    def __str__(self) -> str:
        return f"{self.what} needs ~{self.needed / GB:.1f} GB, {self.free / GB:.1f} GB free on {self.device}"


def plan_memory(
    num_params: int, dtype: torch.dtype, device: torch.device, work: str = "inference", extra: int = 0
) -> MemoryPlan:
    """Estimate the memory of ``work`` on a model of ``num_params`` in ``dtype`` (plus ``extra`` bytes)."""
    if work not in WORK:
        raise LlamanasError(f"Unknown kind of work {work!r}. Allowed: {', '.join(WORK)}.")
    weights = num_params * torch.finfo(dtype).bits // 8
    needed = int(weights + WORK[work] * weights + extra)
    return MemoryPlan(work, needed, free_bytes(device), str(device))


def check_memory(plan: MemoryPlan, say=None) -> MemoryPlan:
    """Say what the work needs; refuse, before loading, when it cannot fit (``LLAMANAS_NO_MEMORY_CHECK=1``
    skips the refusal, e.g. where swap or a unified-memory GPU makes the estimate too strict)."""
    if say is not None:
        say(str(plan))
    if not plan.fits and os.environ.get("LLAMANAS_NO_MEMORY_CHECK") != "1":
        raise LlamanasError(
            f"Not enough memory: {plan}. Use a smaller --dtype (bfloat16 halves float32), another --device, "
            "or set LLAMANAS_NO_MEMORY_CHECK=1 to try anyway."
        )
    return plan


# --- 16-bit weights on the CPU ---------------------------------------------------------------------------

HALF = (torch.bfloat16, torch.float16)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, but computed in float32 when 16-bit weights sit on the CPU: PyTorch's CPU bf16/fp16
    matmuls run at a quarter of float32's speed on CPUs without bf16 instructions (docs/benchmarks.md),
    while up-casting one weight at a time costs a little memory traffic. The result keeps ``x``'s dtype."""
    if weight.device.type == "cpu" and weight.dtype in HALF:
        b = None if bias is None else bias.float()
        return F.linear(x.float(), weight.float(), b).to(x.dtype)
    return F.linear(x, weight, bias)


class CpuLinear(nn.Linear):
    """An ``nn.Linear`` whose 16-bit weights compute in float32 on the CPU (see ``linear``); the class is
    swapped in place, so parameters and state dicts are untouched."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_float32_compute(model) -> int:
    """Swap every plain ``nn.Linear`` of a CPU model with 16-bit weights to ``CpuLinear``; returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype in HALF:
            module.__class__ = CpuLinear
            n += 1
    return n
