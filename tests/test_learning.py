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
    for key in ("accuracy_permuted", "accuracy_unpermuted", "adam_all_layers",
                "adam_same_batches", "peak"):  # fmt: skip
        assert 0.0 <= h[key] <= 1.0
    assert h["examples_seen"] == 3 * 16
    rows = (out / "learning.csv").read_text()
    assert "held-out permutations @K" in rows and "data-free" in rows
    assert "Adam, all layers, on the grown nets' batches" in rows
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
    s = run_transfer(RuleSource("senses", checkpoint=ckpt), [(task, [arch])], tmp_path / "t",
                     num=2, horizons=[1], progress=False)  # fmt: skip
    (row,) = s["rows"]
    assert row["dataset"] == "wine" and 0 <= row["adam"] <= 1 and row["majority"] > 0.3
    assert not row["seen_in_meta_training"] and row["examples_seen"] == 3 * 16
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


def _tiny_checkpoint(tmp_path_factory, config: str) -> str:
    """``configs/<config>.yaml`` at the TINY sizes, meta-trained for 2 steps; its ``last.pt``."""
    run = tmp_path_factory.mktemp(config) / "run"
    assert main(["train", "--config", str(ROOT / "configs" / f"{config}.yaml"),
                 "--set", *TINY, "train.steps=2", "--out", str(run), "--no-progress",
                 "--threads", "1"]) == 0  # fmt: skip
    return str(run / "last.pt")


@pytest.fixture(scope="module")
def senses_checkpoint(tmp_path_factory) -> str:
    """A data-reading rule meta-trained for 2 steps on digits."""
    return _tiny_checkpoint(tmp_path_factory, "digits_senses")


def test_transfer_learning_curves_on_two_datasets(senses_checkpoint, tmp_path, capsys):
    import csv

    out = tmp_path / "curves"
    args = ["experiment", "transfer", "--checkpoint", senses_checkpoint, "--dataset", "iris",
            "--dataset", "circles", "--arch", "h:8", "--horizons", "1,2,4", "--num", "3",
            "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "transfer.png" in printed and "## iris" in printed and "## circles" in printed
    with open(out / "transfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["horizon"]) for r in rows] == [
        (d, h) for d in ("iris", "circles") for h in ("1K", "2K", "4K")
    ]
    for col in ("architecture", "steps", "examples_seen", "grown", "adam", "adam_lr",
                "adam_examples_seen", "grown_minus_adam", "hidden_reset", "majority",
                "grown_cpu_s_per_net", "adam_cpu_s_per_net", "seen_in_meta_training",
                "grown_w_rms", "adam_w_rms", "adam_same", "grown_minus_adam_same"):  # fmt: skip
        assert col in rows[0], col
    for r in rows:  # K = 3 rule steps of 16 examples; Adam: as many steps of 16
        m = int(r["horizon_mult"])
        assert int(r["steps"]) == int(r["adam_steps"]) == 3 * m
        assert int(r["examples_seen"]) == int(r["adam_examples_seen"]) == 3 * m * 16
        for key in ("grown", "adam", "adam_same", "hidden_reset", "majority"):
            assert 0 <= float(r[key]) <= 1, key
        same = float(r["grown"]) - float(r["adam_same"])
        assert float(r["grown_minus_adam_same"]) == pytest.approx(same, abs=1e-5)
        assert float(r["grown_cpu_s_per_net"]) >= 0 and float(r["adam_cpu_s_per_net"]) > 0
        assert float(r["grown_w_rms"]) > 0 and float(r["adam_w_rms"]) > 0
        assert r["seen_in_meta_training"] == "False"
    cpu = [float(r["grown_cpu_s_per_net"]) for r in rows[:3]]
    assert cpu == sorted(cpu)  # one growing run, timed up to every horizon
    md = (out / "transfer.md").read_text()
    tables = [ln for ln in md.splitlines() if ln.startswith("| ") and "horizon" not in ln]
    assert len(tables) == 6 and "hidden reset" in md and "grown - Adam" in md
    assert "mean over datasets of grown - Adam: 1K" in md and "from 2K to 4K" in md
    assert "Adam, same batches" in md and "grown - Adam on the same batches: 1K" in md
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    s = json.loads((out / "summary.json").read_text())
    assert s["datasets"] == ["iris", "circles"] and s["horizons"] == [1, 2, 4]
    assert s["curves"]["circles"][rows[3]["architecture"]]["examples_seen"] == [48, 96, 192]
    assert s["headline"]["trend"] in ("rising", "flat", "falling")
    from gnca.experiments.transfer import headline

    h = headline(s)
    assert "grown_4K_minus_2K" in h.metrics and "grown_minus_adam_1K" in h.metrics
    assert f"iris.{rows[0]['architecture']}.grown_minus_adam_at_4K" in h.metrics
    assert f"iris.{rows[0]['architecture']}.grown_minus_adam_same_at_4K" in h.metrics
    assert "grown_minus_adam_same_1K" in h.metrics
    assert any("still rising" in c for c in h.claims)


def test_transfer_runs_adam_on_the_very_batches_the_grown_nets_read(
    senses_checkpoint, tmp_path, monkeypatch
):
    """The same-batches Adam reads, step by step, the examples the grown nets' reader drew (and
    its picked rate); the tuning runs read other batches of the first four fifths."""
    import gnca.experiments.transfer as transfer
    from gnca.build import load_trained
    from gnca.cli import parse_arch
    from gnca.senses import SenseReader

    read: list[torch.Tensor] = []
    real_batch = SenseReader.batch

    def batch(self, device):
        X, y = real_batch(self, device)
        read.append(X)
        return X, y

    runs: list[tuple[float, list[torch.Tensor]]] = []
    real_train = transfer.train_adam

    def train_adam(task, graph, w0, trainable, batches, lr, seed, X, y):
        seen: list[torch.Tensor] = []
        real_loss = task.loss
        task.loss = lambda g, w, Xb, yb: seen.append(Xb) or real_loss(g, w, Xb, yb)
        try:
            return real_train(task, graph, w0, trainable, batches, lr, seed, X, y)
        finally:
            del task.loss
            runs.append((lr, seen))

    monkeypatch.setattr(SenseReader, "batch", batch)
    monkeypatch.setattr(transfer, "train_adam", train_adam)
    tr = load_trained(senses_checkpoint)
    task = Task(load_dataset("wine"), fan_in_ref=32)
    arch = parse_arch("h:8", 13, 3, True, None)
    s = run_transfer(RuleSource("senses", checkpoint=senses_checkpoint), [(task, [arch])],
                     tmp_path / "t", num=2, horizons=[1, 2], seed=3, progress=False)  # fmt: skip
    k = tr.cfg.train.k_max
    assert len(read) == 2 * k  # one growing run to the largest horizon
    for m, row in zip((1, 2), s["rows"], strict=True):
        lr, seen = runs[m - 1]
        assert lr == row["adam_lr"] and len(seen) == m * k
        assert all(torch.equal(a, b) for a, b in zip(seen, read, strict=False))
    from gnca.experiments.adam_baseline import train_adam as plain

    assert transfer.train_adam is not plain  # the runs above were the transfer's own


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--horizons", "1,x"], "--horizons"),
        (["--horizons", "0,2"], "--horizons"),
        (["--horizons", "2,2"], "--horizons"),
        (["--horizons", "1,2", "--horizon-mult", "3"], "--horizon-mult"),
        *((["--tune-step", scales], "--tune-step") for scales in ("0,1", "1,x", "2,2", "-1")),
    ],
)
def test_transfer_bad_flags_are_one_line(tmp_path, capsys, flags, says):
    args = ["experiment", "transfer", "--checkpoint", str(tmp_path / "none.pt"), "--dataset",
            "iris", "--arch", "h:8", "--out", str(tmp_path / "o"), *flags]  # fmt: skip
    assert main(args) == 2
    assert says in error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def aligned_checkpoint(tmp_path_factory) -> str:
    """A rule with Adam's path along its learned feedback (tabular_aligned.yaml), 2 meta-steps."""
    return _tiny_checkpoint(tmp_path_factory, "tabular_aligned")


