"""Dataset loaders: iris, wine, breast_cancer, digits (scikit-learn, bundled), circles, moons,
classification (scikit-learn generators with fixed seeds), MNIST (local IDX files), mnist1d and CSV.

Every loader returns a :class:`Dataset` with float32 features standardised using statistics of the
training split only, and int64 labels in ``[0, n_classes)``. Nothing is ever downloaded here
(``gnca data download mnist DIR``, :mod:`gnca.download`, fetches MNIST when asked to).

Preprocessing
-------------
* Tabular data (iris, wine, breast_cancer, circles, moons, classification, csv): per-feature
  mean and (population, ddof=0) standard deviation of the training split; a feature that is
  constant on the training split gets std 1.
* Image data (digits, mnist): pixels scaled to [0, 1] (digits / 16, mnist / 255), optionally
  ``k x k`` average pooled, then ONE global mean and std over all training pixels.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

__all__ = [
    "DataError",
    "Dataset",
    "load_dataset",
    "load_mnist_idx",
    "DATASET_NAMES",
    "TABLES",
    "IMAGE_DATASETS",
]

DATASET_NAMES: tuple[str, ...] = (
    "iris",
    "wine",
    "breast_cancer",
    "digits",
    "circles",
    "moons",
    "classification",
    "mnist",
    "mnist1d",
    "csv",
)
#: the tables of :func:`load_dataset` that ship offline: scikit-learn's bundled ones and its
#: generators with fixed arguments and seeds (always the same samples)
TABLES: tuple[str, ...] = (
    "iris",
    "wine",
    "breast_cancer",
    "circles",
    "moons",
    "classification",
)
#: the datasets of :func:`load_dataset` that are images (``downsample`` pools them)
IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist")
_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049
# The four standard MNIST files, in the order load_mnist_idx returns them.
_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST_NEEDS_DIR = (
    "MNIST needs a data directory: pass --data-dir DIR (gnca grow, eval, export, experiment), "
    "set data.data_dir in the config (gnca train: --set data.data_dir=DIR) or set GNCA_DATA to a "
    "folder with the IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]); gnca data download mnist DIR "
    "fetches them"
)


class DataError(ValueError):
    """A dataset could not be loaded; the one-line message names the file/option and the fix."""


@dataclass
class Dataset:
    """A standardised train/test split.

    Attributes:
        name: dataset name as passed to :func:`load_dataset` (lower case, e.g. ``"mnist"``).
        X_train: ``(N_train, F)`` float32, standardised with training statistics.
        y_train: ``(N_train,)`` int64 in ``[0, n_classes)``.
        X_test: ``(N_test, F)`` float32, same transform as the training data.
        y_test: ``(N_test,)`` int64 in ``[0, n_classes)``.
        n_features: ``F``.
        n_classes: number of classes.
        image_shape: ``(H, W)`` for image data (rows of X are images flattened row-major, so
            ``H * W == F``), else ``None``.
    """

    name: str
    X_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    X_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    n_features: int
    n_classes: int
    image_shape: tuple[int, int] | None


# --------------------------------------------------------------------------------------------
# MNIST IDX files
# --------------------------------------------------------------------------------------------


def _find_mnist_file(directory: Path, base: str) -> Path:
    """Return the path of MNIST file ``base`` in ``directory``, plain or gzipped, ``-`` or ``.``.

    ``base`` is e.g. ``"train-images-idx3-ubyte"``; also accepted are ``base + ".gz"`` and the
    common variant ``"train-images.idx3-ubyte"`` (with or without ``.gz``).
    """
    dotted = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", dotted, dotted + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    raise DataError(
        f"MNIST file {base}[.gz] not found in {directory}: put the four IDX files "
        f"({', '.join(f + '[.gz]' for f in _MNIST_FILES)}) in that folder"
    )


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing it if its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc}); re-download or gunzip it") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes.

    Args:
        path: file to read (``.gz`` is decompressed).
        magic: 2051 for images (header n, rows, cols) or 2049 for labels (header n).

    Returns:
        uint8 array, ``(n, rows, cols)`` for images or ``(n,)`` for labels.
    """
    data = _read_bytes(path)
    dims = 3 if magic == _IMAGE_MAGIC else 1
    header_len = 4 * (1 + dims)
    kind = "images" if magic == _IMAGE_MAGIC else "labels"
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    found = int(np.frombuffer(data, dtype=">u4", count=1)[0])
    if found != magic:
        raise DataError(
            f"{path}: bad magic number {found} (expected {magic} for IDX {kind}); "
            "is this the right MNIST file?"
        )
    if len(data) < header_len:
        raise DataError(
            f"{path}: truncated IDX file ({len(data)} bytes, header needs {header_len})"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    have = len(data) - header_len
    if have < expected:
        raise DataError(
            f"{path}: truncated IDX file: header says {kind} of shape {shape} ({expected} bytes) "
            f"but only {have} bytes follow"
        )
    if have > expected:
        raise DataError(
            f"{path}: IDX file has {have - expected} unexpected trailing bytes after {kind} of "
            f"shape {shape}"
        )
    # copy: arrays over the immutable bytes would be read-only
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def load_mnist_idx(
    data_dir: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the four MNIST IDX files from ``data_dir`` (gzipped or not); never downloads.

    Args:
        data_dir: folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally ``.gz``
            (the ``train-images.idx3-ubyte`` spelling is also accepted).

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: uint8 arrays of shapes
        ``(60000, 28, 28)``, ``(60000,)``, ``(10000, 28, 28)``, ``(10000,)`` for standard MNIST.
        Labels are uint8 digits 0-9 exactly as stored in the files.

    Raises:
        DataError: missing folder or file, bad magic number, truncated file, image/label count
            mismatch, train/test image size mismatch, or a label outside 0-9.
    """
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(
            f"MNIST data directory {directory} does not exist or is not a folder; "
            "point --data-dir, data.data_dir or GNCA_DATA at the folder holding the IDX files"
        )
    paths = [_find_mnist_file(directory, base) for base in _MNIST_FILES]
    out: list[np.ndarray] = []
    for img_path, lab_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images = _parse_idx(img_path, _IMAGE_MAGIC)
        labels = _parse_idx(lab_path, _LABEL_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{img_path} has {images.shape[0]} images but {lab_path} has "
                f"{labels.shape[0]} labels; the files do not belong together"
            )
        if labels.size and int(labels.max()) > 9:
            raise DataError(f"{lab_path}: label {int(labels.max())} is not a digit 0-9")
        out.extend((images, labels))
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DataError(
            f"{paths[0]} has images of size {out[0].shape[1:]} but {paths[2]} has "
            f"{out[2].shape[1:]}"
        )
    return out[0], out[1], out[2], out[3]


def _resolve_mnist_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` if given, else ``$GNCA_DATA``, else a DataError saying how to set one."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("GNCA_DATA", "")
    if env:
        return Path(env).expanduser()
    raise DataError(_MNIST_NEEDS_DIR)


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_sort_key(labels: list[str]) -> list[str]:
    """Sorted unique labels: numerically if all parse as numbers, else as strings."""
    unique = set(labels)
    if all(_is_float(s) for s in unique):
        return sorted(unique, key=lambda s: (float(s), s))
    return sorted(unique)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parse a CSV file: features first, label last; optional header row.

    Returns:
        ``(X, y, classes)``: X ``(N, F)`` float64, y ``(N,)`` int64 in ``[0, len(classes))``,
        classes the original label strings in class-index order.
    """
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"CSV file {path}: cannot open ({exc})") from exc
    rows: list[list[float]] = []
    labels: list[str] = []
    n_cols: int | None = None
    first = True
    with fh:
        reader = csv.reader(fh)
        try:
            for raw in reader:
                line = reader.line_num
                fields = [f.strip() for f in raw]
                if not any(fields):
                    continue  # blank line
                if n_cols is None:
                    n_cols = len(fields)
                    if n_cols < 2:
                        raise DataError(
                            f"{path}, line {line}: {n_cols} column; need at least 2 "
                            "(features first, label last)"
                        )
                elif len(fields) != n_cols:
                    raise DataError(
                        f"{path}, line {line}: ragged row with {len(fields)} columns, "
                        f"expected {n_cols} like the first row"
                    )
                if first:
                    first = False
                    if not all(_is_float(f) for f in fields[:-1]):
                        continue  # header row
                values: list[float] = []
                for col, text in enumerate(fields[:-1], start=1):
                    try:
                        value = float(text)
                    except ValueError:
                        raise DataError(
                            f"{path}, line {line}, column {col}: non-numeric feature value "
                            f"{text!r} (features must be numbers; only the last column may "
                            "hold text labels)"
                        ) from None
                    if not np.isfinite(value):
                        raise DataError(
                            f"{path}, line {line}, column {col}: non-finite feature value "
                            f"{text!r} (missing values are not supported)"
                        )
                    values.append(value)
                if fields[-1] == "":
                    raise DataError(f"{path}, line {line}: empty label in the last column")
                rows.append(values)
                labels.append(fields[-1])
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}, line {reader.line_num}: unreadable CSV ({exc})") from exc
    if not rows:
        raise DataError(f"CSV file {path} has no data rows")
    classes = _label_sort_key(labels)
    if len(classes) < 2:
        raise DataError(
            f"CSV file {path}: the label column (last) has {len(classes)} distinct value; "
            "need at least 2 classes"
        )
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[s] for s in labels], dtype=np.int64)
    return np.asarray(rows, dtype=np.float64), y, classes


