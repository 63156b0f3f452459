"""The stage engine (theory_deploy.pipeline) end to end, in-process and fast: what `Pipeline.run` reports,
what each stage records, how a failure names its stage, and the deploy lock around the target stages.

Why here and not in test_pipeline.py: those tests drive docker builds and subprocesses, so the mutation
run (fast suites only) never reached the engine. Here every seam is a real one and cheap:

* the **local target** (`target="local"`, picked by the engine itself) drives the docker CLI stand-in
  (tests/fake_docker.py, via THEORY_DOCKER): a container record that already runs the pin makes
  `start` find it unchanged, `sync-secrets` finds nothing to change, and `verify` reads the engine's
  RepoDigests and the container's /healthz;
* the container's published port is the **real processor runtime** (theory_runtime, in a thread), so
  /healthz reports IMAGE_DIGEST and `run` speaks theory.run.v1 for real;
* the **deploy lock** is the local target's real lock file under THEORY_STATE_DIR;
* the **pin** stage verifies `from_push` records against tiny images pushed to the loopback
  registry (marked `registry`); the **pr** stage reads the base branch of a real git remote, and
  pushes the bot branch and opens the PR through the GitHub stand-in (tests/github_standin).

The Modal target is not needed for any of this: the engine treats every target alike, and the local
target reaches each line of it in well under a second per run. Nothing here builds an image, so
`stage_build` is only driven to the refusals made before the engine is asked, and `stage_push`
(which pushes what a build made) is left to test_pipeline.py.

Exact values are asserted: report keys, stage lists, summary lines, error codes and messages (a
failure's message is "<ref>: pipeline stopped at <stage>: ..." with several refs).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_docker import FakeDocker
from tests.github_standin import GitHubStandIn
from tests.modal_standin.images import push_tiny_image
from theory_deploy.errors import InputsError, TheoryDeployError, UsageError
from theory_deploy.pipeline import (
    Pipeline,
    PipelineRequest,
    ProcessorResult,
    StageReport,
    default_inputs,
    parse_stages,
    platform_of,
    resolve_stages,
    stage_problems,
)
from theory_deploy.push_records import PushRecord
from theory_deploy.refs import ImageRef, ProcessorRef
from theory_deploy.registry_file import load_processor
from theory_deploy.targets.base import AppContext
from theory_deploy.targets.local import LocalTarget, container_name, host_platform

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("theory_runtime") is None:  # not pip-installed: use the source tree
    sys.path.insert(0, str(REPO_ROOT / "runtime"))

from theory_runtime import create_app  # noqa: E402
from theory_runtime.testing import ServerThread  # noqa: E402

REF = ProcessorRef("pipe", "engine", 1)
KEYED = ProcessorRef("pipe", "keyed", 1)  # the same processor with a required secret
SLUG = REF.slug
PLATFORM = host_platform()  # what the local target runs
REPOSITORY = "ghcr.io/acme/pipe-engine"
DIGEST = "sha256:" + "d" * 64
PIN = f"{REPOSITORY}@{DIGEST}"
OTHER = "sha256:" + "e" * 64
OTHER_PIN = f"{REPOSITORY}@{OTHER}"
EXAMPLE = {"text": "from the examples"}

REGISTRY_YAML = """\
# a test processor for tests/test_pipeline_contract.py
ref: {ref}
build:
  port: 8000
  platforms: [linux/amd64, linux/arm64]
image:
  repository: {repository}
  platforms:
    amd64: {amd64}
    arm64: {arm64}
runtime:
  cpu: 0.5
  memory_gb: 0.25
  timeout_s: 60
secrets:
  required: {required}
  optional: [PIPE_OPTIONAL]
inputs:
  type: object
  examples:
    - {example}
"""

SCRUBBED_ENV = (
    "GITHUB_ACTIONS",
    "GITHUB_OUTPUT",
    "GITHUB_STEP_SUMMARY",
    "THEORY_LOCK_HOLDER",
    "THEORY_REPO_ROOT",
    "THEORY_REGISTRY_HOST",
    "REGISTRY_USERNAME",
    "REGISTRY_PASSWORD",
    "PIPE_OPTIONAL",
    "PIPE_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GITHUB_REPOSITORY",
    "GITHUB_API_URL",
    "GITHUB_APP_ID",
    "GITHUB_APP_PRIVATE_KEY",
    "GITHUB_APP_INSTALLATION_ID",
)


# ------------------------------------------------------------------------------------------------
# The processor behind the container: the real runtime, serving /healthz and theory.run.v1


async def _handler(ctx: Any) -> dict[str, Any]:
    ctx.token("streamed-token")  # the engine runs with stream_tokens=False: this must not reach stderr
    if isinstance(ctx.inputs, dict) and "sleep" in ctx.inputs:
        await asyncio.sleep(float(ctx.inputs["sleep"]))
    return {"mode": ctx.mode, "inputs": ctx.inputs}


class OnHealthz:
    """ASGI wrapper: runs a test's action once, when the next /healthz request arrives (verify's
    reading), so something can happen *between* two stages of a run."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.action: Callable[[], None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz" and self.action is not None:
            action, self.action = self.action, None
            action()
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, OnHealthz]]:
    spec = tmp_path_factory.mktemp("runtime") / "registry.yaml"
    spec.write_text(f"ref: {REF}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGE_DIGEST", DIGEST)  # what /healthz reports: read once, when the app is made
        app = OnHealthz(create_app(_handler, spec, heartbeat_s=5))
    with ServerThread(app) as server:
        yield server, app


# ------------------------------------------------------------------------------------------------
# A world: a repository with test processors, a state folder, the docker stand-in


class World:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, port: int, on_healthz: OnHealthz) -> None:
        self.tmp, self.port, self.on_healthz = tmp, port, on_healthz
        self.root = tmp / "repo"
        self.state = tmp / "state"
        for name in SCRUBBED_ENV:
            monkeypatch.delenv(name, raising=False)
        self.docker = FakeDocker(tmp / "bin")
        monkeypatch.setenv("THEORY_DOCKER", str(self.docker.path))
        monkeypatch.setenv("DOCKER", str(self.docker.path))
        monkeypatch.setenv("THEORY_STATE_DIR", str(self.state))
        monkeypatch.setenv("GIT_BRANCH", "feat/pipe")
        monkeypatch.setenv("GIT_USER", "tester")
        self.write(REF)
        self.write(KEYED, required="[PIPE_KEY]")
        self.progress: list[str] = []  # the engine's progress lines, in order

    def path(self, ref: ProcessorRef) -> Path:
        return self.root / "processors" / ref.namespace / ref.name / "registry.yaml"

    def write(
        self,
        ref: ProcessorRef,
        *,
        amd64: str | None = PIN,
        arm64: str | None = PIN,
        repository: str = REPOSITORY,
        required: str = "[]",
        text: str | None = None,
    ) -> None:
        path = self.path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            text
            or REGISTRY_YAML.format(
                ref=ref,
                repository=repository,
                amd64=amd64 or "null",
                arm64=arm64 or "null",
                required=required,
                example=json.dumps(EXAMPLE),
            )
        )

    def app(self, ref: ProcessorRef = REF, env: str = "staging") -> AppContext:
        return AppContext.for_processor(load_processor(ref, self.root), env)  # type: ignore[arg-type]

    def deploy(
        self, ref: ProcessorRef = REF, env: str = "staging", *, digest: str = DIGEST, published: bool = True
    ) -> AppContext:
        """A container that runs `digest` exactly as `start` would have left it, published on the
        runtime's port: start finds it unchanged. Its labels (run settings hash, secrets fingerprint)
        are the ones the target itself computes for this app, from the same secret store."""
        target = LocalTarget()
        app = self.app(ref, env)
        image = ImageRef.parse_digest_ref(f"{REPOSITORY}@{digest}")
        plan = target._secret_plan(app, target._store(app))
        args, _config = target._run_args(app, image, plan)
        labels = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--label")
        image_id = "sha256:" + hashlib.sha256(digest.encode()).hexdigest()  # one engine image per digest
        self.docker.containers[container_name(app)] = {
            "Name": "/" + container_name(app),
            "Id": "c0ffee" * 8,
            "Image": image_id,
            "State": {"Status": "running"},
            "Config": {"Labels": labels},
            "NetworkSettings": {
                "Ports": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(self.port)}] if published else None}
            },
        }
        self.docker.images[image_id] = {"RepoDigests": [f"{REPOSITORY}@{digest}"]}
        self.docker.save()
        return app

    def request(self, stages: list[str], env: str | None = "staging", **kw: Any) -> PipelineRequest:
        kw.setdefault("refs", [REF])
        kw.setdefault("repo_root", self.root)
        return PipelineRequest(env=env, target="local", stages=stages, **kw)  # type: ignore[arg-type]

    def pipeline(self, request: PipelineRequest) -> Pipeline:
        return Pipeline(request, progress=self.progress.append)

    def lock_file(self, app: str = SLUG, env: str = "staging") -> Path:
        """The local target's deploy lock record, keyed by container name (`<app>.<env>`)."""
        return self.state / "deploy-locks" / f"{app}.{env}.json"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: tuple[ServerThread, OnHealthz]) -> Iterator[World]:
    server, hook = runtime
    yield World(tmp_path, monkeypatch, server.port, hook)
    hook.action = None


