"""Meta-training of a local rule by backpropagation through unrolled growth.

One meta-step, for every training architecture:

1. take a batch of task-net states from the architecture's :class:`~gnca.pool.SamplePool` (the
   worst ``pool.fresh`` replaced by fresh seeds, the best ``pool.damage`` zeroed-out), or fresh
   seeds when the pool is disabled;
2. apply the rule ``K`` times (``K`` uniform in ``[train.k_min, train.k_max]``), optionally
   checkpointing each step's activations;
3. take the cross-entropy of the grown nets on a batch of training data.

The loss averaged over nets and architectures is backpropagated into the rule's parameters only;
each parameter's gradient is normalised (or clipped), Adam steps, and the final states go back
to the pools. A meta-step whose loss is NaN or more than ``train.rollback_factor`` times the
running mean is rolled back (no update, no write-back).
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from gnca import augment as aug_
from gnca.architecture import Architecture
from gnca.checkpoint import load_checkpoint, save_checkpoint
from gnca.config import (
    Config,
    DataConfig,
    PoolConfig,
    RuleConfig,
    TaskConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
)
from gnca.damage import zero_out
from gnca.data import Dataset
from gnca.device import resolve_device
from gnca.files import atomic_write
from gnca.graph import WeightGraph
from gnca.grow import grow
from gnca.pool import PoolBatch, SamplePool, Shard
from gnca.rule import LocalRule
from gnca.senses import SenseReader
from gnca.state import InitSpec, check_codes_fit
from gnca.task import Task, logits_accuracy, logits_cross_entropy


@dataclass
class StepStats:
    """What one meta-step did."""

    step: int
    loss: float
    accuracy: float
    k: int
    lr: float
    skipped: bool
    age: int = 0  # rule steps grown by the oldest sample of the batch before this meta-step


class MetaTrainer:
    """Meta-trains a :class:`~gnca.LocalRule` on a :class:`~gnca.task.Task`.

    It receives built objects and its own settings, so a rule can be meta-trained from Python
    without a :class:`~gnca.config.Config`::

        task = Task(load_dataset("iris"))
        torch.manual_seed(0)
        trainer = MetaTrainer(LocalRule(8), task, [task.mlp([4, 16, 3])],
                              train=TrainConfig(steps=200), pool=PoolConfig(size=64))
        trainer.train("runs/python")

    :meth:`from_config` builds one from a configuration (through :mod:`gnca.build`).

    Args:
        rule: the rule to meta-train (moved to ``device``).
        task: the data and the task nets' forward conventions.
        archs: the training architectures (any DAGs fitting the task).
        train: meta-training settings (steps, batch of nets, unroll, optimiser, logging).
        pool: sample-pool settings (``size = 0``: fresh seeds every meta-step).
        init: initial states for growing and evaluation (default: a fixed seed net).
        seed_init: initial states of meta-training seeds (default: ``init``).
        device: where to train (default: ``train.device`` resolved).
        config: the configuration these objects were built from, stored in checkpoints; when
            ``None`` one is recorded from the objects (:func:`config_record`).
        sense_batch: training examples a data-reading rule (``rule.senses``) reads per step.
        permute_labels: task augmentation: every net of a meta-step learns the task under its
            own random permutation of the class labels (forces the rule to read the labels).
        feature_transform: task augmentation: every net sees its inputs through its own random
            feature ``permute``-ation or ``orthogonal`` map (:mod:`gnca.augment`; ``none``: off).
        class_subsets: task augmentation: every net learns a random subset of
            ``m ~ U[class_subsets, classes]`` classes (``None``: all classes).
            The three augmentations left at their defaults take ``train``'s fields of the same
            name; whichever is used is what the checkpoints record.
        also: more tasks meta-trained at the same time, each with its own architectures
            (``data.also`` in a config); every meta-step averages the loss over all of them.
    """

    is_main: bool = True  # False on the non-zero ranks of a distributed run: no logs, no files

    def __init__(
        self,
        rule: LocalRule,
        task: Task,
        archs: Sequence[Architecture],
        *,
        train: TrainConfig | None = None,
        pool: PoolConfig | None = None,
        init: InitSpec | None = None,
        seed_init: InitSpec | None = None,
        device: torch.device | None = None,
        config: Config | None = None,
        sense_batch: int = 64,
        permute_labels: bool = False,
        also: Sequence[tuple[Task, Sequence[Architecture]]] = (),
        feature_transform: str = "none",
        class_subsets: int | None = None,
    ) -> None:
        train = train if train is not None else TrainConfig()
        pool = pool if pool is not None else PoolConfig()
        init = init if init is not None else InitSpec()
        seed_init = seed_init if seed_init is not None else init
        train, (permute_labels, feature_transform, class_subsets) = _augment_settings(
            train, bool(permute_labels), feature_transform, class_subsets
        )
        if config is None:
            data_c, task_c, rule_c = config_record(rule, task, list(archs), init, seed_init)
            rule_c = replace(rule_c, sense_batch=int(sense_batch))
            config = Config(
                name="python", data=data_c, task=task_c, rule=rule_c, pool=pool, train=train
            )
        self.cfg = config
        self.device = device or resolve_device(train.device)
        self.task = task
        self.data = task.data
        check_codes_fit(seed_init, rule.hidden_channels)
        self.archs, self.arch_tasks = _training_pairs(task, archs, also, bool(rule.senses))
        self.rule = rule.to(self.device)
        self.rule.factored = train.perception == "factored"  # meta-training's first layer
        self.init = init  # growing and evaluation: exact codes
        self.seed_init = seed_init  # meta-training seeds
        _check_pool(pool, train)
        t = train
        self.optimizer = torch.optim.Adam(self.rule.parameters(), lr=t.lr)
        self.gen = torch.Generator().manual_seed(t.seed)  # K, pool indices, data batches
        self.dev_gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)  # masks, seeds
        self.graphs = [
            WeightGraph.replicate(a, t.batch_size, device=self.device) for a in self.archs
        ]
        self.seed_graphs = self.graphs  # the whole batch (a distributed rank grows a share)
        self.shard = Shard()  # this process's part of every batch
        self.X_train, self.y_train = task.split("train", self.device)
        self.permute_labels = bool(permute_labels)
        if self.permute_labels and not rule.senses:
            raise ValueError(
                "permute_labels needs a rule that reads data (rule.senses): a data-free rule "
                "cannot know which permutation a net is to learn"
            )
        self.feature_transform, self.class_subsets = _check_augment(
            feature_transform, class_subsets, bool(rule.senses)
        )
        # a data-reading rule's batches and label permutations have their own generator, so
        # that a data-free run draws exactly what it drew before senses existed
        self.sense_gen = torch.Generator().manual_seed(t.seed + 2) if rule.senses else None
        # one reader per task, all drawing from the senses' generator (main task's first)
        readers: dict[int, SenseReader] = {}
        if rule.senses:
            for tk in [task, *self.arch_tasks]:
                if id(tk) not in readers:
                    readers[id(tk)] = SenseReader(rule.senses, tk, sense_batch, self.sense_gen)
        self.reader = readers.get(id(task))
        self.readers = [readers.get(id(tk)) for tk in self.arch_tasks]
        self.pools = (
            [self._fill_pool(i, pool.size) for i in range(len(self.archs))] if pool.size else []
        )
        self.step = 0
        self.loss_ema: float | None = None
        self.history: list[StepStats] = []  # the meta-steps of this process (not resumed)
        self.skipped_steps = 0  # rolled-back meta-steps since meta-step 0 (kept in checkpoints)
        # (loss, accuracy, skipped) of the meta-steps since the last logged one: a resumed run
        # logs the same row as an uninterrupted one (kept in checkpoints)
        self.log_window: list[tuple[float, float, bool]] = []
        self.saved_step: int | None = None  # the meta-step of the last checkpoint written/read
        # wall and CPU seconds spent in train() so far, kept in checkpoints: summed over resumes
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        dataset: Dataset | None = None,
        device: torch.device | None = None,
        archs: Sequence[Architecture] | None = None,
    ) -> MetaTrainer:
        """A trainer built from ``cfg`` (:func:`gnca.build.trainer_parts`)."""
        from gnca.build import trainer_parts

        return cls(**trainer_parts(cfg, dataset, device, list(archs) if archs else None))

    # ------------------------------------------------------------------ pieces
    def _fill_pool(self, i: int, size: int) -> SamplePool:
        """A pool of ``size`` fresh seeds of architecture ``i`` (with label permutations when
        the nets learn permuted labels)."""
        a = self.archs[i]
        w0, h0 = self._seed_states(WeightGraph.replicate(a, size, device=self.device))
        sp = SamplePool.filled(w0.view(size, -1), h0.view(size, a.num_weights, -1))
        if self.permute_labels:
            sp.labels = self._draw_permutations(size, self.arch_tasks[i].n_classes)
        sp.tags = self._draw_tags(size, self.arch_tasks[i].n_classes)
        return sp

    def _draw_tags(self, n: int, c: int) -> dict[str, torch.Tensor]:
        """New feature-transform seeds and class subsets of ``n`` nets (the augmentations that
        are on; drawn from the senses' generator after the label permutations)."""
        tags = {}
        if self.feature_transform != "none":
            assert self.sense_gen is not None
            tags[aug_.FEATURE_SEED] = aug_.draw_seeds(n, self.sense_gen)
        if self.class_subsets is not None:
            assert self.sense_gen is not None
            tags[aug_.CLASSES] = aug_.draw_classes(n, c, self.class_subsets, self.sense_gen)
        return tags

    def _augment(
        self, i: int, n_nets: int, got: PoolBatch | None, perm: torch.Tensor | None
    ) -> tuple[aug_.NetAugment | None, dict[str, torch.Tensor]]:
        """The feature transforms and class subsets of this process's ``n_nets`` nets of arch
        ``i`` (pooled samples keep theirs, renewed and fresh ones get new ones, drawn for the
        whole batch like :meth:`_permutations`) and the tags to commit; ``(None, {})`` when
        both are off."""
        if self.feature_transform == "none" and self.class_subsets is None:
            return None, {}
        task = self.arch_tasks[i]
        tags = self._draw_tags(self.cfg.train.batch_size, task.n_classes)
        lo = self.shard.rank * n_nets
        for k, v in tags.items():
            v = v[lo : lo + n_nets]
            if got is not None and got.renewed is not None:
                keep = ~got.renewed.cpu().view(-1, *([1] * (v.dim() - 1)))
                v = torch.where(keep, got.tags[k], v)
            tags[k] = v
        maps = None
        if self.feature_transform != "none":
            maps = aug_.feature_maps(tags[aug_.FEATURE_SEED], task.n_features,
                                     self.feature_transform).to(self.device)  # fmt: skip
        classes = tags[aug_.CLASSES].bool().to(self.device) if aug_.CLASSES in tags else None
        a = aug_.NetAugment(perm, self.feature_transform, maps, classes, lo,
                            self.cfg.train.batch_size)  # fmt: skip
        return a, tags

    def _net_batch(
        self,
        task: Task,
        aug: aug_.NetAugment | None,
        X: torch.Tensor,
        y: torch.Tensor,
        perm: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The meta-loss batch as the nets see it: ``X (B, F)`` and ``(b, B)`` labels (or
        ``(B,)`` without augmentations); under class subsets each net's own batch of its
        classes, as large as the shared one (drawn with the data generator), ``(b, B, F)``; under
        a feature transform each net's inputs ``(b, B, F)``."""
        if aug is None:
            return X, (perm[:, y] if perm is not None else y)
        if aug.classes is not None:
            X, y = aug.draw(*task.split("train", self.device), X.shape[0], self.gen,
                            replacement=False)  # fmt: skip
        return aug.inputs(X), aug.labels(y)

    def _seed_states(self, graph) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seed_init.state(graph, self.rule.hidden_channels, self.dev_gen)

    def lr_at(self, step: int) -> float:
        """Cosine decay from ``train.lr`` to ``train.lr_final`` (constant when unset)."""
        t = self.cfg.train
        if t.lr_final is None:
            return t.lr
        frac = min(step / max(t.steps, 1), 1.0)
        return t.lr_final + 0.5 * (t.lr - t.lr_final) * (1 + math.cos(math.pi * frac))

    def _batch(
        self, i: int
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, PoolBatch | None]:
        """Pool indices (or None) and the starting ``w (b*E,)``, ``h (b*E, C)`` of arch ``i``
        (``b`` nets: the batch, or this rank's share of it)."""
        pool_cfg, shard = self.cfg.pool, self.shard
        seed_graph = self.seed_graphs[i]  # the whole batch: it draws the per-net randomness
        e = self.archs[i].num_weights
        b = self.cfg.train.batch_size // shard.world
        lo, hi = shard.rank * b * e, (shard.rank + 1) * b * e
        w_seed, h_seed = self._seed_states(seed_graph)  # (B*E,), (B*E, C)
        w_seed, h_seed = w_seed[lo:hi], h_seed[lo:hi]
        if not self.pools:
            return None, w_seed, h_seed, None

        def damage_mask(which: torch.Tensor) -> torch.Tensor:
            ones = torch.ones(w_seed.shape[0] * shard.world, device=self.device)
            return zero_out(
                seed_graph,
                ones,
                fraction=pool_cfg.damage_fraction,
                which=which.to(self.device),
                generator=self.dev_gen,
            )

        got = self.pools[i].batch(
            b,
            self.gen,
            (w_seed.view(b, e), h_seed.view(b, e, -1)),
            fresh=pool_cfg.fresh if pool_cfg.replace_worst else 0,
            damage=pool_cfg.damage,
            damage_mask=damage_mask,
            shard=shard,
            renew=pool_cfg.renew,
        )
        return got.idx, got.w.reshape(-1), got.h.reshape(b * e, -1), got

    def _unroll(self, graph, w, h, k: int, reader=None) -> tuple[torch.Tensor, torch.Tensor]:
        bf16 = self.cfg.train.precision == "bf16"  # the rule's MLP under bf16 autocast
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(k):
                mask = self._fire_mask(w)
                s = reader(graph, w, h) if reader is not None else None  # (E, S)
                if self.cfg.train.checkpointing:
                    w, h = activation_checkpoint(
                        self._rule_step, graph, w, h, mask, s, use_reentrant=False
                    )
                else:
                    w, h = self.rule(graph, w, h, mask=mask, senses=s)
        return w, h

    def _rule_step(self, graph, w, h, mask, senses=None):
        return self.rule(graph, w, h, mask=mask, senses=senses)

    def _draw_permutations(self, n: int, c: int) -> torch.Tensor:
        """``(n, c)`` random permutations of ``c`` labels from the senses' generator."""
        assert self.sense_gen is not None
        return torch.stack([torch.randperm(c, generator=self.sense_gen) for _ in range(n)])

    def _permutations(
        self, n_nets: int, renewed: torch.Tensor | None, pooled: torch.Tensor | None, c: int
    ) -> torch.Tensor | None:
        """``(b, classes)`` label permutations of this process's nets (augmentation): pooled
        samples keep theirs, fresh ones get new ones (drawn for the whole batch, so that every
        rank of a distributed run draws the same)."""
        if not self.permute_labels:
            return None
        every = self._draw_permutations(self.cfg.train.batch_size, c)
        lo = self.shard.rank * n_nets
        fresh = every[lo : lo + n_nets]
        if pooled is not None and renewed is not None:
            fresh = torch.where(renewed.cpu()[:, None], fresh, pooled.cpu())
        return fresh.to(self.device)

    def _fire_mask(self, w: torch.Tensor) -> torch.Tensor:
        """``(E,)`` fire mask of one rule step (a distributed rank takes its slice)."""
        return self.rule.fire_mask(w.shape[0], w.device, self.dev_gen)

    def _step_stats(self, loss: torch.Tensor, accs: list[torch.Tensor]) -> tuple[float, float]:
        """The meta-step's loss and mean accuracy (averaged over the ranks when distributed)."""
        return float(loss), float(torch.cat(accs).mean())

    def _sync_grads(self) -> None:
        """Average the rule's gradients over the ranks of a distributed run (no-op here)."""

    # ------------------------------------------------------------------ one meta-step
    def meta_step(self) -> StepStats:
        """Run one meta-step and return its statistics."""
        cfg = self.cfg
        t = cfg.train
        self.rule.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        k = int(torch.randint(t.k_min, t.k_max + 1, (1,), generator=self.gen))
        horizons = loss_horizons(k, t.loss_horizons)
        batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for tk in self.arch_tasks:  # one training batch per task, in the order of the tasks
            if id(tk) not in batches:
                batches[id(tk)] = tk.train_batch(self.gen, self.device)
        losses, accs, finals = [], [], []
        oldest = 0
        for i, graph in enumerate(self.graphs):
            task, reader = self.arch_tasks[i], self.readers[i]
            X, y = batches[id(task)]
            idx, w, h, got = self._batch(i)
            n_nets = w.shape[0] // self.archs[i].num_weights
            perm = self._permutations(
                n_nets, got.renewed if got else None, got.labels if got else None, task.n_classes
            )
            aug, tags = self._augment(i, n_nets, got, perm)
            if reader is not None:
                reader.permutation, reader.augment = perm, aug
            X_net, yy = self._net_batch(task, aug, X, y, perm)  # (b, B) labels per net, or (B,)
            mask = aug.output_mask if aug is not None else None
            meta = []  # (b,) meta-loss terms, one per horizon
            done = 0
            for stop in horizons:
                w, h = self._unroll(graph, w, h, stop - done, reader)
                done = stop
                # one forward pass gives both the loss and the logged accuracy
                logits = aug_.mask_logits(task.logits(graph, w, X_net), mask)
                per_net = logits_cross_entropy(logits, yy)  # (b,)
                meta.append(per_net)
            term = meta[0] if len(meta) == 1 else torch.stack(meta).mean(0)
            if t.weight_penalty:
                term = term + t.weight_penalty * w.view(n_nets, -1).square().mean(1)
            losses.append(term)
            accs.append(logits_accuracy(logits.detach(), yy))
            finals.append((idx, w, h, per_net, perm, got.age + k if got else None, tags))
            if got is not None and got.age is not None and got.age.numel():
                oldest = max(oldest, int(got.age.max()))
        loss = torch.stack([lo.mean() for lo in losses]).mean()
        loss_v, acc = self._step_stats(loss.detach(), accs)
        skipped = not math.isfinite(loss_v) or (
            self.loss_ema is not None and loss_v > t.rollback_factor * self.loss_ema
        )
        self.optimizer.zero_grad(set_to_none=True)
        if not skipped:
            loss.backward()
            self._sync_grads()
            grads_ok = all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.rule.parameters()
            )
            skipped = not grads_ok
        if not skipped:
            self._process_grads()
            self.optimizer.step()
            self.loss_ema = (
                loss_v if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss_v
            )
            for i, (idx, w, h, per_net, perm, age, tags) in enumerate(finals):
                if idx is not None:
                    e = self.archs[i].num_weights
                    b = idx.shape[0]  # train.batch_size, or a rank's share of it
                    self.pools[i].commit(
                        idx, w.view(b, e), h.view(b, e, -1), per_net, perm, age, tags
                    )
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.skipped_steps += int(skipped)
        stats = StepStats(self.step, loss_v, acc, k, lr, skipped, oldest)
        self.history.append(stats)
        return stats

    def _process_grads(self) -> None:
        mode = self.cfg.train.grad
        params = [p for p in self.rule.parameters() if p.grad is not None]
        if mode == "normalize":
            for p in params:
                p.grad = p.grad / (p.grad.norm() + 1e-8)
        elif mode == "clip":
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        num: int | None = None,
        horizons: tuple[int, ...] | None = None,
        split: str = "test",
        unseen: Sequence[Architecture] = (),
        progress: bool = False,
    ) -> dict:
        """Grow ``num`` nets per training architecture (then per ``unseen`` architecture, keyed
        ``"<architecture> [unseen]"``); accuracy at each horizon.

        Default horizons: ``k_max`` and ``10 * k_max``. ``progress``: a progress bar over the
        rule steps of all architectures.
        """
        num = num or self.cfg.train.eval_nets
        k = self.cfg.train.k_max
        horizons = horizons or (k, 10 * k)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed + 12345)
        out = {}
        many = len({id(tk) for tk in self.arch_tasks}) > 1
        labelled = [
            (a, tk, f"{a.describe()} on {tk.name}" if many else a.describe())
            for a, tk in zip(self.archs, self.arch_tasks, strict=True)
        ]
        labelled += [(self.task.check(a), self.task, f"{a.describe()} [unseen]") for a in unseen]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(labelled) * max(horizons), desc="evaluate", unit="step")
        for arch, task, label in labelled:
            metric = task.metric(split, self.device)
            res = grow(
                self.rule,
                arch,
                num,
                max(horizons),
                self.init,
                device=self.device,
                generator=gen,
                metric=metric,
                record_at=horizons,
                senses=self._eval_reader(task),
                progress=(lambda _: bar.update(1)) if bar is not None else None,
            )
            assert res.curve is not None
            out[label] = {
                str(s): {
                    "mean": float(res.curve[i].mean()),
                    "min": float(res.curve[i].min()),
                    "max": float(res.curve[i].max()),
                }
                for i, s in enumerate(res.curve_steps)
            }
        if bar is not None:
            bar.close()
        return out

    def _eval_reader(self, task: Task) -> SenseReader | None:
        """What a data-reading rule reads while its nets grow for evaluation (its own seed)."""
        if not self.rule.senses:
            return None
        assert self.reader is not None
        gen = torch.Generator().manual_seed(self.cfg.train.seed + 54321)
        return SenseReader(self.rule.senses, task, self.reader.batch_size, gen)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {
            "config": config_to_dict(self.cfg),
            "rule_config": self.rule.config(),
            "rule": {k: v.cpu() for k, v in self.rule.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "pools": [p.state_dict() for p in self.pools],
            "step": self.step,
            "loss_ema": self.loss_ema,
            "skipped_steps": self.skipped_steps,
            "log_window": [[loss, acc, bool(sk)] for loss, acc, sk in self.log_window],
            "train_time": {"seconds": self.train_seconds, "cpu_seconds": self.train_cpu_seconds},
            "rng": {
                "gen": self.gen.get_state(),
                "dev_gen": self.dev_gen.get_state().cpu(),
                "torch": torch.get_rng_state(),
                **({"senses": self.sense_gen.get_state()} if self.sense_gen is not None else {}),
            },
        }

    def load_state_dict(self, d: dict) -> None:
        self.rule.load_state_dict(d["rule"])
        self.optimizer.load_state_dict(d["optimizer"])
        if len(d["pools"]) != len(self.pools):
            raise ValueError("the checkpoint's pools do not match the configuration")
        self.pools = [SamplePool.from_state_dict(p, self.device) for p in d["pools"]]
        self.step = int(d["step"])
        self.loss_ema = d["loss_ema"]
        # absent in checkpoints written before they were kept: the count restarts, and the
        # first row logged after the resume averages only the steps run since
        self.skipped_steps = int(d.get("skipped_steps", 0))
        self.log_window = [(float(a), float(b), bool(c)) for a, b, c in d.get("log_window", [])]
        self.saved_step = self.step
        spent = d.get("train_time", {})  # absent in checkpoints written before it was kept
        self.train_seconds = float(spent.get("seconds", 0.0))
        self.train_cpu_seconds = float(spent.get("cpu_seconds", 0.0))
        self.gen.set_state(d["rng"]["gen"])
        self.dev_gen.set_state(d["rng"]["dev_gen"].to(self.dev_gen.get_state().device))
        torch.set_rng_state(d["rng"]["torch"])
        if self.sense_gen is not None:
            self.sense_gen.set_state(d["rng"]["senses"])

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically."""
        save_checkpoint(path, self.state_dict())
        self.saved_step = self.step

    def _agree_stop(self, requested: bool) -> bool:
        """Whether to stop after this meta-step (every rank of a distributed run agrees)."""
        return requested

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        run_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        callback: Callable[[StepStats], None] | None = None,
        log_lines: bool = False,
        stop: Callable[[], bool] | None = None,
    ) -> list[StepStats]:
        """Meta-train until ``train.steps``; log, checkpoint and show progress.

        With ``run_dir``: appends to ``metrics.csv``, writes ``last.pt`` every
        ``train.checkpoint_every`` steps and at the end, TensorBoard events when the
        ``tensorboard`` package is installed, and with ``train.wandb`` the same scalars to a
        Weights & Biases run in ``run_dir/wandb`` (:mod:`gnca.tracking`; it needs ``run_dir``
        and the ``wandb`` package). Without a progress bar, ``log_lines`` prints one line per
        logged step to stderr instead. The seconds in ``metrics.csv`` (and
        :attr:`train_seconds`, :attr:`train_cpu_seconds`, kept in ``last.pt``) are meta-training
        time summed over every run that led to this one: a resumed run continues the count.
        A resumed run first drops the rows of ``metrics.csv`` (and TensorBoard events) logged
        after its checkpoint, so that no meta-step is logged twice. Only the main process of a
        distributed run logs.

        ``stop`` is asked after every meta-step (e.g. a :class:`gnca.interrupt.StopOnSignal`);
        when it returns True, ``last.pt`` is written at that meta-step boundary and training
        returns early: resuming from it continues exactly.
        """
        t = self.cfg.train
        run = Path(run_dir) if run_dir is not None else None
        if run is not None and self.is_main:
            run.mkdir(parents=True, exist_ok=True)
        logs = _RunLogs(self, run) if self.is_main else None
        bar = None
        if progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=self.step, desc="meta-train", unit="step")
        start, cpu_start = time.perf_counter(), time.process_time()
        base, cpu_base = self.train_seconds, self.train_cpu_seconds

        def clock() -> float:
            """Bring :attr:`train_seconds` up to now; return it."""
            self.train_seconds = base + time.perf_counter() - start
            self.train_cpu_seconds = cpu_base + time.process_time() - cpu_start
            return self.train_seconds

        try:
            while self.step < t.steps:
                s = self.meta_step()
                self.log_window.append((s.loss, s.accuracy, s.skipped))
                if callback is not None:
                    callback(s)
                if s.step % t.log_every == 0 or s.step == t.steps:
                    loss, acc, skipped = _window_means(self.log_window)
                    if logs is not None:
                        logs.write(s.step, loss, acc, s.lr, skipped, clock())
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", skipped=skipped)
                    elif log_lines and self.is_main:
                        print(
                            f"meta-step {s.step}/{t.steps}  loss {loss:.4f}  acc {acc:.3f}  "
                            f"skipped {skipped}  {clock():.0f}s",
                            file=sys.stderr,
                            flush=True,
                        )
                    self.log_window = []
                if bar is not None:
                    bar.update(1)
                if run is not None and (s.step % t.checkpoint_every == 0 or s.step == t.steps):
                    clock()
                    self.save(run / "last.pt")
                if self._agree_stop(stop is not None and stop()):
                    if run is not None and self.saved_step != self.step:
                        clock()
                        self.save(run / "last.pt")
                    break
        finally:
            clock()
            if bar is not None:
                bar.close()
            if logs is not None:
                logs.close()
        return self.history

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        dataset: Dataset | None = None,
        device: torch.device | None = None,
        cfg: Config | None = None,
        archs: Sequence[Architecture] | None = None,
    ) -> MetaTrainer:
        """Rebuild a trainer from ``last.pt`` to resume it exactly.

        ``cfg`` may differ from the saved configuration in ``train.steps`` only.
        """
        d = load_checkpoint(path)
        if "optimizer" not in d or "config" not in d:
            raise ValueError(f"{path} is a gnca checkpoint but not a training checkpoint")
        saved = config_from_dict(d["config"])
        if cfg is not None:
            a, b = config_to_dict(cfg), config_to_dict(saved)
            a["train"]["steps"] = b["train"]["steps"]
            diff = _dict_diff(a, b)
            if diff:
                raise ValueError(
                    f"the config does not match the checkpoint {path}: {', '.join(diff[:5])} differ"
                )
            saved = cfg
        trainer = cls.from_config(saved, dataset, device, archs)
        trainer.load_state_dict(d)
        return trainer


def _window_means(window: Sequence[tuple[float, float, bool]]) -> tuple[float, float, int]:
    """The logged loss and accuracy of a window of meta-steps (mean over those not rolled
    back; over all when every one was) and how many were rolled back."""
    ok = [x for x in window if not x[2]] or list(window)
    loss = sum(x[0] for x in ok) / len(ok)
    acc = sum(x[1] for x in ok) / len(ok)
    return loss, acc, sum(x[2] for x in window)


def loss_horizons(k: int, n: int) -> list[int]:
    """The rule steps of a ``k``-step rollout after which the meta-loss is measured: ``n``
    evenly spaced ones ending at ``k`` (``[k]`` for ``n = 1``; distinct, so at most ``k``)."""
    return sorted({max(1, round(k * j / n)) for j in range(1, n + 1)})


def config_record(
    rule: LocalRule, task: Task, archs: list[Architecture], init: InitSpec, seed_init: InitSpec
) -> tuple[DataConfig, TaskConfig, RuleConfig]:
    """The ``data``, ``task`` and ``rule`` sections that describe objects built in Python, so
    that their checkpoints load like any other (custom DAGs are not recorded: only MLPs are)."""
    rc = rule.config()
    aggr = rc.pop("aggr")
    sizes = [list(a.mlp_sizes) for a in archs if a.mlp_sizes]
    data = DataConfig(name=task.name, batch_size=task.batch_size)
    tc = TaskConfig(
        architectures=sizes or [[task.n_features, task.n_classes]],
        bias=task.bias,
        activation=task.activation,
        init=init.kind,
        init_seed=init.seed,
        init_scale=init.scale,
        init_noise=init.noise,
        code_freqs=init.code_freqs,
        out_code_freqs=init.out_freqs,
        depth_code=init.depth_code,
        code_jitter=seed_init.code_jitter,
        code_jitter_fraction=seed_init.jitter_fraction,
        neuron_codes=init.neuron_codes,
        fan_in_ref=task.fan_in_ref,
    )
    return data, tc, RuleConfig(**rc, aggr=None if aggr == rc["reduce"] else aggr)


def _training_pairs(
    task: Task,
    archs: Sequence[Architecture],
    also: Sequence[tuple[Task, Sequence[Architecture]]],
    reads_data: bool,
) -> tuple[list[Architecture], list[Task]]:
    """The training architectures, checked against their tasks, and the task of each."""
    out = [task.check(a) for a in archs]
    if not out:
        raise ValueError("MetaTrainer needs at least one training architecture")
    tasks = [task] * len(out)
    for extra, extra_archs in also:
        if not extra_archs:
            raise ValueError(f"the extra task {extra.name} needs at least one architecture")
        out += [extra.check(a) for a in extra_archs]
        tasks += [extra] * len(extra_archs)
    if also and not reads_data:
        raise ValueError(
            "meta-training on several datasets needs a rule that reads data (rule.senses)"
        )
    return out, tasks


_AUGMENTS = ("permute_labels", "feature_transform", "class_subsets")


def _augment_settings(
    train: TrainConfig, permute_labels: bool, feature_transform: str, class_subsets: int | None
) -> tuple[TrainConfig, tuple[bool, str, int | None]]:
    """The task augmentations a trainer uses, and ``train`` recording them.

    An argument left at its default takes the value of the same field of ``train`` (so that
    ``TrainConfig(feature_transform="permute")`` is honoured); an argument set explicitly wins
    and is written into the returned ``train``, which is what checkpoints record. An argument
    and a field that are both set and disagree are an error.
    """
    default = {f.name: f.default for f in fields(TrainConfig) if f.name in _AUGMENTS}
    given = dict(zip(_AUGMENTS, (permute_labels, feature_transform, class_subsets), strict=True))
    chosen = {}
    for key, value in given.items():
        field_value = getattr(train, key)
        if value != default[key] and field_value not in (default[key], value):
            raise ValueError(
                f"MetaTrainer got {key}={value!r} but train.{key} is {field_value!r}; "
                "set it in one place"
            )
        chosen[key] = value if value != default[key] else field_value
    return replace(train, **chosen), (
        bool(chosen["permute_labels"]),
        chosen["feature_transform"],
        chosen["class_subsets"],
    )


def _check_augment(
    feature_transform: str, class_subsets: int | None, reads_data: bool
) -> tuple[str, int | None]:
    """The feature-transform and class-subset augmentations, checked (one-line errors)."""
    if feature_transform not in aug_.FEATURE_TRANSFORMS:
        choices = ", ".join(aug_.FEATURE_TRANSFORMS)
        raise ValueError(f"unknown feature_transform {feature_transform!r}; choose from {choices}")
    if class_subsets is not None and class_subsets < 2:
        raise ValueError(f"class_subsets must be >= 2 (or None), got {class_subsets}")
    on = {"feature_transform": feature_transform != "none", "class_subsets": class_subsets}
    for name, value in on.items():
        if value and not reads_data:
            raise ValueError(
                f"{name} needs a rule that reads data (rule.senses): a data-free rule cannot "
                "know which variant of the task a net is to learn"
            )
    return feature_transform, class_subsets


def _check_pool(pool: PoolConfig, train: TrainConfig) -> None:
    """One-line errors for pool settings that cannot fill a batch of ``train.batch_size``."""
    b = train.batch_size
    if pool.size and pool.size < b:
        raise ValueError(f"pool.size = {pool.size} is smaller than train.batch_size = {b}")
    if pool.size and pool.fresh + pool.damage > b:
        raise ValueError(
            f"pool.fresh + pool.damage = {pool.fresh + pool.damage} exceeds train.batch_size = {b}"
        )
    if pool.fresh > b:
        raise ValueError(f"pool.fresh = {pool.fresh} exceeds train.batch_size = {b}")


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


class _MetricsCSV:
    """``metrics.csv``: one row per logged meta-step.

    Opened by a run that starts at meta-step ``after`` > 0 (a resume), it first drops the rows
    of later meta-steps: a run killed after its last checkpoint logged steps that the resumed
    run logs again.
    """

    FIELDS = ("step", "loss", "accuracy", "lr", "skipped", "seconds")

    def __init__(self, path: Path, after: int = 0) -> None:
        self.path = path
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        elif after > 0:
            self._drop_after(after)

    def _drop_after(self, step: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [r for r in rows[1:] if r and _int_or_none(r[0]) is not None]
        keep = [r for r in keep if int(r[0]) <= step]
        if len(keep) == len(rows) - 1:
            return
        text = io.StringIO()
        csv.writer(text).writerows([rows[0], *keep])
        data = text.getvalue().encode()
        atomic_write(self.path, lambda f: f.write(data))

    def write(self, *row: float) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([f"{x:.6g}" if isinstance(x, float) else x for x in row])


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _tensorboard(run: Path, after: int = 0):
    """A TensorBoard writer in ``run/tb`` (``None`` without the ``tensorboard`` package); a
    run resumed at meta-step ``after`` hides the events logged after it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(run / "tb"), purge_step=after + 1 if after > 0 else None)


