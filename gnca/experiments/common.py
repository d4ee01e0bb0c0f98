"""Shared pieces of the experiments: obtaining rules, tables, CSV and JSON output."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gnca.build import TrainedRule as BuiltRule
from gnca.build import load_trained, trained_from
from gnca.config import Config, config_to_dict
from gnca.data import Dataset


class ExperimentError(ValueError):
    """A user-facing experiment error (bad options, configs that do not fit the experiment)."""


@dataclass
class RuleSource:
    """Where a rule comes from: meta-trained from ``cfg`` or loaded from ``checkpoint``.

    Attributes:
        label: short name used in tables and plots (e.g. ``"pooled"``).
        cfg: the configuration to meta-train with (ignored when ``checkpoint`` is set: a
            checkpoint carries its own configuration).
        checkpoint: a ``last.pt`` written by ``gnca train`` or by an experiment.
        data_dir: replaces ``data.data_dir`` of a checkpoint's configuration (MNIST elsewhere).
    """

    label: str
    cfg: Config | None = None
    checkpoint: str | os.PathLike | None = None
    data_dir: str | None = None


#: A rule ready to grow nets, with its label and training time (one object everywhere).
TrainedRule = BuiltRule


def reader_seed(seed: int) -> int:
    """The seed of the generator from which nets grown with ``seed`` draw their training
    batches (their initial states and fire masks use ``seed`` itself)."""
    return seed + 7


def obtain_rule(
    source: RuleSource,
    run_dir: Path,
    *,
    device: torch.device,
    dataset: Dataset | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> TrainedRule:
    """Load ``source.checkpoint``, or meta-train ``source.cfg`` in ``run_dir``.

    A finished (or interrupted) run already in ``run_dir`` with the same configuration is reused
    (and completed); ``retrain`` starts over. The run directory gets ``last.pt``, ``metrics.csv``
    and ``train_time.json`` (meta-training wall and CPU seconds, summed over resumes).
    """
    from gnca.trainer import MetaTrainer

    if source.checkpoint is not None:
        path = Path(source.checkpoint)
        if not path.is_file():
            raise ExperimentError(f"checkpoint not found: {path} (rule {source.label!r})")
        tr = load_trained(path, device=device, data_dir=source.data_dir, dataset=dataset)
        tr.label = source.label
        tr.train_seconds = _read_train_time(path.parent)
        return tr
    if source.cfg is None:
        raise ExperimentError(f"rule {source.label!r} needs a config or a checkpoint")
    cfg = source.cfg
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "last.pt"
    if retrain:
        for stale in ("last.pt", "metrics.csv", "train_time.json"):
            (run_dir / stale).unlink(missing_ok=True)
    if ckpt.is_file():
        try:
            trainer = MetaTrainer.from_checkpoint(ckpt, dataset=dataset, device=device, cfg=cfg)
        except ValueError as err:
            raise ExperimentError(
                f"{ckpt} holds a rule trained with another configuration ({err}); pass "
                f"--retrain to replace it or --out for a new folder"
            ) from None
    else:
        trainer = MetaTrainer.from_config(cfg, dataset=dataset, device=device)
    trained_now = trainer.step < cfg.train.steps
    seconds = _read_train_time(run_dir) or trainer.train_seconds
    if trained_now:
        print(
            f"meta-training rule {source.label!r} ({trainer.rule!r}) for "
            f"{cfg.train.steps - trainer.step} meta-steps in {run_dir}",
            file=sys.stderr,
        )
        if trainer.step > 0 and trainer.train_seconds == 0.0:
            # a checkpoint written before it kept its time: continue train_time.json's count
            trainer.train_seconds = seconds
            trainer.train_cpu_seconds = _read_train_time(run_dir, "cpu_seconds") or 0.0
        trainer.train(run_dir, progress=progress)
        seconds, cpu = trainer.train_seconds, trainer.train_cpu_seconds
        write_json(
            run_dir / "train_time.json",
            {"seconds": seconds, "cpu_seconds": cpu, "meta_steps": trainer.step},
        )
    else:
        print(f"reusing rule {source.label!r} from {ckpt}", file=sys.stderr)
    return trained_from(
        trainer.rule,
        cfg,
        device=device,
        dataset=trainer.data,
        checkpoint=ckpt,
        meta_steps=trainer.step,
        label=source.label,
        train_seconds=seconds or None,
        trained_now=trained_now,
    )


def _read_train_time(run_dir: Path, key: str = "seconds") -> float | None:
    p = run_dir / "train_time.json"
    if not p.is_file():
        return None
    try:
        return float(json.loads(p.read_text())[key])
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------- output helpers
def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table with padded columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([lines[0], sep, *lines[1:]])


def write_csv(
    path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None
) -> None:
    """Write dict rows as CSV (floats with 6 significant digits)."""
    fields = list(fields or (rows[0].keys() if rows else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: _fmt(r.get(k)) for k in fields})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and (sample) standard deviation of a 1-D tensor (std 0 for one value)."""
    x = x.to(torch.float64)
    return float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0


def rule_info(tr: TrainedRule) -> dict[str, Any]:
    """What a summary records about a rule."""
    return {
        "label": tr.label,
        "checkpoint": str(tr.checkpoint),
        "rule": repr(tr.rule),
        "meta_steps": tr.meta_steps,
        "train_seconds": tr.train_seconds,
        "train_cpu_seconds": _read_train_time(tr.checkpoint.parent, "cpu_seconds"),
        "trained_now": tr.trained_now,
        "config": config_to_dict(tr.cfg),
    }


def finish_summary(
    out: Path, summary: dict[str, Any], start: float, cpu_start: float
) -> dict[str, Any]:
    """Add wall and CPU seconds since ``start``/``cpu_start`` (``time.perf_counter()`` /
    ``time.process_time()``) and the environment to ``summary``; write ``out/summary.json``."""
    summary = {
        **summary,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "environment": environment(),
    }
    write_json(out / "summary.json", summary)
    return summary


def environment() -> dict[str, Any]:
    """Hardware and software the experiment ran on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`, else the
    machine type (``x86_64``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git_commit() -> str | None:
    """The commit of the gnca checkout (``+dirty`` with uncommitted changes), if it is one."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
