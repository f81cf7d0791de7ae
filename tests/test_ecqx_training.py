"""ECQx training with model.fit: RelevanceCallback, the refusal to train without it, saving, export (real data)."""

import numpy as np
import pytest
from conftest import small_cnn

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.ecq.assign import ecq_codes, sparsity
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.relevance import lrp

P = 0.1


def compiled(model: keras.Model) -> keras.Model:
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


@pytest.fixture(scope="module")
def float_cnn(fashion_small) -> keras.Model:
    """The small BatchNorm CNN trained in float for two epochs on 2048 Fashion-MNIST images."""
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    model = compiled(small_cnn(batch_norm=True))
    model.fit(train.x, train.y, batch_size=64, epochs=2, verbose=0)
    return model


@pytest.fixture
def ecqx_model(float_cnn):
    def make() -> keras.Model:
        keras.utils.set_random_seed(0)
        return compiled(tf_ecqx.quantize_model(float_cnn, bits=4, lambda_=0.3, ecqx=True))

    return make


def ecq_sparsity(kernel) -> float:
    grid = kernel.quantizer.grid(kernel.state)
    return float(sparsity(ecq_codes(kernel.kernel, grid, kernel.settings.lambda_, kernel.state["size_factor"])))


@pytest.fixture(scope="module")
def trained(fashion_small, float_cnn):
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    qmodel = compiled(tf_ecqx.quantize_model(float_cnn, bits=4, lambda_=0.3, ecqx=True))
    callback = tf_ecqx.RelevanceCallback((train.x, train.y), "epsilon_plus_flat_bn_pass", every_n_steps=2)
    history = qmodel.fit(train.x, train.y, batch_size=64, epochs=1, callbacks=[callback], verbose=0)
    return qmodel, history


def test_ecqx_training_learns_and_keeps_sparsity_in_the_interval(trained, fashion_small):
    qmodel, history = trained
    _, test = fashion_small
    assert history.history["accuracy"][-1] > 0.65
    assert qmodel.evaluate(test.x, test.y, verbose=0)[1] > 0.65
    for kernel in quantized_kernels(qmodel):
        relevance = kernel.state["relevance"].numpy()
        assert np.all(np.isfinite(relevance)) and np.count_nonzero(relevance) > 0.1 * relevance.size
        codes = kernel.codes().numpy()
        assert codes.min() >= int(kernel.state["k_min"]) and codes.max() <= int(kernel.state["k_max"])
        s_ecqx, s_ecq = float(sparsity(codes)), ecq_sparsity(kernel)
        assert s_ecq - P - 1.0 / codes.size <= s_ecqx <= s_ecq + 1e-9, kernel.layer_name


def test_relevance_changes_which_weights_are_zero(trained):
    qmodel, _ = trained
    moved = 0
    for kernel in quantized_kernels(qmodel):
        grid = kernel.quantizer.grid(kernel.state)
        ecq = ecq_codes(kernel.kernel, grid, kernel.settings.lambda_, kernel.state["size_factor"]).numpy()
        moved += int(np.sum((ecq == 0) != (kernel.codes().numpy() == 0)))
    assert moved > 0


def test_refresh_mixes_relevances_with_momentum(fashion_small, ecqx_model):
    train, _ = fashion_small
    qmodel = ecqx_model()
    callback = tf_ecqx.RelevanceCallback((train.x[:128], train.y[:128]), momentum=0.25)
    callback.set_model(qmodel)
    callback.on_train_begin()
    first = lrp(qmodel, train.x[:64], train.y[:64]).weights
    callback.refresh()
    second = lrp(qmodel, train.x[64:128], train.y[64:128]).weights
    for kernel in quantized_kernels(qmodel):
        expected = 0.75 * second[kernel.layer_name] + 0.25 * first[kernel.layer_name]
        np.testing.assert_allclose(kernel.state["relevance"].numpy(), expected, rtol=1e-5, atol=1e-9)
        assert float(kernel.state["relevance_budget"]) == 1.0


