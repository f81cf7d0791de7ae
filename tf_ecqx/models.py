"""The reference float models used by the demo, the benchmarks and the tests, and their cached training."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tf_ecqx import files
from tf_ecqx._keras import keras
from tf_ecqx.datasets import Split

CACHE_DIR = Path(os.environ.get("TF_ECQX_CACHE", Path.home() / ".cache" / "tf_ecqx"))


def demo_cnn() -> keras.Model:
    """Small Fashion-MNIST CNN: two conv/pool stages and two dense layers (about 110k weights)."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


def mlp() -> keras.Model:
    """Fashion-MNIST MLP 784-512-256-10 with ReLU."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(512, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(256, activation="relu", name="fc2")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="mlp")


def residual_cnn() -> keras.Model:
    """Fashion-MNIST CNN with BatchNormalization and a residual block (conv-BN-ReLU, two convs added back)."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(16, 3, use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="res_conv1")(x)
    y = keras.layers.Conv2D(16, 3, padding="same", name="res_conv2")(y)
    x = keras.layers.Add(name="residual")([x, y])
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="residual_cnn")


ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {"demo_cnn": demo_cnn, "mlp": mlp, "residual_cnn": residual_cnn}


# The smallest widths of the keras.applications models that have one (tests/test_model_zoo.py, tools/export_drift.py).
APPLICATION_OPTIONS = {
    "MobileNet": {"alpha": 0.25},
    "MobileNetV2": {"alpha": 0.35},
    "MobileNetV3Small": {"alpha": 0.75},
}


def application_model(name: str, size: int = 32, **options: Any) -> keras.Model:
    """keras.applications `name` for size x size x 3 inputs (32x32x3 by default) and 10 logits, at its smallest width
    unless `options` say otherwise (e.g. alpha=1.0), from random weights (no hub is reachable here). Its
    BatchNormalization statistics move fast (momentum 0.5), so that after a few steps its inference-mode outputs
    depend on the input, as a trained model's do."""
    model = getattr(keras.applications, name)(
        input_shape=(size, size, 3),
        weights=None,
        classes=10,
        classifier_activation=None,
        **{**APPLICATION_OPTIONS.get(name, {}), **options},
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5
    return model


def rgb32(images: np.ndarray) -> np.ndarray:
    """28x28x1 images (Fashion-MNIST) padded to 32x32 and repeated to three channels: the input of application_model."""
    return np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)


def compile_for_classification(
    model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3
) -> keras.Model:
    """Adam + sparse categorical cross-entropy on logits + accuracy (the reference training setup)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def trained_float_model(
    name: str, train: Split, epochs: int = 3, batch_size: int = 64, seed: int = 0, verbose: int = 2
) -> keras.Model:
    """The float model `name` trained on `train`, from the cache when it was trained before with these settings."""
    path = CACHE_DIR / f"{name}_e{epochs}_b{batch_size}_s{seed}_n{len(train.x)}.keras"

    def fit(model: keras.Model) -> None:
        model.fit(train.as_dataset(batch_size, shuffle=True, seed=seed), epochs=epochs, verbose=verbose)

    return _cached(path, name, seed, fit)


def converged_float_model(
    name: str,
    train: Split,
    batch_size: int = 64,
    seed: int = 0,
    validation_fraction: float = 0.1,
    patience: int = 5,
    max_epochs: int = 100,
    verbose: int = 2,
) -> keras.Model:
    """The float model `name` trained until its loss on a validation split of `train` (a seeded `validation_fraction`
    of it, never the test set) has not improved for `patience` epochs, with the best epoch's weights; cached.

    The baseline issue 17 asks for: a model still learning (3 epochs) makes "within 0.5 pp of float" meaningless.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction!r} must lie in (0, 1).")
    path = (
        CACHE_DIR / f"{name}_converged_p{patience}_v{validation_fraction}_b{batch_size}_s{seed}_n{len(train.x)}.keras"
    )

    def fit(model: keras.Model) -> None:
        order = np.random.default_rng(seed).permutation(len(train.x))
        held_out = order[: int(round(validation_fraction * len(order)))]
        kept = order[len(held_out) :]
        stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
        fitted = Split(train.x[kept], train.y[kept]).as_dataset(batch_size, shuffle=True, seed=seed)
        validation = (train.x[held_out], train.y[held_out])
        model.fit(fitted, validation_data=validation, epochs=max_epochs, callbacks=[stop], verbose=verbose)

    return _cached(path, name, seed, fit)


def _cached(path: Path, name: str, seed: int, fit: Callable[[keras.Model], None]) -> keras.Model:
    """The model at `path` if it loads, else ARCHITECTURES[name] compiled, `fit` from `seed`, and saved there."""
    if path.exists():
        try:
            return compile_for_classification(keras.models.load_model(path, compile=False))
        except Exception as error:  # a damaged cache file fails in zipfile, h5py or Keras, with many error types
            warnings.warn(
                f"The cached float model {path} cannot be loaded ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); training it again and replacing the file.",
                stacklevel=3,
            )
    keras.utils.set_random_seed(seed)
    model = compile_for_classification(ARCHITECTURES[name]())
    fit(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as partial:  # unique per writer: parallel test workers may train the same model
        model.save(partial)
    return model
