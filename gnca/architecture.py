"""Feedforward architectures as directed acyclic graphs of neurons.

An :class:`Architecture` is a set of neurons (inputs, hidden, outputs and, optionally, one bias
source per non-input neuron) joined by weights, the directed edges ``u -> v`` of a DAG. It is a
plain, validated description: tensors for growing and evaluating task nets are built from it by
:class:`gnca.WeightGraph`.

Biases are weights like any other. With ``bias=True`` every non-input neuron ``v`` gets a private
*bias neuron* ``b_v`` whose value is always 1 and one weight ``b_v -> v``. A bias is therefore a
cell of the weight graph with its own hidden state, and its neighbourhood is formed exactly as for
the other weights (``b_v`` has no other edges).

Neuron ids are ``0 .. num_neurons - 1``. Weight ids are positions in :attr:`Architecture.edges`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: ``tracer(module, example_input)``: set by :mod:`gnca.layers` (which builds on this module).
MODULE_TRACER: Any = None

# Neuron kinds, stored per neuron in ``Architecture.kinds``.
INPUT, HIDDEN, OUTPUT, BIAS = 0, 1, 2, 3
KIND_NAMES = ("input", "hidden", "output", "bias")


def _check_int_list(name: str, values: object) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of ints, got {type(values).__name__}")
    out = list(values)
    for x in out:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
            raise TypeError(f"{name} must contain ints, got {x!r} ({type(x).__name__})")
    return [int(x) for x in out]


@dataclass(frozen=True, eq=False)
class Architecture:
    """A validated feedforward DAG of neurons and weights.

    Use the builders :meth:`mlp`, :meth:`skip_mlp` and :meth:`from_edges`; the constructor is
    internal.

    Attributes:
        num_neurons: ``N``, including bias neurons.
        edges: ``(E, 2)`` int64 array of ``(u, v)`` weight endpoints. Weight ``e`` goes ``u -> v``.
        inputs: ``(n_in,)`` input neuron ids, in feature order.
        outputs: ``(n_out,)`` output neuron ids, in class order.
        kinds: ``(N,)`` neuron kinds (``INPUT``, ``HIDDEN``, ``OUTPUT``, ``BIAS``).
        levels: ``(N,)`` topological level: 0 for inputs and bias neurons' own level is one less
            than their neuron's; otherwise ``1 + max(level of predecessors)``.
        position: ``(N,)`` index of each neuron among the non-bias neurons of its level (inputs
            and outputs: their order in ``inputs`` / ``outputs``); bias neurons take their target
            neuron's position.
        level_size: ``(N,)`` number of non-bias neurons on the neuron's level (outputs: ``n_out``).
        is_bias_weight: ``(E,)`` bool, weights leaving a bias neuron.
        mlp_sizes: layer sizes when the architecture is a plain MLP built by :meth:`mlp` (its
            weights then follow the dense layout used by the fast forward path), else ``None``.
        input_shape: ``(H, W)`` when the inputs are the pixels of an image (row-major), else None.
    """

    num_neurons: int
    edges: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray
    kinds: np.ndarray
    levels: np.ndarray = field(repr=False)
    position: np.ndarray = field(repr=False)
    level_size: np.ndarray = field(repr=False)
    is_bias_weight: np.ndarray = field(repr=False)
    mlp_sizes: tuple[int, ...] | None = None
    input_shape: tuple[int, int] | None = None

    # ------------------------------------------------------------------ builders
    @staticmethod
    def from_module(module: Any, example_input: Any) -> Any:
        """The :class:`gnca.layers.LayerNet` of a ``torch.nn.Module`` (conv layers, residual
        adds, pooling; traced with torch.fx on ``example_input``, a batch ``(B, *in_shape)``).
        It stands wherever an architecture does: :meth:`gnca.WeightGraph.from_architecture`,
        growing, meta-training; ``read_weights(module)`` / ``write_weights(module, w)`` move
        its ``(E,)`` weights in and out of the module. (:mod:`gnca.layers`, which sits above
        this module, registers the tracer when gnca is imported.)"""
        if MODULE_TRACER is None:
            raise RuntimeError("import gnca (or gnca.layers) to trace modules")
        return MODULE_TRACER(module, example_input)

    @classmethod
    def from_edges(
        cls,
        edges: Sequence[tuple[int, int]],
        inputs: Sequence[int],
        outputs: Sequence[int],
        *,
        bias: bool = False,
        input_shape: tuple[int, int] | None = None,
    ) -> Architecture:
        """Build an architecture from an explicit edge list.

        Args:
            edges: ``(u, v)`` pairs of neuron ids; every id in ``0 .. max id`` that appears in
                ``edges``, ``inputs`` or ``outputs`` becomes a neuron. Ids need not be
                contiguous: they are relabelled to ``0 .. N-1`` in increasing order.
            inputs: input neuron ids (feature order).
            outputs: output neuron ids (class order).
            bias: add one bias weight to every hidden and output neuron.
            input_shape: ``(H, W)`` when the ``H * W`` inputs are image pixels, row-major.

        Raises:
            ValueError: cycles, duplicate edges, self loops, edges into inputs or out of
                outputs, neurons that are both input and output, hidden neurons not reachable
                from an input or not reaching an output, isolated neurons.
            TypeError: ids that are not ints.
        """
        inputs_l = _check_int_list("inputs", inputs)
        outputs_l = _check_int_list("outputs", outputs)
        if isinstance(edges, np.ndarray):
            if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
                raise TypeError(f"edges array must be (E, 2) ints, got {edges.dtype} {edges.shape}")
            arr = edges.astype(np.int64)
        else:
            pairs: list[tuple[int, int]] = []
            for e in edges:
                if isinstance(e, (str, bytes)) or not isinstance(e, Iterable):
                    raise TypeError(f"each edge must be a (u, v) pair of ints, got {e!r}")
                pair = _check_int_list("edge", e)
                if len(pair) != 2:
                    raise ValueError(f"each edge must be a (u, v) pair, got {tuple(e)!r}")
                pairs.append((pair[0], pair[1]))
            arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        if not inputs_l:
            raise ValueError("an architecture needs at least one input neuron")
        if not outputs_l:
            raise ValueError("an architecture needs at least one output neuron")
        if len(arr) == 0:
            raise ValueError("an architecture needs at least one edge")
        for name, ids_l in (("inputs", inputs_l), ("outputs", outputs_l)):
            if len(set(ids_l)) != len(ids_l):
                dup = sorted({i for i in ids_l if ids_l.count(i) > 1})
                raise ValueError(f"duplicate neuron ids in {name}: {dup}")
        both = sorted(set(inputs_l) & set(outputs_l))
        if both:
            raise ValueError(f"neurons {both} are both inputs and outputs")
        inp_a = np.array(inputs_l, dtype=np.int64)
        out_a = np.array(outputs_l, dtype=np.int64)
        names = np.unique(np.concatenate([arr.ravel(), inp_a, out_a]))
        if names[0] < 0:
            raise ValueError(f"neuron ids must be non-negative, got {names[0]}")
        n = len(names)
        src = np.searchsorted(names, arr[:, 0])
        dst = np.searchsorted(names, arr[:, 1])
        inp = np.searchsorted(names, inp_a)
        out = np.searchsorted(names, out_a)
        _validate(n, src, dst, inp, out, names)
        return cls._build(n, src, dst, inp, out, bias=bias, input_shape=input_shape)

    @classmethod
    def mlp(
        cls,
        sizes: Sequence[int],
        *,
        bias: bool = True,
        input_shape: tuple[int, int] | None = None,
    ) -> Architecture:
        """A fully connected multilayer perceptron.

        Weights are laid out layer by layer; within layer ``l`` the weight from neuron ``i`` of
        layer ``l`` to neuron ``j`` of layer ``l + 1`` has index ``offset_l + i * sizes[l+1] + j``
        and, with ``bias=True``, the layer's ``sizes[l+1]`` biases follow it. This layout lets
        :func:`gnca.task_forward` use dense batched matmuls.

        Args:
            sizes: neurons per layer, inputs first, outputs last, e.g. ``[4, 16, 3]``.
            bias: add a bias weight to every hidden and output neuron.
            input_shape: ``(H, W)`` when the inputs are the pixels of an image.
        """
        sizes_l = _check_int_list("sizes", sizes)
        if len(sizes_l) < 2:
            raise ValueError(f"an MLP needs at least 2 layer sizes, got {sizes_l}")
        bad = [i for i, s in enumerate(sizes_l) if s <= 0]
        if bad:
            raise ValueError(
                f"MLP layer sizes must be positive; layer {bad[0]} has {sizes_l[bad[0]]}"
            )
        starts = np.cumsum([0] + sizes_l)
        n = int(starts[-1])
        srcs, dsts, is_b = [], [], []
        bias_ids = n
        for l_idx in range(len(sizes_l) - 1):
            a, b = sizes_l[l_idx], sizes_l[l_idx + 1]
            u = np.repeat(np.arange(a), b) + starts[l_idx]
            v = np.tile(np.arange(b), a) + starts[l_idx + 1]
            srcs.append(u)
            dsts.append(v)
            is_b.append(np.zeros(a * b, dtype=bool))
            if bias:
                srcs.append(np.arange(b) + bias_ids)
                dsts.append(np.arange(b) + starts[l_idx + 1])
                is_b.append(np.ones(b, dtype=bool))
                bias_ids += b
        src = np.concatenate(srcs).astype(np.int64)
        dst = np.concatenate(dsts).astype(np.int64)
        inp = np.arange(sizes_l[0], dtype=np.int64)
        out = np.arange(starts[-2], starts[-1], dtype=np.int64)
        return cls._build(
            bias_ids,
            src,
            dst,
            inp,
            out,
            input_shape=input_shape,
            is_b=np.concatenate(is_b),
            mlp_sizes=tuple(sizes_l),
        )

    @classmethod
    def skip_mlp(
        cls,
        sizes: Sequence[int],
        *,
        skip: int = 2,
        bias: bool = True,
        input_shape: tuple[int, int] | None = None,
    ) -> Architecture:
        """An MLP whose layer ``l`` is also fully connected to every layer up to ``l + skip``.

        ``skip=1`` is a plain MLP (in the general, not the dense, weight layout); ``skip=2`` adds
        connections that jump over one layer, and so on (DenseNet-style when ``skip`` is large).
        """
        sizes_l = _check_int_list("sizes", sizes)
        if len(sizes_l) < 2 or any(s <= 0 for s in sizes_l):
            raise ValueError(f"skip_mlp needs at least 2 positive layer sizes, got {sizes_l}")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
            raise ValueError(f"skip must be a positive int, got {skip!r}")
        starts = np.cumsum([0] + sizes_l)
        blocks = []
        for a in range(len(sizes_l) - 1):
            for b in range(a + 1, min(a + skip, len(sizes_l) - 1) + 1):
                u = np.repeat(np.arange(sizes_l[a]), sizes_l[b]) + starts[a]
                v = np.tile(np.arange(sizes_l[b]), sizes_l[a]) + starts[b]
                blocks.append(np.stack([u, v], axis=1))
        edges = np.concatenate(blocks).astype(np.int64)
        inputs = list(range(sizes_l[0]))
        outputs = list(range(int(starts[-2]), int(starts[-1])))
        return cls.from_edges(edges, inputs, outputs, bias=bias, input_shape=input_shape)

    # ------------------------------------------------------------------ internals
    @classmethod
    def _build(
        cls,
        n: int,
        src: np.ndarray,
        dst: np.ndarray,
        inp: np.ndarray,
        out: np.ndarray,
        *,
        input_shape: tuple[int, int] | None,
        bias: bool = False,
        is_b: np.ndarray | None = None,
        mlp_sizes: tuple[int, ...] | None = None,
    ) -> Architecture:
        """The architecture of ``n`` neurons and the weights ``src -> dst``. ``is_b`` marks the
        bias weights where the caller laid them out (:meth:`mlp`); without it, ``bias`` appends
        one bias weight (a new neuron) for every neuron that is not an input."""
        if is_b is None:
            is_b = np.zeros(len(src), dtype=bool)
            if bias:
                is_input = np.zeros(n, dtype=bool)
                is_input[inp] = True
                targets = np.flatnonzero(~is_input)
                b_ids = np.arange(n, n + len(targets), dtype=np.int64)
                src = np.concatenate([src, b_ids])
                dst = np.concatenate([dst, targets])
                is_b = np.concatenate([is_b, np.ones(len(targets), dtype=bool)])
                n = n + len(targets)
        if input_shape is not None and int(np.prod(input_shape)) != len(inp):
            raise ValueError(f"input_shape {tuple(input_shape)} does not match {len(inp)} inputs")
        kinds = np.full(n, HIDDEN, dtype=np.int64)
        kinds[np.unique(src[is_b])] = BIAS
        kinds[inp] = INPUT
        kinds[out] = OUTPUT
        levels = _levels(n, src, dst, is_b)
        position = np.zeros(n, dtype=np.int64)
        level_size = np.zeros(n, dtype=np.int64)
        nonbias = kinds != BIAS
        for lv in np.unique(levels[nonbias]):
            members = np.flatnonzero((levels == lv) & nonbias & (kinds == HIDDEN))
            position[members] = np.arange(len(members))
            level_size[members] = len(members)
        position[inp] = np.arange(len(inp))
        level_size[inp] = len(inp)
        position[out] = np.arange(len(out))
        level_size[out] = len(out)
        bsrc, bdst = src[is_b], dst[is_b]
        position[bsrc] = position[bdst]
        level_size[bsrc] = level_size[bdst]
        edges = np.stack([src, dst], axis=1).astype(np.int64)
        for a in (edges, inp, out, kinds, levels, position, level_size, is_b):
            a.setflags(write=False)
        return cls(
            num_neurons=int(n),
            edges=edges,
            inputs=inp,
            outputs=out,
            kinds=kinds,
            levels=levels,
            position=position,
            level_size=level_size,
            is_bias_weight=is_b,
            mlp_sizes=mlp_sizes,
            input_shape=None if input_shape is None else (int(input_shape[0]), int(input_shape[1])),
        )

    # ------------------------------------------------------------------ views
    @property
    def num_weights(self) -> int:
        """``E``, the number of weights (bias weights included)."""
        return int(self.edges.shape[0])

    @property
    def num_inputs(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_outputs(self) -> int:
        return int(self.outputs.shape[0])

    @property
    def depth(self) -> int:
        """Largest neuron level (1 for a linear model, 2 for one hidden layer)."""
        return int(self.levels.max())

    def describe(self) -> str:
        """A short human-readable name, e.g. ``mlp 4-16-3 (+bias)`` or ``dag 12 neurons``."""
        nb = " (+bias)" if self.is_bias_weight.any() else ""
        if self.mlp_sizes is not None:
            return "mlp " + "-".join(str(s) for s in self.mlp_sizes) + nb
        n_real = int((self.kinds != BIAS).sum())
        return f"dag {n_real} neurons, {int((~self.is_bias_weight).sum())} weights{nb}"

    def __repr__(self) -> str:
        return (
            f"Architecture({self.describe()}, neurons={self.num_neurons}, "
            f"weights={self.num_weights}, depth={self.depth})"
        )

    def key(self) -> tuple:
        """A hashable identity: two architectures with equal keys have identical structure."""
        return (
            self.num_neurons,
            self.edges.tobytes(),
            self.inputs.tobytes(),
            self.outputs.tobytes(),
            self.mlp_sizes,
            self.input_shape,
        )


def _validate(
    n: int, src: np.ndarray, dst: np.ndarray, inp: np.ndarray, out: np.ndarray, names: np.ndarray
) -> None:
    """Raise ``ValueError`` naming the offending neurons/edges (in the user's ids)."""
    loops = src == dst
    if loops.any():
        k = int(np.flatnonzero(loops)[0])
        raise ValueError(f"self loop on neuron {names[src[k]]}")
    key = src * n + dst
    uniq, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        k = uniq[counts > 1][0]
        raise ValueError(f"duplicate edge ({names[k // n]}, {names[k % n]})")
    into_inp = np.isin(dst, inp)
    if into_inp.any():
        k = int(np.flatnonzero(into_inp)[0])
        raise ValueError(
            f"edge ({names[src[k]]}, {names[dst[k]]}) goes into input neuron {names[dst[k]]}"
        )
    from_out = np.isin(src, out)
    if from_out.any():
        k = int(np.flatnonzero(from_out)[0])
        raise ValueError(
            f"edge ({names[src[k]]}, {names[dst[k]]}) leaves output neuron {names[src[k]]}"
        )
    order = _topological_order(n, src, dst)
    if order is None:
        raise ValueError(
            f"the architecture has a cycle through neurons {_find_cycle(n, src, dst, names)}"
        )
    fwd = _reachable(n, src, dst, inp)
    bwd = _reachable(n, dst, src, out)
    is_io = np.zeros(n, dtype=bool)
    is_io[inp] = True
    is_io[out] = True
    bad_f = np.flatnonzero(~fwd & ~is_io)
    if len(bad_f):
        raise ValueError(
            f"hidden neurons {names[bad_f].tolist()[:10]} are not reachable from any input"
        )
    bad_b = np.flatnonzero(~bwd & ~is_io)
    if len(bad_b):
        raise ValueError(f"hidden neurons {names[bad_b].tolist()[:10]} do not reach any output")
    unused_in = [int(i) for i in inp if not bwd[i]]
    if unused_in:
        raise ValueError(f"input neurons {names[unused_in].tolist()[:10]} do not reach any output")
    dead_out = [int(o) for o in out if not fwd[o]]
    if dead_out:
        raise ValueError(
            f"output neurons {names[dead_out].tolist()[:10]} are not reachable from any input"
        )


def _topological_order(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    indeg = np.bincount(dst, minlength=n)
    order = np.argsort(src, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    succ = dst[order]
    stack = list(np.flatnonzero(indeg == 0))
    out = []
    indeg = indeg.copy()
    while stack:
        u = stack.pop()
        out.append(u)
        for v in succ[ptr[u] : ptr[u + 1]]:
            indeg[v] -= 1
            if indeg[v] == 0:
                stack.append(v)
    return np.array(out, dtype=np.int64) if len(out) == n else None


def _find_cycle(n: int, src: np.ndarray, dst: np.ndarray, names: np.ndarray) -> list[int]:
    adj: list[list[int]] = [[] for _ in range(n)]
    for u, v in zip(src.tolist(), dst.tolist(), strict=True):
        adj[u].append(v)
    color = [0] * n
    for start in range(n):
        if color[start]:
            continue
        stack = [(start, iter(adj[start]))]
        path = [start]
        color[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = 2
                stack.pop()
                path.pop()
            elif color[nxt] == 1:
                cyc = path[path.index(nxt) :] + [nxt]
                return [int(names[c]) for c in cyc]
            elif color[nxt] == 0:
                color[nxt] = 1
                stack.append((nxt, iter(adj[nxt])))
                path.append(nxt)
    return []


def _reachable(n: int, src: np.ndarray, dst: np.ndarray, start: np.ndarray) -> np.ndarray:
    seen = np.zeros(n, dtype=bool)
    seen[start] = True
    frontier = seen.copy()
    while frontier.any():
        nxt = np.zeros(n, dtype=bool)
        nxt[dst[frontier[src]]] = True
        nxt &= ~seen
        seen |= nxt
        frontier = nxt
    return seen


def _levels(n: int, src: np.ndarray, dst: np.ndarray, is_b: np.ndarray) -> np.ndarray:
    """Longest-path levels from the sources, ignoring bias edges; bias neurons sit one below."""
    real = ~is_b
    s, d = src[real], dst[real]
    order = _topological_order(n, s, d)
    assert order is not None
    level = np.zeros(n, dtype=np.int64)
    # process edges grouped by source in topological order
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    eorder = np.argsort(pos[s], kind="stable")
    for u, v in zip(s[eorder].tolist(), d[eorder].tolist(), strict=True):
        if level[u] + 1 > level[v]:
            level[v] = level[u] + 1
    level[src[is_b]] = level[dst[is_b]] - 1
    return level
