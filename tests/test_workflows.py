"""Our workflows and actions: linted (zizmor, GitHub's JSON schemas) and held to the rules we chose.

- zizmor `--offline --persona pedantic` reports nothing (config and justified ignores:
  .github/zizmor.yml and `# zizmor: ignore[...]` comments next to what they excuse);
- check-jsonschema validates them against GitHub's workflow and action schemas;
- no `${{` inside any `run:`; no pull_request_target; no `secrets: inherit`, toJSON(secrets) or
  secrets[...]; every third-party `uses:` pinned by a 40-hex SHA with a `# vX` comment; top-level
  permissions empty or read-only, every write granted per job with a comment saying why;
- no checkout keeps its credentials except deploy.yml's pin job (the one that pushes);
- jobs that see secrets declare an environment; environment jobs run under a concurrency group
  with cancel-in-progress: false;
- deploy.yml knows no processor's secret names: they travel in the consumer's PROCESSOR_SECRETS;
- the called workflows have workflow_call as their only trigger, and deploy.yml's jobs each call one verb.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ACTIONS = [REPO / "action.yml", *sorted((REPO / "actions").glob("*/action.yml"))]
BIN = Path(sys.executable).parent
SHA_USES = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[^@\s]+)?@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+(?:\.\d+)*\b")


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (it is in the test extra: pip install -e .[test])")
    return found


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def all_steps(doc: Any) -> list[tuple[str, dict[str, Any]]]:
    """(where, step) for every step of a workflow's jobs or a composite action."""
    if "runs" in doc:
        return [(f"runs.steps[{i}]", s) for i, s in enumerate(doc["runs"].get("steps") or [])]
    return [
        (f"jobs.{job}.steps[{i}]", s)
        for job, spec in (doc.get("jobs") or {}).items()
        for i, s in enumerate(spec.get("steps") or [])
    ]


def test_the_files_exist() -> None:
    names = {p.name for p in WORKFLOWS}
    assert {"deploy.yml", "pr-smoke.yml", "drift.yml", "ci.yml", "self-test.yml", "release.yml"} <= names
    assert all(p.is_file() for p in ACTIONS) and len(ACTIONS) >= 4


# ----------------------------------------------------------------------------------------------------
# linters


def test_zizmor_pedantic_reports_nothing() -> None:
    proc = subprocess.run(
        [
            _tool("zizmor"),
            "--offline",
            "--persona",
            "pedantic",
            "--no-progress",
            "--config",
            str(REPO / ".github" / "zizmor.yml"),
            *map(str, WORKFLOWS),
            *map(str, ACTIONS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("schema", "files"), [("vendor.github-workflows", WORKFLOWS), ("vendor.github-actions", ACTIONS)]
)
def test_check_jsonschema_validates_against_githubs_schemas(schema: str, files: list[Path]) -> None:
    proc = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------------
# injection, triggers, pinning


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=rel)
def test_no_expression_inside_run(path: Path) -> None:
    for where, step in all_steps(load(path)):
        assert "${{" not in str(step.get("run", "")), f"{rel(path)} {where}: ${{{{ }}}} inside run: use env:"


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=rel)
def test_no_pull_request_target_and_no_bulk_secrets(path: Path) -> None:
    text = repr(load(path))  # the YAML's content, not its comments (which may name what they avoid)
    assert "pull_request_target" not in text
    assert not re.search(r"secrets:\s*inherit", text)
    assert not re.search(r"toJSON\(\s*secrets\s*\)", text, re.I)
    assert not re.search(r"secrets\s*\[", text)


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=rel)
def test_third_party_uses_are_pinned_by_sha_with_a_version_comment(path: Path) -> None:
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)", line)
        if not match:
            continue
        target = match.group(1)
        if target.startswith("./"):
            continue
        if target.startswith("docker://"):
            assert re.search(r"@sha256:[0-9a-f]{64}$", target), f"{rel(path)}: {line.strip()}"
            continue
        assert SHA_USES.match(target), f"{rel(path)}: not pinned by a full SHA: {line.strip()}"
        assert VERSION_COMMENT.search(line), f"{rel(path)}: no `# vX.Y.Z` comment: {line.strip()}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_service_images_are_pinned_by_digest(path: Path) -> None:
    for job in (load(path).get("jobs") or {}).values():
        for service in (job.get("services") or {}).values():
            assert re.search(r"@sha256:[0-9a-f]{64}$", service["image"]), service["image"]


