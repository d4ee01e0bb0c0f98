r"""Senses on shared weights: what a data-reading rule perceives of a layer net.

The senses of :mod:`gnca.senses` for the nets of :mod:`gnca.layers`, where one conv kernel
entry is used at every position of a feature map. A kernel entry reads the products of
:mod:`gnca.senses` summed over the positions where it is used, computed with convolution ops
(no autograd of the task loss, no loop over nets or positions); a dense weight, used at one
position, gets exactly the dense senses.

**Forward.** A batch ``X (B, F)`` (or one per net, ``(G, B, F)``) runs through the ``G`` nets
with the weights detached (as ``w * fan_in_ref / fan_in`` when ``fan_in_ref`` is set), keeping
every value ``(G, B, *shape)`` of the net (:func:`gnca.layers.apply_op`). The logits (the last
value, ``(G, B, n_out)``) give the loss and the softmax ``p``; under class subsets the absent
classes are masked as in :func:`gnca.augment.mask_logits`.

**Error messages.** At the output ``m = p - onehot(y)``. They run back through every op with
the *feedback* weights ``f`` (the ``(E,)`` last hidden channel ``h[:, -1]``, laid out like
``w``) in place of ``w``:

- ``linear``: ``m_in = m_out F`` with ``F (G, n_out, n_in)`` the feedback matrix;
- ``conv``: the transposed convolution of ``m_out (G, B, C_out, *S')`` with the feedback kernel
  (``torch.nn.grad.conv2d_input``, one grouped call for the ``G`` nets): ``(G, B, C_in, *S)``;
- activation: ``m_in = phi'(z) m_out`` with ``z`` the op's input (``phi'`` from
  :mod:`gnca.senses`);
- flatten: a reshape; average pooling: its adjoint (every input position of a window receives
  ``m_out / kernel size``; padding counts, as in the forward); max pooling: ``m_out`` goes to the
  position that won the forward's max;
- residual ``+``: ``m_out`` flows into both operands, and a value read by several ops sums what
  they send back.

The messages are differentiable in ``f`` (meta-training learns the feedback) and never depend
on ``w`` but through the forward activations.

**Where a weight reads.** A parameterised op (``linear``, ``conv``) reads its input value, the
*tail* ``a_in (G, B, C_in, *S)`` (a linear's input: ``(G, B, n_in)``, its features as channels),
and writes its output ``z (G, B, C_out, *S')``. Its *head* activation ``a_out`` is ``z`` after
the element-wise activations that alone read it (``tanh(conv(x))``: the tanh), or the softmax
``p`` when that is the net's output; its head message ``m_out (G, B, C_out, *S')`` is the
message at ``z``. A bias's tail is the constant ``1``.

**The senses** of a kernel entry ``w[o, i, tap]``, with ``P = prod(S')`` output positions
(``P = 1`` for a linear) and :math:`\langle x \rangle = \frac{1}{B P} \sum_b \sum_p x_{b, p}`,
the mean over the batch and the output positions, and
:math:`r_{b, p} = a_{in}[b, i, p \cdot s + tap \cdot d - pad]` the tail activation the entry
reads at output position ``p`` (stride ``s``, dilation ``d``; a zero-padding position reads 0;
a linear layer after ``flatten`` reads one feature, the entry's own position):

======== ====== ==================================================================
name     size   per kernel entry ``w[o, i, tap]``
======== ====== ==================================================================
``act``   2     :math:`\langle r \rangle,\ \langle a_{out}[o] \rangle`
``hebb``  1     :math:`\langle r \cdot a_{out}[o] \rangle`
``error`` 1     :math:`\langle m_{out}[o] \rangle`
``delta`` 1     :math:`\langle r \cdot m_{out}[o] \rangle` (the weight-gradient correlation)
``loss``  1     the net's cross-entropy divided by :math:`\log(\text{classes})`
======== ====== ==================================================================

A bias of ``o`` reads ``r = 1``: ``act = (1, <a_out[o]>)``, ``hebb = <a_out[o]>``,
``error = delta = <m_out[o]>``. The sums over positions are one grouped weight-gradient
correlation per op and sense (``torch.nn.grad.conv2d_weight`` of ``a_in`` against ``a_out``,
``m_out`` or ones): ``O(E + activations)``. Every sense but ``loss`` is soft-clipped,
``x / (1 + |x|)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn import grad as conv_grad

from gnca import senses
from gnca.augment import mask_logits
from gnca.forward import mean_field
from gnca.layers import LayerNet, Op, apply_op
from gnca.senses import SENSES, check_senses, soft_clip

__all__ = ["layer_senses", "layer_messages"]

_PARAM = ("linear", "conv")


def _weight_grad(nd: int) -> Callable[..., torch.Tensor]:
    """The weight-gradient correlation of a ``nd``-D convolution."""
    return conv_grad.conv1d_weight if nd == 1 else conv_grad.conv2d_weight


def _input_grad(nd: int) -> Callable[..., torch.Tensor]:
    """The input-gradient (transposed) convolution of a ``nd``-D convolution."""
    return conv_grad.conv1d_input if nd == 1 else conv_grad.conv2d_input


def _tuple(x: int | Sequence[int], nd: int) -> tuple[int, ...]:
    """A kernel size over ``nd`` axes."""
    return tuple(x) if isinstance(x, tuple | list) else (int(x),) * nd


def _forward(net: LayerNet, w: torch.Tensor, X: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every value ``(G, B, *shape)`` of the nets ``w (G, E)`` on ``X`` (no autograd)."""
    with torch.no_grad():
        vals: dict[int, torch.Tensor] = {0: net.batch_inputs(X, w.shape[0]).to(w.dtype)}
        for op in net.ops:
            vals[op.out] = apply_op(op, w, vals)
    return vals


