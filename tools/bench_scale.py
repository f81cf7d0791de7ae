"""Cost at scale (issue 15): per model, quantize_model seconds beside tfmot's, float / ECQ / ECQx train-step time,
export seconds per target and peak RSS, as one markdown table with a verdict per target.

    python tools/bench_scale.py [--models demo_cnn mlp MobileNetV2 ResNet50] [--steps 20] [--repeats 3]
        [--batch-size 32] [--export mobile micro | --export none] [--export-full-size]

Each model runs in a subprocess of its own (the script calls itself with --one MODEL, which prints one JSON line), so
that its peak RSS (getrusage) and its TensorFlow state are its own. demo_cnn and mlp are tf_ecqx.models' Fashion-MNIST
nets; any other name is a keras.applications model (MobileNetV2 or mobilenet_v2) through models.application_model:
32x32x3 input, 10 classes, random weights, smallest width (MobileNetV2 alpha 0.35). Everything starts from random
weights, and the timings run on one random batch. quantize_model: tfmot's and ours (ECQ, 4 bit), interleaved, fastest
of --repeats. Steps: float, ECQ and ECQx (relevance every step / every 10 steps, its RelevanceCallback included),
--repeats interleaved rounds of --steps steps after a warm-up round (bench_overhead.step_seconds); a variant's ratio is
its fastest round against the fastest float round. Export: the ECQ model, fitted 8 more steps on Fashion-MNIST images
(padded to 32x32x3 for keras.applications), then to_tflite per target with 64 representative and 64 verification
images. --export-full-size adds a row that only quantizes and exports MobileNetV2 alpha 1.0 at 224x224x3 (images
resized). Targets (issue 15): quantize_model <= 1.5x tfmot's; ECQ step <= 1.3x and ECQx step (relevance every step)
<= 2x the float step; export of the full-size MobileNetV2 <= 2 minutes per target. Run it on an otherwise idle machine.

    python tools/bench_scale.py --profile [--models ResNet50] [--steps 5]

prints where the time goes instead, per model: cProfile of quantize_model (ours and tfmot's) and the TensorFlow
profiler's op time per train step of float, ECQ and ECQx (relevance every step), split into the train step, the
relevance refresh and, in either, the ECQ/ECQx assignment.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from bench_overhead import Timed, ecqx_timed, step_seconds  # noqa: E402  (tools/ is on sys.path when run as a script)
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import fashion_mnist  # noqa: E402
from tf_ecqx.models import ARCHITECTURES, application_model, compile_for_classification, rgb32  # noqa: E402

FULL_SIZE = "MobileNetV2 alpha 1.0 224x224"
EXPORT_IMAGES = 64  # representative and verification images per export
FIT_IMAGES = 256  # Fashion-MNIST images the exported model is fitted on (8 steps at batch 32)
STEPS = ("float", "ECQ", "ECQx every step", "ECQx every 10")
CALL_OPS = ("PartitionedCall", "While", "If")  # op types whose time is that of the ops they call
# One run of an XLA-compiled assignment (quantizers.compiled_assignment): the XLA ops inside carry no op type
XLA_RUN = "CpuExecutable::ExecuteAsyncOnStream"
PROFILE_LINES = 12
TARGETS = {"quantize": 1.5, "ECQ": 1.3, "ECQx every step": 2.0, "export": 120.0}


def application_name(name: str) -> str:
    """The keras.applications constructor `name` means, ignoring case and underscores (mobilenet_v2: MobileNetV2)."""
    known = {n.lower(): n for n in dir(keras.applications) if n[:1].isupper()}
    found = known.get(name.replace("_", "").lower())
    if found is None:
        raise SystemExit(f"{name!r} is neither {' nor '.join(ARCHITECTURES)} nor a keras.applications model")
    return found


def build(name: str) -> tuple[keras.Model, Callable[[np.ndarray], np.ndarray]]:
    """The float model `name` from random weights, and how Fashion-MNIST images become its inputs."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name](), lambda images: images
    if name == FULL_SIZE:
        model = application_model("MobileNetV2", size=224, alpha=1.0)
        return model, lambda images: tf.image.resize(rgb32(images), (224, 224)).numpy()
    return application_model(application_name(name)), rgb32


