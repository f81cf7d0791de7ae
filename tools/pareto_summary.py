"""The verdicts of issue 5, computed from bench_pareto's results: ECQx vs ECQ fronts, ours vs tfmot, ratio vs float32.

    python tools/pareto_summary.py [benchmarks/results/full ...] [--loss-pp 0.5] [--table] [--plot benchmarks/results]

Reads every pareto_<model>.json in the given folders (points of one model from several runs are merged; they must
share the fine-tuning budget and ECQx settings; a point repeated with other seeds is averaged). A front is the
Pareto-optimal points, linear in log size between them; fronts are compared at every measured size where both exist.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from bench_pareto import ECQxAblation, Point, plot, print_header, print_point  # noqa: E402  (tools/ is on the path when this runs as a script)

from tf_ecqx.datasets import fashion_mnist  # noqa: E402
from tf_ecqx.models import trained_float_model  # noqa: E402

_REFERENCE = ECQxAblation()
# runs are merged only if these agree; results written before the ECQx options existed used the reference values
COMPARABLE = {
    "steps": None,
    "relevance": _REFERENCE.relevance,
    "p": _REFERENCE.p,
    "momentum": _REFERENCE.momentum,
    "relevance_every": _REFERENCE.every_n_steps,
}
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "full"


def front(points: list[dict], size: int) -> float | None:
    """Accuracy of the Pareto front of `points` at `size` bytes: linear in log size between front points, flat
    beyond the largest, None below the smallest."""
    pareto: list[dict] = []
    for p in sorted(points, key=lambda p: (p["bitstream"], -p["accuracy"])):
        if not pareto or p["accuracy"] > pareto[-1]["accuracy"]:
            pareto.append(p)
    if not pareto or size < pareto[0]["bitstream"]:
        return None
    for left, right in zip(pareto, pareto[1:]):
        if size < right["bitstream"]:
            share = math.log(size / left["bitstream"]) / math.log(right["bitstream"] / left["bitstream"])
            return left["accuracy"] + share * (right["accuracy"] - left["accuracy"])
    return pareto[-1]["accuracy"]


def front_difference(ecqx: list[dict], ecq: list[dict]) -> str:
    """min and max of ECQx's front minus ECQ's front (pp) over the sizes where both are defined."""
    differences = []
    for size in sorted({p["bitstream"] for p in ecqx + ecq}):
        a, b = front(ecqx, size), front(ecq, size)
        if a is not None and b is not None:
            differences.append((100 * (a - b), size))
    if not differences:
        return "no common size range"
    low, high = min(differences), max(differences)
    return f"min {low[0]:+.2f} pp (at {low[1]:,} B), max {high[0]:+.2f} pp (at {high[1]:,} B)"


def load(folders: list[Path]) -> dict[str, dict]:
    """model -> {"float_accuracy", "budget", "points"} merged over the folders."""
    models: dict[str, dict] = {}
    for folder in folders:
        files = sorted(folder.glob("pareto_*.json"))
        if not files:
            raise SystemExit(f"{folder} holds no pareto_<model>.json; run tools/bench_pareto.py --out {folder} first.")
        for file in files:
            document = json.loads(file.read_text())
            budget = {key: document["settings"].get(key, default) for key, default in COMPARABLE.items()}
            entry = models.setdefault(
                document["model"],
                {"float_accuracy": document["float_accuracy"], "budget": budget, "points": []},
            )
            if entry["budget"] != budget:
                raise SystemExit(f"{file}: settings {budget} differ from the other runs' {entry['budget']}.")
            entry["points"].extend(document["points"])
    return models


def float32_tflite_bytes(name: str) -> int:
    model = trained_float_model(name, fashion_mnist()[0], verbose=0)
    return len(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def averaged(points: list[dict]) -> list[dict]:
    """One point per (method, bits, λ): repeats (other seeds) are averaged, and their spread printed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in points:
        groups[(p["method"], p["bits"], p["lambda_"])].append(p)
    result = []
    for (method, bits, lam), repeats in groups.items():
        if len(repeats) == 1:
            result.extend(repeats)
            continue
        accuracies = [p["accuracy"] for p in repeats]
        mean = {key: sum(p[key] for p in repeats) / len(repeats) for key in ("accuracy", "sparsity")}
        mean |= {key: round(sum(p[key] for p in repeats) / len(repeats)) for key in ("bitstream", "sparse_tflite_gz")}
        print(
            f"- {method} {bits} bit λ {lam:g}, {len(repeats)} seeds: accuracy mean {mean['accuracy']:.4f} "
            f"(min {min(accuracies):.4f}, max {max(accuracies):.4f}), sparsity {mean['sparsity']:.1%}, "
            f"bitstream {mean['bitstream']:,} B (min {min(p['bitstream'] for p in repeats):,}, "
            f"max {max(p['bitstream'] for p in repeats):,})"
        )
        result.append({**repeats[0], **mean})
    return result


