"""The entropy-coded bitstream: bit-exact round trips, size near or below the codes' entropy, refusal of bad files and
of mismatching models, and loading into QAT and plain models. Crafted files here are version 1 (whose reading must stay
as defensive); test_context_model.py crafts version-2 files and covers the context model."""

import contextlib
import struct
import time
import tracemalloc
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import constriction
import numpy as np
import pytest
from conftest import small_cnn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.export import BitstreamError, DecodedLayer, decode, encode, encode_layers, load_into, save
from tf_ecqx.export.container import CRC, MAGIC, PREAMBLE, _code_model, _varint, read_headers
from tf_ecqx.models import compile_for_classification
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.report import code_entropy

LAMBDA = 0.2
CODER_OVERHEAD_BYTES = 8  # at most two 32-bit words of coder state per layer


@pytest.fixture(scope="module")
def trained(fashion_small):
    """A float small_cnn and its 4-bit QAT model, fine-tuned for one short epoch on real Fashion-MNIST."""
    train, _ = fashion_small
    keras.utils.set_random_seed(0)
    float_model = small_cnn(residual=True)
    qmodel = compile_for_classification(tf_ecqx.quantize_model(float_model, bits=4, lambda_=LAMBDA))
    qmodel.fit(train.x, train.y, batch_size=64, epochs=1, verbose=0)
    return float_model, qmodel


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("bitstream") / "model.ecqx"
    save(trained[1], path)
    return path


def payload_bytes(layer: DecodedLayer) -> int:
    return len(read_headers(encode_layers([layer]), 2**28)[0].payload)


def entropy_bytes(codes: np.ndarray) -> float:
    return codes.size * code_entropy(codes) / 8


def bits_of(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float32).view(np.uint32)


def synthetic_layer(name: str, codes: np.ndarray, bits: int = 4, step: float = 0.01) -> DecodedLayer:
    half = 2 ** (bits - 1)
    return DecodedLayer(name, bits, np.float32(step), max(-half, -127), half - 1, codes.astype(np.int32))


def all_weights(model: keras.Model) -> list[np.ndarray]:
    return [w.numpy().copy() for w in model.weights]


# --- round trips and size on a trained model ---


def test_round_trip_is_bit_exact(trained, saved):
    kernels = list(quantized_kernels(trained[1]))
    layers = decode(saved.read_bytes())
    assert [layer.name for layer in layers] == [k.layer_name for k in kernels]
    for layer, kernel in zip(layers, kernels, strict=True):
        assert layer.shape == tuple(kernel.kernel.shape)
        assert layer.bits == kernel.settings.bits == 4
        assert bits_of(layer.step) == bits_of(kernel.state["step"].numpy())
        np.testing.assert_array_equal(layer.codes, kernel.codes().numpy())
        np.testing.assert_array_equal(bits_of(layer.values), bits_of(kernel.values().numpy()))


def test_payload_within_one_percent_of_entropy_and_small_header(trained):
    codes = [k.codes().numpy() for k in quantized_kernels(trained[1])]
    data = encode(trained[1])
    payload = sum(len(header.payload) for header in read_headers(data, 2**28))
    bound = sum(entropy_bytes(c) for c in codes)
    assert len(codes) == 5  # every Dense/Conv kernel of small_cnn(residual=True)
    assert payload <= 1.01 * bound
    assert len(data) - payload < 1024


# --- property tests on synthetic layers ---

names = st.text(min_size=1, max_size=24)
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9)


@st.composite
def layers(draw) -> DecodedLayer:
    bits = draw(st.integers(2, 8))
    half = 2 ** (bits - 1)
    k_min, k_max = draw(st.sampled_from([(-half, half - 1), (-half + 1, half), (0, min(2 * half - 1, 127))]))
    k_min, k_max = max(k_min, -127), min(k_max, 127)
    codes = draw(hnp.arrays(np.int32, shapes, elements=st.integers(k_min, k_max)))
    step = draw(st.floats(2.0**-20, 16.0, width=32))
    return DecodedLayer(draw(names), bits, np.float32(step), k_min, k_max, codes)


