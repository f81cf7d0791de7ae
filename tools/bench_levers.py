"""Issue 17's training levers side by side: one fine-tuning run per lever against its baseline, from the cached float.

    python tools/bench_levers.py [--model demo_cnn] [--baseline converged] [--bits 4] [--lambda 0.2] [--steps 938]
                                 [--seed 0] [--runs NAME ...]

Each run starts from the same cached float model: trained to convergence (tf_ecqx.models.converged_float_model, early
stopping on 10 % of the training images) or, with `--baseline 3-epochs`, the 3-epoch one of bench_pareto.py. It
fine-tunes `--steps` steps (938 = one epoch of the 60k training images, batch 64, Adam 1e-3) and prints the Keras
model's test accuracy (10k images), the kernels' sparsity and the bitstream bytes (tf_ecqx.export.encode). One seed:
preliminary. Levers: LambdaSchedule (a ramp over the first third of the steps), Distiller (T = 3, alpha = 0.1, the Keras
example's), ECQx's slack q (0.05 against the reference's 0).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tf_ecqx  # noqa: E402
from tf_ecqx._keras import keras  # noqa: E402
from tf_ecqx.datasets import Split, fashion_mnist  # noqa: E402
from tf_ecqx.models import compile_for_classification, converged_float_model, trained_float_model  # noqa: E402
from tf_ecqx.report import model_totals  # noqa: E402

BATCH = 64
# run name -> levers: q (ECQx with that slack), ramp (LambdaSchedule), distill (Distiller)
RUNS: dict[str, dict[str, float]] = {
    "ECQ": {},
    "ECQ + lambda ramp": {"ramp": 1},
    "ECQ + distillation": {"distill": 1},
    "ECQx q=0 (reference)": {"q": 0.0},
    "ECQx q=0.05": {"q": 0.05},
}


def run(
    name: str, float_model: keras.Model, train: Split, test: Split, args: argparse.Namespace, **lever: float
) -> str:
    """One fine-tuning run with the levers named in `lever` (q, ramp, distill), as one table row."""
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    ecqx = "q" in lever
    qmodel = tf_ecqx.quantize_model(float_model, bits=args.bits, lambda_=args.lambda_, ecqx=ecqx, q=lever.get("q", 0.0))
    data = train.as_dataset(BATCH, shuffle=True, seed=args.seed)
    callbacks: list[keras.callbacks.Callback] = []
    if ecqx:
        callbacks.append(tf_ecqx.RelevanceCallback(data))
    if lever.get("ramp"):
        callbacks.append(tf_ecqx.LambdaSchedule(ramp_steps=args.steps // 3))
    trained = tf_ecqx.Distiller(qmodel, float_model) if lever.get("distill") else qmodel
    compile_for_classification(trained)
    trained.fit(data.repeat(), steps_per_epoch=args.steps, epochs=1, callbacks=callbacks, verbose=0)
    accuracy = compile_for_classification(qmodel).evaluate(test.x, test.y, verbose=0)[1]
    sparsity = model_totals(tf_ecqx.layer_stats(qmodel)).sparsity
    size = len(tf_ecqx.export.encode(qmodel))
    seconds = time.perf_counter() - start
    return f"{name:<28} {accuracy:8.4f} {sparsity:9.1%} {size:10d} {seconds:6.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo_cnn", choices=["demo_cnn", "mlp"])
    parser.add_argument("--baseline", default="converged", choices=["converged", "3-epochs"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--lambda", dest="lambda_", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=938)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="default: all")
    args = parser.parse_args()
    train, test = fashion_mnist(use_tfds=False)
    if args.baseline == "converged":
        float_model = converged_float_model(args.model, train, seed=args.seed, verbose=0)
    else:
        float_model = trained_float_model(args.model, train, verbose=0)
    float_accuracy = float(np.mean(float_model.predict(test.x, verbose=0).argmax(1) == test.y))
    print(f"{args.model} ({args.baseline} float), {args.bits} bit, lambda {args.lambda_}, {args.steps} steps, ", end="")
    print(f"seed {args.seed}")
    print(f"{'run':<28} {'accuracy':>8} {'sparsity':>9} {'bitstream':>10} {'s':>6}")
    print(f"{'float':<28} {float_accuracy:8.4f}")
    for name in args.runs:
        print(run(name, float_model, train, test, args, **RUNS[name]), flush=True)


if __name__ == "__main__":
    main()
