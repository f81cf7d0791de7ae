"""Native LRP: hand-computed cases, conservation, our own definitions (BatchNorm, ReLU layers), QAT models, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn
from sklearn.datasets import load_digits

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.relevance import COMPOSITES, AlphaBeta, Composite, Epsilon, Flat, get_composite, lrp
from tf_ecqx.relevance.propagation import compiled_lrp

layers = keras.layers
TINY_EPSILON = Composite(dense=Epsilon(1e-9), conv=Epsilon(1e-9), weight_epsilon=1e-9)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x[:32] / 16.0).astype(np.float32).reshape(-1, 8, 8, 1), y[:32]


def dense(units: int, kernel: list[list[float]], bias: list[float] | None = None, **kwargs) -> layers.Dense:
    return layers.Dense(
        units,
        use_bias=bias is not None,
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(bias or 0.0),
        **kwargs,
    )


def cnn(use_bias: bool = True, batch_norm: bool = False, relu: str = "inside") -> keras.Model:
    """8x8 CNN with max pooling, a residual Add, average pooling; relu inside layers, as ReLU or Activation layers."""

    def act(x):
        return {"relu_layer": layers.ReLU, "activation_layer": lambda: layers.Activation("relu")}[relu]()(x)

    inner = "relu" if relu == "inside" else None
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, use_bias=use_bias and not batch_norm, activation=None if batch_norm else inner)(inputs)
    if batch_norm:
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
    elif relu != "inside":
        x = act(x)
    y = layers.Conv2D(4, 3, padding="same", use_bias=use_bias, activation=inner, name="branch")(x)
    y = y if relu == "inside" else act(y)
    x = layers.MaxPooling2D()(layers.Add()([x, y]))
    x = layers.DepthwiseConv2D(2, use_bias=use_bias, activation=inner)(x)
    x = x if relu == "inside" else act(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, use_bias=use_bias)(x))


def with_random_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma, beta, mean, variance = (
                rng.uniform(0.5, 1.5, n),
                rng.normal(0, 0.1, n),
                rng.normal(0, 0.1, n),
                rng.uniform(0.5, 2, n),
            )
            layer.set_weights([gamma, beta, mean, variance])
    return model


def target_logits(model: keras.Model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return model(x).numpy()[np.arange(len(y)), y]


# hand-computed cases -------------------------------------------------------------------------------------------------


def test_dense_weight_relevance_by_hand():
    """One Dense layer, ε rule, R_n0 = z_n0: the input relevance is a_ni w_i0 per sample; the weight relevance is the
    batch mean R_i0 = Σ_n a_ni w_i0 R_n0 / z_n0 / B = w_i0 Σ_n a_ni / B."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, dense(2, [[1.0, 2.0], [3.0, -1.0]], [0.5, 0.0])(inputs))
    x = np.array([[1.0, 2.0], [2.0, 0.0]], np.float32)
    relevances = lrp(model, x, y=[0, 0], composite="epsilon")
    np.testing.assert_allclose(relevances.weights[model.layers[1].name], [[1.5, 0.0], [3.0, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(relevances.input, [[1.0, 6.0], [2.0, 0.0]], rtol=1e-5)  # the bias keeps 0.5


def test_weight_relevance_uses_the_relevance_arriving_from_above():
    """Two Dense layers, x = (1, 1): h = relu(x W1) = (2, 1), logit 3; R_h = (2, 1), so R_W1 = x_i w_ij R_j / z_j = W1.

    The weight relevance is the ε rule whatever the composite's input rule: with the flat rule on the first layer the
    input relevance changes to (1.5, 1.5) but R_W1 does not.
    """
    inputs = keras.Input((2,))
    hidden = dense(2, [[1.0, -1.0], [1.0, 2.0]], activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, dense(2, [[1.0, 0.0], [1.0, 0.0]], name="logits")(hidden))
    x = np.ones((1, 2), np.float32)
    eps = lrp(model, x, y=[0], composite="epsilon")
    np.testing.assert_allclose(eps.weights["logits"], [[2.0, 0.0], [1.0, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(eps.weights["hidden"], [[1.0, -1.0], [1.0, 2.0]], rtol=1e-5)
    np.testing.assert_allclose(eps.input, [[0.0, 3.0]], rtol=1e-5, atol=1e-6)
    flat = lrp(model, x, y=[0], composite="epsilon_plus_flat")
    np.testing.assert_allclose(flat.input, [[1.5, 1.5]], rtol=1e-5)
    np.testing.assert_allclose(flat.weights["hidden"], eps.weights["hidden"], rtol=1e-6)


# conservation --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", ["inside", "relu_layer"])
def test_epsilon_conserves_relevance_without_biases(digits, relu):
    """ε → 0, no biases: every layer (also max/avg pooling and Add) hands on all relevance, so each sample's heatmap
    sums to its target logit, and the weights of a layer on every path share the batch mean of the logits."""
    model = cnn(use_bias=False, relu=relu)
    x, y = digits
    relevances = lrp(model, x, y, composite=TINY_EPSILON)
    logits = target_logits(model, x, y)
    np.testing.assert_allclose(relevances.input.sum(axis=(1, 2, 3)), logits, rtol=1e-4, atol=1e-6)
    total = logits.mean()
    for name, r_w in relevances.weights.items():
        if name != "branch":
            assert r_w.sum() == pytest.approx(total, rel=1e-4), name


@pytest.mark.parametrize("output", ["ones", "probability"])
def test_output_modes(digits, output):
    """Each sample's output relevance at its target class (1 or its softmax) is conserved to its input."""
    keras.utils.set_random_seed(0)  # an unlucky init can leave a sample with no active path to its target
    model = cnn(use_bias=False)
    x, y = digits
    relevances = lrp(model, x, y, composite=TINY_EPSILON, output=output)
    logits = model(x).numpy()
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    start = np.ones(len(y)) if output == "ones" else probabilities[np.arange(len(y)), y]
    np.testing.assert_allclose(relevances.input.sum(axis=(1, 2, 3)), start, rtol=1e-4)


def segmentation_net(use_bias: bool = False, input_size: int | None = 8) -> keras.Model:
    """A dense prediction: per-pixel logits of 3 classes from a small encoder-decoder with a skip connection."""
    inputs = keras.Input((input_size, input_size, 1))
    skip = layers.Conv2D(4, 3, padding="same", use_bias=use_bias, activation="relu")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=use_bias, activation="relu")(skip)
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same", use_bias=use_bias, activation="relu")(x)
    return keras.Model(inputs, layers.Conv2D(3, 1, use_bias=use_bias)(layers.Concatenate()([skip, x])))


def test_a_dense_prediction_conserves_every_positions_target_logit(digits):
    """Segmentation-style output (batch, h, w, classes), a class per pixel: the reverse pass starts at every pixel's
    target logit, so with ε → 0 and no biases each heatmap sums to the sum of its target logits."""
    keras.utils.set_random_seed(0)
    model = segmentation_net()
    x, _ = digits
    masks = (x[..., 0] > 0.25).astype(np.int32) + (x[..., 0] > 0.75)  # background, stroke, stroke core
    relevances = lrp(model, x, masks, composite=TINY_EPSILON)
    logits = model(x).numpy()
    target = np.take_along_axis(logits, masks[..., None], axis=-1).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(relevances.input.sum(axis=(1, 2, 3)), target, rtol=1e-4, atol=1e-6)
    predicted = logits.argmax(axis=-1)
    np.testing.assert_array_equal(lrp(model, x).input, lrp(model, x, predicted).input)
    # a fully convolutional model takes any image size; the targets follow it
    any_size = segmentation_net(input_size=None)
    any_size.set_weights(model.get_weights())
    np.testing.assert_allclose(lrp(any_size, x, masks).input, lrp(model, x, masks).input, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"one integer class per sample and output position, shape \(32, 8, 8\)"):
        lrp(model, x, masks[:, :4])


def test_default_target_is_the_predicted_class(digits):
    model = cnn()
    x = digits[0]
    predicted = model(x).numpy().argmax(axis=1)
    np.testing.assert_array_equal(lrp(model, x).input, lrp(model, x, predicted).input)


# what users read: per-sample heatmaps, batch-mean weight relevances, iNNvestigate's ε ---------------------------------


@pytest.mark.parametrize("composite", ["epsilon_plus_flat_bn_pass", "epsilon_plus_flat"])
def test_heatmaps_are_per_sample_and_weight_relevances_the_batch_mean(fashion_small, composite):
    """A sample's heatmap is the same alone or in a batch of 64; the batch's weight relevances (what ECQx training
    uses) are the mean of its samples'."""
    _, test = fashion_small
    keras.utils.set_random_seed(0)
    model = with_random_statistics(small_cnn(batch_norm=True, residual=True))
    x, y = test.x[:64], test.y[:64]
    batch = lrp(model, x, y, composite=composite)
    alone = [lrp(model, x[i : i + 1], y[i : i + 1], composite=composite) for i in range(len(x))]
    heatmaps = np.concatenate([relevances.input for relevances in alone])
    assert np.abs(heatmaps).max() > 0
    np.testing.assert_allclose(batch.input, heatmaps, rtol=1e-5, atol=1e-6 * np.abs(heatmaps).max())
    for name, relevance in batch.weights.items():
        mean = np.mean([relevances.weights[name] for relevances in alone], axis=0)
        np.testing.assert_allclose(relevance, mean, rtol=1e-4, atol=1e-6 * np.abs(mean).max())


def test_lrp_epsilon_uses_innvestigates_epsilon_for_the_weights_too():
    """lrp.epsilon is iNNvestigate's ε = 1e-7 in the input pass and the weight relevances: for z = 1e-6 both keep the
    share z / (z + ε) = 1 / 1.1 of the relevance (ε = 1e-6 would keep 1 / 2)."""
    inputs = keras.Input((1,))
    model = keras.Model(inputs, dense(1, [[1e-6]], name="tiny")(inputs))
    relevances = lrp(model, np.ones((1, 1), np.float32), y=[0], composite="lrp.epsilon")
    np.testing.assert_allclose(relevances.input, [[1e-6 / 1.1]], rtol=1e-5)
    np.testing.assert_allclose(relevances.weights["tiny"], [[1e-6 / 1.1]], rtol=1e-5)
    for name, composite in COMPOSITES.items():  # every iNNvestigate name: the analyzer's ε, else its default 1e-7
        if name.startswith("lrp."):
            analyzer_epsilon = composite.dense.epsilon if isinstance(composite.dense, Epsilon) else 1e-7
            assert composite.weight_epsilon == analyzer_epsilon, name


# our definitions where iNNvestigate differs --------------------------------------------------------------------------


def test_relu_layers_pass_relevance_like_activations_inside_layers(digits):
    """keras.layers.ReLU, Activation("relu") and activation="relu" give the same relevances, for every rule.

    (iNNvestigate routes relevance through the gradient of a ReLU *layer*, which differs where the flat rule put
    relevance on units with zero output.)
    """
    models = [cnn(relu=relu) for relu in ("inside", "relu_layer", "activation_layer")]
    for model in models[1:]:
        model.set_weights(models[0].get_weights())
    x, y = digits
    for composite in ("lrp.flat", "epsilon_plus_flat"):
        expected = lrp(models[0], x, y, composite=composite)
        for model in models[1:]:
            np.testing.assert_array_equal(lrp(model, x, y, composite=composite).input, expected.input)


def test_batch_norm_pass_and_canonize(digits):
    """Pass hands relevance through BN; canonize folds BN into the conv. They agree when BN only scales by s > 0
    (the ε rule is scale invariant), and differ for a general BN."""
    model = cnn(use_bias=False, batch_norm=True)
    x, y = digits
    passed = lrp(model, x, y, composite="epsilon", bn="pass")
    canonized = lrp(model, x, y, composite="epsilon", bn="canonize")
    np.testing.assert_allclose(passed.input, canonized.input, rtol=1e-4, atol=1e-7)  # fresh BN: s = 1/sqrt(1 + eps)
    with_random_statistics(model)
    passed = lrp(model, x, y, composite="epsilon", bn="pass")
    canonized = lrp(model, x, y, composite="epsilon", bn="canonize")
    assert np.abs(passed.input - canonized.input).max() > 1e-3 * np.abs(canonized.input).max()
    assert lrp(model, x, y, composite="epsilon_plus_flat_bn_pass").input.shape == x.shape


def test_canonize_refuses_batch_norm_after_an_activation():
    inputs = keras.Input((4,))
    outputs = layers.Dense(3)(layers.BatchNormalization(name="late_bn")(layers.Dense(4, activation="relu")(inputs)))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="late_bn.*cannot be canonized"):
        lrp(model, np.ones((2, 4)), composite="epsilon")
    assert lrp(model, np.ones((2, 4)), composite="epsilon", bn="pass").input.shape == (2, 4)


# layers beyond iNNvestigate's ---------------------------------------------------------------------------------------


def rows_model(two_d: bool) -> keras.Model:
    """DepthwiseConv1D -> Conv1DTranspose on 8 steps of 8 features, or the same computation in 2-D on a 1x8 image."""
    inputs = keras.Input((1, 8, 8) if two_d else (8, 8))
    if two_d:
        x = layers.DepthwiseConv2D((1, 3), depth_multiplier=2, activation="relu", name="depthwise")(inputs)
        x = layers.Conv2DTranspose(4, (1, 3), strides=(1, 2), activation="relu", name="transposed")(x)
    else:
        x = layers.DepthwiseConv1D(3, depth_multiplier=2, activation="relu", name="depthwise")(inputs)
        x = layers.Conv1DTranspose(4, 3, strides=2, activation="relu", name="transposed")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "lrp.alpha_2_beta_1", "lrp.w_square"])
def test_1d_depthwise_and_transposed_convolutions_equal_their_2d_forms_on_one_row(digits, composite):
    keras.utils.set_random_seed(0)
    one_d, two_d = rows_model(two_d=False), rows_model(two_d=True)
    two_d.set_weights([w.reshape(v.shape) for w, v in zip(one_d.get_weights(), two_d.get_weights(), strict=True)])
    x, y = digits
    rows = x.reshape(-1, 8, 8)
    expected = lrp(two_d, rows[:, None], y, composite=composite)
    relevances = lrp(one_d, rows, y, composite=composite)
    np.testing.assert_allclose(relevances.input, expected.input[:, 0], rtol=1e-4, atol=1e-6)
    for name, r_w in expected.weights.items():
        np.testing.assert_allclose(relevances.weights[name], r_w.reshape(relevances.weights[name].shape), atol=1e-6)


def volume_model(three_d: bool) -> keras.Model:
    """Conv -> transposed conv -> BatchNorm -> ReLU on an 8x8 image, or the same computation in 3-D on a volume of
    depth 1."""
    inputs = keras.Input((1, 8, 8, 1) if three_d else (8, 8, 1))
    if three_d:
        x = layers.Conv3D(4, (1, 3, 3), activation="relu", name="conv")(inputs)
        x = layers.Conv3DTranspose(4, (1, 3, 3), strides=(1, 2, 2), use_bias=False, name="transposed")(x)
    else:
        x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
        x = layers.Conv2DTranspose(4, 3, strides=2, use_bias=False, name="transposed")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "lrp.alpha_2_beta_1"])
