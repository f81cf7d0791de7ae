"""Bad input: each case is a clear error that says what was passed and what is allowed."""

import numpy as np
import pytest
from conftest import small_cnn

import tf_ecqx
from tf_ecqx._keras import keras


def dense_model() -> keras.Model:
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])


@pytest.mark.parametrize("bits", [1, 9, 16, 0, -4, 4.5])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=rf"bits={bits!r} is not supported.*2 to 8"):
        tf_ecqx.quantize_model(dense_model(), bits=bits)


@pytest.mark.parametrize("lambda_", [-0.1, float("nan"), float("inf")])
def test_lambda_negative_or_not_finite(lambda_):
    with pytest.raises(ValueError, match=r"lambda_=.* finite number >= 0"):
        tf_ecqx.quantize_model(dense_model(), lambda_=lambda_)


def test_unknown_gradient_rule():
    with pytest.raises(ValueError, match="gradient='sign'.*reference"):
        tf_ecqx.quantize_model(dense_model(), gradient="sign")


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="subclassed model.*functional API"):
        tf_ecqx.quantize_model(net)


def test_unbuilt_model():
    with pytest.raises(ValueError, match="not built.*model.build"):
        tf_ecqx.quantize_model(keras.Sequential([keras.layers.Dense(4)]))


def test_not_a_model():
    with pytest.raises(TypeError, match="expects a tf_keras Model, got Dense"):
        tf_ecqx.quantize_model(keras.layers.Dense(4))


def test_unsupported_layer_names_it_and_says_how_to_exclude_it():
    inputs = keras.Input((5, 3))
    x = keras.layers.LSTM(4, name="my_lstm")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match=r"'my_lstm' \(LSTM\).*exclude=\['my_lstm'\].*quantize_annotate_layer"):
        tf_ecqx.quantize_model(model)
    qmodel = tf_ecqx.quantize_model(model, exclude=["my_lstm"])  # the suggested fix works
    assert [s.name for s in tf_ecqx.layer_stats(qmodel)] == [model.layers[-1].name]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_kernel(bad):
    model = dense_model()
    kernel = model.layers[0].kernel.numpy()
    kernel[0, 0] = bad
    model.layers[0].kernel.assign(kernel)
    with pytest.raises(ValueError, match="of layer 'dense.*contains NaN or inf.*Retrain or reload"):
        tf_ecqx.quantize_model(model)


def test_already_quantized_model():
    qmodel = tf_ecqx.quantize_model(dense_model())
    with pytest.raises(ValueError, match="already quantized.*quantize_scope"):
        tf_ecqx.quantize_model(qmodel)


def test_exclude_unknown_layer_name():
    with pytest.raises(ValueError, match="exclude names 'nope'.*its layers are"):
        tf_ecqx.quantize_model(small_cnn(), exclude=["nope"])


def test_everything_excluded():
    with pytest.raises(ValueError, match="no kernel that ECQx quantizes.*exclude"):
        tf_ecqx.quantize_model(dense_model(), exclude=[keras.layers.Dense])


def test_bad_input_leaves_the_user_model_untouched():
    model = small_cnn()
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError):
        tf_ecqx.quantize_model(model, bits=12)
    with pytest.raises(ValueError):
        tf_ecqx.quantize_model(model, exclude=["nope"])
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
