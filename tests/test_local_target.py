"""The local target on the real Docker engine, pulling from the real loopback registry.

A tiny stdlib test processor (built here FROM the project's local Python base, pushed to the
anonymous registry, pinned into a temporary repo's registry.yaml) answers /healthz with
IMAGE_DIGEST, reports the sha256 of a secret's value at /secret-sha256/<NAME> (never the value),
and prints the values of its secrets to stdout on boot, so the tests can prove `logs` scrubs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AuthRegistry, assert_no_canary, make_canaries
from theory_deploy.errors import (
    DeployError,
    FunctionNotFoundError,
    ImageUnpinnedError,
    MissingSecretError,
    PlatformMismatchError,
    RegistryAuthError,
    RegistryMismatchError,
)
from theory_deploy.refs import ImageRef, ProcessorRef
from theory_deploy.registry_file import load_processor, write_pins
from theory_deploy.targets.base import AppContext
from theory_deploy.targets.local import LocalTarget, container_name, host_platform

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
LOCALCTL = REPO / ".venv" / "bin" / "localctl"
PLATFORM = host_platform()
SECRET_NAMES = ("OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE")

SERVER = r"""
import hashlib, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VARIANT = "@VARIANT@"
for name in ("OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE"):
    print(f"boot: {name}={os.environ.get(name, '')}", flush=True)
print(f"boot: variant={VARIANT} digest={os.environ.get('IMAGE_DIGEST')}", flush=True)
if VARIANT == "crash":
    print("crashing on purpose", flush=True)
    sys.exit(3)

class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            self._send(200, {"ok": True, "ref": os.environ.get("THEORY_REF"),
                             "digest": os.environ.get("IMAGE_DIGEST") or None, "variant": VARIANT})
        elif self.path.startswith("/secret-sha256/"):
            value = os.environ.get(self.path.rsplit("/", 1)[1])
            self._send(200, {"sha256": hashlib.sha256(value.encode()).hexdigest() if value else None})
        else:
            self._send(404, {"ok": False})

    def log_message(self, fmt, *args):
        print("http: " + fmt % args, flush=True)

ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
"""

REGISTRY_YAML = """\
# a test processor for tests/test_local_target.py
ref: {ref}
build:
  port: 8000
  platforms: [linux/amd64, linux/arm64]
image:
  repository: {repository}
  platforms:
    amd64: {amd64}  # linux/amd64 manifest
    arm64: {arm64}  # linux/arm64 manifest
runtime:
  cpu: 0.5
  memory_gb: 0.25
  timeout_s: 60
secrets:
  required: [OPENAI_API_KEY, THEORY_CANARY_SECRET]
  optional: [LITELLM_API_BASE]
inputs:
  type: object
