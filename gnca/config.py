"""Nested dataclass configuration, loaded strictly from YAML.

A run is described by a :class:`Config` made of five sections (``data``, ``task``, ``rule``,
``pool``, ``train``).  :func:`load_config` reads a YAML file, applies ``KEY=VALUE`` overrides
(see :func:`apply_overrides`) and builds the dataclasses with :func:`config_from_dict`, which
rejects unknown keys, wrongly typed values and obviously invalid values with a one-line
:class:`ConfigError` naming the full dotted key (e.g. ``train.steps``).

:func:`config_to_dict` turns a config back into plain builtins (safe for ``yaml.safe_dump`` and
for ``torch.load(..., weights_only=True)``), and :func:`save_config` writes it atomically.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from gnca.archspec import is_layer_spec
from gnca.augment import FEATURE_TRANSFORMS
from gnca.data import DATASET_NAMES, TABLES
from gnca.files import atomic_write
from gnca.forward import TASK_ACTIVATIONS
from gnca.graph import NEIGHBOURHOODS as _NEIGHBOURHOODS
from gnca.perception import REDUCTIONS as _REDUCTIONS
from gnca.pool import RENEW
from gnca.rule import ACTIVATIONS as _RULE_ACTIVATIONS
from gnca.senses import FEEDBACKS
from gnca.senses import SENSES as SENSE_NAMES
from gnca.state import INIT_KINDS, NEURON_CODES, InitSpec

__all__ = [
    "ACTIVATIONS",
    "RULE_ACTIVATIONS",
    "DATASETS",
    "GRAD_MODES",
    "PERCEPTIONS",
    "PRECISIONS",
    "WANDB_MODES",
    "INITS",
    "NEIGHBOURHOODS",
    "REDUCTIONS",
    "SPLITS",
    "Config",
    "ConfigError",
    "DataConfig",
    "PoolConfig",
    "RuleConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "validate_config",
]

# Allowed values of the enum-like string fields: each list is taken from the module that
# implements the names, so that a name is offered exactly where it works.
DATASETS = DATASET_NAMES
SPLITS = ("random", "standard")
ACTIVATIONS = tuple(TASK_ACTIVATIONS)  # task nets' hidden activation
RULE_ACTIVATIONS = tuple(_RULE_ACTIVATIONS)  # the rule MLP's activation
INITS = INIT_KINDS
NEIGHBOURHOODS = tuple(_NEIGHBOURHOODS)
REDUCTIONS = _REDUCTIONS
GRAD_MODES = ("normalize", "clip", "none")
PRECISIONS = ("fp32", "bf16")
PERCEPTIONS = ("dense", "factored")
WANDB_MODES = ("offline", "online")
_WANDB_BAD_CHARS = "/\\#?%:"  # characters W&B refuses in project names
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type, bad value, unreadable file."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which data set to learn and how to split / preprocess it."""

    name: str = "iris"  # iris | wine | digits | mnist | csv
    data_dir: str | None = None  # MNIST folder (else $GNCA_DATA)
    csv_path: str | None = None  # CSV file (name=csv): feature columns, label in the last one
    test_fraction: float = 0.2  # held-out fraction for the random split
    split: str = "random"  # random | standard (mnist only)
    seed: int = 0  # seed of the random split / subsampling
    downsample: int = 1  # k x k average pooling of images
    max_train: int | None = None  # cap on the number of training examples
    batch_size: int | None = None  # training examples per meta-step; None = full training set
    also: list[str] = field(default_factory=list)  # more datasets meta-trained at once (senses)
    also_downsample: int | None = None  # k x k pooling of the images in `also`; None = downsample


@dataclass
class _TaskNets:
    """The keys of the ``task`` section that come before the initial-state ones."""

    # MLP layer sizes meta-trained together; first = n_features, last = n_classes
    architectures: list[list[int]] = field(default_factory=lambda: [[4, 16, 3]])
    bias: bool = True  # whether the task MLPs have biases
    activation: str = "tanh"  # hidden activation: tanh | relu | gelu | sigmoid | identity
    # layer nets meta-trained beside the MLPs, as --arch specs: conv:8k5s2p2-16k5s2p2, file.py:Cls
    layers: list[str] = field(default_factory=list)


