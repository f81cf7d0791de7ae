"""Accuracy vs size on Fashion-MNIST: ECQ and ECQx fronts at 2-5 bit against tfmot's int8 pipelines.

    python tools/bench_pareto.py [--quick] [--models mlp demo_cnn] [--bits 2 3 4 5] [--lambdas ...] [--methods ...]

Every point starts from the same cached float model and gets the same fine-tuning budget per training stage (Adam
lr 1e-3, batch 64, `--steps` steps on the shuffled 60k training images; the multi-stage tfmot pipelines get that
budget for each stage). Accuracy is that of the exported `.tflite` run in LiteRT on the 10k test images (tfmot's files
are run dense: LiteRT's default XNNPACK delegate cannot prepare their int8 DENSIFY weights; the math is the same).
Sizes: our bitstream, gzip -9 of the sparse int8 `.tflite`, the micro (TFLM) flatbuffer, and the zeroth-order entropy of
the int8 kernel values. Results: benchmarks/results/full/pareto_<model>.{csv,json,png} (--quick: results/quick/),
rewritten after every point.
--quick: demo CNN and MLP at 4 bit, two lambdas each for ECQ/ECQx, tfmot PTQ and QAT, 300 steps (about 10 minutes).
Ablations of ECQx: --methods ECQx with --relevance, --p, --momentum, --relevance-every (written to the JSON settings).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import Split, fashion_mnist  # noqa: E402
from tf_ecqx.export import flatbuffer  # noqa: E402
from tf_ecqx.export.conversion import convert_int8  # noqa: E402
from tf_ecqx.export.runtimes import run_litert  # noqa: E402
from tf_ecqx.models import compile_for_classification, trained_float_model  # noqa: E402
from tf_ecqx.report import code_entropy, model_totals  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
CALIBRATION = 200
FULL = {"bits": [2, 3, 4, 5], "lambdas": [0.03, 0.1, 0.2, 0.4], "prune": [0.8, 0.9], "steps": 938}
QUICK = {"bits": [4], "lambdas": [0.1, 0.3], "prune": [], "steps": 300}


@dataclasses.dataclass
class Point:
    model: str
    method: str  # ECQ, ECQx, or a tfmot pipeline
    bits: int
    lambda_: float | None
    accuracy: float  # of the .tflite in LiteRT on the test images
    sparsity: float  # zero int8 kernel values
    bitstream: int | None
    sparse_tflite_gz: int
    micro: int | None
    entropy_bound: int  # bytes, sum over int8 kernels of N * H / 8
    seconds: float


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def litert_accuracy(data: bytes, test: Split) -> float:
    return float(np.mean(run_litert(data, test.x)[1].argmax(1) == test.y))


def kernel_statistics(dense: bytes) -> tuple[float, int]:
    """Sparsity and zeroth-order entropy (bytes) of the int8 filters of a dense .tflite."""
    kernels = [t.values for t in flatbuffer.weight_tensors(flatbuffer.load(dense)) if t.values is not None]
    total = sum(k.size for k in kernels)
    zeros = sum(int(np.sum(k == 0)) for k in kernels)
    bound = sum(k.size * code_entropy(k) / 8 for k in kernels)
    return zeros / total, int(np.ceil(bound))


def fit(model: keras.Model, train: Split, steps: int, callbacks: list | None = None) -> keras.Model:
    compile_for_classification(model)
    data = train.as_dataset(64, shuffle=True).repeat()
    model.fit(data, steps_per_epoch=steps, epochs=1, callbacks=callbacks or [], verbose=0)
    return model


@dataclasses.dataclass(frozen=True)
class ECQxAblation:
    """What ECQx's relevances come from and how they are used (the ablation knobs; defaults = the reference)."""

    relevance: str = "epsilon_plus_flat_bn_pass"
    p: float = 0.1
    momentum: float = 0.1
    every_n_steps: int = 1


def ours(
    name: str,
    model: keras.Model,
    bits: int,
    lam: float,
    ecqx: ECQxAblation | None,
    train: Split,
    test: Split,
    steps: int,
) -> Point:
    """ECQ (ecqx None) or ECQx fine-tuning from the float model, exported and measured."""
    start = time.perf_counter()
    callbacks = []
    if ecqx is None:
        qmodel = tf_ecqx.quantize_model(model, bits=bits, lambda_=lam)
    else:
        qmodel = tf_ecqx.quantize_model(model, bits=bits, lambda_=lam, ecqx=True, p=ecqx.p)
        data = train.as_dataset(64, shuffle=True)
        callbacks.append(tf_ecqx.RelevanceCallback(data, ecqx.relevance, ecqx.every_n_steps, ecqx.momentum))
    fit(qmodel, train, steps, callbacks)
    calibration = train.x[:CALIBRATION]
    with tempfile.TemporaryDirectory() as directory:
        sparse = tf_ecqx.export.to_tflite(qmodel, Path(directory) / "s.tflite", calibration).path.read_bytes()
        micro = tf_ecqx.export.to_tflite(qmodel, Path(directory) / "m.tflite", calibration, target="micro").bytes
    totals = model_totals(tf_ecqx.layer_stats(qmodel))
    return Point(
        name,
        "ECQ" if ecqx is None else "ECQx",
        bits,
        lam,
        litert_accuracy(sparse, test),
        totals.sparsity,
        len(tf_ecqx.export.encode(qmodel)),
        gz(sparse),
        micro,
        int(np.ceil(totals.entropy_bytes)),
        time.perf_counter() - start,
    )


