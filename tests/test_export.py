"""Export of grown nets as a standalone PyTorch module."""

from __future__ import annotations

import torch
from conftest import tiny_config

from gnca.build import load_rule
from gnca.grow import grow
from gnca.trainer import MetaTrainer


def test_export_round_trips_to_the_same_logits(tmp_path):
    tr = MetaTrainer.from_config(tiny_config(steps=5))
    tr.train(progress=False)
    tr.save(tmp_path / "r.pt")
    rule, cfg = load_rule(tmp_path / "r.pt")
    res = grow(rule, tr.archs[0], 5, 6, tr.init, generator=torch.Generator().manual_seed(1))
    nets = tr.task.export(res)
    nets.save(str(tmp_path / "nets.pt"))
    from gnca.export import GrownNets
    from gnca.forward import task_forward

    loaded = GrownNets.load(str(tmp_path / "nets.pt"))
    X = tr.data.X_test
    ref = task_forward(res.graph, res.w, X, cfg.task.activation)
    assert torch.allclose(loaded(X), ref, atol=1e-6)
    seq = loaded.to_sequential(2)
    assert torch.allclose(seq(X), ref[2], atol=1e-6)
