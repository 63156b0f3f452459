"""llm/litellm@1: chat completion through LiteLLM, streamed as Token frames.

mock: deterministic and offline. The same inputs give byte-identical outputs; no secret is read.
real: `litellm.acompletion(..., stream=True)` (the async form of `litellm.completion`), with
      `api_base` from LITELLM_API_BASE (an OpenAI-compatible base URL, e.g. http://host:8080/v1)
      and the key from OPENAI_API_KEY.
Outputs: {"text": str, "model": str, "tokens": [str, ...]} where "".join(tokens) == text.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from typing import Any

from theory_runtime import MissingSecretError, ProviderError, RunContext

DEFAULT_MODEL = "gpt-4o-mini"
MOCK_PREFIX = "Mock response: "
MOCK_CHARS = 50
API_KEY_ENV = "OPENAI_API_KEY"
API_BASE_ENV = "LITELLM_API_BASE"

_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_litellm: Any = None
_import_lock = threading.Lock()


def mock_outputs(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    text = MOCK_PREFIX + str(messages[-1].get("content", ""))[:MOCK_CHARS]
    return {"text": text, "model": model, "tokens": _TOKEN_RE.findall(text)}


def _load_litellm() -> Any:
    """Import LiteLLM once, offline-friendly and quiet (no cost-map download, no debug banners)."""
    global _litellm
    with _import_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_TELEMETRY", "False")
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            litellm.set_verbose = False
            _litellm = litellm
    return _litellm


def warm_up() -> None:
    """Import LiteLLM (seconds of work) in the background at startup, off the event loop."""
    threading.Thread(target=_load_litellm, name="litellm-import", daemon=True).start()


def _provider_message(ctx: RunContext, e: BaseException) -> str:
    status = getattr(e, "status_code", None)
    where = f" (HTTP {status})" if isinstance(status, int) else ""
    return f"{type(e).__name__}{where}: {ctx.scrub(str(e))}"


async def handler(ctx: RunContext) -> dict[str, Any]:
    params = ctx.inputs["params"]
    messages = [{"role": m["role"], "content": m["content"]} for m in params["messages"]]
    model = params.get("model") or DEFAULT_MODEL

    if ctx.mode == "mock":
        outputs = mock_outputs(model, messages)
        for tok in outputs["tokens"]:
            ctx.token(tok)
        return outputs

    api_key = os.environ.get(API_KEY_ENV)
    if not api_key:
        raise MissingSecretError(f"Missing secret {API_KEY_ENV}: real mode needs it (mock mode does not).")
    api_key = ctx.secret(API_KEY_ENV)  # registers the value with the scrubber
    api_base = os.environ.get(API_BASE_ENV) or None
    litellm = _litellm or await asyncio.to_thread(_load_litellm)  # never block the event loop on the import
    remaining = ctx.remaining_s()

    tokens: list[str] = []
    try:
        stream = await litellm.acompletion(
            model=model,
            messages=messages,
            api_base=api_base,
            api_key=api_key,
            stream=True,
            timeout=remaining if remaining else None,
        )
        async for chunk in stream:
            choices = getattr(chunk, "choices", None) or []
            delta = getattr(choices[0].delta, "content", None) if choices else None
            if delta:
                tokens.append(delta)
                ctx.token(delta)
    except Exception as e:  # noqa: BLE001 (every provider/transport failure is ERR_PROVIDER, scrubbed)
        raise ProviderError(_provider_message(ctx, e)) from None
    ctx.event("completion", {"chunks": len(tokens)})
    return {"text": "".join(tokens), "model": model, "tokens": tokens}
