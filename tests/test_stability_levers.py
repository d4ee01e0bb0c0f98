"""The stability levers: bounded hidden states, several loss horizons, weight-scale
damping. Each is off by default; on, each does what it says against a slow reference."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import rule_params, tiny_config

from gnca import Architecture, LocalRule, WeightGraph
from gnca.config import ConfigError, config_from_dict, config_to_dict
from gnca.objective import k_range
from gnca.pool import SamplePool
from gnca.task import logits_cross_entropy
from gnca.trainer import MetaTrainer, loss_horizons


def _loud_rule(c: int, bound_state: float | None, seed: int = 0) -> LocalRule:
    torch.manual_seed(seed)
    rule = LocalRule(c, fire_rate=0.7, state_bound=bound_state).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fresh rule is a no-op: give it large outputs
        rule.out.weight.copy_(
            torch.randn(rule.out.weight.shape, generator=gen, dtype=torch.float64) * 5
        )
        rule.out.bias.copy_(
            torch.randn(rule.out.bias.shape, generator=gen, dtype=torch.float64) * 5
        )
    return rule


def _state(arch: Architecture, c: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    e = arch.num_weights
    return (torch.randn(e, generator=gen, dtype=torch.float64),
            0.5 * torch.randn(e, c, generator=gen, dtype=torch.float64))  # fmt: skip


def test_state_bound_matches_a_per_weight_reference_on_both_paths() -> None:
    """h' = h + m (sb tanh((h + dh) / sb) - h), weight by weight, in grad and no-grad mode."""
    arch = Architecture.mlp([4, 5, 3])
    g = WeightGraph.from_architecture(arch)
    sb = 0.8
    bounded = _loud_rule(3, sb)
    free = _loud_rule(3, None)
    w, h = _state(arch, 3)
    mask = (torch.rand(arch.num_weights, generator=torch.Generator().manual_seed(2)) < 0.7).double()
    w_free, h_free = free(g, w, h, mask=mask)  # the unbounded step gives h + m dh
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            w_b, h_b = bounded(g, w, h, mask=mask)
        assert torch.allclose(w_b, w_free, atol=1e-12)  # the weights are not touched
        for i in range(arch.num_weights):
            for ch in range(3):
                if mask[i] == 0:
                    want = h[i, ch]
                else:
                    want = sb * torch.tanh(h_free[i, ch] / sb)  # h + dh, bounded
                assert abs(float((h_b[i, ch] - want).detach())) < 1e-10, (grad, i, ch)


def test_state_bound_holds_over_a_long_growth_and_survives_the_config() -> None:
    arch = Architecture.mlp([4, 6, 3])
    g = WeightGraph.from_architecture(arch)
    rule = _loud_rule(4, 0.5)
    free = _loud_rule(4, None)
    w, h = _state(arch, 4)
    wf, hf = w, h
    with torch.no_grad():
        for _ in range(30):
            w, h = rule(g, w, h)
            wf, hf = free(g, wf, hf)
    assert h.abs().max() <= 0.5 and hf.abs().max() > 5  # bounded vs unbounded states
    again = LocalRule(**rule.config())
    assert again.state_bound == 0.5 and "state_bound=0.5" in repr(again)
    with pytest.raises(ValueError, match="state_bound must be positive"):
        LocalRule(4, state_bound=0.0)


@pytest.mark.parametrize("k,n,want", [(20, 1, [20]), (20, 4, [5, 10, 15, 20]), (3, 5, [1, 2, 3]),
                                      (7, 2, [4, 7])])  # fmt: skip
def test_loss_horizons(k: int, n: int, want: list[int]) -> None:
    assert loss_horizons(k, n) == want


def test_several_horizons_average_the_loss_along_one_rollout() -> None:
    """With k fixed, loss_horizons=3 gives the mean of the losses after steps k/3, 2k/3, k of
    one rollout: the trainer's meta-loss equals a hand-written loop over rule steps."""
    cfg = tiny_config(k_min=6, k_max=6, loss_horizons=3)
    cfg.pool.size = 0
    tr = MetaTrainer.from_config(cfg)
    ref = MetaTrainer.from_config(cfg)  # same seeds: the same draws step for step
    _ = int(torch.randint(6, 7, (1,), generator=ref.gen))  # the K draw
    X, y = ref.task.train_batch(ref.gen, ref.device)
    _, w, h = ref.objective.batch(0)
    graph = ref.graphs[0]
    terms = []
    for step in range(1, 7):
        w, h = ref.rule(graph, w, h, mask=ref.objective.fire_mask(w))
        if step in (2, 4, 6):
            terms.append(logits_cross_entropy(ref.task.logits(graph, w, X), y).mean())
    want = float(torch.stack(terms).mean())
    got = tr.meta_step().loss
    assert got == pytest.approx(want, rel=1e-6)
    one = MetaTrainer.from_config(tiny_config(k_min=6, k_max=6))
    assert one.cfg.train.loss_horizons == 1


