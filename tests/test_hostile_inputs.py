"""Hostile inputs: what a careless or malicious flag, file, environment or server can make the CLI do.

Each test drives the real code path (the CLI in a subprocess with --json, or the real functions
against real loopback servers started here) and expects a named ERR_* error, no traceback and a
message that names the flag or source and the limit; never a hang, a leak or ERR_INTERNAL.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_no_canary, make_canary
from theory_deploy import protocol, secret_values
from theory_deploy.errors import (
    AuthRequiredError,
    GitError,
    ImagePullError,
    ImageUnavailableError,
    InvalidRefError,
    ProtocolError,
    RegistryAuthError,
)
from theory_deploy.gitrun import Git
from theory_deploy.oci import RegistryClient, RegistryClients, RetryPolicy
from theory_deploy.refs import ImageRef

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DIGEST = "sha256:" + "0" * 64
REF = "llm/litellm@1"
FAST = RetryPolicy(attempts=1, base_delay=0.0)


def cli(tool: str, *args: str, env: dict[str, str] | None = None, tmp: Path, timeout: float = 90) -> dict[str, Any]:
    """Run the CLI with --json; return its one JSON object (plus `_rc`, `_stderr`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "THEORY_", "MODAL_"))}
    base.update(THEORY_STATE_DIR=str(tmp / "state"), THEORY_REGISTRY_RETRY_BASE_DELAY="0", NO_PROXY="*")

    def limit_memory() -> None:  # a regression must fail the test, not eat the machine
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run(
        [str(BIN / tool), *args, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**base, **(env or {})},
        timeout=timeout,
        preexec_fn=limit_memory,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    assert payload["status"] == "error", payload
    payload["_rc"], payload["_stderr"] = proc.returncode, proc.stderr
    return payload


def error_of(payload: dict[str, Any], code: str) -> str:
    assert payload["error"]["code"] == code, payload
    assert payload["error"]["code"] != "ERR_INTERNAL"
    return str(payload["error"]["message"])


# ---------------------------------------------------------------------------------------------------
# Loopback servers that record what they receive
# ---------------------------------------------------------------------------------------------------


class Recorder:
    """A threaded HTTP server on `host` that records each request's path and Authorization header and
    answers with `answer(handler)` (status, headers, body-or-iterator)."""

    def __init__(self, host: str, answer: Any) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.sent = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                recorder.requests.append((self.path, self.headers.get("Authorization")))
                status, headers, body = answer(self)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                chunks = [body] if isinstance(body, bytes) else body
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        recorder.sent += len(chunk)
                except OSError:
                    pass  # the client hung up: what a bounded reader does

            do_GET = do_HEAD = do_PUT = do_POST = _any

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def authorizations(self) -> list[str]:
        return [auth for _path, auth in self.requests if auth]


def _loopback2_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


needs_127_0_0_2 = pytest.mark.skipif(not _loopback2_works(), reason="127.0.0.2 is not a loopback address here")


@pytest.fixture
def servers() -> Iterator[list[Recorder]]:
    started: list[Recorder] = []
    yield started
    for server in started:
        server.close()


def basic_challenge(_h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
    return 401, {"WWW-Authenticate": 'Basic realm="registry"', "Content-Length": "0"}, b""


# ---------------------------------------------------------------------------------------------------
# 1. Control characters in --oci
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_oci_with_a_newline_is_refused_at_parse_time_naming_the_flag(tmp_path: Path) -> None:
    payload = cli(
        "localctl", "start", "--ref", REF, "--env", "main", "--oci", f"127.0.0.1:9/llm/x\n@{DIGEST}", "--dry-run",
        tmp=tmp_path,
    )  # fmt: skip
    message = error_of(payload, "ERR_INVALID_REF")
    assert "--oci" in message and "newline" in message and "whitespace or control characters" in message
    assert payload["_rc"] == InvalidRefError.exit_code


@pytest.mark.parametrize("bad", ["\n", "\r", "\t", " ", "\x00", "\x1b", "\u2028"])
def test_image_refs_refuse_whitespace_and_control_characters(bad: str) -> None:
    texts = [f"ghcr.io/org/na{bad}me@{DIGEST}", f"ghcr.io/org/name:t{bad}ag", f"ghcr.io/or{bad}g/name"]
    if bad != " ":  # surrounding spaces are trimmed; any other trailing character is not
        texts += [f"ghcr.io/org/name@{DIGEST}{bad}", f"ghcr.io/org/name{bad}"]
    for text in texts:
        with pytest.raises(InvalidRefError, match=r"^--repository: the image ref contains"):
            ImageRef.parse(text, where="--repository")


# ---------------------------------------------------------------------------------------------------
# 2. --inputs-json / --inputs-file: size, depth, files that never end
# ---------------------------------------------------------------------------------------------------


def _run(tmp: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    payload = cli("localctl", "run", "--ref", REF, "--env", "main", *flags, env=env, tmp=tmp, timeout=60)
    return error_of(payload, "ERR_INPUTS")


def test_inputs_file_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    message = _run(tmp_path, "--inputs-file", "/dev/zero")
    assert "--inputs-file /dev/zero" in message and "regular file" in message


def test_inputs_file_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "inputs.fifo"
    os.mkfifo(fifo)
    message = _run(tmp_path, "--inputs-file", str(fifo))  # nobody ever writes: opening must not block
    assert f"--inputs-file {fifo}" in message and "regular file" in message


def test_inputs_over_the_size_limit_name_the_flag_and_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"text": "x" * 5000}))
    message = _run(tmp_path, "--inputs-file", str(big), env={"THEORY_MAX_INPUTS_BYTES": "1000"})
    assert f"--inputs-file {big}" in message and "1000-byte limit" in message
    assert "THEORY_MAX_INPUTS_BYTES" in message
    message = _run(tmp_path, "--inputs-json", json.dumps({"text": "x" * 5000}), env={"THEORY_MAX_INPUTS_BYTES": "1000"})
    assert "--inputs-json" in message and "1000-byte limit" in message
    # the default, 1 MiB, holds a 2 MiB file off too
    big.write_text(json.dumps({"text": "x" * (2 << 20)}))
    assert f"{1 << 20}-byte limit" in _run(tmp_path, "--inputs-file", str(big))


