"""The no-grad routes of gnca.rule_fast (the fused step used when growing, the blocked MLP of the
explicit path) equal the reference route, LocalRule.step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import NEIGHBOURHOOD_NAMES, dag_specs, live_rule
from hypothesis import given, settings
from hypothesis import strategies as st

from gnca import Architecture, LocalRule, WeightGraph, perception
from gnca.rule_fast import blocked, fused_step, pick_route


def _both(rule: LocalRule, g, w, h, seed: int = 3, path: str = "fast", senses=None):
    """(reference step, no-grad step through forward) with the same fire-mask generator seed."""
    a = rule.step(g, w, h, generator=torch.Generator().manual_seed(seed), path=path, senses=senses)
    with torch.no_grad():
        assert pick_route(rule, g, w, path) is (fused_step if path == "fast" else blocked)
        b = rule(g, w, h, generator=torch.Generator().manual_seed(seed), path=path, senses=senses)
    return a, b


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("block_rows", [None, 1, 7, 1000])
def test_no_grad_step_equals_grad_step_float64(
    neighbourhood: str, include_self: bool, reduce: str, block_rows: int | None
) -> None:
    arch = Architecture.skip_mlp([3, 5, 4, 2], skip=2)
    g = WeightGraph.collate(
        [
            WeightGraph.from_architecture(arch),
            WeightGraph.from_architecture(Architecture.mlp([3, 2])),
        ]
    )
    e = g.num_nodes
    rule = live_rule(
        4, neighbourhood=neighbourhood, include_self=include_self, reduce=reduce, fire_rate=0.6
    ).double()
    rule.block_rows = block_rows
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(e, generator=gen, dtype=torch.float64)
    h = torch.randn(e, 4, generator=gen, dtype=torch.float64)
    (wa, ha), (wb, hb) = _both(rule, g, w, h)
    assert wb.dtype == torch.float64 and hb.shape == h.shape
    torch.testing.assert_close(wb, wa, rtol=0, atol=1e-12)
    torch.testing.assert_close(hb, ha, rtol=0, atol=1e-12)
    assert not torch.equal(wb, w)


@settings(max_examples=25, deadline=None)
@given(spec=dag_specs())
def test_no_grad_step_equals_grad_step_random_dags(spec) -> None:
    arch = spec.build()
    g = WeightGraph.replicate(arch, 3)
    e = g.num_nodes
    rule = live_rule(3, widths=(16, 8), bound=0.5, activation="tanh").double()
    rule.block_rows = 5
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(e, generator=gen, dtype=torch.float64)
    h = torch.randn(e, 3, generator=gen, dtype=torch.float64)
    (wa, ha), (wb, hb) = _both(rule, g, w, h)
    torch.testing.assert_close(wb, wa, rtol=0, atol=1e-12)
    torch.testing.assert_close(hb, ha, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "silu", "sigmoid", "identity"])
@pytest.mark.parametrize("bound", [None, 0.1])
def test_no_grad_delta_equals_mlp(activation: str, bound: float | None) -> None:
    rule = live_rule(5, widths=(12, 6), activation=activation, bound=bound)
    rule.block_rows = 3
    p = torch.randn(20, 18)
    ref = rule.delta(p)
    with torch.no_grad():
        got = rule.delta(p)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    if bound is not None:
        assert got.abs().max() <= bound


def test_no_grad_step_float32_large_blocks_and_inputs_untouched() -> None:
    arch = Architecture.mlp([30, 20, 10])
    g = WeightGraph.replicate(arch, 2)
    e = g.num_nodes
    rule = live_rule(8)
    rule.block_rows = 256
    w, h = torch.randn(e), torch.randn(e, 8)
    w0, h0 = w.clone(), h.clone()
    (wa, ha), (wb, hb) = _both(rule, g, w, h)
    torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hb, ha, rtol=1e-5, atol=1e-5)
    assert torch.equal(w, w0) and torch.equal(h, h0)  # functional: inputs unchanged


def test_zero_rule_is_exact_no_op_without_grad() -> None:
    arch = Architecture.mlp([4, 6, 3])
    g = WeightGraph.from_architecture(arch)
    rule = LocalRule(2, fire_rate=1.0)
    rule.block_rows = 4
    w, h = torch.randn(arch.num_weights), torch.randn(arch.num_weights, 2)
    with torch.no_grad():
        w1, h1 = rule(g, w, h)
    assert torch.equal(w1, w) and torch.equal(h1, h)


def test_mask_argument_respected_without_grad() -> None:
    arch = Architecture.mlp([4, 5, 3])
    g = WeightGraph.from_architecture(arch)
    e = arch.num_weights
    rule = live_rule(2)
    rule.block_rows = 8
    mask = (torch.arange(e) % 3 == 0).float()
    w, h = torch.randn(e), torch.randn(e, 2)
    with torch.no_grad():
        w1, h1 = rule(g, w, h, mask=mask)
    keep = mask == 0
    assert torch.equal(w1[keep], w[keep]) and torch.equal(h1[keep], h[keep])
    assert not torch.equal(w1[~keep], w[~keep])


def test_no_grad_step_under_bf16_autocast() -> None:
    arch = Architecture.mlp([30, 20, 10])
    g = WeightGraph.from_architecture(arch)
    e = arch.num_weights
    rule = live_rule(8)
    rule.block_rows = 100
    w, h, mask = torch.randn(e), torch.randn(e, 8), torch.ones(e)
    with torch.no_grad():
        ref = rule(g, w, h, mask=mask)
        ref_d = rule.delta(torch.randn(7, 27))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = rule(g, w, h, mask=mask)
            got_d = rule.delta(torch.randn(7, 27))
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert got_d.shape == ref_d.shape
    torch.testing.assert_close(got[0], ref[0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(got[1], ref[1], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("path", ["fast", "explicit"])
@pytest.mark.parametrize("block_rows", [None, 4])
def test_no_grad_routes_equal_the_reference_with_senses_and_state_bound(
    path: str, block_rows: int | None
) -> None:
    g = WeightGraph.replicate(Architecture.skip_mlp([4, 5, 3, 2], skip=2), 2)
    e = g.num_nodes
    rule = live_rule(3, senses=("act", "delta"), bound=0.3, state_bound=1.5).double()
    rule.block_rows = block_rows
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(e, generator=gen, dtype=torch.float64)
    h = torch.randn(e, 3, generator=gen, dtype=torch.float64) * 2
    s = torch.randn(e, rule.mlp[0].in_features - 12, generator=gen, dtype=torch.float64)
    (wa, ha), (wb, hb) = _both(rule, g, w, h, path=path, senses=s)
    torch.testing.assert_close(wb, wa, rtol=0, atol=1e-12)
    torch.testing.assert_close(hb, ha, rtol=0, atol=1e-12)
    fired = wb != w
    assert fired.any() and hb[fired].abs().max() < 1.5  # the state bound holds where they fire


def test_blocked_route_of_a_max_aggregation_equals_the_reference() -> None:
    g = WeightGraph.replicate(Architecture.mlp([3, 4, 2]), 2)
    e = g.num_nodes
    rule = live_rule(2, aggr="max", widths=(8, 8), activation="silu").double()
    rule.block_rows = 3
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(e, generator=gen, dtype=torch.float64)
    h = torch.randn(e, 2, generator=gen, dtype=torch.float64)
    (wa, ha), (wb, hb) = _both(rule, g, w, h, path="explicit")
    torch.testing.assert_close(wb, wa, rtol=0, atol=1e-12)
    torch.testing.assert_close(hb, ha, rtol=0, atol=1e-12)


@contextmanager
def _csr_min_weights(low: int) -> Iterator[None]:
    """perception.CSR_MIN_WEIGHTS set to ``low`` inside the block (0: the sparse route always,
    a huge value: the index_add_ route always)."""
    old, perception.CSR_MIN_WEIGHTS = perception.CSR_MIN_WEIGHTS, low
    try:
        yield
    finally:
        perception.CSR_MIN_WEIGHTS = old


def _loop_sums(g, w: torch.Tensor, h: torch.Tensor) -> dict[str, np.ndarray]:
    """The slow reference: every neuron's in- and out-sums of x = [w, h], added one weight at a
    time in index order, in w's precision (numpy)."""
    x = torch.cat([w.unsqueeze(1), h], 1).numpy()
    n = int(max(int(g.src.max()), int(g.dst.max())) + 1)
    out = {}
    for k, at in (("in", g.dst.tolist()), ("out", g.src.tolist())):
        s = np.zeros((n, x.shape[1]), dtype=x.dtype)
        for i, v in enumerate(at):
            s[v] = s[v] + x[i]
        out[k] = s
    return out


