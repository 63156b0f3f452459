"""The Modal target against the Modal control-plane stand-in, with the real `modal` SDK.

Most tests drive the real CLI (`modalctl`) in a subprocess pointed at the stand-in
(`ModalStandIn.env_vars()`), with MODAL_ENVIRONMENT=main set as a trap: nothing may land there.
Each defect a deploy tool of this kind is known to have had has a test here that would catch it:

* 1, 2 (verify always failed; the digest was only self-reported):
  test_verify_passes_when_right_and_fails_when_wrong, test_verify_fails_closed
* 3 (rotated secrets never reached Modal): test_rotated_value_reaches_modal
* 4 (wrong created/updated report, a dead failure branch): test_sync_report_check_and_fail_on_missing
* 5 (secrets landed in the active environment): test_secrets_land_in_the_target_environment_only
* 6 (deploying binds secrets that sync creates later): test_start_then_sync_with_a_brand_new_secret
* 8 (status and run crashed): test_status_logs_stop_lifecycle, and test_modal_target_docker.py for run
* 9 (lookups fell back to `main`): test_every_call_names_the_target_environment
* 20 (REGISTRY_AUTH dropped): test_start_records_everything_then_is_unchanged, test_registry_auth_*

The healthz reading is served by a small local HTTP server that answers, for a function's image, the
IMAGE_DIGEST its image environment carries (what the processor would report). The docker tests
(test_modal_target_docker.py) run the real processor in a real container instead.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from modal_standin import ModalStandIn
from modal_standin.images import push_image, tiny_image
from modal_standin.sample_app import load_app

from tests.helpers import AuthRegistry, assert_no_canary, make_canaries
from theory_deploy.refs import ImageRef, ProcessorRef
from theory_deploy.registry_file import load_processor
from theory_deploy.targets import modal_app
from theory_deploy.targets.base import AppContext
from theory_deploy.targets.modal import ModalTarget

# Every test starts the Modal stand-in and runs the real SDK (mostly `modalctl` subprocesses).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODALCTL = Path(sys.executable).with_name("modalctl")
SECRET_NAMES = ("OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE", "THEORY_AUTH")
# What the tests deploy: two tiny linux/amd64 images whose digests follow from their bytes (so they
# are constants), pushed to the anonymous loopback registry by the `images` fixture: the Modal
# stand-in pulls what a deploy references, as Modal does, so a pin must exist to deploy.
TINY_A, TINY_B = tiny_image("modal-target-a"), tiny_image("modal-target-b")
D_A, D_B = TINY_A.digest, TINY_B.digest
IMAGE_HOST = os.environ.get("THEORY_REGISTRY") or "127.0.0.1:5000"
IMAGE_PATH = "theory-test/modalproc"
IMAGE_REPO = f"{IMAGE_HOST}/{IMAGE_PATH}"
FUNCTION = modal_app.FUNCTION_NAME  # the one function the deploy module defines

REGISTRY_YAML = """\
# a test processor for tests/test_modal_target*.py
ref: {ref}
build:
  port: 8000
image:
  repository: {repository}
  platforms:
    amd64: {amd64}  # linux/amd64 manifest: what Modal runs
    arm64: null
runtime:
  cpu: {cpu}
  memory_gb: 0.5
  timeout_s: 120
  gpu: {gpu}
secrets:
  required: [OPENAI_API_KEY, THEORY_CANARY_SECRET]
  optional: [LITELLM_API_BASE]
api:
  auth_secret: {auth}
inputs:
  type: object
