"""An echo processor: the smallest useful theory.run.v1 handler. Replace the body with your own.

Deterministic and offline in both modes: the same inputs give the same outputs.
mock: what a test or a smoke run uses; no secret is read.
real: the same echo; if the optional secret ECHO_API_KEY is set, the handler registers it with the
      scrubber (`ctx.secret`), as a real provider call would, and reports that it had one.
Outputs: {"text": str, "words": int, "mode": "mock" | "real"} (+ "authenticated": bool in real mode);
the words are streamed as Token frames first.
"""

from __future__ import annotations

import os
import re
from typing import Any

from theory_runtime import RunContext

API_KEY_ENV = "ECHO_API_KEY"
_WORD_RE = re.compile(r"\S+\s*|\s+")


def echo(text: str, uppercase: bool) -> str:
    return text.upper() if uppercase else text


def handler(ctx: RunContext) -> dict[str, Any]:
    text = echo(ctx.inputs["text"], ctx.inputs.get("uppercase", True))
    tokens = _WORD_RE.findall(text)
    for token in tokens:
        ctx.token(token)
    outputs: dict[str, Any] = {"text": text, "words": len(text.split()), "mode": ctx.mode}
    if ctx.mode == "real":
        has_key = bool(os.environ.get(API_KEY_ENV))
        if has_key:
            ctx.secret(API_KEY_ENV)  # masks the value in every frame and log line from now on
        outputs["authenticated"] = has_key
    ctx.log(f"echoed {len(text)} characters")
    return outputs
