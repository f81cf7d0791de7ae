"""ECQ on Fashion-MNIST: float vs ECQ accuracy/sparsity/entropy at 2-5 bit, and train-step time ECQ, ECQx / float.

    python tools/bench_ecq.py [--models demo_cnn mlp] [--bits 2 3 4 5] [--lambdas 0.1 0.3] [--epochs 1]

Everything is measured in this run on this machine: accuracies on the full 10k test set, step times interleaved.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from bench_overhead import print_step_times  # noqa: E402  (tools/ is on sys.path when run as a script)

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import fashion_mnist  # noqa: E402
from tf_ecqx.models import compile_for_classification, trained_float_model  # noqa: E402
from tf_ecqx.report import model_totals  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo_cnn", "mlp"])
    parser.add_argument("--bits", nargs="*", type=int, default=[2, 3, 4, 5], help="none: timing only")
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.1, 0.3])
    parser.add_argument("--epochs", type=int, default=1, help="ECQ fine-tuning epochs per point")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--timing-steps", type=int, default=50)
    parser.add_argument("--timing-repeats", type=int, default=7)
    args = parser.parse_args()

    train, test = fashion_mnist()
    print(f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU only")
    print(
        f"fine-tuning: Adam lr 1e-3, batch {args.batch_size}, {args.epochs} epoch(s) on 60k images, from the cached"
        " float model; accuracy on the 10k test images"
    )
    for name in args.models:
        model = trained_float_model(name, train, verbose=0)
        float_accuracy = model.evaluate(test.as_dataset(512), verbose=0)[1]
        print(f"\n## {name}: float accuracy {float_accuracy:.4f}")
        print("| bits | lambda | accuracy | change (pp) | sparsity | entropy (bits/weight) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for bits in args.bits:
            for lam in args.lambdas:
                keras.utils.set_random_seed(0)
                qmodel = compile_for_classification(tf_ecqx.quantize_model(model, bits=bits, lambda_=lam))
                qmodel.fit(train.as_dataset(args.batch_size, shuffle=True), epochs=args.epochs, verbose=0)
                accuracy = qmodel.evaluate(test.as_dataset(512), verbose=0)[1]
                totals = model_totals(tf_ecqx.layer_stats(qmodel))
                sparsity, entropy = totals.sparsity, totals.entropy
                print(
                    f"| {bits} | {lam} | {accuracy:.4f} | {100 * (accuracy - float_accuracy):+.2f} | "
                    f"{sparsity:.1%} | {entropy:.3f} |",
                    flush=True,
                )

        print_step_times(name, model, train, args.batch_size, args.timing_steps, args.timing_repeats)


if __name__ == "__main__":
    main()