"""


# ------------------------------------------------------------------------------------------------
# The healthz stand-in: what a processor built from the function's image would report


class HealthServer:
    """GET /<env>/<app>/<image_id>/healthz → {"ok": true, "digest": IMAGE_DIGEST of that image}."""

    def __init__(self) -> None:
        self.standin: ModalStandIn | None = None
        # Digests the next /healthz requests answer before the live image's own, one each: a container
        # of an earlier deploy still serving under Modal's rolling strategy.
        self.stale_answers: list[str] = []
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                body: dict[str, Any] | None = None
                if len(parts) == 4 and parts[3] == "healthz" and outer.standin is not None:
                    outer.requests += 1
                    try:
                        spec = outer.standin.image_spec(parts[2])
                        body = {"ok": True, "digest": spec.env.get("IMAGE_DIGEST")}
                    except Exception:  # unknown image id
                        body = None
                    if body and outer.stale_answers:
                        body = {"ok": True, "digest": outer.stale_answers.pop(0)}
                data = json.dumps(body or {"ok": False}).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url_for(self, app_name: str, env: str, *, function_name: str, function: Any) -> str:
        if function is None or not function.image_id:
            return f"http://127.0.0.1:{self.port}/pending"
        return f"http://127.0.0.1:{self.port}/{env}/{app_name}/{function.image_id}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------
# A world: one stand-in, one temporary repository with one test processor, the CLI pointed at both


@dataclass
class Run:
    code: int
    out: dict[str, Any]
    stdout: str
    stderr: str
    seconds: float


@dataclass
class World:
    cp: ModalStandIn
    root: Path
    ref: ProcessorRef
    env: str
    canaries: dict[str, str]
    identity: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.root / "processors" / self.ref.namespace / self.ref.name / "registry.yaml"

    def write(
        self,
        *,
        amd64: str | None,
        repository: str = IMAGE_REPO,
        cpu: float = 0.5,
        gpu: str | None = None,
        auth: str | None = None,
    ) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(
            REGISTRY_YAML.format(
                ref=self.ref,
                repository=repository,
                amd64=amd64 or "null",
                cpu=cpu,
                gpu=gpu or "null",
                auth=auth or "null",
            )
        )

    def app(self) -> AppContext:
        old = {k: os.environ.get(k) for k in self.identity}
        os.environ.update(self.identity)
        try:
            return AppContext.for_processor(load_processor(self.ref, self.root), self.env)  # type: ignore[arg-type]
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @property
    def name(self) -> str:
        return self.app().name

    def cli_env(self, extra: dict[str, str] | None = None, *, modal_env: bool = True) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MODAL_")
            and k not in (*SECRET_NAMES, "REGISTRY_USERNAME", "REGISTRY_PASSWORD", "THEORY_AUTH_TOKEN")
        }
        if modal_env:
            env.update(self.cp.env_vars())
            env["MODAL_ENVIRONMENT"] = "main"  # a trap: every call must name its environment itself
        env.update(THEORY_REPO_ROOT=str(self.root), THEORY_MODAL_TIMEOUT_S="30", **self.identity)
        env.update(extra or {})
        return env

    def ctl(
        self,
        *args: str,
        extra: dict[str, str] | None = None,
        modal_env: bool = True,
        env_name: str | None = None,
        timeout: float = 180,
        json_mode: bool = True,
    ) -> Run:
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                str(MODALCTL),
                *args,
                "--ref",
                str(self.ref),
                "--env",
                env_name or self.env,
                *(["--json"] if json_mode else []),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.cli_env(extra, modal_env=modal_env),
        )
        self.outputs += [proc.stdout, proc.stderr]
        if not json_mode:
            return Run(proc.returncode, {}, proc.stdout, proc.stderr, time.monotonic() - t0)
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"stdout is not one JSON object: {proc.stdout!r}\nstderr: {proc.stderr}") from None
        return Run(proc.returncode, out, proc.stdout, proc.stderr, time.monotonic() - t0)

    def ok(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        run = self.ctl(*args, **kwargs)
        assert run.code == 0, f"{args}: exit {run.code}: {run.stdout}\n{run.stderr}"
        assert run.out["status"] == "success"
        return run.out

    def secrets_env(self, **values: str) -> dict[str, str]:
        base = {"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": self.canaries["REGISTRY_PASSWORD"]}
        return {**base, **values}

    def calls_with_env(self) -> list[Any]:
        return [c for c in self.cp.state.calls if c.environment_name is not None]


def _make_world(tmp_path: Path, cp: ModalStandIn, env: str, canaries: dict[str, str]) -> World:
    ref = ProcessorRef("mtest", f"p{uuid.uuid4().hex[:8]}", 1)
    identity = {"GIT_BRANCH": "feat/modal_target", "GIT_USER": "Test.User"} if env == "dev" else {}
    return World(cp, tmp_path / "repo", ref, env, canaries, identity)


@pytest.fixture(scope="session")
def images(registry: str) -> tuple[str, str]:
    """D_A and D_B, pushed to the anonymous loopback registry as IMAGE_REPO (idempotent)."""
    assert registry == IMAGE_HOST, (
        f"the registry fixture is {registry}, IMAGE_REPO names {IMAGE_HOST}: export THEORY_REGISTRY"
    )
    for image in (TINY_A, TINY_B):
        push_image(registry, IMAGE_PATH, image)
    return D_A, D_B


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.close()


@pytest.fixture
def canaries() -> dict[str, str]:
    return make_canaries(*SECRET_NAMES, "REGISTRY_PASSWORD", "MODAL_TOKEN_SECRET")


@pytest.fixture
def cp(health: HealthServer, canaries: dict[str, str]) -> Iterator[ModalStandIn]:
    with ModalStandIn(web_url_for=health.url_for, token_secret=canaries["MODAL_TOKEN_SECRET"]) as standin:
        health.standin = standin
        yield standin


@pytest.fixture
def world(tmp_path: Path, cp: ModalStandIn, canaries: dict[str, str], images: tuple[str, str]) -> Iterator[World]:
    w = _make_world(tmp_path, cp, "staging", canaries)
    w.write(amd64=f"{IMAGE_REPO}@{D_A}")
    yield w
    for text in w.outputs:
        assert_no_canary(text, canaries)


@pytest.fixture
def dev_world(tmp_path: Path, cp: ModalStandIn, canaries: dict[str, str], images: tuple[str, str]) -> Iterator[World]:
    w = _make_world(tmp_path, cp, "dev", canaries)
    w.write(amd64=f"{IMAGE_REPO}@{D_A}")
    yield w
    for text in w.outputs:
        assert_no_canary(text, canaries)


def sdk_in_process(cp: ModalStandIn):
    """Point this process's SDK at the stand-in (for tampering by hand)."""
    return cp.activate()


# ------------------------------------------------------------------------------------------------
# The generated module


