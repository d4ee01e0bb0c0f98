"""Headlines as distributions: one experiment over several meta-training seeds (``--seeds``).

``gnca experiment <name> --seeds N`` runs the experiment once per seed ``S`` into
``OUT/seed-S``, with ``train.seed=S`` applied to every config the experiment meta-trains (its
main and its control rules); the nets it grows keep ``--seed``. This module then reads the
``summary.json`` of every seed and writes into ``OUT``:

* ``seeds.csv``: one row per seed with the experiment's headline metrics (the ``headline`` of
  its module), then the rows ``mean``, ``std`` (sample standard deviation, 0 for one seed),
  ``worst`` and ``worst_seed``;
* ``seeds.md``: the same table, one row per metric, with the direction that is better, and the
  experiment's claims: each holds for ``k`` of ``n`` seeds, and is *reproduced* only when it
  holds for every seed run;
* ``seeds.json``: all of it, with the per-seed folders, the summed wall and CPU seconds and the
  environment (CPU model included);
* ``seeds.png``: the spread over seeds (an experiment with :class:`SeedCurves`, stability and
  robustness: every seed's curves; the others: every seed's value of each headline metric).

The worst seed is the lowest value of a metric where higher is better and the highest where
lower is better; metrics without a better direction (Adam baselines) have none.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gnca.experiments.common import ExperimentError, environment, md_table, write_csv, write_json

HIGHER, LOWER = "higher", "lower"


@dataclass
class Headline:
    """What one seed's run showed: ``metrics`` maps a name to ``(value, better)`` (``better``
    is ``"higher"``, ``"lower"`` or ``None``), ``claims`` maps a claim to whether it held."""

    metrics: dict[str, tuple[float | None, str | None]] = field(default_factory=dict)
    claims: dict[str, bool] = field(default_factory=dict)

    def add(
        self, prefix: str, row: dict[str, Any], keys: Sequence[str], better: str | None
    ) -> None:
        """The metrics ``<prefix>.<key>`` of ``row[key]`` for every key of ``keys``, in order."""
        for key in keys:
            self.metrics[f"{prefix}.{key}"] = (optional_float(row[key]), better)


def optional_float(value: Any) -> float | None:
    """A summary value as a metric: ``None`` stays ``None``."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class SeedCurves:
    """The per-step CSV of an experiment that ``seeds.png`` draws for every seed, one colour
    per rule and one panel per column of ``ys``. Columns in ``log`` (losses) are drawn on a log
    axis, clipped at ``10 * LOSS_CLIP``; the others are accuracies (axis 0 to 1.02)."""

    csv: str  # file name in every seed-S folder (columns: rule, x, ys)
    x: str
    xlabel: str
    ys: tuple[str, ...]
    ylabels: tuple[str, ...]
    log: tuple[str, ...] = ()


#: ``headline(summary) -> Headline``: an experiment module's metrics and claims of one run
HeadlineOf = Callable[[dict[str, Any]], Headline]


def add_targets(h: Headline, targets: Sequence[tuple[str, str, float]]) -> Headline:
    """Add the ``--target`` claims ``(metric, ">=" or "<=", value)`` to ``h``; an unknown
    metric raises :class:`ExperimentError` naming the known ones."""
    for name, op, value in targets:
        if name not in h.metrics:
            raise ExperimentError(
                f"--target: no headline metric {name!r}; the metrics are: {', '.join(h.metrics)}"
            )
        got = h.metrics[name][0]
        ok = got is not None and not math.isnan(got)
        ok = ok and (got >= value if op == ">=" else got <= value)  # type: ignore[operator]
        h.claims[f"{name} {op} {value:g}"] = bool(ok)
    return h


# ---------------------------------------------------------------------- aggregation
def _spread(values: dict[int, float | None], better: str | None) -> dict[str, Any]:
    """Mean, sample std and worst seed of one metric over the seeds that have a value."""
    have = {s: v for s, v in values.items() if v is not None}
    xs = list(have.values())
    if not xs:
        return {"mean": None, "std": None, "worst": None, "worst_seed": None}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    worst_seed = None
    if better is not None:
        nan = [s for s, v in have.items() if math.isnan(v)]
        if nan:  # a seed without a number is the worst
            worst_seed = nan[0]
        else:
            pick = min if better == HIGHER else max
            worst_seed = pick(have, key=lambda s: have[s])
    return {
        "mean": mean,
        "std": std,
        "worst": have[worst_seed] if worst_seed is not None else None,
        "worst_seed": worst_seed,
    }


