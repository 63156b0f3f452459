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

The fast reader (`fast_document`): ruamel.yaml's pure-Python parser costs milliseconds per file, so
validating a thousand processors took seconds. When PyYAML's libyaml parser (C) is installed,
`fast_document` pulls the parser's events and builds the plain document from them in one iterative
pass that applies the same limits as `check_yaml_limits` (depth, node count, no alias). It resolves
and constructs scalars exactly as the round-trip loader does (ruamel's YAML 1.2 resolver and
round-trip constructor), and it vouches only for plain documents: any tag, anchor, alias, directive,
merge or non-string key, duplicate key, second document, a top level that is not a mapping, a
breached limit or a parse error makes it answer None, and the caller falls back to the exact reader
(`check_yaml_limits`, then the round-trip loader), which reports the problem at its line and column.
So it can only say "this document is X" for a document the exact reader reads as X; it never
reports a problem itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.tag import Tag

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


# ---------------------------------------------------------------------------------------------------
# The fast reader (see the module docstring)
# ---------------------------------------------------------------------------------------------------

_STR = "tag:yaml.org,2002:str"
# Implicit tags whose scalars the round-trip constructor builds without a document around them.
_CONSTRUCTED = frozenset(f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "timestamp"))
_NO_KEY = object()
# Where libyaml (YAML 1.1) and ruamel's scanner disagree: tabs (libyaml takes them as separation
# where ruamel refuses them), the 1.1 line breaks NEL, LS and PS, a byte-order mark or a carriage
# return; and a comment glued to a block scalar's indicator (`|#`, which libyaml takes and ruamel
# refuses). A text holding one of them is left to the exact reader.
_DECLINED_CHARACTERS = re.compile("[\t\r\x85\u2028\u2029\ufeff]|[|>][-+0-9]*#")
_RESOLVED_MAX = 4096  # plain scalars whose resolved value is remembered (keys and values repeat across files)


class _Unvouched(Exception):
    """The fast reader cannot vouch for this document; the exact reader decides."""


class _FastReader:
    """PyYAML's C parser for events; ruamel's resolver and round-trip constructor for scalars."""

    def __init__(self) -> None:
        from yaml import _yaml, events  # _yaml: the C extension (ImportError when absent)

        self.parser_class = _yaml.CParser
        self.scalar, self.alias = events.ScalarEvent, events.AliasEvent
        self.mapping_start, self.sequence_start = events.MappingStartEvent, events.SequenceStartEvent
        self.collection_ends = (events.MappingEndEvent, events.SequenceEndEvent)
        self.document_start, self.document_end = events.DocumentStartEvent, events.DocumentEndEvent
        self.stream_start, self.stream_end = events.StreamStartEvent, events.StreamEndEvent
        self.resolver = VersionedResolver()  # YAML 1.2, as the round-trip loader without a %YAML directive
        self.constructor = YAML(typ="rt").constructor
        self.resolved: dict[str, Any] = {}

    def plain_scalar(self, value: str) -> Any:
        """A plain (unquoted, untagged) scalar as the round-trip loader builds it."""
        try:
            return self.resolved[value]
        except KeyError:
            pass
        tag = str(self.resolver.resolve(ScalarNode, value, (True, False)))
        if tag == _STR:
            result: Any = value
        elif tag in _CONSTRUCTED:
            node = ScalarNode(Tag(suffix=tag), value, None, None)
            result = self.constructor.construct_object(node)
            self.constructor.constructed_objects.clear()
        else:  # merge (<<), value (=), anything else: not a plain document
            raise _Unvouched(tag)
        if len(self.resolved) >= _RESOLVED_MAX:
            self.resolved.clear()
        self.resolved[value] = result
        return result

    def document(self, text: str, max_nodes: int) -> dict[str, Any]:
        parser = self.parser_class(text)
        get = parser.get_event
        scalar_event, mapping_start, sequence_start = self.scalar, self.mapping_start, self.sequence_start
        collection_ends = self.collection_ends
        if type(get()) is not self.stream_start:
            raise _Unvouched("stream")
        start = get()
        if type(start) is not self.document_start or start.version or start.tags:
            raise _Unvouched("directive")  # %YAML switches the resolver; %TAG means tags
        root: dict[str, Any] | None = None
        # One frame per open collection: [container, pending key (mappings; _NO_KEY when a key is next)].
        stack: list[list[Any]] = []
        nodes = 0
        while True:
            event: Any = get()
            kind = type(event)
            if kind in collection_ends:
                stack.pop()
                if not stack:
                    break
                continue
            if event.anchor is not None or kind not in (scalar_event, mapping_start, sequence_start):
                raise _Unvouched("alias, anchor or unexpected event")
            if event.tag is not None:
                raise _Unvouched("tag")
            nodes += 1
            if nodes > max_nodes:
                raise _Unvouched("node limit")
            if kind is scalar_event:
                value: Any = self.plain_scalar(event.value) if event.implicit[0] else event.value
                is_key = bool(stack) and stack[-1][1] is _NO_KEY and type(stack[-1][0]) is dict
            else:
                if len(stack) >= MAX_DEPTH:
                    raise _Unvouched("depth limit")
                value = {} if kind is mapping_start else []
                is_key = False
            if not stack:
                if type(value) is not dict:
                    raise _Unvouched("top level is not a mapping")
                root = value
            else:
                frame = stack[-1]
                container = frame[0]
                if type(container) is list:
                    container.append(value)
                elif is_key:
                    if type(value) is not str or value in container:
                        raise _Unvouched("a key that is not a string, or a duplicate key")
                    frame[1] = value
                elif frame[1] is _NO_KEY:
                    raise _Unvouched("a collection as a key")
                else:
                    container[frame[1]] = value
                    frame[1] = _NO_KEY
            if kind is not scalar_event:
                stack.append([value, _NO_KEY])
        if type(get()) is not self.document_end or type(get()) is not self.stream_end:
            raise _Unvouched("more than one document")
        assert root is not None
        return root


_reader: _FastReader | bool | None = False  # False: not tried yet; None: no C parser here


def _fast_reader() -> _FastReader | None:
    global _reader
    if _reader is False:
        try:
            _reader = _FastReader()
        except ImportError:
            _reader = None
    return _reader  # type: ignore[return-value]


def has_fast_reader() -> bool:
    """Whether PyYAML's libyaml parser is installed (without it, every document takes the exact reader)."""
    return _fast_reader() is not None


def fast_document(text: str) -> dict[str, Any] | None:
    """The plain document (str keys, dicts, lists, scalars), equal to what the exact reader gives
    (the round-trip loader, then plain containers), or None when the fast reader cannot vouch for it
    (see the module docstring): the caller then reads `text` with the exact reader."""
    reader = _fast_reader()
    if reader is None:
        return None
    limit = max_registry_bytes()
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        return None
    if _DECLINED_CHARACTERS.search(text):
        return None
    try:
        return reader.document(text, max_registry_nodes())
    except Exception:  # noqa: BLE001 - whatever the fast reader cannot read, the exact reader reports
        return None
