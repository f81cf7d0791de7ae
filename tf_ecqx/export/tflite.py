"""to_tflite: integer TFLite export of a QAT model for phones (LiteRT, optionally sparse or with packed INT4 filters)
and microcontrollers (TFLM), verified.

Every export checks itself: the int8 filters must hold exactly the ECQ codes (scale = step) or, where the converter
folded a BatchNorm into the kernel, the same zero pattern with at most 2^b values per output channel
(verification.py); the file is run in the target runtime and compared with the Keras QAT model. The parts:
inputs.py (checks), conversion.py (one dense conversion per model state), mobile.py (sparse), int4.py, micro.py
(TFLM encodings per filter within flash and RAM budgets; the encoders in tflm_encodings.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.export.conversion import MICRO_BATCH_SIZE, check_calibrated, dense_int8, input_step
from tf_ecqx.export.inputs import calibration_and_verification, sample_shape
from tf_ecqx.export.int4 import check_int4_request, pack_int4
from tf_ecqx.export.micro import FilterEncoding, check_budget, micro_model
from tf_ecqx.export.mobile import sparse_model
from tf_ecqx.export.runtimes import run_litert
from tf_ecqx.export.verification import MAX_RELATIVE_ERROR, KernelCheck, agreement, check_kernels, nudged_inputs
from tf_ecqx.files import atomic_write, check_writable
from tf_ecqx.quantization.kernels import quantized_kernels

TARGETS = ("mobile", "micro")
WEIGHT_DTYPES = ("int8", "int4")


@dataclass
class ExportResult:
    """What to_tflite wrote and what it verified."""

    path: Path
    target: str
    bytes: int
    kernels: list[KernelCheck]
    samples: int
    argmax_agreement: float  # fraction of samples whose argmax equals the Keras QAT model's
    max_abs_difference: float  # of dequantized outputs vs the Keras QAT model
    relative_error: float  # RMS difference / spread of the Keras outputs (an export above 0.2 fails, see sensitivity)
    sensitivity: float  # how far one int8 step on every input moves the Keras outputs (same measure; raises the 0.2)
    notes: list[str] = field(default_factory=list)
    arena_bytes: int | None = None  # micro only, as the TFLM interpreter reports it
    filters: list[FilterEncoding] = field(default_factory=list)  # micro only: each filter's encoding and bytes


def to_tflite(
    qmodel: keras.Model,
    path: str | os.PathLike,
    representative_data: np.ndarray | tf.data.Dataset | Iterable,
    target: Literal["mobile", "micro"] = "mobile",
    sparse: bool | None = None,
    float_io: bool = False,
    verification_data: np.ndarray | tf.data.Dataset | None = None,
    weight_dtype: Literal["int8", "int4"] = "int8",
    ram_budget: int | None = None,
    flash_budget: int | None = None,
) -> ExportResult:
    """Write an integer TFLite model of qmodel to `path`, verified in the target runtime.

    mobile: full-integer int8 for LiteRT; `sparse` (default True for int8) stores sparse filters (runs with LiteRT's
    default settings). weight_dtype="int4" (bits <= 4, dense filters) stores the filters LiteRT runs exactly as INT4
    packed two per byte (FULLY_CONNECTED with an even number of inputs; `notes` lists what was packed and why the
    rest stayed int8) and checks that LiteRT, with and without XNNPACK, gives the int8 file's raw outputs.
    micro: dense int8 where each filter is stored in the encoding stock TFLM decodes with the fewest bytes (none, LUT
    per channel, or per tensor where the filter has one scale, PRUNING, HUFFMAN; `filters` lists each one's choice
    and bytes). `ram_budget` / `flash_budget` (bytes) bound the arena TFLM allocates and the file: a filter whose
    decoding would push the arena past ram_budget stays dense (greedy, largest saving first), and ExportError names the
    smallest flash and RAM reachable when a budget cannot be met. The file is checked in the TFLM interpreter: every
    DECODE read back gives its int8 filter and the outputs equal the dense model's bit for bit.
    Input/output are int8 unless float_io. Verification runs on `verification_data` (default: the representative
    data, read once, so a generator serves both), up to 500 samples. qmodel must have one float input and one output,
    and the data batches of finite numbers of its input's shape; both are checked before anything is converted. A model
    whose input size is open (None, None, 3) is exported for the size of the representative data.
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not known; use one of {TARGETS}.")
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype={weight_dtype!r} is not known; use one of {WEIGHT_DTYPES}.")
    ram_budget, flash_budget = check_budget("ram_budget", ram_budget), check_budget("flash_budget", flash_budget)
    if target != "micro" and (ram_budget, flash_budget) != (None, None):
        raise ValueError(
            "ram_budget and flash_budget are for target='micro' (the TFLM arena and file); LiteRT on phones has no "
            "such budget here. Leave them unset for target='mobile'."
        )
    path = check_writable(path)
    if not any(True for _ in quantized_kernels(qmodel)):
        raise ValueError("qmodel has no ECQx-quantized kernel: pass the model returned by tf_ecqx.quantize_model.")
    shape = sample_shape(qmodel)
    if weight_dtype == "int4":
        check_int4_request(qmodel, target, sparse)
    sparse = weight_dtype == "int8" if sparse is None else sparse
    check_calibrated(qmodel)
    calibration, samples = calibration_and_verification(representative_data, verification_data, shape)

    dense = dense_int8(qmodel, calibration, float_io, MICRO_BATCH_SIZE if target == "micro" else None)
    checks = check_kernels(qmodel, flatbuffer.load(dense))
    notes: list[str] = []
    arena, filters = None, []
    reference = qmodel.predict(samples, verbose=0, batch_size=256)
    nudged_reference = qmodel.predict(nudged_inputs(samples, input_step(qmodel)), verbose=0, batch_size=256)
    if target == "micro":
        data, outputs, arena, filters = micro_model(dense, checks, samples, notes, ram_budget, flash_budget)
    else:
        data = dense
        if weight_dtype == "int4":
            data, checks = pack_int4(qmodel, dense, samples, checks, notes)
        elif sparse:
            data = sparse_model(qmodel, dense, calibration, float_io, samples, notes)
        _, outputs = run_litert(data, samples)
    compared = agreement(reference, outputs, nudged_reference)
    if compared.sensitivity > MAX_RELATIVE_ERROR:
        notes.append(
            f"One int8 step more or less on every input moves the Keras model's outputs by {compared.sensitivity:.0%} "
            f"of their spread (a model this sensitive amplifies rounding from layer to layer, as barely trained ones "
            f"do); the file's {compared.relative_error:.0%} was judged against that, so its agreement says less."
        )
    atomic_write(path, data)
    return ExportResult(
        path,
        target,
        len(data),
        checks,
        len(samples),
        compared.argmax,
        compared.max_abs_difference,
        compared.relative_error,
        compared.sensitivity,
        notes,
        arena,
        filters,
    )