def _readers(net: LayerNet) -> dict[int, list[Op]]:
    """value id -> the ops that read it."""
    out: dict[int, list[Op]] = {}
    for op in net.ops:
        for v in set(op.inputs):
            out.setdefault(v, []).append(op)
    return out


def _head_value(op: Op, readers: dict[int, list[Op]]) -> int:
    """The value whose activations are the head activations of ``op``'s weights: its output
    after the element-wise activations that alone read it."""
    v = op.out
    while len(readers.get(v, [])) == 1 and readers[v][0].kind == "act":
        v = readers[v][0].out
    return v


def _adjoint(
    op: Op, m: torch.Tensor, vals: dict[int, torch.Tensor], f: torch.Tensor, k: int
) -> torch.Tensor:
    """What ``op`` sends back to its ``k``-th input from the message ``m (G, B, *out_shape)``
    at its output, with the feedback weights ``f (G, E)``: ``(G, B, *in_shape)``."""
    x = vals[op.inputs[k]]
    g, b = x.shape[:2]
    if op.kind == "linear":
        n_in, n_out = op.args["in"], op.args["out"]
        fb = f[:, op.offset : op.offset + n_in * n_out].view(g, n_out, n_in)
        return torch.bmm(m.reshape(g, b, n_out), fb).view_as(x)  # (G, B, n_in)
    if op.kind == "conv":
        c_in, c_out, kern = op.args["in"], op.args["out"], op.args["kernel"]
        n_k = c_out * c_in * math.prod(kern)
        fb = f[:, op.offset : op.offset + n_k].reshape(g * c_out, c_in, *kern)
        mo = m.transpose(0, 1).reshape(b, g * c_out, *m.shape[3:])  # (B, G*C_out, *S')
        size = (b, g * c_in, *x.shape[3:])
        back = _input_grad(len(kern))(size, fb, mo, op.args["stride"], op.args["padding"],
                                      op.args["dilation"], groups=g)  # fmt: skip
        return back.view(b, g, c_in, *x.shape[3:]).transpose(0, 1)  # (G, B, C_in, *S)
    if op.kind == "act":
        with torch.no_grad():
            deriv = senses.derivative(op.args["name"], x, vals[op.out])
        return m * deriv
    if op.kind == "flatten":
        return m.reshape(x.shape)
    if op.kind == "add":
        return m
    nd = op.args["nd"]  # pool
    flat = x.reshape(-1, *x.shape[-nd:])  # (G*B*C, *S)
    mo = m.reshape(-1, *m.shape[-nd:])  # (G*B*C, *S')
    kern = _tuple(op.args["kernel"], nd)
    if op.args["kind"] == "avg":  # every position of a window gets m / kernel size
        ones = mo.new_full((1, 1, *kern), 1.0 / math.prod(kern))
        back = _input_grad(nd)((flat.shape[0], 1, *flat.shape[1:]), ones, mo[:, None],
                               op.args["stride"], op.args["padding"])  # fmt: skip
        return back.view_as(x)
    pool = F.max_pool1d if nd == 1 else F.max_pool2d
    with torch.no_grad():
        _, idx = pool(x.reshape(g * b, *x.shape[2:]), op.args["kernel"], op.args["stride"],
                      op.args["padding"], return_indices=True)  # fmt: skip
    n_c = x.shape[2]
    back = mo.new_zeros(g * b, n_c, math.prod(x.shape[3:]))
    back = back.scatter_add(2, idx.reshape(g * b, n_c, -1), mo.reshape(g * b, n_c, -1))
    return back.view_as(x)


