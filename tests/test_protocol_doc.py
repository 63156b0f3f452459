"""docs/protocol.md, the theory.run.v1 specification, kept honest against the code.

The facts are read from the code, not copied into the test: frame kinds, close codes and
error codes come from the runtime (`theory_runtime`) and the client (`theory_deploy.protocol`)
modules and their sources; the JSON examples in the document are run through the real parsers and
compared with frames the real server produces; the worked-example transcripts are replayed against
the sample processor (processors/llm/litellm) served in-process. Adding a code, a kind, a field or
a setting to either side without documenting it fails a test here.

No Docker, no network: the server runs in-process through Starlette's TestClient.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib.util
import inspect
import itertools
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("theory_runtime") is None:  # not pip-installed: use the source tree
    sys.path.insert(0, str(REPO / "runtime"))

from theory_runtime import create_app, frames, scrub, server  # noqa: E402
from theory_runtime import errors as rt_errors  # noqa: E402
from theory_runtime.errors import InputsError, ProtocolViolation  # noqa: E402

from theory_deploy import errors as td_errors  # noqa: E402
from theory_deploy import protocol  # noqa: E402

DOC_PATH = REPO / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
RUNTIME_DIR = REPO / "runtime" / "theory_runtime"
SERVER_SRC = RUNTIME_DIR / "server.py"
CLIENT_SRC = REPO / "src" / "theory_deploy" / "protocol.py"
SAMPLE = REPO / "processors" / "llm" / "litellm"
PROTO = frames.PROTOCOL

# Every ```json block in the document carries one of these tags (```json <tag>), saying what it is.
JSON_TAGS = {"client-frame", "bad-client-frame", "server-frame", "envelope", "healthz", "invoke-request"}
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


# --- reading the document ------------------------------------------------------------------------------


def section(heading: str) -> str:
    """The text under the first heading line that starts with `heading`, up to the next heading of
    the same or a higher level."""
    lines = DOC.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(heading):
            level = len(line) - len(line.lstrip("#"))
            body = []
            for nxt in lines[i + 1 :]:
                m = re.match(r"^(#+) ", nxt)
                if m and len(m.group(1)) <= level:
                    break
                body.append(nxt)
            return "\n".join(body)
    raise AssertionError(f"docs/protocol.md has no heading starting with {heading!r}")


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables in `text`: each a list of rows (header first, separator dropped) of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def field_names(table: list[list[str]]) -> set[str]:
    """The backticked names in the first column of a `| field | ...` table."""
    assert table[0][0] == "field", table[0]
    return {re.fullmatch(r"`([^`]+)`", row[0]).group(1) for row in table[1:]}  # type: ignore[union-attr]


def code_blocks(lang: str) -> list[tuple[str, str]]:
    """(tag, body) of every fenced block of language `lang`."""
    pattern = re.compile(rf"^```{lang}(?: ([\w-]+))?\n(.*?)^```$", re.M | re.S)
    return [(m.group(1) or "", m.group(2)) for m in pattern.finditer(DOC)]


def in_doc(number: int | float | str, text: str = DOC) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(str(number))}(?![\w])", text) is not None


# --- reading the code --------------------------------------------------------------------------------------


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def runtime_error_codes() -> set[str]:
    """Every error code the runtime can put on the wire: its RunError classes, its HTTP status map,
    and every ERR_* literal in its sources (e.g. `_err("ERR_TIMEOUT", ...)`)."""
    codes = {
        cls.code for cls in vars(rt_errors).values() if isinstance(cls, type) and issubclass(cls, rt_errors.RunError)
    }
    codes |= set(server._HTTP_STATUS)
    for path in RUNTIME_DIR.glob("*.py"):
        for node in ast.walk(parse(path)):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"ERR_[A-Z_]+", node.value)
            ):
                codes.add(node.value)
    return codes


def close_codes_in_code() -> set[int]:
    """The CLOSE_* constants of both sides, every close code passed to a close in server.py, and
    every websockets CloseCode the client inspects."""
    codes = {v for n, v in vars(frames).items() if n.startswith("CLOSE_")}
    codes |= {v for n, v in vars(protocol).items() if n.startswith("CLOSE_")}
    for node in ast.walk(parse(SERVER_SRC)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "close":
            for kw in node.keywords:
                if kw.arg == "code":
                    value = kw.value
                    if isinstance(value, ast.Constant):
                        codes.add(value.value)
                    elif isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
                        assert value.value.id == "frames", ast.unparse(value)
                        codes.add(getattr(frames, value.attr))
    from websockets.frames import CloseCode

    for node in ast.walk(parse(CLIENT_SRC)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "CloseCode":
            codes.add(int(getattr(CloseCode, node.attr)))
    return codes


def errors_the_client_raises() -> set[type[td_errors.TheoryDeployError]]:
    """The theory_deploy error classes protocol.py raises (`raise SomeError(...)`)."""
    raised = set()
    for node in ast.walk(parse(CLIENT_SRC)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
            cls = getattr(td_errors, node.exc.func.id, None)
            if isinstance(cls, type) and issubclass(cls, td_errors.TheoryDeployError):
                raised.add(cls)
    return raised


def call_args(path: Path, func: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(parse(path))
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == func)
            or (isinstance(node.func, ast.Attribute) and node.func.attr == func)
        )
    ]


# --- the real server, in-process ------------------------------------------------------------------------

DOC_DIGEST = re.search(r"IMAGE_DIGEST=(sha256:[0-9a-f]{64})", DOC)
RUNTIME_ENV = ("IMAGE_DIGEST", "THEORY_HEARTBEAT_S", "THEORY_OPEN_TIMEOUT_S", "THEORY_WS_DENIAL", "OPENAI_API_KEY")


def load_sample_handler() -> Any:
    spec = importlib.util.spec_from_file_location("protocol_doc_llm_litellm_handler", SAMPLE / "handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


@pytest.fixture(scope="module")
def sample() -> Iterator[TestClient]:
    """The sample processor llm/litellm@1 as the worked examples describe it (no litellm import:
    mock runs never load it)."""
    assert DOC_DIGEST, "the worked examples must say which IMAGE_DIGEST=sha256:... they ran with"
    with pytest.MonkeyPatch.context() as mp:
        for name in RUNTIME_ENV:
            mp.delenv(name, raising=False)
        mp.setenv("IMAGE_DIGEST", DOC_DIGEST.group(1))
        app = create_app(load_sample_handler(), SAMPLE / "registry.yaml")
    yield TestClient(app)


async def every_kind(ctx: Any) -> dict[str, Any]:
    ctx.token("t")
    ctx.log("done")
    ctx.event("completion", {"chunks": 1})
    await asyncio.sleep(0.3)  # quiet long enough for heartbeats
    return {"ok": True}


def session(client: TestClient, first: str | None, *, headers: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Connect with the subprotocol, send `first`, read until the server closes: (texts, close code)."""
    texts: list[str] = []
    extra = {"headers": headers} if headers else {}
    with client.websocket_connect("/run", subprotocols=[PROTO], **extra) as ws:
        assert ws.accepted_subprotocol == PROTO
        if first is not None:
            ws.send_text(first)
        while True:
            message = ws.receive()
            if message["type"] == "websocket.close":
                return texts, message.get("code", 1000)
            texts.append(message["text"])


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One real frame of every server kind, from the real server (heartbeats every 50 ms)."""
    reg = tmp_path_factory.mktemp("doc") / "registry.yaml"
    reg.write_text("ref: test/doc@1\n")
    with pytest.MonkeyPatch.context() as mp:
        for name in RUNTIME_ENV:
            mp.delenv(name, raising=False)
        app = create_app(every_kind, reg, heartbeat_s=0.05)
    open_frame = {"kind": frames.RUN_OPEN, "content": {"execution_id": "e", "mode": "mock", "inputs": {}}}
    texts, code = session(TestClient(app), json.dumps(open_frame))
    assert code == frames.CLOSE_NORMAL
    got: dict[str, dict[str, Any]] = {}
    for text in texts:
        frame = json.loads(text)
        got.setdefault(frame["kind"], frame)
    assert set(got) == set(frames.SERVER_KINDS), sorted(got)
    return got


@pytest.fixture(scope="module")
def real_envelopes(sample: TestClient) -> dict[str, dict[str, Any]]:
    runner = sample.app.state.runner  # type: ignore[attr-defined]
    return {
        "success": runner.envelope("e", time.monotonic(), outputs={}),
        "error": runner.envelope("e", time.monotonic(), error=InputsError("x", details={"pointer": ""})),
    }


def check_envelope(env: Any, real: dict[str, dict[str, Any]]) -> None:
    """`env` has the shape of the real server's envelopes, and the real client accepts it."""
    assert isinstance(env, dict) and env.get("status") in (frames.STATUS_SUCCESS, frames.STATUS_ERROR), env
    model = real[env["status"]]
    assert list(env) == list(model), f"envelope members {list(env)} != the server's {list(model)}"
    assert list(env["meta"]) == list(model["meta"]), env["meta"]
    assert env["execution_id"] is None or isinstance(env["execution_id"], str)
    assert FINGERPRINT.fullmatch(env["meta"]["env_fingerprint"])
    assert isinstance(env["meta"]["duration_ms"], int)
    if env["status"] == frames.STATUS_ERROR:
        assert env["outputs"] is None
        assert {"code", "message"} <= set(env["error"]) <= set(model["error"]), env["error"]
        assert env["error"]["code"] in runtime_error_codes()
        code = env["error"]["code"]
        raises = {
            td_errors.AuthRequiredError.code: td_errors.AuthRequiredError,
            td_errors.ProtocolError.code: td_errors.ProtocolError,
        }
        if code in raises:
            with pytest.raises(raises[code]):
                protocol._check_envelope(json.loads(json.dumps(env)), "doc")
            return
    assert protocol._check_envelope(json.loads(json.dumps(env)), "doc") == env


