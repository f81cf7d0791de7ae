"""The ECQx-quantized kernels of a QAT model: reading them (`quantized_kernels`), fitting their grids, and freezing
their quantized values for export. Everything that needs a model's kernels (callbacks, reports, export, the
bitstream, tools) goes through `quantized_kernels`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

from tf_ecqx._keras import keras
from tf_ecqx.ecq.assign import size_factor
from tf_ecqx.layers import kernel_name, wrapper_weights
from tf_ecqx.quantization.quantizers import FROZEN_VALUES, ECQxWeightQuantizer
from tf_ecqx.quantization.settings import ECQxSettings


class QuantizedKernel(NamedTuple):
    """One ECQx-quantized kernel of a QAT model: its wrapper, float shadow variable, quantizer and quantizer state,
    the layer attribute it stands for and its name in reports and the bitstream (layers.kernel_name)."""

    wrapper: QuantizeWrapper
    kernel: tf.Variable
    quantizer: ECQxWeightQuantizer
    state: dict[str, tf.Variable]
    attr: str
    name: str

    @property
    def layer_name(self) -> str:
        return self.wrapper.layer.name

    @property
    def settings(self) -> ECQxSettings:
        return self.quantizer.settings

    def codes(self) -> tf.Tensor:
        """Integer codes of the kernel under the current assignment."""
        return self.quantizer.codes(self.kernel, self.state)

    def values(self) -> tf.Tensor:
        """The quantized kernel, codes * step, exactly as the forward pass computes it (float32)."""
        return self.quantizer.quantized_values(self.kernel, self.state)


def quantized_kernels(qmodel: keras.Model) -> Iterator[QuantizedKernel]:
    """Every ECQx-quantized kernel of a QAT model, in layer order (empty for a model without any)."""
    for layer in qmodel.layers:
        if isinstance(layer, QuantizeWrapper):
            weights = wrapper_weights(layer)
            attrs = getattr(layer.quantize_config, "weight_attrs", None) or [f"weight_{i}" for i in range(len(weights))]
            for (kernel, quantizer, state), attr in zip(weights, attrs):
                if isinstance(quantizer, ECQxWeightQuantizer):
                    name = kernel_name(layer.layer.name, attr, attrs)
                    yield QuantizedKernel(layer, kernel, quantizer, state, attr, name)


def calls_per_forward(qmodel: keras.Model, wrapper: QuantizeWrapper) -> int:
    """How often one forward pass of qmodel calls `wrapper` (a layer shared in the graph more than once)."""
    return sum(node.layer is wrapper for nodes in qmodel._nodes_by_depth.values() for node in nodes) or 1


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


def layer_size_factors(kernels: list[QuantizedKernel]) -> list[float]:
    """The reference's layer-size factor d_l of each kernel, relative to the largest of them."""
    sizes = [int(tf.size(k.kernel)) for k in kernels]
    return [size_factor(n, max(sizes, default=1)) for n in sizes]


def initialize_grids(qmodel: keras.Model) -> None:
    """Fit every kernel's grid to its current (pretrained) values and set the layer-size factors d_l."""
    kernels = list(quantized_kernels(qmodel))
    for k, factor in zip(kernels, layer_size_factors(kernels)):
        k.quantizer.initialize(k.kernel, k.state, factor)