@pytest.mark.parametrize("bn", ["pass", "canonize"])
def test_3d_and_transposed_3d_convolutions_equal_their_2d_forms_on_a_volume_of_depth_one(digits, composite, bn):
    keras.utils.set_random_seed(0)
    three_d, two_d = with_random_statistics(volume_model(three_d=True)), volume_model(three_d=False)
    two_d.set_weights([w.reshape(v.shape) for w, v in zip(three_d.get_weights(), two_d.get_weights(), strict=True)])
    x, y = digits
    images = x.reshape(-1, 8, 8, 1)
    expected = lrp(two_d, images, y, composite=composite, bn=bn)
    relevances = lrp(three_d, images[:, None], y, composite=composite, bn=bn)
    # equal up to float32 rounding, which 3-D convolutions do in another order and the ε rule's division amplifies
    np.testing.assert_allclose(relevances.input[:, 0], expected.input, atol=1e-3 * np.abs(expected.input).max())
    assert set(relevances.weights) == {"conv", "transposed", "logits"}
    for name, r_w in expected.weights.items():
        actual = relevances.weights[name]
        np.testing.assert_allclose(actual, r_w.reshape(actual.shape), atol=1e-3 * np.abs(r_w).max())


def grouped_model(groups: int) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="stem")(inputs)
    x = layers.Conv2D(4, 3, groups=groups, use_bias=False, name="grouped")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn")(x))
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "lrp.alpha_2_beta_1"])
@pytest.mark.parametrize("bn", ["pass", "canonize"])
def test_a_grouped_convolution_equals_its_block_diagonal_dense_form(digits, composite, bn):
    keras.utils.set_random_seed(0)
    grouped, full = with_random_statistics(grouped_model(groups=2)), grouped_model(groups=1)
    weights = grouped.get_weights()
    blocks = np.zeros((3, 3, 4, 4), np.float32)  # group g maps input channels 2g, 2g+1 to output channels 2g, 2g+1
    for g in range(2):
        blocks[:, :, 2 * g : 2 * g + 2, 2 * g : 2 * g + 2] = weights[2][..., 2 * g : 2 * g + 2]
    full.set_weights(weights[:2] + [blocks] + weights[3:])
    x, y = digits
    np.testing.assert_allclose(grouped(x), full(x), atol=1e-5)
    expected = lrp(full, x, y, composite=composite, bn=bn)
    relevances = lrp(grouped, x, y, composite=composite, bn=bn)
    np.testing.assert_allclose(relevances.input, expected.input, atol=1e-4 * np.abs(expected.input).max())
    in_group = np.stack([expected.weights["grouped"][:, :, 2 * g : 2 * g + 2, 2 * g : 2 * g + 2] for g in range(2)])
    actual = np.moveaxis(relevances.weights["grouped"].reshape(3, 3, 2, 2, 2), 3, 0)  # (group, 3, 3, in, out)
    np.testing.assert_allclose(actual, in_group, atol=1e-4 * np.abs(in_group).max())


