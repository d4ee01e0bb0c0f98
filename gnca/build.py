"""From a :class:`~gnca.config.Config` to the objects that do the work, in one place.

Every module that starts from a configuration (the CLI, the experiments, distributed training,
the examples and benchmarks) builds its pieces here; the pieces themselves never see a
``Config``. ``MetaTrainer.from_config(cfg)`` is a trainer built from :func:`trainer_parts`
(this module sits below the trainer and never imports it). Each builder takes only the section
it needs:

- :func:`make_rule`: ``cfg.rule`` -> :class:`~gnca.LocalRule`
- :func:`make_dataset`: ``cfg.data`` -> :class:`~gnca.data.Dataset`
- :func:`make_task`: ``cfg.task`` + dataset -> :class:`~gnca.task.Task`
- :func:`make_architectures`: ``cfg.task`` + task -> the training MLPs
- :func:`make_also`: ``cfg.data.also`` -> the extra tasks and their training MLPs
- :func:`make_init`: ``cfg.task`` -> :class:`~gnca.state.InitSpec`
- :func:`trainer_parts`: the whole config -> the arguments of the trainer
- :func:`load_trained`: a checkpoint -> :class:`TrainedRule` (rule, task, init, config)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gnca.architecture import Architecture
from gnca.checkpoint import load_checkpoint
from gnca.config import Config, DataConfig, RuleConfig, TaskConfig, config_from_dict
from gnca.data import IMAGE_DATASETS, Dataset, load_dataset
from gnca.device import resolve_device
from gnca.rule import LocalRule
from gnca.senses import SenseReader
from gnca.state import InitSpec
from gnca.task import Task

__all__ = [
    "TrainedRule",
    "load_rule",
    "load_trained",
    "make_also",
    "make_architectures",
    "make_dataset",
    "make_init",
    "make_rule",
    "make_task",
    "resolve_device",
    "rule_from_checkpoint",
    "trained_from",
    "trainer_parts",
]


def make_rule(r: RuleConfig) -> LocalRule:
    """The local rule described by ``cfg.rule`` (its parameters drawn from torch's global RNG)."""
    return LocalRule(
        r.hidden_channels,
        r.widths,
        r.activation,
        r.neighbourhood,
        include_self=r.include_self,
        reduce=r.reduce,
        fire_rate=r.fire_rate,
        bound=r.bound,
        state_bound=r.state_bound,
        aggr=r.aggr,
        senses=r.senses,
        sense_norm=r.sense_norm,
        sense_floor=r.sense_floor,
        descent=r.descent,
        descent_only=r.descent_only,
        descent_norm=r.descent_norm,
        descent_momentum=r.descent_momentum,
        descent_age=r.descent_age,
        descent_age_fixed=r.descent_age_fixed,
        feedback=r.feedback,
    )


def make_dataset(d: DataConfig, data_dir: str | None = None) -> Dataset:
    """The data of ``cfg.data``; ``data_dir`` (a command-line flag) wins over ``d.data_dir``,
    which wins over ``$GNCA_DATA``."""
    return load_dataset(
        d.name,
        data_dir=data_dir or d.data_dir,
        csv_path=d.csv_path,
        test_fraction=d.test_fraction,
        split=d.split,
        seed=d.seed,
        downsample=d.downsample,
        max_train=d.max_train,
    )


def make_task(t: TaskConfig, data: Dataset, batch_size: int | None = None) -> Task:
    """The task of ``cfg.task`` on ``data``; ``batch_size`` is ``cfg.data.batch_size``."""
    return Task(data, t.activation, t.fan_in_ref, t.bias, batch_size)


def make_layer_nets(specs: list[str], t: TaskConfig, task: Task, key: str) -> list[Architecture]:
    """The layer nets of ``specs`` (``conv:...`` or ``FILE.py:CLASS``, config key ``key``) for
    the task's data."""
    from gnca.archspec import CLIError, parse_arch

    d = task.data
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(parse_arch(spec, d.n_features, d.n_classes, t.bias, d.image_shape,
                                  dataset=d.name, activation=t.activation))  # fmt: skip
        except CLIError as err:
            raise ValueError(f"{key}[{i}]: {err}") from None
    return out


def make_architectures(t: TaskConfig, task: Task) -> list[Architecture]:
    """The training MLPs of ``cfg.task.architectures`` and layer nets of ``cfg.task.layers``,
    checked against the task's data."""
    archs = []
    for i, sizes in enumerate(t.architectures):
        try:
            archs.append(task.mlp(sizes))
        except ValueError:
            raise ValueError(
                f"task.architectures[{i}] = {sizes} does not fit {task.name}: it needs "
                f"{task.n_features} inputs and {task.n_classes} outputs"
            ) from None
    return archs + make_layer_nets(t.layers, t, task, "task.layers")


def make_also(cfg: Config) -> list[tuple[Task, list[Architecture]]]:
    """The extra tasks of ``cfg.data.also``, each with its training MLPs: the same split
    settings as ``cfg.data`` (images pooled by ``data.also_downsample``, default
    ``data.downsample``; tables never) and the hidden layers of ``cfg.task.architectures``."""
    d = cfg.data
    k = d.downsample if d.also_downsample is None else d.also_downsample
    also = []
    for name in d.also:
        pooling = k if name in IMAGE_DATASETS else 1
        extra_data = dataclasses.replace(d, name=name, also=[], downsample=pooling)
        extra = make_task(cfg.task, make_dataset(extra_data), d.batch_size)
        sizes = [[extra.n_features, *a[1:-1], extra.n_classes] for a in cfg.task.architectures]
        also.append((extra, [extra.mlp(s) for s in sizes]))
    return also


def make_init(t: TaskConfig, training: bool = False) -> InitSpec:
    """How task nets start: the initial-state keys of ``t``; the code jitter
    (:data:`~gnca.state.TRAINING_ONLY`) applies only to meta-training seeds (``training``)."""
    init = InitSpec.of(t)
    return init if training else init.growing()


def trainer_parts(
    cfg: Config,
    dataset: Dataset | None = None,
    device: torch.device | None = None,
    archs: list[Architecture] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :class:`~gnca.trainer.MetaTrainer` for ``cfg``.

    Order matters for reproducibility: the rule's parameters are drawn right after
    ``torch.manual_seed(cfg.train.seed)``.
    """
    data = dataset if dataset is not None else make_dataset(cfg.data)
    task = make_task(cfg.task, data, cfg.data.batch_size)
    archs = [task.check(a) for a in archs] if archs is not None else None
    archs = archs if archs is not None else make_architectures(cfg.task, task)
    also = make_also(cfg)
    torch.manual_seed(cfg.train.seed)
    return {
        "also": also,
        "rule": make_rule(cfg.rule),
        "task": task,
        "archs": archs,
        "train": cfg.train,
        "pool": cfg.pool,
        "init": make_init(cfg.task),
        "seed_init": make_init(cfg.task, training=True),
        "device": device or resolve_device(cfg.train.device),
        "config": cfg,
        "sense_batch": cfg.rule.sense_batch,
        "permute_labels": cfg.train.permute_labels,
        "feature_transform": cfg.train.feature_transform,
        "class_subsets": cfg.train.class_subsets,
    }


# ---------------------------------------------------------------------- loading
def load_rule(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[LocalRule, Config]:
    """A trained rule and its configuration from a checkpoint."""
    return rule_from_checkpoint(load_checkpoint(path, map_location=map_location), path)


def rule_from_checkpoint(d: dict, path: str | os.PathLike) -> tuple[LocalRule, Config]:
    """The rule and configuration of a loaded checkpoint dict ``d`` (``path`` for errors)."""
    for key in ("rule", "rule_config", "config"):
        if key not in d:
            raise ValueError(f"{path} is a gnca checkpoint without {key!r}; it holds no rule")
    cfg = config_from_dict(d["config"])
    rule = LocalRule(**d["rule_config"])
    try:
        rule.load_state_dict(d["rule"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"{path}: the rule weights do not match its configuration ({first})"
        ) from None
    return rule, cfg


@dataclass
class TrainedRule:
    """A meta-trained rule with everything needed to grow and evaluate nets.

    Attributes:
        rule: the local rule (eval mode, on ``device``).
        cfg: the configuration it was meta-trained with (``data.data_dir`` as used now).
        task: its task (data and forward conventions).
        init: the initial-state spec for growing (exact identity codes).
        device: where it grows.
        checkpoint: where it was loaded from or saved to (``None`` when built in memory).
        meta_steps: meta-steps it was trained for.
        label: short name in experiment tables and plots (e.g. ``"pooled"``).
        train_seconds: wall time of meta-training (``None`` if unknown).
        trained_now: whether this process meta-trained (some of) it.
    """

    rule: LocalRule
    cfg: Config
    task: Task
    init: InitSpec
    device: torch.device
    checkpoint: Path | None = None
    meta_steps: int = 0
    label: str = ""
    train_seconds: float | None = None
    trained_now: bool = False

    def reader(self, seed: int = 0, task: Task | None = None) -> SenseReader | None:
        """What the rule reads while growing on ``task`` (default: its own), or ``None`` for a
        data-free rule; batches drawn with ``seed``."""
        if not self.rule.senses:
            return None
        gen = torch.Generator().manual_seed(seed)
        return SenseReader(self.rule.senses, task or self.task, self.cfg.rule.sense_batch, gen,
                           feedback=self.rule.feedback)  # fmt: skip

    def architectures(self) -> list[Architecture]:
        """The architectures it was meta-trained on (MLPs of ``cfg.task.architectures``)."""
        return make_architectures(self.cfg.task, self.task)


def trained_from(
    rule: LocalRule,
    cfg: Config,
    *,
    device: torch.device | str | None = None,
    data_dir: str | None = None,
    dataset: Dataset | None = None,
    checkpoint: Path | None = None,
    meta_steps: int | None = None,
    **extra: Any,
) -> TrainedRule:
    """A :class:`TrainedRule` for ``rule`` and its ``cfg`` (data loaded unless given); ``extra``
    sets the experiment fields (``label``, ``train_seconds``, ``trained_now``)."""
    if data_dir:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=data_dir))
    dev = torch.device(device) if device is not None else resolve_device(cfg.train.device)
    data = dataset if dataset is not None else make_dataset(cfg.data)
    return TrainedRule(
        rule.to(dev).eval(),
        cfg,
        make_task(cfg.task, data, cfg.data.batch_size),
        make_init(cfg.task),
        dev,
        checkpoint,
        cfg.train.steps if meta_steps is None else meta_steps,
        **extra,
    )


def load_trained(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    data_dir: str | None = None,
    dataset: Dataset | None = None,
) -> TrainedRule:
    """Load a checkpoint written by ``gnca train`` or an experiment, ready to grow.

    Args:
        path: the ``last.pt``.
        device: where to grow (default: the checkpoint's ``train.device``).
        data_dir: replaces the configuration's ``data.data_dir`` (the command-line flag).
        dataset: use this data instead of loading the configuration's.
    """
    d = load_checkpoint(path)
    rule, cfg = rule_from_checkpoint(d, path)
    steps = int(d["step"]) if "step" in d else cfg.train.steps
    return trained_from(
        rule,
        cfg,
        device=device,
        data_dir=data_dir,
        dataset=dataset,
        checkpoint=Path(path),
        meta_steps=steps,
    )
