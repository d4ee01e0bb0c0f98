"""Tests of gnca.architecture: builders, weight layout, levels and validation messages."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import DagSpec, brute_levels, dag_specs, edge_list
from hypothesis import given, settings
from hypothesis import strategies as st

from gnca import Architecture, WeightGraph
from gnca.architecture import BIAS, HIDDEN, INPUT, OUTPUT

# ---------------------------------------------------------------------------- sizes and layout


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    bias=st.booleans(),
)
def test_mlp_layout(sizes: list[int], bias: bool) -> None:
    arch = Architecture.mlp(sizes, bias=bias)
    pairs = list(itertools.pairwise(sizes))
    n_plain = sum(a * b for a, b in pairs)
    assert arch.num_weights == n_plain + (sum(sizes[1:]) if bias else 0)
    assert arch.num_weights == len(arch.edges)
    assert WeightGraph.from_architecture(arch).num_nodes == arch.num_weights
    assert arch.mlp_sizes == tuple(sizes)
    starts = np.cumsum([0, *sizes])
    edges = edge_list(arch)
    offset = 0
    bias_ids: set[int] = set()
    for layer, (a, b) in enumerate(pairs):
        for i in range(a):
            for j in range(b):
                k = offset + i * b + j
                assert edges[k] == (starts[layer] + i, starts[layer + 1] + j)
                assert not arch.is_bias_weight[k]
        offset += a * b
        if bias:
            for j in range(b):
                u, v = edges[offset + j]
                assert v == starts[layer + 1] + j
                assert arch.is_bias_weight[offset + j]
                assert arch.kinds[u] == BIAS
                bias_ids.add(u)
            offset += b
    assert offset == arch.num_weights
    assert len(bias_ids) == (sum(sizes[1:]) if bias else 0)
    assert arch.num_neurons == sum(sizes) + len(bias_ids)
    assert arch.inputs.tolist() == list(range(sizes[0]))
    assert arch.outputs.tolist() == list(range(starts[-2], starts[-1]))
    assert (arch.kinds[arch.inputs] == INPUT).all()
    assert (arch.kinds[arch.outputs] == OUTPUT).all()
    assert (arch.kinds[sizes[0] : starts[-2]] == HIDDEN).all()
    assert arch.depth == len(sizes) - 1


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=2, max_size=5),
    skip=st.integers(1, 4),
    bias=st.booleans(),
)
def test_skip_mlp_edges(sizes: list[int], skip: int, bias: bool) -> None:
    arch = Architecture.skip_mlp(sizes, skip=skip, bias=bias)
    starts = np.cumsum([0, *sizes])
    expected = set()
    for a in range(len(sizes) - 1):
        for b in range(a + 1, len(sizes)):
            if b - a <= skip:
                for i in range(sizes[a]):
                    for j in range(sizes[b]):
                        expected.add((int(starts[a] + i), int(starts[b] + j)))
    edges = edge_list(arch)
    real = {e for e, b in zip(edges, arch.is_bias_weight.tolist(), strict=True) if not b}
    assert real == expected
    assert len(edges) == len(set(edges))
    bias_targets = sorted(v for (_, v), b in zip(edges, arch.is_bias_weight, strict=True) if b)
    assert bias_targets == (list(range(sizes[0], int(starts[-1]))) if bias else [])
    assert arch.mlp_sizes is None  # general (not dense) layout
    assert arch.num_weights == len(expected) + len(bias_targets)
    if skip == 1:
        mlp = Architecture.mlp(sizes, bias=bias)
        assert set(edge_list(mlp)) == set(edges)
    # levels of a skip net are still the layer index
    for layer in range(len(sizes)):
        assert (arch.levels[starts[layer] : starts[layer + 1]] == layer).all()


@settings(max_examples=60, deadline=None)
@given(spec=dag_specs())
def test_levels_match_brute_force(spec: DagSpec) -> None:
    arch = spec.build()
    assert arch.levels.tolist() == brute_levels(arch)
    assert arch.num_weights == len(spec.edges) + (
        arch.num_neurons - len(set(np.ravel(spec.edges)) | set(spec.inputs) | set(spec.outputs))
    )
    assert WeightGraph.from_architecture(arch).num_nodes == arch.num_weights
    # every edge goes strictly up in level
    for (u, v), b in zip(edge_list(arch), arch.is_bias_weight.tolist(), strict=True):
        assert arch.levels[v] > arch.levels[u] or b
        if b:
            assert arch.levels[u] == arch.levels[v] - 1
    # bias: one bias weight per non-input neuron
    n_real = arch.num_neurons - int((arch.kinds == BIAS).sum())
    if spec.bias:
        assert int(arch.is_bias_weight.sum()) == n_real - len(spec.inputs)
    else:
        assert not arch.is_bias_weight.any()


def test_from_edges_relabels_sorted_ids_and_keeps_edge_order() -> None:
    arch = Architecture.from_edges([(50, 7), (10, 7), (10, 30), (30, 7)], [10, 50], [7])
    # ids sorted: 7 -> 0, 10 -> 1, 30 -> 2, 50 -> 3
    assert edge_list(arch) == [(3, 0), (1, 0), (1, 2), (2, 0)]
    assert arch.inputs.tolist() == [1, 3]
    assert arch.outputs.tolist() == [0]
    assert arch.levels.tolist() == [2, 0, 1, 0]


def test_mlp_input_shape() -> None:
    arch = Architecture.mlp([6, 2], input_shape=(2, 3))
    assert arch.input_shape == (2, 3)
    with pytest.raises(ValueError, match="does not match 6 inputs"):
        Architecture.mlp([6, 2], input_shape=(2, 2))
    with pytest.raises(ValueError, match="does not match 2 inputs"):
        Architecture.from_edges([(0, 2), (1, 2)], [0, 1], [2], input_shape=(3, 1))


# ---------------------------------------------------------------------------- validation


def test_cycle_is_named() -> None:
    edges = [(0, 10), (10, 20), (20, 30), (30, 10), (30, 99)]
    with pytest.raises(ValueError, match="cycle") as err:
        Architecture.from_edges(edges, [0], [99])
    msg = str(err.value)
    listed = [int(x) for x in msg[msg.index("[") + 1 : msg.index("]")].split(",")]
    assert listed[0] == listed[-1]
    assert set(listed) == {10, 20, 30}


@pytest.mark.parametrize(
    ("edges", "inputs", "outputs", "exc", "parts"),
    [
        ([(0, 1), (1, 1), (1, 2)], [0], [2], ValueError, ["self loop", "neuron 1"]),
        ([(0, 1), (0, 1), (1, 2)], [0], [2], ValueError, ["duplicate edge", "(0, 1)"]),
        ([(0, 2), (2, 5), (2, 0)], [0], [5], ValueError, ["(2, 0)", "input neuron 0"]),
        ([(0, 5), (5, 7)], [0], [5, 7], ValueError, ["(5, 7)", "output neuron 5"]),
        ([(0, 5), (3, 5)], [0], [5], ValueError, ["[3]", "not reachable from any input"]),
        ([(0, 5), (0, 4)], [0], [5], ValueError, ["[4]", "do not reach any output"]),
        ([(0, 5), (2, 5)], [0, 2], [5, 2], ValueError, ["[2]", "both inputs and outputs"]),
        ([(0, 5)], [0, 1], [5], ValueError, ["input neurons [1]", "do not reach any output"]),
        ([(0, 5)], [0], [5, 6], ValueError, ["output neurons [6]", "not reachable"]),
        ([(0, 5)], [0, 0], [5], ValueError, ["duplicate", "inputs", "[0]"]),
        ([], [0], [5], ValueError, ["at least one edge"]),
        ([(0, 5)], [], [5], ValueError, ["at least one input"]),
        ([(0, 5)], [0], [], ValueError, ["at least one output"]),
        ([(0, 1.5)], [0], [1], TypeError, ["edge", "1.5"]),
        ([(0, "a")], [0], ["a"], TypeError, ["'a'"]),
        ([(0, 1)], [True], [1], TypeError, ["inputs", "True"]),
        ([(0, 1)], "0", [1], TypeError, ["inputs", "str"]),
        ([(0, 1, 2)], [0], [2], ValueError, ["(u, v) pair", "(0, 1, 2)"]),
        ([(-1, 1)], [-1], [1], ValueError, ["non-negative", "-1"]),
    ],
)
def test_invalid_from_edges(
    edges: list, inputs: list, outputs: list, exc: type[Exception], parts: list[str]
) -> None:
    with pytest.raises(exc) as err:
        Architecture.from_edges(edges, inputs, outputs)
    for part in parts:
        assert part in str(err.value), (part, str(err.value))


def test_invalid_edge_array() -> None:
    with pytest.raises(TypeError, match=r"\(E, 2\) ints"):
        Architecture.from_edges(np.zeros((2, 2)), [0], [1])
    with pytest.raises(TypeError, match=r"\(E, 2\) ints"):
        Architecture.from_edges(np.zeros((2, 3), dtype=np.int64), [0], [1])


@pytest.mark.parametrize(
    ("sizes", "exc", "parts"),
    [
        ([4, 0, 3], ValueError, ["layer 1", "has 0"]),
        ([4, 3, -2], ValueError, ["layer 2", "-2"]),
        ([4], ValueError, ["at least 2"]),
        ([4.0, 3], TypeError, ["sizes", "4.0"]),
        ("43", TypeError, ["sizes", "str"]),
    ],
)
def test_invalid_mlp(sizes: object, exc: type[Exception], parts: list[str]) -> None:
    with pytest.raises(exc) as err:
        Architecture.mlp(sizes)  # type: ignore[arg-type]
    for part in parts:
        assert part in str(err.value), (part, str(err.value))


@pytest.mark.parametrize(
    ("sizes", "skip", "part"),
    [([3, 0, 2], 1, "positive layer sizes"), ([3, 2], 0, "skip"), ([3, 2], True, "skip")],
)
def test_invalid_skip_mlp(sizes: list[int], skip: object, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        Architecture.skip_mlp(sizes, skip=skip)  # type: ignore[arg-type]


def test_key_and_describe() -> None:
    a = Architecture.mlp([3, 4, 2])
    assert a.key() == Architecture.mlp([3, 4, 2]).key()
    assert a.key() != Architecture.mlp([3, 5, 2]).key()
    assert a.key() != Architecture.mlp([3, 4, 2], bias=False).key()
    assert a.describe() == "mlp 3-4-2 (+bias)"
    assert Architecture.skip_mlp([3, 4, 2], bias=False).describe().startswith("dag 9 neurons")
    assert not a.edges.flags.writeable
