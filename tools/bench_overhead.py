"""Train-step time of float, tfmot int8 QAT, ECQ and ECQx (relevance every step / every 10 steps), as ratios to float.

    python tools/bench_overhead.py [--models demo_cnn mlp] [--steps 50] [--repeats 7] [--batch-size 64]

The same model, batch and data for all; the variants are timed interleaved (A, B, C, ... A, B, C, ...) in one run, the
ECQx relevance refresh (RelevanceCallback after the step, as in fit) included. Prints min / median / max of the ratio
to float over the repeats. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import Split, fashion_mnist  # noqa: E402
from tf_ecqx.models import compile_for_classification, trained_float_model  # noqa: E402


class Timed(NamedTuple):
    """A compiled model to time, and the RelevanceCallback that runs after each of its steps (ECQx), if any."""

    model: keras.Model
    callback: tf_ecqx.RelevanceCallback | None = None


def step_seconds(models: dict[str, Timed], x: np.ndarray, y: np.ndarray, steps: int, repeats: int) -> dict:
    """Seconds per train step (relevance refresh included) of each model on the same batch, measured interleaved
    (model A, B, A, B, ...)."""
    functions = {}
    for name, timed in models.items():
        batch = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        if timed.callback is not None:
            timed.callback.set_model(timed.model)
            timed.callback.on_train_begin()
        functions[name] = (timed.model.make_train_function(), batch, timed.callback)
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(repeats + 1):  # the first round traces and warms up
        for name, (train_function, batch, callback) in functions.items():
            start = time.perf_counter()
            for step in range(steps):
                train_function(batch)
                if callback is not None:
                    callback.on_train_batch_end(step)
            if repeat:
                times[name].append((time.perf_counter() - start) / steps)
    return times


def ecqx_timed(model: keras.Model, x: np.ndarray, y: np.ndarray, every_n_steps: int) -> Timed:
    """A 4-bit ECQx QAT model of `model` with its relevance callback on the timing batch."""
    qmodel = tf_ecqx.quantize_model(model, bits=4, lambda_=0.2, ecqx=True)
    return Timed(compile_for_classification(qmodel), tf_ecqx.RelevanceCallback((x, y), every_n_steps=every_n_steps))


def print_step_times(name: str, model: keras.Model, train: Split, batch_size: int, steps: int, repeats: int) -> None:
    """Time every variant of `model` on one training batch and print the ratios to float."""
    x, y = train.x[:batch_size], train.y[:batch_size]
    timed = {
        "float": Timed(compile_for_classification(keras.models.clone_model(model))),
        "tfmot int8 QAT": Timed(compile_for_classification(tfmot.quantization.keras.quantize_model(model))),
        "ECQ 4-bit": Timed(compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.2))),
        "ECQx 4-bit, relevance every step": ecqx_timed(model, x, y, 1),
        "ECQx 4-bit, relevance every 10 steps": ecqx_timed(model, x, y, 10),
    }
    times = step_seconds(timed, x, y, steps, repeats)
    print(f"\n{name} train step, batch {batch_size}, {repeats} interleaved repeats of {steps} steps:")
    for label in list(timed)[1:]:
        ratios = [t / f for t, f in zip(times[label], times["float"])]
        print(
            f"  {label}: median {1e3 * statistics.median(times[label]):.2f} ms vs float "
            f"{1e3 * statistics.median(times['float']):.2f} ms; ratio to float min {min(ratios):.2f} "
            f"median {statistics.median(ratios):.2f} max {max(ratios):.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo_cnn", "mlp"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    train, _ = fashion_mnist()
    print(f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU only")
    for name in args.models:
        model = trained_float_model(name, train, verbose=0)
        print_step_times(name, model, train, args.batch_size, args.steps, args.repeats)


if __name__ == "__main__":
    main()
