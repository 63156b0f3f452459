"""The GitHub Actions, run as the GitHub runner runs them (tests/action_runner.py), against real services.

Every test drives an action.yml (the root action or actions/*) through `run_action`: the `setup`
bootstrap (pointed at this virtualenv with THEORY_DEPLOY_VENV), then `python -I -m
theory_deploy.action VERB`, the real glue in src/theory_deploy/action.py running the real stage
engine. Nothing is faked in between; what a test asserts is what the action did to the world:

- fast tests (no Docker engine, no registry): the runner stand-in itself, every bad input (exit code,
  message, an `::error` annotation, and nothing done: registry.yaml byte-identical, no output, no push
  file), setup's refusals, the plan action's matrices (a git repository only), the drift issue against
  the GitHub stand-in (tests/github_standin), merge's refusal, outputs written with random delimiters,
  and the Modal target against the Modal stand-in (tests/modal_standin) with a healthz stand-in for
  its workers (what the processor would report for the deployed image);
- service tests (`docker`, `registry`, `slow`): the local target with the real Docker engine and the
  loopback registry. One module-wide workspace (a copy of processors/, runtime/, schema/ whose
  image.repository is a fresh loopback repository) is built and pushed once by the build-push action;
  each test deploys from its own copy of it and stops every app it started. What is checked: what
  the registry holds, what registry.yaml pins, which digest the running container runs (`localctl
  verify-digest`), what the GitHub stand-in and the bare git remote received.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from modal_standin import ModalStandIn
from modal_standin.images import push_tiny_image
from ruamel.yaml import YAML

from tests.action_runner import ActionResult, evaluate, parse_output_file, run_action, substitute
from tests.github_standin import GitHubStandIn
from tests.helpers import assert_no_canary, make_canaries
from tests.test_modal_target import HealthServer

# Every test runs the action's steps (Python processes) in subprocesses: a second or more each. The
# ones that need the Docker engine and the loopback registry also carry `docker` and `registry`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "scripts" / "action-entrypoint"
BIN = Path(sys.prefix) / "bin"
REF = "llm/litellm@1"
OTHER = "llm/other@1"
SLUG = "llm-litellm-v1"
REG = "processors/llm/litellm/registry.yaml"
OTHER_REG = "processors/llm/other/registry.yaml"
LITELLM = REPO / REG
HEX = "a" * 64
GHCR = "ghcr.io/theory-deploy/llm-litellm"
NOTE_LABEL = "dev.theory.test.note"
BRANCH, USER = "feat/x", "dev"
DEV_APP = f"feat-x-dev-{SLUG}"
LOCAL_BRANCH = "feat/local"  # the dev app of the `local` tests, apart from the module-wide dev run's
LOCAL_DEV_APP = f"feat-local-dev-{SLUG}"
# The caller's environment must not leak into an action under test: these are set per test or not at all.
CLEARED = (
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "MODAL_SERVER_URL",
    "MODAL_ENVIRONMENT",
    "MODAL_PROFILE",
    "MODAL_CONFIG_PATH",
    "REGISTRY_USERNAME",
    "REGISTRY_PASSWORD",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "OPENAI_API_KEY",
    "LITELLM_API_BASE",
    "THEORY_REPO_ROOT",
    "THEORY_OUT_DIR",
    "THEORY_DEPLOY_VENV",
    "GIT_BRANCH",
    "GIT_USER",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name in [k for k in os.environ if k.startswith("THEORY_IN_")]:
        monkeypatch.delenv(name)


# --------------------------------------------------------------------------------------------------
# Worlds: a consumer repository, the runner's temp folder, and how to run an action in them


@dataclass
class World:
    repo: Path
    temp: Path
    env: dict[str, str] = field(default_factory=dict)  # the step env every action run gets
    apps: set[tuple[str, str]] = field(default_factory=set)  # (ref, env) started, stopped at teardown

    @property
    def registry_yaml(self) -> Path:
        return self.repo / REG

    @property
    def out(self) -> Path:
        return self.temp / "theory-deploy" / "out"

    def push_files(self) -> list[Path]:
        return sorted(self.temp.rglob("push-*.json"))

    def run(self, action: str = ".", environ: dict[str, str] | None = None, **inputs: str) -> ActionResult:
        given = {k.replace("_", "-"): v for k, v in inputs.items()}
        given.setdefault("working-directory", str(self.repo))
        return run_action(
            REPO / action,
            given,
            workspace=self.repo,
            runner_temp=self.temp,
            env={"THEORY_DEPLOY_VENV": sys.prefix, **self.env, **(environ or {})},
            timeout=1800,
        )

    def cli(self, tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, **self.env, "THEORY_REPO_ROOT": str(self.repo), **(env or {})}
        return subprocess.run(
            [str(BIN / tool), *args], cwd=self.repo, env=full, capture_output=True, text=True, timeout=600
        )

    def localctl(self, verb: str, ref: str, env: str, *args: str) -> tuple[int, dict[str, Any]]:
        proc = self.cli("localctl", verb, "--ref", ref, "--env", env, *args, "--json")
        return proc.returncode, json.loads(proc.stdout)

    def deployed(self, ref: str, env: str) -> None:
        self.apps.add((ref, env))

    def stop_apps(self) -> None:
        for ref, env in sorted(self.apps):
            self.cli("localctl", "stop", "--ref", ref, "--env", env, "--json")


def _pin(path: Path, arch: str, pin: str | None) -> None:
    """Hand-write one pin line of a registry.yaml (as a human or the pin bot would have)."""
    text = path.read_text()
    new = re.sub(rf"(?m)^(    {arch}: )\S+", lambda m: f"{m.group(1)}{pin or 'null'}", text, count=1)
    assert new != text or f"{arch}: {pin or 'null'}" in text
    path.write_text(new)


def _set_examples(registry: Path, examples: list[dict[str, Any]] | None) -> None:
    yaml = YAML(typ="rt")
    doc = yaml.load(registry.read_text())
    doc["inputs"].pop("examples", None)
    if examples is not None:
        doc["inputs"]["examples"] = examples
    with registry.open("w") as handle:
        yaml.dump(doc, handle)


def _add_processor(repo: Path, ref: str = OTHER) -> Path:
    """A second processor: the litellm folder under another name (same Dockerfile, same image)."""
    ns, rest = ref.split("/")
    name = rest.split("@")[0]
    folder = repo / "processors" / ns / name
    shutil.copytree(repo / "processors" / "llm" / "litellm", folder)
    text = (folder / "registry.yaml").read_text()
    (folder / "registry.yaml").write_text(text.replace(f"ref: {REF}", f"ref: {ref}"))
    return folder / "registry.yaml"


def _pin_line(path: Path, arch: str = "amd64") -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(f"{arch}:"))


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_EDITOR="true")
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


HUMAN = ["-c", "user.name=Hu Man", "-c", "user.email=human@example.com"]


def publish(repo: Path, *branches: str) -> Path:
    """Make `repo` a clone of a fresh bare remote (GitHub's git side) whose `main` and `branches`
    hold the repository as it is now."""
    remote = repo.parent / f"{repo.name}-remote.git"
    git(repo.parent, "init", "--quiet", "--bare", "-b", "main", str(remote))
    git(repo, "init", "--quiet", "-b", "main")
    git(repo, "add", "-A")
    git(repo, *HUMAN, "commit", "--quiet", "-m", "initial")
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "--quiet", "origin", "main", *[f"main:{b}" for b in branches])
    git(repo, "fetch", "--quiet", "origin")
    return remote


def _fast_world(tmp_path: Path) -> World:
    repo = tmp_path / "repo"
    (repo / "processors" / "llm" / "litellm").mkdir(parents=True)
    shutil.copy(LITELLM, repo / REG)
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    return World(repo, temp, {"GIT_BRANCH": BRANCH, "GIT_USER": USER, "THEORY_STATE_DIR": str(tmp_path / "state")})


@pytest.fixture
def world(tmp_path: Path) -> World:
    """A consumer repository holding the litellm processor (no pins), and the runner's temp folder."""
    return _fast_world(tmp_path)


def _nothing_ran(world: World, result: ActionResult, before: bytes) -> None:
    assert world.registry_yaml.read_bytes() == before  # nothing pinned
    assert world.push_files() == []  # nothing pushed
    assert result.output_files.get("deploy", "") == ""  # not even an output written
    assert result.summary == ""


# --------------------------------------------------------------------------------------------------
# the runner stand-in itself


def test_expressions_follow_github_semantics() -> None:
    ctx = {"inputs": {"open-pr": "true", "empty": "", "x": "a"}, "steps": {"s": {"outputs": {"d": "D"}}}}
    assert evaluate("inputs.open-pr == 'true' && 'pin,pr' || 'pin'", ctx) == "pin,pr"
    ctx["inputs"]["open-pr"] = "false"
    assert evaluate("inputs.open-pr == 'true' && 'pin,pr' || 'pin'", ctx) == "pin"
    assert evaluate("steps.s.outputs.d || steps.t.outputs.d", ctx) == "D"
    assert evaluate("inputs.empty != ''", ctx) is False
    assert substitute("a-${{ inputs.x }}-${{ inputs.missing }}", ctx) == "a-a-"


def test_output_file_parser_reads_both_forms() -> None:
    text = "a=1\nb<<EOF_x\nline1\nline2\nEOF_x\nc=\n"
    assert parse_output_file(text) == {"a": "1", "b": "line1\nline2", "c": ""}


# --------------------------------------------------------------------------------------------------
# bad inputs: clear messages, nothing run


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (
            {"ref": "llm/LiteLLM", "env": "dev", "stages": "verify"},
            "input ref: 'llm/LiteLLM' is not a processor ref",
        ),
        ({"ref": "", "env": "dev", "stages": "verify"}, "input ref is empty"),
        ({"ref": REF, "env": "prod", "stages": "verify"}, "input env: 'prod' is not an environment"),
        (
            {"ref": REF, "env": "dev", "target": "aws", "stages": "verify"},
            "input target: 'aws' is not a target",
        ),
        ({"ref": REF, "env": "dev", "stages": "deploy"}, "unknown stage(s) deploy"),
        ({"ref": REF, "env": "dev", "stages": "run"}, "stage run needs a mode (mock or real)"),
        ({"ref": REF, "env": "dev", "stages": "run", "mode": "fake"}, "input mode: 'fake' is not a mode"),
        ({"ref": REF, "env": "staging", "stages": "build-push,start"}, "promotion is exact"),
        (
            {"ref": REF, "stages": "start"},
            "stages start/sync-secrets/verify/run need an environment: dev, staging or main",
        ),
        (
            {"ref": REF, "env": "dev", "stages": "verify", "inputs_json": "[1]"},
            "inputs-json: expected a JSON object",
        ),
        (
            {"ref": REF, "env": "dev", "stages": "build-push", "platforms": "linux/s390x"},
            "not a supported platform",
        ),
        ({"ref": REF, "env": "dev", "stages": "build-push", "repository": "Not A Repo"}, "input repository"),
        ({"ref": REF, "env": "dev", "stages": "build-push", "build_args": "NOEQUALS"}, "is not KEY=VALUE"),
        (
            {"ref": REF, "env": "dev", "stages": "verify", "fail_on_missing_secrets": "maybe"},
            "is not true or false",
        ),
        ({"ref": REF, "env": "dev", "stages": "pin"}, "stage pin pins what this run pushed"),
        ({"ref": REF, "env": "dev", "stages": "pr"}, "stage pr needs the branch the pin PR targets"),
    ],
)
def test_bad_inputs_fail_with_a_clear_message_before_anything_runs(world: World, inputs, expected) -> None:
    before = world.registry_yaml.read_bytes()
    result = world.run(**inputs)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert "::error" in result.stderr  # an annotation, so the message shows on the run's page
    assert "Fix the inputs listed above" in result.stderr
    assert result.ran == ["setup", "deploy"]
    _nothing_ran(world, result, before)