def timed_call(function: Callable[[], keras.Model], seconds: list[float]) -> keras.Model:
    """Call `function`, appending its seconds to `seconds`."""
    start = time.perf_counter()
    result = function()
    seconds.append(time.perf_counter() - start)
    return result


def one(name: str, args: argparse.Namespace) -> dict:
    """Every measurement of one model, in this process."""
    keras.utils.set_random_seed(0)
    model, inputs = build(name)
    result: dict = {"model": name, "params": model.count_params()}
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.repeats):
        timed_call(lambda: tfmot.quantization.keras.quantize_model(model), theirs)
        qmodel = timed_call(lambda: tf_ecqx.quantize_model(model, bits=4, lambda_=0.2), ours)
    result["quantize"], result["tfmot quantize"] = min(ours), min(theirs)
    qmodel = compile_for_classification(qmodel)

    if name != FULL_SIZE:
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (args.batch_size, *model.input_shape[1:])).astype(np.float32)
        y = rng.integers(0, 10, args.batch_size)
        timed = {
            "float": Timed(compile_for_classification(keras.models.clone_model(model))),
            "ECQ": Timed(qmodel),
            "ECQx every step": ecqx_timed(model, x, y, 1),
            "ECQx every 10": ecqx_timed(model, x, y, 10),
        }
        times = step_seconds(timed, x, y, args.steps, args.repeats)
        result.update({label: min(times[label]) for label in STEPS})

    if args.export:
        train, test = fashion_mnist()
        x_fit, x_test = inputs(train.x[:FIT_IMAGES]), inputs(test.x[:EXPORT_IMAGES])
        qmodel.fit(x_fit, train.y[:FIT_IMAGES], batch_size=32, epochs=1, verbose=0)
        for target in args.export:
            start = time.perf_counter()
            try:
                tf_ecqx.export.to_tflite(
                    qmodel,
                    os.path.join(args.out, f"{name.replace(' ', '_')}_{target}.tflite"),
                    x_fit[:EXPORT_IMAGES],
                    target=target,
                    verification_data=x_test,
                )
                result[f"export {target}"] = time.perf_counter() - start
            except Exception as error:  # noqa: BLE001  (a refused export is a result of the table, not a crash)
                result[f"export {target}"] = f"failed after {time.perf_counter() - start:.0f} s: {type(error).__name__}"
                print(f"{name} {target}: {error}", file=sys.stderr)
    result["peak RSS MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def op_milliseconds(timed: Timed, x: np.ndarray, y: np.ndarray, steps: int) -> tuple[float, dict[tuple, float]]:
    """Wall ms per train step of a model step_seconds has warmed up (under the profiler), and the TensorFlow
    profiler's op time per step (summed over threads, so it may exceed the wall time) by (part, op type). Parts: the
    train step, the relevance refresh (RelevanceCallback's compiled LRP pass and the mixing of its results), in
    either of them the ECQ/ECQx assignment (the XLA-compiled function every quantized kernel calls, one entry "XLA"),
    and other (eager ops, the input pipeline)."""
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        wall = min(step_seconds({"profiled": timed}, x, y, steps, 1)["profiled"])
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).glob("plugins/profile/*/*.xplane.pb")).read_bytes())
    events = []  # (start ps, end ps, name)
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                start = line.timestamp_ns * 1000 + event.offset_ps
                events.append((start, start + event.duration_ps, plane.event_metadata[event.metadata_id].name))
    calls = sorted((a, b, n.split(": ", 1)[1]) for a, b, n in events if n.startswith("EagerLocalExecute: "))
    totals: dict[tuple, float] = collections.defaultdict(float)
    for start, end, name in events:
        if name != XLA_RUN and (":" not in name or "::" in name or " " in name or name.endswith(CALL_OPS)):
            continue  # not an op kernel
        call = next((c for a, b, c in reversed(calls) if a <= start < b), "")
        part = "train step" if "train_function" in call else "relevance refresh" if "<lambda>" in call else "other"
        key = (f"{part}, assignment", "XLA") if name == XLA_RUN else (part, name.rsplit(":", 1)[1])
        totals[key] += (end - start) / 1e9 / (2 * steps)  # warm-up round + 1 round
    return 1e3 * wall, dict(sorted(totals.items(), key=lambda item: -item[1]))


