"""Tests of gnca.forward: task_forward against a dense numpy reference, dense vs general paths."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import DagSpec, dag_specs, edge_list, topological_order
from hypothesis import given, settings
from hypothesis import strategies as st

from gnca import Architecture, WeightGraph, task_forward
from gnca.architecture import BIAS, INPUT, OUTPUT

_erf = np.vectorize(math.erf)

NP_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "gelu": lambda z: 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0))),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "identity": lambda z: z,
}


def numpy_forward(arch: Architecture, w: np.ndarray, x: np.ndarray, activation: str) -> np.ndarray:
    """Logits ``(B, n_out)`` by a loop over neurons in topological order (float64)."""
    act = NP_ACTIVATIONS[activation]
    edges = edge_list(arch)
    into: dict[int, list[tuple[int, int]]] = {v: [] for v in range(arch.num_neurons)}
    for k, (u, v) in enumerate(edges):
        into[v].append((k, u))
    vals: dict[int, np.ndarray] = {}
    for neuron in topological_order(arch.num_neurons, edges):
        kind = arch.kinds[neuron]
        if kind == INPUT:
            vals[neuron] = x[:, arch.inputs.tolist().index(neuron)]
        elif kind == BIAS:
            vals[neuron] = np.ones(x.shape[0])
        else:
            z = np.zeros(x.shape[0])
            for k, u in into[neuron]:
                z = z + w[k] * vals[u]
            vals[neuron] = z if kind == OUTPUT else act(z)
    return np.stack([vals[o] for o in arch.outputs.tolist()], axis=1)


@settings(max_examples=30, deadline=None)
@given(
    spec=dag_specs(bias=True),
    activation=st.sampled_from(sorted(NP_ACTIVATIONS)),
    seed=st.integers(0, 1000),
)
def test_general_path_equals_numpy_reference(spec: DagSpec, activation: str, seed: int) -> None:
    arch = spec.build()
    g = WeightGraph.from_architecture(arch)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=arch.num_weights)
    x = rng.normal(size=(5, arch.num_inputs))
    out = task_forward(g, torch.from_numpy(w), torch.from_numpy(x), activation)
    assert out.shape == (1, 5, arch.num_outputs)
    ref = numpy_forward(arch, w, x, activation)
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", sorted(NP_ACTIVATIONS))
def test_mlp_dense_equals_numpy_reference(activation: str) -> None:
    arch = Architecture.mlp([4, 5, 3, 2])
    g = WeightGraph.from_architecture(arch)
    rng = np.random.default_rng(0)
    w = rng.normal(size=arch.num_weights)
    x = rng.normal(size=(6, 4))
    out = task_forward(g, torch.from_numpy(w), torch.from_numpy(x), activation, path="dense")
    np.testing.assert_allclose(out[0].numpy(), numpy_forward(arch, w, x, activation), rtol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_dense_path_equals_general_on_batches(bias: bool, activation: str) -> None:
    arch = Architecture.mlp([5, 4, 3, 2], bias=bias)
    g = WeightGraph.replicate(arch, 3)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(g.num_nodes, generator=gen, dtype=torch.float64)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    dense = task_forward(g, w, x, activation, path="dense")
    auto = task_forward(g, w, x, activation)
    general = task_forward(g, w, x, activation, path="general")
    assert dense.shape == (3, 7, 2)
    torch.testing.assert_close(dense, general, rtol=0, atol=1e-12)
    assert torch.equal(auto, dense)
    # the nets differ, so their outputs differ
    assert not torch.allclose(dense[0], dense[1])


def test_per_net_inputs() -> None:
    for arch in (Architecture.mlp([3, 4, 2]), Architecture.skip_mlp([3, 2, 2, 2])):
        g = WeightGraph.replicate(arch, 3)
        one = WeightGraph.from_architecture(arch)
        e = arch.num_weights
        gen = torch.Generator().manual_seed(1)
        w = torch.randn(g.num_nodes, generator=gen, dtype=torch.float64)
        x = torch.randn(3, 5, 3, generator=gen, dtype=torch.float64)
        out = task_forward(g, w, x)
        assert out.shape == (3, 5, 2)
        for gi in range(3):
            ref = task_forward(one, w[gi * e : (gi + 1) * e], x[gi])[0]
            torch.testing.assert_close(out[gi], ref, rtol=0, atol=1e-12)
        # shared inputs equal per-net inputs that repeat them
        torch.testing.assert_close(
            task_forward(g, w, x[0]), task_forward(g, w, x[0].expand(3, -1, -1)), rtol=0, atol=0
        )


def test_mixed_architectures_batch() -> None:
    archs = [
        Architecture.mlp([3, 4, 2]),
        Architecture.skip_mlp([3, 2, 2]),
        Architecture.mlp([3, 2]),
    ]
    g = WeightGraph.collate([WeightGraph.from_architecture(a) for a in archs])
    rng = np.random.default_rng(2)
    w = rng.normal(size=g.num_nodes)
    x = rng.normal(size=(4, 3))
    out = task_forward(g, torch.from_numpy(w), torch.from_numpy(x))
    off = 0
    for gi, a in enumerate(archs):
        ref = numpy_forward(a, w[off : off + a.num_weights], x, "tanh")
        np.testing.assert_allclose(out[gi].numpy(), ref, rtol=1e-10, atol=1e-12)
        off += a.num_weights
    with pytest.raises(ValueError, match="dense path"):
        task_forward(g, torch.from_numpy(w), torch.from_numpy(x), path="dense")


def test_gradient_flows_to_weights() -> None:
    arch = Architecture.mlp([3, 4, 2])
    g = WeightGraph.replicate(arch, 2)
    for path in ("dense", "general"):
        w = torch.randn(g.num_nodes, requires_grad=True)
        task_forward(g, w, torch.randn(5, 3), path=path).sum().backward()
        assert w.grad is not None and (w.grad != 0).any()


def test_wrong_shapes_raise() -> None:
    arch = Architecture.mlp([3, 4, 2])
    g = WeightGraph.replicate(arch, 2)
    w = torch.randn(g.num_nodes)
    with pytest.raises(ValueError, match="w must have shape"):
        task_forward(g, w[:-1], torch.randn(5, 3))
    with pytest.raises(ValueError, match="w must have shape"):
        task_forward(g, w.view(2, -1), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"X must have shape \(B, 3\) or \(2, B, 3\)"):
        task_forward(g, w, torch.randn(5, 4))
    with pytest.raises(ValueError, match="X must have shape"):
        task_forward(g, w, torch.randn(3, 5, 3))
    with pytest.raises(ValueError, match="X must have shape"):
        task_forward(g, w, torch.randn(3))
    with pytest.raises(ValueError, match="unknown task activation 'softmax'"):
        task_forward(g, w, torch.randn(5, 3), "softmax")
    with pytest.raises(ValueError, match="unknown path"):
        task_forward(g, w, torch.randn(5, 3), path="sparse")
    skip = WeightGraph.from_architecture(Architecture.skip_mlp([3, 2, 2]))
    with pytest.raises(ValueError, match="dense path"):
        task_forward(skip, torch.randn(skip.num_nodes), torch.randn(5, 3), path="dense")
