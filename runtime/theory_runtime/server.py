"""The theory.run.v1 server: `create_app(handler, spec_path) -> FastAPI`.

`spec_path` is the image's `processor.json` (registry.yaml exported by `theory_runtime.spec`,
without the pins) or, in source trees and tests, `registry.yaml` itself.

A handler is `handler(ctx: RunContext) -> dict` (sync or async); the dict it returns is the run's
`outputs`. It streams with `ctx.token(text)`, `ctx.log(message)`, `ctx.event(name, data)`, reads
secrets with `ctx.secret(NAME)` and raises `theory_runtime.errors.*` to choose an error code.
Sync handlers run in a worker thread; the ctx methods are thread-safe.

Environment read at startup:
  IMAGE_DIGEST            reported by /healthz, Ack and meta.image_digest (null when unset)
  THEORY_HEARTBEAT_S      seconds of handler silence before a Heartbeat frame (default 10; 0 = off)
  THEORY_OPEN_TIMEOUT_S   seconds to wait for the RunOpen frame (default 30)
  THEORY_WS_DENIAL        "0" to never use the WebSocket Denial Response extension (tests the
                          fallback used on ASGI servers without it)
  <api.auth_secret>       when the registry names one, bearer auth is required with its value as
                          the token. Declared auth is required auth: if the variable is unset or
                          empty, /run and /invoke refuse every request (ERR_UNAUTHORIZED, naming the
                          variable); /healthz stays open. Never an open endpoint by omission.
See frames.py for the wire format.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from . import __version__, frames
from .errors import MissingSecretError, ProtocolViolation, RunError, Unauthorized
from .registry import InputsValidator, Registry, load_registry
from .scrub import Scrubber, ScrubFilter

log = logging.getLogger("theory_runtime")

Handler = Callable[["RunContext"], Any]

_HTTP_STATUS = {
    "ERR_INPUTS": 422,
    "ERR_MISSING_SECRET": 500,
    "ERR_PROVIDER": 502,
    "ERR_TIMEOUT": 504,
    "ERR_RUNTIME": 500,
    "ERR_WS_PROTOCOL": 400,
    "ERR_UNAUTHORIZED": 401,
}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def env_fingerprint(ref: str, digest: str | None) -> str:
    """A stable hash of non-secret runtime facts: interpreter, platform, installed packages, ref, digest.

    Never includes environment variable values, so no secret can influence (or leak through) it.
    """
    packages = sorted(f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in importlib.metadata.distributions())
    facts = {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.system(),
        "libc": "-".join(platform.libc_ver()),
        "runtime": __version__,
        "ref": ref,
        "digest": digest,
        "packages": packages,
    }
    return "sha256:" + hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number", name, raw)
        return default


class RunContext:
    """What a handler sees of one run."""

    def __init__(
        self,
        *,
        execution_id: str,
        mode: str,
        inputs: Any,
        registry: Registry,
        image_digest: str | None,
        scrubber: Scrubber,
        emit: Callable[[dict[str, Any]], None],
        deadline: float | None,
    ):
        self.execution_id = execution_id
        self.mode = mode
        self.inputs = inputs
        self.registry = registry
        self.ref = registry.ref
        self.image_digest = image_digest
        self._scrubber = scrubber
        self._emit = emit
        self._deadline = deadline

    # streaming -------------------------------------------------------------------------------------
    def token(self, text: str) -> None:
        if text:
            self._emit({"kind": frames.TOKEN, "content": {"text": str(text)}})

    def log(self, message: str, level: str = "info") -> None:
        level = level if level in _LOG_LEVELS else "info"
        self._emit({"kind": frames.LOG, "content": {"level": level, "message": self._scrubber.message(str(message))}})

    def event(self, name: str, data: Any = None) -> None:
        self._emit({"kind": frames.EVENT, "content": {"name": str(name), "data": data}})

    # secrets and time ------------------------------------------------------------------------------
    def secret(self, name: str) -> str:
        """The value of a secret env var; ERR_MISSING_SECRET naming it (never a value) when unset."""
        value = os.environ.get(name)
        if not value:
            raise MissingSecretError(
                f"Missing secret {name}: set it as an environment variable of the processor "
                f"(it is listed in {self.ref}'s registry.yaml secrets)."
            )
        self._scrubber.add(value)
        return value

    def scrub(self, text: str) -> str:
        """Mask secret values and key-shaped strings (use on provider error messages)."""
        return self._scrubber.message(text)

    def remaining_s(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())


@dataclass
class OpenRequest:
    execution_id: str
    mode: str
    inputs: Any


def parse_run_open(raw: Any) -> OpenRequest:
    """Validate a RunOpen frame (already JSON-decoded); ProtocolViolation says what is wrong."""
    if not isinstance(raw, dict):
        raise ProtocolViolation('The first frame must be a JSON object {"kind": "RunOpen", "content": {...}}.')
    kind = raw.get("kind")
    if kind != frames.RUN_OPEN:
        raise ProtocolViolation(f"The first frame must have kind {frames.RUN_OPEN!r}, got {str(kind)[:40]!r}.")
    content = raw.get("content")
    if not isinstance(content, dict):
        raise ProtocolViolation("RunOpen.content is missing or not an object.")
    return parse_open_content(content, require_execution_id=True, what="RunOpen.content")


def parse_open_content(content: dict[str, Any], *, require_execution_id: bool, what: str) -> OpenRequest:
    execution_id = content.get("execution_id")
    if execution_id is None and not require_execution_id:
        execution_id = f"exec-{uuid.uuid4().hex}"
    if not isinstance(execution_id, str) or not execution_id or len(execution_id) > 200:
        raise ProtocolViolation(f"{what}.execution_id must be a non-empty string of at most 200 characters.")
    mode = content.get("mode")
    if mode not in frames.MODES:
        raise ProtocolViolation(f"{what}.mode must be one of {list(frames.MODES)}, got {str(mode)[:40]!r}.")
    if "inputs" not in content:
        raise ProtocolViolation(f"{what}.inputs is missing.")
    return OpenRequest(execution_id=execution_id, mode=mode, inputs=content["inputs"])


class Runner:
    """Runs one request through validation, secret checks and the handler; always returns an envelope."""

    def __init__(self, handler: Handler, registry: Registry, digest: str | None, scrubber: Scrubber):
        self.handler = handler
        self.registry = registry
        self.digest = digest
        self.scrubber = scrubber
        self.validator = InputsValidator(registry.inputs_schema)
        self.fingerprint = env_fingerprint(registry.ref, digest)
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)

    def envelope(
        self, execution_id: str | None, started: float, *, outputs: Any = None, error: RunError | None = None
    ) -> dict[str, Any]:
        env: dict[str, Any] = {
            "status": frames.STATUS_ERROR if error else frames.STATUS_SUCCESS,
            "execution_id": execution_id,
            "outputs": None if error else outputs,
            "meta": {
                "image_digest": self.digest,
                "env_fingerprint": self.fingerprint,
                "duration_ms": round((time.monotonic() - started) * 1000),
                "ref": self.registry.ref,
            },
        }
        if error is not None:
            err: dict[str, Any] = {"code": error.code, "message": self.scrubber.message(error.message)}
            if error.details:
                err["details"] = error.details
            env["error"] = err
        return env

    async def execute(self, req: OpenRequest, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            outputs = await self._execute(req, emit, started)
            json.dumps(outputs, allow_nan=False)  # must be sendable
            env = self.envelope(req.execution_id, started, outputs=outputs)
        except asyncio.CancelledError:
            raise
        except RunError as e:
            env = self.envelope(req.execution_id, started, error=e)
        except TimeoutError:
            limit = self.registry.timeout_s
            why = f"runtime.timeout_s={limit:g} in registry.yaml" if limit else "the handler timed out"
            env = self.envelope(
                req.execution_id,
                started,
                error=_err("ERR_TIMEOUT", f"The run did not finish in time ({why})."),
            )
        except Exception as e:
            log.debug("handler raised", exc_info=True)
            env = self.envelope(
                req.execution_id,
                started,
                error=_err("ERR_RUNTIME", f"{type(e).__name__}: {self.scrubber.message(str(e))}"),
            )
        err = env.get("error") or {}
        log.info(
            "run %s ref=%s mode=%s status=%s%s duration_ms=%d",
            req.execution_id,
            self.registry.ref,
            req.mode,
            env["status"],
            f" code={err['code']} message={err['message']!r}" if err else "",
            env["meta"]["duration_ms"],
        )
        return env

    async def _execute(self, req: OpenRequest, emit: Callable[[dict[str, Any]], None], started: float) -> Any:
        self.validator.validate(req.inputs)
        if req.mode == "real":
            missing = [n for n in self.registry.required_secrets if not os.environ.get(n)]
            if missing:
                raise MissingSecretError(
                    f"Missing required secret(s) for real mode: {', '.join(missing)}. "
                    f"Set them as environment "
                    f"variables of the processor (mock mode needs none)."
                )
        timeout = self.registry.timeout_s
        deadline = started + timeout if timeout else None
        ctx = RunContext(
            execution_id=req.execution_id,
            mode=req.mode,
            inputs=req.inputs,
            registry=self.registry,
            image_digest=self.digest,
            scrubber=self.scrubber,
            emit=emit,
            deadline=deadline,
        )
        async with asyncio.timeout(timeout):
            if self._is_async:
                outputs = await self.handler(ctx)
            else:
                outputs = await asyncio.to_thread(self.handler, ctx)
                if inspect.isawaitable(outputs):
                    outputs = await outputs
        if not isinstance(outputs, dict):
            raise RunError(f"The handler returned {type(outputs).__name__}, not a dict of outputs.")
        return outputs


def _err(code: str, message: str) -> RunError:
    e = RunError(message)
    e.code = code  # type: ignore[misc]
    return e


def _bearer_ok(header: str | None, expected: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())


class _DenialNoiseFilter(logging.Filter):
    """uvicorn's websockets-sansio protocol logs an ERROR after every WebSocket Denial Response (it never
    marks the handshake complete). Refusals are deliberate here, so drop that one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing handshake."


