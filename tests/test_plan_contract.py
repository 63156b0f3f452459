"""plan.py's contract, asserted exactly: the whole plan a workflow reads (every key, every reason, the
order of the matrices), every error message and remedy, and the git corner cases (a base branch that
moved on, an unrelated base, renames, an explicit head) in real git repositories made per test.

These complement tests/test_plan.py (which files plan which processors) with exact values, so that a
changed reason, key or message is a failing test rather than a silent change. The repositories are
made with tests/test_plan.py's helpers.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_plan import SAMPLE, commit, git, init_repo
from theory_deploy import plan as plan_module
from theory_deploy.errors import (
    GitError,
    InvalidEnvError,
    InvalidRefError,
    ProcessorNotFoundError,
    UsageError,
    ValidationError,
)
from theory_deploy.plan import compute_plan, deploy_env

ECHO = {
    "ref": "llm/echo@1",
    "slug": "llm-echo-v1",
    "folder": "processors/llm/echo",
    "registry": "processors/llm/echo/registry.yaml",
}
LITELLM = {
    "ref": "llm/litellm@1",
    "slug": "llm-litellm-v1",
    "folder": "processors/llm/litellm",
    "registry": "processors/llm/litellm/registry.yaml",
}


def build_rows(ref: str, slug: str) -> list[dict[str, Any]]:
    """The build matrix rows of a processor built for both platforms on the default runner."""
    return [
        {
            "ref": ref,
            "slug": slug,
            "platform": "linux/amd64",
            "arch": "amd64",
            "runner": "ubuntu-latest",
            "qemu": False,
        },
        {"ref": ref, "slug": slug, "platform": "linux/arm64", "arch": "arm64", "runner": "ubuntu-latest", "qemu": True},
    ]


def expected_plan(
    *,
    base: str | None,
    reason: str,
    deploys: list[dict[str, str]],
    builds: list[dict[str, str]],
    changed: list[str] | None = None,
    pin_only: bool = False,
) -> dict[str, Any]:
    deploy_refs = [row["ref"] for row in deploys]
    build_refs = sorted(row["ref"] for row in builds)
    return {
        "base": base,
        "reason": reason,
        "pin_only": pin_only,
        "changed_files": changed or [],
        "deploys": deploy_refs,
        "builds": build_refs,
        "deploy_matrix": {"include": deploys},
        "build_matrix": {"include": [r for row in builds for r in build_rows(row["ref"], row["slug"])]},
        "build_processors_matrix": {"include": builds},
        "summary": (
            f"plan: {reason}. build: {', '.join(build_refs) or 'nothing'}; deploy: {', '.join(deploy_refs) or 'nothing'}"
        ),
    }


def processor_files(ns: str, name: str, version: int = 1) -> dict[str, str]:
    """A valid processor at processors/<ns>/<name> declaring <ns>/<name>@<version>."""
    text = (
        SAMPLE.read_text()
        .replace("llm/litellm@1", f"{ns}/{name}@{version}")
        .replace("processors/llm/litellm/", f"processors/{ns}/{name}/")
        .replace("ghcr.io/theory-deploy/llm-litellm", f"ghcr.io/theory-deploy/{ns}-{name}")
    )
    return {f"processors/{ns}/{name}/registry.yaml": text, f"processors/{ns}/{name}/Dockerfile": "FROM scratch\n"}


def row(ns: str, name: str, version: int = 1) -> dict[str, str]:
    slug = f"{ns}-{name}-v{version}".replace("_", "-")
    return {
        "ref": f"{ns}/{name}@{version}",
        "slug": slug,
        "folder": f"processors/{ns}/{name}",
        "registry": f"processors/{ns}/{name}/registry.yaml",
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Two processors (llm/echo, llm/litellm) and no runtime/ or src/ folder (so that a file named
    `runtime` or `src` can be added)."""
    return init_repo(tmp_path, shared_code=False).resolve()


