"""What meta-training writes while it runs: ``metrics.csv``, TensorBoard events and a Weights &
Biases run (:mod:`gnca.tracking`), one row per ``train.log_every`` meta-steps.

A row holds the mean loss and accuracy of the window of meta-steps since the previous row (over
the steps not rolled back), the learning rate, the rolled-back count and the meta-training
seconds so far. The trainer keeps the open window in its checkpoints, so that a resumed run
logs the rows an uninterrupted one would.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from gnca.config import Config, config_to_dict
from gnca.files import atomic_write


class StepStats(Protocol):
    """What a row reads of a meta-step (:class:`gnca.trainer.StepStats`)."""

    step: int
    loss: float
    accuracy: float
    lr: float
    skipped: bool


def window_means(window: Sequence[tuple[float, float, bool]]) -> tuple[float, float, int]:
    """The logged loss and accuracy of a window of meta-steps (mean over those not rolled
    back; over all when every one was) and how many were rolled back."""
    ok = [x for x in window if not x[2]] or list(window)
    loss = sum(x[0] for x in ok) / len(ok)
    acc = sum(x[1] for x in ok) / len(ok)
    return loss, acc, sum(x[2] for x in window)


class MetricsCSV:
    """``metrics.csv``: one row per logged meta-step.

    Opened by a run that starts at meta-step ``after`` > 0 (a resume), it first drops the rows
    of later meta-steps: a run killed after its last checkpoint logged steps that the resumed
    run logs again.
    """

    FIELDS = ("step", "loss", "accuracy", "lr", "skipped", "seconds")

    def __init__(self, path: Path, after: int = 0) -> None:
        self.path = path
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        elif after > 0:
            self._drop_after(after)

    def _drop_after(self, step: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [r for r in rows[1:] if r and _int_or_none(r[0]) is not None]
        keep = [r for r in keep if int(r[0]) <= step]
        if len(keep) == len(rows) - 1:
            return
        text = io.StringIO()
        csv.writer(text).writerows([rows[0], *keep])
        data = text.getvalue().encode()
        atomic_write(self.path, lambda f: f.write(data))

    def write(self, *row: float) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([f"{x:.6g}" if isinstance(x, float) else x for x in row])


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _tensorboard(run: Path, after: int = 0):
    """A TensorBoard writer in ``run/tb`` (``None`` without the ``tensorboard`` package); a
    run resumed at meta-step ``after`` hides the events logged after it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(run / "tb"), purge_step=after + 1 if after > 0 else None)


class RunLogs:
    """What :meth:`~gnca.trainer.MetaTrainer.train` shows and writes after every meta-step.

    Every ``train.log_every`` meta-steps (and at the last) one row: to ``metrics.csv`` and, when
    available, TensorBoard (with ``run``) and Weights & Biases (``train.wandb``); beside it a
    progress bar, or with ``lines`` one line per row on stderr.

    W&B is set up first: a missing package or run directory is an error before any file is
    written. A run that starts at meta-step ``step`` > 0 (resumed) continues the run's W&B run
    and first drops what ``metrics.csv`` and TensorBoard hold after ``step``.

    Args:
        cfg: the run's configuration (``train.log_every``, ``train.steps``, W&B settings).
        step: the meta-step the run starts at.
        run: the run directory (``None``: no files).
        window: ``(loss, accuracy, skipped)`` of the meta-steps since the last row, filled and
            emptied here (the trainer's list, kept in its checkpoints).
        progress: show a progress bar.
        lines: without a bar, print a line per row.
    """

    def __init__(
        self,
        cfg: Config,
        step: int,
        run: Path | None,
        window: list[tuple[float, float, bool]],
        *,
        progress: bool = False,
        lines: bool = False,
    ) -> None:
        self.train, self.window, self.lines = cfg.train, window, lines
        self.wandb = None
        if cfg.train.wandb:
            if run is None:
                raise ValueError("train.wandb needs a run directory: call train(run_dir)")
            from gnca.tracking import WandbRun

            self.wandb = WandbRun(run, config_to_dict(cfg), cfg.name, cfg.train, resume=step > 0)
        self.metrics = MetricsCSV(run / "metrics.csv", step) if run is not None else None
        self.writer = _tensorboard(run, step) if run is not None else None
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=step, desc="meta-train", unit="step")

    def after(self, s: StepStats, seconds: Callable[[], float]) -> None:
        """Take meta-step ``s``; log a row when it ends a window (``seconds()``: the
        meta-training seconds so far)."""
        t = self.train
        self.window.append((s.loss, s.accuracy, s.skipped))
        if s.step % t.log_every == 0 or s.step == t.steps:
            loss, acc, skipped = window_means(self.window)
            self.window.clear()
            self.write(s.step, loss, acc, s.lr, skipped, seconds())
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", skipped=skipped)
            elif self.lines:
                line = f"meta-step {s.step}/{t.steps}  loss {loss:.4f}  acc {acc:.3f}"
                print(f"{line}  skipped {skipped}  {seconds():.0f}s", file=sys.stderr, flush=True)
        if self.bar is not None:
            self.bar.update(1)

    def write(
        self, step: int, loss: float, acc: float, lr: float, skipped: int, seconds: float
    ) -> None:
        if self.metrics is not None:
            self.metrics.write(step, loss, acc, lr, skipped, seconds)
        scalars = {
            "train/loss": loss,
            "train/accuracy": acc,
            "train/lr": lr,
            "train/skipped": skipped,
        }
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()
