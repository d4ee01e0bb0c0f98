"""Where a meta-step on conv nets spends its time, against plain ``torch.nn``, side by side.

One process builds the trainer of a conv config (``configs/conv_digits.yaml`` by default) and
times, interleaved round by round on one thread (process CPU time, median over rounds):

* ``meta-step``: one whole meta-step (``MetaTrainer.meta_step``: K rule steps, the task loss,
  the backward pass, the optimiser);
* ``task fwd+bwd (gnca)``: the meta-loss part alone, :meth:`gnca.layers.LayerNet.forward` of
  the ``G`` nets of every training architecture on the meta-loss batch, and its backward to
  the weights;
* ``task fwd+bwd (torch.nn)``: the same ``G`` nets as ``torch.nn`` modules holding the same
  weights, one after the other, forward and backward on the same batch;
* ``rule steps``: ``K`` rule steps alone (forward and backward), the part ``torch.nn`` has no
  counterpart for.

Then the perception's cost per weight on conv nets of growing channel width (``O(E)``: the
nanoseconds per weight stay flat while ``E`` grows about 15-fold).

    python benchmarks/conv_step.py                                  # digits conv nets
    GNCA_DATA=~/data/mnist python benchmarks/conv_step.py --config configs/conv_mnist.yaml
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from gnca.config import load_config
from gnca.layerspec import conv_module
from gnca.perception import perceive
from gnca.trainer import MetaTrainer


def cpu_time(fn: Callable[[], object]) -> float:
    """Process CPU seconds of one call of ``fn``."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/conv_digits.yaml")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=int, default=None, help="rule steps (default: the config's k_max)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(args.config, ["train.eval_nets=1"])
    tr = MetaTrainer.from_config(cfg)
    task, rule = tr.task, tr.rule
    k = args.k or cfg.train.k_max
    g = cfg.train.batch_size
    nets = [a for a in tr.archs if hasattr(a, "read_weights")]  # the training layer nets
    if len(nets) != len(tr.archs):
        raise SystemExit(f"{args.config}: every training architecture must be a layer net")
    shape = nets[0].in_shape
    X, y = task.split("train")
    X = X[: cfg.data.batch_size].view(-1, *shape)
    y = y[: cfg.data.batch_size]
    specs = [s.removeprefix("conv:") for s in cfg.task.layers]
    modules = [[conv_module(s, shape, task.n_classes, activation=cfg.task.activation)
                for _ in range(g)] for s in specs]  # fmt: skip
    ws = [torch.stack([n.read_weights(m) for m in ms]).requires_grad_()
          for n, ms in zip(nets, modules, strict=True)]  # fmt: skip
    graphs = [n.weight_graph(g) for n in nets]
    hs = [0.1 * torch.randn(gr.src.numel(), rule.hidden_channels) for gr in graphs]

    def gnca_task() -> None:
        for n, w in zip(nets, ws, strict=True):
            w.grad = None
            out = n.forward(w, X)  # (G, B, classes)
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat(g))
            loss.backward()

    def plain_task() -> None:
        for m in (m for ms in modules for m in ms):
            m.zero_grad(set_to_none=True)
            (torch.nn.functional.cross_entropy(m(X), y) / g).backward()

    def rule_steps() -> None:
        rule.zero_grad(set_to_none=True)
        for gr, w, h in zip(graphs, ws, hs, strict=True):
            ww, hh = w.detach().reshape(-1), h
            for _ in range(k):
                ww, hh = rule(gr, ww, hh)
            (ww.square().mean() + hh.square().mean()).backward()

    parts = {
        "meta-step": tr.meta_step,
        "task fwd+bwd (gnca)": gnca_task,
        "task fwd+bwd (torch.nn)": plain_task,
        f"rule steps (K = {k})": rule_steps,
    }
    for fn in parts.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            times[name].append(cpu_time(fn))
    med = {name: statistics.median(v) for name, v in times.items()}
    plain = med["task fwd+bwd (torch.nn)"]
    e = sum(n.num_weights for n in nets)
    print(f"{args.config}: {len(nets)} conv nets x G = {g} ({e * g} weights in all), batch "
          f"{X.shape[0]}, one thread, median of {args.rounds} rounds (CPU seconds)")  # fmt: skip
    for name, v in med.items():
        print(f"  {name:26} {v * 1000:9.1f} ms   {v / plain:6.2f}x torch.nn task fwd+bwd")
    print(f"RESULT task ratio gnca / torch.nn = {med['task fwd+bwd (gnca)'] / plain:.2f}")
    print(f"RESULT meta-step / torch.nn task fwd+bwd = {med['meta-step'] / plain:.1f}")

    print("\nperception per weight on conv nets of growing width (one net, forward only):")
    widths = (2, 4, 8, 16)
    rows = []
    for c in widths:
        m = conv_module(f"{c}k3p1-{2 * c}k3s2p1-{2 * c}k3p1", shape, task.n_classes)
        ln = type(nets[0]).from_module(m, X[:1])
        gr = ln.weight_graph(1)
        e = gr.src.numel()
        ww = torch.randn(e)
        hh = torch.randn(e, rule.hidden_channels)
        perceive(gr, ww, hh)  # builds and caches the plan
        n = max(1, 2_000_000 // e)
        ts = []
        for _ in range(3):
            t = time.process_time()
            for _ in range(n):
                perceive(gr, ww, hh)
            ts.append((time.process_time() - t) / n)
        rows.append((c, e, statistics.median(ts) / e * 1e9))
    for c, e, ns in rows:
        print(f"  channels {c:3d}-{2 * c:<3d}  E = {e:7d}   {ns:6.1f} ns per weight")
    print(f"RESULT perception ns/weight, widest / narrowest = {rows[-1][2] / rows[0][2]:.2f} "
          f"(E x{rows[-1][1] / rows[0][1]:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
