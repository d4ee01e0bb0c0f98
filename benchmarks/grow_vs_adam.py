"""Growing 100 task nets with a trained rule vs training 100 nets from scratch with Adam.

For one task (Iris, MNIST, digits with a rule that reads data) and one architecture (the rule's
first training architecture):

1. a trained rule (``--iris-checkpoint`` / ``--mnist-checkpoint``, or one meta-trained here for
   ``--train-seconds``, its accuracy stated) grows 100 nets as one batch, no gradients; the mean
   test accuracy over the 100 nets is recorded after every rule step. ``digits_senses``: a rule
   with senses (``--digits-senses-checkpoint``, e.g. ``runs/digits_senses_pool/last.pt`` of
   ``configs/digits_senses.yaml``; skipped without one) reads ``rule.sense_batch`` training
   examples at every rule step through its :class:`gnca.senses.SenseReader` (true labels, not
   the permutations of meta-training), so it sees ``sense_batch`` x rule steps examples per
   net, and the reading is part of what is timed and counted;
2. target accuracies: the best mean accuracy the grown nets reach (``A``) and ``A - 0.02``;
   growing needs the first rule step count at which the mean reaches each target;
3. Adam trains 100 nets of the same architecture (default PyTorch init, tanh, batched matmuls
   over the nets, one shared data batch per step, loss = sum of the nets' mean cross-entropies,
   so every net trains exactly as it would alone). Learning rate and batch size are tuned on a
   small grid (full batch for Iris; for the data-reading rule the batch is its ``sense_batch``,
   so both see the same number of examples per step), and the configuration that reaches
   each target soonest in wall time wins; the tuning itself is not charged to Adam;
4. both procedures are then timed side by side (interleaved rounds, median): growing = graph,
   initial states and the rule steps; Adam = init and the optimisation steps; neither includes
   evaluation (growing with senses includes the reader's batches and forward passes). Flops of
   both are counted, and the point where the balance tips is stated.

Accuracies are measured on the test split (on MNIST a fixed subset of up to 5000 test images
picks the step counts; the final accuracies use the whole test split).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import Context, Section, Table, fmt, interleaved

ROOT = Path(__file__).resolve().parent.parent
NETS = 100
#: the cases of the section, in order (``--grow-tasks`` picks some)
TASKS = ("iris", "mnist", "digits_senses")


# ---------------------------------------------------------------------- the rule
def find_mnist_dir(ctx: Context) -> str | None:
    for cand in (
        ctx.options.get("mnist_dir"),
        os.environ.get("GNCA_DATA"),
        str(ROOT.parent / "shared" / "data" / "mnist"),
    ):
        if cand and Path(cand).is_dir() and any(Path(cand).glob("t10k-images*")):
            return cand
    return None


def get_rule(sec: Section, ctx: Context, task: str):
    """(rule, cfg, how it was obtained) from a checkpoint or a short meta-training run."""
    from gnca.build import load_rule, make_dataset
    from gnca.config import load_config
    from gnca.trainer import MetaTrainer

    ckpt = ctx.options.get(f"{task}_checkpoint")
    if task == "digits_senses" and not ckpt:
        raise ValueError("digits_senses needs a checkpoint (--digits-senses-checkpoint)")
    if ckpt:
        rule, cfg = load_rule(ckpt, map_location=ctx.device)
        return rule.to(ctx.device), cfg, f"checkpoint {ckpt}"
    path = ROOT / "configs" / ("iris_stability.yaml" if task == "iris" else "mnist_fast.yaml")
    over = [f"train.device={ctx.device}"]
    if task == "mnist":
        over.append(f"data.data_dir={find_mnist_dir(ctx)}")
    cfg = load_config(path, over)
    seconds = ctx.options.get("train_seconds")
    if seconds is None:
        seconds = 20 if ctx.quick else (60 if ctx.cuda else 240)
    seconds = min(seconds, max(ctx.budget.left() * 0.3, 5))
    data = make_dataset(cfg.data)
    trainer = MetaTrainer.from_config(cfg, data, ctx.device)
    t0 = time.perf_counter()
    planned = cfg.train.steps
    while trainer.step < planned:
        trainer.meta_step()
        if trainer.step == 5:  # fit the schedule (cosine lr decay) into the time available
            per = (time.perf_counter() - t0) / 5
            planned = min(planned, max(6, int(seconds / per)))
            cfg.train.steps = planned
        if time.perf_counter() - t0 > seconds * 1.5:
            break
    took = time.perf_counter() - t0
    sec.note(f"{task}: meta-trained a rule here for {trainer.step} meta-steps ({took:.0f} s)")
    return trainer.rule.eval(), cfg, f"meta-trained here, {trainer.step} meta-steps, {took:.0f} s"


# ---------------------------------------------------------------------- Adam, batched
class BatchedMLP:
    """``G`` independent MLPs as stacked weights ``(G, a, b)``, PyTorch's default init."""

    def __init__(self, sizes: list[int], g: int, device: torch.device, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.params: list[torch.Tensor] = []
        self.layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(a)
            W = ((torch.rand(g, a, b, generator=gen) * 2 - 1) * bound).to(device)
            c = ((torch.rand(g, 1, b, generator=gen) * 2 - 1) * bound).to(device)
            W.requires_grad_(True)
            c.requires_grad_(True)
            self.layers.append((W, c))
            self.params += [W, c]

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """``X (B, n_in)`` -> logits ``(G, B, n_out)``; tanh hidden activations."""
        g = self.layers[0][0].shape[0]
        out = X.unsqueeze(0).expand(g, -1, -1)
        for i, (W, c) in enumerate(self.layers):
            out = torch.baddbmm(c, out, W)
            if i < len(self.layers) - 1:
                out = torch.tanh(out)
        return out


def adam_run(
    sizes: list[int],
    X: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    batch: int | None,
    steps: int,
    seed: int,
    on_step: Callable[[int, BatchedMLP], bool] | None = None,
) -> BatchedMLP:
    """Train ``NETS`` nets with Adam for ``steps`` steps; ``on_step(t, nets)`` may stop early."""
    dev = X.device
    nets = BatchedMLP(sizes, NETS, dev, seed)
    opt = torch.optim.Adam(nets.params, lr=lr)
    n = X.shape[0]
    gen = torch.Generator(device=dev).manual_seed(seed)
    for t in range(1, steps + 1):
        if batch is None or batch >= n:
            xb, yb = X, y
        else:
            idx = torch.randint(n, (batch,), device=dev, generator=gen)
            xb, yb = X[idx], y[idx]
        logits = nets(xb)
        g, b, c = logits.shape
        loss = F.cross_entropy(logits.reshape(g * b, c), yb.repeat(g)) * g
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None and on_step(t, nets):
            break
    return nets


@torch.no_grad()
def nets_accuracy(nets: BatchedMLP, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(G,)`` accuracy of every net."""
    correct = torch.zeros(NETS, device=X.device)
    for i in range(0, X.shape[0], 5000):
        pred = nets(X[i : i + 5000]).argmax(-1)
        correct += (pred == y[i : i + 5000]).float().sum(1)
    return correct / X.shape[0]


# ---------------------------------------------------------------------- flops
def rule_flops_per_weight(rule) -> int:
    """Flops of one rule step per weight: the rule MLP plus perception and update (the senses'
    channels widen the MLP's input; reading them is :func:`senses_flops_per_net`)."""
    from gnca.senses import sense_size

    d = 1 + rule.hidden_channels
    dims = [3 * d + sense_size(rule.senses), *rule.widths, d]
    mlp = sum(2 * a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))
    return mlp + 8 * d  # sums in/out (2d), own-term fix (4d), masked update (2d)


def senses_flops_per_net(sizes: list[int], batch: int, names) -> int:
    """Flops of one read of the senses for one MLP (``gnca.senses.dense_senses``): the forward
    pass (2BP), the error messages into the hidden layers (2B per weight above the first
    layer), and one ``A^T A / B`` product per layer for ``hebb`` and for ``delta`` (2BP each);
    elementwise terms ignored."""
    if not names:
        return 0
    layers = [a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    p = sum(layers)
    feedback = "error" in names or "delta" in names
    total = 2 * batch * p
    if feedback:
        total += 2 * batch * sum(a * b for a, b in zip(sizes[1:-1], sizes[2:], strict=True))
    total += 2 * batch * p * (("hebb" in names) + ("delta" in names))
    return total


def adam_flops_per_step(sizes: list[int], batch: int) -> int:
    """Flops of one Adam step of one net: forward 2BP, backward 4BP, update ~10P."""
    p = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return 6 * batch * p + 10 * p


# ---------------------------------------------------------------------- one task
def run_task(sec: Section, ctx: Context, task: str) -> None:
    from gnca.build import trained_from
    from gnca.grow import grow

    dev = ctx.device
    if task == "mnist" and find_mnist_dir(ctx) is None and not ctx.options.get("mnist_dir"):
        sec.note("mnist: skipped (no MNIST IDX files: pass --mnist-dir or set GNCA_DATA)")
        return
    if task == "digits_senses" and not ctx.options.get("digits_senses_checkpoint"):
        sec.note(
            "digits_senses: skipped (no rule that reads data: pass --digits-senses-checkpoint, "
            "e.g. runs/digits_senses_pool/last.pt of gnca train --config "
            "configs/digits_senses.yaml)"
        )
        return
    rule, cfg, how = get_rule(sec, ctx, task)
    data_dir = (ctx.options.get("mnist_dir") or find_mnist_dir(ctx)) if task == "mnist" else None
    trained = trained_from(rule, cfg, device=dev, data_dir=data_dir)
    the_task, init, data = trained.task, trained.init, trained.task.data
    reads = bool(rule.senses)  # the rule reads sense_batch training examples every rule step
    sense_batch = cfg.rule.sense_batch if reads else 0
    arch = the_task.mlp(cfg.task.architectures[0])
    sizes = list(arch.mlp_sizes)
    act = cfg.task.activation
    if act != "tanh":
        sec.note(f"{task}: the rule's task activation is {act}; Adam nets use tanh")
    Xtr, ytr = data.X_train.to(dev), data.y_train.to(dev)
    Xte, yte = data.X_test.to(dev), data.y_test.to(dev)
    sel = torch.randperm(Xte.shape[0], generator=torch.Generator().manual_seed(0))[:5000]
    Xsel, ysel = Xte[sel.to(dev)], yte[sel.to(dev)]
    k_max = cfg.train.k_max
    s_max = 2 * k_max
    t0 = time.perf_counter()
    res = grow(
        rule,
        arch,
        NETS,
        s_max,
        init,
        device=dev,
        generator=torch.Generator(device=dev).manual_seed(11),
        metric=lambda g, w: the_task.accuracy(g, w, Xsel, ysel),
        record_at=range(s_max + 1),
        senses=trained.reader(11),
    )
    curve = res.curve.mean(1).tolist()  # mean over nets, per rule step
    best = max(curve)
    targets = [best, best - 0.02]
    grow_steps = [next(s for s, a in enumerate(curve) if a >= tgt - 1e-9) for tgt in targets]
    sec.note(
        f"{task}: grown nets reach mean test accuracy {best:.4f} (step {grow_steps[0]}), "
        f"curve in {time.perf_counter() - t0:.0f} s"
    )

    chance = 1.0 / data.n_classes
    if best < max(curve[0], chance) + 0.05:
        sec.status = "partial"
        sec.note(
            f"{task}: the rule is not trained enough (best mean accuracy {best:.3f}, initial "
            f"{curve[0]:.3f}, chance {chance:.3f}); no comparison with Adam"
        )
        sec.data[task] = {"rule": how, "arch": sizes, "curve": curve}
        return

    # ---- Adam: tune lr and batch size, record when each target is first reached
    n_train = Xtr.shape[0]
    if task == "iris":
        grid = [(lr, None) for lr in (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)]
        max_steps, every = 3000, 5
    elif reads:  # the batch the rule reads per step
        grid = [(lr, sense_batch) for lr in (3e-3, 1e-2, 3e-2, 1e-1)]
        if ctx.quick:
            grid = [(1e-2, sense_batch), (3e-2, sense_batch)]
        max_steps, every = 3000, 5
    else:
        grid = [(lr, b) for b in (128, 512) for lr in (3e-3, 1e-2, 3e-2)]
        if ctx.quick:
            grid = [(1e-2, 128), (1e-2, 512)]
        max_steps, every = 3000, 10
    cap = 20 if ctx.quick else (150 if task == "mnist" else 60)
    cap = min(cap, max(ctx.budget.left() * 0.25 / len(grid), 2))
    tuning = []
    for lr, b in grid:
        reached: dict[int, int] = {}
        best_acc = [0.0]
        t_start = time.perf_counter()
        eval_time = [0.0]

        def on_step(
            t: int,
            nets: BatchedMLP,
            reached=reached,
            best_acc=best_acc,
            eval_time=eval_time,
            t_start=t_start,
        ) -> bool:
            if t % every:
                return False
            e0 = time.perf_counter()
            acc = float(nets_accuracy(nets, Xsel, ysel).mean())
            eval_time[0] += time.perf_counter() - e0
            best_acc[0] = max(best_acc[0], acc)
            for i, tgt in enumerate(targets):
                if i not in reached and acc >= tgt - 1e-9:
                    reached[i] = t
            done = len(reached) == len(targets)
            return done or time.perf_counter() - t_start > cap

        nets = adam_run(sizes, Xtr, ytr, lr, b, max_steps, 0, on_step)
        del nets
        wall = time.perf_counter() - t_start - eval_time[0]
        steps_run = max(reached.values()) if len(reached) == len(targets) else None
        tuning.append(
            {
                "lr": lr,
                "batch": b or n_train,
                "reached": {str(i): s for i, s in reached.items()},
                "best_mean_acc": best_acc[0],
                "train_seconds": wall,
                "complete": steps_run is not None,
            }
        )
    sec.data[f"{task}_tuning"] = tuning

    # ---- pick the fastest Adam configuration per target (time per step from the tuning run)
    def per_step(tr: dict) -> float:
        last = max([int(s) for s in tr["reached"].values()] or [1])
        return tr["train_seconds"] / max(last, 1)

    choice = []
    for i in range(len(targets)):
        ok = [tr for tr in tuning if str(i) in tr["reached"]]
        if not ok:
            choice.append(None)
            continue
        choice.append(min(ok, key=lambda tr, i=i: tr["reached"][str(i)] * per_step(tr)))

    # ---- the side-by-side timing
    gen_seed = [100]

    def grow_fn(steps: int) -> Callable[[], None]:
        def run() -> None:
            gen_seed[0] += 1
            grow(
                rule,
                arch,
                NETS,
                steps,
                init,
                device=dev,
                generator=torch.Generator(device=dev).manual_seed(gen_seed[0]),
                senses=trained.reader(gen_seed[0]),
            )

        return run

    def adam_fn(tr: dict, steps: int) -> Callable[[], None]:
        b = None if tr["batch"] >= n_train else tr["batch"]
        return lambda: adam_run(sizes, Xtr, ytr, tr["lr"], b, steps, 1)

    fns: dict[str, Callable[[], None]] = {}
    for i, s in enumerate(grow_steps):
        fns[f"grow{i}"] = grow_fn(s)
        if choice[i] is not None:
            fns[f"adam{i}"] = adam_fn(choice[i], choice[i]["reached"][str(i)])
    rounds = 2 if ctx.quick else 5
    timing = interleaved(fns, dev, rounds, max_seconds=max(10, ctx.budget.left() * 0.1))
    sec.data[f"{task}_timing"] = {k: v.as_dict() for k, v in timing.items()}

    # ---- final accuracies of timed-equivalent runs on the whole test split (not timed)
    def grown_acc(steps: int) -> torch.Tensor:
        r = grow(
            rule,
            arch,
            NETS,
            steps,
            init,
            device=dev,
            generator=torch.Generator(device=dev).manual_seed(999),
            metric=lambda g, w: the_task.accuracy(g, w, Xte, yte),
            record_at=[steps],
            senses=trained.reader(999),
        )
        return r.curve[0]

    cols = [
        "target (mean test acc)",
        "grow: rule steps",
        "grow: test acc mean [min, max]",
        "grow s",
        "Adam: lr, batch, steps",
        "Adam: test acc mean [min, max]",
        "Adam s",
        "Adam/grow time",
        "grow GFLOP",
        "Adam GFLOP",
    ]
    if reads:  # examples seen per net, after the step counts
        cols.insert(2, "grow: examples/net")
        cols.insert(6, "Adam: examples/net")
    t = Table(
        f"{task}: {NETS} nets of {arch.describe()} ({arch.num_weights:,} weights each), grown "
        + (f"by a rule that reads {sense_batch} examples per step " if reads else "")
        + "vs trained with Adam to the same mean test accuracy",
        cols,
    )
    sec.tables.append(t)
    f_rule = rule_flops_per_weight(rule)
    f_read = senses_flops_per_net(sizes, sense_batch, rule.senses) if reads else 0
    per_w_grow = f_rule + f_read / arch.num_weights  # flops per weight per rule step, in all
    rows = []
    for i, tgt in enumerate(targets):
        s = grow_steps[i]
        ga = grown_acc(s).cpu()
        tg = timing[f"grow{i}"].median
        gflop_g = s * NETS * (arch.num_weights * f_rule + f_read) / 1e9
        tr = choice[i]
        row = {
            "target": tgt,
            "grow_steps": s,
            "grow_examples": s * sense_batch,
            "grow_acc": [float(ga.mean()), float(ga.min()), float(ga.max())],
            "grow_s": tg,
            "grow_gflop": gflop_g,
        }
        if tr is None:
            best_adam = max(x["best_mean_acc"] for x in tuning)
            cells = [fmt(tgt, 4), s, _acc(ga), fmt(tg), f"not reached (best {best_adam:.4f})"]
            cells += ["-", "-", "-", fmt(gflop_g), "-"]
            if reads:
                cells.insert(2, f"{s * sense_batch:,}")
                cells.insert(6, "-")
            t.rows.append(cells)
            rows.append(row)
            continue
        n = tr["reached"][str(i)]
        b = None if tr["batch"] >= n_train else tr["batch"]
        nets = adam_run(sizes, Xtr, ytr, tr["lr"], b, n, 1)
        aa = nets_accuracy(nets, Xte, yte).cpu()
        ta = timing[f"adam{i}"].median
        gflop_a = n * NETS * adam_flops_per_step(sizes, tr["batch"]) / 1e9
        row.update(
            {
                "adam_lr": tr["lr"],
                "adam_batch": tr["batch"],
                "adam_steps": n,
                "adam_examples": n * tr["batch"],
                "adam_acc": [float(aa.mean()), float(aa.min()), float(aa.max())],
                "adam_s": ta,
                "adam_gflop": gflop_a,
                "ratio": ta / tg,
            }
        )
        rows.append(row)
        cells = [
            fmt(tgt, 4),
            s,
            _acc(ga),
            fmt(tg),
            f"{tr['lr']:g}, {tr['batch']}, {n}",
            _acc(aa),
            fmt(ta),
            f"{ta / tg:.1f}x" if ta / tg >= 0.95 else f"{ta / tg:.2f}x",
            fmt(gflop_g),
            fmt(gflop_a),
        ]
        if reads:
            cells.insert(2, f"{s * sense_batch:,}")
            cells.insert(6, f"{n * tr['batch']:,}")
        t.rows.append(cells)
    sec.data[task] = {"rule": how, "arch": sizes, "curve": curve, "rows": rows}
    # where the balance tips, in flops
    main = next((r for r in rows if "adam_steps" in r), None)
    t.notes.append(
        f"Rule: {how}; C={rule.hidden_channels}, widths {list(rule.widths)}"
        + (f", senses {'+'.join(rule.senses)}" if reads else "")
        + f": {f_rule:,} flops per weight per rule step"
        + (
            f", plus {f_read:,} per net ({f_read / arch.num_weights:,.0f} per weight) for reading "
            f"{sense_batch} examples through the net and sending the error messages back"
            if reads
            else ", independent of the data set"
        )
        + ". One Adam step costs 6 x batch + 10 flops per parameter. Growing for S steps "
        f"equals, in flops, S x {per_w_grow:,.0f} / (6 B + 10) Adam steps at batch B."
    )
    if main is not None:
        s, n, b = main["grow_steps"], main["adam_steps"], main["adam_batch"]
        tip_examples = s * per_w_grow / 6  # examples Adam may see before it costs as much
        t.notes.append(
            f"At the first target Adam needed {n} steps at batch {b} = {n * b:,} examples seen "
            f"({n * b / n_train:.1f} epochs of {n_train:,})"
            + (f", growing read {s * sense_batch:,}" if reads else "")
            + f"; in flops, growing {s} steps costs as "
            f"much as Adam seeing about {tip_examples:,.0f} examples, so growing is cheaper in "
            f"flops whenever Adam needs more than that to reach the accuracy "
            f"({'here: yes' if n * b > tip_examples else 'here: no'}). "
            f"Wall time also counts launches and memory traffic, hence the measured ratio."
        )
    t.notes.append(
        "Times: median of interleaved rounds; growing = replicate graph + initial state + rule "
        "steps (no grad"
        + ("; with the reader's batches and sense passes" if reads else "")
        + "); Adam = init + steps (no evaluation). Accuracies from a separate run of "
        "each procedure, on the whole test split; step counts picked on "
        f"{'the test split' if Xte.shape[0] <= 5000 else 'a 5000-image test subset'}. "
        "Adam's tuning grid: "
        + ", ".join(f"lr {g[0]:g} batch {g[1] or 'full'}" for g in grid)
        + " (tuning time not charged)."
    )
    if reads:
        t.notes.append(
            f"What differs between the two: the grown nets use the task's conventions of the "
            f"rule's config (init {cfg.task.init}, "
            + (
                f"mean-field sums fan_in_ref = {cfg.task.fan_in_ref:g}: a weight counts as "
                f"w x fan_in_ref / fan_in"
                if cfg.task.fan_in_ref
                else "plain sums"
            )
            + "); the Adam nets use PyTorch's default init and plain sums. "
            f"Both use {act} hidden units, batches of {sense_batch} drawn with replacement "
            f"from the same {n_train:,} training examples, and the true labels (the rule was "
            "meta-trained under label permutations)."
        )


def _acc(a: torch.Tensor) -> str:
    return f"{float(a.mean()):.4f} [{float(a.min()):.3f}, {float(a.max()):.3f}]"


def run_grow(sec: Section, ctx: Context) -> None:
    tasks = ctx.options.get("grow_tasks") or TASKS
    for task in tasks:
        if not ctx.budget.allows(30 if not ctx.quick else 10):
            sec.status = "partial"
            sec.note(f"{task}: skipped (time budget)")
            continue
        try:
            run_task(sec, ctx, task)
        except Exception as err:  # one task failing does not stop the other
            sec.status = "partial"
            sec.note(f"{task}: failed: {type(err).__name__}: {str(err).splitlines()[0]}")
