"""Zero-out damage (the paper's robustness perturbation).

A zero-out sets one whole layer of a task net to zero, and a fraction of the other weights. The
*layer* of a weight ``u -> v`` is the level of its head neuron ``v`` (for an MLP, the weight
matrix it belongs to, biases included). Hidden states are left as they are.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from gnca.graph import num_graphs, weight_batch


def zero_out(
    graph: Data,
    w: torch.Tensor,
    *,
    fraction: float = 0.3,
    which: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero one random layer plus ``fraction`` of the other weights of selected nets.

    Args:
        graph: weight graph or batch of ``G`` nets, ``E`` weights.
        w: ``(E,)`` weights.
        fraction: probability that each weight outside the chosen layer is zeroed.
        which: ``(G,)`` bool, the nets to damage (default all).
        generator: random generator.

    Returns:
        ``(E,)`` new weights (``w`` is not modified).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    g = num_graphs(graph)
    gid = weight_batch(graph)  # (E,)
    depth = torch.as_tensor(graph.depth, device=w.device).reshape(-1).expand(g)  # (G,)
    u = torch.rand(g, generator=generator, device=w.device)
    layer = 1 + (u * depth).long().clamp(max=depth - 1)  # (G,) in 1..depth
    in_layer = graph.neuron_level[graph.dst] == layer[gid]  # (E,)
    r = torch.rand(w.shape[0], generator=generator, device=w.device)
    hit = in_layer | (r < fraction)
    if which is not None:
        hit = hit & which.to(w.device)[gid]
    return torch.where(hit, torch.zeros_like(w), w)
