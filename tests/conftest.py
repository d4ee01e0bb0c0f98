"""Shared helpers of the tests: a hypothesis strategy for random DAGs and brute-force references
(neighbourhoods, perception, levels, topological order) written as plain Python loops,
independent of the vectorised code under test; the test device; tiny configs and runs, and a fake
MNIST folder. Test files import helpers from here, never from each other."""

from __future__ import annotations

import gzip
import itertools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from gnca import Architecture, LocalRule

if TYPE_CHECKING:
    from gnca.config import Config
    from gnca.trainer import MetaTrainer

NEIGHBOURHOOD_NAMES = ("incident", "directed", "sibling")


# ---------------------------------------------------------------------- random DAGs
@dataclass(frozen=True)
class DagSpec:
    """A DAG as handed to :meth:`Architecture.from_edges` (user ids, before relabelling)."""

    edges: tuple[tuple[int, int], ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    bias: bool

    def build(self) -> Architecture:
        return Architecture.from_edges(
            list(self.edges), list(self.inputs), list(self.outputs), bias=self.bias
        )


@st.composite
def dag_specs(
    draw: st.DrawFn,
    max_inputs: int = 3,
    max_outputs: int = 3,
    max_hidden: int = 6,
    bias: bool | None = None,
    layered: bool | None = None,
) -> DagSpec:
    """Random valid DAGs: a few inputs and outputs, some hidden neurons, layered or not.

    Valid by construction: neurons are placed in an order (inputs, hidden, outputs); every hidden
    and output neuron gets at least one predecessor earlier in the order (so it is reachable from
    an input), then every input and hidden neuron lacking a successor gets one later in the order
    (which reaches an output). Layered DAGs only connect consecutive layers. Neuron ids are
    finally shuffled and spread out (non-contiguous), so inputs need not come first.
    """
    n_in = draw(st.integers(1, max_inputs))
    n_out = draw(st.integers(1, max_outputs))
    n_hid = draw(st.integers(0, max_hidden))
    use_bias = draw(st.booleans()) if bias is None else bias
    is_layered = draw(st.booleans()) if layered is None else layered
    if is_layered:
        cuts = draw(st.sets(st.integers(1, n_hid - 1), max_size=n_hid - 1)) if n_hid > 1 else set()
        bounds = [0, *sorted(cuts), n_hid] if n_hid else [0]
        hid_layers = [list(range(n_in + a, n_in + b)) for a, b in itertools.pairwise(bounds)]
        outs = list(range(n_in + n_hid, n_in + n_hid + n_out))
        layers = [list(range(n_in)), *hid_layers, outs]
        pred_pool: dict[int, list[int]] = {}  # neuron -> allowed predecessors
        succ_pool: dict[int, list[int]] = {}  # neuron -> allowed successors
        for li in range(1, len(layers)):
            for v in layers[li]:
                pred_pool[v] = layers[li - 1]
        for li in range(len(layers) - 1):
            for u in layers[li]:
                succ_pool[u] = layers[li + 1]
    else:
        order = list(range(n_in + n_hid + n_out))
        outputs_set = set(range(n_in + n_hid, n_in + n_hid + n_out))
        pred_pool = {
            v: [u for u in order[:v] if u not in outputs_set] for v in range(n_in, len(order))
        }
        succ_pool = {u: [v for v in order[u + 1 :] if v >= n_in] for u in range(n_in + n_hid)}
    edges: set[tuple[int, int]] = set()
    for v in sorted(pred_pool):
        pool = pred_pool[v]
        k = draw(st.integers(1, min(3, len(pool))))
        for u in draw(st.permutations(pool))[:k]:
            edges.add((u, v))
    for u in sorted(succ_pool, reverse=True):
        if not any(a == u for a, _ in edges):
            edges.add((u, draw(st.sampled_from(succ_pool[u]))))
    # a few extra forward edges
    for _ in range(draw(st.integers(0, 4))):
        u = draw(st.sampled_from(sorted(succ_pool)))
        edges.add((u, draw(st.sampled_from(succ_pool[u]))))
    n = n_in + n_hid + n_out
    perm = draw(st.permutations(range(n)))
    spread = draw(st.integers(1, 3))
    name = [spread * p for p in perm]
    edge_list = [(name[u], name[v]) for u, v in draw(st.permutations(sorted(edges)))]
    return DagSpec(
        edges=tuple(edge_list),
        inputs=tuple(name[i] for i in range(n_in)),
        outputs=tuple(name[i] for i in range(n_in + n_hid, n)),
        bias=use_bias,
    )


def dags(**kwargs: object) -> st.SearchStrategy[Architecture]:
    """Random valid :class:`Architecture` objects (see :func:`dag_specs`)."""
    return dag_specs(**kwargs).map(DagSpec.build)


# ---------------------------------------------------------------------- fixed example nets
def example_archs() -> list[Architecture]:
    """Small hand-picked architectures: MLPs (with/without bias), skip nets, a linear net."""
    return [
        Architecture.mlp([3, 4, 2]),
        Architecture.mlp([2, 3, 3, 2], bias=False),
        Architecture.mlp([4, 3]),
        Architecture.skip_mlp([3, 2, 3, 2], skip=2),
        Architecture.skip_mlp([2, 3, 2, 2, 2], skip=3, bias=False),
    ]


# ---------------------------------------------------------------------- brute force references
def edge_list(arch: Architecture) -> list[tuple[int, int]]:
    return [(int(u), int(v)) for u, v in arch.edges]


def brute_neighbours(
    edges: Sequence[tuple[int, int]], neighbourhood: str, include_self: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """``(N_f, N_b)``: for every weight the list of neighbour weights, by the definition table of
    :func:`gnca.graph.line_graph_edge_index`, by a double loop over weights."""
    n_f: list[list[int]] = []
    n_b: list[list[int]] = []
    for w, (u, v) in enumerate(edges):
        f, b = [], []
        for k, (a, c) in enumerate(edges):
            if neighbourhood == "incident":
                in_f = k != w and (c == v or a == v)
                in_b = k != w and (c == u or a == u)
            elif neighbourhood == "directed":
                in_f = a == v  # out(v)
                in_b = c == u  # in(u)
            elif neighbourhood == "sibling":
                in_f = k != w and c == v  # in(v) minus self
                in_b = k != w and a == u  # out(u) minus self
            else:
                raise AssertionError(neighbourhood)
            if include_self and k == w:
                in_f = in_b = True
            if in_f:
                f.append(k)
            if in_b:
                b.append(k)
        n_f.append(f)
        n_b.append(b)
    return n_f, n_b


def neighbour_pairs(nbrs: list[list[int]]) -> set[tuple[int, int]]:
    """``{(k, w)}``: weight ``k`` is a neighbour of weight ``w``."""
    return {(k, w) for w, ks in enumerate(nbrs) for k in ks}


def loop_perceive(
    edges: Sequence[tuple[int, int]],
    w: torch.Tensor,
    h: torch.Tensor,
    neighbourhood: str,
    include_self: bool,
    reduce: str,
) -> torch.Tensor:
    """Perception by a plain Python loop over weights (float64 reference); ``reduce`` is
    ``mean``, ``sum`` or ``max``; empty neighbourhoods give 0."""
    n_f, n_b = brute_neighbours(edges, neighbourhood, include_self)
    wl = w.double().tolist()
    hl = h.double().tolist()
    c = h.shape[1]
    rows = []
    for i in range(len(edges)):
        x_i = [wl[i], *hl[i]]
        row = list(x_i)
        for nbrs in (n_f[i], n_b[i]):
            if not nbrs:
                row += [0.0] * (1 + c)
                continue
            vals = [[wl[k], *hl[k]] for k in nbrs]
            agg = []
            for ch in range(1 + c):
                col = [v[ch] for v in vals]
                if reduce == "sum":
                    agg.append(math.fsum(col))
                elif reduce == "mean":
                    agg.append(math.fsum(col) / len(col))
                elif reduce == "max":
                    agg.append(max(col))
                else:
                    raise AssertionError(reduce)
            row += agg
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).reshape(len(edges), 3 + 3 * c)


def topological_order(num_neurons: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Kahn's algorithm over a plain adjacency list."""
    indeg = [0] * num_neurons
    succ: list[list[int]] = [[] for _ in range(num_neurons)]
    for u, v in edges:
        indeg[v] += 1
        succ[u].append(v)
    ready = [i for i in range(num_neurons) if indeg[i] == 0]
    out = []
    while ready:
        u = ready.pop()
        out.append(u)
        for v in succ[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    assert len(out) == num_neurons, "not a DAG"
    return out


def brute_levels(arch: Architecture) -> list[int]:
    """Longest path (in non-bias edges) from any source to each neuron, by memoised recursion;
    a bias neuron sits one level below the neuron it feeds."""
    preds: dict[int, list[int]] = {i: [] for i in range(arch.num_neurons)}
    bias_target: dict[int, int] = {}
    for (u, v), is_b in zip(edge_list(arch), arch.is_bias_weight.tolist(), strict=True):
        if is_b:
            bias_target[u] = v
        else:
            preds[v].append(u)
    memo: dict[int, int] = {}

    def level(x: int) -> int:
        if x not in memo:
            memo[x] = 0 if not preds[x] else 1 + max(level(p) for p in preds[x])
        return memo[x]

    out = [level(i) for i in range(arch.num_neurons)]
    for b, v in bias_target.items():
        out[b] = out[v] - 1
    return out


def float64_state(e: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 ``(w, h)`` for ``e`` weights and ``c`` channels."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(e, generator=gen, dtype=torch.float64)
    h = torch.randn(e, c, generator=gen, dtype=torch.float64)
    return w, h


def randomise_output(rule: LocalRule, std: float = 0.3, seed: int = 0) -> None:
    """Give the zero-initialised output layer non-zero values (a fresh rule is a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rule.out.weight.copy_(torch.randn(rule.out.weight.shape, generator=gen) * std)
        rule.out.bias.copy_(torch.randn(rule.out.bias.shape, generator=gen) * std)


def live_rule(c: int, seed: int = 0, **kw) -> LocalRule:
    """A seeded ``LocalRule(c, **kw)`` whose output layer is not zero (so it changes nets)."""
    torch.manual_seed(seed)
    rule = LocalRule(c, **kw)
    randomise_output(rule, seed=seed)
    return rule


def np_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same global torch RNG state (deterministic suite)."""
    torch.manual_seed(0)


# ---------------------------------------------------------------------- the test device
TEST_DEVICE_ENV = "GNCA_TEST_DEVICE"


def resolve_test_device() -> torch.device:
    """The device of the ``device`` tests: ``$GNCA_TEST_DEVICE`` (``cpu``, ``cuda`` or
    ``cuda:N``; ``cpu`` when unset or empty). A ValueError names what is wrong, e.g. CUDA
    requested on a machine without it."""
    name = os.environ.get(TEST_DEVICE_ENV, "").strip() or "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"{TEST_DEVICE_ENV}={name!r} is not a device: use cpu, cuda or cuda:N")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{TEST_DEVICE_ENV}={name} but CUDA is not available on this machine (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); unset {TEST_DEVICE_ENV} "
                f"to run the device tests on the CPU"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{TEST_DEVICE_ENV}={name} but this machine has {torch.cuda.device_count()} "
                f"CUDA device(s)"
            )
    return dev


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the ``device`` tests put graphs, rules, states and data (``$GNCA_TEST_DEVICE``,
    default cpu). A device that cannot be used fails each such test with one clear line
    instead of silently testing the CPU."""
    try:
        return resolve_test_device()
    except ValueError as err:
        pytest.fail(str(err), pytrace=False)


def on_device(t: torch.Tensor, device: torch.device) -> bool:
    """Whether ``t`` lives on ``device`` (``cuda`` means the current CUDA device)."""
    if t.device.type != device.type:
        return False
    if device.index is None:
        return t.device.type == "cpu" or t.device.index == torch.cuda.current_device()
    return t.device.index == device.index


def pytest_report_header(config) -> str:
    try:
        dev = resolve_test_device()
    except ValueError as err:
        return f"gnca device tests: {err}"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return f"gnca device tests (-m device) run on {dev} ({name}), torch {torch.__version__}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Every test that takes the ``device`` fixture is a ``device`` test (``-m device``); when
    there are any and ``$GNCA_TEST_DEVICE`` cannot be used, the session stops with one line."""
    uses = [item for item in items if "device" in getattr(item, "fixturenames", ())]
    for item in uses:
        item.add_marker(pytest.mark.device)
    if uses:
        try:
            resolve_test_device()
        except ValueError as err:
            raise pytest.UsageError(str(err)) from None


def neighbour_counts(
    graph, neighbourhood: str = "incident", include_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|N_f(w)|, |N_b(w)|)`` per weight, each ``(E,)``, from the neurons' degrees (a second
    way of counting, checked against brute-force enumeration and used by the empty-neighbourhood
    test)."""
    from gnca.graph import NEIGHBOURHOODS, total_neurons

    n = total_neurons(graph)
    deg = {
        "in": torch.bincount(graph.dst, minlength=n),
        "out": torch.bincount(graph.src, minlength=n),
    }
    fwd, bwd = NEIGHBOURHOODS[neighbourhood]
    out = []
    for own, at, parts in (("in", graph.dst, fwd), ("out", graph.src, bwd)):
        c = sum(deg[p] for p in parts)[at].to(torch.get_default_dtype())
        c = c - 1 if own in parts else c  # a weight never counts as its own neighbour...
        out.append(c + 1 if include_self else c)  # ...unless asked to
    return out[0], out[1]


#: ``--set`` overrides that make any repo config's meta-training a few seconds (experiment tests)
TINY_TRAIN = [
    "train.steps=3",
    "train.k_min=2",
    "train.k_max=3",
    "train.batch_size=4",
    "pool.fresh=1",
    "rule.widths=[16]",
    "train.log_every=1",
    "train.device=cpu",
]


# ---------------------------------------------------------------------- configs, runs and data
REPO = Path(__file__).resolve().parents[1]
IRIS = str(REPO / "configs" / "iris.yaml")
#: ``--set`` overrides that make ``gnca train --config IRIS`` four meta-steps (command-line tests)
TINY = [
    "task.architectures=[[4,8,3]]",
    "pool.size=8",
    "pool.fresh=1",
    "train.steps=4",
    "train.batch_size=4",
    "train.k_min=2",
    "train.k_max=3",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "train.eval_nets=4",
    "train.device=cpu",
]


def error_line(err: str) -> str:
    """The one line ``gnca: error: ...`` of ``err`` (and no traceback)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err  # exactly one line, no traceback
    assert lines[0].startswith("gnca: error: ")
    return lines[0]


def tiny_config(**train) -> Config:
    """The default config shrunk to a few seconds of meta-training (4-8-3 Iris nets, a pool of
    16, 12 meta-steps on the CPU); ``train`` overrides keys of its ``train`` section."""
    from gnca.config import Config, config_from_dict, config_to_dict

    d = config_to_dict(Config())
    d["task"]["architectures"] = [[4, 8, 3]]
    d["pool"].update(size=16, fresh=1)
    d["train"].update(
        steps=12,
        batch_size=4,
        k_min=3,
        k_max=5,
        lr=3e-3,
        lr_final=None,
        log_every=4,
        checkpoint_every=4,
        eval_nets=8,
        device="cpu",
    )
    d["train"].update(train)
    return config_from_dict(d)


def rule_params(trainer: MetaTrainer) -> list[torch.Tensor]:
    """Copies of the trainer's rule parameters."""
    return [p.detach().clone() for p in trainer.rule.parameters()]


def write_idx(path: Path, magic: int, array: np.ndarray, *, gz: bool = False) -> None:
    """Write ``array`` (uint8) as an IDX file with the given magic number."""
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def fake_mnist(folder: Path, n_train: int = 30, n_test: int = 20, gz: bool = True) -> Path:
    """Small synthetic MNIST folder: random 28x28 images, labels cycling 0-9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", 2051, images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", 2049, labels, gz=gz)
    return folder
