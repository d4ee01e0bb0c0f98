"""Layer nets with shared weights: traced from modules, forward of many nets against the modules
themselves, weights in and out, units and taps, perception against a brute-force line graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gnca.layers import LayerNet, LayerNetError
from gnca.perception import perceive


def nets_forward_reference(
    net: LayerNet, modules: list[nn.Module], X: torch.Tensor
) -> torch.Tensor:
    """``(G, B, n_out)``: each module run on ``X`` in turn (the slow reference of
    :meth:`LayerNet.forward`)."""
    with torch.no_grad():
        return torch.stack([m(X).reshape(X.shape[0], -1) for m in modules])


class ConvRes(nn.Module):
    """Conv, a residual block, average pooling, flatten, linear."""

    def __init__(self, c: int = 4, k: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, c, k, stride=2, padding=k // 2)
        self.c2 = nn.Conv2d(c, c, k, padding=k // 2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(c * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = h + torch.tanh(self.c2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(1, 3, 5, stride=2, dilation=2)
        self.p = nn.MaxPool1d(2)
        self.f = nn.Flatten()
        self.lin = nn.Linear(3 * 8, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.f(self.p(F.gelu(self.c(x)))))


class ResMLP(nn.Module):
    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.out = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = h + self.b(torch.relu(self.a(h)))
        return self.out(h)


CASES = [
    (ConvRes, (1, 12, 12)),
    (Conv1dNet, (1, 40)),
    (ResMLP, (4,)),
    (lambda: nn.Sequential(nn.Linear(5, 7), nn.Sigmoid(), nn.Linear(7, 2)), (5,)),
]


def _nets(make, in_shape, g: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    modules = [make() for _ in range(g)]
    X = torch.randn(5, *in_shape)
    return modules, X, LayerNet.from_module(modules[0], X)


@pytest.mark.parametrize("make, in_shape", CASES)
def test_forward_of_many_nets_equals_each_module(make, in_shape):
    modules, X, net = _nets(make, in_shape)
    assert net.num_weights == sum(p.numel() for p in modules[0].parameters())
    w = torch.stack([net.read_weights(m) for m in modules])  # (G, E)
    want = nets_forward_reference(net, modules, X)
    torch.testing.assert_close(net.forward(w, X), want, atol=1e-5, rtol=1e-5)
    # one batch per net
    Xg = torch.randn(len(modules), 5, *in_shape)
    want = torch.stack([m(x) for m, x in zip(modules, Xg, strict=True)]).detach()
    torch.testing.assert_close(net.forward(w.reshape(-1), Xg), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make, in_shape", CASES)
def test_weights_round_trip_through_a_module_of_the_users_class(make, in_shape):
    modules, X, net = _nets(make, in_shape, g=2)
    w = net.read_weights(modules[0])
    fresh = modules[1]
    net.write_weights(fresh, w)
    assert torch.equal(net.read_weights(fresh), w)
    loaded = make()
    loaded.load_state_dict(fresh.state_dict())  # the user's own class takes the state dict
    torch.testing.assert_close(loaded(X), modules[0](X))


def test_gradients_flow_through_the_forward_to_the_weights():
    modules, X, net = _nets(ConvRes, (1, 12, 12), g=2)
    w = torch.stack([net.read_weights(m) for m in modules]).requires_grad_()
    net.forward(w, X).square().sum().backward()
    loss = sum(m(X).square().sum() for m in modules)
    loss.backward()
    want = torch.stack([torch.cat([p.grad.reshape(-1) for p in m.parameters()]) for m in modules])
    torch.testing.assert_close(w.grad, want, atol=1e-4, rtol=1e-4)


def test_units_and_taps_of_a_kernel_entry_and_a_flattened_linear():
    modules, X, net = _nets(ConvRes, (1, 12, 12), g=1)
    c, k = 4, 3
    # conv1: weight [o, i, ky, kx] at o * (1 * 9) + i * 9 + ky * 3 + kx
    o, ky, kx = 2, 1, 2
    e = o * 9 + ky * 3 + kx
    assert tuple(net.tap[e]) == (ky, kx)
    assert net.src[e] == net.input_units[0]
    conv1_heads = net.dst[: c * 9].reshape(c, 9)
    assert (conv1_heads == conv1_heads[:, :1]).all() and len(set(conv1_heads[:, 0])) == c
    # the residual + shares the units of its operands: conv2's heads are conv1's heads
    off2 = c * k * k + c
    conv2_heads = net.dst[off2 : off2 + c * c * 9].reshape(c, c * 9)[:, 0]
    assert sorted(conv2_heads) == sorted(conv1_heads[:, 0])
    # fc after flatten: per (output, channel) 3 x 3 weights, taps the 9 positions
    fc = net.ops[-1].offset
    tails = net.src[fc : fc + 36].reshape(4, 9)
    assert (tails == tails[:, :1]).all()
    assert [tuple(t) for t in net.tap[fc : fc + 9]] == [(y, x) for y in range(3) for x in range(3)]
    # biases come from private bias units
    assert net.is_bias.sum() == c + c + 10
    assert len(set(net.src[net.is_bias])) == int(net.is_bias.sum())


@pytest.mark.parametrize(
    "module, X, match",
    [
        (
            nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
            torch.randn(3, 4),
            "BatchNorm1d at '1'",
        ),
        (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), torch.randn(3, 2, 5, 5), "groups=2"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding="same")), torch.randn(3, 1, 5, 5), "padding"),
        (nn.Sequential(nn.Embedding(10, 4)), torch.zeros(3, 2, dtype=torch.long), "Embedding"),
        (nn.Sequential(nn.Linear(4, 2)), torch.randn(3, 5), "fails on an input of shape"),
        (nn.Sequential(nn.ReLU()), torch.randn(3, 5), "nothing to grow"),
    ],
)
def test_unsupported_modules_are_refused_in_one_line_naming_the_op(module, X, match):
    with pytest.raises(LayerNetError, match=match) as err:
        LayerNet.from_module(module, X)
    assert "\n" not in str(err.value)


def _brute_perception(net: LayerNet, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The incident neighbourhood enumerated weight by weight: at the head unit ``v`` of weight
    ``e`` (forward) the in-weights of ``v`` without ``e`` itself, then its out-weights; at the
    tail unit ``u`` (backward) the in-weights of ``u``, then its out-weights without ``e``; the
    mean over that list. A weight inside a residual branch can join two ends that the ``+``
    merged into one unit (a loop); it is then listed once as an in-weight and once as an
    out-weight of that unit, as the ``O(E)`` sums over units count it."""
    x = torch.cat([w[:, None], h], 1)
    src, dst = net.src.tolist(), net.dst.tolist()
    ids = range(net.num_weights)
    rows = []
    for e in ids:
        parts = [x[e]]
        for unit, own in ((dst[e], "in"), (src[e], "out")):
            ins = [f for f in ids if dst[f] == unit and not (own == "in" and f == e)]
            outs = [f for f in ids if src[f] == unit and not (own == "out" and f == e)]
            nb = ins + outs
            parts.append(x[nb].mean(0) if nb else torch.zeros_like(x[e]))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@settings(max_examples=12, deadline=None)