def test_a_softmax_layer_passes_relevance_as_a_softmax_activation_does(digits):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    logits = layers.Dense(10, name="logits")(layers.Flatten()(layers.Conv2D(4, 3, activation="relu")(inputs)))
    as_layer = keras.Model(inputs, layers.Softmax()(logits))
    as_activation = keras.Model(inputs, layers.Activation("softmax")(logits))
    x, y = digits
    expected, relevances = lrp(as_activation, x, y), lrp(as_layer, x, y)
    np.testing.assert_allclose(relevances.input, expected.input, rtol=1e-6)
    assert np.abs(relevances.input).sum() > 0


def test_batch_norm_after_a_transposed_convolution_is_canonized_into_its_output_channels(digits):
    """Canonizing equals explaining the model with the BatchNorm folded in by hand (a transposed kernel is
    (h, w, out, in): the scale goes on its second-to-last axis)."""

    def model(batch_norm: bool) -> keras.Model:
        inputs = keras.Input((8, 8, 1))
        x = layers.Conv2DTranspose(4, 3, strides=2, use_bias=not batch_norm, name="up")(inputs)
        x = layers.BatchNormalization(name="bn")(x) if batch_norm else x
        x = layers.GlobalAveragePooling2D()(layers.ReLU()(x))
        return keras.Model(inputs, layers.Dense(10, name="logits")(x))

    keras.utils.set_random_seed(0)
    with_bn, folded = with_random_statistics(model(batch_norm=True)), model(batch_norm=False)
    bn = with_bn.get_layer("bn")
    gamma, beta, mean, variance = bn.get_weights()
    scale = gamma / np.sqrt(variance + bn.epsilon)
    kernel = with_bn.get_layer("up").get_weights()[0]
    folded.get_layer("up").set_weights([kernel * scale[:, None], beta - mean * scale])
    folded.get_layer("logits").set_weights(with_bn.get_layer("logits").get_weights())
    x, y = digits
    canonized = lrp(with_bn, x, y, composite="epsilon", bn="canonize")
    expected = lrp(folded, x, y, composite="epsilon")
    np.testing.assert_allclose(canonized.input, expected.input, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(canonized.weights["up"], expected.weights["up"], rtol=1e-4, atol=1e-7)


def test_a_product_gives_all_relevance_to_its_signal_and_none_to_the_gate(digits):
    """Squeeze-excite: x * sigmoid(W pooled(x)). Relevance is conserved through the signal x; the gate's kernel gets
    none (ECQx then keeps ECQ's assignment for it)."""
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, use_bias=False, activation="relu", name="conv")(inputs)
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(4, 1, activation="sigmoid", name="excite")(gate)
    x = layers.GlobalAveragePooling2D()(layers.Multiply()([x, gate]))
    model = keras.Model(inputs, layers.Dense(10, use_bias=False, name="logits")(x))
    x, y = digits
    relevances = lrp(model, x, y, composite=TINY_EPSILON)
    np.testing.assert_allclose(relevances.input.sum(axis=(1, 2, 3)), target_logits(model, x, y), rtol=1e-4, atol=1e-6)
    assert relevances.weights["conv"].sum() == pytest.approx(target_logits(model, x, y).mean(), rel=1e-4)
    assert not relevances.weights["excite"].any()


