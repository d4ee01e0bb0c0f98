"""Commits checked out side by side: the shared piece of the before/after benchmarks."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: stands for the working tree as it is (uncommitted changes included)
WORKTREE = "WORKTREE"


@contextmanager
def worktrees(revs: Sequence[str], prefix: str = "gnca-trees-") -> Iterator[dict[str, Path]]:
    """Each of ``revs`` checked out (detached) in a temporary ``git worktree``, by rev;
    :data:`WORKTREE` maps to the repository itself. Removed again on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        trees: dict[str, Path] = {}
        try:
            for rev in revs:
                if rev in trees:
                    continue
                if rev == WORKTREE:
                    trees[rev] = ROOT
                    continue
                path = Path(tmp) / f"tree{len(trees)}"
                subprocess.run(
                    ["git", "worktree", "add", "--detach", "-f", str(path), rev],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
                trees[rev] = path
            yield trees
        finally:
            for path in trees.values():
                if path != ROOT:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(path)],
                        cwd=ROOT,
                        capture_output=True,
                    )


def child_result(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run ``argv`` in ``cwd`` with ``env`` and return the JSON of its ``RESULT {...}`` line
    (the protocol of the benchmarks' child processes); a failing child raises."""
    out = subprocess.run(
        list(argv), cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])