def verdict(holds: int, runs: int) -> str:
    """``reproduced`` when a claim holds for every seed run, else for how many it does."""
    if holds == runs:
        return "reproduced" if runs > 1 else "holds (1 seed)"
    return f"holds for {holds} of {runs} seeds"


def aggregate(per_seed: dict[int, Headline]) -> dict[str, Any]:
    """Metrics and claims over seeds: ``{"metrics": {name: {...}}, "claims": [...]}``."""
    seeds = list(per_seed)
    names: list[str] = []
    for h in per_seed.values():
        names += [n for n in h.metrics if n not in names]
    metrics = {}
    for name in names:
        better = next(h.metrics[name][1] for h in per_seed.values() if name in h.metrics)
        values = {s: per_seed[s].metrics.get(name, (None, None))[0] for s in seeds}
        metrics[name] = {"better": better, "values": values, **_spread(values, better)}
    claim_names: list[str] = []
    for h in per_seed.values():
        claim_names += [c for c in h.claims if c not in claim_names]
    claims = []
    for claim in claim_names:
        holds = {s: per_seed[s].claims.get(claim, False) for s in seeds}
        k = sum(holds.values())
        claims.append(
            {
                "claim": claim,
                "holds": holds,
                "holds_for": k,
                "seeds": len(seeds),
                "reproduced": k == len(seeds),
                "verdict": verdict(k, len(seeds)),
            }
        )
    return {"metrics": metrics, "claims": claims}


# ---------------------------------------------------------------------- outputs
def _f(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3f}"


def seeds_markdown(experiment: str, seeds: Sequence[int], agg: dict[str, Any], env: dict) -> str:
    """``seeds.md``: the metric table (one column per seed) and the claims."""
    head = ["metric", "better", *[f"seed {s}" for s in seeds], "mean", "std", "worst (seed)"]
    body = []
    for name, m in agg["metrics"].items():
        worst = "-" if m["worst_seed"] is None else f"{_f(m['worst'])} ({m['worst_seed']})"
        body.append(
            [
                name,
                m["better"] or "-",
                *[_f(m["values"][s]) for s in seeds],
                _f(m["mean"]),
                _f(m["std"]),
                worst,
            ]
        )
    seed_text = ", ".join(map(str, seeds))
    parts = [
        f"# {experiment} over {len(seeds)} meta-training seed{'s' * (len(seeds) != 1)} "
        f"(train.seed = {seed_text})",
        f"CPU: {env['cpu_model']} ({env['cpu_count']} cores, {env['torch_threads']} torch "
        f"threads); commit {env['git_commit']}; one run per seed in seed-S/",
        md_table(head, body),
    ]
    if agg["claims"]:
        rows = [
            [
                c["claim"],
                f"{c['holds_for']}/{c['seeds']}",
                ", ".join(str(s) for s, ok in c["holds"].items() if not ok) or "-",
                c["verdict"],
            ]
            for c in agg["claims"]
        ]
        parts.append(md_table(["claim", "seeds where it holds", "fails for seed", "verdict"], rows))
    return "\n\n".join(parts)


def _csv_rows(seeds: Sequence[int], agg: dict[str, Any]) -> list[dict[str, Any]]:
    metrics = agg["metrics"]
    rows: list[dict[str, Any]] = [
        {"seed": s, **{n: m["values"][s] for n, m in metrics.items()}} for s in seeds
    ]
    for stat in ("mean", "std", "worst", "worst_seed"):
        rows.append({"seed": stat, **{n: m[stat] for n, m in metrics.items()}})
    return rows


def summarize_seeds(
    experiment: str,
    out: str | Path,
    seeds: Sequence[int],
    targets: Sequence[tuple[str, str, float]] = (),
    *,
    headline: HeadlineOf,
    curves: SeedCurves | None = None,
) -> dict[str, Any]:
    """Read ``out/seed-S/summary.json`` for every seed and write ``seeds.csv``, ``seeds.md``,
    ``seeds.json`` and ``seeds.png`` into ``out``; return what ``seeds.json`` holds.
    ``headline`` and ``curves`` are the experiment module's."""
    out = Path(out)
    summaries: dict[int, dict[str, Any]] = {}
    for s in seeds:
        path = out / f"seed-{s}" / "summary.json"
        if not path.is_file():
            raise ExperimentError(f"no summary of seed {s}: {path} is missing")
        summaries[s] = json.loads(path.read_text())
    per_seed = {s: add_targets(headline(summ), targets) for s, summ in summaries.items()}
    agg = aggregate(per_seed)
    env = environment()
    write_csv(out / "seeds.csv", _csv_rows(seeds, agg), ["seed", *agg["metrics"]])
    png = plot_seeds(experiment, out, seeds, agg, out / "seeds.png", curves)
    (out / "seeds.md").write_text(seeds_markdown(experiment, seeds, agg, env) + "\n")
    result = {
        "experiment": experiment,
        "seeds": list(seeds),
        "runs": {s: str(out / f"seed-{s}") for s in seeds},
        **agg,
        "figure": str(png),
        "seconds": sum(x["seconds"] for x in summaries.values()),
        "cpu_seconds": sum(x["cpu_seconds"] for x in summaries.values()),
        "environment": env,
    }
    write_json(out / "seeds.json", result)
    return result


