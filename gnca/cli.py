"""The ``gnca`` command line: ``train``, ``grow``, ``eval``, ``export``, ``experiment`` and
``data download``.

Every failure the user can cause (a bad config, a missing file, a corrupt checkpoint) ends with
one line ``gnca: error: ...`` and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from gnca.architecture import Architecture
from gnca.archspec import HIDDEN_PREFIX, CLIError, mlp_sizes, parse_arch  # noqa: E402,F401
from gnca.cliargs import (
    Parser,
    add_set_flag,
    http_url,
    int_list,
    nonneg_int,
    positive_int,
    seconds,
    seed,
)
from gnca.heap import keep_heap
from gnca.layers import LayerNet


def _set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


_DEFAULT_THREADS = torch.get_num_threads()

#: Below this many weights per (meta-)step, CPU work runs on one thread by default: the
#: tensors are so small that thread synchronisation costs more than it saves (on a busy 2-core
#: machine, Iris meta-steps took 0.11 s with one thread and 0.49 s with two; docs/cli.md).
SMALL_STEP_WEIGHTS = 100_000


def _auto_threads(args: argparse.Namespace, device: torch.device, per_step: int) -> None:
    """One CPU thread when ``--threads`` is not given and a step holds ``per_step`` weights
    below :data:`SMALL_STEP_WEIGHTS`."""
    if args.threads is None and device.type == "cpu" and per_step < SMALL_STEP_WEIGHTS:
        torch.set_num_threads(1)


def _fmt_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])


def _eval_table(results: dict) -> str:
    rows = []
    for arch, per in results.items():
        for steps, s in per.items():
            rows.append([arch, steps, f"{s['mean']:.4f}", f"{s['min']:.4f}", f"{s['max']:.4f}"])
    return _fmt_table(rows, ["architecture", "rule steps", "mean acc", "min", "max"])


# ---------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from gnca import distributed
    from gnca.trainer import MetaTrainer

    _set_threads(args.threads)
    if getattr(args, "nproc", None) is not None or (
        distributed.env_requests_distributed() and not distributed.is_initialized()
    ):
        return _train_distributed(args)
    dist_run = distributed.is_initialized()
    trainer_cls = distributed.DistributedMetaTrainer if dist_run else MetaTrainer
    main = distributed.context().is_main  # only rank 0 prints and writes files
    trainer, run_dir = _make_trainer(args, trainer_cls, main)
    # the unseen architectures of the final table, built now: a bad one fails before training
    unseen = [trainer.task.mlp(s) for s in trainer.cfg.train.eval_architectures]
    unseen += _unseen_layers(trainer)
    ckpt = run_dir / "last.pt"
    if main:
        _announce(trainer, run_dir, dist_run)
    _auto_threads(
        args,
        trainer.device,
        sum(a.num_weights for a in trainer.archs) * trainer.cfg.train.batch_size,
    )
    from gnca.interrupt import StopOnSignal

    # SIGINT/SIGTERM finish the meta-step in progress and save it (gnca/interrupt.py); torchrun
    # forwards the signal to its ranks a second time, so only a single process force-quits
    stop = StopOnSignal(repeat_forces=not dist_run, notice=main)
    try:
        with stop:
            trainer.train(run_dir, progress=not args.no_progress, log_lines=True, stop=stop)
    except RuntimeError as err:
        lost = trainer.failure_message(err, ckpt) if dist_run else None
        if lost is None:
            raise
        raise CLIError(lost) from None
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, nothing saved
        return _interrupted(trainer, run_dir, main, saved=False)
    if stop.received is not None:
        return _interrupted(trainer, run_dir, main, saved=True, signum=stop.received)
    if main:
        try:
            _report_training(trainer, run_dir, unseen, progress=not args.no_progress)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted during the final evaluation; {ckpt} (meta-step {trainer.step}) is "
                f"complete; continue with: gnca train --resume --out {run_dir} (it evaluates "
                "again)",
                file=sys.stderr,
            )
            return 130
    return 0


def _train_distributed(args: argparse.Namespace) -> int:
    """``--nproc N``: start N processes through torchrun; in a process torchrun started: join
    the process group and run ``gnca train`` as one rank of it."""
    from gnca import distributed
    from gnca.config import load_config
    from gnca.tracking import check_wandb

    if getattr(args, "nproc", None) is not None:
        if args.config and args.nproc >= 1:  # fail here once, not in every process
            launch_cfg = load_config(args.config, args.set)
            distributed.check_world_size(launch_cfg, args.nproc)
            check_wandb(launch_cfg.train)
        return distributed.launch(args.nproc, distributed.without_nproc(args.argv))
    distributed.init_distributed(
        args.rdzv_timeout or distributed.DEFAULT_RDZV_TIMEOUT,
        args.dist_timeout or distributed.DEFAULT_TIMEOUT,
    )
    try:  # the same command again, now as one rank of the process group
        return cmd_train(args)
    finally:
        distributed.shutdown()


def _make_trainer(args: argparse.Namespace, trainer_cls, main: bool):
    """The trainer of ``--config`` (a new run) or of the run in the run directory
    (``--resume``), and the run directory."""
    from gnca.config import load_config
    from gnca.tracking import check_wandb

    if args.config is None and not args.resume:
        raise CLIError("gnca train needs --config FILE (or --resume with --out RUN_DIR)")
    cfg = load_config(args.config, args.set) if args.config else None
    if cfg is not None and main:  # only the main process logs: it alone needs wandb
        check_wandb(cfg.train)
    name = cfg.name if cfg else None
    run_dir = Path(args.out or (cfg.out_dir if cfg and cfg.out_dir else f"runs/{name}"))
    ckpt = run_dir / "last.pt"
    if args.resume:
        if not ckpt.is_file():
            raise CLIError(f"cannot resume: no checkpoint at {ckpt}")
        trainer = trainer_cls.from_checkpoint(ckpt, cfg=cfg)
        if main:
            check_wandb(trainer.cfg.train)
            print(
                f"resuming {ckpt} at meta-step {trainer.step}/{trainer.cfg.train.steps}",
                file=sys.stderr,
            )
        return trainer, run_dir
    if ckpt.exists() and not args.overwrite:
        raise CLIError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
            f"replace it, or --out DIR for a new one"
        )
    trainer = trainer_cls.from_config(cfg)
    if main and args.overwrite and run_dir.exists():
        for stale in ("metrics.csv", "summary.json", "last.pt"):
            (run_dir / stale).unlink(missing_ok=True)
    return trainer, run_dir


def _announce(trainer, run_dir: Path, dist_run: bool) -> None:
    """Make the run directory, save the configuration there and say what is trained."""
    from gnca import distributed
    from gnca.config import save_config

    cfg = trainer.cfg
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    ranks = f", {distributed.context().world_size} processes" if dist_run else ""
    print(
        f"meta-training {trainer.rule!r} on {cfg.data.name}, architectures "
        f"{', '.join(a.describe() for a in trainer.archs)}, device {trainer.device}{ranks}; "
        f"run directory {run_dir}",
        file=sys.stderr,
    )


def _interrupted(
    trainer, run_dir: Path, main: bool, *, saved: bool, signum: int = signal.SIGINT
) -> int:
    """Say where an interrupted run stands and how to continue it; the exit status of the
    signal (130 for Ctrl-C, 143 for SIGTERM)."""
    from gnca.interrupt import exit_status

    ckpt = run_dir / "last.pt"
    if main:
        if saved:
            where = f"stopped after meta-step {trainer.step}; checkpoint saved to {ckpt}"
        elif trainer.saved_step is None:
            where = f"interrupted at meta-step {trainer.step}; no checkpoint was written yet"
        else:
            where = (
                f"interrupted at meta-step {trainer.step} without saving; last checkpoint: "
                f"{ckpt} (meta-step {trainer.saved_step})"
            )
        more = f"; continue with: gnca train --resume --out {run_dir}"
        if not saved and trainer.saved_step is None:
            more = ""
        print(f"\n{where}{more}", file=sys.stderr)
    return exit_status(signum)


def _unseen_layers(trainer) -> list:
    """The layer nets of ``train.eval_layers`` for the trainer's task."""
    from gnca.build import make_layer_nets

    cfg = trainer.cfg
    return make_layer_nets(cfg.train.eval_layers, cfg.task, trainer.task, "train.eval_layers")


