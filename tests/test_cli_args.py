"""Every numeric flag of every subcommand: an out-of-range value is one line ``gnca: error:
--flag must ..., got ...`` and exit status 2, before anything is loaded."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gnca.cli import build_parser, main
from gnca.cliargs import iter_parsers

REPO = Path(__file__).resolve().parents[1]
CKPT = ["--checkpoint", "x.pt"]
INTS0 = "must be comma-separated integers >= 0"
INTS1 = "must be comma-separated integers >= 1"
ROB, GEN = ["experiment", "robustness"], ["experiment", "generalization"]
BAD = [  # (argv, the message after "gnca: error: ")
    (["grow", *CKPT, "--steps", "-3"], "--steps must be >= 1, got -3"),
    (["grow", *CKPT, "--steps=0"], "--steps must be >= 1, got 0"),
    (["grow", *CKPT, "--steps", "ten"], "--steps must be an integer, got 'ten'"),
    (["grow", *CKPT, "--num", "0"], "--num must be >= 1, got 0"),
    (["grow", *CKPT, "--num", "-1"], "--num must be >= 1, got -1"),
    (["grow", *CKPT, "--curve", "-2"], "--curve must be >= 0, got -2"),
    (["grow", *CKPT, "--seed", "-1"], "--seed must be between 0 and 2**64 - 1, got -1"),
    (["grow", *CKPT, "--seed", str(2**64)], f"--seed must be between 0 and 2**64 - 1, got {2**64}"),
    (["grow", *CKPT, "--seed", "1.5"], "--seed must be an integer, got '1.5'"),
    (["grow", *CKPT, "--threads", "0"], "--threads must be >= 1, got 0"),
    (["eval", *CKPT, "--num", "0"], "--num must be >= 1, got 0"),
    (["eval", *CKPT, "--horizons", "40,-1"], f"--horizons {INTS0}, got -1 in '40,-1'"),
    (["eval", *CKPT, "--horizons", "a,b"], f"--horizons {INTS0}, got 'a,b'"),
    (["eval", *CKPT, "--horizons", ","], f"--horizons {INTS0}, got ','"),
    (["eval", *CKPT, "--threads", "-1"], "--threads must be >= 1, got -1"),
    (["export", *CKPT, "--out", "n.pt", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["export", *CKPT, "--out", "n.pt", "--num", "-4"], "--num must be >= 1, got -4"),
    (["train", "--nproc", "0"], "--nproc must be >= 1, got 0"),
    (["train", "--nproc", "-2"], "--nproc must be >= 1, got -2"),
    (["train", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["train", "--rdzv-timeout", "0"], "--rdzv-timeout must be > 0, got 0"),
    (["train", "--rdzv-timeout", "-5"], "--rdzv-timeout must be > 0, got -5"),
    (["train", "--dist-timeout", "inf"], "--dist-timeout must be a finite number, got inf"),
    (["train", "--dist-timeout", "nan"], "--dist-timeout must be a finite number, got nan"),
    (["train", "--dist-timeout", "1e9"], "--dist-timeout must be <= 10000000, got 1e9"),
    (["train", "--dist-timeout", "soon"], "--dist-timeout must be a number, got 'soon'"),
    (["experiment", "stability", "--num", "0"], "--num must be >= 1, got 0"),
    (["experiment", "stability", "--seed", "-1"], "--seed must be between 0 and 2**64 - 1, got -1"),
    (["experiment", "stability", "--horizon-mult", "0"], "--horizon-mult must be >= 1, got 0"),
    (["experiment", "stability", "--tolerance", "-0.1"], "--tolerance must be >= 0, got -0.1"),
    (["experiment", "stability", "--threads", "0"], "--threads must be >= 1, got 0"),
    ([*ROB, "--num", "-1"], "--num must be >= 1, got -1"),
    ([*ROB, "--zero-outs", "0"], "--zero-outs must be >= 1, got 0"),
    ([*ROB, "--every", "0"], "--every must be >= 1, got 0"),
    ([*ROB, "--fraction", "1.5"], "--fraction must be between 0 and 1, got 1.5"),
    ([*ROB, "--fraction", "-0.1"], "--fraction must be between 0 and 1, got -0.1"),
    ([*ROB, "--tail", "-1"], "--tail must be >= 0, got -1"),
    ([*ROB, "--search-mult", "0"], "--search-mult must be >= 1, got 0"),
    ([*GEN, "--steps", "-1"], "--steps must be >= 0, got -1"),
    ([*GEN, "--chunk", "0"], "--chunk must be >= 1, got 0"),
    ([*GEN, "--num", "0"], "--num must be >= 1, got 0"),
    ([*GEN, "--depths", "0,1"], f"--depths {INTS1}, got 0 in '0,1'"),
    ([*GEN, "--depths", "1,1"], "--depths must not repeat a value, got '1,1'"),
    ([*GEN, "--widths", "16,x"], f"--widths {INTS1}, got '16,x'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a[0]) for a in BAD])
def test_out_of_range_flag_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"gnca: error: {message}\n"


def test_every_numeric_flag_has_a_range_checked_type():
    """No ``type=int`` / ``type=float`` is left anywhere in the parser tree (a new numeric flag
    must use one of gnca.cliargs' types), and every flag with a number default has a type."""
    unchecked = []
    for parser in iter_parsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._StoreConstAction):
                continue
            numeric = isinstance(action.default, int | float) and not isinstance(
                action.default, bool
            )
            if action.type in (int, float) or (numeric and action.type is None):
                unchecked.append(f"{parser.prog} {action.option_strings[-1]}")
    assert not unchecked


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["grow", *CKPT, "--curve", "0"], "curve", 0),
        (["grow", *CKPT, "--steps", "1", "--seed", str(2**64 - 1)], "seed", 2**64 - 1),
        (["eval", *CKPT, "--horizons", " 0, 40 ,400"], "horizons", "0,40,400"),
        (["train", "--rdzv-timeout", "0.5"], "rdzv_timeout", 0.5),
        ([*ROB, "--fraction", "1"], "fraction", 1.0),
        ([*ROB, "--tail", "0"], "tail", 0),
        ([*GEN, "--steps", "0"], "steps", 0),
        (GEN, "depths", "1,2,3"),
        (["experiment", "stability", "--tolerance", "0"], "tolerance", 0.0),
    ],
)
def test_values_in_range_are_parsed(argv, dest, value):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value and type(getattr(args, dest)) is type(value)


