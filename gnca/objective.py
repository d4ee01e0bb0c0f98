"""The meta-objective: what one meta-step computes, before the optimiser sees it.

For every training architecture (paper, Sec. 3; docs/method.md):

1. **batch**: the starting states of ``b`` nets, taken from the architecture's
   :class:`~gnca.pool.SamplePool` (the worst ``pool.fresh`` replaced by fresh seeds, the best
   ``pool.damage`` zeroed-out) or fresh seeds when the pool is off;
2. **unroll**: the rule applied ``K`` times (``K ~ U[train.k_min, train.k_max]``, one draw per
   meta-step; with ``train.k_ramp`` the upper end rises from ``k_min`` to ``k_max`` over that
   many meta-steps, :func:`k_range`), reading a data batch at every step when the rule has
   senses;
3. **loss**: the cross-entropy of the grown nets on a training batch (at ``train.loss_horizons``
   points of the rollout, averaged), plus ``train.weight_penalty`` times their mean square
   weight and ``train.feedback_align`` times one minus the cosine of their learned feedback
   and their weights (:func:`~gnca.senses.feedback_alignment`). With ``train.held_out``, that
   batch comes from a part of the training split that the senses never read, so that the
   rule is scored on examples its nets did not see.

:meth:`MetaObjective.commit` writes the grown states back to the pools once the optimiser has
taken the step. Every draw comes from three generators kept in checkpoints: ``gen`` (``K``,
pool samples, data batches), ``dev_gen`` (seeds, fire masks, damage) and ``sense_gen`` (the
senses' batches and the task variants, :class:`~gnca.augment.TaskVariants`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from gnca import augment as aug_
from gnca.architecture import Architecture
from gnca.comm import Comm
from gnca.config import PoolConfig, TrainConfig
from gnca.damage import zero_out
from gnca.graph import WeightGraph
from gnca.pool import PoolBatch, SamplePool
from gnca.rule import LocalRule
from gnca.senses import SenseReader, feedback_alignment, feedback_of
from gnca.state import InitSpec
from gnca.task import Task, logits_accuracy, logits_cross_entropy


@dataclass
class Grown:
    """One architecture's part of a meta-step, kept for :meth:`MetaObjective.commit`.

    ``w (b*E,)``, ``h (b*E, C)`` the grown states; ``per_net (b,)`` their last loss; ``idx``
    their pool indices (``None`` without a pool); ``labels``, ``age``, ``tags`` what the pool
    keeps with them.
    """

    idx: torch.Tensor | None
    w: torch.Tensor
    h: torch.Tensor
    per_net: torch.Tensor
    labels: torch.Tensor | None
    age: torch.Tensor | None
    tags: dict[str, torch.Tensor]


@dataclass
class MetaLoss:
    """A meta-step's loss (differentiable in the rule's parameters) and what it grew."""

    loss: torch.Tensor  # () mean over architectures of the mean over nets
    accs: list[torch.Tensor]  # (b,) accuracy of each architecture's nets on the loss batch
    grown: list[Grown]
    k: int  # rule steps unrolled
    oldest: int  # rule steps grown by the oldest sample of the batch before this meta-step


class MetaObjective:
    """Batch, unroll and score the nets of every training architecture.

    Args:
        rule: the rule being meta-trained (already on ``device``).
        archs, tasks: the training architectures and the task of each (several tasks:
            ``data.also``).
        train, pool: meta-training and pool settings.
        seed_init: the initial states of meta-training seeds.
        variants: the per-net task augmentations (they draw from the senses' generator).
        sense_batch: the examples a data-reading rule reads per rule step.
        device: where the nets grow.
        comm: this process's part of the batch (:class:`~gnca.comm.Comm`).
    """

    def __init__(
        self,
        rule: LocalRule,
        archs: Sequence[Architecture],
        tasks: Sequence[Task],
        *,
        train: TrainConfig,
        pool: PoolConfig,
        seed_init: InitSpec,
        variants: aug_.TaskVariants,
        sense_batch: int,
        device: torch.device,
        comm: Comm,
    ) -> None:
        self.rule, self.archs, self.tasks = rule, list(archs), list(tasks)
        self.train, self.pool_cfg, self.seed_init = train, pool, seed_init
        self.variants, self.device, self.comm = variants, device, comm
        self.gen = torch.Generator().manual_seed(train.seed)  # K, pool indices, data batches
        self.dev_gen = torch.Generator(device=device).manual_seed(train.seed + 1)  # masks, seeds
        # a data-reading rule's batches and task variants have their own generator, so that a
        # data-free run draws exactly what it drew before senses existed
        self.sense_gen = torch.Generator().manual_seed(train.seed + 2) if rule.senses else None
        variants.generator = self.sense_gen
        read = self.tasks
        if train.held_out and rule.senses:  # senses read one part, the meta-loss the other
            read, self.tasks = held_out_tasks(self.tasks, train.held_out, train.seed)
        self.readers = _readers(rule, read, sense_batch, self.sense_gen)
        b = train.batch_size
        # the whole batch's graphs draw the per-net randomness; the local ones grow our share
        self.seed_graphs = [WeightGraph.replicate(a, b, device=device) for a in self.archs]
        self.graphs = self.seed_graphs
        if comm.world > 1:
            local = b // comm.world
            self.graphs = [WeightGraph.replicate(a, local, device=device) for a in self.archs]
        self.pools = [self._fill(i, pool.size) for i in range(len(self.archs))] if pool.size else []
        self.pools = [p.part(comm.rank, comm.world) for p in self.pools]

    # ------------------------------------------------------------------ one meta-step
    def __call__(self, step: int = 0) -> MetaLoss:
        """Draw ``K``, grow every architecture's batch and score it (``step``: the meta-step,
        which sets ``K``'s range under ``train.k_ramp``)."""
        t = self.train
        lo, hi = k_range(t.k_min, t.k_max, t.k_ramp, step)
        k = int(torch.randint(lo, hi + 1, (1,), generator=self.gen))
        horizons = loss_horizons(k, t.loss_horizons)
        batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for tk in self.tasks:  # one training batch per task, in the order of the tasks
            if id(tk) not in batches:
                batches[id(tk)] = tk.train_batch(self.gen, self.device)
        losses, accs, grown, oldest = [], [], [], 0
        for i, graph in enumerate(self.graphs):
            task = self.tasks[i]
            got, w, h = self.batch(i)
            b = w.shape[0] // self.archs[i].num_weights
            rows = slice(self.comm.rank * b, (self.comm.rank + 1) * b)
            kept = (got.labels, got.tags) if got is not None else None
            perm, aug, tags = self.variants.for_batch(
                t.batch_size, rows, task.n_classes, task.n_features,
                got.renewed if got is not None else None, kept, self.device,
            )  # fmt: skip
            reader = self.readers[i]
            if reader is not None:
                reader = reader.bind(perm, aug)
            X, y = self._loss_batch(task, aug, *batches[id(task)], perm)  # (b, B) labels or (B,)
            mask = aug.output_mask if aug is not None else None
            meta, done = [], 0  # (b,) meta-loss terms, one per horizon
            for stop in horizons:
                w, h = self.unroll(graph, w, h, stop - done, reader)
                done = stop
                # one forward pass gives both the loss and the logged accuracy
                logits = aug_.mask_logits(task.logits(graph, w, X), mask)
                per_net = logits_cross_entropy(logits, y)  # (b,)
                meta.append(per_net)
            term = meta[0] if len(meta) == 1 else torch.stack(meta).mean(0)
            if t.weight_penalty:
                term = term + t.weight_penalty * w.view(b, -1).square().mean(1)
            if t.feedback_align:
                fb = feedback_of(graph, w, h, "learned", task.fan_in_ref)
                cos = feedback_alignment(graph, w, fb, task.fan_in_ref)  # (b,)
                term = term + t.feedback_align * (1.0 - cos)
            losses.append(term)
            accs.append(logits_accuracy(logits.detach(), y))
            age = got.age + k if got is not None else None
            idx = got.idx if got is not None else None
            grown.append(Grown(idx, w, h, per_net, perm, age, tags))
            if got is not None and got.age is not None and got.age.numel():
                oldest = max(oldest, int(got.age.max()))
        loss = torch.stack([lo.mean() for lo in losses]).mean()
        return MetaLoss(loss, accs, grown, k, oldest)

    def commit(self, out: MetaLoss) -> None:
        """Write a meta-step's grown states back to the pools (after the optimiser's step)."""
        for i, g in enumerate(out.grown):
            if g.idx is not None:
                e, b = self.archs[i].num_weights, g.idx.shape[0]
                self.pools[i].commit(
                    g.idx, g.w.view(b, e), g.h.view(b, e, -1), g.per_net, g.labels, g.age, g.tags
                )

    # ------------------------------------------------------------------ the pieces
    def seeds(self, graph: WeightGraph) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seed_init.state(graph, self.rule.hidden_channels, self.dev_gen)

    def _fill(self, i: int, size: int) -> SamplePool:
        """A pool of ``size`` fresh seeds of architecture ``i`` with their task variants."""
        a = self.archs[i]
        w0, h0 = self.seeds(WeightGraph.replicate(a, size, device=self.device))
        sp = SamplePool.filled(w0.view(size, -1), h0.view(size, a.num_weights, -1))
        labels, sp.tags = self.variants.fresh(size, self.tasks[i].n_classes)
        if labels is not None:
            sp.labels = labels
        return sp

    def batch(self, i: int) -> tuple[PoolBatch | None, torch.Tensor, torch.Tensor]:
        """The pool's batch (or ``None``) and the starting ``w (b*E,)``, ``h (b*E, C)`` of
        architecture ``i`` (``b`` nets: the batch, or this rank's share of it)."""
        pool_cfg, shard = self.pool_cfg, self.comm.shard
        seed_graph = self.seed_graphs[i]  # the whole batch: it draws the per-net randomness
        e = self.archs[i].num_weights
        b = self.train.batch_size // shard.world
        lo, hi = shard.rank * b * e, (shard.rank + 1) * b * e
        w_seed, h_seed = self.seeds(seed_graph)  # (B*E,), (B*E, C)
        w_seed, h_seed = w_seed[lo:hi], h_seed[lo:hi]
        if not self.pools:
            return None, w_seed, h_seed

        def damage_mask(which: torch.Tensor) -> torch.Tensor:
            ones = torch.ones(w_seed.shape[0] * shard.world, device=self.device)
            return zero_out(seed_graph, ones, fraction=pool_cfg.damage_fraction,
                            which=which.to(self.device), generator=self.dev_gen)  # fmt: skip

        fresh = pool_cfg.fresh if pool_cfg.replace_worst else 0
        if fresh and pool_cfg.fresh_rate < 1:  # drawn only then: rate 1 draws as before
            if float(torch.rand((), generator=self.gen)) >= pool_cfg.fresh_rate:
                fresh = 0
        got = self.pools[i].batch(
            b,
            self.gen,
            (w_seed.view(b, e), h_seed.view(b, e, -1)),
            fresh=fresh,
            damage=pool_cfg.damage,
            damage_mask=damage_mask,
            shard=shard,
            renew=pool_cfg.renew,
        )
        return got, got.w.reshape(-1), got.h.reshape(b * e, -1)

    def _loss_batch(
        self,
        task: Task,
        aug: aug_.NetAugment | None,
        X: torch.Tensor,
        y: torch.Tensor,
        perm: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The meta-loss batch as the nets see it: ``X (B, F)`` and ``(b, B)`` labels (or
        ``(B,)`` without augmentations); under class subsets each net's own batch of its
        classes, as large as the shared one (drawn with the data generator), ``(b, B, F)``;
        under a feature transform each net's inputs ``(b, B, F)``."""
        if aug is None:
            return X, (perm[:, y] if perm is not None else y)
        if aug.classes is not None:
            X, y = aug.draw(*task.split("train", self.device), X.shape[0], self.gen,
                            replacement=False)  # fmt: skip
        return aug.inputs(X), aug.labels(y)

    def unroll(self, graph, w, h, k: int, reader=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` rule steps from ``w, h`` (each with its fire mask and, for a rule with senses,
        a fresh data batch), under bf16 autocast and activation checkpointing when set."""
        bf16 = self.train.precision == "bf16"  # the rule's MLP under bf16 autocast
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(k):
                mask = self.fire_mask(w)
                s = reader(graph, w, h) if reader is not None else None  # (E, S)
                if self.train.checkpointing:
                    w, h = activation_checkpoint(
                        self._rule_step, graph, w, h, mask, s, use_reentrant=False
                    )
                else:
                    w, h = self.rule(graph, w, h, mask=mask, senses=s)
        return w, h

    def _rule_step(self, graph, w, h, mask, senses=None):
        return self.rule(graph, w, h, mask=mask, senses=senses)

    def fire_mask(self, w: torch.Tensor) -> torch.Tensor:
        """``(E,)`` fire mask of one rule step: drawn for the whole batch, this rank's slice."""
        n, shard = w.shape[0], self.comm.shard  # b * E
        if shard.world == 1:
            return self.rule.fire_mask(n, w.device, self.dev_gen)
        full = self.rule.fire_mask(n * shard.world, w.device, self.dev_gen)
        return full[shard.rank * n : (shard.rank + 1) * n]

    # ------------------------------------------------------------------ persistence
    def generators(self) -> dict[str, torch.Tensor]:
        """The generators' states (checkpoints)."""
        return {
            "gen": self.gen.get_state(),
            "dev_gen": self.dev_gen.get_state().cpu(),
            **({"senses": self.sense_gen.get_state()} if self.sense_gen is not None else {}),
        }

    def set_generators(self, rng: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(rng["gen"])
        self.dev_gen.set_state(rng["dev_gen"].to(self.dev_gen.get_state().device))
        if self.sense_gen is not None:
            self.sense_gen.set_state(rng["senses"])


def _readers(
    rule: LocalRule, tasks: Sequence[Task], sense_batch: int, generator: torch.Generator | None
) -> list[SenseReader | None]:
    """One :class:`~gnca.senses.SenseReader` per training architecture, shared by the
    architectures of one task (in the order of the tasks), all drawing from ``generator``;
    ``None`` entries for a data-free rule."""
    if not rule.senses:
        return [None] * len(tasks)
    readers: dict[int, SenseReader] = {}
    for tk in tasks:
        if id(tk) not in readers:
            readers[id(tk)] = SenseReader(
                rule.senses, tk, sense_batch, generator, feedback=rule.feedback
            )
    return [readers[id(tk)] for tk in tasks]


def held_out_tasks(
    tasks: Sequence[Task], fraction: float, seed: int
) -> tuple[list[Task], list[Task]]:
    """The tasks the senses read and the tasks the meta-loss scores: every distinct task cut
    by :meth:`~gnca.task.Task.held_out` (``fraction`` of its training split to the scored
    part), in the order of ``tasks``, one pair per task however many architectures share it."""
    pairs: dict[int, tuple[Task, Task]] = {}
    for tk in tasks:
        if id(tk) not in pairs:
            pairs[id(tk)] = tk.held_out(fraction, seed)
    return [pairs[id(tk)][0] for tk in tasks], [pairs[id(tk)][1] for tk in tasks]


def k_range(k_min: int, k_max: int, ramp: int, step: int) -> tuple[int, int]:
    """The range ``[lo, hi]`` that meta-step ``step`` (from 0) draws ``K`` from: ``[k_min,
    k_max]``, or under a horizon curriculum (``ramp > 0`` meta-steps) an upper end that rises
    linearly from ``k_min`` at step 0 to ``k_max`` at step ``ramp``, rounded down."""
    if ramp <= 0 or step >= ramp:
        return k_min, k_max
    return k_min, k_min + (k_max - k_min) * step // ramp


def loss_horizons(k: int, n: int) -> list[int]:
    """The rule steps of a ``k``-step rollout after which the meta-loss is measured: ``n``
    evenly spaced ones ending at ``k`` (``[k]`` for ``n = 1``; distinct, so at most ``k``)."""
    return sorted({max(1, round(k * j / n)) for j in range(1, n + 1)})
