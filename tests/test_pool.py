"""The sample pool: sampling worst first, committing states back."""

from __future__ import annotations

import pytest
import torch

from gnca.pool import SamplePool


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
