"""How much of a task does a one-hidden-layer MLP owe to its hidden layer? Adam three ways.

Trains, with Adam on batches of 64, (1) the whole MLP ``F-H-classes`` (tanh), (2) only its
output layer on top of a frozen random hidden layer (random features), and (3) a linear model
``F-classes``, on a dataset as ``gnca experiment transfer`` reads it, for each of ``--steps``.
Every cell is the test accuracy at the learning rate (of ``--lrs``) that scored best on a
validation fifth of the training split, mean over ``--runs`` runs. A grown net whose accuracy
sits at rows 2 and 3 while row 1 climbs has a hidden layer that does not learn features.

    python examples/adam_readout.py --dataset classification --dataset mnist1d
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from gnca.build import make_dataset
from gnca.config import DataConfig
from gnca.data import DataError

MODES = ("full", "readout", "linear")


def train_one(
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    mode: str,
    steps: int,
    lr: float,
    seed: int,
    hidden: int = 32,
) -> nn.Module:
    """An MLP (``full``, ``readout``: only its last layer trained) or a linear model trained
    with Adam for ``steps`` batches of 64 of ``X (N, F)``, ``y (N,)``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    f = X.shape[1]
    if mode == "linear":
        net: nn.Module = nn.Linear(f, n_classes)
        params = list(net.parameters())
    else:
        net = nn.Sequential(nn.Linear(f, hidden), nn.Tanh(), nn.Linear(hidden, n_classes))
        params = list((net[2] if mode == "readout" else net).parameters())
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        i = torch.randint(0, X.shape[0], (64,), generator=gen)
        loss = nn.functional.cross_entropy(net(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def accuracy(net: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(X).argmax(1) == y).float().mean())


def table(
    dataset: str, steps: list[int], lrs: list[float], runs: int, hidden: int = 32
) -> dict[str, list[float]]:
    """``mode -> [test accuracy at each of steps]`` (learning rate picked on validation)."""
    d = make_dataset(DataConfig(name=dataset))
    X, y = d.X_train.float(), d.y_train.long()
    Xt, yt = d.X_test.float(), d.y_test.long()
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0))
    n_val = max(1, X.shape[0] // 5)
    val, fit = perm[:n_val], perm[n_val:]
    out: dict[str, list[float]] = {}
    for mode in MODES:
        row = []
        for n in steps:
            scores = []  # (validation, test) means over runs, one per learning rate
            for lr in lrs:
                nets = [train_one(X[fit], y[fit], d.n_classes, mode, n, lr, r, hidden)
                        for r in range(runs)]  # fmt: skip
                scores.append((sum(accuracy(m, X[val], y[val]) for m in nets) / runs,
                               sum(accuracy(m, Xt, yt) for m in nets) / runs))  # fmt: skip
            row.append(max(scores)[1])
        out[mode] = row
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", action="append", help="repeatable (default classification)")
    p.add_argument("--steps", default="200,2000", help="Adam steps, comma-separated")
    p.add_argument("--lrs", default="0.001,0.003,0.01,0.03,0.1", help="learning rates tried")
    p.add_argument("--runs", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--hidden", type=int, default=32, help="hidden width (default 32)")
    args = p.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",")]
        lrs = [float(s) for s in args.lrs.split(",")]
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
