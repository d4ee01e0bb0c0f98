"""The weight graph: one node per weight of a task network, batched with torch-geometric.

Each weight ``e = u -> v`` of an :class:`~gnca.Architecture` is a node of a
:class:`WeightGraph`. Its two endpoint neurons are stored per node (``src``, ``dst``); every
neighbourhood of the line graph is a union of a neuron's in-weights and out-weights, so the
perception can be computed from these two vectors alone in ``O(E)`` (see :mod:`gnca.perception`).
The explicit line-graph ``edge_index`` can still be materialised with
:func:`line_graph_edge_index` for the reference path and for aggregations that do not factor.

Batching uses torch-geometric's :class:`~torch_geometric.data.Batch`: ``src``, ``dst``,
``input_index`` and ``output_index`` are neuron ids and are incremented by the number of neurons
of the preceding graphs; ``edge_index*`` attributes are weight ids and are incremented by the
number of weights; neuron-level tensors are concatenated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from gnca.architecture import Architecture

T = TypeVar("T")

_NEURON_INDEX_KEYS = ("src", "dst", "input_index", "output_index")

#: Which neuron-side weight sets form each relation: (forward sources, backward sources).
#: ``"in"``/``"out"`` are the in-/out-weights of the head neuron ``v`` (forward) or of the
#: tail neuron ``u`` (backward). A weight ``u -> v`` is always in ``in(v)`` and ``out(u)``.
NEIGHBOURHOODS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "incident": (("in", "out"), ("in", "out")),
    "directed": (("out",), ("in",)),
    "sibling": (("in",), ("out",)),
}


def check_neighbourhood(name: str) -> None:
    if name not in NEIGHBOURHOODS:
        raise ValueError(
            f"unknown neighbourhood {name!r}; choose one of {', '.join(NEIGHBOURHOODS)}"
        )


class WeightGraph(Data):
    """A task network's weights as the nodes of a graph (a torch-geometric ``Data``).

    Build with :meth:`from_architecture`; batch with :meth:`batch`.

    Node (weight) attributes, ``E`` weights:
        src, dst: ``(E,)`` int64 neuron ids of each weight's tail ``u`` and head ``v``.
        is_bias: ``(E,)`` bool, bias weights.
        fan_in: ``(E,)`` float, number of non-bias weights into ``dst`` (for initialisation).

    Neuron attributes, ``N`` neurons:
        neuron_level: ``(N,)`` topological level; neuron_kind: ``(N,)`` kind code;
        neuron_position / neuron_level_size: ``(N,)`` index within / size of its level.

    Per graph:
        input_index: ``(n_in,)`` input neuron ids; output_index: ``(n_out,)`` output ids;
        num_neurons_per_graph: ``(1,)`` (``(G,)`` once batched); num_weights_per_graph: same.
        arch_key: structural identity, an int (``(G,)`` tensor once batched);
        mlp_sizes, input_shape: tuples from the architecture, ``()`` when absent (lists of
        tuples once batched); depth: int (``(G,)`` tensor once batched).
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in _NEURON_INDEX_KEYS:
            return int(self.num_neurons_per_graph.sum())
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in _NEURON_INDEX_KEYS:
            return 0
        return super().__cat_dim__(key, value, *args, **kwargs)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_architecture(
        cls, arch: Architecture, device: torch.device | str | None = None
    ) -> WeightGraph:
        """The weight graph of one architecture.

        Args:
            arch: the task network's architecture.
            device: where to put the tensors (default CPU).
        """
        layer_graph = getattr(arch, "layer_graph", None)
        if layer_graph is not None:  # a layer net: units instead of neurons (gnca/layers.py)
            return layer_graph(device)
        if not isinstance(arch, Architecture):
            raise TypeError(f"expected an Architecture, got {type(arch).__name__}")
        e = arch.edges
        nonbias_in = np.bincount(e[~arch.is_bias_weight, 1], minlength=arch.num_neurons)
        return cls.of(
            arch,
            src=e[:, 0],
            dst=e[:, 1],
            is_bias=arch.is_bias_weight,
            fan_in=np.maximum(nonbias_in[e[:, 1]], 1),
            kinds=arch.kinds,
            levels=arch.levels,
            inputs=arch.inputs,
            outputs=arch.outputs,
            device=device,
            neuron_position=torch.as_tensor(arch.position.copy()),
            neuron_level_size=torch.as_tensor(arch.level_size.copy()),
        )

    @classmethod
    def of(
        cls,
        arch: Any,
        *,
        src: np.ndarray,
        dst: np.ndarray,
        is_bias: np.ndarray,
        fan_in: np.ndarray,
        kinds: np.ndarray,
        levels: np.ndarray,
        inputs: np.ndarray,
        outputs: np.ndarray,
        device: torch.device | str | None = None,
        **extra: Any,
    ) -> WeightGraph:
        """The graph of one net from its weights' tail and head neurons (or units) ``src``,
        ``dst`` ``(E,)``, bias flags and fan-ins ``(E,)``, its neurons' kinds and levels
        ``(N,)`` and input and output ids; ``arch`` gives its counts, key, depth and shapes;
        ``extra`` attributes are stored as given."""
        g = cls(
            num_nodes=arch.num_weights,
            src=torch.as_tensor(np.array(src, dtype=np.int64)),
            dst=torch.as_tensor(np.array(dst, dtype=np.int64)),
            is_bias=torch.as_tensor(np.array(is_bias, dtype=bool)),
            fan_in=torch.as_tensor(fan_in, dtype=torch.float32),
            neuron_level=torch.as_tensor(np.array(levels, dtype=np.int64)),
            neuron_kind=torch.as_tensor(np.array(kinds, dtype=np.int64)),
            input_index=torch.as_tensor(np.array(inputs, dtype=np.int64)),
            output_index=torch.as_tensor(np.array(outputs, dtype=np.int64)),
            num_neurons_per_graph=torch.tensor([arch.num_neurons]),
            num_weights_per_graph=torch.tensor([arch.num_weights]),
            arch_key=hash(arch.key()),
            mlp_sizes=tuple(arch.mlp_sizes or ()),
            input_shape=tuple(arch.input_shape or ()),
            depth=arch.depth,
            **extra,
        )
        return g.to(device) if device is not None else g

    @staticmethod
    def collate(graphs: Sequence[WeightGraph]) -> Batch:
        """Batch weight graphs (same or different architectures) into one disjoint graph.

        The result has ``batch`` ``(E_total,)`` giving each weight's graph and ``num_graphs``.
        """
        if len(graphs) == 0:
            raise ValueError("cannot batch an empty list of weight graphs")
        return Batch.from_data_list(list(graphs))

    @classmethod
    def replicate(
        cls,
        arch: Architecture,
        copies: int,
        device: torch.device | str | None = None,
    ) -> Batch:
        """``copies`` task nets of one architecture, batched (weights graph-major:
        weight ``e`` of copy ``g`` is node ``g * E + e``)."""
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        one = cls.from_architecture(arch)
        out = cls.collate([one] * copies)
        return out.to(device) if device is not None else out


