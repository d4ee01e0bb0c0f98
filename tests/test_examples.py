"""The scripts in examples/ run end to end on tiny inputs."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from test_data import _fake_mnist

from gnca.config import Config
from gnca.trainer import MetaTrainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_width_diagnostics_runs_on_a_tiny_rule(tmp_path, monkeypatch, capsys) -> None:
    cfg = Config()
    cfg.data.name = "mnist"
    cfg.data.data_dir = str(_fake_mnist(tmp_path / "mnist"))
    cfg.data.downsample = 2
    cfg.task.architectures = [[196, 4, 4, 10]]
    cfg.task.init = "codes"
    cfg.rule.hidden_channels = 16
    cfg.pool.size = 4
    cfg.pool.fresh = 1
    cfg.train.steps, cfg.train.batch_size, cfg.train.k_min, cfg.train.k_max = 1, 2, 2, 2
    cfg.train.device = "cpu"
    trainer = MetaTrainer.from_config(cfg)
    trainer.meta_step()
    ckpt = tmp_path / "rule.pt"
    trainer.save(ckpt)
    argv = ["width_diagnostics.py", str(ckpt), "--sizes", "196-8-8-10", "--base", "4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--nets", "2", "--test", "10"])
    runpy.run_path(str(EXAMPLES / "width_diagnostics.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "196-4-4-10: 0:" in out and "196-8-8-10: 0:" in out
    for part in ("W1: correlation", "W2: correlation", "b3: correlation", "a = 1.0:", "step 2:"):
        assert part in out
