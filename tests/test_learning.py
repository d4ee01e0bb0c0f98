"""The learning and transfer experiments, and growing a data-reading rule on other data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gnca.cli import main
from gnca.config import load_config
from gnca.data import load_dataset
from gnca.experiments.common import RuleSource
from gnca.experiments.learning import permutations, run_learning
from gnca.experiments.transfer import run_transfer
from gnca.task import Task

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.steps=3",
    "train.k_min=2",
    "train.k_max=3",
    "train.batch_size=4",
    "train.log_every=1",
    "train.device=cpu",
    "rule.widths=[16]",
    "rule.sense_batch=16",
]


def senses_cfg(*extra: str):
    return load_config(ROOT / "configs" / "digits_senses.yaml", [*TINY, *extra])


def error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("gnca: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_permutations_are_permutations():
    p = permutations(5, 4, seed=1)
    assert p.shape == (5, 4) and all(sorted(r.tolist()) == [0, 1, 2, 3] for r in p)
    assert torch.equal(p, permutations(5, 4, seed=1))


def test_learning_experiment_outputs(tmp_path):
    ctl = load_config(ROOT / "configs" / "digits_datafree.yaml", TINY[:-1])
    out = tmp_path / "learn"
    s = run_learning(RuleSource("senses", senses_cfg()), RuleSource("data-free", ctl), out,
                     num=3, horizon_mult=2, progress=False)  # fmt: skip
    h = s["headline"]
    for key in ("accuracy_permuted", "accuracy_unpermuted", "adam_all_layers", "peak"):
        assert 0.0 <= h[key] <= 1.0
    assert h["examples_seen"] == 3 * 16
    rows = (out / "learning.csv").read_text()
    assert "held-out permutations @K" in rows and "data-free" in rows
    assert (out / "learning.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["experiment"] == "learning"
    with pytest.raises(ValueError, match="reads no data"):
        run_learning(RuleSource("x", ctl), None, tmp_path / "bad", num=2, progress=False)


def test_transfer_experiment_and_growing_on_other_data(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(ROOT / "configs" / "digits_senses.yaml"),
                 "--set", *TINY, "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    ckpt = str(run / "last.pt")
    task = Task(load_dataset("wine"), fan_in_ref=32)
    from gnca.build import load_trained
    from gnca.cli import parse_arch

    arch = parse_arch("h:8", 13, 3, True, None)
    s = run_transfer(RuleSource("senses", checkpoint=ckpt), task, [arch], tmp_path / "t",
                     num=2, horizon_mult=1, progress=False)  # fmt: skip
    (row,) = s["rows"]
    assert row["dataset"] == "wine" and 0 <= row["adam"] <= 1 and row["majority"] > 0.3
    assert load_trained(ckpt).rule.senses
    capsys.readouterr()
    grow = ["grow", "--checkpoint", ckpt, "--num", "2", "--steps", "2"]
    assert main([*grow, "--set", "data.name=wine", "--arch", "h:8"]) == 0
    assert "on wine" in capsys.readouterr().out
    assert main([*grow, "--set", "data.name=wine"]) == 2
    assert "pass --arch" in error_line(capsys.readouterr().err)
    assert main([*grow, "--set", "data.name=wine", "--arch", "64-8-10"]) == 2
    assert "wine" in error_line(capsys.readouterr().err)
    assert main([*grow, "--set", "train.steps=5"]) == 2
    assert "data.KEY=VALUE only" in error_line(capsys.readouterr().err)
    # a data-free rule says it cannot read data
    free = tmp_path / "free"
    assert main(["train", "--config", str(ROOT / "configs" / "digits_datafree.yaml"),
                 "--set", *TINY[:-1], "--out", str(free), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    g2 = ["grow", "--checkpoint", str(free / "last.pt"), "--num", "2", "--steps", "2"]
    assert main([*g2, "--set", "data.name=wine", "--arch", "h:8"]) == 2
    assert "reads no data" in error_line(capsys.readouterr().err)