def test_deeply_nested_inputs_are_refused_not_a_recursion_error(tmp_path: Path) -> None:
    deep = '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"  # argv strings stop at 128 KiB
    message = _run(tmp_path, "--inputs-json", deep)
    assert "--inputs-json" in message and "64 levels" in message and "THEORY_MAX_INPUTS_DEPTH" in message
    path = tmp_path / "deep.json"
    path.write_text(deep)
    message = _run(tmp_path, "--inputs-file", str(path))
    assert f"--inputs-file {path}" in message and "64 levels" in message
    # brackets inside strings are text, not nesting
    shallow = tmp_path / "shallow.json"
    shallow.write_text(json.dumps({"text": "[" * 1000}) + " [")
    assert "not JSON" in _run(tmp_path, "--inputs-file", str(shallow))


# ---------------------------------------------------------------------------------------------------
# 3. Git option injection
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_rollback_to_an_option_is_refused_and_writes_no_file(tmp_path: Path) -> None:
    target = tmp_path / "written-by-git"
    for to in (f"--output={target}", f"-o{target}"):
        payload = cli("localctl", "rollback", "--ref", REF, "--env", "main", f"--to={to}", tmp=tmp_path)
        message = error_of(payload, "ERR_REVISION")
        assert "--to" in message and "starts with '-'" in message
        assert not target.exists()


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_pr_base_and_remote_starting_with_a_dash_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = cli("processorctl", "pr", "--ref", REF, "--base=--output=" + str(marker), "--no-pr", tmp=tmp_path)
    assert "starts with '-'" in error_of(payload, "ERR_USAGE") and "base branch" in payload["error"]["message"]
    payload = cli(
        "processorctl", "pr", "--ref", REF, "--base", "main", f"--remote=--upload-pack=touch {marker}", "--no-pr",
        tmp=tmp_path,
    )  # fmt: skip
    assert "starts with '-'" in error_of(payload, "ERR_USAGE") and "remote" in payload["error"]["message"]
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# 4. Registry credentials belong to one host
# ---------------------------------------------------------------------------------------------------


