import gzip

import numpy as np
import pytest

from tf_ecqx import datasets


def test_fashion_mnist_is_the_real_dataset(fashion):
    train, test = fashion
    assert train.x.shape == (60000, 28, 28, 1) and test.x.shape == (10000, 28, 28, 1)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert set(np.unique(train.y)) == set(range(10))
    assert np.bincount(train.y).tolist() == [6000] * 10  # Fashion-MNIST is balanced, 6000 per class
    batch = next(iter(test.as_dataset(32)))
    assert batch[0].shape == (32, 28, 28, 1)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_reads_a_user_directory(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.array([3, 7]))
    train, test = datasets.fashion_mnist(tmp_path)
    np.testing.assert_allclose(train.x[..., 0] * 255, images)
    assert test.y.tolist() == [3, 7]


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        datasets._read_idx(path)


def test_missing_data_names_every_way_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.delenv(datasets.ENV_DIR, raising=False)
    with pytest.raises(
        FileNotFoundError, match="dataset-fashion-mnist.*TF_ECQX_FASHION_MNIST_DIR.*tensorflow-datasets"
    ):
        datasets.fashion_mnist(use_tfds=False)
    with pytest.raises(FileNotFoundError, match="lacks the Fashion-MNIST train files"):
        datasets.fashion_mnist(tmp_path)
