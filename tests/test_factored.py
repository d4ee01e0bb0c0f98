"""The factored first layer (gnca.factored) equals the MLP's first layer on the dense perception,
and the factored route (gnca.rule_fast.factored) the reference route LocalRule.step, values and
gradients, on every neighbourhood option, random DAGs, senses and bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import NEIGHBOURHOOD_NAMES, dag_specs, float64_state, live_rule
from hypothesis import given, settings

from gnca import Architecture, LocalRule, WeightGraph
from gnca.factored import factored_first_layer, factored_plan
from gnca.perception import perceive
from gnca.rule_fast import factored, pick_route


def _step_and_grads(rule: LocalRule, g, w, h, senses=None, reference: bool = False):
    """One rule step with a fixed mask (``forward``, or the reference ``step``); the outputs and
    the gradients of a scalar of them with respect to the rule's parameters and to ``w``, ``h``
    (and ``senses``)."""
    w, h = w.clone().requires_grad_(), h.clone().requires_grad_()
    leaves = [w, h]
    if senses is not None:
        senses = senses.clone().requires_grad_()
        leaves.append(senses)
    mask = (torch.arange(w.shape[0]) % 4 != 1).to(w.dtype)
    w1, h1 = (rule.step if reference else rule)(g, w, h, mask=mask, senses=senses)
    loss = (w1.sin() * 1.3).sum() + (h1 * h1.cos()).sum()
    grads = torch.autograd.grad(loss, [*rule.parameters(), *leaves])
    return (w1.detach(), h1.detach()), grads


def _compare(rule: LocalRule, g, w, h, senses=None, atol: float = 1e-11) -> None:
    rule.factored = True
    assert factored_plan(g, rule.neighbourhood, rule.include_self, rule.reduce, w.dtype)
    assert pick_route(rule, g, w, "fast") is factored
    (wa, ha), ga = _step_and_grads(rule, g, w, h, senses, reference=True)
    (wb, hb), gb = _step_and_grads(rule, g, w, h, senses)
    torch.testing.assert_close(wb, wa, rtol=0, atol=atol)
    torch.testing.assert_close(hb, ha, rtol=0, atol=atol)
    assert not torch.equal(wb, w)
    for x, y in zip(gb, ga, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol * 100)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_factored_route_equals_the_reference_step_float64(
    neighbourhood: str, include_self: bool, reduce: str
) -> None:
    g = WeightGraph.collate(
        [
            WeightGraph.from_architecture(Architecture.skip_mlp([3, 5, 4, 2], skip=2)),
            WeightGraph.from_architecture(Architecture.mlp([3, 2])),
            WeightGraph.from_architecture(Architecture.mlp([3, 4, 4, 2])),
        ]
    )
    rule = live_rule(
        4, widths=(16, 8), neighbourhood=neighbourhood, include_self=include_self, reduce=reduce
    ).double()
    w, h = float64_state(g.num_nodes, 4, seed=1)
    _compare(rule, g, w, h)


@settings(max_examples=25, deadline=None)
@given(spec=dag_specs())
def test_factored_route_equals_the_reference_step_random_dags(spec) -> None:
    g = WeightGraph.replicate(spec.build(), 2)
    rule = live_rule(3, widths=(8,), bound=0.5, activation="tanh").double()
    w, h = float64_state(g.num_nodes, 3, seed=2)
    _compare(rule, g, w, h)


def test_factored_with_senses_and_without_hidden_layers() -> None:
    g = WeightGraph.replicate(Architecture.mlp([4, 5, 3]), 3)
    rule = live_rule(3, widths=(), senses=("act", "delta")).double()
    w, h = float64_state(g.num_nodes, 3, seed=4)
    s = rule.mlp[0].in_features - (3 + 3 * 3)
    gen = torch.Generator().manual_seed(5)
    senses = torch.randn(g.num_nodes, s, dtype=torch.float64, generator=gen)
    _compare(rule, g, w, h, senses)


def test_first_layer_equals_linear_of_the_dense_perception() -> None:
    """The function itself, against ``first(perceive(...))``, for an arbitrary linear layer."""
    g = WeightGraph.replicate(Architecture.mlp([6, 4, 4, 3]), 2)
    c = 2
    w, h = float64_state(g.num_nodes, c, seed=6)
    first = torch.nn.Linear(3 * (1 + c), 7).double()
    plan = factored_plan(g, "incident", False, "mean", torch.float64)
    x = torch.cat([w.unsqueeze(1), h], 1)
    got = factored_first_layer(plan, first, x)
    ref = first(perceive(g, w, h))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    # a weight's own term uses one coefficient pair per run: an MLP has few runs
    assert len(plan.lengths) == len(plan.run_pair) and sum(plan.lengths) == g.num_nodes
    assert len(plan.lengths) < g.num_nodes // 4
    # two copies of one net: every pair's runs repeat, each pair is stored once
    assert len(plan.pairs) < len(plan.lengths) and len(set(plan.pairs)) == len(plan.pairs)


def test_too_many_runs_or_no_sparse_dtype_fall_back_to_the_dense_path() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([3, 4, 2]))
    assert factored_plan(g, "incident", False, "mean", torch.float32, max_runs=1) is None
    assert factored_plan(g, "incident", False, "mean", torch.bfloat16) is None
    rule = live_rule(2)
    w, h = torch.randn(g.num_nodes), torch.randn(g.num_nodes, 2)
    mask = torch.ones(g.num_nodes)
    ref = rule(g, w, h, mask=mask)
    rule.factored = True
    rule_bf = copy.deepcopy(rule)
    got = rule(g, w, h, mask=mask)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    # the explicit path ignores the flag
    exp = rule_bf(g, w, h, mask=mask, path="explicit")
    torch.testing.assert_close(exp[0], ref[0], rtol=1e-5, atol=1e-6)


def test_factored_under_bf16_autocast_is_close_to_dense() -> None:
    g = WeightGraph.replicate(Architecture.mlp([30, 20, 10]), 2)
    rule = live_rule(8, widths=(32, 32))
    w, h = torch.randn(g.num_nodes), torch.randn(g.num_nodes, 8)
    mask = torch.ones(g.num_nodes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = rule(g, w, h, mask=mask)
        rule.factored = True
        got = rule(g, w, h, mask=mask)
    assert got[0].dtype == torch.float32
    scale = (ref[1] - h).abs().max()
    assert (got[1] - ref[1]).abs().max() < 0.05 * scale
    assert (got[0] - ref[0]).abs().max() < 0.05 * (ref[0] - w).abs().max()
