"""The ECQx bitstream of a Keras QAT model: `encode`/`save` its kernel codes, `load_into` a QAT or plain model.

The format itself (pure numpy, every field checked on reading) is container.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tf_ecqx._keras import keras
from tf_ecqx.export.container import (
    DEFAULT_MAX_WEIGHTS,
    DecodedLayer,
    LayerHeader,
    decode_layer,
    encode_layers,
    read_headers,
)
from tf_ecqx.files import atomic_write, check_writable
from tf_ecqx.layers import kernel_attrs, kernel_name
from tf_ecqx.quantization.kernels import QuantizedKernel, quantized_kernels


def _layer_of(kernel: QuantizedKernel) -> DecodedLayer:
    return DecodedLayer(
        name=kernel.name,
        bits=kernel.settings.bits,
        step=np.float32(kernel.state["step"].numpy()),
        k_min=int(kernel.state["k_min"].numpy()),
        k_max=int(kernel.state["k_max"].numpy()),
        codes=kernel.codes().numpy(),
    )


def encode(qmodel: keras.Model) -> bytes:
    """The bitstream of every ECQx-quantized kernel of a QAT model (codes under the current assignment)."""
    kernels = list(quantized_kernels(qmodel))
    if not kernels:
        raise ValueError(f"Model {qmodel.name!r} has no ECQx-quantized kernel; pass the model quantize_model returned.")
    return encode_layers([_layer_of(k) for k in kernels])


def save(qmodel: keras.Model, path: str | Path) -> None:
    """Write `encode(qmodel)` to `path` atomically: a failure leaves any previous file there unchanged."""
    check_writable(path)
    atomic_write(path, encode(qmodel))


# --- loading into models ---

VariableUpdate = tuple[tf.Variable, Any]


def _plain_kernels(model: keras.Model) -> dict[str, tf.Variable]:
    """The kernel variables of a plain model by kernel name: the table's attributes for built-in kinds, "kernel" for
    custom layers."""
    kernels = {}
    for layer in model.layers:
        attrs = kernel_attrs(layer) or ("kernel",)
        for attr in attrs:
            if isinstance(variable := getattr(layer, attr, None), tf.Variable):
                kernels[kernel_name(layer.name, attr, attrs)] = variable
    return kernels


def _shape_problems(layer: LayerHeader, variable: tf.Variable) -> list[str]:
    shape = tuple(variable.shape)
    if layer.shape == shape:
        return []
    return [f"{layer.name}: kernel shape {layer.shape} in the file, {shape} in the model"]


def _qat_problems(kernels: dict[str, QuantizedKernel], layers: list[LayerHeader]) -> list[str]:
    in_file = {layer.name for layer in layers}
    problems = [f"{name}: quantized in the model, not in the file" for name in kernels if name not in in_file]
    for layer in layers:
        kernel = kernels.get(layer.name)
        if kernel is None:
            problems.append(f"{layer.name}: in the file, not an ECQx-quantized layer of the model")
            continue
        problems += _shape_problems(layer, kernel.kernel)
        if kernel.settings.bits != layer.bits:
            problems.append(f"{layer.name}: {layer.bits} bits in the file, {kernel.settings.bits} in the model")
    return problems


def _plain_problems(kernels: dict[str, tf.Variable], layers: list[LayerHeader]) -> list[str]:
    problems = []
    for layer in layers:
        if layer.name in kernels:
            problems += _shape_problems(layer, kernels[layer.name])
        else:
            problems.append(f"{layer.name}: in the file, not a layer with a kernel in the model")
    return problems


def _quantizer_state(layer: DecodedLayer, size_factor: float) -> dict[str, Any]:
    return {"step": layer.step, "k_min": float(layer.k_min), "k_max": float(layer.k_max), "size_factor": size_factor}


def _reproducing_size_factor(kernel: QuantizedKernel, layer: DecodedLayer) -> float:
    """The model's layer-size factor if its ECQ assignment maps the decoded values back to their codes, else 0.

    ECQ recomputes the cluster probabilities from the loaded weights, which sit on the final (sparser) codes instead of
    the training-time nearest levels, so rare levels can cost more than in training and a value exactly on its level
    may still be reassigned. Factor 0 turns the layer's lambda off: nearest-level rounding returns every code.
    """
    factor = float(kernel.state["size_factor"].numpy())
    codes = kernel.quantizer.codes(tf.constant(layer.values), _quantizer_state(layer, factor))
    return factor if np.array_equal(codes.numpy(), layer.codes) else 0.0


def _qat_assignments(kernels: dict[str, QuantizedKernel], layers: list[DecodedLayer]) -> list[VariableUpdate]:
    """Shadow kernel = decoded values, grid = the file's, size factor as `_reproducing_size_factor` finds it."""
    assignments, switched_off = [], []
    for layer in layers:
        kernel = kernels[layer.name]
        factor = _reproducing_size_factor(kernel, layer)
        if factor != float(kernel.state["size_factor"].numpy()):
            switched_off.append(layer.name)
        assignments.append((kernel.kernel, layer.values))
        assignments += [(kernel.state[key], value) for key, value in _quantizer_state(layer, factor).items()]
    if switched_off:
        warnings.warn(
            f"load_into: at this model's lambda_, ECQ would reassign some loaded codes of {switched_off}, so these "
            "layers now round to the nearest level (size factor 0) and keep the file's codes exactly. Fine-tuning "
            "from here puts no entropy pressure on them; to fine-tune with ECQ, resume from the QAT model's .keras "
            "file, or quantize_model a plain model loaded with these kernels.",
            stacklevel=3,
        )
    return assignments


def _mismatch_error(path: str | Path, model: keras.Model, problems: list[str]) -> ValueError:
    listing = "\n".join(f"  - {problem}" for problem in problems)
    return ValueError(
        f"Cannot load {str(path)!r} into model {model.name!r}; nothing was changed. The model's layers do not "
        f"match the file:\n{listing}\nLoad it into a model of the architecture it was written from (same layer "
        "names, kernel shapes and, for a QAT model, bits); tf_ecqx.export.decode lists the file's layers."
    )


def load_into(model: keras.Model, path: str | Path, *, max_weights: int = DEFAULT_MAX_WEIGHTS) -> None:
    """Put the kernels of an ECQx bitstream into `model`, a QAT model (quantize_model) or a plain one (e.g. strip).

    Plain model: each named kernel (layers.kernel_name) gets the decoded values. QAT model: the float shadow
    kernel gets the values and the quantizer the file's grid, so `codes()` returns the file's codes exactly (see
    `_reproducing_size_factor`). The file's headers are checked (`max_weights` as in `decode`) and compared with the
    model before any payload is decoded, and every layer before anything is assigned: on any error nothing changes.
    """
    headers = read_headers(Path(path).read_bytes(), max_weights)
    quantized = {k.name: k for k in quantized_kernels(model)}
    kernels = _plain_kernels(model)
    problems = _qat_problems(quantized, headers) if quantized else _plain_problems(kernels, headers)
    if problems:
        raise _mismatch_error(path, model, problems)
    layers = [decode_layer(header) for header in headers]
    if quantized:
        plan = _qat_assignments(quantized, layers)
    else:
        plan = [(kernels[layer.name], layer.values) for layer in layers]
    for variable, value in plan:
        variable.assign(value)
