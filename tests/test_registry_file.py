"""registry.yaml: every problem reported with file:line:col, pins written without moving anything else."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from theory_deploy.errors import ImageUnpinnedError, ValidationError
from theory_deploy.refs import ProcessorRef
from theory_deploy.registry_file import (
    SCHEMA_RELATIVE_PATH,
    check_file,
    json_schema_text,
    load_processor,
    write_pins,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "processors/llm/litellm/registry.yaml"
REPOSITORY = "ghcr.io/theory-deploy/llm-litellm"
D1 = f"{REPOSITORY}@sha256:{'1' * 64}"
D2 = f"{REPOSITORY}@sha256:{'2' * 64}"
D3 = f"{REPOSITORY}@sha256:{'3' * 64}"


@pytest.fixture
def repo(tmp_path):
    folder = tmp_path / "processors/llm/litellm"
    folder.mkdir(parents=True)
    shutil.copy(SAMPLE, folder / "registry.yaml")
    return tmp_path


def registry(repo: Path) -> Path:
    return repo / "processors/llm/litellm/registry.yaml"


def test_the_sample_processor_is_valid_and_unpinned(monkeypatch):
    spec, problems = check_file(SAMPLE)
    assert problems == []
    assert spec.pins() == {"amd64": None, "arm64": None}
    monkeypatch.setenv("THEORY_REPO_ROOT", str(REPO))
    loaded = load_processor(ProcessorRef.parse("llm/litellm@1"))
    with pytest.raises(ImageUnpinnedError) as info:
        loaded.pin_for("amd64")
    assert "registry.yaml:17" in info.value.message  # the line of `amd64: null`


def test_committed_schema_is_in_sync_with_the_model():
    assert (REPO / SCHEMA_RELATIVE_PATH).read_text() == json_schema_text(), (
        "schema/registry.schema.json is stale: run `processorctl schema --write`"
    )
    assert SAMPLE.read_text().startswith("# yaml-language-server: $schema=../../../schema/registry.schema.json")


BROKEN = textwrap.dedent(
    """\
    ref: llm/other@1
    build:
      port: 8000
      colour: blue
    image:
      repository: ghcr.io/theory-deploy/llm-litellm
      platforms:
        amd64: ghcr.io/theory-deploy/llm-litellm:latest
        arm64: REPLACE_ARM64
    secrets:
      required: [OPENAI_API_KEY, 1BAD-NAME]
    inputs:
      type: objekt
    """
)


def test_every_problem_is_reported_with_its_position(repo):
    path = registry(repo)
    path.write_text(BROKEN)
    spec, problems = check_file(path)
    assert spec is None
    found = {(p.line, p.col): p.message for p in problems}
    # pydantic finds field problems first; cross-field checks (ref vs folder, pins) need a valid model
    assert any(line == 4 and "unknown key 'colour'" in msg for (line, _), msg in found.items())
    assert any(line == 11 and "1BAD-NAME" in msg for (line, _), msg in found.items())
    path.write_text(BROKEN.replace("  colour: blue\n", "").replace(", 1BAD-NAME", ""))
    _, problems = check_file(path)
    rendered = [str(p) for p in problems]
    assert any(":1:6: ref 'llm/other@1' does not match its folder" in r for r in rendered), rendered
    assert any(":7:12:" in r and "not a digest ref" in r for r in rendered), rendered
    assert any(":8:12:" in r and "REPLACE_ARM64" in r for r in rendered), rendered
    assert any(":12:9:" in r and "not a valid JSON Schema" in r for r in rendered), rendered


def test_pin_to_another_repository_and_config_like_values_are_refused(repo):
    path = registry(repo)
    text = path.read_text().replace("amd64: null", f"amd64: ghcr.io/else/where@sha256:{'a' * 64}")
    path.write_text(text)
    _, problems = check_file(path)
    assert len(problems) == 1 and "image.repository is" in problems[0].message
    assert problems[0].line == 17


def test_yaml_syntax_error_has_a_position(repo):
    path = registry(repo)
    path.write_text("ref: llm/litellm@1\nimage: [unclosed\n")
    _, problems = check_file(path)
    assert problems and problems[0].line >= 2 and "not valid YAML" in problems[0].message


def _diff(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "diff", "-U0", "--no-color"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_pin_writes_change_exactly_the_pin_lines(repo):
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=repo, check=True)
    changed = write_pins(registry(repo), {"amd64": D1, "arm64": D2})
    assert changed == {"amd64": (None, D1), "arm64": (None, D2)}
    assert _diff(repo) == [
        "-    amd64: null  # linux/amd64 manifest: what Modal runs",
        "-    arm64: null  # linux/arm64 manifest: for local runs on Apple silicon",
        f"+    amd64: {D1}  # linux/amd64 manifest: what Modal runs",
        f"+    arm64: {D2}  # linux/arm64 manifest: for local runs on Apple silicon",
    ]
    before = registry(repo).read_bytes()
    assert write_pins(registry(repo), {"amd64": D1}) == {}  # unchanged: no write at all
    assert registry(repo).read_bytes() == before


def test_quoting_and_flow_style_survive(repo):
    path = registry(repo)
    text = path.read_text().replace(
        "  platforms:\n    amd64: null  # linux/amd64 manifest: what Modal runs\n    arm64: null  # linux/arm64 manifest: for local runs on Apple silicon\n",
        f'  platforms: {{amd64: "{D1}", arm64: ~}}   # flow\n',
    )
    path.write_text(text)
    write_pins(path, {"amd64": D2, "arm64": D3})
    assert f'  platforms: {{amd64: "{D2}", arm64: {D3}}}   # flow\n' in path.read_text()
    assert path.read_text().replace(D2, D1).replace(D3, "~") == text


BLOCK_PINS = (
    "  platforms:\n"
    "    amd64: null  # linux/amd64 manifest: what Modal runs\n"
    "    arm64: null  # linux/arm64 manifest: for local runs on Apple silicon\n"
)
SHORT = f"{REPOSITORY}@sha256:{'4' * 64}"  # same length as D1..D3; `null` and `~` are much shorter


def _flow(path: Path, line: str) -> str:
    """Put both pins on one flow-style line (`  platforms: {...}`); return the file as it was before, so
    a test can say what the whole file must be afterwards: `_flow_text(before, expected_line)`."""
    original = path.read_text()
    path.write_text(_flow_text(original, line))
    return original


def _flow_text(original: str, line: str) -> str:
    assert BLOCK_PINS in original
    return original.replace(BLOCK_PINS, f"  platforms: {line}\n")


@pytest.mark.parametrize(
    ("before", "pins", "after"),
    [
        # both null -> both set: each value grows by ~100 characters on the same line
        ("{amd64: null, arm64: null}", {"amd64": D1, "arm64": D2}, f"{{amd64: {D1}, arm64: {D2}}}"),
        # both set -> both set again (same lengths)
        (f"{{amd64: {D1}, arm64: {D2}}}", {"amd64": D3, "arm64": D1}, f"{{amd64: {D3}, arm64: {D1}}}"),
        # both set -> both null: each value shrinks on the same line
        (f"{{amd64: {D1}, arm64: {D2}}}", {"amd64": None, "arm64": None}, "{amd64: null, arm64: null}"),
        # different lengths old -> new on each side: `~` grows while a digest shrinks to null
        (f"{{amd64: ~, arm64: {D2}}}", {"amd64": D1, "arm64": None}, f"{{amd64: {D1}, arm64: null}}"),
        (f"{{amd64: {D2}, arm64: ~}}", {"amd64": None, "arm64": D1}, f"{{amd64: null, arm64: {D1}}}"),
        # the keys in the other order, each value's quotes kept, odd spacing and a trailing comment kept
        (
            f"{{ arm64: '{D3}' ,  amd64: \"{D3}\" }}  # pins",
            {"amd64": D1, "arm64": None},
            f'{{ arm64: null ,  amd64: "{D1}" }}  # pins',
        ),
        (
            f'{{ arm64: ~ ,  amd64: "{D3}" }}  # pins',
            {"amd64": None, "arm64": D2},
            f"{{ arm64: {D2} ,  amd64: null }}  # pins",
        ),
    ],
)
def test_two_pins_on_one_flow_style_line_are_both_written_exactly(repo, before, pins, after):
    path = registry(repo)
    original = _flow(path, before)
    write_pins(path, pins)
    assert path.read_text() == _flow_text(original, after)
    spec, problems = check_file(path)
    assert problems == [] and spec.pins() == pins


def test_updating_one_flow_style_pin_then_both(repo):
    path = registry(repo)
    original = _flow(path, "{amd64: null, arm64: null}  # flow")
    assert write_pins(path, {"arm64": D2}) == {"arm64": (None, D2)}
    assert path.read_text() == _flow_text(original, f"{{amd64: null, arm64: {D2}}}  # flow")
    assert write_pins(path, {"amd64": D1}) == {"amd64": (None, D1)}
    assert path.read_text() == _flow_text(original, f"{{amd64: {D1}, arm64: {D2}}}  # flow")
    # both at once, the left one shrinking to null: the right one's position moves left
    assert write_pins(path, {"amd64": None, "arm64": D3}) == {"amd64": (D1, None), "arm64": (D2, D3)}
    assert path.read_text() == _flow_text(original, f"{{amd64: null, arm64: {D3}}}  # flow")
    # both at once, the left one growing back: the right one's position moves right
    assert write_pins(path, {"amd64": SHORT, "arm64": None}) == {"amd64": (None, SHORT), "arm64": (D3, None)}
    assert path.read_text() == _flow_text(original, f"{{amd64: {SHORT}, arm64: null}}  # flow")


def test_set_repository_clears_both_flow_style_pins_on_one_line(repo):
    path = registry(repo)
    original = _flow(path, f"{{amd64: {D1}, arm64: {D2}}}  # flow")
    new = "127.0.0.1:5000/theory/llm-litellm"
    proc = processorctl(repo, "set-repository", "--ref", "llm/litellm@1", "--repository", new, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cleared_pins"] == ["amd64", "arm64"]
    expected = _flow_text(original, "{amd64: null, arm64: null}  # flow")
    assert path.read_text() == expected.replace(f"  repository: {REPOSITORY}\n", f"  repository: {new}\n")


def test_a_malformed_pin_is_never_written(repo):
    path = registry(repo)
    before = path.read_bytes()
    for bad in [f"{REPOSITORY}:latest", "REPLACE_ARM64", f"ghcr.io/else/where@sha256:{'a' * 64}"]:
        with pytest.raises(ValidationError):
            write_pins(path, {"arm64": bad})
    assert path.read_bytes() == before


WRITERS = 8  # 4 per platform, all on one registry.yaml: the pin lock is per processor folder
ROUNDS = 6  # writes per writer, each with a digest no other write uses


def _digest_for(writer: int, round_: int) -> str:
    return f"{REPOSITORY}@sha256:{writer:02x}{round_:02x}{'0' * 60}"


def _pin_writer(path: str, writer: int, start: Any, results: Any) -> None:
    """One writer process: wait for all the others, then write its own platform's pin ROUNDS times and
    report what each write says it changed (old, new). Errors are reported, not raised."""
    platform = "amd64" if writer % 2 == 0 else "arm64"
    changes = []
    try:
        start.wait(60)
        for round_ in range(ROUNDS):
            changed = write_pins(Path(path), {platform: _digest_for(writer, round_)})
            changes.append(changed[platform])
        results.put((writer, platform, changes, None))
    except BaseException as exc:  # reported to the test, which fails on it
        results.put((writer, platform, changes, f"{type(exc).__name__}: {exc}"))


def test_concurrent_writers_lose_no_update(repo):
    """8 processes released together by a barrier, each writing its own pins 6 times into one file.

    Under the lock every write is a read-modify-write of the latest file, so for each platform the
    (old, new) pairs the writes report chain up: exactly one write starts from null, every other
    starts from a value an earlier write wrote (each such value is replaced at most once), and the
    value nobody replaced is what the file holds at the end, for both platforms. Two writers that
    read the same file (a lost update) report the same `old`, and a write of one platform from a
    stale file puts the other platform's replaced value back: both break the chain."""
    path = registry(repo)
    check_file(path)  # the parent imports what a first read needs, before the children are forked
    ctx = multiprocessing.get_context("fork")  # forked: no re-import, so the writers really start together
    start, results = ctx.Barrier(WRITERS), ctx.Queue()
    workers = [ctx.Process(target=_pin_writer, args=(str(path), w, start, results)) for w in range(WRITERS)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    errors = [(writer, error) for writer, _p, _c, error in reports if error]
    assert errors == [], errors
    spec, problems = check_file(path)
    assert problems == []
    final = spec.pins()
    for platform in ("amd64", "arm64"):
        pairs = [pair for _w, p, changes, _e in reports if p == platform for pair in changes]
        written = {
            _digest_for(w, r) for w in range(WRITERS) if (w % 2 == 0) == (platform == "amd64") for r in range(ROUNDS)
        }
        assert {new for _old, new in pairs} == written
        olds = [old for old, _new in pairs]
        assert olds.count(None) == 1, f"{platform}: {olds.count(None)} writes started from null (lost updates)"
        replaced = [old for old in olds if old is not None]
        assert len(replaced) == len(set(replaced)), f"{platform}: a value was replaced twice (a lost update)"
        assert set(replaced) <= written
        (last,) = written - set(replaced)  # the one value no write replaced
        assert final[platform] == last, f"{platform}: the file holds {final[platform]}, the last write was {last}"


KILL_LOOP = """
import sys
from pathlib import Path
from theory_deploy.registry_file import write_pins
path = Path(sys.argv[1]); a, b = sys.argv[2], sys.argv[3]
i = 0
while True:
    write_pins(path, {"amd64": a if i % 2 else b}); i += 1
    if i == 1:
        print("writing", flush=True)
"""


@pytest.mark.slow
def test_a_kill_at_any_moment_leaves_the_old_file_or_the_new(repo):
    path = registry(repo)
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(path), D1, D2], stdout=subprocess.PIPE)
        # Kill mid-loop, however slowly the interpreter started: after its first write is complete.
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
        time.sleep(0.05 + attempt * 0.07)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        spec, problems = check_file(path)
        assert problems == [], problems
        assert spec.pins()["amd64"] in (D1, D2)
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "registry.yaml"]
    assert all(name.endswith(".tmp") for name in leftovers)  # only abandoned temp files, never a half file


