"""Meta-training: loss goes down, resume is exact, checkpoints survive interruption."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import rule_params, tiny_config

from gnca.build import make_init
from gnca.checkpoint import load_checkpoint, save_checkpoint
from gnca.config import config_to_dict
from gnca.grow import grow
from gnca.task import Task
from gnca.trainer import MetaTrainer


def grown_loss(trainer: MetaTrainer, steps: int = 5, num: int = 16) -> float:
    """Mean training cross-entropy of nets grown with fixed randomness."""
    gen = torch.Generator().manual_seed(123)
    res = grow(trainer.rule, trainer.archs[0], num, steps, trainer.init, generator=gen)
    with torch.no_grad():
        return float(trainer.task.loss(res.graph, res.w, trainer.X_train, trainer.y_train).mean())


def test_tiny_training_lowers_the_loss():
    tr = MetaTrainer.from_config(tiny_config(steps=40))
    before = grown_loss(tr)
    tr.train(progress=False)
    after = grown_loss(tr)
    assert after < 0.8 * before, (before, after)
    assert not all(s.skipped for s in tr.history)


def test_fresh_rule_grows_nothing():
    """The zero-initialised output layer makes a fresh rule the identity on every net."""
    from gnca.graph import WeightGraph
    from gnca.state import initial_state

    tr = MetaTrainer.from_config(tiny_config())
    res = grow(tr.rule, tr.archs[0], 3, 4, tr.init, generator=torch.Generator().manual_seed(0))
    one = WeightGraph.from_architecture(tr.archs[0])
    w0, _ = initial_state(one, tr.cfg.rule.hidden_channels, "fixed", init_seed=tr.init.init_seed)
    assert torch.equal(res.w, torch.cat([w0] * 3))
    assert torch.count_nonzero(res.h) == 0


def test_resume_is_bitwise_identical(tmp_path):
    cfg = tiny_config(steps=10)
    a = MetaTrainer.from_config(cfg)
    a.train(progress=False)

    b = MetaTrainer.from_config(cfg)
    for _ in range(6):
        b.meta_step()
    b.save(tmp_path / "mid.pt")
    del b
    c = MetaTrainer.from_checkpoint(tmp_path / "mid.pt")
    assert c.step == 6
    c.train(progress=False)
    for p, q in zip(rule_params(a), rule_params(c), strict=True):
        assert torch.equal(p, q)
    for pa, pc in zip(a.pools, c.pools, strict=True):
        assert torch.equal(pa.w, pc.w) and torch.equal(pa.h, pc.h)
    assert [s.loss for s in a.history[6:]] == [s.loss for s in c.history]


def test_train_writes_run_files(tmp_path):
    tr = MetaTrainer.from_config(tiny_config(steps=8))
    tr.train(tmp_path, progress=False)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["step", "loss", "accuracy"]
    assert [int(r.split(",")[0]) for r in lines[1:]] == [4, 8]
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 8
    assert ck["config"] == config_to_dict(tr.cfg)


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    tr = MetaTrainer.from_config(tiny_config())
    tr.meta_step()
    path = tmp_path / "last.pt"
    tr.save(path)
    before = path.read_bytes()
    tr.meta_step()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        tr.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_resume_with_mismatched_config_is_refused(tmp_path):
    tr = MetaTrainer.from_config(tiny_config())
    tr.save(tmp_path / "last.pt")
    other = tiny_config()
    other.rule.widths = [32]
    with pytest.raises(ValueError, match="rule.widths"):
        MetaTrainer.from_checkpoint(tmp_path / "last.pt", cfg=other)
    longer = tiny_config(steps=50)
    assert MetaTrainer.from_checkpoint(tmp_path / "last.pt", cfg=longer).cfg.train.steps == 50


def test_rollback_skips_a_spiking_step():
    tr = MetaTrainer.from_config(tiny_config())
    tr.meta_step()
    tr.loss_ema = 1e-6  # any real loss is now a spike
    params = rule_params(tr)
    pool_w = tr.pools[0].w.clone()
    s = tr.meta_step()
    assert s.skipped
    assert all(torch.equal(p, q) for p, q in zip(params, rule_params(tr), strict=True))
    assert torch.equal(pool_w, tr.pools[0].w)


@pytest.mark.parametrize("grad", ["normalize", "clip", "none"])
def test_gradient_modes_and_checkpointing_agree_on_the_loss(grad):
    plain = MetaTrainer.from_config(tiny_config(grad=grad))
    ckpt = MetaTrainer.from_config(tiny_config(grad=grad, checkpointing=True))
    for _ in range(3):
        a, b = plain.meta_step(), ckpt.meta_step()
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
    for p, q in zip(rule_params(plain), rule_params(ckpt), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_no_pool_and_damage_options_run():
    cfg = tiny_config(steps=3)
    cfg.pool.size = 0
    tr = MetaTrainer.from_config(cfg)
    assert tr.pools == []
    tr.train(progress=False)
    cfg = tiny_config(steps=3)
    cfg.pool.damage = 2
    tr = MetaTrainer.from_config(cfg)
    tr.train(progress=False)
    assert len(tr.history) == 3


def test_evaluate_reports_both_horizons():
    tr = MetaTrainer.from_config(tiny_config(steps=2))
    out = tr.evaluate(num=4)
    ((arch, per),) = out.items()
    assert arch == "mlp 4-8-3 (+bias)"
    assert set(per) == {"5", "50"}
    for s in per.values():
        assert 0.0 <= s["min"] <= s["mean"] <= s["max"] <= 1.0


@pytest.mark.parametrize("depth_code", [True, False])
def test_depth_code_option_reaches_the_seeds_and_grow(depth_code):
    cfg = tiny_config()
    cfg.task.init = "codes"
    cfg.task.depth_code = depth_code
    cfg.rule.hidden_channels = 16
    trainer = MetaTrainer.from_config(cfg)
    from gnca import Architecture, WeightGraph

    graph = WeightGraph.from_architecture(Architecture.mlp([4, 8, 3]))
    _, h = trainer.objective.seeds(graph)
    assert bool((h[:, 12] != 0).any()) is depth_code  # channel 6f with code_freqs = 2
    res = grow(trainer.rule, Architecture.mlp([4, 8, 3]), 2, 0, make_init(cfg.task))
    assert bool((res.h[:, 12] != 0).any()) is depth_code


def test_bf16_precision_trains_and_keeps_fp32_state():
    cfg = tiny_config(precision="bf16", steps=8)
    trainer = MetaTrainer.from_config(cfg)
    before = grown_loss(trainer)
    for _ in range(cfg.train.steps):
        stats = trainer.meta_step()
        assert not stats.skipped
    assert grown_loss(trainer) < before
    assert trainer.pools[0].w.dtype == torch.float32 and trainer.pools[0].h.dtype == torch.float32
    # the rule's MLP did run in bf16: the same second meta-step (the first one starts from the
    # zero-initialised no-op rule) gives a different loss in fp32
    losses = []
    for precision in ("fp32", "bf16"):
        t = MetaTrainer.from_config(tiny_config(precision=precision))
        t.meta_step()
        losses.append(t.meta_step().loss)
    assert losses[0] != losses[1]
    with pytest.raises(ValueError, match="precision"):
        tiny_config(precision="fp16")


def test_factored_perception_meta_trains_the_same_rule_up_to_rounding():
    """``train.perception: factored`` changes how the first layer is computed, not the rule: six
    meta-steps in float64 give the dense run's losses and parameters to 1e-9."""
    runs = []
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for perception in ("dense", "factored"):
            t = MetaTrainer.from_config(tiny_config(perception=perception, steps=6))
            assert t.rule.factored is (perception == "factored")
            losses = [t.meta_step().loss for _ in range(6)]
            assert t.pools[0].w.dtype == torch.float64
            runs.append((losses, [p.detach().clone() for p in t.rule.parameters()]))
    finally:
        torch.set_default_dtype(old)
    (la, pa), (lb, pb) = runs
    assert la[-1] != la[0]  # it trained
    assert lb == pytest.approx(la, rel=1e-9, abs=1e-12)
    for x, y in zip(pa, pb, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="perception"):
        tiny_config(perception="sparse")


