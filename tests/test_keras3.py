"""Keras 3 models through tf_ecqx: from_keras3, quantize_model and to_keras3, on real Fashion-MNIST samples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import keras  # Keras 3, as the users of this feature have it
import numpy as np
import pytest

import tf_ecqx
from tf_ecqx._keras import keras as tf_keras
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.kernels import quantized_kernels

L = keras.layers
TOLERANCE = 1e-5
TRAIN_SAMPLES = 384


def demo_cnn() -> keras.Model:
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = L.MaxPooling2D(name="pool1")(x)
    x = L.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(32, activation="relu", name="fc1")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="demo_cnn")


def mlp() -> keras.Model:
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Flatten(name="flatten")(inputs)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    x = L.Dropout(0.1, name="dropout")(x)
    x = L.Dense(32, activation="relu", name="fc2")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="mlp")


def residual_bn() -> keras.Model:
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(8, 3, use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="res_conv1")(x)
    y = L.Conv2D(8, 3, padding="same", name="res_conv2")(y)
    x = L.Add(name="residual")([x, y])
    x = L.ReLU(name="relu2")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="residual_bn")


def separable() -> keras.Model:
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(8, 3, strides=2, activation="relu", name="stem")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.ReLU(name="dw_relu")(x)
    x = L.SeparableConv2D(16, 3, activation="relu", name="sep")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="separable")


def two_inputs() -> keras.Model:
    image = keras.Input((28, 28, 1), name="image")
    mirrored = keras.Input((28, 28, 1), name="mirrored")
    a = L.Conv2D(4, 3, strides=2, activation="relu", name="conv_a")(image)
    b = L.Conv2D(4, 3, strides=2, activation="relu", name="conv_b")(mirrored)
    x = L.Concatenate(name="concat")([L.Flatten(name="flat_a")(a), L.Flatten(name="flat_b")(b)])
    x = L.Dense(32, activation="relu", name="fc1")(x)
    return keras.Model([image, mirrored], L.Dense(10, name="logits")(x), name="two_inputs")


def shared_layers() -> keras.Model:
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(8, 3, strides=2, activation="relu", name="stem")(inputs)
    shared = L.Conv2D(8, 3, padding="same", name="shared_conv")
    x = shared(x)
    x = L.ReLU(name="relu_a")(x)
    x = shared(x)  # the same layer, its kernel, a second time
    x = L.ReLU(name="relu_b")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="shared_layers")


def two_outputs() -> keras.Model:
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    classes = L.Dense(10, name="logits")(x)
    footwear = L.Dense(2, name="footwear")(x)  # sandal, sneaker, ankle boot vs the rest
    return keras.Model(inputs, [classes, footwear], name="two_outputs")


def coverage() -> keras.Model:
    """The layers from_keras3 covers that the models above do not use."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.Conv2D(4, 3, activation="tanh", kernel_regularizer="l2", name="conv")(x)
    x = L.AveragePooling2D(2, name="avg")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Activation("relu", name="act")(x)
    x = L.ReLU(max_value=6.0, name="relu6")(x)
    x = L.Reshape((14, 56), name="rows")(x)
    x = L.Conv1D(8, 3, name="conv1d")(x)
    x = L.MaxPooling1D(name="pool1d")(x)
    x = L.GlobalMaxPooling1D(name="gmp")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="coverage")


def sequential() -> keras.Model:
    return keras.Sequential(
        [keras.Input((28, 28, 1)), L.Conv2D(4, 3, activation="relu"), L.GlobalMaxPooling2D(), L.Dense(10)],
        name="sequential_cnn",
    )


MODELS = {f.__name__: f for f in (demo_cnn, mlp, residual_bn, separable, two_inputs, shared_layers, two_outputs)}
REBUILT_ONLY = {f.__name__: f for f in (coverage, sequential)}
# tf_ecqx quantizes no SeparableConv2D (tf_keras models alike): it stays in float, named as in the Keras 3 model
EXCLUDED = {"separable": ["sep"]}
# the models export.to_tflite takes (one input, one output)
SINGLE_IO = ["demo_cnn", "mlp", "residual_bn", "separable", "shared_layers"]