def test_tensorflow_op_layers_run_with_their_constants_and_pass_relevance_when_elementwise(digits):
    """MobileNetV3's hard swish x * relu6(x + 3) / 6 is written with TensorFlow ops, which Keras wraps as layers
    holding their constants in the call. The weight relevances of the logits layer sum to the mean target logit
    only if the forward pass computed its input with those constants."""
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = layers.Multiply()([x, layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    x = layers.Flatten()(x * 2.0 - 0.5)
    model = keras.Model(inputs, layers.Dense(10, use_bias=False, name="logits")(x))
    x, y = digits
    relevances = lrp(model, x, y, composite=TINY_EPSILON)
    assert relevances.weights["logits"].sum() == pytest.approx(target_logits(model, x, y).mean(), rel=1e-4)
    assert relevances.weights["conv"].any()


def test_tensorflow_ops_that_rearrange_a_tensor_move_relevance_as_their_keras_layers_do(digits):
    """expand_dims, transpose, reshape and squeeze written as TF ops give the relevances of Reshape/Permute layers."""
    x, y = digits
    images = x[..., 0]  # (n, 8, 8)

    def model(as_tf_ops: bool) -> keras.Model:
        inputs = keras.Input((8, 8))
        if as_tf_ops:
            h = tf.transpose(tf.expand_dims(inputs, -1), (0, 2, 1, 3))
        else:
            h = layers.Permute((2, 1, 3))(layers.Reshape((8, 8, 1))(inputs))
        h = layers.Conv2D(4, 3, use_bias=False, activation="relu", name="conv")(h)
        h = tf.squeeze(tf.reshape(h, (-1, 1, 144)), 1) if as_tf_ops else layers.Flatten()(h)
        return keras.Model(inputs, layers.Dense(10, use_bias=False, name="logits")(h))

    keras_layers, tf_ops = model(False), model(True)
    tf_ops.set_weights(keras_layers.get_weights())
    expected, got = lrp(keras_layers, images, y), lrp(tf_ops, images, y)
    np.testing.assert_allclose(got.input, expected.input, atol=1e-6)
    for name in ("conv", "logits"):
        np.testing.assert_allclose(got.weights[name], expected.weights[name], rtol=1e-5, atol=1e-7)
    assert np.abs(expected.input).sum() > 0


def test_tensorflow_sums_and_products_of_tensors_give_the_relevances_of_add_and_multiply_layers(digits):
    """RegNet's residual `x + shortcut` and a gate written as TF ops on two Keras tensors, against Add and Multiply."""

    def model(as_tf_ops: bool) -> keras.Model:
        inputs = keras.Input((8, 8, 1))
        x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
        y = layers.Conv2D(4, 3, padding="same", name="branch")(x)
        gate = layers.Conv2D(4, 1, activation="sigmoid", name="gate")(layers.GlobalAveragePooling2D(keepdims=True)(x))
        if as_tf_ops:
            h = tf.math.multiply(x + y, gate) - tf.add_n([x, y])
        else:
            h = layers.Subtract()([layers.Multiply()([layers.Add()([x, y]), gate]), layers.Add()([x, y])])
        return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(layers.ReLU()(h))))

    keras_layers, tf_ops = model(False), model(True)
    tf_ops.set_weights(keras_layers.get_weights())
    x, y = digits
    expected, got = lrp(keras_layers, x, y), lrp(tf_ops, x, y)
    np.testing.assert_allclose(got.input, expected.input, atol=1e-6)
    for name in ("conv", "branch", "gate", "logits"):
        np.testing.assert_allclose(got.weights[name], expected.weights[name], rtol=1e-5, atol=1e-7)
    assert np.abs(expected.input).sum() > 0 and not got.weights["gate"].any()


