"""Evaluating task nets from their weight vectors.

:func:`task_forward` runs every task net of a (batched) weight graph on the same inputs. The
general path works for any DAG: neurons are evaluated level by level, each level's pre-activations
gathered from its in-weights with one ``index_add``. When every graph in the batch is the same
MLP built by :meth:`gnca.Architecture.mlp`, a dense path with batched matmuls gives the same
numbers much faster. Both are functional (no in-place writes on tensors that need gradients).

Hidden neurons apply the activation; output neurons are linear and return logits; bias neurons
hold the constant 1.

With ``fan_in_ref = r`` every non-bias weight into a neuron of fan-in ``n`` counts as
``w * r / n`` (:func:`effective_weights`): a neuron's input is ``r`` times the *mean* of its
weighted inputs instead of their sum, so that a layer whose weights are the same smooth function
of the neurons' positions has the same gain at every width (``r`` = the trained width keeps the
training nets' hidden layers as they are). Biases are not scaled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from gnca.architecture import BIAS, INPUT, OUTPUT
from gnca.graph import cached, common_attr, num_graphs, same_architecture, total_neurons

TASK_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in TASK_ACTIVATIONS:
        raise ValueError(
            f"unknown task activation {name!r}; choose one of {', '.join(TASK_ACTIVATIONS)}"
        )
    return TASK_ACTIVATIONS[name]


def effective_weights(graph: Data, w: torch.Tensor, fan_in_ref: float | None) -> torch.Tensor:
    """``(E,)`` weights as the forward pass uses them: ``w * fan_in_ref / fan_in`` for non-bias
    weights (``fan_in`` of the head neuron), ``w`` for biases; ``w`` itself when
    ``fan_in_ref`` is None."""
    return mean_field(w, graph.is_bias, graph.fan_in, fan_in_ref)


def mean_field(
    w: torch.Tensor, is_bias: torch.Tensor, fan_in: torch.Tensor, fan_in_ref: float | None
) -> torch.Tensor:
    """``w * fan_in_ref / fan_in`` where ``is_bias`` is False, ``w`` elsewhere (``w`` itself
    when ``fan_in_ref`` is None); ``w (..., E)``, ``is_bias`` and ``fan_in (E,)``."""
    if fan_in_ref is None:
        return w
    if not fan_in_ref > 0:
        raise ValueError(f"fan_in_ref must be > 0, got {fan_in_ref}")
    return torch.where(is_bias, w, w * (float(fan_in_ref) / fan_in.to(w.dtype)))


def task_forward(
    graph: Data,
    w: torch.Tensor,
    X: torch.Tensor,
    activation: str = "tanh",
    *,
    path: str = "auto",
    fan_in_ref: float | None = None,
) -> torch.Tensor:
    """Logits of every task net in ``graph`` on inputs ``X``.

    Args:
        graph: a :class:`~gnca.WeightGraph` or a batch of ``G`` of them, all with ``n_in`` inputs
            and ``n_out`` outputs; ``E`` weights in total.
        w: ``(E,)`` weights (graph-major, as batched).
        X: ``(B, n_in)`` inputs shared by all nets, or ``(G, B, n_in)`` one batch per net.
        activation: hidden activation: ``tanh`` (default), ``relu``, ``gelu``, ``sigmoid``,
            ``identity`` (a layer net of :mod:`gnca.layers` uses its own).
        path: ``"auto"`` (dense when possible), ``"dense"`` (MLP batches only) or ``"general"``.
        fan_in_ref: if set, non-bias weights count as ``w * fan_in_ref / fan_in`` (module
            docstring); None (default): plain weighted sums.

    Returns:
        ``(G, B, n_out)`` logits.
    """
    act = _activation(activation)
    if w.dim() != 1 or w.shape[0] != graph.src.numel():
        raise ValueError(f"w must have shape ({graph.src.numel()},), got {tuple(w.shape)}")
    w = effective_weights(graph, w, fan_in_ref)
    g = num_graphs(graph)
    nets = getattr(graph, "layer_net", None)
    if nets is not None:  # a layer net (gnca/layers.py): its own ops and activations
        net = nets[0] if isinstance(nets, list) else nets
        if isinstance(nets, list) and not same_architecture(graph):
            raise ValueError("a batch of layer nets must hold one architecture")
        return net.forward(w.view(g, -1), X)
    n_in = graph.input_index.numel() // g
    if X.dim() == 2:
        X = X.unsqueeze(0).expand(g, -1, -1)
    if X.dim() != 3 or X.shape[0] != g or X.shape[2] != n_in:
        raise ValueError(f"X must have shape (B, {n_in}) or ({g}, B, {n_in}), got {tuple(X.shape)}")
    if path not in ("auto", "dense", "general"):
        raise ValueError(f"unknown path {path!r}; choose 'auto', 'dense' or 'general'")
    sizes = common_attr(graph, "mlp_sizes") if same_architecture(graph) else None
    if path == "dense" and sizes is None:
        raise ValueError("the dense path needs a batch of identical MLPs built by Architecture.mlp")
    if sizes is not None and path != "general":
        return _dense_forward(list(sizes), w.view(g, -1), X, act)
    return _general_forward(graph, w, X, act)


def _dense_forward(
    sizes: list[int], w: torch.Tensor, X: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Batched matmuls over the layout of :meth:`Architecture.mlp`; ``w`` is ``(G, E)``."""
    g, e = w.shape
    n_plain = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    has_bias = e != n_plain
    if has_bias and e != n_plain + sum(sizes[1:]):
        raise ValueError(f"{e} weights per net do not match an MLP {sizes}")
    out = X.to(w.dtype)  # (G, B, n_in)
    off = 0
    n_layers = len(sizes) - 1
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        W = w[:, off : off + a * b].view(g, a, b)  # (G, a, b)
        off += a * b
        out = torch.bmm(out, W)  # (G, B, b)
        if has_bias:
            out = out + w[:, off : off + b].unsqueeze(1)  # (G, 1, b)
            off += b
        if i < n_layers - 1:
            out = act(out)
    return out


