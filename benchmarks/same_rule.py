"""Prove that a refactor keeps the arithmetic: the same rule, bit for bit, after N meta-steps.

For each case (a repo config plus ``--set`` overrides) the script meta-trains ``--steps``
meta-steps with ``python -m gnca train`` in the working tree and in a ``git worktree`` of
``--against`` (default ``HEAD``), one fresh process each, and compares every tensor of the two
``last.pt`` files (rule parameters, Adam state, pools, random generator states) bit for bit. It
goes through the command line only, so it works across any change of the Python API.

    python benchmarks/same_rule.py --against 5a2c7ce --steps 40

Exit status 0 when every case matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from trees import worktrees

from gnca.checkpoint import leaves, same_leaf

ROOT = Path(__file__).resolve().parent.parent
# Both sides read the config files of the older commit (``--against``): a later commit may change
# what a repo config says (configs/iris.yaml became the identity-code main job), not the engine.

#: (name, config, overrides): the default Iris job, one that exercises identity codes,
#: mean-field sums, damage, code jitter and a rule bound on two architectures, a rule that
#: reads data, and one that moves its weights by Adam's path along its learned feedback.
CASES: list[tuple[str, str, list[str]]] = [
    ("iris", "configs/iris.yaml", []),
    (
        "iris-codes",
        "configs/iris.yaml",
        [
            "task.init=codes",
            "task.architectures=[[4,16,3],[4,8,8,3]]",
            "task.fan_in_ref=16",
            "task.code_jitter=0.5",
            "rule.hidden_channels=16",
            "rule.bound=0.5",
            "pool.damage=2",
            "train.k_min=4",
            "train.k_max=8",
            "data.batch_size=64",
        ],
    ),
    # a rule that reads data on three tables at once, with every sense, sense_norm, task
    # augmentations, a held-out part and a weight penalty (the senses' gradients included)
    ("tabular-senses", "configs/tabular_keeps_pace.yaml", ["train.k_min=4", "train.k_max=6"]),
    # Adam's path along the learned feedback, with sense_norm and the feedback-alignment term
    ("tabular-aligned", "configs/tabular_aligned.yaml", ["train.k_min=4", "train.k_max=6"]),
]


def train(
    tree: Path, config: str, overrides: list[str], steps: int, out: Path, configs: Path
) -> Path:
    """Meta-train in ``tree`` (its own gnca) with ``configs / config`` (the same file for both
    sides of a comparison) and return the checkpoint path."""
    cmd = [
        sys.executable,
        "-m",
        "gnca",
        "train",
        "--config",
        str(configs / config),
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
        "--set",
        f"train.steps={steps}",
        f"train.checkpoint_every={steps}",
        "train.eval_nets=2",
        "train.device=cpu",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True)
    return out / "last.pt"


def compare(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """Names of the checkpoint entries that differ (tensors compared bit for bit), and of the
    entries only one side has that do not count: non-tensor ones (e.g. a constructor argument a
    refactor records) and tensors only the newer side ``b`` records (new state, such as the
    pool's sample ages). A tensor the newer side lost is a difference."""
    da = leaves(torch.load(a, weights_only=True))
    db = leaves(torch.load(b, weights_only=True))
    diff = []
    one_sided = [
        k
        for k in sorted(set(da) ^ set(db))
        if not k.startswith("config.")
        and (not isinstance(da.get(k, db.get(k)), torch.Tensor) or k not in da)
    ]
    for key in sorted((set(da) | set(db)) - set(one_sided)):
        if key.startswith("config."):  # the resolved config may gain keys in a refactor
            continue
        if key.startswith("train_time."):  # wall and CPU seconds: a measurement, not arithmetic
            continue
        if not same_leaf(da.get(key), db.get(key)):
            diff.append(key)
    return diff, one_sided


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default="HEAD", help="commit to compare the working tree with")
    p.add_argument("--steps", type=int, default=40, help="meta-steps per case (default 40)")
    p.add_argument("--cases", default=",".join(c[0] for c in CASES), help="comma-separated")
    args = p.parse_args()
    wanted = set(args.cases.split(","))
    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="gnca-same-") as tmp,
        worktrees([args.against]) as trees,
    ):
        old = trees[args.against]
        for name, config, overrides in CASES:
            if name not in wanted:
                continue
            a = train(old, config, overrides, args.steps, Path(tmp) / f"{name}-old", old)
            b = train(ROOT, config, overrides, args.steps, Path(tmp) / f"{name}-new", old)
            diff, one_sided = compare(a, b)
            verdict = "bitwise equal" if not diff else f"DIFFER in {', '.join(diff[:6])}"
            if one_sided:
                verdict += f" (entries on one side only: {', '.join(one_sided)})"
            print(f"{name}: {args.steps} meta-steps, {args.against} vs working tree: {verdict}")
            ok &= not diff
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
