"""Worker process for innvestigate_backend.py: runs iNNvestigate analyzers with eager execution disabled.

Started as a script (not as a tf_ecqx module), so nothing eager is imported before eager execution is switched off.
Reads pickled requests from stdin and writes pickled ("ok", result) or ("error", traceback) replies to the original
stdout; anything else printed goes to stderr. Ends when stdin closes. The result is the input relevance, or with
request["layers"] the pair (input relevance, {kernel layer name: relevance at that layer's output}).
"""

import json
import os
import pickle
import sys
import traceback
import types

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


PREFIX = "model_"  # never a Keras auto-generated layer name
KERNEL_LAYERS = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")  # the linear layers tf_ecqx's LRP decomposes


def prefixed(config):
    """The model config with every layer renamed PREFIX + name: in the fresh graph iNNvestigate's own layers get
    auto-generated names ("add", "add_1", ...) from restarted counters, which must not clash with the model's."""
    names = {layer["config"]["name"] for layer in config["config"]["layers"]}

    def rename(value):
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0] in names:
            return [PREFIX + value[0], *value[1:]]  # a [layer name, node index, tensor index, ...] reference
        if isinstance(value, list):
            return [rename(v) for v in value]
        return value

    for layer in config["config"]["layers"]:
        layer["config"]["name"] = PREFIX + layer["config"]["name"]
        if "name" in layer:
            layer["name"] = layer["config"]["name"]
        if "inbound_nodes" in layer:
            layer["inbound_nodes"] = rename(layer["inbound_nodes"])
    for key in ("input_layers", "output_layers"):
        if key in config["config"]:
            config["config"][key] = rename(config["config"][key])
    return config


def keep_reversed_tensors(analyzer, debug_values):
    """Replaces iNNvestigate's `_handle_debug_output` for reverse_keep_tensors: `_reversed_tensors` becomes the list
    of ((nid, i), value) in the order reverse_model created them, the model output's first, unsorted.

    iNNvestigate sorts that list, which fails when two entries share a (nid, i): the values (arrays) get compared. This
    happens with neuron_selection_mode="index": its extra InputLayer sits inside the execution list, so the first layer
    after the model input gets nid -1, the id reserved for the model outputs.
    """
    begin, end = analyzer._debug_tensors_indices["keep"]
    mapping = analyzer._reverse_tensors_mapping
    analyzer._reversed_tensors = [(mapping[k], value) for k, value in enumerate(debug_values[begin:end])]


def kernel_output_relevances(analyzer, keras):
    """{original layer name: relevance at its output} for every Dense/Conv1D/Conv2D/DepthwiseConv2D layer.

    An entry ((nid, i), value) of `_reversed_tensors` is the relevance of the i-th input tensor of node nid, where nid
    is the node's position in the execution list of the analysed (neuron-selecting) model minus the number of its
    InputLayers; the first entries are the model outputs' (nid -1, a number a real node can have too). The producer of
    that tensor tells which layer's output it is.
    """
    from innvestigate.backend.graph import trace_model_execution

    _, execution, outputs = trace_model_execution(analyzer._prepared_model)
    inputs = sum(isinstance(layer, keras.layers.InputLayer) for layer, _, _ in execution)
    producer = {id(y): layer for layer, _, ys in execution for y in ys}
    relevances = {}
    for position, ((nid, i), value) in enumerate(analyzer._reversed_tensors):
        tensor = outputs[i] if position < len(outputs) else execution[nid + inputs][1][i]
        layer = producer[id(tensor)]
        if type(layer).__name__ not in KERNEL_LAYERS:
            continue
        name = layer.name.removeprefix(PREFIX)
        if name in relevances:
            raise ValueError(f"Layer {name!r} is called more than once; shared layers are not supported.")
        relevances[name] = value
    return relevances


def analyze(request, keras, innvestigate):
    """Rebuild the model in a fresh graph and run the named analyzer on it."""
    keras.backend.clear_session()
    model = keras.models.model_from_config(prefixed(json.loads(request["model_json"])))
    model.set_weights(request["weights"])  # in graph mode this also initialises the variables
    selection = request["neuron_selection"]
    layers = request.get("layers", False)
    analyzer = innvestigate.create_analyzer(
        request["analyzer"],
        model,
        neuron_selection_mode="max_activation" if selection is None else "index",
        # iNNvestigate 2.1.2 raises NotImplementedError after any model-check *warning* (e.g. for a ReLU layer)
        disable_model_checks=True,
        **({"reverse_keep_tensors": True} if layers else {}),
        **request["kwargs"],
    )
    if layers:
        analyzer._handle_debug_output = types.MethodType(keep_reversed_tensors, analyzer)
    if selection is None:
        relevance = analyzer.analyze(request["x"])
    else:
        relevance = analyzer.analyze(request["x"], neuron_selection=selection)
    return (relevance, kernel_output_relevances(analyzer, keras)) if layers else relevance


def main():
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the reply channel

    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    import innvestigate
    import tf_keras as keras

    requests = sys.stdin.buffer
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = ("ok", analyze(request, keras, innvestigate))
        except Exception:
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, replies)
        replies.flush()


if __name__ == "__main__":
    main()
