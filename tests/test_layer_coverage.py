"""Models beyond Dense/Conv2D stacks, on real Fashion-MNIST, each through quantize -> fit -> save/load -> resume ->
LiteRT and TFLM export -> bitstream: a keyword-spotting-style Conv1D net (images read as 28-step sequences of 28
features), a MobileNet block (BatchNorm folded into bias-free convolutions, depthwise, ReLU6), an EfficientNet-style
block (Rescaling, swish, squeeze-excite Multiply, hard_sigmoid), a DenseNet block and transition (Concatenate, 1x1
convolution -> AveragePooling2D), a Conv2DTranspose net, an Xception-style net of a separable convolution and 1-D
depthwise/transposed convolutions, a depthwise-separable keyword-spotting net (SeparableConv1D), a net of
activations tfmot cannot fuse (relu6, hard_sigmoid), parametric ones (PReLU, LeakyReLU) and ELU, a transformer's blocks
without attention (LayerNormalization, Dense on tokens) and a weight-tied convolution called twice before a grouped one,
all trained with ECQx.
3-D convolutions train with ECQx and go into the bitstream, but TFLite has no integer kernel for them; Embedding tables
and recurrent kernels, opted in by annotation, train with ECQ. Their TFLite export is refused clearly.
"""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (
    Default8BitOutputQuantizeConfig,
)

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.model_checks import OPT_IN_WEIGHTS
from tf_ecqx.relevance import lrp
from tf_ecqx.relevance.innvestigate_backend import InnvestigateBackend

layers = keras.layers


def keyword_spotting_net() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = layers.Reshape((28, 28))(inputs)
    x = layers.Conv1D(16, 3, activation="relu", name="conv_a")(x)
    x = layers.MaxPooling1D(name="pool")(x)
    x = layers.Conv1D(32, 3, activation="relu", name="conv_b")(x)
    x = layers.GlobalMaxPooling1D()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="keyword_spotting")


def efficientnet_block() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = layers.Conv2D(16, 3, strides=2, activation="swish", name="stem")(x)
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(4, 1, activation="swish", name="squeeze")(gate)
    gate = layers.Conv2D(16, 1, name="excite")(gate)
    gate = layers.Activation("hard_sigmoid")(gate)  # MobileNetV3's gate
    x = layers.Multiply(name="scale")([x, gate])
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="efficientnet_block")


def transposed_conv_net() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="down")(inputs)
    x = layers.Conv2DTranspose(8, 3, strides=2, activation="relu", name="up")(x)
    x = layers.AveragePooling2D(4)(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="transposed_conv")


def separable_net() -> keras.Model:
    """SeparableConv2D (two kernels), DepthwiseConv1D and Conv1DTranspose."""
    inputs = keras.Input((28, 28, 1))
    x = layers.SeparableConv2D(16, 3, depth_multiplier=2, activation="relu", name="separable_2d")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Reshape((13, 13 * 16))(x)
    x = layers.DepthwiseConv1D(3, activation="relu", name="depthwise_1d")(x)
    x = layers.Conv1DTranspose(16, 3, strides=2, activation="relu", name="transposed_1d")(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="separable")


def separable_1d_net() -> keras.Model:
    """A depthwise-separable keyword-spotting net (DS-CNN style): SeparableConv1D, causal and not."""
    inputs = keras.Input((28, 28, 1))
    x = layers.Reshape((28, 28))(inputs)
    x = layers.SeparableConv1D(32, 3, padding="causal", activation="relu", name="separable_a")(x)
    x = layers.MaxPooling1D()(x)
    x = layers.SeparableConv1D(64, 3, activation="relu", name="separable_b")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="separable_1d")


