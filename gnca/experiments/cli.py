"""``gnca experiment NAME``: the paper's experiments (stability, robustness, generalization) and
the data-reading rule's (learning, transfer); :data:`EXPERIMENTS` lists them.

Each subcommand meta-trains the rules it needs (or loads them with ``--checkpoint``), runs the
experiment and writes a Markdown table, CSV files, a PNG and ``summary.json`` into ``--out``
(default ``results/<experiment>/<config name>``). Rules trained by an experiment are kept in
``<out>/rules/<label>`` and reused by the next run with the same configuration.

With ``--seeds`` a subcommand runs once per meta-training seed ``S`` into ``<out>/seed-S``
(``train.seed=S`` on every config it meta-trains) and then summarises the seeds in
``<out>/seeds.{md,csv,json,png}`` (:mod:`gnca.experiments.seeds`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from gnca.config import Config, config_from_dict, config_to_dict, load_config
from gnca.experiments.common import ExperimentError, RuleSource


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ExperimentError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ExperimentError(f"{what} must list at least one integer")
    return values


def _config(path: str | None, overrides: list[str], data_dir: str | None) -> Config | None:
    if path is None:
        return None
    # the flag is one more override, so it is validated like the config's own value
    extra = [f"data.data_dir={data_dir}"] if data_dir else []
    return load_config(path, [*overrides, *extra])


def _derived(cfg: Config, suffix: str, **pool: int) -> Config:
    """A copy of ``cfg`` with pool settings changed and ``suffix`` added to its name."""
    d = config_to_dict(cfg)
    d["name"] = f"{cfg.name}_{suffix}"
    d["pool"].update(pool)
    return config_from_dict(d)


def _device(args: argparse.Namespace, cfg: Config | None) -> torch.device:
    from gnca.device import resolve_device

    return resolve_device(args.device or (cfg.train.device if cfg else "auto"))


def _out(args: argparse.Namespace, experiment: str, cfg: Config | None, ckpt: str | None) -> Path:
    if args.out:
        return Path(args.out)
    name = cfg.name if cfg is not None else Path(ckpt or "rule").resolve().parent.name
    return Path("results") / experiment / name


def _report(summary: dict, out: Path, table: str, figure: str) -> None:
    print((out / table).read_text().rstrip())
    print(f"\nfigure:  {out / figure}\nresults: {out} ({_took(summary)})")


def _took(summary: dict) -> str:
    """``12.3 s on <CPU model>`` of a summary."""
    return f"{summary['seconds']:.1f} s on {summary['environment']['cpu_model']}"


def _start(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def _rules(
    args: argparse.Namespace,
    experiment: str,
    labels: tuple[str, str],
    *,
    control: tuple[str | None, str | None, str, dict[str, int]] | None = None,
    skip_control: bool = True,
    control_error: str = "",
) -> tuple[Config | None, RuleSource, RuleSource | None]:
    """The experiment's main rule and, unless ``skip_control``, the control rule it is
    compared with.

    ``control`` is ``(config file, checkpoint, name suffix, pool overrides)``: the control rule
    comes from its own config or checkpoint, or else from the main config with the pool
    overrides (e.g. ``{"size": 0}`` for the unpooled rule).
    """
    _start(args)
    if args.config is None and args.checkpoint is None:
        raise ExperimentError(f"gnca experiment {experiment} needs --config FILE or --checkpoint")
    cfg = _config(args.config, args.set, args.data_dir)
    main = RuleSource(labels[0], cfg, args.checkpoint, args.data_dir)
    if skip_control or control is None:
        return cfg, main, None
    config_file, checkpoint, suffix, pool = control
    other = _config(config_file, args.set, args.data_dir)
    if other is None and cfg is not None and checkpoint is None:
        other = _derived(cfg, suffix, **pool)
    if other is None and checkpoint is None:
        raise ExperimentError(control_error)
    return cfg, main, RuleSource(labels[1], other, checkpoint, args.data_dir)


# ---------------------------------------------------------------------- --seeds
Command = Callable[[argparse.Namespace], int]


def _per_seed(experiment: str) -> Callable[[Command], Command]:
    """Run the command once per ``--seeds`` seed, then summarise the seeds; without
    ``--seeds`` the command runs as it is."""

    def wrap(cmd: Command) -> Command:
        @functools.wraps(cmd)
        def run(args: argparse.Namespace) -> int:
            if getattr(args, "seeds", None) is None:
                if getattr(args, "target", None):
                    raise ExperimentError("--target is a claim over seeds: it needs --seeds")
                return cmd(args)
            return _run_seeds(args, experiment, cmd)

        return run

    return wrap


def _seeds_out(args: argparse.Namespace, experiment: str) -> Path:
    """The folder of a ``--seeds`` run (``seed-S`` folders and ``seeds.*`` go in it)."""
    if args.out:
        return Path(args.out)
    if experiment == "transfer":
        return Path("results") / "transfer" / args.dataset
    cfg = _config(args.config, args.set, args.data_dir)
    assert cfg is not None
    return Path("results") / experiment / cfg.name


def _run_seeds(args: argparse.Namespace, experiment: str, cmd: Command) -> int:
    """``--seeds``: meta-train and run once per seed in ``OUT/seed-S`` (``train.seed=S`` on
    every config), then write ``seeds.md``, ``seeds.csv``, ``seeds.json`` and ``seeds.png``."""
    from gnca.experiments.seeds import add_targets, headline, summarize_seeds

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
        code = cmd(one)
        if code:
            return code
        if i == 0 and targets:  # an unknown --target metric stops before the next seed
            import json

            first = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
            add_targets(headline(first), targets)
        print()
    result = summarize_seeds(experiment, out, seeds, targets)
    print((out / "seeds.md").read_text().rstrip())
    print(
        f"\nfigure:  {result['figure']}\nresults: {out}/seeds.{{md,csv,json}} "
        f"({result['seconds']:.1f} s over {len(seeds)} seeds on "
        f"{result['environment']['cpu_model']})"
    )
    return 0


# ---------------------------------------------------------------------- stability
@_per_seed("stability")
def cmd_stability(args: argparse.Namespace) -> int:
    from gnca.experiments.stability import run_stability

    cfg, pooled, unpooled = _rules(
        args,
        "stability",
        ("pooled", "unpooled"),
        control=(args.nopool_config, args.nopool_checkpoint, "nopool", {"size": 0}),
        skip_control=args.pooled_only,
        control_error="the unpooled rule needs --nopool-config, --nopool-checkpoint or --config "
        "(or pass --pooled-only)",
    )
    out = _out(args, "stability", cfg, args.checkpoint)
    summary = run_stability(
        pooled,
        unpooled,
        out,
        num=args.num,
        horizon_mult=args.horizon_mult,
        tolerance=args.tolerance,
        seed=args.seed,
        device=_device(args, cfg),
        retrain=args.retrain,
        progress=not args.no_progress,
    )
    _report(summary, out, "stability.md", "stability.png")
    return 0


# ---------------------------------------------------------------------- robustness
@_per_seed("robustness")
def cmd_robustness(args: argparse.Namespace) -> int:
    from gnca.experiments.robustness import run_robustness

    cfg, damaged, undamaged = _rules(
        args,
        "robustness",
        ("damage", "no-damage"),
        control=(args.nodamage_config, args.nodamage_checkpoint, "nodamage", {"damage": 0}),
        skip_control=args.damage_only,
        control_error="the rule without damage needs --nodamage-config, --nodamage-checkpoint "
        "or --config (or pass --damage-only)",
    )
    out = _out(args, "robustness", cfg, args.checkpoint)
    summary = run_robustness(
        damaged,
        undamaged,
        out,
        num=args.num,
        zero_outs=args.zero_outs,
        every=args.every,
        fraction=args.fraction,
        tail=args.tail,
        search_mult=args.search_mult,
        seed=args.seed,
        device=_device(args, cfg),
        retrain=args.retrain,
        progress=not args.no_progress,
    )
    _report(summary, out, "robustness.md", "robustness.png")
    return 0


# ---------------------------------------------------------------------- generalization
@_per_seed("generalization")
def cmd_generalization(args: argparse.Namespace) -> int:
    from gnca.experiments.adam_baseline import AdamSettings, parse_lrs
    from gnca.experiments.generalization import run_generalization

    adam = None
    if args.adam:
        adam = AdamSettings(
            examples=args.adam_examples,
            batch=args.adam_batch,
            lrs=parse_lrs(args.adam_lrs),
            nets=args.adam_nets,
        )
    cfg, rule, _ = _rules(args, "generalization", ("rule", ""))
    out = _out(args, "generalization", cfg, args.checkpoint)
    summary = run_generalization(
        rule,
        out,
        depths=_parse_ints(args.depths, "--depths"),
        widths=_parse_ints(args.widths, "--widths"),
        num=args.num,
        steps=args.steps,
        seed=args.seed,
        device=_device(args, cfg),
        chunk=args.chunk,
        retrain=args.retrain,
        progress=not args.no_progress,
        adam=adam,
    )
    _report(summary, out, "generalization.md", "generalization.png")
    return 0


# ---------------------------------------------------------------------- learning
@_per_seed("learning")
def cmd_learning(args: argparse.Namespace) -> int:
    from gnca.experiments.learning import run_learning

    cfg, rule, control = _rules(
        args,
        "learning",
        ("senses", "data-free"),
        control=(args.datafree_config, args.datafree_checkpoint, "", {}),
        skip_control=args.datafree_config is None and args.datafree_checkpoint is None,
    )
    out = _out(args, "learning", cfg, args.checkpoint)
    summary = run_learning(
        rule,
        control,
        out,
        num=args.num,
        horizon_mult=args.horizon_mult,
        seed=args.seed,
        device=_device(args, cfg),
        retrain=args.retrain,
        progress=not args.no_progress,
    )
    _report(summary, out, "learning.md", "learning.png")
    return 0


@_per_seed("transfer")
def cmd_transfer(args: argparse.Namespace) -> int:
    from gnca.archspec import parse_arch
    from gnca.build import make_dataset, make_task
    from gnca.config import DataConfig
    from gnca.experiments.learning import run_transfer

    cfg, rule, _ = _rules(args, "transfer", ("senses", ""))
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
        device=_device(args, cfg),
        progress=not args.no_progress,
    )
    print((out / "transfer.md").read_text().rstrip())
    print(f"\nresults: {out} ({_took(summary)})")
    return 0


# ---------------------------------------------------------------------- parser
def add_experiment_parser(
    subparsers: argparse._SubParsersAction,
    common: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """Register ``gnca experiment NAME`` for every experiment of :data:`EXPERIMENTS`."""
    names = ", ".join(EXPERIMENTS)
    exp = subparsers.add_parser(
        "experiment",
        help=f"reproduce the experiments: {names}",
        description=f"Reproduce the experiments ({names}); each writes tables, CSVs and a PNG.",
    )
    esub = exp.add_subparsers(dest="experiment", required=True)
    for add in EXPERIMENTS.values():
        add(esub, common)
    return exp


def _shared(
    sp: argparse.ArgumentParser,
    common: Callable[[argparse.ArgumentParser], None],
    ckpt_help: str,
) -> None:
    """Flags of every experiment: the rule, overrides, output, nets, seed, device."""
    sp.add_argument("--config", help="YAML config of the (main) rule to meta-train")
    sp.add_argument("--checkpoint", help=ckpt_help)
    sp.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides applied to every config of the experiment, e.g. train.steps=200",
    )
    sp.add_argument("--out", help="output folder (default results/<experiment>/<name>)")
    sp.add_argument("--num", type=int, default=100, help="nets grown per rule/architecture (100)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the grown nets (0)")
    sp.add_argument(
        "--seeds",
        default=None,
        metavar="N|S,S,...",
        help="meta-training seeds: N (seeds 0..N-1) or a list 0,3,7 (one seed S: 'S,'); one run "
        "per seed in OUT/seed-S with train.seed=S on every config, then OUT/seeds.{md,csv,json} "
        "and seeds.png: per-seed headline metrics, mean, std, worst seed, claims held by k of n "
        "seeds (default: one run, the configs' train.seed)",
    )
    sp.add_argument(
        "--target",
        action="append",
        default=None,
        metavar="METRIC>=VALUE",
        help="with --seeds: one more claim on a headline metric of seeds.md, e.g. "
        "'unseen_mean>=0.85' (repeatable)",
    )
    sp.add_argument("--device", default=None, help="cpu, cuda, ... (default: the config's)")
    sp.add_argument("--data-dir", default=None, help="data folder (MNIST), overrides configs")
    sp.add_argument("--retrain", action="store_true", help="meta-train again, replacing kept rules")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    common(sp)


def _add_stability(
    esub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    s = esub.add_parser(
        "stability",
        help="loss far past the training horizon, pooled vs unpooled rule (Iris)",
        description="Grow nets for horizon-mult x k_max rule steps; report epochs to train and "
        "epochs within 10%% of the minimum training loss, pooled vs unpooled rule.",
    )
    _shared(s, common, "checkpoint of the pooled rule (instead of meta-training --config)")
    s.add_argument(
        "--nopool-config", help="config of the unpooled rule (default: --config, pool.size=0)"
    )
    s.add_argument("--nopool-checkpoint", help="checkpoint of the unpooled rule")
    s.add_argument("--pooled-only", action="store_true", help="skip the unpooled rule")
    s.add_argument(
        "--horizon-mult", type=int, default=50, help="rule steps grown, in units of k_max (50)"
    )
    s.add_argument(
        "--tolerance", type=float, default=0.1, help="band above the minimum loss (0.1 = 10%%)"
    )
    s.set_defaults(func=cmd_stability)


def _add_robustness(
    esub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    r = esub.add_parser(
        "robustness",
        help="20 zero-outs over 100 rule steps, rule trained with vs without damage (Iris)",
        description="After grown nets reach their best accuracy, zero out one layer and 30%% "
        "of the other weights every 5 steps, 20 times; report the recovery.",
    )
    _shared(r, common, "checkpoint of the damage-trained rule (instead of meta-training --config)")
    r.add_argument(
        "--nodamage-config",
        help="config of the rule trained without damage (default: --config, pool.damage=0)",
    )
    r.add_argument("--nodamage-checkpoint", help="checkpoint of the rule trained without damage")
    r.add_argument("--damage-only", action="store_true", help="skip the rule without damage")
    r.add_argument("--zero-outs", type=int, default=20, help="number of zero-outs (20)")
    r.add_argument("--every", type=int, default=5, help="rule steps between zero-outs (5)")
    r.add_argument(
        "--fraction", type=float, default=0.3, help="share of other weights zeroed (0.3)"
    )
    r.add_argument("--tail", type=int, default=20, help="steps grown after the last window (20)")
    r.add_argument(
        "--search-mult",
        type=int,
        default=2,
        help="the best-accuracy step is searched in 1..search-mult x k_max (2)",
    )
    r.set_defaults(func=cmd_robustness)


def _add_generalization(
    esub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    from gnca.cliargs import positive_int
    from gnca.experiments.adam_baseline import lr_list

    g = esub.add_parser(
        "generalization",
        help="heatmap of grown-net accuracy over MLP depths x widths (MNIST, Iris)",
        description="Grow nets of every MLP of a grid of depths (hidden layers) and widths; "
        "heatmap of mean test accuracy, training architectures outlined in red.",
    )
    _shared(g, common, "checkpoint of the rule (instead of meta-training --config)")
    g.add_argument("--depths", default="1,2,3", help="hidden layers per grid row (1,2,3)")
    g.add_argument("--widths", default="16,32,64,128", help="hidden widths (16,32,64,128)")
    g.add_argument("--steps", type=int, default=None, help="rule steps (default: k_max)")
    g.add_argument("--chunk", type=int, default=None, help="nets grown at once (default: auto)")
    g.add_argument(
        "--adam",
        action="store_true",
        help="add an Adam baseline per architecture (same split and task-net conventions; "
        "cached in <out>/adam): CSV columns, grids of Adam and grown minus Adam, a second panel",
    )
    g.add_argument(
        "--adam-examples",
        type=positive_int,
        default=25_600,
        help="Adam's budget: training examples seen per net (25600 = 100 steps of 256)",
    )
    g.add_argument(
        "--adam-batch", type=positive_int, default=256, help="examples per Adam step (256)"
    )
    g.add_argument(
        "--adam-lrs",
        type=lr_list,
        default="1e-3,3e-3,1e-2,3e-2",
        help="Adam learning rates tried, the best on the last fifth of the training split "
        "(1e-3,3e-3,1e-2,3e-2)",
    )
    g.add_argument(
        "--adam-nets", type=positive_int, default=10, help="nets Adam trains per architecture (10)"
    )
    g.set_defaults(func=cmd_generalization)


def _add_learning(
    esub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    lp = esub.add_parser(
        "learning",
        help="a rule that reads data, on label permutations never seen in meta-training",
        description="Grow nets with a data-reading rule (rule.senses) on held-out label "
        "permutations and on the plain labels; compare with a data-free rule, with the grown "
        "nets' hidden layers reset, and with Adam (output layer only / all layers) at equal "
        "examples seen; accuracy far past the horizon.",
    )
    _shared(lp, common, "checkpoint of the data-reading rule (instead of meta-training --config)")
    lp.add_argument("--datafree-config", help="config of the data-free control rule")
    lp.add_argument("--datafree-checkpoint", help="checkpoint of the data-free control rule")
    lp.add_argument(
        "--horizon-mult", type=int, default=10, help="rule steps grown, in units of k_max (10)"
    )
    lp.set_defaults(func=cmd_learning)


def _add_transfer(
    esub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    tp = esub.add_parser(
        "transfer",
        help="grow with a data-reading rule on a dataset it never met, against Adam",
        description="Grow nets on --dataset (not used in meta-training) for each --arch; "
        "compare with Adam at equal examples seen and with the majority class.",
    )
    _shared(tp, common, "checkpoint of the data-reading rule (instead of meta-training --config)")
    tp.add_argument("--dataset", required=True, help="iris, wine, digits, mnist or csv")
    tp.add_argument("--csv-path", default=None, help="the CSV file of --dataset csv")
    tp.add_argument("--split-seed", type=int, default=0, help="seed of its train/test split (0)")
    tp.add_argument("--arch", action="append", help="architecture(s) on that data, e.g. h:32")
    tp.add_argument(
        "--horizon-mult", type=int, default=10, help="rule steps grown, in units of k_max (10)"
    )
    tp.set_defaults(func=cmd_transfer)


#: Every ``gnca experiment`` subcommand, by name, with the function that registers its parser;
#: ``gnca --help`` and ``gnca experiment --help`` list them in this order.
EXPERIMENTS: dict[
    str,
    Callable[[argparse._SubParsersAction, Callable[[argparse.ArgumentParser], None]], None],
] = {
    "stability": _add_stability,
    "robustness": _add_robustness,
    "generalization": _add_generalization,
    "learning": _add_learning,
    "transfer": _add_transfer,
}
