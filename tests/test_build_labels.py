"""Image labels: the source revision ignores pin commits; the source URL never carries credentials."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from theory_deploy import build
from theory_deploy.refs import ProcessorRef


def _git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_revision_ignores_registry_yaml_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "processors" / "demo" / "x"
    folder.mkdir(parents=True)
    _git(tmp_path, "init", "-q")
    (folder / "Dockerfile").write_text("FROM scratch\n")
    (folder / "registry.yaml").write_text("amd64: null\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "processor")
    source_commit = _git(tmp_path, "rev-parse", "HEAD")
    (folder / "registry.yaml").write_text("amd64: repo@sha256:" + "1" * 64 + "\n")
    _git(tmp_path, "commit", "-qam", "pin")
    assert _git(tmp_path, "rev-parse", "HEAD") != source_commit
    # A pin commit does not move the revision label (else every pin would rebuild a new digest).
    assert build.source_revision(folder) == source_commit
    (folder / "Dockerfile").write_text("FROM scratch\nLABEL x=y\n")
    _git(tmp_path, "commit", "-qam", "change")
    assert build.source_revision(folder) == _git(tmp_path, "rev-parse", "HEAD")

    monkeypatch.delenv("GITHUB_SERVER_URL", raising=False)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    _git(tmp_path, "remote", "add", "origin", "https://user:tok3n@github.com/org/repo.git")
    assert build.source_url(tmp_path) == "https://github.com/org/repo"
    labels = build.image_labels(ProcessorRef.parse("demo/x@3"), folder, tmp_path)
    assert labels["org.opencontainers.image.version"] == "3"
    assert labels["org.opencontainers.image.title"] == "demo-x-v3"
    assert labels["dev.theory.processor.ref"] == "demo/x@3"
    assert "tok3n" not in repr(labels)


def test_source_url_prefers_github_actions_env(tmp_path: Path) -> None:
    env = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "org/repo"}
    assert build.source_url(tmp_path, env) == "https://github.com/org/repo"


def test_ssh_remote_becomes_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_SERVER_URL", raising=False)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "remote", "add", "origin", "git@github.com:org/repo.git")
    assert build.source_url(tmp_path) == "https://github.com/org/repo"


def test_local_tags_are_local(tmp_path: Path) -> None:
    assert build.local_tag("llm-litellm-v1", "linux/arm64") == "theory-local/llm-litellm-v1:arm64"