def activations_net() -> keras.Model:
    """Activations tfmot cannot quantize inside a layer (relu6, hard_sigmoid: split off into Activation layers),
    the parametric ones (PReLU, LeakyReLU) and ELU, which tfmot does not list."""
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, strides=2, activation="relu6", name="conv_relu6")(inputs)
    x = layers.PReLU(shared_axes=[1, 2])(layers.Conv2D(16, 3, name="conv_prelu")(x))
    x = layers.LeakyReLU(0.1)(layers.Conv2D(16, 3, name="conv_leaky")(x))
    x = layers.Dense(32, activation="hard_sigmoid", name="dense_hard_sigmoid")(layers.Flatten()(x))
    x = layers.ELU()(layers.Dense(32, name="dense_elu")(x))  # TFLite's int8 ELU runs after a Dense, not a Conv2D
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="activations")


def mobilenet_block() -> keras.Model:
    """MobileNet's pattern: bias-free convolutions whose BatchNorm the converter folds in, ReLU6, global pooling."""
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(32, 3, strides=2, use_bias=False, name="conv")(inputs)
    x = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(x))  # moving statistics settle in a short fit
    x = layers.DepthwiseConv2D(3, use_bias=False, name="depthwise")(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(x))
    # a bias-free convolution after the first, with BatchNorm: exported per tensor, its folded bias was garbage (236 %)
    x = layers.Conv2D(64, 1, use_bias=False, name="pointwise")(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(x))
    x = layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="mobilenet_block")


def densenet_block(average_pooling: keras.layers.Layer | None = None) -> keras.Model:
    """DenseNet's pattern: dense blocks of BatchNorm-ReLU-convolutions concatenated to their input, and between them a
    transition of a 1x1 convolution and AveragePooling2D (whose int8 output must keep its input's scale)."""

    def bn_relu(x):
        return layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))

    def dense_block(x, name: str):
        grown = layers.Conv2D(32, 1, use_bias=False, name=f"{name}_bottleneck")(bn_relu(x))
        grown = layers.Conv2D(16, 3, padding="same", use_bias=False, name=f"{name}_grow")(bn_relu(grown))
        return layers.Concatenate()([x, grown])

    inputs = keras.Input((28, 28, 1))
    x = dense_block(layers.Conv2D(16, 3, strides=2, use_bias=False, name="stem")(inputs), "block_1")
    x = layers.Conv2D(32, 1, use_bias=False, name="transition")(bn_relu(x))
    x = dense_block((average_pooling or layers.AveragePooling2D(2))(x), "block_2")
    x = layers.GlobalAveragePooling2D()(bn_relu(x))
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="densenet_block")


def weight_tied_net() -> keras.Model:
    """One convolution applied to the top and the bottom half of the image (a Siamese-style layer, called twice), the
    halves' features stacked and mixed by a grouped convolution (ResNeXt's)."""
    inputs = keras.Input((28, 28, 1))
    shared = layers.Conv2D(16, 3, strides=2, activation="relu", name="shared_conv")
    top = shared(layers.Cropping2D(((0, 14), (0, 0)))(inputs))
    bottom = shared(layers.Cropping2D(((14, 0), (0, 0)))(inputs))
    x = layers.Conv2D(16, 3, groups=4, activation="relu", name="grouped_conv")(layers.Concatenate()([top, bottom]))
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)), name="weight_tied")


def token_mlp_net() -> keras.Model:
    """A transformer's blocks without attention: image rows as 28 tokens, Dense on every token, pre-norm
    LayerNormalization and residual Adds."""
    inputs = keras.Input((28, 28, 1))
    tokens = layers.Dense(32, name="embed")(layers.Reshape((28, 28))(inputs))
    for block in range(2):
        x = layers.LayerNormalization(name=f"norm_{block}")(tokens)
        x = layers.Dense(64, activation="swish", name=f"mlp_up_{block}")(x)
        tokens = layers.Add()([tokens, layers.Dense(32, name=f"mlp_down_{block}")(x)])
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization(name="norm_out")(tokens))
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="token_mlp")


SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)  # quantized as a depthwise and a 1x1 convolution


MODELS = {
    "keyword spotting Conv1D": keyword_spotting_net,
    "MobileNet block": mobilenet_block,
    "EfficientNet block": efficientnet_block,
    "DenseNet block": densenet_block,
    "Conv2DTranspose": transposed_conv_net,
    "separable and 1-D depthwise/transposed": separable_net,
    "SeparableConv1D": separable_1d_net,
    "relu6, hard_sigmoid, PReLU, LeakyReLU, ELU": activations_net,
    "LayerNormalization token MLP": token_mlp_net,
    "a layer called twice, a grouped convolution": weight_tied_net,
}


