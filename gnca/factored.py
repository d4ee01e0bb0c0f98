r"""The rule MLP's first layer applied through the neurons: the perception is never built.

The fast path's perception of weight ``w = u -> v`` is (:mod:`gnca.perception`)::

    p(w) = [x_w,  T[r_f(w)] + c_f(w) x_w,  T[r_b(w)] + c_b(w) x_w]        # (3D,), D = 1 + C

with ``x = [w, h]``, ``T`` the scaled neuron sums, ``r_f``/``r_b`` the neuron rows of the forward
and backward relations and ``c_f``/``c_b`` the weight's own correction (``-1 / count`` for a mean
that excludes the weight itself). The first layer of the rule's MLP, ``z = W p + b`` with
``W = [W_0 | W_f | W_b]``, is linear in ``p``, so

.. math::
    z_w = (W_0 + c_f(w) W_f + c_b(w) W_b)\, x_w + (T W_f^\top)[r_f(w)] + (T W_b^\top)[r_b(w)] + b.

The neighbour terms are products on the ``R`` neuron rows (``R`` is about the number of neurons,
far fewer than the ``E`` weights) gathered back to the weights, and the own term is one product
of ``x`` with a ``(width, D)`` matrix per distinct ``(c_f, c_b)`` pair. The weights of an MLP come
in a few contiguous runs that share a pair (one per layer and kind of weight in each net), so
the per-weight product shrinks from ``3D`` to ``D`` inputs and the ``(E, 3D)`` perception is
never held or differentiated. :func:`factored_plan` returns ``None`` for graphs whose weights
fall into too many runs (``max_runs``); the caller then uses the dense perception.

The result equals ``first_layer(perceive(...))`` up to float rounding (tests compare both
in float64); the factored route of :mod:`gnca.rule_fast` uses it when
:attr:`gnca.LocalRule.factored` is set (``train.perception: factored``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.data import Data

from gnca.graph import cached
from gnca.perception import FixedSparseMM, csr_matrix, sparse_plan

#: Above this many runs of weights with one ``(c_f, c_b)`` pair the factored layer is not used.
MAX_RUNS = 256


@dataclass(frozen=True)
class FactoredPlan:
    """The structure :func:`factored_first_layer` needs, cached per graph and option set.

    Attributes:
        a, a_t: ``(R, E)`` CSR neuron-sum matrix of the fast path and its transpose.
        gather, gather_t: ``(E, 2R)`` CSR with two ones per row, at ``r_f(w)`` and ``R + r_b(w)``
            (no entry where a relation is empty), and its transpose.
        lengths: the lengths of the runs of consecutive weights that share a coefficient pair.
        pairs: the distinct ``(c_f, c_b)`` pairs (an MLP batch repeats each pair once per net).
        run_pair: the index into ``pairs`` of every run.
    """

    a: torch.Tensor
    a_t: torch.Tensor
    gather: torch.Tensor
    gather_t: torch.Tensor
    lengths: tuple[int, ...]
    pairs: tuple[tuple[float, float], ...]
    run_pair: tuple[int, ...]


def factored_plan(
    graph: Data,
    neighbourhood: str,
    include_self: bool,
    reduce: str,
    dtype: torch.dtype,
    max_runs: int = MAX_RUNS,
) -> FactoredPlan | None:
    """The cached :class:`FactoredPlan` of ``graph``, or ``None`` when its weights fall into more
    than ``max_runs`` runs (or ``dtype`` has no sparse products: then the dense path runs)."""
    if dtype not in (torch.float32, torch.float64) or graph.src.numel() == 0:
        return None
    plan = cached(
        graph,
        ("factored_plan", neighbourhood, include_self, reduce, dtype),
        lambda: _build(graph, neighbourhood, include_self, reduce, dtype),
    )
    return plan if len(plan.lengths) <= max_runs else None


def _build(
    graph: Data, neighbourhood: str, include_self: bool, reduce: str, dtype: torch.dtype
) -> FactoredPlan:
    index, coef, a, a_t, _ = sparse_plan(graph, neighbourhood, include_self, reduce, dtype)
    e = graph.src.numel()
    r = a.shape[0]
    rows3 = index.view(e, 3)  # slot 0 is the zero row; slots 1, 2 are 1 + a row of T
    arange = torch.arange(e, device=graph.src.device)
    cols = torch.cat([rows3[:, 1] - 1, r + rows3[:, 2] - 1])
    rows = torch.cat([arange, arange])
    keep = torch.cat([rows3[:, 1] > 0, rows3[:, 2] > 0])  # the zero row gathers nothing
    rows, cols = rows[keep], cols[keep]
    ones = torch.ones(rows.numel(), dtype=dtype, device=graph.src.device)
    gather = csr_matrix(rows, cols, ones, (e, 2 * r))
    gather_t = csr_matrix(cols, rows, ones, (2 * r, e))
    c = coef[:, 1:, 0]  # (E, 2)
    starts = (
        torch.cat([torch.ones(1, dtype=torch.bool, device=c.device), (c[1:] != c[:-1]).any(1)])
        .nonzero()
        .flatten()
    )
    bounds = torch.cat([starts, torch.tensor([e], device=c.device)]).tolist()
    lengths = tuple(b - s for s, b in zip(bounds[:-1], bounds[1:], strict=True))
    per_run = [(float(c[s, 0]), float(c[s, 1])) for s in bounds[:-1]]
    pairs = tuple(dict.fromkeys(per_run))  # distinct, in order of first use
    run_pair = tuple(pairs.index(p) for p in per_run)
    return FactoredPlan(a, a_t, gather, gather_t, lengths, pairs, run_pair)


def factored_first_layer(
    plan: FactoredPlan,
    first: nn.Linear,
    x: torch.Tensor,
    senses: torch.Tensor | None = None,
) -> torch.Tensor:
    """``first(p)`` for the fast-path perception ``p`` of ``x``, without building ``p``.

    Args:
        plan: from :func:`factored_plan` for the graph of ``x``.
        first: the rule MLP's first layer, ``3D (+ S)`` inputs.
        x: ``(E, D)`` the weights' ``[w, h]``.
        senses: ``(E, S)`` sense channels appended to the perception, if the rule has them.

    Returns:
        ``(E, width)``, as ``first(torch.cat([perceive(...), senses], 1))`` up to rounding.
    """
    d = x.shape[1]
    wt = first.weight  # (width, 3D + S)
    w0, wf, wb = wt[:, :d], wt[:, d : 2 * d], wt[:, 2 * d : 3 * d]
    t = FixedSparseMM.apply(plan.a, plan.a_t, x)  # (R, D) scaled neuron sums
    neighbours = torch.cat([t @ wf.t(), t @ wb.t()])  # (2R, width)
    gathered = FixedSparseMM.apply(
        plan.gather, plan.gather_t, neighbours.to(plan.gather.dtype)
    )  # (E, width)
    # own term per run, the neighbour term and the bias added inside each product (under
    # autocast the result is bf16, as the dense layer's output is)
    base = gathered + first.bias  # (E, width)
    own_w = [(w0 + cf * wf + cb * wb).t() for cf, cb in plan.pairs]  # (D, width) per pair
    own = [
        torch.addmm(nb, chunk, own_w[k])
        for chunk, nb, k in zip(
            x.split(plan.lengths), base.split(plan.lengths), plan.run_pair, strict=True
        )
    ]
    z = torch.cat(own) if len(own) > 1 else own[0]
    if senses is not None:
        z = z + senses.to(x.dtype) @ wt[:, 3 * d :].t()
    return z
