"""Tests of gnca.perception: the O(E) fast path against plain loops and the explicit line graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    NEIGHBOURHOOD_NAMES,
    DagSpec,
    dag_specs,
    edge_list,
    example_archs,
    float64_state,
    loop_perceive,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gnca import Architecture, LocalRule, WeightGraph, perceive
from gnca.architecture import BIAS, INPUT
from gnca.perception import perception_size

TOL = {"rtol": 0.0, "atol": 1e-12}


def _check_fast_vs_loop(
    arch: Architecture, neighbourhood: str, include_self: bool, reduce: str, seed: int
) -> None:
    g = WeightGraph.from_architecture(arch)
    c = 3
    w, h = float64_state(arch.num_weights, c, seed)
    p = perceive(g, w, h, neighbourhood, include_self=include_self, reduce=reduce)
    assert p.shape == (arch.num_weights, perception_size(c))
    assert p.dtype == torch.float64
    ref = loop_perceive(edge_list(arch), w, h, neighbourhood, include_self, reduce)
    torch.testing.assert_close(p, ref, **TOL)


@pytest.mark.parametrize("arch", example_archs(), ids=lambda a: a.describe())
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_fast_equals_loop_examples(
    arch: Architecture, neighbourhood: str, include_self: bool, reduce: str
) -> None:
    _check_fast_vs_loop(arch, neighbourhood, include_self, reduce, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    spec=dag_specs(),
    neighbourhood=st.sampled_from(NEIGHBOURHOOD_NAMES),
    include_self=st.booleans(),
    reduce=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 2**16),
)
def test_fast_equals_loop_random_dags(
    spec: DagSpec, neighbourhood: str, include_self: bool, reduce: str, seed: int
) -> None:
    _check_fast_vs_loop(spec.build(), neighbourhood, include_self, reduce, seed)


def test_fast_equals_loop_float64_default_dtype() -> None:
    """The same with float64 as the default dtype (counts are then float64 too)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for nb in NEIGHBOURHOOD_NAMES:
            _check_fast_vs_loop(Architecture.skip_mlp([3, 2, 3, 2]), nb, False, "mean", seed=5)
    finally:
        torch.set_default_dtype(old)


@settings(max_examples=25, deadline=None)
@given(
    spec=dag_specs(),
    neighbourhood=st.sampled_from(NEIGHBOURHOOD_NAMES),
    include_self=st.booleans(),
    reduce=st.sampled_from(["mean", "sum"]),
)
def test_explicit_path_equals_fast(
    spec: DagSpec, neighbourhood: str, include_self: bool, reduce: str
) -> None:
    arch = spec.build()
    g = WeightGraph.from_architecture(arch)
    rule = LocalRule(2, neighbourhood=neighbourhood, include_self=include_self, reduce=reduce)
    w, h = float64_state(arch.num_weights, 2, seed=7)
    fast = rule.perceive(g, w, h, path="fast")
    explicit = rule.perceive(g, w, h, path="explicit")
    torch.testing.assert_close(explicit, fast, **TOL)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_explicit_path_equals_fast_on_examples(neighbourhood: str, include_self: bool) -> None:
    for arch in example_archs():
        g = WeightGraph.from_architecture(arch)
        rule = LocalRule(3, neighbourhood=neighbourhood, include_self=include_self)
        w, h = float64_state(arch.num_weights, 3, seed=8)
        torch.testing.assert_close(
            rule.perceive(g, w, h, path="explicit"), rule.perceive(g, w, h), **TOL
        )


@settings(max_examples=25, deadline=None)
@given(
    spec=dag_specs(),
    neighbourhood=st.sampled_from(NEIGHBOURHOOD_NAMES),
    include_self=st.booleans(),
)
def test_explicit_max_equals_loop(spec: DagSpec, neighbourhood: str, include_self: bool) -> None:
    arch = spec.build()
    g = WeightGraph.from_architecture(arch)
    rule = LocalRule(2, neighbourhood=neighbourhood, include_self=include_self, aggr="max")
    w, h = float64_state(arch.num_weights, 2, seed=9)
    p = rule.perceive(g, w, h, path="explicit")
    ref = loop_perceive(edge_list(arch), w, h, neighbourhood, include_self, "max")
    torch.testing.assert_close(p, ref, **TOL)


