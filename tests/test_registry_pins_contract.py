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
    is_pin_only_in_file,
    pin_history,
    pin_lines,
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


# --- pin_lines: exactly the lines the pins stand on ------------------------------------------------


def test_pin_lines_are_the_key_and_value_lines_not_columns() -> None:
    """Deeply indented pins whose values sit on the line after their keys: every line is counted by
    its line number (a column number would name lines 7 and 9 here)."""
    text = "image:\n  repository: r\n  platforms:\n        amd64:\n          null\n        arm64:\n          null\n"
    assert pin_lines(text) == {3, 4, 5, 6, 7}


def test_pin_lines_of_empty_platforms_is_its_key_line() -> None:
    assert pin_lines("image:\n  repository: r\n  platforms:\n") == {3}


@pytest.mark.parametrize(
    "text",
    [
        "image:\n  repository: r\n  platforms: amd64\n",  # a scalar where the pins belong
        "image:\n  repository: r\n  platforms: [amd64]\n",
        "image: platforms\n",  # `image` is no mapping (a substring test would find "platforms")
        "- image\n- platforms\n",  # the document is no mapping
        "image:\n  repository: r\n",  # no pins at all
    ],
)
def test_pin_lines_of_a_document_without_a_pin_mapping_is_none(text: str) -> None:
    assert pin_lines(text) is None


# --- documents compared as documents --------------------------------------------------------------


def test_reordered_keys_with_a_new_pin_are_still_pin_only_in_file(repo: Path) -> None:  # noqa: F811
    """Two documents that mean the same compare equal whatever the order of their keys (a loader
    giving ordered mappings would call a reordering a change)."""
    base = git(repo, "rev-parse", "HEAD")
    text = (repo / LITELLM_REG).read_text()
    moved = text.replace("ref: llm/litellm@1\n", "") + "ref: llm/litellm@1\n"
    head = commit(repo, {LITELLM_REG: moved.replace("amd64: null", "amd64: " + PIN_A.format(name="litellm"))})
    assert is_pin_only_in_file(Git(repo), base, head, LITELLM_REG) is True


# --- the diff read is git's plain diff of that one file, whatever the user's git config ------------


def _pin_and_comment_change(repo: Path) -> tuple[str, str]:  # noqa: F811
    """A change that sets a pin and rewrites a comment: the documents are the same once the pins are
    set aside, so only the diff's hunks tell that a non-pin line changed."""
    base = git(repo, "rev-parse", "HEAD")
    text = (repo / LITELLM_REG).read_text()
    changed = text.replace("amd64: null", "amd64: " + PIN_A.format(name="litellm")).replace(
        "# llm/litellm@1: chat", "# llm/litellm@1: a reworded chat"
    )
    assert changed.count("reworded") == 1
    return base, commit(repo, {LITELLM_REG: changed})


def test_a_comment_change_is_not_pin_only(repo: Path) -> None:  # noqa: F811
    base, head = _pin_and_comment_change(repo)
    assert is_pin_only_change(repo, base, head) is False


@pytest.mark.parametrize(
    "config",
    [
        ["color.diff", "always"],  # colour codes around the hunk headers
        ["diff.external", "true"],  # an external diff tool that prints nothing
        ["diff.quiet.textconv", "sh -c 'true'"],  # a text conversion that empties the file
    ],
)
def test_the_users_git_diff_settings_do_not_hide_a_non_pin_line(repo: Path, config: list[str]) -> None:  # noqa: F811
    git(repo, "config", *config)
    (repo / ".git" / "info" / "attributes").write_text("registry.yaml diff=quiet\n")
    base, head = _pin_and_comment_change(repo)
    assert is_pin_only_change(repo, base, head) is False


def test_each_files_pin_lines_are_checked_against_its_own_diff(repo: Path) -> None:  # noqa: F811
    """Two registry.yaml files pinned in one change, their pins on different lines: each file's
    changed lines are its own (one diff of both would put the other file's pin lines in it)."""
    echo_reg = LITELLM_REG.replace("litellm", "echo")
    litellm = (repo / LITELLM_REG).read_text()
    echo = "# one more comment line moves every pin one line down\n" + (repo / echo_reg).read_text()
    base = commit(repo, {echo_reg: echo})
    head = commit(
        repo,
        {
            LITELLM_REG: litellm.replace("amd64: null", "amd64: " + PIN_A.format(name="litellm")),
            echo_reg: echo.replace("arm64: null", "arm64: " + PIN_B.format(name="echo")),
        },
    )
    assert is_pin_only_change(repo, base, head) is True


def test_a_submodule_named_registry_yaml_is_not_pin_only(repo: Path) -> None:  # noqa: F811
    """A gitlink called registry.yaml changes as "M" but has no text at either revision."""
    base = git(repo, "rev-parse", "HEAD")
    path = "processors/llm/sub/registry.yaml"
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},{path}")
    git(repo, "commit", "-q", "-m", "add a submodule")
    middle = git(repo, "rev-parse", "HEAD")
    git(repo, "update-index", "--cacheinfo", f"160000,{'2' * 40},{path}")
    git(repo, "commit", "-q", "-m", "move the submodule")
    head = git(repo, "rev-parse", "HEAD")
    assert base != middle
    assert is_pin_only_change(repo, middle, head) is False


def test_a_document_with_an_application_tag_is_unreadable() -> None:
    """registry.yaml is plain YAML: a `!tag` is refused by registry_file's model, and reading pins out
    of such a text gives nothing rather than the pins of a document the model would not accept."""
    text = "image:\n  repository: !custom r\n  platforms:\n    amd64: null\n"
    assert pins_in_text(text) == {}
    assert without_pins(text) is None
