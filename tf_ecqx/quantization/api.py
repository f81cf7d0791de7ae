"""Model-level verbs on tf_keras models, tfmot style: annotate, apply a scheme, and the scope that loads QAT models.

`tf_ecqx.quantize_model` (intake.py) takes paths and Keras 3 models and builds the settings; here everything is a
tf_keras model and an ECQxQuantizeScheme.
"""

from __future__ import annotations

from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras import quantize as tfmot_quantize
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate
from tf_keras.src.saving.serialization_lib import SafeModeScope

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_ATTRS, KERNEL_KINDS, TF_OP_LAYERS
from tf_ecqx.quantization.configs import ECQxQuantizeConfig
from tf_ecqx.quantization.kernels import initialize_grids, quantized_kernels
from tf_ecqx.quantization.loading_fixes import LOADING_OBJECTS
from tf_ecqx.quantization.model_checks import ExcludeSpec, check_model, check_supported, excluded_layer_names
from tf_ecqx.quantization.nested import flatten_nested
from tf_ecqx.quantization.quantizers import ECQxWeightQuantizer
from tf_ecqx.quantization.scheme import ActivationQuantizeConfig, ECQxQuantizeRegistry, ECQxQuantizeScheme
from tf_ecqx.quantization.settings import ECQxSettings
from tf_ecqx.quantization.transforms import quantize_tf_op_outputs

CUSTOM_OBJECTS = {
    "ECQxWeightQuantizer": ECQxWeightQuantizer,
    "ECQxQuantizeConfig": ECQxQuantizeConfig,
    "ActivationQuantizeConfig": ActivationQuantizeConfig,
}


def quantize_scope(*custom_objects: dict[str, Any]) -> Any:
    """Scope in which saved QAT models (`.keras`, `.h5`) load back: `with quantize_scope(): load_model(path)`.

    Pass dicts `{name: class}` for your own custom layers/configs, as with tfmot.
    """
    tfmot_objects = tfmot_quantize.quantize_scope().custom_objects
    return keras.utils.custom_object_scope(*tfmot_objects, LOADING_OBJECTS, CUSTOM_OBJECTS, *custom_objects)


def quantize_annotate_layer(layer: keras.layers.Layer, quantize_config: Any = None) -> QuantizeAnnotate:
    """Mark a layer for quantization, optionally with its own config (e.g. ECQxQuantizeConfig for a custom layer)."""
    return tfmot_quantize.quantize_annotate_layer(layer, quantize_config)


def _nothing_to_quantize(model: keras.Model) -> ValueError:
    return ValueError(
        f"Model {model.name!r} has no kernel that ECQx quantizes ({KERNEL_KINDS}, or a layer annotated with "
        "ECQxQuantizeConfig); check `exclude`."
    )


def quantize_apply(model: keras.Model, scheme: ECQxQuantizeScheme | None = None) -> keras.Model:
    """Quantize the annotated layers of a model (a clone; the input model is unchanged) and fit the grids.

    tfmot's signature: annotated layers without an own config get ECQx as `scheme.settings` say (kernel layers) or
    tfmot's 8-bit config (others); the default scheme has the default settings.
    """
    if scheme is not None and not isinstance(scheme, ECQxQuantizeScheme):
        raise TypeError(f"quantize_apply takes an ECQxQuantizeScheme, got {type(scheme).__name__}.")
    # tfmot rebuilds the model from its config: a Lambda layer (excluded, in float) comes back from the user's own
    # in-memory function, not from a file, so Keras' guard against loading stored code does not apply.
    with quantize_scope(), SafeModeScope(safe_mode=False):
        qmodel = tfmot_quantize.quantize_apply(model, scheme=scheme or ECQxQuantizeScheme())
    if not any(True for _ in quantized_kernels(qmodel)):
        raise _nothing_to_quantize(model)
    initialize_grids(qmodel)
    return qmodel


def quantize_layers(model: keras.Model, settings: ECQxSettings, exclude: ExcludeSpec = ()) -> keras.Model:
    """A QAT clone of a built tf_keras model (models nested in it inlined; `exclude` may name them): every layer but
    those `exclude` names (or whose class it names) annotated (but TensorFlow-op layers, layers.TF_OP_LAYERS, which
    get an 8-bit output quantizer after them where their int8 kernel has a range of its own), then quantize_apply.
    Layers the user annotated keep their configs; a layer nothing can quantize is refused with the fix named.
    """
    check_model(model)
    model, nested = flatten_nested(model)
    excluded = excluded_layer_names(model, exclude, nested)
    registry = ECQxQuantizeRegistry(settings)
    kept = [layer for layer in model.layers if layer.name not in excluded and not isinstance(layer, TF_OP_LAYERS)]
    for layer in kept:
        check_supported(layer, registry.supports(layer))
    if not any(isinstance(layer, QuantizeAnnotate) or type(layer) in KERNEL_ATTRS for layer in kept):
        raise _nothing_to_quantize(model)

    def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, (keras.layers.InputLayer, QuantizeAnnotate, *TF_OP_LAYERS)) or layer.name in excluded:
            return layer
        return QuantizeAnnotate(layer)

    with quantize_scope():
        annotated = quantize_tf_op_outputs(keras.models.clone_model(model, clone_function=annotate), excluded)
    return quantize_apply(annotated, ECQxQuantizeScheme(settings))
