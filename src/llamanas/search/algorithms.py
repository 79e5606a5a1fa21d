"""The search algorithms: random sampling, NSGA-II on real evaluations, and LINAS.

LINAS (lightweight iterative NAS, as in the LLaMA-NAS paper and DyNAS-T): start from a random
population; then loop: evaluate the population for real, fit one light predictor per measured objective
on every real evaluation so far, run NSGA-II for many generations on the predictors (cheap; exact
counts such as params are computed, never predicted), and evaluate a batch chosen from its final
population. Unlike the reference code, a real evaluation is never spent twice on one sub-network (dedupe by
decoded config, also against the store), and the batch is chosen to spread along the front: greedy
predicted hypervolume gain over the real front and the configs already chosen, then predicted fronts in
greedy max-min distance order; random new configs fill what is left.

An algorithm is a small frozen dataclass that owns its hyperparameters (as pymoo's ``NSGA2(pop_size=...)``)
and runs on a ``Context`` (the space, goals and trajectory: no run settings); ``ALGORITHMS`` registers each
under its ``--algorithm`` name, and ``make_algorithm`` builds one from a run's settings by field name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from pymoo.core.population import Population
from pymoo.core.termination import NoTermination
from pymoo.optimize import minimize
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from sklearn import config_context

from llamanas.errors import LlamanasError, unknown
from llamanas.evaluation.proxy import PROXY_INPUTS
from llamanas.search import objectives as objmod
from llamanas.search.counts import Counts
from llamanas.search.predictors import Encoder, Predictor, kendall_tau, mape
from llamanas.search.problem import Goals, SubnetProblem, canonical_keys, make_nsga2
from llamanas.search.store import Store
from llamanas.search.trajectory import Evaluated, Trajectory
from llamanas.supernet.space import SearchSpace
from llamanas.supernet.subnet import SubnetConfig


class BatchCache:
    """LINAS batches already proposed in this run, keyed by loop and a digest of the evaluations they were
    computed from: a resumed run replays its loops without refitting predictors or re-running NSGA-II."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id

    @staticmethod
    def digest(history: list[Evaluated]) -> str:
        data = [[e.config.key(), sorted(e.measured.items())] for e in history]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()

    def get(self, loop: int, history: list[Evaluated]) -> dict | None:
        return self.store.get_batch(self.run_id, loop, self.digest(history))

    def put(self, loop: int, history: list[Evaluated], payload: dict) -> None:
        self.store.put_batch(self.run_id, loop, self.digest(history), payload)


@dataclass
class Context:
    """What an algorithm works with: the problem and the run's trajectory, not the run's settings."""

    space: SearchSpace
    goals: Goals
    counts: Counts
    traj: Trajectory
    on_batch: Callable[[], None] = field(default=lambda: None)
    quality: Callable[[int, str, dict], None] = field(default=lambda loop, name, row: None)
    batches: BatchCache | None = None
    warm: list[SubnetConfig] = field(default_factory=list)
    """Warm-start configs (``warm_start``): in the first population after the anchors, before random ones."""
    proxy: Callable[[list[SubnetConfig]], list[dict[str, float]]] | None = None
    """The cheap proxy of configs not evaluated (``evaluation.proxy``); None when the run records none."""
    rung: Callable[[list[SubnetConfig]], list[dict[str, float]]] | None = None
    """Objective values on a low-fidelity rung (the first questions only: ``Trajectory.rung``); None when
    the run is not multi-fidelity."""

    def analytic_ok(self, cfg: SubnetConfig) -> bool:
        cs = self.goals.analytic_constraints
        if not cs:
            return True
        c = self.counts.of(cfg)
        return all(k.satisfied(c[k.objective.name]) for k in cs)

    def sample_new(
        self, rng: np.random.Generator, n: int, exclude: set[str] | None = None
    ) -> list[SubnetConfig]:
        """Up to n distinct random configs, new to the run and meeting the analytic constraints."""
        exclude = set(self.traj.keys) | (exclude or set())
        out: list[SubnetConfig] = []
        tries = 0
        max_tries = 200 * n + 2000
        while len(out) < n and tries < max_tries:
            tries += 1
            cfg = self.space.sample(rng)
            k = cfg.key()
            if k in exclude or not self.analytic_ok(cfg):
                continue
            exclude.add(k)
            out.append(cfg)
        if n and not out and not self.traj.history:
            raise LlamanasError(
                f"No sub-network meeting the constraints {[c.text for c in self.goals.constraints]} was found "
                f"in {max_tries} random samples; relax them."
            )
        return out

    def initial(self, population: int, seed: int) -> list[SubnetConfig]:
        """The first population, the same for every algorithm with the same seed: the largest and the
        smallest sub-networks (the ends of the front, so it always spans the space; the largest is the base
        model) where the constraints allow them, then the warm-start configs, then random ones."""
        anchors: list[SubnetConfig] = []
        for cfg in (self.space.largest(), self.space.smallest(), *self.warm):
            if (
                population > len(anchors)
                and cfg not in anchors
                and self.traj.is_new(cfg)
                and self.analytic_ok(cfg)
            ):
                anchors.append(cfg)
        rng = np.random.default_rng(seed)
        return anchors + self.sample_new(rng, population - len(anchors), {c.key() for c in anchors})


