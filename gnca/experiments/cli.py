"""``gnca experiment NAME``: the paper's experiments (stability, robustness, generalization),
the data-reading rule's (learning, transfer) and layer nets' (conv); :data:`EXPERIMENTS` lists
them.

Each subcommand meta-trains the rules it needs (or loads them with ``--checkpoint``), runs the
experiment and writes a Markdown table, CSV files, a PNG and ``summary.json`` into ``--out``
(default ``results/<experiment>/<config name>``). Rules trained by an experiment are kept in
``<out>/rules/<label>`` and reused by the next run with the same configuration.

With ``--seeds`` a subcommand runs once per meta-training seed ``S`` into ``<out>/seed-S``
(``train.seed=S`` on every config it meta-trains) and then summarises the seeds in
``<out>/seeds.{md,csv,json,png}`` (:mod:`gnca.experiments.seeds`).

An experiment is one module, registered in :data:`EXPERIMENTS`; this file only registers them.
The module has

* ``HELP``, ``DESCRIPTION``: its line in ``gnca experiment --help`` and the text of its own
  ``--help``; ``CHECKPOINT_HELP``: what its ``--checkpoint`` is;
* ``add_arguments(parser)``: its own flags, typed, after those every experiment takes
  (:func:`gnca.experiments.command.add_shared_arguments`);
* ``main(args) -> int``: one run from the parsed flags (``--seeds`` repeats it);
* ``headline(summary) -> Headline``: the metrics and claims ``--seeds`` compares over seeds;
* its protocol (``run_<name>``) and its figure (``plot``);
* optionally ``SEED_CURVES`` (:class:`~gnca.experiments.seeds.SeedCurves`: per-step curves
  that ``seeds.png`` draws for every seed) and ``seeds_out(args)`` (the folder of a ``--seeds``
  run when it is not ``results/<experiment>/<config name>``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import gnca.experiments.conv as conv
import gnca.experiments.generalization as generalization
import gnca.experiments.learning as learning
import gnca.experiments.robustness as robustness
import gnca.experiments.stability as stability
import gnca.experiments.transfer as transfer
from gnca.experiments.command import add_shared_arguments, read_config
from gnca.experiments.common import ExperimentError
from gnca.experiments.seeds import add_targets, summarize_seeds

#: Every ``gnca experiment`` subcommand, by name, with its module; ``gnca --help`` and
#: ``gnca experiment --help`` list them in this order.
EXPERIMENTS: dict[str, ModuleType] = {
    "stability": stability,
    "robustness": robustness,
    "generalization": generalization,
    "learning": learning,
    "transfer": transfer,
    "conv": conv,
}


def add_experiment_parser(
    subparsers: argparse._SubParsersAction,
    common: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """Register ``gnca experiment NAME`` for every experiment of :data:`EXPERIMENTS`; ``common``
    adds the flags of every ``gnca`` subcommand."""
    names = ", ".join(EXPERIMENTS)
    exp = subparsers.add_parser(
        "experiment",
        help=f"reproduce the experiments: {names}",
        description=f"Reproduce the experiments ({names}); each writes tables, CSVs and a PNG.",
    )
    esub = exp.add_subparsers(dest="experiment", required=True)
    for name, module in EXPERIMENTS.items():
        sp = esub.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        add_shared_arguments(sp, module.CHECKPOINT_HELP)
        common(sp)
        module.add_arguments(sp)
        sp.set_defaults(func=_command(name))
    return exp


Command = Callable[[argparse.Namespace], int]


def _command(experiment: str) -> Command:
    """The experiment's ``main``, run once per ``--seeds`` seed and then summarised; without
    ``--seeds`` it runs as it is."""
    module = EXPERIMENTS[experiment]

    def run(args: argparse.Namespace) -> int:
        if getattr(args, "seeds", None) is None:
            if getattr(args, "target", None):
                raise ExperimentError("--target is a claim over seeds: it needs --seeds")
            return module.main(args)
        return _run_seeds(args, experiment)

    return run


def _seeds_out(args: argparse.Namespace, experiment: str) -> Path:
    """The folder of a ``--seeds`` run (``seed-S`` folders and ``seeds.*`` go in it)."""
    module = EXPERIMENTS[experiment]
    if hasattr(module, "seeds_out"):
        return module.seeds_out(args)
    if args.out:
        return Path(args.out)
    cfg = read_config(args.config, args.set, args.data_dir)
    assert cfg is not None
    return Path("results") / experiment / cfg.name


def _run_seeds(args: argparse.Namespace, experiment: str) -> int:
    """``--seeds``: meta-train and run once per seed in ``OUT/seed-S`` (``train.seed=S`` on
    every config), then write ``seeds.md``, ``seeds.csv``, ``seeds.json`` and ``seeds.png``."""
    module = EXPERIMENTS[experiment]
    for name, value in sorted(vars(args).items()):
        if name.endswith("checkpoint") and value is not None:
            flag = "--" + name.replace("_", "-")
            raise ExperimentError(
                f"--seeds meta-trains one rule per seed, {flag} is one trained rule: pass a "
                f"config instead, or drop --seeds"
            )
    if args.config is None:
        raise ExperimentError(f"gnca experiment {experiment} --seeds needs --config FILE")
    if any(o.replace(" ", "").startswith("train.seed=") for o in args.set):
        raise ExperimentError("--seeds sets train.seed itself: drop train.seed from --set")
    out = _seeds_out(args, experiment)
    seeds = list(args.seeds)
    targets = args.target or []
    for i, seed in enumerate(seeds):
        print(f"## seed {seed} ({i + 1} of {len(seeds)}): {out / f'seed-{seed}'}", flush=True)
        print(f"--seeds: seed {seed} ({i + 1} of {len(seeds)})", file=sys.stderr)
        one = copy.copy(args)
        one.seeds, one.out = None, str(out / f"seed-{seed}")
        one.set = [*args.set, f"train.seed={seed}"]
        code = module.main(one)
        if code:
            return code
        if i == 0 and targets:  # an unknown --target metric stops before the next seed
            first = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
            add_targets(module.headline(first), targets)
        print()
    result = summarize_seeds(
        experiment,
        out,
        seeds,
        targets,
        headline=module.headline,
        curves=getattr(module, "SEED_CURVES", None),
    )
    print((out / "seeds.md").read_text().rstrip())
    print(
        f"\nfigure:  {result['figure']}\nresults: {out}/seeds.{{md,csv,json}} "
        f"({result['seconds']:.1f} s over {len(seeds)} seeds on "
        f"{result['environment']['cpu_model']})"
    )
    return 0
