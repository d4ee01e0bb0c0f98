"""Factored senses: the per-neuron sense columns kept per neuron, read by the growing route."""

from __future__ import annotations

import pytest
import torch

import gnca.rule
import gnca.rule_adam
import gnca.senses
from gnca import Architecture, LocalRule, WeightGraph
from gnca.data import Dataset
from gnca.factored_senses import FactoredSenses
from gnca.grow import grow
from gnca.senses import SENSES, SenseReader
from gnca.state import InitSpec
from gnca.task import Task

ALL = list(SENSES)
SIZES = [5, 7, 4, 3]
PATH = dict(descent=0.05, descent_only=True, descent_norm=0.99, descent_momentum=0.9)


def _task() -> Task:
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(200, SIZES[0], generator=g), torch.randint(0, SIZES[-1], (200,), generator=g)
    return Task(Dataset("toy", X, y, X[:50], y[:50], SIZES[0], SIZES[-1], None), fan_in_ref=4)


def _reader(names, seed: int = 0) -> SenseReader:
    return SenseReader(names, _task(), 16, torch.Generator().manual_seed(seed))


def _state(graph, c: int = 6, dtype=torch.float64):
    """Weights and states as growth has them: Adam's moments in channels 0-3 (v >= 0, bias
    corrections in (0, 1)), the feedback in the last channel."""
    gen = torch.Generator().manual_seed(1)
    e = graph.num_nodes
    w = torch.randn(e, generator=gen, dtype=dtype) * 0.5
    h = torch.rand(e, c, generator=gen, dtype=dtype) - 0.5
    h[:, 0], h[:, 1], h[:, 3] = h[:, 0].abs(), 0.3, 0.6
    return w, h


@pytest.mark.parametrize("names", [ALL, ["delta", "error"], ["act", "hebb", "loss", "delta"]])
def test_factored_senses_write_out_the_dense_senses_bit_for_bit(names):
    """FactoredSenses.dense() is the (E, S) matrix the reader returns when growing, bit for bit
    and in the same layout; its per-weight columns are that matrix's columns."""
    graph = WeightGraph.replicate(Architecture.mlp(SIZES), 3)
    w, h = _state(graph)
    with torch.no_grad():
        want = _reader(names)(graph, w, h)
        fs = _reader(names)(graph, w, h, factored=True)
    assert isinstance(fs, FactoredSenses) and fs.shape == tuple(want.shape)
    got = fs.dense()
    assert torch.equal(got, want) and got.stride() == want.stride()
    per_weight = fs.columns("weight")
    cols = [n for n in SENSES if n in names for _ in range(SENSES[n])]  # canonical order
    assert per_weight == [j for j, n in enumerate(cols) if n in ("hebb", "delta")]
    for j in per_weight:
        assert torch.equal(fs.column(j), want[:, j])
    if "act" in names:
        with pytest.raises(ValueError, match="not a per-weight one"):
            fs.column(cols.index("act"))


def _rule(widths, sense_norm: bool, floor: float, fire_rate: float) -> LocalRule:
    torch.manual_seed(2)
    rule = LocalRule(6, widths, senses=ALL, sense_norm=sense_norm, sense_floor=floor, bound=0.1,
                     state_bound=1.0, fire_rate=fire_rate, **PATH).double()  # fmt: skip
    with torch.no_grad():
        for m in rule.mlp:
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.5)
                m.bias.normal_(0, 0.5)
    return rule