def _setup_logging(scrubber: Scrubber) -> None:
    uv = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialNoiseFilter) for f in uv.filters):
        uv.addFilter(_DenialNoiseFilter())
    if not any(isinstance(f, ScrubFilter) for f in log.filters):
        log.addFilter(ScrubFilter(scrubber))
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s theory_runtime: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    # Third-party loggers (uvicorn, LiteLLM, httpx, openai): mask on the logger (survives uvicorn's
    # dictConfig, which replaces handlers) and on the handlers present now (catches propagated records).
    for name in (
        "",
        "uvicorn",
        "uvicorn.error",
        "uvicorn.access",
        "LiteLLM",
        "LiteLLM Router",
        "LiteLLM Proxy",
        "litellm",
        "httpx",
        "httpcore",
        "openai",
    ):
        lg = logging.getLogger(name)
        for target in (lg, *lg.handlers):
            if not any(isinstance(f, ScrubFilter) for f in target.filters):
                target.addFilter(ScrubFilter(scrubber))


def _auth_check(registry: Registry) -> Callable[[str | None], Unauthorized | None]:
    """header -> None if the request may run, else the Unauthorized error to refuse it with."""
    name = registry.auth_secret
    if not name:
        return lambda header: None
    token = (os.environ.get(name) or "").strip()  # header values arrive trimmed, so compare trimmed
    if not token:
        log.warning(
            "api.auth_secret %s is not set: refusing every %s and /invoke request until it is "
            "(run sync-secrets for this environment)",
            name,
            registry.api_path,
        )
        missing = Unauthorized(
            f"The processor's auth secret {name} (api.auth_secret) is not set, so it refuses every "
            f"run. Set its value with `sync-secrets` for this environment; until then every run "
            f"is refused."
        )
        return lambda header: missing
    bad = Unauthorized("A valid `Authorization: Bearer` token is required.")
    return lambda header: None if _bearer_ok(header, token) else bad