@pytest.mark.parametrize("path", ["fast", "explicit"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_empty_neighbourhoods_give_zero(path: str, reduce: str) -> None:
    arch = Architecture.mlp([3, 4, 2])
    g = WeightGraph.from_architecture(arch)
    c = 2
    w, h = float64_state(arch.num_weights, c, seed=10)
    w, h = w + 5.0, h + 5.0  # no neighbour aggregate can be 0 by accident
    kinds = arch.kinds
    src_kind = kinds[arch.edges[:, 0]]
    dst_is_out = np.isin(arch.edges[:, 1], arch.outputs)
    f_sl, b_sl = slice(1 + c, 2 + 2 * c), slice(2 + 2 * c, 3 + 3 * c)
    # directed: input-layer weights have no in(u); output-layer weights have no out(v)
    rule = LocalRule(c, neighbourhood="directed", reduce=reduce)
    p = rule.perceive(g, w, h, path=path)
    empty_b = torch.as_tensor((src_kind == INPUT) | (src_kind == BIAS))
    assert (p[empty_b, b_sl] == 0).all()
    assert (p[~empty_b, b_sl] != 0).all()
    empty_f = torch.as_tensor(dst_is_out)
    assert (p[empty_f, f_sl] == 0).all()
    assert (p[~empty_f, f_sl] != 0).all()
    # incident / sibling: a bias weight is alone at its bias neuron
    for nb in ("incident", "sibling"):
        p = LocalRule(c, neighbourhood=nb, reduce=reduce).perceive(g, w, h, path=path)
        is_b = torch.as_tensor(arch.is_bias_weight.copy())
        assert (p[is_b, b_sl] == 0).all()
        assert (p[~is_b, b_sl] != 0).all()
    from conftest import neighbour_counts

    c_f, c_b = neighbour_counts(g, "directed")
    assert torch.equal(c_b == 0, empty_b)
    assert torch.equal(c_f == 0, empty_f)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_neighbour_counts_match_brute_force(neighbourhood: str, include_self: bool) -> None:
    from conftest import brute_neighbours, neighbour_counts

    arch = Architecture.skip_mlp([3, 2, 3, 2], skip=2)
    g = WeightGraph.from_architecture(arch)
    c_f, c_b = neighbour_counts(g, neighbourhood, include_self)
    n_f, n_b = brute_neighbours(edge_list(arch), neighbourhood, include_self)
    assert c_f.tolist() == [len(x) for x in n_f]
    assert c_b.tolist() == [len(x) for x in n_b]


# ---------------------------------------------------------------------------- equivariance


def _relabel_hidden(spec: DagSpec, seed: int) -> tuple[Architecture, Architecture, np.ndarray]:
    """The same DAG with its hidden neurons' ids permuted; returns both architectures and the map
    from weight index in the first to weight index in the second."""
    ids = sorted({x for e in spec.edges for x in e} | set(spec.inputs) | set(spec.outputs))
    hidden = [i for i in ids if i not in spec.inputs and i not in spec.outputs]
    perm = dict(zip(hidden, np.random.default_rng(seed).permutation(hidden).tolist(), strict=True))
    pm = {i: perm.get(i, i) for i in ids}
    spec_b = DagSpec(
        edges=tuple((pm[u], pm[v]) for u, v in spec.edges),
        inputs=spec.inputs,
        outputs=spec.outputs,
        bias=spec.bias,
    )
    a, b = spec.build(), spec_b.build()
    # from_edges relabels ids in sorted order; ids here form the same set in both
    idx = {x: k for k, x in enumerate(ids)}
    to_b = {idx[x]: idx[pm[x]] for x in ids}

    def key(arch: Architecture, k: int, mapping: dict[int, int] | None) -> tuple:
        u, v = (int(x) for x in arch.edges[k])
        if arch.is_bias_weight[k]:
            return ("bias", mapping[v] if mapping else v)
        return (mapping[u], mapping[v]) if mapping else (u, v)

    where_b = {key(b, k, None): k for k in range(b.num_weights)}
    weight_map = np.array([where_b[key(a, k, to_b)] for k in range(a.num_weights)])
    assert sorted(weight_map.tolist()) == list(range(a.num_weights))
    return a, b, weight_map


@settings(max_examples=30, deadline=None)
@given(
    spec=dag_specs(max_hidden=7),
    neighbourhood=st.sampled_from(NEIGHBOURHOOD_NAMES),
    include_self=st.booleans(),
    reduce=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 1000),
)
def test_relabelling_hidden_neurons_permutes_rows(
    spec: DagSpec, neighbourhood: str, include_self: bool, reduce: str, seed: int
) -> None:
    a, b, wmap = _relabel_hidden(spec, seed)
    ga, gb = WeightGraph.from_architecture(a), WeightGraph.from_architecture(b)
    w_a, h_a = float64_state(a.num_weights, 2, seed)
    w_b = torch.empty_like(w_a)
    h_b = torch.empty_like(h_a)
    w_b[wmap] = w_a
    h_b[wmap] = h_a
    kw = {"include_self": include_self, "reduce": reduce}
    p_a = perceive(ga, w_a, h_a, neighbourhood, **kw)
    p_b = perceive(gb, w_b, h_b, neighbourhood, **kw)
    torch.testing.assert_close(p_b[wmap], p_a, **TOL)


# ---------------------------------------------------------------------------- errors


def test_perceive_rejects_bad_arguments() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([3, 2]))
    e = g.num_nodes
    w, h = torch.zeros(e), torch.zeros(e, 2)
    with pytest.raises(ValueError, match=r"w must have shape \(8,\)"):
        perceive(g, w[:-1], h)
    with pytest.raises(ValueError, match=r"h must have shape \(8, C\)"):
        perceive(g, w, h[:, 0])
    with pytest.raises(ValueError, match=r"h must have shape"):
        perceive(g, w, h[:-1])
    with pytest.raises(ValueError, match="unknown reduce 'max'"):
        perceive(g, w, h, reduce="max")
    with pytest.raises(ValueError, match="unknown neighbourhood"):
        perceive(g, w, h, "all")
    with pytest.raises(ValueError, match="unknown path"):
        LocalRule(2).perceive(g, w, h, path="dense")


