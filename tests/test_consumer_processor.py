"""A processor in a user's own repository builds and runs with the runtime, without theory-deploy's tree.

The consumer repository is made in a temporary folder outside this checkout: `git init`, then
processors/acme/<name>/ from the processor template (theory_deploy.templates, placeholders replaced
as `theory-deploy init` does). Everything then goes through the real CLIs, run from inside that
repository: `processorctl validate`, `build`, `push` (to the loopback registry), `pin`, `build` again,
`localctl start`, `/healthz`, `run --mode mock` and `--mode real`. The runtime reaches the build only
as the BuildKit secret `theory_runtime` with its sha256 (theory_deploy.runtime_bundle); a bundle
that does not match the sha256, or no bundle at all, fails the build with a message that says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from theory_deploy import build, runtime_bundle, templates
from theory_deploy.cli import framework, processorctl

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAMESPACE = "acme"
HUMAN = ["-c", "user.name=Con Sumer", "-c", "user.email=consumer@example.com"]


def _git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def make_consumer_repo(root: Path, name: str, repository: str) -> Path:
    """A git repository holding only processors/acme/<name>/ from the template; returns that folder."""
    folder = root / "processors" / NAMESPACE / name
    folder.mkdir(parents=True)
    for rel, text in templates.render_processor_template(namespace=NAMESPACE, name=name, repository=repository).items():
        (folder / rel).write_text(text)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, *HUMAN, "commit", "-q", "-m", "processor from the theory-deploy template")
    return folder


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("THEORY_REPO_ROOT", "THEORY_RUNTIME_CACHE_DIR", "ECHO_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def _cli(
    tool: str, *args: str, cwd: Path, env: dict[str, str], timeout: float = 300
) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [str(BIN / tool), *args, "--json"], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {}
    return proc.returncode, out, proc.stderr


# ---------------------------------------------------------------------------------------------------
# Fast: the template itself
# ---------------------------------------------------------------------------------------------------


def test_the_template_renders_every_placeholder() -> None:
    raw = templates.processor_template_files()
    assert set(raw) == {
        "registry.yaml",
        "Dockerfile",
        "Dockerfile.dockerignore",
        "requirements.txt",
        "app.py",
        "handler.py",
    }
    assert "ref: {{namespace}}/{{name}}@1" in raw["registry.yaml"] and "{{repository}}" in raw["registry.yaml"]
    rendered = templates.render_processor_template(namespace="acme", name="echo", repository="ghcr.io/acme/acme-echo")
    assert not [rel for rel, text in rendered.items() if "{{" in text]
    assert "ref: acme/echo@1\n" in rendered["registry.yaml"]
    assert "repository: ghcr.io/acme/acme-echo\n" in rendered["registry.yaml"]
    # The runtime comes from the build, never from the context; every property the sample keeps.
    dockerfile = rendered["Dockerfile"]
    assert "COPY runtime" not in dockerfile and "--mount=type=secret,id=theory_runtime" in dockerfile
    assert "ARG THEORY_RUNTIME_SHA256" in dockerfile and "sha256sum -c" in dockerfile
    assert "FROM deps AS spec" in dockerfile and "theory_runtime.spec export" in dockerfile
    assert "COPY --from=spec /spec/processor.json /app/processor.json" in dockerfile
    assert "--mount=type=secret,id=ca_bundle" in dockerfile
    assert "HEALTHCHECK" in dockerfile and 'CMD ["uvicorn", "app:app"' in dockerfile
    final_stage = dockerfile.rsplit("\nFROM deps\n", 1)[1]
    assert "registry.yaml" not in final_stage.replace("never registry.yaml", "")
    # requirements: exact pins, the very versions the sample processor pins.
    sample = {
        line.split("==")[0].lower(): line
        for line in (REPO / "processors/llm/litellm/requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    pins = [line for line in rendered["requirements.txt"].splitlines() if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    for line in pins:
        assert sample[line.split("==")[0].lower()] == line
    names = {line.split("==")[0].lower() for line in pins}
    assert {"fastapi", "uvicorn", "websockets", "jsonschema", "pyyaml", "starlette", "pydantic"} <= names


@pytest.mark.slow  # the CLI and a FastAPI app in subprocesses
def test_the_rendered_template_validates_and_serves_both_modes_in_process(tmp_path: Path) -> None:
    root = tmp_path / "consumer"
    folder = make_consumer_repo(root, "echo", "ghcr.io/acme/acme-echo")
    code, out, err = _cli("processorctl", "validate", cwd=folder, env=_clean_env())
    assert code == 0 and out["status"] == "success", err

    # app.py as uvicorn would load it, from the processor folder (registry.yaml read directly).
    script = (
        "import json\n"
        "from fastapi.testclient import TestClient\n"
        "import app\n"
        "c = TestClient(app.app)\n"
        "out = {'health': c.get('/healthz').json()}\n"
        "for mode in ('mock', 'real'):\n"
        "    out[mode] = c.post('/invoke', json={'mode': mode, 'inputs': {'text': 'hello  there'}}).json()\n"
        "out['bad'] = c.post('/invoke', json={'mode': 'mock', 'inputs': {'txt': 1}}).json()\n"
        "print(json.dumps(out))\n"
    )
    runtime = str(REPO / "runtime")
    env = _clean_env(PYTHONPATH=runtime, ECHO_API_KEY="k-" + uuid.uuid4().hex)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["health"]["ok"] is True and out["health"]["ref"] == "acme/echo@1"
    assert out["mock"]["status"] == "success"
    assert out["mock"]["outputs"] == {"text": "HELLO  THERE", "words": 2, "mode": "mock"}
    assert out["real"]["outputs"] == {"text": "HELLO  THERE", "words": 2, "mode": "real", "authenticated": True}
    assert out["bad"]["status"] == "error" and out["bad"]["error"]["code"] == "ERR_INPUTS"
    assert env["ECHO_API_KEY"] not in proc.stdout + proc.stderr


def test_processorctl_build_refuses_the_runtime_build_args(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_consumer_repo(tmp_path / "consumer", "echo", "ghcr.io/acme/acme-echo")
    monkeypatch.delenv("THEORY_REPO_ROOT", raising=False)
    monkeypatch.setenv("THEORY_DOCKER", "/nonexistent")  # refused before any docker call
    monkeypatch.chdir(folder)
    for arg in (f"THEORY_RUNTIME_SHA256={'0' * 64}", "THEORY_RUNTIME_VERSION=9"):
        argv = ["build", "--ref", "acme/echo@1", "--platforms", "linux/amd64", "--build-arg", arg, "--json"]
        assert framework.run_tool(processorctl.parser(), argv) == 2
        error = json.loads(capsys.readouterr().out)["error"]
        assert error["code"] == "ERR_USAGE" and arg.split("=")[0] in error["message"]
        assert "set by processorctl build itself" in error["message"]


# ---------------------------------------------------------------------------------------------------
# Docker: build, push, pin, run
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def consumer(
    tmp_path_factory: pytest.TempPathFactory, registry: str, base_image: str, docker_cli: str, shared_blob_cache: str
) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("consumer")
    root = base / "acme-processors"
    assert REPO.resolve() not in root.resolve().parents
    name = f"echo{uuid.uuid4().hex[:8]}"
    repository = f"{registry}/consumer-test/{NAMESPACE}-{name}"
    folder = make_consumer_repo(root, name, repository)
    env = _clean_env(
        THEORY_STATE_DIR=str(base / "state"),
        THEORY_BLOB_CACHE_DIR=shared_blob_cache,
        THEORY_DOCKER=docker_cli,
        GIT_BRANCH=f"consumer-{uuid.uuid4().hex[:6]}",
        GIT_USER="tester",
        THEORY_LOCAL_START_TIMEOUT="180",
    )
    ref = f"{NAMESPACE}/{name}@1"
    slug = f"{NAMESPACE}-{name}-v1"
    made: dict[str, Any] = {"root": root, "folder": folder, "env": env, "ref": ref, "base": base}
    made.update(slug=slug, repository=repository, base_image=base_image, docker=docker_cli, images=[])
    yield made
    tags = [build.local_tag(slug, arch) for arch in ("amd64", "arm64")]
    subprocess.run([docker_cli, "rmi", "-f", *tags, *made["images"]], capture_output=True, timeout=120)


def _host_platform() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64")


@pytest.mark.slow
def test_a_template_processor_builds_pushes_and_runs_from_its_own_repository(consumer: dict[str, Any]) -> None:
    folder: Path = consumer["folder"]
    env: dict[str, str] = consumer["env"]
    ref, docker_cli, platform = consumer["ref"], consumer["docker"], _host_platform()
    target = ["--ref", ref, "--env", "dev"]

    # build, from a folder inside the consumer repository: nothing of theory-deploy's tree is in the context.
    build_args = ["--platforms", f"linux/{platform}", "--build-arg", f"BASE_IMAGE={consumer['base_image']}"]
    code, built, err = _cli("processorctl", "build", "--ref", ref, *build_args, cwd=folder, env=env, timeout=1800)
    assert code == 0, err[-3000:]
    image_id = built["images"][platform]["image_id"]
    consumer["images"].append(image_id)
    assert "runtime: theory_runtime" in err and "bundle sha256" in err

    # The bundle went through the state folder's cache, named by its sha256, the same bytes as one made here.
    here = runtime_bundle.ensure_bundle(cache_dir=consumer["base"] / "probe", progress=lambda _m: None)
    cached = consumer["base"] / "state" / "runtime" / f"{here.sha256}.tar.gz"
    assert cached.read_bytes() == here.path.read_bytes()

    # What the image holds: the runtime in the venv's site-packages (exactly the bundle's files, compiled),
    # processor.json without pins, the app, and no registry.yaml.
    probe = (
        "import json, os, theory_runtime, sysconfig\n"
        "d = os.path.dirname(theory_runtime.__file__)\n"
        "files = sorted('theory_runtime/' + f for f in os.listdir(d) if f != '__pycache__')\n"
        "print(json.dumps({'dir': d, 'purelib': sysconfig.get_path('purelib'), 'files': files,\n"
        "  'version': theory_runtime.__version__, 'pyc': len(os.listdir(os.path.join(d, '__pycache__'))),\n"
        "  'app': sorted(os.listdir('/app')), 'spec': json.load(open('/app/processor.json'))}))\n"
    )
    proc = subprocess.run(
        [docker_cli, "run", "--rm", "--entrypoint", "python3", image_id, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["dir"] == os.path.join(seen["purelib"], "theory_runtime") and seen["dir"].startswith("/opt/venv/")
    with __import__("tarfile").open(here.path, mode="r:gz") as tar:
        assert seen["files"] == [m.name for m in tar.getmembers() if m.isfile()]
    assert seen["version"] == here.version and seen["pyc"] > 0
    assert seen["app"] == ["app.py", "handler.py", "processor.json", "requirements.txt"]
    assert "image" not in seen["spec"] and "build" not in seen["spec"] and seen["spec"]["ref"] == ref

    # push to the loopback registry (by digest, plus an index), then pin into the consumer's registry.yaml.
    code, pushed, err = _cli(
        "processorctl", "push", "--ref", ref, "--platforms", f"linux/{platform}", cwd=folder, env=env
    )
    assert code == 0, err[-3000:]
    push_file = consumer["base"] / "push.json"
    push_file.write_text(json.dumps(pushed))
    code, pinned, err = _cli("processorctl", "pin", "--ref", ref, "--from-push", str(push_file), cwd=folder, env=env)
    assert code == 0 and pinned["changed"] == [platform], err[-3000:]
    pin = (folder / "registry.yaml").read_text().split(f"{platform}: ", 1)[1].split()[0]
    assert pin == pushed["platforms"][platform] and pin.startswith(consumer["repository"] + "@sha256:")
    digest = pin.split("@", 1)[1]

    # A pin-only change to registry.yaml gives the same image (no pin loop), here as in theory-deploy's tree.
    code, rebuilt, err = _cli("processorctl", "build", "--ref", ref, *build_args, cwd=folder, env=env, timeout=1800)
    assert code == 0, err[-3000:]
    assert rebuilt["images"][platform]["image_id"] == image_id

    # The local target runs the pin; /healthz answers; a mock run returns the expected envelope.
    code, named, err = _cli("localctl", "name", *target, cwd=folder, env=env)
    assert code == 0, err
    app = named["app"]
    try:
        code, started, err = _cli("localctl", "start", *target, cwd=folder, env=env)
        assert code == 0, err[-3000:]
        assert started["digest"] == digest and started["secrets"]["pending"] == []
        health = httpx.get(started["url"] + "/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json() == {"ok": True, "ref": ref, "digest": digest, "protocol": "theory.run.v1"}

        inputs = json.dumps({"text": "hello from a consumer"})
        code, ran, err = _cli(
            "localctl",
            "run",
            *target,
            "--mode",
            "mock",
            "--inputs-json",
            inputs,
            "--timeout",
            "60",
            cwd=folder,
            env=env,
        )
        assert code == 0, err[-3000:]
        envelope = ran["envelope"]
        assert envelope["status"] == "success"
        assert envelope["outputs"] == {"text": "HELLO FROM A CONSUMER", "words": 4, "mode": "mock"}
        assert envelope["meta"]["image_digest"] == digest and envelope["meta"]["ref"] == ref

        # real mode needs no network either; the optional secret is not set, and says so.
        example = json.dumps({"text": f"Hello from {ref.split('@')[0]}.", "uppercase": True})
        code, real, err = _cli(
            "localctl",
            "run",
            *target,
            "--mode",
            "real",
            "--inputs-json",
            example,
            "--timeout",
            "60",
            cwd=folder,
            env=env,
        )
        assert code == 0, err[-3000:]
        assert real["envelope"]["outputs"] == {
            "text": f"HELLO FROM {ref.split('@')[0].upper()}.",
            "words": 3,
            "mode": "real",
            "authenticated": False,
        }
        code, verified, err = _cli("localctl", "verify-digest", *target, cwd=folder, env=env)
        assert code == 0 and verified["verified"] is True, err[-3000:]
        code, stopped, err = _cli("localctl", "stop", *target, cwd=folder, env=env)
        assert code == 0 and stopped["action"] == "stopped", err
    finally:
        subprocess.run([docker_cli, "rm", "-f", f"{app}.dev"], capture_output=True, timeout=60)


def _docker_build(consumer: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    """`docker build` of the consumer's processor folder, as processorctl would run it, with `flags`."""
    folder: Path = consumer["folder"]
    cmd = [consumer["docker"], "build", "--platform", f"linux/{_host_platform()}", "--progress", "plain"]
    cmd += ["--build-arg", f"BASE_IMAGE={consumer['base_image']}", *flags, str(folder)]
    ca = build.ca_bundle()
    if ca is not None:
        cmd[2:2] = ["--secret", f"id=ca_bundle,src={ca}"]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_a_bundle_that_does_not_match_its_sha256_fails_the_build_and_a_new_one_is_installed(
    consumer: dict[str, Any], tmp_path: Path
) -> None:
    bundle = runtime_bundle.ensure_bundle(cache_dir=tmp_path / "cache", progress=lambda _m: None)
    wrong = "0" * 64
    # The right bundle with another sha256 (as a stale cache entry or a tampered file would be).
    res = _docker_build(consumer, "--secret", bundle.secret_spec(), "--build-arg", f"THEORY_RUNTIME_SHA256={wrong}")
    log = res.stdout + res.stderr
    assert res.returncode != 0, log[-3000:]
    assert f"does not hash to THEORY_RUNTIME_SHA256={wrong}: refusing it" in log, log[-3000:]

    # A tampered file under the sha256 of a real bundle (one of a changed runtime, never built here: a sha256
    # BuildKit has already cached was verified when its layer was made, so that hit would be legitimate).
    changed = tmp_path / "src" / "theory_runtime"
    shutil.copytree(bundle.source, changed, ignore=shutil.ignore_patterns("__pycache__"))
    marker = f"# changed runtime {uuid.uuid4().hex}"
    (changed / "frames.py").write_text((changed / "frames.py").read_text() + f"\n{marker}\n")
    genuine = runtime_bundle.ensure_bundle(changed, tmp_path / "cache", progress=lambda _m: None)
    tampered = tmp_path / "tampered.tar.gz"
    data = genuine.path.read_bytes()
    tampered.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    res = _docker_build(
        consumer,
        "--secret",
        f"id=theory_runtime,src={tampered}",
        "--build-arg",
        f"THEORY_RUNTIME_SHA256={genuine.sha256}",
    )
    log = res.stdout + res.stderr
    assert res.returncode != 0, log[-3000:]
    assert f"does not hash to THEORY_RUNTIME_SHA256={genuine.sha256}: refusing it" in log, log[-3000:]

    # No bundle at all: a plain `docker build` says how to build instead.
    res = _docker_build(consumer)
    log = res.stdout + res.stderr
    assert res.returncode != 0 and "no runtime bundle was passed to this build" in log, log[-3000:]
    assert "Build with 'processorctl build'" in log

    # The genuine bundle of the changed runtime: the install step runs again (its sha256 is new), and the
    # image holds the changed code, although the secret's contents are no part of BuildKit's cache key.
    iid = tmp_path / "iid"
    res = _docker_build(consumer, *genuine.docker_flags(), "--iidfile", str(iid))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    image = iid.read_text().strip()
    consumer["images"].append(image)
    frames = subprocess.run(
        [
            consumer["docker"],
            "run",
            "--rm",
            "--entrypoint",
            "python3",
            image,
            "-c",
            "import inspect, theory_runtime.frames as f; print(inspect.getsource(f))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert frames.returncode == 0, frames.stderr
    assert frames.stdout.rstrip("\n").endswith(marker)
