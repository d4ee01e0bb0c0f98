"""Robustness: repeated zero-outs after a grown net reaches its best accuracy (paper, Sec. 3).

For each rule (normally one meta-trained with zero-outs applied to pooled samples,
``pool.damage > 0``, and one without), ``num`` task nets of its first training architecture
grow from fresh seeds:

1. **Reaching the best accuracy.** A damage-free pass grows the nets for ``search_mult * k_max``
   rule steps; ``W`` is the first step with the highest mean *training* accuracy. A second pass
   with the same seed repeats that growth exactly up to ``W``.
2. **Zero-outs.** Before rule steps ``W + 1``, ``W + 1 + every``, ... (``zero_outs`` of them,
   ``every = 5``: 20 zero-outs over 100 steps) each net is zeroed out with
   :func:`gnca.damage.zero_out`: one random whole layer plus ``fraction`` (30%) of the other
   weights. Hidden states are kept. Growth continues ``tail`` steps after the last window.
3. **Recovery.** The pre-damage accuracy is the mean test accuracy at ``W``. The recovery of
   zero-out ``j`` is the mean test accuracy at the end of its window, right before zero-out
   ``j + 1`` (step ``W + j * every``), divided by the pre-damage accuracy. The table also gives
   the accuracy of the damaged nets (before any rule step) and the share of nets back to at
   least 95% of their own pre-damage accuracy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gnca.architecture import Architecture
from gnca.cliargs import fraction as fraction_arg
from gnca.cliargs import nonneg_int, positive_int
from gnca.damage import zero_out
from gnca.experiments.command import rule_sources, run_and_report
from gnca.experiments.common import ExperimentError, RuleSource, TrainedRule, md_table
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.seeds import HIGHER, Headline, SeedCurves


def run_robustness(
    damaged: RuleSource,
    undamaged: RuleSource | None,
    out: str | Path,
    *,
    num: int = 100,
    zero_outs: int = 20,
    every: int = 5,
    fraction: float = 0.3,
    tail: int = 20,
    search_mult: int = 2,
    threshold: float = 0.95,
    seed: int = 0,
    device: torch.device | str = "cpu",
    retrain: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the robustness experiment and write its outputs into ``out``.

    Outputs: ``robustness.md`` (recovery per zero-out and a summary per rule),
    ``robustness.csv`` (one row per rule and zero-out), ``robustness_summary.csv`` (one row per
    rule), ``robustness_curve.csv`` (mean accuracy per step), ``robustness.png`` and
    ``summary.json``.

    Args:
        damaged: the rule meta-trained with zero-outs on pooled samples (``pool.damage > 0``).
        undamaged: the rule meta-trained without them, or ``None``.
        out: output folder (rules trained here go to ``out/rules/<label>``).
        num: nets grown per rule.
        zero_outs: number of zero-outs.
        every: rule steps between two zero-outs.
        fraction: share of the weights outside the zeroed layer that are zeroed too.
        tail: rule steps grown after the last recovery window.
        search_mult: the best-accuracy step ``W`` is searched in ``1 .. search_mult * k_max``.
        threshold: the recovery a net must reach to count as recovered (0.95).
        seed: seed of the grown nets (initial states and fire masks) and of the zero-outs.
        device: where to grow (and train).
        retrain: meta-train again even if ``out/rules/<label>`` holds a finished run.
        progress: show which rule is being evaluated.
    """
    bad = min(num, zero_outs, every, search_mult) < 1 or tail < 0 or not 0 <= fraction <= 1
    message = "num, zero_outs, every and search_mult must be >= 1, tail >= 0, fraction in [0, 1]"
    checks = [(bad, message)]
    run = ExperimentRun(
        "robustness", out, device=device, retrain=retrain, progress=progress, checks=checks
    )
    rules = run.obtain(damaged, undamaged)
    _check_damage(rules)
    damage_rel = [1 + j * every for j in range(zero_outs)]
    per_zero_rows, summary_rows, curve_rows = [], [], []
    plot_curves: dict[str, dict[str, np.ndarray]] = {}
    for tr in rules:
        run.note(f"robustness: growing {num} nets with rule {tr.label!r}")
        g = _grow_with_zero_outs(run, tr, num, zero_outs, every, fraction, tail, search_mult, seed)
        rows, nets_ok_all = _per_zero_rows(g, damage_rel, every, threshold)
        per_zero_rows += rows
        summary_rows.append(_summary_row(g, rows, nets_ok_all, threshold))
        plot_curves[tr.label] = _plot_curve(g, damage_rel)
        curve_rows += _curve_rows(g, damage_rel)
    png = plot(plot_curves, damage_rel, run.path("robustness.png"))
    _write_tables(run, summary_rows, per_zero_rows, curve_rows, threshold)
    return run.finish(
        {
            "nets": num,
            "zero_outs": zero_outs,
            "every": every,
            "fraction": fraction,
            "tail": tail,
            "search_mult": search_mult,
            "threshold": threshold,
            "seed": seed,
            "rules": run.rule_infos(),
            "table": summary_rows,
            "per_zero_out": per_zero_rows,
            "figure": str(png),
        }
    )


