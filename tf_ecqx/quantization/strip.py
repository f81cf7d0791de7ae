"""strip: turn a QAT model into a plain tf_keras model whose kernels hold the quantized values."""

from __future__ import annotations

from typing import Any

from tf_ecqx._keras import keras
from tf_ecqx.layers import wrapper_weights
from tf_ecqx.quantization.api import quantize_scope
from tf_ecqx.quantization.kernels import QuantizedKernel, quantized_kernels

WRAPPER_CLASSES = {"QuantizeWrapper", "QuantizeWrapperV2"}
INPUT_QUANTIZER_CLASS = "QuantizeLayer"


def _plain_activation(activation: Any) -> Any:
    """The activation a tfmot activation wrapper stands for."""
    if isinstance(activation, dict):
        if activation.get("class_name") == "NoOpActivation":
            return "linear"
        if activation.get("class_name") == "QuantizeAwareActivation":
            return _plain_activation(activation["config"]["activation"])  # may wrap a NoOpActivation
    return activation


def _inner_layer_config(wrapper_config: dict[str, Any]) -> dict[str, Any]:
    inner = dict(wrapper_config["config"]["layer"])
    inner["config"] = dict(inner["config"])
    if "activation" in inner["config"]:
        inner["config"]["activation"] = _plain_activation(inner["config"]["activation"])
    return inner


def _rewire(refs: Any, renamed: dict[str, str], bypassed: dict[str, list[Any]]) -> Any:
    """Replace references [name, node, tensor, kwargs] to wrappers by their inner names, and skip input quantizers."""
    if isinstance(refs, list) and refs and isinstance(refs[0], str):
        name = refs[0]
        if name in bypassed:
            return _rewire(bypassed[name], renamed, bypassed)
        return [renamed.get(name, name), *refs[1:]]
    if isinstance(refs, list):
        return [_rewire(r, renamed, bypassed) for r in refs]
    return refs


def _plain_config(config: dict[str, Any]) -> dict[str, Any]:
    renamed: dict[str, str] = {}
    bypassed: dict[str, list[Any]] = {}
    layers = []
    for layer in config["layers"]:
        if layer["class_name"] == INPUT_QUANTIZER_CLASS:
            if "inbound_nodes" in layer:
                bypassed[layer["config"]["name"]] = layer["inbound_nodes"][0][0]
            continue
        if layer["class_name"] in WRAPPER_CLASSES:
            inner = _inner_layer_config(layer)
            if "inbound_nodes" in layer:
                renamed[layer["config"]["name"]] = inner["config"]["name"]
                inner["name"] = inner["config"]["name"]
                inner["inbound_nodes"] = layer["inbound_nodes"]
            layer = inner
        layers.append(layer)
    plain = {**config, "layers": layers}
    for key in ("input_layers", "output_layers"):
        if key in plain:
            plain[key] = _rewire(plain[key], renamed, bypassed)
    for layer in layers:
        if "inbound_nodes" in layer:
            layer["inbound_nodes"] = _rewire(layer["inbound_nodes"], renamed, bypassed)
    return plain


def strip(qmodel: keras.Model) -> keras.Model:
    """A plain tf_keras model (original layer names, no tfmot layers) with quantized kernels and trained other weights.

    Activations run in float: this is the model to inspect, fine-tune further in float or hand to other tools; the
    integer export reads the QAT model itself.
    """
    quantized: dict[str, list[QuantizedKernel]] = {}
    for kernel in quantized_kernels(qmodel):
        quantized.setdefault(kernel.layer_name, []).append(kernel)
    with quantize_scope():
        plain = type(qmodel).from_config(_plain_config(qmodel.get_config()))
    for layer in qmodel.layers:
        if type(layer).__name__ in WRAPPER_CLASSES:
            target = plain.get_layer(layer.layer.name)
            # tfmot swaps the wrapped kernel attribute for a tensor, which untracks the kernel variable from the inner
            # layer: collect the inner layer's values by variable name from both places.
            values = {_short_name(w): w.numpy() for w in layer.layer.weights}
            values.update({_short_name(w): w.numpy() for w, _, _ in wrapper_weights(layer)})
            for kernel in quantized.get(layer.layer.name, []):
                values[_short_name(kernel.kernel)] = kernel.values().numpy()
            target.set_weights([values[_short_name(w)] for w in target.weights])
        elif type(layer).__name__ != INPUT_QUANTIZER_CLASS and layer.weights:
            plain.get_layer(layer.name).set_weights(layer.get_weights())
    return plain


def _short_name(variable: Any) -> str:
    return variable.name.split("/")[-1]