def test_all_bad_inputs_are_reported_at_once(world: World) -> None:
    before = world.registry_yaml.read_bytes()
    result = world.run(ref="nope", env="prod", target="aws", stages="verify", mode="fake")
    assert result.returncode == 2
    for text in ("input ref", "input env", "input target", "input mode"):
        assert text in result.stderr
    assert result.stderr.count("::error") == 1  # one annotation listing them all
    _nothing_ran(world, result, before)


def test_an_unknown_processor_fails_naming_it(world: World) -> None:
    before = world.registry_yaml.read_bytes()
    result = world.run(ref="no/such@1", env="dev", stages="verify")
    assert result.returncode != 0
    assert "no/such@1" in result.stderr and "::error" in result.stderr
    assert world.registry_yaml.read_bytes() == before and world.push_files() == []
    results = json.loads(result.outputs["results"])
    assert "no/such@1" in results["no/such@1"]["error"]
    assert result.outputs["verified"] == ""  # no verify ran
    assert "**Failures**" in result.summary


def test_setup_refuses_an_old_python_clearly(world: World, tmp_path: Path) -> None:
    old = tmp_path / "python3.8"
    old.write_text("#!/bin/sh\necho 3.8\n")
    old.chmod(0o755)
    result = run_action(REPO, {"ref": REF, "python": str(old)}, workspace=world.repo, runner_temp=world.temp)
    assert result.returncode != 0
    assert "needs 3.11 or newer" in result.stderr
    assert "::error title=theory-deploy setup::" in result.stderr
    assert result.ran == ["setup"]
    assert not (world.temp / "theory-deploy").exists()  # no half-made virtualenv


def test_setup_rejects_a_prepared_venv_without_the_cli(world: World, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-venv"
    empty.mkdir()
    result = world.run(ref=REF, environ={"THEORY_DEPLOY_VENV": str(empty)})
    assert result.returncode != 0
    assert "has no bin/python and bin/processorctl" in result.stderr
    assert result.ran == ["setup"]


def test_every_action_runs_its_verb_on_the_private_venv_isolated() -> None:
    """`-I`: no file of the caller's repository can stand in for the package."""
    yaml = YAML(typ="safe")
    for path in [REPO / "action.yml", *sorted((REPO / "actions").glob("*/action.yml"))]:
        steps = yaml.load(path.read_text())["runs"]["steps"]
        assert 'action-entrypoint" setup' in steps[0]["run"]
        for step in steps[1:]:
            assert re.fullmatch(
                r'"\$\{THEORY_VENV:\?[^}]*\}/bin/python" -I -m theory_deploy\.action (deploy|plan|merge)',
                step["run"],
            ), (path, step["run"])


# --------------------------------------------------------------------------------------------------
# plan, merge, drift-issue


def test_plan_action_writes_matrices(world: World) -> None:
    publish(world.repo)
    git(world.repo, "checkout", "--quiet", "-b", BRANCH)
    result = world.run("actions/plan", environ={"GIT_BRANCH": ""}, refs=REF, platforms="linux/amd64")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.outputs["build-matrix"]) == {
        "include": [
            {
                "ref": REF,
                "slug": SLUG,
                "platform": "linux/amd64",
                "arch": "amd64",
                "runner": "ubuntu-latest",
                "qemu": False,
            }
        ]
    }
    assert result.outputs["has-builds"] == "true"
    assert result.outputs["env"] == "dev"  # a feature branch
    assert json.loads(result.outputs["build-processors-matrix"])["include"][0]["slug"] == SLUG
    assert json.loads(result.outputs["deploys"]) == [REF]
    assert "### Plan" in result.summary


