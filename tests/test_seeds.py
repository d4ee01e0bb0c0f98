"""``gnca experiment ... --seeds``: one rule per meta-training seed, the headline metrics over
seeds (mean, std, worst seed) and the claims held by k of n seeds."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest
from conftest import TINY_TRAIN  # noqa: E402

from gnca.cli import main
from gnca.cliargs import seed_list, target
from gnca.experiments import robustness
from gnca.experiments.seeds import Headline, aggregate, verdict

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN
QUIET = ["--no-progress", "--threads", "1"]
STATS = ["mean", "std", "worst", "worst_seed"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gnca: error: "), err
    return lines[0]


def stability(out: Path, *extra: str) -> list[str]:
    return [
        "experiment",
        "stability",
        "--config",
        str(ROOT / "configs/iris_stability.yaml"),
        "--nopool-config",
        str(ROOT / "configs/iris_nopool.yaml"),
        "--set",
        *TINY,
        "--num",
        "3",
        "--horizon-mult",
        "2",
        "--out",
        str(out),
        *QUIET,
        *extra,
    ]


def generalization(out: Path, *extra: str) -> list[str]:
    return [
        "experiment",
        "generalization",
        "--config",
        str(ROOT / "configs/iris.yaml"),
        "--set",
        *TINY,
        "--depths",
        "1",
        "--widths",
        "4,16",
        "--num",
        "2",
        "--out",
        str(out),
        *QUIET,
        *extra,
    ]


# ---------------------------------------------------------------------- the flag
def test_seed_list_values():
    assert seed_list("3") == (0, 1, 2)
    assert seed_list(" 0, 3 ,7") == (0, 3, 7)
    assert seed_list("5,") == (5,)
    for bad in ("0", "-2", "a", "1,a", ",", "1,1", "-1,2", "100000"):
        with pytest.raises(argparse.ArgumentTypeError, match="^must"):
            seed_list(bad)
    assert target("pooled.min_recovery >= 0.95") == ("pooled.min_recovery", ">=", 0.95)
    assert target("a<=-1") == ("a", "<=", -1.0)
    for bad in ("a>1", "a>=x", "a>=nan", ">=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="^must"):
            target(bad)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--seeds must be a count from 1 to 10000 or comma-separated seeds, got '0'"),
        ("a", "--seeds must be a count from 1 to 10000 or comma-separated seeds, got 'a'"),
        ("2,2", "--seeds must not repeat a seed, got '2,2'"),
    ],
)
def test_bad_seeds_are_one_line(tmp_path, capsys, value, message):
    assert main(stability(tmp_path / "x", "--seeds", value)) == 2
    assert error_line(capsys) == f"gnca: error: {message}"
    assert not (tmp_path / "x").exists()


def test_checkpoints_and_train_seed_are_refused_with_seeds(tmp_path, capsys):
    ckpt = ["--checkpoint", str(tmp_path / "last.pt"), "--seeds", "2", "--out", str(tmp_path)]
    for argv in (
        ["experiment", "generalization", *ckpt],
        ["experiment", "stability", *ckpt, "--pooled-only"],
        [*stability(tmp_path / "s", "--seeds", "2"), "--nopool-checkpoint", "x.pt"],
    ):
        assert main(argv) == 2
        line = error_line(capsys)
        assert "--seeds meta-trains one rule per seed" in line and "checkpoint" in line
    assert main(generalization(tmp_path / "g", "--seeds", "2", "--set", "train.seed=4")) == 2
    assert "drop train.seed from --set" in error_line(capsys)
    assert main(["experiment", "learning", "--seeds", "2", "--out", str(tmp_path)]) == 2
    assert "--seeds needs --config" in error_line(capsys)
    assert main(generalization(tmp_path / "g", "--target", "seen_mean>=0.9")) == 2
    assert error_line(capsys) == "gnca: error: --target is a claim over seeds: it needs --seeds"
    assert not (tmp_path / "s").exists() and not (tmp_path / "g").exists()


# ---------------------------------------------------------------------- aggregation
def test_mean_std_worst_and_verdicts():
    per_seed = {
        0: Headline({"acc": (0.9, "higher"), "loss": (0.2, "lower"), "adam": (0.5, None)}, {}),
        3: Headline({"acc": (0.7, "higher"), "loss": (0.1, "lower"), "adam": (0.6, None)}, {}),
        7: Headline({"acc": (0.8, "higher"), "loss": (0.4, "lower"), "adam": (0.7, None)}, {}),
    }
    for s, ok in ((0, True), (3, False), (7, True)):
        per_seed[s].claims["acc >= 0.75"] = ok
    agg = aggregate(per_seed)
    acc, loss, adam = (agg["metrics"][k] for k in ("acc", "loss", "adam"))
    assert acc["mean"] == pytest.approx(0.8) and acc["std"] == pytest.approx(0.1)
    assert (acc["worst"], acc["worst_seed"]) == (0.7, 3)  # lowest where higher is better
    assert (loss["worst"], loss["worst_seed"]) == (0.4, 7)  # highest where lower is better
    assert adam["worst_seed"] is None and adam["mean"] == pytest.approx(0.6)
    (claim,) = agg["claims"]
    assert claim["holds"] == {0: True, 3: False, 7: True} and not claim["reproduced"]
    assert claim["verdict"] == "holds for 2 of 3 seeds"
    assert verdict(3, 3) == "reproduced" and verdict(1, 1) == "holds (1 seed)"
    one = aggregate({5: Headline({"acc": (float("nan"), "higher")}, {})})["metrics"]["acc"]
    assert one["worst_seed"] == 5 and math.isnan(one["worst"]) and one["std"] == 0.0


# ---------------------------------------------------------------------- whole runs
def test_stability_over_two_seeds(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(stability(out, "--seeds", "2")) == 0
    printed = capsys.readouterr().out
    assert "## seed 0 (1 of 2)" in printed and "## seed 1 (2 of 2)" in printed
    assert "stability over 2 meta-training seeds" in printed and "seeds.png" in printed
    # the per-seed runs are the single-seed experiment, in seed-S
    assert sorted(p.name for p in out.iterdir()) == [
        "seed-0",
        "seed-1",
        "seeds.csv",
        "seeds.json",
        "seeds.md",
        "seeds.png",
    ]
    for s in (0, 1):
        run = out / f"seed-{s}"
        assert (run / "stability.md").is_file() and is_png(run / "stability.png")
        summary = json.loads((run / "summary.json").read_text())
        # train.seed=S reaches the main and the control rule, and only train.seed changes
        assert [r["label"] for r in summary["rules"]] == ["pooled", "unpooled"]
        assert [r["config"]["train"]["seed"] for r in summary["rules"]] == [s, s]
        assert summary["seed"] == 0  # the grown nets keep --seed
        assert summary["environment"]["cpu_model"]
    rows = read_csv(out / "seeds.csv")
    assert [r["seed"] for r in rows] == ["0", "1", *STATS]
    assert "pooled.epochs_within_mean" in rows[0] and "unpooled.test_acc_at_end" in rows[0]
    for key in ("pooled.test_acc_at_k", "unpooled.test_acc_at_end"):
        values = [float(rows[i][key]) for i in (0, 1)]
        assert float(rows[2][key]) == pytest.approx(sum(values) / 2, abs=1e-5)
        assert float(rows[4][key]) == pytest.approx(min(values), abs=1e-5)
    assert is_png(out / "seeds.png")
    result = json.loads((out / "seeds.json").read_text())
    assert result["seeds"] == [0, 1] and result["environment"]["cpu_model"]
    # >= 10 K in the band; accuracy within 0.02 of its peak; pooled more stable than unpooled
    assert len(result["claims"]) == 3
    key = "pooled.test_acc_drop_at_end"  # lower is better: the worst seed is the largest drop
    drops = [float(rows[i][key]) for i in (0, 1)]
    assert float(rows[4][key]) == pytest.approx(max(drops), abs=1e-5) and min(drops) >= 0
    for claim in result["claims"]:
        k = claim["holds_for"]
        assert claim["verdict"] == ("reproduced" if k == 2 else f"holds for {k} of 2 seeds")
    md = (out / "seeds.md").read_text()
    assert result["environment"]["cpu_model"] in md and "worst (seed)" in md
    # a rerun reuses every seed's rules
    assert main(stability(out, "--seeds", "2")) == 0
    assert "meta-training" not in capsys.readouterr().err


def test_generalization_over_a_seed_list_with_targets(tmp_path, capsys):
    out = tmp_path / "g"
    targets = ["--target", "unseen_mean>=0", "--target", "seen_mean<=-1"]
    assert main(generalization(out, "--seeds", "3,5", *targets)) == 0
    capsys.readouterr()
    assert {p.name for p in out.iterdir()} >= {"seed-3", "seed-5", "seeds.png"}
    rows = read_csv(out / "seeds.csv")
    assert [r["seed"] for r in rows] == ["3", "5", *STATS]
    assert {"seen_mean", "unseen_mean", "unseen_min", "worst_cell"} <= set(rows[0])
    for s in (3, 5):
        summary = json.loads((out / f"seed-{s}" / "summary.json").read_text())
        assert summary["rule"]["config"]["train"]["seed"] == s
        worst = min(min(r) for r in summary["grid"])
        assert float(rows[(3, 5).index(s)]["worst_cell"]) == pytest.approx(worst, abs=1e-6)
    claims = {c["claim"]: c for c in json.loads((out / "seeds.json").read_text())["claims"]}
    assert claims["unseen_mean >= 0"]["verdict"] == "reproduced"
    assert claims["seen_mean <= -1"]["verdict"] == "holds for 0 of 2 seeds"
    assert is_png(out / "seeds.png")
    # an unknown metric is one line, after the first seed's run (which names the metrics)
    assert main(generalization(out, "--seeds", "3,5", "--target", "nope>=1")) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gnca: error:")]
    assert "no headline metric 'nope'" in line and "unseen_mean" in line


def test_without_seeds_the_folder_is_as_before(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(generalization(out)) == 0
    assert "results: " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "generalization.csv",
        "generalization.md",
        "generalization.png",
        "rules",
        "summary.json",
    ]
    assert sorted(p.name for p in (out / "rules").iterdir()) == ["rule"]


def test_learning_and_transfer_over_two_seeds(tmp_path, capsys):
    senses = ["--set", *TINY, "rule.sense_batch=16"]
    config = ["--config", str(ROOT / "configs/digits_senses.yaml"), *senses, "--num", "2"]
    argv = ["experiment", "learning", *config, "--horizon-mult", "2", "--seeds", "2"]
    assert main([*argv, "--out", str(tmp_path / "l"), *QUIET]) == 0
    rows = read_csv(tmp_path / "l" / "seeds.csv")
    assert [r["seed"] for r in rows] == ["0", "1", *STATS]
    assert "gap_closed" in rows[0] and "examples_seen" not in rows[0]
    assert rows[5]["adam_all_layers"] == ""  # a baseline has no worst seed
    assert is_png(tmp_path / "l" / "seeds.png")
    argv = ["experiment", "transfer", *config, "--dataset", "wine", "--arch", "h:8"]
    assert main([*argv, "--horizon-mult", "1", "--seeds", "2", "--out", str(tmp_path / "t")]) == 0
    result = json.loads((tmp_path / "t" / "seeds.json").read_text())
    names = list(result["metrics"])
    assert any(n.startswith("wine.") and n.endswith(".grown_at_1K") for n in names)
    assert any(n.endswith(".grown_minus_adam_at_1K") for n in names)
    assert "grown_minus_adam_1K" in names
    assert is_png(tmp_path / "t" / "seeds.png")
    capsys.readouterr()


def test_headline_of_a_robustness_summary():
    rows = [
        {"rule": "damage", "min_recovery": 0.97, "mean_recovery": 0.99, "zero_outs_recovered": 2,
         "zero_outs": 2, "pre_damage_test_acc": 1.0, "final_test_acc": 0.98},
        {"rule": "no-damage", "min_recovery": 0.4, "mean_recovery": 0.5, "zero_outs_recovered": 0,
         "zero_outs": 2, "pre_damage_test_acc": 0.9, "final_test_acc": 0.3},
    ]  # fmt: skip
    h = robustness.headline({"experiment": "robustness", "table": rows, "threshold": 0.95})
    assert h.metrics["damage.min_recovery"] == (0.97, "higher")
    assert list(h.claims.values()) == [True, True]
    assert "min_recovery >= 0.95" in next(iter(h.claims))


def test_robustness_over_two_seeds_derived_control(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["experiment", "robustness", "--config", str(ROOT / "configs/iris_damage.yaml"),
            "--set", *TINY, "pool.damage=1", "--num", "3", "--zero-outs", "2", "--every", "2",
            "--tail", "0", "--seeds", "2", "--out", str(out), *QUIET]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    for s in (0, 1):
        summary = json.loads((out / f"seed-{s}" / "summary.json").read_text())
        # the control rule derived from --config (pool.damage=0) gets train.seed=S too
        configs = {r["label"]: r["config"] for r in summary["rules"]}
        assert configs["no-damage"]["pool"]["damage"] == 0
        assert [c["train"]["seed"] for c in configs.values()] == [s, s]
    rows = read_csv(out / "seeds.csv")
    assert [r["seed"] for r in rows] == ["0", "1", *STATS]
    assert {"damage.min_recovery", "no-damage.mean_recovery"} <= set(rows[0])
    claims = json.loads((out / "seeds.json").read_text())["claims"]
    assert len(claims) == 2 and "min_recovery >= 0.95" in claims[0]["claim"]
    assert is_png(out / "seeds.png")