def _report_training(trainer, run_dir: Path, unseen: list, progress: bool = True) -> None:
    """Evaluate the trained rule, write ``summary.json`` and print the accuracy table."""
    t = trainer.cfg.train
    n = len(trainer.archs) + len(unseen)
    which = "the architecture" if n == 1 else f"each of {n} architectures"
    print(
        f"evaluating: {t.eval_nets} grown nets of {which}, {10 * t.k_max} rule steps",
        file=sys.stderr,
        flush=True,
    )
    results = trainer.evaluate(unseen=unseen, progress=progress)
    summary = {
        "run_dir": str(run_dir),
        "meta_steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "test_accuracy": results,
    }
    from gnca.evaluation import round_floats

    (run_dir / "summary.json").write_text(json.dumps(round_floats(summary), indent=2))
    print(f"\nTest accuracy of {trainer.cfg.train.eval_nets} grown nets per architecture:")
    print(_eval_table(results))
    print(f"\ncheckpoint: {run_dir / 'last.pt'}\nsummary:    {run_dir / 'summary.json'}")


# ---------------------------------------------------------------------- grow / eval / export
def _load(args: argparse.Namespace):
    """The checkpoint of ``--checkpoint`` as a :class:`gnca.build.TrainedRule` (data loaded,
    ``--data-dir``, ``--device`` and ``--set data.KEY=VALUE`` applied)."""
    from gnca.build import rule_from_checkpoint, trained_from
    from gnca.checkpoint import load_checkpoint
    from gnca.config import apply_overrides, config_from_dict, config_to_dict

    d = load_checkpoint(args.checkpoint)
    rule, cfg = rule_from_checkpoint(d, args.checkpoint)
    data_set = list(getattr(args, "set", None) or [])
    bad = [s for s in data_set if not s.startswith("data.")]
    if bad:
        raise CLIError(f"--set takes data.KEY=VALUE only here (the data to grow on), got {bad[0]}")
    if data_set:
        raw = apply_overrides(config_to_dict(cfg), data_set)
        if raw["data"]["name"] != cfg.data.name:  # growing on one dataset: the extra ones of
            raw["data"]["also"] = []  # meta-training (data.also) no longer apply
        new = config_from_dict(raw)
        if new.data != cfg.data and not rule.senses:
            raise CLIError(
                f"this rule reads no data (rule.senses is empty): it regrows the nets it was "
                f"meta-trained for on {cfg.data.name} and cannot learn {new.data.name}; "
                f"meta-train a rule with rule.senses to grow on other data"
            )
        if new.data.name != cfg.data.name and not args.arch:
            raise CLIError(
                f"growing on {new.data.name} instead of {cfg.data.name}: pass --arch for its "
                f"features and classes (e.g. h:16 for one hidden layer of 16)"
            )
        cfg = new
    return trained_from(
        rule,
        cfg,
        device=args.device,
        data_dir=getattr(args, "data_dir", None),
        checkpoint=Path(args.checkpoint),
        meta_steps=int(d["step"]) if "step" in d else None,
    )