def model_inputs(name: str, images: np.ndarray) -> np.ndarray | list[np.ndarray]:
    return [images, images[:, :, ::-1]] if name == "two_inputs" else images


def model_targets(name: str, labels: np.ndarray) -> np.ndarray | list[np.ndarray]:
    return [labels, np.isin(labels, (5, 7, 9)).astype(labels.dtype)] if name == "two_outputs" else labels


def outputs_of(model, x) -> list[np.ndarray]:
    y = model(x, training=False)
    return [np.asarray(t) for t in (y if isinstance(y, (list, tuple)) else [y])]


def plain(value) -> str:
    return json.dumps(value, default=lambda v: v.tolist())  # tf_keras' ReLU keeps numpy scalars in its config


def assert_same_outputs(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        assert np.max(np.abs(e - a)) <= TOLERANCE * max(1.0, float(np.max(np.abs(e))))


def assert_codes_on_grid(qmodel) -> None:
    kernels = list(quantized_kernels(qmodel))
    assert kernels
    for kernel in kernels:
        step = float(kernel.state["step"].numpy())
        codes = kernel.codes().numpy()
        quantized = kernel.quantizer(kernel.kernel, False, kernel.state).numpy()
        np.testing.assert_array_equal(np.round(quantized / step).astype(int), codes)
        assert np.unique(codes).size <= 2**kernel.settings.bits
        assert kernel.state["k_min"].numpy() <= codes.min() and codes.max() <= kernel.state["k_max"].numpy()


# ------------------------------------------------------------------------------------------------- from_keras3


@pytest.mark.parametrize("name", [*MODELS, *REBUILT_ONLY])
def test_from_keras3_rebuilds_the_same_model(name, fashion_small):
    keras.utils.set_random_seed(0)
    model = {**MODELS, **REBUILT_ONLY}[name]()
    rebuilt = tf_ecqx.from_keras3(model)
    assert isinstance(rebuilt, tf_keras.Model) and type(rebuilt).__module__.startswith("tf_keras.")
    assert isinstance(rebuilt, tf_keras.Sequential) == isinstance(model, keras.Sequential)
    assert [(layer.name, type(layer).__name__) for layer in rebuilt.layers] == [
        (layer.name, type(layer).__name__) for layer in model.layers
    ]
    for old, new in zip(model.layers, rebuilt.layers):
        for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        old_config, new_config = old.get_config(), new.get_config()
        for key in set(old_config) & set(new_config) - {"dtype", "axis", "name"}:
            if not isinstance(old_config[key], dict):  # serialized objects differ in form (checked below)
                assert plain(old_config[key]) == plain(new_config[key]), (old.name, key)
    if name == "coverage":
        assert isinstance(rebuilt.get_layer("conv").kernel_regularizer, tf_keras.regularizers.L2)
    if name == "shared_layers":
        assert len(rebuilt.get_layer("shared_conv")._inbound_nodes) == 2
    _, test = fashion_small
    x = model_inputs(name, test.x[:64])
    assert_same_outputs(outputs_of(model, x), outputs_of(rebuilt, x))
    back = tf_ecqx.to_keras3(rebuilt)  # the reverse direction on the same model
    assert_same_outputs(outputs_of(model, x), outputs_of(back, x))


# ---------------------------------------------------------------------------- quantize, train, give back, export


class Quantized(NamedTuple):
    qmodel: tf_keras.Model
    history: dict[str, list[float]]
    changed: bool


@pytest.fixture(scope="module")
def quantized(fashion_small) -> dict[str, Quantized]:
    """Each Keras 3 model quantized to 4 bits straight from Keras 3 and fitted for one epoch on Fashion-MNIST."""
    train, _ = fashion_small
    x, y = train.x[:TRAIN_SAMPLES], train.y[:TRAIN_SAMPLES]
    results = {}
    for name, build in MODELS.items():
        keras.utils.set_random_seed(0)
        qmodel = tf_ecqx.quantize_model(build(), bits=4, lambda_=0.1, exclude=EXCLUDED.get(name))
        compile_for_classification(qmodel)
        before = [k.kernel.numpy().copy() for k in quantized_kernels(qmodel)]
        history = qmodel.fit(model_inputs(name, x), model_targets(name, y), batch_size=64, epochs=1, verbose=0)
        changed = any(not np.array_equal(b, k.kernel.numpy()) for b, k in zip(before, quantized_kernels(qmodel)))
        results[name] = Quantized(qmodel, history.history, changed)
    return results


@pytest.mark.parametrize("name", MODELS)
def test_quantized_keras3_model_trains_with_codes_on_the_grid(name, quantized):
    case = quantized[name]
    assert np.isfinite(case.history["loss"][0]) and case.changed
    assert_codes_on_grid(case.qmodel)
    assert {s.bits for s in tf_ecqx.layer_stats(case.qmodel)} == {4}


KERAS3_ONLY_SCRIPT = """
import os, sys
import numpy as np
import keras
data = np.load(sys.argv[1])
results = {}
for name in sys.argv[2:]:
    model = keras.saving.load_model(os.path.join(os.path.dirname(sys.argv[1]), name + ".keras"))
    x = [data[name + "_a"], data[name + "_b"]] if name + "_b" in data else data[name + "_a"]
    outputs = model(x, training=False)
    for i, y in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
        results[f"{name}_{i}"] = np.asarray(y)
    for layer in model.layers:
        if layer.weights:
            results[f"{name}/{layer.name}"] = layer.get_weights()[0]
np.savez(sys.argv[1].replace("inputs", "outputs"), **results)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tf_ecqx", "tf_keras", "tensorflow_model_optimization"))
print("KERAS", keras.__version__, "LEAKED", leaked)
"""


def test_to_keras3_models_save_and_load_with_keras3_alone(quantized, fashion_small, tmp_path):
    _, test = fashion_small
    inputs, expected = {}, {}
    for name, case in quantized.items():
        plain = tf_ecqx.strip(case.qmodel)
        model = tf_ecqx.to_keras3(case.qmodel)
        assert isinstance(model, keras.Model) and type(model).__module__.startswith("keras.")
        assert [layer.name for layer in model.layers] == [layer.name for layer in plain.layers]
        for kernel in quantized_kernels(case.qmodel):  # the quantized values, as strip gives them
            np.testing.assert_array_equal(model.get_layer(kernel.layer_name).get_weights()[0], kernel.values().numpy())
        model.save(tmp_path / f"{name}.keras")
        x = model_inputs(name, test.x[:32])
        inputs.update({f"{name}_a": x[0], f"{name}_b": x[1]} if isinstance(x, list) else {f"{name}_a": x})
        expected[name] = outputs_of(plain, x)
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(
        [sys.executable, "-c", KERAS3_ONLY_SCRIPT, str(tmp_path / "inputs.npz"), *quantized],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"KERAS 3\.\S+ LEAKED \[\]", run.stdout), run.stdout
    loaded = np.load(tmp_path / "outputs.npz")
    for name, outputs in expected.items():
        assert_same_outputs(outputs, [loaded[f"{name}_{i}"] for i in range(len(outputs))])
        for kernel in quantized_kernels(quantized[name].qmodel):  # loaded Keras 3 kernels hold the quantized values
            np.testing.assert_array_equal(loaded[f"{name}/{kernel.layer_name}"], kernel.values().numpy())


@pytest.mark.parametrize("name", SINGLE_IO)
def test_quantized_keras3_model_exports_to_tflite(name, quantized, fashion_small, tmp_path):
    train, _ = fashion_small
    result_model = quantized[name].qmodel
    result = tf_ecqx.export.to_tflite(result_model, tmp_path / f"{name}.tflite", train.x[:64])
    assert result.path.stat().st_size == result.bytes > 0
    assert {check.layer for check in result.kernels} == {
        k.layer_name for k in quantized_kernels(quantized[name].qmodel)
    }
    assert result.argmax_agreement >= 0.9 and result.relative_error < 0.05


def test_a_keras3_backbone_under_a_new_head_is_rebuilt_nested_then_quantized_flat(fashion_small, tmp_path):
    """Transfer learning in Keras 3: a functional backbone as a layer of a Sequential. from_keras3 rebuilds it as a
    nested tf_keras model; quantize_model inlines it; the export and the way back to Keras 3 follow."""
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    features = L.MaxPooling2D(name="pool")(L.Conv2D(8, 3, activation="relu", name="conv")(inputs))
    backbone = keras.Model(inputs, features, name="backbone")
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), backbone, L.GlobalAveragePooling2D(name="gap"), L.Dense(10, name="logits")]
    )
    rebuilt = tf_ecqx.from_keras3(model)
    assert isinstance(rebuilt.get_layer("backbone"), tf_keras.Model)
    assert_same_outputs(outputs_of(model, train.x[:64]), outputs_of(rebuilt, train.x[:64]))
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.1))
    qmodel.fit(train.x[:TRAIN_SAMPLES], train.y[:TRAIN_SAMPLES], batch_size=64, verbose=0)
    assert [k.name for k in quantized_kernels(qmodel)] == ["conv", "logits"]
    assert tf_ecqx.export.to_tflite(qmodel, tmp_path / "m.tflite", train.x[:64]).argmax_agreement >= 0.9
    back = tf_ecqx.to_keras3(qmodel)
    conv = next(quantized_kernels(qmodel))
    np.testing.assert_array_equal(back.get_layer("conv").get_weights()[0], conv.values().numpy())


