"""gnca.heap: freed CPU memory stays in the process, so a repeated large allocation stops
faulting pages in; ``GNCA_KEEP_HEAP=0`` turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gnca.heap import enabled_by_env, is_glibc

GLIBC = is_glibc()

# Allocate and free six tensors of 5-25 MiB (90 MiB, 23,040 pages of 4 KiB) ten times, as a
# meta-step allocates its activations; count the minor page faults of rounds 2-10.
CHILD = r"""
import json, resource, torch
from gnca.heap import keep_heap
applied = keep_heap()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(10):
    if i == 1:
        start = faults()
    xs = [torch.ones(n * 2**18) for n in (5, 9, 13, 17, 21, 25)]
    del xs
print(json.dumps({"applied": applied, "faults": faults() - start}))
"""


def _child(keep: str) -> dict:
    env = dict(os.environ, GNCA_KEEP_HEAP=keep, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("1", True), ("yes", True), ("0", False), ("false", False), (" OFF ", False)],
)
def test_the_env_var_turns_it_off(value: str | None, expected: bool) -> None:
    env = {} if value is None else {"GNCA_KEEP_HEAP": value}
    assert enabled_by_env(env) is expected


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_a_repeated_large_allocation_reuses_its_pages() -> None:
    kept, default = _child("1"), _child("0")
    assert kept["applied"] is True
    assert default["applied"] is False
    # glibc's defaults fault more than a whole round's 23,040 pages in again (29,388 or
    # 151,765 in 12 runs here, depending on where its dynamic mmap threshold settles); kept,
    # the pages of round 1 are reused (0-6,401 here)
    assert default["faults"] > 23_040
    assert kept["faults"] < 12_000


def test_the_command_line_applies_it(tmp_path: Path) -> None:
    """``gnca`` calls keep_heap at start-up (a no-op where the C library is not glibc)."""
    code = (
        "import gnca.heap as h; from gnca.cli import main; "
        "main(['train', '--config', 'missing.yaml']); print(h._applied)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, GNCA_KEEP_HEAP="1"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert out.strip().splitlines()[-1] == str(GLIBC)
