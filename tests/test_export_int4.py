"""Packed INT4 filters in the mobile export, on real Fashion-MNIST: smaller file, INT4 tensors, LiteRT outputs equal."""

import numpy as np
import pytest
from conftest import small_cnn

import tf_ecqx
from tf_ecqx.export import ExportError, flatbuffer, int4, to_tflite
from tf_ecqx.export.runtimes import run_litert
from tf_ecqx.models import compile_for_classification

INT4, INT8 = flatbuffer.schema.TensorType.INT4, flatbuffer.schema.TensorType.INT8


@pytest.fixture(scope="module")
def float_model(fashion):
    """small_cnn (Conv2D, DepthwiseConv2D, two Dense) float-trained for one short epoch on real images."""
    train, _ = fashion
    model = compile_for_classification(small_cnn())
    model.fit(train.x[:4096], train.y[:4096], batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def qmodel(float_model, fashion):
    """3-bit ECQ (codes in [-4, 4], so every filter fits INT4), fine-tuned for one short epoch."""
    train, _ = fashion
    qmodel = compile_for_classification(tf_ecqx.quantize_model(float_model, bits=3, lambda_=0.2))
    qmodel.fit(train.x[4096:8192], train.y[4096:8192], batch_size=64, epochs=1, verbose=0)
    return qmodel


def _filters(data: bytes) -> tuple[flatbuffer.schema.ModelT, list[flatbuffer.WeightTensor]]:
    model = flatbuffer.load(data)
    return model, flatbuffer.weight_tensors(model)


def test_int4_file_is_smaller_holds_int4_filters_and_computes_like_the_int8_file(qmodel, fashion, tmp_path):
    train, test = fashion
    int8 = to_tflite(qmodel, tmp_path / "int8.tflite", train.x[:100], sparse=False, verification_data=test.x[:300])
    int4 = to_tflite(
        qmodel, tmp_path / "int4.tflite", train.x[:100], weight_dtype="int4", verification_data=test.x[:300]
    )
    int8_data, int4_data = int8.path.read_bytes(), int4.path.read_bytes()
    assert int4.bytes == len(int4_data) < int8.bytes

    model, filters = _filters(int4_data)
    types = {f.op: set() for f in filters}
    for f in filters:
        types[f.op].add(model.subgraphs[0].tensors[f.index].type)
    assert types == {"FULLY_CONNECTED": {INT4}, "CONV_2D": {INT8}, "DEPTHWISE_CONV_2D": {INT8}}
    # packed, the FULLY_CONNECTED filters hold 4 bits per value: half the bytes, the same values as the int8 file
    graph = model.subgraphs[0]
    _, int8_filters = _filters(int8_data)
    for packed, plain in zip(filters, int8_filters):
        np.testing.assert_array_equal(packed.values, plain.values)
        np.testing.assert_array_equal(packed.scales, plain.scales)
        if graph.tensors[packed.index].type == INT4:
            assert len(model.buffers[graph.tensors[packed.index].buffer].data) == (plain.values.size + 1) // 2
    assert all(c.kind == "exact" for c in int4.kernels)  # the codes check ran on the INT4 file
    assert any(n.startswith("INT4 filters, two values per byte") for n in int4.notes)
    assert any(n.startswith("kept int8") and "XNNPACK" in n for n in int4.notes)
    versions = {flatbuffer.op_name(model, op): model.operatorCodes[op.opcodeIndex].version for op in graph.operators}
    assert versions["FULLY_CONNECTED"] == flatbuffer.INT4_OP_VERSIONS["FULLY_CONNECTED"]

    # LiteRT with default settings (XNNPACK) and with builtin kernels only: raw int8 outputs equal the int8 file's
    for builtin_only in (False, True):
        np.testing.assert_array_equal(
            run_litert(int4_data, test.x[:300], builtin_only=builtin_only)[0],
            run_litert(int8_data, test.x[:300], builtin_only=builtin_only)[0],
        )
    assert int4.argmax_agreement == int8.argmax_agreement >= 0.95


def test_pack_int4_is_litert_layout_low_nibble_first():
    values = np.array([1, -2, 7, -8, 3], np.int8)
    packed = flatbuffer.pack_int4(values)
    assert packed == bytes([0xE1, 0x87, 0x03])  # element 2i in the low nibble of byte i; odd count: high nibble 0
    np.testing.assert_array_equal(flatbuffer.unpack_int4(packed, [5]), values)
    codes = np.random.default_rng(0).integers(-8, 8, (6, 7)).astype(np.int8)
    np.testing.assert_array_equal(flatbuffer.unpack_int4(flatbuffer.pack_int4(codes), codes.shape), codes)
    with pytest.raises(ValueError, match=r"INT4 holds values in \[-8, 7\]"):
        flatbuffer.pack_int4(np.array([8], np.int8))


def test_a_filter_with_code_plus_8_stays_int8_and_says_why():
    weight = flatbuffer.WeightTensor(
        "FULLY_CONNECTED", 0, "fc", np.array([[8, -7, 0, 1]], np.int8), np.ones(1, np.float32), False
    )
    assert "reach +8" in int4._int4_blocker(weight, packable=False)


def test_int4_export_is_refused_for_more_than_4_bits_sparse_and_micro(float_model, qmodel, fashion, tmp_path):
    x = fashion[0].x[:8]
    five_bit = tf_ecqx.quantize_model(float_model, bits=5, lambda_=0.2)
    with pytest.raises(ValueError, match=r"at most 4 bits.*\(5 bits\)"):
        to_tflite(five_bit, tmp_path / "m.tflite", x, weight_dtype="int4")
    with pytest.raises(ValueError, match="Pass sparse=False"):
        to_tflite(qmodel, tmp_path / "m.tflite", x, sparse=True, weight_dtype="int4")
    with pytest.raises(ValueError, match="weight_dtype='int4' is for target='mobile'"):
        to_tflite(qmodel, tmp_path / "m.tflite", x, target="micro", weight_dtype="int4")
    with pytest.raises(ValueError, match="weight_dtype='int2' is not known"):
        to_tflite(qmodel, tmp_path / "m.tflite", x, weight_dtype="int2")
    assert not (tmp_path / "m.tflite").exists()


def test_int4_conv_filters_would_change_xnnpack_outputs_and_the_export_names_them(
    qmodel, fashion, tmp_path, monkeypatch
):
    """Packing the CONV_2D / DEPTHWISE_CONV_2D filters too: XNNPACK leaves them to the builtin kernel, outputs change,
    and the export refuses, naming the operators."""
    train, test = fashion
    monkeypatch.setattr(int4, "_litert_int4_blocker", lambda weight: None)
    with pytest.raises(ExportError, match=r"default settings \(XNNPACK\).*\((DEPTHWISE_)?CONV_2D\): .* LSB") as error:
        to_tflite(qmodel, tmp_path / "m.tflite", train.x[:100], weight_dtype="int4", verification_data=test.x[:300])
    assert "FULLY_CONNECTED" not in str(error.value).split("do this alone:")[1]
    assert not (tmp_path / "m.tflite").exists()
