"""The micro (TFLM) model: each int8 filter stored in the runnable encoding with the fewest bytes (none, LUT, PRUNING,
HUFFMAN; tflm_encodings.py) within optional flash and RAM budgets, and the verification of the file in TFLM.

A DECODE operator writes its filter into the arena while the consuming operator runs, so a compressed filter trades
flash for RAM. File and arena are measured (the built flatbuffer, TFLM's allocation report), never estimated: filters
are taken greedily, largest saving first, each only if the whole file shrinks (a DECODE operator and its tensors cost
some hundred bytes, more than a tiny filter saves) and the arena stays within the RAM budget; a greedy choice, not a
search over all subsets. Stock TFLM refuses a DECODE feeding another DECODE, so a filter gets exactly one encoding.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
from tflite_micro.tensorflow.lite.micro.compression import compressor, decode_insert, model_editor
from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

from tf_ecqx.export import flatbuffer
from tf_ecqx.export.runtimes import run_litert, run_tflm
from tf_ecqx.export.tflm_encodings import ENCODINGS, Encoded, EncodingError, FilterLayout, decode, encode
from tf_ecqx.export.verification import ExportError, KernelCheck


@dataclass(frozen=True)
class FilterEncoding:
    """How one filter is stored in the micro file: `encoding` ('none', 'lut', 'pruning', 'huffman') and its `bytes`
    (encoded tensor + DECODE tables), and the bytes of each encoding TFLM runs for it (`options`, 'none' included)."""

    layer: str
    tensor: str
    encoding: str
    bytes: int
    options: dict[str, int] = field(default_factory=dict)
    note: str = ""  # why a smaller encoding was not taken


def check_budget(name: str, value: object) -> int | None:
    """A flash or RAM budget: None, or a positive whole number of bytes."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} is not a number of bytes: pass a positive int (e.g. {name}=64 * 1024).")
    if value <= 0:
        raise ValueError(f"{name}={value} bytes cannot be met: pass a positive number of bytes, or None for no limit.")
    return int(value)


def _layout(tensor: flatbuffer.schema.TensorT) -> FilterLayout:
    quantization = tensor.quantization
    zero_points = () if quantization is None or quantization.zeroPoint is None else quantization.zeroPoint
    axis = 0 if quantization is None else int(quantization.quantizedDimension)
    return FilterLayout(tuple(int(n) for n in tensor.shape), tuple(int(z) for z in zero_points) or (0,), axis)


def _options(values: np.ndarray, layout: FilterLayout) -> dict[str, Encoded]:
    """Every encoding TFLM decodes back to `values` (checked by reading the bytes back) that is smaller than dense."""
    found = {}
    for name in ENCODINGS:
        try:
            encoded = encode(name, values, layout)
            if np.array_equal(decode(encoded.data, encoded.ancillary, layout), values):
                found[name] = encoded
        except EncodingError:
            continue
    return {name: e for name, e in found.items() if e.bytes < values.nbytes}


def with_decode(dense: bytes, encoded: dict[int, Encoded]) -> bytes:
    """The dense flatbuffer with the filters at these tensor indices stored encoded, each read through a DECODE
    operator (tflite_micro's DECODE insertion and flatbuffer alignment)."""
    if not encoded:
        return dense
    model = model_editor.read(dense)
    results = {(0, index): compressor.CompressionResult(e.data, e.ancillary) for index, e in encoded.items()}
    decode_insert.insert_decode_operators(model, results)
    with tempfile.TemporaryDirectory() as scratch:
        source, aligned = os.path.join(scratch, "in.tflite"), os.path.join(scratch, "out.tflite")
        with open(source, "wb") as file:
            file.write(model.build())
        tflite_flatbuffer_align_wrapper.align_tflite_model(source, aligned)
        with open(aligned, "rb") as file:
            return file.read()


