"""The sparse int8 model for LiteRT: sparse (CSR) filters where they are smaller, runnable with LiteRT's defaults."""

from __future__ import annotations

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.export.conversion import convert_int8
from tf_ecqx.export.runtimes import run_litert
from tf_ecqx.export.verification import ExportError


def sparse_model(
    qmodel: keras.Model, dense: bytes, calibration: np.ndarray, float_io: bool, samples: np.ndarray, notes: list[str]
) -> bytes:
    """The sparse conversion with every filter whose CSR would be larger kept dense, checked to give the dense model's
    outputs in LiteRT; the dense model if that is not smaller. notes say what was stored how."""
    model = flatbuffer.load(convert_int8(qmodel, calibration, sparse=True, float_io=float_io))
    kept_dense = flatbuffer.densify_unprofitable(model, flatbuffer.load(dense))
    if kept_dense:
        notes.append(f"stored densely, CSR would be larger (below ~2/3 sparsity): {kept_dense}")
    detached = flatbuffer.detach_densified_int8_weights(model)
    data = flatbuffer.dump(model)
    stored = [t.name for t in flatbuffer.weight_tensors(model) if t.sparse]
    notes.append(f"sparse filters: {stored or 'none'}")
    if detached:
        notes.append(
            "int8 DENSIFY outputs fed through an identity RESHAPE so that LiteRT's default XNNPACK "
            "delegate runs the model (it fails to prepare int8 DENSIFY weights)"
        )
    if not np.array_equal(run_litert(data, samples, True)[0], run_litert(dense, samples, True)[0]):
        raise ExportError("The sparse model's outputs differ from the dense model's.")
    if len(data) >= len(dense):
        notes.append("the sparse conversion was not smaller than the dense one; wrote the dense file")
        return dense
    return data
