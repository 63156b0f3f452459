"""`processorctl pr` end to end: the real CLI, real git over smart HTTP and PyGithub, both against the
GitHub stand-in (the work clone holds the token as actions/checkout persists it, unless a test removes
it), and the real loopback registry, which every proposed pin is checked against before anything is
pushed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.github_standin import GitHubStandIn
from tests.registry_faults import push_synthetic_image
from tests.test_gitpr import BRANCH, HUMAN, REG, REPO, TOKEN, World, git
from theory_deploy.oci import RegistryClient

pytestmark = pytest.mark.docker
BIN = Path(sys.executable).parent


class LoopbackWorld(World):
    """The gitpr test world, with the processor moved to a fresh repository in the loopback registry
    that holds one real amd64 and one real arm64 image."""

    def __init__(self, tmp: Path, registry: str) -> None:
        super().__init__(tmp)
        self.repository = f"{registry}/test/pr-{uuid.uuid4().hex[:10]}"
        path = f"{self.repository.split('/', 1)[1]}"
        with RegistryClient(registry, progress=lambda _m: None) as client:
            self.amd64 = f"{self.repository}@{push_synthetic_image(client, path, 'amd64').manifest_digest}"
            self.arm64 = f"{self.repository}@{push_synthetic_image(client, path, 'arm64').manifest_digest}"
        text = (self.work / REG).read_text().replace(REPO, self.repository)
        (self.work / REG).write_text(text.replace(f"{self.repository}@sha256:{'a' * 64}", self.amd64))
        git(self.work, "add", REG)
        git(self.work, *HUMAN, "commit", "--quiet", "-m", "move to the loopback registry")
        git(self.work, "push", "--quiet", "origin", "main")


def processorctl(
    world: World, gh: GitHubStandIn | None, *args: str, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITHUB_", "THEORY_", "GH_"))}
    env["THEORY_REPO_ROOT"] = str(world.work)
    if gh is not None:
        env.update({"GITHUB_REPOSITORY": "acme/processors", "GITHUB_API_URL": gh.url, "GITHUB_TOKEN": token})
    return subprocess.run(
        [str(BIN / "processorctl"), *args], cwd=world.work, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def world(tmp_path, registry):
    w = LoopbackWorld(tmp_path, registry)
    try:
        yield w
    finally:
        w.close()


def test_pr_verb_creates_then_updates_one_pr_and_is_quiet_when_nothing_changed(world):
    (world.work / "notes.txt").write_text("unrelated, uncommitted\n")
    gh = world.gh
    gh.protect("main")  # the bot never needs to push to the base branch
    gh.clear_requests()  # the world's own setup
    world.pin(world.work, arm64=world.arm64)
    first = processorctl(world, gh, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
    assert first.returncode == 0, first.stderr
    payload = json.loads(first.stdout)
    assert payload["status"] == "success" and payload["pr_url"]
    assert [p["pr"]["result"] for p in payload["processors"]] == ["created"]
    assert f"arm64: {world.arm64}" in world.remote_file(BRANCH)
    assert "verified arm64" in first.stderr
    assert TOKEN not in first.stdout + first.stderr

    again = processorctl(world, gh, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
    assert again.returncode == 0
    assert [p["status"] for p in json.loads(again.stdout)["processors"]] == ["unchanged"]
    assert len(gh.pulls) == 1
    assert [p["ref"] for p in gh.pushes] == [f"refs/heads/{BRANCH}"]  # over HTTP, with the token

    # the user's unrelated file was never committed
    assert "notes.txt" not in git(world.remote, "ls-tree", "-r", "--name-only", BRANCH)
    assert git(world.work, "status", "--porcelain").count("notes.txt") == 1


def test_pins_the_registry_does_not_vouch_for_never_reach_a_pr(world):
    quiet = processorctl(world, None, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["processors"] == []

    refusals = {
        f"{world.repository}@sha256:{'d' * 64}": "ERR_IMAGE_UNAVAILABLE",  # hand-edited, never pushed
        world.amd64: "ERR_PLATFORM_MISMATCH",  # the amd64 image under the arm64 key
    }
    for digest, code in refusals.items():
        world.pin(world.work, arm64=digest)
        refused = processorctl(world, None, "pr", "--ref", "llm/litellm@1", "--base", "main", "--no-pr", "--json")
        assert refused.returncode != 0, refused.stdout
        assert json.loads(refused.stdout)["error"]["code"] == code
        assert world.remote_sha(BRANCH) is None  # nothing was pushed

    world.pin(world.work, arm64=world.arm64)
    without_token = processorctl(world, None, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json")
    assert json.loads(without_token.stdout)["error"]["code"] == "ERR_GITHUB"
    assert "GITHUB_REPOSITORY" in json.loads(without_token.stdout)["error"]["message"]
    pushed_only = processorctl(world, None, "pr", "--ref", "llm/litellm@1", "--base", "main", "--no-pr", "--json")
    assert pushed_only.returncode == 0, pushed_only.stderr
    assert f"arm64: {world.arm64}" in world.remote_file(BRANCH)
    assert REG in git(world.remote, "diff", "--name-only", "main", BRANCH)


def test_pr_verb_pushes_with_github_token_when_checkout_kept_no_credentials(world):
    """`persist-credentials: false`: the work clone holds no credentials; `processorctl pr` fetches and
    pushes with GITHUB_TOKEN (here a canary, which no output may show), also when the push is refused."""
    gh = world.gh
    canary = "canary-" + uuid.uuid4().hex
    gh.add_token(canary)
    git(world.work, "config", "--unset-all", f"http.{gh.url}/.extraheader")
    world.pin(world.work, arm64=world.arm64)

    gh.protect("theory-deploy/pin/*")  # a rule covering the bot's branches: GitHub refuses the push
    gh.clear_requests()
    refused = processorctl(world, gh, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json", token=canary)
    assert refused.returncode == 40, refused.stderr  # ERR_GIT
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "ERR_GIT" and error["details"]["cause"] == "branch-protection"
    assert f"covers {BRANCH}" in error["message"] and "theory-deploy/pin/*" in error["message"]
    assert [(p["user"], p["refused"]) for p in gh.pushes] == [
        ("x-access-token", "Changes must be made through a pull request.")
    ]
    assert canary not in refused.stdout + refused.stderr

    gh.unprotect("theory-deploy/pin/*")
    gh.clear_requests()
    done = processorctl(world, gh, "pr", "--ref", "llm/litellm@1", "--base", "main", "--json", token=canary)
    assert done.returncode == 0, done.stderr
    assert [p["pr"]["result"] for p in json.loads(done.stdout)["processors"]] == ["created"]
    assert [(p["ref"], p["user"], p["refused"]) for p in gh.pushes] == [
        (f"refs/heads/{BRANCH}", "x-access-token", None)
    ]
    assert {r.user for r in gh.git_requests} == {"x-access-token"}
    assert all(r.authorization == f"token {canary}" for r in gh.requests)  # the same token for the API
    assert canary not in done.stdout + done.stderr
    assert canary not in (world.work / ".git" / "config").read_text()
