"""The llm/litellm@1 processor (processors/llm/litellm) on the real runtime, over loopback.

Real mode runs the real LiteLLM code path against `OpenAIStandIn` (tests/test_runtime_openai_standin.py),
a tiny OpenAI-compatible HTTP server reached through LITELLM_API_BASE.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROC = REPO / "processors" / "llm" / "litellm"
REGISTRY = PROC / "registry.yaml"
if importlib.util.find_spec("theory_runtime") is None:  # not pip-installed: use the source tree
    sys.path.insert(0, str(REPO / "runtime"))

from theory_runtime import create_app  # noqa: E402
from theory_runtime.testing import ServerThread  # noqa: E402

from tests.helpers import assert_no_canary, make_canary  # noqa: E402
from tests.test_runtime_openai_standin import OpenAIStandIn  # noqa: E402
from theory_deploy.protocol import run_processor  # noqa: E402

if importlib.util.find_spec("litellm") is None:  # checked without importing it (seconds) at collection
    pytest.skip("litellm is not installed: pip install litellm==1.110.2 (the image's pin)", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydantic")  # LiteLLM's own typing noise

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France? Answer in one word, please, thanks."},
]


def inputs(messages: list[dict[str, str]] | None = None, **params: Any) -> dict[str, Any]:
    return {"schema": "v1", "params": {"messages": messages or MESSAGES, **params}}


@pytest.fixture
def standin() -> Iterator[OpenAIStandIn]:
    s = OpenAIStandIn()
    yield s
    s.close()


# --- serving the processor in-process -------------------------------------------------------------


def load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llm_litellm_handler", PROC / "handler.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    servers: list[ServerThread] = []

    def _serve(env: dict[str, str] | None = None, registry: Path = REGISTRY) -> ServerThread:
        for name in ("OPENAI_API_KEY", "LITELLM_API_BASE", "IMAGE_DIGEST"):
            monkeypatch.delenv(name, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        s = ServerThread(create_app(load_handler().handler, registry)).start()
        servers.append(s)
        return s

    yield _serve
    for s in servers:
        s.stop()


def run(
    s: ServerThread, mode: str, inp: dict[str, Any], frames: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    return asyncio.run(
        run_processor(
            s.ws_url(),
            mode=mode,
            inputs=inp,
            timeout_s=kw.pop("timeout_s", 60),
            on_frame=frames.append if frames is not None else None,
            **kw,
        )
    )


# --- mock mode ------------------------------------------------------------------------------------


def test_mock_run_through_the_product_client(serve: Any) -> None:
    s = serve()
    frames: list[dict[str, Any]] = []
    env = run(s, "mock", inputs(), frames)
    assert env["status"] == "success"
    out = env["outputs"]
    assert out["text"] == "Mock response: " + MESSAGES[-1]["content"][:50]
    assert out["model"] == "gpt-4o-mini"
    assert "".join(out["tokens"]) == out["text"]
    assert [f["content"]["text"] for f in frames if f["kind"] == "Token"] == out["tokens"]
    assert env["meta"]["env_fingerprint"].startswith("sha256:")


def test_mock_is_deterministic_and_reads_no_secrets(serve: Any) -> None:
    s = serve()
    a_frames: list[dict[str, Any]] = []
    b_frames: list[dict[str, Any]] = []
    a = run(s, "mock", inputs(model="gpt-4.1-mini"), a_frames)
    b = run(s, "mock", inputs(model="gpt-4.1-mini"), b_frames)
    dump = lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":")).encode()  # noqa: E731
    assert dump(a["outputs"]) == dump(b["outputs"])
    assert dump(a_frames) == dump(b_frames)
    assert a["outputs"]["model"] == "gpt-4.1-mini"
    assert run(s, "mock", inputs([{"role": "user", "content": "other"}]))["outputs"] != a["outputs"]
    # with a key in the environment, mock mode gives the very same bytes
    s2 = serve({"OPENAI_API_KEY": make_canary()})
    assert dump(run(s2, "mock", inputs(model="gpt-4.1-mini"))["outputs"]) == dump(a["outputs"])


@pytest.mark.parametrize(
    ("bad", "pointer"),
    [
        (inputs([{"role": "bot", "content": "x"}]), "/params/messages/0/role"),
        (
            inputs([{"role": "user", "content": "x"}, {"role": "user", "content": 3}]),
            "/params/messages/1/content",
        ),
        ({"schema": "v1", "params": {"messages": []}}, "/params/messages"),
        ({"schema": "v1", "params": {}}, "/params/messages"),
        ({"params": {"messages": MESSAGES}}, "/schema"),
        (inputs(model=4), "/params/model"),
    ],
)
def test_inputs_errors_name_the_field(serve: Any, bad: dict[str, Any], pointer: str) -> None:
    env = run(serve(), "mock", bad)
    assert env["status"] == "error" and env["error"]["code"] == "ERR_INPUTS"
    assert f"at {pointer}:" in env["error"]["message"], env["error"]["message"]


# --- real mode ------------------------------------------------------------------------------------


@pytest.mark.slow  # real LiteLLM: its import alone takes seconds
def test_real_mode_streams_through_litellm_to_the_standin(serve: Any, standin: OpenAIStandIn) -> None:
    key = make_canary()
    s = serve({"OPENAI_API_KEY": key, "LITELLM_API_BASE": standin.base_url()})
    frames: list[dict[str, Any]] = []
    env = run(s, "real", inputs(), frames)
    assert env["status"] == "success", env
    assert env["outputs"]["text"] == "Paris, of course."
    assert env["outputs"]["model"] == "gpt-4o-mini"
    assert env["outputs"]["tokens"] == ["Paris, ", "of ", "course."]
    assert [f["content"]["text"] for f in frames if f["kind"] == "Token"] == ["Paris, ", "of ", "course."]
    # the stand-in saw exactly what LiteLLM should send
    assert len(standin.requests) == 1
    req = standin.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "gpt-4o-mini"
    assert req["body"]["messages"] == MESSAGES
    assert req["body"]["stream"] is True
    assert req["authorization"] == f"Bearer {key}"  # the provider (and only it) gets the key
    assert "litellm" in sys.modules  # the real LiteLLM code path ran in this process
    assert_no_canary(json.dumps([env, frames]), [key])

    env = run(s, "real", inputs(model="gpt-4.1-nano"))
    assert env["outputs"]["model"] == "gpt-4.1-nano"
    assert standin.requests[-1]["body"]["model"] == "gpt-4.1-nano"


@pytest.mark.slow  # real LiteLLM: its import alone takes seconds
def test_real_mode_provider_error_is_scrubbed(serve: Any, standin: OpenAIStandIn) -> None:
    key = make_canary()
    standin.fail_status = 401
    s = serve({"OPENAI_API_KEY": key, "LITELLM_API_BASE": standin.base_url()})
    env = run(s, "real", inputs())
    assert env["status"] == "error" and env["error"]["code"] == "ERR_PROVIDER"
    msg = env["error"]["message"]
    assert msg.startswith("AuthenticationError (HTTP 401)"), msg
    assert "Incorrect API key provided" in msg
    assert_no_canary(json.dumps(env), [key])


@pytest.mark.slow  # real LiteLLM: its import alone takes seconds
def test_real_mode_unreachable_provider_is_err_provider(serve: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    s = serve({"OPENAI_API_KEY": make_canary(), "LITELLM_API_BASE": f"http://127.0.0.1:{port}/v1"})
    env = run(s, "real", inputs(), timeout_s=120)
    assert env["error"]["code"] == "ERR_PROVIDER", env


def test_missing_key_is_err_missing_secret_without_any_value(
    serve: Any, standin: OpenAIStandIn, tmp_path: Path
) -> None:
    s = serve({"LITELLM_API_BASE": standin.base_url()})
    env = run(s, "real", inputs())
    assert env["error"]["code"] == "ERR_MISSING_SECRET"
    assert "OPENAI_API_KEY" in env["error"]["message"]
    assert standin.requests == []
    # the handler's own check too (a registry that does not declare the secret)
    reg = yaml.safe_load(REGISTRY.read_text())
    reg["secrets"] = {"required": [], "optional": []}
    p = tmp_path / "registry.yaml"
    p.write_text(yaml.safe_dump(reg))
    env = run(serve({"LITELLM_API_BASE": standin.base_url()}, registry=p), "real", inputs())
    assert env["error"]["code"] == "ERR_MISSING_SECRET" and "OPENAI_API_KEY" in env["error"]["message"]
    assert standin.requests == []


# --- the app as it ships: app.py under uvicorn, in a subprocess, every byte checked ---------------


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
def test_canary_key_never_appears_in_frames_or_logs(standin: OpenAIStandIn, tmp_path: Path) -> None:
    key = make_canary()
    standin.reply = f"Your key is {key} as requested."  # even a provider echoing it gets masked
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LITELLM_API_BASE")}
    env.update(
        {
            "OPENAI_API_KEY": key,
            "LITELLM_API_BASE": standin.base_url(),
            "THEORY_HEARTBEAT_S": "0.2",
            "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), env.get("PYTHONPATH", "")]),
        }
    )
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app:app",
                "--app-dir",
                str(PROC),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "debug",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "processor did not come up"
                time.sleep(0.2)
            url = f"ws://127.0.0.1:{port}/run"
            texts: list[str] = []

            async def go(mode: str) -> dict[str, Any]:
                frames: list[dict[str, Any]] = []
                envl = await run_processor(url, mode=mode, inputs=inputs(), timeout_s=60, on_frame=frames.append)
                texts.append(json.dumps([envl, frames]))
                return envl

            assert asyncio.run(go("mock"))["status"] == "success"
            ok = asyncio.run(go("real"))
            assert ok["status"] == "success"
            assert "***" in ok["outputs"]["text"] and "Your key is" in ok["outputs"]["text"]
            standin.fail_status = 401
            bad = asyncio.run(go("real"))
            assert bad["error"]["code"] == "ERR_PROVIDER"
            texts.append(
                httpx.post(
                    f"http://127.0.0.1:{port}/invoke", json={"mode": "real", "inputs": inputs()}, timeout=60
                ).text
            )
            texts.append(httpx.get(f"http://127.0.0.1:{port}/healthz").text)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    logs = log_path.read_text()
    assert "theory_runtime: run" in logs and "status=success" in logs, logs
    assert len(standin.requests) == 3
    for text in [*texts, logs]:
        assert_no_canary(text, [key])
