"""Data-parallel meta-training and distributed growing with :mod:`torch.distributed`.

Launch one process per CPU slot or GPU with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``)::

    torchrun --nproc-per-node 2 -m gnca train --config configs/iris.yaml
    gnca train --nproc 2 --config configs/iris.yaml     # the same; gnca starts torchrun

The backend is gloo on CPU and NCCL for CUDA tensors (``"cpu:gloo,cuda:nccl"`` when CUDA is
available); every process uses ``cuda:LOCAL_RANK``.

How a meta-step is split over ``W`` processes (global batch ``B = train.batch_size``, local batch
``b = B / W``; net ``j`` of the global batch is grown by rank ``j // b``):

- Every rank holds the same rule, optimizer state and random generators (``gen`` and ``dev_gen``,
  seeded from ``train.seed`` as in single-process training). Randomness that is per net (initial
  states, damage, fire masks) is drawn for the whole global batch and each rank keeps its slice,
  so net ``j`` gets the same random numbers whichever rank grows it and whatever ``W`` is.
  ``K`` and the data batch are drawn identically on every rank.
- Rank ``r`` owns the contiguous block ``[r P/W, (r+1) P/W)`` of every sample pool (``P =
  pool.size``) and samples its ``b`` nets from it. The worst ``pool.fresh`` nets of the *global*
  batch get fresh seeds and its best ``pool.damage`` are damaged (the sampled losses are
  all-gathered), as in single-process training.
- The loss and accuracy are all-reduced before the rollback decision (every rank decides the
  same); the gradients are all-reduced (averaged) before gradient normalisation, so the rule and
  the optimizer state stay identical on every rank.
- A checkpoint gathers the pools on rank 0, which alone writes files; it does not depend on ``W``,
  so a run can resume with any number of processes that divides ``train.batch_size`` and
  ``pool.size``.

With the pool disabled (``pool.size: 0``) the ``W``-process run computes what single-process
training computes, up to float rounding of the gradient sum. With a pool, sampling from ``W``
disjoint blocks differs from sampling from the whole pool, so runs agree in distribution only.

:func:`spread` spreads a list of work items (e.g. the architectures of the generalisation grid)
over the ranks and gathers the results on rank 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from gnca.architecture import Architecture
from gnca.build import trainer_parts
from gnca.checkpoint import first_line
from gnca.comm import Comm
from gnca.config import Config, config_to_dict
from gnca.data import Dataset
from gnca.device import resolve_device
from gnca.pool import Shard
from gnca.trainer import MetaTrainer

__all__ = [
    "DEFAULT_RDZV_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DistContext",
    "DistributedError",
    "DistributedMetaTrainer",
    "check_world_size",
    "context",
    "env_requests_distributed",
    "init_distributed",
    "is_initialized",
    "launch",
    "session",
    "shutdown",
    "spread",
]

DEFAULT_RDZV_TIMEOUT = 30.0  # seconds for all processes to meet (rendezvous)
DEFAULT_TIMEOUT = 1800.0  # seconds a collective may wait for a slow process
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")
R = TypeVar("R")


class DistributedError(RuntimeError):
    """A distributed run that cannot start or go on; the message is one line."""


def _first_line(err: BaseException) -> str:
    return first_line(err, 240)


# ---------------------------------------------------------------------- the process group
@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run: ``rank`` of ``world_size``, ``local_rank`` on its
    machine. The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    def device(self, name: str = "auto") -> torch.device:
        """The device for ``train.device = name``: ``cuda:LOCAL_RANK`` for any CUDA choice in a
        distributed run, otherwise as :func:`gnca.trainer.resolve_device`."""
        dev = resolve_device(name)
        if dev.type == "cuda" and is_initialized():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return dev


def is_initialized() -> bool:
    """Whether this process is part of a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def context() -> DistContext:
    """This process's place in the current process group (rank 0 of 1 without one)."""
    if not is_initialized():
        return DistContext()
    return DistContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def env_requests_distributed() -> bool:
    """Whether torchrun (or a launcher setting the same variables) started this process."""
    return all(k in os.environ for k in _ENV)