def _stage(report: dict[str, Any]) -> tuple[str, str]:
    return report["stage"], report["status"]


def _lock_keys(lock: dict[str, Any]) -> list[str]:
    return sorted(lock)


ROW = re.compile(r"^  (?P<stage>[a-z-]{1,12}) +(?P<status>ok|failed) +\d+\.\ds$")


def _summary_row(line: str) -> tuple[str, str]:
    """One stage line of the summary: name padded to 13, status to 7, seconds as %6.1f."""
    match = ROW.match(line)
    assert match and line[2:15] == f"{match['stage']:<13}" and line[16:23] == f"{match['status']:<7}", line
    assert line[23] == " " and line[24:] == f"{float(line[24:-1]):6.1f}s", line
    return match["stage"], match["status"]


STEP = re.compile(r"^<== (?P<label>.*?)(?P<stage>[a-z-]+): ok in \d+\.\ds$")


def _assert_timed(stage: dict[str, Any], t0: float, t1: float) -> None:
    """started_at/finished_at: epoch seconds within the run, rounded to ms; seconds is the stage's time."""
    assert t0 - 0.002 <= stage["started_at"] <= stage["finished_at"] <= t1 + 0.002
    assert 0 <= stage["seconds"] < 10
    assert stage["seconds"] == pytest.approx(stage["finished_at"] - stage["started_at"], abs=0.01)
    for key in ("seconds", "started_at", "finished_at"):
        assert isinstance(stage[key], float) and stage[key] == round(stage[key], 3)


# ------------------------------------------------------------------------------------------------
# The rules, without a run: --stages, refused combinations, the request's own checks, the JSON shapes


def test_an_unknown_stage_is_refused_with_the_choices_and_an_example() -> None:
    with pytest.raises(UsageError) as caught:
        parse_stages("build deploy,ship")
    assert caught.value.message == (
        "--stages: unknown stage(s) deploy, ship; choose `all` or from build, push, pin, pr, start, sync-secrets, "
        "verify, run."
    )
    assert caught.value.remedy == "e.g. --stages build,push,pin"


@pytest.mark.parametrize(
    ("stages", "env", "mode", "from_push", "pr_base", "expected"),
    [
        (
            ["build", "push", "pin", "pr", "start", "run"],
            "staging",
            None,
            True,
            None,
            [
                "stages build, push, pin, pr are not allowed in staging: promotion is exact, staging deploys the "
                "digest registry.yaml pins on this branch and never rebuilds. Build and pin in dev, then merge the pins.",
                "stage run needs a mode (mock or real).",
                "from-push names digests already pushed: drop the build and push stages, or from-push.",
                "stage pr needs the branch the pin PR targets (pr-base / --pr-base).",
            ],
        ),
        (
            ["push", "pin", "verify"],
            None,
            "mock",
            False,
            "main",
            [
                "stages start/sync-secrets/verify/run need an environment: dev, staging or main.",
                "stage push pushes what this run built: add build, or give from-push instead.",
            ],
        ),
        (
            ["build"],
            None,
            None,
            True,
            None,
            ["from-push names digests already pushed: drop the build and push stages, or from-push."],
        ),
        (
            ["push"],
            None,
            None,
            True,
            None,
            [
                "from-push names digests already pushed: drop the build and push stages, or from-push.",
                "stage push pushes what this run built: add build, or give from-push instead.",
            ],
        ),
        (
            ["pin"],
            None,
            None,
            False,
            None,
            ["stage pin pins what this run pushed: add build and push, or give from-push."],
        ),
        (["build", "push", "pin"], None, None, False, None, []),
        (["pin"], None, None, True, None, []),
        (["start", "sync-secrets", "verify"], "main", None, False, None, []),
        (["run"], "dev", "real", False, None, []),
    ],
)
def test_the_refused_combinations_each_say_why(stages, env, mode, from_push, pr_base, expected) -> None:
    assert stage_problems(stages, env=env, mode=mode, from_push=from_push, pr_base=pr_base) == expected


def test_all_adds_the_deploy_stages_to_the_build_stages_in_dev() -> None:
    assert resolve_stages(None, env="dev", mode=None, open_pr=False) == [
        "build",
        "push",
        "pin",
        "start",
        "sync-secrets",
        "verify",
    ]


def test_a_request_is_checked_with_its_own_environment_mode_push_and_base() -> None:
    request = PipelineRequest(
        refs=[REF], env="staging", mode="mock", stages=["build", "pr", "run"], from_push=Path("p"), pr_base="main"
    )
    with pytest.raises(UsageError) as caught:
        request.check()
    assert caught.value.message == (
        "cannot run these stages:\n"
        "  - stages build, pr are not allowed in staging: promotion is exact, staging deploys the digest registry.yaml "
        "pins on this branch and never rebuilds. Build and pin in dev, then merge the pins.\n"
        "  - from-push names digests already pushed: drop the build and push stages, or from-push."
    )
    PipelineRequest(refs=[REF], env="dev", mode="mock", stages=["build", "push"]).check()  # no from-push: fine
    PipelineRequest(refs=[REF], env="dev", mode=None, stages=["start"], from_push=Path("p")).check()
    PipelineRequest(refs=[REF], env=None, mode=None, stages=["pr"], pr_base="main").check()


def test_a_request_reports_every_problem_at_once_the_environment_first() -> None:
    request = PipelineRequest(refs=[], env="prod", mode="loud", stages=[], continue_lock=True, lock_wait_s=-1)  # type: ignore[arg-type]
    with pytest.raises(UsageError) as caught:
        request.check()
    assert caught.value.message == (
        "cannot run these stages:\n"
        "  - 'prod' is not an environment; expected dev, staging or main.\n"
        "  - continuing a deploy lock needs the holder that took it (lock_holder).\n"
        "  - the lock wait must be 0 or more seconds and the lock lease (ttl) more than 0.\n"
        "  - 'loud' is not a mode; expected mock or real.\n"
        "  - no processor ref given."
    )


