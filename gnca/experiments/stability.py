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

import sys
import time
from pathlib import Path
from typing import Any

import torch

from gnca.experiments.common import (
    ExperimentError,
    RuleSource,
    TrainedRule,
    finish_summary,
    md_table,
    mean_std,
    obtain_rule,
    rule_info,
    write_csv,
)
from gnca.graph import num_graphs, weight_batch
from gnca.grow import grow


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
    from gnca.experiments.plots import plot_stability

    if num < 1 or horizon_mult < 1 or tolerance < 0:
        raise ExperimentError("num and horizon_mult must be >= 1 and tolerance >= 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    sources = [pooled] + ([unpooled] if unpooled is not None else [])
    rules: list[TrainedRule] = []
    for src in sources:
        rules.append(
            obtain_rule(
                src, out / "rules" / src.label, device=device, retrain=retrain, progress=progress
            )
        )
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

    summary_rows: list[dict[str, Any]] = []
    net_rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, torch.Tensor]] = {}
    horizons: dict[str, int] = {}
    for tr in rules:
        task = tr.task
        arch = tr.architectures()[0]
        k = tr.cfg.train.k_max
        total = horizon_mult * k
        X_tr, y_tr = task.split("train", device)
        X_te, y_te = task.split("test", device)
        test_acc: list[torch.Tensor] = []
        max_w: list[torch.Tensor] = []

        def metric(graph, w, task=task, X_tr=X_tr, y_tr=y_tr, X_te=X_te, y_te=y_te,
                   ta=test_acc, mw=max_w):  # fmt: skip
            ta.append(task.accuracy(graph, w, X_te, y_te).cpu())
            mw.append(max_abs_weight(graph, w).cpu())
            return task.loss(graph, w, X_tr, y_tr)

        bar = _bar(total, f"stability {tr.label}", progress)
        res = grow(
            tr.rule,
            arch,
            num,
            total,
            tr.init,
            device=device,
            generator=torch.Generator(device=device).manual_seed(seed),
            metric=metric,
            record_at=range(total + 1),
            progress=(lambda t, b=bar: b.update(1)) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        assert res.curve is not None
        loss = res.curve  # (T + 1, G)
        acc = torch.stack(test_acc)  # (T + 1, G)
        absw = torch.stack(max_w)
        t_min, l_min, within, capped = band_metrics(loss, tolerance)
        horizons[tr.label] = k
        curves[tr.label] = {"loss": loss, "acc": acc}
        for i in range(num):
            net_rows.append(
                {
                    "rule": tr.label,
                    "net": i,
                    "epochs_to_train": int(t_min[i]),
                    "min_loss": float(l_min[i]),
                    "epochs_within": int(within[i]),
                    "capped": bool(capped[i]),
                    f"test_acc_{k}": float(acc[k, i]),
                    f"test_acc_{total}": float(acc[total, i]),
                    f"max_abs_w_{total}": float(absw[total, i]),
                }
            )
        for t in range(total + 1):
            row = loss[t].to(torch.float64)
            finite = torch.nan_to_num(row, nan=float("inf"))
            curve_rows.append(
                {
                    "rule": tr.label,
                    "step": t,
                    "loss_mean": float(row.mean()),
                    "loss_median": float(finite.median()),
                    "loss_p10": float(torch.quantile(finite, 0.1)),
                    "loss_p90": float(torch.quantile(finite, 0.9)),
                    "test_acc_mean": float(acc[t].mean()),
                }
            )
        ett_m, ett_s = mean_std(t_min)
        win_m, win_s = mean_std(within)
        ten_k = min(10 * k, total)
        summary_rows.append(
            {
                "rule": tr.label,
                "pool_size": tr.cfg.pool.size,
                "meta_steps": tr.meta_steps,
                "horizon_k_max": k,
                "steps_grown": total,
                "nets": num,
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
                "max_abs_w_at_end": float(absw[total].median()),
                "arch": arch.describe(),
            }
        )

    png = plot_stability(curves, horizons, out / "stability.png")
    md = stability_markdown(summary_rows, tolerance)
    (out / "stability.md").write_text(md + "\n")
    write_csv(out / "stability.csv", summary_rows)
    write_csv(out / "stability_nets.csv", net_rows)
    write_csv(out / "stability_curve.csv", curve_rows)
    summary = {
        "experiment": "stability",
        "nets": num,
        "horizon_mult": horizon_mult,
        "tolerance": tolerance,
        "seed": seed,
        "rules": [rule_info(tr) for tr in rules],
        "table": summary_rows,
        "figure": str(png),
    }
    return finish_summary(out, summary, start, cpu_start)


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
            ]
        )
    return md_table(header, body)


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr)
