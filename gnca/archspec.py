"""``--arch`` specs: an MLP's layer sizes, its hidden widths only (``h:32-16``), a JSON edge
list, a conv net (``conv:8k5s2-16k5s2``; ``r`` before a token for a residual layer,
``conv:fc32-rfc32``) or a module of your own (``file.py:Class``), turned
into an :class:`~gnca.Architecture` (a :class:`~gnca.layers.LayerNet` for the last two) with
one-line errors (:class:`CLIError`)."""

from __future__ import annotations

import json
from pathlib import Path

from gnca.architecture import Architecture


class CLIError(Exception):
    """A user-facing error with a one-line message."""


# ---------------------------------------------------------------------- helpers
#: Prefix of an ``--arch`` spec that lists only the hidden widths (``h:32-16``).
HIDDEN_PREFIX = "h:"
#: Prefix of a conv-net ``--arch`` spec (``conv:8k5s2-16k5s2``, :func:`gnca.layerspec.conv_module`).
CONV_PREFIX = "conv:"


def layer_arch(spec: str, n_in: int, n_out: int, bias: bool, input_shape, activation: str):
    """The :class:`~gnca.layers.LayerNet` of a ``conv:`` spec or of ``file.py:Class`` for data
    of ``n_in`` features (an image of ``input_shape`` ``(H, W)`` as ``(1, H, W)``, else a
    signal ``(1, n_in)``)."""
    import torch

    from gnca.layers import LayerNet, LayerNetError
    from gnca.layerspec import conv_module, module_from_file

    shape = (1, *input_shape) if input_shape else (1, n_in)
    try:
        if spec.startswith(CONV_PREFIX):
            module = conv_module(spec[len(CONV_PREFIX) :], shape, n_out, bias=bias,
                                 activation=activation)  # fmt: skip
            return LayerNet.from_module(module, torch.zeros(2, *shape))
        module = module_from_file(spec)
        try:  # an image or signal module first, then one that takes the flat features
            return LayerNet.from_module(module, torch.zeros(2, *shape))
        except LayerNetError:
            return LayerNet.from_module(module, torch.zeros(2, n_in))
    except LayerNetError as err:
        raise CLIError(f"--arch {spec}: {err}") from None


def is_layer_spec(spec: str) -> bool:
    """A ``conv:`` spec or a ``file.py:Class`` one."""
    return spec.startswith(CONV_PREFIX) or ".py:" in spec


def _sizes(text: str, spec: str) -> list[int]:
    """The layer sizes of ``text`` (``4-32-3`` or ``4x32x3``); ``spec`` is named in errors."""
    if not text.strip():
        raise CLIError(f"bad architecture {spec!r}: no layer sizes")
    try:
        return [int(x) for x in text.replace("x", "-").split("-")]
    except ValueError:
        raise CLIError(
            f"bad architecture {spec!r}: use layer sizes like 4-32-3, hidden widths like h:32-16 "
            f"or a .json edge list"
        ) from None


