"""Senses on shared weights (gnca.layer_senses) against a per-example, per-position Python loop
over every kernel entry; a dense MLP as a layer net against the dense senses; gradients reach
the feedback and never the weights; a data-reading rule meta-trains on conv nets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gnca import Architecture
from gnca import senses as senses_module
from gnca.layer_senses import layer_senses
from gnca.layers import LayerNet
from gnca.senses import SENSES, dense_senses

ALL = list(SENSES)


# ---------------------------------------------------------------------- the nets
class ConvNet(nn.Module):
    """1x6x6 -> conv 2ch k3 s2 p1 -> tanh -> conv 3ch k2 -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.c2(torch.tanh(self.c1(x))), 1))


class AvgPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.c2 = nn.Conv2d(2, 3, 2, bias=False)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.tanh(self.c1(x)))  # 2x3x3
        return self.fc(torch.flatten(torch.sigmoid(self.c2(h)), 1))


class MaxPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.c2 = nn.Conv2d(2, 3, 2, dilation=2, padding=1)
        self.fc = nn.Linear(27, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.tanh(self.c1(x)))  # 2x3x3
        return self.fc(torch.flatten(torch.tanh(self.c2(h)), 1))


class Conv1dNet(nn.Module):
    """1x11 -> conv1d 2ch k3 s2 d2 p1 -> gelu -> avg pool 3 s2 p1 -> flatten -> fc 4 -> tanh
    -> linear without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(1, 2, 3, stride=2, dilation=2, padding=1)
        self.pool = nn.AvgPool1d(3, stride=2, padding=1)
        self.fc = nn.Linear(6, 4)
        self.out = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(nn.functional.gelu(self.c(x)))  # 2x3
        return self.out(torch.tanh(self.fc(torch.flatten(h, 1))))


class ResNet(nn.Module):
    """A residual block, max pooling (1-D), a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 2, 3, padding=1)
        self.c2 = nn.Conv1d(2, 2, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = h + torch.tanh(self.c2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


CASES = [(ConvNet, (1, 6, 6)), (AvgPoolNet, (1, 6, 6)), (MaxPoolNet, (1, 6, 6)),
         (Conv1dNet, (1, 11)), (ResNet, (1, 8))]  # fmt: skip


# ---------------------------------------------------------------------- the slow reference
def _act(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``phi(z)`` and ``phi'(z)``, element by element."""
    if name == "tanh":
        a = np.tanh(z)
        return a, 1 - a * a
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(float)
    if name == "sigmoid":
        a = 1 / (1 + np.exp(-z))
        return a, a * (1 - a)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))  # gelu
    return z * cdf, cdf + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _as2d(x: np.ndarray, nd: int) -> np.ndarray:
    """``(B, C, *S)`` with one spatial axis as ``(B, C, 1, L)``."""
    return x[:, :, None, :] if nd == 1 else x


def _pair(v, nd: int, name: str = "") -> tuple[int, int]:
    """A kernel, stride, padding or dilation over two axes (one axis: the first is a dummy of
    size 1, padding 0)."""
    v = tuple(v) if isinstance(v, tuple | list) else (v,) * nd
    return (0 if name == "padding" else 1, *v) if nd == 1 else v


def _windows(out_hw, in_hw, kern, stride, pad, dil):
    """Every (output position, tap, input position or None for padding)."""
    for py in range(out_hw[0]):
        for px in range(out_hw[1]):
            for ty in range(kern[0]):
                for tx in range(kern[1]):
                    iy = py * stride[0] + ty * dil[0] - pad[0]
                    ix = px * stride[1] + tx * dil[1] - pad[1]
                    inside = 0 <= iy < in_hw[0] and 0 <= ix < in_hw[1]
                    yield (py, px), (ty, tx), (iy, ix) if inside else None


def _reference(net: LayerNet, w: np.ndarray, f: np.ndarray, X: np.ndarray, y: np.ndarray,
               n_classes: int, mask: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """``(E, 6)`` senses of one net (all of :data:`SENSES`), by loops over examples, positions
    and kernel entries."""
    b = X.shape[0]
    vals = {0: X.reshape(b, *net.in_shape)}
    deriv, winners = {}, {}
    for op in net.ops:  # forward
        x = vals[op.inputs[0]]
        a = op.args
        if op.kind == "linear":
            W = w[op.offset : op.offset + a["in"] * a["out"]].reshape(a["out"], a["in"])
            xf = x.reshape(b, -1)
            z = np.zeros((b, a["out"]))
            for e in range(b):
                for o in range(a["out"]):
                    z[e, o] = sum(W[o, k] * xf[e, k] for k in range(a["in"]))
                    if a["bias"]:
                        z[e, o] += w[op.offset + a["in"] * a["out"] + o]
        elif op.kind == "conv":
            nd = len(a["kernel"])
            k2, s2, p2, d2 = (
                _pair(a[n], nd, n) for n in ("kernel", "stride", "padding", "dilation")
            )
            n_k = a["out"] * a["in"] * math.prod(k2)
            W = w[op.offset : op.offset + n_k].reshape(a["out"], a["in"], *k2)
            x2 = _as2d(x, nd)
            out_shape = net.shapes[op.out]
            out_hw = (1, out_shape[1]) if nd == 1 else out_shape[1:]
            z = np.zeros((b, a["out"], *out_hw))
            for e in range(b):
                for o in range(a["out"]):
                    for p, t, q in _windows(out_hw, x2.shape[2:], k2, s2, p2, d2):
                        if q is not None:
                            for i in range(a["in"]):
                                z[e, o, p[0], p[1]] += W[o, i, t[0], t[1]] * x2[e, i, q[0], q[1]]
                    if a["bias"]:
                        z[e, o] += w[op.offset + n_k + o]
            z = z[:, :, 0] if nd == 1 else z
        elif op.kind == "act":
            z, deriv[op.out] = _act(a["name"], x)
        elif op.kind == "flatten":
            z = x.reshape(b, -1)
        elif op.kind == "add":
            z = x + vals[op.inputs[1]]
        else:  # pool
            nd = a["nd"]
            k2, s2, p2 = (_pair(a[n], nd, n) for n in ("kernel", "stride", "padding"))
            x2 = _as2d(x, nd)
            out_shape = net.shapes[op.out]
            out_hw = (1, out_shape[1]) if nd == 1 else out_shape[1:]
            z = np.zeros((b, x.shape[1], *out_hw))
            win = {}
            for e in range(b):
                for c in range(x.shape[1]):
                    best = {}
                    for p, _, q in _windows(out_hw, x2.shape[2:], k2, s2, p2, (1, 1)):
                        v = 0.0 if q is None else x2[e, c, q[0], q[1]]
                        if a["kind"] == "avg":
                            z[e, c, p[0], p[1]] += v / math.prod(k2)
                        elif q is not None and (p not in best or v > best[p][0]):
                            best[p] = (v, q)
                    for p, (v, q) in best.items():
                        z[e, c, p[0], p[1]] = v
                        win[e, c, p] = q
            winners[op.out] = win
            z = z[:, :, 0] if nd == 1 else z
        vals[op.out] = z
    out = net.ops[-1].out
    logits = vals[out].reshape(b, -1).copy()
    if mask is not None:
        logits[:, ~mask] = -1.0e9
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    loss = -np.mean(np.log(prob[np.arange(b), y])) / math.log(n_classes)
    msgs = {out: (prob - np.eye(prob.shape[1])[y]).reshape(vals[out].shape)}
    for op in reversed(net.ops):  # messages, with the feedback weights
        if op.out not in msgs or op.inputs[0] == 0:
            continue
        m, a = msgs[op.out], op.args
        for v in op.inputs:
            x = vals[v]
            back = np.zeros_like(x)
            if op.kind == "linear":
                Fb = f[op.offset : op.offset + a["in"] * a["out"]].reshape(a["out"], a["in"])
                bf = back.reshape(b, -1)
                for e in range(b):
                    for kk in range(a["in"]):
                        bf[e, kk] = sum(Fb[o, kk] * m[e, o] for o in range(a["out"]))
                back = bf.reshape(x.shape)
            elif op.kind == "conv":
                nd = len(a["kernel"])
                k2, s2, p2, d2 = (_pair(a[n], nd, n) for n in ("kernel", "stride", "padding",
                                                              "dilation"))  # fmt: skip
                n_k = a["out"] * a["in"] * math.prod(k2)
                Fb = f[op.offset : op.offset + n_k].reshape(a["out"], a["in"], *k2)
                m2, b2 = _as2d(m, nd), _as2d(back, nd)
                for e in range(b):
                    for p, t, q in _windows(m2.shape[2:], b2.shape[2:], k2, s2, p2, d2):
                        if q is None:
                            continue
                        for o in range(a["out"]):
                            for i in range(a["in"]):
                                b2[e, i, q[0], q[1]] += Fb[o, i, t[0], t[1]] * m2[e, o, p[0], p[1]]
                back = b2[:, :, 0] if nd == 1 else b2
            elif op.kind == "act":
                back = m * deriv[op.out]
            elif op.kind in ("flatten", "add"):
                back = m.reshape(x.shape)
            else:  # pool
                nd = a["nd"]
                k2, s2, p2 = (_pair(a[n], nd, n) for n in ("kernel", "stride", "padding"))
                m2, b2 = _as2d(m, nd), _as2d(back, nd)
                for e in range(b):
                    for c in range(x.shape[1]):
                        for p, _, q in _windows(m2.shape[2:], b2.shape[2:], k2, s2, p2, (1, 1)):
                            if a["kind"] == "avg" and q is not None:
                                b2[e, c, q[0], q[1]] += m2[e, c, p[0], p[1]] / math.prod(k2)
                        if a["kind"] == "max":
                            for py in range(m2.shape[2]):
                                for px in range(m2.shape[3]):
                                    q = winners[op.out][e, c, (py, px)]
                                    b2[e, c, q[0], q[1]] += m2[e, c, py, px]
                back = b2[:, :, 0] if nd == 1 else b2
            msgs[v] = msgs[v] + back if v in msgs else back
    acts = dict(vals)
    acts[out] = prob.reshape(vals[out].shape)
    readers = {}
    for op in net.ops:
        for v in set(op.inputs):
            readers.setdefault(v, []).append(op)
    clip = lambda x: x / (1 + abs(x))  # noqa: E731
    rows = []
    for op in net.ops:  # per weight
        if op.kind not in ("linear", "conv"):
            continue
        a = op.args
        head = op.out
        while len(readers.get(head, [])) == 1 and readers[head][0].kind == "act":
            head = readers[head][0].out
        x, h, m = vals[op.inputs[0]], acts[head], msgs[op.out]
        if op.kind == "linear":  # one position: (B, C, 1, 1)
            x, h, m = x.reshape(b, -1, 1, 1), h.reshape(b, -1, 1, 1), m.reshape(b, -1, 1, 1)
            k2 = s2 = d2 = (1, 1)
            p2 = (0, 0)
        else:
            nd = len(a["kernel"])
            k2, s2, p2, d2 = (
                _pair(a[n], nd, n) for n in ("kernel", "stride", "padding", "dilation")
            )
            x, h, m = _as2d(x, nd), _as2d(h, nd), _as2d(m, nd)
        n_pos = h.shape[2] * h.shape[3]
        for o in range(a["out"]):
            for i in range(a["in"]):
                for ty in range(k2[0]):
                    for tx in range(k2[1]):
                        s = np.zeros(4)  # sums of r, r a_out, r m_out, and a count
                        for e in range(b):
                            for p, t, q in _windows(h.shape[2:], x.shape[2:], k2, s2, p2, d2):
                                if t != (ty, tx):
                                    continue
                                r = 0.0 if q is None else x[e, i, q[0], q[1]]
                                s += [r, r * h[e, o, p[0], p[1]], r * m[e, o, p[0], p[1]], 1]
                        assert s[3] == b * n_pos
                        s /= b * n_pos
                        rows.append([clip(s[0]), clip(h[:, o].mean()), clip(s[1]),
                                     clip(m[:, o].mean()), clip(s[2]), loss])  # fmt: skip
        if a["bias"]:
            for o in range(a["out"]):
                ha, ma = h[:, o].mean(), m[:, o].mean()
                rows.append([clip(1.0), clip(ha), clip(ha), clip(ma), clip(ma), loss])
    return np.array(rows)


def _nets(make, in_shape, g: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    modules = [make().double() for _ in range(g)]
    net = LayerNet.from_module(modules[0], torch.zeros(2, *in_shape, dtype=torch.float64))
    w = torch.cat([net.read_weights(m) for m in modules])
    f = torch.randn(w.shape[0], dtype=torch.float64)
    return net, w, f


@pytest.mark.parametrize(("make", "in_shape"), CASES, ids=[c[0].__name__ for c in CASES])
def test_senses_equal_a_loop_over_examples_positions_and_kernel_entries(make, in_shape):
    net, w, f = _nets(make, in_shape)
    g, e = 2, net.num_weights
    X = torch.randn(3, math.prod(in_shape), dtype=torch.float64)  # the data's flat features
    y = torch.tensor([[0, 2, 1], [1, 1, 0]])
    got = layer_senses(net, w, f, X, y, ALL, 3)
    assert got.shape == (g * e, 6)
    ref = [_reference(net, w[i * e : (i + 1) * e].numpy(), f[i * e : (i + 1) * e].numpy(),
                      X.numpy(), y[i].numpy(), 3) for i in range(g)]  # fmt: skip
    torch.testing.assert_close(got, torch.from_numpy(np.concatenate(ref)))


def test_class_masks_and_mean_field_scaling_match_the_reference():
    net, w, f = _nets(ConvNet, (1, 6, 6))
    e = net.num_weights
    X = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2, 2])
    mask = torch.tensor([[True, False, True], [True, True, True]])
    got = layer_senses(net, w, f, X, y, ALL, 3, fan_in_ref=4.0, class_mask=mask)
    fan = torch.as_tensor(net.fan_in, dtype=torch.float64).repeat(2)
    scaled = torch.where(torch.as_tensor(net.is_bias).repeat(2), w, w * 4.0 / fan)
    ref = [_reference(net, scaled[i * e : (i + 1) * e].numpy(), f[i * e : (i + 1) * e].numpy(),
                      X.numpy(), y.numpy(), 3, mask[i].numpy()) for i in range(2)]  # fmt: skip
    torch.testing.assert_close(got, torch.from_numpy(np.concatenate(ref)))
    some = layer_senses(net, w, f, X, y, ["loss", "delta"], 3, fan_in_ref=4.0, class_mask=mask)
    torch.testing.assert_close(some, got[:, [4, 5]])  # canonical order: delta, then loss


def test_a_dense_mlp_as_a_layer_net_has_the_dense_senses():
    sizes = [3, 4, 3, 2]
    torch.manual_seed(1)
    modules = [nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(),
                             nn.Linear(3, 2)).double() for _ in range(3)]  # fmt: skip
    net = LayerNet.from_module(modules[0], torch.zeros(2, 3, dtype=torch.float64))
    e = net.num_weights
    # dense layout per layer: W[i, j] (in i, out j), then biases; layer nets: W[o, i], biases
    order, off = [], 0
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        order += [off + j * a + i for i in range(a) for j in range(b)]
        order += [off + a * b + j for j in range(b)]
        off += a * b + b
    to_dense = torch.cat([torch.tensor(order) + k * e for k in range(3)])
    w = torch.cat([net.read_weights(m) for m in modules])
    f = torch.randn(w.shape[0], dtype=torch.float64)
    X = torch.randn(7, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (3, 7))
    got = layer_senses(net, w, f, X, y, ALL, 2, fan_in_ref=2.0)[to_dense]
    dense = dense_senses(sizes, w[to_dense], f[to_dense], X, y, ALL, "tanh", 2.0)
    torch.testing.assert_close(got, dense)
    assert len(Architecture.mlp(sizes).edges) == e


