"""Running a .tflite flatbuffer in the real runtimes: LiteRT (phones) and the TFLM interpreter (microcontrollers)."""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite_micro import runtime as tflm

from tf_ecqx.export.verification import ExportError

T = TypeVar("T")


def _scale_and_zero_point(details: dict) -> tuple[float, int]:
    """From LiteRT's or TFLM's tensor details (they name the fields differently)."""
    if "quantization" in details:
        return details["quantization"]
    parameters = details["quantization_parameters"]
    return float(parameters["scales"][0]), int(parameters["zero_points"][0])


def _quantize_input(x: np.ndarray, details: dict) -> np.ndarray:
    if details["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero_point = _scale_and_zero_point(details)
    info = np.iinfo(details["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(details["dtype"])


def _dequantize_output(y: np.ndarray, details: dict) -> np.ndarray:
    if details["dtype"] == np.float32:
        return y
    scale, zero_point = _scale_and_zero_point(details)
    return (y.astype(np.float32) - zero_point) * scale


def run_litert(
    data: bytes, x: np.ndarray, builtin_only: bool = False, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Raw and dequantized outputs of the model on x with LiteRT's default settings: `batch_size` samples per invoke
    where the file takes any batch size (its input resized, as users do), else one sample per invoke.

    builtin_only=True runs LiteRT's builtin kernels without the default XNNPACK delegate.
    """
    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin_only else OpResolverType.AUTO
    interpreter = Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    batch = batch_size if inp["shape_signature"][0] == -1 else 1
    quantized, raw, allocated = _quantize_input(x, inp), [], None
    for start in range(0, len(x), batch):
        chunk = quantized[start : start + batch]
        if len(chunk) != allocated:
            interpreter.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
            interpreter.allocate_tensors()
            allocated = len(chunk)
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        raw.append(interpreter.get_tensor(out["index"]))
    raw = np.concatenate(raw)
    return raw, _dequantize_output(raw, out)


def run_tflm(data: bytes, x: np.ndarray, arena_size: int | None = None) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Raw and dequantized outputs in the TFLM interpreter, and the arena bytes it allocated (None if not reported).

    arena_size: the arena the interpreter gets (default TFLM's guess, 10x the model's bytes; a compressed model may
    decode into more than that). A file TFLM cannot load (an op it does not have) is an ExportError with TFLM's words.
    """
    interpreter, report = _with_stderr(lambda: tflm.Interpreter.from_bytes(data, arena_size=arena_size))
    if isinstance(interpreter, RuntimeError):
        complaint = " ".join(report.split()) or "no reason given"
        fix = (
            "An op TFLM does not have must be replaced in the model (the layer it comes from), or the model exported "
            "with target='mobile'."
            if "find op" in complaint
            else "Please report the message to tf_ecqx."
        )
        raise ExportError(
            f"TFLM cannot run the micro file ({interpreter}; TFLM says: {complaint}). Nothing was written. {fix}"
        )
    details = interpreter.get_input_details(0)
    raw = []
    for sample in _quantize_input(x, details):
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        raw.append(np.array(interpreter.get_output(0))[0])
    raw = np.stack(raw)
    return raw, _dequantize_output(raw, interpreter.get_output_details(0)), _arena_bytes(interpreter)


def _arena_bytes(interpreter: tflm.Interpreter) -> int | None:
    report = _with_stderr(interpreter.print_allocations)[1]
    match = re.search(r"Arena allocation total (\d+) bytes", report)
    return int(match.group(1)) if match else None


def _with_stderr(action: Callable[[], T]) -> tuple[T | RuntimeError, str]:
    """action()'s result, or the RuntimeError it raised, and what C++ code printed to stderr meanwhile: TFLM reports
    its arena use and why it cannot load a file there, not in its results or exceptions."""
    with tempfile.TemporaryFile(mode="w+b") as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            try:
                result = action()
            except RuntimeError as error:
                result = error
            ctypes.CDLL(None).fflush(None)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return result, capture.read().decode(errors="replace")