class Algorithm(Protocol):
    """A search algorithm: its hyperparameters are its fields; ``run`` spends the trajectory's budget."""

    population: int
    seed: int

    def run(self, ctx: Context) -> None: ...


@dataclass(frozen=True)
class RandomSearch:
    """Uniform random sampling in batches of ``population`` (the first batch is everyone's initial one)."""

    population: int = 10
    seed: int = 0

    def run(self, ctx: Context) -> None:
        ctx.traj.evaluate(ctx.initial(self.population, self.seed))
        ctx.on_batch()
        rng = np.random.default_rng([self.seed, 2])
        while ctx.traj.remaining > 0:
            batch = ctx.sample_new(rng, min(self.population, ctx.traj.remaining))
            if not batch:
                break  # the space (or its feasible part) is exhausted
            ctx.traj.evaluate(batch)
            ctx.on_batch()


@dataclass(frozen=True)
class NSGA2Search:
    """pymoo's NSGA-II with every offspring evaluated for real (ask/tell)."""

    population: int = 10
    seed: int = 0

    def run(self, ctx: Context) -> None:
        _run_nsga2(ctx, self.population, self.seed)


def _run_nsga2(ctx: Context, population: int, seed: int) -> None:
    space, traj, goals = ctx.space, ctx.traj, ctx.goals
    init = ctx.initial(population, seed)
    X0 = np.array([space.encode(c) for c in init])
    algo = make_nsga2(space, ctx.counts, population, X0, traj.canon)
    algo.setup(SubnetProblem(space, goals), seed=seed, termination=NoTermination())
    rng = np.random.default_rng([seed, 1])
    while traj.remaining > 0:
        pop = algo.ask()
        X = np.asarray(pop.get("X"), dtype=int)
        cfgs = [space.decode(x) for x in X]
        new = [i for i, c in enumerate(cfgs) if traj.is_new(c) and ctx.analytic_ok(c)]
        if not new:  # nothing new: inject random configs so the search cannot stall
            extra = ctx.sample_new(rng, population)
            if not extra:
                break
            pop = Population.new(X=np.array([space.encode(c) for c in extra]))
            X, cfgs, new = pop.get("X").astype(int), extra, list(range(len(extra)))
        evaluated = traj.evaluate([cfgs[i] for i in new])
        ctx.on_batch()
        if len(evaluated) < len(new):
            break  # budget spent mid-generation
        by_key = {e.config.key(): e.values for e in traj.history}
        rows = [by_key.get(c.key()) or _infeasible_values(ctx, c) for c in cfgs]
        pop.set("F", goals.minimised(goals.F(rows)))
        if goals.constraints:
            pop.set(
                "G", np.array([[c.violation(r[c.objective.name]) for c in goals.constraints] for r in rows])
            )
        algo.tell(infills=pop)


def _infeasible_values(ctx: Context, cfg: SubnetConfig) -> dict[str, float]:
    """Values for a config skipped because it breaks an analytic constraint: exact counts, worst bounds
    for measured objectives, and a neutral value (the bound) for measured constraint targets."""
    counts = ctx.counts.of(cfg)
    goals = ctx.goals
    out = {c.objective.name: c.bound for c in goals.constraints}
    out.update({o.name: worst for o, (_, worst) in zip(goals.objectives, goals.bounds, strict=True)})
    out.update({k: v for k, v in counts.items() if k in out})
    return out


