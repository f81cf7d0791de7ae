"""The models users bring: keras.applications architectures at their smallest widths and inputs (32x32; Xception
71x71), on real Fashion-MNIST padded to 32x32 (and resized for Xception) and repeated to three channels. Each goes
quantize_model -> a few fit steps (ECQx with RelevanceCallback, or ECQ) -> save/load -> resume -> to_tflite mobile
(sparse) and micro, both verified -> bitstream round trip.

No pretrained weights can be fetched here, so the models start from random weights (`application_model`: its
BatchNormalization statistics move fast, so that after 8 steps the outputs depend on the input). EfficientNet goes in
as users must bring it: its Rescaling/Normalization split off (`split_input_preprocessing`) and applied to 0-255
pixels. MobileNetV3Small writes its hard-swish with TF ops, which get an 8-bit output quantizer after them
(quantization/transforms.py). ResNet50, DenseNet121 and Xception are marked `heavy`: `make test-heavy` runs them,
`make test` leaves them out for time.
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.models import application_model, compile_for_classification, rgb32

pytestmark = [pytest.mark.slow, pytest.mark.zoo]

# name: (trained with ECQx and RelevanceCallback, else ECQ; its input preprocessing split off onto the data)
ZOO = {
    "MobileNet": (True, False),
    "MobileNetV2": (False, False),
    "EfficientNetB0": (True, True),  # its scale-only Rescaling would be multiplied into the stem's filter
    "MobileNetV3Small": (True, False),  # hard-swish and squeeze-excite written with TF ops
    "ResNet50": (False, False),
    "DenseNet121": (True, False),
    "Xception": (False, False),
}
# `make test-heavy` runs these, `make test` leaves them out for time (Xception alone took 13 minutes on 2 cores)
HEAVY = ("ResNet50", "DenseNet121", "Xception")
INPUT_SIZES = {"Xception": 71}  # its smallest input; the others take 32x32


@pytest.fixture(scope="module")
def images(fashion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """256 training images with labels and 128 test images, 32x32x3."""
    train, test = fashion
    return rgb32(train.x[:256]), train.y[:256], rgb32(test.x[:128])


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.heavy] * (name in HEAVY)) for name in ZOO])
def test_an_application_model_goes_through_the_whole_pipeline(name, images, tmp_path):
    ecqx, split = ZOO[name]
    size = INPUT_SIZES.get(name, 32)
    keras.utils.set_random_seed(0)
    model = application_model(name, size)
    x, y, x_test = images
    if size != 32:
        x, x_test = (tf.image.resize(a, (size, size)).numpy() for a in (x, x_test))
    if any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers):
        x, x_test = 255 * x, 255 * x_test
    if split:
        preprocess, model = tf_ecqx.split_input_preprocessing(model)
        x, x_test = preprocess.predict(x, verbose=0), preprocess.predict(x_test, verbose=0)
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, ecqx=ecqx))
    callbacks = [tf_ecqx.RelevanceCallback((x[:32], y[:32]), every_n_steps=4)] if ecqx else []
    qmodel.fit(x, y, batch_size=32, epochs=1, callbacks=callbacks, verbose=0)
    kernel_weights = [w for w in model.weights if "kernel" in w.name]
    stats = tf_ecqx.layer_stats(qmodel)
    assert len(stats) == len(kernel_weights), "every kernel is ECQ-quantized"
    assert all(s.distinct_codes <= 16 for s in stats) and sum(s.sparsity * s.n_weights for s in stats) > 0
    assert np.std(qmodel.predict(x_test, verbose=0)) > 0, "the outputs depend on the input"

    qmodel.save(tmp_path / "qat.keras")
    with tf_ecqx.quantize_scope():
        loaded = compile_for_classification(keras.models.load_model(tmp_path / "qat.keras"))
    codes = [k.codes().numpy() for k in tf_ecqx.quantized_kernels(qmodel)]
    assert all(np.array_equal(a, k.codes().numpy()) for a, k in zip(codes, tf_ecqx.quantized_kernels(loaded)))
    loaded.fit(x[:64], y[:64], batch_size=32, epochs=1, callbacks=callbacks, verbose=0)

    for target in ("mobile", "micro"):
        result = tf_ecqx.export.to_tflite(
            loaded, tmp_path / f"{target}.tflite", x[:64], target=target, verification_data=x_test
        )
        assert len(result.kernels) == len(kernel_weights)
    tf_ecqx.export.save(loaded, tmp_path / "kernels.ecqx")
    decoded = tf_ecqx.export.decode((tmp_path / "kernels.ecqx").read_bytes())
    for layer, kernel in zip(decoded, tf_ecqx.quantized_kernels(loaded), strict=True):
        np.testing.assert_array_equal(layer.codes, kernel.codes().numpy())