def test_dry_run_calls_nothing_and_shows_the_module(world: World) -> None:
    out = world.ok("start", "--dry-run", modal_env=False)  # no token, no server: no call is made
    assert world.cp.state.calls == []
    assert out["action"] == "plan" and out["dry_run"] is True
    assert out["plan"]["secrets"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    assert out["plan"]["registry_secret"] == "REGISTRY_AUTH"
    assert out["image"] == f"{IMAGE_REPO}@{D_A}"
    tree = ast.parse(out["module"])
    top_imports = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_from = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert top_imports == {"sys", "modal"} and not top_from  # Modal imports it inside the image


class _StubModal:
    """Just enough of `modal` to execute the generated module and record how it calls the SDK."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        stub = self

        class Image:
            @staticmethod
            def from_registry(ref: str, secret: Any = None, **kw: Any) -> Image:
                stub.calls.append(("from_registry", (ref, secret)))
                return Image()

            def env(self, values: dict[str, str]) -> Image:
                stub.calls.append(("env", values))
                return self

        class Secret:
            @staticmethod
            def from_name(name: str, **kw: Any) -> tuple[str, Any]:
                stub.calls.append(("secret", (name, kw)))
                return (name, kw.get("environment_name"))

        class App:
            def __init__(self, name: str, tags: dict[str, str] | None = None) -> None:
                stub.calls.append(("app", (name, tags)))

            def function(self, **kw: Any) -> Any:
                stub.calls.append(("function", kw))
                return lambda f: f

        self.Image, self.Secret, self.App = Image, Secret, App

    def concurrent(self, *, max_inputs: int) -> Any:
        self.calls.append(("concurrent", max_inputs))
        return lambda f: f

    def asgi_app(self) -> Any:
        self.calls.append(("asgi_app", None))
        return lambda f: f


def test_generated_module_names_its_environment_everywhere_and_serves_the_processor(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = world.app()
    target = ModalTarget()
    plan = target.plan(app, ImageRef.parse_digest_ref(f"{IMAGE_REPO}@{D_A}"))
    text = modal_app.render_module(plan)
    stub = _StubModal()
    monkeypatch.setitem(sys.modules, "modal", stub)
    namespace: dict[str, Any] = {"__name__": "theory_modal_app"}
    exec(compile(text, "theory_modal_app.py", "exec"), namespace)
    secrets_seen = [args for kind, args in stub.calls if kind == "secret"]
    assert [name for name, _kw in secrets_seen] == [
        "REGISTRY_AUTH",
        "OPENAI_API_KEY",
        "THEORY_CANARY_SECRET",
        "LITELLM_API_BASE",
    ]
    assert all(kw == {"environment_name": "staging"} for _name, kw in secrets_seen)
    (function_kw,) = [kw for kind, kw in stub.calls if kind == "function"]
    assert (function_kw["cpu"], function_kw["memory"], function_kw["timeout"], function_kw["gpu"]) == (
        0.5,
        512,
        120,
        None,
    )
    assert ("concurrent", 100) in stub.calls and ("asgi_app", None) in stub.calls
    assert ("from_registry", (f"{IMAGE_REPO}@{D_A}", ("REGISTRY_AUTH", "staging"))) in stub.calls
    (env_layer,) = [v for kind, v in stub.calls if kind == "env"]
    assert env_layer == {
        "IMAGE_DIGEST": D_A,
        "THEORY_REF": str(world.ref),
        "THEORY_APP": app.name,
        "THEORY_ENV": "staging",
    }

    # What the container runs: the processor's own `app:app` from its WORKDIR (here the real sample).
    namespace["PROCESSOR_DIR"] = str(REPO / "processors" / "llm" / "litellm")
    monkeypatch.setenv("IMAGE_DIGEST", D_A)
    for mod in ("app", "handler"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        from fastapi.testclient import TestClient

        asgi = namespace["web"]()
        body = TestClient(asgi).get("/healthz").json()
    finally:
        for mod in ("app", "handler"):
            sys.modules.pop(mod, None)
    assert body["ok"] is True and body["digest"] == D_A


def test_tags_round_trip_and_fit_modal() -> None:
    labels = {
        "theory.digest": D_A,
        "theory.branch": "feat/complex_branch",
        "theory.user": "user.name",
        "theory.ref": "llm/litellm@1",
        "theory.image": "127.0.0.1:5000/" + "x" * 90,
    }
    tags = modal_app.encode_tags(labels)
    assert all(len(k) <= 63 and len(v) <= 63 for k, v in tags.items())
    assert {"theory.digest.0", "theory.digest.1", "theory.image.0", "theory.image.1"} <= set(tags)
    assert modal_app.decode_tags(tags) == labels
    assert modal_app.decode_tags({"theory.digest.1": "x"}) == {}  # a gap is never guessed at


# ------------------------------------------------------------------------------------------------
# start


def test_start_records_everything_then_is_unchanged(dev_world: World) -> None:
    w = dev_world
    out = w.ok("start", extra=w.secrets_env())
    name = w.name
    assert name.startswith("feat-modal-target-test-user-mtest-")
    assert out["action"] == "deployed" and out["version"] == 1 and out["digest"] == D_A
    assert out["secrets"]["registry_auth"] == "created"
    assert out["secrets"]["declared"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    rec = w.cp.state.deployed_app("dev", name)
    assert rec is not None and rec.version == 1
    (deploy,) = rec.deploys
    assert deploy.deployment_tag == "sha256-" + D_A[7:47] and deploy.strategy == "rolling"
    labels = modal_app.decode_tags(rec.tags)
    assert labels["theory.digest"] == D_A and labels["theory.image"] == IMAGE_REPO
    assert labels["theory.branch"] == "feat/modal_target" and labels["theory.user"] == "Test.User"
    assert labels["theory.ref"] == str(w.ref) and labels["theory.env"] == "dev" and labels["theory.managed"] == "true"
    fn = rec.functions["web"]
    assert (fn.cpu, fn.memory_mb, fn.timeout_secs, fn.gpu) == (0.5, 512, 120, None)
    assert fn.max_concurrent_inputs == 100 and fn.webhook_type == "ASGI_APP"
    assert fn.secret_names == ["dev/OPENAI_API_KEY", "dev/THEORY_CANARY_SECRET", "dev/LITELLM_API_BASE"]
    image = deploy.images["web"]
    assert image.registry_ref == f"{IMAGE_REPO}@{D_A}"
    assert (image.registry_secret_name, image.registry_secret_environment) == ("REGISTRY_AUTH", "dev")
    assert image.env == {
        "IMAGE_DIGEST": D_A,
        "THEORY_REF": str(w.ref),
        "THEORY_APP": name,
        "THEORY_ENV": "dev",
    }
    # REGISTRY_AUTH holds exactly the two keys private pulls need; placeholders are empty, never guessed.
    assert w.cp.state.secret_values("dev", "REGISTRY_AUTH") == {
        "REGISTRY_USERNAME": "bot",
        "REGISTRY_PASSWORD": w.canaries["REGISTRY_PASSWORD"],
    }
    assert w.cp.state.secret_values("dev", "OPENAI_API_KEY") == {"OPENAI_API_KEY": ""}
    assert out["url"] == f"http://127.0.0.1:{w.cp.web_url_for.__self__.port}/dev/{name}/{fn.image_id}"  # type: ignore[attr-defined]
    assert out["ws_url"].startswith("ws://127.0.0.1:") and out["ws_url"].endswith("/run")

    publishes = len(w.cp.state.calls_to("AppPublish"))
    again = w.ok("start", extra=w.secrets_env(OPENAI_API_KEY=w.canaries["OPENAI_API_KEY"]))
    assert again["action"] == "unchanged" and again["version"] == 1
    assert len(w.cp.state.calls_to("AppPublish")) == publishes  # nothing deployed
    assert w.cp.state.secret_values("dev", "OPENAI_API_KEY") == {"OPENAI_API_KEY": ""}  # start never sends values

    w.write(amd64=f"{IMAGE_REPO}@{D_A}", cpu=1.5)  # same digest, changed spec
    changed = w.ok("start", extra=w.secrets_env())
    assert changed["action"] == "redeployed" and "spec" in changed["reason"] and changed["version"] == 2
    assert w.cp.state.deployed_app("dev", name).functions["web"].cpu == 1.5


def test_every_call_names_the_target_environment(world: World) -> None:
    """Lookups never fall back to `main`: with MODAL_ENVIRONMENT=main set, nothing may reach `main`, no call may be unnamed."""
    env = world.secrets_env(
        OPENAI_API_KEY=world.canaries["OPENAI_API_KEY"],
        THEORY_CANARY_SECRET=world.canaries["THEORY_CANARY_SECRET"],
    )
    world.ok("start", extra=env)
    world.ok("sync-secrets", extra=env)
    world.ok("status", extra=env)
    world.ok("verify-digest", extra=env)
    world.ok("logs", extra=env)
    world.ok("stop", extra=env)
    seen = world.calls_with_env()
    assert seen and {c.environment_name for c in seen} == {"staging"}
    # Only lookups of things that did not exist yet failed (NOT_FOUND); nothing was refused for a
    # missing or empty environment name (INVALID_ARGUMENT).
    assert {c.status for c in world.cp.state.failed_calls()} <= {"NOT_FOUND"}
    assert all("not found in environment 'staging'" in c.error for c in world.cp.state.failed_calls())
    st = world.cp.state
    assert st.apps_in("main") == [] and st.apps_in("dev") == []
    assert st.secret_names("main") == [] and st.secret_names("dev") == []


def test_registry_auth_missing_without_credentials_fails_before_deploying(world: World) -> None:
    run = world.ctl("start")
    assert run.code == 22 and run.out["error"]["code"] == "ERR_MISSING_SECRET"
    message = run.out["error"]["message"]
    assert "REGISTRY_AUTH does not exist in the Modal environment staging" in message
    assert "REGISTRY_USERNAME and REGISTRY_PASSWORD" in message
    assert world.cp.state.calls_to("AppPublish") == [] and world.cp.state.secret_names("staging") == []


def test_registry_auth_with_wrong_keys(world: World) -> None:
    world.cp.state.put_secret("staging", "REGISTRY_AUTH", {"TOKEN": "x"})
    run = world.ctl("start")
    assert (
        run.code == 22
        and "REGISTRY_AUTH lacks the keys REGISTRY_USERNAME and REGISTRY_PASSWORD" in run.out["error"]["message"]
    )
    fixed = world.ok("start", extra=world.secrets_env())  # with the values exported, start adds the keys
    assert fixed["secrets"]["registry_auth"] == "updated" and fixed["action"] == "deployed"


def test_existing_secrets_are_never_overwritten_by_start(world: World) -> None:
    world.cp.state.put_secret("staging", "OPENAI_API_KEY", {"OPENAI_API_KEY": "set-on-the-dashboard"})
    out = world.ok("start", extra=world.secrets_env(OPENAI_API_KEY=world.canaries["OPENAI_API_KEY"]))
    assert "OPENAI_API_KEY" not in out["secrets"]["declared"]
    assert world.cp.state.secret_values("staging", "OPENAI_API_KEY") == {"OPENAI_API_KEY": "set-on-the-dashboard"}


def test_a_bound_secret_without_its_key_is_reported(world: World) -> None:
    world.cp.state.put_secret("staging", "THEORY_CANARY_SECRET", {"WRONG_NAME": "x"})
    out = world.ok("start", extra=world.secrets_env())
    assert out["secrets"]["lacking_key"] == ["THEORY_CANARY_SECRET"]
    assert "THEORY_CANARY_SECRET" not in out["secrets"]["declared"]
    assert "warning: secret(s) THEORY_CANARY_SECRET exist without a key" in out["summary"]
    synced = world.ok("sync-secrets", extra={"THEORY_CANARY_SECRET": world.canaries["THEORY_CANARY_SECRET"]})
    assert synced["updated"] == ["THEORY_CANARY_SECRET"]
    assert world.cp.state.secret_values("staging", "THEORY_CANARY_SECRET") == {
        "WRONG_NAME": "x",
        "THEORY_CANARY_SECRET": world.canaries["THEORY_CANARY_SECRET"],
    }


def test_auth_secret_placeholder_locks_the_endpoint(world: World) -> None:
    world.write(amd64=f"{IMAGE_REPO}@{D_A}", auth="THEORY_AUTH")
    out = world.ok("start", extra=world.secrets_env())
    assert "THEORY_AUTH" in out["secrets"]["declared"]
    token = world.cp.state.secret_values("staging", "THEORY_AUTH")["THEORY_AUTH"]
    assert len(token) >= 32  # a random token nobody knows: never an open endpoint
    for text in world.outputs:
        assert token not in text


def test_image_pull_failure_is_an_image_pull_error(world: World) -> None:
    """Modal pulls the pin when it builds the image: a digest the registry lacks fails the deploy."""
    world.write(amd64=f"{IMAGE_REPO}@sha256:{'0' * 64}")
    run = world.ctl("start", extra=world.secrets_env())
    assert run.code == 13 and run.out["error"]["code"] == "ERR_IMAGE_PULL"
    assert "manifest unknown" in run.out["error"]["message"]
    assert world.cp.state.deployed_app("staging", world.name) is None
    assert [p.ok for p in world.cp.state.pulls] == [False]


def test_registry_auth_is_what_pulls_a_private_pin(world: World, auth_registry: AuthRegistry) -> None:
    """REGISTRY_AUTH carries the pull credentials: a stale token fails the pull (ERR_IMAGE_PULL); the
    next start with working credentials exported replaces it (a CI job's token expires with the job,
    so a secret that holds both keys is not trusted to still work), and the private pin deploys,
    pulled with them. A start without exported credentials uses the secret as it is."""
    credentials = (auth_registry.user, auth_registry.password)
    push_image(auth_registry.host, IMAGE_PATH, TINY_A, credentials=credentials)
    push_image(auth_registry.host, IMAGE_PATH, TINY_B, credentials=credentials)
    repo = f"{auth_registry.host}/{IMAGE_PATH}"
    world.write(amd64=f"{repo}@{D_A}", repository=repo)
    stale = world.secrets_env(REGISTRY_USERNAME=auth_registry.user)  # the canary password: refused
    run = world.ctl("start", extra=stale)
    assert run.code == 13 and run.out["error"]["code"] == "ERR_IMAGE_PULL"
    assert "refused the credentials" in run.out["error"]["message"]
    assert world.cp.state.secret_values("staging", "REGISTRY_AUTH") == {
        "REGISTRY_USERNAME": auth_registry.user,
        "REGISTRY_PASSWORD": world.canaries["REGISTRY_PASSWORD"],
    }
    good = world.secrets_env(REGISTRY_USERNAME=auth_registry.user, REGISTRY_PASSWORD=auth_registry.password)
    out = world.ok("start", extra=good)
    assert (out["action"], out["digest"], out["secrets"]["registry_auth"]) == ("deployed", D_A, "updated")
    assert world.cp.state.secret_values("staging", "REGISTRY_AUTH") == {
        "REGISTRY_USERNAME": auth_registry.user,
        "REGISTRY_PASSWORD": auth_registry.password,
    }
    last = world.cp.state.pulls[-1]
    assert (last.ok, last.auth, last.username, last.manifest_digest) == (True, "basic", auth_registry.user, D_A)
    # no credentials exported: the stored ones pull the next pin
    world.write(amd64=f"{repo}@{D_B}", repository=repo)
    no_credentials = {k: v for k, v in good.items() if k not in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")}
    out = world.ok("start", extra=no_credentials)
    assert (out["action"], out["digest"], out["secrets"]["registry_auth"]) == ("redeployed", D_B, "present")
    last = world.cp.state.pulls[-1]
    assert (last.ok, last.auth, last.username, last.manifest_digest) == (True, "basic", auth_registry.user, D_B)
    # and sync-secrets with working credentials replaces it as well
    assert "REGISTRY_AUTH" in world.ok("sync-secrets", extra=good)["updated"]


# ------------------------------------------------------------------------------------------------
# sync-secrets


def test_secrets_land_in_the_target_environment_only(world: World) -> None:
    """Sync names the environment (secrets once landed in whichever was active); nothing reaches dev or main."""
    env = world.secrets_env(
        OPENAI_API_KEY=world.canaries["OPENAI_API_KEY"],
        THEORY_CANARY_SECRET=world.canaries["THEORY_CANARY_SECRET"],
    )
    out = world.ok("sync-secrets", extra=env)
    assert out["created"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET", "REGISTRY_AUTH"] and out["updated"] == []
    st = world.cp.state
    assert st.secret_values("staging", "OPENAI_API_KEY") == {"OPENAI_API_KEY": world.canaries["OPENAI_API_KEY"]}
    assert st.secret_names("staging") == ["OPENAI_API_KEY", "REGISTRY_AUTH", "THEORY_CANARY_SECRET"]
    assert st.secret_names("dev") == [] and st.secret_names("main") == []
    assert {c.environment_name for c in world.calls_with_env()} == {"staging"}


def test_start_then_sync_with_a_brand_new_secret(world: World) -> None:
    """The documented order start → sync-secrets, with secrets that exist nowhere yet."""
    world.ok("start", extra=world.secrets_env())
    fn = world.cp.state.deployed_app("staging", world.name).functions["web"]
    bound = {world.cp.state.secrets_by_id[i].name: i for i in fn.secret_ids}
    assert set(bound) == {"OPENAI_API_KEY", "THEORY_CANARY_SECRET", "LITELLM_API_BASE"}

    out = world.ok("sync-secrets", extra=world.secrets_env(OPENAI_API_KEY=world.canaries["OPENAI_API_KEY"]))
    assert out["updated"] == ["OPENAI_API_KEY", "REGISTRY_AUTH"] and out["created"] == []
    assert out["missing"] == ["THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    assert out["missing_required"] == ["THEORY_CANARY_SECRET"]
    assert out["kept"] == ["THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    # The value landed in the very secret object the deployed function is bound to.
    rec = world.cp.state.secret("staging", "OPENAI_API_KEY")
    assert rec.secret_id == bound["OPENAI_API_KEY"]
    assert rec.values == {"OPENAI_API_KEY": world.canaries["OPENAI_API_KEY"]}
    assert world.cp.state.deployed_app("staging", world.name).version == 1  # nothing redeployed


def test_rotated_value_reaches_modal(world: World) -> None:
    """Rotation: create-with-allow-existing keeps old values; an update must replace them."""
    world.ok("sync-secrets", extra=world.secrets_env(OPENAI_API_KEY="old-value-1111"))
    assert world.cp.state.secret_values("staging", "OPENAI_API_KEY") == {"OPENAI_API_KEY": "old-value-1111"}
    rotated = world.canaries["OPENAI_API_KEY"]
    out = world.ok("sync-secrets", extra=world.secrets_env(OPENAI_API_KEY=rotated))
    assert "OPENAI_API_KEY" in out["updated"] and out["unchanged"] == []
    assert world.cp.state.secret_values("staging", "OPENAI_API_KEY") == {"OPENAI_API_KEY": rotated}
    creations = [
        c.request.object_creation_type for c in world.cp.state.calls_to("SecretGetOrCreate") if c.request.env_dict
    ]
    from modal_proto import api_pb2

    assert creations and api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING not in creations


def test_sync_report_check_and_fail_on_missing(world: World) -> None:
    """The sync report is right by name, --check changes nothing, the failure branch runs."""
    env = world.secrets_env(OPENAI_API_KEY=world.canaries["OPENAI_API_KEY"])
    check = world.ok("sync-secrets", "--check", extra=env)
    assert check["check"] is True
    assert check["created"] == ["OPENAI_API_KEY", "REGISTRY_AUTH"] and check["updated"] == []
    assert check["present"] == ["OPENAI_API_KEY", "REGISTRY_AUTH"]
    assert check["missing"] == ["THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    assert check["absent"] == ["THEORY_CANARY_SECRET", "LITELLM_API_BASE"]
    assert "would create: OPENAI_API_KEY, REGISTRY_AUTH" in check["summary"]
    assert world.cp.state.secret_names("staging") == []
    assert world.cp.state.calls_to("SecretUpdate") == []

    failed = world.ctl("sync-secrets", "--fail-on-missing", extra=env)
    assert failed.code == 22 and failed.out["error"]["code"] == "ERR_MISSING_SECRET"
    assert "THEORY_CANARY_SECRET" in failed.out["error"]["message"]
    assert failed.out["error"]["details"]["missing"] == ["THEORY_CANARY_SECRET"]
    assert world.cp.state.secret_names("staging") == []  # failed before sending anything

    all_env = {**env, "THEORY_CANARY_SECRET": world.canaries["THEORY_CANARY_SECRET"]}
    done = world.ok("sync-secrets", "--fail-on-missing", extra=all_env)
    assert done["created"] == ["OPENAI_API_KEY", "THEORY_CANARY_SECRET", "REGISTRY_AUTH"]
    assert done["missing"] == ["LITELLM_API_BASE"] and done["missing_required"] == []
    again = world.ok("sync-secrets", extra=all_env)
    assert again["created"] == [] and again["updated"] == [
        "OPENAI_API_KEY",
        "THEORY_CANARY_SECRET",
        "REGISTRY_AUTH",
    ]


def test_dry_run_sync_reads_but_writes_nothing(world: World) -> None:
    world.cp.state.put_secret("staging", "OPENAI_API_KEY", {"OPENAI_API_KEY": "old"})
    out = world.ok("sync-secrets", "--dry-run", extra=world.secrets_env(OPENAI_API_KEY="new-value-2222"))
    assert out["check"] is True and out["updated"] == ["OPENAI_API_KEY"] and out["created"] == ["REGISTRY_AUTH"]
    assert world.cp.state.secret_values("staging", "OPENAI_API_KEY") == {"OPENAI_API_KEY": "old"}
    assert world.cp.state.secret_names("staging") == ["OPENAI_API_KEY"]


# ------------------------------------------------------------------------------------------------
# verify-digest


def _hand_deploy(world: World, tmp_path: Path, *, image_ref: str, digest: str, tags: dict[str, str]) -> None:
    """Someone deploys another image under the app's name, outside theory-deploy."""
    with sdk_in_process(world.cp):
        app = load_app(
            tmp_path,
            env=world.env,
            app_name=world.name,
            image_ref=image_ref,
            image_env={"IMAGE_DIGEST": digest},
            tags=tags,
            secrets=("OPENAI_API_KEY",),
            module=f"tamper_{uuid.uuid4().hex[:6]}",
        )
        app.deploy(name=world.name, environment_name=world.env)


def test_verify_passes_when_right_and_fails_when_wrong(world: World, tmp_path: Path) -> None:
    """verify must pass for what runs and fail, naming what it saw, otherwise."""
    world.ok("start", extra=world.secrets_env())
    ok = world.ok("verify-digest")
    assert ok["verified"] is True and ok["readings"] == {"deploy_record": D_A, "modal_image": D_A, "healthz": D_A}

    # (a) another digest deployed under the app's name with theory-deploy itself.
    with sdk_in_process(world.cp):
        ModalTarget().start(world.app(), ImageRef.parse_digest_ref(f"{IMAGE_REPO}@{D_B}"))
    bad = world.ctl("verify-digest")
    assert bad.code == 21 and bad.out["error"]["code"] == "ERR_REGISTRY_MISMATCH"
    message = bad.out["error"]["message"]
    running = world.cp.state.deployed_app(world.env, world.name).functions[FUNCTION].image_id
    assert f"expected {D_A}" in message and f"deploy_record: {D_B}" in message and f"healthz: {D_B}" in message
    assert f"modal_image: the function runs Modal image {running}, not im-" in message
    assert f", the image Modal builds from {IMAGE_REPO}@{D_A} (someone deployed another image" in message
    assert bad.out["error"]["details"]["readings"] == {"deploy_record": D_B, "modal_image": None, "healthz": D_B}
    assert world.ok("verify-digest", "--oci", f"{IMAGE_REPO}@{D_B}")["readings"] == {
        "deploy_record": D_B,
        "modal_image": D_B,
        "healthz": D_B,
    }

    # (b) a hand deploy of the pinned bytes, but not of the definition theory-deploy deploys (other
    # environment values): Modal's records say so, whatever the tags and the processor report.
    world.ok("start", extra=world.secrets_env())
    _hand_deploy(world, tmp_path, image_ref=f"{IMAGE_REPO}@{D_A}", digest=D_A, tags={"owner": "someone"})
    bad = world.ctl("verify-digest")
    assert bad.code == 21
    assert bad.out["error"]["details"]["readings"] == {"deploy_record": D_A, "modal_image": None, "healthz": D_A}
    assert "modal_image: the function runs Modal image im-" in bad.out["error"]["message"]

    # Redeploying the pin repairs it.
    assert world.ok("start", extra=world.secrets_env())["action"] == "redeployed"
    assert world.ok("verify-digest")["verified"] is True


def test_a_hand_deploy_of_another_image_claiming_the_pin_fails_verify(world: World, tmp_path: Path) -> None:
    """Issue 13: a deploy made by hand with another image, our tags and the same IMAGE_DIGEST. The
    deploy record and /healthz both read back what the impostor was told to say; only Modal's own
    record of the function's image gives it away."""
    world.ok("start", extra=world.secrets_env())
    forged = modal_app.encode_tags({"theory.managed": "true", "theory.digest": D_A})
    _hand_deploy(world, tmp_path, image_ref=f"{IMAGE_REPO}@{D_B}", digest=D_A, tags=forged)
    live = world.cp.state.deployed_app(world.env, world.name)
    assert world.cp.image_spec(live.functions[FUNCTION].image_id).registry_ref == f"{IMAGE_REPO}@{D_B}"
    bad = world.ctl("verify-digest")
    assert bad.code == 21 and bad.out["error"]["code"] == "ERR_REGISTRY_MISMATCH"
    assert bad.out["error"]["details"]["readings"] == {"deploy_record": D_A, "modal_image": None, "healthz": D_A}
    message = bad.out["error"]["message"]
    assert message.startswith(f"{world.name} ({world.env}) does not verify: expected {D_A}; modal_image: ")
    assert "healthz" not in message and "deploy_record" not in message  # both were fooled
    # The running image's id is Modal's, derived from what was deployed: not one the impostor can choose.
    assert live.functions[FUNCTION].image_id in message


def test_verify_waits_for_a_rolling_deploy_and_never_passes_on_the_old_image(
    world: World, health: HealthServer
) -> None:
    """Under the rolling strategy containers of the earlier deploy may answer /healthz for a while after
    `start`: verify reads again while every other reading shows the new image, passes once the new
    image answers, and fails (saying why) if the old one still answers when THEORY_MODAL_ROLLOUT_S ends."""
    world.ok("start", extra=world.secrets_env())
    world.write(amd64=f"{IMAGE_REPO}@{D_B}")
    world.ok("start", extra=world.secrets_env())
    health.stale_answers = [D_A, D_A]
    health.requests = 0
    ok = world.ok("verify-digest", extra={"THEORY_MODAL_ROLLOUT_S": "30"})
    assert ok["readings"] == {"deploy_record": D_B, "modal_image": D_B, "healthz": D_B}
    assert health.requests == 3  # two old answers, each followed by a wait, then the new image

    health.stale_answers = [D_A] * 100
    health.requests = 0
    bad = world.ctl("verify-digest", extra={"THEORY_MODAL_ROLLOUT_S": "3"})
    assert bad.code == 21
    assert bad.out["error"]["details"]["readings"] == {"deploy_record": D_B, "modal_image": D_B, "healthz": D_A}
    assert bad.out["error"]["message"] == (
        f"{world.name} ({world.env}) does not verify: expected {D_B}; healthz: {D_A} (still answered by a "
        "container of an earlier deploy after 3s, although Modal runs the expected image: under the rolling "
        "strategy old containers serve until they drain; verify again later, or `stop` and `start` to replace "
        "them at once). Fix: What runs is not what is pinned: re-run `start` to deploy the pin, or pin what "
        "should run."
    )
    assert health.requests == 3  # at 0 s, 2 s and 4 s: past the 3 s rollout

    # An old answer when Modal's records disagree too is a plain mismatch, read once, no waiting.
    health.stale_answers = [D_A] * 100
    health.requests = 0
    bad = world.ctl("verify-digest", "--oci", f"{IMAGE_REPO}@{D_A}", extra={"THEORY_MODAL_ROLLOUT_S": "30"})
    assert bad.code == 21 and health.requests == 1


def test_start_replaces_every_tag_a_hand_deploy_left(world: World, tmp_path: Path) -> None:
    """A publish may merge the tags it sends into the app's old ones (Modal does not document which; the
    stand-in merges): start writes the deploy record with App.set_tags, documented to replace them
    all, so no tag of an earlier deploy survives (an unchunked `theory.digest` would shadow ours)."""
    world.ok("start", extra=world.secrets_env())
    _hand_deploy(
        world, tmp_path, image_ref=f"{IMAGE_REPO}@{D_B}", digest=D_B, tags={"owner": "someone", "theory.digest": "x"}
    )
    live = world.cp.state.deployed_app(world.env, world.name)
    assert live.tags["owner"] == "someone" and "theory.digest.0" in live.tags  # merged by the publish
    out = world.ok("start", extra=world.secrets_env())
    assert out["action"] == "redeployed"
    expected_tags = ModalTarget().plan(world.app(), ImageRef.parse_digest_ref(f"{IMAGE_REPO}@{D_A}")).tags
    assert world.cp.state.deployed_app(world.env, world.name).tags == expected_tags
    assert world.ok("verify-digest")["verified"] is True


def test_verify_fails_closed(tmp_path: Path, canaries: dict[str, str], images: tuple[str, str]) -> None:
    with ModalStandIn() as standin:  # the default web URL is the gRPC port: no /healthz there
        w = _make_world(tmp_path, standin, "staging", canaries)
        w.write(amd64=f"{IMAGE_REPO}@{D_A}")
        missing = w.ctl("verify-digest")
        assert missing.code == 30 and missing.out["error"]["code"] == "ERR_FUNCTION_NOT_FOUND"
        w.ok("start", extra=w.secrets_env())
        bad = w.ctl("verify-digest")
        assert bad.code == 21
        assert bad.out["error"]["details"]["readings"] == {"deploy_record": D_A, "modal_image": D_A, "healthz": None}
        assert "healthz: could not be read" in bad.out["error"]["message"]


# ------------------------------------------------------------------------------------------------
# status, logs, stop, and the errors


def test_status_logs_stop_lifecycle(world: World) -> None:
    missing = world.ok("status")
    assert missing["state"] == "missing" and missing["digest"] is None
    world.ok("start", extra=world.secrets_env())
    status = world.ok("status")
    assert (status["state"], status["version"], status["digest"], status["matches_pin"]) == (
        "deployed",
        1,
        D_A,
        True,
    )
    assert status["image"] == f"{IMAGE_REPO}@{D_A}" and status["deployed_by"] == "standin-user"
    assert status["url"].endswith(
        f"/staging/{world.name}/{world.cp.state.deployed_app('staging', world.name).functions['web'].image_id}"
    )

    secret = world.canaries["OPENAI_API_KEY"]
    world.cp.add_log("staging", world.name, f"boot: OPENAI_API_KEY={secret}\n")
    world.cp.add_log("staging", world.name, "ready\n", fd="stderr")
    logs = world.ok("logs", "--tail", "10", extra={"OPENAI_API_KEY": secret})
    assert logs["lines"] == ["boot: OPENAI_API_KEY=***", "ready"]
    follow_env = {"OPENAI_API_KEY": secret, "THEORY_MODAL_FOLLOW_IDLE_S": "1"}
    follow = world.ctl("logs", "--follow", extra=follow_env, json_mode=False)
    assert follow.code == 0, follow.stderr
    assert follow.stdout.startswith("boot: OPENAI_API_KEY=***\nready\n")
    assert world.ctl("logs", "--follow", extra=follow_env).code == 2  # --follow with --json: a usage error

    stopped = world.ok("stop")
    assert stopped["action"] == "stopped" and stopped["digest"] == D_A
    assert world.cp.state.deployed_app("staging", world.name) is None
    assert world.ok("status")["state"] == "missing"
    again = world.ctl("stop")
    assert again.code == 30 and again.out["error"]["code"] == "ERR_FUNCTION_NOT_FOUND"
    run = world.ctl("run", "--inputs-json", '{"schema": "v1"}')
    assert run.code == 30
    restarted = world.ok("start", extra=world.secrets_env())
    assert restarted["action"] == "deployed" and restarted["version"] == 1  # a new app after a stop


def test_stop_refuses_an_app_theory_deploy_did_not_deploy(world: World, tmp_path: Path) -> None:
    world.cp.state.put_secret("staging", "REGISTRY_AUTH", {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p"})
    world.cp.state.put_secret("staging", "OPENAI_API_KEY", {"OPENAI_API_KEY": "x"})
    _hand_deploy(world, tmp_path, image_ref=f"{IMAGE_REPO}@{D_A}", digest=D_A, tags={})
    run = world.ctl("stop")
    assert run.code == 33 and "not deployed by theory-deploy" in run.out["error"]["message"]
    assert world.cp.state.deployed_app("staging", world.name) is not None


def test_no_credentials_fail_at_once(world: World) -> None:
    for verb in ("start", "status", "sync-secrets", "verify-digest", "logs", "stop"):
        run = world.ctl(
            verb,
            modal_env=False,
            extra={"MODAL_CONFIG_PATH": str(world.root / "none.toml"), **world.secrets_env()},
        )
        assert run.code == 31, (verb, run.out)
        assert run.out["error"]["code"] == "ERR_MODAL_AUTH"
        assert "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" in run.out["error"]["message"]
    assert world.cp.state.calls == []


def test_wrong_token_is_modal_auth(world: World) -> None:
    run = world.ctl("status", extra={"MODAL_TOKEN_SECRET": "as-wrong"})
    assert run.code == 31 and run.out["error"]["code"] == "ERR_MODAL_AUTH"


def test_unreachable_modal_times_out(world: World) -> None:
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(8)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{sink.getsockname()[1]}"
        run = world.ctl("status", extra={"MODAL_SERVER_URL": url, "THEORY_MODAL_TIMEOUT_S": "2"}, timeout=60)
    finally:
        sink.close()
    assert run.code == 32 and run.out["error"]["code"] == "ERR_MODAL_TIMEOUT"
    assert "within 2s" in run.out["error"]["message"] and run.seconds < 20


def test_missing_environment_in_the_workspace(tmp_path: Path, canaries: dict[str, str]) -> None:
    with ModalStandIn(environments=("dev", "main")) as standin:
        w = _make_world(tmp_path, standin, "staging", canaries)
        w.write(amd64=f"{IMAGE_REPO}@{D_A}")
        run = w.ctl("start", extra=w.secrets_env())
        assert run.code == 4 and run.out["error"]["code"] == "ERR_INVALID_ENV"
        assert "modal environment create staging" in run.out["error"]["message"]
        assert standin.state.apps == {}


def test_in_process_errors_carry_no_secret_values(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from theory_deploy.errors import TheoryDeployError

    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", world.canaries["REGISTRY_PASSWORD"])
    monkeypatch.setenv("OPENAI_API_KEY", world.canaries["OPENAI_API_KEY"])
    with sdk_in_process(world.cp):
        target = ModalTarget()
        result = target.start(world.app(), ImageRef.parse_digest_ref(f"{IMAGE_REPO}@{D_A}"))
        synced = target.sync_secrets(world.app(), check=False, fail_on_missing=False)
        with pytest.raises(TheoryDeployError) as info:
            target.sync_secrets(world.app(), check=False, fail_on_missing=True)
    text = json.dumps([result, synced, info.value.to_json(), str(info.value)], default=str)
    assert_no_canary(text, world.canaries)


# ------------------------------------------------------------------------------------------------
# --oci and rollback: digests proven against the real loopback registry (synthetic images)


@pytest.fixture
def pushed(registry: str) -> dict[str, Any]:
    from tests.registry_faults import push_index, push_synthetic_image
    from theory_deploy.oci import RegistryClient, RetryPolicy

    repo = f"test/modal-{uuid.uuid4().hex[:10]}"
    with RegistryClient(registry, retry=RetryPolicy(base_delay=0.01), progress=lambda _m: None) as client:
        amd_a = push_synthetic_image(client, repo, "amd64", "a")
        amd_b = push_synthetic_image(client, repo, "amd64", "b")
        arm = push_synthetic_image(client, repo, "arm64", "a")
        index = push_index(client, repo, [amd_a, arm])
    return {
        "repository": f"{registry}/{repo}",
        "A": amd_a.manifest_digest,
        "B": amd_b.manifest_digest,
        "arm": arm.manifest_digest,
        "config": amd_a.config_digest,
        "index": index,
    }


def test_start_oci_is_proven_to_be_the_amd64_manifest(world: World, pushed: dict[str, Any]) -> None:
    repo = pushed["repository"]
    world.write(amd64=f"{repo}@{pushed['A']}", repository=repo)
    for digest, code, err in (
        (pushed["arm"], 19, "ERR_PLATFORM_MISMATCH"),
        (pushed["config"], 18, "ERR_CONFIG_DIGEST"),
        ("sha256:" + "0" * 64, 14, "ERR_IMAGE_UNAVAILABLE"),
    ):
        run = world.ctl("start", "--oci", f"{repo}@{digest}", extra=world.secrets_env())
        assert (run.code, run.out["error"]["code"]) == (code, err), run.out
    assert world.cp.state.calls == []  # refused before Modal was asked anything

    out = world.ok("start", "--oci", f"{repo}@{pushed['index']}", extra=world.secrets_env())
    assert out["digest"] == pushed["A"] and out["image"] == f"{repo}@{pushed['A']}"  # the index's amd64 entry
    rec = world.cp.state.deployed_app("staging", world.name)
    assert rec.deploys[-1].images["web"].registry_ref == f"{repo}@{pushed['A']}"
    assert modal_app.decode_tags(rec.tags)["theory.digest"] == pushed["A"]


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_rollback_to_an_earlier_pin(world: World, pushed: dict[str, Any]) -> None:
    repo = pushed["repository"]
    pin_a, pin_b = f"{repo}@{pushed['A']}", f"{repo}@{pushed['B']}"
    world.root.mkdir(parents=True, exist_ok=True)
    _git(world.root, "init", "-q")
    world.write(amd64=pin_a, repository=repo)
    _git(world.root, "add", "-A")
    _git(world.root, "commit", "-q", "-m", "pin A")
    first = _git(world.root, "rev-parse", "HEAD")
    world.write(amd64=pin_b, repository=repo)
    _git(world.root, "commit", "-q", "-am", "pin B")

    assert world.ok("start", extra=world.secrets_env())["digest"] == pushed["B"]

    calls = len(world.cp.state.calls)
    plan = world.ok("rollback", "--to", pushed["A"], "--dry-run")
    assert plan["action"] == "plan" and plan["rolled_back_to"] == pin_a
    assert len(world.cp.state.calls) == calls  # a dry run asks Modal nothing

    back = world.ok("rollback", "--to", pushed["A"], extra=world.secrets_env())
    assert back["rolled_back_to"] == pin_a and back["action"] == "redeployed" and back["version"] == 2
    assert back["previous"]["digest"] == pushed["B"]
    assert world.ok("verify-digest", "--oci", pin_a)["verified"] is True
    assert world.ctl("verify-digest").code == 21  # the pin (B) is not what runs now

    forward = world.ok("rollback", "--to", "HEAD", extra=world.secrets_env())
    assert forward["digest"] == pushed["B"] and forward["version"] == 3
    again = world.ok("rollback", "--to", first, extra=world.secrets_env())
    assert again["digest"] == pushed["A"]

    never = world.ctl("rollback", "--to", "sha256:" + "9" * 64)
    assert never.code == 43 and never.out["error"]["code"] == "ERR_REVISION"
