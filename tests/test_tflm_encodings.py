"""TFLM DECODE encodings (LUT, PRUNING, HUFFMAN) decoded by the real TFLM interpreter of the tflite_micro wheel."""

import numpy as np
import pytest
from tflite_micro import runtime as tflm
from tflite_micro.tensorflow.lite.micro.compression import lut, model_editor, spec
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from tf_ecqx.export.micro import with_decode
from tf_ecqx.export.tflm_encodings import ENCODINGS, Encoded, EncodingError, FilterLayout, decode, encode


def tflm_decoded(values: np.ndarray, layout: FilterLayout, encoded: Encoded) -> np.ndarray:
    """The tensor TFLM's DECODE operator writes: a model whose output is the encoded constant (one DECODE)."""
    constant = model_editor.Tensor(
        shape=values.shape,
        dtype=schema.TensorType.INT8,
        data=values,
        name="filter",
        quantization=model_editor.Quantization([0.5] * len(layout.zero_points), list(layout.zero_points), layout.axis),
    )
    dummy = model_editor.Tensor(shape=(1,), dtype=schema.TensorType.INT8, name="x")
    model = model_editor.Model(subgraphs=[model_editor.Subgraph(tensors=[dummy, constant], inputs=[dummy])])
    model.subgraphs[0].outputs = [constant]
    interpreter = tflm.Interpreter.from_bytes(with_decode(bytes(model.build()), {1: encoded}), arena_size=1 << 20)
    interpreter.invoke()
    return np.array(interpreter.get_output(0))


def filter_values(rng, layout: FilterLayout, bits: int, sparsity: float) -> np.ndarray:
    """Codes of a `bits`-bit grid, a `sparsity` fraction at the zero point of their channel."""
    count = int(np.prod(layout.shape))
    codes = rng.integers(-(2 ** (bits - 1)) + 1, 2 ** (bits - 1), count) if bits < 8 else rng.integers(-128, 128, count)
    zero = layout.element_zero_points()
    return np.where(rng.random(count) < sparsity, zero, codes).astype(np.int8).reshape(layout.shape)


LAYOUTS = {
    "conv, per channel, odd sizes": FilterLayout((5, 3, 3, 3), (0,) * 5, 0),
    "depthwise, channels last": FilterLayout((1, 3, 3, 7), (0,) * 7, 3),
    "dense, one scale": FilterLayout((11, 37), (0,), 0),
}


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_every_encoding_decodes_in_tflm_to_the_filter(bits, layout, rng):
    for sparsity in (0.0, 0.5, 0.9, 1.0):
        values = filter_values(rng, layout, bits, sparsity)
        for name in ENCODINGS:
            try:
                encoded = encode(name, values, layout)
            except EncodingError as error:
                # only a LUT can be refused: TFLM's index holds at most 7 bits
                assert name == "lut" and "at most 7 bits" in str(error)
                slices = np.moveaxis(values, layout.axis, 0) if layout.channels > 1 else [values]
                assert max(np.unique(s).size for s in slices) > 128
                continue
            assert np.array_equal(decode(encoded.data, encoded.ancillary, layout), values), (name, sparsity)
            assert np.array_equal(tflm_decoded(values, layout, encoded), values), (name, sparsity)


def test_single_value_filters_decode_in_tflm(rng):
    for layout in (FilterLayout((1,), (0,), 0), FilterLayout((4, 9), (0,) * 4, 0)):
        for value in (0, 3, -128):
            values = np.full(layout.shape, value, np.int8)
            for name in ENCODINGS:
                encoded = encode(name, values, layout)
                assert np.array_equal(tflm_decoded(values, layout, encoded), values), (name, value)
            # Huffman spends at least one bit per element, PRUNING one mask bit plus the kept values
            assert len(encode("huffman", values, layout).data) >= values.size / 8


@pytest.mark.parametrize("axis", [0, 1])
def test_pruning_uses_each_channels_int8_zero_point(axis, rng):
    layout = FilterLayout((4, 6), (3, -2, 0, 7) if axis == 0 else (1, -1, 2, -2, 5, -128), axis)
    values = filter_values(rng, layout, 4, 0.7)
    encoded = encode("pruning", values, layout)
    kept = int(np.sum(values.reshape(-1) != layout.element_zero_points()))
    assert len(encoded.ancillary) == 16 + kept and len(encoded.data) == 3  # 24 mask bits
    assert np.array_equal(tflm_decoded(values, layout, encoded), values)


def test_a_one_table_lut_on_a_per_channel_filter_decodes_garbage_and_is_caught():
    """Issue 16 item 3: TFLM takes the channel count from the tensor's scales, so a per-tensor LUT on a per-channel
    (BatchNorm-folded) filter decodes channel 0 right and the others from beyond the table."""
    layout = FilterLayout((3, 4), (0, 0, 0), 0)
    values = np.array([[1, 2, 3, 0], [-5, 4, 0, 0], [7, 7, -7, 0]], np.int8)
    tensor = model_editor.Tensor(shape=values.shape, dtype=schema.TensorType.INT8, data=values)
    one_table = lut.LutCompressor().compress(tensor, spec.LookUpTableCompression(3, spec.PerTensor()))
    wrong = Encoded("lut", bytes(one_table.encoded_data), bytes(one_table.ancillary_data))
    garbage = tflm_decoded(values, layout, wrong)
    assert np.array_equal(garbage[0], values[0]) and not np.array_equal(garbage, values)
    with pytest.raises(EncodingError, match="one-table LUT on a per-channel tensor"):
        decode(wrong.data, wrong.ancillary, layout)
    ours = encode("lut", values, layout)  # chosen by the number of scales: one table per channel
    assert len(ours.ancillary) == 16 + 3 * ours.ancillary[6]
    assert np.array_equal(tflm_decoded(values, layout, ours), values)


def test_huffman_stream_is_the_code_lengths_in_whole_words_and_cut_tensors_are_refused(rng):
    layout = FilterLayout((4000,), (0,), 0)
    values = filter_values(rng, layout, 4, 0.8)
    encoded = encode("huffman", values, layout)
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    entropy_bytes = -(p * np.log2(p)).sum() * values.size / 8
    assert entropy_bytes <= len(encoded.data) <= entropy_bytes + values.size / 8 + 8  # Huffman: < H + 1 bit/symbol
    assert len(encoded.data) % 4 == 0 and encoded.ancillary[4] == 1
    with pytest.raises(EncodingError, match="past the end"):
        decode(encoded.data[:-4], encoded.ancillary, layout)
    for name in ("lut", "pruning"):  # a cut index or mask tensor is refused too
        encoded = encode(name, values, layout)
        with pytest.raises(EncodingError, match=f"the {name} decoder reads"):
            decode(encoded.data[:-1], encoded.ancillary, layout)


def test_unknown_encoding_and_unsupported_axis_are_refused():
    layout = FilterLayout((2, 3, 4), (0, 0, 0), 1)
    with pytest.raises(EncodingError, match="channel axis 0 or the last"):
        encode("pruning", np.zeros((2, 3, 4), np.int8), layout)
    with pytest.raises(ValueError, match="encoding='zip' is not known"):
        encode("zip", np.zeros((2, 3, 4), np.int8), FilterLayout((2, 3, 4), (0,), 0))
