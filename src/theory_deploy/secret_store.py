"""The local secret store: what `localctl sync-secrets` writes and `localctl start` injects.

It plays the part Modal's named secrets play for `modalctl`: one store per environment, one entry
per secret name, names the same in every environment and only the values differing.

Layout (never inside the repository, so a value can never be committed):

    $THEORY_STATE_DIR/secrets/<env>/          0700 (default ~/.local/state/theory-deploy)
        OPENAI_API_KEY                        0600, JSON {"OPENAI_API_KEY": "<value>"}
        REGISTRY_AUTH                         0600, JSON {"REGISTRY_USERNAME": ..., "REGISTRY_PASSWORD": ...}
        .fingerprint-key                      0600, random HMAC key for fingerprints

An entry whose JSON is `{}` is a *placeholder*: the name is declared (as `start` declares a Modal
secret by binding it) but has no value yet; `sync-secrets` fills it. Every write is atomic (temp file
in the same folder, fsync, rename, fsync the folder), created 0600 from the first byte.

Values are compared by sha256 of their canonical JSON, so a sync reports created / updated /
unchanged per name without ever printing a value. A running container records a *fingerprint* of
the values it was given: an HMAC keyed by a random per-store key, so the label on the container
(readable by anyone who can `docker inspect`) cannot be used to guess a short secret offline.
Every value read from the store is registered with the scrubber before anything could print it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets as _random
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from . import secret_values
from .errors import SecretStoreError
from .files import atomic_write

STATE_DIR_ENV = "THEORY_STATE_DIR"
_KEY_FILE = ".fingerprint-key"

Change = Literal["created", "updated", "unchanged"]


def state_dir() -> Path:
    """`$THEORY_STATE_DIR`, else `~/.local/state/theory-deploy` (XDG-style, outside any checkout)."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return Path.home() / ".local" / "state" / "theory-deploy"


def _canonical(pairs: dict[str, str]) -> bytes:
    return json.dumps(pairs, sort_keys=True, separators=(",", ":")).encode()


def value_hash(pairs: dict[str, str]) -> str:
    return hashlib.sha256(_canonical(pairs)).hexdigest()


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700; tighten an existing one we own; refuse others'."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise SecretStoreError(f"{path} is not a folder.")
    if info.st_uid != os.geteuid():
        raise SecretStoreError(f"{path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}).")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


class SecretStore:
    """The secrets of one environment. Nothing touches the disk until a read or write needs it."""

    def __init__(self, env: str, *, root: Path | None = None, repo_root: Path | None = None) -> None:
        self.env = env
        self.root = (root or state_dir() / "secrets").absolute()
        self.dir = self.root / env
        self.repo_root = repo_root
        if repo_root is not None and _is_within(self.dir, repo_root):
            raise SecretStoreError(
                f"the secret store {self.dir} would be inside the repository {repo_root}, "
                "where a value could be committed.",
                remedy=f"Point {STATE_DIR_ENV} at a folder outside the repository "
                "(default ~/.local/state/theory-deploy).",
            )

    # -- files -------------------------------------------------------------------------------------------
    def _ensure(self) -> None:
        _make_private_dir(self.dir)

    def _path(self, name: str) -> Path:
        if not secret_values.ENV_NAME_RE.match(name):
            raise SecretStoreError(f"{name!r} is not a valid secret name (letters, digits, '_').")
        return self.dir / name

    def _read_file(self, path: Path) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretStoreError(f"cannot read {path}: {exc.strerror}.") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SecretStoreError(f"{path} is not a regular file.")
            if stat.S_IMODE(info.st_mode) & 0o077:
                os.fchmod(fd, 0o600)  # someone loosened it: make it private again before using it
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write_file(self, path: Path, data: bytes) -> None:
        self._ensure()
        atomic_write(path, data, mode=0o600)

    # -- entries -----------------------------------------------------------------------------------------
    def read(self, name: str) -> dict[str, str] | None:
        """The stored keys of `name`: None if there is no entry, `{}` for a placeholder."""
        data = self._read_file(self._path(name))
        if data is None:
            return None
        try:
            pairs = json.loads(data)
        except ValueError:
            raise SecretStoreError(
                f"{self._path(name)} is not valid JSON; re-run `sync-secrets` to rewrite it."
            ) from None
        if not isinstance(pairs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
            raise SecretStoreError(f"{self._path(name)} does not hold a JSON object of strings.")
        for value in pairs.values():
            secret_values.register_secret_value(value)
        return pairs

    def value(self, name: str) -> dict[str, str] | None:
        """The keys of `name` if it has a complete value (every key non-empty), else None."""
        pairs = self.read(name)
        keys = secret_values.keys_for(name)
        if not pairs or not all(pairs.get(key) for key in keys):
            return None
        return {key: pairs[key] for key in keys}

    def state(self, name: str) -> Literal["absent", "placeholder", "set"]:
        pairs = self.read(name)
        if pairs is None:
            return "absent"
        return "set" if self.value(name) is not None else "placeholder"

    def compare(self, name: str, pairs: dict[str, str]) -> Change:
        """What writing `pairs` would do, judged by hash: a placeholder getting a value is `created`."""
        current = self.value(name)
        if current is None:
            return "created"
        return "unchanged" if hmac.compare_digest(value_hash(current), value_hash(pairs)) else "updated"

    def write(self, name: str, pairs: dict[str, str]) -> Change:
        for value in pairs.values():
            secret_values.register_secret_value(value)
        change = self.compare(name, pairs)
        if change != "unchanged":
            self._write_file(self._path(name), _canonical(pairs))
        return change

    def ensure_placeholder(self, name: str) -> bool:
        """Declare `name` without a value (what `start` does for a secret not synced yet). True if new."""
        path = self._path(name)
        if self.read(name) is not None:
            return False
        self._write_file(path, b"{}")
        return True

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if p.is_file() and secret_values.ENV_NAME_RE.match(p.name))

    def register_all(self) -> None:
        """Register every value in this environment's store with the scrubber (before printing logs)."""
        for name in self.names():
            with contextlib.suppress(SecretStoreError):
                self.read(name)

    # -- fingerprints ------------------------------------------------------------------------------------
    def _fingerprint_key(self) -> bytes:
        path = self.dir / _KEY_FILE
        data = self._read_file(path)
        if data:
            return data
        self._ensure()
        key = _random.token_hex(32).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return self._read_file(path) or key
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        return key

    def fingerprint(self, values: dict[str, dict[str, str]], names: Iterable[str]) -> str:
        """A keyed hash over which of `names` have which values (absent ones count as absent)."""
        material = {name: values.get(name) for name in sorted(set(names))}
        digest = hmac.new(self._fingerprint_key(), json.dumps(material, sort_keys=True).encode(), hashlib.sha256)
        return digest.hexdigest()[:32]