def head_of(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


# ---------------------------------------------------------------------------------------------------
# Modes: exactly one of --base, --refs, --all
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"base": "HEAD", "all_processors": True}, {"refs": ["llm/echo@1"], "all_processors": True}, {"refs": []}],
)
def test_plan_needs_exactly_one_mode(repo: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as info:
        compute_plan(repo, **kwargs)
    assert (info.value.code, info.value.message, info.value.remedy) == (
        "ERR_USAGE",
        "plan needs exactly one of --base REV, --refs REFS or --all.",
        "See --help for the verb's flags.",
    )


def test_a_refs_plan_is_the_asked_processors_in_ref_order(repo: Path) -> None:
    result = compute_plan(repo, refs=["llm/litellm@1", "llm/echo@1", "llm/litellm@1"])
    assert result == expected_plan(
        base=None, reason="the processors asked for", deploys=[ECHO, LITELLM], builds=[ECHO, LITELLM]
    )


def test_an_all_plan_is_every_processor(repo: Path) -> None:
    result = compute_plan(repo, all_processors=True)
    assert result == expected_plan(
        base=None, reason="all processors (asked for)", deploys=[ECHO, LITELLM], builds=[ECHO, LITELLM]
    )


def test_a_malformed_ref_names_the_refs_flag(repo: Path) -> None:
    with pytest.raises(InvalidRefError) as info:
        compute_plan(repo, refs=["llm/echo@1", "LLM/echo"])
    assert (info.value.code, info.value.message) == (
        "ERR_INVALID_REF",
        "--refs: 'LLM/echo' is not a processor ref; expected ns/name@N (e.g. llm/litellm@1).",
    )


def test_an_unknown_ref_names_the_file_that_would_declare_it(repo: Path) -> None:
    for ref in ("llm/nope@1", "llm/echo@2"):  # no folder; a folder declaring another version
        with pytest.raises(ProcessorNotFoundError) as info:
            compute_plan(repo, refs=[ref])
        folder = ref.split("@")[0]
        assert info.value.message == f"--refs: no processor {ref} (no processors/{folder}/registry.yaml declaring it)."
        assert info.value.remedy == ProcessorNotFoundError.remedy


# ---------------------------------------------------------------------------------------------------
# --base: the whole plan, per reason
# ---------------------------------------------------------------------------------------------------


def test_a_new_branch_plans_everything_and_keeps_the_zero_base(repo: Path) -> None:
    zero = "0" * 40
    assert compute_plan(repo, base=zero) == expected_plan(
        base=zero,
        reason="a new branch (no earlier commit to compare with): all processors",
        deploys=[ECHO, LITELLM],
        builds=[ECHO, LITELLM],
    )


def test_the_plan_reports_the_merge_base_it_compared_with(repo: Path) -> None:
    """`--base main` from a feature branch: the plan names the merge base (a sha), not `main`, and
    main's own later commits do not count."""
    fork = head_of(repo)
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {"processors/llm/echo/Dockerfile": "FROM scratch\n# feature\n"})
    git(repo, "checkout", "-q", "main")
    commit(repo, {"processors/llm/litellm/Dockerfile": "FROM scratch\n# main moved on\n"})
    git(repo, "checkout", "-q", "feature")
    assert compute_plan(repo, base="main") == expected_plan(
        base=fork,
        reason="the processors whose files changed",
        deploys=[ECHO],
        builds=[ECHO],
        changed=["processors/llm/echo/Dockerfile"],
    )


def test_a_change_outside_every_processor_plans_nothing(repo: Path) -> None:
    base = head_of(repo)
    commit(repo, {"docs/index.md": "more\n", "processors/README.md": "x\n"})
    assert compute_plan(repo, base=base) == expected_plan(
        base=base,
        reason="no processor's files changed",
        deploys=[],
        builds=[],
        changed=["docs/index.md", "processors/README.md"],
    )


