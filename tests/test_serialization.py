"""A QAT model saved as .keras and .h5 loads back inside quantize_scope() with identical codes and resumes training."""

import numpy as np
import pytest
from conftest import small_cnn

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.kernels import quantized_kernels


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_qat_model_loads_with_identical_codes_and_resumes_training(suffix, tmp_path, fashion_small):
    train, test = fashion_small
    qmodel = compile_for_classification(
        tf_ecqx.quantize_model(small_cnn(batch_norm=True, residual=True), bits=3, lambda_=0.2)
    )
    qmodel.fit(train.x[:1024], train.y[:1024], batch_size=64, epochs=1, verbose=0)
    path = tmp_path / f"qat{suffix}"
    qmodel.save(path)
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(path)
    original, restored = list(quantized_kernels(qmodel)), list(quantized_kernels(loaded))
    assert [k.layer_name for k in original] == [k.layer_name for k in restored]
    for a, b in zip(original, restored):
        np.testing.assert_array_equal(a.codes(), b.codes())
        for name in ("step", "k_min", "k_max", "size_factor"):
            assert float(a.state[name].numpy()) == float(b.state[name].numpy())
    np.testing.assert_allclose(
        loaded.predict(test.x[:64], verbose=0), qmodel.predict(test.x[:64], verbose=0), atol=1e-5
    )
    before = [k.kernel.numpy().copy() for k in restored]
    history = loaded.fit(train.x[1024:1536], train.y[1024:1536], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, k.kernel.numpy()) for b, k in zip(before, quantized_kernels(loaded)))
    assert {s.bits for s in tf_ecqx.layer_stats(loaded)} == {3}


def test_loading_without_the_scope_fails_with_keras_error(tmp_path):
    qmodel = tf_ecqx.quantize_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    qmodel.save(tmp_path / "m.keras")
    with pytest.raises((ValueError, TypeError), match="Unknown|QuantizeLayer|quantize"):
        keras.models.load_model(tmp_path / "m.keras")
