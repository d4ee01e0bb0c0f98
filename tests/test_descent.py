"""The descent path of a data-reading rule (``rule.descent``): the weight update of the MLP plus
``-alpha * mask * delta sense``, on every route, against a hand-written reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import NEIGHBOURHOOD_NAMES, tiny_config

import gnca.rule
from gnca import Architecture, LocalRule, WeightGraph
from gnca.build import load_trained
from gnca.config import config_from_dict, config_to_dict
from gnca.rule_adam import dense_plan
from gnca.rule_fast import fused_step, pick_route
from gnca.senses import SENSES, sense_size
from gnca.state import initial_state

ALL = list(SENSES)
DELTA = [n for n in ALL for _ in range(SENSES[n])].index("delta")  # its column in the senses


def _case(g: int = 3, c: int = 4, seed: int = 0, **rule_kw):
    """A rule with a descent path, its twin without one (same MLP), a batch of nets, senses."""
    adam = {k: rule_kw.pop(k) for k in ("descent_norm", "descent_momentum", "descent_age")
            if k in rule_kw}  # fmt: skip
    c = max(c, 6) if adam else c  # room for Adam's moments and the feedback
    torch.manual_seed(seed)
    arch = Architecture.mlp([3, 5, 2])
    graph = WeightGraph.replicate(arch, g)
    gen = torch.Generator().manual_seed(seed)
    w, _ = initial_state(graph, c, "random", generator=gen)
    w = w.double()
    h = torch.randn(w.shape[0], c, generator=gen, dtype=torch.float64)
    s = torch.rand(w.shape[0], sense_size(ALL), generator=gen, dtype=torch.float64) - 0.5
    kw = dict(senses=ALL, sense_norm=True, bound=0.1, **rule_kw)
    rule = LocalRule(c, (16,), descent=0.05, **adam, **kw).double()
    with torch.no_grad():  # a trained-looking rule: nonzero last layer and step size
        rule.out.weight.normal_(0, 0.3)
        rule.descent_log.fill_(0.4)
        if rule.descent_age:
            rule.descent_age_coef.fill_(0.7)
    twin = LocalRule(c, (16,), **kw).double()
    twin.load_state_dict(
        {k: v for k, v in rule.state_dict().items() if not k.startswith("descent")}
    )
    return rule, twin, graph, w, h, s


def _reference(rule, twin, graph, w, h, s, mask):
    """The update written out: the twin's step, then each firing weight steps down its delta
    sense as the reader gave it (not rescaled by sense_norm) by alpha = descent *
    exp(descent_log), in a Python loop over weights."""
    w_twin, h_twin = twin.step(graph, w, h, mask=mask, senses=s)
    assert not torch.equal(rule.read(graph, s)[:, DELTA], s[:, DELTA])  # sense_norm rescales
    alpha = rule.descent * float(torch.exp(rule.descent_log.detach()))
    want = w_twin.detach().clone()
    for i in range(w.shape[0]):
        want[i] -= alpha * float(mask[i]) * float(s[i, DELTA])
    return want, h_twin


@pytest.mark.parametrize("fire_rate", [1.0, 0.5])
def test_every_route_equals_the_loop_reference(fire_rate):
    rule, twin, graph, w, h, s = _case(fire_rate=fire_rate)
    mask = rule.fire_mask(w.shape[0], w.device, torch.Generator().manual_seed(3)).double()
    want_w, want_h = _reference(rule, twin, graph, w, h, s, mask)
    with torch.no_grad():
        assert pick_route(rule, graph, w, "fast") is fused_step
        for path in ("fast", "explicit"):  # fused_step, blocked
            got_w, got_h = rule(graph, w, h, mask=mask, senses=s, path=path)
            torch.testing.assert_close(got_w, want_w)
            torch.testing.assert_close(got_h, want_h.detach())
    got_w, got_h = rule.step(graph, w, h, mask=mask, senses=s)  # the reference route
    torch.testing.assert_close(got_w.detach(), want_w)
    rule.factored = True  # the factored differentiable route
    got_w, _ = rule(graph, w, h, mask=mask, senses=s)
    torch.testing.assert_close(got_w.detach(), want_w)


def test_descent_only_moves_the_weights_by_the_path_alone():
    """With descent_only the MLP's weight output is dropped: w' = w - alpha * mask * s_delta,
    on every route, and the hidden states are the MLP's as before."""
    rule, twin, graph, w, h, s = _case(fire_rate=0.5, seed=2)
    rule.descent_only = True
    mask = rule.fire_mask(w.shape[0], w.device, torch.Generator().manual_seed(4)).double()
    alpha = rule.descent * float(torch.exp(rule.descent_log.detach()))
    want_w = w - alpha * mask * s[:, DELTA]
    _, want_h = twin.step(graph, w, h, mask=mask, senses=s)
    with torch.no_grad():
        for path in ("fast", "explicit"):
            got_w, got_h = rule(graph, w, h, mask=mask, senses=s, path=path)
            torch.testing.assert_close(got_w, want_w)
            torch.testing.assert_close(got_h, want_h.detach())
    got_w, _ = rule.step(graph, w, h, mask=mask, senses=s)
    torch.testing.assert_close(got_w.detach(), want_w)
    got_w.sum().backward()  # the meta-gradient reaches the step size, not the MLP's dw
    assert rule.descent_log.grad.abs() > 0
    assert rule.out.weight.grad is None  # w' does not depend on the MLP
    assert "descent_only" in repr(rule) and rule.config()["descent_only"] is True


