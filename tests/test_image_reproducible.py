"""Reproducible images: a pin-only change gives the same image, and the same source gives the same
pushed digests from an empty build cache.

A pin-only change to registry.yaml gives the same image: no pin loop.

registry.yaml holds the image pins, which the pin bot rewrites after every build. If the image carried
them, every pin commit would change the next build's digest, which needs a new pin, forever. The
llm/litellm Dockerfile ships /app/processor.json instead (registry.yaml without `image`/`build`,
exported canonically by `python -m theory_runtime.spec export` in a build stage), and BuildKit keys
`COPY --from` by content, so the final stage is a full cache hit.

Built with the product's own `theory_deploy.build.build_platform_images` (CA secret, labels) for
linux/amd64 from a temporary repository root holding copies of runtime/ and processors/llm/litellm/.
The copy's ref gets a random version so its local tag (theory-local/llm-litellm-v<N>:amd64) is its own.

The same source from an empty cache (test_same_source_gives_the_same_pushed_digests_from_an_empty_cache):
two builds with the checkout's mtimes moved between them (as a fresh CI runner sees it), the second
running every step again, each pushed by `processorctl push`'s code with an empty blob cache, give one
manifest digest, though the engine's own layers differ (the first build's steps ran at another time,
now or earlier from the build cache). Every step is run again with `--no-cache` rather than
`docker builder prune -af`, which would empty the cache of everything else using this engine (a
concurrent test run's cache-hit assertions among them); set THEORY_TEST_PRUNE_BUILD_CACHE=1 to prune
for real, as on a disposable CI runner.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from theory_deploy import build, push, registry_file
from theory_deploy.oci import RegistryClient
from theory_deploy.refs import parse_repository

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPOSITORY = "ghcr.io/theory-deploy/llm-litellm"


def _inspect(cli: str, image: str) -> dict[str, Any]:
    out = subprocess.run([cli, "image", "inspect", image], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)[0]


def _cat(cli: str, image: str, path: str) -> str:
    out = subprocess.run(
        [cli, "run", "--rm", "--entrypoint", "cat", image, path], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def tmp_repo(
    tmp_path: Path, repo_root: Path, docker_cli: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("THEORY_DOCKER", docker_cli)
    root = tmp_path / "repo"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "processor.json")
    shutil.copytree(repo_root / "runtime", root / "runtime", ignore=junk)
    folder = root / "processors" / "llm" / "litellm"
    shutil.copytree(repo_root / "processors" / "llm" / "litellm", folder, ignore=junk)
    path = folder / "registry.yaml"
    version = random.randint(100000, 999999)
    text = path.read_text()
    assert "ref: llm/litellm@1\n" in text
    path.write_text(text.replace("ref: llm/litellm@1\n", f"ref: llm/litellm@{version}\n", 1))
    built_ids: list[str] = []
    yield {"root": root, "path": path, "ids": built_ids}
    tag = build.local_tag(f"llm-litellm-v{version}", "amd64")
    subprocess.run([docker_cli, "rmi", "-f", tag, *dict.fromkeys(built_ids)], capture_output=True, timeout=120)


def _build(repo: dict[str, Any], base_image: str, *, no_cache: bool = False) -> build.BuiltImage:
    loaded = registry_file.load_path(repo["path"], repo["root"])
    built = build.build_platform_images(
        loaded.spec,
        repo["root"],
        ["amd64"],
        {"BASE_IMAGE": base_image},
        registry_path=repo["path"],
        progress=lambda _m: None,
        no_cache=no_cache,
    )["amd64"]
    repo["ids"].append(built.image_id)
    return built


def test_pin_only_change_gives_the_same_image(tmp_repo: dict[str, Any], base_image: str, docker_cli: str) -> None:
    path: Path = tmp_repo["path"]
    first = _build(tmp_repo, base_image)
    first_info = _inspect(docker_cli, first.image_id)

    # The pin bot's write, twice (null -> A, then A -> B): only the pin characters move.
    ids = [first.image_id]
    for fill in ("1", "2"):
        before = path.read_text()
        changed = registry_file.write_pins(
            path, {"amd64": f"{REPOSITORY}@sha256:{fill * 64}", "arm64": f"{REPOSITORY}@sha256:{fill * 63}f"}
        )
        assert set(changed) == {"amd64", "arm64"} and path.read_text() != before
        again = _build(tmp_repo, base_image)
        ids.append(again.image_id)
        info = _inspect(docker_cli, again.image_id)
        assert info["RootFS"]["Layers"] == first_info["RootFS"]["Layers"]
        assert info["Config"] == first_info["Config"] and info["Created"] == first_info["Created"]
    print(f"\nimage ids: unpinned {ids[0]}, pin A {ids[1]}, pin B {ids[2]}")
    assert ids == [first.image_id] * 3, "a pin-only change to registry.yaml changed the image (pin loop)"

    # What the image carries: the runtime spec, without pins, repository or build section.
    shipped = _cat(docker_cli, first.image_id, "/app/processor.json")
    spec = json.loads(shipped)
    assert "image" not in spec and "build" not in spec and "sha256:" not in shipped
    assert spec["ref"].startswith("llm/litellm@") and spec["secrets"]["required"] == ["OPENAI_API_KEY"]
    listing = _cat(docker_cli, first.image_id, "/app/app.py")
    assert "processor.json" in listing

    # A change the runtime can see is a different image.
    text = path.read_text()
    marker = "              content: {type: string}\n"
    assert marker in text
    path.write_text(text.replace(marker, "              content: {type: string, description: The text.}\n", 1))
    changed_inputs = _build(tmp_repo, base_image)
    print(f"inputs changed: {changed_inputs.image_id}")
    assert changed_inputs.image_id != first.image_id
    layers = _inspect(docker_cli, changed_inputs.image_id)["RootFS"]["Layers"]
    assert layers[:-2] == first_info["RootFS"]["Layers"][:-2]  # only processor.json's layer and after
    assert layers[-2] != first_info["RootFS"]["Layers"][-2]
    spec2 = json.loads(_cat(docker_cli, changed_inputs.image_id, "/app/processor.json"))
    messages = spec2["inputs"]["properties"]["params"]["properties"]["messages"]
    assert messages["items"]["properties"]["content"]["description"] == "The text."


# Reads every .pyc under /opt/venv: the flags word says hash-based (1: unchecked, 3: checked) or not (0).
_PYC_FLAGS = """
import collections, json, pathlib
flags = collections.Counter(str(int.from_bytes(p.read_bytes()[4:8], 'little')) for p in pathlib.Path('/opt/venv').rglob('*.pyc'))
print(json.dumps(flags))
"""


def test_same_source_gives_the_same_pushed_digests_from_an_empty_cache(
    tmp_repo: dict[str, Any], base_image: str, docker_cli: str, registry: str, tmp_path: Path
) -> None:
    repository = parse_repository(f"{registry}/test/repro-{random.randint(100000, 999999)}")
    prune = os.environ.get("THEORY_TEST_PRUNE_BUILD_CACHE") == "1"
    runs: list[dict[str, Any]] = []
    for run in range(2):
        if prune:
            subprocess.run([docker_cli, "builder", "prune", "-af"], capture_output=True, timeout=600, check=True)
        # A fresh checkout: every file of the context gets the checkout's time.
        stamp = time.time() + 1000 * run
        for path in tmp_repo["root"].rglob("*"):
            os.utime(path, (stamp, stamp), follow_symlinks=False)
        # The first build may take its steps from the build cache: they ran then, at another time, from
        # another checkout (an earlier build of the same source: a test, the quickstart), or run now if
        # the cache is empty. The second runs every step again. Two executions either way, and one fewer
        # full build (pip included) than two --no-cache builds.
        built = _build(tmp_repo, base_image, no_cache=run > 0 and not prune)
        local = _inspect(docker_cli, built.image_id)
        with RegistryClient(registry, progress=lambda _m: None) as client:
            result = push.push_platform_images(
                {"amd64": built}, repository, client, cache_dir=tmp_path / f"blobs-{run}", progress=lambda _m: None
            )
            ref = result.platforms["amd64"]
            # What pin checks: an image manifest of this repository, for linux/amd64.
            resolved = client.resolve_platform(repository.path, ref.digest or "", "amd64")
            manifest = client.get_manifest(repository.path, ref.digest or "").data
        assert resolved.manifest_digest == ref.digest and not resolved.from_index
        runs.append(
            {
                "image_id": built.image_id,
                "engine_layers": local["RootFS"]["Layers"],
                "manifest": ref.digest,
                "config": manifest["config"]["digest"],
                "layers": [layer["digest"] for layer in manifest["layers"]],
                "uploaded": (result.uploaded_blobs, result.uploaded_bytes),
            }
        )
        # Remove the local image: the next build cannot reuse any of it.
        subprocess.run([docker_cli, "rmi", "-f", built.local_tag, built.image_id], capture_output=True, timeout=120)
    first, second = runs
    print(f"\nengine image ids: {first['image_id']} then {second['image_id']}")
    print(f"pushed linux/amd64 manifest: {first['manifest']} then {second['manifest']}")
    print(f"uploaded (blobs, bytes): {first['uploaded']} then {second['uploaded']}")
    # The engine's output did change (mtimes, created): else this test would prove nothing.
    assert first["image_id"] != second["image_id"]
    assert first["engine_layers"][0] == second["engine_layers"][0]  # the base
    assert first["engine_layers"][1:] != second["engine_layers"][1:]
    # What is pushed does not: every layer, the config, the manifest.
    assert second["layers"] == first["layers"]
    assert second["config"] == first["config"]
    assert second["manifest"] == first["manifest"]
    assert second["uploaded"] == (0, 0), "the second push re-uploaded blobs of an unchanged source"

    # The pushed image runs, and pip's bytecode is hash-based (no build mtimes inside).
    pulled = f"{repository}@{first['manifest']}"
    try:
        subprocess.run([docker_cli, "pull", "-q", pulled], capture_output=True, timeout=600, check=True)
        out = subprocess.run(
            [docker_cli, "run", "--rm", "--entrypoint", "python3", pulled, "-c", _PYC_FLAGS],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        flags = json.loads(out.stdout)
        assert set(flags) <= {"3"} and flags.get("3", 0) > 1000, f"not all .pyc are checked-hash: {flags}"
        out = subprocess.run(
            [docker_cli, "run", "--rm", "--entrypoint", "python3", pulled, "-c", "import app; print('ok')"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    finally:
        subprocess.run([docker_cli, "rmi", "-f", pulled], capture_output=True, timeout=120)
