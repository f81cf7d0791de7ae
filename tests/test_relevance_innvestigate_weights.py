"""Per-weight relevances through iNNvestigate 2.1.2 (real, in its worker process) against the native engine.

iNNvestigate gives the relevance at each kernel layer's output; the native ε weight rule turns it into per-weight
relevances. For rules both libraries define identically, that must equal native `lrp(...).weights`. The models, data and
the one worker per module come from test_relevance_parity.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_relevance_parity as parity
from test_relevance_parity import TOLERANCE, cnn_max_pooling, max_relative_difference, mlp, randomized, residual

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.relevance import Composite, Epsilon, lrp
from tf_ecqx.relevance.propagation import weight_relevances_from_outputs

backend = parity.backend  # the module-scoped fixture: one worker for this module
digits = parity.digits  # fixture: 16 real digits and their classes
# residual: a conv output read twice (by Add and the next conv) gets the sum of both relevances; DepthwiseConv2D
ARCHITECTURES = {"mlp": mlp, "cnn_max_pooling": cnn_max_pooling, "residual": residual}
RULES = ["lrp.epsilon", "lrp.alpha_2_beta_1"]  # COMPOSITES holds the same rules under these names


def shaped(model: keras.Model, data: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The digits batch reshaped for the model's input."""
    x, y = data
    return x.reshape((len(x), *model.inputs[0].shape[1:])), y


def assert_same_weights(theirs: dict[str, np.ndarray], ours: dict[str, np.ndarray]) -> None:
    assert theirs.keys() == ours.keys()
    for name, relevance in ours.items():
        assert theirs[name].shape == relevance.shape
        assert np.abs(relevance).max() > 0, name
        assert max_relative_difference(theirs[name], relevance) <= TOLERANCE, name


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_weight_relevances_match_native(backend, digits, architecture, rule):
    model = randomized(ARCHITECTURES[architecture]())
    x, y = shaped(model, digits)
    theirs = backend.weight_relevances(model, x, rule, neuron_selection=y)
    assert_same_weights(theirs, lrp(model, x, y, composite=rule).weights)


def test_qat_model_weight_relevances_match_native(backend, digits):
    """iNNvestigate runs on strip(qmodel); the weight rule reads the QAT model's quantized kernels, as native lrp."""
    qmodel = tf_ecqx.quantize_model(randomized(cnn_max_pooling()), bits=4)
    x, y = shaped(qmodel, digits)
    plain = tf_ecqx.strip(qmodel)
    for rule in RULES:
        theirs = backend.weight_relevances(qmodel, x, rule, neuron_selection=y, plain=plain)
        assert_same_weights(theirs, lrp(qmodel, x, y, composite=rule).weights)
    with pytest.raises(ValueError, match=r"pass plain=tf_ecqx.strip\(model\)"):
        backend.weight_relevances(qmodel, x, RULES[0], neuron_selection=y)


def test_predicted_class_and_input_relevance_still_work(backend, digits):
    """neuron_selection=None is the predicted class, as y=None natively; the input-relevance API is unchanged."""
    model = randomized(mlp())
    x, _ = shaped(model, digits)
    assert_same_weights(backend.weight_relevances(model, x), lrp(model, x, composite="lrp.epsilon").weights)
    assert backend.analyze(model, x).shape == x.shape


def test_analyzer_epsilon_also_rates_the_weights(backend, digits):
    """An ε passed to the iNNvestigate analyzer is the ε of the weight rule too, as in the lrp.* composites."""
    model = randomized(mlp())
    x, y = shaped(model, digits)
    theirs = backend.weight_relevances(model, x, "lrp.epsilon", neuron_selection=y, epsilon=0.5)
    composite = Composite(dense=Epsilon(0.5), conv=Epsilon(0.5), weight_epsilon=0.5)
    assert_same_weights(theirs, lrp(model, x, y, composite=composite).weights)


def test_weight_relevances_from_outputs_refuses_missing_or_misshaped_relevances(digits):
    model = mlp()
    x, _ = shaped(model, digits)
    names = [layer.name for layer in model.layers[1:]]
    relevances = {name: np.ones((len(x), layer.units)) for name, layer in zip(names, model.layers[1:])}
    missing = dict(list(relevances.items())[:-1])
    with pytest.raises(ValueError, match="no output relevance for"):
        weight_relevances_from_outputs(model, x, missing, 1e-6)
    with pytest.raises(ValueError, match="has shape"):
        weight_relevances_from_outputs(model, x, {**relevances, names[0]: np.ones((len(x), 3))}, 1e-6)
    weights = weight_relevances_from_outputs(model, x, relevances, 1e-6)
    kernels = {layer.name: tuple(layer.kernel.shape) for layer in model.layers[1:]}
    assert {name: w.shape for name, w in weights.items()} == kernels
