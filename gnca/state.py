r"""Initial states of task nets: where growth starts, and how symmetry is broken.

If every task net started from i.i.d. random weights with equal hidden states, the dynamics
would be equivariant to relabelling the output neurons and the grown classifier would be at
chance on average, whatever the rule (design notes, section 3). The initial state must break the
symmetry. Three kinds, by name:

``fixed``
    One seeded initial net (``init_seed``) for every sample, as a cellular automaton grows from
    one seed; samples differ through the stochastic fire mask and optional ``noise``. ``h = 0``.
``random``
    i.i.d. weights per sample, ``h = 0``: the documented negative control.
``codes``
    i.i.d. weights per sample and *identity codes* in ``h`` telling each weight where it sits.

Weights are drawn as ``scale * N(0, 1) / sqrt(fan_in)`` (``fan_in`` = number of non-bias
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

``g = out_freqs`` is the number of frequencies of the out-neuron code, ``f`` unless set; so
``codes`` needs ``C >= 4f + 2g + 4`` (``6f + 4``, 16 for the default ``f = 2``). The out-neuron
code is what a first-layer weight knows about its hidden neuron: a grown first layer that is a
smooth function of a code of ``g`` frequencies has rank about ``2g + 1`` (docs/results.md,
section 3), so ``g = 2f`` gives the first layer the resolution the in-neuron code of hidden
neurons already has, for ``2f`` more channels.

``code_jitter = j > 0`` (meant for meta-training only) moves every hidden neuron's position, per
net, to ``p = (i + 0.5 + j * (u - 0.5)) / n`` with ``u ~ U(0, 1)`` drawn from the generator, so
that the rule meets positions between the ``n`` exact ones (those of wider layers) in training.
Input, output and bias positions are never moved. ``j = 0`` (the default) is exact and draws
nothing. ``jitter_fraction = q < 1`` moves the neurons of only a random ``q`` of the nets (one
Bernoulli draw per net, after the positions), so that the others carry the exact codes the
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch_geometric.data import Batch, Data

from gnca.architecture import HIDDEN, INPUT, OUTPUT
from gnca.graph import num_graphs, per_graph_attr, same_architecture, weight_batch

INIT_KINDS = ("fixed", "random", "codes")
NEURON_CODES = ("sincos", "random")


def code_channels(code_freqs: int, out_freqs: int | None = None) -> int:
    """Channels used by the identity codes: ``4f + 2g + 4`` for ``f = code_freqs`` frequencies
    and ``g = out_freqs`` out-neuron frequencies (``g = f`` when ``None``: ``6f + 4``)."""
    g = code_freqs if out_freqs is None else out_freqs
    return 4 * code_freqs + 2 * g + 4


def _sincos(p: torch.Tensor, freqs: range) -> torch.Tensor:
    """``(M, 2 * len(freqs))`` sinusoidal code of positions ``p`` ``(M,)`` in [0, 1)."""
    k = torch.tensor(list(freqs), dtype=p.dtype, device=p.device)
    ang = 2 * math.pi * p.unsqueeze(1) * k  # (M, F)
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=2).flatten(1)  # (M, 2F)


def identity_codes(
    graph: Data,
    hidden_channels: int,
    code_freqs: int = 2,
    depth_code: bool = True,
    *,
    code_jitter: float = 0.0,
    neuron_codes: str = "sincos",
    out_freqs: int | None = None,
    jitter_fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(E, C)`` identity codes of every weight (see the module docstring for the layout).

    With ``depth_code=False`` the depth channel is 0, so that the hidden-to-hidden layers of nets
    of every depth carry the same codes (only the input/output flags tell layers apart).
    ``code_jitter`` in ``[0, 1]`` moves hidden neurons' positions at random by up to half of
    ``code_jitter`` neuron spacings, one draw per neuron from ``generator``.
    ``neuron_codes="random"`` gives hidden neurons Gaussian codes drawn from ``generator``.
    ``out_freqs`` sets the out-neuron code's frequencies (``code_freqs`` when ``None``).
    ``jitter_fraction`` in ``[0, 1]``: the share of nets whose positions the jitter moves.
    """
    f = code_freqs
    if f < 1:
        raise ValueError(f"code_freqs must be >= 1, got {f}")
    g = f if out_freqs is None else out_freqs
    if g < 1:
        raise ValueError(f"out_freqs must be >= 1, got {g}")
    need = code_channels(f, g)
    if hidden_channels < need:
        extra = "" if out_freqs is None else f" and out_freqs={g}"
        raise ValueError(
            f"identity codes with code_freqs={f}{extra} need hidden_channels >= {need}, "
            f"got {hidden_channels}"
        )
    if not 0.0 <= code_jitter <= 1.0:
        raise ValueError(f"code_jitter must be in [0, 1], got {code_jitter}")
    if not 0.0 <= jitter_fraction <= 1.0:
        raise ValueError(f"jitter_fraction must be in [0, 1], got {jitter_fraction}")
    if neuron_codes not in NEURON_CODES:
        raise ValueError(
            f"unknown neuron_codes {neuron_codes!r}; choose one of {', '.join(NEURON_CODES)}"
        )
    drawn = code_jitter > 0 or neuron_codes == "random"
    copies = num_graphs(graph)
    if copies > 1 and not drawn and isinstance(graph, Batch) and same_architecture(graph):
        # copies of one net carry the same codes: compute them once (the per-weight code
        # arithmetic on every copy cost as much as a rule step when growing 100 MNIST nets)
        one = identity_codes(
            graph.get_example(0), hidden_channels, code_freqs, depth_code, out_freqs=out_freqs
        )
        return one.repeat(copies, 1)
    dtype = torch.get_default_dtype()
    src, dst = graph.src, graph.dst
    kind = graph.neuron_kind
    offset = torch.full_like(graph.neuron_position, 0.5, dtype=dtype)  # (N,)
    if code_jitter > 0:
        u = torch.rand(offset.shape, generator=generator, dtype=dtype, device=offset.device)
        move = kind == HIDDEN  # (N,)
        if jitter_fraction < 1.0:
            counts = graph.num_neurons_per_graph.to(offset.device)
            chosen = (
                torch.rand(counts.numel(), generator=generator, dtype=dtype, device=offset.device)
                < jitter_fraction
            )  # (G,) nets whose hidden positions move
            move = move & chosen.repeat_interleave(counts)
        offset = torch.where(move, offset + code_jitter * (u - 0.5), offset)
    size = graph.neuron_level_size.clamp(min=1).to(dtype)
    pos = (graph.neuron_position.to(dtype) + offset) / size  # (N,)
    e = src.numel()
    h = torch.zeros(e, hidden_channels, dtype=dtype, device=src.device)
    # in-neuron code
    in_code = _sincos(pos[src], range(1, 2 * f + 1))  # (E, 4f)
    shapes = per_graph_attr(graph, "input_shape")
    if any(s is not None for s in shapes):
        from_input = kind[src] == INPUT
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
    out_code = _sincos(pos[dst], range(1, g + 1))  # (E, 2g)
    if neuron_codes == "random":
        z = math.sqrt(0.5) * torch.randn(
            kind.numel(), max(4 * f, 2 * g), generator=generator, dtype=dtype, device=offset.device
        )  # (N, max(4f, 2g)): one code per neuron of every net
        hidden = kind == HIDDEN
        in_code = torch.where(hidden[src].unsqueeze(1), z[src, : 4 * f], in_code)
        out_code = torch.where(hidden[dst].unsqueeze(1), z[dst, : 2 * g], out_code)
    in_code = in_code * (~graph.is_bias).to(dtype).unsqueeze(1)
    if depth_code:
        depth = torch.as_tensor(graph.depth, dtype=dtype, device=src.device).reshape(-1)
        per_weight_depth = depth.expand(num_graphs(graph))[weight_batch(graph)]
        depth_w = graph.neuron_level[dst].to(dtype) / per_weight_depth
    else:
        depth_w = torch.zeros(e, dtype=dtype, device=src.device)
    flags = torch.stack(
        [
            depth_w,
            (kind[src] == INPUT).to(dtype),
            (kind[dst] == OUTPUT).to(dtype),
            graph.is_bias.to(dtype),
        ],
        dim=1,
    )  # (E, 4)
    codes = torch.cat([in_code, out_code, flags], dim=1)  # (E, 4f + 2g + 4)
    return torch.cat([codes, h[:, need:]], dim=1)


