"""Keras 3 <-> tf_keras: rebuild a Keras 3 model for quantization, and give the quantized model back as Keras 3.

tfmot works only on tf_keras (Keras 2), so `from_keras3` rebuilds a Keras 3 Sequential or functional model as an
equivalent tf_keras model (same graph, layer names, configs and weights) and `to_keras3` turns the stripped quantized
model into a plain Keras 3 model. Both directions run the same generic machinery:

- each layer's config is translated once, whatever its class: the keys the target class accepts (its `__init__`
  signature) are kept, keys it does not know are dropped when they hold the source's default and refused otherwise,
  and the few values that differ are mapped (dtype policies -> dtype names, serialized initializers / regularizers /
  constraints -> the target's own classes, `batch_shape` <-> `batch_input_shape` of InputLayer, one-element axis lists);
- the graph is read from the model config's "inbound_nodes" (Keras 3 writes `{"args", "kwargs"}` with serialized
  KerasTensors, tf_keras nested `[layer, node, tensor, kwargs]` lists), then the new layers are called in the same
  order, so shared layers, several inputs and several outputs carry over;
- a model nested in the model (a backbone under a new head) is rebuilt the same way, as one layer of the new model;
- weights are copied layer by layer, and the new model must give the same outputs as the old one on random inputs
  (max |difference| <= 1e-5 * max(1, max |output|)), otherwise the conversion stops with an error.

This is the only module of tf_ecqx that imports Keras 3.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from tf_ecqx._keras import keras as tf_keras
from tf_ecqx.model_files import saved_keras_version
from tf_ecqx.quantization.strip import strip

try:
    import keras
except ImportError as error:  # pragma: no cover - TensorFlow >= 2.16 installs Keras 3
    raise ImportError("tf_ecqx.keras3 needs Keras 3: `pip install 'keras>=3'` (TensorFlow >= 2.16 has it).") from error
if not keras.__version__.startswith("3."):  # pragma: no cover
    raise ImportError(f"tf_ecqx.keras3 needs Keras 3, but `import keras` gives Keras {keras.__version__}.")

from keras.src.models.functional import Functional  # noqa: E402  (Keras 3 exports no public name for it)

TOLERANCE = 1e-5
CHECK_SAMPLES = 4
UNKNOWN_DIM = 16  # size used for unknown non-batch dimensions of random check inputs

# The config keys that are named differently, per layer class: Keras 3 name -> tf_keras name.
RENAMED_KEYS = {"InputLayer": {"batch_shape": "batch_input_shape"}}
# Keys a layer's config may hold that the model's InputLayer carries over anyway (tf_keras writes `batch_input_shape`
# into the first layer of a Sequential).
SHAPE_KEYS = ("input_shape", "batch_input_shape", "batch_shape")
# Serialized objects inside layer configs that are translated to the target's own classes.
OBJECT_MODULES = ("initializers", "regularizers", "constraints")


class _Ref(NamedTuple):
    """A tensor in a model config: output `tensor` of call `node` of layer `layer`."""

    layer: str
    node: int
    tensor: int


@dataclass(frozen=True)
class _Framework:
    """What differs between Keras 3 and tf_keras for the converter."""

    label: str
    keras: ModuleType
    renamed: dict[str, dict[str, str]]  # class name -> {this framework's key: the other's key}
    read_node: Callable[[Any, str], tuple[Any, dict[str, Any]]]  # inbound node -> (input structure of _Ref, kwargs)
    wraps_single: bool  # configs list a single model input/output as a one-element list
    is_graph_model: Callable[[Any], bool]
    operations: Callable[[Any], list[Any]]  # everything that appears in the config's "layers"
    advice: str  # what to do about a layer that has no counterpart


def _map(fn: Callable[[_Ref], Any], structure: Any) -> Any:
    if isinstance(structure, _Ref):
        return fn(structure)
    if isinstance(structure, (list, tuple)):
        return [_map(fn, item) for item in structure]
    if isinstance(structure, dict):
        return {key: _map(fn, item) for key, item in structure.items()}
    return structure


def _flatten(structure: Any) -> list[Any]:
    if isinstance(structure, _Ref):
        return [structure]
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in _flatten(item)]
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in _flatten(structure[key])]
    return [structure]


def _not_a_tensor_input(layer: str, value: Any) -> ValueError:
    return ValueError(
        f"Layer {layer!r} is called on {value!r}, which is not the output of a layer; only layer outputs can be "
        "rebuilt. Feed constants in through a layer (e.g. keras.layers.Rescaling) or a model Input."
    )


def _read_keras3_node(node: dict[str, Any], layer: str) -> tuple[Any, dict[str, Any]]:
    """Keras 3: {"args": [inputs, *more], "kwargs": {...}}, tensors as {"class_name": "__keras_tensor__", ...}."""

    def refs(value: Any) -> Any:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return _Ref(*value["config"]["keras_history"])
        if isinstance(value, dict) and value.get("class_name") == "__tuple__":
            return refs(value["config"]["value"])
        if isinstance(value, list):
            return [refs(item) for item in value]
        if isinstance(value, dict) and "class_name" not in value:
            return {key: refs(item) for key, item in value.items()}
        raise _not_a_tensor_input(layer, value)

    args, kwargs = node.get("args", []), node.get("kwargs", {})
    if len(args) != 1 or "__keras_tensor__" in json.dumps(kwargs, default=str):
        raise ValueError(
            f"Layer {layer!r} is called with tensors in more than its first argument (args {args}, kwargs {kwargs}); "
            "only calls of the form layer(inputs, **options) can be rebuilt."
        )
    return refs(args[0]), kwargs


def _read_tf_keras_node(node: list[Any], layer: str) -> tuple[Any, dict[str, Any]]:
    """tf_keras: the input structure with each tensor as [layer, node, tensor, kwargs]; one input in a 1-item list."""
    kwargs: dict[str, Any] = {}

    def refs(value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], str):
            if value[0] == "_CONSTANT_VALUE":
                raise _not_a_tensor_input(layer, value[2])
            if len(value) == 4:
                kwargs.update(value[3])
            return _Ref(*value[:3])
        if isinstance(value, list):
            return [refs(item) for item in value]
        if isinstance(value, dict):
            return {key: refs(item) for key, item in value.items()}
        raise _not_a_tensor_input(layer, value)

    inputs = refs(node)
    if isinstance(inputs, list) and len(inputs) == 1:
        inputs = inputs[0]
    return inputs, kwargs


def _read_endpoints(value: Any, wraps_single: bool) -> Any:
    """A config's "input_layers"/"output_layers": [layer, node, tensor] triples in a list or dict structure."""

    def refs(item: Any) -> Any:
        if isinstance(item, list) and item and isinstance(item[0], str):
            return _Ref(*item[:3])
        if isinstance(item, list):
            return [refs(i) for i in item]
        return {key: refs(i) for key, i in item.items()}

    structure = refs(value)
    if wraps_single and isinstance(structure, list) and len(structure) == 1:
        return structure[0]
    return structure


