"""The models users bring: keras.applications architectures (untrained, weights=None: no hub is reachable) at their
smallest inputs, on real Fashion-MNIST padded to 32x32 and repeated to three channels. Each goes quantize_model ->
a few fit steps (ECQx with RelevanceCallback where LRP has rules for every layer, else ECQ and LRP's clear refusal) ->
save/load -> resume -> to_tflite mobile (sparse) and micro, both verified -> bitstream round trip.

The heaviest (ResNet50, DenseNet121, Xception) carry the `zoo` marker: `make test` runs them too; `-m "not zoo"`
leaves them out for a quicker local run.
"""

import numpy as np
import pytest

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.models import compile_for_classification

applications = keras.applications


def _build(name: str) -> keras.Model:
    shape = (71, 71, 3) if name == "Xception" else (32, 32, 3)  # Xception's smallest input
    options = {"MobileNet": {"alpha": 0.25}, "MobileNetV2": {"alpha": 0.35}, "MobileNetV3Small": {"alpha": 0.75}}
    return getattr(applications, name)(
        input_shape=shape, weights=None, classes=10, classifier_activation=None, **options.get(name, {})
    )


# name: whether LRP explains it (ECQx), and whether it is heavy
ZOO = {
    "MobileNet": (True, False),
    "MobileNetV2": (True, False),
    "MobileNetV3Small": (False, False),  # hard-swish Multiply: no LRP rule
    "EfficientNetB0": (False, False),  # squeeze-excite Multiply: no LRP rule
    "ResNet50": (True, True),
    "DenseNet121": (True, True),
    "Xception": (True, True),
}


@pytest.fixture(scope="module")
def images(fashion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """256 training images with labels and 128 test images, 32x32x3."""
    train, test = fashion

    def rgb32(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)

    return rgb32(train.x[:256]), train.y[:256], rgb32(test.x[:128])


def _resized(x: np.ndarray, model: keras.Model) -> np.ndarray:
    size = model.input_shape[1]
    return x if x.shape[1] == size else np.asarray(keras.layers.Resizing(size, size)(x))


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.zoo) if heavy else name for name, (_, heavy) in ZOO.items()]
)
def test_an_application_model_goes_through_the_whole_pipeline(name, images, tmp_path):
    explainable, _ = ZOO[name]
    keras.utils.set_random_seed(0)
    model = _build(name)
    x, y, x_test = (_resized(a, model) if a.ndim == 4 else a for a in images)
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, ecqx=explainable))
    callbacks = [tf_ecqx.RelevanceCallback((x[:32], y[:32]), every_n_steps=4)] if explainable else []
    qmodel.fit(x, y, batch_size=32, epochs=1, callbacks=callbacks, verbose=0)
    kernel_weights = [w for w in model.weights if "kernel" in w.name]
    stats = tf_ecqx.layer_stats(qmodel)
    assert len(stats) == len(kernel_weights), "every kernel is ECQ-quantized"
    assert all(s.distinct_codes <= 16 for s in stats) and sum(s.sparsity * s.n_weights for s in stats) > 0
    if not explainable:
        with pytest.raises(ValueError, match=r"is not supported by LRP .*ecqx=False"):
            tf_ecqx.lrp(qmodel, x[:4])

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
