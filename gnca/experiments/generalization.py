"""Architecture generalisation: one rule grows MLPs of many depths and widths (paper, Fig. 2).

A rule meta-trained on a few MLPs (``task.architectures``) grows ``num`` nets of every MLP of a
grid: ``depth`` hidden layers (rows) all of ``width`` neurons (columns), with the dataset's input
and output sizes. Each net grows from a fresh seed for ``steps`` rule steps (default: the
training horizon ``k_max``), and its accuracy on the test split is measured. The heatmap shows the
mean over the nets, the training architectures outlined in red. Training architectures outside
the grid are evaluated too and listed in the table.

With an :class:`~gnca.experiments.adam_baseline.AdamSettings` (``--adam``), every architecture
also gets an Adam baseline: ``settings.nets`` nets of it trained with Adam from the same
initial-weight distribution (``task.init``), with the task's forward conventions, for a stated
budget of training examples seen per net, the learning rate picked on the last fifth of the
training split; their test accuracy is shown beside the grown one (CSV columns, Markdown grids of
Adam and of grown minus Adam, a second panel of the figure). Each architecture's result is
cached in ``out/adam/<architecture>.json``, keyed by everything it depends on, and reused.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gnca.cliargs import int_list, nonneg_int, positive_int
from gnca.config import config_to_dict
from gnca.experiments.adam_baseline import (
    AdamSettings,
    adam_cell,
    cached_adam_cell,
    lr_list,
    parse_lrs,
)
from gnca.experiments.command import parse_ints, rule_sources, run_and_report
from gnca.experiments.common import RuleSource, TrainedRule, md_table, mean_std, rule_info
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.seeds import HIGHER, Headline, optional_float

#: default budget of weight-cells grown at once (nets are split into chunks to respect it)
WEIGHT_BUDGET = 1_000_000


def grid_sizes(n_in: int, n_out: int, depth: int, width: int) -> list[int]:
    """Layer sizes of the grid cell ``(depth, width)``."""
    return [n_in, *([width] * depth), n_out]


def _figure_and_tables(run, values, adam_values, depths, widths, trained_cells, rows, overview,
                       adam_info, adam, name: str, num: int, steps: int):  # fmt: skip
    """``generalization.png`` (with the grown-minus-Adam panel) and ``generalization.md``;
    returns the figure's path."""
    title = (
        f"{name}: mean test accuracy of {num} grown nets\n"
        f"after {steps} rule steps (red: training architectures)"
    )
    png = run.path("generalization.png")
    diff_title = (
        ""
        if adam is None
        else f"grown minus Adam ({adam.nets} nets, {adam.examples:,} examples\n"
        f"seen per net, lr tuned on a validation fifth)"
    )
    diff = values - adam_values if adam_values is not None else None
    plot(values, depths, widths, trained_cells, png, title, diff=diff, diff_title=diff_title)
    md = generalization_markdown(values, depths, widths, trained_cells, rows, overview)
    if adam is not None and diff is not None:
        md += "\n\n" + adam_markdown(adam_values, diff, depths, widths, trained_cells, rows,
                                      adam_info)  # fmt: skip
    run.write_text("generalization.md", md)
    return png


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
    adam: AdamSettings | None = None,
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
        adam: an Adam baseline per architecture with these settings (module docstring): CSV
            columns ``adam_mean``, ``adam_std``, ``adam_lr``, ``adam_examples`` and
            ``grown_minus_adam``, two more Markdown grids and a line naming the cells where
            grown >= Adam, the figure's second panel, ``summary.json``'s ``"adam"``. ``None``
            (default): none, and the outputs are those without it.
    """

    # (longer than 80 lines only by its signature and the docstring of its 12 options)
    depths, widths = [int(d) for d in depths], [int(w) for w in widths]
    run = ExperimentRun(
        "generalization",
        out,
        device=device,
        retrain=retrain,
        progress=progress,
        checks=[
            *_option_checks(depths, widths, num, steps, chunk),
            *(adam.problems() if adam is not None else []),
        ],
    )
    (tr,) = run.obtain(source)
    cfg = tr.cfg
    steps = cfg.train.k_max if steps is None else steps
    train_sizes = [list(a) for a in cfg.task.architectures]

    values, rows, trained_cells = _measure_grid(run, tr, depths, widths, num, steps, seed, chunk)
    overview = seen_unseen(rows)
    extra: dict[str, Any] = {}
    adam_values = None
    if adam is not None:
        adam_values, extra["adam"] = _adam_baseline(run, tr, rows, depths, widths, adam, seed)
        # what growing itself reads: nothing for a data-free rule
        extra["adam"]["grown_examples"] = steps * cfg.rule.sense_batch if tr.rule.senses else 0
    png = _figure_and_tables(
        run, values, adam_values, depths, widths, trained_cells, rows, overview,
        extra.get("adam"), adam, cfg.data.name, num, steps,
    )  # fmt: skip
    run.write_csv("generalization.csv", rows)
    return run.finish(
        {
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
            **extra,
        }
    )


def _option_checks(
    depths: list[int], widths: list[int], num: int, steps: int | None, chunk: int | None
) -> list[tuple[bool, str]]:
    """``(invalid, message)`` of the experiment's options, for :class:`ExperimentRun`."""
    return [
        (
            not depths or not widths or min(depths) < 1 or min(widths) < 1,
            "the grid needs depths >= 1 and widths >= 1 (at least one each)",
        ),
        (
            len(set(depths)) != len(depths) or len(set(widths)) != len(widths),
            "the grid's depths and widths must not repeat",
        ),
        (
            num < 1 or (steps is not None and steps < 0) or (chunk is not None and chunk < 1),
            "num and chunk must be >= 1 and steps >= 0",
        ),
    ]