@pytest.mark.parametrize(
    ("holder", "ttl", "problem"),
    [
        ("  ", 60, "lock holder: the lock holder is empty."),
        ("x" * 201, 60, "lock holder: the lock holder must be printable text of at most 200 characters."),
        ("run-1", 0, "the lock wait must be 0 or more seconds and the lock lease (ttl) more than 0."),
    ],
)
def test_a_request_refuses_a_bad_holder_or_lease(holder: str, ttl: float, problem: str) -> None:
    request = PipelineRequest(
        refs=[REF], env=None, stages=["pin"], from_push=Path("p"), lock_holder=holder, lock_ttl_s=ttl
    )
    with pytest.raises(UsageError) as caught:
        request.check()
    assert caught.value.message == f"cannot run these stages:\n  - {problem}"


def test_a_request_accepts_no_wait_a_short_lease_no_mode_and_no_environment() -> None:
    PipelineRequest(
        refs=[REF], env=None, mode=None, stages=["pin"], from_push=Path("p"), lock_wait_s=0, lock_ttl_s=0.5
    ).check()
    PipelineRequest(refs=[REF], env="main", stages=["verify"], lock_holder="run-1", continue_lock=True).check()


def test_a_stage_report_rounds_to_milliseconds_and_adds_its_detail() -> None:
    report = StageReport("verify", "ok", 1.23456, {"verified": True}, 10.12345, 11.98765)
    assert report.to_json() == {
        "stage": "verify",
        "status": "ok",
        "seconds": 1.235,
        "started_at": 10.123,
        "finished_at": 11.988,
        "verified": True,
    }
    assert StageReport("pin", "failed", 0.5).to_json() == {"stage": "pin", "status": "failed", "seconds": 0.5}
    assert StageReport("pin", "ok", 0.5, started_at=3.0).to_json() == {"stage": "pin", "status": "ok", "seconds": 0.5}
    assert StageReport("pin", "ok", 0.5, finished_at=3.0).to_json() == {"stage": "pin", "status": "ok", "seconds": 0.5}


def test_a_processor_result_reports_only_what_happened() -> None:
    assert ProcessorResult("pipe/engine@1").to_json() == {"ref": "pipe/engine@1", "app": "", "stages": []}
    pushed = PushRecord("pipe/engine@1", {"amd64": PIN}, index=OTHER_PIN)
    error = UsageError("it broke.", remedy="Mend it.")
    result = ProcessorResult(
        "pipe/engine@1",
        app=SLUG,
        pushed=pushed,
        deployed=PIN,
        verified=False,
        lock={"holder": "h"},
        reports=[StageReport("verify", "failed", 0.25)],
        error=error,
    )
    assert result.to_json() == {
        "ref": "pipe/engine@1",
        "app": SLUG,
        "stages": [{"stage": "verify", "status": "failed", "seconds": 0.25}],
        "lock": {"holder": "h"},
        "pushed": {"ref": "pipe/engine@1", "index": OTHER_PIN, "platforms": {"amd64": PIN}},
        "deployed": PIN,
        "verified": False,
        "error": {"code": "ERR_USAGE", "message": "it broke. Fix: Mend it."},
    }


def test_run_inputs_default_to_a_dict_example_only(tmp_path: Path) -> None:
    folder = tmp_path / "processors" / REF.namespace / REF.name
    folder.mkdir(parents=True)
    for examples in ("[]", '["not an object"]'):
        text = REGISTRY_YAML.format(
            ref=REF, repository=REPOSITORY, amd64="null", arm64="null", required="[]", example="x"
        )
        (folder / "registry.yaml").write_text(text.replace("  examples:\n    - x\n", f"  examples: {examples}\n"))
        processor = load_processor(REF, tmp_path)
        with pytest.raises(InputsError) as caught:
            default_inputs(processor)
        assert caught.value.render() == (
            f"{REF}: the run stage has no inputs: none were given and the inputs schema of {processor.path} has no "
            "`examples`. Fix: Pass inputs (--inputs-json, or the action's inputs-json), or add `examples: [{...}]` to "
            "`inputs` in registry.yaml."
        )


def test_the_platform_of_a_target_without_building_it() -> None:
    assert platform_of("local") == PLATFORM
    assert platform_of("modal") == "amd64"
    assert platform_of("anything-else") == "amd64"  # only `local` is asked; nothing else is built


# ------------------------------------------------------------------------------------------------
# The whole deploy: start, sync-secrets, verify, run under one deploy lock


