"""Senses: the data a rule reads, computed without backprop, against slow references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from gnca import Architecture, LocalRule, WeightGraph
from gnca.config import config_from_dict, config_to_dict
from gnca.data import load_dataset
from gnca.grow import grow
from gnca.senses import SENSES, SenseReader, neuron_stats, sense_size, weight_senses
from gnca.state import initial_state
from gnca.task import Task
from gnca.trainer import MetaTrainer

ALL = list(SENSES)


def _state(arch: Architecture, g: int = 2, c: int = 4, seed: int = 0):
    graph = WeightGraph.replicate(arch, g)
    gen = torch.Generator().manual_seed(seed)
    w, _ = initial_state(graph, c, "random", generator=gen)
    h = torch.randn(w.shape[0], c, generator=gen, dtype=torch.float64)
    return graph, w.double(), h


def _loop_reference(arch: Architecture, w: np.ndarray, fb: np.ndarray, X, y):
    """Activations and error messages of one net by a Python loop over neurons and weights."""
    edges = [tuple(e) for e in arch.edges.tolist()]
    kinds, levels = arch.kinds, arch.levels
    n, b = arch.num_neurons, X.shape[0]
    a = np.zeros((n, b))
    z = np.zeros((n, b))
    for i, u in enumerate(arch.inputs):
        a[u] = X[:, i]
    for u in range(n):
        if kinds[u] == 3:  # bias
            a[u] = 1.0
    order = sorted(range(n), key=lambda u: levels[u])
    for v in order:
        if kinds[v] in (0, 3):
            continue
        z[v] = sum(w[k] * a[u] for k, (u, vv) in enumerate(edges) if vv == v)
        a[v] = z[v] if kinds[v] == 2 else np.tanh(z[v])
    outs = list(arch.outputs)
    logits = a[outs].T  # (B, n_out)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    m = np.zeros((n, b))
    m[outs] = (p - np.eye(len(outs))[y]).T
    a[outs] = p.T
    for u in sorted(range(n), key=lambda u: -levels[u]):
        if kinds[u] != 1:
            continue
        s = sum(fb[k] * m[vv] for k, (uu, vv) in enumerate(edges) if uu == u)
        m[u] = (1 - a[u] ** 2) * s
    return a, m


@pytest.mark.parametrize(
    "arch", [Architecture.mlp([3, 4, 3, 2]), Architecture.skip_mlp([3, 4, 3, 2], skip=2)]
)
def test_neuron_stats_match_a_loop_over_neurons(arch):
    graph, w, h = _state(arch, g=1)
    X = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    st = neuron_stats(graph, w, h[:, -1], X, y)
    a, m = _loop_reference(arch, w.numpy(), h[:, -1].numpy(), X.numpy(), y.numpy())
    np.testing.assert_allclose(st.a.numpy(), a, atol=1e-10)
    np.testing.assert_allclose(st.m.detach().numpy(), m, atol=1e-10)


def test_weight_senses_are_the_documented_products():
    arch = Architecture.mlp([3, 4, 2])
    graph, w, h = _state(arch)
    X = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (6,))
    st = neuron_stats(graph, w, h[:, -1], X, y)
    s = weight_senses(graph, st, ALL, 2)
    assert s.shape == (w.shape[0], sense_size(ALL)) == (w.shape[0], 6)
    a_u, a_v, m_v = st.a[graph.src], st.a[graph.dst], st.m[graph.dst]
    clip = lambda x: x / (1 + x.abs())  # noqa: E731
    torch.testing.assert_close(s[:, 0], clip(a_u.mean(1)))
    torch.testing.assert_close(s[:, 2], clip((a_u * a_v).mean(1)))
    torch.testing.assert_close(s[:, 4], clip((a_u * m_v).mean(1)))
    assert torch.allclose(s[:, 5].view(2, -1)[:, 0], st.loss / np.log(2))
    assert (s[:, :5].abs() < 1).all()


def test_a_rule_without_senses_is_bitwise_todays_rule():
    """senses: [] builds the same MLP from the same seed and meta-trains identically."""
    cfg = tiny_config(steps=4)
    a = MetaTrainer.from_config(cfg)
    d = config_to_dict(cfg)
    d["rule"]["senses"] = []
    b = MetaTrainer.from_config(config_from_dict(d))
    assert b.reader is None and b.sense_gen is None
    for _ in range(4):
        assert a.meta_step().loss == b.meta_step().loss
    for p, q in zip(a.rule.parameters(), b.rule.parameters(), strict=True):
        assert torch.equal(p, q)


def _senses_config(**train):
    d = config_to_dict(tiny_config(**train))
    d["rule"]["senses"] = ALL
    d["rule"]["sense_batch"] = 16
    return config_from_dict(d)


def test_growth_with_senses_builds_no_autograd_graph_and_calls_no_backward(monkeypatch):
    tr = MetaTrainer.from_config(_senses_config(steps=3))
    tr.train(progress=False)
    calls = []
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(a))
    reader = SenseReader(ALL, tr.task, 16, torch.Generator().manual_seed(0))
    seen = []

    def spy(graph, w, h):
        s = reader(graph, w, h)
        seen.append(s.requires_grad or w.requires_grad or h.requires_grad or s.grad_fn is not None)
        return s

    res = grow(tr.rule, tr.archs[0], 4, 6, tr.init, senses=spy)
    assert not calls and seen == [False] * 6
    assert not res.w.requires_grad and res.w.grad_fn is None


def test_the_backward_messages_never_read_the_task_weights():
    """Changing the weights of the last layer changes the output errors, but with the output
    errors held fixed the hidden messages depend only on the feedback channel."""
    arch = Architecture.mlp([3, 4, 2])
    graph, w, h = _state(arch, g=1)
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])
    st = neuron_stats(graph, w, h[:, -1], X, y)
    hid = (graph.neuron_kind == 1).nonzero().flatten()
    # the hidden messages are exactly phi'(z) * sum(feedback * output error): w enters only
    # through the forward activations
    last = graph.neuron_level[graph.dst] == 2
    expect = torch.zeros_like(st.m).index_add(
        0, graph.src[last], h[last, -1, None] * st.m[graph.dst[last]]
    )[hid] * (1 - st.a[hid] ** 2)
    torch.testing.assert_close(st.m[hid], expect)
    zero_fb = neuron_stats(graph, w, torch.zeros_like(h[:, -1]), X, y)
    assert zero_fb.m[hid].abs().max() == 0


def test_meta_gradient_reaches_the_feedback_through_the_senses():
    arch = Architecture.mlp([3, 4, 2])
    graph, w, h = _state(arch, g=1)
    h = h.requires_grad_(True)
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])
    st = neuron_stats(graph, w.requires_grad_(True), h[:, -1], X, y)
    s = weight_senses(graph, st, ["delta"], 2)
    s.sum().backward()
    assert h.grad[:, -1].abs().sum() > 0 and h.grad[:, :-1].abs().sum() == 0
    assert w.grad is None  # the forward pass is detached from the weights


def test_training_with_senses_permutations_checkpointing_and_resume(tmp_path):
    cfg = _senses_config(steps=4, checkpointing=True, permute_labels=True)
    a = MetaTrainer.from_config(cfg)
    for _ in range(2):
        a.meta_step()
    a.save(tmp_path / "last.pt")
    for _ in range(2):
        sa = a.meta_step()
    b = MetaTrainer.from_checkpoint(tmp_path / "last.pt")
    for _ in range(2):
        sb = b.meta_step()
    assert sa.loss == sb.loss
    for p, q in zip(a.rule.parameters(), b.rule.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(p.abs().sum() > 0 for p in a.rule.out.parameters())


@pytest.mark.parametrize("option", ["bf16", "damage"])
def test_senses_work_with_bf16_and_damage(option):
    kw = {"precision": "bf16"} if option == "bf16" else {}
    cfg = _senses_config(steps=2, **kw)
    if option == "damage":
        cfg.pool.damage = 1
    tr = MetaTrainer.from_config(cfg)
    assert not any(tr.meta_step().skipped for _ in range(2))


def test_rules_refuse_missing_or_unexpected_senses():
    arch = Architecture.mlp([3, 4, 2])
    graph, w, h = _state(arch)
    rule = LocalRule(4, senses=["act"]).double()
    with pytest.raises(ValueError, match="this rule reads data"):
        rule(graph, w, h)
    with pytest.raises(ValueError, match="senses must have shape"):
        rule(graph, w, h, senses=torch.zeros(w.shape[0], 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot read data"):
        LocalRule(4).double()(graph, w, h, senses=torch.zeros(w.shape[0], 2))
    with pytest.raises(ValueError, match="unknown sense 'smell'"):
        LocalRule(4, senses=["smell"])
    with pytest.raises(ValueError, match="permute_labels needs a rule that reads data"):
        MetaTrainer.from_config(tiny_config(permute_labels=True))


def test_fused_no_grad_step_with_senses_equals_the_differentiable_step():
    arch = Architecture.mlp([3, 5, 2])
    graph, w, h = _state(arch, g=3)
    rule = LocalRule(4, senses=ALL).double()
    torch.nn.init.normal_(rule.out.weight, std=0.1)
    s = torch.randn(w.shape[0], sense_size(ALL), dtype=torch.float64)
    mask = torch.ones(w.shape[0], dtype=torch.float64)
    with torch.no_grad():
        w1, h1 = rule(graph, w, h, mask=mask, senses=s)
    w2, h2 = rule(graph, w, h, mask=mask, senses=s)
    torch.testing.assert_close(w1, w2.detach())
    torch.testing.assert_close(h1, h2.detach())
    w3, h3 = rule(graph, w, h, mask=mask, senses=s, path="explicit")
    torch.testing.assert_close(w3, w2)


def test_sense_norm_puts_each_nets_error_signals_at_unit_rms():
    """gnca.senses.normalised against a loop over nets and columns; a rule with sense_norm is
    the plain rule on the normalised senses, on every route, with gradients through them."""
    from gnca.senses import normalised, soft_clip

    arch = Architecture.mlp([3, 5, 2])
    graph, w, h = _state(arch, g=3)
    e = arch.num_weights
    s = torch.randn(w.shape[0], sense_size(ALL), dtype=torch.float64) * 0.01
    s[:e] *= 100  # nets of very different scales
    got = normalised(graph, s, ALL)
    cols = [n for n in ALL for _ in range(SENSES[n])]
    for net in range(3):
        rows = slice(net * e, (net + 1) * e)
        for j, name in enumerate(cols):
            x = s[rows, j]
            rms = x.pow(2).mean().sqrt()
            want = soft_clip(x / (rms + 1e-6)) if name in ("error", "delta") else x
            torch.testing.assert_close(got[rows, j], want)
    with torch.no_grad():  # growing reduces each net's contiguous run: the same up to rounding
        torch.testing.assert_close(normalised(graph, s, ALL), got, rtol=0, atol=1e-12)
        fast = normalised(graph, s, ALL, 0.5)
        with torch.enable_grad():
            ref = normalised(graph, s, ALL, 0.5)
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
        plain = [j for j, n in enumerate(cols) if n not in ("error", "delta")]
        assert torch.equal(fast[:, plain], s[:, plain])
        two = [arch, Architecture.mlp([3, 2])]
        mixed = WeightGraph.collate([WeightGraph.from_architecture(a) for a in two])
        sm = torch.randn(mixed.num_nodes, sense_size(ALL), dtype=torch.float64)
        with torch.enable_grad():
            want_mixed = normalised(mixed, sm, ALL)
        assert torch.equal(normalised(mixed, sm, ALL), want_mixed)  # the general path
    spread = [float(got[net * e : (net + 1) * e, cols.index("delta")].std()) for net in range(3)]
    assert max(spread) / min(spread) < 1.5  # the 100x scale between nets is gone
    normed = LocalRule(4, senses=ALL, sense_norm=True).double()
    plain = LocalRule(4, senses=ALL).double()
    torch.nn.init.normal_(normed.out.weight, std=0.1)
    plain.load_state_dict(normed.state_dict())
    mask = torch.ones(w.shape[0], dtype=torch.float64)
    for path in ("fast", "explicit"):
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                w1, h1 = normed(graph, w, h, mask=mask, senses=s, path=path)
                w2, h2 = plain(graph, w, h, mask=mask, senses=got, path=path)
            torch.testing.assert_close(w1, w2)
            torch.testing.assert_close(h1, h2)
    sg = s.clone().requires_grad_(True)
    normed(graph, w, h, mask=mask, senses=sg)[0].sum().backward()
    assert sg.grad is not None and sg.grad.abs().sum() > 0
    assert "sense_norm" in repr(normed) and normed.config()["sense_norm"] is True
    assert "sense_norm" not in plain.config()  # rules without it keep their checkpoints
    with pytest.raises(ValueError, match="sense_norm rescales the senses"):
        LocalRule(4, sense_norm=True)
    d = config_to_dict(tiny_config())
    d["rule"]["sense_norm"] = True
    with pytest.raises(ValueError, match="sense_norm' needs senses"):
        config_from_dict(d)


def test_sense_norm_has_finite_gradients_when_a_nets_error_is_all_zero():
    """A saturated net (softmax exactly one-hot) reads error and delta senses that are all 0:
    normalising them must give 0 and a finite gradient, not the NaN of sqrt's slope at 0 (which
    rolled back every meta-step that drew such a net)."""
    from gnca.senses import normalised

    arch = Architecture.mlp([3, 5, 2])
    graph, w, _ = _state(arch, g=2)
    e = arch.num_weights
    base = torch.randn(w.shape[0], sense_size(ALL), dtype=torch.float64) * 0.1
    cols = [n for n in ALL for _ in range(SENSES[n])]
    err = [j for j, n in enumerate(cols) if n in ("error", "delta")]
    dead = torch.ones_like(base)
    dead[:e, err] = 0  # net 0: its error signals are exactly 0
    s = (base * dead).requires_grad_(True)
    out = normalised(graph, s, ALL)
    assert torch.equal(out[:e, err], torch.zeros_like(out[:e, err]))
    with torch.no_grad():
        fast = normalised(graph, s, ALL)
    assert torch.equal(fast[:e, err], torch.zeros_like(fast[:e, err]))
    torch.testing.assert_close(fast, out.detach(), rtol=0, atol=1e-12)
    # the other net reads what a plain root mean square gives
    x = base[e:, err]
    r = x / (x.pow(2).mean(0).sqrt() + 1e-6)
    want = r / (1 + r.abs())
    torch.testing.assert_close(out[e:, err], want)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad[e:, err].abs().sum() > 0


def test_sense_floor_keeps_signals_below_it_at_their_scale():
    """With a floor, a net's error columns are divided by max(rms, floor): a net far below the
    floor reads its signals (nearly) as they are, one far above reads them at unit RMS, and
    floor 0 is sense_norm as before, bit for bit."""
    from gnca.senses import normalised

    arch = Architecture.mlp([3, 5, 2])
    graph, w, h = _state(arch, g=2)
    e = arch.num_weights
    s = torch.randn(w.shape[0], sense_size(ALL), dtype=torch.float64)
    s[:e] *= 1e-6  # net 0: a net that fits its data (rounding-level errors)
    s[e:] *= 0.1
    cols = [n for n in ALL for _ in range(SENSES[n])]
    err = [j for j, n in enumerate(cols) if n in ("error", "delta")]
    floor = 1e-3
    got = normalised(graph, s, ALL, floor)
    x = s[:e, err]
    torch.testing.assert_close(
        got[:e, err], (x / (floor + 1e-6)) / (1 + (x / (floor + 1e-6)).abs())
    )
    assert got[:e, err].abs().max() < 1e-2  # stays weak
    torch.testing.assert_close(got[e:], normalised(graph, s, ALL)[e:])  # above it: unchanged
    assert torch.equal(normalised(graph, s, ALL, 0.0), normalised(graph, s, ALL))
    rule = LocalRule(4, senses=ALL, sense_norm=True, sense_floor=floor).double()
    plain = LocalRule(4, senses=ALL).double()
    plain.load_state_dict(rule.state_dict())
    torch.testing.assert_close(rule(graph, w, h, senses=s)[0], plain(graph, w, h, senses=got)[0])
    assert rule.config()["sense_floor"] == floor and "sense_floor=0.001" in repr(rule)
    assert "sense_floor" not in LocalRule(4, senses=ALL, sense_norm=True).config()
    with pytest.raises(ValueError, match="sense_floor bounds sense_norm"):
        LocalRule(4, senses=ALL, sense_floor=floor)
    with pytest.raises(ValueError, match="sense_floor must be >= 0"):
        LocalRule(4, senses=ALL, sense_norm=True, sense_floor=-1.0)
    d = config_to_dict(tiny_config())
    d["rule"].update(senses=ALL, sense_floor=floor)
    with pytest.raises(ValueError, match="'rule.sense_floor' needs 'rule.sense_norm'"):
        config_from_dict(d)


def test_label_permutations_are_per_net():
    task = Task(load_dataset("iris"))
    reader = SenseReader(["act"], task, 8, torch.Generator().manual_seed(0))
    perm = torch.tensor([[0, 1, 2], [2, 0, 1]])
    reader.permutation = perm
    y = torch.tensor([0, 1, 2, 2])
    assert reader.labels(y).tolist() == [[0, 1, 2, 2], [2, 0, 1, 1]]


def test_pooled_samples_keep_their_label_permutation(tmp_path):
    cfg = _senses_config(steps=3, permute_labels=True)  # tiny_config has a pool of 16
    tr = MetaTrainer.from_config(cfg)
    labels = tr.pools[0].labels
    assert labels is not None and labels.shape == (16, 3)
    assert all(sorted(r.tolist()) == [0, 1, 2] for r in labels)
    before = labels.clone()
    got = tr.objective.batch(0)[0]
    kept = ~got.renewed.cpu()
    tr.pools[0].commit(got.idx, got.w, got.h, torch.zeros(4), got.labels)
    assert torch.equal(tr.pools[0].labels[got.idx[kept]], before[got.idx[kept]])
    for _ in range(3):
        tr.meta_step()
    tr.save(tmp_path / "last.pt")
    back = MetaTrainer.from_checkpoint(tmp_path / "last.pt")
    assert torch.equal(back.pools[0].labels, tr.pools[0].labels)


@pytest.mark.parametrize("sizes", [[3, 4, 2], [5, 4, 3, 3], [4, 3]])
@pytest.mark.parametrize("ref", [None, 8.0])
def test_dense_senses_equal_the_general_path(sizes, ref):
    from gnca.senses import dense_senses

    arch = Architecture.mlp(sizes)
    graph, w, h = _state(arch, g=3)
    X = torch.randn(7, sizes[0], dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (3, 7))
    st = neuron_stats(graph, w, h[:, -1], X, y, "tanh", ref)
    general = weight_senses(graph, st, ALL, sizes[-1])
    dense = dense_senses(sizes, w, h[:, -1], X, y, ALL, "tanh", ref)
    torch.testing.assert_close(dense, general)
    with torch.no_grad():  # growing writes the columns in place: the same bits
        assert torch.equal(dense_senses(sizes, w, h[:, -1], X, y, ALL, "tanh", ref), dense)


def test_meta_training_on_two_datasets_at_once():
    from gnca.config import ConfigError, load_config

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    over = ["train.steps=2", "train.k_min=2", "train.k_max=2", "train.device=cpu",
            "pool.size=16", "rule.sense_batch=8", "train.batch_size=4"]  # fmt: skip
    cfg = load_config(root / "configs" / "tabular_senses.yaml", over)
    tr = MetaTrainer.from_config(cfg)
    assert [a.describe() for a in tr.archs] == ["mlp 64-32-10 (+bias)", "mlp 4-32-3 (+bias)"]
    assert [t.name for t in tr.arch_tasks] == ["digits", "iris"]
    assert tr.pools[1].labels.shape == (16, 3)
    assert not any(tr.meta_step().skipped for _ in range(2))
    out = tr.evaluate(num=2, horizons=(2,))
    assert set(out) == {"mlp 64-32-10 (+bias) on digits", "mlp 4-32-3 (+bias) on iris"}
    with pytest.raises(ValueError, match="needs a rule that reads data"):
        MetaTrainer.from_config(load_config(root / "configs" / "digits_datafree.yaml",
                                            [*over[:4], "data.also=[iris]"]))  # fmt: skip
    with pytest.raises(ConfigError, match="data.also"):
        load_config(root / "configs" / "tabular_senses.yaml", ["data.also=[digits]"])


def test_also_downsample_pools_only_the_extra_images():
    from gnca.build import make_also
    from gnca.config import ConfigError, load_config

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    over = ["data.name=iris", "data.also=[digits,moons]", "data.also_downsample=2"]
    cfg = load_config(root / "configs" / "tabular_senses.yaml", over)
    also = make_also(cfg)
    assert [(t.name, t.n_features) for t, _ in also] == [("digits", 16), ("moons", 2)]
    assert [a.describe() for _, archs in also for a in archs] == [
        "mlp 16-32-10 (+bias)",
        "mlp 2-32-2 (+bias)",
    ]
    pooled = load_dataset("digits", downsample=2)
    np.testing.assert_array_equal(np.asarray(also[0][0].data.X_train), pooled.X_train)
    # unset, the extra images take data.downsample: 8 x 8 digits beside iris
    plain = make_also(load_config(root / "configs" / "tabular_senses.yaml",
                                  ["data.name=iris", "data.also=[digits]"]))  # fmt: skip
    assert plain[0][0].n_features == 64
    with pytest.raises(ConfigError, match="data.also_downsample' must be >= 1"):
        load_config(root / "configs" / "tabular_senses.yaml", ["data.also_downsample=0"])


def test_grow_on_one_of_the_rules_extra_datasets(tmp_path, capsys):
    """gnca grow --set data.name=X works when X was one of the rule's data.also datasets."""
    from conftest import TINY

    from gnca.cli import main

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    assert main(["train", "--config", str(root / "configs" / "tabular_senses.yaml"), "--set",
                 *TINY, "task.architectures=[[64,8,10]]", "train.steps=1", "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["grow", "--checkpoint", str(run / "last.pt"), "--set", "data.name=iris",
                 "--arch", "h:8", "--num", "2", "--steps", "2", "--json",
                 "--no-progress"]) == 0  # fmt: skip
    assert "mlp 4-8-3" in capsys.readouterr().out


