"""How much does the order of the examples move a learning curve? Adam over several batch sequences.

``gnca experiment transfer`` grows all its nets on one sequence of training batches and trains
its Adam baseline on another: every net of a run shares its sequence, so averaging over nets does
not average the sequence out. This script measures that spread for Adam: from the initial nets a
rule grows (``--num`` nets of its first training architecture, or ``--arch``, drawn with
``--seed`` as the transfer command draws them), it trains Adam at one rate (``--lr``) for
``--steps`` steps of ``rule.sense_batch`` examples on the first four fifths of the training split
(as the transfer command's tuning does), once per batch sequence ``0 ... --sequences - 1``, and
prints each sequence's mean test accuracy over the nets, then the range.

    GNCA_DATA=/path/to/mnist python examples/batch_sequences.py runs/mnist_aligned_small/last.pt \\
        --steps 200 --lr 0.03 --sequences 8
"""

from __future__ import annotations

import argparse

import torch

from gnca.archspec import parse_arch
from gnca.build import load_trained
from gnca.experiments.adam_baseline import adam_batches, tune_adam
from gnca.experiments.learning import initial_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a data-reading rule's last.pt (its task and initial nets)")
    ap.add_argument(
        "--steps", type=int, default=200, help="Adam steps (default 200: 10 K on MNIST)"
    )
    ap.add_argument("--lr", type=float, default=0.03, help="Adam's learning rate (default 0.03)")
    ap.add_argument("--sequences", type=int, default=8, help="batch sequences (default 8)")
    ap.add_argument("--num", type=int, default=10, help="nets (default 10)")
    ap.add_argument("--arch", default=None, help="an architecture spec, e.g. h:16 (default: the "
                    "rule's first training architecture)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial nets (default 0)")
    args = ap.parse_args()
    if min(args.steps, args.sequences, args.num) < 1:
        ap.error("--steps, --sequences and --num must be >= 1")
    torch.set_num_threads(1)
    tr = load_trained(args.checkpoint)
    task = tr.task
    arch = None
    if args.arch is not None:
        d = task.data
        arch = parse_arch(args.arch, d.n_features, d.n_classes, tr.cfg.task.bias, d.image_shape)
    graph, w0 = initial_weights(tr, args.num, args.seed, arch)
    X, y = task.split("train", w0.device)
    X_te, y_te = task.split("test", w0.device)
    batch = tr.cfg.rule.sense_batch
    batches = adam_batches(args.steps * batch, batch)
    trainable = torch.ones_like(w0, dtype=torch.bool)
    accs = []
    for s in range(args.sequences):
        w = tune_adam(task, graph, w0, trainable, batches, s, [args.lr], X, y).w  # 4/5 of X
        acc = float(task.batched_accuracy(graph, w, X_te, y_te).mean())
        accs.append(acc)
        print(f"sequence {s}: mean test accuracy {acc:.4f}", flush=True)
    print(f"{args.sequences} sequences, {args.steps} steps of {batch} at lr {args.lr:g}: "
          f"{min(accs):.4f} - {max(accs):.4f} (range {max(accs) - min(accs):.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
