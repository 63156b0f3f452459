"""The local services themselves: loopback registries, the Docker engine, the multi-arch base image."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import AuthRegistry, assert_no_canary, find_canaries, make_canaries

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
INDEX_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)


def _split(ref: str) -> tuple[str, str, str]:
    """`host:port/name@sha256:x` or `host:port/name:tag` -> (host, name, reference)."""
    host, _, rest = ref.partition("/")
    if "@" in rest:
        name, _, reference = rest.partition("@")
    else:
        name, _, reference = rest.rpartition(":")
    return host, name, reference


def _get_manifest(client: httpx.Client, host: str, name: str, reference: str) -> tuple[str, dict]:
    r = client.get(f"http://{host}/v2/{name}/manifests/{reference}", headers={"Accept": ACCEPT})
    r.raise_for_status()
    digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
    assert r.headers["Docker-Content-Digest"] == digest
    return digest, r.json()


def _build(docker_cli: str, ctx: Path, tag: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    return subprocess.run(
        [docker_cli, "build", *args, "-t", tag, str(ctx)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


# ------------------------------------------------------------------------------------------------
# No engine needed


def test_assert_no_canary_catches_raw_hex_and_base64_leaks() -> None:
    canaries = make_canaries("A", "B")
    assert all(v.startswith("canary-") and len(v) == 39 for v in canaries.values())
    assert canaries["A"] != canaries["B"]
    assert_no_canary("nothing to see; names like A and B are fine", canaries)
    assert_no_canary(None, canaries)
    for leak in (
        f"token={canaries['A']}",
        canaries["A"].removeprefix("canary-").encode(),
        __import__("base64").b64encode(canaries["A"].encode()).decode(),
    ):
        with pytest.raises(AssertionError, match="A") as exc:
            assert_no_canary(leak, canaries)
        assert canaries["A"] not in str(exc.value)  # the message names, never repeats, the value
    assert find_canaries(canaries["B"], canaries.values()) == [canaries["B"]]


def test_canary_secrets_fixture_is_fresh(canary_secrets: dict[str, str]) -> None:
    assert "REGISTRY_PASSWORD" in canary_secrets
    assert len(set(canary_secrets.values())) == len(canary_secrets)


# ------------------------------------------------------------------------------------------------
# Real engine + registries


@pytest.mark.docker
def test_push_tiny_image_to_loopback_registry(docker_cli: str, registry: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    (tmp_path / "hello.txt").write_text(marker)
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    tag = f"{registry}/theory/infra-test:{marker[:12]}"
    res = _build(docker_cli, tmp_path, tag, "--platform", "linux/amd64")
    assert res.returncode == 0, res.stderr[-2000:]
    try:
        push = subprocess.run([docker_cli, "push", tag], capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stderr[-2000:]
    finally:
        subprocess.run([docker_cli, "rmi", "-f", tag], capture_output=True, timeout=120)
    host, name, reference = _split(tag)
    with httpx.Client(timeout=30) as client:
        digest, manifest = _get_manifest(client, host, name, reference)
        assert manifest["mediaType"] in MANIFEST_TYPES
        assert digest in push.stdout  # what docker reported is what the registry serves
        cfg = client.get(f"http://{host}/v2/{name}/blobs/{manifest['config']['digest']}")
        cfg.raise_for_status()
        config = cfg.json()
        assert (config["os"], config["architecture"]) == ("linux", "amd64")
        # The one layer holds our file.
        (layer,) = manifest["layers"]
        blob = client.get(f"http://{host}/v2/{name}/blobs/{layer['digest']}")
        assert blob.status_code == 200
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer["digest"]


@pytest.mark.docker
def test_auth_registry_needs_the_generated_password(
    auth_registry: AuthRegistry, docker_cli: str, tmp_path: Path
) -> None:
    host, user, password = auth_registry
    with httpx.Client(timeout=10) as client:
        assert client.get(f"http://{host}/v2/").status_code == 401
        assert client.get(f"http://{host}/v2/", auth=(user, password + "x")).status_code == 401
        assert client.get(f"http://{host}/v2/", auth=(user, password)).status_code == 200
    # docker login with a throwaway config dir: the password goes through stdin, never argv.
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    login = subprocess.run(
        [docker_cli, "login", host, "-u", user, "--password-stdin"],
        input=password,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    assert_no_canary(login.stdout + login.stderr, [password])


@pytest.mark.docker
def test_base_image_index_lists_amd64_and_arm64(base_image: str) -> None:
    host, name, reference = _split(base_image)
    assert reference.startswith("sha256:") and len(reference) == 71
    with httpx.Client(timeout=30) as client:
        digest, index = _get_manifest(client, host, name, reference)
        assert digest == reference
        assert index["mediaType"] in INDEX_TYPES
        platforms = {}
        for entry in index["manifests"]:
            p = entry["platform"]
            platforms[f"{p['os']}/{p['architecture']}"] = entry["digest"]
            child_digest, child = _get_manifest(client, host, name, entry["digest"])
            assert child_digest == entry["digest"]
            assert child["mediaType"] in MANIFEST_TYPES
        assert {"linux/amd64", "linux/arm64"} <= set(platforms)
    if shutil.which("skopeo"):
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{base_image}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert raw.returncode == 0, raw.stderr
        assert {m["digest"] for m in json.loads(raw.stdout)["manifests"]} == set(platforms.values())


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize(("platform", "machine"), [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")])
def test_base_image_runs_python_on_each_platform(
    docker_cli: str, base_image: str, platform: str, machine: str, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
        'RUN echo "machine=$(uname -m)" && python --version && python3 -m venv /tmp/v '
        "&& /tmp/v/bin/python -c 'import ssl, venv; print(\"venv-ok\")'\n"
    )
    tag = f"theory-infra-test:{uuid.uuid4().hex[:12]}"
    res = _build(
        docker_cli,
        tmp_path,
        tag,
        "--pull",
        "--platform",
        platform,
        "--progress",
        "plain",
        "--no-cache",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
    )
    subprocess.run([docker_cli, "rmi", "-f", tag], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert f"machine={machine}" in out
    assert "venv-ok" in out
