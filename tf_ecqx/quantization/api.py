"""Model-level verbs: annotate, apply, quantize a whole model, and the scope that loads quantized models back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras import quantize as tfmot_quantize
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

from tf_ecqx._keras import keras
from tf_ecqx.ecq.assign import size_factor
from tf_ecqx.model_files import load_model_file
from tf_ecqx.quantization.configs import KERNEL_ATTRS, ECQxQuantizeConfig
from tf_ecqx.quantization.loading_fixes import LOADING_OBJECTS
from tf_ecqx.quantization.model_checks import ExcludeSpec, check_model, check_supported, excluded_layer_names
from tf_ecqx.quantization.quantizers import FROZEN_VALUES, ECQxWeightQuantizer
from tf_ecqx.quantization.scheme import ECQxQuantizeRegistry, ECQxQuantizeScheme

CUSTOM_OBJECTS = {
    "ECQxWeightQuantizer": ECQxWeightQuantizer,
    "ECQxQuantizeConfig": ECQxQuantizeConfig,
}


class QuantizedKernel(NamedTuple):
    """One ECQx-quantized kernel of a QAT model: its wrapper, float shadow variable, quantizer and quantizer state."""

    wrapper: QuantizeWrapper
    kernel: tf.Variable
    quantizer: ECQxWeightQuantizer
    state: dict[str, tf.Variable]

    @property
    def layer_name(self) -> str:
        return self.wrapper.layer.name

    def codes(self) -> tf.Tensor:
        """Integer codes of the kernel under the current assignment."""
        return self.quantizer.codes(self.kernel, self.state)

    def values(self) -> tf.Tensor:
        """The quantized kernel, codes * step, exactly as the forward pass computes it (float32)."""
        return tf.cast(self.codes(), tf.float32) * self.state["step"]


def quantize_scope(*custom_objects: dict[str, Any]) -> Any:
    """Scope in which saved QAT models (`.keras`, `.h5`) load back: `with quantize_scope(): load_model(path)`.

    Pass dicts `{name: class}` for your own custom layers/configs, as with tfmot.
    """
    tfmot_objects = tfmot_quantize.quantize_scope().custom_objects
    return keras.utils.custom_object_scope(*tfmot_objects, LOADING_OBJECTS, CUSTOM_OBJECTS, *custom_objects)


def quantize_annotate_layer(layer: keras.layers.Layer, quantize_config: Any = None) -> QuantizeAnnotate:
    """Mark a layer for quantization, optionally with its own config (e.g. ECQxQuantizeConfig for a custom layer)."""
    return tfmot_quantize.quantize_annotate_layer(layer, quantize_config)


def quantized_kernels(qmodel: keras.Model) -> Iterator[QuantizedKernel]:
    """Every ECQx-quantized kernel of a QAT model, in layer order."""
    for layer in qmodel.layers:
        if isinstance(layer, QuantizeWrapper):
            for kernel, quantizer, state in layer._weight_vars:  # tfmot keeps them here; its own tools read it too
                if isinstance(quantizer, ECQxWeightQuantizer):
                    yield QuantizedKernel(layer, kernel, quantizer, state)


@contextlib.contextmanager
def frozen_kernels(qmodel: keras.Model) -> Iterator[None]:
    """While active, functions traced from qmodel use each kernel's current quantized values as constants.

    For export: the TFLite converter then gets constant int8 filters and never has to fold the assignment (which it
    cannot for every op the ECQx beta uses). Nothing in the model changes; functions traced before or after are normal.
    """
    kernels = list(quantized_kernels(qmodel))
    try:
        for k in kernels:
            k.state[FROZEN_VALUES] = tf.constant(k.values())
        yield
    finally:
        for k in kernels:
            k.state.pop(FROZEN_VALUES, None)


def initialize_grids(qmodel: keras.Model) -> None:
    """Fit every kernel's grid to its current (pretrained) values and set the layer-size factors d_l."""
    kernels = list(quantized_kernels(qmodel))
    largest = max((int(tf.size(k.kernel)) for k in kernels), default=1)
    for k in kernels:
        k.quantizer.initialize(k.kernel, k.state, size_factor(int(tf.size(k.kernel)), largest))