@needs_127_0_0_2
@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_credentials_are_not_sent_to_an_oci_on_another_registry(tmp_path: Path, servers: list[Recorder]) -> None:
    """`start --oci` at a registry that is not the processor's: it challenges, and gets nothing."""
    other = Recorder("127.0.0.2", basic_challenge)
    servers.append(other)
    password = make_canary()
    payload = cli(
        "localctl", "start", "--ref", REF, "--env", "main", "--oci", f"{other.host}/llm/x@{DIGEST}", "--dry-run",
        env={"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": password},
        tmp=tmp_path,
    )  # fmt: skip
    message = error_of(payload, "ERR_REGISTRY_AUTH")
    assert other.requests, "the other registry was never asked"
    assert other.authorizations == []
    assert "belong to ghcr.io" in message and "THEORY_REGISTRY_HOST" in message
    assert_no_canary(json.dumps(payload), [password])


@needs_127_0_0_2
def test_credentials_follow_theory_registry_host(servers: list[Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    ours = Recorder("127.0.0.1", basic_challenge)
    other = Recorder("127.0.0.2", basic_challenge)
    servers += [ours, other]
    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", make_canary())
    monkeypatch.setenv("THEORY_REGISTRY_HOST", ours.host)
    monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", "0")
    clients = RegistryClients()
    try:
        for server in (other, ours):  # the other one first: being asked first binds nothing
            with pytest.raises(RegistryAuthError):
                clients(server.host).get_manifest("llm/x", DIGEST)
    finally:
        clients.close()
    assert other.authorizations == []
    assert ours.authorizations and all(a.startswith("Basic ") for a in ours.authorizations)


@needs_127_0_0_2
def test_a_token_realm_on_another_host_gets_no_credentials_unless_allowed(
    servers: list[Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    realm = Recorder("127.0.0.2", lambda _h: (200, {"Content-Type": "application/json"}, b'{"token": "tok-abcdef"}'))
    servers.append(realm)

    def registry_answer(handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if (handler.headers.get("Authorization") or "").startswith("Bearer "):
            return 404, {"Content-Length": "0"}, b""
        challenge = f'Bearer realm="http://{realm.host}/token",service="registry",scope="repository:llm/x:pull"'
        return 401, {"WWW-Authenticate": challenge, "Content-Length": "0"}, b""

    registry = Recorder("127.0.0.1", registry_answer)
    servers.append(registry)
    password = make_canary()
    with RegistryClient(registry.host, credentials=("bot", password), retry=FAST, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.get_manifest("llm/x", DIGEST)
    assert realm.requests == []  # never asked at all
    message = info.value.render()
    assert "127.0.0.2" in message and "another host" in message and "THEORY_ALLOW_TOKEN_REALM" in message
    assert_no_canary(message, [password])

    monkeypatch.setenv("THEORY_ALLOW_TOKEN_REALM", "127.0.0.2")  # the explicit opt-in
    with RegistryClient(registry.host, credentials=("bot", password), retry=FAST, progress=lambda _m: None) as c:
        with pytest.raises(ImageUnavailableError):
            c.get_manifest("llm/x", DIGEST)
    assert [a.split()[0] for a in realm.authorizations] == ["Basic"]


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_header_unsafe_registry_password_is_refused_before_any_request(
    tmp_path: Path, servers: list[Recorder]
) -> None:
    registry = Recorder("127.0.0.1", basic_challenge)
    servers.append(registry)
    password = make_canary()
    payload = cli(
        "localctl", "start", "--ref", REF, "--env", "main", "--oci", f"{registry.host}/llm/x@{DIGEST}", "--dry-run",
        env={"REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": password + "\n", "THEORY_REGISTRY_HOST": registry.host},
        tmp=tmp_path,
    )  # fmt: skip
    message = error_of(payload, "ERR_REGISTRY_AUTH")
    assert "REGISTRY_PASSWORD contains a newline" in message
    assert registry.authorizations == []
    assert_no_canary(json.dumps(payload) + payload["_stderr"], [password])


# ---------------------------------------------------------------------------------------------------
# 5. The scrubber and header-unsafe tokens
# ---------------------------------------------------------------------------------------------------


def test_scrub_hides_stripped_escaped_and_per_line_forms() -> None:
    token = make_canary() + "\n"
    secret_values.register_secret_value(token)
    leaked = f"Illegal header value b'Bearer {token}'"  # how httpx/h11 quote a bad header
    assert_no_canary(secret_values.scrub(leaked), [token.strip()])
    assert_no_canary(secret_values.scrub(repr(token.encode())), [token.strip()])

    multi = f"{make_canary()}\n{make_canary()}\r\n{make_canary()}"
    secret_values.register_secret_value(multi)
    lines = multi.splitlines()
    for text in (json.dumps({"v": multi}), repr(multi), f"only the second line: {lines[1]}"):
        assert_no_canary(secret_values.scrub(text), lines)


def test_scrub_leaves_nothing_of_overlapping_or_nested_secrets() -> None:
    a, b, c = make_canary(), make_canary(), make_canary()
    first, second = f"{a}-{b}", f"{b}-{c}"  # overlap on b: replacing one must not leave the other's rest
    secret_values.register_secret_value(first)
    secret_values.register_secret_value(second)
    scrubbed = secret_values.scrub(f"x {a}-{b}-{c} y")
    assert scrubbed == "x *** y", scrubbed
    inner = make_canary()
    outer = f"prefix-{inner}-suffix"
    secret_values.register_secret_value(inner)
    secret_values.register_secret_value(outer)
    scrubbed = secret_values.scrub(f"[{outer}] [{inner}] [{outer}]")
    assert scrubbed == "[***] [***] [***]", scrubbed


def test_a_bearer_token_with_a_newline_is_refused_without_showing_it(servers: list[Recorder]) -> None:
    health = Recorder("127.0.0.1", lambda _h: (200, {"Content-Type": "application/json"}, b'{"ok": true}'))
    servers.append(health)
    token = make_canary() + "\n"
    secret_values.register_secret_value(token)
    with pytest.raises(AuthRequiredError) as info:
        protocol.fetch_health(f"http://{health.host}", token)
    message = info.value.render()
    assert "THEORY_AUTH_TOKEN" in message and "newline" in message
    assert_no_canary(message, [token.strip()])
    assert health.requests == []
    with pytest.raises(AuthRequiredError):
        asyncio.run(
            protocol.run_processor(f"ws://{health.host}/run", mode="mock", inputs={}, timeout_s=10, token=token)
        )


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_a_modal_token_with_a_newline_is_refused_naming_the_variable(tmp_path: Path) -> None:
    token_secret = make_canary()
    payload = cli(
        "modalctl", "status", "--ref", REF, "--env", "main",
        env={
            "MODAL_TOKEN_ID": "ak-" + uuid.uuid4().hex,
            "MODAL_TOKEN_SECRET": token_secret + "\n",
            "MODAL_SERVER_URL": "http://127.0.0.1:9",
        },
        tmp=tmp_path,
    )  # fmt: skip
    message = error_of(payload, "ERR_MODAL_AUTH")
    assert "MODAL_TOKEN_SECRET contains a newline" in message
    assert_no_canary(json.dumps(payload) + payload["_stderr"], [token_secret])


# ---------------------------------------------------------------------------------------------------
# 6. The action's setup installs nothing without a hash
# ---------------------------------------------------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_PYTHON_LOG"], "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
args = sys.argv[1:]
if args[:1] == ["-c"]:
    print("3.12")
elif args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[2], "bin"))
    os.symlink(os.path.abspath(sys.argv[0]), os.path.join(args[2], "bin", "python"))
"""


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_setup_installs_every_package_with_a_hash_and_builds_offline(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "argv.log"
    environ = {k: v for k, v in os.environ.items() if k not in ("THEORY_DEPLOY_VENV", "VIRTUAL_ENV")}
    environ.update(
        THEORY_PYTHON=str(fake), FAKE_PYTHON_LOG=str(log), RUNNER_TEMP=str(tmp_path), GITHUB_OUTPUT=str(tmp_path / "o")
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "action-entrypoint"), "setup"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line)[1:] for line in log.read_text().splitlines()]
    installs = [args for args in calls if args[:3] == ["-m", "pip", "install"]]
    assert len(installs) == 2, calls
    locked: list[Path] = []
    for args in installs:
        if "--require-hashes" in args:
            assert "--only-binary=:all:" in args  # no sdist: nothing to build with an unpinned backend
            locked += [Path(args[i + 1]) for i, a in enumerate(args) if a == "-r"]
        else:
            # the checkout itself: offline, no dependencies, built by the hash-locked backend
            assert {"--no-index", "--no-deps", "--no-build-isolation"} <= set(args), args
    pins: dict[str, str] = {}
    for path in locked:
        blocks = path.read_text().replace("\\\n", " ").splitlines()
        for block in blocks:
            if "==" in block and not block.lstrip().startswith("#"):
                name = block.split("==", 1)[0].strip().lower()
                assert "--hash=sha256:" in block, f"{path.name}: {name} has no hash"
                pins[name] = block
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in build:
        name = requirement.split(">", 1)[0].split("=", 1)[0].split("<", 1)[0].strip().lower()
        assert name in pins, f"the build backend {name} is not hash-locked ({', '.join(map(str, locked))})"


# ---------------------------------------------------------------------------------------------------
# 7. Bounds on what servers and git send back
# ---------------------------------------------------------------------------------------------------


def _endless(_h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], Iterator[bytes]]:
    def body() -> Iterator[bytes]:
        yield b'{"schemaVersion": 2, "padding": "'
        for _ in range(64):  # 64 MiB, then the server gives up: a regression is slow, not fatal
            yield b"x" * (1 << 20)

    return 200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, body()


def test_an_endless_manifest_is_cut_at_the_manifest_limit(servers: list[Recorder]) -> None:
    registry = Recorder("127.0.0.1", _endless)
    servers.append(registry)
    with RegistryClient(registry.host, retry=FAST, progress=lambda _m: None) as c:
        with pytest.raises(ImagePullError) as info:
            c.get_manifest("llm/x", DIGEST)
    message = info.value.render()
    assert f"{4 << 20}-byte limit" in message and "llm/x" in message
    assert registry.sent < 32 << 20, f"the client read {registry.sent} bytes"


def test_a_declared_huge_manifest_is_refused_before_reading(servers: list[Recorder]) -> None:
    def huge(_h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], Iterator[bytes]]:
        status, headers, body = _endless(_h)
        return status, {**headers, "Content-Length": str(10 << 30)}, body

    registry = Recorder("127.0.0.1", huge)
    servers.append(registry)
    with RegistryClient(registry.host, retry=FAST, progress=lambda _m: None) as c:
        with pytest.raises(ImagePullError, match="byte limit"):
            c.get_manifest("llm/x", DIGEST)
    assert registry.sent < 32 << 20


def test_other_registry_answers_are_bounded_by_an_env_var(
    servers: list[Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Recorder("127.0.0.1", _endless)
    servers.append(registry)
    monkeypatch.setenv("THEORY_REGISTRY_MAX_RESPONSE_BYTES", "100000")
    with RegistryClient(registry.host, retry=FAST, progress=lambda _m: None) as c:
        with pytest.raises(ImagePullError) as info:
            c.list_tags("llm/x")
    assert "100000-byte limit" in info.value.render() and "THEORY_REGISTRY_MAX_RESPONSE_BYTES" in info.value.render()
    assert registry.sent < 32 << 20


def test_a_websocket_frame_over_the_limit_is_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    monkeypatch.setenv("THEORY_WS_MAX_FRAME_BYTES", "1024")

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"kind": "Ack", "content": {}}))
        await ws.send(json.dumps({"kind": "Log", "content": {"message": "x" * 4096}}))
        await ws.wait_closed()  # the client closes (1009, message too big); the server then shuts down at once

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=[protocol.PROTOCOL]) as server:  # type: ignore[list-item]
            port = next(iter(server.sockets)).getsockname()[1]
            await protocol.run_processor(f"ws://127.0.0.1:{port}/run", mode="mock", inputs={}, timeout_s=20)

    with pytest.raises(ProtocolError) as info:
        asyncio.run(main())
    message = info.value.render()
    assert info.value.code == "ERR_WS_PROTOCOL"
    assert "1024-byte limit" in message and "THEORY_WS_MAX_FRAME_BYTES" in message


@pytest.mark.slow  # runs the CLI in a subprocess per case
def test_git_show_of_a_huge_blob_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "big.yaml").write_text("x" * 5000)
    (tmp_path / "small.yaml").write_text("ok\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env={**os.environ, **env})
    monkeypatch.setenv("THEORY_GIT_MAX_SHOW_BYTES", "1000")
    git = Git(tmp_path)
    assert git.show("HEAD", "small.yaml") == "ok\n"
    assert git.show("HEAD", "missing.yaml") is None
    with pytest.raises(GitError) as info:
        git.show("HEAD", "big.yaml")
    assert "1000-byte limit" in info.value.render() and "THEORY_GIT_MAX_SHOW_BYTES" in info.value.render()
