"""The llm/litellm@1 image, built with the real Docker engine (BuildKit) and run as a container.

Builds processors/llm/litellm/Dockerfile for linux/amd64 from the repository root (the registry.yaml
build context) on the local multi-arch Python base (`base_image` fixture, scripts/local-base-image),
then checks /healthz, a mock run and a real run (LiteLLM in the container -> the OpenAI stand-in on
the Docker bridge) through the product client, and that the canary key never reaches any frame or
the container's logs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import assert_no_canary, make_canary
from tests.test_runtime_openai_standin import OpenAIStandIn
from theory_deploy import runtime_bundle
from theory_deploy.protocol import fetch_health, run_processor

if importlib.util.find_spec("theory_runtime") is None:  # not pip-installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from theory_runtime.spec import export as spec_export

pytestmark = pytest.mark.docker

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DIGEST = "sha256:" + "e" * 64
INPUTS = {
    "schema": "v1",
    "params": {"messages": [{"role": "user", "content": "Say hello to the container."}]},
}


def _docker(
    cli: str, *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [cli, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKER_BUILDKIT": "1", **(env or {})},
    )
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({res.returncode}): {res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def image(docker_cli: str, base_image: str, repo_root: Path) -> Iterator[dict[str, Any]]:
    tag = f"theory-test/llm-litellm:pytest-{uuid.uuid4().hex[:8]}"
    args = [
        "build",
        "--platform",
        "linux/amd64",
        "-f",
        "processors/llm/litellm/Dockerfile",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "-t",
        tag,
    ]
    if CA_BUNDLE.is_file():  # lets pip in the build trust this machine's TLS-intercepting proxy
        args += ["--secret", f"id=ca_bundle,src={CA_BUNDLE}"]
    args += runtime_bundle.ensure_bundle().docker_flags()  # the runtime, as processorctl build passes it
    t0 = time.monotonic()
    _docker(docker_cli, *args, str(repo_root), timeout=1800)
    info = {"tag": tag, "build_s": time.monotonic() - t0}
    print(f"\nbuilt {tag} (linux/amd64) in {info['build_s']:.1f}s")
    yield info
    _docker(docker_cli, "rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def bridge_ip(docker_cli: str) -> str:
    """The host's address on the default bridge (containers reach host services there)."""
    out = _docker(docker_cli, "network", "inspect", "bridge", "-f", "{{json .IPAM.Config}}")
    config = json.loads(out.stdout or "[]") or [{}]
    gateway = config[0].get("Gateway")
    if not gateway and config[0].get("Subnet"):  # dockerd often omits it: the first host is docker0's address
        gateway = str(next(ipaddress.ip_network(config[0]["Subnet"]).hosts()))
    if not gateway:
        pytest.skip(f"cannot tell the bridge gateway from {out.stdout.strip()!r}")
    return gateway


@pytest.fixture(scope="module")
def standin(bridge_ip: str) -> Iterator[OpenAIStandIn]:
    s = OpenAIStandIn(reply="Hello from inside the container.", host=bridge_ip)  # reachable from containers
    yield s
    s.close()


