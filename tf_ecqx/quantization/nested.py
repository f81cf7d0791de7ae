"""flatten_nested: a model that holds other models as layers (a keras.applications backbone under a new head, the
usual transfer-learning pattern) as one flat functional model, which tfmot can wrap (it refuses nested models)."""

from __future__ import annotations

import tensorflow as tf

from tf_ecqx._keras import keras
from tf_ecqx.layers import call_arguments


def flatten_nested(model: keras.Model) -> tuple[keras.Model, dict[str, list[str]]]:
    """`model` with the layers of every model nested in it inlined, and for each nested model's name the names of the
    layers it held (for `exclude`). The layers are copies (same names, configs and weights): the user's model and its
    layers stay as they were. A model without nested models comes back as it is."""
    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model, {}
    copies: dict[int, tuple[keras.layers.Layer, keras.layers.Layer]] = {}
    members: dict[str, list[str]] = {}
    inputs = [
        keras.Input(shape=t.shape[1:], dtype=t.dtype, name=name) for t, name in zip(model.inputs, model.input_names)
    ]
    outputs = _replay(model, inputs, copies, members)
    try:
        flat = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
    except ValueError as error:  # e.g. a layer name used both inside a nested model and outside it
        raise ValueError(
            f"Model {model.name!r} holds the nested models {sorted(members)}, which tf_ecqx inlines to quantize their "
            f"layers, and the inlined model cannot be built: {error} Rename the layers so that every name is unique "
            "across the nested models and the outer one."
        ) from None
    for original, copy in copies.values():
        copy.set_weights(original.get_weights())
    return flat, members


def _replay(
    model: keras.Model,
    inputs: list[tf.Tensor],
    copies: dict[int, tuple[keras.layers.Layer, keras.layers.Layer]],
    members: dict[str, list[str]],
) -> list[tf.Tensor]:
    """model's outputs computed from `inputs` by copies of its layers, nested models replayed in place."""
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"The nested model {model.name!r} ({type(model).__name__}) has no layer graph, so its layers cannot be "
            "inlined for quantization: build it on a keras.Input (a subclassed model must be rebuilt as a functional "
            "one)."
        )
    computed = {str(id(tensor)): value for tensor, value in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # tf_keras' own execution order
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            layer = node.layer
            args, kwargs = call_arguments((tuple(node.call_args), dict(node.call_kwargs)), computed)
            if isinstance(layer, keras.Model):
                members[layer.name] = _layer_names(layer)
                results = _replay(layer, tf.nest.flatten(args[0]), copies, members)
            else:
                if id(layer) not in copies:  # a layer called several times keeps one copy: its weights stay shared
                    copies[id(layer)] = (layer, layer.__class__.from_config(layer.get_config()))
                results = tf.nest.flatten(copies[id(layer)][1](*args, **kwargs))
            computed.update(zip(node.flat_output_ids, results))
    return [computed[str(id(tensor))] for tensor in model.outputs]


def _layer_names(model: keras.Model) -> list[str]:
    """The names of the layers a nested model holds, those of the models nested in it included."""
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names += _layer_names(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            names.append(layer.name)
    return names
