"""What a search run is: ``SearchArgs``, saved as run.json and checked when a run is resumed.

A leaf of the search stage: the run, the CLI and the benchmarks read it; it reads only the registries it
checks names against (algorithms, objectives, predictors, warm starts, importance scores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from llamanas.config import check_above, check_at_least, from_dict_strict, resumable, resumable_fields
from llamanas.errors import LlamanasError, unknown
from llamanas.evaluation.questions import Questions
from llamanas.model.device import DTYPES
from llamanas.search import objectives as objmod
from llamanas.search.algorithms import ALGORITHMS, Algorithm, make_algorithm
from llamanas.search.objectives import Constraint, Objective
from llamanas.search.predictors import KINDS as PREDICTORS
from llamanas.search.warm_start import DEFAULT_WARM_START, WARM_START_WINDOWS, check_warm_start
from llamanas.search.workers import EvalSettings
from llamanas.supernet.importance import check_importance

DTYPE_BYTES = {name: dtype.itemsize for name, dtype in DTYPES.items()}
TUPLE_FIELDS = ("tasks", "objectives", "constraints", "warm_start")
STORE_FILE = "results.sqlite"


@dataclass(frozen=True)
class SearchArgs:
    """Everything a search run needs; saved as run.json and checked when a run is resumed."""

    model: str = "default"
    """'default', a local HF model folder, a super-network folder or a hub id."""
    tasks: tuple[str, ...] = ()
    """Evaluation tasks (needed by task objectives such as accuracy and gold_nll)."""
    objectives: tuple[str, ...] = ("accuracy", "params")
    """Objective names; directions are the objectives' own."""
    algorithm: str = "linas"
    """The search algorithm: linas (NSGA-II on predictors, real evaluations of its proposals), nsga2 (every
    offspring evaluated for real) or random."""
    evaluations: int = resumable(100)
    """Budget: distinct sub-networks in this run's trajectory (store hits count too: honest budgets)."""
    minutes: float | None = resumable(None)
    """A time budget as well: no new batch of evaluations starts after this many minutes of the search (its
    warm start included); the --evaluations budget still applies. Where time stops a run, its result depends
    on the machine's speed; re-running resumes with a fresh time budget."""
    out: str = resumable("runs/search")
    """Run directory."""
    split: str | None = "validation"
    """Data split searched on (the test split is kept for the final report)."""
    limit: int | None = None
    """Seeded random subset of N items per task."""
    num_fewshot: int | None = None
    population: int = 10
    """Batch size: the initial random population, NSGA-II's population, LINAS's batch per loop."""
    seed: int = 0
    """Seed of the search (initial population, NSGA-II, predictors)."""
    data_seed: int = 0
    """Seed of the --limit subset: keep it fixed to compare searches with different seeds."""
    constraints: tuple[str, ...] = ()
    """E.g. 'params<=100M', 'accuracy>=0.4'."""
    space: str | None = None
    """Search-space file, or a space by name: width (every layer kept, MLP 50-100%, 2-3 of 3 KV groups) or full
    (layer and block drops as well). Unset: a fine-tuned super-network's own space, else width; a run folder
    resumes in its own. Its content (not its name or path) is stored in run.json."""
    workers: int = resumable(1)
    ray_address: str | None = resumable(None)
    predictor: str = "auto"
    """LINAS predictor of each measured objective."""
    inner_generations: int = 1000
    """LINAS: NSGA-II generations on the predictors per loop."""
    inner_population: int | None = None
    """LINAS: NSGA-II population on the predictors (default max(50, 2 x population))."""
    store: str | None = resumable(None)
    """Results store (default RUN_DIR/results.sqlite); point runs at one file to share evaluations."""
    order: bool = True
    """Order channels by importance before slicing (as every llamanas command does)."""
    importance: str = "rms"
    """Importance score that orders the channels: rms | wanda | taylor (a fine-tuned super-network keeps
    the order it was trained with)."""
    compensate: bool = False
    """Bias compensation (FLAP) on every sliced sub-network: the mean contribution of removed channels."""
    dtype: str = "auto"
    """Compute dtype: auto (bfloat16 on a GPU, float32 on the CPU below 1B parameters, else the checkpoint's
    own) | bfloat16 | float16 | float32. The resolved dtype is recorded and keys the stored results."""
    device: str = resumable("auto")
    """auto (CUDA if present, else cpu) | cpu | cuda | cuda:N; Ray workers on GPUs use their own."""
    seq_len: int = 128
    """Sequence length for MACs per token."""
    runtime: str = "hf"
    """Where the latency and throughput objectives come from: hf (timing each sub-network in transformers)
    or llamacpp (the speed in llama.cpp on this CPU, from a latency table fitted on a few timed GGUF
    exports: --latency-table, or one built first into RUN_DIR/latency_table.json)."""
    latency_table: str | None = None
    """Latency table (JSON, from a llama.cpp calibration) used with --runtime llamacpp; its content is
    copied into the run folder and keys the stored results."""
    warm_start: tuple[str, ...] = DEFAULT_WARM_START
    """Seed the first population (after the largest and smallest) with sub-networks chosen by importance
    instead of random ones: sensitivity (per-layer widths allocated by calibration loss at 90..50% of the
    parameters) and/or attention (the least influential attention blocks skipped; a space that skips
    attention); none: a cold start. Computed once on the calibration text and saved in the run folder. A run
    folder made with another warm start resumes with its own when this is left at the default."""
    warm_start_windows: int = WARM_START_WINDOWS
    """Calibration windows (128 tokens each) the warm start measures on: the sensitivity seeds cost one pass
    over them per (layer, width choice), about 5 minutes for 16 on the default model's width-only space."""
    proxy_windows: int = 0
    """Record the cheap proxy with every evaluation: the KL divergence of the sub-network's next-token
    distribution from the full network's on this many calibration windows of 128 tokens (0: none)."""
    screen: int = 0
    """LINAS proxy screen: each loop scores SCREEN x population candidates with the proxy and evaluates the
    best of them for real, ranked by predictors that take the proxy as an input (0: off; needs
    --proxy-windows)."""
    halving: int = 0
    """LINAS multi-fidelity (successive halving): each loop scores HALVING x population proposals on the first
    1/HALVING of the --limit questions and evaluates only the best population of them on all; the front
    stays on all questions (0: off; needs --limit)."""

    def __post_init__(self):
        for name in TUPLE_FIELDS:
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        if self.warm_start == ("none",):
            object.__setattr__(self, "warm_start", ())

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchArgs:
        return from_dict_strict(cls, d, "search settings")

    def trajectory_dict(self) -> dict:
        """The fields that define the run's sequence of evaluations."""
        d = self.to_dict()
        # The space file's and latency table's contents are stored instead of their paths.
        for k in resumable_fields(SearchArgs) + ("space", "latency_table"):
            d.pop(k)
        if not d["warm_start"]:  # runs made before the option existed resume unchanged
            d.pop("warm_start")
        if d["warm_start_windows"] == WARM_START_WINDOWS:  # likewise
            d.pop("warm_start_windows")
        for k in ("proxy_windows", "screen", "halving"):  # likewise
            if not d[k]:
                d.pop(k)
        return d

    def check(self) -> None:
        """Errors that name the bad value and the allowed ones, before anything is loaded."""
        if self.algorithm not in ALGORITHMS:
            raise unknown("algorithm", self.algorithm, tuple(ALGORITHMS))
        check_importance(self.importance)
        check_warm_start(self.warm_start)
        check_above(("--minutes", self.minutes, 0))
        check_at_least(
            ("--evaluations", self.evaluations, 1),
            ("--population", self.population, 2),
            ("--workers", self.workers, 1),
            ("--inner-generations", self.inner_generations, 1),
            ("--seq-len", self.seq_len, 1),
            ("--warm-start-windows", self.warm_start_windows, 1),
            ("--proxy-windows", self.proxy_windows, 0),
            ("--screen", self.screen, 0),
            ("--halving", self.halving, 0),
        )
        if self.screen and not self.proxy_windows:
            raise LlamanasError(
                f"--screen {self.screen} ranks candidates by the proxy: set --proxy-windows too (4 is enough)."
            )
        if self.screen and self.algorithm != "linas":
            raise LlamanasError(f"--screen is a LINAS option; --algorithm is {self.algorithm!r}.")
        if self.limit is not None and self.limit < 1:
            raise LlamanasError(f"--limit must be >= 1; got {self.limit}.")
        if self.halving:
            if self.algorithm != "linas":
                raise LlamanasError(f"--halving is a LINAS option; --algorithm is {self.algorithm!r}.")
            if self.halving < 2:
                raise LlamanasError(f"--halving must be 0 (off) or >= 2; got {self.halving}.")
            if self.limit is None or self.low_limit < 1:
                raise LlamanasError(
                    f"--halving {self.halving} scores candidates on 1/{self.halving} of the --limit questions: "
                    f"set --limit to at least {self.halving} (got {self.limit})."
                )
        if self.inner_population is not None and self.inner_population < 4:
            raise LlamanasError(f"--inner-population must be >= 4; got {self.inner_population}.")
        if self.dtype != "auto" and self.dtype not in DTYPE_BYTES:
            raise unknown("dtype", self.dtype, ("auto", *DTYPE_BYTES))
        if self.predictor not in PREDICTORS:
            raise unknown("predictor", self.predictor, PREDICTORS)
        objmod.check_runtime(self.runtime)
        if self.latency_table and self.runtime == "hf":
            raise LlamanasError(
                f"--latency-table {self.latency_table!r} is used only with --runtime llamacpp (the runtime is "
                f"'hf', where latency and throughput are timed)."
            )

    @property
    def timing_names(self) -> list[str]:
        """The TIMING objectives and constraint targets of this run (latency, throughput)."""
        names = [
            *self.objectives,
            *(objmod.parse_constraint(c, self.tasks).objective.name for c in self.constraints),
        ]
        return sorted({n for n in names if n in objmod.KINDS and objmod.KINDS[n].source == objmod.TIMING})

    def settings(self, timing: bool, latency_table: str | None = None) -> EvalSettings:
        """What the evaluations measure; ``latency_table`` is the digest of the table that gives latency and
        throughput under --runtime llamacpp (then nothing is timed)."""
        return EvalSettings(
            tasks=self.tasks,
            **self.questions.to_dict(),
            timing=timing,
            seq_len=self.seq_len,
            dtype=self.dtype,
            runtime=self.runtime if latency_table else "hf",
            latency_table=latency_table,
            compensate=self.compensate,
            proxy_windows=self.proxy_windows,
        )

    @property
    def low_limit(self) -> int:
        """Questions per task on the --halving low rung (0 without one)."""
        return (self.limit or 0) // self.halving if self.halving else 0

    @property
    def questions(self) -> Questions:
        """The questions the search selects on (``data_seed`` is the seed of their subset)."""
        return Questions(self.split, self.limit, self.num_fewshot, self.data_seed)

    def algorithm_object(self) -> Algorithm:
        """The ``--algorithm`` with the hyperparameters it owns taken from these settings."""
        return make_algorithm(self.algorithm, **{f.name: getattr(self, f.name) for f in fields(self)})

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else self.run_dir / STORE_FILE


def resolve_goals(args: SearchArgs, runtime: str) -> tuple[list[Objective], list[Constraint]]:
    """The run's objectives and constraints by name (``runtime``: where timing objectives come from)."""
    objectives = objmod.resolve(args.objectives, args.tasks, runtime)
    constraints = [objmod.parse_constraint(c, args.tasks, runtime) for c in args.constraints]
    return objectives, constraints
