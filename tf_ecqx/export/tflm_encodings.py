"""The three encodings of an int8 filter that stock TFLM's DECODE operator runs: LUT (type 0), HUFFMAN (1), PRUNING (2).

Each writer returns the encoded tensor's bytes and the ancillary tensor's (16-byte DECODE Common Metadata header, then
the decoder's tables); `decode` reads both back exactly as TFLM's decoders do, so an export can check every written
filter without trusting the writer. The layouts follow tflite-micro's kernels/decode_state_{lut,huffman,prune}.{h,cc}
and their tests:

- DCM: byte 0 decode type, byte 1 DCM version 1, bytes 2-3 reserved, bytes 4-15 the decoder's own (byte 4 is the
  HUFFMAN / PRUNING version 1).
- LUT: written by tflite_micro's own LutCompressor. The decoder takes the channel count from the output tensor's
  scales (not from the DCM axis field): a one-table LUT on a tensor with several scales decodes channel 0 only.
- PRUNING: a 1-bit mask per element, MSB first ("not the zero point"), and the kept values after the DCM; the zero
  point of each element is its channel's (int8 with several scales) or the tensor's.
- HUFFMAN: the codewords as one MSB-first bit stream read in big-endian 32-bit words; 16- or 32-bit table entries
  (DCM byte 5: bit 0 = 32-bit entries, bits 7-4 = log2(first table size) - 1). An entry is either a symbol
  (bit 15/31 set, 4-bit count = the bits of this table's index that belong to its codeword) or a link to a next table
  (count = that table's index bits - 1, value = its offset from the linking entry).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from tflite_micro.tensorflow.lite.micro.compression import lut, model_editor, spec
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as tflite

ENCODINGS = ("lut", "pruning", "huffman")
DECODE_TYPES = {"lut": 0, "huffman": 1, "pruning": 2}
DCM_BYTES = 16
LUT_MAX_BITS = 7  # the DCM bit-width field
HUFFMAN_TABLE_BITS = range(8, 0, -1)  # index widths tried per table (a symbol entry's 4-bit count allows up to 15)
HUFFMAN_ENTRY = {16: (0x8000, 11, 0x07FF, "<u2"), 32: (0x80000000, 27, 0x07FFFFFF, "<u4")}


class EncodingError(ValueError):
    """The filter cannot be written in this encoding so that TFLM decodes it (or the written bytes decode wrong)."""


@dataclass(frozen=True)
class FilterLayout:
    """What TFLM's decoders read from a DECODE output tensor: its shape and its quantization (one zero point per
    scale, and the quantized dimension)."""

    shape: tuple[int, ...]
    zero_points: tuple[int, ...]
    axis: int

    def __post_init__(self) -> None:
        if not self.zero_points:
            raise ValueError("a filter layout needs a zero point per scale (one for a per-tensor filter)")

    @property
    def channels(self) -> int:
        return len(self.zero_points)

    def check(self) -> FilterLayout:
        """self, or EncodingError for a quantized dimension TFLM's decoders refuse (they take axis 0, or the last axis
        when there are several scales)."""
        if self.axis != 0 and not (self.channels > 1 and self.axis == len(self.shape) - 1):
            raise EncodingError(f"TFLM's decoders support channel axis 0 or the last, not {self.axis}")
        return self

    @property
    def channels_last(self) -> bool:
        """Whether TFLM's decoders step through the channels element by element (several scales, last axis)."""
        return self.check().channels > 1 and self.axis == len(self.shape) - 1

    def element_zero_points(self) -> np.ndarray:
        """The zero point TFLM applies to each element in flat (row-major) order."""
        count = int(np.prod(self.shape))
        points = np.asarray(self.zero_points, np.int8)
        if self.channels_last:
            return np.tile(points, count // self.channels)
        return np.repeat(points, count // self.channels)


@dataclass(frozen=True)
class Encoded:
    """One filter encoded for a DECODE operator."""

    encoding: str
    data: bytes  # the encoded tensor
    ancillary: bytes  # DCM header + tables

    @property
    def bytes(self) -> int:
        return len(self.data) + len(self.ancillary)


def _dcm(encoding: str, user: bytes = b"\x01") -> bytes:
    return bytes([DECODE_TYPES[encoding], 1, 0, 0]) + user.ljust(DCM_BYTES - 4, b"\0")


def encode(encoding: str, values: np.ndarray, layout: FilterLayout) -> Encoded:
    """values (int8, layout.shape) in `encoding`; EncodingError if TFLM cannot decode it that way."""
    values = np.asarray(values, np.int8).reshape(layout.shape)
    layout.check()
    if encoding == "lut":
        return _encode_lut(values, layout)
    if encoding == "pruning":
        mask = values.reshape(-1) != layout.element_zero_points()
        return Encoded("pruning", np.packbits(mask).tobytes(), _dcm("pruning") + values.reshape(-1)[mask].tobytes())
    if encoding == "huffman":
        return _encode_huffman(values.reshape(-1))
    raise ValueError(f"encoding={encoding!r} is not known; use one of {ENCODINGS}.")


def decode(data: bytes, ancillary: bytes, layout: FilterLayout) -> np.ndarray:
    """The int8 tensor TFLM's DECODE writes for these bytes (the decoder named by DCM byte 0)."""
    if len(ancillary) < DCM_BYTES or ancillary[1] != 1:
        raise EncodingError("the ancillary tensor has no DCM header of version 1")
    kind = {code: name for name, code in DECODE_TYPES.items()}.get(ancillary[0])
    tables = np.frombuffer(ancillary, np.uint8, offset=DCM_BYTES)
    count = int(np.prod(layout.shape))
    bits_read = {"lut": ancillary[5] & 0x07, "pruning": 1}.get(kind, 0) * count
    if len(data) * 8 < bits_read:
        raise EncodingError(f"the {kind} decoder reads {bits_read} bits from an encoded tensor of {len(data)} bytes")
    if kind == "lut":
        flat = _decode_lut(np.frombuffer(data, np.uint8), ancillary, tables.view(np.int8), layout)
    elif kind == "pruning":
        mask = np.unpackbits(np.frombuffer(data, np.uint8), count=count).astype(bool)
        if mask.sum() > tables.size:
            raise EncodingError(f"the PRUNING mask keeps {mask.sum()} values but the table holds {tables.size}")
        flat = layout.element_zero_points().copy()
        flat[mask] = tables.view(np.int8)[: mask.sum()]
    elif kind == "huffman":
        flat = _decode_huffman(data, ancillary, tables, count)
    else:
        raise EncodingError(f"decode type {ancillary[0]} is not one stock TFLM runs")
    return np.asarray(flat, np.int8).reshape(layout.shape)


def _encode_lut(values: np.ndarray, layout: FilterLayout) -> Encoded:
    """tflite_micro's LUT writer: one table per channel where the tensor has several scales, else one table;
    index width = the fewest bits that index the largest table."""
    axis = layout.axis if layout.channels > 1 else None
    slices = [values] if axis is None else list(np.moveaxis(values, axis, 0))
    bits = max(1, int(max(np.unique(s).size for s in slices) - 1).bit_length())
    if bits > LUT_MAX_BITS:
        raise EncodingError(f"a LUT index holds at most {LUT_MAX_BITS} bits; this filter needs {bits}")
    tensor = model_editor.Tensor(shape=values.shape, dtype=tflite.TensorType.INT8, data=values)
    mode = spec.PerTensor() if axis is None else spec.PerChannel(axis=axis)
    result = lut.LutCompressor().compress(tensor, spec.LookUpTableCompression(index_bitwidth=bits, mode=mode))
    return Encoded("lut", bytes(result.encoded_data), bytes(result.ancillary_data))


def _decode_lut(indices: np.ndarray, ancillary: bytes, tables: np.ndarray, layout: FilterLayout) -> np.ndarray:
    """decode_state_lut.cc: MSB-first indices of DCM byte 5's width, channel c reads tables[c * stride + index]."""
    bits, stride = ancillary[5] & 0x07, ancillary[6]
    count = int(np.prod(layout.shape))
    unpacked = np.unpackbits(indices, count=count * bits).reshape(count, bits)
    index = unpacked @ (1 << np.arange(bits - 1, -1, -1))
    if layout.channels_last:
        channel = np.arange(count) % layout.channels
    else:
        channel = np.arange(count) // (count // layout.channels)
    position = channel * stride + index
    if position.max(initial=0) >= tables.size:
        raise EncodingError(
            f"the LUT decoder reads value {position.max()} of a {tables.size}-entry table "
            f"({layout.channels} channels x stride {stride}): a one-table LUT on a per-channel tensor"
        )
    return tables[position]


def _huffman_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Huffman code lengths of the symbols (at least 1 bit: a one-symbol code still spends a bit per element)."""
    if len(counts) == 1:
        return {symbol: 1 for symbol in counts}
    heap = [(count, i, (symbol,)) for i, (symbol, count) in enumerate(sorted(counts.items()))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    order = len(heap)
    while len(heap) > 1:
        count_a, _, a = heapq.heappop(heap)
        count_b, _, b = heapq.heappop(heap)
        for symbol in a + b:
            lengths[symbol] += 1
        heapq.heappush(heap, (count_a + count_b, order, a + b))
        order += 1
    return lengths


def _canonical_codes(lengths: dict[int, int]) -> dict[int, str]:
    """Canonical prefix codes (shorter first, then by symbol) as bit strings."""
    codes, code, previous = {}, 0, 0
    for symbol, length in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= length - previous
        codes[symbol], previous = format(code, f"0{length}b"), length
        code += 1
    return codes


def _huffman_tables(codes: dict[int, str], width: int) -> tuple[list[tuple[bool, int, int]], dict[int, int]]:
    """The decode tables, each indexed by up to `width` bits, as (is_symbol, count, value) entries, and for each
    symbol the bits the decoder reads to find it (its codeword plus the look-ahead it puts back)."""
    entries: list[tuple[bool, int, int]] = []
    reads: dict[int, int] = {}

    def table(suffixes: dict[int, str], read_before: int) -> int:
        bits = min(width, max(len(s) for s in suffixes.values()))
        start = len(entries)
        entries.extend([(True, 1, 0)] * (1 << bits))  # indices no codeword starts with are never read
        for index in range(1 << bits):
            prefix = format(index, f"0{bits}b")
            found = [(sym, s) for sym, s in suffixes.items() if len(s) <= bits and prefix.startswith(s)]
            if found:
                symbol, suffix = found[0]
                entries[start + index] = (True, len(suffix), symbol & 0xFF)
                reads[symbol] = read_before + bits
                continue
            longer = {sym: s[bits:] for sym, s in suffixes.items() if len(s) > bits and s.startswith(prefix)}
            if longer:
                child = table(longer, read_before + len(prefix))
                child_bits = min(width, max(len(s) for s in longer.values()))
                entries[start + index] = (False, child_bits - 1, child - (start + index))
        return start

    table(codes, 0)
    return entries, reads


def _encode_huffman(flat: np.ndarray) -> Encoded:
    """HUFFMAN with the smallest tables over first/next-table index widths 1..8 (ties: the wider, fewer look-ups)."""
    symbols, counts = np.unique(flat, return_counts=True)
    codes = _canonical_codes(_huffman_lengths(dict(zip(symbols.tolist(), counts.tolist()))))
    best = None
    for width in HUFFMAN_TABLE_BITS:
        entries, reads = _huffman_tables(codes, width)
        entry_bits = 16 if max(value for _, _, value in entries) <= HUFFMAN_ENTRY[16][2] else 32
        size = len(entries) * entry_bits // 8
        if best is None or size < best[0]:
            best = (size, entries, reads, entry_bits, min(width, max(len(c) for c in codes.values())))
    _, entries, reads, entry_bits, first_bits = best
    found, shift, _, dtype = HUFFMAN_ENTRY[entry_bits]
    table = np.array([(found if sym else 0) | (count << shift) | value for sym, count, value in entries], np.uint64)
    lengths = np.array([len(codes[s]) for s in flat.tolist()])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    look_ahead = np.array([reads[s] for s in flat.tolist()])
    words = -(-int((starts + look_ahead).max()) // 32)  # the decoder reads whole 32-bit words, ahead of the codeword
    bits = np.array([bit == "1" for s in flat.tolist() for bit in codes[s]], bool)
    stream = np.packbits(np.concatenate([bits, np.zeros(words * 32 - bits.size, bool)])).tobytes()
    header = bytes([1, ((first_bits - 1) << 4) | (entry_bits == 32)])
    return Encoded("huffman", stream, _dcm("huffman", header) + table.astype(dtype).tobytes())


def _decode_huffman(data: bytes, ancillary: bytes, tables: np.ndarray, count: int) -> np.ndarray:
    """decode_state_huffman.cc's loop over a bit cursor (its word reads and put-backs move exactly such a cursor);
    reading a word past the encoded tensor is an error, as it would read beyond the buffer on the device."""
    if ancillary[4] != 1:
        raise EncodingError(f"HUFFMAN version {ancillary[4]} is not 1")
    entry_bits = 32 if ancillary[5] & 0x01 else 16
    found, shift, value_mask, dtype = HUFFMAN_ENTRY[entry_bits]
    table = tables.view(dtype).astype(np.int64).tolist()
    stream = np.unpackbits(np.frombuffer(data, np.uint8)).tolist()
    if len(data) % 4:
        raise EncodingError(f"the HUFFMAN stream is read in 32-bit words; {len(data)} bytes is not a multiple of 4")
    first_bits = (ancillary[5] >> 4) + 1
    out, position = [], 0

    def read(bits: int) -> int:
        nonlocal position
        if position + bits > len(stream):
            raise EncodingError("the HUFFMAN decoder would read past the end of the encoded tensor")
        value = int("".join(map(str, stream[position : position + bits])), 2)
        position += bits
        return value

    for _ in range(count):
        used = first_bits
        offset = read(used)
        entry = table[offset]
        while not entry & found:
            used = ((entry >> shift) & 0xF) + 1
            offset += (entry & value_mask) + read(used)
            entry = table[offset]
        out.append(entry & 0xFF)
        position -= max(0, used - ((entry >> shift) & 0xF))
    return np.array(out, np.uint8).view(np.int8)
