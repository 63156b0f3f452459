"""theory_deploy.protocol, the theory.run.v1 client, against real loopback servers.

Misbehaving peers are scripted with the `websockets` server (they stand in for broken or foreign
processors); well-behaved ones are the real runtime (theory_runtime) in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from theory_deploy import protocol
from theory_deploy.errors import (
    AuthRequiredError,
    NotRunningError,
    ProtocolError,
    RunTimeoutError,
    UsageError,
    error_for_code,
)
from theory_deploy.protocol import fetch_health, run_processor, ws_url_for

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("theory_runtime") is None:  # not pip-installed: use the source tree
    sys.path.insert(0, str(REPO / "runtime"))

import theory_runtime  # noqa: E402
from theory_runtime import create_app  # noqa: E402
from theory_runtime.testing import ServerThread  # noqa: E402

INPUTS = {"schema": "v1", "params": {"text": "x"}}
ENVELOPE_OK = {
    "status": "success",
    "execution_id": "e",
    "outputs": {"a": 1},
    "meta": {"image_digest": None, "env_fingerprint": "sha256:0", "duration_ms": 1},
}


def frame(kind: str, content: Any = None) -> str:
    return json.dumps({"kind": kind, "content": content if content is not None else {}})


Script = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]


async def with_scripted_server(
    script: Script,
    client: Callable[[str, dict[str, Any]], Awaitable[Any]],
    *,
    subprotocols: list[str] | None = None,
    process_request: Any = None,
) -> Any:
    """Serve `script` on a free port; run `client(url, seen)`; `seen` collects what the server got."""
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        seen["headers"] = dict(ws.request.headers) if ws.request else {}
        seen["subprotocol"] = ws.subprotocol
        await script(ws, seen)

    protos = [protocol.PROTOCOL] if subprotocols is None else subprotocols
    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=protos or None,  # type: ignore[arg-type]
        process_request=process_request,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        return await client(f"ws://127.0.0.1:{port}/run", seen)


async def read_open(ws: ServerConnection, seen: dict[str, Any]) -> None:
    seen["open"] = json.loads(await ws.recv())
    await ws.send(frame("Ack", {"execution_id": seen["open"]["content"]["execution_id"]}))


def run_against(script: Script, **kw: Any) -> tuple[Any, dict[str, Any]]:
    async def client(url: str, seen: dict[str, Any]) -> Any:
        return await run_processor(url, mode="mock", inputs=INPUTS, timeout_s=kw.pop("timeout_s", 5), **kw), seen

    return asyncio.run(with_scripted_server(script, client))


# --- constants and URLs ------------------------------------------------------------------------------


def test_frame_constants_match_the_runtime() -> None:
    f = theory_runtime.frames
    assert protocol.PROTOCOL == f.PROTOCOL
    for name in (
        "RUN_OPEN",
        "ACK",
        "TOKEN",
        "LOG",
        "EVENT",
        "HEARTBEAT",
        "RUN_RESULT",
        "CLOSE_NORMAL",
        "CLOSE_PROTOCOL",
        "CLOSE_UNAUTHORIZED",
        "SERVER_KINDS",
        "STREAM_KINDS",
        "MODES",
    ):
        assert getattr(protocol, name) == getattr(f, name), name


def test_ws_url_for() -> None:
    assert ws_url_for("https://a-b.modal.run") == "wss://a-b.modal.run/run"
    assert ws_url_for("http://127.0.0.1:8000/") == "ws://127.0.0.1:8000/run"
    assert ws_url_for("http://h/base", "/go") == "ws://h/base/go"
    with pytest.raises(ProtocolError):
        ws_url_for("ftp://x")


# --- what the client sends ----------------------------------------------------------------------------


def test_sends_run_open_subprotocol_and_bearer() -> None:
    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await read_open(ws, seen)
        await ws.send(frame("RunResult", ENVELOPE_OK))

    env, seen = run_against(script, token="tok-abc", execution_id="exec-7")
    assert env == ENVELOPE_OK
    assert seen["subprotocol"] == protocol.PROTOCOL
    assert seen["headers"]["authorization"] == "Bearer tok-abc"
    assert seen["open"] == {
        "kind": "RunOpen",
        "content": {"execution_id": "exec-7", "mode": "mock", "inputs": INPUTS},
    }


def test_generates_an_execution_id_and_calls_on_frame_for_stream_kinds() -> None:
    got: list[str] = []

    async def on_frame(f: dict[str, Any]) -> None:  # async callbacks are awaited
        got.append(f["kind"])

    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await read_open(ws, seen)
        for kind in ("Token", "Log", "Event", "Heartbeat"):
            await ws.send(frame(kind, {"text": "t"}))
        await ws.send(frame("RunResult", ENVELOPE_OK))

    _, seen = run_against(script, on_frame=on_frame)
    assert seen["open"]["content"]["execution_id"].startswith("exec-")
    assert got == ["Token", "Log", "Event", "Heartbeat"]


def test_run_level_error_envelopes_are_returned() -> None:
    bad = {
        **ENVELOPE_OK,
        "status": "error",
        "outputs": None,
        "error": {"code": "ERR_PROVIDER", "message": "no"},
    }

    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await read_open(ws, seen)
        await ws.send(frame("RunResult", bad))

    env, _ = run_against(script)
    assert env["error"]["code"] == "ERR_PROVIDER"
    assert error_for_code(env["error"]["code"], env["error"]["message"]).exit_code == 23


def test_rejects_bad_mode() -> None:
    with pytest.raises(UsageError):
        asyncio.run(run_processor("ws://127.0.0.1:1/run", mode="fast", inputs={}, timeout_s=1))


# --- misbehaving servers -> typed errors ----------------------------------------------------------------


async def _send_then_hold(ws: ServerConnection, text: str | bytes) -> None:
    await ws.recv()
    await ws.send(text)
    await ws.wait_closed()  # hold the connection open until the client gives up


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ("not json", "not JSON"),
        (b"\x00\x01", "binary"),
        (json.dumps({"content": {}}), "kind"),
        (frame("Surprise"), "unknown kind"),
        (frame("RunResult", {"status": "maybe"}), "valid envelope"),
        (frame("RunResult", {"status": "success"}), "meta"),
        (frame("RunResult", {**ENVELOPE_OK, "status": "error"}), "error.code"),
        (
            frame(
                "RunResult",
                {
                    **ENVELOPE_OK,
                    "status": "error",
                    "error": {"code": "ERR_WS_PROTOCOL", "message": "bad frame"},
                },
            ),
            "bad frame",
        ),
    ],
)
def test_malformed_server_frames_raise_protocol_error(reply: str | bytes, match: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match=match):
        run_against(lambda ws, seen: _send_then_hold(ws, reply))
    assert time.monotonic() - t0 < 5


def test_closed_without_result_is_protocol_error() -> None:
    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await read_open(ws, seen)
        await ws.send(frame("Token", {"text": "a"}))
        await ws.close(1000)

    with pytest.raises(ProtocolError, match="before sending a RunResult"):
        run_against(script)


def test_close_4401_is_auth_required() -> None:
    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await ws.close(4401, "unauthorized")

    with pytest.raises(AuthRequiredError):
        run_against(script)


def test_error_envelope_unauthorized_is_auth_required() -> None:
    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await ws.send(
            frame(
                "RunResult",
                {**ENVELOPE_OK, "status": "error", "error": {"code": "ERR_UNAUTHORIZED", "message": "token"}},
            )
        )
        await ws.close(4401)

    with pytest.raises(AuthRequiredError):
        run_against(script)


def test_server_without_the_subprotocol_is_protocol_error() -> None:
    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await ws.wait_closed()

    async def client(url: str, seen: dict[str, Any]) -> Any:
        return await run_processor(url, mode="mock", inputs=INPUTS, timeout_s=5)

    with pytest.raises(ProtocolError, match=r"without the theory\.run\.v1 subprotocol"):
        asyncio.run(with_scripted_server(script, client, subprotocols=[]))


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (HTTPStatus.UNAUTHORIZED, AuthRequiredError),
        (HTTPStatus.NOT_FOUND, NotRunningError),
        (HTTPStatus.BAD_REQUEST, ProtocolError),
        (HTTPStatus.BAD_GATEWAY, ProtocolError),
    ],
)
def test_handshake_http_status_maps_to_errors(status: HTTPStatus, error: type[Exception]) -> None:
    body = json.dumps({"status": "error", "error": {"code": "X", "message": "because reasons"}})

    def refuse(connection: Any, request: Any) -> Any:
        return connection.respond(status, body)

    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        raise AssertionError("not reached")

    async def client(url: str, seen: dict[str, Any]) -> Any:
        return await run_processor(url, mode="mock", inputs=INPUTS, timeout_s=5)

    with pytest.raises(error) as ei:
        asyncio.run(with_scripted_server(script, client, process_request=refuse))
    assert str(int(status)) in str(ei.value)
    if status == HTTPStatus.BAD_REQUEST:
        assert "because reasons" in str(ei.value)


def test_connection_refused_is_not_running() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(NotRunningError):
        asyncio.run(run_processor(f"ws://127.0.0.1:{port}/run", mode="mock", inputs=INPUTS, timeout_s=5))


# --- deadlines ----------------------------------------------------------------------------------------


def test_deadline_is_total_even_with_heartbeats() -> None:
    beats: list[int] = []

    async def script(ws: ServerConnection, seen: dict[str, Any]) -> None:
        await read_open(ws, seen)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(100):
                await ws.send(frame("Heartbeat", {"elapsed_ms": 0}))
                await asyncio.sleep(0.05)

    t0 = time.monotonic()
    with pytest.raises(RunTimeoutError, match=r"within 0\.6s") as ei:
        run_against(script, timeout_s=0.6, on_frame=lambda f: beats.append(1))
    elapsed = time.monotonic() - t0
    assert 0.55 < elapsed < 3, elapsed
    assert len(beats) >= 5  # the processor was alive; the deadline still held
    assert "running" in str(ei.value)


@pytest.mark.slow
def test_long_quiet_run_survives_with_heartbeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The original's 15 s per-frame idle limit killed quiet runs; here only the total deadline counts."""

    async def quiet(ctx: Any) -> dict[str, Any]:
        await asyncio.sleep(2.0)
        return {"done": True}

    reg = tmp_path / "registry.yaml"
    reg.write_text("ref: test/quiet@1\napi: {path: /run}\n")
    with ServerThread(create_app(quiet, reg, heartbeat_s=0.25)) as s:
        kinds: list[str] = []
        env = asyncio.run(
            run_processor(s.ws_url(), mode="mock", inputs={}, timeout_s=20, on_frame=lambda f: kinds.append(f["kind"]))
        )
        assert env["outputs"] == {"done": True}
        assert kinds.count("Heartbeat") >= 5


