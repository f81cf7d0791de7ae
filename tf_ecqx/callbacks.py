"""Callbacks for `model.fit`: RelevanceCallback keeps ECQx's weight relevances current (docs/method.md §5);
QuantizationMetrics writes per-layer sparsity, entropy and lambda to the Keras logs and TensorBoard."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf

from tf_ecqx._keras import keras
from tf_ecqx.datasets import labelled_batches
from tf_ecqx.distillation import quantized_student
from tf_ecqx.quantization.kernels import QuantizedKernel, calls_per_forward, quantized_kernels
from tf_ecqx.quantization.settings import STEPS, check_count
from tf_ecqx.quantization.strip import strip
from tf_ecqx.relevance.composites import get_composite
from tf_ecqx.relevance.innvestigate_backend import InnvestigateBackend
from tf_ecqx.relevance.propagation import OUTPUTS, compiled_lrp, target_shape
from tf_ecqx.relevance.sources import DEFAULT_RELEVANCE, INNVESTIGATE, relevance_source
from tf_ecqx.report import layer_stats, model_totals

REFERENCE_BATCH_SIZE = 64


def check_momentum(momentum: float) -> float:
    """Return momentum as float if it is in [0, 1): the share of the previous relevances kept at each refresh."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"momentum={momentum!r} is not allowed: it is the share of the previous relevances kept at each refresh, "
            "a number in [0, 1) (reference 0.1)."
        )
    return float(momentum)


def _class_indices(y: tf.Tensor, output_shape: tf.TensorShape) -> tf.Tensor:
    """Integer labels, one per sample (and output position of a dense prediction), from integer labels, with or
    without a trailing axis of 1, or one-hot labels. A model with one output per position (a regression such as an
    autoencoder's, or one binary logit) is explained by that output whatever the labels hold."""
    if output_shape[-1] == 1:
        return tf.zeros(y.shape[: output_shape.rank - 1], tf.int32)
    if y.shape.rank != output_shape.rank:
        return tf.cast(y, tf.int32)
    if y.shape[-1] not in (1, output_shape[-1]):
        raise ValueError(
            f"RelevanceCallback data has label rows of width {y.shape[-1]}; the model has {output_shape[-1]} classes: "
            "pass integer class labels or one-hot rows of that width."
        )
    return tf.cast(y[..., 0], tf.int32) if y.shape[-1] == 1 else tf.argmax(y, axis=-1, output_type=tf.int32)


