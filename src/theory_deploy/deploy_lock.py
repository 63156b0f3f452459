"""The deploy lock: one run at a time between `start` and `verify` of one app.

A workflow that runs start, sync-secrets and verify as separate jobs (a fresh process each) must never
let two runs for the same app interleave: if run B's start lands after run A's start and before A's
verify finished, A verifies B's deploy (a false mismatch, or a false pass). CI concurrency groups
cannot guard a critical section that spans jobs, so the lock lives in the target itself:

* **local**: a JSON file per app under `$THEORY_STATE_DIR/deploy-locks/` (`LocalLockStore`), changed
  only under an flock on a sidecar lock file, written atomically (temp file, fsync, rename);
* **Modal**: one entry per app in the `modal.Dict` `theory-deploy-locks` of the app's environment
  (`targets.modal.ModalLockStore`).

A lock is a **lease**: a record `{holder, acquired_at, expires_at, info}` (epoch seconds; `info` says
which host, process and CI run took it). `DeployLock.hold(holder, wait_s, ttl_s)` takes a free or
expired lock, renews one this holder already has (a later job of the same run passes the same holder),
and otherwise waits (polling every 1-2 s, with jitter) for up to `wait_s`, then fails with
ERR_DEPLOY_LOCKED naming the holder and its expiry. `release(holder)` deletes the record only when this
holder has it; `break_()` deletes whatever is there (for a stale lock whose run is gone).

Every store offers four primitives over one key: `read`, `create` (atomic create-if-absent), `replace`
(compare-and-swap against the record last read) and `delete` (compare-and-delete). Holding is built
from these alone, so two takers never both succeed where the store is atomic (the local store); the
Modal store's remaining race is described on `ModalLockStore`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import re
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import output
from .errors import DeployLockedError, UsageError
from .files import UnreadableFile, atomic_write, exclusive_lock, fsync_dir, read_regular_file

HOLDER_ENV = "THEORY_LOCK_HOLDER"
DEFAULT_WAIT_S = 900.0
DEFAULT_TTL_S = 1800.0
POLL_S = (1.0, 2.0)  # seconds between two looks at a lock someone else holds (uniform jitter)
MAX_HOLDER_CHARS = 200
UNREADABLE_HOLDER = "(unreadable lock record)"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RECORD_MAX_BYTES = 64 * 1024


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def check_holder(holder: str | None, where: str = "--lock") -> str:
    """A holder is any printable text of at most 200 characters (e.g. `run-1234-1`)."""
    text = (holder or "").strip()
    if not text:
        raise UsageError(f"{where}: the lock holder is empty.", remedy=f"Give {where} a name, e.g. the CI run id.")
    if len(text) > MAX_HOLDER_CHARS or not text.isprintable():
        raise UsageError(
            f"{where}: the lock holder must be printable text of at most {MAX_HOLDER_CHARS} characters.",
            remedy=f"Give {where} a short name, e.g. the CI run id and attempt.",
        )
    return text


def new_holder() -> str:
    """A holder nobody else can have: `user@host:pid:<uuid4 hex>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


def holder_info() -> dict[str, str]:
    """Where the holder runs: host, process and, in GitHub Actions, the run's URL."""
    info = {"host": socket.gethostname(), "pid": str(os.getpid())}
    server, repo, run = (os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    if server and repo and run:
        attempt = os.environ.get("GITHUB_RUN_ATTEMPT")
        info["run_url"] = f"{server}/{repo}/actions/runs/{run}" + (f"/attempts/{attempt}" if attempt else "")
    return info


# ---------------------------------------------------------------------------------------------------
# The record and the store interface
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockRecord:
    holder: str
    acquired_at: float
    expires_at: float
    info: dict[str, str] = field(default_factory=dict)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
            "info": dict(self.info),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | bytes) -> LockRecord:
        """The record in `text`; a record nobody can read protects nothing, so it reads as expired
        (held by UNREADABLE_HOLDER since 0), to be taken over or broken like any stale lock."""
        try:
            data = json.loads(text)
            info = data.get("info") or {}
            return cls(
                holder=str(data["holder"]),
                acquired_at=float(data["acquired_at"]),
                expires_at=float(data["expires_at"]),
                info={str(k): str(v) for k, v in info.items()},
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            return cls(UNREADABLE_HOLDER, 0.0, 0.0, {"raw": raw[:200]})

    def describe(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in sorted(self.info.items()) if k in ("host", "pid", "run_url"))
        return f"{self.holder} (since {iso(self.acquired_at)}, until {iso(self.expires_at)}" + (
            f"; {where})" if where else ")"
        )


class LockStore(ABC):
    """Atomic primitives over one record per key. `where` names the store for messages."""

    where: str = ""

    @abstractmethod
    def read(self, key: str) -> LockRecord | None: ...

    @abstractmethod
    def create(self, key: str, record: LockRecord) -> bool:
        """Write `record` only if `key` has none; False (nothing written) otherwise."""

    @abstractmethod
    def replace(self, key: str, old: LockRecord, new: LockRecord) -> bool:
        """Write `new` only if `key` still holds `old`; False (nothing written) otherwise."""

    @abstractmethod
    def delete(self, key: str, old: LockRecord) -> bool:
        """Remove the record only if `key` still holds `old`; False (nothing removed) otherwise."""


class LocalLockStore(LockStore):
    """`<folder>/<key>.json` (0600), each change made under an flock on `<key>.json.lock`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise UsageError(f"{key!r} cannot name a deploy lock (letters, digits, '.', '_', '-').")
        return self.folder / f"{key}.json"

    @contextlib.contextmanager
    def _guard(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(path.with_name(path.name + ".lock"), timeout_s=30.0, what=f"deploy lock file {path}"):
            yield path

    @staticmethod
    def _load(path: Path) -> LockRecord | None:
        try:
            return LockRecord.loads(read_regular_file(path, _RECORD_MAX_BYTES))
        except FileNotFoundError:
            return None
        except UnreadableFile as exc:
            return LockRecord(UNREADABLE_HOLDER, 0.0, 0.0, {"raw": str(exc)})

    def read(self, key: str) -> LockRecord | None:
        return self._load(self._path(key))  # written by rename: a reader sees a whole record or none

    def create(self, key: str, record: LockRecord) -> bool:
        with self._guard(key) as path:
            if path.exists():
                return False
            atomic_write(path, record.dumps(), mode=0o600)
            return True

    def replace(self, key: str, old: LockRecord, new: LockRecord) -> bool:
        with self._guard(key) as path:
            if self._load(path) != old:
                return False
            atomic_write(path, new.dumps(), mode=0o600)
            return True

    def delete(self, key: str, old: LockRecord) -> bool:
        with self._guard(key) as path:
            if self._load(path) != old:
                return False
            path.unlink()
            fsync_dir(path.parent)
            return True


# ---------------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------------


@dataclass
class Held:
    """What `hold` did: the record now in the store and how long it waited for it."""

    record: LockRecord
    waited_s: float
    continued: bool  # this holder already had it (a later job of the same run): the lease was renewed
    took_over: str | None = None  # the holder of the expired lease this one replaced
    released: bool = False
    released_at: float | None = None

    @property
    def holder(self) -> str:
        return self.record.holder

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "holder": self.record.holder,
            "waited_s": round(self.waited_s, 3),
            "acquired_at": self.record.acquired_at,
            "expires_at": self.record.expires_at,
            "released": self.released,
            "continued": self.continued,
        }
        if self.took_over:
            data["took_over_from"] = self.took_over
        if self.released_at is not None:
            data["released_at"] = self.released_at
        return data


class DeployLock:
    """The deploy lock of one app (a target, an environment, an app name) in `store` under `key`."""

    def __init__(
        self,
        store: LockStore,
        key: str,
        *,
        target: str,
        env: str,
        app: str,
        ref: str,
        poll_s: tuple[float, float] = POLL_S,
    ) -> None:
        self.store, self.key = store, key
        self.target, self.env, self.app, self.ref = target, env, app, ref
        self.poll_s = poll_s

    @property
    def _what(self) -> str:
        return f"the deploy lock of {self.app} ({self.target}, {self.env})"

    def _ctl(self, *flags: str) -> str:
        return " ".join([f"{self.target}ctl lock --ref {self.ref} --env {self.env}", *flags])

    def status(self) -> LockRecord | None:
        return self.store.read(self.key)

    def hold(
        self,
        holder: str,
        *,
        wait_s: float = DEFAULT_WAIT_S,
        ttl_s: float = DEFAULT_TTL_S,
        expect_held: bool = False,
        info: dict[str, str] | None = None,
    ) -> Held:
        """Take the lock as `holder`, or renew it when `holder` has it already; wait up to `wait_s` while
        another live holder has it. `expect_held`: the caller held it a moment ago (a later stage of the
        same run), so anything but this holder's record means the lease was lost: fail at once."""
        holder = check_holder(holder)
        if ttl_s <= 0:
            raise UsageError(f"--lock-ttl {ttl_s:g}: a lease must last more than 0 seconds.")
        if wait_s < 0:
            raise UsageError(f"--lock-wait {wait_s:g}: cannot wait less than 0 seconds.")
        info = {**holder_info(), **(info or {})}
        started = time.monotonic()
        deadline = started + wait_s
        announced: tuple[str, float] | None = None
        lost_races = 0
        while True:
            now = time.time()
            current = self.store.read(self.key)
            fresh = LockRecord(holder, now, now + ttl_s, info)
            if current is not None and current.holder == holder:
                renewed = LockRecord(holder, current.acquired_at, now + ttl_s, {**current.info, **info})
                if self.store.replace(self.key, current, renewed):
                    return Held(renewed, time.monotonic() - started, continued=True)
            elif expect_held:
                raise self._lost(holder, current)
            elif current is None:
                if self.store.create(self.key, fresh):
                    return Held(fresh, time.monotonic() - started, continued=False)
            elif current.expired(now):
                if self.store.replace(self.key, current, fresh):
                    output.progress(
                        f"took over {self._what}: the lease of {current.holder} ended at {iso(current.expires_at)}"
                    )
                    return Held(fresh, time.monotonic() - started, continued=False, took_over=current.holder)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._locked(holder, current, wait_s)
                if announced != (current.holder, current.acquired_at):  # once per holder, not at every poll
                    announced = (current.holder, current.acquired_at)
                    output.progress(f"waiting up to {remaining:.0f}s for {self._what}: held by {current.describe()}")
                time.sleep(min(remaining, random.uniform(*self.poll_s)))
                continue
            # A compare-and-set lost a race with another taker (or a renewal): look again at once.
            lost_races += 1
            if lost_races > 20 and time.monotonic() > deadline:
                latest = self.store.read(self.key)
                if latest is not None:
                    raise self._locked(holder, latest, wait_s)
            time.sleep(random.uniform(0.05, 0.25))

    def _locked(self, holder: str, current: LockRecord, wait_s: float) -> DeployLockedError:
        return DeployLockedError(
            f"{self._what} is held by {current.describe()}; {holder} waited {wait_s:g}s for it.",
            remedy=(
                f"Wait for {current.holder} to finish (its lease ends at {iso(current.expires_at)}) or raise "
                f"--lock-wait. If that run is gone, clear the stale lock: `{self._ctl('--break')}` "
                f"(or `{self._ctl('--release', '--holder', repr(current.holder))}`)."
            ),
            details={"lock": current.to_json(), "store": self.store.where},
        )

    def _lost(self, holder: str, current: LockRecord | None) -> DeployLockedError:
        now_held = f"it is now held by {current.describe()}" if current else "it was released or broken"
        return DeployLockedError(
            f"{holder} lost {self._what} between two stages: {now_held}. What runs may be another "
            "run's deploy, so this run stops here.",
            remedy="Re-run the deploy from `start`; raise --lock-ttl if a stage outlasts the lease.",
            details={"lock": current.to_json() if current else None, "store": self.store.where},
        )

    def release(self, holder: str) -> dict[str, Any]:
        """Remove the lock if `holder` has it. A lock held by another (or none at all) is left alone
        and said so in `note`: never an error, so a cleanup step cannot fail a run."""
        holder = check_holder(holder, "--holder")
        for _ in range(10):
            current = self.store.read(self.key)
            if current is None:
                return {"released": False, "holder": holder, "held_by": None, "note": "no lock was held"}
            if current.holder != holder:
                return {
                    "released": False,
                    "holder": holder,
                    "held_by": current.holder,
                    "lock": current.to_json(),
                    "note": f"held by {current.holder}, not {holder}: left alone",
                }
            if self.store.delete(self.key, current):
                return {"released": True, "holder": holder, "held_by": None, "lock": current.to_json()}
            time.sleep(random.uniform(0.05, 0.25))  # renewed meanwhile: read it again
        return {"released": False, "holder": holder, "held_by": holder, "note": "the record kept changing"}

    def break_(self) -> dict[str, Any]:
        """Remove whatever lock there is (a stale one whose run is gone), saying who held it."""
        for _ in range(10):
            current = self.store.read(self.key)
            if current is None:
                return {"broken": False, "previous": None, "note": "no lock was held"}
            if self.store.delete(self.key, current):
                output.progress(f"removed {self._what}, held by {current.describe()}")
                return {"broken": True, "previous": current.to_json()}
            time.sleep(random.uniform(0.05, 0.25))
        return {"broken": False, "previous": None, "note": "the record kept changing; try again"}