def test_weight_penalty_adds_the_mean_squared_weight() -> None:
    cfg = tiny_config(k_min=4, k_max=4, weight_penalty=0.5)
    cfg.pool.size = 0
    tr = MetaTrainer.from_config(cfg)
    ref = MetaTrainer.from_config(cfg)
    _ = int(torch.randint(4, 5, (1,), generator=ref.gen))
    X, y = ref.task.train_batch(ref.gen, ref.device)
    _, w, h = ref.objective.batch(0)
    graph = ref.graphs[0]
    for _ in range(4):
        w, h = ref.rule(graph, w, h, mask=ref.objective.fire_mask(w))
    b = cfg.train.batch_size
    ce = logits_cross_entropy(ref.task.logits(graph, w, X), y)  # (b,)
    sq = torch.stack([(w.view(b, -1)[i] ** 2).sum() / w.view(b, -1).shape[1] for i in range(b)])
    want = float((ce + 0.5 * sq).mean())
    assert tr.meta_step().loss == pytest.approx(want, rel=1e-6)


def test_levers_train_and_resume(tmp_path) -> None:
    cfg = tiny_config(steps=6, loss_horizons=2, weight_penalty=1e-3)
    cfg.rule.state_bound = 2.0
    cfg.rule.bound = 0.5
    tr = MetaTrainer.from_config(cfg)
    before = rule_params(tr)
    tr.train(tmp_path / "run", progress=False)
    assert any(not torch.equal(p, q) for p, q in zip(before, rule_params(tr), strict=True))
    back = MetaTrainer.from_checkpoint(tmp_path / "run" / "last.pt")
    assert back.rule.state_bound == 2.0 and back.cfg.train.loss_horizons == 2


@pytest.mark.parametrize("key,value,part", [
    ("train.loss_horizons", 0, "train.loss_horizons' must be >= 1"),
    ("train.weight_penalty", -1.0, "train.weight_penalty' must be >= 0"),
    ("train.k_ramp", -1, "train.k_ramp' must be >= 0"),
    ("rule.state_bound", 0.0, "rule.state_bound' must be > 0"),
    ("pool.renew", "newest", "pool.renew' must be one of 'worst', 'oldest', got 'newest'"),
    ("pool.fresh_rate", 0.0, "pool.fresh_rate' must be in (0, 1], got 0.0"),
    ("pool.fresh_rate", 1.5, "pool.fresh_rate' must be in (0, 1], got 1.5"),
])  # fmt: skip
def test_lever_keys_are_validated(key: str, value: float, part: str) -> None:
    d = config_to_dict(tiny_config())
    sec, name = key.split(".")
    d[sec][name] = value
    with pytest.raises(ConfigError, match=re.escape(part)):
        config_from_dict(d)


def _pool(p: int = 8, e: int = 3) -> SamplePool:
    gen = torch.Generator().manual_seed(0)
    return SamplePool(
        torch.randn(p, e, generator=gen),
        torch.randn(p, e, 2, generator=gen),
        torch.arange(p, dtype=torch.float32),  # sample i has loss i: the worst is p - 1
        age=torch.tensor([50, 0, 7, 300, 2, 2, 9, 1]),
    )


@pytest.mark.parametrize("renew", ["worst", "oldest"])
def test_renew_picks_the_worst_or_the_oldest_of_the_batch(renew: str) -> None:
    pool = _pool()
    seeds = (torch.zeros(8, 3), torch.zeros(8, 3, 2))
    got = pool.batch(8, torch.Generator().manual_seed(1), seeds, fresh=2, renew=renew)
    renewed = set(got.idx[got.renewed].tolist())
    assert renewed == ({7, 6} if renew == "worst" else {3, 0})  # highest loss / most steps
    assert torch.equal(got.age[got.renewed], torch.zeros(2, dtype=torch.int64))
    kept = ~got.renewed
    assert torch.equal(got.age[kept], pool.age[got.idx[kept]])
    with pytest.raises(ValueError, match="unknown renew 'newest'"):
        pool.batch(8, torch.Generator(), seeds, renew="newest")


