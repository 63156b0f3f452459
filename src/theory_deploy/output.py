"""What a verb prints: exactly one JSON object on stdout under --json, human text otherwise.

Progress and logs always go to stderr, so stdout stays machine-readable. Every string that leaves
through here passes the secret scrubber first: a value registered with `secret_values.register_secret_value`
is replaced by `***` wherever it appears, even if a bug puts it in a message.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any, TextIO

from . import secret_values


def _dump(obj: Any) -> str:
    return secret_values.scrub(json.dumps(obj, indent=2, sort_keys=False, default=str))


def emit_result(result: dict[str, Any], *, json_mode: bool, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    payload = {"status": "success", **result}
    if json_mode:
        out.write(_dump(payload) + "\n")
        return
    summary = result.get("summary")
    if summary:
        out.write(secret_values.scrub(str(summary)) + "\n")
    else:
        out.write(_dump(payload) + "\n")
    out.flush()


def emit_error(payload: dict[str, Any], human: str, *, json_mode: bool) -> None:
    if json_mode:
        sys.stdout.write(_dump(payload) + "\n")
        sys.stdout.flush()
    sys.stderr.write(secret_values.scrub(human) + "\n")
    sys.stderr.flush()


def progress(message: str) -> None:
    """One line of progress on stderr (never stdout), scrubbed."""
    sys.stderr.write(secret_values.scrub(message) + "\n")
    sys.stderr.flush()


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def status_line(text: str | None) -> None:
    """On a terminal, one line of live status on stderr, overwritten in place; None clears it.
    Long work (a build that runs pip under QEMU for minutes) shows what it is doing without
    flooding the screen. Callers use it only when `stderr_is_tty()`."""
    if text is None:
        sys.stderr.write("\r\033[K")
    else:
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        sys.stderr.write("\r\033[K" + secret_values.scrub(text)[:width])
    sys.stderr.flush()
