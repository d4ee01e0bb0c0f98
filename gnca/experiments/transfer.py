"""Transfer: a data-reading rule grows nets on a dataset it never met in meta-training.

For every architecture (``--arch``) on the new data (``--dataset``): the grown nets' test
accuracy at ``K`` and at ``horizon_mult * K`` rule steps, against Adam on all layers from the
same initial nets with as many examples seen, and the majority class. Outputs in ``out``:
``transfer.md``, ``transfer.csv`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from gnca.cliargs import seed as seed_arg
from gnca.experiments.adam_baseline import tuned_adam
from gnca.experiments.command import add_horizon_mult, device_of, print_report, rule_sources
from gnca.experiments.common import ExperimentError, RuleSource, md_table, mean_std, write_csv
from gnca.experiments.learning import grow_on, initial_weights
from gnca.experiments.runner import ExperimentRun
from gnca.experiments.seeds import HIGHER, Headline, optional_float
from gnca.task import Task


def run_transfer(
    source: RuleSource,
    task: Task,
    archs: list,
    out: str | Path,
    *,
    num: int = 100,
    horizon_mult: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Grow nets on data the rule never met in meta-training, against Adam and the majority.

    For every architecture: the grown nets' test accuracy at ``K`` and ``horizon_mult * K``;
    Adam on all layers from the same initial nets with as many examples seen (``K`` steps of
    ``rule.sense_batch``; the learning rate picked on a validation part of the training split);
    the majority class of the training split. Outputs: ``transfer.md``, ``transfer.csv``,
    ``summary.json``.
    """
    run = ExperimentRun("transfer", out, device=device, progress=progress,
                        checks=[(num < 1 or horizon_mult < 1,
                                 "num and horizon_mult must be >= 1")])  # fmt: skip
    out, device = run.out, run.device
    (tr,) = run.obtain(source)
    if not tr.rule.senses:
        raise ExperimentError(
            f"rule {source.label!r} reads no data (rule.senses is empty): it cannot learn "
            f"{task.name}; the transfer experiment needs a rule with senses"
        )
    k = tr.cfg.train.k_max
    total = horizon_mult * k
    _, y_tr = task.split("train", device)
    X_te, y_te = task.split("test", device)
    majority = float((y_te == torch.bincount(y_tr).argmax()).float().mean())
    rows = []
    for arch in archs:
        at = sorted({k, total})
        _, curve = grow_on(tr, None, total, record=at, seed=seed, num=num, task=task, arch=arch)
        graph, w0 = initial_weights(tr, num, seed, arch)
        lr, w_adam = tuned_adam(task, graph, w0, torch.ones(w0.shape[0], dtype=torch.bool,
                                device=w0.device), k, tr.cfg.rule.sense_batch, seed)  # fmt: skip
        adam_acc = task.accuracy(graph, w_adam, X_te, y_te)
        g_k, g_end = mean_std(curve[0])[0], mean_std(curve[-1])[0]
        a_m = mean_std(adam_acc)[0]
        rows.append({
            "dataset": task.name, "architecture": arch.describe(), "grown_at_K": g_k,
            f"grown_at_{horizon_mult}K": g_end, "adam": a_m, "adam_lr": lr,
            "grown_minus_adam": g_k - a_m, "majority": majority,
            "examples_seen": k * tr.cfg.rule.sense_batch,
        })  # fmt: skip
    write_csv(out / "transfer.csv", rows)
    table = md_table(
        ["architecture", "grown @K", f"grown @{horizon_mult}K", "Adam", "grown - Adam", "majority"],
        [[r["architecture"], f"{r['grown_at_K']:.3f}", f"{r[f'grown_at_{horizon_mult}K']:.3f}",
          f"{r['adam']:.3f}", f"{r['grown_minus_adam']:+.3f}", f"{r['majority']:.3f}"]
         for r in rows],
    )  # fmt: skip
    (out / "transfer.md").write_text(
        f"# Growing on {task.name}, never seen in meta-training ({num} nets, K = {k}, "
        f"{k * tr.cfg.rule.sense_batch} examples seen per net)\n\n{table}\n"
    )
    return run.finish({"rules": run.rule_infos(), "dataset": task.name, "num": num, "rows": rows})


# ---------------------------------------------------------------------- command line
HELP = "grow with a data-reading rule on a dataset it never met, against Adam"
DESCRIPTION = (
    "Grow nets on --dataset (not used in meta-training) for each --arch; compare with Adam at "
    "equal examples seen and with the majority class."
)
CHECKPOINT_HELP = "checkpoint of the data-reading rule (instead of meta-training --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gnca experiment transfer`` after the shared ones."""
    parser.add_argument("--dataset", required=True, help="iris, wine, digits, mnist or csv")
    parser.add_argument("--csv-path", default=None, help="the CSV file of --dataset csv")
    parser.add_argument(
        "--split-seed", type=seed_arg, default=0, help="seed of its train/test split (0)"
    )
    parser.add_argument("--arch", action="append", help="architecture(s) on that data, e.g. h:32")
    add_horizon_mult(parser, 10)


def seeds_out(args: argparse.Namespace) -> Path:
    """The folder of a ``--seeds`` run: ``--out``, else ``results/transfer/<dataset>`` (not
    the config's name: the data is what is new)."""
    return Path(args.out) if args.out else Path("results") / "transfer" / args.dataset


def main(args: argparse.Namespace) -> int:
    """``gnca experiment transfer``: one run of :func:`run_transfer`."""
    from gnca.archspec import parse_arch
    from gnca.build import make_dataset, make_task
    from gnca.config import DataConfig

    cfg, rule, _ = rule_sources(args, "transfer", ("senses", ""))
    if args.checkpoint is not None:
        from gnca.build import load_rule

        _, cfg = load_rule(args.checkpoint)
    assert cfg is not None
    data = make_dataset(DataConfig(name=args.dataset, csv_path=args.csv_path, seed=args.split_seed))
    task = make_task(cfg.task, data)
    if not args.arch:
        raise ExperimentError("gnca experiment transfer needs --arch (e.g. h:32)")
    archs = [
        parse_arch(a, data.n_features, data.n_classes, cfg.task.bias, data.image_shape, data.name)
        for a in args.arch
    ]
    out = Path(args.out) if args.out else Path("results") / "transfer" / data.name
    summary = run_transfer(
        rule,
        task,
        archs,
        out,
        num=args.num,
        horizon_mult=args.horizon_mult,
        seed=args.seed,
        device=device_of(args, cfg),
        progress=not args.no_progress,
    )
    print_report(summary, out, "transfer.md", None)
    return 0


# ---------------------------------------------------------------------- --seeds
def headline(s: dict[str, Any]) -> Headline:
    """The metrics of one run's ``summary.json`` that ``--seeds`` compares."""
    h = Headline()
    for r in s["rows"]:
        arch = r["architecture"]
        for key, value in r.items():
            if key.startswith("grown_at_") or key == "grown_minus_adam":
                h.metrics[f"{arch}.{key}"] = (optional_float(value), HIGHER)
            elif key == "adam":
                h.metrics[f"{arch}.adam"] = (optional_float(value), None)
    return h
