"""The scripts in examples/ run end to end on tiny inputs."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import fake_mnist

from gnca.architecture import OUTPUT
from gnca.archspec import parse_arch
from gnca.config import Config
from gnca.graph import WeightGraph
from gnca.trainer import MetaTrainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _tiny_rule(tmp_path: Path, sizes: list[int], fan_in_ref: float | None = None) -> Path:
    """A checkpoint of a rule meta-trained for one step on fake 14x14 MNIST nets ``sizes``."""
    cfg = Config()
    cfg.data.name = "mnist"
    cfg.data.data_dir = str(fake_mnist(tmp_path / "mnist"))
    cfg.data.downsample = 2
    cfg.task.architectures = [sizes]
    cfg.task.init = "codes"
    cfg.task.fan_in_ref = fan_in_ref
    cfg.rule.hidden_channels = 16
    cfg.pool.size = 4
    cfg.pool.fresh = 1
    cfg.train.steps, cfg.train.batch_size, cfg.train.k_min, cfg.train.k_max = 1, 2, 2, 2
    cfg.train.device = "cpu"
    trainer = MetaTrainer.from_config(cfg)
    trainer.meta_step()
    ckpt = tmp_path / "rule.pt"
    trainer.save(ckpt)
    return ckpt


def test_width_diagnostics_runs_on_a_tiny_rule(tmp_path, monkeypatch, capsys) -> None:
    ckpt = _tiny_rule(tmp_path, [196, 4, 4, 10])
    argv = ["width_diagnostics.py", str(ckpt), "--sizes", "196-8-8-10", "--base", "4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--nets", "2", "--test", "10"])
    runpy.run_path(str(EXAMPLES / "width_diagnostics.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "196-4-4-10: 0:" in out and "196-8-8-10: 0:" in out
    for part in ("W1: correlation", "W2: correlation", "b3: correlation", "a = 1.0:", "step 2:"):
        assert part in out


def test_rank_diagnostics_runs_on_a_tiny_rule(tmp_path, monkeypatch, capsys) -> None:
    ckpt = _tiny_rule(tmp_path, [196, 6, 10], fan_in_ref=4)
    argv = ["rank_diagnostics.py", str(ckpt), "--sizes", "196-6-10", "--nets", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--train", "40"])
    runpy.run_path(str(EXAMPLES / "rank_diagnostics.py"), run_name="__main__")
    out = capsys.readouterr().out
    lines = out.splitlines()
    grown = float(next(x for x in lines if "net 0: accuracy" in x).split("accuracy ")[1][:6])
    full = float(next(x for x in lines if "rank 6:" in x).split(": ")[1])
    assert abs(full - grown) < 1e-3  # rank b is W1 itself
    assert "rank 3:" in out and "rank 5:" in out and "retrained:" in out


def test_rank_diagnostics_needs_one_hidden_layer(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["rank_diagnostics.py", "x.pt", "--sizes", "196-8-8-10"])
    with pytest.raises(SystemExit, match="one-hidden-layer"):
        runpy.run_path(str(EXAMPLES / "rank_diagnostics.py"), run_name="__main__")


def test_code_bounds_bases_and_runs(tmp_path, monkeypatch, capsys) -> None:
    mod = runpy.run_path(str(EXAMPLES / "code_bounds.py"))
    phi = mod["fourier_1d"](2, 8)
    r = (torch.arange(8) + 0.5) / 8
    assert torch.allclose(phi[3], torch.sin(4 * math.pi * r))  # rows: 1, sin 1, cos 1, sin 2, ...
    basis = mod["pixel_basis"](2, 8, 8)
    assert basis.shape == (25, 64)
    # products of 1-D Fourier rows at cell centres are orthogonal: the basis is orthonormal
    assert torch.allclose(basis @ basis.T, torch.eye(25), atol=1e-5)
    monkeypatch.setenv("GNCA_DATA", str(fake_mnist(tmp_path / "mnist")))
    argv = ["code_bounds.py", "--pixels", "2", "0", "--neurons", "1", "--hidden", "6"]
    monkeypatch.setattr(sys, "argv", [*argv, "--steps", "3", "--downsample", "2"])
    runpy.run_path(str(EXAMPLES / "code_bounds.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "pixels f=2: 25 basis images" in out
    assert "pixels f=0: 196 basis images" in out
    assert "neurons f=1: W1 rank <= 3" in out


def test_examples_name_a_missing_checkpoint_or_data_in_one_line(tmp_path, monkeypatch) -> None:
    missing = str(tmp_path / "nope.pt")
    monkeypatch.setattr(sys, "argv", ["rank_diagnostics.py", missing])
    with pytest.raises(SystemExit, match=r"^error: checkpoint not found: .*nope\.pt$"):
        runpy.run_path(str(EXAMPLES / "rank_diagnostics.py"), run_name="__main__")
    monkeypatch.delenv("GNCA_DATA", raising=False)
    monkeypatch.setattr(sys, "argv", ["code_bounds.py", "--neurons", "1"])
    with pytest.raises(SystemExit, match="^error: MNIST needs a data directory"):
        runpy.run_path(str(EXAMPLES / "code_bounds.py"), run_name="__main__")


def test_conv_nets_runs_end_to_end_with_adam_beside(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "conv"
    argv = ["conv_nets.py", "--steps", "1", "--nets", "2", "--adam-examples", "64",
            "--adam-nets", "1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "conv_nets.py"), run_name="__main__")
    import json

    result = json.loads((out / "results.json").read_text())
    assert result["steps"] == 1 and len(result["rows"]) == 6
    assert all(0.0 <= r["grown_K"] <= 1.0 and 0.0 <= r["adam"] <= 1.0 for r in result["rows"])
    assert "[unseen]" in capsys.readouterr().out


def test_growth_drift_prints_the_state_of_nets_grown_past_the_horizon(
    tmp_path, monkeypatch, capsys
) -> None:
    """A rule whose updates sit at the bound grows every hidden channel by exactly the bound
    per step, and the script's largest |h| shows it."""
    from conftest import TINY

    from gnca import build
    from gnca.cli import main

    run = tmp_path / "run"
    cfg = str(EXAMPLES.parent / "configs" / "digits_senses.yaml")
    assert main(["train", "--config", cfg, "--set", *TINY, "task.architectures=[[64,8,10]]",
                 "train.steps=1", "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    mod = runpy.run_path(str(EXAMPLES / "growth_drift.py"))
    load = build.load_trained

    def loud(path, **kw):  # every update at +bound
        tr = load(path, **kw)
        with torch.no_grad():
            tr.rule.out.bias.fill_(100.0)
        return tr

    monkeypatch.setitem(mod["drift"].__globals__, "load_trained", loud)
    rows = mod["drift"](str(run / "last.pt"), "wine", "h:8", 20, 2, 0)
    assert [r["step"] for r in rows] == [1, 10, 20]
    h0 = 0.0  # digits_senses.yaml starts hidden states at zero
    for r in rows:
        assert math.isclose(r["h_max"], h0 + 0.1 * r["step"], rel_tol=1e-4), r
        assert 0.0 <= r["acc"] <= 1.0 and r["w_rms_out"] > 0
    assert sum(k.startswith("sense:") for k in rows[0]) == 6  # act (2), hebb, error, delta, loss
    # damped after step 1 by 1 / t, every weight moves 0.1 * (1 + 1/2 + ... + 1/t) by step t:
    # the same hidden states, weights displaced by the harmonic sum instead of 0.1 * t
    seen = []
    real_reader = mod["drift"].__globals__["SenseReader"]
    monkeypatch.setitem(mod["drift"].__globals__, "SenseReader",
                        lambda *a, **kw: seen.append(a[2]) or real_reader(*a, **kw))  # fmt: skip
    damped = mod["drift"](str(run / "last.pt"), "wine", "h:8", 20, 2, 0, damp_after=1,
                          sense_batch=5)  # fmt: skip
    assert seen == [5]
    for r, d in zip(rows, damped, strict=True):
        assert d["h_max"] == r["h_max"]
        assert d["w_rms_out"] < r["w_rms_out"] or r["step"] == 1
    tr = loud(str(run / "last.pt"))
    net = parse_arch("h:8", 13, 3, True, None, "wine")
    graph = WeightGraph.replicate(net, 2)
    w0, _ = tr.init.state(graph, tr.rule.hidden_channels, torch.Generator().manual_seed(0))
    out = graph.neuron_kind[graph.dst] == OUTPUT
    shift = 0.1 * sum(1.0 / t for t in range(1, 21))
    expect = float((w0[out] + shift).square().mean().sqrt())
    assert math.isclose(damped[-1]["w_rms_out"], expect, rel_tol=1e-4)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["growth_drift.py", str(run / "last.pt"), "--steps", "3",
                                      "--num", "2", "--arch", "h:8"])  # fmt: skip
    runpy.run_path(str(EXAMPLES / "growth_drift.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["step", "acc", "w_rms_hidden"] and len(out) == 3


def test_growth_drift_descent_only_and_grad_align(tmp_path) -> None:
    """--descent-only moves the weights only along the read delta sense (0: they never move,
    while the rule's own steps do), and grad_align is 1 when the feedback is the forward
    weights themselves (the error signal is then the true gradient) and below 1 otherwise."""
    from conftest import TINY

    from gnca.build import load_trained, make_dataset, make_task
    from gnca.cli import main
    from gnca.config import DataConfig
    from gnca.forward import effective_weights

    run = tmp_path / "run"
    cfg = str(EXAMPLES.parent / "configs" / "digits_senses.yaml")
    assert main(["train", "--config", cfg, "--set", *TINY, "task.architectures=[[64,8,10]]",
                 "train.steps=1", "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    mod = runpy.run_path(str(EXAMPLES / "growth_drift.py"))
    still = mod["drift"](str(run / "last.pt"), "wine", "h:8", 10, 2, 0, descent_only=0.0)
    moved = mod["drift"](str(run / "last.pt"), "wine", "h:8", 10, 2, 0, descent_only=0.5)
    own = mod["drift"](str(run / "last.pt"), "wine", "h:8", 10, 2, 0)
    # --descent-norm 0 (Adam with beta2 = 0) divides each sense by its own size: one step
    # moves every weight whose sense is not 0 by A (up to Adam's epsilon), with the learned
    # feedback's sense or the true gradient
    w0 = mod["drift"](str(run / "last.pt"), "wine", "h:8", 1, 2, 0, descent_only=0.0)
    signed = mod["drift"](str(run / "last.pt"), "wine", "h:8", 1, 2, 0, descent_only=0.5,
                          descent_norm=0.0)  # fmt: skip
    plain = mod["drift"](str(run / "last.pt"), "wine", "h:8", 1, 2, 0, descent_only=0.5)
    assert signed[0]["step_max"] == pytest.approx(0.5, rel=1e-4) and w0[0]["step_max"] == 0.0
    assert plain[0]["step_max"] != pytest.approx(0.5, rel=1e-2)
    backprop = mod["drift"](str(run / "last.pt"), "wine", "h:8", 3, 2, 0, descent_only=0.5,
                            descent_norm=0.0, true_gradient=True)  # fmt: skip
    assert backprop[0]["step_max"] == pytest.approx(0.5, rel=1e-4)
    assert backprop[-1]["w_rms_hidden"] != signed[0]["w_rms_hidden"]
    assert still[0]["w_rms_out"] == still[-1]["w_rms_out"]
    assert still[0]["w_rms_hidden"] == still[-1]["w_rms_hidden"]
    assert moved[-1]["w_rms_out"] != still[-1]["w_rms_out"]
    assert own[-1]["w_rms_out"] != still[-1]["w_rms_out"]
    assert all(-1.0 <= r["grad_align"] <= 1.0 and -1.0 <= r["step_align"] <= 1.0 for r in own)
    assert all(0.0 <= r["sign_align"] <= 1.0 for r in own)
    tr = load_trained(str(run / "last.pt"))
    task = make_task(tr.cfg.task, make_dataset(DataConfig(name="wine")))
    graph = WeightGraph.replicate(parse_arch("h:8", 13, 3, True, None, "wine"), 2)
    w, h = tr.init.state(graph, tr.rule.hidden_channels, torch.Generator().manual_seed(0))
    X, y = task.split("train", "cpu")
    hidden = graph.neuron_kind[graph.dst] != OUTPUT
    h = h.clone()
    h[:, -1] = effective_weights(graph, w, tr.cfg.task.fan_in_ref)  # feedback = weights
    align = mod["alignments"]
    grad, sign = align(tr, task, graph, w, h, X, y, hidden)
    assert math.isclose(grad, 1.0, rel_tol=1e-5)
    assert sign == 1.0
    h[:, -1] = -h[:, -1]  # every hidden error signal turned around
    assert align(tr, task, graph, w, h, X, y, hidden)[1] == 0.0
    h[:, -1] = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(1))
    grad, sign = align(tr, task, graph, w, h, X, y, hidden)
    assert grad < 0.9
    assert 0.0 < sign < 0.9
    a, b = torch.randn(2, w.shape[0], generator=torch.Generator().manual_seed(2)).double()
    e = w.shape[0] // 2  # two nets of e weights each
    cos = []
    for i in range(2):  # a loop over the nets
        x, z = a[i * e : (i + 1) * e][hidden[:e]], b[i * e : (i + 1) * e][hidden[:e]]
        cos.append(float(x @ z / x.norm() / z.norm()))
    want = sum(cos) / 2
    assert math.isclose(mod["per_net_cos"](graph, a, b, hidden), want, rel_tol=1e-9)
    g = mod["true_grad"](task, graph, w, X, y)
    wg = w.clone().requires_grad_(True)
    task.loss(graph, wg, X, y).sum().backward()
    assert torch.equal(g, wg.grad)
    assert main(["train", "--config", cfg, "--set", *TINY, "task.architectures=[[64,8,10]]",
                 "rule.senses=[act]", "train.steps=1", "--out", str(tmp_path / "act"),
                 "--no-progress"]) == 0  # fmt: skip
    with pytest.raises(SystemExit, match="steps along the delta sense") as err:
        mod["drift"](str(tmp_path / "act" / "last.pt"), "wine", "h:8", 2, 2, 0, descent_only=0.1)
    assert "\n" not in str(err.value)


def test_growth_drift_refuses_a_data_free_rule_in_one_line(tmp_path) -> None:
    from conftest import IRIS, TINY

    from gnca.cli import main

    assert main(["train", "--config", IRIS, "--set", *TINY, "train.steps=1", "--out",
                 str(tmp_path / "free"), "--no-progress"]) == 0  # fmt: skip
    mod = runpy.run_path(str(EXAMPLES / "growth_drift.py"))
    with pytest.raises(SystemExit, match="reads no data") as err:
        mod["drift"](str(tmp_path / "free" / "last.pt"), "wine", "h:8", 2, 2, 0)
    assert "\n" not in str(err.value)


def test_growth_drift_bad_options_give_one_line_errors(tmp_path, capsys) -> None:
    from conftest import TINY

    from gnca.cli import main

    run = tmp_path / "run"
    cfg = str(EXAMPLES.parent / "configs" / "digits_senses.yaml")
    assert main(["train", "--config", cfg, "--set", *TINY, "task.architectures=[[64,8,10]]",
                 "train.steps=1", "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    mod = runpy.run_path(str(EXAMPLES / "growth_drift.py"))
    for flag in ("--sense-batch", "--damp-after"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as err:
            mod["main"]([str(run / "last.pt"), flag, "0"])
        assert err.value.code == 2
        assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        mod["main"]([str(run / "last.pt"), "--descent-only", "-1"])
    assert err.value.code == 2 and "--descent-only must be >= 0, got -1" in capsys.readouterr().err
    for argv, msg in ((["--descent-norm", "0.9"], "give --descent-only too"),
                      (["--descent-only", "0.1", "--descent-norm", "1"],
                       "--descent-norm must be in [0, 1), got 1.0"),
                      (["--descent-only", "0.1", "--descent-momentum", "0.9"],
                       "give --descent-norm too"),
                      (["--descent-only", "0.1", "--descent-norm", "0.9", "--descent-momentum",
                        "1"], "--descent-momentum must be in [0, 1), got 1.0"),
                      (["--true-gradient"], "give --descent-only too")):  # fmt: skip
        with pytest.raises(SystemExit) as err:
            mod["main"]([str(run / "last.pt"), *argv])
        assert err.value.code == 2 and msg in capsys.readouterr().err
    with pytest.raises(SystemExit, match="downsample=2 only applies to image datasets") as err:
        mod["main"]([str(run / "last.pt"), "--dataset", "wine", "--downsample", "2"])
    assert "\n" not in str(err.value)


def test_adam_readout_trains_what_each_mode_says(capsys) -> None:
    """readout trains only the output layer (the hidden weights keep their initial values), full
    trains both, linear has no hidden layer; the table has one row per mode."""
    from gnca.architecture import OUTPUT
    from gnca.data import load_dataset
    from gnca.task import Task

    mod = runpy.run_path(str(EXAMPLES / "adam_readout.py"))
    task = Task(load_dataset("iris"), "tanh", fan_in_ref=32)
    nets = {}
    for mode in ("full", "readout", "linear"):
        nets[mode] = mod["train"](task, mode, 10, (0.05,), 2)
    graph, w0, read = nets["readout"]
    out = graph.neuron_kind[graph.dst] == OUTPUT
    assert torch.equal(read.w[~out], w0[~out]) and not torch.equal(read.w[out], w0[out])
    graph, w0, full = nets["full"]
    assert not torch.equal(full.w[~out], w0[~out])
    graph, _, _ = nets["linear"]
    assert bool((graph.neuron_kind[graph.dst] == OUTPUT).all())  # every weight ends at an output
    mod["main"](["--dataset", "iris", "--steps", "3", "--runs", "1", "--lrs", "0.1"])
    rows = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in rows[1:]] == ["full", "readout", "linear"]
    with pytest.raises(SystemExit, match="unknown dataset"):
        mod["main"](["--dataset", "nope", "--steps", "3"])


def test_batch_sequences_trains_adam_once_per_sequence(tmp_path, monkeypatch, capsys) -> None:
    """One line per batch sequence, then their range; sequences differ only in their batches,
    so the same seed gives the same accuracy and another seed (here) another."""
    from conftest import TINY

    from gnca.cli import main

    run = tmp_path / "run"
    cfg = str(EXAMPLES.parent / "configs" / "digits_senses.yaml")
    assert main(["train", "--config", cfg, "--set", *TINY, "task.architectures=[[64,8,10]]",
                 "train.steps=1", "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["batch_sequences.py", str(run / "last.pt"), "--steps", "3", "--sequences", "3",
            "--num", "2", "--arch", "h:4", "--lr", "0.1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "batch_sequences.py"), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    accs = [float(ln.rsplit(" ", 1)[1]) for ln in lines[:3]]
    assert [ln.split(":")[0] for ln in lines[:3]] == ["sequence 0", "sequence 1", "sequence 2"]
    assert all(0.0 <= a <= 1.0 for a in accs) and len(set(accs)) > 1
    assert lines[3].startswith("3 sequences, 3 steps of") and f"{min(accs):.4f}" in lines[3]
    runpy.run_path(str(EXAMPLES / "batch_sequences.py"), run_name="__main__")
    again = capsys.readouterr().out.strip().splitlines()
    assert again == lines  # the same sequences, the same accuracies
    monkeypatch.setattr(sys, "argv", [*argv[:2], "--sequences", "0"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(EXAMPLES / "batch_sequences.py"), run_name="__main__")


def _aligned_digits_rule(tmp_path: Path, *keys: str) -> Path:
    """A data-reading rule with Adam's step along its learned feedback (digits, one meta-step)."""
    from conftest import TINY

    from gnca.cli import main

    run = tmp_path / "run"
    cfg = str(EXAMPLES.parent / "configs" / "digits_senses.yaml")
    assert main(["train", "--config", cfg, "--set", *TINY, "task.architectures=[[64,8,10]]",
                 "train.steps=1", "rule.hidden_channels=6", "rule.descent=0.03",
                 "rule.descent_only=true", "rule.descent_norm=0.999",
                 "rule.descent_momentum=0.9", "rule.sense_norm=false", *keys, "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    return run / "last.pt"


def test_feedback_cost_grows_the_rule_the_exact_feedback_and_adam_on_the_same_batches(
    tmp_path, capsys
) -> None:
    """The exact-feedback growth of a descent-only rule with Adam's moments takes Adam's steps on
    the same batches (the script's premise, checked on the weights' moves), and the script
    prints one line per sequence with every column, then the means."""
    import dataclasses

    from gnca.build import load_trained
    from gnca.experiments.adam_baseline import adam_batches, train_adam
    from gnca.experiments.common import reader_seed
    from gnca.experiments.learning import grow_on, initial_weights

    ckpt = _aligned_digits_rule(tmp_path)
    mod = runpy.run_path(str(EXAMPLES / "feedback_cost.py"))
    tr = load_trained(ckpt)
    exact = dataclasses.replace(tr, rule=tr.rule)
    exact.rule.feedback = "weights"
    graph, w0 = initial_weights(tr, 3, 1, None)
    res, _ = grow_on(exact, None, 4, record=[4], seed=1, num=3)
    X, y = tr.task.split("train", w0.device)
    lr = float(tr.rule.descent_rate.detach())
    batches = adam_batches(4 * tr.cfg.rule.sense_batch, tr.cfg.rule.sense_batch)
    keep = torch.ones_like(w0, dtype=torch.bool)

    def adam_move(sequence: int) -> torch.Tensor:
        return train_adam(tr.task, graph, w0, keep, batches, lr, reader_seed(sequence), X, y) - w0

    grown, same, other = res.w - w0, adam_move(1), adam_move(2)
    cos = torch.nn.functional.cosine_similarity
    # the same steps up to the soft clip of the senses (x / (1 + |x|)), which Adam has not
    assert float(cos(grown, same, 0)) > 0.99 and (grown - same).norm() < 0.15 * same.norm()
    assert float(cos(grown, other, 0)) < 0.95  # the check tells batch sequences apart
    capsys.readouterr()
    mod["main"]([str(ckpt), "--steps", "3", "--sequences", "2", "--num", "2", "--arch", "h:4",
                 "--scales", "1,2", "--feedback-init", "0,0.5", "--adam-lr", "0.1"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("digits, 3 steps of")
    names = ["rule x1 c=0", "rule x1 c=0.5", "exact x1", "adam x1", "rule x2 c=0",
             "rule x2 c=0.5", "exact x2", "adam x2", "adam lr 0.1"]  # fmt: skip
    for line, head in zip(lines[1:], ["sequence 0: ", "sequence 1: ", "mean of 2: "], strict=True):
        assert line.startswith(head)
        got = [part.rsplit(" ", 1) for part in line[len(head) :].split(", ")]
        assert [g[0] for g in got] == names and all(0 <= float(g[1]) <= 1 for g in got)


def test_feedback_cost_refuses_bad_input_in_one_line(tmp_path) -> None:
    mod = runpy.run_path(str(EXAMPLES / "feedback_cost.py"))
    with pytest.raises(SystemExit, match=r"^error: checkpoint not found: .*nope\.pt$"):
        mod["main"]([str(tmp_path / "nope.pt")])
    ckpt = _aligned_digits_rule(tmp_path)
    with pytest.raises(SystemExit, match="^error: unknown dataset"):
        mod["main"]([str(ckpt), "--dataset", "nope"])
    from conftest import TINY

    from gnca.cli import main

    cfg = str(EXAMPLES.parent / "configs" / "digits_senses.yaml")
    plain = tmp_path / "plain"
    assert main(["train", "--config", cfg, "--set", *TINY, "task.architectures=[[64,8,10]]",
                 "train.steps=1", "--out", str(plain), "--no-progress"]) == 0  # fmt: skip
    with pytest.raises(SystemExit, match="^error: the rule needs a descent path"):
        mod["main"]([str(plain / "last.pt")])
    for bad in (["--scales", "0"], ["--scales", "x"], ["--steps", "0"], ["--adam-lr", "-1"]):
        with pytest.raises(SystemExit):
            mod["main"]([str(ckpt), *bad])
