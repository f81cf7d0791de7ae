"""Entropy-coded container for the kernel codes of an ECQx model: the compact file to ship or archive a model in.

Version 2 (written) codes each kernel under a context model (context_model.py): which codes are zero, per
(row class, column class) of the code matrix, then the nonzero codes, all range-coded (constriction). Version 1
(still read) ANS-coded each kernel under its zeroth-order distribution, about N * H(codes) / 8 bytes. Layout,
little-endian, varint = unsigned LEB128:

    magic b"ECQX" | version u8 | total length u64
    layer count varint, then per layer:
        name (varint length, UTF-8) | rank u8, dims varint... | bits u8 | step f32 | grid k_min i8, k_max i8
        | code model: occurring range lo i8, hi i8, count varint per code lo..hi (0 = absent)
        | version 2 with two or more distinct codes only, the context model:
            row classes u8, rows per class varint... | column classes u8, columns per class varint...
            | nonzero codes per context varint... (row class major)
        | payload length varint | payload (coder words as u32, zero high bytes of the last word dropped)
    crc32 u32 of every byte before it

The payload is, in version 1, the ANS-coded codes; in version 2 one range-coder stream of the row classes, the
column classes, each context's significance bits and the nonzero codes (each part left out where it holds one value).

Reading trusts nothing the checksum cannot vouch for. Every layer header is read and checked before any payload is
decoded (and, in `load_into`, compared with the model): a varint has at most 10 bytes (64 bits); name is UTF-8 and
unique; rank <= 8, dims >= 0; bits in 2..8; grid k_min <= 0 <= k_max with at most 2**bits levels; step a finite
float32 > 0 whose extreme levels stay finite; lo..hi inside the grid; counts sum to the number of weights; 1 to 16
classes per axis, none empty, adding up to the rows and columns; no context with more nonzero codes than cells, and
the nonzero codes of all contexts as many as the counts say. A layer with one distinct code (or none) has an empty
payload, any other a payload of at least the information its header implies (the entropy of its counts, in version
2 of its classes, contexts and nonzero codes: N * H / 8 bytes, less a small slack for coder rounding). Decoded
payloads must reproduce every declared count and leave no data unread. The weights of all layers together must not
exceed `max_weights` (decode, load_into), so a file of a few bytes cannot demand gigabytes.

This module is the format alone, pure numpy (`encode_layers`, `read_headers`, `decode`); bitstream.py connects it
to Keras models (`encode`, `save`, `load_into`).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import constriction
import numpy as np

from tf_ecqx.ecq.bits import MAX_BITS, MIN_BITS, check_bits
from tf_ecqx.export import context_model
from tf_ecqx.export.context_model import DECODE_CHUNK, ContextModel, categorical, entropy_bits

MAGIC = b"ECQX"
VERSION = 2  # written
READ_VERSIONS = (1, 2)
PREAMBLE = struct.Struct("<4sBQ")  # magic, version, total length
CRC = struct.Struct("<I")
INT8_MIN, INT8_MAX = -128, 127
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_RANK = 8  # Keras kernels have rank <= 5
VARINT_MAX_BYTES = 10  # 64 bits
DEFAULT_MAX_WEIGHTS = 2**28  # 256 MiB of int8 codes, 1 GiB of float32 values
# ANS rounds each state update down by at most f / 2**32 <= 2**-8 of the symbol's information (24-bit probabilities f,
# state >= 2**32); the bytes cover the start, where the state is smaller, and the range coder's final flush. Real
# payloads exceed the entropy.
ENTROPY_SLACK_FRACTION = 2**-8
ENTROPY_SLACK_BYTES = 8
# The exception types constriction's extension module raises (PyExc_* it references); on decoding, bad data.
CONSTRICTION_ERRORS = (ValueError, RuntimeError, AssertionError, OverflowError)


class BitstreamError(ValueError):
    """An ECQx bitstream that cannot be read: foreign, from another format version, truncated or corrupt."""


@dataclass(frozen=True, eq=False)
class DecodedLayer:
    """The quantized kernel of one layer: integer codes on the grid k * step, k in [k_min, k_max].

    What `decode` returns (codes as a read-only int8 array; a layer of one code costs no memory per weight) and what
    `encode_layers` takes (any integer array).
    """

    name: str
    bits: int
    step: np.float32
    k_min: int
    k_max: int
    codes: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def values(self) -> np.ndarray:
        """codes * step in float32, bit-exact to `QuantizedKernel.values()`."""
        return self.codes.astype(np.float32) * np.float32(self.step)


# --- byte-level writing and reading ---


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    """Sequential reader over a container body; running past its end means the file is malformed."""

    def __init__(self, data: bytes, start: int, end: int):
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _malformed(f"a field at byte {self.pos} runs past the end of the layer data")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def varint(self) -> int:
        """An unsigned LEB128 integer of at most 64 bits, the widest the writer produces."""
        start, value = self.pos, 0
        for shift in range(0, 7 * VARINT_MAX_BYTES, 7):
            (byte,) = self.take(1)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value >> 64:
                    raise _malformed(f"the varint at byte {start} exceeds 64 bits")
                return value
        raise _malformed(f"the varint at byte {start} is longer than {VARINT_MAX_BYTES} bytes")


def _malformed(detail: str) -> BitstreamError:
    return BitstreamError(
        f"The ECQx bitstream is malformed although its checksum matches ({detail}); it was not written by "
        "tf_ecqx.export. Write it again with tf_ecqx.export.save(qmodel, path)."
    )


# --- code model and entropy coding ---


def _code_model(codes: np.ndarray) -> tuple[int, np.ndarray]:
    """Lowest occurring code and the counts of all codes from it to the highest occurring one."""
    flat = codes.reshape(-1).astype(np.int64)
    if flat.size == 0:
        return 0, np.zeros(1, np.int64)
    lo = int(flat.min())
    return lo, np.bincount(flat - lo)


def _minimum_payload_bytes(bits: float) -> int:
    """The shortest payload that can carry this much information: its bytes less the rounding slack."""
    return math.floor(bits / 8 * (1 - ENTROPY_SLACK_FRACTION)) - ENTROPY_SLACK_BYTES


# --- layers -> bytes ---


def _layer_problem(rank: int, bits: int, step: float, k_min: int, k_max: int) -> str | None:
    """What is wrong with these layer fields, or None: the one rule set for writing and for reading a file."""
    try:
        check_bits(bits)
    except ValueError:
        return f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}"
    if rank > MAX_RANK:
        return f"rank must be at most {MAX_RANK}, got {rank}"
    if not INT8_MIN <= k_min <= 0 <= k_max <= INT8_MAX:
        return f"grid [{k_min}, {k_max}] must contain 0 and fit int8 [-128, 127]"
    if k_max - k_min + 1 > 2**bits:
        return f"grid [{k_min}, {k_max}] must have at most 2**{bits} = {2**bits} levels at {bits} bits"
    if not (np.isfinite(step) and step > 0):
        return f"step must be a finite float32 > 0, got {float(step)!r}"
    extreme = max(-k_min, k_max, 1)
    if extreme * float(step) > FLOAT32_MAX:
        return f"step {float(step)!r} times level {extreme} must fit float32"
    return None


def _check_layer(layer: DecodedLayer) -> None:
    where = f"Layer {layer.name!r}"
    if problem := _layer_problem(layer.codes.ndim, layer.bits, layer.step, layer.k_min, layer.k_max):
        raise ValueError(f"{where}: {problem}.")
    if not np.issubdtype(layer.codes.dtype, np.integer):
        raise ValueError(f"{where}: codes must be an integer array, got {layer.codes.dtype}.")
    if layer.codes.size and not layer.k_min <= layer.codes.min() <= layer.codes.max() <= layer.k_max:
        raise ValueError(f"{where}: codes must lie in the grid [{layer.k_min}, {layer.k_max}].")


def _context_bytes(model: ContextModel) -> bytes:
    return b"".join(
        [
            struct.pack("<B", len(model.row_counts)),
            *(_varint(c) for c in model.row_counts),
            struct.pack("<B", len(model.col_counts)),
            *(_varint(c) for c in model.col_counts),
            *(_varint(n) for n in model.nonzeros),
        ]
    )


def _coded(codes: np.ndarray, counts: np.ndarray) -> tuple[bytes, bytes]:
    """The context-model fields and the payload of codes with these counts (neither for a single code)."""
    if np.count_nonzero(counts) <= 1:
        return b"", b""
    matrix = codes.reshape(context_model.matrix_shape(codes.shape)).astype(np.int64)
    model, payload = context_model.encode(matrix, *context_model.fit(matrix))
    return _context_bytes(model), payload


def _layer_bytes(layer: DecodedLayer) -> bytes:
    _check_layer(layer)
    name = layer.name.encode("utf-8")
    lo, counts = _code_model(layer.codes)
    context, payload = _coded(layer.codes, counts)
    return b"".join(
        [
            _varint(len(name)),
            name,
            struct.pack("<B", len(layer.shape)),
            *(_varint(d) for d in layer.shape),
            struct.pack("<Bfbb", layer.bits, layer.step, layer.k_min, layer.k_max),
            struct.pack("<bb", lo, lo + len(counts) - 1),
            *(_varint(int(c)) for c in counts),
            context,
            _varint(len(payload)),
            payload,
        ]
    )


def encode_layers(layers: Sequence[DecodedLayer]) -> bytes:
    """The container holding these layers' codes (pure numpy; `encode` feeds it a model's kernels)."""
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"Layer names must be unique to be loaded back by name, got {names}.")
    body = _varint(len(layers)) + b"".join(_layer_bytes(layer) for layer in layers)
    head = PREAMBLE.pack(MAGIC, VERSION, PREAMBLE.size + len(body) + CRC.size)
    return head + body + CRC.pack(zlib.crc32(head + body))


# --- bytes -> layer headers, all checked before any payload is decoded ---


@dataclass(frozen=True)
class LayerHeader:
    """One layer as its file declares it, all but the codes themselves (still entropy-coded in `payload`).

    `context` is the layer's context model in a version-2 file with two or more distinct codes, else None.
    """

    name: str
    shape: tuple[int, ...]
    bits: int
    step: np.float32
    k_min: int
    k_max: int
    lo: int
    counts: tuple[int, ...]
    context: ContextModel | None
    payload: bytes

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def zeros(self) -> int:
        """How many codes are 0."""
        return self.counts[-self.lo] if self.lo <= 0 <= self.lo + len(self.counts) - 1 else 0

    @property
    def information_bits(self) -> float:
        """What the payload must carry at the least: the entropy of the counts, or of the context model's parts."""
        if self.context is None:
            return entropy_bits(self.counts)
        nonzero = [count for code, count in enumerate(self.counts, self.lo) if code and count]
        return context_model.minimum_bits(self.context, nonzero)


