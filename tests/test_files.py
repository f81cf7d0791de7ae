"""Atomic writes: a failure while writing leaves the previous file as it was and no temporary file behind."""

import pytest

from tf_ecqx.files import atomic_path, atomic_write, check_writable, staged_directory


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "model.ecqx"
    target.write_bytes(b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["model.ecqx"]


def test_a_failure_while_writing_keeps_the_previous_file(tmp_path):
    target = tmp_path / "qat.keras"
    target.write_bytes(b"what the user saved")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"what the user saved" and [p.name for p in tmp_path.iterdir()] == ["qat.keras"]


def test_the_temporary_file_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "qat.keras") as temporary:
        assert temporary.suffix == ".keras" and temporary.parent == tmp_path
        temporary.write_bytes(b"x")


@pytest.mark.parametrize("where", ["missing/m.tflite", "."])
def test_unwritable_targets_are_refused_before_any_work(tmp_path, where):
    with pytest.raises(OSError, match="Cannot write"):
        check_writable(tmp_path / where)


def test_a_staged_run_appears_whole_in_a_new_folder(tmp_path):
    out = tmp_path / "runs" / "first"
    with staged_directory(out, manifest="report.json") as staging:
        (staging / "qat.keras").write_bytes(b"model")
        (staging / "report.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["qat.keras", "report.json"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["first"]


def test_a_failed_run_leaves_the_old_outputs_and_no_folders(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "qat.keras").write_bytes(b"old model")
    (old / "report.json").write_text("old report")
    for out in (old, tmp_path / "new" / "deeper"):
        with pytest.raises(RuntimeError), staged_directory(out, manifest="report.json") as staging:
            (staging / "qat.keras").write_bytes(b"new model")
            raise RuntimeError("training failed")
    assert (old / "qat.keras").read_bytes() == b"old model" and (old / "report.json").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_rerun_replaces_its_outputs_and_keeps_the_users_other_files(tmp_path):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "old.events").write_text("old")
    (out / "report.json").write_text("old report")
    (out / "notes.txt").write_text("mine")
    with staged_directory(out, manifest="report.json") as staging:
        (staging / "logs").mkdir()
        (staging / "logs" / "new.events").write_text("new")
        (staging / "report.json").write_text("new report")
    assert [p.name for p in (out / "logs").iterdir()] == ["new.events"]
    assert (out / "report.json").read_text() == "new report" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_folder_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path):
    (tmp_path / "taken").write_text("a file")
    for out, error in ((tmp_path / "taken", FileExistsError), ("/proc/tf_ecqx_out", PermissionError)):
        with pytest.raises(error, match="Cannot write the outputs"), staged_directory(out):
            pytest.fail("the block must not run")