"""


# ------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class BuiltImages:
    repository: str  # REGISTRY/theory-test/localproc
    v1: ImageRef  # repository@manifest digest, pushed
    v2: ImageRef
    crash: ImageRef
    local_only: str  # a local tag never pushed: no RepoDigests


def _docker(docker_cli: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([docker_cli, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"docker {' '.join(args)} failed: {proc.stderr[-2000:]}"
    return proc.stdout


def _build(docker_cli: str, base_image: str, context: Path, variant: str, tag: str) -> None:
    folder = context / variant
    folder.mkdir(parents=True)
    (folder / "server.py").write_text(SERVER.replace("@VARIANT@", variant))
    (folder / "Dockerfile").write_text(
        textwrap.dedent(
            """\
            ARG BASE_IMAGE
            FROM ${BASE_IMAGE}
            COPY server.py /srv/server.py
            CMD ["python3", "-u", "/srv/server.py"]
            """
        )
    )
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    _docker(
        docker_cli,
        "build",
        "--platform",
        f"linux/{PLATFORM}",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "-t",
        tag,
        str(folder),
        env=env,
        timeout=900,
    )


def _push(docker_cli: str, tag: str, env: dict[str, str] | None = None) -> ImageRef:
    """Push a tag; return repository@<the manifest digest the push reported>."""
    out = _docker(docker_cli, "push", tag, env=env)
    digest = out.split("digest: ", 1)[1].split()[0]
    return ImageRef.parse_digest_ref(f"{tag.rsplit(':', 1)[0]}@{digest}")


@pytest.fixture(scope="module")
def images(
    docker_cli: str, registry: str, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltImages]:
    context = tmp_path_factory.mktemp("localproc")
    run = uuid.uuid4().hex[:8]
    repository = f"{registry}/theory-test/localproc"
    refs = {}
    tags = []
    for variant in ("v1", "v2", "crash"):
        tag = f"{repository}:{variant}-{run}"
        _build(docker_cli, base_image, context, variant, tag)
        tags.append(tag)
        refs[variant] = _push(docker_cli, tag)
    local_only = f"theory-test/localproc-unpushed:{run}"
    _build(docker_cli, base_image, context, "unpushed", local_only)
    tags.append(local_only)
    yield BuiltImages(repository, refs["v1"], refs["v2"], refs["crash"], local_only)
    # Untag what this run made (the content stays cached for the next run; the registry keeps its copy).
    subprocess.run([docker_cli, "rmi", *tags], capture_output=True, timeout=120)


# ------------------------------------------------------------------------------------------------
# A temporary repository holding one test processor


@dataclass
class Proc:
    ref: ProcessorRef
    root: Path
    path: Path
    env: str
    state: Path
    docker_cli: str
    identity: dict[str, str]

    def app(self) -> AppContext:
        return AppContext.for_processor(load_processor(self.ref, self.root), self.env)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.app().name

    @property
    def container(self) -> str:
        return container_name(self.app())

    def pin(self, image: ImageRef | None) -> None:
        write_pins(self.path, {PLATFORM: str(image) if image else None})

    def inspect(self) -> dict[str, Any] | None:
        proc = subprocess.run(
            [self.docker_cli, "container", "inspect", self.container], capture_output=True, text=True, timeout=30
        )
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def ctl(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = self.cli_env(extra_env)
        return subprocess.run(
            [str(LOCALCTL), *args, "--ref", str(self.ref), "--env", self.env],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def cli_env(self, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
        env.update(
            THEORY_REPO_ROOT=str(self.root),
            THEORY_STATE_DIR=str(self.state),
            THEORY_DOCKER=self.docker_cli,
            **self.identity,
        )
        env.update(extra_env or {})
        return env


def _make_proc(tmp_path: Path, repository: str, pin: ImageRef | None, docker_cli: str, env: str = "staging") -> Proc:
    ref = ProcessorRef("ltest", f"p{uuid.uuid4().hex[:10]}", 1)
    root = tmp_path / "repo"
    folder = root / "processors" / ref.namespace / ref.name
    folder.mkdir(parents=True)
    pins = {"amd64": "null", "arm64": "null"}
    if pin is not None:
        pins[PLATFORM] = str(pin)
    path = folder / "registry.yaml"
    path.write_text(REGISTRY_YAML.format(ref=ref, repository=repository, **pins))
    identity = {"GIT_BRANCH": "feat/local_target", "GIT_USER": "Test.User"} if env == "dev" else {}
    return Proc(ref, root, path, env, tmp_path / "state", docker_cli, identity)


@pytest.fixture
def proc_factory(
    tmp_path: Path, images: BuiltImages, docker_cli: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    made: list[Proc] = []
    monkeypatch.setenv("THEORY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("THEORY_DOCKER", docker_cli)
    monkeypatch.setenv("THEORY_LOCAL_START_TIMEOUT", "60")
    for name in (*SECRET_NAMES, "REGISTRY_USERNAME", "REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)

    def make(pin: ImageRef | None = images.v1, env: str = "staging", repository: str | None = None) -> Proc:
        sub = tmp_path / f"p{len(made)}"
        sub.mkdir()
        proc = _make_proc(sub, repository or images.repository, pin, docker_cli, env)
        proc.state = tmp_path / "state"
        for key, value in proc.identity.items():
            monkeypatch.setenv(key, value)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        subprocess.run([docker_cli, "rm", "-f", proc.container, proc.name], capture_output=True, timeout=60)


def _health(url: str, path: str = "/healthz") -> dict[str, Any]:
    return httpx.get(url + path, timeout=5, trust_env=False).json()


def _started_at(container: dict[str, Any]) -> tuple[str, str]:
    return container["Id"], container["State"]["StartedAt"]


# ------------------------------------------------------------------------------------------------
# Lifecycle


def test_start_verify_status_stop(proc_factory: Any, images: BuiltImages) -> None:
    proc = proc_factory(env="dev")
    target, app = LocalTarget(), proc.app()
    assert app.name.startswith("feat-local-target-test-user-ltest-")

    result = target.start(app, target.image_to_deploy(app, None))
    assert result["action"] == "started"
    assert result["digest"] == images.v1.digest
    assert result["image"] == str(images.v1)
    assert result["url"].startswith("http://127.0.0.1:")
    assert _health(result["url"])["digest"] == images.v1.digest

    container = proc.inspect()
    assert container is not None
    labels = container["Config"]["Labels"]
    assert labels["theory.managed"] == "true"
    assert labels["theory.ref"] == str(proc.ref)
    assert labels["theory.env"] == "dev"
    assert labels["theory.branch"] == "feat/local_target"
    assert labels["theory.user"] == "Test.User"
    assert labels["theory.digest"] == images.v1.digest
    binding = container["HostConfig"]["PortBindings"]["8000/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    assert "host.docker.internal:host-gateway" in container["HostConfig"]["ExtraHosts"]

    verified = target.verify_digest(app)
    assert verified["verified"] is True
    assert verified["readings"] == {"engine": images.v1.digest, "healthz": images.v1.digest}

    status = target.status(app)
    assert status["state"] == "running"
    assert status["digest"] == images.v1.digest
    assert status["matches_pin"] is True
    assert status["health"]["ok"] is True
    assert status["url"] == result["url"]
    assert status["labels"]["theory.digest"] == images.v1.digest

    endpoint = target.endpoint(app)
    assert endpoint.base_url == result["url"]
    assert endpoint.ws_url == result["url"].replace("http", "ws") + "/run"
    assert endpoint.token is None

    stopped = target.stop(app)
    assert stopped["action"] == "stopped"
    assert proc.inspect() is None
    assert target.status(app)["state"] == "missing"
    with pytest.raises(FunctionNotFoundError) as info:
        target.stop(app)
    assert info.value.code == "ERR_FUNCTION_NOT_FOUND"
    with pytest.raises(RegistryMismatchError):
        target.verify_digest(app)  # nothing runs: fails closed


def test_start_twice_is_unchanged_and_a_new_pin_replaces(proc_factory: Any, images: BuiltImages) -> None:
    proc = proc_factory()
    target = LocalTarget()
    first = target.start(proc.app(), images.v1)
    before = _started_at(proc.inspect())

    again = target.start(proc.app(), target.image_to_deploy(proc.app(), None))
    assert again["action"] == "unchanged"
    assert "unchanged" in again["summary"]
    assert _started_at(proc.inspect()) == before
    assert again["url"] == first["url"]

    proc.pin(images.v2)
    app = proc.app()
    replaced = target.start(app, target.image_to_deploy(app, None))
    assert replaced["action"] == "replaced"
    assert images.v1.digest in replaced["reason"]
    assert replaced["digest"] == images.v2.digest
    assert _health(replaced["url"])["variant"] == "v2"
    assert target.verify_digest(app)["readings"]["engine"] == images.v2.digest
    # The old pin no longer verifies.
    with pytest.raises(RegistryMismatchError):
        target.verify_digest(app, str(images.v1))


def test_oci_override_is_verified_and_deployed(proc_factory: Any, images: BuiltImages) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    image = target.image_to_deploy(app, str(images.v2))
    assert image == images.v2
    result = target.start(app, image)
    assert result["digest"] == images.v2.digest
    assert target.verify_digest(app, str(images.v2))["verified"] is True
    with pytest.raises(RegistryMismatchError):
        target.verify_digest(app)  # the pin is v1


def test_unpinned_is_refused(proc_factory: Any) -> None:
    proc = proc_factory(pin=None)
    target, app = LocalTarget(), proc.app()
    with pytest.raises(ImageUnpinnedError) as info:
        target.start(app, target.image_to_deploy(app, None))
    assert info.value.code == "ERR_IMAGE_UNPINNED"
    assert proc.inspect() is None


def test_an_index_pin_is_refused_and_oci_index_resolves(proc_factory: Any, base_image: str) -> None:
    index = ImageRef.parse_digest_ref(base_image)  # the local Python base: a two-platform index
    proc = proc_factory(pin=index, repository=index.repository)
    target, app = LocalTarget(), proc.app()
    with pytest.raises(PlatformMismatchError) as info:
        target.start(app, target.image_to_deploy(app, None))
    assert "is an index" in info.value.message
    assert proc.inspect() is None
    manifest = target.image_to_deploy(app, str(index))  # --oci INDEX: resolved to this platform's manifest
    assert manifest.repository == index.repository and manifest.digest != index.digest


def test_dry_run_touches_nothing(proc_factory: Any, images: BuiltImages) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    plan = target.start(app, images.v1, dry_run=True)
    assert plan["dry_run"] is True
    assert plan["action"] == "started"
    assert plan["secrets"]["pending"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET"]
    assert str(images.v1) in plan["docker"]
    assert proc.inspect() is None
    assert not (proc.state / "secrets").exists()


def test_unmanaged_container_with_the_apps_container_name_is_left_alone(
    proc_factory: Any, images: BuiltImages, docker_cli: str
) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    subprocess.run([docker_cli, "pull", str(images.v1)], capture_output=True, timeout=300, check=True)
    subprocess.run(
        [docker_cli, "run", "-d", "--name", proc.container, str(images.v1)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with pytest.raises(DeployError) as info:
        target.start(app, images.v1)
    assert "did not start" in info.value.message
    with pytest.raises(DeployError):
        target.stop(app)
    assert proc.inspect() is not None


def test_crash_on_boot_is_a_clear_error_with_scrubbed_logs(
    proc_factory: Any, images: BuiltImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_CANARY_SECRET")
    proc = proc_factory(pin=images.crash)
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    target, app = LocalTarget(), proc.app()
    target.sync_secrets(app, check=False, fail_on_missing=True)
    with pytest.raises(DeployError) as info:
        target.start(app, images.crash)
    message = info.value.render()
    assert "stopped before it became healthy" in message
    assert "crashing on purpose" in message
    assert "OPENAI_API_KEY=***" in message
    assert_no_canary(message, canaries)


def test_staging_and_main_run_side_by_side(proc_factory: Any, images: BuiltImages, docker_cli: str) -> None:
    """Both use the bare slug as app name (as on Modal, where environments separate them); on one
    engine the environment is part of the container's name, so main never replaces staging."""
    staging = proc_factory()
    target = LocalTarget()
    main_app = AppContext.for_processor(load_processor(staging.ref, staging.root), "main")
    assert main_app.name == staging.app().name
    try:
        staged = target.start(staging.app(), images.v1)
        mained = target.start(main_app, images.v2)
        assert mained["action"] == "started"  # not "replaced": staging's container is not main's
        assert (staged["container"], mained["container"]) == (f"{staging.name}.staging", f"{staging.name}.main")
        assert _health(staged["url"])["variant"] == "v1" and _health(mained["url"])["variant"] == "v2"
        assert target.verify_digest(staging.app())["readings"]["engine"] == images.v1.digest
        assert target.status(main_app)["digest"] == images.v2.digest

        target.stop(main_app)
        assert target.status(main_app)["state"] == "missing"
        assert target.status(staging.app())["state"] == "running"
    finally:
        subprocess.run([docker_cli, "rm", "-f", container_name(main_app)], capture_output=True, timeout=60)


