"""`theory-deploy init`: the real CLI, in repositories made here (fast: no engine, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = (
    ".github/workflows/theory-deploy.yml",
    ".github/workflows/theory-deploy-pr-smoke.yml",
    ".github/workflows/theory-deploy-drift.yml",
)


def run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "THEORY_REPO_ROOT"))}
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def init(cwd: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run("theory-deploy", "init", "--json", *args, cwd=cwd)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "consumer"
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    return path


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def test_an_empty_repository_gets_the_three_callers_and_a_first_processor(repo: Path) -> None:
    code, out = init(repo, "--theory-deploy", "acme-tools/theory-deploy@v1")
    assert code == 0, out
    assert out["changed"] is True and out["status"] == "success"
    assert set(out["written"]) == {
        *WORKFLOWS,
        *(
            f"processors/demo/echo/{f}"
            for f in (
                "Dockerfile",
                "Dockerfile.dockerignore",
                "app.py",
                "handler.py",
                "registry.yaml",
                "requirements.txt",
            )
        ),
    }
    deploy = load(repo / WORKFLOWS[0])
    job = deploy["jobs"]["deploy"]
    # the one `uses:` line and the act fallback inputs name the same repository and ref
    assert job["uses"] == "acme-tools/theory-deploy/.github/workflows/deploy.yml@v1"
    assert job["with"]["theory-deploy-repository"] == "acme-tools/theory-deploy"
    assert job["with"]["theory-deploy-ref"] == "v1"
    assert deploy["on"]["workflow_dispatch"]["inputs"]["env"]["options"] == ["dev", "staging", "main"]
    assert "theory-deploy/pin/**" in deploy["on"]["push"]["branches-ignore"]  # the pin bot starts nothing
    assert set(job["secrets"]) == {"MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "PROCESSOR_SECRETS"}
    assert load(repo / WORKFLOWS[1])["on"] == {"pull_request": None}
    assert "secrets" not in load(repo / WORKFLOWS[1])["jobs"]["smoke"]  # PR smoke sees no secret at all
    assert load(repo / WORKFLOWS[2])["on"]["schedule"]
    # what to set on GitHub, by name
    assert out["secrets"] == {"modal": ["MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"], "processor": ["ECHO_API_KEY"]}
    assert out["environments"] == ["dev", "staging", "main"]
    # no GitHub origin: images go to the local registry, and the note says why
    assert out["image_repository"]["repository"] == "localhost:5000/demo-echo"
    # the processor is valid as written
    proc = run("processorctl", "validate", "--json", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_callers_validate_against_githubs_workflow_schema(repo: Path) -> None:
    assert init(repo)[0] == 0
    proc = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *(str(repo / w) for w in WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_callers_call_workflows_that_exist_with_inputs_and_secrets_they_declare(repo: Path) -> None:
    assert init(repo)[0] == 0
    for caller in WORKFLOWS:
        for job in load(repo / caller)["jobs"].values():
            called = load(REPO / ".github" / "workflows" / job["uses"].split("/.github/workflows/")[1].split("@")[0])
            declared = called["on"]["workflow_call"]
            assert set(job.get("with") or {}) <= set(declared.get("inputs") or {}), caller
            assert set(job.get("secrets") or {}) <= set(declared.get("secrets") or {}), caller
            # the caller grants at least what the called jobs ask for
            granted = job["permissions"]
            for called_job in called["jobs"].values():
                for scope, level in (called_job.get("permissions") or {}).items():
                    assert (level == "read" and granted.get(scope) in ("read", "write")) or granted.get(
                        scope
                    ) == level, (
                        caller,
                        scope,
                    )


def test_a_second_run_changes_nothing(repo: Path) -> None:
    assert init(repo, "--processor", "acme/echo@1")[0] == 0
    before = snapshot(repo)
    code, out = init(repo)  # no --processor: the repository has one, so none is added
    assert code == 0 and out["changed"] is False and out["written"] == []
    assert set(out["files"].values()) == {"unchanged"}
    assert snapshot(repo) == before  # not even rewritten with the same bytes


def test_a_file_with_other_content_stops_the_run_before_anything_is_written(repo: Path) -> None:
    mine = repo / WORKFLOWS[0]
    mine.parent.mkdir(parents=True)
    mine.write_text("name: mine\n")
    code, out = init(repo)
    assert code == 45
    assert out["status"] == "error" and out["error"]["code"] == "ERR_FILE_CONFLICT"
    assert WORKFLOWS[0] in out["error"]["message"] and "--force" in out["error"]["message"]
    assert mine.read_text() == "name: mine\n"
    assert not (repo / WORKFLOWS[1]).exists() and not (repo / "processors").exists()  # all or nothing
    code, out = init(repo, "--dry-run")
    assert code == 0 and out["files"][WORKFLOWS[0]] == "conflict" and out["written"] == []
    assert not (repo / WORKFLOWS[1]).exists()


def test_force_replaces_a_symlink_itself_never_the_file_it_points_to(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text("keep me\n")
    link = repo / WORKFLOWS[0]
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    assert init(repo)[0] == 45  # a symlink is never "the same file"
    code, out = init(repo, "--force")
    assert code == 0 and out["files"][WORKFLOWS[0]] == "overwritten"
    assert not link.is_symlink() and "uses:" in link.read_text()
    assert outside.read_text() == "keep me\n"


def test_the_image_repository_defaults_to_ghcr_under_the_origin_owner(repo: Path) -> None:
    subprocess.run(["git", "remote", "add", "origin", "git@github.com:Acme-Corp/processors.git"], cwd=repo, check=True)
    code, out = init(repo, "--processor", "vision/ocr@1")
    assert code == 0
    assert out["image_repository"]["repository"] == "ghcr.io/acme-corp/vision-ocr"
    assert "repository: ghcr.io/acme-corp/vision-ocr" in (repo / "processors/vision/ocr/registry.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--theory-deploy", "not a repo"], "--theory-deploy"),
        (["--theory-deploy", "a/b@v1 ; rm"], "--theory-deploy"),
        (["--processor", "acme/echo@2"], "--processor"),
        (["--processor", "Acme"], "--processor"),
        (["--image-repository", "ghcr.io/a/b:latest"], "--image-repository"),
    ],
)
def test_bad_flags_name_the_flag_and_write_nothing(repo: Path, args: list[str], flag: str) -> None:
    code, out = init(repo, *args)
    assert code != 0 and out["status"] == "error" and out["error"]["code"].startswith("ERR_")
    assert flag in out["error"]["message"]
    assert not (repo / ".github").exists()
    proc = run("theory-deploy", "init", *args, cwd=repo)
    assert "Traceback" not in proc.stderr