def test_merge_rejects_a_folder_without_pushes(world: World, tmp_path: Path) -> None:
    empty = tmp_path / "parts"
    empty.mkdir()
    result = world.run("actions/build-push", ref=REF, merge_from=str(empty))
    assert result.returncode != 0
    assert f"no push-{SLUG}.json under" in result.stderr
    assert "::error" in result.stderr
    assert result.ran == ["setup", "merge"]
    assert world.push_files() == []


def _drift_step() -> dict[str, Any]:
    workflow = YAML(typ="safe").load((REPO / ".github" / "workflows" / "drift.yml").read_text())
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "drift-issue" in str(step.get("run", "")):
                return step
    raise AssertionError("drift.yml runs no drift-issue step")


def _drift(tmp_path: Path, gh: GitHubStandIn, token: str, verified: bool) -> tuple[ActionResult, dict[str, str]]:
    """drift.yml's report step, as the runner runs it: its own `run:` line and `env:` names."""
    step = _drift_step()
    assert set(step["env"]) == {"THEORY_VENV", "THEORY_RESULTS_DIR", "THEORY_IN_GITHUB_TOKEN"}
    results = tmp_path / "drift" / "drift-main-llm-litellm-v1"
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(
        json.dumps(
            {
                "env": "main",
                "target": "modal",
                "results": {
                    REF: {"app": SLUG, "verified": verified, "error": "" if verified else "drifted: sha256:bbb"}
                },
            }
        )
    )
    out, summary = tmp_path / "out.txt", tmp_path / "summary.md"
    out.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env.update(
        THEORY_VENV=sys.prefix,
        THEORY_RESULTS_DIR=str(tmp_path / "drift"),
        THEORY_IN_GITHUB_TOKEN=token,
        GITHUB_API_URL=gh.url,
        GITHUB_REPOSITORY="o/r",
        GITHUB_RUN_ID="42",
        GITHUB_SERVER_URL="https://github.example",
        GITHUB_OUTPUT=str(out),
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_ACTIONS="true",
    )
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = ActionResult(proc.returncode, {}, {}, proc.stdout, proc.stderr, summary.read_text())
    return result, parse_output_file(out.read_text())


def test_drift_opens_then_updates_then_closes_one_issue(tmp_path: Path) -> None:
    token = make_canaries("GITHUB_TOKEN")["GITHUB_TOKEN"]
    with GitHubStandIn(owner="o", repo="r", tokens={token}) as gh:
        proc, out = _drift(tmp_path, gh, token, verified=False)
        assert proc.returncode == 21, proc.stderr
        assert out["issue-action"] == "opened" and out["drift"] == "true" and out["issue-number"] == "1"
        (issue,) = gh.issues
        assert issue["labels"] == ["theory-deploy-drift"] and issue["state"] == "open"
        assert "drifted: sha256:bbb" in issue["body"] and "https://github.example/o/r/actions/runs/42" in issue["body"]
        assert "ERR_REGISTRY_MISMATCH" in proc.stderr and "::error" in proc.stderr

        proc, out = _drift(tmp_path, gh, token, verified=False)
        assert proc.returncode == 21
        assert out["issue-action"] == "updated" and len(gh.issues) == 1
        assert [c["body"].split("\n")[0] for c in gh.comments] == [
            "Still drifting: https://github.example/o/r/actions/runs/42"
        ]

        proc, out = _drift(tmp_path, gh, token, verified=True)
        assert proc.returncode == 0, proc.stderr
        assert out["issue-action"] == "closed" and out["drift"] == "false"
        (issue,) = gh.issues
        assert issue["state"] == "closed" and issue["state_reason"] == "completed"
        assert gh.comments[-1]["body"].startswith("No drift any more")
        assert "Issue: closed (#1)" in proc.summary

        proc, out = _drift(tmp_path, gh, token, verified=True)
        assert proc.returncode == 0 and out["issue-action"] == "none" and len(gh.issues) == 1
        assert all(r.authorization == f"token {token}" for r in gh.requests)  # the input reached PyGithub
    shown = [line for line in (proc.stderr + proc.stdout).splitlines() if not line.startswith("::add-mask::")]
    assert_no_canary("\n".join(shown), [token])


# --------------------------------------------------------------------------------------------------
# outputs written by a run that fails early (no Docker: the run stage fails before reaching the target)


def test_run_without_inputs_or_examples_says_what_to_add(world: World) -> None:
    _set_examples(world.registry_yaml, None)
    result = world.run("actions/modal-deploy", ref=REF, env="dev", stages="run", mode="mock")
    assert result.returncode != 0
    assert "add `examples: [{...}]` to `inputs`" in result.stderr
    assert f"::error file={REG}" in result.stderr  # points at the processor's registry.yaml
    results = json.loads(result.outputs["results"])
    assert "has no `examples`" in results[REF]["error"]
    assert result.outputs["verified"] == ""


def test_every_output_is_written_with_a_random_delimiter(world: World) -> None:
    _set_examples(world.registry_yaml, None)
    result = world.run(ref=REF, env="dev", stages="run", mode="mock")
    assert result.returncode != 0  # the run stage failed (no inputs), after the engine ran
    raw = result.output_files["deploy"]
    for name in ("digests", "results", "app-name", "app-url", "verified", "pr-url", "push-dir", "results-file"):
        assert f"\n{name}<<ghadelimiter_" in "\n" + raw, name
    assert all("=" not in line.split("<<")[0] for line in raw.splitlines() if "<<" in line)
    assert json.loads(Path(result.outputs["results-file"]).read_text())["results"][REF]["error"]


def test_a_multi_line_value_cannot_forge_another_output(tmp_path: Path) -> None:
    """RUNNER_TEMP (so the results-file path) with a newline and a fake `verified=true` line in it."""
    world = _fast_world(tmp_path)
    evil = tmp_path / "tmp\nverified=true\nghadelimiter_0"
    evil.mkdir()
    world.temp = evil
    _set_examples(world.registry_yaml, None)
    result = world.run("actions/modal-deploy", ref=REF, env="dev", stages="run", mode="mock")
    assert result.returncode != 0
    assert result.outputs["results-file"] == str(evil / "theory-deploy" / "out" / "results.json")
    assert result.outputs["verified"] == ""  # not forged by the path's second line
    assert Path(result.outputs["results-file"]).is_file()


def test_an_error_already_located_is_annotated_once(world: World) -> None:
    result = world.run("actions/modal-deploy", ref=REF, env="main", stages="start")
    assert result.returncode == 10, result.stderr
    assert "ERR_IMAGE_UNPINNED" in result.stderr
    assert result.stderr.count("::error") == 1
    assert f"::error file={REG},line={_pin_line(world.registry_yaml)},title=theory-deploy start::" in result.stderr


# --------------------------------------------------------------------------------------------------
# The Modal target against the Modal stand-in (no Docker): the default target of the actions


