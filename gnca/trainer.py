"""Meta-training of a local rule by backpropagation through unrolled growth.

:class:`MetaTrainer` is the loop: every meta-step it asks the :class:`~gnca.objective.
MetaObjective` for the loss of freshly grown nets (batch, unroll, loss), backpropagates it into
the rule's parameters only, normalises (or clips) each parameter's gradient and lets Adam step;
then the grown states go back to the pools. A meta-step whose loss is NaN or more than
``train.rollback_factor`` times the running mean is rolled back (no update, no write-back).
Around that: the learning-rate schedule, logging (:mod:`gnca.runlog`), checkpoints that resume
bit for bit, a clean stop on a signal (:mod:`gnca.interrupt`), and the end-of-training
evaluation (:mod:`gnca.evaluation`). A data-parallel run hands the trainer a
:class:`~gnca.comm.Comm` of its process group; nothing else changes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from gnca import augment as aug_
from gnca import trainstate
from gnca.architecture import Architecture
from gnca.checkpoint import save_checkpoint
from gnca.comm import Comm
from gnca.config import (
    Config,
    DataConfig,
    PoolConfig,
    RuleConfig,
    TaskConfig,
    TrainConfig,
)
from gnca.data import Dataset
from gnca.device import resolve_device
from gnca.evaluation import accuracy_table, table_rows
from gnca.objective import MetaObjective, loss_horizons
from gnca.pool import SamplePool
from gnca.rule import LocalRule
from gnca.runlog import RunLogs
from gnca.state import TRAINING_ONLY, InitSpec, check_codes_fit
from gnca.task import Task

__all__ = ["MetaTrainer", "StepStats", "config_record", "loss_horizons"]


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
        permute_labels, feature_transform, class_subsets: the task augmentations
            (:class:`~gnca.augment.TaskVariants`); left at their defaults they take ``train``'s
            fields of the same name, set here they are recorded there.
        also: more tasks meta-trained at the same time, each with its own architectures
            (``data.also`` in a config); every meta-step averages the loss over all of them.
        comm: this process's part of a data-parallel run (default: a single process).
    """

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
        comm: Comm | None = None,
    ) -> None:
        train, pool = train or TrainConfig(), pool or PoolConfig()
        init = init or InitSpec()
        seed_init = seed_init or init
        train, variants = _augment_settings(train, permute_labels, feature_transform, class_subsets)
        if config is None:
            data_c, task_c, rule_c = config_record(rule, task, list(archs), init, seed_init)
            rule_c = replace(rule_c, sense_batch=int(sense_batch))
            config = Config(
                name="python", data=data_c, task=task_c, rule=rule_c, pool=pool, train=train
            )
        self.cfg, self.comm = config, comm or Comm()
        self.is_main = self.comm.is_main  # only the main process logs and writes files
        self.device = device or resolve_device(train.device)
        self.task, self.data, self.init, self.seed_init = task, task.data, init, seed_init
        check_codes_fit(seed_init, rule.hidden_channels)
        self.archs, self.arch_tasks = _training_pairs(task, archs, also, bool(rule.senses))
        self.rule = rule.to(self.device)
        self.rule.factored = train.perception == "factored"  # meta-training's first layer
        _check_pool(pool, train)
        _check_augment(variants, bool(rule.senses))
        if train.held_out and not rule.senses:
            raise ValueError(
                "train.held_out keeps examples from the senses: it needs a rule that reads data "
                "(rule.senses)"
            )
        self.optimizer = torch.optim.Adam(self.rule.parameters(), lr=train.lr)
        self.X_train, self.y_train = task.split("train", self.device)
        self.objective = obj = MetaObjective(
            self.rule, self.archs, self.arch_tasks, train=train, pool=pool, seed_init=seed_init,
            variants=variants, sense_batch=sense_batch, device=self.device, comm=self.comm,
        )  # fmt: skip
        self.variants, self.graphs, self.readers = variants, obj.graphs, obj.readers
        self.gen, self.dev_gen, self.sense_gen = obj.gen, obj.dev_gen, obj.sense_gen
        self.reader = obj.readers[0]  # the main task's (its architectures come first)
        self.step, self.loss_ema = 0, None
        self.history: list[StepStats] = []  # the meta-steps of this process (not resumed)
        self.skipped_steps = 0  # rolled-back meta-steps since meta-step 0 (kept in checkpoints)
        # (loss, accuracy, skipped) of the meta-steps since the last logged one: a resumed run
        # logs the same row as an uninterrupted one (kept in checkpoints)
        self.log_window: list[tuple[float, float, bool]] = []
        self.saved_step: int | None = None  # the meta-step of the last checkpoint written/read
        # wall and CPU seconds spent in train() so far, kept in checkpoints: summed over resumes
        self.train_seconds = self.train_cpu_seconds = 0.0
        self.comm.broadcast_(self.rule.state_dict().values())

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

    @property
    def pools(self) -> list[SamplePool]:
        """This process's sample pools, one per training architecture (empty without a pool)."""
        return self.objective.pools

    def lr_at(self, step: int) -> float:
        """Cosine decay from ``train.lr`` to ``train.lr_final`` (constant when unset)."""
        t = self.cfg.train
        if t.lr_final is None:
            return t.lr
        frac = min(step / max(t.steps, 1), 1.0)
        return t.lr_final + 0.5 * (t.lr - t.lr_final) * (1 + math.cos(math.pi * frac))

    # ------------------------------------------------------------------ one meta-step
    def meta_step(self) -> StepStats:
        """Run one meta-step and return its statistics."""
        t = self.cfg.train
        self.rule.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = self.objective(self.step)  # batch -> unroll -> loss
        loss, acc = self.comm.step_stats(out.loss.detach(), out.accs)
        skipped = not math.isfinite(loss) or (
            self.loss_ema is not None and loss > t.rollback_factor * self.loss_ema
        )
        self.optimizer.zero_grad(set_to_none=True)
        if not skipped:
            out.loss.backward()
            self.comm.average_grads(self.rule.parameters())
            skipped = not all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.rule.parameters()
            )
        if not skipped:
            self._process_grads()
            self.optimizer.step()
            self.loss_ema = loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss
            self.objective.commit(out)  # the grown states go back to the pools
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.skipped_steps += int(skipped)
        stats = StepStats(self.step, loss, acc, out.k, lr, skipped, out.oldest)
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
        ``"<architecture> [unseen]"``); accuracy at each horizon (:func:`gnca.evaluation.
        accuracy_table`). Default horizons: ``k_max`` and ``10 * k_max``. ``progress``: a
        progress bar over the rule steps of all architectures."""
        num = num or self.cfg.train.eval_nets
        horizons = horizons or (self.cfg.train.k_max, 10 * self.cfg.train.k_max)
        rows = table_rows(self.task, self.archs, self.arch_tasks, unseen)
        return accuracy_table(self, rows, num=num, horizons=horizons, split=split, bar=progress)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict | None:
        """The whole training state (:func:`gnca.trainstate.capture`; collective in a
        data-parallel run, ``None`` on the other ranks)."""
        return trainstate.capture(self)

    def load_state_dict(self, d: dict) -> None:
        """Continue from a checkpoint written with any number of processes
        (:func:`gnca.trainstate.restore`)."""
        trainstate.restore(self, d)

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (collective in a data-parallel run: the main process
        writes it)."""
        d = self.state_dict()
        if d is not None:
            save_checkpoint(path, d)
        self.saved_step = self.step

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
        Weights & Biases run in ``run_dir/wandb`` (:mod:`gnca.runlog`, :mod:`gnca.tracking`).
        Without a progress bar, ``log_lines`` prints one line per logged step to stderr. The
        seconds in ``metrics.csv`` (and :attr:`train_seconds`, :attr:`train_cpu_seconds`, kept
        in ``last.pt``) are meta-training time summed over every run that led to this one. A
        resumed run first drops the rows of ``metrics.csv`` (and TensorBoard events) logged
        after its checkpoint, so that no meta-step is logged twice. Only the main process of a
        distributed run logs.

        ``stop`` is asked after every meta-step (e.g. a :class:`gnca.interrupt.StopOnSignal`);
        when it returns True on any rank, ``last.pt`` is written at that meta-step boundary and
        training returns early: resuming from it continues exactly.
        """
        t = self.cfg.train
        run = Path(run_dir) if run_dir is not None else None
        if run is not None and self.is_main:
            run.mkdir(parents=True, exist_ok=True)
        logs = None
        if self.is_main:
            logs = RunLogs(self.cfg, self.step, run, self.log_window, progress=progress,
                           lines=log_lines)  # fmt: skip
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
                if callback is not None:
                    callback(s)
                if logs is not None:
                    logs.after(s, clock)
                if run is not None and (s.step % t.checkpoint_every == 0 or s.step == t.steps):
                    clock()
                    self.save(run / "last.pt")
                if self.comm.any(stop is not None and stop()):
                    if run is not None and self.saved_step != self.step:
                        clock()
                        self.save(run / "last.pt")
                    break
        finally:
            clock()
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
        d, saved = trainstate.load_for_resume(path, cfg)
        trainer = cls.from_config(saved, dataset, device, archs)
        trainer.load_state_dict(d)
        return trainer


def config_record(
    rule: LocalRule, task: Task, archs: list[Architecture], init: InitSpec, seed_init: InitSpec
) -> tuple[DataConfig, TaskConfig, RuleConfig]:
    """The ``data``, ``task`` and ``rule`` sections that describe objects built in Python, so
    that their checkpoints load like any other (custom DAGs are not recorded: only MLPs are)."""
    rc = rule.config()
    aggr = rc.pop("aggr")
    sizes = [list(a.mlp_sizes) for a in archs if a.mlp_sizes]
    data = DataConfig(name=task.name, batch_size=task.batch_size)
    # the initial-state keys: those of growing, the training-only ones of the seeds
    start = {f.name: getattr(seed_init if f.name in TRAINING_ONLY else init, f.name)
             for f in fields(InitSpec)}  # fmt: skip
    tc = TaskConfig(
        architectures=sizes or [[task.n_features, task.n_classes]],
        bias=task.bias,
        activation=task.activation,
        fan_in_ref=task.fan_in_ref,
        **start,
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
) -> tuple[TrainConfig, aug_.TaskVariants]:
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
    variants = aug_.TaskVariants(
        bool(chosen["permute_labels"]), chosen["feature_transform"], chosen["class_subsets"]
    )
    return replace(train, **chosen), variants


def _check_augment(variants: aug_.TaskVariants, reads_data: bool) -> None:
    """One-line errors for task augmentations that are unknown or need senses."""
    if variants.feature_transform not in aug_.FEATURE_TRANSFORMS:
        choices = ", ".join(aug_.FEATURE_TRANSFORMS)
        raise ValueError(
            f"unknown feature_transform {variants.feature_transform!r}; choose from {choices}"
        )
    if variants.class_subsets is not None and variants.class_subsets < 2:
        raise ValueError(f"class_subsets must be >= 2 (or None), got {variants.class_subsets}")
    if variants.permute_labels and not reads_data:
        raise ValueError(
            "permute_labels needs a rule that reads data (rule.senses): a data-free rule "
            "cannot know which permutation a net is to learn"
        )
    on = {
        "feature_transform": variants.feature_transform != "none",
        "class_subsets": variants.class_subsets,
    }
    for name, value in on.items():
        if value and not reads_data:
            raise ValueError(
                f"{name} needs a rule that reads data (rule.senses): a data-free rule cannot "
                "know which variant of the task a net is to learn"
            )


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
