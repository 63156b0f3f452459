"""Secret values: where they come from, and making sure they never leave.

Values are read from the process environment by name. Every value read is registered with the
scrubber (and masked in GitHub Actions with `::add-mask::`) *before* anything could print it, so a
value that slips into a message by mistake still prints as `***`.

(Named `secret_values`, not `secrets`, so it never shadows the standard library's `secrets`.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import gha

_known_values: set[str] = set()
# Short values would scrub ordinary words; a real secret is longer than this.
_MIN_SCRUB_LEN = 4

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The registry pull secret (REGISTRY_AUTH) holds two keys; every other secret holds one key named like it.
REGISTRY_AUTH = "REGISTRY_AUTH"
REGISTRY_AUTH_KEYS = ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")


def register_secret_value(value: str | None) -> None:
    if value and len(value) >= _MIN_SCRUB_LEN and value not in _known_values:
        _known_values.add(value)
        gha.add_mask(value)


def scrub(text: str) -> str:
    # Longest first, so a value containing another is replaced whole.
    for value in sorted(_known_values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "***")
    return text


def keys_for(secret_name: str) -> tuple[str, ...]:
    """The environment variables (and Modal secret keys) that make up one named secret."""
    return REGISTRY_AUTH_KEYS if secret_name == REGISTRY_AUTH else (secret_name,)


@dataclass
class SecretValues:
    """Values found for a set of secret names; `missing` names have no (or an empty) value."""

    values: dict[str, dict[str, str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def read_from_environment(names: Iterable[str], environ: Mapping[str, str] | None = None) -> SecretValues:
    env = os.environ if environ is None else environ
    found = SecretValues()
    for name in names:
        keys = keys_for(name)
        pairs = {key: env.get(key, "") for key in keys}
        for value in pairs.values():
            register_secret_value(value)
        if all(pairs.values()):
            found.values[name] = pairs
        else:
            found.missing.append(name)
    return found


def registry_credentials(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """REGISTRY_USERNAME/REGISTRY_PASSWORD (the keys of the REGISTRY_AUTH secret), if both are set."""
    env = os.environ if environ is None else environ
    user, password = env.get("REGISTRY_USERNAME", ""), env.get("REGISTRY_PASSWORD", "")
    register_secret_value(password)
    return (user, password) if user and password else None
