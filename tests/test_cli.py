"""`tf-ecqx quantize / report / explain` driven as a user would, on real Fashion-MNIST (a small .npz of it)."""

import gzip
import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import small_cnn

import tf_ecqx
from tf_ecqx._keras import keras
from tf_ecqx.cli import main
from tf_ecqx.commands import QuantizeSettings
from tf_ecqx.quantization.kernels import layer_size_factors, quantized_kernels


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
    args += ["--micro-ram", "400"]
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
    micro = report["exports"]["model_micro.tflite"]
    assert micro["bytes"] == (quantized / "model_micro.tflite").stat().st_size
    assert report["settings"]["micro_ram_kb"] == 400 and 0 < micro["arena_bytes"] <= 400 * 1024
    assert sorted(f["layer"] for f in micro["filters"]) == sorted(layer["name"] for layer in report["layers"])
    assert all(f["bytes"] == f["options"][f["encoding"]] for f in micro["filters"])
    assert len(report["layers"]) == 4 and all(0 < layer["sparsity"] < 1 for layer in report["layers"])


def test_quantize_fine_tunes_by_the_recipe_or_as_the_reference_when_asked(quantized, workspace, tmp_path):
    """Default: per-layer lambda from allocate_rates and a cosine learning-rate decay (ahead in BENCHMARKS.md's lever
    e); --layer-lambdas size --lr-schedule constant: the reference's layer-size heuristic at a constant 1e-3."""
    reference = tmp_path / "reference"
    args = quantize_args(workspace, str(workspace / "fmnist.npz"), reference)
    assert main([*args, "--lr-schedule", "constant", "--layer-lambdas", "size"]) == 0
    for out, schedule, lambdas in ((quantized, "cosine", "sensitivity"), (reference, "constant", "size")):
        settings = json.loads((out / "report.json").read_text())["settings"]
        assert (settings["lr_schedule"], settings["layer_lambdas"]) == (schedule, lambdas)
        with tf_ecqx.quantize_scope():
            qat = keras.models.load_model(out / "qat.keras")
        kernels = list(quantized_kernels(qat))
        factors = [float(k.state["size_factor"]) for k in kernels]
        assert np.allclose(factors, layer_size_factors(kernels)) == (lambdas == "size"), factors
        learning_rate = qat.optimizer.get_config()["learning_rate"]
        assert learning_rate["class_name"] == "CosineDecay" if schedule == "cosine" else learning_rate == 1e-3


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"lr_schedule": "linear"}, "lr_schedule='linear' is not one of cosine, constant"),
        ({"layer_lambdas": "fisher"}, "layer_lambdas='fisher' is not one of sensitivity, size"),
    ],
)
def test_an_unknown_recipe_choice_is_refused_with_the_allowed_ones(setting, message):
    with pytest.raises(ValueError, match=message):
        QuantizeSettings(**setting)


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
        (["quantize", "m.keras", "--micro-ram", "-4", "--out", "x"], "micro RAM budget -4.0 KB must be a positive"),
        (["quantize", "m.keras", "--micro-ram", "nan", "--out", "x"], "micro RAM budget nan KB must be a positive"),
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


def corrupt_member(source, target, member="config.json"):
    """A copy of a .keras archive, stored uncompressed, with one byte of `member` flipped (its CRC no longer fits)."""
    with zipfile.ZipFile(source) as archive:
        contents = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    with zipfile.ZipFile(target) as archive:
        info = archive.getinfo(member)
    data = bytearray(target.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 5] ^= 0xFF
    target.write_bytes(bytes(data))


def bad_npz(workspace, tmp_path, **change):
    """The workspace's .npz with some arrays replaced."""
    with np.load(workspace / "fmnist.npz") as arrays:
        data = dict(arrays)
    for key, edit in change.items():
        data[key] = edit(data[key].copy())
    np.savez(tmp_path / "bad.npz", **data)
    return str(tmp_path / "bad.npz")


def with_nan(x):
    x[7, 3, 3, 0] = np.nan
    return x


