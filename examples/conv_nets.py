"""Grow conv nets: a data-free rule meta-trained on two conv nets (kernel sizes 3 and 5) for the
8x8 digits (``--data digits``, 2-D convs) or mnist1d's 40-sample signals (``--data mnist1d``,
1-D convs), then grown for a kernel size (4), widths and a depth it never saw, with Adam beside
every architecture (the same nets, learning rate tuned on a validation fifth).

    python examples/conv_nets.py --steps 800 --out runs/conv_digits             # resumable
    python examples/conv_nets.py --data mnist1d --steps 800 --out runs/conv_mnist1d
    python examples/conv_nets.py --steps 3 --nets 4 --adam-examples 256 --out /tmp/x  # smoke

Writes ``OUT/results.json`` and prints a table: mean test accuracy of ``--nets`` grown nets at
``K`` and ``10 K`` rule steps, and of Adam after ``--adam-examples`` examples per net.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gnca import LocalRule, WeightGraph
from gnca.archspec import parse_arch
from gnca.checkpoint import load_checkpoint
from gnca.config import PoolConfig, TrainConfig
from gnca.data import load_dataset
from gnca.experiments.adam_baseline import adam_batches, tune_adam
from gnca.state import InitSpec
from gnca.task import Task

#: per dataset: the training conv nets (kernel sizes 3 and 5) and the unseen ones (kernel size
#: 4, two other widths, one more conv layer); configs/conv_digits.yaml holds the digits ones
SPECS = {
    "digits": (
        ["4k3p1-8k3s2p1", "4k5p2-8k5s2p2"],
        ["4k4p2-8k4s2p1", "6k3p1-12k3s2p1", "3k5p2-6k5s2p2", "4k3p1-8k3s2p1-8k3p1"],
    ),
    "mnist1d": (
        ["8k3s2p1-16k3s2p1", "8k5s2p2-16k5s2p2"],
        ["8k4s2p2-16k4s2p1", "12k3s2p1-24k3s2p1", "6k5s2p2-12k5s2p2", "8k3s2p1-16k3s2p1-16k3p1"],
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=sorted(SPECS), default="digits")
    p.add_argument("--steps", type=int, default=600, help="meta-steps")
    p.add_argument(
        "--no-depth-code",
        action="store_true",
        help="codes without the layer's depth (task.depth_code: false)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-extra", action="append", default=[], metavar="SPEC",
                   help="one more conv spec to meta-train on (repeatable)")  # fmt: skip
    p.add_argument("--unseen-extra", action="append", default=[], metavar="SPEC",
                   help="one more unseen conv spec for the table (repeatable)")  # fmt: skip
    p.add_argument("--nets", type=int, default=50, help="grown nets per architecture")
    p.add_argument("--adam-examples", type=int, default=25_600, help="per net")
    p.add_argument("--adam-nets", type=int, default=5)
    p.add_argument("--out", default="runs/conv_digits")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    TRAIN, UNSEEN = SPECS[args.data]
    TRAIN = TRAIN + args.train_extra
    UNSEEN = [u for u in UNSEEN if u not in TRAIN] + args.unseen_extra
    split = {"split": "standard"} if args.data == "mnist1d" else {}
    data = load_dataset(args.data, **split)
    task = Task(data, batch_size=256)  # meta-loss batch of 256 examples
    conv = {s: parse_arch("conv:" + s, data.n_features, data.n_classes, True, data.image_shape,
                          args.data) for s in TRAIN + UNSEEN}  # fmt: skip
    depth = not args.no_depth_code
    init = InitSpec(init="codes", code_freqs=2, depth_code=depth)
    seeds = InitSpec(init="codes", code_freqs=2, code_jitter=1.0, depth_code=depth)
    train = TrainConfig(steps=args.steps, batch_size=8, k_min=10, k_max=20, lr=2e-3,
                        lr_final=2e-4, seed=args.seed, device="cpu", log_every=25,
                        checkpoint_every=100, eval_nets=args.nets)  # fmt: skip
    torch.manual_seed(args.seed)
    from gnca.trainer import MetaTrainer

    archs = [conv[s] for s in TRAIN]
    trainer = MetaTrainer(LocalRule(24, widths=[64]), task, archs, train=train,
                          pool=PoolConfig(size=64), init=init, seed_init=seeds)  # fmt: skip
    if (out / "last.pt").is_file():
        trainer.load_state_dict(load_checkpoint(out / "last.pt"))
    t0 = time.process_time()
    trainer.train(out, progress=False, log_lines=True)
    table = trainer.evaluate(unseen=[conv[s] for s in UNSEEN])
    rows = []
    for spec in TRAIN + UNSEEN:
        arch = conv[spec]
        label = arch.describe() + ("" if spec in TRAIN else " [unseen]")
        graph = WeightGraph.replicate(arch, args.adam_nets)
        w0, _ = init.state(graph, 24, torch.Generator().manual_seed(args.seed))
        X, y = task.split("train")
        batches = adam_batches(args.adam_examples, 64)
        tuned = tune_adam(task, graph, w0, torch.ones_like(w0, dtype=torch.bool), batches,
                          args.seed, (1e-3, 3e-3, 1e-2), X, y)  # fmt: skip
        adam = float(task.batched_accuracy(graph, tuned.w, *task.split("test")).mean())
        grown = table[label]
        k, k10 = sorted(grown, key=int)
        rows.append({"spec": spec, "arch": label, "weights": arch.num_weights,
                     "grown_K": grown[k]["mean"], "grown_10K": grown[k10]["mean"],
                     "adam": adam, "adam_lr": tuned.lr})  # fmt: skip
    result = {"data": args.data, "steps": trainer.step, "seed": args.seed,
              "meta_cpu_seconds": trainer.train_cpu_seconds,
              "eval_cpu_seconds": time.process_time() - t0,
              "adam_examples": args.adam_examples, "rows": rows}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'architecture':58} {'weights':>7} {'grown@K':>8} {'grown@10K':>9} {'Adam':>6}")
    for r in rows:
        print(f"{r['arch']:58} {r['weights']:7d} {r['grown_K']:8.3f} {r['grown_10K']:9.3f} "
              f"{r['adam']:6.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
