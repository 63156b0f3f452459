"""theory.run.v1 wire constants (server side).

The product keeps its own copy of these in `theory_deploy.protocol` (the two packages never import each
other); tests/test_protocol_client.py checks that the two copies agree.

Every frame is one JSON text message `{"kind": <kind>, "content": {...}}`.

Client -> server
  RunOpen    {"execution_id": str, "mode": "mock"|"real", "inputs": {...}}   (first and only client frame)

Server -> client
  Ack        {"execution_id", "ref", "image_digest", "protocol", "heartbeat_s"}
  Token      {"text": str}
  Log        {"level": "debug"|"info"|"warning"|"error", "message": str}
  Event      {"name": str, "data": any}
  Heartbeat  {"elapsed_ms": int}                 (every heartbeat_s while the handler is quiet)
  RunResult  the envelope (exactly once, last), then close 1000

Handshake refusals (before the WebSocket is accepted):
  * the client did not offer the `theory.run.v1` subprotocol -> HTTP 400 with a JSON error envelope
    (ERR_WS_PROTOCOL). On ASGI servers without the WebSocket Denial Response extension the
    connection is closed before accept instead, which the server turns into HTTP 403.
  * bearer auth required and missing/wrong -> HTTP 401 with a JSON error envelope (ERR_UNAUTHORIZED).
    Without the Denial Response extension: accepted, an error RunResult (ERR_UNAUTHORIZED) is sent,
    then close code 4401.

After accept, a malformed first frame (not JSON, binary, not an object, wrong kind, missing or
ill-typed fields) or no first frame within THEORY_OPEN_TIMEOUT_S (default 30) -> an error RunResult
with ERR_WS_PROTOCOL, then close code 4400.
"""

from __future__ import annotations

PROTOCOL = "theory.run.v1"

RUN_OPEN = "RunOpen"
ACK = "Ack"
TOKEN = "Token"  # noqa: S105 (a frame kind, not a credential)
LOG = "Log"
EVENT = "Event"
HEARTBEAT = "Heartbeat"
RUN_RESULT = "RunResult"

SERVER_KINDS = frozenset({ACK, TOKEN, LOG, EVENT, HEARTBEAT, RUN_RESULT})
STREAM_KINDS = frozenset({TOKEN, LOG, EVENT, HEARTBEAT})

MODES = ("mock", "real")

CLOSE_NORMAL = 1000
CLOSE_INTERNAL = 1011
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHORIZED = 4401

STATUS_SUCCESS = "success"
STATUS_ERROR = "error"