# ---------------------------------------------------------------------------------------------- .keras files


def test_quantize_model_takes_a_keras3_file(tmp_path, fashion_small):
    keras.utils.set_random_seed(0)
    model = demo_cnn()
    model.save(tmp_path / "float.keras")
    for path in (str(tmp_path / "float.keras"), tmp_path / "float.keras"):
        qmodel = tf_ecqx.quantize_model(path, bits=4)
        assert {k.layer_name for k in quantized_kernels(qmodel)} == {"conv1", "conv2", "fc1", "logits"}
    _, test = fashion_small
    assert_same_outputs(
        outputs_of(model, test.x[:32]), outputs_of(tf_ecqx.from_keras3(tmp_path / "float.keras"), test.x[:32])
    )


def test_exclude_takes_keras3_layer_classes_and_names():
    keras.utils.set_random_seed(0)
    qmodel = tf_ecqx.quantize_model(demo_cnn(), bits=4, exclude=[keras.layers.Dense, "conv2"])
    assert [k.layer_name for k in quantized_kernels(qmodel)] == ["conv1"]
    with pytest.raises(ValueError, match=r"exclude names the Keras 3 class .*Twice, which has no tf_keras"):
        tf_ecqx.quantize_model(demo_cnn(), exclude=Twice)


def test_quantize_model_takes_a_tf_keras_file_and_from_keras3_refuses_it(tmp_path):
    tf_model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    tf_model.save(tmp_path / "tf_keras.keras")
    qmodel = tf_ecqx.quantize_model(tmp_path / "tf_keras.keras", bits=4)
    assert [k.layer_name for k in quantized_kernels(qmodel)] == [tf_model.layers[-1].name]
    with pytest.raises(ValueError, match=r"saved by Keras 2\..*tf_keras\.models\.load_model"):
        tf_ecqx.from_keras3(tmp_path / "tf_keras.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a `.keras` model archive"):
        tf_ecqx.quantize_model(tmp_path / "broken.keras")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        tf_ecqx.quantize_model(str(tmp_path / "missing.keras"))