def test_a_pin_only_change_names_the_pin_bot(repo: Path) -> None:
    base = head_of(repo)
    reg = "processors/llm/litellm/registry.yaml"
    pin = "ghcr.io/theory-deploy/llm-litellm@sha256:" + "a" * 64
    commit(repo, {reg: (repo / reg).read_text().replace("amd64: null", f"amd64: {pin}")}, "pin")
    assert compute_plan(repo, base=base) == expected_plan(
        base=base,
        reason="only pin lines changed (the pin bot's commits): nothing to build",
        deploys=[LITELLM],
        builds=[],
        changed=[reg],
        pin_only=True,
    )


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("runtime/theory_runtime/server.py", "the shared runtime (runtime/) changed: all processors"),
        # A file (or symlink) standing where a shared folder is expected counts as that folder.
        ("runtime", "the shared runtime (runtime/) changed: all processors"),
        ("src/theory_deploy/plan.py", "theory-deploy itself changed: all processors"),
        ("src", "theory-deploy itself changed: all processors"),
        ("requirements", "theory-deploy itself changed: all processors"),
        ("actions", "theory-deploy itself changed: all processors"),
        ("pyproject.toml", "theory-deploy itself changed: all processors"),
    ],
)
def test_a_shared_or_product_change_plans_everything_with_its_reason(repo: Path, path: str, reason: str) -> None:
    base = head_of(repo)
    commit(repo, {path: "changed\n"})
    assert compute_plan(repo, base=base) == expected_plan(
        base=base, reason=reason, deploys=[ECHO, LITELLM], builds=[ECHO, LITELLM], changed=[path]
    )


@pytest.mark.parametrize("path", ["runtimes", "srcs/x.py", "docs/runtime/x.md", "actions.md"])
def test_names_that_only_start_like_a_shared_path_plan_nothing(repo: Path, path: str) -> None:
    base = head_of(repo)
    commit(repo, {path: "x\n"})
    assert compute_plan(repo, base=base)["reason"] == "no processor's files changed"


def test_a_file_moved_out_of_a_processor_changes_that_processor(repo: Path) -> None:
    """Renames are two changes (the old path and the new): moving a file out of a processor's folder
    changes what that processor builds."""
    commit(repo, {"processors/llm/echo/prompt.txt": "a long enough text to be detected as a rename\n" * 5})
    base = head_of(repo)
    git(repo, "mv", "processors/llm/echo/prompt.txt", "docs/prompt.txt")
    git(repo, "commit", "-q", "-m", "move")
    assert compute_plan(repo, base=base) == expected_plan(
        base=base,
        reason="the processors whose files changed",
        deploys=[ECHO],
        builds=[ECHO],
        changed=["docs/prompt.txt", "processors/llm/echo/prompt.txt"],
    )


def test_an_explicit_head_is_compared_not_the_work_tree_or_head(repo: Path) -> None:
    base = head_of(repo)
    target = commit(repo, {"processors/llm/echo/Dockerfile": "FROM scratch\n# 2\n"})
    commit(repo, {"processors/llm/litellm/Dockerfile": "FROM scratch\n# 3\n"})
    (repo / "docs" / "index.md").write_text("uncommitted\n")
    assert compute_plan(repo, base=base, head=target) == expected_plan(
        base=base,
        reason="the processors whose files changed",
        deploys=[ECHO],
        builds=[ECHO],
        changed=["processors/llm/echo/Dockerfile"],
    )


def test_a_base_with_no_common_history_is_compared_directly(repo: Path) -> None:
    """`git merge-base` finds nothing for an unrelated history (exit 1): the base itself is compared."""
    empty_tree = git(repo, "hash-object", "-w", "-t", "tree", os.devnull)
    unrelated = git(repo, "commit-tree", empty_tree, "-m", "unrelated root")
    changed = sorted(git(repo, "ls-files").splitlines())
    assert compute_plan(repo, base=unrelated) == expected_plan(
        base=unrelated,
        reason="the processors whose files changed",
        deploys=[ECHO, LITELLM],
        builds=[ECHO, LITELLM],
        changed=changed,
    )


