"""Do a data-reading rule's nets drift when grown far past its horizon? A step-by-step printout.

Grows ``--num`` nets of ``--arch`` (an architecture spec as ``gnca grow`` takes it, e.g.
``h:32``) with a data-reading rule on ``--dataset`` (read as ``gnca experiment transfer`` reads
it) for ``--steps`` rule steps and prints, at a few steps, the test accuracy, the root mean
square of the task weights per layer kind (hidden layers, output layer), the hidden states' mean
and largest magnitude, the feedback channel's mean magnitude and the mean of every sense column.
A rule whose nets drift shows hidden states that grow by the update bound at every step and
weights that follow.

Two probes of why accuracy can fall after the horizon: ``--sense-batch N`` reads ``N`` examples
per rule step instead of the rule's own ``rule.sense_batch`` (does a less noisy read lift the
curve?), and ``--damp-after T --damp-power P`` scales every weight update after step ``T`` by
``(T / t) ** P``, as Adam's learning rate is tuned lower for larger budgets (is the fall noise
that a smaller step would average out, or a drift?). Hidden states are updated as the rule says.

Three probes of whether the hidden layer learns: the ``grad_align`` column is the cosine, per
net over its hidden-layer weights and then averaged, between the error signal the rule's
learned feedback sends there (the ``delta`` product on up to 512 training examples) and the
true gradient of the loss on them (``sign_align``: the share of those weights whose signal has
the gradient's sign); ``step_align`` is the same cosine between the hidden
weights' last step and minus that gradient (how much of the step descends); and
``--descent-only A`` replaces the MLP's weight update by ``-A`` times the ``delta`` sense as
the reader gives it (through the learned feedback, not rescaled by ``rule.sense_norm``; no MLP
step), as a ``rule.descent`` path steps: does plain descent through that feedback learn where
the rule's own steps stall? ``--descent-norm B2`` (and ``--descent-momentum B1``) takes
Adam's normalised step along that sense instead, as a ``rule.descent_norm`` path does (every
weight then steps by about ``A``), and ``--true-gradient`` steps along the true gradient of
the loss on a batch of the same size (backprop): how far is the learned feedback from it?

    python examples/growth_drift.py runs/tabular_augmented_s0/last.pt --dataset wine --arch h:32
    python examples/growth_drift.py RULE.pt --dataset mnist --downsample 4 --damp-after 200
    python examples/growth_drift.py RULE.pt --dataset classification --descent-only 0.3
    python examples/growth_drift.py RULE.pt --dataset circles --descent-only 0.03 \
        --descent-norm 0.999 --descent-momentum 0.9 [--true-gradient]
"""

from __future__ import annotations

import argparse

import torch
from torch_geometric.data import Data

from gnca.architecture import OUTPUT
from gnca.archspec import parse_arch
from gnca.build import TrainedRule, load_trained, make_dataset, make_task
from gnca.config import DataConfig
from gnca.data import DataError
from gnca.forward import effective_weights
from gnca.graph import WeightGraph, weight_batch
from gnca.rule import adam_path
from gnca.senses import SENSES, SenseReader, feedback_of, neuron_stats
from gnca.task import Task

DEFAULT_AT = (1, 10, 20, 50, 100, 200, 500, 1000, 2000)


