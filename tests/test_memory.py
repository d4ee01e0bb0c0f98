"""The memory estimate of growing nets (gnca.memory) against real peaks, and the one-line refusal
of a ``--num`` that cannot fit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import IRIS, TINY, error_line

import gnca.cli as cli
import gnca.memory as memory
from gnca import LocalRule
from gnca.architecture import Architecture
from gnca.cli import main
from gnca.memory import GrowMemoryError, check_grow_memory, grow_memory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    code = main(["train", "--config", IRIS, "--out", str(run_dir), "--no-progress", "--set", *TINY])
    assert code == 0
    return run_dir / "last.pt"


# A grow in a fresh process: its peak resident memory (the kernel's VmHWM, reset just before
# growing; it sees torch's allocations, unlike tracemalloc) above the resident memory then.
MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from gnca.archspec import parse_arch
    from gnca.build import load_trained
    from gnca.grow import grow
    from gnca.memory import grow_memory

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def resident():
        return status("VmRSS")

    def hwm():
        return status("VmHWM")

    ckpt, spec, num, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    t = load_trained(ckpt, device="cpu")
    d = t.task.data
    arch = parse_arch(spec, d.n_features, d.n_classes, True, None, dataset=d.name)
    metric = t.task.metric("test", torch.device("cpu"))
    est = grow_memory(arch, t.rule, device="cpu", test_rows=d.X_test.shape[0]).total(num)
    before = resident()
    # reset the kernel's high-water mark (VmHWM) so that the peak is the grow's alone, whatever
    # loading and importing reached before it
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = hwm() <= before + 16 * 2**20
    grow(t.rule, arch, num, steps, t.init, generator=torch.Generator().manual_seed(0),
         metric=metric, record_at=range(steps + 1))
    print(json.dumps({"estimate": est, "measured": hwm() - before, "reset": reset}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss in kB")
@pytest.mark.parametrize(("spec", "num"), [("4-16-3", 10_000), ("4-128-3", 1_200)])
def test_estimate_is_within_a_factor_of_two_of_the_measured_peak(checkpoint, spec, num):
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(checkpoint), spec, str(num), "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["reset"], r  # the high-water mark was reset: the peak is the grow's alone
    assert r["measured"] > 200 * 2**20, r  # large enough for the allocator's noise not to matter
    assert 0.5 <= r["estimate"] / r["measured"] <= 2.0, r


def test_estimate_is_linear_in_num_and_most_nets_fits():
    arch = Architecture.mlp([4, 16, 3], bias=True)
    rule = LocalRule(16, (64,))
    est = grow_memory(arch, rule, test_rows=30)
    assert est.total(10) - est.total(9) == est.per_net > 0
    assert est.fixed > 0  # the CPU's block of MLP rows
    gpu = grow_memory(arch, rule, device="cuda", test_rows=30)
    assert gpu.fixed == 0 and gpu.per_net > est.per_net  # every MLP row at once
    free = 3 * 2**30
    most = est.most_nets(free)
    assert est.total(most) <= free < est.total(most + 1)
    check_grow_memory(arch, most, rule, test_rows=30, available=free)
    with pytest.raises(GrowMemoryError, match=rf"at most about {most:,} here\)$"):
        check_grow_memory(arch, most + 1, rule, test_rows=30, available=free)


def test_unknown_available_memory_is_not_checked(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": None)
    arch = Architecture.mlp([4, 16, 3], bias=True)
    assert check_grow_memory(arch, 10**12, LocalRule(16, (64,))) > 2**50


def test_available_memory_on_linux():
    if not Path("/proc/meminfo").is_file():
        pytest.skip("no /proc/meminfo")
    free = memory.available_memory("cpu")
    assert free is not None and 0 < free < 2**60


@pytest.mark.parametrize("command", ["grow", "export", "eval"])
def test_absurd_num_is_refused_at_once_in_one_line(
    capsys, monkeypatch, checkpoint, tmp_path, command
):
    def no_growing(*args, **kwargs):
        raise AssertionError("nothing may be allocated before the refusal")

    monkeypatch.setattr("gnca.graph.WeightGraph.replicate", no_growing)
    argv = [command, "--checkpoint", str(checkpoint), "--num", "2000000000", "--arch", "4-16-3"]
    if command == "export":
        argv += ["--out", str(tmp_path / "nets.pt")]
    start = time.monotonic()
    code = main(argv)
    took = time.monotonic() - start
    assert code == 2
    line = error_line(capsys.readouterr().err)
    assert re.fullmatch(
        r"gnca: error: growing 2,000,000,000 nets of 4-16-3 needs about [\d,.]+ GiB, more than "
        r"the [\d,.]+ GiB available; use a smaller --num \(at most about [\d,]+ here\)",
        line,
    ), line
    assert took < 60  # loading the checkpoint and Iris; no growing
    assert not (tmp_path / "nets.pt").exists()


def test_the_refusal_names_the_nets_that_would_fit(capsys, monkeypatch, checkpoint):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**30)
    code = main(["grow", "--checkpoint", str(checkpoint), "--num", "100000", "--arch", "h:16"])
    assert code == 2
    from gnca.build import load_trained

    t = load_trained(checkpoint, device="cpu")
    arch = Architecture.mlp([4, 16, 3], bias=True)
    est = grow_memory(arch, t.rule, test_rows=t.task.data.X_test.shape[0])
    assert error_line(capsys.readouterr().err) == (
        f"gnca: error: growing 100,000 nets of 4-16-3 needs about "
        f"{est.total(100_000) / 2**30:.1f} GiB, more than the 1.0 GiB available; use a smaller "
        f"--num (at most about {est.most_nets(2**30):,} here)"
    )


def test_grow_counts_rule_steps_on_its_progress_bar(capsys, monkeypatch, checkpoint):
    bars: list[dict] = []

    class Bar:
        def __init__(self, args, total, desc):
            self.info = {"total": total, "desc": desc, "updates": 0, "off": args.no_progress}
            bars.append(self.info)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.info["updates"] += n

    monkeypatch.setattr(cli, "_step_bar", Bar)
    argv = ["grow", "--checkpoint", str(checkpoint), "--num", "3", "--steps", "5"]
    assert main([*argv, "--arch", "4-8-3", "--arch", "h:4"]) == 0
    assert [(b["total"], b["updates"], b["off"]) for b in bars] == [(5, 5, False)] * 2
    assert bars[0]["desc"] == "growing 3 nets of mlp 4-8-3 (+bias)"
    assert main([*argv, "--no-progress"]) == 0
    assert bars[-1]["off"] is True


def test_the_progress_bar_waits_a_second_and_respects_no_progress():
    args = cli.build_parser().parse_args(["grow", "--checkpoint", "x.pt", "--no-progress"])
    with cli._step_bar(args, 10, "growing") as bar:
        assert bar.disable
    args.no_progress = False
    with cli._step_bar(args, 10, "growing") as bar:
        assert not bar.disable and bar.delay == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_estimate_on_cuda_against_the_allocator_peak(checkpoint):
    from gnca.archspec import parse_arch
    from gnca.build import load_trained
    from gnca.grow import grow

    t = load_trained(checkpoint, device="cuda")
    d = t.task.data
    for spec, num in [("4-16-3", 200_000), ("4-128-3", 20_000)]:
        arch = parse_arch(spec, d.n_features, d.n_classes, True, None, dataset=d.name)
        est = grow_memory(arch, t.rule, device="cuda", test_rows=d.X_test.shape[0]).total(num)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        grow(t.rule, arch, num, 3, t.init, device="cuda",
             generator=torch.Generator(device="cuda").manual_seed(0),
             metric=t.task.metric("test", torch.device("cuda")), record_at=range(4))  # fmt: skip
        measured = torch.cuda.max_memory_allocated() - base
        print(f"{spec} x {num:,}: estimate {est / 2**20:.0f} MiB, peak {measured / 2**20:.0f} MiB")
        assert 0.5 <= est / measured <= 2.0, (spec, est, measured)
