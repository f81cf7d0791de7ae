"""ECQ and ECQx under tf.distribute.MultiWorkerMirroredStrategy: two worker processes on localhost against one.

Three processes run tests/distributed_training.py at once: two workers of one cluster (TF_CONFIG on two free
localhost ports; gRPC collectives on CPU) and a single worker (no TF_CONFIG). Each trains ECQ, then ECQx with
RelevanceCallback, for one epoch of 16 steps on 1024 real Fashion-MNIST images at a global batch of 64: the
dataset's batch is the global batch, split 32 + 32 over the two workers, so both runs take the same optimizer steps
on the same samples. Each worker reads its ECQx relevance batches in an order of its own, so the workers' identical
codes also show that RelevanceCallback averages the relevances over them (without it, their codes differ).

Tolerance: per layer, the two-worker sparsity is within SPARSITY_TOLERANCE = 0.05 of the single worker's (the bound
of the MirroredStrategy test). The runs are the same computation but for what data parallelism changes: BatchNorm
normalises each worker's 32 samples with their own statistics, dropout masks are drawn per replica, gradients are
summed in another order, and the two workers' relevances are the mean over two batches, not one. ECQ's assignment is a
hard threshold, so these small differences flip a few weights: measured, at most 1 of the 72 weights of a conv kernel
(0.014) and 0.009 of the 36,864 of the large dense kernel.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed_training import code_digest

import tf_ecqx
from tf_ecqx._keras import keras

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("distributed_training.py")
TIMEOUT = 600  # seconds for the three processes together; they take one to two minutes on 2 cores
SPARSITY_TOLERANCE = 0.05
RUNS = ("worker0", "worker1", "single")


def free_ports(count: int) -> list[int]:
    """Ports free on localhost now (the operating system's choice; released just before the workers bind them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("multi_worker")
    for name in RUNS:
        (folder / name).mkdir()
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    environments = {
        f"worker{index}": environment
        | {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        for index in range(2)
    } | {"single": environment}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in RUNS:
            with open(folder / f"{name}.out", "w") as out, open(folder / f"{name}.err", "w") as err:
                processes[name] = subprocess.Popen(
                    [sys.executable, str(SCRIPT), str(folder / name)], env=environments[name], stdout=out, stderr=err
                )
        # Poll: a worker that fails leaves the other waiting for it in a collective, so stop at the first failure.
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in processes.values()):
            failed = [name for name, p in processes.items() if p.returncode not in (None, 0)]
            assert not failed, "\n".join(
                f"{name} exited with {processes[name].returncode}:\n{tail(folder / f'{name}.err')}" for name in failed
            )
            running = [name for name, p in processes.items() if p.returncode is None]
            assert time.monotonic() < deadline, f"{running} still running after {TIMEOUT} s; stderr tails:\n" + (
                "\n".join(f"--- {name}:\n{tail(folder / f'{name}.err')}" for name in running)
            )
            time.sleep(0.5)
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    results = {}
    for name, p in processes.items():
        assert p.returncode == 0, f"{name} exited with {p.returncode}:\n{tail(folder / f'{name}.err')}"
        lines = (folder / f"{name}.out").read_text().strip().splitlines()
        assert lines, f"{name} printed no result:\n{tail(folder / f'{name}.err')}"
        results[name] = json.loads(lines[-1]) | {"folder": folder / name}
    return results


@pytest.mark.parametrize("method", ["ecq", "ecqx"])
def test_two_workers_train_as_one_cluster(runs, method):
    """Two replicas in sync, each worker taking the 16 global steps of one epoch (the single worker takes the same)."""
    two, single = runs["worker0"][method], runs["single"][method]
    assert (two["replicas"], single["replicas"]) == (2, 1)
    assert two["steps"] == runs["worker1"][method]["steps"] == single["steps"] == 16


@pytest.mark.parametrize("method", ["ecq", "ecqx"])
def test_both_workers_end_with_identical_codes(runs, method):
    """The all-reduce of gradients (and, with ECQx, of the relevances, although each worker computes them on batches
    of its own) keeps the replicas' codes identical."""
    worker0, worker1 = runs["worker0"][method], runs["worker1"][method]
    assert worker0["shapes"] == worker1["shapes"]
    assert worker0["digest"] == worker1["digest"], (
        f"{method}: the workers' codes differ (sha256 {worker0['digest'][:12]} vs {worker1['digest'][:12]}); "
        f"sparsity per layer {[s[2] for s in worker0['stats']]} vs {[s[2] for s in worker1['stats']]}"
    )


@pytest.mark.parametrize("method", ["ecq", "ecqx"])
def test_two_workers_reach_the_single_worker_sparsity(runs, method):
    two, single = runs["worker0"][method], runs["single"][method]
    assert two["shapes"] == single["shapes"]
    for (name, n, sparsity_two, _), (name_single, n_single, sparsity_single, _) in zip(two["stats"], single["stats"]):
        assert (name, n) == (name_single, n_single)
        assert abs(sparsity_two - sparsity_single) <= SPARSITY_TOLERANCE, (
            f"{method} {name}: sparsity {sparsity_two:.4f} with two workers, {sparsity_single:.4f} with one "
            f"(tolerance {SPARSITY_TOLERANCE})"
        )


def test_the_chief_saves_the_trained_model(runs):
    """Saved as TensorFlow's multi-worker tutorial saves: the chief's file, with the codes the workers trained to."""
    with tf_ecqx.quantize_scope():
        saved = keras.models.load_model(runs["worker0"]["folder"] / "ecqx.keras")
    assert code_digest(saved) == runs["worker0"]["ecqx"]["digest"]
    assert not any(runs["worker1"]["folder"].iterdir()), "worker 1 is not the chief: it must not keep a file"
