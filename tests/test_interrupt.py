"""Interrupting ``gnca train`` and resuming it gives the uninterrupted run, bit for bit.

Real processes receive real signals: ``tests/interrupt_driver.py`` runs the CLI and signals
itself at a chosen point of a chosen meta-step (early, in the middle of a meta-step, inside a
checkpoint write, during the final evaluation), and the distributed test sends Ctrl-C to the
whole process group of ``gnca train --nproc 2`` from outside, as a terminal does. Every tensor of
the final ``last.pt`` and every row of ``metrics.csv`` (but the seconds) must equal those of a run
that was never interrupted.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gnca.checkpoint import leaves, same_leaf

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "interrupt_driver.py"
STEPS = 16
# tiny Iris runs: logged every 4 meta-steps, checkpointed every 6 (not a multiple of 4, so that
# a checkpoint falls inside a logging window)
SETTINGS = [
    f"train.steps={STEPS}",
    "train.k_min=2",
    "train.k_max=4",
    "train.log_every=4",
    "train.checkpoint_every=6",
    "train.eval_nets=4",
    "train.batch_size=4",
    "pool.size=16",
    "pool.fresh=1",
]


def _train_args(out: Path, resume: bool = False) -> list[str]:
    common = ["--out", str(out), "--threads", "1", "--no-progress"]
    if resume:
        return ["train", "--resume", *common]
    return ["train", "--config", str(ROOT / "configs" / "iris.yaml"), "--set", *SETTINGS, *common]


def _run(args: list[str], point: str = "none", step: int = 0, sig: str = "INT"):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, str(DRIVER), point, str(step), sig, "--", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def _checkpoint(run: Path) -> dict[str, object]:
    d = leaves(torch.load(run / "last.pt", weights_only=True))
    return {k: v for k, v in d.items() if not k.startswith("train_time.")}  # wall-clock seconds


def _rows(run: Path) -> list[list[str]]:
    """``metrics.csv`` without its seconds column."""
    with open(run / "metrics.csv", newline="") as f:
        return [r[:-1] for r in csv.reader(f)]


def _differing(a: dict[str, object], b: dict[str, object]) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if not same_leaf(a.get(k), b.get(k))]


def _accuracies(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["test_accuracy"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A run that nobody interrupted."""
    out = tmp_path_factory.mktemp("interrupt") / "reference"
    done = _run(_train_args(out))
    assert done.returncode == 0, done.stderr
    return out


def _assert_same_run(run: Path, reference: Path) -> None:
    diff = _differing(_checkpoint(run), _checkpoint(reference))
    assert not diff, f"{len(diff)} checkpoint entries differ from the uninterrupted run: {diff[:8]}"
    assert _rows(run) == _rows(reference)


# (point, meta-step, signal, the meta-step the checkpoint holds afterwards, exit status)
HOPS = [
    ("draw", 1, "TERM", 1, 143),  # early: the first meta-step has drawn its batch
    ("commit", 4, "INT", 4, 130),  # mid-step: the optimiser stepped, the pools not yet updated
    ("checkpoint", 6, "INT", 6, 130),  # inside the periodic checkpoint write after meta-step 6
    # kill -9 after meta-step 8 was logged: back to the step-6 checkpoint, whose resume must not
    # log meta-step 8 a second time
    ("unroll", 9, "KILL", 6, -signal.SIGKILL),
    ("unroll", 9, "INTx2", 6, 130),  # Ctrl-C twice: stop at once, nothing saved
    ("unroll", 11, "INT", 11, 130),  # inside the unrolled growth
    ("evaluate", 0, "INT", STEPS, 130),  # training done and saved, the evaluation cut short
]


def test_interrupts_anywhere_resume_to_the_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "run"
    ref_rows = _rows(reference)
    for i, (point, step, sig, saved_at, status) in enumerate(HOPS):
        args = _train_args(run, resume=i > 0)
        done = _run(args, point, step, sig)
        where = f"{sig} at {point} of meta-step {step}"
        assert done.returncode == status, f"{where}: exit {done.returncode}\n{done.stderr}"
        d = torch.load(run / "last.pt", weights_only=True)
        assert d["step"] == saved_at, where
        if sig not in ("KILL", "INTx2"):
            assert "continue with: gnca train --resume" in done.stderr, done.stderr
        # every row logged so far is the uninterrupted run's, none repeated
        rows = _rows(run)
        assert rows == ref_rows[: len(rows)], where
    done = _run(_train_args(run, resume=True))
    assert done.returncode == 0, done.stderr
    _assert_same_run(run, reference)
    assert _accuracies(run) == _accuracies(reference)


def test_ctrl_c_to_a_distributed_run_resumes_exactly(tmp_path):
    """Ctrl-C in a terminal reaches the launcher and every rank; all ranks stop after the same
    meta-step, rank 0 saves it, and the resumed two-process run ends where an uninterrupted
    two-process run ends."""
    ref, run = tmp_path / "reference", tmp_path / "run"
    nproc = ["--nproc", "2"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "gnca"]
    done = subprocess.run(
        [*cmd, *_train_args(ref), *nproc], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(
        [*cmd, *_train_args(run), *nproc],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(f"meta-step 4/{STEPS}"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest = proc.stderr.read()
    status = proc.wait(timeout=120)
    assert status == 130, "".join(seen) + rest
    assert "continue with: gnca train --resume" in rest, rest
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 4 <= saved < STEPS
    done = subprocess.run(
        [*cmd, *_train_args(run, resume=True), *nproc],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    _assert_same_run(run, ref)


def test_a_signal_ignored_at_start_stays_ignored_and_the_other_is_caught():
    """Under nohup or as a shell's background job SIGINT arrives ignored: StopOnSignal leaves it
    so (no stop request, handler untouched, restored as it was) and still turns SIGTERM into a
    stop request."""
    code = (
        "import os, signal\n"
        "from gnca.interrupt import StopOnSignal\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "with StopOnSignal(notice=False) as stop:\n"
        "    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert not stop()\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert stop.received == signal.SIGTERM\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "with StopOnSignal(notice=False) as stop:  # not ignored: caught\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.received == signal.SIGINT\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
