"""How every job of our reusable workflows finds and fetches theory-deploy's own code.

The two steps (`self`: which commit; `fetch theory-deploy`: that commit into .theory-deploy/) are run
here exactly as written in the workflows, with bash as `shell: bash` runs it and the variables GitHub
sets, against a bare repository reached by its https://github.com URL (git's insteadOf). Under act
only the fallback path can run (act leaves job.workflow_sha empty): tests/test_act_consumer.py
covers that one end to end; this file covers both, and the cases that must fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
CALLED = ("deploy.yml", "pr-smoke.yml", "drift.yml")


def steps_named(workflow: str) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = YAML(typ="safe").load((REPO / ".github" / "workflows" / workflow).read_text())
    first_job = next(iter(doc["jobs"].values()))
    self_step = next(s for s in first_job["steps"] if s.get("id") == "self")
    fetch = next(
        s for job in doc["jobs"].values() for s in job.get("steps", []) if s.get("name") == "fetch theory-deploy"
    )
    return self_step, fetch


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


@pytest.fixture
def github(tmp_path: Path) -> dict[str, Any]:
    """github.com/theory-deploy/theory-deploy as a bare repository: main, an annotated tag v1 on
    the first commit, a branch `next` one commit ahead."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "action.yml").write_text("name: theory-deploy at v1\n")
    git(work, "add", "-A")
    git(work, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "v1")
    git(work, "-c", "user.name=t", "-c", "user.email=t@e", "tag", "-a", "v1", "-m", "v1")
    v1 = git(work, "rev-parse", "HEAD")
    (work / "action.yml").write_text("name: theory-deploy next\n")
    git(work, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "next")
    git(work, "branch", "next")
    nxt = git(work, "rev-parse", "HEAD")
    root = tmp_path / "github"
    bare = root / "theory-deploy" / "theory-deploy"
    bare.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    git(bare, "config", "uploadpack.allowReachableSHA1InWant", "true")
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f'[url "file://{root}/"]\n\tinsteadOf = https://github.com/\n')
    return {"v1": v1, "next": nxt, "gitconfig": gitconfig, "tag_object": git(bare, "rev-parse", "v1")}


def run_step(
    step: dict[str, Any], env: dict[str, str], cwd: Path, github: dict[str, Any]
) -> tuple[int, str, dict[str, str]]:
    output = cwd.parent / f"{cwd.name}-github-output"  # outside the workspace, as on a runner
    output.write_text("")
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_GLOBAL": str(github["gitconfig"]),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_OUTPUT": str(output),
        **env,
    }
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return proc.returncode, proc.stdout + proc.stderr, outputs


def self_env(**values: str) -> dict[str, str]:
    env = {"JOB_WORKFLOW_REPOSITORY": "", "JOB_WORKFLOW_SHA": "", "FALLBACK_REPOSITORY": "", "FALLBACK_REF": ""}
    env.update(values)
    return env


def test_the_same_two_steps_in_every_job_of_every_called_workflow() -> None:
    """One text for each step everywhere: a fix in one place is a fix in all (the test fails otherwise)."""
    self_runs, fetch_runs = set(), set()
    for workflow in CALLED:
        doc = YAML(typ="safe").load((REPO / ".github" / "workflows" / workflow).read_text())
        for name, job in doc["jobs"].items():
            steps = job.get("steps", [])
            uses_ours = [s for s in steps if str(s.get("uses", "")).startswith("./.theory-deploy")]
            runs_ours = [
                s
                for s in steps
                if ".theory-deploy/" in str(s.get("run", "")) and s.get("name") != "fetch theory-deploy"
            ]
            fetches = [s for s in steps if s.get("name") == "fetch theory-deploy"]
            if uses_ours or runs_ours:
                assert len(fetches) == 1, f"{workflow} job {name} uses our code without fetching it first"
                first_use = steps.index((uses_ours + runs_ours)[0])
                assert steps.index(fetches[0]) < first_use
                checkouts = [i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("actions/checkout@")]
                assert all(i < steps.index(fetches[0]) for i in checkouts), (
                    f"{workflow} {name}: checkout after the fetch"
                )
            for step in fetches:
                fetch_runs.add(step["run"])
            for step in steps:
                if step.get("id") == "self":
                    self_runs.add(step["run"])
            for step in steps:  # never a path of the caller's workspace
                assert not (
                    str(step.get("uses", "")).startswith("./") and not step["uses"].startswith("./.theory-deploy")
                ), f"{workflow} job {name}: {step['uses']} resolves in the caller's workspace"
    assert len(fetch_runs) == 1 and len(self_runs) == 1