def test_subtract_and_average_conserve_relevance_as_add_does(digits):
    """a − b shares R between a and −b in proportion (iNNvestigate's gradient would give R and −R: a sum of zero)."""
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    y = layers.Conv2D(4, 3, padding="same", use_bias=False, name="branch")(x)
    h = layers.Average()([layers.Subtract()([x, y]), x])
    model = keras.Model(inputs, layers.Dense(10, use_bias=False, name="logits")(layers.Flatten()(h)))
    x, y = digits
    relevances = lrp(model, x, y, composite=TINY_EPSILON)
    np.testing.assert_allclose(relevances.input.sum(axis=(1, 2, 3)), target_logits(model, x, y), rtol=1e-3, atol=1e-5)
    assert np.abs(relevances.weights["branch"]).sum() > 0


# models, compilation and QAT -----------------------------------------------------------------------------------------


def test_sequential_model_equals_functional(digits):
    sequential = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(4, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10),
        ]
    )
    x, y = digits
    relevances = lrp(sequential, x, y, composite="epsilon_plus_flat")
    inputs = keras.Input((8, 8, 1))
    outputs = inputs
    for layer in sequential.layers:
        outputs = layer(outputs)
    np.testing.assert_allclose(lrp(keras.Model(inputs, outputs), x, y, "epsilon_plus_flat").input, relevances.input)
    assert set(relevances.weights) == {sequential.layers[0].name, sequential.layers[3].name}


