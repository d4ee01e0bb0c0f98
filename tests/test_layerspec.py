"""Residual layers in compact conv specs: ``r16k3p1`` and ``rfc32`` are ``x + act(layer(x))``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gnca.archspec import CLIError, parse_arch
from gnca.layers import LayerNet, LayerNetError
from gnca.layerspec import Residual, conv_module


@pytest.mark.parametrize(
    "spec, shape",
    [
        ("fc32-rfc32", (1, 8, 8)),
        ("fc12-rfc12-rfc12", (1, 40)),
        ("4k3p1-r4k3p1-8k3s2p1", (1, 8, 8)),
        ("8k3s2p1-r8k5p2-fc16-rfc16", (1, 40)),
    ],
)
def test_a_residual_spec_traces_to_the_modules_forward(spec, shape):
    m = conv_module(spec, shape, 10)
    assert sum(isinstance(x, Residual) for x in m.modules()) == spec.count("r")
    X = torch.randn(6, *shape, generator=torch.Generator().manual_seed(0))
    net = LayerNet.from_module(m, X)
    assert net.describe().count("add") == spec.count("r")
    with torch.no_grad():
        want = m(X)
        got = net.forward(net.read_weights(m)[None], X)[0]
    torch.testing.assert_close(got, want)


def test_a_residual_layer_is_x_plus_the_activated_layer():
    m = conv_module("fc5-rfc5", (1, 4), 3, activation="relu")
    res = m[3]
    assert isinstance(res, Residual) and isinstance(res.act, nn.ReLU)
    x = torch.randn(2, 5)
    torch.testing.assert_close(res(x), x + torch.relu(res.layer(x)))


def test_the_residual_nets_weights_match_the_plain_ones_plus_the_residual_layer():
    plain = parse_arch("conv:fc32", 64, 10, True, (8, 8), "digits")
    res = parse_arch("conv:fc32-rfc32", 64, 10, True, (8, 8), "digits")
    assert res.num_weights == plain.num_weights + 32 * 32 + 32


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fc32-rfc16", r"layer rfc16 must keep the shape it gets, \(32,\), but gives \(16,\)"),
        ("4k3p1-r8k3p1", r"r8k3p1 must keep the shape it gets, \(4, 8, 8\), but gives \(8, 8, 8\)"),
        ("4k3p1-r4k3s2p1", r"r4k3s2p1 must keep .* gives \(4, 4, 4\)"),
        ("4k3p1-r4k4p2", r"r4k4p2 must keep .* gives \(4, 9, 9\)"),
        ("4k3p1-rq", "bad conv spec token 'rq'"),
    ],
)
def test_a_bad_residual_token_is_one_line_naming_it(spec, message):
    with pytest.raises(LayerNetError, match=message) as err:
        conv_module(spec, (1, 8, 8), 10)
    assert "\n" not in str(err.value)
    with pytest.raises(CLIError, match=f"--arch conv:{spec}: ") as err:
        parse_arch(f"conv:{spec}", 64, 10, True, (8, 8), "digits")
    assert "\n" not in str(err.value)
