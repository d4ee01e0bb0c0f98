"""Architecture generalisation: one rule grows MLPs of many depths and widths (paper, Fig. 2).

A rule meta-trained on a few MLPs (``task.architectures``) grows ``num`` nets of every MLP of a
grid: ``depth`` hidden layers (rows) all of ``width`` neurons (columns), with the dataset's input
and output sizes. Each net grows from a fresh seed for ``steps`` rule steps (default: the
training horizon ``k_max``), and its accuracy on the test split is measured. The heatmap shows the
mean over the nets, the training architectures outlined in red. Training architectures outside
the grid are evaluated too and listed in the table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gnca.experiments.common import (
    ExperimentError,
    RuleSource,
    finish_summary,
    md_table,
    mean_std,
    obtain_rule,
    rule_info,
    write_csv,
)
from gnca.grow import grow

#: default budget of weight-cells grown at once (nets are split into chunks to respect it)
WEIGHT_BUDGET = 1_000_000


def grid_sizes(n_in: int, n_out: int, depth: int, width: int) -> list[int]:
    """Layer sizes of the grid cell ``(depth, width)``."""
    return [n_in, *([width] * depth), n_out]


def run_generalization(
    source: RuleSource,
    out: str | Path,
    *,
    depths: Sequence[int] = (1, 2, 3),
    widths: Sequence[int] = (16, 32, 64, 128),
    num: int = 100,
    steps: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the generalisation experiment and write its outputs into ``out``.

    Outputs: ``generalization.md`` (the grid and a seen/unseen summary), ``generalization.csv``
    (one row per architecture), ``generalization.png`` (the heatmap) and ``summary.json``.

    Args:
        source: the rule (meta-trained from its config, or loaded from a checkpoint).
        out: output folder (a rule trained here goes to ``out/rules/<label>``).
        depths: numbers of hidden layers (rows, each >= 1).
        widths: hidden widths (columns).
        num: nets grown per architecture.
        steps: rule steps (default: the rule's ``train.k_max``).
        seed: seed of the grown nets.
        device: where to grow (and train).
        chunk: nets grown at once (default: as many as fit in about a million weights).
        retrain: meta-train again even if ``out/rules/<label>`` holds a finished run.
        progress: show progress.
    """
    from gnca.experiments.plots import plot_heatmap

    depths, widths = [int(d) for d in depths], [int(w) for w in widths]
    if not depths or not widths or min(depths) < 1 or min(widths) < 1:
        raise ExperimentError("the grid needs depths >= 1 and widths >= 1 (at least one each)")
    if len(set(depths)) != len(depths) or len(set(widths)) != len(widths):
        raise ExperimentError("the grid's depths and widths must not repeat")
    if num < 1 or (steps is not None and steps < 0) or (chunk is not None and chunk < 1):
        raise ExperimentError("num and chunk must be >= 1 and steps >= 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    tr = obtain_rule(
        source, out / "rules" / source.label, device=device, retrain=retrain, progress=progress
    )
    cfg, task, init = tr.cfg, tr.task, tr.init
    n_in, n_out = task.n_features, task.n_classes
    steps = cfg.train.k_max if steps is None else steps
    X, y = task.split("test", device)
    train_sizes = [list(a) for a in cfg.task.architectures]

    cells: list[tuple[int | None, int | None, list[int]]] = []
    for r, d in enumerate(depths):
        for c, wd in enumerate(widths):
            cells.append((r, c, grid_sizes(n_in, n_out, d, wd)))
    grid_set = [s for _, _, s in cells]
    for s in train_sizes:
        if s not in grid_set:
            cells.append((None, None, s))

    values = np.full((len(depths), len(widths)), np.nan)
    rows: list[dict[str, Any]] = []
    trained_cells: list[tuple[int, int]] = []
    for r, c, sizes in cells:
        arch = task.mlp(sizes)
        n_chunk = chunk or max(1, min(num, WEIGHT_BUDGET // arch.num_weights))
        t0 = time.perf_counter()
        accs = []
        for i, lo in enumerate(range(0, num, n_chunk)):
            g = min(n_chunk, num - lo)
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
            res = grow(tr.rule, arch, g, steps, init, device=device, generator=gen)
            accs.append(task.batched_accuracy(res.graph, res.w, X, y).cpu())
        acc = torch.cat(accs)
        m, s = mean_std(acc)
        trained = sizes in train_sizes
        if r is not None and c is not None:
            values[r, c] = m
            if trained:
                trained_cells.append((r, c))
        rows.append(
            {
                "architecture": "-".join(map(str, sizes)),
                "hidden_layers": len(sizes) - 2,
                "width": sizes[1] if len(sizes) > 2 else "",
                "in_grid": r is not None,
                "trained": trained,
                "nets": num,
                "steps": steps,
                "mean": m,
                "std": s,
                "min": float(acc.min()),
                "max": float(acc.max()),
                "seconds": time.perf_counter() - t0,
            }
        )
        if progress:
            tag = " (training architecture)" if trained else ""
            print(
                f"generalization: {rows[-1]['architecture']}{tag}: mean test accuracy {m:.4f} "
                f"({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )

    seen = [x["mean"] for x in rows if x["trained"]]
    unseen = [x["mean"] for x in rows if not x["trained"]]
    overview = {
        "seen_mean": float(np.mean(seen)) if seen else None,
        "seen_min": float(np.min(seen)) if seen else None,
        "unseen_mean": float(np.mean(unseen)) if unseen else None,
        "unseen_min": float(np.min(unseen)) if unseen else None,
    }
    title = (
        f"{cfg.data.name}: mean test accuracy of {num} grown nets\n"
        f"after {steps} rule steps (red: training architectures)"
    )
    png = out / "generalization.png"
    plot_heatmap(values, depths, widths, trained_cells, png, title)
    md = generalization_markdown(values, depths, widths, trained_cells, rows, overview)
    (out / "generalization.md").write_text(md + "\n")
    write_csv(out / "generalization.csv", rows)
    summary = {
        "experiment": "generalization",
        "dataset": cfg.data.name,
        "nets": num,
        "steps": steps,
        "seed": seed,
        "depths": depths,
        "widths": widths,
        "grid": values.tolist(),
        "trained_cells": [list(x) for x in trained_cells],
        "training_architectures": train_sizes,
        **overview,
        "rule": rule_info(tr),
        "table": rows,
        "figure": str(png),
    }
    return finish_summary(out, summary, start, cpu_start)


def generalization_markdown(
    values: np.ndarray,
    depths: Sequence[int],
    widths: Sequence[int],
    trained_cells: Sequence[tuple[int, int]],
    rows: list[dict[str, Any]],
    overview: dict[str, float | None],
) -> str:
    """The grid (training cells in bold, marked ``(trained)``) and the seen/unseen summary."""
    head = ["hidden layers \\ width", *[str(w) for w in widths]]
    body = []
    for r, d in enumerate(depths):
        line: list[str] = [str(d)]
        for c in range(len(widths)):
            v = f"{values[r, c]:.3f}"
            line.append(f"**{v}** (trained)" if (r, c) in trained_cells else v)
        body.append(line)
    parts = [md_table(head, body)]
    outside = [x for x in rows if not x["in_grid"]]
    if outside:
        parts.append(
            md_table(
                ["training architecture outside the grid", "mean", "std"],
                [[x["architecture"], f"{x['mean']:.3f}", f"{x['std']:.3f}"] for x in outside],
            )
        )

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    parts.append(
        md_table(
            ["architectures", "mean of the means", "lowest mean"],
            [
                ["training (seen)", f(overview["seen_mean"]), f(overview["seen_min"])],
                ["unseen", f(overview["unseen_mean"]), f(overview["unseen_min"])],
            ],
        )
    )
    return "\n\n".join(parts)
