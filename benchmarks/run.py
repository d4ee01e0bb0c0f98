"""The gnca benchmark runner: every section in one process, tables to a folder.

Sections, in the order they run (``--sections`` picks some):

* ``scaling``: one rule step vs the number of weights (MLPs, skip DAG), fast path vs the
  materialised line graph, a batch of nets vs a Python loop (``benchmarks/scaling.py``);
* ``floor``: a whole step vs the rule MLP alone on the same rows (``benchmarks/scaling.py``);
* ``grow``: growing 100 nets with a trained rule vs training 100 nets with Adam to the same
  test accuracy, Iris and MNIST, and digits with a rule that reads data
  (``benchmarks/grow_vs_adam.py``);
* ``memory``: peak memory of one meta-step vs the unroll length, with and without
  checkpointing (``benchmarks/memory.py``);
* ``options``: ``torch.compile`` and bf16 autocast of the step (``benchmarks/scaling.py``);
* ``senses``: one rule step of a rule that reads data vs the data-free rule
  (``benchmarks/senses_cost.py``).

Every section is independent: one that fails or runs out of time is marked so and the others
still run. ``results.json`` and ``results.md`` in ``--out`` are rewritten after each section.

Examples::

    python benchmarks/run.py --quick --out results/quick          # a few minutes, CPU
    python benchmarks/run.py --out results/cpu --iris-checkpoint runs/iris/last.pt
    python benchmarks/run.py --device cuda --budget 330 --out "$OUT"   # see benchmarks/gpu.sh
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):  # run from a plain checkout: gnca need not be installed
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from common import Budget, Context, Results, environment, log  # noqa: E402

from gnca.heap import keep_heap  # noqa: E402

SECTIONS = ("scaling", "floor", "grow", "memory", "options", "senses")
#: Relative share of a time budget per section (``--budget``).
SHARES = {
    "scaling": 0.2,
    "floor": 0.13,
    "grow": 0.3,
    "memory": 0.12,
    "options": 0.25,
    "senses": 0.05,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    ap.add_argument("--out", default=None, help="folder for results.json / results.md")
    ap.add_argument("--quick", action="store_true", help="small sizes, few rounds (a smoke run)")
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (default: none)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, quick 3)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's)"
    )
    ap.add_argument("--iris-checkpoint", default=None, help="a trained Iris rule (gnca train)")
    ap.add_argument("--mnist-checkpoint", default=None, help="a trained MNIST rule")
    ap.add_argument(
        "--digits-senses-checkpoint",
        default=None,
        help="a digits rule that reads data (configs/digits_senses.yaml); grow skips it without",
    )
    ap.add_argument(
        "--grow-tasks",
        default="iris,mnist,digits_senses",
        help="comma-separated cases of the grow section (default all three)",
    )
    ap.add_argument(
        "--mnist-dir",
        default=None,
        help="MNIST IDX folder (default $GNCA_DATA, then ../shared/data/mnist)",
    )
    ap.add_argument(
        "--train-seconds",
        type=float,
        default=None,
        help="meta-training time for a rule when no checkpoint is given (default 240, quick 20)",
    )
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile in options")
    ap.add_argument("--explicit-gb", type=float, default=8.0, help="CPU memory for line graphs")
    ap.add_argument(
        "--keep-heap",
        action="store_true",
        help="reuse freed memory as every gnca command does (gnca.heap.keep_heap; glibc only)",
    )
    args = ap.parse_args(argv)
    unknown = [s for s in args.sections.split(",") if s and s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    grow_tasks = ("iris", "mnist", "digits_senses")  # grow_vs_adam.TASKS, without its imports
    args.grow_tasks = [t for t in args.grow_tasks.split(",") if t]
    bad = [t for t in args.grow_tasks if t not in grow_tasks]
    if bad:
        ap.error(f"unknown grow tasks {bad}; choose from {', '.join(grow_tasks)}")
    return args


def resolve(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but CUDA is not available here")
        if dev.index is None:  # an explicit index: torch.cuda.set_device needs one
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def main(argv: list[str] | None = None) -> Results:
    args = parse_args(argv)
    dev = resolve(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 numbers are fp32
    out = args.out or str(ROOT / "results" / ("quick" if args.quick else dev.type))
    rounds = args.rounds or (3 if args.quick else 7)
    budget = Budget(args.budget)
    ctx = Context(
        dev,
        args.quick,
        budget,
        rounds,
        {
            "iris_checkpoint": args.iris_checkpoint,
            "mnist_checkpoint": args.mnist_checkpoint,
            "digits_senses_checkpoint": args.digits_senses_checkpoint,
            "grow_tasks": args.grow_tasks,
            "mnist_dir": args.mnist_dir,
            "train_seconds": args.train_seconds,
            "compile": not args.no_compile,
            "explicit_gb": args.explicit_gb,
            "out": out,
        },
    )
    command = "python benchmarks/run.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    env = environment(dev)
    if args.keep_heap:
        env["keep_heap"] = keep_heap()  # False where it does not apply (not glibc)
    results = Results(out, env, command)
    results.write()
    log(f"gnca benchmarks on {dev} -> {out} (budget {args.budget or 'none'} s)")
    wanted = [s for s in SECTIONS if s in args.sections.split(",")]
    for i, name in enumerate(wanted):
        if budget.left() < 5:
            sec = results.run(name, lambda s: None)
            sec.status = "skipped"
            sec.note("no time left in the budget")
            continue
        # each section gets its share of what is left, so a slow one cannot starve the rest;
        # time a section does not use goes to the following ones
        share = SHARES[name] / sum(SHARES[n] for n in wanted[i:])
        sub = Budget(budget.left() * share) if args.budget else budget
        sctx = dataclasses.replace(ctx, budget=sub)
        results.run(name, lambda s, name=name, sctx=sctx: section(name)(s, sctx))
    log(f"done in {budget.elapsed():.0f} s; tables in {os.path.join(out, 'results.md')}")
    return results


def section(name: str):
    """The function that runs section ``name`` (imported lazily: a section whose imports fail
    on some machine is reported as an error without stopping the others)."""
    if name in ("scaling", "floor", "options"):
        import scaling

        return {
            "scaling": scaling.run_scaling,
            "floor": scaling.run_floor,
            "options": scaling.run_options,
        }[name]
    if name == "senses":
        import senses_cost

        return senses_cost.run_senses
    if name == "grow":
        import grow_vs_adam

        return grow_vs_adam.run_grow
    import memory

    return memory.run_memory


if __name__ == "__main__":
    main()
