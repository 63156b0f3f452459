"""The theory_runtime bundle `processorctl build` hands every image build (theory_deploy.runtime_bundle).

Fast: no engine. The bundle is the same bytes wherever and whenever it is made from the same sources,
holds exactly the package's .py files and py.typed, is named and checked by its sha256 in the cache,
and one too large for a BuildKit secret is refused with a message that says why.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import secrets
import shutil
import tarfile
from pathlib import Path

import pytest

from theory_deploy import build, docker, runtime_bundle
from theory_deploy.errors import ImageBuildError

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime" / "theory_runtime"


def _expected_members(folder: Path) -> list[str]:
    names = {
        f"theory_runtime/{p.relative_to(folder).as_posix()}"
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and (p.suffix == ".py" or p.name == "py.typed")
    }
    return sorted(names)


def _fake_runtime(root: Path) -> Path:
    """A copy of the runtime package (plus junk the bundle must leave out) to change freely."""
    folder = root / "theory_runtime"
    shutil.copytree(RUNTIME, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"\0junk")
    (folder / "notes.txt").write_text("not code\n")
    (folder / ".hidden.py").write_text("x = 1\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "__init__.py").write_text("")
    (folder / "sub" / "more.py").write_text("y = 2\n")
    return folder


def test_the_installed_theory_deploy_finds_the_runtime_sources_without_importing_them() -> None:
    folder = runtime_bundle.runtime_source_dir()
    assert (folder / "__init__.py").is_file() and (folder / "spec.py").is_file()
    # This checkout's venv (editable) maps it to runtime/theory_runtime; a wheel carries a copy.
    if folder.resolve() != RUNTIME.resolve():
        for name in _expected_members(RUNTIME):
            rel = name.removeprefix("theory_runtime/")
            assert (folder / rel).read_bytes() == (RUNTIME / rel).read_bytes()
    assert runtime_bundle.runtime_version(folder) == runtime_bundle.runtime_version(RUNTIME) != "unknown"


def test_the_bundle_is_byte_identical_across_caches_and_holds_exactly_the_package(tmp_path: Path) -> None:
    first = runtime_bundle.ensure_bundle(RUNTIME, tmp_path / "a", progress=lambda _m: None)
    # The same sources copied elsewhere, with other mtimes and modes: still the same bytes.
    copy = tmp_path / "copy" / "theory_runtime"
    shutil.copytree(RUNTIME, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in copy.iterdir():
        os.utime(path, (1_700_000_000, 1_700_000_000))
        path.chmod(0o600)
    second = runtime_bundle.ensure_bundle(copy, tmp_path / "b", progress=lambda _m: None)

    data = first.path.read_bytes()
    assert data == second.path.read_bytes()
    assert first.sha256 == second.sha256 == hashlib.sha256(data).hexdigest()
    assert first.path == tmp_path / "a" / f"{first.sha256}.tar.gz" and first.size == len(data)
    assert first.version == runtime_bundle.runtime_version(RUNTIME)
    assert len(data) < runtime_bundle.MAX_BUNDLE_BYTES // 10  # well under BuildKit's secret limit

    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        files = [m for m in members if m.isfile()]
        assert [m.name for m in files] == _expected_members(RUNTIME)
        assert [m.name for m in members if m.isdir()] == ["theory_runtime"]
        assert [m.name for m in members] == sorted(m.name for m in members)
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            assert m.mode == (0o755 if m.isdir() else 0o644)
        for m in files:
            extracted = tar.extractfile(m)
            assert extracted is not None
            assert extracted.read() == (RUNTIME / m.name.removeprefix("theory_runtime/")).read_bytes()

    flags = first.docker_flags()
    assert flags == [
        "--secret",
        f"id=theory_runtime,src={first.path}",
        "--build-arg",
        f"THEORY_RUNTIME_SHA256={first.sha256}",
        "--build-arg",
        f"THEORY_RUNTIME_VERSION={first.version}",
    ]


def test_only_python_files_and_py_typed_are_bundled_recursively(tmp_path: Path) -> None:
    folder = _fake_runtime(tmp_path / "src")
    bundle = runtime_bundle.ensure_bundle(folder, tmp_path / "cache", progress=lambda _m: None)
    with tarfile.open(bundle.path, mode="r:gz") as tar:
        files = [m.name for m in tar.getmembers() if m.isfile()]
        folders = [m.name for m in tar.getmembers() if m.isdir()]
    assert files == sorted(
        [*_expected_members(RUNTIME), "theory_runtime/sub/__init__.py", "theory_runtime/sub/more.py"]
    )
    assert folders == ["theory_runtime", "theory_runtime/sub"]


def test_a_change_to_the_sources_is_a_new_bundle(tmp_path: Path) -> None:
    folder = _fake_runtime(tmp_path / "src")
    before = runtime_bundle.ensure_bundle(folder, tmp_path / "cache", progress=lambda _m: None)
    (folder / "notes.txt").write_text("changed, but not bundled\n")
    assert runtime_bundle.ensure_bundle(folder, tmp_path / "cache", progress=lambda _m: None) == before
    with (folder / "frames.py").open("a") as handle:
        handle.write("\n# a change\n")
    after = runtime_bundle.ensure_bundle(folder, tmp_path / "cache", progress=lambda _m: None)
    assert after.sha256 != before.sha256 and after.path != before.path
    assert before.path.is_file() and after.path.is_file()


def test_the_cache_is_reused_and_a_corrupted_entry_is_rewritten(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    messages: list[str] = []
    first = runtime_bundle.ensure_bundle(RUNTIME, cache, progress=messages.append)
    good = first.path.read_bytes()
    stamp = (1_600_000_000, 1_600_000_000)
    os.utime(first.path, stamp)
    inode = first.path.stat().st_ino

    again = runtime_bundle.ensure_bundle(RUNTIME, cache, progress=messages.append)
    assert again == first
    assert first.path.stat().st_ino == inode and first.path.stat().st_mtime == stamp[0]  # not rewritten
    assert messages == []

    for corrupt in (good[:-10], good[:100] + bytes([good[100] ^ 0xFF]) + good[101:], b""):
        first.path.write_bytes(corrupt)
        repaired = runtime_bundle.ensure_bundle(RUNTIME, cache, progress=messages.append)
        assert repaired == first
        assert first.path.read_bytes() == good
        assert "does not hash to its name" in messages.pop()
    assert [p.name for p in cache.iterdir()] == [first.path.name]  # no temporary left behind


def test_a_cache_entry_that_is_not_a_file_is_refused_by_name(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sha = runtime_bundle.ensure_bundle(RUNTIME, tmp_path / "probe", progress=lambda _m: None).sha256
    (cache / f"{sha}.tar.gz").mkdir(parents=True)
    with pytest.raises(ImageBuildError) as info:
        runtime_bundle.ensure_bundle(RUNTIME, cache, progress=lambda _m: None)
    assert info.value.code == "ERR_IMAGE_BUILD"
    assert f"{sha}.tar.gz is a directory" in info.value.message
    assert "THEORY_RUNTIME_CACHE_DIR" in info.value.render()


def test_a_bundle_over_the_buildkit_secret_limit_is_refused_clearly(tmp_path: Path) -> None:
    folder = _fake_runtime(tmp_path / "src")
    # Incompressible code: about 930 KB of random base64 in a string literal (about 700 KB gzipped).
    (folder / "blob.py").write_text(f'DATA = "{secrets.token_urlsafe(700 * 1024)}"\n')
    with pytest.raises(ImageBuildError) as info:
        runtime_bundle.ensure_bundle(folder, tmp_path / "cache", progress=lambda _m: None)
    err = info.value
    assert err.code == "ERR_IMAGE_BUILD"
    assert "over the limit of 512000 bytes" in err.message
    assert "BuildKit refuses build secrets over 512000 bytes" in err.message
    assert err.details["bundle_bytes"] > 512000
    assert not (tmp_path / "cache").exists()  # nothing written
    # The limit is a parameter: a smaller one refuses today's runtime the same way.
    with pytest.raises(ImageBuildError, match="over the limit of 1000 bytes"):
        runtime_bundle.ensure_bundle(RUNTIME, tmp_path / "cache", max_bytes=1000, progress=lambda _m: None)


def test_a_folder_that_is_not_the_runtime_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "theory_runtime"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    with pytest.raises(ImageBuildError, match=r"not a theory_runtime package: server\.py, spec\.py missing"):
        runtime_bundle.ensure_bundle(folder, tmp_path / "cache", progress=lambda _m: None)


def test_the_cache_folder_follows_the_environment(tmp_path: Path) -> None:
    home = Path.home()
    assert runtime_bundle.default_cache_dir({}) == home / ".cache" / "theory-deploy" / "runtime"
    assert runtime_bundle.default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/theory-deploy/runtime")
    assert runtime_bundle.default_cache_dir({"XDG_CACHE_HOME": "/x", "THEORY_STATE_DIR": "/s"}) == Path("/s/runtime")
    assert runtime_bundle.default_cache_dir(
        {"XDG_CACHE_HOME": "/x", "THEORY_STATE_DIR": "/s", "THEORY_RUNTIME_CACHE_DIR": "/c"}
    ) == Path("/c")


def test_every_build_command_carries_the_runtime(tmp_path: Path) -> None:
    bundle = runtime_bundle.ensure_bundle(RUNTIME, tmp_path / "cache", progress=lambda _m: None)
    for builder in (docker.Builder("/usr/bin/docker", "buildkit"), docker.Builder("docker", "buildx")):
        cmd = build.build_command(
            builder,
            platform="amd64",
            context=tmp_path,
            dockerfile=tmp_path / "Dockerfile",
            tag="t",
            iidfile=tmp_path / "iid",
            labels={},
            build_args={"BASE_IMAGE": "b"},
            pull=False,
            ca=None,
            runtime=bundle,
        )
        assert f"id=theory_runtime,src={bundle.path}" in cmd
        assert cmd[cmd.index(f"id=theory_runtime,src={bundle.path}") - 1] == "--secret"
        assert f"THEORY_RUNTIME_SHA256={bundle.sha256}" in cmd and "BASE_IMAGE=b" in cmd
        assert cmd[-1] == str(tmp_path)


def test_gzip_stream_is_plain(tmp_path: Path) -> None:
    """The archive is an ordinary tar.gz: `tar -xzf` in any image can read it."""
    bundle = runtime_bundle.ensure_bundle(RUNTIME, tmp_path / "cache", progress=lambda _m: None)
    raw = gzip.decompress(bundle.path.read_bytes())
    assert raw[257:262] == b"ustar"
