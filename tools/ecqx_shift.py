"""How far ECQx's relevance correction moves the assignment away from ECQ's, per layer, after some ECQx training.

    python tools/ecqx_shift.py [--model demo_cnn] [--bits 4] [--lambda 0.2] [--steps 300] [--relevance NAME] [--p 0.1]

Fine-tunes the cached float model with ECQx (relevances every step), then for each kernel compares the ECQ codes of
its current float weights with the ECQx codes under its current relevances: sparsity of both, how many weights the
relevance pushed onto zero and how many it kept off zero. Explains what the p interval and the relevance change.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import fashion_mnist  # noqa: E402
from tf_ecqx.ecq import assign  # noqa: E402
from tf_ecqx.models import compile_for_classification, trained_float_model  # noqa: E402
from tf_ecqx.quantization.kernels import quantized_kernels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_cnn")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--lambda", dest="lambda_", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--relevance", default="epsilon_plus_flat_bn_pass")
    parser.add_argument("--p", type=float, default=0.1)
    args = parser.parse_args()

    train, _ = fashion_mnist()
    keras.utils.set_random_seed(0)
    model = trained_float_model(args.model, train, verbose=0)
    qmodel = tf_ecqx.quantize_model(model, bits=args.bits, lambda_=args.lambda_, ecqx=True, p=args.p)
    compile_for_classification(qmodel)
    callback = tf_ecqx.RelevanceCallback(train.as_dataset(64, shuffle=True), args.relevance)
    data = train.as_dataset(64, shuffle=True).repeat()
    qmodel.fit(data, steps_per_epoch=args.steps, epochs=1, callbacks=[callback], verbose=0)

    print(f"{args.model}, {args.bits} bit, λ {args.lambda_}, {args.relevance}, p {args.p}, after {args.steps} steps")
    print("| layer | weights | ECQ sparsity | ECQx sparsity | pushed onto zero | kept off zero | ECQx = ECQ |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for k in quantized_kernels(qmodel):
        grid = k.quantizer.grid(k.state)
        ecq = assign.ecq_codes(k.kernel, grid, k.settings.lambda_, k.state["size_factor"])
        ecqx = k.codes()
        ecq_zero, ecqx_zero = tf.equal(ecq, 0), tf.equal(ecqx, 0)
        pushed = int(tf.reduce_sum(tf.cast(ecqx_zero & ~ecq_zero, tf.int32)))
        kept = int(tf.reduce_sum(tf.cast(ecq_zero & ~ecqx_zero, tf.int32)))
        n = int(tf.size(ecq))
        same = bool(tf.reduce_all(tf.equal(ecq, ecqx)))
        print(
            f"| {k.layer_name} | {n:,} | {float(assign.sparsity(ecq)):.1%} | {float(assign.sparsity(ecqx)):.1%} "
            f"| {pushed:,} ({pushed / n:.1%}) | {kept:,} ({kept / n:.1%}) | {'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
