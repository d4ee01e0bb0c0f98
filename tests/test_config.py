"""Tests of gnca.config: strict dataclass configs loaded from YAML."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gnca.config import (
    Config,
    ConfigError,
    DataConfig,
    RuleConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------- defaults, round trip


def test_defaults_round_trip() -> None:
    cfg = Config()
    d = config_to_dict(cfg)
    assert list(d) == ["name", "out_dir", "data", "task", "rule", "pool", "train"]
    assert d["train"]["steps"] == 1500 and d["task"]["architectures"] == [[4, 16, 3]]
    assert config_from_dict(d) == cfg
    assert config_to_dict(config_from_dict(d)) == d
    assert config_from_dict({}) == cfg


def test_config_to_dict_is_plain_builtins_and_a_copy() -> None:
    cfg = Config()
    d = config_to_dict(cfg)

    def check(v: object) -> None:
        assert type(v) in (dict, list, str, int, float, bool, type(None)), type(v)
        if isinstance(v, dict):
            for x in v.values():
                check(x)
        elif isinstance(v, list):
            for x in v:
                check(x)

    check(d)
    d["task"]["architectures"][0][0] = 99
    assert cfg.task.architectures == [[4, 16, 3]]
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def test_default_factories_are_independent() -> None:
    a, b = Config(), Config()
    a.rule.widths.append(32)
    assert b.rule.widths == [64]


def test_section_class_and_int_to_float() -> None:
    train = config_from_dict({"steps": 10, "lr": 1}, TrainConfig)
    assert train.steps == 10 and train.lr == 1.0 and isinstance(train.lr, float)


def test_null_section_means_defaults() -> None:
    assert config_from_dict({"pool": None}) == Config()


# ---------------------------------------------------------------------------- YAML loading


def test_load_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: wine_run
        data: {name: wine, test_fraction: 0.25}
        task:
          architectures: [[13, 8, 3], [13, 16, 16, 3]]
          init: codes
        rule: {widths: [32, 32], bound: 0.1}
        train:
          lr: 2e-3        # YAML 1.1 reads this as a string; gnca reads a float
          lr_final: 1E-4
          k_min: 5
          k_max: 5
        """,
    )
    cfg = load_config(path)
    assert cfg.name == "wine_run"
    assert cfg.data == DataConfig(name="wine", test_fraction=0.25)
    assert cfg.task.architectures == [[13, 8, 3], [13, 16, 16, 3]]
    assert cfg.rule.widths == [32, 32] and cfg.rule.bound == 0.1
    assert cfg.train.lr == pytest.approx(2e-3) and cfg.train.lr_final == pytest.approx(1e-4)
    assert cfg.train.steps == TrainConfig().steps  # missing keys take defaults


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing here\n")) == Config()


def test_repo_iris_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "iris.yaml")  # the main job: grows any Iris MLP
    assert cfg.data.name == "iris"
    assert cfg.task.architectures == [[4, 16, 3], [4, 16, 16, 3]]
    assert cfg.task.init == "codes" and cfg.task.fan_in_ref == pytest.approx(16.0)
    assert cfg.train.lr == pytest.approx(2e-3) and cfg.train.lr_final == pytest.approx(2e-4)


def test_repo_iris_stability_config_is_the_fixed_seed_rule() -> None:
    cfg = load_config(REPO / "configs" / "iris_stability.yaml")  # the stability experiment
    assert cfg.data.name == "iris"
    assert cfg.task.architectures == [[4, 16, 3]]
    assert cfg.task.init == "fixed" and cfg.pool.size == 256
    assert (cfg.train.k_min, cfg.train.k_max, cfg.train.steps) == (20, 40, 1500)
    assert cfg.train.lr == pytest.approx(2e-3) and cfg.train.lr_final == pytest.approx(2e-4)
    # configs/iris_nopool.yaml is the same config without the pool
    nopool = load_config(REPO / "configs" / "iris_nopool.yaml")
    assert nopool.pool.size == 0
    nopool.pool.size, nopool.name = cfg.pool.size, cfg.name
    assert nopool == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_repo_config_loads(path: Path) -> None:
    cfg = load_config(path)  # strict keys and validated values
    assert cfg.name == path.stem


def test_save_then_load_equal(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "name": "x",
            "out_dir": "runs/x y",
            "task": {"architectures": [[4, 3], [4, 5, 6, 3]], "bias": False},
            "rule": {"bound": 0.5, "widths": []},
            "train": {"lr": 1e-10, "rollback_factor": float("inf"), "device": "cuda:1"},
        }
    )
    path = tmp_path / "sub" / "dir" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp files left


def test_save_config_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    save_config(Config(name="a"), path)
    save_config(Config(name="b"), path)
    assert load_config(path).name == "b"


# ---------------------------------------------------------------------------- overrides