def test_a_deploy_reports_every_stage_and_releases_the_lock_after_the_last(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.deploy()
    request = world.request(["start", "sync-secrets", "verify", "run"], lock_holder="ci-1", lock_ttl_s=120)
    pipeline = world.pipeline(request)
    t0 = time.time()
    report = pipeline.run()
    t1 = time.time()

    assert list(report) == ["env", "target", "seconds", "summary", "ref", "app", "stages", "lock"]
    assert (report["env"], report["target"], report["ref"], report["app"]) == ("staging", "local", str(REF), SLUG)
    seconds = report["seconds"]  # the whole run's wall time, rounded to ms
    assert isinstance(seconds, float) and seconds == round(seconds, 3) and 0 < seconds < t1 - t0 + 0.01
    stages = report["stages"]
    assert [_stage(s) for s in stages] == [("start", "ok"), ("sync-secrets", "ok"), ("verify", "ok"), ("run", "ok")]
    for stage in stages:
        _assert_timed(stage, t0, t1)
    url = f"http://127.0.0.1:{world.port}"
    start, sync, verify, run = stages
    assert {k: v for k, v in start.items() if k not in ("seconds", "started_at", "finished_at", "lock")} == {
        "stage": "start",
        "status": "ok",
        "app": SLUG,
        "env": "staging",
        "image": PIN,
        "digest": DIGEST,
        "url": url,
        "ws_url": f"ws://127.0.0.1:{world.port}/run",
        "action": "unchanged",
        "reason": "already running that digest with the same secrets",
        "container": f"{SLUG}.staging",
        "container_id": "c0ffeec0ffee",
        "secrets": {"injected": [], "pending": [], "unset_optional": ["PIPE_OPTIONAL"]},
    }  # no "summary": the target's summary line is not a stage fact
    assert (sync["present"], sync["missing"], sync["check"], sync["restarted"]) == ([], ["PIPE_OPTIONAL"], False, False)
    assert "summary" not in sync and "summary" not in verify
    assert (verify["verified"], verify["expected"], verify["readings"]) == (
        True,
        PIN,
        {"engine": DIGEST, "healthz": DIGEST},
    )
    assert run["envelope"]["status"] == "success"
    assert run["envelope"]["outputs"] == {"mode": "mock", "inputs": EXAMPLE}  # the first `examples` entry

    # The lock: taken before start, renewed before each next stage, released after the last one.
    locks = [s["lock"] for s in stages]
    assert [(x["holder"], x["continued"], x["released"]) for x in locks] == [
        ("ci-1", False, False),
        ("ci-1", True, False),
        ("ci-1", True, False),
        ("ci-1", True, True),
    ]
    assert [_lock_keys(x) for x in locks[:3]] == [
        ["acquired_at", "continued", "expires_at", "holder", "released", "waited_s"]
    ] * 3
    assert _lock_keys(locks[3]) == [
        "acquired_at",
        "continued",
        "expires_at",
        "holder",
        "released",
        "released_at",
        "waited_s",
    ]
    assert t0 <= locks[3]["released_at"] <= t1
    assert len({x["acquired_at"] for x in locks}) == 1
    assert [x["expires_at"] - x["acquired_at"] for x in locks[:1]] == [pytest.approx(120, abs=1)]  # the lease asked for
    waited = [x["waited_s"] for x in locks]  # summed over the holds, each rounded to ms
    assert all(isinstance(w, float) and w == round(w, 3) for w in waited)
    assert 0 <= waited[0] <= waited[1] <= waited[2] <= waited[3] < 1
    assert report["lock"] == locks[3]
    assert not world.lock_file().exists()

    lines = report["summary"].splitlines()
    assert lines[0] == f"pipeline {REF} -> local/staging ({SLUG}): ok"
    assert [_summary_row(line) for line in lines[1:5]] == [(s["stage"], "ok") for s in stages]
    assert [float(line[24:-1]) for line in lines[1:5]] == [pytest.approx(s["seconds"], abs=0.051) for s in stages]
    assert lines[5:] == [f"  deploy lock: ci-1 (released; waited {waited[3]:.1f}s)"]
    assert [line.split(": ok in")[0] for line in world.progress] == [
        "==> start",
        "<== start",
        "==> sync-secrets",
        "<== sync-secrets",
        "==> verify",
        "<== verify",
        "==> run",
        "<== run",
    ]
    assert all(STEP.match(line) for line in world.progress[1::2])

    # What every front end reads off the result.
    (result,) = pipeline.results
    assert (result.ref, result.app, result.url, result.platform) == (str(REF), SLUG, url, PLATFORM)
    assert (result.deployed, result.verified, result.error) == (PIN, True, None)
    assert result.secrets == {"present": [], "missing": ["PIPE_OPTIONAL"]}
    assert result.envelope == run["envelope"]
    assert result.registry_path == world.path(REF)
    assert result.pins_before == {"amd64": PIN, "arm64": PIN}
    assert (result.pushed, result.pins, result.pr_url, result.pr_action) == (None, {}, "", "")
    assert result.to_json() == {
        "ref": str(REF),
        "app": SLUG,
        "stages": stages,
        "lock": locks[3],
        "deployed": PIN,
        "verified": True,
    }
    # The run streams no tokens (stream_tokens=False) and prints no workflow commands outside Actions.
    err = capsys.readouterr().err
    assert "streamed-token" not in err and "::group::" not in err


def test_in_github_actions_each_stage_is_a_log_group(world: World, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    world.deploy()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    world.pipeline(world.request(["start", "verify"])).run()
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("::")] == [
        f"::group::theory-deploy start: {REF}",
        "::endgroup::",
        f"::group::theory-deploy verify: {REF}",
        "::endgroup::",
    ]


def test_a_run_without_a_holder_uses_its_own_and_always_releases_it(world: World) -> None:
    world.deploy()
    report = world.pipeline(world.request(["verify"], release_lock=False)).run()
    lock = report["lock"]
    assert re.fullmatch(r"[^@]+@[^:]+:\d+:[0-9a-f]{32}", lock["holder"]), lock["holder"]
    assert lock["holder"].split(":")[-2] == str(os.getpid())
    assert (lock["released"], lock["continued"]) == (True, False)
    assert report["stages"][0]["lock"] == lock
    assert not world.lock_file().exists()
    assert (
        report["summary"].splitlines()[-1]
        == f"  deploy lock: {lock['holder']} (released; waited {lock['waited_s']:.1f}s)"
    )


def test_a_named_holder_keeps_the_lock_for_a_later_job_which_continues_and_releases_it(world: World) -> None:
    world.deploy()
    first = world.pipeline(world.request(["start"], lock_holder="run-7", release_lock=False)).run()
    assert first["lock"]["released"] is False and "released_at" not in first["lock"]
    assert first["summary"].splitlines()[-1] == f"  deploy lock: run-7 (kept; waited {first['lock']['waited_s']:.1f}s)"
    assert json.loads(world.lock_file().read_text())["holder"] == "run-7"

    later = world.pipeline(world.request(["verify"], lock_holder="run-7", continue_lock=True)).run()
    lock = later["lock"]
    assert (lock["holder"], lock["continued"], lock["released"]) == ("run-7", True, True)
    assert lock["acquired_at"] == first["lock"]["acquired_at"]  # the same lease, renewed
    assert not world.lock_file().exists()


def test_a_named_holder_is_released_when_the_request_says_so(world: World) -> None:
    world.deploy()
    report = world.pipeline(world.request(["verify"], lock_holder="run-8")).run()
    assert (report["lock"]["holder"], report["lock"]["released"]) == ("run-8", True)
    assert not world.lock_file().exists()


def test_continuing_a_lock_that_is_gone_stops_before_the_first_target_stage(world: World) -> None:
    world.deploy()
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["start", "verify"], lock_holder="run-9", continue_lock=True)).run()
    err = caught.value
    assert err.code == "ERR_DEPLOY_LOCKED"
    assert err.message == (
        f"pipeline stopped at start: run-9 lost the deploy lock of {SLUG} (local, staging) between two stages: "
        "it was released or broken. What runs may be another run's deploy, so this run stops here."
    )
    assert err.details["stage"] == "start"
    (failed,) = err.details["stages"]
    assert list(failed) == ["stage", "status", "seconds", "started_at", "finished_at", "error"]  # no lock: never held
    assert (failed["stage"], failed["status"], failed["error"]["code"]) == ("start", "failed", "ERR_DEPLOY_LOCKED")
    assert failed["error"]["message"].startswith("run-9 lost the deploy lock")  # the stage's own message
    assert "results" not in err.details  # one ref: no per-ref results
    assert not world.lock_file().exists()


def test_another_holders_lease_is_waited_for_and_the_wait_is_the_locks_not_the_stages(world: World) -> None:
    world.deploy()
    other = LocalTarget().deploy_lock(world.app())
    other.hold("other-run", wait_s=0, ttl_s=0.6)
    t0 = time.time()
    report = world.pipeline(world.request(["start", "verify"], lock_holder="ci-2", lock_wait_s=10)).run()
    start, verify = report["stages"]
    assert start["lock"]["took_over_from"] == "other-run"
    waited = start["lock"]["waited_s"]
    assert 0.6 <= waited < 3.5
    assert start["started_at"] >= t0 + waited - 0.05  # the stage's clock starts once the lock is held
    # ...and its time runs from there to its end: the wait is the lock's, not the stage's (compared with
    # the stage's own clock, not with the wait, which a loaded machine can make as long as the stage).
    assert abs(start["seconds"] - (start["finished_at"] - start["started_at"])) < 0.05
    # The renewal's wait (often under a millisecond, so equal after rounding) is added, not reset.
    assert waited <= verify["lock"]["waited_s"] < waited + 1
    assert (
        report["summary"].splitlines()[-1]
        == f"  deploy lock: ci-2 (released; waited {verify['lock']['waited_s']:.1f}s)"
    )


def test_a_lock_held_by_another_fails_the_stage_without_running_it(world: World) -> None:
    world.deploy()
    LocalTarget().deploy_lock(world.app()).hold("other-run", wait_s=0, ttl_s=60)
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["sync-secrets", "verify"], lock_wait_s=0)).run()
    err = caught.value
    assert err.code == "ERR_DEPLOY_LOCKED"
    assert err.message.startswith(
        f"pipeline stopped at sync-secrets: the deploy lock of {SLUG} (local, staging) is held by other-run"
    )
    assert [_stage(s) for s in err.details["stages"]] == [("sync-secrets", "failed")]
    assert "lock" not in err.details["stages"][0]
    assert json.loads(world.lock_file().read_text())["holder"] == "other-run"  # not ours: left alone