def _write_tables(
    run: ExperimentRun,
    summary_rows: list[dict[str, Any]],
    per_zero_rows: list[dict[str, Any]],
    curve_rows: list[dict[str, Any]],
    threshold: float,
) -> None:
    """``robustness.md`` and the three CSVs."""
    run.write_text("robustness.md", robustness_markdown(summary_rows, per_zero_rows, threshold))
    run.write_csv("robustness.csv", per_zero_rows)
    run.write_csv("robustness_summary.csv", summary_rows)
    run.write_csv("robustness_curve.csv", curve_rows)


def _check_damage(rules: list[TrainedRule]) -> None:
    """The first rule must have been meta-trained with zero-outs; warn if the second was too."""
    if rules[0].cfg.pool.size == 0 or rules[0].cfg.pool.damage == 0:
        raise ExperimentError(
            f"rule {rules[0].label!r} was meta-trained without zero-outs on pooled samples; "
            f"the damage-trained rule needs pool.size > 0 and pool.damage > 0"
        )
    if len(rules) > 1 and rules[1].cfg.pool.damage != 0:
        print(
            f"warning: rule {rules[1].label!r} was meta-trained with pool.damage = "
            f"{rules[1].cfg.pool.damage}",
            file=sys.stderr,
        )


@dataclass
class _Grown:
    """One rule's nets grown through the zero-outs.

    Attributes:
        tr, arch: the rule and the architecture grown.
        best: ``W``, the step of the best mean training accuracy.
        acc, train_acc: ``(T + 1, G)`` test and training accuracy after rule steps ``0 .. T``.
        damaged_acc: ``(G,)`` test accuracy of the damaged nets of each zero-out, before the
            rule acts.
    """

    tr: TrainedRule
    arch: Architecture
    best: int
    acc: torch.Tensor
    train_acc: torch.Tensor
    damaged_acc: list[torch.Tensor]

    @property
    def total(self) -> int:
        return self.acc.shape[0] - 1


