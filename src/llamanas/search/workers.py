"""Evaluating sub-networks: in-process, or in parallel on Ray actors that each hold the super-network once.

- ``EvalSettings``: what an evaluation measures (tasks, split, subset, few-shot, timing); its ``hash``
  keys the results store, so runs with the same settings share evaluations.
- ``Evaluator`` (protocol): ``fingerprint()``, ``reference()`` and ``evaluate(cfg) -> {value key: float}``.
  ``SupernetEvaluator`` is the real one: the tasks are tokenized once (``evaluate.prepare``) and every
  sub-network is scored on the same prepared requests (``evaluate.score``).
- An evaluator *spec* is a small picklable recipe with ``build(device)``; workers build the evaluator
  themselves, so the weights never travel. ``SupernetSpec`` builds a ``SupernetEvaluator``.
- ``LocalPool`` evaluates in this process (no Ray import); ``RayPool`` starts a local Ray with N actors,
  or joins a cluster (``address``) with one actor per GPU. Both yield results as they finish.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from llamanas.config import digest, from_dict_strict
from llamanas.errors import LlamanasError
from llamanas.evaluation.evaluate import model_max_length, prepare, score
from llamanas.evaluation.measure import measure
from llamanas.evaluation.proxy import KLProxy
from llamanas.evaluation.questions import Questions
from llamanas.evaluation.tasks import GROUPS
from llamanas.model.load import fingerprint
from llamanas.search.warm_start import WARM_START_WINDOWS, warm_start_configs
from llamanas.supernet.elastic import load_supernet
from llamanas.supernet.slicing import subnet_model
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig


@dataclass(frozen=True)
class EvalSettings(Questions):
    """Everything that changes a measured value (except the weights, which the fingerprint covers): the
    questions (``Questions``' fields, flat in run.json) and the rest of what is measured."""

    split: str | None = "validation"
    tasks: tuple[str, ...] = ()
    timing: bool = False  # measure latency/throughput of the extracted sub-network
    seq_len: int = 128  # for MACs per token
    dtype: str = "float32"
    prefill_tokens: int = 128
    gen_tokens: int = 32
    repeats: int = 5
    runtime: str = "hf"  # "llamacpp": latency/throughput come from the latency table below, not timing
    latency_table: str | None = None  # digest of that table (search.latency.LatencyTable.digest)
    compensate: bool = False  # bias compensation on the slices (changes values, not the weights)
    proxy_windows: int = 0  # calibration windows of the KL proxy recorded with every evaluation (0: none)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "tasks", tuple(self.tasks))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvalSettings:
        return from_dict_strict(cls, d, "evaluation settings")

    def hash(self) -> str:
        """Stable key of these settings (sorted JSON; task order does not change any value)."""
        d = self.to_dict()
        d["tasks"] = sorted(d["tasks"])
        if not self.timing:
            for k in ("prefill_tokens", "gen_tokens", "repeats"):
                d.pop(k)
        if self.runtime == "hf" and self.latency_table is None:  # keys of stores made before runtimes
            for k in ("runtime", "latency_table"):
                d.pop(k)
        if not self.compensate:  # keys of stores made before compensation
            d.pop("compensate")
        if not self.offset:  # keys of stores made before offsets
            d.pop("offset")
        if not self.proxy_windows:  # keys of stores made before the proxy
            d.pop("proxy_windows")
        return digest(d)


@dataclass
class Outcome:
    """One finished evaluation: every measured value and where/how long it ran."""

    values: dict[str, float]
    split: str | None = None
    n_items: int | None = None
    started: float = 0.0
    seconds: float = 0.0
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


class Evaluator(Protocol):
    def fingerprint(self) -> str:
        """Identity of the super-network weights (``models.fingerprint``)."""

    def reference(self) -> dict[str, tuple[float, float]]:
        """(low, high) per value key whose range is not known in advance (hypervolume bounds)."""

    def evaluate(self, cfg: SubnetConfig) -> Outcome:
        """Measure one sub-network (an evaluator that supports a multi-fidelity search also takes
        ``limit``: score only the first LIMIT questions of its seeded subset)."""


class EvaluatorSpec(Protocol):
    def build(self, device: str | None = None) -> Evaluator:
        """Build the evaluator inside the worker that will use it."""


# ------------------------------------------------------------------------------------------------------
# The real evaluator
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupernetSpec:
    """How to rebuild the super-network and its evaluation in any process."""

    model: str
    space: dict  # SearchSpace.to_dict(): the worker uses exactly the driver's space
    settings: EvalSettings
    order: bool = True
    calibration: str | None = None
    device: str = "auto"  # where each worker runs; Ray workers on GPUs get their own
    importance: str = "rms"  # the score channels are ordered by (the weights' fingerprint covers it)
    warm_start_windows: int = WARM_START_WINDOWS  # calibration windows of the warm start

    def build(self, device: str | None = None) -> SupernetEvaluator:
        return SupernetEvaluator(self, device)


class SupernetEvaluator:
    """Scores sub-networks of one loaded super-network on prepared tasks; optionally times them."""

    def __init__(self, spec: SupernetSpec, device: str | None = None):
        self.spec, s = spec, spec.settings
        supernet, tokenizer = load_supernet(
            spec.model,
            order=spec.order,
            calibration=spec.calibration,
            dtype=s.dtype,
            device=device or spec.device,
            importance=spec.importance,
            compensate=s.compensate,
            residual=bool(spec.space.get("hidden_choices")),  # a hidden gene slices the ordered stream
        )
        supernet.space = SearchSpace.from_saved(spec.space)
        if supernet.compensation is not None:  # biases for the driver's space's widths
            supernet.set_compensation(supernet.compensation)
        self.supernet, self.tokenizer = supernet, tokenizer
        self._fingerprint = fingerprint(supernet.model)
        self.kl_proxy = (
            KLProxy.from_text(supernet, tokenizer, s.proxy_windows, spec.calibration)
            if s.proxy_windows
            else None
        )
        self.prepared = self._prepare(s.questions()) if s.tasks else None
        self._rungs: dict[int, object] = {}  # low-fidelity question subsets by limit, prepared when asked

    def _prepare(self, questions: Questions):
        return prepare(
            self.tokenizer,
            list(self.spec.settings.tasks),
            questions,
            max_length=model_max_length(self.supernet.model, self.tokenizer),
        )

    def _prepared_for(self, limit: int | None):
        """The full questions, or the first ``limit`` of them (nested: the same seed's order, cut shorter)."""
        if limit is None or self.prepared is None:
            return self.prepared
        if limit not in self._rungs:
            self._rungs[limit] = self._prepare(self.spec.settings.questions().override(limit=limit))
        return self._rungs[limit]

    def fingerprint(self) -> str:
        return self._fingerprint

    def reference(self) -> dict[str, tuple[float, float]]:
        """gold NLL of a uniform guess per task; latency of the largest and throughput of the smallest."""
        ref: dict[str, tuple[float, float]] = {}
        if self.prepared is not None:
            ref.update(
                {
                    f"gold_nll:{t}": (0.0, v)
                    for t, v in uniform_gold_nll(
                        self.prepared, self.spec.settings.tasks, self.supernet.arch.vocab_size
                    ).items()
                }
            )
        if self.spec.settings.timing:
            space = self.supernet.space
            ref["latency"] = (0.0, self._time(space.largest())["latency"])
            ref["throughput"] = (0.0, self._time(space.smallest())["throughput"])
        return ref

    def warm_start(self, names: tuple[str, ...]) -> dict:
        """Warm-start configs (``search.warm_start``) from this super-network, on ordering's calibration text."""
        return warm_start_configs(
            self.supernet, self.tokenizer, names, self.spec.calibration, self.spec.warm_start_windows
        )

    def proxy(self, cfg: SubnetConfig) -> dict[str, float]:
        """The cheap proxy's values (``evaluation.proxy``), as recorded with a real evaluation."""
        if self.kl_proxy is None:
            raise LlamanasError("This evaluator has no proxy: its settings have proxy_windows 0.")
        return self.kl_proxy(cfg)

    def _time(self, cfg: SubnetConfig) -> dict[str, float]:
        s = self.spec.settings
        m = measure(self.supernet, cfg, s.seq_len, True, s.prefill_tokens, s.gen_tokens, repeats=s.repeats)
        return {"latency": float(m.latency_ms), "throughput": float(m.throughput_tok_s)}

    def evaluate(self, cfg: SubnetConfig, limit: int | None = None) -> Outcome:
        """All measured values; with ``limit`` (a multi-fidelity rung) only the task scores on the first
        ``limit`` questions: no proxy, no timing."""
        started = time.time()
        values: dict[str, float] = {}
        split, n_items = None, None
        prepared = self._prepared_for(limit)
        if prepared is not None:
            with subnet_model(self.supernet, cfg) as model:
                results = score(model, prepared)
            tasks = self.spec.settings.tasks
            for t in tasks:
                r = results[t]
                values.update({f"{m}:{t}": float(v) for m, v in r.metrics.items()})
                values.update({f"{m}_stderr:{t}": float(v) for m, v in r.stderr.items()})
                values[f"n:{t}"] = float(r.n)
                if r.chance is not None:
                    values[f"chance:{t}"] = float(r.chance)
            split = ",".join(sorted({results[t].split for t in tasks}))
            n_items = int(sum(results[t].n for t in tasks))
        if self.kl_proxy is not None and limit is None:
            values.update(self.kl_proxy(cfg))
        if self.spec.settings.timing and limit is None:
            values.update(self._time(cfg))
        return Outcome(values, split, n_items, started, time.time() - started)


def uniform_gold_nll(prepared, tasks, vocab_size: int) -> dict[str, float]:
    """Per task, the mean gold-answer NLL of a model that guesses tokens uniformly: ln(V) x gold tokens.

    This is the 'worst' end of the gold_nll hypervolume range: a fixed number for these evaluation
    settings, so hypervolumes of different runs and algorithms compare.
    """
    n_req = int(prepared.request_offsets[-1])
    tokens = np.zeros(n_req)
    for b in prepared.batches:
        tokens += np.bincount(b.request.numpy(), minlength=n_req)
    per_task, sizes = {}, {}
    for req in prepared.tasks:
        gold_ids = prepared.request_offsets[req.first_doc + np.arange(len(req.indices))] + req.gold
        per_task[req.task] = float(tokens[gold_ids].mean() * math.log(vocab_size))
        sizes[req.task] = len(req.indices)
    out = {}
    for t in tasks:
        if t in per_task:
            out[t] = per_task[t]
        else:  # a group: size-weighted mean of its tasks, as lm-eval aggregates
            parts = [p for p in GROUPS[t] if p in per_task]
            out[t] = sum(per_task[p] * sizes[p] for p in parts) / sum(sizes[p] for p in parts)
    return out


# ------------------------------------------------------------------------------------------------------
# Pools
# ------------------------------------------------------------------------------------------------------


def _warm_start(evaluator: Evaluator, names: tuple[str, ...]) -> dict:
    if not hasattr(evaluator, "warm_start"):
        raise LlamanasError(
            f"--warm-start needs the super-network's evaluator; {type(evaluator).__name__} has no warm start."
        )
    return evaluator.warm_start(names)


def _evaluate(evaluator: Evaluator, cfg: SubnetConfig, limit: int | None) -> Outcome:
    """The full evaluation, or a low-fidelity rung where the evaluator takes one (``limit``)."""
    return evaluator.evaluate(cfg) if limit is None else evaluator.evaluate(cfg, limit=limit)


def _proxy(evaluator: Evaluator, cfg: SubnetConfig) -> dict[str, float]:
    if not hasattr(evaluator, "proxy"):
        raise LlamanasError(
            f"The proxy screen needs the super-network's evaluator; {type(evaluator).__name__} has none."
        )
    return evaluator.proxy(cfg)


class LocalPool:
    """Evaluates in this process, one config at a time (``--workers 1``; Ray is not imported)."""

    def __init__(self, spec: EvaluatorSpec):
        self.spec = spec
        self._evaluator: Evaluator | None = None
        self.size = 1

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = self.spec.build(None)
        return self._evaluator

    def fingerprint(self) -> str:
        return self.evaluator.fingerprint()

    def reference(self) -> dict[str, tuple[float, float]]:
        return self.evaluator.reference()

    def warm_start(self, names: tuple[str, ...]) -> dict:
        return _warm_start(self.evaluator, names)

    def proxy(self, cfgs: list[SubnetConfig]) -> list[dict[str, float]]:
        return [_proxy(self.evaluator, c) for c in cfgs]

    def imap_unordered(
        self, cfgs: list[SubnetConfig], limit: int | None = None
    ) -> Iterator[tuple[int, Outcome]]:
        """Outcomes in order; ``limit``: a low-fidelity rung (``SupernetEvaluator.evaluate``)."""
        for i, cfg in enumerate(cfgs):
            yield i, _evaluate(self.evaluator, cfg, limit)

    def close(self) -> None:
        self._evaluator = None


class _Actor:
    """A Ray actor: builds its evaluator once and evaluates configs sent as dicts."""

    def __init__(self, spec: EvaluatorSpec, device: str | None):
        self.evaluator = spec.build(device)

    def fingerprint(self) -> str:
        return self.evaluator.fingerprint()

    def reference(self) -> dict:
        return self.evaluator.reference()

    def evaluate(self, cfg: dict, limit: int | None = None) -> Outcome:
        return _evaluate(self.evaluator, SubnetConfig.from_dict(cfg), limit)

    def warm_start(self, names: tuple[str, ...]) -> dict:
        return _warm_start(self.evaluator, names)

    def proxy(self, cfg: dict) -> dict[str, float]:
        return _proxy(self.evaluator, SubnetConfig.from_dict(cfg))


class RayPool:
    """N Ray actors, each holding the super-network; configs go to whichever actor is free.

    Without ``address``: a local Ray with ``workers`` CPU actors. With ``address``: an existing cluster,
    one actor per GPU there (``workers`` CPU actors if it has no GPU).
    """

    def __init__(self, spec: EvaluatorSpec, workers: int = 2, address: str | None = None):
        try:
            import ray  # lazy: optional extra (llamanas[ray]), only for --workers > 1 / --ray-address
        except ImportError:
            raise LlamanasError(
                "--workers > 1 and --ray-address need Ray: pip install 'ray[default]>=2.9'."
            ) from None
        if workers < 1:
            raise LlamanasError(f"--workers must be >= 1; got {workers}.")
        self.ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(
                        num_cpus=workers,
                        include_dashboard=False,
                        log_to_driver=False,
                        object_store_memory=200 * 2**20,
                    )
            except Exception as e:  # noqa: BLE001 - ray raises many types; the user needs one line
                raise LlamanasError(f"Cannot start or join Ray (address={address!r}): {e}") from None
        gpus = int(ray.cluster_resources().get("GPU", 0)) if address else 0
        n, opts, device = (gpus, {"num_gpus": 1}, "cuda") if gpus else (workers, {"num_cpus": 1}, None)
        # Each actor loads the super-network once; tasks are tokenized once per actor.
        actor_cls = ray.remote(_Actor).options(**opts)
        self.actors = [actor_cls.remote(spec, device) for _ in range(n)]
        self.size = n
        fps = ray.get([a.fingerprint.remote() for a in self.actors])
        if len(set(fps)) != 1:
            raise LlamanasError(f"Workers loaded different super-networks (fingerprints {sorted(set(fps))}).")
        self._fingerprint = fps[0]

    def fingerprint(self) -> str:
        return self._fingerprint

    def reference(self) -> dict[str, tuple[float, float]]:
        return self.ray.get(self.actors[0].reference.remote())

    def warm_start(self, names: tuple[str, ...]) -> dict:
        return self.ray.get(self.actors[0].warm_start.remote(names))

    def proxy(self, cfgs: list[SubnetConfig]) -> list[dict[str, float]]:
        """The proxy for each config, spread over the actors (round robin), in order."""
        n = len(self.actors)
        return self.ray.get([self.actors[i % n].proxy.remote(c.to_dict()) for i, c in enumerate(cfgs)])

    def imap_unordered(
        self, cfgs: list[SubnetConfig], limit: int | None = None
    ) -> Iterator[tuple[int, Outcome]]:
        ray = self.ray
        queue = list(enumerate(cfgs))
        free = list(self.actors)
        pending: dict = {}
        while queue or pending:
            while free and queue:
                actor = free.pop(0)
                i, cfg = queue.pop(0)
                pending[actor.evaluate.remote(cfg.to_dict(), limit)] = (i, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i, actor = pending.pop(ref)
                free.append(actor)
                yield i, ray.get(ref)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self._started:
            self.ray.shutdown()


def make_pool(spec: EvaluatorSpec, workers: int = 1, address: str | None = None) -> LocalPool | RayPool:
    """``workers == 1`` and no address: in-process; otherwise Ray."""
    if workers < 1:
        raise LlamanasError(f"--workers must be >= 1; got {workers}.")
    if workers == 1 and not address:
        return LocalPool(spec)
    return RayPool(spec, workers, address)
