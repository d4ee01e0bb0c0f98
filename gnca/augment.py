"""Per-net task augmentations of meta-training (rules with senses only).

Every net of a meta-step may learn its own variant of the task, so that a rule can only succeed
by reading the data through its senses (``train.permute_labels``, ``train.feature_transform``,
``train.class_subsets``; docs/method.md, "Senses"). A pooled sample keeps its variant across
meta-steps; a fresh seed gets a new one. Growing and evaluation always use the plain task.

- **Feature transforms.** Net ``i`` sees every input ``x`` as ``x @ R_i``: a random permutation
  of the features (``permute``) or a random orthogonal ``d x d`` matrix (``orthogonal``, the
  ``Q`` of the QR decomposition of a Gaussian matrix with the signs of ``diag(R)`` folded in, so
  that it is Haar distributed). Standardised features stay standardised-ish under either.
- **Class subsets.** Net ``i`` learns only a random subset of ``m_i`` of the classes,
  ``m_i ~ U{m_min, ..., classes}``: its batches hold examples of those classes only, and the
  logits of the other classes are set to :data:`MASKED_LOGIT` wherever the net is scored (loss,
  accuracy, the output error of the senses), so that the softmax runs over the present classes.
  The architecture keeps its ``classes`` outputs.

**What a pool stores.** A sample's feature transform is stored as one ``int64`` seed, and the
matrix (or permutation) is regenerated from it when a meta-step uses the sample
(:func:`feature_maps`). Storing ``R`` itself would cost ``pool x d x d`` floats: 1M for
``d = 64`` and a pool of 256, but 157M (630 MB, in every checkpoint too) for MNIST's ``d = 784``.
A seed costs 8 bytes at any ``d``; the price is one QR of ``d x d`` per net and meta-step
(microseconds at ``d = 64``, about 0.1 s per net at ``d = 784`` on one CPU thread), which the
``K`` rule steps of the meta-step then share. A sample's class subset is stored as a ``(classes,)``
``uint8`` mask (``uint8``, not ``bool``, so that it gathers over gloo in distributed runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: choices of ``train.feature_transform``
FEATURE_TRANSFORMS = ("none", "permute", "orthogonal")

#: the logit of a class that a net does not learn: far below any real logit, yet finite, so that
#: ``masked - masked`` is 0, never ``-inf - (-inf) = NaN``
MASKED_LOGIT = -1.0e9

#: pool tag names (:attr:`gnca.pool.SamplePool.tags`)
FEATURE_SEED = "feature_seed"
CLASSES = "classes"


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    """A ``(d, d)`` Haar-random orthogonal matrix: QR of a Gaussian, signs fixed."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator))
    sign = torch.sign(torch.diagonal(r))
    return q * torch.where(sign == 0, torch.ones_like(sign), sign)  # scales the columns