def _per_zero_rows(
    g: _Grown, damage_rel: list[int], every: int, threshold: float
) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Step 3 for one rule: a row per zero-out (recovery at the end of its window), and which
    nets recovered to ``threshold`` of their pre-damage accuracy after every zero-out."""
    best, acc = g.best, g.acc
    pre = acc[best]  # (G,)
    pre_mean = float(pre.mean())
    num = acc.shape[1]
    nets_ok_all = torch.ones(num, dtype=torch.bool)
    rows = []
    for j, dmg in enumerate(g.damaged_acc):
        end = best + (j + 1) * every
        after = acc[end]
        ratio = float(after.mean()) / pre_mean if pre_mean > 0 else float("nan")
        ok = after >= threshold * pre
        nets_ok_all &= ok
        rows.append(
            {
                "rule": g.tr.label,
                "zero_out": j + 1,
                "applied_before_step": best + damage_rel[j],
                "acc_before": float(acc[best + damage_rel[j] - 1].mean()),
                "acc_damaged": float(dmg.mean()),
                "acc_recovered": float(after.mean()),
                "recovered_at_step": end,
                "window_since_best": f"{damage_rel[j] - 1}-{(j + 1) * every}",
                "recovery": ratio,
                "nets_recovered": int(ok.sum()),
                "nets": num,
            }
        )
    return rows, nets_ok_all


def _summary_row(
    g: _Grown, per_zero: list[dict[str, Any]], nets_ok_all: torch.Tensor, threshold: float
) -> dict[str, Any]:
    """The rule's row of the summary table."""
    cfg, best = g.tr.cfg, g.best
    ratios_t = torch.tensor([r["recovery"] for r in per_zero])
    return {
        "rule": g.tr.label,
        "pool_damage": cfg.pool.damage,
        "meta_steps": g.tr.meta_steps,
        "horizon_k_max": cfg.train.k_max,
        "best_step": best,
        "nets": g.acc.shape[1],
        "pre_damage_test_acc": float(g.acc[best].mean()),
        "pre_damage_train_acc": float(g.train_acc[best].mean()),
        "mean_damaged_acc": float(torch.stack(g.damaged_acc).mean()),
        "min_recovery": float(ratios_t.min()),
        "mean_recovery": float(ratios_t.mean()),
        "zero_outs_recovered": int((ratios_t >= threshold).sum()),
        "zero_outs": len(per_zero),
        "nets_recovered_every_time": int(nets_ok_all.sum()),
        "final_test_acc": float(g.acc[g.total].mean()),
        "arch": g.arch.describe(),
    }


def _plot_curve(g: _Grown, damage_rel: list[int]) -> dict[str, np.ndarray]:
    """Mean and 10-90% band of the test accuracy against steps since ``W``, the damaged state
    inserted as a drop before each zero-out's step."""
    damage_at = {g.best + r: j for j, r in enumerate(damage_rel)}  # rule step -> index
    xs, rows = [], []
    for t in range(g.total + 1):
        xs.append(t - g.best)
        rows.append(g.acc[t])
        j = damage_at.get(t + 1)
        if j is not None:
            xs.append(t - g.best)
            rows.append(g.damaged_acc[j])
    stack = torch.stack(rows).double()
    return {
        "x": np.asarray(xs),
        "mean": stack.mean(1).numpy(),
        "lo": torch.quantile(stack, 0.1, dim=1).numpy(),
        "hi": torch.quantile(stack, 0.9, dim=1).numpy(),
    }


def _curve_rows(g: _Grown, damage_rel: list[int]) -> list[dict[str, Any]]:
    """One row per rule step: mean test and training accuracy, the zero-out applied before."""
    damage_at = {g.best + r: j for j, r in enumerate(damage_rel)}  # rule step -> index
    rows = []
    for t in range(g.total + 1):
        j = damage_at.get(t)
        rows.append(
            {
                "rule": g.tr.label,
                "step": t,
                "steps_since_best": t - g.best,
                "zero_out_before": (j + 1) if j is not None else "",
                "test_acc_mean": float(g.acc[t].mean()),
                "train_acc_mean": float(g.train_acc[t].mean()),
            }
        )
    return rows


