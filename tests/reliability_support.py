"""Helpers for the reliability suite (`bench/reliability.py`, `tests/test_reliability.py`).

- `ChaosProxy`: the fault proxy of `tests/registry_faults.py`, but every request to `/v2/` fails with
  probability `rate`, drawn from a seeded RNG: 503, 429 (`Retry-After: 1`), a connection reset (RST,
  no response), or a slow body (the real answer, dribbled out in small chunks). `fixed={status}` makes
  every `/v2/` request answer that status instead (401/403/404: the fast-fail cases).
- `git`, `make_world`: a bare remote with a `main` branch holding several processors, and clones.
- `scan`: canary search that also knows the `LITELLM_API_BASE`-style URL canaries.

Tests and the bench import this; the product never does.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.registry_faults import HOP_BY_HOP, FaultProxy

FAULT_KINDS = ("503", "429", "reset", "slow")


class ChaosProxy(FaultProxy):
    def __init__(self, upstream: str, *, rate: float = 0.3, seed: int = 0, fixed: int | None = None) -> None:
        super().__init__(upstream)
        self.rate = rate
        self.fixed = fixed
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.passed = 0
        self._server.handle_error = lambda *a: None  # type: ignore[method-assign]  # resets are on purpose

    def _pick(self, path: str) -> str | None:
        with self._lock:
            if self.fixed is not None:
                return str(self.fixed) if path.startswith("/v2/") else None
            if not path.startswith("/v2/") or self.rng.random() >= self.rate:
                self.passed += 1
                return None
            kind = self.rng.choice(FAULT_KINDS)
            self.injected[kind] += 1
            return kind

    def _handle(self, handler: Any) -> None:
        method = handler.command
        raw_path = handler.path
        path = raw_path.split("?", 1)[0]
        body = self._read_body(handler)
        kind = self._pick(path)
        with self._lock:
            self.requests.append(_rec(method, path))
        head = method == "HEAD"
        if kind == "reset":
            handler.close_connection = True
            try:
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                handler.connection.close()
            except OSError:
                pass
            return
        if kind is not None and kind != "slow":
            status = int(kind)
            headers = {"Content-Type": "application/json"}
            if status == 429:
                headers["Retry-After"] = "1"
            if status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="chaos"'
            payload = json.dumps({"errors": [{"code": "INJECTED", "message": f"injected {status}"}]}).encode()
            self._reply(handler, status, headers, payload, head=head)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            upstream = self._http.request(method, f"http://{self.upstream}{raw_path}", headers=headers, content=body)
        except Exception:
            self._reply(handler, 502, {}, b"", head=head)
            return
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        for key in list(out):
            if key.lower() == "location":
                out["Location"] = out.pop(key).replace(f"http://{self.upstream}", f"http://{self.host}")
        content = upstream.content
        if kind != "slow" or head or not content:
            self._reply(handler, upstream.status_code, out, content, head=head)
            return
        # slow body: headers at once, then the body in ~8 pieces over ~0.4 s
        handler.send_response(upstream.status_code)
        for key, value in out.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        step = max(1, len(content) // 8)
        try:
            for i in range(0, len(content), step):
                handler.wfile.write(content[i : i + step])
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass


def _rec(method: str, path: str) -> Any:
    from tests.registry_faults import Recorded

    return Recorded(method, path, "none")


# ---------------------------------------------------------------------------------------------------
# git worlds

HUMAN = ["-c", "user.name=Hu Man", "-c", "user.email=human@example.com"]


def git(cwd: Path, *args: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} failed: {proc.stderr}")
    return proc.stdout.strip()


PROCESSOR_YAML = """\
# {ref}: a reliability-suite processor; comments and quoting must survive pin writes
ref: {ref}

build:
  context: .
  platforms: [linux/amd64, linux/arm64]

image:
  repository: {repository}
  platforms:
    amd64: null  # linux/amd64 manifest
    arm64: null  # linux/arm64 manifest

secrets:
  required: [OPENAI_API_KEY]

inputs: {{type: object}}
"""


def processor_path(ref: str) -> str:
    ns, rest = ref.split("/", 1)
    name = rest.split("@", 1)[0]
    return f"processors/{ns}/{name}/registry.yaml"


def make_world(root: Path, processors: Mapping[str, str]) -> tuple[Path, Path]:
    """A bare remote `root/remote.git` whose main holds one registry.yaml per {ref: repository},
    and a clone `root/work`. Returns (remote, work)."""
    root.mkdir(parents=True, exist_ok=True)
    remote = root / "remote.git"
    git(root, "init", "--quiet", "--bare", "-b", "main", str(remote))
    seed = root / "seed"
    git(root, "init", "--quiet", "-b", "main", str(seed))
    for ref, repository in processors.items():
        path = seed / processor_path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PROCESSOR_YAML.format(ref=ref, repository=repository))
    (seed / "README.md").write_text("processors\n")
    git(seed, "add", ".")
    git(seed, *HUMAN, "commit", "--quiet", "-m", "initial")
    git(seed, "remote", "add", "origin", str(remote))
    git(seed, "push", "--quiet", "origin", "main")
    work = root / "work"
    git(root, "clone", "--quiet", str(remote), str(work))
    return remote, work


def remote_sha(remote: Path, branch: str) -> str | None:
    return git(remote, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False) or None


# ---------------------------------------------------------------------------------------------------
# canaries


def canary_forms(value: str) -> list[str]:
    forms = [value]
    core = value.rsplit("canary-", 1)[-1] if "canary-" in value else ""
    if len(core) >= 16:
        forms.append(core)
    forms.append(base64.b64encode(value.encode()).decode().rstrip("="))
    return forms


def scan(text: str | bytes | None, canaries: Mapping[str, str]) -> list[str]:
    """Names of the canaries whose value (or hex core, or base64) occurs in `text`."""
    if not text:
        return []
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return sorted(name for name, value in canaries.items() if any(f in text for f in canary_forms(value)))


class Tally:
    """Thread-safe counters plus a bounded list of examples per key."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1, example: Any = None) -> None:
        with self._lock:
            self.counts[key] += n
            if example is not None:
                ex = self.examples.setdefault(key, [])
                if len(ex) < 5:
                    ex.append(example)
