"""Every example in README.md and docs/cli.md runs as printed.

What is checked:

- Every ```` ```python ```` block of the documents in :data:`DOCS` runs without error in a fresh
  Python process. The script file lies outside the working directory, which is an empty
  temporary folder unless a marker comment on the line before the block (blank lines allowed
  in between) says what the block needs there, e.g. ``<!-- snippet: needs nets/iris.pt -->``;
  :data:`NEEDS` lists the needs this test can prepare (an unknown one fails the test).
- Meta-training step counts are made small by plain text substitution, :data:`SUBSTITUTIONS`;
  each one must apply to some block, so none silently stops applying.
- The ``gnca ...`` command lines of README.md's "Use" section and the ``$ gnca ...`` lines of
  docs/cli.md's worked example are parsed by gnca's own parser (:func:`gnca.cli.build_parser`):
  the parse must succeed, every ``--flag`` must be an option of its subcommand spelled in full
  (argparse would also take a prefix), and every ``.yaml`` file named must exist in the
  repository.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gnca.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/cli.md")

#: text replaced in every Python block before it runs (old -> new): fewer meta-steps
SUBSTITUTIONS = {"TrainConfig(steps=200": "TrainConfig(steps=3"}

#: what a ``<!-- snippet: needs X -->`` marker may ask for in the working directory
NEEDS = {
    # nets/iris.pt and nets/grown_net.py, written by docs/cli.md's `gnca export --checkpoint
    # runs/iris_stability/last.pt --arch 4-16-3 --num 10 --out nets/iris.pt`, from a rule
    # meta-trained for 2 steps with configs/iris_stability.yaml
    "nets/iris.pt",
}

#: meta-train configs/iris_stability.yaml for 2 tiny meta-steps (the exported nets' rule)
TINY = [
    "pool.size=8",
    "pool.fresh=1",
    "train.steps=2",
    "train.batch_size=4",
    "train.k_min=2",
    "train.k_max=3",
    "train.eval_nets=4",
    "train.device=cpu",
]

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*snippet:\s*needs\s+(.+?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a document."""

    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    section: str  # the last ``## `` heading above it
    needs: tuple[str, ...]  # from a marker comment right before it

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    """The fenced code blocks of ``doc`` (a path relative to the repository)."""
    lines = (REPO / doc).read_text().splitlines()
    found: list[Block] = []
    section = ""
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _MARKER.match(lines[prev].strip()) if prev >= 0 else None
        needs = tuple(marker.group(1).split(",")) if marker else ()
        text = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(doc, i + 1, m.group(1), text, section, tuple(n.strip() for n in needs)))
        i = end + 1
    return found


PYTHON_BLOCKS = [b for doc in DOCS for b in blocks(doc) if b.lang == "python"]


def _runnable(block: Block) -> str:
    text = block.text
    for old, new in SUBSTITUTIONS.items():
        text = text.replace(old, new)
    return text


def test_the_documents_have_python_blocks_and_every_substitution_applies() -> None:
    assert {b.doc for b in PYTHON_BLOCKS} == set(DOCS)
    for old in SUBSTITUTIONS:
        assert any(old in b.text for b in PYTHON_BLOCKS), f"no block contains {old!r}"
    for b in PYTHON_BLOCKS:
        assert set(b.needs) <= NEEDS, f"{b.id}: this test cannot prepare {b.needs}"


@pytest.fixture(scope="module")
def exported_nets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding nets/iris.pt and nets/grown_net.py, written by ``gnca export``."""
    root = tmp_path_factory.mktemp("exported")
    config = str(REPO / "configs" / "iris_stability.yaml")
    run = root / "runs" / "iris_stability"
    train = ["train", "--config", config, "--out", str(run), "--no-progress", "--set", *TINY]
    assert main(train) == 0
    export = ["export", "--checkpoint", str(run / "last.pt"), "--arch", "4-16-3", "--num", "10"]
    assert main([*export, "--out", str(root / "nets" / "iris.pt")]) == 0
    return root


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    work = tmp_path / "work"
    work.mkdir()
    if "nets/iris.pt" in block.needs:
        source = request.getfixturevalue("exported_nets")
        shutil.copytree(source / "nets", work / "nets")
    script = tmp_path / "snippet.py"
    script.write_text(_runnable(block))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, f"{block.id} failed:\n{block.text}\n{res.stderr[-3000:]}"


# ---------------------------------------------------------------------- command lines
def _gnca_commands(line: str) -> list[list[str]]:
    """The ``gnca`` commands of one shell line (``$ `` prompt, ``time``, ``&&`` and ``#``
    comments understood), as argument lists without the leading ``gnca``."""
    line = line.removeprefix("$ ")
    tokens = shlex.split(line, comments=True)
    commands: list[list[str]] = [[]]
    for tok in tokens:
        if tok in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(tok)
    out = []
    for cmd in commands:
        if cmd[:1] == ["time"]:
            cmd = cmd[1:]
        if cmd[:1] == ["gnca"]:
            out.append(cmd[1:])
    return out


def use_commands() -> list[list[str]]:
    """The ``gnca`` commands of README.md's "Use" section."""
    found = []
    for b in blocks("README.md"):
        if b.section == "Use" and b.lang == "bash":
            for line in b.text.splitlines():
                found += _gnca_commands(line)
    return found


def worked_example_commands() -> list[list[str]]:
    """The ``$ gnca ...`` commands of docs/cli.md's worked example."""
    found = []
    for b in blocks("docs/cli.md"):
        if b.section.startswith("Worked example") and b.lang == "bash":
            for line in b.text.splitlines():
                if line.startswith("$ "):
                    found += _gnca_commands(line)
    return found


COMMANDS = [("README.md Use", c) for c in use_commands()] + [
    ("docs/cli.md worked example", c) for c in worked_example_commands()
]


def test_the_command_lines_are_found() -> None:
    subcommands = [c[0] for where, c in COMMANDS if where == "README.md Use"]
    for name in ("train", "grow", "eval", "export", "data", "experiment"):
        assert name in subcommands
    worked = {c[0] for where, c in COMMANDS if where != "README.md Use"}
    assert {"train", "grow", "export"} <= worked


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand parser that ``args`` was parsed by."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if not subs or name not in subs[0].choices:
            return parser
        parser = subs[0].choices[name]


def _command_id(x: str | list[str]) -> str:
    return " ".join(x) if isinstance(x, list) else x


@pytest.mark.parametrize("where, argv", COMMANDS, ids=_command_id)
def test_command_line_parses(where: str, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: gnca {shlex.join(argv)}: {capsys.readouterr().err.strip()}")
    options = {s for a in _chosen(parser, args)._actions for s in a.option_strings}
    for tok in argv:
        if tok.startswith("--"):
            flag = tok.split("=", 1)[0]
            assert flag in options, f"{where}: {flag} is not an option of gnca {argv[0]}"
        if tok.endswith((".yaml", ".yml")):
            assert (REPO / tok).is_file(), f"{where}: {tok} does not exist"
