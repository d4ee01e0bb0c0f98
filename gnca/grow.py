"""Growing task nets with a trained rule: no data, no backprop, many nets at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch_geometric.data import Data

from gnca.architecture import Architecture
from gnca.forward import effective_weights, task_forward
from gnca.graph import WeightGraph, num_graphs
from gnca.rule import LocalRule
from gnca.state import initial_state


@dataclass
class InitSpec:
    """How task nets start (see :mod:`gnca.state`)."""

    kind: str = "fixed"
    scale: float = 1.0
    seed: int = 0
    noise: float = 0.0
    code_freqs: int = 2
    depth_code: bool = True
    code_jitter: float = 0.0

    def state(
        self, graph: Data, hidden_channels: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial ``(w (E,), h (E, C))`` of every net in ``graph`` (:func:`gnca.initial_state`)."""
        return initial_state(
            graph,
            hidden_channels,
            self.kind,
            scale=self.scale,
            seed=self.seed,
            noise=self.noise,
            code_freqs=self.code_freqs,
            depth_code=self.depth_code,
            code_jitter=self.code_jitter,
            generator=generator,
        )


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


def accuracy(
    graph: Data,
    w: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    activation: str = "tanh",
    fan_in_ref: float | None = None,
) -> torch.Tensor:
    """``(G,)`` accuracy of every net in ``graph`` on ``X (B, n_in)``, ``y (B,)``."""
    with torch.no_grad():
        return logits_accuracy(task_forward(graph, w, X, activation, fan_in_ref=fan_in_ref), y)


def cross_entropy(
    graph: Data,
    w: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    activation: str = "tanh",
    fan_in_ref: float | None = None,
) -> torch.Tensor:
    """``(G,)`` mean cross-entropy of every net (differentiable)."""
    return logits_cross_entropy(task_forward(graph, w, X, activation, fan_in_ref=fan_in_ref), y)


def logits_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(G,)`` accuracy of logits ``(G, B, n_out)`` against labels ``y (B,)``."""
    return (logits.argmax(-1) == y.unsqueeze(0)).to(torch.float32).mean(1)


def logits_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(G,)`` mean cross-entropy of logits ``(G, B, n_out)`` against ``y (B,)``."""
    g, b, c = logits.shape
    per = torch.nn.functional.cross_entropy(
        logits.reshape(g * b, c), y.repeat(g), reduction="none"
    )  # (G * B,)
    return per.view(g, b).mean(1)


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
        w, h = rule(graph, w, h, generator=generator)
        if metric is not None and t in want:
            rows.append(metric(graph, w))
        if progress is not None:
            progress(t)
    curve = torch.stack(rows).cpu() if rows else None
    assert curve is None or curve.shape[1] == num_graphs(graph)
    return GrowResult(arch, graph, w, h, want if metric is not None else [], curve)


def export_nets(result: GrowResult, activation: str = "tanh", fan_in_ref: float | None = None):
    """The grown nets of ``result`` as a standalone :class:`gnca.export.GrownNets` module
    (with ``fan_in_ref``, the weights are exported as the forward pass uses them)."""
    from gnca.export import GrownNets

    a = result.arch
    g = num_graphs(result.graph)
    w = effective_weights(result.graph, result.w.detach(), fan_in_ref)
    return GrownNets(
        w.cpu().view(g, a.num_weights),
        torch.tensor(a.edges[:, 0]),
        torch.tensor(a.edges[:, 1]),
        torch.tensor(a.levels),
        torch.tensor(a.kinds),
        torch.tensor(a.inputs),
        torch.tensor(a.outputs),
        activation,
        list(a.mlp_sizes) if a.mlp_sizes else None,
    )
