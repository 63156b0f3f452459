"""theory_runtime (the processors' theory.run.v1 server), over real WebSockets on loopback.

A small test processor (`test/echo@1`) is served by uvicorn in a thread; raw `websockets` clients
check the wire format byte by byte, and the product client (`theory_deploy.protocol`) checks the
round trip.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("theory_runtime") is None:  # not pip-installed: use the source tree
    sys.path.insert(0, str(REPO / "runtime"))

import theory_runtime  # noqa: E402
from theory_runtime import InputsError, ProviderError, RunTimeout, create_app, env_fingerprint  # noqa: E402
from theory_runtime.registry import RegistryFileError  # noqa: E402
from theory_runtime.testing import ServerThread  # noqa: E402

from tests.helpers import assert_no_canary, make_canary  # noqa: E402
from theory_deploy.errors import AuthRequiredError, ProtocolError  # noqa: E402
from theory_deploy.protocol import run_processor  # noqa: E402

PROTO = "theory.run.v1"

REGISTRY = """\
ref: test/echo@1
runtime: {cpu: 1, memory_gb: 1, timeout_s: %(timeout_s)s, gpu: null}
secrets: {required: [ECHO_SECRET], optional: [ECHO_OPTIONAL]}
api: {protocol: ws, path: /run, healthz: /healthz, auth_secret: %(auth)s}
inputs:
  $schema: "http://json-schema.org/draft-07/schema#"
  type: object
  additionalProperties: false
  required: [schema, params]
  properties:
    schema: {const: v1}
    params:
      type: object
      additionalProperties: false
      properties:
        text: {type: string}
        sleep_s: {type: number}
        tokens: {type: integer, minimum: 0}
        fail: {type: string}