@given(
    c=st.integers(1, 3),
    k=st.integers(1, 4),
    stride=st.integers(1, 2),
    pad=st.integers(0, 2),
    dil=st.integers(1, 2),
    size=st.integers(9, 12),
    bias=st.booleans(),
    residual=st.booleans(),
)
def test_perception_on_conv_nets_equals_the_brute_force_line_graph(
    c, k, stride, pad, dil, size, bias, residual
):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, c, k, stride=stride, padding=pad, dilation=dil, bias=bias)
            self.b = nn.Conv2d(c, c, 1, bias=bias)
            self.out = nn.LazyLinear(3, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.a(x))
            h = h + self.b(h) if residual else self.b(h)
            return self.out(torch.flatten(h, 1))

    if (size + 2 * pad - dil * (k - 1) - 1) < 0:
        return
    m = Net()
    X = torch.randn(2, 2, size, size)
    m(X)  # materialise the lazy layer
    net = LayerNet.from_module(m, X)
    g = torch.Generator().manual_seed(c * 100 + k)
    w = torch.randn(net.num_weights, generator=g, dtype=torch.float64)
    h = torch.randn(net.num_weights, 3, generator=g, dtype=torch.float64)
    got = perceive(net.weight_graph(), w, h)
    torch.testing.assert_close(got, _brute_perception(net, w, h))