def test_ages_count_rule_steps_and_survive_the_checkpoint() -> None:
    tr = MetaTrainer.from_config(tiny_config(k_min=3, k_max=5))
    pool = tr.pools[0]
    assert int(pool.age.sum()) == 0
    total = 0
    for _ in range(6):
        before = pool.age.clone()
        s = tr.meta_step()
        assert s.age == 0 or s.age <= int(before.max())
        total += s.k
        assert int(pool.age.max()) <= total  # no sample is older than the whole run
    changed = pool.age != 0
    assert changed.any()
    again = SamplePool.from_state_dict(pool.state_dict(), torch.device("cpu"))
    assert torch.equal(again.age, pool.age)
    old = {k: v for k, v in pool.state_dict().items() if k != "age"}  # before ages existed
    assert int(SamplePool.from_state_dict(old, torch.device("cpu")).age.sum()) == 0


@pytest.mark.parametrize("rate", [1.0, 0.5, 1e-9])
def test_fresh_rate_is_the_chance_that_a_meta_step_renews(rate: float, monkeypatch) -> None:
    """pool.fresh_rate < 1: a meta-step brings in its pool.fresh seeds with that chance, else
    none, so that samples grow older; at 1 every meta-step renews."""
    d = config_to_dict(tiny_config(k_min=3, k_max=3))
    d["pool"]["fresh_rate"] = rate
    tr = MetaTrainer.from_config(config_from_dict(d))
    asked: list[int] = []
    batch = SamplePool.batch

    def spy(self, *args, **kw):
        asked.append(kw["fresh"])
        return batch(self, *args, **kw)

    monkeypatch.setattr(SamplePool, "batch", spy)
    for _ in range(12):
        tr.meta_step()
    assert len(asked) == 12 and set(asked) <= {0, 1}
    if rate == 1.0:
        assert asked == [1] * 12
    if rate == 0.5:
        assert 0 < sum(asked) < 12
    if rate == 1e-9:  # nothing renewed: every batch sample grew 3 steps at every meta-step
        assert asked == [0] * 12 and int(tr.pools[0].age.sum()) == 12 * 4 * 3


def test_committed_age_is_the_start_age_plus_k() -> None:
    tr = MetaTrainer.from_config(tiny_config(k_min=4, k_max=4))
    tr.meta_step()
    pool = tr.pools[0]
    pool.age = torch.arange(pool.size, dtype=torch.int64) * 10
    start = pool.age.clone()
    tr.meta_step()
    moved = pool.age != start
    # every sample the step touched is 4 steps older than it was, or 4 if it was renewed
    assert moved.sum() == tr.cfg.train.batch_size
    assert bool(((pool.age[moved] == start[moved] + 4) | (pool.age[moved] == 4)).all())
    assert int((pool.age[moved] == 4).sum()) >= tr.cfg.pool.fresh


@pytest.mark.parametrize("k_min,k_max,ramp", [(10, 20, 7), (1, 10, 100), (3, 3, 5), (2, 9, 1)])
def test_k_range_rises_linearly_to_k_max(k_min: int, k_max: int, ramp: int) -> None:
    """The upper end of K's range, step by step, against exact fractions: k_min at step 0,
    k_min + floor((k_max - k_min) * step / ramp) on the way, k_max from step ``ramp`` on."""
    from fractions import Fraction
    from math import floor

    for step in range(ramp + 5):
        want = k_min + floor(Fraction(k_max - k_min) * min(Fraction(step, ramp), 1))
        assert k_range(k_min, k_max, ramp, step) == (k_min, want)
    for step in (0, 1, ramp, 10**6):  # no curriculum: the whole range from the first step
        assert k_range(k_min, k_max, 0, step) == (k_min, k_max)


def test_k_ramp_draws_short_rollouts_first_and_resumes_exactly(tmp_path) -> None:
    """Under a curriculum every meta-step's K lies in its step's range (K = k_min at step 0),
    the draws reach past the ramp's early ends later, and a run resumed mid-ramp draws the same
    K and ends with the same rule as an uninterrupted one."""
    cfg = tiny_config(steps=16, k_min=1, k_max=12, k_ramp=8)
    a = MetaTrainer.from_config(cfg)
    a.train(progress=False)
    ks = [s.k for s in a.history]
    for step, k in enumerate(ks):
        assert 1 <= k <= k_range(1, 12, 8, step)[1]
    assert ks[0] == 1 and max(ks[8:]) > 4
    b = MetaTrainer.from_config(cfg)
    for _ in range(5):
        b.meta_step()
    b.save(tmp_path / "mid.pt")
    c = MetaTrainer.from_checkpoint(tmp_path / "mid.pt")
    c.train(progress=False)
    assert [s.k for s in c.history] == ks[5:]
    for p, q in zip(rule_params(a), rule_params(c), strict=True):
        assert torch.equal(p, q)
