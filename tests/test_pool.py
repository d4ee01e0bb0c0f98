"""The sample pool: sampling worst first, committing states back."""

from __future__ import annotations

import pytest
import torch

from gnca.pool import SamplePool, Shard


def test_pool_sample_and_commit():
    pool = SamplePool.filled(torch.zeros(6, 5), torch.zeros(6, 5, 2))
    pool.loss = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.4])
    gen = torch.Generator().manual_seed(0)
    idx = pool.sample(6, gen)
    assert pool.loss[idx].tolist() == sorted(pool.loss.tolist(), reverse=True)
    pool.commit(idx[:2], torch.ones(2, 5), torch.ones(2, 5, 2), torch.tensor([0.0, 0.0]))
    assert pool.w[idx[:2]].eq(1).all() and pool.w.sum() == 10
    with pytest.raises(ValueError):
        pool.sample(7, gen)


def _pool(n: int = 6, e: int = 4, c: int = 2) -> SamplePool:
    pool = SamplePool.filled(
        torch.arange(n * e, dtype=torch.float32).view(n, e) + 1, torch.ones(n, e, c)
    )
    pool.loss = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.4])[:n]
    return pool


def test_batch_renews_the_worst_and_damages_the_best():
    pool = _pool()
    seeds = (torch.full((4, 4), -1.0), torch.zeros(4, 4, 2))
    seen = {}

    def damage_mask(which: torch.Tensor) -> torch.Tensor:
        seen["which"] = which.clone()
        return torch.where(which.repeat_interleave(4), 0.0, 1.0)

    got = pool.batch(4, torch.Generator().manual_seed(0), seeds, fresh=1, damage=2,
                     damage_mask=damage_mask)  # fmt: skip
    losses = pool.loss[got.idx]
    assert losses.tolist() == sorted(losses.tolist(), reverse=True)  # worst first
    assert got.w[0].eq(-1).all() and got.h[0].eq(0).all()  # the worst is a fresh seed
    assert seen["which"].tolist() == [False, False, True, True]  # the two best, not the fresh
    assert got.w[2:].eq(0).all()
    assert torch.equal(got.w[1], pool.w[got.idx[1]])  # the rest as pooled
    with pytest.raises(ValueError, match="damage_mask"):
        pool.batch(4, torch.Generator(), seeds, damage=1)


def test_sharded_batches_rank_the_global_batch_and_keep_generators_in_step():
    """Two shards of one pool, each drawing as one rank: together they take the same decisions
    as ranking all their samples at once, and their generators end in the same state."""
    full = _pool()
    shards = [SamplePool(full.w[i * 3 : (i + 1) * 3].clone(), full.h[i * 3 : (i + 1) * 3].clone(),
                         full.loss[i * 3 : (i + 1) * 3].clone()) for i in range(2)]  # fmt: skip
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    # what each rank samples, drawn in rank order from one generator
    g = torch.Generator().manual_seed(5)
    idxs = [shards[q].sample(2, g) for q in range(2)]
    all_losses = torch.cat([shards[q].loss[idxs[q]] for q in range(2)])
    worst = int(torch.argmax(all_losses))

    def gather(t: torch.Tensor) -> torch.Tensor:
        return all_losses

    seeds = (torch.full((2, 4), -1.0), torch.zeros(2, 4, 2))
    for q in range(2):
        got = shards[q].batch(2, gens[q], seeds, fresh=1, shard=Shard(q, 2, gather))
        assert torch.equal(got.idx, idxs[q])
        renewed = got.w.eq(-1).all(1)
        assert renewed.tolist() == [2 * q + j == worst for j in range(2)]
    assert torch.equal(gens[0].get_state(), gens[1].get_state())
    assert torch.equal(gens[0].get_state(), g.get_state())
