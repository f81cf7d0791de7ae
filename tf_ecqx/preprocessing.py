"""Splitting a model's input preprocessing (Rescaling, Normalization) off before quantization.

keras.applications models such as EfficientNet rescale and normalize their input in their first layers. The TFLite
converter multiplies such a scale into the next convolution's int8 filter without rescaling the filter, which rounds
the ECQ codes away (to_tflite refuses the file). Applying the preprocessing to the data instead keeps them.
"""

from __future__ import annotations

from typing import Any

from tf_ecqx._keras import keras
from tf_ecqx.layers import INPUT_PREPROCESSING


def split_input_preprocessing(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(preprocess, core): the Rescaling/Normalization layers a functional model begins with, and the model after
    them, so that core(preprocess(x)) == model(x). Quantize `core` and feed it `preprocess`ed data (map the dataset
    with it, or preprocess the arrays once). Without such layers, `preprocess` is the identity and `core` the model."""
    if not isinstance(model, keras.Model) or len(model.inputs or ()) != 1:
        raise ValueError(
            f"split_input_preprocessing takes a functional or Sequential model with one input, not {model!r}."
        )
    tensor = model.inputs[0]
    while len(consumers := _consumers(model, tensor)) == 1 and isinstance(consumers[0][0], INPUT_PREPROCESSING):
        tensor = consumers[0][1].outputs
    preprocess = keras.Model(model.inputs, tensor, name=f"{model.name}_preprocessing")
    core = model if tensor is model.inputs[0] else keras.Model(tensor, model.outputs, name=model.name)
    return preprocess, core


def _consumers(model: keras.Model, tensor: Any) -> list[tuple[keras.layers.Layer, Any]]:
    """(layer, node) of every call of a model's layer on `tensor`."""
    return [
        (layer, node)
        for layer in model.layers
        for node in layer.inbound_nodes
        if any(t is tensor for t in node.keras_inputs)
    ]
