"""The command line as a user runs it: the happy path and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import IRIS, TINY, error_line

from gnca.cli import CLIError, main, mlp_sizes, parse_arch

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    code = main(["train", "--config", IRIS, "--out", str(run_dir), "--no-progress", "--set", *TINY])
    assert code == 0
    return run_dir


def test_train_writes_a_complete_run(trained):
    for name in ("config.yaml", "metrics.csv", "last.pt", "summary.json"):
        assert (trained / name).is_file(), name
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["meta_steps"] == 4
    acc = summary["test_accuracy"]["mlp 4-8-3 (+bias)"]
    assert set(acc) == {"3", "30"}


def test_grow_json(capsys, trained):
    code, out, _ = run(
        capsys,
        "grow",
        "--checkpoint",
        str(trained / "last.pt"),
        "--num",
        "5",
        "--arch",
        "4-6-3",
        "--arch",
        "h:12",
        "--steps",
        "4",
        "--curve",
        "2",
        "--json",
    )
    assert code == 0
    d = json.loads(out)
    assert d["num"] == 5 and d["steps"] == 4
    assert set(d["architectures"]) == {"mlp 4-6-3 (+bias)", "mlp 4-12-3 (+bias)"}
    for e in d["architectures"].values():
        assert 0 <= e["min"] <= e["mean"] <= e["max"] <= 1
        assert list(e["curve"]) == ["0", "2", "4"]


def test_grow_custom_dag_from_json(capsys, trained, tmp_path):
    spec = tmp_path / "dag.json"
    spec.write_text(
        json.dumps(
            {
                "edges": [[i, 4] for i in range(4)] + [[4, 5], [4, 6], [4, 7], [0, 5], [3, 7]],
                "inputs": [0, 1, 2, 3],
                "outputs": [5, 6, 7],
            }
        )
    )
    code, out, _ = run(
        capsys,
        "grow",
        "--checkpoint",
        str(trained / "last.pt"),
        "--num",
        "3",
        "--arch",
        str(spec),
        "--json",
    )
    assert code == 0
    assert "dag 8 neurons" in next(iter(json.loads(out)["architectures"]))


def _dag(path: Path, n_in: int, n_out: int) -> Path:
    """A JSON DAG with ``n_in`` inputs, one hidden neuron and ``n_out`` outputs."""
    hidden = n_in
    edges = [[i, hidden] for i in range(n_in)] + [[hidden, hidden + 1 + o] for o in range(n_out)]
    path.write_text(
        json.dumps(
            {
                "edges": edges,
                "inputs": list(range(n_in)),
                "outputs": [hidden + 1 + o for o in range(n_out)],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(1, 3), (4, 2), (5, 4)], ids=["1-input", "2-outputs", "both"]
)
@pytest.mark.parametrize("command", ["grow", "eval", "export"])
def test_json_arch_that_does_not_fit_the_data_is_refused_before_growing(
    capsys, trained, tmp_path, monkeypatch, command, n_in, n_out
):
    import gnca.grow

    def no_growing(*args, **kwargs):
        raise AssertionError("grew nets of an architecture that does not fit the data")

    monkeypatch.setattr(gnca.grow, "grow", no_growing)
    spec = _dag(tmp_path / "arch.json", n_in, n_out)
    extra = ["--out", str(tmp_path / "nets.pt")] if command == "export" else []
    code, out, err = run(
        capsys, command, "--checkpoint", str(trained / "last.pt"), "--arch", str(spec), *extra
    )
    assert code == 2 and out == ""
    assert error_line(err) == (
        f"gnca: error: --arch {spec} has {n_in} input(s) and {n_out} output(s), but iris has 4 "
        f"features and 3 classes: give the DAG 4 inputs and 3 outputs"
    )
    assert not (tmp_path / "nets.pt").exists()


def test_every_arch_form_is_checked_against_the_data(tmp_path):
    """Sizes, hidden widths and JSON DAGs: each fits the data or is a CLIError."""
    assert parse_arch(str(_dag(tmp_path / "ok.json", 4, 3)), 4, 3, True, None).num_inputs == 4
    for spec in ("5-8-3", "4-8-2", str(_dag(tmp_path / "bad.json", 4, 2))):
        with pytest.raises(CLIError):
            parse_arch(spec, 4, 3, True, None, dataset="iris")
    assert parse_arch("h:8", 13, 3, True, None).num_inputs == 13  # h: takes the data's ends


def test_eval_json_and_table(capsys, trained):
    code, out, _ = run(
        capsys,
        "eval",
        "--checkpoint",
        str(trained / "last.pt"),
        "--num",
        "3",
        "--horizons",
        "1,3",
        "--json",
    )
    assert code == 0
    acc = json.loads(out)["accuracy"]["mlp 4-8-3 (+bias)"]
    assert set(acc) == {"1", "3"}
    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained / "last.pt"), "--num", "3")
    assert code == 0 and "| mlp 4-8-3 (+bias)" in out


def _floats(obj) -> list[float]:
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    return [x for v in obj for x in _floats(v)] if isinstance(obj, list) else []


def test_eval_grows_what_the_training_table_grew(capsys, trained):
    """Same rows ([unseen] ones included), nets, seeds and horizons: the same numbers."""
    from gnca.evaluation import round_floats

    summary = json.loads((trained / "summary.json").read_text())
    code, out, err = run(capsys, "eval", "--checkpoint", str(trained / "last.pt"), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["num"] == 4  # train.eval_nets
    assert "mlp 4-32-3 (+bias) [unseen]" in d["accuracy"]
    assert d["accuracy"] == round_floats(summary["test_accuracy"])
    assert list(d["accuracy"]) == list(summary["test_accuracy"])
    # another seed grows other nets; --num and --arch choose what is grown
    code, out, _ = run(
        capsys, "eval", "--checkpoint", str(trained / "last.pt"), "--json", "--seed", "7",
        "--num", "3", "--arch", "h:32",
    )  # fmt: skip
    d = json.loads(out)
    assert code == 0 and d["num"] == 3 and d["seed"] == 7
    assert list(d["accuracy"]) == ["mlp 4-32-3 (+bias)"]


def test_eval_of_a_data_reading_rule_on_two_datasets_repeats_its_table(capsys, tmp_path):
    """data.also rows (``on <dataset>``) and the senses' batches are drawn as in training."""
    from gnca.evaluation import round_floats

    over = ["train.steps=2", "train.k_min=2", "train.k_max=2", "train.batch_size=4",
            "pool.fresh=1", "rule.widths=[8]", "train.device=cpu", "train.eval_nets=3",
            "train.eval_architectures=[[64,16,10]]"]  # fmt: skip
    cfg = str(REPO / "configs" / "tabular_senses.yaml")
    assert main(["train", "--config", cfg, "--out", str(tmp_path), "--no-progress",
                 "--set", *over]) == 0  # fmt: skip
    capsys.readouterr()
    summary = json.loads((tmp_path / "summary.json").read_text())["test_accuracy"]
    code, out, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "last.pt"), "--json")
    assert code == 0, err
    assert list(summary) == [
        "mlp 64-32-10 (+bias) on digits",
        "mlp 4-32-3 (+bias) on iris",
        "mlp 64-16-10 (+bias) [unseen]",
    ]
    assert json.loads(out)["accuracy"] == round_floats(summary)