@pytest.mark.parametrize("name", MODELS)
def test_the_whole_pipeline_runs_on_the_model(name, fashion_small, tmp_path):
    train, test = fashion_small
    data = (train.x, train.y)
    keras.utils.set_random_seed(0)
    model = compile_for_classification(MODELS[name]())
    model.fit(*data, batch_size=64, epochs=3, verbose=0)
    float_accuracy = model.evaluate(test.x, test.y, verbose=0)[1]
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.1, ecqx=True))
    qmodel.fit(*data, batch_size=64, epochs=1, callbacks=[tf_ecqx.RelevanceCallback(data)], verbose=0)
    kernels = {s.name: s for s in tf_ecqx.layer_stats(qmodel)}
    # every kernel is ECQ-quantized, none left in float or to another scheme (a separable convolution's two under the
    # names of the depthwise and 1x1 convolutions it is split into)
    kernel_weights = [w for w in model.weights if "kernel" in w.name]
    single = {layer.name for layer in model.layers if not isinstance(layer, SEPARABLE)}
    assert len(kernels) == len(kernel_weights)
    assert {w.name.split("/")[0] for w in kernel_weights} & single <= set(kernels)
    assert all(s.distinct_codes <= 16 for s in kernels.values())
    assert all(s.sparsity > 0 for s in kernels.values() if s.n_weights >= 100)
    # 4x chance after the short float training; what is tested is that quantization keeps it
    assert float_accuracy > 0.4 and qmodel.evaluate(test.x, test.y, verbose=0)[1] > float_accuracy - 0.05

    qmodel.save(tmp_path / "qat.keras")
    with tf_ecqx.quantize_scope():
        loaded = compile_for_classification(keras.models.load_model(tmp_path / "qat.keras"))
    codes = [k.codes().numpy() for k in tf_ecqx.quantized_kernels(qmodel)]
    assert all(np.array_equal(a, k.codes().numpy()) for a, k in zip(codes, tf_ecqx.quantized_kernels(loaded)))
    loaded.fit(
        train.x[1024:1280],
        train.y[1024:1280],
        batch_size=64,
        epochs=1,
        callbacks=[tf_ecqx.RelevanceCallback(data)],
        verbose=0,
    )

    for target in ("mobile", "micro"):
        result = tf_ecqx.export.to_tflite(
            loaded, tmp_path / f"{target}.tflite", train.x[:200], target=target, verification_data=test.x[:300]
        )
        assert {c.layer for c in result.kernels} == set(kernels)
        assert result.argmax_agreement >= 0.9, (target, result.argmax_agreement)
    tf_ecqx.export.save(loaded, tmp_path / "kernels.ecqx")
    decoded = tf_ecqx.export.decode((tmp_path / "kernels.ecqx").read_bytes())
    for layer, kernel in zip(decoded, tf_ecqx.quantized_kernels(loaded), strict=True):
        np.testing.assert_array_equal(layer.codes, kernel.codes().numpy())


def volumetric_net() -> keras.Model:
    """Each image read as a volume of 4 slices of 7 rows (as video frames or CT slices are): 3-D convolutions."""
    inputs = keras.Input((28, 28, 1))
    x = layers.Reshape((4, 7, 28, 1))(inputs)
    x = layers.Conv3D(8, (2, 3, 3), activation="relu", name="conv3d")(x)
    x = layers.Conv3DTranspose(8, (1, 3, 3), activation="relu", name="up3d")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)), name="volumetric")


