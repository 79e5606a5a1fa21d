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

``args.py`` says what a run is (``TuneArgs``); this module starts it (``finetune``); the run itself is
``trainer.py``, which uses ``batches.py`` (data), ``losses.py``, ``lora.py`` and ``checkpoint.py``
(resume), and writes ``curves.py``'s loss curves.

The output folder is an HF checkpoint plus ``llamanas_supernet.json`` (ordered, the search space, how
it was trained); every command takes it as ``--model``. Training runs under ``accelerate``:

    llamanas finetune --data alpaca.json --out runs/supernet                       # CPU or one GPU
    accelerate launch -m llamanas.cli finetune --data alpaca.json --out runs/sn   # several GPUs
"""

from __future__ import annotations

from pathlib import Path

from llamanas.errors import LlamanasError
from llamanas.supernet.elastic import load_supernet, read_supernet_meta
from llamanas.tuning.args import TuneArgs
from llamanas.tuning.checkpoint import check_same_args
from llamanas.tuning.trainer import StepCallback, Trainer, TuneResult

# --- training ---------------------------------------------------------------------------------------


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
        supernet, tokenizer = load_supernet(str(out))
        return TuneResult(out, supernet, tokenizer, done)
    return Trainer(args, callback, progress).run()


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
    check_same_args(TuneArgs.from_dict(record["args"]), args, f"{out} already holds a super-network")
    return record
