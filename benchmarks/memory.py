"""Peak memory of one meta-step against the unroll length K, with and without checkpointing.

One meta-step of :class:`gnca.trainer.MetaTrainer` (``train.k_min = train.k_max = K``, no
pool) on a 784-100-10 MLP task net (79,510 weights) with the default rule (``C = 8``, MLP
27-64-9), with ``train.checkpointing`` off and on. The data are random (784 features, 10
classes, 256 examples per step): memory does not depend on their values.

* CPU: every configuration runs in a fresh subprocess; the peak is the process's resident-set
  high-water mark (``VmHWM``, restarted just before the measured meta-step) minus the resident
  set just before it (after a warm-up meta-step with ``K = 2``).
* CUDA: in process, ``torch.cuda.max_memory_allocated()`` during the meta-step minus the memory
  allocated just before it.

Run alone: ``python benchmarks/memory.py [--device cuda]`` (or through ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from common import Context, Section, Table, fmt  # noqa: E402

SIZES = [784, 100, 10]
KS = (16, 32, 64, 128)


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """Peak resident set of this process's address space (``VmHWM``). Unlike ``ru_maxrss``,
    which survives ``exec`` and so starts at the parent's resident set, it belongs to this
    program's own memory map; :func:`_reset_peak` restarts it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak() -> bool:
    """Restart the peak resident set at the current one (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_trainer(k: int, checkpointing: bool, nets: int, device: torch.device):
    from gnca.config import Config
    from gnca.data import Dataset
    from gnca.trainer import MetaTrainer

    gen = torch.Generator().manual_seed(0)
    n = 512
    data = Dataset(
        name="synthetic",
        X_train=torch.randn(n, SIZES[0], generator=gen),
        y_train=torch.randint(0, SIZES[-1], (n,), generator=gen),
        X_test=torch.randn(64, SIZES[0], generator=gen),
        y_test=torch.randint(0, SIZES[-1], (64,), generator=gen),
        n_features=SIZES[0],
        n_classes=SIZES[-1],
        image_shape=None,
    )
    cfg = Config()
    cfg.data.batch_size = 256
    cfg.task.architectures = [list(SIZES)]
    cfg.pool.size = 0
    cfg.pool.fresh = 0
    cfg.train.batch_size = nets
    cfg.train.k_min = cfg.train.k_max = k
    cfg.train.checkpointing = checkpointing
    cfg.train.device = str(device)
    return MetaTrainer.from_config(cfg, data, device)


class ManualMetaStep:
    """The core of :meth:`gnca.trainer.MetaTrainer.meta_step` (fresh fixed seeds, K rule steps,
    each under ``torch.utils.checkpoint`` when asked, cross-entropy, backward, Adam) for
    machines where the trainer cannot be imported (it needs PyYAML and scikit-learn)."""

    def __init__(self, k: int, checkpointing: bool, nets: int, device: torch.device) -> None:
        from gnca import Architecture, LocalRule, WeightGraph, initial_state

        self.cfg = _Cfg(k)
        self.checkpointing = checkpointing
        self.rule = LocalRule(8).to(device)
        self.graph = WeightGraph.replicate(Architecture.mlp(SIZES), nets, device=device)
        self.opt = torch.optim.Adam(self.rule.parameters(), lr=1e-3)
        self.gen = torch.Generator(device=device).manual_seed(1)
        self.w0, self.h0 = initial_state(self.graph, 8, "fixed")
        g = torch.Generator().manual_seed(0)
        self.X = torch.randn(256, SIZES[0], generator=g).to(device)
        self.y = torch.randint(0, SIZES[-1], (256,), generator=g).to(device)

    def meta_step(self) -> None:
        from torch.utils.checkpoint import checkpoint

        from gnca.forward import task_forward
        from gnca.task import logits_cross_entropy

        w, h = self.w0, self.h0
        for _ in range(self.cfg.train.k_max):
            mask = self.rule.fire_mask(w.shape[0], w.device, self.gen)
            if self.checkpointing:
                w, h = checkpoint(
                    lambda g, w_, h_, m_: self.rule(g, w_, h_, mask=m_),
                    self.graph,
                    w,
                    h,
                    mask,
                    use_reentrant=False,
                )
            else:
                w, h = self.rule(self.graph, w, h, mask=mask)
        loss = logits_cross_entropy(task_forward(self.graph, w, self.X), self.y).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class _Cfg:
    def __init__(self, k: int) -> None:
        self.train = type("T", (), {"k_min": k, "k_max": k})()


def measure(k: int, checkpointing: bool, nets: int, device: torch.device) -> dict:
    """Peak bytes of one meta-step above the memory in use just before it, and its time."""
    try:
        tr = make_trainer(k, checkpointing, nets, device)
        how = "MetaTrainer"
    except ImportError as err:  # no PyYAML / scikit-learn on this machine
        tr = ManualMetaStep(k, checkpointing, nets, device)
        how = f"manual meta-step (trainer not importable: {err})"
    with torch.no_grad():
        tr.rule.out.weight.normal_(0, 0.01)  # a trained rule is not a no-op
    tr.cfg.train.k_min = tr.cfg.train.k_max = 2
    tr.meta_step()  # warm-up: caches, allocator, optimizer state
    tr.cfg.train.k_min = tr.cfg.train.k_max = k
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        tr.meta_step()
        torch.cuda.synchronize(device)
        secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        _reset_peak()
        before = _rss_bytes()
        t0 = time.perf_counter()
        tr.meta_step()
        secs = time.perf_counter() - t0
        peak = _peak_rss_bytes() - before
    return {
        "k": k,
        "checkpointing": checkpointing,
        "peak_bytes": peak,
        "seconds": secs,
        "how": how,
    }


def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--ckpt", type=int, required=True)
    ap.add_argument("--nets", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = measure(args.k, bool(args.ckpt), args.nets, torch.device("cpu"))
    print("RESULT " + json.dumps(res), flush=True)


#: glibc settings under which the RSS high-water mark follows the live tensors: every block
#: over 64 KiB is its own mapping, returned to the system when freed.
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def run_cpu_child(
    k: int, ckpt: bool, nets: int, timeout: float, env: dict[str, str] | None = None
) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--k", str(k)]
    cmd += ["--ckpt", str(int(ckpt)), "--nets", str(nets), "--threads", "1"]
    full_env = {**os.environ, **(env or {})}
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=full_env
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"K={k} checkpointing={ckpt}: child failed: {tail[0]}")


def run_memory(sec: Section, ctx: Context) -> None:
    """CUDA: one mode (allocated bytes). CPU: two modes, ``live`` (RSS with every large block
    returned to the system when freed, so the peak is the live tensors) and ``default`` (glibc's
    default heap, what a plain run pays, fragmentation included)."""
    dev = ctx.device
    nets = 4 if ctx.cuda else 1
    ks = KS if not ctx.quick else (8, 16)
    limit = (
        0.6 * torch.cuda.get_device_properties(dev).total_memory if ctx.cuda else 8e9
    )  # bytes one configuration may need
    modes = ["cuda"] if ctx.cuda else ["live", "default"]
    heads = {"cuda": "allocated", "live": "live", "default": "glibc heap RSS"}
    t = Table(
        f"Peak memory of one meta-step vs unroll length K: {nets} task net(s) of "
        f"{'-'.join(map(str, SIZES))} (79,510 weights), rule C=8 27-64-9, data batch 256",
        ["K"]
        + [f"{heads[m]}: {c}" for m in modes for c in ("off", "checkpointing", "ratio")]
        + ["s/meta-step off, on"],
    )
    sec.tables.append(t)
    rows = []
    per_k: dict[tuple[str, bool], list[tuple[int, float]]] = {}
    for k in ks:
        cells: list[object] = [k]
        row: dict[str, object] = {"k": k}
        secs: dict[bool, float] = {}
        for mode in modes:
            got: dict[bool, dict] = {}
            for ckpt in (False, True):
                pts = per_k.setdefault((mode, ckpt), [])
                if len(pts) >= 2:  # predict from the last two points (linear in K)
                    (k1, m1), (k2, m2) = pts[-2], pts[-1]
                    pred = m2 + (m2 - m1) / (k2 - k1) * (k - k2)
                    if pred > limit:
                        sec.note(
                            f"{mode} K={k} ckpt={ckpt}: skipped, predicted {pred / 1e9:.1f} GB"
                        )
                        got[ckpt] = {"predicted_bytes": pred}
                        continue
                if not ctx.budget.allows(30):
                    sec.status = "partial"
                    sec.note(f"{mode} K={k} ckpt={ckpt}: skipped (time budget)")
                    continue
                if ctx.cuda:
                    r = measure(k, ckpt, nets, dev)
                    torch.cuda.empty_cache()
                else:
                    r = run_cpu_child(
                        k,
                        ckpt,
                        nets,
                        timeout=max(60, min(ctx.budget.left(), 1800)),
                        env=LIVE_ENV if mode == "live" else None,
                    )
                got[ckpt] = r
                if r.get("how", "MetaTrainer") != "MetaTrainer" and "manual" not in sec.data:
                    sec.data["manual"] = True
                    sec.note(f"measured with a {r['how']}")
                pts.append((k, r["peak_bytes"]))
                if mode in ("cuda", "default"):
                    secs[ckpt] = r["seconds"]
                sec.note(
                    f"{mode} K={k} checkpointing={ckpt}: peak +{r['peak_bytes'] / 1e6:.0f} MB, "
                    f"{r['seconds']:.1f} s"
                )
            off, on = got.get(False, {}), got.get(True, {})
            m_off = off.get("peak_bytes", off.get("predicted_bytes"))
            m_on = on.get("peak_bytes")
            ratio = m_on / m_off if m_off and m_on else None
            pred_note = " (predicted)" if "predicted_bytes" in off else ""
            verdict = ("met" if ratio <= 0.25 else "missed") if ratio else ""
            cells += [
                f"{m_off / 1e6:,.0f} MB{pred_note}" if m_off else "-",
                f"{m_on / 1e6:,.0f} MB" if m_on else "-",
                f"{ratio:.2f} {verdict}" if ratio else "-",
            ]
            row[mode] = {"off": off, "on": on, "ratio": ratio}
        cells.append(", ".join(fmt(secs[c]) if c in secs else "-" for c in (False, True)))
        t.rows.append(cells)
        rows.append(row)
        sec.data["rows"] = rows
    if ctx.cuda:
        t.notes.append(
            "Memory: torch.cuda.max_memory_allocated() during the meta-step above the memory "
            "allocated just before it."
        )
    else:
        t.notes.append(
            "Memory: peak RSS (VmHWM) of a fresh process during the meta-step above its RSS "
            "just before it. 'live': the child runs with MALLOC_MMAP_THRESHOLD_=65536 "
            "MALLOC_TRIM_THRESHOLD_=0, so every freed block over 64 KiB leaves the process and "
            "the peak follows the tensors alive; 'default': glibc's defaults, where freed "
            "20 MB temporaries stay in a heap fragmented by the small tensors each step keeps, "
            "so RSS overstates the live memory (and varies from run to run)."
        )
    t.notes.append(
        "Target: ratio (checkpointing / off) <= 0.25 at K = 128. "
        "Checkpointing is `train.checkpointing: true` (each rule step under "
        "torch.utils.checkpoint, non-reentrant): only each step's inputs (w, h, fire mask: "
        "10 floats per weight) are kept and the step is recomputed in the backward pass."
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        from common import Budget, Results, environment

        ap = argparse.ArgumentParser(description="meta-step memory vs K")
        ap.add_argument("--device", default="cpu")
        ap.add_argument("--quick", action="store_true")
        a = ap.parse_args()
        torch.set_num_threads(1)
        d = torch.device(a.device)
        c = Context(d, a.quick, Budget(None), 1)
        r = Results(None, environment(d), "python benchmarks/memory.py")
        r.run("memory", lambda s: run_memory(s, c))
        print(r.markdown())