def test_gradients_reach_the_feedback_and_never_the_weights():
    net, w, _ = _nets(ResNet, (1, 8))
    h = torch.randn(w.shape[0], 3, dtype=torch.float64, requires_grad=True)
    w = w.requires_grad_(True)
    X, y = torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    s = layer_senses(net, w, h[:, -1], X, y, ALL, 3)
    s.sum().backward()
    assert h.grad[:, -1].abs().sum() > 0 and h.grad[:, :-1].abs().sum() == 0
    assert w.grad is None
    net, w, f = _nets(MaxPoolNet, (1, 6, 6))
    X = torch.randn(3, 36, dtype=torch.float64)
    f = f.requires_grad_(True)
    torch.autograd.gradcheck(lambda f: layer_senses(net, w, f, X, y[:3], ["error", "delta"], 3),
                             (f,))  # fmt: skip
    plain = layer_senses(net, w, None, X, y[:3], ["act", "hebb", "loss"], 3)
    assert not plain.requires_grad
    with pytest.raises(ValueError, match="needs the backward messages"):
        layer_senses(net, w, None, X, y[:3], ["error"], 3)


@pytest.mark.parametrize("augment", [False, True])
def test_a_rule_that_reads_data_meta_trains_on_conv_nets(augment, monkeypatch):
    from gnca import LocalRule
    from gnca.archspec import parse_arch
    from gnca.config import PoolConfig, TrainConfig
    from gnca.data import load_dataset
    from gnca.state import InitSpec
    from gnca.task import Task
    from gnca.trainer import MetaTrainer

    task = Task(load_dataset("digits"))
    arch = parse_arch("conv:2k3p1-4k3s2p1", 64, 10, True, (8, 8), "digits")
    extra = {"permute_labels": True, "class_subsets": 5, "feature_transform": "permute"}
    extra = extra if augment else {}
    torch.manual_seed(0)
    trainer = MetaTrainer(
        LocalRule(24, widths=[32], senses=ALL),
        task,
        [arch],
        train=TrainConfig(steps=2, batch_size=2, k_min=2, k_max=2, device="cpu", eval_nets=2),
        pool=PoolConfig(size=4, fresh=1),
        init=InitSpec(init="codes"),
        sense_batch=8,
        **extra,
    )
    calls = []
    real = senses_module.LAYER_SENSES  # what SenseReader calls for layer nets
    assert real is layer_senses

    def spy(*args, **kwargs):
        calls.append(args[3].shape)  # X
        return real(*args, **kwargs)

    monkeypatch.setattr(senses_module, "LAYER_SENSES", spy)
    before = [p.detach().clone() for p in trainer.rule.parameters()]
    for _ in range(2):
        s = trainer.meta_step()
        assert not s.skipped and math.isfinite(s.loss)
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.rule.parameters(), strict=True)
    )
    assert len(calls) == 4  # every rule step of both meta-steps read the data
    assert calls[0] == ((2, 8, 64) if augment else (8, 64))  # under augmentations, per net
    if not augment:
        table = trainer.evaluate(num=2, horizons=(2,))
        assert all(0.0 <= v["mean"] <= 1.0 for row in table.values() for v in row.values())