def test_code_jitter_reaches_training_seeds_but_not_growth():
    cfg = tiny_config()
    cfg.task.init = "codes"
    cfg.task.code_jitter = 0.5
    cfg.rule.hidden_channels = 16
    trainer = MetaTrainer.from_config(cfg)
    from gnca import Architecture, WeightGraph, identity_codes

    arch = Architecture.mlp([4, 8, 3])
    graph = WeightGraph.from_architecture(arch)
    exact = identity_codes(graph, 16, cfg.task.code_freqs, cfg.task.depth_code)
    _, h = trainer.objective.seeds(graph)
    assert not torch.equal(h, exact)
    assert trainer.init.code_jitter == 0.0 and make_init(cfg.task).code_jitter == 0.0
    res = grow(trainer.rule, arch, 1, 0, make_init(cfg.task))
    assert torch.equal(res.h, exact)


def test_code_jitter_fraction_reaches_training_seeds_and_checkpoints(tmp_path):
    cfg = tiny_config(steps=2)
    cfg.task.init = "codes"
    cfg.task.code_jitter = 0.5
    cfg.task.code_jitter_fraction = 0.0  # jitter on no net: every seed exact
    cfg.rule.hidden_channels = 16
    trainer = MetaTrainer.from_config(cfg)
    assert trainer.seed_init.code_jitter_fraction == 0.0
    assert trainer.init.code_jitter_fraction == 1.0
    from gnca import Architecture, WeightGraph, identity_codes

    graph = WeightGraph.from_architecture(Architecture.mlp([4, 8, 3]))
    exact = identity_codes(graph, 16, cfg.task.code_freqs, cfg.task.depth_code)
    _, h = trainer.objective.seeds(graph)
    assert torch.equal(h, exact)
    trainer.train(str(tmp_path), progress=False)
    from gnca.build import load_trained

    trained = load_trained(tmp_path / "last.pt", device="cpu")
    assert trained.cfg.task.code_jitter_fraction == 0.0
    assert trained.init.code_jitter_fraction == 1.0  # growing: exact codes


