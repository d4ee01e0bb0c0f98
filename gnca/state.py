r"""Initial states of task nets: where growth starts, and how symmetry is broken.

If every task net started from i.i.d. random weights with equal hidden states, the dynamics
would be equivariant to relabelling the output neurons and the grown classifier would be at
chance on average, whatever the rule (design notes, section 3). The initial state must break the
symmetry. Three kinds, by name (``init``):

``fixed``
    One seeded initial net (``init_seed``) for every sample, as a cellular automaton grows from
    one seed; samples differ through the stochastic fire mask and optional ``init_noise``.
    ``h = 0``.
``random``
    i.i.d. weights per sample, ``h = 0``: the documented negative control.
``codes``
    i.i.d. weights per sample and *identity codes* in ``h`` telling each weight where it sits.

Weights are drawn as ``init_scale * N(0, 1) / sqrt(fan_in)`` (``fan_in`` = number of non-bias
in-weights of the weight's head neuron); bias weights start at 0.

Identity-code channels (``f = code_freqs``; ``s_k(p) = sin(2 pi k p)``, ``c_k(p) = cos(2 pi k p)``,
positions normalised to ``p = (i + 0.5) / n``):

======================  =====  ==========================================================
channels                count  content
======================  =====  ==========================================================
``0 .. 4f-1``           4f     in-neuron ``u``: for image inputs ``[s_k(row), c_k(row)]_{k=1..f}``
                               then ``[s_k(col), c_k(col)]_{k=1..f}``; otherwise ``[s_k(p),
                               c_k(p)]`` for ``k = 1..2f`` of ``u``'s position in its level; 0
                               for biases
``4f .. 4f+2g-1``       2g     out-neuron ``v``: ``[s_k(p), c_k(p)]_{k=1..g}`` of its position
                               (class index for outputs)
``4f+2g``               1      depth: ``level(v) / depth`` of the net (0 with
                               ``depth_code=False``)
``4f+2g+1``             1      1 if ``u`` is an input neuron
``4f+2g+2``             1      1 if ``v`` is an output neuron
``4f+2g+3``             1      1 for bias weights
``4f+2g+4 .. C-1``      rest   0 (free memory for the rule)
======================  =====  ==========================================================

``g = out_code_freqs`` is the number of frequencies of the out-neuron code, ``f`` unless set; so
``codes`` needs ``C >= 4f + 2g + 4`` (``6f + 4``, 16 for the default ``f = 2``). The out-neuron
code is what a first-layer weight knows about its hidden neuron: a grown first layer that is a
smooth function of a code of ``g`` frequencies has rank about ``2g + 1`` (docs/results.md,
section 3), so ``g = 2f`` gives the first layer the resolution the in-neuron code of hidden
neurons already has, for ``2f`` more channels.

``code_jitter = j > 0`` (meant for meta-training only) moves every hidden neuron's position, per
net, to ``p = (i + 0.5 + j * (u - 0.5)) / n`` with ``u ~ U(0, 1)`` drawn from the generator, so
that the rule meets positions between the ``n`` exact ones (those of wider layers) in training.
Input, output and bias positions are never moved. ``j = 0`` (the default) is exact and draws
nothing. ``code_jitter_fraction = q < 1`` moves the neurons of only a random ``q`` of the nets
(one Bernoulli draw per net, after the positions), so that the others carry the exact codes the
rule will grow from; ``q = 1`` (the default) moves every net and draws nothing more.

``neuron_codes = "random"`` replaces the sinusoidal position codes of *hidden* neurons by a
Gaussian vector ``z ~ N(0, I / 2)`` (the sinusoids' mean square) of ``4f`` channels drawn per
neuron and net: a hidden neuron carries ``z`` as the in-neuron code of its out-weights and
``z[:2f]`` as the out-neuron code of its in-weights. A smooth function of a sinusoidal
position code of ``f`` frequencies spans about ``2f + 1`` directions, so a grown hidden layer has
about that rank whatever its width (docs/results.md, section 3); random codes give every neuron
its own direction, at any width, at the price of a different draw per net (on 14x14 MNIST it
meta-trains far more slowly than the sinusoids; docs/results.md). Input and output neurons keep
their sinusoidal codes. Drawn after the weights and the jitter.

``feedback_init = c`` (not 0) starts the last hidden channel at ``c * w``: the channel a
data-reading rule's learned feedback lives in (``rule.feedback: learned`` with the ``error`` or
``delta`` sense), so that the backward messages of the first steps already point along the
weights instead of being 0. The feedback is part of a weight's own state, so this is as local
as the weight itself. It needs ``init`` fixed or random (identity codes fill the channels) and
changes nothing else.

Every option above is a field of :class:`InitSpec`, under the name of its config key
(``task.<name>``, :class:`gnca.config.TaskConfig` takes the fields from it), and the keyword of
:func:`initial_state`, :func:`initial_weights` and :func:`identity_codes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch_geometric.data import Batch, Data

from gnca.architecture import HIDDEN, INPUT, OUTPUT
from gnca.graph import num_graphs, per_graph_attr, same_architecture, weight_batch

INIT_KINDS = ("fixed", "random", "codes")
NEURON_CODES = ("sincos", "random")


@dataclass
class InitSpec:
    """How task nets start: every initial-state option, named as its config key ``task.<name>``
    (:class:`gnca.config.TaskConfig` declares these keys by deriving from this class)."""

    init: str = "fixed"  # fixed | random | codes
    init_seed: int = 0  # seed of the `fixed` initial net
    init_scale: float = 1.0  # initial weights ~ init_scale * N(0,1)/sqrt(fan_in)
    init_noise: float = 0.0  # extra N(0, init_noise) added to each sample's initial weights
    code_freqs: int = 2  # sinusoid frequencies per identity code (init=codes)
    out_code_freqs: int | None = None  # frequencies of the out-neuron code; None = code_freqs
    depth_code: bool = True  # identity codes carry level/depth (false: 0, same for every depth)
    code_jitter: float = 0.0  # meta-training only: random shift of hidden code positions, 0..1
    code_jitter_fraction: float = 1.0  # share of meta-training nets the jitter moves, 0..1
    neuron_codes: str = "sincos"  # hidden neurons' codes: sincos (position) | random (Gaussian)
    feedback_init: float = 0.0  # the last hidden channel (learned feedback) starts at this * w

    def state(
        self, graph: Data, hidden_channels: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial ``(w (E,), h (E, C))`` of every net in ``graph``: the weights, then (``codes``)
        the identity codes, both drawn from ``generator`` in that order; with
        ``feedback_init``, ``h[:, -1] = feedback_init * w``."""
        w = _weights(self, graph, generator)
        if self.init == "codes":
            h = _codes(self, graph, hidden_channels, generator)
        else:
            h = torch.zeros(w.shape[0], hidden_channels, dtype=w.dtype, device=w.device)
        if self.feedback_init:
            if self.init == "codes" or hidden_channels < 1:
                raise ValueError(
                    "feedback_init starts the last hidden channel at the weights: it needs "
                    f"init fixed or random and hidden channels, got init={self.init!r} and "
                    f"{hidden_channels} channels"
                )
            h = torch.cat([h[:, :-1], self.feedback_init * w.unsqueeze(1)], dim=1)
        return w, h

    def growing(self) -> InitSpec:
        """This start without the options meant for meta-training seeds only
        (:data:`TRAINING_ONLY`, the code jitter): the exact codes growing uses."""
        defaults = {f.name: f.default for f in fields(InitSpec) if f.name in TRAINING_ONLY}
        return replace(self, **defaults)

    @classmethod
    def of(cls, source: Any) -> InitSpec:
        """The :class:`InitSpec` fields of ``source`` (a :class:`gnca.config.TaskConfig`, or
        another spec), as an :class:`InitSpec`."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})


#: The options that apply to meta-training seeds only; growing keeps their defaults.
TRAINING_ONLY = ("code_jitter", "code_jitter_fraction")


def initial_state(
    graph: Data,
    hidden_channels: int,
    init: str = "fixed",
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial ``(w, h)`` of every task net in ``graph``: ``(E,)`` and ``(E, C)``.

    Args:
        graph: weight graph or batch.
        hidden_channels: ``C``.
        init: ``"fixed"`` (default), ``"random"`` or ``"codes"`` (module docstring).
        generator: random generator for the per-sample draws.
        **options: any other field of :class:`InitSpec` (``init_seed``, ``code_freqs``, ...).
    """
    return InitSpec(init, **options).state(graph, hidden_channels, generator)


