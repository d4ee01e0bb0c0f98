"""Adam on the task nets: the backprop baseline the experiments compare grown nets with.

Adam trains a batch of task nets on the same batched weight graph that growing uses, with the
task's forward conventions (:meth:`gnca.task.Task.loss`: hidden activation, mean-field
``fan_in_ref``), from initial weights drawn by the rule's :class:`~gnca.state.InitSpec` (the
starting distribution of growing; with ``task.init: codes`` the i.i.d. weights, the codes live
in the hidden state and Adam does not see them). Its budget is stated in *examples seen per
net*: minibatches drawn with replacement from the training data, the same batches for every net.

* :func:`adam`: a fixed number of steps of one batch size at one learning rate;
* :func:`tune_adam`: a learning rate picked from a short list on a validation part of the
  training split (trained on the rest);
* :func:`tuned_adam`: the learning experiment's form (``steps`` x ``batch``, :data:`ADAM_LRS`);
* :class:`AdamSettings` and :func:`adam_cell`: one architecture of the generalisation grid,
  with its result cached in a JSON file keyed by everything it depends on
  (:func:`cached_adam_cell`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gnca.experiments.common import ExperimentError, mean_std
from gnca.graph import WeightGraph
from gnca.task import Task

#: learning rates of the learning and transfer experiments' Adam (:func:`tuned_adam`)
ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: default learning rates of the generalisation grid's Adam (:class:`AdamSettings`)
GRID_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
#: bumped when what a cached grid cell holds (or how it is computed) changes
CACHE_VERSION = 1


def adam_batches(examples: int, batch: int) -> list[int]:
    """Batch sizes of ``examples`` examples seen in batches of ``batch``: full batches and one
    smaller last batch for the remainder (one batch of ``examples`` when it is below ``batch``)."""
    if examples < 1 or batch < 1:
        raise ValueError(f"examples and batch must be >= 1, got {examples} and {batch}")
    full, rest = divmod(examples, batch)
    return [batch] * full + ([rest] if rest else [])


def train_adam(
    task: Task,
    graph,
    w0: torch.Tensor,
    trainable: torch.Tensor,
    batches: Sequence[int],
    lr: float,
    seed: int,
    X: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """``(G * E,)`` weights after one Adam step per entry of ``batches`` (its batch size; the
    examples drawn with replacement from ``X, y`` with a CPU generator seeded ``seed``, the same
    for every net), updating only the ``trainable (E_total,)`` weights (the others stay at
    ``w0``). The loss is the sum over nets of each net's mean cross-entropy, so every net gets
    its own gradient."""
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([w], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    keep = trainable.to(w.dtype)
    for b in batches:
        idx = torch.randint(0, X.shape[0], (b,), generator=gen).to(X.device)
        loss = task.loss(graph, w * keep + w0 * (1 - keep), X[idx], y[idx]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (w * keep + w0 * (1 - keep)).detach()


def adam(
    task: Task,
    graph,
    w0: torch.Tensor,
    trainable: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    X: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """``(G * E,)`` weights after ``steps`` Adam steps of ``batch`` examples of ``X, y`` (the same
    batches for every net), updating only the ``trainable (E_total,)`` weights."""
    return train_adam(task, graph, w0, trainable, [batch] * steps, lr, seed, X, y)


@dataclass
class Tuned:
    """What :func:`tune_adam` found: the rate, its weights, every rate's validation accuracy
    and every rate's CPU seconds (``time.process_time``) of training, all nets together."""

    lr: float
    w: torch.Tensor
    validation: dict[float, float]
    cpu_seconds: dict[float, float] = field(default_factory=dict)


def tune_adam(
    task: Task,
    graph,
    w0: torch.Tensor,
    trainable: torch.Tensor,
    batches: Sequence[int],
    seed: int,
    lrs: Sequence[float],
    X: torch.Tensor,
    y: torch.Tensor,
    val_fraction: float = 0.2,
) -> Tuned:
    """Adam (:func:`train_adam`) with each rate of ``lrs`` on the first ``1 - val_fraction`` of
    ``X, y``; the rate with the best mean validation accuracy over the nets on the rest wins (the
    first of equals). Returns it with the weights it reached (trained on the first part only)."""
    if not lrs:
        raise ValueError("tune_adam needs at least one learning rate")
    cut = int((1 - val_fraction) * X.shape[0])
    if not 0 < cut < X.shape[0]:
        raise ValueError(
            f"a validation fraction of {val_fraction} leaves no training or no validation "
            f"examples of {X.shape[0]}"
        )
    best: Tuned | None = None
    best_val = -1.0
    validation: dict[float, float] = {}
    cpu: dict[float, float] = {}
    for lr in lrs:
        t0 = time.process_time()
        w = train_adam(task, graph, w0, trainable, batches, lr, seed, X[:cut], y[:cut])
        cpu[float(lr)] = time.process_time() - t0
        val = float(task.batched_accuracy(graph, w, X[cut:], y[cut:]).mean())
        validation[float(lr)] = val
        if val > best_val:
            best_val, best = val, Tuned(float(lr), w, validation, cpu)
    assert best is not None
    return best


