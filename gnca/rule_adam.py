r"""The growing step of a rule whose weights move by Adam's path alone: only what survives.

A rule with ``descent_only`` and ``descent_norm`` (configs/tabular_aligned.yaml,
configs/mnist_aligned.yaml) moves each weight by Adam's normalised step along its ``delta``
sense (:func:`gnca.adam.adam_path`); the MLP's ``dw`` and its writes to the moment channels are
overwritten. Without gradients (growing), :meth:`gnca.LocalRule.forward` runs
:func:`adam_only_step`, which

- computes only the MLP's outputs that survive: the hidden channels above the moments
  (``L = C - k`` of ``1 + C``), as one ``(L, width) x (width, rows)`` product rather than
  ``rows`` narrow rows of ``L`` outputs;
- on a batch of one MLP with biases (:class:`DensePlan`), never gathers a perception: in a layer
  every weight ``u -> v`` shares its own-term coefficients, its forward neighbour row depends on
  ``v`` alone and its backward one on ``u`` alone, so the first layer is

  .. math::
      z_{uv} = (W_0 + c_f W_f + c_b W_b)\, x_{uv} + (T W_f^\top)[r_f(v)] + (T W_b^\top)[r_b(u)]
               + W_s s_{uv} + b,

  one product with ``D + S`` inputs per weight (``[w, h, s]`` stacked chunk by chunk) and two
  broadcast additions of per-neuron rows (the factored first layer of :mod:`gnca.factored`,
  laid out by layer); other graphs gather the perception block by block as
  :func:`gnca.rule_fast.fused_step` does, and add the senses as a second product;
- on that dense route, runs channel-major: it reads the states and the senses as
  ``(channels, weights)`` (copying them once if they come row-major), keeps the MLP's
  activations as ``(width, weights)`` and hands the new states on channel-major (an ``(E, C)``
  tensor with strides ``(1, E)``), so the next step reads them without a copy and every write
  of a channel is contiguous;
- there, reads factored senses (:class:`gnca.factored_senses.FactoredSenses`): the columns
  that are one value per tail, head or net are added to the per-neuron rows (``W_s`` times
  them) instead of to every weight, so only the per-weight columns enter the product.

``w'`` and the moments equal the reference step's bit for bit; the other hidden channels agree up
to float rounding (``tests/test_descent.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch_geometric.data import Data

from gnca.adam import adam_path
from gnca.factored_senses import FactoredSenses
from gnca.graph import cached, num_graphs, total_neurons
from gnca.perception import check_state, neuron_plan
from gnca.rule_fast import LocalRule as _RouteRule
from gnca.rule_fast import activate_, block_size, gather_block, hidden_no_grad, perception_table
from gnca.senses import (
    dense_sizes,
    net_divisor,
    normalised_columns,
    rms_divisor,
    soft_clip,
)


class LocalRule(_RouteRule, Protocol):
    """What :func:`adam_only_step` reads of a :class:`gnca.LocalRule` beyond the routes'."""

    moment_channels: int
    descent_momentum: float
    descent_norm: float | None
    senses: tuple[str, ...]
    sense_norm: bool
    sense_floor: float

    def aged_rate(self, c2: torch.Tensor) -> torch.Tensor: ...

    def read(self, graph: Data, senses: torch.Tensor) -> torch.Tensor: ...


#: The dense route's chunks, in units of :func:`gnca.rule_fast.block_size`: with few, cheap
#: operations per weight it ran faster on chunks larger than the fused step's blocks (CPU).
CHUNK = 4


@dataclass(frozen=True)
class DenseBlock:
    """One layer's weights (or its biases) in every net of a batch of one MLP.

    Attributes:
        start, rows: the block's first weight and its size within one net (``a * b``).
        a, b: tails and heads (``a = 1`` for the biases, whose tail is the bias neuron).
        rows_f: ``(G, 1, b)`` the table row each head's weights gather (forward relation).
        rows_b: ``(G, a, 1)``, the row each tail's weights gather (backward relation), or
            ``(G, 1, b)`` for biases, whose tails are one bias neuron per head.
        c_f, c_b: the own-term coefficients every weight of the block shares.
    """

    start: int
    rows: int
    a: int
    b: int
    rows_f: torch.Tensor
    rows_b: torch.Tensor
    c_f: float
    c_b: float