def test_3d_convolutions_train_with_ecqx_and_export_only_where_tflite_can_run_them(fashion_small, tmp_path):
    """Conv3D and Conv3DTranspose get ECQx, are explained, saved, resumed and stored in the bitstream. TFLite has no
    integer 3-D convolution: the export refuses them before converting and keeps the file already there; with them
    excluded, the mobile file runs them in float, and TFLM, which has no CONV_3D at all, is refused in its words."""
    train, test = fashion_small
    data = (train.x, train.y)
    keras.utils.set_random_seed(0)
    model = compile_for_classification(volumetric_net())
    model.fit(*data, batch_size=64, epochs=3, verbose=0)
    float_accuracy = model.evaluate(test.x, test.y, verbose=0)[1]
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.1, ecqx=True))
    qmodel.fit(*data, batch_size=64, epochs=1, callbacks=[tf_ecqx.RelevanceCallback(data)], verbose=0)
    stats = {s.name: s for s in tf_ecqx.layer_stats(qmodel)}
    assert set(stats) == {"conv3d", "up3d", "logits"}
    assert all(s.distinct_codes <= 16 and s.sparsity > 0 for s in stats.values())
    assert float_accuracy > 0.4 and qmodel.evaluate(test.x, test.y, verbose=0)[1] > float_accuracy - 0.05
    relevances = lrp(qmodel, test.x[:64], test.y[:64]).weights
    assert all(np.abs(relevances[name]).sum() > 0 for name in ("conv3d", "up3d"))

    qmodel.save(tmp_path / "qat.keras")
    with tf_ecqx.quantize_scope():
        loaded = compile_for_classification(keras.models.load_model(tmp_path / "qat.keras"))
    for kernel, reloaded in zip(tf_ecqx.quantized_kernels(qmodel), tf_ecqx.quantized_kernels(loaded), strict=True):
        np.testing.assert_array_equal(kernel.codes().numpy(), reloaded.codes().numpy())
    loaded.fit(*data, batch_size=64, epochs=1, callbacks=[tf_ecqx.RelevanceCallback(data)], verbose=0)
    tf_ecqx.export.save(loaded, tmp_path / "kernels.ecqx")
    decoded = tf_ecqx.export.decode((tmp_path / "kernels.ecqx").read_bytes())
    for layer, kernel in zip(decoded, tf_ecqx.quantized_kernels(loaded), strict=True):
        np.testing.assert_array_equal(layer.codes, kernel.codes().numpy())

    saved = tmp_path / "model.tflite"
    saved.write_bytes(b"an earlier export")
    for target in ("mobile", "micro"):
        with pytest.raises(
            tf_ecqx.export.ExportError,
            match=r"'conv3d' \(Conv3D\): TFLite runs it in float only.*"
            r"exclude=\['conv3d'\]",
        ):
            tf_ecqx.export.to_tflite(loaded, saved, train.x[:64], target=target)
    assert saved.read_bytes() == b"an earlier export"
    excluded = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, exclude=["conv3d", "up3d"]))
    excluded.fit(*data, batch_size=64, epochs=1, verbose=0)
    result = tf_ecqx.export.to_tflite(excluded, saved, train.x[:200], verification_data=test.x[:300])
    assert [c.layer for c in result.kernels] == ["logits"] and result.argmax_agreement >= 0.9
    with pytest.raises(tf_ecqx.export.ExportError, match=r"TFLM cannot run the micro file.*CONV_3D.*target='mobile'"):
        tf_ecqx.export.to_tflite(excluded, tmp_path / "micro.tflite", train.x[:64], target="micro")
    assert not (tmp_path / "micro.tflite").exists()


def segmentation_net() -> keras.Model:
    """A U-Net in small: per-pixel logits from an encoder-decoder with a skip connection."""
    inputs = keras.Input((28, 28, 1))
    skip = layers.Conv2D(8, 3, padding="same", activation="relu", name="encode")(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="down")(skip)
    x = layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="up")(x)
    return keras.Model(inputs, layers.Conv2D(3, 1, name="pixel_logits")(layers.Concatenate()([skip, x])), name="unet")


