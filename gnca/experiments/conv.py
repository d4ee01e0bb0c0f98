"""Layer nets: a rule grows conv and residual nets it was meta-trained on and nets it never saw,
with Adam beside every one.

For every training net of the rule (``task.layers``, and the MLPs of ``task.architectures``)
and every unseen net (the config's ``train.eval_layers``, or ``--arch``): the test accuracy of
``num`` grown nets at ``K = train.k_max`` and at ``horizon_mult * K`` rule steps (mean and
standard deviation over the nets), and Adam on ``adam_nets`` nets of the same architecture from
the same initial-weight draw (the rule's ``task.init``, seed ``seed``), all weights trained on
``adam_examples`` training examples per net in batches of :data:`ADAM_BATCH`, the learning rate
the best of :data:`ADAM_LRS` on the last fifth of the training split (trained on the rest).

Outputs in ``out``: ``conv.md``, ``conv.csv`` (one row per net), ``conv.png`` and
``summary.json``. The figure is a heatmap when every net is a plain conv spec (conv tokens
only): one panel per number of conv layers, rows the first conv's kernel size, columns its
channels, the grown nets at ``K`` above and Adam below, training nets outlined in red; with
``fc``, residual, MLP or module nets it is a bar chart of grown at ``K``, at ``horizon_mult *
K`` and Adam per net.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gnca.archspec import CONV_PREFIX, CLIError, is_layer_spec, mlp_sizes, parse_arch
from gnca.cliargs import positive_int
from gnca.config import Config
from gnca.experiments.adam_baseline import adam_batches, tune_adam
from gnca.experiments.command import (
    add_horizon_mult,
    device_of,
    out_folder,
    print_report,
    rule_sources,
)
from gnca.experiments.common import ExperimentError, RuleSource, TrainedRule, md_table, mean_std
from gnca.experiments.learning import grow_on, initial_weights
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.seeds import HIGHER, Headline, optional_float
from gnca.task import Task

#: learning rates Adam tries per net (the best on a validation fifth wins)
ADAM_LRS = (1e-3, 3e-3, 1e-2)
#: training examples per Adam step
ADAM_BATCH = 64


def config_specs(cfg: Config) -> tuple[list[str], list[str]]:
    """The training nets of ``cfg`` (its MLPs as layer sizes ``64-32-10``, then its
    ``task.layers``) and its unseen layer nets (``train.eval_layers``)."""
    mlps = ["-".join(map(str, sizes)) for sizes in cfg.task.architectures]
    return [*mlps, *cfg.task.layers], list(cfg.train.eval_layers)


def _no_layer_nets(specs: Sequence[str]) -> bool:
    return not any(is_layer_spec(s) for s in specs)


NO_LAYER_NETS = (
    "gnca experiment conv needs layer nets: the rule's config has none in task.layers or "
    "train.eval_layers; pass --arch conv:SPEC (e.g. --arch conv:4k3p1-8k3s2p1)"
)


def run_conv(
    source: RuleSource,
    task: Task | None,
    train_archs: Sequence[str] | None,
    unseen_archs: Sequence[str] | None,
    out: str | Path,
    *,
    num: int = 50,
    horizon_mult: int = 10,
    seed: int = 0,
    adam_examples: int = 25_600,
    adam_nets: int = 5,
    device: torch.device | str = "cpu",
    retrain: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Grow every training and unseen net, with Adam beside each (module docstring).

    Args:
        source: the rule (meta-trained from its config, or loaded from a checkpoint).
        task: the data and forward conventions (``None``: the rule's own).
        train_archs: the rule's training nets as ``--arch`` specs (``None``: its config's,
            :func:`config_specs`).
        unseen_archs: nets it never saw (``None``: its config's ``train.eval_layers``); those
            also in ``train_archs`` are listed once, as trained.
        out: output folder (a rule trained here goes to ``out/rules/rule``).
        num: nets grown per architecture.
        horizon_mult: the second measurement, in units of ``K = train.k_max``.
        seed: seed of the grown nets' and Adam's initial weights (and of Adam's batches).
        adam_examples: training examples Adam sees per net.
        adam_nets: nets Adam trains per architecture.
        device: where to grow and train.
        retrain: meta-train again even if ``out/rules/rule`` holds a finished run.
        progress: show progress.
    """
    known = [*(train_archs or []), *(unseen_archs or [])]
    run = ExperimentRun(
        "conv",
        out,
        device=device,
        retrain=retrain,
        progress=progress,
        checks=[
            (num < 1 or horizon_mult < 1, "num and horizon_mult must be >= 1"),
            (adam_examples < 1 or adam_nets < 1, "--adam-examples and --adam-nets must be >= 1"),
            (train_archs is not None and unseen_archs is not None and _no_layer_nets(known),
             NO_LAYER_NETS),
        ],
    )  # fmt: skip
    (tr,) = run.obtain(source)
    task = task or tr.task
    cfg_train, cfg_unseen = config_specs(tr.cfg)
    trained = list(cfg_train if train_archs is None else train_archs)
    unseen = [s for s in (cfg_unseen if unseen_archs is None else unseen_archs) if s not in trained]
    specs = [*trained, *unseen]
    if _no_layer_nets(specs):
        raise ExperimentError(NO_LAYER_NETS)
    archs = {s: _arch(s, task, tr) for s in specs}  # every spec checked before growing
    k = tr.cfg.train.k_max
    rows = [
        _measure(run, tr, task, spec, archs[spec], spec in trained, k, horizon_mult, num, seed,
                 adam_examples, adam_nets)
        for spec in specs
    ]  # fmt: skip
    overview = _overview(rows)
    run.write_csv("conv.csv", rows)
    run.write_text("conv.md", conv_markdown(rows, overview, task.name, num, k, horizon_mult,
                                            adam_examples, adam_nets))  # fmt: skip
    title = (
        f"{task.name}: mean test accuracy of {num} grown nets at K = {k} rule steps\n"
        f"Adam: {adam_nets} nets, {adam_examples:,} examples seen per net (red: training nets)"
    )
    kind = plot(rows, run.path("conv.png"), title, horizon_mult)
    return run.finish(
        {
            "rules": run.rule_infos(),
            "dataset": task.name,
            "num": num,
            "k": k,
            "horizon_mult": horizon_mult,
            "seed": seed,
            "adam": {
                "nets": adam_nets,
                "examples": adam_examples,
                "batch": ADAM_BATCH,
                "lrs": list(ADAM_LRS),
                "val_fraction": 0.2,
                "trainable": "all weights",
            },
            "trained": trained,
            "unseen": unseen,
            "overview": overview,
            "rows": rows,
            "figure": str(run.path("conv.png")),
            "figure_kind": kind,
        }
    )