# --------------------------------------------------------------------------------------------
# Splitting and preprocessing
# --------------------------------------------------------------------------------------------


def stratified_split(
    y: np.ndarray,
    test_fraction: float,
    seed: int,
    what: str,
    class_names: list[str] | None = None,
    setting: str = "test_fraction",
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(y))`` into (train, test) index arrays.

    Args:
        y: ``(N,)`` int labels; what: dataset/file named in errors; class_names: label texts;
        setting: the setting that asked for ``test_fraction``, as errors name it.
    """
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        bad = int(classes[counts.argmin()])
        label = repr(class_names[bad]) if class_names is not None else str(bad)
        raise DataError(
            f"{what}: class {label} has only {counts.min()} sample; a stratified split needs at "
            "least 2 per class"
        )
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
        )
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        raise DataError(
            f"{what}: cannot split {len(y)} samples of {len(classes)} classes with "
            f"{setting}={test_fraction}: {msg}"
        ) from exc
    return np.asarray(train_idx), np.asarray(test_idx)


def _subsample(n: int, max_train: int | None, seed: int) -> np.ndarray | None:
    """Sorted seeded positions of ``min(n, max_train)`` training samples, or None to keep all."""
    if max_train is None or max_train >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_train, replace=False))


def _standardise_tabular(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature standardisation with training mean/std; ``(N, F)`` in, float32 out."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[np.ptp(x_train, axis=0) == 0] = 1.0
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _pool(images: np.ndarray, k: int) -> np.ndarray:
    """``k x k`` average pooling: ``(N, H, W)`` -> ``(N, H // k, W // k)`` float32."""
    if k == 1:
        return images.astype(np.float32)  # always a copy: callers modify the result in place
    n, h, w = images.shape
    blocks = images.reshape(n, h // k, k, w // k, k)
    return blocks.mean(axis=(2, 4), dtype=np.float32)


def _prepare_images(
    train: np.ndarray, test: np.ndarray, scale: float, k: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Scale to [0, 1], pool, and standardise with one global training mean/std.

    Args:
        train: ``(N_train, H, W)`` raw pixels; test: ``(N_test, H, W)``.
        scale: maximum raw pixel value (16 for digits, 255 for MNIST).
        k: pooling factor (``H`` and ``W`` already checked divisible by ``k``).

    Returns:
        ``(X_train, X_test, (H // k, W // k))`` with X float32 of shape ``(N, H * W // k**2)``.
    """
    out = []
    for images in (train, test):
        pooled = _pool(images, k)
        pooled /= np.float32(scale)  # pooling commutes with scaling
        out.append(pooled.reshape(pooled.shape[0], -1))
    x_train, x_test = out
    # Global mean/std in float64, accumulated in row chunks to avoid a float64 copy of X.
    total, total_sq = 0.0, 0.0
    for start in range(0, x_train.shape[0], 4096):
        chunk = x_train[start : start + 4096].astype(np.float64)
        total += float(chunk.sum())
        total_sq += float(np.square(chunk).sum())
    count = max(x_train.size, 1)
    mean_f = total / count
    var = max(total_sq / count - mean_f * mean_f, 0.0)
    std = float(np.sqrt(var))
    if x_train.size == 0 or np.ptp(x_train) == 0:
        std = 1.0
    mean = np.float32(mean_f)
    inv = np.float32(1.0 / std)
    for x in (x_train, x_test):
        x -= mean
        x *= inv
    h, w = train.shape[1] // k, train.shape[2] // k
    return x_train, x_test, (h, w)


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    csv_path: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.2,
    split: str = "random",
    seed: int = 0,
    downsample: int = 1,
    max_train: int | None = None,
) -> Dataset:
    """Load, split and standardise a dataset.

    Args:
        name: ``"iris"``, ``"wine"``, ``"breast_cancer"``, ``"digits"`` (scikit-learn's bundled
            data), ``"circles"`` (``make_circles(n_samples=1000, noise=0.1, factor=0.5,
            random_state=0)``: 2 features, 2 classes), ``"moons"`` (``make_moons(n_samples=1000,
            noise=0.2, random_state=0)``: 2 features, 2 classes), ``"classification"``
            (``make_classification(n_samples=2000, n_features=20, n_informative=10,
            n_classes=4, random_state=0)``: 20 features, 4 classes), ``"mnist"``, ``"mnist1d"``
            (40-sample 1-D signals of the ``mnist1d`` package, generated offline and cached) or
            ``"csv"`` (case-insensitive).
        data_dir: MNIST folder with the IDX files; default ``$GNCA_DATA``. Ignored otherwise.
        csv_path: CSV file for ``name="csv"`` (features first, label last, optional header).
        test_fraction: test share in (0, 1) for ``split="random"``.
        split: ``"random"`` (seeded, stratified; MNIST pools all 70,000 images, mnist1d its
            5,000) or ``"standard"`` (MNIST's own 60k/10k split, mnist1d's 4,000/1,000).
        seed: seed of the random split and of the ``max_train`` subsample.
        downsample: ``k``: ``k x k`` average pooling of images (digits, mnist) before
            standardising; ``H`` and ``W`` must be divisible by ``k``.
        max_train: keep a seeded random subset of at most this many training samples (after the
            split, before standardising); ``None`` keeps all.

    Returns:
        A :class:`Dataset`; X rows are ``(F,)`` float32, images flattened row-major.

    Raises:
        DataError: for any invalid option or unreadable data, with a one-line explanation.
    """
    name, test_fraction, seed, k, max_train = _check_options(
        name, split, test_fraction, seed, downsample, max_train
    )
    scale = 1.0  # maximum raw pixel value of image data
    if name == "mnist":
        train_x, train_y, test_x, test_y = _mnist_split(data_dir, split, test_fraction, seed)
        scale, n_classes = 255.0, 10
    elif name == "mnist1d":
        train_x, train_y, test_x, test_y = _mnist1d_split(split, test_fraction, seed)
        n_classes = 10
    else:
        x, y, class_names = _read_table(name, csv_path)
        n_classes = len(class_names) if class_names is not None else int(y.max()) + 1
        if name == "digits":
            x = x.reshape(-1, 8, 8)
            scale = 16.0
        what = f"CSV file {csv_path}" if name == "csv" else name
        tr, te = stratified_split(y, test_fraction, seed, what, class_names)
        train_x, train_y, test_x, test_y = x[tr], y[tr], x[te], y[te]

    keep = _subsample(len(train_y), max_train, seed)
    if keep is not None:
        train_x, train_y = train_x[keep], train_y[keep]
    return _standardised(name, train_x, train_y, test_x, test_y, n_classes, scale, k)


def _check_options(
    name: str,
    split: str,
    test_fraction: float,
    seed: int,
    downsample: int,
    max_train: int | None,
) -> tuple[str, float, int, int, int | None]:
    """:func:`load_dataset`'s options checked (a :class:`DataError` for the first bad one):
    ``(name, test_fraction, seed, downsample, max_train)`` normalised."""
    if not isinstance(name, str) or name.strip().lower() not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    name = name.strip().lower()
    if split not in ("random", "standard"):
        raise DataError(
            f"unknown split {split!r}; use 'random' or 'standard' (mnist and mnist1d only)"
        )
    if split == "standard" and name not in ("mnist", "mnist1d"):
        raise DataError(
            f"split='standard' only exists for mnist (its 60k/10k split) and mnist1d (4,000/"
            f"1,000); use split='random' for {name}"
        )
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float, np.floating))
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise DataError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    seed = _check_int(seed, "seed", 0)
    k = _check_int(downsample, "downsample", 1)
    if max_train is not None:
        max_train = _check_int(max_train, "max_train", 1)
    if k > 1 and name not in IMAGE_DATASETS:
        raise DataError(
            f"downsample={k} only applies to image datasets (digits, mnist), not {name}; use 1"
        )
    return name, float(test_fraction), seed, k, max_train


def _mnist1d_split(
    split: str, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mnist1d's signals and labels: its standard 4,000/1,000 split, as its package generates it
    with its default arguments (cached in gnca's cache folder), or a seeded stratified split of
    all 5,000."""
    d = _mnist1d_arrays()
    if split == "standard":
        return d["x"], d["y"], d["x_test"], d["y_test"]
    x = np.concatenate([d["x"], d["x_test"]])
    y = np.concatenate([d["y"], d["y_test"]])
    tr, te = stratified_split(y, test_fraction, seed, "mnist1d")
    return x[tr], y[tr], x[te], y[te]


def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """The default mnist1d dataset (``x (4000, 40)``, ``y``, ``x_test (1000, 40)``, ``y_test``),
    generated once by the ``mnist1d`` package and cached as ``mnist1d.npz``."""
    import pooch

    cache = Path(os.environ.get("GNCA_CACHE") or pooch.os_cache("gnca"))
    path = cache / "mnist1d.npz"
    if path.is_file():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError(
            "dataset mnist1d needs the mnist1d package: pip install 'gnca[mnist1d]'"
        ) from None
    made = make_dataset(get_dataset_args())
    out = {
        "x": np.asarray(made["x"], dtype=np.float32),
        "y": np.asarray(made["y"], dtype=np.int64),
        "x_test": np.asarray(made["x_test"], dtype=np.float32),
        "y_test": np.asarray(made["y_test"], dtype=np.int64),
    }
    cache.mkdir(parents=True, exist_ok=True)
    from gnca.files import atomic_write

    atomic_write(path, lambda f: np.savez(f, **out))
    return out


def _mnist_split(
    data_dir: str | os.PathLike[str] | None, split: str, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST's training images and labels and test images and labels: its own 60k/10k split
    (``split="standard"``) or a seeded stratified split of all 70,000 images."""
    tr_img, tr_lab, te_img, te_lab = load_mnist_idx(_resolve_mnist_dir(data_dir))
    if split == "standard":
        train_x, train_y, test_x, test_y = tr_img, tr_lab, te_img, te_lab
    else:
        images = np.concatenate([tr_img, te_img])
        labels = np.concatenate([tr_lab, te_lab])
        tr, te = stratified_split(labels, test_fraction, seed, "mnist")
        train_x, train_y, test_x, test_y = images[tr], labels[tr], images[te], labels[te]
    return train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64)


def _read_table(
    name: str, csv_path: str | os.PathLike[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Features ``(N, F)`` float64, labels ``(N,)`` int64 and (CSV only) the class names of a
    scikit-learn dataset (bundled or generated with fixed seeds, :data:`TABLES`; digits) or of
    the CSV file."""
    if name == "csv":
        if csv_path is None or str(csv_path) == "":
            raise DataError("dataset 'csv' needs a file: pass data.csv_path in the config")
        path = Path(csv_path).expanduser()
        if not path.is_file():
            raise DataError(f"CSV file {path} not found (data.csv_path)")
        return _read_csv(path)
    from sklearn import datasets as skd

    generated = {
        "circles": lambda: skd.make_circles(n_samples=1000, noise=0.1, factor=0.5, random_state=0),
        "moons": lambda: skd.make_moons(n_samples=1000, noise=0.2, random_state=0),
        "classification": lambda: skd.make_classification(
            n_samples=2000, n_features=20, n_informative=10, n_classes=4, random_state=0
        ),
    }
    if name in generated:
        data, target = generated[name]()
    else:
        loader = {"iris": skd.load_iris, "wine": skd.load_wine,
                  "breast_cancer": skd.load_breast_cancer, "digits": skd.load_digits}  # fmt: skip
        bunch = loader[name]()
        data, target = bunch.data, bunch.target
    return np.asarray(data, dtype=np.float64), np.asarray(target, dtype=np.int64), None


def _standardised(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    scale: float,
    k: int,
) -> Dataset:
    """The :class:`Dataset` of the split: images (digits, mnist) pooled ``k x k``, scaled by
    ``scale`` and flattened, tables standardised, both with the training split's statistics."""
    image_shape: tuple[int, int] | None = None
    if name in ("digits", "mnist"):
        h, w = train_x.shape[1:]
        if h % k or w % k:
            raise DataError(
                f"downsample={k} does not divide the {h}x{w} images of {name}; "
                f"choose a divisor of {h if h == w else f'{h} and {w}'}"
            )
        x_train, x_test, image_shape = _prepare_images(train_x, test_x, scale, k)
    else:
        x_train, x_test = _standardise_tabular(train_x, test_x)

    return Dataset(
        name=name,
        X_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
        X_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        n_features=int(x_train.shape[1]),
        n_classes=n_classes,
        image_shape=image_shape,
    )
