"""Stability: iterate trained rules far past their training horizon (paper, Table 1).

For each rule (normally one meta-trained with the sample pool and one without), ``num`` task
nets of its first training architecture grow from fresh seeds for ``T = horizon_mult * k_max``
rule steps, and the cross-entropy on the *training* split is measured after every step
``t = 0 .. T`` (``t = 0`` is the seed). Per net:

* **epochs to train** ``t*``: the first step at which the training loss reaches its minimum
  ``L* = min_t L_t`` over ``0 .. T``;
* **epochs within 10%**: the number of consecutive steps after ``t*`` whose loss stays at or
  below ``(1 + tolerance) * L*`` (``tolerance = 0.1``), i.e. ``t_exit - t* - 1`` where
  ``t_exit`` is the first step after ``t*`` with a larger (or non-finite) loss. A net that
  never leaves the band before ``T`` is *capped* (right-censored) at ``T - t*``: its true value
  is at least that; the tables say how many nets were capped.

The table gives mean, standard deviation and median over the nets, how many reached
``10 * k_max`` steps within the band, and test accuracy at ``k_max``, ``10 * k_max`` and ``T``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gnca.architecture import Architecture
from gnca.cliargs import nonneg_float
from gnca.experiments.command import add_horizon_mult, rule_sources, run_and_report
from gnca.experiments.common import ExperimentError, RuleSource, TrainedRule, md_table, mean_std
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.seeds import HIGHER, LOWER, Headline, SeedCurves
from gnca.graph import num_graphs, weight_batch


def band_metrics(
    loss: torch.Tensor, tolerance: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-net stability metrics of a loss curve.

    Args:
        loss: ``(T + 1, G)`` loss of ``G`` nets after rule steps ``0 .. T``.
        tolerance: relative width of the band above the minimum.

    Returns:
        ``(t_min, l_min, within, capped)``, each ``(G,)``: the first step of the minimum, the
        minimum, the number of consecutive steps after ``t_min`` inside the band, and whether
        the band was never left before ``T`` (then ``within = T - t_min`` is a lower bound).
    """
    clean = torch.nan_to_num(loss.to(torch.float64), nan=float("inf"))
    steps = clean.shape[0]
    l_min, t_min = clean.min(0)  # first occurrence of the minimum
    limit = (1.0 + tolerance) * l_min
    t = torch.arange(steps).unsqueeze(1)  # (T + 1, 1)
    outside = (clean > limit.unsqueeze(0)) & (t > t_min.unsqueeze(0))  # (T + 1, G)
    never = ~outside.any(0)
    first_exit = torch.where(never, torch.full_like(t_min, steps), outside.float().argmax(0))
    within = first_exit - t_min - 1
    return t_min, l_min, within, never


def max_abs_weight(graph, w: torch.Tensor) -> torch.Tensor:
    """``(G,)`` largest ``|w|`` of every net (``inf`` when a weight is NaN)."""
    absw = torch.nan_to_num(w.abs(), nan=float("inf"))
    out = torch.zeros(num_graphs(graph), dtype=absw.dtype, device=w.device)
    return out.scatter_reduce(0, weight_batch(graph), absw, "amax")


