"""Meta-step time with and without gnca.heap.keep_heap, side by side.

Each round starts two fresh processes one after the other, one with ``GNCA_KEEP_HEAP=1`` and
one with ``GNCA_KEEP_HEAP=0`` (the order alternates between rounds). Each builds the config's
trainer, runs ``--warmup`` meta-steps, then times ``--steps`` more: wall seconds, process CPU
seconds, kernel seconds and minor page faults per meta-step, and the last loss (the two must
agree: the heap setting moves bytes, not values).

    GNCA_DATA=../shared/data/mnist python benchmarks/heap.py --config configs/mnist_long.yaml \
        --threads 2 --rounds 3 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from trees import child_result

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
import torch
from gnca.heap import keep_heap
applied = keep_heap()
from gnca.config import load_config
from gnca.trainer import MetaTrainer
config, threads, warmup, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
tr = MetaTrainer.from_config(load_config(config, sys.argv[5:]))
for _ in range(warmup):
    tr.meta_step()
r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
for _ in range(steps):
    s = tr.meta_step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT " + json.dumps({
    "applied": applied,
    "wall": (time.perf_counter() - t0) / steps,
    "cpu": (time.process_time() - c0) / steps,
    "sys": (r1.ru_stime - r0.ru_stime) / steps,
    "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
    "loss": s.loss,
}))
"""


def _run(keep: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, GNCA_KEEP_HEAP=keep, OMP_NUM_THREADS=str(args.threads))
    argv = [sys.executable, "-c", CHILD, args.config, str(args.threads), str(args.warmup)]
    return child_result([*argv, str(args.steps), *args.set], ROOT, env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mnist_long.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    got: dict[str, list[dict]] = {"1": [], "0": []}
    for r in range(args.rounds):
        for keep in ("1", "0") if r % 2 == 0 else ("0", "1"):
            res = _run(keep, args)
            got[keep].append(res)
            print(f"round {r} keep={keep}: " + json.dumps(res), flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in got.items()}
    print("| GNCA_KEEP_HEAP | s / meta-step (wall) | CPU s / meta-step | kernel s | minor faults |")
    print("|---|---|---|---|---|")
    for k in ("0", "1"):
        m = med[k]
        print(f"| {k} | {m['wall']:.3f} | {m['cpu']:.3f} | {m['sys']:.3f} | {m['faults']:.0f} |")
    print(f"ratio kept / default, wall: {med['1']['wall'] / med['0']['wall']:.2f}  "
          f"CPU: {med['1']['cpu'] / med['0']['cpu']:.2f}")  # fmt: skip
    same = {x["loss"] for v in got.values() for x in v}
    print(f"last losses: {sorted(same)} ({'identical' if len(same) == 1 else 'DIFFERENT'})")
    return 0 if len(same) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
