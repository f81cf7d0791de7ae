"""ECQxQuantizeScheme: tfmot's 8-bit layout transforms and registry, with ECQx for the kernel layers."""

from __future__ import annotations

from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_layout_transform as tfmot_layout,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (
    Default8BitOutputQuantizeConfig,
    NoOpQuantizeConfig,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
    Default8BitQuantizeRegistry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_scheme import (
    Default8BitQuantizeScheme,
)

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_ATTRS
from tf_ecqx.quantization.configs import ECQxQuantizeConfig
from tf_ecqx.quantization.settings import ECQxSettings


class ECQxQuantizeRegistry(Default8BitQuantizeRegistry):
    """tfmot's default 8-bit registry, except that Dense/Conv1D/Conv2D/DepthwiseConv2D kernels get ECQx.

    A BatchNormalization that tfmot's transforms do not fold (one not right after a Conv2D/Dense) keeps float
    parameters and gets an 8-bit output quantizer, so models with such layers still export to full integer.
    """

    def __init__(self, settings: ECQxSettings):
        super().__init__()
        self._layer_quantize_map[keras.layers.BatchNormalization] = Default8BitOutputQuantizeConfig()
        self.settings = settings

    def supports(self, layer: keras.layers.Layer) -> bool:
        return type(layer) in KERNEL_ATTRS or super().supports(layer)

    def get_quantize_config(self, layer: keras.layers.Layer) -> Any:
        if type(layer) in KERNEL_ATTRS:
            return ECQxQuantizeConfig.for_layer(layer, self.settings)
        return super().get_quantize_config(layer)


class ECQxQuantizeLayoutTransform(tfmot_layout.Default8BitQuantizeLayoutTransform):
    """tfmot's 8-bit layout transforms, without their loss of kernel quantization.

    tfmot's LayerReLUQuantize gives a Conv2D/DepthwiseConv2D/Dense followed by a ReLU layer a no-op config (so that no
    fake quantization sits between the two), which also leaves its kernel unquantized. Such layers get their ECQx
    config back with the activation quantization off; the ReLU after them quantizes the output.
    """

    def __init__(self, registry: ECQxQuantizeRegistry):
        self._registry = registry

    def apply(self, model: keras.Model, layer_quantize_map: dict[str, dict[str, Any]]) -> tuple[keras.Model, dict]:
        requested = {name: entry.get("quantize_config") for name, entry in layer_quantize_map.items()}
        transformed, quantize_map = super().apply(model, layer_quantize_map)
        for layer in transformed.layers:
            entry = quantize_map.get(layer.name, {})
            if type(layer) in KERNEL_ATTRS and isinstance(entry.get("quantize_config"), NoOpQuantizeConfig):
                config = requested.get(layer.name) or self._registry.get_quantize_config(layer)
                if isinstance(config, ECQxQuantizeConfig):
                    entry["quantize_config"] = config.without_activation_quantization()
        return transformed, quantize_map


class ECQxQuantizeScheme(Default8BitQuantizeScheme):
    """The scheme `quantize_apply` uses: ECQx kernels as `settings` say (defaults if None), tfmot's 8-bit elsewhere."""

    def __init__(self, settings: ECQxSettings | None = None):
        super().__init__()
        self.settings = settings or ECQxSettings()

    def get_quantize_registry(self) -> ECQxQuantizeRegistry:
        return ECQxQuantizeRegistry(self.settings)

    def get_layout_transformer(self) -> ECQxQuantizeLayoutTransform:
        return ECQxQuantizeLayoutTransform(self.get_quantize_registry())
