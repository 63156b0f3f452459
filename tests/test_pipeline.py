"""`theory-deploy pipeline` end to end on the local target: the real sample processor, the real engine
and registry. A cold run goes through every stage; a warm run with nothing changed rebuilds (from
cache), re-pins and restarts nothing; a failure stops at its stage and says which."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import assert_no_canary, make_canaries

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REF = "llm/litellm@1"


@pytest.fixture
def workspace(tmp_path: Path, registry: str) -> Path:
    """A copy of the processors and runtime whose sample points at the loopback registry."""
    for folder in ("processors", "runtime", "schema"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    return tmp_path


def cli(workspace: Path, tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "THEORY_REPO_ROOT": str(workspace), **(env or {})}
    return subprocess.run(
        [str(BIN / tool), *args], cwd=workspace, env=full_env, capture_output=True, text=True, timeout=1500
    )


def stages(payload: dict) -> dict[str, dict]:
    return {s["stage"]: s for s in payload["stages"]}


def test_cold_then_warm_pipeline_on_the_local_target(workspace: Path, registry: str, base_image: str):
    branch = f"pipe-{uuid.uuid4().hex[:8]}"
    canaries = make_canaries("OPENAI_API_KEY")
    env = {"GIT_BRANCH": branch, "GIT_USER": "tester", **canaries}
    repository = f"{registry}/theory-test/pipeline-{uuid.uuid4().hex[:8]}"
    moved = cli(workspace, "processorctl", "set-repository", "--ref", REF, "--repository", repository, "--json")
    assert moved.returncode == 0, moved.stderr
    args = [
        "pipeline",
        "--ref",
        REF,
        "--env",
        "dev",
        "--target",
        "local",
        "--mode",
        "mock",
        "--platforms",
        "linux/amd64",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--json",
    ]
    app = f"{branch}-tester-llm-litellm-v1"
    try:
        cold = cli(workspace, "theory-deploy", *args, env=env)
        assert cold.returncode == 0, cold.stderr[-3000:]
        first = json.loads(cold.stdout)
        assert first["app"] == app
        by = stages(first)
        assert [s["stage"] for s in first["stages"]] == [
            "build",
            "push",
            "pin",
            "start",
            "sync-secrets",
            "verify",
            "run",
        ]
        assert all(s["status"] == "ok" for s in first["stages"]), first["stages"]
        assert by["pin"]["changed"] == ["amd64"]
        assert by["start"]["action"] == "started"
        assert by["verify"]["verified"] is True
        assert by["run"]["envelope"]["status"] == "success"
        pinned = by["pin"]["pins"]["amd64"]["new"]
        assert by["run"]["envelope"]["meta"]["image_digest"] == pinned.split("@")[1]
        text = (workspace / "processors/llm/litellm/registry.yaml").read_text()
        assert f"    amd64: {pinned}  # linux/amd64 manifest: what Modal runs\n" in text

        warm = cli(workspace, "theory-deploy", *args, env=env)
        assert warm.returncode == 0, warm.stderr[-3000:]
        again = stages(json.loads(warm.stdout))
        assert again["build"]["images"] == by["build"]["images"]  # served from the build cache
        assert again["push"]["uploaded_blobs"] == 0
        assert again["push"]["platforms"] == by["push"]["platforms"]
        assert again["pin"]["changed"] == []
        assert again["start"]["action"] == "unchanged"
        assert again["sync-secrets"]["updated"] == [] and again["sync-secrets"]["created"] == []
        assert again["run"]["envelope"]["outputs"] == by["run"]["envelope"]["outputs"]  # mock is deterministic
        for proc in (cold, warm):
            assert_no_canary(proc.stdout + proc.stderr, canaries)
    finally:
        cli(workspace, "localctl", "stop", "--ref", REF, "--env", "dev", env=env)


def test_a_failure_stops_the_pipeline_and_names_its_stage(workspace: Path, registry: str, base_image: str):
    # Real mode needs OPENAI_API_KEY: sync-secrets fails before any run, naming the secret.
    repository = f"{registry}/theory-test/pipeline-{uuid.uuid4().hex[:8]}"
    assert cli(workspace, "processorctl", "set-repository", "--ref", REF, "--repository", repository).returncode == 0
    env = {"GIT_BRANCH": f"fail-{uuid.uuid4().hex[:8]}", "GIT_USER": "tester", "OPENAI_API_KEY": ""}
    try:
        proc = cli(
            workspace,
            "theory-deploy",
            "pipeline",
            "--ref",
            REF,
            "--env",
            "dev",
            "--mode",
            "real",
            "--platforms",
            "linux/amd64",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--json",
            env=env,
        )
        assert proc.returncode == 22, proc.stderr[-2000:]
        error = json.loads(proc.stdout)["error"]
        assert error["code"] == "ERR_MISSING_SECRET"
        assert error["message"].startswith("pipeline stopped at sync-secrets:")
        assert "OPENAI_API_KEY" in error["message"]
        reached = {s["stage"]: s["status"] for s in error["details"]["stages"]}
        assert reached["start"] == "ok" and reached["sync-secrets"] == "failed"
        assert "verify" not in reached and "run" not in reached
    finally:
        cli(workspace, "localctl", "stop", "--ref", REF, "--env", "dev", env=env)


def test_dev_deploys_what_this_run_pushed_not_the_old_pin(workspace: Path, registry: str, base_image: str):
    """`--stages build,push,start` in dev runs the code just pushed, even though nothing was pinned;
    a run that pushes nothing deploys the pin; staging never takes a pushed digest."""
    repository = f"{registry}/theory-test/pipeline-{uuid.uuid4().hex[:8]}"
    assert cli(workspace, "processorctl", "set-repository", "--ref", REF, "--repository", repository).returncode == 0
    env = {"GIT_BRANCH": f"push-{uuid.uuid4().hex[:8]}", "GIT_USER": "tester"}
    build = ["--platforms", "linux/amd64", "--build-arg", f"BASE_IMAGE={base_image}", "--json"]
    registry_yaml = workspace / "processors/llm/litellm/registry.yaml"

    def pipeline(*stages_and_flags: str) -> dict:
        proc = cli(workspace, "theory-deploy", "pipeline", "--ref", REF, *stages_and_flags, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    try:
        published = cli(workspace, "processorctl", "publish", "--ref", REF, *build, env=env)
        assert published.returncode == 0, published.stderr[-3000:]
        old_pin = json.loads(published.stdout)["pins"]["amd64"]["new"]
        pinned_text = registry_yaml.read_text()

        # A change to the app: a new image, pushed but not pinned.
        handler = workspace / "processors/llm/litellm/handler.py"
        handler.write_text(handler.read_text() + "\n# a change this run pushes\n")
        first = pipeline("--env", "dev", "--stages", "build,push,start", *build)
        assert [s["stage"] for s in first["stages"]] == ["build", "push", "start"]
        pushed = stages(first)["push"]["platforms"]["amd64"]
        assert pushed != old_pin
        assert stages(first)["start"]["image"] == pushed, stages(first)["start"]
        assert registry_yaml.read_text() == pinned_text  # no pin stage: registry.yaml untouched
        verified = cli(
            workspace, "localctl", "verify-digest", "--ref", REF, "--env", "dev", "--oci", pushed, "--json", env=env
        )
        assert verified.returncode == 0 and json.loads(verified.stdout)["verified"] is True, verified.stderr

        # Nothing pushed in this run: dev deploys the pin.
        second = pipeline("--env", "dev", "--stages", "start,verify", "--json")
        assert stages(second)["start"]["image"] == old_pin
        assert stages(second)["verify"]["verified"] is True
        assert stages(second)["verify"]["expected"] == old_pin

        # Staging refuses to build at all: promotion is exact.
        refused = cli(
            workspace,
            "theory-deploy",
            "pipeline",
            "--ref",
            REF,
            "--env",
            "staging",
            "--stages",
            "build,push,start",
            "--json",
            env=env,
        )
        assert refused.returncode == 2
        assert "promotion is exact" in json.loads(refused.stdout)["error"]["message"]
    finally:
        cli(workspace, "localctl", "stop", "--ref", REF, "--env", "dev", env=env)
