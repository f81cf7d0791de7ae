"""Writing files so that nothing a user saved is lost: checks before any work, and atomic replacement.

A file is written to a temporary file in the same directory and renamed over the target only when complete, so a
crash, kill or full disk in the middle leaves the previous file (or no file) in place, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_writable(path: str | os.PathLike) -> Path:
    """The path, if its directory exists and is writable and it is not a directory; else an error that says so."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise PermissionError(f"Cannot write {path}: {directory} is not a writable directory. Choose another path.")
    if path.is_dir():
        raise IsADirectoryError(f"Cannot write {path}: it is a directory. Name a file inside it instead.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) to write to; it replaces `path` when the block ends without error.

    On an error the temporary file is removed and `path` is left as it was.
    """
    path = check_writable(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_path); returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def _created_parents(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; returns those it created, deepest first."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _move_in(source: Path, target: Path, trash: Path) -> None:
    """Move `source` to `target`, replacing a file or folder there (an old folder goes to `trash` first)."""
    if target.is_dir() and not target.is_symlink():
        os.rename(target, trash / target.name)
    os.replace(source, target)


def _publish(staging: Path, out: Path, manifest: str | None) -> None:
    """Move the staged outputs into `out` (the manifest out first and in last); see staged_directory."""
    if not out.exists():
        os.rename(staging, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        if manifest is not None:
            (out / manifest).unlink(missing_ok=True)
        for entry in sorted(staging.iterdir(), key=lambda entry: entry.name == manifest):
            _move_in(entry, out / entry.name, trash)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike, manifest: str | None = None) -> Iterator[Path]:
    """An empty folder beside `out` to write a run's outputs to; they move into `out` together when the block ends.

    Checked before any work: `out` must be a folder (or not exist) that can be written. On success every entry
    replaces the same-named entry of `out` (other files there are kept); `manifest`, the file that describes the run,
    is removed first and moved in last, so it never sits beside outputs of another run. On an error `out` is left
    as it was, and neither the staging folder nor folders created for it remain.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"Cannot write the outputs to {out}: it is a file, not a folder. Choose another --out.")
    if out.is_dir() and not os.access(out, os.W_OK):
        raise PermissionError(f"Cannot write the outputs to {out}: the folder is not writable. Choose another --out.")
    try:
        created = _created_parents(out.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        reason = error.strerror or str(error)
        raise PermissionError(f"Cannot write the outputs to {out}: {reason}. Choose another --out.") from error
    try:
        yield staging
        _publish(staging, out, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