@dataclass(frozen=True)
class LINAS:
    """LINAS: real evaluations of batches proposed by NSGA-II on per-objective predictors."""

    population: int = 10
    """Real evaluations per loop (and the first, random population)."""
    seed: int = 0
    predictor: str = "auto"
    """auto, ensemble, ridge, svr or gbr (``predictors.KINDS``)."""
    inner_generations: int = 1000
    """NSGA-II generations on the predictors per loop."""
    inner_population: int | None = None
    """NSGA-II population on the predictors (default max(50, 2 x population))."""
    screen: int = 0
    """Proxy screen: each loop scores screen x population candidates with the cheap proxy and spends the
    real evaluations on the best of them by predictors that take the proxy as an input (0: no screen)."""
    halving: int = 0
    """Multi-fidelity (successive halving, one low rung): each loop proposes halving x population
    candidates, scores them on the low rung (``Context.rung``: 1/halving of the questions) and evaluates
    only the best population of them on all questions (0: off)."""

    def run(self, ctx: Context) -> None:
        _run_linas(self, ctx)


def _run_linas(algo: LINAS, ctx: Context) -> None:
    traj, goals = ctx.traj, ctx.goals
    traj.evaluate(ctx.initial(algo.population, algo.seed))
    ctx.on_batch()
    halving = algo.halving if algo.halving > 1 and ctx.rung is not None and goals.measured else 1
    loop = 0
    while traj.remaining > 0:
        loop += 1
        batch_size = min(algo.population, traj.remaining)
        payload = ctx.batches.get(loop, traj.history) if ctx.batches else None
        if payload is None:
            payload = propose_linas(algo, ctx, loop, halving * batch_size)
            if ctx.batches:
                ctx.batches.put(loop, traj.history, payload)
        candidates = [SubnetConfig.from_dict(d) for d in payload["configs"]]
        if halving > 1:
            idx = promote(ctx, candidates, payload["predicted"], batch_size)
        else:
            idx = list(range(min(batch_size, len(candidates))))
        chosen = [candidates[i] for i in idx]
        if not chosen:
            break
        evaluated = traj.evaluate(chosen)
        for o in goals.measured:
            true = [e.values[o.name] for e in evaluated]
            pred = [payload["predicted"][o.name][i] for i in idx][: len(evaluated)]
            row = {
                "loop": loop,
                "objective": o.name,
                **payload["predictors"][o.name],
                "n_new": len(evaluated),
                "kendall_tau": kendall_tau(true, pred),
                "mape": mape(true, pred),
            }
            ctx.quality(loop, o.name, row)
        ctx.on_batch()


def promote(
    ctx: Context, candidates: list[SubnetConfig], predicted: dict[str, list[float]], k: int
) -> list[int]:
    """Successive halving's promotion: score every candidate on the low rung and return the indices of the
    k to evaluate on all questions, chosen by ``select_batch`` on their low-rung values.

    A low rung asks other (fewer) questions, so its values are shifted onto the full evaluations' scale
    first: by the mean full-minus-low difference of the configs evaluated on both (every earlier promoted
    one), or, before there are two, by the mean predicted-minus-low difference of the candidates.
    """
    if not candidates:
        return []
    space, goals, traj = ctx.space, ctx.goals, ctx.traj
    low = ctx.rung(candidates)
    X = np.array([space.encode(c) for c in candidates])
    values = dict(ctx.counts(X))
    both = [e for e in traj.history if e.config.key() in traj.rung_values]
    for o in goals.measured:
        v = np.array([r[o.name] for r in low], dtype=float)
        if len(both) >= 2:
            shift = np.mean([e.values[o.name] - traj.rung_values[e.config.key()][o.name] for e in both])
        else:
            shift = float(np.mean(np.asarray(predicted[o.name], dtype=float) - v))
        values[o.name] = v + shift
    chosen = {c.key(): i for i, c in enumerate(candidates)}
    return [chosen[c.key()] for c in select_batch(ctx, X, values, k)]


