"""The checkpoint of an interrupted fine-tuning run, in ``<out>/checkpoint``; re-running resumes from it.

params.safetensors  trainable parameters (with LoRA only the adapters: the frozen base is re-made
                    from the model and ``ordering.json``)
trainer.pt          step, optimizer, scheduler, sampler and RNG states, loss records
args.json, ordering.json, losses.csv/png   the run's arguments, its channel ordering, its curves
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llamanas.config import resume_conflicts
from llamanas.errors import LlamanasError
from llamanas.tuning.args import TuneArgs
from llamanas.tuning.curves import write_loss_curves

CHECKPOINT_DIR = "checkpoint"


def write_checkpoint(folder: Path, model, state: dict, files: dict[str, str], records: list[dict]) -> None:
    """Replace ``folder`` atomically (tmp folder + rename): ``model``'s trainable parameters, ``state``
    plus the RNG states, the text ``files`` by name, and the loss curves of ``records``."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(tmp / "params.safetensors"))
    torch.save({**state, "rng": _rng_states()}, tmp / "trainer.pt")
    for name, text in files.items():
        (tmp / name).write_text(text)
    write_loss_curves(records, tmp / "losses.csv", tmp / "losses.png")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def check_same_args(saved: TuneArgs, now: TuneArgs, what: str) -> None:
    """Refuse to resume or reuse a run made with other arguments (``what`` is where it was found)."""
    shown = resume_conflicts(saved, now)
    if shown:
        raise LlamanasError(
            f"{what} trained with different arguments ({shown}); "
            "re-run with the same arguments to resume, or choose another --out."
        )


def checkpoint_args(folder: Path) -> dict | None:
    """The arguments of the run checkpointed in ``folder`` (None when there is no checkpoint)."""
    if not (folder / "trainer.pt").is_file():
        return None
    return json.loads((folder / "args.json").read_text())


def read_checkpoint(folder: Path) -> dict:
    """The trainer state written by ``write_checkpoint`` (restore its RNG states with ``set_rng_states``)."""
    return torch.load(folder / "trainer.pt", weights_only=False)


def load_params(folder: Path, model) -> None:
    """Copy the checkpointed trainable parameters into ``model``; they must match its trainable ones."""
    tensors = load_file(str(folder / "params.safetensors"))
    named = dict(model.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and n not in tensors]
    if missing or set(tensors) - set(named):
        raise LlamanasError(
            f"Checkpoint {folder} does not match the model ({len(missing)} parameters missing); "
            "delete it to start over."
        )
    with torch.no_grad():
        for n, t in tensors.items():
            named[n].copy_(t)


def _rng_states() -> dict:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(rng: dict) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
