"""What the processes of one meta-training run share, as a value handed to the trainer.

A single process uses :class:`Comm`, whose collectives do nothing. A data-parallel run
(:mod:`gnca.distributed`) hands every rank a :class:`~gnca.distributed.ProcessGroupComm`: its
:attr:`shard` says which nets of every batch and pool this rank holds, and its collectives
average the meta-step's statistics and gradients, agree on a stop and gather the pools for a
checkpoint. The trainer calls the same methods either way.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from gnca.pool import Shard


class Comm:
    """One process: this rank holds the whole batch and every collective is the identity."""

    rank: int = 0
    world: int = 1
    is_main: bool = True

    @property
    def shard(self) -> Shard:
        """This process's part of every batch (:class:`~gnca.pool.Shard`)."""
        return Shard()

    def step_stats(self, loss: torch.Tensor, accs: list[torch.Tensor]) -> tuple[float, float]:
        """The meta-step's loss ``()`` and mean accuracy over ``accs`` (every rank's)."""
        return float(loss), float(torch.cat(accs).mean())

    def average_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the ranks (in place)."""

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        return flag

    def gather_to_main(self, t: torch.Tensor) -> torch.Tensor | None:
        """Every rank's ``t`` concatenated along dim 0 on the main rank; ``None`` elsewhere."""
        return t

    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite ``tensors`` on every rank with the main rank's (in place)."""

    def check_same(self, value: object, what: str) -> None:
        """Raise unless every rank holds the same ``value`` (``what`` names it)."""
