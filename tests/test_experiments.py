"""Shortened versions of the three experiments: tiny rules, few nets, short horizons.

They check the structure of what the experiments write (tables, CSV columns, PNGs, the heatmap
grid and its red outlines), not the paper's numbers; the full runs are in docs/results.md.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN  # noqa: E402

from gnca.cli import main
from gnca.config import load_config
from gnca.experiments import RuleSource, run_generalization, run_robustness, run_stability
from gnca.experiments.generalization import grid_sizes
from gnca.experiments.generalization import plot as plot_heatmap
from gnca.experiments.stability import band_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN


def tiny(config: str = "iris_stability.yaml", *extra: str):
    return load_config(ROOT / "configs" / config, [*TINY, *extra])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- metrics
def test_band_metrics_by_hand():
    loss = torch.tensor(
        [
            [3.0, 3.0, 3.0],
            [2.0, 1.0, 1.0],
            [1.0, 1.05, 2.0],
            [1.05, 1.2, 1.0],  # net 2: equal minimum again, the first one counts
            [1.2, 1.0, 1.0],
        ]
    )
    t_min, l_min, within, capped = band_metrics(loss, 0.1)
    assert t_min.tolist() == [2, 1, 1]
    assert l_min.tolist() == [1.0, 1.0, 1.0]
    # net 0: step 3 inside (1.05 <= 1.1), step 4 outside -> 1
    # net 1: step 2 inside, step 3 outside -> 1
    # net 2: step 2 outside (2.0) -> 0
    assert within.tolist() == [1, 1, 0]
    assert capped.tolist() == [False, False, False]


def test_band_metrics_capped_and_nan():
    loss = torch.tensor([[2.0, 2.0], [1.0, float("nan")], [1.05, 1.0], [1.0, 1.0]])
    t_min, _, within, capped = band_metrics(loss, 0.1)
    assert t_min.tolist() == [1, 2]
    assert within.tolist() == [2, 1]  # net 0 never leaves the band before the end
    assert capped.tolist() == [True, True]


def test_grid_sizes():
    assert grid_sizes(196, 10, 2, 32) == [196, 32, 32, 10]


# ---------------------------------------------------------------------- stability
def test_stability_outputs(tmp_path):
    out = tmp_path / "stab"
    summary = run_stability(
        RuleSource("pooled", tiny()),
        RuleSource("unpooled", tiny("iris_nopool.yaml")),
        out,
        num=5,
        horizon_mult=4,
        progress=False,
    )
    for name in ("stability.md", "stability.csv", "stability_nets.csv", "stability_curve.csv"):
        assert (out / name).is_file(), name
    assert is_png(out / "stability.png")
    rows = read_csv(out / "stability.csv")
    assert [r["rule"] for r in rows] == ["pooled", "unpooled"]
    assert [r["pool_size"] for r in rows] == ["256", "0"]
    for col in (
        "epochs_to_train_mean",
        "epochs_to_train_std",
        "epochs_within_mean",
        "epochs_within_std",
        "capped",
        "nets_within_10x_horizon",
        "test_acc_at_k",
    ):
        assert col in rows[0], col
    nets = read_csv(out / "stability_nets.csv")
    assert len(nets) == 10
    for r in nets:
        t, within = int(r["epochs_to_train"]), int(r["epochs_within"])
        assert 0 <= t <= 12 and 0 <= within <= 12 - t
        assert (r["capped"] == "True") == (within == 12 - t)
    curve = read_csv(out / "stability_curve.csv")
    assert len(curve) == 2 * 13  # steps 0..12 for each rule
    for r in rows:  # the peak is the best mean test accuracy of the curve; drops measured from it
        accs = [float(c["test_acc_mean"]) for c in curve if c["rule"] == r["rule"]]
        assert float(r["test_acc_peak"]) == pytest.approx(max(accs), abs=1e-5)
        assert float(r["test_acc_drop_at_end"]) == pytest.approx(max(accs) - accs[-1], abs=1e-5)
    # the pooled rule's samples grew 3 meta-steps of 3-5 rule steps at most; no pool, no ages
    assert 3 <= float(rows[0]["pool_age_max"]) <= 15 and rows[1]["pool_age_max"] == ""
    md = (out / "stability.md").read_text().strip().splitlines()
    assert len(md) == 4 and "epochs within 10%" in md[0] and md[2].startswith("| pooled")
    assert summary["rules"][0]["meta_steps"] == 3
    assert json.loads((out / "summary.json").read_text())["experiment"] == "stability"


def test_stability_reuses_trained_rules_and_rejects_unpooled(tmp_path):
    out = tmp_path / "stab"
    run_stability(RuleSource("pooled", tiny()), None, out, num=2, horizon_mult=1, progress=False)
    again = run_stability(
        RuleSource("pooled", tiny()), None, out, num=2, horizon_mult=1, progress=False
    )
    assert not again["rules"][0]["trained_now"]
    ckpt = out / "rules" / "pooled" / "last.pt"
    loaded = run_stability(
        RuleSource("pooled", checkpoint=ckpt),
        None,
        tmp_path / "b",
        num=2,
        horizon_mult=1,
        progress=False,
    )
    assert loaded["rules"][0]["checkpoint"] == str(ckpt)
    with pytest.raises(ValueError, match="without a sample pool"):
        run_stability(
            RuleSource("pooled", tiny("iris_nopool.yaml")),
            None,
            tmp_path / "c",
            num=2,
            horizon_mult=1,
            progress=False,
        )


# ---------------------------------------------------------------------- robustness
def test_robustness_outputs(tmp_path):
    out = tmp_path / "rob"
    summary = run_robustness(
        RuleSource("damage", tiny("iris_damage.yaml", "pool.damage=1")),
        RuleSource("no-damage", tiny()),
        out,
        num=4,
        zero_outs=3,
        every=2,
        tail=1,
        progress=False,
    )
    assert is_png(out / "robustness.png")
    rows = read_csv(out / "robustness.csv")
    assert len(rows) == 2 * 3
    assert {"zero_out", "acc_damaged", "acc_recovered", "recovery", "nets_recovered"} <= set(
        rows[0]
    )
    assert [int(r["zero_out"]) for r in rows[:3]] == [1, 2, 3]
    for r in rows:
        # the window of zero-out j ends right before zero-out j + 1
        assert int(r["recovered_at_step"]) == int(r["applied_before_step"]) - 1 + 2
    summ = read_csv(out / "robustness_summary.csv")
    assert [r["rule"] for r in summ] == ["damage", "no-damage"]
    best = int(summ[0]["best_step"])
    assert 1 <= best <= 2 * 3
    curve = [r for r in read_csv(out / "robustness_curve.csv") if r["rule"] == "damage"]
    assert len(curve) == best + 3 * 2 + 1 + 1
    marked = [int(r["step"]) for r in curve if r["zero_out_before"]]
    assert marked == [best + 1, best + 3, best + 5]
    md = (out / "robustness.md").read_text()
    assert "min recovery" in md and md.count("\n| 3 ") == 1
    assert summary["table"][0]["zero_outs"] == 3


def test_robustness_needs_a_damage_rule(tmp_path):
    with pytest.raises(ValueError, match="pool.damage > 0"):
        run_robustness(RuleSource("damage", tiny()), None, tmp_path, num=2, progress=False)


# ---------------------------------------------------------------------- generalization
def test_generalization_outputs(tmp_path):
    out = tmp_path / "gen"
    cfg = tiny("iris.yaml", "task.architectures=[[4,8,3],[4,4,4,3],[4,5,3]]")
    summary = run_generalization(
        RuleSource("rule", cfg),
        out,
        depths=[1, 2],
        widths=[4, 8, 16],
        num=3,
        chunk=2,
        progress=False,
    )
    assert is_png(out / "generalization.png")
    grid = np.array(summary["grid"])
    assert grid.shape == (2, 3) and np.isfinite(grid).all()
    assert ((grid >= 0) & (grid <= 1)).all()
    # training architectures 4-8-3 (row 0, col 1) and 4-4-4-3 (row 1, col 0) are outlined;
    # 4-5-3 is outside the grid and listed separately
    assert sorted(map(tuple, summary["trained_cells"])) == [(0, 1), (1, 0)]
    rows = read_csv(out / "generalization.csv")
    assert len(rows) == 2 * 3 + 1
    assert {"architecture", "hidden_layers", "width", "trained", "mean", "std"} <= set(rows[0])
    trained = sorted(r["architecture"] for r in rows if r["trained"] == "True")
    assert trained == ["4-4-4-3", "4-5-3", "4-8-3"]
    outside = [r for r in rows if r["in_grid"] == "False"]
    assert [r["architecture"] for r in outside] == ["4-5-3"]
    md = (out / "generalization.md").read_text()
    assert md.count("(trained)") == 2 and "4-5-3" in md and "unseen" in md
    assert summary["steps"] == 3 and summary["seen_mean"] is not None


def test_heatmap_outlines_exactly_the_training_cells(tmp_path):
    cells = plot_heatmap(
        np.array([[0.1, 0.9], [0.5, np.nan]]), [1, 2], [8, 16], [(0, 1)], tmp_path / "h.png"
    )
    assert cells == [(0, 1)]
    assert is_png(tmp_path / "h.png")
    with pytest.raises(ValueError, match="shape"):
        plot_heatmap(np.zeros((3, 2)), [1, 2], [8, 16], [], tmp_path / "x.png")


# ---------------------------------------------------------------------- command line
def test_cli_experiments(tmp_path, capsys):
    sets = ["--set", *TINY]
    assert (
        main(
            [
                "experiment",
                "stability",
                "--config",
                str(ROOT / "configs/iris_stability.yaml"),
                *sets,
                "--num",
                "3",
                "--horizon-mult",
                "2",
                "--out",
                str(tmp_path / "s"),
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| pooled" in out and "| unpooled" in out and "stability.png" in out
    assert (tmp_path / "s" / "rules" / "unpooled" / "last.pt").is_file()
    assert (
        main(
            [
                "experiment",
                "robustness",
                "--config",
                str(ROOT / "configs/iris_damage.yaml"),
                *sets,
                "pool.damage=1",
                "--num",
                "3",
                "--zero-outs",
                "2",
                "--every",
                "2",
                "--tail",
                "0",
                "--damage-only",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "min recovery" in capsys.readouterr().out
    assert (
        main(
            [
                "experiment",
                "generalization",
                "--checkpoint",
                str(tmp_path / "s" / "rules" / "pooled" / "last.pt"),
                "--depths",
                "1",
                "--widths",
                "4,16",
                "--num",
                "2",
                "--out",
                str(tmp_path / "g"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "**" in out and (tmp_path / "g" / "generalization.png").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["experiment", "stability", "--out", str(tmp_path)]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert (
        main(
            [
                "experiment",
                "generalization",
                "--config",
                str(ROOT / "configs/iris.yaml"),
                "--widths",
                "a,b",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--widths" in err[0]
    assert (
        main(
            ["experiment", "robustness", "--checkpoint", str(tmp_path / "none.pt"), "--damage-only"]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err


def test_every_experiment_module_owns_its_parser_run_headline_and_figure():
    """``gnca experiment NAME`` is one module: the registry names it, the module has the rest
    (its flags with their types, its run, its headline over seeds, its figure)."""
    import ast
    import inspect

    from gnca.experiments.cli import EXPERIMENTS

    for name, module in EXPERIMENTS.items():
        for attr in ("HELP", "DESCRIPTION", "CHECKPOINT_HELP"):
            assert isinstance(getattr(module, attr), str) and getattr(module, attr), (name, attr)
        for attr in ("add_arguments", "main", "headline", f"run_{name}"):
            assert callable(getattr(module, attr)), (name, attr)
        assert callable(module.plot), name
    package = Path(inspect.getfile(EXPERIMENTS["stability"])).parent
    for path in sorted(package.glob("*.py")):
        names = {
            n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)
        }
        assert "_actions" not in names, path.name  # flags are typed where they are added
