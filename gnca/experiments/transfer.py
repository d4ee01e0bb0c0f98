"""Transfer: a data-reading rule grows nets on datasets it never met in meta-training.

Learning curves against Adam at equal examples seen. For every dataset (``--dataset``,
repeatable) and architecture (``--arch``), ``num`` nets grow once up to the largest horizon;
at every horizon ``m * K`` of ``horizons`` (``K = train.k_max``) the run records

* the grown nets' test accuracy (``m * K`` rule steps, each reading ``rule.sense_batch``
  examples: ``m * K * sense_batch`` examples seen per net);
* the same nets with their hidden layers put back to their initial weights (the control of
  :mod:`~gnca.experiments.learning`: what the output layer alone carries);
* Adam on all layers from the same initial nets with as many examples seen (``m * K`` steps of
  ``sense_batch``), its learning rate tuned for that budget on the last fifth of the training
  split (trained on the other four fifths, :func:`~gnca.experiments.adam_baseline.tune_adam`);
* Adam on the same examples: the rate it picked, run again on the whole training split with
  the very batches the grown nets read (the same generator, drawn in the same order), so that
  the two differ only in how the nets learn, not in which examples they saw (one batch
  sequence, shared by all nets, would otherwise move both means: ``examples/batch_sequences.py``
  measures by how much);
* with ``step_scales`` (``--tune-step``), the grown nets with the rule's step tuned per budget
  as Adam's rate is: the rule's learned step size times each scale grows nets on the first four
  fifths of the training split, the scale with the best mean accuracy on the last fifth wins
  (the first of equals), and nets grown with it on the whole split are scored on the test split
  (a rule of the same arithmetic with one scalar chosen on held-out data, for rules with a
  descent path, ``rule.descent``);
* the CPU seconds (``time.process_time``) per net of growing up to ``m * K`` and of Adam's run
  at that budget with the rate it picked (the tuning's other rates not counted);
* the majority class of the training split;
* the root mean square of the task weights, grown and Adam's (weights that keep growing under
  the rule show here before the accuracy falls).

Outputs in ``out``: ``transfer.md`` (a table per dataset), ``transfer.csv`` (one row per dataset
x architecture x horizon), ``transfer.png`` (accuracy against examples seen and against CPU
seconds per net, one column per dataset) and ``summary.json`` (the rows, the curves and the
headline: the mean over datasets of grown minus Adam at every horizon, and the grown nets'
change between the two largest horizons).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gnca.cliargs import int_list, positive_floats, positive_int
from gnca.cliargs import seed as seed_arg
from gnca.experiments.adam_baseline import ADAM_LRS, adam_batches, train_adam, tune_adam
from gnca.experiments.command import device_of, print_report, rule_sources
from gnca.experiments.common import ExperimentError, RuleSource, md_table, mean_std, reader_seed
from gnca.experiments.learning import grow_on, hidden_reset, initial_weights
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.seeds import HIGHER, Headline, optional_float
from gnca.task import Task

#: default horizons, in units of K
HORIZONS = (1, 10)
#: the last fraction of the training split that Adam's rate (and ``--tune-step``'s scale) is
#: picked on
VALIDATION = 0.2
#: a change of the grown nets' mean accuracy between the two largest horizons smaller than this
#: (either way) is "flat"
FLAT = 0.005


def horizon_name(m: int) -> str:
    """``10`` -> ``"10K"``."""
    return f"{m}K"


class _Recorder:
    """``grow``'s metric: the grown nets' test accuracy at each recorded step, the same nets'
    with their hidden layers reset to ``w0``, and the CPU seconds spent growing up to that step
    (the metric's own time left out)."""

    def __init__(self, task: Task, X: torch.Tensor, y: torch.Tensor, w0: torch.Tensor) -> None:
        self.task, self.X, self.y, self.w0 = task, X, y, w0
        self.reset: list[torch.Tensor] = []
        self.w_rms: list[float] = []
        self.cpu: list[float] = []
        self.start = time.process_time()
        self.spent = 0.0

    def __call__(self, graph, w: torch.Tensor) -> torch.Tensor:
        t = time.process_time()
        self.cpu.append(t - self.start - self.spent)
        acc = self.task.batched_accuracy(graph, w, self.X, self.y).float()
        reset = hidden_reset(graph, w, self.w0)
        self.reset.append(self.task.batched_accuracy(graph, reset, self.X, self.y).float())
        self.w_rms.append(_rms(w))
        self.spent += time.process_time() - t
        return acc


def run_transfer(
    source: RuleSource,
    problems: Sequence[tuple[Task, Sequence[Any]]],
    out: str | Path,
    *,
    num: int = 100,
    horizons: Sequence[int] = HORIZONS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    step_scales: Sequence[float] = (),
) -> dict[str, Any]:
    """Learning curves of nets grown on data the rule never met, against Adam at equal examples.

    ``problems`` lists ``(task, architectures)``, one per dataset; ``horizons`` the multiples of
    ``K`` recorded (one growing run up to the largest); ``step_scales``: the multiples of the
    rule's step to tune per budget (none: no tuned columns). What is measured: the module
    docstring. Outputs: ``transfer.md``, ``transfer.csv``, ``transfer.png``, ``summary.json``.
    """
    hs = sorted(set(horizons))
    names = [t.name for t, _ in problems]
    scales = list(dict.fromkeys(float(s) for s in step_scales))
    run = ExperimentRun("transfer", out, device=device, progress=progress, checks=[
        (num < 1, "num must be >= 1"),
        (not hs or min(hs) < 1, f"horizons must be integers >= 1, got {list(horizons)}"),
        (not problems or any(not a for _, a in problems), "transfer needs a dataset and --arch"),
        (len(set(names)) != len(names), f"a dataset is given twice: {', '.join(names)}"),
        (any(not (s > 0 and math.isfinite(s)) for s in scales),
         f"step scales must be finite and > 0, got {list(step_scales)}"),
    ])  # fmt: skip
    out, device = run.out, run.device
    (tr,) = run.obtain(source)
    if not tr.rule.senses:
        raise ExperimentError(
            f"rule {source.label!r} reads no data (rule.senses is empty): it cannot learn "
            f"{', '.join(names)}; the transfer experiment needs a rule with senses"
        )
    if scales and not tr.rule.descent:
        raise ExperimentError(
            f"--tune-step scales the step of a descent path, and rule {source.label!r} has "
            f"none (rule.descent is 0)"
        )
    k, batch = tr.cfg.train.k_max, tr.cfg.rule.sense_batch
    met = {tr.cfg.data.name, *getattr(tr.cfg.data, "also", [])}
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, dict[str, Any]]] = {}
    for task, archs in problems:
        curves[task.name] = {}
        for arch in archs:
            run.note(f"transfer: {task.name}, {arch.describe()}: growing {hs[-1] * k} steps")
            got = _one(tr, task, arch, hs, k, batch, num, seed, device, scales)
            got_rows = [{"dataset": task.name, "seen_in_meta_training": task.name in met, **r}
                        for r in got]  # fmt: skip
            rows.extend(got_rows)
            curves[task.name][arch.describe()] = _curve(got_rows)
    run.write_csv("transfer.csv", rows)
    head = _headline(rows, hs)
    (out / "transfer.md").write_text(_markdown(rows, head, hs, names, num, k, batch))
    plot(curves, out / "transfer.png", k)
    return run.finish({
        "rules": run.rule_infos(), "dataset": ", ".join(names), "datasets": names, "num": num,
        "k": k, "sense_batch": batch, "horizons": hs, "adam_lrs": list(ADAM_LRS),
        "step_scales": scales, "headline": head, "rows": rows, "curves": curves,
    })  # fmt: skip


