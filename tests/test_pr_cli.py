"""`processorctl pr` end to end: the real CLI, real git with a bare remote, PyGithub against the stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.github_standin import GitHubStandIn
from tests.test_gitpr import BRANCH, REG, TOKEN, World, digest, git

BIN = Path(sys.executable).parent


def processorctl(world: World, gh: GitHubStandIn | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITHUB_", "THEORY_"))}
    env["THEORY_REPO_ROOT"] = str(world.work)
    if gh is not None:
        env.update({"GITHUB_REPOSITORY": "acme/processors", "GITHUB_API_URL": gh.url, "GITHUB_TOKEN": TOKEN})
    return subprocess.run(
        [str(BIN / "processorctl"), *args], cwd=world.work, env=env, capture_output=True, text=True, timeout=120
    )


def test_pr_verb_creates_then_updates_one_pr_and_is_quiet_when_nothing_changed(tmp_path):
    world = World(tmp_path)
    (world.work / "notes.txt").write_text("unrelated, uncommitted\n")
    with GitHubStandIn(owner="acme", repo="processors", tokens={TOKEN}, git_remote=world.remote) as gh:
        world.pin(world.work, amd64=digest("b"))
        first = processorctl(world, gh, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
        assert first.returncode == 0, first.stderr
        payload = json.loads(first.stdout)
        assert payload["status"] == "success" and payload["pr_url"]
        assert [p["pr"]["result"] for p in payload["processors"]] == ["created"]
        assert f"amd64: {digest('b')}" in world.remote_file(BRANCH)

        world.pin(world.work, arm64=digest("c"))
        second = json.loads(processorctl(world, gh, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json").stdout)
        assert [p["pr"]["result"] for p in second["processors"]] == ["updated"]
        assert len(gh.pulls) == 1
        assert TOKEN not in first.stdout + first.stderr

        third = processorctl(world, gh, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
        assert third.returncode == 0
        assert [p["status"] for p in json.loads(third.stdout)["processors"]] == ["unchanged"]
        assert len(gh.pulls) == 1

    # the user's unrelated file was never committed
    assert "notes.txt" not in git(world.remote, "ls-tree", "-r", "--name-only", BRANCH)
    assert (world.work / "notes.txt").exists()
    assert git(world.work, "status", "--porcelain").count("notes.txt") == 1


def test_pr_verb_without_pins_does_nothing_and_without_token_fails_clearly(tmp_path):
    world = World(tmp_path)
    # FIXTURE's amd64 pin equals main's: nothing to propose
    quiet = processorctl(world, None, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["processors"] == []
    world.pin(world.work, amd64=digest("d"))
    refused = processorctl(world, None, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["code"] == "ERR_GITHUB"
    assert "GITHUB_REPOSITORY" in json.loads(refused.stdout)["error"]["message"]
    pushed_only = processorctl(world, None, "pr", "--ref", "llm/litellm@1", "--base", "main", "--no-pr", "--json")
    assert pushed_only.returncode == 0, pushed_only.stderr
    assert f"amd64: {digest('d')}" in world.remote_file(BRANCH)
    assert REG in git(world.remote, "diff", "--name-only", "main", BRANCH)
