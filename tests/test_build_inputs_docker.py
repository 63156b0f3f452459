"""The build fingerprint against the real engine: the context it hashes is the one BuildKit receives,
and an unchanged processor is not built again until something in that context changes.

The fast suite (tests/test_build_inputs.py) checks the rules one by one through the docker CLI
stand-in; only a real BuildKit can say whether the ignore rules read the way it reads them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from theory_deploy import build, registry_file
from theory_deploy.build_inputs import IgnoreRules, _entries
from theory_deploy.docker import find_builder
from theory_deploy.refs import ProcessorRef

pytestmark = [pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[1]
REF = ProcessorRef.parse("llm/litellm@1")
FOLDER = Path("processors/llm/litellm")


def _user_repo(tmp_path: Path) -> Path:
    """The sample processor in a user's repository, with files on both sides of its ignore file."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / FOLDER, root / FOLDER, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "README.md").write_text("outside the processor\n")
    (root / "processors" / "other").mkdir()
    (root / "processors" / "other" / "app.py").write_text("x = 1\n")
    (root / FOLDER / "__pycache__").mkdir()
    (root / FOLDER / "__pycache__" / "handler.cpython-312.pyc").write_bytes(b"\0")
    (root / FOLDER / "sub" / "deeper").mkdir(parents=True)
    (root / FOLDER / "sub" / "deeper" / "data.txt").write_text("kept\n")
    (root / FOLDER / "sub" / "mod.pyc").write_bytes(b"\0")
    (root / FOLDER / "processor.json").write_text("{}\n")
    (root / FOLDER / "link.txt").symlink_to("handler.py")
    return root


def test_the_context_hashed_is_the_one_buildkit_receives(tmp_path: Path, docker_cli: str, base_image: str) -> None:
    root = _user_repo(tmp_path)
    # A probe beside the sample's Dockerfile, with the sample's ignore rules as its own ignore file,
    # that copies the whole context it receives into the image and lists it.
    probe = root / FOLDER / "Probe.Dockerfile"
    probe.write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /ctx/\n"
        "RUN cd /ctx && find . -mindepth 1 -not -type d | sed 's|^./||' | LC_ALL=C sort > /ctx.list\n"
    )
    shutil.copy(root / FOLDER / "Dockerfile.dockerignore", root / FOLDER / "Probe.Dockerfile.dockerignore")
    tag = f"theory-test/context-probe:{os.getpid()}"
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    subprocess.run(
        [docker_cli, "build", "-q", "-f", str(probe), "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag, str(root)],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    try:
        listed = subprocess.run(
            [docker_cli, "run", "--rm", "--entrypoint", "cat", tag, "/ctx.list"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.split()
    finally:
        subprocess.run([docker_cli, "rmi", "-f", tag], capture_output=True, timeout=120)
    rules = IgnoreRules.for_build(root, probe)
    hashed = sorted(rel for rel, info in _entries(root, rules) if not (info.st_mode & 0o040000))
    assert hashed == listed
    # and the ignore file did its work: only the processor's own sources came through
    assert "README.md" not in listed and f"{FOLDER}/sub/deeper/data.txt" in listed
    assert f"{FOLDER}/link.txt" in listed and f"{FOLDER}/processor.json" not in listed


def test_an_unchanged_processor_is_not_built_again_by_the_engine(
    tmp_path: Path, docker_cli: str, base_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _user_repo(tmp_path)
    # A small Dockerfile of the same shape (the sample's pip install would make this test minutes long).
    (root / FOLDER / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY processors/llm/litellm/handler.py processors/llm/litellm/sub/ /app/\n"
    )
    monkeypatch.setenv("THEORY_DOCKER", docker_cli)
    monkeypatch.setenv("THEORY_RUNTIME_CACHE_DIR", str(tmp_path / "runtime"))
    builder = find_builder()

    def build_once() -> tuple[str, list[str]]:
        lines: list[str] = []
        loaded = registry_file.load_processor(REF, root)
        built = build.build_platform_images(
            loaded.spec, root, ["linux/amd64"], {"BASE_IMAGE": base_image}, builder=builder, progress=lines.append
        )
        return built["amd64"].image_id, lines

    def engine_built(lines: list[str]) -> bool:
        return any(line.startswith("building llm/litellm@1 for linux/amd64") for line in lines)

    first, lines = build_once()
    assert engine_built(lines)
    again, lines = build_once()
    assert (again, engine_built(lines)) == (first, False)
    (root / "README.md").write_text("edited, but not in the context\n")
    registry_file.write_pins(
        root / FOLDER / "registry.yaml", {"amd64": "ghcr.io/theory-deploy/llm-litellm@sha256:" + "a" * 64}
    )
    again, lines = build_once()
    assert (again, engine_built(lines)) == (first, False)
    (root / FOLDER / "handler.py").write_text((root / FOLDER / "handler.py").read_text() + "\n# changed\n")
    changed, lines = build_once()
    assert engine_built(lines) and changed != first
    # gone from the engine: built again, whatever the record says
    subprocess.run([docker_cli, "rmi", "-f", changed], check=True, capture_output=True, timeout=120)
    rebuilt, lines = build_once()
    assert engine_built(lines)
    subprocess.run([docker_cli, "rmi", "-f", rebuilt], capture_output=True, timeout=120)