def drift(
    checkpoint: str,
    dataset: str,
    arch: str,
    steps: int,
    num: int,
    seed: int,
    *,
    downsample: int = 1,
    sense_batch: int | None = None,
    damp_after: int | None = None,
    damp_power: float = 1.0,
    descent_only: float | None = None,
    descent_norm: float | None = None,
    descent_momentum: float = 0.0,
    true_gradient: bool = False,
) -> list[dict[str, float]]:
    """One row per printed step: ``step``, ``acc``, ``w_rms_hidden``, ``w_rms_out``,
    ``h_mean``, ``h_max``, ``feedback``, ``grad_align``, ``sign_align``, ``step_max`` (the
    largest weight change of that step) and ``step_align`` (see the module docstring;
    ``grad_align`` and ``sign_align`` are ``nan`` without the ``delta`` sense) and one
    ``sense:<name>`` per sense column (mean magnitude over the weights). ``sense_batch``:
    examples read per step (default the rule's); ``damp_after``: from the step after it,
    weight updates scaled by ``(damp_after / t) ** damp_power``; ``descent_only``: weights
    step by minus this times the reader's ``delta`` sense instead of the MLP's update;
    ``descent_norm``, ``descent_momentum``: Adam's ``beta2``, ``beta1`` for that step
    (:func:`gnca.rule.adam_path`); ``true_gradient``: the step follows the true gradient of
    the loss on as many training examples as the reader reads (backprop, the reference the
    learned feedback is measured against) instead of the ``delta`` sense."""
    tr = load_trained(checkpoint)
    if not tr.rule.senses:
        raise SystemExit(f"{checkpoint}: the rule reads no data (rule.senses is empty)")
    if descent_only is not None and "delta" not in tr.rule.senses:
        raise SystemExit(f"{checkpoint}: --descent-only steps along the delta sense, which the "
                         f"rule does not read")  # fmt: skip
    data = make_dataset(DataConfig(name=dataset, downsample=downsample))
    task = make_task(tr.cfg.task, data)
    net = parse_arch(arch, data.n_features, data.n_classes, tr.cfg.task.bias, data.image_shape,
                     data.name)  # fmt: skip
    graph = WeightGraph.replicate(net, num)
    gen = torch.Generator().manual_seed(seed)
    w, h = tr.init.state(graph, tr.rule.hidden_channels, gen)
    batch = tr.cfg.rule.sense_batch if sense_batch is None else sense_batch
    reader = SenseReader(tr.rule.senses, task, batch, torch.Generator().manual_seed(seed + 7),
                         feedback=tr.rule.feedback)  # fmt: skip
    X, y = task.split("test", "cpu")
    X_all, y_all = task.split("train", "cpu")
    X_tr, y_tr = X_all[:512], y_all[:512]
    out = graph.neuron_kind[graph.dst] == OUTPUT
    names = [f"sense:{n}" + (f"{i}" if SENSES[n] > 1 else "") for n in reader.names
             for i in range(SENSES[n])]  # fmt: skip
    at = {s for s in DEFAULT_AT if s <= steps} | {steps}
    rows = []
    moments = torch.zeros(w.shape[0], 4 if descent_momentum else 2)  # adam_path's state
    pick = torch.Generator().manual_seed(seed + 11)  # batches of the true gradient
    with torch.no_grad():
        for t in range(1, steps + 1):
            s = reader(graph, w, h)  # (E, S)
            w_old = w
            w_new, h = tr.rule(graph, w, h, generator=gen, senses=s)
            if descent_only is not None:
                sd = s[:, tr.rule.senses_offset("delta")]
                if true_gradient:
                    idx = torch.randint(0, X_all.shape[0], (batch,), generator=pick)
                    sd = true_grad(task, graph, w, X_all[idx], y_all[idx])
                if descent_norm is not None:
                    ones = torch.ones_like(sd)
                    sd, moments = adam_path(sd, moments, descent_momentum, descent_norm, ones)
                w_new = w - descent_only * sd
            if damp_after is not None and t > damp_after:
                w_new = w + (damp_after / t) ** damp_power * (w_new - w)
            w = w_new
            if t in at:
                grad, sign = alignments(tr, task, graph, w, h, X_tr, y_tr, ~out)
                rows.append({
                    "step": t,
                    "acc": float(task.accuracy(graph, w, X, y).mean()),
                    "w_rms_hidden": float(w[~out].square().mean().sqrt()),
                    "w_rms_out": float(w[out].square().mean().sqrt()),
                    "h_mean": float(h.abs().mean()),
                    "h_max": float(h.abs().max()),
                    "feedback": float(h[:, -1].abs().mean()),
                    "grad_align": grad,
                    "sign_align": sign,
                    "step_max": float((w - w_old).abs().max()),
                    "step_align": per_net_cos(graph, w - w_old,
                                              -true_grad(task, graph, w_old, X_tr, y_tr), ~out),
                    **{n: float(v) for n, v in zip(names, s.abs().mean(0), strict=True)},
                })  # fmt: skip
    return rows