def _one(
    tr,
    task: Task,
    arch,
    hs: list[int],
    k: int,
    batch: int,
    num: int,
    seed: int,
    device,
    scales: list[float],
):
    """The rows of one dataset and architecture, one per horizon."""
    X_tr, y_tr = task.split("train", device)
    X_te, y_te = task.split("test", device)
    majority = float((y_te == torch.bincount(y_tr).argmax()).float().mean())
    graph, w0 = initial_weights(tr, num, seed, arch)
    rec = _Recorder(task, X_te, y_te, w0)
    steps = [m * k for m in hs]
    _, curve = grow_on(tr, None, steps[-1], record=steps, seed=seed, num=num, task=task,
                       arch=arch, metric=rec)  # fmt: skip
    tuned = _tuned_step(tr, task, arch, steps, num, seed, scales, curve) if scales else None
    trainable = torch.ones(w0.shape[0], dtype=torch.bool, device=w0.device)
    rows = []
    for i, m in enumerate(hs):
        batches = adam_batches(steps[i] * batch, batch)
        t = tune_adam(task, graph, w0, trainable, batches, seed, ADAM_LRS, X_tr, y_tr,
                      VALIDATION)  # fmt: skip
        adam_acc = task.batched_accuracy(graph, t.w, X_te, y_te)
        w_same = train_adam(task, graph, w0, trainable, batches, t.lr, reader_seed(seed), X_tr,
                            y_tr)  # fmt: skip
        same = mean_std(task.batched_accuracy(graph, w_same, X_te, y_te))[0]
        (g, g_sd), (a, a_sd) = mean_std(curve[i]), mean_std(adam_acc)
        rows.append({
            "architecture": arch.describe(), "horizon": horizon_name(m), "horizon_mult": m,
            "steps": steps[i], "examples_seen": steps[i] * batch, "grown": g, "grown_std": g_sd,
            "adam": a, "adam_std": a_sd, "adam_lr": t.lr, "adam_steps": len(batches),
            "adam_examples_seen": sum(batches), "grown_minus_adam": g - a,
            "adam_same": same, "grown_minus_adam_same": g - same,
            "hidden_reset": mean_std(rec.reset[i])[0], "majority": majority,
            "grown_w_rms": rec.w_rms[i], "adam_w_rms": _rms(t.w),
            "grown_cpu_s_per_net": rec.cpu[i] / num,
            "adam_cpu_s_per_net": t.cpu_seconds[t.lr] / num,
        })  # fmt: skip
        if tuned is not None:
            scale, acc = tuned[i]
            gt = mean_std(acc)[0]
            rows[-1] |= {"grown_tuned": gt, "grown_tuned_step_scale": scale,
                         "grown_tuned_minus_adam": gt - a,
                         "grown_tuned_minus_adam_same": gt - same}  # fmt: skip
    return rows


