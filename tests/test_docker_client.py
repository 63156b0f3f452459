"""One docker client for build, push and the local target (theory_deploy.docker), chosen the way a user
steers it: by PATH, THEORY_DOCKER and DOCKER. The clients are stand-ins (tests/fake_docker.py): a new
one without buildx, an old one that uses the engine's BuildKit, one with buildx. No engine needed, and
no product function is replaced: each test sets the environment and asks the product.

This host's own clients (/usr/bin/docker, /usr/local/bin/docker) are always candidates after PATH's;
where a test's outcome depends on them, it asks those clients itself what they can do.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.fake_docker import FakeDocker
from theory_deploy import docker
from theory_deploy.errors import DockerUnavailableError
from theory_deploy.targets.local import LocalTarget

SYSTEM_CLIENTS = ("/usr/bin/docker", "/usr/local/bin/docker")


@pytest.fixture(autouse=True)
def _no_named_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THEORY_DOCKER", raising=False)
    monkeypatch.delenv("DOCKER", raising=False)


def on_path(monkeypatch: pytest.MonkeyPatch, client: FakeDocker) -> None:
    """PATH holds only the stand-in's folder (so `docker` on PATH is the stand-in)."""
    monkeypatch.setenv("PATH", str(client.folder))


def system_clients() -> list[str]:
    return [c for c in SYSTEM_CLIENTS if os.path.exists(c)]


def can_build(client: str) -> bool:
    """Asked of the client itself, as the module docstring of theory_deploy.docker says: buildx, or a
    client older than 23 (which builds with DOCKER_BUILDKIT=1)."""
    run = {"capture_output": True, "text": True, "timeout": 30, "stdin": subprocess.DEVNULL}
    if subprocess.run([client, "buildx", "version"], **run).returncode == 0:  # type: ignore[call-overload]
        return True
    version = subprocess.run([client, "version", "--format", "{{.Client.Version}}"], **run).stdout  # type: ignore[call-overload]
    match = re.match(r"(\d+)\.", version.strip())
    return bool(match) and int(match.group(1)) < 23


def test_a_client_on_path_that_can_build_is_the_one_build_push_and_local_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = FakeDocker(tmp_path / "old", version="20.10.24")  # no buildx, but older than 23
    on_path(monkeypatch, old)
    assert docker.client_candidates() == [str(old.path), *system_clients()]  # PATH's first
    assert docker.find_builder() == docker.Builder(str(old.path), "buildkit")
    assert docker.docker_client() == str(old.path)
    assert LocalTarget().docker.binary == str(old.path)
    assert "buildx version" in old.calls() and any(c.startswith("version --format") for c in old.calls())
    assert docker.Builder(str(old.path), "buildkit").env()["DOCKER_BUILDKIT"] == "1"


def test_a_client_with_buildx_builds_with_buildx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new = FakeDocker(tmp_path / "buildx", version="28.2.2", buildx=True)
    on_path(monkeypatch, new)
    assert docker.find_builder() == docker.Builder(str(new.path), "buildx")
    assert docker.docker_client() == LocalTarget().docker.binary == str(new.path)


def test_a_client_on_path_that_cannot_build_is_passed_over_for_one_that_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client 23+ without buildx first on PATH: build, push and local all use the first candidate
    after it that can build (this host's), or, when none can, that first candidate."""
    new = FakeDocker(tmp_path / "new", version="28.2.2")
    on_path(monkeypatch, new)
    others = system_clients()
    assert docker.client_candidates() == [str(new.path), *others]
    builders = [c for c in others if can_build(c)]
    expected = builders[0] if builders else str(new.path)
    assert docker.docker_client() == expected
    assert LocalTarget().docker.binary == expected
    assert "buildx version" in new.calls()  # it was asked, and refused
    if not builders:
        with pytest.raises(DockerUnavailableError, match="no buildx plugin"):
            docker.find_builder()


@pytest.mark.parametrize("variable", ["THEORY_DOCKER", "DOCKER"])
def test_a_named_client_is_used_even_when_it_cannot_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    new = FakeDocker(tmp_path / "new", version="28.2.2")
    old = FakeDocker(tmp_path / "old", version="20.10.24")
    on_path(monkeypatch, old)  # one that could build is on PATH: the named one wins all the same
    monkeypatch.setenv(variable, str(new.path))
    assert docker.client_candidates() == [str(new.path)]
    assert docker.docker_client() == str(new.path)
    assert LocalTarget().docker.binary == str(new.path)
    with pytest.raises(DockerUnavailableError, match="no buildx plugin") as info:
        docker.find_builder()
    assert info.value.code == "ERR_DOCKER"
    assert str(new.path) in info.value.message and "client 28" in info.value.message
    assert old.calls() == []  # never asked


def test_theory_docker_wins_over_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = FakeDocker(tmp_path / "first", version="20.10.24")
    second = FakeDocker(tmp_path / "second", version="20.10.24")
    monkeypatch.setenv("THEORY_DOCKER", str(first.path))
    monkeypatch.setenv("DOCKER", str(second.path))
    assert docker.client_candidates() == [str(first.path)]
    assert docker.find_builder().client == str(first.path)


def test_a_named_client_that_does_not_exist_is_err_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "nowhere" / "docker")
    monkeypatch.setenv("THEORY_DOCKER", missing)
    assert docker.client_candidates() == [missing]
    with pytest.raises(DockerUnavailableError) as info:
        docker.find_builder()
    assert info.value.code == "ERR_DOCKER" and missing in info.value.message
    with pytest.raises(DockerUnavailableError, match=f"no docker client at '{missing}'"):
        docker.Docker().run(["version"])
    with pytest.raises(DockerUnavailableError, match="no docker client at"):
        LocalTarget().docker.inspect_container("anything")


def test_an_engine_that_does_not_answer_is_err_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    down = FakeDocker(tmp_path / "down", version="20.10.24", engine=False)
    monkeypatch.setenv("THEORY_DOCKER", str(down.path))
    with pytest.raises(DockerUnavailableError, match="cannot reach a Docker engine"):
        docker.find_builder()
    with pytest.raises(DockerUnavailableError, match="not reachable") as info:
        LocalTarget().docker.inspect_container("anything")
    assert info.value.code == "ERR_DOCKER"


def test_nothing_named_and_nothing_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only this host's own clients are left; with none installed, every docker call is ERR_DOCKER."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    others = system_clients()
    assert docker.client_candidates() == others
    if others:
        assert docker.docker_client() in others
        return
    for call in (docker.docker_client, docker.find_builder):
        with pytest.raises(DockerUnavailableError, match="no docker client found"):
            call()
    with pytest.raises(DockerUnavailableError, match="no docker client at 'docker'"):
        docker.Docker().run(["version"])
