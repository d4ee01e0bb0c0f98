"""Time one rule step of gnca at several commits, side by side (before/after of an engine change).

Each commit is checked out into a temporary ``git worktree``; a fresh process per commit and round
imports gnca from that tree and times one step of the default rule on 784-100-10 and
784-1000-1000-10 on one thread, in process CPU time: without gradients (on the states in the
layout that commit's growing step returns, the senses read as its ``gnca.grow`` reads them) and
forward+backward. With ``--senses``: a small rule, ``C = 8``, MLP 16, reading all senses of 64
examples on 16 nets of 196-32-10; with ``--adam-path`` as well: the rule of
configs/mnist_aligned_small.yaml, ``C = 6``, MLP 16, moving its weights by Adam's path alone and
reading its error senses at unit RMS, with every option of that file. Each child keeps freed
memory in the process (``gnca.heap.keep_heap``, where the commit has it), as the command line
does. Processes alternate between the commits for ``--rounds`` rounds; the table shows the
median over rounds.

    python benchmarks/compare_commits.py 300f9be 612251e HEAD --rounds 3
    python benchmarks/compare_commits.py HEAD~1 HEAD --senses --rounds 5
    python benchmarks/compare_commits.py HEAD~1 HEAD --senses --adam-path --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from trees import worktrees

ROOT = Path(__file__).resolve().parent.parent

#: what both children share: imports, one thread, and the timing of one rule step both ways
PRELUDE = r"""
import json, statistics, time
import torch
import gnca
print("GNCA " + gnca.__file__)
torch.set_num_threads(1)
try:  # freed memory kept in the process, as every gnca command has it (commits that have it)
    from gnca.heap import keep_heap
    keep_heap()
except ImportError:
    pass
from gnca import Architecture, LocalRule, WeightGraph


def time_modes(rule, g, w, h, mask, rounds, make_reader=None):
    # median process time of one rule step without gradients and with them (forward and
    # backward), reading the senses first when make_reader gives a reader (a fresh one per mode)
    res = {}
    with torch.no_grad():  # growing: the states in the layout this commit's step hands the next,
        # the senses as its gnca.grow reads them (factored where the commit has that)
        fac = {"factored": True} if getattr(rule, "reads_factored", lambda *a: False)(g, w) else {}
        reader = make_reader() if make_reader else None
        hg = rule(g, w, h, mask=mask, **({"senses": reader(g, w, h, **fac)} if reader else {}))[1]
        hg = torch.empty_like(hg).copy_(h)
    for mode in ("no-grad", "fwd+bwd"):
        reader = make_reader() if make_reader else None

        def f():
            if mode == "no-grad":
                with torch.no_grad():
                    kw = {"senses": reader(g, w, hg, **fac)} if reader else {}
                    rule(g, w, hg, mask=mask, **kw)
            else:
                wr, hr = w.clone().requires_grad_(True), h.clone().requires_grad_(True)
                kw = {"senses": reader(g, wr, hr)} if reader else {}  # old commits lack senses
                a, b = rule(g, wr, hr, mask=mask, **kw)
                (a.sum() + b.sum()).backward()
        f()
        ts = []
        for _ in range(rounds):
            t0 = time.process_time()
            f()
            ts.append(time.process_time() - t0)
        res[mode] = statistics.median(ts)
    return res
"""

CHILD = (
    PRELUDE
    + r"""
torch.manual_seed(0)
rule = LocalRule(8, widths=[64])
with torch.no_grad():
    rule.out.weight.normal_(0, 0.01)
out = {}
for sizes in ([784, 100, 10], [784, 1000, 1000, 10]):
    g = WeightGraph.from_architecture(Architecture.mlp(sizes))
    e = g.num_nodes
    w = torch.randn(e) * 0.03
    h = torch.randn(e, 8) * 0.1
    mask = (torch.rand(e) < 0.8).float()
    out["-".join(map(str, sizes))] = time_modes(rule, g, w, h, mask, 20 if e < 1e6 else 3)