def fresh_copy(model: keras.Model) -> keras.Model:
    """A copy with its own variables: tfmot's wrappers may wrap (and then train) the layers they are given."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _pruned(model: keras.Model, sparsity: float, train: Split, steps: int) -> keras.Model:
    schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=max(steps // 10, 1))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(fresh_copy(model), pruning_schedule=schedule)
    fit(pruned, train, steps, [tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(pruned)


def _preserving_qat(model: keras.Model, scheme: object, train: Split, steps: int) -> keras.Model:
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    return fit(tfmot.quantization.keras.quantize_apply(annotated, scheme), train, steps)


def tfmot_pipelines(sparsities: list[float]) -> dict[str, Callable[[keras.Model, Split, int], keras.Model]]:
    """name -> (float model, train, steps) -> the Keras model tfmot's converter turns into int8."""
    experimental = tfmot.experimental.combine
    clustering = tfmot.clustering.keras

    def ptq(model: keras.Model, train: Split, steps: int) -> keras.Model:
        return model

    def qat(model: keras.Model, train: Split, steps: int) -> keras.Model:
        return fit(tfmot.quantization.keras.quantize_model(fresh_copy(model)), train, steps)

    def prune_pqat(sparsity: float) -> Callable:
        def run(model: keras.Model, train: Split, steps: int) -> keras.Model:
            scheme = experimental.Default8BitPrunePreserveQuantizeScheme()
            return _preserving_qat(_pruned(model, sparsity, train, steps), scheme, train, steps)

        return run

    def prune_cluster_pcqat(sparsity: float) -> Callable:
        def run(model: keras.Model, train: Split, steps: int) -> keras.Model:
            pruned = _pruned(model, sparsity, train, steps)
            clustered = clustering.cluster_weights(
                pruned,
                number_of_clusters=16,
                # not KMEANS_PLUS_PLUS: it fails on a 90 %-pruned layer with fewer nonzero weights than clusters
                # (the CNN's conv1: 144 weights, 14 left)
                cluster_centroids_init=clustering.CentroidInitialization.LINEAR,
                preserve_sparsity=True,
            )
            clustered = clustering.strip_clustering(fit(clustered, train, steps))
            scheme = experimental.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
            return _preserving_qat(clustered, scheme, train, steps)

        return run

    pipelines = {"tfmot PTQ int8": ptq, "tfmot QAT int8": qat}
    for s in sparsities:
        pipelines[f"tfmot prune {s:.0%} + PQAT"] = prune_pqat(s)
        pipelines[f"tfmot prune {s:.0%} + 16 clusters + PCQAT"] = prune_cluster_pcqat(s)
    return pipelines


def baseline(name: str, model: keras.Model, method: str, pipeline: Callable, train: Split, test: Split, steps: int):
    start = time.perf_counter()
    converted = pipeline(model, train, steps)
    calibration = train.x[:CALIBRATION]
    dense = convert_int8(converted, calibration, sparse=False)
    sparse = convert_int8(converted, calibration, sparse=True)
    sparsity, bound = kernel_statistics(dense)
    accuracy = litert_accuracy(dense, test)
    return Point(name, method, 8, None, accuracy, sparsity, None, gz(sparse), None, bound, time.perf_counter() - start)