KERAS3 = _Framework(
    label="Keras 3",
    keras=keras,
    renamed=RENAMED_KEYS,
    read_node=_read_keras3_node,
    wraps_single=False,
    is_graph_model=lambda model: isinstance(model, (keras.Sequential, Functional)),
    operations=lambda model: list(model.operations) if isinstance(model, Functional) else list(model.layers),
    advice=(
        "Replace it with built-in Keras layers, or build the model with tf_keras (`import tf_keras as keras`), where "
        "such a layer can stay in float with tf_ecqx.quantize_model(..., exclude=[name]); or quantize the part of "
        "the model without it."
    ),
)
TF_KERAS = _Framework(
    label="tf_keras",
    keras=tf_keras,
    renamed={cls: {new: old for old, new in keys.items()} for cls, keys in RENAMED_KEYS.items()},
    read_node=_read_tf_keras_node,
    wraps_single=True,
    is_graph_model=lambda model: isinstance(model, tf_keras.Sequential) or getattr(model, "_is_graph_network", False),
    operations=lambda model: list(model.layers),
    advice="to_keras3 gives back models made of built-in layers only.",
)


# ----------------------------------------------------------------------------------------------- config translation


def _init_parameters(cls: type) -> dict[str, Any]:
    """Keyword parameters of cls.__init__ and, as long as each passes **kwargs on, of its base classes' (name: default;
    inspect.Parameter.empty when required)."""
    parameters: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(vars(klass)["__init__"])
        for name, parameter in list(signature.parameters.items())[1:]:
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                parameters.setdefault(name, parameter.default)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return parameters