print("RESULT " + json.dumps(out))
"""
)

#: with ``--senses``: one step of a small rule reading all senses on 16 x 196-32-10 (64 examples)
SENSES_CHILD = (
    PRELUDE
    + r"""
from gnca.data import Dataset
from gnca.senses import SENSES, SenseReader
from gnca.task import Task
torch.manual_seed(0)
rule = LocalRule(C, widths=[16], senses=list(SENSES), **PATH)
g = WeightGraph.replicate(Architecture.mlp([196, 32, 10]), 16)
e = g.num_nodes
X, y = torch.randn(1024, 196), torch.randint(0, 10, (1024,))
task = Task(Dataset("toy", X, y, X[:128], y[:128], 196, 10, None), fan_in_ref=32)
w, h = torch.randn(e) * 0.1, torch.randn(e, C) * 0.1
if PATH:  # Adam's moments as growth has them: v >= 0, bias corrections in (0, 1)
    h[:, 0], h[:, 1], h[:, 3] = h[:, 0].abs(), 0.5, 0.5
reader = lambda: SenseReader(list(SENSES), task, 64, torch.Generator().manual_seed(1))
res = time_modes(rule, g, w, h, torch.ones(e), 20, reader)
print("RESULT " + json.dumps({"16x196-32-10 senses": res}))
"""
)


def adam_path_options() -> dict:
    """The options of the rule of configs/mnist_aligned_small.yaml besides its size, as
    keyword arguments of ``LocalRule`` (read here, with this tree's gnca; handed to the
    children as a literal, so that older commits time the same rule)."""
    sys.path.insert(0, str(ROOT))
    from senses_cost import config_rule

    c, widths, options = config_rule("mnist_aligned_small")
    assert (c, widths) == (6, [16]), "the child builds C = 6, MLP 16"
    assert not options.pop("descent_age"), "older commits have no descent_age"
    return options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("commits", nargs="+", help="commits to compare (e.g. 300f9be HEAD)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--senses",
        action="store_true",
        help="time a small rule reading all senses on 16 x 196-32-10 instead",
    )
    ap.add_argument(
        "--adam-path",
        action="store_true",
        help="with --senses: the rule of configs/mnist_aligned_small.yaml (C = 6, MLP 16, Adam's "
        "descent path alone)",
    )
    args = ap.parse_args()
    path = adam_path_options() if args.adam_path else {}
    senses_child = (
        f"C, PATH = 6, {path!r}\n" if args.adam_path else "C, PATH = 8, {}\n"
    ) + SENSES_CHILD
    shas = {
        c: subprocess.check_output(["git", "rev-parse", "--short", c], cwd=ROOT, text=True).strip()
        for c in args.commits
    }
    runs: dict[str, list[dict]] = {c: [] for c in args.commits}
    with worktrees(args.commits, "gnca-commits-") as trees:
        for r in range(args.rounds):
            for c, tree in trees.items():
                sha = shas[c]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                out = subprocess.run(  # cwd: `python -c` puts it first on sys.path
                    [sys.executable, "-c", senses_child if args.senses else CHILD],
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=str(tree),
                )
                where = next(x for x in out.stdout.splitlines() if x.startswith("GNCA "))
                assert where[5:].startswith(str(tree)), f"imported {where[5:]}, not {tree}"
                line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
                runs[c].append(json.loads(line[7:]))
                print(f"round {r + 1} {sha}: {line[7:]}", file=sys.stderr, flush=True)
    nets = list(runs[args.commits[0]][0])
    heads = [f"{n} {m} ms" for n in nets for m in ("no-grad", "fwd+bwd")]
    print("| commit | " + " | ".join(heads) + " |")
    print("|---" * (1 + 2 * len(nets)) + "|")
    for c, sha in shas.items():
        cells = []
        for n in nets:
            for m in ("no-grad", "fwd+bwd"):
                cells.append(f"{statistics.median(x[n][m] for x in runs[c]) * 1e3:.1f}")
        print(f"| {sha} ({c}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
