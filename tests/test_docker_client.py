"""One docker client for build, push and the local target (theory_deploy.docker), chosen among fake
clients: a new one without buildx and an old one that uses the engine's BuildKit. No engine needed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from theory_deploy import docker
from theory_deploy.errors import DockerUnavailableError
from theory_deploy.targets.local import LocalTarget

FAKE_CLIENT = """#!/bin/sh
case "$1 $2" in
  "buildx version") echo "docker: unknown command: docker buildx" >&2; exit 1 ;;
  "version --format") echo "{version}" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def _fake(folder: Path, name: str, version: str) -> str:
    path = folder / name
    path.write_text(FAKE_CLIENT.format(version=version))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.delenv("THEORY_DOCKER", raising=False)
    monkeypatch.delenv("DOCKER", raising=False)
    monkeypatch.setattr(docker, "_build_modes", {})
    return _fake(tmp_path, "docker-28", "28.2.2"), _fake(tmp_path, "docker-20", "20.10.24")


def test_build_push_and_local_agree_on_the_client_that_can_build(
    clients: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = clients
    monkeypatch.setattr(docker, "client_candidates", lambda: [new, old])
    assert docker.find_builder() == docker.Builder(old, "buildkit")
    assert docker.docker_client() == old
    assert LocalTarget().docker.binary == old


def test_a_named_client_is_used_even_when_it_cannot_build(
    clients: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new, _old = clients
    monkeypatch.setenv("THEORY_DOCKER", new)
    assert docker.client_candidates() == [new]
    assert docker.docker_client() == new
    assert LocalTarget().docker.binary == new
    with pytest.raises(DockerUnavailableError, match="no buildx plugin") as info:
        docker.find_builder()
    assert info.value.code == "ERR_DOCKER"


def test_no_client_at_all_is_err_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(docker, "client_candidates", list)
    monkeypatch.setenv("PATH", str(tmp_path))
    for call in (docker.docker_client, docker.find_builder):
        with pytest.raises(DockerUnavailableError, match="no docker client found"):
            call()
    with pytest.raises(DockerUnavailableError, match="no docker client at 'docker'"):
        docker.Docker().run(["version"])