def test_compiled_once_and_reads_current_weights(digits):
    model = cnn()
    x, y = digits
    function = compiled_lrp(model, get_composite("epsilon_plus_flat"), "output")
    first = lrp(model, x, y, composite="epsilon_plus_flat")
    lrp(model, x[:5], y[:5], composite="epsilon_plus_flat")  # another batch size: no retrace
    model.set_weights([w * 1.5 for w in model.get_weights()])
    changed = lrp(model, x, y, composite="epsilon_plus_flat")
    assert compiled_lrp(model, get_composite("epsilon_plus_flat"), "output") is function
    assert function.experimental_get_tracing_count() == 1
    fresh = cnn()
    fresh.set_weights(model.get_weights())
    np.testing.assert_allclose(changed.input, lrp(fresh, x, y, composite="epsilon_plus_flat").input, rtol=1e-6)
    assert not np.allclose(changed.input, first.input)


@pytest.mark.parametrize("bn", ["pass", "canonize"])
def test_qat_model_uses_quantized_kernels(digits, bn):
    """On a tf_ecqx QAT model LRP runs on the float computation with the quantized kernels: exactly what the plain
    model from strip() (quantized kernels, float activations) gives; the weight relevance of a zero weight is 0."""
    model = with_random_statistics(cnn(batch_norm=True))
    qmodel = tf_ecqx.quantize_model(model, bits=3, lambda_=0.3)
    x, y = digits
    quantized = lrp(qmodel, x, y, composite="epsilon_plus_flat", bn=bn)
    plain = tf_ecqx.strip(qmodel)
    stripped = lrp(plain, x, y, composite="epsilon_plus_flat", bn=bn)
    kernel_layers = {layer.name for layer in model.layers if layer.weights and "batch_norm" not in layer.name}
    assert set(quantized.weights) == kernel_layers
    zeros = 0
    np.testing.assert_allclose(quantized.input, stripped.input, rtol=1e-5, atol=1e-6 * np.abs(stripped.input).max())
    for name, r_w in quantized.weights.items():
        kernel = plain.get_layer(name).get_weights()[0]
        assert r_w.shape == kernel.shape
        np.testing.assert_allclose(r_w, stripped.weights[name], rtol=1e-5, atol=1e-6 * np.abs(r_w).max())
        assert np.all(r_w[kernel == 0] == 0)
        zeros += int((kernel == 0).sum())
    assert zeros > 0  # λ = 0.3 zeroes weights, so the relevances above come from quantized kernels
    assert not np.allclose(quantized.input, lrp(model, x, y, composite="epsilon_plus_flat", bn=bn).input)


