"""Optional experiment tracking with Weights & Biases (``train.wandb: true``).

gnca always writes ``metrics.csv`` (and TensorBoard events when ``tensorboard`` is installed);
with ``train.wandb`` it also logs the same scalars and the resolved configuration to a W&B run
whose files live in the run directory (``RUN_DIR/wandb/``). ``wandb`` is an optional
dependency (``pip install 'gnca[wandb]'``); asking for it without the package is a one-line
:class:`MissingDependencyError`, raised before anything is written.

In ``offline`` mode (the default) nothing leaves the machine: ``wandb sync RUN_DIR/wandb/...``
uploads a run later. A resumed training run (``gnca train --resume``) continues the W&B run it
started: its id is kept in ``RUN_DIR/wandb_run_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gnca.config import TrainConfig

#: Where a run directory keeps the id of its W&B run, so that a resumed run continues it.
RUN_ID_FILE = "wandb_run_id"

INSTALL_HINT = "pip install 'gnca[wandb]'"


class MissingDependencyError(ImportError):
    """An optional package that the configuration asks for is not installed."""


def import_wandb() -> Any:
    """The ``wandb`` module, or a one-line :class:`MissingDependencyError` naming the extra."""
    try:
        import wandb
    except ImportError:
        raise MissingDependencyError(
            f"train.wandb is true but the wandb package is not installed: {INSTALL_HINT}"
        ) from None
    return wandb


def check_wandb(train: TrainConfig) -> None:
    """Raise :class:`MissingDependencyError` when ``train.wandb`` is set and ``wandb`` is missing
    (for commands that check everything before they write anything)."""
    if train.wandb:
        import_wandb()


class WandbRun:
    """One W&B run of a training run: scalars with :meth:`log`, then :meth:`close`.

    Args:
        run_dir: the training run's directory; W&B writes under ``run_dir/wandb``.
        config: the resolved configuration (plain dict), stored as the run's config.
        name: the run's display name.
        train: ``wandb_project`` and ``wandb_mode`` are taken from it.
        resume: continue the W&B run whose id ``run_dir`` holds (a resumed training run);
            otherwise a new W&B run starts and its id replaces the stored one.
    """

    def __init__(
        self, run_dir: Path, config: dict, name: str, train: TrainConfig, *, resume: bool
    ) -> None:
        wandb = import_wandb()
        self._wandb = wandb
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        self.run = wandb.init(
            project=train.wandb_project,
            name=name,
            dir=str(run_dir),
            mode=train.wandb_mode,
            config=config,
            id=run_id,  # None: W&B draws a new one
            resume="allow" if run_id else None,
        )
        id_file.write_text(self.run.id + "\n")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        """Finish the run and, when no other W&B run is active in this process, shut the W&B
        service down, which waits until the run's record (``run-*.wandb``) is on disk:
        ``run.finish()`` alone can return before the service has written the logged scalars."""
        self.run.finish()
        if self._wandb.run is None:  # never end a run the caller started beside ours
            self._wandb.teardown()