# ---------------------------------------------------------------------- figure
def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _curves(path: Path, x: str, ys: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """``rule -> {x: [...], y: [...]}`` of a per-step CSV of one seed's run."""
    by_rule: dict[str, dict[str, list[float]]] = {}
    for row in _read_csv(path):
        c = by_rule.setdefault(row["rule"], {k: [] for k in (x, *ys)})
        for k in (x, *ys):
            c[k].append(float(row[k]))
    return by_rule


def plot_seeds(
    experiment: str,
    out: Path,
    seeds: Sequence[int],
    agg: dict[str, Any],
    path: Path,
    curves: SeedCurves | None = None,
) -> Path:
    """``seeds.png``: with ``curves`` (stability, robustness), every seed's curves, one colour
    per rule; otherwise every seed's value of each headline metric."""
    from gnca.experiments.plots import COLORS, LOSS_CLIP, pyplot

    plt = pyplot()
    if curves is not None and all((out / f"seed-{s}" / curves.csv).is_file() for s in seeds):
        x, ys = curves.x, curves.ys
        fig, axes = plt.subplots(1, len(ys), figsize=(5.5 * len(ys), 4), squeeze=False)
        colors: dict[str, str] = {}
        for s in seeds:
            for rule, c in _curves(out / f"seed-{s}" / curves.csv, x, ys).items():
                first = rule not in colors
                color = colors.setdefault(rule, COLORS[len(colors) % len(COLORS)])
                for ax, y in zip(axes[0], ys, strict=True):
                    values = [min(v, 10 * LOSS_CLIP) for v in c[y]] if y in curves.log else c[y]
                    label = f"{rule} ({len(seeds)} seeds)" if first else None
                    ax.plot(c[x], values, color=color, alpha=0.7, lw=1, label=label)
        for ax, y, ylabel in zip(axes[0], ys, curves.ylabels, strict=True):
            ax.set_xlabel(curves.xlabel)
            ax.set_ylabel(ylabel)
            if y in curves.log:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, 1.02)
            ax.legend(fontsize=8)
        fig.suptitle(f"{experiment}: one curve per meta-training seed ({len(seeds)})")
    else:  # one small panel per metric, its own scale: a dot per seed, a line at the mean
        names = [n for n, m in agg["metrics"].items() if m["mean"] is not None]
        cols = min(4, max(len(names), 1))
        rows = max(1, math.ceil(len(names) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows + 0.6), squeeze=False)
        for ax, name in zip(axes.flat, names, strict=False):
            m = agg["metrics"][name]
            vals = [(s, v) for s, v in m["values"].items() if v is not None]
            xs = [
                (j - (len(vals) - 1) / 2) * min(0.1, 0.8 / max(len(vals), 1))
                for j in range(len(vals))
            ]
            ax.plot(xs, [v for _, v in vals], "o", color=COLORS[0], alpha=0.7, ms=5)
            ax.axhline(m["mean"], color="black", lw=1)
            if m["worst_seed"] is not None and len(vals) > 1:
                j = [s for s, _ in vals].index(m["worst_seed"])
                ax.annotate(f"seed {m['worst_seed']}", (xs[j], vals[j][1]), fontsize=7,
                            xytext=(4, 0), textcoords="offset points", va="center")  # fmt: skip
            finite = [v for _, v in vals if math.isfinite(v)]
            if finite:  # at least +-0.01 around the values: equal seeds do not look spread
                lo, hi = min(finite), max(finite)
                pad = max(0.1 * (hi - lo), 0.01 * max(1.0, *map(abs, finite)))
                ax.set_ylim(lo - pad, hi + pad)
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_xlim(-0.6, 0.6)
            ax.set_xticks([])
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.suptitle(
            f"{experiment}: headline metrics of {len(seeds)} meta-training seeds "
            f"(dots: seeds, line: mean; worst seed named)",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