def grid_cells(
    n_in: int,
    n_out: int,
    depths: Sequence[int],
    widths: Sequence[int],
    train_sizes: Sequence[list[int]],
) -> list[tuple[int | None, int | None, list[int]]]:
    """``(row, column, layer sizes)`` of every grid cell, row by row, then ``(None, None,
    sizes)`` of each training architecture outside the grid."""
    cells: list[tuple[int | None, int | None, list[int]]] = [
        (r, c, grid_sizes(n_in, n_out, d, wd))
        for r, d in enumerate(depths)
        for c, wd in enumerate(widths)
    ]
    grid_set = [s for _, _, s in cells]
    cells += [(None, None, list(s)) for s in train_sizes if list(s) not in grid_set]
    return cells


def _measure_grid(
    run: ExperimentRun,
    tr: TrainedRule,
    depths: list[int],
    widths: list[int],
    num: int,
    steps: int,
    seed: int,
    chunk: int | None,
) -> tuple[np.ndarray, list[dict[str, Any]], list[tuple[int, int]]]:
    """Measure every cell of the grid and every training architecture outside it.

    Returns the ``(depths, widths)`` grid of mean test accuracies, the table's rows (one per
    architecture, grid row by row, then the training architectures outside the grid) and the
    ``(row, column)`` of the training architectures in the grid.
    """
    task = tr.task
    train_sizes = [list(a) for a in tr.cfg.task.architectures]
    values = np.full((len(depths), len(widths)), np.nan)
    rows: list[dict[str, Any]] = []
    trained_cells: list[tuple[int, int]] = []
    for r, c, sizes in grid_cells(task.n_features, task.n_classes, depths, widths, train_sizes):
        trained = sizes in train_sizes
        row = _measure(run, tr, sizes, num, steps, seed, chunk, trained, in_grid=r is not None)
        rows.append(row)
        if r is not None and c is not None:
            values[r, c] = row["mean"]
            if trained:
                trained_cells.append((r, c))
    return values, rows, trained_cells