def check_decoded(data: bytes, filters: dict[str, np.ndarray]) -> int:
    """Decode every DECODE operator's inputs of the written file as TFLM does and compare with the int8 filter it
    replaces (by name); returns how many were checked."""
    model = flatbuffer.load(data)
    graph = model.subgraphs[0]
    checked = 0
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if code.customCode != decode_insert.DECODE_CUSTOM_OP_NAME.encode():
            continue
        for i, output in enumerate(op.outputs):
            encoded, ancillary = (graph.tensors[index] for index in op.inputs[2 * i : 2 * i + 2])
            target = graph.tensors[output]
            name = target.name.decode().removesuffix("_decoded")
            try:
                values = decode(*(bytes(model.buffers[t.buffer].data) for t in (encoded, ancillary)), _layout(target))
            except EncodingError as error:
                raise ExportError(f"The DECODE of filter {name!r} in the micro file fails: {error}.") from error
            if name not in filters or not np.array_equal(values, filters[name]):
                raise ExportError(f"The DECODE of filter {name!r} in the micro file does not give its int8 values.")
            checked += 1
    return checked


class _Measure:
    """Builds the file for a choice of encodings and measures its arena in the TFLM interpreter (cached)."""

    def __init__(self, dense: bytes, sample: np.ndarray, arena_size: int):
        self.dense, self.sample, self.arena_size = dense, sample, arena_size
        self._seen: dict[frozenset, tuple[bytes, int]] = {}

    def __call__(self, encoded: dict[int, Encoded]) -> tuple[bytes, int]:
        key = frozenset((index, e.encoding) for index, e in encoded.items())
        if key not in self._seen:
            data = with_decode(self.dense, encoded)
            arena = run_tflm(data, self.sample, self.arena_size)[2]
            if arena is None:
                raise ExportError("The TFLM interpreter did not report its arena; cannot check the RAM budget.")
            self._seen[key] = (data, arena)
        return self._seen[key]


def _greedy(
    measure: _Measure, best: dict[int, Encoded], saving: dict[int, int], ram_budget: int | None
) -> tuple[dict[int, Encoded], dict[int, str]]:
    """Filters taken largest saving first while the measured file shrinks and the arena stays within ram_budget;
    returns the encodings taken and why each other filter stayed dense."""
    chosen: dict[int, Encoded] = {}
    dense: dict[int, str] = {}
    data, _ = measure(chosen)
    for index in sorted(best, key=lambda i: saving[i], reverse=True):
        trial = {**chosen, index: best[index]}
        trial_data, trial_arena = measure(trial)
        if len(trial_data) >= len(data):
            dense[index] = "its DECODE operator and tensors cost more flash than the encoding saves"
        elif ram_budget is not None and trial_arena > ram_budget:
            dense[index] = f"decoding it would exceed ram_budget={ram_budget} B"
        else:
            chosen, data = trial, trial_data
    return chosen, dense


def _choose(
    measure: _Measure,
    best: dict[int, Encoded],
    saving: dict[int, int],
    ram_budget: int | None,
    flash_budget: int | None,
) -> tuple[dict[int, Encoded], dict[int, str]]:
    """_greedy within the budgets, or ExportError naming the smallest flash and the smallest RAM reachable."""
    chosen, dense = _greedy(measure, best, saving, ram_budget)
    data, arena = measure(chosen)
    if (ram_budget is not None and arena > ram_budget) or (flash_budget is not None and len(data) > flash_budget):
        smallest_flash, its_arena = measure(_greedy(measure, best, saving, None)[0])
        raise ExportError(
            f"No micro file meets flash_budget={flash_budget} and ram_budget={ram_budget} bytes. Smallest flash "
            f"reachable: {len(smallest_flash)} B (arena {its_arena} B); smallest RAM: arena {measure({})[1]} B "
            f"(flash {len(measure.dense)} B, every filter dense)"
            + (f"; within the RAM budget the greedy choice reached {len(data)} B" if ram_budget is not None else "")
            + ". Raise a budget, or quantize to fewer bits / a larger lambda for smaller filters."
        )
    return chosen, dense


def _filter_options(
    dense: bytes, checks: list[KernelCheck]
) -> tuple[dict[str, flatbuffer.WeightTensor], dict[str, dict[str, Encoded]]]:
    """The checked filters of the dense file by tensor name, and each one's runnable encodings smaller than dense."""
    model = flatbuffer.load(dense)
    by_name = {t.name: t for t in flatbuffer.weight_tensors(model)}
    tensors = model.subgraphs[0].tensors
    return by_name, {
        c.tensor: _options(by_name[c.tensor].values, _layout(tensors[by_name[c.tensor].index])) for c in checks
    }