def _threads_for(args: argparse.Namespace, device: torch.device, arch: Architecture, num: int):
    """Without ``--threads``: the CPU threads for growing ``num`` nets of ``arch`` (one for small
    nets, torch's default otherwise), decided per architecture."""
    if args.threads is None:
        torch.set_num_threads(_DEFAULT_THREADS)
    _auto_threads(args, device, arch.num_weights * num)


def _check_memory(args, trained, archs: Sequence[Architecture], num: int, tasks=None) -> None:
    """Before anything grows: refuse in one line when ``num`` nets of one of ``archs`` (grown
    for ``tasks``, default the rule's own) need more memory than the device has
    (:mod:`gnca.memory`); say the estimate on stderr when it is 1 GiB or more."""
    from gnca.memory import GIB, check_grow_memory, human_bytes

    sense_rows = trained.cfg.rule.sense_batch if trained.rule.senses else 0
    for arch, task in zip(archs, tasks or [trained.task] * len(archs), strict=True):
        data = task.data
        rows = (data.X_test if args.split == "test" else data.X_train).shape[0]
        need = check_grow_memory(
            arch, num, trained.rule, device=trained.device, test_rows=rows, sense_rows=sense_rows
        )
        if need >= GIB:
            print(
                f"growing {num:,} nets of {arch.describe()}: about {human_bytes(need)} of memory",
                file=sys.stderr,
                flush=True,
            )


