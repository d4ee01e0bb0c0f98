"""Where MNIST comes from: the command-line flag, then the config's ``data.data_dir``, then
``$GNCA_DATA``. The shipped configs name no folder of their own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import fake_mnist

from gnca.build import make_dataset
from gnca.cli import main
from gnca.config import load_config

REPO = Path(__file__).resolve().parents[1]
# the MNIST configs (mnist1d_*.yaml are mnist1d's, generated offline)
MNIST_CONFIGS = sorted(p for p in (REPO / "configs").glob("mnist*.yaml") if "mnist1d" not in p.stem)
TINY_MNIST = [
    "task.architectures=[[196,8,10]]",
    "rule.widths=[16]",
    "rule.hidden_channels=24",
    "pool.size=4",
    "pool.fresh=1",
    "data.batch_size=16",
    "train.steps=2",
    "train.batch_size=2",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "train.eval_nets=2",
    "train.device=cpu",
]


def error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("gnca: error: ")
    return lines[0]


def test_the_mnist_configs_exist_and_name_no_folder() -> None:
    assert len(MNIST_CONFIGS) >= 3
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert "shared/data" not in path.read_text(), path
        assert load_config(path).data.data_dir is None, path


@pytest.mark.parametrize("path", MNIST_CONFIGS, ids=lambda p: p.stem)
def test_mnist_config_loads_from_gnca_data(path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GNCA_DATA", str(fake_mnist(tmp_path / "env")))
    cfg = load_config(path)
    data = make_dataset(cfg.data)
    assert data.name == "mnist" and data.n_classes == 10
    side = 28 // cfg.data.downsample
    assert data.image_shape == (side, side)
    assert len(data.y_train) + len(data.y_test) == 50  # the 30 + 20 fake images, pooled


def test_config_data_dir_beats_gnca_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GNCA_DATA", str(fake_mnist(tmp_path / "env", n_train=30)))
    other = fake_mnist(tmp_path / "cfg", n_train=40)
    cfg = load_config(REPO / "configs" / "mnist_fast.yaml", [f"data.data_dir={other}"])
    assert len(make_dataset(cfg.data).y_train) == 48  # 80% of the 40 + 20 in the config's
    monkeypatch.setenv("GNCA_DATA", str(tmp_path / "nowhere"))
    assert len(make_dataset(cfg.data).y_train) == 48  # the environment is not consulted


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny MNIST run trained from the folder ``data.data_dir`` names: (run dir, folder)."""
    root = tmp_path_factory.mktemp("mnist_run")
    folder = fake_mnist(root / "train_data")
    code = main(
        [
            "train",
            "--config",
            str(REPO / "configs" / "mnist_fast.yaml"),
            "--out",
            str(root / "run"),
            "--no-progress",
            "--set",
            *TINY_MNIST,
            f"data.data_dir={folder}",
        ]
    )
    assert code == 0
    return root / "run", folder


def test_flag_beats_config_and_env(capsys, mnist_run, tmp_path, monkeypatch) -> None:
    run_dir, folder = mnist_run
    ckpt = str(run_dir / "last.pt")
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)  # the folder the checkpoint's config names is gone
    try:
        monkeypatch.setenv("GNCA_DATA", str(tmp_path / "env_nowhere"))
        grow = ["grow", "--checkpoint", ckpt, "--num", "2", "--steps", "1", "--json"]
        # without the flag: the config's folder wins over GNCA_DATA (and is missing)
        assert main(grow) == 2
        msg = error_line(capsys.readouterr().err)
        assert str(folder) in msg and "env_nowhere" not in msg
        # with the flag: neither the config's folder nor GNCA_DATA is used
        assert main([*grow, "--data-dir", str(moved)]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["num"] == 2
        evaluate = ["eval", "--checkpoint", ckpt, "--num", "2", "--horizons", "1"]
        assert main([*evaluate, "--data-dir", str(moved)]) == 0, capsys.readouterr().err
    finally:
        shutil.copytree(moved, folder)


def test_gnca_data_is_the_fallback_of_a_checkpoint(capsys, tmp_path, monkeypatch) -> None:
    """A run trained with the folder from GNCA_DATA keeps no folder in its config."""
    monkeypatch.setenv("GNCA_DATA", str(fake_mnist(tmp_path / "env")))
    code = main(
        [
            "train",
            "--config",
            str(REPO / "configs" / "mnist_fast.yaml"),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            *TINY_MNIST,
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert load_config(tmp_path / "run" / "config.yaml").data.data_dir is None
    monkeypatch.setenv("GNCA_DATA", str(tmp_path / "env_moved"))
    assert main(["grow", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--num", "2"]) == 2
    assert "env_moved" in error_line(capsys.readouterr().err)


def test_experiment_data_dir_flag_beats_the_config(tmp_path) -> None:
    from gnca.experiments.command import read_config

    cfg = read_config(
        str(REPO / "configs" / "mnist_fast.yaml"), [f"data.data_dir={tmp_path / 'cfg'}"], "flag"
    )
    assert cfg is not None and cfg.data.data_dir == "flag"
    cfg = read_config(str(REPO / "configs" / "mnist_fast.yaml"), [], None)
    assert cfg is not None and cfg.data.data_dir is None
