"""An OpenAI-compatible stand-in (POST /v1/chat/completions, SSE streaming) for real-mode tests.

LiteLLM is pointed at it with LITELLM_API_BASE=<base_url()>. It records every request, so tests can
assert what the provider saw. The tests in this file check the stand-in itself, with plain httpx.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class OpenAIStandIn:
    """POST /v1/chat/completions, streaming (SSE) or not. Records every request it gets.

    `fail_status` makes it answer that HTTP status with an OpenAI-style error that quotes the
    presented key back (as OpenAI's "Incorrect API key provided: ..." does). `delay_s` makes it think
    that long before answering (a slow model: the processor must keep the run alive meanwhile).
    """

    def __init__(self, reply: str = "Paris, of course.", host: str = "127.0.0.1"):
        self.reply = reply
        self.fail_status: int | None = None
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                auth = self.headers.get("authorization") or ""
                outer.requests.append({"path": self.path, "authorization": auth, "body": body})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": "no such route"}})
                if outer.fail_status:
                    key = auth.removeprefix("Bearer ")
                    return self._json(
                        outer.fail_status,
                        {
                            "error": {
                                "message": f"Incorrect API key provided: {key}.",
                                "type": "invalid_request_error",
                                "code": "invalid_api_key",
                            }
                        },
                    )
                time.sleep(outer.delay_s)
                words = outer.reply.split(" ")
                pieces = [w + " " for w in words[:-1]] + [words[-1]]
                model = body.get("model")
                if not body.get("stream"):
                    return self._json(
                        200,
                        {
                            "id": "chatcmpl-standin",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": outer.reply},
                                }
                            ],
                            "usage": {
                                "prompt_tokens": 1,
                                "completion_tokens": len(pieces),
                                "total_tokens": 1 + len(pieces),
                            },
                        },
                    )
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()

                def event(data: str) -> None:
                    b = f"data: {data}\n\n".encode()
                    self.wfile.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
                    self.wfile.flush()

                def chunk(delta: dict[str, Any], finish: str | None) -> str:
                    return json.dumps(
                        {
                            "id": "chatcmpl-standin",
                            "object": "chat.completion.chunk",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                        }
                    )

                for i, p in enumerate(pieces):
                    event(chunk(({"role": "assistant"} if i == 0 else {}) | {"content": p}, None))
                event(chunk({}, "stop"))
                event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def base_url(self, host: str | None = None) -> str:
        """The LITELLM_API_BASE value (OpenAI-compatible base, with /v1)."""
        return f"http://{host or self.host}:{self.port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_standin_streams_sse_chunks() -> None:
    s = OpenAIStandIn(reply="a b c")
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        with httpx.stream(
            "POST", s.base_url() + "/chat/completions", json=body, headers={"Authorization": "Bearer k"}
        ) as r:
            assert r.headers["content-type"] == "text/event-stream"
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        deltas = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
        assert "".join(deltas) == "a b c"
        assert s.requests[0]["body"] == body and s.requests[0]["authorization"] == "Bearer k"
        r2 = httpx.post(s.base_url() + "/chat/completions", json={**body, "stream": False})
        assert r2.json()["choices"][0]["message"]["content"] == "a b c"
        s.fail_status = 401
        r3 = httpx.post(s.base_url() + "/chat/completions", json=body, headers={"Authorization": "Bearer k"})
        assert r3.status_code == 401 and "k." in r3.json()["error"]["message"]
    finally:
        s.close()