def _object_module(framework: _Framework, value: Any) -> ModuleType | None:
    """The framework's initializers/regularizers/constraints module, if `value` is a serialized object of one."""
    if not (isinstance(value, dict) and "class_name" in value and "config" in value):
        return None
    kind = str(value.get("module") or "").rsplit(".", 1)[-1]
    return getattr(framework.keras, kind) if kind in OBJECT_MODULES else None


def _is_default(framework: _Framework, cls: type, key: str, value: Any) -> bool:
    """Whether `value` is what cls does when `key` is not passed, so that dropping the key changes nothing."""
    parameters = _init_parameters(cls)
    if key not in parameters:  # taken through **kwargs: input shapes the InputLayer carries, or an off switch
        return key in SHAPE_KEYS or value is None or value is False
    default = parameters[key]
    if default is inspect.Parameter.empty:
        return False
    if json.dumps(value, default=str) == json.dumps(default, default=str):
        return True
    module = _object_module(framework, value)
    if module is not None and default is not None:
        return module.serialize(module.get(default)) == value
    return False


def _is_dtype_policy(value: Any) -> bool:
    return isinstance(value, dict) and str(value.get("class_name", "")).endswith("Policy")


def _translate_value(key: str, value: Any, default: Any, source: _Framework, target: _Framework, where: str) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()  # tf_keras' ReLU keeps its thresholds as float32 numpy scalars
    if _is_dtype_policy(value):
        if "Quantized" in value["class_name"] or "name" not in value.get("config", {}):
            raise ValueError(f"{where} has the dtype policy {value}, which {target.label} cannot express.")
        return value["config"]["name"]
    source_module = _object_module(source, value)
    if source_module is not None:
        kind = source_module.__name__.rsplit(".", 1)[-1]
        source_cls = getattr(source_module, value["class_name"], None)
        target_cls = getattr(getattr(target.keras, kind), value["class_name"], None)
        if source_cls is None or target_cls is None:
            raise ValueError(
                f"{where} uses {kind[:-1]} {value['class_name']!r}, which is not a built-in of both {source.label} and "
                f"{target.label}. Use a built-in one."
            )
        where = f"{where}, {key} {value['class_name']!r}"
        return target_cls.from_config(_translate_config(value["config"], source_cls, target_cls, source, target, where))
    if key == "activation" and isinstance(value, str):
        try:
            target.keras.activations.get(value)
        except ValueError as error:
            raise ValueError(f"{where} uses activation {value!r}, which {target.label} does not have.") from error
    if isinstance(value, list) and len(value) == 1 and type(default) is int:
        return value[0]  # tf_keras writes a normalization axis as [3]; Keras 3's BatchNormalization takes an int
    return value


def _translate_config(
    config: dict[str, Any], source_cls: type, target_cls: type, source: _Framework, target: _Framework, where: str
) -> dict[str, Any]:
    """The config of a source_cls object, as target_cls takes it."""
    renamed = source.renamed.get(source_cls.__name__, {})
    accepted = _init_parameters(target_cls)
    translated = {}
    for key, value in config.items():
        target_key = renamed.get(key, key)
        if target_key in accepted or target_key in renamed.values():
            default = accepted.get(target_key)
            translated[target_key] = _translate_value(target_key, value, default, source, target, where)
        elif not _is_default(source, source_cls, key, value):
            raise ValueError(
                f"{where} has {key}={value!r}, a setting that {target.label}'s {target_cls.__name__} does not have. "
                f"Set it to its default or leave it out."
            )
    return translated


