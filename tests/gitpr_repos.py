"""A processor repository for the pin bot's tests: a bare remote standing in for GitHub's git side and
a user's clone of it, with the registry.yaml fixture whose comments every pin must keep.

Shared by tests/test_gitpr_contract.py and tests/test_gitpr_push_failures.py (not a test module).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.test_gitpr import git
from theory_deploy import registry_file
from theory_deploy.gitpr import PinChange

REF = "llm/litellm@1"
REG = "processors/llm/litellm/registry.yaml"
REPO = "ghcr.io/acme/llm-litellm"
BRANCH = "theory-deploy/pin/llm-litellm-v1"
HUMAN = ["-c", "user.name=Hu Man", "-c", "user.email=human@example.com"]


def digest(ch: str, repo: str = REPO) -> str:
    return f"{repo}@sha256:{ch * 64}"


FIXTURE = f"""\
# llm/litellm@1: a fixture whose comments must survive every pin.
ref: llm/litellm@1

image:
  repository: {REPO}
  platforms:
    amd64: {digest("a")}  # linux/amd64
    arm64: null    # linux/arm64

runtime:
  cpu: 1      # one vCPU
  memory_gb: 2

inputs:
  type: object
"""


class Remote:
    """`remote.git` (bare; main holds `fixture` and a README) and `work`, a clone of it with origin =
    the bare path."""

    def __init__(self, tmp: Path, fixture: str = FIXTURE) -> None:
        self.tmp = tmp
        self.path = tmp / "remote.git"
        git(tmp, "init", "--quiet", "--bare", "-b", "main", str(self.path))
        seed = tmp / "seed"
        git(tmp, "init", "--quiet", "-b", "main", str(seed))
        (seed / REG).parent.mkdir(parents=True)
        (seed / REG).write_text(fixture)
        (seed / "README.md").write_text("processors\n")
        git(seed, "add", ".")
        git(seed, *HUMAN, "commit", "--quiet", "-m", "initial")
        git(seed, "push", "--quiet", str(self.path), "main")
        self.work = self.clone("work")

    def clone(self, name: str, *extra: str) -> Path:
        path = self.tmp / name
        git(self.tmp, "clone", "--quiet", *extra, str(self.path), str(path))
        return path

    def hook(self, name: str, script: str) -> None:
        """Install a server-side hook in the bare remote (what a protected branch rule does on GitHub)."""
        path = self.path / "hooks" / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)

    def sha(self, branch: str) -> str | None:
        return git(self.path, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False) or None

    def file(self, rev: str) -> str:
        return git(self.path, "show", f"{rev}:{REG}") + "\n"

    def message(self, rev: str) -> str:
        return git(self.path, "log", "-1", "--format=%B", rev) + "\n"

    def over_main(self, branch: str = BRANCH) -> list[str]:
        return git(self.path, "rev-list", branch, "--not", "main").splitlines()

    def pin(self, **pins: str | None) -> list[PinChange]:
        """Write pins into the clone's registry.yaml, as `processorctl pin` does; what changed."""
        changed = registry_file.write_pins(self.work / REG, pins)  # type: ignore[arg-type]
        return [PinChange(REF, REG, REPO, dict(changed))]

    def commit(
        self, branch: str, edit: Callable[[str], str], message: str, *, who: list[str] = HUMAN, path: str = REG
    ) -> str:
        """Commit `edit(text)` of `path` on `branch` of the remote (created from main when absent)."""
        clone = self.tmp / f"writer-{len(list(self.tmp.iterdir()))}"
        git(self.tmp, "clone", "--quiet", str(self.path), str(clone))
        if branch != "main":
            start = f"origin/{branch}" if self.sha(branch) else "origin/main"
            git(clone, "checkout", "--quiet", "-B", branch, start)
        target = clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(edit(target.read_text() if target.exists() else ""))
        git(clone, "add", ".")
        git(clone, *who, "commit", "--quiet", "--allow-empty", "-m", message)
        git(clone, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
        return git(clone, "rev-parse", "HEAD")