def _nothing_to_quantize(model: keras.Model) -> ValueError:
    return ValueError(
        f"Model {model.name!r} has no kernel that ECQx quantizes (Dense, Conv1D, Conv2D, DepthwiseConv2D or a layer "
        "annotated with ECQxQuantizeConfig); check `exclude`."
    )


def quantize_apply(
    annotated: keras.Model,
    bits: int = 4,
    lambda_: float = 0.05,
    gradient: str = "reference",
    relevance: str | None = None,
    p: float = 0.1,
) -> keras.Model:
    """Quantize the annotated layers of a model (a clone; the input model is unchanged) and fit the grids.

    Annotated layers without an own config get ECQx (kernel layers) or tfmot's 8-bit config (others).
    """
    settings = ECQxWeightQuantizer(bits, lambda_, gradient, relevance, p).get_config()  # validates before cloning
    with quantize_scope():
        qmodel = tfmot_quantize.quantize_apply(annotated, scheme=ECQxQuantizeScheme(**settings))
    if not any(True for _ in quantized_kernels(qmodel)):
        raise _nothing_to_quantize(annotated)
    initialize_grids(qmodel)
    return qmodel


def _is_keras3(cls: type) -> bool:
    """Whether a class comes from Keras 3 (module "keras.*"), told without importing Keras 3."""
    return any(c.__module__.startswith("keras.") for c in cls.__mro__)


def quantize_model(
    model: keras.Model | str | os.PathLike,
    bits: int = 4,
    lambda_: float = 0.05,
    exclude: ExcludeSpec | None = None,
    gradient: str = "reference",
    relevance: str | None = None,
    p: float = 0.1,
) -> keras.Model:
    """A QAT clone of `model` whose kernels are ECQ-quantized to `bits` bits during training.

    lambda_ sets the entropy pressure (0 = nearest-level rounding; larger = sparser). `exclude` takes layer names or
    classes to keep in float. gradient is "reference" (EC2T centroid-scaled) or "ste" (plain straight-through).
    relevance switches to ECQx: an LRP composite ("epsilon_plus_flat_bn_pass", the reference default, or any name in
    tf_ecqx.relevance.COMPOSITES, "lrp." prefix allowed) or "innvestigate:<analyzer>"; train it with
    `callbacks=[tf_ecqx.RelevanceCallback(train_data)]`. p is the sparsity ECQx may give back relative to ECQ.
    Activations get tfmot's 8-bit fake quantization so that a full-integer TFLite export is possible.
    `model` may also be a Keras 3 model (rebuilt as tf_keras first, see tf_ecqx.from_keras3) or the path of a
    `.keras` file written by either.
    """
    settings = ECQxWeightQuantizer(bits, lambda_, gradient, relevance, p).get_config()
    if isinstance(model, (str, os.PathLike)):
        model = load_model_file(model)
    if exclude is not None:
        exclude = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
    if _is_keras3(type(model)) or any(isinstance(item, type) and _is_keras3(item) for item in exclude or []):
        from tf_ecqx.keras3 import exclude_for_tf_keras, from_keras3  # the only module that imports Keras 3

        model, exclude = from_keras3(model) if _is_keras3(type(model)) else model, exclude_for_tf_keras(exclude)
    check_model(model)
    excluded = excluded_layer_names(model, exclude)
    registry = ECQxQuantizeRegistry()

    def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, (keras.layers.InputLayer, QuantizeAnnotate)) or layer.name in excluded:
            return layer
        return QuantizeAnnotate(layer)

    kept = [layer for layer in model.layers if layer.name not in excluded]
    for layer in kept:
        check_supported(layer, registry.supports(layer))
    if not any(isinstance(layer, QuantizeAnnotate) or type(layer) in KERNEL_ATTRS for layer in kept):
        raise _nothing_to_quantize(model)
    with quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
    return quantize_apply(annotated, **settings)
