"""The perception vector of every weight, in ``O(E)``, without building the line graph.

For weight ``w = u -> v`` with hidden state ``h`` (the paper's formula)::

    p(w) = [w, h, agg_{N_f(w)} w, agg_{N_f(w)} h, agg_{N_b(w)} w, agg_{N_b(w)} h]   # (3 + 3C,)

Every neighbourhood in :data:`gnca.graph.NEIGHBOURHOODS` is a union of a neuron's in-weights and
out-weights (minus the weight itself), so each aggregate is computed by two scatters: weights to
neurons (a sum of ``[w, h]`` per neuron over its in-weights and over its out-weights), then
neurons back to weights (a gather at ``v`` for the forward relation, at ``u`` for the backward
one), subtracting the weight's own contribution where the neighbourhood excludes it. Counts
depend on the structure only and are cached on the graph (:func:`gnca.graph.cached`). An empty
neighbourhood aggregates to 0.

Every count depends on one neuron only (``v`` for the forward relation, ``u`` for the backward
one), so the mean's ``1 / count`` is applied on the neuron side. The scatter to the neurons is a
product with a constant sparse matrix, and the gather back is a single ``index_select`` that writes
the whole ``(E, 3, 1 + C)`` perception (its first slot reads a zero row), followed by one fused
``addcmul`` that puts ``x`` in the first slot and the weight's own correction in the other two.
Both have hand-written backwards through cached CSR transposes (autograd's own backward of a
gather is an ``index_add`` that sorts its indices at every call). The structure
(:func:`sparse_plan`, built with :func:`csr_matrix`) and the constant sparse product
(:class:`FixedSparseMM`) are public: :mod:`gnca.factored` builds on them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch_geometric.data import Data

from gnca.graph import NEIGHBOURHOODS, cached, check_neighbourhood, total_neurons

_Plan = TypeVar("_Plan")

REDUCTIONS = ("mean", "sum")

#: dtypes for which the fast path uses sparse CSR products (others use ``index_add``).
_SPARSE_DTYPES = (torch.float32, torch.float64)


def check_state(w: torch.Tensor, h: torch.Tensor, graph: Data) -> None:
    """Raise a ValueError unless ``w`` is ``(E,)`` and ``h`` is ``(E, C)`` for ``graph``."""
    e = graph.src.numel()
    if w.dim() != 1 or w.shape[0] != e:
        raise ValueError(f"w must have shape ({e},) for this graph, got {tuple(w.shape)}")
    if h.dim() != 2 or h.shape[0] != e:
        raise ValueError(f"h must have shape ({e}, C) for this graph, got {tuple(h.shape)}")


def _cached_plan(name: str, build: Callable[..., _Plan], graph: Data, *options: Any) -> _Plan:
    """``build(graph, *options)``, computed once per ``graph`` and ``(name, *options)``."""
    return cached(graph, (name, *options), lambda: build(graph, *options))


def neuron_plan(
    graph: Data, neighbourhood: str, include_self: bool, reduce: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Structure-only tensors of the fast path, cached on ``graph`` per option set and dtype.

    Every count depends on one neuron only (``v`` for the forward relation, ``u`` for the
    backward one), so the mean's ``1 / count`` is applied to the ``(N, 1 + C)`` neuron sums, and
    the weight's own term ``x_w`` is removed (or added) with a per-weight coefficient.

    Returns:
        index: ``(3E,)`` rows of ``[0; T_f; T_b]`` to gather, three per weight: the zero row
            (the slot of ``x`` itself), ``1 + v`` and ``1 + N + u``.
        coef: ``(E, 3, 1)`` multiplier of ``x_w`` per slot: ``[1, s_f, s_b]`` with
            ``s = (include_self - own) * scale``.
        scale_f, scale_b: ``(N, 1)`` per-neuron ``1 / count`` (0 when empty; 1 for ``sum``).
    """
    return _cached_plan(
        "neuron_plan", _build_neuron_plan, graph, neighbourhood, include_self, reduce, dtype
    )


