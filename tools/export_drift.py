"""How far an int8 file's outputs drift from its Keras QAT model on a keras.applications model, ours beside tfmot's.

For tf_ecqx (ECQ, 4 bit) and tfmot's own QAT, from the same random weights (`models.application_model`) trained on
`--images` Fashion-MNIST images (padded to 32x32x3): the Keras
test accuracy, the int8 file's RMS error against the Keras outputs relative to their spread, the Keras model's own
sensitivity (the same measure on inputs nudged by one int8 input step) and the argmax agreement, on 256 test images.
Numbers: README (Limits) and BENCHMARKS.md. Usage: python tools/export_drift.py [--model MobileNet] [--images 256]
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow_model_optimization as tfmot

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.datasets import fashion_mnist
from tf_ecqx.export.conversion import convert_int8, input_step
from tf_ecqx.export.runtimes import run_litert
from tf_ecqx.export.verification import nudged_inputs, relative_rms
from tf_ecqx.models import application_model, compile_for_classification, rgb32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MobileNet", help="a keras.applications model name")
    parser.add_argument("--images", type=int, default=256, help="training images (batch 32, one epoch)")
    args = parser.parse_args()
    train, test = fashion_mnist()
    x, y, x_test, y_test = rgb32(train.x[: args.images]), train.y[: args.images], rgb32(test.x[:256]), test.y[:256]
    print(f"{args.model}, {args.images} training images | accuracy | file error | sensitivity | argmax agreement")
    for tool in ("tfmot QAT", "tf_ecqx ECQ 4 bit"):
        keras.utils.set_random_seed(0)
        model = application_model(args.model)
        qat = tfmot.quantization.keras.quantize_model if tool == "tfmot QAT" else tf_ecqx.quantize_model
        qmodel = compile_for_classification(qat(model))
        qmodel.fit(x, y, batch_size=32, epochs=1, verbose=0)
        accuracy = qmodel.evaluate(x_test, y_test, verbose=0)[1]
        reference = qmodel.predict(x_test, verbose=0)
        nudged = qmodel.predict(nudged_inputs(x_test, input_step(qmodel)), verbose=0)
        outputs = run_litert(convert_int8(qmodel, x[:64], sparse=False, float_io=True), x_test)[1]
        agreement = np.mean(outputs.argmax(-1) == reference.argmax(-1))
        print(
            f"{tool} | {accuracy:.3f} | {relative_rms(reference, outputs):.2f} | {relative_rms(reference, nudged):.2f} "
            f"| {agreement:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
