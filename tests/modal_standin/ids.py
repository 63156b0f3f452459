"""Modal-shaped object ids: a type prefix, a dash, 22 alphanumeric characters."""

from __future__ import annotations

import hashlib
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return f"{prefix}-" + "".join(secrets.choice(_ALPHABET) for _ in range(22))


def content_id(prefix: str, data: bytes) -> str:
    """A stable id for content-addressed objects (images, mounts): same bytes, same id."""
    n = int.from_bytes(hashlib.sha256(data).digest(), "big")
    chars = []
    for _ in range(22):
        n, r = divmod(n, len(_ALPHABET))
        chars.append(_ALPHABET[r])
    return f"{prefix}-" + "".join(chars)
