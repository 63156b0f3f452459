"""The local target without an engine: platform, docker-unavailable errors, registry auth config,
run arguments without secret values, sync-secrets when no engine answers, and verify-digest failing
closed, through the real `localctl` CLI against a docker CLI stand-in (tests/fake_docker.py) that
answers `inspect` as the engine would."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fake_docker import FakeDocker
from tests.helpers import assert_no_canary, make_canaries
from theory_deploy.docker import Docker
from theory_deploy.errors import DockerUnavailableError, RegistryMismatchError
from theory_deploy.refs import ImageRef, ProcessorRef
from theory_deploy.registry_file import load_processor
from theory_deploy.targets import local
from theory_deploy.targets.base import AppContext, DigestReadings, Target
from theory_deploy.targets.local import LocalTarget, registry_auth_env

DIGEST = "sha256:" + "ab" * 32
YAML = """\
ref: unit/proc@1
image:
  repository: 127.0.0.1:5000/unit/proc
  platforms:
    amd64: 127.0.0.1:5000/unit/proc@{digest}
    arm64: 127.0.0.1:5000/unit/proc@{digest}
secrets:
  required: [OPENAI_API_KEY]
  optional: [LITELLM_API_BASE]
api:
  auth_secret: THEORY_AUTH_SECRET
