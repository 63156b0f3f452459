"""The deploy lock on the local target (deploy_lock.py, LocalLockStore): contention, leases, renewals,
releases, ERR_DEPLOY_LOCKED, and the `localctl lock` verb and `--lock` flags. No engine, no registry:
the verbs used fail (or finish) before they would need one.

The Modal store and the pipeline-level test (two runs of one app never interleave between start and
verify) are in tests/test_deploy_lock_modal.py."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from theory_deploy import errors
from theory_deploy.deploy_lock import UNREADABLE_HOLDER, DeployLock, LocalLockStore, LockRecord
from theory_deploy.errors import DeployLockedError
from theory_deploy.refs import ProcessorRef
from theory_deploy.registry_file import load_processor
from theory_deploy.targets.base import AppContext
from theory_deploy.targets.local import LocalTarget

BIN = Path(sys.executable).parent
REF = "unit/lockproc@1"
APP = "unit-lockproc-v1"
# The local target keys its lock by container name, `<app>.<env>`: staging and main share the app name.
STAGING_KEY = f"{APP}.staging"
YAML = """\
ref: unit/lockproc@1
image:
  repository: 127.0.0.1:5000/unit/lockproc
  platforms:
    amd64: 127.0.0.1:5000/unit/lockproc@sha256:{hex}
    arm64: 127.0.0.1:5000/unit/lockproc@sha256:{hex}
secrets:
  required: [OPENAI_API_KEY]
inputs:
  type: object
