"""to_tflite(target="micro"): the encoding of each filter, flash and RAM budgets, and the checks of the written file."""

import re

import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.compression import lut, model_editor, spec
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

import tf_ecqx
from tf_ecqx.export import ExportError, flatbuffer, to_tflite
from tf_ecqx.export.conversion import MICRO_BATCH_SIZE, dense_int8
from tf_ecqx.export.micro import check_decoded, with_decode
from tf_ecqx.export.runtimes import run_tflm
from tf_ecqx.export.tflm_encodings import Encoded
from tf_ecqx.models import compile_for_classification


@pytest.fixture(scope="module")
def bn_qmodel(trained_bn_cnn, fashion_small):
    """A small CNN with a BatchNorm the converter folds into per-channel int8 filters, ECQ 4 bit, briefly trained."""
    train, _ = fashion_small
    qmodel = compile_for_classification(tf_ecqx.quantize_model(trained_bn_cnn, bits=4, lambda_=0.5))
    qmodel.fit(train.x, train.y, batch_size=64, epochs=1, verbose=0)
    return qmodel


@pytest.fixture(scope="module")
def unbudgeted(bn_qmodel, fashion_small, tmp_path_factory):
    train, test = fashion_small
    path = tmp_path_factory.mktemp("micro") / "m.tflite"
    return to_tflite(bn_qmodel, path, train.x[:64], target="micro", verification_data=test.x[:32])


def test_each_filter_gets_its_smallest_runnable_encoding(unbudgeted, bn_qmodel, fashion_small):
    result = unbudgeted
    assert [f.layer for f in result.filters] == [c.layer for c in result.kernels]
    for f in result.filters:
        assert f.bytes == f.options[f.encoding]
        if f.encoding != "none":
            assert f.bytes == min(f.options.values()) < f.options["none"]
        elif len(f.options) > 1:  # a DECODE operator and its tensors cost more than a tiny filter saves
            assert "cost more flash than the encoding saves" in f.note
    assert any(f.encoding != "none" for f in result.filters)
    data = result.path.read_bytes()
    model = flatbuffer.load(data)
    assert flatbuffer.count_ops(model, "CUSTOM") == sum(f.encoding != "none" for f in result.filters)
    # the written file runs in TFLM and gives the dense int8 model's outputs bit for bit, in the arena it reports
    train, test = fashion_small
    dense = dense_int8(bn_qmodel, train.x[:64], batch_size=MICRO_BATCH_SIZE)
    raw, _, arena = run_tflm(data, test.x[:32], arena_size=1 << 22)
    assert np.array_equal(raw, run_tflm(dense, test.x[:32])[0])
    assert arena == result.arena_bytes > run_tflm(dense, test.x[:1])[2]  # decoded filters live in the arena
    assert result.bytes < len(dense) - sum(f.options["none"] - f.bytes for f in result.filters) + 4096
    assert any("DECODE outputs read back equal" in note for note in result.notes)


def test_a_ram_budget_keeps_filters_dense_and_says_which(unbudgeted, bn_qmodel, fashion_small, tmp_path):
    train, test = fashion_small
    budget = unbudgeted.arena_bytes - 1
    result = to_tflite(
        bn_qmodel, tmp_path / "m.tflite", train.x[:64], "micro", verification_data=test.x[:32], ram_budget=budget
    )
    assert result.arena_bytes <= budget and result.bytes > unbudgeted.bytes
    assert any(f.encoding == "none" and f"exceed ram_budget={budget} B" in f.note for f in result.filters)
    same = to_tflite(
        bn_qmodel,
        tmp_path / "n.tflite",
        train.x[:64],
        "micro",
        verification_data=test.x[:32],
        ram_budget=unbudgeted.arena_bytes,
        flash_budget=np.int64(unbudgeted.bytes),
    )
    assert same.bytes == unbudgeted.bytes and same.arena_bytes == unbudgeted.arena_bytes


