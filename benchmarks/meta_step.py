"""Time whole meta-steps of a config at several commits, side by side.

A meta-step is what `gnca train` repeats: the pool batch, the unrolled rule steps, the task
loss, the backward pass, the optimiser and the pool commit. Each commit is checked out into a
temporary ``git worktree``; a fresh process per commit and round imports gnca from that tree,
builds the trainer from *that tree's* copy of the config (so a config key added later does not
break the older side), runs ``--warmup`` meta-steps and then times ``--steps`` of them on one
thread, in process CPU time. Processes alternate between the commits for ``--rounds`` rounds;
the table shows the median seconds per meta-step and the ratio to the first commit.

    GNCA_DATA=../shared/data/mnist python benchmarks/meta_step.py 09bcac7 HEAD
    python benchmarks/meta_step.py 09bcac7 WORKTREE --config configs/iris.yaml --steps 20

``WORKTREE`` stands for the working tree as it is (uncommitted changes included). A commit may
carry its own overrides after ``+``, to time two settings of one tree side by side:

    python benchmarks/meta_step.py HEAD HEAD+train.precision=bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from trees import child_result, worktrees

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import torch
import gnca
torch.set_num_threads(1)
from gnca.config import load_config
from gnca.trainer import MetaTrainer
config, warmup, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
tr = MetaTrainer.from_config(load_config(config, sys.argv[4:]))
for _ in range(warmup):
    tr.meta_step()
t0 = time.process_time()
for _ in range(steps):
    tr.meta_step()
print("RESULT " + json.dumps({"s_per_step": (time.process_time() - t0) / steps,
                             "gnca": gnca.__file__}))
"""


def _time(tree: Path, config: str, warmup: int, steps: int, overrides: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-c", CHILD, str(tree / config), str(warmup), str(steps), *overrides]
    got = child_result(argv, tree, env)
    if not got["gnca"].startswith(str(tree)):
        raise RuntimeError(f"imported gnca from {got['gnca']}, not from {tree}")
    return float(got["s_per_step"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("commits", nargs="+", help="commits to compare (WORKTREE: the working tree)")
    p.add_argument("--config", default="configs/mnist.yaml", help="config, relative to the repo")
    p.add_argument("--warmup", type=int, default=2, help="untimed meta-steps first (2)")
    p.add_argument("--steps", type=int, default=5, help="timed meta-steps per process (5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args()
    times: dict[str, list[float]] = {c: [] for c in args.commits}
    with worktrees([c.split("+")[0] for c in args.commits], "gnca-meta-step-") as trees:
        for r in range(args.rounds):
            for c in args.commits:
                rev, *own = c.split("+")
                sets = [*args.set, *own]
                times[c].append(_time(trees[rev], args.config, args.warmup, args.steps, sets))
                print(f"round {r + 1}: {c} {times[c][-1]:.3f} s/step", file=sys.stderr)
    base = statistics.median(times[args.commits[0]])
    shown = args.config + "".join(f" {o}" for o in args.set)
    print(f"{shown}: process CPU seconds per meta-step, one thread, median of "
          f"{args.rounds} rounds of {args.steps} steps")  # fmt: skip
    print("| commit | s / meta-step | ratio to " + args.commits[0] + " |")
    print("|---|---|---|")
    for c in args.commits:
        m = statistics.median(times[c])
        print(f"| {c} | {m:.3f} | {m / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
