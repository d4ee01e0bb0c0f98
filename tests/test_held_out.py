"""``train.held_out``: the senses read one part of the training split, the meta-loss scores the
other."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from gnca.config import ConfigError, config_from_dict, config_to_dict
from gnca.data import DataError, load_dataset
from gnca.senses import SENSES, SenseReader
from gnca.task import Task
from gnca.trainer import MetaTrainer


def _rows(X: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in X.tolist()}


def _config(held_out: float, also: list[str] | None = None, **train):
    d = config_to_dict(tiny_config(held_out=held_out, **train))
    d["rule"]["senses"] = list(SENSES)
    d["rule"]["sense_batch"] = 8
    if also:
        d["data"]["also"] = also
    return config_from_dict(d)


def test_held_out_cuts_the_training_split_in_two_stratified_parts():
    task = Task(load_dataset("wine"), batch_size=32)
    read, score = task.held_out(0.25, seed=3)
    X, y = task.data.X_train, task.data.y_train
    a, b = _rows(read.data.X_train), _rows(score.data.X_train)
    assert not a & b and a | b == _rows(X)  # a partition of the training rows
    assert len(score.data.y_train) == pytest.approx(0.25 * len(y), abs=1)
    # stratified: every class keeps its share in the scored part (to one example)
    for c in range(task.n_classes):
        share = (y == c).float().mean().item()
        got = (score.data.y_train == c).float().mean().item()
        assert abs(got - share) <= 1 / len(score.data.y_train) + 1e-9
    for part in (read, score):  # the test split and the conventions stay as they were
        assert torch.equal(part.data.X_test, task.data.X_test)
        assert (part.activation, part.fan_in_ref, part.batch_size) == ("tanh", None, 32)
    again = task.held_out(0.25, seed=3)[1]
    assert torch.equal(again.data.X_train, score.data.X_train)  # seeded
    assert not torch.equal(task.held_out(0.25, seed=4)[1].data.X_train, score.data.X_train)
    with pytest.raises(ValueError, match="held-out fraction must be in"):
        task.held_out(1.0, seed=0)


def test_the_senses_never_read_what_the_meta_loss_scores(monkeypatch):
    """Spies on every example a meta-step reads through the senses and every example its
    meta-loss scores: the two sets are the two parts of the training split."""
    tr = MetaTrainer.from_config(_config(0.3, steps=3))
    obj = tr.objective
    read_part = _rows(obj.readers[0].task.data.X_train)
    scored_part = _rows(obj.tasks[0].data.X_train)
    assert not read_part & scored_part
    assert read_part | scored_part == _rows(tr.task.data.X_train)

    read, scored = [], []
    batch = SenseReader.batch

    def spy_batch(self, device):
        X, y = batch(self, device)
        read.append(X)
        return X, y

    logits = Task.logits

    def spy_logits(self, graph, w, X):
        scored.append(X)
        return logits(self, graph, w, X)

    monkeypatch.setattr(SenseReader, "batch", spy_batch)
    monkeypatch.setattr(Task, "logits", spy_logits)
    for _ in range(3):
        obj()
    assert read and scored
    seen = set().union(*(_rows(X.reshape(-1, X.shape[-1])) for X in read))
    marked = set().union(*(_rows(X.reshape(-1, X.shape[-1])) for X in scored))
    assert seen <= read_part and marked <= scored_part


def test_tasks_shared_by_architectures_are_cut_once():
    tr = MetaTrainer.from_config(_config(0.2, also=["moons"]))
    obj = tr.objective
    names = [t.name for t in obj.tasks]
    assert names[0] == "iris" and "moons" in names
    for i, t in enumerate(obj.tasks):  # each task's scored part is smaller than its split
        full = tr.arch_tasks[i].data.y_train.numel()
        assert t.data.y_train.numel() < full
        assert obj.readers[i].task.data.y_train.numel() + t.data.y_train.numel() == full


def test_no_held_out_scores_the_task_itself():
    tr = MetaTrainer.from_config(_config(0.0))
    assert tr.objective.tasks[0] is tr.arch_tasks[0]
    assert tr.objective.readers[0].task is tr.arch_tasks[0]


def test_held_out_errors(capsys):
    from conftest import REPO

    from gnca.cli import main

    with pytest.raises(
        DataError, match=r"^wine training split: cannot split .* train.held_out=0.01"
    ):
        Task(load_dataset("wine")).held_out(0.01, seed=0)  # fewer held out than classes
    config = str(REPO / "configs" / "tabular_keeps_pace.yaml")
    args = ["train", "--config", config, "--set", "train.held_out=0.001", "--no-progress"]
    assert main([*args, "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.held_out=0.001" in err
    with pytest.raises(ConfigError, match=r"'train.held_out' must be a fraction in \[0, 1\)"):
        tiny_config(held_out=1.0)
    with pytest.raises(ValueError, match="needs a rule that reads data"):
        MetaTrainer.from_config(tiny_config(held_out=0.2))