def robustness_markdown(
    summary_rows: list[dict[str, Any]],
    per_zero_rows: list[dict[str, Any]],
    threshold: float = 0.95,
) -> str:
    """The summary table (one row per rule) and the per-zero-out recovery table."""
    pct = f"{threshold * 100:g}%"
    head = [
        "rule",
        "pool.damage",
        "best step W",
        "pre-damage acc",
        "damaged acc (mean)",
        "min recovery",
        "mean recovery",
        f"zero-outs >= {pct}",
        f"nets >= {pct} every time",
        "final acc",
    ]
    body = [
        [
            r["rule"],
            r["pool_damage"],
            r["best_step"],
            f"{r['pre_damage_test_acc']:.3f}",
            f"{r['mean_damaged_acc']:.3f}",
            f"{r['min_recovery']:.3f}",
            f"{r['mean_recovery']:.3f}",
            f"{r['zero_outs_recovered']}/{r['zero_outs']}",
            f"{r['nets_recovered_every_time']}/{r['nets']}",
            f"{r['final_test_acc']:.3f}",
        ]
        for r in summary_rows
    ]
    labels = [r["rule"] for r in summary_rows]
    by = {(r["rule"], r["zero_out"]): r for r in per_zero_rows}
    n = max((r["zero_out"] for r in per_zero_rows), default=0)
    head2 = ["zero-out", "steps after W"]
    for lab in labels:
        head2 += [f"{lab}: damaged", f"{lab}: recovered", f"{lab}: recovery"]
    body2 = []
    for j in range(1, n + 1):
        first = by[(labels[0], j)]
        row: list[Any] = [j, first["window_since_best"]]
        for lab in labels:
            r = by[(lab, j)]
            row += [
                f"{r['acc_damaged']:.3f}",
                f"{r['acc_recovered']:.3f}",
                f"{r['recovery']:.3f}",
            ]
        body2.append(row)
    return md_table(head, body) + "\n\n" + md_table(head2, body2)


def _grow_with_zero_outs(
    run: ExperimentRun,
    tr: TrainedRule,
    num: int,
    zero_outs: int,
    every: int,
    fraction: float,
    tail: int,
    search_mult: int,
    seed: int,
) -> _Grown:
    """Steps 1 and 2 of the protocol for one rule: find ``W``, then grow with the zero-outs."""
    task = tr.task
    arch = tr.architectures()[0]
    X_tr, y_tr = run.split(tr, "train")
    X_te, y_te = run.split(tr, "test")

    search = search_mult * tr.cfg.train.k_max
    res = run.grow(
        tr,
        arch,
        num,
        search,
        seed=seed,
        metric=lambda g, w: task.accuracy(g, w, X_tr, y_tr),
        record_at=range(1, search + 1),
    )
    assert res.curve is not None
    best = int(res.curve.mean(1).argmax()) + 1  # W: first step of the best mean train accuracy

    damage_at = {best + 1 + j * every: j for j in range(zero_outs)}  # rule step -> index
    total = best + zero_outs * every + tail
    damaged_acc: list[torch.Tensor] = []
    dgen = run.generator(seed + 1)

    def perturb(step: int, graph, w: torch.Tensor) -> torch.Tensor:
        if step not in damage_at:
            return w
        w = zero_out(graph, w, fraction=fraction, generator=dgen)
        damaged_acc.append(task.accuracy(graph, w, X_te, y_te).cpu())
        return w

    train_acc: list[torch.Tensor] = []

    def metric(graph, w: torch.Tensor) -> torch.Tensor:
        train_acc.append(task.accuracy(graph, w, X_tr, y_tr).cpu())
        return task.accuracy(graph, w, X_te, y_te)

    # the same seed: identical growth up to W (the zero-outs draw from their own generator)
    res = run.grow(
        tr,
        arch,
        num,
        total,
        seed=seed,
        metric=metric,
        record_at=range(total + 1),
        perturb=perturb,
    )
    assert res.curve is not None and len(damaged_acc) == zero_outs
    return _Grown(tr, arch, best, res.curve, torch.stack(train_acc), damaged_acc)


# ---------------------------------------------------------------------- command line
HELP = "20 zero-outs over 100 rule steps, rule trained with vs without damage (Iris)"
DESCRIPTION = (
    "After grown nets reach their best accuracy, zero out one layer and 30%% of the other "
    "weights every 5 steps, 20 times; report the recovery."
)
CHECKPOINT_HELP = "checkpoint of the damage-trained rule (instead of meta-training --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gnca experiment robustness`` after the shared ones."""
    parser.add_argument(
        "--nodamage-config",
        help="config of the rule trained without damage (default: --config, pool.damage=0)",
    )
    parser.add_argument(
        "--nodamage-checkpoint", help="checkpoint of the rule trained without damage"
    )
    parser.add_argument("--damage-only", action="store_true", help="skip the rule without damage")
    parser.add_argument(
        "--zero-outs", type=positive_int, default=20, help="number of zero-outs (20)"
    )
    parser.add_argument(
        "--every", type=positive_int, default=5, help="rule steps between zero-outs (5)"
    )
    parser.add_argument(
        "--fraction", type=fraction_arg, default=0.3, help="share of other weights zeroed (0.3)"
    )
    parser.add_argument(
        "--tail", type=nonneg_int, default=20, help="steps grown after the last window (20)"
    )
    parser.add_argument(
        "--search-mult",
        type=positive_int,
        default=2,
        help="the best-accuracy step is searched in 1..search-mult x k_max (2)",
    )