# ---------------------------------------------------------------------- helpers
def num_graphs(graph: Data) -> int:
    """Number of task nets in ``graph`` (1 for an unbatched ``WeightGraph``)."""
    return int(graph.num_neurons_per_graph.numel())


def total_neurons(graph: Data) -> int:
    """Total number of neurons ``N`` over all graphs in ``graph``."""
    return int(graph.num_neurons_per_graph.sum())


def weight_batch(graph: Data) -> torch.Tensor:
    """``(E,)`` graph id of each weight."""
    b = getattr(graph, "batch", None)
    if b is not None:
        return b
    return torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.src.device)


def structure_cache(graph: Data) -> dict:
    """The one store of structure-only tensors derived from ``graph`` (plans of the perception,
    the forward pass's levels, the materialised line graphs).

    It lives on the graph object (outside PyG's attribute store, so batching and ``.to()`` never
    copy it) and is keyed by what each entry depends on, plus the graph's device.
    """
    store = graph.__dict__.get("_gnca_structure")
    if store is None:
        store = graph.__dict__["_gnca_structure"] = {}
    return store


def cached(graph: Data, key: tuple, build: Callable[[], T]) -> T:
    """``build()`` computed once per ``graph``, ``key`` and device (see :func:`structure_cache`)."""
    store = structure_cache(graph)
    full = (*key, str(graph.src.device))
    if full not in store:
        store[full] = build()
    return store[full]


def same_architecture(graph: Data) -> bool:
    """True when every graph in the batch has the same structure."""
    keys = graph.arch_key
    if isinstance(keys, torch.Tensor) and keys.dim() > 0:
        return bool((keys == keys[0]).all())
    return True


def per_graph_attr(graph: Data, name: str) -> list[Any]:
    """A per-graph tuple attribute (``mlp_sizes``, ``input_shape``) as a list over graphs,
    ``None`` where the tuple is empty."""
    v = getattr(graph, name)
    vals = v if isinstance(graph, Batch) else [v]
    return [tuple(x) if len(x) else None for x in vals]


def common_attr(graph: Data, name: str) -> Any:
    """The value of a per-graph tuple attribute when all graphs agree, else ``None``."""
    vals = per_graph_attr(graph, name)
    return vals[0] if all(x == vals[0] for x in vals) else None


