"""Writing files so that nothing a user saved is lost: checks before any work, and atomic replacement.

A file is written to a temporary file in the same directory and renamed over the target only when complete, so a
crash, kill or full disk in the middle leaves the previous file (or no file) in place, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
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
