"""Shared fixtures: real Fashion-MNIST samples and small models. Fashion-MNIST comes from local IDX files."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hypothesis import settings

from tf_ecqx import datasets
from tf_ecqx._keras import keras

# CI runs the property tests on fixed examples (derandomized), so a submission's result does not hang on the draw;
# local runs keep drawing new ones to find edge cases.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The fast tier (`make test-fast`, `pytest -m fast`): the numeric core, the quantization API, file writing, the
# architecture and the bad-input matrix, less the tests marked slow. `make test` runs everything.
FAST_MODULES = {
    "test_ecq_grid",
    "test_ecq_assign",
    "test_ecqx_assign",
    "test_quantization",
    "test_bad_input",
    "test_files",
    "test_architecture",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__ in FAST_MODULES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def fashion() -> tuple[datasets.Split, datasets.Split]:
    try:
        return datasets.fashion_mnist(use_tfds=False)
    except FileNotFoundError as error:
        pytest.fail(f"Fashion-MNIST is needed for this test and `make test` installs it: {error}")


@pytest.fixture(scope="session")
def fashion_small(fashion) -> tuple[datasets.Split, datasets.Split]:
    """2048 training and 512 test images of real Fashion-MNIST."""
    train, test = fashion
    return datasets.Split(train.x[:2048], train.y[:2048]), datasets.Split(test.x[:512], test.y[:512])


def small_cnn(batch_norm: bool = False, residual: bool = False) -> keras.Model:
    """A small functional CNN on 28x28x1 with optional BatchNormalization and a residual Add."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=not batch_norm)(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    if residual:
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        x = keras.layers.Add()([x, y])
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.1)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def trained_bn_cnn(fashion_small) -> keras.Model:
    """small_cnn(batch_norm=True) trained one epoch on fashion_small (seed 0): a float model to quantize."""
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    model = small_cnn(batch_norm=True)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train.x, train.y, batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