@pytest.mark.parametrize("budgets", [{"ram_budget": 1000}, {"flash_budget": 1000}])
def test_a_budget_nothing_meets_names_the_smallest_flash_and_ram_and_writes_nothing(
    budgets, unbudgeted, bn_qmodel, fashion_small, tmp_path
):
    train, test = fashion_small
    with pytest.raises(ExportError, match="No micro file meets") as error:
        to_tflite(bn_qmodel, tmp_path / "m.tflite", train.x[:64], "micro", verification_data=test.x[:32], **budgets)
    message = str(error.value)
    assert f"Smallest flash reachable: {unbudgeted.bytes} B (arena {unbudgeted.arena_bytes} B)" in message
    dense_arena = int(re.search(r"smallest RAM: arena (\d+) B", message).group(1))
    assert 1000 < dense_arena < unbudgeted.arena_bytes
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize(
    "value,match",
    [
        (-5, "cannot be met"),
        (0, "cannot be met"),
        ("64k", "not a number of bytes"),
        (1.5, "not a number of bytes"),
        (True, "not a number of bytes"),
    ],
)
@pytest.mark.parametrize("name", ["ram_budget", "flash_budget"])
def test_bad_budgets_are_refused_before_any_work(name, value, match, bn_qmodel, tmp_path):
    with pytest.raises(ValueError, match=f"{name}=.*{match}"):
        to_tflite(bn_qmodel, tmp_path / "m.tflite", np.zeros((4, 28, 28, 1), np.float32), "micro", **{name: value})
    with pytest.raises(ValueError, match="are for target='micro'"):
        to_tflite(bn_qmodel, tmp_path / "m.tflite", np.zeros((4, 28, 28, 1), np.float32), "mobile", **{name: 4096})
    assert not (tmp_path / "m.tflite").exists()


def test_a_one_table_lut_on_a_batchnorm_folded_filter_fails_the_export_check(bn_qmodel, fashion_small):
    """Issue 16 item 3 at the file level: the folded conv filter has a scale per channel; a per-tensor LUT for it
    (what the exporter wrote when it chose by 'exact' codes) decodes garbage in TFLM, and check_decoded says so."""
    dense = dense_int8(bn_qmodel, fashion_small[0].x[:64], batch_size=MICRO_BATCH_SIZE)
    model = flatbuffer.load(dense)
    folded = next(w for w in flatbuffer.weight_tensors(model) if w.op == "CONV_2D")
    assert folded.scales.size > 1 and len(set(folded.scales.tolist())) > 1
    tensor = model_editor.Tensor(shape=folded.values.shape, dtype=schema.TensorType.INT8, data=folded.values)
    bits = int(np.unique(folded.values).size - 1).bit_length()
    one_table = lut.LutCompressor().compress(tensor, spec.LookUpTableCompression(bits, spec.PerTensor()))
    data = with_decode(
        dense, {folded.index: Encoded("lut", bytes(one_table.encoded_data), bytes(one_table.ancillary_data))}
    )
    sample = fashion_small[1].x[:16]
    assert not np.array_equal(run_tflm(data, sample, 1 << 22)[0], run_tflm(dense, sample)[0])
    with pytest.raises(ExportError, match=f"DECODE of filter '{folded.name}'"):
        check_decoded(data, {folded.name: folded.values})


def test_micro_sizes_compare_each_encoding_alone_with_the_choice(bn_qmodel, fashion_small, unbudgeted):
    from tf_ecqx.sizes import format_micro_table, micro_sizes

    rows = {row.encoding: row for row in micro_sizes(bn_qmodel, fashion_small[0].x[:64])}
    assert list(rows) == [
        "dense int8",
        "LUT alone",
        "PRUNING alone",
        "HUFFMAN alone",
        "smallest per filter",
        "smallest per filter, dense arena",
    ]
    chosen, dense = rows["smallest per filter"], rows["dense int8"]
    assert all(chosen.flash <= row.flash for row in rows.values())
    assert (chosen.flash, chosen.arena) == (unbudgeted.bytes, unbudgeted.arena_bytes)
    assert rows["smallest per filter, dense arena"].arena <= dense.arena < chosen.arena
    assert "HUFFMAN alone" in format_micro_table(list(rows.values()))
