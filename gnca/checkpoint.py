"""Atomic, safely loadable training checkpoints.

A checkpoint is a ``torch.save``-d dict tagged with ``{"format": FORMAT, "version": VERSION}``.
It is written atomically (temp file beside the target, fsync, ``os.replace``), so a crash never
leaves a partial file at the target path, and it is read back with ``weights_only=True`` so that
loading a checkpoint never executes arbitrary pickled code.

Payloads may therefore only hold what ``weights_only`` loading accepts: tensors, (ordered) dicts,
lists, tuples, str, int, float, bool and None (e.g. ``config_to_dict(cfg)``, ``state_dict()``s,
``optimizer.state_dict()``, ``torch.get_rng_state()``, ``random.getstate()``).  Not accepted:
dataclasses, ``pathlib.Path``, numpy arrays (e.g. ``np.random.get_state()``).
:func:`save_checkpoint` checks this before writing, so an unloadable checkpoint is never made.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from gnca.files import atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "leaves",
    "load_checkpoint",
    "same_leaf",
    "save_checkpoint",
]

FORMAT = "gnca-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read (missing, corrupt, unsafe, foreign)."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception message, shortened."""
    for line in str(err).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return type(err).__name__


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _describe_load_error(err: BaseException) -> tuple[str | None, str]:
    """``(blocked global or None, short detail)`` for an exception raised by ``torch.load``.

    torch's weights_only errors are long multi-line texts; the useful part is either the name
    of the refused global (an unsafe object) or the line after ``WeightsUnpickler error:``
    (typically a corrupt pickle stream).
    """
    text = str(err)
    match = _GLOBAL_RE.search(text)
    if isinstance(err, pickle.UnpicklingError) and match:
        return match.group(1), f"unsupported global {match.group(1)}"
    if "WeightsUnpickler error:" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1]
        for line in rest.splitlines():
            if line.strip():
                return None, f"{type(err).__name__}: {line.strip()}"
    return None, f"{type(err).__name__}: {first_line(err)}"


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Atomically save ``payload`` plus the format marker to ``path`` (parents created).

    The caller's dict is not modified.  The serialized bytes are verified to load with
    ``weights_only=True`` before anything is written; a payload holding other objects raises
    :class:`CheckpointError`.  If writing fails, a previous file at ``path`` is left intact and no
    temp file remains.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    tagged = {**payload, "format": FORMAT, "version": VERSION}
    buffer = io.BytesIO()
    torch.save(tagged, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot save checkpoint {path}: payload is not weights_only-loadable "
            f"({_describe_load_error(err)[1]})"
        ) from None
    data = buffer.getbuffer()
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Returns the payload dict (including the ``format`` and ``version`` entries).  Raises
    :class:`CheckpointError` with a one-line message naming the file if it is missing, is not a
    torch file, is corrupt or truncated, holds objects that ``weights_only`` refuses, is not a
    gnca checkpoint, or has a newer version than this code reads.
    """
    path = Path(path)
    if not path.is_file():
        what = "not a file" if path.exists() else "not found"
        raise CheckpointError(f"checkpoint {what}: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        blocked, detail = _describe_load_error(err)
        if blocked is not None:
            raise CheckpointError(
                f"refusing to load checkpoint {path}: it holds an object that weights_only "
                f"loading does not allow ({detail})"
            ) from None
        raise CheckpointError(
            f"cannot load checkpoint {path}: not a torch file, or corrupt/truncated ({detail})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"not a gnca checkpoint: {path}")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path} has an invalid version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {version}, newer than this gnca reads ({VERSION})"
        )
    return obj


def leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested checkpoint (dicts, lists, tuples), keyed by its dotted path
    (``rng.gen``, ``pools.0.w``): for comparing two checkpoints entry by entry."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(leaves(v, f"{prefix}{k}."))
    return out


def same_leaf(a: Any, b: Any) -> bool:
    """Two checkpoint leaves are equal: tensors bit for bit (dtype, shape, values), the rest
    by ``==``."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b
