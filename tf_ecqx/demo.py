"""The demo `make demo` runs: float CNN on Fashion-MNIST, 4-bit ECQ and ECQx fine-tuning with model.fit, compared."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tf_ecqx._keras import keras
from tf_ecqx.callbacks import RelevanceCallback
from tf_ecqx.datasets import Split, fashion_mnist
from tf_ecqx.files import staged_directory
from tf_ecqx.intake import quantize_model
from tf_ecqx.models import compile_for_classification, trained_float_model
from tf_ecqx.plots import plot_relevance
from tf_ecqx.quantization.settings import DEFAULT_LAMBDA, ECQxSettings
from tf_ecqx.relevance.sources import DEFAULT_RELEVANCE, relevance_source
from tf_ecqx.report import LayerStats, format_layer_table, layer_stats, model_totals
from tf_ecqx.sizes import format_micro_table, format_size_table, micro_sizes, size_table


@dataclass(frozen=True)
class DemoSettings:
    bits: int = 4
    lambda_: float = DEFAULT_LAMBDA
    float_epochs: int = 3
    finetune_epochs: int = 2
    batch_size: int = 64
    seed: int = 0
    relevance: str = DEFAULT_RELEVANCE
    p: float = 0.1
    every_n_steps: int = 1

    def __post_init__(self) -> None:
        ECQxSettings(self.bits, self.lambda_, ecqx=True, p=self.p)  # checked before any work
        relevance_source(self.relevance)


class Finetuned(NamedTuple):
    qmodel: keras.Model
    accuracy: float
    stats: list[LayerStats]


def _finetune(
    model: keras.Model, settings: DemoSettings, train: Split, test_ds: Any, ecqx: bool, verbose: int
) -> Finetuned:
    """Quantize the float model with ECQ or ECQx and fine-tune it with model.fit, from the same seed."""
    keras.utils.set_random_seed(settings.seed)
    qmodel = quantize_model(model, bits=settings.bits, lambda_=settings.lambda_, ecqx=ecqx, p=settings.p)
    compile_for_classification(qmodel)
    train_ds = train.as_dataset(settings.batch_size, shuffle=True, seed=settings.seed)
    callbacks = [RelevanceCallback(train_ds, settings.relevance, settings.every_n_steps)] if ecqx else []
    qmodel.fit(train_ds, epochs=settings.finetune_epochs, callbacks=callbacks, verbose=verbose)
    return Finetuned(qmodel, qmodel.evaluate(test_ds, verbose=0)[1], layer_stats(qmodel))


def run_demo(
    settings: DemoSettings = DemoSettings(), verbose: int = 2, output_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Train (or load) the float CNN; quantize it with ECQ and with ECQx, fine-tune both the same way, print accuracies
    and layer tables side by side; with an output_dir, export the ECQx model (mobile and micro TFLite, bitstream),
    print the size table and the micro file's flash and RAM per encoding, and save input-relevance heatmaps.
    output_dir is checked before training, and its files appear together at the end (a failed run leaves it as it
    was)."""
    if output_dir is None:
        return _demo(settings, verbose, None, None)
    with staged_directory(output_dir) as staging:
        return _demo(settings, verbose, staging, Path(output_dir))


def _demo(settings: DemoSettings, verbose: int, staging: Path | None, output_dir: Path | None) -> dict[str, Any]:
    """run_demo's work; exported files go to `staging`, and messages name their final folder `output_dir`."""
    train, test = fashion_mnist()
    print(f"Fashion-MNIST: {len(train.x)} training and {len(test.x)} test images")
    model = trained_float_model("demo_cnn", train, settings.float_epochs, settings.batch_size, settings.seed, verbose)
    test_ds = test.as_dataset(256)
    float_accuracy = model.evaluate(test_ds, verbose=0)[1]
    print(f"float accuracy: {float_accuracy:.4f}")

    runs = {}
    for name, ecqx in (("ECQ", False), ("ECQx", True)):
        detail = f", LRP {settings.relevance}, p={settings.p}, relevance every {settings.every_n_steps} step(s)"
        print(f"\n{name} {settings.bits}-bit, lambda={settings.lambda_}{detail if ecqx else ''}: fine-tuning")
        runs[name] = _finetune(model, settings, train, test_ds, ecqx, verbose)
        print(format_layer_table(runs[name].stats))

    print(f"\n{'':<6}{'accuracy':>10}{'change':>10}{'sparsity':>10}{'entropy':>9}{'bytes@H':>10}")
    print(f"{'float':<6}{float_accuracy:>10.4f}")
    for name, run in runs.items():
        totals = model_totals(run.stats)
        change = 100 * (run.accuracy - float_accuracy)
        print(
            f"{name:<6}{run.accuracy:>10.4f}{change:>+9.2f}p{totals.sparsity:>10.1%}{totals.entropy:>9.3f}"
            f"{totals.entropy_bytes:>10.0f}"
        )
    result = {"float_accuracy": float_accuracy}
    for name, run in runs.items():
        result[f"{name.lower()}_accuracy"] = run.accuracy
        result[f"{name.lower()}_sparsity"] = model_totals(run.stats).sparsity
    if staging is not None:
        qmodel = runs["ECQx"].qmodel
        print(f"\nExporting the ECQx model to {output_dir}/ (TFLite for LiteRT and TFLM, bitstream), verified:")
        rows = size_table(qmodel, train.x[:200], staging)
        print(format_size_table(rows))
        result["sizes"] = {row.artifact: row.bytes for row in rows}
        micro = micro_sizes(qmodel, train.x[:200])
        print("\nThe micro (TFLM) file with each DECODE encoding: flash, and the arena TFLM allocates (RAM):")
        print(format_micro_table(micro))
        result["micro"] = {row.encoding: {"flash": row.flash, "arena": row.arena} for row in micro}
        plot_relevance(qmodel, test.x[:16], staging / "relevance.png", composite=settings.relevance)
        print(f"input relevances of 16 test images (ECQx model): {output_dir / 'relevance.png'}")
    return result
