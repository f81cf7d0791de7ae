"""Per-layer statistics of a QAT model and the table `summary` prints (plots of them: plots.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.distillation import quantized_student
from tf_ecqx.ecq.assign import layer_lambda
from tf_ecqx.quantization.kernels import quantized_kernels


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one quantized kernel under the current assignment."""

    name: str
    bits: int
    step: float
    n_weights: int
    sparsity: float  # fraction of zero codes
    entropy: float  # bits per weight of the empirical code distribution
    distinct_codes: int
    layer_lambda: float  # the lambda the assignment uses: user lambda (current, see LambdaSchedule) * lambda_max * d_l

    @property
    def entropy_bytes(self) -> float:
        """Size of the kernel at the zeroth-order entropy of its codes, in bytes (what a memoryless coder can reach)."""
        return self.n_weights * self.entropy / 8

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def code_entropy(codes: np.ndarray) -> float:
    """Empirical entropy of integer codes in bits per element."""
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def layer_stats(qmodel: keras.Model) -> list[LayerStats]:
    """One record per ECQx-quantized layer: bits, step, size, sparsity, entropy and number of distinct codes.

    A Distiller's are its student's."""
    records = []
    for kernel in quantized_kernels(quantized_student(qmodel)):
        codes = kernel.codes().numpy()
        records.append(
            LayerStats(
                name=kernel.name,
                bits=kernel.settings.bits,
                step=float(kernel.state["step"].numpy()),
                n_weights=int(codes.size),
                sparsity=float(np.mean(codes == 0)),
                entropy=code_entropy(codes),
                distinct_codes=int(np.unique(codes).size),
                layer_lambda=float(
                    layer_lambda(
                        kernel.kernel,
                        kernel.quantizer.grid(kernel.state),
                        kernel.quantizer.lambda_variable,
                        kernel.state["size_factor"],
                    )
                ),
            )
        )
    return records


@dataclass(frozen=True)
class ModelTotals:
    """Totals over all quantized kernels: weights, fraction of zero codes, mean entropy, bytes at that entropy."""

    n_weights: int
    sparsity: float
    entropy: float
    entropy_bytes: float


def model_totals(stats: list[LayerStats]) -> ModelTotals:
    """Weight-averaged sparsity and entropy of a model's quantized kernels."""
    total = sum(s.n_weights for s in stats)
    bound = sum(s.entropy_bytes for s in stats)
    zeros = sum(s.sparsity * s.n_weights for s in stats)
    return ModelTotals(total, zeros / max(total, 1), 8 * bound / max(total, 1), bound)


def format_layer_table(stats: list[LayerStats]) -> str:
    """A fixed-width table of layer statistics with a total row (size at the zeroth-order entropy vs float32)."""
    header = f"{'layer':<24}{'bits':>5}{'weights':>10}{'sparsity':>10}{'entropy':>9}{'codes':>7}{'bytes@H':>10}"
    rows = [header, "-" * len(header)]
    for s in stats:
        rows.append(
            f"{s.name:<24}{s.bits:>5}{s.n_weights:>10}{s.sparsity:>10.1%}{s.entropy:>9.3f}"
            f"{s.distinct_codes:>7}{s.entropy_bytes:>10.0f}"
        )
    totals = model_totals(stats)
    if totals.n_weights:
        rows.append("-" * len(header))
        rows.append(
            f"{'total':<24}{'':>5}{totals.n_weights:>10}{totals.sparsity:>10.1%}{totals.entropy:>9.3f}{'':>7}"
            f"{totals.entropy_bytes:>10.0f}   ({4 * totals.n_weights / max(totals.entropy_bytes, 1):.0f}x smaller "
            "than float32 kernels)"
        )
    return "\n".join(rows)


def summary(qmodel: keras.Model, print_fn=print) -> None:
    """Print the per-layer table of a QAT model: bits, sparsity, entropy (bits/weight), distinct codes, bytes."""
    print_fn(format_layer_table(layer_stats(qmodel)))