def _raw_dense_senses(sizes, w, feedback, X, y, names):
    """Reference for the arithmetic of ``dense_senses``: every raw column broadcast to the
    weights first, then the whole ``(E, S)`` block soft-clipped (``loss`` divided by
    ``log(classes)`` instead), as one select."""
    from gnca.senses import SENSES, _dense_messages, _dense_pass, soft_clip

    A, Z, loss, err = _dense_pass(sizes, w, X, y, "tanh", 32.0)
    g = A[0].shape[0]
    e = w.shape[0] // g
    M = _dense_messages(sizes, feedback.view(g, e), A, Z, err, "tanh")
    cols = []
    for i in range(len(sizes) - 1):
        tail, head, m = A[i], A[i + 1], M[i + 1]
        b_n, a, b = tail.shape[1], tail.shape[2], head.shape[2]
        tail1 = torch.cat([tail, tail.new_ones(g, b_n, 1)], 2)
        per = []
        for n in names:
            if n == "act":
                per.append(tail1.mean(1)[:, :, None].expand(g, a + 1, b))
                per.append(head.mean(1)[:, None, :].expand(g, a + 1, b))
            elif n == "hebb":
                per.append(torch.bmm(tail1.transpose(1, 2), head) / b_n)
            elif n == "loss":
                per.append(loss[:, None, None].expand(g, a + 1, b))
            elif n == "error":
                per.append(m.mean(1)[:, None, :].expand(g, a + 1, b))
            else:
                per.append(torch.bmm(tail1.transpose(1, 2), m) / b_n)
        layer = torch.stack(per, -1)
        cols.append(torch.cat([layer[:, :a].reshape(g, a * b, -1), layer[:, a]], 1))
    out = torch.cat(cols, 1).reshape(g * e, -1)
    keep = torch.tensor([n != "loss" for n in names for _ in range(SENSES[n])])
    return torch.where(keep, soft_clip(out), out / torch.log(torch.tensor(float(sizes[-1]))))


def test_dense_senses_clip_before_broadcast_keeps_the_bits_and_gradients():
    """Clipping each column before it is broadcast gives the same bits, and the feedback's
    gradient the same bits, as clipping the broadcast block."""
    from gnca.senses import dense_senses

    torch.manual_seed(0)
    sizes, g = [13, 32, 5], 6
    e = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    w, X, y = torch.randn(g * e), torch.randn(g, 16, 13), torch.randint(0, 5, (g, 16))
    names = list(SENSES)
    fb1 = torch.randn(g * e, requires_grad=True)
    fb2 = fb1.detach().clone().requires_grad_(True)
    new = dense_senses(sizes, w, fb1, X, y, names, "tanh", 32.0)
    ref = _raw_dense_senses(sizes, w, fb2, X, y, names)
    assert torch.equal(new, ref)
    up = torch.randn_like(new)
    new.backward(up)
    ref.backward(up)
    assert torch.equal(fb1.grad, fb2.grad)
    with torch.no_grad():
        assert torch.equal(dense_senses(sizes, w, fb1, X, y, names, "tanh", 32.0), ref)
