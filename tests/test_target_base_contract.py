"""The exact contract of the logic every target shares (`theory_deploy.targets.base`), in-process and fast.

What is pinned down, each asserted whole (messages, remedies, codes, every JSON key) because scripts
and people read them:

* `AppContext`: the app name and identity of a dev / staging app, and the labels recorded at deploy time.
* `verify_digest`: the result, the summary, and each way it fails closed.
* `verify_image` / `image_to_deploy` / `rollback`: which manifest a start deploys, proven against the
  loopback registry with tiny real images (tests/modal_standin/images.py), and which registry host
  the REGISTRY_USERNAME/REGISTRY_PASSWORD credentials are sent to.
* `earlier_pin`: the refusals not covered by tests/test_gitrun.py, against a real git history.
* `run`: theory.run.v1 against a scripted in-test WebSocket server on 127.0.0.1 (what the client
  sends, token/log streaming on stderr, the result, and an error envelope turned into its error class).
* `cleanup_dev`: which dev apps are stopped, kept, skipped or failed, the result and the summary text
  line by line, dry runs, and the refusal of an empty branch list.
* `read_branches`, `parse_inputs` and its limits (at the boundary and one past it, env overrides).

The target is a test double implementing the abstract `Target` interface (the product accepts any
target by design); no product function is replaced. These tests used to live only in slow suites
(tests/test_cleanup_dev.py, tests/test_modal_target.py) that the mutation run leaves out.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.helpers import AuthRegistry
from tests.modal_standin.images import PushedImage, push_tiny_image, push_tiny_index
from tests.test_plan import git
from theory_deploy import protocol
from theory_deploy.errors import (
    DeployError,
    ImagePullError,
    InputsError,
    NotADigestError,
    NotRunningError,
    RegistryAuthError,
    RegistryMismatchError,
    RevisionError,
    RuntimeFailureError,
    RunTimeoutError,
    TheoryDeployError,
    UsageError,
)
from theory_deploy.refs import DevIdentity, Environment, ImageRef, Platform
from theory_deploy.registry_file import LoadedProcessor, load_path
from theory_deploy.targets.base import (
    AppContext,
    DigestReadings,
    Endpoint,
    ListedApp,
    Target,
    changed_since_listing,
    digest_of,
    earlier_pin,
    parse_inputs,
    read_branches,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
OFFLINE_REPO = "127.0.0.1:5000/unit/proc"  # nothing is ever pulled from it
IMAGE_PATH = "theory-test/base-contract"

REGISTRY_YAML = """\
ref: unit/proc@1
image:
  repository: {repository}
  platforms:
    amd64: {amd64}
    arm64: {arm64}
inputs:
  type: object