def _build_neuron_plan(
    graph: Data, neighbourhood: str, include_self: bool, reduce: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = total_neurons(graph)
    deg = {
        "in": torch.bincount(graph.dst, minlength=n).double(),
        "out": torch.bincount(graph.src, minlength=n).double(),
    }
    fwd, bwd = NEIGHBOURHOODS[neighbourhood]
    scales, selfs = [], []
    for own, at, parts in (("in", graph.dst, fwd), ("out", graph.src, bwd)):
        # -1: the sums at the neuron contain the weight but it is no neighbour of itself;
        # +1: it is its own neighbour but not in the sums; 0: the sums are right as they are
        shift = int(include_self) - int(own in parts)
        count = sum(deg[p] for p in parts) + shift  # (N,)
        if reduce == "mean":
            scale = torch.where(count > 0, 1.0 / count.clamp(min=1), 0.0)
        else:
            scale = torch.ones_like(count)
        scales.append(scale.to(dtype).unsqueeze(1))
        selfs.append(shift * scale[at])
    index = torch.stack([torch.zeros_like(graph.dst), 1 + graph.dst, 1 + n + graph.src], 1)
    coef = torch.stack([torch.ones_like(selfs[0]), *selfs], 1).to(dtype).unsqueeze(2)
    return index.flatten(), coef, scales[0], scales[1]


def csr_matrix(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """A sparse CSR matrix from COO triplets (duplicates are not expected)."""
    order = torch.argsort(rows * shape[1] + cols)
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, vals, size=shape)


class FixedSparseMM(torch.autograd.Function):
    """``y = M @ x`` for a constant sparse ``M``; the backward multiplies by the cached ``M^T``
    (an explicit CSR matrix), so neither direction sorts or scatters at run time."""

    @staticmethod
    def forward(ctx: Any, m: torch.Tensor, m_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.m_t = m_t
        with torch.autocast(x.device.type, enabled=False):  # sparse products need x's dtype
            return torch.sparse.mm(m, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor | None]:
        if not ctx.needs_input_grad[2]:
            return None, None, None
        with torch.autocast(grad.device.type, enabled=False):
            return None, None, torch.sparse.mm(ctx.m_t, grad.to(ctx.m_t.dtype).contiguous())


class _GatherPerception(torch.autograd.Function):
    """``p = [0; T][index] + coef * x`` as one autograd node, written in place.

    ``table`` is ``(1 + R, D)``, ``index`` ``(3E,)``, ``x`` ``(E, D)`` and ``coef`` ``(E, 3, 1)``;
    the result is ``(E, 3D)``. The backward of the gather is a product with the cached CSR
    transpose ``g_t`` instead of autograd's ``index_add`` (which sorts the ``3E`` indices at every
    call). Compared with a gather followed by an out-of-place ``addcmul``, it saves one
    ``(E, 3D)`` tensor in the forward pass and autograd's bookkeeping around it; the gradients are
    bitwise the same.
    """

    @staticmethod
    def forward(
        ctx: Any,
        table: torch.Tensor,
        index: torch.Tensor,
        g_t: torch.Tensor,
        x: torch.Tensor,
        coef: torch.Tensor,
    ) -> torch.Tensor:
        e, d = x.shape
        ctx.g_t = g_t
        ctx.save_for_backward(coef)
        p = table.index_select(0, index).view(e, 3, d)
        return p.addcmul_(x.unsqueeze(1), coef).view(e, 3 * d)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (coef,) = ctx.saved_tensors
        e = coef.shape[0]
        grad = grad.contiguous()
        d = grad.shape[1] // 3
        grad_table = grad_x = None
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                g = grad.view(3 * e, d).to(ctx.g_t.dtype)
                grad_table = torch.sparse.mm(ctx.g_t, g)
            if ctx.needs_input_grad[3]:
                # separately rounded products summed slot by slot, as autograd's product and
                # sum for ``addcmul``'s broadcast input do (an ``addcmul`` here would fuse the
                # multiply-add and change the last bit), without the (E, 3, D) temporary
                grad_x = grad[:, :d] + grad[:, d : 2 * d] * coef[:, 1]
                grad_x += grad[:, 2 * d :] * coef[:, 2]
        return grad_table, None, None, grad_x, None


def sparse_plan(
    graph: Data, neighbourhood: str, include_self: bool, reduce: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast path's structure as sparse matrices, cached on ``graph`` (see :func:`perceive`).

    Returns:
        index: ``(3E,)`` rows of ``[0; T]`` gathered per weight: the zero row, then the rows of
            ``v`` (forward) and ``u`` (backward) in ``T``.
        coef: ``(E, 3, 1)`` multiplier of ``x_w`` per slot (as in :func:`neuron_plan`).
        a, a_t: ``(R, E)`` CSR summing the weights into the scaled neuron table ``T`` (``R = N``
            when both relations share one table, as ``incident`` does, else ``2N``) and its
            transpose.
        g_t: ``(1 + R, 3E)`` CSR transpose of the gather, for its backward.
    """
    return _cached_plan(
        "sparse_plan", _build_sparse_plan, graph, neighbourhood, include_self, reduce, dtype
    )


def _build_sparse_plan(
    graph: Data, neighbourhood: str, include_self: bool, reduce: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _, coef, scale_f, scale_b = neuron_plan(graph, neighbourhood, include_self, reduce, dtype)
    n = total_neurons(graph)
    e = graph.src.numel()
    arange = torch.arange(e, device=graph.src.device)
    ends = {"in": graph.dst, "out": graph.src}
    fwd, bwd = NEIGHBOURHOODS[neighbourhood]
    shared = fwd == bwd and torch.equal(scale_f, scale_b)
    rows, cols, vals = [], [], []
    for r, (parts, scale) in enumerate(((fwd, scale_f), (bwd, scale_b))):
        if r == 1 and shared:
            break
        for part in parts:
            rows.append(ends[part] + r * n)
            cols.append(arange)
            vals.append(scale[ends[part], 0])
    n_rows = n if shared else 2 * n
    rows_t, cols_t, vals_t = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    a = csr_matrix(rows_t, cols_t, vals_t, (n_rows, e))
    a_t = csr_matrix(cols_t, rows_t, vals_t, (e, n_rows))
    row_b = 1 + (0 if shared else n) + graph.src
    index = torch.stack([torch.zeros_like(graph.dst), 1 + graph.dst, row_b], 1).flatten()
    g_t = csr_matrix(  # slot 0 reads the zero row, which needs no gradient
        torch.cat([1 + graph.dst, row_b]),
        torch.cat([3 * arange + 1, 3 * arange + 2]),
        torch.ones(2 * e, dtype=dtype, device=graph.src.device),
        (1 + n_rows, 3 * e),
    )
    return index, coef, a, a_t, g_t


def incidence_plan(graph: Data, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``(N, E)`` CSR matrices of ones that sum the weights into each neuron: ``"in"`` over its
    in-weights (row ``v`` of weight ``u -> v``), ``"out"`` over its out-weights (row ``u``),
    cached on ``graph`` per dtype. Each row keeps its weights in index order, so a product adds
    them in the order a sequential ``index_add_`` does (see :func:`neuron_sums`)."""
    return _cached_plan("incidence_plan", _build_incidence_plan, graph, dtype)


def _build_incidence_plan(graph: Data, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    n, e = total_neurons(graph), graph.src.numel()
    cols = torch.arange(e, device=graph.src.device)
    ones = torch.ones(e, dtype=dtype, device=graph.src.device)
    return {
        k: csr_matrix(at, cols, ones, (n, e)) for k, at in (("in", graph.dst), ("out", graph.src))
    }


#: fewest weights for which :func:`neuron_sums` uses the sparse products on CPU (below it a
#: product's overhead outweighs ``index_add_``'s scattered writes; both give the same bits).
CSR_MIN_WEIGHTS = 4096


def neuron_sums(
    graph: Data, w: torch.Tensor, h: torch.Tensor, block: int
) -> dict[str, torch.Tensor]:
    """Sums of ``x = [w, h]`` over each neuron's in-weights (``"in"``) and out-weights
    (``"out"``), ``(N, 1 + C)`` each, without autograd and without the ``(E, 1 + C)`` tensor
    ``x``.

    On CPU (float32/float64, at least :data:`CSR_MIN_WEIGHTS` weights) each sum is a product
    with a cached CSR incidence matrix (:func:`incidence_plan`), several times faster than
    ``index_add_`` on wide layers; elsewhere ``index_add_`` over blocks of ``block`` weights.
    Both add every neuron's weights one by one in index order from zero, so they give the same
    bits (``tests/test_fused_step.py`` checks them against a Python loop).
    """
    e, d = w.shape[0], 1 + h.shape[1]
    n = total_neurons(graph)
    if w.device.type == "cpu" and w.dtype in _SPARSE_DTYPES and e >= CSR_MIN_WEIGHTS:
        sums = {}
        with torch.autocast("cpu", enabled=False):
            for k, m in incidence_plan(graph, w.dtype).items():
                s = w.new_empty(n, d)
                s[:, :1] = torch.sparse.mm(m, w.unsqueeze(1))
                s[:, 1:] = torch.sparse.mm(m, h)
                sums[k] = s
        return sums
    ends = {"in": graph.dst, "out": graph.src}
    sums = {"in": w.new_zeros(n, d), "out": w.new_zeros(n, d)}
    for i in range(0, e, block):
        x = torch.cat([w[i : i + block].unsqueeze(1), h[i : i + block]], dim=1)
        for k, at in ends.items():
            sums[k].index_add_(0, at[i : i + block], x)
    return sums


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

    With ``x = [w, h]``: the scaled neuron sums ``T = A x`` (one sparse product, ``1 / count``
    folded into ``A``), one gather of ``[0; T]`` that writes the whole ``(E, 3, 1 + C)`` result,
    and one fused ``addcmul`` that puts ``x`` in the first slot and removes (or adds) the weight's
    own term in the other two. The structure (``A``, its transpose, the gather's transpose) is
    built once per graph and option set; the backward is two more sparse products and gathers,
    with no sorting or atomic scatter at run time.

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
    check_state(w, h, graph)
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    check_neighbourhood(neighbourhood)
    x = torch.cat([w.unsqueeze(1), h], dim=1)  # (E, D), D = 1 + C
    e, d = x.shape
    if x.dtype in _SPARSE_DTYPES:
        index, coef, a, a_t, g_t = sparse_plan(graph, neighbourhood, include_self, reduce, x.dtype)
        t = FixedSparseMM.apply(a, a_t, x)  # (R, D) scaled sums per neuron (and relation)
        table = torch.cat([x.new_zeros(1, d), t])  # (1 + R, D)
        return _GatherPerception.apply(table, index, g_t, x, coef)  # (E, 3 + 3C)
    else:  # reduced precision: sparse CSR products are not implemented for it everywhere
        index, coef, scale_f, scale_b = neuron_plan(
            graph, neighbourhood, include_self, reduce, x.dtype
        )
        n = total_neurons(graph)
        fwd, bwd = NEIGHBOURHOODS[neighbourhood]
        ends = {"in": graph.dst, "out": graph.src}
        sums = {k: x.new_zeros(n, d).index_add(0, ends[k], x) for k in {*fwd, *bwd}}
        s_f, s_b = (sum(sums[k] for k in parts) for parts in (fwd, bwd))
        table = torch.cat([x.new_zeros(1, d), s_f * scale_f, s_b * scale_b])  # (1 + 2N, D)
        p = table.index_select(0, index).view(e, 3, d)
    return torch.addcmul(p, x.unsqueeze(1), coef).view(e, 3 * d)  # (E, 3 + 3C)


def perception_size(hidden_channels: int) -> int:
    """Length of the perception vector for hidden size ``C``: ``3 + 3C``."""
    return 3 + 3 * hidden_channels