@pytest.mark.parametrize("command", ["grow", "eval"])
def test_json_accuracies_carry_no_float32_noise(capsys, trained, command):
    extra = ["--curve", "1", "--steps", "3"] if command == "grow" else ["--horizons", "0,1,3"]
    code, out, _ = run(
        capsys, command, "--checkpoint", str(trained / "last.pt"), "--num", "7", "--json", *extra
    )
    assert code == 0
    values = _floats(json.loads(out))
    assert len(values) >= 8
    noisy = [v for v in values if float(f"{v:.6g}") != v]
    assert not noisy  # e.g. 0.6666667461395264 is written 0.666667


def test_export_loads_without_gnca(capsys, trained, tmp_path):
    out_file = tmp_path / "exp" / "nets.pt"
    code, out, _ = run(
        capsys,
        "export",
        "--checkpoint",
        str(trained / "last.pt"),
        "--arch",
        "4-8-3",
        "--num",
        "2",
        "--out",
        str(out_file),
    )
    assert code == 0
    assert (out_file.parent / "grown_net.py").is_file()
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); "
        "assert 'gnca' not in sys.modules; from grown_net import GrownNets; "
        "n = GrownNets.load(sys.argv[2]); print(tuple(n(torch.zeros(3, 4)).shape)); "
        "assert not any(m.startswith('gnca') for m in sys.modules)"
    )
    res = subprocess.run(
        [sys.executable, "-I", "-c", script, str(out_file.parent), str(out_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout.strip() == "(2, 3, 3)"


def test_resume_continues_and_existing_run_is_protected(capsys, trained, tmp_path):
    before = (trained / "last.pt").read_bytes()
    code, _, err = run(
        capsys, "train", "--config", IRIS, "--out", str(trained), "--no-progress", "--set", *TINY
    )
    assert code == 2 and "already holds a run" in error_line(err)
    assert (trained / "last.pt").read_bytes() == before
    # resuming with more steps continues where it stopped
    code, _, err = run(
        capsys,
        "train",
        "--config",
        IRIS,
        "--out",
        str(trained),
        "--resume",
        "--no-progress",
        "--set",
        *TINY[:-8],
        "train.steps=6",
        *TINY[-7:],
    )
    assert code == 0, err
    assert torch.load(trained / "last.pt", weights_only=True)["step"] == 6


def test_resume_with_different_config_is_refused(capsys, trained):
    before = (trained / "last.pt").read_bytes()
    code, _, err = run(
        capsys,
        "train",
        "--config",
        IRIS,
        "--out",
        str(trained),
        "--resume",
        "--no-progress",
        "--set",
        *TINY,
        "rule.widths=[16]",
    )
    assert code == 2
    assert "rule.widths" in error_line(err)
    assert (trained / "last.pt").read_bytes() == before


@pytest.mark.parametrize(
    ("setup", "args", "expected"),
    [
        (None, ["train", "--config", "nope.yaml"], "not found"),
        ("bad_yaml", ["train", "--config", "{cfg}"], "cfg.yaml"),
        ("unknown_key", ["train", "--config", "{cfg}"], "train.stpes"),
        (None, ["train", "--config", IRIS, "--set", "rule.widths=abc"], "rule.widths"),
        (None, ["train", "--config", IRIS, "--set", "task.architectures=[[5,8,3]]"], "4 inputs"),
        (
            None,
            ["train", "--config", IRIS, "--set", "task.architectures=[[4,0,3]]"],
            "task.architectures",
        ),
        (
            "mnist",
            [
                "train",
                "--config",
                IRIS,
                "--set",
                "data.name=mnist",
                "task.architectures=[[784,10]]",
                "data.data_dir={tmp}/none",
            ],
            "none",
        ),
        (None, ["grow", "--checkpoint", "{tmp}/missing.pt"], "not found"),
        ("corrupt", ["grow", "--checkpoint", "{tmp}/bad.pt"], "bad.pt"),
        ("foreign", ["grow", "--checkpoint", "{tmp}/foreign.pt"], "not a gnca checkpoint"),
        (None, ["train", "--resume", "--out", "{tmp}/empty"], "no checkpoint"),
    ],
)
def test_bad_input_gives_one_line_error(capsys, tmp_path, monkeypatch, setup, args, expected):
    monkeypatch.delenv("GNCA_DATA", raising=False)
    cfg = tmp_path / "cfg.yaml"
    if setup == "bad_yaml":
        cfg.write_text("train:\n  steps: [1, 2\n")
    elif setup == "unknown_key":
        cfg.write_text("train:\n  stpes: 3\n")
    elif setup == "corrupt":
        (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 10)
    elif setup == "foreign":
        torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    argv = [a.format(cfg=cfg, tmp=tmp_path) for a in args]
    if argv[0] == "train":
        argv += ["--no-progress", "--out", str(tmp_path / "run")] if "--out" not in argv else []
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert expected in error_line(err)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="not found"):
        main(["train", "--config", str(tmp_path / "nope.yaml"), "--debug"])


def test_console_entry_point_exit_code(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "gnca", "grow", "--checkpoint", str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().startswith("gnca: error:") and "Traceback" not in res.stderr


# ---------------------------------------------------------------------- --arch specs
@pytest.mark.parametrize(
    ("spec", "sizes"),
    [
        ("4-16-3", [4, 16, 3]),
        ("4x16x3", [4, 16, 3]),
        ("4-3", [4, 3]),
        ("4-8-8-3", [4, 8, 8, 3]),
        ("h:16", [4, 16, 3]),
        ("h:5-16", [4, 5, 16, 3]),
        ("H:32-16", [4, 32, 16, 3]),
        ("h:4-3", [4, 4, 3, 3]),  # hidden widths may equal the ends: never guessed
    ],
)
def test_arch_specs_on_iris(spec, sizes):
    assert mlp_sizes(spec, 4, 3, "iris") == sizes
    assert parse_arch(spec, 4, 3, True, None).mlp_sizes == tuple(sizes)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (  # the typo for 4-16-3: it used to become 4-5-16-3-3
            "5-16-3",
            "architecture '5-16-3' ends with the 3 classes but starts with 5 inputs; iris has "
            "4 features (write 4-16-3, or h:5-16 for hidden widths only, i.e. 4-5-16-3)",
        ),
        (
            "4-16-2",
            "architecture '4-16-2' starts with the 4 features but ends with 2 outputs; iris has "
            "3 classes (write 4-16-3, or h:16-2 for hidden widths only, i.e. 4-16-2-3)",
        ),
        (
            "5-16-2",
            "architecture '5-16-2' starts with 5 inputs and ends with 2 outputs; iris has 4 "
            "features and 3 classes (write 4-16-3, or h:5-16-2 for hidden widths only, i.e. "
            "4-5-16-2-3)",
        ),
        (  # hidden widths in the old plain syntax
            "8-8",
            "architecture '8-8' starts with 8 inputs and ends with 8 outputs; iris has 4 "
            "features and 3 classes (write 4-8-8-3, or h:8-8 for hidden widths only)",
        ),
        (
            "32",
            "architecture '32' is a single layer size, but a full spec starts with the 4 "
            "features and ends with the 3 classes of iris (write 4-32-3, or h:32 for hidden "
            "widths only)",
        ),
        ("h:", "no hidden widths after h: (write 4-3 for a net without hidden layers)"),
        ("", "no layer sizes"),
        ("4--16-3", "use layer sizes like 4-32-3, hidden widths like h:32-16"),
        ("h:16-", "use layer sizes like 4-32-3"),
        ("four-16-3", "use layer sizes like 4-32-3"),
    ],
)
def test_ambiguous_or_bad_arch_specs_are_errors(spec, expected):
    with pytest.raises(CLIError) as info:
        mlp_sizes(spec, 4, 3, "iris")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_arch_error_without_a_dataset_name_and_zero_widths():
    with pytest.raises(CLIError, match="the data has 4 features"):
        mlp_sizes("5-16-3", 4, 3)
    with pytest.raises(CLIError, match="bad architecture 'h:0'"):
        parse_arch("h:0", 4, 3, True, None)


def test_grow_rejects_the_typo_arch(capsys, trained):
    code, out, err = run(
        capsys, "grow", "--checkpoint", str(trained / "last.pt"), "--num", "2", "--arch", "5-16-3"
    )
    assert code == 2 and out == ""
    assert "'5-16-3' ends with the 3 classes but starts with 5 inputs" in error_line(err)


def test_growing_an_unseen_architecture_with_a_fixed_seed_rule_warns(tmp_path, capsys):
    from gnca.cli import main

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "fixed"
    over = ["train.steps=2", "train.k_min=2", "train.k_max=2", "train.batch_size=4",
            "pool.fresh=1", "rule.widths=[8]", "train.device=cpu", "train.eval_nets=2"]  # fmt: skip
    assert main(["train", "--config", str(root / "configs" / "iris_stability.yaml"), "--set",
                 *over, "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    grow = ["grow", "--checkpoint", str(run / "last.pt"), "--num", "2", "--steps", "2"]
    assert main([*grow, "--arch", "4-16-3"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*grow, "--arch", "4-32-3"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]
    assert len(err) == 1 and "fixed seed net" in err[0] and "task.init: codes" in err[0]


def test_end_of_training_table_shows_unseen_architectures(tmp_path, capsys):
    from gnca.cli import main

    root = Path(__file__).resolve().parents[1]
    over = ["train.steps=2", "train.k_min=2", "train.k_max=2", "train.batch_size=4",
            "pool.fresh=1", "rule.widths=[8]", "train.device=cpu", "train.eval_nets=2"]  # fmt: skip
    assert main(["train", "--config", str(root / "configs" / "iris.yaml"), "--set", *over,
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "mlp 4-16-3 (+bias) " in out and "mlp 4-32-3 (+bias) [unseen]" in out
    assert "mlp 4-8-8-3 (+bias) [unseen]" in out
    bad = [*over, "train.eval_architectures=[[5,8,3]]"]
    assert main(["train", "--config", str(root / "configs" / "iris.yaml"), "--set", *bad,
                 "--out", str(tmp_path / "r2"), "--no-progress"]) == 2  # fmt: skip
    assert not (tmp_path / "r2" / "last.pt").exists()


def test_repeated_set_flags_add_up_in_every_command() -> None:
    """``--set a=1 --set b=2`` keeps both overrides (the second flag once replaced the first,
    silently), in every subcommand that takes ``--set``."""
    import argparse

    from gnca.cli import build_parser
    from gnca.cliargs import iter_parsers

    parser = build_parser()
    heads = [
        ["train", "--config", "c.yaml"],
        ["grow", "--checkpoint", "r.pt"],
        ["experiment", "transfer", "--checkpoint", "r.pt", "--dataset", "wine"],
    ]
    for head in heads:
        ns = parser.parse_args([*head, "--set", "a=1", "b=2", "--set", "c=3"])
        assert ns.set == ["a=1", "b=2", "c=3"], head
        assert parser.parse_args(head).set == [], head  # the default list is not shared
    takes = [a for sub in iter_parsers(parser) for a in sub._actions if "--set" in a.option_strings]
    assert len(takes) >= 5
    assert all(isinstance(a, argparse._ExtendAction) for a in takes)
