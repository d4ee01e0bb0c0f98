"""Tests of gnca.damage: zero-out of one whole layer plus a fraction of the other weights."""

from __future__ import annotations

import math

import pytest
import torch

from gnca import Architecture, WeightGraph, zero_out


def _setup(copies: int = 40) -> tuple[Architecture, WeightGraph, torch.Tensor, torch.Tensor]:
    arch = Architecture.mlp([6, 8, 5, 3])
    g = WeightGraph.replicate(arch, copies)
    w = torch.rand(g.num_nodes) + 0.5  # no zero to begin with
    layer_of = torch.as_tensor(arch.levels[arch.edges[:, 1]].copy())  # (E,) 1..3
    return arch, g, w, layer_of


def test_exactly_one_whole_layer_plus_fraction() -> None:
    arch, g, w, layer_of = _setup()
    fraction = 0.3
    w0 = w.clone()
    out = zero_out(g, w, fraction=fraction, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, w0)  # input not modified
    per = (out == 0).view(-1, arch.num_weights)  # (G, E) zeroed
    chosen = []
    outside_hits = outside_total = 0
    for net in per:
        whole = [lv for lv in (1, 2, 3) if net[layer_of == lv].all()]
        assert len(whole) == 1, whole  # other layers are big enough never to be all hit
        chosen.append(whole[0])
        rest = layer_of != whole[0]
        outside_hits += int(net[rest].sum())
        outside_total += int(rest.sum())
    frac = outside_hits / outside_total
    sigma = math.sqrt(fraction * (1 - fraction) / outside_total)
    assert abs(frac - fraction) < 4 * sigma, (frac, sigma)
    assert set(chosen) == {1, 2, 3}  # every layer gets picked over 40 nets
    # non-zeroed weights are untouched
    kept = out != 0
    assert torch.equal(out[kept], w[kept])


def test_fraction_zero_and_one() -> None:
    arch, g, w, layer_of = _setup(copies=10)
    out = zero_out(g, w, fraction=0.0, generator=torch.Generator().manual_seed(1))
    per = (out == 0).view(-1, arch.num_weights)
    for net in per:
        layers = layer_of[net].unique()
        assert len(layers) == 1
        assert torch.equal(net, layer_of == layers[0])
    assert (zero_out(g, w, fraction=1.0) == 0).all()


def test_which_is_respected() -> None:
    arch, g, w, _ = _setup(copies=6)
    which = torch.tensor([True, False, True, False, False, True])
    out = zero_out(g, w, which=which, generator=torch.Generator().manual_seed(2)).view(6, -1)
    w2 = w.view(6, -1)
    for gi in range(6):
        if which[gi]:
            assert (out[gi] == 0).sum() >= min(6 * 8, 8 * 5, 5 * 3)
        else:
            assert torch.equal(out[gi], w2[gi])


def test_mixed_batch_and_single_graph() -> None:
    archs = [
        Architecture.mlp([3, 4, 2]),
        Architecture.skip_mlp([3, 4, 4, 2]),
        Architecture.mlp([3, 2]),
    ]
    g = WeightGraph.collate([WeightGraph.from_architecture(a) for a in archs])
    w = torch.rand(g.num_nodes) + 0.5
    out = zero_out(g, w, fraction=0.0, generator=torch.Generator().manual_seed(3))
    off = 0
    for a in archs:
        net = out[off : off + a.num_weights] == 0
        lv = torch.as_tensor(a.levels[a.edges[:, 1]].copy())
        layers = lv[net].unique()
        assert len(layers) == 1 and 1 <= layers.item() <= a.depth
        assert torch.equal(net, lv == layers[0])
        off += a.num_weights
    single = WeightGraph.from_architecture(archs[0])
    w1 = torch.rand(single.num_nodes) + 0.5
    assert (zero_out(single, w1, fraction=0.0) == 0).any()


def test_invalid_fraction() -> None:
    _, g, w, _ = _setup(copies=1)
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError, match="fraction must be in"):
            zero_out(g, w, fraction=bad)
