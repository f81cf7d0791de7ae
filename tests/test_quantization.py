"""quantize_model / quantize_apply / strip / layer_stats on real Fashion-MNIST samples with model.fit."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.layers import TF_OP_LAYERS
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.quantization.transforms import quantize_tf_op_outputs
from tf_ecqx.report import model_totals


def assert_on_grid(qmodel: keras.Model) -> None:
    """Every quantized kernel holds integer multiples of its step, at most 2^b distinct values, codes within range."""
    for kernel in quantized_kernels(qmodel):
        step = float(kernel.state["step"].numpy())
        codes = kernel.codes().numpy()
        quantized = kernel.quantizer(kernel.kernel, False, kernel.state).numpy()
        np.testing.assert_allclose(quantized / step, np.round(quantized / step), atol=1e-4)
        np.testing.assert_array_equal(np.round(quantized / step).astype(int), codes)
        assert np.unique(codes).size <= 2**kernel.settings.bits
        assert kernel.state["k_min"].numpy() <= codes.min() and codes.max() <= kernel.state["k_max"].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_fit_on_fashion_mnist_keeps_kernels_on_the_grid(bits, fashion_small):
    train, _ = fashion_small
    qmodel = compile_for_classification(tf_ecqx.quantize_model(small_cnn(), bits=bits, lambda_=0.1))
    before = [k.kernel.numpy().copy() for k in quantized_kernels(qmodel)]
    history = qmodel.fit(train.x[:512], train.y[:512], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, k.kernel.numpy()) for b, k in zip(before, quantized_kernels(qmodel)))
    assert_on_grid(qmodel)
    assert {s.bits for s in tf_ecqx.layer_stats(qmodel)} == {bits}


@pytest.mark.slow
def test_sparsity_rises_with_lambda_after_training(fashion_small):
    train, _ = fashion_small
    sparsities = []
    for lam in (0.0, 0.2, 0.8):
        keras.utils.set_random_seed(0)
        qmodel = compile_for_classification(tf_ecqx.quantize_model(small_cnn(), bits=4, lambda_=lam))
        qmodel.fit(train.x, train.y, batch_size=64, epochs=1, verbose=0)
        assert_on_grid(qmodel)
        stats = tf_ecqx.layer_stats(qmodel)
        sparsities.append(model_totals(stats).sparsity)
    assert sparsities[0] < sparsities[1] < sparsities[2]


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm,residual", [(True, False), (False, True), (True, True)])
def test_batchnorm_residual_pooling_dropout_models_quantize_and_train(batch_norm, residual, fashion_small):
    train, test = fashion_small
    qmodel = compile_for_classification(tf_ecqx.quantize_model(small_cnn(batch_norm, residual), bits=4, lambda_=0.1))
    qmodel.fit(train.x, train.y, batch_size=64, epochs=2, verbose=0)
    assert_on_grid(qmodel)
    assert qmodel.evaluate(test.x, test.y, verbose=0)[1] > 0.5  # it learns: chance is 0.1


def test_forward_pass_uses_the_quantized_kernel(fashion_small):
    train, _ = fashion_small
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    qmodel = tf_ecqx.quantize_model(model, bits=3, lambda_=0.3)
    plain = tf_ecqx.strip(qmodel)
    x = train.x[:32]
    qmodel(x, training=True)  # calibrates the activation ranges, which start empty
    # the only difference left between the two is tfmot's 8-bit activation quantization (input and output)
    np.testing.assert_allclose(qmodel(x, training=False), plain(x), atol=0.15)
    kernel = next(quantized_kernels(qmodel))
    np.testing.assert_array_equal(plain.layers[-1].kernel.numpy(), kernel.values().numpy())
    np.testing.assert_array_equal(kernel.quantizer(kernel.kernel, False, kernel.state).numpy(), kernel.values().numpy())


@pytest.mark.parametrize("rule", ["reference", "ste"])
def test_straight_through_gradients(rule):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, use_bias=False)])
    model.layers[0].kernel.assign(np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32))
    qmodel = tf_ecqx.quantize_model(model, bits=2, lambda_=0.5, gradient=rule)
    kernel = next(quantized_kernels(qmodel))
    with tf.GradientTape() as tape:
        w_q = kernel.quantizer(kernel.kernel, True, kernel.state)
        loss = tf.reduce_sum(w_q * tf.range(24, dtype=tf.float32)[:, None][: tf.size(w_q)].__array__().reshape(6, 4))
    gradient = tape.gradient(loss, kernel.kernel).numpy()
    upstream = np.arange(24, dtype=np.float32).reshape(6, 4)
    expected = upstream if rule == "ste" else upstream * np.where(w_q.numpy() == 0, 1.0, np.abs(w_q.numpy()))
    assert (w_q.numpy() == 0).any() and (w_q.numpy() != 0).any()
    np.testing.assert_allclose(gradient, expected, rtol=1e-6)


def test_strip_gives_a_plain_model_with_original_names_and_quantized_kernels(fashion_small):
    train, _ = fashion_small
    model = small_cnn(batch_norm=True, residual=True)
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.1))
    qmodel.fit(train.x[:512], train.y[:512], batch_size=64, epochs=1, verbose=0)
    plain = tf_ecqx.strip(qmodel)
    assert [layer.name for layer in plain.layers] == [layer.name for layer in model.layers]
    assert all("quantiz" not in type(layer).__name__.lower() for layer in plain.layers)
    assert "tensorflow_model_optimization" not in plain.to_json()  # no tfmot activation left (BN after conv nests two)
    for kernel in quantized_kernels(qmodel):
        stripped = plain.get_layer(kernel.layer_name)
        weight = stripped.depthwise_kernel if hasattr(stripped, "depthwise_kernel") else stripped.kernel
        np.testing.assert_array_equal(weight.numpy(), kernel.values().numpy())
    trained = {
        (layer.layer.name, w.name.split("/")[-1]): w.numpy()
        for layer in qmodel.layers
        if hasattr(layer, "layer")
        for w in layer.layer.weights
    }
    for layer in plain.layers:
        for weight in layer.weights:
            if "kernel" not in weight.name:  # biases and BatchNorm statistics are carried over unchanged
                np.testing.assert_array_equal(weight.numpy(), trained[layer.name, weight.name.split("/")[-1]])


def test_layer_stats_match_the_codes():
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(30), keras.layers.Dense(5)])
    qmodel = tf_ecqx.quantize_model(model, bits=3, lambda_=0.2)
    stats = tf_ecqx.layer_stats(qmodel)
    assert [s.name for s in stats] == [layer.name for layer in model.layers]
    for s, kernel in zip(stats, quantized_kernels(qmodel)):
        codes = kernel.codes().numpy()
        _, counts = np.unique(codes, return_counts=True)
        p = counts / codes.size
        assert s.n_weights == codes.size and s.sparsity == pytest.approx(np.mean(codes == 0))
        assert s.entropy == pytest.approx(-(p * np.log2(p)).sum()) and s.distinct_codes == len(counts)
    assert stats[0].n_weights == 600 and stats[1].n_weights == 150


def test_exclude_keeps_layers_in_float_and_user_model_is_untouched():
    model = small_cnn()
    weights = [w.copy() for w in model.get_weights()]
    qmodel = tf_ecqx.quantize_model(model, bits=4, exclude=[model.layers[-1].name, keras.layers.DepthwiseConv2D])
    quantized_names = {k.layer_name for k in quantized_kernels(qmodel)}
    assert model.layers[-1].name not in quantized_names
    assert not any(isinstance(k.wrapper.layer, keras.layers.DepthwiseConv2D) for k in quantized_kernels(qmodel))
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_a_model_nested_in_another_is_quantized_like_the_flat_model(fashion_small):
    """Transfer learning's pattern, a backbone model under a new head: tfmot refuses nested models; tf_ecqx inlines
    copies of their layers. The QAT model equals that of the same layers built flat; `exclude` takes the nested
    model's name; the user's model and its layers are untouched."""
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    features = keras.layers.MaxPooling2D(name="pool")(keras.layers.BatchNormalization(name="bn")(x))
    backbone = keras.Model(inputs, features, name="backbone")
    head = [keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(10, name="logits")]
    nested = compile_for_classification(keras.Sequential([keras.Input((28, 28, 1)), backbone, *head]))
    nested.fit(train.x[:512], train.y[:512], verbose=0)
    flat = keras.Model(inputs, head[1](head[0](features)))
    weights = [w.copy() for w in nested.get_weights()]

    qmodels = [tf_ecqx.quantize_model(model, bits=4, lambda_=0.1) for model in (nested, flat)]
    assert [k.name for k in quantized_kernels(qmodels[0])] == ["conv", "logits"]
    for a, b in zip(quantized_kernels(qmodels[0]), quantized_kernels(qmodels[1]), strict=True):
        np.testing.assert_array_equal(a.codes().numpy(), b.codes().numpy())
    x = train.x[:64]
    np.testing.assert_allclose(qmodels[0](x, training=False), qmodels[1](x, training=False), rtol=1e-5, atol=1e-5)
    assert [k.name for k in quantized_kernels(tf_ecqx.quantize_model(nested, exclude=["backbone"]))] == ["logits"]
    assert all(np.array_equal(a, b) for a, b in zip(weights, nested.get_weights()))
    assert [len(layer.inbound_nodes) for layer in backbone.layers] == [1, 1, 1, 1]  # inputs and the model's layers


def three_bit_config() -> tf_ecqx.ECQxQuantizeConfig:
    return tf_ecqx.ECQxQuantizeConfig(["kernel"], ["activation"], settings=tf_ecqx.ECQxSettings(bits=3))


def test_custom_layer_annotated_with_an_ecqx_config(fashion_small):
    class Scaled(keras.layers.Dense):
        """A custom Dense subclass: not in any registry, so it needs an annotation."""

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = tf_ecqx.quantize_annotate_layer(Scaled(16, activation="relu"), three_bit_config())(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    with tf_ecqx.quantize_scope({"Scaled": Scaled}):
        qmodel = tf_ecqx.quantize_model(model, bits=4)
    assert {s.name: s.bits for s in tf_ecqx.layer_stats(qmodel)} == {
        model.layers[2].layer.name: 3,
        model.layers[3].name: 4,
    }


def test_config_round_trips():
    settings = tf_ecqx.ECQxSettings(bits=3, lambda_=0.2, gradient="ste", ecqx=True, p=0.3, q=0.25)
    config = tf_ecqx.ECQxQuantizeConfig(["kernel"], ["activation"], False, settings)
    assert tf_ecqx.ECQxQuantizeConfig.from_config(config.get_config()) == config
    assert tf_ecqx.ECQxQuantizeConfig.from_config(config.get_config()).settings.q == 0.25
    quantizer = tf_ecqx.ECQxWeightQuantizer(tf_ecqx.ECQxSettings(bits=5, lambda_=0.01))
    assert tf_ecqx.ECQxWeightQuantizer.from_config(quantizer.get_config()) == quantizer
    assert quantizer != tf_ecqx.ECQxWeightQuantizer(tf_ecqx.ECQxSettings(bits=5, lambda_=0.02))


def test_configs_saved_by_tf_ecqx_0_1_0_still_load():
    """0.1.0 stored the settings flat and named the LRP composite; any name meant ECQx."""
    old = {"bits": 3, "lambda_": 0.2, "gradient": "ste", "relevance": "epsilon_plus_flat", "p": 0.2}
    quantizer = tf_ecqx.ECQxWeightQuantizer.from_config(old)
    assert quantizer.settings == tf_ecqx.ECQxSettings(bits=3, lambda_=0.2, gradient="ste", ecqx=True, p=0.2)
    layout = {"weight_attrs": ["kernel"], "activation_attrs": ["activation"], "quantize_output": False}
    config = tf_ecqx.ECQxQuantizeConfig.from_config({**layout, **old, "relevance": None})
    assert config.settings == tf_ecqx.ECQxSettings(bits=3, lambda_=0.2, gradient="ste", ecqx=False, p=0.2)


def test_one_settings_object_reaches_every_quantizer():
    settings = tf_ecqx.ECQxSettings(bits=3, lambda_=0.1, ecqx=True)
    annotated = keras.models.clone_model(small_cnn(), clone_function=tf_ecqx.quantize_annotate_layer)
    qmodel = tf_ecqx.quantize_apply(annotated, tf_ecqx.ECQxQuantizeScheme(settings))
    kernels = list(quantized_kernels(qmodel))
    assert len(kernels) == 4 and all(k.settings is settings for k in kernels)
    from_model = quantized_kernels(tf_ecqx.quantize_model(small_cnn(), bits=3, lambda_=0.1, ecqx=True))
    assert all(k.settings == settings for k in from_model)
    with_slack = quantized_kernels(tf_ecqx.quantize_model(small_cnn(), bits=3, lambda_=0.1, ecqx=True, q=0.2))
    assert all(k.settings == dataclasses.replace(settings, q=0.2) for k in with_slack)


def test_kernel_followed_by_a_relu_layer_is_still_quantized():
    """tfmot's LayerReLUQuantize would leave such kernels in float; every Dense/Conv kernel must get ECQx."""
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.Activation("relu", name="act")(x)
    x = keras.layers.Flatten()(x)
    x = tf_ecqx.quantize_annotate_layer(keras.layers.Dense(8, name="dense"), three_bit_config())(x)
    outputs = keras.layers.ReLU()(x)
    qmodel = tf_ecqx.quantize_model(keras.Model(inputs, outputs), bits=5)
    assert {s.name: s.bits for s in tf_ecqx.layer_stats(qmodel)} == {"conv": 5, "depthwise": 5, "dense": 3}
    assert all(k.wrapper.quantize_config.activation_attrs == [] for k in quantized_kernels(qmodel))


