"""The sparse int8 model for LiteRT: sparse (CSR) filters where they are smaller, runnable with LiteRT's defaults."""

from __future__ import annotations

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.export.conversion import convert_int8
from tf_ecqx.export.runtimes import run_litert


def sparse_model(
    qmodel: keras.Model, dense: bytes, calibration: np.ndarray, float_io: bool, samples: np.ndarray, notes: list[str]
) -> bytes:
    """The sparse conversion with every filter whose CSR would be larger kept dense, checked to give the dense model's
    outputs in LiteRT (where it does not, the filters LiteRT reads sparse in place are stored densely, and if that
    does not help either the dense model is written); the dense model if that is not smaller. notes say what was
    stored how."""
    model = flatbuffer.load(convert_int8(qmodel, calibration, sparse=True, float_io=float_io))
    dense_model = flatbuffer.load(dense)
    kept_dense = flatbuffer.densify_unprofitable(model, dense_model)
    if kept_dense:
        notes.append(f"stored densely, CSR would be larger (below ~2/3 sparsity): {kept_dense}")
    detached = flatbuffer.detach_densified_int8_weights(model)
    if detached:
        notes.append(
            "int8 DENSIFY outputs fed through an identity RESHAPE so that LiteRT's default XNNPACK "
            "delegate runs the model (it fails to prepare int8 DENSIFY weights)"
        )
    dense_raw = run_litert(dense, samples, True)[0]
    data = flatbuffer.dump(model)
    if not np.array_equal(run_litert(data, samples, True)[0], dense_raw):
        in_place = flatbuffer.densify_read_in_place(model, dense_model)
        data = flatbuffer.dump(model)
        if not in_place or not np.array_equal(run_litert(data, samples, True)[0], dense_raw):
            notes.append("the sparse file's outputs differed from the dense file's in LiteRT; wrote the dense file")
            return dense
        notes.append(
            f"stored densely, LiteRT's sparse kernel reading them in place disagreed with the dense one: {in_place}"
        )
    stored = [t.name for t in flatbuffer.weight_tensors(model) if t.sparse]
    notes.append(f"sparse filters: {stored or 'none'}")
    if len(data) >= len(dense):
        notes.append("the sparse conversion was not smaller than the dense one; wrote the dense file")
        return dense
    return data
