"""The local rule: one small network shared by every weight of every task net.

:class:`LocalRule` holds the update equation (its docstring), the reference step
(:meth:`LocalRule.step`) and the choice of route; the cheaper routes that compute the same step
(the fused no-grad step of growing, the factored first layer of meta-training) are in
:mod:`gnca.rule_fast`, with a table of which runs when.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing

from gnca.adam import adam_path
from gnca.factored_senses import FactoredSenses
from gnca.graph import cached, check_neighbourhood, line_graph_edge_index
from gnca.perception import REDUCTIONS, perceive, perception_size
from gnca.rule_adam import adam_only_step, dense_plan
from gnca.rule_fast import delta_no_grad, pick_route
from gnca.senses import FEEDBACKS, NEEDS_FEEDBACK, SENSES, check_senses, normalised, sense_size

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``tanh``, ``gelu``, ``silu``, ``sigmoid``,
    ``identity``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class LocalRule(MessagePassing):
    r"""The Meta-NCA local rule (Barot, *Meta-Neural Cellular Automata*): one MLP shared by every
    weight of every net, as a message-passing layer on the weight graph.

    For every weight :math:`i` with value :math:`w_i` and hidden state :math:`\mathbf{h}_i`,
    :math:`\mathbf{x}_i = [w_i, \mathbf{h}_i]`:

    .. math::
        \mathbf{p}_i = \Big[\mathbf{x}_i,\
            \square_{j \in \mathcal{N}_f(i)} \mathbf{x}_j,\
            \square_{j \in \mathcal{N}_b(i)} \mathbf{x}_j,\ \mathbf{s}_i\Big], \qquad
        [\Delta w_i, \Delta\mathbf{h}_i] = b \tanh\!\big(\mathrm{MLP}(\mathbf{p}_i) / b\big),

    .. math::
        w_i' = w_i + m_i\, \Delta w_i, \qquad
        \mathbf{h}_i' = \mathbf{h}_i + m_i\, \Delta\mathbf{h}_i, \qquad
        m_i \sim \mathrm{Bernoulli}(\text{fire\_rate}),

    where :math:`\square` is the aggregation (``aggr``, mean by default), :math:`\mathcal{N}_f,
    \mathcal{N}_b` the forward and backward neighbourhoods (:data:`gnca.graph.NEIGHBOURHOODS`),
    :math:`\mathbf{s}_i` the senses (none for a data-free rule), and :math:`b` the ``bound``
    (without one, :math:`[\Delta w_i, \Delta\mathbf{h}_i] = \mathrm{MLP}(\mathbf{p}_i)`). With a
    ``state_bound`` :math:`\sigma`, :math:`\mathbf{h}_i' = \mathbf{h}_i + m_i\,(\sigma
    \tanh((\mathbf{h}_i + \Delta\mathbf{h}_i) / \sigma) - \mathbf{h}_i)`. The MLP's last layer
    starts at zero, so a fresh rule changes nothing (with a ``descent`` path, below, it
    descends along its ``delta`` sense).

    :meth:`step` computes exactly this: the reference route. :meth:`forward` runs it or a fast
    route of :mod:`gnca.rule_fast` (the same step up to float rounding; a table there says
    which runs when).

    Args:
        hidden_channels: ``C``, the hidden state size of each weight.
        widths: hidden layer widths of the rule MLP (default ``(64,)``).
        activation: the MLP's activation (default ``"relu"``).
        neighbourhood: ``"incident"`` (default), ``"directed"`` or ``"sibling"``.
        include_self: count each weight among its own neighbours.
        reduce: ``"mean"`` (default) or ``"sum"``, the aggregations that factor through the
            neurons (the ``"fast"`` perception, ``O(E)``).
        fire_rate: probability that a weight is updated at a step (default 0.8).
        bound: :math:`b`; ``None`` (default): no bound on the MLP's output.
        state_bound: :math:`\sigma`; hidden states then stay in :math:`(-\sigma, \sigma)`
            however long a net grows.
        aggr: any torch-geometric aggregation (``"max"``, ...; default ``reduce``). One that
            does not factor through the neurons perceives on the materialised line graph only
            (:attr:`route` ``"explicit"``; ``path="fast"`` is then an error).
        senses: what the rule reads of the data at every step (:data:`gnca.senses.SENSES`);
            their ``S`` channels are appended to the perception, and :meth:`forward` then needs
            ``senses=`` (e.g. from :class:`gnca.senses.SenseReader`). Empty (the default): a
            data-free rule.
        sense_norm: read the ``error`` and ``delta`` senses of every net at unit root mean
            square (:func:`gnca.senses.normalised`), so that they do not fade as the net
            learns.
        sense_floor: with ``sense_norm``, divide by ``max(rms, sense_floor)`` instead: error
            signals weaker than the floor keep their scale (0, the default: no floor).
        descent: :math:`\alpha_0 > 0` adds a descent path to the weight update,
            :math:`w_i' = w_i + m_i\,(\Delta w_i - \alpha\, s^{\delta}_i)`, with
            :math:`s^{\delta}_i` the ``delta`` sense as the reader gives it (the error signal
            through the learned feedback times the input, soft-clipped; not rescaled by
            ``sense_norm``, so that its steps shrink as the net fits its data, as a gradient
            step does) and :math:`\alpha = \alpha_0 e^{\lambda}` a learned step size
            (:math:`\lambda` starts at 0). The rule then starts as feedback-alignment descent
            and the MLP learns what to add. 0 (default):
            no descent path. Needs the ``delta`` sense.
        descent_only: the weights move along the descent path only (the MLP's weight output
            is not used; it writes the hidden states, the feedback channel among them). Needs
            ``descent``.
        descent_norm: :math:`\beta_2 \in [0, 1)` divides the descent path's sense by the
            root of its running mean square per weight, as Adam divides a gradient:
            :math:`v_i' = \beta_2 v_i + (1 - \beta_2) (s^{\delta}_i)^2`,
            :math:`w_i' = w_i + m_i\,(\Delta w_i - \alpha\, \hat s_i / (\sqrt{\hat v_i} +
            \epsilon))` with Adam's bias corrections :math:`\hat v_i = v_i' / (1 - \beta_2^t)`
            and :math:`\hat s_i = s^{\delta}_i` (or, with ``descent_momentum``, the corrected
            running mean :math:`\hat m_i`), so that every weight steps by about :math:`\alpha`
            whatever the size of its error signal (a net near a saddle leaves it as fast as
            one far from it). The moments live in the first hidden channels (:func:`adam_path`),
            which the path writes instead of the MLP (the MLP reads them); :math:`v` is a
            constant for the meta-gradient. ``None`` (default): the sense as given. Needs
            ``descent``.
        descent_momentum: :math:`\beta_1 \in [0, 1)`, Adam's first moment for a
            ``descent_norm`` path (0, the default: none).
        descent_age: the step size depends on each weight's age :math:`t_i` (its number of
            updates): :math:`\alpha_i = \alpha\, e^{\mu \beta_2^{t_i}}`, with
            :math:`\beta_2^{t_i} = 1 - c_{2,i}` read from the bias correction the moment
            channels hold (1 for a new weight, towards 0 after many times
            :math:`1 / (1 - \beta_2)` updates) and :math:`\mu` learned (it starts at 0: the
            step of a rule without it). It lets one rule take larger steps while a net is
            young and smaller ones late, as a learning rate schedule does. Needs
            ``descent_norm``.
        descent_age_fixed: with ``descent_age``, :math:`\mu` is this value, kept fixed (a
            buffer, not a parameter: a hand-set schedule); ``None`` (default): learned.
        feedback: what the backward messages of the ``error`` and ``delta`` senses are
            multiplied by (:class:`gnca.senses.SenseReader`, which is built with it):
            ``"learned"`` (default), the last hidden channel, or ``"weights"``, the weights
            themselves (the messages are then backpropagated errors).

    Shapes:
        - **input:** a :class:`~gnca.WeightGraph` (or batch) with :math:`E` weights,
          weights ``w`` :math:`(E,)`, hidden states ``h`` :math:`(E, C)`,
          senses :math:`(E, S)` *(rules with senses)*, fire mask :math:`(E,)` *(optional)*
        - **output:** new tensors ``(w', h')`` of shapes :math:`(E,)` and :math:`(E, C)`
    """

    #: Whether meta-training takes the factored route of :mod:`gnca.rule_fast` (set from
    #: ``train.perception``; not part of :meth:`config`: it changes no result beyond rounding).
    factored: bool = False

    #: Weights per block of the no-grad routes on CPU, sized so that a block's activations stay
    #: in cache; ``None`` processes all weights at once.
    block_rows: int | None = 16384

    # ------------------------------------------------------------------ the paper's step, routes
    def step(
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
        """The update equation as written (the reference route every fast route is tested
        against); arguments as for :meth:`forward`."""
        p = self.perceive(graph, w, h, path)  # (E, 3 + 3C): [x, agg_f x, agg_b x], x = [w, h]
        if senses is not None:
            p = torch.cat([p, self.read(graph, senses).to(p.dtype)], dim=1)  # (E, 3 + 3C + S)
        d = self.bounded(self.mlp(p))  # (E, 1 + C): [dw, dh]
        if self.descent and mask is None:  # one mask for the MLP's update and the descent path
            mask = self.fire_mask(w.shape[0], w.device, generator)
        w_new, h_new = self.masked_update(w, h, d, mask, generator)
        return self.with_descent(w, h, w_new, h_new, senses, mask)

    def with_descent(
        self,
        w: torch.Tensor,
        h: torch.Tensor,
        w_new: torch.Tensor,
        h_new: torch.Tensor,
        senses: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w', h')`` of a step from ``(w, h)`` whose MLP update gave ``w_new``, ``h_new``:
        unchanged without a descent path; else ``w'`` is ``w_new`` (or the old ``w`` with
        ``descent_only``) minus ``alpha * mask * s_delta``, ``s_delta`` the ``delta`` column of
        the reader's senses ``(E, S)`` (before :meth:`read`), ``mask`` ``(E,)`` the firing
        weights. With ``descent_norm``, ``s_delta`` is Adam's normalised step
        (:func:`adam_path`), whose moments replace the first channels of ``h_new``."""
        if not self.descent:
            return w_new, h_new
        assert senses is not None and mask is not None, "descent needs the senses and the mask"
        base = w if self.descent_only else w_new
        s = senses[:, self.senses_offset("delta")].to(w.dtype)  # (E,)
        m = mask.to(w.dtype)
        rate = self.descent_rate
        if self.descent_norm is not None:
            k = self.moment_channels
            s, moments = adam_path(s, h[:, :k], self.descent_momentum, self.descent_norm, m)
            h_new = torch.cat([moments, h_new[:, k:]], dim=1)
            rate = self.aged_rate(moments[:, 1])
        return torch.addcmul(base, rate * s, m, value=-1.0), h_new

    def aged_rate(self, c2: torch.Tensor) -> torch.Tensor:
        r"""The step size of weights whose bias corrections are ``c2`` ``(E,)`` (after this
        step's update): :math:`\alpha e^{\mu (1 - c_2)}` ``(E,)`` with ``descent_age``, else
        :attr:`descent_rate` (0-dim)."""
        if not self.descent_age:
            return self.descent_rate
        return self.descent_rate * torch.exp(self.descent_age_coef * (1 - c2.detach()))

    @property
    def descent_rate(self) -> torch.Tensor:
        r"""The descent path's step size :math:`\alpha = \alpha_0 e^{\lambda}` (a 0-dim
        tensor, differentiable in :math:`\lambda`)."""
        return self.descent * self.descent_log.exp()

    @property
    def moment_channels(self) -> int:
        """Hidden channels that hold a ``descent_norm`` path's moments (:func:`adam_path`):
        0 without one, 2 (``v``, ``1 - beta2^t``), 4 with ``descent_momentum`` (and ``m``,
        ``1 - beta1^t``)."""
        if self.descent_norm is None:
            return 0
        return 4 if self.descent_momentum else 2

    def _adam_only_route(self, w: torch.Tensor, path: str) -> bool:
        """Whether :meth:`forward` takes :func:`gnca.rule_adam.adam_only_step`: growing
        (no gradients) on the fast path, a rule whose weights move by Adam's path alone, an
        MLP with a hidden layer, no autocast, parameters in the state's dtype."""
        return (
            not torch.is_grad_enabled()
            and path == "fast"
            and self.descent_only
            and self.descent_norm is not None
            and bool(self.widths)
            and not torch.is_autocast_enabled(w.device.type)
            and self.out.weight.dtype == w.dtype
        )

    def reads_factored(self, graph: Data, w: torch.Tensor) -> bool:
        """Whether this step, on ``graph`` and ``w``, would read its senses factored
        (:class:`gnca.factored_senses.FactoredSenses`) without writing them out per weight:
        the growing route of :func:`gnca.rule_adam.adam_only_step` on a batch of one MLP with
        biases (:func:`gnca.rule_adam.dense_plan`). :func:`gnca.grow.grow` asks its reader for
        such senses then; every other route takes them too, written out."""
        return (
            bool(self.senses)
            and self._adam_only_route(w, _check_path(self, None))
            and dense_plan(graph, self.neighbourhood, self.include_self, self.reduce, w.dtype)
            is not None
        )

    def senses_offset(self, name: str) -> int:
        """The first column of sense ``name`` in this rule's ``(E, S)`` senses."""
        off = 0
        for n in self.senses:
            if n == name:
                return off
            off += SENSES[n]
        raise ValueError(f"the rule does not read the {name!r} sense")

    def masked_update(
        self,
        w: torch.Tensor,
        h: torch.Tensor,
        d: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New ``(w', h')``: the firing weights (``mask``, else drawn by :meth:`fire_mask`) add
        their ``d = [dw, dh]`` ``(E, 1 + C)``, the others keep their values."""
        if mask is None:
            mask = self.fire_mask(w.shape[0], w.device, generator)
        m = mask.to(d.dtype).unsqueeze(1)  # (E, 1)
        # split, not two slices: its backward is one concatenation of the two gradients, where
        # each slice's backward would write its gradient into a zero (E, 1 + C) tensor
        dw, dh = d.split((1, self.hidden_channels), dim=1)
        w_new = torch.addcmul(w.unsqueeze(1), dw, m).squeeze(1)  # w + m dw
        if self.state_bound is None:
            return w_new, torch.addcmul(h, dh, m)  # h + m dh
        sb = self.state_bound
        return w_new, torch.addcmul(h, torch.tanh((h + dh) / sb) * sb - h, m)

    def forward(
        self,
        graph: Data,
        w: torch.Tensor,
        h: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        path: str | None = None,
        senses: torch.Tensor | FactoredSenses | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One rule step on every weight (shapes in the class docstring): :meth:`step`, or the
        fast route :func:`gnca.rule_fast.pick_route` picks for it. ``mask``: which weights fire (1)
        or keep their values (0), drawn with ``fire_rate`` (from ``generator``) when ``None``;
        ``path``: ``"fast"`` or ``"explicit"`` perception (``None``: the rule's :attr:`route`);
        ``senses``: what each weight senses of the data (rules with ``senses``), ``(E, S)`` or
        factored (:meth:`reads_factored`)."""
        path = _check_path(self, path)
        _check_sense_tensor(self.senses, senses, w.shape[0])
        if self._adam_only_route(w, path):
            assert senses is not None  # a descent path needs senses (checked above)
            if mask is None:
                mask = self.fire_mask(w.shape[0], w.device, generator)
            j = self.senses_offset("delta")
            s = senses.column(j) if isinstance(senses, FactoredSenses) else senses[:, j]
            return adam_only_step(self, graph, w, h, mask, senses, s)
        if isinstance(senses, FactoredSenses):
            senses = senses.dense()
        fast = pick_route(self, graph, w, path)
        if fast is not None:
            s = self.read(graph, senses) if senses is not None else None
            if self.descent and mask is None:  # one mask for the MLP's update and the path
                mask = self.fire_mask(w.shape[0], w.device, generator)
            w_new, h_new = fast(self, graph, w, h, mask, generator, s)
            return self.with_descent(w, h, w_new, h_new, senses, mask)
        return self.step(graph, w, h, mask=mask, generator=generator, path=path, senses=senses)

    # ------------------------------------------------------------------ construction
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
        sense_norm: bool = False,
        sense_floor: float = 0.0,
        descent: float = 0.0,
        descent_only: bool = False,
        descent_norm: float | None = None,
        descent_momentum: float = 0.0,
        descent_age: bool = False,
        descent_age_fixed: float | None = None,
        feedback: str = "learned",
    ) -> None:
        _check_arguments(reduce, aggr, fire_rate, hidden_channels, bound, state_bound)
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
        self.sense_norm = bool(sense_norm)
        if self.sense_norm and not self.senses:
            raise ValueError("sense_norm rescales the senses: the rule needs senses")
        self.sense_floor = float(sense_floor)
        if self.sense_floor and not self.sense_norm:
            raise ValueError("sense_floor bounds sense_norm's divisor: set sense_norm too")
        if not self.sense_floor >= 0:
            raise ValueError(f"sense_floor must be >= 0, got {sense_floor}")
        self.descent = float(descent)
        if not self.descent >= 0:
            raise ValueError(f"descent must be >= 0, got {descent}")
        if self.descent and "delta" not in self.senses:
            raise ValueError("descent steps along the delta sense: add 'delta' to senses")
        self.descent_only = bool(descent_only)
        if self.descent_only and not self.descent:
            raise ValueError("descent_only moves the weights by the descent path: set descent > 0")
        if feedback not in FEEDBACKS:
            raise ValueError(f"unknown feedback {feedback!r}; choose one of {', '.join(FEEDBACKS)}")
        if feedback != "learned" and not any(n in NEEDS_FEEDBACK for n in self.senses):
            raise ValueError(f"feedback {feedback!r} is read by the error and delta senses only")
        self.feedback = feedback
        self.descent_norm = None if descent_norm is None else float(descent_norm)
        self.descent_momentum = float(descent_momentum)
        if not 0.0 <= self.descent_momentum < 1.0:
            raise ValueError(f"descent_momentum must be in [0, 1), got {descent_momentum}")
        if self.descent_momentum and self.descent_norm is None:
            raise ValueError("descent_momentum is Adam's first moment: set descent_norm too")
        if self.descent_norm is not None:
            if not 0.0 <= self.descent_norm < 1.0:
                raise ValueError(f"descent_norm must be in [0, 1), got {descent_norm}")
            if not self.descent:
                raise ValueError("descent_norm rescales the descent path: set descent > 0")
            if self.hidden_channels < self.moment_channels + 1:
                raise ValueError(
                    f"descent_norm keeps Adam's moments in the first {self.moment_channels} "
                    f"hidden channels and the feedback in the last: hidden_channels >= "
                    f"{self.moment_channels + 1}"
                )
        self.descent_age = bool(descent_age)
        self.descent_age_fixed = None if descent_age_fixed is None else float(descent_age_fixed)
        if self.descent_age_fixed is not None and not self.descent_age:
            raise ValueError("descent_age_fixed fixes descent_age's mu: set descent_age")
        if self.descent_age and self.descent_norm is None:
            raise ValueError(
                "descent_age reads each weight's age from Adam's moments: set descent_norm"
            )
        if any(n in NEEDS_FEEDBACK for n in self.senses) and self.hidden_channels < 1:
            raise ValueError("senses error/delta read the feedback channel: hidden_channels >= 1")
        layers: list[nn.Module] = []
        d = perception_size(self.hidden_channels) + sense_size(self.senses)
        for width in self.widths:
            layers += [nn.Linear(d, width), make_activation(activation)]
            d = width
        self.out = nn.Linear(d, 1 + self.hidden_channels)
        self.mlp = nn.Sequential(*layers, self.out)
        if self.descent:  # log of the descent path's step size over descent
            self.descent_log = nn.Parameter(torch.zeros(()))
        if self.descent_age and self.descent_age_fixed is None:  # mu: a new weight's log-step
            self.descent_age_coef = nn.Parameter(torch.zeros(()))  # over an old one's
        elif self.descent_age:
            self.register_buffer("descent_age_coef", torch.tensor(self.descent_age_fixed))
        self.reset_parameters()

    # ------------------------------------------------------------------ the step's parts
    def read(self, graph: Data, senses: torch.Tensor) -> torch.Tensor:
        """The senses ``(E, S)`` as the MLP reads them: with ``sense_norm``, the error signals
        of every net at unit RMS (:func:`gnca.senses.normalised`); else as given."""
        if not self.sense_norm:
            return senses
        return normalised(graph, senses, self.senses, self.sense_floor)

    def perceive(
        self, graph: Data, w: torch.Tensor, h: torch.Tensor, path: str | None = None
    ) -> torch.Tensor:
        """``(E, 3 + 3C)`` perception vectors through the neurons (``"fast"``,
        :func:`gnca.perceive`) or by ``propagate`` on the materialised line graph
        (``"explicit"``); ``path=None``: the rule's :attr:`route`."""
        if _check_path(self, path) == "fast":
            return perceive(
                graph, w, h, self.neighbourhood, include_self=self.include_self, reduce=self.reduce
            )
        ei_f, ei_b = self.line_graph(graph)
        x = torch.cat([w.unsqueeze(1), h], dim=1)  # (E, 1 + C)
        x_f = self.propagate(ei_f, x=x)  # (E, 1 + C)
        x_b = self.propagate(ei_b, x=x)  # (E, 1 + C)
        return torch.cat([x, x_f, x_b], dim=1)

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

    def bounded(self, out: torch.Tensor) -> torch.Tensor:
        """``bound * tanh(out / bound)`` when the rule has a bound, else ``out``; ``(E, 1 + C)``."""
        return out if self.bound is None else self.bound * torch.tanh(out / self.bound)

    def delta(self, p: torch.Tensor) -> torch.Tensor:
        """``(E, 1 + C)`` raw update ``[dw, dh]`` of perceptions ``p``: ``bounded(mlp(p))``.

        Without gradients it runs block by block with in-place activations
        (:func:`gnca.rule_fast.delta_no_grad`), as inside the no-grad routes (so it is their
        floor).
        """
        if not torch.is_grad_enabled():
            return delta_no_grad(self, p)
        return self.bounded(self.mlp(p))

    def fire_mask(
        self, num_weights: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(E,)`` float mask, each entry 1 with probability ``fire_rate``."""
        if self.fire_rate >= 1.0:
            return torch.ones(num_weights, device=device)
        u = torch.rand(num_weights, device=device, generator=generator)
        return (u < self.fire_rate).to(torch.get_default_dtype())

    def reset_parameters(self) -> None:
        """Default init for hidden layers; the output layer at zero (a no-op rule, or plain
        descent with a descent path at its starting step size)."""
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if self.descent:
            nn.init.zeros_(self.descent_log)
        if self.descent_age and self.descent_age_fixed is None:
            nn.init.zeros_(self.descent_age_coef)

    # ------------------------------------------------------------------ config
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
            **({"sense_norm": True} if self.sense_norm else {}),
            **({"sense_floor": self.sense_floor} if self.sense_floor else {}),
            **({"descent": self.descent} if self.descent else {}),
            **({"descent_only": True} if self.descent_only else {}),
            **({"descent_norm": self.descent_norm} if self.descent_norm is not None else {}),
            **({"descent_momentum": self.descent_momentum} if self.descent_momentum else {}),
            **({"descent_age": True} if self.descent_age else {}),
            **(
                {"descent_age_fixed": self.descent_age_fixed}
                if self.descent_age_fixed is not None
                else {}
            ),
            **({"feedback": self.feedback} if self.feedback != "learned" else {}),
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
            + (", sense_norm" if self.sense_norm else "")
            + (f", sense_floor={self.sense_floor:g}" if self.sense_floor else "")
            + (
                f", descent={self.descent:g} (step {float(self.descent_rate.detach()):.4g})"
                if self.descent
                else ""
            )
            + (", descent_only" if self.descent_only else "")
            + (f", descent_norm={self.descent_norm:g}" if self.descent_norm is not None else "")
            + (f", descent_momentum={self.descent_momentum:g}" if self.descent_momentum else "")
            + (
                f", descent_age (mu {float(self.descent_age_coef.detach()):.3g}"
                + (", fixed)" if self.descent_age_fixed is not None else ")")
                if self.descent_age
                else ""
            )
            + (f", feedback={self.feedback}" if self.feedback != "learned" else "")
            + ")"
        )


def _check_arguments(
    reduce: str,
    aggr: str | None,
    fire_rate: float,
    hidden_channels: int,
    bound: float | None,
    state_bound: float | None,
) -> None:
    """Raise a ValueError for a :class:`LocalRule` argument out of its range."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    if aggr is not None and aggr in REDUCTIONS and aggr != reduce:
        raise ValueError(
            f"aggr={aggr!r} contradicts reduce={reduce!r}; give one of them (for mean and "
            f"sum they name the same aggregation)"
        )
    if aggr is not None and not isinstance(aggr, str):
        raise ValueError(f"aggr must be the name of an aggregation, got {aggr!r}")
    if not 0.0 < fire_rate <= 1.0:
        raise ValueError(f"fire_rate must be in (0, 1], got {fire_rate}")
    if hidden_channels < 0:
        raise ValueError(f"hidden_channels must be >= 0, got {hidden_channels}")
    if bound is not None and bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if state_bound is not None and not state_bound > 0:
        raise ValueError(f"state_bound must be positive, got {state_bound}")


def _check_path(rule: LocalRule, path: str | None) -> str:
    """``path``, or the rule's :attr:`~LocalRule.route` when ``None``; a ValueError for an
    unknown path or a ``"fast"`` one the rule's aggregation does not have."""
    if path is None:
        return rule.route
    if path not in ("fast", "explicit"):
        raise ValueError(f"unknown path {path!r}; choose 'fast' or 'explicit'")
    if path == "fast" and rule.route != "fast":
        raise ValueError(
            f"aggr={rule.aggr_name!r} does not factor through the neurons: this rule has no "
            f"fast route; use path='explicit' (or aggr mean / sum)"
        )
    return path


def _check_sense_tensor(
    names: tuple[str, ...], senses: torch.Tensor | FactoredSenses | None, e: int
) -> None:
    """A ValueError unless ``senses`` is ``(E, S)`` for a rule that senses ``names``, or
    ``None`` for a data-free rule."""
    if names and senses is None:
        raise ValueError(
            f"this rule reads data (senses {', '.join(names)}): pass senses=, e.g. "
            f"from gnca.senses.SenseReader"
        )
    if not names and senses is not None:
        raise ValueError("this rule has no senses (senses=[]): it cannot read data")
    if senses is not None and tuple(senses.shape) != (e, sense_size(names)):
        raise ValueError(
            f"senses must have shape ({e}, {sense_size(names)}), got {tuple(senses.shape)}"
        )


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
