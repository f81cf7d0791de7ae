"""What to_tflite is given is checked before anything reaches TensorFlow or a runtime: models it cannot export
(several inputs or outputs, an integer input) and data it cannot feed (wrong shape, no batch axis, NaN/inf, not
numbers, empty) are clear errors that name the problem and the fix, and nothing is written. On real Fashion-MNIST."""

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.export import ExportError, to_tflite
from tf_ecqx.export.runtimes import run_litert

L = keras.layers


def two_outputs() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = L.Flatten()(L.Conv2D(4, 3, strides=2, activation="relu")(inputs))
    return keras.Model(inputs, [L.Dense(10, name="logits")(x), L.Dense(10, name="logits_b")(x)], name="two_outputs")


def two_inputs() -> keras.Model:
    image, mirrored = keras.Input((28, 28, 1), name="image"), keras.Input((28, 28, 1), name="mirrored")
    a = L.Flatten()(L.Conv2D(4, 3, strides=2)(image))
    b = L.Flatten()(L.Conv2D(4, 3, strides=2)(mirrored))
    return keras.Model([image, mirrored], L.Dense(10)(L.Concatenate()([a, b])), name="two_inputs")


def integer_input(dtype: str) -> keras.Model:
    inputs = keras.Input((28, 28, 1), dtype=dtype, name="pixels")
    x = L.Rescaling(1 / 255, name="scale")(inputs)
    x = L.Flatten()(L.Conv2D(4, 3, strides=2, activation="relu")(x))
    return keras.Model(inputs, L.Dense(10)(x), name=f"{dtype}_input")


def scaled_input() -> keras.Model:
    """EfficientNet's stem: a scale-only Rescaling, padding, a strided convolution."""
    inputs = keras.Input((28, 28, 1))
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(L.Rescaling(1 / 8, name="scale")(inputs))
    x = L.Flatten()(L.Conv2D(8, 3, strides=2, activation="relu")(x))
    return keras.Model(inputs, L.Dense(10)(x), name="scaled_input")


def fine_tuned(model: keras.Model, x: Any, y: Any, **quantize: Any) -> keras.Model:
    """ECQ 4-bit QAT model of `model` after one epoch on the given images (so only the tested problem remains)."""
    keras.utils.set_random_seed(0)
    qmodel = tf_ecqx.quantize_model(model, bits=4, **quantize)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return qmodel


@pytest.fixture(scope="module")
def models(fashion_small) -> dict[str, keras.Model]:
    """small_cnn and the model kinds to_tflite refuses, each ECQ fine-tuned on 256 real images."""
    train, _ = fashion_small
    x, y = train.x[:256], train.y[:256]
    pixels = np.round(x * 255)
    return {
        "small_cnn": fine_tuned(small_cnn(), x, y),
        "two_outputs": fine_tuned(two_outputs(), x, [y, y]),
        "two_inputs": fine_tuned(two_inputs(), [x, x[:, :, ::-1]], y),
        "scaled_input": fine_tuned(scaled_input(), x, y),
        **{
            f"{dtype}_input": fine_tuned(integer_input(dtype), pixels.astype(dtype), y, exclude=["scale"])
            for dtype in ("uint8", "int32")
        },
    }


class Context(NamedTuple):
    x: np.ndarray  # 256 real training images, float32 (n, 28, 28, 1)
    models: dict[str, keras.Model]
    path: Any  # the file to_tflite must not write


def export(ctx: Context, data: Any, model: str = "small_cnn", **options: Any) -> Any:
    return to_tflite(ctx.models[model], ctx.path, data, **options)


def with_value(x: np.ndarray, value: float) -> np.ndarray:
    bad = x.copy()
    bad[3, 10, 10, 0] = value
    return bad


class Case(NamedTuple):
    action: Callable[[Context], Any]
    error: type[Exception]
    message: str


