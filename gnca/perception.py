"""The perception vector of every weight, in ``O(E)``, without building the line graph.

For weight ``w = u -> v`` with hidden state ``h`` (the paper's formula)::

    p(w) = [w, h, agg_{N_f(w)} w, agg_{N_f(w)} h, agg_{N_b(w)} w, agg_{N_b(w)} h]   # (3 + 3C,)

Every neighbourhood in :data:`gnca.graph.NEIGHBOURHOODS` is a union of a neuron's in-weights and
out-weights (minus the weight itself), so each aggregate is computed by two scatters: weights to
neurons (a sum of ``[w, h]`` per neuron over its in-weights and over its out-weights), then
neurons back to weights (a gather at ``v`` for the forward relation, at ``u`` for the backward
one), subtracting the weight's own contribution where the neighbourhood excludes it. Counts
depend on the structure only and are cached on the graph. An empty neighbourhood aggregates to 0.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from gnca.graph import NEIGHBOURHOODS, check_neighbourhood, total_neurons

REDUCTIONS = ("mean", "sum")


def _check(w: torch.Tensor, h: torch.Tensor, graph: Data) -> None:
    e = graph.src.numel()
    if w.dim() != 1 or w.shape[0] != e:
        raise ValueError(f"w must have shape ({e},) for this graph, got {tuple(w.shape)}")
    if h.dim() != 2 or h.shape[0] != e:
        raise ValueError(f"h must have shape ({e}, C) for this graph, got {tuple(h.shape)}")


def neighbour_counts(
    graph: Data, neighbourhood: str = "incident", include_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|N_f(w)|, |N_b(w)|)``, each ``(E,)`` float, cached on ``graph``.

    Depends on the structure only, so it is computed once per graph and option set.
    """
    key = f"_gnca_counts_{neighbourhood}_{int(include_self)}"
    cached = graph.__dict__.get(key)
    if cached is not None and cached[0].device == graph.src.device:
        return cached
    check_neighbourhood(neighbourhood)
    n = total_neurons(graph)
    deg = {
        "in": torch.bincount(graph.dst, minlength=n),
        "out": torch.bincount(graph.src, minlength=n),
    }
    fwd, bwd = NEIGHBOURHOODS[neighbourhood]
    out = []
    for own, at, parts in (("in", graph.dst, fwd), ("out", graph.src, bwd)):
        c = sum(deg[p] for p in parts)[at].to(torch.get_default_dtype())
        c = c - 1 if own in parts else c  # a weight never counts as its own neighbour...
        out.append(c + 1 if include_self else c)  # ...unless asked to
    result = (out[0], out[1])
    graph.__dict__[key] = result
    return result


def perceive(
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    neighbourhood: str = "incident",
    *,
    include_self: bool = False,
    reduce: str = "mean",
) -> torch.Tensor:
    """Perception vectors of all weights, ``O(E)`` (the fast path).

    Args:
        graph: a :class:`~gnca.WeightGraph` or a batch of them, ``E`` weights, ``N`` neurons.
        w: ``(E,)`` weights.
        h: ``(E, C)`` hidden states.
        neighbourhood: ``"incident"`` (default), ``"directed"`` or ``"sibling"``.
        include_self: count each weight among its own forward and backward neighbours.
        reduce: ``"mean"`` (default) or ``"sum"`` over each neighbourhood; empty -> 0.

    Returns:
        ``(E, 3 + 3C)``: ``[w, h, w_f, h_f, w_b, h_b]``.
    """
    _check(w, h, graph)
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    check_neighbourhood(neighbourhood)
    x = torch.cat([w.unsqueeze(1), h], dim=1)  # (E, 1 + C)
    n = total_neurons(graph)
    fwd, bwd = NEIGHBOURHOODS[neighbourhood]
    need_in = "in" in fwd or "in" in bwd
    need_out = "out" in fwd or "out" in bwd
    zeros = x.new_zeros(n, x.shape[1])
    sums = {}
    if need_in:
        sums["in"] = zeros.index_add(0, graph.dst, x)  # (N, 1 + C) sum over in-weights
    if need_out:
        sums["out"] = zeros.index_add(0, graph.src, x)  # (N, 1 + C) sum over out-weights
    if neighbourhood == "incident":
        both = sums["in"] + sums["out"]
        per_rel = ((both, graph.dst, "in"), (both, graph.src, "out"))
    else:
        per_rel = (
            (sums[fwd[0]], graph.dst, "in"),
            (sums[bwd[0]], graph.src, "out"),
        )
    aggs = []
    for (table, at, own), parts in zip(per_rel, (fwd, bwd), strict=True):
        a = table.index_select(0, at)  # (E, 1 + C)
        if own in parts and not include_self:
            a = a - x
        elif own not in parts and include_self:
            a = a + x
        aggs.append(a)
    if reduce == "mean":
        c_f, c_b = neighbour_counts(graph, neighbourhood, include_self)
        inv_f = torch.where(c_f > 0, 1.0 / c_f.clamp(min=1), 0.0).to(x.dtype)
        inv_b = torch.where(c_b > 0, 1.0 / c_b.clamp(min=1), 0.0).to(x.dtype)
        aggs = [aggs[0] * inv_f.unsqueeze(1), aggs[1] * inv_b.unsqueeze(1)]
    return torch.cat([x, aggs[0], aggs[1]], dim=1)  # (E, 3 + 3C)


def perception_size(hidden_channels: int) -> int:
    """Length of the perception vector for hidden size ``C``: ``3 + 3C``."""
    return 3 + 3 * hidden_channels