def summarize(name: str, entry: dict, loss_pp: float) -> None:
    print(f"\n## {name}: float accuracy {entry['float_accuracy']:.4f}, {entry['budget']['steps']} steps per stage")
    points, floor = averaged(entry["points"]), entry["float_accuracy"] - loss_pp / 100
    ours = defaultdict(list)
    for p in points:
        if p["bitstream"] is not None:
            ours[p["method"]].append(p)
    print("ECQx front minus ECQ front:")
    for bits in sorted({p["bits"] for p in ours["ECQx"]}):
        same = [[p for p in ours[m] if p["bits"] == bits] for m in ("ECQx", "ECQ")]
        print(f"- {bits} bit: {front_difference(*same)}")
    print(f"- all bit widths: {front_difference(ours['ECQx'], ours['ECQ'])}")

    kept = [p for p in ours["ECQ"] + ours["ECQx"] if p["accuracy"] >= floor]
    float_bytes = float32_tflite_bytes(name)
    print(f"Within {loss_pp} pp of float (accuracy >= {floor:.4f}); float32 .tflite {float_bytes:,} B:")
    if kept:
        best = min(kept, key=lambda p: p["bitstream"])
        print(
            f"- smallest of ours: {best['method']} {best['bits']} bit λ {best['lambda_']:g}, accuracy "
            f"{best['accuracy']:.4f}, bitstream {best['bitstream']:,} B = {float_bytes / best['bitstream']:.1f}x "
            "smaller than the float32 .tflite"
        )
    else:
        print("- none of ours")
    tfmot = [p for p in points if p["bitstream"] is None and p["accuracy"] >= floor]
    if not tfmot:
        print("- no tfmot pipeline")
        return
    best_tfmot = min(tfmot, key=lambda p: p["sparse_tflite_gz"])
    print(
        f"- smallest tfmot: {best_tfmot['method']}, accuracy {best_tfmot['accuracy']:.4f}, gzip'd sparse .tflite "
        f"{best_tfmot['sparse_tflite_gz']:,} B"
    )
    as_good = [p for p in ours["ECQ"] + ours["ECQx"] if p["accuracy"] >= best_tfmot["accuracy"]]
    if as_good:
        match = min(as_good, key=lambda p: p["bitstream"])
        print(
            f"- smallest of ours at equal or better accuracy: {match['method']} {match['bits']} bit λ "
            f"{match['lambda_']:g}, {match['accuracy']:.4f}, {match['bitstream']:,} B = "
            f"{best_tfmot['sparse_tflite_gz'] / match['bitstream']:.1f}x smaller than that tfmot file"
        )
    else:
        print("- none of ours reaches that accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, default=[RESULTS])
    parser.add_argument("--loss-pp", type=float, default=0.5, help="accuracy loss vs float allowed (pp)")
    parser.add_argument("--table", action="store_true", help="also print every point, sorted")
    parser.add_argument("--plot", type=Path, help="folder for pareto_<model>.png of the merged points")
    args = parser.parse_args()
    if args.plot is not None:
        args.plot.mkdir(parents=True, exist_ok=True)
    for name, entry in load(args.folders).items():
        summarize(name, entry, args.loss_pp)
        if args.table:
            order = {"ECQ": 1, "ECQx": 2}
            rows = sorted(entry["points"], key=lambda p: (order.get(p["method"], 0), p["bits"], p["lambda_"] or 0))
            print_header()
            for row in rows:
                print_point(Point(**row))
        if args.plot is not None:
            points = [Point(**row) for row in entry["points"]]
            plot(points, name, entry["float_accuracy"], args.plot / f"pareto_{name}.png")
            print(f"plot: {args.plot / f'pareto_{name}.png'}")


if __name__ == "__main__":
    main()
