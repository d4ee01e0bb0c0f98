"""The accuracy table of grown nets that ends ``gnca train`` and that ``gnca eval`` grows again
from the checkpoint.

The table grows ``num`` nets per row with one random generator on the growing device, seeded
``train.seed + EVAL_SEED_OFFSET`` and drawn from in the order of the rows: the training
architectures (with ``data.also``, those of every extra task, labelled ``on <dataset>``), then
the unseen ``train.eval_architectures`` (labelled ``[unseen]``). A data-reading rule reads
batches drawn by a fresh generator per row, seeded ``train.seed + EVAL_SENSES_OFFSET``. The same
rule, rows, seeds, ``num`` and horizons give the same numbers, bit for bit on the CPU::

    trained = load_trained("runs/iris/last.pt")
    table = accuracy_table(trained, training_rows(trained), num=100, horizons=(20, 200))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from gnca.architecture import Architecture
from gnca.config import Config
from gnca.grow import grow
from gnca.rule import LocalRule
from gnca.senses import SenseReader
from gnca.state import InitSpec
from gnca.task import Task

if TYPE_CHECKING:
    from gnca.build import TrainedRule

__all__ = [
    "EVAL_SEED_OFFSET",
    "EVAL_SENSES_OFFSET",
    "JSON_DIGITS",
    "Grower",
    "Row",
    "accuracy_table",
    "round_floats",
    "table_rows",
    "training_rows",
]

#: The nets of the table grow from ``train.seed + EVAL_SEED_OFFSET`` (one generator for all rows).
EVAL_SEED_OFFSET = 12345
#: A data-reading rule's batches while the table grows: ``train.seed + EVAL_SENSES_OFFSET``.
EVAL_SENSES_OFFSET = 54321
#: Significant digits of the accuracies written as JSON (float32 means carry noise beyond).
JSON_DIGITS = 6

#: One row's accuracy at each horizon: ``{"20": {"mean": ..., "min": ..., "max": ...}, ...}``.
Accuracies = dict[str, dict[str, float]]


class Grower(Protocol):
    """What grows the table: a :class:`~gnca.build.TrainedRule` or a
    :class:`~gnca.trainer.MetaTrainer`."""

    rule: LocalRule
    init: InitSpec
    device: torch.device
    cfg: Config


@dataclass(frozen=True)
class Row:
    """One architecture of the table: grown for ``task`` and shown as ``label``."""

    arch: Architecture
    task: Task
    label: str


def table_rows(
    task: Task,
    archs: Sequence[Architecture],
    arch_tasks: Sequence[Task],
    unseen: Sequence[Architecture] = (),
) -> list[Row]:
    """The rows of the table: each training architecture on its task (labelled ``on <dataset>``
    when there are several tasks), then each ``unseen`` one on ``task`` (``[unseen]``).

    Raises:
        ValueError: an unseen architecture that does not fit ``task``.
    """
    many = len({id(tk) for tk in arch_tasks}) > 1
    rows = [
        Row(a, tk, f"{a.describe()} on {tk.name}" if many else a.describe())
        for a, tk in zip(archs, arch_tasks, strict=True)
    ]
    rows += [Row(task.check(a), task, f"{a.describe()} [unseen]") for a in unseen]
    return rows


def training_rows(trained: TrainedRule) -> list[Row]:
    """The rows of the table that ended the rule's meta-training: ``task.architectures``, those
    of ``data.also`` and the unseen ``train.eval_architectures``, from its configuration."""
    from gnca.build import make_also

    task = trained.task
    archs = trained.architectures()
    tasks = [task] * len(archs)
    for extra, extra_archs in make_also(trained.cfg):
        archs += extra_archs
        tasks += [extra] * len(extra_archs)
    from gnca.build import make_layer_nets

    cfg = trained.cfg
    unseen = [task.mlp(s) for s in cfg.train.eval_architectures]
    unseen += make_layer_nets(cfg.train.eval_layers, cfg.task, task, "train.eval_layers")
    return table_rows(task, archs, tasks, unseen)


def accuracy_table(
    trained: Grower,
    rows: Sequence[Row],
    *,
    num: int,
    horizons: Sequence[int],
    split: str = "test",
    seed: int | None = None,
    sense_seed: int | None = None,
    before: Callable[[Architecture], None] | None = None,
    progress: Callable[[int], None] | None = None,
    bar: bool = False,
) -> dict[str, Accuracies]:
    """Grow ``num`` nets of every row (no gradients) and measure their ``split`` accuracy.

    Args:
        trained: the rule, its initial states, device and configuration (``train.seed``,
            ``rule.sense_batch``).
        rows: what to grow, in order (:func:`training_rows`, :func:`table_rows`).
        num: nets per row.
        horizons: rule steps at which the accuracy is taken (grown to the largest).
        split: ``"test"`` or ``"train"``.
        seed: seed of the one generator of all rows (default ``train.seed + EVAL_SEED_OFFSET``).
        sense_seed: seed of a data-reading rule's batches, per row (default
            ``train.seed + EVAL_SENSES_OFFSET``).
        before: called with each row's architecture before it grows (e.g. to set threads).
        progress: called after every rule step of every row (e.g. a progress bar's update).
        bar: show a progress bar over the rule steps of all rows.

    Returns:
        ``{label: {str(step): {"mean", "min", "max"}}}`` in the order of ``rows``.
    """
    train_seed = trained.cfg.train.seed
    seed = train_seed + EVAL_SEED_OFFSET if seed is None else seed
    sense_seed = train_seed + EVAL_SENSES_OFFSET if sense_seed is None else sense_seed
    gen = torch.Generator(device=trained.device).manual_seed(seed)
    out: dict[str, Accuracies] = {}
    tick, shown = progress, None
    if bar:
        from tqdm.auto import tqdm

        shown = tqdm(total=len(rows) * max(horizons), desc="evaluate", unit="step")

        def tick(step: int) -> None:
            shown.update(1)
            if progress is not None:
                progress(step)

    for row in rows:
        if before is not None:
            before(row.arch)
        reader = None
        if trained.rule.senses:
            reader = SenseReader(
                trained.rule.senses,
                row.task,
                trained.cfg.rule.sense_batch,
                torch.Generator().manual_seed(sense_seed),
                feedback=trained.rule.feedback,
            )
        res = grow(
            trained.rule,
            row.arch,
            num,
            max(horizons),
            trained.init,
            device=trained.device,
            generator=gen,
            metric=row.task.metric(split, trained.device),
            record_at=horizons,
            senses=reader,
            progress=tick,
        )
        assert res.curve is not None
        out[row.label] = {
            str(s): {
                "mean": float(res.curve[i].mean()),
                "min": float(res.curve[i].min()),
                "max": float(res.curve[i].max()),
            }
            for i, s in enumerate(res.curve_steps)
        }
    if shown is not None:
        shown.close()
    return out


def round_floats(obj: Any, digits: int = JSON_DIGITS) -> Any:
    """``obj`` with every float (in nested dicts, lists and tuples) rounded to ``digits``
    significant digits, still a float: ``0.9990000128746033`` -> ``0.999``. For JSON output."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    return obj
