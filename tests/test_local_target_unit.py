"""The local target without an engine: platform, docker-unavailable errors, registry auth config,
run arguments without secret values, and sync-secrets when no engine answers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import assert_no_canary, make_canaries
from theory_deploy.docker import Docker
from theory_deploy.errors import DockerUnavailableError
from theory_deploy.refs import ImageRef, ProcessorRef
from theory_deploy.registry_file import load_processor
from theory_deploy.targets import local
from theory_deploy.targets.base import AppContext
from theory_deploy.targets.local import LocalTarget, registry_auth_env

DIGEST = "sha256:" + "ab" * 32
YAML = """\
ref: unit/proc@1
image:
  repository: 127.0.0.1:5000/unit/proc
  platforms:
    amd64: 127.0.0.1:5000/unit/proc@{digest}
    arm64: 127.0.0.1:5000/unit/proc@{digest}
secrets:
  required: [OPENAI_API_KEY]
  optional: [LITELLM_API_BASE]
api:
  auth_secret: THEORY_AUTH_SECRET
inputs:
  type: object
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppContext:
    folder = tmp_path / "repo" / "processors" / "unit" / "proc"
    folder.mkdir(parents=True)
    (folder / "registry.yaml").write_text(YAML.format(digest=DIGEST))
    monkeypatch.setenv("THEORY_STATE_DIR", str(tmp_path / "state"))
    for name in (
        "OPENAI_API_KEY",
        "LITELLM_API_BASE",
        "THEORY_AUTH_SECRET",
        "REGISTRY_USERNAME",
        "REGISTRY_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    processor = load_processor(ProcessorRef.parse("unit/proc@1"), tmp_path / "repo")
    return AppContext.for_processor(processor, "staging")


@pytest.mark.parametrize(("machine", "expected"), [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")])
def test_platform_is_the_hosts(monkeypatch: pytest.MonkeyPatch, machine: str, expected: str) -> None:
    monkeypatch.setattr(local._platform, "machine", lambda: machine)
    assert LocalTarget().platform == expected


def test_missing_client_is_err_docker(app: AppContext) -> None:
    target = LocalTarget(Docker("/nonexistent/docker"))
    for call in (target.status, target.stop, target.read_running_digests, target.endpoint):
        with pytest.raises(DockerUnavailableError) as info:
            call(app)
        assert info.value.code == "ERR_DOCKER"


def test_unreachable_daemon_is_err_docker(app: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    client = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else None
    if client is None:
        pytest.skip("no docker client installed")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerUnavailableError) as info:
        LocalTarget(Docker(client)).status(app)
    assert "not reachable" in info.value.message


def test_sync_without_an_engine_still_writes_the_store(
    app: AppContext, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_AUTH_SECRET")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    result = LocalTarget(Docker("/nonexistent/docker")).sync_secrets(app, check=False, fail_on_missing=True)
    # api.auth_secret counts as required.
    assert result["created"] == ["OPENAI_API_KEY", "THEORY_AUTH_SECRET"]
    assert result["missing"] == ["LITELLM_API_BASE"]
    assert "values apply at the next start" in result["summary"]
    assert (tmp_path / "state" / "secrets" / "staging" / "OPENAI_API_KEY").is_file()
    assert_no_canary(json.dumps(result), canaries)


def test_run_args_carry_names_not_values(app: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    canaries = make_canaries("OPENAI_API_KEY", "THEORY_AUTH_SECRET")
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    target = LocalTarget(Docker("/nonexistent/docker"))
    target.sync_secrets(app, check=False, fail_on_missing=True)
    image = ImageRef.parse_digest_ref(f"127.0.0.1:5000/unit/proc@{DIGEST}")
    plan = target._secret_plan(app, target._store(app))
    args, _config = target._run_args(app, image, plan)
    assert ["--env", "OPENAI_API_KEY"] == args[args.index("OPENAI_API_KEY") - 1 : args.index("OPENAI_API_KEY") + 1]
    assert f"IMAGE_DIGEST={DIGEST}" in args
    assert "127.0.0.1::8000" in args
    assert args[-1] == str(image)
    assert_no_canary(" ".join(args), canaries)
    # The endpoint's token comes from the store (api.auth_secret).
    plan_dict = target.start(app, image, dry_run=True)
    assert plan_dict["secrets"]["injected"] == ["OPENAI_API_KEY", "THEORY_AUTH_SECRET"]
    assert_no_canary(json.dumps(plan_dict), canaries)


def test_registry_auth_env_is_private_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    with registry_auth_env("127.0.0.1:5001") as env:
        assert "DOCKER_CONFIG" not in env  # no credentials: the user's own docker config

    password = make_canaries("REGISTRY_PASSWORD")["REGISTRY_PASSWORD"]
    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", password)
    with registry_auth_env("127.0.0.1:5001") as env:
        folder = Path(env["DOCKER_CONFIG"])
        config = folder / "config.json"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert list(json.loads(config.read_text())["auths"]) == ["127.0.0.1:5001"]
    assert not folder.exists()


def test_pull_never_puts_the_password_on_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password = make_canaries("REGISTRY_PASSWORD")["REGISTRY_PASSWORD"]
    monkeypatch.setenv("REGISTRY_USERNAME", "bot")
    monkeypatch.setenv("REGISTRY_PASSWORD", password)
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        config = Path(str(kwargs["env"]["DOCKER_CONFIG"])) / "config.json"  # type: ignore[index]
        assert config.is_file()
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(local.subprocess, "run", fake_run)
    LocalTarget(Docker("docker"))._pull(ImageRef.parse_digest_ref(f"127.0.0.1:5001/unit/proc@{DIGEST}"))
    assert seen == [["docker", "pull", f"127.0.0.1:5001/unit/proc@{DIGEST}"]]
    assert_no_canary(json.dumps(seen), [password])
