"""Modules from compact specs: the ``conv:`` nets of ``--arch`` and ``FILE.py:CLASS`` modules of
your own, built as ``torch.nn`` modules that :meth:`gnca.layers.LayerNet.from_module` traces."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from gnca.layers import ACTIVATIONS, LayerNetError

__all__ = ["CONV_TOKEN", "FC_TOKEN", "Residual", "conv_module", "module_from_file"]


def conv_module(
    spec: str, in_shape: Sequence[int], n_classes: int, *, bias: bool = True,
    activation: str = "tanh",
) -> nn.Module:  # fmt: skip
    """The ``nn.Sequential`` of a compact conv-net spec such as ``"8k5s2-16k5s2"``.

    Each ``-``-separated token is a conv layer ``<channels>k<kernel>[s<stride>][p<padding>]``
    (``1-D`` or ``2-D`` after ``in_shape``: ``(C, L)`` or ``(C, H, W)``), followed by the
    activation; ``fc<width>`` tokens after the convs are hidden linear layers; the net ends in
    flatten (before the first linear layer) and a linear layer to ``n_classes``. A token
    prefixed by ``r`` is a residual layer, ``x + act(layer(x))`` (:class:`Residual`):
    ``r16k3p1`` (16 channels in and out, stride 1, padding ``(kernel - 1) / 2``) or ``rfc32``
    (32 features in and out); it must keep the shape it gets.

    Raises:
        LayerNetError: a token that does not parse, a conv that shrinks the input to nothing,
            or a residual layer that changes the shape.
    """
    if activation not in ACTIVATIONS:
        raise LayerNetError(f"unknown activation {activation!r}; choose one of "
                            f"{', '.join(ACTIVATIONS)}")  # fmt: skip
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}[activation]
    shape = tuple(int(s) for s in in_shape)
    if len(shape) not in (2, 3):
        raise LayerNetError(f"a conv net needs (C, L) or (C, H, W) inputs, got {shape}")
    conv = nn.Conv1d if len(shape) == 2 else nn.Conv2d
    layers: list[nn.Module] = []
    c, fc = shape[0], False
    x0 = torch.zeros(1, *shape)
    for token in [t for t in spec.split("-") if t]:
        residual = token.startswith("r")
        body = token[1:] if residual else token
        m = CONV_TOKEN.fullmatch(body)
        f = FC_TOKEN.fullmatch(body)
        if m and not fc:
            out, k = int(m["c"]), int(m["k"])
            s, p = int(m["s"] or 1), int(m["p"] or 0)
            layer: nn.Module = conv(c, out, k, stride=s, padding=p, bias=bias)
            c = out
        elif f:
            if not fc:
                layers.append(nn.Flatten())
                fc = True
            layer = nn.LazyLinear(int(f["w"]), bias=bias)
        else:
            raise LayerNetError(
                f"bad conv spec token {token!r} in {spec!r}: use <channels>k<kernel>[s<stride>]"
                f"[p<padding>] (e.g. 8k5s2), then fc<width> for hidden linear layers, each "
                f"optionally prefixed by r for a residual layer (r8k3p1, rfc32)"
            )
        before = _shape_after(layers, x0, spec, token, shape)
        layers += [Residual(layer, act()) if residual else layer]
        if not residual:
            layers.append(act())
        after = _shape_after(layers, x0, spec, token, shape, residual=residual)
        if residual and after != before:
            raise LayerNetError(
                f"conv spec {spec!r}: residual layer {token} must keep the shape it gets, "
                f"{before}, but gives {after} (same channels or width, stride 1, padding "
                f"(kernel - 1) / 2)"
            )
    if not fc:
        layers.append(nn.Flatten())
    layers.append(nn.LazyLinear(n_classes, bias=bias))
    net = nn.Sequential(*layers)
    net(x0)  # materialise the lazy layers
    return net


class Residual(nn.Module):
    """``x + act(layer(x))``: a residual layer of a conv spec (``r16k3p1``, ``rfc32``)."""

    def __init__(self, layer: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.layer(x))


def _shape_after(
    layers: list[nn.Module], x0: torch.Tensor, spec: str, token: str, shape: tuple[int, ...],
    *, residual: bool = False,
) -> tuple[int, ...]:  # fmt: skip
    """The shape of one example after ``layers``; a :class:`LayerNetError` naming ``token``
    when they fail on it (a conv that shrinks it to nothing, a residual that changes it)."""
    if residual:  # the layer's own output, before the + that would fail on a new shape
        *rest, last = layers
        x = nn.Sequential(*rest)(x0)
        try:
            return tuple(last.layer(x).shape[1:])
        except RuntimeError:
            raise LayerNetError(f"conv spec {spec!r}: {token} shrinks {shape} to nothing") from None
    try:
        return tuple(nn.Sequential(*layers)(x0).shape[1:])
    except RuntimeError:
        raise LayerNetError(f"conv spec {spec!r}: {token} shrinks {shape} to nothing") from None


#: a conv token of a spec, ``<channels>k<kernel>[s<stride>][p<padding>]`` (groups c, k, s, p)
CONV_TOKEN = re.compile(r"(?P<c>\d+)k(?P<k>\d+)(?:s(?P<s>\d+))?(?:p(?P<p>\d+))?")
#: a hidden linear token of a spec, ``fc<width>`` (group w)
FC_TOKEN = re.compile(r"fc(?P<w>\d+)")


def module_from_file(spec: str) -> nn.Module:
    """An instance of ``Class`` from ``path/to/file.py:Class`` (built with no arguments)."""
    import importlib.util
    from pathlib import Path

    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise LayerNetError(f"--module takes FILE.py:CLASS, got {spec!r}")
    if not Path(path).is_file():
        raise LayerNetError(f"module file not found: {path}")
    loader = importlib.util.spec_from_file_location(f"gnca_user_{Path(path).stem}", path)
    if loader is None or loader.loader is None:
        raise LayerNetError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(loader)
    try:
        loader.loader.exec_module(mod)
    except Exception as err:
        raise LayerNetError(f"importing {path} failed: {type(err).__name__}: {err}") from None
    cls = getattr(mod, name, None)
    if cls is None:
        raise LayerNetError(f"{path} has no {name}")
    try:
        return cls()
    except Exception as err:
        raise LayerNetError(f"{name}() failed: {type(err).__name__}: {err}") from None