# --- frame kinds -----------------------------------------------------------------------------------------


def test_every_frame_kind_has_its_own_section_and_row() -> None:
    kinds = {frames.RUN_OPEN, *frames.SERVER_KINDS, protocol.RUN_OPEN, *protocol.SERVER_KINDS}
    headed = set(re.findall(r"^### 3\.\d+ `(\w+)`$", DOC, re.M))
    assert headed == kinds, f"frame sections {sorted(headed)} != the code's kinds {sorted(kinds)}"
    listed = {row[0].strip("`") for row in tables(section("## 3. Frames"))[0][1:]}
    assert listed == kinds, f"the kinds table lists {sorted(listed)}, the code has {sorted(kinds)}"
    assert "`kind`" in DOC and f"`{PROTO}`" in DOC


def test_frame_field_tables_match_real_frames(real_frames: dict[str, dict[str, Any]]) -> None:
    run_open = tables(section(f"### 3.1 `{frames.RUN_OPEN}`"))[0]
    assert field_names(run_open) == {f.name for f in dataclasses.fields(server.OpenRequest)}
    for kind, frame in real_frames.items():
        if kind == frames.RUN_RESULT:
            continue  # its content is the envelope: section 4
        heading = next(h for h in re.findall(r"^### 3\.\d+ `\w+`$", DOC, re.M) if f"`{kind}`" in h)
        documented = field_names(tables(section(heading))[0])
        assert documented == set(frame["content"]), f"{kind}: documented {documented}, sent {set(frame['content'])}"
    levels = section(f"### 3.4 `{frames.LOG}`")
    assert all(f"`{level}`" in levels for level in server._LOG_LEVELS)
    assert all(f"`{mode}`" in section(f"### 3.1 `{frames.RUN_OPEN}`") for mode in frames.MODES)


