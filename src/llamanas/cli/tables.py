"""The rich tables the commands print: results in, a table out, nothing computed here."""

from __future__ import annotations

from rich.table import Table

from llamanas.evaluation.metrics import at_chance
from llamanas.supernet.space import SearchSpace


def results_table(title: str, results: dict) -> Table:
    """Evaluation results (``TaskResult`` per task) with standard errors; accuracies within two standard
    errors of chance are marked."""
    table = Table(title=title)
    for col in ("task", "split", "n", "shots", "metric", "value", "± stderr", "chance"):
        table.add_column(col, justify="right" if col not in ("task", "split", "metric") else "left")
    for name, r in results.items():
        for metric, value in r.metrics.items():
            se = r.stderr.get(metric)
            chance = f"{r.chance:.3f}" if r.chance is not None and metric.startswith("acc") else ""
            flag = ""
            if chance and at_chance(value, se, r.chance):
                flag = " (at chance)"
            table.add_row(
                name,
                r.split,
                str(r.n),
                str(r.num_fewshot),
                metric,
                f"{value:.4f}{flag}",
                f"{se:.4f}" if se else "",
                chance,
            )
    return table


def key_value_table(title: str, values: dict) -> Table:
    """One row per non-empty value, numbers with thousands separators."""
    table = Table(title=title, show_header=False)
    for k, v in values.items():
        if v is not None:
            table.add_row(
                k, f"{v:,.2f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
            )
    return table


def quantization_table(title: str, c, method: str) -> Table:
    """Size, speed and accuracy before and after quantization (a ``QuantComparison``)."""
    table = Table(title=title)
    for col in ("", "before (16-bit)", f"after ({method})"):
        table.add_column(col, justify="right" if col else "left")
    b, a = c.before, c.after
    table.add_row("weight MiB", f"{b.bytes / 2**20:.2f}", f"{a.bytes / 2**20:.2f} (x{c.size_ratio:.3f})")
    if a.file_bytes:
        table.add_row("file MiB", "", f"{a.file_bytes / 2**20:.2f}")
    if b.latency_ms is not None:
        table.add_row(f"prefill ms ({c.dtype})", f"{b.latency_ms:.1f}", f"{a.latency_ms:.1f}")
        table.add_row("generation tok/s", f"{b.throughput_tok_s:.1f}", f"{a.throughput_tok_s:.1f}")
    for task, r in a.results.items():
        for metric, v in r["metrics"].items():
            before = b.results.get(task, {}).get("metrics", {}).get(metric)
            table.add_row(f"{task} {metric}", f"{before:.4f}" if before is not None else "", f"{v:.4f}")
    return table


def baselines_table(title: str, rows, tasks: list[str]) -> Table:
    """One row per baseline (``BaselineRow``): source, method, size and accuracy per task."""
    table = Table(title=title)
    for col in ("source", "method", "target", "params", "fraction", *tasks):
        table.add_column(col, justify="left" if col in ("source", "method") else "right")
    for r in rows:
        accs = [
            f"{r.results[t]['metrics'].get('acc', float('nan')):.4f}" if t in r.results else "" for t in tasks
        ]
        table.add_row(
            r.source,
            r.method,
            f"{r.target:.2f}",
            f"{r.params:,}" if r.params else r.note[:40],
            f"{r.fraction:.3f}" if r.fraction else "",
            *accs,
        )
    return table


def front_table(view, title: str) -> Table:
    """The Pareto front of a run (a ``RunView``): objectives, constraint values, params, depth, config."""
    goals = view.goals
    table = Table(title=title)
    names = [o.name for o in goals.objectives]
    extra = [c.objective.name for c in goals.constraints if c.objective.name not in names]
    for col in (
        "id",
        *(f"{n} ({o.direction})" for n, o in zip(names, goals.objectives, strict=True)),
        *extra,
    ):
        table.add_column(col, justify="right")
    params = [] if "params" in names + extra else ["params"]
    for col in (*params, "depth"):
        table.add_column(col, justify="right")
    table.add_column("config")
    for m in view.front:
        table.add_row(
            str(m.id),
            *(_num(m.values[n]) for n in names + extra),
            *(f"{int(m.measured[p]):,}" for p in params),
            str(m.config.depth),
            short_config(m.config),
        )
    return table


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"


def short_config(cfg) -> str:
    """Layers as ranges plus the distinct MLP sizes and KV groups (the full JSON is in front.json)."""
    parts, start = [], cfg.layers[0]
    for a, b in zip(cfg.layers, [*cfg.layers[1:], None], strict=True):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    bits = f"; bits {sorted(set(cfg.bits))}" if cfg.bits else ""
    return f"layers {','.join(parts)}; mlp {sorted(set(cfg.mlp))}; kv {sorted(set(cfg.kv_groups))}{bits}"


def space_rows(space: SearchSpace) -> dict[str, str]:
    """What ``llamanas space`` prints of a search space: dimensions, choices, size and the two ends."""
    a = space.arch
    rows = {"mode": space.mode, "layers": f"{a.num_layers} (min depth {space.min_depth})"}
    if space.mode == "first_n":
        rows["depth choices"] = ", ".join(map(str, space.depth_choices))
    else:
        rows["always kept"] = ", ".join(map(str, space.always_keep)) or "-"
    mlp = sorted({m for ms in space.mlp_choices for m in ms})
    kv = sorted({k for ks in space.kv_choices for k in ks})
    rows["MLP sizes"] = f"{', '.join(map(str, mlp))} (of {a.intermediate_size}; 0 = MLP skipped)"
    rows["KV groups"] = (
        f"{', '.join(map(str, kv))} (of {a.num_kv_heads}; {a.heads_per_group} query heads each; "
        "0 = attention skipped)"
    )
    if space.bits_choices:
        rows["weight bits"] = ", ".join(map(str, sorted({b for bs in space.bits_choices for b in bs})))
    if space.hidden_choices:
        rows["hidden size"] = (
            f"{', '.join(map(str, space.hidden_choices))} (of {a.hidden_size}; the residual stream)"
        )
    size = space.size()
    rows["variables"] = str(len(space.variable_names))
    rows["sub-networks"] = f"{size:.3e}" if size > 10**6 else str(size)
    rows["params (largest)"] = f"{space.largest().num_params(a):,}"
    rows["params (smallest)"] = f"{space.smallest().num_params(a):,}"
    return rows
