"""What `tf-ecqx quantize`, `report` and `explain` do, as functions (the CLI only parses arguments and prints)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tf_ecqx import datasets
from tf_ecqx._keras import keras
from tf_ecqx.callbacks import QuantizationMetrics, RelevanceCallback
from tf_ecqx.export.bitstream import save as save_bitstream
from tf_ecqx.export.tflite import ExportResult, to_tflite
from tf_ecqx.files import check_writable, staged_directory
from tf_ecqx.intake import quantize_model
from tf_ecqx.model_files import load_model_file
from tf_ecqx.models import compile_for_classification
from tf_ecqx.plots import plot_code_histogram, plot_layer_stats, plot_relevance
from tf_ecqx.quantization.settings import DEFAULT_LAMBDA, ECQxSettings, check_count
from tf_ecqx.rate_allocation import allocate_rates
from tf_ecqx.recipe import EPOCHS, LAYER_LAMBDAS, LEARNING_RATE, LR_SCHEDULES
from tf_ecqx.relevance.sources import relevance_source
from tf_ecqx.report import LayerStats, format_layer_table, layer_stats

REPORT_FILE = "report.json"
QAT_FILE = "qat.keras"
ARTIFACTS = {  # file in the output directory -> what it is
    QAT_FILE: "QAT model (tf_keras, load inside tf_ecqx.quantize_scope())",
    "model_int8_sparse.tflite": "LiteRT (phones): full-integer int8, sparse filters",
    "model_micro.tflite": "TFLM (microcontrollers): int8, each filter in its smallest DECODE encoding",
    "kernels.ecqx": "entropy-coded bitstream of the kernel codes",
}


@dataclass(frozen=True)
class QuantizeSettings:
    bits: int = 4
    lambda_: float = DEFAULT_LAMBDA
    relevance: str | None = None  # ECQx with this relevance source; None: ECQ
    p: float = 0.1
    epochs: int = EPOCHS
    lr_schedule: str = LR_SCHEDULES[0]
    layer_lambdas: str = LAYER_LAMBDAS[0]
    batch_size: int = 64
    seed: int = 0
    micro_ram_kb: float | None = None  # the TFLM arena budget of the micro export, in KB (1024 bytes)

    def __post_init__(self) -> None:
        ECQxSettings(self.bits, self.lambda_, ecqx=self.relevance is not None, p=self.p)  # checked before any work
        if self.relevance is not None:
            relevance_source(self.relevance)
        check_count("epochs", self.epochs)
        for name, value, allowed in (
            ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
            ("layer_lambdas", self.layer_lambdas, LAYER_LAMBDAS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}.")
        kb = self.micro_ram_kb
        if kb is not None and (isinstance(kb, bool) or not isinstance(kb, (int, float)) or not 0 < kb < math.inf):
            raise ValueError(f"micro RAM budget {kb!r} KB must be a positive number of kilobytes (--micro-ram 64).")

    def learning_rate(self, steps: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
        """Adam's learning rate for a fine-tuning of `steps` steps."""
        if self.lr_schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)
        return LEARNING_RATE

    @property
    def ram_budget(self) -> int | None:
        """micro_ram_kb in bytes."""
        return None if self.micro_ram_kb is None else max(1, round(self.micro_ram_kb * 1024))


def _progress(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def quantize_to_directory(
    model_path: str | os.PathLike, data: str, out: str | os.PathLike, settings: QuantizeSettings, quiet: bool = False
) -> dict[str, Any]:
    """Quantize a float `.keras` classifier (logits out, integer labels) with ECQ/ECQx, fine-tune it with fit, and write
    the QAT model, both TFLite targets, the bitstream, report.json and plots to `out`. Returns the report.

    Everything is checked before training; the outputs appear in `out` together at the end, or not at all.
    """
    float_model = load_model_file(model_path)
    train, test = datasets.load(data)
    for split, name in ((train, "training data"), (test, "test data")):
        datasets.check_fits(split, float_model.inputs[0].shape[1:], float_model.outputs[0].shape[-1], name)
    with staged_directory(out, manifest=REPORT_FILE) as staging:
        report = _quantize_into(float_model, train, test, staging, settings, quiet)
        report |= {"model": str(model_path), "data": data}
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1))
    return report


