"""Time of one kernel's ECQ / ECQx assignment: TensorFlow op by op against the XLA-compiled function the quantizers
call, side by side in one run.

    python tools/bench_assignment.py [--bits 2 4 8] [--sizes 401408 36864 2359296] [--calls 30]

Per bit width and kernel size (default: the MLP's fc1 784x512, a 3x3x64x64 convolution, a ResNet50 3x3x512x512 one;
Gaussian weights, uniform relevances): the fastest of three rounds of `--calls` calls of the assignment as the
quantizers call it (quantizers.compiled_assignment), once without and once with XLA; their ratio; and how many weights
the two assign differently (XLA's log rounds differently from TensorFlow's, so a weight within rounding of a decision
boundary may go either way). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_ecqx.ecq.grid import init_grid  # noqa: E402
from tf_ecqx.quantization.quantizers import compiled_assignment  # noqa: E402

ROUNDS = 3


def milliseconds(run: Callable[[], tf.Tensor], calls: int) -> float:
    """Fastest round's ms per call, after a warm-up call (tracing and compiling)."""
    run().numpy()
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(calls):
            result = run()
        result.numpy()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[784 * 512, 3 * 3 * 64 * 64, 3 * 3 * 512 * 512])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| method | bits | weights | op by op | XLA | op by op / XLA | codes that differ |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for ecqx in (False, True):
        for bits in args.bits:
            for size in args.sizes:
                w = tf.constant(rng.normal(0.0, 0.05, size).astype(np.float32))
                grid = init_grid(w, bits)
                arguments = [w, grid.step, grid.k_min, grid.k_max, tf.constant(0.2), tf.constant(1.0)]
                if ecqx:
                    arguments += [tf.constant(rng.uniform(size=size).astype(np.float32)), 0.1, 0.0]
                op_by_op, compiled = (compiled_assignment(grid.slots, ecqx, xla) for xla in (False, True))
                times = [milliseconds(lambda f=f, a=arguments: f(*a).codes, args.calls) for f in (op_by_op, compiled)]
                differ = int(np.sum(op_by_op(*arguments).codes.numpy() != compiled(*arguments).codes.numpy()))
                print(
                    f"| {'ECQx' if ecqx else 'ECQ'} | {bits} | {size:,} | {times[0]:.2f} ms | {times[1]:.2f} ms | "
                    f"{times[0] / times[1]:.1f}× | {differ} |"
                )


if __name__ == "__main__":
    main()
