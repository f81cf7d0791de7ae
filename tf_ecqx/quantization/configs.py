"""ECQxQuantizeConfig: which weights of a layer get ECQx and which activations get tfmot's 8-bit fake quantization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
    Default8BitQuantizeConfig,
)

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_ATTRS, PER_CHANNEL_KINDS
from tf_ecqx.quantization.quantizers import ECQxWeightQuantizer
from tf_ecqx.quantization.settings import ECQxSettings


class ECQxQuantizeConfig(Default8BitQuantizeConfig):
    """ECQx on `weight_attrs`, tfmot's 8-bit activation quantization on `activation_attrs` (and the output if asked).

    For a custom layer: `quantize_annotate_layer(layer, ECQxQuantizeConfig(["kernel"], ["activation"],
    settings=ECQxSettings(bits=4)))`; without settings, the defaults. A weight attribute may be a dotted path to a
    sublayer's weight: an LSTM's kernels are "cell.kernel" and "cell.recurrent_kernel".
    """

    def __init__(
        self,
        weight_attrs: Sequence[str] = ("kernel",),
        activation_attrs: Sequence[str] = ("activation",),
        quantize_output: bool = False,
        settings: ECQxSettings | None = None,
    ):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = ECQxWeightQuantizer(settings)

    @property
    def settings(self) -> ECQxSettings:
        return self.weight_quantizer.settings

    @classmethod
    def for_layer(cls, layer: keras.layers.Layer, settings: ECQxSettings) -> ECQxQuantizeConfig:
        """The config for a built-in layer kind listed in KERNEL_ATTRS."""
        return cls(KERNEL_ATTRS[type(layer)], ["activation"], False, settings)

    def get_weights_and_quantizers(self, layer: keras.layers.Layer) -> list[tuple[Any, ECQxWeightQuantizer]]:
        """Each kernel with its own quantizer (a SeparableConv has a depthwise and a pointwise kernel)."""
        per_channel = type(layer) in PER_CHANNEL_KINDS
        return [
            (_owner(layer, attr)[1], ECQxWeightQuantizer(self.settings, attr == "depthwise_kernel", per_channel))
            for attr in self.weight_attrs
        ]

    def set_quantize_weights(self, layer: keras.layers.Layer, quantize_weights: list[Any]) -> None:
        """Put the quantized weights where the layer reads them (dotted paths reach into sublayers)."""
        if len(quantize_weights) != len(self.weight_attrs):
            raise ValueError(
                f"Layer {layer.name!r} has {len(self.weight_attrs)} ECQx weights ({self.weight_attrs}), "
                f"{len(quantize_weights)} were given."
            )
        for attr, weight in zip(self.weight_attrs, quantize_weights, strict=True):
            owner, current = _owner(layer, attr)
            if current.shape != weight.shape:
                raise ValueError(
                    f"Layer {layer.name!r}: {attr} has shape {current.shape}, its quantized weight {weight.shape}."
                )
            setattr(owner, attr.rsplit(".", 1)[-1], weight)

    def without_activation_quantization(self) -> ECQxQuantizeConfig:
        """The same kernel quantization, with no fake quantization of the layer's activation or output."""
        return ECQxQuantizeConfig(self.weight_attrs, [], False, self.settings)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "settings": self.settings.get_config()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ECQxQuantizeConfig:
        """The config of a saved model; tf_ecqx 0.1.0 stored the settings' fields flat beside the attributes."""
        config = dict(config)
        layout = {key: config.pop(key) for key in ("weight_attrs", "activation_attrs", "quantize_output")}
        return cls(**layout, settings=ECQxSettings.from_config(config.get("settings", config)))


def _owner(layer: keras.layers.Layer, path: str) -> tuple[Any, Any]:
    """(the object holding the weight at the dotted `path` below `layer`, that weight)."""
    *parents, name = path.split(".")
    owner = layer
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, getattr(owner, name)