def test_a_segmentation_net_trains_with_ecqx_on_pixel_labels_and_exports(fashion_small, tmp_path):
    """A dense prediction: the labels give a class per pixel (background, garment, bright garment, from the real
    images), RelevanceCallback starts LRP at every pixel's label, and the files agree with Keras pixel by pixel."""
    train, test = fashion_small

    def masks(images: np.ndarray) -> np.ndarray:
        return (images[..., 0] > 0.1).astype(np.int32) + (images[..., 0] > 0.6)

    data = (train.x, masks(train.x))
    keras.utils.set_random_seed(0)
    model = compile_for_classification(segmentation_net())
    model.fit(*data, batch_size=64, epochs=2, verbose=0)
    float_accuracy = model.evaluate(test.x, masks(test.x), verbose=0)[1]
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.1, ecqx=True))
    qmodel.fit(*data, batch_size=64, epochs=1, callbacks=[tf_ecqx.RelevanceCallback(data)], verbose=0)
    assert all(s.distinct_codes <= 16 and s.sparsity > 0 for s in tf_ecqx.layer_stats(qmodel))
    # the most frequent class, background, holds 54 % of the test pixels
    assert float_accuracy > 0.7 and qmodel.evaluate(test.x, masks(test.x), verbose=0)[1] > float_accuracy - 0.05
    relevances = [k.state["relevance"].numpy() for k in tf_ecqx.quantized_kernels(qmodel)]
    assert all(np.abs(r).sum() > 0 for r in relevances)
    for target in ("mobile", "micro"):
        result = tf_ecqx.export.to_tflite(
            qmodel, tmp_path / f"{target}.tflite", train.x[:200], target=target, verification_data=test.x[:100]
        )
        assert result.argmax_agreement >= 0.95, (target, result.argmax_agreement)
    with pytest.raises(ValueError, match=r"iNNvestigate explains one output neuron per sample.*tf_ecqx's own LRP"):
        InnvestigateBackend().weight_relevances(model, test.x[:8])


def test_an_autoencoder_trains_with_ecqx_explained_by_its_outputs_and_exports(fashion_small, tmp_path):
    """A regression with one output per pixel: RelevanceCallback takes the images as labels and explains the
    reconstruction itself."""
    train, test = fashion_small
    inputs = keras.Input((28, 28, 1))
    code = layers.Dense(32, activation="relu", name="encode")(layers.Flatten()(inputs))
    decoded = layers.Reshape((28, 28, 1))(layers.Dense(784, activation="sigmoid", name="decode")(code))
    keras.utils.set_random_seed(0)
    model = keras.Model(inputs, decoded)
    model.compile("adam", "mse")
    model.fit(train.x, train.x, batch_size=64, epochs=3, verbose=0)
    qmodel = tf_ecqx.quantize_model(model, bits=4, lambda_=0.1, ecqx=True)
    qmodel.compile("adam", "mse")
    qmodel.fit(train.x, train.x, epochs=1, callbacks=[tf_ecqx.RelevanceCallback((train.x, train.x))], verbose=0)
    assert all(np.abs(k.state["relevance"].numpy()).sum() > 0 for k in tf_ecqx.quantized_kernels(qmodel))
    assert qmodel.evaluate(test.x, test.x, verbose=0) < 1.2 * model.evaluate(test.x, test.x, verbose=0)
    result = tf_ecqx.export.to_tflite(qmodel, tmp_path / "m.tflite", train.x[:200], verification_data=test.x[:100])
    assert result.relative_error < 0.1


def test_ecqx_on_a_layer_lrp_cannot_explain_is_a_clear_error(fashion_small):
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, activation="relu")(inputs)
    x = tf.reduce_max(x, axis=-1, keepdims=True)  # a TensorFlow op on the signal path, not elementwise
    qmodel = tf_ecqx.quantize_model(keras.Model(inputs, layers.Dense(10)(layers.Flatten()(x))), bits=4, ecqx=True)
    train, _ = fashion_small
    with pytest.raises(ValueError, match=r"reduce_max.*neither elementwise.*nor a rearrangement.*ecqx=False"):
        compile_for_classification(qmodel).fit(
            train.x[:64], train.y[:64], callbacks=[tf_ecqx.RelevanceCallback((train.x, train.y))], verbose=0
        )


