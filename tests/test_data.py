"""Tests for gnca.data: sklearn datasets, MNIST IDX loading, CSV loading and the error messages."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_mnist, write_idx
from scipy.spatial.distance import cdist

from gnca.data import DataError, Dataset, load_dataset, load_mnist_idx

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"{MNIST_DIR} not present")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SKLEARN = {  # name -> (N, F, n_classes, image_shape)
    "iris": (150, 4, 3, None),
    "wine": (178, 13, 3, None),
    "breast_cancer": (569, 30, 2, None),
    "digits": (1797, 64, 10, (8, 8)),
    "circles": (1000, 2, 2, None),
    "moons": (1000, 2, 2, None),
    "classification": (2000, 20, 4, None),
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _raw_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    generated = {  # the arguments docs/data.md states
        "circles": lambda: datasets.make_circles(1000, noise=0.1, factor=0.5, random_state=0),
        "moons": lambda: datasets.make_moons(1000, noise=0.2, random_state=0),
        "classification": lambda: datasets.make_classification(
            2000, n_features=20, n_informative=10, n_classes=4, random_state=0
        ),
    }
    if name in generated:
        x, y = generated[name]()
        return np.asarray(x, dtype=np.float64), np.asarray(y)
    bunch = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }.get(name, datasets.load_digits)()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)


def _check_partition(ds: Dataset, raw: np.ndarray, y_raw: np.ndarray, global_affine: bool) -> None:
    """Assert that train + test rows, un-standardised, are exactly the raw rows (as a multiset).

    The standardisation is affine (per column, or one global map for images), so it is recovered
    by fitting sorted standardised values against sorted raw values. A single map for train and
    test also checks that the test data used the training transform.
    """
    x = torch.cat([ds.X_train, ds.X_test]).double().numpy()
    y = torch.cat([ds.y_train, ds.y_test]).numpy()
    assert x.shape == raw.shape
    recon = np.empty_like(x)
    if global_affine:
        a, b = np.polyfit(np.sort(x.ravel()), np.sort(raw.ravel()), 1)
        recon = a * x + b
    else:
        for j in range(x.shape[1]):
            a, b = np.polyfit(np.sort(x[:, j]), np.sort(raw[:, j]), 1)
            recon[:, j] = a * x[:, j] + b
    # match every recovered row to its nearest distinct raw row; counts must equal multiplicities
    scale = np.abs(raw).max(axis=0) + 1.0
    uniq, counts = np.unique(np.column_stack([raw / scale, y_raw]), axis=0, return_counts=True)
    dist = cdist(np.column_stack([recon / scale, y]), uniq)
    nearest = dist.argmin(axis=1)
    assert dist[np.arange(len(x)), nearest].max() < 1e-4
    assert np.array_equal(np.bincount(nearest, minlength=len(uniq)), counts)


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# scikit-learn datasets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_sklearn_shapes_dtypes_classes(name: str) -> None:
    n, f, c, image_shape = SKLEARN[name]
    ds = load_dataset(name)
    assert ds.name == name
    assert (ds.n_features, ds.n_classes, ds.image_shape) == (f, c, image_shape)
    assert ds.X_train.dtype == ds.X_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.X_train.shape == (len(ds.y_train), f) and ds.X_test.shape == (len(ds.y_test), f)
    assert len(ds.y_train) + len(ds.y_test) == n
    assert len(ds.y_test) == pytest.approx(0.2 * n, abs=1)
    for y in (ds.y_train, ds.y_test):
        assert set(y.tolist()) == set(range(c))
    assert torch.isfinite(ds.X_train).all() and torch.isfinite(ds.X_test).all()


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "circles", "classification"])
def test_tabular_per_feature_standardised_on_train(name: str) -> None:
    ds = load_dataset(name, seed=3)
    x = ds.X_train.double()
    assert torch.allclose(x.mean(0), torch.zeros(ds.n_features, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones_like(x[0]), atol=1e-5)
    # the test split uses the training transform, so its statistics are not exactly 0/1
    assert ds.X_test.double().mean(0).abs().max() > 1e-3


def test_digits_global_standardisation() -> None:
    ds = load_dataset("digits")
    x = ds.X_train.double()
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # one global map: pixel 0 (always blank) is constant and equals the global minimum, which
    # per-pixel standardisation would have turned into 0
    assert torch.all(ds.X_train[:, 0] == ds.X_train.min())
    assert ds.X_train.min().item() < -0.5
    # the scale is global: per-pixel std differs between pixels
    assert x.std(0).max() - x.std(0).min() > 0.5


@pytest.mark.parametrize("name", sorted(SKLEARN))
@pytest.mark.parametrize("test_fraction", [0.2, 0.35])
def test_split_stratified_disjoint_and_covering(name: str, test_fraction: float) -> None:
    ds = load_dataset(name, test_fraction=test_fraction, seed=5)
    raw, y_raw = _raw_sklearn(name)
    n_test = len(ds.y_test)
    assert n_test == pytest.approx(test_fraction * len(y_raw), abs=1)
    total = np.bincount(y_raw)
    test_counts = np.bincount(ds.y_test.numpy(), minlength=len(total))
    assert np.all(np.abs(test_counts - total * n_test / len(y_raw)) <= 1)
    _check_partition(ds, raw, y_raw, global_affine=ds.image_shape is not None)


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_split_reproducible_with_seed(name: str) -> None:
    a, b, c = (load_dataset(name, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert torch.equal(a.X_test, b.X_test) and torch.equal(a.y_train, b.y_train)
    assert a.X_test.shape == c.X_test.shape
    assert not torch.equal(a.X_test, c.X_test)


@pytest.mark.parametrize("name", ["circles", "moons", "classification"])
def test_generated_tables_are_the_same_samples_every_time(name: str) -> None:
    """The generators run with fixed seeds: every load is the same data, and another split seed
    only moves the same samples between train and test."""
    a, b, c = load_dataset(name), load_dataset(name), load_dataset(name, seed=1)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    raw, y_raw = _raw_sklearn(name)
    _check_partition(c, raw, y_raw, global_affine=False)
    assert sorted(Counter(c.y_train.tolist() + c.y_test.tolist()).items()) == sorted(
        Counter(y_raw.tolist()).items()
    )


def test_max_train_subsample() -> None:
    full = load_dataset("digits", seed=2)
    a = load_dataset("digits", seed=2, max_train=100)
    b = load_dataset("digits", seed=2, max_train=100)
    assert a.X_train.shape == (100, 64) and a.y_train.shape == (100,)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.y_test, full.y_test)  # the test split is untouched
    assert a.X_train.double().mean().item() == pytest.approx(0.0, abs=1e-5)  # stats of subset
    big = load_dataset("digits", seed=2, max_train=10_000)
    assert torch.equal(big.X_train, full.X_train)


def test_digits_downsample() -> None:
    raw, _ = _raw_sklearn("digits")
    for k, side in ((2, 4), (4, 2), (8, 1)):
        ds = load_dataset("digits", downsample=k)
        assert ds.image_shape == (side, side) and ds.n_features == side * side
        assert ds.X_train.shape[1] == side * side
        pooled = raw.reshape(-1, side, k, side, k).mean(axis=(2, 4)).reshape(len(raw), -1)
        _check_partition(ds, pooled, _raw_sklearn("digits")[1], global_affine=True)


# --------------------------------------------------------------------------------------------
# option errors
# --------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar'") as info:
        load_dataset("cifar")
    for valid in ("iris", "wine", "breast_cancer", "digits", "circles", "moons", "classification",
                  "mnist", "csv"):  # fmt: skip
        assert valid in str(info.value)


def test_name_is_case_insensitive() -> None:
    assert load_dataset("Iris").name == "iris"


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, True, "0.2"])
def test_bad_test_fraction(bad: object) -> None:
    with pytest.raises(DataError, match=r"test_fraction must be a number in \(0, 1\)"):
        load_dataset("iris", test_fraction=bad)  # type: ignore[arg-type]


def test_too_small_test_fraction_is_data_error() -> None:
    with pytest.raises(DataError, match="cannot split 150 samples of 3 classes"):
        load_dataset("iris", test_fraction=0.01)


def test_split_errors() -> None:
    with pytest.raises(DataError, match="split='standard' only exists for mnist"):
        load_dataset("wine", split="standard")
    with pytest.raises(DataError, match="unknown split 'official'"):
        load_dataset("iris", split="official")


def test_downsample_errors() -> None:
    with pytest.raises(DataError, match="downsample=2 only applies to image datasets"):
        load_dataset("iris", downsample=2)
    with pytest.raises(DataError, match="downsample=3 does not divide the 8x8 images of digits"):
        load_dataset("digits", downsample=3)
    with pytest.raises(DataError, match="downsample must be an integer >= 1"):
        load_dataset("digits", downsample=0)
    with pytest.raises(DataError, match="max_train must be an integer >= 1"):
        load_dataset("digits", max_train=0)


# --------------------------------------------------------------------------------------------
# MNIST (real files from the shared folder)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"{MNIST_DIR} not present")
    return load_mnist_idx(MNIST_DIR)


@pytest.fixture(scope="module")
def mnist_standard() -> Dataset:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"{MNIST_DIR} not present")
    return load_dataset("mnist", data_dir=str(MNIST_DIR), split="standard")


@pytest.fixture(scope="module")
def mnist_random() -> Dataset:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"{MNIST_DIR} not present")
    return load_dataset("mnist", data_dir=MNIST_DIR, seed=0)


@pytest.fixture(scope="module")
def mnist_ds2() -> Dataset:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"{MNIST_DIR} not present")
    return load_dataset("mnist", data_dir=MNIST_DIR, split="standard", downsample=2)


@needs_mnist
def test_mnist_idx_arrays(mnist_raw: tuple[np.ndarray, ...]) -> None:
    tr_img, tr_lab, te_img, te_lab = mnist_raw
    assert tr_img.shape == (60000, 28, 28) and te_img.shape == (10000, 28, 28)
    assert tr_lab.shape == (60000,) and te_lab.shape == (10000,)
    assert tr_img.dtype == np.uint8 and tr_lab.dtype == np.uint8
    assert np.bincount(tr_lab).tolist() == MNIST_TRAIN_COUNTS
    assert tr_img.max() == 255 and tr_img.min() == 0


@needs_mnist
def test_mnist_standard_split(mnist_standard: Dataset, mnist_raw: tuple[np.ndarray, ...]) -> None:
    ds = mnist_standard
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert (ds.n_features, ds.n_classes, ds.image_shape) == (784, 10, (28, 28))
    assert torch.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.equal(ds.y_test, torch.from_numpy(mnist_raw[3].astype(np.int64)))
    # one global mean/std over all training pixels in [0, 1]
    # exact pixel statistics from a histogram (torch.bincount is much faster than numpy's here)
    hist = torch.bincount(torch.from_numpy(mnist_raw[0].ravel()), minlength=256).numpy()
    values = np.arange(256) / 255.0
    mean = (hist * values).sum() / hist.sum()
    std = np.sqrt((hist * (values - mean) ** 2).sum() / hist.sum())
    for i in (0, 1, 59999):
        expected = (mnist_raw[0][i].astype(np.float64).ravel() / 255.0 - mean) / std
        np.testing.assert_allclose(ds.X_train[i].numpy(), expected, atol=1e-5)
    expected_test = (mnist_raw[2][5].astype(np.float64).ravel() / 255.0 - mean) / std
    np.testing.assert_allclose(ds.X_test[5].numpy(), expected_test, atol=1e-5)


@needs_mnist
def test_mnist_random_split_pools_all_images(
    mnist_random: Dataset, mnist_raw: tuple[np.ndarray, ...]
) -> None:
    ds = mnist_random
    assert ds.X_train.shape == (56000, 784) and ds.X_test.shape == (14000, 784)
    tr_img, tr_lab, te_img, te_lab = mnist_raw
    total = np.bincount(np.concatenate([tr_lab, te_lab]))
    test_counts = torch.bincount(ds.y_test, minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.2 * total) <= 1)
    # Recover raw pixels (0 maps to the minimum, 255 to the maximum) and match images.
    lo, hi = ds.X_train.min().item(), ds.X_train.max().item()

    def digest(x: torch.Tensor, y: torch.Tensor) -> Counter[bytes]:
        pixels = torch.round((x - lo) * (255.0 / (hi - lo))).to(torch.uint8).numpy()
        return Counter(
            hashlib.sha1(p.tobytes() + bytes([c])).digest()
            for p, c in zip(pixels, y.numpy(), strict=True)
        )

    def raw_digest(images: np.ndarray, labels: np.ndarray) -> Counter[bytes]:
        flat = images.reshape(len(images), -1)
        return Counter(
            hashlib.sha1(p.tobytes() + bytes([int(c)])).digest()
            for p, c in zip(flat, labels, strict=True)
        )

    test_d = digest(ds.X_test, ds.y_test)
    orig_train, orig_test = raw_digest(tr_img, tr_lab), raw_digest(te_img, te_lab)
    assert digest(ds.X_train, ds.y_train) + test_d == orig_train + orig_test
    from_test = sum((test_d & orig_test).values())
    assert 1500 < from_test < 2500  # ~20% of the 10k original test images ended up in test


@needs_mnist
def test_mnist_downsample_2(mnist_ds2: Dataset, mnist_raw: tuple[np.ndarray, ...]) -> None:
    ds = mnist_ds2
    assert ds.n_features == 196 and ds.image_shape == (14, 14)
    assert ds.X_train.shape == (60000, 196) and ds.X_test.shape == (10000, 196)
    images = mnist_raw[0]
    # statistics from an independent pooling implementation (sum of four strided views)
    block_sum = sum(
        images[:, dr::2, dc::2].astype(np.uint16) for dr in (0, 1) for dc in (0, 1)
    ).astype(np.float64)
    mean, std = block_sum.mean() / 1020.0, block_sum.std() / 1020.0
    for i in (0, 7, 31337, 59999):
        ref = np.zeros((14, 14))
        for r in range(14):
            for c in range(14):
                block = [
                    images[i, 2 * r + dr, 2 * c + dc] / 255.0 for dr in (0, 1) for dc in (0, 1)
                ]
                ref[r, c] = sum(block) / 4.0
        np.testing.assert_allclose(ds.X_train[i].numpy(), ((ref - mean) / std).ravel(), atol=1e-5)


@needs_mnist
def test_mnist_uncompressed_files(tmp_path: Path, mnist_raw: tuple[np.ndarray, ...]) -> None:
    for base in MNIST_FILES:
        with gzip.open(MNIST_DIR / f"{base}.gz", "rb") as src, open(tmp_path / base, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert not list(tmp_path.glob("*.gz"))
    loaded = load_mnist_idx(tmp_path)
    for a, b in zip(loaded, mnist_raw, strict=True):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------------
# MNIST folder resolution and file errors (small synthetic IDX files)
# --------------------------------------------------------------------------------------------


def test_gnca_data_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fake_mnist(tmp_path / "env")
    monkeypatch.setenv("GNCA_DATA", str(folder))
    ds = load_dataset("mnist", split="standard")
    assert ds.X_train.shape == (30, 784) and ds.X_test.shape == (20, 784)
    # an explicit data_dir wins over the environment
    other = fake_mnist(tmp_path / "arg", n_train=40)
    assert load_dataset("mnist", data_dir=other, split="standard").X_train.shape == (40, 784)


def test_mnist_without_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GNCA_DATA", raising=False)
    with pytest.raises(DataError, match="MNIST needs a data directory") as info:
        load_dataset("mnist")
    assert "GNCA_DATA" in str(info.value) and "data.data_dir" in str(info.value)
    assert "--data-dir DIR" in str(info.value)  # the flag of grow, eval, export, experiment


def test_mnist_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    assert "--data-dir" in str(info.value) and "data.data_dir" in str(info.value)


def test_mnist_missing_file(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found") as info:
        load_mnist_idx(folder)
    assert str(folder) in str(info.value)


def test_mnist_dotted_and_plain_names(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path, gz=False)
    (folder / "train-images-idx3-ubyte").rename(folder / "train-images.idx3-ubyte")
    tr_img, tr_lab, te_img, te_lab = load_mnist_idx(folder)
    assert tr_img.shape == (30, 28, 28) and te_lab.tolist() == [i % 10 for i in range(20)]


def test_mnist_bad_magic(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path, gz=False)
    write_idx(folder / "t10k-images-idx3-ubyte", 2049, np.zeros((20, 28, 28), np.uint8))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: bad magic number 2049"):
        load_mnist_idx(folder)


def test_mnist_truncated(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated IDX file"):
        load_mnist_idx(folder)
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated IDX file"):
        load_mnist_idx(folder)


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path)
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a valid gzip file"):
        load_mnist_idx(folder)


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path, gz=False)
    write_idx(folder / "train-labels-idx1-ubyte", 2049, np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="has 30 images but .*train-labels-idx1-ubyte has 29"):
        load_mnist_idx(folder)


def test_mnist_downsample_not_divisible(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path)
    with pytest.raises(DataError, match="downsample=3 does not divide the 28x28 images of mnist"):
        load_dataset("mnist", data_dir=folder, split="standard", downsample=3)
    ds = load_dataset("mnist", data_dir=folder, split="standard", downsample=4)
    assert ds.image_shape == (7, 7) and ds.n_features == 49


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def _class_csv(labels: list[str], header: str | None, per_class: int = 5) -> list[str]:
    """Rows whose first feature increases with the class index in ``labels`` order."""
    lines = [header] if header else []
    for rank, label in enumerate(labels):
        for i in range(per_class):
            lines.append(f"{10 * rank + 0.1 * i},{(-1) ** i * 2.5},{label}")
    return lines


def _assert_labels_follow_feature0(ds: Dataset) -> None:
    for x, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        order = torch.argsort(x[:, 0])
        assert torch.all(torch.diff(y[order]) >= 0)


def test_csv_with_header_and_string_labels(tmp_path: Path) -> None:
    # written in shuffled label order; class indices follow the sorted label strings
    path = _write_csv(tmp_path / "a.csv", _class_csv(["apple", "banana", "cherry"], "f1,f2,fruit"))
    ds = load_dataset("csv", csv_path=path, test_fraction=0.4)
    assert ds.name == "csv" and ds.image_shape is None
    assert (ds.n_features, ds.n_classes) == (2, 3)
    assert len(ds.y_train) + len(ds.y_test) == 15  # header not counted as a sample
    assert torch.bincount(ds.y_test).tolist() == [2, 2, 2]
    _assert_labels_follow_feature0(ds)
    assert ds.X_train.double().std(0, unbiased=False).sub(1).abs().max() < 1e-5


def test_csv_without_header_numeric_labels(tmp_path: Path) -> None:
    # integer labels are ordered numerically: 1 < 2 < 10
    path = _write_csv(tmp_path / "b.csv", _class_csv(["1", "2", "10"], None))
    ds = load_dataset("csv", csv_path=str(path), test_fraction=0.4, seed=4)
    assert len(ds.y_train) + len(ds.y_test) == 15  # the first row is data
    assert ds.n_classes == 3
    _assert_labels_follow_feature0(ds)


def test_csv_blank_lines_and_spaces(tmp_path: Path) -> None:
    lines = _class_csv([" x", "y "], "a, b, label", per_class=4)
    path = _write_csv(tmp_path / "c.csv", lines[:3] + [""] + lines[3:] + ["", ""])
    ds = load_dataset("csv", csv_path=path, test_fraction=0.5)
    assert ds.n_classes == 2 and len(ds.y_train) + len(ds.y_test) == 8


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        (["a,b,c", "1,2,x", "1,2", "3,4,y"], r"c\.csv, line 3: ragged row with 2 columns"),
        (
            ["1,2,x", "1,oops,y", "3,4,y"],
            r"c\.csv, line 2, column 2: non-numeric feature value 'oops'",
        ),
        (["1,2,x", "1,nan,y"], r"c\.csv, line 2, column 2: non-finite feature value 'nan'"),
        (["label", "x", "y"], r"c\.csv, line 1: 1 column; need at least 2"),
        (["1,2,x", "3,4,x", "5,6,x"], r"c\.csv: the label column \(last\) has 1 distinct value"),
        (["f,label"], r"c\.csv has no data rows"),
        (["1,2,x", "3,4,"], r"c\.csv, line 2: empty label"),
        (["1,x", "2,x", "3,y"], r"c\.csv: class 'y' has only 1 sample"),
    ],
)
def test_csv_errors(tmp_path: Path, lines: list[str], pattern: str) -> None:
    path = _write_csv(tmp_path / "c.csv", lines)
    with pytest.raises(DataError, match=pattern):
        load_dataset("csv", csv_path=path)


def test_csv_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CSV file .*nope\.csv not found"):
        load_dataset("csv", csv_path=tmp_path / "nope.csv")
    with pytest.raises(DataError, match="needs a file: pass data.csv_path"):
        load_dataset("csv")


def test_mnist1d_standard_split_is_generated_once_and_cached(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.setenv("GNCA_CACHE", str(tmp_path))
    d = load_dataset("mnist1d", split="standard")
    assert d.X_train.shape == (4000, 40) and d.X_test.shape == (1000, 40)
    assert d.n_classes == 10 and d.image_shape is None
    assert sorted(torch.unique(d.y_train).tolist()) == list(range(10))
    assert (tmp_path / "mnist1d.npz").is_file()
    again = load_dataset("mnist1d", split="standard")  # from the cache
    assert torch.equal(again.X_train, d.X_train) and torch.equal(again.y_test, d.y_test)
    pooled = load_dataset("mnist1d", test_fraction=0.2, seed=1)
    assert pooled.X_train.shape == (4000, 40) and pooled.X_test.shape == (1000, 40)


def test_mnist1d_without_its_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import sys

    from gnca.data import DataError

    monkeypatch.setenv("GNCA_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # the import fails
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(
        DataError, match=r"needs the mnist1d package: pip install 'gnca\[mnist1d\]'$"
    ):
        load_dataset("mnist1d")