@pytest.fixture(scope="module")
def container(docker_cli: str, image: dict[str, Any], standin: OpenAIStandIn) -> Iterator[dict[str, Any]]:
    key = make_canary()
    name = f"theory-test-litellm-{uuid.uuid4().hex[:8]}"
    # `-e NAME` without a value: docker copies it from its own environment, so the key is not in argv.
    _docker(
        docker_cli,
        "run",
        "-d",
        "--name",
        name,
        "-p",
        "127.0.0.1::8000",
        "-e",
        f"IMAGE_DIGEST={DIGEST}",
        "-e",
        "OPENAI_API_KEY",
        "-e",
        f"LITELLM_API_BASE={standin.base_url()}",
        "-e",
        "THEORY_HEARTBEAT_S=1",
        image["tag"],
        env={"OPENAI_API_KEY": key},
    )
    try:
        port = _docker(docker_cli, "port", name, "8000/tcp").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = _docker(docker_cli, "inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", f"container exited:\n{_logs(docker_cli, name)[-3000:]}"
            assert time.monotonic() < deadline, f"no /healthz in 90s:\n{_logs(docker_cli, name)[-3000:]}"
            time.sleep(0.5)
        yield {"name": name, "base": base, "ws": f"ws://127.0.0.1:{port}/run", "key": key}
    finally:
        _docker(docker_cli, "rm", "-f", name, check=False)


def _logs(cli: str, name: str) -> str:
    res = _docker(cli, "logs", name, check=False)
    return res.stdout + res.stderr


def test_image_metadata_and_contents(
    docker_cli: str, image: dict[str, Any], container: dict[str, Any], repo_root: Path
) -> None:
    cfg = json.loads(_docker(docker_cli, "image", "inspect", image["tag"]).stdout)[0]
    assert cfg["Os"] == "linux" and cfg["Architecture"] == "amd64"
    assert "8000/tcp" in cfg["Config"]["ExposedPorts"]
    assert cfg["Config"]["Cmd"][:2] == ["uvicorn", "app:app"]
    # registry.yaml minus its pins (and build section), exported canonically: see the Dockerfile
    inside = _docker(docker_cli, "exec", container["name"], "cat", "/app/processor.json").stdout
    with tempfile.TemporaryDirectory() as tmp:
        expected = spec_export(repo_root / "processors/llm/litellm/registry.yaml", Path(tmp) / "p.json")
    assert inside.encode() == expected
    assert "image" not in json.loads(inside) and "build" not in json.loads(inside)
    files = set(_docker(docker_cli, "exec", container["name"], "ls", "/app").stdout.split())
    assert files - {"__pycache__"} == {"app.py", "handler.py", "processor.json", "requirements.txt"}
    # the runtime is installed as a package, and the build context was cut down to what the image needs
    _docker(docker_cli, "exec", container["name"], "python", "-c", "import theory_runtime, litellm")


def test_healthz_reports_the_digest(container: dict[str, Any]) -> None:
    h = fetch_health(container["base"])
    assert h == {"ok": True, "ref": "llm/litellm@1", "digest": DIGEST, "protocol": "theory.run.v1"}


def test_mock_run_in_the_container(container: dict[str, Any]) -> None:
    frames: list[dict[str, Any]] = []
    a = asyncio.run(run_processor(container["ws"], mode="mock", inputs=INPUTS, timeout_s=60, on_frame=frames.append))
    b = asyncio.run(run_processor(container["ws"], mode="mock", inputs=INPUTS, timeout_s=60))
    assert a["status"] == "success", a
    assert a["outputs"]["text"] == "Mock response: Say hello to the container."
    assert json.dumps(a["outputs"]) == json.dumps(b["outputs"])
    assert a["meta"]["image_digest"] == DIGEST and a["meta"]["env_fingerprint"].startswith("sha256:")
    assert a["meta"]["env_fingerprint"] == b["meta"]["env_fingerprint"]
    assert [f["content"]["text"] for f in frames if f["kind"] == "Token"] == a["outputs"]["tokens"]


def test_real_run_in_the_container(container: dict[str, Any], standin: OpenAIStandIn) -> None:
    frames: list[dict[str, Any]] = []
    env = asyncio.run(run_processor(container["ws"], mode="real", inputs=INPUTS, timeout_s=120, on_frame=frames.append))
    assert env["status"] == "success", env
    assert env["outputs"]["text"] == "Hello from inside the container."
    assert standin.requests[-1]["body"]["messages"] == INPUTS["params"]["messages"]
    assert standin.requests[-1]["body"]["model"] == "gpt-4o-mini"
    assert_no_canary(json.dumps([env, frames]), [container["key"]])


def test_container_logs_hold_no_secret(docker_cli: str, container: dict[str, Any]) -> None:
    asyncio.run(run_processor(container["ws"], mode="mock", inputs=INPUTS, timeout_s=60))
    logs = _logs(docker_cli, container["name"])
    assert "theory_runtime: run" in logs
    assert "Traceback" not in logs and "Logging error" not in logs, logs[-3000:]
    assert_no_canary(logs, [container["key"]])


# --- the protocol, against the real image in a real container ---------------------------------------


def test_a_client_without_the_subprotocol_is_refused_at_the_handshake(container: dict[str, Any]) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def attempt() -> int:
        try:
            async with connect(container["ws"], open_timeout=10):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(attempt()) in (400, 403)


def test_malformed_frames_get_a_protocol_error_and_a_close_code_not_a_hang(container: dict[str, Any]) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def send(raw: str) -> tuple[list[dict[str, Any]], int | None]:
        frames: list[dict[str, Any]] = []
        async with connect(container["ws"], subprotocols=["theory.run.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
            await ws.send(raw)
            async with asyncio.timeout(10):  # a hang fails here
                try:
                    async for message in ws:
                        frames.append(json.loads(message))
                except ConnectionClosed:  # a 4400 close ends the iteration with an error, as it should
                    pass
            code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
        return frames, code

    for raw in ["not json", json.dumps({"kind": "Nope"}), json.dumps({"kind": "RunOpen"})]:
        frames, code = asyncio.run(send(raw))
        assert code == 4400, (raw, code)
        result = [f for f in frames if f["kind"] == "RunResult"]
        assert len(result) == 1 and result[0]["content"]["error"]["code"] == "ERR_WS_PROTOCOL", (raw, frames)


def test_a_hundred_concurrent_runs(container: dict[str, Any]) -> None:
    async def many() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(
                run_processor(container["ws"], mode="mock", inputs=INPUTS, execution_id=f"c-{i}", timeout_s=120)
                for i in range(100)
            )
        )

    envelopes = asyncio.run(many())
    assert [e["status"] for e in envelopes] == ["success"] * 100
    assert sorted(e["execution_id"] for e in envelopes) == sorted(f"c-{i}" for i in range(100))
    assert len({json.dumps(e["outputs"]) for e in envelopes}) == 1  # deterministic under load too


def test_inputs_are_validated_against_the_schema_inside_the_image(container: dict[str, Any]) -> None:
    bad = {"schema": "v1", "params": {"messages": [{"role": "robot", "content": "hi"}]}}
    envelope = asyncio.run(run_processor(container["ws"], mode="mock", inputs=bad, timeout_s=60))
    assert envelope["status"] == "error"
    assert envelope["error"]["code"] == "ERR_INPUTS"
    assert "/params/messages/0/role" in envelope["error"]["message"]


def test_heartbeats_keep_a_quiet_run_alive(container: dict[str, Any], standin: OpenAIStandIn) -> None:
    # The container runs with THEORY_HEARTBEAT_S=1; the model thinks for 3.5 s before its first token.
    frames: list[dict[str, Any]] = []
    standin.delay_s = 3.5
    try:
        envelope = asyncio.run(
            run_processor(container["ws"], mode="real", inputs=INPUTS, timeout_s=60, on_frame=frames.append)
        )
    finally:
        standin.delay_s = 0.0
    assert envelope["status"] == "success", envelope
    beats = [f for f in frames if f["kind"] == "Heartbeat"]
    assert len(beats) >= 2, [f["kind"] for f in frames]
