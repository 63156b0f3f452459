"""registry_pins: reading pins out of registry.yaml text and git history, and deciding whether a
change touched nothing but pins. Exact expectations for the edges the mutation run found unchecked
(non-mapping documents, hunks of several lines, a missing `before`, the remedy for shallow clones)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_plan import LITELLM_REG, PIN_A, PIN_B, commit, git, repo  # noqa: F401 (fixture)
from theory_deploy.errors import GitError
from theory_deploy.gitrun import Git
from theory_deploy.registry_pins import (
    _changed_lines,
    is_pin_only_change,
    pin_history,
    pins_in_text,
    without_pins,
)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", ""])
def test_pins_of_a_document_that_is_no_mapping_are_none(text: str) -> None:
    assert pins_in_text(text) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ref: a/b@1\n", {"ref": "a/b@1"}),
        ("image: 3\n", {"image": 3}),
        ("image:\n  repository: r\n", {"image": {"repository": "r"}}),
        ("image:\n  repository: r\n  platforms: {amd64: x}\n", {"image": {"repository": "r"}}),
        ("- a\n", ["a"]),
    ],
)
def test_without_pins_sets_aside_only_platforms_and_only_when_there_are_some(text: str, expected: object) -> None:
    assert without_pins(text) == expected


def test_pin_history_yields_commit_shas_newest_first(repo: Path) -> None:  # noqa: F811
    first = git(repo, "rev-parse", "HEAD")
    text = (repo / LITELLM_REG).read_text()
    # A message that is also a revision name: only the log's shas may be read as revisions.
    second = commit(
        repo, {LITELLM_REG: text.replace("amd64: null", "amd64: " + PIN_A.format(name="litellm"))}, "main HEAD"
    )
    history = list(pin_history(Git(repo), LITELLM_REG))
    assert [h.rev for h in history] == [second, first]
    assert all(re.fullmatch(r"[0-9a-f]{40}", h.rev) for h in history)
    assert history[0].pins["amd64"] == PIN_A.format(name="litellm") and history[1].pins["amd64"] is None


@pytest.mark.parametrize(
    ("header", "old", "new"),
    [
        ("@@ -3 +3 @@", {3}, {3}),
        ("@@ -3,2 +3,2 @@", {3, 4}, {3, 4}),
        ("@@ -3,2 +3 @@", {3, 4}, {3}),
        ("@@ -3 +3,3 @@", {3}, {3, 4, 5}),
        ("@@ -5,0 +6,2 @@", set(), {6, 7}),
    ],
)
def test_changed_lines_reads_every_line_a_hunk_covers(header: str, old: set[int], new: set[int]) -> None:
    assert _changed_lines(f"diff --git a/x b/x\n{header}\n-x\n+y\n") == (old, new)


def test_removing_a_line_beside_a_pin_is_not_pin_only(repo: Path) -> None:  # noqa: F811
    """A hunk that changes the pin and deletes the line after it covers two old lines: the deleted
    one is no pin, so the change is not pin-only (counting only the hunk's first line would say it is)."""
    base = git(repo, "rev-parse", "HEAD")
    lines = (repo / LITELLM_REG).read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if "amd64: null" in line)
    lines[index] = lines[index].replace("amd64: null", "amd64: " + PIN_B.format(name="litellm"))
    assert "arm64" in lines[index + 1]  # the line after the amd64 pin is the arm64 pin: go one further
    follower = next(i for i in range(index + 2, len(lines)) if lines[i].strip())
    del lines[follower]
    head = commit(repo, {LITELLM_REG: "".join(lines)})
    assert is_pin_only_change(repo, base, head) is False


@pytest.mark.parametrize("before", ["", "0" * 40])
def test_no_before_revision_is_never_pin_only(repo: Path, before: str) -> None:  # noqa: F811
    assert is_pin_only_change(repo, before, git(repo, "rev-parse", "HEAD")) is False


def test_a_revision_missing_from_a_shallow_clone_says_how_to_fetch_it(repo: Path) -> None:  # noqa: F811
    missing = "1" * 40
    with pytest.raises(GitError) as err:
        is_pin_only_change(repo, missing, "HEAD")
    assert str(err.value).startswith(f"{missing!r} is not a commit in {repo}.")
    assert err.value.remedy == (
        "Fetch enough history for both revisions (actions/checkout `fetch-depth: 0`, or fetch the `before` sha)."
    )