def test_other_parse_errors_are_one_line_too(capsys):
    assert main(["grow", "--split", "dev", *CKPT]) == 2
    assert capsys.readouterr().err == (
        "gnca: error: argument --split: invalid choice: 'dev' (choose from 'test', 'train') "
        "(see gnca grow --help)\n"
    )


def test_help_exits_0(capsys):
    assert main(["grow", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out


def test_console_script_prints_no_traceback():
    res = subprocess.run(
        [sys.executable, "-m", "gnca", "grow", *CKPT, "--steps", "-3"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr == "gnca: error: --steps must be >= 1, got -3\n"


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["grow", *CKPT, "--bogus"], "gnca grow"),
        (["eval", "--bogus", "--checkpoint", "x.pt"], "gnca eval"),
        (["export", *CKPT, "--out", "n.pt", "stray"], "gnca export"),
        (["train", "--bogus"], "gnca train"),
        (["experiment", "stability", "--bogus"], "gnca experiment stability"),
        (["data", "download", "mnist", "d", "--bogus"], "gnca data download"),
    ],
)
def test_unknown_option_points_at_the_subcommands_help(capsys, argv, prog):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    extra = next(a for a in argv if a in ("--bogus", "stray"))
    assert out == ""
    assert err == f"gnca: error: unrecognized arguments: {extra} (see {prog} --help)\n"


def test_help_lists_every_experiment(capsys):
    from gnca.experiments.cli import EXPERIMENTS

    parser = build_parser()
    assert main(["--help"]) == 0
    top = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    assert main(["experiment", "--help"]) == 0
    exp = " ".join(capsys.readouterr().out.split())
    registered = next(p for p in iter_parsers(parser) if p.prog == "gnca experiment")
    subs = next(a for a in registered._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subs.choices) == list(EXPERIMENTS)
    assert len(EXPERIMENTS) == 6
    for name in EXPERIMENTS:
        assert name in top.split("experiment ", 1)[1].split("options:")[0], name
        assert f"{name} " in exp, name


def test_every_option_has_help():
    """``--help`` explains every option of every subcommand (``--split`` had no text)."""
    missing = [
        f"{parser.prog} {action.option_strings[-1]}"
        for parser in iter_parsers(build_parser())
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert not missing


#: Flags every command takes, stated once at the top of docs/cli.md instead of in each synopsis.
EVERYWHERE = ("--debug", "--threads")


def _synopsis(doc: str, heading: str) -> list[str]:
    """The lines of the first code block after ``heading`` in ``doc``."""
    after = doc.split(f"\n{heading}\n", 1)[1]
    block = after.split("```", 2)[1]
    return [ln for ln in block.splitlines()[1:] if ln.strip()]


def _flags(lines: list[str]) -> set[str]:
    return {m for ln in lines for m in re.findall(r"(?<![\w-])--[a-z][a-z-]*", ln)}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help" and flag not in EVERYWHERE
    }


@pytest.mark.parametrize("command", ["train", "grow", "eval", "export", "data download"])
def test_docs_synopsis_lists_every_flag_of_the_command(command):
    doc = (REPO / "docs" / "cli.md").read_text()
    parser = {p.prog: p for p in iter_parsers(build_parser())}[f"gnca {command}"]
    lines = _synopsis(doc, f"## `gnca {command}`")
    assert lines[0].startswith(f"gnca {command} ")
    documented = _flags(lines)
    assert _options(parser) - documented == set()  # a flag missing from the synopsis
    assert documented - _options(parser) == set()  # a flag that does not exist


def test_docs_synopsis_lists_every_flag_of_every_experiment():
    from gnca.experiments.cli import EXPERIMENTS

    doc = (REPO / "docs" / "cli.md").read_text()
    lines = _synopsis(doc, "## `gnca experiment`")
    shared = [ln for ln in lines if ln.startswith("gnca experiment NAME ")]
    assert len(shared) == 1
    parsers = {p.prog: p for p in iter_parsers(build_parser())}
    for name in EXPERIMENTS:
        parser = parsers[f"gnca experiment {name}"]
        own = [ln for ln in lines if ln.startswith(f"gnca experiment {name} ")]
        assert len(own) == 1, name
        documented = _flags(shared + own)
        assert _options(parser) - documented == set(), name
        assert documented - _options(parser) == set(), name


def test_docs_state_the_flags_every_command_takes():
    top = (REPO / "docs" / "cli.md").read_text().split("\n## ", 1)[0]
    for flag in EVERYWHERE:
        assert f"`{flag}" in top


def test_float_lists_check_each_value_and_repeats():
    from gnca.cliargs import nonneg_floats, positive_floats

    assert positive_floats("0.5, 1,2") == (0.5, 1.0, 2.0)
    assert nonneg_floats("0,0.1") == (0.0, 0.1)
    for parse, text, message in [
        (positive_floats, "0,1", "must be comma-separated numbers > 0, got '0,1'"),
        (nonneg_floats, "-1", "must be comma-separated numbers >= 0, got '-1'"),
        (nonneg_floats, "0,0", "must not repeat a value, got '0,0'"),
        (nonneg_floats, "1,x", "must be a number, got 'x'"),
        (positive_floats, "inf", "must be a finite number, got inf"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            parse(text)
        assert str(info.value) == message