ONE_IN_ONE_OUT = "to_tflite exports models with one float input and one output"
CASES = {
    # models
    "two outputs": Case(
        lambda c: export(c, c.x[:64], "two_outputs"),
        ValueError,
        rf"{ONE_IN_ONE_OUT}; model 'two_outputs' has 2 outputs \('quant_logits', 'quant_logits_b'\)\. "
        r"Export a single-output model: keras\.Model\(qmodel\.inputs, qmodel\.outputs\[0\]\)",
    ),
    "two inputs": Case(
        lambda c: export(c, c.x[:64], "two_inputs"),
        ValueError,
        rf"{ONE_IN_ONE_OUT}; model 'two_inputs' has 2 inputs \('image', 'mirrored'\)",
    ),
    **{
        f"{dtype} model input": Case(
            lambda c, dtype=dtype: export(c, np.round(c.x[:64] * 255).astype(dtype), f"{dtype}_input"),
            ValueError,
            rf"{ONE_IN_ONE_OUT}; model '{dtype}_input' takes {dtype} input 'pixels'\. Build the model on a float32",
        )
        for dtype in ("uint8", "int32")
    },
    "scale-only Rescaling before the first convolution": Case(
        lambda c: export(c, c.x[:64], "scaled_input"),
        ExportError,
        r"layer 'conv2d.*' does not hold its ECQ codes .* multiplied the Rescaling layer 'scale' before it into the "
        r"filter but kept the filter's scale.*tf_ecqx\.split_input_preprocessing\(model\)",
    ),
    # representative data
    "representative data of another shape": Case(
        lambda c: export(c, c.x[:64, :20]),
        ValueError,
        r"representative_data has samples of shape \(20, 28, 1\), but the model takes samples of shape \(28, 28, 1\)",
    ),
    "representative data: one image without batch axis": Case(
        lambda c: export(c, c.x[0]),
        ValueError,
        r"representative_data is a single sample of shape \(28, 28, 1\) without a batch axis.*add a batch axis",
    ),
    "representative data: dataset of single images": Case(
        lambda c: export(c, tf.data.Dataset.from_tensor_slices(c.x[:64])),
        ValueError,
        r"representative_data is a single sample of shape \(28, 28, 1\).*dataset\.batch\(32\)",
    ),
    "representative data with NaN": Case(
        lambda c: export(c, with_value(c.x[:64], np.nan)),
        ValueError,
        r"representative_data holds 1 NaN and 0 inf values \(first in sample 3\)",
    ),
    "representative data of strings": Case(
        lambda c: export(c, np.full((64, 28, 28, 1), "0.5")), TypeError, r"representative_data holds <U3 values"
    ),
    "representative data of objects": Case(
        lambda c: export(c, np.array([c.x[0], c.x[1, :20]], dtype=object)),
        TypeError,
        r"representative_data holds object values",
    ),
    "representative (x, y) batches with ragged x": Case(
        lambda c: export(c, iter([([c.x[0], c.x[1, :20]], [0, 1])])),
        TypeError,
        r"representative_data is not an array of numbers",
    ),
    # verification data
    "verification data of another shape": Case(
        lambda c: export(c, c.x[:64], verification_data=c.x[:64, :, :20]),
        ValueError,
        r"verification_data has samples of shape \(28, 20, 1\), but the model takes samples of shape \(28, 28, 1\)",
    ),
    "verification data without the channel axis": Case(
        lambda c: export(c, c.x[:64], verification_data=c.x[:64, :, :, 0]),
        ValueError,
        r"verification_data has samples of shape \(28, 28\), but the model takes samples of shape \(28, 28, 1\)",
    ),
    "verification data with inf": Case(
        lambda c: export(c, c.x[:64], target="micro", verification_data=with_value(c.x[:64], -np.inf)),
        ValueError,
        r"verification_data holds 0 NaN and 1 inf values \(first in sample 3\)",
    ),
    "verification data empty": Case(
        lambda c: export(c, c.x[:64], verification_data=c.x[:0]), ValueError, "verification_data is empty"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_export_input_is_a_clear_error_and_writes_nothing(case, models, fashion_small, tmp_path):
    ctx = Context(fashion_small[0].x[:256], models, tmp_path / "m.tflite")
    with pytest.raises(case.error, match=case.message):
        case.action(ctx)
    assert not any(tmp_path.iterdir()), "nothing may be written when the input is refused"


def test_a_refused_export_leaves_the_earlier_file_in_place(models, fashion_small, tmp_path):
    """Verification data of the wrong shape after an export used to abort the process inside TensorFlow."""
    train, test = fashion_small
    path = tmp_path / "m.tflite"
    to_tflite(models["small_cnn"], path, train.x[:64], target="micro", verification_data=test.x[:64])
    written = path.read_bytes()
    with pytest.raises(ValueError, match=r"verification_data has samples of shape \(28, 28\)"):
        to_tflite(models["small_cnn"], path, train.x[:64], target="micro", verification_data=test.x[:64, :, :, 0])
    assert path.read_bytes() == written and [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_a_generator_is_read_once_for_calibration_and_verification(models, fashion_small, tmp_path):
    """It used to be consumed by calibration and then found empty for verification."""
    train, _ = fashion_small
    batches = (train.x[i : i + 16] for i in range(0, 96, 16))
    streamed = to_tflite(models["small_cnn"], tmp_path / "streamed.tflite", batches, sparse=False)
    array = to_tflite(models["small_cnn"], tmp_path / "array.tflite", train.x[:96], sparse=False)
    assert streamed.samples == array.samples == 96
    # the converter names tensors differently from one call to the next, so the bytes differ; the outputs do not
    raw = [run_litert(result.path.read_bytes(), train.x[:96])[0] for result in (streamed, array)]
    np.testing.assert_array_equal(*raw)
    assert streamed.argmax_agreement == array.argmax_agreement
    assert streamed.max_abs_difference == array.max_abs_difference


def test_the_suggested_fix_for_two_outputs_exports(models, fashion_small, tmp_path):
    qmodel = models["two_outputs"]
    single = keras.Model(qmodel.inputs, qmodel.outputs[0])
    result = to_tflite(single, tmp_path / "m.tflite", fashion_small[0].x[:64], sparse=False)
    assert result.bytes == (tmp_path / "m.tflite").stat().st_size and result.argmax_agreement >= 0.8


def test_the_suggested_fix_for_preprocessing_exports(fashion_small, tmp_path):
    """split_input_preprocessing: the core quantized and fed preprocessed images exports with its stem's codes."""
    x, y = fashion_small[0].x[:256], fashion_small[0].y[:256]
    model = scaled_input()
    preprocess, core = tf_ecqx.split_input_preprocessing(model)
    assert [type(layer) for layer in preprocess.layers[1:]] == [L.Rescaling]
    assert not any(isinstance(layer, L.Rescaling) for layer in core.layers)
    np.testing.assert_allclose(core(preprocess(x[:8])), model(x[:8]), rtol=1e-6)
    scaled = preprocess.predict(x, verbose=0)
    result = to_tflite(fine_tuned(core, scaled, y), tmp_path / "m.tflite", scaled[:64])
    assert [check.kind for check in result.kernels] == ["exact", "exact"] and result.relative_error < 0.1


def test_a_model_of_open_input_size_exports_for_the_size_of_the_representative_data(fashion_small, tmp_path):
    """A fully convolutional net takes any image size; its file is made for the representative data's (it used to
    fail in LiteRT: "CONV_2D failed to prepare"), and samples of another size are refused by name."""
    train, test = fashion_small
    inputs = keras.Input((None, None, 1))
    x = L.GlobalMaxPooling2D()(L.Conv2D(16, 3, strides=2, activation="relu")(inputs))
    qmodel = fine_tuned(keras.Model(inputs, L.Dense(10)(x)), train.x[:256], train.y[:256])
    crops = test.x[:64, 2:26, 2:26]
    for target in ("mobile", "micro"):
        result = to_tflite(
            qmodel, tmp_path / f"{target}.tflite", train.x[:64, 2:26, 2:26], target=target, verification_data=crops
        )
        assert result.relative_error < 0.1, target
    assert run_litert((tmp_path / "mobile.tflite").read_bytes(), crops)[1].shape == (64, 10)
    with pytest.raises(ValueError, match=r"verification_data has samples of shape \(28, 28, 1\).*\(24, 24, 1\)"):
        to_tflite(qmodel, tmp_path / "other.tflite", train.x[:64, 2:26, 2:26], verification_data=test.x[:64])
    assert not (tmp_path / "other.tflite").exists()


def test_a_model_without_input_preprocessing_is_its_own_core():
    model = small_cnn()
    preprocess, core = tf_ecqx.split_input_preprocessing(model)
    assert core is model and len(preprocess.layers) == 1
