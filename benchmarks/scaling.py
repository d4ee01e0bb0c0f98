"""One rule step: scaling with the number of weights, its floor, and opt-in speed options.

Sections (run through ``benchmarks/run.py``, or alone: ``python benchmarks/scaling.py``):

``scaling``
    Time of one no-grad rule step (growing mode) on MLPs and on a wide skip-connection DAG from
    about 1e3 to 1e7 weights: milliseconds, nanoseconds per weight, weight updates per second,
    and the fitted exponent of time against weights (1 is linear); the materialised line graph
    (``path="explicit"``) beside the fast path where it fits in memory; and one batch of many
    nets against a Python loop over the same nets.
``floor``
    A whole step against the rule MLP alone on the same rows, without and with gradients.
``options``
    ``torch.compile`` of the step and bf16 autocast, against the eager float32 step.

The rule is gnca's default (``C = 8``, MLP 27-64-9, incident neighbourhood, mean, fire rate
0.8) with a non-zero random output layer (a trained rule's values do not change the cost).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from common import (
    Context,
    Section,
    Table,
    clock_for,
    fit_exponent,
    fmt,
    interleaved,
    ms,
    pick_inner,
)

from gnca import Architecture, LocalRule, WeightGraph
from gnca.graph import relation_pair_count

C = 8
WIDTHS = (64,)


# ---------------------------------------------------------------------- building blocks
def make_rule(device: torch.device, channels: int = C, widths=WIDTHS, seed: int = 0) -> LocalRule:
    """The default rule with a random, non-zero output layer, on ``device``."""
    torch.manual_seed(seed)
    rule = LocalRule(channels, widths=widths)
    with torch.no_grad():
        rule.out.weight.normal_(0.0, 0.01)
        rule.out.bias.normal_(0.0, 0.01)
    return rule.to(device).eval()


def make_state(
    graph, channels: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    e = graph.num_nodes
    w = (torch.randn(e, generator=gen) * 0.05).to(device)
    h = (torch.randn(e, channels, generator=gen) * 0.1).to(device)
    return w, h


_ARCHS: dict[tuple, Architecture] = {}


def _arch(kind: str, sizes: list[int], skip: int = 1) -> Architecture:
    """Architectures are cached: building a large one takes seconds."""
    key = (kind, tuple(sizes), skip)
    if key not in _ARCHS:
        _ARCHS[key] = (
            Architecture.mlp(sizes) if kind == "mlp" else Architecture.skip_mlp(sizes, skip=skip)
        )
    return _ARCHS[key]


def build_graph(spec: tuple, device: torch.device):
    """``("mlp", sizes, copies)`` or ``("skip", sizes, skip, copies)`` -> (name, graph)."""
    if spec[0] == "mlp":
        _, sizes, copies = spec
        arch = _arch("mlp", sizes)
        name = "-".join(map(str, sizes))
    else:
        _, sizes, skip, copies = spec
        arch = _arch("skip", sizes, skip)
        name = f"skip{skip} " + "-".join(map(str, sizes))
    if copies > 1:
        name += f" x{copies}"
        graph = WeightGraph.replicate(arch, copies, device=device)
    else:
        graph = WeightGraph.from_architecture(arch, device=device)
    return name, graph


def no_grad_step(rule: LocalRule, graph, w, h, path: str = "fast") -> Callable[[], None]:
    gen = torch.Generator(device=w.device).manual_seed(1)

    def run() -> None:
        with torch.no_grad():
            rule(graph, w, h, generator=gen, path=path)

    return run


def grad_step(rule: LocalRule, graph, w, h) -> Callable[[], None]:
    """Forward and backward of one step (as in meta-training)."""
    gen = torch.Generator(device=w.device).manual_seed(1)
    w = w.clone().requires_grad_(True)
    h = h.clone().requires_grad_(True)

    def run() -> None:
        rule.zero_grad(set_to_none=True)
        w.grad = h.grad = None
        w1, h1 = rule(graph, w, h, generator=gen)
        (w1.sum() + h1.sum()).backward()

    return run


def explicit_bytes(graph, channels: int) -> tuple[int, int]:
    """(line-graph edges, rough peak bytes of a no-grad explicit step): int64 ``edge_index``
    cached for both relations plus one float32 message row of ``1 + C`` per edge."""
    n_f, n_b = relation_pair_count(graph, "incident")
    edges = n_f + n_b
    return edges, edges * 16 + max(n_f, n_b) * 4 * (1 + channels) * 2


def memory_limit(ctx: Context) -> float:
    """Bytes the explicit path may use: 8 GB on CPU, 40% of the GPU."""
    if ctx.cuda:
        return 0.4 * torch.cuda.get_device_properties(ctx.device).total_memory
    return float(ctx.options.get("explicit_gb", 8.0)) * 1e9


def release(device: torch.device) -> None:
    """Give freed memory back: the CUDA cache, or glibc's heap (a shared machine)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------- section: scaling