def truncated_idx_dir(workspace, tmp_path):
    with np.load(workspace / "fmnist.npz") as arrays:
        x, y = (arrays["x_train"] * 255).astype(np.uint8)[..., 0], arrays["y_train"].astype(np.uint8)
    for stem in ("train", "t10k"):
        images = b"\0\0\x08\x03" + b"".join(n.to_bytes(4, "big") for n in x.shape) + x.tobytes()
        labels = b"\0\0\x08\x01" + len(y).to_bytes(4, "big") + y.tobytes()
        (tmp_path / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images)[:5000])
        (tmp_path / f"{stem}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return str(tmp_path)


def quantize_args(workspace, data, out):
    return ["quantize", str(workspace / "float.keras"), "--data", data, "--epochs", "1", "--out", str(out), "--quiet"]


CLI_FAILURES = {
    "labels out of range": (lambda w, t: bad_npz(w, t, y_train=lambda y: y + 10), "labels up to 19, but the model"),
    "negative labels": (lambda w, t: bad_npz(w, t, y_train=lambda y: y - 1), "integer class indices >= 0"),
    "fractional labels": (lambda w, t: bad_npz(w, t, y_train=lambda y: y + 0.7), "integer class indices >= 0"),
    "NaN images": (lambda w, t: bad_npz(w, t, x_train=with_nan), "1 images contain NaN or inf values"),
    "RGB 32x32 images": (
        lambda w, t: bad_npz(w, t, x_train=lambda x: np.zeros((len(x), 32, 32, 3), np.float32)),
        r"images of shape (32, 32, 3), but the model takes (28, 28, 1)",
    ),
    "truncated gzip IDX": (truncated_idx_dir, "is truncated or corrupt"),
}


@pytest.mark.parametrize("case", CLI_FAILURES.values(), ids=CLI_FAILURES.keys())
def test_bad_data_is_refused_before_training_in_one_line(case, workspace, tmp_path, capsys):
    make_data, message = case
    out = tmp_path / "out"
    assert main(quantize_args(workspace, make_data(workspace, tmp_path), out)) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert not out.exists()


def test_a_damaged_keras_file_is_named(workspace, tmp_path, capsys):
    corrupt_member(workspace / "float.keras", tmp_path / "damaged.keras")
    assert main(["explain", str(tmp_path / "damaged.keras"), "--data", str(workspace / "fmnist.npz")]) == 1
    assert "'config.json' fails its CRC check" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [("{}", "'model' is missing"), ('{"model": "m", "data": "d", "float_accuracy": 1e400}', "not an accuracy")],
)
def test_report_refuses_a_broken_report_json(tmp_path, capsys, content, message):
    (tmp_path / "report.json").write_text(content.replace("1e400", "1" + "0" * 400))
    assert main(["report", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_report_escapes_terminal_control_characters(quantized, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(quantized, copy)
    report = json.loads((copy / "report.json").read_text())
    report["model"] = "\x1b[2J\x1b[31mevil"
    (copy / "report.json").write_text(json.dumps(report))
    assert main(["report", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\\x1b[31mevil" in printed


def test_a_failed_rerun_leaves_the_previous_outputs_untouched(quantized, workspace, tmp_path, monkeypatch, capsys):
    previous = tmp_path / "previous"
    shutil.copytree(quantized, previous)
    before = {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()}

    def export_fails(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr("tf_ecqx.commands.to_tflite", export_fails)
    assert main(quantize_args(workspace, str(workspace / "fmnist.npz"), previous)) == 1
    assert "converter crashed" in capsys.readouterr().err
    after = {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["previous"]


@pytest.mark.parametrize("command", ["quantize", "demo"])
def test_an_output_path_that_cannot_be_a_folder_fails_at_once(workspace, tmp_path, capsys, command):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    unwritable = "/proc/tf_ecqx/out"
    for out, message in ((taken, "is a file, not a folder"), (unwritable, f"Cannot write the outputs to {unwritable}")):
        if command == "demo":
            args = ["demo", "--out", str(out), "--quiet"]
        else:
            args = quantize_args(workspace, str(workspace / "fmnist.npz"), out)
        assert main(args) == 1
        assert message in capsys.readouterr().err