def main(args: argparse.Namespace) -> int:
    """``gnca experiment robustness``: one run of :func:`run_robustness`."""
    cfg, damaged, undamaged = rule_sources(
        args,
        "robustness",
        ("damage", "no-damage"),
        control=(args.nodamage_config, args.nodamage_checkpoint, "nodamage", {"damage": 0}),
        skip_control=args.damage_only,
        control_error="the rule without damage needs --nodamage-config, --nodamage-checkpoint "
        "or --config (or pass --damage-only)",
    )
    return run_and_report(
        args,
        "robustness",
        cfg,
        run_robustness,
        damaged,
        undamaged,
        zero_outs=args.zero_outs,
        every=args.every,
        fraction=args.fraction,
        tail=args.tail,
        search_mult=args.search_mult,
    )


# ---------------------------------------------------------------------- --seeds
SEED_CURVES = SeedCurves(
    "robustness_curve.csv",
    x="steps_since_best",
    xlabel="rule steps since the best accuracy",
    ys=("test_acc_mean",),
    ylabels=("mean test accuracy",),
)


#: A rule's headline metrics (higher is better).
HEADLINE_KEYS = (
    "min_recovery",
    "mean_recovery",
    "zero_outs_recovered",
    "pre_damage_test_acc",
    "final_test_acc",
)


def headline(s: dict[str, Any]) -> Headline:
    """The metrics and claims of one run's ``summary.json`` that ``--seeds`` compares."""
    h = Headline()
    rows = s["table"]
    for r in rows:
        h.add(r["rule"], r, HEADLINE_KEYS, HIGHER)
    first, threshold = rows[0], s["threshold"]
    h.claims[
        f"{first['rule']}: back to >= {threshold * 100:g}% of the pre-damage accuracy after "
        f"every one of the {first['zero_outs']} zero-outs (min_recovery >= {threshold:g})"
    ] = first["min_recovery"] >= threshold
    if len(rows) > 1:
        other = rows[1]
        h.claims[f"{first['rule']} recovers better than {other['rule']} (min_recovery)"] = (
            first["min_recovery"] > other["min_recovery"]
        )
    return h


# ---------------------------------------------------------------------- figure
def plot(curves: dict[str, dict[str, np.ndarray]], damage_steps: Sequence[int], path: Path) -> Path:
    """Mean test accuracy against rule steps with the zero-outs marked.

    Args:
        curves: ``label -> {"x": steps, "mean": ..., "lo": ..., "hi": ...}``; a zero-out at
            step ``t`` appears as a drop at ``x = t - 1`` (the damaged net, before the rule
            step ``t``).
        damage_steps: the steps before which a zero-out was applied (relative to the plot's
            x axis).
        path: the PNG to write.
    """
    from gnca.experiments.plots import COLORS, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, t in enumerate(damage_steps):
        ax.axvline(t - 1, color="grey", lw=0.6, alpha=0.6, label="zero-out" if i == 0 else None)
    for i, (label, c) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)]
        ax.plot(c["x"], c["mean"], color=color, lw=1.2, label=f"{label}: mean")
        ax.fill_between(c["x"], c["lo"], c["hi"], color=color, alpha=0.15)
    ax.set_xlabel("rule steps since the net reached its best accuracy")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{len(damage_steps)} zero-outs (grey lines), mean and 10-90% band")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