def layer_messages(
    net: LayerNet, vals: dict[int, torch.Tensor], err: torch.Tensor, f: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Error messages at every value that depends on the weights.

    Args:
        net: the layer net.
        vals: its values (:func:`_forward`), value id -> ``(G, B, *shape)``.
        err: ``(G, B, n_out)`` the message at the output (``softmax - onehot``).
        f: ``(G, E)`` feedback weights (differentiable).

    Returns:
        value id -> ``(G, B, *shape)`` messages (the input and values computed from it alone
        get none).
    """
    needs: set[int] = set()  # values downstream of a weight
    for op in net.ops:
        if op.kind in _PARAM or any(v in needs for v in op.inputs):
            needs.add(op.out)
    out = net.ops[-1].out
    msgs: dict[int, torch.Tensor] = {out: err.reshape(vals[out].shape)}
    for op in reversed(net.ops):  # every reader of a value comes after it
        if op.out not in msgs:
            continue
        for k, v in enumerate(op.inputs):
            if v not in needs:
                continue
            back = _adjoint(op, msgs[op.out], vals, f, k)
            msgs[v] = msgs[v] + back if v in msgs else back
    return msgs


def _correlate(op: Op, tail: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """``(G, H, n_in)`` mean over the batch and output positions of ``tail`` (as each weight
    reads it) times each of the ``H`` head channels: ``tail (G, B, C_in, *S)`` (linear:
    ``(G, B, n_in)``), ``heads (G, B, H, *S')``; ``n_in = C_in * prod(kernel)`` (linear:
    ``n_in``)."""
    g, b, h = heads.shape[:3]
    if op.kind == "linear":
        return torch.bmm(heads.transpose(1, 2), tail.reshape(g, b, -1)) / b  # (G, H, n_in)
    kern, c_in = op.args["kernel"], op.args["in"]
    n_pos = math.prod(heads.shape[3:])
    xs = tail.transpose(0, 1).reshape(b, g * c_in, *tail.shape[3:])  # (B, G*C_in, *S)
    hs = heads.transpose(0, 1).reshape(b, g * h, *heads.shape[3:])  # (B, G*H, *S')
    corr = _weight_grad(len(kern))(xs, (g * h, c_in, *kern), hs, op.args["stride"],
                                   op.args["padding"], op.args["dilation"], groups=g)  # fmt: skip
    return corr.reshape(g, h, -1) / (b * n_pos)  # (G, H, C_in * K)


def _op_senses(
    op: Op,
    names: tuple[str, ...],
    tail: torch.Tensor,
    head: torch.Tensor,
    m: torch.Tensor | None,
    loss: torch.Tensor,
) -> torch.Tensor:
    """``(G, E_op, S)`` raw senses of ``op``'s weights (then its biases) from its tail
    ``(G, B, C_in, *S)``, head activations and messages ``(G, B, C_out, *S')``."""
    g, b, c_out = head.shape[:3]
    per_pos = lambda x: x.reshape(g, b, c_out, -1)  # noqa: E731
    with torch.no_grad():
        a_mean = per_pos(head).mean((1, 3))  # (G, C_out)
        ones = head.new_ones(g, b, 1, *head.shape[3:])
        # tail reads (G, 1, n_in) and Hebbian products (G, C_out, n_in)
        corr = _correlate(op, tail, torch.cat([ones, head], 2))
    reads, hebb = corr[:, :1], corr[:, 1:]
    n_in = reads.shape[2]
    m_mean = delta = None
    if m is not None and any(n in ("error", "delta") for n in names):
        m_mean = per_pos(m).mean((1, 3))  # (G, C_out)
        if "delta" in names:
            delta = _correlate(op, tail, m)  # (G, C_out, n_in)
    w_cols: list[torch.Tensor] = []  # each (G, C_out, n_in)
    b_cols: list[torch.Tensor] = []  # each (G, C_out)
    for name in names:
        if name == "act":
            w_cols += [reads.expand(g, c_out, n_in), a_mean[:, :, None].expand(g, c_out, n_in)]
            b_cols += [torch.ones_like(a_mean), a_mean]
        elif name == "hebb":
            w_cols.append(hebb)
            b_cols.append(a_mean)
        elif name == "loss":
            w_cols.append(loss[:, None, None].expand(g, c_out, n_in))
            b_cols.append(loss[:, None].expand(g, c_out))
        elif m_mean is None:
            raise ValueError(f"sense {name!r} needs the backward messages (feedback)")
        elif name == "error":
            w_cols.append(m_mean[:, :, None].expand(g, c_out, n_in))
            b_cols.append(m_mean)
        else:
            w_cols.append(delta)
            b_cols.append(m_mean)
    out = torch.stack(w_cols, -1).reshape(g, c_out * n_in, -1)  # (G, C_out * n_in, S)
    if op.args["bias"]:
        out = torch.cat([out, torch.stack(b_cols, -1)], 1)  # (G, C_out * n_in + C_out, S)
    return out


def layer_senses(
    net: LayerNet,
    w: torch.Tensor,
    feedback: torch.Tensor | None,
    X: torch.Tensor,
    y: torch.Tensor,
    names: Sequence[str],
    n_classes: int,
    fan_in_ref: float | None = None,
    class_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(G * E, S)`` senses of ``G`` layer nets (module docstring), in the order of ``w``.

    Args:
        net: the nets' :class:`~gnca.layers.LayerNet`.
        w: ``(G * E,)`` weights (detached here).
        feedback: ``(G * E,)`` feedback weights of the messages (differentiable), or ``None``
            (then no ``error`` or ``delta``).
        X: ``(B, F)`` flat features (or ``(B, *in_shape)``), shared; or ``(G, B, F)``.
        y: ``(B,)`` labels shared by all nets, or ``(G, B)``.
        names: the senses (:data:`gnca.senses.SENSES`).
        n_classes: the task's classes (the ``loss`` sense divides by their log).
        fan_in_ref: as in :func:`gnca.forward.effective_weights`.
        class_mask: ``(G, n_out)`` bool, each net's classes (as in
            :func:`gnca.senses.neuron_stats`).
    """
    names = check_senses(names)
    e = net.num_weights
    with torch.no_grad():
        W = w.detach().view(-1, e)
        if fan_in_ref is not None:
            fan = torch.as_tensor(net.fan_in, device=W.device)
            W = mean_field(W, torch.as_tensor(net.is_bias, device=W.device), fan, fan_in_ref)
        g = W.shape[0]
        vals = _forward(net, W, X)
        out_id = net.ops[-1].out
        logits = mask_logits(vals[out_id].reshape(g, -1, net.n_out), class_mask)  # (G, B, n_out)
        b = logits.shape[1]
        yy = y if y.dim() == 2 else y.unsqueeze(0).expand(g, -1)  # (G, B)
        loss = F.cross_entropy(logits.reshape(g * b, -1), yy.reshape(-1), reduction="none")
        loss = loss.view(g, b).mean(1) / math.log(n_classes)  # (G,)
        prob = logits.softmax(-1)
        err = prob - F.one_hot(yy, net.n_out).to(prob.dtype)
    msgs = None
    if feedback is not None and any(n in ("error", "delta") for n in names):
        msgs = layer_messages(net, vals, err, feedback.to(W.dtype).view(g, e))
    acts = dict(vals)
    acts[out_id] = prob.reshape(vals[out_id].shape)
    readers = _readers(net)
    cols = []
    for op in sorted((o for o in net.ops if o.kind in _PARAM), key=lambda o: o.offset):
        head = acts[_head_value(op, readers)]
        m = msgs.get(op.out) if msgs is not None else None
        if msgs is not None and m is None:  # no path to the output: no message
            m = torch.zeros_like(vals[op.out])
        cols.append(_op_senses(op, names, vals[op.inputs[0]], head, m, loss))
    out = torch.cat(cols, 1)  # (G, E, S)
    if out.shape[1] != e:
        raise AssertionError(f"layer senses cover {out.shape[1]} weights of {e}")
    clip = torch.tensor([n != "loss" for n in names for _ in range(SENSES[n])], device=out.device)
    return torch.where(clip, soft_clip(out), out).reshape(g * e, -1)


senses.LAYER_SENSES = layer_senses  # SenseReader reads layer nets through this module
