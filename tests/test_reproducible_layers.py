"""push.normalise_layer / normalise_config: what makes pushed digests independent of build time.

No engine needed: synthetic layer tars that differ only in what an empty build cache changes (mtimes,
the host's user names, the order a differ wrote entries in) must give one digest; what the image
means (contents, modes, owners, xattrs, links, whiteouts) must survive the rewrite.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from theory_deploy import push


def _tar(entries: list[tuple[str, str, bytes | str | None]], *, mtime: int, uname: str = "root") -> io.BytesIO:
    """entries: (name, kind, data) with kind file|dir|link|symlink (data: bytes, -, link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uname = info.gname = uname
            info.uid = info.gid = 1000 if name.startswith("home/") else 0
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "file":
                assert isinstance(data, bytes)
                info.size, info.mode = len(data), 0o644
                if name.endswith("ping"):
                    info.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "atime": "12.5"}
                    info.mode = 0o4755
                tar.addfile(info, io.BytesIO(data))
            else:
                assert isinstance(data, str)
                info.type = tarfile.LNKTYPE if kind == "link" else tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
    buf.seek(0)
    return buf


LAYER = [
    ("app", "dir", None),
    ("app/a.py", "file", b"print('a')\n"),
    ("app/b.py", "file", b"print('b')\n"),
    ("app/hard", "link", "app/a.py"),
    ("app/sym", "symlink", "a.py"),
    ("app-b", "dir", None),
    ("bin", "dir", None),
    ("bin/ping", "file", b"\x7fELF"),
    ("home", "dir", None),
    ("home/u", "dir", None),
    ("home/u/.wh.gone", "file", b""),
    ("home/u/.wh..wh..opq", "file", b""),
]


def _normalise(source: io.BytesIO, tmp_path: Path, name: str) -> tuple[str, str, int, Path]:
    dest = tmp_path / name
    diff_id, digest, size = push.normalise_layer(source, dest)
    data = dest.read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest and len(data) == size
    assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == diff_id
    return diff_id, digest, size, dest


def test_build_time_and_host_do_not_reach_the_digest(tmp_path: Path) -> None:
    one = _normalise(_tar(LAYER, mtime=1_700_000_000), tmp_path, "one.gz")
    # Another build: another time, another host's user names, the entries in a differ's other order.
    shuffled = sorted(LAYER, key=lambda e: e[0].replace("/", "\0"), reverse=False)
    shuffled = [e for e in shuffled if e[1] != "link"] + [e for e in shuffled if e[1] == "link"]
    two = _normalise(_tar(shuffled, mtime=1_800_000_000, uname="builder"), tmp_path, "two.gz")
    assert one[:3] == two[:3]
    # The same again: byte for byte (gzip header without time or name).
    assert _normalise(_tar(LAYER, mtime=5), tmp_path, "three.gz")[:3] == one[:3]


def test_what_the_image_means_survives(tmp_path: Path) -> None:
    *_, dest = _normalise(_tar(LAYER, mtime=1_700_000_000), tmp_path, "layer.gz")
    with tarfile.open(dest, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        # Walk order: a directory, then its contents, then the next sibling (`app-b` after `app/...`).
        assert names == sorted(names, key=lambda n: n.split("/"))
        assert names.index("app/sym") < names.index("app-b")
        by = {m.name: m for m in members}
        assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in members)
        assert "atime" not in by["bin/ping"].pax_headers and "mtime" not in by["bin/ping"].pax_headers
        assert by["bin/ping"].pax_headers["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02"
        assert by["bin/ping"].mode == 0o4755 and by["home/u"].uid == 1000
        assert by["app/hard"].islnk() and by["app/hard"].linkname == "app/a.py"
        assert by["app/sym"].issym() and by["app/sym"].linkname == "a.py"
        assert {"home/u/.wh.gone", "home/u/.wh..wh..opq"} <= set(names)
        extracted = tmp_path / "x"
        tar.extractall(extracted, filter="tar")
    assert (extracted / "app" / "hard").read_bytes() == b"print('a')\n"


def test_a_link_that_sorts_before_its_file_takes_the_data(tmp_path: Path) -> None:
    entries = [("z", "dir", None), ("z/real", "file", b"data\n"), ("a", "link", "z/real")]
    *_, dest = _normalise(_tar(entries, mtime=7), tmp_path, "swap.gz")
    with tarfile.open(dest, "r:gz") as tar:
        by = {m.name: m for m in tar.getmembers()}
        assert [m.name for m in tar.getmembers()] == ["a", "z", "z/real"]
        assert by["a"].isreg() and by["z/real"].islnk() and by["z/real"].linkname == "a"
        extracted = tmp_path / "x"
        tar.extractall(extracted, filter="tar")
    assert (extracted / "z" / "real").read_bytes() == (extracted / "a").read_bytes() == b"data\n"


def test_config_is_stamped_with_the_epoch_and_the_new_diff_ids() -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-11-30T20:52:15.038947573Z",
        "container": "0123abcd",
        "config": {"Labels": {"a": "b"}, "Cmd": ["x"]},
        "history": [
            {"created": "2026-11-30T20:52:15Z", "created_by": "RUN x"},
            {"created": "2026-11-30T20:52:16Z", "created_by": "EXPOSE", "empty_layer": True},
        ],
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    }
    body = push.normalise_config(config, ["sha256:" + "2" * 64])
    out = json.loads(body)
    assert out["created"] == "1970-01-01T00:00:00Z" and "container" not in out
    assert [h["created"] for h in out["history"]] == ["1970-01-01T00:00:00Z"] * 2
    assert out["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]}
    assert out["config"] == config["config"] and out["architecture"] == "amd64"
    # Canonical: the same config however its keys were ordered.
    assert push.normalise_config(dict(reversed(list(config.items()))), ["sha256:" + "2" * 64]) == body


def test_the_blob_cache_lives_where_the_environment_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("THEORY_BLOB_CACHE_DIR", raising=False)
    monkeypatch.delenv("THEORY_STATE_DIR", raising=False)
    assert push.default_cache_dir() == tmp_path / "home" / ".cache" / "theory-deploy" / "blobs"
    monkeypatch.setenv("THEORY_STATE_DIR", str(tmp_path / "state"))
    assert push.default_cache_dir() == tmp_path / "state" / "blobs"
    # its own variable wins: one cache kept across CI runs, or shared by several state folders
    monkeypatch.setenv("THEORY_BLOB_CACHE_DIR", str(tmp_path / "kept"))
    assert push.default_cache_dir() == tmp_path / "kept"
    monkeypatch.setenv("THEORY_BLOB_CACHE_DIR", "")
    assert push.default_cache_dir() == tmp_path / "state" / "blobs"
