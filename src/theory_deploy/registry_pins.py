"""The pins of a registry.yaml (`image.platforms`) as text and through git history.

registry_file.py models and validates one registry.yaml and writes pins into it; this module is the
one place that *reads* pins out of a registry.yaml text that may not be the checked-out file (a base
branch's, an earlier revision's), where the pin lines are, and how the pins changed over history:

- `pins_in_text(text)`: `{platform: pin or None}`, tolerant of unreadable text ({}).
- `pin_lines(text)`: every line the pins stand on (1-based); `registry_file.pin_line` gives the
  line of one platform's pin, for annotations.
- `without_pins(text)`: the document with the pins set aside, to tell a pin-only edit from a change.
- `pins_at(git, rev, path)` and `pin_history(git, path)`: the pins at one revision, and at every
  revision that changed the file (newest first), read with the YAML parser, never grepped from diffs.
- `is_pin_only_change(repo, base, head)`: whether a change between two revisions touches nothing but
  pin lines of registry.yaml files (what the pin bot commits, and what the plan builds nothing for).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from .bounded_yaml import safe_yaml_text
from .errors import GitError
from .gitrun import Git
from .registry_file import REGISTRY_FILE

_ZERO_SHA = re.compile(r"^0+$")


class _OverLimitError(YAMLError):
    """A text beyond registry_file's limits (size, depth, nodes, aliases): treated as unreadable."""


def _safe_load(text: str) -> Any:
    if safe_yaml_text(text) is None:
        raise _OverLimitError("registry.yaml text beyond the limits")
    try:
        return YAML(typ="safe", pure=True).load(text)
    except (ValueError, RecursionError) as exc:
        raise _OverLimitError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------
# Reading pins from text
# ---------------------------------------------------------------------------------------------------


def pins_in_text(text: str | None) -> dict[str, str | None]:
    """`image.platforms` of a registry.yaml text ({} when absent or unreadable)."""
    if not text:
        return {}
    try:
        doc = _safe_load(text)
    except YAMLError:
        return {}
    platforms = (doc.get("image") or {}).get("platforms") if isinstance(doc, dict) else None
    if not isinstance(platforms, dict):
        return {}
    return {str(k): (None if v is None else str(v)) for k, v in platforms.items()}


def _rt_image(text: str) -> CommentedMap | None:
    if safe_yaml_text(text) is None:
        return None
    try:
        doc = YAML(typ="rt").load(text)
    except (YAMLError, ValueError, RecursionError):
        return None
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("image"), CommentedMap):
        return None
    return doc["image"]


def pin_lines(text: str) -> set[int] | None:
    """1-based line numbers holding `image.platforms` (its key line and every platform's key and
    value lines); None when the text has no such mapping or does not parse."""
    image = _rt_image(text)
    if image is None or "platforms" not in image:
        return None
    lines = {image.lc.key("platforms")[0] + 1}
    platforms = image["platforms"]
    if isinstance(platforms, CommentedMap):
        for key in platforms:
            lines.add(platforms.lc.key(key)[0] + 1)
            lines.add(platforms.lc.value(key)[0] + 1)
            value = platforms[key]
            if value is not None and not isinstance(value, str):
                return None  # a nested structure under a platform is not a pin
    elif platforms is not None:
        return None
    return lines


def without_pins(text: str | None) -> Any:
    """The registry.yaml document with `image.platforms` set aside, or None if it cannot be read."""
    if text is None:
        return None
    try:
        doc = _safe_load(text)
    except YAMLError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("image"), dict):
        doc["image"].pop("platforms", None)
    return doc


# ---------------------------------------------------------------------------------------------------
# Pins through git history
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PinsAt:
    """The pins of one registry.yaml at one revision (`pins` is {} when the file was unreadable)."""

    rev: str
    pins: dict[str, str | None]


def pins_at(git: Git, rev: str, path: str) -> dict[str, str | None] | None:
    """The pins of `path` at `rev`; None when that revision has no such file (or is no revision)."""
    text = git.show(rev, path)
    return None if text is None else pins_in_text(text)


def pin_history(git: Git, path: str) -> Iterator[PinsAt]:
    """The pins of `path` (repo-relative) at each revision that changed it, newest first. Lazy: a
    caller that finds what it looks for early reads no further. Raises `git.error` when the history
    cannot be read (not a repository)."""
    revs = git.out("log", "--format=%H", "--", path).split()
    for rev in revs:
        pins = pins_at(git, rev, path)
        if pins is not None:  # the revision that deleted the file
            yield PinsAt(rev, pins)


# ---------------------------------------------------------------------------------------------------
# Pin-only changes
# ---------------------------------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _changed_lines(diff: str) -> tuple[set[int], set[int]]:
    old: set[int] = set()
    new: set[int] = set()
    for line in diff.splitlines():
        match = _HUNK.match(line)
        if not match:
            continue
        a, b = int(match[1]), int(match[2]) if match[2] is not None else 1
        c, d = int(match[3]), int(match[4]) if match[4] is not None else 1
        old.update(range(a, a + b))
        new.update(range(c, c + d))
    return old, new


def is_pin_only_in_file(git: Git, base: str, head: str, path: str) -> bool:
    """True when `path` differs between the revisions only in its pins (compared as documents)."""
    before = without_pins(git.show(base, path))
    return before is not None and before == without_pins(git.show(head, path))


def is_pin_only_change(repo_dir: Path, base_rev: str, head_rev: str) -> bool:
    """True when every file changed between the two revisions is a registry.yaml and every changed
    line (removed or added) is an `image.platforms` line, and the files mean the same once the pins
    are set aside. An empty diff counts as pin-only (nothing to build). A `base_rev` of all zeros
    (GitHub's `before` for a new branch) is never pin-only. Raises GitError when a revision is not in
    the clone (fetch it: a shallow checkout needs `fetch-depth: 2` or more).
    """
    if _ZERO_SHA.match(base_rev or "0"):
        return False
    git = Git(Path(repo_dir))
    shas = []
    for rev in (base_rev, head_rev):
        sha = git.rev(rev)
        if sha is None:
            raise GitError(
                f"{rev!r} is not a commit in {repo_dir}.",
                remedy="Fetch enough history for both revisions "
                "(actions/checkout `fetch-depth: 0`, or fetch the `before` sha).",
            )
        shas.append(sha)
    base, head = shas
    listing = git.out("diff", "--no-renames", "--no-ext-diff", "--name-status", "-z", base, head)
    fields = [f for f in listing.split("\0") if f]
    entries = list(zip(fields[0::2], fields[1::2], strict=False))
    for status, path in entries:
        if status != "M" or Path(path).name != REGISTRY_FILE:
            return False
        old_text, new_text = git.show(base, path), git.show(head, path)
        if old_text is None or new_text is None:
            return False
        old_lines, new_lines = pin_lines(old_text), pin_lines(new_text)
        if old_lines is None or new_lines is None:
            return False
        diff = git.out("diff", "--no-ext-diff", "--no-textconv", "--no-color", "-U0", base, head, "--", path)
        removed, added = _changed_lines(diff)
        if not removed <= old_lines or not added <= new_lines:
            return False
        if not is_pin_only_in_file(git, base, head, path):
            return False
    return True