def test_senses_on_the_device_match_the_cpu(device):
    net, w, f = _nets(ResNet, CASES[-1][1])
    X = torch.randn(4, math.prod(CASES[-1][1]), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    want = layer_senses(net, w, f, X, y, ALL, 3)
    got = layer_senses(net, w.to(device), f.to(device), X.to(device), y.to(device), ALL, 3)
    assert got.device.type == device.type
    torch.testing.assert_close(got.cpu(), want)


def test_a_batch_of_two_layer_architectures_is_refused_in_one_line():
    from torch_geometric.data import Batch

    from gnca.data import load_dataset
    from gnca.forward import task_forward
    from gnca.senses import SenseReader
    from gnca.task import Task

    def net(c: int) -> LayerNet:
        m = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.LazyLinear(10))
        X = torch.zeros(1, 1, 8, 8)
        m(X)
        return LayerNet.from_module(m, X)

    graph = Batch.from_data_list([net(2).layer_graph(), net(3).layer_graph()])
    e = graph.src.numel()
    w, h = torch.randn(e), torch.randn(e, 4)
    reader = SenseReader(ALL, Task(load_dataset("digits")), 8)
    for call in (lambda: reader(graph, w, h), lambda: task_forward(graph, w, torch.randn(5, 64))):
        with pytest.raises(ValueError, match="one architecture") as err:
            call()
        assert "\n" not in str(err.value)
