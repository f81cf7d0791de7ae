"""The context model of a version-2 ECQx bitstream: which codes are zero, coded per (row class, column class).

A kernel's codes are viewed as a matrix, rows = every axis but the last, columns = the last (output) axis. Every row
and every column is put in one of a few classes; the significance bit (code != 0) of each weight is range-coded
under the zero/nonzero counts of its (row class, column class) context, and the nonzero codes under their own
counts. ECQx leaves whole output channels and inputs empty and others dense, so such classes capture most of what
a zeroth-order model misses, at the price of a class index per row and column and one count per context.

The model is static (two-pass): the encoder chooses the classes (`fit`), the file stores the class sizes and each
context's nonzero count, and the payload holds, in one range-coder stream (constriction's queue coder), the row
classes, the column classes, each context's significance bits and the nonzero codes. Decoding takes one
constriction call per context (per chunk of a large one), none per weight, and checks that every decoded part has
exactly the counts the header declared.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import constriction
import numpy as np

MAX_CLASSES = 16  # per axis: at most 256 contexts
CLASS_CHOICES = (1, 2, 3, 4, 6, 8)  # class counts per axis the encoder tries
REFINE_ROUNDS = 4  # rounds of moving each row and column to its cheapest class
MIN_CLASSED_LINE = 8  # rows (columns) shorter than this get one class: their class index would cost what they hold
DECODE_CHUNK = 2**20  # symbols per constriction call: bounds its int32 output to 4 MiB


@dataclass(frozen=True)
class ContextModel:
    """Rows per row class, columns per column class, and the nonzero codes of each context, row class major."""

    row_counts: tuple[int, ...]
    col_counts: tuple[int, ...]
    nonzeros: tuple[int, ...]

    def context_sizes(self) -> np.ndarray:
        return np.outer(np.array(self.row_counts, np.int64), np.array(self.col_counts, np.int64)).reshape(-1)


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, columns) of the code matrix: all axes but the last, and the last (a scalar is 1 x 1)."""
    if not shape:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def model_problem(model: ContextModel, shape: Sequence[int], zeros: int) -> str | None:
    """What is wrong with a context model declared for codes of this shape with `zeros` zero codes, or None."""
    rows, cols = matrix_shape(shape)
    for axis, counts, length in (("row", model.row_counts, rows), ("column", model.col_counts, cols)):
        if not 1 <= len(counts) <= MAX_CLASSES:
            return f"{len(counts)} {axis} classes, not 1 to {MAX_CLASSES}"
        if min(counts) < 1 or sum(counts) != length:
            return f"{axis} class sizes {list(counts)} are not positive with sum {length}"
    sizes = model.context_sizes()
    if any(n > size for n, size in zip(model.nonzeros, sizes.tolist(), strict=True)):
        return f"context nonzero counts {list(model.nonzeros)} exceed their context sizes {sizes.tolist()}"
    if sum(model.nonzeros) != math.prod(shape) - zeros:
        return f"context nonzero counts sum to {sum(model.nonzeros)}, not {math.prod(shape) - zeros}"
    return None


# --- information content ---


def entropy_bits(counts: Sequence[int] | np.ndarray) -> float:
    """N * H(counts): no coder, whatever its model, spends fewer bits on symbols with these counts (Gibbs)."""
    counts = np.asarray(counts, np.float64)
    counts = counts[counts > 0]
    return float((counts * np.log2(counts.sum() / counts)).sum()) if counts.size else 0.0


def _significance_bits(nonzeros: np.ndarray, sizes: np.ndarray) -> float:
    return sum(entropy_bits([n, size - n]) for n, size in zip(nonzeros.tolist(), sizes.tolist(), strict=True))


def minimum_bits(model: ContextModel, value_counts: Sequence[int]) -> float:
    """The information the payload must carry: classes, significance bits and nonzero codes at their counts."""
    return (
        entropy_bits(model.row_counts)
        + entropy_bits(model.col_counts)
        + _significance_bits(np.array(model.nonzeros), model.context_sizes())
        + entropy_bits(value_counts)
    )


