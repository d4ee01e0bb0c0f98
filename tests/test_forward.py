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


def numpy_forward(
    arch: Architecture,
    w: np.ndarray,
    x: np.ndarray,
    activation: str,
    fan_in_ref: float | None = None,
) -> np.ndarray:
    """Logits ``(B, n_out)`` by a loop over neurons in topological order (float64); with
    ``fan_in_ref``, each neuron's non-bias sum is divided by its count and times the ref."""
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
            zb = np.zeros(x.shape[0])
            count = 0
            for k, u in into[neuron]:
                if arch.kinds[u] == BIAS:
                    zb = zb + w[k] * vals[u]
                else:
                    z = z + w[k] * vals[u]
                    count += 1
            if fan_in_ref is not None and count:
                z = z / count * fan_in_ref
            z = z + zb
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


# ---------------------------------------------------------------------------- fan_in_ref


@settings(max_examples=30, deadline=None)
@given(spec=dag_specs(bias=True), ref=st.sampled_from([1.0, 3.0, 32.0]), seed=st.integers(0, 99))
def test_fan_in_ref_equals_numpy_mean_field_reference(spec: DagSpec, ref: float, seed: int) -> None:
    arch = spec.build()
    g = WeightGraph.from_architecture(arch)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=arch.num_weights)
    x = rng.normal(size=(4, arch.num_inputs))
    out = task_forward(g, torch.from_numpy(w), torch.from_numpy(x), "tanh", fan_in_ref=ref)
    expect = numpy_forward(arch, w, x, "tanh", fan_in_ref=ref)
    np.testing.assert_allclose(out[0].numpy(), expect, rtol=1e-9, atol=1e-12)


def test_fan_in_ref_dense_and_general_paths_agree() -> None:
    arch = Architecture.mlp([5, 7, 3, 2])
    g = WeightGraph.replicate(arch, 3)
    w = torch.randn(g.src.numel(), dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    dense = task_forward(g, w, x, path="dense", fan_in_ref=4.0)
    general = task_forward(g, w, x, path="general", fan_in_ref=4.0)
    torch.testing.assert_close(dense, general)
    assert not torch.allclose(dense, task_forward(g, w, x))


@pytest.mark.parametrize("width", [4, 8, 16, 64])
def test_fan_in_ref_makes_constant_layers_width_invariant(width: int) -> None:
    # every weight 0.3, biases 0.1: with mean-field sums each hidden neuron sees the same input
    # whatever the width, so the logits are those of the width-4 net; plain sums grow with width
    def logits(n: int, ref: float | None) -> torch.Tensor:
        arch = Architecture.mlp([3, n, n, 2])
        g = WeightGraph.from_architecture(arch)
        w = torch.where(g.is_bias, 0.1, 0.3).to(torch.float64)
        x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
        return task_forward(g, w, x, fan_in_ref=ref)

    torch.testing.assert_close(logits(width, 4.0), logits(4, 4.0))
    assert torch.allclose(logits(width, None), logits(4, None)) is (width == 4)


def test_fan_in_ref_must_be_positive() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([2, 3, 2]))
    with pytest.raises(ValueError, match="fan_in_ref must be > 0"):
        task_forward(g, torch.zeros(g.src.numel()), torch.zeros(1, 2), fan_in_ref=0.0)
