"""Checks before writing an export file, so that a bad path fails before any work and nothing is written half-way."""

from __future__ import annotations

import os
from pathlib import Path


def check_writable(path: str | os.PathLike) -> Path:
    """The path, if its directory exists and is writable; else a PermissionError that says so."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise PermissionError(f"Cannot write {path}: {directory} is not a writable directory. Choose another path.")
    return path
