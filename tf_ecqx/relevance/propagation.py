"""lrp(): input and per-weight LRP relevances of a tf_keras model or a tf_ecqx QAT model, compiled with tf.function.
weight_relevances_from_outputs(): the per-weight half alone, for a reverse pass run elsewhere (iNNvestigate).

The reverse pass walks the model's layer graph backwards (graph.py). Linear layers use the composite's rule; the other
layers are handled as iNNvestigate 2.1.2 handles them:
- pass-through: activation layers (and activations inside Dense/Conv: rules use the pre-activation z), Dropout,
  BatchNormalization (bn="pass"), tfmot QuantizeLayer. With bn="canonize" each BatchNormalization is folded into the
  linear layer before it, forward pass included (like zennit's MergeBatchNorm canonizer), and then passes relevance;
- gradient (relevance routed like the gradient): MaxPooling, GlobalMaxPooling, Maximum, Minimum (winner takes all),
  Flatten, Reshape, Permute, ZeroPadding (crop), Cropping, Concatenate (split back);
- proportional (z rule, R_i = x_i · R / Σ x): Add, AveragePooling, GlobalAveragePooling.
Layers iNNvestigate 2.1.2 has no rule for:
- Multiply, signal takes all (Arras et al. 2017, for LSTM gates): the first input of the output's shape gets all the
  relevance, the other factors (squeeze-excite gates, hard-swish's hard sigmoid) none. Their kernels then carry no
  relevance, and ECQx keeps ECQ's assignment for a kernel without any (ecq/assign.py), rather than pruning the gates;
- layers Keras makes of TensorFlow ops (MobileNetV3's `x + 3`, `x * (1/6)`): computed with the call's own constants,
  passed through when elementwise on one tensor, moved back when they rearrange one, and a sum (RegNet's
  `x + shortcut`) or product of tensors as Add or Multiply; any other such op reached by relevance is refused by name;
- Average, proportional like Add;
- PReLU, ELU, ThresholdedReLU and a Softmax layer pass relevance like the other activations (as
  Activation("softmax") does: at a softmax output the reverse pass starts from the probabilities); LayerNormalization
  passes it unchanged, as BatchNormalization does with bn="pass" (its per-sample statistics cannot be folded into a
  kernel).
Defined differently from iNNvestigate, on purpose: Subtract is proportional, a − b as a + (−b) (iNNvestigate's
gradient hands R to a and −R to b, which sum to zero); `keras.layers.ReLU` passes relevance unchanged like every other
activation (iNNvestigate sends it through the ReLU gradient, which only matters where a flat/w² rule put relevance on a
dead unit), and BatchNormalization is passed or canonized (iNNvestigate applies the layer rule to BN as its own layer,
with the scale 1/sqrt(var² + eps) instead of 1/sqrt(var + eps)).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

from tf_ecqx._keras import keras
from tf_ecqx.layers import TF_OP_LAYERS, call_arguments, layer_class
from tf_ecqx.relevance.composites import Composite, get_composite
from tf_ecqx.relevance.graph import Graph, Step, trace
from tf_ecqx.relevance.linear import LINEAR_KINDS, activation, check_linear, fold_batch_norm, kind, linear
from tf_ecqx.relevance.rules import Linear, Pass, Rule, safe_divide, stabilize

OUTPUTS = ("output", "ones", "probability")

layers = keras.layers
PASS_LAYERS = (
    layers.Activation,
    layers.ReLU,
    layers.LeakyReLU,
    layers.ELU,
    layers.ThresholdedReLU,
    layers.PReLU,
    layers.Softmax,
    layers.Dropout,
    layers.SpatialDropout1D,
    layers.SpatialDropout2D,
    layers.SpatialDropout3D,
    layers.BatchNormalization,
    layers.LayerNormalization,
    layers.Rescaling,
    layers.Normalization,
    QuantizeLayer,
)
GRADIENT_LAYERS = (
    layers.MaxPooling1D,
    layers.MaxPooling2D,
    layers.MaxPooling3D,
    layers.GlobalMaxPooling1D,
    layers.GlobalMaxPooling2D,
    layers.GlobalMaxPooling3D,
    layers.Flatten,
    layers.Reshape,
    layers.Permute,
    layers.ZeroPadding1D,
    layers.ZeroPadding2D,
    layers.ZeroPadding3D,
    layers.Cropping1D,
    layers.Cropping2D,
    layers.Cropping3D,
    layers.UpSampling1D,
    layers.UpSampling2D,
    layers.UpSampling3D,
    layers.Concatenate,
    layers.Maximum,
    layers.Minimum,
)
PROPORTIONAL_LAYERS = (
    layers.Add,
    layers.Subtract,
    layers.Average,
    layers.AveragePooling1D,
    layers.AveragePooling2D,
    layers.AveragePooling3D,
    layers.GlobalAveragePooling1D,
    layers.GlobalAveragePooling2D,
    layers.GlobalAveragePooling3D,
)
SIGNAL_TAKES_ALL_LAYERS = (layers.Multiply,)
MERGE_LAYERS = (
    layers.Add,
    layers.Subtract,
    layers.Average,
    layers.Maximum,
    layers.Minimum,
    layers.Concatenate,
    layers.Multiply,
)
SUPPORTED = (
    *LINEAR_KINDS,
    *PASS_LAYERS,
    *GRADIENT_LAYERS,
    *PROPORTIONAL_LAYERS,
    *SIGNAL_TAKES_ALL_LAYERS,
    *TF_OP_LAYERS,
)


class Relevances(NamedTuple):
    """What lrp() returns for a batch x.

    input: each sample's heatmap, shaped like x: the relevance of its target output (lrp's `output`; for a dense
    prediction, of its target output at every position, summed) spread over its input values. Per sample: it does not
    depend on the other samples in the batch.
    weights: layer name -> relevance of each kernel weight, shaped like the kernel: the ε rule (the composite's
    weight_epsilon) applied to the relevance arriving at the layer's output, summed over positions and samples and
    divided by the batch size, i.e. the batch mean (the ECQx reference's scaling, what ECQx training uses); zero for a
    kernel no relevance reaches (a gate's). QAT models use the inner layer names.
    """

    input: np.ndarray
    weights: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the reverse pass does at each linear step: its rule, and the BatchNormalization step folded into it."""

    graph: Graph
    rules: dict[int, Rule]
    folded: dict[int, int]


def _plan(graph: Graph, composite: Composite) -> _Plan:
    producer = {step.output: index for index, step in enumerate(graph.steps)}
    after_linear: set[str] = set()  # tensors with a linear layer upstream
    rules: dict[int, Rule] = {}
    folded: dict[int, int] = {}
    for index, step in enumerate(graph.steps):
        layer, cls = step.layer, layer_class(step.layer)
        if cls not in SUPPORTED:
            names = ", ".join(sorted({supported.__name__ for supported in SUPPORTED}))
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) is not supported by LRP (it needs a relevance rule of "
                f"its own); supported layers: {names}. Train such a model with ECQ (ecqx=False), or exclude the "
                "layer from the model you explain."
            )
        if cls in LINEAR_KINDS:
            check_linear(layer)
            rules[index] = composite.rule(kind(layer), first=not any(i in after_linear for i in step.inputs))
        if cls in LINEAR_KINDS or any(i in after_linear for i in step.inputs):
            after_linear.add(step.output)
        if cls is layers.BatchNormalization and composite.bn == "canonize":
            folded[_foldable_into(graph, producer, step)] = index
    return _Plan(graph, rules, folded)


def _foldable_into(graph: Graph, producer: dict[str, int], bn_step: Step) -> int:
    """Index of the linear step whose output only this BatchNormalization reads, or a ValueError saying why not."""
    source = producer.get(bn_step.inputs[0])
    before = graph.steps[source].layer if source is not None else None
    if (
        before is None
        or layer_class(before) not in LINEAR_KINDS
        or activation(before) not in (tf.identity, keras.activations.linear)
        or graph.readers[bn_step.inputs[0]] != 1
    ):
        follows = f"{before.name!r} ({type(before).__name__})" if before is not None else "the model input"
        raise ValueError(
            f"BatchNormalization {bn_step.layer.name!r} follows {follows}, not a Dense/Conv layer without activation "
            "whose output only it reads: it cannot be canonized; use bn='pass' or a *_bn_pass composite."
        )
    return source


def _call(step: Step, xs: list[tf.Tensor]) -> tf.Tensor:
    """Forward of a step without kernel (activations in float: tfmot's fake quantization is left out)."""
    layer, cls = step.layer, layer_class(step.layer)
    if cls is QuantizeLayer:
        return xs[0]
    if cls is layers.Activation:
        return activation(layer)(xs[0])
    if cls in TF_OP_LAYERS:  # the op's constants live in the call: replay it with these inputs
        args, kwargs = call_arguments(step.call_arguments, dict(zip(step.inputs, xs, strict=True)))
        return layer(*args, **kwargs)
    return layer(xs if cls in MERGE_LAYERS else xs[0], training=False)


def _forward(plan: _Plan, x: tf.Tensor) -> tuple[dict[str, tf.Tensor], dict[int, Linear]]:
    """Every tensor of the model for input x, and the Linear op of every linear step (read once, reused backwards).

    A canonized BatchNormalization is part of its linear step's op, and identity as a step of its own.
    """
    graph = plan.graph
    values = {graph.input: x}
    ops: dict[int, Linear] = {}
    folded_bn = set(plan.folded.values())
    for index, step in enumerate(graph.steps):
        xs = [values[i] for i in step.inputs]
        if index in plan.rules:
            ops[index] = linear(step)
            if index in plan.folded:
                ops[index] = fold_batch_norm(ops[index], step, graph.steps[plan.folded[index]], xs[0].shape.rank)
            values[step.output] = activation(step.layer)(ops[index].z(xs[0]))
        elif index in folded_bn:
            values[step.output] = xs[0]
        else:
            values[step.output] = _call(step, xs)
    return values, ops


def _gradient(step: Step, xs: list[tf.Tensor], r: tf.Tensor) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = _call(step, xs)
    return tape.gradient(y, xs, output_gradients=r)


def _proportional(step: Step, xs: list[tf.Tensor], r: tf.Tensor) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        tape.watch(xs)
        z = _call(step, xs)
    return [x * g for x, g in zip(xs, tape.gradient(z, xs, output_gradients=safe_divide(r, z)), strict=True)]


def _signal_takes_all(step: Step, xs: list[tf.Tensor], r: tf.Tensor) -> list[tf.Tensor | None]:
    """All of R to the first factor of the output's shape (the signal), none to the others (the gates)."""
    signal = next((i for i, x in enumerate(xs) if x.shape == r.shape), None)
    if signal is None:
        raise ValueError(
            f"Layer {step.layer.name!r} (a product) has no input of its output's shape {tuple(r.shape)}: LRP passes a "
            "product's relevance to its signal, the factor the others (gates) scale."
        )
    return [r if i == signal else None for i in range(len(xs))]


# TensorFlow ops (as Keras names them) that only move elements: relevance moves back with them.
REARRANGING_TF_OPS = frozenset(
    {"expand_dims", "squeeze", "compat.v1.squeeze", "reshape", "transpose", "compat.v1.transpose", "identity"}
)


# TensorFlow ops of several tensors that Add and Multiply layers stand for (ResNet-style `x + shortcut`, gates).
SUMMING_TF_OPS = frozenset({"__operators__.add", "math.add", "math.add_n", "math.subtract"})
MULTIPLYING_TF_OPS = frozenset({"math.multiply"})


def _tf_op_pass(step: Step, xs: list[tf.Tensor], r: tf.Tensor) -> list[tf.Tensor | None]:
    """R unchanged through a TensorFlow-op layer that is elementwise on one tensor, moved back through one that only
    rearranges its elements (REARRANGING_TF_OPS), and as through Add or Multiply through a sum or product of tensors;
    any other such op is refused."""
    function = step.layer.get_config().get("function")
    if len(xs) == 1 and function in REARRANGING_TF_OPS:
        return _gradient(step, xs, r)
    if len(xs) > 1 and function in SUMMING_TF_OPS:
        return _proportional(step, xs, r)
    if len(xs) > 1 and function in MULTIPLYING_TF_OPS:
        return _signal_takes_all(step, xs, r)
    if len(xs) != 1 or xs[0].shape != r.shape:
        raise ValueError(
            f"Layer {step.layer.name!r} ({function}, a TensorFlow op Keras wrapped) is reached by relevance and is "
            "neither elementwise on one tensor, a sum or product of tensors, nor a rearrangement of one (expand_dims, "
            "squeeze, reshape, transpose): LRP has no rule for it. Write it as a Keras layer (Add, Multiply, "
            "Reshape, ...), or train the model with ECQ (ecqx=False)."
        )
    return [r]


def _weight_relevance(op: Linear, a: tf.Tensor, r: tf.Tensor, epsilon: float) -> tf.Tensor:
    """R_W = W ⊙ ∂/∂W [Σ z(W) ⊙ stop_gradient(R / stab(z))], summed over the batch and positions."""
    with tf.GradientTape() as tape:
        tape.watch(op.kernel)
        z = op.z(a)
    return op.kernel * tape.gradient(z, op.kernel, output_gradients=r / stabilize(z, epsilon))


def _backward(
    plan: _Plan, values: dict[str, tf.Tensor], ops: dict[int, Linear], r_out: tf.Tensor, weight_epsilon: float
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    graph = plan.graph
    relevance = {graph.output: r_out}
    weights: dict[str, tf.Tensor] = {}
    for index in reversed(range(len(graph.steps))):
        step = graph.steps[index]
        r = relevance.pop(step.output, None)
        if r is None:  # the step does not reach the output
            continue
        xs = [values[i] for i in step.inputs]
        if index in plan.rules:
            r_in = [plan.rules[index](ops[index], xs[0], r)]
            name = step.layer.name
            r_w = _weight_relevance(ops[index], xs[0], r, weight_epsilon)
            weights[name] = weights[name] + r_w if name in weights else r_w
        elif layer_class(step.layer) in PASS_LAYERS:
            r_in = [Pass()(None, xs[0], r)]
        elif layer_class(step.layer) in GRADIENT_LAYERS:
            r_in = _gradient(step, xs, r)
        elif layer_class(step.layer) in SIGNAL_TAKES_ALL_LAYERS:
            r_in = _signal_takes_all(step, xs, r)
        elif layer_class(step.layer) in TF_OP_LAYERS:
            r_in = _tf_op_pass(step, xs, r)
        else:
            r_in = _proportional(step, xs, r)
        for i, ri in zip(step.inputs, r_in, strict=True):
            if ri is not None:
                relevance[i] = relevance[i] + ri if i in relevance else ri
    for index in plan.rules:  # a kernel no relevance reaches (a gate's: signal takes all) has zero relevance
        weights.setdefault(graph.steps[index].layer.name, tf.zeros_like(ops[index].kernel))
    x = values[graph.input]
    return relevance.get(graph.input, tf.zeros_like(x)), weights


def _output_relevance(logits: tf.Tensor, targets: tf.Tensor, output: str) -> tf.Tensor:
    """Relevance at the output, per sample (and output position): the target class's logit / 1 / softmax (other
    classes 0).

    A target of -1 selects the predicted class.
    """
    targets = tf.where(targets >= 0, targets, tf.argmax(logits, axis=-1, output_type=tf.int32))
    mask = tf.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    if output == "output":
        mask *= logits
    elif output == "probability":
        mask *= tf.nn.softmax(logits)
    return mask


def _batch_mean(summed: dict[str, tf.Tensor], x: tf.Tensor) -> dict[str, tf.Tensor]:
    """Weight relevances summed over the batch x, divided by its size (0 stays 0 for an empty batch).

    The ECQx reference divides the output relevance by the batch size; the reverse pass is linear in that relevance,
    so dividing the weight relevances afterwards gives the reference's values and leaves the heatmaps per sample.
    """
    size = tf.maximum(tf.shape(x)[0], 1)
    return {name: r / tf.cast(size, r.dtype) for name, r in summed.items()}


def _compile(model: keras.Model, composite: Composite, output: str) -> Any:
    graph = trace(model)
    plan = _plan(graph, composite)
    x_spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)

    targets_spec = tf.TensorSpec([None] * (model.outputs[0].shape.rank - 1), tf.int32)  # (batch, *positions)

    @tf.function(input_signature=[x_spec, targets_spec])
    def run(x: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        values, ops = _forward(plan, x)
        r_out = _output_relevance(values[graph.output], targets, output)
        r_input, r_weights = _backward(plan, values, ops, r_out, composite.weight_epsilon)
        return r_input, _batch_mean(r_weights, x)

    return run


# model -> {(composite, output): compiled function}; variables are read when the function runs, so weights that
# change during training give current relevances without retracing.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_lrp(model: keras.Model, composite: Composite, output: str) -> Any:
    """The cached tf.function (x, targets) -> (input relevance, weight relevances) for this model and composite."""
    per_model = _COMPILED.setdefault(model, {})
    if (composite, output) not in per_model:
        per_model[(composite, output)] = _compile(model, composite, output)
    return per_model[(composite, output)]


def checked_input(model: keras.Model, x: Any) -> np.ndarray:
    """x as an array of the model's input dtype, or a ValueError if its shape is not (batch, *input shape)."""
    x = np.asarray(x, dtype=model.inputs[0].dtype.as_numpy_dtype)
    expected = tuple(model.inputs[0].shape[1:])
    if x.ndim != len(expected) + 1 or any(e is not None and e != s for e, s in zip(expected, x.shape[1:], strict=True)):
        raise ValueError(
            f"x has shape {x.shape}; model {model.name!r} expects (batch, {', '.join(map(str, expected))})."
        )
    return x


def target_shape(model: keras.Model, batch: int) -> tuple[int | None, ...]:
    """The shape of the targets for a batch: one class per sample, and per output position for a dense prediction
    (None where the model's output size follows its input's)."""
    return (batch, *model.outputs[0].shape[1:-1])


def _targets(y: Any, shape: tuple[int | None, ...], classes: int) -> np.ndarray:
    if y is None:  # -1: the predicted class, broadcast over the output positions
        return np.full((shape[0],) + (1,) * (len(shape) - 1), -1, np.int32)
    targets = np.asarray(y)
    fits = targets.ndim == len(shape) and all(e in (None, s) for e, s in zip(shape, targets.shape, strict=True))
    if not fits or not np.issubdtype(targets.dtype, np.integer):
        what = "per sample" if len(shape) == 1 else "per sample and output position"
        expected = ", ".join("any" if e is None else str(e) for e in shape)
        raise ValueError(
            f"y must hold one integer class {what}, shape ({expected}); got {targets.dtype} {targets.shape}."
        )
    if targets.size and (targets.min() < 0 or targets.max() >= classes):
        raise ValueError(f"y has classes outside [0, {classes}): min {targets.min()}, max {targets.max()}.")
    return targets.astype(np.int32)


def lrp(
    model: keras.Model,
    x: Any,
    y: Any = None,
    composite: str | Composite = "epsilon_plus_flat_bn_pass",
    output: str = "output",
    bn: str | None = None,
) -> Relevances:
    """LRP relevances of inputs and kernel weights of `model` (plain tf_keras or tf_ecqx QAT) for the batch x.

    y: target class per sample (None = predicted class). output: what starts each sample's reverse pass at its target
    class, "output" (logit), "ones" or "probability" (softmax). The model must output logits, shape (batch, classes),
    or (batch, *positions, classes) for a dense prediction (segmentation), where y has a class per sample and position
    (batch, *positions) and the reverse pass starts at every position.
    composite: a name from COMPOSITES or a Composite; bn ("pass" or "canonize") overrides its BatchNormalization
    handling. Returns per-sample input heatmaps and batch-mean weight relevances (see Relevances). Repeated calls
    reuse one compiled function per (model, composite, output) and read the current weights.
    """
    composite = get_composite(composite)
    if bn is not None:
        composite = dataclasses.replace(composite, bn=bn)
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} is not known; use one of {OUTPUTS}.")
    run = compiled_lrp(model, composite, output)  # checks the model
    x = checked_input(model, x)
    targets = _targets(y, target_shape(model, len(x)), model.outputs[0].shape[-1])
    r_input, r_weights = run(x, targets)
    return Relevances(r_input.numpy(), {name: r.numpy() for name, r in r_weights.items()})


def weight_relevances_from_outputs(
    model: keras.Model, x: Any, output_relevances: Mapping[str, Any], epsilon: float
) -> dict[str, np.ndarray]:
    """Per-weight relevances (lrp()'s ε rule, docs/method.md §6) from given relevances at the linear layers' outputs.

    The weight half of lrp() for a reverse pass run elsewhere (e.g. iNNvestigate): output_relevances maps each
    Dense/Conv layer's name (the inner name in a QAT model) to the per-sample relevance at its output (as a reverse
    pass gives it, not divided by the batch size), shaped like that output for the batch x. Kernels are read as lrp()
    reads them (a QAT model's quantized kernels); BatchNormalization is not folded, so each kernel is rated with the
    relevance at its own layer's output. Keys and scaling (the batch mean) equal lrp(model, x).weights'.
    """
    graph = trace(model)
    plan = _plan(graph, Composite(dense=Pass(), conv=Pass(), bn="pass", weight_epsilon=epsilon))  # checks the model
    x = tf.convert_to_tensor(checked_input(model, x))
    values, ops = _forward(plan, x)
    names = [graph.steps[index].layer.name for index in plan.rules]
    shared = sorted({name for name in names if names.count(name) > 1})
    missing = sorted(set(names) - set(output_relevances))
    if shared or missing:
        problem = f"layers called more than once: {shared}" if shared else f"no output relevance for {missing}"
        raise ValueError(f"Cannot rate the weights of model {model.name!r}: {problem}.")
    summed = {}
    for index, name in zip(plan.rules, names):
        step = graph.steps[index]
        z = values[step.output]
        r = np.asarray(output_relevances[name], dtype=z.dtype.as_numpy_dtype)
        if r.shape != tuple(z.shape):
            raise ValueError(f"The output relevance of {name!r} has shape {r.shape}; its output has {tuple(z.shape)}.")
        summed[name] = _weight_relevance(ops[index], values[step.inputs[0]], tf.constant(r), epsilon)
    return {name: r.numpy() for name, r in _batch_mean(summed, x).items()}