def test_an_embedding_opted_in_trains_and_is_stored_in_the_bitstream_but_not_exported_to_tflite(
    fashion_small, tmp_path
):
    """An Embedding table gets ECQ when the user annotates it; the TFLite export, which cannot check its codes in the
    file, refuses it with the fixes named and writes nothing."""
    train, _ = fashion_small
    tokens = np.round(train.x[:512, ::2, ::2, 0] * 15).reshape(512, -1)  # each image as 196 tokens of 16 gray levels
    inputs = keras.Input(tokens.shape[1:])
    config = tf_ecqx.ECQxQuantizeConfig(["embeddings"], [])
    x = tf_ecqx.quantize_annotate_layer(layers.Embedding(16, 8, name="pixels"), config)(inputs)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))
    qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4))
    qmodel.fit(tokens, train.y[:512], batch_size=64, epochs=1, verbose=0)
    assert {s.name: s.distinct_codes <= 16 for s in tf_ecqx.layer_stats(qmodel)} == {"pixels": True, "logits": True}
    with pytest.raises(tf_ecqx.export.ExportError, match=r"'pixels' \(Embedding\).*exclude=\['pixels'\].*export.save"):
        tf_ecqx.export.to_tflite(qmodel, tmp_path / "model.tflite", tokens[:64])
    assert not (tmp_path / "model.tflite").exists()
    tf_ecqx.export.save(qmodel, tmp_path / "kernels.ecqx")
    decoded = tf_ecqx.export.decode((tmp_path / "kernels.ecqx").read_bytes())
    for layer, kernel in zip(decoded, tf_ecqx.quantized_kernels(qmodel), strict=True):
        np.testing.assert_array_equal(layer.codes, kernel.codes().numpy())


@pytest.mark.parametrize("kind", [layers.LSTM, layers.GRU, layers.SimpleRNN], ids=lambda kind: kind.__name__)
def test_a_recurrent_layer_opted_in_trains_saves_and_is_stored_in_the_bitstream_but_not_exported_to_tflite(
    kind, fashion_small, tmp_path
):
    """A recurrent layer's kernels live in its cell: the annotation names them by dotted paths (the refusal of the
    unannotated layer says which). The TFLite export refuses it before converting, as it does an Embedding."""
    train, _ = fashion_small
    rows = train.x[:512, :, :, 0]  # each image as 28 steps of 28 pixels
    inputs = keras.Input(rows.shape[1:])
    config = tf_ecqx.ECQxQuantizeConfig(OPT_IN_WEIGHTS[kind], [])
    x = tf_ecqx.quantize_annotate_layer(kind(16, name="rnn"), config)(inputs)
    qmodel = compile_for_classification(tf_ecqx.quantize_model(keras.Model(inputs, layers.Dense(10)(x)), bits=4))
    qmodel.fit(rows, train.y[:512], batch_size=64, epochs=1, verbose=0)
    stats = {s.name: s for s in tf_ecqx.layer_stats(qmodel)}
    assert {"rnn/cell.kernel", "rnn/cell.recurrent_kernel"} <= set(stats)
    assert all(s.distinct_codes <= 16 and s.sparsity > 0 for s in stats.values())
    qmodel.save(tmp_path / "qat.keras")
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "qat.keras")
    kernels = list(tf_ecqx.quantized_kernels(qmodel))
    for kernel, reloaded in zip(kernels, tf_ecqx.quantized_kernels(loaded), strict=True):
        np.testing.assert_array_equal(kernel.codes().numpy(), reloaded.codes().numpy())
    np.testing.assert_allclose(loaded.predict(rows[:64], verbose=0), qmodel.predict(rows[:64], verbose=0), atol=1e-5)
    with pytest.raises(tf_ecqx.export.ExportError, match=rf"'rnn' \({kind.__name__}\).*exclude=\['rnn'\]"):
        tf_ecqx.export.to_tflite(qmodel, tmp_path / "model.tflite", rows[:64])
    assert not (tmp_path / "model.tflite").exists()
    tf_ecqx.export.save(qmodel, tmp_path / "kernels.ecqx")
    decoded = tf_ecqx.export.decode((tmp_path / "kernels.ecqx").read_bytes())
    for layer, kernel in zip(decoded, kernels, strict=True):
        np.testing.assert_array_equal(layer.codes, kernel.codes().numpy())