def run_stability(
    pooled: RuleSource,
    unpooled: RuleSource | None,
    out: str | Path,
    *,
    num: int = 100,
    horizon_mult: int = 50,
    tolerance: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    retrain: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the stability experiment and write its outputs into ``out``.

    Outputs: ``stability.md`` (the table), ``stability.csv`` (one row per rule),
    ``stability_nets.csv`` (one row per net), ``stability_curve.csv`` (mean and 10-90%
    band of the loss per step), ``stability.png`` and ``summary.json``.

    Args:
        pooled: the rule meta-trained with the sample pool (its config must have a pool).
        unpooled: the rule meta-trained without it (``pool.size: 0``), or ``None``.
        out: output folder (rules trained here go to ``out/rules/<label>``).
        num: nets grown per rule.
        horizon_mult: steps grown, as a multiple of the rule's ``train.k_max``.
        tolerance: relative band around the minimum loss (0.1 = the paper's 10%).
        seed: seed of the grown nets' initial states and fire masks.
        device: where to grow (and train).
        retrain: meta-train again even if ``out/rules/<label>`` holds a finished run.
        progress: show progress bars.
    """
    bad = num < 1 or horizon_mult < 1 or tolerance < 0
    message = "num and horizon_mult must be >= 1 and tolerance >= 0"
    run = ExperimentRun(
        "stability", out, device=device, retrain=retrain, progress=progress, checks=[(bad, message)]
    )
    rules = run.obtain(pooled, unpooled)
    _check_pools(rules)
    grown = [_grow_long(run, tr, num, horizon_mult * tr.cfg.train.k_max, seed) for tr in rules]
    summary_rows, net_rows, curve_rows = [], [], []
    for g in grown:
        bands = band_metrics(g.loss, tolerance)
        net_rows += _net_rows(g, *bands)
        curve_rows += _curve_rows(g)
        summary_rows.append(_summary_row(g, *bands))

    curves = {g.tr.label: {"loss": g.loss, "acc": g.acc} for g in grown}
    horizons = {g.tr.label: g.k for g in grown}
    png = plot(curves, horizons, run.path("stability.png"))
    run.write_text("stability.md", stability_markdown(summary_rows, tolerance))
    run.write_csv("stability.csv", summary_rows)
    run.write_csv("stability_nets.csv", net_rows)
    run.write_csv("stability_curve.csv", curve_rows)
    return run.finish(
        {
            "nets": num,
            "horizon_mult": horizon_mult,
            "tolerance": tolerance,
            "seed": seed,
            "rules": run.rule_infos(),
            "table": summary_rows,
            "figure": str(png),
        }
    )


def _check_pools(rules: list[TrainedRule]) -> None:
    """The first rule must have been meta-trained with a pool; warn if the second was too."""
    if rules[0].cfg.pool.size == 0:
        raise ExperimentError(
            f"rule {rules[0].label!r} was meta-trained without a sample pool (pool.size: 0); "
            f"the pooled rule needs pool.size > 0"
        )
    if len(rules) > 1 and rules[1].cfg.pool.size != 0:
        print(
            f"warning: rule {rules[1].label!r} was meta-trained with pool.size = "
            f"{rules[1].cfg.pool.size}, not without a pool",
            file=sys.stderr,
        )


@dataclass
class _Grown:
    """The curves of one rule's nets grown far past the horizon ``k``: ``(T + 1, G)`` training
    loss, test accuracy and largest ``|w|`` after rule steps ``0 .. T``."""

    tr: TrainedRule
    arch: Architecture
    k: int
    total: int
    loss: torch.Tensor
    acc: torch.Tensor
    absw: torch.Tensor


def _grow_long(run: ExperimentRun, tr: TrainedRule, num: int, total: int, seed: int) -> _Grown:
    """Grow ``num`` nets of the rule's first training architecture for ``total`` steps,
    measuring training loss, test accuracy and the largest weight after every step."""
    task = tr.task
    arch = tr.architectures()[0]
    X_tr, y_tr = run.split(tr, "train")
    X_te, y_te = run.split(tr, "test")
    test_acc: list[torch.Tensor] = []
    max_w: list[torch.Tensor] = []

    def metric(graph, w: torch.Tensor) -> torch.Tensor:
        test_acc.append(task.accuracy(graph, w, X_te, y_te).cpu())
        max_w.append(max_abs_weight(graph, w).cpu())
        return task.loss(graph, w, X_tr, y_tr)

    res = run.grow(
        tr,
        arch,
        num,
        total,
        seed=seed,
        metric=metric,
        record_at=range(total + 1),
        bar=f"stability {tr.label}",
    )
    assert res.curve is not None
    k = tr.cfg.train.k_max
    return _Grown(tr, arch, k, total, res.curve, torch.stack(test_acc), torch.stack(max_w))


def _net_rows(g: _Grown, t_min, l_min, within, capped) -> list[dict[str, Any]]:
    """One row per net: its band metrics and test accuracy at ``k`` and at the end."""
    k, total = g.k, g.total
    return [
        {
            "rule": g.tr.label,
            "net": i,
            "epochs_to_train": int(t_min[i]),
            "min_loss": float(l_min[i]),
            "epochs_within": int(within[i]),
            "capped": bool(capped[i]),
            f"test_acc_{k}": float(g.acc[k, i]),
            f"test_acc_{total}": float(g.acc[total, i]),
            f"max_abs_w_{total}": float(g.absw[total, i]),
        }
        for i in range(g.loss.shape[1])
    ]


def _curve_rows(g: _Grown) -> list[dict[str, Any]]:
    """One row per rule step: mean, median and 10-90% band of the loss, mean test accuracy."""
    rows = []
    for t in range(g.total + 1):
        row = g.loss[t].to(torch.float64)
        finite = torch.nan_to_num(row, nan=float("inf"))
        rows.append(
            {
                "rule": g.tr.label,
                "step": t,
                "loss_mean": float(row.mean()),
                "loss_median": float(finite.median()),
                "loss_p10": float(torch.quantile(finite, 0.1)),
                "loss_p90": float(torch.quantile(finite, 0.9)),
                "test_acc_mean": float(g.acc[t].mean()),
            }
        )
    return rows


def _summary_row(g: _Grown, t_min, l_min, within, capped) -> dict[str, Any]:
    """The rule's row of the table."""
    k, total, loss, acc = g.k, g.total, g.loss, g.acc
    ett_m, ett_s = mean_std(t_min)
    win_m, win_s = mean_std(within)
    ten_k = min(10 * k, total)
    peak = float(acc.mean(1).max())  # the best mean test accuracy over steps 0 .. T
    return {
        "rule": g.tr.label,
        "pool_size": g.tr.cfg.pool.size,
        "meta_steps": g.tr.meta_steps,
        "horizon_k_max": k,
        "steps_grown": total,
        "nets": loss.shape[1],
        "epochs_to_train_mean": ett_m,
        "epochs_to_train_std": ett_s,
        "epochs_to_train_median": float(t_min.double().median()),
        "epochs_within_mean": win_m,
        "epochs_within_std": win_s,
        "epochs_within_median": float(within.double().median()),
        "epochs_within_min": int(within.min()),
        "capped": int(capped.sum()),
        "nets_within_10x_horizon": int((within >= ten_k).sum()),
        "min_loss_mean": float(l_min.mean()),
        f"loss_at_{k}": float(loss[k].double().mean()),
        f"loss_at_{total}": float(loss[total].double().mean()),
        "test_acc_at_k": float(acc[k].mean()),
        "test_acc_at_10k": float(acc[ten_k].mean()),
        "test_acc_at_end": float(acc[total].mean()),
        "test_acc_peak": peak,
        "test_acc_drop_at_10k": peak - float(acc[ten_k].mean()),
        "test_acc_drop_at_end": peak - float(acc[total].mean()),
        "max_abs_w_at_end": float(g.absw[total].median()),
        **pool_ages(g.tr),
        "arch": g.arch.describe(),
    }


def pool_ages(tr: TrainedRule) -> dict[str, float | None]:
    """Median and largest age (rule steps since the seed) of the samples in the rule's pool at
    the end of meta-training: how far past one unroll pooled samples lived. ``None`` without a
    pool or a checkpoint that records ages."""
    none: dict[str, float | None] = {"pool_age_median": None, "pool_age_max": None}
    if tr.checkpoint is None or not Path(tr.checkpoint).exists():
        return none
    d = torch.load(tr.checkpoint, map_location="cpu", weights_only=True)
    ages = [p["age"] for p in d.get("pools", []) if "age" in p]
    if not ages:
        return none
    every = torch.cat(ages).double()
    if not bool((every > 0).any()):  # a checkpoint from before ages were counted
        return none
    return {"pool_age_median": float(every.median()), "pool_age_max": float(every.max())}


def stability_markdown(rows: list[dict[str, Any]], tolerance: float = 0.1) -> str:
    """The stability table in Markdown (one row per rule)."""
    pct = f"{tolerance * 100:g}%"
    header = [
        "rule",
        "pool",
        "K",
        "steps grown",
        "epochs to train",
        f"epochs within {pct}",
        "median within",
        "capped",
        f"nets >= 10K within {pct}",
        "test acc @K",
        "@10K",
        "@end",
        "peak",
        "pool age median / max",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r["rule"],
                r["pool_size"],
                r["horizon_k_max"],
                r["steps_grown"],
                f"{r['epochs_to_train_mean']:.1f} ± {r['epochs_to_train_std']:.1f}",
                f"{r['epochs_within_mean']:.1f} ± {r['epochs_within_std']:.1f}",
                f"{r['epochs_within_median']:.0f}",
                f"{r['capped']}/{r['nets']}",
                f"{r['nets_within_10x_horizon']}/{r['nets']}",
                f"{r['test_acc_at_k']:.3f}",
                f"{r['test_acc_at_10k']:.3f}",
                f"{r['test_acc_at_end']:.3f}",
                f"{r['test_acc_peak']:.3f}" if "test_acc_peak" in r else "",
                _ages(r),
            ]
        )
    return md_table(header, body)


def _ages(r: dict[str, Any]) -> str:
    med, top = r.get("pool_age_median"), r.get("pool_age_max")
    return "" if med is None or top is None else f"{med:.0f} / {top:.0f}"


# ---------------------------------------------------------------------- command line
HELP = "loss far past the training horizon, pooled vs unpooled rule (Iris)"
DESCRIPTION = (
    "Grow nets for horizon-mult x k_max rule steps; report epochs to train and epochs within "
    "10%% of the minimum training loss, pooled vs unpooled rule."
)
CHECKPOINT_HELP = "checkpoint of the pooled rule (instead of meta-training --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gnca experiment stability`` after the shared ones."""
    parser.add_argument(
        "--nopool-config", help="config of the unpooled rule (default: --config, pool.size=0)"
    )
    parser.add_argument("--nopool-checkpoint", help="checkpoint of the unpooled rule")
    parser.add_argument("--pooled-only", action="store_true", help="skip the unpooled rule")
    add_horizon_mult(parser, 50)
    parser.add_argument(
        "--tolerance",
        type=nonneg_float,
        default=0.1,
        help="band above the minimum loss (0.1 = 10%%)",
    )


def main(args: argparse.Namespace) -> int:
    """``gnca experiment stability``: one run of :func:`run_stability`."""
    cfg, pooled, unpooled = rule_sources(
        args,
        "stability",
        ("pooled", "unpooled"),
        control=(args.nopool_config, args.nopool_checkpoint, "nopool", {"size": 0}),
        skip_control=args.pooled_only,
        control_error="the unpooled rule needs --nopool-config, --nopool-checkpoint or --config "
        "(or pass --pooled-only)",
    )
    return run_and_report(
        args,
        "stability",
        cfg,
        run_stability,
        pooled,
        unpooled,
        horizon_mult=args.horizon_mult,
        tolerance=args.tolerance,
    )


# ---------------------------------------------------------------------- --seeds
SEED_CURVES = SeedCurves(
    "stability_curve.csv",
    x="step",
    xlabel="rule steps",
    ys=("loss_median", "test_acc_mean"),
    ylabels=("median training loss over nets", "mean test accuracy"),
    log=("loss_median",),
)


#: A rule's headline metrics where higher is better, then those where lower is better
#: (accuracy lost since the peak, taken only where the summary has them).
HEADLINE_KEYS = (
    "epochs_within_mean",
    "epochs_within_median",
    "nets_within_10x_horizon",
    "test_acc_at_k",
    "test_acc_at_10k",
    "test_acc_at_end",
)
HEADLINE_DROPS = ("test_acc_drop_at_10k", "test_acc_drop_at_end")


def headline(s: dict[str, Any]) -> Headline:
    """The metrics and claims of one run's ``summary.json`` that ``--seeds`` compares."""
    h = Headline()
    rows = s["table"]
    for r in rows:
        h.add(r["rule"], r, HEADLINE_KEYS, HIGHER)
        h.add(r["rule"], r, [key for key in HEADLINE_DROPS if key in r], LOWER)
    first = rows[0]
    pct = f"{s['tolerance'] * 100:g}%"
    ten_k = 10 * first["horizon_k_max"]
    h.claims[
        f"{first['rule']}: loss within {pct} of its minimum for >= 10 K = {ten_k} steps on "
        f"average (epochs_within_mean >= {ten_k})"
    ] = first["epochs_within_mean"] >= ten_k
    if "test_acc_drop_at_end" in first:
        end = first["steps_grown"]
        h.claims[
            f"{first['rule']}: test accuracy at 10 K and at {end} steps within 0.02 of its peak"
        ] = max(first["test_acc_drop_at_10k"], first["test_acc_drop_at_end"]) <= 0.02
    if len(rows) > 1:
        other = rows[1]
        h.claims[f"{first['rule']} more stable than {other['rule']} (epochs_within_mean)"] = (
            first["epochs_within_mean"] > other["epochs_within_mean"]
        )
    return h


# ---------------------------------------------------------------------- figure
def plot(curves: dict[str, dict[str, torch.Tensor]], horizons: dict[str, int], path: Path) -> Path:
    """Training loss (log scale) and test accuracy against rule steps, one colour per rule.

    Args:
        curves: ``label -> {"loss": (T + 1, G), "acc": (T + 1, G)}``.
        horizons: ``label -> k_max`` (dashed line at ``K``, dotted at ``10 K``).
        path: the PNG to write.
    """
    from gnca.experiments.plots import COLORS, LOSS_CLIP, pyplot

    plt = pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    lowest, highest = np.inf, 0.0
    for i, (label, c) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        steps = np.arange(c["loss"].shape[0])
        _, lo, hi = _band(c["loss"])
        median = torch.nan_to_num(c["loss"].double(), nan=float("inf")).median(1).values.numpy()
        # non-finite and huge losses are drawn at the top of the (clipped) axis
        median, lo, hi = (
            np.minimum(np.nan_to_num(a, posinf=1e300), 10 * LOSS_CLIP) for a in (median, lo, hi)
        )
        positive = lo[lo > 0]
        if positive.size:
            lowest = min(lowest, float(positive.min()))
        highest = max(highest, float(hi.max()), float(median.max()))
        ax_l.plot(steps, median, color=color, label=f"{label}: median")
        ax_l.fill_between(steps, lo, hi, color=color, alpha=0.2, label=f"{label}: 10-90%")
        acc_m, acc_lo, acc_hi = _band(c["acc"])
        ax_a.plot(steps, acc_m, color=color, label=f"{label}: mean")
        ax_a.fill_between(steps, acc_lo, acc_hi, color=color, alpha=0.2)
        k = horizons[label]
        for ax in (ax_l, ax_a):
            ax.axvline(k, color=color, ls="--", lw=0.8)
            if 10 * k <= steps[-1]:
                ax.axvline(10 * k, color=color, ls=":", lw=0.8)
    ax_l.set_yscale("log")
    clipped = highest > LOSS_CLIP
    if np.isfinite(lowest):
        ax_l.set_ylim(lowest / 2, min(highest * 2, LOSS_CLIP))
    ax_l.set_xlabel("rule steps")
    ax_l.set_ylabel("training cross-entropy")
    ax_l.set_title(
        "loss of grown nets (dashed: K, dotted: 10K)"
        + (f"\n(axis clipped at {LOSS_CLIP:g})" if clipped else "")
    )
    ax_l.legend(fontsize=8)
    ax_a.set_xlabel("rule steps")
    ax_a.set_ylabel("test accuracy")
    ax_a.set_ylim(0, 1.02)
    ax_a.set_title("test accuracy (mean, 10-90% band)")
    ax_a.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _band(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, 10th and 90th percentile over nets of a ``(T, G)`` curve (NaN-safe)."""
    x = torch.nan_to_num(x.to(torch.float64), nan=float("inf"), posinf=1e6)
    return (
        x.mean(1).numpy(),
        torch.quantile(x, 0.1, dim=1).numpy(),
        torch.quantile(x, 0.9, dim=1).numpy(),
    )