def profile(name: str, args: argparse.Namespace) -> None:
    """Where the time of `name` goes: cProfile of quantize_model (ours, tfmot's) and the op time of each step."""
    keras.utils.set_random_seed(0)
    model, _ = build(name)
    for label, quantize in (
        ("tf_ecqx ECQ", lambda: tf_ecqx.quantize_model(model, bits=4, lambda_=0.2)),
        ("tfmot", lambda: tfmot.quantization.keras.quantize_model(model)),
    ):
        quantize()  # the first call of either pays for the imports and caches that both share
        profiler = cProfile.Profile()
        profiler.runcall(quantize)
        print(f"\n### quantize_model, {label}: cProfile, cumulative seconds in tf_ecqx and in Keras model cloning")
        stats = pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative")
        stats.print_stats(r"tf_ecqx/|\(clone_model\)|\(quantize_apply\)|\(quantize_model\)", PROFILE_LINES)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, *model.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, 10, args.batch_size)
    timed = {
        "float": Timed(compile_for_classification(keras.models.clone_model(model))),
        "ECQ": Timed(compile_for_classification(tf_ecqx.quantize_model(model, bits=4, lambda_=0.2))),
        "ECQx (relevance every step)": ecqx_timed(model, x, y, 1),
    }
    step_seconds(timed, x, y, args.steps, 1)  # traced and warm
    for label, variant in timed.items():
        wall, totals = op_milliseconds(variant, x, y, args.steps)
        total = sum(totals.values())
        parts: dict[str, float] = collections.defaultdict(float)
        for (part, _), milliseconds in totals.items():
            parts[part] += milliseconds
        shares = ", ".join(f"{part} {ms:.1f} ms ({ms / total:.0%})" for part, ms in parts.items() if ms >= 0.05)
        print(f"\n### {label} step: {wall:.1f} ms wall under the profiler; op time {total:.1f} ms: {shares}; largest:")
        for (part, op), milliseconds in list(totals.items())[:PROFILE_LINES]:
            print(f"- {part}: {op} {milliseconds:.1f} ms ({milliseconds / total:.0%})")


def seconds(value: float | str | None) -> str:
    return "–" if value is None else value if isinstance(value, str) else f"{value:.1f} s"


def step(row: dict, label: str) -> str:
    if label not in row:
        return "–"
    if label == "float":
        return f"{1e3 * row[label]:.1f} ms"
    return f"{1e3 * row[label]:.1f} ms ({row[label] / row['float']:.2f}×)"


