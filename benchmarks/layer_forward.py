"""The task forward and backward of ``G`` conv nets in one :class:`gnca.layers.LayerNet` call,
against the same ``G`` nets as plain ``torch.nn`` modules run one after the other.

Both sides compute the same outputs (checked) and the gradient of the same loss with respect
to every weight; the ratio is printed side by side, measured in one run (this machine is noisy:
compare ratios, not seconds).

    python benchmarks/layer_forward.py                  # MNIST-sized conv nets, G = 8
    python benchmarks/layer_forward.py --nets 32 --batch 64 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from gnca.layers import LayerNet
from gnca.layerspec import conv_module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="8k5s2p2-16k5s2p2", help="gnca.layerspec.conv_module spec")
    p.add_argument("--shape", default="1,28,28", help="input shape per example")
    p.add_argument("--nets", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    modules = [conv_module(args.spec, shape, 10) for _ in range(args.nets)]
    X = torch.randn(args.batch, *shape)
    net = LayerNet.from_module(modules[0], X)
    w = torch.stack([net.read_weights(m) for m in modules]).requires_grad_()

    def ours() -> torch.Tensor:
        w.grad = None
        out = net.forward(w, X)  # (G, B, 10)
        out.square().mean().backward()
        return out

    def plain() -> torch.Tensor:
        outs = []
        for m in modules:
            m.zero_grad(set_to_none=True)
            y = m(X)
            (y.square().mean() / len(modules)).backward()
            outs.append(y.detach())
        return torch.stack(outs)

    torch.testing.assert_close(ours().detach(), plain(), atol=1e-4, rtol=1e-4)
    times = {"gnca": [], "torch.nn": []}
    for _ in range(args.rounds):  # interleaved, so that both see the same machine
        for name, fn in (("gnca", ours), ("torch.nn", plain)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    print(f"{net.describe()}, {net.num_weights} weights, G = {args.nets}, batch {args.batch}, "
          f"threads {args.threads}")  # fmt: skip
    for k, v in best.items():
        print(f"  {k:9} forward + backward: {v * 1000:8.1f} ms (best of {args.rounds})")
    print(f"RESULT ratio gnca / torch.nn = {best['gnca'] / best['torch.nn']:.2f}")


if __name__ == "__main__":
    main()
