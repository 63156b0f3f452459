"""refs.py's user-visible contract, asserted exactly: the whole error message (what, where, how to fix),
the remedy, the `where` each parser names by default, and how the dev identity is resolved from the
environment and from git (including a git that hangs).

These complement tests/test_refs.py (examples and properties) with exact texts, so that a changed
message, a lost `where` or a lost remedy is a failing test rather than a silent change.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from theory_deploy import refs
from theory_deploy.errors import GitContextError, InvalidRefError, NotADigestError, TheoryDeployError
from theory_deploy.refs import ImageRef, parse_platform, parse_platforms, parse_repository, resolve_dev_identity

DIGEST = "sha256:" + "a" * 64
BRANCH_MISSING = "the branch (HEAD is detached or this is not a git checkout): set GIT_BRANCH"
USER_MISSING = "the user (no GIT_USER, GITHUB_ACTOR or git user.name): set GIT_USER"


def _error(exc: pytest.ExceptionInfo[TheoryDeployError]) -> tuple[str, str, str]:
    return exc.value.code, exc.value.message, exc.value.remedy


# ---------------------------------------------------------------------------------------------------
# The dev identity
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder outside any git checkout, with no global or system git config: git knows no branch and no user."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    # git must not find a checkout above tmp_path (e.g. when /tmp itself sits in one).
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return work


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_missing_branch_and_user_are_both_named_in_one_message(no_git_identity: Path) -> None:
    with pytest.raises(GitContextError) as info:
        resolve_dev_identity({}, no_git_identity)
    assert _error(info) == (
        "ERR_GIT_CONTEXT",
        f"Cannot name the dev app: missing {BRANCH_MISSING}; {USER_MISSING}.",
        "Set GIT_BRANCH and GIT_USER (dev app names are {branch}-{user}-{slug}).",
    )


def test_missing_branch_alone_is_named_exactly(no_git_identity: Path) -> None:
    with pytest.raises(GitContextError) as info:
        resolve_dev_identity({"GIT_USER": "someone"}, no_git_identity)
    assert info.value.message == f"Cannot name the dev app: missing {BRANCH_MISSING}."


def test_missing_user_alone_is_named_exactly(no_git_identity: Path) -> None:
    with pytest.raises(GitContextError) as info:
        resolve_dev_identity({"GIT_BRANCH": "feat/x"}, no_git_identity)
    assert info.value.message == f"Cannot name the dev app: missing {USER_MISSING}."


def test_github_branch_variables_count_only_inside_actions(no_git_identity: Path) -> None:
    """GITHUB_HEAD_REF / GITHUB_REF_NAME left over in a developer's shell must not name their dev app:
    outside Actions (GITHUB_ACTIONS != "true") the branch is git's."""
    stale = {"GITHUB_HEAD_REF": "someone-elses-pr", "GITHUB_REF_NAME": "main", "GIT_USER": "me"}
    for actions in ({}, {"GITHUB_ACTIONS": "false"}, {"GITHUB_ACTIONS": "1"}):
        with pytest.raises(GitContextError) as info:
            resolve_dev_identity({**stale, **actions}, no_git_identity)
        assert info.value.message == f"Cannot name the dev app: missing {BRANCH_MISSING}."
    _git(no_git_identity, "init", "-q", "-b", "feat/mine")
    assert resolve_dev_identity(stale, no_git_identity).branch == "feat/mine"
    assert resolve_dev_identity({**stale, "GITHUB_ACTIONS": "true"}, no_git_identity).branch == "someone-elses-pr"