def test_envelope_tables_match_the_server(real_envelopes: dict[str, dict[str, Any]]) -> None:
    top, meta, error = [t for t in tables(section("## 4. The envelope")) if t[0][0] == "field"]
    assert field_names(top) == set(real_envelopes["error"])
    assert field_names(meta) == set(real_envelopes["error"]["meta"])
    assert field_names(error) == set(real_envelopes["error"]["error"])


def test_healthz_fields_match_the_server(sample: TestClient) -> None:
    answer = sample.get("/healthz")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert field_names(tables(section("### 1.2 The health endpoint"))[0]) == set(answer.json())


# --- codes -------------------------------------------------------------------------------------------------


def test_error_code_table_is_exactly_the_runtimes_codes() -> None:
    rows = tables(section("### 5.1 Codes the server sends"))[0][1:]
    documented = {row[0].strip("`"): row for row in rows}
    codes = runtime_error_codes()
    assert set(documented) == codes, f"documented {sorted(documented)}, the runtime sends {sorted(codes)}"
    for code, row in documented.items():
        status = server._HTTP_STATUS.get(code, 500)  # invoke()'s own fallback
        assert row[2] == str(status), f"{code}: /invoke status {row[2]!r}, the server uses {status}"
        cls = td_errors.BY_CODE[code]
        assert f"`{cls.__name__}` (exit {cls.exit_code})" == row[3], f"{code}: client column {row[3]!r}"


