"""Learning, not recall: does a data-reading rule learn the task it grows a net for?

Protocol (one rule with senses; optionally a data-free control rule):

1. **Label permutations.** Grow ``num`` nets, each on its own random permutation of the class
   labels (drawn from a seed no meta-training step used), and measure test accuracy under that
   permutation; the same on the unpermuted labels. A data-free rule grows the same net whatever
   the labels, so it is at chance in expectation on permutations.
2. **Hidden layers learn.** On the unpermuted task: the grown nets, the grown nets with their
   hidden layers put back to the initial weights, and Adam from the same initial nets on the
   output layer alone and on all layers, with as many examples seen per net as the rule read
   (``K`` rule steps x ``rule.sense_batch``), the learning rate picked on a validation part of
   the training split; and Adam on all layers at that rate on the whole split with the very
   batches the grown nets read (the two then differ only in how the nets learn).
3. **Past the horizon.** Accuracy at every step up to ``horizon_mult * K``; the peak and the
   value at the end.

Outputs in ``out``: ``learning.md``, ``learning.csv`` (one row per measurement),
``learning_curves.csv``, ``learning.png`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from gnca.architecture import OUTPUT
from gnca.build import TrainedRule
from gnca.experiments.adam_baseline import (  # noqa: F401 (ADAM_LRS, adam: re-exported)
    ADAM_LRS,
    adam,
    train_adam,
    tuned_adam,
)
from gnca.experiments.command import add_horizon_mult, rule_sources, run_and_report
from gnca.experiments.common import (
    ExperimentError,
    RuleSource,
    md_table,
    mean_std,
    reader_seed,
    write_csv,
)
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.seeds import HIGHER, Headline, optional_float
from gnca.graph import WeightGraph
from gnca.grow import grow
from gnca.senses import SenseReader
from gnca.task import Task


def permutations(n_nets: int, n_classes: int, seed: int) -> torch.Tensor:
    """``(n_nets, classes)`` random label permutations, one per net."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_classes, generator=g) for _ in range(n_nets)])


def permuted_accuracy(
    task: Task, graph, w: torch.Tensor, perm: torch.Tensor | None, split: str = "test"
) -> torch.Tensor:
    """``(G,)`` accuracy of each net on ``split`` with its labels permuted by ``perm (G, C)``."""
    X, y = task.split(split, w.device)
    yy = perm.to(y.device)[:, y] if perm is not None else y
    return task.accuracy(graph, w, X, yy)


def grow_on(
    tr: TrainedRule,
    perm: torch.Tensor | None,
    steps: int,
    *,
    record: list[int],
    seed: int,
    num: int,
    task: Task | None = None,
    arch=None,
    metric=None,
) -> tuple[Any, torch.Tensor]:
    """Grow ``num`` nets with ``tr`` (each reading its permuted labels) on ``task`` (default:
    the rule's) and ``arch`` (default: its first training architecture); test accuracy curve
    (or the curve of ``metric(graph, w) -> (G,)`` when given)."""
    task = task or tr.task
    reader = None
    if tr.rule.senses:
        reader = SenseReader(
            tr.rule.senses,
            task,
            tr.cfg.rule.sense_batch,
            torch.Generator().manual_seed(reader_seed(seed)),
            permutation=perm,
            feedback=tr.rule.feedback,
        )
    arch = arch if arch is not None else tr.architectures()[0]
    res = grow(
        tr.rule,
        arch,
        num,
        steps,
        tr.init,
        device=tr.device,
        generator=torch.Generator(device=tr.device).manual_seed(seed),
        metric=metric or (lambda g, w: permuted_accuracy(task, g, w, perm)),
        record_at=record,
        senses=reader,
    )
    assert res.curve is not None
    return res, res.curve


def initial_weights(tr: TrainedRule, num: int, seed: int, arch=None) -> tuple[Any, torch.Tensor]:
    """The graph and ``(G * E,)`` initial weights :func:`grow` starts from with ``seed``."""
    arch = arch if arch is not None else tr.architectures()[0]
    graph = WeightGraph.replicate(arch, num, device=tr.device)
    gen = torch.Generator(device=tr.device).manual_seed(seed)
    w0, _ = tr.init.state(graph, tr.rule.hidden_channels, gen)
    return graph, w0


