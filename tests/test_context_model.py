"""The version-2 bitstream's context model: bit-exact round trips over bit widths, ranks and odd shapes, its gain on
structured sparsity, and refusal of corrupt, truncated and crafted version-2 files."""

import dataclasses
import struct
import time
import zlib

import numpy as np
import pytest

from tf_ecqx.export import BitstreamError, DecodedLayer, decode, encode_layers
from tf_ecqx.export.container import CRC, MAGIC, PREAMBLE, VERSION, LayerHeader, _varint, read_headers
from tf_ecqx.export.context_model import ContextModel

MAX_WEIGHTS = 2**28


def layer_of(codes: np.ndarray, bits: int = 4, name: str = "k") -> DecodedLayer:
    half = 2 ** (bits - 1)
    return DecodedLayer(name, bits, np.float32(0.01), max(-half, -127), half - 1, np.asarray(codes, np.int64))


def round_trip(codes: np.ndarray, bits: int = 4) -> bytes:
    data = encode_layers([layer_of(codes, bits)])
    assert data[4] == VERSION == 2
    (decoded,) = decode(data)
    assert decoded.shape == codes.shape and decoded.codes.dtype == np.int8
    np.testing.assert_array_equal(decoded.codes, codes)
    return data


def entropy_bytes(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    return float((counts * np.log2(counts.sum() / counts)).sum() / 8)


def sparse_codes(shape: tuple[int, ...], bits: int, seed: int = 0) -> np.ndarray:
    """Codes as ECQx leaves them: per-row and per-column densities, empty rows and columns, all levels in use."""
    rng = np.random.default_rng(seed)
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    density = np.outer(rng.beta(0.6, 1.5, rows), rng.beta(0.8, 1.0, cols))
    density[rng.random(rows) < 0.15] = 0
    density[:, rng.random(cols) < 0.2] = 0
    half = 2 ** (bits - 1)
    values = rng.integers(max(-half, -127), half, size=(rows, cols))
    values[values == 0] = 1
    return np.where(rng.random((rows, cols)) < density, values, 0).reshape(shape)


# --- round trips ---


@pytest.mark.parametrize("bits", range(2, 9))
def test_round_trip_is_bit_exact_at_every_bit_width(bits):
    codes = sparse_codes((256, 64), bits, seed=bits)
    (header,) = read_headers(round_trip(codes, bits), MAX_WEIGHTS)
    assert len(header.payload) < 0.95 * entropy_bytes(codes)  # the row and column densities are used


@pytest.mark.parametrize(
    "shape",
    [(), (1,), (7,), (1000,), (1, 1), (1, 9), (9, 1), (2, 3), (31, 17), (3, 5, 7), (3, 3, 5, 11), (2, 3, 4, 5)],
)
def test_round_trip_of_every_rank_and_odd_shapes(shape):
    round_trip(sparse_codes(shape, 4, seed=len(shape)) if shape else np.array(3))
    round_trip(np.random.default_rng(1).integers(-8, 8, size=shape))


@pytest.mark.parametrize("shape", [(0,), (4, 0), (0, 3), (2, 0, 5)])
def test_empty_kernels_round_trip_without_payload(shape):
    data = round_trip(np.zeros(shape, np.int64))
    assert read_headers(data, MAX_WEIGHTS)[0].payload == b""


@pytest.mark.parametrize("value", [0, 3, -8, 7])
def test_a_single_value_kernel_has_neither_context_model_nor_payload(value):
    data = round_trip(np.full((64, 48), value))
    (header,) = read_headers(data, MAX_WEIGHTS)
    assert header.context is None and header.payload == b""


@pytest.mark.parametrize(
    "codes",
    [
        np.where(np.arange(60)[:, None] % 3 == 0, 2, -1) * np.ones((60, 20), np.int64),  # no zero code
        np.random.default_rng(2).choice([-1, 1], size=(50, 30)),  # two codes, neither zero
        np.random.default_rng(3).choice([0, 5], size=(50, 30), p=[0.9, 0.1]),  # one nonzero code
    ],
    ids=["no zeros", "two nonzero codes", "one nonzero code"],
)
def test_kernels_without_zeros_or_with_one_nonzero_code_round_trip(codes):
    round_trip(codes)


def test_all_zero_rows_and_columns_cost_almost_nothing():
    codes = np.random.default_rng(4).choice([-2, -1, 0, 1, 2], size=(800, 128), p=[0.1, 0.2, 0.4, 0.2, 0.1])
    codes[::3] = 0
    codes[:, 100:] = 0
    data = round_trip(codes)
    dense = codes[np.ix_(np.arange(800) % 3 != 0, np.arange(100))]
    assert len(data) < 1.02 * entropy_bytes(dense) + 300  # the empty rows and columns: about their class indices


def test_several_layers_round_trip_in_one_file():
    layers = [layer_of(sparse_codes(shape, 4, seed=i), name=f"l{i}") for i, shape in enumerate([(9, 4), (30, 8), (5,)])]
    for original, decoded in zip(layers, decode(encode_layers(layers)), strict=True):
        np.testing.assert_array_equal(decoded.codes, original.codes)


def test_a_million_weights_decode_in_well_under_a_second():
    codes = sparse_codes((1024, 1024), 4)
    data = encode_layers([layer_of(codes)])
    start = time.perf_counter()
    (decoded,) = decode(data)
    assert time.perf_counter() - start < 1.0  # about 0.1 s measured
    np.testing.assert_array_equal(decoded.codes, codes)


# --- bad version-2 files ---


@pytest.fixture(scope="module")
def good() -> tuple[bytes, LayerHeader]:
    data = encode_layers([layer_of(sparse_codes((40, 24), 4))])
    (header,) = read_headers(data, MAX_WEIGHTS)
    assert header.context is not None and len(header.context.row_counts) > 1
    return data, header


def test_corrupt_version_2_file_is_refused(good):
    for position in (5, 20, len(good[0]) // 2, len(good[0]) - 5):
        damaged = bytearray(good[0])
        damaged[position] ^= 0x04
        with pytest.raises(BitstreamError, match="corrupt: CRC32 mismatch|truncated|extra bytes"):
            decode(bytes(damaged))


@pytest.mark.parametrize("keep", [0, 4, 5, 13, 30, -30, -1])
def test_truncated_version_2_file_is_refused(good, keep):
    with pytest.raises(BitstreamError, match="truncated"):
        decode(good[0][:keep])


def record(header: LayerHeader, **changes) -> bytes:
    """One version-2 layer record, field by field in the order of the format, from a header with some changes."""
    h = dataclasses.replace(header, **changes)
    name = h.name.encode("utf-8")
    fields = [_varint(len(name)), name, struct.pack("<B", len(h.shape)), *map(_varint, h.shape)]
    fields += [struct.pack("<Bfbbbb", h.bits, h.step, h.k_min, h.k_max, h.lo, h.lo + len(h.counts) - 1)]
    fields += map(_varint, h.counts)
    if h.context is not None:
        fields += [struct.pack("<B", len(h.context.row_counts)), *map(_varint, h.context.row_counts)]
        fields += [struct.pack("<B", len(h.context.col_counts)), *map(_varint, h.context.col_counts)]
        fields += map(_varint, h.context.nonzeros)
    return b"".join([*fields, _varint(len(h.payload)), h.payload])


def container(*records: bytes) -> bytes:
    body = _varint(len(records)) + b"".join(records)
    head = PREAMBLE.pack(MAGIC, 2, PREAMBLE.size + len(body) + CRC.size)
    return head + body + CRC.pack(zlib.crc32(head + body))


def test_crafted_record_is_what_encode_layers_writes(good):
    assert container(record(good[1])) == good[0]


def changed_context(header: LayerHeader, **changes) -> ContextModel:
    return dataclasses.replace(header.context, **changes)


def hostile(header: LayerHeader) -> dict[str, tuple[bytes, str]]:
    """Records whose context model or payload no writer produces, and the problem each must be refused for."""
    ctx, rows, cols = header.context, sum(header.context.row_counts), sum(header.context.col_counts)
    other = read_headers(encode_layers([layer_of(sparse_codes((40, 24), 4, seed=9))]), MAX_WEIGHTS)[0]
    moved = list(ctx.nonzeros)
    moved[0], moved[-1] = moved[0] + 1, moved[-1] - 1  # the fixture's first context has room, its last nonzeros
    return {
        "no row classes": (
            record(header, context=ContextModel((), ctx.col_counts, ())),
            "0 row classes, not 1 to 16",
        ),
        "17 column classes": (
            record(header, context=ContextModel((rows,), (1,) * 16 + (cols - 16,), (0,) * 16 + (sum(ctx.nonzeros),))),
            "17 column classes, not 1 to 16",
        ),
        "class sizes off by one": (
            record(header, context=changed_context(header, row_counts=(*ctx.row_counts[:-1], ctx.row_counts[-1] + 1))),
            f"row class sizes .* are not positive with sum {rows}",
        ),
        "an empty class": (
            record(header, context=ContextModel((0, rows), (cols,), (0, sum(ctx.nonzeros)))),
            r"row class sizes \[0, 40\] are not positive",
        ),
        "more nonzeros than cells": (
            record(header, context=ContextModel((rows,), (cols,), (rows * cols + 1,))),
            "exceed their context sizes",
        ),
        "nonzeros not adding up": (
            record(header, context=changed_context(header, nonzeros=(ctx.nonzeros[0] + 1, *ctx.nonzeros[1:]))),
            f"context nonzero counts sum to {sum(ctx.nonzeros) + 1}, not {sum(ctx.nonzeros)}",
        ),
        "payload shorter than its information": (
            record(header, payload=header.payload[: len(header.payload) // 2]),
            "payload; the entropy of its 960 codes needs at least",
        ),
        "payload of other codes": (
            record(header, payload=other.payload + bytes(max(0, len(header.payload) - len(other.payload)))),
            "cannot be decoded",
        ),
        "nonzeros moved between contexts": (
            record(header, context=changed_context(header, nonzeros=tuple(moved))),
            "cannot be decoded: its significance bits in context 0 do not have the counts",
        ),
        "payload with data after its codes": (
            record(header, payload=header.payload + b"\x5a\xa5\x5a\xa5" * 4),
            "cannot be decoded: it holds more data than its 960 codes",
        ),
        "zero payload": (
            record(header, payload=bytes(len(header.payload))),
            "cannot be decoded",
        ),
    }


HOSTILE_CASES = [
    "no row classes",
    "17 column classes",
    "class sizes off by one",
    "an empty class",
    "more nonzeros than cells",
    "nonzeros not adding up",
    "payload shorter than its information",
    "payload of other codes",
    "nonzeros moved between contexts",
    "payload with data after its codes",
    "zero payload",
]


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_crafted_version_2_file_is_refused_as_malformed(good, case):
    data, message = hostile(good[1])[case]
    with pytest.raises(BitstreamError, match=f"malformed although its checksum matches.*{message}.*save"):
        decode(container(data))


def test_a_context_model_for_a_single_code_is_refused(good):
    single = dataclasses.replace(good[1], lo=0, counts=(960,), payload=b"")
    data = container(record(single))
    with pytest.raises(BitstreamError, match="malformed"):
        decode(data)


def test_huge_declared_version_2_layer_with_a_tiny_payload_is_refused_fast(good):
    ctx = ContextModel((2**14,), (2**14,), (2**27,))
    huge = dataclasses.replace(good[1], shape=(2**14, 2**14), lo=0, counts=(2**27, 2**27), context=ctx, payload=b"\1")
    start = time.perf_counter()
    with pytest.raises(BitstreamError, match="1-byte payload; the entropy of its 268435456 codes needs at least"):
        decode(container(record(huge)))
    assert time.perf_counter() - start < 1.0