@dataclass
class ModalWorld:
    world: World
    cp: ModalStandIn
    canaries: dict[str, str]
    pin: str

    def endpoint(self) -> dict[str, str]:
        """Where the SDK finds the control plane, without the tokens (those come as inputs or env)."""
        env = self.cp.env_vars()
        return {"MODAL_SERVER_URL": env["MODAL_SERVER_URL"], "MODAL_CONFIG_PATH": env["MODAL_CONFIG_PATH"]}

    def tokens(self) -> dict[str, str]:
        return {"MODAL_TOKEN_ID": self.cp.token_id, "MODAL_TOKEN_SECRET": self.canaries["MODAL_TOKEN_SECRET"]}


@pytest.fixture
def modal(tmp_path: Path, registry: str) -> Iterator[ModalWorld]:
    world = _fast_world(tmp_path)
    world.env["THEORY_MODAL_TIMEOUT_S"] = "30"
    # The Modal stand-in pulls what a deploy references, as Modal does: pin a real (tiny) image.
    path = "theory-test/llm-litellm-modal-glue"
    pin = push_tiny_image(registry, path, payload="action-glue").ref
    text = world.registry_yaml.read_text()
    world.registry_yaml.write_text(text.replace(f"repository: {GHCR}", f"repository: {registry}/{path}", 1))
    _pin(world.registry_yaml, "amd64", pin)
    canaries = make_canaries(
        "MODAL_TOKEN_SECRET", "REGISTRY_USERNAME", "REGISTRY_PASSWORD", "OPENAI_API_KEY", "GITHUB_TOKEN"
    )
    health = HealthServer()
    try:
        with ModalStandIn(web_url_for=health.url_for, token_secret=canaries["MODAL_TOKEN_SECRET"]) as cp:
            health.standin = cp
            yield ModalWorld(world, cp, canaries, pin)
    finally:
        health.close()


def _leaks(result: ActionResult, canaries: dict[str, str]) -> None:
    """No canary anywhere the run wrote, except in the `::add-mask::` commands that hide them."""
    shown = [line for line in result.log.splitlines() if not line.startswith("::add-mask::")]
    assert_no_canary("\n".join(shown), canaries)
    assert_no_canary(json.dumps(result.outputs), canaries)
    assert_no_canary(result.summary, canaries)
    if result.outputs.get("results-file"):
        assert_no_canary(Path(result.outputs["results-file"]).read_text(), canaries)


def test_modal_staging_deploys_the_pin_with_tokens_under_their_own_names_masked(modal: ModalWorld) -> None:
    c = modal.canaries
    before = modal.world.registry_yaml.read_bytes()
    result = modal.world.run(
        environ={**modal.endpoint(), "OPENAI_API_KEY": c["OPENAI_API_KEY"]},
        ref=REF,
        env="staging",
        modal_token_id=modal.cp.token_id,
        modal_token_secret=c["MODAL_TOKEN_SECRET"],
        registry_username=c["REGISTRY_USERNAME"],
        registry_password=c["REGISTRY_PASSWORD"],
        github_token=c["GITHUB_TOKEN"],  # in staging: no pin, no PR, whatever the token
    )
    assert result.returncode == 0, result.log[-4000:]
    # Deployed in staging, exactly the pin, through the SDK with the token the input carried.
    rec = modal.cp.state.deployed_app("staging", SLUG)
    assert rec is not None and rec.version == 1
    assert rec.deploys[0].images["web"].registry_ref == modal.pin
    assert {call.environment_name for call in modal.cp.state.calls if call.environment_name} == {"staging"}
    st = modal.cp.state
    assert st.secret_values("staging", "REGISTRY_AUTH") == {
        "REGISTRY_USERNAME": c["REGISTRY_USERNAME"],
        "REGISTRY_PASSWORD": c["REGISTRY_PASSWORD"],
    }
    assert st.secret_values("staging", "OPENAI_API_KEY") == {"OPENAI_API_KEY": c["OPENAI_API_KEY"]}  # synced
    results = json.loads(result.outputs["results"])[REF]
    assert results["deployed"] == modal.pin and results["verified"] is True and results["app"] == SLUG
    assert result.outputs["verified"] == "true" and result.outputs["app-name"] == SLUG
    assert result.outputs["pr-url"] == "" and result.outputs["push-dir"] == ""
    assert modal.world.registry_yaml.read_bytes() == before and modal.world.push_files() == []
    for stage in ("start", "sync-secrets", "verify"):
        assert f"==> {stage}" in result.stderr
    assert "==> build" not in result.stderr and "==> pin" not in result.stderr
    for name in ("MODAL_TOKEN_SECRET", "REGISTRY_USERNAME", "REGISTRY_PASSWORD", "GITHUB_TOKEN"):
        assert f"::add-mask::{c[name]}" in result.stderr
    assert "### theory-deploy: staging (modal)" in result.summary and "✅ verified" in result.summary
    _leaks(result, c)


def test_modal_an_empty_token_input_does_not_hide_the_callers_env(modal: ModalWorld) -> None:
    c = modal.canaries
    caller = {
        **modal.endpoint(),
        **modal.tokens(),
        "REGISTRY_USERNAME": c["REGISTRY_USERNAME"],
        "REGISTRY_PASSWORD": c["REGISTRY_PASSWORD"],
        "OPENAI_API_KEY": c["OPENAI_API_KEY"],  # a processor secret passes through the step env
    }
    result = modal.world.run("actions/modal-deploy", environ=caller, ref=REF, env="main")
    assert result.returncode == 0, result.log[-4000:]
    st = modal.cp.state
    assert st.deployed_app("main", SLUG) is not None
    assert st.secret_values("main", "REGISTRY_AUTH")["REGISTRY_PASSWORD"] == c["REGISTRY_PASSWORD"]
    assert st.secret_values("main", "OPENAI_API_KEY") == {"OPENAI_API_KEY": c["OPENAI_API_KEY"]}
    assert result.outputs["verified"] == "true"


def test_modal_a_failed_verify_fails_the_step_and_annotates_the_pin_line(modal: ModalWorld) -> None:
    caller = {**modal.endpoint(), **modal.tokens(), "REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": "pw"}
    started = modal.world.run("actions/modal-deploy", environ=caller, ref=REF, env="main", stages="start")
    assert started.returncode == 0, started.log[-3000:]
    running = modal.pin.rsplit("@", 1)[1]
    other = modal.pin.rsplit("@", 1)[0] + f"@sha256:{'d' * 64}"
    _pin(modal.world.registry_yaml, "amd64", other)  # the pin moved; what runs did not
    result = modal.world.run("actions/modal-deploy", environ=caller, ref=REF, env="main", stages="verify")
    assert result.returncode == 21
    line = _pin_line(modal.world.registry_yaml)
    assert f"::error file={REG},line={line},title=theory-deploy verify::" in result.stderr
    assert "ERR_REGISTRY_MISMATCH" in result.stderr and running in result.stderr
    assert result.outputs["verified"] == "false"
    assert "❌ not verified" in result.summary and "**Failures**" in result.summary