@dataclass(frozen=True)
class DensePlan:
    """The blocks of a batch of ``nets`` identical MLPs with biases, ``per_net`` weights each."""

    nets: int
    per_net: int
    blocks: tuple[DenseBlock, ...]


def dense_plan(
    graph: Data, neighbourhood: str, include_self: bool, reduce: str, dtype: torch.dtype
) -> DensePlan | None:
    """The cached :class:`DensePlan` of ``graph``, or ``None`` when it is not a batch of one
    MLP with biases whose blocks have the structure above (then the gathering path runs)."""
    return cached(
        graph,
        ("adam_dense_plan", neighbourhood, include_self, reduce, dtype),
        lambda: _build(graph, neighbourhood, include_self, reduce, dtype),
    )


def _build(
    graph: Data, neighbourhood: str, include_self: bool, reduce: str, dtype: torch.dtype
) -> DensePlan | None:
    sizes = dense_sizes(graph)
    if sizes is None:
        return None
    index, coef, _, _ = neuron_plan(graph, neighbourhood, include_self, reduce, dtype)
    g = num_graphs(graph)
    per_net = graph.src.numel() // g
    rows3 = index.view(g, per_net, 3)
    coef2 = coef[:, 1:, 0].reshape(g, per_net, 2)
    blocks, off = [], 0
    for a_n, b_n in zip(sizes[:-1], sizes[1:], strict=True):
        for a, rows in ((a_n, a_n * b_n), (1, b_n)):  # the weights, then the biases
            r_f = rows3[:, off : off + rows, 1].reshape(g, a, b_n)
            r_b = rows3[:, off : off + rows, 2].reshape(g, a, b_n)
            c = coef2[:, off : off + rows]
            if not torch.equal(c, c[:1, :1].expand_as(c)):
                return None
            if not torch.equal(r_f, r_f[:, :1].expand_as(r_f)):
                return None
            if torch.equal(r_b, r_b[:, :, :1].expand_as(r_b)):
                r_b = r_b[:, :, :1]  # a layer's weights: one row per tail
            elif a != 1:
                return None  # (biases: one bias neuron per head, a row per weight)
            blocks.append(DenseBlock(off, rows, a, b_n, r_f[:, :1].clone(), r_b.clone(),
                                     float(c[0, 0, 0]), float(c[0, 0, 1])))  # fmt: skip
            off += rows
    return DensePlan(g, per_net, tuple(blocks))


