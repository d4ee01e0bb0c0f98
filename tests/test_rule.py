"""Tests of gnca.rule: the LocalRule update (no-op start, fire mask, bound, gradients), the
reference step against the equation, and which route forward takes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import NEIGHBOURHOOD_NAMES, float64_state, randomise_output

from gnca import Architecture, LocalRule, WeightGraph, initial_state, rule_fast, task_forward
from gnca.perception import perceive
from gnca.rule_fast import pick_route


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_zero_initialised_rule_is_a_no_op(neighbourhood: str, path: str) -> None:
    arch = Architecture.skip_mlp([3, 4, 3, 2])
    g = WeightGraph.from_architecture(arch)
    rule = LocalRule(4, widths=(16, 8), neighbourhood=neighbourhood, fire_rate=1.0)
    assert torch.count_nonzero(rule.out.weight) == 0 and torch.count_nonzero(rule.out.bias) == 0
    w, h = torch.randn(arch.num_weights), torch.randn(arch.num_weights, 4)
    w1, h1 = rule(g, w, h, path=path)
    assert torch.equal(w1, w) and torch.equal(h1, h)
    randomise_output(rule)
    w2, h2 = rule(g, w, h, path=path)
    assert not torch.equal(w2, w) and not torch.equal(h2, h)
    rule.reset_parameters()
    w3, h3 = rule(g, w, h, path=path)
    assert torch.equal(w3, w) and torch.equal(h3, h)


def test_fire_rate_statistics() -> None:
    arch = Architecture.mlp([20, 30, 10])
    g = WeightGraph.replicate(arch, 4)
    e = g.num_nodes
    rule = LocalRule(3, fire_rate=0.8)
    randomise_output(rule)
    w, h = torch.randn(e), torch.randn(e, 3)
    gen = torch.Generator().manual_seed(123)
    fracs = []
    for _ in range(3):
        w1, h1 = rule(g, w, h, generator=gen)
        changed = w1 != w
        # weights and hidden states fire together: unchanged w <=> unchanged h (all channels)
        assert torch.equal(changed, (h1 != h).any(dim=1))
        assert torch.equal(~changed, (h1 == h).all(dim=1))
        frac = changed.double().mean().item()
        sigma = math.sqrt(0.8 * 0.2 / e)
        assert abs(frac - 0.8) < 4 * sigma, (frac, sigma)
        fracs.append(frac)
    assert len(set(fracs)) > 1  # a fresh mask per step
    # same generator seed, same mask
    a = rule(g, w, h, generator=torch.Generator().manual_seed(5))[0]
    b = rule(g, w, h, generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(a, b)


def test_fire_mask_rate_and_full_rate() -> None:
    rule = LocalRule(2, fire_rate=0.3)
    m = rule.fire_mask(20000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs(m.mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)
    assert torch.equal(LocalRule(2, fire_rate=1.0).fire_mask(7, torch.device("cpu")), torch.ones(7))


def test_mask_argument_respected() -> None:
    arch = Architecture.mlp([4, 5, 3])
    g = WeightGraph.from_architecture(arch)
    e = arch.num_weights
    rule = LocalRule(2, fire_rate=0.5)
    randomise_output(rule)
    w, h = torch.randn(e), torch.randn(e, 2)
    mask = torch.zeros(e)
    mask[::3] = 1.0
    w1, h1 = rule(g, w, h, mask=mask)
    on = mask.bool()
    assert torch.equal(w1[~on], w[~on]) and torch.equal(h1[~on], h[~on])
    assert (w1[on] != w[on]).all() and (h1[on] != h[on]).all(dim=1).all()
    # the update of firing weights is the full delta of the rule
    d = rule.delta(perceive(g, w, h))
    torch.testing.assert_close(w1[on], w[on] + d[on, 0])
    torch.testing.assert_close(h1[on], h[on] + d[on, 1:])
    # bool masks work too and give the same result
    w2, h2 = rule(g, w, h, mask=on)
    assert torch.equal(w1, w2) and torch.equal(h1, h2)


def test_forward_is_functional() -> None:
    arch = Architecture.mlp([3, 4, 2])
    g = WeightGraph.from_architecture(arch)
    rule = LocalRule(3, fire_rate=1.0)
    randomise_output(rule)
    w, h = torch.randn(arch.num_weights), torch.randn(arch.num_weights, 3)
    w0, h0 = w.clone(), h.clone()
    w1, h1 = rule(g, w, h)
    assert torch.equal(w, w0) and torch.equal(h, h0)
    assert w1.data_ptr() != w.data_ptr() and h1.data_ptr() != h.data_ptr()
    # no in-place op on tensors needed for backward: a double backward-through works
    w.requires_grad_(True)
    w1, h1 = rule(g, w, h)
    w2, h2 = rule(g, w1, h1)
    (w2.square().sum() + h2.square().sum()).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("bound", [0.05, 0.5])
def test_bound_bounds_updates(bound: float) -> None:
    arch = Architecture.mlp([5, 6, 3])
    g = WeightGraph.from_architecture(arch)
    torch.manual_seed(0)
    rule = LocalRule(3, fire_rate=1.0, bound=bound).double()  # float64: w1 - w is exact enough
    randomise_output(rule, std=50.0)
    w, h = float64_state(arch.num_weights, 3, seed=0)
    w1, h1 = rule(g, w, h)
    dw, dh = (w1 - w).abs(), (h1 - h).abs()
    assert dw.max() <= bound * (1 + 1e-9) and dh.max() <= bound * (1 + 1e-9)
    assert dw.max() > 0.9 * bound  # saturated: the bound is what limits the update
    unbounded = LocalRule(3, fire_rate=1.0).double()
    unbounded.load_state_dict(rule.state_dict())
    assert (unbounded(g, w, h)[0] - w).abs().max() > 2 * bound


def test_gradients_reach_every_rule_parameter_after_three_steps() -> None:
    torch.manual_seed(0)
    arch = Architecture.mlp([4, 6, 3])
    g = WeightGraph.replicate(arch, 2)
    c = 4
    rule = LocalRule(c, widths=(16, 16), bound=1.0)
    # With the zero-initialised output layer only that layer would receive gradient (the hidden
    # layers' gradients pass through its zero weights), so re-initialise it with small values.
    randomise_output(rule, std=0.05)
    w, h = initial_state(g, c, "random", generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        w, h = rule(g, w, h, generator=gen)
    x = torch.randn(16, 4)
    y = torch.randint(0, 3, (16,))
    logits = task_forward(g, w, x)  # (G, B, 3)
    loss = F.cross_entropy(logits.reshape(-1, 3), y.repeat(2))
    loss.backward()
    for name, param in rule.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kwargs", "part"),
    [
        ({"fire_rate": 0.0}, "fire_rate"),
        ({"fire_rate": 1.5}, "fire_rate"),
        ({"bound": 0.0}, "bound"),
        ({"bound": -1.0}, "bound"),
        ({"hidden_channels": -1}, "hidden_channels"),
        ({"neighbourhood": "star"}, "unknown neighbourhood"),
        ({"reduce": "max"}, "unknown reduce"),
        ({"activation": "swish"}, "unknown activation"),
    ],
)
def test_invalid_rule_arguments(kwargs: dict, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        LocalRule(**kwargs)


def test_invalid_call_arguments() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([3, 2]))
    rule = LocalRule(2)
    w, h = torch.zeros(g.num_nodes), torch.zeros(g.num_nodes, 2)
    with pytest.raises(ValueError, match="unknown path"):
        rule(g, w, h, path="slow")
    with pytest.raises(ValueError, match="w must have shape"):
        rule(g, w[:-1], h)
    with pytest.raises(ValueError, match="h must have shape"):
        rule(g, w, h[:, :1].squeeze(1))


def test_config_round_trip_and_shapes() -> None:
    rule = LocalRule(5, widths=(7, 9), activation="tanh", neighbourhood="directed", bound=0.2)
    again = LocalRule(**rule.config())
    assert again.config() == rule.config()
    dims = [m.in_features for m in rule.mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [18, 7, 9] and rule.out.out_features == 6
    assert "C=5" in repr(rule) and "18-7-9-6" in repr(rule)


def test_rule_in_float64() -> None:
    arch = Architecture.mlp([3, 2])
    g = WeightGraph.from_architecture(arch)
    rule = LocalRule(2, fire_rate=1.0).double()
    randomise_output(rule)
    w, h = float64_state(arch.num_weights, 2, seed=0)
    w1, h1 = rule(g, w, h)
    assert w1.dtype == torch.float64 and h1.dtype == torch.float64


def test_building_a_rule_leaves_no_generated_file_in_the_temp_folder(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from gnca import Architecture, LocalRule, WeightGraph\n"
        "r = LocalRule(hidden_channels=2)\n"
        "g = WeightGraph.from_architecture(Architecture.mlp([3, 2]))\n"
        "w, h = torch.randn(g.num_nodes), torch.randn(g.num_nodes, 2)\n"
        "assert torch.allclose(r.perceive(g, w, h, 'explicit'), r.perceive(g, w, h), atol=1e-6)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not list(tmp_path.glob("*propagate*.py"))


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_gradcheck_of_a_whole_step(neighbourhood: str, include_self: bool) -> None:
    """Two differentiable steps (fast path, fixed mask) against finite differences, for the
    state and for every rule parameter, in float64."""
    arch = Architecture.skip_mlp([3, 2, 2], skip=2)
    g = WeightGraph.collate([WeightGraph.from_architecture(arch)] * 2)
    c = 2
    rule = LocalRule(c, widths=(5,), neighbourhood=neighbourhood, include_self=include_self)
    rule = rule.double()
    randomise_output(rule)
    w, h = float64_state(g.num_nodes, c, seed=1)
    mask = (torch.arange(g.num_nodes) % 3 != 0).double()
    names = [n for n, _ in rule.named_parameters()]

    def fn(w, h, *params):
        state = dict(zip(names, params, strict=True))
        w1, h1 = torch.func.functional_call(rule, state, (g, w, h), {"mask": mask})
        w2, h2 = torch.func.functional_call(rule, state, (g, w1, h1), {"mask": mask})
        return w2, h2

    params = tuple(p.detach().clone().requires_grad_(True) for p in rule.parameters())
    inputs = (w.requires_grad_(True), h.requires_grad_(True), *params)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_forward_with_gradients_is_the_reference_step_bitwise(path: str) -> None:
    """With gradients and without the factored flag, forward runs LocalRule.step itself."""
    g = WeightGraph.replicate(Architecture.skip_mlp([4, 5, 3, 2], skip=2), 2)
    rule = LocalRule(3, widths=(8, 8), bound=0.5, state_bound=2.0, fire_rate=0.7)
    randomise_output(rule)
    w, h = torch.randn(g.num_nodes), torch.randn(g.num_nodes, 3)
    assert pick_route(rule, g, w, path) is None
    outs, grads = [], []
    for step in (rule, rule.step):
        wg = w.clone().requires_grad_(True)
        w1, h1 = step(g, wg, h, generator=torch.Generator().manual_seed(1), path=path)
        (w1.sin().sum() + h1.square().sum()).backward()
        outs.append((w1.detach(), h1.detach()))
        grads.append([wg.grad, *(p.grad.clone() for p in rule.parameters())])
        rule.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("state_bound", [None, 0.7])
def test_reference_step_is_the_update_equation(state_bound: float | None) -> None:
    """step() against the class docstring's equation written out on the explicit line graph."""
    g = WeightGraph.replicate(Architecture.mlp([3, 4, 2]), 2)
    e, c, b = g.num_nodes, 2, 0.4
    rule = LocalRule(c, widths=(6,), bound=b, state_bound=state_bound).double()
    randomise_output(rule, std=2.0)
    w, h = float64_state(e, c, seed=3)
    m = (torch.arange(e) % 3 != 0).double()
    w1, h1 = rule.step(g, w, h, mask=m, path="explicit")
    ei_f, ei_b = rule.line_graph(g)  # (2, pairs): messages from source j to target i
    x = torch.cat([w.unsqueeze(1), h], dim=1)

    def mean_over(ei: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x).index_add_(0, ei[1], x[ei[0]])
        count = torch.bincount(ei[1], minlength=e).clamp(min=1).unsqueeze(1)
        return total / count

    p = torch.cat([x, mean_over(ei_f), mean_over(ei_b)], dim=1)
    d = b * torch.tanh(rule.mlp(p) / b)
    h_target = (
        h + d[:, 1:]
        if state_bound is None
        else state_bound * torch.tanh((h + d[:, 1:]) / state_bound)
    )
    torch.testing.assert_close(w1, w + m * d[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(h1, h + m.unsqueeze(1) * (h_target - h), rtol=0, atol=1e-12)


def test_pick_route_follows_the_table() -> None:
    """Which route forward runs (the table in gnca.rule_fast)."""
    g = WeightGraph.from_architecture(Architecture.mlp([3, 4, 2]))
    w32, w16 = torch.zeros(g.num_nodes), torch.zeros(g.num_nodes, dtype=torch.bfloat16)
    rule = LocalRule(2)
    assert pick_route(rule, g, w32, "fast") is None  # gradients on: the reference
    assert pick_route(rule, g, w32, "explicit") is None
    rule.factored = True
    assert pick_route(rule, g, w32, "fast") is rule_fast.factored
    assert pick_route(rule, g, w32, "explicit") is None  # factored needs the fast path
    assert pick_route(rule, g, w16, "fast") is None  # no sparse products in bf16
    with torch.no_grad():
        assert pick_route(rule, g, w32, "fast") is rule_fast.fused_step  # flag ignored
        assert pick_route(rule, g, w32, "explicit") is rule_fast.blocked
        rule.factored = False
        assert pick_route(rule, g, w32, "fast") is rule_fast.fused_step