def _arena_size(dense: bytes) -> int:
    """The arena TFLM gets for measuring: room for every filter decoded, beyond TFLM's 10x-the-file default."""
    return 16 * len(dense) + (1 << 16)


def single_encoding_sizes(dense: bytes, checks: list[KernelCheck], sample: np.ndarray) -> dict[str, tuple[int, int]]:
    """Flash and arena bytes (the built file, the arena TFLM reports) with no filter encoded ('none') and, for each
    encoding, with every filter in it where TFLM runs it and it is smaller than dense: each encoding alone."""
    by_name, options = _filter_options(dense, checks)
    measure = _Measure(dense, sample[:1], _arena_size(dense))
    sizes = {}
    for name in ("none", *ENCODINGS):
        data, arena = measure({by_name[t].index: found[name] for t, found in options.items() if name in found})
        sizes[name] = (len(data), arena)
    return sizes


def micro_model(
    dense: bytes,
    checks: list[KernelCheck],
    samples: np.ndarray,
    notes: list[str],
    ram_budget: int | None = None,
    flash_budget: int | None = None,
) -> tuple[bytes, np.ndarray, int, list[FilterEncoding]]:
    """The micro file, its dequantized TFLM outputs on samples, its arena bytes and each filter's encoding; checked:
    every DECODE gives its int8 filter (read back from the written bytes) and the TFLM outputs equal the dense
    model's bit for bit (notes say how TFLM and LiteRT's builtin kernels compare)."""
    by_name, options = _filter_options(dense, checks)
    best = {by_name[t].index: min(found.values(), key=lambda e: e.bytes) for t, found in options.items() if found}
    saving = {by_name[t].index: by_name[t].values.nbytes - best[by_name[t].index].bytes for t in options if options[t]}
    arena_size = _arena_size(dense)
    measure = _Measure(dense, samples[:1], arena_size)
    chosen, kept_dense = _choose(measure, best, saving, ram_budget, flash_budget)
    data, arena = measure(chosen)

    filters = []
    for check in checks:
        weight = by_name[check.tensor]
        sizes = {"none": weight.values.nbytes, **{name: e.bytes for name, e in options[check.tensor].items()}}
        encoding = chosen[weight.index].encoding if weight.index in chosen else "none"
        note = f"kept dense: {kept_dense[weight.index]}" if weight.index in kept_dense else ""
        filters.append(FilterEncoding(check.layer, check.tensor, encoding, sizes[encoding], sizes, note))
    decoded = check_decoded(data, {check.tensor: by_name[check.tensor].values for check in checks})
    if decoded != len(chosen):
        raise ExportError(f"The micro file holds {decoded} DECODE outputs for {len(chosen)} encoded filters.")
    compressed_raw, outputs, _ = run_tflm(data, samples, arena_size)
    dense_raw, dense_arena = run_tflm(dense, samples)[0], measure({})[1]
    if not np.array_equal(compressed_raw, dense_raw):
        raise ExportError("The compressed micro model's TFLM outputs differ from the uncompressed model's.")
    litert_raw, _ = run_litert(dense, samples, builtin_only=True)
    lsb = np.abs(litert_raw.astype(np.int32) - dense_raw).max()
    notes.append(
        "micro filters: "
        + "; ".join(
            f"{f.layer} {f.encoding} {f.bytes} B ({', '.join(f'{k} {v}' for k, v in f.options.items())})"
            + (f", {f.note}" if f.note else "")
            for f in filters
        )
    )
    notes.append(
        f"micro: {len(data)} B flash, arena {arena} B (every filter dense: {len(dense)} B, arena {dense_arena} B)"
    )
    notes.append(
        f"TFLM: {decoded} DECODE outputs read back equal to their int8 filters; outputs equal the uncompressed "
        f"model's on {len(samples)} samples; vs LiteRT builtin kernels {np.mean(litert_raw == dense_raw):.1%} of "
        f"outputs equal, max difference {lsb} LSB (the runtimes round requantization differently)"
    )
    return data, outputs, arena, filters