def plot(points: list[Point], model: str, float_accuracy: float, path: Path) -> None:
    figure = Figure(figsize=(8, 5.5))
    axes = figure.add_subplot()
    ours_points = [p for p in points if p.bitstream is not None]
    for method, marker in (("ECQ", "o"), ("ECQx", "^")):
        for bits in sorted({p.bits for p in ours_points}):
            front = sorted((p for p in ours_points if p.method == method and p.bits == bits), key=lambda p: p.bitstream)
            if front:
                xs, ys = [p.bitstream for p in front], [100 * p.accuracy for p in front]
                axes.plot(xs, ys, marker=marker, linestyle="-" if method == "ECQx" else "--", label=f"{method} {bits}b")
    for p in points:
        if p.bitstream is None:
            axes.scatter(p.sparse_tflite_gz, 100 * p.accuracy, marker="s", label=f"{p.method} (gzip sparse .tflite)")
    axes.axhline(100 * float_accuracy, color="grey", linewidth=0.8, label="float")
    axes.set_xscale("log")
    axes.set_xlabel("bytes (ours: bitstream; tfmot: gzip -9 of the sparse int8 .tflite)")
    axes.set_ylabel(".tflite test accuracy in LiteRT (%)")
    axes.set_title(f"Fashion-MNIST, {model}: accuracy vs size")
    axes.grid(True, which="both", linewidth=0.3)
    axes.legend(fontsize=7, ncols=2)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def write(points: list[Point], model: str, float_accuracy: float, settings: dict, out: Path) -> None:
    """One model's results: pareto_<model>.{json,csv,png} (rewritten after every point, so a stopped run keeps them)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [dataclasses.asdict(p) for p in points]
    document = {"settings": settings, "model": model, "float_accuracy": float_accuracy, "points": rows}
    (out / f"pareto_{model}.json").write_text(json.dumps(document, indent=1))
    with (out / f"pareto_{model}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(Point)])
        writer.writeheader()
        writer.writerows(rows)
    plot(points, model, float_accuracy, out / f"pareto_{model}.png")


def print_header() -> None:
    columns = ["model", "method", "bits", "λ", ".tflite acc.", "sparsity", "bitstream", "sparse .tflite gz", "micro"]
    print("| " + " | ".join([*columns, "H bound", "s"]) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def print_point(p: Point) -> None:
    optional = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
    lam = "-" if p.lambda_ is None else f"{p.lambda_:g}"
    print(
        f"| {p.model} | {p.method} | {p.bits} | {lam} | {p.accuracy:.4f} | {p.sparsity:.1%} | {optional(p.bitstream)} "
        f"| {p.sparse_tflite_gz:,} | {optional(p.micro)} | {p.entropy_bound:,} | {p.seconds:.0f} |",
        flush=True,
    )


def run_model(name: str, args: argparse.Namespace, train: Split, test: Split, settings: dict) -> None:
    """tfmot's pipelines, then the ECQ/ECQx grid, for one model; results written after every point."""
    model = trained_float_model(name, train, verbose=0)
    float_accuracy = float(model.evaluate(test.as_dataset(512), verbose=0)[1])
    print(f"| {name} | float (Keras) | 32 | - | {float_accuracy:.4f} | | | | | | |")
    points: list[Point] = []

    def record(measure: Callable[[], Point]) -> None:
        keras.utils.set_random_seed(args.seed)
        point = measure()
        points.append(point)
        print_point(point)
        write(points, name, float_accuracy, settings, args.out)

    if "tfmot" in args.methods:
        for method, pipeline in tfmot_pipelines(args.prune).items():
            record(lambda m=method, p=pipeline: baseline(name, model, m, p, train, test, args.steps))
    ecqx = ECQxAblation(args.relevance, args.p, args.momentum, args.relevance_every)
    for method in ("ECQ", "ECQx"):
        if method in args.methods:
            for bits in args.bits:
                for lam in args.lambdas:
                    variant = ecqx if method == "ECQx" else None
                    record(lambda b=bits, lam=lam, v=variant: ours(name, model, b, lam, v, train, test, args.steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small grid that finishes in about 10 minutes")
    parser.add_argument("--models", nargs="+", default=["mlp", "demo_cnn"])
    parser.add_argument("--bits", nargs="+", type=int, help="default 2 3 4 5 (quick: 4)")
    parser.add_argument("--lambdas", nargs="+", type=float, help="default 0.03 0.1 0.2 0.4 (quick: 0.1 0.3)")
    parser.add_argument("--methods", nargs="+", choices=["tfmot", "ECQ", "ECQx"], default=["tfmot", "ECQ", "ECQx"])
    reference = ECQxAblation()
    parser.add_argument("--relevance", default=reference.relevance, help="ECQx relevance source (composite name)")
    parser.add_argument("--p", type=float, default=reference.p, help="ECQx: sparsity LRP may give back")
    parser.add_argument("--momentum", type=float, default=reference.momentum, help="ECQx relevance momentum")
    parser.add_argument("--relevance-every", type=int, default=reference.every_n_steps, help="ECQx refresh period")
    parser.add_argument("--prune", nargs="*", type=float, help="tfmot pruning sparsities (0.8 0.9; quick: none)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps per training stage (938 = 1 epoch; quick: 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed set before every point")
    parser.add_argument("--test-samples", type=int, default=10000)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/full (quick: benchmarks/results/quick)")
    args = parser.parse_args()
    defaults = QUICK if args.quick else FULL
    if args.out is None:
        args.out = RESULTS / ("quick" if args.quick else "full")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    train, test = fashion_mnist()
    test = Split(test.x[: args.test_samples], test.y[: args.test_samples])
    settings = {**{k: v for k, v in vars(args).items() if k != "out"}, "optimizer": "Adam lr 1e-3", "batch": 64}
    print(f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU only; settings: {settings}")
    print_header()
    for name in args.models:
        run_model(name, args, train, test, settings)
    print(f"results: {args.out}/pareto_<model>.csv, .json, .png")


if __name__ == "__main__":
    main()
