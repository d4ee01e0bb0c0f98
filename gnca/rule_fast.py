r"""The fast routes of :class:`gnca.LocalRule`: the paper's step with less memory or fewer flops.

:meth:`gnca.LocalRule.step` is the reference route: perceive, append the senses, the MLP (and
bound), the fire mask, the update, in new tensors. Every route here computes the same
:math:`(w', h')` up to float rounding; the tests (``tests/test_fused_step.py``,
``tests/test_factored.py``) compare each one with the reference route, values and gradients.
:meth:`gnca.LocalRule.forward` asks :func:`pick_route` which one runs:

==================  ======================================  ======================================
route               runs when                               what it saves
==================  ======================================  ======================================
``rule.step``       gradients on, and :func:`factored`      nothing (the reference); perceives
                    does not run                            ``fast`` (through the neurons, ``O(E)``)
                                                            or ``explicit`` (line graph)
:func:`factored`    gradients on, path ``fast``,            the ``(E, 3 + 3C)`` perception and
                    ``rule.factored`` (``train.perception:  its backward: the MLP's first layer
                    factored``), float32/float64 state,     goes through the neurons
                    at most :data:`gnca.factored.MAX_RUNS`  (:mod:`gnca.factored`)
                    runs of weights
:func:`fused_step`  gradients off (growing), path           the perception and MLP activations
                    ``fast``; ``rule.factored`` ignored     of all weights but one block: blocks
                                                            of ``rule.block_rows`` on CPU (all
                                                            weights at once on other devices),
                                                            activations in place, buffers reused
:func:`blocked`     gradients off, path ``explicit``        the MLP activations of all weights
                    (``aggr`` max, min, ...)                but one block (:func:`delta_no_grad`)
``adam_only_step``  gradients off, path ``fast``, a rule    the MLP outputs the path overwrites,
(:mod:`gnca.rule_   that moves its weights by Adam's path   the senses' concatenation and, on a
adam`)              alone (``descent_only``,                batch of one MLP, the perception
                    ``descent_norm``)                       (first layer factored by layer)
==================  ======================================  ======================================

Every route takes senses (appended to the perception; :func:`factored` multiplies them by their
columns of the first layer) and runs under autocast; a reduced-precision state (bf16 parameters)
never takes :func:`factored` (no sparse products for it).

:meth:`gnca.LocalRule.delta` (the MLP and bound on given perceptions) runs
:func:`delta_no_grad` without gradients too, so that benchmarks time the MLP as the steps run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Data

from gnca.factored import factored_first_layer, factored_plan
from gnca.graph import NEIGHBOURHOODS
from gnca.perception import check_state, neuron_plan, neuron_sums


class LocalRule(Protocol):
    """What the routes read of a :class:`gnca.LocalRule` (a protocol: this module does not
    import :mod:`gnca.rule`, which imports it)."""

    hidden_channels: int
    neighbourhood: str
    include_self: bool
    reduce: str
    bound: float | None
    state_bound: float | None
    factored: bool
    block_rows: int | None
    mlp: nn.Sequential

    def perceive(
        self, graph: Data, w: torch.Tensor, h: torch.Tensor, path: str
    ) -> torch.Tensor: ...
    def bounded(self, out: torch.Tensor) -> torch.Tensor: ...
    def fire_mask(
        self, num_weights: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...
    def masked_update(
        self,
        w: torch.Tensor,
        h: torch.Tensor,
        d: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


#: ``(rule, graph, w, h, mask, generator, senses) -> (w', h')``
Route = Callable[..., tuple[torch.Tensor, torch.Tensor]]

#: In-place versions of the activations, for the no-grad MLP (absent: out of place).
_INPLACE: dict[type[nn.Module], object] = {
    nn.ReLU: torch.relu_,
    nn.Tanh: torch.tanh_,
    nn.Sigmoid: torch.sigmoid_,
    nn.SiLU: lambda x: F.silu(x, inplace=True),
    nn.Identity: lambda x: x,
}


def activate_(mod: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The activation module ``mod`` on ``z`` without autograd: in place where it has an
    in-place version, else as the module (any shape and layout)."""
    inplace = _INPLACE.get(type(mod))
    return inplace(z) if inplace is not None else mod(z)  # type: ignore[operator]


