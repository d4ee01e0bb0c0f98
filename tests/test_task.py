"""The task: data splits and batches, forward conventions, loss, accuracy, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnca.architecture import Architecture
from gnca.data import Dataset
from gnca.forward import TASK_ACTIVATIONS
from gnca.graph import WeightGraph
from gnca.state import initial_state
from gnca.task import Task, logits_accuracy, logits_cross_entropy


def _toy_data(n_in: int = 4, n_out: int = 3, n: int = 30, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, n_out, (n,), generator=g)
    return Dataset("toy", X, y, X[:10].clone(), y[:10].clone(), n_in, n_out, None)


def _nets(arch: Architecture, g: int = 3, seed: int = 0):
    graph = WeightGraph.replicate(arch, g)
    w, _ = initial_state(graph, 2, "random", generator=torch.Generator().manual_seed(seed))
    return graph, w


def test_batched_accuracy_matches_unbatched():
    from gnca.architecture import Architecture
    from gnca.graph import WeightGraph
    from gnca.state import initial_state

    arch = Architecture.mlp([5, 7, 3])
    graph = WeightGraph.replicate(arch, 4)
    w, _ = initial_state(graph, 4, "random", generator=torch.Generator().manual_seed(0))
    X = torch.randn(50, 5)
    y = torch.randint(0, 3, (50,))
    task = Task(_toy_data(5, 3))
    ref = task.accuracy(graph, w, X, y)
    got = task.batched_accuracy(graph, w, X, y, batch=7)
    assert torch.allclose(ref.double(), got)


def test_loss_and_accuracy_against_a_numpy_reference():
    data = _toy_data()
    arch = Architecture.mlp([4, 5, 3])
    graph, w = _nets(arch)
    task = Task(data, "tanh")
    X, y = task.split("train")
    W = w.view(3, -1).double().numpy()
    for i in range(3):
        off = 0
        a = X.double().numpy()
        for k, (n_a, n_b) in enumerate(((4, 5), (5, 3))):
            M = W[i, off : off + n_a * n_b].reshape(n_a, n_b)
            off += n_a * n_b
            a = a @ M + W[i, off : off + n_b]
            off += n_b
            if k == 0:
                a = np.tanh(a)
        logp = (
            a
            - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True))
            - a.max(1, keepdims=True)
        )
        ce = -logp[np.arange(len(y)), y.numpy()].mean()
        acc = (a.argmax(1) == y.numpy()).mean()
        assert float(task.loss(graph, w, X, y)[i]) == pytest.approx(ce, rel=1e-5)
        assert float(task.accuracy(graph, w, X, y)[i]) == pytest.approx(acc)


def test_logit_helpers_shapes():
    logits = torch.randn(2, 6, 3)
    y = torch.randint(0, 3, (6,))
    assert logits_accuracy(logits, y).shape == (2,)
    assert logits_cross_entropy(logits, y).shape == (2,)


def test_fan_in_ref_changes_the_forward_and_is_checked():
    data = _toy_data()
    graph, w = _nets(Architecture.mlp([4, 8, 3]))
    X = data.X_train
    plain, scaled = Task(data), Task(data, fan_in_ref=2.0)
    assert not torch.allclose(plain.logits(graph, w, X), scaled.logits(graph, w, X))
    with pytest.raises(ValueError, match="fan_in_ref must be > 0"):
        Task(data, fan_in_ref=0.0)
    with pytest.raises(ValueError, match="unknown task activation 'swish'"):
        Task(data, "swish")


def test_train_batch_draws_without_replacement_or_takes_all():
    data = _toy_data(n=30)
    X, _ = Task(data).train_batch(torch.Generator().manual_seed(0))
    assert X.shape[0] == 30
    Xb, yb = Task(data, batch_size=8).train_batch(torch.Generator().manual_seed(0))
    assert Xb.shape == (8, 4) and yb.shape == (8,)
    rows = {tuple(r.tolist()) for r in Xb}
    assert len(rows) == 8 and rows <= {tuple(r.tolist()) for r in data.X_train}
    with pytest.raises(ValueError, match="batch_size"):
        Task(data, batch_size=0)


def test_split_names_and_architecture_checks():
    task = Task(_toy_data())
    with pytest.raises(ValueError, match="unknown split 'val'"):
        task.split("val")
    assert task.mlp([4, 7, 3]).num_inputs == 4
    with pytest.raises(ValueError, match="needs 4 inputs and 3 outputs"):
        task.mlp([5, 7, 3])
    with pytest.raises(ValueError, match="toy needs 4 and 3"):
        task.check(Architecture.mlp([4, 7, 2]))
    assert not Task(_toy_data(), bias=False).mlp([4, 7, 3]).is_bias_weight.any()


def test_metric_is_accuracy_on_the_split():
    data = _toy_data()
    task = Task(data)
    graph, w = _nets(Architecture.mlp([4, 6, 3]))
    m = task.metric("test")
    assert torch.equal(m(graph, w), task.accuracy(graph, w, data.X_test, data.y_test))


def test_export_knows_every_task_activation():
    from gnca import export

    assert set(export._ACTS) == set(TASK_ACTIVATIONS)
