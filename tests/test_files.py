"""Atomic writes: a failure while writing leaves the previous file as it was and no temporary file behind."""

import pytest

from tf_ecqx.files import atomic_path, atomic_write, check_writable


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