def pick_route(rule: LocalRule, graph: Data, w: torch.Tensor, path: str) -> Route | None:
    """The fast route for one step of ``rule`` (see the table above), or ``None`` for the
    reference route :meth:`gnca.LocalRule.step`. ``path`` is ``"fast"`` or ``"explicit"``."""
    if not torch.is_grad_enabled():
        return fused_step if path == "fast" else blocked
    if path == "fast" and rule.factored and _factored_plan(rule, graph, w) is not None:
        return factored
    return None


def _factored_plan(rule: LocalRule, graph: Data, w: torch.Tensor):
    return factored_plan(graph, rule.neighbourhood, rule.include_self, rule.reduce, w.dtype)


def factored(
    rule: LocalRule,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator | None,
    senses: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The differentiable step with the MLP's first layer applied through the neurons."""
    plan = _factored_plan(rule, graph, w)
    assert plan is not None, "pick_route() picks this route only when the graph has a plan"
    check_state(w, h, graph)
    x = torch.cat([w.unsqueeze(1), h], dim=1)  # (E, 1 + C)
    z = factored_first_layer(plan, rule.mlp[0], x, senses)  # (E, width)
    d = rule.bounded(rule.mlp[1:](z))  # (E, 1 + C)
    return rule.masked_update(w, h, d, mask, generator)


def blocked(
    rule: LocalRule,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator | None,
    senses: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference step on the explicit line graph, its MLP run by :func:`delta_no_grad`."""
    p = rule.perceive(graph, w, h, "explicit")  # (E, 3 + 3C)
    if senses is not None:
        p = torch.cat([p, senses.to(p.dtype)], dim=1)  # (E, 3 + 3C + S)
    return rule.masked_update(w, h, delta_no_grad(rule, p), mask, generator)


def block_size(rule: LocalRule, device: torch.device, e: int) -> int:
    """Rows per block of the no-grad routes: ``rule.block_rows`` on CPU, else all ``e``."""
    if device.type != "cpu" or rule.block_rows is None:
        return max(e, 1)
    return max(int(rule.block_rows), 1)


def delta_no_grad(rule: LocalRule, p: torch.Tensor) -> torch.Tensor:
    """``(E, 1 + C)`` bounded MLP output of perceptions ``p``, block by block, without
    autograd (the MLP of :func:`fused_step`)."""
    e = p.shape[0]
    out = p.new_empty(e, 1 + rule.hidden_channels)
    block = block_size(rule, p.device, e)
    bufs: dict[int, torch.Tensor] = {}
    for i in range(0, e, block):
        mlp_no_grad(rule, p[i : i + block], out[i : i + block], bufs)
    return out


def mlp_no_grad(
    rule: LocalRule,
    p: torch.Tensor,
    out: torch.Tensor | None = None,
    bufs: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The bounded MLP of one block without autograd: in-place activations, output written into
    ``out`` when given, hidden layers written into the reusable ``bufs`` (one buffer per layer,
    allocated on first use for as many rows as ``p``)."""
    z = p
    layers = list(rule.mlp)
    plain = not torch.is_autocast_enabled(p.device.type)  # out= ops skip autocast
    reuse = bufs is not None and plain
    rows = p.shape[0]
    for i, m in enumerate(layers):
        if isinstance(m, nn.Linear):
            if i == len(layers) - 1 and out is not None:
                if plain:
                    z = torch.addmm(m.bias, z, m.weight.t(), out=out)
                else:
                    z = out.copy_(F.linear(z, m.weight, m.bias))
            elif reuse:
                assert bufs is not None
                buf = bufs.get(i)
                if buf is None or buf.shape[0] < rows:
                    buf = bufs[i] = p.new_empty(rows, m.out_features)
                z = torch.addmm(m.bias, z, m.weight.t(), out=buf[:rows])
            else:
                z = F.linear(z, m.weight, m.bias)
        else:
            z = activate_(m, z)
    if rule.bound is not None:
        z = z.div_(rule.bound).tanh_().mul_(rule.bound)
    return z


def perception_table(
    rule: LocalRule,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    block: int,
    sums: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the no-grad routes gather the perceptions from: the fast path's ``(3E,)`` row
    ``index`` and ``(E, 3, 1)`` own-term ``coef`` (:func:`gnca.perception.neuron_plan`) and the
    ``(1 + 2N, D)`` table of scaled neuron sums of ``x = [w, h]`` (row 0 is zero); ``sums``:
    the ``"in"`` and ``"out"`` sums if the caller has them (else
    :func:`gnca.perception.neuron_sums`; they are overwritten)."""
    d = 1 + rule.hidden_channels
    index, coef, scale_f, scale_b = neuron_plan(
        graph, rule.neighbourhood, rule.include_self, rule.reduce, w.dtype
    )
    fwd, bwd = NEIGHBOURHOODS[rule.neighbourhood]
    if sums is None:
        sums = neuron_sums(graph, w, h, block)  # x = [w, h] summed over in- and out-weights
    if rule.neighbourhood == "incident":
        s_f = s_b = sums["in"].add_(sums["out"])
    else:
        s_f, s_b = sums[fwd[0]], sums[bwd[0]]
    table = torch.cat([w.new_zeros(1, d), s_f * scale_f, s_b * scale_b])  # (1 + 2N, D)
    return index, coef, table


def gather_block(
    table: torch.Tensor,
    index: torch.Tensor,
    coef: torch.Tensor,
    w: torch.Tensor,
    h: torch.Tensor,
    i: int,
    j: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """``(j - i, 3D)`` perceptions ``[x, agg_f, agg_b]`` of weights ``i:j``, built in ``out``
    (``(3 (j - i), D)`` or larger): gather the scaled sums (slot 0 reads the zero row), write
    ``x`` into slot 0, add the own-weight term."""
    d = table.shape[1]
    p = torch.index_select(table, 0, index[3 * i : 3 * j], out=out[: 3 * (j - i)])
    p = p.view(j - i, 3 * d)  # (b, 3D)
    p[:, 0] = w[i:j]
    p[:, 1:d] = h[i:j]
    x = p[:, :d]
    p[:, d : 2 * d].addcmul_(x, coef[i:j, 1])
    p[:, 2 * d :].addcmul_(x, coef[i:j, 2])
    return p


def fused_step(
    rule: LocalRule,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator | None,
    senses: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step without autograd that never holds the ``(E, 3 + 3C)`` perception or the MLP's
    ``(E, width)`` activations: it sums ``[w, h]`` to the neurons, then perceives, applies the
    MLP (activations in place) and updates :func:`block_size` weights at a time."""
    check_state(w, h, graph)
    e, d = w.shape[0], 1 + rule.hidden_channels
    if mask is None:
        mask = rule.fire_mask(e, w.device, generator)
    mask = mask.to(w.dtype)
    block = block_size(rule, w.device, e)
    index, coef, table = perception_table(rule, graph, w, h, block)
    w_new, h_new = torch.empty_like(w), torch.empty_like(h)
    rows = min(block, e)
    d_buf = w.new_empty(rows, d)
    p_buf = w.new_empty(3 * rows, d)  # the gathered perceptions, reused by every block
    s_buf = None if senses is None else w.new_empty(rows, 3 * d + senses.shape[1])
    bufs: dict[int, torch.Tensor] = {}
    for i in range(0, e, block):
        j = min(i + block, e)
        p = gather_block(table, index, coef, w, h, i, j, p_buf)  # (b, 3D)
        if senses is not None and s_buf is not None:
            p = torch.cat([p, senses[i:j].to(p.dtype)], dim=1, out=s_buf[: j - i])  # (b, 3D + S)
        dx = mlp_no_grad(rule, p, d_buf[: j - i], bufs)  # (b, D)
        m = mask[i:j]
        torch.addcmul(w[i:j], dx[:, 0], m, out=w_new[i:j])
        if rule.state_bound is None:
            torch.addcmul(h[i:j], dx[:, 1:], m.unsqueeze(1), out=h_new[i:j])
        else:  # h + m * (sb * tanh((h + dh) / sb) - h)
            sb = rule.state_bound
            bounded = dx[:, 1:].add_(h[i:j]).div_(sb).tanh_().mul_(sb).sub_(h[i:j])
            torch.addcmul(h[i:j], bounded, m.unsqueeze(1), out=h_new[i:j])
    return w_new, h_new


def hidden_no_grad(
    layers: list[nn.Module], z: torch.Tensor, bufs: dict[int, torch.Tensor]
) -> torch.Tensor:
    """The MLP's modules between its first and last linear layers on ``z`` ``(b, width)``,
    without autograd: activations in place, hidden linear layers into reusable buffers."""
    for i, mod in enumerate(layers):
        if isinstance(mod, nn.Linear):
            buf = bufs.get(i)
            if buf is None or buf.shape[0] < z.shape[0]:
                buf = bufs[i] = z.new_empty(z.shape[0], mod.out_features)
            z = torch.addmm(mod.bias, z, mod.weight.t(), out=buf[: z.shape[0]])
        else:
            z = activate_(mod, z)
    return z