def test_overrides_types() -> None:
    out = apply_overrides(
        {"train": {"steps": 5}},
        [
            "train.steps=2000",
            "rule.widths=[64,64]",
            "task.architectures=[[4,16,3],[4,8,8,3]]",
            "rule.bound=null",
            "train.lr=3e-4",
            "train.lr_final=0",
            "data.name=wine",
            "name=001",
        ],
    )
    cfg = config_from_dict(out)
    assert cfg.train.steps == 2000
    assert cfg.rule.widths == [64, 64]
    assert cfg.task.architectures == [[4, 16, 3], [4, 8, 8, 3]]
    assert cfg.rule.bound is None
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.lr_final == 0.0
    assert cfg.data.name == "wine"
    assert cfg.name == "001"  # string fields keep the text verbatim


def test_overrides_do_not_mutate_input_and_last_wins() -> None:
    d = {"train": {"steps": 5}}
    out = apply_overrides(d, ["train.steps=1", "train.steps=2", "rule.bound=0.5"])
    assert d == {"train": {"steps": 5}}
    assert out == {"train": {"steps": 2}, "rule": {"bound": 0.5}}


def test_override_null_then_value() -> None:
    cfg = config_from_dict(apply_overrides({}, ["rule.bound=null", "data.max_train=50"]))
    assert cfg.rule.bound is None and cfg.data.max_train == 50


def test_load_config_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  steps: 10\n")
    cfg = load_config(path, ["train.steps=20", "pool.size=0"])
    assert cfg.train.steps == 20 and cfg.pool.size == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stpes=3", "unknown config key 'train.stpes' (did you mean 'train.steps'?)"),
        ("trian.steps=3", "unknown config key 'trian.steps' (did you mean 'train.steps'?)"),
        ("nmae=x", "unknown config key 'nmae' (did you mean 'name'?)"),
        ("train.steps.x=1", "'train.steps' is not a section"),
        ("train.steps", "malformed override"),
        ("=3", "malformed override"),
        ("train.steps=[1,", "malformed YAML in override"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(1, 10**9), widths=st.lists(st.integers(1, 4096), max_size=4))
def test_override_values_round_trip(steps: int, widths: list[int]) -> None:
    overrides = [f"train.steps={steps}", f"rule.widths={widths}"]
    cfg = config_from_dict(apply_overrides({}, overrides))
    assert cfg.train.steps == steps and cfg.rule.widths == widths


# ---------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("d", "key", "suggestion"),
    [
        ({"nme": "x"}, "nme", "name"),
        ({"trian": {}}, "trian", "train"),
        ({"train": {"stpes": 3}}, "train.stpes", "train.steps"),
        ({"data": {"batchsize": 3}}, "data.batchsize", "data.batch_size"),
        ({"rule": {"neighborhood": "incident"}}, "rule.neighborhood", "rule.neighbourhood"),
    ],
)
def test_unknown_key_names_dotted_key(d: dict, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    assert str(info.value) == f"unknown config key '{key}' (did you mean '{suggestion}'?)"


def test_unknown_key_without_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"^unknown config key 'pool\.zzzzzz'$"):
        config_from_dict({"pool": {"zzzzzz": 1}})


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'task\.activaton' \(did you mean 'task\.activation'"):
        load_config(write(tmp_path, "task:\n  activaton: relu\n"))


# ---------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"train": {"steps": "100"}}, "train.steps"),  # str for int
        ({"train": {"steps": 100.0}}, "train.steps"),  # float for int
        ({"train": {"steps": [100]}}, "train.steps"),  # list for int
        ({"train": {"steps": True}}, "train.steps"),  # bool for int
        ({"train": {"steps": None}}, "train.steps"),  # null for non-optional
        ({"task": {"bias": 1}}, "task.bias"),  # int for bool
        ({"task": {"bias": "true"}}, "task.bias"),  # str for bool
        ({"train": {"lr": "fast"}}, "train.lr"),  # str for float
        ({"train": {"lr": False}}, "train.lr"),  # bool for float
        ({"data": {"name": 3}}, "data.name"),  # int for str
        ({"data": {"max_train": 2.5}}, "data.max_train"),  # float for int | None
        ({"rule": {"widths": 64}}, "rule.widths"),  # int for list
        ({"rule": {"widths": [64, "x"]}}, "rule.widths[1]"),
        ({"task": {"architectures": [4, 16, 3]}}, "task.architectures[0]"),  # flat list
        ({"task": {"architectures": [[4, 16.5, 3]]}}, "task.architectures[0][1]"),
        ({"train": 3}, "train"),  # scalar for a section
    ],
)
def test_wrong_types(d: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    msg = str(info.value)
    assert msg.startswith(f"config key '{key}' must be "), msg
    assert "\n" not in msg


def test_wrong_type_message_is_informative() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"rule": {"bound": "big"}})
    assert str(info.value) == "config key 'rule.bound' must be a number or null, got str 'big'"