def mlp_sizes(spec: str, n_in: int, n_out: int, dataset: str | None = None) -> list[int]:
    """The full layer sizes of an MLP ``--arch`` spec, inputs first and outputs last.

    Two forms, never guessed from each other:

    * a full spec ``4-32-3`` must start with the ``n_in`` features and end with the ``n_out``
      classes;
    * ``h:32-16`` gives the hidden widths only (``4-32-16-3`` for Iris).

    Raises:
        CLIError: a spec that does not fit, naming which end is wrong and the two ways to write
            what was probably meant (e.g. ``5-16-3`` on Iris: ``4-16-3`` or ``h:5-16``).
    """
    data = dataset or "the data"
    if spec[: len(HIDDEN_PREFIX)].lower() == HIDDEN_PREFIX:
        if not spec[len(HIDDEN_PREFIX) :].strip():
            raise CLIError(
                f"bad architecture {spec!r}: no hidden widths after {HIDDEN_PREFIX} (write "
                f"{n_in}-{n_out} for a net without hidden layers)"
            )
        return [n_in, *_sizes(spec[len(HIDDEN_PREFIX) :], spec), n_out]
    sizes = _sizes(spec, spec)
    starts, ends = sizes[0] == n_in, sizes[-1] == n_out
    if len(sizes) >= 2 and starts and ends:
        return sizes
    if len(sizes) == 1:
        full, hidden = [n_in, *sizes, n_out], sizes
        problem = (
            f"is a single layer size, but a full spec starts with the {n_in} features and ends "
            f"with the {n_out} classes of {data}"
        )
    else:
        hidden = sizes[int(starts) : len(sizes) - int(ends)]
        # the wrong end(s) replaced; two sizes that both miss (8-8 on iris) are hidden widths
        pair_of_widths = len(sizes) == 2 and not (starts or ends)
        full = [n_in, *(sizes if pair_of_widths else sizes[1:-1]), n_out]
        if ends:
            problem = (
                f"ends with the {n_out} classes but starts with {sizes[0]} inputs; {data} has "
                f"{n_in} features"
            )
        elif starts:
            problem = (
                f"starts with the {n_in} features but ends with {sizes[-1]} outputs; {data} has "
                f"{n_out} classes"
            )
        else:
            problem = (
                f"starts with {sizes[0]} inputs and ends with {sizes[-1]} outputs; {data} has "
                f"{n_in} features and {n_out} classes"
            )
    short = HIDDEN_PREFIX + "-".join(map(str, hidden))
    as_full = [n_in, *hidden, n_out]
    meaning = "" if as_full == full else f", i.e. {'-'.join(map(str, as_full))}"
    raise CLIError(
        f"architecture {spec!r} {problem} (write {'-'.join(map(str, full))}, or {short} for "
        f"hidden widths only{meaning})"
    )


def check_fits(
    arch: Architecture, spec: str, n_in: int, n_out: int, dataset: str | None = None
) -> Architecture:
    """``arch`` (read from the ``--arch`` ``spec``) if it has ``n_in`` inputs and ``n_out``
    outputs, the data's features and classes; else a :class:`CLIError` naming both counts and
    the fix."""
    if arch.num_inputs == n_in and arch.num_outputs == n_out:
        return arch
    data = dataset or "the data"
    raise CLIError(
        f"--arch {spec} has {arch.num_inputs} input(s) and {arch.num_outputs} output(s), but "
        f"{data} has {n_in} features and {n_out} classes: give the DAG {n_in} inputs and "
        f"{n_out} outputs"
    )


def parse_arch(
    spec: str,
    n_in: int,
    n_out: int,
    bias: bool,
    input_shape,
    dataset: str | None = None,
    activation: str = "tanh",
) -> Architecture:
    """An ``--arch`` spec as an :class:`Architecture`.

    ``spec`` is a full MLP spec ``"4-32-3"`` (features first, classes last), hidden widths only
    ``"h:32-16"`` (see :func:`mlp_sizes`), a JSON file
    ``{"edges": [[u, v], ...], "inputs": [...], "outputs": [...]}``, a conv net
    ``"conv:8k5s2-16k5s2"`` (:func:`gnca.layerspec.conv_module`, ``activation`` after each layer)
    or ``"file.py:Class"`` (a module of your own, built with no arguments). Every form is checked
    against the data's ``n_in`` features and ``n_out`` classes (:class:`CLIError` if it does
    not fit); ``dataset`` (e.g. ``"iris"``) is named in errors.
    """
    if is_layer_spec(spec):
        arch = layer_arch(spec, n_in, n_out, bias, input_shape, activation)
        return check_fits(arch, spec, n_in, n_out, dataset)
    if spec.endswith(".json"):
        p = Path(spec)
        if not p.is_file():
            raise CLIError(f"architecture file not found: {spec}")
        try:
            d = json.loads(p.read_text())
            arch = Architecture.from_edges(
                [tuple(e) for e in d["edges"]],
                d["inputs"],
                d["outputs"],
                bias=bool(d.get("bias", bias)),
                input_shape=input_shape if len(d["inputs"]) == n_in else None,
            )
        except (KeyError, json.JSONDecodeError, TypeError, ValueError) as err:
            raise CLIError(f"bad architecture file {spec}: {err}") from None
        return check_fits(arch, spec, n_in, n_out, dataset)
    sizes = mlp_sizes(spec, n_in, n_out, dataset)
    try:
        return Architecture.mlp(sizes, bias=bias, input_shape=input_shape)
    except ValueError as err:
        raise CLIError(f"bad architecture {spec!r}: {err}") from None