def step_scaled(rule, scale: float):
    """A copy of ``rule`` whose descent path steps ``scale`` times as far (its learned log step
    plus ``log(scale)``: the same rule otherwise)."""
    out = copy.deepcopy(rule)
    with torch.no_grad():
        out.descent_log.add_(math.log(scale))
    return out


def _tuned_step(
    tr, task: Task, arch, steps: list[int], num: int, seed: int, scales: list[float], curve
) -> list[tuple[float, torch.Tensor]]:
    """Per recorded step count, ``(scale, (G,) test accuracies)``: the step scale whose nets,
    grown on the first four fifths of the training split, score best on average on the last
    fifth (the split :func:`~gnca.experiments.adam_baseline.tune_adam` tunes Adam's rate on),
    and the test accuracy of nets grown with it on the whole split (``curve`` for scale 1,
    the nets already grown)."""
    X, y = task.data.X_train, task.data.y_train
    cut = int((1 - VALIDATION) * X.shape[0])  # tune_adam's cut
    held = dataclasses.replace(task, data=dataclasses.replace(
        task.data, X_train=X[:cut], y_train=y[:cut], X_test=X[cut:], y_test=y[cut:]))  # fmt: skip
    best: list[tuple[float, float]] = [(-1.0, scales[0])] * len(steps)
    for s in scales:
        tuned = dataclasses.replace(tr, rule=step_scaled(tr.rule, s))
        _, val = grow_on(tuned, None, steps[-1], record=steps, seed=seed, num=num, task=held,
                         arch=arch)  # fmt: skip
        best = [(v, s) if (v := float(val[i].mean())) > b[0] else b for i, b in enumerate(best)]
    grown = {1.0: curve}
    for s in sorted({s for _, s in best} - {1.0}):
        tuned = dataclasses.replace(tr, rule=step_scaled(tr.rule, s))
        grown[s] = grow_on(tuned, None, steps[-1], record=steps, seed=seed, num=num, task=task,
                           arch=arch)[1]  # fmt: skip
    return [(s, grown[s][i]) for i, (_, s) in enumerate(best)]


def _rms(w: torch.Tensor) -> float:
    """Root mean square of the task weights ``w (G * E,)``, over all nets."""
    return float(w.float().square().mean().sqrt())


