"""The task: what a grown net is for, and how it is evaluated.

A :class:`Task` bundles a :class:`~gnca.data.Dataset` with the conventions of the task nets'
forward pass (hidden activation, mean-field ``fan_in_ref``, biases) and the training batch size.
Everything that runs a task net (meta-training, growing, the experiments, export) asks the task
for logits, loss or accuracy, so these conventions live in one place.

    task = Task(load_dataset("iris"), activation="tanh")
    arch = task.mlp([4, 16, 3])                     # checked against the data
    acc = task.accuracy(graph, w, *task.split("test"))   # (G,)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from gnca.architecture import Architecture
from gnca.data import Dataset, stratified_split
from gnca.forward import TASK_ACTIVATIONS, effective_weights, task_forward
from gnca.graph import num_graphs

if TYPE_CHECKING:
    from gnca.export import GrownNets
    from gnca.grow import GrowResult

SPLITS = ("train", "test")

#: ``metric(graph, w) -> (G,)``: one number per net of a batched weight graph.
Metric = Callable[[Data, torch.Tensor], torch.Tensor]


def logits_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(G,)`` accuracy of logits ``(G, B, n_out)`` against labels ``y (B,)`` shared by all
    nets, or ``(G, B)`` one set per net."""
    yy = y.unsqueeze(0) if y.dim() == 1 else y
    return (logits.argmax(-1) == yy).to(torch.float32).mean(1)


