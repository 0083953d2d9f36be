"""Crash-safe file writes: a reader sees the old file or the new one, never half of either.

A write that the disk refuses (full, over quota, read-only, no permission) raises :class:`StorageError`,
one of our errors that says which file, why and what to do, and leaves the target as it was: the temp
file of an atomic write is removed, and an append that got only part of its line out is cut back.
:class:`StorageError` is also an ``OSError`` (same ``errno``), so code that handles ``OSError`` still does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path

from autodidact.errors import AutodidactError

_WHY = {
    errno.ENOSPC: ("no space is left on the disk", "free space on that disk, or point the setting that names "
                                                   "this folder at another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free space within the quota, or use a folder on another disk"),
    errno.EROFS: ("the file system is read-only", "remount it read-write, or point the setting that names this "
                                                   "folder at a writable one"),
    errno.EACCES: ("permission was denied", "make the folder writable for this user, or use another folder"),
    errno.EPERM: ("the operation is not permitted", "make the folder writable for this user, or use another folder"),
}


class StorageError(AutodidactError, OSError):
    """A file could not be written (disk full, read-only, no permission, I/O error); nothing was half-written."""

    def __init__(self, path: str | os.PathLike, err: OSError, kept: str) -> None:
        self.path = str(path)
        why, todo = _WHY.get(err.errno, (err.strerror or str(err) or type(err).__name__,
                                         "check the disk and the folder's permissions"))
        code = errno.errorcode.get(err.errno, "") if err.errno else ""
        self.message = f"cannot write {self.path}: {why}{f' ({code})' if code else ''}; {todo}. {kept}"
        OSError.__init__(self, err.errno, self.message)

    def __str__(self) -> str:
        return self.message


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then rename.

    Raises :class:`StorageError` when the disk refuses; ``path`` then still holds what it held before.
    """
    path = Path(path)
    kept = (f"{path.name} was left as it was." if path.exists() else f"{path.name} was not created.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StorageError(path, e, kept) from e
    try:
        try:
            # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise StorageError(path, e, kept) from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync, so a crash loses at most the line being written.

    The file is locked while the line goes out (several processes may share it), and a write the disk
    refuses part-way is cut back to the previous end, so the file never holds a torn line.
    """
    path = Path(path)
    line = (json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
    kept = f"{path.name} was left as it was (this record is not in it)."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise StorageError(path, e, kept) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        end = os.fstat(fd).st_size
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):  # a device (/dev/full) cannot be truncated; a file can
                os.ftruncate(fd, end)
            raise StorageError(path, e, kept) from e
    finally:
        os.close(fd)  # also releases the lock


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
