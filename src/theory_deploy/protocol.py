"""The `theory.run.v1` WebSocket client and its frame types (used by `localctl run` / `modalctl run`).

Wire format (the server side lives in runtime/theory_runtime; the two never import each other and
tests/test_protocol_client.py keeps the constants in step):

* Every frame is a JSON text message `{"kind": K, "content": {...}}`.
* The client offers the subprotocol `theory.run.v1` (plus `Authorization: Bearer <token>` when the
  processor names an auth secret) and sends one `RunOpen` `{"execution_id", "mode", "inputs"}`.
* The server answers `Ack`, streams any number of `Token` / `Log` / `Event` frames, sends a
  `Heartbeat` whenever the handler has been quiet for a while, and ends with exactly one `RunResult`
  whose content is the envelope `{status, execution_id, outputs, meta: {image_digest,
  env_fingerprint, duration_ms}, error?: {code, message}}`, then closes with 1000.

`run_processor` returns the envelope, also when its status is "error" for a run-level reason
(ERR_INPUTS, ERR_PROVIDER, ...): the caller turns that into a typed error with
`errors.error_for_code`. It raises for everything that means no trustworthy envelope arrived:
ProtocolError (refused handshake, malformed frames, closed without a result, a server-reported
ERR_WS_PROTOCOL), AuthRequiredError (HTTP 401, close 4401, ERR_UNAUTHORIZED), NotRunningError
(nothing listens at the URL), RunTimeoutError (the *total* deadline passed; heartbeats show the
processor is alive but never extend the deadline).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode

from .errors import (
    AuthRequiredError,
    NotRunningError,
    ProtocolError,
    RunTimeoutError,
    TheoryDeployError,
    UsageError,
)

PROTOCOL = "theory.run.v1"

# Frame kinds
RUN_OPEN = "RunOpen"
ACK = "Ack"
TOKEN = "Token"  # noqa: S105 (a frame kind, not a credential)
LOG = "Log"
EVENT = "Event"
HEARTBEAT = "Heartbeat"
RUN_RESULT = "RunResult"
SERVER_KINDS = frozenset({ACK, TOKEN, LOG, EVENT, HEARTBEAT, RUN_RESULT})
STREAM_KINDS = frozenset({TOKEN, LOG, EVENT, HEARTBEAT})  # passed to on_frame

MODES = ("mock", "real")

# Close codes
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHORIZED = 4401

# The largest frame (message) the client accepts; a bigger one ends the run with ERR_WS_PROTOCOL.
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_FRAME_BYTES_ENV = "THEORY_WS_MAX_FRAME_BYTES"
MAX_HEALTH_BYTES = 1024 * 1024  # a health answer is a small JSON object
USER_AGENT = "theory-deploy (theory.run.v1)"

OnFrame = Callable[[dict[str, Any]], Awaitable[None] | None]


def max_frame_bytes() -> int:
    """MAX_FRAME_BYTES, or THEORY_WS_MAX_FRAME_BYTES when set to a positive whole number."""
    raw = os.environ.get(MAX_FRAME_BYTES_ENV, "").strip()
    if not raw:
        return MAX_FRAME_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{MAX_FRAME_BYTES_ENV}={raw!r} is not a whole number of bytes.") from None
    if value <= 0:
        raise UsageError(f"{MAX_FRAME_BYTES_ENV}={raw!r} must be a positive number of bytes.")
    return value


def _bearer_headers(token: str | None) -> dict[str, str]:
    """`Authorization: Bearer <token>`, refusing (without printing it) a token no header can carry."""
    if not token:
        return {}
    bad = any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token) or token != token.strip() or not token.isascii()
    if bad:
        raise AuthRequiredError(
            "the endpoint's bearer token (THEORY_AUTH_TOKEN or the app's auth secret) contains a newline, "
            "a control character, surrounding whitespace or non-ASCII characters, so it cannot be sent as "
            "an HTTP header; refusing to use it (its value is not shown).",
            remedy="Set the token again without the stray character (e.g. `printf %s`, not `echo`).",
        )
    return {"Authorization": f"Bearer {token}"}


def ws_url_for(base_url: str, path: str = "/run") -> str:
    """`https://app.example/` + `/run` -> `wss://app.example/run` (http->ws, https->wss)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ProtocolError(f"Not an http(s) or ws(s) URL: {base_url!r}.")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def _http_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _body_error(body: bytes | bytearray | str | None) -> str:
    """The `error.message` of a JSON error envelope in a refusal body, if there is one."""
    if not body:
        return ""
    try:
        data = json.loads(body)
        msg = data.get("error", {}).get("message")
        return f": {msg}" if isinstance(msg, str) and msg else ""
    except (ValueError, AttributeError):
        return ""


