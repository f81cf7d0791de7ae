"""The computation of a functional or Sequential tf_keras model as a list of steps in topological order.

Steps name the tensors they read and write by id, so the forward and the reverse (relevance) pass can both walk them.
tfmot QAT wrappers are looked through: a step holds the wrapped layer and remembers the wrapper (for its quantized
kernel); tfmot's input QuantizeLayer is kept as a step and treated as identity by the LRP pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

from tf_ecqx._keras import keras
from tf_ecqx.layers import layer_class


@dataclass(frozen=True)
class Step:
    """One call of a layer: `layer` is the computing layer (inside a QAT wrapper if there is one)."""

    layer: keras.layers.Layer
    wrapper: QuantizeWrapper | None
    inputs: tuple[str, ...]
    output: str
    call_arguments: tuple[tuple[Any, ...], dict[str, Any]]  # the call's (args, kwargs); Keras tensors stand for inputs


@dataclass(frozen=True)
class Graph:
    """Steps in topological order, the ids of the model's input and output tensors, and how often each is read."""

    steps: tuple[Step, ...]
    input: str
    output: str
    readers: Counter[str]


def trace(model: keras.Model) -> Graph:
    """The steps of a single-input, single-output graph model (functional, or Sequential with a known input shape)
    whose output holds logits on its last axis."""
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has no layer graph: LRP needs a functional model or a "
            "Sequential model built with an input shape (keras.Input or input_shape=...)."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1 or model.outputs[0].shape.rank < 2:
        raise ValueError(
            f"Model {model.name!r} has {len(model.inputs)} inputs and outputs of shapes "
            f"{[tuple(o.shape) for o in model.outputs]}; LRP needs one input and one output of logits, "
            "(batch, classes) or, for a dense prediction such as segmentation, (batch, *positions, classes)."
        )
    steps = []
    for depth in sorted(model._nodes_by_depth, reverse=True):  # tf_keras' own execution order
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            layer = node.layer
            if len(node.flat_output_ids) != 1:
                raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has several outputs; not supported.")
            wrapper = layer if layer_class(layer) is QuantizeWrapper else None
            inner = layer.layer if wrapper is not None else layer
            arguments = (tuple(node.call_args), dict(node.call_kwargs))
            steps.append(Step(inner, wrapper, tuple(node.flat_input_ids), node.flat_output_ids[0], arguments))
    readers = Counter(i for step in steps for i in step.inputs)
    readers[str(id(model.outputs[0]))] += 1
    return Graph(tuple(steps), str(id(model.inputs[0])), str(id(model.outputs[0])), readers)
