"""The CLI contract: exit codes, one JSON object under --json, no tracebacks, a documented table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from theory_deploy import errors

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def cli(tool: str, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_codes_and_exit_codes_are_unique_and_stable():
    codes = [cls.code for cls in errors.ALL_ERRORS]
    exits = [cls.exit_code for cls in errors.ALL_ERRORS]
    assert len(set(codes)) == len(codes)
    assert len(set(exits)) == len(exits)
    assert all(code.startswith("ERR_") for code in codes)
    assert all(cls.remedy for cls in errors.ALL_ERRORS)
    # codes processors and earlier tooling already emit keep their meaning
    for kept in [
        "ERR_IMAGE_UNPINNED",
        "ERR_IMAGE_PULL",
        "ERR_IMAGE_UNAVAILABLE",
        "ERR_REGISTRY_MISMATCH",
        "ERR_IMAGE_BUILD",
        "ERR_IMAGE_PUSH",
        "ERR_MISSING_SECRET",
        "ERR_INPUTS",
        "ERR_VALIDATION",
        "ERR_PROVIDER",
        "ERR_RUNTIME",
        "ERR_TIMEOUT",
        "ERR_WS_PROTOCOL",
        "ERR_FUNCTION_NOT_FOUND",
    ]:
        assert kept in errors.BY_CODE


def test_readme_lists_every_code():
    readme = (REPO / "README.md").read_text()
    assert errors.markdown_table() in readme, "README error table is stale: paste `theory-deploy errors --markdown`"


def test_usage_errors_exit_2_with_usage():
    proc = cli("modalctl", "start", "--ref", "llm/litellm@1")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "--env" in proc.stderr
    proc = cli("processorctl", "validate", "--no-such-flag", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "ERR_USAGE"


def test_user_errors_have_code_exit_and_json_without_traceback():
    proc = cli("modalctl", "name", "--ref", "llm/litellm@v1", "--env", "main", "--json")
    assert proc.returncode == errors.InvalidRefError.exit_code
    payload = json.loads(proc.stdout)
    assert payload["status"] == "error" and payload["error"]["code"] == "ERR_INVALID_REF"
    assert "ns/name@N" in payload["error"]["message"]
    assert "Traceback" not in proc.stderr + proc.stdout
    proc = cli("localctl", "name", "--ref", "llm/litellm@1", "--env", "prod")
    assert proc.returncode == errors.InvalidEnvError.exit_code and "dev, staging, main" in proc.stderr
    assert proc.stdout == ""


def test_name_verb_guide_cases():
    env = {"GIT_BRANCH": "feat/websocket-standardization", "GIT_USER": "veyorokon"}
    for tool in ("modalctl", "localctl"):
        proc = cli(tool, "name", "--ref", "llm/litellm@1", "--env", "dev", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        payload = json.loads(proc.stdout)
        assert payload["app"] == "feat-websocket-standardization-veyorokon-llm-litellm-v1"
        assert payload["branch"] == "feat/websocket-standardization"
        assert cli(tool, "name", "--ref", "llm/litellm@1", "--env", "main").stdout.strip() == "llm-litellm-v1"


def test_dev_name_without_branch_is_a_clear_error(tmp_path):
    env = {
        "GIT_BRANCH": "",
        "GIT_USER": "",
        "GITHUB_ACTOR": "",
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GITHUB_ACTIONS": "",
    }
    proc = cli("modalctl", "name", "--ref", "llm/litellm@1", "--env", "dev", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == errors.GitContextError.exit_code
    assert "GIT_BRANCH" in json.loads(proc.stdout)["error"]["message"]


def test_debug_shows_traceback_for_user_errors_only_when_asked():
    proc = cli("modalctl", "name", "--ref", "bad", "--env", "main", "--debug")
    assert "Traceback" in proc.stderr