def test_modal_working_directory_becomes_the_repo_root(modal: ModalWorld, tmp_path: Path) -> None:
    elsewhere = tmp_path / "workspace"  # the runner's workspace holds no processors/
    elsewhere.mkdir()
    caller = {**modal.endpoint(), **modal.tokens(), "REGISTRY_USERNAME": "bot", "REGISTRY_PASSWORD": "pw"}
    world = World(elsewhere, modal.world.temp, modal.world.env)
    lost = world.run(
        "actions/modal-deploy", environ=caller, ref=REF, env="staging", stages="start", working_directory=""
    )
    assert lost.returncode == 2
    assert f"input working-directory: no processors/ folder in {elsewhere} or above" in lost.stderr
    assert modal.cp.state.apps_in("staging") == []
    found = world.run(
        "actions/modal-deploy",
        environ=caller,
        ref=REF,
        env="staging",
        stages="start",
        working_directory=str(modal.world.repo),
    )
    assert found.returncode == 0, found.log[-3000:]
    rec = modal.cp.state.deployed_app("staging", SLUG)
    assert rec is not None and rec.deploys[0].images["web"].registry_ref == modal.pin  # that repository's pin


# --------------------------------------------------------------------------------------------------
# Service tests: the local target, the Docker engine and the loopback registry