"""

cancelled = threading.Event()


async def echo_handler(ctx: theory_runtime.RunContext) -> Any:
    p = ctx.inputs["params"]
    fail = p.get("fail")
    if fail == "inputs":
        raise InputsError("the handler did not like /params/text")
    if fail == "provider":
        raise ProviderError("upstream said no")
    if fail == "timeout":
        raise RunTimeout("upstream timed out")
    if fail == "missing_secret":
        ctx.secret("THEORY_TEST_NEVER_SET")
    if fail == "boom":
        raise ValueError("kaboom with " + os.environ.get("ECHO_SECRET", ""))
    if fail == "leak":
        secret = ctx.secret("ECHO_SECRET")
        ctx.token(secret)
        ctx.log(f"the key is {secret}")
        ctx.event("leak", {"value": secret})
        return {"echo": secret}
    if fail == "not_dict":
        return [1, 2]
    for i in range(p.get("tokens", 0)):
        ctx.token(f"t{i} ")
    if p.get("sleep_s"):
        try:
            await asyncio.sleep(p["sleep_s"])
        except asyncio.CancelledError:
            cancelled.set()
            raise
    ctx.log("done")
    ctx.event("finished", {"n": p.get("tokens", 0)})
    return {"echo": p.get("text"), "mode": ctx.mode}


def sync_handler(ctx: theory_runtime.RunContext) -> dict[str, Any]:
    for i in range(3):
        ctx.token(f"s{i}")
        time.sleep(0.05)
    return {"thread": threading.current_thread().name != "MainThread"}


def inputs(**params: Any) -> dict[str, Any]:
    return {"schema": "v1", "params": params}


def run_open(execution_id: str = "exec-1", mode: str = "mock", **params: Any) -> str:
    return json.dumps(
        {
            "kind": "RunOpen",
            "content": {"execution_id": execution_id, "mode": mode, "inputs": inputs(**params)},
        }
    )


@pytest.fixture
def make_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    servers: list[ServerThread] = []

    def _make(
        handler: Any = echo_handler,
        *,
        env: dict[str, str] | None = None,
        timeout_s: float = 5,
        auth: str | None = None,
        **kw: Any,
    ) -> ServerThread:
        """auth: the registry's api.auth_secret (None: no auth declared)."""
        for name in ("ECHO_AUTH", "ECHO_SECRET", "IMAGE_DIGEST", "THEORY_HEARTBEAT_S", "THEORY_WS_DENIAL"):
            monkeypatch.delenv(name, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        reg = tmp_path / f"registry-{len(servers)}.yaml"
        reg.write_text(REGISTRY % {"timeout_s": timeout_s, "auth": auth or "null"})
        s = ServerThread(create_app(handler, reg, **kw)).start()
        servers.append(s)
        return s

    yield _make
    for s in servers:
        s.stop()


async def collect(
    url: str, first: str | bytes | None, *, headers: dict[str, str] | None = None, bound_s: float = 5.0
) -> tuple[list[dict[str, Any]], int | None]:
    """Send `first`, read every frame until the server closes; (frames, close code). Fails if it hangs."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(bound_s):
        async with websockets.connect(url, subprotocols=[PROTO], additional_headers=headers) as ws:
            assert ws.subprotocol == PROTO
            if first is not None:
                await ws.send(first)
            try:
                async for raw in ws:
                    got.append(json.loads(raw))
            except ConnectionClosed:
                pass
            return got, ws.close_code


# --- health, handshake ------------------------------------------------------------------------------


def test_healthz_reports_ref_and_digest(make_server: Any) -> None:
    s = make_server(env={"IMAGE_DIGEST": "sha256:" + "a" * 64, "ECHO_AUTH": "tok-123456"}, auth="ECHO_AUTH")
    r = httpx.get(s.http_url + "/healthz")
    assert r.status_code == 200  # health stays open even when runs need a token
    assert r.json() == {"ok": True, "ref": "test/echo@1", "digest": "sha256:" + "a" * 64, "protocol": PROTO}


def test_healthz_digest_null_without_env(make_server: Any) -> None:
    s = make_server()
    assert httpx.get(s.http_url + "/healthz").json()["digest"] is None


@pytest.mark.parametrize("offered", [None, ["other.v1"]])
def test_handshake_refused_without_subprotocol(make_server: Any, offered: list[str] | None) -> None:
    s = make_server()

    async def go() -> None:
        with pytest.raises(InvalidStatus) as ei:
            async with asyncio.timeout(5):
                await websockets.connect(s.ws_url(), subprotocols=offered)
        assert ei.value.response.status_code == 400
        body = json.loads(ei.value.response.body)
        assert body["status"] == "error" and body["error"]["code"] == "ERR_WS_PROTOCOL"
        assert PROTO in body["error"]["message"]

    asyncio.run(go())


def test_handshake_refusal_without_denial_extension_is_403(make_server: Any) -> None:
    s = make_server(env={"THEORY_WS_DENIAL": "0"})

    async def go() -> None:
        with pytest.raises(InvalidStatus) as ei:
            await websockets.connect(s.ws_url())
        assert ei.value.response.status_code == 403
        with pytest.raises(ProtocolError, match="HTTP 403"):
            # the product client always offers the subprotocol; force a refusal via a wrong path
            await run_processor(s.ws_url("/nope"), mode="mock", inputs=inputs(), timeout_s=5)

    asyncio.run(go())


# --- malformed frames --------------------------------------------------------------------------------

MALFORMED = {
    "not-json": "this is not json",
    "json-array": "[1, 2]",
    "unknown-kind": json.dumps({"kind": "Hello", "content": {}}),
    "missing-content": json.dumps({"kind": "RunOpen"}),
    "content-not-object": json.dumps({"kind": "RunOpen", "content": "x"}),
    "missing-execution-id": json.dumps({"kind": "RunOpen", "content": {"mode": "mock", "inputs": inputs()}}),
    "missing-inputs": json.dumps({"kind": "RunOpen", "content": {"execution_id": "e", "mode": "mock"}}),
    "bad-mode": json.dumps({"kind": "RunOpen", "content": {"execution_id": "e", "mode": "fast", "inputs": {}}}),
    "binary": b'{"kind":"RunOpen"}',
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_first_frame_gets_error_result_and_protocol_close(make_server: Any, name: str) -> None:
    s = make_server()
    t0 = time.monotonic()
    frames, code = asyncio.run(collect(s.ws_url(), MALFORMED[name], bound_s=5))
    assert time.monotonic() - t0 < 5
    assert [f["kind"] for f in frames] == ["RunResult"]
    env = frames[0]["content"]
    assert env["status"] == "error" and env["error"]["code"] == "ERR_WS_PROTOCOL"
    assert env["meta"]["env_fingerprint"].startswith("sha256:")
    assert code == 4400


def test_no_run_open_frame_times_out_with_protocol_error(make_server: Any) -> None:
    s = make_server(open_timeout_s=0.3)
    frames, code = asyncio.run(collect(s.ws_url(), None, bound_s=5))
    assert frames[-1]["content"]["error"]["code"] == "ERR_WS_PROTOCOL"
    assert "RunOpen" in frames[-1]["content"]["error"]["message"]
    assert code == 4400


# --- happy path ----------------------------------------------------------------------------------------


def test_frame_sequence_and_envelope(make_server: Any) -> None:
    digest = "sha256:" + "b" * 64
    s = make_server(env={"IMAGE_DIGEST": digest})
    frames, code = asyncio.run(collect(s.ws_url(), run_open("exec-42", tokens=3, text="hi")))
    kinds = [f["kind"] for f in frames]
    assert kinds == ["Ack", "Token", "Token", "Token", "Log", "Event", "RunResult"]
    assert code == 1000
    ack = frames[0]["content"]
    assert ack["execution_id"] == "exec-42" and ack["ref"] == "test/echo@1" and ack["image_digest"] == digest
    assert "".join(f["content"]["text"] for f in frames if f["kind"] == "Token") == "t0 t1 t2 "
    env = frames[-1]["content"]
    assert env["status"] == "success" and env["execution_id"] == "exec-42"
    assert env["outputs"] == {"echo": "hi", "mode": "mock"}
    assert "error" not in env
    meta = env["meta"]
    assert meta["image_digest"] == digest
    assert meta["env_fingerprint"] == env_fingerprint("test/echo@1", digest)
    assert isinstance(meta["duration_ms"], int) and meta["duration_ms"] >= 0


def test_product_client_round_trip(make_server: Any) -> None:
    s = make_server()
    seen: list[dict[str, Any]] = []
    env = asyncio.run(
        run_processor(
            s.ws_url(),
            mode="mock",
            inputs=inputs(tokens=2, text="x"),
            execution_id="exec-rt",
            timeout_s=10,
            on_frame=seen.append,
        )
    )
    assert env["status"] == "success" and env["execution_id"] == "exec-rt"
    assert [f["kind"] for f in seen] == ["Token", "Token", "Log", "Event"]


def test_sync_handler_runs_in_a_thread_and_streams(make_server: Any) -> None:
    s = make_server(sync_handler)
    frames, code = asyncio.run(collect(s.ws_url(), run_open()))
    assert [f["content"]["text"] for f in frames if f["kind"] == "Token"] == ["s0", "s1", "s2"]
    assert frames[-1]["content"]["outputs"] == {"thread": True}
    assert code == 1000


# --- inputs and error codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "pointer"),
    [
        ({"schema": "v1", "params": {"text": 5}}, "/params/text"),
        ({"schema": "v1", "params": {"tokens": -1}}, "/params/tokens"),
        ({"schema": "v2", "params": {}}, "/schema"),
        ({"params": {}}, "/schema"),
        ({"schema": "v1", "params": {}, "extra": 1}, ""),
    ],
)
def test_inputs_validated_with_json_pointer(make_server: Any, bad: dict[str, Any], pointer: str) -> None:
    s = make_server()
    msg = json.dumps({"kind": "RunOpen", "content": {"execution_id": "e", "mode": "mock", "inputs": bad}})
    frames, code = asyncio.run(collect(s.ws_url(), msg))
    env = frames[-1]["content"]
    assert env["error"]["code"] == "ERR_INPUTS"
    assert env["error"]["details"]["pointer"] == pointer
    assert f"at {pointer or '/'}:" in env["error"]["message"]
    assert code == 1000  # a run-level error is a normal end of the protocol


@pytest.mark.parametrize(
    ("fail", "code"),
    [
        ("inputs", "ERR_INPUTS"),
        ("provider", "ERR_PROVIDER"),
        ("timeout", "ERR_TIMEOUT"),
        ("missing_secret", "ERR_MISSING_SECRET"),
        ("boom", "ERR_RUNTIME"),
        ("not_dict", "ERR_RUNTIME"),
    ],
)
def test_handler_errors_map_to_codes(make_server: Any, fail: str, code: str) -> None:
    s = make_server()
    frames, close = asyncio.run(collect(s.ws_url(), run_open(fail=fail)))
    env = frames[-1]["content"]
    assert env["status"] == "error" and env["error"]["code"] == code and env["outputs"] is None
    if fail == "missing_secret":
        assert "THEORY_TEST_NEVER_SET" in env["error"]["message"]
    if fail == "boom":
        assert env["error"]["message"].startswith("ValueError: kaboom")
    assert close == 1000


def test_real_mode_checks_required_secrets_first(make_server: Any) -> None:
    s = make_server()
    frames, _ = asyncio.run(collect(s.ws_url(), run_open(mode="real", text="x")))
    err = frames[-1]["content"]["error"]
    assert err["code"] == "ERR_MISSING_SECRET" and "ECHO_SECRET" in err["message"]
    # mock mode never needs them
    frames, _ = asyncio.run(collect(s.ws_url(), run_open(mode="mock", text="x")))
    assert frames[-1]["content"]["status"] == "success"


def test_registry_timeout_gives_err_timeout(make_server: Any) -> None:
    s = make_server(timeout_s=0.3)
    t0 = time.monotonic()
    frames, _ = asyncio.run(collect(s.ws_url(), run_open(sleep_s=5)))
    assert time.monotonic() - t0 < 3
    err = frames[-1]["content"]["error"]
    assert err["code"] == "ERR_TIMEOUT" and "timeout_s" in err["message"]


# --- heartbeats, concurrency, cancellation ----------------------------------------------------------


@pytest.mark.slow
def test_heartbeats_while_handler_is_quiet(make_server: Any) -> None:
    s = make_server(env={"THEORY_HEARTBEAT_S": "0.2"})
    frames, code = asyncio.run(collect(s.ws_url(), run_open(sleep_s=1.3), bound_s=10))
    kinds = [f["kind"] for f in frames]
    assert kinds[0] == "Ack" and kinds[-1] == "RunResult" and code == 1000
    assert kinds.count("Heartbeat") >= 4, kinds
    assert frames[0]["content"]["heartbeat_s"] == 0.2
    beats = [f["content"]["elapsed_ms"] for f in frames if f["kind"] == "Heartbeat"]
    assert beats == sorted(beats)
    # and through the product client: heartbeats reach on_frame, the run succeeds
    seen: list[str] = []
    env = asyncio.run(
        run_processor(
            s.ws_url(),
            mode="mock",
            inputs=inputs(sleep_s=0.7),
            timeout_s=10,
            on_frame=lambda f: seen.append(f["kind"]),
        )
    )
    assert env["status"] == "success" and seen.count("Heartbeat") >= 2


def test_hundred_concurrent_runs(make_server: Any) -> None:
    s = make_server()

    async def go() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *[
                run_processor(
                    s.ws_url(),
                    mode="mock",
                    inputs=inputs(text=f"n{i}", tokens=3, sleep_s=0.3),
                    execution_id=f"exec-{i}",
                    timeout_s=60,
                )
                for i in range(100)
            ]
        )

    t0 = time.monotonic()
    envs = asyncio.run(go())
    elapsed = time.monotonic() - t0
    assert [e["status"] for e in envs] == ["success"] * 100
    assert [e["execution_id"] for e in envs] == [f"exec-{i}" for i in range(100)]
    assert [e["outputs"]["echo"] for e in envs] == [f"n{i}" for i in range(100)]
    assert elapsed < 15, f"100 runs of 0.3 s took {elapsed:.1f}s: not concurrent"


def test_client_disconnect_cancels_the_handler(make_server: Any) -> None:
    s = make_server()
    cancelled.clear()

    async def go() -> None:
        async with websockets.connect(s.ws_url(), subprotocols=[PROTO]) as ws:
            await ws.send(run_open(sleep_s=30))
            assert json.loads(await ws.recv())["kind"] == "Ack"

    asyncio.run(go())
    assert cancelled.wait(5), "the handler kept running after the client went away"


# --- auth ------------------------------------------------------------------------------------------------


def test_bearer_auth_required_and_accepted(make_server: Any) -> None:
    token = make_canary()
    s = make_server(env={"ECHO_AUTH": token}, auth="ECHO_AUTH")

    async def go() -> None:
        for headers in (None, {"Authorization": "Bearer wrong-token"}, {"Authorization": token}):
            with pytest.raises(InvalidStatus) as ei:
                await websockets.connect(s.ws_url(), subprotocols=[PROTO], additional_headers=headers)
            assert ei.value.response.status_code == 401
            body = json.loads(ei.value.response.body)
            assert body["error"]["code"] == "ERR_UNAUTHORIZED"
            assert_no_canary(bytes(ei.value.response.body), [token])
        with pytest.raises(AuthRequiredError):
            await run_processor(s.ws_url(), mode="mock", inputs=inputs(), timeout_s=5)
        with pytest.raises(AuthRequiredError):
            await run_processor(s.ws_url(), mode="mock", inputs=inputs(), timeout_s=5, token="nope")
        env = await run_processor(s.ws_url(), mode="mock", inputs=inputs(text="ok"), timeout_s=5, token=token)
        assert env["status"] == "success"

    asyncio.run(go())
    r = httpx.post(s.http_url + "/invoke", json={"mode": "mock", "inputs": inputs()})
    assert r.status_code == 401 and r.json()["error"]["code"] == "ERR_UNAUTHORIZED"
    r = httpx.post(
        s.http_url + "/invoke",
        json={"mode": "mock", "inputs": inputs(text="y")},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200 and r.json()["outputs"]["echo"] == "y"


def test_auth_without_denial_extension_closes_4401(make_server: Any) -> None:
    token = make_canary()
    s = make_server(env={"ECHO_AUTH": token, "THEORY_WS_DENIAL": "0"}, auth="ECHO_AUTH")
    frames, code = asyncio.run(collect(s.ws_url(), None))
    assert code == 4401
    assert frames[-1]["content"]["error"]["code"] == "ERR_UNAUTHORIZED"
    with pytest.raises(AuthRequiredError):
        asyncio.run(run_processor(s.ws_url(), mode="mock", inputs=inputs(), timeout_s=5))
    env = asyncio.run(run_processor(s.ws_url(), mode="mock", inputs=inputs(), timeout_s=5, token=token))
    assert env["status"] == "success"


calls: list[str] = []


def counting_handler(ctx: theory_runtime.RunContext) -> dict[str, Any]:
    calls.append(ctx.execution_id)
    return {"ran": True}


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_declared_auth_without_its_value_refuses_every_run(make_server: Any, value: str | None) -> None:
    """api.auth_secret declared but its value missing (an empty placeholder before sync-secrets):
    locked, never open. Every /run and /invoke is refused, whatever token is sent; /healthz answers."""
    calls.clear()
    env = {} if value is None else {"ECHO_AUTH": value}
    s = make_server(counting_handler, env=env, auth="ECHO_AUTH")
    no_deny = make_server(counting_handler, env={**env, "THEORY_WS_DENIAL": "0"}, auth="ECHO_AUTH")
    tokens = [None, "", "anything", value or ""]

    def check_error(err: dict[str, Any]) -> None:
        assert err["code"] == "ERR_UNAUTHORIZED"
        assert "ECHO_AUTH" in err["message"] and "not set" in err["message"]
        assert "sync-secrets" in err["message"]

    def headers(tok: str | None) -> dict[str, str] | None:  # "" sends a bare `Bearer` (HTTP trims values)
        return None if tok is None else {"Authorization": f"Bearer {tok}".strip()}

    r = httpx.get(s.http_url + "/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True

    async def go() -> None:
        for tok in tokens:
            with pytest.raises(InvalidStatus) as ei:
                await websockets.connect(s.ws_url(), subprotocols=[PROTO], additional_headers=headers(tok))
            assert ei.value.response.status_code == 401
            check_error(json.loads(ei.value.response.body)["error"])
            frames, code = await collect(no_deny.ws_url(), None, headers=headers(tok))
            assert code == 4401
            assert [f["kind"] for f in frames] == ["RunResult"]
            check_error(frames[0]["content"]["error"])
        for tok in ("anything", ""):
            with pytest.raises(AuthRequiredError, match="ECHO_AUTH"):
                await run_processor(s.ws_url(), mode="mock", inputs=inputs(), timeout_s=5, token=tok or None)

    asyncio.run(go())
    for tok in tokens:
        r = httpx.post(s.http_url + "/invoke", json={"mode": "mock", "inputs": inputs()}, headers=headers(tok))
        assert r.status_code == 401, r.text
        check_error(r.json()["error"])
    assert calls == [], "the handler ran without auth"


def test_declared_auth_secret_missing_is_logged_at_startup(make_server: Any) -> None:
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    grab = Grab()
    logging.getLogger("theory_runtime").addHandler(grab)
    try:
        make_server(auth="ECHO_AUTH")
    finally:
        logging.getLogger("theory_runtime").removeHandler(grab)
    assert any("ECHO_AUTH is not set" in line and "refusing" in line for line in lines), lines


def test_auth_token_is_compared_trimmed(make_server: Any) -> None:
    """A secret value with a trailing newline (pasted from a file) still matches the header's token."""
    token = make_canary()
    s = make_server(env={"ECHO_AUTH": token + "\n"}, auth="ECHO_AUTH")
    r = httpx.post(
        s.http_url + "/invoke",
        json={"mode": "mock", "inputs": inputs(text="t")},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    r = httpx.post(s.http_url + "/invoke", json={"mode": "mock", "inputs": inputs()})
    assert r.status_code == 401 and "not set" not in r.json()["error"]["message"]


# --- POST /invoke ------------------------------------------------------------------------------------------


def test_invoke_endpoint(make_server: Any) -> None:
    s = make_server()
    r = httpx.post(s.http_url + "/invoke", json={"mode": "mock", "inputs": inputs(text="z", tokens=2)})
    assert r.status_code == 200
    env = r.json()
    assert env["status"] == "success" and env["outputs"] == {"echo": "z", "mode": "mock"}
    assert env["execution_id"].startswith("exec-")
    r = httpx.post(
        s.http_url + "/invoke",
        json={"kind": "RunOpen", "content": {"execution_id": "e9", "mode": "mock", "inputs": inputs()}},
    )
    assert r.status_code == 200 and r.json()["execution_id"] == "e9"
    r = httpx.post(s.http_url + "/invoke", json={"mode": "mock", "inputs": {"schema": "v1", "params": {"text": 1}}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "ERR_INPUTS"
    r = httpx.post(s.http_url + "/invoke", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "ERR_WS_PROTOCOL"
    r = httpx.post(s.http_url + "/invoke", json={"mode": "mock", "inputs": inputs(fail="provider")})
    assert r.status_code == 502 and r.json()["error"]["code"] == "ERR_PROVIDER"


# --- secrets ----------------------------------------------------------------------------------------------


def test_secret_values_never_leave_the_process(make_server: Any) -> None:
    secret, auth = make_canary(), make_canary()
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    grab = Grab()
    for name in ("theory_runtime", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addHandler(grab)
    try:
        s = make_server(env={"ECHO_SECRET": secret, "ECHO_AUTH": auth}, auth="ECHO_AUTH")
        texts: list[str] = []
        for fail in ("leak", "boom"):
            for mode in ("mock", "real"):
                frames, _ = asyncio.run(
                    collect(
                        s.ws_url(),
                        run_open(mode=mode, fail=fail),
                        headers={"Authorization": f"Bearer {auth}"},
                    )
                )
                texts.append(json.dumps(frames))
                assert frames[-1]["kind"] == "RunResult"
        r = httpx.post(
            s.http_url + "/invoke",
            json={"mode": "real", "inputs": inputs(fail="boom")},
            headers={"Authorization": f"Bearer {auth}"},
        )
        texts.append(r.text)
    finally:
        for name in ("theory_runtime", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).removeHandler(grab)
    assert "***" in texts[0]  # the leak attempt was masked, not dropped
    assert lines, "expected run log lines"
    for text in [*texts, *lines]:
        assert_no_canary(text, [secret, auth])


def test_env_fingerprint_is_stable_and_ignores_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    a = env_fingerprint("test/echo@1", "sha256:" + "c" * 64)
    monkeypatch.setenv("OPENAI_API_KEY", make_canary())
    assert env_fingerprint("test/echo@1", "sha256:" + "c" * 64) == a
    assert env_fingerprint("test/echo@2", "sha256:" + "c" * 64) != a
    assert env_fingerprint("test/echo@1", None) != a
    assert a.startswith("sha256:") and len(a) == 7 + 64


# --- registry.yaml -----------------------------------------------------------------------------------------


def test_bad_registry_fails_at_startup(tmp_path: Path) -> None:
    p = tmp_path / "registry.yaml"
    p.write_text("ref: x/y@1\ninputs: {type: 12}\n")
    with pytest.raises(RegistryFileError, match="not a valid JSON Schema"):
        create_app(echo_handler, p)
    p.write_text("inputs: {}\n")
    with pytest.raises(RegistryFileError, match="ref"):
        create_app(echo_handler, p)
    with pytest.raises(RegistryFileError, match="cannot read"):
        create_app(echo_handler, tmp_path / "missing.yaml")


# --- processor.json: registry.yaml as images carry it (python -m theory_runtime.spec export) -----------------

LITELLM_REGISTRY = REPO / "processors" / "llm" / "litellm" / "registry.yaml"


def test_spec_export_drops_pins_and_is_canonical(tmp_path: Path) -> None:
    from theory_runtime.spec import export

    src = tmp_path / "registry.yaml"
    src.write_text(LITELLM_REGISTRY.read_text())
    out = tmp_path / "out" / "processor.json"
    body = export(src, out)
    assert out.read_bytes() == body and body.endswith(b"}\n") and not body.endswith(b"\n\n")
    assert out.stat().st_mtime == 0 and (out.stat().st_mode & 0o777) == 0o644
    data = json.loads(body)
    assert "image" not in data and "build" not in data
    assert set(data) == {"ref", "runtime", "secrets", "api", "inputs", "outputs"}
    assert body == (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    assert b"sha256:" not in body and b"ghcr.io" not in body

    # a pin-only change (and comments, key order) gives the same bytes; an inputs change does not
    pinned = src.read_text().replace("amd64: null", "amd64: ghcr.io/theory-deploy/llm-litellm@sha256:" + "1" * 64, 1)
    assert pinned != src.read_text()
    src.write_text("# a comment\n" + pinned)
    assert export(src, tmp_path / "p2.json") == body
    src.write_text(pinned.replace("content: {type: string}", "content: {type: string, description: said}"))
    assert export(src, tmp_path / "p3.json") != body


def test_server_serves_processor_json_like_registry_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from theory_runtime.registry import load_registry
    from theory_runtime.spec import export

    for name in ("ECHO_AUTH", "ECHO_SECRET", "IMAGE_DIGEST"):
        monkeypatch.delenv(name, raising=False)
    src = tmp_path / "registry.yaml"
    src.write_text(REGISTRY % {"timeout_s": 5, "auth": "null"})
    dest = tmp_path / "processor.json"
    export(src, dest)
    a, b = load_registry(src), load_registry(dest)
    assert (a.ref, a.api_path, a.auth_secret, a.inputs_schema, a.required_secrets, a.timeout_s) == (
        b.ref,
        b.api_path,
        b.auth_secret,
        b.inputs_schema,
        b.required_secrets,
        b.timeout_s,
    )
    with ServerThread(create_app(echo_handler, dest)) as s:
        env = asyncio.run(run_processor(s.ws_url(), mode="mock", inputs=inputs(text="j"), timeout_s=5))
        assert env["status"] == "success" and env["outputs"]["echo"] == "j"
        bad = httpx.post(s.http_url + "/invoke", json={"mode": "mock", "inputs": {"schema": "v2"}})
        assert bad.status_code == 422


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("ref: x/y@1\ninputs: {type: 12}\n", "not a valid JSON Schema"),
        ("inputs: {}\n", "ref"),
        ("ref: x/y@1\ninputs: {type: object}\noutputs: {when: 2024-01-01}\n", "no JSON form"),
        ("ref: x/y@1\ninputs: {type: object, properties: {1: {type: string}}}\n", "not a string"),
        ("- a list\n", "mapping"),
    ],
)
def test_spec_export_refuses_what_the_server_would(tmp_path: Path, text: str, match: str) -> None:
    src = tmp_path / "registry.yaml"
    src.write_text(text)
    dest = tmp_path / "processor.json"
    proc = subprocess.run(
        [sys.executable, "-m", "theory_runtime.spec", "export", str(src), str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO / "runtime")},
    )
    assert proc.returncode == 1, proc.stderr
    assert match in proc.stderr and "Traceback" not in proc.stderr
    assert not dest.exists() and list(tmp_path.iterdir()) == [src]


def test_spec_export_usage(tmp_path: Path) -> None:
    from theory_runtime.spec import main

    assert main(["export", str(tmp_path / "a.yaml")]) == 2
    assert main(["import", "a", "b"]) == 2
    assert main(["export", str(tmp_path / "missing.yaml"), str(tmp_path / "x.json")]) == 1