def test_errors_the_client_raises_are_documented() -> None:
    text = section("### 5.2 How the reference client maps outcomes")
    raised = errors_the_client_raises()
    assert raised, "protocol.py raises no typed errors?"
    for cls in raised:
        assert f"`{cls.code}`" in text, f"{cls.__name__} ({cls.code}) is raised by protocol.py but not in section 5.2"
    for cls in (td_errors.UsageError, td_errors.NotRunningError, td_errors.RunTimeoutError):
        assert f"`{cls.code}` (exit {cls.exit_code})" in text


def test_every_close_code_is_documented() -> None:
    table = tables(section("## 6. Close codes and handshake statuses"))[0]
    documented = {int(row[0]) for row in table[1:]}
    missing = close_codes_in_code() - documented
    assert not missing, f"close codes used in the code but not in section 6: {sorted(missing)}"
    for name in ("CLOSE_NORMAL", "CLOSE_PROTOCOL", "CLOSE_UNAUTHORIZED", "CLOSE_INTERNAL"):
        assert any(row[0] == str(getattr(frames, name)) and row[1] == "server" for row in table), name


def test_http_statuses_are_documented() -> None:
    statuses = set(server._HTTP_STATUS.values())
    for call in call_args(SERVER_SRC, "refuse") + call_args(SERVER_SRC, "json_response"):
        statuses |= {a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, int)}
    for node in ast.walk(parse(CLIENT_SRC)):  # `if status == 401`, `resp.status_code != 200`
        if isinstance(node, ast.Compare):
            left = ast.unparse(node.left)
            if left.endswith(("status", "status_code")):
                statuses |= {c.value for c in node.comparators if isinstance(c, ast.Constant)}
    assert {200, 400, 401, 404} <= statuses
    for status in statuses:
        assert in_doc(status), f"HTTP {status} is used in the code but not in docs/protocol.md"


# --- settings and limits ----------------------------------------------------------------------------------


def test_server_settings_and_defaults_are_documented() -> None:
    timeouts = tables(section("### 2.4 Timeouts"))[0]
    for call in call_args(SERVER_SRC, "_env_float"):
        name, default = (ast.literal_eval(a) for a in call.args)
        rows = [row for row in timeouts if f"`{name}`" in " ".join(row)]
        assert rows, f"{name} is not in the timeouts table"
        assert f"{default:g} s" in rows[0][1], f"{name}: default {default:g} s, the table says {rows[0][1]!r}"
    for node in ast.walk(parse(SERVER_SRC)):  # os.environ.get("NAME", ...)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.environ.get":
            arg = node.args[0]
            if isinstance(arg, ast.Constant):
                assert f"`{arg.value}" in DOC, f"the server reads {arg.value} but the doc never names it"
    assert server.parse_open_content(
        {"execution_id": "x" * 200, "mode": "mock", "inputs": {}}, require_execution_id=True, what="t"
    )
    with pytest.raises(ProtocolViolation):
        server.parse_open_content(
            {"execution_id": "x" * 201, "mode": "mock", "inputs": {}}, require_execution_id=True, what="t"
        )
    assert "at most 200 characters" in section(f"### 3.1 `{frames.RUN_OPEN}`")


def test_client_limits_and_keepalive_are_documented() -> None:
    assert in_doc(protocol.MAX_FRAME_BYTES) and f"`{protocol.MAX_FRAME_BYTES_ENV}`" in DOC
    assert in_doc(protocol.MAX_HEALTH_BYTES)
    (connect,) = call_args(CLIENT_SRC, "connect")
    for kw in connect.keywords:
        if kw.arg in ("ping_interval", "ping_timeout", "close_timeout"):
            assert f"`{kw.arg}={ast.literal_eval(kw.value)}`" in DOC, kw.arg
    health_timeout = inspect.signature(protocol.fetch_health).parameters["timeout_s"].default
    assert f"default {health_timeout:g} s" in section("### 1.2 The health endpoint")


def test_reference_image_settings_are_documented() -> None:
    """What the image's uvicorn command sets (keepalive) or leaves at uvicorn's default (size limit)."""
    import uvicorn

    dockerfile = (SAMPLE / "Dockerfile").read_text().replace("\\\n", " ")  # join continued lines
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    args = json.loads(cmd)
    flags = dict(itertools.pairwise(args))  # each flag -> the word after it
    for flag in ("--ws-ping-interval", "--ws-ping-timeout"):
        assert f"{flag} {flags[flag]}" in DOC, flag
    assert "--ws-max-size" not in args, "the image now sets --ws-max-size: update section 1.7"
    default = inspect.signature(uvicorn.Config).parameters["ws_max_size"].default
    assert in_doc(default, section("### 1.7 Size limits")), default