def initial_weights(
    graph: Data,
    init: str = "fixed",
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    """``(E,)`` initial weights (bias weights 0); ``options``: fields of :class:`InitSpec`
    (``init_seed``, ``init_scale``, ``init_noise``).

    ``fixed`` draws one net per architecture from ``init_seed`` (identical across samples and
    calls); ``random``/``codes`` draw every sample independently from ``generator``.
    """
    return _weights(InitSpec(init, **options), graph, generator)


def identity_codes(
    graph: Data,
    hidden_channels: int,
    code_freqs: int = 2,
    depth_code: bool = True,
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    """``(E, C)`` identity codes of every weight (see the module docstring for the layout).

    ``options``: the other code fields of :class:`InitSpec` (``out_code_freqs``,
    ``code_jitter``, ``code_jitter_fraction``, ``neuron_codes``). The jitter and random neuron
    codes are drawn from ``generator``.
    """
    spec = InitSpec("codes", code_freqs=code_freqs, depth_code=depth_code, **options)
    return _codes(spec, graph, hidden_channels, generator)


def code_channels(code_freqs: int, out_code_freqs: int | None = None) -> int:
    """Channels used by the identity codes: ``4f + 2g + 4`` for ``f = code_freqs`` frequencies
    and ``g = out_code_freqs`` out-neuron frequencies (``g = f`` when ``None``: ``6f + 4``)."""
    g = code_freqs if out_code_freqs is None else out_code_freqs
    return 4 * code_freqs + 2 * g + 4


def check_codes_fit(init: InitSpec, hidden_channels: int) -> None:
    """A ValueError, in config key names, when identity codes need more channels than the
    rule's hidden state has."""
    if init.init == "codes":
        need = code_channels(init.code_freqs, init.out_code_freqs)
        if hidden_channels < need:
            g = init.out_code_freqs
            extra = "" if g is None else f" and task.out_code_freqs = {g}"
            raise ValueError(
                f"rule.hidden_channels = {hidden_channels} is too small for task.init = codes "
                f"with task.code_freqs = {init.code_freqs}{extra} (needs >= {need})"
            )


# ---------------------------------------------------------------------- weights
def _weights(spec: InitSpec, graph: Data, generator: torch.Generator | None) -> torch.Tensor:
    """``(E,)`` initial weights of :func:`initial_weights`."""
    if spec.init not in INIT_KINDS:
        raise ValueError(f"unknown init {spec.init!r}; choose one of {', '.join(INIT_KINDS)}")
    dtype = torch.get_default_dtype()
    device = graph.src.device
    e = graph.src.numel()
    std = spec.init_scale / graph.fan_in.to(dtype).sqrt()  # (E,)
    if spec.init == "fixed":
        w = _fixed_normal(graph, int(spec.init_seed), dtype).to(device) * std
        if spec.init_noise > 0:
            noise = torch.randn(e, generator=generator, dtype=dtype, device=device)
            w = w + spec.init_noise * noise
    else:
        w = torch.randn(e, generator=generator, dtype=dtype, device=device) * std
    return torch.where(graph.is_bias, torch.zeros_like(w), w)


def _fixed_normal(graph: Data, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``(E,)`` standard normal draws of the ``fixed`` net, on the CPU: one draw from ``seed``
    per net, the same for nets of the same architecture."""
    if same_architecture(graph):
        g = num_graphs(graph)
        per = graph.src.numel() // g
        return _seeded_normal(per, seed, dtype).repeat(g)
    return torch.cat([_seeded_normal(c, seed, dtype) for c in graph.num_weights_per_graph.tolist()])


def _seeded_normal(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------- identity codes
def _codes(
    spec: InitSpec, graph: Data, hidden_channels: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``(E, C)`` identity codes of :func:`identity_codes`: the in-neuron code, the out-neuron
    code (hidden neurons' replaced by random codes with ``neuron_codes="random"``), the flags
    and zeros."""
    nets = getattr(graph, "layer_net", None)
    if nets is not None:  # a layer net (gnca/layers.py): channel, tap and layer codes
        net = nets[0] if isinstance(nets, list) else nets
        codes = net.codes(hidden_channels, spec.code_freqs, copies=num_graphs(graph),
                          jitter=spec.code_jitter, fraction=spec.code_jitter_fraction,
                          generator=generator, depth_code=spec.depth_code)  # fmt: skip
        return codes.to(torch.get_default_dtype()).to(graph.src.device)
    f, g = _check_codes(spec, hidden_channels)
    drawn = spec.code_jitter > 0 or spec.neuron_codes == "random"
    copies = num_graphs(graph)
    if copies > 1 and not drawn and isinstance(graph, Batch) and same_architecture(graph):
        # copies of one net carry the same codes: compute them once (the per-weight code
        # arithmetic on every copy cost as much as a rule step when growing 100 MNIST nets)
        return _codes(spec, graph.get_example(0), hidden_channels, None).repeat(copies, 1)
    dtype = torch.get_default_dtype()
    src, dst = graph.src, graph.dst
    pos = _positions(spec, graph, generator, dtype)  # (N,)
    in_code = _in_code(graph, pos, f, dtype)  # (E, 4f)
    out_code = _sincos(pos[dst], range(1, g + 1))  # (E, 2g)
    if spec.neuron_codes == "random":
        in_code, out_code = _random_hidden_codes(graph, in_code, out_code, f, g, generator, dtype)
    in_code = in_code * (~graph.is_bias).to(dtype).unsqueeze(1)
    codes = torch.cat([in_code, out_code, _flags(graph, spec.depth_code, dtype)], dim=1)
    free = hidden_channels - codes.shape[1]  # channels after the 4f + 2g + 4 of the codes: 0
    return torch.cat([codes, torch.zeros(src.numel(), free, dtype=dtype, device=src.device)], 1)


def _check_codes(spec: InitSpec, hidden_channels: int) -> tuple[int, int]:
    """``(f, g)``: the frequencies of the in- and out-neuron codes; a ValueError for options
    out of range or too few channels."""
    f = spec.code_freqs
    if f < 1:
        raise ValueError(f"code_freqs must be >= 1, got {f}")
    g = f if spec.out_code_freqs is None else spec.out_code_freqs
    if g < 1:
        raise ValueError(f"out_code_freqs must be >= 1, got {g}")
    need = code_channels(f, g)
    if hidden_channels < need:
        extra = "" if spec.out_code_freqs is None else f" and out_code_freqs={g}"
        raise ValueError(
            f"identity codes with code_freqs={f}{extra} need hidden_channels >= {need}, "
            f"got {hidden_channels}"
        )
    for name in ("code_jitter", "code_jitter_fraction"):
        if not 0.0 <= getattr(spec, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(spec, name)}")
    if spec.neuron_codes not in NEURON_CODES:
        raise ValueError(
            f"unknown neuron_codes {spec.neuron_codes!r}; choose one of {', '.join(NEURON_CODES)}"
        )
    return f, g


def _positions(
    spec: InitSpec, graph: Data, generator: torch.Generator | None, dtype: torch.dtype
) -> torch.Tensor:
    """``(N,)`` every neuron's position in its level, normalised to ``(i + 0.5) / n``; hidden
    neurons moved by the jitter (``code_jitter``, on ``code_jitter_fraction`` of the nets)."""
    kind = graph.neuron_kind
    offset = torch.full_like(graph.neuron_position, 0.5, dtype=dtype)  # (N,)
    if spec.code_jitter > 0:
        u = torch.rand(offset.shape, generator=generator, dtype=dtype, device=offset.device)
        move = kind == HIDDEN  # (N,)
        if spec.code_jitter_fraction < 1.0:
            counts = graph.num_neurons_per_graph.to(offset.device)
            chosen = (
                torch.rand(counts.numel(), generator=generator, dtype=dtype, device=offset.device)
                < spec.code_jitter_fraction
            )  # (G,) nets whose hidden positions move
            move = move & chosen.repeat_interleave(counts)
        offset = torch.where(move, offset + spec.code_jitter * (u - 0.5), offset)
    size = graph.neuron_level_size.clamp(min=1).to(dtype)
    return (graph.neuron_position.to(dtype) + offset) / size


def _in_code(graph: Data, pos: torch.Tensor, f: int, dtype: torch.dtype) -> torch.Tensor:
    """``(E, 4f)`` code of every weight's tail neuron: ``2f`` frequencies of its position, or
    ``f`` of its row and ``f`` of its column for the pixels of image inputs."""
    src = graph.src
    in_code = _sincos(pos[src], range(1, 2 * f + 1))  # (E, 4f)
    shapes = per_graph_attr(graph, "input_shape")
    if any(s is not None for s in shapes):
        from_input = graph.neuron_kind[src] == INPUT
        idx = graph.neuron_position[src].to(dtype)
        # per-weight image shape (graphs without one keep the 1-D code)
        gid = weight_batch(graph)
        hw = torch.tensor(
            [s if s is not None else [0, 0] for s in shapes], dtype=dtype, device=src.device
        )[gid]  # (E, 2)
        img = from_input & (hw[:, 0] > 0)
        width = hw[:, 1].clamp(min=1)
        row = (torch.div(idx, width, rounding_mode="floor") + 0.5) / hw[:, 0].clamp(min=1)
        col = (idx - torch.div(idx, width, rounding_mode="floor") * width + 0.5) / width
        img_code = torch.cat([_sincos(row, range(1, f + 1)), _sincos(col, range(1, f + 1))], 1)
        in_code = torch.where(img.unsqueeze(1), img_code, in_code)
    return in_code


def _random_hidden_codes(
    graph: Data,
    in_code: torch.Tensor,
    out_code: torch.Tensor,
    f: int,
    g: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``neuron_codes="random"``: hidden neurons' codes replaced by a Gaussian vector drawn per
    neuron and net (``z`` as in-neuron code, ``z[:2g]`` as out-neuron code)."""
    kind = graph.neuron_kind
    z = math.sqrt(0.5) * torch.randn(
        kind.numel(),
        max(4 * f, 2 * g),
        generator=generator,
        dtype=dtype,
        device=graph.neuron_position.device,
    )  # (N, max(4f, 2g)): one code per neuron of every net
    hidden = kind == HIDDEN
    src, dst = graph.src, graph.dst
    in_code = torch.where(hidden[src].unsqueeze(1), z[src, : 4 * f], in_code)
    out_code = torch.where(hidden[dst].unsqueeze(1), z[dst, : 2 * g], out_code)
    return in_code, out_code


def _flags(graph: Data, depth_code: bool, dtype: torch.dtype) -> torch.Tensor:
    """``(E, 4)``: the depth ``level(v) / depth`` (0 without ``depth_code``), input, output and
    bias flags of every weight."""
    src, dst, kind = graph.src, graph.dst, graph.neuron_kind
    if depth_code:
        depth = torch.as_tensor(graph.depth, dtype=dtype, device=src.device).reshape(-1)
        per_weight_depth = depth.expand(num_graphs(graph))[weight_batch(graph)]
        depth_w = graph.neuron_level[dst].to(dtype) / per_weight_depth
    else:
        depth_w = torch.zeros(src.numel(), dtype=dtype, device=src.device)
    return torch.stack(
        [
            depth_w,
            (kind[src] == INPUT).to(dtype),
            (kind[dst] == OUTPUT).to(dtype),
            graph.is_bias.to(dtype),
        ],
        dim=1,
    )


def _sincos(p: torch.Tensor, freqs: range) -> torch.Tensor:
    """``(M, 2 * len(freqs))`` sinusoidal code of positions ``p`` ``(M,)`` in [0, 1)."""
    k = torch.tensor(list(freqs), dtype=p.dtype, device=p.device)
    ang = 2 * math.pi * p.unsqueeze(1) * k  # (M, F)
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=2).flatten(1)  # (M, 2F)