def _check_envelope(env: Any, url: str) -> dict[str, Any]:
    if not isinstance(env, dict) or env.get("status") not in ("success", "error"):
        raise ProtocolError(f"{url} sent a RunResult without a valid envelope (status must be success|error).")
    if "meta" not in env or not isinstance(env.get("meta"), dict):
        raise ProtocolError(f"{url} sent a RunResult envelope without `meta`.")
    if env["status"] == "error":
        err = env.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("code"), str):
            raise ProtocolError(f"{url} sent an error envelope without error.code.")
        err.setdefault("message", "")
        if err["code"] == AuthRequiredError.code:
            raise AuthRequiredError(f"{url} refused the run: {err['message']}")
        if err["code"] == ProtocolError.code:
            raise ProtocolError(f"{url} reported a protocol error: {err['message']}")
    return env


class _Progress:
    """Where the run is, so a timeout can say where it stalled."""

    def __init__(self) -> None:
        self.phase = "connecting"
        self.last_frame_at: float | None = None
        self.frames = 0

    def describe(self) -> str:
        if self.last_frame_at is None:
            return self.phase
        ago = time.monotonic() - self.last_frame_at
        return f"{self.phase}; {self.frames} frame(s) received, the last {ago:.1f}s ago"


async def run_processor(
    ws_url: str,
    *,
    mode: str,
    inputs: Any,
    execution_id: str | None = None,
    timeout_s: float | None,
    token: str | None = None,
    on_frame: OnFrame | None = None,
) -> dict[str, Any]:
    """Run once over theory.run.v1 and return the RunResult envelope.

    `timeout_s` is the total deadline for connect + run + result (None: no deadline).
    `on_frame(frame)` (sync or async) is called for each Token/Log/Event/Heartbeat frame.
    """
    if mode not in MODES:
        raise UsageError(f"mode must be one of {list(MODES)}, not {mode!r}.")
    execution_id = execution_id or f"exec-{uuid.uuid4().hex}"
    progress = _Progress()
    try:
        async with asyncio.timeout(timeout_s):
            return await _run(ws_url, mode, inputs, execution_id, token, on_frame, progress)
    except TimeoutError:
        raise RunTimeoutError(
            f"No RunResult from {ws_url} within {timeout_s:g}s for execution {execution_id} ({progress.describe()})."
        ) from None