# ---------------------------------------------------------------------------- gradients


@settings(max_examples=15, deadline=None)
@given(
    spec=dag_specs(max_hidden=4),
    neighbourhood=st.sampled_from(NEIGHBOURHOOD_NAMES),
    include_self=st.booleans(),
    reduce=st.sampled_from(["mean", "sum"]),
)
def test_gradcheck_fast_path(
    spec: DagSpec, neighbourhood: str, include_self: bool, reduce: str
) -> None:
    """The fast path has hand-written backwards: check them against finite differences."""
    arch = spec.build()
    g = WeightGraph.from_architecture(arch)
    w, h = float64_state(arch.num_weights, 2, seed=11)
    w.requires_grad_(True)
    h.requires_grad_(True)

    def fn(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return perceive(g, w, h, neighbourhood, include_self=include_self, reduce=reduce)

    assert torch.autograd.gradcheck(fn, (w, h), fast_mode=True)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
def test_fast_and_explicit_gradients_agree(neighbourhood: str) -> None:
    arch = Architecture.skip_mlp([3, 3, 2, 2])
    g = WeightGraph.from_architecture(arch)
    rule = LocalRule(2, neighbourhood=neighbourhood)
    weights = torch.randn(arch.num_weights, perception_size(2), dtype=torch.float64)
    grads = []
    for path in ("fast", "explicit"):
        w, h = float64_state(arch.num_weights, 2, seed=12)
        w.requires_grad_(True)
        h.requires_grad_(True)
        (rule.perceive(g, w, h, path=path) * weights).sum().backward()
        grads.append((w.grad, h.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], **TOL)
    torch.testing.assert_close(grads[0][1], grads[1][1], **TOL)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_reduced_precision_and_autocast(neighbourhood: str, include_self: bool) -> None:
    """bfloat16 inputs (no sparse CSR kernels) and autocast take working paths."""
    arch = Architecture.skip_mlp([4, 3, 3, 2])
    g = WeightGraph.from_architecture(arch)
    w, h = float64_state(arch.num_weights, 3, seed=13)
    ref = loop_perceive(edge_list(arch), w, h, neighbourhood, include_self, "mean")
    kw = {"include_self": include_self}
    p16 = perceive(g, w.bfloat16(), h.bfloat16(), neighbourhood, **kw)
    assert p16.dtype == torch.bfloat16
    torch.testing.assert_close(p16.double(), ref, rtol=0.05, atol=0.05)
    w32 = w.float().requires_grad_(True)
    h32 = h.float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = perceive(g, w32, h32, neighbourhood, **kw)
    torch.testing.assert_close(p.double(), ref, rtol=1e-5, atol=1e-5)
    p.sum().backward()
    assert w32.grad is not None and torch.isfinite(w32.grad).all()


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_fused_gather_gradients_are_bitwise_those_of_plain_ops(
    neighbourhood: str, include_self: bool
) -> None:
    """The fused gather-and-correct node gives exactly (not just closely) the float32 values and
    gradients of the unfused formulation it replaced: a gather (backward through the same sparse
    transpose) then an out-of-place ``addcmul``. Rules trained before the fusion, and the results
    documented with them, are reproduced bitwise only because of this."""
    from gnca.perception import FixedSparseMM, sparse_plan

    class Gather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, table, index, g_t):  # type: ignore[override]
            ctx.g_t = g_t
            return table.index_select(0, index)

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            return torch.sparse.mm(ctx.g_t, grad.contiguous()), None, None

    arch = Architecture.skip_mlp([5, 4, 3, 2], skip=2)
    g = WeightGraph.collate([WeightGraph.from_architecture(arch)] * 3)
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(g.num_nodes, generator=gen)
    h0 = torch.randn(g.num_nodes, 3, generator=gen)
    upstream = torch.randn(g.num_nodes, 12, generator=gen)

    def grads(fused: bool) -> tuple[torch.Tensor, ...]:
        w, h = w0.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        if fused:
            p = perceive(g, w, h, neighbourhood, include_self=include_self)
        else:
            index, coef, a, a_t, g_t = sparse_plan(g, neighbourhood, include_self, "mean", w.dtype)
            x = torch.cat([w.unsqueeze(1), h], dim=1)
            table = torch.cat([x.new_zeros(1, 4), FixedSparseMM.apply(a, a_t, x)])
            gathered = Gather.apply(table, index, g_t).view(-1, 3, 4)
            p = torch.addcmul(gathered, x.unsqueeze(1), coef).view(-1, 12)
        (p * upstream).sum().backward()
        return p.detach(), w.grad, h.grad

    for fused, plain in zip(grads(True), grads(False), strict=True):
        assert torch.equal(fused, plain)
