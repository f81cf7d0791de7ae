"""Native LRP (tf_ecqx.relevance.lrp) against the real iNNvestigate 2.1.2, run in its worker process (no mocks).

Both start from the logit of the same target class per sample, and both give per-sample heatmaps. Inputs are real
digits (sklearn's bundled 8x8 images); weights are Keras' random initialisation with random biases and BatchNorm
statistics, so bias handling is exercised.

Where the definitions differ, the comparison is against an equivalent model instead:
- BatchNormalization: iNNvestigate applies the layer rule to BN as a layer of its own (with 1/sqrt(var² + eps)); we
  canonize (fold BN into the conv before it). So the canonizing composites are compared with iNNvestigate on the model
  whose BN layers are folded by hand; `lrp.flat` (BN passed) runs on the BN model itself, where iNNvestigate's flat BN
  mapping is the identity too. Pass-through BN is tested on its own in test_relevance.py.
- keras.layers.ReLU: iNNvestigate routes relevance through the ReLU gradient, we pass it (tested in test_relevance.py);
  the architectures here use Activation("relu") layers or activations inside layers, which both libraries pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.relevance import COMPOSITES, InnvestigateBackend, lrp

BATCH = 16
TOLERANCE = 1e-5
RULES = [
    "lrp.epsilon",
    "lrp.z_plus",
    "lrp.alpha_2_beta_1",
    "lrp.flat",
    "lrp.sequential_composite_a",
    "lrp.sequential_preset_b_flat",
    "lrp.alpha_1_beta_0",
    "lrp.w_square",
]
layers = keras.layers


def mlp() -> keras.Model:
    inputs = keras.Input((64,))
    x = layers.Dense(32, activation="relu")(inputs)
    x = layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def cnn_max_pooling() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(8, 2, padding="same")(x)
    x = layers.Activation("relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def cnn_batch_norm(batch_norm: bool = True) -> keras.Model:
    """Conv -> BN -> ReLU twice; batch_norm=False builds the same net with BN folded into the convs (biases on)."""
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, use_bias=not batch_norm)(inputs)
    if batch_norm:
        x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(8, 3)(x)
    if batch_norm:
        x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def residual() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    y = layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = layers.Add()([x, y])
    x = layers.ZeroPadding2D(1)(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def conv1d_concat() -> keras.Model:
    """Rows of the digit as a sequence: Conv1D (same, causal), average- and max-pooling branches, Concatenate."""
    inputs = keras.Input((8, 8))
    x = layers.Conv1D(4, 3, padding="same", activation="relu")(inputs)
    a = layers.AveragePooling1D(2)(x)
    b = layers.MaxPooling1D(2)(layers.Conv1D(4, 3, padding="causal", activation="relu")(x))
    x = layers.Flatten()(layers.Concatenate()([a, b]))
    return keras.Model(inputs, layers.Dense(10)(x))


ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "mlp": mlp,
    "cnn_max_pooling": cnn_max_pooling,
    "cnn_batch_norm": cnn_batch_norm,
    "residual": residual,
    "conv1d_concat": conv1d_concat,
}


RANDOM = {
    "bias": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "beta": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "gamma": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
    "moving_mean": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
}


def randomized(model: keras.Model, seed: int = 0) -> keras.Model:
    """Random biases and BatchNorm parameters/statistics (the initialisers make them 0/1, hiding their handling)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        draw = RANDOM.get(w.name.split("/")[-1].split(":")[0])
        if draw is not None:
            w.assign(draw(rng, tuple(w.shape)).astype(np.float32))
    return model


def folded(model: keras.Model) -> keras.Model:
    """The cnn_batch_norm model with each BatchNormalization folded into the conv before it."""
    plain = cnn_batch_norm(batch_norm=False)
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    for conv, norm, target in zip(
        convs, norms, [layer for layer in plain.layers if isinstance(layer, layers.Conv2D)], strict=True
    ):
        gamma, beta, mean, variance = norm.get_weights()
        # the float32 operations of the canonization, in its order: the αβ rules' near-zero inhibitory denominators
        # would magnify a different rounding of the folded weights
        scale = tf.math.rsqrt(variance + norm.epsilon).numpy() * gamma
        kernel = conv.get_weights()[0]
        bias = -mean * scale + beta
        if conv.use_bias:
            bias += conv.get_weights()[1] * scale
        target.set_weights([kernel * scale, bias])
    plain.layers[-1].set_weights(model.layers[-1].get_weights())
    return plain


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x[:BATCH] / 16.0).astype(np.float32), y[:BATCH]


@pytest.fixture(scope="module")
def backend() -> Iterator[InnvestigateBackend]:
    with InnvestigateBackend() as started:
        yield started


def max_relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs|."""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_input_relevance_matches_innvestigate(backend, digits, architecture, rule):
    model = randomized(ARCHITECTURES[architecture]())
    x, y = digits
    x = x.reshape((BATCH, *model.inputs[0].shape[1:]))
    ours = lrp(model, x, y, composite=rule, output="output").input
    reference = folded(model) if architecture == "cnn_batch_norm" and COMPOSITES[rule].bn == "canonize" else model
    theirs = backend.analyze(reference, x, rule, neuron_selection=y)
    assert ours.shape == theirs.shape == x.shape
    assert np.abs(theirs).max() > 0
    assert max_relative_difference(ours, theirs) <= TOLERANCE


def test_folded_model_is_the_same_function(digits):
    """The hand-folded reference really computes what the BatchNorm model computes."""
    model = randomized(cnn_batch_norm())
    x = digits[0].reshape(-1, 8, 8, 1)
    np.testing.assert_allclose(folded(model)(x).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_qat_model_matches_innvestigate_on_the_stripped_model(backend, digits):
    """A tf_ecqx QAT model (Sequential here) explained natively equals iNNvestigate on strip(qmodel): the quantized
    kernels with float activations."""
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"), layers.Flatten(), layers.Dense(10)]
    )
    qmodel = tf_ecqx.quantize_model(randomized(model), bits=4, lambda_=0.2)
    x, y = digits
    x = x.reshape(-1, 8, 8, 1)
    for rule in ("lrp.epsilon", "lrp.sequential_preset_b_flat"):
        ours = lrp(qmodel, x, y, composite=rule).input
        theirs = backend.analyze(tf_ecqx.strip(qmodel), x, rule, neuron_selection=y)
        assert max_relative_difference(ours, theirs) <= TOLERANCE


def test_predicted_class_matches_innvestigate_max_activation(backend, digits):
    """y=None (our predicted class) is iNNvestigate's max_activation neuron selection."""
    model = randomized(cnn_max_pooling())
    x = digits[0].reshape(-1, 8, 8, 1)
    ours = lrp(model, x, composite="lrp.epsilon").input
    theirs = backend.analyze(model, x, "lrp.epsilon")
    assert max_relative_difference(ours, theirs) <= TOLERANCE


def test_backend_reports_worker_errors(backend, digits):
    model = mlp()
    with pytest.raises(RuntimeError, match="no_such_analyzer"):
        backend.analyze(model, digits[0], "no_such_analyzer")
    assert backend.analyze(model, digits[0], "lrp.epsilon").shape == digits[0].shape  # the worker lives on
