"""What reading data costs: one rule step with senses vs without, side by side.

For a batch of task nets (digits 64-32-10 and MNIST-sized 196-32-10 MLPs), times one rule step of
the data-free rule and of the same rule with all senses (``act hebb error delta loss``,
``sense_batch`` examples through the nets first), without gradients (growing) and with them
(meta-training), interleaved in one run; the table gives the ratios. Beside growing's step, one Adam
step on the same nets and as many examples (``task.loss`` on the batch, its backward and
``torch.optim.Adam.step``): what a step of the backprop baseline costs, and the reading of the
senses alone. Two rule sizes: the configs' ``C = 16``, MLP 64, and a small rule, ``C = 8``, MLP 16
(``rule.hidden_channels: 8``, ``rule.widths: [16]``), whose MLP costs about a seventh of the flops
per weight; and with Adam's descent path (``rule.descent_norm``, ``rule.descent_momentum``,
``rule.descent_only``, with ``rule.sense_norm``: the update of configs/tabular_aligned.yaml and
configs/mnist_aligned.yaml), at their size, ``C = 16``, MLP 64, and at the smallest size the path
leaves room for, ``C = 6``, MLP 16 (configs/mnist_aligned_small.yaml), each against the data-free
rule of its size; these rules take every option of their config files (bound, state bound, fire
rate, the path's), read from the files. Growing steps of a rule with that path take
:func:`gnca.rule_adam.adam_only_step`; every growing step is timed as :func:`gnca.grow.grow`
runs it: on the states in the layout the previous step hands on (channel-major on that route)
and with the senses read factored where the rule reads them so
(:meth:`gnca.LocalRule.reads_factored`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from common import Context, Section, Table, interleaved, ms

from gnca import Architecture, LocalRule, WeightGraph
from gnca.config import load_config
from gnca.data import Dataset
from gnca.senses import SENSES, SenseReader
from gnca.state import initial_state
from gnca.task import Task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: the options of a rule config that the timed rules take from it (besides its size)
RULE_OPTIONS = ("fire_rate", "bound", "state_bound", "sense_norm", "descent", "descent_only",
                "descent_norm", "descent_momentum", "descent_age")  # fmt: skip


def config_rule(name: str, **changes) -> tuple[int, list[int], dict]:
    """``(C, widths, options)`` of the rule of ``configs/<name>.yaml`` (``changes`` applied)."""
    r = replace(load_config(CONFIGS / f"{name}.yaml").rule, **changes)
    return r.hidden_channels, list(r.widths), {k: getattr(r, k) for k in RULE_OPTIONS}


#: the update of configs/mnist_aligned.yaml and mnist_aligned_small.yaml: Adam's step along the
#: delta sense, alone, and the error senses read at unit RMS per net (as the config files have it)
ADAM_PATH = config_rule("mnist_aligned_small")[2]


def _toy_task(n_in: int, n_out: int, device: torch.device) -> Task:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1024, n_in, generator=g)
    y = torch.randint(0, n_out, (1024,), generator=g)
    return Task(Dataset("toy", X, y, X[:128], y[:128], n_in, n_out, None), fan_in_ref=32)


def run_senses(sec: Section, ctx: Context) -> None:
    t = Table(
        "One rule step with all senses vs the data-free rule (same nets and rule size)",
        [
            "task nets",
            "weights",
            "rule",
            "mode",
            "data-free ms",
            "senses ms",
            "senses/data-free",
            "Adam step ms",
            "senses/Adam",
            "reading ms",
        ],
    )
    sec.tables.append(t)
    specs = [([64, 32, 10], 8), ([196, 32, 10], 16), ([784, 32, 10], 10)]
    specs = specs if not ctx.quick else [([64, 32, 10], 4)]
    rules = [(16, [64], {}), config_rule("mnist_aligned"), (8, [16], {}),
             config_rule("mnist_aligned_small"),
             config_rule("mnist_aligned_small", descent_age=True)]  # fmt: skip
    rules = rules if not ctx.quick else rules[:1]
    for sizes, nets in specs:
        for c, widths, path in rules:
            _time_one(sec, t, ctx, sizes, nets, c, widths, path)
    t.notes.append("64 examples read per rule step; times are medians of interleaved rounds.")


def _time_one(
    sec: Section,
    t: Table,
    ctx: Context,
    sizes: list[int],
    nets: int,
    c: int,
    widths: list[int],
    path: dict,
) -> None:
    dev = ctx.device
    arch = Architecture.mlp(sizes)
    graph = WeightGraph.replicate(arch, nets, device=dev)
    w, _ = initial_state(graph, c, "random", generator=torch.Generator().manual_seed(0))
    w = w.to(dev)
    h = torch.randn(w.shape[0], c, device=dev) * 0.1
    if path.get(
        "descent_norm"
    ):  # Adam's moments as growth has them: v >= 0 and bias corrections in (0, 1)
        half = torch.full_like(h[:, 0], 0.5)
        h = torch.cat([torch.stack([h[:, 0].abs(), half, h[:, 2], half], 1), h[:, 4:]], 1)
    torch.manual_seed(0)
    plain = LocalRule(c, widths=widths).to(dev)
    torch.manual_seed(0)
    reading = LocalRule(c, widths=widths, senses=list(SENSES), **path).to(dev)
    task = _toy_task(sizes[0], sizes[-1], dev)
    reader = SenseReader(list(SENSES), task, 64)
    mask = torch.ones(w.shape[0], device=dev)
    with torch.no_grad():  # growing: the states in the layout a growing step hands the next
        factored = reading.reads_factored(graph, w)  # and the senses as gnca.grow reads them
        layout = reading(graph, w, h, mask=mask, senses=reader(graph, w, h, factored=factored))[1]
    h_grow = torch.empty_like(layout).copy_(h)
    X, y = task.split("train", dev)
    param = torch.nn.Parameter(w.clone())
    opt = torch.optim.Adam([param], lr=1e-3)
    gen = torch.Generator().manual_seed(1)

    def step_adam() -> None:  # one Adam step of every net on 64 examples (as the senses read)
        idx = torch.randint(0, X.shape[0], (64,), generator=gen).to(dev)
        loss = task.loss(graph, param, X[idx], y[idx]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_plain(grad: bool) -> None:
        with torch.set_grad_enabled(grad):
            hh = h.clone().requires_grad_(grad) if grad else h
            out = plain(graph, w, hh, mask=mask)
            if grad:
                (out[0].sum() + out[1].sum()).backward()

    def step_senses(grad: bool) -> None:
        with torch.set_grad_enabled(grad):
            hh = h.clone().requires_grad_(grad) if grad else h_grow
            s = reader(graph, w, hh, factored=factored and not grad)
            out = reading(graph, w, hh, mask=mask, senses=s)
            if grad:
                (out[0].sum() + out[1].sum()).backward()

    def step_read() -> None:
        with torch.no_grad():
            reader(graph, w, h)

    for grad in (False, True):
        fns = {"plain": lambda g=grad: step_plain(g), "senses": lambda g=grad: step_senses(g)}
        if not grad:
            fns["adam"] = step_adam
            fns["read"] = step_read
        res = interleaved(
            fns,
            dev,
            ctx.rounds,
            max_seconds=max(5.0, ctx.budget.left() * 0.2),
        )
        a, b = res["plain"].median, res["senses"].median
        adam = res["adam"].median if "adam" in res else None
        read = res["read"].median if "read" in res else None
        rule = f"C={c}, MLP {'-'.join(map(str, widths))}" + (
            ", Adam path" if path.get("descent_norm") else ""
        )
        rule += ", age" if path.get("descent_age") else ""
        t.rows.append(
            [f"{nets} x {'-'.join(map(str, sizes))}", w.shape[0], rule,
             "fwd+bwd" if grad else "no grad", ms(a), ms(b), f"{b / a:.2f}x",
             ms(adam) if adam else "", f"{b / adam:.2f}x" if adam else "",
             ms(read) if read else ""]
        )  # fmt: skip
        key = f"{'-'.join(map(str, sizes))}_C{c}_mlp{'-'.join(map(str, widths))}"
        key += "_adam_path" if path.get("descent_norm") else ""
        key += "_age" if path.get("descent_age") else ""
        sec.data[f"{key}_{'grad' if grad else 'nograd'}"] = {
            "plain_s": a,
            "senses_s": b,
            "ratio": b / a,
            **({"adam_s": adam, "senses_over_adam": b / adam, "read_s": read} if adam else {}),
        }
