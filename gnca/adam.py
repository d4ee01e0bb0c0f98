"""Adam's normalised step as a data-reading rule's descent path takes it (``rule.descent_norm``).

The moments live in the first hidden channels of every weight
(:attr:`gnca.LocalRule.moment_channels`); :func:`adam_path` is one step of them and the normalised
step along a sense. The reference step of :class:`gnca.LocalRule` and the growing route
:func:`gnca.rule_adam.adam_only_step` both call it.
"""

from __future__ import annotations

import torch

#: Adam's epsilon in a normalised descent step (``descent_norm``): weights whose ``delta``
#: sense has always been exactly 0 (a constant-zero input) do not move.
NORM_EPS = 1e-8


def adam_path(
    s: torch.Tensor,
    moments: torch.Tensor,
    beta1: float,
    beta2: float,
    mask: torch.Tensor,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's normalised step of a sense ``s`` ``(E,)``, and the new moments ``(E, k)``.

    ``moments`` holds, per weight, ``[v, c2]`` (``k = 2``; ``beta1 = 0``) or
    ``[v, c2, m, c1]`` (``k = 4``): the running mean square ``v`` and mean ``m`` of ``s``, and
    ``c2 = 1 - beta2^t``, ``c1 = 1 - beta1^t`` after ``t`` updates (Adam's bias corrections;
    all 0 at the start, all in ``[0, 1)`` for any ``t``). Where ``mask`` ``(E,)`` is 1:
    ``v' = beta2 v + (1 - beta2) s^2``, ``m' = beta1 m + (1 - beta1) s``,
    ``c' = beta c + (1 - beta)``; elsewhere the moments are kept. The step is
    ``(m' / c1') / (sqrt(v' / c2') + eps)`` (``s`` for ``m' / c1'`` without momentum). ``v``
    is detached (a constant for the meta-gradient, as Adam's normaliser is for the step it
    scales); ``m`` carries the gradient of the senses it averages.

    ``out``: an ``(E, k)`` tensor (a view of the new hidden states, without gradients) that
    receives the new moments column by column as they are computed, instead of stacking them
    into a new tensor (the same values; it saves the narrow concatenation, slow on CPU).
    """
    v, c2 = moments[:, 0].detach(), moments[:, 1].detach()
    v = _masked(v, beta2 * v + (1 - beta2) * s.detach().square() - v, mask, out, 0)
    c2 = _masked(c2, beta2 * c2 + (1 - beta2) - c2, mask, out, 1)
    denom = (v / c2.clamp_min(1 - beta2)).sqrt() + NORM_EPS  # c2 = 0 only where v = 0
    if moments.shape[1] == 2:
        return s / denom, _moments([v, c2], out)
    m, c1 = moments[:, 2], moments[:, 3].detach()
    m = _masked(m, beta1 * m + (1 - beta1) * s - m, mask, out, 2)
    c1 = _masked(c1, beta1 * c1 + (1 - beta1) - c1, mask, out, 3)
    return m / c1.clamp_min(1 - beta1) / denom, _moments([v, c2, m, c1], out)


def _masked(
    x: torch.Tensor, dx: torch.Tensor, mask: torch.Tensor, out: torch.Tensor | None, i: int
) -> torch.Tensor:
    """``x + mask * dx`` ``(E,)``, computed straight into column ``i`` of ``out`` when given."""
    if out is None:
        return torch.addcmul(x, dx, mask)
    return torch.addcmul(x, dx, mask, out=out[:, i])


def _moments(cols: list[torch.Tensor], out: torch.Tensor | None) -> torch.Tensor:
    """The ``(E, k)`` moments: ``cols`` stacked, or ``out``, which already holds them."""
    return torch.stack(cols, dim=1) if out is None else out
