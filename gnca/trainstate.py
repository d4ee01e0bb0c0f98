"""What a training checkpoint (``last.pt``) holds, and how a trainer continues from it.

Everything a meta-step reads is saved at a meta-step boundary: the rule, Adam's state, the
pools (gathered from every rank of a data-parallel run), the meta-step counter, the loss's
running mean, the three generators of :class:`~gnca.objective.MetaObjective` and torch's global
one, the rolled-back count, the open logging window and the seconds spent. Restoring it and
running on gives the uninterrupted run bit for bit on the CPU, with the same or another number
of processes (a checkpoint's pools are split among the ranks that load it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from gnca.checkpoint import load_checkpoint
from gnca.config import Config, config_from_dict, config_to_dict
from gnca.pool import SamplePool

if TYPE_CHECKING:
    from gnca.trainer import MetaTrainer


def capture(trainer: MetaTrainer) -> dict | None:
    """The whole training state of ``trainer``; collective in a data-parallel run (the pools
    are gathered), where only the main process gets it (``None`` elsewhere)."""
    gather = trainer.comm.gather_to_main
    pools = [{k: gather(v) for k, v in p.state_dict().items()} for p in trainer.pools]
    if not trainer.comm.is_main:
        return None
    return {
        "config": config_to_dict(trainer.cfg),
        "rule_config": trainer.rule.config(),
        "rule": {k: v.cpu() for k, v in trainer.rule.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "pools": pools,
        "step": trainer.step,
        "loss_ema": trainer.loss_ema,
        "skipped_steps": trainer.skipped_steps,
        "log_window": [[loss, acc, bool(sk)] for loss, acc, sk in trainer.log_window],
        "train_time": {
            "seconds": trainer.train_seconds,
            "cpu_seconds": trainer.train_cpu_seconds,
        },
        "rng": {**trainer.objective.generators(), "torch": torch.get_rng_state()},
    }


def restore(trainer: MetaTrainer, d: dict) -> None:
    """Put the state ``d`` (:func:`capture`, from any number of processes) into ``trainer``,
    keeping this rank's part of the pools."""
    trainer.rule.load_state_dict(d["rule"])
    trainer.optimizer.load_state_dict(d["optimizer"])
    if len(d["pools"]) != len(trainer.pools):
        raise ValueError("the checkpoint's pools do not match the configuration")
    comm = trainer.comm
    trainer.objective.pools = [
        SamplePool.from_state_dict(p, trainer.device).part(comm.rank, comm.world)
        for p in d["pools"]
    ]
    trainer.step = int(d["step"])
    trainer.loss_ema = d["loss_ema"]
    # absent in checkpoints written before they were kept: the count restarts, and the first
    # row logged after the resume averages only the steps run since
    trainer.skipped_steps = int(d.get("skipped_steps", 0))
    trainer.log_window = [(float(a), float(b), bool(c)) for a, b, c in d.get("log_window", [])]
    spent = d.get("train_time", {})  # absent in checkpoints written before it was kept
    trainer.train_seconds = float(spent.get("seconds", 0.0))
    trainer.train_cpu_seconds = float(spent.get("cpu_seconds", 0.0))
    trainer.objective.set_generators(d["rng"])
    torch.set_rng_state(d["rng"]["torch"])
    comm.check_same(trainer.step, "the checkpoint's meta-step (is the run directory shared?)")
    comm.broadcast_(trainer.rule.state_dict().values())
    trainer.saved_step = trainer.step


def load_for_resume(path: str | os.PathLike, cfg: Config | None = None) -> tuple[dict, Config]:
    """The training checkpoint at ``path`` and the configuration to rebuild its trainer from:
    its own, or ``cfg`` when that differs from it in ``train.steps`` only (a finished run
    extended); any other difference is a one-line error naming the keys."""
    d = load_checkpoint(path)
    if "optimizer" not in d or "config" not in d:
        raise ValueError(f"{path} is a gnca checkpoint but not a training checkpoint")
    saved = config_from_dict(d["config"])
    if cfg is not None:
        a, b = config_to_dict(cfg), config_to_dict(saved)
        a["train"]["steps"] = b["train"]["steps"]
        diff = _dict_diff(a, b)
        if diff:
            raise ValueError(
                f"the config does not match the checkpoint {path}: {', '.join(diff[:5])} differ"
            )
        saved = cfg
    return d, saved


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out
