"""Argument types and the parser class of the ``gnca`` command line.

Every numeric flag is parsed by one of the ``type=`` functions below, so that a value out of
range ends, like every other user error, with one line and exit status 2::

    gnca: error: --steps must be >= 1, got -3

The functions raise :class:`argparse.ArgumentTypeError` with a message starting ``must``;
:class:`Parser` turns argparse's ``argument --steps: must ...`` into ``--steps must ...``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

__all__ = [
    "Parser",
    "add_set_flag",
    "fraction",
    "http_url",
    "int_list",
    "iter_parsers",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "seconds",
    "seed",
    "seed_list",
    "target",
]

#: Seeds must fit torch's generators (``torch.Generator.manual_seed`` takes 64 bits).
MAX_SEED = 2**64 - 1
#: The most seeds ``--seeds N`` runs (each meta-trains its rules).
MAX_SEEDS = 10_000
_TYPE_ERROR = re.compile(r"^argument (?P<flags>[^:]+): (?P<msg>must .*)$", re.DOTALL)
_Number = TypeVar("_Number", int, float)


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors are one line ``gnca: error: ...``.

    Range errors of the ``type=`` functions of this module read ``--steps must be >= 1, got -3``;
    any other parse error (a missing or unknown option, an invalid choice) keeps argparse's text
    and points at the subcommand's ``--help`` instead of printing the usage.
    """

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """Parse like argparse, but an unknown option is reported by the subcommand it was given
        to, so the message points at ``gnca grow --help`` rather than ``gnca --help``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost subcommand parser that ``parsed`` went through (``self`` without
        subcommands), e.g. the parser of ``gnca experiment stability``."""
        parser: argparse.ArgumentParser = self
        while True:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            name = getattr(parsed, subs[0].dest, None) if subs else None
            if not subs or name not in subs[0].choices:
                return parser
            parser = subs[0].choices[name]

    def error(self, message: str) -> NoReturn:
        match = _TYPE_ERROR.match(message)
        if match:  # "argument -n/--num: must ..." -> "--num must ..."
            line = f"{match['flags'].split('/')[-1]} {match['msg']}"
        else:
            line = f"{message} (see {self.prog} --help)"
        self.exit(2, f"gnca: error: {' '.join(line.split())}\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _at_least(value: _Number, low: int, text: str) -> _Number:
    """``value`` (parsed from ``text``) if it is >= ``low``, else the error ``must be >= low``."""
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``--num``, ``--steps``, ``--threads``, ...)."""
    return _at_least(_integer(text), 1, text)


def nonneg_int(text: str) -> int:
    """An integer >= 0 (``--curve`` where 0 means off, ``--tail``, ...)."""
    return _at_least(_integer(text), 0, text)


def seed(text: str) -> int:
    """A random seed: an integer in ``[0, 2**64 - 1]``."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**64 - 1, got {text}")
    return value


def positive_float(text: str, *, maximum: float | None = None) -> float:
    """A finite number > 0 (and <= ``maximum`` when given)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"must be <= {maximum:.15g}, got {text}")
    return value


def seconds(text: str) -> float:
    """A timeout in seconds: > 0 and at most 10,000,000 (about 115 days)."""
    return positive_float(text, maximum=1e7)


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (``--tolerance``)."""
    return _at_least(_number(text), 0, text)


def fraction(text: str) -> float:
    """A number in ``[0, 1]`` (``--fraction``)."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (``--mirror``)."""
    if not re.match(r"https?://[^/\s]", text):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


def int_list(minimum: int, *, unique: bool = False) -> Callable[[str], str]:
    """A ``type=`` for comma-separated integers >= ``minimum`` (``--horizons 40,400``).

    The flag's value stays a string (``"40,400"``, spaces removed) for the code that splits it;
    ``unique`` also refuses repeated entries.
    """

    def parse(text: str) -> str:
        parts = text.replace(" ", "").split(",")
        if not any(parts):
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers >= {minimum}, got {text!r}"
            )
        values = []
        for part in parts:
            try:
                values.append(int(part))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"must be comma-separated integers >= {minimum}, got {text!r}"
                ) from None
        low = min(values)
        if low < minimum:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers >= {minimum}, got {low} in {text!r}"
            )
        if unique and len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must not repeat a value, got {text!r}")
        return ",".join(map(str, values))

    parse.__name__ = f"int_list_ge_{minimum}"
    return parse


def _floats(text: str, strict: bool) -> tuple[float, ...]:
    """Comma-separated finite numbers > 0 (>= 0 unless ``strict``), none repeated."""
    parts = text.replace(" ", "").split(",")
    values = tuple(_number(p) for p in parts)
    if any(v < 0 or (strict and v == 0) for v in values):
        bound = "> 0" if strict else ">= 0"
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers {bound}, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"must not repeat a value, got {text!r}")
    return values


def positive_floats(text: str) -> tuple[float, ...]:
    """A ``type=`` for comma-separated finite numbers > 0, none repeated (``--tune-step
    0.5,1,2``)."""
    return _floats(text, strict=True)


def nonneg_floats(text: str) -> tuple[float, ...]:
    """A ``type=`` for comma-separated finite numbers >= 0, none repeated."""
    return _floats(text, strict=False)


def seed_list(text: str) -> tuple[int, ...]:
    """Meta-training seeds (``--seeds``): a count ``N`` >= 1 for seeds ``0 .. N-1``, or
    comma-separated seeds ``0,3,7`` (one seed ``S`` alone: ``S,``), no repeats."""
    parts = text.replace(" ", "").split(",")
    usage = f"must be a count from 1 to {MAX_SEEDS} or comma-separated seeds, got {text!r}"
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    if not values:
        raise argparse.ArgumentTypeError(usage)
    if len(parts) == 1:  # a count
        if not 1 <= values[0] <= MAX_SEEDS:
            raise argparse.ArgumentTypeError(usage)
        return tuple(range(values[0]))
    if not all(0 <= v <= MAX_SEED for v in values):
        raise argparse.ArgumentTypeError(f"must list seeds between 0 and 2**64 - 1, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"must not repeat a seed, got {text!r}")
    return tuple(values)


_TARGET = re.compile(r"^\s*(.+?)\s*(>=|<=)\s*(\S+)\s*$")


def target(text: str) -> tuple[str, str, float]:
    """A claim on a headline metric of ``--seeds`` (``--target 'rule.seen_mean>=0.9'``):
    ``(metric, ">=" or "<=", value)``."""
    match = _TARGET.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"must read METRIC>=VALUE or METRIC<=VALUE, got {text!r}")
    try:
        value = _number(match[3])
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must read METRIC>=VALUE or METRIC<=VALUE with a finite number, got {text!r}"
        ) from None
    return match[1], match[2], value


def add_set_flag(parser: argparse.ArgumentParser, help: str, metavar: str = "KEY=VALUE") -> None:
    """``--set KEY=VALUE ...``: config overrides, none by default (``help`` says which)."""
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar=metavar, help=help)


def iter_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand parser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases map several names to one parser
                    seen.add(id(sub))
                    yield from iter_parsers(sub)
