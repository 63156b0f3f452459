"""The root action's local-target path, end to end on this machine, as the runner would run it.

A consumer repository (a copy of processors/ and runtime/) is deployed with the real CLI: build
linux/amd64 with the local Docker engine, push to the loopback registry (127.0.0.1:5000) by digest,
pin in the workspace (image.repository pointed at the loopback registry first), start the container,
sync (absent) secrets, verify the running digest, and run once in mock mode. This is what
pr-smoke.yml and self-test.yml do on GitHub's runners.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.action_runner import run_action

REPO = Path(__file__).resolve().parents[1]
REF = "llm/litellm@1"
INPUTS = {"schema": "v1", "params": {"messages": [{"role": "user", "content": "hello from the action"}]}}

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def consumer(tmp_path: Path) -> Path:
    root = tmp_path / "consumer"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(REPO / "processors", root / "processors", ignore=ignore)
    shutil.copytree(REPO / "runtime", root / "runtime", ignore=ignore)
    return root


def test_root_action_local_target_end_to_end(
    consumer: Path, tmp_path: Path, registry: str, base_image: str, docker_cli: str
) -> None:
    repository = f"{registry}/theory-action-e2e/llm-litellm"
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    env = {
        "THEORY_DEPLOY_VENV": sys.prefix,
        "GIT_BRANCH": "e2e/action-glue",
        "GIT_USER": "tester",
        "DOCKER": docker_cli,
        "THEORY_STATE_DIR": str(tmp_path / "state"),
    }
    try:
        result = run_action(
            REPO,
            {
                "ref": REF,
                "env": "dev",
                "target": "local",
                "stages": "build-push,pin,start,sync-secrets,verify,run",
                "mode": "mock",
                "inputs-json": json.dumps(INPUTS),
                "platforms": "linux/amd64",
                "repository": repository,
                "build-args": f"BASE_IMAGE={base_image}",
                "fail-on-missing-secrets": "false",
                "working-directory": str(consumer),
            },
            workspace=consumer,
            runner_temp=temp,
            env=env,
            timeout=1800,
        )
        assert result.returncode == 0, result.log[-6000:]
        print("root action outputs:", json.dumps(result.outputs, indent=2))  # shown with `pytest -s`
        digests = json.loads(result.outputs["digests"])
        pin = digests[REF]["amd64"]
        assert re.fullmatch(rf"{re.escape(repository)}@sha256:[0-9a-f]{{64}}", pin), pin
        assert result.outputs["verified"] == "true"
        assert result.outputs["app-name"].endswith("llm-litellm-v1")
        results = json.loads(result.outputs["results"])[REF]
        assert results["deployed"] == pin
        registry_yaml = (consumer / "processors/llm/litellm/registry.yaml").read_text()
        assert f"amd64: {pin}" in registry_yaml  # pinned in the workspace
        assert "✅ verified" in result.summary
    finally:
        subprocess.run(
            [str(Path(sys.prefix) / "bin" / "localctl"), "stop", "--ref", REF, "--env", "dev", "--json"],
            env={**os.environ, **env, "THEORY_REPO_ROOT": str(consumer)},
            capture_output=True,
            timeout=120,
            check=False,
        )
