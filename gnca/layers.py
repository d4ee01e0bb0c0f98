"""Task nets made of layers whose weights are shared: convolutions, residual adds, pooling, and
a user's own ``nn.Module`` in and out.

A :class:`LayerNet` is a small program of layer ops (``Linear``, ``Conv1d``, ``Conv2d``,
element-wise activations, flatten, average and max pooling, residual ``+``) traced from a
module with :func:`torch.fx.symbolic_trace`. Its weights are every scalar parameter entry, in
the module's parameter order (each layer's weight in PyTorch's layout, then its bias), so that
:meth:`LayerNet.read_weights` and :meth:`LayerNet.write_weights` move a ``(E,)`` vector in and
out of the module.

**Units.** A weight joins two *units*: the tail unit it reads and the head unit it writes. The
units of a conv feature map are its channels; those of a flat vector its features, except that
a flattened feature map keeps its channels as units (a ``Linear`` after ``flatten`` has
``H * W`` weights between each input channel and output feature). So a kernel entry
``w[o, i, *tap]`` goes from input channel ``i`` to output channel ``o``, several weights may
join the same pair of units, and each weight also knows its *tap*: the kernel offset of a
kernel entry, the spatial position of a flattened input for a ``Linear``. A bias of output unit
``o`` comes from a private bias unit, as in :class:`gnca.Architecture`. The two operands of a
residual ``+`` share their units (the weights into either branch's end are neighbours of each
other and of the weights after the add). The line-graph perception of :mod:`gnca.perception`
then works unchanged on ``(tail, head)`` unit ids: it stays ``O(E)``.

torch.fx rather than a walk of the autograd graph: fx keeps the module that each op belongs to
(so parameters are read and written by name, and a refused op is named with its place in the
module), and it sees the network before it runs; the autograd graph holds only primitive
backward nodes. A module whose ``forward`` depends on the data cannot be traced; fx says so.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch_geometric.data import Batch

from gnca import architecture
from gnca.architecture import BIAS, HIDDEN, INPUT, OUTPUT

if TYPE_CHECKING:
    from gnca.graph import WeightGraph

__all__ = ["LayerNet", "LayerNetError"]

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid}
_ACT_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.GELU: "gelu", nn.Sigmoid: "sigmoid"}
_ACT_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.gelu: "gelu",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}  # fmt: skip
_ACT_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_POOL_MODULES = {
    nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2),
    nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2),
}  # fmt: skip
SUPPORTED = (
    "Linear, Conv1d, Conv2d (groups=1, zero padding), relu/tanh/gelu/sigmoid, flatten, "
    "average and max pooling, residual +"
)


class LayerNetError(ValueError):
    """A module gnca cannot grow: names the op and where it sits."""


@dataclass(frozen=True)
class Op:
    """One op of a :class:`LayerNet`: ``out = kind(*inputs)``.

    ``kind`` is ``linear``, ``conv``, ``act``, ``flatten``, ``pool`` or ``add``; ``args`` holds
    its settings (activation name; conv stride, padding, dilation; pool kind, kernel, stride);
    ``name`` the module path of a parameterised op; ``offset`` the position of its first weight
    in the ``(E,)`` vector.
    """

    kind: str
    inputs: tuple[int, ...]
    out: int
    args: dict = field(default_factory=dict)
    name: str = ""
    offset: int = 0


@dataclass(eq=False)
class LayerNet:
    """A traced layer network: ops on values, weights, units and taps (module docstring).

    Attributes:
        ops: the ops in execution order; values are numbered ``0`` (the input) upwards.
        shapes: per-example shape of every value (the input: ``in_shape``).
        num_weights: ``E``.
        src, dst: ``(E,)`` tail and head unit of every weight.
        tap: ``(E, 2)`` the kernel offset (conv) or flattened position (linear) of every weight
            (padded with 0; bias weights: 0).
        layer: ``(E,)`` index of the parameterised op each weight belongs to.
        is_bias: ``(E,)`` bool.
        num_units, unit_kind, unit_level: units, their kind (input, hidden, output, bias) and
            the number of parameterised ops before the value that defines them.
        input_units, output_units: the units of the input's channels (or features) and of the
            output's features, in order.
        place, place_count: ``(E, 2)`` a weight's in-channel (or in-feature) and out-channel
            index within its layer, and the counts they are out of (bias weights: 0 of 1).
        tap_extent: ``(E, 2)`` the size of the grid ``tap`` lies in (the kernel, or the
            flattened map; ``(1, 1)`` when there is none).
    """

    ops: list[Op]
    shapes: list[tuple[int, ...]]
    num_weights: int
    src: np.ndarray
    dst: np.ndarray
    tap: np.ndarray
    layer: np.ndarray
    is_bias: np.ndarray
    num_units: int
    unit_kind: np.ndarray
    unit_level: np.ndarray
    input_units: np.ndarray
    output_units: np.ndarray
    param_names: list[str]
    place: np.ndarray
    place_count: np.ndarray
    tap_extent: np.ndarray
    template: nn.Module | None = field(default=None, repr=False)  # a copy of the traced module

    #: what an :class:`~gnca.Architecture` of a plain MLP or an image input would hold
    mlp_sizes = None
    input_shape = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shapes[0]

    @property
    def n_out(self) -> int:
        return int(np.prod(self.shapes[-1]))

    @property
    def num_inputs(self) -> int:
        """Features per example (the data's flat features are reshaped to :attr:`in_shape`)."""
        return int(np.prod(self.in_shape))

    @property
    def num_outputs(self) -> int:
        return self.n_out

    @property
    def num_neurons(self) -> int:
        """Units (the neurons of an :class:`~gnca.Architecture`)."""
        return self.num_units

    @property
    def depth(self) -> int:
        """Parameterised layers."""
        return int(self.layer.max()) + 1

    def describe(self) -> str:
        """A short name, e.g. ``layers 1x12x12 conv4k3s2-relu-conv4k3-add-avgpool2-linear10``."""
        parts = []
        for op in self.ops:
            a = op.args
            if op.kind == "conv":
                stride = "" if set(a["stride"]) == {1} else f"s{a['stride'][0]}"
                parts.append(f"conv{a['out']}k{'x'.join(map(str, a['kernel']))}{stride}")
            elif op.kind == "linear":
                parts.append(f"linear{a['out']}")
            elif op.kind == "act":
                parts.append(a["name"])
            elif op.kind == "pool":
                parts.append(f"{a['kind']}pool{a['kernel']}")
            elif op.kind == "add":
                parts.append("add")
        shape = "x".join(map(str, self.in_shape))
        return f"layers {shape} " + "-".join(parts)

    def key(self) -> tuple:
        """A hashable identity: equal keys, identical structure."""
        ops = tuple((o.kind, o.inputs, o.out, repr(sorted(o.args.items()))) for o in self.ops)
        return (tuple(self.shapes), ops, self.num_weights)

    def __repr__(self) -> str:
        return f"LayerNet({self.describe()}, units={self.num_units}, weights={self.num_weights})"

    # ------------------------------------------------------------------ building
    @classmethod
    def from_module(cls, module: nn.Module, example_input: torch.Tensor) -> LayerNet:
        """Trace ``module`` (called on a batch like ``example_input``, ``(B, *in_shape)``).

        Raises:
            LayerNetError: an op outside :data:`SUPPORTED`, named with its place in the module.
        """
        try:
            gm = fx.symbolic_trace(module)
        except Exception as err:  # data-dependent control flow and the like
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LayerNetError(f"cannot trace {type(module).__name__}: {first}") from None
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example_input)
        except Exception as err:
            cause = err.__cause__ or err
            text = str(cause).strip()
            first = text.splitlines()[0] if text else type(cause).__name__
            raise LayerNetError(
                f"{type(module).__name__} fails on an input of shape "
                f"{tuple(example_input.shape)}: {first}"
            ) from None
        net = _Tracer(gm).build()
        net.template = copy.deepcopy(module)
        return net

    # ------------------------------------------------------------------ weights in and out
    def read_weights(self, module: nn.Module) -> torch.Tensor:
        """``(E,)`` the module's weights in this net's order (detached copy)."""
        params = dict(module.named_parameters())
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise LayerNetError(f"the module has no parameter {missing[0]!r}")
        w = torch.cat([params[n].detach().reshape(-1) for n in self.param_names])
        if w.numel() != self.num_weights:
            raise LayerNetError(
                f"the module holds {w.numel()} weights, this net {self.num_weights}"
            )
        return w.clone()

    def write_weights(self, module: nn.Module, w: torch.Tensor) -> nn.Module:
        """Put ``w (E,)`` into ``module``'s parameters (in place, no gradient); returns it."""
        if w.dim() != 1 or w.numel() != self.num_weights:
            raise LayerNetError(f"w must have shape ({self.num_weights},), got {tuple(w.shape)}")
        params = dict(module.named_parameters())
        off = 0
        with torch.no_grad():
            for n in self.param_names:
                p = params[n]
                p.copy_(w[off : off + p.numel()].view_as(p))
                off += p.numel()
        return module

    def state_dicts(self, w: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The state dict of each of the ``G`` nets ``w`` (``(G, E)`` or ``(G*E,)``), as the
        traced module's class loads it (``module.load_state_dict(sd)``)."""
        if self.template is None:
            raise LayerNetError("this layer net keeps no module to write state dicts of")
        out = []
        for row in w.detach().reshape(-1, self.num_weights).cpu():
            m = self.write_weights(copy.deepcopy(self.template), row)
            out.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return out

    # ------------------------------------------------------------------ forward of G nets
    def batch_inputs(self, X: torch.Tensor, g: int) -> torch.Tensor:
        """``X`` as ``(G, B, *in_shape)``: ``(B, *in_shape)`` is shared by the ``g`` nets, and flat
        features ``(B, F)`` or ``(G, B, F)`` are reshaped to ``in_shape``."""
        n = len(self.in_shape)
        flat = tuple(X.shape[-n:]) != self.in_shape and X.shape[-1] == self.num_inputs
        if n > 1 and flat and X.dim() in (2, 3):
            X = X.reshape(*X.shape[:-1], *self.in_shape)  # the data's flat features
        if X.dim() == len(self.in_shape) + 1:
            X = X.unsqueeze(0).expand(g, *X.shape)
        if tuple(X.shape[2:]) != self.in_shape or X.shape[0] != g:
            raise ValueError(
                f"X must have shape (B, {self.in_shape}) or ({g}, B, {self.in_shape}), got "
                f"{tuple(X.shape)}"
            )
        return X

    def forward(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Outputs of ``G`` nets with weights ``w`` (``(G, E)``, or ``(G*E,)``) on inputs ``X``
        (``(B, *in_shape)`` shared, or ``(G, B, *in_shape)``; flat features ``(B, F)`` or
        ``(G, B, F)`` are reshaped to ``in_shape``): ``(G, B, n_out)``.

        Convolutions of all nets run as one grouped convolution, linear layers as one batched
        matmul: no loop over nets.
        """
        w = w.view(-1, self.num_weights)
        g = w.shape[0]
        X = self.batch_inputs(X, g)
        b = X.shape[1]
        vals: dict[int, torch.Tensor] = {0: X.to(w.dtype)}
        for op in self.ops:
            vals[op.out] = apply_op(op, w, vals)
        return vals[self.ops[-1].out if self.ops else 0].reshape(g, b, -1)

    # ------------------------------------------------------------------ identity codes
    def codes(
        self,
        hidden_channels: int,
        freqs: int = 2,
        *,
        copies: int = 1,
        jitter: float = 0.0,
        fraction: float = 1.0,
        generator: torch.Generator | None = None,
        depth_code: bool = True,
    ) -> torch.Tensor:
        """``(copies * E, C)`` identity codes: what a data-free rule knows of a weight's place.

        Positions are taken in ``(0, 1)`` as ``(index + 0.5) / count`` (in-channel, out-channel,
        and each axis of the tap within its kernel or flattened map), so that a kernel of an
        unseen size or a layer of an unseen width lays its weights out on the same continuum.
        Layout, with ``f = freqs``: ``sin, cos`` of ``2^j * pi * pos`` (``j < f``) for the
        in-channel (``2f``), the out-channel (``2f``) and both tap axes (``4f``); then the
        layer's depth ``(layer + 0.5) / layers``, a bias flag, a first-layer flag and a
        last-layer flag; zeros after. Needs ``C >= 8f + 4``. A bias keeps its out-channel code
        only.

        ``jitter`` in ``[0, 1]`` (meta-training seeds): each hidden unit's channel index moves
        by up to ``jitter / 2``, one draw per unit and net from ``generator``, in a ``fraction``
        of the nets (the first ``round(fraction * copies)``), as ``task.code_jitter`` does for
        MLP neurons. ``depth_code=False`` sets the depth channel to 0, so that the layers between
        the first and the last carry the same codes at every depth (``task.depth_code``).
        """
        need = 8 * freqs + 4
        if hidden_channels < need:
            raise ValueError(f"layer codes with freqs={freqs} need hidden_channels >= {need}, "
                             f"got {hidden_channels}")  # fmt: skip
        e = self.num_weights
        place = torch.as_tensor(self.place, dtype=torch.float32).expand(copies, e, 2)
        if jitter > 0:
            moved = round(fraction * copies)
            shift = (torch.rand(copies, self.num_units, generator=generator) - 0.5) * jitter
            hidden = torch.as_tensor(self.unit_kind == HIDDEN)
            shift = shift * hidden * (torch.arange(copies) < moved)[:, None]  # (copies, units)
            ends = torch.as_tensor(np.stack([self.src, self.dst], 1))  # (E, 2)
            place = place + shift[:, ends] * torch.as_tensor(~self.is_bias)[None, :, None]
        count = torch.as_tensor(self.place_count, dtype=torch.float32)
        taps = (torch.as_tensor(self.tap, dtype=torch.float32) + 0.5) / torch.as_tensor(
            self.tap_extent, dtype=torch.float32
        )
        pos = torch.cat([(place + 0.5) / count, taps.expand(copies, e, 2)], 2)  # (copies, E, 4)
        scale = torch.pi * 2.0 ** torch.arange(freqs, dtype=torch.float32)  # (f,)
        ang = pos[..., None] * scale  # (copies, E, 4, f)
        waves = torch.cat([ang.sin(), ang.cos()], 3)  # (copies, E, 4, 2f)
        n_layers = int(self.layer.max()) + 1
        layer = torch.as_tensor(self.layer, dtype=torch.float32)
        bias = torch.as_tensor(self.is_bias, dtype=torch.float32)
        keep = torch.ones(e, 4, 1)
        keep[:, [0, 2, 3]] = (1 - bias)[:, None, None]  # a bias has no in-channel or tap
        waves = (waves * keep).reshape(copies, e, -1)  # (copies, E, 8f)
        depth = (layer + 0.5) / n_layers if depth_code else torch.zeros_like(layer)
        flags = torch.stack([depth, bias, (layer == 0).float(), (layer == n_layers - 1).float()], 1)
        out = torch.cat([waves, flags.expand(copies, e, 4)], 2).reshape(copies * e, -1)
        return F.pad(out, (0, hidden_channels - need))

    # ------------------------------------------------------------------ weight graph
    def layer_graph(self, device: torch.device | str | None = None) -> WeightGraph:
        """One net as a :class:`~gnca.WeightGraph` whose ``src``/``dst`` are unit ids (what
        :meth:`gnca.WeightGraph.from_architecture` gives for a layer net): the perception
        works on it unchanged, and :func:`gnca.forward.task_forward` runs it through
        :meth:`forward` (the graph keeps the net as ``layer_net``)."""
        from gnca.graph import WeightGraph

        return WeightGraph.of(
            self,
            src=self.src,
            dst=self.dst,
            is_bias=self.is_bias,
            fan_in=self.fan_in,
            kinds=self.unit_kind,
            levels=self.unit_level,
            inputs=self.input_units,
            outputs=self.output_units,
            device=device,
            tap=torch.as_tensor(self.tap.copy()),
            layer=torch.as_tensor(self.layer.copy()),
            layer_net=self,
        )

    def weight_graph(self, copies: int = 1, device: torch.device | str | None = None) -> Batch:
        """``copies`` of :meth:`layer_graph`, batched."""
        from gnca.graph import WeightGraph

        out = WeightGraph.collate([self.layer_graph()] * copies)
        return out.to(device) if device is not None else out

    @property
    def fan_in(self) -> np.ndarray:
        """``(E,)`` the fan-in of the layer each weight belongs to (``C_in * prod(kernel)`` or
        ``in_features``; 1 for biases): mean-field sums (``task.fan_in_ref``) divide by it."""
        per_layer = {}
        for j, op in enumerate(o for o in self.ops if o.kind in ("linear", "conv")):
            k = math.prod(op.args.get("kernel", (1,)))
            per_layer[j] = op.args["in"] * k
        fan = np.array([per_layer[j] for j in self.layer.tolist()], dtype=np.float32)
        return np.where(self.is_bias, 1.0, fan).astype(np.float32)


def apply_op(op: Op, w: torch.Tensor, vals: dict[int, torch.Tensor]) -> torch.Tensor:
    """The value ``op`` computes for ``G`` nets with weights ``w (G, E)`` from the values
    ``vals`` (value id -> ``(G, B, *shape)``) it reads: ``(G, B, *out_shape)``."""
    x = vals[op.inputs[0]]  # (G, B, *shape)
    g, b = x.shape[:2]
    if op.kind == "linear":
        n_in, n_out = op.args["in"], op.args["out"]
        W = w[:, op.offset : op.offset + n_in * n_out].view(g, n_out, n_in)
        y = torch.bmm(x.reshape(g, b, n_in), W.transpose(1, 2))  # (G, B, n_out)
        if op.args["bias"]:
            lo = op.offset + n_in * n_out
            y = y + w[:, lo : lo + n_out][:, None]  # (G, 1, n_out)
        return y
    if op.kind == "conv":
        return _grouped_conv(op, w, x)
    if op.kind == "act":
        return ACTIVATIONS[op.args["name"]](x)
    if op.kind == "flatten":
        return x.reshape(g, b, -1)
    if op.kind == "pool":
        return _pool(op, x)
    return x + vals[op.inputs[1]]  # add


def _grouped_conv(op: Op, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One conv layer of ``G`` nets as one convolution with ``groups = G``: ``x (G, B, C_in,
    *S)`` -> ``(G, B, C_out, *S')``."""
    g, b = x.shape[:2]
    c_in, c_out, k = op.args["in"], op.args["out"], op.args["kernel"]
    n_k = c_out * c_in * math.prod(k)
    W = w[:, op.offset : op.offset + n_k].reshape(g * c_out, c_in, *k)
    bias = None
    if op.args["bias"]:
        bias = w[:, op.offset + n_k : op.offset + n_k + c_out].reshape(g * c_out)
    xs = x.transpose(0, 1).reshape(b, g * c_in, *x.shape[3:])  # (B, G*C_in, *S)
    conv = F.conv1d if len(k) == 1 else F.conv2d
    y = conv(xs, W, bias, op.args["stride"], op.args["padding"], op.args["dilation"], groups=g)
    return y.view(b, g, c_out, *y.shape[2:]).transpose(0, 1)  # (G, B, C_out, *S')


def _pool(op: Op, x: torch.Tensor) -> torch.Tensor:
    g, b = x.shape[:2]
    fn = {
        ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d,
        ("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d,
    }[(op.args["kind"], op.args["nd"])]  # fmt: skip
    y = fn(x.reshape(g * b, *x.shape[2:]), op.args["kernel"], op.args["stride"],
           op.args["padding"])  # fmt: skip
    return y.view(g, b, *y.shape[1:])


class _Units:
    """Union-find over unit ids (the operands of a residual ``+`` share theirs)."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent += list(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, u: int) -> int:
        while self.parent[u] != u:
            self.parent[u] = self.parent[self.parent[u]]
            u = self.parent[u]
        return u

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)


@dataclass
class _Value:
    shape: tuple[int, ...]  # per example
    feat_unit: np.ndarray  # (F,) unit of each flat feature
    feat_pos: np.ndarray  # (F, 2) spatial position of each flat feature
    level: int  # parameterised ops before it
    extent: tuple[int, int] = (1, 1)  # the spatial size the positions are in

    def feat_channel(self) -> tuple[np.ndarray, int]:
        """``(F,)`` channel index of each flat feature and the number of channels."""
        n_s = self.extent[0] * self.extent[1]
        n = len(self.feat_unit)
        return np.arange(n) // n_s, n // n_s

    def channel_units(self) -> np.ndarray:
        spatial = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        return self.feat_unit[::spatial]


def _spatial_value(units: np.ndarray, shape: tuple[int, ...], level: int) -> _Value:
    """A value of per-example ``shape`` whose channels (first dim) are ``units``."""
    spatial = shape[1:]
    n_s = math.prod(spatial) if spatial else 1
    pos = np.zeros((n_s, 2), dtype=np.int64)
    if spatial:
        grid = np.stack(np.unravel_index(np.arange(n_s), spatial), 1)
        pos[:, -grid.shape[1] :] = grid
    extent = (1, *spatial)[-2:] if len(spatial) < 2 else spatial
    return _Value(shape, np.repeat(units, n_s), np.tile(pos, (len(units), 1)), level,
                  (int(extent[0]), int(extent[1])))  # fmt: skip


class _Tracer:
    """Builds a :class:`LayerNet` from a shape-propagated fx graph."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.units = _Units()
        self.values: list[_Value] = []
        self.ids: dict[fx.Node, int] = {}
        self.ops: list[Op] = []
        self.weights: list[tuple[np.ndarray, ...]] = []  # per layer: src, dst, tap, is_bias
        self.bias_units: list[int] = []
        self.param_names: list[str] = []
        self.places: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per layer
        self.offset = 0

    def build(self) -> LayerNet:
        out_node = None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.values:
                    raise LayerNetError(f"{node.name}: a net to grow takes one input tensor")
                shape = tuple(node.meta["tensor_meta"].shape[1:])
                units = self.units.new(shape[0] if len(shape) > 1 else math.prod(shape))
                if len(shape) > 1:
                    value = _spatial_value(units, shape, 0)
                else:
                    value = _Value(shape, units, np.zeros((len(units), 2), np.int64), 0)
                self._add_value(node, value)
            elif node.op == "output":
                out_node = node.args[0]
            elif node.op == "get_attr":
                raise LayerNetError(f"{node.name}: a tensor used directly ({node.target}); "
                                    f"supported are {SUPPORTED}")  # fmt: skip
            else:
                self._op(node)
        if not isinstance(out_node, fx.Node) or out_node not in self.ids:
            raise LayerNetError("the module must return one tensor")
        return self._finish(self.ids[out_node])

    # ------------------------------------------------------------------ ops
    def _add_value(self, node: fx.Node, value: _Value) -> int:
        self.values.append(value)
        self.ids[node] = len(self.values) - 1
        return self.ids[node]

    def _arg(self, node: fx.Node, i: int = 0) -> int:
        a = node.args[i]
        if not isinstance(a, fx.Node) or a not in self.ids:
            raise LayerNetError(f"{node.name}: argument {i} is not a tensor of the net")
        return self.ids[a]

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape[1:])

    def _op(self, node: fx.Node) -> None:
        where = f"{node.target!r}"
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
                return self._param_layer(node, m)
            if type(m) in _ACT_MODULES:
                return self._same_units(node, "act", {"name": _ACT_MODULES[type(m)]})
            if isinstance(m, nn.Identity | nn.Dropout) and not (isinstance(m, nn.Dropout)
                                                               and m.training):  # fmt: skip
                self.ids[node] = self._arg(node)
                return None
            if isinstance(m, nn.Flatten):
                return self._flatten(node, m.start_dim, m.end_dim)
            if type(m) in _POOL_MODULES:
                return self._pool_module(node, m)
            raise LayerNetError(f"{type(m).__name__} at {where} is not supported; supported are "
                                f"{SUPPORTED}")  # fmt: skip
        if node.op == "call_function":
            if node.target in (operator.add, torch.add) and len(node.args) == 2:
                return self._add(node)
            if node.target in _ACT_FUNCTIONS:
                return self._same_units(node, "act", {"name": _ACT_FUNCTIONS[node.target]})
            if node.target is torch.flatten:
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                return self._flatten(node, start, -1)
        if node.op == "call_method":
            if node.target in _ACT_METHODS:
                return self._same_units(node, "act", {"name": _ACT_METHODS[node.target]})
            if node.target == "size":
                return None
            if node.target in ("flatten", "view", "reshape") and len(self._shape(node)) == 1:
                return self._flatten(node, 1, -1, check=True)
        name = getattr(node.target, "__name__", str(node.target))
        raise LayerNetError(f"{node.name} ({name}) is not supported; supported are {SUPPORTED}")

    def _same_units(self, node: fx.Node, kind: str, args: dict) -> None:
        a = self._arg(node)
        self._add_value(node, self.values[a])
        self.ops.append(Op(kind, (a,), self.ids[node], args))

    def _flatten(self, node: fx.Node, start: int, end: int, check: bool = False) -> None:
        a = self._arg(node)
        shape = self._shape(node)
        if (start not in (1, -len(self.values[a].shape)) or end != -1) and not check:
            raise LayerNetError(f"{node.name}: only flatten from dim 1 to the end is supported")
        if len(shape) != 1 or shape[0] != math.prod(self.values[a].shape):
            raise LayerNetError(f"{node.name}: only a flatten of every feature is supported")
        v = self.values[a]
        self._add_value(node, _Value(shape, v.feat_unit, v.feat_pos, v.level, v.extent))
        self.ops.append(Op("flatten", (a,), self.ids[node]))

    def _add(self, node: fx.Node) -> None:
        a, b = self._arg(node, 0), self._arg(node, 1)
        va, vb = self.values[a], self.values[b]
        if va.shape != vb.shape or self._shape(node) != va.shape:
            raise LayerNetError(f"{node.name}: a residual + needs two operands of one shape, got "
                                f"{va.shape} and {vb.shape}")  # fmt: skip
        self.units.union(va.feat_unit, vb.feat_unit)
        level = max(va.level, vb.level)
        self._add_value(node, _Value(va.shape, va.feat_unit, va.feat_pos, level, va.extent))
        self.ops.append(Op("add", (a, b), self.ids[node]))

    def _pool_module(self, node: fx.Node, m: nn.Module) -> None:
        kind, nd = _POOL_MODULES[type(m)]
        if getattr(m, "ceil_mode", False) or getattr(m, "return_indices", False):
            raise LayerNetError(f"{node.name}: pooling with ceil_mode or indices is not supported")
        if kind == "max" and (m.dilation not in (1, (1,) * nd)):  # type: ignore[union-attr]
            raise LayerNetError(f"{node.name}: dilated max pooling is not supported")
        if kind == "avg" and not getattr(m, "count_include_pad", True):
            raise LayerNetError(f"{node.name}: average pooling must count the padding")
        a = self._arg(node)
        v = self.values[a]
        stride = m.stride if m.stride is not None else m.kernel_size  # type: ignore[union-attr]
        args = {"kind": kind, "nd": nd, "kernel": m.kernel_size, "stride": stride,
                "padding": m.padding}  # type: ignore[union-attr]  # fmt: skip
        self._add_value(node, _spatial_value(v.channel_units(), self._shape(node), v.level))
        self.ops.append(Op("pool", (a,), self.ids[node], args))

    def _param_layer(self, node: fx.Node, m: nn.Module) -> None:
        where = f"{type(m).__name__} at {node.target!r}"
        a = self._arg(node)
        v = self.values[a]
        out_shape = self._shape(node)
        has_bias = m.bias is not None  # type: ignore[union-attr]
        if isinstance(m, nn.Linear):
            if len(v.shape) != 1:
                raise LayerNetError(f"{where}: Linear on a {len(v.shape) + 1}-D input; flatten "
                                    "it first")  # fmt: skip
            n_in, n_out = m.in_features, m.out_features
            heads = self.units.new(n_out)
            o, i = np.divmod(np.arange(n_out * n_in), n_in)  # torch's (out, in) layout
            src, dst, tap = v.feat_unit[i], heads[o], v.feat_pos[i]
            chan, n_chan = v.feat_channel()
            place = np.stack([chan[i], o], 1)
            count = np.broadcast_to([n_chan, n_out], (len(o), 2))
            extent = np.broadcast_to(v.extent, (len(o), 2))
            args = {"in": n_in, "out": n_out, "bias": has_bias}
            kind = "linear"
            new = _Value(out_shape, heads, np.zeros((n_out, 2), np.int64), v.level + 1)
        else:
            nd = 1 if isinstance(m, nn.Conv1d) else 2
            if m.groups != 1:  # type: ignore[union-attr]
                raise LayerNetError(f"{where}: groups={m.groups} is not supported (only 1)")
            if m.padding_mode != "zeros" or isinstance(m.padding, str):  # type: ignore[union-attr]
                raise LayerNetError(f"{where}: only numeric zero padding is supported")
            if len(v.shape) != nd + 1:
                raise LayerNetError(f"{where}: expects {nd + 1}-D examples, got {v.shape}")
            c_in, c_out, k = m.in_channels, m.out_channels, tuple(m.kernel_size)  # type: ignore[union-attr]
            heads = self.units.new(c_out)
            n_k = math.prod(k)
            flat = np.arange(c_out * c_in * n_k)
            o, rest = np.divmod(flat, c_in * n_k)
            i, t = np.divmod(rest, n_k)
            src, dst = v.channel_units()[i], heads[o]
            tap = np.zeros((len(flat), 2), dtype=np.int64)
            tap[:, 2 - nd :] = np.stack(np.unravel_index(t, k), 1)
            place = np.stack([i, o], 1)
            count = np.broadcast_to([c_in, c_out], (len(o), 2))
            extent = np.broadcast_to((1, *k)[-2:], (len(o), 2))
            args = {"in": c_in, "out": c_out, "kernel": k, "stride": m.stride,  # type: ignore[union-attr]
                    "padding": m.padding, "dilation": m.dilation, "bias": has_bias}  # type: ignore[union-attr]  # fmt: skip
            kind = "conv"
            new = _spatial_value(heads, out_shape, v.level + 1)
        is_bias = np.zeros(len(src), dtype=bool)
        if has_bias:
            n_b = len(heads)
            bias_units = self.units.new(n_b)
            self.bias_units += bias_units.tolist()
            src = np.concatenate([src, bias_units])
            dst = np.concatenate([dst, heads])
            tap = np.concatenate([tap, np.zeros((n_b, 2), np.int64)])
            is_bias = np.concatenate([is_bias, np.ones(n_b, dtype=bool)])
            place = np.concatenate([place, np.stack([np.zeros(n_b, np.int64), np.arange(n_b)], 1)])
            count = np.concatenate([count, np.broadcast_to([1, n_b], (n_b, 2))])
            extent = np.concatenate([extent, np.ones((n_b, 2), np.int64)])
        self.weights.append((src, dst, tap, is_bias))
        self.places.append((place, count, extent))
        self._add_value(node, new)
        self.ops.append(Op(kind, (a,), self.ids[node], args, str(node.target), self.offset))
        self.offset += len(src)
        self.param_names.append(f"{node.target}.weight")
        if has_bias:
            self.param_names.append(f"{node.target}.bias")

    # ------------------------------------------------------------------ units
    def _finish(self, out: int) -> LayerNet:
        if not self.weights:
            raise LayerNetError("the module has no Linear or Conv layer: nothing to grow")
        if out != len(self.values) - 1 or self.ops[-1].out != out:
            raise LayerNetError("the module's output must be its last op")
        find = np.vectorize(self.units.find, otypes=[np.int64])
        roots = find(np.arange(len(self.units.parent)))
        kept, relabel = np.unique(roots, return_inverse=True)
        src = relabel[np.concatenate([s for s, *_ in self.weights])]
        dst = relabel[np.concatenate([d for _, d, *_ in self.weights])]
        tap = np.concatenate([t for *_, t, _ in self.weights])
        is_bias = np.concatenate([b for *_, b in self.weights])
        layer = np.concatenate([np.full(len(s), j) for j, (s, *_) in enumerate(self.weights)])
        n = len(kept)
        kind = np.full(n, HIDDEN, dtype=np.int64)
        level = np.zeros(n, dtype=np.int64)
        for v in reversed(self.values):  # the earliest value that holds a unit sets its level
            level[relabel[v.feat_unit]] = v.level
        in_units = relabel[self.values[0].channel_units() if len(self.values[0].shape) > 1
                           else self.values[0].feat_unit]  # fmt: skip
        out_units = relabel[self.values[out].feat_unit]
        kind[relabel[self.bias_units]] = BIAS
        kind[out_units] = OUTPUT
        kind[in_units] = INPUT
        return LayerNet(
            ops=self.ops,
            shapes=[v.shape for v in self.values],
            num_weights=int(len(src)),
            src=src,
            dst=dst,
            tap=tap,
            layer=layer,
            is_bias=is_bias,
            num_units=n,
            unit_kind=kind,
            unit_level=level,
            input_units=in_units,
            output_units=out_units,
            param_names=self.param_names,
            place=np.concatenate([p for p, *_ in self.places]).astype(np.int64),
            place_count=np.concatenate([c for _, c, _ in self.places]).astype(np.int64),
            tap_extent=np.concatenate([x for *_, x in self.places]).astype(np.int64),
        )


architecture.MODULE_TRACER = LayerNet.from_module  # Architecture.from_module
