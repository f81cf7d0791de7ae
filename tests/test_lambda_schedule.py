"""LambdaSchedule: lambda ramps and user schedules during fit, without retracing, refused before training when they
cannot run, kept by saved models (also files saved before lambda was a variable)."""

import numpy as np
import pytest
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.quantization.quantizers import LAMBDA

TARGET = 0.5


def qat_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    return compile_for_classification(tf_ecqx.quantize_model(model, lambda_=TARGET))


def data(steps: int, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(steps * batch, 16)).astype(np.float32), rng.integers(0, 4, steps * batch)


class Recorder(keras.callbacks.Callback):
    """The lambda and the sparsity of the first kernel at the end of each training step."""

    def __init__(self):
        super().__init__()
        self.lambdas, self.sparsities = [], []

    def on_train_batch_end(self, batch, logs=None):
        kernel = next(quantized_kernels(self.model))
        self.lambdas.append(float(kernel.state[LAMBDA].numpy()))
        self.sparsities.append(float(np.mean(kernel.codes().numpy() == 0)))


def fit(qmodel: keras.Model, schedule: tf_ecqx.LambdaSchedule, steps: int, epochs: int = 1) -> Recorder:
    recorder = Recorder()
    x, y = data(steps)
    qmodel.fit(x, y, batch_size=8, epochs=epochs, callbacks=[schedule, recorder], verbose=0)
    return recorder


def test_warmup_then_linear_ramp_to_each_kernels_lambda_without_retracing():
    qmodel = qat_model()
    recorder = fit(qmodel, tf_ecqx.LambdaSchedule(ramp_steps=4, warmup_steps=2), steps=8)
    np.testing.assert_allclose(recorder.lambdas, TARGET * np.array([0, 0, 0.25, 0.5, 0.75, 1, 1, 1]), rtol=1e-6)
    assert recorder.sparsities[0] < recorder.sparsities[-1]  # lambda 0 is nearest-level rounding
    assert {s.layer_lambda > 0 for s in tf_ecqx.layer_stats(qmodel)} == {True}
    traces = qmodel.train_function.experimental_get_tracing_count()
    again = fit(qmodel, tf_ecqx.LambdaSchedule(schedule=lambda step: 0.05 * step), steps=4)
    assert len(set(again.lambdas)) == 4
    assert qmodel.train_function.experimental_get_tracing_count() == traces  # a new lambda is no new trace


def test_a_user_schedule_sets_lambda_per_step_and_a_resumed_fit_continues_it():
    qmodel = qat_model()
    schedule = tf_ecqx.LambdaSchedule(schedule=lambda step: 0.1 * step)
    first = fit(qmodel, schedule, steps=3)
    second = fit(qmodel, schedule, steps=3)
    np.testing.assert_allclose(first.lambdas + second.lambdas, 0.1 * np.arange(6), rtol=1e-6)


def test_saved_model_keeps_its_scheduled_lambda_and_resumes_the_ramp(tmp_path):
    qmodel = qat_model()
    fit(qmodel, tf_ecqx.LambdaSchedule(schedule=lambda step: TARGET * (step + 1) / 6), steps=3)  # stopped mid-ramp
    qmodel.save(tmp_path / "qat.keras")
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "qat.keras")
    for a, b in zip(quantized_kernels(qmodel), quantized_kernels(loaded)):
        assert float(b.state[LAMBDA].numpy()) == pytest.approx(TARGET * 3 / 6)
        np.testing.assert_array_equal(a.codes(), b.codes())
    resumed = fit(loaded, tf_ecqx.LambdaSchedule(ramp_steps=6), steps=4)
    np.testing.assert_allclose(resumed.lambdas, TARGET * np.array([4, 5, 6, 6]) / 6, rtol=1e-6)


def test_files_saved_before_lambda_was_a_variable_load_with_the_settings_lambda(tmp_path, monkeypatch):
    qmodel = qat_model()
    fit(qmodel, tf_ecqx.LambdaSchedule(warmup_steps=1), steps=2)

    def save_without_lambda(self, store):  # what the wrappers stored before
        variables = self._trainable_weights + self._non_trainable_weights  # as Keras' save_own_variables
        kept = [v for v in variables if not v.name.endswith("_ecq_lambda:0")]
        for i, variable in enumerate(kept):
            store[f"{i}"] = variable.numpy()

    monkeypatch.setattr(quantize_wrapper.QuantizeWrapperV2, "save_own_variables", save_without_lambda, raising=False)
    qmodel.save(tmp_path / "old.keras")
    monkeypatch.undo()
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "old.keras")
    for a, b in zip(quantized_kernels(qmodel), quantized_kernels(loaded)):
        assert float(b.state[LAMBDA].numpy()) == pytest.approx(TARGET)
        np.testing.assert_array_equal(a.codes(), b.codes())


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (tf_ecqx.LambdaSchedule(ramp_steps=6, warmup_steps=3), r"= 9 steps, but this fit ends at step 8"),
        (tf_ecqx.LambdaSchedule(schedule=lambda s: 1.0 - 0.5 * s), r"schedule\(3\) = -0.5.*\[0, 100\]"),
        (tf_ecqx.LambdaSchedule(schedule=lambda s: float("nan")), r"schedule\(0\) = nan"),
        (tf_ecqx.LambdaSchedule(schedule=lambda s: 101 if s == 7 else 0.1), r"schedule\(7\) = 101"),
        (tf_ecqx.LambdaSchedule(schedule=lambda s: "0.1"), r"schedule\(0\) = '0.1'"),
    ],
)
def test_a_schedule_that_cannot_run_is_refused_before_the_first_step(schedule, message):
    qmodel = qat_model()
    before = [w.numpy().copy() for w in qmodel.weights]
    with pytest.raises(ValueError, match=message):
        fit(qmodel, schedule, steps=4, epochs=2)
    assert int(qmodel.optimizer.iterations.numpy()) == 0
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, qmodel.weights))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ramp_steps": -1}, "integer >= 0"),
        ({"ramp_steps": 2.5}, "integer >= 0"),
        ({"warmup_steps": True}, "integer >= 0"),
        ({"schedule": 0.2}, "callable"),
        ({}, "either ramp_steps/warmup_steps"),
        ({"ramp_steps": 3, "schedule": lambda s: 0.1}, "either ramp_steps/warmup_steps"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tf_ecqx.LambdaSchedule(**kwargs)
