"""One ECQx relevance refresh, native TF2 LRP vs the iNNvestigate backend: time and agreement of weight relevances.

    python tools/bench_lrp.py [--models demo_cnn residual_cnn] [--rules lrp.epsilon lrp.alpha_2_beta_1] [--repeats 7]

As during training: a 4-bit ECQx QAT model of the cached float model, batch 64 of Fashion-MNIST training images,
the kernels moved (a small random step) before every refresh, the iNNvestigate worker already started. Both sides
are timed interleaved in this run; the ratio is iNNvestigate time / native time. The difference of weight relevances
is reported separately for layers right before a BatchNormalization, whose treatment differs by definition (native
runs with BatchNorm passed rather than folded, so that the forward computations are the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import fashion_mnist  # noqa: E402
from tf_ecqx.models import trained_float_model  # noqa: E402
from tf_ecqx.quantization.kernels import quantized_kernels  # noqa: E402
from tf_ecqx.relevance import InnvestigateBackend, get_composite  # noqa: E402
from tf_ecqx.relevance.propagation import compiled_lrp  # noqa: E402


def max_relative_difference(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], layers: set[str]) -> float:
    """max over `layers` of max|ours - theirs| / max|theirs| (0 if there are none)."""
    return max(
        (float(np.max(np.abs(ours[k] - theirs[k])) / max(np.max(np.abs(theirs[k])), 1e-30)) for k in layers),
        default=0.0,
    )


def feeds_batch_norm(model: keras.Model) -> set[str]:
    """Names of the layers whose output goes into a BatchNormalization: there iNNvestigate and we differ by definition
    (it applies the layer rule to BN as a layer of its own; we canonize BN into the layer before)."""
    return {
        node.inbound_layers.name
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for node in layer.inbound_nodes
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo_cnn", "residual_cnn"])
    parser.add_argument("--rules", nargs="+", default=["lrp.epsilon", "lrp.alpha_2_beta_1"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    train, _ = fashion_mnist()
    rng = np.random.default_rng(0)
    print(f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU only; batch {args.batch_size}")
    print(
        "| model | rule | native ms (median) | iNNvestigate ms (median) | ratio min / median | max rel. diff "
        "| max rel. diff, layers before a BatchNorm |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    with InnvestigateBackend() as backend:
        for name in args.models:
            model = trained_float_model(name, train, verbose=0)
            before_bn = feeds_batch_norm(model)
            for rule in args.rules:
                qmodel = tf_ecqx.quantize_model(model, bits=4, lambda_=0.2, ecqx=True)
                # BatchNorm passed, not folded: both sides then run the same forward computation
                native = compiled_lrp(qmodel, dataclasses.replace(get_composite(rule), bn="pass"), "output")
                kernels = list(quantized_kernels(qmodel))
                times: dict[str, list[float]] = {"native": [], "innvestigate": []}
                worst, worst_bn = 0.0, 0.0
                for repeat in range(args.repeats + 1):  # the first round traces and warms up
                    for k in kernels:
                        k.kernel.assign_add(1e-3 * tf.math.reduce_std(k.kernel) * rng.standard_normal(k.kernel.shape))
                    start = rng.integers(0, len(train.x) - args.batch_size)
                    x = train.x[start : start + args.batch_size]
                    y = train.y[start : start + args.batch_size].astype(np.int32)
                    tic = time.perf_counter()
                    ours = {k: v.numpy() for k, v in native(tf.constant(x), tf.constant(y))[1].items()}
                    mid = time.perf_counter()
                    theirs = backend.weight_relevances(qmodel, x, rule, y, plain=tf_ecqx.strip(qmodel))
                    end = time.perf_counter()
                    if repeat:
                        times["native"].append(mid - tic)
                        times["innvestigate"].append(end - mid)
                    worst = max(worst, max_relative_difference(ours, theirs, set(theirs) - before_bn))
                    worst_bn = max(worst_bn, max_relative_difference(ours, theirs, set(theirs) & before_bn))
                ratios = [b / a for a, b in zip(times["native"], times["innvestigate"])]
                print(
                    f"| {name} | {rule} | {1e3 * statistics.median(times['native']):.1f} | "
                    f"{1e3 * statistics.median(times['innvestigate']):.0f} | {min(ratios):.0f}x / "
                    f"{statistics.median(ratios):.0f}x | {worst:.1e} | {f'{worst_bn:.1e}' if before_bn else '-'} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