def processorctl(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, run against the repository copy `repo`."""
    return subprocess.run(
        [sys.executable, "-m", "theory_deploy.cli.processorctl", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "THEORY_REPO_ROOT": str(repo), **env},
    )


def test_validate_cli_lists_every_problem_and_annotates(repo):
    registry(repo).write_text(BROKEN.replace("  colour: blue\n", ""))
    proc = processorctl(repo, "validate", GITHUB_ACTIONS="true")
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.count("registry.yaml:") >= 4
    assert "::error file=processors/llm/litellm/registry.yaml,line=" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = processorctl(repo, "validate", "--json", GITHUB_ACTIONS="")
    payload = json.loads(proc.stdout)
    assert payload["status"] == "error" and payload["error"]["code"] == "ERR_VALIDATION"
    assert len(payload["error"]["details"]["problems"]) >= 4


def test_set_repository_moves_the_processor_and_clears_foreign_pins(repo):
    path = registry(repo)
    write_pins(path, {"amd64": D1})
    new = "127.0.0.1:5000/theory/llm-litellm"
    proc = processorctl(repo, "set-repository", "--ref", "llm/litellm@1", "--repository", new, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cleared_pins"] == ["amd64"]
    spec, problems = check_file(path)
    assert problems == [] and spec.image.repository == new and spec.pins() == {"amd64": None, "arm64": None}
    text = path.read_text()
    assert "    amd64: null  # linux/amd64 manifest: what Modal runs\n" in text
    assert f"  repository: {new}\n" in text
    proc = processorctl(repo, "set-repository", "--ref", "llm/litellm@1", "--repository", f"{new}:tag")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
