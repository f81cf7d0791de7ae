"""`tf-ecqx quantize / report / explain` driven as a user would, on real Fashion-MNIST (a small .npz of it)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import small_cnn

from tf_ecqx._keras import keras
from tf_ecqx.cli import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fashion_small):
    """A float CNN trained briefly, saved as .keras, and 2048 + 512 real Fashion-MNIST images as .npz."""
    train, test = fashion_small
    root = tmp_path_factory.mktemp("cli")
    np.savez(root / "fmnist.npz", x_train=train.x, y_train=train.y, x_test=test.x, y_test=test.y)
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    model.fit(train.x, train.y, batch_size=64, epochs=2, verbose=0)
    model.save(root / "float.keras")
    return root


@pytest.fixture(scope="module")
def quantized(workspace):
    out = workspace / "ecqx_out"
    args = ["quantize", str(workspace / "float.keras"), "--data", str(workspace / "fmnist.npz"), "--bits", "4"]
    args += ["--lambda", "0.2", "--relevance", "epsilon_plus_flat", "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    return out


def test_help_lists_every_command_and_reads_well():
    result = subprocess.run([sys.executable, "-m", "tf_ecqx.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "quantize", "report", "explain"):
        assert command in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "tf_ecqx.cli", "quantize", "--help"], capture_output=True, text=True, check=True
    )
    assert "--relevance" in result.stdout and "logits" in result.stdout


def test_quantize_writes_every_artifact_and_a_truthful_report(quantized):
    for name in ("qat.keras", "model_int8_sparse.tflite", "model_micro.tflite", "kernels.ecqx", "layers.png"):
        assert (quantized / name).stat().st_size > 0, name
    assert list(quantized.glob("codes_*.png")) and list((quantized / "logs").rglob("events.out.tfevents.*"))
    report = json.loads((quantized / "report.json").read_text())
    assert report["settings"]["relevance"] == "epsilon_plus_flat" and report["settings"]["bits"] == 4
    assert report["accuracy"] > report["float_accuracy"] - 0.1 and report["float_accuracy"] > 0.6
    assert report["exports"]["model_int8_sparse.tflite"]["argmax_agreement"] >= 0.95
    assert report["exports"]["model_micro.tflite"]["bytes"] == (quantized / "model_micro.tflite").stat().st_size
    assert len(report["layers"]) == 4 and all(0 < layer["sparsity"] < 1 for layer in report["layers"])


def test_report_prints_the_layer_table_and_sizes(quantized, capsys):
    assert main(["report", str(quantized)]) == 0
    printed = capsys.readouterr().out
    assert "sparsity" in printed and "model_micro.tflite" in printed and "pp)" in printed
    assert main(["report", str(quantized / "qat.keras")]) == 0
    assert "total" in capsys.readouterr().out


def test_explain_writes_a_heatmap_png(workspace, tmp_path):
    out = tmp_path / "heatmap.png"
    args = ["explain", str(workspace / "float.keras"), "--data", str(workspace / "fmnist.npz"), "--samples", "4"]
    assert main([*args, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quantize", "missing.keras", "--out", "x"], "No Keras model file at 'missing.keras'"),
        (["quantize", "m.keras", "--bits", "9", "--out", "x"], "bits=9 is not supported"),
        (["quantize", "m.keras", "--epochs", "0", "--out", "x"], "epochs=0 must be an integer >= 1"),
        (["explain", "m.keras", "--data", "nowhere"], "data 'nowhere' is neither 'fashion_mnist'"),
        (["report", "."], "has no report.json"),
    ],
)
def test_failures_exit_1_with_a_one_line_reason(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "m.keras"])  # --out missing
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_help_does_not_load_tensorflow():
    script = "import sys\nfrom tf_ecqx import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
    script += "print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_every_public_name_resolves():
    import tf_ecqx

    assert all(getattr(tf_ecqx, name) is not None for name in tf_ecqx.__all__)
    assert tf_ecqx.sizes.size_table and "sizes" in dir(tf_ecqx)
