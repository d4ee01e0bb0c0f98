"""Senses of a batch of identical MLPs, kept by what they vary with.

Of the six sense columns of :mod:`gnca.senses`, only ``hebb`` and ``delta`` differ from weight to
weight. The others are one value per neuron broadcast to weights: ``act`` is the tail's and the
head's mean activation, ``error`` the head's mean error message, ``loss`` one value per net. Written
out per weight, as an ``(E, S)`` matrix, they cost a full column each to write, to read and to
multiply into the rule's first layer. :class:`FactoredSenses` keeps the per-weight columns as
``(P, G, E / G)`` rows and the others per tail, per head or per net, so that the growing route
of :mod:`gnca.rule_adam` adds them to its per-neuron rows of the first layer (where the
neighbour terms already go) instead of to every weight. :meth:`FactoredSenses.dense` writes the
``(E, S)`` matrix out, bit for bit the one :func:`gnca.senses.dense_senses` returns when
growing, for every other route.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: where a sense column varies: per ``weight``, per ``tail`` neuron, per ``head`` neuron or per
#: ``net`` (the columns of each sense, in order)
KINDS: dict[str, tuple[str, ...]] = {
    "act": ("tail", "head"),
    "hebb": ("weight",),
    "error": ("head",),
    "delta": ("weight",),
    "loss": ("net",),
}


@dataclass(frozen=True)
class LayerFactors:
    """One layer's sense values that are not per weight, for ``G`` nets.

    Attributes:
        tail: ``(G, a + 1, Qt)`` the tail columns of each tail neuron (row ``a``: the bias
            neuron, the tail of the layer's biases).
        head: ``(G, b, Qh)`` the head columns of each head neuron.
    """

    tail: torch.Tensor
    head: torch.Tensor


@dataclass(frozen=True)
class FactoredSenses:
    """The senses ``(G * E, S)`` of ``G`` identical MLPs with biases, factored (module
    docstring).

    Attributes:
        kinds: each column's kind (:data:`KINDS`), ``S`` entries.
        weight: ``(P, G, E / G)`` the per-weight columns, in column order.
        layers: per layer, its tail and head columns (:class:`LayerFactors`).
        net: ``(G, Qn)`` the per-net columns.
        sizes: the MLP's layer sizes.
    """

    kinds: tuple[str, ...]
    weight: torch.Tensor
    layers: tuple[LayerFactors, ...]
    net: torch.Tensor
    sizes: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """``(G * E, S)``, the shape of :meth:`dense`."""
        return (self.weight.shape[1] * self.weight.shape[2], len(self.kinds))

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def columns(self, kind: str) -> list[int]:
        """The indices of the columns of ``kind``."""
        return [j for j, k in enumerate(self.kinds) if k == kind]

    def column(self, j: int) -> torch.Tensor:
        """``(G * E,)`` per-weight column ``j`` (a view)."""
        if self.kinds[j] != "weight":
            raise ValueError(f"column {j} is a {self.kinds[j]} column, not a per-weight one")
        return self.weight[self.columns("weight").index(j)].reshape(-1)

    def to(self, dtype: torch.dtype) -> FactoredSenses:
        """These senses in ``dtype`` (themselves when they already are)."""
        if dtype == self.dtype:
            return self
        layers = tuple(LayerFactors(f.tail.to(dtype), f.head.to(dtype)) for f in self.layers)
        return FactoredSenses(self.kinds, self.weight.to(dtype), layers, self.net.to(dtype),
                              self.sizes)  # fmt: skip

    def dense(self) -> torch.Tensor:
        """``(G * E, S)``: every column written out per weight, channel-major (the transpose of
        a contiguous ``(S, G * E)``); a layer's ``(G, a + 1, b)`` block is its weights, then
        its biases."""
        p, g, e = self.weight.shape
        out = self.weight.new_empty(len(self.kinds), g, e)
        slot = {k: 0 for k in ("weight", "tail", "head", "net")}
        for j, kind in enumerate(self.kinds):
            i, slot[kind] = slot[kind], slot[kind] + 1
            if kind == "weight":
                out[j] = self.weight[i]
                continue
            off = 0
            for f in self.layers:
                a1, b = f.tail.shape[1], f.head.shape[1]
                block = out[j, :, off : off + a1 * b].view(g, a1, b)
                if kind == "tail":
                    block.copy_(f.tail[:, :, i, None].expand(g, a1, b))
                elif kind == "head":
                    block.copy_(f.head[:, None, :, i].expand(g, a1, b))
                else:
                    block.copy_(self.net[:, i, None, None].expand(g, a1, b))
                off += a1 * b
        return out.view(-1, g * e).t()
