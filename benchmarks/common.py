"""Helpers shared by the gnca benchmarks: interleaved timing, device sync, budgets, results.

Every figure the benchmarks report is a ratio of timings taken in one process, interleaved
(one run of every variant per round, after a warm-up round) and summarised by the median over
rounds, because the CPUs these run on are shared and noisy. :class:`Results` keeps every
section's tables and raw numbers and rewrites ``results.json`` and ``results.md`` after each
section, so a run that is cut short still leaves what it measured.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


# ---------------------------------------------------------------------- devices and time
def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Budget:
    """A wall-clock deadline shared by all sections of a run.

    Args:
        seconds: total budget; ``None`` or ``<= 0`` for no limit.
    """

    def __init__(self, seconds: float | None) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + seconds if seconds and seconds > 0 else math.inf

    def left(self) -> float:
        """Seconds left (``inf`` without a limit)."""
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, seconds: float) -> bool:
        """True when ``seconds`` more still fit in the budget."""
        return self.left() >= seconds


def time_once(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call of ``fn``, synchronising ``device``
    before and after."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


@dataclass
class Timing:
    """Median and spread over the rounds of one timed variant (seconds per call).

    ``median``/``low``/``high`` use the run's clock (:func:`clock_for`); ``wall`` and ``cpu``
    keep the medians of both clocks.
    """

    median: float
    low: float
    high: float
    rounds: int
    wall: float
    cpu: float

    def as_dict(self) -> dict[str, float]:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "rounds": self.rounds,
            "wall_median": self.wall,
            "cpu_median": self.cpu,
        }


def clock_for(device: torch.device) -> str:
    """``"cpu"`` (process CPU time) on a CPU run with one torch thread, where CPU time is immune
    to other processes on a shared machine; ``"wall"`` otherwise (GPU, several threads)."""
    return "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"


def interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    rounds: int = 5,
    *,
    warmup: int = 1,
    max_seconds: float | None = None,
    inner: int | dict[str, int] = 1,
) -> dict[str, Timing]:
    """Time several variants side by side: ``warmup`` rounds, then up to ``rounds`` timed rounds
    that run every variant once each (``inner`` calls per timing, for very short calls).

    Stops adding rounds (keeping at least 1) once ``max_seconds`` have passed. Returns per-call
    times of each variant on the clock of :func:`clock_for`.
    """
    t_start = time.perf_counter()
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}

    def repeat(fn: Callable[[], Any], n: int) -> Callable[[], None]:
        def go() -> None:
            for _ in range(n):
                fn()

        return go

    for _ in range(rounds):
        for k, fn in fns.items():
            n = inner.get(k, 1) if isinstance(inner, dict) else inner
            wall, cpu = time_once(repeat(fn, n), device)
            walls[k].append(wall / n)
            cpus[k].append(cpu / n)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            break
    use_cpu = clock_for(device) == "cpu"
    out = {}
    for k in fns:
        v = cpus[k] if use_cpu else walls[k]
        out[k] = Timing(
            statistics.median(v),
            min(v),
            max(v),
            len(v),
            statistics.median(walls[k]),
            statistics.median(cpus[k]),
        )
    return out


def pick_inner(fn: Callable[[], Any], device: torch.device, target: float = 0.02) -> int:
    """How many calls of ``fn`` make one timing of at least ``target`` seconds (1 to 1000)."""
    t = max(time_once(fn, device)[0], 1e-6)
    return int(min(1000, max(1, math.ceil(target / t))))


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Slope of ``log y`` against ``log x`` by least squares (``None`` with < 2 points)."""
    if len(xs) < 2:
        return None
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sxx


@dataclass
class Context:
    """What every section gets: the device, the run's options and its time budget."""

    device: torch.device
    quick: bool
    budget: Budget
    rounds: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ---------------------------------------------------------------------- environment