def _target_layer(entry: dict[str, Any], operation: Any, source: _Framework, target: _Framework) -> Any:
    """A new, unbuilt target layer for one entry of the source model's config."""
    class_name, name = entry["class_name"], entry["config"].get("name")
    where = f"Layer {name!r} ({class_name})"
    source_cls = getattr(source.keras.layers, class_name, None)
    hidden_input = operation is None and source_cls is source.keras.layers.InputLayer  # Sequential.layers skips it
    if source_cls is None or (type(operation) is not source_cls and not hidden_input):
        kind = "a layer" if isinstance(operation, source.keras.layers.Layer) else "an operation (not a layer)"
        raise ValueError(
            f"{where} is {kind} of module {type(operation).__module__!r}, not a built-in {source.label} layer, so it "
            f"has no {target.label} counterpart to be rebuilt with. {source.advice}"
        )
    target_cls = getattr(target.keras.layers, class_name, None)
    if not (isinstance(target_cls, type) and issubclass(target_cls, target.keras.layers.Layer)):
        raise ValueError(f"{where} is a {source.label} layer that {target.label} does not have. {source.advice}")
    config = _translate_config(entry["config"], source_cls, target_cls, source, target, where)
    try:
        return target_cls.from_config(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} cannot be made as a {target.label} {class_name} from {config}: {error}") from error


# ----------------------------------------------------------------------------------------------------- the model


def _check_model(model: Any, source: _Framework) -> None:
    if not isinstance(model, source.keras.Model):
        raise TypeError(
            f"Expected a {source.label} Sequential or functional model, got {type(model).__module__}."
            f"{type(model).__name__}."
        )
    if not source.is_graph_model(model):
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) is a subclassed {source.label} model: its graph lives in "
            "its call() code, not in a config, so it cannot be rebuilt. Rebuild it with the functional API "
            "(keras.Input, layer calls, keras.Model(inputs, outputs)) or as a keras.Sequential, load the weights "
            "(model.set_weights or layer by layer), and pass that model."
        )
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so its layers have no weights to copy yet. Give it an Input "
            "(keras.Input(shape) as the first layer) or call model.build(input_shape), and load the trained weights."
        )


def _rebuild_graph(config: dict[str, Any], layers: dict[str, Any], source: _Framework, target: _Framework) -> Any:
    """Call the target layers as the source config's inbound nodes say; deferred calls wait for their inputs."""
    tensors: dict[_Ref, Any] = {}
    calls: dict[str, int] = {}
    pending = []
    for entry in config["layers"]:
        name = entry["name"]
        if isinstance(layers[name], target.keras.layers.InputLayer):
            tensors[_Ref(name, 0, 0)] = layers[name].output
        else:
            pending += [(name, *source.read_node(node, name)) for node in entry["inbound_nodes"]]
    while pending:
        waiting, blocked = [], set()
        for name, inputs, kwargs in pending:
            if name in blocked or any(ref not in tensors for ref in _flatten(inputs)):
                waiting.append((name, inputs, kwargs))
                blocked.add(name)  # a layer's calls keep their order, so that node indices stay the same
                continue
            outputs = layers[name](_map(tensors.__getitem__, inputs), **kwargs)
            node = calls.get(name, 0)
            tensors.update({_Ref(name, node, i): tensor for i, tensor in enumerate(_flatten(outputs))})
            calls[name] = node + 1
        if len(waiting) == len(pending):
            raise ValueError(f"Model {config['name']!r}: the inputs of layers {sorted(blocked)} are never computed.")
        pending = waiting
    inputs = _map(tensors.__getitem__, _read_endpoints(config["input_layers"], source.wraps_single))
    outputs = _map(tensors.__getitem__, _read_endpoints(config["output_layers"], source.wraps_single))
    return target.keras.Model(inputs, outputs, name=config["name"])


def _copy_weights(model: Any, rebuilt: Any, operations: dict[str, Any]) -> None:
    for layer in rebuilt.layers:
        values = operations[layer.name].get_weights()
        shapes = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != shapes:
            raise ValueError(
                f"Layer {layer.name!r} of model {model.name!r} has weights of shapes {[v.shape for v in values]}, its "
                f"rebuilt counterpart {shapes}: the layer's settings do not carry over."
            )
        layer.set_weights(values)


def _random_inputs(model: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = []
    for tensor in model.inputs:
        shape = [CHECK_SAMPLES] + [UNKNOWN_DIM if dim is None else int(dim) for dim in tuple(tensor.shape)[1:]]
        dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype))
        if np.issubdtype(dtype, np.integer):
            inputs.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            inputs.append(rng.standard_normal(shape).astype(dtype))
    return inputs