def test_non_mapping_input() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="keys must be strings"):
        config_from_dict({"train": {1: 2}})


# ---------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"data": {"name": "cifar"}}, "data.name"),
        ({"data": {"split": "standard"}}, "data.split"),  # standard split is mnist only
        ({"data": {"name": "csv"}}, "data.csv_path"),  # csv needs a path
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"task": {"init": "zeros"}}, "task.init"),
        ({"task": {"activation": "swish"}}, "task.activation"),
        ({"task": {"architectures": []}}, "task.architectures"),
        ({"task": {"architectures": [[4]]}}, "task.architectures[0]"),
        ({"task": {"architectures": [[4, 0, 3]]}}, "task.architectures[0]"),
        ({"task": {"architectures": [[4, 3], [5, 3]]}}, "task.architectures[1]"),
        ({"rule": {"neighbourhood": "all"}}, "rule.neighbourhood"),
        ({"rule": {"reduce": "max"}}, "rule.reduce"),
        ({"rule": {"fire_rate": 0.0}}, "rule.fire_rate"),
        ({"rule": {"fire_rate": 1.5}}, "rule.fire_rate"),
        ({"rule": {"widths": [64, 0]}}, "rule.widths[1]"),
        ({"pool": {"size": -1}}, "pool.size"),
        ({"pool": {"damage_fraction": 2.0}}, "pool.damage_fraction"),
        ({"task": {"code_jitter": 1.5}}, "task.code_jitter"),
        ({"task": {"code_jitter": -0.1}}, "task.code_jitter"),
        ({"task": {"neuron_codes": "learned"}}, "task.neuron_codes"),
        ({"task": {"out_code_freqs": 0}}, "task.out_code_freqs"),
        ({"task": {"code_jitter_fraction": 1.5}}, "task.code_jitter_fraction"),
        ({"task": {"fan_in_ref": 0}}, "task.fan_in_ref"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"batch_size": -3}}, "train.batch_size"),
        ({"train": {"k_min": 50, "k_max": 40}}, "train.k_max"),
        ({"train": {"lr": 0.0}}, "train.lr"),
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"train": {"grad": "norm"}}, "train.grad"),
        ({"train": {"device": "gpu"}}, "train.device"),
    ],
)
def test_bad_values(d: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d)
    msg = str(info.value)
    assert f"'{key}'" in msg, msg
    assert "\n" not in msg


def test_bad_enum_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"grad": "normalise"}})
    msg = str(info.value)
    assert "'normalize', 'clip', 'none'" in msg and "(did you mean 'normalize'?)" in msg


def test_validate_config_catches_code_built_configs() -> None:
    validate_config(Config())
    bad = dataclasses.replace(Config(), rule=RuleConfig(fire_rate=2.0))
    with pytest.raises(ConfigError, match=r"'rule\.fire_rate'"):
        validate_config(bad)
    with pytest.raises(ConfigError, match=r"'train\.steps'"):
        validate_config(Config(train=TrainConfig(steps="10")))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file not found: {path}"


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  steps: 10\n  lr: [1, 2\nrule: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "line " in msg and "\n" not in msg


def test_malformed_yaml_bad_indent(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  steps: 10\n   lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*cfg\.yaml, line 3"):
        load_config(path)


def test_duplicate_key_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  steps: 10\n  steps: 20\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml, line 3: found duplicate key 'steps'"):
        load_config(path)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_top_level_not_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_mnist_long_is_mnist_with_the_issue_13_recipe() -> None:
    """configs/mnist_long.yaml is configs/mnist.yaml plus the overrides that docs/results.md
    measured (the ``--set`` keys of its command); nothing else differs."""
    recipe = [
        "task.out_code_freqs=12",
        "rule.hidden_channels=52",
        "train.perception=factored",
        "task.code_jitter_fraction=0.75",
        "train.steps=14000",
        "train.checkpoint_every=1000",  # how often last.pt is written; not the arithmetic
    ]
    long = load_config(REPO / "configs" / "mnist_long.yaml")
    base = load_config(REPO / "configs" / "mnist.yaml", recipe)
    assert long.name == "mnist_long"
    long.name = base.name
    assert long == base


def test_every_config_key_has_a_row_in_docs_config_md():
    sections = (REPO / "docs" / "config.md").read_text().split("\n## ")
    top = next(s for s in sections if s.startswith("Top level"))
    missing = []
    for f in dataclasses.fields(Config):
        doc = next((s for s in sections if s.startswith(f"`{f.name}`")), None)
        if doc is None:  # a top-level key, not a section
            missing += [] if f"| `{f.name}` |" in top else [f.name]
            continue
        missing += [f"{f.name}.{g.name}" for g in dataclasses.fields(getattr(Config(), f.name))
                    if f"| `{g.name}` |" not in doc]  # fmt: skip
    assert missing == []