def _arch(spec: str, task: Task, tr: TrainedRule):
    """The architecture of an ``--arch`` spec on ``task`` (MLPs as :meth:`Task.mlp` builds
    them, layer nets with the rule's ``task.bias`` and ``task.activation``)."""
    d, t = task.data, tr.cfg.task
    try:
        if is_layer_spec(spec):
            return parse_arch(spec, d.n_features, d.n_classes, t.bias, d.image_shape, d.name,
                              activation=t.activation)  # fmt: skip
        return task.mlp(mlp_sizes(spec, d.n_features, d.n_classes, d.name))
    except CLIError as err:
        raise ExperimentError(str(err)) from None


def _measure(run: ExperimentRun, tr: TrainedRule, task: Task, spec: str, arch, trained: bool,
             k: int, mult: int, num: int, seed: int, examples: int,
             nets: int) -> dict[str, Any]:  # fmt: skip
    """One row: ``num`` nets grown to ``K`` and ``mult * K``, and Adam beside them."""
    t0 = time.perf_counter()
    total = mult * k
    _, curve = grow_on(tr, None, total, record=sorted({k, total}), seed=seed, num=num, task=task,
                       arch=arch)  # fmt: skip
    g_k, g_k_std = mean_std(curve[0].cpu())
    g_end, g_end_std = mean_std(curve[-1].cpu())
    grown_seconds = time.perf_counter() - t0
    graph, w0 = initial_weights(tr, nets, seed, arch)
    X, y = task.split("train", w0.device)
    tuned = tune_adam(task, graph, w0, torch.ones(w0.shape[0], dtype=torch.bool, device=w0.device),
                      adam_batches(examples, ADAM_BATCH), seed, ADAM_LRS, X, y, 0.2)  # fmt: skip
    X_te, y_te = task.split("test", w0.device)
    a_m, a_s = mean_std(task.batched_accuracy(graph, tuned.w, X_te, y_te).cpu())
    row = {
        "architecture": spec,
        "layers": arch.describe(),
        "weights": arch.num_weights,
        "trained": trained,
        "nets": num,
        "grown_at_K": g_k,
        "grown_at_K_std": g_k_std,
        f"grown_at_{mult}K": g_end,
        f"grown_at_{mult}K_std": g_end_std,
        "adam": a_m,
        "adam_std": a_s,
        "adam_lr": tuned.lr,
        "adam_nets": nets,
        "adam_examples": examples,
        "grown_minus_adam": g_k - a_m,
        "grown_seconds": grown_seconds,
        "adam_seconds": time.perf_counter() - t0 - grown_seconds,
    }
    run.note(
        f"conv: {spec}{' (trained)' if trained else ''}: grown {g_k:.4f} at K, {g_end:.4f} at "
        f"{mult}K; Adam {a_m:.4f} (lr {tuned.lr:g}; {time.perf_counter() - t0:.1f} s)"
    )
    return row


