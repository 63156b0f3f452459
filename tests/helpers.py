"""Small helpers shared by the tests (import them: ``from tests.helpers import assert_no_canary``).

Canaries are random, unguessable stand-ins for secret values. Feed them to the code under test as
if they were real secrets, then pass everything it printed, logged, wrote or raised through
``assert_no_canary``: a secret value must never reach stdout, stderr, logs, JSON or exceptions.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping
from typing import NamedTuple

# Names the canary_secrets fixture fills in; tests may ask for more with make_canaries().
DEFAULT_CANARY_NAMES = (
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "REGISTRY_PASSWORD",
    "GITHUB_TOKEN",
    "OPENAI_API_KEY",
    "THEORY_CANARY_SECRET",
)


class AuthRegistry(NamedTuple):
    """The basic-auth loopback registry: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    user: str
    password: str


def make_canary() -> str:
    return f"canary-{uuid.uuid4().hex}"


def make_canaries(*names: str) -> dict[str, str]:
    """NAME -> ``canary-<uuid4 hex>``, a fresh value per name."""
    return {name: make_canary() for name in (names or DEFAULT_CANARY_NAMES)}


def _forms(value: str) -> list[str]:
    """The value plus the encodings a leak is likely to take."""
    forms = [value]
    if value.startswith("canary-"):
        forms.append(value.removeprefix("canary-"))  # the random core alone
    forms.append(base64.b64encode(value.encode()).decode().rstrip("="))
    return forms


def find_canaries(text: str | bytes, canaries: Mapping[str, str] | Iterable[str]) -> list[str]:
    """Names (or values, when given a plain iterable) of the canaries that occur in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    items = canaries.items() if isinstance(canaries, Mapping) else ((v, v) for v in canaries)
    return [name for name, value in items if value and any(f in text for f in _forms(value))]


def assert_no_canary(text: str | bytes | None, canaries: Mapping[str, str] | Iterable[str]) -> None:
    """Fail if any canary value (or its bare hex core, or base64 of it) appears in ``text``."""
    if not text:
        return
    leaked = find_canaries(text, canaries)
    if leaked:
        raise AssertionError(f"secret value(s) leaked into output: {', '.join(sorted(leaked))}")