def _wait_for_port(addr: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``addr:port`` succeeds within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((addr, port), timeout=max(min(left, 2.0), 0.05)):
                return True
        except OSError:
            if time.monotonic() + 0.2 >= deadline:
                return False
            time.sleep(0.2)


def init_distributed(
    rdzv_timeout: float = DEFAULT_RDZV_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
    backend: str | None = None,
) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Args:
        rdzv_timeout: seconds for every process to reach the rendezvous (``MASTER_ADDR:
            MASTER_PORT``) and connect to the others; kept short so that a wrong address fails
            fast.
        timeout: seconds a collective waits for a slow process before failing.
        backend: default ``"cpu:gloo,cuda:nccl"`` when CUDA is available, else ``"gloo"``.

    Raises:
        DistributedError: missing or invalid variables, or an unreachable rendezvous.
    """
    if is_initialized():
        return context()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise DistributedError(
            f"not started by torchrun: {', '.join(missing)} unset (launch with torchrun or "
            f"gnca train --nproc N)"
        )
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except ValueError as err:
        raise DistributedError(f"bad torchrun environment variable: {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK = {rank} is not in [0, WORLD_SIZE = {world})")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    where = f"{addr}:{port}"
    hosts_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    # A client probes the address first: torch's own store client logs pages of C++ retries.
    if not hosts_store and not _wait_for_port(addr, port, rdzv_timeout):
        raise DistributedError(
            f"cannot reach the rendezvous at {where} within {rdzv_timeout:g} s (rank {rank} of "
            f"{world}): check MASTER_ADDR and MASTER_PORT, that rank 0 runs, or raise "
            f"--rdzv-timeout"
        )
    try:
        store, _, _ = next(
            dist.rendezvous("env://", rank, world, timeout=timedelta(seconds=rdzv_timeout))
        )
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout)
        )
    except RuntimeError as err:  # torch's DistError family
        raise DistributedError(
            f"rendezvous at {where} failed for rank {rank} of {world} within {rdzv_timeout:g} s "
            f"({_first_line(err)}); start all {world} processes with the same MASTER_ADDR and "
            f"MASTER_PORT, or raise --rdzv-timeout"
        ) from None
    return context()


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(
    rdzv_timeout: float = DEFAULT_RDZV_TIMEOUT, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[DistContext]:
    """Join the process group if torchrun started this process, and leave it at the end.

    Yields this process's :class:`DistContext` (rank 0 of 1 when not started by torchrun), so
    one code path serves ``gnca ...`` and ``torchrun ... -m gnca ...``::

        with distributed.session() as ctx:
            results = distributed.spread(archs, grow_one)
            if ctx.is_main:
                save(results)
    """
    joined = env_requests_distributed() and not is_initialized()
    if joined:
        init_distributed(rdzv_timeout, timeout)
    try:
        yield context()
    finally:
        if joined:
            shutdown()


def error_prefix() -> str:
    """``"[rank r/W] "`` in the non-zero ranks of a distributed launch, else ``""``."""
    rank = os.environ.get("RANK", "0") if env_requests_distributed() else "0"
    return f"[rank {rank}/{os.environ['WORLD_SIZE']}] " if rank != "0" else ""


def check_same(value: Any, what: str) -> None:
    """Raise :class:`DistributedError` on every rank unless ``value`` is equal on all ranks."""
    if not is_initialized() or dist.get_world_size() == 1:
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    for r, v in enumerate(values):
        if v != values[0]:
            raise DistributedError(
                f"the processes disagree on {what}: rank 0 has {values[0]!r}, rank {r} has {v!r}"
            )


def check_world_size(cfg: Config, world_size: int) -> None:
    """Raise ``ValueError`` naming the config key when the batch or pool does not split evenly."""
    b = cfg.train.batch_size
    if b % world_size:
        raise ValueError(
            f"train.batch_size = {b} is not divisible by the number of processes ({world_size}); "
            f"use a multiple of {world_size} or another number of processes"
        )
    p = cfg.pool.size
    if p and p % world_size:
        raise ValueError(
            f"pool.size = {p} is not divisible by the number of processes ({world_size}); "
            f"use a multiple of {world_size} or another number of processes"
        )


def _gather_cat(t: torch.Tensor) -> torch.Tensor | None:
    """Rank 0 gets the concatenation (dim 0, rank order) of every rank's ``t``; others None."""
    world = dist.get_world_size()
    if world == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(world)] if dist.get_rank() == 0 else None
    dist.gather(t, parts, dst=0)
    return torch.cat(parts) if parts is not None else None