# ---------------------------------------------------------------------------------------------------- refusals


class Twice(keras.layers.Layer):
    def call(self, x):
        return 2 * x


class SubclassedMLP(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = L.Dense(8, activation="relu")
        self.out = L.Dense(10)

    def call(self, x):
        return self.out(self.hidden(x))


def functional(*layers, shape=(12, 8)) -> keras.Model:
    inputs = keras.Input(shape, name="features")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="refused")


def test_subclassed_keras3_model_is_refused():
    model = SubclassedMLP()
    model(np.zeros((1, 4), np.float32))
    for convert in (tf_ecqx.from_keras3, tf_ecqx.quantize_model):
        with pytest.raises(ValueError, match=r"'subclassed_mlp' \(SubclassedMLP\) is a subclassed.*functional API"):
            convert(model)


def test_unbuilt_keras3_model_is_refused():
    model = keras.Sequential([L.Dense(8), L.Dense(10)], name="unbuilt")
    with pytest.raises(ValueError, match=r"'unbuilt' is not built.*keras\.Input"):
        tf_ecqx.quantize_model(model)


@pytest.mark.parametrize(
    "layer,message",
    [
        (Twice(name="twice"), r"'twice' \(Twice\) is a layer of module .*not a built-in Keras 3 layer.*Replace it"),
        (L.RMSNormalization(name="rms"), r"'rms' \(RMSNormalization\) is a Keras 3 layer that tf_keras does not have"),
        (L.Dense(4, lora_rank=2, name="lora"), r"'lora' \(Dense\) has lora_rank=2, a setting that tf_keras's Dense"),
        (L.Activation("hard_silu", name="hs"), r"'hs' \(Activation\) uses activation 'hard_silu', which tf_keras"),
        # same name, another function: Keras 3's hard_sigmoid is relu6(x + 3) / 6, tf_keras' clip(0.2 x + 0.5)
        (L.Activation("hard_sigmoid", name="hsig"), r"does not compute the same function: output 0 differs"),
    ],
    ids=["custom", "keras3_only", "keras3_only_setting", "keras3_only_activation", "different_activation"],
)
def test_layers_without_tf_keras_counterpart_are_refused(layer, message):
    with pytest.raises(ValueError, match=message):
        tf_ecqx.from_keras3(functional(L.Dense(8, name="fc"), layer))


