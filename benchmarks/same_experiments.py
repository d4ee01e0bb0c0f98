"""Prove that a refactor keeps the experiments' numbers: the same tables, CSVs and summaries.

The three experiments (stability, robustness, generalization) run at tiny settings with
``python -m gnca experiment ...`` in a ``git worktree`` of ``--against`` (default ``HEAD``) and
in the working tree, one fresh process each, on the CPU with one thread. The script then compares
the two output folders:

* every CSV, cell by cell (except timing columns: ``seconds``);
* every Markdown table, byte for byte;
* ``summary.json``, every value except timing, environment and path fields (``seconds``,
  ``cpu_seconds``, ``environment``, ``figure``, ``checkpoint``, ``train_seconds``,
  ``train_cpu_seconds``).

Like ``benchmarks/same_rule.py`` it goes through the command line only, so it works across any
change of the Python API.

    python benchmarks/same_experiments.py --against d9db7f7 --keep /tmp/same-exp

Exit status 0 when every experiment matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trees import worktrees

ROOT = Path(__file__).resolve().parent.parent

#: meta-training settings shared by every rule (tiny, CPU)
TRAIN = ["train.eval_nets=2", "train.device=cpu", "train.log_every=10"]

#: (name, experiment, arguments): one case per experiment; generalization has a training
#: architecture outside the grid and grows its nets in three chunks.
CASES: list[tuple[str, str, list[str]]] = [
    (
        "stability",
        "stability",
        [
            "--config", "configs/iris.yaml",
            "--nopool-config", "configs/iris_nopool.yaml",
            "--num", "8",
            "--horizon-mult", "3",
        ],
    ),
    (
        "robustness",
        "robustness",
        [
            "--config", "configs/iris_damage.yaml",
            "--num", "8",
            "--zero-outs", "3",
            "--every", "2",
            "--tail", "2",
            "--search-mult", "1",
        ],
    ),
    (
        "generalization",
        "generalization",
        [
            "--config", "configs/iris_generalization.yaml",
            "--num", "8",
            "--depths", "1,3",
            "--widths", "8,16",
            "--steps", "12",
            "--chunk", "3",
        ],
    ),
]  # fmt: skip

#: summary.json keys that hold timing, environment or paths (not results)
IGNORED_KEYS = {
    "seconds",
    "cpu_seconds",
    "environment",
    "figure",
    "checkpoint",
    "train_seconds",
    "train_cpu_seconds",
}
#: CSV columns that hold timing
IGNORED_COLUMNS = {"seconds"}


def run_experiment(
    tree: Path,
    experiment: str,
    args: list[str],
    meta_steps: int,
    out: Path,
    configs_from: Path | None = None,
) -> float:
    """Run one experiment with ``tree``'s own gnca into ``out``; return its wall time.

    Config files (``configs/...``) are read from ``configs_from`` (default ``tree``), so that
    both sides of a comparison run the same configs even where a commit changed them."""
    base = configs_from or tree
    args = [str(base / a) if a.startswith("configs/") else a for a in args]
    cmd = [
        sys.executable,
        "-m",
        "gnca",
        "experiment",
        experiment,
        *args,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        "--set",
        f"train.steps={meta_steps}",
        *TRAIN,
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {tree}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _strip(obj: Any) -> Any:
    """``obj`` without the ignored keys, at every depth."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in IGNORED_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [
            {k: v for k, v in row.items() if k not in IGNORED_COLUMNS} for row in csv.DictReader(f)
        ]


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two JSON values first differ (``None`` if they are equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if (k not in a or k not in b) and ".config." in f"{where}.":
                continue  # a config key a later commit added (its default is recorded)
            if k not in a or k not in b:
                return f"{where}.{k} (one side only)"
            d = _first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def compare(old: Path, new: Path) -> tuple[list[str], list[str]]:
    """The files compared, and the differences found, between two output folders."""
    compared, diffs = [], []
    names = {p.name for p in old.iterdir() if p.is_file()} | {
        p.name for p in new.iterdir() if p.is_file()
    }
    for name in sorted(names):
        a, b = old / name, new / name
        if name.endswith(".png"):
            continue
        if not a.is_file() or not b.is_file():
            diffs.append(f"{name}: on one side only")
            continue
        compared.append(name)
        if name.endswith(".csv"):
            ra, rb = _csv_rows(a), _csv_rows(b)
            if ra != rb:
                bad = next(
                    (i for i, (x, y) in enumerate(zip(ra, rb, strict=False)) if x != y),
                    min(len(ra), len(rb)),
                )
                diffs.append(f"{name}: row {bad} differs ({len(ra)} vs {len(rb)} rows)")
        elif name.endswith(".json"):
            d = _first_difference(
                _strip(json.loads(a.read_text())), _strip(json.loads(b.read_text()))
            )
            if d:
                diffs.append(f"{name}: {d}")
        elif a.read_bytes() != b.read_bytes():
            diffs.append(f"{name}: bytes differ")
    return compared, diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default="HEAD", help="commit to compare the working tree with")
    p.add_argument("--steps", type=int, default=30, help="meta-steps per rule (default 30)")
    p.add_argument("--cases", default=",".join(c[0] for c in CASES), help="comma-separated")
    p.add_argument("--keep", help="copy both output folders here (old/ and new/)")
    args = p.parse_args()
    wanted = set(args.cases.split(","))
    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="gnca-same-exp-") as tmp,
        worktrees([args.against]) as trees,
    ):
        old = trees[args.against]
        for name, experiment, exp_args in CASES:
            if name not in wanted:
                continue
            a, b = Path(tmp) / "out-old" / name, Path(tmp) / "out-new" / name
            sa = run_experiment(old, experiment, exp_args, args.steps, a)
            sb = run_experiment(ROOT, experiment, exp_args, args.steps, b, configs_from=old)
            compared, diffs = compare(a, b)
            verdict = "identical" if not diffs else "DIFFER: " + "; ".join(diffs[:6])
            print(
                f"{name}: {args.against} vs working tree ({sa:.0f} s / {sb:.0f} s), "
                f"{len(compared)} files ({', '.join(compared)}): {verdict}"
            )
            ok &= not diffs
        if args.keep:
            keep = Path(args.keep)
            for side in ("old", "new"):
                shutil.rmtree(keep / side, ignore_errors=True)
                shutil.copytree(Path(tmp) / f"out-{side}", keep / side)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