def _all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The concatenation (dim 0, rank order) of every rank's ``t``, on every rank."""
    world = dist.get_world_size()
    if world == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def _config_digest(cfg: Config) -> str:
    text = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- meta-training
class ProcessGroupComm(Comm):
    """:class:`~gnca.comm.Comm` of one rank of the process group (:func:`init_distributed`).

    Every rank holds a contiguous ``1 / world`` of every pool and batch (rank-major); the
    meta-step's loss and accuracy and the gradients are averaged with all-reduces, a stop is
    agreed with an all-reduce of a flag, and the pools are gathered on rank 0 for checkpoints.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.rank, self.world, self.is_main = ctx.rank, ctx.world_size, ctx.is_main

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world, _all_gather_cat) if self.world > 1 else Shard()

    def step_stats(self, loss: torch.Tensor, accs: list[torch.Tensor]) -> tuple[float, float]:
        local = torch.stack([loss.double(), torch.cat(accs).double().mean()]).cpu()
        dist.all_reduce(local)
        local /= self.world
        return float(local[0]), float(local[1])

    def average_grads(self, params) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flag: bool) -> bool:
        """Collective: stop when any rank received a signal, so that every rank stops after
        the same meta-step and takes part in the checkpoint's gather."""
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_to_main(self, t: torch.Tensor) -> torch.Tensor | None:
        return _gather_cat(t)

    def broadcast_(self, tensors) -> None:
        for t in tensors:
            dist.broadcast(t, src=0)

    def check_same(self, value: object, what: str) -> None:
        check_same(value, what)


class DistributedMetaTrainer(MetaTrainer):
    """:class:`~gnca.trainer.MetaTrainer` as one rank of a data-parallel run (module docstring):
    a trainer given the :class:`ProcessGroupComm` of this rank.

    Build it on every rank after :func:`init_distributed`; construction, :meth:`meta_step`,
    :meth:`state_dict`, :meth:`save` and :meth:`train` are collective (every rank calls them in
    the same order). Only rank 0 logs, shows progress and writes files.

    Args:
        cfg: the resolved configuration; ``train.batch_size`` (and ``pool.size``) must be
            divisible by the number of processes.
        dataset: the data (loaded from ``cfg.data`` when ``None``), the same on every rank.
        device: overrides the device; default ``cuda:LOCAL_RANK`` or the CPU.
        archs: custom training architectures, as for :class:`~gnca.trainer.MetaTrainer`.
    """

    def __init__(
        self,
        cfg: Config,
        dataset: Dataset | None = None,
        device: torch.device | None = None,
        archs: Sequence[Architecture] | None = None,
    ) -> None:
        if not is_initialized():
            raise DistributedError(
                "DistributedMetaTrainer needs a process group: call init_distributed() first"
            )
        self.ctx = context()
        check_world_size(cfg, self.ctx.world_size)
        check_same(_config_digest(cfg), "the configuration (start every rank with the same one)")
        device = device or self.ctx.device(cfg.train.device)
        parts = trainer_parts(cfg, dataset, device, list(archs) if archs else None)
        super().__init__(**parts, comm=ProcessGroupComm(self.ctx))
        self.local_batch = cfg.train.batch_size // self.ctx.world_size

    @classmethod
    def from_config(  # type: ignore[override]
        cls,
        cfg: Config,
        dataset: Dataset | None = None,
        device: torch.device | None = None,
        archs: Sequence[Architecture] | None = None,
    ) -> DistributedMetaTrainer:
        """The same as the constructor (collective)."""
        return cls(cfg, dataset, device, archs)

    def failure_message(self, err: BaseException, checkpoint: Path) -> str | None:
        """A one-line explanation if ``err`` is a lost peer (a rank died or hung), else None."""
        text = str(err)
        markers = ("gloo", "nccl", "connection", "closed by peer", "timed out", "timeout")
        if not isinstance(err, dist.DistError) and not any(m in text.lower() for m in markers):
            return None
        if self.saved_step is None:
            saved = "no checkpoint had been written yet"
        else:
            saved = f"the last checkpoint {checkpoint} (meta-step {self.saved_step}) is intact"
        detail = re.sub(r"^\[[^\]]*\]\s*", "", _first_line(err))  # drop gloo's source location
        detail = detail.split(". ")[0]
        return (
            f"the distributed run stopped at meta-step {self.step}: another process failed or "
            f"stopped answering ({detail}); {saved}"
        )