def propose_linas(algo: LINAS, ctx: Context, loop: int, batch_size: int) -> dict:
    """One LINAS step: fit predictors on every evaluation so far, search them with NSGA-II, pick a batch.

    Returns the batch (config dicts) with the predictions for it and the predictors' CV summaries.
    """
    space, traj, goals = ctx.space, ctx.traj, ctx.goals
    encoder = Encoder(space)
    inner_pop = algo.inner_population or max(50, 2 * algo.population)
    hist = traj.history
    features = encoder(np.array([e.x for e in hist]))
    predictors = {
        o.name: Predictor(algo.predictor, seed=algo.seed).fit(features, [e.values[o.name] for e in hist])
        for o in goals.measured
    }

    def values(X):
        out = dict(ctx.counts(X))
        if predictors:
            F = encoder(X)
            out.update({name: p.predict(F) for name, p in predictors.items()})
        return out

    rng = np.random.default_rng([algo.seed, loop])
    # Warm start: the best-ranked real evaluations, then random configs (then the other real ones).
    ranked = [hist[i].config for i in _rank_order(goals, [e.values for e in hist])]
    seeds = ranked[: inner_pop // 2]
    seeds += ctx.sample_new(rng, inner_pop - len(seeds))
    seeds += ranked[inner_pop // 2 :][: max(0, inner_pop - len(seeds))]
    X0 = np.array([space.encode(c) for c in seeds])
    inner_seed = int(np.random.SeedSequence([algo.seed, loop]).generate_state(1)[0] % (2**31))
    with config_context(assume_finite=True):  # skips sklearn's input checks in the hot loop
        res = minimize(
            SubnetProblem(space, goals, values),
            make_nsga2(space, ctx.counts, inner_pop, X0, set()),
            ("n_gen", algo.inner_generations),
            seed=inner_seed,
            verbose=False,
        )
        Xc = np.asarray(res.pop.get("X"), dtype=int)
        screened: dict = {}
        if algo.screen and ctx.proxy is not None and goals.measured:
            chosen, values, predictors, screened = _screen(
                algo, ctx, encoder, features, Xc, values, batch_size
            )
        else:
            chosen = select_batch(ctx, Xc, values(Xc), batch_size)
        if len(chosen) < batch_size:
            chosen += ctx.sample_new(rng, batch_size - len(chosen), exclude={c.key() for c in chosen})
        predicted = values(np.array([space.encode(c) for c in chosen]).reshape(len(chosen), -1))
    return {
        "configs": [c.to_dict() for c in chosen],
        "predicted": {o.name: [float(v) for v in predicted[o.name]] for o in goals.measured},
        "predictors": {name: p.summary() for name, p in predictors.items()},
        **screened,
    }


def _screen(
    algo: LINAS,
    ctx: Context,
    encoder: Encoder,
    history_features: np.ndarray,
    Xc: np.ndarray,
    base_values: Callable,
    batch_size: int,
):
    """The proxy screen: the ``screen x batch`` best candidates by the config-only predictors (in
    ``select_batch`` order) get the cheap proxy; predictors refitted with the proxy as an input rank them
    again, and ``select_batch`` takes the batch from them. Returns (batch, values function of the screened
    configs, the proxy-aware predictors, a record for the batch payload)."""
    space, goals, hist = ctx.space, ctx.goals, ctx.traj.history
    missing = [e.seq for e in hist if not all(k in e.measured for k in PROXY_INPUTS)]
    if missing:
        raise LlamanasError(f"Proxy screen: evaluations {missing[:5]} carry no proxy values {PROXY_INPUTS}.")
    pool = select_batch(ctx, Xc, base_values(Xc), algo.screen * batch_size)
    if not pool:
        return [], base_values, {}, {}
    proxied = {c.key(): p for c, p in zip(pool, ctx.proxy(pool), strict=True)}

    def with_proxy(encoded: np.ndarray, proxy_rows: list[dict]) -> np.ndarray:
        return np.column_stack([encoded, [[r[k] for k in PROXY_INPUTS] for r in proxy_rows]])

    F = with_proxy(history_features, [e.measured for e in hist])
    predictors = {
        o.name: Predictor(algo.predictor, seed=algo.seed).fit(F, [e.values[o.name] for e in hist])
        for o in goals.measured
    }

    def values(X: np.ndarray) -> dict:
        out = dict(ctx.counts(X))
        rows = [proxied.get(space.decode(x).key()) for x in X]
        known = np.array([r is not None for r in rows])
        fallback = base_values(X[~known]) if (~known).any() else {}  # random fillers: no proxy
        for name, p in predictors.items():
            v = np.zeros(len(X))
            if known.any():
                v[known] = p.predict(with_proxy(encoder(X[known]), [r for r in rows if r is not None]))
            if (~known).any():
                v[~known] = fallback[name]
            out[name] = v
        return out

    Xp = np.array([space.encode(c) for c in pool])
    chosen = select_batch(ctx, Xp, values(Xp), batch_size)
    record = {"screened": len(pool), "proxy": [proxied[c.key()] for c in chosen]}
    return chosen, values, predictors, record


def _rank_order(goals: Goals, rows: list[dict[str, float]]) -> list[int]:
    """Indices by (infeasible last, non-dominated rank, index)."""
    if not rows:
        return []
    F = goals.minimised(goals.F(rows))
    feas = goals.feasible(rows)
    rank = np.full(len(rows), len(rows) + 1)
    idx = np.flatnonzero(feas)
    if len(idx):
        for r, front in enumerate(NonDominatedSorting().do(F[idx])):
            rank[idx[front]] = r
    return sorted(range(len(rows)), key=lambda i: (rank[i], i))


def select_batch(ctx: Context, X: np.ndarray, values: dict[str, np.ndarray], k: int) -> list[SubnetConfig]:
    """Up to k new configs from the candidates X (rows), given their predicted values, in order.

    1. Greedy predicted hypervolume gain: next comes the feasible candidate that adds the most hypervolume
       to the real front plus the candidates already chosen. A candidate next to a chosen one adds little,
       so the batch spreads along the front instead of clustering where the predictor is most optimistic.
    2. When no candidate adds anything, the other feasible ones by predicted front rank, each front in
       greedy max-min order (farthest from every real or chosen point first).
    3. Candidates predicted to break a constraint come last, least violation first.
    """
    goals, space, traj = ctx.goals, ctx.space, ctx.traj
    if k <= 0:
        return []
    first: dict[bytes, int] = {}
    for i, key in enumerate(canonical_keys(ctx.counts, X)):
        first.setdefault(key, i)
    cand = np.array(sorted(i for key, i in first.items() if key not in traj.canon), dtype=int)
    if not len(cand):
        return []
    # Normalised, minimised; predictions beyond the best bound (e.g. a negative NLL) are clipped to it.
    Fn = np.maximum(
        objmod.normalise(np.column_stack([values[o.name][cand] for o in goals.objectives]), goals.bounds), 0.0
    )
    cv = np.zeros(len(cand))
    if goals.constraints:
        G = np.column_stack([c.violation(values[c.objective.name][cand]) for c in goals.constraints])
        cv = np.maximum(G, 0).sum(axis=1)
    real = [e.values for e in traj.history]
    pts = np.zeros((0, Fn.shape[1]))
    if real:
        pts = objmod.normalise(goals.F(real), goals.bounds)[goals.feasible(real)]
        pts = pts[objmod.pareto_mask(pts)] if len(pts) else pts
    chosen: list[int] = []
    left = [int(i) for i in np.flatnonzero(cv <= 0)]
    hv = objmod.hypervolume(pts)
    while left and len(chosen) < k:
        gains = np.array([objmod.hypervolume(np.vstack([pts, Fn[i]])) - hv for i in left])
        j = int(np.argmax(gains))  # first wins ties: deterministic
        if gains[j] <= 1e-12:
            break
        chosen.append(left.pop(j))
        pts = np.vstack([pts, Fn[chosen[-1]]])
        pts = pts[objmod.pareto_mask(pts)]
        hv = objmod.hypervolume(pts)
    if left and len(chosen) < k:
        placed = np.vstack([pts, Fn[chosen]]) if chosen else pts
        rest = np.array(left)
        for front in NonDominatedSorting().do(Fn[rest]):
            g = list(rest[front])
            while g and len(chosen) < k:
                if len(placed):
                    d = np.min(np.linalg.norm(Fn[g][:, None, :] - placed[None, :, :], axis=2), axis=1)
                    j = int(np.argmax(d))
                else:
                    j = int(np.argmin(Fn[g].sum(axis=1)))
                chosen.append(g.pop(j))
                placed = np.vstack([placed, Fn[chosen[-1]]])
    infeasible = np.flatnonzero(cv > 0)
    chosen += [int(i) for i in infeasible[np.argsort(cv[infeasible], kind="stable")]][
        : max(0, k - len(chosen))
    ]
    return [space.decode(X[cand[i]]) for i in chosen]


ALGORITHMS: dict[str, type[Algorithm]] = {"random": RandomSearch, "nsga2": NSGA2Search, "linas": LINAS}


def make_algorithm(name: str, **settings) -> Algorithm:
    """``ALGORITHMS[name]`` with the hyperparameters it owns taken from ``settings`` by field name (the rest
    are ignored: a run's settings hold every algorithm's)."""
    if name not in ALGORITHMS:
        raise unknown("algorithm", name, tuple(ALGORITHMS))
    cls = ALGORITHMS[name]
    return cls(**{f.name: settings[f.name] for f in dataclasses.fields(cls) if f.name in settings})
