"""How much memory growing ``num`` nets takes, and whether the machine has it.

:func:`grow_memory` estimates the peak memory of :func:`gnca.grow.grow` for ``num`` nets of one
architecture, before anything is allocated; :func:`available_memory` reads what the device can
still give; :func:`check_grow_memory` refuses a grow that cannot fit, in one line, with the
largest ``num`` that would.

The estimate adds up the float32 / int64 tensors a grow holds at its peak (``G`` nets of ``E``
weights and ``N`` neurons each, ``C`` hidden channels, ``D = 1 + C``):

* the batched weight graph, built on the CPU: ``src``, ``dst``, ``batch`` (int64), ``fan_in``
  (float32), ``is_bias`` (bool) per weight, four int64 per neuron, plus torch-geometric's
  bookkeeping per net (measured: about 1.5 KiB per net, and 8 bytes per weight of allocator
  slack);
* the fast path's plan (three int64 rows and three float coefficients per weight), or, for a
  rule whose aggregation does not factor (``rule.aggr`` max, ...), the materialised line graph
  (two int64 per neighbour pair) and its messages;
* the state ``w (E,)``, ``h (E, C)``, and the next state a rule step writes next to it;
* a rule step's temporaries: the fire mask, the neurons' sums and their gathered table
  (``6 N D`` floats at most), and the rule MLP's activations: ``block_rows`` rows at a time on
  the CPU (a few MB, whatever ``num``), all ``G E`` rows at once on a GPU
  (``3D`` perception, ``3D + S`` more with senses, ``sum(widths) + D`` floats per weight);
* a data-reading rule's senses (``S`` floats per weight) and its forward/backward pass on
  ``rule.sense_batch`` examples;
* the accuracy on the test split: every net's forward pass on all of its rows at once (about
  three layer outputs of the widest layer per example for an MLP, two values per neuron and one
  per weight per example for other DAGs).

Checked against the peak resident memory of real CPU grows (Iris, digits with senses, MNIST,
an Iris ``max`` rule): 0.75 to 1.06 times the measured peak; ``tests/test_memory.py`` keeps it
within a factor of two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from gnca.architecture import Architecture
from gnca.graph import WeightGraph, relation_pair_count
from gnca.rule import LocalRule
from gnca.senses import sense_size

__all__ = [
    "GrowMemory",
    "GrowMemoryError",
    "available_memory",
    "check_grow_memory",
    "grow_memory",
    "human_bytes",
]

GIB = 1 << 30
#: torch-geometric's per-net bookkeeping of a batched weight graph (slices, increments, the
#: per-net attributes), measured on the CPU.
_GRAPH_PER_NET = 1536


class GrowMemoryError(MemoryError):
    """Growing that many nets needs more memory than the device has (a one-line message)."""


@dataclass(frozen=True)
class GrowMemory:
    """Estimated peak bytes of growing nets of one architecture: ``fixed + per_net * num``.

    Attributes:
        per_net: bytes that scale with the number of nets.
        fixed: bytes that do not (the CPU's block of rule MLP activations).
        graph_per_net: the part of ``per_net`` spent on the CPU whatever the device (the batched
            graph is built there before it moves).
    """

    per_net: int
    fixed: int
    graph_per_net: int

    def total(self, num: int) -> int:
        """Bytes for ``num`` nets."""
        return self.fixed + self.per_net * num

    def most_nets(self, available: int) -> int:
        """The largest number of nets that fits in ``available`` bytes (0 if none)."""
        return max((available - self.fixed) // self.per_net, 0)


def _forward_per_net(arch: Architecture, rows: int) -> int:
    """Bytes of one net's forward pass on ``rows`` examples (all at once, float32)."""
    if rows <= 0:
        return 0
    if arch.mlp_sizes is not None:  # batched matmuls: a layer's output, + bias, activation
        widest = max(arch.mlp_sizes[1:])
        return 4 * rows * 3 * widest + 9 * rows  # + argmax (int64) and the hits (bool)
    shapes = getattr(arch, "shapes", None)
    if shapes is not None:  # a layer net: every value of its program, kept to the end
        return 4 * rows * sum(math.prod(s) for s in shapes) + 9 * rows
    return 4 * rows * (2 * arch.num_neurons + arch.num_weights) + 9 * rows


def grow_memory(
    arch: Architecture,
    rule: LocalRule,
    *,
    device: torch.device | str = "cpu",
    test_rows: int = 0,
    sense_rows: int = 0,
) -> GrowMemory:
    """Estimated peak memory of :func:`gnca.grow.grow` of nets of ``arch`` with ``rule``.

    Args:
        arch: the architecture grown (``E`` weights, ``N`` neurons).
        rule: the rule that grows them (``C`` hidden channels, its widths and senses).
        device: where the nets grow (the CPU processes the rule MLP in blocks, a GPU all at
            once).
        test_rows: examples of the split the accuracy is measured on (0: no metric).
        sense_rows: examples a data-reading rule reads per step (``rule.sense_batch``; 0 for a
            data-free rule).

    Returns:
        The estimate as ``fixed + per_net * num`` bytes.
    """
    e, n, c = arch.num_weights, arch.num_neurons, rule.hidden_channels
    d = 1 + c
    s = sense_size(rule.senses)
    io = arch.num_inputs + arch.num_outputs
    graph = 29 * e + 32 * n + 8 * io + _GRAPH_PER_NET + 8 * e
    plan = 36 * e + 8 * n
    state = 4 * d * e
    # a row of the rule MLP: perception (and its copy with the senses), hidden layers, output
    mlp_row = 4 * (3 * d + (3 * d + s if s else 0) + sum(rule.widths) + d)
    blocked = torch.device(device).type == "cpu" and rule.block_rows is not None
    block = 0 if blocked else mlp_row * e
    # a step: the next state, the fire mask, the neurons' sums and table, the MLP's rows
    step = max(4 * d * e + 9 * e + 16 * d * n, 24 * d * n + 9 * e) + block
    if rule.route == "explicit":  # the line graph, materialised: (2, M) int64 per relation
        m_f, m_b = relation_pair_count(WeightGraph.from_architecture(arch), rule.neighbourhood)
        if rule.include_self:
            m_f, m_b = m_f + e, m_b + e
        plan = 16 * (m_f + m_b)  # in place of the fast path's plan
        # building it (measured: about 41 bytes per pair), or a step: the messages gathered for
        # one relation and torch-geometric's scatter (about 5 D bytes per pair), the
        # perception, the next state, the fire mask, the MLP's rows (blocked on the CPU)
        step = max(48 * (m_f + m_b), 5 * d * max(m_f, m_b) + 16 * d * e + 9 * e + block)
    if rule.senses:  # the (E, S) senses, the forward and backward pass on the sense batch
        shapes = getattr(arch, "shapes", None)  # a layer net: every value of its program
        sizes = sum(arch.mlp_sizes) if arch.mlp_sizes is not None else n
        sizes = sum(math.prod(v) for v in shapes) if shapes is not None else sizes
        step += 8 * s * e + 16 * sense_rows * sizes
    metric = 8 * e + _forward_per_net(arch, test_rows)
    per_net = graph + plan + state + max(step, metric)
    fixed = mlp_row * int(rule.block_rows) if blocked else 0
    return GrowMemory(per_net=per_net, fixed=fixed, graph_per_net=graph)


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux) in bytes, or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """What a cgroup memory limit (v2, else v1) leaves to this process, or None when there is
    no limit or it cannot be read."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            text = Path(limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:
                return None
            return max(int(text) - int(Path(usage).read_text().strip()), 0)
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes the device can still give, or None where that is unknown.

    CPU: ``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup memory limit (Linux only;
    None elsewhere). CUDA: the free memory of :func:`torch.cuda.mem_get_info` plus what torch's
    allocator holds unused. Other devices: None.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + cached)
    if dev.type != "cpu":
        return None
    found = [m for m in (_meminfo_available(), _cgroup_available()) if m is not None]
    return min(found) if found else None


def _gib(n: int) -> str:
    return f"{n / GIB:,.1f}" if n >= GIB / 10 else f"{n / GIB:.2f}"


def _name(arch: Architecture) -> str:
    if arch.mlp_sizes is not None:
        return "-".join(map(str, arch.mlp_sizes))
    return arch.describe()


def check_grow_memory(
    arch: Architecture,
    num: int,
    rule: LocalRule,
    *,
    device: torch.device | str = "cpu",
    test_rows: int = 0,
    sense_rows: int = 0,
    available: int | None = None,
    host_available: int | None = None,
) -> int:
    """Raise :class:`GrowMemoryError` when growing ``num`` nets cannot fit; else return the
    estimated bytes.

    ``available`` (bytes free on ``device``) and ``host_available`` (on the CPU, where a GPU's
    graph is built first) default to :func:`available_memory`; a device whose memory is unknown
    is not checked.
    """
    dev = torch.device(device)
    est = grow_memory(arch, rule, device=dev, test_rows=test_rows, sense_rows=sense_rows)
    need = est.total(num)
    if available is None:
        available = available_memory(dev)
    checks = [(need, available, est)]
    if dev.type != "cpu":  # the batched graph is collated on the CPU, then moved
        if host_available is None:
            host_available = available_memory("cpu")
        host = GrowMemory(per_net=est.graph_per_net, fixed=0, graph_per_net=est.graph_per_net)
        checks.append((host.total(num), host_available, host))
    for bytes_needed, free, model in checks:
        if free is not None and bytes_needed > free:
            where = "" if model is est else " of CPU memory to build the graph"
            raise GrowMemoryError(
                f"growing {num:,} nets of {_name(arch)} needs about {_gib(bytes_needed)} GiB"
                f"{where}, more than the {_gib(free)} GiB available; use a smaller --num (at "
                f"most about {model.most_nets(free):,} here)"
            )
    return need


def human_bytes(n: int) -> str:
    """``n`` bytes as GiB (or MiB below 1 GiB) for messages."""
    return f"{_gib(n)} GiB" if n >= GIB else f"{n / (1 << 20):,.0f} MiB"
