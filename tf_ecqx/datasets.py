"""Fashion-MNIST: through tensorflow-datasets when it can download, else from local IDX files. Never synthetic."""

from __future__ import annotations

import gzip
import os
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


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) as a numpy array; fail clearly on a corrupt one."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
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


def load_npz(path: str | os.PathLike) -> tuple[Split, Split]:
    """(train, test) from an .npz file with arrays x_train, y_train, x_test, y_test (images as in Split or uint8)."""
    with np.load(path) as arrays:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)}; it needs x_train, y_train, x_test, y_test.")
        splits = []
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].astype(np.int64).reshape(-1)
            x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
            if len(x) == 0 or len(x) != len(y):
                raise ValueError(f"{path}: {len(x)} {split} samples and {len(y)} labels; both must be equal and > 0.")
            splits.append(Split(x, y))
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