def adam_only_step(
    rule: LocalRule,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    mask: torch.Tensor,
    senses: torch.Tensor | FactoredSenses | None,
    delta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One growing step of a descent-only rule with Adam's path (see the module docstring).

    Args:
        rule: the rule (``descent_only``, ``descent_norm``, an MLP with a hidden layer).
        graph: the batch of task nets.
        w: ``(E,)`` weights; h: ``(E, C)`` hidden states.
        mask: ``(E,)`` the firing weights (drawn by the caller: one mask for both updates).
        senses: ``(E, S)`` the senses as the reader gave them (the MLP reads them through
            :meth:`read`, here computed chunk by chunk on the dense route), or factored
            (:class:`gnca.factored_senses.FactoredSenses`), or ``None``.
        delta: ``(E,)`` the ``delta`` sense as the reader gave it (the path's gradient).

    Returns:
        ``(w', h')``: ``w'`` and the moments as the reference step gives them, bit for bit;
        the other hidden channels up to float rounding.
    """
    check_state(w, h, graph)
    k = rule.moment_channels
    m = mask.to(w.dtype)
    plan = dense_plan(graph, rule.neighbourhood, rule.include_self, rule.reduce, w.dtype)
    if plan is None:
        if isinstance(senses, FactoredSenses):
            senses = senses.dense()
        h_new = torch.empty_like(h)
        _gathered(rule, graph, w, h, m, None if senses is None else rule.read(graph, senses), h_new)
    else:  # channel-major states: (E, C) with strides (1, E)
        h_new = h.new_empty(h.shape[1], h.shape[0]).t()
        _dense(rule, plan, graph, w, h, m, senses, h_new)
    beta2 = rule.descent_norm
    assert beta2 is not None, "adam_only_step needs a descent_norm path"
    moments = h[:, :k].t().contiguous().t()  # each moment contiguous: the same values, faster
    step, _ = adam_path(delta.to(w.dtype), moments, rule.descent_momentum, beta2, m, h_new[:, :k])
    return torch.addcmul(w, rule.aged_rate(h_new[:, 1]) * step, m, value=-1.0), h_new


def _gathered(
    rule: LocalRule,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    m: torch.Tensor,
    senses: torch.Tensor | None,
    h_new: torch.Tensor,
) -> None:
    """The surviving channels of ``h_new`` on any graph: perceptions gathered block by block."""
    e, d, k = w.shape[0], 1 + rule.hidden_channels, rule.moment_channels
    block = block_size(rule, w.device, e)
    index, coef, table = perception_table(rule, graph, w, h, block)
    first = rule.mlp[0]
    assert isinstance(first, nn.Linear)
    w_p, w_s = first.weight[:, : 3 * d].t(), first.weight[:, 3 * d :].t()
    rows = min(block, e)
    p_buf = w.new_empty(3 * rows, d)
    z_buf = w.new_empty(rows, first.out_features)
    bufs: dict[int, torch.Tensor] = {}
    for i in range(0, e, block):
        j = min(i + block, e)
        p = gather_block(table, index, coef, w, h, i, j, p_buf)  # (b, 3D)
        z = torch.addmm(first.bias, p, w_p, out=z_buf[: j - i])  # (b, width)
        if senses is not None:
            z.addmm_(senses[i:j].to(z.dtype), w_s)
        _live(rule, z, h[i:j, k:], m[i:j].unsqueeze(1), h_new[i:j, k:], bufs)


def _dense(
    rule: LocalRule,
    plan: DensePlan,
    graph: Data,
    w: torch.Tensor,
    h: torch.Tensor,
    m: torch.Tensor,
    senses: torch.Tensor | FactoredSenses | None,
    h_new: torch.Tensor,
) -> None:
    """The surviving channels of ``h_new`` on a batch of one MLP: the first layer factored by
    layer (module docstring), in chunks of about :data:`CHUNK` times :func:`block_size` weights
    (:func:`_chunks`). Runs channel-major: the states, the senses and the MLP's activations as
    ``(channels, weights)``; ``h_new`` must be channel-major (``h_new.t()`` contiguous)."""
    c, k = rule.hidden_channels, rule.moment_channels
    d = 1 + c
    g, per = plan.nets, plan.per_net
    block = block_size(rule, w.device, w.shape[0])
    hc = _channel_major(h).view(c, g, per)  # (C, G, E / G)
    sums = _dense_sums(plan, total_neurons(graph), w, hc)
    _, _, table = perception_table(rule, graph, w, h, block, sums)  # (1 + 2N, D)
    chunk = CHUNK * block
    layers = list(rule.mlp)
    first, last = layers[0], layers[-1]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    wt = first.weight  # (width, 3D + S)
    w0, wf, wb, ws = wt[:, :d], wt[:, d : 2 * d], wt[:, 2 * d : 3 * d], wt[:, 3 * d :]
    # every neuron row's terms, the bias folded into the forward relation's: (1 + 2N, width)
    t_f, t_b = torch.addmm(first.bias, table, wf.t()), table @ wb.t()
    w_last, b_last = last.weight[1 + k :], last.bias[1 + k :].unsqueeze(1)  # (L, width), (L, 1)
    wv, mv = w.view(g, 1, per), m.view(1, g, per)
    h_newc = h_new.t().view(c, g, per)
    terms = None
    if isinstance(senses, FactoredSenses):  # per-neuron columns into the per-neuron rows
        terms = _NeuronTerms(rule, senses.to(w.dtype), ws, per)
        cols = senses.columns("weight")
        sc: torch.Tensor | None = senses.weight.to(w.dtype)  # (P, G, E / G)
        ws = ws[:, cols]
    else:
        cols = list(range(ws.shape[1]))
        sc = None if senses is None else _channel_major(senses.to(w.dtype)).view(-1, g, per)
    read = _ChunkReader(rule, sc, cols)
    inputs = d + (0 if sc is None else sc.shape[0])  # the rows of a chunk's [w, h, senses]
    chunks = [_chunks(g, blk, chunk) for blk in plan.blocks]
    most = max((g1 - g0) * (a1 - a0) * blk.b for blk, cs in zip(plan.blocks, chunks, strict=True)
               for g0, g1, a0, a1 in cs)  # fmt: skip
    x_buf = w.new_empty(inputs * most)
    for i, (blk, cs) in enumerate(zip(plan.blocks, chunks, strict=True)):
        own = w0 + blk.c_f * wf + blk.c_b * wb  # (width, D): w's column, h's
        w_in = own if sc is None else torch.cat([own, ws], 1)  # (width, D + S)
        layer, bias = divmod(i, 2)  # the blocks: each layer's weights, then its biases
        for g0, g1, a0, a1 in cs:
            n, rows = g1 - g0, (a1 - a0) * blk.b
            sl = slice(blk.start + a0 * blk.b, blk.start + a1 * blk.b)
            hb = hc[:, g0:g1, sl]  # (C, n, rows)
            x = x_buf[: inputs * n * rows].view(inputs, n, rows)
            x[0].copy_(wv[g0:g1, 0, sl])
            x[1:d].copy_(hb)
            if sc is not None:
                read.into(x[d:], g0, g1, sl)
            z = torch.bmm(w_in.expand(n, -1, -1), x.transpose(0, 1))  # (n, width, rows)
            z4 = z.view(n, -1, a1 - a0, blk.b)
            r_b = blk.rows_b[g0:g1] if blk.a == 1 else blk.rows_b[g0:g1, a0:a1]
            heads = t_f[blk.rows_f[g0:g1]]  # (n, 1, b, width)
            tails = t_b[r_b]  # (n, a, 1, width), or (n, 1, b, width) for biases
            if terms is not None:
                heads, tails = terms.add(heads, tails, layer, bool(bias), g0, g1, a0, a1)
            z4.add_(heads.permute(0, 3, 1, 2).contiguous())  # (n, width, 1, b)
            z4.add_(tails.permute(0, 3, 1, 2).contiguous())  # (n, width, a | 1, 1 | b)
            z = _hidden_channel_major(layers[1:-1], z)
            dh = torch.baddbmm(b_last, w_last.expand(n, -1, -1), z)  # (n, L, rows)
            _update(rule, dh.transpose(0, 1), hb[k:], mv[:, g0:g1, sl], h_newc[k:, g0:g1, sl])


def _chunks(g: int, blk: DenseBlock, chunk: int) -> list[tuple[int, int, int, int]]:
    """``(g0, g1, a0, a1)``: the nets ``g0:g1`` and tails ``a0:a1`` of each chunk of a block,
    about ``chunk`` weights each: whole layers of several nets, or runs of one net's tails."""
    if blk.rows <= chunk:
        step = chunk // blk.rows  # nets per chunk
        return [(g0, min(g, g0 + step), 0, blk.a) for g0 in range(0, g, step)]
    step = max(1, chunk // blk.b)  # tails per chunk
    return [(i, i + 1, a0, min(blk.a, a0 + step)) for i in range(g) for a0 in range(0, blk.a, step)]


class _ChunkReader:
    """The senses as the MLP reads them (:meth:`gnca.LocalRule.read`), one chunk at a time:
    with ``sense_norm`` the rescaled columns are divided by their nets' divisors (computed
    once from the whole columns) and soft-clipped in the chunk's buffer, the same operations
    as :func:`gnca.senses.normalised` on the whole ``(E, S)`` (when growing), so the same
    values bit for bit, without its copy of all the senses. ``cols``: the sense column of each
    row of ``sc``."""

    def __init__(self, rule: LocalRule, sc: torch.Tensor | None, cols: list[int]) -> None:
        self.sc = sc  # (rows, G, E / G) channel-major senses, or None
        norm = normalised_columns(rule.senses) if rule.sense_norm and sc is not None else []
        self.rows = [r for r, j in enumerate(cols) if j in norm]
        self.div = {r: net_divisor(sc[r], rule.sense_floor) for r in self.rows}  # (G, 1) each

    def into(self, out: torch.Tensor, g0: int, g1: int, sl: slice) -> torch.Tensor:
        """Write the chunk's senses as the MLP reads them into ``out`` ``(S, g1 - g0, rows)``."""
        assert self.sc is not None
        raw = self.sc[:, g0:g1, sl]
        out.copy_(raw)
        for r in self.rows:
            col = torch.div(raw[r], self.div[r][g0:g1], out=out[r])  # (n, rows)
            col.div_(col.abs().add_(1))  # soft_clip, x / (1 + |x|)
        return out


class _NeuronTerms:
    """What the senses that are one value per neuron or per net add to the first layer of the
    dense route (:class:`gnca.factored_senses.FactoredSenses`): ``W_s s`` per tail, per head and
    per net, added to the per-neuron rows of the neighbour terms instead of to every weight
    (with ``sense_norm``, the head columns it rescales divided by their nets' root mean square
    over the weights they broadcast to, and soft-clipped, as :func:`gnca.senses.normalised`
    does, up to the order of the sums' additions)."""

    def __init__(self, rule: LocalRule, fs: FactoredSenses, ws: torch.Tensor, per: int) -> None:
        norm = normalised_columns(rule.senses) if rule.sense_norm else []
        kinds = {k: fs.columns(k) for k in ("tail", "head", "net")}
        heads = [f.head for f in fs.layers]  # (G, b, Qh) each
        for q, j in enumerate(kinds["head"]):
            if j in norm:  # mean square over the weights: each head's value a + 1 times
                ms = sum((f.tail.shape[1] * f.head[:, :, q].square()).sum(1) for f in fs.layers)
                div = rms_divisor(ms.unsqueeze(1) / per, rule.sense_floor)  # (G, 1)
                heads = [_with_column(x, q, soft_clip(x[:, :, q] / div)) for x in heads]
        self.tail = [f.tail @ ws[:, kinds["tail"]].t() for f in fs.layers]  # (G, a + 1, width)
        self.head = [x @ ws[:, kinds["head"]].t() for x in heads]  # (G, b, width)
        self.net = fs.net @ ws[:, kinds["net"]].t()  # (G, width)

    def add(
        self,
        heads: torch.Tensor,
        tails: torch.Tensor,
        layer: int,
        bias: bool,
        g0: int,
        g1: int,
        a0: int,
        a1: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A chunk's head rows ``(n, 1, b, width)`` and tail rows (``(n, a, 1, width)``, or
        ``(n, 1, b, width)`` for a layer's biases) with these terms added: the head's and the
        net's to the heads, the tail's (the bias neuron's for biases) to the tails."""
        n = g1 - g0
        heads = heads + self.head[layer][g0:g1].unsqueeze(1) + self.net[g0:g1].view(n, 1, 1, -1)
        tail = self.tail[layer]
        if bias:
            return heads, tails + tail[g0:g1, -1].view(n, 1, 1, -1)
        return heads, tails + tail[g0:g1, a0:a1].unsqueeze(2)


def _with_column(x: torch.Tensor, q: int, col: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., Q)`` with its column ``q`` replaced by ``col`` (a new tensor)."""
    out = x.clone()
    out[..., q] = col
    return out


def _channel_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(E, C)`` as a contiguous ``(C, E)``: a view when ``x`` is channel-major (as
    this route's states and the dense senses are), else a copy."""
    return x.t().contiguous()


def _hidden_channel_major(layers: list[nn.Module], z: torch.Tensor) -> torch.Tensor:
    """The MLP's modules between its first and last linear layers on channel-major ``z``
    ``(n, width, rows)``, without autograd: activations in place (else as modules), hidden
    linear layers as batched products."""
    for mod in layers:
        if isinstance(mod, nn.Linear):
            z = torch.baddbmm(mod.bias.unsqueeze(1), mod.weight.expand(z.shape[0], -1, -1), z)
        else:
            z = activate_(mod, z)
    return z


def _update(
    rule: LocalRule,
    dh: torch.Tensor,
    h0: torch.Tensor,
    m: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The new live channels from the MLP's raw outputs ``dh`` (overwritten): the bound, then
    the masked (and state-bounded) update ``h0 + m (...)``, ``m`` broadcast to ``h0``; into
    ``out`` (any layout of ``h0``'s shape) when given. Its tanh is :func:`_tanh_`."""
    if rule.bound is not None:
        dh = _tanh_(dh.div_(rule.bound)).mul_(rule.bound)
    sb = rule.state_bound
    if sb is None:
        return torch.addcmul(h0, dh, m, out=out) if out is not None else torch.addcmul(h0, dh, m)
    # h + m * (sb * tanh((h + dh) / sb) - h); dividing and multiplying by 1 changes nothing
    u = dh.add_(h0)
    u = _tanh_(u) if sb == 1.0 else _tanh_(u.div_(sb)).mul_(sb)
    if out is None:
        return torch.addcmul(h0, u.sub_(h0), m)
    return torch.addcmul(h0, u.sub_(h0), m, out=out)


def _dense_sums(
    plan: DensePlan, n: int, w: torch.Tensor, hc: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The ``"in"`` and ``"out"`` sums ``(N, D)`` of ``x = [w, h]`` over each neuron's in- and
    out-weights (as :func:`gnca.perception.neuron_sums` gives them, up to the order of the
    additions), from reductions over each block's tails and heads; ``hc``: the states
    channel-major, ``(C, G, E / G)``."""
    g, per = plan.nets, plan.per_net
    parts = (w.view(1, g, per), hc)  # (channels, G, E / G) each
    sums = {k: [x.new_zeros(n, x.shape[0]) for x in parts] for k in ("in", "out")}
    for blk in plan.blocks:
        heads, tails = blk.rows_f.flatten() - 1, blk.rows_b.flatten() - 1 - n
        for x, s_in, s_out in zip(parts, sums["in"], sums["out"], strict=True):
            xb = x[:, :, blk.start : blk.start + blk.rows].view(-1, g, blk.a, blk.b)
            s_in.index_add_(0, heads, _rows(xb.sum(2)))  # over each head's tails
            out = xb.sum(3) if blk.rows_b.shape[2] == 1 else xb  # biases: one tail per head
            s_out.index_add_(0, tails, _rows(out))
    return {k: torch.cat(v, dim=1) for k, v in sums.items()}


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Channel-major ``x`` ``(channels, ...)`` as rows ``(prod(...), channels)``."""
    return x.movedim(0, -1).reshape(-1, x.shape[0])


def _live(
    rule: LocalRule,
    z: torch.Tensor,
    h_live: torch.Tensor,
    m: torch.Tensor,
    out: torch.Tensor,
    bufs: dict[int, torch.Tensor],
) -> None:
    """Write the new surviving hidden channels into ``out`` (a view of ``h_new``, the shape of
    ``h_live``, ``(rows, L)``) from the first layer's output ``z`` ``(rows, width)``: the rest
    of the MLP (its last layer on those channels only, as ``(L, rows)``), then
    :func:`_update` (``m`` ``(rows, 1)``). The update runs channel-major on a contiguous copy
    of ``h_live`` (the channels are strided in the states) and is written back once."""
    layers = list(rule.mlp)
    last = layers[-1]
    assert isinstance(last, nn.Linear)
    k = rule.moment_channels
    z = hidden_no_grad(layers[1:-1], z, bufs)
    dh = torch.addmm(last.bias[1 + k :].unsqueeze(1), last.weight[1 + k :], z.t())  # (L, rows)
    new = _update(rule, dh, h_live.t().contiguous(), m.t())
    out.copy_(new.t())


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` of ``x`` in place, as ``2 sigmoid(2x) - 1``: the same function, several times
    faster than ``torch.tanh`` on CPU (measured about 6x on this project's machine), with an
    absolute rounding error of a few units in the last place of 1 instead of a relative one."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)