def table_row(row: dict, targets: list[str]) -> str:
    cells = [
        row["model"],
        f"{row['params']:,}",
        f"{row['quantize']:.2f} s ({row['quantize'] / row['tfmot quantize']:.2f}×)",
        f"{row['tfmot quantize']:.2f} s",
        *(step(row, label) for label in STEPS),
        *(seconds(row.get(f"export {target}")) for target in targets),
        f"{row['peak RSS MB']:,.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def verdicts(rows: list[dict], targets: list[str]) -> list[str]:
    """One line per target: each model's value and whether it is met."""

    def verdict(row: dict, value: float | str, limit: float, unit: str) -> str:
        if isinstance(value, str):
            return f"{row['model']} not met ({value})"
        return f"{row['model']} {'met' if value <= limit else 'NOT met'} ({value:.2f}{unit})"

    lines = []
    checks = [
        ("quantize_model ≤ 1.5× tfmot's", lambda r: r["quantize"] / r["tfmot quantize"], TARGETS["quantize"], "×"),
        ("ECQ step ≤ 1.3× float", lambda r: r["ECQ"] / r["float"], TARGETS["ECQ"], "×"),
        (
            "ECQx step (relevance every step) ≤ 2× float",
            lambda r: r["ECQx every step"] / r["float"],
            TARGETS["ECQx every step"],
            "×",
        ),
    ]
    for title, value, limit, unit in checks:
        judged = [verdict(r, value(r), limit, unit) for r in rows if "float" in r or title.startswith("quantize")]
        lines.append(f"- {title}: " + ", ".join(judged))
    full = [r for r in rows if r["model"] == FULL_SIZE]
    for target in targets if full else []:
        value = full[0].get(f"export {target}")
        lines.append(f"- {FULL_SIZE} export {target} ≤ 2 min: {verdict(full[0], value, TARGETS['export'], ' s')}")
    return lines


def run_one(name: str, args: argparse.Namespace) -> dict:
    """`one(name)` in a fresh Python process."""
    command = [sys.executable, os.path.abspath(__file__), "--one", name, "--steps", str(args.steps)]
    command += ["--repeats", str(args.repeats), "--batch-size", str(args.batch_size), "--out", args.out]
    command += ["--export", *(args.export or ["none"])]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="*",
        default=["demo_cnn", "mlp", "MobileNetV2", "ResNet50"],
        help="demo_cnn, mlp or keras.applications names; none with --export-full-size: that row alone",
    )
    parser.add_argument("--steps", type=int, default=20, help="train steps per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (quantize_model: calls) per variant")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--export", nargs="+", default=["mobile", "micro"], choices=["mobile", "micro", "none"])
    parser.add_argument("--export-full-size", action="store_true", help=f"add a row: {FULL_SIZE}, export only")
    parser.add_argument("--out", default=None, help="folder for the exported files (default: a temporary one)")
    parser.add_argument("--profile", action="store_true", help="print where the time goes instead of the table")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--profile-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.export = [target for target in args.export if target != "none"]
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    if args.profile_one:
        profile(args.profile_one, args)
        return
    if args.profile:
        for name in args.models:
            print(f"## {name} (batch {args.batch_size}, {args.steps} steps)", flush=True)
            command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--profile-one", name]
            subprocess.run(command, check=True)
        return
    for name in args.models:
        if name not in ARCHITECTURES:
            application_name(name)
    start = time.perf_counter()
    with out_dir(args) as args.out:
        print(
            f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}, CPU only; load average at start "
            f"{os.getloadavg()[0]:.2f}; batch {args.batch_size}, {args.repeats} rounds of {args.steps} steps\n"
        )
        header = ["model", "params", "quantize_model (× tfmot's)", "tfmot quantize_model", "float step"]
        header += ["ECQ step", "ECQx step, relevance every step", "ECQx step, every 10"]
        header += [f"export {target}" for target in args.export] + ["peak RSS MB"]
        print("| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1), flush=True)
        rows = []
        for name in [*args.models, *([FULL_SIZE] if args.export_full_size else [])]:
            rows.append(run_one(name, args))
            print(table_row(rows[-1], args.export), flush=True)
    print(f"\nwall time {time.perf_counter() - start:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    print("\n".join(verdicts(rows, args.export)))


def out_dir(args: argparse.Namespace) -> contextlib.AbstractContextManager[str]:
    """The --out folder, or a temporary one removed at the end."""
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        return contextlib.nullcontext(args.out)
    return tempfile.TemporaryDirectory()


if __name__ == "__main__":
    main()
