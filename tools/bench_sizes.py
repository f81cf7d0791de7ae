"""Size table at 2-5 bit for the demo CNN and the MLP, with the accuracy of the exported .tflite files in LiteRT, and
the micro (TFLM) file's flash and arena bytes with each DECODE encoding.

    python tools/bench_sizes.py [--models demo_cnn mlp] [--bits 2 3 4 5] [--lambda 0.2] [--epochs 1] [--relevance NAME]

From the cached float model, ECQ (or ECQx with --relevance) fine-tuning with model.fit, then every artifact of
`tf_ecqx.sizes.size_table` (each export verified in its runtime), the accuracy of the int8 and sparse int8 files run
in LiteRT on the full 10k test set, and `tf_ecqx.sizes.micro_sizes` (arenas as the TFLM interpreter reports them).
Everything is measured in this run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import fashion_mnist  # noqa: E402
from tf_ecqx.export.runtimes import run_litert  # noqa: E402
from tf_ecqx.models import compile_for_classification, trained_float_model  # noqa: E402
from tf_ecqx.sizes import MICRO_ROW, micro_sizes, size_table  # noqa: E402

COLUMNS = {
    "float32 TFLite": "float32 .tflite",
    "int8 TFLite, gzip -9": "int8 gz",
    "sparse int8 TFLite": "sparse int8",
    "sparse int8 TFLite, gzip -9": "sparse int8 gz",
    MICRO_ROW: "micro (TFLM)",
    "bitstream (quantized kernels)": "bitstream",
    "zeroth-order entropy of the kernel codes": "entropy (0th order)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo_cnn", "mlp"])
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4, 5])
    parser.add_argument("--lambda", dest="lambda_", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--relevance", default=None, help="LRP composite: ECQx instead of ECQ")
    args = parser.parse_args()

    train, test = fashion_mnist()
    method = f"ECQx ({args.relevance})" if args.relevance else "ECQ"
    print(f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU only")
    print(f"{method}, lambda {args.lambda_}, {args.epochs} epoch(s) Adam 1e-3 batch 64 from the cached float model")
    for name in args.models:
        model = trained_float_model(name, train, verbose=0)
        float_accuracy = model.evaluate(test.as_dataset(512), verbose=0)[1]
        print(f"\n## {name}: float accuracy (Keras) {float_accuracy:.4f}; sizes in bytes, ratio vs float32 .tflite")
        header = ["bits", "Keras QAT acc.", "int8 .tflite acc.", "sparse .tflite acc.", *COLUMNS.values()]
        print("| " + " | ".join(header) + " |")
        print("|---:" * (4 + len(COLUMNS)) + "|")
        micro = {}
        for bits in args.bits:
            keras.utils.set_random_seed(0)
            ecqx = args.relevance is not None
            qmodel = tf_ecqx.quantize_model(model, bits=bits, lambda_=args.lambda_, ecqx=ecqx)
            compile_for_classification(qmodel)
            data = train.as_dataset(64, shuffle=True)
            callbacks = [tf_ecqx.RelevanceCallback(data, args.relevance)] if ecqx else []
            qmodel.fit(data, epochs=args.epochs, callbacks=callbacks, verbose=0)
            keras_accuracy = qmodel.evaluate(test.as_dataset(512), verbose=0)[1]
            with tempfile.TemporaryDirectory() as directory:
                rows = {row.artifact: row for row in size_table(qmodel, train.x[:200], directory)}
                accuracies = [
                    np.mean(run_litert((Path(directory) / f).read_bytes(), test.x)[1].argmax(1) == test.y)
                    for f in ("int8.tflite", "sparse_int8.tflite")
                ]
            reference = rows["float32 TFLite"].bytes
            cells = [f"{reference:,}"] + [f"{rows[a].bytes:,} ({rows[a].ratio:.1f}x)" for a in list(COLUMNS)[1:]]
            cells = [str(bits), f"{keras_accuracy:.4f}", *(f"{a:.4f}" for a in accuracies), *cells]
            print("| " + " | ".join(cells) + " |", flush=True)
            micro[bits] = micro_sizes(qmodel, train.x[:200])
        print(f"\n{name}, micro file: flash / TFLM arena bytes")
        print("| bits | " + " | ".join(row.encoding for row in micro[args.bits[0]]) + " |")
        print("|---:" * (1 + len(micro[args.bits[0]])) + "|")
        for bits, rows in micro.items():
            print(f"| {bits} | " + " | ".join(f"{row.flash:,} / {row.arena:,}" for row in rows) + " |", flush=True)


if __name__ == "__main__":
    main()
