"""Is a grown first layer low-rank, and does its rank cap the accuracy? Three checks.

For a trained MNIST rule (e.g. the one ``gnca experiment generalization`` keeps in
``<out>/rules/rule``) and a one-hidden-layer MLP ``a-b-c``, grow a few nets for the rule's horizon
and, for the first layer's weight matrix ``W1`` (``a`` inputs, ``b`` hidden neurons) of each:

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
from gnca.grow import grow


def truncate(w1: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-``r`` approximation of ``w1 (m, n)`` (Eckart-Young), same shape."""
    u, s, vh = torch.linalg.svd(w1, full_matrices=False)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


def participation_rank(s: torch.Tensor) -> float:
    """``(sum s)^2 / sum s^2`` of singular values ``s``: 1 at rank one, ``len(s)`` at most."""
    return (s.sum() ** 2 / (s**2).sum()).item()


def accuracy(net: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy of ``net`` on ``X (B, a)``, ``y (B,)``."""
    with torch.no_grad():
        return (net(X).argmax(1) == y).float().mean().item()


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
    b = sizes[1]
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
    # each net as Linear(a, b) - activation - Linear(b, c), with the weights the forward uses
    # (mean-field scaling folded in: a constant factor per layer, which changes no rank)
    grown = task.export(res)
    nets = [grown.to_sequential(g) for g in range(args.nets)]

    print("1. singular values of the grown W1")
    tops = (3, 5, 10, 15, 20)
    accs = [accuracy(net, X, y) for net in nets]
    for g, net in enumerate(nets):
        s = torch.linalg.svdvals(net[0].weight.detach())
        cum = (s**2).cumsum(0) / (s**2).sum()
        shares = " ".join(f"{r}:{cum[min(r, len(cum)) - 1]:.3f}" for r in tops)
        print(
            f"   net {g}: accuracy {accs[g]:.4f}, participation rank "
            f"{participation_rank(s):.1f}, energy in the top r: {shares}"
        )

    print("2. net 0 with W1 truncated to rank r")
    net0 = nets[0]
    w1 = net0[0].weight.detach().clone()
    for r in sorted({min(r, b) for r in (*tops, b)}):
        with torch.no_grad():
            net0[0].weight.copy_(truncate(w1, r))
        print(f"   rank {r}: {accuracy(net0, X, y):.4f}")
    with torch.no_grad():
        net0[0].weight.copy_(w1)

    print("3. a readout retrained on net 0's grown hidden features")
    features = net0[:2]  # first layer and activation: (B, a) -> (B, b)
    Xtr, ytr = task.data.X_train[: args.train], task.data.y_train[: args.train]
    with torch.no_grad():
        htr, hte = features(Xtr), features(X)
    clf = LogisticRegression(max_iter=2000).fit(htr.numpy(), ytr.numpy())
    score = clf.score(hte.numpy(), y.numpy())
    print(f"   retrained: {score:.4f} (grown readout {accs[0]:.4f})")


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a missing checkpoint or data folder, a bad file: one line
        raise SystemExit(f"error: {err}") from None
