"""Packed INT4 filters for LiteRT: which filters LiteRT runs exactly as INT4 (the policy), packing them, and the
check that the packed file computes like the int8 file."""

from __future__ import annotations

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.export.runtimes import run_litert
from tf_ecqx.export.verification import ExportError, KernelCheck, check_kernels
from tf_ecqx.quantization.kernels import quantized_kernels

INT4_MAX_BITS = 4


def check_int4_request(qmodel: keras.Model, target: str, sparse: bool | None) -> None:
    """Refuse weight_dtype='int4' where it cannot apply: another target, sparse filters, kernels wider than 4 bits."""
    if target != "mobile":
        raise ValueError(
            f"weight_dtype='int4' is for target='mobile' (LiteRT), not target={target!r}: the micro export "
            "already stores each filter in its smallest TFLM encoding (LUT, PRUNING or HUFFMAN)."
        )
    if sparse:
        raise ValueError(
            "weight_dtype='int4' packs dense filters; sparse (DENSIFY) filters would stay int8, so the two do not "
            "combine. Pass sparse=False (or leave sparse unset) with weight_dtype='int4'."
        )
    too_wide = [
        f"{k.name} ({k.settings.bits} bits)" for k in quantized_kernels(qmodel) if k.settings.bits > INT4_MAX_BITS
    ]
    if too_wide:
        raise ValueError(
            f"weight_dtype='int4' needs kernels of at most {INT4_MAX_BITS} bits (INT4 holds [-8, 7]); "
            f"{', '.join(too_wide)} would not fit. Quantize with bits<={INT4_MAX_BITS} or use weight_dtype='int8'."
        )


def _litert_int4_blocker(weight: flatbuffer.WeightTensor) -> str | None:
    """Why LiteRT (ai-edge-litert 2.3.0) would not run this packable filter as INT4 exactly like the int8 file.

    Measured on this stack: the builtin kernels compute INT4 CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED exactly
    like int8, but the default XNNPACK delegate takes an INT4 filter only for FULLY_CONNECTED with an even number of
    input channels; it leaves the others to the builtin kernel, whose requantization rounds differently from XNNPACK's
    (outputs change by a few LSB against the int8 file, where XNNPACK runs them).
    """
    if weight.op != "FULLY_CONNECTED":
        return f"{weight.op}: LiteRT's default XNNPACK delegate does not take INT4 filters of this operator"
    if weight.values.shape[-1] % 2:
        return (
            f"FULLY_CONNECTED with an odd number of inputs ({weight.values.shape[-1]}): LiteRT's default XNNPACK "
            "delegate does not take its INT4 filter"
        )
    return None


def _int4_blocker(weight: flatbuffer.WeightTensor, packable: bool) -> str | None:
    """Why a filter stays int8 in an int4 export, or None if it is packed."""
    if not packable:
        if weight.values is None:
            return "stored sparse"
        low, high = int(weight.values.min()), int(weight.values.max())
        if low >= -8 and high <= 7:
            return "not a plain int8 constant filter of an int8 operator"
        if high == 8 and low >= -7:
            return "its codes reach +8 (a 4-bit grid whose positive side dominates is [-7, 8]); INT4 holds [-8, 7]"
        return f"its values span [{low}, {high}]; INT4 holds [-8, 7]"
    blocker = _litert_int4_blocker(weight)
    if blocker:
        return blocker + "; the builtin kernel it would fall back to rounds differently, so outputs would change"
    return None


def _raw_difference(expected: np.ndarray, data: bytes, samples: np.ndarray, builtin_only: bool) -> str | None:
    """How LiteRT's raw outputs of `data` differ from `expected` (None if equal), or why LiteRT refused it."""
    try:
        raw, _ = run_litert(data, samples, builtin_only=builtin_only)
    except (RuntimeError, ValueError) as error:
        return f"LiteRT refused it: {error}"
    if np.array_equal(raw, expected):
        return None
    lsb = int(np.abs(raw.astype(np.int32) - expected).max())
    return f"{np.mean(raw != expected):.1%} of the raw int8 outputs differ, by up to {lsb} LSB"


def _check_int4_runs_like_int8(
    int8_data: bytes, data: bytes, samples: np.ndarray, packed: list[flatbuffer.PackedFilter], layer_of: dict
) -> None:
    """LiteRT with default settings (XNNPACK) and with builtin kernels only must give the int8 file's raw outputs;
    otherwise find the packed filters that alone make a difference and name them in an ExportError."""
    for builtin_only, runtime in ((False, "LiteRT with default settings (XNNPACK)"), (True, "LiteRT builtin kernels")):
        expected, _ = run_litert(int8_data, samples, builtin_only=builtin_only)
        problem = _raw_difference(expected, data, samples, builtin_only)
        if problem is None:
            continue
        culprits = []
        for filter_ in packed:
            single = flatbuffer.load(int8_data)
            flatbuffer.pack_int4_filters(single, [filter_.tensor])
            alone = _raw_difference(expected, flatbuffer.dump(single), samples, builtin_only)
            if alone:
                culprits.append(f"layer {layer_of.get(filter_.tensor, filter_.tensor)!r} ({filter_.op}): {alone}")
        raise ExportError(
            f"The INT4 file does not compute like the int8 file in {runtime} on {len(samples)} samples: {problem}. "
            + (
                f"INT4 filters that do this alone: {'; '.join(culprits)}."
                if culprits
                else "No single INT4 filter does this alone."
            )
            + " Export with weight_dtype='int8'."
        )


def pack_int4(
    qmodel: keras.Model, int8_data: bytes, samples: np.ndarray, checks: list[KernelCheck], notes: list[str]
) -> tuple[bytes, list[KernelCheck]]:
    """The int8 file with every filter LiteRT runs exactly as INT4 packed two values per byte, checked like the int8
    file (codes, then LiteRT outputs equal to the int8 file's); notes say what was packed and what stayed int8."""
    model = flatbuffer.load(int8_data)
    layer_of = {check.tensor: check.layer for check in checks}
    packable = {weight.name for weight in flatbuffer.int4_candidates(model)}
    kept: dict[str, list[str]] = {}
    to_pack = []
    for weight in flatbuffer.weight_tensors(model):
        blocker = _int4_blocker(weight, weight.name in packable)
        if blocker is None:
            to_pack.append(weight.name)
        else:
            kept.setdefault(blocker, []).append(layer_of.get(weight.name, weight.name))
    packed = flatbuffer.pack_int4_filters(model, to_pack)
    data = flatbuffer.dump(model)
    checks = check_kernels(qmodel, flatbuffer.load(data))
    if packed:
        _check_int4_runs_like_int8(int8_data, data, samples, packed, layer_of)
        listed = ", ".join(
            f"{layer_of.get(f.tensor, f.tensor)} ({f.op}, {f.int8_bytes} -> {f.int4_bytes} bytes)" for f in packed
        )
        saved = len(int8_data) - len(data)
        notes.append(
            f"INT4 filters, two values per byte: {listed}; the file is {saved} bytes ({saved / len(int8_data):.1%}) "
            f"smaller than the int8 file ({len(int8_data)} -> {len(data)} bytes); LiteRT (default settings and "
            f"builtin kernels) gives the int8 file's raw outputs on {len(samples)} samples"
        )
    else:
        notes.append("no filter could be stored as INT4: the file is the int8 file")
    for reason, layers in kept.items():
        notes.append(f"kept int8: {', '.join(layers)} ({reason})")
    return data, checks
