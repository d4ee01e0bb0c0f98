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


class TaskVariants:
    """Where the augmentations' randomness is drawn: every net's label permutation, feature
    transform and class subset, from the senses' generator, in one fixed order (permutations,
    then feature seeds, then class subsets).

    A pooled sample keeps its variant; a fresh or renewed one gets a new one. A distributed run
    draws the variants of the whole batch on every rank and keeps its rows, so that every rank
    draws the same.

    Args:
        permute_labels: every net learns its own permutation of the class labels.
        feature_transform: :data:`FEATURE_TRANSFORMS`.
        class_subsets: the fewest classes a net learns (``None``: all).
        generator: the senses' CPU generator (``None`` when every augmentation is off).
    """

    def __init__(
        self,
        permute_labels: bool = False,
        feature_transform: str = "none",
        class_subsets: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.permute_labels = bool(permute_labels)
        self.feature_transform = feature_transform
        self.class_subsets = class_subsets
        self.generator = generator

    def _gen(self) -> torch.Generator:
        assert self.generator is not None, "task variants need the senses' generator"
        return self.generator

    def permutations(self, n: int, c: int) -> torch.Tensor:
        """``(n, c)`` random permutations of ``c`` labels."""
        return torch.stack([torch.randperm(c, generator=self._gen()) for _ in range(n)])

    def tags(self, n: int, c: int) -> dict[str, torch.Tensor]:
        """New feature-transform seeds and class subsets of ``n`` nets (those that are on), as
        pool tags."""
        tags = {}
        if self.feature_transform != "none":
            tags[FEATURE_SEED] = draw_seeds(n, self._gen())
        if self.class_subsets is not None:
            tags[CLASSES] = draw_classes(n, c, self.class_subsets, self._gen())
        return tags

    def fresh(self, n: int, c: int) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The variants of ``n`` new pool samples: label permutations (or ``None``) and tags."""
        labels = self.permutations(n, c) if self.permute_labels else None
        return labels, self.tags(n, c)

    def for_batch(
        self,
        total: int,
        rows: slice,
        c: int,
        n_features: int,
        renewed: torch.Tensor | None,
        kept: tuple[torch.Tensor | None, dict[str, torch.Tensor]] | None,
        device: torch.device,
    ) -> tuple[torch.Tensor | None, NetAugment | None, dict[str, torch.Tensor]]:
        """The variants of this process's nets of a meta-step's batch.

        Args:
            total: nets in the whole batch (every rank draws for all of them).
            rows: this process's rows of the batch.
            c, n_features: the task's classes and features.
            renewed: ``(n,)`` bool, the nets that start again from a seed (``None``: all do).
            kept: the pooled nets' label permutations and tags (``None`` without a pool).
            device: where the permutations and masks go.

        Returns:
            ``(n, c)`` permutations or ``None``; the :class:`NetAugment` (``None`` when
            feature transforms and class subsets are both off); the tags to commit.
        """
        perm = None
        if self.permute_labels:
            perm = self.permutations(total, c)[rows]
            if kept is not None and kept[0] is not None and renewed is not None:
                perm = torch.where(renewed.cpu()[:, None], perm, kept[0].cpu())
            perm = perm.to(device)
        if self.feature_transform == "none" and self.class_subsets is None:
            return perm, None, {}
        tags = {}
        for k, v in self.tags(total, c).items():
            v = v[rows]
            if kept is not None and renewed is not None:
                keep = ~renewed.cpu().view(-1, *([1] * (v.dim() - 1)))
                v = torch.where(keep, kept[1][k], v)
            tags[k] = v
        maps = None
        if self.feature_transform != "none":
            maps = feature_maps(tags[FEATURE_SEED], n_features, self.feature_transform).to(device)
        classes = tags[CLASSES].bool().to(device) if CLASSES in tags else None
        aug = NetAugment(perm, self.feature_transform, maps, classes, rows.start, total)
        return perm, aug, tags