# ---------------------------------------------------------------------- line graph
def relation_pair_count(graph: Data, neighbourhood: str = "incident") -> tuple[int, int]:
    """Number of (forward, backward) line-graph edges :func:`line_graph_edge_index` would make,
    self pairs excluded, computed in ``O(N + E)`` without building anything."""
    check_neighbourhood(name=neighbourhood)
    n = total_neurons(graph)
    deg_in = torch.bincount(graph.dst, minlength=n)
    deg_out = torch.bincount(graph.src, minlength=n)
    deg = {"in": deg_in, "out": deg_out}
    counts = []
    fwd, bwd = NEIGHBOURHOODS[neighbourhood]
    for targets, sources in ((deg_in, fwd), (deg_out, bwd)):
        s = sum(deg[k] for k in sources)
        # self pairs exist when the target set (in(v) or out(u)) is among the sources
        own = int(targets is deg_in and "in" in sources) + int(
            targets is deg_out and "out" in sources
        )
        counts.append(int((targets.double() * s.double()).sum().item()) - own * int(targets.sum()))
    return counts[0], counts[1]


def line_graph_edge_index(
    graph: Data,
    neighbourhood: str = "incident",
    *,
    include_self: bool = False,
    max_edges: int | None = 200_000_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise the forward and backward relations of the weight line graph.

    Messages flow from a neighbour to the weight: column ``(k, w)`` of the returned
    ``edge_index`` means weight ``k`` is in ``N_f(w)`` (or ``N_b(w)``).

    ====================  ==============================  ===============================
    neighbourhood         ``N_f(u -> v)``                 ``N_b(u -> v)``
    ====================  ==============================  ===============================
    ``incident``          ``in(v) ∪ out(v)`` minus self   ``in(u) ∪ out(u)`` minus self
    ``directed``          ``out(v)``                      ``in(u)``
    ``sibling``           ``in(v)`` minus self            ``out(u)`` minus self
    ====================  ==============================  ===============================

    With ``include_self=True`` every weight is also its own forward and backward neighbour.

    Args:
        graph: a :class:`WeightGraph` or a batch of them.
        neighbourhood: ``"incident"``, ``"directed"`` or ``"sibling"``.
        include_self: add ``(w, w)`` to both relations.
        max_edges: refuse (``MemoryError`` with the count) when either relation would have more
            edges than this; ``None`` for no limit.

    Returns:
        ``(edge_index_f, edge_index_b)``, each ``(2, M)`` int64, sorted by target weight.
    """
    check_neighbourhood(neighbourhood)
    n_f, n_b = relation_pair_count(graph, neighbourhood)
    if max_edges is not None and max(n_f, n_b) > max_edges:
        raise MemoryError(
            f"the {neighbourhood} line graph would have {n_f:,} forward and {n_b:,} backward "
            f"edges (limit {max_edges:,}); use the O(E) fast path instead"
        )
    fwd, bwd = NEIGHBOURHOODS[neighbourhood]
    n = total_neurons(graph)
    ends = {"in": graph.dst, "out": graph.src}
    ei_f = _relation(ends, graph.dst, fwd, n, include_self)
    ei_b = _relation(ends, graph.src, bwd, n, include_self)
    return ei_f, ei_b


def _relation(
    ends: dict[str, torch.Tensor],
    target_end: torch.Tensor,
    sources: tuple[str, ...],
    n: int,
    include_self: bool,
) -> torch.Tensor:
    """All pairs (k, w) where k's ``sources`` endpoint equals w's ``target_end`` neuron."""
    device = target_end.device
    e = target_end.numel()
    weights = torch.arange(e, device=device)
    src_ids = torch.cat([weights] * len(sources))  # (S,) candidate neighbour weights
    src_neuron = torch.cat([ends[k] for k in sources])  # (S,) the neuron they share
    order = torch.argsort(src_neuron, stable=True)
    src_ids, src_neuron = src_ids[order], src_neuron[order]
    counts = torch.bincount(src_neuron, minlength=n)  # (N,) neighbours offered per neuron
    ptr = torch.cumsum(counts, 0) - counts  # (N,) start of each neuron's block
    per_target = counts[target_end]  # (E,) neighbours of each weight
    tgt = torch.repeat_interleave(weights, per_target)  # (M,)
    starts = torch.repeat_interleave(ptr[target_end], per_target)
    offsets = torch.arange(tgt.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(per_target, 0) - per_target, per_target
    )
    nbr = src_ids[starts + offsets]
    keep = nbr != tgt
    tgt, nbr = tgt[keep], nbr[keep]
    if include_self:
        tgt = torch.cat([tgt, weights])
        nbr = torch.cat([nbr, weights])
        order = torch.argsort(tgt, stable=True)
        tgt, nbr = tgt[order], nbr[order]
    return torch.stack([nbr, tgt])