def draw_seeds(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` int64 seeds of feature transforms."""
    return torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)


def feature_maps(seeds: torch.Tensor, d: int, kind: str) -> torch.Tensor:
    """The transforms of ``seeds (n,)``: ``(n, d)`` feature permutations (``permute``: net ``i``'s
    feature ``k`` is input ``maps[i, k]``) or ``(n, d, d)`` orthogonal matrices."""
    if kind not in ("permute", "orthogonal"):
        raise ValueError(f"unknown feature transform {kind!r}; choose permute or orthogonal")
    out = []
    for s in seeds.tolist():
        g = torch.Generator().manual_seed(int(s))
        out.append(torch.randperm(d, generator=g) if kind == "permute" else random_orthogonal(d, g))
    return torch.stack(out)


def draw_classes(n: int, c: int, m_min: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, c)`` uint8 masks of random class subsets, each of ``m ~ U{min(m_min, c), ..., c}``
    classes."""
    m = torch.randint(min(m_min, c), c + 1, (n,), generator=generator)
    keys = torch.rand(n, c, generator=generator)
    rank = keys.argsort(1).argsort(1)  # a random order of the classes
    return (rank < m[:, None]).to(torch.uint8)


def class_indices(
    y: torch.Tensor,
    present: torch.Tensor,
    size: int,
    generator: torch.Generator,
    *,
    replacement: bool,
    offset: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """``(n, size)`` example indices per net, each drawn from the examples of its classes.

    Args:
        y: ``(N,)`` labels of the split.
        present: ``(n, classes)`` bool, the classes of every net (each row has one at least).
        size: examples per net.
        generator: a CPU generator; the draws are made for ``total`` nets (default ``n``) and
            rows ``offset .. offset + n`` kept, so that every rank of a distributed run draws
            the same.
        replacement: uniform with replacement (the senses' batches), or a random order of the
            net's examples, cycled when it has fewer than ``size`` (the meta-loss batch).
    """
    n = present.shape[0]
    total = n if total is None else total
    ok = present.cpu()[:, y.cpu()]  # (n, N): example allowed for the net
    count = ok.sum(1)  # (n,)
    if replacement:
        u = torch.rand(total, size, generator=generator)[offset : offset + n]
        order = torch.argsort((~ok).to(torch.int8), dim=1, stable=True)  # its examples first
        r = torch.minimum((u * count[:, None]).long(), (count - 1)[:, None])
    else:
        keys = torch.rand(total, y.shape[0], generator=generator)[offset : offset + n]
        order = keys.masked_fill(~ok, 2.0).argsort(1)  # its examples first, in random order
        r = torch.arange(size)[None, :] % count[:, None]
    return order.gather(1, r).to(y.device)


def mask_logits(logits: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """``logits (G, B, n_out)`` with the classes absent from a net (``present (G, n_out)`` bool
    false) set to :data:`MASKED_LOGIT`; ``logits`` itself when ``present`` is None."""
    if present is None:
        return logits
    return logits.masked_fill(~present.to(logits.device)[:, None, :], MASKED_LOGIT)


@dataclass
class NetAugment:
    """The task variants of ``n`` nets in one meta-step.

    Attributes:
        permutation: ``(n, classes)`` label permutations (net ``i`` sees label ``c`` as
            ``permutation[i, c]``), or ``None``.
        kind: the feature transform (:data:`FEATURE_TRANSFORMS`).
        maps: its :func:`feature_maps` (``None`` for ``none``).
        classes: ``(n, classes)`` bool, the classes each net learns (in the data's labels,
            before the permutation), or ``None`` for all.
        offset, total: these nets are rows ``offset ..`` of ``total`` (a distributed rank's
            share of the batch; data draws are made for all ``total``).
    """

    permutation: torch.Tensor | None = None
    kind: str = "none"
    maps: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    offset: int = 0
    total: int | None = None

    @property
    def output_mask(self) -> torch.Tensor | None:
        """``(n, classes)`` bool, the outputs each net is scored on (its classes, permuted)."""
        if self.classes is None:
            return None
        if self.permutation is None:
            return self.classes
        perm = self.permutation.to(self.classes.device)
        return torch.zeros_like(self.classes).scatter(1, perm, self.classes)

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        """``X (B, d)`` or ``(n, B, d)`` as every net sees it: ``(n, B, d)`` (``X`` itself
        without a feature transform)."""
        if self.kind == "none" or self.maps is None:
            return X
        maps = self.maps.to(X.device)
        if self.kind == "permute":
            if X.dim() == 2:
                return X[:, maps].transpose(0, 1)  # (n, B, d)
            return X.gather(2, maps[:, None, :].expand(-1, X.shape[1], -1))
        return torch.matmul(X, maps.to(X.dtype))  # (B, d) @ (n, d, d) -> (n, B, d)

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """``y (B,)`` or ``(n, B)`` as every net sees it."""
        if self.permutation is None:
            return y
        perm = self.permutation.to(y.device)
        return perm[:, y] if y.dim() == 1 else perm.gather(1, y)

    def draw(
        self, X: torch.Tensor, y: torch.Tensor, size: int, generator: torch.Generator,
        *, replacement: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(n, size, d)`` examples and ``(n, size)`` labels of the split ``X, y``, each net's
        from its own classes (data's labels; see :func:`class_indices`)."""
        assert self.classes is not None
        idx = class_indices(y, self.classes, size, generator, replacement=replacement,
                            offset=self.offset, total=self.total)  # fmt: skip
        return X[idx], y[idx]
