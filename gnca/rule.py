r"""The local rule: one small network shared by every weight of every task net.

:class:`LocalRule` is a torch-geometric :class:`~torch_geometric.nn.MessagePassing` layer on the
weight graph. For every weight ``i`` with value :math:`w_i` and hidden state :math:`h_i`:

.. math::
    x_i = [w_i, h_i], \qquad
    p_i = \big[x_i,\ \square_{j \in N_f(i)} x_j,\ \square_{j \in N_b(i)} x_j\big], \qquad
    (\Delta w_i, \Delta h_i) =
    b \tanh\!\big(\mathrm{MLP}(p_i) / b\big) \text{ (or } \mathrm{MLP}(p_i)),

.. math::
    w_i' = w_i + m_i \Delta w_i, \qquad h_i' = h_i + m_i \Delta h_i, \qquad
    m_i \sim \mathrm{Bernoulli}(\text{fire\_rate}),

where :math:`\square` is the aggregation (mean by default), :math:`N_f, N_b` the forward and
backward neighbourhoods of :data:`gnca.graph.NEIGHBOURHOODS`, and the MLP's last layer starts at
zero so that a fresh rule changes nothing.

Two paths compute :math:`p_i` and give the same result: the default ``"fast"`` path factors every
aggregation through the neurons (:func:`gnca.perceive`, ``O(E)``); the ``"explicit"`` path runs
``propagate`` over a materialised line graph (:func:`gnca.graph.line_graph_edge_index`) and accepts
any torch-geometric aggregation (``aggr="max"``, ...).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing

from gnca.factored import factored_first_layer, factored_plan
from gnca.graph import (
    NEIGHBOURHOODS,
    cached,
    check_neighbourhood,
    line_graph_edge_index,
    total_neurons,
)
from gnca.perception import REDUCTIONS, check_state, neuron_plan, perceive, perception_size
from gnca.senses import NEEDS_FEEDBACK, check_senses, sense_size

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


#: In-place versions of the activations, for the no-grad step (``None``: out of place).
_INPLACE: dict[type[nn.Module], object] = {
    nn.ReLU: torch.relu_,
    nn.Tanh: torch.tanh_,
    nn.Sigmoid: torch.sigmoid_,
    nn.SiLU: lambda x: F.silu(x, inplace=True),
    nn.Identity: lambda x: x,
}


def _remove_generated_propagate_file(cls: type) -> None:
    """Delete the ``propagate`` module that torch-geometric rendered into the temp folder.

    ``MessagePassing`` writes a generated ``<module>_<Class>_propagate_*.py`` into the system temp
    folder the first time a class is instantiated in a process, imports it, and never deletes
    it, so every process that builds a rule left one file behind. The module stays imported (it
    is in ``sys.modules``); only the file goes.
    """
    name = f"{cls.__module__}_{cls.__name__}_propagate"
    path = getattr(sys.modules.get(name), "__file__", None)
    if not path or os.path.dirname(os.path.abspath(path)) != os.path.abspath(tempfile.gettempdir()):
        return
    with contextlib.suppress(OSError):
        os.remove(path)


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``tanh``, ``gelu``, ``silu``, ``sigmoid``,
    ``identity``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class LocalRule(MessagePassing):
    """The MetaNCA local rule (see the module docstring for the update equations).

    Args:
        hidden_channels: ``C``, the hidden state size of each weight.
        widths: hidden layer widths of the rule MLP (default ``(64,)``).
        activation: the MLP's activation (default ``"relu"``).
        neighbourhood: ``"incident"`` (default), ``"directed"`` or ``"sibling"``.
        include_self: count each weight among its own neighbours.
        reduce: ``"mean"`` (default) or ``"sum"`` for the fast path.
        fire_rate: probability that a weight is updated at a step (default 0.8).
        bound: when set, outputs are ``bound * tanh(out / bound)``.
        state_bound: when set, a firing weight's new hidden state is
            ``state_bound * tanh((h + dh) / state_bound)`` (non-firing weights keep theirs), so
            hidden states stay in ``(-state_bound, state_bound)`` however long a net grows.
        aggr: the neighbourhood aggregation, any torch-geometric one (``"max"``, ...);
            defaults to ``reduce``. ``mean`` and ``sum`` factor through the neurons and use the
            ``O(E)`` route; any other runs on the materialised line graph only (its ``route``
            is ``"explicit"``, and asking such a rule for ``path="fast"`` is an error).
        senses: what the rule reads of the data at every step (:data:`gnca.senses.SENSES`);
            their ``S`` channels are appended to the perception, and :meth:`forward` then needs
            ``senses=`` (an ``(E, S)`` tensor, e.g. from :class:`gnca.senses.SenseReader`).
            Empty (the default): a data-free rule, exactly as without this option.

    Shapes:
        graph: a :class:`~gnca.WeightGraph` (or batch) with ``E`` weights;
        w: ``(E,)``; h: ``(E, C)``; returns ``(w', h')`` of the same shapes.

    Without gradients (``torch.no_grad()``, as when growing), the fast path runs a fused step
    that never holds the ``(E, 3 + 3C)`` perception or the MLP's ``(E, width)`` activations:
    it sums ``[w, h]`` to the neurons, then perceives, applies the MLP (activations in place)
    and updates ``block_rows`` weights at a time on CPU (all at once on other devices). The
    result equals the differentiable path up to float rounding.
    """

    #: Whether the differentiable fast path applies the MLP's first layer through the neurons
    #: (:mod:`gnca.factored`: the same function up to float rounding, fewer flops, no
    #: ``(E, 3 + 3C)`` perception). Not part of :meth:`config`: it changes no result beyond
    #: rounding. Set by meta-training from ``train.perception``.
    factored: bool = False

    #: Weights per block of the no-grad step and of :meth:`delta` on CPU, sized so that a
    #: block's activations stay in cache; ``None`` processes all weights at once.
    block_rows: int | None = 16384

    def __init__(
        self,
        hidden_channels: int = 8,
        widths: Sequence[int] = (64,),
        activation: str = "relu",
        neighbourhood: str = "incident",
        *,
        include_self: bool = False,
        reduce: str = "mean",
        fire_rate: float = 0.8,
        bound: float | None = None,
        aggr: str | None = None,
        senses: Sequence[str] = (),
        state_bound: float | None = None,
    ) -> None:
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
        if aggr is not None and aggr in REDUCTIONS and aggr != reduce:
            raise ValueError(
                f"aggr={aggr!r} contradicts reduce={reduce!r}; give one of them (for mean and "
                f"sum they name the same aggregation)"
            )
        if aggr is not None and not isinstance(aggr, str):
            raise ValueError(f"aggr must be the name of an aggregation, got {aggr!r}")
        try:
            super().__init__(aggr=aggr or reduce)
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"unknown aggregation aggr={aggr!r}; use a torch-geometric aggregation name "
                f"such as mean, sum, max, min"
            ) from err
        _remove_generated_propagate_file(type(self))
        check_neighbourhood(neighbourhood)
        self.aggr_name = aggr or reduce
        #: how this rule perceives by default: through the neurons when the aggregation
        #: factors (mean, sum), else over the materialised line graph
        self.route = "fast" if self.aggr_name in REDUCTIONS else "explicit"
        if not 0.0 < fire_rate <= 1.0:
            raise ValueError(f"fire_rate must be in (0, 1], got {fire_rate}")
        if hidden_channels < 0:
            raise ValueError(f"hidden_channels must be >= 0, got {hidden_channels}")
        if bound is not None and bound <= 0:
            raise ValueError(f"bound must be positive, got {bound}")
        if state_bound is not None and not state_bound > 0:
            raise ValueError(f"state_bound must be positive, got {state_bound}")
        self.hidden_channels = int(hidden_channels)
        self.widths = tuple(int(x) for x in widths)
        self.activation = activation
        self.neighbourhood = neighbourhood
        self.include_self = include_self
        self.reduce = reduce
        self.fire_rate = float(fire_rate)
        self.bound = bound
        self.state_bound = None if state_bound is None else float(state_bound)
        self.senses = check_senses(senses)
        if any(n in NEEDS_FEEDBACK for n in self.senses) and self.hidden_channels < 1:
            raise ValueError("senses error/delta read the feedback channel: hidden_channels >= 1")
        layers: list[nn.Module] = []
        d = perception_size(self.hidden_channels) + sense_size(self.senses)
        for width in self.widths:
            layers += [nn.Linear(d, width), make_activation(activation)]
            d = width
        self.out = nn.Linear(d, 1 + self.hidden_channels)
        self.mlp = nn.Sequential(*layers, self.out)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init for hidden layers; the output layer at zero (a no-op rule)."""
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # ------------------------------------------------------------------ perception
    def perceive(
        self,
        graph: Data,
        w: torch.Tensor,
        h: torch.Tensor,
        path: str | None = None,
    ) -> torch.Tensor:
        """``(E, 3 + 3C)`` perception vectors by the fast route or the explicit line graph
        (``path=None``: the rule's :attr:`route`)."""
        path = self._path(path)
        if path == "fast":
            return perceive(
                graph,
                w,
                h,
                self.neighbourhood,
                include_self=self.include_self,
                reduce=self.reduce,
            )
        ei_f, ei_b = self.line_graph(graph)
        x = torch.cat([w.unsqueeze(1), h], dim=1)  # (E, 1 + C)
        x_f = self.propagate(ei_f, x=x)  # (E, 1 + C)
        x_b = self.propagate(ei_b, x=x)  # (E, 1 + C)
        return torch.cat([x, x_f, x_b], dim=1)

    def _check_senses(self, senses: torch.Tensor | None, e: int) -> None:
        if self.senses and senses is None:
            raise ValueError(
                f"this rule reads data (senses {', '.join(self.senses)}): pass senses=, e.g. "
                f"from gnca.senses.SenseReader"
            )
        if not self.senses and senses is not None:
            raise ValueError("this rule has no senses (senses=[]): it cannot read data")
        if senses is not None and tuple(senses.shape) != (e, sense_size(self.senses)):
            raise ValueError(
                f"senses must have shape ({e}, {sense_size(self.senses)}), got "
                f"{tuple(senses.shape)}"
            )

    def _path(self, path: str | None) -> str:
        if path is None:
            return self.route
        if path not in ("fast", "explicit"):
            raise ValueError(f"unknown path {path!r}; choose 'fast' or 'explicit'")
        if path == "fast" and self.route != "fast":
            raise ValueError(
                f"aggr={self.aggr_name!r} does not factor through the neurons: this rule has no "
                f"fast route; use path='explicit' (or aggr mean / sum)"
            )
        return path

    def line_graph(self, graph: Data) -> tuple[torch.Tensor, torch.Tensor]:
        """The materialised forward/backward relations, cached on ``graph``."""
        return cached(
            graph,
            ("line_graph", self.neighbourhood, self.include_self),
            lambda: line_graph_edge_index(
                graph, self.neighbourhood, include_self=self.include_self
            ),
        )

    def message(self, x_j: torch.Tensor) -> torch.Tensor:
        return x_j

    # ------------------------------------------------------------------ update
    def delta(self, p: torch.Tensor) -> torch.Tensor:
        """``(E, 1 + C)`` raw update ``[dw, dh]`` from perceptions ``p`` ``(E, 3 + 3C)``.

        Without gradients it runs block by block with in-place activations, exactly as inside
        the no-grad step (so it is that step's floor).
        """
        if not torch.is_grad_enabled():
            e = p.shape[0]
            out = p.new_empty(e, 1 + self.hidden_channels)
            block = self._block(p.device, e)
            bufs: dict[int, torch.Tensor] = {}
            for i in range(0, e, block):
                self._delta_no_grad(p[i : i + block], out[i : i + block], bufs)
            return out
        return self._bounded(self.mlp(p))

    def _bounded(self, out: torch.Tensor) -> torch.Tensor:
        """``bound * tanh(out / bound)`` when the rule has a bound, else ``out``; ``(E, 1 + C)``."""
        return out if self.bound is None else self.bound * torch.tanh(out / self.bound)

    def _block(self, device: torch.device, e: int) -> int:
        if device.type != "cpu" or self.block_rows is None:
            return max(e, 1)
        return max(int(self.block_rows), 1)

    def _delta_no_grad(
        self,
        p: torch.Tensor,
        out: torch.Tensor | None = None,
        bufs: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`delta` of one block without autograd: in-place activations, output written
        into ``out`` when given, hidden layers written into the reusable ``bufs`` (one buffer
        per layer, allocated on first use for as many rows as ``p``)."""
        z = p
        layers = list(self.mlp)
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
                inplace = _INPLACE.get(type(m))
                z = inplace(z) if inplace is not None else m(z)  # type: ignore[operator]
        if self.bound is not None:
            z = z.div_(self.bound).tanh_().mul_(self.bound)
        return z

    def fire_mask(
        self, num_weights: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(E,)`` float mask, each entry 1 with probability ``fire_rate``."""
        if self.fire_rate >= 1.0:
            return torch.ones(num_weights, device=device)
        u = torch.rand(num_weights, device=device, generator=generator)
        return (u < self.fire_rate).to(torch.get_default_dtype())

    def forward(
        self,
        graph: Data,
        w: torch.Tensor,
        h: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        path: str | None = None,
        senses: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One rule step on every weight; returns new tensors ``(w', h')``.

        Args:
            graph: weight graph (or batch), ``E`` weights.
            w: ``(E,)`` weights; h: ``(E, C)`` hidden states.
            mask: ``(E,)`` which weights fire (1) or keep their value (0); drawn with
                ``fire_rate`` when ``None``.
            generator: random generator for the mask.
            path: ``"fast"`` or ``"explicit"`` perception; ``None``: the rule's :attr:`route`.
            senses: ``(E, S)`` what each weight senses of the data (rules with ``senses``).
        """
        path = self._path(path)
        self._check_senses(senses, w.shape[0])
        if path == "fast" and not torch.is_grad_enabled():
            return self._forward_no_grad(graph, w, h, mask, generator, senses)
        plan = None
        if path == "fast" and self.factored:
            plan = factored_plan(graph, self.neighbourhood, self.include_self, self.reduce, w.dtype)
        if plan is not None:
            check_state(w, h, graph)
            x = torch.cat([w.unsqueeze(1), h], dim=1)  # (E, 1 + C)
            z = factored_first_layer(plan, self.mlp[0], x, senses)  # (E, width)
            d = self._bounded(self.mlp[1:](z))  # (E, 1 + C)
        else:
            p = self.perceive(graph, w, h, path)  # (E, 3 + 3C)
            if senses is not None:
                p = torch.cat([p, senses.to(p.dtype)], dim=1)  # (E, 3 + 3C + S)
            d = self.delta(p)  # (E, 1 + C)
        if mask is None:
            mask = self.fire_mask(w.shape[0], w.device, generator)
        m = mask.to(d.dtype).unsqueeze(1)  # (E, 1)
        # split, not two slices: its backward is one concatenation of the two gradients, where
        # each slice's backward would write its gradient into a zero (E, 1 + C) tensor
        dw, dh = d.split((1, self.hidden_channels), dim=1)
        w_new = torch.addcmul(w.unsqueeze(1), dw, m).squeeze(1)
        if self.state_bound is None:
            return w_new, torch.addcmul(h, dh, m)
        sb = self.state_bound
        bounded = torch.tanh((h + dh) / sb) * sb  # (E, C)
        return w_new, torch.addcmul(h, bounded - h, m)

    def _forward_no_grad(
        self,
        graph: Data,
        w: torch.Tensor,
        h: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator | None,
        senses: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused fast-path step without autograd (see the class docstring)."""
        check_state(w, h, graph)
        e, d = w.shape[0], 1 + self.hidden_channels
        if mask is None:
            mask = self.fire_mask(e, w.device, generator)
        mask = mask.to(w.dtype)
        index, coef, scale_f, scale_b = neuron_plan(
            graph, self.neighbourhood, self.include_self, self.reduce, w.dtype
        )
        block = self._block(w.device, e)
        n = total_neurons(graph)
        fwd, bwd = NEIGHBOURHOODS[self.neighbourhood]
        ends = {"in": graph.dst, "out": graph.src}
        # sums of x = [w, h] over each neuron's in- and out-weights, block by block
        sums = {"in": w.new_zeros(n, d), "out": w.new_zeros(n, d)}
        for i in range(0, e, block):
            x = torch.cat([w[i : i + block].unsqueeze(1), h[i : i + block]], dim=1)
            for k, at in ends.items():
                sums[k].index_add_(0, at[i : i + block], x)
        if self.neighbourhood == "incident":
            s_f = s_b = sums["in"].add_(sums["out"])
        else:
            s_f, s_b = sums[fwd[0]], sums[bwd[0]]
        table = torch.cat([w.new_zeros(1, d), s_f * scale_f, s_b * scale_b])  # (1 + 2N, D)
        w_new, h_new = torch.empty_like(w), torch.empty_like(h)
        d_buf = w.new_empty(min(block, e), d)
        bufs: dict[int, torch.Tensor] = {}
        for i in range(0, e, block):
            j = min(i + block, e)
            # perception [x, agg_f, agg_b] of the block, built in place: gather the scaled
            # sums (slot 0 reads the zero row), write x into slot 0, fix the own-weight term
            p = table.index_select(0, index[3 * i : 3 * j]).view(j - i, 3 * d)  # (b, 3D)
            p[:, 0] = w[i:j]
            p[:, 1:d] = h[i:j]
            x = p[:, :d]
            p[:, d : 2 * d].addcmul_(x, coef[i:j, 1])
            p[:, 2 * d :].addcmul_(x, coef[i:j, 2])
            if senses is not None:
                p = torch.cat([p, senses[i:j].to(p.dtype)], dim=1)  # (b, 3D + S)
            dx = self._delta_no_grad(p, d_buf[: j - i], bufs)  # (b, D)
            m = mask[i:j]
            torch.addcmul(w[i:j], dx[:, 0], m, out=w_new[i:j])
            if self.state_bound is None:
                torch.addcmul(h[i:j], dx[:, 1:], m.unsqueeze(1), out=h_new[i:j])
            else:  # h + m * (sb * tanh((h + dh) / sb) - h)
                sb = self.state_bound
                bounded = dx[:, 1:].add_(h[i:j]).div_(sb).tanh_().mul_(sb).sub_(h[i:j])
                torch.addcmul(h[i:j], bounded, m.unsqueeze(1), out=h_new[i:j])
        return w_new, h_new

    def config(self) -> dict:
        """Constructor arguments, to rebuild the rule from a checkpoint."""
        return {
            "hidden_channels": self.hidden_channels,
            "widths": list(self.widths),
            "activation": self.activation,
            "neighbourhood": self.neighbourhood,
            "include_self": self.include_self,
            "reduce": self.reduce,
            "fire_rate": self.fire_rate,
            "bound": self.bound,
            "aggr": self.aggr_name,
            "senses": list(self.senses),
            "state_bound": self.state_bound,
        }

    def __repr__(self) -> str:
        d_in = perception_size(self.hidden_channels) + sense_size(self.senses)
        dims = [d_in, *self.widths, 1 + self.hidden_channels]
        return (
            f"{self.__class__.__name__}(C={self.hidden_channels}, "
            f"mlp={'-'.join(map(str, dims))}, {self.neighbourhood}, reduce={self.reduce}, "
            f"fire_rate={self.fire_rate}, bound={self.bound}"
            + (f", aggr={self.aggr_name}" if self.aggr_name != self.reduce else "")
            + (f", senses={'+'.join(self.senses)}" if self.senses else "")
            + (f", state_bound={self.state_bound}" if self.state_bound is not None else "")
            + ")"
        )
