"""QuantizationMetrics: per-layer sparsity, entropy and lambda in the Keras logs and in TensorBoard event files."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tf_ecqx
from tf_ecqx._keras import keras


def read_scalars(log_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from every event file under log_dir."""
    scalars: dict[str, dict[int, float]] = {}
    for path in log_dir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_metrics_reach_history_and_tensorboard(fashion_small, tmp_path):
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    qmodel = tf_ecqx.quantize_model(small_cnn(), bits=4, lambda_=0.2)
    qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    metrics = tf_ecqx.QuantizationMetrics(log_dir=tmp_path, update_freq=5)
    history = qmodel.fit(train.x[:512], train.y[:512], batch_size=64, epochs=2, callbacks=[metrics], verbose=0)

    stats = tf_ecqx.layer_stats(qmodel)
    assert len(history.history["ecqx/sparsity"]) == 2
    for s in stats:
        assert history.history[f"ecqx/{s.name}/sparsity"][-1] == pytest.approx(s.sparsity)
        assert history.history[f"ecqx/{s.name}/entropy"][-1] == pytest.approx(s.entropy)
        assert history.history[f"ecqx/{s.name}/lambda"][-1] == pytest.approx(s.layer_lambda) and s.layer_lambda > 0
    total = sum(s.sparsity * s.n_weights for s in stats) / sum(s.n_weights for s in stats)
    assert history.history["ecqx/sparsity"][-1] == pytest.approx(total)

    scalars = read_scalars(tmp_path)
    assert set(scalars) == set(metrics.metrics())
    assert set(scalars["ecqx/sparsity"]) == {5, 8, 10, 15, 16}  # every 5 steps and at both epoch ends (8 steps each)
    assert scalars["ecqx/sparsity"][16] == pytest.approx(history.history["ecqx/sparsity"][-1])
    assert np.all(np.isfinite(list(scalars["ecqx/entropy"].values())))


@pytest.mark.parametrize("update_freq", [0, -3, 2.5, True])
def test_bad_update_freq_is_refused(update_freq):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        tf_ecqx.QuantizationMetrics(update_freq=update_freq)