class _RunLogs:
    """Where :meth:`MetaTrainer.train` logs a window of meta-steps: ``metrics.csv`` and, when
    available, TensorBoard (with ``run_dir``) and Weights & Biases (``train.wandb``).

    W&B is set up first: a missing package or run directory is an error before any file is
    written. A trainer that starts at meta-step > 0 (resumed) continues the run's W&B run.
    """

    def __init__(self, trainer: MetaTrainer, run: Path | None) -> None:
        cfg = trainer.cfg
        self.wandb = None
        if cfg.train.wandb:
            if run is None:
                raise ValueError("train.wandb needs a run directory: call train(run_dir)")
            from gnca.tracking import WandbRun

            self.wandb = WandbRun(
                run, config_to_dict(cfg), cfg.name, cfg.train, resume=trainer.step > 0
            )
        after = trainer.step
        self.metrics = _MetricsCSV(run / "metrics.csv", after) if run is not None else None
        self.writer = _tensorboard(run, after) if run is not None else None

    def write(
        self, step: int, loss: float, acc: float, lr: float, skipped: int, seconds: float
    ) -> None:
        if self.metrics is not None:
            self.metrics.write(step, loss, acc, lr, skipped, seconds)
        scalars = {
            "train/loss": loss,
            "train/accuracy": acc,
            "train/lr": lr,
            "train/skipped": skipped,
        }
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()