def test_scrubbing_rules_are_documented() -> None:
    text = section("## 7. Secret scrubbing")
    assert f"`{scrub.MASK}`" in text
    assert f"at least {scrub.MIN_LEN} characters" in text
    assert f"at least {scrub._SECRETISH_MIN_LEN} characters" in text
    for word in re.findall(r"[A-Z]+", scrub._SECRETISH_NAME.pattern):
        assert f"`{word}`" in text, word
    prefixes = re.match(r"\\b\((.*?)\)\[", scrub._KEY_SHAPED.pattern).group(1)  # type: ignore[union-attr]
    for prefix in prefixes.split("|"):
        m = re.fullmatch(r"(\w+)\[(\w+)\]", prefix)
        for spelled in [m.group(1) + c for c in m.group(2)] if m else [prefix]:
            assert f"`{spelled}`" in text, spelled
    limit = inspect.signature(scrub.Scrubber.message).parameters["limit"].default
    assert f"{limit} characters" in text and f"{limit} characters" in section("### 1.7 Size limits")


# --- the examples ------------------------------------------------------------------------------------------


def test_every_json_example_is_tagged_and_all_tags_are_used() -> None:
    blocks = code_blocks("json")
    tags = [tag for tag, _ in blocks]
    assert set(tags) <= JSON_TAGS, f"untagged or unknown ```json blocks: {sorted(set(tags) - JSON_TAGS)}"
    assert set(tags) == JSON_TAGS


def test_json_examples_pass_the_real_parsers(
    sample: TestClient, real_frames: dict[str, dict[str, Any]], real_envelopes: dict[str, dict[str, Any]]
) -> None:
    server_kinds: set[str] = set()
    for tag, body in code_blocks("json"):
        data = json.loads(body)
        if tag == "client-frame":
            req = server.parse_run_open(data)
            assert req.mode in frames.MODES
        elif tag == "bad-client-frame":
            with pytest.raises(ProtocolViolation):
                server.parse_run_open(data)
        elif tag == "server-frame":
            frame = protocol._decode(body, "doc")  # the client's own frame decoder
            kind = frame["kind"]
            assert kind in frames.SERVER_KINDS and kind in protocol.SERVER_KINDS, kind
            assert list(frame) == ["kind", "content"]
            server_kinds.add(kind)
            if kind == frames.RUN_RESULT:
                check_envelope(frame["content"], real_envelopes)
            else:
                assert list(frame["content"]) == list(real_frames[kind]["content"]), (kind, frame)
        elif tag == "envelope":
            check_envelope(data, real_envelopes)
        elif tag == "healthz":
            real = sample.get("/healthz").json()
            assert list(data) == list(real) and data["ok"] is True and data["protocol"] == PROTO
        elif tag == "invoke-request":
            answer = sample.post("/invoke", content=body.encode())
            assert answer.status_code == 200, answer.text
            check_envelope(answer.json(), real_envelopes)
    assert server_kinds == set(frames.SERVER_KINDS), "every server kind needs a ```json server-frame example"


def normalized(text: str) -> str:
    """A frame's JSON, compact, with the two machine- and time-dependent members replaced."""
    frame = json.loads(text)
    if frame.get("kind") == frames.RUN_RESULT:
        meta = frame["content"]["meta"]
        assert FINGERPRINT.fullmatch(meta["env_fingerprint"]), meta
        assert isinstance(meta["duration_ms"], int) and meta["duration_ms"] >= 0, meta
        meta["env_fingerprint"] = meta["duration_ms"] = "<varies>"
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def test_transcripts_replay_against_the_sample_processor(sample: TestClient) -> None:
    transcripts = [body for tag, body in code_blocks("text") if tag == "transcript"]
    assert len(transcripts) >= 3
    closes: set[int] = set()
    for transcript in transcripts:
        with sample.websocket_connect("/run", subprotocols=[PROTO]) as ws:
            assert ws.accepted_subprotocol == PROTO
            closed = False
            for line in transcript.splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                assert not closed, f"a line after the close: {line!r}"
                arrow, _, rest = line.partition(" ")
                if arrow == "-->":
                    ws.send_text(rest)
                    continue
                assert arrow == "<--", line
                message = ws.receive()
                if rest.startswith("close "):
                    assert message["type"] == "websocket.close", message
                    assert message.get("code", 1000) == int(rest.split()[1]), (message, line)
                    closes.add(int(rest.split()[1]))
                    closed = True
                else:
                    assert message["type"] == "websocket.send", message
                    assert normalized(message["text"]) == normalized(rest)
            assert closed, "a transcript must end with the server's close"
    assert {frames.CLOSE_NORMAL, frames.CLOSE_PROTOCOL} <= closes


