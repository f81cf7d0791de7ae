"""The bad-input matrix: each case is a clear error that says what was passed and what is allowed, and nothing is
written half-way or changed in the user's model. (Corrupt, truncated, foreign and other-version bitstreams and
`load_into` mismatches have their own table in test_bitstream.py.)"""

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tf_ecqx
from tf_ecqx._keras import keras


def dense_model() -> keras.Model:
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])


def subclassed_model() -> keras.Model:
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), np.float32))
    return net


def lstm_model() -> keras.Model:
    inputs = keras.Input((5, 3))
    x = keras.layers.LSTM(4, name="my_lstm")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def lambda_model(as_tf_op: bool = False) -> keras.Model:
    """A Conv2D net on 28x28 images made 28x28x1 by a Lambda (as keyword-spotting nets often begin) or a TF op."""
    inputs = keras.Input((28, 28))
    add_channel = keras.layers.Lambda(lambda images: tf.expand_dims(images, -1), name="add_channel")
    x = tf.expand_dims(inputs, -1) if as_tf_op else add_channel(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))


def half_precision_model() -> keras.Model:
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, dtype="mixed_float16")])


def non_finite_model(bad: float) -> keras.Model:
    model = dense_model()
    kernel = model.layers[0].kernel.numpy()
    kernel[0, 0] = bad
    model.layers[0].kernel.assign(kernel)
    return model


class Context(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    trained: keras.Model  # an ECQx QAT model after a few fit steps
    untrained: keras.Model  # quantized, never fit
    out: Any  # a fresh directory


def compiled(qmodel: keras.Model) -> keras.Model:
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return qmodel


def fit_with_relevance(ctx: Context, data: Any) -> None:
    qmodel = compiled(tf_ecqx.quantize_model(small_cnn(), bits=4, ecqx=True))
    callback = tf_ecqx.RelevanceCallback(data, "epsilon_plus_flat")
    qmodel.fit(ctx.x[:64], ctx.y[:64], epochs=1, callbacks=[callback], verbose=0)


def with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 5, 5, 0] = np.nan
    return x


class Case(NamedTuple):
    action: Callable[[Context], Any]
    error: type[Exception]
    message: str