def test_a_container_of_the_older_name_is_found_and_replaced(
    proc_factory: Any, images: BuiltImages, docker_cli: str
) -> None:
    """Containers were once named after the app alone: after an upgrade, status and verify still read
    that container, and start replaces it (under the new name) rather than running a second one."""
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    subprocess.run([docker_cli, "pull", str(images.v1)], capture_output=True, timeout=300, check=True)
    _run_liar(docker_cli, proc.name, str(images.v1), images.v1.digest, env="staging")
    assert target.status(app)["container"] == proc.name
    assert target.verify_digest(app)["verified"] is True

    # The same container is not this app's in another environment: main finds nothing.
    main_app = AppContext.for_processor(load_processor(proc.ref, proc.root), "main")
    assert target.status(main_app)["state"] == "missing"

    started = target.start(app, images.v1)
    assert started["action"] == "restarted"  # same digest, new run settings (its name)
    assert started["container"] == proc.container
    gone = subprocess.run([docker_cli, "container", "inspect", proc.name], capture_output=True, timeout=30)
    assert gone.returncode != 0
    assert target.verify_digest(app)["verified"] is True


# ------------------------------------------------------------------------------------------------
# Tampering: the two readings are independent, and either one lying fails verification


def _run_liar(docker_cli: str, name: str, image: str, reported: str, env: str | None = None) -> None:
    subprocess.run([docker_cli, "rm", "-f", name], capture_output=True, timeout=60)
    labels = ["--label", f"theory.env={env}"] if env else []
    subprocess.run(
        [
            docker_cli,
            "run",
            "-d",
            "--name",
            name,
            "-e",
            f"IMAGE_DIGEST={reported}",
            "-p",
            "127.0.0.1::8000",
            "--label",
            "theory.managed=true",
            "--label",
            f"theory.digest={reported}",
            *labels,
            image,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = json.loads(
            subprocess.run(
                [docker_cli, "container", "inspect", name], capture_output=True, text=True, timeout=30
            ).stdout
        )[0]
        port = info["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
        try:
            if _health(f"http://127.0.0.1:{port}")["ok"]:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("liar container never became healthy")


def test_a_different_image_claiming_the_pin_fails_verification(
    proc_factory: Any, images: BuiltImages, docker_cli: str
) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    subprocess.run([docker_cli, "pull", str(images.v2)], capture_output=True, timeout=300, check=True)
    _run_liar(docker_cli, proc.container, str(images.v2), images.v1.digest)
    readings = target.read_running_digests(app, images.v1)
    assert readings.readings == {"engine": images.v2.digest, "healthz": images.v1.digest}
    with pytest.raises(RegistryMismatchError) as info:
        target.verify_digest(app)
    assert info.value.code == "ERR_REGISTRY_MISMATCH"
    assert images.v1.digest in info.value.message and images.v2.digest in info.value.message
    assert info.value.details["readings"]["engine"] == images.v2.digest


def test_a_locally_built_image_has_no_engine_reading(proc_factory: Any, images: BuiltImages, docker_cli: str) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    _run_liar(docker_cli, proc.container, images.local_only, images.v1.digest)
    readings = target.read_running_digests(app, images.v1)
    assert readings.readings["engine"] is None
    assert "no registry digest" in readings.notes["engine"]
    with pytest.raises(RegistryMismatchError) as info:
        target.verify_digest(app)
    assert "engine: could not be read" in info.value.message


def test_healthz_lying_alone_fails(proc_factory: Any, images: BuiltImages, docker_cli: str) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    subprocess.run([docker_cli, "pull", str(images.v1)], capture_output=True, timeout=300, check=True)
    _run_liar(docker_cli, proc.container, str(images.v1), images.v2.digest)
    readings = target.read_running_digests(app, images.v1)
    assert readings.readings == {"engine": images.v1.digest, "healthz": images.v2.digest}
    with pytest.raises(RegistryMismatchError) as info:
        target.verify_digest(app)
    assert f"healthz: {images.v2.digest}" in info.value.message


def test_healthz_down_fails_closed(proc_factory: Any, images: BuiltImages, docker_cli: str) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    target.start(app, images.v1)
    subprocess.run([docker_cli, "stop", "-t", "1", proc.container], capture_output=True, timeout=60, check=True)
    readings = target.read_running_digests(app, images.v1)
    assert readings.readings == {"engine": images.v1.digest, "healthz": None}
    with pytest.raises(RegistryMismatchError):
        target.verify_digest(app)
    assert target.status(app)["state"] == "exited"
    # start brings an exited container back at the same digest.
    again = target.start(app, images.v1)
    assert again["action"] == "restarted"
    assert target.verify_digest(app)["verified"] is True


# ------------------------------------------------------------------------------------------------
# Secrets: sync, restart on change only, start → sync order


def _secret_sha(url: str, name: str) -> str | None:
    return _health(url, f"/secret-sha256/{name}")["sha256"]


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_start_then_sync_secrets(proc_factory: Any, images: BuiltImages, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    started = target.start(app, images.v1)
    assert started["secrets"]["pending"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET"]
    assert "sync-secrets" in started["summary"]
    assert _secret_sha(started["url"], "OPENAI_API_KEY") is None
    store = proc.state / "secrets" / "staging"
    assert json.loads((store / "OPENAI_API_KEY").read_text()) == {}  # declared, no value yet

    canaries = make_canaries("OPENAI_API_KEY", "THEORY_CANARY_SECRET")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    before = _started_at(proc.inspect())
    synced = target.sync_secrets(app, check=False, fail_on_missing=True)
    assert synced["created"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET"]
    assert synced["missing"] == ["LITELLM_API_BASE"]
    assert synced["restarted"] is True
    after = proc.inspect()
    assert _started_at(after) != before
    assert after["Config"]["Labels"]["theory.digest"] == images.v1.digest
    url = target.endpoint(app).base_url
    assert url == started["url"]  # the recreated container keeps the app's port
    assert _secret_sha(url, "OPENAI_API_KEY") == _sha(canaries["OPENAI_API_KEY"])
    assert target.verify_digest(app)["verified"] is True
    assert_no_canary(json.dumps(synced), canaries)
    # The values never reached the command line or the labels of the container.
    assert_no_canary(json.dumps(after["Config"]["Labels"]) + json.dumps(after["Args"]), canaries)


def test_sync_then_start_injects_at_once(
    proc_factory: Any, images: BuiltImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    synced = target.sync_secrets(app, check=False, fail_on_missing=True)
    assert synced["created"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    assert synced["restarted"] is False and synced["container"] is None
    started = target.start(app, images.v1)
    assert started["secrets"]["pending"] == []
    assert _secret_sha(started["url"], "LITELLM_API_BASE") == _sha(canaries["LITELLM_API_BASE"])
    # The shell's value is not what the container sees: only the store's.
    monkeypatch.setenv("OPENAI_API_KEY", "shell-only-value-1234")
    assert target.start(app, images.v1)["action"] == "unchanged"


def test_sync_reports_by_name_and_restarts_only_on_change(
    proc_factory: Any, images: BuiltImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_CANARY_SECRET")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    target.sync_secrets(app, check=False, fail_on_missing=False)
    target.start(app, images.v1)
    first = _started_at(proc.inspect())

    unchanged = target.sync_secrets(app, check=False, fail_on_missing=True)
    assert unchanged["unchanged"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET"]
    assert unchanged["created"] == [] and unchanged["updated"] == []
    assert unchanged["restarted"] is False
    assert _started_at(proc.inspect()) == first

    rotated = make_canaries("OPENAI_API_KEY")["OPENAI_API_KEY"]
    monkeypatch.setenv("OPENAI_API_KEY", rotated)
    check = target.sync_secrets(app, check=True, fail_on_missing=False)
    assert check["updated"] == ["OPENAI_API_KEY"] and check["would_restart"] is True
    assert check["restarted"] is False
    assert _started_at(proc.inspect()) == first
    assert json.loads((proc.state / "secrets" / "staging" / "OPENAI_API_KEY").read_text()) == {
        "OPENAI_API_KEY": canaries["OPENAI_API_KEY"]
    }

    updated = target.sync_secrets(app, check=False, fail_on_missing=False)
    assert updated["updated"] == ["OPENAI_API_KEY"]
    assert updated["unchanged"] == ["THEORY_CANARY_SECRET"]
    assert updated["restarted"] is True
    assert _started_at(proc.inspect()) != first
    assert _secret_sha(target.endpoint(app).base_url, "OPENAI_API_KEY") == _sha(rotated)
    assert proc.inspect()["Config"]["Labels"]["theory.digest"] == images.v1.digest

    folder = proc.state / "secrets" / "staging"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in folder.iterdir())
    assert not str(folder.resolve()).startswith(str(proc.root.resolve()))
    assert_no_canary(json.dumps([unchanged, check, updated]), [*canaries.values(), rotated])


def test_fail_on_missing_names_the_secrets_and_writes_nothing(
    proc_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    monkeypatch.setenv("OPENAI_API_KEY", "a-present-value-1")
    with pytest.raises(MissingSecretError) as info:
        target.sync_secrets(app, check=False, fail_on_missing=True)
    assert info.value.code == "ERR_MISSING_SECRET"
    assert "THEORY_CANARY_SECRET" in info.value.message
    assert f"localctl sync-secrets --ref {proc.ref} --env staging" in info.value.render()
    assert not (proc.state / "secrets" / "staging" / "OPENAI_API_KEY").exists()
    # Without --fail-on-missing: what can be synced is, and the rest is reported.
    result = target.sync_secrets(app, check=False, fail_on_missing=False)
    assert result["created"] == ["OPENAI_API_KEY"]
    assert result["missing"] == ["THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    assert result["missing_required"] == ["THEORY_CANARY_SECRET"]


def test_logs_scrub_secret_values(
    proc_factory: Any,
    images: BuiltImages,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc = proc_factory()
    target, app = LocalTarget(), proc.app()
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_CANARY_SECRET")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    target.sync_secrets(app, check=False, fail_on_missing=True)
    for name in canaries:
        monkeypatch.delenv(name)  # logs must scrub values known only from the store
    target.start(app, images.v1)
    result = target.logs(app, follow=False, tail=50)
    text = "\n".join(result["lines"])
    assert "boot: OPENAI_API_KEY=***" in text
    assert "boot: THEORY_CANARY_SECRET=***" in text
    assert_no_canary(json.dumps(result) + capsys.readouterr().out, canaries)
    with pytest.raises(FunctionNotFoundError):
        target.logs(proc_factory().app(), follow=False, tail=10)


# ------------------------------------------------------------------------------------------------
# Registry auth for the pull


def test_pull_from_an_authenticated_registry(
    proc_factory: Any,
    images: BuiltImages,
    auth_registry: AuthRegistry,
    docker_cli: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from theory_deploy.targets.local import registry_auth_env

    repository = f"{auth_registry.host}/theory-test/localproc-auth"
    tag = f"{repository}:{uuid.uuid4().hex[:8]}"
    subprocess.run([docker_cli, "tag", str(images.v1), tag], check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("REGISTRY_USERNAME", auth_registry.user)
    monkeypatch.setenv("REGISTRY_PASSWORD", auth_registry.password)
    with registry_auth_env(auth_registry.host) as env:
        config_dir = Path(env["DOCKER_CONFIG"])
        assert oct(config_dir.stat().st_mode & 0o777) == "0o700"
        assert oct((config_dir / "config.json").stat().st_mode & 0o777) == "0o600"
        pushed = _push(docker_cli, tag, env=env)
    assert not config_dir.exists()
    subprocess.run([docker_cli, "rmi", tag, str(pushed)], capture_output=True, timeout=60)

    proc = proc_factory(pin=pushed, repository=repository)
    target, app = LocalTarget(), proc.app()
    result = target.start(app, target.image_to_deploy(app, None))
    assert result["digest"] == pushed.digest
    assert target.verify_digest(app)["verified"] is True

    target.stop(app)
    monkeypatch.delenv("REGISTRY_PASSWORD")
    with pytest.raises(RegistryAuthError):
        target.start(app, target.image_to_deploy(app, None))


# ------------------------------------------------------------------------------------------------
# Every verb through the real CLI: no canary anywhere


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(proc.stdout)


def test_cli_never_prints_a_secret(proc_factory: Any, images: BuiltImages) -> None:
    proc = proc_factory(env="dev")
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE")
    outputs: list[str] = []

    def ctl(*args: str, ok: bool = True, secrets_env: bool = True) -> subprocess.CompletedProcess[str]:
        result = proc.ctl(*args, extra_env=canaries if secrets_env else None)
        outputs.extend([result.stdout, result.stderr])
        if ok:
            assert result.returncode == 0, f"localctl {' '.join(args)}: {result.stderr}"
        if "--json" in args:
            assert json.loads(result.stdout)["status"] in ("success", "error")  # exactly one JSON object
        return result

    for mode in ([], ["--json"]):
        ctl("name", *mode)
        ctl("start", "--dry-run", *mode)
        ctl("sync-secrets", "--check", *mode)
        ctl("sync-secrets", "--dry-run", *mode)

    start = _json(ctl("start", "--json", secrets_env=False))
    assert start["status"] == "success" and start["action"] == "started"
    assert start["secrets"]["pending"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET"]
    assert "sync-secrets" in ctl("start").stdout  # unchanged, still says what is pending

    missing = ctl("sync-secrets", "--fail-on-missing", "--json", ok=False, secrets_env=False)
    assert missing.returncode == 22 and _json(missing)["error"]["code"] == "ERR_MISSING_SECRET"

    synced = _json(ctl("sync-secrets", "--fail-on-missing", "--json"))
    assert synced["created"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    assert synced["restarted"] is True
    human = ctl("sync-secrets").stdout
    assert "unchanged: OPENAI_API_KEY, THEORY_CANARY_SECRET, LITELLM_API_BASE" in human

    for mode in ([], ["--json"]):
        ctl("status", *mode)
        ctl("verify-digest", *mode)
        ctl("start", *mode)
        ctl("start", "--dry-run", *mode)
        logs = ctl("logs", "--tail", "100", *mode)
        assert "OPENAI_API_KEY=***" in logs.stdout
        ctl("run", "--timeout", "5", *mode, ok=False)
    assert _json(ctl("status", "--json"))["state"] == "running"
    assert _json(ctl("verify-digest", "--json"))["verified"] is True

    follow = subprocess.Popen(
        [str(LOCALCTL), "logs", "--follow", "--ref", str(proc.ref), "--env", proc.env],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=proc.cli_env(canaries),
    )
    time.sleep(3)
    ctl("stop", "--json")
    out, err = follow.communicate(timeout=60)
    outputs.extend([out, err])
    assert "boot: OPENAI_API_KEY=***" in out

    gone = ctl("stop", "--json", ok=False)
    assert gone.returncode == 30 and _json(gone)["error"]["code"] == "ERR_FUNCTION_NOT_FOUND"
    ctl("status", "--json")
    ctl("logs", ok=False)
    ctl("verify-digest", "--json", ok=False)

    text = "\n".join(outputs)
    assert_no_canary(text, canaries)
