"""Tests of gnca.checkpoint: atomic writes and safe (weights_only) loading."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from gnca import checkpoint as ckpt
from gnca.checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint, save_checkpoint
from gnca.config import Config, config_to_dict


def make_payload() -> dict:
    """A payload like a training loop writes: config, model/optimizer state, RNG state."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return {
        "config": config_to_dict(Config()),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "step": 42,
        "losses": [0.5, 0.25, float("nan")],
        "note": "hello",
    }


def assert_same(a: object, b: object) -> None:
    """Deep equality that handles tensors and NaN."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype
        assert torch.equal(a, b) or torch.allclose(a, b, equal_nan=True)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b
    else:
        assert a == b


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path: Path) -> None:
    payload = make_payload()
    path = tmp_path / "deep" / "dir" / "ckpt.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["version"] == VERSION
    assert "format" not in payload  # caller's dict untouched
    assert_same({k: v for k, v in loaded.items() if k not in ("format", "version")}, payload)
    assert files_in(path.parent) == ["ckpt.pt"]


def test_loaded_state_restores_model_and_optimizer(tmp_path: Path) -> None:
    payload = make_payload()
    save_checkpoint(tmp_path / "c.pt", payload)
    loaded = load_checkpoint(tmp_path / "c.pt")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model.load_state_dict(loaded["model"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(loaded["optimizer"])
    torch.set_rng_state(loaded["torch_rng"])
    random.setstate(loaded["python_rng"])
    assert_same(opt.state_dict()["state"], payload["optimizer"]["state"])


def test_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2
    assert files_in(tmp_path) == ["c.pt"]


def test_unsafe_payload_refused_at_save(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    with pytest.raises(CheckpointError, match="weights_only") as info:
        save_checkpoint(path, {"path": Path("x")})
    assert "\n" not in str(info.value)
    assert not path.exists() and files_in(tmp_path) == []


# ---------------------------------------------------------------------------- interrupted writes


@pytest.mark.parametrize("victim", ["fsync", "replace"])
def test_interrupted_write_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: str
) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(os, victim, boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert files_in(tmp_path) == ["c.pt"]


def test_partial_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file write itself dies half-way: the target must still be the old checkpoint."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    real_atomic_write = ckpt.atomic_write

    def dying_atomic_write(target: Path, write: object) -> None:
        def half(f: object) -> None:
            f.write(b"PK\x03\x04 half a zip file")  # type: ignore[attr-defined]
            f.flush()  # type: ignore[attr-defined]
            raise OSError("disk full")

        real_atomic_write(target, half)

    monkeypatch.setattr(ckpt, "atomic_write", dying_atomic_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert files_in(tmp_path) == ["c.pt"]


def test_failing_torch_save_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    real_save = torch.save

    def half_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("crash after serializing")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(RuntimeError, match="crash"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert files_in(tmp_path) == ["c.pt"]


# ---------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"checkpoint not found: {path}"


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def check_error(path: Path, pattern: str) -> None:
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("size", [0, 1, 100, 5000])
def test_random_bytes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "r.pt"
    path.write_bytes(random.Random(size).randbytes(size))
    check_error(path, "corrupt")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_checkpoint(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "t.pt"
    save_checkpoint(path, make_payload())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    check_error(path, "corrupt")


def test_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "f.pt"
    torch.save({"weight": torch.ones(2, 2)}, path)
    check_error(path, "^not a gnca checkpoint")
    torch.save(torch.ones(3), path)
    check_error(path, "^not a gnca checkpoint")
    torch.save({"format": "other", "version": 1}, path)
    check_error(path, "^not a gnca checkpoint")


def test_newer_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.pt"
    torch.save({"format": FORMAT, "version": VERSION + 1}, path)
    check_error(path, "newer")


class _Evil:
    """Unpickling this would run code; weights_only must refuse it."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_arbitrary_object_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.pt"
    torch.save({"format": FORMAT, "version": VERSION, "evil": _Evil()}, path)
    check_error(path, "refusing to load")
    assert "pwned" not in capfd.readouterr().out


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": FORMAT, "version": VERSION, "obj": _Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
