"""``gnca experiment generalization --adam``: the Adam baseline on every grid cell.

A tiny Iris rule (configs/iris_generalization.yaml, a few meta-steps) grows a 2 x 2 grid; the
checks are on the structure (columns, grids, cache, figure), not on the numbers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN  # noqa: E402

from gnca.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN
#: the CSV columns of the experiment without --adam (unchanged by the option's existence)
PLAIN_COLUMNS = ["architecture", "hidden_layers", "width", "in_grid", "trained", "nets", "steps",
                 "mean", "std", "min", "max", "seconds"]  # fmt: skip
ADAM_COLUMNS = ["adam_mean", "adam_std", "adam_lr", "adam_examples", "grown_minus_adam"]
ADAM = ["--adam", "--adam-examples", "64", "--adam-nets", "2", "--adam-lrs", "0.01,0.1"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    return header, rows


def gen(out: Path, *extra: str, source: list[str] | None = None) -> dict:
    args = ["experiment", "generalization", *(source or []), "--depths", "1,2",
            "--widths", "4,16", "--num", "2", "--out", str(out), "--no-progress",
            "--threads", "1", *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The experiment without --adam, meta-training the tiny rule (its checkpoint is reused)."""
    out = tmp_path_factory.mktemp("gen") / "plain"
    cfg = ["--config", str(ROOT / "configs" / "iris_generalization.yaml"), "--set", *TINY]
    return out, gen(out, source=cfg)


def test_without_adam_nothing_changes(plain):
    out, summary = plain
    header, rows = read_csv(out / "generalization.csv")
    assert header == PLAIN_COLUMNS
    assert len(rows) == 4
    md = (out / "generalization.md").read_text()
    assert "Adam" not in md and "adam" not in summary
    assert not (out / "adam").exists()


def test_adam_on_every_cell_cached_and_keyed(plain, tmp_path, capsys):
    out0, s0 = plain
    ckpt = ["--checkpoint", str(out0 / "rules" / "rule" / "last.pt")]
    out = tmp_path / "adam"
    s = gen(out, *ADAM, source=ckpt)
    header, rows = read_csv(out / "generalization.csv")
    assert header == PLAIN_COLUMNS + ADAM_COLUMNS
    # the grown columns are those of the run without Adam (same rule, seed, nets)
    _, plain_rows = read_csv(out0 / "generalization.csv")
    keep = [c for c in PLAIN_COLUMNS if c != "seconds"]
    assert [[r[c] for c in keep] for r in rows] == [[r[c] for c in keep] for r in plain_rows]
    for r in rows:
        assert 0.0 <= float(r["adam_mean"]) <= 1.0
        assert r["adam_examples"] == "64" and float(r["adam_lr"]) in (0.01, 0.1)
        gap = float(r["mean"]) - float(r["adam_mean"])
        assert float(r["grown_minus_adam"]) == pytest.approx(gap, abs=1e-5)
    a = s["adam"]
    assert a["examples"] == 64 and a["nets"] == 2 and a["lrs"] == [0.01, 0.1]
    assert a["steps"] == 1 and a["batch"] == 256
    assert sorted(a["computed"]) == sorted(r["architecture"] for r in rows) and not a["reused"]
    grid = np.array(a["grid"])
    assert grid.shape == (2, 2) and ((grid >= 0) & (grid <= 1)).all()
    assert np.allclose(np.array(a["grown_minus_adam"]), np.array(s["grid"]) - grid)
    # the Markdown: the plain part first, then the Adam grid, the gap grid and the line
    md = (out / "generalization.md").read_text()
    assert md.startswith((out0 / "generalization.md").read_text().rstrip("\n"))
    assert "grown minus Adam:" in md and "Grown >= Adam" in md and "64 training examples" in md
    assert md.count("(trained)") == 3 * 2  # grown, Adam and gap grids; 4-16-3 and 4-16-16-3
    assert (out / "generalization.png").read_bytes()[:4] == b"\x89PNG"
    cells = sorted(p.name for p in (out / "adam").iterdir())
    assert cells == ["4-16-16-3.json", "4-16-3.json", "4-4-3.json", "4-4-4-3.json"]
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "adam").iterdir()}

    # the same settings again: every cell reused, the files untouched, the same numbers
    capsys.readouterr()
    s2 = gen(out, *ADAM[:-1], "0.01, 0.1", source=ckpt)
    assert sorted(s2["adam"]["reused"]) == sorted(a["computed"]) and not s2["adam"]["computed"]
    assert {p: p.stat().st_mtime_ns for p in (out / "adam").iterdir()} == mtimes
    assert s2["adam"]["grid"] == a["grid"]

    # a settings change recomputes every cell
    s3 = gen(out, *ADAM[:-1], "0.1", source=ckpt)
    assert sorted(s3["adam"]["computed"]) == sorted(a["computed"]) and not s3["adam"]["reused"]
    assert all(r["adam_lr"] == 0.1 for r in s3["table"])
    stored = json.loads((out / "adam" / "4-4-3.json").read_text())
    assert stored["key"]["lrs"] == [0.1] and stored["key"]["architecture"] == "4-4-3"


def test_adam_progress_says_when_it_reuses(plain, tmp_path, capsys):
    out0, _ = plain
    ckpt = ["--checkpoint", str(out0 / "rules" / "rule" / "last.pt")]
    out = tmp_path / "a"
    args = ["experiment", "generalization", *ckpt, "--depths", "1", "--widths", "4",
            "--num", "2", "--out", str(out), "--threads", "1", *ADAM]  # fmt: skip
    assert main(args) == 0
    assert "adam: 4-4-3" in capsys.readouterr().err
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "adam: 4-4-3" in err and "reused" in err


def test_adam_option_errors_are_one_line(plain, tmp_path, capsys):
    out0, _ = plain
    ckpt = ["--checkpoint", str(out0 / "rules" / "rule" / "last.pt")]
    base = ["experiment", "generalization", *ckpt, "--out", str(tmp_path), "--adam"]
    assert main([*base, "--adam-lrs", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--adam-lrs" in err[0]
    # numbers are checked when the command line is parsed, before the rule is loaded
    for flag in ("--adam-nets", "--adam-examples", "--adam-batch"):
        assert main([*base, flag, "0"]) == 2
        assert capsys.readouterr().err == f"gnca: error: {flag} must be >= 1, got 0\n"
    assert main([*base, "--adam-lrs", "0.1,0"]) == 2
    assert capsys.readouterr().err.startswith("gnca: error: --adam-lrs must be")


def test_heatmap_second_panel(tmp_path):
    from gnca.experiments.generalization import plot as plot_heatmap

    values = np.array([[0.9, 0.8], [0.7, np.nan]])
    diff = np.array([[0.05, -0.2], [0.0, np.nan]])
    cells = plot_heatmap(values, [1, 2], [8, 16], [(0, 1)], tmp_path / "h.png", diff=diff,
                         diff_title="grown minus Adam")  # fmt: skip
    assert cells == [(0, 1)] and (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    plot_heatmap(values, [1, 2], [8, 16], [], tmp_path / "z.png", diff=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="diff has shape"):
        plot_heatmap(values, [1, 2], [8, 16], [], tmp_path / "x.png", diff=np.zeros((1, 2)))