@dataclass
class TaskConfig(InitSpec, _TaskNets):
    """The task networks grown by the rule, and how they start.

    The initial-state keys (``init`` ... ``neuron_codes``) are the fields of
    :class:`~gnca.state.InitSpec`, declared there once; the keys keep the order
    ``architectures``, ``bias``, ``activation``, those fields, ``fan_in_ref``.
    :func:`gnca.build.make_init` turns this section into the specs of growing and training.
    """

    fan_in_ref: float | None = None  # if set: non-bias weights count as w * fan_in_ref / fan_in


@dataclass
class RuleConfig:
    """The learned local update rule acting on the weight graph."""

    hidden_channels: int = 8  # C, size of each weight's hidden state
    widths: list[int] = field(default_factory=lambda: [64])  # hidden layer widths of the rule MLP
    activation: str = "relu"  # hidden activation of the rule MLP (task choices and silu)
    neighbourhood: str = "incident"  # incident | directed | sibling
    include_self: bool = False  # whether a weight is part of its own neighbourhood
    reduce: str = "mean"  # mean | sum, aggregation over the neighbourhood
    fire_rate: float = 0.8  # probability that a weight is updated in a rule step
    bound: float | None = None  # if set, outputs are bound * tanh(.)
    aggr: str | None = None  # explicit line-graph aggregation (max, ...); None = reduce
    senses: list[str] = field(default_factory=list)  # data read: act hebb error delta loss
    sense_batch: int = 64  # training examples read per rule step (rules with senses)
    state_bound: float | None = None  # if set, hidden states are state_bound * tanh(.)
    sense_norm: bool = False  # error and delta senses at unit RMS per net (rules with senses)
    sense_floor: float = 0.0  # sense_norm divides by max(RMS, this): weaker signals stay weak
    descent: float = 0.0  # > 0: w -= alpha * delta sense beside the MLP, alpha learned from this
    descent_only: bool = False  # weights move by the descent path only (the MLP writes h)
    descent_norm: float | None = None  # beta2: the path steps as Adam, moments in h[:, :2 or 4]
    descent_momentum: float = 0.0  # beta1: Adam's first moment for a descent_norm path
    descent_age: bool = False  # a descent_norm step that depends on each weight's age (learned)
    descent_age_fixed: float | None = None  # with descent_age: mu fixed at this (not learned)
    feedback: str = "learned"  # learned (last hidden channel) | weights: backward messages


@dataclass
class PoolConfig:
    """The sample pool of partially grown task nets."""

    size: int = 256  # 0 disables the pool (every meta-step starts from fresh seeds)
    fresh: int = 2  # fresh seeds per architecture per meta-step
    replace_worst: bool = True  # fresh seeds replace the worst (highest loss) samples
    renew: str = "worst"  # which samples fresh seeds replace: worst (highest loss) | oldest
    fresh_rate: float = 1.0  # chance that a meta-step brings in its fresh seeds (< 1: longer lives)
    damage: int = 0  # pooled samples zeroed-out per meta-step (lowest loss first)
    damage_fraction: float = (
        0.3  # fraction of other layers' weights zeroed (one whole layer always)
    )


