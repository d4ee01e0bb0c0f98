"""Benchmark one rule step of gnca on the CPU: fast path, rule MLP alone, explicit line graph.

For MLP task nets (with biases) it times, with and without gradients:

* ``step``: one whole :meth:`gnca.LocalRule.forward` on the fast ``O(E)`` path (perception, rule
  MLP, fire mask, update), plus ``backward`` of a scalar of its outputs in the ``fwd+bwd`` mode;
* ``mlp``: the rule's MLP alone (``rule.mlp(p)``) on a precomputed perception tensor of the same
  number of rows, the floor any perception scheme must pay;
* ``delta``: :meth:`gnca.LocalRule.delta` on the same tensor, the MLP as the step runs it
  (without gradients block by block with in-place activations, so below ``rule.mlp``);
* ``explicit``: the same step with ``path="explicit"`` (message passing over the materialised line
  graph), when the line graph fits the memory limit; otherwise the line-graph size is printed and
  the measurement is skipped.

Measurements are interleaved (one run of every variant per round), preceded by a warm-up round,
and the median over rounds is reported. Finally the step time is fitted against the number of
weights over several MLP sizes (the fast path should be linear: exponent close to 1).

Run ``python benchmarks/perception.py`` (a few minutes on 2 CPU cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from gnca import Architecture, LocalRule, WeightGraph
from gnca.graph import relation_pair_count

MAIN_SIZES = ("196-32-10", "784-100-10", "784-1000-1000-10")
SCALING_SIZES = ("784-25-10", "784-100-10", "784-400-10", "784-1000-1000-10")
MODES = ("no-grad", "fwd+bwd")


@dataclass
class Case:
    """One task-net architecture and everything needed to time a rule step on it."""

    name: str
    arch: Architecture
    graph: WeightGraph
    w: torch.Tensor
    h: torch.Tensor
    p: torch.Tensor
    explicit_ok: bool = False
    pairs: tuple[int, int] = (0, 0)
    times: dict[str, list[float]] = field(default_factory=dict)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds, explicit path only where it needs < 1 GB, no 784-1000-1000-10 backward",
    )
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, quick 3)")
    ap.add_argument("--channels", type=int, default=8, help="hidden channels C (default 8)")
    ap.add_argument("--widths", type=int, nargs="+", default=[64], help="rule MLP hidden widths")
    ap.add_argument("--fire-rate", type=float, default=0.8)
    ap.add_argument(
        "--neighbourhood", default="incident", choices=["incident", "directed", "sibling"]
    )
    ap.add_argument(
        "--explicit-mem-gb",
        type=float,
        default=None,
        help="skip the explicit path when its estimated memory exceeds this many GB "
        "(default 8, quick 1)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def parse_sizes(text: str) -> list[int]:
    return [int(s) for s in text.split("-")]


def explicit_bytes(pairs: tuple[int, int], channels: int, grad: bool) -> int:
    """Rough peak memory of the explicit path: int64 ``edge_index`` (2 x 8 bytes per line-graph
    edge, kept cached) plus one float32 message per edge (``1 + C`` values), twice with
    gradients."""
    per_edge = 16 + 4 * (1 + channels) * (2 if grad else 1)
    return sum(pairs) * per_edge


def make_case(name: str, rule: LocalRule, args: argparse.Namespace, gen: torch.Generator) -> Case:
    arch = Architecture.mlp(parse_sizes(name), bias=True)
    graph = WeightGraph.from_architecture(arch)
    e = arch.num_weights
    w = torch.randn(e, generator=gen) / math.sqrt(784)
    h = torch.randn(e, args.channels, generator=gen) * 0.1
    with torch.no_grad():
        p = rule.perceive(graph, w, h)
    pairs = relation_pair_count(graph, args.neighbourhood)
    mem = explicit_bytes(pairs, args.channels, grad=True)
    return Case(name, arch, graph, w, h, p, mem <= args.explicit_mem_gb * 1e9, pairs)


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_fn(rule: LocalRule, case: Case, grad: bool, path: str) -> Callable[[], None]:
    """One rule step (and its backward when ``grad``) on ``case``."""
    gen = torch.Generator().manual_seed(1)

    if not grad:

        def run() -> None:
            with torch.no_grad():
                rule(case.graph, case.w, case.h, generator=gen, path=path)

        return run

    w = case.w.clone().requires_grad_(True)
    h = case.h.clone().requires_grad_(True)

    def run_bwd() -> None:
        rule.zero_grad(set_to_none=True)
        w.grad = h.grad = None
        w1, h1 = rule(case.graph, w, h, generator=gen, path=path)
        (w1.sum() + h1.sum()).backward()

    return run_bwd


def mlp_fn(rule: LocalRule, case: Case, grad: bool) -> Callable[[], None]:
    """The rule MLP alone on the precomputed perception ``case.p``."""
    if not grad:

        def run() -> None:
            with torch.no_grad():
                rule.mlp(case.p)

        return run
    p = case.p.clone().requires_grad_(True)

    def run_bwd() -> None:
        rule.zero_grad(set_to_none=True)
        p.grad = None
        rule.mlp(p).sum().backward()

    return run_bwd


def delta_fn(rule: LocalRule, case: Case, grad: bool) -> Callable[[], None]:
    """:meth:`LocalRule.delta` on ``case.p``: the MLP as the step runs it (without gradients
    gnca runs it block by block with in-place activations, so it is the no-grad step's floor)."""
    if not grad:

        def run() -> None:
            with torch.no_grad():
                rule.delta(case.p)

        return run
    p = case.p.clone().requires_grad_(True)

    def run_bwd() -> None:
        rule.zero_grad(set_to_none=True)
        p.grad = None
        rule.delta(p).sum().backward()

    return run_bwd


def interleaved(
    fns: dict[str, Callable[[], None]], rounds: int, limited: dict[str, int] | None = None
) -> dict[str, float]:
    """Median seconds of each function: one warm-up run, then ``rounds`` interleaved rounds
    (functions named in ``limited`` take part in only that many rounds: slow references)."""
    limited = limited or {}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in fns.items():
            if r < limited.get(k, rounds):
                times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 5)
    if args.explicit_mem_gb is None:
        args.explicit_mem_gb = 1.0 if args.quick else 8.0
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rule = LocalRule(
        args.channels,
        widths=args.widths,
        neighbourhood=args.neighbourhood,
        fire_rate=args.fire_rate,
    )
    # a trained rule has a non-zero output layer; timing does not depend on its values
    with torch.no_grad():
        rule.out.weight.normal_(0.0, 0.01, generator=gen)
    dims = [3 + 3 * args.channels, *args.widths, 1 + args.channels]
    load0 = os.getloadavg()
    print(
        f"gnca rule step benchmark | torch {torch.__version__} | {torch.get_num_threads()} "
        f"threads | {os.cpu_count()} CPUs | {platform.machine()} {platform.processor() or ''}"
    )
    print(
        f"rule MLP {'-'.join(map(str, dims))} (C={args.channels}), {args.neighbourhood} "
        f"neighbourhood, fire_rate {args.fire_rate}, float32, median of {rounds} interleaved "
        f"rounds after a warm-up (explicit path: {min(rounds, 3)}) | load average at start "
        f"{load0[0]:.2f}"
    )
    print()

    cases = [make_case(name, rule, args, gen) for name in MAIN_SIZES]
    for c in cases:
        n_f, n_b = c.pairs
        need = explicit_bytes(c.pairs, args.channels, grad=True) / 1e9
        verdict = "fits" if c.explicit_ok else f"skipped (> {args.explicit_mem_gb:g} GB limit)"
        print(
            f"{c.name}: {c.arch.num_weights:,} weights, {args.neighbourhood} line graph "
            f"{n_f:,} forward + {n_b:,} backward edges, ~{need:.1f} GB -> explicit path {verdict}"
        )
        if c.explicit_ok:
            t0 = time.perf_counter()
            rule.line_graph(c.graph)  # built once and cached on the graph, as in training
            print(f"  line graph built in {time.perf_counter() - t0:.1f} s (not in the timings)")
    print()

    rows = []
    for mode in MODES:
        grad = mode == "fwd+bwd"
        for c in cases:
            if args.quick and grad and c.arch.num_weights > 1_000_000:
                continue
            fns = {
                "step": step_fn(rule, c, grad, "fast"),
                "mlp": mlp_fn(rule, c, grad),
                "delta": delta_fn(rule, c, grad),
            }
            if c.explicit_ok:
                fns["explicit"] = step_fn(rule, c, grad, "explicit")
            res = interleaved(fns, rounds, {"explicit": min(rounds, 3)})
            rows.append((c, mode, res))

    header = (
        f"| {'task net':<16} | {'weights':>9} | {'mode':<7} | {'step ms':>7} | {'MLP ms':>7} | "
        f"{'step/MLP':>8} | {'delta ms':>8} | {'step/delta':>10} | {'explicit ms':>11} | "
        f"{'expl/fast':>9} | {'updates/s':>9} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(s)) for s in header.split("|")[1:-1]) + "|")
    for c, mode, res in rows:
        e = c.arch.num_weights
        expl = res.get("explicit")
        ratio = f"{expl / res['step']:.1f}x" if expl else "-"
        print(
            f"| {c.name:<16} | {e:>9,} | {mode:<7} | {fmt_ms(res['step']):>7} | "
            f"{fmt_ms(res['mlp']):>7} | {res['step'] / res['mlp']:>7.2f}x | "
            f"{fmt_ms(res['delta']):>8} | {res['step'] / res['delta']:>9.2f}x | "
            f"{fmt_ms(expl):>11} | {ratio:>9} | {e / res['step'] / 1e6:>7.2f} M |"
        )
    print(
        "\nMLP: rule.mlp(p) on all rows at once. delta: rule.delta(p), the MLP as the step runs "
        "it\n(without gradients: block by block, in-place activations). updates/s: weights whose "
        f"rule output\nis computed per second (E / step time); with fire_rate {args.fire_rate} "
        "that share of them is applied."
    )

    # scaling of the fast path with the number of weights (no grad)
    print("\nscaling of one step (no grad) with the number of weights:")
    sizes = SCALING_SIZES
    scale_cases = {c.name: c for c in cases}
    fns = {}
    for name in sizes:
        c = scale_cases.get(name) or make_case(name, rule, args, gen)
        scale_cases[name] = c
        fns[name] = step_fn(rule, c, False, "fast")
        fns[name + "/mlp"] = mlp_fn(rule, c, False)
    res = interleaved(fns, rounds)
    es = np.array([scale_cases[n].arch.num_weights for n in sizes], dtype=float)
    ts = np.array([res[n] for n in sizes])
    tm = np.array([res[n + "/mlp"] for n in sizes])
    for name, e, t, m in zip(sizes, es, ts, tm, strict=True):
        print(
            f"  {name:<18} {int(e):>9,} weights  step {fmt_ms(t):>7} ms  MLP {fmt_ms(m):>7} ms  "
            f"{t / e * 1e9:6.1f} ns/weight"
        )
    slope = float(np.polyfit(np.log(es), np.log(ts), 1)[0])
    slope_m = float(np.polyfit(np.log(es), np.log(tm), 1)[0])
    print(
        f"  fitted exponent: step time ~ E^{slope:.2f} (rule MLP alone ~ E^{slope_m:.2f}); "
        "1.00 is linear"
    )
    load1 = os.getloadavg()
    print(f"\nload average at end {load1[0]:.2f} (other processes on this machine skew timings)")


if __name__ == "__main__":
    main()