def _check_container(data: bytes) -> None:
    """Refuse foreign, other-version, truncated and corrupt data, in that order, saying what to do."""
    rewrite = "Write it again with tf_ecqx.export.save(qmodel, path)."
    if data[:4] != MAGIC[: len(data[:4])]:
        raise BitstreamError(
            f"Not an ECQx bitstream: it starts with {data[:4]!r}, not {MAGIC!r}. Pass a file "
            "written by tf_ecqx.export.save."
        )
    if len(data) > 4 and data[4] not in READ_VERSIONS:
        raise BitstreamError(
            f"ECQx bitstream format version {data[4]} cannot be read: this tf_ecqx reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}. Use the tf_ecqx release that wrote it, or export the model again."
        )
    if len(data) < PREAMBLE.size + CRC.size:
        raise BitstreamError(f"ECQx bitstream truncated: {len(data)} bytes, shorter than its fixed header. {rewrite}")
    expected = PREAMBLE.unpack_from(data)[2]
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has extra bytes at the end"
        raise BitstreamError(
            f"ECQx bitstream {what}: {len(data)} bytes where its header announces {expected} "
            f"(incomplete copy or download, or a damaged header). {rewrite}"
        )
    (stored,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(data[: -CRC.size]) != stored:
        raise BitstreamError(
            f"ECQx bitstream corrupt: CRC32 mismatch (stored {stored:#010x}, computed "
            f"{zlib.crc32(data[: -CRC.size]):#010x}); the file was damaged. {rewrite}"
        )


def _read_name(reader: _Reader) -> str:
    raw = reader.take(reader.varint())
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"the layer name {raw[:40]!r} is not UTF-8") from None


