"""Why does a rule trained on 32-wide MLPs fail on 128-wide deep ones? Four checks.

For a trained MNIST rule with identity codes (e.g. the one ``gnca experiment generalization
--config configs/mnist_cpu.yaml`` keeps in ``<out>/rules/rule``), and
for one deep MLP of an unseen width against the same depth at the trained width:

1. test accuracy against rule steps (is the wide net just slower or faster to grow?);
2. per layer, the correlation of the wide net's grown weights with the trained-width net's at the
   nearest code positions, and their standard deviations (does the rule grow the same function
   of the codes?);
3. accuracy after rescaling the non-input weights by ``(base / fan_in) ** a`` after growing (is
   it the scale of the sums over more inputs?);
4. accuracy when the wide net's non-input weights start with the spread of the trained width.

    GNCA_DATA=../shared/data/mnist python examples/width_diagnostics.py \\
        results/generalization/mnist_cpu/rules/rule/last.pt --sizes 196-128-128-10 --base 32
"""

from __future__ import annotations

import argparse

import torch

from gnca.architecture import INPUT
from gnca.build import load_trained
from gnca.grow import grow


def layers(sizes: list[int], w: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``(name, (G, a, b) or (G, b))`` weight matrices and biases of MLP weights ``w (G, E)``."""
    out, off = [], 0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        out.append((f"W{i + 1}", w[:, off : off + a * b].view(-1, a, b)))
        off += a * b
        out.append((f"b{i + 1}", w[:, off : off + b]))
        off += b
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--sizes", default="196-128-128-10", help="the unseen wide MLP")
    p.add_argument("--base", type=int, default=32, help="the trained hidden width")
    p.add_argument("--nets", type=int, default=10)
    p.add_argument("--test", type=int, default=3000, help="test images used")
    args = p.parse_args()
    torch.set_num_threads(1)
    trained = load_trained(args.checkpoint, device="cpu")
    rule, cfg, task = trained.rule, trained.cfg, trained.task
    X, y = task.data.X_test[: args.test], task.data.y_test[: args.test]
    wide = [int(x) for x in args.sizes.split("-")]
    base = [wide[0]] + [args.base] * (len(wide) - 2) + [wide[-1]]
    init, k = trained.init, cfg.train.k_max

    def grown(sizes: list[int], steps: int = k, record=(), perturb=None):
        arch = task.mlp(sizes)
        gen = torch.Generator().manual_seed(0)
        return grow(
            rule,
            arch,
            args.nets,
            steps,
            init,
            generator=gen,
            metric=lambda g, w: task.accuracy(g, w, X, y),
            record_at=record,
            perturb=perturb,
        )

    steps = [0, 2, 4, 6, 8, 12, 16, 24, 32]
    print("1. mean test accuracy against rule steps")
    for sizes in (base, wide):
        res = grown(sizes, 32, steps)
        curve = res.curve.mean(1).tolist()
        print(
            f"   {'-'.join(map(str, sizes))}: "
            + "  ".join(f"{s}:{a:.3f}" for s, a in zip(steps, curve, strict=True))
        )

    print(f"2. grown weights of {args.sizes} at the code positions of width {args.base}")
    rb, rw = grown(base), grown(wide)
    r = wide[1] // args.base
    idx = torch.tensor([r * i + (r - 1) // 2 for i in range(args.base)])  # nearest positions
    last = len(wide) - 2
    for (name, a), (_, b) in zip(
        layers(base, rb.w.view(args.nets, -1)), layers(wide, rw.w.view(args.nets, -1)), strict=True
    ):
        layer = int(name[1:]) - 1
        sub = b
        if name.startswith("W"):
            if layer > 0:
                sub = sub[:, idx]
            if layer < last:
                sub = sub[:, :, idx]
        elif layer < last:
            sub = sub[:, idx]
        c = torch.corrcoef(torch.stack([a.flatten(), sub.flatten()]))[0, 1].item()
        print(
            f"   {name}: correlation {c:.3f}, std {a.std():.3f} (width {args.base}) "
            f"vs {b.std():.3f} (width {wide[1]})"
        )

    print("3. accuracy after rescaling the non-input weights by (base / fan_in) ** a")
    g = rw.graph
    hidden_in = (g.neuron_kind[g.src] != INPUT) & ~g.is_bias
    for a in (0.0, 0.5, 1.0):
        gain = torch.where(hidden_in, (args.base / g.fan_in.clamp(min=1)) ** a, 1.0)
        acc = task.accuracy(g, rw.w * gain, X, y).mean().item()
        print(f"   a = {a}: {acc:.3f}")

    print(f"4. non-input weights of {args.sizes} start with the spread of width {args.base}")

    def matched_start(step: int, graph, w: torch.Tensor) -> torch.Tensor:
        if step != 1:  # rescale the initial state only, before the first rule step
            return w
        hid = (graph.neuron_kind[graph.src] != INPUT) & ~graph.is_bias
        return torch.where(hid, w * (graph.fan_in.clamp(min=1) / args.base).sqrt(), w)

    res = grown(wide, k, [k], perturb=matched_start)
    default = task.accuracy(g, rw.w, X, y).mean().item()
    print(f"   accuracy at step {k}: {res.curve.mean().item():.3f} (default start: {default:.3f})")


if __name__ == "__main__":
    main()
