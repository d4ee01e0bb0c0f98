"""Is a grown first layer low-rank, and does its rank cap the accuracy? Three checks.

For a trained MNIST rule (e.g. the one ``gnca experiment generalization`` keeps in
``<out>/rules/rule``) and a one-hidden-layer MLP ``a-b-c``, grow a few nets for the rule's horizon
and, for the first layer's weight matrix ``W1 (a, b)`` of each:

1. its singular values: the participation rank ``(sum s)^2 / sum s^2`` and the share of the
   energy ``sum s^2`` in the top 3 / 5 / 10 / 15 / 20 directions;
2. test accuracy with ``W1`` of net 0 truncated to rank r (everything else as grown): if a small
   r loses nothing, the grown filters span only r directions;
3. a logistic-regression readout retrained on net 0's grown hidden features: how far the grown
   readout is from the best one for those features.

    GNCA_DATA=../shared/data/mnist python examples/rank_diagnostics.py \\
        results/generalization/mnist_cpu/rules/rule/last.pt --sizes 196-32-10
"""

from __future__ import annotations

import argparse

import torch
from sklearn.linear_model import LogisticRegression

from gnca.build import load_trained
from gnca.forward import TASK_ACTIVATIONS, effective_weights
from gnca.grow import grow


def truncate(w1: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-``r`` approximation of ``w1 (a, b)`` (Eckart-Young), shape ``(a, b)``."""
    u, s, vh = torch.linalg.svd(w1, full_matrices=False)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


def participation_rank(w1: torch.Tensor) -> float:
    """``(sum s)^2 / sum s^2`` of the singular values of ``w1 (a, b)``: 1 at rank one, b at most."""
    s = torch.linalg.svdvals(w1)
    return (s.sum() ** 2 / (s**2).sum()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--sizes", default="196-32-10", help="a one-hidden-layer MLP a-b-c")
    p.add_argument("--nets", type=int, default=3)
    p.add_argument("--train", type=int, default=20000, help="training images for the readout")
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split("-")]
    if len(sizes) != 3:
        raise SystemExit(f"--sizes must be a one-hidden-layer MLP a-b-c, got {args.sizes}")
    a, b, _ = sizes
    torch.set_num_threads(1)
    trained = load_trained(args.checkpoint, device="cpu")
    task = trained.task
    X, y = task.data.X_test, task.data.y_test
    res = grow(
        trained.rule,
        task.mlp(sizes),
        args.nets,
        trained.cfg.train.k_max,
        trained.init,
        generator=torch.Generator().manual_seed(0),
    )
    graph, w = res.graph, res.w.view(args.nets, -1)
    grown_acc = task.accuracy(graph, res.w, X, y)
    w1 = w[:, : a * b].view(args.nets, a, b)

    print("1. singular values of the grown W1")
    tops = (3, 5, 10, 15, 20)
    for g in range(args.nets):
        s2 = torch.linalg.svdvals(w1[g]) ** 2
        cum = s2.cumsum(0) / s2.sum()
        shares = " ".join(f"{r}:{cum[min(r, len(cum)) - 1]:.3f}" for r in tops)
        print(
            f"   net {g}: accuracy {grown_acc[g]:.4f}, participation rank "
            f"{participation_rank(w1[g]):.1f}, energy in the top r: {shares}"
        )

    print("2. net 0 with W1 truncated to rank r")
    for r in sorted({min(r, b) for r in (*tops, b)}):
        cut = w.clone()
        cut[0, : a * b] = truncate(w1[0], r).flatten()
        acc = task.accuracy(graph, cut.flatten(), X, y)[0].item()
        print(f"   rank {r}: {acc:.4f}")

    print("3. a readout retrained on net 0's grown hidden features")
    eff = effective_weights(graph, res.w, task.fan_in_ref).view(args.nets, -1)[0]
    act = TASK_ACTIVATIONS[task.activation]

    def hidden(x: torch.Tensor) -> torch.Tensor:
        """``(B, b)`` hidden activations of net 0 on ``x (B, a)``."""
        return act(x @ eff[: a * b].view(a, b) + eff[a * b : a * b + b])

    w2 = eff[a * b + b :]
    dense = hidden(X) @ w2[: b * sizes[2]].view(b, sizes[2]) + w2[b * sizes[2] :]
    if not torch.allclose(dense, task.logits(graph, res.w, X)[0], atol=1e-4):
        raise SystemExit("the weight layout is not W1, b1, W2, b2: the dense forward disagrees")
    Xtr, ytr = task.data.X_train[: args.train], task.data.y_train[: args.train]
    clf = LogisticRegression(max_iter=2000).fit(hidden(Xtr).numpy(), ytr.numpy())
    score = clf.score(hidden(X).numpy(), y.numpy())
    print(f"   retrained: {score:.4f} (grown readout {grown_acc[0]:.4f})")


if __name__ == "__main__":
    main()