@pytest.mark.parametrize("workflow", CALLED)
def test_github_path_job_workflow_sha_wins_over_the_fallback(
    workflow: str, github: dict[str, Any], tmp_path: Path
) -> None:
    step, _ = steps_named(workflow)
    code, log, out = run_step(
        step,
        self_env(
            JOB_WORKFLOW_REPOSITORY="theory-deploy/theory-deploy",
            JOB_WORKFLOW_SHA=github["next"],
            FALLBACK_REPOSITORY="someone/else",
            FALLBACK_REF="v1",
        ),
        tmp_path,
        github,
    )
    assert code == 0, log
    assert out == {"repository": "theory-deploy/theory-deploy", "sha": github["next"]}
    assert "(job.workflow_sha)" in log


@pytest.mark.parametrize(("ref", "expected"), [("v1", "v1"), ("next", "next"), ("<v1-sha>", "v1")])
def test_fallback_path_resolves_the_callers_ref_to_one_commit(
    ref: str, expected: str, github: dict[str, Any], tmp_path: Path
) -> None:
    step, _ = steps_named("deploy.yml")
    ref = github["v1"] if ref == "<v1-sha>" else ref
    code, log, out = run_step(
        step, self_env(FALLBACK_REPOSITORY="theory-deploy/theory-deploy", FALLBACK_REF=ref), tmp_path, github
    )
    assert code == 0, log
    assert out["sha"] == github[expected]
    assert out["sha"] != github["tag_object"]  # the peeled commit, never the annotated tag's own object


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "job.workflow_sha is empty"),
        ({"FALLBACK_REPOSITORY": "theory-deploy/theory-deploy"}, "job.workflow_sha is empty"),
        ({"FALLBACK_REPOSITORY": "theory-deploy/theory-deploy", "FALLBACK_REF": "no-such-ref"}, "full commit SHA"),
        ({"FALLBACK_REPOSITORY": "../../etc", "FALLBACK_REF": "0" * 40}, "full commit SHA"),
        ({"JOB_WORKFLOW_REPOSITORY": "a/b", "JOB_WORKFLOW_SHA": "v1"}, "full commit SHA"),
    ],
)
def test_no_commit_no_run(env: dict[str, str], message: str, github: dict[str, Any], tmp_path: Path) -> None:
    step, _ = steps_named("deploy.yml")
    code, log, out = run_step(step, self_env(**env), tmp_path, github)
    assert code == 2 and message in log and out == {}


def test_fetch_replaces_whatever_the_workspace_has_at_that_path(github: dict[str, Any], tmp_path: Path) -> None:
    """A caller's `.theory-deploy` (here a symlink to a folder of its own) is removed, not followed."""
    _, fetch = steps_named("deploy.yml")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    git(workspace, "init", "-q")
    planted = tmp_path / "caller-files"
    planted.mkdir()
    (planted / "action.yml").write_text("name: not ours\n")
    (workspace / ".theory-deploy").symlink_to(planted)
    code, log, _ = run_step(
        fetch,
        {"THEORY_DEPLOY_REPOSITORY": "theory-deploy/theory-deploy", "THEORY_DEPLOY_SHA": github["v1"]},
        workspace,
        github,
    )
    assert code == 0, log
    ours = workspace / ".theory-deploy"
    assert ours.is_dir() and not ours.is_symlink()
    assert (ours / "action.yml").read_text() == "name: theory-deploy at v1\n"
    assert git(ours, "rev-parse", "HEAD") == github["v1"]
    assert (planted / "action.yml").read_text() == "name: not ours\n"  # the link's target untouched
    assert "/.theory-deploy/" in (workspace / ".git" / "info" / "exclude").read_text().splitlines()
    assert git(workspace, "status", "--porcelain") == ""  # invisible to planning and pin commits
    # a second fetch (the next job) gives the same tree
    code, log, _ = run_step(
        fetch,
        {"THEORY_DEPLOY_REPOSITORY": "theory-deploy/theory-deploy", "THEORY_DEPLOY_SHA": github["next"]},
        workspace,
        github,
    )
    assert code == 0 and git(ours, "rev-parse", "HEAD") == github["next"]
    assert (workspace / ".git" / "info" / "exclude").read_text().count("/.theory-deploy/") == 1


@pytest.mark.parametrize("sha", ["", "v1", "f" * 40])
def test_fetch_refuses_anything_but_a_commit_the_repository_has(
    sha: str, github: dict[str, Any], tmp_path: Path
) -> None:
    _, fetch = steps_named("deploy.yml")
    code, log, _ = run_step(
        fetch, {"THEORY_DEPLOY_REPOSITORY": "theory-deploy/theory-deploy", "THEORY_DEPLOY_SHA": sha}, tmp_path, github
    )
    assert code != 0, log
    assert not (tmp_path / ".theory-deploy" / "action.yml").exists()