inputs:
  type: object
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppContext:
    folder = tmp_path / "repo" / "processors" / "unit" / "proc"
    folder.mkdir(parents=True)
    (folder / "registry.yaml").write_text(YAML.format(digest=DIGEST))
    monkeypatch.setenv("THEORY_STATE_DIR", str(tmp_path / "state"))
    for name in (
        "OPENAI_API_KEY",
        "LITELLM_API_BASE",
        "THEORY_AUTH_SECRET",
        "REGISTRY_USERNAME",
        "REGISTRY_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    processor = load_processor(ProcessorRef.parse("unit/proc@1"), tmp_path / "repo")
    return AppContext.for_processor(processor, "staging")


@pytest.mark.parametrize(("machine", "expected"), [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")])
def test_platform_is_the_hosts(monkeypatch: pytest.MonkeyPatch, machine: str, expected: str) -> None:
    monkeypatch.setattr(local._platform, "machine", lambda: machine)
    assert LocalTarget().platform == expected


def test_missing_client_is_err_docker(app: AppContext) -> None:
    target = LocalTarget(Docker("/nonexistent/docker"))
    pin = ImageRef.parse_digest_ref(f"127.0.0.1:5000/unit/proc@sha256:{'a' * 64}")
    calls = (target.status, target.stop, lambda app: target.read_running_digests(app, pin), target.endpoint)
    for call in calls:
        with pytest.raises(DockerUnavailableError) as info:
            call(app)
        assert info.value.code == "ERR_DOCKER"


def test_unreachable_daemon_is_err_docker(app: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    client = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else None
    if client is None:
        pytest.skip("no docker client installed")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerUnavailableError) as info:
        LocalTarget(Docker(client)).status(app)
    assert "not reachable" in info.value.message


def test_sync_without_an_engine_still_writes_the_store(
    app: AppContext, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_AUTH_SECRET")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    result = LocalTarget(Docker("/nonexistent/docker")).sync_secrets(app, check=False, fail_on_missing=True)
    # api.auth_secret counts as required.
    assert result["created"] == ["OPENAI_API_KEY", "THEORY_AUTH_SECRET"]
    assert result["missing"] == ["LITELLM_API_BASE"]
    assert "values apply at the next start" in result["summary"]
    assert (tmp_path / "state" / "secrets" / "staging" / "OPENAI_API_KEY").is_file()
    assert_no_canary(json.dumps(result), canaries)


def test_run_args_carry_names_not_values(app: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_AUTH_SECRET")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    target = LocalTarget(Docker("/nonexistent/docker"))
    target.sync_secrets(app, check=False, fail_on_missing=True)
    image = ImageRef.parse_digest_ref(f"127.0.0.1:5000/unit/proc@{DIGEST}")
    plan = target._secret_plan(app, target._store(app))
    args, _config = target._run_args(app, image, plan)
    assert ["--env", "OPENAI_API_KEY"] == args[args.index("OPENAI_API_KEY") - 1 : args.index("OPENAI_API_KEY") + 1]
    assert f"IMAGE_DIGEST={DIGEST}" in args
    assert "127.0.0.1::8000" in args
    assert args[-1] == str(image)
    assert_no_canary(" ".join(args), canaries)
    # The endpoint's token comes from the store (api.auth_secret).
    plan_dict = target.start(app, image, dry_run=True)
    assert plan_dict["secrets"]["injected"] == ["OPENAI_API_KEY", "THEORY_AUTH_SECRET"]
    assert_no_canary(json.dumps(plan_dict), canaries)


def test_registry_auth_env_is_private_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    with registry_auth_env("127.0.0.1:5001") as env:
        assert "DOCKER_CONFIG" not in env  # no credentials: the user's own docker config

    password = make_canaries("REGISTRY_PASSWORD")["REGISTRY_PASSWORD"]
    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", password)
    with registry_auth_env("127.0.0.1:5001") as env:
        folder = Path(env["DOCKER_CONFIG"])
        config = folder / "config.json"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert list(json.loads(config.read_text())["auths"]) == ["127.0.0.1:5001"]
    assert not folder.exists()


def test_pull_never_puts_the_password_on_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The credentials reach `docker pull` in a private DOCKER_CONFIG (as the real client reads them),
    never as an argument; the folder is gone once the pull is done."""
    password = make_canaries("REGISTRY_PASSWORD")["REGISTRY_PASSWORD"]
    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", password)
    client = FakeDocker(tmp_path / "bin")
    image = f"127.0.0.1:5001/unit/proc@{DIGEST}"
    LocalTarget(Docker(str(client.path)))._pull(ImageRef.parse_digest_ref(image))
    (pull,) = client.pulls()
    assert pull["args"] == ["pull", image]
    assert list(pull["config"]["auths"]) == ["127.0.0.1:5001"]  # for that registry only
    auth = base64.b64decode(pull["config"]["auths"]["127.0.0.1:5001"]["auth"]).decode()
    assert auth == f"bot:{password}"  # the credentials did reach the client, in its config file
    assert_no_canary(" ".join(client.calls()), [password])  # and never as an argument
    assert not Path(pull["docker_config"]).exists()  # the private config is gone after the pull


# ---------------------------------------------------------------------------------------------------
# verify-digest fails closed: with no reading of what runs, it never says "verified"
# ---------------------------------------------------------------------------------------------------

LOCALCTL = Path(sys.executable).with_name("localctl")
PINNED = f"127.0.0.1:5000/unit/proc@{DIGEST}"
IMAGE_ID = "sha256:" + "1d" * 32
APP = "unit-proc-v1"  # the staging app name (the slug)
CONTAINER = f"{APP}.staging"  # its container on the local engine (local.container_name)


class Healthz:
    """What the processor's /healthz answers (`body`), on a loopback port the container publishes."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"ok": True}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = json.dumps(outer.body).encode()
                self.send_response(200 if self.path == "/healthz" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def healthz() -> Iterator[Healthz]:
    server = Healthz()
    yield server
    server.close()


def _container(state: str = "running", port: int | None = None) -> dict[str, Any]:
    """`docker container inspect` of the app's container, as the engine prints it (the fields read)."""
    ports = {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]} if port else {}
    return {
        "Name": "/" + CONTAINER,
        "Id": "c0ffee" * 10 + "abcd",
        "Image": IMAGE_ID,
        "State": {"Status": state},
        "Config": {"Labels": {"theory.managed": "true", "theory.digest": DIGEST, "theory.image": PINNED}},
        "NetworkSettings": {"Ports": ports},
    }


def _verify(app: AppContext, docker: FakeDocker, *extra: str) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER", "THEORY_DOCKER")}
    env.update(
        THEORY_DOCKER=str(docker.path),
        THEORY_REPO_ROOT=str(app.processor.repo_root),
        THEORY_STATE_DIR=os.environ["THEORY_STATE_DIR"],
    )
    proc = subprocess.run(
        [str(LOCALCTL), "verify-digest", "--ref", "unit/proc@1", "--env", "staging", "--json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize(
    "world",
    [
        "no container",  # nothing runs under the app's name
        "running, image gone, no port",  # the engine lost the image; nothing published to ask
        "exited, image built locally",  # an image with no registry digest; nothing serving
        "running, healthz without a digest, image built locally",
    ],
)
def test_verify_with_no_reading_at_all_fails_closed(
    app: AppContext, tmp_path: Path, healthz: Healthz, world: str
) -> None:
    docker = FakeDocker(tmp_path / "bin")
    if world == "running, image gone, no port":
        docker.containers[CONTAINER] = _container("running")
    elif world == "exited, image built locally":
        docker.containers[CONTAINER] = _container("exited", healthz.port)
        docker.images[IMAGE_ID] = {"Id": IMAGE_ID, "RepoDigests": []}
    elif world == "running, healthz without a digest, image built locally":
        docker.containers[CONTAINER] = _container("running", healthz.port)
        docker.images[IMAGE_ID] = {"Id": IMAGE_ID, "RepoDigests": [f"elsewhere.io/other/proc@{DIGEST}"]}
        healthz.body = {"ok": True, "digest": None}
    docker.save()
    code, out, err = _verify(app, docker)
    assert code == RegistryMismatchError.exit_code, (out, err)
    assert out["status"] == "error" and out["error"]["code"] == "ERR_REGISTRY_MISMATCH"
    details = out["error"]["details"]
    assert details["verified"] is False
    assert details["readings"] == {"engine": None, "healthz": None}
    message = out["error"]["message"]
    assert "engine: could not be read" in message and "healthz: could not be read" in message
    assert "verified:" not in err
    assert any(call.startswith("container inspect -- " + CONTAINER) for call in docker.calls())


def test_verify_passes_only_when_every_reading_is_the_pin(app: AppContext, tmp_path: Path, healthz: Healthz) -> None:
    """The same stand-in with both readings present: verified; one of them off, or one missing: not."""
    docker = FakeDocker(tmp_path / "bin")
    docker.containers[CONTAINER] = _container("running", healthz.port)
    docker.images[IMAGE_ID] = {"Id": IMAGE_ID, "RepoDigests": [PINNED]}
    docker.save()
    healthz.body = {"ok": True, "digest": DIGEST}
    code, out, err = _verify(app, docker)
    assert code == 0, (out, err)
    assert out["verified"] is True and out["readings"] == {"engine": DIGEST, "healthz": DIGEST}

    other = "sha256:" + "cd" * 32
    healthz.body = {"ok": True, "digest": other}  # the processor reports another image
    code, out, _ = _verify(app, docker)
    assert code == 21 and out["error"]["details"]["readings"] == {"engine": DIGEST, "healthz": other}

    healthz.body = {"ok": True}  # one reading missing: still not verified (both must agree)
    code, out, _ = _verify(app, docker)
    assert code == 21 and out["error"]["details"]["readings"] == {"engine": DIGEST, "healthz": None}
    assert "healthz: could not be read" in out["error"]["message"]


class _Blind(Target):
    """A target that can read nothing about what runs (no reading source at all). No real target
    returns an empty set of readings, but verify-digest, written once for every target, must fail
    closed for any: this is the smallest target that reaches that branch."""

    kind = "blind"
    platform = "amd64"  # type: ignore[assignment]

    def read_running_digests(self, app: AppContext, expected: ImageRef) -> DigestReadings:
        return DigestReadings()

    def start(self, *a: object, **k: object) -> dict[str, Any]:
        raise NotImplementedError

    stop = status = logs = sync_secrets = endpoint = list_apps = stop_listed = start  # type: ignore[assignment]


def test_verify_with_no_reading_source_at_all_fails_closed(app: AppContext) -> None:
    with pytest.raises(RegistryMismatchError, match="nothing could be read about what runs; failing closed"):
        _Blind().verify_digest(app)
    with pytest.raises(RegistryMismatchError):
        _Blind().verify_digest(app, PINNED)