def test_saved_ecqx_model_loads_with_its_relevances_and_codes(trained, tmp_path):
    qmodel, _ = trained
    path = tmp_path / "ecqx.keras"
    qmodel.save(path)
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(path)
    for original, restored in zip(quantized_kernels(qmodel), quantized_kernels(loaded)):
        assert restored.quantizer.get_config() == original.quantizer.get_config()
        np.testing.assert_array_equal(restored.state["relevance"].numpy(), original.state["relevance"].numpy())
        np.testing.assert_array_equal(restored.codes().numpy(), original.codes().numpy())


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_ecqx_model_is_explained_like_the_original_and_resumes_training(
    suffix, fashion_small, ecqx_model, tmp_path
):
    """Loading gives tf_ecqx's subclasses of tfmot's QAT layers: LRP and RelevanceCallback must handle them."""
    train, _ = fashion_small
    seen, unseen = (train.x[:256], train.y[:256]), (train.x[256:512], train.y[256:512])
    qmodel = ecqx_model()
    callback = tf_ecqx.RelevanceCallback(seen, "epsilon_plus_flat")
    qmodel.fit(*seen, batch_size=64, epochs=1, callbacks=[callback], verbose=0)
    qmodel.save(tmp_path / f"ecqx{suffix}")
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(tmp_path / f"ecqx{suffix}")
    restored = list(quantized_kernels(loaded))
    for original, kernel in zip(quantized_kernels(qmodel), restored, strict=True):
        np.testing.assert_array_equal(kernel.codes().numpy(), original.codes().numpy())
    batch = (unseen[0][:64], unseen[1][:64])
    expected, actual = (
        lrp(qmodel, *batch, composite="epsilon_plus_flat"),
        lrp(loaded, *batch, composite="epsilon_plus_flat"),
    )
    np.testing.assert_allclose(actual.input, expected.input, rtol=1e-6, atol=1e-9)
    assert actual.weights.keys() == expected.weights.keys()
    for name, relevance in expected.weights.items():
        np.testing.assert_allclose(actual.weights[name], relevance, rtol=1e-6, atol=1e-12)

    before = [kernel.state["relevance"].numpy().copy() for kernel in restored]
    callback = tf_ecqx.RelevanceCallback(unseen, "epsilon_plus_flat")
    history = loaded.fit(*unseen, batch_size=64, epochs=1, callbacks=[callback], verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for relevance, kernel in zip(before, restored, strict=True):
        assert not np.array_equal(relevance, kernel.state["relevance"].numpy()), kernel.layer_name


def test_ecqx_model_exports_to_integer_tflite(trained, fashion_small, tmp_path):
    qmodel, _ = trained
    train, test = fashion_small
    result = tf_ecqx.export.to_tflite(qmodel, tmp_path / "ecqx.tflite", train.x[:64], verification_data=test.x[:64])
    assert {check.layer for check in result.kernels} == {stats.name for stats in tf_ecqx.layer_stats(qmodel)}
    assert all(check.max_values_per_channel <= 16 for check in result.kernels)
    assert result.argmax_agreement >= 0.95


def test_innvestigate_source_trains(fashion_small, ecqx_model):
    train, _ = fashion_small
    qmodel = ecqx_model()
    callback = tf_ecqx.RelevanceCallback((train.x, train.y), "innvestigate:lrp.alpha_2_beta_1", every_n_steps=4)
    qmodel.fit(train.x[:512], train.y[:512], batch_size=64, epochs=1, callbacks=[callback], verbose=0)
    for kernel in quantized_kernels(qmodel):
        assert np.count_nonzero(kernel.state["relevance"].numpy()) > 0, kernel.layer_name


def test_callback_on_an_ecq_model_says_what_to_do(fashion_small):
    train, _ = fashion_small
    qmodel = compiled(tf_ecqx.quantize_model(small_cnn(), bits=4))
    callback = tf_ecqx.RelevanceCallback((train.x, train.y))
    with pytest.raises(ValueError, match="has no ECQx kernel"):
        qmodel.fit(train.x[:64], train.y[:64], epochs=1, callbacks=[callback], verbose=0)