def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch_geometric

        info["torch_geometric"] = torch_geometric.__version__
    except Exception:  # pragma: no cover - PyG is a hard dependency of gnca
        info["torch_geometric"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        cpu = platform.processor()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        info["cpu"] = cpu
    return info


def describe_environment(info: dict[str, Any]) -> str:
    """One line for the head of a table."""
    where = (
        f"{info['gpu']} (CUDA {info.get('cuda')})"
        if "gpu" in info
        else f"{info.get('cpu') or 'CPU'}, {info['cpu_count']} cores, "
        f"{info['torch_threads']} torch thread(s)"
    )
    load = info.get("load_average_start")
    load_s = f", load average {load:.1f} at start" if load is not None else ""
    heap_s = ", freed memory kept (gnca.heap.keep_heap)" if info.get("keep_heap") else ""
    return (
        f"{where}; torch {info['torch']}, torch-geometric {info.get('torch_geometric')}, "
        f"Python {info['python']}{load_s}{heap_s}"
    )


# ---------------------------------------------------------------------- results
@dataclass
class Table:
    """A results table with its title, column headers, rows and notes."""

    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        def cell(v: Any) -> str:
            return fmt(v) if isinstance(v, float) else str(v)

        lines = [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        for r in self.rows:
            lines.append("| " + " | ".join(cell(v) for v in r) + " |")
        for n in self.notes:
            lines += ["", n]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "headers": self.headers,
            "rows": self.rows,
            "notes": self.notes,
        }


def fmt(v: float, digits: int = 3) -> str:
    """A float with ``digits`` significant digits, without scientific notation for common
    magnitudes."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        return f"{v:.{digits - 1}e}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(a))))
    return f"{v:.{decimals}f}"


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds with 3 significant digits."""
    return "-" if seconds is None else fmt(seconds * 1e3)


@dataclass
class Section:
    """One benchmark section's output: tables for people, ``data`` for machines."""

    name: str
    status: str = "ok"  # ok | partial | skipped | error
    seconds: float = 0.0
    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    on_change: Callable[[], None] | None = field(default=None, repr=False)

    def note(self, msg: str) -> None:
        """Record and print a progress or skip message (and save what is recorded so far)."""
        self.messages.append(msg)
        log(f"[{self.name}] {msg}")
        if self.on_change is not None:
            self.on_change()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Results:
    """All sections of one run, written to ``out_dir`` after every change.

    Files: ``results.json`` (everything, machine-readable) and ``results.md`` (the tables).
    """

    def __init__(self, out_dir: str | os.PathLike | None, env: dict[str, Any], command: str):
        self.out = Path(out_dir) if out_dir is not None else None
        self.env = env
        self.command = command
        self.sections: list[Section] = []
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, fn: Callable[[Section], None]) -> Section:
        """Run one section; an exception marks it ``error`` and keeps what it recorded."""
        sec = Section(name, on_change=self.write)
        self.sections.append(sec)
        t0 = time.perf_counter()
        log(f"=== {name} ===")
        try:
            fn(sec)
        except Exception as err:  # keep going: later sections still run
            sec.status = "error"
            sec.messages.append("".join(traceback.format_exception(err)))
            log(f"[{name}] ERROR {type(err).__name__}: {err}")
        finally:
            sec.seconds = time.perf_counter() - t0
            self.write()
        return sec

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "environment": self.env,
            "sections": [
                {
                    "name": s.name,
                    "status": s.status,
                    "seconds": round(s.seconds, 1),
                    "messages": s.messages,
                    "tables": [t.as_dict() for t in s.tables],
                    "data": s.data,
                }
                for s in self.sections
            ],
        }

    def markdown(self) -> str:
        lines = [
            "# gnca benchmark results",
            "",
            f"Command: `{self.command}`",
            "",
            f"Measured on: {describe_environment(self.env)}",
            "",
        ]
        for s in self.sections:
            lines += [f"## {s.name} ({s.status}, {s.seconds:.0f} s)", ""]
            for t in s.tables:
                lines += [t.markdown(), ""]
            short = [m for m in s.messages if "\n" not in m.strip()]
            errors = [m for m in s.messages if "\n" in m.strip()]
            if short:
                lines += ["Notes:", ""] + [f"- {m}" for m in short] + [""]
            for e in errors:
                lines += ["```", e.rstrip(), "```", ""]
        return "\n".join(lines)

    def write(self) -> None:
        if self.out is None:
            return
        _atomic_write(self.out / "results.json", json.dumps(self.as_dict(), indent=1, default=str))
        _atomic_write(self.out / "results.md", self.markdown())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
