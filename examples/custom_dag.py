"""Build a custom DAG in Python, meta-train a rule on it, and grow fresh nets with the rule.

    python examples/custom_dag.py            # about a minute on 2 CPU cores

Everything is built from Python objects (a task, a rule, the training settings): no config file.

The task net is not a plain MLP: four Iris features feed two hidden "branches" of different
widths, one branch also feeds the other, and the first feature skips straight to the outputs.
"""

from __future__ import annotations

import torch

from gnca import Architecture, LocalRule
from gnca.config import PoolConfig, TrainConfig
from gnca.data import load_dataset
from gnca.grow import grow
from gnca.task import Task
from gnca.trainer import MetaTrainer


def branchy_dag() -> Architecture:
    inputs = [0, 1, 2, 3]
    a = list(range(4, 10))  # branch A: 6 neurons
    b = list(range(10, 14))  # branch B: 4 neurons, fed by the inputs and by branch A
    outputs = [14, 15, 16]
    edges = [(i, j) for i in inputs for j in a]
    edges += [(i, j) for i in inputs[2:] for j in b] + [(j, k) for j in a[:3] for k in b]
    edges += [(j, o) for j in a + b for o in outputs]
    edges += [(0, o) for o in outputs]  # a skip connection from feature 0
    return Architecture.from_edges(edges, inputs, outputs, bias=True)


def main() -> None:
    torch.set_num_threads(1)
    arch = branchy_dag()
    print(arch)
    task = Task(load_dataset("iris"), activation="tanh")
    torch.manual_seed(0)  # the rule's initial parameters
    rule = LocalRule(hidden_channels=8, widths=[64], fire_rate=0.8)
    settings = TrainConfig(steps=400, k_min=20, k_max=40, lr=2e-3, device="cpu")
    trainer = MetaTrainer(rule, task, [arch], train=settings, pool=PoolConfig(size=256, fresh=2))
    trainer.train(progress=True)  # or trainer.train("runs/custom_dag"): metrics and checkpoints

    for target in (arch, task.mlp([4, 16, 3]), task.mlp([4, 8, 8, 3])):
        res = grow(
            trainer.rule,
            target,
            num=100,
            steps=settings.k_max,
            init=trainer.init,
            generator=torch.Generator().manual_seed(0),
            metric=task.metric("test"),
            record_at=[settings.k_max],
        )
        acc = res.curve[-1]
        print(f"{target.describe():<40} test accuracy of 100 grown nets: mean {acc.mean():.3f}")


if __name__ == "__main__":
    main()
