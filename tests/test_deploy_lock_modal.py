"""The deploy lock on Modal (targets.modal.ModalLockStore: a modal.Dict per environment), with the real
`modal` SDK against the control-plane stand-in, and the pipeline-level guarantee: two runs of one app
never interleave between start and verify.

Fixtures and the healthz stand-in come from tests/test_modal_target.py."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
import modal.exception
import pytest
from modal_standin import ModalStandIn

from tests import test_modal_target
from tests.helpers import assert_no_canary
from tests.test_modal_target import D_A, D_B, IMAGE_REPO, World
from theory_deploy.deploy_lock import DeployLock
from theory_deploy.errors import DeployLockedError
from theory_deploy.refs import ProcessorRef
from theory_deploy.targets.modal import LOCK_DICT, ModalLockStore, ModalTarget

pytestmark = pytest.mark.slow

# The Modal stand-in and its fixtures: the same ones as tests/test_modal_target.py, not copies
# (`images` pushes D_A and D_B: the stand-in pulls what a deploy references).
health, canaries, cp = test_modal_target.health, test_modal_target.canaries, test_modal_target.cp
images = test_modal_target.images

BIN = Path(sys.executable).parent
FAST_POLL = (0.1, 0.2)


def _world(tmp_path: Path, cp: ModalStandIn, canaries: dict[str, str], ref: ProcessorRef, name: str, pin: str) -> World:
    world = World(cp, tmp_path / name, ref, "staging", canaries, {})
    world.write(amd64=f"{IMAGE_REPO}@{pin}")
    return world


@pytest.fixture
def world(tmp_path: Path, cp: ModalStandIn, canaries: dict[str, str], images: tuple[str, str]) -> Iterator[World]:
    w = _world(tmp_path, cp, canaries, ProcessorRef("mlock", f"p{uuid.uuid4().hex[:8]}", 1), "repo", D_A)
    yield w
    for text in w.outputs:
        assert_no_canary(text, canaries)


def lock_for(world: World, env: str = "staging") -> DeployLock:
    """The app's lock as ModalTarget builds it, polling faster (the SDK of this process must point at
    the stand-in: `world.cp.activate()`)."""
    app = world.app()
    if env != app.env:
        from theory_deploy.targets.base import AppContext

        app = AppContext(app.processor, env, app.name, app.identity)  # type: ignore[arg-type]
    lock = ModalTarget().deploy_lock(app)
    lock.poll_s = FAST_POLL
    return lock


# ------------------------------------------------------------------------------------------------
# The stand-in answers the Dict RPCs as Modal does


def test_standin_dicts_are_per_environment_and_strict(cp: ModalStandIn) -> None:
    with cp.activate():
        with pytest.raises(modal.exception.NotFoundError, match="Dict 'locks' not found in environment 'dev'"):
            modal.Dict.from_name("locks", environment_name="dev").get("k")
        d = modal.Dict.from_name("locks", environment_name="dev", create_if_missing=True)
        assert d.put("k", "v1", skip_if_exists=True) is True
        assert d.put("k", "v2", skip_if_exists=True) is False  # absent keys only
        assert d.get("k") == "v1"
        assert d.put("k", "v3") is True and d.get("k") == "v3"
        assert d.pop("k", None) == "v3" and d.pop("k", None) is None and d.get("k") is None
        with pytest.raises(modal.exception.NotFoundError):
            modal.Dict.from_name("locks", environment_name="staging").get("k")  # another environment
        with pytest.raises(modal.exception.AlreadyExistsError):
            modal.Dict.objects.create("locks", environment_name="dev")
        modal.Dict.objects.create("locks", environment_name="staging")
        assert [x.name for x in modal.Dict.objects.list(environment_name="dev")] == ["locks"]
        modal.Dict.objects.delete("locks", environment_name="dev")
        with pytest.raises(modal.exception.NotFoundError):
            modal.Dict.from_name("locks", environment_name="dev").get("k")
        with pytest.raises(modal.exception.NotFoundError, match="Environment 'nowhere' not found"):
            modal.Dict.from_name("locks", environment_name="nowhere", create_if_missing=True).get("k")
    assert cp.state.dict_names("dev") == [] and cp.state.dict_names("staging") == ["locks"]
    for call in cp.state.calls_to("DictGetOrCreate"):
        assert call.environment_name in ("dev", "staging", "nowhere")
    for method in {c.method for c in cp.state.calls if c.method.startswith("Dict")}:
        # every Dict RPC the SDK made was answered by a real implementation, not an empty reply
        assert hasattr(cp.servicer, f"_do_{method}") or hasattr(cp.servicer, f"_stream_{method}"), method


def test_the_dict_calls_we_make_keep_their_signatures() -> None:
    # Drift guard (like tests/test_modal_sdk_surface.py) for the calls ModalLockStore makes.
    def shape(fn: Any) -> list[tuple[str, str, str]]:
        out = []
        for p in inspect.signature(fn).parameters.values():
            default = "<none>" if p.default is inspect.Parameter.empty else repr(p.default)
            out.append((p.name, p.kind.name, default))
        return out

    assert shape(modal.Dict.from_name) == [
        ("name", "POSITIONAL_OR_KEYWORD", "<none>"),
        ("environment_name", "KEYWORD_ONLY", "None"),
        ("create_if_missing", "KEYWORD_ONLY", "False"),
        ("client", "KEYWORD_ONLY", "None"),
    ]
    assert shape(modal.Dict.put)[:4] == [
        ("self", "POSITIONAL_OR_KEYWORD", "<none>"),
        ("key", "POSITIONAL_OR_KEYWORD", "<none>"),
        ("value", "POSITIONAL_OR_KEYWORD", "<none>"),
        ("skip_if_exists", "KEYWORD_ONLY", "False"),
    ]
    assert [p[0] for p in shape(modal.Dict.get)] == ["self", "key", "default"]
    assert [p[0] for p in shape(modal.Dict.pop)] == ["self", "key", "default"]
    for name in ("get", "put", "pop"):
        assert callable(getattr(getattr(modal.Dict, name), "aio", None))


# ------------------------------------------------------------------------------------------------
# The lock through ModalTarget


def test_modal_lock_contention_ordering_and_scope(world: World) -> None:
    with world.cp.activate():
        a, b = lock_for(world), lock_for(world)
        assert a.status() is None
        assert world.cp.state.dict_names("staging") == []  # reading never creates the Dict
        held_a = a.hold("run-a", wait_s=0, ttl_s=60)
        assert world.cp.state.dict_items("staging", LOCK_DICT) == {world.name: held_a.record.dumps()}
        trying = threading.Event()
        got: dict[str, Any] = {}

        def take_b() -> None:
            got["tried_at"] = time.time()
            trying.set()
            got["held"] = b.hold("run-b", wait_s=30, ttl_s=60)

        thread = threading.Thread(target=take_b)
        thread.start()
        assert trying.wait(10)
        time.sleep(1.0)
        assert thread.is_alive(), "B must wait while A holds the lock"
        # The same app name in main (staging and main share the slug) has a lock of its own.
        assert lock_for(world, "main").status() is None
        released_at = time.time()
        assert a.release("run-a")["released"] is True
        thread.join(20)
        held_b = got["held"]
        assert got["tried_at"] < released_at <= held_b.record.acquired_at
        assert held_b.waited_s >= 1.0
        assert b.status() == held_b.record
        assert a.release("run-a")["released"] is False  # not A's any more: left alone
        assert b.release("run-b")["released"] is True
    assert world.cp.state.dict_items("staging", LOCK_DICT) == {}
    assert world.cp.state.dict_names("main") == [] and world.cp.state.dict_names("dev") == []
    lookups = world.cp.state.calls_to("DictGetOrCreate")
    assert {c.environment_name for c in lookups} == {"staging", "main"}
    assert all(c.status == "NOT_FOUND" for c in lookups if c.environment_name == "main")  # looked, created nothing


def test_modal_lease_expiry_renewal_and_timeout(world: World) -> None:
    with world.cp.activate():
        lock = lock_for(world)
        first = lock.hold("run-a", wait_s=0, ttl_s=60)
        again = lock.hold("run-a", wait_s=0, ttl_s=120, expect_held=True)
        assert again.continued is True and again.record.acquired_at == first.record.acquired_at
        assert again.record.expires_at > first.record.expires_at
        with pytest.raises(DeployLockedError) as caught:
            lock_for(world).hold("run-b", wait_s=0.5, ttl_s=60)
        assert "held by run-a" in caught.value.message
        assert f"modalctl lock --ref {world.ref} --env staging --break" in caught.value.render()

        lock.hold("run-a", wait_s=0, ttl_s=0.2)  # renewed to a lease that ends at once
        time.sleep(0.3)
        taken = lock_for(world).hold("run-b", wait_s=0, ttl_s=60)
        assert taken.took_over == "run-a"
        with pytest.raises(DeployLockedError, match="run-a lost the deploy lock"):
            lock.hold("run-a", wait_s=0, ttl_s=60, expect_held=True)
        assert lock.status() == taken.record


def test_modal_delete_never_removes_a_record_it_did_not_compare(world: World) -> None:
    with world.cp.activate():
        lock = lock_for(world)
        held = lock.hold("run-a", wait_s=0, ttl_s=60)
        store = lock.store
        assert isinstance(store, ModalLockStore)
        renewed = lock.hold("run-a", wait_s=0, ttl_s=90)
        assert store.delete(world.name, held.record) is False  # stale compare: nothing removed
        assert lock.status() == renewed.record


def test_modalctl_lock_verb_and_flags(world: World) -> None:
    out = world.ok("lock", "--status")
    assert (
        out["lock"] is None
        and out["target"] == "modal"
        and out["store"] == f"Modal Dict {LOCK_DICT} in the environment staging"
    )
    assert world.cp.state.dict_names("staging") == []
    with world.cp.activate():
        lock_for(world).hold("gate", wait_s=0, ttl_s=60)
    run = world.ctl("sync-secrets", "--lock", "run-b", "--lock-wait", "1")
    assert run.code == 37 and run.out["error"]["code"] == "ERR_DEPLOY_LOCKED"
    assert "held by gate" in run.out["error"]["message"]
    assert world.cp.state.calls_to("SecretGetOrCreate") == []  # it waited, then did nothing

    out = world.ok("lock", "--release", "--holder", "run-b")
    assert out["released"] is False and out["held_by"] == "gate"
    out = world.ok("lock", "--break")
    assert out["broken"] is True and out["previous"]["holder"] == "gate"
    assert world.ok("lock")["lock"] is None

    out = world.ok("sync-secrets", "--lock", "run-b", extra=world.secrets_env())
    assert out["lock"]["holder"] == "run-b" and out["lock"]["released"] is False
    status = world.ok("lock")
    assert status["held"] is True and status["lock"]["holder"] == "run-b"
    out = world.ok("sync-secrets", "--unlock", extra={**world.secrets_env(), "THEORY_LOCK_HOLDER": "run-b"})
    assert out["lock"]["continued"] is True and out["lock"]["released"] is True
    assert world.ok("lock")["lock"] is None


# ------------------------------------------------------------------------------------------------
# Two pipeline runs of one app: run B's start never lands between run A's start and A's verify


def _pipeline(world: World) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "theory-deploy"),
            "pipeline",
            "--ref",
            str(world.ref),
            "--env",
            "staging",
            "--target",
            "modal",
            "--stages",
            "start,sync-secrets,verify",
            "--mode",
            "none",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=world.cli_env(world.secrets_env()),
    )


def test_two_pipeline_runs_of_one_app_never_interleave(
    tmp_path: Path, cp: ModalStandIn, canaries: dict[str, str], images: tuple[str, str]
) -> None:
    # Two checkouts of one processor pinning different digests: had B deployed between A's start and
    # A's verify, A would verify B's digest and fail (and the other way round).
    ref = ProcessorRef("mlock", f"p{uuid.uuid4().hex[:8]}", 1)
    worlds = {"a": _world(tmp_path, cp, canaries, ref, "a", D_A), "b": _world(tmp_path, cp, canaries, ref, "b", D_B)}
    with cp.activate():
        gate = lock_for(worlds["a"])
        gate.hold("gate", wait_s=0, ttl_s=120)  # both runs start while the lock is taken: overlap is certain
    procs = {name: _pipeline(world) for name, world in worlds.items()}
    stderr: dict[str, list[str]] = {name: [] for name in procs}
    waiting = {name: threading.Event() for name in procs}

    def pump(name: str) -> None:
        stream = procs[name].stderr
        assert stream is not None
        for line in stream:
            stderr[name].append(line)
            if line.startswith("waiting up to") and "held by gate" in line:
                waiting[name].set()

    pumps = [threading.Thread(target=pump, args=(name,), daemon=True) for name in procs]
    for thread in pumps:
        thread.start()
    try:
        for name in procs:
            assert waiting[name].wait(120), f"run {name} never waited for the lock:\n{''.join(stderr[name])}"
        with cp.activate():
            assert gate.release("gate")["released"] is True
        outs = {}
        for name, proc in procs.items():
            stdout, _ = proc.communicate(timeout=300)
            for thread in pumps:
                thread.join(10)
            assert proc.returncode == 0, f"run {name}: {stdout}\n{''.join(stderr[name])}"
            outs[name] = json.loads(stdout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, out in outs.items():
        assert_no_canary(json.dumps(out) + "".join(stderr[name]), canaries)
    stages = {name: {s["stage"]: s for s in out["stages"]} for name, out in outs.items()}
    for name in outs:
        assert stages[name]["verify"]["verified"] is True
        assert stages[name]["verify"]["readings"]["healthz"] == (D_A if name == "a" else D_B)
        assert outs[name]["lock"]["released"] is True
    first, second = sorted(outs, key=lambda name: stages[name]["start"]["started_at"])
    # The second run's start began after the first run's verify had finished, and its lock was taken
    # after the first run released it.
    assert stages[second]["start"]["started_at"] >= stages[first]["verify"]["finished_at"]
    assert outs[second]["lock"]["acquired_at"] >= outs[first]["lock"]["released_at"]
    assert outs[second]["lock"]["waited_s"] > outs[first]["lock"]["waited_s"]
    # Each target stage carries the lock: the first takes it, the next ones continue it.
    for name in outs:
        assert [stages[name][s]["lock"]["continued"] for s in ("start", "sync-secrets", "verify")] == [
            False,
            True,
            True,
        ]
    assert cp.state.dict_items("staging", LOCK_DICT) == {}
    deploys = [d for d in cp.state.deploys("staging", worlds["a"].name) if not d.noop]
    assert [d.images["web"].env["IMAGE_DIGEST"] for d in deploys] == [
        D_A if first == "a" else D_B,
        D_B if first == "a" else D_A,
    ]


def test_split_jobs_continue_one_lock(world: World) -> None:
    """The reusable workflow's shape: one job per verb, each a fresh process, one holder for the run."""
    flags = ("--target", "modal", "--mode", "none", "--json")

    def pipeline(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [str(BIN / "theory-deploy"), "pipeline", "--ref", str(world.ref), "--env", "staging", *flags, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=world.cli_env(world.secrets_env()),
        )
        world.outputs += [proc.stdout, proc.stderr]
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return dict(json.loads(proc.stdout))

    started = pipeline("--stages", "start", "--lock", "run-7-1", "--keep-lock")
    assert started["lock"]["holder"] == "run-7-1" and started["lock"]["released"] is False
    assert world.ok("lock")["lock"]["holder"] == "run-7-1"  # kept for the next job

    # Another run cannot deploy meanwhile: it waits, then gives up naming the holder.
    other = world.ctl("start", "--lock", "run-8-1", "--lock-wait", "1")
    assert other.code == 37 and "held by run-7-1" in other.out["error"]["message"]

    synced = pipeline("--stages", "sync-secrets", "--lock", "run-7-1", "--keep-lock")
    assert synced["lock"]["continued"] is True and synced["lock"]["released"] is False
    verified = world.ok("verify-digest", "--lock", "run-7-1", "--unlock")
    assert verified["verified"] is True
    assert verified["lock"]["continued"] is True and verified["lock"]["released"] is True
    assert verified["lock"]["acquired_at"] == started["lock"]["acquired_at"]
    assert world.ok("lock")["lock"] is None

    with pytest.raises(AssertionError, match="--keep-lock keeps the deploy lock"):
        pipeline("--stages", "verify", "--keep-lock")  # a lock of its own would be lost for good
