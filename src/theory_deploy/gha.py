"""GitHub Actions I/O: step outputs, masks, annotations, groups and the step summary.

Outside Actions (no GITHUB_ACTIONS=true) every function here is silent, so a person on a laptop
never sees workflow commands. Inside, they follow GitHub's documented file and command formats:
multi-line outputs use a random delimiter that cannot occur in the value, annotation data is
escaped, and the step summary is capped below GitHub's 1 MiB limit.
"""

from __future__ import annotations

import os
import secrets as _random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

SUMMARY_LIMIT_BYTES = 1024 * 1024 - 16 * 1024  # leave headroom below GitHub's 1 MiB per step
_TRUNCATION_NOTE = "\n\n_(summary truncated to stay under GitHub's 1 MiB limit)_\n"


# What hides secret values in text we hand to the runner for people to read (annotations, the step
# summary). Step outputs are data that later steps parse, and are not scrubbed: a registry user name
# that is also part of a repository path must survive in a digest output.
# secret_values installs its scrubber when it is imported; gha imports nothing of ours, so the
# masking commands themselves (add_mask) can never be scrubbed.
_scrub: Callable[[str], str] = str


def use_scrubber(scrub: Callable[[str], str]) -> None:
    global _scrub
    _scrub = scrub


def in_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def _command(line: str) -> None:
    sys.stdout.flush()
    # Workflow commands are read from stdout; under --json stdout must stay one JSON object, so
    # commands go to stderr, which the runner also scans.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def add_mask(value: str) -> None:
    if in_actions() and value:
        for line in value.splitlines() or [value]:
            if line.strip():
                _command(f"::add-mask::{_escape_data(line)}")


def annotate(
    level: Literal["error", "warning", "notice"],
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    col: int | None = None,
    title: str | None = None,
) -> None:
    if not in_actions():
        return
    props = []
    if file:
        props.append(f"file={_escape_property(file)}")
    if line:
        props.append(f"line={line}")
    if col:
        props.append(f"col={col}")
    if title:
        props.append(f"title={_escape_property(_scrub(title))}")
    prefix = f"::{level} {','.join(props)}::" if props else f"::{level}::"
    _command(prefix + _escape_data(_scrub(message)))


@contextmanager
def group(title: str) -> Iterator[None]:
    if in_actions():
        _command(f"::group::{_escape_data(title)}")
    try:
        yield
    finally:
        if in_actions():
            _command("::endgroup::")


def _append(path_var: str, text: str) -> bool:
    target = os.environ.get(path_var)
    if not target:
        return False
    with Path(target).open("a", encoding="utf-8") as handle:
        handle.write(text)
    return True


def set_output(name: str, value: str) -> None:
    """Write one step output, always in the heredoc form with a random delimiter the value does not
    contain: whatever the value holds, it can neither end its entry early nor add another output."""
    while True:
        delimiter = f"ghadelimiter_{_random.token_hex(16)}"
        if delimiter not in value:
            break
    _append("GITHUB_OUTPUT", f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def add_summary(markdown: str) -> None:
    """Append to the step summary, never letting the file grow past GitHub's limit."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    path = Path(target)
    used = path.stat().st_size if path.exists() else 0
    data = _scrub(markdown).encode("utf-8")
    room = SUMMARY_LIMIT_BYTES - used
    if room <= 0:
        return
    if len(data) > room:
        note = _TRUNCATION_NOTE.encode()
        data = data[: max(0, room - len(note))].decode("utf-8", errors="ignore").encode() + note
    with path.open("ab") as handle:
        handle.write(data)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(value: str) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