class RelevanceCallback(keras.callbacks.Callback):
    """Refreshes ECQx weight relevances from LRP on the next batch of `data`, every `every_n_steps` training steps.

    relevance: the source of the relevances, an LRP composite of the native engine (tf_ecqx.relevance.COMPOSITES,
    "lrp." prefix allowed; default: the reference's epsilon_plus_flat_bn_pass) or "innvestigate:<analyzer>". They
    are computed on the current quantized model: R_batch is lrp().weights, the per-weight relevances averaged over
    the batch (the reference's scaling), mixed as R <- (1 - momentum) R_batch + momentum R_prev. output: "output"
    (logit of the true class, the reference), "ones" or "probability". Use training data (x, y) with labels;
    batch_size applies to arrays only. Under a tf.distribute strategy R_batch is the mean over the replicas (an
    all-reduce): workers of MultiWorkerMirroredStrategy that read their relevance batches in different orders still
    keep identical codes.
    """

    def __init__(
        self,
        data: Any,
        relevance: str = DEFAULT_RELEVANCE,
        every_n_steps: int = 1,
        momentum: float = 0.1,
        output: str = "output",
        batch_size: int = REFERENCE_BATCH_SIZE,
    ):
        super().__init__()
        check_count("every_n_steps", every_n_steps, meaning=STEPS)
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r} is not known; use one of {OUTPUTS}.")
        self.every_n_steps = every_n_steps
        self.momentum = check_momentum(momentum)
        self.output = output
        self._dataset = labelled_batches(data, batch_size, "RelevanceCallback").repeat()
        self._batches: Iterator | None = None
        self._kernels: list[QuantizedKernel] = []
        self._calls: dict[str, int] = {}
        self._source = relevance_source(relevance)
        self._innvestigate: InnvestigateBackend | None = None
        self._steps = 0
        self._refreshed = False
        self._compiled_store: Any = None
        self._compiled_refresh: Any = None

    @property
    def qmodel(self) -> keras.Model:
        """The QAT model being trained (a Distiller's student)."""
        return quantized_student(self.model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._kernels = [k for k in quantized_kernels(self.qmodel) if k.quantizer.settings.ecqx]
        if not self._kernels:
            raise ValueError(
                f"RelevanceCallback: model {self.qmodel.name!r} has no ECQx kernel; quantize it with "
                "tf_ecqx.quantize_model(model, ..., ecqx=True)."
            )
        self._calls = {k.name: calls_per_forward(self.qmodel, k.wrapper) for k in self._kernels}
        if self._source.backend == INNVESTIGATE:
            self._innvestigate = InnvestigateBackend().start()
        self._compile()
        self._batches = iter(self._dataset)
        self._steps = 0
        self._refreshed = False
        self.refresh()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps += 1
        if self._steps % self.every_n_steps == 0:
            self.refresh()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._innvestigate is not None:
            self._innvestigate.close()
            self._innvestigate = None

    def refresh(self) -> None:
        """Compute relevances on the next batch, mix them into the quantizers' variables, renew the step budget."""
        try:
            x, y = next(self._batches)[:2]
        except StopIteration:
            raise ValueError("RelevanceCallback data is empty: it needs at least one (x, y) batch.") from None
        targets = _class_indices(y, self.qmodel.outputs[0].shape)
        self._check_batch(x, targets)
        keep = tf.constant(self.momentum if self._refreshed else 0.0)
        steps_per_execution = getattr(self.model, "_steps_per_execution", None)
        budget = tf.constant(
            float(self.every_n_steps * (1 if steps_per_execution is None else int(steps_per_execution.numpy())))
        )
        if self._innvestigate is not None:
            relevances = self._innvestigate.weight_relevances(
                self.qmodel, x.numpy(), self._source.name, targets.numpy(), plain=strip(self.qmodel)
            )
            self._compiled_store(relevances, keep, budget)
        else:
            self._compiled_refresh(tf.cast(x, self.qmodel.inputs[0].dtype), targets, keep, budget)
        self._refreshed = True

    def _check_batch(self, x: tf.Tensor, targets: tf.Tensor) -> None:
        expected = tuple(self.qmodel.inputs[0].shape[1:])
        if len(x.shape) != len(expected) + 1 or any(e not in (None, s) for e, s in zip(expected, x.shape[1:])):
            raise ValueError(
                f"RelevanceCallback data has samples of shape {tuple(x.shape[1:])}; the model expects {expected}."
            )
        expected = target_shape(self.qmodel, x.shape[0])
        if len(targets.shape) != len(expected) or any(e not in (None, s) for e, s in zip(expected, targets.shape)):
            raise ValueError(
                f"RelevanceCallback data has labels of shape {tuple(targets.shape)} for {x.shape[0]} samples; the "
                f"model's output {tuple(self.qmodel.outputs[0].shape)} needs one integer class (or one-hot row) per "
                "sample" + ("" if len(expected) == 1 else " and output position") + "."
            )
        classes = self.qmodel.outputs[0].shape[-1]
        if int(tf.reduce_min(targets)) < 0 or int(tf.reduce_max(targets)) >= classes:
            raise ValueError(
                f"RelevanceCallback data has labels outside [0, {classes}) (min {int(tf.reduce_min(targets))}, max "
                f"{int(tf.reduce_max(targets))}): pass integer class labels (or one-hot rows) of the model's outputs."
            )

    def _store(self, relevances: dict[str, Any], keep: tf.Tensor, budget: tf.Tensor) -> None:
        """Mix the replicas' mean relevances into every replica's variables and set the budget.

        Each worker of a multi-worker strategy computes LRP on its own copy of the model and its own next batch, and
        an assignment outside a replica context would only write that worker's copies: workers whose relevance data
        comes in different orders would then train with different ECQx codes. The mean is the strategy's all-reduce
        (an identity with a single replica).
        """
        for k in self._kernels:
            if k.name not in relevances:
                raise ValueError(f"RelevanceCallback: LRP returned no relevance for layer {k.name!r}.")
        fresh = {k.name: tf.cast(relevances[k.name], tf.float32) for k in self._kernels}
        self.model.distribute_strategy.run(self._store_replica, args=(fresh, keep, budget))

    def _store_replica(self, relevances: dict[str, tf.Tensor], keep: tf.Tensor, budget: tf.Tensor) -> None:
        # tf.identity puts the values on this replica's device: the all-reduce leaves each result where its value is
        local = {name: tf.identity(value) for name, value in relevances.items()}
        relevances = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, local)
        for k in self._kernels:
            relevance = k.state["relevance"]
            relevance.assign((1.0 - keep) * relevances[k.name] + keep * relevance)
            k.state["relevance_budget"].assign(budget * self._calls[k.name])  # each call of a shared layer spends one

    def _compile(self) -> None:
        """One graph per refresh (LRP, momentum mix, budget) instead of a handful of eager ops per kernel."""
        self._compiled_store = tf.function(self._store)
        if self._source.backend != INNVESTIGATE:
            run = compiled_lrp(self.qmodel, get_composite(self._source.name), self.output)
            self._compiled_refresh = tf.function(lambda x, t, keep, budget: self._store(run(x, t)[1], keep, budget))


class QuantizationMetrics(keras.callbacks.Callback):
    """Per-layer sparsity, entropy (bits/weight) and layer lambda, plus model totals, during fit (like tfmot's
    PruningSummaries).

    At each epoch end they are added to the logs (so History and later callbacks see them) as "ecqx/<layer>/sparsity"
    etc. and "ecqx/sparsity", "ecqx/entropy"; with a log_dir they are also written as TensorBoard scalars, at each
    epoch end and every `update_freq` training steps if given.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, update_freq: int | None = None):
        super().__init__()
        if update_freq is not None:
            check_count("update_freq", update_freq, meaning=STEPS)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.update_freq = update_freq
        self._writer: Any = None
        self._step = 0

    def metrics(self) -> dict[str, float]:
        """The current values, keyed as in the logs."""
        stats = layer_stats(self.model)
        totals = model_totals(stats)
        values = {"ecqx/sparsity": totals.sparsity, "ecqx/entropy": totals.entropy}
        for s in stats:
            values |= {
                f"ecqx/{s.name}/sparsity": s.sparsity,
                f"ecqx/{s.name}/entropy": s.entropy,
                f"ecqx/{s.name}/lambda": s.layer_lambda,
            }
        return values

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir / "ecqx"))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._step += 1
        if self.update_freq and self._step % self.update_freq == 0:
            self._write(self.metrics())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = self.metrics()
        if logs is not None:
            logs.update(values)
        self._write(values)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()

    def _write(self, values: dict[str, float]) -> None:
        if self._writer is None:
            return
        with self._writer.as_default(step=self._step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
