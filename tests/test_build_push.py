"""Build per-platform images with the real Docker engine, push them with our client, and check the
result independently with skopeo. Marked `docker`."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from theory_deploy import build, docker, oci, push, registry_file
from theory_deploy.cli import framework, processorctl
from theory_deploy.errors import DockerUnavailableError, ImageBuildError
from theory_deploy.oci import RegistryClient, RetryPolicy
from theory_deploy.refs import ProcessorRef, parse_repository

pytestmark = pytest.mark.docker

REGISTRY_YAML = """\
ref: demo/{name}@1
build:
  context: .
  platforms: [linux/amd64, linux/arm64]
image:
  repository: {repository}
  platforms:
    amd64: null
    arm64: null
inputs: {{type: object}}
"""


_made: list[str] = []


def make_processor(
    root: Path, name: str, repository: str, dockerfile: str, files: dict[str, str] | None = None
) -> Path:
    _made.append(name)
    folder = root / "processors" / "demo" / name
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(dockerfile)
    for rel, text in (files or {}).items():
        (folder / rel).write_text(text)
    path = folder / "registry.yaml"
    path.write_text(REGISTRY_YAML.format(name=name, repository=repository))
    return path


def skopeo(*args: str) -> dict:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, docker_cli: str) -> Iterator[Path]:
    monkeypatch.setenv("THEORY_DOCKER", docker_cli)
    monkeypatch.setenv("THEORY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("THEORY_REPO_ROOT", str(tmp_path / "repo"))
    monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", "0.05")
    (tmp_path / "repo").mkdir()
    yield tmp_path / "repo"
    # Drop the local tags this test built (the engine would otherwise collect one pair per run).
    tags = [f"theory-local/demo-{name}-v1:{arch}" for name in _made for arch in ("amd64", "arm64")]
    _made.clear()
    subprocess.run([docker_cli, "rmi", "-f", *tags], capture_output=True, timeout=120, check=False)


def test_build_push_two_platforms_verified_by_skopeo(env: Path, registry: str) -> None:
    name = f"tiny{uuid.uuid4().hex[:8]}"
    repository = f"{registry}/test/{name}"
    path = make_processor(
        env, name, repository, "FROM scratch\nCOPY hello.txt /hello.txt\n", {"hello.txt": f"hello {name}\n"}
    )
    loaded = registry_file.load_path(path, env)
    built = build.build_platform_images(loaded.spec, env, None, registry_path=path)
    assert set(built) == {"amd64", "arm64"}
    assert built["arm64"].local_tag == f"theory-local/demo-{name}-v1:arm64"

    with RegistryClient(registry, progress=lambda _m: None) as client:
        result = push.push_platform_images(built, parse_repository(repository), client, tag=f"demo-{name}-v1")
    assert result.uploaded_blobs == 3  # 2 configs + 1 layer: the COPY layer is the same bytes on both
    for arch, ref in result.platforms.items():
        assert str(ref).startswith(repository + "@sha256:")
        assert "theory-local" not in str(ref)
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
        assert raw["mediaType"] == oci.OCI_MANIFEST
        assert ref.digest != built[arch].image_id  # a manifest digest, never the config
        config = skopeo("inspect", "--config", "--tls-verify=false", f"docker://{ref}")
        assert (config["os"], config["architecture"]) == ("linux", arch)
        assert config["config"]["Labels"]["dev.theory.processor.ref"] == f"demo/{name}@1"
        assert config["config"]["Labels"]["org.opencontainers.image.title"] == f"demo-{name}-v1"
    index = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{result.index}")
    assert index["mediaType"] == oci.OCI_INDEX
    assert {(m["platform"]["architecture"], m["digest"]) for m in index["manifests"]} == {
        (arch, ref.digest) for arch, ref in result.platforms.items()
    }
    tagged = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{repository}:demo-{name}-v1")
    assert tagged == index

    # Warm: same image pushed again uploads nothing and gives the same digests.
    with RegistryClient(registry, progress=lambda _m: None) as client:
        again = push.push_platform_images(built, parse_repository(repository), client, tag=f"demo-{name}-v1")
        assert client.stats["blob_uploads"] == 0
    assert again.uploaded_blobs == 0
    assert again.to_json() == result.to_json()

    # A new repository in the same registry: every blob is mounted from the first one, none uploaded,
    # and the new repository really serves the image (skopeo reads its config there).
    mirror = parse_repository(f"{registry}/test/{name}-mirror")
    with RegistryClient(registry, progress=lambda _m: None) as client:
        mirrored = push.push_platform_images(built, mirror, client)
        assert client.stats["blob_uploads"] == 0 and client.stats["blob_mounts"] == 3
    assert (mirrored.uploaded_blobs, mirrored.mounted_blobs) == (0, 3)
    assert {a: r.digest for a, r in mirrored.platforms.items()} == {a: r.digest for a, r in result.platforms.items()}
    for arch, ref in mirrored.platforms.items():
        config = skopeo("inspect", "--config", "--tls-verify=false", f"docker://{ref}")
        assert config["architecture"] == arch

    # Cold (no cache, fresh repository): the deterministic gzip gives the very same digests.
    shutil.rmtree(Path(env).parent / "state")
    other = parse_repository(f"{registry}/test/{name}-copy")
    with RegistryClient(registry, progress=lambda _m: None) as client:
        copy = push.push_platform_images(built, other, client)
    assert copy.uploaded_blobs == 3
    assert {a: r.digest for a, r in copy.platforms.items()} == {a: r.digest for a, r in result.platforms.items()}
    assert copy.index.digest == result.index.digest


def test_publish_cli_then_rerun_pins_nothing_new(env: Path, registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"pub{uuid.uuid4().hex[:8]}"
    repository = f"{registry}/test/{name}"
    path = make_processor(
        env,
        name,
        repository,
        "FROM scratch\nARG GREETING=hi\nCOPY hello.txt /hello.txt\nLABEL greeting=$GREETING\n",
        {"hello.txt": "hello\n"},
    )
    argv = ["publish", "--ref", f"demo/{name}@1", "--build-arg", "GREETING=hey", "--json"]
    assert framework.run_tool(processorctl.parser(), argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["changed"]) == ["amd64", "arm64"]
    text = path.read_text()
    for arch in ("amd64", "arm64"):
        assert f"{arch}: {out['platforms'][arch]}" in text

    assert framework.run_tool(processorctl.parser(), argv) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["changed"] == []
    assert again["uploaded_blobs"] == 0
    assert again["platforms"] == out["platforms"]
    assert path.read_text() == text

    # push --json output feeds pin --from-push
    assert framework.run_tool(processorctl.parser(), ["push", "--ref", f"demo/{name}@1", "--json"]) == 0
    pushed = capsys.readouterr().out
    assert json.loads(pushed)["platforms"] == out["platforms"]
    push_file = env / "push.json"
    push_file.write_text(pushed)
    assert (
        framework.run_tool(
            processorctl.parser(), ["pin", "--ref", f"demo/{name}@1", "--from-push", str(push_file), "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["changed"] == []


def test_push_without_a_build_says_build_first(env: Path, registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"nobuild{uuid.uuid4().hex[:8]}"
    make_processor(env, name, f"{registry}/test/{name}", "FROM scratch\n")
    code = framework.run_tool(processorctl.parser(), ["push", "--ref", f"demo/{name}@1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == ImageBuildError.exit_code
    assert "processorctl build" in out["error"]["message"]


def test_build_failure_shows_the_log_tail(env: Path, registry: str) -> None:
    name = f"broken{uuid.uuid4().hex[:8]}"
    path = make_processor(env, name, f"{registry}/test/{name}", "FROM scratch\nCOPY does-not-exist.txt /x\n")
    loaded = registry_file.load_path(path, env)
    with pytest.raises(ImageBuildError) as info:
        build.build_platform_images(loaded.spec, env, ["amd64"], registry_path=path)
    assert "does-not-exist.txt" in info.value.message
    assert "linux/amd64 failed" in info.value.message


def test_build_command_flags(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    builder = docker.Builder("/usr/bin/docker", "buildkit")
    cmd = build.build_command(
        builder,
        platform="arm64",
        context=tmp_path,
        dockerfile=tmp_path / "Dockerfile",
        tag="theory-local/x-v1:arm64",
        iidfile=tmp_path / "iid",
        labels={"a": "b"},
        build_args={"K": "V"},
        pull=True,
        ca=ca,
    )
    assert cmd[:2] == ["/usr/bin/docker", "build"]
    assert ["--platform", "linux/arm64"] == cmd[cmd.index("--platform") : cmd.index("--platform") + 2]
    assert "--pull" in cmd and f"id=ca_bundle,src={ca}" in cmd and "K=V" in cmd and "a=b" in cmd
    assert builder.env()["DOCKER_BUILDKIT"] == "1"
    bx = build.build_command(
        docker.Builder("docker", "buildx"),
        platform="amd64",
        context=tmp_path,
        dockerfile=tmp_path / "Dockerfile",
        tag="t",
        iidfile=tmp_path / "iid",
        labels={},
        build_args={},
        pull=False,
        ca=None,
    )
    assert bx[:4] == ["docker", "buildx", "build", "--load"] and "--provenance=false" in bx and "--pull" not in bx


def test_a_new_client_without_buildx_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    new_client = "/usr/local/bin/docker"
    if (
        not Path(new_client).exists()
        or subprocess.run([new_client, "buildx", "version"], capture_output=True).returncode == 0
    ):
        pytest.skip("needs a docker client >= 23 without buildx at /usr/local/bin/docker")
    monkeypatch.setenv("THEORY_DOCKER", new_client)
    with pytest.raises(DockerUnavailableError, match="no buildx plugin"):
        docker.find_builder()


@pytest.mark.slow
def test_python_base_arm64_runs_under_qemu(env: Path, registry: str, base_image: str, docker_cli: str) -> None:
    name = f"py{uuid.uuid4().hex[:8]}"
    dockerfile = (
        "ARG BASE_IMAGE\n"
        "FROM ${BASE_IMAGE}\n"
        "RUN --mount=type=secret,id=ca_bundle test -s /run/secrets/ca_bundle\n"
        "RUN uname -m > /built-on && python3 -c 'import platform; print(platform.machine())' > /py-machine\n"
    )
    path = make_processor(env, name, f"{registry}/test/{name}", dockerfile)
    loaded = registry_file.load_path(path, env)
    built = build.build_platform_images(loaded.spec, env, None, {"BASE_IMAGE": base_image}, registry_path=path)
    run = subprocess.run(
        [
            docker_cli,
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            built["arm64"].local_tag,
            "sh",
            "-c",
            "cat /built-on /py-machine; uname -m",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["aarch64", "aarch64", "aarch64"]
    amd = subprocess.run(
        [docker_cli, "run", "--rm", built["amd64"].local_tag, "cat", "/built-on"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert amd.stdout.strip() == "x86_64"
    with RegistryClient(registry, retry=RetryPolicy(base_delay=0.05), progress=lambda _m: None) as client:
        result = push.push_platform_images(built, parse_repository(f"{registry}/test/{name}"), client)
        for arch, ref in result.platforms.items():
            assert client.resolve_platform(ref.path, ref.digest, arch).manifest_digest == ref.digest
    assert ProcessorRef.parse(loaded.spec.ref).slug == f"demo-{name}-v1"


def _build_with_stderr(env: Path, registry: str, *, tty: bool) -> str:
    """Run `processorctl build` for a tiny processor with stderr on a pseudo-terminal (or a pipe)."""
    import os
    import pty
    import select
    import sys

    name = f"tty{uuid.uuid4().hex[:8]}"
    make_processor(env, name, f"{registry}/test/{name}", "FROM scratch\nCOPY a.txt /a.txt\n", {"a.txt": name})
    cmd = [
        str(Path(sys.executable).parent / "processorctl"),
        "build",
        "--ref",
        f"demo/{name}@1",
        "--platforms",
        "linux/amd64",
    ]
    if not tty:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy()).stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, env=os.environ.copy())
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_sees_the_live_build_step_and_a_pipe_does_not(env: Path, registry: str) -> None:
    on_tty = _build_with_stderr(env, registry, tty=True)
    assert "\r\x1b[K" in on_tty  # the live line was drawn and cleared
    assert "linux/amd64: [" in on_tty and "COPY a.txt /a.txt" in on_tty
    piped = _build_with_stderr(env, registry, tty=False)
    assert "\x1b[K" not in piped and "COPY a.txt" not in piped
    assert "built theory-local/demo-" in piped