@dataclass
class TrainConfig:
    """The meta-training loop."""

    steps: int = 1500  # meta-steps
    batch_size: int = 16  # task nets per architecture per meta-step
    k_min: int = 20  # unrolled rule steps drawn uniformly in [k_min, k_max]
    k_max: int = 40  # see k_min
    # horizon curriculum: the upper end of K's range rises linearly from k_min to k_max over
    # this many meta-steps (0: K ~ U[k_min, k_max] from the first meta-step)
    k_ramp: int = 0
    lr: float = 2e-3  # Adam learning rate
    lr_final: float | None = None  # cosine/linear decay target (None = constant)
    grad: str = "normalize"  # normalize | clip | none
    grad_clip: float = 1.0  # max gradient norm for grad=clip
    rollback_factor: float = 10.0  # skip a meta-step whose loss > this x running mean (or NaN)
    checkpointing: bool = False  # activation checkpointing of each rule step
    precision: str = "fp32"  # fp32 | bf16 (the rule's MLP under bf16 autocast; state stays fp32)
    # dense | factored (the rule MLP's first layer applied through the neurons: same function
    # up to rounding, fewer flops; gnca.factored)
    perception: str = "dense"
    seed: int = 0  # seed of everything random in training
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 25  # meta-steps between log lines
    checkpoint_every: int = 250  # meta-steps between checkpoints
    eval_nets: int = 100  # task nets grown for evaluation
    # MLPs not trained on, also evaluated at the end of `gnca train` (marked [unseen])
    eval_architectures: list[list[int]] = field(default_factory=list)
    eval_layers: list[str] = field(default_factory=list)  # unseen layer nets in that table
    loss_horizons: int = 1  # meta-loss averaged after this many evenly spaced rule steps
    weight_penalty: float = 0.0  # meta-loss += this x mean squared task weight (scale damping)
    # meta-loss += this x (1 - cosine of the learned feedback and the weights) per net: pays
    # the rule to keep its feedback channel aligned with the weights it sends errors back over
    feedback_align: float = 0.0
    # fraction of every task's training split that only the meta-loss scores: the senses
    # never read it (rules with senses; 0: the meta-loss scores the examples they read)
    held_out: float = 0.0
    permute_labels: bool = False  # each net learns under its own random label permutation
    # each net sees its inputs through its own random feature permutation or orthogonal map
    feature_transform: str = "none"  # none | permute | orthogonal (rules with senses)
    # each net learns a random subset of m ~ U[class_subsets, classes] classes (null: all)
    class_subsets: int | None = None
    wandb: bool = False  # also log to Weights & Biases, in the run directory (gnca[wandb] extra)
    wandb_project: str = "gnca"  # the W&B project of the run
    wandb_mode: str = "offline"  # offline (files only; `wandb sync` uploads) | online


@dataclass
class Config:
    """A complete run description."""

    name: str = "iris"  # run name
    out_dir: str | None = None  # default runs/<name>
    data: DataConfig = field(default_factory=DataConfig)  # data set
    task: TaskConfig = field(default_factory=TaskConfig)  # task networks
    rule: RuleConfig = field(default_factory=RuleConfig)  # update rule
    pool: PoolConfig = field(default_factory=PoolConfig)  # sample pool
    train: TrainConfig = field(default_factory=TrainConfig)  # meta-training


# --------------------------------------------------------------------------------------------
# Type checking
# --------------------------------------------------------------------------------------------

T = TypeVar("T")
_NoneType = type(None)
_UNION_TYPES: tuple[Any, ...] = (Union, types.UnionType)


def _key(prefix: str, name: str) -> str:
    """Join a dotted prefix and a field name."""
    return f"{prefix}.{name}" if prefix else name


