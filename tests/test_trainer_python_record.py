"""A trainer built from Python records the augmentations and sense batch it really uses."""

from __future__ import annotations

import pytest
import torch

from gnca import LocalRule
from gnca.config import PoolConfig, TrainConfig, config_from_dict
from gnca.data import load_dataset
from gnca.task import Task
from gnca.trainer import MetaTrainer


def _parts() -> tuple[LocalRule, Task, list]:
    task = Task(load_dataset("iris"))
    torch.manual_seed(0)
    rule = LocalRule(8, widths=(16,), senses=("act",))
    return rule, task, [task.mlp([4, 6, 3])]


def test_python_trainer_records_augmentations(tmp_path) -> None:
    rule, task, archs = _parts()
    trainer = MetaTrainer(rule, task, archs, train=TrainConfig(steps=1, batch_size=2),
                          pool=PoolConfig(size=4), sense_batch=17, permute_labels=True,
                          feature_transform="orthogonal", class_subsets=2)  # fmt: skip
    trainer.save(tmp_path / "last.pt")
    saved = config_from_dict(torch.load(tmp_path / "last.pt", weights_only=True)["config"])
    assert saved.train.permute_labels is True
    assert saved.train.feature_transform == "orthogonal"
    assert saved.train.class_subsets == 2
    assert saved.rule.sense_batch == 17


def test_train_config_fields_are_honoured() -> None:
    rule, task, archs = _parts()
    train = TrainConfig(steps=1, batch_size=2, feature_transform="permute", class_subsets=2)
    trainer = MetaTrainer(rule, task, archs, train=train, pool=PoolConfig(size=4))
    assert trainer.variants.feature_transform == "permute"
    assert trainer.variants.class_subsets == 2
    assert trainer.cfg.train.feature_transform == "permute"


def test_conflicting_augmentation_is_one_line_error() -> None:
    rule, task, archs = _parts()
    train = TrainConfig(steps=1, batch_size=2, feature_transform="permute")
    with pytest.raises(ValueError, match=r"^MetaTrainer got feature_transform='orthogonal' but "
                       r"train.feature_transform is 'permute'; set it in one place$"):  # fmt: skip
        MetaTrainer(rule, task, archs, train=train, feature_transform="orthogonal")
