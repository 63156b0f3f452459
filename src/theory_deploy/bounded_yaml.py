"""Reading untrusted YAML within limits, before anything is built from it.

registry.yaml comes from pull requests, so it is hostile input until checked. Before anything is
parsed: only a regular file is opened (never a FIFO or a device, which would block or never end),
at most the size cap is read, and the bytes must be UTF-8. Before the document is built: one pass
over the parser's events (iterative, stopping at the first breach) bounds the nesting depth and
the number of nodes, and refuses aliases (`*name`): an alias makes the document that validation,
the build and the runtime see larger than the file (the "billion laughs"), and nothing needs one
(the `inputs` JSON Schema reuses sub-schemas with `$defs`/`$ref`, which every consumer understands).

`registry_file` reports a `Refused` as a Problem at its line and column; `registry_pins` treats a
text over the limits (another revision's) as no text at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

from .errors import UsageError
from .files import UnreadableFile, read_regular_file

MAX_BYTES_ENV = "THEORY_MAX_REGISTRY_BYTES"
DEFAULT_MAX_BYTES = 1024 * 1024
MAX_NODES_ENV = "THEORY_MAX_REGISTRY_NODES"
DEFAULT_MAX_NODES = 20_000
MAX_DEPTH = 64


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw) if raw.isdigit() else 0
    if value <= 0:
        raise UsageError(
            f"{name}={raw!r} is not a positive whole number.",
            remedy=f"Unset {name} (default {default}) or set it to a positive whole number.",
        )
    return value


def max_registry_bytes() -> int:
    """The size cap of one registry.yaml in bytes (THEORY_MAX_REGISTRY_BYTES, default 1 MiB)."""
    return _env_limit(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)


def max_registry_nodes() -> int:
    """The cap on YAML nodes (scalars, mappings, sequences) in one registry.yaml."""
    return _env_limit(MAX_NODES_ENV, DEFAULT_MAX_NODES)


class Refused(Exception):
    """A registry.yaml refused before parsing; carries the position and the message of its Problem."""

    def __init__(self, line: int, col: int, message: str):
        super().__init__(message)
        self.line, self.col, self.message = line, col, message


def _size_refusal(size: int | str, limit: int) -> Refused:
    return Refused(
        1,
        1,
        f"file is {size} bytes, over the registry.yaml size limit of {limit} bytes "
        f"(raise it with {MAX_BYTES_ENV}=<bytes>)",
    )


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        boms = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}
        hint = next(
            (f"; it starts with a {name} byte-order mark" for bom, name in boms.items() if data.startswith(bom)), ""
        )
        raise Refused(
            line,
            col,
            f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8{hint}; "
            "registry.yaml must be encoded as UTF-8",
        ) from None


def read_registry_text(path: Path) -> str:
    """The text of a registry.yaml on disk, within the limits. Raises OSError (FileNotFoundError when
    absent) or Refused. Symlinks are followed, but what they lead to must be a regular file; it is
    opened non-blocking, so a FIFO can never hang the open."""
    limit = max_registry_bytes()
    try:
        data = read_regular_file(path, limit)
    except UnreadableFile as exc:
        if exc.kind is not None:
            raise Refused(1, 1, f"{exc.kind}, not a regular file; registry.yaml must be a regular file") from None
        raise _size_refusal(exc.size or f"more than {limit}", limit) from None
    return _decode(data)


def check_yaml_limits(text: str) -> None:
    """Raise Refused when `text` breaks a limit: size, nesting depth, node count, or any alias.
    Text that does not parse is left to the loader, which reports it with its position."""
    limit = max_registry_bytes()
    size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise _size_refusal(size, limit)
    max_nodes = max_registry_nodes()
    depth = nodes = 0
    try:
        for event in YAML(typ="rt").parse(text):
            mark = event.start_mark
            line, col = (int(mark.line) + 1, int(mark.column) + 1) if mark is not None else (1, 1)
            if isinstance(event, AliasEvent):
                raise Refused(
                    line,
                    col,
                    f"YAML alias *{event.anchor} is not allowed in registry.yaml (aliases can expand a small "
                    "file into a huge document); write the value out, or use $defs/$ref inside `inputs`",
                )
            if isinstance(event, CollectionStartEvent | ScalarEvent):
                nodes += 1
                if nodes > max_nodes:
                    raise Refused(
                        line,
                        col,
                        f"more than {max_nodes} YAML nodes, the registry.yaml limit "
                        f"(raise it with {MAX_NODES_ENV}=<count>)",
                    )
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise Refused(line, col, f"nested more than {MAX_DEPTH} levels deep, the registry.yaml limit")
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
    except YAMLError:
        return


def safe_yaml_text(text: str | None) -> str | None:
    """`text` when it is within the limits, else None: for the tolerant readers of other revisions'
    registry.yaml texts, which treat an unreadable text as no text."""
    if text is None:
        return None
    try:
        check_yaml_limits(text)
    except Refused:
        return None
    return text
