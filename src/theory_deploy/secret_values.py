"""Secret values: where they come from, and making sure they never leave.

Values are read from the process environment by name. Every value read is registered with the
scrubber (and masked in GitHub Actions with `::add-mask::`) *before* anything could print it, so a
value that slips into a message by mistake still prints as `***`.

(Named `secret_values`, not `secrets`, so it never shadows the standard library's `secrets`.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import gha
from .errors import RegistryAuthError, TheoryDeployError, UsageError

_known_values: set[str] = set()
# Every form a known value may take in a message (stripped, JSON/repr-escaped, each line): scrubbed too.
_known_forms: set[str] = set()
# Short values would scrub ordinary words; a real secret is longer than this.
_MIN_SCRUB_LEN = 4

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The registry pull secret (REGISTRY_AUTH) holds two keys; every other secret holds one key named like it.
REGISTRY_AUTH = "REGISTRY_AUTH"
REGISTRY_AUTH_KEYS = ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")
# The registry host (host[:port]) REGISTRY_USERNAME/REGISTRY_PASSWORD belong to; first one set wins.
REGISTRY_HOST_VARS = ("THEORY_REGISTRY_HOST", "REGISTRY_HOST")


def _forms(value: str) -> set[str]:
    """The value as it may show up in a message: as is, stripped, escaped by json.dumps / repr (of
    the str and of its UTF-8 bytes), and each of its lines (stripped)."""
    forms = {value, value.strip(), json.dumps(value)[1:-1], repr(value)[1:-1]}
    try:
        forms.add(repr(value.encode("utf-8"))[2:-1])
    except UnicodeEncodeError:
        pass
    for line in value.splitlines():
        forms.add(line)
        forms.add(line.strip())
    return {form for form in forms if len(form) >= _MIN_SCRUB_LEN}


def register_secret_value(value: str | None) -> None:
    if value and len(value) >= _MIN_SCRUB_LEN and value not in _known_values:
        _known_values.add(value)
        _known_forms.update(_forms(value))
        gha.add_mask(value)


def scrub(text: str) -> str:
    """`text` with every occurrence of every known value (in any of its forms) replaced by `***`.

    Occurrences are found for all forms first and every covered character is hidden, so two values
    that overlap or contain one another never leave a piece of either behind."""
    if not _known_forms or not text:
        return text
    covered = bytearray(len(text))
    found = False
    for form in sorted(_known_forms, key=len, reverse=True):
        start = text.find(form)
        while start != -1:
            found = True
            covered[start : start + len(form)] = b"\x01" * len(form)
            start = text.find(form, start + 1)
    if not found:
        return text
    pieces: list[str] = []
    i = 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            pieces.append("***")
        else:
            j = covered.find(b"\x01", i)
            j = len(text) if j == -1 else j
            pieces.append(text[i:j])
            i = j
    return "".join(pieces)


gha.use_scrubber(scrub)


def check_header_value(value: str, name: str, error: type[TheoryDeployError], *, ascii_only: bool = True) -> str:
    """Return `value`, or raise `error` (naming the variable `name`, never the value) when it cannot
    be sent in an HTTP header: control characters (a newline, often a copy-paste leftover), leading
    or trailing whitespace, or (for values sent as is) non-ASCII characters."""
    problem = None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        bad = next(ch for ch in value if ord(ch) < 0x20 or ord(ch) == 0x7F)
        kind = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}.get(bad, "a control character")
        problem = f"contains {kind} (U+{ord(bad):04X})"
    elif value != value.strip():
        problem = "starts or ends with whitespace"
    elif ascii_only and not value.isascii():
        problem = "contains non-ASCII characters"
    if problem:
        raise error(
            f"{name} {problem}, so it cannot be sent as an HTTP header; refusing to use it (its value is not shown).",
            remedy=f'Set {name} again without the stray character (e.g. `printf %s "$TOKEN"`, not `echo`).',
        )
    return value


def keys_for(secret_name: str) -> tuple[str, ...]:
    """The environment variables (and Modal secret keys) that make up one named secret."""
    return REGISTRY_AUTH_KEYS if secret_name == REGISTRY_AUTH else (secret_name,)


# Names a processor secret may not take: they would replace theory-deploy's own credentials or change
# how the runner and Python behave for every step that follows.
_RESERVED_PREFIXES = ("THEORY_", "GITHUB_", "RUNNER_", "ACTIONS_", "MODAL_", "PYTHON", "LD_", "DOCKER_", "GIT_")
_RESERVED_NAMES = frozenset({"PATH", "HOME", "SHELL", "TMPDIR", "CI", REGISTRY_AUTH, *REGISTRY_AUTH_KEYS})


def parse_secret_bundle(text: str, *, where: str) -> dict[str, str]:
    """Processor secrets carried in one value (`where` names it, e.g. the input processor-secrets):
    a JSON object of NAME -> value, or lines of NAME=value (blank lines and `#` comments skipped, an
    optional `export ` prefix, one pair of surrounding quotes removed). Every value is registered
    with the scrubber and masked on its own before anything is checked, so no error can print one;
    errors name the line, never its text."""
    text = text.strip()
    if not text:
        return {}
    pairs: list[tuple[str, str, str]] = []  # (name, value, where exactly)
    if text.startswith(("{", "[")):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            _mask(text)  # the whole text: no part of it may show, even if an error printed it
            problem = f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
            raise _bundle_error(where, problem) from None  # the JSON error holds the text
        if not isinstance(loaded, dict):
            _mask(text)
            raise _bundle_error(where, "is a JSON value but not an object of NAME: value")
        for value in loaded.values():
            _mask(value if isinstance(value, str) else json.dumps(value))
        for name, value in loaded.items():
            if not isinstance(value, str):
                raise _bundle_error(where, f"{name!r}: the value is not a string (JSON {type(value).__name__})")
            pairs.append((name, value, f"key {name!r}"))
    else:
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
        lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
        for number, line in lines:
            name, sep, value = line.removeprefix("export ").partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            _mask(value if sep else line)  # a line without `=` may be a pasted value
            pairs.append((name.strip() if sep else "", value, f"line {number}"))
        for name, _, place in pairs:
            if not name:
                raise _bundle_error(where, f"{place} is not NAME=value (its text is not shown)")
    bundle: dict[str, str] = {}
    for name, value, place in pairs:
        if not ENV_NAME_RE.match(name):
            raise _bundle_error(where, f"{place}: {name!r} is not a variable name (letters, digits, _)")
        if name in _RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES):
            raise _bundle_error(
                where, f"{place}: {name!r} is reserved (it would replace theory-deploy's own settings); rename it"
            )
        if name in bundle:
            raise _bundle_error(where, f"{place}: {name!r} is given twice")
        bundle[name] = value
    return bundle


def _mask(value: str) -> None:
    """Mask a value in the log and register it with the scrubber, whatever its length."""
    if 0 < len(value) < _MIN_SCRUB_LEN:
        gha.add_mask(value)  # too short for the scrubber, masked in the log all the same
    register_secret_value(value)


def _bundle_error(where: str, problem: str) -> TheoryDeployError:
    return UsageError(
        f"{where} {problem}.",
        remedy=f"Give {where} as NAME=value lines (one per secret) or as a JSON object of NAME: value.",
    )


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


def registry_credentials_host(environ: Mapping[str, str] | None = None) -> str | None:
    """THEORY_REGISTRY_HOST (or REGISTRY_HOST): the one registry host[:port] the registry credentials
    are for, lowercased; None when unset (the caller then binds them to the registry it was asked
    to use, e.g. the processor's image.repository)."""
    env = os.environ if environ is None else environ
    for name in REGISTRY_HOST_VARS:
        value = env.get(name, "").strip().lower()
        if value:
            value = value.removeprefix("https://").removeprefix("http://").rstrip("/")
            return value
    return None


def registry_credentials(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """REGISTRY_USERNAME/REGISTRY_PASSWORD (the keys of the REGISTRY_AUTH secret), if both are set.

    Raises RegistryAuthError (naming the variable, not the value) for a value that cannot be sent in
    an HTTP Authorization header (a newline, a control character, surrounding whitespace)."""
    env = os.environ if environ is None else environ
    user, password = env.get("REGISTRY_USERNAME", ""), env.get("REGISTRY_PASSWORD", "")
    register_secret_value(password)
    if not (user and password):
        return None
    check_header_value(user, "REGISTRY_USERNAME", RegistryAuthError, ascii_only=False)
    check_header_value(password, "REGISTRY_PASSWORD", RegistryAuthError, ascii_only=False)
    if ":" in user:
        raise RegistryAuthError("REGISTRY_USERNAME contains ':', which Basic auth cannot carry in a user name.")
    return (user, password)