# --- fetch_health -------------------------------------------------------------------------------------------


def _health_app(status: int, body: Any, seen: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz(request: Request) -> Any:
        seen["auth"] = request.headers.get("authorization")
        if isinstance(body, str):
            return PlainTextResponse(body, status_code=status)
        return JSONResponse(body, status_code=status)

    return app


def test_fetch_health_against_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_DIGEST", "sha256:" + "d" * 64)
    reg = tmp_path / "registry.yaml"
    reg.write_text("ref: test/h@1\n")
    with ServerThread(create_app(lambda ctx: {}, reg)) as s:
        h = fetch_health(s.http_url)
        assert h["ok"] is True and h["ref"] == "test/h@1" and h["digest"] == "sha256:" + "d" * 64
        assert fetch_health(s.ws_url(""))["ok"] is True  # ws:// base URLs work too


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, {"error": "no"}, AuthRequiredError),
        (404, {}, NotRunningError),
        (500, {}, ProtocolError),
        (200, "plain", ProtocolError),
        (200, {"ok": False}, ProtocolError),
    ],
)
def test_fetch_health_errors(status: int, body: Any, error: type[Exception]) -> None:
    seen: dict[str, Any] = {}
    with ServerThread(_health_app(status, body, seen)) as s, pytest.raises(error):
        fetch_health(s.http_url, token="tok-1")
    assert seen["auth"] == "Bearer tok-1"


def test_fetch_health_unreachable() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(NotRunningError):
        fetch_health(f"http://127.0.0.1:{port}", timeout_s=3)


def test_the_client_and_the_runtime_speak_the_same_protocol() -> None:
    """protocol.py (product) and theory_runtime.frames (inside images) never import each other, so
    the wire constants are written twice on purpose; this keeps the two copies one contract."""
    from theory_runtime import frames

    from theory_deploy import protocol

    for name in (
        "PROTOCOL",
        "RUN_OPEN",
        "ACK",
        "TOKEN",
        "LOG",
        "EVENT",
        "HEARTBEAT",
        "RUN_RESULT",
        "SERVER_KINDS",
        "STREAM_KINDS",
        "MODES",
        "CLOSE_NORMAL",
        "CLOSE_PROTOCOL",
        "CLOSE_UNAUTHORIZED",
    ):
        assert getattr(protocol, name) == getattr(frames, name), name