def test_a_lease_lost_between_two_stages_stops_the_run_at_the_next_one(world: World) -> None:
    world.deploy()
    lock = LocalTarget().deploy_lock(world.app())

    def intrude() -> None:  # during verify: someone breaks the lock and takes it
        lock.break_()
        lock.hold("intruder", wait_s=0, ttl_s=60)

    world.on_healthz.action = intrude
    pipeline = world.pipeline(world.request(["start", "verify", "run"], lock_holder="ci-10", lock_wait_s=0))
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    err = caught.value
    assert err.code == "ERR_DEPLOY_LOCKED"
    assert err.message.startswith(
        f"pipeline stopped at run: ci-10 lost the deploy lock of {SLUG} (local, staging) between two stages: "
        "it is now held by intruder (since "
    )
    assert [_stage(s) for s in err.details["stages"]] == [("start", "ok"), ("verify", "ok"), ("run", "failed")]
    failed_lock = err.details["stages"][2]["lock"]
    assert (failed_lock["holder"], failed_lock["released"]) == ("ci-10", False)  # not ours any more: not released
    assert "released_at" not in failed_lock
    assert pipeline.results[0].envelope is None
    assert json.loads(world.lock_file().read_text())["holder"] == "intruder"


# ------------------------------------------------------------------------------------------------
# Failures name their stage; the lock is released on the way out


def test_a_failed_verify_stops_the_run_names_the_stage_and_releases_the_lock(world: World) -> None:
    # start finds the pin running (the engine's reading), but the processor's /healthz reports another
    # digest: verify must fail closed.
    world.write(REF, amd64=OTHER_PIN, arm64=OTHER_PIN)
    world.deploy(digest=OTHER)
    pipeline = world.pipeline(world.request(["start", "verify", "run"], lock_holder="ci-3"))
    t0 = time.time()
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    t1 = time.time()
    err = caught.value
    assert err.code == "ERR_REGISTRY_MISMATCH"
    own = f"{SLUG} (staging) does not verify: expected {OTHER}; healthz: {DIGEST}."
    assert err.message == f"pipeline stopped at verify: {own}"
    assert err.details["stage"] == "verify"
    stages = err.details["stages"]
    assert [_stage(s) for s in stages] == [("start", "ok"), ("verify", "failed")]
    failed = stages[1]
    _assert_timed(failed, t0, t1)
    assert list(failed) == ["stage", "status", "seconds", "started_at", "finished_at", "error", "lock"]
    assert failed["error"]["code"] == "ERR_REGISTRY_MISMATCH"
    assert failed["error"]["message"].startswith(own + " Fix: ")
    assert (failed["lock"]["holder"], failed["lock"]["released"]) == ("ci-3", True)  # released before the report
    assert t0 <= failed["lock"]["released_at"] <= t1
    assert not world.lock_file().exists()
    assert [line.split(": ok in")[0] for line in world.progress] == ["==> start", "<== start", "==> verify"]

    (result,) = pipeline.results
    assert result.error is err and result.verified is False
    assert result.deployed == OTHER_PIN  # what start deployed
    assert result.to_json()["error"] == {"code": "ERR_REGISTRY_MISMATCH", "message": err.render()}


def test_verify_alone_reports_what_it_expected_even_on_a_mismatch(world: World) -> None:
    world.deploy(digest=OTHER)
    pipeline = world.pipeline(world.request(["verify"]))
    with pytest.raises(TheoryDeployError):
        pipeline.run()
    (result,) = pipeline.results
    assert (result.deployed, result.verified, result.app) == (PIN, False, SLUG)


def test_verify_alone_without_a_pin_fails_and_names_no_deployed_image(world: World) -> None:
    world.write(REF, amd64=None, arm64=None)
    pipeline = world.pipeline(world.request(["verify"]))
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    assert caught.value.code == "ERR_IMAGE_UNPINNED"
    (result,) = pipeline.results
    assert (result.deployed, result.verified) == ("", False)


def test_start_without_a_pin_fails_before_the_lock_is_taken(world: World) -> None:
    world.write(REF, amd64=None, arm64=None)
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["start", "verify"], lock_holder="ci-4")).run()
    err = caught.value
    assert err.code == "ERR_IMAGE_UNPINNED"
    assert err.message.startswith("pipeline stopped at start: ")
    assert list(err.details["stages"][0]) == ["stage", "status", "seconds", "started_at", "finished_at", "error"]
    assert not world.lock_file().exists()


def test_start_of_a_container_without_a_published_port_reports_no_url(world: World) -> None:
    world.deploy(published=False)
    pipeline = world.pipeline(world.request(["start"]))
    report = pipeline.run()
    assert (report["stages"][0]["action"], report["stages"][0]["url"]) == ("unchanged", None)
    assert (pipeline.results[0].url, pipeline.results[0].app, pipeline.results[0].deployed) == ("", SLUG, PIN)


def test_run_inputs_and_timeout_come_from_the_request_when_given(world: World) -> None:
    world.deploy()
    report = world.pipeline(world.request(["run"], inputs={"given": 1}, timeout_s=30)).run()
    assert report["stages"][0]["envelope"]["outputs"] == {"mode": "mock", "inputs": {"given": 1}}
    assert list(report["stages"][0]) == ["stage", "status", "seconds", "started_at", "finished_at", "envelope", "lock"]

    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["run"], inputs={"sleep": 3}, timeout_s=0.5)).run()
    assert caught.value.code == "ERR_TIMEOUT"
    assert caught.value.details["stage"] == "run"


def test_run_without_inputs_or_examples_fails_before_the_lock(world: World) -> None:
    text = world.path(REF).read_text().replace("  examples:\n    - " + json.dumps(EXAMPLE) + "\n", "")
    world.write(REF, text=text)
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["run"], lock_holder="ci-5")).run()
    err = caught.value
    assert err.code == "ERR_INPUTS"
    assert err.message == (
        f"pipeline stopped at run: {REF}: the run stage has no inputs: none were given and the inputs schema of "
        f"{world.path(REF)} has no `examples`."
    )
    assert not world.lock_file().exists()


@pytest.mark.parametrize(
    ("mode", "fail_on_missing", "fails"),
    [("real", None, True), ("mock", None, False), ("mock", True, True), ("real", False, False)],
)
def test_sync_secrets_fails_on_a_missing_required_secret_in_real_mode_or_when_asked(
    world: World, mode: str, fail_on_missing: bool | None, fails: bool
) -> None:
    request = world.request(["sync-secrets"], refs=[KEYED], mode=mode, fail_on_missing=fail_on_missing)
    pipeline = world.pipeline(request)
    if not fails:
        report = pipeline.run()
        assert (report["stages"][0]["missing_required"], report["stages"][0]["check"]) == (["PIPE_KEY"], False)
        assert pipeline.results[0].secrets == {"present": [], "missing": ["PIPE_KEY", "PIPE_OPTIONAL"]}
        return
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    assert caught.value.code == "ERR_MISSING_SECRET"
    assert caught.value.message == (
        f"pipeline stopped at sync-secrets: {KEYED.slug} (staging): required secret(s) PIPE_KEY have no value in "
        "this process's environment; nothing was written."
    )