"""
FAST_POLL = (0.05, 0.1)


def make_lock(folder: Path, key: str = APP) -> DeployLock:
    return DeployLock(LocalLockStore(folder), key, target="local", env="staging", app=APP, ref=REF, poll_s=FAST_POLL)


# ------------------------------------------------------------------------------------------------
# The lock itself


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    a, b = make_lock(tmp_path), make_lock(tmp_path)
    held_a = a.hold("run-a", wait_s=0, ttl_s=60)
    assert held_a.continued is False and held_a.waited_s < 1
    trying = threading.Event()
    got: dict[str, Any] = {}

    def take_b() -> None:
        got["tried_at"] = time.time()
        trying.set()
        got["held"] = b.hold("run-b", wait_s=30, ttl_s=60)
        got["acquired_at"] = time.time()

    thread = threading.Thread(target=take_b)
    thread.start()
    assert trying.wait(10)
    time.sleep(0.5)  # B is certainly polling by now, while A still holds the lock
    assert thread.is_alive(), "B must wait while A holds the lock"
    assert a.status() is not None and a.status().holder == "run-a"  # type: ignore[union-attr]
    released_at = time.time()
    assert a.release("run-a")["released"] is True
    thread.join(10)
    held_b = got["held"]
    assert got["tried_at"] < released_at <= held_b.record.acquired_at <= got["acquired_at"]
    assert held_b.waited_s >= 0.5 and held_b.holder == "run-b"
    assert b.status() == held_b.record


def _worker(folder: str, name: str, barrier: Any, intervals: Any) -> None:
    lock = make_lock(Path(folder))
    barrier.wait(10)
    held = lock.hold(name, wait_s=60, ttl_s=60)
    entered = time.time()
    time.sleep(0.2)
    left = time.time()
    assert lock.release(name)["released"] is True
    intervals.append((name, entered, left, held.waited_s))


def test_processes_racing_for_a_free_lock_never_overlap(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    manager = ctx.Manager()
    try:
        barrier, intervals = manager.Barrier(4), manager.list()
        workers = [ctx.Process(target=_worker, args=(str(tmp_path), f"proc-{i}", barrier, intervals)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        spans = sorted(intervals, key=lambda span: span[1])
    finally:
        manager.shutdown()
    assert len(spans) == 4
    for before, after in itertools.pairwise(spans):
        assert before[2] <= after[1], f"{before[0]} and {after[0]} held the lock at the same time"
    assert sum(1 for span in spans if span[3] > 0.1) >= 3  # all started together: three had to wait


def test_an_expired_lease_is_taken_over(tmp_path: Path) -> None:
    a, b = make_lock(tmp_path), make_lock(tmp_path)
    a.hold("run-a", wait_s=0, ttl_s=0.3)
    time.sleep(0.4)
    held = b.hold("run-b", wait_s=0, ttl_s=60)
    assert held.took_over == "run-a" and held.continued is False
    assert a.release("run-a") == {
        "released": False,
        "holder": "run-a",
        "held_by": "run-b",
        "lock": held.record.to_json(),
        "note": "held by run-b, not run-a: left alone",
    }
    assert b.status() == held.record
    with pytest.raises(DeployLockedError, match="run-a lost the deploy lock"):
        a.hold("run-a", wait_s=0, ttl_s=60, expect_held=True)  # a later stage of run A: its lease is gone


def test_the_same_holder_renews_its_lease(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    first = lock.hold("run-a", wait_s=0, ttl_s=10)
    time.sleep(0.05)
    again = make_lock(tmp_path).hold("run-a", wait_s=0, ttl_s=100, expect_held=True)  # a later job, same holder
    assert again.continued is True and again.waited_s < 1
    assert again.record.acquired_at == first.record.acquired_at
    assert again.record.expires_at > first.record.expires_at + 80


def test_release_by_another_holder_leaves_the_lock(tmp_path: Path) -> None:
    lock = make_lock(tmp_path)
    held = lock.hold("run-a", wait_s=0, ttl_s=60)
    outcome = lock.release("run-b")
    assert outcome["released"] is False and outcome["held_by"] == "run-a"
    assert lock.status() == held.record
    assert lock.release("run-a")["released"] is True
    assert lock.status() is None
    assert lock.release("run-a") == {"released": False, "holder": "run-a", "held_by": None, "note": "no lock was held"}


def test_waiting_too_long_is_err_deploy_locked_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = make_lock(tmp_path)
    lock.hold("run-a", wait_s=0, ttl_s=60, info={"run_url": "https://github.com/o/r/actions/runs/1"})
    t0 = time.monotonic()
    with pytest.raises(DeployLockedError) as caught:
        make_lock(tmp_path).hold("run-b", wait_s=0.5, ttl_s=60)
    assert time.monotonic() - t0 >= 0.5
    err = caught.value
    assert err.code == "ERR_DEPLOY_LOCKED" and err.exit_code == 37
    assert "held by run-a" in err.message and "https://github.com/o/r/actions/runs/1" in err.message
    assert "run-b waited 0.5s" in err.message
    assert f"localctl lock --ref {REF} --env staging --break" in err.render()
    assert err.details["lock"]["holder"] == "run-a"
    waiting = [line for line in capsys.readouterr().err.splitlines() if line.startswith("waiting")]
    assert len(waiting) == 1 and "held by run-a" in waiting[0]  # said once, not at every poll


def test_an_unreadable_record_counts_as_stale(tmp_path: Path) -> None:
    (tmp_path / f"{APP}.json").write_text("{not json")
    lock = make_lock(tmp_path)
    assert lock.status() == LockRecord(UNREADABLE_HOLDER, 0.0, 0.0, {"raw": "{not json"})
    held = lock.hold("run-a", wait_s=0, ttl_s=60)
    assert held.took_over == UNREADABLE_HOLDER


def test_the_record_file_is_private_and_outside_the_flock_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    repo = tmp_path / "repo"
    folder = repo / "processors" / "unit" / "lockproc"
    folder.mkdir(parents=True)
    (folder / "registry.yaml").write_text(YAML.format(hex="ab" * 32))
    monkeypatch.setenv("THEORY_STATE_DIR", str(tmp_path / "state"))
    app = AppContext.for_processor(load_processor(ProcessorRef.parse(REF), repo), "main")
    lock = LocalTarget().deploy_lock(app)
    lock.hold("run-a", wait_s=0, ttl_s=60)
    record = tmp_path / "state" / "deploy-locks" / f"{APP}.main.json"
    assert json.loads(record.read_text())["holder"] == "run-a"
    assert record.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "state" / "locks").exists()  # the start/sync flocks live apart


# ------------------------------------------------------------------------------------------------
# The CLI: `localctl lock`, and --lock/--lock-wait/--lock-ttl/--unlock on the verbs


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "processors" / "unit" / "lockproc"
    folder.mkdir(parents=True)
    (folder / "registry.yaml").write_text(YAML.format(hex="ab" * 32))
    return tmp_path


def localctl(base: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    full = {
        k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "THEORY_LOCK_HOLDER") and "GITHUB" not in k
    }
    full.update(
        THEORY_REPO_ROOT=str(base / "repo"),
        THEORY_STATE_DIR=str(base / "state"),
        THEORY_DOCKER=str(base / "no-docker"),  # sync-secrets copes without an engine; nothing here needs one
        DOCKER=str(base / "no-docker"),
    )
    full.update(env or {})
    proc = subprocess.run(
        [str(BIN / "localctl"), *args, "--ref", REF, "--env", "staging", "--json"],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_lock_verb_status_release_break(repo: Path) -> None:
    code, out, _ = localctl(repo, "lock")
    assert code == 0 and out["action"] == "status" and out["lock"] is None and out["held"] is False
    assert out["app"] == APP and out["target"] == "local" and out["store"] == str(repo / "state" / "deploy-locks")

    held = make_lock(repo / "state" / "deploy-locks", STAGING_KEY).hold("run-a", wait_s=0, ttl_s=60)
    code, out, _ = localctl(repo, "lock", "--status")
    assert code == 0 and out["held"] is True and out["expired"] is False
    assert out["lock"] == held.record.to_json()
    assert "held by run-a" in out["summary"]

    code, out, _ = localctl(repo, "lock", "--release", "--holder", "run-b")
    assert code == 0 and out["action"] == "release" and out["released"] is False and out["held_by"] == "run-a"
    code, out, _ = localctl(repo, "lock", "--release", env={"THEORY_LOCK_HOLDER": "run-a"})
    assert code == 0 and out["released"] is True and out["holder"] == "run-a"

    make_lock(repo / "state" / "deploy-locks", STAGING_KEY).hold("run-c", wait_s=0, ttl_s=60)
    code, out, err = localctl(repo, "lock", "--break")
    assert code == 0 and out["action"] == "break" and out["broken"] is True
    assert out["previous"]["holder"] == "run-c" and "held by run-c" in err
    code, out, _ = localctl(repo, "lock", "--break")
    assert code == 0 and out["broken"] is False and out["previous"] is None

    code, out, _ = localctl(repo, "lock", "--release")
    assert code == 2 and out["error"]["code"] == "ERR_USAGE" and "--holder" in out["error"]["message"]
    code, out, _ = localctl(repo, "lock", "--status", "--break")
    assert code == 2  # one action at a time
    code, out, _ = localctl(repo, "lock", "--holder", "x")
    assert code == 2 and "--release" in out["error"]["message"]


def test_verb_waits_for_another_holder_then_fails_naming_it(repo: Path) -> None:
    make_lock(repo / "state" / "deploy-locks", STAGING_KEY).hold("run-a", wait_s=0, ttl_s=60)
    t0 = time.monotonic()
    code, out, err = localctl(repo, "sync-secrets", "--lock", "run-b", "--lock-wait", "1")
    assert time.monotonic() - t0 >= 1
    assert code == errors.DeployLockedError.exit_code == 37
    assert out["error"]["code"] == "ERR_DEPLOY_LOCKED" and "held by run-a" in out["error"]["message"]
    assert "--break" in out["error"]["message"]
    assert err.count("waiting up to") == 1
    assert not (repo / "state" / "secrets").exists()  # nothing was done


def test_lock_then_unlock_around_a_verb(repo: Path) -> None:
    secret = {"OPENAI_API_KEY": "sk-lock-test"}
    code, out, _ = localctl(repo, "sync-secrets", "--lock", "run-a", env=secret)
    assert code == 0, out
    lock = out["lock"]
    assert lock["holder"] == "run-a" and lock["released"] is False and lock["continued"] is False
    assert set(lock) >= {"holder", "waited_s", "acquired_at", "expires_at", "released"}
    assert lock["expires_at"] - lock["acquired_at"] == pytest.approx(1800, abs=1)

    # A later job of the same run continues it (holder from THEORY_LOCK_HOLDER) and releases it.
    code, out, _ = localctl(
        repo, "sync-secrets", "--unlock", "--lock-ttl", "60", env={**secret, "THEORY_LOCK_HOLDER": "run-a"}
    )
    assert code == 0, out
    assert out["lock"]["continued"] is True and out["lock"]["released"] is True
    assert out["lock"]["acquired_at"] == lock["acquired_at"]
    assert localctl(repo, "lock")[1]["lock"] is None

    # --unlock releases on failure too, and the error carries the lock's facts.
    code, out, _ = localctl(repo, "sync-secrets", "--fail-on-missing", "--lock", "run-b", "--unlock")
    assert code == errors.MissingSecretError.exit_code
    assert out["error"]["details"]["lock"]["holder"] == "run-b"
    assert out["error"]["details"]["lock"]["released"] is True
    assert localctl(repo, "lock")[1]["lock"] is None

    # A dry run changes nothing: it neither waits for nor takes the lock.
    make_lock(repo / "state" / "deploy-locks", STAGING_KEY).hold("run-c", wait_s=0, ttl_s=60)
    code, out, _ = localctl(repo, "sync-secrets", "--check", "--lock", "run-d", "--lock-wait", "0", env=secret)
    assert code == 0 and "lock" not in out
    assert localctl(repo, "lock")[1]["lock"]["holder"] == "run-c"


def test_lock_flag_usage_errors(repo: Path) -> None:
    code, out, _ = localctl(repo, "verify-digest", "--unlock")
    assert code == 2 and "--lock HOLDER" in out["error"]["message"]
    code, out, _ = localctl(repo, "verify-digest", "--lock", "  ")
    assert code == 2 and "empty" in out["error"]["message"]
    code, out, _ = localctl(repo, "verify-digest", "--lock", "x", "--lock-ttl", "0")
    assert code == 2
