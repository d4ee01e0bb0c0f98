"""What does a data-reading rule's learned feedback cost? The rule beside the same rule with the
exact feedback and beside Adam at the rule's step, all on the same batches.

A rule with a descent path (``rule.descent``) moves its weights by a step along its ``delta``
sense, whose backward messages go through a feedback channel the rule learns. Three growths of
the same initial nets, on the very batches the transfer command's grown nets read with
``--seed S`` (one line per batch sequence ``S = 0 ... --sequences - 1``), for each multiple of
the rule's step in ``--scales``:

* ``rule``: the rule as it is, its learned feedback starting at ``c * w`` for each ``c`` of
  ``--feedback-init`` (default: the rule's own ``task.feedback_init``, 0 unless set);
* ``exact``: the same rule with ``rule.feedback: weights``, so the ``delta`` sense is the
  backpropagated gradient of each batch;
* ``adam``: Adam at the rule's step (``torch.optim.Adam``, autograd) on the same batches.

For a rule with ``descent_only``, ``descent_norm = 0.999`` and ``descent_momentum = 0.9`` the
``exact`` growth is Adam, computed by message passing, so ``exact`` and ``adam`` agree up to
the senses' soft clip (``x / (1 + |x|)``, the identity for small senses) and normalisation, and
``exact - rule`` is what the learned feedback costs.
``--adam-lr`` adds Adam at a fixed rate on the same batches. Means over the sequences come last.

    GNCA_DATA=/path/to/mnist python examples/feedback_cost.py runs/mnist_aligned_small/last.pt \\
        --steps 20 --sequences 3 --scales 1,1.5 --feedback-init 0,0.1 --adam-lr 0.03
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections.abc import Sequence

import torch

from gnca.archspec import parse_arch
from gnca.build import load_trained, make_dataset, make_task
from gnca.cliargs import nonneg_floats, positive_floats
from gnca.config import DataConfig
from gnca.experiments.adam_baseline import adam_batches, train_adam
from gnca.experiments.common import reader_seed
from gnca.experiments.learning import grow_on, initial_weights
from gnca.experiments.transfer import step_scaled


def _grown(tr, task, arch, args: argparse.Namespace, seq: int) -> float:
    """Mean test accuracy of ``args.num`` nets grown ``args.steps`` steps by ``tr`` with the
    transfer command's ``--seed seq`` (its initial nets and batch sequence)."""
    _, curve = grow_on(tr, None, args.steps, record=[args.steps], seed=seq, num=args.num,
                       task=task, arch=arch)  # fmt: skip
    return float(curve[0].mean())


def _adam(task, graph, w0: torch.Tensor, batch: int, lr: float, args, seq: int) -> float:
    """Mean test accuracy of Adam at ``lr`` from ``w0`` ``(G * E,)`` for ``args.steps`` steps of
    ``batch`` examples of the whole training split, on the batches :func:`_grown` reads."""
    X, y = task.split("train", w0.device)
    X_te, y_te = task.split("test", w0.device)
    keep = torch.ones_like(w0, dtype=torch.bool)
    batches = adam_batches(args.steps * batch, batch)
    w = train_adam(task, graph, w0, keep, batches, lr, reader_seed(seq), X, y)
    return float(task.batched_accuracy(graph, w, X_te, y_te).mean())


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a data-reading rule's last.pt, with a descent path")
    ap.add_argument("--dataset", default=None, help="data to grow on (default: the rule's)")
    ap.add_argument("--arch", default=None, help="an architecture spec, e.g. h:32 (default: "
                    "the rule's first training architecture)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=20, help="rule steps (default 20)")
    ap.add_argument("--sequences", type=int, default=3, help="batch sequences (default 3)")
    ap.add_argument("--num", type=int, default=10, help="nets per growth (default 10)")
    ap.add_argument("--scales", type=positive_floats, default=(1.0,), help="multiples of the "
                    "rule's step, comma-separated (default 1)")  # fmt: skip
    ap.add_argument("--feedback-init", type=nonneg_floats, default=None, help="starts of the "
                    "learned feedback, multiples of the weights (default: the rule's "
                    "task.feedback_init)")  # fmt: skip
    ap.add_argument("--adam-lr", type=positive_floats, default=(),
                    help="Adam at these fixed rates too")  # fmt: skip
    args = ap.parse_args(argv)
    if min(args.steps, args.sequences, args.num) < 1:
        ap.error("--steps, --sequences and --num must be >= 1")
    torch.set_num_threads(1)
    try:  # a missing checkpoint or dataset: one line
        tr = load_trained(args.checkpoint)
        task, arch = tr.task, None
        if args.dataset is not None:
            task = make_task(tr.cfg.task, make_dataset(DataConfig(name=args.dataset)))
    except ValueError as e:
        sys.exit(f"error: {e}")
    if not tr.rule.descent or tr.rule.feedback != "learned" or tr.rule.hidden_channels < 1:
        sys.exit("error: the rule needs a descent path (rule.descent > 0) and a learned feedback")
    starts = [tr.init.feedback_init] if args.feedback_init is None else args.feedback_init
    if args.arch is not None:
        d = task.data
        arch = parse_arch(args.arch, d.n_features, d.n_classes, tr.cfg.task.bias, d.image_shape)
    exact = dataclasses.replace(tr, rule=copy.deepcopy(tr.rule))
    exact.rule.feedback = "weights"
    alpha = float(tr.rule.descent_rate.detach())
    batch = tr.cfg.rule.sense_batch
    print(f"{task.name}, {args.steps} steps of {batch} examples, the rule's step {alpha:.4g}")
    means: dict[str, list[float]] = {}
    for s in range(args.sequences):
        graph, w0 = initial_weights(tr, args.num, s, arch)
        row: dict[str, float] = {}
        for scale in args.scales:
            for c in starts:
                init = dataclasses.replace(tr.init, feedback_init=c)
                scaled = dataclasses.replace(tr, rule=step_scaled(tr.rule, scale), init=init)
                row[f"rule x{scale:g} c={c:g}"] = _grown(scaled, task, arch, args, s)
            scaled = dataclasses.replace(exact, rule=step_scaled(exact.rule, scale))
            row[f"exact x{scale:g}"] = _grown(scaled, task, arch, args, s)
            row[f"adam x{scale:g}"] = _adam(task, graph, w0, batch, alpha * scale, args, s)
        for lr in args.adam_lr:
            row[f"adam lr {lr:g}"] = _adam(task, graph, w0, batch, lr, args, s)
        print(f"sequence {s}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
        for k, v in row.items():
            means.setdefault(k, []).append(v)
    print(f"mean of {args.sequences}: "
          + ", ".join(f"{k} {sum(v) / len(v):.4f}" for k, v in means.items()))  # fmt: skip


if __name__ == "__main__":
    main()