def test_sync_secrets_reports_the_secrets_present(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPE_KEY", "k-value")
    pipeline = world.pipeline(world.request(["sync-secrets"], refs=[KEYED], mode="real"))
    report = pipeline.run()
    assert report["stages"][0]["created"] == ["PIPE_KEY"]
    assert pipeline.results[0].secrets == {"present": ["PIPE_KEY"], "missing": ["PIPE_OPTIONAL"]}


# ------------------------------------------------------------------------------------------------
# Several refs: labels, per-ref results, keep_going and the failure count

OTHER_REF = ProcessorRef("pipe", "other", 1)
BROKEN = ProcessorRef("pipe", "broken", 1)


def _broken(world: World) -> TheoryDeployError:
    """A registry.yaml that cannot be loaded, and the loader's own error for it."""
    world.write(BROKEN, text=f"ref: {BROKEN}\nbuild: [not, a, mapping]\n")
    with pytest.raises(TheoryDeployError) as caught:
        load_processor(BROKEN, world.root)
    return caught.value


def test_several_refs_report_one_result_each_with_labelled_progress(world: World) -> None:
    world.write(OTHER_REF)
    world.deploy()
    world.deploy(OTHER_REF)
    pipeline = world.pipeline(world.request(["verify"], refs=[REF, OTHER_REF], lock_holder="ci-6"))
    report = pipeline.run()
    assert list(report) == ["env", "target", "seconds", "summary", "results"]
    results = report["results"]
    assert [(r["ref"], r["app"], r["verified"], r["deployed"]) for r in results] == [
        (str(REF), SLUG, True, PIN),
        (str(OTHER_REF), OTHER_REF.slug, True, PIN),
    ]
    assert results == [r.to_json() for r in pipeline.results]
    assert [list(r) for r in results] == [["ref", "app", "stages", "lock", "deployed", "verified"]] * 2
    lines = report["summary"].splitlines()
    assert lines[0] == f"pipeline {REF} -> local/staging ({SLUG}): ok"
    assert lines[3] == f"pipeline {OTHER_REF} -> local/staging ({OTHER_REF.slug}): ok"
    assert lines[2] == f"  deploy lock: ci-6 (released; waited {results[0]['lock']['waited_s']:.1f}s)"
    assert len(lines) == 6
    assert [line.split(": ok in")[0] for line in world.progress] == [
        f"==> {REF}: verify",
        f"<== {REF}: verify",
        f"==> {OTHER_REF}: verify",
        f"<== {OTHER_REF}: verify",
    ]


def test_keep_going_runs_every_ref_and_fails_at_the_end_counting_the_failures(world: World) -> None:
    loader_error = _broken(world)
    world.write(OTHER_REF)
    world.deploy(digest=OTHER)  # REF's verify fails: the engine runs another digest than the pin
    world.deploy(OTHER_REF)
    pipeline = world.pipeline(world.request(["verify"], refs=[BROKEN, REF, OTHER_REF], keep_going=True))
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    err = caught.value
    assert err is pipeline.results[0].error  # the first failure, with every result
    assert err.code == loader_error.code
    assert err.message == loader_error.message + " (2 of 3 processors failed.)"
    results = err.details["results"]
    assert [r["ref"] for r in results] == [str(BROKEN), str(REF), str(OTHER_REF)]
    # the results are taken before the count is added to the raised message
    assert results[0] == {
        "ref": str(BROKEN),
        "app": "",
        "stages": [],
        "error": {"code": err.code, "message": loader_error.render()},
    }
    assert results[1]["error"]["code"] == "ERR_REGISTRY_MISMATCH"
    assert results[1]["error"]["message"].startswith(
        f"{REF}: pipeline stopped at verify: {SLUG} (staging) does not verify"
    )
    assert [_stage(s) for s in results[1]["stages"]] == [("verify", "failed")]
    assert "error" not in results[2] and results[2]["verified"] is True
    assert world.progress[0] == f"==> {REF}: verify"


def test_without_keep_going_the_first_failure_stops_the_run(world: World) -> None:
    world.write(OTHER_REF)
    world.deploy(digest=OTHER)
    pipeline = world.pipeline(world.request(["verify"], refs=[REF, OTHER_REF]))
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    err = caught.value
    assert [r.ref for r in pipeline.results] == [str(REF)]
    assert err.message.startswith(f"{REF}: pipeline stopped at verify: ")
    assert not err.message.endswith("processors failed.)")
    assert err.details["stage"] == "verify"
    assert err.details["results"] == [pipeline.results[0].to_json()]


def test_keep_going_with_one_failure_names_no_count(world: World) -> None:
    loader_error = _broken(world)
    world.deploy()
    pipeline = world.pipeline(world.request(["verify"], refs=[REF, BROKEN], keep_going=True))
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    assert caught.value.message == loader_error.message
    assert [r.ref for r in pipeline.results] == [str(REF), str(BROKEN)]
    assert [r["ref"] for r in caught.value.details["results"]] == [str(REF), str(BROKEN)]


def test_one_unloadable_ref_is_raised_as_the_loader_raised_it(world: World) -> None:
    loader_error = _broken(world)
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["verify"], refs=[BROKEN])).run()
    assert (caught.value.code, caught.value.message) == (loader_error.code, loader_error.message)
    assert "results" not in caught.value.details


# ------------------------------------------------------------------------------------------------
# dev deploys what was pushed; staging and main the pin

ELSEWHERE = "arm64" if PLATFORM == "amd64" else "amd64"


def _push_record(world: World, platforms: dict[str, str]) -> Path:
    path = world.tmp / "push.json"
    path.write_text(json.dumps({"ref": str(REF), "index": None, "platforms": platforms}))
    return path


def test_dev_verifies_the_pushed_digest_not_the_pin(world: World) -> None:
    world.write(REF, amd64=OTHER_PIN, arm64=OTHER_PIN)
    record = world.tmp / "pushes"  # a folder of push-<slug>.json records, as the build jobs leave them
    PushRecord(str(REF), {PLATFORM: PIN}).write(record, SLUG)
    PushRecord("pipe/else@1", {PLATFORM: OTHER_PIN}).write(record, "pipe-else-v1")
    dev_app = world.deploy(env="dev")  # runs the pushed digest
    pipeline = world.pipeline(world.request(["verify"], env="dev", from_push=record))
    report = pipeline.run()
    assert dev_app.name == f"feat-pipe-tester-{SLUG}"
    assert (report["app"], report["stages"][0]["expected"], report["stages"][0]["verified"]) == (
        dev_app.name,
        PIN,
        True,
    )
    (result,) = pipeline.results
    assert (result.deployed, result.pushed.platforms) == (PIN, {PLATFORM: PIN})
    assert result.to_json()["pushed"] == {"ref": str(REF), "index": None, "platforms": {PLATFORM: PIN}}
    assert list(result.to_json()) == ["ref", "app", "stages", "lock", "pushed", "deployed", "verified"]


def test_staging_verifies_the_pin_whatever_was_pushed(world: World) -> None:
    world.deploy()  # runs the pin
    pipeline = world.pipeline(world.request(["verify"], from_push=_push_record(world, {PLATFORM: OTHER_PIN})))
    report = pipeline.run()
    assert (report["stages"][0]["expected"], pipeline.results[0].deployed) == (PIN, PIN)


def test_dev_start_refuses_a_push_without_this_targets_platform(world: World) -> None:
    record = _push_record(world, {ELSEWHERE: PIN})
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["start", "verify"], env="dev", from_push=record)).run()
    err = caught.value
    assert err.code == "ERR_USAGE"
    assert err.render() == (
        f"pipeline stopped at start: {REF}: the push has no {PLATFORM} digest, which the local target runs "
        f"(pushed: {ELSEWHERE}). Fix: Build linux/{PLATFORM} too (--platforms)."
    )
    assert [_stage(s) for s in err.details["stages"]] == [("start", "failed")]
    assert not world.lock_file(f"feat-pipe-tester-{SLUG}", "dev").exists()


# ------------------------------------------------------------------------------------------------
# build: what is refused before the engine is asked to build


def test_build_refuses_platforms_that_leave_out_the_targets_own(world: World) -> None:
    platforms = [ELSEWHERE, f"linux/{ELSEWHERE}"]  # named as given, in both spellings
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["build", "push", "start"], env="dev", platforms=platforms)).run()
    assert caught.value.message == (
        f"pipeline stopped at build: --platforms {ELSEWHERE},linux/{ELSEWHERE} leaves out {PLATFORM}, which the "
        "local target runs."
    )


