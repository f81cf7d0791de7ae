"""ECQxQuantizeConfig: which weights of a layer get ECQx and which activations get tfmot's 8-bit fake quantization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
    Default8BitQuantizeConfig,
)

from tf_ecqx._keras import keras
from tf_ecqx.quantization.quantizers import ECQxWeightQuantizer

# Layer kinds whose kernels ECQx quantizes, with the attribute that holds the kernel.
KERNEL_ATTRS: dict[type, str] = {
    keras.layers.Dense: "kernel",
    keras.layers.Conv1D: "kernel",
    keras.layers.Conv2D: "kernel",
    keras.layers.DepthwiseConv2D: "depthwise_kernel",
}


class ECQxQuantizeConfig(Default8BitQuantizeConfig):
    """ECQx on `weight_attrs`, tfmot's 8-bit activation quantization on `activation_attrs` (and the output if asked).

    For a custom layer: `quantize_annotate_layer(layer, ECQxQuantizeConfig(["kernel"], ["activation"], bits=4))`.
    relevance/p switch the kernel to ECQx (see ECQxWeightQuantizer).
    """

    def __init__(
        self,
        weight_attrs: Sequence[str] = ("kernel",),
        activation_attrs: Sequence[str] = ("activation",),
        quantize_output: bool = False,
        bits: int = 4,
        lambda_: float = 0.05,
        gradient: str = "reference",
        relevance: str | None = None,
        p: float = 0.1,
    ):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = ECQxWeightQuantizer(
            bits=bits, lambda_=lambda_, gradient=gradient, relevance=relevance, p=p
        )

    @classmethod
    def for_layer(cls, layer: keras.layers.Layer, **quantizer_kwargs: Any) -> ECQxQuantizeConfig:
        """The config for a built-in layer kind listed in KERNEL_ATTRS."""
        return cls([KERNEL_ATTRS[type(layer)]], ["activation"], False, **quantizer_kwargs)

    def without_activation_quantization(self) -> ECQxQuantizeConfig:
        """The same kernel quantization, with no fake quantization of the layer's activation or output."""
        return ECQxQuantizeConfig(self.weight_attrs, [], False, **self.weight_quantizer.get_config())

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.weight_quantizer.get_config()}
