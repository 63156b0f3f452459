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


def sign_as_this_machine(image_ref: str, state_dir: str | None = None, platform: str = "amd64") -> str:
    """Leave beside `image_ref` (repo@sha256:…, a platform manifest some test pushed by other means) the
    provenance a theory-deploy push on this machine would have left: signed with the key kept under
    `state_dir` (THEORY_STATE_DIR of the run that will check it; default: this process's). Returns the
    provenance referrer's digest. For tests whose subject is not provenance but whose processor has a
    policy (the sample's `key: local`)."""
    import os

    from theory_deploy import provenance
    from theory_deploy.oci import RegistryClient
    from theory_deploy.refs import ImageRef

    saved = os.environ.get("THEORY_STATE_DIR")
    if state_dir is not None:
        os.environ["THEORY_STATE_DIR"] = state_dir
    try:
        signer = provenance.local_signer()
    finally:
        if state_dir is not None:
            if saved is None:
                os.environ.pop("THEORY_STATE_DIR", None)
            else:
                os.environ["THEORY_STATE_DIR"] = saved
    assert signer is not None
    ref = ImageRef.parse_digest_ref(image_ref, where="test")
    assert ref.digest is not None
    facts = provenance.BuildFacts("test", None, None, "urn:theory-deploy:host:test")
    with RegistryClient(ref.registry, progress=lambda _m: None) as client:
        head = client.head_manifest(ref.path, ref.digest)
        return provenance.Attestor(facts, signer, progress=lambda _m: None).attest(client, ref, platform, head)
