"""allocate_rates: per-layer entropy pressure from the loss's sensitivity (issue 17, lever c), on real Fashion-MNIST."""

import numpy as np
import pytest

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.ecq.assign import layer_lambda
from tf_ecqx.models import compile_for_classification

layers = keras.layers


def two_branch_net() -> keras.Model:
    """Two Dense branches, of which the loss feels the smaller 100x less (its output is scaled down before the sum)."""
    inputs = keras.Input((28, 28, 1))
    x = layers.Flatten()(inputs)
    felt = layers.Dense(64, activation="relu", name="felt")(x)
    faint = layers.Dense(64, activation="relu", name="faint")(layers.Dense(16, name="faint_in")(x))
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Add()([felt, layers.Rescaling(0.01)(faint)])))


def pressure(kernel) -> float:
    """lambda_max,l * d_l: the layer's lambda per unit of the user's."""
    grid = kernel.quantizer.grid(kernel.state)
    return float(layer_lambda(kernel.kernel, grid, 1.0, kernel.state["size_factor"]))


def test_every_layer_gets_the_same_loss_per_bit_and_lambda_keeps_its_scale(trained_bn_cnn, fashion_small):
    train, _ = fashion_small
    qmodel = compile_for_classification(tf_ecqx.quantize_model(trained_bn_cnn, bits=4))
    kernels = list(tf_ecqx.quantized_kernels(qmodel))
    heuristic = [pressure(k) for k in kernels]
    state = [v.numpy() for v in qmodel.non_trainable_variables]

    rates = tf_ecqx.allocate_rates(qmodel, (train.x[:512], train.y[:512]))

    assert [r.name for r in rates] == [k.name for k in kernels]
    assert all(r.sensitivity > 0 for r in rates)
    allocated = np.array([pressure(k) for k in kernels])
    slopes = allocated * np.array([r.sensitivity for r in rates])  # lambda_l * F_l: loss per bit
    capped = np.array([r.size_factor == 1.0 for r in rates])
    assert not capped.all()
    np.testing.assert_allclose(slopes[~capped], slopes[~capped][0], rtol=1e-4)
    assert np.all(slopes[capped] <= slopes[~capped][0] * (1 + 1e-4))  # a capped layer would have taken more
    sizes = np.array([r.n_weights for r in rates])
    np.testing.assert_allclose(
        np.average(np.log(allocated), weights=sizes), np.average(np.log(heuristic), weights=sizes)
    )
    assert not np.allclose(allocated, heuristic)
    # training mode ran for the gradients; BatchNorm statistics and activation ranges are as they were, size factors not
    changed = [v.name for v, s in zip(qmodel.non_trainable_variables, state) if not np.array_equal(v.numpy(), s)]
    assert changed and all("size_factor" in name for name in changed), changed


def test_the_factors_are_saved_with_the_model(trained_bn_cnn, fashion_small, tmp_path):
    train, _ = fashion_small
    qmodel = compile_for_classification(tf_ecqx.quantize_model(trained_bn_cnn, bits=4))
    rates = tf_ecqx.allocate_rates(qmodel, train.as_dataset(16).take(4))
    qmodel.save(tmp_path / "qat.keras")
    with tf_ecqx.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "qat.keras")
    factors = [float(k.state["size_factor"].numpy()) for k in tf_ecqx.quantized_kernels(loaded)]
    np.testing.assert_allclose(factors, [r.size_factor for r in rates], rtol=1e-6)


def test_the_layer_the_loss_hardly_feels_is_pruned_harder_after_fit(fashion_small):
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    model = compile_for_classification(two_branch_net())
    model.fit(train.x, train.y, batch_size=64, epochs=2, verbose=0)

    def sparsity_after_fit(allocate: bool) -> dict[str, float]:
        keras.utils.set_random_seed(0)
        qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.2))
        if allocate:
            rates = {r.name: r for r in tf_ecqx.allocate_rates(qmodel, (train.x, train.y))}
            assert rates["faint_in"].sensitivity < rates["felt"].sensitivity / 100
            assert rates["faint_in"].size_factor == 1.0 > 3 * rates["faint_in"].heuristic_factor
        qmodel.fit(train.x, train.y, batch_size=64, epochs=1, verbose=0)
        return {s.name: s.sparsity for s in tf_ecqx.layer_stats(qmodel)}

    heuristic, allocated = sparsity_after_fit(False), sparsity_after_fit(True)
    assert allocated["faint_in"] > heuristic["faint_in"] + 0.1, (heuristic, allocated)
    assert allocated["felt"] < heuristic["felt"], (heuristic, allocated)


@pytest.mark.parametrize(
    "case, match",
    [
        ("not compiled", "not compiled. Compile it with the loss"),
        ("empty data", "data is empty"),
        ("NaN data", "NaN or inf on this data"),
        ("data of the wrong kind", "must be a tf.data.Dataset of \\(x, y\\) batches or a pair"),
        ("batches=0", "batches=0 must be an integer >= 1"),
        ("a float model", "has no ECQ kernel"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(case, match, trained_bn_cnn, fashion_small):
    train, _ = fashion_small
    qmodel = tf_ecqx.quantize_model(trained_bn_cnn, bits=4)
    if case != "not compiled":
        compile_for_classification(qmodel)
    data, options, target = (train.x[:64], train.y[:64]), {}, qmodel
    if case == "empty data":
        data = (train.x[:0], train.y[:0])
    elif case == "NaN data":
        data = (np.full_like(train.x[:64], np.nan), train.y[:64])
    elif case == "data of the wrong kind":
        data = train.x[:64]
    elif case == "batches=0":
        options = {"batches": 0}
    elif case == "a float model":
        target = trained_bn_cnn
    before = [float(k.state["size_factor"].numpy()) for k in tf_ecqx.quantized_kernels(qmodel)]
    with pytest.raises(ValueError, match=match):
        tf_ecqx.allocate_rates(target, data, **options)
    assert [float(k.state["size_factor"].numpy()) for k in tf_ecqx.quantized_kernels(qmodel)] == before
