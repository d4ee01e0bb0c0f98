"""How much of a task does a one-hidden-layer MLP owe to its hidden layer? Adam three ways.

Trains, with the transfer experiment's Adam baseline (:func:`gnca.experiments.adam_baseline.
tune_adam`: batches of 64, the learning rate of ``--lrs`` that scores best on the last fifth of
the training split), ``--runs`` task nets at once in three ways: (1) the whole MLP
``F-H-classes`` (tanh, biases, ``fan_in_ref`` 32, random initial weights, as the data-reading
configs grow them), (2) only its output layer, the hidden layer kept at its random initial
weights (random features), and (3) a linear model ``F-classes``, on a dataset as ``gnca
experiment transfer`` reads it, for each of ``--steps``. Every cell is the mean test accuracy
of the nets. A grown net whose accuracy sits at rows 2 and 3 while row 1 climbs has a hidden
layer that does not learn features.

    python examples/adam_readout.py --dataset classification --dataset mnist1d
"""

from __future__ import annotations

import argparse

import torch

from gnca import Architecture, WeightGraph
from gnca.architecture import OUTPUT
from gnca.build import make_dataset
from gnca.config import DataConfig
from gnca.data import DataError
from gnca.experiments.adam_baseline import ADAM_LRS, Tuned, tune_adam
from gnca.state import initial_state
from gnca.task import Task

MODES = ("full", "readout", "linear")


def train(task: Task, mode: str, steps: int, lrs: tuple[float, ...], runs: int, seed: int = 0,
          hidden: int = 32) -> tuple[WeightGraph, torch.Tensor, Tuned]:  # fmt: skip
    """``runs`` nets of ``mode`` trained for ``steps`` Adam steps of 64: the graph, the
    ``(E_total,)`` initial weights and what :func:`tune_adam` found."""
    d = task.data
    sizes = [d.n_features, d.n_classes] if mode == "linear" else [d.n_features, hidden, d.n_classes]
    graph = WeightGraph.replicate(Architecture.mlp(sizes, bias=task.bias), runs)
    w0, _ = initial_state(graph, 1, "random", generator=torch.Generator().manual_seed(seed))
    trainable = graph.neuron_kind[graph.dst] == OUTPUT if mode == "readout" else torch.ones_like(
        w0, dtype=torch.bool)  # fmt: skip
    X, y = task.split("train", "cpu")
    return graph, w0, tune_adam(task, graph, w0, trainable, [64] * steps, seed, lrs, X, y, 0.2)


def table(
    dataset: str, steps: list[int], lrs: tuple[float, ...], runs: int, hidden: int = 32
) -> dict[str, list[float]]:
    """``mode -> [mean test accuracy at each of steps]``."""
    task = Task(make_dataset(DataConfig(name=dataset)), "tanh", fan_in_ref=32)
    Xt, yt = task.split("test", "cpu")
    out: dict[str, list[float]] = {}
    for mode in MODES:
        out[mode] = []
        for n in steps:
            graph, _, tuned = train(task, mode, n, lrs, runs, hidden=hidden)
            out[mode].append(float(task.batched_accuracy(graph, tuned.w, Xt, yt).mean()))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", action="append", help="repeatable (default classification)")
    p.add_argument("--steps", default="200,2000", help="Adam steps, comma-separated")
    p.add_argument("--lrs", default=",".join(f"{x:g}" for x in ADAM_LRS),
                   help="learning rates tried (default the transfer experiment's)")  # fmt: skip
    p.add_argument("--runs", type=int, default=3, help="nets per cell (default 3)")
    p.add_argument("--hidden", type=int, default=32, help="hidden width (default 32)")
    args = p.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",")]
        lrs = tuple(float(s) for s in args.lrs.split(","))
    except ValueError:
        p.error(f"--steps and --lrs take comma-separated numbers, got {args.steps!r}, {args.lrs!r}")
    if min(steps) < 1 or min(lrs) <= 0 or args.runs < 1 or args.hidden < 1:
        p.error("--steps, --runs and --hidden must be >= 1 and --lrs > 0")
    torch.set_num_threads(1)
    print(f"{'dataset':16s} {'Adam trains':12s} " + " ".join(f"{n:>8d}" for n in steps))
    for name in args.dataset or ["classification"]:
        try:
            rows = table(name, steps, lrs, args.runs, args.hidden)
        except DataError as err:
            raise SystemExit(f"adam_readout.py: {err}") from None
        for mode, row in rows.items():
            print(f"{name:16s} {mode:12s} " + " ".join(f"{a:8.3f}" for a in row))


if __name__ == "__main__":
    main()
