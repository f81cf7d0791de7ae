"""Checks on a model before quantization, each failing with an error that names the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_KINDS

ExcludeSpec = Iterable[str | type]


def check_model(model: object) -> keras.Model:
    """A built Sequential or functional tf_keras model that is not quantized yet and has finite weights."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"quantize_model expects a tf_keras or Keras 3 Model (or the path of a .keras file), got "
            f"{type(model).__name__}."
        )
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise TypeError(
            f"Model {model.name!r} ({type(model).__name__}) is a subclassed model; only Sequential and functional "
            "models can be quantized because the layer graph must be cloned. Rebuild it with the functional API."
        )
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so its kernels do not exist yet and no grid can be fitted to them. "
            "Call model.build(input_shape) or pass an `Input`, and load the pretrained weights first."
        )
    wrapped = [layer.name for layer in model.layers if isinstance(layer, QuantizeWrapper)]
    if wrapped:
        raise ValueError(
            f"Model {model.name!r} is already quantized (quantize wrappers on {wrapped}). Quantize the float model "
            "once; to continue training a quantized model, load it inside tf_ecqx.quantize_scope() and call fit."
        )
    check_float32(model)
    for layer in model.layers:
        for weight in layer.weights:
            if not np.all(np.isfinite(weight.numpy())):
                raise ValueError(
                    f"Weight {weight.name!r} of layer {layer.name!r} contains NaN or inf values; the grid cannot be "
                    "fitted to it. Retrain or reload the float model (a diverged training often causes this)."
                )
    return model


def check_float32(model: keras.Model) -> None:
    """Refuse mixed precision: tfmot's fake-quantization ops and the ECQ assignment compute in float32."""
    policy = keras.mixed_precision.global_policy().name
    mixed = [layer.name for layer in model.layers if layer.dtype_policy.compute_dtype in ("float16", "bfloat16")]
    if policy != "float32" or mixed:
        where = (
            f"layers {mixed} compute in float16" if policy == "float32" else f"the global dtype policy is {policy!r}"
        )
        raise ValueError(
            f"Model {model.name!r} cannot be quantized in mixed precision ({where}): tfmot's quantization-aware "
            "training computes in float32. Call keras.mixed_precision.set_global_policy('float32') and build or "
            "load the model again before quantize_model."
        )


def excluded_layer_names(
    model: keras.Model, exclude: ExcludeSpec | None, groups: dict[str, list[str]] | None = None
) -> set[str]:
    """Names of the layers matched by `exclude` (layer names or layer classes); unknown names are an error. `groups`
    names layers by another name (a nested model's name for the layers it held before flatten_nested)."""
    if exclude is None:
        return set()
    if isinstance(exclude, (str, type)):
        exclude = [exclude]
    layer_names = {layer.name for layer in model.layers}
    names: set[str] = set()
    for item in exclude:
        if isinstance(item, type):
            names |= {layer.name for layer in model.layers if isinstance(layer, item)}
        elif isinstance(item, str) and item in (groups or {}):
            names |= set(groups[item])
        elif isinstance(item, str):
            if item not in layer_names:
                raise ValueError(
                    f"exclude names {item!r}, which is not a layer of model {model.name!r}; its layers are "
                    f"{sorted(layer_names)}."
                )
            names.add(item)
        else:
            raise TypeError(f"exclude entries must be layer names or layer classes, got {item!r}.")
    return names


# The weights a user may opt in by annotation for layers tf_ecqx does not quantize by itself (the TFLite export refuses
# them; the bitstream stores them).
OPT_IN_WEIGHTS = {
    keras.layers.Embedding: ["embeddings"],
    keras.layers.LSTM: ["cell.kernel", "cell.recurrent_kernel"],
    keras.layers.GRU: ["cell.kernel", "cell.recurrent_kernel"],
    keras.layers.SimpleRNN: ["cell.kernel", "cell.recurrent_kernel"],
}


def check_supported(layer: keras.layers.Layer, supported: bool) -> None:
    """Fail on a layer no registry entry covers, saying how to exclude or annotate it (or, holding no weights, how
    else to keep it)."""
    if isinstance(layer, (keras.layers.InputLayer, QuantizeAnnotate)) or supported:
        return
    problem = (
        f"Layer {layer.name!r} ({type(layer).__name__}) cannot be quantized by tf_ecqx: it is neither a layer whose "
        f"kernel ECQx quantizes ({KERNEL_KINDS}) nor one with nothing to quantize that tf_ecqx knows. Keep it in "
        f"float with quantize_model(..., exclude=[{layer.name!r}])"
    )
    if not layer.weights:
        raise ValueError(
            f"{problem}: ECQ trains around it and the TFLite export converts the ops it runs, but LRP (and so ECQx) "
            "has no rule for it. Or write what it computes as TensorFlow ops on the Keras tensors (`x * 2.0`, "
            "`tf.expand_dims(x, -1)` in place of a Lambda): tf_ecqx passes those through, elementwise ones with LRP."
        )
    weights = repr(OPT_IN_WEIGHTS[type(layer)]) if type(layer) in OPT_IN_WEIGHTS else "[<its weight attributes>]"
    raise ValueError(
        f"{problem}, or opt in by annotating it in the model with "
        f"quantize_annotate_layer(layer, ECQxQuantizeConfig({weights}, []))."
    )