def _check_code_model(header: LayerHeader) -> None:
    """Counts that add up to the shape, and a payload as long as they require: none for a single code, else at
    least their entropy, so that no short file makes the decoder produce (and allocate) more than it holds."""
    where = f"layer {header.name!r}"
    if sum(header.counts) != header.size:
        raise _malformed(f"{where} counts {sum(header.counts)} codes for shape {header.shape}")
    distinct = sum(1 for count in header.counts if count)
    if distinct <= 1 and header.payload:
        raise _malformed(f"{where} has a single code, which needs no payload, but {len(header.payload)} payload bytes")
    if header.context and (problem := context_model.model_problem(header.context, header.shape, header.zeros)):
        raise _malformed(f"{where}: {problem}")
    if distinct > 1 and len(header.payload) < (needed := _minimum_payload_bytes(header.information_bits)):
        raise _malformed(
            f"{where} has a {len(header.payload)}-byte payload; the entropy of its {header.size} codes needs at least "
            f"{needed} bytes"
        )


def _read_context(reader: _Reader) -> ContextModel:
    row_counts = tuple(reader.varint() for _ in range(reader.unpack("<B")[0]))
    col_counts = tuple(reader.varint() for _ in range(reader.unpack("<B")[0]))
    nonzeros = tuple(reader.varint() for _ in range(len(row_counts) * len(col_counts)))
    return ContextModel(row_counts, col_counts, nonzeros)