# errors --------------------------------------------------------------------------------------------------------------


def test_unsupported_layer_is_named():
    inputs = keras.Input((4, 4, 1))
    x = layers.UnitNormalization(name="norm")(inputs)
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"'norm' \(UnitNormalization\) is not supported by LRP"):
        lrp(model, np.ones((1, 4, 4, 1)))


def test_a_tensorflow_op_relevance_cannot_pass_is_named():
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(2, 3)(inputs)
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(tf.reduce_max(x, axis=-1))))
    with pytest.raises(ValueError, match=r"reduce_max, a TensorFlow op Keras wrapped\) is reached by relevance"):
        lrp(model, np.ones((1, 4, 4, 1)))


def test_unknown_composite_lists_the_known_ones():
    with pytest.raises(ValueError, match="epsilon_plus_flat_bn_pass.*lrp.sequential_composite_a"):
        get_composite("epsilon_plus_flatt")
    assert {"epsilon", "epsilon_plus", "alpha2_beta1_flat", "lrp.z_plus", "lrp.alpha_1_beta_0"} <= set(COMPOSITES)


def test_bad_arguments():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="output='logit'"):
        lrp(model, np.ones((2, 4)), output="logit")
    with pytest.raises(ValueError, match="outside"):
        lrp(model, np.ones((2, 4)), y=[0, 3])
    with pytest.raises(ValueError, match="expects"):
        lrp(model, np.ones((2, 5)))
    with pytest.raises(ValueError, match="bn='fold'"):
        lrp(model, np.ones((2, 4)), bn="fold")
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        Epsilon(0.0)
    assert Composite(dense=Flat(), conv=Flat()).rule("dense", first=False) == Flat()
