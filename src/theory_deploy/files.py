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
import os
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