def test_mock_transcript_is_deterministic(sample: TestClient) -> None:
    first = next(body for tag, body in code_blocks("text") if tag == "transcript")
    open_frame = next(line[4:] for line in first.splitlines() if line.startswith("--> "))
    a, _ = session(sample, open_frame)
    b, _ = session(sample, open_frame)
    assert [normalized(t) for t in a] == [normalized(t) for t in b]
    assert a[:-1] == b[:-1]  # byte-identical up to the envelope, whose duration_ms may differ


# --- handshake refusals -------------------------------------------------------------------------------------


def _row_with(text: str, *needles: str) -> bool:
    return any(all(n in " | ".join(row) for n in needles) for table in tables(text) for row in table)


def test_handshake_refusals_match_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = section("### 2.1 Upgrade checks")
    statuses = section("## 6. Close codes and handshake statuses")
    reg = tmp_path / "registry.yaml"
    reg.write_text("ref: test/doc@1\napi: {auth_secret: DOC_AUTH_TOKEN}\n")
    for name in RUNTIME_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOC_AUTH_TOKEN", "tok-doc-0123456789")
    client = TestClient(create_app(lambda ctx: {}, reg, open_timeout_s=0.1))

    with pytest.raises(WebSocketDenialResponse) as no_proto:  # checked first, even without a token
        with client.websocket_connect("/run"):
            pass
    with pytest.raises(WebSocketDenialResponse) as no_auth:
        with client.websocket_connect("/run", subprotocols=[PROTO]):
            pass
    for refusal, code in ((no_proto.value, "ERR_WS_PROTOCOL"), (no_auth.value, "ERR_UNAUTHORIZED")):
        body = refusal.json()
        assert body["error"]["code"] == code and body["execution_id"] is None
        assert _row_with(checks, f"HTTP {refusal.status_code}", code), (refusal.status_code, code)
        assert _row_with(statuses, str(refusal.status_code), code), (refusal.status_code, code)
    texts, code = session(client, None, headers={"Authorization": "Bearer tok-doc-0123456789"})
    assert code == frames.CLOSE_PROTOCOL  # authorized; then no RunOpen within the open timeout

    # without the Denial Response extension: in-band result, then close 4401 / close before accept
    monkeypatch.setenv("THEORY_WS_DENIAL", "0")
    fallback = TestClient(create_app(lambda ctx: {}, reg, open_timeout_s=0.1))
    texts, code = session(fallback, None)
    assert code == frames.CLOSE_UNAUTHORIZED
    assert [json.loads(t)["content"]["error"]["code"] for t in texts] == ["ERR_UNAUTHORIZED"]
    assert _row_with(checks, "RunResult", "ERR_UNAUTHORIZED", str(code))
    with pytest.raises(WebSocketDisconnect) as closed:
        with fallback.websocket_connect("/run"):
            pass
    assert closed.value.code == frames.CLOSE_PROTOCOL  # the ASGI server answers this with HTTP 403
    assert _row_with(checks, "HTTP 403") and "4400" in statuses


# --- the notes' file:line references ----------------------------------------------------------------------

SHORT_NAMES = {  # how section 11 abbreviates paths (it says so in its introduction)
    "server.py": RUNTIME_DIR / "server.py",
    "frames.py": RUNTIME_DIR / "frames.py",
    "errors.py": RUNTIME_DIR / "errors.py",
    "registry.py": RUNTIME_DIR / "registry.py",
    "scrub.py": RUNTIME_DIR / "scrub.py",
    "protocol.py": CLIENT_SRC,
}


def test_file_line_references_point_into_existing_files() -> None:
    """Not proof that a reference is still right, but one past the end of its file is surely wrong."""
    refs = re.findall(r"`([\w./-]+\.(?:py|md|json)):(\d+)(?:-(\d+))?`", DOC)
    assert len(refs) >= 10
    for name, start, end in refs:
        path = SHORT_NAMES.get(name, REPO / name)
        assert path.is_file(), f"{name}: no such file"
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert int(end or start) <= lines, f"{name}:{start}{'-' + end if end else ''} is past its {lines} lines"
