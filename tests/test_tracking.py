"""Optional Weights & Biases logging (``train.wandb``): offline runs in the run directory, the
same scalars as metrics.csv and TensorBoard, and a one-line error without the package."""

from __future__ import annotations

import csv
import sys

import pytest
from conftest import IRIS, TINY, error_line, tiny_config

from gnca.cli import main
from gnca.config import ConfigError, TrainConfig, config_from_dict, config_to_dict
from gnca.tracking import RUN_ID_FILE, MissingDependencyError
from gnca.trainer import MetaTrainer

SCALARS = {"train/loss", "train/accuracy", "train/lr", "train/skipped"}


def test_wandb_is_off_by_default_and_its_keys_are_checked():
    t = TrainConfig()
    assert (t.wandb, t.wandb_project, t.wandb_mode) == (False, "gnca", "offline")
    ok = config_from_dict(
        {"wandb": True, "wandb_project": "meta-nca", "wandb_mode": "online"}, TrainConfig
    )
    assert ok.wandb and ok.wandb_mode == "online"
    with pytest.raises(ConfigError, match="'train.wandb_mode' must be one of 'offline', 'online'"):
        config_from_dict({"train": {"wandb_mode": "onlin"}})
    for bad in ("", "a/b", "x:y"):
        with pytest.raises(ConfigError, match="train.wandb_project"):
            config_from_dict({"train": {"wandb_project": bad}})
    with pytest.raises(ConfigError, match="must be a bool"):
        config_from_dict({"train": {"wandb": "yes"}})


# ---------------------------------------------------------------------- without wandb
@pytest.fixture
def no_wandb(monkeypatch):
    """``import wandb`` fails, as where the package is not installed."""
    monkeypatch.setitem(sys.modules, "wandb", None)


def test_missing_wandb_is_one_error_before_anything_is_written(no_wandb, tmp_path):
    tr = MetaTrainer.from_config(tiny_config(wandb=True))
    with pytest.raises(MissingDependencyError) as err:
        tr.train(tmp_path, progress=False)
    assert str(err.value) == (
        "train.wandb is true but the wandb package is not installed: pip install 'gnca[wandb]'"
    )
    assert list(tmp_path.iterdir()) == [] and tr.step == 0
    MetaTrainer.from_config(tiny_config(steps=2)).train(tmp_path, progress=False)  # off: fine


def test_missing_wandb_through_the_cli_exits_2_with_one_line(no_wandb, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--config", IRIS, "--out", str(run_dir), "--no-progress", "--set", *TINY]
    assert main([*argv, "train.wandb=true"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line == (
        "gnca: error: train.wandb is true but the wandb package is not installed: "
        "pip install 'gnca[wandb]'"
    )
    assert not run_dir.exists()  # checked before the run directory is made
    assert main([*argv, "train.wandb=false"]) == 0


def test_wandb_needs_a_run_directory(tmp_path):
    tr = MetaTrainer.from_config(tiny_config(wandb=True))
    with pytest.raises(ValueError, match="train.wandb needs a run directory"):
        tr.train(progress=False)


# ---------------------------------------------------------------------- with wandb (offline)
@pytest.fixture
def wandb_spy(monkeypatch, tmp_path):
    """The real ``wandb`` in offline mode, its settings and caches under ``tmp_path``; records
    every ``wandb.init`` call's keyword arguments and every ``run.log``."""
    wandb = pytest.importorskip("wandb")
    for var, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }.items():
        monkeypatch.setenv(var, value)
    calls: dict[str, list] = {"init": [], "log": []}
    real_init = wandb.init

    def init(**kwargs):
        calls["init"].append(kwargs)
        run = real_init(**kwargs)
        real_log = run.log

        def log(data, step=None, **kw):
            calls["log"].append((step, dict(data)))
            return real_log(data, step=step, **kw)

        run.log = log
        return run

    monkeypatch.setattr(wandb, "init", init)
    return calls


def test_wandb_logs_the_metrics_and_the_config_offline_in_the_run_dir(wandb_spy, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tr = MetaTrainer.from_config(tiny_config(steps=8, wandb=True))
    tr.train(run_dir, progress=False)
    (kw,) = wandb_spy["init"]
    assert kw["dir"] == str(run_dir) and kw["mode"] == "offline" and kw["project"] == "gnca"
    assert kw["config"] == config_to_dict(tr.cfg) and kw["config"]["train"]["wandb"] is True
    # the same rows as metrics.csv, at the same steps
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [step for step, _ in wandb_spy["log"]] == [int(r["step"]) for r in rows] == [4, 8]
    for (_, logged), row in zip(wandb_spy["log"], rows, strict=True):
        assert set(logged) == SCALARS
        for key in ("loss", "accuracy", "lr", "skipped"):
            assert logged[f"train/{key}"] == pytest.approx(float(row[key]), rel=1e-5)
    # the offline run lives in the run directory and holds the scalars and the config
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    for key in (*SCALARS, "rollback_factor", "wandb_project"):
        assert key.encode() in data, key
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert record.name == f"run-{run_id}.wandb"


def test_a_resumed_run_continues_its_wandb_run(wandb_spy, tmp_path):
    tr = MetaTrainer.from_config(tiny_config(steps=4, wandb=True))
    tr.train(tmp_path, progress=False)
    first = (tmp_path / RUN_ID_FILE).read_text().strip()
    more = MetaTrainer.from_checkpoint(tmp_path / "last.pt", cfg=tiny_config(steps=8, wandb=True))
    more.train(tmp_path, progress=False)
    assert [kw["id"] for kw in wandb_spy["init"]] == [None, first]
    assert wandb_spy["init"][1]["resume"] == "allow"
    assert [step for step, _ in wandb_spy["log"]] == [4, 8]
    # a new run in the same directory (gnca train --overwrite) starts a new W&B run
    MetaTrainer.from_config(tiny_config(steps=4, wandb=True)).train(tmp_path, progress=False)
    assert wandb_spy["init"][2]["id"] is None
    assert (tmp_path / RUN_ID_FILE).read_text().strip() != first


def test_only_the_main_process_logs_to_wandb(wandb_spy, tmp_path):
    tr = MetaTrainer.from_config(tiny_config(steps=4, wandb=True))
    tr.is_main = False  # a non-zero rank of a distributed run
    tr.train(tmp_path, progress=False)
    assert wandb_spy["init"] == [] and not (tmp_path / "wandb").exists()


def test_gnca_train_with_wandb(wandb_spy, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--config", IRIS, "--out", str(run_dir), "--no-progress", "--set", *TINY]
    assert main([*argv, "train.wandb=true", "train.wandb_project=gnca-test"]) == 0
    (kw,) = wandb_spy["init"]
    assert kw["project"] == "gnca-test" and kw["name"] == "iris" and kw["dir"] == str(run_dir)
    assert [step for step, _ in wandb_spy["log"]] == [2, 4]
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