"""

REGISTRY_REMEDY = "Set REGISTRY_USERNAME and REGISTRY_PASSWORD to a user/token that may read (and push) the repository."


# ------------------------------------------------------------------------------------------------
# The test double and the processor


class FakeTarget(Target):
    """A target whose answers each test sets; it records what the shared logic asked of it."""

    kind = "fake"

    def __init__(
        self,
        apps: list[ListedApp] | None = None,
        now: dict[str, dict[str, str] | None] | None = None,
        *,
        platform: Platform = "amd64",
        readings: DigestReadings | None = None,
        endpoint: Endpoint | None = None,
        start_summary: str | None = "started.",
    ) -> None:
        self.apps = apps or []
        self.now = now or {}  # labels when re-read just before stopping (None: gone meanwhile)
        self._platform: Platform = platform
        self.readings = readings
        self._endpoint = endpoint
        self.start_summary = start_summary
        self.stopped: list[str] = []
        self.envs: list[str] = []  # the environment of every list_apps / stop_listed call, in order
        self.listed_seen: list[ListedApp] = []
        self.starts: list[tuple[str, str, bool]] = []
        self.read_against: list[str] = []  # the expected image of every read_running_digests call

    @property
    def platform(self) -> Platform:
        return self._platform

    def list_apps(self, env: Environment) -> list[ListedApp]:
        self.envs.append(env)
        return list(self.apps)

    def stop_listed(self, env: Environment, listed: ListedApp) -> str | None:
        self.envs.append(env)
        self.listed_seen.append(listed)
        if listed.name.startswith("boom"):
            raise DeployError("the target said no")
        if listed.name.startswith("crash"):
            raise NotRunningError("the engine went away")
        labels = self.now.get(listed.name, listed.labels)
        if labels is None:
            return "left alone: gone"
        declined = changed_since_listing(listed, labels)
        if declined:
            return declined
        self.stopped.append(listed.name)
        return None

    def start(self, app: AppContext, image: ImageRef, *, dry_run: bool = False) -> dict[str, Any]:
        self.starts.append((app.name, str(image), dry_run))
        result: dict[str, Any] = {"app": app.name, "image": str(image)}
        if self.start_summary is not None:
            result["summary"] = self.start_summary
        return result

    def read_running_digests(self, app: AppContext, expected: ImageRef) -> DigestReadings:
        assert isinstance(app, AppContext)
        assert self.readings is not None
        self.read_against.append(str(expected))
        return self.readings

    def endpoint(self, app: AppContext) -> Endpoint:
        assert isinstance(app, AppContext)
        assert self._endpoint is not None
        return self._endpoint

    # The other per-app verbs are not shared logic.
    def stop(self, app: AppContext) -> dict[str, Any]:
        raise NotImplementedError

    def status(self, app: AppContext) -> dict[str, Any]:
        raise NotImplementedError

    def logs(self, app: AppContext, *, follow: bool, tail: int) -> dict[str, Any]:
        raise NotImplementedError

    def sync_secrets(
        self, app: AppContext, *, check: bool, fail_on_missing: bool, dry_run: bool = False
    ) -> dict[str, Any]:
        raise NotImplementedError


def registry_yaml(repository: str = OFFLINE_REPO, amd64: str | None = None, arm64: str | None = None) -> str:
    return REGISTRY_YAML.format(repository=repository, amd64=amd64 or "null", arm64=arm64 or "null")


REL = "processors/unit/proc/registry.yaml"


def write_processor(root: Path, text: str) -> Path:
    path = root / REL
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def commit(root: Path, text: str, message: str = "change") -> str:
    write_processor(root, text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    return root


def loaded(root: Path) -> LoadedProcessor:
    return load_path(root / REL, root)


def staging_app(root: Path) -> AppContext:
    return AppContext.for_processor(loaded(root), "staging")


@pytest.fixture
def offline_app(tmp_path: Path) -> AppContext:
    """A staging app pinned to digests nothing is ever pulled from (amd64: A, arm64: B)."""
    root = tmp_path / "repo"
    write_processor(root, registry_yaml(amd64=f"{OFFLINE_REPO}@{DIGEST_A}", arm64=f"{OFFLINE_REPO}@{DIGEST_B}"))
    return staging_app(root)


# ------------------------------------------------------------------------------------------------
# AppContext, digest_of, deploy_lock


def test_a_staging_app_is_named_by_its_slug_and_records_no_identity(offline_app: AppContext) -> None:
    assert offline_app == AppContext(offline_app.processor, "staging", "unit-proc-v1", None)
    assert offline_app.labels() == {"theory.ref": "unit/proc@1", "theory.env": "staging"}


def test_a_dev_app_takes_branch_and_user_from_the_processors_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No GIT_*/GITHUB_* variables: the identity must come from git in the processor's repository
    # (not from wherever the command happens to run).
    for name in ("GIT_BRANCH", "GIT_USER", "GITHUB_ACTIONS", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GITHUB_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    root = git_repo(tmp_path / "repo")
    git(root, "checkout", "-q", "-b", "feat/ctx")
    git(root, "config", "user.name", "Carol Ctx")
    write_processor(root, registry_yaml())
    processor = loaded(root)
    app = AppContext.for_processor(processor, "dev")
    identity = DevIdentity(branch="feat/ctx", user="Carol Ctx")
    assert app == AppContext(processor, "dev", "feat-ctx-carol-ctx-unit-proc-v1", identity)
    assert app.labels() == {
        "theory.ref": "unit/proc@1",
        "theory.env": "dev",
        "theory.branch": "feat/ctx",
        "theory.user": "Carol Ctx",
    }


def test_digest_of_takes_the_part_after_the_last_at_sign() -> None:
    assert digest_of(f"127.0.0.1:5000/a/b@{DIGEST_A}") == DIGEST_A
    assert digest_of(DIGEST_A) == DIGEST_A
    assert digest_of(f"weird@name@{DIGEST_B}") == DIGEST_B
    assert digest_of("127.0.0.1:5000/a/b:latest") is None
    assert digest_of("") is None
    assert digest_of(None) is None


def test_a_target_without_a_deploy_lock_says_so(offline_app: AppContext) -> None:
    with pytest.raises(NotImplementedError) as info:
        FakeTarget().deploy_lock(offline_app)
    assert str(info.value) == "the fake target keeps no deploy lock"


# ------------------------------------------------------------------------------------------------
# verify_digest


def test_verify_digest_reports_every_reading_when_all_match_the_pin(offline_app: AppContext) -> None:
    target = FakeTarget(readings=DigestReadings({"engine": DIGEST_A, "healthz": DIGEST_A}))
    assert target.verify_digest(offline_app) == {
        "app": "unit-proc-v1",
        "env": "staging",
        "expected": f"{OFFLINE_REPO}@{DIGEST_A}",
        "readings": {"engine": DIGEST_A, "healthz": DIGEST_A},
        "verified": True,
        "summary": f"verified: unit-proc-v1 (staging) runs {DIGEST_A} (engine, healthz)",
    }
    # The arm64 target compares with the arm64 pin.
    arm = FakeTarget(platform="arm64", readings=DigestReadings({"engine": DIGEST_B}))
    assert arm.verify_digest(offline_app)["summary"] == f"verified: unit-proc-v1 (staging) runs {DIGEST_B} (engine)"


def test_verify_digest_compares_with_oci_when_given(offline_app: AppContext) -> None:
    target = FakeTarget(readings=DigestReadings({"engine": DIGEST_B}))
    result = target.verify_digest(offline_app, f"127.0.0.1:5000/other/repo@{DIGEST_B}")
    assert result["expected"] == f"127.0.0.1:5000/other/repo@{DIGEST_B}"
    assert result["verified"] is True
    with pytest.raises(RegistryMismatchError):
        target.verify_digest(offline_app)  # the pin is A
    # The target is told what it is compared with (Modal's image reading needs it).
    assert target.read_against == [f"127.0.0.1:5000/other/repo@{DIGEST_B}", f"{OFFLINE_REPO}@{DIGEST_A}"]


def test_verify_digest_names_a_mismatch_without_a_digest_and_explains_a_differing_reading(
    offline_app: AppContext,
) -> None:
    """A reading may prove that another image runs without naming its digest (Modal's image ids), and
    a target may say why a reading differs (a rollout still under way): both reach the message."""
    readings = DigestReadings(
        {"deploy_record": DIGEST_A, "modal_image": None, "healthz": DIGEST_B},
        notes={"healthz": "an old container answered", "deploy_record": "ignored: it matches"},
        mismatches={"modal_image": "the function runs im-1, not im-2"},
    )
    with pytest.raises(RegistryMismatchError) as info:
        FakeTarget(readings=readings).verify_digest(offline_app)
    assert info.value.message == (
        f"unit-proc-v1 (staging) does not verify: expected {DIGEST_A}; "
        "modal_image: the function runs im-1, not im-2; "
        f"healthz: {DIGEST_B} (an old container answered)."
    )
    assert info.value.details["readings"] == {"deploy_record": DIGEST_A, "modal_image": None, "healthz": DIGEST_B}


def test_verify_digest_fails_closed_naming_each_bad_reading(offline_app: AppContext) -> None:
    readings = {"engine": DIGEST_B, "healthz": None, "tags": None}
    target = FakeTarget(readings=DigestReadings(readings, notes={"healthz": "HTTP 503"}))
    with pytest.raises(RegistryMismatchError) as info:
        target.verify_digest(offline_app)
    assert info.value.message == (
        f"unit-proc-v1 (staging) does not verify: expected {DIGEST_A}; engine: {DIGEST_B}; "
        "healthz: could not be read (HTTP 503); tags: could not be read (unreadable)."
    )
    assert info.value.code == "ERR_REGISTRY_MISMATCH"
    assert info.value.details == {
        "app": "unit-proc-v1",
        "env": "staging",
        "expected": f"{OFFLINE_REPO}@{DIGEST_A}",
        "readings": readings,
        "verified": False,
    }


def test_verify_digest_with_nothing_read_fails_closed(offline_app: AppContext) -> None:
    with pytest.raises(RegistryMismatchError) as info:
        FakeTarget(readings=DigestReadings()).verify_digest(offline_app)
    assert info.value.message == "unit-proc-v1 (staging): nothing could be read about what runs; failing closed."


# ------------------------------------------------------------------------------------------------
# verify_image, image_to_deploy, rollback (real images in the loopback registries)


@pytest.fixture
def images(registry: str) -> dict[str, Any]:
    """A linux/amd64 and a linux/arm64 manifest and an index over both, in the anonymous registry."""
    amd = push_tiny_image(registry, IMAGE_PATH, payload="base-contract-amd64")
    arm = push_tiny_image(registry, IMAGE_PATH, payload="base-contract-arm64", arch="arm64")
    return {"amd64": amd, "arm64": arm, "index": push_tiny_index(registry, IMAGE_PATH, [amd, arm])}


@pytest.fixture
def no_registry_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", "THEORY_REGISTRY_HOST", "REGISTRY_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def auth_image(auth_registry: AuthRegistry, monkeypatch: pytest.MonkeyPatch, no_registry_credentials: None) -> str:
    """A manifest in the basic-auth registry, with REGISTRY_USERNAME/REGISTRY_PASSWORD set for it."""
    pushed = push_tiny_image(
        auth_registry.host,
        IMAGE_PATH,
        payload="base-contract-auth",
        credentials=(auth_registry.user, auth_registry.password),
    )
    monkeypatch.setenv("REGISTRY_USERNAME", auth_registry.user)
    monkeypatch.setenv("REGISTRY_PASSWORD", auth_registry.password)
    return pushed.ref


def _refused_credentials(ref: str, bound_to: str, host: str) -> str:
    return (
        f"{host} refused to let us read {ref} anonymously (REGISTRY_USERNAME/REGISTRY_PASSWORD belong to "
        f"{bound_to}, not to {host}; set THEORY_REGISTRY_HOST={host} to use them here): "
        "401: UNAUTHORIZED authentication required."
    )


@pytest.mark.registry
def test_verify_image_returns_this_platforms_manifest(images: dict[str, Any], no_registry_credentials: None) -> None:
    amd: PushedImage = images["amd64"]
    arm: PushedImage = images["arm64"]
    index = ImageRef.parse(images["index"])
    assert FakeTarget().verify_image(index) == ImageRef.parse(amd.ref)
    assert FakeTarget(platform="arm64").verify_image(index) == ImageRef.parse(arm.ref)
    assert FakeTarget().verify_image(ImageRef.parse(amd.ref)) == ImageRef.parse(amd.ref)


def test_verify_image_refuses_a_tag(no_registry_credentials: None) -> None:
    with pytest.raises(ImagePullError) as info:
        FakeTarget().verify_image(ImageRef.parse(f"{OFFLINE_REPO}:v1"))
    assert info.value.message == f"{OFFLINE_REPO}:v1: not a digest ref."


@pytest.mark.registry
def test_verify_image_sends_credentials_only_to_their_host(auth_image: str, auth_registry: AuthRegistry) -> None:
    host = auth_registry.host
    assert str(FakeTarget().verify_image(ImageRef.parse(auth_image), credentials_host=host)) == auth_image
    with pytest.raises(RegistryAuthError) as info:
        FakeTarget().verify_image(ImageRef.parse(auth_image), credentials_host="127.0.0.1:5000")
    assert info.value.message == _refused_credentials(auth_image, "127.0.0.1:5000", host)
    assert info.value.remedy == REGISTRY_REMEDY


@pytest.mark.registry
def test_image_to_deploy_is_the_pin_or_the_verified_oci(
    tmp_path: Path, images: dict[str, Any], registry: str, no_registry_credentials: None
) -> None:
    amd: PushedImage = images["amd64"]
    root = tmp_path / "repo"
    write_processor(root, registry_yaml(f"{registry}/{IMAGE_PATH}", amd64=images["index"]))
    app = staging_app(root)
    # No --oci: the pin as written (an index here), not resolved.
    assert FakeTarget().image_to_deploy(app, None) == ImageRef.parse(images["index"])
    # --oci: proven in the registry, and the platform's manifest is what is deployed.
    assert FakeTarget().image_to_deploy(app, images["index"]) == ImageRef.parse(amd.ref)
    with pytest.raises(NotADigestError):
        FakeTarget().image_to_deploy(app, f"{registry}/{IMAGE_PATH}:latest")


@pytest.mark.registry
def test_image_to_deploy_binds_credentials_to_the_processors_registry(
    tmp_path: Path, auth_image: str, auth_registry: AuthRegistry, registry: str
) -> None:
    root = tmp_path / "repo"
    write_processor(root, registry_yaml(f"{registry}/{IMAGE_PATH}"))
    with pytest.raises(RegistryAuthError) as info:
        FakeTarget().image_to_deploy(staging_app(root), auth_image)
    assert info.value.message == _refused_credentials(auth_image, registry, auth_registry.host)

    other = tmp_path / "other"
    write_processor(other, registry_yaml(f"{auth_registry.host}/{IMAGE_PATH}"))
    assert str(FakeTarget().image_to_deploy(staging_app(other), auth_image)) == auth_image


@pytest.mark.registry
def test_rollback_starts_the_verified_manifest_of_an_earlier_pin(
    tmp_path: Path, images: dict[str, Any], registry: str, no_registry_credentials: None
) -> None:
    amd: PushedImage = images["amd64"]
    arm: PushedImage = images["arm64"]
    repository = f"{registry}/{IMAGE_PATH}"
    root = git_repo(tmp_path / "repo")
    first = commit(root, registry_yaml(repository, amd64=images["index"]), "pin the index")
    commit(root, registry_yaml(repository, amd64=f"{repository}@{DIGEST_A}", arm64=arm.ref), "pin A")
    app = staging_app(root)

    target = FakeTarget()
    result = target.rollback(app, first)
    assert result == {
        "app": "unit-proc-v1",
        "image": amd.ref,
        "rolled_back_to": amd.ref,
        "summary": f"rolled back unit-proc-v1 (staging) to {amd.ref}. started.",
    }
    assert target.starts == [("unit-proc-v1", amd.ref, False)]

    # A dry run says so, and a start without a summary leaves the sentence alone.
    quiet = FakeTarget(start_summary=None)
    result = quiet.rollback(app, images["index"].rsplit("@", 1)[1], dry_run=True)
    assert result["summary"] == f"would roll back unit-proc-v1 (staging) to {amd.ref}. "
    assert result["rolled_back_to"] == amd.ref
    assert quiet.starts == [("unit-proc-v1", amd.ref, True)]

    # The arm64 target reads the arm64 pin of that revision.
    arm_target = FakeTarget(platform="arm64")
    assert arm_target.rollback(app, "HEAD")["rolled_back_to"] == arm.ref


@pytest.mark.registry
def test_rollback_binds_credentials_to_the_processors_registry(
    tmp_path: Path, auth_image: str, auth_registry: AuthRegistry, registry: str
) -> None:
    # The processor moved from the auth registry to the anonymous one: the credentials now belong to
    # the new registry, so rolling back to a pin of the old one is not sent them.
    root = git_repo(tmp_path / "repo")
    commit(root, registry_yaml(f"{auth_registry.host}/{IMAGE_PATH}", amd64=auth_image), "old registry")
    commit(root, registry_yaml(f"{registry}/{IMAGE_PATH}"), "moved")
    target = FakeTarget()
    with pytest.raises(RegistryAuthError) as info:
        target.rollback(staging_app(root), auth_image.rsplit("@", 1)[1])
    assert info.value.message == _refused_credentials(auth_image, registry, auth_registry.host)
    assert target.starts == []


# ------------------------------------------------------------------------------------------------
# earlier_pin: refusals


def test_earlier_pin_refuses_option_like_and_empty_revisions(offline_app: AppContext) -> None:
    with pytest.raises(RevisionError) as info:
        earlier_pin(offline_app.processor, "amd64", "--output=/tmp/x")
    assert (
        info.value.message == "--to '--output=/tmp/x' starts with '-', so git would read it as an option; refusing it."
    )
    assert info.value.remedy == "Pass a real --to (a name or a commit sha, not starting with '-')."
    with pytest.raises(RevisionError) as info:
        earlier_pin(offline_app.processor, "amd64", "")
    assert info.value.message == "--to is empty."


def test_earlier_pin_outside_a_git_repository_is_a_revision_error(offline_app: AppContext) -> None:
    root = offline_app.processor.repo_root
    with pytest.raises(TheoryDeployError) as info:
        earlier_pin(offline_app.processor, "amd64", DIGEST_A)
    assert type(info.value) is RevisionError
    # Our words exactly; git's own after them may vary between git versions.
    assert info.value.message.startswith(
        f"`git log --format=%H -- {REL}` failed in {root} (exit 128): fatal: not a git repository"
    )


def test_earlier_pin_reports_a_malformed_historic_pin_with_its_revision(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "repo")
    tagged = f"{OFFLINE_REPO}:v1@{DIGEST_B}"  # never a valid pin, but history may hold anything
    rev = commit(root, registry_yaml(amd64=tagged), "bad pin")
    commit(root, registry_yaml(amd64=f"{OFFLINE_REPO}@{DIGEST_A}"), "good pin")
    with pytest.raises(NotADigestError) as info:
        earlier_pin(loaded(root), "amd64", DIGEST_B)
    assert info.value.message == (
        f"--to (pinned at {rev[:12]}): {tagged!r} is not a digest ref; "
        "expected REPOSITORY@sha256:<64 lowercase hex> with no tag."
    )


def test_earlier_pin_reports_an_invalid_registry_yaml_at_the_revision(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "repo")
    rev = commit(root, registry_yaml(amd64=f"{OFFLINE_REPO}@{DIGEST_A}") + "colour: blue\n", "invalid")
    commit(root, registry_yaml(amd64=f"{OFFLINE_REPO}@{DIGEST_A}"), "valid")
    with pytest.raises(RevisionError) as info:
        earlier_pin(loaded(root), "amd64", rev)
    assert info.value.message == (f"--to {rev}: {REL} at that revision is not valid: unknown key 'colour'")


# ------------------------------------------------------------------------------------------------
# run: theory.run.v1 against a scripted server

Script = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]
META = {"image_digest": DIGEST_A, "env_fingerprint": "sha256:0", "duration_ms": 3}


def frame(kind: str, content: Any) -> str:
    return json.dumps({"kind": kind, "content": content})


@contextmanager
def scripted_server(script: Script) -> Iterator[tuple[str, dict[str, Any]]]:
    """A theory.run.v1 server on a free loopback port, in its own thread (Target.run calls
    asyncio.run itself). It reads the RunOpen, then runs `script`; `seen` holds what it received."""
    seen: dict[str, Any] = {}
    state: dict[str, Any] = {}
    ready = threading.Event()

    async def handler(ws: ServerConnection) -> None:
        seen["authorization"] = ws.request.headers.get("Authorization") if ws.request else None
        seen["open"] = json.loads(await ws.recv())
        await ws.send(frame(protocol.ACK, {"execution_id": seen["open"]["content"]["execution_id"]}))
        await script(ws, seen)

    async def main() -> None:
        state["stop"] = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        async with serve(handler, "127.0.0.1", 0, subprotocols=[protocol.PROTOCOL]) as server:  # type: ignore[list-item]
            state["port"] = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await state["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the scripted server did not start"
    try:
        yield f"ws://127.0.0.1:{state['port']}/run", seen
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


def result_after(*frames: str, envelope: dict[str, Any]) -> Script:
    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        for text in frames:
            await ws.send(text)
        await ws.send(frame(protocol.RUN_RESULT, envelope))
        await ws.close()

    return script


STREAM = (
    frame(protocol.TOKEN, {"text": "Hel"}),
    frame(protocol.TOKEN, {"text": "lo"}),
    frame(protocol.TOKEN, {}),  # no text: nothing
    frame(protocol.TOKEN, "not an object"),  # ignored
    frame(protocol.LOG, {"message": "warming up"}),
    frame(protocol.LOG, {}),  # no message: an empty log line
    frame(protocol.LOG, ["not an object"]),  # ignored
    frame(protocol.EVENT, {"name": "step", "text": "E", "message": "M"}),  # events are not shown
    frame(protocol.HEARTBEAT, {"text": "H", "message": "M"}),
)
OUTPUTS = {"answer": {"text": "Hello", "n": [1, 2]}}
SUCCESS = {"status": "success", "execution_id": "exec-given", "outputs": OUTPUTS, "meta": META}


def test_run_streams_tokens_and_logs_and_returns_the_envelope(
    offline_app: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    with scripted_server(result_after(*STREAM, envelope=SUCCESS)) as (url, seen):
        target = FakeTarget(endpoint=Endpoint("http://127.0.0.1", url, token="tok-123"))
        result = target.run(offline_app, mode="mock", inputs={"text": "hi"}, timeout_s=10, execution_id="exec-given")
    assert result == {
        "app": "unit-proc-v1",
        "env": "staging",
        "envelope": SUCCESS,
        "summary": '{\n  "answer": {\n    "text": "Hello",\n    "n": [\n      1,\n      2\n    ]\n  }\n}',
    }
    assert seen["open"] == {
        "kind": protocol.RUN_OPEN,
        "content": {"execution_id": "exec-given", "mode": "mock", "inputs": {"text": "hi"}},
    }
    assert seen["authorization"] == "Bearer tok-123"
    captured = capsys.readouterr()
    assert captured.err == "Hello[log] warming up\n[log] \n\n"
    assert captured.out == ""


def test_run_without_streaming_writes_nothing_and_names_its_own_execution(
    offline_app: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    with scripted_server(result_after(*STREAM, envelope=SUCCESS)) as (url, seen):
        target = FakeTarget(endpoint=Endpoint("http://127.0.0.1", url))
        result = target.run(offline_app, mode="real", inputs={}, timeout_s=10, stream_tokens=False)
    assert result["envelope"] == SUCCESS
    assert capsys.readouterr().err == ""
    content = seen["open"]["content"]
    assert re.fullmatch(r"exec-[0-9a-f]{12}", content["execution_id"]), content
    assert content["mode"] == "real"
    assert seen["authorization"] is None


def test_run_error_envelope_becomes_the_error_of_its_code(
    offline_app: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = {
        "status": "error",
        "execution_id": "exec-e",
        "outputs": None,
        "meta": META,
        "error": {"code": "ERR_INPUTS", "message": "inputs.text is required"},
    }
    with scripted_server(result_after(envelope=envelope)) as (url, _seen):
        target = FakeTarget(endpoint=Endpoint("http://127.0.0.1", url))
        with pytest.raises(InputsError) as info:
            target.run(offline_app, mode="mock", inputs={}, timeout_s=10)
    assert info.value.message == "unit-proc-v1: inputs.text is required"
    assert info.value.details == {"envelope": envelope}
    assert capsys.readouterr().err == "\n"


def test_run_error_envelope_with_an_unknown_code_is_a_runtime_failure(offline_app: AppContext) -> None:
    sent = {"status": "error", "execution_id": "exec-u", "meta": META, "error": {"code": "ERR_MODEL_MELTED"}}
    with scripted_server(result_after(envelope=sent)) as (url, _seen):
        target = FakeTarget(endpoint=Endpoint("http://127.0.0.1", url))
        with pytest.raises(RuntimeFailureError) as info:
            target.run(offline_app, mode="mock", inputs={}, timeout_s=10, stream_tokens=False)
    assert info.value.message == "unit-proc-v1: "
    # The client fills in the missing message; the whole envelope is kept.
    received = {**sent, "error": {"code": "ERR_MODEL_MELTED", "message": ""}}
    assert info.value.details == {"processor_code": "ERR_MODEL_MELTED", "envelope": received}


def test_run_gives_up_at_its_total_deadline(offline_app: AppContext) -> None:
    async def silent(ws: ServerConnection, seen: dict[str, Any]) -> None:
        # Say nothing; end the connection after a while so that a run without a deadline fails too.
        try:
            await asyncio.wait_for(ws.wait_closed(), 3)
        except TimeoutError:
            await ws.close()

    with scripted_server(silent) as (url, _seen):
        target = FakeTarget(endpoint=Endpoint("http://127.0.0.1", url))
        with pytest.raises(RunTimeoutError) as info:
            target.run(offline_app, mode="mock", inputs={}, timeout_s=0.5, execution_id="exec-t", stream_tokens=False)
    assert re.fullmatch(
        rf"No RunResult from {re.escape(url)} within 0\.5s for execution exec-t "
        r"\(running; 1 frame\(s\) received, the last \d+\.\ds ago\)\.",
        info.value.message,
    ), info.value.message


# ------------------------------------------------------------------------------------------------
# cleanup_dev


def managed(name: str, branch: str | None, env: str = "dev", user: str | None = "u") -> ListedApp:
    labels = {"theory.managed": "true", "theory.env": env}
    if user is not None:
        labels["theory.user"] = user
    if branch is not None:
        labels["theory.branch"] = branch
    return ListedApp(name, labels)


def scenario() -> FakeTarget:
    """One app of each kind, listed out of order (the result is sorted by name)."""
    apps = [
        managed("i-nouser", "gone", user=None),
        managed("d-main", "main", user="dave"),
        managed("a-gone", "gone", user="alice"),
        managed("b-redeployed", "gone"),  # redeployed from an existing branch between listing and stopping
        managed("c-vanished", "gone"),  # removed meanwhile
        managed("e-staging", "gone", env="staging"),  # a label saying staging inside dev: never touched
        ListedApp("f-unreadable", {}, note="its tags could not be read: timeout"),
        ListedApp("g-unmanaged", {"theory.env": "dev", "theory.branch": "gone", "theory.managed": "yes"}),
        managed("h-nobranch", None),
        managed("j-feat", "feat", user="jo"),
        managed("k-unmanaged-now", "gone"),
        managed("l-staging-now", "gone"),
        managed("m-nobranch-now", "gone"),
    ]
    now = {
        "b-redeployed": {**apps[3].labels, "theory.branch": "main"},
        "c-vanished": None,
        "k-unmanaged-now": {"theory.env": "dev", "theory.branch": "gone"},
        "l-staging-now": {**apps[11].labels, "theory.env": "staging"},
        "m-nobranch-now": {"theory.managed": "true", "theory.env": "dev"},
    }
    return FakeTarget(apps, now)


SKIPPED = [
    {"app": "b-redeployed", "reason": "left alone: redeployed from branch 'main' since it was listed (was 'gone')"},
    {"app": "c-vanished", "reason": "left alone: gone"},
    {"app": "e-staging", "reason": "its recorded environment is 'staging', not 'dev'"},
    {"app": "f-unreadable", "reason": "its tags could not be read: timeout"},
    {"app": "g-unmanaged", "reason": "not deployed by theory-deploy (no theory.managed=true)"},
    {"app": "h-nobranch", "reason": "no branch recorded at deploy time (no theory.branch)"},
    {
        "app": "k-unmanaged-now",
        "reason": "left alone: re-read before stopping, not deployed by theory-deploy (no theory.managed=true)",
    },
    {
        "app": "l-staging-now",
        "reason": "left alone: re-read before stopping, its recorded environment is 'staging', not 'dev'",
    },
    {
        "app": "m-nobranch-now",
        "reason": "left alone: re-read before stopping, no branch recorded at deploy time (no theory.branch)",
    },
]
SKIPPED_LINES = [f"  skipped: {e['app']}: {e['reason']}" for e in SKIPPED]
KEPT = [
    {"app": "d-main", "branch": "main", "user": "dave"},
    {"app": "j-feat", "branch": "feat", "user": "jo"},
]


def test_cleanup_dev_stops_exactly_the_apps_of_gone_branches() -> None:
    target = scenario()
    out = target.cleanup_dev(["main", "", "feat", "main"])
    assert target.stopped == ["a-gone", "i-nouser"]
    assert out == {
        "env": "dev",
        "target": "fake",
        "branches": 2,
        "stopped": [
            {"app": "a-gone", "branch": "gone", "user": "alice"},
            {"app": "i-nouser", "branch": "gone", "user": None},
        ],
        "kept": KEPT,
        "skipped": SKIPPED,
        "dry_run": False,
        "summary": "\n".join(
            [
                "cleanup-dev (fake, dev): stopped 2, kept 2, skipped 9 (2 existing branch(es) given)",
                "  stopped: a-gone (branch 'gone' is gone; user alice)",
                "  stopped: i-nouser (branch 'gone' is gone; user None)",
                "  kept:    d-main (branch 'main' exists)",
                "  kept:    j-feat (branch 'feat' exists)",
                *SKIPPED_LINES,
            ]
        ),
    }
    # Only dev was listed, and each app of a gone branch was re-read in dev before being stopped.
    assert target.envs == ["dev"] * 8
    assert [a.name for a in target.listed_seen] == [
        "a-gone",
        "b-redeployed",
        "c-vanished",
        "i-nouser",
        "k-unmanaged-now",
        "l-staging-now",
        "m-nobranch-now",
    ]
    assert target.listed_seen[0] is target.apps[2]


def test_cleanup_dev_dry_run_decides_the_same_and_stops_nothing() -> None:
    target = scenario()
    out = target.cleanup_dev(["main", "feat"], dry_run=True)
    assert target.stopped == [] and target.listed_seen == [] and target.envs == ["dev"]
    would_stop = ["a-gone", "b-redeployed", "c-vanished", "i-nouser", "k-unmanaged-now", "l-staging-now"]
    assert [e["app"] for e in out["stopped"]] == [*would_stop, "m-nobranch-now"]
    assert out["stopped"][0] == {"app": "a-gone", "branch": "gone", "user": "alice"}
    assert out["kept"] == KEPT
    assert out["skipped"] == SKIPPED[2:6]
    assert out["dry_run"] is True
    assert "failed" not in out
    assert out["summary"].splitlines() == [
        "cleanup-dev (fake, dev): would stop 7, kept 2, skipped 4 (2 existing branch(es) given) "
        "(dry run: nothing was stopped)",
        "  would stop: a-gone (branch 'gone' is gone; user alice)",
        "  would stop: b-redeployed (branch 'gone' is gone; user u)",
        "  would stop: c-vanished (branch 'gone' is gone; user u)",
        "  would stop: i-nouser (branch 'gone' is gone; user None)",
        "  would stop: k-unmanaged-now (branch 'gone' is gone; user u)",
        "  would stop: l-staging-now (branch 'gone' is gone; user u)",
        "  would stop: m-nobranch-now (branch 'gone' is gone; user u)",
        "  kept:    d-main (branch 'main' exists)",
        "  kept:    j-feat (branch 'feat' exists)",
        *SKIPPED_LINES[2:6],
    ]


def test_cleanup_dev_failures_do_not_stop_the_others_and_raise_at_the_end() -> None:
    apps = [
        managed("z-last", "gone", user="zed"),
        managed("crash-1", "gone", user="cat"),
        managed("boom-1", "gone", user="bob"),
        managed("keep", "main"),
        ListedApp("odd", {"theory.managed": "true"}),
    ]
    target = FakeTarget(apps)
    with pytest.raises(DeployError) as info:
        target.cleanup_dev(["main"])
    assert target.stopped == ["z-last"]  # one failure does not stop the others
    err = info.value
    assert err.message == (
        "cleanup-dev: 2 dev app(s) could not be stopped: boom-1 (ERR_DEPLOY: the target said no); "
        "crash-1 (ERR_NOT_RUNNING: the engine went away). 1 stopped meanwhile."
    )
    assert err.remedy == "Read the errors, fix, and re-run cleanup-dev (it only stops what is still running)."
    failed = [
        {"app": "boom-1", "branch": "gone", "user": "bob", "code": "ERR_DEPLOY", "error": "the target said no"},
        {"app": "crash-1", "branch": "gone", "user": "cat", "code": "ERR_NOT_RUNNING", "error": "the engine went away"},
    ]
    assert err.details == {
        "env": "dev",
        "target": "fake",
        "branches": 1,
        "stopped": [{"app": "z-last", "branch": "gone", "user": "zed"}],
        "kept": [{"app": "keep", "branch": "main", "user": "u"}],
        "skipped": [{"app": "odd", "reason": "its recorded environment is None, not 'dev'"}],
        "dry_run": False,
        "failed": failed,
        "summary": "\n".join(
            [
                "cleanup-dev (fake, dev): stopped 1, kept 1, skipped 1, failed 2 (1 existing branch(es) given)",
                "  stopped: z-last (branch 'gone' is gone; user zed)",
                "  kept:    keep (branch 'main' exists)",
                "  skipped: odd: its recorded environment is None, not 'dev'",
                "  FAILED:  boom-1: ERR_DEPLOY: the target said no",
                "  FAILED:  crash-1: ERR_NOT_RUNNING: the engine went away",
            ]
        ),
    }


def test_cleanup_dev_with_nothing_listed() -> None:
    target = FakeTarget([])
    assert target.cleanup_dev(["main"]) == {
        "env": "dev",
        "target": "fake",
        "branches": 1,
        "stopped": [],
        "kept": [],
        "skipped": [],
        "dry_run": False,
        "summary": "cleanup-dev (fake, dev): stopped 0, kept 0, skipped 0 (1 existing branch(es) given)",
    }


@pytest.mark.parametrize("branches", [[], ["", ""]])
def test_cleanup_dev_refuses_an_empty_branch_list(branches: list[str]) -> None:
    target = scenario()
    with pytest.raises(UsageError) as info:
        target.cleanup_dev(branches)
    assert info.value.message == (
        "cleanup-dev: the list of existing branches is empty; refusing, because every dev app would be stopped."
    )
    assert info.value.remedy == (
        "Check the command that lists the branches (e.g. `git ls-remote --heads origin`) "
        "succeeded and wrote one branch name per line."
    )
    assert target.envs == []  # nothing was even listed


def test_changed_since_listing_only_lets_the_same_branch_be_stopped() -> None:
    listed = managed("x", "gone")
    assert changed_since_listing(listed, dict(listed.labels)) is None
    assert changed_since_listing(listed, {**listed.labels, "theory.branch": "other"}) == (
        "left alone: redeployed from branch 'other' since it was listed (was 'gone')"
    )


# ------------------------------------------------------------------------------------------------
# read_branches


def test_read_branches_reads_one_name_a_line(tmp_path: Path) -> None:
    path = tmp_path / "b.txt"
    path.write_text("main\n\n  refs/heads/feat/x  \nfeat-x\r\n\n\nlast\n")
    assert read_branches(str(path)) == ["main", "feat/x", "feat-x", "last"]


def test_read_branches_dash_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("refs/heads/feat-x\nfeat/x\n"))
    assert read_branches("-") == ["feat-x", "feat/x"]


def test_read_branches_refuses_a_line_with_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "ls-remote.txt"
    line = f"{'0' * 40}\trefs/heads/{'feature-' * 8}"
    path.write_text(f"main\n\n{line}\n")
    with pytest.raises(UsageError) as info:
        read_branches(str(path))
    assert info.value.message == (
        f"--existing-branches-file {path}: line 3 ({line[:80]!r}) is not a branch name (it contains whitespace)."
    )
    assert info.value.remedy == (
        "Write one branch name per line, e.g. `git ls-remote --heads origin | sed 's#.*refs/heads/##'`."
    )


def test_read_branches_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(UsageError) as info:
        read_branches(str(missing))
    assert info.value.message == f"--existing-branches-file {missing}: cannot read it (No such file or directory)."
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"main\n\xff\xfe\n")
    with pytest.raises(UsageError) as info:
        read_branches(str(binary))
    assert info.value.message == f"--existing-branches-file {binary}: not UTF-8 text."


# ------------------------------------------------------------------------------------------------
# parse_inputs and its limits

BYTES_REMEDY = "Pass smaller inputs, or raise the limit with THEORY_MAX_INPUTS_BYTES=<bytes>."
DEPTH_REMEDY = "Flatten the inputs, or raise the limit with THEORY_MAX_INPUTS_DEPTH=<levels>."


@pytest.fixture(autouse=True)
def default_input_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits' defaults are part of the contract: never let the caller's environment move them."""
    monkeypatch.delenv("THEORY_MAX_INPUTS_BYTES", raising=False)
    monkeypatch.delenv("THEORY_MAX_INPUTS_DEPTH", raising=False)


def inputs_error(inputs_json: str | None, inputs_file: str | None = None) -> InputsError:
    with pytest.raises(InputsError) as info:
        parse_inputs(inputs_json, inputs_file)
    return info.value


def nested(levels: int) -> str:
    """An object whose value nests `levels` levels of arrays/objects in all (the object counts)."""
    return '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def test_parse_inputs_from_json_or_file(tmp_path: Path) -> None:
    assert parse_inputs(None, None) == {}
    assert parse_inputs('{"a": 1, "b": ["[{"]}', None) == {"a": 1, "b": ["[{"]}
    path = tmp_path / "in.json"
    path.write_text('{"text": "hi"}')
    assert parse_inputs(None, str(path)) == {"text": "hi"}
    assert inputs_error('{"a": 1}', str(path)).message == "give --inputs-json or --inputs-file, not both."


def test_parse_inputs_refuses_what_is_not_a_json_object(tmp_path: Path) -> None:
    assert inputs_error('{"a":').message == "--inputs-json: not JSON (line 1, column 6: Expecting value)."
    assert inputs_error("[1]").message == "--inputs-json: expected a JSON object."
    assert inputs_error('"x"').message == "--inputs-json: expected a JSON object."
    path = tmp_path / "list.json"
    path.write_text("[1]")
    assert inputs_error(None, str(path)).message == f"--inputs-file {path}: expected a JSON object."


def test_parse_inputs_json_size_limit_counts_utf8_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THEORY_MAX_INPUTS_BYTES", " 10 ")
    assert parse_inputs('{"a":"\u00e9"}', None) == {"a": "\u00e9"}  # 9 characters, exactly 10 bytes
    err = inputs_error('{"a":"\u00e9 "}')
    assert err.message == "--inputs-json: larger than the 10-byte limit for inputs."
    assert err.remedy == BYTES_REMEDY
    monkeypatch.setenv("THEORY_MAX_INPUTS_BYTES", "9")
    assert inputs_error('{"a":"\u00e9"}').message == "--inputs-json: larger than the 9-byte limit for inputs."
    monkeypatch.setenv("THEORY_MAX_INPUTS_BYTES", "1")  # the smallest limit there is
    assert inputs_error("{}").message == "--inputs-json: larger than the 1-byte limit for inputs."


def test_parse_inputs_file_limits_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THEORY_MAX_INPUTS_BYTES", "10")
    exact = tmp_path / "exact.json"
    exact.write_text('{"a":1234}')
    assert parse_inputs(None, str(exact)) == {"a": 1234}
    big = tmp_path / "big.json"
    big.write_text('{"a":12345}')
    err = inputs_error(None, str(big))
    assert err.message == f"--inputs-file {big}: larger than the 10-byte limit for inputs."
    assert err.remedy == BYTES_REMEDY

    missing = tmp_path / "missing.json"
    assert inputs_error(None, str(missing)).message == f"--inputs-file {missing}: No such file or directory."
    err = inputs_error(None, str(tmp_path))
    assert err.message == (
        f"--inputs-file {tmp_path}: not a regular file; --inputs-file reads regular files only "
        "(not a FIFO, device or folder)."
    )
    assert err.remedy == "Write the inputs to a file, or pass them with --inputs-json."
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"a":"\xff"}')
    assert inputs_error(None, str(binary)).message == f"--inputs-file {binary}: not UTF-8 text."
    shallow = tmp_path / "deep.json"
    shallow.write_text(nested(3))
    monkeypatch.setenv("THEORY_MAX_INPUTS_DEPTH", "2")
    assert inputs_error(None, str(shallow)).message == (
        f"--inputs-file {shallow}: nested deeper than the limit of 2 levels of arrays/objects."
    )


