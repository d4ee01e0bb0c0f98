r"""Senses: what a data-reading rule perceives of the task, beside its neighbours.

At every rule step a minibatch of training examples runs through the task nets, without
autograd of the task loss and with the weights detached. Per-neuron statistics reach each weight
``u -> v`` through its two neurons (the same ``O(E)`` gather as the perception's neighbour
sums), and per-weight products are formed where they are local. Over a batch of ``B`` examples,
with ``a`` the neurons' activations (inputs: the features; bias neurons: 1; outputs: the softmax)
and ``m`` a per-example error message at every computed neuron:

======== ====== =====================================================================
name     size   per weight ``u -> v`` (each mean over the batch)
======== ====== =====================================================================
``act``   2     :math:`\bar a_u,\ \bar a_v` (tail and head activations)
``hebb``  1     :math:`\overline{a_u a_v}` (Hebbian product)
``error`` 1     :math:`\bar m_v` (the head's error message)
``delta`` 1     :math:`\overline{a_u m_v}` (tail activation times head error)
``loss``  1     the net's cross-entropy divided by :math:`\log(\text{classes})`
======== ====== =====================================================================

Every sense but ``loss`` is soft-clipped, ``s = x / (1 + |x|)``, so one rule reads nets of any
width and data of any scale.

**Error messages without backprop.** At an output neuron ``m = softmax - onehot(label)``. A
hidden neuron ``u`` receives :math:`m_u = \phi'(z_u) \sum_{v \in out(u)} f_{uv} m_v`, where
:math:`f_{uv}` is the *feedback* read from the weight's own hidden state, its last channel
:math:`h_{uv, C-1}`, which the rule writes like any other channel. The task weights ``w`` never
enter the backward messages (that would be backpropagation written by hand), and no autograd of
the task loss is ever taken: the messages are a learned feedback pathway, as in feedback
alignment with learned feedback weights (MPLP and VSML learn such backward messages for one
fixed architecture; here they run on any DAG). The messages are differentiable in ``h`` (so
meta-training learns the feedback), while the forward pass is detached from ``w`` (first-order,
as learned optimisers treat their gradient inputs).

Layer nets (:mod:`gnca.layers`) read the same products summed over the positions where a shared
weight is used (:mod:`gnca.layer_senses`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from gnca.architecture import BIAS, INPUT, OUTPUT
from gnca.augment import NetAugment, mask_logits
from gnca.factored_senses import KINDS, FactoredSenses, LayerFactors
from gnca.forward import TASK_ACTIVATIONS, effective_weights
from gnca.graph import (
    cached,
    common_attr,
    num_graphs,
    same_architecture,
    total_neurons,
    weight_batch,
)

#: sense name -> number of channels it adds to the perception
SENSES: dict[str, int] = {"act": 2, "hebb": 1, "error": 1, "delta": 1, "loss": 1}

#: senses that need the backward messages (and so the feedback channel of ``h``)
NEEDS_FEEDBACK = ("error", "delta")

#: ``layer_senses(net, w, feedback, X, y, names, n_classes, fan_in_ref, class_mask)``, the senses
#: of layer nets: set by :mod:`gnca.layer_senses` (which builds on this module) when gnca is
#: imported
LAYER_SENSES: Any = None


def check_senses(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple in canonical order, or a ValueError naming the unknown one."""
    names = tuple(names)
    for n in names:
        if n not in SENSES:
            raise ValueError(f"unknown sense {n!r}; choose from {', '.join(SENSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"senses repeat: {list(names)}")
    return tuple(n for n in SENSES if n in names)


def sense_size(names: Sequence[str]) -> int:
    """Channels the senses ``names`` add to each weight's perception."""
    return sum(SENSES[n] for n in check_senses(names))


def derivative(activation: str, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """:math:`\\phi'(z)` of the task activation, from ``z`` and ``a = \\phi(z)``."""
    if activation == "tanh":
        return 1 - a * a
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "sigmoid":
        return a * (1 - a)
    if activation == "identity":
        return torch.ones_like(z)
    if activation == "gelu":
        cdf = 0.5 * (1 + torch.erf(z / 2**0.5))
        return cdf + z * torch.exp(-0.5 * z * z) / (2 * torch.pi) ** 0.5
    raise ValueError(f"no derivative for task activation {activation!r}")


def _plan(graph: Data) -> dict:
    """Structure-only index tensors of the sense pass (cached on the graph)."""

    def build() -> dict:
        lvl, kind = graph.neuron_level, graph.neuron_kind
        computed = (kind != INPUT) & (kind != BIAS)
        forward = []  # per level, ascending: (edges into it, its neurons, which are outputs)
        for level in torch.unique(lvl[computed]).tolist():
            edges = torch.nonzero(lvl[graph.dst] == level).flatten()
            neurons = torch.nonzero(computed & (lvl == level)).flatten()
            forward.append((edges, neurons, kind[neurons] == OUTPUT))
        hidden = computed & (kind != OUTPUT)
        backward = []  # per hidden level, descending: (edges out of it, its neurons)
        for level in sorted(torch.unique(lvl[hidden]).tolist(), reverse=True):
            edges = torch.nonzero(hidden[graph.src] & (lvl[graph.src] == level)).flatten()
            backward.append((edges, torch.nonzero(hidden & (lvl == level)).flatten()))
        return {
            "forward": forward,
            "backward": backward,
            "bias": torch.nonzero(kind == BIAS).flatten(),
        }

    return cached(graph, ("senses",), build)


@dataclass
class NeuronStats:
    """What one batch did in the task nets.

    Attributes:
        a: ``(N, B)`` activations (inputs: features, biases: 1, outputs: softmax).
        m: ``(N, B)`` error messages (0 at inputs and biases), or ``None``.
        loss: ``(G,)`` cross-entropy of every net on the batch.
    """

    a: torch.Tensor
    m: torch.Tensor | None
    loss: torch.Tensor


def neuron_stats(
    graph: Data,
    w: torch.Tensor,
    feedback: torch.Tensor | None,
    X: torch.Tensor,
    y: torch.Tensor,
    activation: str = "tanh",
    fan_in_ref: float | None = None,
    class_mask: torch.Tensor | None = None,
) -> NeuronStats:
    """Run ``X (B, F)`` (or ``(G, B, F)``) through every net and send the errors back.

    Args:
        graph: a batch of ``G`` weight graphs, ``E`` weights, ``N`` neurons.
        w: ``(E,)`` weights (detached here).
        feedback: ``(E,)`` feedback weights of the backward messages, or ``None`` for no
            messages.
        X: inputs; y: ``(B,)`` labels shared by all nets or ``(G, B)`` one set per net.
        activation, fan_in_ref: the task's forward conventions.
        class_mask: ``(G, n_out)`` bool, the classes each net learns (class subsets): the
            others' logits are masked out of the loss and the softmax (their error is 0).
    """
    act = TASK_ACTIVATIONS[activation]
    plan = _plan(graph)
    g = num_graphs(graph)
    n = total_neurons(graph)
    with torch.no_grad():
        we = effective_weights(graph, w.detach(), fan_in_ref)
        if X.dim() == 2:
            X = X.unsqueeze(0).expand(g, -1, -1)
        b = X.shape[1]
        A = we.new_zeros(n, b)  # (N, B)
        Z = we.new_zeros(n, b)
        A = A.index_put((graph.input_index,), X.to(we.dtype).transpose(1, 2).reshape(-1, b))
        if plan["bias"].numel():
            A = A.index_put((plan["bias"],), we.new_ones(plan["bias"].numel(), b))
        for edges, neurons, is_out in plan["forward"]:
            contrib = we[edges, None] * A[graph.src[edges]]  # (E_l, B)
            z = we.new_zeros(n, b).index_add(0, graph.dst[edges], contrib)[neurons]  # (N_l, B)
            Z = Z.index_put((neurons,), z)
            A = A.index_put((neurons,), torch.where(is_out[:, None], z, act(z)))
        n_out = graph.output_index.numel() // g
        logits = A[graph.output_index].view(g, n_out, b).transpose(1, 2)  # (G, B, n_out)
        logits = mask_logits(logits, class_mask)
        yy = y if y.dim() == 2 else y.unsqueeze(0).expand(g, -1)  # (G, B)
        loss = F.cross_entropy(logits.reshape(g * b, n_out), yy.reshape(-1), reduction="none")
        loss = loss.view(g, b).mean(1)
        prob = logits.softmax(-1)  # (G, B, n_out)
        err = prob - F.one_hot(yy, n_out).to(prob.dtype)
        A = A.index_put((graph.output_index,), prob.transpose(1, 2).reshape(-1, b))
        deriv = derivative(activation, Z, A)  # (N, B); only hidden rows are used
    M = None
    if feedback is not None:  # differentiable in the feedback (h), not in w
        M = A.new_zeros(n, b).index_put((graph.output_index,), err.transpose(1, 2).reshape(-1, b))
        for edges, neurons in plan["backward"]:
            back = feedback[edges, None] * M[graph.dst[edges]]  # (E_l, B)
            total = A.new_zeros(n, b).index_add(0, graph.src[edges], back)[neurons]  # (N_l, B)
            M = M.index_put((neurons,), total * deriv[neurons])
    return NeuronStats(A, M, loss)


def dense_sizes(graph: Data) -> list[int] | None:
    """The layer sizes when ``graph`` is a batch of one MLP with biases, else ``None``."""
    if not same_architecture(graph):
        return None
    sizes = common_attr(graph, "mlp_sizes")
    if sizes is None:
        return None
    sizes = list(sizes)
    e = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    if graph.src.numel() != e * num_graphs(graph):  # an MLP without biases
        return None
    return sizes


#: senses that :func:`normalised` rescales (the error signals, which shrink as a net learns)
NORMALISED = ("error", "delta")


def normalised(
    graph: Data, senses: torch.Tensor, names: Sequence[str], floor: float = 0.0
) -> torch.Tensor:
    """``senses (E, S)`` with the ``error`` and ``delta`` columns of every net divided by their
    root mean square over that net's weights and soft-clipped again (the other columns as
    they are): a rule with ``sense_norm`` reads the direction of its error signals at every
    scale, as Adam reads its gradient divided by its running RMS (here one RMS per net and
    step, no running state). With a ``floor`` the divisor is ``max(rms, floor)``: signals
    weaker than the floor keep their true scale, as Adam's epsilon keeps a vanishing gradient
    small, so that a net that fits its data exactly is not pushed by its rounding errors. New
    tensor, differentiable."""
    cols = normalised_columns(names)
    if not cols:
        return senses
    g = num_graphs(graph)  # no device sync: g from the structure
    if not torch.is_grad_enabled() and _equal_runs(graph, g):
        return _normalised_by_net(senses, cols, g, floor)
    batch = weight_batch(graph)
    sq = senses.new_zeros(g, senses.shape[1]).index_add(0, batch, senses * senses)
    count = torch.bincount(batch, minlength=g).to(senses.dtype).clamp_min(1)
    rms = _rms(sq / count[:, None], floor)[batch]  # (E, S)
    scaled = soft_clip(senses / (rms + 1e-6))
    keep = torch.zeros(senses.shape[1], dtype=torch.bool, device=senses.device)
    keep[cols] = True
    return torch.where(keep, scaled, senses)


def _rms(ms: torch.Tensor, floor: float) -> torch.Tensor:
    """The root of mean squares ``ms``, at least ``floor`` when one is set. sqrt has an infinite
    slope at 0: a net whose column is all 0 (a saturated net's error) takes the root of 1 times
    0 instead, the same value with a finite (zero) gradient."""
    live = ms > 0
    rms = torch.where(live, ms, torch.ones_like(ms)).sqrt() * live
    return rms.clamp_min(floor) if floor else rms


def _equal_runs(graph: Data, g: int) -> bool:
    """Whether the ``g`` nets' weights are ``g`` contiguous runs of one length, in order (a
    batch of one architecture); checked once per graph."""

    def check() -> bool:
        b = weight_batch(graph)
        if b.numel() % g:
            return False
        return bool((b.view(g, -1) == torch.arange(g, device=b.device).unsqueeze(1)).all())

    return cached(graph, ("equal_net_runs", g), check)


def _normalised_by_net(senses: torch.Tensor, cols: list[int], g: int, floor: float) -> torch.Tensor:
    """:func:`normalised` when growing ``g`` nets whose weights are contiguous runs of ``E / g``
    (a batch of one architecture): per-net means of squares by a reduction over each
    run, only on the rescaled columns, written into a copy of ``senses``. The same values up to
    the order of the sums' additions (``tests/test_senses.py``)."""
    out = senses.clone()
    per_net = out.view(g, senses.shape[0] // g, -1)  # (G, E / G, S)
    for j in cols:
        col = per_net[:, :, j]  # (G, E / G)
        per_net[:, :, j] = soft_clip(col / net_divisor(col, floor))
    return out


def normalised_columns(names: Sequence[str]) -> list[int]:
    """The columns of the senses ``names`` that :func:`normalised` rescales."""
    cols = [n for n in check_senses(names) for _ in range(SENSES[n])]
    return [j for j, n in enumerate(cols) if n in NORMALISED]


def net_divisor(col: torch.Tensor, floor: float) -> torch.Tensor:
    """``(G, 1)`` what :func:`normalised` divides a column ``col`` ``(G, E / G)`` of a batch of
    one architecture by, per net: its root mean square (at least ``floor``) plus ``1e-6``."""
    return rms_divisor(col.square().mean(1, keepdim=True), floor)


def rms_divisor(ms: torch.Tensor, floor: float) -> torch.Tensor:
    """What :func:`normalised` divides a column by, from its mean square ``ms``: the root (at
    least ``floor``) plus ``1e-6``."""
    return _rms(ms, floor) + 1e-6


def soft_clip(x: torch.Tensor) -> torch.Tensor:
    """``x / (1 + |x|)``: into (-1, 1), the identity near 0."""
    return x / (1 + x.abs())


def weight_senses(
    graph: Data, stats: NeuronStats, names: Sequence[str], n_classes: int
) -> torch.Tensor:
    """``(E, S)`` senses of every weight from the neuron statistics (see the module docstring)."""
    names = check_senses(names)
    a_u, a_v = stats.a[graph.src], stats.a[graph.dst]  # (E, B)
    m_v = stats.m[graph.dst] if stats.m is not None else None
    out: list[torch.Tensor] = []
    for name in names:
        if name == "act":
            out += [soft_clip(a_u.mean(1)), soft_clip(a_v.mean(1))]
        elif name == "hebb":
            out.append(soft_clip((a_u * a_v).mean(1)))
        elif name == "loss":
            per = stats.loss / torch.log(torch.tensor(float(n_classes)))  # (G,)
            out.append(per[weight_batch(graph)].to(a_u.dtype))
        else:
            if m_v is None:
                raise ValueError(f"sense {name!r} needs the backward messages (feedback)")
            out.append(soft_clip(m_v.mean(1) if name == "error" else (a_u * m_v).mean(1)))
    return torch.stack(out, 1)  # (E, S)


def _dense_pass(
    sizes: list[int],
    w: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    activation: str,
    fan_in_ref: float | None,
    class_mask: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Activations ``A[l] (G, B, n_l)`` (outputs: softmax), pre-activations ``Z[l]``, the
    ``(G,)`` loss and the output error ``(G, B, n_out)`` of ``G`` MLPs, without autograd
    (``class_mask``: as in :func:`neuron_stats`)."""
    act = TASK_ACTIVATIONS[activation]
    n_layers = len(sizes) - 1
    with torch.no_grad():
        W = w.detach().view(-1, sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)))
        g = W.shape[0]
        A = [(X if X.dim() == 3 else X.unsqueeze(0).expand(g, -1, -1)).to(W.dtype)]
        Z, off = [], 0
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            scale = float(fan_in_ref) / a if fan_in_ref is not None else 1.0
            Wi = W[:, off : off + a * b].view(g, a, b) * scale  # (G, a, b)
            z = torch.baddbmm(W[:, off + a * b : off + a * b + b].unsqueeze(1), A[-1], Wi)
            off += a * b + b
            Z.append(z)  # (G, B, b)
            A.append(z if i == n_layers - 1 else act(z))
        n_out = sizes[-1]
        A[-1] = mask_logits(A[-1], class_mask)
        yy = y if y.dim() == 2 else y.unsqueeze(0).expand(g, -1)  # (G, B)
        loss = F.cross_entropy(A[-1].reshape(-1, n_out), yy.reshape(-1), reduction="none")
        A[-1] = A[-1].softmax(-1)
        err = A[-1] - F.one_hot(yy, n_out).to(A[-1].dtype)
    return A, Z, loss.view(g, -1).mean(1), err


def _dense_messages(
    sizes: list[int], fb: torch.Tensor, A: list, Z: list, err: torch.Tensor, activation: str
) -> list[torch.Tensor | None]:
    """Error messages ``M[l] (G, B, n_l)`` of every computed layer from the feedback ``fb``
    ``(G, E)`` (differentiable in it): ``M[L] = err``, ``M[l] = phi'(z_l) (M[l+1] F_l^T)``."""
    M: list[torch.Tensor | None] = [None] * len(sizes)
    M[-1] = err
    off = fb.shape[1]
    for i in range(len(sizes) - 2, 0, -1):  # messages into hidden layer i
        a, b = sizes[i], sizes[i + 1]
        off -= a * b + b
        F_i = fb[:, off : off + a * b].view(-1, a, b)  # (G, a, b)
        M[i] = torch.bmm(M[i + 1], F_i.transpose(1, 2)) * derivative(activation, Z[i - 1], A[i])
    return M


def dense_senses(
    sizes: Sequence[int],
    w: torch.Tensor,
    feedback: torch.Tensor | None,
    X: torch.Tensor,
    y: torch.Tensor,
    names: Sequence[str],
    activation: str = "tanh",
    fan_in_ref: float | None = None,
    class_mask: torch.Tensor | None = None,
    factored: bool = False,
) -> torch.Tensor | FactoredSenses:
    """:func:`weight_senses` of :func:`neuron_stats` for ``G`` identical MLPs with biases
    (the layout of :meth:`gnca.Architecture.mlp`), with batched matmuls: the per-weight batch
    means of products are ``A_l^T A_{l+1} / B`` per layer. ``w``, ``feedback``: ``(G * E,)``;
    returns ``(G * E, S)``, equal to the general path up to float rounding (without gradients,
    a transposed view of a contiguous ``(S, G * E)``); with ``factored`` (without gradients
    only) the same senses as :class:`gnca.factored_senses.FactoredSenses`."""
    names, sizes = check_senses(names), list(sizes)
    A, Z, loss, err = _dense_pass(sizes, w, X, y, activation, fan_in_ref, class_mask)
    g = A[0].shape[0]
    e = w.shape[0] // g
    M = (
        _dense_messages(sizes, feedback.view(g, e), A, Z, err, activation)
        if feedback is not None
        else [None] * len(sizes)
    )
    loss = loss / torch.log(torch.tensor(float(sizes[-1])))  # (G,)
    layers = [_layer_columns(names, A[i], A[i + 1], M[i + 1], loss) for i in range(len(sizes) - 1)]
    if torch.is_grad_enabled():
        if factored:
            raise ValueError("factored senses are for growing (without gradients)")
        cols = [_dense_layer(per) for per in layers]
        return torch.cat(cols, 1).reshape(g * e, -1)  # (G * E, S)
    if factored:
        return _factored(names, sizes, layers, g, e)
    # growing: each column written once into its place (the same values, without the narrow
    # concatenations, slow on CPU), channel-major: the (G * E, S) result is the transpose of a
    # contiguous (S, G * E), so that every write and every later read of a column (the
    # normalisation, the descent path) is contiguous; a layer's (G, a + 1, b) block is its
    # weights, then biases
    out = loss.new_empty(len(layers[0]), g, e)
    off = 0
    for per in layers:
        a1, b = per[0].shape[1:]
        block = out[:, :, off : off + a1 * b].view(-1, g, a1, b)
        for j, col in enumerate(per):
            block[j] = col
        off += a1 * b
    return out.view(-1, g * e).t()


def _factored(
    names: tuple[str, ...], sizes: list[int], layers: list[list[torch.Tensor]], g: int, e: int
) -> FactoredSenses:
    """The layers' columns (:func:`_layer_columns`, ``(G, a + 1, b)`` each) as
    :class:`FactoredSenses`: the per-weight ones written into ``(P, G, E / G)`` rows, the
    broadcast ones kept per tail, head or net (the values they broadcast, so the same bits)."""
    kinds = tuple(k for n in names for k in KINDS[n])
    cols = {k: [j for j, kk in enumerate(kinds) if kk == k] for k in ("weight", "tail", "head")}
    first = layers[0][0]
    weight = first.new_empty(len(cols["weight"]), g, e)
    factors, off = [], 0
    for per in layers:
        a1, b = per[0].shape[1:]
        block = weight[:, :, off : off + a1 * b].view(-1, g, a1, b)
        for i, j in enumerate(cols["weight"]):
            block[i] = per[j]
        tail = _stack([per[j][:, :, 0] for j in cols["tail"]], weight, (g, a1))  # (G, a + 1, Qt)
        head = _stack([per[j][:, 0, :] for j in cols["head"]], weight, (g, b))  # (G, b, Qh)
        factors.append(LayerFactors(tail, head))
        off += a1 * b
    net = _stack([layers[0][j][:, 0, 0] for j, k in enumerate(kinds) if k == "net"], weight, (g,))
    return FactoredSenses(kinds, weight, tuple(factors), net, tuple(sizes))


def _stack(cols: list[torch.Tensor], like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``cols`` (each ``shape``) stacked on a last dimension; ``(*shape, 0)`` (of ``like``'s
    dtype and device) when empty."""
    if not cols:
        return like.new_empty(*shape, 0)
    return torch.stack(cols, -1)


def _layer_columns(
    names: tuple[str, ...],
    tail: torch.Tensor,
    head: torch.Tensor,
    m: torch.Tensor | None,
    loss: torch.Tensor,
) -> list[torch.Tensor]:
    """The ``S`` sense columns of one layer's weights and biases, each ``(G, a + 1, b)`` (row
    ``a``: the biases, whose tail activation is 1), from the tail activations ``(G, B, a)``,
    head activations and messages ``(G, B, b)`` and the scaled ``(G,)`` loss: each column
    soft-clipped (but ``loss``) before it is broadcast to the weights, where that costs one
    value per neuron, not per weight. The columns that carry a gradient (those of the messages)
    are clipped per weight, so that their backward adds the same terms in the same order as
    clipping the whole ``(E, S)`` block did."""
    g, b_n, a = tail.shape
    b = head.shape[2]
    tail1 = torch.cat([tail, tail.new_ones(g, b_n, 1)], 2)  # the bias neuron's activation is 1
    shape = (g, a + 1, b)
    per: list[torch.Tensor] = []  # each (G, a + 1, b)
    for name in names:
        if name == "act":
            per.append(soft_clip(tail1.mean(1))[:, :, None].expand(shape))
            per.append(soft_clip(head.mean(1))[:, None, :].expand(shape))
        elif name == "hebb":
            per.append(soft_clip(torch.bmm(tail1.transpose(1, 2), head) / b_n))
        elif name == "loss":
            per.append(loss[:, None, None].expand(shape))
        elif m is None:
            raise ValueError(f"sense {name!r} needs the backward messages (feedback)")
        elif name == "error":
            mean = m.mean(1)  # (G, b)
            if m.requires_grad:
                per.append(soft_clip(mean[:, None, :].expand(shape)))
            else:
                per.append(soft_clip(mean)[:, None, :].expand(shape))
        else:
            per.append(soft_clip(torch.bmm(tail1.transpose(1, 2), m) / b_n))
    return per


def _dense_layer(per: list[torch.Tensor]) -> torch.Tensor:
    """``(G, a * b + b, S)`` senses of one layer's weights, then its biases, from its columns
    (:func:`_layer_columns`)."""
    return torch.stack(per, -1).flatten(1, 2)  # (G, a + 1, b, S): weights row-major, biases


#: what the backward messages of the error senses are multiplied by (:class:`SenseReader`)
FEEDBACKS = ("learned", "weights")


def feedback_of(
    graph: Data, w: torch.Tensor, h: torch.Tensor, source: str, fan_in_ref: float | None
) -> torch.Tensor:
    """``(E,)`` feedback weights of the backward messages: the last hidden channel of ``h``
    ``(E, C)`` (``source`` ``"learned"``), or the weights ``w`` ``(E,)`` as the forward pass
    scales them, detached (``"weights"``: the messages are then backpropagated errors)."""
    if source == "learned":
        return h[:, -1]
    return effective_weights(graph, w.detach(), fan_in_ref).to(h.dtype)


def feedback_alignment(
    graph: Data, w: torch.Tensor, feedback: torch.Tensor, fan_in_ref: float | None
) -> torch.Tensor:
    """``(G,)`` cosine, per net, between the feedback ``(E,)`` and the weights ``w (E,)`` as
    the forward pass scales them (detached), over the weights whose backward messages reach a
    hidden neuron (the only ones the error senses read the feedback of): 1 where the messages
    are backpropagated errors up to a positive scale, 0 for a feedback unrelated to the
    weights. Differentiable in ``feedback``; 0 for a net with no such weights."""
    if getattr(graph, "layer_net", None) is not None:
        raise ValueError("feedback alignment is measured on MLP-like weight graphs, not layer nets")
    g = num_graphs(graph)

    def build() -> tuple[torch.Tensor, torch.Tensor]:  # (U,) those weights, (U,) their nets
        used = torch.cat([edges for edges, _ in _plan(graph)["backward"]] or [graph.src[:0]])
        return used, weight_batch(graph)[used]

    used, net = cached(graph, ("feedback_used",), build)  # structure only: once per graph
    we = effective_weights(graph, w.detach(), fan_in_ref)[used].to(feedback.dtype)
    fb = feedback[used]
    sums = fb.new_zeros(g, 3).index_add(0, net, torch.stack([fb * we, fb * fb, we * we], 1))
    return sums[:, 0] / (sums[:, 1] * sums[:, 2]).clamp_min(1e-24).sqrt()  # 0 where U is empty


class SenseReader:
    """Draws a data batch at every rule step and turns it into the senses of every weight.

    Args:
        names: the senses (:data:`SENSES`).
        task: the task whose training split is read (its forward conventions are used).
        batch_size: examples per rule step.
        generator: a CPU generator for the batch indices.
        permutation: optional ``(G, classes)`` label permutation per net (an augmentation:
            net ``i`` sees label ``c`` as ``permutation[i, c]``).
        feedback: what the backward messages of the ``error`` and ``delta`` senses are
            multiplied by: ``"learned"`` (default), the last hidden channel of each weight (a
            learned feedback pathway, as in feedback alignment), or ``"weights"``, the weights
            themselves as the forward pass scales them (detached): the messages are then the
            exact error backpropagated through the net, computed by message passing.

    Attributes:
        augment: the nets' feature transforms and class subsets (:class:`gnca.augment.NetAugment`,
            with the same permutation as :attr:`permutation`, which labels the batches), or
            ``None``; a meta-step hands both in with :meth:`bind`.
    """

    def __init__(
        self,
        names: Sequence[str],
        task,
        batch_size: int = 64,
        generator: torch.Generator | None = None,
        permutation: torch.Tensor | None = None,
        feedback: str = "learned",
    ) -> None:
        if feedback not in FEEDBACKS:
            raise ValueError(f"unknown feedback {feedback!r}; choose one of {', '.join(FEEDBACKS)}")
        self.feedback_source = feedback
        self.names = check_senses(names)
        self.task = task
        self.batch_size = int(batch_size)
        self.generator = generator if generator is not None else torch.Generator()
        self.permutation = permutation
        self.augment: NetAugment | None = None
        self.feedback = any(n in NEEDS_FEEDBACK for n in self.names)

    def bind(self, permutation: torch.Tensor | None, augment: NetAugment | None) -> SenseReader:
        """A reader of the same task and generator for nets learning under ``permutation`` and
        ``augment`` (one meta-step's task variants); this reader is left as it is."""
        bound = copy.copy(self)
        bound.permutation, bound.augment = permutation, augment
        return bound

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """``y (B,)`` (or ``(G, B)``) as each net sees it: ``(G, B)`` under a permutation, else
        ``y``."""
        if self.permutation is None:
            return y
        return NetAugment(self.permutation).labels(y)  # (G, B)

    def batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``X (B, F)``, ``y (B,)`` drawn with replacement; under class subsets
        (:attr:`augment`) one batch per net of its own classes, ``(G, B, F)``, ``(G, B)``."""
        X, y = self.task.split("train", device)
        aug = self.augment
        if aug is not None and aug.classes is not None:
            return aug.draw(X, y, self.batch_size, self.generator, replacement=True)
        idx = torch.randint(0, X.shape[0], (self.batch_size,), generator=self.generator)
        idx = idx.to(X.device)
        return X[idx], y[idx]

    def __call__(
        self, graph: Data, w: torch.Tensor, h: torch.Tensor, *, factored: bool = False
    ) -> torch.Tensor | FactoredSenses:
        """``(E, S)`` senses of the nets ``(w, h)`` on a fresh training batch; with
        ``factored`` (growing a batch of one MLP with biases: what :func:`gnca.grow.grow` asks
        for when :meth:`gnca.LocalRule.reads_factored`), the same senses as
        :class:`gnca.factored_senses.FactoredSenses`."""
        X, y = self.batch(w.device)
        aug, mask = self.augment, None
        if aug is not None:
            X, mask = aug.inputs(X), aug.output_mask
        nets = getattr(graph, "layer_net", None)
        if self.feedback and self.feedback_source == "weights" and nets is not None:
            raise ValueError("feedback 'weights' reads MLP-like weight graphs, not layer nets")
        fb = None
        if self.feedback:
            fb = feedback_of(graph, w, h, self.feedback_source, self.task.fan_in_ref)
        if factored and nets is not None:
            raise ValueError("factored senses need a batch of one MLP with biases")
        if nets is not None:  # a layer net (gnca/layers.py): senses on shared weights
            if LAYER_SENSES is None:
                raise RuntimeError("import gnca (or gnca.layer_senses) to read layer nets")
            if isinstance(nets, list) and not same_architecture(graph):
                raise ValueError("a batch of layer nets must hold one architecture")
            net = nets[0] if isinstance(nets, list) else nets
            return LAYER_SENSES(net, w, fb, X, self.labels(y), self.names, self.task.n_classes,
                                self.task.fan_in_ref, mask).to(h.dtype)  # fmt: skip
        sizes = cached(graph, ("dense_sizes",), lambda: dense_sizes(graph))  # once per graph
        if factored and sizes is None:
            raise ValueError("factored senses need a batch of one MLP with biases")
        if sizes is not None:
            return dense_senses(sizes, w, fb, X, self.labels(y), self.names, self.task.activation,
                                self.task.fan_in_ref, mask, factored).to(h.dtype)  # fmt: skip
        stats = neuron_stats(
            graph, w, fb, X, self.labels(y), self.task.activation, self.task.fan_in_ref, mask
        )
        return weight_senses(graph, stats, self.names, self.task.n_classes).to(h.dtype)