def test_random_neuron_codes_reach_training_growth_and_checkpoints(tmp_path):
    cfg = tiny_config(steps=2)
    cfg.task.init = "codes"
    cfg.task.neuron_codes = "random"
    cfg.rule.hidden_channels = 16
    trainer = MetaTrainer.from_config(cfg)
    assert trainer.init.neuron_codes == trainer.seed_init.neuron_codes == "random"
    trainer.train(str(tmp_path), progress=False)
    from gnca import Architecture, WeightGraph, identity_codes
    from gnca.build import load_trained

    arch = Architecture.mlp([4, 8, 3])
    exact = identity_codes(WeightGraph.from_architecture(arch), 16, cfg.task.code_freqs,
                           cfg.task.depth_code)  # fmt: skip
    trained = load_trained(tmp_path / "last.pt", device="cpu")
    assert trained.cfg.task.neuron_codes == "random"
    res = grow(trained.rule, arch, 2, 0, trained.init, generator=torch.Generator().manual_seed(0))
    per = arch.num_weights
    assert not torch.equal(res.h[:per], exact) and not torch.equal(res.h[:per], res.h[per:])


def test_fan_in_ref_reaches_training_evaluation_and_export(tmp_path):
    cfg = tiny_config(steps=3)
    cfg.task.fan_in_ref = 8.0
    tr = MetaTrainer.from_config(cfg)
    tr.train(progress=False)
    from gnca.forward import task_forward

    res = grow(tr.rule, tr.archs[0], 4, 5, tr.init, generator=torch.Generator().manual_seed(1))
    X, y = tr.data.X_test, tr.data.y_test
    # the trainer's loss uses the option: its cross-entropy differs from plain sums
    assert tr.task.fan_in_ref == 8.0
    scaled = tr.task.loss(res.graph, res.w, X, y)
    assert torch.equal(scaled, Task(tr.data, "tanh", 8.0).loss(res.graph, res.w, X, y))
    assert not torch.allclose(scaled, Task(tr.data, "tanh").loss(res.graph, res.w, X, y))
    # export bakes the scaling into the weights
    nets = tr.task.export(res)
    ref = task_forward(res.graph, res.w, X, "tanh", fan_in_ref=8.0)
    assert torch.allclose(nets(X), ref, atol=1e-6)
    acc = tr.task.accuracy(res.graph, res.w, X, y)
    assert torch.equal(acc, (ref.argmax(-1) == y).float().mean(1))


def test_training_time_is_kept_across_resumes(tmp_path):
    """An interrupted run's seconds are not lost: the checkpoint carries the count on."""
    tr = MetaTrainer.from_config(tiny_config(steps=4))
    tr.train(tmp_path, progress=False)
    assert tr.train_seconds > 0 and tr.train_cpu_seconds > 0
    ck = load_checkpoint(tmp_path / "last.pt")
    # written at the last checkpoint, a moment before train() returned
    assert 0 < ck["train_time"]["seconds"] <= tr.train_seconds
    assert 0 < ck["train_time"]["cpu_seconds"] <= tr.train_cpu_seconds
    # pretend the first part took long, then resume it for 4 more meta-steps
    ck["train_time"] = {"seconds": 1000.0, "cpu_seconds": 2000.0}
    torch.save(ck, tmp_path / "last.pt")
    more = MetaTrainer.from_checkpoint(tmp_path / "last.pt", cfg=tiny_config(steps=8))
    assert (more.train_seconds, more.train_cpu_seconds) == (1000.0, 2000.0)
    more.train(tmp_path, progress=False)
    assert 1000.0 < more.train_seconds < 1000.0 + 600 and more.train_cpu_seconds > 2000.0
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    seconds = [float(r.split(",")[-1]) for r in rows[1:]]
    assert len(seconds) == 2 and seconds[0] < 1000.0 < seconds[1], seconds
    saved = load_checkpoint(tmp_path / "last.pt")["train_time"]["seconds"]
    assert seconds[1] == pytest.approx(saved, abs=0.01)  # metrics.csv rounds its seconds
    assert saved <= more.train_seconds


def test_checkpoint_without_training_time_resumes_from_zero(tmp_path):
    tr = MetaTrainer.from_config(tiny_config(steps=4))
    tr.meta_step()
    ck = tr.state_dict()
    del ck["train_time"]  # as written before the time was kept
    save_checkpoint(tmp_path / "old.pt", ck)
    back = MetaTrainer.from_checkpoint(tmp_path / "old.pt")
    assert back.step == 1 and back.train_seconds == 0.0 and back.train_cpu_seconds == 0.0