async def _run(
    url: str,
    mode: str,
    inputs: Any,
    execution_id: str,
    token: str | None,
    on_frame: OnFrame | None,
    progress: _Progress,
) -> dict[str, Any]:
    headers = _bearer_headers(token) or None
    limit = max_frame_bytes()
    try:
        ws = await connect(
            url,
            subprotocols=[PROTOCOL],  # type: ignore[list-item]
            additional_headers=headers,
            user_agent_header=USER_AGENT,
            open_timeout=None,  # the caller's total deadline covers it
            ping_interval=20,
            ping_timeout=120,  # generous: a busy processor must not be dropped for a late pong
            close_timeout=5,
            max_size=limit,
        )
    except InvalidStatus as e:
        status = e.response.status_code
        detail = _body_error(e.response.body)
        if status == 401:
            raise AuthRequiredError(f"{url} requires a bearer token (HTTP 401){detail}") from None
        if status == 404:
            raise NotRunningError(f"Nothing serves {url} (HTTP 404){detail}") from None
        raise ProtocolError(f"{url} refused the theory.run.v1 handshake (HTTP {status}){detail}") from None
    except InvalidURI:
        raise ProtocolError(f"Not a WebSocket URL: {url!r}.") from None
    except InvalidHandshake as e:
        raise ProtocolError(f"{url}: WebSocket handshake failed: {e}") from None
    except OSError as e:
        raise NotRunningError(f"Cannot connect to {url}: {e.strerror or e}") from None

    async with ws:
        if ws.subprotocol != PROTOCOL:
            raise ProtocolError(f"{url} accepted the WebSocket without the {PROTOCOL} subprotocol.")
        progress.phase = "waiting for Ack"
        open_frame = {
            "kind": RUN_OPEN,
            "content": {"execution_id": execution_id, "mode": mode, "inputs": inputs},
        }
        try:
            await ws.send(json.dumps(open_frame, ensure_ascii=False, separators=(",", ":")))
            async for raw in ws:
                progress.frames += 1
                progress.last_frame_at = time.monotonic()
                frame = _decode(raw, url)
                kind = frame["kind"]
                if kind == ACK:
                    progress.phase = "running"
                elif kind in STREAM_KINDS:
                    if on_frame is not None:
                        res = on_frame(frame)
                        if inspect.isawaitable(res):
                            await res
                elif kind == RUN_RESULT:
                    return _check_envelope(frame.get("content"), url)
                else:
                    raise ProtocolError(f"{url} sent a frame of unknown kind {str(kind)[:40]!r}.")
        except ConnectionClosed:
            pass
        except TheoryDeployError:
            raise
        except OSError as e:
            raise ProtocolError(f"{url}: connection lost before the RunResult: {e.strerror or e}") from None
    sent = ws.protocol.close_sent
    if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
        raise ProtocolError(
            f"{url} sent a frame larger than the {limit}-byte limit for theory.run.v1 frames "
            f"({progress.describe()}); the run was abandoned.",
            remedy=f"Have the processor send smaller frames, or raise the limit with {MAX_FRAME_BYTES_ENV}=<bytes>.",
        )
    rcvd = ws.protocol.close_rcvd
    code = rcvd.code if rcvd is not None else None
    reason = f" ({rcvd.reason})" if rcvd is not None and rcvd.reason else ""
    if code == CLOSE_UNAUTHORIZED:
        raise AuthRequiredError(f"{url} closed the run with 4401 (unauthorized){reason}.")
    raise ProtocolError(
        f"{url} closed the connection (code {code if code is not None else 'none'}{reason}) "
        f"before sending a RunResult ({progress.describe()})."
    )


def _decode(raw: str | bytes, url: str) -> dict[str, Any]:
    if isinstance(raw, bytes):
        raise ProtocolError(f"{url} sent a binary frame; theory.run.v1 frames are JSON text.")
    try:
        frame = json.loads(raw)
    except ValueError:
        raise ProtocolError(f"{url} sent a frame that is not JSON.") from None
    except RecursionError:
        raise ProtocolError(f"{url} sent a frame nested too deeply to parse.") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("kind"), str):
        raise ProtocolError(f"{url} sent a frame without a string `kind`.")
    return frame


def fetch_health(
    base_url: str, token: str | None = None, *, path: str = "/healthz", timeout_s: float = 10.0
) -> dict[str, Any]:
    """GET the processor's health endpoint (synchronous): `{"ok": true, "ref", "digest", ...}`."""
    url = _http_base(base_url) + path
    headers = {**_bearer_headers(token), "User-Agent": USER_AGENT}
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            with client.stream("GET", url, headers=headers) as resp:
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_HEALTH_BYTES:
                        raise ProtocolError(
                            f"{url} answered more than the {MAX_HEALTH_BYTES}-byte limit for a health check."
                        )
    except httpx.TimeoutException:
        raise RunTimeoutError(f"{url} did not answer within {timeout_s:g}s.") from None
    except httpx.HTTPError as e:
        raise NotRunningError(f"Cannot reach {url}: {type(e).__name__}: {e}") from None
    if resp.status_code == 401:
        raise AuthRequiredError(f"{url} requires a bearer token (HTTP 401).")
    if resp.status_code == 404:
        raise NotRunningError(f"Nothing serves {url} (HTTP 404).")
    if resp.status_code != 200:
        raise ProtocolError(f"{url} answered HTTP {resp.status_code}.")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError(f"{url} did not answer JSON.") from None
    if not isinstance(data, dict) or data.get("ok") is not True:
        raise ProtocolError(f"{url} did not report ok: true.")
    return data


__all__ = [
    "ACK",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL",
    "CLOSE_UNAUTHORIZED",
    "EVENT",
    "HEARTBEAT",
    "LOG",
    "MODES",
    "PROTOCOL",
    "RUN_OPEN",
    "RUN_RESULT",
    "SERVER_KINDS",
    "STREAM_KINDS",
    "TOKEN",
    "fetch_health",
    "run_processor",
    "ws_url_for",
]