def scaling_specs(ctx: Context) -> list[tuple]:
    mlps = [
        ("mlp", [16, 32, 10], 1),  # ~1e3
        ("mlp", [784, 10, 10], 1),  # ~8e3
        ("mlp", [784, 100, 10], 1),  # ~8e4
        ("mlp", [784, 400, 10], 1),  # ~3e5
        ("mlp", [784, 1000, 1000, 10], 1),  # ~1.8e6
    ]
    skips = [
        ("skip", [784, 32, 32, 32, 10], 3, 1),  # ~8e4
        ("skip", [784, 100, 100, 100, 10], 3, 1),  # ~2.7e5
        ("skip", [784, 300, 300, 300, 10], 3, 1),  # ~1e6
    ]
    if ctx.quick:
        return mlps[:4] + skips[:2]
    big = [("mlp", [784, 1000, 1000, 10], 3), ("mlp", [784, 1000, 1000, 10], 6)]  # 5.4e6, 1.1e7
    if ctx.cuda:
        big.append(("mlp", [784, 1000, 1000, 10], 12))  # 2.2e7
    return mlps + big + skips


def run_scaling(sec: Section, ctx: Context) -> None:
    dev = ctx.device
    rule = make_rule(dev)
    t = Table(
        "One rule step without gradients (growing), fast O(E) path vs materialised line graph",
        [
            "task net(s)",
            "weights",
            "step ms",
            "ns/weight",
            "weight updates/s",
            "line-graph edges",
            "explicit ms",
            "explicit/fast",
        ],
    )
    sec.tables.append(t)
    rows = []
    limit = memory_limit(ctx)
    for spec in scaling_specs(ctx):
        if not ctx.budget.allows(30 if not ctx.quick else 5):
            sec.status = "partial"
            sec.note(f"time budget: stopped before {spec}")
            break
        t0 = time.perf_counter()
        name, graph = build_graph(spec, dev)
        e = graph.num_nodes
        w, h = make_state(graph, C, dev)
        fns = {"fast": no_grad_step(rule, graph, w, h)}
        n_lg, need = explicit_bytes(graph, C)
        est = n_lg * (2e-9 if ctx.cuda else 6e-8) * (ctx.rounds + 2)  # rough seconds
        if need <= limit and n_lg <= (2e8 if ctx.cuda else 4e8) and ctx.budget.allows(est + 30):
            try:
                rule.line_graph(graph)  # built once, cached (not timed)
                fns["explicit"] = no_grad_step(rule, graph, w, h, "explicit")
            except (MemoryError, RuntimeError) as err:
                sec.note(f"{name}: explicit path failed ({type(err).__name__}: {err})")
        inner = pick_inner(fns["fast"], dev, 0.02 if not ctx.cuda else 0.01)
        rounds = ctx.rounds if e < 5e6 or ctx.cuda else max(2, ctx.rounds // 2)
        res = interleaved(
            fns,
            dev,
            rounds,
            inner={"fast": inner},
            max_seconds=60 if not ctx.quick else 10,
        )
        tf = res["fast"].median
        te = res["explicit"].median if "explicit" in res else None
        kind = "skip" if spec[0] == "skip" else "mlp"
        rows.append(
            {
                "net": name,
                "kind": kind,
                "weights": e,
                "fast_s": tf,
                "explicit_s": te,
                "line_graph_edges": n_lg,
                "explicit_bytes": need,
                "timings": {k: v.as_dict() for k, v in res.items()},
            }
        )
        t.rows.append(
            [
                name,
                f"{e:,}",
                ms(tf),
                fmt(tf / e * 1e9),
                f"{e / tf:.3g}",
                f"{n_lg:.3g}",
                ms(te) if te else f"skipped (~{need / 1e9:.0f} GB)" if need > limit else "-",
                f"{te / tf:.0f}x" if te else "-",
            ]
        )
        sec.data["rows"] = rows
        sec.note(f"{name}: {e:,} weights, step {ms(tf)} ms ({time.perf_counter() - t0:.0f} s)")
        del graph, w, h, fns
        release(dev)
    for kind in ("mlp", "skip"):
        pts = [(r["weights"], r["fast_s"]) for r in rows if r["kind"] == kind]
        big = [p for p in pts if p[0] >= 1e5]
        ex_all = fit_exponent([p[0] for p in pts], [p[1] for p in pts])
        ex_big = fit_exponent([p[0] for p in big], [p[1] for p in big])
        sec.data[f"exponent_{kind}_all"] = ex_all
        sec.data[f"exponent_{kind}_ge_1e5"] = ex_big
        if ex_all is not None:
            t.notes.append(
                f"Fitted exponent ({kind}): step time ~ E^{ex_all:.2f} over all sizes"
                + (f", E^{ex_big:.2f} over E >= 1e5" if ex_big is not None else "")
                + " (1.00 = linear; below 1e5 weights fixed per-call overheads dominate)."
            )
    t.notes.append(
        f"Rule C={C}, MLP 27-64-9, incident, fire rate 0.8, float32; median of interleaved "
        f"rounds on the {clock_for(dev)} clock. 'weight updates/s' = weights whose update is "
        "computed per second (E / step time). Nets marked xK are K copies batched in one graph."
    )
    if ctx.budget.allows(20):
        batch_vs_loop(sec, ctx, rule)


def batch_vs_loop(sec: Section, ctx: Context, rule: LocalRule) -> None:
    """One batched graph of G nets against a Python loop over the G nets, one step each."""
    dev = ctx.device
    t = Table(
        "Many nets: one batched step vs a Python loop over the same nets (no grad)",
        ["nets", "weights in all", "batched ms", "loop ms", "loop/batched"],
    )
    sec.tables.append(t)
    cases = [([4, 16, 3], 100), ([784, 100, 10], 8 if not ctx.cuda else 64)]
    if ctx.quick:
        cases = [([4, 16, 3], 100), ([784, 100, 10], 4)]
    out = []
    for sizes, g in cases:
        arch = Architecture.mlp(sizes)
        one = WeightGraph.from_architecture(arch, device=dev)
        batched = WeightGraph.replicate(arch, g, device=dev)
        w, h = make_state(batched, C, dev)
        e = arch.num_weights
        ws = [w[i * e : (i + 1) * e] for i in range(g)]
        hs = [h[i * e : (i + 1) * e] for i in range(g)]
        f_batch = no_grad_step(rule, batched, w, h)
        gen = torch.Generator(device=dev).manual_seed(1)

        def f_loop(ws=ws, hs=hs, one=one, gen=gen) -> None:
            with torch.no_grad():
                for wi, hi in zip(ws, hs, strict=True):
                    rule(one, wi, hi, generator=gen)

        inner = pick_inner(f_batch, dev, 0.01)
        res = interleaved(
            {"batched": f_batch, "loop": f_loop},
            dev,
            ctx.rounds,
            inner={"batched": inner},
            max_seconds=30,
        )
        tb, tl = res["batched"].median, res["loop"].median
        name = f"{g} x " + "-".join(map(str, sizes))
        t.rows.append([name, f"{g * e:,}", ms(tb), ms(tl), f"{tl / tb:.1f}x"])
        out.append({"nets": name, "batched_s": tb, "loop_s": tl})
    sec.data["batch_vs_loop"] = out


# ---------------------------------------------------------------------- section: floor
def floor_specs(ctx: Context) -> list[tuple]:
    specs = [("mlp", [784, 100, 10], 1), ("mlp", [784, 1000, 1000, 10], 1)]
    if ctx.cuda:
        specs.append(("mlp", [784, 100, 10], 128))  # 10.2 M weights
        specs.append(("mlp", [784, 1000, 1000, 10], 6))  # 10.8 M weights
    elif not ctx.quick:
        specs.append(("mlp", [784, 1000, 1000, 10], 6))
    if ctx.quick and not ctx.cuda:
        specs = specs[:1] + [("mlp", [784, 400, 10], 1)]
    return specs


def run_floor(sec: Section, ctx: Context) -> None:
    dev = ctx.device
    rule = make_rule(dev)
    target = 1.3 if ctx.cuda else 1.5
    t = Table(
        "A whole rule step vs the rule MLP alone on the same rows",
        [
            "task net(s)",
            "weights",
            "mode",
            "step ms",
            "MLP ms (same kernels)",
            "step/MLP",
            "nn.Sequential ms",
            "step/Sequential",
            f"target <= {target}x",
            "weight updates/s",
        ],
    )
    sec.tables.append(t)
    rows = []
    for spec in floor_specs(ctx):
        name, graph = build_graph(spec, dev)
        e = graph.num_nodes
        w, h = make_state(graph, C, dev)
        with torch.no_grad():
            p = rule.perceive(graph, w, h)
        for mode in ("no-grad", "fwd+bwd"):
            big = e > 2e6 and not ctx.cuda
            if mode == "fwd+bwd" and big and ctx.quick:
                continue
            if not ctx.budget.allows(40 if big else 10):
                sec.status = "partial"
                sec.note(f"time budget: skipped {name} {mode}")
                continue
            if mode == "no-grad":

                def mlp_same(p=p) -> None:
                    with torch.no_grad():
                        rule.delta(p)

                def mlp_seq(p=p) -> None:
                    with torch.no_grad():
                        rule.mlp(p)

                fns = {
                    "step": no_grad_step(rule, graph, w, h),
                    "mlp": mlp_same,
                    "seq": mlp_seq,
                }
            else:
                pg = p.clone().requires_grad_(True)

                def mlp_bwd(pg=pg) -> None:
                    rule.zero_grad(set_to_none=True)
                    pg.grad = None
                    rule.delta(pg).sum().backward()

                fns = {"step": grad_step(rule, graph, w, h), "mlp": mlp_bwd}
            inner = pick_inner(fns["step"], dev, 0.02 if not ctx.cuda else 0.01)
            res = interleaved(
                fns, dev, ctx.rounds, inner=inner, max_seconds=90 if not ctx.quick else 15
            )
            ts, tm = res["step"].median, res["mlp"].median
            tq = res["seq"].median if "seq" in res else None
            ratio = ts / tm
            ok = "met" if ratio <= target else f"missed by {ratio / target - 1:.0%}"
            t.rows.append(
                [
                    name,
                    f"{e:,}",
                    mode,
                    ms(ts),
                    ms(tm),
                    f"{ratio:.2f}x",
                    ms(tq) if tq else "-",
                    f"{ts / tq:.2f}x" if tq else "-",
                    ok,
                    f"{e / ts:.3g}",
                ]
            )
            rows.append(
                {
                    "net": name,
                    "weights": e,
                    "mode": mode,
                    "step_s": ts,
                    "mlp_s": tm,
                    "sequential_s": tq,
                    "ratio": ratio,
                    "timings": {k: v.as_dict() for k, v in res.items()},
                }
            )
            sec.data["rows"] = rows
            sec.note(f"{name} {mode}: step {ms(ts)} ms, MLP {ms(tm)} ms -> {ratio:.2f}x")
        del graph, w, h, p
        release(dev)
    t.notes.append(
        "'MLP (same kernels)' is `rule.delta(p)` on a precomputed perception `p` of the same "
        "rows: without gradients it runs exactly as inside the step (blocks of "
        f"{LocalRule.block_rows} rows on CPU, activations in place); 'nn.Sequential' is "
        "`rule.mlp(p)` on all rows at once, what a plain PyTorch implementation pays. "
        "fwd+bwd: forward and backward of a scalar of the outputs (meta-training)."
    )


# ---------------------------------------------------------------------- section: options
def functional_step(rule: LocalRule, graph) -> Callable:
    """The fast-path step as a pure function of tensors ``(w, h, mask)`` with the graph's
    structure captured as constants (no Python-side graph lookups), for :func:`torch.compile`.

    Same math as :meth:`LocalRule.forward` (incident/directed/sibling, mean/sum): sums of
    ``[w, h]`` per neuron by ``index_add``, one gather, the own-weight fix, MLP, masked update.
    """
    from gnca.graph import NEIGHBOURHOODS, total_neurons
    from gnca.perception import neuron_plan

    dtype = next(rule.parameters()).dtype
    index, coef, scale_f, scale_b = neuron_plan(
        graph, rule.neighbourhood, rule.include_self, rule.reduce, dtype
    )
    n = total_neurons(graph)
    fwd, bwd = NEIGHBOURHOODS[rule.neighbourhood]
    ends = {"in": graph.dst, "out": graph.src}
    incident = rule.neighbourhood == "incident"

    def step(w: torch.Tensor, h: torch.Tensor, mask: torch.Tensor):
        x = torch.cat([w.unsqueeze(1), h], dim=1)
        e, d = x.shape
        z = x.new_zeros(n, d)
        if incident:
            s_f = s_b = z.index_add(0, graph.dst, x).index_add(0, graph.src, x)
        else:
            s_f = z.index_add(0, ends[fwd[0]], x)
            s_b = z.index_add(0, ends[bwd[0]], x)
        table = torch.cat([x.new_zeros(1, d), s_f * scale_f, s_b * scale_b])
        p = table.index_select(0, index).view(e, 3, d)
        p = torch.addcmul(p, x.unsqueeze(1), coef).view(e, 3 * d)
        out = rule.mlp(p)
        if rule.bound is not None:
            out = rule.bound * torch.tanh(out / rule.bound)
        m = mask.to(out.dtype)
        return torch.addcmul(w, out[:, 0], m), torch.addcmul(h, out[:, 1:], m.unsqueeze(1))

    return step


def run_options(sec: Section, ctx: Context) -> None:
    """torch.compile of the step and bf16 autocast, vs the eager float32 step."""
    dev = ctx.device
    rule = make_rule(dev)
    spec = ("mlp", [784, 100, 10], 128 if ctx.cuda else (2 if ctx.quick else 8))
    name, graph = build_graph(spec, dev)
    e = graph.num_nodes
    w, h = make_state(graph, C, dev)
    gen = torch.Generator(device=dev).manual_seed(3)
    mask = rule.fire_mask(e, dev, gen)
    t = Table(
        f"Opt-in options on {name} ({e:,} weights): one rule step",
        [
            "mode",
            "variant",
            "ms",
            "vs default",
            "max |w' - w'_fp32|",
            "max |h' - h'_fp32|",
            "notes",
        ],
    )
    sec.tables.append(t)
    with torch.no_grad():
        ref_w, ref_h = rule(graph, w, h, mask=mask)
    step = functional_step(rule, graph)
    wg, hg = w.clone().requires_grad_(True), h.clone().requires_grad_(True)

    def with_grad(f: Callable) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor]:
            rule.zero_grad(set_to_none=True)
            wg.grad = hg.grad = None
            w1, h1 = f(wg, hg, mask)
            (w1.sum() + h1.sum()).backward()
            return w1.detach(), h1.detach()

        return run

    def no_grad(f: Callable) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                return f(w, h, mask)

        return run

    def eager_rule(w_, h_, m_):
        return rule(graph, w_, h_, mask=m_)

    def autocast(f: Callable) -> Callable:
        def run(w_, h_, m_):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                return f(w_, h_, m_)

        return run

    variants: dict[str, dict[str, Callable]] = {
        "no-grad": {
            "default (fused eager, fp32)": no_grad(eager_rule),
            "functional, eager": no_grad(step),
            "bf16 autocast": no_grad(autocast(eager_rule)),
        },
        "fwd+bwd": {
            "default (eager, fp32)": with_grad(eager_rule),
            "bf16 autocast": with_grad(autocast(eager_rule)),
        },
    }
    notes: dict[tuple[str, str], str] = {}
    if ctx.options.get("compile", True) and ctx.budget.allows(60):
        for mode in ("no-grad", "fwd+bwd"):
            if mode == "fwd+bwd" and (not ctx.cuda or not ctx.budget.allows(60)):
                sec.note("torch.compile of fwd+bwd skipped (CPU run or time budget)")
                continue
            try:
                t0 = time.perf_counter()
                compiled = torch.compile(step, dynamic=False)
                f = no_grad(compiled) if mode == "no-grad" else with_grad(compiled)
                f()
                f()
                notes[(mode, "torch.compile")] = f"compile {time.perf_counter() - t0:.0f} s"
                variants[mode]["torch.compile"] = f
            except Exception as err:  # compile needs a working toolchain; report, go on
                msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
                sec.note(f"torch.compile ({mode}) failed: {type(err).__name__}: {msg}")
    else:
        sec.note("torch.compile skipped (time budget or --no-compile)")
    rows = []
    for mode, fns in variants.items():
        outs = {}
        for k, fn in list(fns.items()):
            try:
                o = fn()
                outs[k] = (o[0].float(), o[1].float())
            except Exception as err:
                sec.note(f"{mode} {k} failed: {type(err).__name__}: {str(err).splitlines()[0]}")
                del fns[k]
        first = next(iter(fns))
        res = interleaved(
            fns, dev, ctx.rounds, inner=pick_inner(fns[first], dev, 0.02), max_seconds=60
        )
        base = res[first].median
        for k, r in res.items():
            dw = (outs[k][0] - ref_w).abs().max().item()
            dh = (outs[k][1] - ref_h).abs().max().item()
            t.rows.append(
                [
                    mode,
                    k,
                    ms(r.median),
                    _speed(base, r.median),
                    f"{dw:.1e}",
                    f"{dh:.1e}",
                    notes.get((mode, k), ""),
                ]
            )
            rows.append(
                {"mode": mode, "variant": k, "seconds": r.median, "max_dw": dw, "max_dh": dh}
            )
        sec.data["rows"] = rows
    t.notes.append(
        "'functional' is the step written as plain tensor ops on precomputed structure "
        "(`functional_step` in benchmarks/scaling.py, the same math as `LocalRule.forward`); "
        "torch.compile compiles it for this graph (static shapes, default mode). bf16 autocast "
        "wraps the default step in `torch.autocast(dtype=torch.bfloat16)`: the state stays "
        "float32, the rule MLP runs in bf16. Differences: one step against the eager float32 "
        "step (fwd+bwd rows compare the forward outputs)."
    )


def _speed(base: float, t: float) -> str:
    if abs(t - base) <= 0.005 * base:
        return "1.00x"
    return f"{base / t:.2f}x faster" if t < base else f"{t / base:.2f}x slower"


def _quick_main() -> None:  # pragma: no cover - convenience entry point
    import argparse

    from common import Budget, Results, environment

    ap = argparse.ArgumentParser(description="scaling/floor/options sections alone")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ctx = Context(dev, args.quick, Budget(None), args.rounds)
    res = Results(None, environment(dev), "python benchmarks/scaling.py")
    for name, fn in (("scaling", run_scaling), ("floor", run_floor), ("options", run_options)):
        res.run(name, lambda s, fn=fn: fn(s, ctx))
    print(res.markdown())


if __name__ == "__main__":
    _quick_main()