def test_the_build_matrix_follows_ref_order_not_folder_order(repo: Path) -> None:
    """Folders sort `a-b/x` before `a/x` ('-' < '/'); refs sort (a, x) before (a-b, x). The deploy and
    build matrices both follow ref order."""
    base = head_of(repo)
    commit(repo, {**processor_files("a-b", "x"), **processor_files("a", "x")})
    a_x, a_b_x = row("a", "x"), row("a-b", "x")
    result = compute_plan(repo, base=base)
    assert result["deploy_matrix"] == {"include": [a_x, a_b_x]}
    assert result["build_matrix"] == {
        "include": build_rows(a_x["ref"], a_x["slug"]) + build_rows(a_b_x["ref"], a_b_x["slug"])
    }
    assert result["build_processors_matrix"] == {"include": [a_x, a_b_x]}
    assert result["deploys"] == ["a/x@1", "a-b/x@1"]
    assert result["builds"] == ["a-b/x@1", "a/x@1"]  # the list of refs is sorted as text


# ---------------------------------------------------------------------------------------------------
# --base: errors
# ---------------------------------------------------------------------------------------------------


def test_a_head_that_is_no_commit_is_named(repo: Path) -> None:
    with pytest.raises(GitError) as info:
        compute_plan(repo, base=head_of(repo), head="no-such-branch")
    assert (info.value.code, info.value.message, info.value.remedy) == (
        "ERR_GIT",
        f"'no-such-branch' is not a commit in {repo}.",
        GitError.remedy,
    )


def test_a_base_that_is_no_commit_says_to_fetch_history(repo: Path) -> None:
    with pytest.raises(GitError) as info:
        compute_plan(repo, base="f" * 40)
    assert (info.value.code, info.value.message, info.value.remedy) == (
        "ERR_GIT",
        f"--base {'f' * 40!r} is not a commit in {repo}.",
        "Fetch enough history (actions/checkout with `fetch-depth: 0`), or pass --all.",
    )