@settings(max_examples=20, deadline=None)
@given(spec=dag_specs(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_neuron_sums_add_in_weight_order_on_both_routes(spec, dtype) -> None:
    """The sparse-product route and the index_add_ route of neuron_sums both give, bit for bit,
    a Python loop that adds every neuron's weights in index order, on random DAGs."""
    g = WeightGraph.replicate(spec.build(), 4)
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(g.num_nodes, generator=gen, dtype=dtype)
    h = torch.randn(g.num_nodes, 3, generator=gen, dtype=dtype)
    want = _loop_sums(g, w, h)
    n = want["in"].shape[0]
    for low in (0, 10**9):  # the sparse route, then the index_add_ route
        with _csr_min_weights(low):
            got = perception.neuron_sums(g, w, h, block=3)
        for k in ("in", "out"):
            assert np.array_equal(got[k][:n].numpy(), want[k]), (low, k)
            assert not got[k][n:].any()


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_is_bitwise_the_same_on_both_sum_routes(threads: int) -> None:
    """A growing step of MNIST-sized nets (16 x 196-32-10, above CSR_MIN_WEIGHTS) with senses
    gives the same bits whether the neuron sums come from sparse products or from index_add_."""
    from gnca.senses import SENSES, sense_size

    g = WeightGraph.replicate(Architecture.mlp([196, 32, 10]), 16)
    e = g.num_nodes
    assert e >= perception.CSR_MIN_WEIGHTS
    rule = live_rule(8, widths=(16,), senses=list(SENSES), state_bound=1.0, bound=0.1)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(e, generator=gen) * 0.3
    h = torch.randn(e, 8, generator=gen) * 0.1
    senses = torch.randn(e, sense_size(rule.senses), generator=gen)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outs = []
        for low in (perception.CSR_MIN_WEIGHTS, 10**9):  # the sparse route, then index_add_
            with _csr_min_weights(low), torch.no_grad():
                outs.append(fused_step(rule, g, w, h, torch.ones(e), None, senses))
    finally:
        torch.set_num_threads(old_threads)
    (wa, ha), (wb, hb) = outs
    assert torch.equal(wa, wb) and torch.equal(ha, hb)
    assert not torch.equal(wa, w)