# ----------------------------------------------------------------------------------------------------
# permissions and credentials


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_top_level_permissions_are_empty_or_read_only(path: Path) -> None:
    doc = load(path)
    assert "permissions" in doc, f"{rel(path)}: no top-level permissions"
    perms = doc["permissions"]
    assert perms in ({}, "read-all") or all(v in ("read", "none") for v in perms.values()), perms


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_writes_are_granted_per_job_with_a_comment(path: Path) -> None:
    doc = load(path)
    for name, job in doc["jobs"].items():
        assert "permissions" in job, f"{rel(path)} job {name}: declare its permissions"
    for line in path.read_text().splitlines():
        if re.match(r"^\s+[a-z-]+:\s*write\b", line):
            assert "#" in line, f"{rel(path)}: a write permission without a comment saying why: {line.strip()}"


def test_no_checkout_keeps_credentials() -> None:
    # The pin job pushes too, but with the pin action's own `github-token` (gitpr passes it to git
    # through the environment), so no job needs what checkout would persist.
    keeping = []
    for path in WORKFLOWS:
        doc = load(path)
        for job_name, job in doc["jobs"].items():
            for step in job.get("steps") or []:
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    persist = (step.get("with") or {}).get("persist-credentials")
                    if persist is not False:
                        keeping.append(f"{path.name}:{job_name}")
    assert keeping == [], keeping


def _mentions_secrets(job: dict[str, Any]) -> bool:
    text = repr(job)
    return bool(re.search(r"secrets\.(?!GITHUB_TOKEN\b)[A-Za-z_]", text))


@pytest.mark.parametrize("path", WORKFLOWS, ids=rel)
def test_jobs_that_see_secrets_declare_an_environment_and_concurrency(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        if "uses" in job:  # a reusable-workflow call: its own jobs are checked in their file
            continue
        if _mentions_secrets(job):
            assert "environment" in job, f"{rel(path)} job {name} sees secrets but declares no environment"
        if "environment" in job:
            concurrency = job.get("concurrency")
            assert isinstance(concurrency, dict), f"{rel(path)} job {name}: environment job without concurrency"
            assert concurrency.get("cancel-in-progress") is False, (
                f"{rel(path)} job {name}: cancel-in-progress must be false"
            )


# ----------------------------------------------------------------------------------------------------
# deploy.yml specifics


def deploy() -> Any:
    return load(REPO / ".github" / "workflows" / "deploy.yml")


def test_deploy_is_called_never_triggered_and_takes_the_callers_inputs() -> None:
    """Triggers belong to the consumer's caller (theory-deploy init writes it), never to us."""
    on = deploy()["on"]
    assert list(on) == ["workflow_call"]
    assert {"env", "refs", "target", "mode", "theory-deploy-repository", "theory-deploy-ref"} <= set(
        on["workflow_call"]["inputs"]
    )
    assert set(on["workflow_call"]["secrets"]) == {
        "MODAL_TOKEN_ID",
        "MODAL_TOKEN_SECRET",
        "REGISTRY_USERNAME",
        "REGISTRY_PASSWORD",
        "PROCESSOR_SECRETS",
    }


def _modal_deploy_step(job: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in job["steps"] if s.get("uses") == "./.theory-deploy/actions/modal-deploy"]
    return step


def test_deploy_jobs_in_order_each_calling_one_verb() -> None:
    jobs = deploy()["jobs"]
    assert list(jobs) == ["plan", "build", "index", "pin", "start", "sync-secrets", "verify", "run-once"]
    assert jobs["build"]["needs"] == "plan"
    assert jobs["index"]["needs"] == ["plan", "build"]
    assert jobs["pin"]["needs"] == ["plan", "index"]
    assert jobs["start"]["needs"] == ["plan", "pin"]
    assert jobs["sync-secrets"]["needs"] == ["plan", "start"]
    assert jobs["verify"]["needs"] == ["plan", "start", "sync-secrets"]
    assert jobs["run-once"]["needs"] == ["plan", "verify"]
    for name in ("build", "index", "pin"):
        assert jobs[name]["environment"] == "dev"
        assert "needs.plan.outputs.env == 'dev'" in jobs[name]["if"]  # staging/main never rebuild
    assert jobs["start"]["environment"]["name"] == "${{ needs.plan.outputs.env }}"
    for name in ("sync-secrets", "verify", "run-once"):
        assert jobs[name]["environment"] == "${{ needs.plan.outputs.env }}"
    # one verb per job; the lock is kept by start and sync-secrets, released by verify
    stages = {name: _modal_deploy_step(jobs[name])["with"] for name in ("start", "sync-secrets", "verify", "run-once")}
    assert {name: w["stages"] for name, w in stages.items()} == {
        "start": "start",
        "sync-secrets": "sync-secrets",
        "verify": "verify",
        "run-once": "run",
    }
    assert stages["start"]["keep-lock"] == "true" and stages["sync-secrets"]["keep-lock"] == "true"
    assert "keep-lock" not in stages["verify"] and "keep-lock" not in stages["run-once"]
    # later jobs continue this run's lock and fail at once if it was lost, never take a fresh one
    assert stages["sync-secrets"]["continue-lock"] == "true" and stages["verify"]["continue-lock"] == "true"
    assert "continue-lock" not in stages["start"]
    # verify runs whenever start succeeded (even after a failed sync-secrets), so the lock is released
    assert jobs["verify"]["if"] == "${{ !cancelled() && needs.start.result == 'success' }}"
    # dev deploys and verifies the digest just built
    assert "from-push" in stages["start"] and "from-push" in stages["verify"]
    # starts keep run order: one group per environment and processor, never cancelled in progress
    group = jobs["start"]["concurrency"]["group"]
    assert "needs.plan.outputs.env" in group and "matrix.slug" in group
    assert jobs["start"]["concurrency"]["cancel-in-progress"] is False


def test_processor_secrets_travel_in_the_consumers_names_not_ours() -> None:
    """No processor secret name is declared by us: one PROCESSOR_SECRETS bundle, to the jobs that need it."""
    doc = deploy()
    declared = set(doc["on"]["workflow_call"]["secrets"])
    assert not declared & _processor_secret_names(), "deploy.yml must not know any processor's secret names"
    for name, job in doc["jobs"].items():
        passes = "secrets.PROCESSOR_SECRETS" in repr(job)
        assert passes == (name in ("sync-secrets", "run-once")), name
    step = _modal_deploy_step(doc["jobs"]["sync-secrets"])
    assert step["with"]["processor-secrets"] == "${{ secrets.PROCESSOR_SECRETS }}"
    assert "env" not in step  # no value by name in the step's env


def _processor_secret_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "processors").glob("*/*/registry.yaml"):
        doc = load(path)
        secrets = doc.get("secrets") or {}
        names |= set(secrets.get("required") or []) | set(secrets.get("optional") or [])
        auth = (doc.get("api") or {}).get("auth_secret")
        if auth:
            names.add(auth)
    from theory_deploy.secret_values import keys_for

    return {key for name in names for key in keys_for(name)} - {"REGISTRY_USERNAME", "REGISTRY_PASSWORD"}