def test_a_converter_refusal_is_a_clear_error_and_writes_nothing(fashion_small, tmp_path):
    # tfmot's own scheme for AveragePooling2D: an output range trained apart from its input's, which int8
    # AVERAGE_POOL_2D cannot have (tf_ecqx's scheme keeps the input's; before it did, DenseNet121 failed like this)
    own_range = tf_ecqx.quantize_annotate_layer(layers.AveragePooling2D(2), Default8BitOutputQuantizeConfig())
    train, test = fashion_small
    keras.utils.set_random_seed(0)
    qmodel = compile_for_classification(tf_ecqx.quantize_model(densenet_block(own_range), bits=4))
    qmodel.fit(train.x[:512], train.y[:512], batch_size=64, epochs=1, verbose=0)
    saved = tmp_path / "model.tflite"
    saved.write_bytes(b"an earlier export")
    with pytest.raises(tf_ecqx.export.ExportError, match=r"could not convert qmodel: .*average_pool_2d.*exclude="):
        tf_ecqx.export.to_tflite(qmodel, saved, train.x[:64], verification_data=test.x[:64])
    assert saved.read_bytes() == b"an earlier export"


@pytest.mark.parametrize("padding, strides, dilation", [("causal", 1, 2), ("same", 2, 1), ("valid", 1, 1)])
def test_a_separable_conv1d_is_quantized_as_its_depthwise_and_pointwise_convolutions(
    padding, strides, dilation, fashion_small
):
    options = {"strides": strides, "dilation_rate": dilation}
    inputs = keras.Input((28, 28))
    x = layers.SeparableConv1D(16, 3, padding=padding, depth_multiplier=2, name="separable", **options)(inputs)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))
    # the same computation written out by hand, with the same weights
    x = layers.ZeroPadding1D((2 * dilation, 0))(inputs) if padding == "causal" else inputs
    x = layers.DepthwiseConv1D(
        3, padding="valid" if padding == "causal" else padding, depth_multiplier=2, use_bias=False, **options
    )(x)
    x = layers.Conv1D(16, 1)(x)
    written_out = keras.Model(inputs, layers.Dense(10)(layers.Flatten()(x)))
    written_out.set_weights(model.get_weights())
    x = fashion_small[0].x[:256, ..., 0]
    np.testing.assert_allclose(written_out.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)

    outputs = []
    for float_model in (model, written_out):
        keras.utils.set_random_seed(0)
        qmodel = tf_ecqx.quantize_model(float_model, bits=4)
        qmodel.compile(keras.optimizers.SGD(0.0), "mse")  # a fit that only calibrates the activation ranges
        qmodel.fit(x, float_model.predict(x, verbose=0), batch_size=64, epochs=2, verbose=0)
        outputs.append(qmodel.predict(x, verbose=0))
    names = [k.name for k in tf_ecqx.quantized_kernels(tf_ecqx.quantize_model(model, bits=4))]
    assert names == ["separable_depthwise", "separable_pointwise", "logits"]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_an_op_without_an_int8_kernel_is_a_clear_error(fashion_small, tmp_path):
    train, _ = fashion_small
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, strides=2, activation="elu", name="conv")(inputs)  # split off, then quantized apart
    qmodel = tf_ecqx.quantize_model(keras.Model(inputs, layers.Dense(10)(layers.Flatten()(x))), bits=4)
    assert "quant_conv_activation" in [layer.name for layer in qmodel.layers]
    compile_for_classification(qmodel).fit(train.x[:256], train.y[:256], verbose=0)
    with pytest.raises(tf_ecqx.export.ExportError, match=r"could not convert qmodel: .*\(ELU, for one"):
        tf_ecqx.export.to_tflite(qmodel, tmp_path / "model.tflite", train.x[:64])
    assert not (tmp_path / "model.tflite").exists()