def test_build_without_a_target_stage_builds_any_platform_and_shows_the_engine_output_on_debug(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    dockerfile = world.path(REF).parent / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    build = f"build --platform linux/{ELSEWHERE} --progress plain -f {dockerfile} -t theory-local/{SLUG}:{ELSEWHERE} "
    for debug in (True, False):
        # dev without a target stage: the build is asked for, nothing names an app
        pipeline = world.pipeline(world.request(["build"], env="dev", platforms=[ELSEWHERE], debug=debug))
        with pytest.raises(TheoryDeployError) as caught:  # the docker stand-in builds nothing
            pipeline.run()
        assert caught.value.code == "ERR_IMAGE_BUILD"
        assert caught.value.message.startswith(
            f"pipeline stopped at build: {REF}: docker build for linux/{ELSEWHERE} failed (exit 2); last 1 lines:\n"
            f"  | unexpected: {build}"
        )
        assert world.docker.calls()[-1].startswith(build)
        shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unexpected: build")]
        assert len(shown) == (1 if debug else 0)  # --debug: the engine's every line
        (result,) = pipeline.results
        assert (result.app, result.platform) == ("", "")


def test_build_passes_the_requested_platforms_to_the_builder(world: World) -> None:
    (world.path(REF).parent / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["build"], env=None, platforms=["s390x", PLATFORM])).run()
    assert (caught.value.code, caught.value.message) == (
        "ERR_INVALID_REF",
        "pipeline stopped at build: --platform: 's390x' is not a supported platform; expected amd64, arm64, "
        "linux/amd64 or linux/arm64.",
    )


SOURCE_DATE_EPOCH_REFUSED = (
    "pipeline stopped at build: --build-arg SOURCE_DATE_EPOCH: set by processorctl build itself (to 0), and push "
    "normalises every layer's timestamps to that epoch; another value could only break reproducibility."
)


def test_build_passes_the_build_args_to_the_builder(world: World) -> None:
    (world.path(REF).parent / "Dockerfile").write_text("FROM scratch\n")
    epoch = {"SOURCE_DATE_EPOCH": "1"}
    # with a target stage and the target's platform among those asked: no platform complaint
    request = world.request(["build", "push", "start"], env="dev", platforms=[PLATFORM], build_args=epoch)
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(request).run()
    assert caught.value.message == SOURCE_DATE_EPOCH_REFUSED
    # without --platforms: registry.yaml's build.platforms
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(world.request(["build"], env=None, build_args=epoch)).run()
    assert caught.value.message == SOURCE_DATE_EPOCH_REFUSED


# ------------------------------------------------------------------------------------------------
# build and push through the engine stand-in: the images `docker build` gives are planted in it (one
# small layer each), and push reads them back with `docker save`, as from a real engine


