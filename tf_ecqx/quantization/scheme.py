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
    Default8BitActivationQuantizeConfig,
    Default8BitQuantizeRegistry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_scheme import (
    Default8BitQuantizeScheme,
)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations.model_transformer import (
    ModelTransformer,
)
from tensorflow_model_optimization.python.core.quantization.keras.quantizers import MovingAverageQuantizer

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_ATTRS
from tf_ecqx.quantization.configs import ECQxQuantizeConfig
from tf_ecqx.quantization.settings import ECQxSettings
from tf_ecqx.quantization.transforms import ActivationSplit, SeparableConv1DSplit

layers = keras.layers
# Layers with nothing to quantize, by what a full-integer export needs of them (tfmot's registry does not list them,
# or, for average pooling, gives them an output range of their own):
# - nothing: their output keeps the input's quantization (TFLite's int8 AVERAGE_POOL_2D must: a trained range of its
#   own stopped DenseNet121's conversion), or, for the affine input preprocessing, the converter calibrates it (with a
#   trained 8-bit output range, Rescaling -> Conv2D(swish) converted 40 % off);
# - an 8-bit quantized output: they compute new values (a BatchNormalization that tfmot's transforms do not fold keeps
#   float parameters, and so does LayerNormalization, which the converter computes from int8 MEAN, RSQRT and MUL).
NO_FAKE_QUANTIZATION = (
    layers.AveragePooling1D,
    layers.AveragePooling2D,
    layers.MaxPooling1D,
    layers.MaxPooling3D,
    layers.ZeroPadding3D,
    layers.Rescaling,
    layers.Normalization,
)
QUANTIZED_OUTPUT = (
    layers.BatchNormalization,
    layers.LayerNormalization,
    layers.PReLU,
    layers.ELU,
    layers.ThresholdedReLU,
    layers.AveragePooling3D,
    layers.UpSampling1D,
    layers.UpSampling3D,
    layers.Multiply,
    layers.Subtract,
    layers.Average,
    layers.Maximum,
    layers.Minimum,
)
# Activations TFLite computes with a fixed output range (tfmot adds no quantizer after them).
FIXED_RANGE_ACTIVATIONS = ("linear", "softmax", "sigmoid", "tanh")


class ActivationQuantizeConfig(Default8BitActivationQuantizeConfig):
    """tfmot's config for Activation layers, which refuses activations it does not list (hard_sigmoid, hard_swish,
    elu, ...): every activation without a fixed TFLite output range gets an 8-bit output quantizer."""

    def get_output_quantizers(self, layer: keras.layers.Layer) -> list:
        name = getattr(layer.activation, "__name__", None)
        if not self.quantize_output or name in FIXED_RANGE_ACTIVATIONS:
            return []
        return [MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]


class ECQxQuantizeRegistry(Default8BitQuantizeRegistry):
    """tfmot's default 8-bit registry, except that the kernels of the layer kinds in layers.KERNEL_ATTRS get ECQx, and
    the layers with nothing to quantize that tfmot does not list (pooling, padding, upsampling of any rank, Rescaling,
    Normalization, element-wise merges, any activation) pass through with what a full-integer export needs.
    """

    def __init__(self, settings: ECQxSettings):
        super().__init__()
        for kind in NO_FAKE_QUANTIZATION:
            self._layer_quantize_map[kind] = NoOpQuantizeConfig()
        for kind in QUANTIZED_OUTPUT:
            self._layer_quantize_map[kind] = Default8BitOutputQuantizeConfig()
        self._layer_quantize_map[layers.Activation] = ActivationQuantizeConfig()
        self.settings = settings

    def supports(self, layer: keras.layers.Layer) -> bool:
        return type(layer) in KERNEL_ATTRS or super().supports(layer)

    def get_quantize_config(self, layer: keras.layers.Layer) -> Any:
        if type(layer) in KERNEL_ATTRS:
            return ECQxQuantizeConfig.for_layer(layer, self.settings)
        return super().get_quantize_config(layer)


class ECQxQuantizeLayoutTransform(tfmot_layout.Default8BitQuantizeLayoutTransform):
    """tfmot's 8-bit layout transforms, after tf_ecqx's own (transforms.py), without their loss of kernel quantization.

    tfmot's LayerReLUQuantize gives a Conv2D/DepthwiseConv2D/Dense followed by a ReLU layer a no-op config (so that no
    fake quantization sits between the two), which also leaves its kernel unquantized. Such layers get their ECQx
    config back with the activation quantization off; the ReLU after them quantizes the output.
    """

    def __init__(self, registry: ECQxQuantizeRegistry):
        self._registry = registry

    def apply(self, model: keras.Model, layer_quantize_map: dict[str, dict[str, Any]]) -> tuple[keras.Model, dict]:
        requested = {name: entry.get("quantize_config") for name, entry in layer_quantize_map.items()}
        model, layer_quantize_map = ModelTransformer(
            model, [SeparableConv1DSplit(), ActivationSplit()], set(layer_quantize_map), layer_quantize_map
        ).transform()
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