def test_a_drawn_mask_is_drawn_once_for_both_updates():
    """Without a mask, the MLP's update and the descent path use one mask, drawn from the
    generator as the rule without descent draws it."""
    rule, twin, graph, w, h, s = _case(fire_rate=0.5)
    mask = twin.fire_mask(w.shape[0], w.device, torch.Generator().manual_seed(5)).double()
    assert 0 < mask.sum() < mask.numel()
    want_w, want_h = _reference(rule, twin, graph, w, h, s, mask)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got_w, got_h = rule(graph, w, h, senses=s, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(got_w.detach(), want_w)
        torch.testing.assert_close(got_h.detach(), want_h.detach())


def _assert_gradient_is_a_finite_difference(rule, param, graph, w, h, s) -> None:
    """The meta-gradient of a linear loss of ``w'`` reaches the 0-dim ``param`` of ``rule``,
    nonzero, and equals a central finite difference."""
    mask = torch.ones(w.shape[0], dtype=torch.float64)
    target = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(1), dtype=w.dtype)

    def loss() -> torch.Tensor:
        w_new, _ = rule(graph, w, h, mask=mask, senses=s)
        return (w_new * target).sum()

    loss().backward()
    g = param.grad
    assert g is not None and g.abs() > 0
    eps = 1e-6
    with torch.no_grad():
        param += eps
        up = loss()
        param -= 2 * eps
        down = loss()
    torch.testing.assert_close(g, (up - down) / (2 * eps))


def test_the_step_size_is_learned():
    """The meta-gradient reaches descent_log, and equals a finite difference."""
    rule, _, graph, w, h, s = _case()
    _assert_gradient_is_a_finite_difference(rule, rule.descent_log, graph, w, h, s)


def test_a_fresh_rule_with_descent_descends():
    """A fresh rule's MLP adds nothing, so its step is pure descent along the delta sense."""
    torch.manual_seed(0)
    arch = Architecture.mlp([3, 5, 2])
    graph = WeightGraph.replicate(arch, 2)
    w, h = initial_state(graph, 4, "random", generator=torch.Generator().manual_seed(0))
    s = torch.rand(w.shape[0], sense_size(ALL)) - 0.5
    rule = LocalRule(4, senses=ALL, fire_rate=1.0, descent=0.2)
    with torch.no_grad():
        got, h_new = rule(graph, w, h, senses=s)
    torch.testing.assert_close(got, w - 0.2 * s[:, DELTA])
    assert torch.equal(h_new, h)


def test_checkpoints_keep_the_step_size(tmp_path):
    from gnca.trainer import MetaTrainer

    d = config_to_dict(tiny_config())
    d["rule"].update(senses=ALL, sense_batch=8, descent=0.1)
    t = MetaTrainer.from_config(config_from_dict(d))
    for _ in range(2):
        t.meta_step()
    before = float(t.rule.descent_log.detach())
    assert before != 0.0  # two meta-steps moved it
    t.save(tmp_path / "last.pt")
    loaded = load_trained(str(tmp_path / "last.pt")).rule
    assert loaded.config()["descent"] == 0.1 and "descent=0.1" in repr(loaded)
    assert float(loaded.descent_log.detach()) == before


def test_bad_descent_is_refused():
    with pytest.raises(ValueError, match="descent must be >= 0"):
        LocalRule(4, senses=ALL, descent=-0.1)
    with pytest.raises(ValueError, match="add 'delta' to senses"):
        LocalRule(4, senses=["act", "error"], descent=0.1)
    with pytest.raises(ValueError, match="descent_only moves the weights"):
        LocalRule(4, senses=ALL, descent_only=True)
    assert "descent" not in LocalRule(4, senses=ALL).config()
    assert "descent_log" not in LocalRule(4, senses=ALL).state_dict()
    d = config_to_dict(tiny_config())
    d["rule"].update(senses=["act", "hebb"], descent=0.1)
    with pytest.raises(ValueError, match="'rule.descent' needs the delta sense in 'rule.senses'"):
        config_from_dict(d)
    d["rule"].update(senses=ALL, descent=0.0, descent_only=True)
    with pytest.raises(ValueError, match="'rule.descent_only' needs 'rule.descent' > 0"):
        config_from_dict(d)
    d["rule"].update(senses=ALL, descent=-1.0, descent_only=False)
    with pytest.raises(ValueError, match="rule.descent"):
        config_from_dict(d)