CASES = {
    # quantize_model arguments
    **{
        f"bits={b!r}": Case(lambda c, b=b: tf_ecqx.quantize_model(dense_model(), bits=b), ValueError, "2 to 8")
        for b in (1, 9, 16, 0, -4, 4.5)
    },
    **{
        f"lambda={v!r}": Case(
            lambda c, v=v: tf_ecqx.quantize_model(dense_model(), lambda_=v), ValueError, r"finite number in \[0, 100\]"
        )
        for v in (-0.1, float("nan"), float("inf"), 1e300, "0.1")
    },
    **{
        f"p={v!r}": Case(
            lambda c, v=v: tf_ecqx.quantize_model(dense_model(), ecqx=True, p=v), ValueError, "in \\[0, 1\\]"
        )
        for v in (-0.1, 1.5, float("nan"))
    },
    **{
        f"q={v!r}": Case(
            lambda c, v=v: tf_ecqx.quantize_model(dense_model(), ecqx=True, q=v), ValueError, r"q=.*in \[0, 1\]"
        )
        for v in (-0.1, 1.5, float("nan"), "0.1", None)
    },
    "ecqx not a bool": Case(lambda c: tf_ecqx.quantize_model(dense_model(), ecqx="yes"), ValueError, "True or False"),
    "gradient unknown": Case(lambda c: tf_ecqx.quantize_model(dense_model(), gradient="sign"), ValueError, "reference"),
    "relevance composite unknown": Case(
        lambda c: tf_ecqx.RelevanceCallback((c.x, c.y), "lrp.nonsense"), ValueError, "known LRP composite"
    ),
    "relevance not an LRP analyzer": Case(
        lambda c: tf_ecqx.RelevanceCallback((c.x, c.y), "innvestigate:gradient"), ValueError, "LRP analyzer"
    ),
    # the model
    "not a model": Case(lambda c: tf_ecqx.quantize_model(keras.layers.Dense(4)), TypeError, "got Dense"),
    "subclassed model": Case(lambda c: tf_ecqx.quantize_model(subclassed_model()), TypeError, "functional API"),
    "subclassed model nested in a functional one": Case(
        lambda c: tf_ecqx.quantize_model(keras.Sequential([keras.Input((4,)), subclassed_model()])),
        ValueError,
        r"nested model 'net(_\d+)?' \(Net\) has no layer graph.*keras.Input",
    ),
    "unbuilt model": Case(
        lambda c: tf_ecqx.quantize_model(keras.Sequential([keras.layers.Dense(4)])), ValueError, "model.build"
    ),
    "already quantized": Case(lambda c: tf_ecqx.quantize_model(c.trained), ValueError, "already quantized"),
    "unsupported layer": Case(
        lambda c: tf_ecqx.quantize_model(lstm_model()),
        ValueError,
        r"'my_lstm' \(LSTM\).*exclude=\['my_lstm'\].*opt in.*"
        r"ECQxQuantizeConfig\(\['cell.kernel', 'cell.recurrent_kernel'\]",
    ),
    "NaN weights": Case(lambda c: tf_ecqx.quantize_model(non_finite_model(np.nan)), ValueError, "NaN or inf"),
    "inf weights": Case(lambda c: tf_ecqx.quantize_model(non_finite_model(np.inf)), ValueError, "NaN or inf"),
    "mixed-precision layer": Case(
        lambda c: tf_ecqx.quantize_model(half_precision_model()),
        ValueError,
        r"mixed precision.*set_global_policy\('float32'\)",
    ),
    "exclude unknown name": Case(
        lambda c: tf_ecqx.quantize_model(small_cnn(), exclude=["nope"]), ValueError, "exclude names 'nope'"
    ),
    "everything excluded": Case(
        lambda c: tf_ecqx.quantize_model(dense_model(), exclude=[keras.layers.Dense]), ValueError, "no kernel"
    ),
    "model file missing": Case(lambda c: tf_ecqx.quantize_model(c.out / "none.keras"), FileNotFoundError, "none.keras"),
    # training data and the relevance callback
    "momentum=1": Case(lambda c: tf_ecqx.RelevanceCallback((c.x, c.y), momentum=1.0), ValueError, "in \\[0, 1\\)"),
    "every_n_steps=0": Case(
        lambda c: tf_ecqx.RelevanceCallback((c.x, c.y), every_n_steps=0), ValueError, "integer >= 1"
    ),
    "relevance output unknown": Case(
        lambda c: tf_ecqx.RelevanceCallback((c.x, c.y), output="logits"), ValueError, "'logits' is not known"
    ),
    "relevance data empty": Case(lambda c: fit_with_relevance(c, (c.x[:0], c.y[:0])), ValueError, "data is empty"),
    "relevance data of another shape": Case(
        lambda c: fit_with_relevance(c, (c.x[:64, :20], c.y[:64])), ValueError, r"shape \(20, 28, 1\).*\(28, 28, 1\)"
    ),
    "labels of another shape": Case(
        lambda c: fit_with_relevance(c, (c.x[:64], np.eye(4)[c.y[:64] % 4])),
        ValueError,
        r"label rows of width 4; the model has 10 classes",
    ),
    "labels per position for a model that predicts per sample": Case(
        lambda c: fit_with_relevance(c, (c.x[:64], np.stack([np.stack([c.y[:64]] * 2, 1)] * 2, 1))),
        ValueError,
        r"labels of shape \(64, 2, 2\) for 64 samples.*one integer class \(or one-hot row\) per sample\.",
    ),
    "labels out of range": Case(
        lambda c: fit_with_relevance(c, (c.x[:64], c.y[:64] + 10)), ValueError, r"labels outside \[0, 10\)"
    ),
    "NaN in the training data": Case(
        lambda c: compiled(tf_ecqx.quantize_model(small_cnn())).fit(with_nan(c.x[:128]), c.y[:128], verbose=0),
        Exception,  # tf.errors.InvalidArgumentError, raised inside the compiled step
        r"float weights became NaN or inf during training.*NaN or inf in the training data",
    ),
    "ECQx fit without the callback": Case(
        lambda c: compiled(tf_ecqx.quantize_model(small_cnn(), ecqx=True)).fit(c.x[:64], c.y[:64], verbose=0),
        Exception,  # tf.errors.InvalidArgumentError, raised inside the compiled step
        "RelevanceCallback",
    ),
    # export
    "export of a never-trained model": Case(
        lambda c: tf_ecqx.export.to_tflite(c.untrained, c.out / "m.tflite", c.x[:32]), ValueError, "never trained"
    ),
    "representative data empty": Case(
        lambda c: tf_ecqx.export.to_tflite(c.trained, c.out / "m.tflite", c.x[:0]), ValueError, "is empty"
    ),
    "export path not writable": Case(
        lambda c: tf_ecqx.export.to_tflite(c.trained, c.out / "no" / "m.tflite", c.x[:32]), PermissionError, "writable"
    ),
    "bitstream path not writable": Case(
        lambda c: tf_ecqx.export.save(c.trained, c.out / "no" / "k.ecqx"), PermissionError, "writable"
    ),
}


