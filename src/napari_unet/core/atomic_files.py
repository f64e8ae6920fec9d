"""Files written whole or not at all: a temporary file in the target's folder and a
rename, a check that a path can be written before long work starts, and the removal
of temporaries that a killed process left behind."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from .errors import OutputFileError

#: When this module was imported: temporary files of :func:`write_atomic` older than
#: this were left by a process that died mid-write (``kill -9``, a power cut).
PROCESS_STARTED = time.time()


def _umask() -> int:
    """The process's file-mode creation mask, read without changing it where possible."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    A crash mid-write leaves any previous file at ``path`` untouched; the new file's
    permissions follow the umask like any other program's. Failures raise
    :class:`OutputFileError` naming ``path``.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = _temporary(path)
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        reason = error.strerror or str(error)
        raise OutputFileError(f"cannot write {path}: {reason}; any earlier file there is unchanged") from error
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise


def _temporary(path: Path, directory: Path | None = None) -> tuple[int, str]:
    """A new temporary file for ``path`` (named ``.NAME.XXXXXXXX.tmp``) in ``directory``."""
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory or path.parent)


def check_writable(path: str | os.PathLike, needed_bytes: int = 0) -> None:
    """Raise :class:`OutputFileError` naming ``path`` unless :func:`write_atomic` can
    write it now: not a folder, its folder exists (or can be created) and takes a new
    file, and its disk has ``needed_bytes`` free. Creates nothing that stays."""
    path = Path(path)
    if path.is_dir():
        raise OutputFileError(f"cannot write {path}: it is a folder")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        handle, name = _temporary(path, existing)
        os.close(handle)
        os.unlink(name)
        free = shutil.disk_usage(existing).free
    except OSError as error:
        raise OutputFileError(f"cannot write {path}: {error.strerror or error}") from error
    if free < needed_bytes:
        raise OutputFileError(
            f"cannot write {path}: {free / 2**20:.0f} MiB free on its disk, "
            f"it needs about {needed_bytes / 2**20:.0f} MiB"
        )


def remove_stale_temporaries(path: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Delete the temporary files :func:`write_atomic` left next to ``path`` when a
    process was killed mid-write: regular files named ``.NAME.XXXXXXXX.tmp`` last
    modified before ``before`` (default: this process's start). Returns them."""
    path = Path(path)
    before = PROCESS_STARTED if before is None else before
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    try:
        candidates = [c for c in path.parent.iterdir() if pattern.fullmatch(c.name)]
    except OSError:
        return removed
    for candidate in candidates:
        try:
            info = candidate.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < before:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue
    return removed