def hard_swish_net() -> keras.Model:
    """MobileNetV3's hard swish x * relu6(x + 3) * (1/6), written with TF ops as keras.applications does, then a
    reshape (a TF op that keeps its input's scale)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(tf.reshape(x, (-1, 144))))


def test_tf_op_layers_with_a_range_of_their_own_get_an_8_bit_output_quantizer_after_them(rng):
    model = hard_swish_net()
    add, multiply, reshape = (layer.name for layer in model.layers if isinstance(layer, TF_OP_LAYERS))

    def markers(qmodel: keras.Model) -> dict[str, list]:
        return {
            layer.layer.name.removesuffix("_output"): layer.quantize_config.get_output_quantizers(layer.layer)
            for layer in qmodel.layers
            if isinstance(layer, QuantizeWrapper) and layer.layer.name.endswith("_output")
        }

    found = markers(tf_ecqx.quantize_model(model, bits=4))
    assert set(found) == {add, multiply} and all(quantizers for quantizers in found.values())
    assert set(markers(tf_ecqx.quantize_model(model, bits=4, exclude=[add]))) == {multiply}
    x = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(quantize_tf_op_outputs(model)(x), model(x))  # the float computation is kept


def test_ecqx_slack_reaches_the_quantizer_assignment(rng):
    """q = 0.05 lets the relevance push a kernel's sparsity above ECQ's, by at most 5 % of its weights."""
    model = keras.Sequential([keras.Input((200,)), keras.layers.Dense(50)])
    relevance = rng.random((200, 50)).astype(np.float32) ** 3
    zeros = {}
    for q in (0.0, 0.05):
        (kernel,) = quantized_kernels(tf_ecqx.quantize_model(model, lambda_=0.3, ecqx=True, q=q))
        ecq_zeros = int(
            np.sum(kernel.quantizer.codes(kernel.kernel, {**kernel.state, "relevance": 0 * relevance}) == 0)
        )
        kernel.state["relevance"].assign(relevance)
        zeros[q] = int(np.sum(kernel.codes().numpy() == 0))
    assert zeros[0.0] == ecq_zeros < zeros[0.05] <= ecq_zeros + 500
