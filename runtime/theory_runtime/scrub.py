"""Keep secret values out of frames, envelopes and logs.

The scrubber knows the values of every environment variable the registry names as a secret
(required, optional, the auth secret), of every variable whose name looks secret (KEY, TOKEN,
SECRET, PASSWORD, CREDENTIAL), and of anything a handler read through `ctx.secret()`. Only values
are ever replaced; names stay readable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable

MASK = "***"
MIN_LEN = 4  # shorter values would mangle ordinary text; real secrets are much longer
_SECRETISH_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL)", re.IGNORECASE)
_SECRETISH_MIN_LEN = 8
# Provider error messages often quote a key (or most of it): mask anything key-shaped in messages.
_KEY_SHAPED = re.compile(r"\b(sk|pk|rk|ghp|gho|ghs|xox[abp])[-_][A-Za-z0-9_\-*.]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{6,}")


class Scrubber:
    def __init__(self, values: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self.add(*values)

    @classmethod
    def from_env(cls, names: Iterable[str], environ: dict[str, str] | None = None) -> Scrubber:
        env = os.environ if environ is None else environ
        values = [env[n] for n in names if env.get(n)]
        values += [v for k, v in env.items() if _SECRETISH_NAME.search(k) and len(v) >= _SECRETISH_MIN_LEN]
        return cls(values)

    def add(self, *values: str | None) -> None:
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_LEN}
        if not new:
            return
        with self._lock:
            merged = set(self._values) | new
            for v in list(merged):  # also the JSON-escaped spelling, as it appears inside frames
                merged.add(json.dumps(v, ensure_ascii=False)[1:-1])
                merged.add(json.dumps(v)[1:-1])
            self._values = tuple(sorted(merged, key=len, reverse=True))

    def text(self, s: str) -> str:
        """Mask known secret values (frames, outputs: everything that leaves the process)."""
        for v in self._values:
            if v in s:
                s = s.replace(v, MASK)
        return s

    def message(self, s: str, limit: int = 600) -> str:
        """Mask known values and key-shaped strings; for error messages and log lines."""
        s = self.text(s)
        s = _KEY_SHAPED.sub(lambda m: m.group(1) + "-" + MASK, s)
        s = _BEARER.sub(lambda m: m.group(1) + " " + MASK, s)
        if len(s) > limit:
            s = s[: limit - 3] + "..."
        return s


class ScrubFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message, string arguments and traceback.

    The record keeps its shape (formatters such as uvicorn's access log unpack `record.args`).
    """

    def __init__(self, scrubber: Scrubber):
        super().__init__()
        self.scrubber = scrubber

    def _arg(self, a: object) -> object:
        if isinstance(a, str):
            return self.scrubber.message(a, limit=4000)
        if isinstance(a, BaseException):
            return self.scrubber.message(str(a), limit=4000)
        return a

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.scrubber.message(record.msg, limit=4000)
        elif isinstance(record.msg, BaseException):
            record.msg = self.scrubber.message(str(record.msg), limit=4000)
        if isinstance(record.args, tuple):
            record.args = tuple(self._arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._arg(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            import traceback

            record.exc_text = self.scrubber.message(
                "".join(traceback.format_exception(*record.exc_info)).rstrip("\n"), limit=20000
            )
        elif record.exc_text:
            record.exc_text = self.scrubber.message(record.exc_text, limit=20000)
        return True
