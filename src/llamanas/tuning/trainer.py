"""One fine-tuning run (``finetune``): setup, the step loop, checkpoints and the final save.

Each optimizer step trains the sub-networks its strategy plans (``Strategy``, ``Role``) as the sampler
draws them (``sampling.py``), on batches (``batches.py``) with the losses of ``losses.py``; LoRA
adapters are attached and merged by ``lora.py``; ``checkpoint.py`` saves and resumes.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from llamanas.errors import LlamanasError
from llamanas.model.data import load_alpaca
from llamanas.model.device import dtype_name, resolve_device
from llamanas.model.load import resolve
from llamanas.supernet.elastic import SuperNet, load_supernet, read_supernet_meta, write_supernet_meta
from llamanas.supernet.importance import Ordering, order_model
from llamanas.supernet.routing import RoutedAdapters, RoutingSpec
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig
from llamanas.tuning.args import TuneArgs
from llamanas.tuning.batches import Batches, encode, split_examples
from llamanas.tuning.checkpoint import (
    CHECKPOINT_DIR,
    check_same_args,
    checkpoint_args,
    load_params,
    read_checkpoint,
    set_rng_states,
    write_checkpoint,
)
from llamanas.tuning.curves import write_loss_curves
from llamanas.tuning.lora import attach_lora, merge_lora
from llamanas.tuning.losses import SoftTargets, distill_loss, eval_loss, response_logits, token_logits
from llamanas.tuning.sampling import Role, Sampler, Strategy
from llamanas.tuning.split import split_spec
from llamanas.tuning.tickets import Tickets


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


class Trainer:
    """One run of ``finetune``: setup, the step loop, checkpoints and the final save."""

    def __init__(self, args: TuneArgs, callback: StepCallback | None, progress: bool):
        self.args, self.callback, self.progress = args, callback, progress
        self.out = Path(args.out)
        self.ckpt = self.out / CHECKPOINT_DIR

    # --- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        # Skipped layers get no gradient on a step; DDP must be told that this is expected. Autocast is
        # ours, not accelerate's: its precision is fixed once per process, and a process may run
        # several fine-tunings (tests, benchmarks).
        self.acc = Accelerator(
            cpu=resolve_device(a.device).type == "cpu",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        bf16 = a.precision == "bf16" or (
            a.precision == "auto" and self.acc.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.mixed = "bf16" if bf16 else "no"
        random.seed(a.seed)
        torch.manual_seed(a.seed)

        examples = load_alpaca(a.data)
        train, held = split_examples(examples, a.eval_size, a.seed)

        state = self._read_checkpoint_state()
        supernet, tok = load_supernet(
            a.model,
            space_file=a.space,
            order=False,
            dtype=a.dtype,
            device=str(self.acc.device),
            work="finetune-lora" if a.adapters else "finetune",
            say=self.acc.print,
        )
        if supernet.routing is not None:
            raise LlamanasError(
                f"{a.model} has routed adapters ({supernet.routing.spec.router}); fine-tuning it again would drop "
                "them: fine-tune the model it was made from instead."
            )
        source_meta = read_supernet_meta(resolve(a.model))
        already_ordered = source_meta.get("ordered", False)
        self.ordered_by = source_meta.get("ordered_by", "rms") if already_ordered else a.importance
        self.ordering = None
        if state is not None and (self.ckpt / "ordering.json").is_file():
            # Re-measuring could flip near-ties and misalign the saved weights; apply the saved one.
            self.ordering = Ordering.from_dict(json.loads((self.ckpt / "ordering.json").read_text()))
            self.ordering.apply(supernet.model)
        elif state is None and not already_ordered:
            calibration = a.calibration or (a.data if Path(a.data).is_file() else None)
            self.ordering = order_model(supernet.model, tok, calibration, importance=a.importance)
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
        if a.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
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
        # A space with precision genes trains each sub-network at its precision (fake-quantized, in place).
        supernet.fake_quant = bool(space.bits_choices)
        self.routing, self.split_scores = None, {}
        if a.routing != "none":
            self.routing = self._attach_routing(state)
        self.tickets = None
        if a.ticket_sparsity:
            self.tickets = Tickets(
                model, a.steps, a.ticket_sparsity, a.ticket_start, a.ticket_end, a.ticket_every
            )
        # What trains: the model's trainable parameters, and the routed adapters.
        extra = list(self.routing.parameters()) if self.routing is not None else []
        self.params = [p for p in model.parameters() if p.requires_grad] + extra
        optimizer = torch.optim.AdamW(self.params, lr=a.peak_lr, weight_decay=a.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, round(a.warmup * a.steps), a.steps)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.step, self.records, self.wall, self.tokens, self.forward_tokens = 0, [], 0.0, 0, 0
        if state is not None:
            self._load_checkpoint(state)

    def _attach_routing(self, state: dict | None) -> RoutedAdapters:
        """Freeze the base and attach the routed adapters: a resumed run's, else a new set (``split``: where
        to split decided now, by gradient matching)."""
        a, supernet = self.args, self.supernet
        if self.acc.num_processes > 1:
            raise LlamanasError(
                "--routing runs in one process (its adapters are not synchronised across them)."
            )
        for p in supernet.model.parameters():
            p.requires_grad_(False)
        if state is not None:
            spec = RoutingSpec(**json.loads((self.ckpt / "routing.json").read_text()))
            self.split_scores = state.get("split_scores", {})
        elif a.routing == "split":
            batches = [
                {k: v.to(self.acc.device) for k, v in self.train_batches[j].items()}
                for j in range(a.split_batches)
            ]

            def forward(batch):
                return supernet.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                ).logits

            spec, self.split_scores = split_spec(
                supernet, batches, self.sampler, a.split_samples, a.lora_r, a.lora_alpha, forward
            )
            top = sorted(self.split_scores.items(), key=lambda kv: -kv[1])[:3]
            self.acc.print(
                f"few-shot split on {spec.gene} ({len(spec.choices)} parts: {list(spec.choices)}); gradient "
                "disagreement " + ", ".join(f"{g} {v:.3f}" for g, v in top)
            )
        elif a.routing == "precision":
            bits = sorted({b for bs in supernet.space.bits_choices for b in bs})
            if not bits:
                raise LlamanasError(
                    "routing 'precision' gives each weight precision its own adapter, but the search space has "
                    "no precision genes: pass a space file with bits choices, e.g. `bits: [4, 8, 16]`."
                )
            spec = RoutingSpec(
                "precision", experts=len(bits), rank=a.lora_r, alpha=a.lora_alpha, choices=bits
            )
        else:
            spec = RoutingSpec("mixture", experts=a.experts, rank=a.lora_r, alpha=a.lora_alpha)
        torch.manual_seed(a.seed)  # the experts' initial weights, the same on a resumed run's rebuild
        routing = RoutedAdapters(supernet.model, spec)
        routing.attach(supernet)
        return routing

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
        if self.tickets is not None:  # prune on schedule; pruned weights back to zero after the update
            self.tickets.step(step + 1)
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
        saved = checkpoint_args(self.ckpt)
        if saved is None:
            return None
        saved_args = type(self.args).from_dict(saved)  # a TuneArgs, checked as when it was made
        check_same_args(saved_args, self.args, f"{self.out} has a checkpoint from a run")
        return read_checkpoint(self.ckpt)

    def save_checkpoint(self) -> None:
        """Write model, optimizer, scheduler, RNG and sampler states atomically (``checkpoint.py``)."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "records": self.records,
                "wall": self.wall,
                "tokens": self.tokens,
                "forward_tokens": self.forward_tokens,
                "split_scores": self.split_scores,
                "tickets": self.tickets.state_dict() if self.tickets is not None else None,
            }
            files = {"args.json": json.dumps(self.args.to_dict(), indent=2, sort_keys=True)}
            if self.ordering is not None:
                files["ordering.json"] = json.dumps(self.ordering.to_dict())
            if self.routing is not None:
                files["routing.json"] = json.dumps(asdict(self.routing.spec))
            write_checkpoint(self.ckpt, self._trainable(), state, files, self.records)
        self.acc.wait_for_everyone()

    def _trainable(self) -> nn.Module:
        """The module whose trainable parameters a checkpoint holds: the model (unwrapped), with the routed
        adapters beside it when there are any."""
        model = self.acc.unwrap_model(self.model)
        return model if self.routing is None else nn.ModuleDict({"model": model, "routing": self.routing})

    def _load_checkpoint(self, state: dict) -> None:
        load_params(self.ckpt, self._trainable())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.records, self.wall = state["step"], state["records"], state["wall"]
        self.tokens, self.forward_tokens = state["tokens"], state["forward_tokens"]
        if self.tickets is not None:
            self.tickets.load_state_dict(state["tickets"])
        set_rng_states(state["rng"])

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
            "dtype": dtype_name(next(model.parameters()).dtype),
            "mixed_precision": self.mixed,
            "final_losses": self.final_losses(),
        }
        if self.routing is not None:
            record["routing"] = {**asdict(self.routing.spec), "split_scores": self.split_scores}
        if self.tickets is not None:
            record["tickets"] = {"sparsity": self.tickets.achieved(), "target": a.ticket_sparsity}
        self.supernet.fake_quant = False  # from here on a quantized config runs extracted, as everywhere
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(self.out)
            self.tokenizer.save_pretrained(self.out)
            write_loss_curves(self.records, self.out / "losses.csv", self.out / "losses.png")
            write_supernet_meta(self.out, self.supernet.space, record, ordered_by=self.ordered_by)
            if self.routing is not None:
                self.routing.save(self.out)
            if not a.keep_checkpoint:
                shutil.rmtree(self.ckpt, ignore_errors=True)
        self.acc.wait_for_everyone()
        return TuneResult(self.out, self.supernet, self.tokenizer, record, self.acc.is_main_process)
