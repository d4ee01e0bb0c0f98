"""``gnca experiment conv``: layer nets grown by a rule, trained and unseen, with Adam beside
each (tiny rules: the structure of the outputs, not the numbers)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gnca.cli import main
from gnca.experiments.conv import ADAM_LRS, conv_cell, headline

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.steps=2",
    "train.k_min=2",
    "train.k_max=3",
    "train.batch_size=2",
    "pool.size=4",
    "pool.fresh=1",
    "rule.widths=[16]",
    "train.eval_nets=2",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "train.device=cpu",
]
SMALL = ["--num", "3", "--adam-examples", "128", "--adam-nets", "2", "--no-progress"]


def conv(out: Path, layers: str, *extra: str, eval_layers: str = "[]") -> list[str]:
    return [
        "experiment", "conv", "--config", str(ROOT / "configs" / "conv_digits.yaml"),
        "--set", *TINY, f"task.layers={layers}", f"train.eval_layers={eval_layers}",
        "--out", str(out), "--threads", "1", *SMALL, *extra,
    ]  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_conv_nets_trained_and_unseen_with_adam(tmp_path, capsys):
    out = tmp_path / "conv"
    argv = conv(out, '["conv:2k3p1-4k3s2p1"]', eval_layers='["conv:3k3p1-6k3s2p1"]')
    assert main(argv) == 0
    for name in ("conv.md", "conv.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert is_png(out / "conv.png")
    rows = read_csv(out / "conv.csv")
    assert [(r["architecture"], r["trained"]) for r in rows] == [
        ("conv:2k3p1-4k3s2p1", "True"),
        ("conv:3k3p1-6k3s2p1", "False"),
    ]
    for r in rows:
        for key in ("grown_at_K", "grown_at_10K", "adam"):
            assert 0.0 <= float(r[key]) <= 1.0, (key, r)
        assert float(r["adam_lr"]) in ADAM_LRS
        assert r["nets"] == "3" and r["adam_nets"] == "2" and r["adam_examples"] == "128"
        assert int(r["weights"]) > 0
    s = json.loads((out / "summary.json").read_text())
    assert s["experiment"] == "conv" and s["figure_kind"] == "heatmap"
    assert s["k"] == 3 and s["horizon_mult"] == 10 and s["dataset"] == "digits"
    assert s["trained"] == ["conv:2k3p1-4k3s2p1"] and s["unseen"] == ["conv:3k3p1-6k3s2p1"]
    md = (out / "conv.md").read_text()
    assert "| conv:3k3p1-6k3s2p1 |" in md and "unseen" in md and "Grown >= Adam on" in md
    h = headline(s)
    for key in ("trained_mean", "unseen_mean", "adam_mean", "grown_at_least_adam"):
        assert h.metrics[key][0] is not None, key
    assert h.metrics["conv:3k3p1-6k3s2p1.grown_at_K"][1] == "higher"
    assert "figure:" in capsys.readouterr().out


def test_residual_nets_fall_back_to_the_bar_chart(tmp_path):
    out = tmp_path / "res"
    assert main(conv(out, '["conv:fc8-rfc8"]', "--arch", "conv:fc8-rfc8-rfc8", "--arch",
                     "conv:fc12-rfc12", "--horizon-mult", "2")) == 0  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    assert s["figure_kind"] == "bars" and is_png(out / "conv.png")
    assert [(r["architecture"], r["trained"]) for r in s["rows"]] == [
        ("conv:fc8-rfc8", True),
        ("conv:fc8-rfc8-rfc8", False),
        ("conv:fc12-rfc12", False),
    ]
    assert all("add" in r["layers"] for r in s["rows"])
    assert "grown_at_2K" in s["rows"][0]


def test_no_layer_nets_is_one_line(tmp_path, capsys):
    argv = ["experiment", "conv", "--config", str(ROOT / "configs" / "iris.yaml"), "--out",
            str(tmp_path / "x"), *SMALL]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gnca: error: gnca experiment conv needs layer nets")
    assert not (tmp_path / "x").exists()


def test_a_bad_unseen_spec_is_one_line(tmp_path, capsys):
    argv = conv(tmp_path / "x", '["conv:2k3p1-4k3s2p1"]', "--arch", "conv:4k3p1-r8k3p1")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "r8k3p1 must keep the shape" in err[0]


@pytest.mark.parametrize(
    "spec, cell",
    [
        ("conv:4k3p1-8k3s2p1", (2, 3, 4)),
        ("conv:8k5s2p2-16k5s2p2-16k3p1", (3, 5, 8)),
        ("conv:4k3p1-fc16", None),
        ("conv:4k3p1-r4k3p1", None),
        ("64-16-10", None),
    ],
)
def test_heatmap_cells_of_plain_conv_specs(spec, cell):
    assert conv_cell(spec) == cell


def test_the_layer_net_configs_build_their_nets():
    import importlib.util

    from gnca.build import make_architectures, make_dataset, make_layer_nets, make_task
    from gnca.config import load_config

    res = load_config(ROOT / "configs" / "residual_digits.yaml")
    task = make_task(res.task, make_dataset(res.data))
    assert len(make_architectures(res.task, task)) == 2
    unseen = make_layer_nets(res.train.eval_layers, res.task, task, "train.eval_layers")
    assert [n.describe().count("add") for n in unseen] == [3, 1, 2]
    one_d = load_config(ROOT / "configs" / "conv_mnist1d.yaml")
    assert (one_d.data.name, one_d.data.split) == ("mnist1d", "standard")
    spec = importlib.util.spec_from_file_location("conv_nets", ROOT / "examples" / "conv_nets.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    trained, unseen_1d = example.SPECS["mnist1d"]
    assert one_d.task.layers == ["conv:" + s for s in trained]
    assert one_d.train.eval_layers == ["conv:" + s for s in unseen_1d]
    mlp = load_config(ROOT / "configs" / "mnist1d_mlp.yaml")
    assert mlp.data == one_d.data and mlp.rule == one_d.rule and not mlp.task.layers
    assert all(a[0] == 40 and a[-1] == 10 for a in mlp.task.architectures)
