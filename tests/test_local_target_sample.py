"""The real sample processor (llm/litellm@1) on the local target, end to end through the CLIs only:
`processorctl publish` (build, push to the loopback registry, pin) → `localctl start` → `run --mode
mock` → `verify-digest` → `sync-secrets` (the container is recreated with the value) → `run` →
`logs` → `stop`; no secret value in any output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_no_canary, make_canaries

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
REF = "llm/litellm@1"
INPUTS = json.dumps({"schema": "v1", "params": {"messages": [{"role": "user", "content": "hello local target"}]}})


def test_sample_processor_on_the_local_engine(
    tmp_path: Path, registry: str, base_image: str, docker_cli: str, shared_blob_cache: str
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "runtime", root / "runtime", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copytree(REPO / "processors" / "llm" / "litellm", root / "processors" / "llm" / "litellm")
    registry_yaml = root / "processors" / "llm" / "litellm" / "registry.yaml"
    text = registry_yaml.read_text()
    original = text.split("repository:", 1)[1].split("\n", 1)[0].strip()
    repository = f"{registry}/theory-test/llm-litellm"
    registry_yaml.write_text(text.replace(f"repository: {original}", f"repository: {repository}", 1))

    canaries = make_canaries("OPENAI_API_KEY")
    branch = f"local-sample-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LITELLM_API_BASE")}
    env.update(
        THEORY_REPO_ROOT=str(root),
        THEORY_STATE_DIR=str(tmp_path / "state"),
        THEORY_BLOB_CACHE_DIR=shared_blob_cache,
        THEORY_DOCKER=docker_cli,
        GIT_BRANCH=branch,
        GIT_USER="tester",
        THEORY_LOCAL_START_TIMEOUT="180",
    )
    outputs: list[str] = []

    def cli(tool: str, *args: str, secrets: bool = False, ok: bool = True, timeout: float = 300) -> dict[str, Any]:
        proc = subprocess.run(
            [str(BIN / tool), *args, "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**env, **(canaries if secrets else {})},
            cwd=root,
        )
        outputs.extend([proc.stdout, proc.stderr])
        if ok:
            assert proc.returncode == 0, f"{tool} {' '.join(args)}: {proc.stderr[-3000:]}"
        return json.loads(proc.stdout)

    target = ["--ref", REF, "--env", "dev"]
    app = cli("localctl", "name", *target)["app"]
    try:
        platform = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64")
        cli(
            "processorctl",
            "publish",
            "--ref",
            REF,
            "--platforms",
            f"linux/{platform}",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            timeout=1800,
        )
        pin = registry_yaml.read_text().split(f"{platform}: ", 1)[1].split()[0]
        assert pin.startswith(repository + "@sha256:")
        digest = pin.split("@", 1)[1]

        started = cli("localctl", "start", *target)
        assert started["action"] == "started" and started["digest"] == digest
        assert started["secrets"]["pending"] == ["OPENAI_API_KEY"]

        ran = cli("localctl", "run", *target, "--mode", "mock", "--inputs-json", INPUTS, "--timeout", "60")
        assert ran["envelope"]["status"] == "success"
        assert ran["envelope"]["meta"]["image_digest"] == digest
        assert cli("localctl", "verify-digest", *target)["readings"] == {"engine": digest, "healthz": digest}

        synced = cli("localctl", "sync-secrets", *target, "--fail-on-missing", secrets=True)
        assert synced["created"] == ["OPENAI_API_KEY"] and synced["restarted"] is True
        assert cli("localctl", "sync-secrets", *target, secrets=True)["restarted"] is False
        again = cli("localctl", "run", *target, "--mode", "mock", "--inputs-json", INPUTS, "--timeout", "60")
        assert again["envelope"]["status"] == "success"
        assert cli("localctl", "verify-digest", *target)["verified"] is True
        cli("localctl", "logs", *target, "--tail", "200")
        status = cli("localctl", "status", *target)
        assert status["state"] == "running" and status["matches_pin"] is True
        assert cli("localctl", "stop", *target)["action"] == "stopped"
    finally:
        subprocess.run([docker_cli, "rm", "-f", f"{app}.dev"], capture_output=True, timeout=60)
    assert_no_canary("\n".join(outputs), canaries)
