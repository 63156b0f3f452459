"""`modalctl` end to end with the real processor in a real container: run and verify over the network.

The Modal stand-in plays Modal's control plane; its hooks play Modal's workers:
  * image_build_hook: `docker pull` of exactly the registry ref the deployed image names (as Modal
    pulls `from_registry` images), so a deploy of a digest the registry lacks fails;
  * web_url_for: for each deployed function image, one container of that ref on the local engine
    (`docker run -d -p 127.0.0.1::8000` with the image's ENV layer and the values of the secrets the
    function is bound to, as Modal injects them at container start), and the web URL points at it.
So `verify-digest` reads the processor's own /healthz and `run` speaks theory.run.v1 over a real
WebSocket to the real llm/litellm processor (built here from processors/llm/litellm/Dockerfile).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from modal_standin import ModalStandIn

from tests.helpers import assert_no_canary, make_canaries
from tests.test_modal_target import SECRET_NAMES, World, _git
from theory_deploy import runtime_bundle
from theory_deploy.refs import ImageRef, ProcessorRef

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
INPUTS = '{"schema": "v1", "params": {"messages": [{"role": "user", "content": "hello from modal"}]}}'


def _docker(docker_cli: str, *args: str, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [docker_cli, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"docker {' '.join(args[:3])} failed: {proc.stderr[-2000:]}"
    return proc.stdout


def _push(docker_cli: str, tag: str) -> ImageRef:
    out = _docker(docker_cli, "push", tag)
    digest = out.split("digest: ", 1)[1].split()[0]
    return ImageRef.parse_digest_ref(f"{tag.rsplit(':', 1)[0]}@{digest}")


@pytest.fixture(scope="module")
def processor_images(
    docker_cli: str, registry: str, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ImageRef, ImageRef]:
    """The real llm/litellm processor (A) and a relabelled copy of it (B): two amd64 digests."""
    repository = f"{registry}/theory-test/llm-litellm-modal"
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    args = [
        "build",
        "-f",
        "processors/llm/litellm/Dockerfile",
        "--platform",
        "linux/amd64",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "-t",
        f"{repository}:a",
    ]
    if Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        args += ["--secret", "id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt"]
    args += runtime_bundle.ensure_bundle().docker_flags()  # the runtime, as processorctl build passes it
    proc = subprocess.run(
        [docker_cli, *args, "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"building the llm/litellm processor failed: {proc.stderr[-3000:]}"
    a = _push(docker_cli, f"{repository}:a")
    folder = tmp_path_factory.mktemp("variant")
    (folder / "Dockerfile").write_text(f"FROM {a}\nLABEL theory.test.variant=b\n")
    _docker(docker_cli, "build", "--platform", "linux/amd64", "-t", f"{repository}:b", str(folder), env=env)
    b = _push(docker_cli, f"{repository}:b")
    assert a.digest != b.digest
    return a, b


class DockerWorkers:
    """Modal's workers, played by the local engine (see the module docstring)."""

    def __init__(self, docker_cli: str) -> None:
        self.docker = docker_cli
        self.standin: ModalStandIn | None = None
        self.live: dict[tuple[str, str], tuple[str, str, str]] = {}  # (env, app) -> (image_id, container, url)
        self.started: list[str] = []
        self.pulled: list[str] = []
        self.lock = threading.Lock()

    def build_hook(self, spec: Any) -> None:
        assert spec.registry_secret_name == "REGISTRY_AUTH"
        proc = subprocess.run(
            [self.docker, "pull", spec.registry_ref],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pull failed: {proc.stderr.strip()[-500:]}")
        self.pulled.append(spec.registry_ref)

    def url_for(self, app_name: str, env: str, *, function_name: str, function: Any) -> str:
        if function is None or not function.image_id or self.standin is None:
            return "http://127.0.0.1:9/pending"
        with self.lock:
            current = self.live.get((env, app_name))
            if current and current[0] == function.image_id:
                return current[2]
            spec = self.standin.image_spec(function.image_id)
            if not spec.registry_ref:
                return "http://127.0.0.1:9/pending"
            values: dict[str, str] = {}
            for secret_id in function.secret_ids:
                values.update(self.standin.state.secrets_by_id[secret_id].values)
            name = f"theory-modal-test-{uuid.uuid4().hex[:10]}"
            run_env = {**os.environ, **values}  # `-e NAME` takes the value from the client's env: never argv
            args = ["run", "-d", "--name", name, "-p", "127.0.0.1::8000", "--label", "theory.test=modal"]
            for key, value in spec.env.items():
                args += ["-e", f"{key}={value}"]
            for key in values:
                args += ["-e", key]
            _docker(self.docker, *args, spec.registry_ref, env=run_env, timeout=120)
            self.started.append(name)
            port = _docker(self.docker, "port", name, "8000/tcp", timeout=30).strip().splitlines()[0].rsplit(":", 1)[1]
            url = f"http://127.0.0.1:{port}"
            if current:  # the new version replaces the old one (a rolling deploy)
                subprocess.run([self.docker, "rm", "-f", current[1]], capture_output=True, timeout=60)
            self.live[(env, app_name)] = (function.image_id, name, url)
            return url

    def close(self) -> None:
        for name in self.started:
            subprocess.run([self.docker, "rm", "-f", name], capture_output=True, timeout=60)


def wait_healthy(url: str, digest: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            body = httpx.get(url + "/healthz", timeout=5, trust_env=False).json()
            if body.get("ok") is True and body.get("digest") == digest:
                return body
            last = body
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url}/healthz never reported {digest}: {last!r}")


@pytest.fixture
def workers(docker_cli: str) -> Iterator[DockerWorkers]:
    w = DockerWorkers(docker_cli)
    yield w
    w.close()


def test_start_sync_verify_run_rollback_with_the_real_processor(
    tmp_path: Path, workers: DockerWorkers, processor_images: tuple[ImageRef, ImageRef]
) -> None:
    a, b = processor_images
    canaries = make_canaries(*SECRET_NAMES, "REGISTRY_PASSWORD", "MODAL_TOKEN_SECRET")
    sequence: list[tuple[str, dict[str, Any]]] = []
    with ModalStandIn(
        web_url_for=workers.url_for,
        image_build_hook=workers.build_hook,
        token_secret=canaries["MODAL_TOKEN_SECRET"],
    ) as cp:
        workers.standin = cp
        root = tmp_path / "repo"
        w = World(cp, root, ProcessorRef("llm", "litellm", 1), "staging", canaries, {})
        # The real processor's registry.yaml, pinned in two commits: B first (the earlier release), then A.
        w.path.parent.mkdir(parents=True)
        original = (REPO / "processors/llm/litellm/registry.yaml").read_text()
        template = original.replace("repository: ghcr.io/theory-deploy/llm-litellm", f"repository: {a.repository}")
        root.joinpath(".gitignore").write_text("")
        _git(root, "init", "-q")
        w.path.write_text(template.replace("amd64: null", f"amd64: {b}", 1))
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "pin B")
        w.path.write_text(template.replace("amd64: null", f"amd64: {a}", 1))
        _git(root, "commit", "-q", "-am", "pin A")
        creds = w.secrets_env()

        def step(label: str, *args: str, extra: dict[str, str] | None = None, code: int = 0) -> dict[str, Any]:
            run = w.ctl(*args, extra={**creds, **(extra or {})}, timeout=600)
            assert run.code == code, f"{label}: exit {run.code}: {run.stdout}\n{run.stderr}"
            sequence.append((label, run.out))
            return run.out

        started = step("start", "start")
        assert started["action"] == "deployed" and started["digest"] == a.digest
        assert set(workers.pulled) == {str(a)}
        wait_healthy(started["url"], a.digest)

        # Real mode before sync-secrets: the placeholder is empty, so the processor says which secret.
        real = step("run real (before sync)", "run", "--mode", "real", "--inputs-json", INPUTS, code=22)
        assert real["status"] == "error" and real["error"]["code"] == "ERR_MISSING_SECRET"
        assert real["error"]["details"]["envelope"]["status"] == "error"

        synced = step("sync-secrets", "sync-secrets", extra={"OPENAI_API_KEY": canaries["OPENAI_API_KEY"]})
        assert synced["updated"] == ["OPENAI_API_KEY", "REGISTRY_AUTH"]
        assert cp.state.secret_values("staging", "OPENAI_API_KEY") == {"OPENAI_API_KEY": canaries["OPENAI_API_KEY"]}

        verified = step("verify-digest", "verify-digest")
        assert verified["readings"] == {"deploy_record": a.digest, "modal_image": a.digest, "healthz": a.digest}

        ran = step("run", "run", "--mode", "mock", "--inputs-json", INPUTS)
        envelope = ran["envelope"]
        assert envelope["status"] == "success" and envelope["meta"]["image_digest"] == a.digest
        assert "hello from modal" in json.dumps(envelope["outputs"])

        back = step("rollback", "rollback", "--to", str(b.digest))
        assert back["rolled_back_to"] == str(b) and back["version"] == 2
        wait_healthy(back["url"], b.digest)
        drift = step("verify-digest (pin A, B runs)", "verify-digest", code=21)
        assert drift["error"]["details"]["readings"] == {
            "deploy_record": b.digest,
            "modal_image": None,
            "healthz": b.digest,
        }
        assert a.digest in drift["error"]["message"] and b.digest in drift["error"]["message"]
        assert step("verify-digest --oci B", "verify-digest", "--oci", str(b))["verified"] is True
        ran_b = step("run (B)", "run", "--mode", "mock", "--inputs-json", INPUTS)
        assert ran_b["envelope"]["meta"]["image_digest"] == b.digest

        forward = step("start (pin A again)", "start")
        assert forward["action"] == "redeployed" and forward["digest"] == a.digest
        wait_healthy(forward["url"], a.digest)
        assert step("verify-digest (A again)", "verify-digest")["verified"] is True

        seen = {c.environment_name for c in cp.state.calls if c.environment_name is not None}
        assert seen == {"staging"}
    for text in w.outputs:
        assert_no_canary(text, canaries)
    out = os.environ.get("THEORY_MODAL_SEQUENCE_OUT")
    if out:
        Path(out).write_text(json.dumps(sequence, indent=2))
