"""The training run of the distribution tests (test_distributed_and_determinism.py, test_multi_worker.py), written
once: quantize small_cnn, fit one epoch on real Fashion-MNIST under a tf.distribute strategy, report the codes.

Run as a script, `distributed_training.py FOLDER`, it is one worker of tf.distribute.MultiWorkerMirroredStrategy
(TF_CONFIG from the environment; none means a single local worker): it trains ECQ, then ECQx, and prints their results
as one JSON line. Each worker reads its relevance batches in an order of its own (shuffled with its task index as
seed), as workers whose data is shuffled without a common seed do: RelevanceCallback must still keep their ECQx codes
identical. The workers save the ECQx model as TensorFlow's multi-worker tutorial does: all of them (reading some
variables is a collective operation), the chief (worker 0) as FOLDER/ecqx.keras, the others into temporary folders
they delete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import tensorflow as tf
from conftest import small_cnn

import tf_ecqx
from tf_ecqx import datasets
from tf_ecqx._keras import keras
from tf_ecqx.quantization.kernels import quantized_kernels

SAMPLES = 1024
GLOBAL_BATCH = 64


@functools.cache
def _images() -> datasets.Split:
    train_split, _ = datasets.fashion_mnist(use_tfds=False)
    return datasets.Split(train_split.x[:SAMPLES], train_split.y[:SAMPLES])


def _batches(seed: int) -> tf.data.Dataset:
    """The first SAMPLES training images, shuffled with seed, in batches of GLOBAL_BATCH. A new dataset for every run:
    a shuffled dataset reshuffles each time it is iterated again."""
    x, y = _images()
    data = tf.data.Dataset.from_tensor_slices((x, y))
    return data.shuffle(SAMPLES, seed=seed).batch(GLOBAL_BATCH)


def code_digest(qmodel: keras.Model) -> str:
    """sha256 of all the model's codes, in layer order."""
    return hashlib.sha256(b"".join(k.codes().numpy().tobytes() for k in quantized_kernels(qmodel))).hexdigest()


def train(
    strategy: tf.distribute.Strategy, ecqx: bool = True, relevance_seed: int = 0, save_to: Path | None = None
) -> dict[str, Any]:
    """One epoch of ECQ or ECQx (with RelevanceCallback) at 4 bit, lambda 0.2, on the first SAMPLES training images;
    the relevance batches are the same images shuffled with relevance_seed (0: in the training order). The trained
    model is saved to save_to (a .keras path) if given.

    The dataset is batched at GLOBAL_BATCH whatever the strategy: tf.distribute splits each batch over the replicas
    (and, with several workers, shards it by data: each worker reads its share of every batch), so every strategy
    takes the same optimizer steps on the same samples.
    """
    keras.utils.set_random_seed(0)
    data = _batches(0)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA  # not file-based
    data = data.with_options(options)
    with strategy.scope():
        qmodel = tf_ecqx.quantize_model(small_cnn(batch_norm=True), bits=4, lambda_=0.2, ecqx=ecqx)
        qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    callbacks = [tf_ecqx.RelevanceCallback(_batches(relevance_seed), "epsilon_plus_flat")] if ecqx else []
    qmodel.fit(data, epochs=1, callbacks=callbacks, verbose=0)
    if save_to is not None:
        qmodel.save(save_to)
    return {
        "replicas": strategy.num_replicas_in_sync,
        "steps": int(qmodel.optimizer.iterations.numpy()),
        "stats": [[s.name, s.n_weights, s.sparsity, s.entropy] for s in tf_ecqx.layer_stats(qmodel)],
        "shapes": [list(k.kernel.shape) for k in quantized_kernels(qmodel)],
        "digest": code_digest(qmodel),
    }


if __name__ == "__main__":
    worker = tf.distribute.MultiWorkerMirroredStrategy()
    index = worker.cluster_resolver.task_id or 0
    chief = index == 0  # the chief of a cluster of workers only (no "chief" task) is worker 0
    folder = Path(sys.argv[1]) if chief else Path(tempfile.mkdtemp())
    results = {"ecq": train(worker, ecqx=False), "ecqx": train(worker, True, index, save_to=folder / "ecqx.keras")}
    if not chief:
        shutil.rmtree(folder)
    print(json.dumps(results), flush=True)
