"""Fixes for loading tfmot QAT models from the `.keras` format (tfmot pull request #1123, unmerged upstream).

When a `.keras` file is loaded, Keras first builds each layer from its stored build config and then calls it; tfmot's
layers do not mark themselves built, so they build twice and expect more variables than were saved. And a wrapper
records its own variables in a different order when its inner layer was already built (as in `quantize_apply`) than
when it was not (as in loading). The subclasses below build once, and always with the inner layer built first.
They keep tfmot's class names because the `.keras` format stores weights under paths made from the
class name; `quantize_scope` maps those names to them, so files written by tfmot or tf_ecqx both load.
"""

from __future__ import annotations

from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer, quantize_wrapper


class QuantizeLayer(quantize_layer.QuantizeLayer):
    """tfmot's QuantizeLayer, built at most once."""

    def build(self, input_shape: Any) -> None:
        if not self.built:
            super().build(input_shape)
            self.built = True


class QuantizeWrapperV2(quantize_wrapper.QuantizeWrapperV2):
    """tfmot's QuantizeWrapperV2, built at most once and in the variable order `quantize_apply` saves."""

    def build(self, input_shape: Any) -> None:
        if self.built:
            return
        if not self.layer.built:
            self.layer.build(input_shape)
        super().build(input_shape)
        self.built = True


LOADING_OBJECTS = {"QuantizeLayer": QuantizeLayer, "QuantizeWrapperV2": QuantizeWrapperV2}