def _short(value: Any, limit: int = 40) -> str:
    """A short one-line repr of ``value`` for error messages."""
    text = "null" if value is None else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(value: Any) -> str:
    """Describe a value found in the wrong place: ``str 'abc'``."""
    if value is None:
        return "null"
    return f"{type(value).__name__} {_short(value)}"


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other annotation -> ``(tp, False)``."""
    if typing.get_origin(tp) in _UNION_TYPES:
        args = [a for a in typing.get_args(tp) if a is not _NoneType]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported config annotation {tp!r}")
    return tp, False


def _describe(tp: Any, plural: bool = False) -> str:
    """Human description of an annotation: ``an int``, ``a list of ints``, ``a number or null``."""
    inner, optional = _split_optional(tp)
    if optional:
        return f"{_describe(inner, plural)} or null"
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        return ("lists" if plural else "a list") + f" of {_describe(item, plural=True)}"
    if dataclasses.is_dataclass(inner):
        return "mappings" if plural else "a mapping"
    names = {int: ("an int", "ints"), float: ("a number", "numbers"), str: ("a string", "strings")}
    names[bool] = ("a boolean (true/false)", "booleans")
    if inner in names:
        return names[inner][1 if plural else 0]
    raise TypeError(f"unsupported config annotation {inner!r}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (converted where lossless)."""
    inner, optional = _split_optional(tp)
    if value is None and optional:
        return None

    def fail() -> typing.NoReturn:
        raise ConfigError(f"config key '{key}' must be {_describe(tp)}, got {_got(value)}")

    if dataclasses.is_dataclass(inner):
        if value is None:  # an empty YAML section (`pool:`) means all defaults
            value = {}
        if not isinstance(value, dict):
            fail()
        return _from_dict(value, inner, key)
    if typing.get_origin(inner) is list:
        if not isinstance(value, list | tuple):
            fail()
        (item,) = typing.get_args(inner)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if inner is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return int(value)
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail()
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported config annotation {inner!r} for '{key}'")


def _closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to ``name`` (difflib), or None if nothing is similar enough."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _suggest(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    match = _closest(name, candidates)
    return f" (did you mean '{match}'?)" if match else ""


def _corrected_key(parts: Sequence[str], cls: type) -> str | None:
    """Fix each component of a dotted key against the schema of ``cls``, or None if hopeless."""
    fixed: list[str] = []
    schema: Any = cls
    for part in parts:
        if not dataclasses.is_dataclass(schema):
            return None
        names = [f.name for f in dataclasses.fields(schema)]
        match = part if part in names else _closest(part, names)
        if match is None:
            return None
        fixed.append(match)
        schema = typing.get_type_hints(schema)[match]
    return ".".join(fixed)