def test_forward_on_the_device_matches_the_cpu(device):
    modules, X, net = _nets(ConvRes, (1, 12, 12))
    w = torch.stack([net.read_weights(m) for m in modules])
    want = net.forward(w, X)
    got = net.forward(w.to(device), X.to(device)).cpu()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_codes_tell_every_kernel_entry_apart_and_place_taps_on_one_continuum():
    def conv(k: int) -> LayerNet:
        m = nn.Sequential(nn.Conv2d(2, 3, k, padding=k // 2), nn.Flatten(), nn.LazyLinear(4))
        X = torch.randn(2, 2, 6, 6)
        m(X)
        return LayerNet.from_module(m, X)

    n3, n5 = conv(3), conv(5)
    c3 = n3.codes(24, freqs=2)
    assert c3.shape == (n3.num_weights, 24) and torch.equal(
        c3[:, 20:], torch.zeros(n3.num_weights, 4)
    )
    first = n3.layer == 0
    assert len(torch.unique(c3[torch.as_tensor(first)], dim=0)) == int(first.sum())
    # the centre tap of a 3 x 3 and of a 5 x 5 kernel, same channels: the same code
    centre3 = [e for e in range(n3.num_weights) if n3.layer[e] == 0 and not n3.is_bias[e]
               and tuple(n3.tap[e]) == (1, 1) and tuple(n3.place[e]) == (1, 2)]  # fmt: skip
    centre5 = [e for e in range(n5.num_weights) if n5.layer[e] == 0 and not n5.is_bias[e]
               and tuple(n5.tap[e]) == (2, 2) and tuple(n5.place[e]) == (1, 2)]  # fmt: skip
    torch.testing.assert_close(c3[centre3], n5.codes(24, freqs=2)[centre5])
    # a bias keeps its out-channel code and nothing of an in-channel or tap
    b = int(next(e for e in range(n3.num_weights) if n3.is_bias[e] and n3.layer[e] == 0))
    assert c3[b, :4].abs().sum() == 0 and c3[b, 4:8].abs().sum() > 0
    with pytest.raises(ValueError, match="hidden_channels >= 20"):
        n3.codes(16)


def test_a_module_is_an_architecture_for_the_weight_graph_and_task_forward(tmp_path):
    from gnca import Architecture, WeightGraph
    from gnca.forward import task_forward

    torch.manual_seed(1)
    m = ConvRes()
    x = torch.randn(6, 1, 12, 12)
    arch = Architecture.from_module(m, x)
    graph = WeightGraph.from_architecture(arch)
    got = task_forward(graph, arch.read_weights(m), x)  # (1, B, 10)
    torch.testing.assert_close(got[0], m(x))
    flat = task_forward(graph, arch.read_weights(m), x.flatten(1))  # the data's flat features
    torch.testing.assert_close(flat[0], m(x))
    batch = WeightGraph.replicate(arch, 2)
    w = torch.cat([arch.read_weights(m), arch.read_weights(ConvRes())])
    assert task_forward(batch, w, x).shape == (2, 6, 10)


def test_compact_conv_specs_and_module_files_as_arch(tmp_path):
    from gnca.archspec import CLIError, parse_arch
    from gnca.layerspec import conv_module

    m = conv_module("8k5s2p2-16k5s2p2", (1, 28, 28), 10)
    assert sum(p.numel() for p in m.parameters()) == 11274  # 1-8-16 channels, k5, s2, linear
    net = parse_arch("conv:8k5s2p2-16k5s2p2", 784, 10, True, (28, 28), "mnist")
    assert net.num_weights == 11274 and net.in_shape == (1, 28, 28)
    one_d = parse_arch("conv:4k5s2-fc16", 40, 10, True, None, "mnist1d")
    assert one_d.in_shape == (1, 40) and one_d.num_outputs == 10
    src = tmp_path / "mine.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Mine(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.c = nn.Conv2d(1, 2, 3)\n"
        "        self.fc = nn.Linear(2 * 6 * 6, 10)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.flatten(torch.relu(self.c(x)), 1))\n"
    )
    mine = parse_arch(f"{src}:Mine", 64, 10, True, (8, 8), "digits")
    assert mine.num_weights == 2 * 9 + 2 + 72 * 10 + 10
    with pytest.raises(CLIError, match=r"and 10 output\(s\), but wine-like has 64 features and 3"):
        parse_arch(f"{src}:Mine", 64, 3, True, (8, 8), "wine-like")
    with pytest.raises(CLIError, match="bad conv spec token 'x3'"):
        parse_arch("conv:x3", 64, 10, True, (8, 8))
    with pytest.raises(CLIError, match="has no Nope"):
        parse_arch(f"{src}:Nope", 64, 10, True, (8, 8))


def test_a_data_free_rule_meta_trains_and_grows_conv_nets():
    """Two meta-steps on conv nets with identity codes run, change the rule and grow an unseen
    kernel size (no accuracy is claimed here: examples/conv_nets.py measures it)."""
    from gnca import LocalRule
    from gnca.archspec import parse_arch
    from gnca.config import PoolConfig, TrainConfig
    from gnca.data import load_dataset
    from gnca.state import InitSpec
    from gnca.task import Task
    from gnca.trainer import MetaTrainer

    task = Task(load_dataset("digits"))

    def arch(spec: str) -> LayerNet:
        return parse_arch("conv:" + spec, 64, 10, True, (8, 8), "digits")

    torch.manual_seed(0)
    trainer = MetaTrainer(
        LocalRule(24, widths=[32]),
        task,
        [arch("2k3p1-4k3s2p1"), arch("2k5p2-4k5s2p2")],
        train=TrainConfig(steps=2, batch_size=2, k_min=2, k_max=3, device="cpu", eval_nets=2),
        pool=PoolConfig(size=4, fresh=1),
        init=InitSpec(init="codes"),
        seed_init=InitSpec(init="codes", code_jitter=1.0),
    )
    before = [p.detach().clone() for p in trainer.rule.parameters()]
    for _ in range(2):
        s = trainer.meta_step()
        assert not s.skipped and torch.isfinite(torch.tensor(s.loss))
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.rule.parameters(), strict=True)
    )
    table = trainer.evaluate(num=2, horizons=(2, 3), unseen=[arch("2k4p2-4k4s2p1")])
    assert any(k.endswith("[unseen]") for k in table)
    assert all(0.0 <= v["mean"] <= 1.0 for row in table.values() for v in row.values())


