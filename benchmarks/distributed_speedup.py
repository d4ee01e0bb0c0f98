"""Speed-up of data-parallel meta-training: W processes against one, same global batch.

Times meta-steps of MNIST-sized task nets (default 196-32-10: MNIST 2x2-pooled, global batch of
16 nets, K = 10) in a single process (:class:`~gnca.trainer.MetaTrainer`, what a user runs
without torch.distributed) and in ``W`` gloo processes on 127.0.0.1
(:class:`~gnca.distributed.DistributedMetaTrainer`), every process with one thread, and prints
seconds per meta-step, rank 0's CPU seconds per meta-step, and the ratio. The runs alternate
(1, W, 1, W, ...) so that a change in the machine's load hits both; the load average before each
run is printed too. The first meta-step of every run is a warm-up and is not timed.

    GNCA_DATA=../shared/data/mnist python benchmarks/distributed_speedup.py
    python benchmarks/distributed_speedup.py --set "task.architectures=[[784,100,10]]" \\
        data.downsample=1 --steps 3

Started by torchrun instead, it times the already launched process group (and, with one
process, first the same config without a process group), e.g. on one GPU:

    torchrun --standalone --nproc-per-node 1 benchmarks/distributed_speedup.py \\
        --set train.device=cuda
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
BASE = [
    "data.name=mnist",
    "data.downsample=2",
    "data.batch_size=256",
    "task.architectures=[[196,32,10]]",
    "rule.hidden_channels=8",
    "rule.widths=[64]",
    "pool.size=64",
    "pool.fresh=1",
    "train.batch_size=16",
    "train.k_min=10",
    "train.k_max=10",
    "train.device=cpu",
]


def _config(overrides: list[str]):
    from gnca.config import Config, apply_overrides, config_from_dict, config_to_dict

    return config_from_dict(apply_overrides(config_to_dict(Config()), [*BASE, *overrides]))


def _time(trainer, steps: int, barrier: Callable[[], None]) -> dict[str, list[float]]:
    """Wall and CPU seconds of ``steps`` meta-steps after one untimed warm-up step."""

    def sync() -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        barrier()

    trainer.meta_step()
    wall, cpu = [], []
    for _ in range(steps):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.meta_step()
        sync()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return {"wall": wall, "cpu": cpu}


def _worker(
    rank: int, world: int, port: int, overrides: list[str], steps: int, out: str, threads: int
) -> None:
    """One spawned process with ``threads`` threads: rank 0 writes the times to ``out``."""
    torch.set_num_threads(threads)
    cfg = _config(overrides)
    if world == 1:
        from gnca.trainer import MetaTrainer

        res = _time(MetaTrainer.from_config(cfg), steps, lambda: None)
    else:
        import torch.distributed as dist

        import gnca.distributed as gd

        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
        )
        gd.init_distributed(rdzv_timeout=120)
        try:
            res = _time(gd.DistributedMetaTrainer(cfg), steps, dist.barrier)
        finally:
            gd.shutdown()
    if rank == 0:
        Path(out).write_text(json.dumps(res))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(
    world: int, overrides: list[str], steps: int, threads: int = 1
) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.start_processes(
            _worker,
            args=(world, _free_port(), overrides, steps, out, threads),
            nprocs=world,
            start_method="spawn",
        )
        return json.loads(Path(out).read_text())


def _line(label: str, res: dict[str, list[float]], extra: str = "") -> str:
    wall = statistics.median(res["wall"])
    return (
        f"{label}: {wall:.3f} s/meta-step (median of {len(res['wall'])}: "
        f"{', '.join(f'{t:.3f}' for t in res['wall'])}); CPU time of rank 0 "
        f"{statistics.median(res['cpu']):.3f} s/meta-step{extra}"
    )


def _under_torchrun(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    import gnca.distributed as gd
    from gnca.trainer import MetaTrainer

    torch.set_num_threads(args.threads)
    cfg = _config(args.set)
    ctx = gd.init_distributed()
    try:
        out = []
        if ctx.world_size == 1:
            base = MetaTrainer.from_config(cfg, device=ctx.device(cfg.train.device))
            out.append(("1 process, no process group", _time(base, args.steps, lambda: None)))
            del base
        trainer = gd.DistributedMetaTrainer(cfg)
        label = f"{ctx.world_size} process(es) through torchrun on {trainer.device}"
        out.append((label, _time(trainer, args.steps, dist.barrier)))
        if ctx.is_main:
            for label, res in out:
                print(_line(label, res), flush=True)
    finally:
        gd.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="processes to compare with one")
    p.add_argument("--steps", type=int, default=5, help="timed meta-steps per run")
    p.add_argument("--repeats", type=int, default=2, help="alternating pairs of runs")
    p.add_argument("--threads", type=int, default=1, help="threads per process (torchrun mode)")
    p.add_argument(
        "--thread-baseline",
        action="store_true",
        help="also time one process with --nproc threads (the same cores used by intra-op threads)",
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args()
    mnist = REPO.parent / "shared" / "data" / "mnist"
    if "GNCA_DATA" not in os.environ and mnist.is_dir():
        os.environ["GNCA_DATA"] = str(mnist)
    cfg = _config(args.set)
    from gnca.architecture import Architecture
    from gnca.distributed import env_requests_distributed

    weights = sum(
        Architecture.mlp(a, bias=cfg.task.bias).num_weights for a in cfg.task.architectures
    )
    if os.environ.get("RANK", "0") == "0":
        print(
            f"global batch {cfg.train.batch_size} nets of {cfg.task.architectures} "
            f"({weights * cfg.train.batch_size} weights), K = {cfg.train.k_min}..{cfg.train.k_max}"
            f", data batch {cfg.data.batch_size}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            flush=True,
        )
    if env_requests_distributed():
        _under_torchrun(args)
        return
    # (processes, threads per process): one thread, W processes, and (with --thread-baseline)
    # one process using the same W cores through W intra-op threads
    runs = [(1, 1), (args.nproc, 1)] + ([(1, args.nproc)] if args.thread_baseline else [])
    per_step: dict[tuple[int, int], list[float]] = {r: [] for r in runs}
    for _ in range(args.repeats):
        for world, threads in runs:
            load = os.getloadavg()[0]
            res = _spawn(world, args.set, args.steps, threads)
            per_step[(world, threads)].append(statistics.median(res["wall"]))
            procs = f"{world} process{'es' if world > 1 else ''}"
            label = f"{procs} ({threads} thread{'s' if threads > 1 else ''} each)"
            print(_line(label, res, f"; load average before {load:.2f}"), flush=True)
    med = {r: statistics.median(v) for r, v in per_step.items()}
    one, many = med[(1, 1)], med[(args.nproc, 1)]
    print(
        f"speed-up of {args.nproc} processes over 1: {one / many:.2f}x "
        f"({one:.3f} s -> {many:.3f} s)"
    )
    if args.thread_baseline:
        thr = med[(1, args.nproc)]
        print(
            f"speed-up of {args.nproc} processes over 1 process with {args.nproc} threads: "
            f"{thr / many:.2f}x ({thr:.3f} s -> {many:.3f} s)"
        )


if __name__ == "__main__":
    main()