def test_transfer_tunes_the_rules_step_per_budget_on_a_validation_fifth(
    aligned_checkpoint, tmp_path, capsys
):
    """--tune-step grows nets with the rule's step times each scale on the first four fifths of
    the training split, picks per budget the scale whose nets score best on the last fifth, and
    reports nets grown with it on the whole split: what growing the scaled rules by hand gives."""
    import csv
    import dataclasses

    from gnca.build import load_trained
    from gnca.cli import parse_arch
    from gnca.experiments.learning import grow_on
    from gnca.experiments.transfer import step_scaled

    out = tmp_path / "tuned"
    args = ["experiment", "transfer", "--checkpoint", aligned_checkpoint, "--dataset", "circles",
            "--arch", "h:8", "--horizons", "1,4", "--num", "3", "--seed", "2", "--tune-step",
            "0.5,1,3", "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    assert "grown, step tuned" in capsys.readouterr().out
    with open(out / "transfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tr = load_trained(aligned_checkpoint)
    task = Task(load_dataset("circles"), fan_in_ref=tr.task.fan_in_ref)
    X, y = task.data.X_train, task.data.y_train
    cut = int(0.8 * X.shape[0])
    held = dataclasses.replace(task, data=dataclasses.replace(
        task.data, X_train=X[:cut], y_train=y[:cut], X_test=X[cut:], y_test=y[cut:]))  # fmt: skip
    arch = parse_arch("h:8", 2, 2, True, None)
    k = tr.cfg.train.k_max
    steps = [k, 4 * k]

    def grown(scale: float, on: Task) -> torch.Tensor:  # (horizons,) mean accuracy
        scaled = dataclasses.replace(tr, rule=step_scaled(tr.rule, scale))
        return grow_on(scaled, None, steps[-1], record=steps, seed=2, num=3, task=on,
                       arch=arch)[1].mean(1)  # fmt: skip

    val = {s: grown(s, held) for s in (0.5, 1.0, 3.0)}
    for i, row in enumerate(rows):
        pick = max(val, key=lambda s: (float(val[s][i]), -list(val).index(s)))
        assert float(row["grown_tuned_step_scale"]) == pick
        assert float(row["grown_tuned"]) == pytest.approx(float(grown(pick, task)[i]), abs=1e-6)
        assert float(row["grown_tuned_minus_adam"]) == pytest.approx(
            float(row["grown_tuned"]) - float(row["adam"]), abs=1e-6
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step_scales"] == [0.5, 1.0, 3.0]
    assert "grown_tuned_minus_adam_same_4K" in summary["headline"]


def test_tuning_the_step_of_a_rule_without_a_descent_path_is_refused(
    senses_checkpoint, tmp_path, capsys
):
    args = ["experiment", "transfer", "--checkpoint", senses_checkpoint, "--dataset", "iris",
            "--arch", "h:8", "--tune-step", "1,2", "--out", str(tmp_path / "o"), "--no-progress",
            "--threads", "1"]  # fmt: skip
    assert main(args) != 0
    assert "has none (rule.descent is 0)" in capsys.readouterr().err