def hidden_reset(graph, w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """``w`` with every weight outside the output layer put back to ``w0`` (the grown nets with
    their hidden layers reset to the initial weights)."""
    return torch.where(graph.neuron_kind[graph.dst] == OUTPUT, w, w0)


class _Rows:
    """The experiment's measurements, one row each (mean, std and min over the nets)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, what: str, rule: str, acc: torch.Tensor, **extra: Any) -> float:
        m, s = mean_std(acc)
        self.rows.append({"measurement": what, "rule": rule, "mean": m, "std": s,
                          "min": float(acc.min()), **extra})  # fmt: skip
        return m


def run_learning(
    source: RuleSource,
    control: RuleSource | None,
    out: str | Path,
    *,
    num: int = 100,
    horizon_mult: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
    retrain: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the protocol of the module docstring and write its outputs into ``out``."""
    run = ExperimentRun("learning", out, device=device, retrain=retrain, progress=progress,
                        checks=[(num < 1 or horizon_mult < 1,
                                 "num and horizon_mult must be >= 1")])  # fmt: skip
    (tr,) = run.obtain(source)
    if not tr.rule.senses:
        raise ExperimentError(
            f"rule {source.label!r} reads no data (rule.senses is empty); the learning "
            f"experiment needs a rule with senses (the data-free one is the control)"
        )
    ctl = run.obtain(control)[0] if control is not None else None
    k = tr.cfg.train.k_max
    total = horizon_mult * k
    record = sorted(set(range(0, total + 1, max(1, k // 4))) | {k, total})
    rows = _Rows()
    curves, curve_u, head = _permutation_part(tr, ctl, rows, record, k, num, seed)
    head.update(_hidden_part(tr, rows, k, num, seed, head["accuracy_unpermuted"]))
    peak, end = float(curve_u.mean(1).max()), float(curve_u[-1].mean())
    rows.add(f"unpermuted @{total} ({horizon_mult}K)", tr.label, curve_u[-1])
    head.update(peak=peak, at_end=end, end_minus_peak=end - peak)
    _write_learning(run.out, rows.rows, curves, record, head, tr, num, k, horizon_mult)
    fields = {"rules": run.rule_infos(), "num": num, "horizon_mult": horizon_mult,
              "seed": seed, "headline": head, "rows": rows.rows}  # fmt: skip
    return run.finish(fields)


def _permutation_part(tr, ctl, rows: _Rows, record: list[int], k: int, num: int, seed: int):
    """Step 1: growth on held-out permutations and on the plain labels (and the control's)."""
    total = record[-1]
    perm = permutations(num, tr.task.n_classes, 1_000_003 + seed)
    _, curve_p = grow_on(tr, perm, total, record=record, seed=seed, num=num)
    _, curve_u = grow_on(tr, None, total, record=record, seed=seed, num=num)
    at_k = record.index(k)
    acc_perm = rows.add("held-out permutations @K", tr.label, curve_p[at_k])
    acc_plain = rows.add("unpermuted @K", tr.label, curve_u[at_k])
    curves = {f"{tr.label} permuted": curve_p.mean(1), f"{tr.label} unpermuted": curve_u.mean(1)}
    if ctl is not None:
        _, c_p = grow_on(ctl, perm, total, record=record, seed=seed, num=num)
        _, c_u = grow_on(ctl, None, total, record=record, seed=seed, num=num)
        rows.add("held-out permutations @K", ctl.label, c_p[at_k])
        rows.add("unpermuted @K", ctl.label, c_u[at_k])
        curves[f"{ctl.label} permuted"] = c_p.mean(1)
    head = {
        "permuted_over_unpermuted": acc_perm / acc_plain if acc_plain else float("nan"),
        "accuracy_permuted": acc_perm,
        "accuracy_unpermuted": acc_plain,
    }
    return curves, curve_u, head


def _hidden_part(tr, rows: _Rows, k: int, num: int, seed: int, grown: float) -> dict[str, Any]:
    """Step 2: the grown nets with their hidden layers reset, and Adam (output layer only, all
    layers) from the same initial nets with as many examples seen."""
    graph, w0 = initial_weights(tr, num, seed)
    w_grown = grow_on(tr, None, k, record=[k], seed=seed, num=num)[0].w
    is_out_layer = graph.neuron_kind[graph.dst] == OUTPUT
    reset = hidden_reset(graph, w_grown, w0)
    acc_reset = rows.add("grown, hidden layers reset to the initial weights", tr.label,
                         permuted_accuracy(tr.task, graph, reset, None))  # fmt: skip
    batch = tr.cfg.rule.sense_batch
    examples = k * batch
    lr_o, w_o = tuned_adam(tr.task, graph, w0, is_out_layer, k, batch, seed)
    acc_o = rows.add("Adam, output layer only", "adam",
                     permuted_accuracy(tr.task, graph, w_o, None),
                     lr=lr_o, examples_seen=examples)  # fmt: skip
    lr_f, w_f = tuned_adam(tr.task, graph, w0, torch.ones_like(is_out_layer), k, batch, seed)
    acc_f = rows.add("Adam, all layers", "adam", permuted_accuracy(tr.task, graph, w_f, None),
                     lr=lr_f, examples_seen=examples)  # fmt: skip
    # that rate again on the whole training split, with the very batches the grown nets read
    X, y = tr.task.split("train", w0.device)
    w_s = train_adam(tr.task, graph, w0, torch.ones_like(is_out_layer), [batch] * k, lr_f,
                     reader_seed(seed), X, y)  # fmt: skip
    acc_s = rows.add("Adam, all layers, on the grown nets' batches", "adam",
                     permuted_accuracy(tr.task, graph, w_s, None), lr=lr_f,
                     examples_seen=examples)  # fmt: skip
    return {
        "accuracy_hidden_reset": acc_reset,
        "adam_output_only": acc_o,
        "adam_all_layers": acc_f,
        "adam_same_batches": acc_s,
        "adam_lrs": [lr_o, lr_f],
        "gap_closed": (grown - acc_o) / (acc_f - acc_o) if acc_f != acc_o else float("nan"),
        "examples_seen": examples,
    }


def _write_learning(out: Path, rows, curves, record, head, tr, num: int, k: int, mult: int):
    """``learning.csv``, ``learning_curves.csv``, ``learning.md`` and ``learning.png``."""
    steps_rows = [{"step": s, **{name: float(c[i]) for name, c in curves.items()}}
                  for i, s in enumerate(record)]  # fmt: skip
    write_csv(out / "learning.csv", rows)
    write_csv(out / "learning_curves.csv", steps_rows)
    table = md_table(
        ["measurement", "rule", "mean", "std", "min"],
        [[r["measurement"], r["rule"], f"{r['mean']:.3f}", f"{r['std']:.3f}", f"{r['min']:.3f}"]
         for r in rows],
    )  # fmt: skip
    lr_o, lr_f = head["adam_lrs"]
    (out / "learning.md").write_text(
        f"# Learning, not recall ({tr.task.name}, {num} nets, K = {k})\n\n{table}\n\n"
        f"- held-out permutations / unpermuted: {head['permuted_over_unpermuted']:.3f}\n"
        f"- gap from output-only Adam to full Adam closed: {head['gap_closed']:.3f} "
        f"(examples seen per net: {head['examples_seen']}; Adam lr {lr_o:g} / {lr_f:g})\n"
        f"- past the horizon: peak {head['peak']:.3f}, at {mult}K {head['at_end']:.3f}\n"
    )
    plot(curves, record, k, out / "learning.png", tr.task.name)


# ---------------------------------------------------------------------- command line
HELP = "a rule that reads data, on label permutations never seen in meta-training"
DESCRIPTION = (
    "Grow nets with a data-reading rule (rule.senses) on held-out label permutations and on the "
    "plain labels; compare with a data-free rule, with the grown nets' hidden layers reset, and "
    "with Adam (output layer only / all layers) at equal examples seen; accuracy far past the "
    "horizon."
)
CHECKPOINT_HELP = "checkpoint of the data-reading rule (instead of meta-training --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gnca experiment learning`` after the shared ones."""
    parser.add_argument("--datafree-config", help="config of the data-free control rule")
    parser.add_argument("--datafree-checkpoint", help="checkpoint of the data-free control rule")
    add_horizon_mult(parser, 10)


def main(args: argparse.Namespace) -> int:
    """``gnca experiment learning``: one run of :func:`run_learning`."""
    cfg, rule, control = rule_sources(
        args,
        "learning",
        ("senses", "data-free"),
        control=(args.datafree_config, args.datafree_checkpoint, "", {}),
        skip_control=args.datafree_config is None and args.datafree_checkpoint is None,
    )
    return run_and_report(
        args, "learning", cfg, run_learning, rule, control, horizon_mult=args.horizon_mult
    )


# ---------------------------------------------------------------------- --seeds
#: The headline keys of a run and which direction is better (``None``: a baseline).
BETTER = {
    "permuted_over_unpermuted": HIGHER,
    "accuracy_permuted": HIGHER,
    "accuracy_unpermuted": HIGHER,
    "accuracy_hidden_reset": None,
    "adam_output_only": None,
    "adam_all_layers": None,
    "adam_same_batches": None,
    "gap_closed": HIGHER,
    "peak": HIGHER,
    "at_end": HIGHER,
    "end_minus_peak": HIGHER,
}


def headline(s: dict[str, Any]) -> Headline:
    """The metrics of one run's ``summary.json`` that ``--seeds`` compares."""
    h = Headline()
    for key, value in s["headline"].items():
        if key in BETTER:
            h.metrics[key] = (optional_float(value), BETTER[key])
    return h


# ---------------------------------------------------------------------- figure
def plot(curves: dict[str, torch.Tensor], steps: list[int], k: int, path: Path, name: str) -> None:
    """Mean test accuracy against rule steps, one line per curve, the horizon ``k`` dotted."""
    from gnca.experiments.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, c in curves.items():
        ax.plot(steps, c.tolist(), label=label)
    ax.axvline(k, color="grey", ls=":", lw=1)
    ax.set_xlabel("rule steps")
    ax.set_ylabel("mean test accuracy")
    ax.set_title(f"{name}: growing under label permutations never seen in meta-training")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
