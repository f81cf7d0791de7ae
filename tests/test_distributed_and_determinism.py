"""ECQx under tf.distribute.MirroredStrategy (two logical CPU devices) and determinism of quantize + fit.

Both run in a fresh Python process: logical devices must be configured before TensorFlow initialises, and determinism
is checked on the first and second run of the same process.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import hashlib, json, sys
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
import tf_ecqx
from conftest import small_cnn
from tf_ecqx import datasets
from tf_ecqx._keras import keras
from tf_ecqx.quantization.kernels import quantized_kernels

train, _ = datasets.fashion_mnist(use_tfds=False)

def run(strategy):
    keras.utils.set_random_seed(0)
    # a new dataset per run: a shuffled dataset reshuffles each time it is iterated again
    data = tf.data.Dataset.from_tensor_slices((train.x[:1024], train.y[:1024])).shuffle(1024, seed=0).batch(64)
    with strategy.scope():
        qmodel = tf_ecqx.quantize_model(small_cnn(batch_norm=True), bits=4, lambda_=0.2, ecqx=True)
        qmodel.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    qmodel.fit(data, epochs=1, callbacks=[tf_ecqx.RelevanceCallback(data, "epsilon_plus_flat")], verbose=0)
    codes = [k.codes().numpy() for k in quantized_kernels(qmodel)]
    return {
        "stats": [[s.n_weights, s.sparsity, s.entropy] for s in tf_ecqx.layer_stats(qmodel)],
        "shapes": [list(c.shape) for c in codes],
        "digest": hashlib.sha256(b"".join(c.tobytes() for c in codes)).hexdigest(),
    }

print(json.dumps({
    "mirrored": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    "single": run(tf.distribute.get_strategy()),
    "single_again": run(tf.distribute.get_strategy()),
}))
"""


@pytest.fixture(scope="module")
def runs() -> dict:
    tests = Path(__file__).resolve().parent
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tests)], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_trains_ecqx_like_a_single_device(runs):
    mirrored, single = runs["mirrored"], runs["single"]
    assert mirrored["shapes"] == single["shapes"]
    for (n_m, sparsity_m, entropy_m), (n_s, sparsity_s, entropy_s) in zip(mirrored["stats"], single["stats"]):
        assert n_m == n_s
        assert abs(sparsity_m - sparsity_s) < 0.05 and abs(entropy_m - entropy_s) < 0.25


def test_same_seed_gives_identical_codes(runs):
    assert runs["single"]["digest"] == runs["single_again"]["digest"]