# ---------------------------------------------------------------------- growing / evaluation
def spread(items: Sequence[T], fn: Callable[[T], R], *, everywhere: bool = False) -> list[R] | None:
    """Run ``fn`` on every item, the items spread over the ranks; gather results on rank 0.

    Item ``i`` runs on rank ``i % W`` (round robin, so a grid ordered by size stays balanced).
    Results must be small picklable values (metrics, not grown nets). Seed any randomness per
    item (e.g. from its index), not per rank, so results do not depend on ``W``.

    Args:
        items: the work items, identical on every rank (e.g. architectures).
        fn: ``fn(item) -> result``.
        everywhere: return the results on every rank, not only on rank 0.

    Returns:
        ``[fn(item) for item in items]`` on rank 0 (every rank with ``everywhere``), ``None``
        on the other ranks. Without a process group it is that list, computed here.

    Raises:
        DistributedError: on every rank, when ``fn`` raised on any rank (item, rank and message).
    """
    ctx = context()
    if ctx.world_size == 1:
        return [fn(x) for x in items]
    done: list[tuple[int, bool, Any]] = []
    for i in range(ctx.rank, len(items), ctx.world_size):
        try:
            done.append((i, True, fn(items[i])))
        except Exception as err:  # reported on every rank below
            done.append((i, False, f"{type(err).__name__}: {_first_line(err)}"))
            break
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, done)
    results: dict[int, Any] = {}
    for r, part in enumerate(parts):
        for i, ok, value in part:
            if not ok:
                what = " ".join(str(items[i]).split())
                what = what if len(what) <= 60 else what[:57] + "..."
                raise DistributedError(f"item {i} ({what}) failed on rank {r}: {value}")
            results[i] = value
    if not (ctx.is_main or everywhere):
        return None
    return [results[i] for i in range(len(items))]


# ---------------------------------------------------------------------- gnca train --nproc
def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m gnca ARGV`` as ``nproc`` processes on this machine through torchrun.

    Returns the exit status of the first process that failed (0 when all succeeded; 130 or
    143 when the launcher got SIGINT or SIGTERM, which the ranks also receive: they stop after
    the same meta-step and save it); the processes print their own errors.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if env_requests_distributed():
        raise DistributedError("--nproc cannot be used in a process already started by torchrun")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The processes print their own one-line errors; the agent's log would repeat them (the
    # agent's module logger has a level of its own).
    for name in ("torch.distributed.elastic", "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # torchrun would set 1 and warn; share this machine's cores instead (--threads overrides).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "gnca", *argv])
    try:
        run(args)
    except SignalException as err:
        # Ctrl-C or SIGTERM: the agent passed the signal on; the ranks finished their meta-step,
        # saved it and said so (gnca/interrupt.py)
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        first = min(err.failures.items(), key=lambda kv: kv[1].timestamp)
        rank, failure = first
        if failure.exitcode > 0:
            return failure.exitcode
        raise DistributedError(
            f"rank {rank} of {nproc} was killed ({failure.signal_name()}); the run stopped"
        ) from None
    return 0
