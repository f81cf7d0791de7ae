"""Issue 17's training levers side by side: fine-tuning runs per lever, lambda and seed from the cached float, with
the fronts compared at matched bytes.

    python tools/bench_levers.py [--model demo_cnn] [--baseline converged] [--bits 4] [--lambdas 0.2 ...]
                                 [--steps 938 ...] [--seeds 0 ...] [--runs NAME ...]

Each run starts from the same cached float model: trained to convergence (tf_ecqx.models.converged_float_model, early
stopping on 10 % of the training images) or, with `--baseline 3-epochs`, the 3-epoch one of bench_pareto.py. It
fine-tunes `--steps` steps (938 = one epoch of the 60k training images, batch 64, Adam 1e-3; several values: each run at
each length, lever e; other lengths than one epoch are part of the run names) and prints the Keras model's test accuracy
(10k images), the kernels' sparsity, the bitstream bytes (tf_ecqx.export.encode) and the whole file (bitstream + the
float32 biases/BatchNorm it omits). Levers: LambdaSchedule (a ramp over the first third of the steps), Distiller (T = 3,
alpha = 0.1, the Keras example's), ECQx's slack q (0.05 against the reference's 0), allocate_rates (per-layer lambda
from the loss's sensitivity, in place of the layer-size heuristic), a cosine decay of the learning rate to 0 over the
run (in place of a constant 1e-3; with lever e's lengths), and the last two together, with ECQ and with ECQx.

With several lambdas, each run and seed gives a front (whole-file bytes -> accuracy); the summary prints, per run, the
smallest whole file within 0.5 pp of the float and its accuracy difference to the first run's front (ECQ's, at the
first length) at matched bytes (linear in log bytes, where both fronts reach), each as the mean over seeds and the
range. The seconds column is each run's wall time, to compare lengths at equal time.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import Split, fashion_mnist  # noqa: E402
from tf_ecqx.models import compile_for_classification, converged_float_model, trained_float_model  # noqa: E402
from tf_ecqx.report import model_totals  # noqa: E402
from tf_ecqx.sizes import unquantized_parameter_bytes  # noqa: E402

BATCH = 64
ONE_EPOCH = 938  # steps of BATCH over the 60k training images
# run name -> levers: q (ECQx with that slack), ramp (LambdaSchedule), distill (Distiller), rates (allocate_rates),
# cosine (the learning rate decays from 1e-3 to 0 over the run, keras.optimizers.schedules.CosineDecay)
RUNS: dict[str, dict[str, float]] = {
    "ECQ": {},
    "ECQ + lambda ramp": {"ramp": 1},
    "ECQ + distillation": {"distill": 1},
    "ECQx q=0 (reference)": {"q": 0.0},
    "ECQx q=0.05": {"q": 0.05},
    "ECQ + rate allocation": {"rates": 1},
    "ECQ + cosine lr": {"cosine": 1},
    "ECQ + cosine + rates": {"cosine": 1, "rates": 1},
    "ECQx + cosine + rates": {"q": 0.0, "cosine": 1, "rates": 1},
    "ECQ + recipe + distill": {"cosine": 1, "rates": 1, "distill": 1},
}
WITHIN_PP = 0.5
NAME_WIDTH = 34  # "ECQ + rate allocation, 2814 steps"
# A row as Point.row prints it: run, lambda, seed, accuracy, sparsity %, bitstream, whole file, seconds.
ROW = re.compile(rf"^(.{{{NAME_WIDTH}}}) +(\d+\.\d+) +(\d+) +(\d\.\d+) +([\d.]+)% +(\d+) +(\d+) +(\d+)$")


@dataclass(frozen=True)
class Point:
    name: str
    lambda_: float
    seed: int
    accuracy: float
    sparsity: float
    bitstream: int
    whole_file: int
    seconds: float

    def row(self) -> str:
        return (
            f"{self.name:<{NAME_WIDTH}} {self.lambda_:6.3f} {self.seed:4d} {self.accuracy:8.4f} {self.sparsity:9.1%} "
            f"{self.bitstream:10d} {self.whole_file:10d} {self.seconds:6.0f}"
        )


def run(
    name: str,
    float_model: keras.Model,
    train: Split,
    test: Split,
    steps: int,
    bits: int,
    lambda_: float,
    seed: int,
    **lever: float,
) -> Point:
    """One fine-tuning run with the levers named in `lever` (q, ramp, distill, rates, cosine)."""
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    ecqx = "q" in lever
    qmodel = tf_ecqx.quantize_model(float_model, bits=bits, lambda_=lambda_, ecqx=ecqx, q=lever.get("q", 0.0))
    data = train.as_dataset(BATCH, shuffle=True, seed=seed)
    callbacks: list[keras.callbacks.Callback] = []
    if ecqx:
        callbacks.append(tf_ecqx.RelevanceCallback(data))
    if lever.get("ramp"):
        callbacks.append(tf_ecqx.LambdaSchedule(ramp_steps=steps // 3))
    if lever.get("rates"):
        tf_ecqx.allocate_rates(compile_for_classification(qmodel), train.as_dataset(16, shuffle=True, seed=seed))
    trained = tf_ecqx.Distiller(qmodel, float_model) if lever.get("distill") else qmodel
    compile_for_classification(
        trained, keras.optimizers.schedules.CosineDecay(1e-3, steps) if lever.get("cosine") else 1e-3
    )
    trained.fit(data.repeat(), steps_per_epoch=steps, epochs=1, callbacks=callbacks, verbose=0)
    accuracy = compile_for_classification(qmodel).evaluate(test.x, test.y, verbose=0)[1]
    sparsity = model_totals(tf_ecqx.layer_stats(qmodel)).sparsity
    bitstream = len(tf_ecqx.export.encode(qmodel))
    whole = bitstream + unquantized_parameter_bytes(qmodel, tf_ecqx.strip(qmodel))
    return Point(name, lambda_, seed, accuracy, sparsity, bitstream, whole, time.perf_counter() - start)


def accuracy_at(front: list[Point], size: float) -> float | None:
    """The front's accuracy at `size` bytes, linear in log bytes between its points (None outside them)."""
    points = sorted(front, key=lambda p: p.whole_file)
    sizes = np.log([p.whole_file for p in points])
    if not sizes[0] <= np.log(size) <= sizes[-1]:
        return None
    return float(np.interp(np.log(size), sizes, [p.accuracy for p in points]))