def _registry_json(url: str, accept: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_build_push_and_pin_run_each_stage_on_what_the_last_one_made(world: World, registry: str) -> None:
    repository = f"{registry}/theory-test/pipeline-contract-built"
    world.write(REF, amd64=None, arm64=None, repository=repository)
    (world.path(REF).parent / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /\n")
    ids = {
        arch: world.docker.add_built_image(arch, {"app.txt": f"{arch} {time.time_ns()}\n".encode()})
        for arch in ("amd64", "arm64")
    }
    pipeline = world.pipeline(world.request(["build", "push", "pin"], env=None))
    report = pipeline.run()

    timing = ("seconds", "started_at", "finished_at")
    build, pushed, pinned = ({k: v for k, v in stage.items() if k not in timing} for stage in report["stages"])
    assert build == {"stage": "build", "status": "ok", "images": ids}
    # push: one manifest per platform, by digest, in the repository registry.yaml names; an index over them
    platforms = pushed["platforms"]
    assert sorted(platforms) == ["amd64", "arm64"]
    assert all(ref.startswith(f"{repository}@sha256:") for ref in [*platforms.values(), pushed["index"]])
    # every blob went up once: a config and a layer per platform; nothing was there before
    assert (pushed["uploaded_blobs"], pushed["skipped_blobs"], pushed["mounted_blobs"]) == (4, 0, 0)
    assert (pushed["stage"], pushed["status"]) == ("push", "ok")
    (result,) = pipeline.results
    assert result.pushed == PushRecord(str(REF), platforms, index=pushed["index"])
    # the registry holds what was pushed, each manifest's config for its own platform
    host, path = repository.split("/", 1)
    for arch, ref in platforms.items():
        digest = ref.rsplit("@", 1)[1]
        manifest = _registry_json(
            f"http://{host}/v2/{path}/manifests/{digest}", "application/vnd.oci.image.manifest.v1+json"
        )
        config = _registry_json(f"http://{host}/v2/{path}/blobs/{manifest['config']['digest']}", "*/*")
        assert (config["architecture"], config["os"]) == (arch, "linux")
    # tagged as the CLI tags a push: the index by the processor's slug, each platform as <slug>-<arch>
    tags = {f"{SLUG}-{arch}": ref for arch, ref in platforms.items()} | {SLUG: pushed["index"]}
    for tag, ref in tags.items():
        head = urllib.request.Request(f"http://{host}/v2/{path}/manifests/{tag}", method="HEAD")
        head.add_header("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
        with urllib.request.urlopen(head, timeout=10) as answer:
            assert answer.headers["Docker-Content-Digest"] == ref.rsplit("@", 1)[1], tag
    # pin: what the push made, written to registry.yaml
    assert pinned == {
        "stage": "pin",
        "status": "ok",
        "pins": {arch: {"old": None, "new": platforms[arch], "changed": True} for arch in ("amd64", "arm64")},
        "changed": ["amd64", "arm64"],
        "file": str(world.path(REF)),
    }
    assert load_processor(REF, world.root).spec.pins() == platforms
    # the engine was asked for one build per platform, then for each image's export
    calls = world.docker.calls()
    assert [c.split(" --platform ")[1].split()[0] for c in calls if c.startswith("build ")] == [
        "linux/amd64",
        "linux/arm64",
    ]
    assert sorted(c.split()[-1] for c in calls if c.startswith("save ")) == sorted(ids.values())


def test_an_invalid_repository_is_refused_before_anything_is_built(world: World) -> None:
    (world.path(REF).parent / "Dockerfile").write_text("FROM scratch\n")
    world.docker.add_built_image(PLATFORM, {"app.txt": b"x\n"})
    request = world.request(["build", "push"], env=None, platforms=[PLATFORM], repository="Not A/Repository")
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(request).run()
    assert (caught.value.code, caught.value.message) == (
        "ERR_INVALID_REF",
        "repository: the image ref contains a space (U+0020) at position 4; image refs may not contain whitespace "
        "or control characters.",
    )
    assert not [call for call in world.docker.calls() if call.startswith("build ")]


# ------------------------------------------------------------------------------------------------
# pin: registry-only runs (no environment) against digests already in the loopback registry

IMAGE_PATH = "theory-test/pipeline-contract"


@pytest.fixture
def pushed(registry: str) -> dict[str, str]:
    """platform -> repo@sha256:... of tiny images in the anonymous registry (idempotent pushes)."""
    return {
        arch: push_tiny_image(registry, IMAGE_PATH, payload="pipeline-contract", arch=arch).ref
        for arch in ("amd64", "arm64")
    }


def test_a_registry_only_pin_reports_the_pins_and_no_lock(world: World, registry: str, pushed: dict[str, str]) -> None:
    repository = f"{registry}/{IMAGE_PATH}"
    world.write(REF, amd64=None, arm64=None, repository=repository)
    record = _push_record(world, pushed)
    pipeline = world.pipeline(world.request(["pin"], env=None, from_push=record))
    t0 = time.time()
    report = pipeline.run()
    t1 = time.time()
    assert list(report) == ["env", "target", "seconds", "summary", "ref", "app", "stages"]  # no lock: no target stage
    assert (report["env"], report["target"], report["ref"], report["app"]) == (None, "local", str(REF), "")
    lines = report["summary"].splitlines()
    assert lines[0] == f"pipeline {REF} -> registry: ok"
    assert [_summary_row(line) for line in lines[1:]] == [("pin", "ok")]
    (stage,) = report["stages"]
    _assert_timed(stage, t0, t1)
    pins = {arch: {"old": None, "new": pushed[arch], "changed": True} for arch in ("amd64", "arm64")}
    assert {k: v for k, v in stage.items() if k not in ("seconds", "started_at", "finished_at")} == {
        "stage": "pin",
        "status": "ok",
        "pins": pins,
        "changed": ["amd64", "arm64"],
        "file": str(world.path(REF)),
    }
    (result,) = pipeline.results
    assert (result.pins, result.pins_before, result.app, result.platform) == (
        pins,
        {"amd64": None, "arm64": None},
        "",
        "",
    )
    assert result.pushed == PushRecord(str(REF), pushed)
    assert load_processor(REF, world.root).spec.pins() == pushed
    assert [line.split(": ok in")[0] for line in world.progress] == ["==> pin", "<== pin"]

    again = world.pipeline(world.request(["pin"], env=None, from_push=record)).run()
    assert again["stages"][0]["changed"] == []


def test_pinning_what_went_to_another_repository_moves_the_work_tree_there_first(
    world: World, registry: str, pushed: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    repository = f"{registry}/{IMAGE_PATH}"
    world.write(REF, amd64=None, arm64=None)  # image.repository is REPOSITORY, never reached
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    request = world.request(["pin"], env=None, from_push=_push_record(world, pushed), repository=repository)
    report = world.pipeline(request).run()
    assert report["stages"][0]["changed"] == ["amd64", "arm64"]
    processor = load_processor(REF, world.root)
    assert (processor.spec.image.repository, processor.spec.pins()) == (repository, pushed)
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("::notice")]
    assert notices == [f"::notice::{REF}: image.repository set to {repository} in this work tree only"]


def test_a_pin_pr_must_pin_image_repository(world: World) -> None:
    request = world.request(
        ["pin", "pr"],
        env=None,
        from_push=_push_record(world, {PLATFORM: PIN}),
        repository="127.0.0.1:5000/x/y",
        pr_base="main",
    )
    with pytest.raises(TheoryDeployError) as caught:
        world.pipeline(request).run()
    assert caught.value.code == "ERR_USAGE"
    assert caught.value.render() == (
        f"pipeline stopped at pin: {REF}: repository 127.0.0.1:5000/x/y is not image.repository ({REPOSITORY}); "
        "a pin PR must pin image.repository. Fix: Drop the repository input, or the pr stage."
    )
    assert load_processor(REF, world.root).spec.image.repository == REPOSITORY  # left as it was


def test_a_bad_repository_is_refused_before_any_processor_runs(world: World) -> None:
    request = world.request(["pin"], env=None, from_push=_push_record(world, {PLATFORM: PIN}), repository="Not A Repo")
    pipeline = world.pipeline(request)
    with pytest.raises(TheoryDeployError) as caught:
        pipeline.run()
    assert (caught.value.code, caught.value.message) == (
        "ERR_INVALID_REF",
        "repository: the image ref contains a space (U+0020) at position 4; image refs may not contain whitespace or "
        "control characters.",
    )
    assert pipeline.results == []


# ------------------------------------------------------------------------------------------------
# pr: the pin PR, against a real git remote (and the GitHub stand-in for the PR itself)

TOKEN = "ghp_" + "P1pe" * 9
HUMAN = ["-c", "user.name=Hu Man", "-c", "user.email=human@example.com"]


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def test_pr_proposes_nothing_when_the_base_branch_has_the_pins_already(world: World) -> None:
    remote = world.tmp / "remote.git"
    git(world.tmp, "init", "--quiet", "--bare", "-b", "main", str(remote))
    git(world.tmp, "init", "--quiet", "-b", "main", str(world.root))
    git(world.root, "add", ".")
    git(world.root, *HUMAN, "commit", "--quiet", "-m", "processors")
    git(world.root, "remote", "add", "upstream", str(remote))  # compared with upstream/main, not origin/main
    git(world.root, "push", "--quiet", "upstream", "main")
    pipeline = world.pipeline(world.request(["pr"], env=None, pr_base="main", pr_remote="upstream", open_pr=False))
    report = pipeline.run()
    (stage,) = report["stages"]
    assert {k: v for k, v in stage.items() if k not in ("seconds", "started_at", "finished_at")} == {
        "stage": "pr",
        "status": "ok",
        "pr_url": "",
        "action": "none",
    }
    assert (pipeline.results[0].pr_url, pipeline.results[0].pr_action) == ("", "none")


@pytest.fixture
def github(tmp_path: Path, registry: str) -> Iterator[tuple[GitHubStandIn, Path]]:
    """The GitHub stand-in serving a bare remote whose main branch holds the processor, unpinned."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "--quiet", "-b", "main", str(seed))
    path = seed / "processors" / REF.namespace / REF.name / "registry.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        REGISTRY_YAML.format(
            ref=REF,
            repository=f"{registry}/{IMAGE_PATH}",
            amd64="null",
            arm64="null",
            required="[]",
            example=json.dumps(EXAMPLE),
        )
    )
    git(seed, "add", ".")
    git(seed, *HUMAN, "commit", "--quiet", "-m", "processors")
    git(seed, "remote", "add", "origin", str(remote))
    git(seed, "push", "--quiet", "origin", "main")
    gh = GitHubStandIn(owner="acme", repo="processors", tokens={TOKEN}, git_remote=remote).start()
    try:
        work = tmp_path / "work"
        header = f"http.{gh.url}/.extraheader={GitHubStandIn.extraheader(TOKEN, 'x-access-token')}"
        git(tmp_path, "clone", "--quiet", "-c", header, gh.git_url, str(work))
        yield gh, work
    finally:
        gh.stop()


def test_pin_then_pr_pushes_the_bot_branch_then_opens_the_pr(
    world: World, github: tuple[GitHubStandIn, Path], pushed: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gh, work = github
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/processors")
    monkeypatch.setenv("GITHUB_API_URL", gh.url)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    record = _push_record(world, pushed)
    request = world.request(["pin", "pr"], env=None, from_push=record, pr_base="main", open_pr=False, repo_root=work)
    pipeline = world.pipeline(request)
    report = pipeline.run()
    assert [_stage(st) for st in report["stages"]] == [("pin", "ok"), ("pr", "ok")]
    assert report["stages"][0]["changed"] == ["amd64", "arm64"]
    assert {k: report["stages"][1][k] for k in ("pr_url", "action")} == {"pr_url": "", "action": "pushed"}
    # pr proposes the pins the pin stage just wrote (the processor is read again after pinning)
    branch = f"theory-deploy/pin/{SLUG}"
    assert git(work, "ls-remote", "--heads", "origin", branch).endswith(f"refs/heads/{branch}")
    assert gh.state.pulls == []  # open_pr=False: the branch only
    (result,) = pipeline.results
    assert (result.pr_url, result.pr_action) == ("", "pushed")

    pipeline = world.pipeline(world.request(["pr"], env=None, pr_base="main", repo_root=work))
    report = pipeline.run()
    url = "https://github.example/acme/processors/pull/1"
    assert {k: report["stages"][0][k] for k in ("stage", "pr_url", "action")} == {
        "stage": "pr",
        "pr_url": url,
        "action": "created",
    }
    assert (pipeline.results[0].pr_url, pipeline.results[0].pr_action) == (url, "created")
    assert [(pr["number"], pr["head"], pr["base"]) for pr in gh.state.pulls] == [(1, branch, "main")]
