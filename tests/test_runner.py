"""The experiment runner (gnca/experiments/runner.py): the recipe the three experiments share."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN  # noqa: E402

from gnca.config import load_config
from gnca.experiments import ExperimentError, ExperimentRun, RuleSource
from gnca.grow import grow

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_TRAIN, "train.eval_nets=2"]


def tiny(*extra: str):
    return load_config(ROOT / "configs" / "iris.yaml", [*TINY, *extra])


def test_checks_fail_before_anything_is_written(tmp_path):
    out = tmp_path / "exp"
    with pytest.raises(ExperimentError, match="^second$"):
        ExperimentRun("x", out, progress=False, checks=[(False, "first"), (True, "second")])
    assert not out.exists()
    run = ExperimentRun("x", out, progress=False, checks=[(False, "fine")])
    assert run.out == out and out.is_dir() and run.device == torch.device("cpu")
    assert run.rules == []


def test_obtain_trains_under_rules_label_skips_none_and_reuses(tmp_path, capsys):
    run = ExperimentRun("x", tmp_path, progress=False)
    got = run.obtain(RuleSource("a", tiny()), None, RuleSource("b", tiny("pool.size=0")))
    assert [tr.label for tr in got] == ["a", "b"] and run.rules == got
    for label in ("a", "b"):
        assert (tmp_path / "rules" / label / "last.pt").is_file()
    assert [tr.cfg.pool.size for tr in got] == [256, 0]
    assert all(tr.trained_now and tr.meta_steps == 3 for tr in got)
    infos = run.rule_infos()
    assert [i["label"] for i in infos] == ["a", "b"]
    assert infos[0]["checkpoint"] == str(tmp_path / "rules" / "a" / "last.pt")
    # a second run in the same folder reuses the rule instead of meta-training it again
    again = ExperimentRun("x", tmp_path, progress=False).obtain(RuleSource("a", tiny()))
    assert not again[0].trained_now
    assert torch.equal(next(again[0].rule.parameters()).cpu(), next(got[0].rule.parameters()).cpu())
    assert "reusing rule 'a'" in capsys.readouterr().err


def test_obtain_counts_the_time_of_an_interrupted_run(tmp_path):
    """A rule resumed from an interrupted run reports the time of both parts."""
    from gnca.checkpoint import load_checkpoint

    (first,) = ExperimentRun("x", tmp_path, progress=False).obtain(RuleSource("a", tiny()))
    run_dir = tmp_path / "rules" / "a"
    ck = load_checkpoint(run_dir / "last.pt")
    ck["step"] = 1  # as if it had stopped after one meta-step, 500 s in
    ck["train_time"] = {"seconds": 500.0, "cpu_seconds": 700.0}
    torch.save(ck, run_dir / "last.pt")
    (run_dir / "train_time.json").unlink()  # an interrupted run never wrote it
    (tr,) = ExperimentRun("x", tmp_path, progress=False).obtain(RuleSource("a", tiny()))
    assert tr.trained_now and tr.meta_steps == 3
    spent = json.loads((run_dir / "train_time.json").read_text())
    assert 500.0 < spent["seconds"] == tr.train_seconds and spent["cpu_seconds"] > 700.0
    assert spent["meta_steps"] == 3
    assert first.train_seconds is not None and first.train_seconds < 500.0


def test_obtain_continues_train_time_json_for_a_checkpoint_without_its_time(tmp_path):
    """Checkpoints written before they kept their time resume on train_time.json's count."""
    from gnca.checkpoint import load_checkpoint

    ExperimentRun("x", tmp_path, progress=False).obtain(RuleSource("a", tiny()))
    run_dir = tmp_path / "rules" / "a"
    ck = load_checkpoint(run_dir / "last.pt")
    ck["step"] = 1
    del ck["train_time"]
    torch.save(ck, run_dir / "last.pt")
    (run_dir / "train_time.json").write_text(json.dumps({"seconds": 500.0, "cpu_seconds": 700.0}))
    (tr,) = ExperimentRun("x", tmp_path, progress=False).obtain(RuleSource("a", tiny()))
    spent = json.loads((run_dir / "train_time.json").read_text())
    assert 500.0 < spent["seconds"] == tr.train_seconds and spent["cpu_seconds"] > 700.0
    assert load_checkpoint(run_dir / "last.pt")["train_time"]["seconds"] > 500.0


def test_grow_is_seeded_growth_of_the_rule(tmp_path):
    run = ExperimentRun("x", tmp_path, progress=False)
    (tr,) = run.obtain(RuleSource("a", tiny()))
    arch = tr.architectures()[0]
    X, y = run.split(tr, "test")
    assert X.device == run.device and X.shape[0] == y.shape[0] == 30

    def metric(g, w):
        return tr.task.accuracy(g, w, X, y)

    res = run.grow(tr, arch, 3, 4, seed=7, metric=metric, record_at=range(5))
    ref = grow(
        tr.rule,
        arch,
        3,
        4,
        tr.init,
        generator=torch.Generator().manual_seed(7),
        metric=metric,
        record_at=range(5),
    )
    assert torch.equal(res.w, ref.w) and torch.equal(res.h, ref.h)
    assert res.curve is not None and ref.curve is not None and torch.equal(res.curve, ref.curve)
    other = run.grow(tr, arch, 3, 4, seed=8)
    assert not torch.equal(other.w, res.w)
    # perturb is applied before each step, as grow does it
    seen: list[int] = []
    run.grow(tr, arch, 2, 3, seed=0, perturb=lambda t, g, w: seen.append(t) or w)
    assert seen == [1, 2, 3]
    assert torch.equal(run.generator(5).get_state(), torch.Generator().manual_seed(5).get_state())


def test_progress_bar_and_notes_only_with_progress(tmp_path, capsys):
    run = ExperimentRun("x", tmp_path, progress=False)
    (tr,) = run.obtain(RuleSource("a", tiny()))
    capsys.readouterr()
    run.note("quiet")
    run.grow(tr, tr.architectures()[0], 2, 3, seed=0, bar="growing")
    assert capsys.readouterr().err == ""
    run.progress = True
    run.note("loud")
    run.grow(tr, tr.architectures()[0], 2, 3, seed=0, bar="growing")
    err = capsys.readouterr().err
    assert "loud" in err and "growing" in err


def test_outputs_and_summary(tmp_path):
    run = ExperimentRun("demo", tmp_path / "o", progress=False)
    md = run.write_text("t.md", "| a |")
    assert md == tmp_path / "o" / "t.md" and md.read_text() == "| a |\n"
    path = run.write_csv("t.csv", [{"x": 1, "y": 0.123456789}, {"x": 2, "y": float("nan")}])
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"x": "1", "y": "0.123457"}, {"x": "2", "y": "nan"}]
    summary = run.finish({"nets": 4, "table": [1, 2]})
    written = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert list(written) == [
        "experiment",
        "nets",
        "table",
        "seconds",
        "cpu_seconds",
        "environment",
    ]
    assert written["experiment"] == "demo" and written["nets"] == 4
    assert summary["seconds"] >= 0 and summary["cpu_seconds"] >= 0
    assert written["environment"]["torch"] == torch.__version__
    assert written["environment"]["cpu_model"]  # a non-empty CPU model name