def _check_equal_outputs(model: Any, rebuilt: Any, source: str, target: str, tolerance: float = TOLERANCE) -> None:
    """Fail unless both models give the same outputs on random inputs.

    Outputs count as equal when max |difference| <= tolerance * max(1, max |output|) for every output.
    """
    inputs = _random_inputs(model)
    x = inputs[0] if len(inputs) == 1 else inputs
    expected = [np.asarray(y) for y in _flatten(model(x, training=False))]
    actual = [np.asarray(y) for y in _flatten(rebuilt(x, training=False))]
    for index, (e, a) in enumerate(zip(expected, actual)):
        scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
        difference = float(np.max(np.abs(e - a))) if e.size else 0.0
        if e.shape != a.shape or not difference <= tolerance * scale:
            raise ValueError(
                f"The {target} rebuild of model {model.name!r} does not compute the same function: output {index} "
                f"differs by up to {difference:.3g} (shapes {e.shape} vs {a.shape}, output scale {scale:.3g}, "
                f"allowed {tolerance:g} x scale) on random inputs. A layer behaves differently in {source} and "
                f"{target} (e.g. an activation with the same name but another definition); replace it and try again."
            )


def _convert(model: Any, source: _Framework, target: _Framework) -> Any:
    _check_model(model, source)
    config = model.get_config()
    operations = {op.name: op for op in source.operations(model)}
    layers = {}
    for entry in config["layers"]:
        entry.setdefault("name", entry["config"]["name"])
        operation = operations.get(entry["name"])
        if isinstance(operation, source.keras.Model):  # a nested model (a backbone under a head): rebuilt whole
            layers[entry["name"]] = _convert(operation, source, target)
        else:
            layers[entry["name"]] = _target_layer(entry, operation, source, target)
    if isinstance(model, source.keras.Sequential):
        rebuilt = target.keras.Sequential(list(layers.values()), name=config["name"])
        if not isinstance(next(iter(layers.values()), None), target.keras.layers.InputLayer):
            rebuilt.build(config["build_input_shape"])
    else:
        rebuilt = _rebuild_graph(config, layers, source, target)
    rebuilt.trainable = model.trainable
    _copy_weights(model, rebuilt, operations)
    _check_equal_outputs(model, rebuilt, source.label, target.label)
    return rebuilt


def _load_keras3_file(path: str | os.PathLike) -> Any:
    version = saved_keras_version(path)
    if not version.startswith("3."):
        raise ValueError(
            f"{str(path)!r} was saved by Keras {version} (tf_keras), not Keras 3: load it with "
            "tf_keras.models.load_model (inside tf_ecqx.quantize_scope() if quantized) and pass the model."
        )
    return keras.saving.load_model(path, compile=False)


def from_keras3(model_or_path: Any) -> tf_keras.Model:
    """An equivalent tf_keras model of a built Keras 3 Sequential or functional model, or of a Keras 3 `.keras` file.

    Same graph, layer names, configs and weights; checked to give the same outputs on random inputs. Subclassed
    models, unbuilt models and layers with no tf_keras counterpart (custom layers, Keras-3-only layers, keras.ops
    calls between layers) are refused with a ValueError that names them.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        model_or_path = _load_keras3_file(model_or_path)
    return _convert(model_or_path, KERAS3, TF_KERAS)


def tf_keras_counterpart(cls: type) -> type:
    """The tf_keras layer class of a Keras 3 layer class, or a ValueError if there is none."""
    counterpart = getattr(tf_keras.layers, cls.__name__, None)
    if getattr(keras.layers, cls.__name__, None) is not cls or counterpart is None:
        raise ValueError(
            f"exclude names the Keras 3 class {cls.__module__}.{cls.__name__}, which has no tf_keras counterpart (and "
            "so no layer of the rebuilt model); exclude layers by name instead."
        )
    return counterpart


def to_keras3(qmodel: tf_keras.Model) -> keras.Model:
    """A plain Keras 3 model whose kernels hold the quantized values: tf_ecqx.strip(qmodel), rebuilt in Keras 3.

    It saves as `.keras` and loads with Keras 3 alone (built-in layers only). Activations run in float, as in strip.
    """
    return _convert(strip(qmodel), TF_KERAS, KERAS3)
