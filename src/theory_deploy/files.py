"""Writing files so that nothing is lost: atomic replacement and exclusive locks.

Every file theory-deploy writes (registry.yaml pins, the local secret store, the blob cache) goes
through `atomic_write`: a temporary file in the same folder, fsync, rename over the target, fsync the
folder. A kill at any moment leaves either the old file or the new one, never half of either.
`exclusive_lock` serialises writers across processes with flock, waiting up to a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import LockTimeoutError, TheoryDeployError


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically. `mode` defaults to the old file's mode, else 0644; the
    temporary file is created 0600, so a secret is never readable by others even for an instant."""
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def exclusive_lock(
    target: Path,
    *,
    timeout_s: float = 60.0,
    busy: type[TheoryDeployError] = LockTimeoutError,
    what: str | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on `target` (a folder, or a lock file created 0600 if missing).

    Locking a folder leaves no lock file behind and survives the rename that replaces a file in it
    (a lock on the file itself would lock the replaced inode). `busy` is raised after `timeout_s`.
    """
    if target.is_dir():
        fd = os.open(target, os.O_RDONLY)
    else:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() > deadline:
                    raise busy(f"{what or target}: still locked by another process after {timeout_s:.0f}s.") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temporaries(path: Path) -> list[str]:
    """Delete what `atomic_write(path)` leaves when its process is killed between creating its
    temporary file and renaming it. Call it only while holding the lock every writer of `path` holds:
    then no temporary of `path` can belong to a live writer."""
    removed = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed.append(leftover.name)
    return removed


class UnreadableFile(Exception):
    """A file that may not be read: not a regular file (`kind` says what it is), or larger than the
    limit (`size` is its size, or "more than N" when it grew while being read)."""

    def __init__(self, message: str, *, kind: str | None = None, size: int | str | None = None):
        super().__init__(message)
        self.kind, self.size = kind, size


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def read_regular_file(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. A FIFO, device or directory is refused
    without blocking (opened non-blocking, checked with fstat), and never more than `max_bytes` + 1
    bytes are read, so `/dev/zero` or a file growing under us cannot eat memory. Raises OSError
    (FileNotFoundError when absent) or UnreadableFile."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = file_kind(info.st_mode)
            raise UnreadableFile(f"{kind}, not a regular file", kind=kind)
        if info.st_size > max_bytes:
            raise UnreadableFile(f"{info.st_size} bytes, over the limit of {max_bytes}", size=info.st_size)
        chunks, remaining = [], max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise UnreadableFile(f"more than {max_bytes} bytes, over the limit", size=f"more than {max_bytes}")
    return data
