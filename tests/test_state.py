"""Tests of gnca.state: initial weights (fixed / random / codes) and the identity-code layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gnca import Architecture, WeightGraph, identity_codes, initial_state
from gnca.architecture import HIDDEN
from gnca.state import code_channels, initial_weights


def _sc(p: float, ks: range) -> list[float]:
    """``[s_k(p), c_k(p)]`` for ``k`` in ``ks``."""
    out = []
    for k in ks:
        out += [math.sin(2 * math.pi * k * p), math.cos(2 * math.pi * k * p)]
    return out


# ---------------------------------------------------------------------------- weights


def test_fixed_is_identical_across_samples_and_calls() -> None:
    arch = Architecture.mlp([4, 5, 3])
    e = arch.num_weights
    g = WeightGraph.replicate(arch, 3)
    w, h = initial_state(g, 4, "fixed", init_seed=7)
    per = w.view(3, e)
    assert torch.equal(per[0], per[1]) and torch.equal(per[0], per[2])
    assert (h == 0).all()
    again, _ = initial_state(g, 4, "fixed", init_seed=7)
    assert torch.equal(w, again)
    single, _ = initial_state(WeightGraph.from_architecture(arch), 4, "fixed", init_seed=7)
    assert torch.equal(single, per[0])
    other, _ = initial_state(g, 4, "fixed", init_seed=8)
    assert not torch.equal(other, w)
    # same seed per architecture also inside a mixed batch
    mixed = WeightGraph.collate(
        [
            WeightGraph.from_architecture(arch),
            WeightGraph.from_architecture(Architecture.mlp([4, 3])),
        ]
    )
    w_mixed, _ = initial_state(mixed, 4, "fixed", init_seed=7)
    assert torch.equal(w_mixed[:e], per[0])


def test_fixed_noise_differs_per_sample() -> None:
    arch = Architecture.mlp([4, 5, 3])
    g = WeightGraph.replicate(arch, 2)
    w = initial_weights(
        g, "fixed", init_seed=0, init_noise=0.1, generator=torch.Generator().manual_seed(0)
    )
    per = w.view(2, -1)
    assert not torch.equal(per[0], per[1])
    base = initial_weights(g, "fixed", init_seed=0).view(2, -1)
    nb = ~torch.as_tensor(arch.is_bias_weight.copy())
    assert (per[0] - base[0])[nb].abs().max() < 1.0


@pytest.mark.parametrize("kind", ["random", "codes"])
def test_random_differs_across_samples(kind: str) -> None:
    arch = Architecture.mlp([4, 5, 3])
    g = WeightGraph.replicate(arch, 3)
    w, _ = initial_state(g, 16, kind, generator=torch.Generator().manual_seed(0))
    per = w.view(3, -1)
    nb = ~torch.as_tensor(arch.is_bias_weight.copy())
    assert (per[0][nb] != per[1][nb]).all() and (per[1][nb] != per[2][nb]).all()
    w2, _ = initial_state(g, 16, kind, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, w2)


@pytest.mark.parametrize("kind", ["fixed", "random", "codes"])
def test_bias_weights_start_at_zero_and_scale(kind: str) -> None:
    arch = Architecture.mlp([200, 50, 3])
    g = WeightGraph.replicate(arch, 2)
    w, h = initial_state(g, 16, kind, init_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert (w[g.is_bias] == 0).all()
    assert (w[~g.is_bias] != 0).all()
    assert h.shape == (g.num_nodes, 16)
    # std of the first layer is scale / sqrt(fan_in) = 2 / sqrt(200)
    first = w.view(2, -1)[:, : 200 * 50]
    assert abs(first.std().item() - 2 / math.sqrt(200)) < 0.01


def test_unknown_kind() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([2, 2]))
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        initial_state(g, 4, "zeros")


# ---------------------------------------------------------------------------- identity codes


def test_code_layout_hidden_and_output_channels() -> None:
    f, c = 2, 20
    arch = Architecture.mlp([4, 3, 2])
    g = WeightGraph.from_architecture(arch)
    h = identity_codes(g, c, f)
    assert h.shape == (arch.num_weights, c) and code_channels(f) == 16
    _, h_codes = initial_state(g, c, "codes", code_freqs=f)
    assert torch.equal(h, h_codes)
    edges = arch.edges.tolist()
    # layer 1 weight i -> j (index i*3 + j), layer 2 weight j -> k (index 15 + j*2 + k)
    for i in range(4):
        for j in range(3):
            row = h[i * 3 + j].tolist()
            assert edges[i * 3 + j] == [i, 4 + j]
            np.testing.assert_allclose(row[0:8], _sc((i + 0.5) / 4, range(1, 5)), atol=1e-5)
            np.testing.assert_allclose(row[8:12], _sc((j + 0.5) / 3, range(1, 3)), atol=1e-5)
            assert row[12:16] == pytest.approx([0.5, 1.0, 0.0, 0.0])
            assert row[16:] == [0.0] * 4
    for j in range(3):
        for k in range(2):
            idx = 15 + j * 2 + k
            row = h[idx].tolist()
            assert edges[idx] == [4 + j, 7 + k]
            np.testing.assert_allclose(row[0:8], _sc((j + 0.5) / 3, range(1, 5)), atol=1e-5)
            # class index code of output weights
            np.testing.assert_allclose(row[8:12], _sc((k + 0.5) / 2, range(1, 3)), atol=1e-5)
            assert row[12:16] == pytest.approx([1.0, 0.0, 1.0, 0.0])
    # bias weights: no in-neuron code, bias flag set, out-neuron code of the target
    for j in range(3):
        row = h[12 + j].tolist()
        assert row[0:8] == [0.0] * 8
        np.testing.assert_allclose(row[8:12], _sc((j + 0.5) / 3, range(1, 3)), atol=1e-5)
        assert row[12:16] == pytest.approx([0.5, 0.0, 0.0, 1.0])
    for k in range(2):
        row = h[21 + k].tolist()
        assert row[0:8] == [0.0] * 8
        assert row[12:16] == pytest.approx([1.0, 0.0, 1.0, 1.0])


def test_code_layout_image_inputs() -> None:
    f = 2
    arch = Architecture.mlp([6, 2], input_shape=(2, 3), bias=False)
    g = WeightGraph.from_architecture(arch)
    h = identity_codes(g, 16, f)
    for i in range(6):
        r, col = divmod(i, 3)
        for k in range(2):
            row = h[i * 2 + k].tolist()
            # [s_k(row), c_k(row)]_{k=1..f} then [s_k(col), c_k(col)]_{k=1..f}
            np.testing.assert_allclose(row[0:4], _sc((r + 0.5) / 2, range(1, 3)), atol=1e-5)
            np.testing.assert_allclose(row[4:8], _sc((col + 0.5) / 3, range(1, 3)), atol=1e-5)
            np.testing.assert_allclose(row[8:12], _sc((k + 0.5) / 2, range(1, 3)), atol=1e-5)
            # linear net: depth 1, from an input, into an output, not a bias
            assert row[12:16] == pytest.approx([1.0, 1.0, 1.0, 0.0])


def test_codes_in_mixed_batch_match_single_graphs() -> None:
    archs = [
        Architecture.mlp([6, 3, 2], input_shape=(2, 3)),
        Architecture.skip_mlp([6, 2, 2]),
    ]
    graphs = [WeightGraph.from_architecture(a) for a in archs]
    batch = WeightGraph.collate(graphs)
    h = identity_codes(batch, 18, 2)
    ref = torch.cat([identity_codes(g, 18, 2) for g in graphs])
    torch.testing.assert_close(h, ref)
    # the image code is used for the first graph only: its input rows differ from a 1-D code
    plain = identity_codes(WeightGraph.from_architecture(Architecture.mlp([6, 3, 2])), 18, 2)
    assert not torch.allclose(h[: len(plain)], plain)
    assert torch.equal(h[: len(plain), 8:], plain[:, 8:])


def test_depth_channel_on_a_skip_net() -> None:
    arch = Architecture.skip_mlp([2, 2, 2, 2], skip=3, bias=False)
    g = WeightGraph.from_architecture(arch)
    h = identity_codes(g, 16, 2)
    lv = arch.levels[arch.edges[:, 1]] / arch.depth
    np.testing.assert_allclose(h[:, 12].numpy(), lv, atol=1e-7)
    is_in = np.isin(arch.edges[:, 0], arch.inputs)
    is_out = np.isin(arch.edges[:, 1], arch.outputs)
    assert h[:, 13].tolist() == is_in.astype(float).tolist()
    assert h[:, 14].tolist() == is_out.astype(float).tolist()


def test_codes_need_enough_channels() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([3, 2]))
    with pytest.raises(ValueError, match="need hidden_channels >= 16, got 15"):
        identity_codes(g, 15, 2)
    with pytest.raises(ValueError, match="need hidden_channels >= 22"):
        initial_state(g, 16, "codes", code_freqs=3)
    with pytest.raises(ValueError, match="code_freqs must be >= 1"):
        identity_codes(g, 16, 0)
    assert identity_codes(g, 10, 1).shape == (g.num_nodes, 10)


def test_without_depth_code_hidden_layers_of_any_depth_share_codes() -> None:
    f, c = 2, 16
    deep, shallow = Architecture.mlp([4, 3, 3, 3, 2]), Architecture.mlp([4, 3, 3, 2])
    gd, gs = (WeightGraph.from_architecture(a) for a in (deep, shallow))
    with_depth = identity_codes(gd, c, f)
    h = identity_codes(gd, c, f, depth_code=False)
    # only the depth channel changes, and it is 0 everywhere
    assert torch.equal(h[:, 12], torch.zeros(gd.num_nodes))
    assert torch.equal(
        torch.cat([h[:, :12], h[:, 13:]], 1), torch.cat([with_depth[:, :12], with_depth[:, 13:]], 1)
    )
    assert not torch.equal(with_depth[:, 12], torch.zeros(gd.num_nodes))

    # every hidden-to-hidden layer (3x3 weights + 3 biases) of both nets has the same codes
    def hidden_layers(arch: Architecture, h: torch.Tensor) -> list[torch.Tensor]:
        off, out = 0, []
        sizes = arch.mlp_sizes
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if 0 < i < len(sizes) - 2:
                out.append(h[off : off + a * b + b])
            off += a * b + b
        return out

    layers = hidden_layers(deep, h) + hidden_layers(
        shallow, identity_codes(gs, c, f, depth_code=False)
    )
    assert len(layers) == 3
    for layer in layers[1:]:
        assert torch.equal(layer, layers[0])
    _, h_init = initial_state(gd, c, "codes", code_freqs=f, depth_code=False)
    assert torch.equal(h_init, h)


# ---------------------------------------------------------------------------- code jitter


def test_zero_jitter_is_exact_and_draws_nothing() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([4, 6, 5, 3]))
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    h = identity_codes(g, 16, 2, code_jitter=0.0, generator=gen)
    assert torch.equal(h, identity_codes(g, 16, 2))
    assert torch.equal(gen.get_state(), before)
    with pytest.raises(ValueError, match="code_jitter must be in"):
        identity_codes(g, 16, 2, code_jitter=1.5)


@pytest.mark.parametrize("jitter", [0.3, 1.0])
def test_jitter_moves_only_hidden_positions_within_their_cell(jitter: float) -> None:
    f, c = 1, 10
    arch = Architecture.mlp([3, 7, 4, 2])
    g = WeightGraph.replicate(arch, 5)
    exact = identity_codes(g, c, f)
    h = identity_codes(g, c, f, code_jitter=jitter, generator=torch.Generator().manual_seed(0))
    src, dst, kind = g.src, g.dst, g.neuron_kind
    hidden = kind == HIDDEN
    # channels 4f.. 6f-1: out-neuron code [s_1(p), c_1(p)]; recover p and check it
    p_out = torch.atan2(h[:, 4], h[:, 5]) / (2 * math.pi) % 1.0
    i = g.neuron_position[dst].double()
    n = g.neuron_level_size[dst].double()
    lo, hi = (i + 0.5 - jitter / 2) / n, (i + 0.5 + jitter / 2) / n
    tol = 1e-5
    assert bool(((p_out >= lo - tol) & (p_out <= hi + tol)).all())
    # hidden out-neurons moved (almost surely), output out-neurons did not
    moved = (h[:, 4:6] - exact[:, 4:6]).abs().amax(1) > 0
    assert bool(moved[hidden[dst]].all())
    assert not bool(moved[~hidden[dst]].any())
    # in-codes of input and bias neurons, and the flags, are untouched
    fixed_in = ~hidden[src]
    assert torch.equal(h[fixed_in, :4], exact[fixed_in, :4])
    assert torch.equal(h[:, 6:], exact[:, 6:])
    # one draw per neuron: every weight leaving a hidden neuron carries the same in-code
    for u in torch.nonzero(hidden).flatten()[:6].tolist():
        rows = h[src == u, :4]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    # the 5 copies draw independently
    per = arch.num_weights
    assert not torch.equal(h[:per], h[per : 2 * per])


@pytest.mark.parametrize("depth_code", [True, False])
def test_codes_of_a_batch_equal_each_nets_own_codes(depth_code: bool) -> None:
    # copies of one net (computed once and repeated) and a mixed batch (computed per weight)
    a = Architecture.mlp([196, 5, 4, 3], input_shape=(14, 14))
    b = Architecture.mlp([196, 6, 3], input_shape=(14, 14))
    c = Architecture.mlp([7, 6, 3])
    f, ch = 2, 20
    single = {
        arch: identity_codes(WeightGraph.from_architecture(arch), ch, f, depth_code)
        for arch in (a, b, c)
    }
    rep = WeightGraph.replicate(a, 4)
    assert torch.equal(identity_codes(rep, ch, f, depth_code), single[a].repeat(4, 1))
    mixed = WeightGraph.collate([WeightGraph.from_architecture(x) for x in (a, b, c, a)])
    expect = torch.cat([single[a], single[b], single[c], single[a]])
    assert torch.equal(identity_codes(mixed, ch, f, depth_code), expect)


def test_random_neuron_codes_one_gaussian_vector_per_hidden_neuron() -> None:
    f, c = 2, 20
    arch = Architecture.mlp([49, 6, 5, 3], input_shape=(7, 7))
    g = WeightGraph.replicate(arch, 4)
    exact = identity_codes(g, c, f)
    gen = torch.Generator().manual_seed(1)
    h = identity_codes(g, c, f, neuron_codes="random", generator=gen)
    src, dst, hidden, bias = g.src, g.dst, g.neuron_kind == HIDDEN, g.is_bias
    # slow reference: walk the neurons, read each hidden neuron's code off its weights
    seen = 0
    for u in torch.nonzero(hidden).flatten().tolist():
        out_rows = h[src == u, : 4 * f]  # weights leaving u carry z(u) as in-code
        in_rows = h[(dst == u) & ~bias, 4 * f : 6 * f]  # weights into u carry z(u)[:2f]
        bias_rows = h[(dst == u) & bias]
        assert torch.equal(out_rows, out_rows[:1].expand_as(out_rows))
        assert torch.equal(in_rows, out_rows[:1, : 2 * f].expand_as(in_rows))
        assert torch.equal(bias_rows[:, 4 * f : 6 * f], in_rows[:1].expand(len(bias_rows), -1))
        assert torch.equal(bias_rows[:, : 4 * f], torch.zeros_like(bias_rows[:, : 4 * f]))
        seen += 1
    assert seen == 4 * (6 + 5)
    # codes of input pixels, output classes and the flags are the sinusoidal ones
    keep_in, keep_out = ~hidden[src], ~hidden[dst]
    assert torch.equal(h[keep_in, : 4 * f], exact[keep_in, : 4 * f])
    assert torch.equal(h[keep_out, 4 * f : 6 * f], exact[keep_out, 4 * f : 6 * f])
    assert torch.equal(h[:, 6 * f :], exact[:, 6 * f :])
    # Gaussian with the sinusoids' mean square, independent per net, reproducible per seed
    z = h[hidden[src], : 4 * f]
    assert abs(float(z.pow(2).mean()) - 0.5) < 0.15
    per = arch.num_weights
    assert not torch.equal(h[:per], h[per : 2 * per])
    again = identity_codes(
        g, c, f, neuron_codes="random", generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(h, again)


def test_unknown_neuron_codes() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([4, 3, 2]))
    with pytest.raises(
        ValueError, match="^unknown neuron_codes 'learned'; choose one of sincos, random$"
    ):
        identity_codes(g, 16, 2, neuron_codes="learned")


def test_out_code_freqs_widen_only_the_out_neuron_code() -> None:
    """``out_code_freqs = g``: the out-neuron code has ``g`` frequencies, the in-neuron code and the
    flags are those of ``g = f`` (shifted by ``2(g - f)`` channels), checked weight by weight."""
    f, gq, c = 2, 4, 24
    arch = Architecture.mlp([4, 3, 2])
    graph = WeightGraph.from_architecture(arch)
    assert code_channels(f, gq) == 4 * f + 2 * gq + 4 == 20
    assert code_channels(f, None) == code_channels(f) == code_channels(f, f)
    wide = identity_codes(graph, c, f, out_code_freqs=gq)
    plain = identity_codes(graph, c, f)
    assert torch.equal(identity_codes(graph, c, f, out_code_freqs=f), plain)
    _, h = initial_state(graph, c, "codes", code_freqs=f, out_code_freqs=gq)
    assert torch.equal(h, wide)
    heads = arch.edges[:, 1].tolist()
    size = {4 + j: 3 for j in range(3)} | {7 + k: 2 for k in range(2)}
    first = {4 + j: 4 for j in range(3)} | {7: 7, 8: 7}
    for e, v in enumerate(heads):
        p = (v - first[v] + 0.5) / size[v]
        np.testing.assert_allclose(wide[e, 8:16].tolist(), _sc(p, range(1, 5)), atol=1e-5)
        assert torch.equal(wide[e, :8], plain[e, :8])  # in-neuron code unchanged
        assert torch.equal(wide[e, 16:20], plain[e, 12:16])  # flags moved up by 2(g - f)
        assert wide[e, 20:].abs().sum() == 0
    with pytest.raises(
        ValueError, match="code_freqs=2 and out_code_freqs=4 need hidden_channels >= 20"
    ):
        identity_codes(graph, 19, f, out_code_freqs=gq)
    with pytest.raises(ValueError, match="out_code_freqs must be >= 1"):
        identity_codes(graph, c, f, out_code_freqs=0)
    # random hidden codes: the out-code is the first 2g channels of the neuron's Gaussian code
    gen = torch.Generator().manual_seed(0)
    r = identity_codes(graph, c, f, neuron_codes="random", out_code_freqs=5, generator=gen)
    hidden_in = [e for e, (u, _) in enumerate(arch.edges.tolist()) if 4 <= u < 7]
    hidden_out = [e for e, v in enumerate(heads) if 4 <= v < 7]
    u0 = arch.edges[hidden_in[0], 0].item()
    into_u0 = [e for e in hidden_out if heads[e] == u0 and e < 12]
    assert torch.equal(r[into_u0[0], 8:16], r[hidden_in[0], :8])  # z[:8] both ways
    assert r[into_u0[0], 16:18].abs().sum() > 0  # channels 8..9 of z: g = 5 > 2f


def test_check_codes_fit_names_out_code_freqs() -> None:
    from gnca.state import InitSpec, check_codes_fit

    check_codes_fit(InitSpec("codes", code_freqs=6, out_code_freqs=12), 52)
    with pytest.raises(ValueError, match="task.out_code_freqs = 12 \\(needs >= 52\\)"):
        check_codes_fit(InitSpec("codes", code_freqs=6, out_code_freqs=12), 48)


def test_code_jitter_fraction_moves_whole_nets_and_keeps_the_rest_exact() -> None:
    arch = Architecture.mlp([3, 7, 4, 2])
    g = WeightGraph.replicate(arch, 40)
    per = arch.num_weights
    exact = identity_codes(g, 10, 1)
    full = identity_codes(g, 10, 1, code_jitter=0.8, generator=torch.Generator().manual_seed(0))
    # fraction 1 draws nothing more: the same codes as before the option existed
    same = identity_codes(
        g,
        10,
        1,
        code_jitter=0.8,
        code_jitter_fraction=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(same, full)
    h = identity_codes(
        g,
        10,
        1,
        code_jitter=0.8,
        code_jitter_fraction=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    moved = [
        not torch.equal(h[i * per : (i + 1) * per], exact[i * per : (i + 1) * per])
        for i in range(40)
    ]
    # a net is either moved like the fully jittered draw (same positions) or exact
    for i, m in enumerate(moved):
        block = slice(i * per, (i + 1) * per)
        assert torch.equal(h[block], full[block] if m else exact[block])
    assert 8 <= sum(moved) <= 32  # Binomial(40, 0.5)
    none = identity_codes(
        g,
        10,
        1,
        code_jitter=0.8,
        code_jitter_fraction=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(none, exact)
    with pytest.raises(ValueError, match="code_jitter_fraction must be in"):
        identity_codes(g, 10, 1, code_jitter=0.5, code_jitter_fraction=1.5)


def test_init_spec_is_the_schema_of_the_task_sections_initial_state_keys() -> None:
    """One name per option, from config key to keyword: every :class:`InitSpec` field is a
    ``task`` key with the same default; ``make_init`` reads the keys (the code jitter for
    meta-training seeds only), ``config_record`` writes them back, ``initial_state`` takes them."""
    from dataclasses import fields, replace

    from gnca.build import make_init, trainer_parts
    from gnca.config import TaskConfig, config_from_dict
    from gnca.state import TRAINING_ONLY, InitSpec
    from gnca.trainer import config_record

    task_keys = {f.name: f for f in fields(TaskConfig)}
    for f in fields(InitSpec):
        assert task_keys[f.name].default == f.default, f.name
    custom = {
        "init": "codes", "init_seed": 3, "init_scale": 0.5, "init_noise": 0.1, "code_freqs": 3,
        "out_code_freqs": 5, "depth_code": False, "code_jitter": 0.25,
        "code_jitter_fraction": 0.5, "neuron_codes": "random",
    }  # fmt: skip
    # a new option: add it here too (feedback_init needs init random or fixed and a rule with
    # a learned feedback: tests/test_descent.py round-trips it)
    assert set(custom) | {"feedback_init"} == {f.name for f in fields(InitSpec)}
    cfg = config_from_dict({"task": custom, "rule": {"hidden_channels": 26}})
    assert make_init(cfg.task, training=True) == InitSpec(**custom)
    growing = replace(InitSpec(**custom), code_jitter=0.0, code_jitter_fraction=1.0)
    assert make_init(cfg.task) == growing == InitSpec(**custom).growing()
    assert set(TRAINING_ONLY) == {"code_jitter", "code_jitter_fraction"}
    parts = trainer_parts(cfg)
    _, recorded, _ = config_record(
        parts["rule"], parts["task"], parts["archs"], parts["init"], parts["seed_init"]
    )
    assert {name: getattr(recorded, name) for name in custom} == custom
    graph = WeightGraph.from_architecture(Architecture.mlp([4, 6, 3]))
    w, h = initial_state(graph, 26, generator=torch.Generator().manual_seed(0), **custom)
    w2, h2 = InitSpec(**custom).state(graph, 26, torch.Generator().manual_seed(0))
    assert torch.equal(w, w2) and torch.equal(h, h2)
