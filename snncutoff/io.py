"""Atomic writes: a file is either the old one or the complete new one, never half.

Each writer writes to a temporary file in the destination's folder, flushes it to
disk, then renames it over the destination (``os.replace`` is atomic on POSIX and
Windows). An interrupted write leaves the previous file untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write raw bytes (for example a PNG), atomically."""
    return _atomic(path, lambda f: f.write(data))