def test_parse_inputs_depth_limit_is_64_by_default() -> None:
    assert parse_inputs(nested(64), None) == json.loads(nested(64))
    err = inputs_error(nested(65))
    assert err.message == "--inputs-json: nested deeper than the limit of 64 levels of arrays/objects."
    assert err.remedy == DEPTH_REMEDY


def test_parse_inputs_depth_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THEORY_MAX_INPUTS_DEPTH", "1")
    assert parse_inputs('{"a": "[[[{{{"}', None) == {"a": "[[[{{{"}  # brackets in strings do not count
    assert parse_inputs('{"a": "\\"[[["}', None) == {"a": '"[[['}
    assert (
        inputs_error('{"a": []}').message
        == "--inputs-json: nested deeper than the limit of 1 levels of arrays/objects."
    )
    monkeypatch.setenv("THEORY_MAX_INPUTS_DEPTH", "2")
    # Depth goes back down as arrays close: siblings do not add up ...
    assert parse_inputs('{"a": [], "b": [], "c": {}}', None) == {"a": [], "b": [], "c": {}}
    # ... but a deeper sibling after a closed one is still counted.
    assert inputs_error('{"a": [], "b": [[]]}').message == (
        "--inputs-json: nested deeper than the limit of 2 levels of arrays/objects."
    )
    monkeypatch.setenv("THEORY_MAX_INPUTS_DEPTH", "3")
    # A second top-level value starts again at depth 0 (and is then refused by the JSON parser).
    assert inputs_error('[] {"a": [[]]}').message == "--inputs-json: not JSON (line 1, column 4: Extra data)."


def test_parse_inputs_too_deep_for_the_parser_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THEORY_MAX_INPUTS_DEPTH", "1000000")
    assert inputs_error("[" * 100000 + "]" * 100000).message == "--inputs-json: nested too deeply to parse."


@pytest.mark.parametrize("name", ["THEORY_MAX_INPUTS_BYTES", "THEORY_MAX_INPUTS_DEPTH"])
def test_parse_inputs_limit_variables_must_be_positive_whole_numbers(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    for raw, problem in (("abc", "is not a whole number"), ("1.5", "is not a whole number")):
        monkeypatch.setenv(name, raw)
        with pytest.raises(UsageError) as info:
            parse_inputs("{}", None)
        assert info.value.message == f"{name}={raw!r} {problem}."
    for raw in ("0", "-3"):
        monkeypatch.setenv(name, raw)
        with pytest.raises(UsageError) as info:
            parse_inputs("{}", None)
        assert info.value.message == f"{name}={raw!r} must be a positive whole number."
    monkeypatch.setenv(name, "   ")  # blank: the default
    assert parse_inputs("{}", None) == {}
