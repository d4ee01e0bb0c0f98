"""What every ``gnca experiment NAME`` command shares: the flags they all take, and reading them.

An experiment module (:mod:`gnca.experiments.cli` lists them) adds its own flags after
:func:`add_shared_arguments` and, in its ``main(args)``, turns the shared ones into rules
(:func:`rule_sources`), an output folder (:func:`out_folder`) and a device (:func:`device_of`),
runs its protocol and prints the result (:func:`print_report`); :func:`run_and_report` does all
but the rules for a protocol that takes the shared flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gnca.cliargs import add_set_flag, positive_int, seed, seed_list, target
from gnca.config import Config, config_from_dict, config_to_dict, load_config
from gnca.experiments.common import ExperimentError, RuleSource


def add_shared_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """Flags of every experiment: the rule, overrides, output, nets, seeds, device."""
    parser.add_argument("--config", help="YAML config of the (main) rule to meta-train")
    parser.add_argument("--checkpoint", help=checkpoint_help)
    add_set_flag(
        parser, "overrides applied to every config of the experiment, e.g. train.steps=200"
    )
    parser.add_argument("--out", help="output folder (default results/<experiment>/<name>)")
    parser.add_argument(
        "--num", type=positive_int, default=100, help="nets grown per rule/architecture (100)"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the grown nets (0)")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        metavar="N|S,S,...",
        help="meta-training seeds: N (seeds 0..N-1) or a list 0,3,7 (one seed S: 'S,'); one run "
        "per seed in OUT/seed-S with train.seed=S on every config, then OUT/seeds.{md,csv,json} "
        "and seeds.png: per-seed headline metrics, mean, std, worst seed, claims held by k of n "
        "seeds (default: one run, the configs' train.seed)",
    )
    parser.add_argument(
        "--target",
        type=target,
        action="append",
        default=None,
        metavar="METRIC>=VALUE",
        help="with --seeds: one more claim on a headline metric of seeds.md, e.g. "
        "'unseen_mean>=0.85' (repeatable)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the config's)")
    parser.add_argument("--data-dir", default=None, help="data folder (MNIST), overrides configs")
    parser.add_argument(
        "--retrain", action="store_true", help="meta-train again, replacing kept rules"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_horizon_mult(parser: argparse.ArgumentParser, default: int) -> None:
    """``--horizon-mult``: how far the nets grow, in units of the training horizon."""
    parser.add_argument(
        "--horizon-mult",
        type=positive_int,
        default=default,
        help=f"rule steps grown, in units of k_max ({default})",
    )


def parse_ints(text: str, what: str) -> list[int]:
    """Comma-separated integers (``--depths 1,2,3``)."""
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ExperimentError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ExperimentError(f"{what} must list at least one integer")
    return values


def read_config(path: str | None, overrides: list[str], data_dir: str | None) -> Config | None:
    """The config file ``path`` with ``--set`` overrides and ``--data-dir`` (None without one)."""
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


def device_of(args: argparse.Namespace, cfg: Config | None) -> torch.device:
    """``--device``, else the config's ``train.device``, else the best available."""
    from gnca.device import resolve_device

    return resolve_device(args.device or (cfg.train.device if cfg else "auto"))


def out_folder(
    args: argparse.Namespace, experiment: str, cfg: Config | None, ckpt: str | None
) -> Path:
    """``--out``, else ``results/<experiment>/<config name or the checkpoint's folder>``."""
    if args.out:
        return Path(args.out)
    name = cfg.name if cfg is not None else Path(ckpt or "rule").resolve().parent.name
    return Path("results") / experiment / name


def run_and_report(
    args: argparse.Namespace,
    experiment: str,
    cfg: Config | None,
    run: Callable[..., dict],
    *rules: RuleSource | None,
    **options: Any,
) -> int:
    """``run(*rules, out, **options)`` with the shared flags (``--num``, ``--seed``, the device,
    ``--retrain``, ``--no-progress``) into :func:`out_folder`, then :func:`print_report` of its
    ``<experiment>.md`` and ``<experiment>.png``; returns 0, the command's exit status."""
    out = out_folder(args, experiment, cfg, args.checkpoint)
    summary = run(
        *rules,
        out,
        num=args.num,
        seed=args.seed,
        device=device_of(args, cfg),
        retrain=args.retrain,
        progress=not args.no_progress,
        **options,
    )
    print_report(summary, out, f"{experiment}.md", f"{experiment}.png")
    return 0


def print_report(summary: dict, out: Path, table: str, figure: str | None) -> None:
    """Print the Markdown table, the figure (if there is one) and the output folder of a
    finished run."""
    print((out / table).read_text().rstrip())
    shown = f"figure:  {out / figure}\n" if figure else ""
    print(f"\n{shown}results: {out} ({took(summary)})")


def took(summary: dict) -> str:
    """``12.3 s on <CPU model>`` of a summary."""
    return f"{summary['seconds']:.1f} s on {summary['environment']['cpu_model']}"


def rule_sources(
    args: argparse.Namespace,
    experiment: str,
    labels: tuple[str, str],
    *,
    control: tuple[str | None, str | None, str, dict[str, int]] | None = None,
    skip_control: bool = True,
    control_error: str = "",
) -> tuple[Config | None, RuleSource, RuleSource | None]:
    """The experiment's main rule and, unless ``skip_control``, the control rule it is
    compared with (after ``--threads`` took effect).

    ``control`` is ``(config file, checkpoint, name suffix, pool overrides)``: the control rule
    comes from its own config or checkpoint, or else from the main config with the pool
    overrides (e.g. ``{"size": 0}`` for the unpooled rule).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config is None and args.checkpoint is None:
        raise ExperimentError(f"gnca experiment {experiment} needs --config FILE or --checkpoint")
    cfg = read_config(args.config, args.set, args.data_dir)
    main = RuleSource(labels[0], cfg, args.checkpoint, args.data_dir)
    if skip_control or control is None:
        return cfg, main, None
    config_file, checkpoint, suffix, pool = control
    other = read_config(config_file, args.set, args.data_dir)
    if other is None and cfg is not None and checkpoint is None:
        other = _derived(cfg, suffix, **pool)
    if other is None and checkpoint is None:
        raise ExperimentError(control_error)
    return cfg, main, RuleSource(labels[1], other, checkpoint, args.data_dir)