def create_app(
    handler: Handler,
    spec_path: str | os.PathLike[str],
    *,
    heartbeat_s: float | None = None,
    open_timeout_s: float | None = None,
) -> FastAPI:
    """Serve `handler` as the processor `spec_path` describes (processor.json or registry.yaml)."""
    registry = load_registry(Path(spec_path))
    digest = os.environ.get("IMAGE_DIGEST") or None
    hb = heartbeat_s if heartbeat_s is not None else _env_float("THEORY_HEARTBEAT_S", 10.0)
    open_timeout = open_timeout_s if open_timeout_s is not None else _env_float("THEORY_OPEN_TIMEOUT_S", 30.0)
    use_denial = os.environ.get("THEORY_WS_DENIAL", "1") != "0"
    scrubber = Scrubber.from_env(registry.secret_names)
    _setup_logging(scrubber)
    auth_error = _auth_check(registry)
    runner = Runner(handler, registry, digest, scrubber)

    app = FastAPI(
        title=f"theory processor {registry.ref}",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.registry = registry
    app.state.runner = runner

    def dumps(obj: Any) -> str:
        return scrubber.text(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str))

    def json_response(body: dict[str, Any], status: int = 200) -> Response:
        return Response(content=dumps(body), status_code=status, media_type="application/json")

    @app.get(registry.healthz_path)
    async def healthz() -> Response:
        return json_response({"ok": True, "ref": registry.ref, "digest": digest, "protocol": frames.PROTOCOL})

    @app.post("/invoke")
    async def invoke(request: Request) -> Response:
        started = time.monotonic()
        denied = auth_error(request.headers.get("authorization"))
        if denied is not None:
            return json_response(runner.envelope(None, started, error=denied), 401)
        try:
            body = json.loads(await request.body())
            if isinstance(body, dict) and body.get("kind") == frames.RUN_OPEN:
                body = body.get("content")
            if not isinstance(body, dict):
                raise ProtocolViolation('The body must be a JSON object {"mode", "inputs", "execution_id"?}.')
            req = parse_open_content(body, require_execution_id=False, what="body")
        except ValueError:
            env = runner.envelope(None, started, error=ProtocolViolation("The body is not valid JSON."))
            return json_response(env, 400)
        except ProtocolViolation as e:
            return json_response(runner.envelope(None, started, error=e), 400)
        env = await runner.execute(req, lambda frame: None)
        status = 200 if env["status"] == frames.STATUS_SUCCESS else _HTTP_STATUS.get(env["error"]["code"], 500)
        return json_response(env, status)

    async def refuse(ws: WebSocket, status: int, err: RunError, close_code: int) -> None:
        """Refuse before accept: HTTP status + JSON envelope if the server can, else close."""
        env = runner.envelope(None, time.monotonic(), error=err)
        if use_denial and "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(json_response(env, status))
            return
        if isinstance(err, Unauthorized):
            # No denial responses here: tell the client why in-band, then close 4401.
            await ws.accept(subprotocol=frames.PROTOCOL)
            await send_result_and_close(ws, env, close_code)
        else:
            await ws.close(code=close_code)  # before accept: the server answers HTTP 403

    async def send_result_and_close(ws: WebSocket, env: dict[str, Any], code: int) -> None:
        try:
            await ws.send_text(dumps({"kind": frames.RUN_RESULT, "content": env}))
            await ws.close(code=code)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass

    @app.websocket(registry.api_path)
    async def run_ws(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        if frames.PROTOCOL not in offered:
            await refuse(
                ws,
                400,
                ProtocolViolation(
                    f"The WebSocket subprotocol {frames.PROTOCOL!r} is required (offered: {offered or 'none'})."
                ),
                frames.CLOSE_PROTOCOL,
            )
            return
        denied = auth_error(ws.headers.get("authorization"))
        if denied is not None:
            await refuse(ws, 401, denied, frames.CLOSE_UNAUTHORIZED)
            return
        await ws.accept(subprotocol=frames.PROTOCOL)
        started = time.monotonic()

        # 1. the RunOpen frame
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=open_timeout if open_timeout > 0 else None)
        except TimeoutError:
            await send_result_and_close(
                ws,
                runner.envelope(None, started, error=ProtocolViolation(f"No RunOpen frame within {open_timeout:g}s.")),
                frames.CLOSE_PROTOCOL,
            )
            return
        if msg.get("type") == "websocket.disconnect":
            return
        try:
            if msg.get("text") is None:
                raise ProtocolViolation("Frames must be JSON text messages, not binary.")
            try:
                raw = json.loads(msg["text"])
            except ValueError:
                raise ProtocolViolation("The first frame is not valid JSON.") from None
            req = parse_run_open(raw)
        except ProtocolViolation as e:
            execution_id = None
            await send_result_and_close(ws, runner.envelope(execution_id, started, error=e), frames.CLOSE_PROTOCOL)
            return

        # 2. Ack, then stream the handler's frames with heartbeats while it is quiet
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def emit(frame: dict[str, Any]) -> None:
            if threading.get_ident() == loop_thread:
                queue.put_nowait(frame)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, frame)

        async def run() -> None:
            try:
                env = await runner.execute(req, emit)
            except Exception as e:  # a runtime bug must still end the run, never hang it
                log.exception("runtime failure in run %s", req.execution_id)
                env = runner.envelope(req.execution_id, started, error=_err("ERR_RUNTIME", type(e).__name__))
            queue.put_nowait({"kind": frames.RUN_RESULT, "content": env})

        async def watch_client() -> None:
            # Later client frames are ignored; a disconnect cancels the run.
            try:
                while True:
                    m = await ws.receive()
                    if m.get("type") == "websocket.disconnect":
                        break
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            queue.put_nowait(None)

        ack = {
            "kind": frames.ACK,
            "content": {
                "execution_id": req.execution_id,
                "ref": registry.ref,
                "image_digest": digest,
                "protocol": frames.PROTOCOL,
                "heartbeat_s": hb,
            },
        }
        try:
            await ws.send_text(dumps(ack))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        run_task = asyncio.create_task(run())
        watch_task = asyncio.create_task(watch_client())
        getter: asyncio.Future[dict[str, Any] | None] | None = None
        finished = False
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=hb if hb > 0 else None)
                if not done:
                    elapsed = int((time.monotonic() - started) * 1000)
                    await ws.send_text(dumps({"kind": frames.HEARTBEAT, "content": {"elapsed_ms": elapsed}}))
                    continue
                frame = getter.result()
                getter = None
                if frame is None:  # client went away
                    return
                await ws.send_text(dumps(frame))
                if frame["kind"] == frames.RUN_RESULT:
                    finished = True
                    break
            await ws.close(code=frames.CLOSE_NORMAL)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            for t in (run_task, watch_task, getter):
                if t is not None and not t.done():
                    t.cancel()
            if not finished:
                log.info("run %s: client disconnected before the result; handler cancelled", req.execution_id)
            if ws.application_state == WebSocketState.CONNECTED and not finished:
                try:
                    await ws.close(code=frames.CLOSE_INTERNAL)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    pass  # the client is already gone: nothing to close, nothing to report

    return app
