"""Tests of gnca.graph: weight graphs, batching and the explicit line graph."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    NEIGHBOURHOOD_NAMES,
    DagSpec,
    brute_neighbours,
    dag_specs,
    edge_list,
    example_archs,
    float64_state,
    neighbour_pairs,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gnca import Architecture, LocalRule, WeightGraph, line_graph_edge_index, perceive, task_forward
from gnca.graph import relation_pair_count


def pair_set(ei: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, ei.t().tolist()))


# ---------------------------------------------------------------------------- single graphs


@pytest.mark.parametrize("arch", example_archs(), ids=lambda a: a.describe())
def test_weight_graph_matches_architecture(arch: Architecture) -> None:
    g = WeightGraph.from_architecture(arch)
    assert g.num_nodes == arch.num_weights
    assert torch.equal(g.src, torch.as_tensor(arch.edges[:, 0].copy()))
    assert torch.equal(g.dst, torch.as_tensor(arch.edges[:, 1].copy()))
    assert torch.equal(g.is_bias, torch.as_tensor(arch.is_bias_weight.copy()))
    assert g.input_index.tolist() == arch.inputs.tolist()
    assert g.output_index.tolist() == arch.outputs.tolist()
    assert g.neuron_level.tolist() == arch.levels.tolist()
    # fan_in: non-bias in-weights of the head neuron, at least 1
    for k, (_, v) in enumerate(edge_list(arch)):
        n = sum(
            1
            for (_, b), is_b in zip(edge_list(arch), arch.is_bias_weight, strict=True)
            if b == v and not is_b
        )
        assert g.fan_in[k].item() == max(n, 1)


def test_from_architecture_rejects_non_architecture() -> None:
    with pytest.raises(TypeError, match="Architecture"):
        WeightGraph.from_architecture([3, 4, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        WeightGraph.collate([])
    with pytest.raises(ValueError, match="copies"):
        WeightGraph.replicate(Architecture.mlp([2, 2]), 0)


# ---------------------------------------------------------------------------- batching


def _check_batch_offsets(batch: torch.Tensor, archs: list[Architecture]) -> None:
    n_off = e_off = 0
    i_off = o_off = 0
    for gi, arch in enumerate(archs):
        e, n = arch.num_weights, arch.num_neurons
        sl = slice(e_off, e_off + e)
        assert torch.equal(batch.src[sl], torch.as_tensor(arch.edges[:, 0].copy()) + n_off)
        assert torch.equal(batch.dst[sl], torch.as_tensor(arch.edges[:, 1].copy()) + n_off)
        assert (batch.batch[sl] == gi).all()
        ni, no = arch.num_inputs, arch.num_outputs
        assert torch.equal(
            batch.input_index[i_off : i_off + ni], torch.as_tensor(arch.inputs.copy()) + n_off
        )
        assert torch.equal(
            batch.output_index[o_off : o_off + no], torch.as_tensor(arch.outputs.copy()) + n_off
        )
        assert torch.equal(
            batch.neuron_level[n_off : n_off + n], torch.as_tensor(arch.levels.copy())
        )
        n_off += n
        e_off += e
        i_off += ni
        o_off += no
    assert batch.num_nodes == e_off
    assert batch.num_neurons_per_graph.tolist() == [a.num_neurons for a in archs]
    assert batch.num_weights_per_graph.tolist() == [a.num_weights for a in archs]
    assert batch.num_graphs == len(archs)


def _mixed_archs() -> list[Architecture]:
    return [
        Architecture.mlp([3, 4, 2]),
        Architecture.skip_mlp([3, 2, 2, 2]),
        Architecture.mlp([3, 2], bias=False),
        Architecture.mlp([3, 4, 2]),
    ]


def test_collate_offsets_mixed() -> None:
    archs = _mixed_archs()
    batch = WeightGraph.collate([WeightGraph.from_architecture(a) for a in archs])
    _check_batch_offsets(batch, archs)


def test_replicate_offsets_and_equals_collate() -> None:
    arch = Architecture.skip_mlp([2, 3, 2])
    rep = WeightGraph.replicate(arch, 3)
    _check_batch_offsets(rep, [arch] * 3)
    col = WeightGraph.collate([WeightGraph.from_architecture(arch)] * 3)
    for key in ("src", "dst", "input_index", "output_index", "batch", "neuron_kind"):
        assert torch.equal(rep[key], col[key])


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_batched_line_graph_offsets_by_weights(neighbourhood: str, include_self: bool) -> None:
    archs = _mixed_archs()
    graphs = [WeightGraph.from_architecture(a) for a in archs]
    batch = WeightGraph.collate(graphs)
    bf, bb = line_graph_edge_index(batch, neighbourhood, include_self=include_self)
    exp_f: set[tuple[int, int]] = set()
    exp_b: set[tuple[int, int]] = set()
    off = 0
    for g in graphs:
        ef, eb = line_graph_edge_index(g, neighbourhood, include_self=include_self)
        exp_f |= pair_set(ef + off)
        exp_b |= pair_set(eb + off)
        off += g.num_nodes
    assert pair_set(bf) == exp_f and bf.shape[1] == len(exp_f)
    assert pair_set(bb) == exp_b and bb.shape[1] == len(exp_b)
    assert relation_pair_count(batch, neighbourhood) == tuple(
        sum(relation_pair_count(g, neighbourhood)[i] for g in graphs) for i in range(2)
    )


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
def test_batch_equals_each_graph_alone(neighbourhood: str) -> None:
    archs = _mixed_archs()
    graphs = [WeightGraph.from_architecture(a) for a in archs]
    batch = WeightGraph.collate(graphs)
    c = 3
    w, h = float64_state(batch.num_nodes, c, seed=1)
    rule = LocalRule(c, widths=(8,), neighbourhood=neighbourhood).double()
    torch.nn.init.normal_(rule.out.weight, std=0.5)
    torch.nn.init.normal_(rule.out.bias, std=0.5)
    mask = (torch.rand(batch.num_nodes, generator=torch.Generator().manual_seed(2)) < 0.7).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    p_batch = perceive(batch, w, h, neighbourhood)
    w_b, h_b = rule(batch, w, h, mask=mask)
    y_batch = task_forward(batch, w, x)
    ps, ws, hs, ys = [], [], [], []
    off = 0
    for g in graphs:
        sl = slice(off, off + g.num_nodes)
        off += g.num_nodes
        ps.append(perceive(g, w[sl], h[sl], neighbourhood))
        w1, h1 = rule(g, w[sl], h[sl], mask=mask[sl])
        ws.append(w1)
        hs.append(h1)
        ys.append(task_forward(g, w[sl], x))
    torch.testing.assert_close(p_batch, torch.cat(ps), rtol=0, atol=1e-12)
    torch.testing.assert_close(w_b, torch.cat(ws), rtol=0, atol=1e-12)
    torch.testing.assert_close(h_b, torch.cat(hs), rtol=0, atol=1e-12)
    torch.testing.assert_close(y_batch, torch.cat(ys), rtol=0, atol=1e-12)


def test_replicated_batch_equals_each_copy() -> None:
    arch = Architecture.mlp([3, 4, 2])
    rep = WeightGraph.replicate(arch, 3)
    one = WeightGraph.from_architecture(arch)
    w, h = float64_state(rep.num_nodes, 2, seed=3)
    e = arch.num_weights
    p = perceive(rep, w, h)
    x = torch.randn(4, 3, dtype=torch.float64)
    y = task_forward(rep, w, x)
    for gi in range(3):
        sl = slice(gi * e, (gi + 1) * e)
        torch.testing.assert_close(p[sl], perceive(one, w[sl], h[sl]), rtol=0, atol=1e-12)
        torch.testing.assert_close(y[gi], task_forward(one, w[sl], x)[0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- line graph


def _check_line_graph(arch: Architecture, neighbourhood: str, include_self: bool) -> None:
    g = WeightGraph.from_architecture(arch)
    ei_f, ei_b = line_graph_edge_index(g, neighbourhood, include_self=include_self)
    n_f, n_b = brute_neighbours(edge_list(arch), neighbourhood, include_self)
    exp_f, exp_b = neighbour_pairs(n_f), neighbour_pairs(n_b)
    for ei, exp in ((ei_f, exp_f), (ei_b, exp_b)):
        assert ei.dtype == torch.long and ei.shape[0] == 2
        assert ei.shape[1] == len(exp)  # no duplicate pairs
        assert pair_set(ei) == exp
        assert (ei[1][1:] >= ei[1][:-1]).all()  # sorted by target weight
    # relation_pair_count never counts self pairs
    no_self_f = {p for p in exp_f if p[0] != p[1]}
    no_self_b = {p for p in exp_b if p[0] != p[1]}
    assert relation_pair_count(g, neighbourhood) == (len(no_self_f), len(no_self_b))


@pytest.mark.parametrize("arch", example_archs(), ids=lambda a: a.describe())
@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOOD_NAMES)
@pytest.mark.parametrize("include_self", [False, True])
def test_line_graph_brute_force_examples(
    arch: Architecture, neighbourhood: str, include_self: bool
) -> None:
    _check_line_graph(arch, neighbourhood, include_self)


@settings(max_examples=40, deadline=None)
@given(
    spec=dag_specs(),
    neighbourhood=st.sampled_from(NEIGHBOURHOOD_NAMES),
    include_self=st.booleans(),
)
def test_line_graph_brute_force_random_dags(
    spec: DagSpec, neighbourhood: str, include_self: bool
) -> None:
    _check_line_graph(spec.build(), neighbourhood, include_self)


def test_relation_pair_count_formula_mlp() -> None:
    # 784-100-10 without bias: directed forward = sum over hidden v of in(v)*out(v)
    g = WeightGraph.from_architecture(Architecture.mlp([784, 100, 10], bias=False))
    f, b = relation_pair_count(g, "directed")
    assert f == b == 100 * 784 * 10
    f, b = relation_pair_count(g, "sibling")
    assert f == 100 * 784 * 783 + 10 * 100 * 99
    assert b == 784 * 100 * 99 + 100 * 10 * 9


def test_max_edges_refusal() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([6, 5, 4]))
    n_f, n_b = relation_pair_count(g, "incident")
    with pytest.raises(MemoryError, match=f"{max(n_f, n_b):,}"):
        line_graph_edge_index(g, "incident", max_edges=max(n_f, n_b) - 1)
    ei_f, ei_b = line_graph_edge_index(g, "incident", max_edges=max(n_f, n_b))
    assert (ei_f.shape[1], ei_b.shape[1]) == (n_f, n_b)
    big = WeightGraph.from_architecture(Architecture.mlp([784, 1000, 10]))  # ~6e8 pairs
    with pytest.raises(MemoryError, match="fast path"):
        line_graph_edge_index(big, "incident")


def test_unknown_neighbourhood() -> None:
    g = WeightGraph.from_architecture(Architecture.mlp([2, 2]))
    for fn in (relation_pair_count, line_graph_edge_index):
        with pytest.raises(ValueError, match="unknown neighbourhood 'nope'"):
            fn(g, "nope")