def initial_weights(
    graph: Data,
    kind: str = "fixed",
    *,
    scale: float = 1.0,
    seed: int = 0,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(E,)`` initial weights (bias weights 0).

    ``fixed`` draws one net per architecture from ``seed`` (identical across samples and calls);
    ``random``/``codes`` draw every sample independently from ``generator``.
    """
    if kind not in INIT_KINDS:
        raise ValueError(f"unknown init {kind!r}; choose one of {', '.join(INIT_KINDS)}")
    dtype = torch.get_default_dtype()
    device = graph.src.device
    e = graph.src.numel()
    std = scale / graph.fan_in.to(dtype).sqrt()  # (E,)
    if kind == "fixed":
        seeded = torch.Generator().manual_seed(int(seed))
        if same_architecture(graph):
            g = num_graphs(graph)
            per = e // g
            z = torch.randn(per, generator=seeded, dtype=dtype).repeat(g)
        else:
            counts = graph.num_weights_per_graph.tolist()
            z = torch.cat(
                [
                    torch.randn(c, generator=torch.Generator().manual_seed(int(seed)), dtype=dtype)
                    for c in counts
                ]
            )
        w = z.to(device) * std
        if noise > 0:
            w = w + noise * torch.randn(e, generator=generator, dtype=dtype, device=device)
    else:
        w = torch.randn(e, generator=generator, dtype=dtype, device=device) * std
    return torch.where(graph.is_bias, torch.zeros_like(w), w)


def initial_state(
    graph: Data,
    hidden_channels: int,
    kind: str = "fixed",
    *,
    scale: float = 1.0,
    seed: int = 0,
    noise: float = 0.0,
    code_freqs: int = 2,
    depth_code: bool = True,
    code_jitter: float = 0.0,
    neuron_codes: str = "sincos",
    out_freqs: int | None = None,
    jitter_fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial ``(w, h)`` of every task net in ``graph``: ``(E,)`` and ``(E, C)``.

    Args:
        graph: weight graph or batch.
        hidden_channels: ``C``.
        kind: ``"fixed"`` (default), ``"random"`` or ``"codes"`` (module docstring).
        scale: weight scale (times ``1/sqrt(fan_in)``).
        seed: the seed of the ``fixed`` net.
        noise: standard deviation of per-sample noise added to ``fixed`` weights.
        code_freqs: frequencies per identity code (``codes``).
        depth_code: whether the codes carry ``level(v) / depth`` (``codes``).
        code_jitter: random shift of hidden neurons' code positions, in neuron spacings
            (``codes``; module docstring). Drawn after the weights.
        neuron_codes: ``"sincos"`` position codes or ``"random"`` Gaussian codes for hidden
            neurons (``codes``; module docstring). Drawn after the jitter.
        out_freqs: frequencies of the out-neuron code (``codes``; ``code_freqs`` if ``None``).
        jitter_fraction: share of the nets whose positions ``code_jitter`` moves (``codes``).
        generator: random generator for the per-sample draws.
    """
    w = initial_weights(graph, kind, scale=scale, seed=seed, noise=noise, generator=generator)
    if kind == "codes":
        h = identity_codes(
            graph,
            hidden_channels,
            code_freqs,
            depth_code,
            code_jitter=code_jitter,
            neuron_codes=neuron_codes,
            out_freqs=out_freqs,
            jitter_fraction=jitter_fraction,
            generator=generator,
        )
    else:
        h = torch.zeros(w.shape[0], hidden_channels, dtype=w.dtype, device=w.device)
    return w, h


@dataclass
class InitSpec:
    """How task nets start (see :mod:`gnca.state`)."""

    kind: str = "fixed"
    scale: float = 1.0
    seed: int = 0
    noise: float = 0.0
    code_freqs: int = 2
    depth_code: bool = True
    code_jitter: float = 0.0
    neuron_codes: str = "sincos"
    out_freqs: int | None = None
    jitter_fraction: float = 1.0

    def state(
        self, graph: Data, hidden_channels: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial ``(w (E,), h (E, C))`` of every net in ``graph`` (:func:`gnca.initial_state`)."""
        return initial_state(
            graph,
            hidden_channels,
            self.kind,
            scale=self.scale,
            seed=self.seed,
            noise=self.noise,
            code_freqs=self.code_freqs,
            depth_code=self.depth_code,
            code_jitter=self.code_jitter,
            neuron_codes=self.neuron_codes,
            out_freqs=self.out_freqs,
            jitter_fraction=self.jitter_fraction,
            generator=generator,
        )


def check_codes_fit(init: InitSpec, hidden_channels: int) -> None:
    """A ValueError when identity codes need more channels than the rule's hidden state has."""
    if init.kind == "codes":
        need = code_channels(init.code_freqs, init.out_freqs)
        if hidden_channels < need:
            extra = "" if init.out_freqs is None else f" and task.out_code_freqs = {init.out_freqs}"
            raise ValueError(
                f"rule.hidden_channels = {hidden_channels} is too small for task.init = codes "
                f"with task.code_freqs = {init.code_freqs}{extra} (needs >= {need})"
            )