def _step_bar(args: argparse.Namespace, total: int, desc: str):
    """A progress bar over rule steps on stderr, shown once growing has taken a second (none
    with ``--no-progress``); it disappears when closed."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="step", delay=1.0, leave=False, disable=args.no_progress
    )


def _grow_for(args, trained, arch: Architecture, steps: int, record_at):
    """Grow ``--num`` nets of ``arch`` with the loaded rule, recording ``--split`` accuracy,
    with a progress bar over the rule steps."""
    from gnca.grow import grow

    device = trained.device
    _threads_for(args, device, arch, args.num)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with _step_bar(args, steps, f"growing {args.num:,} nets of {arch.describe()}") as bar:
        return grow(
            trained.rule,
            arch,
            args.num,
            steps,
            trained.init,
            device=device,
            generator=gen,
            metric=trained.task.metric(args.split, device),
            record_at=record_at,
            senses=trained.reader(args.seed),
            progress=lambda _: bar.update(1),
        )


def _warn_fixed_seed(trained, archs: list[Architecture]) -> None:
    """One line on stderr for each architecture a fixed-seed rule was not trained on."""
    if trained.init.init != "fixed":
        return
    known = {tuple(a) for a in trained.cfg.task.architectures}
    for arch in archs:
        if tuple(arch.mlp_sizes or ()) not in known:
            trained_on = ", ".join("-".join(map(str, a)) for a in trained.cfg.task.architectures)
            print(
                f"warning: this rule grows from one fixed seed net (task.init: fixed), which "
                f"exists only for {trained_on}; {arch.describe()} starts from a seed it never "
                f"saw and will not work as well: meta-train with task.init: codes on several "
                f"architectures (configs/iris.yaml) to grow others",
                file=sys.stderr,
            )


def _archs(args, trained) -> list[Architecture]:
    archs = _parse_archs(args, trained)
    _warn_fixed_seed(trained, archs)
    return archs


def _parse_archs(args, trained) -> list[Architecture]:
    cfg, data = trained.cfg, trained.task.data
    specs = args.arch or ["-".join(map(str, a)) for a in cfg.task.architectures] + list(
        cfg.task.layers
    )
    return [
        parse_arch(
            s,
            data.n_features,
            data.n_classes,
            cfg.task.bias,
            data.image_shape,
            dataset=data.name,
            activation=cfg.task.activation,
        )  # fmt: skip
        for s in specs
    ]


def cmd_grow(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    trained = _load(args)
    cfg = trained.cfg
    steps = args.steps or cfg.train.k_max
    every = args.curve
    record = list(range(0, steps + 1, every)) if every else []
    record = sorted(set(record) | {steps})
    out = {
        "checkpoint": str(args.checkpoint),
        "rule": repr(trained.rule),
        "split": args.split,
        "num": args.num,
        "steps": steps,
        "architectures": {},
    }
    archs = _archs(args, trained)
    _check_memory(args, trained, archs, args.num)
    for arch in archs:
        res = _grow_for(args, trained, arch, steps, record)
        assert res.curve is not None
        final = res.curve[-1]
        entry = {
            "mean": float(final.mean()),
            "min": float(final.min()),
            "max": float(final.max()),
            "std": float(final.std()) if final.numel() > 1 else 0.0,
        }
        if every:
            entry["curve"] = {
                str(s): float(res.curve[i].mean()) for i, s in enumerate(res.curve_steps)
            }
        out["architectures"][arch.describe()] = entry
        del res  # the next architecture grows without this one's nets in memory
    if args.json:
        from gnca.evaluation import round_floats

        print(json.dumps(round_floats(out), indent=2))
        return 0
    rows = [
        [a, str(steps), f"{e['mean']:.4f}", f"{e['min']:.4f}", f"{e['max']:.4f}"]
        for a, e in out["architectures"].items()
    ]
    print(f"rule: {out['rule']}")
    print(f"{args.num} nets grown per architecture, {args.split} accuracy on {cfg.data.name}:")
    print(_fmt_table(rows, ["architecture", "rule steps", "mean acc", "min", "max"]))
    for a, e in out["architectures"].items():
        if "curve" in e:
            print(f"\n{a}: mean accuracy by rule step")
            print(
                _fmt_table([[s, f"{v:.4f}"] for s, v in e["curve"].items()], ["step", "mean acc"])
            )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Grow the nets of the table that ended ``gnca train`` again (same architectures, number
    of nets, seeds and horizons, so the same numbers), or those of ``--arch``, ``--num``,
    ``--seed`` and ``--horizons``."""
    from gnca.data import DataError
    from gnca.evaluation import (
        EVAL_SEED_OFFSET,
        accuracy_table,
        round_floats,
        table_rows,
        training_rows,
    )

    _set_threads(args.threads)
    trained = _load(args)
    cfg = trained.cfg
    k = cfg.train.k_max
    horizons = [int(x) for x in args.horizons.split(",")] if args.horizons else [k, 10 * k]
    num = args.num or cfg.train.eval_nets
    seed = cfg.train.seed + EVAL_SEED_OFFSET if args.seed is None else args.seed
    if args.arch:
        archs = _archs(args, trained)
        rows = table_rows(trained.task, archs, [trained.task] * len(archs))
    else:
        try:
            rows = training_rows(trained)
        except ValueError as err:  # the training MLPs do not fit the data of --set data.*
            if isinstance(err, DataError):
                raise
            raise CLIError(f"{err}; pass --arch for the data grown on") from None
    _check_memory(args, trained, [r.arch for r in rows], num, [r.task for r in rows])
    with _step_bar(args, len(rows) * max(horizons), f"growing {num:,} nets per row") as bar:
        results = accuracy_table(
            trained,
            rows,
            num=num,
            horizons=horizons,
            split=args.split,
            seed=seed,
            sense_seed=args.seed,  # None: the table's own
            before=lambda arch: _threads_for(args, trained.device, arch, num),
            progress=lambda _: bar.update(1),
        )
    if args.json:
        out = {
            "checkpoint": str(args.checkpoint),
            "split": args.split,
            "num": num,
            "seed": seed,
            "accuracy": results,
        }
        print(json.dumps(round_floats(out), indent=2))
    else:
        print(f"{args.split} accuracy of {num} grown nets per architecture on {cfg.data.name}:")
        print(_eval_table(results))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    trained = _load(args)
    cfg = trained.cfg
    archs = _archs(args, trained)
    if len(archs) != 1:
        raise CLIError("gnca export takes exactly one --arch")
    steps = args.steps or cfg.train.k_max
    _check_memory(args, trained, archs, args.num)
    res = _grow_for(args, trained, archs[0], steps, [steps])
    if isinstance(archs[0], LayerNet):
        return _export_layer_nets(args, archs[0], res, steps)
    nets = trained.task.export(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    nets.save(str(tmp))
    os.replace(tmp, out)
    module_file = out.parent / "grown_net.py"
    shutil.copyfile(Path(__file__).with_name("export.py"), module_file)
    assert res.curve is not None
    print(
        f"exported {nets.num_nets} grown nets ({archs[0].describe()}, {steps} rule steps, mean "
        f"{args.split} accuracy {float(res.curve[-1].mean()):.4f}) to {out}\n"
        f"load them without gnca: from grown_net import GrownNets; "
        f"nets = GrownNets.load({str(out)!r})  (module: {module_file})"
    )
    return 0


def _export_layer_nets(args: argparse.Namespace, net, res, steps: int) -> int:
    """``gnca export`` of layer nets: one state dict per grown net, for the module's own class
    (``torch.load(out, weights_only=True)["state_dicts"][i]``)."""
    from gnca.checkpoint import save_checkpoint

    out = Path(args.out)
    sds = net.state_dicts(res.w)
    save_checkpoint(out, {"arch": args.arch[0], "describe": net.describe(), "rule_steps": steps,
                          "state_dicts": sds})  # fmt: skip
    assert res.curve is not None
    print(
        f"exported {len(sds)} grown nets ({net.describe()}, {steps} rule steps, mean "
        f"{args.split} accuracy {float(res.curve[-1].mean()):.4f}) to {out}\n"
        f"load one into your module: m.load_state_dict(torch.load({str(out)!r}, "
        f"weights_only=True)['state_dicts'][0])"
    )
    return 0


# ---------------------------------------------------------------------- data download
def cmd_data_download(args: argparse.Namespace) -> int:
    """``gnca data download mnist DIR``: fetch and verify the MNIST files, say how to use them."""
    import shlex

    from gnca import download

    folder = Path(args.dir).expanduser().resolve()
    try:
        fetched = download.download_mnist(folder, args.mirror, timeout=args.timeout)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the files completed so far are kept in {folder} (the one in "
            f"progress is deleted): run the same command again for the rest",
            file=sys.stderr,
        )
        return 130
    quoted = shlex.quote(str(folder))
    print(
        f"MNIST is in {folder} ({len(download.MNIST_FILES)} files, SHA-256 verified; "
        f"{len(fetched)} downloaded now).\n"
        f"Use it with:  export GNCA_DATA={quoted}\n"
        f"(or pass --data-dir {quoted} to grow/eval/export/experiment, or set data.data_dir "
        f"in a config)"
    )
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``gnca`` parser: one helper per subcommand, registered in the order of ``--help``."""
    p = Parser(
        prog="gnca",
        description="Meta-Neural Cellular Automata: grow task networks with a learned local rule.",
    )
    _debug(p)
    sub = p.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_grow(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_data(sub)
    from gnca.experiments.cli import add_experiment_parser

    add_experiment_parser(sub, _common)
    return p


def _debug(sp: argparse.ArgumentParser) -> None:
    """``--debug``: a traceback instead of the one-line error (see :func:`main`)."""
    sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _common(sp: argparse.ArgumentParser) -> None:
    """Flags of every subcommand: ``--debug`` and ``--threads``."""
    _debug(sp)
    sp.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="meta-train a local rule from a YAML config")
    t.add_argument("--config", help="YAML config file (e.g. configs/iris.yaml)")
    add_set_flag(t, "dotted overrides, e.g. train.steps=2000 rule.widths=[64,64]")
    t.add_argument("--out", help="run directory (default: runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        metavar="N",
        help="data-parallel training in N processes on this machine (started through torchrun)",
    )
    t.add_argument(
        "--rdzv-timeout",
        type=seconds,
        default=None,
        metavar="SEC",
        help="distributed runs: seconds for all processes to meet (default 30)",
    )
    t.add_argument(
        "--dist-timeout",
        type=seconds,
        default=None,
        metavar="SEC",
        help="distributed runs: seconds to wait for a slow process (default 1800)",
    )
    _common(t)
    t.set_defaults(func=cmd_train)


def _growing(
    sp: argparse.ArgumentParser, *, like_training: bool = False, steps: bool = False
) -> None:
    """Flags of the subcommands that grow nets from a checkpoint (grow, eval, export);
    ``like_training`` (eval): ``--num``, ``--seed`` and the architectures default to those of
    the table that ended ``gnca train``; ``steps`` (grow, export): ``--steps`` last."""
    sp.add_argument("--checkpoint", required=True, help="a checkpoint written by gnca train")
    archs, num, seed_ = "the training architectures", "100", "0"
    if like_training:
        archs += ", then the unseen train.eval_architectures"
        num, seed_ = "train.eval_nets", "the seeds of the table that ended gnca train"
    sp.add_argument(
        "--arch",
        action="append",
        help="an MLP's layer sizes from the features to the classes (4-32-3), its hidden "
        "widths only (h:32-16), edges.json (a DAG with the data's features as inputs and "
        "classes as outputs), a conv net (conv:8k5s2p2-16k5s2p2; r before a token for a "
        "residual layer: conv:8k3p1-r8k3p1, conv:fc32-rfc32) or FILE.py:CLASS; repeatable "
        f"(default: {archs})",
    )
    sp.add_argument(
        "--num",
        type=positive_int,
        default=None if like_training else 100,
        help=f"nets grown per architecture (default {num})",
    )
    sp.add_argument(
        "--split",
        choices=["test", "train"],
        default="test",
        help="the data split the grown nets' accuracy is measured on (default test)",
    )
    sp.add_argument(
        "--seed",
        type=seed,
        default=None if like_training else 0,
        help=f"seed of the grown nets (default {seed_})",
    )
    sp.add_argument("--device", default=None, help="cpu, cuda, ... (default: the config's)")
    sp.add_argument("--data-dir", default=None, help="data folder (MNIST), overrides the config")
    add_set_flag(
        sp,
        "grow on other data (rules with senses), e.g. data.name=wine or data.name=csv "
        "data.csv_path=FILE, with a matching --arch",
        metavar="data.KEY=VALUE",
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(sp)
    if steps:
        sp.add_argument(
            "--steps", type=positive_int, default=None, help="rule steps (default: train.k_max)"
        )


def _add_grow(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("grow", help="grow task nets with a trained rule and report accuracy")
    _growing(g, steps=True)
    g.add_argument(
        "--curve",
        type=nonneg_int,
        default=0,
        metavar="EVERY",
        help="also report accuracy every EVERY steps (0: only at the end)",
    )
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=cmd_grow)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on its dataset's test split",
        description="Grow nets with a checkpoint's rule and report their accuracy at each "
        "horizon. By default it grows what the table at the end of gnca train grew: "
        "train.eval_nets nets of each training architecture, then of each unseen "
        "train.eval_architectures, from the same seeds, at k_max and 10*k_max rule steps, so "
        "it prints the same numbers; --arch, --num, --seed and --horizons change that.",
    )
    _growing(e, like_training=True)
    e.add_argument(
        "--horizons",
        type=int_list(0),
        default=None,
        help="comma-separated rule steps >= 0 (default: k_max,10*k_max)",
    )
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_eval)


def _add_export(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="grow nets and save them as a plain PyTorch module")
    _growing(x, steps=True)
    x.add_argument("--out", required=True, help="output file, e.g. nets.pt")
    x.set_defaults(func=cmd_export)


def _add_data(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "data",
        help="get datasets: gnca data download mnist DIR",
        description="Get datasets. Nothing else in gnca ever downloads.",
    )
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser(
        "download",
        help="download the MNIST IDX files into DIR, checked against pinned SHA-256 sums",
        description="Download the four MNIST IDX files (gzipped) into DIR from public mirrors, "
        "each checked against its pinned SHA-256 (through pooch); files already present with the "
        "right checksum are kept, an interrupted file is fetched again from its start.",
    )
    dl.add_argument("dataset", choices=["mnist"], help="the dataset (mnist)")
    dl.add_argument("dir", metavar="DIR", help="destination folder (created if needed)")
    dl.add_argument(
        "--mirror",
        action="append",
        type=http_url,
        metavar="URL",
        help="download from URL (the files' folder) instead of the default mirrors; repeatable, "
        "tried in order",
    )
    dl.add_argument(
        "--timeout",
        type=seconds,
        default=30.0,
        metavar="SEC",
        help="seconds a silent connection is waited for (30)",
    )
    _debug(dl)
    dl.set_defaults(func=cmd_data_download)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0), or a parse error already printed as one line (2)
        return done.code if isinstance(done.code, int) else 2 if done.code else 0
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for gnca train --nproc
    keep_heap()  # reuse freed memory: fewer page faults per meta-step (gnca/heap.py)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C where a command has nothing to save
        if args.debug:
            raise
        print("\ngnca: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user, the traceback with --debug
        if args.debug:
            raise
        from gnca.checkpoint import CheckpointError
        from gnca.config import ConfigError
        from gnca.data import DataError
        from gnca.distributed import DistributedError
        from gnca.download import DownloadError
        from gnca.tracking import MissingDependencyError

        known = (
            CLIError,
            MissingDependencyError,
            DistributedError,
            DownloadError,
            ConfigError,
            DataError,
            CheckpointError,
            ValueError,
            MemoryError,
            OSError,
        )
        if isinstance(err, known):
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        else:
            msg = f"{type(err).__name__}: {err} (rerun with --debug for the traceback)"
        from gnca.distributed import error_prefix

        print(f"gnca: error: {error_prefix()}{msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