# --- the encoder's choice of classes ---


def _header_bytes(row_counts: np.ndarray, col_counts: np.ndarray, nonzeros: np.ndarray) -> int:
    """Roughly the varint bytes the model's tables take: what a class costs beyond its bits."""
    values = np.concatenate([row_counts, col_counts, nonzeros])
    return 2 + int(np.sum(1 + np.floor(np.log2(np.maximum(values, 1)) / 7)))


def _classes(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0.. in order of first value, so no class is empty."""
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _initial_classes(density: np.ndarray, count: int) -> np.ndarray:
    """Empty lines in a class of their own, the others in density quantiles."""
    labels = np.zeros(density.size, np.int64)
    filled = density > 0
    if count > 1 and filled.any():
        edges = np.quantile(density[filled], np.linspace(0, 1, count)[1:-1])
        labels[filled] = 1 + np.digitize(density[filled], edges)
    return _classes(labels)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(labels.max() + 1, dtype=np.float32)[labels]


def _context_counts(significant: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero count and size of each context, as (row class, column class) matrices: float32 sums, for the search."""
    by_row, by_col = _one_hot(rows), _one_hot(cols)
    nonzeros = np.rint(by_row.T @ significant @ by_col).astype(np.int64)
    return nonzeros, np.outer(by_row.sum(0), by_col.sum(0)).astype(np.int64)


def _reassigned(significant: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Each row moved to the row class that codes it in the fewest bits, given the column classes."""
    nonzeros, sizes = _context_counts(significant, rows, cols)
    p = (nonzeros + 0.5) / (sizes + 1.0)
    by_col = _one_hot(cols)
    ones = significant @ by_col
    zeros = by_col.sum(0)[None, :] - ones
    prior = np.log2(np.bincount(rows) / rows.size)
    cost = -(ones @ np.log2(p).T + zeros @ np.log2(1 - p).T) - prior[None, :]
    return _classes(cost.argmin(1))


def _cost(significant: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    nonzeros, sizes = _context_counts(significant, rows, cols)
    bits = entropy_bits(np.bincount(rows)) + entropy_bits(np.bincount(cols))
    bits += _significance_bits(nonzeros.reshape(-1), sizes.reshape(-1))
    return bits / 8 + _header_bytes(np.bincount(rows), np.bincount(cols), nonzeros.reshape(-1))


def _refined(significant: np.ndarray, row_count: int, col_count: int) -> tuple[np.ndarray, np.ndarray]:
    rows = _initial_classes(significant.mean(1), row_count)
    cols = _initial_classes(significant.mean(0), col_count)
    for _ in range(REFINE_ROUNDS if max(row_count, col_count) > 1 else 0):
        rows = _reassigned(significant, rows, cols)
        cols = _reassigned(significant.T, cols, rows)
    return rows, cols


def fit(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column classes for a code matrix: of the class counts tried, those coding it in the fewest bytes."""
    significant = (matrix != 0).astype(np.float32)
    rows, cols = matrix.shape
    candidates = [
        _refined(significant, row_count, col_count)
        for row_count in (CLASS_CHOICES if cols >= MIN_CLASSED_LINE else (1,))
        for col_count in (CLASS_CHOICES if rows >= MIN_CLASSED_LINE else (1,))
        if row_count <= rows and col_count <= cols
    ]
    return min(candidates, key=lambda classes: _cost(significant, *classes))


# --- coding ---


def categorical(counts: Sequence[int] | np.ndarray) -> constriction.stream.model.Categorical:
    """The model of symbols 0..n-1 with these (positive) counts, exact on the encoding and decoding side."""
    return constriction.stream.model.Categorical(np.asarray(counts, np.float64), perfect=False)


def _context_cells(rows: np.ndarray, cols: np.ndarray) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """Each context's index and its cells, an np.ix_ index into the code matrix (row-major within the context)."""
    row_members = [np.flatnonzero(rows == a) for a in range(rows.max() + 1)]
    col_members = [np.flatnonzero(cols == b) for b in range(cols.max() + 1)]
    for a, in_row in enumerate(row_members):
        for b, in_col in enumerate(col_members):
            yield a * len(col_members) + b, np.ix_(in_row, in_col)


def _exact_nonzeros(significant: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[int, ...]:
    """The nonzero count of each context in integers, row class major: what the header declares."""
    per_row = np.stack([significant[:, cols == b].sum(1) for b in range(cols.max() + 1)], axis=1)
    return tuple(np.stack([per_row[rows == a].sum(0) for a in range(rows.max() + 1)]).reshape(-1).tolist())


def encode(matrix: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[ContextModel, bytes]:
    """The context model of a code matrix with these classes, and its payload (range-coder words, little-endian)."""
    significant = matrix != 0
    model = ContextModel(
        tuple(np.bincount(rows).tolist()), tuple(np.bincount(cols).tolist()), _exact_nonzeros(significant, rows, cols)
    )
    sizes = model.context_sizes()
    coder = constriction.stream.queue.RangeEncoder()
    for labels, counts in ((rows, model.row_counts), (cols, model.col_counts)):
        if len(counts) > 1:
            coder.encode(labels.astype(np.int32), categorical(counts))
    for context, cells in _context_cells(rows, cols):
        if 0 < (ones := model.nonzeros[context]) < (size := int(sizes[context])):
            coder.encode(significant[cells].reshape(-1).astype(np.int32), categorical([size - ones, ones]))
    values, symbols = np.unique(matrix[significant], return_inverse=True)
    if values.size > 1:
        coder.encode(symbols.reshape(-1).astype(np.int32), categorical(np.bincount(symbols.reshape(-1))))
    raw = coder.get_compressed().astype("<u4").tobytes()
    return model, raw[: max(len(raw.rstrip(b"\0")), len(raw) - 3)]  # drop zero high bytes of the last word only


class PayloadMismatch(ValueError):
    """A payload whose decoded symbols do not have the counts its header declares."""


def _decoded(decoder, counts: Sequence[int], what: str) -> np.ndarray:
    """`sum(counts)` symbols as uint8 (at most 256 distinct), checked to occur exactly `counts` times."""
    total = sum(counts)
    out = np.empty(total, np.uint8)
    if len(counts) == 1:
        out[:] = 0
        return out
    model = categorical(counts)
    for start in range(0, total, DECODE_CHUNK):
        out[start : start + DECODE_CHUNK] = decoder.decode(model, min(DECODE_CHUNK, total - start))
    if np.bincount(out, minlength=len(counts)).tolist() != list(counts):
        raise PayloadMismatch(f"its {what} do not have the counts its header declares")
    return out


def decode(
    payload: bytes, shape: Sequence[int], model: ContextModel, values: np.ndarray, counts: Sequence[int]
) -> np.ndarray:
    """The int8 codes of a checked layer: `values` are the nonzero codes that occur, `counts` their counts.

    Raises PayloadMismatch (or constriction's errors) for a payload that does not decode to what the header declares.
    """
    padded = payload + b"\0" * (-len(payload) % 4)
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(padded, "<u4").astype(np.uint32))
    rows = _decoded(decoder, model.row_counts, "row classes")
    cols = _decoded(decoder, model.col_counts, "column classes")
    significant = np.zeros(matrix_shape(shape), bool)
    sizes = model.context_sizes()
    for context, cells in _context_cells(rows, cols):
        ones, size = model.nonzeros[context], int(sizes[context])
        if 0 < ones < size:
            bits = _decoded(decoder, [size - ones, ones], f"significance bits in context {context}")
            significant[cells] = bits.view(bool).reshape(cells[0].size, cells[1].size)
        elif ones:
            significant[cells] = True
    codes = np.zeros(significant.shape, np.int8)
    codes[significant] = values[_decoded(decoder, counts, "nonzero codes")]
    if not decoder.maybe_exhausted():
        raise PayloadMismatch(f"it holds more data than its {math.prod(shape)} codes")
    return codes.reshape(shape)