@pytest.mark.parametrize("sense_norm, floor", [(False, 0.0), (True, 0.0), (True, 0.5)])
@pytest.mark.parametrize("widths", [(16,), (12, 8)])
@pytest.mark.parametrize("block_rows", [None, 5, 1])
@pytest.mark.parametrize("fire_rate", [1.0, 0.5])
def test_the_growing_route_reads_factored_senses_as_the_reference_reads_them_written_out(
    monkeypatch, sense_norm, floor, widths, block_rows, fire_rate
):
    """With factored senses the growing route, which never writes them out, gives w' and
    moments that are the reference step's on the written-out senses bit for bit, the other
    channels equal up to rounding (float64)."""
    graph = WeightGraph.replicate(Architecture.mlp(SIZES), 3)
    w, h = _state(graph)
    rule = _rule(widths, sense_norm, floor, fire_rate)
    rule.block_rows = block_rows
    with torch.no_grad():
        fs = _reader(ALL)(graph, w, h, factored=True)
        assert rule.reads_factored(graph, w)
    dense = fs.dense()
    want_w, want_h = rule.step(
        graph, w, h, senses=dense, generator=torch.Generator().manual_seed(3)
    )
    monkeypatch.setattr(FactoredSenses, "dense", lambda self: pytest.fail("written out"))
    with torch.no_grad():
        got_w, got_h = rule(graph, w, h, senses=fs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got_w, want_w.detach()) and torch.equal(got_h[:, :4], want_h[:, :4])
    torch.testing.assert_close(got_h, want_h.detach(), rtol=0, atol=1e-12)
    assert not torch.equal(got_h[:, 4:], h[:, 4:])


def test_other_routes_take_factored_senses_written_out(monkeypatch):
    """Where the step cannot read them factored (with gradients, or where the growing route
    finds no plan of one MLP and gathers) it writes them out: the same step as with the
    (E, S) matrix, bit for bit."""
    graph = WeightGraph.replicate(Architecture.mlp(SIZES), 3)
    w, h = _state(graph)
    rule = _rule((16,), True, 0.0, 1.0)
    with torch.no_grad():
        fs = _reader(ALL)(graph, w, h, factored=True)
    assert not rule.reads_factored(graph, w)  # with gradients
    got = rule(graph, w, h, senses=fs)
    want = rule(graph, w, h, senses=fs.dense())
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    for module in (gnca.rule, gnca.rule_adam):
        monkeypatch.setattr(module, "dense_plan", lambda *a: None)
    with torch.no_grad():
        assert not rule.reads_factored(graph, w)
        got = rule(graph, w, h, senses=fs)
        want = rule(graph, w, h, senses=fs.dense())
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_factored_senses_are_refused_where_they_do_not_apply():
    """One-line errors: factored senses with gradients, or of nets that are not one MLP."""
    graph = WeightGraph.replicate(Architecture.mlp(SIZES), 2)
    w, h = _state(graph)
    with pytest.raises(ValueError, match="for growing"):
        _reader(ALL)(graph, w, h, factored=True)
    mixed = WeightGraph.collate([WeightGraph.from_architecture(Architecture.mlp(s))
                                 for s in ([5, 6, 3], SIZES)])  # fmt: skip
    w2, h2 = _state(mixed)
    with torch.no_grad(), pytest.raises(ValueError, match="batch of one MLP"):
        _reader(ALL)(mixed, w2, h2, factored=True)


def test_grow_reads_factored_senses_when_the_rule_does(monkeypatch):
    """gnca.grow asks its reader for factored senses exactly when the rule's growing route
    reads them, and grows the nets it grows from the written-out senses (up to rounding)."""
    asked = []
    real = SenseReader.__call__

    def spy(self, graph, w, h, *, factored=False):
        asked.append(factored)
        return real(self, graph, w, h, factored=factored)

    monkeypatch.setattr(gnca.senses.SenseReader, "__call__", spy)
    rule = _rule((16,), True, 0.0, 1.0).float()
    arch = Architecture.mlp(SIZES)
    init = InitSpec("random")
    kw = dict(generator=torch.Generator().manual_seed(0))
    got = grow(rule, arch, 4, 6, init, senses=_reader(ALL), **kw)
    assert asked == [True] * 6
    reader = _reader(ALL)
    kw = dict(generator=torch.Generator().manual_seed(0))
    want = grow(rule, arch, 4, 6, init, senses=lambda g, w, h: reader(g, w, h), **kw)
    assert asked == [True] * 6 + [False] * 6
    torch.testing.assert_close(got.w, want.w, rtol=0, atol=1e-5)
    rule.descent_only = False  # a rule whose MLP moves the weights: written out
    grow(rule, arch, 4, 2, init, senses=_reader(ALL), generator=torch.Generator().manual_seed(0))
    assert asked[-2:] == [False, False]
