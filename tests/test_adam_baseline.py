"""The Adam baseline: budgets, the trainable mask, learning-rate tuning, cached grid cells."""

from __future__ import annotations

import json

import pytest
import torch

from gnca.data import Dataset
from gnca.experiments.adam_baseline import (
    AdamSettings,
    adam,
    adam_batches,
    adam_cell,
    cached_adam_cell,
    parse_lrs,
    train_adam,
    tune_adam,
)
from gnca.experiments.common import ExperimentError
from gnca.graph import WeightGraph
from gnca.state import InitSpec
from gnca.task import Task


def blobs(n: int = 200, seed: int = 0) -> Task:
    """Two well separated Gaussian blobs in 2-D (linearly separable), shuffled, 50/50 split."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    X = torch.randn(n, 2, generator=g) * 0.5 + (2.0 * y - 1.0).unsqueeze(1) * 2.0
    h = n // 2
    data = Dataset("blobs", X[:h], y[:h], X[h:], y[h:], 2, 2, None)
    return Task(data, activation="tanh", fan_in_ref=4.0)


def start(task: Task, nets: int = 3):
    graph = WeightGraph.replicate(task.mlp([2, 4, 2]), nets)
    w0, _ = InitSpec(init="random").state(graph, 4, torch.Generator().manual_seed(1))
    return graph, w0


def test_adam_batches_state_the_budget():
    assert adam_batches(512, 256) == [256, 256]
    assert adam_batches(600, 256) == [256, 256, 88]
    assert adam_batches(64, 256) == [64]
    with pytest.raises(ValueError):
        adam_batches(0, 256)


def test_adam_learns_a_separable_problem():
    task = blobs()
    graph, w0 = start(task)
    X, y = task.split("train")
    X_te, y_te = task.split("test")
    before = task.batched_accuracy(graph, w0, X_te, y_te)
    w = adam(task, graph, w0, torch.ones_like(w0, dtype=torch.bool), 60, 32, 0.05, 0, X, y)
    after = task.batched_accuracy(graph, w, X_te, y_te)
    assert after.shape == (3,) and (after > 0.9).all(), (before, after)
    # the same batches and the same steps: deterministic, and equal to train_adam
    w2 = train_adam(task, graph, w0, torch.ones_like(w0, dtype=torch.bool), [32] * 60, 0.05, 0,
                    X, y)  # fmt: skip
    assert torch.equal(w, w2)


def test_trainable_mask_freezes_the_other_weights():
    task = blobs()
    graph, w0 = start(task, nets=2)
    X, y = task.split("train")
    frozen = torch.zeros(w0.shape[0], dtype=torch.bool)
    frozen[::2] = True  # every other weight trainable
    w = adam(task, graph, w0, frozen, 5, 16, 0.1, 0, X, y)
    assert torch.equal(w[~frozen], w0[~frozen])
    assert not torch.equal(w[frozen], w0[frozen])
    none = adam(task, graph, w0, torch.zeros_like(frozen), 5, 16, 0.1, 0, X, y)
    assert torch.equal(none, w0)


def test_tune_adam_picks_the_best_validation_rate():
    task = blobs()
    graph, w0 = start(task)
    X, y = task.split("train")
    ones = torch.ones_like(w0, dtype=torch.bool)
    # a vanishing rate leaves the nets where they started; a working one separates the blobs
    t = tune_adam(task, graph, w0, ones, [32] * 40, 0, (1e-9, 0.05), X, y, 0.2)
    assert t.lr == 0.05 and set(t.validation) == {1e-9, 0.05}
    assert t.validation[0.05] > 0.9 and t.validation[0.05] >= t.validation[1e-9]
    # the weights returned are those of the picked rate, trained on the first 4/5 only
    cut = int(0.8 * X.shape[0])
    assert torch.equal(t.w, train_adam(task, graph, w0, ones, [32] * 40, 0.05, 0, X[:cut],
                                       y[:cut]))  # fmt: skip
    # equal validation accuracy: the first rate wins
    t0 = tune_adam(task, graph, w0, ones, [32] * 2, 0, (1e-12, 1e-11), X, y, 0.2)
    assert t0.lr == 1e-12
    with pytest.raises(ValueError, match="validation"):
        tune_adam(task, graph, w0, ones, [4], 0, (0.1,), X[:1], y[:1], 0.2)


def test_adam_cell_and_its_cache(tmp_path):
    task = blobs()
    settings = AdamSettings(examples=300, batch=32, lrs=(0.01, 0.1), nets=2)
    res = adam_cell(task, InitSpec(init="random"), 4, [2, 8, 2], settings, seed=0)
    assert res["examples"] == 300 and res["steps"] == 10 and res["nets"] == 2
    assert res["lr"] in (0.01, 0.1) and 0.5 < res["mean"] <= 1.0
    calls = []

    def compute():
        calls.append(1)
        return {"mean": 0.5}

    path = tmp_path / "adam" / "2-8-2.json"
    key = {"arch": "2-8-2", "lrs": [0.01, 0.1]}
    assert cached_adam_cell(path, key, compute) == ({"mean": 0.5}, False)
    assert cached_adam_cell(path, key, compute) == ({"mean": 0.5}, True)
    assert len(calls) == 1
    assert json.loads(path.read_text())["key"]["arch"] == "2-8-2"
    assert cached_adam_cell(path, {**key, "lrs": [0.1]}, compute)[1] is False
    assert len(calls) == 2
    path.write_text("not json")
    assert cached_adam_cell(path, key, compute)[1] is False


def test_settings_checks_and_lr_parsing():
    assert parse_lrs("1e-3, 0.01,") == (1e-3, 0.01)
    for bad in ("a,b", "", "0.1,-1"):
        with pytest.raises(ExperimentError, match="--adam-lrs"):
            parse_lrs(bad)
    assert not any(bad for bad, _ in AdamSettings().problems())
    assert any(bad for bad, _ in AdamSettings(nets=0).problems())
    assert any(bad for bad, _ in AdamSettings(lrs=()).problems())
    d = AdamSettings(examples=600, batch=256).describe()
    assert d["steps"] == 3 and d["lrs"] == [1e-3, 3e-3, 1e-2, 3e-2]