@settings(max_examples=60, deadline=None)
@given(st.lists(layers(), max_size=4, unique_by=lambda layer: layer.name))
def test_decode_inverts_encode_layers(originals):
    decoded = decode(encode_layers(originals))
    assert len(decoded) == len(originals)
    for a, b in zip(originals, decoded, strict=True):
        assert (b.name, b.shape, b.bits, b.k_min, b.k_max) == (a.name, a.shape, a.bits, a.k_min, a.k_max)
        assert bits_of(b.step) == bits_of(a.step)
        np.testing.assert_array_equal(b.codes, a.codes)
        np.testing.assert_array_equal(bits_of(b.values), bits_of(a.values))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 20_000),
    levels=st.integers(1, 16),
    concentration=st.sampled_from([0.05, 0.3, 1.0, 5.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_payload_stays_near_the_entropy_bound(n, levels, concentration, seed):
    rng = np.random.default_rng(seed)
    codes = rng.choice(levels, size=n, p=rng.dirichlet(np.full(levels, concentration))) - levels // 2
    layer = synthetic_layer("dense", codes, bits=4)
    assert payload_bytes(layer) <= 1.01 * entropy_bytes(codes) + CODER_OVERHEAD_BYTES
    np.testing.assert_array_equal(decode(encode_layers([layer]))[0].codes, codes)


def test_a_single_code_costs_no_payload():
    assert payload_bytes(synthetic_layer("dense", np.zeros((64, 32), np.int32))) == 0


def test_encode_layers_refuses_codes_outside_the_grid_and_duplicate_names():
    with pytest.raises(ValueError, match="grid"):
        encode_layers([synthetic_layer("a", np.array([9]), bits=4)])
    with pytest.raises(ValueError, match="unique"):
        encode_layers([synthetic_layer("a", np.zeros(3)), synthetic_layer("a", np.zeros(3))])


# --- bad files ---


@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    rng = np.random.default_rng(1)
    return encode_layers([synthetic_layer(f"layer{i}", rng.integers(-3, 4, size=(40, 8))) for i in range(3)])


def test_bitstream_error_is_a_value_error():
    assert issubclass(BitstreamError, ValueError)


def test_corrupt_file_is_refused(good_bytes):
    damaged = bytearray(good_bytes)
    damaged[len(damaged) // 2] ^= 0x10
    with pytest.raises(BitstreamError, match="corrupt: CRC32 mismatch.*save"):
        decode(bytes(damaged))


@pytest.mark.parametrize("end", [0, 3, 10, 200, -1])
def test_truncated_file_is_refused(good_bytes, end):
    with pytest.raises(BitstreamError, match="truncated"):
        decode(good_bytes[:end])


def test_appended_bytes_are_refused(good_bytes):
    with pytest.raises(BitstreamError, match="extra bytes"):
        decode(good_bytes + b"\0")


@pytest.mark.parametrize("data", [b"PK\x03\x04" + bytes(40), b"\x89HDF\r\n\x1a\n", b"hello world"])
def test_foreign_file_is_refused(data):
    with pytest.raises(BitstreamError, match="Not an ECQx bitstream.*tf_ecqx.export.save"):
        decode(data)


@pytest.mark.parametrize("version", [0, 3, 255])
def test_other_format_version_is_refused(good_bytes, version):
    other = good_bytes[:4] + bytes([version]) + good_bytes[5:]
    with pytest.raises(BitstreamError, match=f"version {version} cannot be read.*reads versions 1, 2"):
        decode(other)


def fixture_layers() -> list[DecodedLayer]:
    """The layers tests/data/v1.ecqx holds: written by the version-1 encoder (before version 2 existed)."""

    def codes(shape: tuple[int, ...], levels: int, offset: int) -> np.ndarray:
        n = int(np.prod(shape))
        return ((np.arange(n, dtype=np.int64) * 2654435761 >> 5) % levels - offset).reshape(shape)

    dense = codes((12, 10), 7, 3)
    dense[3] = 0
    return [
        DecodedLayer("dense", 4, np.float32(0.03125), -8, 7, dense),
        DecodedLayer("conv", 3, np.float32(0.5), -4, 3, codes((3, 3, 2, 4), 8, 4)),
        DecodedLayer("bias", 8, np.float32(1e-3), -127, 127, codes((33,), 255, 127)),
        DecodedLayer("zeros", 2, np.float32(2.0), -2, 1, np.zeros((5, 7), np.int64)),
    ]


def test_a_version_1_file_still_decodes_bit_exactly():
    data = (Path(__file__).parent / "data" / "v1.ecqx").read_bytes()
    assert data[4] == 1
    for a, b, header in zip(fixture_layers(), decode(data), read_headers(data, 2**28), strict=True):
        assert (b.name, b.shape, b.bits, b.k_min, b.k_max) == (a.name, a.shape, a.bits, a.k_min, a.k_max)
        assert bits_of(b.step) == bits_of(a.step)
        np.testing.assert_array_equal(b.codes, a.codes)
        assert header.payload == (ans_payload(a.codes) if np.unique(a.codes).size > 1 else b"")  # crafting as written


def test_load_into_refuses_a_corrupt_file_and_changes_nothing(trained, saved, tmp_path):
    plain = tf_ecqx.strip(trained[1])
    before = all_weights(plain)
    damaged = bytearray(saved.read_bytes())
    damaged[-10] ^= 0xFF
    (tmp_path / "bad.ecqx").write_bytes(bytes(damaged))
    with pytest.raises(BitstreamError, match="corrupt"):
        load_into(plain, tmp_path / "bad.ecqx")
    for a, b in zip(before, all_weights(plain), strict=True):
        np.testing.assert_array_equal(a, b)


# --- crafted version-1 files: CRC-valid, with header fields no writer produces ---

CRAFT_CODES = np.array([[0, 1, 1, 0], [-1, 1, 0, 0]])


def container(*records: bytes, version: int = 1) -> bytes:
    """A container around raw layer records, its length and CRC computed as the writer does."""
    body = _varint(len(records)) + b"".join(records)
    head = PREAMBLE.pack(MAGIC, version, PREAMBLE.size + len(body) + CRC.size)
    return head + body + CRC.pack(zlib.crc32(head + body))


def ans_payload(codes: np.ndarray) -> bytes:
    """The version-1 payload of these codes: ANS-coded under their counts, as the version-1 encoder wrote it."""
    lo, counts = _code_model(codes)
    present = np.flatnonzero(counts)
    symbols = np.searchsorted(present, codes.reshape(-1).astype(np.int64) - lo).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, constriction.stream.model.Categorical(counts[present].astype(float), perfect=False))
    raw = coder.get_compressed().astype("<u4").tobytes()
    return raw[: max(len(raw.rstrip(b"\0")), len(raw) - 3)]


def record(
    name: bytes = b"fc",
    shape: tuple[int, ...] = (2, 4),
    rank: int | None = None,
    bits: int = 4,
    step: float = 0.5,
    grid: tuple[int, int] = (-8, 7),
    occurring: tuple[int, int] = (-1, 1),
    counts: tuple[int, ...] = (1, 4, 3),
    payload: bytes | None = None,
) -> bytes:
    """One version-1 layer record, field by field in the order of the format; the defaults describe CRAFT_CODES."""
    if payload is None:
        payload = ans_payload(CRAFT_CODES)
    return b"".join(
        [
            _varint(len(name)),
            name,
            struct.pack("<B", len(shape) if rank is None else rank),
            *(_varint(d) for d in shape),
            struct.pack("<Bfbbbb", bits, step, *grid, *occurring),
            *(_varint(c) for c in counts),
            _varint(len(payload)),
            payload,
        ]
    )


def test_crafted_defaults_decode_to_the_craft_codes():
    np.testing.assert_array_equal(decode(container(record()))[0].codes, CRAFT_CODES)


ZEROS = {"occurring": (0, 0), "counts": (8,), "payload": b""}  # all codes 0: a single code, no payload
HOSTILE = {
    "step nan": (record(step=float("nan")), "step must be a finite float32 > 0, got nan"),
    "step inf": (record(step=float("inf")), "step must be a finite float32 > 0, got inf"),
    "step -1": (record(step=-1.0), "step must be a finite float32 > 0, got -1.0"),
    "step 0": (record(step=0.0), "step must be a finite float32 > 0, got 0.0"),
    "step overflows at the grid's end": (record(step=3e38), "step 3.* times level 8 must fit float32"),
    "bits 0": (record(bits=0), "bits must be an integer from 2 to 8, got 0"),
    "bits 1": (record(bits=1), "bits must be an integer from 2 to 8, got 1"),
    "bits 9": (record(bits=9), "bits must be an integer from 2 to 8, got 9"),
    "bits 200": (record(bits=200), "bits must be an integer from 2 to 8, got 200"),
    "k_min > 0": (record(grid=(1, 7), occurring=(1, 1), counts=(8,), payload=b""), r"grid \[1, 7\] must contain 0"),
    "k_max < 0": (record(grid=(-8, -1), occurring=(-1, -1), counts=(8,), payload=b""), "must contain 0"),
    "grid wider than bits": (record(bits=2), r"grid \[-8, 7\] must have at most 2\*\*2 = 4 levels at 2 bits"),
    "rank 100": (record(shape=(1,) * 98 + (2, 4)), "rank must be at most 8, got 100"),
    "varint of 2**70": (record(shape=(2**70,), **ZEROS), "varint at byte 18 is longer than 10 bytes"),
    "varint of 2**64": (record(shape=(2**64,), **ZEROS), "varint at byte 18 exceeds 64 bits"),
    "zero ANS word": (record(payload=bytes(4)), "payload of layer 'fc' cannot be decoded"),
    "payload shorter than its entropy": (
        record(shape=(1024,), occurring=(0, 1), counts=(512, 512), payload=b"\x01" * 100),
        "100-byte payload; the entropy of its 1024 codes needs at least 119 bytes",
    ),
    "payload for a single code": (record(**{**ZEROS, "payload": b"\x01"}), "single code, which needs no payload"),
    "name not UTF-8": (record(name=b"\xff"), r"layer name b'\\xff' is not UTF-8"),
}


@pytest.mark.parametrize("fields, message", HOSTILE.values(), ids=HOSTILE.keys())
def test_crafted_file_is_refused_as_malformed(fields, message):
    with pytest.raises(BitstreamError, match=f"malformed although its checksum matches.*{message}.*save"):
        decode(container(fields))


def test_repeated_layer_names_are_refused():
    with pytest.raises(BitstreamError, match=r"layer names \['fc'\] occur more than once"):
        decode(container(record(), record()))


@contextlib.contextmanager
def traced() -> Iterator[dict[str, float]]:
    """The cost of the enclosed block: peak bytes allocated as tracemalloc sees them, and seconds (which also catch
    what tracemalloc misses, such as constriction's allocations)."""
    cost = {}
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost["seconds"] = time.perf_counter() - start
        cost["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


BIG = {
    "2**28 codes, 4-byte payload": (
        record(shape=(2**28,), occurring=(0, 1), counts=(2**27, 2**27), payload=b"\x01\0\0\0"),
        "4-byte payload; the entropy of its 268435456 codes needs at least 33423352 bytes",
    ),
    "2**36 codes of one value": (
        record(shape=(2**36,), occurring=(0, 0), counts=(2**36,), payload=b""),
        "declares 68719476736 weights, more than max_weights=268435456 .* pass max_weights=68719476736",
    ),
}


@pytest.mark.parametrize("fields, message", BIG.values(), ids=BIG.keys())
def test_huge_declared_sizes_are_refused_fast_and_without_allocating(fields, message):
    data = container(fields)
    assert len(data) < 60
    with traced() as cost, pytest.raises(BitstreamError, match=message):
        decode(data)
    assert cost["peak"] < 2**20 and cost["seconds"] < 1.0


def test_a_single_code_layer_decodes_without_a_byte_per_weight():
    data = container(record(shape=(2**14, 2**14), occurring=(3, 3), counts=(2**28,), payload=b""))
    with traced() as cost:
        (layer,) = decode(data)
    assert cost["peak"] < 2**20
    assert layer.shape == (2**14, 2**14)
    np.testing.assert_array_equal(layer.codes[::4096, ::4096], np.full((4, 4), 3))


def test_max_weights_caps_the_weights_a_file_declares_and_can_be_raised():
    data = encode_layers([synthetic_layer("a", np.zeros((64, 32))), synthetic_layer("b", np.ones(16))])
    with pytest.raises(BitstreamError, match=r"declares 2064 weights, more than max_weights=2063 .* max_weights=2064"):
        decode(data, max_weights=2063)
    assert [layer.shape for layer in decode(data, max_weights=2064)] == [(64, 32), (16,)]


def test_decoded_codes_are_read_only_int8(good_bytes):
    for layer in decode(good_bytes):
        assert layer.codes.dtype == np.int8 and not layer.codes.flags.writeable


@pytest.mark.parametrize(
    "layer, message",
    [
        (DecodedLayer("a", 2, np.float32(0.5), -8, 7, np.zeros(4, np.int32)), r"at most 2\*\*2 = 4 levels"),
        (DecodedLayer("a", 4, np.float32(0.5), -8, 7, np.zeros((1,) * 9, np.int32)), "rank must be at most 8"),
        (DecodedLayer("a", 4, np.float32(3e38), -8, 7, np.zeros(4, np.int32)), "times level 8 must fit float32"),
    ],
)
def test_encode_layers_refuses_what_decode_would_refuse(layer, message):
    with pytest.raises(ValueError, match=message):
        encode_layers([layer])


def test_load_into_fresh_qat_model_reproduces_codes(trained, saved):
    fresh = tf_ecqx.quantize_model(keras.models.clone_model(trained[0]), bits=4, lambda_=LAMBDA)
    factors = {k.layer_name: float(k.state["size_factor"].numpy()) for k in quantized_kernels(fresh)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a layer may need nearest-level rounding; tested below
        load_into(fresh, saved)
    for layer, kernel in zip(decode(saved.read_bytes()), quantized_kernels(fresh), strict=True):
        np.testing.assert_array_equal(kernel.codes().numpy(), layer.codes)
        np.testing.assert_array_equal(bits_of(kernel.values().numpy()), bits_of(layer.values))
        np.testing.assert_array_equal(bits_of(kernel.kernel.numpy()), bits_of(layer.values))
        assert (kernel.state["k_min"].numpy(), kernel.state["k_max"].numpy()) == (layer.k_min, layer.k_max)
        assert float(kernel.state["size_factor"].numpy()) in (factors[layer.name], 0.0)


def dense_qat_model() -> keras.Model:
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, name="fc")])
    return tf_ecqx.quantize_model(model, bits=4, lambda_=LAMBDA)


def load_codes(qmodel: keras.Model, codes: np.ndarray, tmp_path) -> None:
    (tmp_path / "fc.ecqx").write_bytes(encode_layers([synthetic_layer("fc", codes.reshape(64, 32))]))
    load_into(qmodel, tmp_path / "fc.ecqx")


def test_load_into_qat_keeps_the_size_factor_when_ecq_keeps_the_codes(tmp_path):
    qmodel = dense_qat_model()
    codes = np.random.default_rng(2).choice([-2, 0, 2], size=64 * 32, p=[0.25, 0.5, 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_codes(qmodel, codes, tmp_path)
    kernel = next(quantized_kernels(qmodel))
    assert float(kernel.state["size_factor"].numpy()) == 1.0
    np.testing.assert_array_equal(kernel.codes().numpy().reshape(-1), codes)


def test_load_into_qat_rounds_to_nearest_where_ecq_would_reassign_rare_codes(tmp_path):
    qmodel = dense_qat_model()
    codes = np.random.default_rng(3).choice([-3, -1, 0, 1, 3], size=64 * 32, p=[0.2, 0.002, 0.596, 0.002, 0.2])
    with pytest.warns(UserWarning, match=r"\['fc'\].*nearest level"):
        load_codes(qmodel, codes, tmp_path)
    kernel = next(quantized_kernels(qmodel))
    assert float(kernel.state["size_factor"].numpy()) == 0.0
    np.testing.assert_array_equal(kernel.codes().numpy().reshape(-1), codes)


def kernel_variable(layer: keras.layers.Layer):
    return layer.depthwise_kernel if isinstance(layer, keras.layers.DepthwiseConv2D) else layer.kernel


def test_load_into_stripped_model_sets_the_kernels(trained, saved):
    plain = tf_ecqx.strip(trained[1])
    stripped = {layer.name: kernel_variable(layer).numpy() for layer in plain.layers if layer.weights}
    for variable in plain.weights:
        variable.assign(np.zeros(variable.shape, np.float32))
    load_into(plain, saved)
    layers = decode(saved.read_bytes())
    for layer in layers:
        kernel = kernel_variable(plain.get_layer(layer.name)).numpy()
        np.testing.assert_array_equal(bits_of(kernel), bits_of(layer.values))
        np.testing.assert_array_equal(bits_of(kernel), bits_of(stripped[layer.name]))
    loaded = {id(kernel_variable(plain.get_layer(layer.name))) for layer in layers}
    assert not any(v.numpy().any() for v in plain.weights if id(v) not in loaded)


def narrower_model(float_model: keras.Model) -> keras.Model:
    """The same layer names with a narrower first Dense layer, so two kernel shapes differ."""
    config = float_model.get_config()
    dense = next(layer for layer in config["layers"] if layer["class_name"] == "Dense")
    dense["config"]["units"] = 16
    return keras.Model.from_config(config)


@pytest.mark.parametrize("kind", ["qat", "plain"])
def test_load_into_mismatching_model_is_refused_and_changes_nothing(trained, saved, kind):
    other = narrower_model(trained[0])
    if kind == "qat":
        other = tf_ecqx.quantize_model(other, bits=4, lambda_=LAMBDA)
    first, second = [layer.name for layer in decode(saved.read_bytes())][-2:]  # the two Dense layers
    before = all_weights(other)
    with pytest.raises(ValueError, match=rf"nothing was changed.*\n  - {first}: kernel shape .*\n  - {second}: kernel"):
        load_into(other, saved)
    for a, b in zip(before, all_weights(other), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_into_qat_model_with_other_layers_lists_them(saved):
    qmodel = dense_qat_model()
    with pytest.raises(ValueError) as error:
        load_into(qmodel, saved)
    message = str(error.value)
    assert "fc: quantized in the model, not in the file" in message
    for layer in decode(saved.read_bytes()):
        assert f"{layer.name}: in the file, not an ECQx-quantized layer of the model" in message


# --- loading crafted files ---


def plain_dense_model() -> keras.Model:
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, name="fc")])


FC_ZEROS = {"shape": (64, 32), "occurring": (0, 0), "counts": (2048,), "payload": b""}
HOSTILE_FOR_FC = {
    "step nan": (record(**FC_ZEROS, step=float("nan")), "step must be a finite float32 > 0, got nan"),
    "step 0": (record(**FC_ZEROS, step=0.0), "step must be a finite float32 > 0, got 0.0"),
    "bits 200": (record(**FC_ZEROS, bits=200), "bits must be an integer from 2 to 8, got 200"),
    "zero ANS word": (
        record(shape=(64, 32), occurring=(0, 1), counts=(2047, 1), payload=bytes(4)),
        "payload of layer 'fc' cannot be decoded",
    ),
}


@pytest.mark.parametrize("kind", ["qat", "plain"])
@pytest.mark.parametrize("fields, message", HOSTILE_FOR_FC.values(), ids=HOSTILE_FOR_FC.keys())
def test_load_into_refuses_a_hostile_file_and_changes_nothing(tmp_path, kind, fields, message):
    model = dense_qat_model() if kind == "qat" else plain_dense_model()
    before = all_weights(model)
    (tmp_path / "hostile.ecqx").write_bytes(container(fields))
    with pytest.raises(BitstreamError, match=message):
        load_into(model, tmp_path / "hostile.ecqx")
    for a, b in zip(before, all_weights(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_into_compares_the_headers_with_the_model_before_decoding_payloads(tmp_path):
    undecodable = record(name=b"other", shape=(64, 32), occurring=(0, 1), counts=(2047, 1), payload=bytes(4))
    (tmp_path / "other.ecqx").write_bytes(container(undecodable))
    with pytest.raises(ValueError, match="nothing was changed.*\n  - other: in the file, not a layer with a kernel"):
        load_into(plain_dense_model(), tmp_path / "other.ecqx")


def test_load_into_reads_a_version_1_file(tmp_path):
    codes = np.random.default_rng(4).choice([-2, 0, 1], size=(64, 32), p=[0.2, 0.7, 0.1])
    counts = tuple(np.bincount(codes.reshape(-1) + 2).tolist())
    v1 = record(shape=(64, 32), occurring=(-2, 1), counts=counts, payload=ans_payload(codes))
    (tmp_path / "v1.ecqx").write_bytes(container(v1))
    model = plain_dense_model()
    load_into(model, tmp_path / "v1.ecqx")
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), codes.astype(np.float32) * np.float32(0.5))


def test_load_into_passes_max_weights_on(tmp_path):
    model = plain_dense_model()
    (tmp_path / "fc.ecqx").write_bytes(encode_layers([synthetic_layer("fc", np.ones((64, 32)))]))
    with pytest.raises(BitstreamError, match="max_weights=2047"):
        load_into(model, tmp_path / "fc.ecqx", max_weights=2047)
    load_into(model, tmp_path / "fc.ecqx", max_weights=2048)
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), np.full((64, 32), np.float32(0.01)))
