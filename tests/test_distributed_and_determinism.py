"""ECQx under tf.distribute.MirroredStrategy (two logical CPU devices) and determinism of quantize + fit; the training
run is tests/distributed_training.py's, as in test_multi_worker.py.

Both run in a fresh Python process: logical devices must be configured before TensorFlow initialises, and determinism
is checked on the first and second run of the same process.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from distributed_training import train

print(json.dumps({
    "mirrored": train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    "single": train(tf.distribute.get_strategy()),
    "single_again": train(tf.distribute.get_strategy()),
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
    assert (mirrored["replicas"], single["replicas"]) == (2, 1)
    for (_, n_m, sparsity_m, entropy_m), (_, n_s, sparsity_s, entropy_s) in zip(mirrored["stats"], single["stats"]):
        assert n_m == n_s
        assert abs(sparsity_m - sparsity_s) < 0.05 and abs(entropy_m - entropy_s) < 0.25


def test_same_seed_gives_identical_codes(runs):
    assert runs["single"]["digest"] == runs["single_again"]["digest"]
