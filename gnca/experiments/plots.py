"""Figures of the experiments (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
LOSS_CLIP = 1e3  # the loss axis of the stability plot stops here (exploding nets go beyond)


def _band(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, 10th and 90th percentile over nets of a ``(T, G)`` curve (NaN-safe)."""
    x = torch.nan_to_num(x.to(torch.float64), nan=float("inf"), posinf=1e6)
    return (
        x.mean(1).numpy(),
        torch.quantile(x, 0.1, dim=1).numpy(),
        torch.quantile(x, 0.9, dim=1).numpy(),
    )


def plot_stability(
    curves: dict[str, dict[str, torch.Tensor]], horizons: dict[str, int], path: Path
) -> Path:
    """Training loss (log scale) and test accuracy against rule steps, one colour per rule.

    Args:
        curves: ``label -> {"loss": (T + 1, G), "acc": (T + 1, G)}``.
        horizons: ``label -> k_max`` (dashed line at ``K``, dotted at ``10 K``).
        path: the PNG to write.
    """
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


def plot_robustness(
    curves: dict[str, dict[str, np.ndarray]], damage_steps: Sequence[int], path: Path
) -> Path:
    """Mean test accuracy against rule steps with the zero-outs marked.

    Args:
        curves: ``label -> {"x": steps, "mean": ..., "lo": ..., "hi": ...}``; a zero-out at
            step ``t`` appears as a drop at ``x = t - 1`` (the damaged net, before the rule
            step ``t``).
        damage_steps: the steps before which a zero-out was applied (relative to the plot's
            x axis).
        path: the PNG to write.
    """
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


def plot_heatmap(
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
    size = (1.2 * len(widths) + 2.5, 0.9 * len(depths) + 1.8)
    if diff is None:
        fig, ax = plt.subplots(figsize=size)
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(2 * size[0], size[1] + 0.3))
    outlined = _heatmap_panel(
        fig, axes[0], values, depths, widths, trained, title, "viridis", 0.0, 1.0,
        lambda v: f"{v:.3f}", lambda v: v > 0.6, "mean test accuracy",
    )  # fmt: skip
    if diff is not None:
        finite = np.abs(diff[np.isfinite(diff)])
        lim = float(finite.max()) if finite.size and finite.max() > 0 else 0.01
        _heatmap_panel(
            fig, axes[1], diff, depths, widths, trained, diff_title, "BrBG", -lim, lim,
            lambda v: f"{v:+.3f}", lambda v: abs(v) < 0.6 * lim, "grown minus Adam",
        )  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return outlined


def _heatmap_panel(
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
) -> list[tuple[int, int]]:
    """One heatmap panel: cell values as text (black on light cells), training cells in red."""
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
    outlined = []
    for r, c in trained:
        ax.add_patch(
            Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5, zorder=3)
        )
        outlined.append((r, c))
    ax.set_xticks(range(len(widths)), [str(w) for w in widths])
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel("hidden width")
    ax.set_ylabel("hidden layers")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label)
    return outlined