def tuned_adam(
    task: Task,
    graph,
    w0: torch.Tensor,
    trainable: torch.Tensor,
    steps: int,
    batch: int,
    seed: int,
    lrs: Sequence[float] = ADAM_LRS,
) -> tuple[float, torch.Tensor]:
    """Adam with the learning rate of ``lrs`` (default :data:`ADAM_LRS`) that is best on the
    last fifth of the training split (trained on the rest); returns the rate and the final
    weights trained on the rest."""
    X, y = task.split("train", w0.device)
    t = tune_adam(task, graph, w0, trainable, [batch] * steps, seed, lrs, X, y, 0.2)
    return t.lr, t.w


# ---------------------------------------------------------------------- the generalisation grid
@dataclass(frozen=True)
class AdamSettings:
    """Adam per architecture of the generalisation grid (``gnca experiment generalization
    --adam``).

    Attributes:
        examples: training examples seen per net (the budget; split into batches of ``batch``,
            a smaller last batch for the remainder).
        batch: examples per Adam step.
        lrs: learning rates tried; the best on the validation part of the training split wins.
        nets: nets trained per architecture (from independent initial weights).
        val_fraction: the last part of the training split used to pick the rate.
    """

    examples: int = 25_600
    batch: int = 256
    lrs: tuple[float, ...] = GRID_LRS
    nets: int = 10
    val_fraction: float = 0.2

    def problems(self) -> list[tuple[bool, str]]:
        """``(invalid, message)`` checks of the settings (for ``ExperimentRun``)."""
        return [
            (
                self.examples < 1 or self.batch < 1 or self.nets < 1,
                "--adam-examples, --adam-batch and --adam-nets must be >= 1",
            ),
            (
                not self.lrs or min(self.lrs) <= 0,
                "--adam-lrs must list at least one learning rate, all > 0",
            ),
            (not 0 < self.val_fraction < 1, "the Adam validation fraction must be in (0, 1)"),
        ]

    def describe(self) -> dict[str, Any]:
        """The settings as ``summary.json`` records them, with the steps they make."""
        return {
            **asdict(self),
            "lrs": list(self.lrs),
            "steps": len(adam_batches(self.examples, self.batch)),
            "trainable": "all weights",
        }


def lr_list(text: str) -> str:
    """``--adam-lrs``'s ``type=``: ``text`` when it lists numbers > 0 (checked when the command
    line is parsed: ``gnca: error: --adam-lrs must ...``)."""
    try:
        parse_lrs(text)
    except ExperimentError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated learning rates > 0, got {text!r}"
        ) from None
    return text


def parse_lrs(text: str) -> tuple[float, ...]:
    """``"1e-3,3e-3"`` -> ``(0.001, 0.003)``; an :class:`ExperimentError` when malformed."""
    try:
        lrs = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise ExperimentError(f"--adam-lrs must be comma-separated numbers, got {text!r}") from None
    if not lrs or not all(math.isfinite(x) and x > 0 for x in lrs):
        raise ExperimentError(f"--adam-lrs must list learning rates > 0, got {text!r}")
    return lrs


def adam_cell(
    task: Task,
    init,
    hidden_channels: int,
    sizes: Sequence[int],
    settings: AdamSettings,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Adam on ``settings.nets`` nets of the MLP ``sizes``: initial weights from ``init``
    (:meth:`~gnca.state.InitSpec.state` with a generator on ``device`` seeded ``seed``), the rate
    tuned on the training split (:func:`tune_adam`), test accuracy of the picked rate's nets.

    Returns the cell's result: ``mean``, ``std``, ``min``, ``max`` test accuracy over the nets,
    ``lr``, ``examples`` (seen per net), ``steps``, ``nets``, ``validation`` (rate -> mean
    validation accuracy) and ``seconds``.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    arch = task.mlp(sizes)
    graph = WeightGraph.replicate(arch, settings.nets, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    w0, _ = init.state(graph, hidden_channels, gen)
    trainable = torch.ones(w0.shape[0], dtype=torch.bool, device=device)
    batches = adam_batches(settings.examples, settings.batch)
    X, y = task.split("train", device)
    tuned = tune_adam(task, graph, w0, trainable, batches, seed, settings.lrs, X, y,
                      settings.val_fraction)  # fmt: skip
    X_te, y_te = task.split("test", device)
    acc = task.batched_accuracy(graph, tuned.w, X_te, y_te).cpu()
    m, s = mean_std(acc)
    return {
        "mean": m,
        "std": s,
        "min": float(acc.min()),
        "max": float(acc.max()),
        "lr": tuned.lr,
        "examples": sum(batches),
        "steps": len(batches),
        "nets": settings.nets,
        "validation": {f"{lr:g}": v for lr, v in tuned.validation.items()},
        "seconds": time.perf_counter() - t0,
    }


def cached_adam_cell(
    path: Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The result stored in ``path`` when its key equals ``key``, else ``compute()`` written
    there with the key. Returns the result and whether it came from the file."""
    key = json.loads(json.dumps({"version": CACHE_VERSION, **key}))
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("key") == key and "result" in stored:
            return stored["result"], True
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=2) + "\n")
    tmp.replace(path)
    return result, False
