"""`processorctl plan`: which processors a change touches, in real git repositories made per test."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.action_runner import parse_output_file
from theory_deploy.cli import framework, plan_cmds
from theory_deploy.errors import GitError, InvalidEnvError, ProcessorNotFoundError, UsageError, ValidationError
from theory_deploy.plan import compute_plan, deploy_env
from theory_deploy.refs import split_refs
from theory_deploy.registry_file import set_repository
from theory_deploy.registry_pins import is_pin_only_change

SAMPLE = Path(__file__).resolve().parents[1] / "processors" / "llm" / "litellm" / "registry.yaml"
PIN_A = "ghcr.io/theory-deploy/llm-{name}@sha256:" + "a" * 64
PIN_B = "ghcr.io/theory-deploy/llm-{name}@sha256:" + "b" * 64


def git(repo: Path, *args: str) -> str:
    """git in `repo` as a fixed author; inherited GIT_* variables (a hook's GIT_DIR, say) are dropped."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def registry_text(name: str) -> str:
    return (
        SAMPLE.read_text()
        .replace("llm/litellm@1", f"llm/{name}@1")
        .replace("ghcr.io/theory-deploy/llm-litellm", f"ghcr.io/theory-deploy/llm-{name}")
    )


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def init_repo(tmp_path: Path, *, shared_code: bool = True) -> Path:
    """A repository with two processors (llm/litellm, llm/echo) and docs; with `shared_code`, also the
    runtime/ and src/ folders every processor's plan depends on."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    files = {
        "processors/llm/litellm/registry.yaml": registry_text("litellm"),
        "processors/llm/litellm/Dockerfile": "FROM scratch\n",
        "processors/llm/echo/registry.yaml": registry_text("echo"),
        "processors/llm/echo/Dockerfile": "FROM scratch\n",
        "docs/index.md": "docs\n",
    }
    if shared_code:
        files |= {"runtime/theory_runtime/__init__.py": "", "src/theory_deploy/__init__.py": ""}
    commit(root, files, "initial")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path)


def plan(repo: Path, base: str, **kw) -> dict:
    return compute_plan(repo, base=base, **kw)


def test_a_processor_change_plans_that_processor_only(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {"processors/llm/echo/Dockerfile": "FROM scratch\nLABEL x=1\n"})
    result = plan(repo, base)
    assert result["builds"] == ["llm/echo@1"] and result["deploys"] == ["llm/echo@1"]
    assert [r["platform"] for r in result["build_matrix"]["include"]] == ["linux/amd64", "linux/arm64"]
    assert result["changed_files"] == ["processors/llm/echo/Dockerfile"]
    assert result["build_processors_matrix"]["include"] == [
        {
            "ref": "llm/echo@1",
            "slug": "llm-echo-v1",
            "folder": "processors/llm/echo",
            "registry": "processors/llm/echo/registry.yaml",
        }
    ]


@pytest.mark.parametrize(
    "path",
    [
        "runtime/theory_runtime/server.py",
        "src/theory_deploy/push.py",
        "pyproject.toml",
        "requirements/lock.txt",
        "action.yml",
        "actions/pin/action.yml",
    ],
)
def test_a_shared_runtime_or_product_change_plans_every_processor(repo: Path, path: str) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {path: "changed\n"})
    result = plan(repo, base)
    assert result["builds"] == ["llm/echo@1", "llm/litellm@1"]


def test_docs_and_tests_plan_nothing(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {"docs/index.md": "more docs\n", "tests/test_x.py": "", ".github/workflows/drift.yml": "x: 1\n"})
    result = plan(repo, base)
    assert result["builds"] == [] and result["deploys"] == []
    assert result["build_matrix"] == {"include": []}


def test_a_pin_only_commit_builds_nothing_but_deploys(repo: Path) -> None:
    """The pin bot's commit (and the merge of its PR) must not rebuild: no loop."""
    base = git(repo, "rev-parse", "HEAD")
    path = repo / "processors/llm/litellm/registry.yaml"
    pinned = path.read_text().replace("amd64: null", "amd64: " + PIN_A.format(name="litellm"))
    commit(repo, {"processors/llm/litellm/registry.yaml": pinned}, "pin")
    result = plan(repo, base)
    assert result["pin_only"] is True
    assert result["builds"] == [] and result["build_matrix"] == {"include": []}
    assert result["deploys"] == ["llm/litellm@1"]  # in staging/main a new pin is a promotion to deploy
    assert "nothing to build" in result["reason"]


def test_pin_lines_next_to_a_real_change_still_build_that_processor(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    echo = (
        (repo / "processors/llm/echo/registry.yaml")
        .read_text()
        .replace("amd64: null", "amd64: " + PIN_B.format(name="echo"))
    )
    litellm = (repo / "processors/llm/litellm/registry.yaml").read_text().replace("memory_gb: 2", "memory_gb: 4")
    commit(repo, {"processors/llm/echo/registry.yaml": echo, "processors/llm/litellm/registry.yaml": litellm})
    result = plan(repo, base)
    assert result["pin_only"] is False
    assert result["builds"] == ["llm/litellm@1"]  # echo's change is its pin alone
    assert result["deploys"] == ["llm/echo@1", "llm/litellm@1"]


def test_a_new_branch_plans_everything(repo: Path) -> None:
    result = plan(repo, "0" * 40)
    assert result["builds"] == ["llm/echo@1", "llm/litellm@1"]


def test_the_merge_base_is_used_so_a_moved_base_branch_does_not_count(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {"processors/llm/echo/Dockerfile": "FROM scratch\n# feature\n"})
    git(repo, "checkout", "-q", "main")
    main_tip = commit(repo, {"processors/llm/litellm/Dockerfile": "FROM scratch\n# main moved on\n"})
    git(repo, "checkout", "-q", "feature")
    result = plan(repo, main_tip)
    assert result["builds"] == ["llm/echo@1"]


def test_a_missing_base_is_a_clear_error(repo: Path) -> None:
    with pytest.raises(GitError, match="not a commit"):
        plan(repo, "f" * 40)


def test_a_deleted_processor_is_not_planned(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "rm", "-q", "-r", "processors/llm/echo")
    git(repo, "commit", "-q", "-m", "drop echo")
    assert plan(repo, base)["builds"] == []


def test_refs_all_platforms_and_runners(repo: Path) -> None:
    result = compute_plan(repo, refs=["llm/litellm@1"], platforms="linux/arm64", arm_runner="ubuntu-24.04-arm")
    assert result["build_matrix"]["include"] == [
        {
            "ref": "llm/litellm@1",
            "slug": "llm-litellm-v1",
            "platform": "linux/arm64",
            "arch": "arm64",
            "runner": "ubuntu-24.04-arm",
            "qemu": False,
        }
    ]
    qemu = compute_plan(repo, all_processors=True)["build_matrix"]["include"]
    assert {(r["arch"], r["runner"], r["qemu"]) for r in qemu} == {
        ("amd64", "ubuntu-latest", False),
        ("arm64", "ubuntu-latest", True),
    }
    with pytest.raises(ProcessorNotFoundError):
        compute_plan(repo, refs=["llm/nope@1"])
    with pytest.raises(UsageError):
        compute_plan(repo, refs=["llm/litellm@1"], all_processors=True)


def test_split_refs() -> None:
    assert split_refs("a/b@1, c/d@2\nc/d@2  e/f@3") == ["a/b@1", "c/d@2", "e/f@3"]
    assert split_refs("") == []


def test_deploy_env_by_branch_and_the_promotion_guard() -> None:
    assert deploy_env(None, "main") == "main"
    assert deploy_env("", "refs/heads/staging") == "staging"
    assert deploy_env(None, "feat/x") == "dev"
    assert deploy_env("dev", "main") == "dev"
    assert deploy_env("main", "main") == "main"
    with pytest.raises(InvalidEnvError, match="deploys what branch 'main' pins"):
        deploy_env("main", "feat/x")
    with pytest.raises(InvalidEnvError):
        deploy_env("prod", "main")


def test_the_cli_writes_github_outputs(repo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {"processors/llm/echo/Dockerfile": "FROM scratch\n# 2\n"})
    out, summary = tmp_path / "out", tmp_path / "summary"
    out.write_text("")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("THEORY_REPO_ROOT", raising=False)
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_REF_NAME", "feat/y")
    parser, subparsers, parent = framework.new_tool("processorctl", "test")
    plan_cmds.register(subparsers, parent)
    code = framework.run_tool(parser, ["plan", "--base", base, "--env", "", "--github-output", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["builds"] == ["llm/echo@1"] and printed["env"] == "dev"
    outputs = parse_output_file(out.read_text())
    assert json.loads(outputs["build-matrix"])["include"][0]["slug"] == "llm-echo-v1"
    assert outputs["has-builds"] == "true" and outputs["has-deploys"] == "true" and outputs["env"] == "dev"
    assert outputs["pin-only"] == "false"
    assert "| llm/echo@1 | linux/arm64 | ubuntu-latest | QEMU |" in summary.read_text()


def test_the_cli_reports_a_bad_env_as_an_error(repo: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(repo)
    monkeypatch.delenv("THEORY_REPO_ROOT", raising=False)
    parser, subparsers, parent = framework.new_tool("processorctl", "test")
    plan_cmds.register(subparsers, parent)
    code = framework.run_tool(parser, ["plan", "--all", "--env", "main", "--branch", "feat/x", "--json"])
    assert code == InvalidEnvError.exit_code
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "ERR_INVALID_ENV"


# --- cost in proportion to the change -----------------------------------------------------------------


def test_a_plan_reads_only_the_processors_that_changed(repo: Path) -> None:
    """An unchanged processor's registry.yaml is not read by a --base plan (a broken one is not reported:
    it was broken before this change too, and `processorctl validate` reports it), but a plan of
    every processor reads them all, and so does validate."""
    commit(repo, {"processors/llm/echo/registry.yaml": "ref: [unclosed\n"}, "break echo")
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {"processors/llm/litellm/Dockerfile": "FROM scratch\n# changed\n"})
    result = plan(repo, base)
    assert result["builds"] == ["llm/litellm@1"] and result["deploys"] == ["llm/litellm@1"]
    with pytest.raises(ValidationError, match=r"processors/llm/echo/registry.yaml:2:1: not valid YAML"):
        compute_plan(repo, all_processors=True)
    with pytest.raises(ValidationError, match="echo"):
        compute_plan(repo, refs=["llm/echo@1"])
    assert compute_plan(repo, refs=["llm/litellm@1"])["builds"] == ["llm/litellm@1"]


def test_a_changed_processor_that_is_broken_fails_the_plan(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    text = (repo / "processors/llm/echo/registry.yaml").read_text().replace("cpu: 1", "cpu: -1")
    commit(repo, {"processors/llm/echo/registry.yaml": text})
    with pytest.raises(ValidationError, match=r"registry.yaml:\d+:\d+: runtime.cpu"):
        plan(repo, base)


def test_a_changed_processor_whose_slug_collides_with_an_unchanged_one_fails_the_plan(repo: Path) -> None:
    commit(
        repo,
        {
            "processors/a-b/c/registry.yaml": registry_text("x").replace("llm/x@1", "a-b/c@1"),
            "processors/a-b/c/Dockerfile": "FROM scratch\n",
        },
    )
    base = git(repo, "rev-parse", "HEAD")
    commit(
        repo,
        {
            "processors/a/b-c/registry.yaml": registry_text("y").replace("llm/y@1", "a/b-c@1"),
            "processors/a/b-c/Dockerfile": "FROM scratch\n",
        },
    )
    with pytest.raises(ValidationError, match="a-b-c-v1") as info:
        plan(repo, base)
    assert "processors/a-b/c/registry.yaml" in info.value.message
    # Same folder names, another version: no collision, and the unchanged one is not planned.
    text = registry_text("y").replace("llm/y@1", "a/b-c@2")
    commit(repo, {"processors/a/b-c/registry.yaml": text})
    assert plan(repo, base)["builds"] == ["a/b-c@2"]


def test_a_changed_file_in_a_folder_without_registry_yaml_plans_nothing(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {"processors/llm/draft/notes.md": "not a processor yet\n", "processors/README.md": "x\n"})
    assert plan(repo, base)["deploys"] == []


# --- what counts as pin-only: the whole change (registry_pins.is_pin_only_change) and per processor ---

LITELLM_REG = "processors/llm/litellm/registry.yaml"
ECHO_REG = "processors/llm/echo/registry.yaml"


def _pinned(repo: Path, rel: str, name: str, pin: str = PIN_A) -> str:
    return (repo / rel).read_text().replace("amd64: null", "amd64: " + pin.format(name=name))


def test_moving_the_image_repository_plans_a_build(repo: Path) -> None:
    """image.repository is part of `image` but not a pin: moving it changes what is built and pushed."""
    base = git(repo, "rev-parse", "HEAD")
    moved = (
        (repo / LITELLM_REG)
        .read_text()
        .replace("repository: ghcr.io/theory-deploy/llm-litellm", "repository: ghcr.io/elsewhere/llm-litellm")
    )
    commit(repo, {LITELLM_REG: moved}, "move")
    result = plan(repo, base)
    assert result["pin_only"] is False
    assert result["builds"] == ["llm/litellm@1"] and result["deploys"] == ["llm/litellm@1"]
    assert "nothing to build" not in result["reason"]
    assert not is_pin_only_change(repo, base, git(repo, "rev-parse", "HEAD"))


def test_moving_the_repository_and_clearing_its_pins_plans_a_build(repo: Path) -> None:
    """What `processorctl set-repository` commits: the repository line and the pin lines, in one change."""
    commit(repo, {LITELLM_REG: _pinned(repo, LITELLM_REG, "litellm")}, "pinned")
    base = git(repo, "rev-parse", "HEAD")
    result = set_repository(repo / LITELLM_REG, "127.0.0.1:5000/theory/llm-litellm")
    assert result["cleared_pins"] == ["amd64"]
    git(repo, "commit", "-q", "-am", "move")
    planned = plan(repo, base)
    assert planned["pin_only"] is False
    assert planned["builds"] == ["llm/litellm@1"]


def test_a_pin_only_change_in_two_processors_builds_nothing(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(
        repo,
        {LITELLM_REG: _pinned(repo, LITELLM_REG, "litellm"), ECHO_REG: _pinned(repo, ECHO_REG, "echo", PIN_B)},
        "pin both",
    )
    result = plan(repo, base)
    assert result["pin_only"] is True and result["builds"] == []
    assert result["deploys"] == ["llm/echo@1", "llm/litellm@1"]


@pytest.mark.parametrize(
    ("extra", "builds"),
    [
        ({"runtime/theory_runtime/server.py": "changed\n"}, ["llm/echo@1", "llm/litellm@1"]),  # shared runtime
        ({"src/theory_deploy/plan.py": "changed\n"}, ["llm/echo@1", "llm/litellm@1"]),  # the product
        ({"processors/llm/litellm/Dockerfile": "FROM scratch\n# 2\n"}, ["llm/litellm@1"]),  # its own build
        ({"processors/llm/echo/Dockerfile": "FROM scratch\n# 2\n"}, ["llm/echo@1"]),  # another processor
        ({"docs/index.md": "more\n"}, []),  # nothing to build, but still not a pin-only change
    ],
)
def test_pins_next_to_any_other_change_are_not_pin_only(repo: Path, extra: dict[str, str], builds: list[str]) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {LITELLM_REG: _pinned(repo, LITELLM_REG, "litellm"), **extra})
    head = git(repo, "rev-parse", "HEAD")
    assert is_pin_only_change(repo, base, head) is False
    result = plan(repo, base)
    assert result["pin_only"] is False
    assert result["builds"] == builds
    assert "nothing to build" not in result["reason"]


@pytest.mark.parametrize(
    "edit",
    [
        # a comment outside the pins: every changed line must be a pin line, even if the document is equal
        lambda t: t.replace("# The image.platforms pins are written", "# The pins are written"),
        # a comment line of its own inside the platforms block (not a pin's line)
        lambda t: t.replace("  platforms:\n    amd64", "  platforms:\n    # pins\n    amd64"),
        # a value outside image
        lambda t: t.replace("memory_gb: 2", "memory_gb: 4"),
        # a key order change (same document, other lines)
        lambda t: t.replace("  cpu: 1\n  memory_gb: 2\n", "  memory_gb: 2\n  cpu: 1\n"),
    ],
)
def test_pins_next_to_another_edit_of_the_same_registry_yaml_are_not_pin_only(repo: Path, edit) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, {LITELLM_REG: edit(_pinned(repo, LITELLM_REG, "litellm"))})
    head = git(repo, "rev-parse", "HEAD")
    assert is_pin_only_change(repo, base, head) is False
    result = plan(repo, base)
    assert result["pin_only"] is False and "nothing to build" not in result["reason"]
    assert result["deploys"] == ["llm/litellm@1"]


def test_pin_only_change_at_the_function_level(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    assert is_pin_only_change(repo, base, base) is True  # empty diff: nothing to build
    head = commit(repo, {LITELLM_REG: _pinned(repo, LITELLM_REG, "litellm")}, "pin")
    assert is_pin_only_change(repo, base, head) is True
    assert is_pin_only_change(repo, "0" * 40, head) is False  # a new branch: never pin-only
    with pytest.raises(GitError, match="not a commit"):
        is_pin_only_change(repo, "1" * 40, head)
    # a pin-only edit of a YAML file that is not named registry.yaml is not a pin
    other = "processors/llm/litellm/registry.copy.yaml"
    commit(repo, {other: (repo / LITELLM_REG).read_text()}, "copy")
    base2 = git(repo, "rev-parse", "HEAD")
    head2 = commit(
        repo,
        {
            other: _pinned(repo, other, "litellm", PIN_B).replace(
                PIN_A.format(name="litellm"), PIN_B.format(name="litellm")
            )
        },
    )
    assert is_pin_only_change(repo, base2, head2) is False
    # a new processor's registry.yaml, with pins, is not a pin change
    head3 = commit(repo, {"processors/llm/new/registry.yaml": registry_text("new")}, "new")
    assert is_pin_only_change(repo, head2, head3) is False
    # a deleted registry.yaml is not either
    git(repo, "rm", "-q", ECHO_REG)
    git(repo, "commit", "-q", "-m", "drop")
    assert is_pin_only_change(repo, head3, git(repo, "rev-parse", "HEAD")) is False


def test_a_repository_edit_on_the_pin_line_itself_is_not_pin_only(repo: Path) -> None:
    """`image` in flow style: the repository shares the line of the pins, so the changed lines are all
    pin lines; what tells it apart is that the document, pins set aside, changed."""
    flow = (repo / LITELLM_REG).read_text()
    block = (
        "image:\n"
        "  repository: ghcr.io/theory-deploy/llm-litellm\n"
        "  platforms:\n"
        "    amd64: null  # linux/amd64 manifest: what Modal runs\n"
        "    arm64: null  # linux/arm64 manifest: for local runs on Apple silicon\n"
    )
    assert block in flow
    one_line = "image: {{repository: {repo}, platforms: {{amd64: {pin}, arm64: null}}}}\n"
    commit(
        repo,
        {LITELLM_REG: flow.replace(block, one_line.format(repo="ghcr.io/theory-deploy/llm-litellm", pin="null"))},
        "flow",
    )
    base = git(repo, "rev-parse", "HEAD")
    pin_only = flow.replace(
        block, one_line.format(repo="ghcr.io/theory-deploy/llm-litellm", pin=PIN_A.format(name="litellm"))
    )
    head = commit(repo, {LITELLM_REG: pin_only}, "pin")
    assert is_pin_only_change(repo, base, head) is True
    git(repo, "reset", "-q", "--hard", base)
    moved = flow.replace(block, one_line.format(repo="ghcr.io/elsewhere/llm-litellm", pin="null"))
    head = commit(repo, {LITELLM_REG: moved}, "move")
    assert is_pin_only_change(repo, base, head) is False
    result = plan(repo, base)
    assert result["pin_only"] is False and result["builds"] == ["llm/litellm@1"]
