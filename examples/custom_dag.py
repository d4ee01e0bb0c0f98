"""Build a custom DAG in Python, meta-train a rule on it, and grow fresh nets with the rule.

    python examples/custom_dag.py            # about a minute on 2 CPU cores

The task net is not a plain MLP: four Iris features feed two hidden "branches" of different
widths, one branch also feeds the other, and the first feature skips straight to the outputs.
"""

from __future__ import annotations

import torch

from gnca import Architecture
from gnca.config import Config
from gnca.grow import accuracy, grow
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
    cfg = Config()
    cfg.train.steps = 400
    cfg.train.device = "cpu"
    trainer = MetaTrainer(cfg, archs=[arch])
    trainer.train(progress=True)

    X, y = trainer.data.X_test, trainer.data.y_test
    for target in (arch, Architecture.mlp([4, 16, 3]), Architecture.mlp([4, 8, 8, 3])):
        res = grow(
            trainer.rule,
            target,
            num=100,
            steps=cfg.train.k_max,
            init=trainer.init,
            generator=torch.Generator().manual_seed(0),
            metric=lambda g, w: accuracy(g, w, X, y, cfg.task.activation, cfg.task.fan_in_ref),
            record_at=[cfg.train.k_max],
        )
        acc = res.curve[-1]
        print(f"{target.describe():<40} test accuracy of 100 grown nets: mean {acc.mean():.3f}")


if __name__ == "__main__":
    main()
