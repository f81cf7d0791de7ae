"""ECQxQuantizeScheme: tfmot's 8-bit layout transforms and registry, with ECQx for the kernel layers."""

from __future__ import annotations

from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (
    Default8BitOutputQuantizeConfig,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
    Default8BitQuantizeRegistry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_scheme import (
    Default8BitQuantizeScheme,
)

from tf_ecqx._keras import keras
from tf_ecqx.quantization.configs import KERNEL_ATTRS, ECQxQuantizeConfig


class ECQxQuantizeRegistry(Default8BitQuantizeRegistry):
    """tfmot's default 8-bit registry, except that Dense/Conv1D/Conv2D/DepthwiseConv2D kernels get ECQx.

    A BatchNormalization that tfmot's transforms do not fold (one not right after a Conv2D/Dense) keeps float
    parameters and gets an 8-bit output quantizer, so models with such layers still export to full integer.
    """

    def __init__(self, **quantizer_kwargs: Any):
        super().__init__()
        self._layer_quantize_map[keras.layers.BatchNormalization] = Default8BitOutputQuantizeConfig()
        self._quantizer_kwargs = quantizer_kwargs

    def supports(self, layer: keras.layers.Layer) -> bool:
        return type(layer) in KERNEL_ATTRS or super().supports(layer)

    def get_quantize_config(self, layer: keras.layers.Layer) -> Any:
        if type(layer) in KERNEL_ATTRS:
            return ECQxQuantizeConfig.for_layer(layer, **self._quantizer_kwargs)
        return super().get_quantize_config(layer)


class ECQxQuantizeScheme(Default8BitQuantizeScheme):
    """The scheme `quantize_apply` uses: ECQx kernels with `quantizer_kwargs` (bits, lambda_, gradient)."""

    def __init__(self, **quantizer_kwargs: Any):
        super().__init__()
        self._quantizer_kwargs = quantizer_kwargs

    def get_quantize_registry(self) -> ECQxQuantizeRegistry:
        return ECQxQuantizeRegistry(**self._quantizer_kwargs)