def _quantize_into(
    float_model: keras.Model,
    train: datasets.Split,
    test: datasets.Split,
    out: Path,
    settings: QuantizeSettings,
    quiet: bool,
) -> dict[str, Any]:
    """The work of quantize_to_directory, writing into the folder `out`; returns the report without its inputs."""
    compile_for_classification(float_model)
    float_accuracy = float(float_model.evaluate(test.as_dataset(256), verbose=0)[1])
    keras.utils.set_random_seed(settings.seed)
    ecqx = settings.relevance is not None
    qmodel = quantize_model(float_model, bits=settings.bits, lambda_=settings.lambda_, ecqx=ecqx, p=settings.p)
    steps = settings.epochs * math.ceil(len(train.x) / settings.batch_size)
    compile_for_classification(qmodel, settings.learning_rate(steps))
    method = "ECQx" if ecqx else "ECQ"
    recipe = f"per-layer lambda from {settings.layer_lambdas}, learning rate {settings.lr_schedule}"
    _progress(quiet, f"[1/4] {method} {settings.bits}-bit fine-tuning for {settings.epochs} epoch(s), {recipe}")
    if settings.layer_lambdas == "sensitivity":
        allocate_rates(qmodel, train.as_dataset(16, shuffle=True, seed=settings.seed))
    train_data = train.as_dataset(settings.batch_size, shuffle=True, seed=settings.seed)
    callbacks: list[keras.callbacks.Callback] = [QuantizationMetrics(log_dir=out / "logs")]
    if ecqx:
        callbacks.append(RelevanceCallback(train_data, settings.relevance))
    qmodel.fit(train_data, epochs=settings.epochs, callbacks=callbacks, verbose=0 if quiet else 2)
    accuracy = float(qmodel.evaluate(test.as_dataset(256), verbose=0)[1])
    qmodel.save(out / QAT_FILE)

    calibration = train.x[:200]
    _progress(quiet, "[2/4] exporting model_int8_sparse.tflite (LiteRT), verified in LiteRT")
    mobile = to_tflite(qmodel, out / "model_int8_sparse.tflite", calibration, verification_data=test.x[:500])
    budget = "" if settings.ram_budget is None else f" within {settings.ram_budget} B of arena"
    _progress(quiet, f"[3/4] exporting model_micro.tflite (TFLM{budget}), verified in the TFLM interpreter")
    micro = to_tflite(
        qmodel,
        out / "model_micro.tflite",
        calibration,
        "micro",
        verification_data=test.x[:500],
        ram_budget=settings.ram_budget,
    )
    _progress(quiet, "[4/4] bitstream, report.json, plots")
    save_bitstream(qmodel, out / "kernels.ecqx")
    stats = layer_stats(qmodel)
    plot_layer_stats(stats, out / "layers.png")
    largest = max(stats, key=lambda s: s.n_weights).name
    plot_code_histogram(qmodel, largest, out / f"codes_{largest}.png")
    return {
        "settings": asdict(settings),
        "float_accuracy": float_accuracy,
        "accuracy": accuracy,
        "layers": [s.as_dict() for s in stats],
        "exports": {result.path.name: _export_entry(result) for result in (mobile, micro)},
    }


def _export_entry(result: ExportResult) -> dict[str, Any]:
    """What report.json says about an exported file (for micro: its TFLM arena and each filter's encoding)."""
    entry = {"bytes": result.bytes, "argmax_agreement": result.argmax_agreement, "notes": result.notes}
    if result.target == "micro":
        entry |= {"arena_bytes": result.arena_bytes, "filters": [asdict(f) for f in result.filters]}
    return entry


def _printable(value: Any) -> Any:
    """Strings of a report with control characters (e.g. terminal escape sequences) escaped, recursively."""
    if isinstance(value, str):
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in value)
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    return value


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _report_problem(report: Any) -> str | None:
    """What makes `report` not a report of `tf-ecqx quantize`, or None."""
    if not isinstance(report, dict):
        return f"it holds a {type(report).__name__}, not an object"
    for key in ("model", "data"):
        if not isinstance(report.get(key), str):
            return f"{key!r} is missing or not a string"
    for key in ("float_accuracy", "accuracy"):
        if not _is_finite_number(report.get(key)) or not 0 <= report[key] <= 1:
            return f"{key!r} is missing or not an accuracy in [0, 1]"
    layers = report.get("layers")
    fields = {f.name for f in dataclasses.fields(LayerStats)}
    if not isinstance(layers, list) or not layers:
        return "'layers' is missing or empty"
    for layer in layers:
        if not isinstance(layer, dict) or set(layer) != fields or not isinstance(layer["name"], str):
            return f"a layer entry does not have exactly the fields {sorted(fields)}"
        if not all(_is_finite_number(layer[f]) for f in fields - {"name"}):
            return f"layer {layer['name']!r} has a value that is not a finite number"
    return None


def read_report(path: Path) -> dict[str, Any]:
    """The report.json of a `quantize` directory, checked, with its strings made safe to print."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); run `tf-ecqx quantize` again to write it.") from error
    problem = _report_problem(report)
    if problem:
        raise ValueError(f"{path} is not a report of `tf-ecqx quantize`: {problem}. Run `tf-ecqx quantize` again.")
    return _printable(report)


def report_text(target: str | os.PathLike) -> str:
    """The per-layer table (and, for an output directory of `quantize`, accuracies and file sizes) as text."""
    target = Path(target)
    if target.is_dir():
        report_path = target / REPORT_FILE
        if not report_path.is_file():
            raise FileNotFoundError(f"{target} has no {REPORT_FILE}: pass an output directory of `tf-ecqx quantize`.")
        report = read_report(report_path)
        stats = [LayerStats(**layer) for layer in report["layers"]]
        head = (
            f"{report['model']} on {report['data']}: float accuracy {report['float_accuracy']:.4f}, quantized "
            f"{report['accuracy']:.4f} ({100 * (report['accuracy'] - report['float_accuracy']):+.2f} pp)"
        )
        present = [name for name in ARTIFACTS if (target / name).exists()]
        return "\n\n".join([head, format_layer_table(stats), _file_sizes_of(target, present)])
    stats = layer_stats(load_model_file(target))
    if not stats:
        raise ValueError(f"{target} holds no tf_ecqx-quantized layer; pass a QAT model or a `quantize` directory.")
    return _printable(format_layer_table(stats))


def _file_sizes_of(directory: Path, names: list[str]) -> str:
    width = max((len(name) for name in names), default=4)
    lines = [f"{'file':<{width}}  {'bytes':>9}  what", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {(directory / name).stat().st_size:>9}  {ARTIFACTS[name]}" for name in names]
    return "\n".join(lines)


def explain(model_path: str | os.PathLike, data: str, out: str | os.PathLike, samples: int = 16) -> Path:
    """Input-relevance heatmaps (LRP) of the first `samples` test images for a float or QAT `.keras` model."""
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1.")
    check_writable(out)
    _, test = datasets.load(data)
    model = load_model_file(model_path)
    datasets.check_fits(test, model.inputs[0].shape[1:], model.outputs[0].shape[-1], "test data")
    return plot_relevance(model, test.x[:samples], out, y=np.asarray(test.y[:samples], np.int32))
