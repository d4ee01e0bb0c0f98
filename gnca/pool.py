"""The sample pool (Growing NCA): task-net states carried across meta-steps.

Each architecture has a pool of ``P`` states ``(w, h)``. A meta-step samples a batch from it,
replaces the worst samples by fresh seeds, optionally damages the best ones, grows the batch with
the rule and writes the final states back. Nets therefore learn to *stay* solved for many more
steps than one unroll, which is what makes growth stable (design notes, section 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

#: which samples of a batch start again from fresh seeds (``pool.renew``)
RENEW = ("worst", "oldest")


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class Shard:
    """Which part of a global batch this process holds (data-parallel training).

    Attributes:
        rank: this process's index; world: number of processes, each holding an equal shard
            of every pool and ``n`` of the ``world * n`` nets of a batch (rank-major).
        gather: ``(n,) -> (world * n,)`` concatenation over the ranks (an all-gather).
    """

    rank: int = 0
    world: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] = field(default=_same, compare=False)


@dataclass
class PoolBatch:
    """A meta-step's starting states taken from a pool.

    Attributes:
        idx: ``(n,)`` the pool indices they came from (worst first, for :meth:`SamplePool.commit`).
        w: ``(n, E)`` weights; h: ``(n, E, C)`` hidden states.
        renewed: ``(n,)`` bool, the samples that start again from a fresh seed.
        labels: ``(n, classes)`` the samples' label permutations (pools that keep them), with
            the renewed rows still holding their old ones: the caller draws new ones.
        age: ``(n,)`` rule steps each sample has grown since its seed (0 for renewed ones).
        tags: the samples' rows of the pool's other per-sample tags (:attr:`SamplePool.tags`),
            renewed rows too.
    """

    idx: torch.Tensor
    w: torch.Tensor
    h: torch.Tensor
    renewed: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    age: torch.Tensor | None = None
    tags: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class SamplePool:
    """States of ``P`` task nets of one architecture with ``E`` weights.

    Attributes:
        w: ``(P, E)`` weights.
        h: ``(P, E, C)`` hidden states.
        loss: ``(P,)`` last loss of each sample (``inf`` for fresh seeds).
        labels: ``(P, classes)`` the label permutation each sample is learning (a task
            augmentation, ``train.permute_labels``), kept with it across meta-steps; or ``None``.
        age: ``(P,)`` int64, rule steps each sample has grown since its seed (how long pooled
            samples live: the oldest set the horizon the rule is meta-trained at).
        tags: more per-sample tensors ``(P, ...)`` kept with the samples like ``labels`` (on
            the CPU; the other augmentations, :mod:`gnca.augment`), by name.
    """

    w: torch.Tensor
    h: torch.Tensor
    loss: torch.Tensor
    labels: torch.Tensor | None = None
    age: torch.Tensor = None  # type: ignore[assignment]  # zeros when not given
    tags: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.age is None:
            self.age = torch.zeros(self.w.shape[0], dtype=torch.int64)

    @classmethod
    def filled(cls, w0: torch.Tensor, h0: torch.Tensor) -> SamplePool:
        """A pool of the given seeds ``w0 (P, E)``, ``h0 (P, E, C)``."""
        return cls(
            w0.detach().clone(), h0.detach().clone(), torch.full((w0.shape[0],), float("inf"))
        )

    @property
    def size(self) -> int:
        return int(self.w.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n,)`` distinct pool indices, sorted by decreasing last loss (worst first)."""
        if n > self.size:
            raise ValueError(f"cannot sample {n} states from a pool of {self.size}")
        idx = torch.randperm(self.size, generator=generator)[:n]
        order = torch.argsort(self.loss[idx], descending=True, stable=True)
        return idx[order]

    def batch(
        self,
        n: int,
        generator: torch.Generator,
        seeds: tuple[torch.Tensor, torch.Tensor],
        *,
        fresh: int = 0,
        damage: int = 0,
        damage_mask: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shard: Shard | None = None,
        renew: str = "worst",
    ) -> PoolBatch:
        """The starting states of a meta-step: sample, renew the worst, damage the best.

        Every rank of a data-parallel run calls this with the same ``generator`` state; the
        global batch is the ranks' ``n`` samples each, ranked together by their last loss.

        Args:
            n: samples from this pool (this rank's share of the batch).
            generator: draws the sample (every rank draws every rank's, to stay in step).
            seeds: fresh ``w (n, E)``, ``h (n, E, C)`` for this rank's positions.
            fresh: the ``fresh`` worst samples of the global batch start again from ``seeds``.
            damage: the ``damage`` best samples (not renewed) are damaged ...
            damage_mask: ... by ``damage_mask(which) -> (world * n * E,)``, zero where a weight
                is zeroed, given ``which`` ``(world * n,)`` bool (e.g. :func:`gnca.zero_out`
                of ones).
            shard: this process's part (default: the whole batch).
            renew: which ``fresh`` samples start again: the ``"worst"`` (highest last loss,
                Growing NCA's choice) or the ``"oldest"`` (most rule steps grown; ties by
                loss), which lets nets that drift stay in the pool and be trained on.
        """
        if renew not in RENEW:
            raise ValueError(f"unknown renew {renew!r}; choose one of {', '.join(RENEW)}")
        shard = shard or Shard()
        idx = None
        for q in range(shard.world):
            if q == shard.rank:
                idx = self.sample(n, generator)
            else:  # another rank's draw: advance the generator exactly as it does
                torch.randperm(self.size, generator=generator)
        assert idx is not None
        w = self.w[idx.to(self.w.device)]  # (n, E)
        h = self.h[idx.to(self.h.device)]  # (n, E, C)
        big = n * shard.world
        order = torch.argsort(shard.gather(self.loss[idx]), descending=True, stable=True)  # (B,)
        if renew == "oldest":  # stable: among equal ages, the order by loss decides
            ages = shard.gather(self.age[idx].to(self.loss.dtype))
            by = order[torch.argsort(ages[order], descending=True, stable=True)]
        else:
            by = order
        renew_mask = torch.zeros(big, dtype=torch.bool)
        renew_mask[by[:fresh]] = True
        lo, hi = shard.rank * n, (shard.rank + 1) * n
        mine = renew_mask[lo:hi].to(w.device)
        w = torch.where(mine[:, None], seeds[0], w)
        h = torch.where(mine[:, None, None], seeds[1], h)
        if damage:
            if damage_mask is None:
                raise ValueError("damage > 0 needs a damage_mask")
            which = torch.zeros(big, dtype=torch.bool)
            which[order[big - damage :]] = True  # the lowest losses
            which &= ~renew_mask
            e = w.shape[1]
            kept = damage_mask(which)[lo * e : hi * e].view(n, e)
            w = torch.where(kept == 0, torch.zeros_like(w), w)
        labels = self.labels[idx] if self.labels is not None else None
        age = torch.where(mine.cpu(), torch.zeros_like(self.age[idx]), self.age[idx])
        tags = {k: v[idx.cpu()] for k, v in self.tags.items()}
        return PoolBatch(idx, w, h, mine, labels, age, tags)

    def commit(
        self,
        idx: torch.Tensor,
        w: torch.Tensor,
        h: torch.Tensor,
        loss: torch.Tensor,
        labels: torch.Tensor | None = None,
        age: torch.Tensor | None = None,
        tags: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write final states ``w (n, E)``, ``h (n, E, C)``, ``loss (n,)`` (and the samples'
        label permutations ``(n, classes)``, ages ``(n,)`` and ``tags``) back at ``idx``."""
        # in place: the pool is outside every autograd graph (batches are gathered copies,
        # commits detached), and an out-of-place copy of a full MNIST pool's hidden states
        # (P x E x C floats, ~100 MB per architecture) cost a quarter of a meta-step
        self.w.index_copy_(0, idx.to(self.w.device), w.detach().to(self.w.device, self.w.dtype))
        self.h.index_copy_(0, idx.to(self.h.device), h.detach().to(self.h.device, self.h.dtype))
        self.loss = self.loss.index_copy(0, idx, loss.detach().cpu().to(self.loss.dtype))
        if self.labels is not None and labels is not None:
            self.labels = self.labels.index_copy(0, idx.cpu(), labels.detach().cpu())
        if age is not None:
            self.age = self.age.index_copy(0, idx.cpu(), age.cpu().to(torch.int64))
        for k, v in (tags or {}).items():
            if k not in self.tags:
                raise KeyError(f"the pool keeps no tag {k!r}")
            self.tags[k] = self.tags[k].index_copy(0, idx.cpu(), v.detach().cpu())

    def part(self, rank: int, world: int) -> SamplePool:
        """Rank ``rank``'s contiguous block of ``size // world`` samples (copies); the pool
        itself when ``world == 1``."""
        if world == 1:
            return self
        n = self.size // world
        lo, hi = rank * n, (rank + 1) * n
        labels = self.labels[lo:hi].clone() if self.labels is not None else None
        tags = {k: v[lo:hi].clone() for k, v in self.tags.items()}
        w, h = self.w[lo:hi].clone(), self.h[lo:hi].clone()
        return SamplePool(w, h, self.loss[lo:hi].clone(), labels, self.age[lo:hi].clone(), tags)

    def state_dict(self) -> dict[str, torch.Tensor]:
        # copies: the pool's own tensors change in place at the next commit
        d = {"w": self.w.detach().cpu().clone(), "h": self.h.detach().cpu().clone(),
             "loss": self.loss.cpu().clone(), "age": self.age.cpu().clone()}  # fmt: skip
        if self.labels is not None:
            d["labels"] = self.labels.cpu().clone()
        d.update({f"tag.{k}": v.cpu().clone() for k, v in self.tags.items()})
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor], device: torch.device) -> SamplePool:
        labels, age = d.get("labels"), d.get("age")  # checkpoints before ages: all zero
        tags = {k[4:]: v.cpu() for k, v in d.items() if k.startswith("tag.")}
        return cls(d["w"].to(device), d["h"].to(device), d["loss"].cpu(),
                   labels.cpu() if labels is not None else None,
                   age.cpu() if age is not None else None, tags)  # fmt: skip