def _measure(
    run: ExperimentRun,
    tr: TrainedRule,
    sizes: list[int],
    num: int,
    steps: int,
    seed: int,
    chunk: int | None,
    trained: bool,
    *,
    in_grid: bool,
) -> dict[str, Any]:
    """Grow ``num`` nets of the MLP ``sizes`` (``chunk`` at a time) for ``steps`` rule steps
    and return its row of the table: test accuracy over the nets, and the time it took."""
    task = tr.task
    arch = task.mlp(sizes)
    X, y = run.split(tr, "test")
    n_chunk = chunk or max(1, min(num, WEIGHT_BUDGET // arch.num_weights))
    t0 = time.perf_counter()
    accs = []
    for i, lo in enumerate(range(0, num, n_chunk)):
        g = min(n_chunk, num - lo)
        res = run.grow(tr, arch, g, steps, seed=seed * 1_000_003 + i)
        accs.append(task.batched_accuracy(res.graph, res.w, X, y).cpu())
    acc = torch.cat(accs)
    m, s = mean_std(acc)
    row = {
        "architecture": "-".join(map(str, sizes)),
        "hidden_layers": len(sizes) - 2,
        "width": sizes[1] if len(sizes) > 2 else "",
        "in_grid": in_grid,
        "trained": trained,
        "nets": num,
        "steps": steps,
        "mean": m,
        "std": s,
        "min": float(acc.min()),
        "max": float(acc.max()),
        "seconds": time.perf_counter() - t0,
    }
    tag = " (training architecture)" if trained else ""
    run.note(
        f"generalization: {row['architecture']}{tag}: mean test accuracy {m:.4f} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return row


def seen_unseen(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean and lowest mean accuracy of the training (seen) and the other (unseen)
    architectures (``None`` where there are none)."""
    seen = [x["mean"] for x in rows if x["trained"]]
    unseen = [x["mean"] for x in rows if not x["trained"]]
    return {
        "seen_mean": float(np.mean(seen)) if seen else None,
        "seen_min": float(np.min(seen)) if seen else None,
        "unseen_mean": float(np.mean(unseen)) if unseen else None,
        "unseen_min": float(np.min(unseen)) if unseen else None,
    }


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


# ---------------------------------------------------------------------- the Adam baseline
def adam_key(
    tr: TrainedRule, sizes: list[int], settings: AdamSettings, seed: int, device: torch.device
) -> dict[str, Any]:
    """Everything an Adam cell depends on: the architecture, the settings, the seed, the data
    (its config, less the folder and the meta-training batch), the task's forward conventions,
    the initial-weight spec (less the identity codes, which Adam does not see) and the device
    type (seeded draws differ between devices)."""
    data = {
        k: v
        for k, v in config_to_dict(tr.cfg)["data"].items()
        if k not in ("data_dir", "batch_size")
    }
    init = tr.init
    return {
        "architecture": "-".join(map(str, sizes)),
        "examples": settings.examples,
        "batch": settings.batch,
        "lrs": list(settings.lrs),
        "nets": settings.nets,
        "val_fraction": settings.val_fraction,
        "seed": seed,
        "data": data,
        "task": {
            "activation": tr.task.activation,
            "fan_in_ref": tr.task.fan_in_ref,
            "bias": tr.task.bias,
        },
        # the key names of caches written before InitSpec took the config's names
        "init": {
            "kind": init.init,
            "scale": init.init_scale,
            "seed": init.init_seed,
            "noise": init.init_noise,
        },  # fmt: skip
        "device": device.type,
    }


def _adam_baseline(
    run: ExperimentRun,
    tr: TrainedRule,
    rows: list[dict[str, Any]],
    depths: list[int],
    widths: list[int],
    settings: AdamSettings,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Adam on every architecture of ``rows`` (cached in ``out/adam``); adds the Adam columns to
    the rows and returns the grid of Adam's mean test accuracy and ``summary.json``'s
    ``"adam"``."""
    t0 = time.perf_counter()
    adam_values = np.full((len(depths), len(widths)), np.nan)
    reused, computed, results = [], [], {}
    for i, row in enumerate(rows):
        name = row["architecture"]
        sizes = [int(x) for x in name.split("-")]
        path = run.path("adam") / f"{name}.json"

        def compute(sizes: list[int] = sizes) -> dict[str, Any]:
            return adam_cell(tr.task, tr.init, tr.rule.hidden_channels, sizes, settings,
                             seed * 1_000_003, run.device)  # fmt: skip

        res, cached = cached_adam_cell(path, adam_key(tr, sizes, settings, seed, run.device),
                                       compute)  # fmt: skip
        (reused if cached else computed).append(name)
        results[name] = res
        row.update(
            adam_mean=res["mean"],
            adam_std=res["std"],
            adam_lr=res["lr"],
            adam_examples=res["examples"],
            grown_minus_adam=row["mean"] - res["mean"],
        )
        if row["in_grid"]:
            adam_values[divmod(i, len(widths))] = res["mean"]
        how = f"reused {path}" if cached else f"{res['seconds']:.1f} s, cached in {path}"
        run.note(
            f"adam: {name}: mean test accuracy {res['mean']:.4f} (lr {res['lr']:g}, "
            f"{res['examples']} examples seen per net; {how})"
        )
    ahead = [x["architecture"] for x in rows if x["grown_minus_adam"] >= 0]
    info = {
        **settings.describe(),
        "seed": seed * 1_000_003,
        "grid": adam_values.tolist(),
        "grown_minus_adam": (
            np.array([x["grown_minus_adam"] for x in rows if x["in_grid"]])
            .reshape(len(depths), len(widths))
            .tolist()
        ),
        "grown_at_least_adam": ahead,
        "reused": reused,
        "computed": computed,
        "cells": results,
        "seconds": time.perf_counter() - t0,
    }
    return adam_values, info


def adam_markdown(
    adam_values: np.ndarray,
    diff: np.ndarray,
    depths: Sequence[int],
    widths: Sequence[int],
    trained_cells: Sequence[tuple[int, int]],
    rows: list[dict[str, Any]],
    info: dict[str, Any],
) -> str:
    """The Adam grid, the grown-minus-Adam grid, the training architectures outside the grid
    and the line naming the architectures where grown >= Adam."""

    def grid(a: np.ndarray, fmt: str) -> str:
        head = ["hidden layers \\ width", *[str(w) for w in widths]]
        body = []
        for r, d in enumerate(depths):
            line: list[str] = [str(d)]
            for c in range(len(widths)):
                v = format(a[r, c], fmt)
                line.append(f"**{v}** (trained)" if (r, c) in trained_cells else v)
            body.append(line)
        return md_table(head, body)

    lrs = ", ".join(f"{x:g}" for x in info["lrs"])
    parts = [
        f"Adam: {info['nets']} nets per architecture from the same initial-weight distribution "
        f"as the grown nets, all weights trained, {info['examples']:,} training examples seen "
        f"per net ({info['steps']} Adam step{'' if info['steps'] == 1 else 's'} of up to "
        f"{info['batch']}), the learning rate picked "
        f"from {lrs} on the last fifth of the training split (trained on the rest); mean test "
        f"accuracy:",
        grid(adam_values, ".3f"),
        "grown minus Adam:",
        grid(diff, "+.3f"),
    ]
    outside = [x for x in rows if not x["in_grid"]]
    if outside:
        parts.append(
            md_table(
                [
                    "training architecture outside the grid",
                    "grown",
                    "Adam",
                    "grown - Adam",
                    "Adam lr",
                ],
                [
                    [
                        x["architecture"],
                        f"{x['mean']:.3f}",
                        f"{x['adam_mean']:.3f}",
                        f"{x['grown_minus_adam']:+.3f}",
                        f"{x['adam_lr']:g}",
                    ]
                    for x in outside
                ],
            )  # fmt: skip
        )
    ahead = info["grown_at_least_adam"]
    parts.append(
        f"Grown >= Adam (Adam at {info['examples']:,} examples seen per net; growing read "
        + (f"{info['grown_examples']:,}" if info.get("grown_examples") else "no")
        + " training examples per net): "
        + (", ".join(ahead) if ahead else "no architecture")
        + f" ({len(ahead)} of {len(rows)})."
    )
    return "\n\n".join(parts)


# ---------------------------------------------------------------------- command line
HELP = "heatmap of grown-net accuracy over MLP depths x widths (MNIST, Iris)"
DESCRIPTION = (
    "Grow nets of every MLP of a grid of depths (hidden layers) and widths; heatmap of mean test "
    "accuracy, training architectures outlined in red."
)
CHECKPOINT_HELP = "checkpoint of the rule (instead of meta-training --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gnca experiment generalization`` after the shared ones."""
    cells = int_list(1, unique=True)
    parser.add_argument(
        "--depths", type=cells, default="1,2,3", help="hidden layers per grid row (1,2,3)"
    )
    parser.add_argument(
        "--widths", type=cells, default="16,32,64,128", help="hidden widths (16,32,64,128)"
    )
    # 0 rule steps grows nothing (the initial nets)
    parser.add_argument(
        "--steps", type=nonneg_int, default=None, help="rule steps (default: k_max)"
    )
    parser.add_argument(
        "--chunk", type=positive_int, default=None, help="nets grown at once (default: auto)"
    )
    parser.add_argument(
        "--adam",
        action="store_true",
        help="add an Adam baseline per architecture (same split and task-net conventions; "
        "cached in <out>/adam): CSV columns, grids of Adam and grown minus Adam, a second panel",
    )
    parser.add_argument(
        "--adam-examples",
        type=positive_int,
        default=25_600,
        help="Adam's budget: training examples seen per net (25600 = 100 steps of 256)",
    )
    parser.add_argument(
        "--adam-batch", type=positive_int, default=256, help="examples per Adam step (256)"
    )
    parser.add_argument(
        "--adam-lrs",
        type=lr_list,
        default="1e-3,3e-3,1e-2,3e-2",
        help="Adam learning rates tried, the best on the last fifth of the training split "
        "(1e-3,3e-3,1e-2,3e-2)",
    )
    parser.add_argument(
        "--adam-nets", type=positive_int, default=10, help="nets Adam trains per architecture (10)"
    )


def main(args: argparse.Namespace) -> int:
    """``gnca experiment generalization``: one run of :func:`run_generalization`."""
    adam = None
    if args.adam:
        adam = AdamSettings(
            examples=args.adam_examples,
            batch=args.adam_batch,
            lrs=parse_lrs(args.adam_lrs),
            nets=args.adam_nets,
        )
    cfg, rule, _ = rule_sources(args, "generalization", ("rule", ""))
    return run_and_report(
        args,
        "generalization",
        cfg,
        run_generalization,
        rule,
        depths=parse_ints(args.depths, "--depths"),
        widths=parse_ints(args.widths, "--widths"),
        steps=args.steps,
        chunk=args.chunk,
        adam=adam,
    )


# ---------------------------------------------------------------------- --seeds
def headline(s: dict[str, Any]) -> Headline:
    """The metrics of one run's ``summary.json`` that ``--seeds`` compares."""
    h = Headline()
    for key in ("seen_mean", "seen_min", "unseen_mean", "unseen_min"):
        h.metrics[key] = (optional_float(s.get(key)), HIGHER)
    cells = [v for row in s["grid"] for v in row]
    h.metrics["worst_cell"] = (min(cells) if cells else None, HIGHER)
    return h


# ---------------------------------------------------------------------- figure
def plot(
    values: np.ndarray,
    depths: Sequence[int],
    widths: Sequence[int],
    trained: Sequence[tuple[int, int]],
    path: Path,
    title: str = "",
    *,
    diff: np.ndarray | None = None,
    diff_title: str = "",
) -> list[tuple[int, int]]:
    """Heatmap of mean accuracy, rows = hidden layers, columns = width; training cells in red.

    Args:
        values: ``(len(depths), len(widths))`` mean test accuracy.
        depths: number of hidden layers of each row.
        widths: hidden width of each column.
        trained: ``(row, column)`` cells of the training architectures.
        path: the PNG to write.
        title: figure title.
        diff: optional ``(len(depths), len(widths))`` differences (e.g. grown minus Adam), drawn
            as a second panel on a diverging colormap centred at 0 (symmetric limits), the same
            cells outlined in red.
        diff_title: the second panel's title.

    Returns:
        The outlined ``(row, column)`` cells, in the order drawn (the same in both panels).
    """
    values = np.asarray(values, dtype=float)
    shape = (len(depths), len(widths))
    if values.shape != shape:
        raise ValueError(f"values has shape {values.shape}, expected {shape}")
    if diff is not None:
        diff = np.asarray(diff, dtype=float)
        if diff.shape != shape:
            raise ValueError(f"diff has shape {diff.shape}, expected {shape}")
    from gnca.experiments.plots import pyplot

    plt = pyplot()
    size = (1.2 * len(widths) + 2.5, 0.9 * len(depths) + 1.8)
    if diff is None:
        fig, ax = plt.subplots(figsize=size)
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(2 * size[0], size[1] + 0.3))
    outlined = heatmap_panel(
        fig, axes[0], values, depths, widths, trained, title, "viridis", 0.0, 1.0,
        lambda v: f"{v:.3f}", lambda v: v > 0.6, "mean test accuracy",
    )  # fmt: skip
    if diff is not None:
        finite = np.abs(diff[np.isfinite(diff)])
        lim = float(finite.max()) if finite.size and finite.max() > 0 else 0.01
        heatmap_panel(
            fig, axes[1], diff, depths, widths, trained, diff_title, "BrBG", -lim, lim,
            lambda v: f"{v:+.3f}", lambda v: abs(v) < 0.6 * lim, "grown minus Adam",
        )  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return outlined


def heatmap_panel(
    fig,
    ax,
    values: np.ndarray,
    depths: Sequence[int],
    widths: Sequence[int],
    trained: Sequence[tuple[int, int]],
    title: str,
    cmap: str,
    vmin: float,
    vmax: float,
    fmt,
    light,
    label: str,
    *,
    xlabel: str = "hidden width",
    ylabel: str = "hidden layers",
) -> list[tuple[int, int]]:
    """One heatmap panel: cell values as text (black on light cells), training cells in red;
    rows ``depths`` and columns ``widths`` (named by ``ylabel`` and ``xlabel``)."""
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for r in range(len(depths)):
        for c in range(len(widths)):
            v = values[r, c]
            ax.text(
                c,
                r,
                "-" if np.isnan(v) else fmt(v),
                ha="center",
                va="center",
                color="black" if light(v) else "white",
                fontsize=9,
            )
    from matplotlib.patches import Rectangle

    outlined = []
    for r, c in trained:
        ax.add_patch(
            Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5, zorder=3)
        )
        outlined.append((r, c))
    ax.set_xticks(range(len(widths)), [str(w) for w in widths])
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label)
    return outlined