# ----------------------------------------------------------------------------------------------------
# composite actions


@pytest.mark.parametrize("path", ACTIONS, ids=rel)
def test_composite_actions_reach_their_files_through_action_path(path: Path) -> None:
    doc = load(path)
    assert doc["runs"]["using"] == "composite"
    used_in_env = " ".join(str(v) for step in doc["runs"]["steps"] for v in (step.get("env") or {}).values())
    used_in_env += " ".join(str(step.get("if", "")) for step in doc["runs"]["steps"])
    for step in doc["runs"]["steps"]:
        assert not str(step.get("uses", "")).startswith("./"), "uses: ./ resolves in the caller's workspace"
        if "run" in step:
            assert step.get("shell") == "bash"
            # Our code is reached through the action's own folder: the bootstrap by its path, every
            # later step as a module of the venv that bootstrap built from that folder. `-I` keeps the
            # caller's working directory (and PYTHON* variables) off sys.path.
            if "$GITHUB_ACTION_PATH/" not in step["run"]:
                assert " -I -m theory_deploy.action " in step["run"], step["run"]
                assert step["env"]["THEORY_VENV"] == "${{ steps.setup.outputs.venv }}"
            assert "${THEORY_PYTHON" not in step["run"]
    for name in doc.get("inputs") or {}:
        assert f"inputs.{name}" in used_in_env, f"{rel(path)}: input {name} reaches no step (through env:)"


def test_release_moves_v1_only_after_tests_and_self_tests() -> None:
    jobs = load(REPO / ".github" / "workflows" / "release.yml")["jobs"]
    assert set(jobs["move-v1"]["needs"]) == {"ci", "self-test"}
    assert jobs["self-test"]["uses"] == "./.github/workflows/self-test.yml"
    assert "workflow_call" in load(REPO / ".github" / "workflows" / "self-test.yml")["on"]


def test_pr_smoke_needs_no_secrets() -> None:
    path = REPO / ".github" / "workflows" / "pr-smoke.yml"
    assert "secrets." not in path.read_text()
    doc = load(path)
    assert list(doc["on"]) == ["workflow_call"] and "secrets" not in (doc["on"]["workflow_call"] or {})
    smoke = doc["jobs"]["smoke"]
    step = next(s for s in smoke["steps"] if s.get("id") == "smoke")
    assert step["uses"] == "./.theory-deploy"
    assert step["with"]["target"] == "local" and step["with"]["mode"] == "mock"
    assert "localhost:5000" in step["with"]["repository"]


def test_the_called_workflows_have_no_trigger_of_their_own() -> None:
    for name in ("deploy.yml", "pr-smoke.yml", "drift.yml"):
        assert list(load(REPO / ".github" / "workflows" / name)["on"]) == ["workflow_call"], name