def _curve(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One dataset and architecture's rows as lists over the horizons (``summary.json``)."""
    keys = ("horizon_mult", "steps", "examples_seen", "grown", "adam", "adam_same",
            "hidden_reset", "grown_cpu_s_per_net", "adam_cpu_s_per_net", "adam_lr",
            "grown_tuned", "grown_tuned_step_scale")  # fmt: skip
    return {key: [r[key] for r in rows] for key in keys if key in rows[0]} | {
        "majority": rows[0]["majority"]
    }


#: the columns of the grown nets with their step tuned per budget (``--tune-step``)
TUNED = ("grown_tuned", "grown_tuned_minus_adam", "grown_tuned_minus_adam_same")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _headline(rows: list[dict[str, Any]], hs: list[int]) -> dict[str, Any]:
    """Means over datasets and architectures at every horizon, and the grown nets' change
    between the two largest horizons (``grown_<M>K_minus_<m>K`` and ``trend``)."""
    head: dict[str, Any] = {}
    for m in hs:
        at = [r for r in rows if r["horizon_mult"] == m]
        for key in ("grown", "adam", "grown_minus_adam", "adam_same", "grown_minus_adam_same",
                    "hidden_reset", *TUNED):  # fmt: skip
            if key in at[0]:
                head[f"{key}_{horizon_name(m)}"] = _mean([r[key] for r in at])
    if len(hs) > 1:
        last, prev = horizon_name(hs[-1]), horizon_name(hs[-2])
        change = head[f"grown_{last}"] - head[f"grown_{prev}"]
        head[f"grown_{last}_minus_{prev}"] = change
        head["trend"] = "rising" if change > FLAT else "falling" if change < -FLAT else "flat"
    return head


def _markdown(rows, head, hs: list[int], names: list[str], num: int, k: int, batch: int) -> str:
    """``transfer.md``: a table per dataset, then the means over datasets."""
    parts = [
        f"# Growing on data never seen in meta-training: learning curves against Adam\n\n"
        f"{num} nets per dataset and architecture, K = {k} rule steps, {batch} examples read "
        f"per rule step; Adam from the same initial nets with the same examples seen per net "
        f"(batches of {batch}, lr picked per budget on a validation fifth of the training "
        f"split, trained on the rest). Adam, same batches: that rate on the whole training "
        f"split with the very batches the grown nets read. w rms: root mean square task "
        f"weight. CPU s: CPU seconds per net (growing up to the horizon; Adam's run at the "
        f"picked rate)."
    ]
    for name in names:
        own = [r for r in rows if r["dataset"] == name]
        seen = " (met in meta-training: not a transfer)" if own[0]["seen_in_meta_training"] else ""
        table = md_table(
            ["architecture", "horizon", "examples", "grown", "Adam", "grown - Adam",
             "Adam, same batches", "grown - Adam same", "hidden reset", "majority",
             "w rms grown / Adam", "CPU s grown", "CPU s Adam"],
            [[r["architecture"], f"{r['horizon']} ({r['steps']})", f"{r['examples_seen']:,}",
              f"{r['grown']:.3f}", f"{r['adam']:.3f}", f"{r['grown_minus_adam']:+.3f}",
              f"{r['adam_same']:.3f}", f"{r['grown_minus_adam_same']:+.3f}",
              f"{r['hidden_reset']:.3f}", f"{r['majority']:.3f}",
              f"{r['grown_w_rms']:.3g} / {r['adam_w_rms']:.3g}",
              f"{r['grown_cpu_s_per_net']:.3g}", f"{r['adam_cpu_s_per_net']:.3g}"] for r in own],
        )  # fmt: skip
        parts.append(f"## {name}{seen}\n\n{table}")
        if "grown_tuned" in own[0]:
            parts.append(md_table(
                ["architecture", "horizon", "grown, step tuned", "step scale", "tuned - Adam",
                 "tuned - Adam same"],
                [[r["architecture"], r["horizon"], f"{r['grown_tuned']:.3f}",
                  f"{r['grown_tuned_step_scale']:g}", f"{r['grown_tuned_minus_adam']:+.3f}",
                  f"{r['grown_tuned_minus_adam_same']:+.3f}"] for r in own],
            ))  # fmt: skip
    gaps = ", ".join(f"{horizon_name(m)} {head[f'grown_minus_adam_{horizon_name(m)}']:+.3f}"
                     for m in hs)  # fmt: skip
    same = ", ".join(f"{horizon_name(m)} {head[f'grown_minus_adam_same_{horizon_name(m)}']:+.3f}"
                     for m in hs)  # fmt: skip
    lines = [f"- mean over datasets of grown - Adam: {gaps}",
             f"- mean over datasets of grown - Adam on the same batches: {same}"]  # fmt: skip
    if f"grown_tuned_minus_adam_{horizon_name(hs[0])}" in head:
        hz = [horizon_name(m) for m in hs]
        tuned = ", ".join(
            f"{h} {head[f'grown_tuned_minus_adam_{h}']:+.3f} / "
            f"{head[f'grown_tuned_minus_adam_same_{h}']:+.3f}"
            for h in hz
        )
        lines.append(f"- with the step tuned per budget, grown - Adam / - Adam on the same "
                     f"batches: {tuned}")  # fmt: skip
    if len(hs) > 1:
        last, prev = horizon_name(hs[-1]), horizon_name(hs[-2])
        lines.append(
            f"- grown nets from {prev} to {last}: {head[f'grown_{last}_minus_{prev}']:+.3f} "
            f"(mean over datasets: {head['trend']})"
        )
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------- command line
HELP = "learning curves of a data-reading rule on datasets it never met, against Adam"
DESCRIPTION = (
    "Grow nets on each --dataset (not used in meta-training) for each --arch, recording test "
    "accuracy at every horizon of --horizons (multiples of K); compare with Adam at equal "
    "examples seen (its learning rate tuned per budget), with the grown nets' hidden layers "
    "reset, and with the majority class; CPU seconds per net of both."
)
CHECKPOINT_HELP = "checkpoint of the data-reading rule (instead of meta-training --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gnca experiment transfer`` after the shared ones."""
    from gnca.data import DATASET_NAMES

    parser.add_argument(
        "--dataset",
        action="append",
        required=True,
        help=f"dataset to grow on, repeatable: {', '.join(DATASET_NAMES)}",
    )
    parser.add_argument("--csv-path", default=None, help="the CSV file of --dataset csv")
    parser.add_argument(
        "--split-seed", type=seed_arg, default=0, help="seed of its train/test split (0)"
    )
    parser.add_argument("--arch", action="append", help="architecture(s) on that data, e.g. h:32")
    parser.add_argument(
        "--horizons",
        type=int_list(1, unique=True),
        default=None,
        metavar="M,M,...",
        help="horizons recorded, in units of K = train.k_max, e.g. 1,10,100 (default 1,10)",
    )
    parser.add_argument(
        "--horizon-mult",
        type=positive_int,
        default=None,
        metavar="M",
        help="short for --horizons 1,M",
    )
    parser.add_argument(
        "--tune-step",
        type=positive_floats,
        default=(),
        metavar="S,S,...",
        help="also grow with the rule's step times each scale and pick one per budget on a "
        "validation fifth, as Adam's rate is (e.g. 0.5,1,2,4; rules with a descent path)",
    )


def horizons_of(args: argparse.Namespace) -> list[int]:
    """``--horizons`` (or ``--horizon-mult M``: ``1,M``) as sorted multiples of K."""
    if args.horizons is not None and args.horizon_mult is not None:
        raise ExperimentError("--horizon-mult M is short for --horizons 1,M: give one of them")
    if args.horizon_mult is not None:
        return sorted({1, args.horizon_mult})
    if args.horizons is None:
        return list(HORIZONS)
    return sorted(int(x) for x in args.horizons.split(","))


def seeds_out(args: argparse.Namespace) -> Path:
    """The folder of a ``--seeds`` run: ``--out``, else ``results/transfer/<datasets>`` (not
    the config's name: the data is what is new)."""
    return Path(args.out) if args.out else Path("results") / "transfer" / "_".join(args.dataset)


def main(args: argparse.Namespace) -> int:
    """``gnca experiment transfer``: one run of :func:`run_transfer`."""
    from gnca.archspec import parse_arch
    from gnca.build import make_dataset, make_task
    from gnca.config import DataConfig

    horizons = horizons_of(args)
    if not args.arch:
        raise ExperimentError("gnca experiment transfer needs --arch (e.g. h:32)")
    cfg, rule, _ = rule_sources(args, "transfer", ("senses", ""))
    if args.checkpoint is not None:
        from gnca.build import load_rule

        _, cfg = load_rule(args.checkpoint)
    assert cfg is not None
    problems = []
    for name in args.dataset:
        data = make_dataset(DataConfig(name=name, csv_path=args.csv_path, seed=args.split_seed))
        archs = [
            parse_arch(
                a, data.n_features, data.n_classes, cfg.task.bias, data.image_shape, data.name
            )  # fmt: skip
            for a in args.arch
        ]
        problems.append((make_task(cfg.task, data), archs))
    out = seeds_out(args)
    summary = run_transfer(
        rule,
        problems,
        out,
        num=args.num,
        horizons=horizons,
        seed=args.seed,
        device=device_of(args, cfg),
        progress=not args.no_progress,
        step_scales=args.tune_step,
    )
    print_report(summary, out, "transfer.md", "transfer.png")
    return 0


# ---------------------------------------------------------------------- --seeds
def headline(s: dict[str, Any]) -> Headline:
    """The metrics of one run's ``summary.json`` that ``--seeds`` compares: every row's grown,
    Adam and grown - Adam, and the means over datasets of :func:`_headline`."""
    h = Headline()
    for r in s["rows"]:
        at = f"{r['dataset']}.{r['architecture']}"
        hz = r["horizon"]
        h.metrics[f"{at}.grown_at_{hz}"] = (optional_float(r["grown"]), HIGHER)
        h.metrics[f"{at}.adam_at_{hz}"] = (optional_float(r["adam"]), None)
        h.metrics[f"{at}.grown_minus_adam_at_{hz}"] = (
            optional_float(r["grown_minus_adam"]),
            HIGHER,
        )
        if "adam_same" in r:  # runs before the same-batches column have none
            h.metrics[f"{at}.grown_minus_adam_same_at_{hz}"] = (
                optional_float(r["grown_minus_adam_same"]),
                HIGHER,
            )
        for key in TUNED:  # runs with --tune-step
            if key in r:
                h.metrics[f"{at}.{key}_at_{hz}"] = (optional_float(r[key]), HIGHER)
    for key, value in s["headline"].items():
        if key == "trend":
            continue
        better = None if key.startswith(("adam_", "hidden_reset_")) else HIGHER
        h.metrics[key] = (optional_float(value), better)
    hs = [horizon_name(m) for m in s["horizons"]]
    for hz in (hs[0], hs[-1]):
        h.claims[f"grown nets at least as accurate as Adam at {hz} (mean over datasets)"] = (
            s["headline"][f"grown_minus_adam_{hz}"] >= 0
        )
    if len(hs) > 1:
        h.claims[f"grown nets still rising from {hs[-2]} to {hs[-1]} (mean over datasets)"] = (
            s["headline"]["trend"] == "rising"
        )
    return h


# ---------------------------------------------------------------------- figure
def plot(curves: dict[str, dict[str, dict[str, Any]]], path: Path, k: int) -> None:
    """One column per dataset: mean test accuracy against examples seen per net (top) and
    against CPU seconds per net (bottom), both on log axes; grown nets solid, their hidden
    layers reset dashed, with their step tuned per budget faint with triangles, Adam
    dash-dotted, Adam on the same batches dotted with crosses, the majority class dotted grey."""
    from gnca.experiments.plots import COLORS, pyplot

    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    n = len(curves)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.4), squeeze=False)
    for j, (name, per_arch) in enumerate(curves.items()):
        top, bottom = axes[0][j], axes[1][j]
        for i, (arch, c) in enumerate(per_arch.items()):
            grown_c, adam_c = COLORS[(2 * i) % len(COLORS)], COLORS[(2 * i + 1) % len(COLORS)]
            x = c["examples_seen"]
            top.plot(x, c["grown"], "o-", color=grown_c, label=f"grown {arch}")
            top.plot(x, c["hidden_reset"], "o--", color=grown_c, alpha=0.6,
                     label=f"grown, hidden reset {arch}")  # fmt: skip
            top.plot(x, c["adam"], "s-.", color=adam_c, label=f"Adam {arch}")
            if "adam_same" in c:
                top.plot(x, c["adam_same"], "x:", color=adam_c,
                         label=f"Adam, same batches {arch}")  # fmt: skip
            if "grown_tuned" in c:
                top.plot(x, c["grown_tuned"], "^-", color=grown_c, alpha=0.5,
                         label=f"grown, step tuned {arch}")  # fmt: skip
            bottom.plot(c["grown_cpu_s_per_net"], c["grown"], "o-", color=grown_c,
                        label=f"grown {arch}")  # fmt: skip
            bottom.plot(c["adam_cpu_s_per_net"], c["adam"], "s-.", color=adam_c,
                        label=f"Adam {arch}")  # fmt: skip
        majority = next(iter(per_arch.values()))["majority"]
        for ax in (top, bottom):
            ax.axhline(majority, color="grey", ls=":", lw=1, label="majority class")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3, which="both")
        top.set_title(f"{name} (K = {k} rule steps)")
        top.set_xlabel("examples seen per net")
        bottom.set_xlabel("CPU seconds per net")
        top.legend(fontsize=7)  # the architectures' sizes differ between datasets
        if j == 0:
            top.set_ylabel("mean test accuracy")
            bottom.set_ylabel("mean test accuracy")
            bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