def test_plans_git_calls_have_their_own_time_limit(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A git that hangs (a stuck fsmonitor hook, a lock on a network file system) must not hold a CI
    # job for git's general two-minute limit: plan's calls have their own. Here it is made short and
    # git slower than it, through a `git` on PATH that sleeps before running the real one.
    base = head_of(repo)
    real = subprocess.run(["which", "git"], check=True, capture_output=True, text=True).stdout.strip()
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "git").write_text(f'#!/bin/sh\nsleep 2\nexec {real} "$@"\n')
    (slow / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(plan_module, "_GIT_TIMEOUT_S", 1.0)
    with pytest.raises(GitError) as info:
        compute_plan(repo, base=base)
    assert info.value.message.endswith(f"in {repo} did not finish in 1s."), info.value.message


# ---------------------------------------------------------------------------------------------------
# Slug collisions
# ---------------------------------------------------------------------------------------------------


def test_underscores_count_as_dashes_when_looking_for_slug_collisions(repo: Path) -> None:
    """`a_b/c@1` and `a-b/c@1` are both `a-b-c-v1`: changing one must check the other, unchanged one."""
    commit(repo, processor_files("a_b", "c"))
    base = head_of(repo)
    commit(repo, processor_files("a-b", "c"))
    with pytest.raises(ValidationError) as info:
        compute_plan(repo, base=base)
    assert "processors/a_b/c/registry.yaml" in info.value.message
    assert "processors/a-b/c/registry.yaml" in info.value.message


def test_every_slug_collision_is_reported_with_its_details(repo: Path) -> None:
    """Three processors with one slug: one problem per later file, one per line, and the details a
    --json caller reads (file and line of the first, every problem)."""
    base = head_of(repo)
    commit(repo, {**processor_files("a-b", "c"), **processor_files("a", "b-c"), **processor_files("a_b", "c")})
    with pytest.raises(ValidationError) as info:
        compute_plan(repo, base=base)
    # Files are read in path order, which compares folder by folder: a/b-c, a-b/c, a_b/c.
    files = [str(repo / f"processors/{f}/registry.yaml") for f in ("a/b-c", "a-b/c", "a_b/c")]
    first, second, third = files
    refs = ["a/b-c@1", "a-b/c@1", "a_b/c@1"]
    tail = (
        "the slug names the Modal app, the pin branch and the build artifacts, so it must be unique: "
        "rename one of the two processors"
    )
    problems = [
        {
            "file": second,
            "line": 5,
            "col": 6,
            "message": f"ref {refs[1]!r} has the slug 'a-b-c-v1', as does {first} (ref {refs[0]!r}); {tail}",
        },
        {
            "file": third,
            "line": 5,
            "col": 6,
            "message": f"ref {refs[2]!r} has the slug 'a-b-c-v1', as does {first} (ref {refs[0]!r}); {tail}",
        },
    ]
    assert info.value.code == "ERR_VALIDATION"
    assert info.value.message == "\n".join(f"{p['file']}:{p['line']}:{p['col']}: {p['message']}" for p in problems)
    assert info.value.details == {"file": second, "line": 5, "problems": problems}


def test_a_namespace_folder_that_cannot_be_listed_does_not_hide_other_collisions(tmp_path: Path) -> None:
    """A namespace folder whose listing fails (here: its path is longer than the system allows, which
    fails for root too) is skipped; the namespaces after it are still checked for slug collisions."""
    deep = tmp_path
    while len(str(deep)) < 3800:
        deep = deep / ("d" * 200)
    root = deep / "r"
    for ns, name in (("p", "q-r"), ("p-q", "r")):
        for rel, text in processor_files(ns, name).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    processors = root / "processors"
    unlistable = None
    fd = os.open(processors, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Keep the first name the listing returns before one of the two colliders (listing order is the
        # file system's); a name listed after both would not tell skipping one folder from stopping.
        for i in range(64):
            name = f"{i:02d}" + "n" * 240
            os.mkdir(name, dir_fd=fd)
            order = [e.name for e in os.scandir(processors)]
            if order.index(name) < max(order.index("p"), order.index("p-q")):
                unlistable = name
                break
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    assert unlistable is not None
    with pytest.raises(OSError):
        os.scandir(processors / unlistable)
    with pytest.raises(ValidationError, match="'p-q-r-v1'"):
        compute_plan(root, refs=["p/q-r@1"])


# ---------------------------------------------------------------------------------------------------
# deploy_env
# ---------------------------------------------------------------------------------------------------


def test_deploy_env_without_a_branch_deploys_what_is_asked() -> None:
    assert [deploy_env(env, None) for env in ("dev", "staging", "main")] == ["dev", "staging", "main"]
    assert [deploy_env(env, "") for env in ("dev", "staging", "main")] == ["dev", "staging", "main"]
    assert deploy_env(None, None) == "dev"
    assert deploy_env("staging", "refs/heads/staging") == "staging"


def test_deploy_env_refuses_an_unknown_env_exactly() -> None:
    with pytest.raises(InvalidEnvError) as info:
        deploy_env("prod", "main")
    assert (info.value.code, info.value.message, info.value.remedy) == (
        "ERR_INVALID_ENV",
        "env 'prod' is not an environment; expected one of dev, staging, main.",
        "Use --env dev, --env staging or --env main.",
    )


@pytest.mark.parametrize("env", ["staging", "main"])
def test_staging_and_main_deploy_only_from_their_own_branch(env: str) -> None:
    for branch in ("feat/x", "refs/heads/feat/x", "main" if env == "staging" else "staging"):
        with pytest.raises(InvalidEnvError) as info:
            deploy_env(env, branch)
        shown = branch.removeprefix("refs/heads/")
        assert (info.value.code, info.value.message, info.value.remedy) == (
            "ERR_INVALID_ENV",
            f"env {env} deploys what branch {env!r} pins, but this run is on branch {shown!r}.",
            f"Run the {env} deploy from branch {env} (promote by merging the pins into it).",
        )