def _unknown_key(parts: Sequence[str], cls: type, prefix: str = "") -> ConfigError:
    """Error for unknown key ``parts`` of dataclass ``cls`` (found under ``prefix``)."""
    key = _key(prefix, ".".join(parts))
    fix = _corrected_key(parts, cls)
    fix = _key(prefix, fix) if fix else None
    hint = f" (did you mean '{fix}'?)" if fix and fix != key else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _from_dict(d: dict, cls: type[T], prefix: str) -> T:
    """Build dataclass ``cls`` from mapping ``d`` whose keys live under dotted ``prefix``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        if not isinstance(name, str):
            where = f" in section '{prefix}'" if prefix else ""
            raise ConfigError(f"config keys must be strings, got {_got(name)}{where}")
        if name not in names:
            raise _unknown_key([name], cls, prefix)
        kwargs[name] = _coerce(value, hints[name], _key(prefix, name))
    obj = cls(**kwargs)
    validator = _VALIDATORS.get(cls)
    if validator is not None:
        validator(obj, prefix)
    return obj


# --------------------------------------------------------------------------------------------
# Value validation (per section, so that it also runs for config_from_dict(d, TrainConfig))
# --------------------------------------------------------------------------------------------


def _bad(prefix: str, name: str, requirement: str, value: Any) -> ConfigError:
    return ConfigError(
        f"config key '{_key(prefix, name)}' must be {requirement}, got {_short(value)}"
    )


def _check_choice(obj: Any, prefix: str, name: str, choices: Sequence[str]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        options = ", ".join(f"'{c}'" for c in choices)
        raise ConfigError(
            f"config key '{_key(prefix, name)}' must be one of {options}, got {_short(value)}"
            + _suggest(value, choices)
        )


def _check_min(obj: Any, prefix: str, name: str, low: float, strict: bool = False) -> None:
    """``value >= low`` (``> low`` when strict); ``None`` passes (optional fields)."""
    value = getattr(obj, name)
    if value is None:
        return
    ok = value > low if strict else value >= low
    if not ok:  # also catches NaN
        raise _bad(prefix, name, f"{'>' if strict else '>='} {low:g}", value)


def _check_range(obj: Any, prefix: str, name: str, low: float, high: float, text: str) -> None:
    value = getattr(obj, name)
    if not low <= value <= high:
        raise _bad(prefix, name, text, value)


def _validate_data(c: DataConfig, p: str) -> None:
    _check_choice(c, p, "name", DATASETS)
    _check_choice(c, p, "split", SPLITS)
    if c.split == "standard" and c.name not in ("mnist", "mnist1d"):
        raise ConfigError(
            f"config key '{_key(p, 'split')}' = 'standard' is only available for mnist and "
            f"mnist1d, not '{c.name}'"
        )
    if c.name == "csv" and not c.csv_path:
        raise ConfigError(f"config key '{_key(p, 'csv_path')}' must be set when name is 'csv'")
    if not 0.0 < c.test_fraction < 1.0:
        raise _bad(p, "test_fraction", "in (0, 1)", c.test_fraction)
    _check_min(c, p, "downsample", 1)
    _check_min(c, p, "max_train", 1)
    _check_min(c, p, "batch_size", 1)
    _check_min(c, p, "also_downsample", 1)
    for k, name in enumerate(c.also):
        if name not in (*TABLES, "digits", "mnist") or name == c.name:
            raise ConfigError(
                f"config key '{_key(p, 'also')}[{k}]' must be another of "
                f"{', '.join((*TABLES, 'digits', 'mnist'))}, got {name!r}"
            )


def _validate_task(c: TaskConfig, p: str) -> None:
    key = _key(p, "architectures")
    for i, spec in enumerate(c.layers):
        if not isinstance(spec, str) or not is_layer_spec(spec):
            raise ConfigError(
                f"config key '{_key(p, 'layers')}[{i}]' must be a conv:... spec or FILE.py:CLASS, "
                f"got {_short(spec)}"
            )
    if not c.architectures and not c.layers:
        raise ConfigError(
            f"config key '{key}' must be a non-empty list of layer-size lists (or give "
            f"'{_key(p, 'layers')}')"
        )
    for i, arch in enumerate(c.architectures):
        if len(arch) < 2 or any(n < 1 for n in arch):
            raise ConfigError(
                f"config key '{key}[{i}]' must list >= 2 positive layer sizes, got {_short(arch)}"
            )
    first = c.architectures[0] if c.architectures else []
    for i, arch in enumerate(c.architectures[1:], start=1):
        if arch[0] != first[0] or arch[-1] != first[-1]:
            raise ConfigError(
                f"config key '{key}[{i}]' = {_short(arch)} must have the same input and output "
                f"sizes as '{key}[0]' = {_short(first)}"
            )
    _check_choice(c, p, "activation", ACTIVATIONS)
    _check_choice(c, p, "init", INITS)
    _check_min(c, p, "init_scale", 0)
    _check_min(c, p, "init_noise", 0)
    _check_min(c, p, "code_freqs", 0)
    _check_min(c, p, "out_code_freqs", 0, strict=True)
    _check_range(c, p, "code_jitter", 0.0, 1.0, "in [0, 1]")
    _check_range(c, p, "code_jitter_fraction", 0.0, 1.0, "in [0, 1]")
    _check_choice(c, p, "neuron_codes", NEURON_CODES)
    _check_min(c, p, "fan_in_ref", 0, strict=True)
    if not math.isfinite(c.feedback_init):
        raise _bad(p, "feedback_init", "a finite number", c.feedback_init)
    if c.feedback_init and c.init == "codes":
        raise ConfigError(
            f"config key '{_key(p, 'feedback_init')}' starts the last hidden channel at the "
            f"weights, where '{_key(p, 'init')}' codes write identity codes: use init random "
            f"or fixed"
        )


def _validate_rule(c: RuleConfig, p: str) -> None:
    _check_min(c, p, "hidden_channels", 1)
    for i, width in enumerate(c.widths):
        if width < 1:
            raise ConfigError(f"config key '{_key(p, 'widths')}[{i}]' must be >= 1, got {width}")
    _check_choice(c, p, "activation", RULE_ACTIVATIONS)
    _check_choice(c, p, "neighbourhood", NEIGHBOURHOODS)
    _check_choice(c, p, "reduce", REDUCTIONS)
    if not 0.0 < c.fire_rate <= 1.0:
        raise _bad(p, "fire_rate", "in (0, 1]", c.fire_rate)
    _check_min(c, p, "bound", 0, strict=True)
    _check_min(c, p, "state_bound", 0, strict=True)
    _check_min(c, p, "sense_batch", 1)
    for i, name in enumerate(c.senses):
        if name not in SENSE_NAMES:
            raise ConfigError(
                f"config key '{_key(p, 'senses')}[{i}]' must be one of "
                f"{', '.join(SENSE_NAMES)}, got {name!r}"
            )
    if len(set(c.senses)) != len(c.senses):
        raise ConfigError(f"config key '{_key(p, 'senses')}' repeats a sense: {c.senses}")
    if c.sense_norm and not c.senses:
        raise ConfigError(f"config key '{_key(p, 'sense_norm')}' needs senses to rescale")
    _check_min(c, p, "sense_floor", 0)
    _check_min(c, p, "descent", 0)
    if c.descent and "delta" not in c.senses:
        raise ConfigError(
            f"config key '{_key(p, 'descent')}' needs the delta sense in '{_key(p, 'senses')}'"
        )
    if c.descent_only and not c.descent:
        raise ConfigError(
            f"config key '{_key(p, 'descent_only')}' needs '{_key(p, 'descent')}' > 0"
        )
    _check_choice(c, p, "feedback", FEEDBACKS)
    if c.feedback != "learned" and not set(c.senses) & {"error", "delta"}:
        raise ConfigError(
            f"config key '{_key(p, 'feedback')}' is read by the error and delta senses only: "
            f"add one to '{_key(p, 'senses')}'"
        )
    if not 0.0 <= c.descent_momentum < 1.0:
        raise _bad(p, "descent_momentum", "in [0, 1)", c.descent_momentum)
    if c.descent_momentum and c.descent_norm is None:
        raise ConfigError(
            f"config key '{_key(p, 'descent_momentum')}' needs '{_key(p, 'descent_norm')}'"
        )
    if c.descent_age_fixed is not None and not c.descent_age:
        raise ConfigError(
            f"config key '{_key(p, 'descent_age_fixed')}' needs '{_key(p, 'descent_age')}'"
        )
    if c.descent_age and c.descent_norm is None:
        raise ConfigError(
            f"config key '{_key(p, 'descent_age')}' needs '{_key(p, 'descent_norm')}'"
        )
    if c.descent_norm is not None:
        if not 0.0 <= c.descent_norm < 1.0:
            raise _bad(p, "descent_norm", "in [0, 1)", c.descent_norm)
        if not c.descent:
            raise ConfigError(
                f"config key '{_key(p, 'descent_norm')}' needs '{_key(p, 'descent')}' > 0"
            )
        k = 4 if c.descent_momentum else 2
        if c.hidden_channels < k + 1:
            raise ConfigError(
                f"config key '{_key(p, 'descent_norm')}' needs '{_key(p, 'hidden_channels')}' "
                f">= {k + 1} (Adam's moments in the first {k} channels, the feedback in the last)"
            )
    if c.sense_floor and not c.sense_norm:
        raise ConfigError(f"config key '{_key(p, 'sense_floor')}' needs '{_key(p, 'sense_norm')}'")


def _validate_pool(c: PoolConfig, p: str) -> None:
    _check_min(c, p, "size", 0)
    _check_min(c, p, "fresh", 0)
    _check_min(c, p, "damage", 0)
    _check_range(c, p, "damage_fraction", 0.0, 1.0, "in [0, 1]")
    _check_choice(c, p, "renew", RENEW)
    if not 0 < c.fresh_rate <= 1:
        raise _bad(p, "fresh_rate", "in (0, 1]", c.fresh_rate)


def _validate_train(c: TrainConfig, p: str) -> None:
    for i, arch in enumerate(c.eval_architectures):
        if len(arch) < 2 or min(arch) < 1:
            raise ConfigError(
                f"config key '{_key(p, 'eval_architectures')}[{i}]' must list >= 2 layer sizes "
                f">= 1, got {arch}"
            )
    _check_min(c, p, "steps", 1)
    _check_min(c, p, "batch_size", 1)
    _check_min(c, p, "k_min", 1)
    if c.k_max < c.k_min:
        raise ConfigError(
            f"config key '{_key(p, 'k_max')}' must be >= '{_key(p, 'k_min')}' ({c.k_min}), "
            f"got {c.k_max}"
        )
    _check_min(c, p, "k_ramp", 0)
    _check_min(c, p, "lr", 0, strict=True)
    _check_min(c, p, "lr_final", 0)
    _check_choice(c, p, "grad", GRAD_MODES)
    _check_choice(c, p, "precision", PRECISIONS)
    _check_choice(c, p, "perception", PERCEPTIONS)
    _check_min(c, p, "grad_clip", 0, strict=True)
    _check_min(c, p, "loss_horizons", 1)
    _check_min(c, p, "weight_penalty", 0)
    _check_min(c, p, "feedback_align", 0)
    if not 0 <= c.held_out < 1:
        raise _bad(p, "held_out", "a fraction in [0, 1)", c.held_out)
    _check_min(c, p, "rollback_factor", 0, strict=True)
    if not _DEVICE_RE.match(c.device):
        raise _bad(p, "device", "auto, cpu, cuda or cuda:N", c.device)
    _check_min(c, p, "log_every", 1)
    _check_min(c, p, "checkpoint_every", 1)
    _check_min(c, p, "eval_nets", 1)
    if not c.wandb_project.strip() or any(ch in c.wandb_project for ch in _WANDB_BAD_CHARS):
        need = f"a non-empty name without {_WANDB_BAD_CHARS}"
        raise _bad(p, "wandb_project", need, c.wandb_project)
    _check_choice(c, p, "wandb_mode", WANDB_MODES)
    _check_choice(c, p, "feature_transform", FEATURE_TRANSFORMS)
    _check_min(c, p, "class_subsets", 2)


def _validate_root(c: Config, p: str) -> None:
    if not c.name:
        raise ConfigError(f"config key '{_key(p, 'name')}' must be a non-empty string")
    if c.train.feedback_align:
        _needs_learned_feedback(c, p, "train.feedback_align", "scores")
    if c.task.feedback_init:
        _needs_learned_feedback(c, p, "task.feedback_init", "starts")
    if c.train.feedback_align and c.task.layers:
        raise ConfigError(
            f"config key '{_key(p, 'train.feedback_align')}' is measured on MLP-like nets, not "
            f"on the layer nets of '{_key(p, 'task.layers')}'"
        )
    if c.rule.descent_norm is not None and c.task.init == "codes":
        raise ConfigError(
            f"config key '{_key(p, 'rule.descent_norm')}' keeps Adam's moments in the first "
            f"hidden channels, where '{_key(p, 'task.init')}' codes write identity codes: use "
            f"task.init random or fixed"
        )


def _needs_learned_feedback(c: Config, p: str, key: str, verb: str) -> None:
    """The error if ``key``, which ``verb`` the learned feedback of the error and delta senses,
    is set for a rule without one."""
    if c.rule.feedback != "learned" or not set(c.rule.senses) & {"error", "delta"}:
        raise ConfigError(
            f"config key '{_key(p, key)}' {verb} the learned feedback of the error and delta "
            f"senses: it needs one of them in '{_key(p, 'rule.senses')}' and "
            f"'{_key(p, 'rule.feedback')}' learned"
        )


_VALIDATORS: dict[type, Callable[[Any, str], None]] = {
    DataConfig: _validate_data,
    TaskConfig: _validate_task,
    RuleConfig: _validate_rule,
    PoolConfig: _validate_pool,
    TrainConfig: _validate_train,
    Config: _validate_root,
}


# --------------------------------------------------------------------------------------------
# Public conversion API
# --------------------------------------------------------------------------------------------


def config_from_dict(d: dict, cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Build a config dataclass from a nested mapping, strictly.

    Missing keys take their defaults; unknown keys, wrongly typed values and invalid values raise
    :class:`ConfigError` naming the dotted key.  ints are accepted for float fields (converted);
    bools are never accepted as numbers nor numbers as bools; a ``null`` section means defaults.
    ``cls`` may be any of the section dataclasses, in which case keys are not prefixed.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"cls must be a config dataclass, got {cls!r}")
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a mapping, got {_got(d)}")
    return _from_dict(d, cls, "")


def _to_builtin(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_builtin(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_to_builtin(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_builtin(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Any) -> dict:
    """A nested plain dict (str/int/float/bool/None/list/dict only), in field order.

    The result is a fresh copy, safe for ``yaml.safe_dump`` and ``torch.save`` + ``weights_only``
    loading, and ``config_from_dict(config_to_dict(cfg), type(cfg)) == cfg`` for a valid ``cfg``.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    return _to_builtin(cfg)


