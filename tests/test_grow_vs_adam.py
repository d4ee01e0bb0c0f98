"""The grow section's case with a rule that reads data (benchmarks/grow_vs_adam.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import grow_vs_adam  # noqa: E402
from common import Budget, Context, Section  # noqa: E402

from gnca.build import make_rule  # noqa: E402
from gnca.checkpoint import save_checkpoint  # noqa: E402
from gnca.config import config_to_dict, load_config  # noqa: E402


def _ctx(**options) -> Context:
    return Context(torch.device("cpu"), True, Budget(None), 1, options)


def test_senses_flops_count_every_pass() -> None:
    sizes, b = [64, 32, 10], 64
    p = 64 * 32 + 32 + 32 * 10 + 10
    every = ["act", "hebb", "error", "delta", "loss"]
    # forward, messages into the hidden layer (32 x 10 weights), hebb and delta products
    assert grow_vs_adam.senses_flops_per_net(sizes, b, every) == 2 * b * p + 2 * b * 320 + 4 * b * p
    assert grow_vs_adam.senses_flops_per_net(sizes, b, ["act", "loss"]) == 2 * b * p
    assert grow_vs_adam.senses_flops_per_net(sizes, b, []) == 0


def test_digits_senses_skipped_without_a_checkpoint() -> None:
    sec = Section("grow")
    grow_vs_adam.run_task(sec, _ctx(), "digits_senses")
    assert sec.status == "ok" and not sec.tables
    assert "skipped" in sec.messages[0] and "--digits-senses-checkpoint" in sec.messages[0]


def test_untrained_reading_rule_grows_with_its_reader(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(grow_vs_adam, "NETS", 4)  # a few nets: only the wiring is tested
    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / "digits_senses.yaml", ["train.k_max=2", "train.k_min=1"])
    torch.manual_seed(0)
    rule = make_rule(cfg.rule)
    path = tmp_path / "rule.pt"
    payload = {"rule": rule.state_dict(), "rule_config": rule.config()}
    save_checkpoint(path, {**payload, "config": config_to_dict(cfg)})
    sec = Section("grow")
    ctx = _ctx(digits_senses_checkpoint=str(path), grow_tasks=["digits_senses"])
    grow_vs_adam.run_grow(sec, ctx)
    # an untrained rule learns nothing: no comparison with Adam, but the curve was grown
    # (2 k_max rule steps, each reading a batch) and the section says why it stopped
    assert sec.status == "partial", sec.messages
    assert len(sec.data["digits_senses"]["curve"]) == 2 * 2 + 1
    assert any("not trained enough" in m for m in sec.messages)