def _registry_get(url: str, accept: str) -> tuple[dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as resp:  # loopback registry
        return json.loads(resp.read()), dict(resp.headers)


def image_config(digest_ref: str) -> dict[str, Any]:
    """The image config blob of a single-platform manifest in the loopback registry."""
    repo, _, digest = digest_ref.partition("@")
    host, _, path = repo.partition("/")
    manifest, _ = _registry_get(
        f"http://{host}/v2/{path}/manifests/{digest}",
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    )
    config, _ = _registry_get(f"http://{host}/v2/{path}/blobs/{manifest['config']['digest']}", "*/*")
    return config


def tags(repository: str) -> list[str]:
    host, _, path = repository.partition("/")
    try:
        body, _ = _registry_get(f"http://{host}/v2/{path}/tags/list", "application/json")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return sorted(body.get("tags") or [])


@dataclass
class Template:
    path: Path
    repository: str
    base_image: str
    env: dict[str, str]

    def build_args(self, note: str = "") -> str:
        return f"BASE_IMAGE={self.base_image}" + (f"\nTHEORY_TEST_NOTE={note}" if note else "")


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory, registry: str, base_image: str, docker_cli: str, shared_blob_cache: str
) -> Template:
    """A consumer repository (processors/, runtime/, schema/) whose image.repository is a fresh
    loopback repository. Its Dockerfile ends with a label taken from the THEORY_TEST_NOTE build arg
    (empty unless given), so a test can see a build arg reach the build."""
    root = tmp_path_factory.mktemp("glue") / "template"
    for folder in ("processors", "runtime", "schema"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    dockerfile = root / "processors" / "llm" / "litellm" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"\nARG THEORY_TEST_NOTE=\nLABEL {NOTE_LABEL}=$THEORY_TEST_NOTE\n")
    repository = f"{registry}/theory-action-glue/llm-litellm-{uuid.uuid4().hex[:8]}"
    env = {
        "GIT_BRANCH": BRANCH,
        "GIT_USER": USER,
        "DOCKER": docker_cli,
        "THEORY_DOCKER": docker_cli,
        "THEORY_LOCAL_START_TIMEOUT": "120",
        "THEORY_BLOB_CACHE_DIR": shared_blob_cache,
    }
    moved = subprocess.run(
        [str(BIN / "processorctl"), "set-repository", "--ref", REF, "--repository", repository, "--json"],
        env={**os.environ, **env, "THEORY_REPO_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 0, moved.stderr
    return Template(root, repository, base_image, env)


@pytest.fixture
def local(template: Template, tmp_path: Path) -> Iterator[World]:
    """This test's own copy of the template; every app it started is stopped afterwards."""
    repo = tmp_path / "repo"
    shutil.copytree(template.path, repo)
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    world = World(repo, temp, {**template.env, "GIT_BRANCH": LOCAL_BRANCH, "THEORY_STATE_DIR": str(tmp_path / "state")})
    try:
        yield world
    finally:
        world.stop_apps()


def _build_push(template: Template, tmp: Path, note: str = "", repository: str = "") -> dict[str, str]:
    world = World(tmp / "repo", tmp / "runner-temp", {**template.env, "THEORY_STATE_DIR": str(tmp / "state")})
    shutil.copytree(template.path, world.repo)
    world.temp.mkdir()
    inputs = {"platforms": "linux/amd64", "build_args": template.build_args(note)}
    if repository:
        inputs["repository"] = repository
    result = world.run("actions/build-push", ref=REF, **inputs)
    assert result.returncode == 0, result.log[-5000:]
    return json.loads(result.outputs["digests"])[REF]


@pytest.fixture(scope="module")
def pushed(template: Template, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The template's image, built and pushed once (amd64) by the build-push action: A."""
    return _build_push(template, tmp_path_factory.mktemp("pushed"))["amd64"]


@pytest.fixture(scope="module")
def variant(template: Template, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another real amd64 image in the same repository (another label): B."""
    return _build_push(template, tmp_path_factory.mktemp("variant"), note="variant")["amd64"]


def _running(world: World, ref: str, env: str, digest_ref: str) -> bool:
    code, out = world.localctl("verify-digest", ref, env, "--oci", digest_ref)
    return code == 0 and out.get("verified") is True


@pytest.fixture(scope="module")
def dev_run(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The root action in dev on the local target with every stage: build, push, pin, pr (a github
    token is given), start, sync-secrets, verify and a mock run; its repository is a clone of a bare
    remote and the pin PR goes to the GitHub stand-in. Run once; the tests below read what it did."""
    tmp = tmp_path_factory.mktemp("dev")
    world = World(tmp / "repo", tmp / "runner-temp", {**template.env, "THEORY_STATE_DIR": str(tmp / "state")})
    shutil.copytree(template.path, world.repo)
    world.temp.mkdir()
    remote = publish(world.repo, BRANCH)
    git(world.repo, "checkout", "--quiet", BRANCH)
    token = make_canaries("GITHUB_TOKEN")["GITHUB_TOKEN"]
    world.deployed(REF, "dev")
    try:
        with GitHubStandIn(owner="acme", repo="processors", tokens={token}, git_remote=remote) as gh:
            result = world.run(
                environ={
                    "GITHUB_REF_NAME": BRANCH,
                    "GITHUB_REPOSITORY": "acme/processors",
                    "GITHUB_API_URL": gh.url,
                    "OPENAI_API_KEY": "",
                },
                ref=REF,
                env="dev",
                target="local",
                mode="mock",
                platforms="linux/amd64",
                build_args=template.build_args(),
                fail_on_missing_secrets="false",
                github_token=token,
            )
            digests = json.loads(result.outputs.get("digests") or "{}")
            running = digests.get(REF, {}).get("amd64")  # read now: what runs right after the action
            yield {
                "world": world,
                "result": result,
                "gh": gh,
                "remote": remote,
                "token": token,
                "running": bool(running) and _running(world, REF, "dev", running),
            }
    finally:
        world.stop_apps()


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_dev_builds_pins_and_deploys_the_digest_just_pushed(dev_run: dict[str, Any], template: Template) -> None:
    world, result = dev_run["world"], dev_run["result"]
    assert result.returncode == 0, result.log[-6000:]
    digests = json.loads(result.outputs["digests"])
    amd64 = digests[REF]["amd64"]
    assert list(digests[REF]) == ["amd64"]  # only the platform asked for
    assert re.fullmatch(rf"{re.escape(template.repository)}@sha256:[0-9a-f]{{64}}", amd64), amd64
    assert image_config(amd64)["architecture"] == "amd64"  # really pushed, really amd64
    assert SLUG in tags(template.repository)
    # pinned in the work tree, exactly the digest pushed, only the pin line changed
    text = world.registry_yaml.read_text()
    assert f"    amd64: {amd64}  # linux/amd64 manifest: what Modal runs\n" in text
    assert "    arm64: null" in text
    # deployed what was pushed, and the running container says so
    results = json.loads(result.outputs["results"])[REF]
    assert results["deployed"] == amd64 and results["verified"] is True and results["app"] == DEV_APP
    assert result.outputs["verified"] == "true" and result.outputs["app-name"] == DEV_APP
    assert result.outputs["app-url"].startswith("http://127.0.0.1:")
    assert dev_run["running"]  # localctl verify-digest --oci <amd64>, right after the action
    # every stage ran, in order, the mock run included
    ran = re.findall(r"^<== (\S+): ok", result.stderr, re.M)
    assert ran == ["build", "push", "pin", "pr", "start", "sync-secrets", "verify", "run"]  # pr: a token given
    # the push record for the pin action
    push_file = Path(result.outputs["push-dir"]) / f"push-{SLUG}.json"
    assert json.loads(push_file.read_text())["platforms"] == digests[REF]


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_dev_opens_the_pin_pr_against_the_branch_being_built(dev_run: dict[str, Any]) -> None:
    """action.yml: `all` is build-push, pin, pr (when github-token is set), start, ..."""
    result, gh, remote = dev_run["result"], dev_run["gh"], dev_run["remote"]
    assert result.returncode == 0, result.log[-6000:]
    assert "Stages: build, push, pin, pr, start, sync-secrets, verify, run" in result.summary
    amd64 = json.loads(result.outputs["digests"])[REF]["amd64"]
    (pull,) = gh.pulls
    assert pull["base"] == BRANCH and pull["head"] == f"theory-deploy/pin/{SLUG}"
    assert result.outputs["pr-url"] == f"https://github.example/acme/processors/pull/{pull['number']}"
    assert f"amd64: {amd64}" in git(remote, "show", f"theory-deploy/pin/{SLUG}:{REG}")
    assert all(r.authorization == f"token {dev_run['token']}" for r in gh.requests)
    _leaks(result, {"GITHUB_TOKEN": dev_run["token"]})


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_dev_with_the_pr_stage_named_opens_the_pin_pr_against_the_branch_being_built(
    local: World, template: Template
) -> None:
    """The pr stage itself, from the root action in dev: base = the branch being built (GITHUB_REF_NAME)."""
    remote = publish(local.repo, LOCAL_BRANCH)
    git(local.repo, "checkout", "--quiet", LOCAL_BRANCH)
    token = make_canaries("GITHUB_TOKEN")["GITHUB_TOKEN"]
    with GitHubStandIn(owner="acme", repo="processors", tokens={token}, git_remote=remote) as gh:
        result = local.run(
            environ={"GITHUB_REF_NAME": LOCAL_BRANCH, "GITHUB_REPOSITORY": "acme/processors", "GITHUB_API_URL": gh.url},
            ref=REF,
            env="dev",
            stages="build-push,pin,pr",
            platforms="linux/amd64",
            build_args=template.build_args(),
            github_token=token,
        )
        assert result.returncode == 0, result.log[-5000:]
        amd64 = json.loads(result.outputs["digests"])[REF]["amd64"]
        (pull,) = gh.pulls
        assert pull["base"] == LOCAL_BRANCH and pull["head"] == f"theory-deploy/pin/{SLUG}"
        assert result.outputs["pr-url"] == f"https://github.example/acme/processors/pull/{pull['number']}"
        assert f"amd64: {amd64}" in git(remote, "show", f"theory-deploy/pin/{SLUG}:{REG}")
        assert all(r.authorization == f"token {token}" for r in gh.requests)
    _leaks(result, {"GITHUB_TOKEN": token})


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_summary_has_the_digest_table_app_and_verify(dev_run: dict[str, Any]) -> None:
    result = dev_run["result"]
    assert result.returncode == 0, result.log[-6000:]
    amd64 = json.loads(result.outputs["digests"])[REF]["amd64"]
    digest = amd64.split("@")[1]
    summary = result.summary
    assert "### theory-deploy: dev (local)" in summary
    assert "Stages: build, push, pin, pr, start, sync-secrets, verify, run\n" in summary
    assert "| processor | platform | before | after |" in summary
    assert f"| {REF} | amd64 | — | `{digest[:19]}…` | changed |" in summary
    assert DEV_APP in summary and result.outputs["app-url"] in summary
    assert "✅ verified" in summary and result.outputs["pr-url"] in summary


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_staging_deploys_the_pin_and_never_builds(local: World, template: Template, pushed: str) -> None:
    _pin(local.registry_yaml, "amd64", pushed)
    # Nothing here could be built: a build would fail, not quietly match.
    (local.repo / "processors" / "llm" / "litellm" / "Dockerfile").unlink()
    shutil.rmtree(local.repo / "runtime")
    before, tags_before = local.registry_yaml.read_bytes(), tags(template.repository)
    local.deployed(REF, "staging")
    result = local.run(ref=REF, env="staging", target="local", fail_on_missing_secrets="false", github_token="ghs_x")
    assert result.returncode == 0, result.log[-5000:]
    assert re.findall(r"^<== (\S+): ok", result.stderr, re.M) == ["start", "sync-secrets", "verify"]
    results = json.loads(result.outputs["results"])[REF]
    assert results["deployed"] == pushed and results["verified"] is True and results["app"] == SLUG
    assert _running(local, REF, "staging", pushed)
    # nothing pushed, nothing pinned
    assert json.loads(result.outputs["digests"]) == {} and result.outputs["push-dir"] == ""
    assert local.push_files() == [] and tags(template.repository) == tags_before
    assert local.registry_yaml.read_bytes() == before


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_staging_ignores_a_push_file_and_deploys_the_pin(local: World, pushed: str, variant: str) -> None:
    _pin(local.registry_yaml, "amd64", pushed)
    push = local.temp / "elsewhere" / f"push-{SLUG}.json"
    push.parent.mkdir()
    push.write_text(json.dumps({"ref": REF, "platforms": {"amd64": variant}, "index": None}))
    local.deployed(REF, "staging")
    result = local.run(
        "actions/modal-deploy",
        ref=REF,
        env="staging",
        target="local",
        from_push=str(push.parent),
        fail_on_missing_secrets="false",
    )
    assert result.returncode == 0, result.log[-5000:]
    assert json.loads(result.outputs["results"])[REF]["deployed"] == pushed
    assert _running(local, REF, "staging", pushed) and not _running(local, REF, "staging", variant)


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_dev_from_push_deploys_the_pushed_digest_not_the_pin(local: World, pushed: str, variant: str) -> None:
    """The other side of the rule: in dev a push file wins over the pin, and nothing is built."""
    _pin(local.registry_yaml, "amd64", pushed)
    push = local.temp / "parts" / f"push-{SLUG}.json"
    push.parent.mkdir()
    push.write_text(json.dumps({"ref": REF, "platforms": {"amd64": variant}, "index": None}))
    local.deployed(REF, "dev")
    result = local.run(
        "actions/modal-deploy",
        ref=REF,
        env="dev",
        target="local",
        from_push=str(push.parent),
        fail_on_missing_secrets="false",
    )
    assert result.returncode == 0, result.log[-5000:]
    assert json.loads(result.outputs["results"])[REF]["deployed"] == variant
    assert _running(local, REF, "dev", variant)


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_several_refs_and_all(local: World, pushed: str) -> None:
    other = _add_processor(local.repo)  # unpinned, as is the copy's source
    _pin(local.registry_yaml, "amd64", pushed)
    local.deployed(REF, "main")
    local.deployed(OTHER, "main")
    result = local.run(
        "actions/modal-deploy",
        ref=f"{REF}\n{OTHER}",
        env="main",
        target="local",
        stages="start,verify",
    )
    assert result.returncode != 0  # the second has no pin: the run stops there, the first is deployed
    results = json.loads(result.outputs["results"])
    assert results[REF]["verified"] is True and "has no amd64 pin" in results[OTHER]["error"]
    _pin(other, "amd64", pushed)
    result = local.run("actions/modal-deploy", ref="all", env="main", target="local", stages="start,verify")
    assert result.returncode == 0, result.log[-5000:]
    results = json.loads(result.outputs["results"])
    assert set(results) == {REF, OTHER}
    assert all(r["verified"] is True and r["deployed"] == pushed for r in results.values())
    assert result.outputs["app-name"] == "llm-litellm-v1,llm-other-v1"
    assert _running(local, REF, "main", pushed) and _running(local, OTHER, "main", pushed)


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_build_args_and_platforms_reach_build_and_push(local: World, template: Template) -> None:
    note = f"note-{uuid.uuid4().hex[:8]}"
    elsewhere = f"{template.repository}-elsewhere"
    before = local.registry_yaml.read_bytes()
    result = local.run(
        "actions/build-push",
        ref=REF,
        platforms="linux/amd64",
        build_args=template.build_args(note),
        repository=elsewhere,
    )
    assert result.returncode == 0, result.log[-5000:]
    digests = json.loads(result.outputs["digests"])
    assert list(digests[REF]) == ["amd64"]  # registry.yaml says amd64 and arm64; the input said amd64
    amd64 = digests[REF]["amd64"]
    assert amd64.startswith(f"{elsewhere}@sha256:")  # pushed to the repository input
    config = image_config(amd64)
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"]["Labels"][NOTE_LABEL] == note  # the build arg reached the build
    assert f"{SLUG}-amd64" in tags(elsewhere) and not any("arm64" in t for t in tags(elsewhere))
    push_file = Path(result.outputs["push-dir"]) / f"push-{SLUG}.json"
    assert json.loads(push_file.read_text())["platforms"] == digests[REF]
    assert local.registry_yaml.read_bytes() == before  # build-push never pins


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_pin_action_reads_a_push_dir_and_opens_the_pr_only_when_asked(local: World, pushed: str) -> None:
    remote = publish(local.repo)
    pushes = local.temp / "pushed"
    pushes.mkdir()
    (pushes / f"push-{SLUG}.json").write_text(json.dumps({"ref": REF, "platforms": {"amd64": pushed}}))
    token = make_canaries("GITHUB_TOKEN")["GITHUB_TOKEN"]
    github = {"GITHUB_REPOSITORY": "acme/processors"}
    with GitHubStandIn(owner="acme", repo="processors", tokens={token}, git_remote=remote) as gh:
        github["GITHUB_API_URL"] = gh.url
        result = local.run("actions/pin", environ=github, ref=REF, from_push=str(pushes))
        assert result.returncode == 0, result.log[-5000:]
        assert f"    amd64: {pushed}  #" in local.registry_yaml.read_text()
        assert json.loads(result.outputs["digests"]) == {REF: {"amd64": pushed}}
        assert result.outputs["pr-url"] == "" and gh.requests == []  # no PR asked for: GitHub not called
        assert git(remote, "branch", "--list") == "* main"  # and nothing pushed to the remote

        result = local.run(
            "actions/pin",
            environ=github,
            ref=REF,
            from_push=str(pushes),
            open_pr="true",
            pr_base="main",
            github_token=token,
        )
        assert result.returncode == 0, result.log[-5000:]
        (pull,) = gh.pulls
        assert pull["base"] == "main" and pull["head"] == f"theory-deploy/pin/{SLUG}"
        assert result.outputs["pr-url"] == f"https://github.example/acme/processors/pull/{pull['number']}"
        assert f"amd64: {pushed}" in git(remote, "show", f"theory-deploy/pin/{SLUG}:{REG}")
        assert all(r.authorization == f"token {token}" for r in gh.requests)
    _leaks(result, {"GITHUB_TOKEN": token})


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_pinning_another_repository_points_the_workspace_there_first(
    local: World, template: Template, tmp_path: Path
) -> None:
    elsewhere = f"{template.repository}-moved"
    pushed = _build_push(template, tmp_path / "build", repository=elsewhere)["amd64"]
    pushes = local.temp / "pushed"
    pushes.mkdir()
    (pushes / f"push-{SLUG}.json").write_text(json.dumps({"ref": REF, "platforms": {"amd64": pushed}}))
    before = local.registry_yaml.read_bytes()
    refused = local.run(
        "actions/pin",
        ref=REF,
        from_push=str(pushes),
        repository=elsewhere,
        open_pr="true",
        pr_base="main",
        github_token="ghs_" + "q" * 36,
    )
    assert refused.returncode != 0
    assert "a pin PR must pin image.repository" in refused.stderr
    assert local.registry_yaml.read_bytes() == before  # nothing moved, nothing pinned

    result = local.run("actions/pin", ref=REF, from_push=str(pushes), repository=elsewhere)
    assert result.returncode == 0, result.log[-5000:]
    text = local.registry_yaml.read_text()
    assert f"repository: {elsewhere}\n" in text and f"    amd64: {pushed}  #" in text
    assert f"::notice::{REF}: image.repository set to {elsewhere} in this work tree only" in result.stderr


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_run_uses_the_examples_of_the_inputs_schema_or_says_what_to_add(local: World, pushed: str) -> None:
    _pin(local.registry_yaml, "amd64", pushed)
    local.deployed(REF, "staging")
    started = local.run(
        "actions/modal-deploy", ref=REF, env="staging", target="local", stages="start", fail_on_missing_secrets="false"
    )
    assert started.returncode == 0, started.log[-5000:]

    _set_examples(local.registry_yaml, None)
    result = local.run("actions/modal-deploy", ref=REF, env="staging", target="local", stages="run", mode="mock")
    assert result.returncode != 0
    assert "add `examples: [{...}]` to `inputs`" in result.stderr

    # An example the processor refuses proves the example is what the run sends.
    _set_examples(local.registry_yaml, [{"schema": "v1", "params": {"messages": []}}])
    result = local.run("actions/modal-deploy", ref=REF, env="staging", target="local", stages="run", mode="mock")
    assert result.returncode != 0
    assert "messages" in json.loads(result.outputs["results"])[REF]["error"]

    example = {"schema": "v1", "params": {"messages": [{"role": "user", "content": "hello"}]}}
    _set_examples(local.registry_yaml, [example])
    result = local.run("actions/modal-deploy", ref=REF, env="staging", target="local", stages="run", mode="mock")
    assert result.returncode == 0, result.log[-5000:]
    assert re.findall(r"^<== (\S+): ok", result.stderr, re.M) == ["run"]


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_a_failed_verify_fails_the_step_and_annotates_the_pin_line(local: World, pushed: str, variant: str) -> None:
    _pin(local.registry_yaml, "amd64", pushed)
    local.deployed(REF, "main")
    started = local.run("actions/modal-deploy", ref=REF, env="main", target="local", stages="start")
    assert started.returncode == 0, started.log[-5000:]
    _pin(local.registry_yaml, "amd64", variant)  # the pin moved on; the app still runs the old one
    result = local.run("actions/modal-deploy", ref=REF, env="main", target="local", stages="verify")
    assert result.returncode == 21
    line = _pin_line(local.registry_yaml)
    assert f"::error file={REG},line={line},title=theory-deploy verify::" in result.stderr
    assert "ERR_REGISTRY_MISMATCH" in result.stderr
    assert pushed.split("@")[1] in result.stderr and variant.split("@")[1] in result.stderr
    assert result.outputs["verified"] == "false"
    assert "❌ not verified" in result.summary and "**Failures**" in result.summary
    assert _running(local, REF, "main", pushed)  # verify changed nothing


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_keep_going_checks_every_ref_then_fails(local: World, pushed: str) -> None:
    _pin(local.registry_yaml, "amd64", pushed)
    _pin(_add_processor(local.repo), "amd64", pushed)
    result = local.run("actions/modal-deploy", ref="all", env="main", target="local", stages="verify")
    assert result.returncode == 21  # neither runs
    assert set(json.loads(result.outputs["results"])) == {REF}  # the first failure stopped the run
    result = local.run(
        "actions/modal-deploy", ref="all", env="main", target="local", stages="verify", keep_going="true"
    )
    assert result.returncode == 21
    results = json.loads(Path(result.outputs["results-file"]).read_text())["results"]
    assert set(results) == {REF, OTHER}
    assert all(r["verified"] is False and r["error"] for r in results.values())
    assert result.stderr.count("::error") == 2 and result.outputs["verified"] == "false"


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_registry_tokens_reach_the_push_under_their_own_names_and_are_masked(
    local: World, template: Template, auth_registry: Any
) -> None:
    repository = f"{auth_registry.host}/theory-action-glue/llm-litellm-{uuid.uuid4().hex[:8]}"
    denied = local.run(
        "actions/build-push", ref=REF, platforms="linux/amd64", build_args=template.build_args(), repository=repository
    )
    assert denied.returncode != 0  # the registry wants credentials
    result = local.run(
        "actions/build-push",
        ref=REF,
        platforms="linux/amd64",
        build_args=template.build_args(),
        repository=repository,
        registry_username=auth_registry.user,
        registry_password=auth_registry.password,
    )
    assert result.returncode == 0, result.log[-5000:]
    assert json.loads(result.outputs["digests"])[REF]["amd64"].startswith(f"{repository}@sha256:")
    assert f"::add-mask::{auth_registry.password}" in result.stderr
    _leaks(result, {"REGISTRY_PASSWORD": auth_registry.password})


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_an_empty_token_input_does_not_hide_the_callers_env(
    local: World, template: Template, pushed: str, auth_registry: Any, tmp_path: Path
) -> None:
    """REGISTRY_* and a processor secret from the step's env, with the token inputs left empty."""
    repository = f"{auth_registry.host}/theory-action-glue/llm-litellm-{uuid.uuid4().hex[:8]}"
    creds = {"REGISTRY_USERNAME": auth_registry.user, "REGISTRY_PASSWORD": auth_registry.password}
    result = local.run(
        "actions/build-push",
        environ=creds,
        ref=REF,
        platforms="linux/amd64",
        build_args=template.build_args(),
        repository=repository,
    )
    assert result.returncode == 0, result.log[-5000:]  # the auth registry took the step env's credentials
    assert json.loads(result.outputs["digests"])[REF]["amd64"].startswith(f"{repository}@sha256:")

    _pin(local.registry_yaml, "amd64", pushed)
    key = make_canaries("OPENAI_API_KEY")["OPENAI_API_KEY"]
    local.deployed(REF, "staging")
    missing = local.run("actions/modal-deploy", ref=REF, env="staging", target="local")
    assert missing.returncode == 22 and "OPENAI_API_KEY" in missing.stderr  # fail-on-missing-secrets: true
    result = local.run("actions/modal-deploy", environ={"OPENAI_API_KEY": key}, ref=REF, env="staging", target="local")
    assert result.returncode == 0, result.log[-5000:]  # sync-secrets found it in the step env
    stored = Path(local.env["THEORY_STATE_DIR"]) / "secrets" / "staging" / "OPENAI_API_KEY"
    assert json.loads(stored.read_text()) == {"OPENAI_API_KEY": key}
    _leaks(result, {"OPENAI_API_KEY": key})


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_root_action_with_a_repository_input_end_to_end(local: World, template: Template) -> None:
    """What pr-smoke.yml and self-test.yml do: build-push, pin (the workspace moved to the loopback
    repository first), start, sync-secrets, verify and run, all through the root action."""
    repository = f"{template.repository}-e2e"
    local.deployed(REF, "dev")
    inputs = {"schema": "v1", "params": {"messages": [{"role": "user", "content": "hello from the action"}]}}
    result = local.run(
        ref=REF,
        env="dev",
        target="local",
        stages="build-push,pin,start,sync-secrets,verify,run",
        mode="mock",
        inputs_json=json.dumps(inputs),
        platforms="linux/amd64",
        repository=repository,
        build_args=template.build_args(),
        fail_on_missing_secrets="false",
    )
    assert result.returncode == 0, result.log[-6000:]
    pin = json.loads(result.outputs["digests"])[REF]["amd64"]
    assert re.fullmatch(rf"{re.escape(repository)}@sha256:[0-9a-f]{{64}}", pin), pin
    assert result.outputs["verified"] == "true" and result.outputs["app-name"] == LOCAL_DEV_APP
    assert json.loads(result.outputs["results"])[REF]["deployed"] == pin
    text = local.registry_yaml.read_text()
    assert f"repository: {repository}\n" in text and f"amd64: {pin}" in text
    assert _running(local, REF, "dev", pin)
    assert "✅ verified" in result.summary


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_a_verify_of_an_app_that_is_not_running_still_writes_every_output(local: World, pushed: str) -> None:
    _pin(local.registry_yaml, "amd64", pushed)
    result = local.run("actions/modal-deploy", ref=REF, env="staging", target="local", stages="verify")
    assert result.returncode == 21
    raw = result.output_files["deploy"]
    for name in ("results", "app-name", "verified", "results-file"):
        assert f"\n{name}<<ghadelimiter_" in "\n" + raw
    assert result.outputs["verified"] == "false" and result.outputs["app-name"] == SLUG


# --------------------------------------------------------------------------------------------------
# the real setup bootstrap


@pytest.mark.network
@pytest.mark.slow
def test_setup_builds_a_private_hash_locked_venv_once(tmp_path: Path) -> None:
    """The real setup: `pip install --require-hashes -r requirements/lock.txt`, then this checkout
    with --no-deps, into $RUNNER_TEMP; a second action in the same job reuses it; the venv runs the
    action module isolated (`-I`)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("THEORY_DEPLOY_VENV", "VIRTUAL_ENV")}
    environ.update(RUNNER_TEMP=str(tmp_path), GITHUB_OUTPUT=str(tmp_path / "out"), GITHUB_ACTIONS="true")
    first = subprocess.run(
        ["python3", str(ENTRYPOINT), "setup"], env=environ, capture_output=True, text=True, timeout=1200
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "--require-hashes" in first.stderr
    venv = Path(parse_output_file((tmp_path / "out").read_text())["venv"])
    assert venv.parent == tmp_path / "theory-deploy"
    assert (venv / "bin" / "processorctl").exists() and (venv / "bin" / "modalctl").exists()
    usage = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-m", "theory_deploy.action"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert usage.returncode == 2 and "deploy|plan|merge|drift-issue" in usage.stderr
    second = subprocess.run(
        ["python3", str(ENTRYPOINT), "setup"], env=environ, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0 and f"reusing {venv}" in second.stderr
