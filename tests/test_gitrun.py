"""The one git runner, and the registry.yaml pin readers that go through it (real git, no mocks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from theory_deploy.errors import GitError, RevisionError
from theory_deploy.gitrun import Git, mask_tokens, not_an_option
from theory_deploy.registry_file import pin_line
from theory_deploy.registry_pins import pin_history, pin_lines, pins_at, pins_in_text

REPO = "127.0.0.1:5000/acme/llm-litellm"
A = f"{REPO}@sha256:{'a' * 64}"
B = f"{REPO}@sha256:{'b' * 64}"


def registry_text(amd64: str | None, arm64: str | None = None) -> str:
    def show(v: str | None) -> str:
        return "null" if v is None else f'"{v}"'

    return (
        "ref: llm/litellm@1\n"
        "image:\n"
        f"  repository: {REPO}  # where pins point\n"
        "  platforms:\n"
        f"    amd64: {show(amd64)}\n"
        f"    arm64: {show(arm64)}\n"
        "inputs: {type: object}\n"
    )


def sh(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    sh(root, "init", "-q", "-b", "main")
    return root


def commit_registry(repo: Path, text: str, message: str) -> str:
    path = repo / "processors/llm/litellm/registry.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    sh(repo, "add", "-A")
    sh(repo, "commit", "-q", "-m", message)
    return sh(repo, "rev-parse", "HEAD")


def test_option_like_values_are_refused_by_name(repo: Path) -> None:
    commit_registry(repo, registry_text(A), "one")
    git = Git(repo)
    for call in (lambda: git.rev("--all"), lambda: git.show("--output=/tmp/x", "f"), lambda: git.blob("-p", "f")):
        with pytest.raises(GitError, match="starts with '-'") as info:
            call()
        assert "'-" in info.value.message
    with pytest.raises(RevisionError, match="'--help'"):
        Git(repo, error=RevisionError).rev("--help")
    assert not_an_option("main", "branch") == "main"
    with pytest.raises(GitError, match="empty"):
        not_an_option("", "remote")
    assert git.rev("HEAD") == sh(repo, "rev-parse", "HEAD")
    assert git.rev("no-such-branch") is None


def test_environment_is_scrubbed_and_hooks_never_run(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_registry(repo, registry_text(A), "one")
    other = tmp_path / "other"
    other.mkdir()
    sh(other, "init", "-q")
    # A hook (or a caller) exporting GIT_DIR / GIT_INDEX_FILE must not redirect us to another repository.
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    git = Git(repo, identity=_Identity())
    assert git.out("rev-parse", "--show-toplevel") == str(repo.resolve())
    assert git.env["GIT_TERMINAL_PROMPT"] == "0" and "GIT_DIR" not in git.env
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_INDEX_FILE")
    monkeypatch.delenv("GIT_WORK_TREE")

    marker = tmp_path / "hook-ran"
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    (repo / "f").write_text("x")
    git.run("add", "f")
    git.run("commit", "-q", "-m", "by the runner")
    assert not marker.exists()
    assert (
        git.out("log", "-1", "--format=%an <%ae> / %cn <%ce>")
        == "bot <bot@example.invalid> / bot <bot@example.invalid>"
    )


class _Identity:
    name = "bot"
    email = "bot@example.invalid"


def test_failures_are_typed_and_masked(repo: Path, tmp_path: Path) -> None:
    token = "ghp_" + "z" * 36
    with pytest.raises(GitError) as info:
        Git(repo).run("ls-remote", f"https://x-access-token:{token}@127.0.0.1:9/acme/r.git", timeout=20)
    assert token not in info.value.render()
    assert Git(tmp_path / "missing").try_out("rev-parse", "HEAD") is None
    assert Git(repo).try_out("rev-parse", "HEAD") is None  # no commit yet: None, not an error
    assert mask_tokens(f"token {token} and secret hunter22", "hunter22") == "token *** and secret ***"


def test_pin_reading_and_lines() -> None:
    text = registry_text(A, None)
    assert pins_in_text(text) == {"amd64": A, "arm64": None}
    assert pins_in_text("not: [valid") == {} and pins_in_text(None) == {}
    assert pin_lines(text) == {4, 5, 6}
    assert pin_line(text, "amd64") == 5 and pin_line(text, "linux/arm64") == 6
    assert pin_line("image: {}\n", "amd64") is None


def test_pin_line_reads_a_path(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(registry_text(A))
    assert pin_line(path, "arm64") == 6
    assert pin_line(tmp_path / "missing.yaml", "amd64") is None


def test_pin_history_reads_each_revision(repo: Path) -> None:
    first = commit_registry(repo, registry_text(A), "pin A")
    (repo / "README").write_text("unrelated")
    sh(repo, "add", "README")
    sh(repo, "commit", "-q", "-m", "docs")
    second = commit_registry(repo, registry_text(B, A), "pin B")
    git = Git(repo)
    path = "processors/llm/litellm/registry.yaml"
    history = list(pin_history(git, path))
    assert [(h.rev, h.pins) for h in history] == [
        (second, {"amd64": B, "arm64": A}),
        (first, {"amd64": A, "arm64": None}),
    ]
    assert pins_at(git, first, path) == {"amd64": A, "arm64": None}
    assert pins_at(git, first, "no/such/registry.yaml") is None
    assert list(pin_history(git, "no/such/registry.yaml")) == []
    with pytest.raises(GitError):
        list(pin_history(Git(repo.parent), path))  # not a repository


def test_no_stray_git_subprocesses_in_src() -> None:
    """Every git call in the product goes through gitrun.Git."""
    src = Path(__file__).resolve().parents[1] / "src" / "theory_deploy"
    offenders = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.name != "gitrun.py" and ('["git"' in p.read_text() or "['git'" in p.read_text())
    ]
    assert offenders == [], offenders


def test_rollback_finds_earlier_pins_through_the_history(repo: Path) -> None:
    from theory_deploy.registry_file import load_path
    from theory_deploy.targets.base import earlier_pin

    first = commit_registry(repo, registry_text(A), "pin A")
    commit_registry(repo, registry_text(B, A), "pin B")
    processor = load_path(repo / "processors/llm/litellm/registry.yaml", repo)
    assert str(earlier_pin(processor, "amd64", f"sha256:{'a' * 64}")) == A
    assert str(earlier_pin(processor, "amd64", A)) == A
    assert str(earlier_pin(processor, "arm64", f"sha256:{'a' * 64}")) == A
    assert str(earlier_pin(processor, "amd64", first)) == A
    assert str(earlier_pin(processor, "amd64", "HEAD")) == B
    with pytest.raises(RevisionError, match="never pinned arm64"):
        earlier_pin(processor, "arm64", f"sha256:{'b' * 64}")  # B was only ever amd64's pin
    with pytest.raises(RevisionError, match="had no arm64 pin"):
        earlier_pin(processor, "arm64", first)
    with pytest.raises(RevisionError, match="starts with '-'"):
        earlier_pin(processor, "amd64", "--output=/tmp/x")
    with pytest.raises(RevisionError, match="no such revision"):
        earlier_pin(processor, "amd64", "nope")