# ---------------------------------------------------------------------- Adam's path
def _adam_state(h: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """``h`` with valid Adam moments in its first ``k`` channels (``v >= 0``, ``c`` in [0, 1),
    ``m`` any sign), the first four weights fresh (all 0)."""
    g = torch.Generator().manual_seed(seed)
    e = h.shape[0]
    cols = [
        torch.rand(e, generator=g, dtype=h.dtype) * 0.01,
        torch.rand(e, generator=g, dtype=h.dtype),
    ]
    if k == 4:
        cols += [torch.randn(e, generator=g, dtype=h.dtype) * 0.05,
                 torch.rand(e, generator=g, dtype=h.dtype)]  # fmt: skip
    moments = torch.stack(cols, dim=1)
    moments[:4] = 0.0
    return torch.cat([moments, h[:, k:]], dim=1)


def _adam_reference(rule, twin, graph, w, h, s, mask, b1, b2):
    """Adam's path written out, weight by weight, in Python floats (with ``descent_age`` the
    step size of a weight of age t is alpha * exp(mu * b2^t))."""
    w_twin, h_twin = twin.step(graph, w, h, mask=mask, senses=s)
    alpha = rule.descent * float(torch.exp(rule.descent_log.detach()))
    mu = float(rule.descent_age_coef) if rule.descent_age else 0.0
    k = 4 if b1 else 2
    base = w if rule.descent_only else w_twin.detach()
    want_w, want_h = base.clone(), h_twin.detach().clone()
    for i in range(w.shape[0]):
        v, c2 = float(h[i, 0]), float(h[i, 1])
        m, c1 = (float(h[i, 2]), float(h[i, 3])) if k == 4 else (0.0, 0.0)
        if mask[i]:
            x = float(s[i, DELTA])
            v, c2 = b2 * v + (1 - b2) * x * x, b2 * c2 + (1 - b2)
            m, c1 = b1 * m + (1 - b1) * x, b1 * c1 + (1 - b1)
            top = m / c1 if k == 4 else x
            want_w[i] -= alpha * math.exp(mu * (1 - c2)) * top / (math.sqrt(v / c2) + 1e-8)
        want_h[i, :k] = torch.tensor([v, c2, m, c1][:k], dtype=h.dtype)
    return want_w, want_h


@pytest.mark.parametrize("fire_rate", [1.0, 0.5])
@pytest.mark.parametrize("b1", [0.0, 0.9])
@pytest.mark.parametrize("only", [False, True])
@pytest.mark.parametrize("age", [False, True])
def test_adams_path_equals_the_loop_reference_on_every_route(fire_rate, b1, only, age):
    rule, twin, graph, w, h, s = _case(fire_rate=fire_rate, descent_norm=0.99,
                                       descent_momentum=b1, descent_age=age)  # fmt: skip
    rule.descent_only = only
    h = _adam_state(h, rule.moment_channels)
    mask = rule.fire_mask(w.shape[0], w.device, torch.Generator().manual_seed(3)).double()
    want_w, want_h = _adam_reference(rule, twin, graph, w, h, s, mask, b1, 0.99)
    with torch.no_grad():
        for path in ("fast", "explicit"):
            got_w, got_h = rule(graph, w, h, mask=mask, senses=s, path=path)
            torch.testing.assert_close(got_w, want_w)
            torch.testing.assert_close(got_h, want_h)
    got_w, got_h = rule.step(graph, w, h, mask=mask, senses=s)
    torch.testing.assert_close(got_w.detach(), want_w)
    torch.testing.assert_close(got_h.detach(), want_h)
    rule.factored = True
    got_w, got_h = rule(graph, w, h, mask=mask, senses=s)
    torch.testing.assert_close(got_w.detach(), want_w)
    torch.testing.assert_close(got_h.detach(), want_h)


def _adam_inputs(e: int, c: int, gen: torch.Generator):
    """Float64 ``w (E,)``, states ``(E, C)`` with Adam's moments as growth has them, and
    senses ``(E, S)`` of all senses, drawn from ``gen``."""
    w = torch.randn(e, generator=gen, dtype=torch.float64)
    h = _adam_state(torch.randn(e, c, generator=gen, dtype=torch.float64) * 0.5, 4)
    s = torch.rand(e, sense_size(ALL), generator=gen, dtype=torch.float64) - 0.5
    return w, h, s


def _adam_only_graph(dense: bool):
    """Three copies of one MLP (the dense route), or two different MLPs (the gathering one)."""
    if dense:
        return WeightGraph.replicate(Architecture.mlp([4, 6, 3, 2]), 3)
    archs = [Architecture.mlp([3, 5, 2]), Architecture.mlp([4, 6, 3, 2])]
    return WeightGraph.collate([WeightGraph.from_architecture(a) for a in archs])


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("widths", [(16,), (12, 8)])
@pytest.mark.parametrize("bound", [None, 0.1])
@pytest.mark.parametrize("state_bound", [None, 1.0])
@pytest.mark.parametrize("block_rows", [None, 7, 2, 1])  # 2, 1: chunks split a layer's tails
@pytest.mark.parametrize("fire_rate", [1.0, 0.5])
def test_the_adam_only_route_equals_the_reference_step(
    monkeypatch, dense, widths, bound, state_bound, block_rows, fire_rate
):
    """Growing a descent-only rule with Adam's path takes adam_only_step, which computes only
    the MLP outputs that survive: w' and the moments equal the reference step's bit for bit,
    the other hidden channels up to rounding (float64); the dropped outputs change nothing."""
    calls = []
    real = gnca.rule.adam_only_step
    monkeypatch.setattr(gnca.rule, "adam_only_step", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    graph = _adam_only_graph(dense)
    plan = dense_plan(graph, "incident", False, "mean", torch.float64)
    assert (plan is not None) == dense
    gen = torch.Generator().manual_seed(1)
    e, c = graph.num_nodes, 7
    w, h, s = _adam_inputs(e, c, gen)
    rule = LocalRule(c, widths, senses=ALL, sense_norm=True, bound=bound, state_bound=state_bound,
                     fire_rate=fire_rate, descent=0.05, descent_only=True, descent_norm=0.99,
                     descent_momentum=0.9).double()  # fmt: skip
    rule.block_rows = block_rows
    with torch.no_grad():
        for m in rule.mlp:
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.5)
                m.bias.normal_(0, 0.5)
        rule.descent_log.fill_(0.3)
    want_w, want_h = rule.step(graph, w, h, senses=s, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got_w, got_h = rule(graph, w, h, senses=s, generator=torch.Generator().manual_seed(4))
    assert calls == [1]
    assert torch.equal(got_w, want_w.detach()) and torch.equal(got_h[:, :4], want_h[:, :4])
    torch.testing.assert_close(got_h, want_h.detach(), rtol=0, atol=1e-12)
    assert not torch.equal(got_h[:, 4:], h[:, 4:])  # the MLP did write the other channels
    with torch.no_grad():  # not taken with gradients, nor for a rule whose MLP moves w
        rule.descent_only = False
        rule(graph, w, h, senses=s)
    rule.descent_only = True
    rule(graph, w, h, senses=s)
    assert calls == [1]


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_the_dense_adam_only_route_on_every_neighbourhood(neighbourhood, include_self, reduce):
    """The layer-by-layer first layer of the dense route equals the gathered perceptions' for
    every neighbourhood and option (both against the reference step, float64)."""
    graph = _adam_only_graph(True)
    assert dense_plan(graph, neighbourhood, include_self, reduce, torch.float64) is not None
    gen = torch.Generator().manual_seed(5)
    e, c = graph.num_nodes, 6
    w, h, s = _adam_inputs(e, c, gen)
    torch.manual_seed(1)
    path = dict(descent=0.05, descent_only=True, descent_norm=0.999, descent_momentum=0.9)
    opts = dict(neighbourhood=neighbourhood, include_self=include_self, reduce=reduce)
    rule = LocalRule(c, (16,), senses=ALL, bound=0.1, state_bound=1.0, **opts, **path).double()
    with torch.no_grad():
        rule.out.weight.normal_(0, 0.5)
    want_w, want_h = rule.step(graph, w, h, senses=s, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got_w, got_h = rule(graph, w, h, senses=s, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got_w, want_w.detach())
    torch.testing.assert_close(got_h, want_h.detach(), rtol=0, atol=1e-12)


def test_the_dense_adam_only_route_hands_on_channel_major_states_and_reads_any_layout():
    """The dense route returns the states channel-major (strides (1, E)), the layout it reads
    fastest; fed back over several steps they keep w' and the moments equal to the reference
    step's bit for bit, and a state or senses in either layout give the same step bit for bit."""
    graph = _adam_only_graph(True)
    gen = torch.Generator().manual_seed(8)
    e, c = graph.num_nodes, 6
    w, h, s = _adam_inputs(e, c, gen)
    torch.manual_seed(3)
    rule = LocalRule(c, (16,), senses=ALL, sense_norm=True, bound=0.1, state_bound=1.0,
                     fire_rate=1.0, descent=0.05, descent_only=True, descent_norm=0.99,
                     descent_momentum=0.9).double()  # fmt: skip
    with torch.no_grad():
        rule.out.weight.normal_(0, 0.5)
    w_ref, h_ref, w_got, h_got = w, h, w, h
    for _ in range(3):
        w_ref, h_ref = (x.detach() for x in rule.step(graph, w_ref, h_ref, senses=s))
        with torch.no_grad():
            w_got, h_got = rule(graph, w_got, h_got, senses=s)
        assert h_got.stride() == (1, e)
        assert torch.equal(w_got, w_ref) and torch.equal(h_got[:, :4], h_ref[:, :4])
        torch.testing.assert_close(h_got, h_ref, rtol=0, atol=1e-12)
    with torch.no_grad():
        row_major = rule(graph, w_got, h_got.contiguous(), senses=s.contiguous())
        channel_major = rule(graph, w_got, h_got, senses=s.t().contiguous().t())
    assert all(torch.equal(a, b) for a, b in zip(row_major, channel_major, strict=True))


@pytest.mark.parametrize("floor", [0.0, 0.3])
def test_the_dense_route_reads_the_normalised_senses_chunk_by_chunk_bit_for_bit(floor):
    """The dense route normalises the error senses one chunk at a time: every chunk equals the
    same weights' rows of LocalRule.read on the whole senses, bit for bit for senses laid out
    as the reader hands them when growing (channel-major), up to the order of the sums' additions
    otherwise."""
    from gnca.rule_adam import _ChunkReader

    graph = _adam_only_graph(True)
    g, e = 3, graph.num_nodes
    per = e // g
    s = torch.randn(e, sense_size(ALL), generator=torch.Generator().manual_seed(9)) * 0.4
    s[:per] *= 0.01  # one net's signals below the floor
    rule = LocalRule(6, (16,), senses=ALL, sense_norm=True, sense_floor=floor)
    sc = s.t().contiguous()  # (S, E)
    with torch.no_grad():  # growing
        want = rule.read(graph, sc.t()).t().reshape(-1, g, per)  # (S, G, E / G)
        near = rule.read(graph, s).t().reshape(-1, g, per)
    read = _ChunkReader(rule, sc.view(-1, g, per), list(range(sense_size(ALL))))
    for g0, g1, sl in [(0, 3, slice(0, per)), (1, 2, slice(5, 17)), (0, 2, slice(20, per))]:
        got = read.into(torch.full_like(want[:, g0:g1, sl], torch.nan), g0, g1, sl)
        assert torch.equal(got, want[:, g0:g1, sl])
        torch.testing.assert_close(got, near[:, g0:g1, sl], rtol=1e-6, atol=0)
    assert not torch.equal(want, s.t().reshape(-1, g, per))  # it did rescale


# ---------------------------------------------------------------------- age-dependent step
@pytest.mark.parametrize("dense", [True, False])
def test_the_adam_only_route_takes_the_age_dependent_step(dense):
    """With descent_age the growing route's w' still equals the reference step's bit for bit,
    and the step of a weight of age t is alpha * exp(mu * b2^t) times Adam's."""
    graph = _adam_only_graph(dense)
    gen = torch.Generator().manual_seed(6)
    e, c = graph.num_nodes, 6
    w, h, s = _adam_inputs(e, c, gen)
    torch.manual_seed(2)
    path = dict(descent=0.05, descent_only=True, descent_norm=0.99, descent_momentum=0.9,
                fire_rate=1.0)  # fmt: skip
    rule = LocalRule(c, (16,), senses=ALL, bound=0.1, descent_age=True, **path).double()
    plain = LocalRule(c, (16,), senses=ALL, bound=0.1, **path).double()
    plain.load_state_dict({k: v for k, v in rule.state_dict().items() if k != "descent_age_coef"})
    with torch.no_grad():
        rule.out.weight.normal_(0, 0.5)
        plain.out.weight.copy_(rule.out.weight)
        got0, _ = rule(graph, w, h, senses=s)  # mu = 0: the step without descent_age
        assert torch.equal(got0, plain(graph, w, h, senses=s)[0])
        rule.descent_age_coef.fill_(-0.8)
    want_w, want_h = rule.step(graph, w, h, senses=s)
    with torch.no_grad():
        got_w, got_h = rule(graph, w, h, senses=s)
        base_w, _ = plain(graph, w, h, senses=s)
    assert torch.equal(got_w, want_w.detach()) and torch.equal(got_h[:, :4], want_h[:, :4])
    age = 1 - got_h[:, 1]  # b2^t after this step
    torch.testing.assert_close(w - got_w, (w - base_w) * torch.exp(-0.8 * age))


def test_the_age_coefficient_is_learned():
    """The meta-gradient reaches descent_age_coef and equals a finite difference."""
    rule, _, graph, w, h, s = _case(descent_norm=0.99, descent_momentum=0.9, descent_age=True)
    h = _adam_state(h, 4)
    _assert_gradient_is_a_finite_difference(rule, rule.descent_age_coef, graph, w, h, s)


def test_descent_age_is_kept_and_checked(tmp_path):
    from gnca.trainer import MetaTrainer

    d = config_to_dict(tiny_config())
    d["rule"].update(senses=ALL, sense_batch=8, hidden_channels=6, descent=0.01, descent_only=True,
                     descent_norm=0.99, descent_momentum=0.9, descent_age=True)  # fmt: skip
    t = MetaTrainer.from_config(config_from_dict(d))
    for _ in range(2):
        t.meta_step()
    assert float(t.rule.descent_age_coef) != 0.0  # meta-training moved it
    t.save(tmp_path / "last.pt")
    loaded = load_trained(str(tmp_path / "last.pt")).rule
    assert loaded.config()["descent_age"] is True and "descent_age" in repr(loaded)
    assert torch.equal(loaded.descent_age_coef, t.rule.descent_age_coef.detach())
    assert "descent_age" not in LocalRule(6, senses=ALL, descent=0.1, descent_norm=0.9).config()
    with pytest.raises(ValueError, match="descent_age reads each weight's age"):
        LocalRule(6, senses=ALL, descent=0.1, descent_age=True)
    d["rule"].update(descent_norm=None, descent_momentum=0.0)
    with pytest.raises(ValueError, match="'rule.descent_age' needs 'rule.descent_norm'"):
        config_from_dict(d)


def test_a_fixed_age_coefficient_is_a_buffer_meta_training_leaves_alone(tmp_path):
    """descent_age_fixed: mu is a buffer at the given value (not a parameter), the step uses it
    (the loop reference), meta-training does not move it, checkpoints keep it."""
    from gnca.trainer import MetaTrainer

    rule, twin, graph, w, h, s = _case(descent_norm=0.99, descent_momentum=0.9, descent_age=True)
    fixed = LocalRule(6, (16,), senses=ALL, sense_norm=True, bound=0.1, descent=0.05,
                      descent_norm=0.99, descent_momentum=0.9, descent_age=True,
                      descent_age_fixed=0.7).double()  # fmt: skip
    assert "descent_age_coef" not in dict(fixed.named_parameters())
    assert float(fixed.descent_age_coef) == pytest.approx(0.7) and "mu 0.7, fixed" in repr(fixed)
    fixed.load_state_dict(rule.state_dict())  # rule's mu is 0.7 too (_case)
    h = _adam_state(h, 4)
    mask = torch.ones(w.shape[0], dtype=torch.float64)
    want_w, want_h = _adam_reference(fixed, twin, graph, w, h, s, mask, 0.9, 0.99)
    got_w, got_h = fixed.step(graph, w, h, mask=mask, senses=s)
    torch.testing.assert_close(got_w.detach(), want_w)
    d = config_to_dict(tiny_config())
    d["rule"].update(senses=ALL, sense_batch=8, hidden_channels=6, descent=0.01, descent_only=True,
                     descent_norm=0.99, descent_momentum=0.9, descent_age=True,
                     descent_age_fixed=0.5)  # fmt: skip
    t = MetaTrainer.from_config(config_from_dict(d))
    for _ in range(2):
        t.meta_step()
    assert float(t.rule.descent_age_coef) == 0.5
    t.save(tmp_path / "last.pt")
    loaded = load_trained(str(tmp_path / "last.pt")).rule
    assert loaded.config()["descent_age_fixed"] == 0.5 and float(loaded.descent_age_coef) == 0.5
    with pytest.raises(ValueError, match="descent_age_fixed fixes descent_age's mu"):
        LocalRule(6, senses=ALL, descent=0.1, descent_norm=0.9, descent_age_fixed=0.5)
    d["rule"].update(descent_age=False)
    with pytest.raises(ValueError, match="'rule.descent_age_fixed' needs 'rule.descent_age'"):
        config_from_dict(d)


@pytest.mark.parametrize("b1", [0.0, 0.9])
def test_adams_path_is_torch_adam_on_the_senses(b1):
    """Fed the same sequence of senses as gradients, the descent-only path moves the weights
    as torch.optim.Adam moves a parameter (lr = alpha, betas = (b1, b2), eps = 1e-8)."""
    rule, _, graph, w, h, _ = _case(descent_norm=0.95, descent_momentum=b1)
    rule.descent_only = True
    h = torch.cat([torch.zeros_like(h[:, :4]), h[:, 4:]], dim=1)  # fresh moments
    alpha = rule.descent * float(torch.exp(rule.descent_log.detach()))
    p = torch.nn.Parameter(w.clone())
    opt = torch.optim.Adam([p], lr=alpha, betas=(b1, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(9)
    mask = torch.ones_like(w)
    with torch.no_grad():
        for _ in range(30):
            s = torch.rand(w.shape[0], sense_size(ALL), generator=gen, dtype=w.dtype) - 0.5
            s[:, DELTA] *= torch.rand(w.shape[0], generator=gen, dtype=w.dtype) * 3
            w, h = rule(graph, w, h, mask=mask, senses=s)
            p.grad = s[:, DELTA].clone()
            opt.step()
    torch.testing.assert_close(w, p.detach())


def test_a_fresh_adam_step_is_alpha_and_its_normaliser_a_constant_for_the_gradient():
    """From fresh moments every firing weight steps by alpha * s / (|s| + eps) (about alpha);
    v is detached, so d w' / d s = -alpha / (|s| + eps) (not the zero derivative of a sign),
    and v carries no meta-gradient."""
    rule, _, graph, w, h, s = _case(descent_norm=0.999, descent_momentum=0.9)
    rule.descent_only = True
    h = torch.cat([torch.zeros_like(h[:, :4]), h[:, 4:]], dim=1)
    mask = torch.ones(w.shape[0], dtype=torch.float64)
    alpha = rule.descent * float(torch.exp(rule.descent_log.detach()))
    s = s.clone().requires_grad_(True)
    got_w, got_h = rule(graph, w, h, mask=mask, senses=s)
    sd = s.detach()[:, DELTA]
    torch.testing.assert_close(got_w.detach(), w - alpha * sd / (sd.abs() + 1e-8))
    (g,) = torch.autograd.grad(got_w.sum(), s, retain_graph=True)
    torch.testing.assert_close(g[:, DELTA], -alpha / (sd.abs() + 1e-8))
    (gv,) = torch.autograd.grad(got_h[:, 0].sum(), s, allow_unused=True, retain_graph=True)
    assert gv is None or not gv.any()  # the normaliser carries no meta-gradient
    (gm,) = torch.autograd.grad(got_h[:, 2].sum(), s)
    assert gm[:, DELTA].abs().min() > 0  # the first moment does


def test_a_zero_sense_does_not_move_a_weight():
    rule, _, graph, w, h, s = _case(descent_norm=0.9)
    rule.descent_only = True
    h = torch.cat([torch.zeros_like(h[:, :2]), h[:, 2:]], dim=1)
    s = s.clone()
    s[:4, DELTA] = 0.0
    with torch.no_grad():
        got_w, got_h = rule(graph, w, h, mask=torch.ones_like(w), senses=s)
    assert torch.equal(got_w[:4], w[:4]) and not got_h[:4, 0].any()
    assert torch.isfinite(got_w).all()


def test_checkpoints_and_configs_keep_adams_path(tmp_path):
    from gnca.trainer import MetaTrainer

    d = config_to_dict(tiny_config())
    d["rule"].update(senses=ALL, sense_batch=8, hidden_channels=6, descent=0.01,
                     descent_only=True, descent_norm=0.99, descent_momentum=0.9)  # fmt: skip
    t = MetaTrainer.from_config(config_from_dict(d))
    for _ in range(2):
        t.meta_step()
    t.save(tmp_path / "last.pt")
    loaded = load_trained(str(tmp_path / "last.pt")).rule
    assert loaded.config()["descent_norm"] == 0.99 and "descent_norm=0.99" in repr(loaded)
    assert loaded.config()["descent_momentum"] == 0.9 and loaded.moment_channels == 4
    assert "descent_norm" not in LocalRule(4, senses=ALL, descent=0.1).config()


def test_bad_adam_path_options_are_refused():
    with pytest.raises(ValueError, match=r"descent_norm must be in \[0, 1\)"):
        LocalRule(4, senses=ALL, descent=0.1, descent_norm=1.0)
    with pytest.raises(ValueError, match="descent_norm rescales the descent path"):
        LocalRule(4, senses=ALL, descent_norm=0.9)
    with pytest.raises(ValueError, match="hidden_channels >= 3"):
        LocalRule(2, senses=ALL, descent=0.1, descent_norm=0.9)
    with pytest.raises(ValueError, match="hidden_channels >= 5"):
        LocalRule(4, senses=ALL, descent=0.1, descent_norm=0.9, descent_momentum=0.9)
    with pytest.raises(ValueError, match="set descent_norm too"):
        LocalRule(8, senses=ALL, descent=0.1, descent_momentum=0.9)
    with pytest.raises(ValueError, match=r"descent_momentum must be in \[0, 1\)"):
        LocalRule(8, senses=ALL, descent=0.1, descent_norm=0.9, descent_momentum=-0.1)
    d = config_to_dict(tiny_config())
    d["rule"].update(senses=ALL, descent=0.0, descent_norm=0.9)
    with pytest.raises(ValueError, match="'rule.descent_norm' needs 'rule.descent' > 0"):
        config_from_dict(d)
    d["rule"].update(descent=0.1, descent_norm=-0.5)
    with pytest.raises(ValueError, match=r"'rule.descent_norm' must be in \[0, 1\)"):
        config_from_dict(d)
    d["rule"].update(descent_norm=0.9, hidden_channels=4, descent_momentum=0.9)
    with pytest.raises(ValueError, match="'rule.hidden_channels' >= 5"):
        config_from_dict(d)
    d["rule"].update(descent_norm=None)
    with pytest.raises(ValueError, match="'rule.descent_momentum' needs 'rule.descent_norm'"):
        config_from_dict(d)
    d["rule"].update(descent_norm=0.9, descent_momentum=1.5, hidden_channels=8)
    with pytest.raises(ValueError, match=r"'rule.descent_momentum' must be in \[0, 1\)"):
        config_from_dict(d)
    d["rule"].update(descent_momentum=0.9)
    d["task"].update(init="codes")
    with pytest.raises(ValueError, match="'task.init' codes"):
        config_from_dict(d)


# ---------------------------------------------------------------------- weights as feedback
def test_weights_as_feedback_read_what_a_learned_channel_holding_the_weights_reads():
    """feedback='weights' multiplies the backward messages by the (scaled) weights: the senses
    equal those of the learned reader whose feedback channel holds exactly those weights
    (the construction whose error signal is the true gradient, tests/test_examples.py), and
    they no longer depend on the last hidden channel."""
    from conftest import tiny_config

    from gnca.build import make_dataset, make_task
    from gnca.config import DataConfig
    from gnca.forward import effective_weights
    from gnca.senses import SenseReader

    task = make_task(tiny_config().task, make_dataset(DataConfig(name="wine")))
    graph = WeightGraph.replicate(Architecture.mlp([13, 6, 3]), 2)
    w, _ = initial_state(graph, 4, "random", generator=torch.Generator().manual_seed(0))
    h = torch.randn(w.shape[0], 4, generator=torch.Generator().manual_seed(1))
    eff = effective_weights(graph, w, task.fan_in_ref)
    h_w = torch.cat([h[:, :-1], eff.unsqueeze(1)], dim=1)
    for names in (ALL, ["error", "delta"]):
        learned = SenseReader(names, task, 16, torch.Generator().manual_seed(2))
        weights = SenseReader(names, task, 16, torch.Generator().manual_seed(2), feedback="weights")
        want = learned(graph, w, h_w)
        torch.testing.assert_close(weights(graph, w, h), want)
        assert not torch.equal(learned(graph, w, h), want)  # a random channel reads otherwise
    h_req = h.clone().requires_grad_(True)
    got = SenseReader(ALL, task, 16, feedback="weights")(graph, w, h_req)
    assert not got.requires_grad  # no meta-gradient through a feedback channel
    assert SenseReader(ALL, task, 16)(graph, w, h_req).requires_grad  # as a learned one has
    with pytest.raises(ValueError, match="unknown feedback 'x'; choose one of learned, weights"):
        SenseReader(ALL, task, 16, feedback="x")
    graph.layer_net = object()  # a layer net's graph (gnca/layers.py) carries one
    with pytest.raises(ValueError, match="feedback 'weights' reads MLP-like weight graphs"):
        SenseReader(ALL, task, 16, feedback="weights")(graph, w, h)


def test_weights_as_feedback_is_kept_and_checked():
    assert LocalRule(4, senses=ALL, feedback="weights").config()["feedback"] == "weights"
    assert "feedback" not in LocalRule(4, senses=ALL).config()
    with pytest.raises(ValueError, match="read by the error and delta senses only"):
        LocalRule(4, senses=["act", "hebb"], feedback="weights")
    d = config_to_dict(tiny_config())
    d["rule"].update(senses=["act"], feedback="weights")
    with pytest.raises(ValueError, match="'rule.feedback' is read by the error and delta"):
        config_from_dict(d)
    d["rule"].update(senses=ALL, feedback="mirror")
    with pytest.raises(ValueError, match="'rule.feedback' must be one of 'learned', 'weights'"):
        config_from_dict(d)


# ---------------------------------------------------------------------- feedback alignment
def _alignment_loop(graph, w, fb, fan_in_ref):
    """The cosine per net written out: a Python loop over the weights whose source neuron is
    a hidden neuron (not an input, not a bias, not an output), the weights scaled by
    fan_in_ref / fan_in of their head neuron."""
    from gnca.architecture import BIAS, INPUT, OUTPUT
    from gnca.graph import num_graphs, weight_batch

    kind, net = graph.neuron_kind, weight_batch(graph)
    sums = [[0.0, 0.0, 0.0] for _ in range(num_graphs(graph))]
    for i in range(w.shape[0]):
        if int(kind[graph.src[i]]) in (INPUT, BIAS, OUTPUT):
            continue
        we = float(w[i]) * fan_in_ref / float(graph.fan_in[i])
        s = sums[int(net[i])]
        s[0] += float(fb[i]) * we
        s[1] += float(fb[i]) ** 2
        s[2] += we**2
    return torch.tensor([d / math.sqrt(a * b) for d, a, b in sums], dtype=torch.float64)


@pytest.mark.parametrize("sizes", [[3, 5, 2], [4, 6, 5, 3]])
def test_feedback_alignment_equals_the_loop_reference(sizes):
    from gnca.forward import effective_weights
    from gnca.senses import feedback_alignment

    graph = WeightGraph.replicate(Architecture.mlp(sizes), 3)
    gen = torch.Generator().manual_seed(len(sizes))
    w = torch.randn(graph.src.numel(), generator=gen, dtype=torch.float64)
    fb = torch.randn(w.shape[0], generator=gen, dtype=torch.float64, requires_grad=True)
    got = feedback_alignment(graph, w, fb, 8.0)
    torch.testing.assert_close(got.detach(), _alignment_loop(graph, w, fb.detach(), 8.0))
    eff = effective_weights(graph, w, 8.0)
    torch.testing.assert_close(feedback_alignment(graph, w, 3 * eff, 8.0), torch.ones(3).double())
    torch.testing.assert_close(feedback_alignment(graph, w, -eff, 8.0), -torch.ones(3).double())
    w_req = w.clone().requires_grad_(True)
    feedback_alignment(graph, w_req, fb, 8.0).sum().backward()
    assert fb.grad is not None and fb.grad.abs().sum() > 0  # the rule is paid through h
    assert w_req.grad is None  # never through the weights
    flat = WeightGraph.replicate(Architecture.mlp([3, 2]), 2)  # no hidden neuron: no feedback
    w0 = torch.randn(flat.src.numel(), generator=gen, dtype=torch.float64)
    assert torch.equal(feedback_alignment(flat, w0, w0.clone(), 8.0), torch.zeros(2).double())
    graph.layer_net = object()
    with pytest.raises(ValueError, match="MLP-like weight graphs, not layer nets"):
        feedback_alignment(graph, w, fb, 8.0)


def test_feedback_align_adds_one_minus_the_cosine_to_the_meta_loss():
    """With pools off and the same draws, the meta-loss of train.feedback_align = 0.5 is that of
    0 plus 0.5 x the mean over nets of 1 - cosine(last hidden channel, scaled weights)."""
    from gnca.senses import feedback_alignment
    from gnca.trainer import MetaTrainer

    def trainer(align: float) -> MetaTrainer:
        d = config_to_dict(tiny_config(k_min=3, k_max=3))
        d["rule"].update(senses=["error", "delta"], hidden_channels=4)
        d["train"].update(feedback_align=align)
        d["pool"].update(size=0)
        return MetaTrainer.from_config(config_from_dict(d))

    base, tr = trainer(0.0), trainer(0.5)
    tr.rule.load_state_dict(base.rule.state_dict())
    with torch.no_grad():  # a rule that writes the feedback channel
        for r in (base, tr):
            r.rule.out.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    out_base, out = base.objective(), tr.objective()
    g = out.grown[0]
    graph = tr.objective.graphs[0]
    cos = feedback_alignment(graph, g.w, g.h[:, -1], tr.objective.tasks[0].fan_in_ref)
    assert torch.equal(g.w, out_base.grown[0].w)  # the term changes the loss, not the growth
    assert float(cos.detach().abs().max()) > 0.01
    want = float(out_base.loss) + 0.5 * float((1 - cos).mean())
    assert float(out.loss) == pytest.approx(want, rel=1e-6)
    # the term reaches the rule's parameters through the feedback channel it writes
    g_base = torch.autograd.grad(out_base.loss, base.rule.out.weight)[0]
    g = torch.autograd.grad(out.loss, tr.rule.out.weight)[0]
    assert not torch.allclose(g, g_base)


def test_feedback_align_is_checked():
    d = config_to_dict(tiny_config())
    d["train"].update(feedback_align=1.0)
    with pytest.raises(ValueError, match="'train.feedback_align' scores the learned feedback"):
        config_from_dict(d)  # a data-free rule has no feedback
    d["rule"].update(senses=ALL, hidden_channels=4, feedback="weights")
    with pytest.raises(ValueError, match="'rule.feedback' learned"):
        config_from_dict(d)
    d["rule"].update(feedback="learned")
    assert config_from_dict(d).train.feedback_align == 1.0
    d["task"].update(layers=["conv:4k3"])
    with pytest.raises(ValueError, match="'train.feedback_align' is measured on MLP-like nets"):
        config_from_dict(d)
    d["task"].update(layers=[])
    d["train"].update(feedback_align=-1.0)
    with pytest.raises(ValueError, match="'train.feedback_align' must be >= 0"):
        config_from_dict(d)


def test_feedback_init_starts_the_feedback_channel_at_the_weights():
    """task.feedback_init = c: the same weights, h 0 but for its last channel, which is c * w;
    at c = 1 on nets without fan_in_ref the learned feedback's senses are the exact ones."""
    from gnca.build import trainer_parts
    from gnca.senses import SenseReader
    from gnca.trainer import MetaTrainer, config_record

    graph = WeightGraph.replicate(Architecture.mlp([4, 6, 5, 3]), 2)
    for kind in ("fixed", "random"):
        w0, h0 = initial_state(graph, 5, kind, generator=torch.Generator().manual_seed(1))
        w, h = initial_state(
            graph, 5, kind, feedback_init=0.25, generator=torch.Generator().manual_seed(1)
        )
        assert torch.equal(w, w0) and torch.equal(h[:, :-1], h0[:, :-1])
        assert torch.equal(h[:, -1], 0.25 * w) and h[:, -1].abs().max() > 0
    d = config_to_dict(tiny_config())
    d["rule"].update(senses=["act", "error", "delta"], hidden_channels=4)
    d["task"].update(init="random", feedback_init=1.0, fan_in_ref=None)
    cfg = config_from_dict(d)
    tr = MetaTrainer.from_config(cfg)
    assert tr.init.feedback_init == 1.0 == tr.seed_init.feedback_init
    parts = trainer_parts(cfg)
    _, recorded, _ = config_record(
        parts["rule"], parts["task"], parts["archs"], parts["init"], parts["seed_init"]
    )
    assert recorded.feedback_init == 1.0  # written back into checkpoints
    w, h = tr.init.state(graph, 4, torch.Generator().manual_seed(0))
    learned = SenseReader(["act", "error", "delta"], tr.task, 8, torch.Generator().manual_seed(3))
    exact = SenseReader(
        ["act", "error", "delta"], tr.task, 8, torch.Generator().manual_seed(3), feedback="weights"
    )
    assert torch.equal(learned(graph, w, h), exact(graph, w, h))
    zero = torch.cat([h[:, :-1], torch.zeros_like(h[:, -1:])], 1)  # the default start
    assert not torch.equal(learned(graph, w, zero), exact(graph, w, h))


def test_feedback_init_is_checked():
    d = config_to_dict(tiny_config())
    d["task"].update(init="random", feedback_init=0.1)
    with pytest.raises(ValueError, match="'task.feedback_init' starts the learned feedback"):
        config_from_dict(d)  # a data-free rule has no feedback
    d["rule"].update(senses=ALL, hidden_channels=4, feedback="weights")
    with pytest.raises(ValueError, match="'rule.feedback' learned"):
        config_from_dict(d)
    d["rule"].update(feedback="learned")
    assert config_from_dict(d).task.feedback_init == 0.1
    d["task"].update(init="codes")
    with pytest.raises(ValueError, match="'task.init' codes write identity codes") as info:
        config_from_dict(d)
    assert "\n" not in str(info.value)
    d["task"].update(init="random", feedback_init=float("nan"))
    with pytest.raises(ValueError, match="'task.feedback_init' must be a finite number"):
        config_from_dict(d)
    graph = WeightGraph.from_architecture(Architecture.mlp([2, 3, 2]))
    with pytest.raises(ValueError, match="feedback_init .* needs init fixed or random"):
        initial_state(graph, 20, "codes", feedback_init=0.1)


ALIGNED_KEYS = [
    "rule.descent=0.03",
    "rule.descent_only=true",
    "rule.descent_norm=0.999",
    "rule.descent_momentum=0.9",
    "train.feedback_align=1",
]


#: the scheduled config's keys over tabular_aligned.yaml (docs/results.md, 4e)
SCHEDULED_KEYS = [
    "train.feedback_align=10",
    "rule.descent=0.018",
    "rule.descent_age=true",
    "rule.descent_age_fixed=1.5",
]


@pytest.mark.parametrize("aligned,base,keys", [
    ("tabular_aligned", "tabular_keeps_pace", ["train.steps=800", *ALIGNED_KEYS]),
    ("mnist_aligned", "mnist_senses_full", ["train.steps=400", "rule.sense_norm=true",
                                            "train.weight_penalty=0.01", "train.held_out=0.2",
                                            *ALIGNED_KEYS]),
    ("mnist_aligned_small", "mnist_aligned", ["pool.size=16", "train.steps=600",
                                              "rule.hidden_channels=6", "rule.widths=[16]",
                                              *ALIGNED_KEYS]),
    ("tabular_scheduled", "tabular_aligned", SCHEDULED_KEYS),
])  # fmt: skip
def test_derived_configs_are_their_base_with_the_documented_keys(aligned, base, keys):
    """docs/results.md measures configs/tabular_aligned.yaml, mnist_aligned.yaml,
    mnist_aligned_small.yaml and tabular_scheduled.yaml as their base configs with --set keys:
    each pair must stay the same config but for its name."""
    from conftest import REPO

    from gnca.config import load_config

    want = config_to_dict(load_config(REPO / "configs" / f"{base}.yaml", keys))
    got = config_to_dict(load_config(REPO / "configs" / f"{aligned}.yaml"))
    assert got.pop("name") == aligned and want.pop("name") == base
    assert got == want
