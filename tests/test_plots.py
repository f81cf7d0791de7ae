"""plots.plot_relevance: a readable PNG grid of input-relevance heatmaps, and clear errors for what it cannot plot."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from conftest import small_cnn
from matplotlib.image import imread

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.plots import plot_relevance


@pytest.fixture(scope="module")
def cnn() -> keras.Model:
    return small_cnn()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 1.0, (5, 28, 28, 1)).astype(np.float32)


def test_png_grid_of_heatmaps(cnn, images, tmp_path):
    backend = matplotlib.get_backend()
    path = plot_relevance(cnn, images, tmp_path / "plots" / "relevance.png", y=np.arange(5), columns=3)
    assert path == tmp_path / "plots" / "relevance.png" and path.is_file()
    pixels = imread(path)
    height, width, channels = pixels.shape
    assert channels in (3, 4) and pixels.std() > 0
    assert 300 < width < 1200 and height > width  # 3 columns, 2 rows of image + heatmap pairs
    assert matplotlib.get_backend() == backend  # the user's backend is untouched


def test_gray_images_without_channel_axis_and_a_qat_model(images, tmp_path):
    inputs = keras.Input((28, 28))
    x = keras.layers.Conv1D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    assert imread(plot_relevance(model, images[..., 0], tmp_path / "gray.png")).ndim == 3
    qmodel = tf_ecqx.quantize_model(small_cnn(), bits=4)
    assert plot_relevance(qmodel, images[:2], tmp_path / "qat.png", columns=8).is_file()


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((0, 28, 28, 1), np.float32), "non-empty batch of images"),
        (np.zeros((4, 784), np.float32), r"got shape \(4, 784\)"),
        (np.zeros((2, 28, 28, 1, 1), np.float32), "non-empty batch of images"),
        (np.zeros((2, 14, 14, 1), np.float32), "expects"),
    ],
)
def test_refuses_what_is_not_an_image_batch_for_the_model(cnn, tmp_path, x, match):
    with pytest.raises(ValueError, match=match):
        plot_relevance(cnn, x, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_refuses_bad_columns(cnn, images, tmp_path):
    with pytest.raises(ValueError, match="columns"):
        plot_relevance(cnn, images, tmp_path / "r.png", columns=0)
