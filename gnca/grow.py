"""Growing task nets with a trained rule: no data, no backprop, many nets at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch_geometric.data import Data

from gnca.architecture import Architecture
from gnca.graph import WeightGraph, num_graphs
from gnca.rule import LocalRule
from gnca.senses import SenseReader
from gnca.state import InitSpec


@dataclass
class GrowResult:
    """Grown nets of one architecture.

    Attributes:
        arch: the architecture; graph: its ``G`` copies batched.
        w: ``(G * E,)`` final weights; h: ``(G * E, C)`` final hidden states.
        curve_steps: rule steps at which ``curve`` was measured.
        curve: ``(len(curve_steps), G)`` metric per net (e.g. test accuracy).
    """

    arch: Architecture
    graph: Data
    w: torch.Tensor
    h: torch.Tensor
    curve_steps: list[int] = field(default_factory=list)
    curve: torch.Tensor | None = None


@torch.no_grad()
def grow(
    rule: LocalRule,
    arch: Architecture,
    num: int,
    steps: int,
    init: InitSpec,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    metric: Callable[[Data, torch.Tensor], torch.Tensor] | None = None,
    record_at: Sequence[int] = (),
    perturb: Callable[[int, Data, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    senses: Callable[[Data, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> GrowResult:
    """Grow ``num`` task nets of ``arch`` for ``steps`` rule steps from their initial state.

    Args:
        rule: the trained local rule.
        arch: any architecture (trained on or not).
        num: number of nets ``G``, grown as one batch.
        steps: rule steps.
        init: initial-state spec (normally the one the rule was trained with).
        device: where to grow.
        generator: random generator for initial states and fire masks (on ``device``).
        metric: ``metric(graph, w) -> (G,)`` evaluated at the steps in ``record_at`` (0 = the
            initial state).
        record_at: steps at which to evaluate ``metric``.
        perturb: ``perturb(step, graph, w) -> w`` applied before each step (e.g. damage).
        progress: called with each finished step number.
        senses: ``senses(graph, w, h) -> (E, S)`` before each step, for a rule that reads data
            (a :class:`gnca.senses.SenseReader` of the task to grow on; nothing here takes a
            gradient: growing runs under ``torch.no_grad``).
    """
    rule = rule.to(device).eval()
    graph = WeightGraph.replicate(arch, num, device=device)
    w, h = init.state(graph, rule.hidden_channels, generator)
    want = sorted(set(int(s) for s in record_at if 0 <= s <= steps))
    rows = []
    if metric is not None and 0 in want:
        rows.append(metric(graph, w))
    for t in range(1, steps + 1):
        if perturb is not None:
            w = perturb(t, graph, w)
        s = None
        if isinstance(senses, SenseReader) and rule.reads_factored(graph, w):
            s = senses(graph, w, h, factored=True)  # the same senses, not written per weight
        elif senses is not None:
            s = senses(graph, w, h)
        w, h = rule(graph, w, h, generator=generator, senses=s)
        if metric is not None and t in want:
            rows.append(metric(graph, w))
        if progress is not None:
            progress(t)
    curve = torch.stack(rows).cpu() if rows else None
    assert curve is None or curve.shape[1] == num_graphs(graph)
    return GrowResult(arch, graph, w, h, want if metric is not None else [], curve)
