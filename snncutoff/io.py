"""Files: atomic writes and validated reads.

Writes: each writer writes to a temporary file in the destination's folder
(``.<name>.<pid>.<random>.tmp``), flushes it to disk, then renames it over the
destination (``os.replace`` is atomic on POSIX and Windows). An interrupted write
leaves the previous file untouched; a temporary file left behind by a killed process
(its pid no longer runs) is removed by the next write of the same name. A full disk is
reported as :class:`DiskFullError`, and nothing partial is left.

Reads: :func:`load_torch` reads with ``torch.load(weights_only=True)`` (no code is run)
and turns every way a file can be unreadable (missing, empty, truncated, not a torch
file, holding code) into one :class:`CorruptFileError` line naming the file, what is
wrong and what to do.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


class CorruptFileError(ValueError):
    """A file snncutoff reads is missing a part, truncated, empty, foreign or of another version."""


class DiskFullError(OSError):
    """A write failed because the device holding the file is full (nothing partial is left)."""


_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.*.tmp`` files of ``path`` whose writer no longer runs."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        m = _TMP.match(tmp.name)
        if m and m["name"] == path.name and not _pid_alive(int(m["pid"])):
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch's zip writer reports a short write as "[enforce fail ...] unexpected pos ..."
    if isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "failed writing" in str(exc)):
        try:
            return shutil.disk_usage(folder).free < 16 * 2**20
        except OSError:
            return False
    return False


def _atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder: give a file path to write (e.g. "
                                f"{path / 'trace.pt'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the folder {path.parent} for {path.name}: {exc.strerror}") from exc
    _remove_stale_temporaries(path)
    handled = sys.exc_info()[1]
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write in {path.parent}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        stop = _interruption(exc, handled)
        if stop is not None and stop is not exc:  # torch's writer, closing after Ctrl-C or SIGTERM, hides it
            raise (KeyboardInterrupt() if isinstance(stop, KeyboardInterrupt) else SystemExit(stop.code)) from exc
        if _disk_full(exc, path.parent):
            raise DiskFullError(errno.ENOSPC, f"no space left on the device holding {path.parent} while writing "
                                f"{path.name}; free some space and run again (the previous {path.name}, if any, "
                                "is untouched)") from exc
        raise
    return path


def _interruption(exc: BaseException, handled: BaseException | None) -> KeyboardInterrupt | SystemExit | None:
    """The ``KeyboardInterrupt`` or ``SystemExit`` (SIGTERM) that ``exc`` is, or was raised while
    handling (and would hide), or None. ``handled``: the exception being handled when the write
    began (a save made on SIGTERM), which is not the write's to report."""
    seen = set()
    while exc is not None and exc is not handled and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented, strict JSON (a NaN or infinite float written as null), atomically."""
    text = json.dumps(_strict(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return _atomic(path, lambda f: f.write(text.encode()))


def _strict(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write raw bytes (for example a PNG), atomically."""
    return _atomic(path, lambda f: f.write(data))


def load_torch(path: str | os.PathLike, what: str, fix: str, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Read a dict written by ``torch.save`` with ``weights_only=True``.

    Args:
        path: the file.
        what: what the file should be, for messages (``"snncutoff trace"``).
        fix: what to do when it is unreadable (``"collect the trace again"``).
        mmap: map the file's tensors into memory instead of reading them (torch's ``mmap=True``).
    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: empty, truncated, damaged (a zip file whose checksums do not match:
            checked whole unless ``mmap``, which reads only what is used), not a torch file,
            holding objects other than tensors and plain data (it is never executed), or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if not os.access(path, os.R_OK):
        raise PermissionError(f"cannot read {path}: permission denied (it belongs to {path.owner()}); fix its "
                              "permissions or run as a user who may read it")
    size = path.stat().st_size
    if size == 0:
        raise CorruptFileError(f"{path} is empty, not a {what} file (an interrupted copy?); {fix}")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - zip, pickle, OS and torch errors all mean "unreadable"
        text = str(exc)
        zipped, pickled = head.startswith(b"PK"), head[:1] == b"\x80"
        if not (zipped or pickled):
            why = f"it is not a torch file (it starts with {head!r}, {size} bytes)"
        elif pickled and ("Unsupported global" in text or "GLOBAL" in text or "weights_only" in text):
            why = "it holds Python objects other than tensors and plain data, which snncutoff never executes"
        elif pickled and mmap:
            why = ("it is in torch's legacy (non-zip) format, which cannot be memory-mapped: load it with "
                   "mmap=False, and save it again to map it later")
        else:
            why = f"it is a truncated or damaged torch file ({size} bytes)"
        raise CorruptFileError(f"{path} is not a readable {what} file: {why}; {fix}") from None
    if not mmap and head.startswith(b"PK"):
        bad = _damaged_member(path)
        if bad is not None:
            raise CorruptFileError(f"{path} is not a readable {what} file: it is damaged ({bad} does not match its "
                                   f"checksum); {fix}")
    if not isinstance(payload, dict):
        raise CorruptFileError(f"{path} is not a {what} file (it holds a {type(payload).__name__}, not a dict); {fix}")
    return payload


def _damaged_member(path: Path) -> str | None:
    """The first member of the zip file ``path`` whose CRC-32 does not match its contents, or None.
    A member stored with CRC 0 and contents (``torch.serialization.set_crc32_options(False)``) was
    written without a checksum: it is not checked."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC == 0 and info.file_size > 0:
                    continue
                try:
                    with z.open(info) as f:
                        while f.read(1 << 24):
                            pass
                except zipfile.BadZipFile:
                    return info.filename
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"its zip directory ({exc})"
    return None