def _levels_plan(
    graph: Data,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per level >= 1: (edge ids into it, their local dst, its neuron ids, is-output mask).

    Cached on the graph (structure only, :func:`gnca.graph.cached`).
    """
    return cached(graph, ("levels",), lambda: _build_levels_plan(graph))


def _build_levels_plan(
    graph: Data,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    lvl = graph.neuron_level
    kind = graph.neuron_kind
    computed = (kind != INPUT) & (kind != BIAS)
    dst_level = lvl[graph.dst]
    plan = []
    n = total_neurons(graph)
    local = torch.full((n,), -1, dtype=torch.long, device=lvl.device)
    for level in torch.unique(lvl[computed]).tolist():
        neurons = torch.nonzero(computed & (lvl == level)).flatten()
        local = local.index_put((neurons,), torch.arange(len(neurons), device=lvl.device))
        edges = torch.nonzero(dst_level == level).flatten()
        plan.append((edges, local[graph.dst[edges]], neurons, kind[neurons] == OUTPUT))
    return plan


def _general_forward(
    graph: Data, w: torch.Tensor, X: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Level-by-level evaluation of any DAG; neuron values ``A`` are ``(N, B)``."""
    g, b, _ = X.shape
    n = total_neurons(graph)
    dtype = w.dtype
    A = torch.zeros(n, b, dtype=dtype, device=w.device)
    A = A.index_put((graph.input_index,), X.to(dtype).transpose(1, 2).reshape(-1, b))
    bias_neurons = torch.nonzero(graph.neuron_kind == BIAS).flatten()
    if bias_neurons.numel():
        A = A.index_put(
            (bias_neurons,), torch.ones(len(bias_neurons), b, dtype=dtype, device=w.device)
        )
    for edges, local_dst, neurons, is_out in _levels_plan(graph):
        contrib = w[edges].unsqueeze(1) * A[graph.src[edges]]  # (E_l, B)
        z = A.new_zeros(len(neurons), b).index_add(0, local_dst, contrib)  # (N_l, B)
        vals = torch.where(is_out.unsqueeze(1), z, act(z))
        A = A.index_put((neurons,), vals)
    n_out = graph.output_index.numel() // g
    return A[graph.output_index].view(g, n_out, b).transpose(1, 2)  # (G, B, n_out)
