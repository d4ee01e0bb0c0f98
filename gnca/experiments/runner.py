"""The recipe every experiment shares, done once: :class:`ExperimentRun`.

An experiment (:mod:`~gnca.experiments.stability`, :mod:`~gnca.experiments.robustness`,
:mod:`~gnca.experiments.generalization`) is a *protocol*: what it grows, what it measures, which
tables and figure it writes. Everything around it is here:

1. its option checks, before anything is written;
2. the output folder, and the wall and CPU clocks (meta-training included);
3. the rules, obtained with :func:`~gnca.experiments.common.obtain_rule` (meta-trained in
   ``out/rules/<label>`` or loaded from a checkpoint), each a
   :class:`~gnca.build.TrainedRule` with its task, training architectures and init spec;
4. growth of nets with a rule, from a seeded generator on the experiment's device, with an
   optional progress bar; the rule's data splits on that device;
5. the Markdown and CSV outputs, and ``summary.json`` (experiment name first; wall and CPU
   seconds and the environment last).

A protocol reads::

    run = ExperimentRun("stability", out, device=device, checks=[(num < 1, "num must be ...")])
    for tr in run.obtain(pooled, unpooled):
        res = run.grow(tr, tr.architectures()[0], num, steps, seed=seed, metric=...)
        ...
    run.write_csv("stability.csv", rows)
    return run.finish({"nets": num, "rules": run.rule_infos(), ...})
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from gnca.architecture import Architecture
from gnca.experiments.common import (
    ExperimentError,
    RuleSource,
    TrainedRule,
    finish_summary,
    obtain_rule,
    reader_seed,
    rule_info,
    write_csv,
)
from gnca.grow import GrowResult, grow

#: ``metric(graph, w) -> (G,)``, as :func:`gnca.grow.grow` takes it
Metric = Callable[[Data, torch.Tensor], torch.Tensor]
#: ``perturb(step, graph, w) -> w``, as :func:`gnca.grow.grow` takes it
Perturb = Callable[[int, Data, torch.Tensor], torch.Tensor]


class ExperimentRun:
    """One run of an experiment: its folder, clocks, rules, growth and outputs.

    Args:
        experiment: the experiment's name (``summary.json``'s ``"experiment"``).
        out: output folder (created; rules trained here go to ``out/rules/<label>``).
        device: where to grow (and meta-train).
        retrain: meta-train again even if ``out/rules/<label>`` holds a finished run.
        progress: show progress bars and progress lines (on stderr).
        checks: ``(invalid, message)`` pairs: the first invalid one raises
            :class:`~gnca.experiments.common.ExperimentError` with its message, before the
            folder is made or a rule is trained.

    Attributes:
        out, device, retrain, progress: as given (``out`` a Path, ``device`` a torch.device).
        start, cpu_start: ``time.perf_counter()`` and ``time.process_time()`` at the start.
        rules: the rules obtained so far, in order.
    """

    def __init__(
        self,
        experiment: str,
        out: str | Path,
        *,
        device: torch.device | str = "cpu",
        retrain: bool = False,
        progress: bool = True,
        checks: Iterable[tuple[bool, str]] = (),
    ) -> None:
        for invalid, message in checks:
            if invalid:
                raise ExperimentError(message)
        self.experiment = experiment
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.retrain = retrain
        self.progress = progress
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.rules: list[TrainedRule] = []

    # ------------------------------------------------------------------ rules
    def obtain(self, *sources: RuleSource | None) -> list[TrainedRule]:
        """The rules of ``sources`` (``None`` entries skipped), meta-trained in
        ``out/rules/<label>`` or loaded; they are added to :attr:`rules`."""
        got = [
            obtain_rule(
                src,
                self.out / "rules" / src.label,
                device=self.device,
                retrain=self.retrain,
                progress=self.progress,
            )
            for src in sources
            if src is not None
        ]
        self.rules.extend(got)
        return got

    def rule_infos(self) -> list[dict[str, Any]]:
        """What ``summary.json`` records about each rule (:func:`~.common.rule_info`)."""
        return [rule_info(tr) for tr in self.rules]

    def split(self, tr: TrainedRule, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``X, y`` of the rule's ``train`` or ``test`` split on the experiment's device."""
        return tr.task.split(name, self.device)

    # ------------------------------------------------------------------ growing
    def generator(self, seed: int) -> torch.Generator:
        """A fresh generator on the experiment's device, seeded with ``seed``."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def grow(
        self,
        tr: TrainedRule,
        arch: Architecture,
        num: int,
        steps: int,
        *,
        seed: int,
        metric: Metric | None = None,
        record_at: Sequence[int] = (),
        perturb: Perturb | None = None,
        bar: str | None = None,
    ) -> GrowResult:
        """Grow ``num`` nets of ``arch`` with rule ``tr`` for ``steps`` rule steps from
        :meth:`generator` ``(seed)`` (see :func:`gnca.grow.grow` for ``metric``, ``record_at``
        and ``perturb``); ``bar`` names a progress bar over the steps (shown with progress).
        A rule with senses reads training batches of its task while it grows (seeded from
        ``seed``)."""
        pbar = self._bar(steps, bar) if bar is not None else None
        try:
            return grow(
                tr.rule,
                arch,
                num,
                steps,
                tr.init,
                device=self.device,
                generator=self.generator(seed),
                metric=metric,
                record_at=record_at,
                perturb=perturb,
                progress=(lambda t: pbar.update(1)) if pbar is not None else None,
                senses=tr.reader(reader_seed(seed)),  # a rule that reads data reads its task's
            )
        finally:
            if pbar is not None:
                pbar.close()

    def _bar(self, total: int, desc: str):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", file=sys.stderr)

    def note(self, message: str) -> None:
        """A progress line on stderr (shown with progress)."""
        if self.progress:
            print(message, file=sys.stderr)

    # ------------------------------------------------------------------ outputs
    def path(self, name: str) -> Path:
        """``out/name``."""
        return self.out / name

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` and a final newline to ``out/name`` (a Markdown table)."""
        path = self.path(name)
        path.write_text(text + "\n")
        return path

    def write_csv(self, name: str, rows: Sequence[dict[str, Any]]) -> Path:
        """Write dict rows to ``out/name`` (:func:`~.common.write_csv`)."""
        path = self.path(name)
        write_csv(path, rows)
        return path

    def finish(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json``: the experiment's name, ``fields``, then wall and CPU seconds
        since the start and the environment; return it."""
        summary = {"experiment": self.experiment, **fields}
        return finish_summary(self.out, summary, self.start, self.cpu_start)