@pytest.fixture(scope="module")
def models(fashion_small) -> tuple[keras.Model, keras.Model]:
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    trained = compiled(tf_ecqx.quantize_model(small_cnn(), bits=4))
    trained.fit(train.x[:256], train.y[:256], batch_size=64, epochs=1, verbose=0)
    return trained, tf_ecqx.quantize_model(small_cnn(), bits=4)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_a_clear_error_and_writes_nothing(case, models, fashion_small, tmp_path):
    train, _ = fashion_small
    ctx = Context(train.x[:256], train.y[:256], *models, tmp_path)
    weights = [w.numpy().copy() for w in ctx.trained.weights]
    with pytest.raises(case.error, match=case.message):
        case.action(ctx)
    assert not any(tmp_path.iterdir()), "nothing may be written when the input is refused"
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(weights, ctx.trained.weights))


def test_the_suggested_fix_for_an_unsupported_layer_works():
    model = lstm_model()
    qmodel = tf_ecqx.quantize_model(model, exclude=["my_lstm"])
    assert [s.name for s in tf_ecqx.layer_stats(qmodel)] == [model.layers[-1].name]


def test_a_lambda_layer_is_refused_with_fixes_that_work(fashion_small, tmp_path):
    train, _ = fashion_small
    images, labels = train.x[:256, ..., 0], train.y[:256]
    model = lambda_model()
    with pytest.raises(
        ValueError, match=r"'add_channel' \(Lambda\).*exclude=\['add_channel'\].*no rule.*TensorFlow ops"
    ) as e:
        tf_ecqx.quantize_model(model)
    assert "annotating" not in str(e.value)  # it holds no weights to opt in
    qmodel = compiled(tf_ecqx.quantize_model(model, exclude=["add_channel"]))
    qmodel.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    result = tf_ecqx.export.to_tflite(qmodel, tmp_path / "m.tflite", images[:64])
    assert result.argmax_agreement >= 0.9
    xmodel = compiled(tf_ecqx.quantize_model(model, exclude=["add_channel"], ecqx=True))
    with pytest.raises(ValueError, match=r"'add_channel' \(Lambda\) is not supported by LRP"):
        xmodel.fit(images, labels, epochs=1, verbose=0, callbacks=[tf_ecqx.RelevanceCallback((images, labels))])
    xmodel = compiled(tf_ecqx.quantize_model(lambda_model(as_tf_op=True), ecqx=True))
    xmodel.fit(images, labels, epochs=1, verbose=0, callbacks=[tf_ecqx.RelevanceCallback((images, labels))])
    assert all(np.abs(k.state["relevance"].numpy()).sum() > 0 for k in tf_ecqx.quantized_kernels(xmodel))


def test_a_global_mixed_precision_policy_is_refused_clearly():
    model = dense_model()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ValueError, match="global dtype policy is 'mixed_float16'"):
            tf_ecqx.quantize_model(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_numpy_scalars_are_accepted_as_settings():
    qmodel = tf_ecqx.quantize_model(dense_model(), bits=np.int64(3), lambda_=np.float32(0.2))
    assert [s.bits for s in tf_ecqx.layer_stats(qmodel)] == [3]


def test_refused_quantization_leaves_the_user_model_untouched():
    model = small_cnn()
    weights = [w.copy() for w in model.get_weights()]
    for bad in ({"bits": 12}, {"exclude": ["nope"]}, {"ecqx": "yes"}):
        with pytest.raises(ValueError):
            tf_ecqx.quantize_model(model, **bad)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