def summary(points: list[Point], float_accuracy: float, seeds: list[int]) -> list[str]:
    """Per run: smallest whole file within WITHIN_PP of the float, and the accuracy difference to the first run's
    front at matched bytes, as mean [min, max] over seeds."""

    def spread(values: list[float], fmt: str) -> str:
        if not values:
            return "none"
        return f"{np.mean(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"

    reference = points[0].name
    lines = [f"{'run':<{NAME_WIDTH}} {'smallest within 0.5 pp (B)':>30} {f'vs {reference} front (pp)':>36}"]
    for name in dict.fromkeys(p.name for p in points):
        smallest, differences = [], []
        for seed in seeds:
            front = [p for p in points if p.name == name and p.seed == seed]
            within = [p.whole_file for p in front if p.accuracy >= float_accuracy - WITHIN_PP / 100]
            if within:
                smallest.append(min(within))
            base = [p for p in points if p.name == reference and p.seed == seed]
            matched = [(p, accuracy_at(base, p.whole_file)) for p in front] if len(base) > 1 else []
            gaps = [100 * (p.accuracy - a) for p, a in matched if a is not None]
            if gaps and name != reference:
                differences.append(float(np.mean(gaps)))
        lines.append(f"{name:<{NAME_WIDTH}} {spread(smallest, ',.0f'):>30} {spread(differences, '+.2f'):>36}")
    return lines


def read_logs(paths: list[str]) -> tuple[float, list[Point]]:
    """The float accuracy and the run rows of earlier outputs of this script (runs split over processes or cores)."""
    float_accuracies, points = set(), []
    for path in paths:
        for line in open(path).read().splitlines():
            if line.startswith("float "):
                float_accuracies.add(float(line.split()[-1]))
            elif row := ROW.match(line):
                name, lambda_, seed, accuracy, sparsity, bitstream, whole, seconds = row.groups()
                point = (float(lambda_), int(seed), float(accuracy), float(sparsity) / 100)
                points.append(Point(name.strip(), *point, int(bitstream), int(whole), float(seconds)))
    if len(float_accuracies) != 1:
        raise SystemExit(f"The logs must come from one float model; their float accuracies: {sorted(float_accuracies)}")
    return float_accuracies.pop(), points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo_cnn", choices=["demo_cnn", "mlp"])
    parser.add_argument("--baseline", default="converged", choices=["converged", "3-epochs"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.2])
    parser.add_argument("--steps", type=int, nargs="+", default=[ONE_EPOCH])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="default: all")
    parser.add_argument(
        "--summarize", nargs="+", metavar="LOG", help="only the summary, of the rows these outputs hold"
    )
    args = parser.parse_args()
    if args.summarize:
        float_accuracy, points = read_logs(args.summarize)
        print("\n".join(summary(points, float_accuracy, sorted({p.seed for p in points}))))
        return
    train, test = fashion_mnist(use_tfds=False)
    if args.baseline == "converged":
        float_model = converged_float_model(args.model, train, seed=0, verbose=0)
    else:
        float_model = trained_float_model(args.model, train, verbose=0)
    float_accuracy = float(np.mean(float_model.predict(test.x, verbose=0).argmax(1) == test.y))
    print(f"{args.model} ({args.baseline} float), {args.bits} bit, {' / '.join(map(str, args.steps))} steps")
    print(
        f"{'run':<{NAME_WIDTH}} {'lambda':>6} {'seed':>4} {'accuracy':>8} {'sparsity':>9} {'bitstream':>10} "
        f"{'file':>10} {'s':>6}"
    )
    print(f"{'float':<{NAME_WIDTH}} {'':6} {'':4} {float_accuracy:8.4f}")
    points = []
    for seed in args.seeds:
        for lambda_ in args.lambdas:
            for steps in args.steps:
                for name in args.runs:
                    lever = RUNS[name]
                    if args.steps != [ONE_EPOCH]:
                        name = f"{name}, {steps} steps"
                    points.append(run(name, float_model, train, test, steps, args.bits, lambda_, seed, **lever))
                    print(points[-1].row(), flush=True)
    print()
    print("\n".join(summary(points, float_accuracy, args.seeds)))


if __name__ == "__main__":
    main()
