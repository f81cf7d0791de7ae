"""Fashion-MNIST: through tensorflow-datasets when it can download, else from local IDX files. Never synthetic."""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "TF_ECQX_FASHION_MNIST_DIR"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class Split(NamedTuple):
    """Images as float32 in [0, 1] with shape (n, 28, 28, 1) and int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def as_dataset(self, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((self.x, self.y))
        if shuffle:
            ds = ds.shuffle(len(self.x), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def labelled_batches(data: object, batch_size: int, user: str) -> tf.data.Dataset:
    """(x, y) batches from a tf.data.Dataset (used as it is) or a pair of arrays (batched in order); `user` names the
    caller in the error for anything else."""
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tf.data.Dataset.from_tensor_slices((np.asarray(data[0]), np.asarray(data[1]))).batch(batch_size)
    raise ValueError(
        f"{user} data must be a tf.data.Dataset of (x, y) batches or a pair (x, y) of arrays; "
        f"got {type(data).__name__}."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) as a numpy array; fail clearly on a corrupt one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path} is truncated or corrupt ({error}); re-download it.") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number); re-download it.")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {body.size} values; re-download it.")
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def load_idx_dir(directory: str | os.PathLike) -> tuple[Split, Split]:
    """(train, test) from a directory holding the four Fashion-MNIST IDX files (gzipped or not)."""
    directory = Path(directory)
    splits = []
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images, labels = _find(directory, images_stem), _find(directory, labels_stem)
        if images is None or labels is None:
            raise FileNotFoundError(
                f"{directory} lacks the Fashion-MNIST {split} files {images_stem}[.gz], {labels_stem}[.gz]."
            )
        x = _read_idx(images).astype(np.float32)[..., None] / 255.0
        y = _read_idx(labels).astype(np.int64)
        if len(x) != len(y):
            raise ValueError(f"{directory}: {len(x)} {split} images but {len(y)} labels.")
        splits.append(Split(x, y))
    return splits[0], splits[1]


def _load_tfds() -> tuple[Split, Split]:
    import tensorflow_datasets as tfds

    train, test = tfds.as_numpy(tfds.load("fashion_mnist", split=["train", "test"], batch_size=-1, as_supervised=True))
    return tuple(Split(x.astype(np.float32) / 255.0, y.astype(np.int64)) for x, y in (train, test))


def fashion_mnist(directory: str | os.PathLike | None = None, use_tfds: bool = True) -> tuple[Split, Split]:
    """Fashion-MNIST (train 60k, test 10k).

    Looks in `directory`, else $TF_ECQX_FASHION_MNIST_DIR, else the Debian package's files, else asks
    tensorflow-datasets (which needs a download). Raises a FileNotFoundError naming every way when none works.
    """
    candidates = [Path(p) for p in (directory, os.environ.get(ENV_DIR)) if p] + [DEBIAN_DIR]
    for candidate in candidates:
        if candidate.is_dir() and all(_find(candidate, stem) for pair in IDX_FILES.values() for stem in pair):
            return load_idx_dir(candidate)
    if directory is not None:
        return load_idx_dir(directory)  # raises, naming what is missing there
    tfds_error = "skipped (use_tfds=False)"
    if use_tfds:
        try:
            return _load_tfds()
        except Exception as error:  # tfds raises many kinds on a failed download
            tfds_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    raise FileNotFoundError(
        "Fashion-MNIST is not available. Either install the IDX files "
        "(Debian: `apt-get install dataset-fashion-mnist`, "
        f"which puts them in {DEBIAN_DIR}; or set ${ENV_DIR} / pass directory= to a folder with "
        "train-images-idx3-ubyte.gz etc.), or let tensorflow-datasets download it "
        f"(tried: {tfds_error})."
    )


def check_split(split: Split, where: str) -> Split:
    """The split, if it has samples, finite images and non-negative integer labels, one per image; else a ValueError
    naming the problem (NaN pixels would make training diverge, fractional labels would be truncated silently)."""
    x, y = split
    if len(x) == 0 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"{where}: {len(x)} samples and labels of shape {y.shape}; need as many labels as samples, > 0."
        )
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{where}: images ({x.dtype}) and labels ({y.dtype}) must be numeric arrays.")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{where}: {bad.size} images contain NaN or inf values (first: sample {bad[0]}); remove or repair them."
        )
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or np.any(y < 0):
        raise ValueError(
            f"{where}: labels must be integer class indices >= 0 (found values from {np.min(y)!r} to {np.max(y)!r}); "
            "pass integer labels, not one-hot rows or probabilities."
        )
    return Split(x.astype(np.float32), y.astype(np.int64))


def check_fits(split: Split, input_shape: tuple, classes: int, where: str) -> None:
    """A ValueError unless the images have the model's input shape and the labels index its `classes` outputs."""
    if tuple(split.x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{where}: images of shape {tuple(split.x.shape[1:])}, but the model takes {tuple(input_shape)}. Pass "
            "data shaped like the model's input (resize or reshape it first)."
        )
    if int(split.y.max()) >= classes:
        raise ValueError(
            f"{where}: labels up to {int(split.y.max())}, but the model has {classes} outputs (classes 0 to "
            f"{classes - 1}). Pass the data the model was trained on."
        )


def load_npz(path: str | os.PathLike) -> tuple[Split, Split]:
    """(train, test) from an .npz file with arrays x_train, y_train, x_test, y_test (images as in Split or uint8)."""
    try:
        archive = np.load(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error}); write it again with np.savez.") from error
    with archive as arrays:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)}; it needs x_train, y_train, x_test, y_test.")
        splits = []
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if x.dtype == np.uint8:
                x = x.astype(np.float32) / 255.0
            splits.append(
                check_split(Split(x, y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y), f"{path} {split}")
            )
    return splits[0], splits[1]


def load(spec: str) -> tuple[Split, Split]:
    """(train, test) named the way the CLI takes data: "fashion_mnist", a directory of IDX files, or an .npz file."""
    if spec == "fashion_mnist":
        return fashion_mnist()
    path = Path(spec)
    if path.is_dir():
        return load_idx_dir(path)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path)
    raise ValueError(
        f"data {spec!r} is neither 'fashion_mnist', a directory with the four IDX files, nor an existing .npz file "
        "with x_train, y_train, x_test, y_test."
    )
