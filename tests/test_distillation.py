"""Distiller: QAT with knowledge distillation from the float model, in plain fit, with the library's callbacks."""

import numpy as np
import pytest

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.distillation import distillation_loss
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.kernels import quantized_kernels


def compiled(model: keras.Model) -> keras.Model:
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
    )
    return model


@pytest.fixture(scope="module")
def teacher(fashion_small) -> keras.Model:
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    model = compile_for_classification(keras.Model(inputs, keras.layers.Dense(10)(x)))  # no dropout: same steps
    model.fit(train.x[:1024], train.y[:1024], batch_size=64, epochs=1, verbose=0)
    return model


def test_distillation_loss_is_the_softened_kl_times_t_squared():
    teacher, student = np.array([[2.0, 0.0, -1.0]]), np.array([[0.5, 0.5, 0.0]])
    t = 2.0
    p, q = (np.exp(v / t) / np.exp(v / t).sum() for v in (teacher, student))
    expected = t**2 * np.sum(p * np.log(p / q))
    assert float(distillation_loss(teacher, student, t)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_alpha_one_trains_exactly_like_plain_fit(teacher, fashion_small):
    train, _ = fashion_small
    x, y = train.x[:256], train.y[:256]
    keras.utils.set_random_seed(1)
    plain = compiled(tf_ecqx.quantize_model(teacher, bits=4))
    plain.fit(x, y, batch_size=64, shuffle=False, verbose=0)
    keras.utils.set_random_seed(1)
    distiller = compiled(tf_ecqx.Distiller(tf_ecqx.quantize_model(teacher, bits=4), teacher, alpha=1.0))
    distiller.fit(x, y, batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(quantized_kernels(plain), quantized_kernels(distiller.student)):
        np.testing.assert_allclose(a.kernel.numpy(), b.kernel.numpy(), atol=1e-6)
        np.testing.assert_array_equal(a.codes(), b.codes())


def test_distiller_trains_the_ecqx_student_with_the_callbacks_and_leaves_the_teacher(teacher, fashion_small):
    train, test = fashion_small
    teacher_weights = [w.numpy().copy() for w in teacher.weights]
    student = tf_ecqx.quantize_model(teacher, bits=4, lambda_=0.2, ecqx=True)
    before = [k.kernel.numpy().copy() for k in quantized_kernels(student)]
    distiller = compiled(tf_ecqx.Distiller(student, teacher, temperature=4.0, alpha=0.3))
    callbacks = [
        tf_ecqx.RelevanceCallback((train.x[:256], train.y[:256]), "epsilon_plus_flat"),
        tf_ecqx.LambdaSchedule(ramp_steps=4),
        tf_ecqx.QuantizationMetrics(),
    ]
    history = distiller.fit(train.x[:512], train.y[:512], batch_size=64, epochs=1, callbacks=callbacks, verbose=0)
    logs = {name: values[-1] for name, values in history.history.items()}
    assert {"loss", "accuracy", "distillation_loss", "ecqx/sparsity"} <= logs.keys()
    assert np.isfinite(logs["distillation_loss"]) and logs["distillation_loss"] > 0
    assert all(not np.array_equal(b, k.kernel.numpy()) for b, k in zip(before, quantized_kernels(student)))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(teacher_weights, teacher.weights))
    assert tf_ecqx.layer_stats(distiller) == tf_ecqx.layer_stats(student)
    lines = []
    tf_ecqx.summary(distiller, print_fn=lines.append)
    assert "total" in lines[0]
    results = distiller.evaluate(test.x, test.y, verbose=0, return_dict=True)
    assert results["accuracy"] > 0.5 and results["distillation_loss"] > 0
    student_loss, student_accuracy = compiled(student).evaluate(test.x, test.y, verbose=0)
    assert results["loss"] == pytest.approx(student_loss) and results["accuracy"] == pytest.approx(student_accuracy)
    np.testing.assert_allclose(distiller.predict(test.x[:8], verbose=0), student.predict(test.x[:8], verbose=0))


def wrong_output_model() -> keras.Model:
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t, s: tf_ecqx.Distiller(s, None), "teacher is None"),
        (lambda t, s: tf_ecqx.Distiller(s, s), "teacher is the student itself"),
        (lambda t, s: tf_ecqx.Distiller(s, wrong_output_model()), r"output shape \(5,\) differs .* \(10,\)"),
        (lambda t, s: tf_ecqx.Distiller(s, keras.layers.Dense(10)), "teacher must be a built tf_keras"),
        (lambda t, s: tf_ecqx.Distiller(t, t.__class__.from_config(t.get_config())), "student .* has no ECQ kernel"),
        *[
            (lambda t, s, v=v: tf_ecqx.Distiller(s, t, temperature=v), r"temperature=.* finite number > 0")
            for v in (0, -1.0, float("nan"), float("inf"), "3", True)
        ],
        *[
            (lambda t, s, v=v: tf_ecqx.Distiller(s, t, alpha=v), r"alpha=.*in \[0, 1\]")
            for v in (-0.1, 1.5, float("nan"), None)
        ],
    ],
)
def test_a_distiller_that_cannot_train_is_refused_when_made(make, message, teacher):
    student = tf_ecqx.quantize_model(teacher, bits=4)
    with pytest.raises(ValueError, match=message):
        make(teacher, student)
