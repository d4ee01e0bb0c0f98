"""Building from a config, building from Python, and loading trained rules."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from gnca import Architecture, LocalRule
from gnca.build import load_rule, load_trained, make_rule, trained_from
from gnca.config import config_to_dict
from gnca.task import Task
from gnca.trainer import MetaTrainer

PACKAGE = Path(__file__).resolve().parents[1] / "gnca"


def test_python_built_trainer_is_bitwise_the_config_built_one(tmp_path):
    """A trainer built from objects (no Config) meta-trains exactly as one from the config."""
    cfg = tiny_config(steps=6)
    by_config = MetaTrainer.from_config(cfg)
    task = Task(by_config.data, activation="tanh")
    torch.manual_seed(cfg.train.seed)  # the rule's initial parameters, as the builder does
    rule = LocalRule(8, widths=[64], fire_rate=0.8)
    by_hand = MetaTrainer(
        rule,
        task,
        [task.mlp([4, 8, 3])],
        train=cfg.train,
        pool=cfg.pool,
        device=torch.device("cpu"),
    )
    for _ in range(6):
        a, b = by_config.meta_step(), by_hand.meta_step()
        assert a.loss == b.loss
    for p, q in zip(by_config.rule.parameters(), by_hand.rule.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(by_config.pools[0].w, by_hand.pools[0].w)
    # its checkpoint records what it was built from, and loads like any other
    by_hand.save(tmp_path / "last.pt")
    rule2, cfg2 = load_rule(tmp_path / "last.pt")
    assert cfg2.task.architectures == [[4, 8, 3]]
    assert config_to_dict(cfg2.rule) == config_to_dict(cfg.rule)
    assert cfg2.task.activation == "tanh" and cfg2.data.name == "iris"
    for p, q in zip(rule2.parameters(), by_hand.rule.parameters(), strict=True):
        assert torch.equal(p, q)


def test_trainer_refuses_architectures_that_do_not_fit_the_task():
    tr = MetaTrainer.from_config(tiny_config())
    with pytest.raises(ValueError, match="needs 4 and 3"):
        MetaTrainer(LocalRule(8), tr.task, [Architecture.mlp([5, 3])])
    with pytest.raises(ValueError, match="at least one training architecture"):
        MetaTrainer(LocalRule(8), tr.task, [])


def test_load_trained_applies_data_dir_without_changing_the_config(tmp_path):
    cfg = tiny_config(steps=1)
    tr = MetaTrainer.from_config(cfg)
    tr.save(tmp_path / "last.pt")
    loaded = load_trained(tmp_path / "last.pt", device="cpu")
    assert loaded.meta_steps == 0 and loaded.task.name == "iris"
    assert loaded.init == tr.init and loaded.cfg.data.data_dir is None
    moved = trained_from(loaded.rule, loaded.cfg, device="cpu", data_dir=str(tmp_path))
    assert moved.cfg.data.data_dir == str(tmp_path)
    assert loaded.cfg.data.data_dir is None  # a new config, the old one untouched
    assert [a.describe() for a in loaded.architectures()] == ["mlp 4-8-3 (+bias)"]


def test_aggr_survives_the_config_and_a_checkpoint(tmp_path):
    cfg = tiny_config(steps=1)
    cfg = dataclasses.replace(cfg, rule=dataclasses.replace(cfg.rule, aggr="max"))
    rule = make_rule(cfg.rule)
    assert rule.route == "explicit"
    tr = MetaTrainer.from_config(cfg)
    tr.meta_step()
    tr.save(tmp_path / "last.pt")
    back, _ = load_rule(tmp_path / "last.pt")
    assert back.aggr_name == "max" and back.route == "explicit"


# ---------------------------------------------------------------------- the import graph
CORE = {
    "architecture", "graph", "perception", "rule", "forward", "state", "damage", "data",
    "task", "pool", "grow", "export", "files", "checkpoint", "config", "device", "augment",
}  # fmt: skip
UPPER = {"trainer", "build", "cli", "distributed", "experiments"}


def _imports(path: Path) -> set[str]:
    """gnca modules imported anywhere in ``path`` (top-level name after ``gnca.``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gnca."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gnca.")}
    return out


def test_core_modules_never_import_trainer_cli_or_experiments():
    for name in sorted(CORE):
        bad = _imports(PACKAGE / f"{name}.py") & UPPER
        assert not bad, f"gnca/{name}.py imports {bad}"


def test_the_module_import_graph_has_no_cycle():
    graph = {p.stem: _imports(p) - {p.stem} for p in PACKAGE.glob("*.py")}
    sub = {"experiments." + p.stem: set() for p in (PACKAGE / "experiments").glob("*.py")}
    for p in (PACKAGE / "experiments").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gnca"):
                parts = node.module.split(".")
                target = ".".join(parts[1:3]) if parts[1:2] == ["experiments"] else parts[1]
                if target != "experiments." + p.stem:
                    sub["experiments." + p.stem].add(target)
    graph.update(sub)
    graph["experiments"] = {k for k in sub}  # the package stands for its modules
    for k, v in graph.items():
        graph[k] = {x for x in v if x in graph}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_experiment_command_is_always_registered():
    from gnca.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["experiment", "stability", "--config", "configs/iris.yaml"])
    assert args.command == "experiment"


def test_train_creates_its_run_directory(tmp_path):
    cfg = tiny_config(steps=1)
    tr = MetaTrainer.from_config(cfg)
    tr.train(tmp_path / "new" / "run", progress=False)
    assert (tmp_path / "new" / "run" / "last.pt").is_file()