def _read_header(reader: _Reader, version: int) -> LayerHeader:
    name = _read_name(reader)
    (rank,) = reader.unpack("<B")
    shape = tuple(reader.varint() for _ in range(rank))
    bits, step, k_min, k_max, lo, hi = reader.unpack("<Bfbbbb")
    if problem := _layer_problem(rank, bits, step, k_min, k_max):
        raise _malformed(f"layer {name!r}: {problem}")
    if not k_min <= lo <= hi <= k_max:
        raise _malformed(f"layer {name!r} has codes [{lo}, {hi}] outside its grid [{k_min}, {k_max}]")
    counts = tuple(reader.varint() for _ in range(hi - lo + 1))
    context = _read_context(reader) if version > 1 and sum(1 for c in counts if c) > 1 else None
    payload = reader.take(reader.varint())
    header = LayerHeader(name, shape, bits, np.float32(step), k_min, k_max, lo, counts, context, payload)
    _check_code_model(header)
    return header


def _check_weight_budget(headers: Sequence[LayerHeader], max_weights: int) -> None:
    total = sum(header.size for header in headers)
    if total > max_weights:
        raise BitstreamError(
            f"The ECQx bitstream declares {total} weights, more than max_weights={max_weights} (a guard against files "
            f"that would exhaust memory). If you trust the file, pass max_weights={total} or more to "
            "tf_ecqx.export.decode or load_into."
        )


def read_headers(data: bytes, max_weights: int) -> list[LayerHeader]:
    """The checked headers of every layer of an intact container, without decoding any payload."""
    _check_container(data)
    reader = _Reader(data, PREAMBLE.size, len(data) - CRC.size)
    headers = [_read_header(reader, data[4]) for _ in range(reader.varint())]
    if reader.pos != reader.end:
        raise _malformed(f"{reader.end - reader.pos} bytes follow the last layer")
    repeated = sorted(name for name, count in Counter(header.name for header in headers).items() if count > 1)
    if repeated:
        raise _malformed(f"layer names {repeated} occur more than once")
    _check_weight_budget(headers, max_weights)
    return headers


# --- payloads -> codes ---


def _ans_decoded(header: LayerHeader, occurring: np.ndarray) -> np.ndarray:
    """The flat codes of a version-1 payload, decoded a chunk at a time."""
    padded = header.payload + b"\0" * (-len(header.payload) % 4)
    model = categorical([count for count in header.counts if count])
    codes = np.empty(header.size, np.int8)
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(padded, "<u4").astype(np.uint32))
    for start in range(0, codes.size, DECODE_CHUNK):
        symbols = coder.decode(model, min(DECODE_CHUNK, codes.size - start))
        codes[start : start + symbols.size] = occurring[symbols]
    if not coder.is_empty():
        raise context_model.PayloadMismatch(f"it holds more data than its {codes.size} codes")
    return codes


def _decompress(header: LayerHeader) -> np.ndarray:
    """The codes of a checked header: read-only int8, a single code broadcast rather than repeated in memory.

    A payload that the coder refuses, or that decodes to other counts than declared, is malformed.
    """
    occurring = np.array([header.lo + i for i, count in enumerate(header.counts) if count], np.int8)
    if occurring.size <= 1:
        return np.broadcast_to(occurring[0] if occurring.size else np.int8(0), header.shape)
    try:
        if header.context is None:
            codes = _ans_decoded(header, occurring)
        else:
            nonzero = occurring != 0
            counts = [count for count in header.counts if count]
            values, value_counts = occurring[nonzero], [c for c, keep in zip(counts, nonzero, strict=True) if keep]
            codes = context_model.decode(header.payload, header.shape, header.context, values, value_counts)
    except CONSTRICTION_ERRORS as error:
        raise _malformed(f"the payload of layer {header.name!r} cannot be decoded: {error}") from error
    codes.flags.writeable = False
    return codes.reshape(header.shape)


def decode_layer(header: LayerHeader) -> DecodedLayer:
    return DecodedLayer(header.name, header.bits, header.step, header.k_min, header.k_max, _decompress(header))


def decode(data: bytes, *, max_weights: int = DEFAULT_MAX_WEIGHTS) -> list[DecodedLayer]:
    """The layers of an ECQx bitstream, bit-exact; raises BitstreamError for anything but an intact file (version 1, 2).

    Every header is checked before any payload is decoded; `max_weights` caps the weights of all layers together.
    """
    return [decode_layer(header) for header in read_headers(data, max_weights)]
