"""Data-parallel meta-training: 2 gloo processes on 127.0.0.1 against single-process training.

One spawn of two workers runs every two-process scenario (process start-up dominates the cost):
the rule and gradients match single-process training (pool off: several meta-steps; pool on:
the first meta-step, whose pool states are all the same seed), resume is exact at the same world
size and works across world sizes, :func:`spread` gathers in order and reports failures on every
rank, and a rank that dies stops the other cleanly with the last checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import gnca.distributed as gd
from gnca.checkpoint import load_checkpoint
from gnca.cli import main
from gnca.config import Config, config_from_dict, config_to_dict, save_config
from gnca.trainer import MetaTrainer

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


def tiny_config(pool: bool = True, **train) -> Config:
    d = config_to_dict(Config())
    d["task"]["architectures"] = [[4, 8, 3], [4, 5, 3]] if not pool else [[4, 8, 3]]
    d["rule"].update(hidden_channels=4, widths=[16])
    if pool:
        d["pool"].update(size=8, fresh=1, damage=1)
    else:
        d["pool"].update(size=0, fresh=0)
    d["train"].update(
        steps=6,
        batch_size=4,
        k_min=2,
        k_max=4,
        lr=3e-3,
        lr_final=None,
        log_every=2,
        checkpoint_every=2,
        eval_nets=4,
        device="cpu",
    )
    d["train"].update(train)
    return config_from_dict(d)


def senses_config() -> Config:
    """A data-reading rule with per-net label permutations (no pool: pooled runs sample other
    states in two processes after the first meta-step)."""
    d = config_to_dict(tiny_config(pool=False))
    d["rule"].update(senses=["act", "hebb", "error", "delta", "loss"], sense_batch=8)
    d["train"]["permute_labels"] = True
    return config_from_dict(d)


def augmented_config() -> Config:
    """:func:`senses_config` with per-net orthogonal feature maps and class subsets (their
    draws are made for the whole batch, each rank keeps its rows)."""
    d = config_to_dict(senses_config())
    d["train"].update(feature_transform="orthogonal", class_subsets=2)
    return config_from_dict(d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_grads(trainer: MetaTrainer) -> list[list[torch.Tensor]]:
    """Record the (all-reduced) gradients of every meta-step, before normalisation."""
    seen: list[list[torch.Tensor]] = []
    process = trainer._process_grads

    def spy() -> None:
        seen.append([p.grad.detach().clone() for p in trainer.rule.parameters()])
        process()

    trainer._process_grads = spy  # type: ignore[method-assign]
    return seen


def params(trainer: MetaTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.rule.parameters()]


def perturb(trainer: MetaTrainer) -> MetaTrainer:
    """Make the rule act (a fresh rule's zero last layer leaves every net as it is)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in trainer.rule.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return trainer


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x


# ---------------------------------------------------------------------- the two-process worker
def _worker(rank: int, port: int, tmp: str, single_ckpt: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    out: dict = {}
    tmp_dir = Path(tmp)
    gd.init_distributed(rdzv_timeout=120, timeout=120)
    try:
        # 1. pool off, two architectures: several meta-steps
        tr = gd.DistributedMetaTrainer(tiny_config(pool=False))
        grads = record_grads(tr)
        for _ in range(3):
            tr.meta_step()
        out["nopool"] = {
            "params": params(tr),
            "grads": grads,
            "losses": [s.loss for s in tr.history],
            "accs": [s.accuracy for s in tr.history],
        }
        tr.loss_ema = 1e-6  # every real loss is now a spike: both ranks must roll back
        before = params(tr)
        out["rollback"] = tr.meta_step().skipped and all(
            torch.equal(p, q) for p, q in zip(before, params(tr), strict=True)
        )
        # 2. pool on, with fresh seeds and damage: the first meta-step
        tr = perturb(gd.DistributedMetaTrainer(tiny_config()))
        grads = record_grads(tr)
        tr.meta_step()
        sd = tr.state_dict()
        out["pool"] = {
            "params": params(tr),
            "grads": grads,
            "pools": sd["pools"] if sd is not None else None,
            "local_pool": tr.pools[0].size,
        }
        # 2b. a rule that reads data, with label permutations per net
        tr = gd.DistributedMetaTrainer(senses_config())
        for _ in range(2):
            tr.meta_step()
        out["senses"] = {"params": params(tr), "losses": [s.loss for s in tr.history]}
        # 2c. with feature transforms and class subsets too
        tr = gd.DistributedMetaTrainer(augmented_config())
        for _ in range(2):
            tr.meta_step()
        out["augmented"] = {"params": params(tr), "losses": [s.loss for s in tr.history]}
        # 3. resume at the same world size is exact
        tr = gd.DistributedMetaTrainer(tiny_config())
        for _ in range(2):
            tr.meta_step()
        tr.save(tmp_dir / "w2.pt")
        for _ in range(2):
            tr.meta_step()
        again = gd.DistributedMetaTrainer.from_checkpoint(tmp_dir / "w2.pt")
        for _ in range(2):
            again.meta_step()
        out["resume_exact"] = all(
            torch.equal(p, q) for p, q in zip(params(tr), params(again), strict=True)
        ) and all(
            torch.equal(a.w, b.w) and torch.equal(a.loss, b.loss)
            for a, b in zip(tr.pools, again.pools, strict=True)
        )
        # 4. resume a single-process checkpoint with two processes
        tr = gd.DistributedMetaTrainer.from_checkpoint(single_ckpt)
        sd = tr.state_dict()
        out["from_single"] = {"step": tr.step, "pools": sd["pools"] if sd is not None else None}
        tr.meta_step()
        # 5. spread
        out["spread"] = gd.spread(list(range(5)), lambda x: (x, rank))
        out["spread_everywhere"] = gd.spread(["a", "b", "c"], str.upper, everywhere=True)
        try:
            gd.spread(list(range(5)), _fail_on_three)
        except gd.DistributedError as err:
            out["spread_error"] = str(err)
        torch.save(out, tmp_dir / f"rank{rank}.pt")
        # 6. rank 1 dies after meta-step 3, before the checkpoint of step 3
        tr = gd.DistributedMetaTrainer(tiny_config(checkpoint_every=1))
        run = tmp_dir / "run"
        run.mkdir(exist_ok=True)

        def die(s) -> None:
            if rank == 1 and s.step == 3:
                os._exit(3)

        try:
            tr.train(run, progress=False, callback=die)
        except RuntimeError as err:
            msg = tr.failure_message(err, run / "last.pt")
            (tmp_dir / "failure.txt").write_text(str(msg))
    finally:
        gd.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, dict, dict]:
    tmp = tmp_path_factory.mktemp("dist")
    single = MetaTrainer.from_config(tiny_config())
    for _ in range(2):
        single.meta_step()
    single.save(tmp / "single.pt")
    ctx = mp.start_processes(
        _worker,
        args=(free_port(), str(tmp), str(tmp / "single.pt")),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    for p in ctx.processes:
        p.join(timeout=240)
    codes = [p.exitcode for p in ctx.processes]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    if codes != [0, 3]:  # rank 1 exits 3 on purpose
        errors = [pickle.loads(Path(f).read_bytes()) for f in ctx.error_files if Path(f).is_file()]
        pytest.fail(f"exit codes {codes}; {''.join(errors)[-4000:]}")
    r0, r1 = (torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    return tmp, r0, r1


def assert_close_lists(a: list[torch.Tensor], b: list[torch.Tensor], **tol) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **tol)


# ---------------------------------------------------------------------- against one process
def test_two_processes_match_one_process_without_pool(two_ranks):
    _, r0, r1 = two_ranks
    ref = MetaTrainer.from_config(tiny_config(pool=False))
    grads = record_grads(ref)
    for _ in range(3):
        ref.meta_step()
    for a, b in zip(r0["nopool"]["params"], r1["nopool"]["params"], strict=True):
        assert torch.equal(a, b)  # the same rule on every rank
    assert r0["nopool"]["losses"] == r1["nopool"]["losses"]  # the same rollback decisions
    assert r0["rollback"] and r1["rollback"]
    assert len(r0["nopool"]["grads"]) == 3
    for g_dist, g_ref in zip(r0["nopool"]["grads"], grads, strict=True):
        assert_close_lists(g_dist, g_ref, rtol=1e-5, atol=1e-7)
    assert_close_lists(r0["nopool"]["params"], params(ref), rtol=1e-5, atol=1e-6)
    assert r0["nopool"]["losses"] == pytest.approx([s.loss for s in ref.history], rel=1e-6)
    assert r0["nopool"]["accs"] == pytest.approx([s.accuracy for s in ref.history], rel=1e-6)


def test_two_processes_match_one_process_with_senses(two_ranks):
    _, r0, r1 = two_ranks
    ref = MetaTrainer.from_config(senses_config())
    for _ in range(2):
        ref.meta_step()
    for a, b in zip(r0["senses"]["params"], r1["senses"]["params"], strict=True):
        assert torch.equal(a, b)
    assert_close_lists(r0["senses"]["params"], params(ref), rtol=1e-5, atol=1e-6)
    assert r0["senses"]["losses"] == pytest.approx([s.loss for s in ref.history], rel=1e-5)


def test_two_processes_match_one_process_with_augmentations(two_ranks):
    _, r0, r1 = two_ranks
    ref = MetaTrainer.from_config(augmented_config())
    for _ in range(2):
        ref.meta_step()
    for a, b in zip(r0["augmented"]["params"], r1["augmented"]["params"], strict=True):
        assert torch.equal(a, b)
    assert_close_lists(r0["augmented"]["params"], params(ref), rtol=1e-5, atol=1e-6)
    assert r0["augmented"]["losses"] == pytest.approx([s.loss for s in ref.history], rel=1e-5)


def test_first_step_with_pool_fresh_and_damage_matches_one_process(two_ranks):
    _, r0, r1 = two_ranks
    ref = perturb(MetaTrainer.from_config(tiny_config()))
    grads = record_grads(ref)
    ref.meta_step()
    assert r0["pool"]["local_pool"] == 4 and r1["pool"]["pools"] is None
    assert_close_lists(r0["pool"]["grads"][0], grads[0], rtol=1e-5, atol=1e-7)
    assert_close_lists(r0["pool"]["params"], params(ref), rtol=1e-5, atol=1e-6)
    # The same grown nets went back to the pool (at other indices): compare sorted by loss.
    got, want = r0["pool"]["pools"][0], ref.pools[0].state_dict()
    for d in (got, want):
        assert torch.isfinite(d["loss"]).sum() == 4  # the batch went back, the rest is untouched
    order_got, order_want = torch.argsort(got["loss"]), torch.argsort(want["loss"])
    assert torch.diff(want["loss"][order_want][:4]).min() > 1e-4  # a well-defined order
    for key in ("loss", "w", "h"):
        torch.testing.assert_close(got[key][order_got], want[key][order_want], rtol=1e-5, atol=1e-6)


def test_resume_is_exact_and_works_across_world_sizes(two_ranks):
    tmp, r0, _ = two_ranks
    assert r0["resume_exact"]
    # a single-process checkpoint, split over two processes and gathered again, is unchanged
    single = load_checkpoint(tmp / "single.pt")
    assert r0["from_single"]["step"] == 2
    for key in ("w", "h", "loss"):
        assert torch.equal(r0["from_single"]["pools"][0][key], single["pools"][0][key])
    # a two-process checkpoint resumes in one process
    one = MetaTrainer.from_checkpoint(tmp / "w2.pt")
    assert one.step == 2 and one.pools[0].size == 8
    assert not one.meta_step().skipped


def test_spread_gathers_in_item_order_and_reports_failures_everywhere(two_ranks):
    _, r0, r1 = two_ranks
    assert r0["spread"] == [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)]
    assert r1["spread"] is None
    assert r0["spread_everywhere"] == r1["spread_everywhere"] == ["A", "B", "C"]
    for r in (r0, r1):
        assert r["spread_error"] == (
            "item 3 (3) failed on rank 1: ValueError: three is not allowed"
        )


def test_a_dying_rank_stops_the_run_and_keeps_the_last_checkpoint(two_ranks):
    tmp, _, _ = two_ranks
    msg = (tmp / "failure.txt").read_text()
    assert msg.startswith("the distributed run stopped at meta-step 3: another process failed")
    assert "(meta-step 2) is intact" in msg and "\n" not in msg
    ck = load_checkpoint(tmp / "run" / "last.pt")
    assert ck["step"] == 2 and ck["pools"][0]["w"].shape[0] == 8
    lines = (tmp / "run" / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in lines[1:]] == [2]  # rank 0 alone wrote metrics


# ---------------------------------------------------------------------- in this process
@pytest.fixture
def one_rank(monkeypatch):
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    gd.init_distributed(rdzv_timeout=30, timeout=60)
    yield
    gd.shutdown()


def test_one_rank_is_bitwise_single_process_training(one_rank):
    cfg = tiny_config()
    cfg.task.init_noise = 0.1  # per-sample seeds: the seed draws must match too
    a, b = MetaTrainer.from_config(cfg), gd.DistributedMetaTrainer(cfg)
    for _ in range(4):
        a.meta_step()
        b.meta_step()
    for p, q in zip(params(a), params(b), strict=True):
        assert torch.equal(p, q)
    for pa, pb in zip(a.pools, b.pools, strict=True):
        assert torch.equal(pa.w, pb.w) and torch.equal(pa.h, pb.h)
    assert [s.loss for s in a.history] == [s.loss for s in b.history]
    assert gd.spread([1, 2], lambda x: -x) == [-1, -2]


def test_session_joins_only_under_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with gd.session() as ctx:
        assert ctx == gd.DistContext() and not gd.is_initialized()
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with gd.session(rdzv_timeout=30) as ctx:
        assert ctx.is_main and ctx.world_size == 1 and gd.is_initialized()
    assert not gd.is_initialized()


def test_world_size_must_divide_batch_and_pool():
    cfg = tiny_config()
    gd.check_world_size(cfg, 2)
    with pytest.raises(ValueError, match=r"^train.batch_size = 4 is not divisible .* \(3\)"):
        gd.check_world_size(cfg, 3)
    cfg.train.batch_size = 6
    cfg.pool.size = 10
    with pytest.raises(ValueError, match=r"^pool.size = 10 is not divisible .* \(3\)"):
        gd.check_world_size(cfg, 3)


def test_nproc_that_does_not_divide_the_batch_fails_before_starting(capsys, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    save_config(tiny_config(), cfg_path)
    code = main(["train", "--config", str(cfg_path), "--out", str(tmp_path), "--nproc", "3"])
    line = _error_line(capsys.readouterr().err)
    assert code == 2
    assert "train.batch_size = 4 is not divisible by the number of processes (3)" in line


def test_without_nproc_strips_only_the_flag():
    argv = ["train", "--nproc", "2", "--config", "c.yaml", "--nproc=3", "--no-progress"]
    assert gd.without_nproc(argv) == ["train", "--config", "c.yaml", "--no-progress"]


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("gnca: error: ")
    return lines[0]


@pytest.mark.parametrize("rank", [1, 0])
def test_unreachable_rendezvous_is_one_line_after_the_timeout(rank, monkeypatch, capsys, tmp_path):
    port = free_port()  # nobody listens (rank 1) / nobody joins (rank 0)
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    argv = ["train", "--config", str(REPO / "configs" / "iris.yaml"), "--out", str(tmp_path)]
    code = main([*argv, "--rdzv-timeout", "1"])
    line = _error_line(capsys.readouterr().err)
    assert code == 2
    if rank == 1:
        assert f"cannot reach the rendezvous at 127.0.0.1:{port} within 1 s (rank 1 of 2)" in line
    else:
        assert f"rendezvous at 127.0.0.1:{port} failed for rank 0 of 2 within 1 s" in line
    assert not gd.is_initialized()


# ---------------------------------------------------------------------- the command line
def test_cli_nproc_2_trains_and_resumes_with_one_process(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg_path = tmp_path / "tiny.yaml"
    save_config(tiny_config(steps=4), cfg_path)
    argv = ["train", "--config", str(cfg_path), "--out", str(run_dir), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "gnca", *argv, "--nproc", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr
    assert two.stderr.count("meta-step 4/4") == 1  # rank 0 alone logs
    assert two.stdout.count("Test accuracy") == 1
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [2, 4]
    assert load_checkpoint(run_dir / "last.pt")["step"] == 4
    # the same run continues in this single process
    assert main([*argv, "--resume", "--set", "train.steps=6"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert load_checkpoint(run_dir / "last.pt")["step"] == 6