@pytest.mark.slow  # waits out the 10 s timeout on purpose
def test_a_hung_git_is_given_up_after_ten_seconds(no_git_identity: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git blocks opening its global config when that is a FIFO nobody writes (a real git, really hung).
    The best-effort reading behind resolve_dev_identity gives up after 10 s with no answer (the user is
    then reported missing, see above). From 10.5 s on, a writer serves the FIFO (git opens it more than
    once), so a longer (or no) timeout lets git finish and answer with the user written there.

    This calls refs._git (the reading resolve_dev_identity does) rather than resolve_dev_identity: a
    test that waits 10 s is then run only against mutants of _git, not against every mutant of
    resolve_dev_identity."""
    fifo = no_git_identity.parent / "gitconfig.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(fifo))
    stop = threading.Event()
    served: list[int] = []

    def serve_late() -> None:
        if stop.wait(10.5):
            return
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: nobody has the FIFO open to read (any more)
                assert exc.errno == errno.ENXIO
                stop.wait(0.01)
                continue
            with os.fdopen(fd, "w") as out:
                out.write("[user]\n\tname = late\n")
            served.append(1)

    server = threading.Thread(target=serve_late, daemon=True)
    server.start()
    started = time.monotonic()
    try:
        answer = refs._git(["config", "user.name"], no_git_identity)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        server.join(30)
    assert answer is None
    assert 9.5 <= elapsed < 10.5, elapsed
    assert served == []


# ---------------------------------------------------------------------------------------------------
# Image refs: characters that may not appear are named, never printed raw
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "described"),
    [
        ("\n", "a newline (U+000A)"),
        ("\r", "a carriage return (U+000D)"),
        ("\t", "a tab (U+0009)"),
        (" ", "a space (U+0020)"),
        ("\x00", "a whitespace or control character (U+0000)"),
        ("\x1b", "a whitespace or control character (U+001B)"),
        ("\u2028", "a whitespace or control character (U+2028)"),
    ],
)
def test_a_bad_character_in_an_image_ref_is_named_with_its_position(char: str, described: str) -> None:
    with pytest.raises(InvalidRefError) as info:
        ImageRef.parse(f"ghcr.io/org/na{char}me@{DIGEST}")
    assert _error(info) == (
        "ERR_INVALID_REF",
        f"--oci: the image ref contains {described} at position 15; "
        "image refs may not contain whitespace or control characters.",
        "Pass --oci as one line, e.g. ghcr.io/org/name@sha256:<64 hex> (check for a stray newline).",
    )


@pytest.mark.parametrize(
    "text",
    [
        "ghcr.io/org/x",
        "ghcr.io/org/x:1.0",
        f"ghcr.io/org/x@{DIGEST}",
        f"ghcr.io/org/x:1.0@{DIGEST}",
        f"127.0.0.1:5000/theory/llm-litellm:build-1@{DIGEST}",
    ],
)
def test_an_image_ref_prints_as_it_was_written(text: str) -> None:
    assert str(ImageRef.parse(text)) == text


def test_with_digest_drops_the_tag() -> None:
    assert str(ImageRef.parse("ghcr.io/org/x:1.0").with_digest(DIGEST)) == f"ghcr.io/org/x@{DIGEST}"


@pytest.mark.parametrize("text", ["ghcr.io/org/x", "ghcr.io/org/x:1.0", f"ghcr.io/org/x:1.0@{DIGEST}"])
def test_a_pin_must_be_a_digest_ref_without_a_tag(text: str) -> None:
    with pytest.raises(NotADigestError) as info:
        ImageRef.parse_digest_ref(text)
    assert _error(info) == (
        "ERR_NOT_A_DIGEST",
        f"--oci: {text!r} is not a digest ref; expected REPOSITORY@sha256:<64 lowercase hex> with no tag.",
        NotADigestError.remedy,
    )
    with pytest.raises(NotADigestError) as info:
        ImageRef.parse_digest_ref(text, where="registry.yaml image.platforms.amd64")
    assert info.value.message.startswith(f"registry.yaml image.platforms.amd64: {text!r} is not a digest ref")


def test_parse_digest_ref_passes_its_where_to_the_image_ref_parser() -> None:
    text = f"org/x@{DIGEST}"
    with pytest.raises(InvalidRefError) as info:
        ImageRef.parse_digest_ref(text)
    assert info.value.message == (
        f"--oci: {text!r} does not name a registry host; expected e.g. ghcr.io/org/name@sha256:<64 hex>."
    )
    with pytest.raises(InvalidRefError) as info:
        ImageRef.parse_digest_ref(text, where="--image")
    assert info.value.message.startswith(f"--image: {text!r} does not name a registry host")


# ---------------------------------------------------------------------------------------------------
# Repositories
# ---------------------------------------------------------------------------------------------------


def test_parse_repository_accepts_a_bare_repository() -> None:
    assert parse_repository("ghcr.io/org/llm-litellm") == ImageRef("ghcr.io", "org/llm-litellm")


@pytest.mark.parametrize("text", ["ghcr.io/org/x:1.0", f"ghcr.io/org/x@{DIGEST}", f"ghcr.io/org/x:1.0@{DIGEST}"])
def test_parse_repository_refuses_a_tag_or_a_digest_naming_the_flag(text: str) -> None:
    with pytest.raises(InvalidRefError) as info:
        parse_repository(text)
    assert _error(info) == (
        "ERR_INVALID_REF",
        f"--repository: {text!r} must be a repository without a tag or digest, e.g. ghcr.io/org/llm-litellm.",
        InvalidRefError.remedy,
    )
    with pytest.raises(InvalidRefError) as info:
        parse_repository(text, where="image.repository")
    assert info.value.message.startswith(f"image.repository: {text!r} must be a repository")


def test_parse_repository_passes_its_where_to_the_image_ref_parser() -> None:
    with pytest.raises(InvalidRefError) as info:
        parse_repository("org/x")
    assert info.value.message == (
        "--repository: 'org/x' does not name a registry host; expected e.g. ghcr.io/org/name@sha256:<64 hex>."
    )
    with pytest.raises(InvalidRefError) as info:
        parse_repository("org/x", where="image.repository")
    assert info.value.message.startswith("image.repository: 'org/x' does not name a registry host")


# ---------------------------------------------------------------------------------------------------
# Platforms
# ---------------------------------------------------------------------------------------------------

PLATFORM_REMEDY = "Use --platform amd64 or --platform arm64."


def test_parse_platform_refuses_an_unknown_platform_with_flag_and_remedy() -> None:
    assert [parse_platform(p) for p in ("amd64", "linux/amd64", "arm64", "linux/arm64")] == [
        "amd64",
        "amd64",
        "arm64",
        "arm64",
    ]
    with pytest.raises(InvalidRefError) as info:
        parse_platform("linux/s390x")
    assert _error(info) == (
        "ERR_INVALID_REF",
        "--platform: 'linux/s390x' is not a supported platform; expected amd64, arm64, linux/amd64 or linux/arm64.",
        PLATFORM_REMEDY,
    )
    assert info.value.render() == f"{info.value.message} Fix: {PLATFORM_REMEDY}"
    with pytest.raises(InvalidRefError) as info:
        parse_platform("x86", where="build.platforms")
    assert info.value.message.startswith("build.platforms: 'x86' is not a supported platform")


def test_parse_platforms_names_its_flag_when_empty_and_for_each_bad_item() -> None:
    for empty in ("", " , ,"):
        with pytest.raises(InvalidRefError) as info:
            parse_platforms(empty)
        assert _error(info) == (
            "ERR_INVALID_REF",
            "--platforms: empty; expected e.g. linux/amd64,linux/arm64.",
            InvalidRefError.remedy,
        )
    with pytest.raises(InvalidRefError) as info:
        parse_platforms("", where="input platforms")
    assert info.value.message == "input platforms: empty; expected e.g. linux/amd64,linux/arm64."
    with pytest.raises(InvalidRefError) as info:
        parse_platforms("amd64, riscv64")
    assert _error(info) == (
        "ERR_INVALID_REF",
        "--platforms: 'riscv64' is not a supported platform; expected amd64, arm64, linux/amd64 or linux/arm64.",
        PLATFORM_REMEDY,
    )
    with pytest.raises(InvalidRefError) as info:
        parse_platforms("riscv64", where="input platforms")
    assert info.value.message.startswith("input platforms: 'riscv64' is not a supported platform")


def test_an_unknown_environment_names_the_env_flag_by_default() -> None:
    with pytest.raises(TheoryDeployError) as caught:
        refs.parse_env("prod")
    assert (caught.value.code, caught.value.message) == (
        "ERR_INVALID_ENV",
        "--env: 'prod' is not an environment; expected one of dev, staging, main.",
    )
    assert refs.parse_env("staging") == "staging"


def test_a_dev_app_name_without_an_identity_says_what_it_needs() -> None:
    ref = refs.ProcessorRef("llm", "echo", 1)
    assert refs.app_name(ref, "main") == refs.app_name(ref, "staging") == "llm-echo-v1"
    with pytest.raises(GitContextError) as caught:
        refs.app_name(ref, "dev")
    assert caught.value.message == "dev app names need a branch and a user."


def test_a_dev_name_needs_a_letter_or_digit_in_branch_and_user() -> None:
    ref = refs.ProcessorRef("llm", "echo", 1)
    with pytest.raises(GitContextError) as caught:
        refs.app_name(ref, "dev", refs.DevIdentity(branch="///", user="dev"))
    assert caught.value.message == "branch '///' and user 'dev' must each contain a letter or digit."


def test_a_slug_cut_before_the_hash_loses_its_trailing_dash() -> None:
    # 54 + 1 + 4 + 3 = 62 characters: too long for branch and user beside it, so the slug itself is cut
    # to 64 - 8 - 1 = 55 characters, which end with the dash after the namespace.
    ref = refs.ProcessorRef("a" * 54, "name", 1)
    name = refs.app_name(ref, "dev", refs.DevIdentity(branch="feat", user="dev"))
    assert name[:55] == "a" * 54 + "-" and re.fullmatch("[0-9a-f]{8}", name[55:])
    assert "--" not in name and len(name) == 63
    # a slug whose cut ends in a letter keeps all 55 characters: the name is exactly 64 long
    longest = refs.app_name(refs.ProcessorRef("a" * 56, "n", 1), "dev", refs.DevIdentity(branch="feat", user="dev"))
    assert longest[:56] == "a" * 55 + "-" and re.fullmatch("[0-9a-f]{8}", longest[56:])
    assert len(longest) == refs.APP_NAME_MAX