def _overview(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the training and the unseen nets (``None`` where there are none), Adam's
    mean, and the nets where grown at ``K`` >= Adam."""

    def stat(f, keep, key="grown_at_K") -> float | None:
        vals = [r[key] for r in rows if keep(r)]
        return float(f(vals)) if vals else None

    ahead = [r["architecture"] for r in rows if r["grown_minus_adam"] >= 0]
    return {
        "trained_mean": stat(np.mean, lambda r: r["trained"]),
        "trained_min": stat(np.min, lambda r: r["trained"]),
        "unseen_mean": stat(np.mean, lambda r: not r["trained"]),
        "unseen_min": stat(np.min, lambda r: not r["trained"]),
        "adam_mean": stat(np.mean, lambda r: True, "adam"),
        "grown_minus_adam_mean": stat(np.mean, lambda r: True, "grown_minus_adam"),
        "grown_at_least_adam": len(ahead),
        "grown_at_least_adam_nets": ahead,
        "nets": len(rows),
    }


def conv_markdown(rows, overview, name: str, num: int, k: int, mult: int, examples: int,
                  nets: int) -> str:  # fmt: skip
    """The table of every net and the line of means."""

    def pm(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.3f} ± {r[key + '_std']:.3f}"

    table = md_table(
        ["architecture", "weights", "trained/unseen", "grown @K", f"grown @{mult}K",
         "Adam (lr)", "grown - Adam"],
        [[r["architecture"], r["weights"], "trained" if r["trained"] else "unseen",
          pm(r, "grown_at_K"), pm(r, f"grown_at_{mult}K"), f"{pm(r, 'adam')} ({r['adam_lr']:g})",
          f"{r['grown_minus_adam']:+.3f}"] for r in rows],
    )  # fmt: skip

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lrs = ", ".join(f"{x:g}" for x in ADAM_LRS)
    return (
        f"# Layer nets grown on {name} ({num} nets each, K = {k} rule steps)\n\n"
        f"Mean ± std test accuracy over the nets. Adam: {nets} nets per architecture from the "
        f"same initial-weight draw as the grown nets, all weights trained, {examples:,} training "
        f"examples seen per net in batches of {ADAM_BATCH}, the learning rate picked from {lrs} "
        f"on the last fifth of the training split (trained on the rest).\n\n{table}\n\n"
        f"Grown at K: training nets {f(overview['trained_mean'])} (lowest "
        f"{f(overview['trained_min'])}), unseen nets {f(overview['unseen_mean'])} (lowest "
        f"{f(overview['unseen_min'])}); Adam {f(overview['adam_mean'])}. Grown >= Adam on "
        f"{overview['grown_at_least_adam']} of {overview['nets']} nets."
    )


# ---------------------------------------------------------------------- command line
HELP = "grow conv and residual layer nets, trained and unseen, with Adam beside each"
DESCRIPTION = (
    "Grow every layer net the rule was meta-trained on (task.layers) and every unseen one "
    "(train.eval_layers, or --arch) at K and horizon-mult x K rule steps; Adam on the same "
    "initial nets beside each. Heatmap over kernel size x channels for plain conv specs, else a "
    "bar chart."
)
CHECKPOINT_HELP = "checkpoint of the rule (instead of meta-training --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gnca experiment conv`` after the shared ones."""
    parser.add_argument(
        "--arch",
        action="append",
        metavar="SPEC",
        help="an unseen net, e.g. conv:6k3p1-12k3s2p1 or conv:fc32-rfc32-rfc32 (repeatable; "
        "replaces the config's train.eval_layers)",
    )
    add_horizon_mult(parser, 10)
    parser.add_argument(
        "--adam-examples",
        type=positive_int,
        default=25_600,
        help=f"training examples Adam sees per net, in batches of {ADAM_BATCH} (25600)",
    )
    parser.add_argument(
        "--adam-nets", type=positive_int, default=5, help="nets Adam trains per architecture (5)"
    )


def main(args: argparse.Namespace) -> int:
    """``gnca experiment conv``: one run of :func:`run_conv`."""
    cfg, rule, _ = rule_sources(args, "conv", ("rule", ""))
    rule_cfg = cfg
    if args.checkpoint is not None:
        from gnca.build import load_rule

        try:
            _, rule_cfg = load_rule(args.checkpoint)
        except (OSError, ValueError) as err:
            raise ExperimentError(f"cannot read {args.checkpoint}: {err}") from None
    assert rule_cfg is not None
    trained, unseen = config_specs(rule_cfg)
    if args.arch:
        unseen = list(args.arch)
    if _no_layer_nets([*trained, *unseen]):
        raise ExperimentError(NO_LAYER_NETS)
    if args.arch:  # a spec that does not fit the data fails now, not after meta-training
        from gnca.build import make_dataset

        d, t = make_dataset(rule_cfg.data, args.data_dir), rule_cfg.task
        for spec in args.arch:
            try:
                if is_layer_spec(spec):
                    parse_arch(spec, d.n_features, d.n_classes, t.bias, d.image_shape, d.name,
                               activation=t.activation)  # fmt: skip
                else:
                    mlp_sizes(spec, d.n_features, d.n_classes, d.name)
            except CLIError as err:
                raise ExperimentError(str(err)) from None
    out = out_folder(args, "conv", cfg, args.checkpoint)
    summary = run_conv(
        rule,
        None,
        trained,
        unseen,
        out,
        num=args.num,
        horizon_mult=args.horizon_mult,
        seed=args.seed,
        adam_examples=args.adam_examples,
        adam_nets=args.adam_nets,
        device=device_of(args, cfg),
        retrain=args.retrain,
        progress=not args.no_progress,
    )
    print_report(summary, out, "conv.md", "conv.png")
    return 0


# ---------------------------------------------------------------------- --seeds
def headline(s: dict[str, Any]) -> Headline:
    """The metrics of one run's ``summary.json`` that ``--seeds`` compares: the means over the
    training and unseen nets, Adam's, the count of nets where grown >= Adam, and every net's
    grown and Adam accuracy."""
    h = Headline()
    o = s["overview"]
    for key in ("trained_mean", "trained_min", "unseen_mean", "unseen_min"):
        h.metrics[key] = (optional_float(o[key]), HIGHER)
    h.metrics["adam_mean"] = (optional_float(o["adam_mean"]), None)
    h.metrics["grown_minus_adam_mean"] = (optional_float(o["grown_minus_adam_mean"]), HIGHER)
    h.metrics["grown_at_least_adam"] = (float(o["grown_at_least_adam"]), HIGHER)
    mult = s["horizon_mult"]
    for r in s["rows"]:
        h.add(r["architecture"], r, ("grown_at_K", f"grown_at_{mult}K"), HIGHER)
        h.add(r["architecture"], r, ("adam",), None)
    return h


# ---------------------------------------------------------------------- figure
def conv_cell(spec: str) -> tuple[int, int, int] | None:
    """``(conv layers, first kernel size, first channels)`` of a plain conv spec (conv tokens
    only), else ``None``."""
    from gnca.layerspec import CONV_TOKEN

    if not spec.startswith(CONV_PREFIX):
        return None
    tokens = [t for t in spec[len(CONV_PREFIX) :].split("-") if t]
    matches = [CONV_TOKEN.fullmatch(t) for t in tokens]
    if not matches or not all(matches):
        return None
    first = matches[0]
    assert first is not None
    return len(tokens), int(first["k"]), int(first["c"])


def plot(rows: list[dict[str, Any]], path: Path, title: str, horizon_mult: int) -> str:
    """``conv.png``: the heatmap when every net is a plain conv spec with its own cell (conv
    layers, first kernel, first channels), else the bar chart; returns ``"heatmap"`` or
    ``"bars"``."""
    cells = [conv_cell(r["architecture"]) for r in rows]
    if rows and all(cells) and len(set(cells)) == len(cells):
        _heatmaps(rows, cells, path, title)  # type: ignore[arg-type]
        return "heatmap"
    _bars(rows, path, title, horizon_mult)
    return "bars"


def _heatmaps(rows, cells: list[tuple[int, int, int]], path: Path, title: str) -> None:
    """One column of panels per number of conv layers: grown at K above, Adam below."""
    from gnca.experiments.generalization import heatmap_panel
    from gnca.experiments.plots import pyplot

    plt = pyplot()
    depths = sorted({c[0] for c in cells})
    kernels = sorted({c[1] for c in cells})
    channels = sorted({c[2] for c in cells})
    w = 1.1 * len(channels) + 2.6
    h = 0.8 * len(kernels) + 1.9
    fig, axes = plt.subplots(2, len(depths), figsize=(w * len(depths), 2 * h + 0.6), squeeze=False)
    for j, depth in enumerate(depths):
        for i, (key, what) in enumerate((("grown_at_K", "grown at K"), ("adam", "Adam"))):
            values = np.full((len(kernels), len(channels)), np.nan)
            outlined = []
            for r, (d, k, c) in zip(rows, cells, strict=True):
                if d == depth:
                    at = (kernels.index(k), channels.index(c))
                    values[at] = r[key]
                    if r["trained"]:
                        outlined.append(at)
            heatmap_panel(
                fig, axes[i, j], values, kernels, channels, outlined,
                f"{depth} conv layer{'s' if depth > 1 else ''}: {what}", "viridis", 0.0, 1.0,
                lambda v: f"{v:.3f}", lambda v: v > 0.6 or np.isnan(v), "mean test accuracy",
                xlabel="channels of the first conv", ylabel="kernel size of the first conv",
            )  # fmt: skip
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _bars(rows, path: Path, title: str, horizon_mult: int) -> None:
    """Grown at K, at ``horizon_mult`` K and Adam per net; training nets' names in red."""
    from gnca.experiments.plots import pyplot

    plt = pyplot()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * n + 2), 4.2))
    x = np.arange(n)
    bars = (
        ("grown_at_K", "grown @K"),
        (f"grown_at_{horizon_mult}K", f"grown @{horizon_mult}K"),
        ("adam", "Adam"),
    )
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], 0.27, label=label)
    ax.set_xticks(x, [r["architecture"].removeprefix(CONV_PREFIX) for r in rows], rotation=30,
                  ha="right", fontsize=8)  # fmt: skip
    for tick, r in zip(ax.get_xticklabels(), rows, strict=True):
        if r["trained"]:
            tick.set_color("red")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
