"""The demo `make demo` runs: float CNN on Fashion-MNIST, 4-bit ECQ fine-tuning with model.fit, the per-layer table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tf_ecqx._keras import keras
from tf_ecqx.datasets import fashion_mnist
from tf_ecqx.ecq.grid import check_bits
from tf_ecqx.models import compile_for_classification, trained_float_model
from tf_ecqx.quantization.api import quantize_model
from tf_ecqx.quantization.quantizers import check_lambda
from tf_ecqx.report import format_layer_table, layer_stats, model_totals
from tf_ecqx.sizes import format_size_table, size_table


@dataclass(frozen=True)
class DemoSettings:
    bits: int = 4
    lambda_: float = 0.2
    float_epochs: int = 3
    finetune_epochs: int = 2
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_lambda(self.lambda_)


def run_demo(
    settings: DemoSettings = DemoSettings(), verbose: int = 2, output_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Train (or load) the float CNN, quantize it with ECQ, fine-tune, print accuracies and the layer table, and,
    with an output_dir, export it (mobile and micro TFLite, bitstream) and print the size table."""
    train, test = fashion_mnist()
    print(f"Fashion-MNIST: {len(train.x)} training and {len(test.x)} test images")
    model = trained_float_model("demo_cnn", train, settings.float_epochs, settings.batch_size, settings.seed, verbose)
    test_ds = test.as_dataset(256)
    float_accuracy = model.evaluate(test_ds, verbose=0)[1]
    print(f"float accuracy: {float_accuracy:.4f}")

    keras.utils.set_random_seed(settings.seed)
    qmodel = compile_for_classification(quantize_model(model, bits=settings.bits, lambda_=settings.lambda_))
    print(f"ECQ {settings.bits}-bit, lambda={settings.lambda_}: fine-tuning with model.fit")
    qmodel.fit(
        train.as_dataset(settings.batch_size, shuffle=True, seed=settings.seed),
        epochs=settings.finetune_epochs,
        verbose=verbose,
    )
    ecq_accuracy = qmodel.evaluate(test_ds, verbose=0)[1]
    stats = layer_stats(qmodel)
    print(
        f"ECQ {settings.bits}-bit accuracy after {settings.finetune_epochs} epochs: {ecq_accuracy:.4f} "
        f"(float {float_accuracy:.4f}, change {100 * (ecq_accuracy - float_accuracy):+.2f} pp)"
    )
    print(format_layer_table(stats))
    result = {"float_accuracy": float_accuracy, "ecq_accuracy": ecq_accuracy, "sparsity": model_totals(stats).sparsity}
    if output_dir is not None:
        print(f"\nExporting to {output_dir}/ (TFLite for LiteRT and TFLM, bitstream), each verified in its runtime:")
        rows = size_table(qmodel, train.x[:200], output_dir)
        print(format_size_table(rows))
        result["sizes"] = {row.artifact: row.bytes for row in rows}
    return result