def test_keras3_ops_between_layers_are_refused():
    inputs = keras.Input((8,), name="features")
    model = keras.Model(inputs, L.Dense(4, name="fc")(inputs) * 2.0)
    with pytest.raises(ValueError, match=r"\(Multiply\) is an operation \(not a layer\) of module 'keras\.src\.ops"):
        tf_ecqx.quantize_model(model)


def test_layer_tfmot_cannot_quantize_is_named_with_the_fix():
    model = functional(L.LSTM(8, name="lstm"), L.Dense(10, name="logits"))
    rebuilt = tf_ecqx.from_keras3(model)  # tf_keras has an LSTM, so the rebuild itself works
    assert isinstance(rebuilt.get_layer("lstm"), tf_keras.layers.LSTM)
    with pytest.raises(ValueError, match=r"'lstm' \(LSTM\) cannot be quantized.*exclude=\['lstm'\]"):
        tf_ecqx.quantize_model(model)


def test_only_tf_ecqx_keras3_imports_keras3():
    package = Path(tf_ecqx.__file__).parent
    importers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import keras\b|from keras\b)", path.read_text(), re.MULTILINE)
    ]
    assert importers == ["keras3.py"]
    assert tf_ecqx.from_keras3 is tf_ecqx.keras3.from_keras3 and tf_ecqx.to_keras3 is tf_ecqx.keras3.to_keras3
    assert {"from_keras3", "to_keras3"} <= set(tf_ecqx.__all__)
