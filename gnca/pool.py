"""The sample pool (Growing NCA): task-net states carried across meta-steps.

Each architecture has a pool of ``P`` states ``(w, h)``. A meta-step samples a batch from it,
replaces the worst samples by fresh seeds, optionally damages the best ones, grows the batch with
the rule and writes the final states back. Nets therefore learn to *stay* solved for many more
steps than one unroll, which is what makes growth stable (design notes, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplePool:
    """States of ``P`` task nets of one architecture with ``E`` weights.

    Attributes:
        w: ``(P, E)`` weights.
        h: ``(P, E, C)`` hidden states.
        loss: ``(P,)`` last loss of each sample (``inf`` for fresh seeds).
    """

    w: torch.Tensor
    h: torch.Tensor
    loss: torch.Tensor

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

    def commit(
        self, idx: torch.Tensor, w: torch.Tensor, h: torch.Tensor, loss: torch.Tensor
    ) -> None:
        """Write final states ``w (n, E)``, ``h (n, E, C)`` and ``loss (n,)`` back at ``idx``."""
        self.w = self.w.index_copy(0, idx.to(self.w.device), w.detach().to(self.w.device))
        self.h = self.h.index_copy(0, idx.to(self.h.device), h.detach().to(self.h.device))
        self.loss = self.loss.index_copy(0, idx, loss.detach().cpu().to(self.loss.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"w": self.w.cpu(), "h": self.h.cpu(), "loss": self.loss.cpu()}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor], device: torch.device) -> SamplePool:
        return cls(d["w"].to(device), d["h"].to(device), d["loss"].cpu())