def logits_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(G,)`` mean cross-entropy of logits ``(G, B, n_out)`` against ``y (B,)`` or ``(G, B)``."""
    g, b, c = logits.shape
    yy = y.repeat(g) if y.dim() == 1 else y.reshape(-1)  # (G * B,)
    per = F.cross_entropy(logits.reshape(g * b, c), yy, reduction="none")  # (G * B,)
    return per.view(g, b).mean(1)


@dataclass
class Task:
    """A classification task for grown nets.

    Args:
        data: the standardised train/test split.
        activation: hidden activation of the task nets (see :data:`gnca.forward.TASK_ACTIVATIONS`).
        fan_in_ref: mean-field sums: non-bias weights count as ``w * fan_in_ref / fan_in``
            (:func:`gnca.forward.effective_weights`); ``None`` for plain sums.
        bias: whether MLPs built by :meth:`mlp` have biases.
        batch_size: training examples per meta-step (:meth:`train_batch`); ``None``: all.
    """

    data: Dataset
    activation: str = "tanh"
    fan_in_ref: float | None = None
    bias: bool = True
    batch_size: int | None = None
    _on: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.activation not in TASK_ACTIVATIONS:
            raise ValueError(
                f"unknown task activation {self.activation!r}; choose one of "
                f"{', '.join(TASK_ACTIVATIONS)}"
            )
        if self.fan_in_ref is not None and not self.fan_in_ref > 0:
            raise ValueError(f"fan_in_ref must be > 0, got {self.fan_in_ref}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    # ------------------------------------------------------------------ the data
    @property
    def name(self) -> str:
        return self.data.name

    @property
    def n_features(self) -> int:
        return self.data.n_features

    @property
    def n_classes(self) -> int:
        return self.data.n_classes

    def split(
        self, name: str = "test", device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``X (B, F)``, ``y (B,)`` of the ``train`` or ``test`` split on ``device`` (cached)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use 'train' or 'test'")
        key = (name, str(torch.device(device)))
        if key not in self._on:
            X = self.data.X_train if name == "train" else self.data.X_test
            y = self.data.y_train if name == "train" else self.data.y_test
            self._on[key] = (X.to(device), y.to(device))
        return self._on[key]

    def train_batch(
        self, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One meta-step's training examples: ``batch_size`` drawn without replacement with
        ``generator`` (a CPU generator), or the whole training split."""
        X, y = self.split("train", device)
        n = X.shape[0]
        if self.batch_size is None or self.batch_size >= n:
            return X, y
        idx = torch.randperm(n, generator=generator)[: self.batch_size].to(X.device)
        return X[idx], y[idx]

    def held_out(self, fraction: float, seed: int) -> tuple[Task, Task]:
        """The task twice, its training split cut in two by a seeded stratified split: the
        first keeps ``1 - fraction`` of the training examples, the second the other
        ``fraction`` as its training split (both keep the test split and every convention).
        Meta-training reads the first through the senses and scores the meta-loss on the
        second (``train.held_out``)."""
        if not 0 < fraction < 1:
            raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
        y = self.data.y_train
        keep, held = stratified_split(
            y.numpy(), fraction, seed, f"{self.name} training split", setting="train.held_out"
        )
        keep, held = torch.from_numpy(keep), torch.from_numpy(held)
        X = self.data.X_train
        parts = []
        for idx in (keep, held):
            data = replace(self.data, X_train=X[idx], y_train=y[idx])
            parts.append(replace(self, data=data))
        return parts[0], parts[1]

    # ------------------------------------------------------------------ architectures
    def check(self, arch: Architecture) -> Architecture:
        """``arch`` itself if its inputs and outputs fit the data, else a ValueError."""
        if arch.num_inputs != self.n_features or arch.num_outputs != self.n_classes:
            raise ValueError(
                f"architecture {arch.describe()} has {arch.num_inputs} inputs and "
                f"{arch.num_outputs} outputs; {self.name} needs {self.n_features} and "
                f"{self.n_classes}"
            )
        return arch

    def mlp(self, sizes: Sequence[int]) -> Architecture:
        """The MLP with layer ``sizes`` (biases as the task says), checked against the data."""
        sizes = list(sizes)
        if sizes[0] != self.n_features or sizes[-1] != self.n_classes:
            raise ValueError(
                f"MLP {sizes} does not fit {self.name}: it needs {self.n_features} inputs and "
                f"{self.n_classes} outputs"
            )
        return Architecture.mlp(sizes, bias=self.bias, input_shape=self.data.image_shape)

    # ------------------------------------------------------------------ evaluation
    def logits(self, graph: Data, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``(G, B, n_out)`` logits of every net in ``graph`` (``w (E,)``) on ``X (B, F)``."""
        return task_forward(graph, w, X, self.activation, fan_in_ref=self.fan_in_ref)

    def loss(self, graph: Data, w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(G,)`` mean cross-entropy of every net (differentiable)."""
        return logits_cross_entropy(self.logits(graph, w, X), y)

    def accuracy(
        self, graph: Data, w: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """``(G,)`` accuracy of every net on ``X (B, F)``, ``y (B,)``."""
        with torch.no_grad():
            return logits_accuracy(self.logits(graph, w, X), y)

    def batched_accuracy(
        self, graph: Data, w: torch.Tensor, X: torch.Tensor, y: torch.Tensor, batch: int = 2048
    ) -> torch.Tensor:
        """``(G,)`` float64 accuracy on ``X (B, F)``, evaluated ``batch`` examples at a time
        (for large test sets: the logits of ``G`` nets on all of ``X`` need not fit)."""
        correct = None
        with torch.no_grad():
            for i in range(0, X.shape[0], batch):
                logits = self.logits(graph, w, X[i : i + batch])  # (G, b, n_out)
                hits = (logits.argmax(-1) == y[i : i + batch].unsqueeze(0)).sum(1)
                correct = hits if correct is None else correct + hits
        assert correct is not None
        return correct.to(torch.float64) / X.shape[0]

    def metric(self, split: str = "test", device: torch.device | str = "cpu") -> Metric:
        """``metric(graph, w) -> (G,)`` accuracy on ``split``, for :func:`gnca.grow.grow`."""
        X, y = self.split(split, device)
        return lambda graph, w: self.accuracy(graph, w, X, y)

    # ------------------------------------------------------------------ export
    def export(self, result: GrowResult) -> GrownNets:
        """The grown nets of ``result`` as a standalone :class:`gnca.export.GrownNets` module;
        with ``fan_in_ref`` the weights are exported as the forward pass uses them."""
        from gnca.export import GrownNets

        a = result.arch
        g = num_graphs(result.graph)
        w = effective_weights(result.graph, result.w.detach(), self.fan_in_ref)
        return GrownNets(
            w.cpu().view(g, a.num_weights),
            torch.tensor(a.edges[:, 0]),
            torch.tensor(a.edges[:, 1]),
            torch.tensor(a.levels),
            torch.tensor(a.kinds),
            torch.tensor(a.inputs),
            torch.tensor(a.outputs),
            self.activation,
            list(a.mlp_sizes) if a.mlp_sizes else None,
        )