def test_a_config_of_layer_nets_trains_grows_and_exports_from_the_command_line(tmp_path, capsys):
    from pathlib import Path

    from gnca.cli import main
    from gnca.config import ConfigError, load_config

    config = str(Path(__file__).resolve().parents[1] / "configs" / "conv_digits.yaml")
    tiny = ["train.steps=2", "train.k_min=2", "train.k_max=3", "train.eval_nets=2",
            "train.batch_size=2", "pool.size=4", "pool.fresh=1",
            "task.layers=[conv:2k3p1-4k3s2p1]",
            "train.eval_layers=[conv:2k4p2-4k4s2p1]"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "--config", config, "--set", *tiny, "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "conv2k3x3" in out and "conv2k4x4" in out and "[unseen]" in out
    ckpt = str(run / "last.pt")
    assert main(["grow", "--checkpoint", ckpt, "--arch", "conv:3k5p2-6k5s2p2", "--num", "2",
                 "--steps", "3", "--no-progress"]) == 0  # fmt: skip
    nets = tmp_path / "nets.pt"
    assert main(["export", "--checkpoint", ckpt, "--arch", "conv:2k3p1-4k3s2p1", "--num", "2",
                 "--steps", "3", "--out", str(nets)]) == 0  # fmt: skip
    from gnca.layerspec import conv_module

    saved = torch.load(nets, weights_only=True)
    m = conv_module("2k3p1-4k3s2p1", (1, 8, 8), 10)
    m.load_state_dict(saved["state_dicts"][1])  # the user's own module takes a grown net
    with pytest.raises(ConfigError, match="task.layers"):
        load_config(config, ["task.layers=[4k3]"])


def test_without_the_depth_code_the_depth_channel_is_zero_and_the_rest_unchanged():
    modules, X, net = _nets(ConvRes, (1, 12, 12), g=1)
    with_depth = net.codes(24)
    without = net.codes(24, depth_code=False)
    depth = 8 * 2  # after the 8f waves
    assert without[:, depth].abs().sum() == 0 and with_depth[:, depth].abs().sum() > 0
    keep = [i for i in range(24) if i != depth]
    assert torch.equal(with_depth[:, keep], without[:, keep])
