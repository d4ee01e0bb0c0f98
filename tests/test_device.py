"""The core computations on the device named by ``$GNCA_TEST_DEVICE`` (cpu when unset).

    GNCA_TEST_DEVICE=cuda python -m pytest -m device -q

Graphs, rules, states and data go to that device and every result is compared with the CPU or a
plain-loop reference: in float64 to 1e-10 (two devices only sum in different orders), in
float32 to a few 1e-5, and bit for bit where one device must repeat itself (a resumed run, the
differentiable rule step). On the CPU these tests check the same code paths against the same
references, so ``-m device`` passes everywhere; on a GPU they are the check that nothing
assumes the CPU (a generator, a sparse product, a checkpoint written from device tensors).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    IRIS,
    NEIGHBOURHOOD_NAMES,
    TINY,
    dag_specs,
    edge_list,
    example_archs,
    float64_state,
    loop_perceive,
    on_device,
    rule_params,
    tiny_config,
)
from hypothesis import given, settings

from gnca import Architecture, LocalRule, WeightGraph, perceive, task_forward
from gnca.build import load_rule, load_trained
from gnca.cli import main
from gnca.export import GrownNets
from gnca.forward import TASK_ACTIVATIONS
from gnca.grow import grow
from gnca.state import InitSpec
from gnca.trainer import MetaTrainer

pytestmark = pytest.mark.device

CPU = torch.device("cpu")
F64 = {"rtol": 0.0, "atol": 1e-10}  # float64 on two devices or paths: summation order only
F32 = {"rtol": 1e-4, "atol": 2e-5}  # float32 on two devices


def _active_rule(c: int, seed: int = 0, dtype=torch.float32, **kw) -> LocalRule:
    """A rule with a non-zero output layer (a fresh rule is the identity), on the CPU."""
    torch.manual_seed(seed)
    rule = LocalRule(c, **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rule.out.weight.copy_(torch.randn(rule.out.weight.shape, generator=gen) * 0.3)
        rule.out.bias.copy_(torch.randn(rule.out.bias.shape, generator=gen) * 0.3)
    return rule.to(dtype)


def _twin(rule: LocalRule, device: torch.device) -> LocalRule:
    """The same rule (same parameters) on ``device``; ``rule`` stays where it is."""
    other = LocalRule(**rule.config())
    other.load_state_dict(rule.state_dict())
    p = next(rule.parameters())
    return other.to(device=device, dtype=p.dtype)


def _mixed_graph(device: torch.device | None = None):
    """A skip DAG and an MLP batched together (both neighbour relations non-trivial)."""
    return WeightGraph.collate(
        [
            WeightGraph.from_architecture(Architecture.skip_mlp([3, 5, 4, 2], skip=2), device),
            WeightGraph.from_architecture(Architecture.mlp([3, 2]), device),
        ]
    )


def test_the_device_is_the_one_asked_for(device):
    x = torch.zeros(3, device=device)
    assert on_device(x, device)
    g = WeightGraph.replicate(Architecture.mlp([3, 4, 2]), 2, device=device)
    assert on_device(g.src, device) and on_device(g.fan_in, device)


# ---------------------------------------------------------------------- perception
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_fast_perception_equals_the_loop_reference(device, neighbourhood, include_self, reduce):
    for i, arch in enumerate(example_archs()):
        g = WeightGraph.from_architecture(arch, device=device)
        w, h = float64_state(arch.num_weights, 3, seed=i)
        p = perceive(
            g, w.to(device), h.to(device), neighbourhood, include_self=include_self, reduce=reduce
        )
        assert on_device(p, device) and p.dtype == torch.float64
        ref = loop_perceive(edge_list(arch), w, h, neighbourhood, include_self, reduce)
        torch.testing.assert_close(p.cpu(), ref, **F64)


@settings(max_examples=15, deadline=None)
@given(spec=dag_specs())
def test_fast_perception_equals_the_loop_on_random_dags(device, spec):
    arch = spec.build()
    g = WeightGraph.from_architecture(arch, device=device)
    w, h = float64_state(arch.num_weights, 2, seed=3)
    for nb in NEIGHBOURHOOD_NAMES:
        p = perceive(g, w.to(device), h.to(device), nb)
        ref = loop_perceive(edge_list(arch), w, h, nb, False, "mean")
        torch.testing.assert_close(p.cpu(), ref, **F64)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_explicit_line_graph_equals_the_fast_path(device, neighbourhood, include_self):
    g = _mixed_graph(device)
    rule = LocalRule(3, neighbourhood=neighbourhood, include_self=include_self).to(device)
    w, h = float64_state(g.num_nodes, 3, seed=8)
    w, h = w.to(device), h.to(device)
    explicit = rule.perceive(g, w, h, path="explicit")
    assert on_device(explicit, device)
    torch.testing.assert_close(explicit, rule.perceive(g, w, h, path="fast"), **F64)
    # max has no fast route: the explicit path against the loop
    rule_max = LocalRule(3, neighbourhood=neighbourhood, include_self=include_self, aggr="max")
    edges = [(int(u), int(v)) for u, v in zip(g.src.tolist(), g.dst.tolist(), strict=True)]
    ref = loop_perceive(edges, w.cpu(), h.cpu(), neighbourhood, include_self, "max")
    torch.testing.assert_close(rule_max.to(device).perceive(g, w, h).cpu(), ref, **F64)


def test_float32_perception_matches_the_cpu(device):
    arch = Architecture.mlp([20, 16, 5])
    g_cpu, g_dev = WeightGraph.replicate(arch, 6), WeightGraph.replicate(arch, 6, device=device)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(g_cpu.num_nodes, generator=gen)
    h = torch.randn(g_cpu.num_nodes, 8, generator=gen)
    for nb in NEIGHBOURHOOD_NAMES:
        ref = perceive(g_cpu, w, h, nb)
        got = perceive(g_dev, w.to(device), h.to(device), nb)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.cpu(), ref, **F32)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_perception_gradients_match_the_cpu_and_the_explicit_path(
    device, neighbourhood, include_self
):
    """The fast path's hand-written backward (sparse products with cached transposes)."""
    e = _mixed_graph().num_nodes
    w, h = float64_state(e, 3, seed=4)
    probe = torch.randn(e, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def grads(dev: torch.device, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        g = _mixed_graph(dev)
        rule = LocalRule(3, neighbourhood=neighbourhood, include_self=include_self).to(dev)
        wv, hv = w.to(dev).requires_grad_(), h.to(dev).requires_grad_()
        (rule.perceive(g, wv, hv, path=path) * probe.to(dev)).sum().backward()
        return wv.grad.cpu(), hv.grad.cpu()

    ref = grads(CPU, "fast")
    for path in ("fast", "explicit"):
        torch.testing.assert_close(grads(device, path), ref, **F64)


# ---------------------------------------------------------------------- the rule step
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_fused_and_differentiable_steps_match_the_cpu(device, neighbourhood, include_self, reduce):
    """The fused no-grad step (growing) and the differentiable step (meta-training) on the
    device, each against the differentiable step on the CPU, with the same fire mask."""
    kw = {"neighbourhood": neighbourhood, "include_self": include_self, "reduce": reduce}
    rule = _active_rule(4, dtype=torch.float64, fire_rate=0.6, **kw)
    rule_dev = _twin(rule, device)
    g_cpu, g_dev = _mixed_graph(), _mixed_graph(device)
    w, h = float64_state(g_cpu.num_nodes, 4, seed=1)
    mask = (torch.rand(g_cpu.num_nodes, generator=torch.Generator().manual_seed(2)) < 0.6).double()
    ref_w, ref_h = rule(g_cpu, w, h, mask=mask)
    wd, hd, md = w.to(device), h.to(device), mask.to(device)
    grad_w, grad_h = rule_dev(g_dev, wd, hd, mask=md)
    with torch.no_grad():
        fused_w, fused_h = rule_dev(g_dev, wd, hd, mask=md)
    for got_w, got_h in ((grad_w, grad_h), (fused_w, fused_h)):
        assert on_device(got_w, device) and on_device(got_h, device)
        torch.testing.assert_close(got_w.cpu(), ref_w.detach(), **F64)
        torch.testing.assert_close(got_h.cpu(), ref_h.detach(), **F64)
    assert not torch.equal(fused_w.cpu(), w)
    # the differentiable step is the same on a second call on the same device, bit for bit
    again_w, again_h = rule_dev(g_dev, wd, hd, mask=md)
    assert torch.equal(again_w, grad_w) and torch.equal(again_h, grad_h)


def test_float32_steps_with_a_device_generator(device):
    """Fire masks drawn on the device by its own generator (as growing and training do); one
    seed gives one mask, and the float32 fused step matches the float32 differentiable one."""
    arch = Architecture.mlp([12, 10, 4])
    g = WeightGraph.replicate(arch, 5, device=device)
    rule = _twin(_active_rule(8, bound=0.5), device)
    gen = torch.Generator(device=device)
    w, h = torch.randn(g.num_nodes, device=device), torch.randn(g.num_nodes, 8, device=device)
    masks = [rule.fire_mask(g.num_nodes, device, gen.manual_seed(7)) for _ in range(2)]
    assert on_device(masks[0], device) and torch.equal(masks[0], masks[1])
    assert 0.6 < float(masks[0].mean()) < 0.95  # fire_rate 0.8 over 870 weights
    a = rule(g, w, h, generator=gen.manual_seed(3))
    with torch.no_grad():
        b = rule(g, w, h, generator=gen.manual_seed(3))
    torch.testing.assert_close(b[0], a[0].detach(), **F32)
    torch.testing.assert_close(b[1], a[1].detach(), **F32)


def test_rule_gradients_through_an_unroll_match_the_cpu(device):
    """Backprop through three rule steps and a task forward pass, the meta-training graph."""
    arch = Architecture.mlp([4, 6, 3])
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w0, h0 = float64_state(arch.num_weights * 4, 5, seed=6)
    masks = torch.rand(3, arch.num_weights * 4, generator=torch.Generator().manual_seed(2)) < 0.8
    base = _active_rule(5, dtype=torch.float64, widths=(16, 8), bound=0.3)

    def grads(dev: torch.device) -> list[torch.Tensor]:
        rule = _twin(base, dev)
        g = WeightGraph.replicate(arch, 4, device=dev)
        w, h = w0.to(dev), h0.to(dev)
        for m in masks:
            w, h = rule(g, w, h, mask=m.to(dev).double())
        task_forward(g, w, x.to(dev)).square().mean().backward()
        return [p.grad.cpu() for p in rule.parameters()]

    for got, ref in zip(grads(device), grads(CPU), strict=True):
        torch.testing.assert_close(got, ref, **F64)


# ---------------------------------------------------------------------- task forward pass
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", sorted(TASK_ACTIVATIONS))
def test_task_forward_dense_and_general_match_the_cpu(device, bias, activation):
    arch = Architecture.mlp([5, 4, 3, 2], bias=bias)
    g_cpu, g_dev = WeightGraph.replicate(arch, 3), WeightGraph.replicate(arch, 3, device=device)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(g_cpu.num_nodes, generator=gen, dtype=torch.float64)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    for fan_in_ref in (None, 3.0):
        ref = task_forward(g_cpu, w, x, activation, path="general", fan_in_ref=fan_in_ref)
        for path in ("dense", "general", "auto"):
            out = task_forward(
                g_dev, w.to(device), x.to(device), activation, path=path, fan_in_ref=fan_in_ref
            )
            assert on_device(out, device) and out.shape == (3, 7, 2)
            torch.testing.assert_close(out.cpu(), ref, **F64)


def test_task_forward_of_mixed_dags_matches_the_cpu(device):
    archs = [Architecture.skip_mlp([3, 4, 3, 2], skip=2), Architecture.mlp([3, 5, 2])]
    g_cpu = WeightGraph.collate([WeightGraph.from_architecture(a) for a in archs])
    g_dev = WeightGraph.collate([WeightGraph.from_architecture(a, device) for a in archs])
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(g_cpu.num_nodes, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)  # one batch per net
    ref = task_forward(g_cpu, w, x, "relu")
    torch.testing.assert_close(task_forward(g_dev, w.to(device), x.to(device), "relu").cpu(), ref)


# ---------------------------------------------------------------------- meta-training
def _config(device: torch.device, **train):
    return tiny_config(device=str(device), **train)


def test_meta_steps_on_the_device_match_the_cpu(device):
    """With fire rate 1 and a fixed seed net nothing random is drawn on the device (K and the
    data batches come from a CPU generator), so the device's meta-steps follow the CPU's."""
    trainers = []
    for dev in (CPU, device):
        cfg = _config(dev)
        cfg.rule.fire_rate = 1.0
        trainers.append(MetaTrainer.from_config(cfg))
    cpu, dev_tr = trainers
    assert dev_tr.device == device
    assert on_device(next(dev_tr.rule.parameters()), device)
    assert on_device(dev_tr.pools[0].w, device) and on_device(dev_tr.X_train, device)
    for _ in range(4):
        a, b = cpu.meta_step(), dev_tr.meta_step()
        assert (a.k, a.skipped) == (b.k, b.skipped)
        assert b.loss == pytest.approx(a.loss, rel=1e-4)
        assert b.accuracy == pytest.approx(a.accuracy, abs=0.02)
    for p, q in zip(rule_params(cpu), rule_params(dev_tr), strict=True):
        assert on_device(q, device)
        torch.testing.assert_close(q.cpu(), p, rtol=1e-3, atol=1e-3)
    assert on_device(dev_tr.pools[0].w, device) and on_device(dev_tr.pools[0].h, device)
    res = dev_tr.evaluate(num=4)
    ((_, per),) = res.items()
    assert all(0.0 <= s["mean"] <= 1.0 for s in per.values())


def _same_run(a: MetaTrainer, b: MetaTrainer, steps_b: slice = slice(None)) -> bool:
    params = all(torch.equal(p, q) for p, q in zip(rule_params(a), rule_params(b), strict=True))
    pools = all(
        torch.equal(pa.w, pb.w) and torch.equal(pa.h, pb.h)
        for pa, pb in zip(a.pools, b.pools, strict=True)
    )
    losses = [s.loss for s in a.history[steps_b]] == [s.loss for s in b.history]
    return params and pools and losses


def test_resume_on_the_device_is_bitwise(device, tmp_path):
    """Fire masks, damage and seeds drawn by the device's generator, whose state goes through
    the checkpoint; a run resumed on the same device repeats the uninterrupted one exactly."""
    cfg = _config(device, steps=10)
    cfg.pool.damage = 1
    a = MetaTrainer.from_config(cfg)
    a.train(progress=False)
    b = MetaTrainer.from_config(cfg)
    for _ in range(6):
        b.meta_step()
    b.save(tmp_path / "mid.pt")
    del b
    c = MetaTrainer.from_checkpoint(tmp_path / "mid.pt")
    assert c.step == 6 and c.device == device
    assert on_device(c.pools[0].w, device) and on_device(next(c.rule.parameters()), device)
    c.train(progress=False)
    if not _same_run(a, c, slice(6, None)):
        again = MetaTrainer.from_config(cfg)
        again.train(progress=False)
        repeat = "repeats" if _same_run(a, again) else "does NOT repeat"
        raise AssertionError(
            f"the resumed run differs from the uninterrupted one on {device}; an uninterrupted "
            f"run {repeat} itself there"
        )


def test_a_device_checkpoint_grows_on_the_cpu(device, tmp_path):
    """What ``gnca grow --device cpu`` does with a rule meta-trained on the device."""
    tr = MetaTrainer.from_config(_config(device, steps=3))
    tr.train(tmp_path, progress=False)
    trained = load_trained(tmp_path / "last.pt", device="cpu")
    assert trained.device == CPU and trained.meta_steps == 3
    for p, q in zip(rule_params(tr), trained.rule.parameters(), strict=True):
        assert torch.equal(p.cpu(), q.detach())
    arch = tr.archs[0]
    res = grow(trained.rule, arch, 4, 5, trained.init, metric=trained.task.metric(), record_at=[5])
    assert res.w.device == CPU and res.curve.shape == (1, 4)


# ---------------------------------------------------------------------- growing and export
def test_grow_on_the_device_matches_the_cpu(device):
    arch = Architecture.mlp([4, 8, 3])
    rule = _active_rule(8, fire_rate=1.0, bound=0.1)
    init = InitSpec("fixed", init_seed=3)
    X = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(1))

    def metric_for(dev):
        Xd, yd = X.to(dev), y.to(dev)
        return lambda g, w: (task_forward(g, w, Xd).argmax(-1) == yd).float().mean(1)

    ref = grow(rule, arch, 6, 5, init, metric=metric_for(CPU), record_at=[0, 5])
    res = grow(
        _twin(rule, device),
        arch,
        6,
        5,
        init,
        device=device,
        generator=torch.Generator(device=device).manual_seed(0),
        metric=metric_for(device),
        record_at=[0, 5],
    )
    assert on_device(res.w, device) and on_device(res.h, device)
    assert res.curve_steps == [0, 5] and res.curve.shape == (2, 6)
    torch.testing.assert_close(res.w.cpu(), ref.w, **F32)
    torch.testing.assert_close(res.h.cpu(), ref.h, **F32)
    # accuracies of the same nets: equal unless an example sits on a float32 tie
    torch.testing.assert_close(res.curve, ref.curve, rtol=0, atol=1 / 30 + 1e-6)
    # a stochastic rule grows with the device's generator: one seed, one growth (up to the
    # order of the fused step's sums), another seed, another growth
    stochastic = _twin(_active_rule(8, fire_rate=0.5, bound=0.1), device)
    outs = [
        grow(stochastic, arch, 6, 5, init, device=device, generator=gen).w
        for gen in (torch.Generator(device=device).manual_seed(s) for s in (0, 0, 1))
    ]
    assert on_device(outs[0], device)
    torch.testing.assert_close(outs[1], outs[0], **F32)
    assert not torch.allclose(outs[2], outs[0])


def test_export_round_trip_from_the_device(device, tmp_path):
    """Meta-train on the device, load the checkpoint on the CPU, grow on the device, export:
    the saved module gives the grown nets' logits on the CPU and on the device."""
    tr = MetaTrainer.from_config(_config(device, steps=5))
    tr.train(progress=False)
    tr.save(tmp_path / "r.pt")
    rule, cfg = load_rule(tmp_path / "r.pt")
    assert next(rule.parameters()).device == CPU
    gen = torch.Generator(device=device).manual_seed(1)
    res = grow(rule, tr.archs[0], 5, 6, tr.init, device=device, generator=gen)
    nets = tr.task.export(res)
    nets.save(str(tmp_path / "nets.pt"))
    loaded = GrownNets.load(str(tmp_path / "nets.pt"))
    X = tr.data.X_test
    ref = task_forward(res.graph, res.w, X.to(device), cfg.task.activation).cpu()
    torch.testing.assert_close(loaded(X), ref, **F32)
    torch.testing.assert_close(loaded.to_sequential(2)(X), ref[2], **F32)
    on_dev = loaded.to(device)(X.to(device))
    assert on_device(on_dev, device)
    torch.testing.assert_close(on_dev.cpu(), ref, **F32)


def test_the_command_line_on_the_device(device, tmp_path, capsys):
    """gnca train, grow and export with the device in the config and on the command line."""
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("train.device=")]
    argv = ["--config", IRIS, "--out", str(run_dir), "--no-progress"]
    assert main(["train", *argv, "--set", *overrides, f"train.device={device}"]) == 0
    capsys.readouterr()
    ckpt = str(run_dir / "last.pt")
    dev = ["--checkpoint", ckpt, "--device", str(device)]
    assert main(["grow", *dev, "--num", "3", "--steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (entry,) = out["architectures"].values()
    assert 0.0 <= entry["min"] <= entry["mean"] <= entry["max"] <= 1.0
    nets = tmp_path / "nets.pt"
    assert main(["export", *dev, "--num", "2", "--out", str(nets)]) == 0
    assert GrownNets.load(str(nets)).num_nets == 2