def validate_config(cfg: Any) -> None:
    """Raise :class:`ConfigError` if a config built in code is ill-typed or invalid."""
    config_from_dict(config_to_dict(cfg), type(cfg))


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``2e-3`` as a float and rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: let the base class complain
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) wants a dot in floats, so `lr: 2e-3` would be the *string* "2e-3".
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _yaml_error(err: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"{source}, line {mark.line + 1}" if mark is not None else source
    return ConfigError(" ".join(f"malformed YAML in {where}: {problem}".split()))


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def apply_overrides(cfg_dict: dict, overrides: Sequence[str], cls: type = Config) -> dict:
    """Return a copy of nested ``cfg_dict`` with ``KEY=VALUE`` overrides applied, in order.

    ``KEY`` is a dotted key of ``cls`` (``train.steps``, ``rule.widths``); ``VALUE`` is parsed as
    YAML (``2000``, ``[64,64]``, ``[[4,16,3],[4,8,8,3]]``, ``null``, ``2e-3``), except that for
    string fields a value that YAML would read as a number/bool is kept verbatim (``name=001``).
    Missing sections are created.  Types and values are checked later by
    :func:`config_from_dict`; unknown keys raise :class:`ConfigError` here.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'KEY=VALUE' strings, not a string")
    out = _to_builtin(cfg_dict)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"malformed override {item!r} (expected KEY=VALUE, e.g. train.steps=2000)"
            )
        try:
            value = _yaml_load(raw)
        except yaml.YAMLError as err:
            raise _yaml_error(err, f"override {item!r}") from None
        parts = key.split(".")
        node, schema = out, cls
        for depth, part in enumerate(parts):
            hints = typing.get_type_hints(schema)
            names = [f.name for f in dataclasses.fields(schema)]
            here = ".".join(parts[: depth + 1])
            if part not in names:
                raise _unknown_key(parts, cls)
            tp = hints[part]
            if depth == len(parts) - 1:
                inner, _ = _split_optional(tp)
                if inner is str and value is not None and not isinstance(value, str):
                    value = raw.strip()
                node[part] = value
                break
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"config key '{here}' is not a section, cannot set '{key}'")
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"config key '{here}' must be a mapping, got {_got(child)}")
            node, schema = child, tp
    return out


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file, apply ``KEY=VALUE`` overrides and build a checked :class:`Config`.

    An empty file (or one with only comments) gives the defaults.  Raises :class:`ConfigError`
    for a missing/unreadable file, malformed YAML (with file and line), a top level that is not a
    mapping, and everything :func:`apply_overrides` and :func:`config_from_dict` reject.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as err:
        raise _yaml_error(err, str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {_got(data)}")
    return config_from_dict(apply_overrides(data, overrides))


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing mappings in block style and lists (of numbers) in flow style."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``cfg`` (a config dataclass) as YAML, atomically, creating parent directories."""
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