def true_grad(
    task: Task, graph: Data, w: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``(E,)`` gradient of the summed per-net loss on ``X, y`` with respect to ``w``."""
    with torch.enable_grad():
        wg = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(task.loss(graph, wg, X, y).sum(), wg)
    return g


def per_net_cos(graph: Data, a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> float:
    """Mean over nets of the cosine between ``a`` and ``b`` ``(E,)`` on the weights ``keep``."""
    nets = weight_batch(graph)
    cos = [torch.nn.functional.cosine_similarity(a[k], b[k], dim=0)
           for k in ((nets == i) & keep for i in range(int(nets.max()) + 1))]  # fmt: skip
    return float(torch.stack(cos).mean())


def hidden_signals(
    tr: TrainedRule,
    task: Task,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E,)`` the learned-feedback error signal of every weight (its ``delta`` product) and
    ``(E,)`` the true gradient of the loss on ``X, y``, both with respect to the weights as the
    forward pass uses them."""
    fan_in_ref = tr.cfg.task.fan_in_ref
    fb = feedback_of(graph, w, h, tr.rule.feedback, fan_in_ref)
    st = neuron_stats(graph, w, fb, X, y, tr.cfg.task.activation, fan_in_ref)
    fa = (st.a[graph.src] * st.m[graph.dst]).mean(1)  # (E,) the delta product
    g = true_grad(task, graph, w, X, y)
    return fa, g / effective_weights(graph, torch.ones_like(w), fan_in_ref)


def alignments(
    tr: TrainedRule,
    task: Task,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    hidden: torch.Tensor,
) -> tuple[float, float]:
    """How the learned-feedback error signal of the ``hidden`` weights (``(E,)`` bool) follows
    the true gradient (:func:`hidden_signals`, computed once): ``grad_align``, the mean over
    nets of their cosine, and ``sign_align``, the share of those weights with a nonzero
    gradient whose signal has the gradient's sign. Adam's first steps move each weight by
    about its step size along that sign, whatever the size of its gradient, so a cosine near 1
    can hide many small gradients of the wrong sign. ``(nan, nan)`` without ``delta``."""
    if "delta" not in tr.rule.senses:
        return float("nan"), float("nan")
    fa, g = hidden_signals(tr, task, graph, w, h, X, y)
    live = hidden & (g != 0)
    sign = float((fa[live].sign() == g[live].sign()).double().mean())
    return per_net_cos(graph, fa, g, hidden), sign


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a data-reading rule's last.pt")
    p.add_argument("--dataset", default="wine", help="the data to grow on (default wine)")
    p.add_argument("--arch", default="h:32", help="architecture spec (default h:32)")
    p.add_argument("--steps", type=int, default=2000, help="rule steps (default 2000)")
    p.add_argument("--num", type=int, default=10, help="nets grown at once (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--downsample", type=int, default=1, help="k x k pooling of image data")
    p.add_argument("--sense-batch", type=int, help="examples read per step (default the rule's)")
    p.add_argument("--damp-after", type=int, help="scale weight updates after this step")
    p.add_argument("--damp-power", type=float, default=1.0, help="by (T / t) ** P (default 1)")
    p.add_argument("--descent-only", type=float, metavar="A",
                   help="weights step by -A x the delta sense, not the MLP's update")  # fmt: skip
    p.add_argument("--descent-norm", type=float, metavar="B2",
                   help="with --descent-only: Adam's normalised step, beta2 = B2")  # fmt: skip
    p.add_argument("--descent-momentum", type=float, default=0.0, metavar="B1",
                   help="with --descent-norm: Adam's beta1 (default 0)")  # fmt: skip
    p.add_argument("--true-gradient", action="store_true",
                   help="with --descent-only: step along the true gradient (backprop)")  # fmt: skip
    args = p.parse_args(argv)
    for flag, value in (("--sense-batch", args.sense_batch), ("--damp-after", args.damp_after)):
        if value is not None and value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.descent_only is not None and not args.descent_only >= 0:
        p.error(f"--descent-only must be >= 0, got {args.descent_only}")
    if args.descent_norm is not None:
        if args.descent_only is None:
            p.error("--descent-norm rescales the --descent-only step: give --descent-only too")
        if not 0 <= args.descent_norm < 1:
            p.error(f"--descent-norm must be in [0, 1), got {args.descent_norm}")
    if args.descent_momentum and args.descent_norm is None:
        p.error("--descent-momentum is Adam's first moment: give --descent-norm too")
    if not 0 <= args.descent_momentum < 1:
        p.error(f"--descent-momentum must be in [0, 1), got {args.descent_momentum}")
    if args.true_gradient and args.descent_only is None:
        p.error("--true-gradient replaces the --descent-only step: give --descent-only too")
    torch.set_num_threads(1)
    try:
        rows = drift(args.checkpoint, args.dataset, args.arch, args.steps, args.num, args.seed,
                     downsample=args.downsample, sense_batch=args.sense_batch,
                     damp_after=args.damp_after, damp_power=args.damp_power,
                     descent_only=args.descent_only, descent_norm=args.descent_norm,
                     descent_momentum=args.descent_momentum,
                     true_gradient=args.true_gradient)  # fmt: skip
    except DataError as err:  # e.g. --downsample on a table
        raise SystemExit(f"growth_drift.py: {err}") from None
    cols = list(rows[0])
    print(" ".join(f"{c:>12s}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>12d}" if c == "step" else f"{r[c]:>12.4g}" for c in cols))


if __name__ == "__main__":
    main()
