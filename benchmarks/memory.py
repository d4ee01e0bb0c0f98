"""Peak memory of one meta-step against the unroll length K, with and without checkpointing.

One meta-step of :class:`gnca.trainer.MetaTrainer` (``train.k_min = train.k_max = K``, no
pool) on a 784-100-10 MLP task net (79,510 weights) with the default rule (``C = 8``, MLP
27-64-9), with ``train.checkpointing`` off and on. The data are random (784 features, 10
classes, 256 examples per step): memory does not depend on their values.

* CPU: every configuration runs in a fresh subprocess; the peak is the process's resident-set
  high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) during the measured meta-step
  minus the resident set just before it (after a warm-up meta-step with ``K = 2``).
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


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
    return MetaTrainer(cfg, data, device)


def measure(k: int, checkpointing: bool, nets: int, device: torch.device) -> dict:
    """Peak bytes of one meta-step above the memory in use just before it, and its time."""
    tr = make_trainer(k, checkpointing, nets, device)
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
        before = _rss_bytes()
        t0 = time.perf_counter()
        tr.meta_step()
        secs = time.perf_counter() - t0
        peak = _peak_rss_bytes() - before
    return {"k": k, "checkpointing": checkpointing, "peak_bytes": peak, "seconds": secs}


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


def run_cpu_child(k: int, ckpt: bool, nets: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--k", str(k)]
    cmd += ["--ckpt", str(int(ckpt)), "--nets", str(nets), "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"K={k} checkpointing={ckpt}: child failed: {tail[0]}")


def run_memory(sec: Section, ctx: Context) -> None:
    dev = ctx.device
    nets = 4 if ctx.cuda else 1
    ks = KS if not ctx.quick else (8, 16)
    limit = (
        0.6 * torch.cuda.get_device_properties(dev).total_memory if ctx.cuda else 8e9
    )  # bytes one configuration may need
    t = Table(
        f"Peak memory of one meta-step vs unroll length K: {nets} task net(s) of "
        f"{'-'.join(map(str, SIZES))} (79,510 weights), rule C=8 27-64-9, data batch 256",
        [
            "K",
            "no checkpointing",
            "checkpointing",
            "ratio",
            "target <= 0.25",
            "s/meta-step (off, on)",
        ],
    )
    sec.tables.append(t)
    rows = []
    per_k: dict[bool, list[tuple[int, float]]] = {False: [], True: []}
    for k in ks:
        got: dict[bool, dict] = {}
        for ckpt in (False, True):
            pts = per_k[ckpt]
            if len(pts) >= 2:  # predict from the last two points (linear in K)
                (k1, m1), (k2, m2) = pts[-2], pts[-1]
                pred = m2 + (m2 - m1) / (k2 - k1) * (k - k2)
                if pred > limit:
                    sec.note(f"K={k} checkpointing={ckpt}: skipped, predicted {pred / 1e9:.1f} GB")
                    got[ckpt] = {"predicted_bytes": pred}
                    continue
            if not ctx.budget.allows(30):
                sec.status = "partial"
                sec.note(f"K={k} checkpointing={ckpt}: skipped (time budget)")
                continue
            if ctx.cuda:
                r = measure(k, ckpt, nets, dev)
                torch.cuda.empty_cache()
            else:
                r = run_cpu_child(k, ckpt, nets, timeout=max(60, min(ctx.budget.left(), 1800)))
            got[ckpt] = r
            pts.append((k, r["peak_bytes"]))
            sec.note(
                f"K={k} checkpointing={ckpt}: peak +{r['peak_bytes'] / 1e6:.0f} MB, "
                f"{r['seconds']:.1f} s"
            )
        off, on = got.get(False, {}), got.get(True, {})
        m_off = off.get("peak_bytes", off.get("predicted_bytes"))
        m_on = on.get("peak_bytes")
        ratio = m_on / m_off if m_off and m_on else None
        pred_note = " (predicted)" if "predicted_bytes" in off else ""
        t.rows.append(
            [
                k,
                f"{m_off / 1e6:,.0f} MB{pred_note}" if m_off else "-",
                f"{m_on / 1e6:,.0f} MB" if m_on else "-",
                fmt(ratio) if ratio else "-",
                ("met" if ratio <= 0.25 else "missed") if ratio else "-",
                f"{fmt(off['seconds']) if 'seconds' in off else '-'}, "
                f"{fmt(on['seconds']) if 'seconds' in on else '-'}",
            ]
        )
        rows.append({"k": k, "off": off, "on": on, "ratio": ratio})
        sec.data["rows"] = rows
    how = (
        "torch.cuda.max_memory_allocated() above the memory allocated before the step"
        if ctx.cuda
        else "peak RSS (ru_maxrss) of a fresh process above its RSS before the step"
    )
    t.notes.append(
        f"Memory: {how}. Checkpointing is `train.checkpointing: true` (each rule step under "
        "torch.utils.checkpoint, non-reentrant): only each step's inputs (w, h, fire mask) are "
        "kept and the step is recomputed in the backward pass."
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
