"""LambdaSchedule: lambda ramps and user schedules during fit, without retracing, refused before training when they
cannot run; lambda is no layer weight, so saved files keep the layout they had before it (.h5 and .keras)."""

import numpy as np
import pytest

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.kernels import quantized_kernels

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
        self.lambdas.append(float(kernel.quantizer.lambda_variable.numpy()))
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


def test_a_warmup_without_ramp_switches_to_the_target_and_stays_there():
    recorder = fit(qat_model(), tf_ecqx.LambdaSchedule(warmup_steps=3), steps=6)
    np.testing.assert_allclose(recorder.lambdas, TARGET * np.array([0, 0, 0, 1, 1, 1]), rtol=1e-6)


def test_a_user_schedule_sets_lambda_per_step_and_a_resumed_fit_continues_it():
    qmodel = qat_model()
    schedule = tf_ecqx.LambdaSchedule(schedule=lambda step: 0.1 * step)
    first = fit(qmodel, schedule, steps=3)
    second = fit(qmodel, schedule, steps=3)
    np.testing.assert_allclose(first.lambdas + second.lambdas, 0.1 * np.arange(6), rtol=1e-6)


# The weights of qat_model() as tf_ecqx wrote them before LambdaSchedule (main at a52c6f9): files of either format
# store exactly these, so files saved before it load and files saved now load in older versions.
LAYOUT_BEFORE_LAMBDA_SCHEDULE = [
    "quantize_layer/quantize_layer_min:0",
    "quantize_layer/quantize_layer_max:0",
    "quantize_layer/optimizer_step:0",
    *[
        name
        for layer in ("dense", "dense_1")
        for name in (
            f"{layer}/kernel:0",
            f"{layer}/bias:0",
            f"quant_{layer}/optimizer_step:0",
            *(f"quant_{layer}/kernel_ecq_{v}:0" for v in ("step", "k_min", "k_max", "size_factor")),
            f"quant_{layer}/post_activation_min:0",
            f"quant_{layer}/post_activation_max:0",
        )
    ],
]


def test_lambda_is_no_layer_weight_so_saved_files_keep_their_layout():
    keras.backend.clear_session()  # layer names without the counts of earlier tests
    qmodel = qat_model()
    assert [v.name for v in qmodel.weights] == LAYOUT_BEFORE_LAMBDA_SCHEDULE


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_model_saved_mid_ramp_loads_with_the_settings_lambda_and_resumes_the_ramp(tmp_path, suffix):
    qmodel = qat_model()
    fit(qmodel, tf_ecqx.LambdaSchedule(schedule=lambda step: TARGET * (step + 1) / 6), steps=3)  # stopped mid-ramp
    qmodel.save(tmp_path / f"qat{suffix}")
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(tmp_path / f"qat{suffix}")
    assert len(loaded.weights) == len(LAYOUT_BEFORE_LAMBDA_SCHEDULE)
    for a, b in zip(quantized_kernels(qmodel), quantized_kernels(loaded)):
        assert float(b.quantizer.lambda_variable.numpy()) == pytest.approx(TARGET)  # lambda is not saved
        a.quantizer.lambda_variable.assign(TARGET)
        np.testing.assert_array_equal(a.codes(), b.codes())
    resumed = fit(loaded, tf_ecqx.LambdaSchedule(ramp_steps=6), steps=4)  # the ramp goes on from the saved step
    np.testing.assert_allclose(resumed.lambdas, TARGET * np.array([4, 5, 6, 6]) / 6, rtol=1e-6)


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
