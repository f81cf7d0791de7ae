"""Worker process for innvestigate_backend.py: runs iNNvestigate analyzers with eager execution disabled.

Started as a script (not as a tf_ecqx module), so nothing eager is imported before eager execution is switched off.
Reads pickled requests from stdin and writes pickled ("ok", relevances) or ("error", traceback) replies to the
original stdout; anything else printed goes to stderr. Ends when stdin closes.
"""

import json
import os
import pickle
import sys
import traceback

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


PREFIX = "model_"  # never a Keras auto-generated layer name


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


def analyze(request, keras, innvestigate):
    """Rebuild the model in a fresh graph and run the named analyzer on it."""
    keras.backend.clear_session()
    model = keras.models.model_from_config(prefixed(json.loads(request["model_json"])))
    model.set_weights(request["weights"])  # in graph mode this also initialises the variables
    selection = request["neuron_selection"]
    analyzer = innvestigate.create_analyzer(
        request["analyzer"],
        model,
        neuron_selection_mode="max_activation" if selection is None else "index",
        # iNNvestigate 2.1.2 raises NotImplementedError after any model-check *warning* (e.g. for a ReLU layer)
        disable_model_checks=True,
        **request["kwargs"],
    )
    if selection is None:
        return analyzer.analyze(request["x"])
    return analyzer.analyze(request["x"], neuron_selection=selection)


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
