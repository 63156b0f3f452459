"""Contract tests of the OCI registry client (src/theory_deploy/oci.py), written to pin what the
mutation run found unpinned: platform resolution, the error messages and codes a user reads, the
retry/backoff rules, the auth handshake, manifests, blobs and uploads.

Most tests talk to `Scripted`, an in-process HTTP/1.1 server on 127.0.0.1 that behaves like a tiny
content-addressed registry and answers, on request, what a real registry will not (a 500 for a config
digest, a lying Docker-Content-Digest, a bearer challenge, a dropped connection). Every request it
receives is recorded, so the tests assert exact request sequences, not just outcomes. A few tests use
the real loopback registries (anonymous 127.0.0.1:5000, basic-auth 127.0.0.1:5001).

Messages are asserted whole: they are the contract (what failed, where, how to fix it).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from theory_deploy import oci, secret_values
from theory_deploy.errors import (
    ConfigDigestError,
    DigestIntegrityError,
    ImagePullError,
    ImagePushError,
    ImageUnavailableError,
    PlatformMismatchError,
    RegistryAuthError,
    RegistryUnreachableError,
    TheoryDeployError,
)
from theory_deploy.oci import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    ManifestHead,
    PlatformResolution,
    RegistryClient,
    RegistryClients,
    RetryPolicy,
)

NOW = RetryPolicy(base_delay=0.0)


ZERO = "sha256:" + "0" * 64
MIB4 = 4 * 1024 * 1024


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def errors_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


# ---------------------------------------------------------------------------------------------------
# The scripted registry
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # path and query
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def auth(self) -> str:
        return self.headers.get("authorization", "")


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    delay: float = 0.0
    length: bool = True  # False: no Content-Length header at all


DROP = Reply(0)  # close the connection without an answer (an EOF for the client)

Answer = Reply | Callable[[Seen], Reply]


class Scripted:
    """A tiny registry on 127.0.0.1 (manifests by tag and digest, blobs, uploads, mounts) whose
    answers can be replaced per (method, path) by scripted replies, consumed in order."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.scripts: dict[tuple[str, str], list[Answer]] = {}
        self.seen: list[Seen] = []
        # asked first for every request; None lets the scripts and the registry answer
        self.guard: Callable[[Seen], Reply | None] | None = None
        self._lock = threading.Lock()
        self._uploads = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body are two writes: without this, Nagle + delayed ACK add 40 ms each
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_CONNECT = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- content -----------------------------------------------------------------------------------------
    def script(self, method: str, path: str, *answers: Answer) -> None:
        self.scripts.setdefault((method, path), []).extend(answers)

    def put_manifest(self, repo: str, body: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha(body)
        self.manifests[(repo, digest)] = (body, media_type)
        if tag:
            self.manifests[(repo, tag)] = (body, media_type)
        return digest

    def put_blob(self, repo: str, body: bytes) -> str:
        digest = sha(body)
        self.blobs[(repo, digest)] = body
        return digest

    def paths(self) -> list[str]:
        return [f"{s.method} {s.target}" for s in self.seen]

    # -- serving -----------------------------------------------------------------------------------------
    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        seen = Seen(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, self._read_body(h))
        with self._lock:
            self.seen.append(seen)
        reply = self.guard(seen) if self.guard is not None else None
        if reply is None:
            with self._lock:
                queue = self.scripts.get((seen.method, seen.path))
                answer = queue.pop(0) if queue else None
            reply = answer(seen) if callable(answer) else answer
        if reply is None:
            reply = self._registry(seen)
        if reply is DROP:
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if reply.delay:
            time.sleep(reply.delay)
        h.send_response(reply.status, reply.reason)
        for key, value in reply.headers.items():
            h.send_header(key, value)
        if reply.length and not any(k.lower() == "content-length" for k in reply.headers):
            h.send_header("Content-Length", str(len(reply.body)))
        h.end_headers()
        if seen.method != "HEAD" and reply.body:
            try:
                h.wfile.write(reply.body)
            except OSError:
                pass

    def _registry(self, s: Seen) -> Reply:
        parts = s.path.split("/")
        if s.path == "/v2/":
            return Reply(200, b"{}", {"Content-Type": "application/json"})
        if "manifests" in parts:
            i = parts.index("manifests")
            repo, ref = "/".join(parts[2:i]), parts[i + 1]
            if s.method == "PUT":
                digest = self.put_manifest(repo, s.body, s.headers.get("content-type", ""))
                if not ref.startswith("sha256:"):
                    self.manifests[(repo, ref)] = (s.body, s.headers.get("content-type", ""))
                return Reply(201, headers={"Docker-Content-Digest": digest, "Location": s.path})
            found = self.manifests.get((repo, ref))
            if found is None:
                return Reply(404, errors_body("MANIFEST_UNKNOWN", "manifest unknown"), {"Content-Type": "x/json"})
            body, media_type = found
            return Reply(200, body, {"Content-Type": media_type, "Docker-Content-Digest": sha(body)})
        if "uploads" in parts:
            i = parts.index("blobs")
            repo = "/".join(parts[2:i])
            query = httpx.URL(s.target).params
            if s.method == "POST":
                source = query.get("from")
                if source and (source, query.get("mount")) in self.blobs:
                    self.blobs[(repo, query["mount"])] = self.blobs[(source, query["mount"])]
                    return Reply(201, headers={"Docker-Content-Digest": query["mount"]})
                self._uploads += 1
                return Reply(202, headers={"Location": f"/v2/{repo}/blobs/uploads/u{self._uploads}?_state=s"})
            if s.method == "PUT":
                digest = query["digest"]
                self.blobs[(repo, digest)] = s.body
                return Reply(201, headers={"Docker-Content-Digest": digest})
        if "blobs" in parts:
            i = parts.index("blobs")
            repo, digest = "/".join(parts[2:i]), parts[i + 1]
            body = self.blobs.get((repo, digest))
            if body is None:
                return Reply(404, errors_body("BLOB_UNKNOWN", "blob unknown to registry"), {"Content-Type": "x/json"})
            return Reply(200, body, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest})
        if s.path.endswith("/tags/list"):
            return Reply(200, json.dumps({"name": "r", "tags": ["v1", 7, "v2", None]}).encode())
        return Reply(404, b"")


@dataclass(frozen=True)
class Image:
    manifest: str
    config: str
    body: bytes
    media_type: str


def add_image(
    srv: Scripted,
    repo: str,
    arch: str,
    *,
    os_name: str = "linux",
    media_type: str = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    tag: str | None = None,
) -> Image:
    config = json.dumps({"architecture": arch, "os": os_name, "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = srv.put_blob(repo, config)
    layer_digest = srv.put_blob(repo, b"layer-" + arch.encode())
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": layer_digest, "size": 7}],
        }
    ).encode()
    return Image(srv.put_manifest(repo, body, media_type, tag), config_digest, body, media_type)


def add_index(
    srv: Scripted, repo: str, entries: list[dict[str, Any]], *, media_type: str = OCI_INDEX, tag: str | None = None
) -> str:
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()
    return srv.put_manifest(repo, body, media_type, tag)


def entry(digest: str, arch: str, os_name: str = "linux", **extra: Any) -> dict[str, Any]:
    platform = {"architecture": arch, "os": os_name, **extra.pop("platform", {})}
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": platform, **extra}


@pytest.fixture
def srv():
    server = Scripted()
    yield server
    server.close()


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def client(srv: Scripted, lines: list[str]):
    with RegistryClient(srv.host, retry=NOW, progress=lines.append) as c:
        yield c


def failure(info: pytest.ExceptionInfo[TheoryDeployError]) -> tuple[str, str, dict[str, Any]]:
    return type(info.value).__name__, info.value.message, info.value.details


STATS0 = {
    "requests": 0,
    "retries": 0,
    "blob_uploads": 0,
    "blob_skips": 0,
    "blob_mounts": 0,
    "cache_hits": 0,
    "token_requests": 0,
}


def stats(**changed: int) -> dict[str, int]:
    return {**STATS0, **changed}


# ---------------------------------------------------------------------------------------------------
# Platform resolution
# ---------------------------------------------------------------------------------------------------


def test_resolving_through_an_index_fetches_index_child_and_config_once(srv: Scripted, client: RegistryClient) -> None:
    amd = add_image(srv, "r", "amd64")
    arm = add_image(srv, "r", "arm64")
    idx = add_index(srv, "r", [entry(amd.manifest, "amd64"), entry(arm.manifest, "arm64")])
    got = client.resolve_platform("r", idx, "linux/arm64")
    assert got == PlatformResolution(arm.manifest, True, OCI_MANIFEST, arm.config, idx)
    assert srv.paths() == [
        f"GET /v2/r/manifests/{idx}",
        f"GET /v2/r/manifests/{arm.manifest}",
        f"GET /v2/r/blobs/{arm.config}",
    ]
    assert [s.headers.get("accept") for s in srv.seen] == [oci.ACCEPT_MANIFESTS, oci.ACCEPT_MANIFESTS, "*/*"]
    assert client.stats == stats(requests=3)
    # again: the index and everything under it were proved, nothing is asked
    assert client.resolve_platform("r", idx, "arm64") == got
    assert client.stats == stats(requests=3, cache_hits=3)


def test_resolving_an_image_manifest_checks_its_own_config(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", media_type=DOCKER_MANIFEST, config_type=DOCKER_CONFIG)
    got = client.resolve_platform("r", img.manifest, "amd64")
    assert got == PlatformResolution(img.manifest, False, DOCKER_MANIFEST, img.config, None)
    assert srv.paths() == [f"GET /v2/r/manifests/{img.manifest}", f"GET /v2/r/blobs/{img.config}"]


def test_resolve_platforms_maps_every_spelling_and_fetches_each_platform_once(
    srv: Scripted, client: RegistryClient
) -> None:
    amd = add_image(srv, "r", "amd64")
    arm = add_image(srv, "r", "arm64")
    idx = add_index(srv, "r", [entry(amd.manifest, "amd64"), entry(arm.manifest, "arm64")], tag="v1")
    got = client.resolve_platforms("r", "v1", ["linux/amd64", "amd64", "arm64"])
    want_amd = PlatformResolution(amd.manifest, True, OCI_MANIFEST, amd.config, idx)
    want_arm = PlatformResolution(arm.manifest, True, OCI_MANIFEST, arm.config, idx)
    assert got == {"linux/amd64": want_amd, "amd64": want_amd, "arm64": want_arm}
    assert list(got) == ["linux/amd64", "amd64", "arm64"]
    assert srv.paths()[0] == "GET /v2/r/manifests/v1"
    assert sorted(srv.paths()[1:]) == sorted(
        [
            f"GET /v2/r/manifests/{amd.manifest}",
            f"GET /v2/r/blobs/{amd.config}",
            f"GET /v2/r/manifests/{arm.manifest}",
            f"GET /v2/r/blobs/{arm.config}",
        ]
    )
    # the several platforms of an index ran on the client's own pool
    assert any(t.name.startswith("theory-oci_") for t in threading.enumerate())


def test_resolve_platforms_of_one_platform_or_an_image_runs_in_the_calling_thread(srv: Scripted) -> None:
    img = add_image(srv, "r", "amd64", tag="one")
    before = {t.ident for t in threading.enumerate() if t.name.startswith("theory-oci")}
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        got = c.resolve_platforms("r", "one", ["amd64"])
        with pytest.raises(PlatformMismatchError) as info:
            c.resolve_platforms("r", "one", ["amd64", "linux/arm64"])
        after = {t.ident for t in threading.enumerate() if t.name.startswith("theory-oci")}
    assert got == {"amd64": PlatformResolution(img.manifest, False, OCI_MANIFEST, img.config, None)}
    assert failure(info) == (
        "PlatformMismatchError",
        f"{srv.host}/r:one is a linux/amd64 image, not linux/arm64.",
        {"digest": img.manifest, "os": "linux", "architecture": "amd64"},
    )
    assert after == before


def test_resolve_platforms_raises_the_first_platforms_error_in_order(srv: Scripted, client: RegistryClient) -> None:
    amd = add_image(srv, "r", "amd64")
    win = add_image(srv, "r", "arm64", os_name="windows")
    add_index(srv, "r", [entry(amd.manifest, "amd64"), entry(win.manifest, "arm64")], tag="t")
    with pytest.raises(PlatformMismatchError) as second:
        client.resolve_platforms("r", "t", ["amd64", "arm64"])
    assert second.value.message == f"{srv.host}/r@{win.manifest} is a windows/arm64 image, not linux/arm64."
    with pytest.raises(PlatformMismatchError) as first:
        client.resolve_platforms("r", "t", ["s390x", "arm64"])
    assert first.value.message.startswith(f"{srv.host}/r:t is an index without a linux/s390x image")


def test_an_index_entry_that_is_an_index_is_refused(srv: Scripted, client: RegistryClient) -> None:
    amd = add_image(srv, "r", "amd64")
    inner = add_index(srv, "r", [entry(amd.manifest, "amd64")])
    outer = add_index(srv, "r", [entry(inner, "amd64")])
    with pytest.raises(PlatformMismatchError) as info:
        client.resolve_platform("r", outer, "amd64")
    assert failure(info) == (
        "PlatformMismatchError",
        f"{srv.host}/r@{outer}: its linux/amd64 entry {inner} is a {OCI_INDEX}, not an image manifest.",
        {},
    )


def test_an_index_entry_whose_config_is_another_platform_names_the_child(srv: Scripted, client: RegistryClient) -> None:
    arm = add_image(srv, "r", "arm64")
    idx = add_index(srv, "r", [entry(arm.manifest, "amd64")], media_type=DOCKER_MANIFEST_LIST)
    with pytest.raises(PlatformMismatchError) as info:
        client.resolve_platform("r", idx, "amd64")
    assert failure(info) == (
        "PlatformMismatchError",
        f"{srv.host}/r@{arm.manifest} is a linux/arm64 image, not linux/amd64.",
        {"digest": arm.manifest, "os": "linux", "architecture": "arm64"},
    )


def _manifest(srv: Scripted, config: dict[str, Any] | None, layers: Any, repo: str = "r") -> str:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": layers}
    if config is not None:
        doc["config"] = config
    return srv.put_manifest(repo, json.dumps(doc).encode(), OCI_MANIFEST)


@pytest.mark.parametrize(
    ("config", "layers", "shown"),
    [
        ({"mediaType": OCI_CONFIG, "digest": ZERO}, [{"mediaType": "application/vnd.in-toto+json"}], repr(OCI_CONFIG)),
        (None, [], "'(none)'"),
        ({"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": ZERO}, None, "'application/vnd.cncf.helm.config.v1+json'"),
    ],
    ids=["in-toto-layer", "no-config", "helm-artifact"],
)  # fmt: skip
def test_attestations_and_artifacts_are_not_images(
    srv: Scripted, client: RegistryClient, config: Any, layers: Any, shown: str
) -> None:
    digest = _manifest(srv, config, layers)
    with pytest.raises(PlatformMismatchError) as info:
        client.resolve_platform("r", digest, "amd64")
    assert failure(info) == (
        "PlatformMismatchError",
        f"{srv.host}/r@{digest} is an attestation or non-image artifact (config type {shown}), "
        "not a linux/amd64 image manifest.",
        {"digest": digest},
    )
    assert client.stats["requests"] == 1  # no config is fetched for an artifact


@pytest.mark.parametrize(("config", "shown"), [({"digest": "md5:abc"}, "'md5:abc'"), ({}, "''")])
def test_a_config_digest_that_is_not_sha256_is_refused(
    srv: Scripted, client: RegistryClient, config: dict[str, str], shown: str
) -> None:
    digest = _manifest(srv, {"mediaType": DOCKER_CONFIG, **config}, [])
    with pytest.raises(ImagePullError) as info:
        client.resolve_platform("r", digest, "amd64")
    assert failure(info) == (
        "ImagePullError",
        f"{srv.host}/r@{digest}: its config digest {shown} is not a sha256 digest.",
        {},
    )


def test_a_config_that_is_not_json_is_refused(srv: Scripted, client: RegistryClient) -> None:
    config = srv.put_blob("r", b"not json")
    digest = _manifest(srv, {"mediaType": OCI_CONFIG, "digest": config}, [{"digest": ZERO}])
    with pytest.raises(ImagePullError) as info:
        client.resolve_platform("r", digest, "amd64")
    assert failure(info) == ("ImagePullError", f"{srv.host}/r@{digest}: its config {config} is not JSON.", {})


def test_a_config_without_os_or_architecture_is_no_linux_image(srv: Scripted, client: RegistryClient) -> None:
    config = srv.put_blob("r", b"{}")
    digest = _manifest(srv, {"mediaType": OCI_CONFIG, "digest": config}, [])
    with pytest.raises(PlatformMismatchError) as info:
        client.resolve_platform("r", digest, "amd64")
    assert failure(info) == (
        "PlatformMismatchError",
        f"{srv.host}/r@{digest} is a None/None image, not linux/amd64.",
        {"digest": digest, "os": None, "architecture": None},
    )


def test_a_config_of_another_os_with_the_right_arch_is_refused(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", os_name="windows")
    with pytest.raises(PlatformMismatchError) as info:
        client.resolve_platform("r", img.manifest, "amd64")
    assert info.value.details == {"digest": img.manifest, "os": "windows", "architecture": "amd64"}


# -- _pick_index_entry ------------------------------------------------------------------------------


def _pick(entries: Any, arch: str) -> dict[str, Any]:
    return oci._pick_index_entry({"manifests": entries}, arch, "W")


def test_pick_skips_attestations_and_unknown_platforms_and_takes_the_first_match() -> None:
    d1, d2, d3 = (f"sha256:{c * 64}" for c in "123")
    attested = entry(d1, "amd64", annotations={"vnd.docker.reference.type": "attestation-manifest"})
    unknown = entry(d1, "unknown", "unknown")
    first, second = entry(d2, "amd64"), entry(d3, "amd64")
    assert _pick([attested, unknown, first, second], "amd64") is first
    assert _pick([{"digest": d1}, first], "amd64") is first  # no platform: unknown/unknown, skipped


def test_pick_prefers_no_variant_or_v8() -> None:
    d1, d2, d3 = (f"sha256:{c * 64}" for c in "123")
    v9 = entry(d1, "arm64", platform={"variant": "v9"})
    plain = entry(d2, "arm64")
    empty = entry(d2, "arm64", platform={"variant": ""})
    v8 = entry(d3, "arm64", platform={"variant": "v8"})
    assert _pick([v9, plain], "arm64") is plain
    assert _pick([v9, empty], "arm64") is empty
    assert _pick([v9, v8], "arm64") is v8
    assert _pick([v8, plain], "arm64") is v8  # both preferred: the first one listed


@pytest.mark.parametrize(
    ("index", "listed", "seen"),
    [
        (
            {
                "manifests": [
                    entry("sha256:" + "1" * 64, "amd64"),
                    entry("sha256:" + "2" * 64, "arm64", platform={"variant": "v8"}),
                    entry("sha256:" + "3" * 64, "s390x", "windows"),
                    {"digest": "sha256:" + "4" * 64, "platform": {"architecture": "ppc64le"}},
                    {"digest": "sha256:" + "5" * 64, "platform": {"os": "linux"}},
                    entry("sha256:" + "6" * 64, "riscv64", annotations={"vnd.docker.reference.type": "x"}),
                    {"digest": "sha256:" + "7" * 64},
                    entry("not-a-digest", "riscv64"),
                    {"platform": {"os": "linux", "architecture": "riscv64"}},
                ]
            },
            "linux/amd64, linux/arm64/v8, windows/s390x, unknown/ppc64le, linux/unknown, linux/riscv64, linux/riscv64",
            [
                "linux/amd64",
                "linux/arm64/v8",
                "windows/s390x",
                "unknown/ppc64le",
                "linux/unknown",
                "linux/riscv64",
                "linux/riscv64",
            ],
        ),
        ({"manifests": None}, "none (only attestation entries)", []),
        ({}, "none (only attestation entries)", []),
    ],
    ids=["mixed", "null", "absent"],
)
def test_pick_without_a_match_lists_the_platforms_it_saw(index: dict[str, Any], listed: str, seen: list[str]) -> None:
    with pytest.raises(PlatformMismatchError) as info:
        oci._pick_index_entry(index, "riscv64", "W")
    assert failure(info) == (
        "PlatformMismatchError",
        f"W is an index without a linux/riscv64 image; its platforms: {listed}.",
        {"platforms": seen},
    )


# -- a digest that is not a manifest ------------------------------------------------------------------


def test_a_digest_with_nothing_behind_it(srv: Scripted, client: RegistryClient) -> None:
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platform("r", ZERO, "amd64")
    assert failure(info) == (
        "ImageUnavailableError",
        f"{srv.host}/r@{ZERO}: no manifest (or blob) with that digest in {srv.host}/r.",
        {"registry": srv.host, "repository": "r", "digest": ZERO},
    )
    assert srv.paths() == [f"GET /v2/r/manifests/{ZERO}", f"HEAD /v2/r/blobs/{ZERO}"]


def test_a_layer_digest_is_named_a_layer(srv: Scripted, client: RegistryClient) -> None:
    layer = srv.put_blob("r", b"\x1f\x8b not json")
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platforms("r", layer, ["amd64"])
    assert failure(info) == (
        "ImageUnavailableError",
        f"{srv.host}/r@{layer} is a blob (a layer) in {srv.host}/r, not a manifest.",
        {"digest": layer},
    )
    assert srv.paths() == [f"GET /v2/r/manifests/{layer}", f"HEAD /v2/r/blobs/{layer}", f"GET /v2/r/blobs/{layer}"]


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"architecture": "amd64", "os": "linux", "rootfs": {}}, "linux/amd64"),
        ({"architecture": "arm64", "rootfs": {}}, "?/arm64"),
        ({"os": "linux", "rootfs": {}}, "linux/?"),
        ({"architecture": "amd64", "os": "linux"}, "linux/amd64"),
    ],
)
def test_a_config_digest_is_named_a_config(srv: Scripted, client: RegistryClient, body: Any, shown: str) -> None:
    config = srv.put_blob("r", json.dumps(body).encode())
    with pytest.raises(ConfigDigestError) as info:
        client.resolve_platform("r", config, "amd64")
    assert failure(info) == (
        "ConfigDigestError",
        f"{srv.host}/r@{config} is the image config ({shown}), not a manifest; a config cannot be pulled.",
        {"digest": config},
    )


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'{"hello": 1}', b'{"architecture": "amd64", "os": "linux", "layers": 1}', b"\xff"],
    ids=["list", "plain-object", "arch-os-with-layers", "binary"],
)
def test_other_json_blobs_are_named_layers(srv: Scripted, client: RegistryClient, body: bytes) -> None:
    digest = srv.put_blob("r", body)
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platform("r", digest, "amd64")
    assert info.value.message == f"{srv.host}/r@{digest} is a blob (a layer) in {srv.host}/r, not a manifest."


@pytest.mark.parametrize(
    "doc",
    [
        {"mediaType": OCI_MANIFEST},
        {"mediaType": DOCKER_MANIFEST_LIST, "architecture": "amd64", "os": "linux", "rootfs": {}},
        {"manifests": []},
        {"layers": [], "config": {}, "architecture": "amd64", "os": "linux"},
    ],
    ids=["typed", "typed-over-config", "guessed-index", "guessed-manifest"],
)
def test_a_blob_that_is_a_manifest_keeps_the_registrys_404(srv: Scripted, client: RegistryClient, doc: Any) -> None:
    digest = srv.put_blob("r", json.dumps(doc).encode())
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platform("r", digest, "amd64")
    assert failure(info) == (
        "ImageUnavailableError",
        f"{srv.host}/r@{digest} does not exist on {srv.host} (404: MANIFEST_UNKNOWN manifest unknown).",
        {"registry": srv.host, "status": 404},
    )


def test_a_blob_too_big_for_a_config_is_not_downloaded(srv: Scripted, client: RegistryClient) -> None:
    srv.script("HEAD", f"/v2/r/blobs/{ZERO}", Reply(200, headers={"Content-Length": str(MIB4 + 1)}))
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platform("r", ZERO, "amd64")
    assert info.value.message == f"{srv.host}/r@{ZERO} is a blob (a layer) in {srv.host}/r, not a manifest."
    assert srv.paths() == [f"GET /v2/r/manifests/{ZERO}", f"HEAD /v2/r/blobs/{ZERO}"]


@pytest.mark.parametrize("size", [MIB4, 0])
def test_a_blob_up_to_the_config_limit_is_inspected(srv: Scripted, client: RegistryClient, size: int) -> None:
    config = srv.put_blob("r", json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode())
    srv.script("HEAD", f"/v2/r/blobs/{config}", Reply(200, headers={"Content-Length": str(size)}))
    with pytest.raises(ConfigDigestError):
        client.resolve_platform("r", config, "amd64")
    assert srv.paths()[-1] == f"GET /v2/r/blobs/{config}"


def test_a_blob_without_a_size_is_a_layer(srv: Scripted, client: RegistryClient) -> None:
    srv.script("HEAD", f"/v2/r/blobs/{ZERO}", Reply(200, length=False))
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platform("r", ZERO, "amd64")
    assert info.value.message == f"{srv.host}/r@{ZERO} is a blob (a layer) in {srv.host}/r, not a manifest."
    assert len(srv.seen) == 2


def test_a_missing_tag_is_not_explained_as_a_blob(srv: Scripted, client: RegistryClient) -> None:
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platforms("r", "nope", ["amd64"])
    assert failure(info) == (
        "ImageUnavailableError",
        f"{srv.host}/r:nope does not exist on {srv.host} (404: MANIFEST_UNKNOWN manifest unknown).",
        {"registry": srv.host, "status": 404},
    )
    assert srv.paths() == ["GET /v2/r/manifests/nope"]


# -- distribution's 500 for a manifest GET of a blob digest ----------------------------------------------

E500 = Reply(500, errors_body("UNKNOWN", "unknown error"), {"Content-Type": "application/json"})


def test_a_500_for_a_config_digest_names_the_config_without_retrying(
    srv: Scripted, client: RegistryClient, lines: list[str]
) -> None:
    config = srv.put_blob("r", json.dumps({"architecture": "arm64", "os": "linux", "rootfs": {}}).encode())
    srv.script("GET", f"/v2/r/manifests/{config}", E500, E500, E500)
    with pytest.raises(ConfigDigestError) as info:
        client.get_manifest("r", config)
    assert info.value.message == (
        f"{srv.host}/r@{config} is the image config (linux/arm64), not a manifest; a config cannot be pulled."
    )
    assert srv.paths() == [f"GET /v2/r/manifests/{config}", f"HEAD /v2/r/blobs/{config}", f"GET /v2/r/blobs/{config}"]
    assert lines == []


def test_a_500_for_a_layer_digest_names_the_layer(srv: Scripted, client: RegistryClient) -> None:
    layer = srv.put_blob("r", b"binary layer")
    srv.script("GET", f"/v2/r/manifests/{layer}", E500, E500, E500)
    with pytest.raises(ImageUnavailableError) as info:
        client.get_manifest("r", layer)
    assert failure(info) == (
        "ImageUnavailableError",
        f"{srv.host}/r@{layer} is a blob (a layer) in {srv.host}/r, not a manifest.",
        {"digest": layer},
    )


def test_a_500_for_an_unknown_digest_is_retried_and_checked_before_each_retry(
    srv: Scripted, client: RegistryClient, lines: list[str]
) -> None:
    srv.script("GET", f"/v2/r/manifests/{ZERO}", E500, E500, E500)
    with pytest.raises(RegistryUnreachableError) as info:
        client.get_manifest("r", ZERO)
    where = f"{srv.host}/v2/r/manifests/{ZERO}"
    assert failure(info) == (
        "RegistryUnreachableError",
        f"GET {where} kept failing: 500 Internal Server Error after 3 attempts: UNKNOWN unknown error.",
        {"registry": srv.host, "status": 500},
    )
    head = f"HEAD /v2/r/blobs/{ZERO}"
    get = f"GET /v2/r/manifests/{ZERO}"
    assert srv.paths() == [get, head, get, head, get]
    assert lines == [
        f"retrying GET {where} after 500 Internal Server Error (attempt 2/3, in 0.0s)",
        f"retrying GET {where} after 500 Internal Server Error (attempt 3/3, in 0.0s)",
    ]


def test_a_500_for_a_tag_or_a_503_is_just_retried(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    srv.script("GET", "/v2/r/manifests/t", E500)
    srv.script("GET", f"/v2/r/manifests/{img.manifest}", Reply(503))
    assert client.get_manifest("r", img.manifest).digest == img.manifest
    assert client.get_manifest("r", "t").digest == img.manifest
    assert [s.method for s in srv.seen] == ["GET"] * 4
    assert client.stats == stats(requests=4, retries=2)


# ---------------------------------------------------------------------------------------------------
# Error mapping: statuses and registry error bodies become the errors a user reads
# ---------------------------------------------------------------------------------------------------


def test_401_without_a_challenge_is_an_anonymous_read_refusal(srv: Scripted, client: RegistryClient) -> None:
    srv.script("GET", "/v2/r/manifests/t", Reply(401))
    with pytest.raises(RegistryAuthError) as info:
        client.get_manifest("r", "t")
    assert failure(info) == (
        "RegistryAuthError",
        f"{srv.host} refused to let us read {srv.host}/r:t anonymously (REGISTRY_USERNAME/REGISTRY_PASSWORD unset): 401.",
        {"registry": srv.host, "status": 401},
    )
    assert client.stats == stats(requests=1)


def test_403_with_credentials_on_a_write_names_the_write(srv: Scripted) -> None:
    srv.script("PUT", "/v2/r/manifests/t", Reply(403, errors_body("DENIED", "requested access is denied")))
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.put_manifest("r", "t", b"{}", OCI_MANIFEST)
    assert failure(info) == (
        "RegistryAuthError",
        f"{srv.host} refused to let us write {srv.host}/r:t with the given credentials: "
        "403: DENIED requested access is denied.",
        {"registry": srv.host, "status": 403},
    )


def test_the_credentials_note_explains_an_anonymous_refusal(srv: Scripted) -> None:
    srv.script("GET", "/v2/r/tags/list", Reply(403))
    with RegistryClient(srv.host, retry=NOW, credentials_note="they belong to elsewhere") as c:
        with pytest.raises(RegistryAuthError) as info:
            c.list_tags("r")
    assert info.value.message == (
        f"{srv.host} refused to let us read tags of {srv.host}/r anonymously (they belong to elsewhere): 403."
    )


def test_other_statuses_are_pull_or_push_errors(srv: Scripted, client: RegistryClient) -> None:
    srv.script("GET", "/v2/r/manifests/t", Reply(400, errors_body("NAME_INVALID", "invalid repository name")))
    srv.script("PUT", "/v2/r/manifests/t", Reply(400, b"not json"))
    with pytest.raises(ImagePullError) as pull:
        client.get_manifest("r", "t")
    with pytest.raises(ImagePushError) as push:
        client.put_manifest("r", "t", b"{}", OCI_MANIFEST)
    assert failure(pull) == (
        "ImagePullError",
        f"GET {srv.host}/r:t failed: 400: NAME_INVALID invalid repository name.",
        {"registry": srv.host, "status": 400},
    )
    assert failure(push) == (
        "ImagePushError",
        f"PUT {srv.host}/r:t failed: 400.",
        {"registry": srv.host, "status": 400},
    )
    assert client.stats == stats(requests=2)


def test_error_for_without_a_subject_names_host_and_path_only(client: RegistryClient) -> None:
    url = "http://user:pw@[::1]:5000/v2/r/blobs/x?token=secret"
    response = httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
    error = client._error_for("GET", url, response, write=False, what="")
    assert (type(error).__name__, error.message) == (
        "ImageUnavailableError",
        f"[::1]:5000/v2/r/blobs/x does not exist on {client.registry} (404: BLOB_UNKNOWN).",
    )


@pytest.mark.parametrize(
    ("content", "suffix"),
    [
        (b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}', ": MANIFEST_UNKNOWN manifest unknown"),
        (b'{"errors": [{"code": "DENIED"}]}', ": DENIED"),
        (b'{"errors": [{"message": "only a message"}]}', ": only a message"),
        (b'{"errors": [{"code": 5, "message": ""}]}', ": 5"),
        (b'{"errors": [{"detail": "x"}]}', ""),
        (b'{"errors": [{"code": "A"}, {"code": "B"}]}', ": A"),
        (b'{"errors": ["text"]}', ""),
        (b'{"errors": []}', ""),
        (b'{"errors": "text"}', ""),
        (b'{"errors": {"code": "X"}}', ""),
        (b'[{"code": "X"}]', ""),
        (b"{}", ""),
        (b"<html>", ""),
        (b"", ""),
        (json.dumps({"errors": [{"code": "C" * 70, "message": "m" * 250}]}).encode(), ": " + "C" * 60 + " " + "m" * 200),
    ],
)  # fmt: skip
def test_registry_error_suffix(content: bytes, suffix: str) -> None:
    response = httpx.Response(400, content=content, headers={"WWW-Authenticate": 'Bearer realm="x"'})
    assert oci._registry_error_suffix(response) == suffix


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (httpx.ConnectTimeout("t"), "a timeout"),
        (httpx.ReadTimeout("t"), "a timeout"),
        (httpx.ConnectError("c"), "a connection error (refused or unreachable)"),
        (httpx.RemoteProtocolError("r"), "the connection closing early (EOF)"),
        (httpx.ReadError("r"), "a connection reset"),
        (httpx.WriteError("w"), "a connection reset"),
        (httpx.ProxyError("p"), "ProxyError"),
        (httpx.UnsupportedProtocol("u"), "UnsupportedProtocol"),
    ],
)
def test_transport_errors_are_described_in_words(exc: httpx.TransportError, text: str) -> None:
    assert oci._describe_transport_error(exc) == text


# ---------------------------------------------------------------------------------------------------
# Retries and backoff
# ---------------------------------------------------------------------------------------------------


def test_retries_print_one_line_each_and_count(srv: Scripted, client: RegistryClient, lines: list[str]) -> None:
    blob = srv.put_blob("r", b"data")
    path = f"/v2/r/blobs/{blob}"
    srv.script("GET", path, Reply(503, reason="Slow Down"), Reply(429, headers={"Retry-After": "0"}))
    assert client.get_blob("r", blob) == b"data"
    assert lines == [
        f"retrying GET {srv.host}{path} after 503 Slow Down (attempt 2/3, in 0.0s)",
        f"retrying GET {srv.host}{path} after 429 Too Many Requests (attempt 3/3, in 0.0s)",
    ]
    assert client.stats == stats(requests=3, retries=2)


@pytest.mark.parametrize("status", [408, 429, 499, 500, 502, 503, 504, 522])
def test_every_retry_status_is_retried_until_the_attempts_run_out(
    srv: Scripted, client: RegistryClient, lines: list[str], status: int
) -> None:
    srv.script("GET", "/v2/r/tags/list", *[Reply(status, reason="")] * 3)
    with pytest.raises(RegistryUnreachableError) as info:
        client.list_tags("r")
    assert failure(info) == (
        "RegistryUnreachableError",
        f"GET {srv.host}/v2/r/tags/list kept failing: {status} after 3 attempts.",
        {"registry": srv.host, "status": status},
    )
    assert len(srv.seen) == 3 and len(lines) == 2


def test_the_waits_grow_by_the_factor(srv: Scripted, lines: list[str]) -> None:
    srv.script("GET", "/v2/", Reply(502), Reply(502))
    start = time.monotonic()
    with RegistryClient(srv.host, retry=RetryPolicy(base_delay=0.04, factor=4.0), progress=lines.append) as c:
        c.ping()
    assert time.monotonic() - start >= 0.2
    assert lines == [
        f"retrying GET {srv.host}/v2/ after 502 Bad Gateway (attempt 2/3, in 0.0s)",
        f"retrying GET {srv.host}/v2/ after 502 Bad Gateway (attempt 3/3, in 0.2s)",
    ]


def test_retry_after_replaces_the_wait_up_to_the_bound(srv: Scripted, lines: list[str]) -> None:
    past = email.utils.format_datetime(email.utils.localtime().replace(year=2001), usegmt=False)
    srv.script("GET", "/v2/", Reply(503, headers={"Retry-After": "100"}), Reply(503, headers={"Retry-After": past}))
    policy = RetryPolicy(base_delay=50.0, max_retry_after=0.2)
    start = time.monotonic()
    with RegistryClient(srv.host, retry=policy, progress=lines.append) as c:
        c.ping()
    assert 0.2 <= time.monotonic() - start < 5
    assert lines == [
        f"retrying GET {srv.host}/v2/ after 503 Service Unavailable (attempt 2/3, in 0.2s)",
        f"retrying GET {srv.host}/v2/ after 503 Service Unavailable (attempt 3/3, in 0.0s)",
    ]


def test_a_dropped_connection_is_retried_then_unreachable(
    srv: Scripted, client: RegistryClient, lines: list[str]
) -> None:
    srv.script("GET", "/v2/", DROP, DROP, DROP)
    with pytest.raises(RegistryUnreachableError) as info:
        client.ping()
    assert failure(info) == (
        "RegistryUnreachableError",
        f"GET {srv.host}/v2/ failed after 3 attempts: the connection closing early (EOF).",
        {"registry": srv.host},
    )
    assert lines == [
        f"retrying GET {srv.host}/v2/ after the connection closing early (EOF) (attempt 2/3, in 0.0s)",
        f"retrying GET {srv.host}/v2/ after the connection closing early (EOF) (attempt 3/3, in 0.0s)",
    ]
    assert client.stats == stats(requests=3, retries=2)


def test_a_drop_then_an_answer_succeeds(srv: Scripted, client: RegistryClient) -> None:
    srv.script("GET", "/v2/", DROP)
    client.ping()
    assert client.stats == stats(requests=2, retries=1)


def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RegistryClient(f"127.0.0.1:{port}", retry=RetryPolicy(attempts=0), progress=lambda _m: None) as c:
        with pytest.raises(RegistryUnreachableError) as info:
            c.ping()
    assert failure(info) == (
        "RegistryUnreachableError",
        f"GET 127.0.0.1:{port}/v2/ failed after 1 attempts: a connection error (refused or unreachable).",
        {"registry": f"127.0.0.1:{port}"},
    )


def test_a_slow_answer_times_out(srv: Scripted) -> None:
    srv.script("GET", "/v2/", Reply(200, b"{}", delay=1.0))
    with RegistryClient(srv.host, timeout=0.2, retry=RetryPolicy(attempts=1), progress=lambda _m: None) as c:
        with pytest.raises(RegistryUnreachableError) as info:
            c.ping()
    assert info.value.message == f"GET {srv.host}/v2/ failed after 1 attempts: a timeout."


def test_an_unsupported_redirect_fails_at_once(srv: Scripted, client: RegistryClient, lines: list[str]) -> None:
    blob = ZERO
    srv.script("GET", f"/v2/r/blobs/{blob}", Reply(307, headers={"Location": "ftp://storage.example/blob"}))
    with pytest.raises(RegistryUnreachableError) as info:
        client.get_blob("r", blob)
    assert failure(info) == (
        "RegistryUnreachableError",
        f"GET {srv.host}/v2/r/blobs/{blob} failed: UnsupportedProtocol.",
        {},
    )
    assert lines == [] and len(srv.seen) == 1


def test_a_redirect_to_storage_is_followed(srv: Scripted, client: RegistryClient) -> None:
    blob = srv.put_blob("r", b"stored elsewhere")
    srv.script("GET", f"/v2/r/blobs/{blob}", Reply(307, headers={"Location": f"/v2/r/blobs/{blob}?storage=1"}))
    assert client.get_blob("r", blob) == b"stored elsewhere"
    assert srv.paths() == [f"GET /v2/r/blobs/{blob}", f"GET /v2/r/blobs/{blob}?storage=1"]


# ---------------------------------------------------------------------------------------------------
# Bounded answers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_an_answer_over_the_limit_is_cut_off(
    srv: Scripted, client: RegistryClient, monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "10")
    big, fits = srv.put_blob("r", b"x" * 11), srv.put_blob("r", b"y" * 10)
    if not declared:
        for digest in (big, fits):
            body = srv.blobs[("r", digest)]
            srv.script("GET", f"/v2/r/blobs/{digest}", Reply(200, body, {"Connection": "close"}, length=False))
    assert client.get_blob("r", fits) == b"y" * 10
    with pytest.raises(ImagePullError) as info:
        client.get_blob("r", big)
    assert failure(info) == (
        "ImagePullError",
        f"GET blob {srv.host}/r@{big}: the registry's answer is larger than the 10-byte limit for it; "
        "refusing to read more.",
        {"registry": srv.host, "limit": 10},
    )
    assert info.value.remedy == (
        "Check the registry (or a proxy in front of it); if the answer is genuine, raise "
        "THEORY_REGISTRY_MAX_RESPONSE_BYTES=<bytes> (manifests and configs have fixed limits of "
        "4194304 and 4194304 bytes)."
    )
    assert client.stats == stats(requests=2)


def test_a_head_is_not_limited_by_its_declared_length(
    srv: Scripted, client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "10")
    blob = srv.put_blob("r", b"z" * 50)
    assert client.blob_size("r", blob) == 50


def test_get_blob_max_bytes_bounds_the_read(srv: Scripted, client: RegistryClient) -> None:
    blob = srv.put_blob("r", b"q" * 20)
    with pytest.raises(ImagePullError) as info:
        client.get_blob("r", blob, max_bytes=19)
    assert info.value.message == (
        f"GET blob {srv.host}/r@{blob}: the registry's answer is larger than the 19-byte limit for it; "
        "refusing to read more."
    )
    assert client.get_blob("r", blob, max_bytes=20) == b"q" * 20
    # cached now, but never handed to a caller that allows fewer bytes
    with pytest.raises(ImagePullError):
        client.get_blob("r", blob, max_bytes=19)
    assert client.get_blob("r", blob) == b"q" * 20
    assert client.stats == stats(requests=3, cache_hits=1)


def test_max_response_bytes_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(oci.MAX_RESPONSE_BYTES_ENV, raising=False)
    assert oci._max_response_bytes() == 64 * 1024 * 1024
    for raw, want in [(" 100 ", 100), ("1", 1), ("0", 64 << 20), ("-5", 64 << 20), ("lots", 64 << 20), ("", 64 << 20)]:
        monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, raw)
        assert oci._max_response_bytes() == want, raw


# ---------------------------------------------------------------------------------------------------
# Auth: Basic and bearer challenges, token service, realm trust
# ---------------------------------------------------------------------------------------------------

UNAUTHORIZED = errors_body("UNAUTHORIZED", "authentication required")


def basic_of(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bearer_guard(srv: Scripted, valid: set[str], challenge: str) -> None:
    """/v2/ paths need `Bearer <one of valid>`; others get a 401 with `challenge`."""

    def guard(s: Seen) -> Reply | None:
        if s.path.startswith("/v2/") and s.auth.removeprefix("Bearer ") not in valid:
            return Reply(401, UNAUTHORIZED, {"WWW-Authenticate": challenge, "Content-Type": "application/json"})
        return None

    srv.guard = guard


def token_reply(token: str) -> Reply:
    return Reply(200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"})


def test_bearer_challenge_fetches_a_token_with_credentials_once(srv: Scripted) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    token = "tok-" + uuid.uuid4().hex
    bearer_guard(srv, {token}, f'Bearer realm="http://{srv.host}/token",service="svc one/x",scope="repository:r:pull"')
    srv.script("GET", "/token", token_reply(token))
    with RegistryClient(srv.host, credentials=("u", "p w"), retry=NOW, progress=lambda _m: None) as c:
        assert c.get_manifest("r", "t").digest == img.manifest
        assert c.get_manifest("r", "t").digest == img.manifest
        assert c.stats == stats(requests=4, token_requests=1)
    assert srv.paths() == [
        "GET /v2/r/manifests/t",
        "GET /token?service=svc%20one%2Fx&scope=repository:r:pull",
        "GET /v2/r/manifests/t",
        "GET /v2/r/manifests/t",
    ]
    assert [s.auth for s in srv.seen] == ["", basic_of("u", "p w"), f"Bearer {token}", f"Bearer {token}"]
    assert secret_values.scrub(f"the token is {token}.") == "the token is ***."


def test_anonymous_bearer_token_is_asked_without_credentials(srv: Scripted) -> None:
    bearer_guard(srv, {"anon-token"}, f'Bearer realm="http://{srv.host}/token?account=x"')
    srv.script("GET", "/token", Reply(200, b'{"access_token": "anon-token"}'))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        assert c.list_tags("r") == ["v1", "v2"]
    assert srv.paths() == ["GET /v2/r/tags/list", "GET /token?account=x&scope=repository:r:pull", "GET /v2/r/tags/list"]
    assert srv.seen[1].auth == ""


def test_a_push_token_also_serves_pulls(srv: Scripted) -> None:
    bearer_guard(srv, {"push-token"}, f'Bearer realm="http://{srv.host}/token",service="s",scope="repository:r:pull"')
    srv.script("GET", "/token", token_reply("push-token"))
    data = b"pushed bytes"
    digest = sha(data)
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        assert c.upload_blob("r", digest, data) is True
        assert c.get_blob("r", digest) == b"pushed bytes"
        assert c.blob_exists("r", digest) is True
        assert c.stats == stats(requests=7, blob_uploads=1, token_requests=1)
    assert srv.paths()[:3] == [
        f"HEAD /v2/r/blobs/{digest}",
        "GET /token?service=s&scope=repository:r:pull,push",
        f"HEAD /v2/r/blobs/{digest}",
    ]
    assert srv.paths()[-2:] == [f"GET /v2/r/blobs/{digest}", f"HEAD /v2/r/blobs/{digest}"]


def test_a_token_the_registry_keeps_refusing_is_fetched_anew_once_then_fails(srv: Scripted) -> None:
    bearer_guard(srv, set(), f'Bearer realm="http://{srv.host}/token",service="s",scope="repository:r:pull"')
    issued = iter(["first-token", "second-token", "third-token"])
    srv.script("GET", "/token", *[lambda _s: token_reply(next(issued))] * 3)
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.get_manifest("r", "t")
        assert c.stats == stats(requests=5, token_requests=2)
    assert failure(info) == (
        "RegistryAuthError",
        f"{srv.host} refused to let us read {srv.host}/r:t with the given credentials: "
        "401: UNAUTHORIZED authentication required.",
        {"registry": srv.host, "status": 401},
    )
    assert [s.auth for s in srv.seen if s.path != "/token"] == ["", "Bearer first-token", "Bearer second-token"]


def test_a_challenge_for_another_repository_asks_for_both_scopes(srv: Scripted) -> None:
    bearer_guard(srv, {"both"}, f'Bearer realm="http://{srv.host}/token",scope="repository:base:pull"')
    srv.script("GET", "/token", token_reply("both"))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        assert c.list_tags("r") == ["v1", "v2"]
        assert c.list_tags("r") == ["v1", "v2"]  # the token is kept under our own scope too
        assert c.stats == stats(requests=4, token_requests=1)
    assert srv.paths()[1] == "GET /token?scope=repository:r:pull&scope=repository:base:pull"


def test_a_mount_asks_one_token_for_both_repositories(srv: Scripted) -> None:
    bearer_guard(srv, {"mount-token"}, f'Bearer realm="http://{srv.host}/token",service="s"')
    srv.script("GET", "/token", token_reply("mount-token"))
    blob = srv.put_blob("base", b"shared layer")
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        assert c.mount_blob("app/x", blob, "base/img") is False
        assert c.stats == stats(requests=3, token_requests=1)
    assert srv.paths() == [
        f"POST /v2/app/x/blobs/uploads/?mount={blob.replace(':', '%3A')}&from=base/img",
        "GET /token?service=s&scope=repository:app/x:pull,push&scope=repository:base/img:pull",
        f"POST /v2/app/x/blobs/uploads/?mount={blob.replace(':', '%3A')}&from=base/img",
    ]


def test_ping_against_a_bearer_registry_sends_the_token(srv: Scripted) -> None:
    # /v2/ is challenged without a scope: the token got for it must be sent on the retry (it once was
    # dropped, and ping failed after two token fetches)
    bearer_guard(srv, {"ping-token"}, f'Bearer realm="http://{srv.host}/token",service="s"')
    srv.script("GET", "/token", token_reply("ping-token"), token_reply("ping-token"))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        c.ping()
    assert srv.paths() == ["GET /v2/", "GET /token?service=s", "GET /v2/"]


def test_a_token_answer_that_is_a_json_array_is_no_token(srv: Scripted) -> None:
    bearer_guard(srv, set(), f'Bearer realm="http://{srv.host}/token"')
    srv.script("GET", "/token", Reply(200, b'["not", "an", "object"]'))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.list_tags("r")
    assert info.value.message == f"{srv.host}: the token service {srv.host}/token returned no token."


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (Reply(200, b"{}"), "RegistryAuthError", "{host}: the token service {host}/token returned no token."),
        (Reply(200, b"not json"), "RegistryAuthError", "{host}: the token service {host}/token returned no token."),
        (Reply(200, b'{"token": ""}'), "RegistryAuthError", "{host}: the token service {host}/token returned no token."),
        (Reply(200, b'{"token": 5}'), "RegistryAuthError", "{host}: the token service {host}/token returned no token."),
        *[
            (
                Reply(200, json.dumps({"token": bad}).encode()),
                "RegistryAuthError",
                "{host}: the token service {host}/token returned a token that cannot be sent in an HTTP header "
                "(control characters or whitespace).",
            )
            for bad in (" padded", "tab\there", "t\u00f6ken")
        ],
        (Reply(401), "RegistryAuthError", "{host}: the token service {host}/token refused the given credentials for scope 'repository:r:pull' (401)."),
        (Reply(403), "RegistryAuthError", "{host}: the token service {host}/token refused the given credentials for scope 'repository:r:pull' (403)."),
        (Reply(404), "RegistryUnreachableError", "{host}: the token service {host}/token answered 404."),
    ],
)  # fmt: skip
def test_token_service_answers(srv: Scripted, reply: Reply, error: str, message: str) -> None:
    bearer_guard(srv, set(), f'Bearer realm="http://{srv.host}/token?",scope="repository:r:pull"')
    srv.script("GET", "/token", reply)
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(Exception) as info:
            c.list_tags("r")
        assert c.stats == stats(requests=2, token_requests=1)
    assert (type(info.value).__name__, info.value.message) == (error, message.format(host=srv.host))
    assert srv.paths()[1] == "GET /token?&scope=repository:r:pull"


def test_an_anonymous_token_refusal_says_why_there_were_no_credentials(srv: Scripted) -> None:
    bearer_guard(srv, set(), f'Bearer realm="http://{srv.host}/token",scope="repository:r:push"')
    srv.script("GET", "/token", Reply(401))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None, credentials_note="NOTE") as c:
        with pytest.raises(RegistryAuthError) as info:
            c.list_tags("r")
    assert info.value.message == (
        f"{srv.host}: the token service {srv.host}/token refused anonymous access (NOTE) "
        "for scope 'repository:r:pull,push' (401)."
    )


def test_a_failing_token_service_is_retried(srv: Scripted, lines: list[str]) -> None:
    bearer_guard(srv, {"late"}, f'Bearer realm="http://{srv.host}/token"')
    srv.script("GET", "/token", Reply(503), DROP, token_reply("late"))
    with RegistryClient(srv.host, retry=NOW, progress=lines.append) as c:
        assert c.list_tags("r") == ["v1", "v2"]
        assert c.stats == stats(requests=5, retries=2, token_requests=3)
    assert lines == [
        f"retrying GET {srv.host}/token after 503 (attempt 2/3, in 0.0s)",
        f"retrying GET {srv.host}/token after the connection closing early (EOF) (attempt 3/3, in 0.0s)",
    ]


def test_a_token_service_that_stays_down(srv: Scripted, lines: list[str]) -> None:
    bearer_guard(srv, set(), f'Bearer realm="http://{srv.host}/token"')
    srv.script("GET", "/token", Reply(503), Reply(503), Reply(503), DROP, DROP, DROP)
    with RegistryClient(srv.host, retry=NOW, progress=lines.append) as c:
        with pytest.raises(RegistryUnreachableError) as first:
            c.list_tags("r")
        with pytest.raises(RegistryUnreachableError) as second:
            c.list_tags("r")
    assert first.value.message == f"{srv.host}: the token service {srv.host}/token answered 503."
    assert second.value.message == (
        f"GET {srv.host}/token (token) failed after 3 attempts: the connection closing early (EOF)."
    )
    assert len(lines) == 4


def test_an_endless_token_answer_is_cut_off(srv: Scripted) -> None:
    bearer_guard(srv, set(), f'Bearer realm="http://{srv.host}/token"')
    srv.script("GET", "/token", Reply(200, b"x" * (1024 * 1024 + 1)))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(ImagePullError) as info:
            c.list_tags("r")
    assert failure(info) == (
        "ImagePullError",
        "GET a token: the registry's answer is larger than the 1048576-byte limit for it; refusing to read more.",
        {"registry": srv.host, "limit": 1048576},
    )


def test_a_realm_that_is_not_http_is_refused(srv: Scripted) -> None:
    bearer_guard(srv, set(), f'Bearer realm="ftp://{srv.host}/token"')
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as anonymous:
        with pytest.raises(RegistryAuthError) as info:
            anonymous.list_tags("r")
    assert failure(info) == ("RegistryAuthError", f"{srv.host}: the registry's token realm is not an http(s) URL.", {})
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as refused:
            c.list_tags("r")
    assert failure(refused) == (
        "RegistryAuthError",
        f"{srv.host}: its token service {srv.host}/token is reached over ftp://, not https://; "
        "refusing to send REGISTRY_USERNAME/REGISTRY_PASSWORD there.",
        {"registry": srv.host},
    )
    assert refused.value.remedy == (
        f"If that token service is trusted for {srv.host}, allow it with "
        "THEORY_ALLOW_TOKEN_REALM=<its host> (comma-separated for several)."
    )
    assert len(srv.seen) == 2  # no token request went anywhere


def test_a_realm_on_another_host_gets_no_credentials_unless_allowed(
    srv: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(oci.ALLOW_TOKEN_REALM_ENV, raising=False)
    bearer_guard(srv, {"ok-token"}, f'Bearer realm="http://localhost:{srv.port}/token"')
    srv.script("GET", "/token", token_reply("ok-token"))
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.list_tags("r")
        assert info.value.message == (
            f"{srv.host}: its token service localhost:{srv.port}/token is on another host (localhost) than the "
            "registry (127.0.0.1); refusing to send REGISTRY_USERNAME/REGISTRY_PASSWORD there."
        )
        monkeypatch.setenv(oci.ALLOW_TOKEN_REALM_ENV, f" example.com , LOCALHOST:{srv.port}")
        assert c.list_tags("r") == ["v1", "v2"]
    assert srv.seen[2].auth == basic_of("u", "p")


def test_basic_challenge_sends_credentials_from_then_on(srv: Scripted) -> None:
    good = basic_of("u", "p")
    srv.guard = lambda s: None if s.auth == good else Reply(401, b"", {"WWW-Authenticate": 'Basic realm="reg"'})
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        assert c.list_tags("r") == ["v1", "v2"]
        assert c.list_tags("r") == ["v1", "v2"]
        assert c.stats == stats(requests=3)
    assert [s.auth for s in srv.seen] == ["", good, good]


def test_basic_challenge_with_wrong_or_no_credentials_fails_fast(srv: Scripted) -> None:
    srv.guard = lambda s: Reply(401, UNAUTHORIZED, {"WWW-Authenticate": 'Basic realm="reg"'})
    with RegistryClient(srv.host, credentials=("u", "wrong"), retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as wrong:
            c.list_tags("r")
        assert c.stats == stats(requests=2)
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as anonymous:
        with pytest.raises(RegistryAuthError) as none:
            anonymous.list_tags("r")
        assert anonymous.stats == stats(requests=1)
    assert wrong.value.message == (
        f"{srv.host} refused to let us read tags of {srv.host}/r with the given credentials: "
        "401: UNAUTHORIZED authentication required."
    )
    assert none.value.message == (
        f"{srv.host} refused to let us read tags of {srv.host}/r anonymously "
        "(REGISTRY_USERNAME/REGISTRY_PASSWORD unset): 401: UNAUTHORIZED authentication required."
    )


@pytest.mark.parametrize("challenge", ["Negotiate", "Bearer service=x", ""])
def test_challenges_that_cannot_be_answered_fail_at_once(srv: Scripted, challenge: str) -> None:
    srv.guard = lambda s: Reply(401, b"", {"WWW-Authenticate": challenge} if challenge else {})
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError):
            c.list_tags("r")
        assert c.stats == stats(requests=1)


@pytest.mark.parametrize(
    ("registry", "realm", "refusal"),
    [
        ("ghcr.io", "https://ghcr.io/token", None),
        ("ghcr.io", "https://GHCR.IO/token", None),
        ("GHCR.io", "https://ghcr.io/token", None),
        ("docker.io", "https://auth.docker.io/token", None),
        ("registry-1.docker.io", "https://auth.docker.io/token", None),
        ("index.docker.io", "https://auth.docker.io/token", None),
        ("ghcr.io", "https://auth.docker.io/token", "on another host (auth.docker.io) than the registry (ghcr.io)"),
        ("ghcr.io", "http://ghcr.io/token", "reached over http://, not https://"),
        ("ghcr.io", "HTTPS://ghcr.io/token", None),
        ("ghcr.io", "//ghcr.io/token", "reached over ?://, not https://"),
        ("ghcr.io", "https://evil.example/token", "on another host (evil.example) than the registry (ghcr.io)"),
        ("ghcr.io", "https:///token", "on another host (?) than the registry (ghcr.io)"),
        ("ghcr.io", "https://ghcr.io:99999/token", "not a valid URL"),
        ("registry.example.com:5000", "https://registry.example.com/token", None),
        ("127.0.0.1:5000", "http://127.0.0.1:5001/token", None),
        ("127.0.0.1:5000", "http://localhost:5000/token", "on another host (localhost) than the registry (127.0.0.1)"),
        ("localhost:5000", "http://localhost/token", None),
        ("[::1]:5000", "http://[::1]:5000/token", None),
    ],
)  # fmt: skip
def test_realm_trust(registry: str, realm: str, refusal: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(oci.ALLOW_TOKEN_REALM_ENV, raising=False)
    assert RegistryClient(registry)._realm_refusal(realm) == refusal


def test_realm_trust_of_a_tls_loopback_registry_and_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(oci.ALLOW_TOKEN_REALM_ENV, raising=False)
    tls = RegistryClient("127.0.0.1:5000", insecure=False)
    assert tls._realm_refusal("http://127.0.0.1/token") == "reached over http://, not https://"
    assert tls._realm_refusal("https://127.0.0.1/token") is None
    plain = RegistryClient("registry.internal", insecure=True)
    assert plain._realm_refusal("http://registry.internal/token") == "reached over http://, not https://"
    monkeypatch.setenv(oci.ALLOW_TOKEN_REALM_ENV, "auth.example:8443,,other.example")
    ghcr = RegistryClient("ghcr.io")
    assert ghcr._realm_refusal("https://auth.example:8443/token") is None
    assert ghcr._realm_refusal("http://other.example/token") is None
    assert ghcr._realm_refusal("https://auth.example/token") == (
        "on another host (auth.example) than the registry (ghcr.io)"
    )


# ---------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------


def test_get_manifest_by_tag_proves_and_keeps_the_body_by_digest(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    want = Manifest(img.manifest, OCI_MANIFEST, img.body, json.loads(img.body))
    assert client.get_manifest("r", "t") == want
    assert client.get_manifest("r", img.manifest) == want  # proved above: not asked again
    assert client.get_manifest("r", "t") == want  # a tag may move: always asked
    assert srv.paths() == ["GET /v2/r/manifests/t", "GET /v2/r/manifests/t"]
    assert client.stats == stats(requests=2, cache_hits=1)
    assert want.is_image and not want.is_index


def _serve(srv: Scripted, body: bytes, content_type: str | None, ref: str = "t") -> None:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    srv.script("GET", f"/v2/r/manifests/{ref}", Reply(200, body, headers))


@pytest.mark.parametrize(
    ("doc", "content_type", "media_type"),
    [
        ({"schemaVersion": 2, "config": {}, "layers": []}, f"{DOCKER_MANIFEST}; charset=utf-8", DOCKER_MANIFEST),
        ({"schemaVersion": 2, "config": {}, "layers": []}, "application/json", OCI_MANIFEST),
        ({"schemaVersion": 2, "manifests": []}, None, OCI_INDEX),
        ({"mediaType": "application/vnd.other", "manifests": []}, OCI_MANIFEST, OCI_INDEX),
        ({"mediaType": DOCKER_MANIFEST_LIST, "manifests": []}, OCI_MANIFEST, DOCKER_MANIFEST_LIST),
    ],
)
def test_get_manifest_media_type_comes_from_body_then_header_then_shape(
    srv: Scripted, client: RegistryClient, doc: Any, content_type: str | None, media_type: str
) -> None:
    body = json.dumps(doc).encode()
    _serve(srv, body, content_type)
    assert client.get_manifest("r", "t") == Manifest(sha(body), media_type, body, doc)


@pytest.mark.parametrize(
    ("body", "content_type", "error", "message"),
    [
        (b"{not json", OCI_MANIFEST, "ImagePullError", "{what}: the registry served a manifest that is not JSON."),
        (b"[1]", OCI_MANIFEST, "ImagePullError", "{what}: the registry served a manifest that is not a JSON object."),
        (b'{"schemaVersion": 2}', "text/plain", "ImagePullError", "{what}: unsupported manifest type 'text/plain'."),
        (b'{"schemaVersion": 2}', None, "ImagePullError", "{what}: unsupported manifest type '(none)'."),
        (b'{"mediaType": "x/y", "layers": []}', None, "ImagePullError", "{what}: unsupported manifest type 'x/y'."),
        (b'{"architecture": "amd64", "os": "linux"}', "application/json", "ConfigDigestError",
         "{what} is an image config, not a manifest; a config cannot be pulled."),
        (b'{"rootfs": {}}', None, "ConfigDigestError", "{what} is an image config, not a manifest; a config cannot be pulled."),
    ],
)  # fmt: skip
def test_get_manifest_refuses_what_is_no_manifest(
    srv: Scripted, client: RegistryClient, body: bytes, content_type: str | None, error: str, message: str
) -> None:
    _serve(srv, body, content_type)
    with pytest.raises(TheoryDeployError) as info:
        client.get_manifest("r", "t")
    details = {"digest": sha(body)} if error == "ConfigDigestError" else {}
    assert failure(info) == (error, message.format(what=f"{srv.host}/r:t"), details)
    # nothing unaccepted is kept: asked again, the registry is asked again
    _serve(srv, body, content_type)
    with pytest.raises(TheoryDeployError):
        client.get_manifest("r", sha(body))
    assert len(srv.seen) == 2


def test_get_manifest_checks_the_digest_asked_for_and_the_header(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    other = b'{"mediaType": "' + OCI_INDEX.encode() + b'", "manifests": []}'
    srv.script("GET", f"/v2/r/manifests/{img.manifest}", Reply(200, other, {"Content-Type": OCI_INDEX}))
    with pytest.raises(DigestIntegrityError) as asked:
        client.get_manifest("r", img.manifest)
    assert failure(asked) == (
        "DigestIntegrityError",
        f"{srv.host}/r@{img.manifest}: the manifest served hashes to {sha(other)}, not to the digest asked for.",
        {"requested": img.manifest, "actual": sha(other)},
    )
    srv.script("GET", "/v2/r/manifests/t", Reply(200, img.body, {"Docker-Content-Digest": ZERO}))
    with pytest.raises(DigestIntegrityError) as header:
        client.get_manifest("r", "t")
    assert failure(header) == (
        "DigestIntegrityError",
        f"{srv.host}/r:t: the manifest served hashes to {img.manifest}, but the registry's "
        f"Docker-Content-Digest says {ZERO}.",
        {"header": ZERO, "actual": img.manifest},
    )
    assert client.get_manifest("r", img.manifest).digest == img.manifest
    assert client.stats == stats(requests=3)


def test_head_manifest_reads_digest_type_and_size_from_the_headers(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    assert client.head_manifest("r", "t") == ManifestHead(img.manifest, OCI_MANIFEST, len(img.body))
    hdrs = {"Content-Type": f"{OCI_INDEX} ; q=1", "Content-Length": "77"}
    srv.script("HEAD", f"/v2/r/manifests/{img.manifest}", Reply(200, headers=hdrs))
    assert client.head_manifest("r", img.manifest) == ManifestHead(img.manifest, OCI_INDEX, 77)
    srv.script("HEAD", f"/v2/r/manifests/{img.manifest}", Reply(200, headers={"Content-Type": OCI_INDEX}, length=False))
    assert client.head_manifest("r", img.manifest) == ManifestHead(img.manifest, OCI_INDEX, 0)
    srv.script("HEAD", "/v2/r/manifests/t", Reply(200, headers={"Docker-Content-Digest": ZERO, "Content-Length": "5"}))
    assert client.head_manifest("r", "t") == ManifestHead(ZERO, "", 5)  # no Content-Type: no type
    assert [s.headers["accept"] for s in srv.seen] == [oci.ACCEPT_MANIFESTS] * 4
    assert [s.method for s in srv.seen] == ["HEAD"] * 4


def test_head_manifest_of_a_tag_without_digest_header_falls_back_to_get(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    srv.script("HEAD", "/v2/r/manifests/t", Reply(200, headers={"Content-Type": "x/y", "Content-Length": "1"}))
    assert client.head_manifest("r", "t") == ManifestHead(img.manifest, OCI_MANIFEST, len(img.body))
    assert srv.paths() == ["HEAD /v2/r/manifests/t", "GET /v2/r/manifests/t"]


def test_head_manifest_refuses_another_digest(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64")
    srv.script("HEAD", f"/v2/r/manifests/{img.manifest}", Reply(200, headers={"Docker-Content-Digest": ZERO}))
    with pytest.raises(DigestIntegrityError) as info:
        client.head_manifest("r", img.manifest)
    assert failure(info) == (
        "DigestIntegrityError",
        f"{srv.host}/r@{img.manifest}: the registry says its digest is {ZERO}, not the digest asked for.",
        {},
    )


def test_put_manifest_by_digest_or_tag(srv: Scripted, client: RegistryClient) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'", "manifests": []}'
    assert client.put_manifest("r", None, body, OCI_INDEX) == sha(body)
    srv.script("PUT", "/v2/r/manifests/t", Reply(202))
    assert client.put_manifest("r", "t", body, OCI_INDEX) == sha(body)
    srv.script("PUT", "/v2/r/manifests/u", Reply(200, headers={"Docker-Content-Digest": sha(body)}))
    assert client.put_manifest("r", "u", body, OCI_INDEX) == sha(body)
    assert srv.paths() == [f"PUT /v2/r/manifests/{sha(body)}", "PUT /v2/r/manifests/t", "PUT /v2/r/manifests/u"]
    assert {(s.headers["content-type"], s.body) for s in srv.seen} == {(OCI_INDEX, body)}


def test_put_manifest_refuses_a_registry_that_stored_another_digest(srv: Scripted, client: RegistryClient) -> None:
    body = b"{}"
    srv.script("PUT", f"/v2/r/manifests/{sha(body)}", Reply(201, headers={"Docker-Content-Digest": ZERO}))
    with pytest.raises(DigestIntegrityError) as info:
        client.put_manifest("r", None, body, OCI_MANIFEST)
    assert info.value.message == (
        f"{srv.host}/r@{sha(body)}: the registry stored the manifest as {ZERO}, but its sha256 is {sha(body)}."
    )


def test_manifest_exists(srv: Scripted, client: RegistryClient) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    assert client.manifest_exists("r", "t") == img.manifest
    assert client.manifest_exists("r", "nope") is None
    assert client.manifest_exists("r", ZERO) is None
    srv.script("HEAD", f"/v2/r/manifests/{img.manifest}", Reply(200))
    srv.script("HEAD", "/v2/r/manifests/t", Reply(200))
    assert client.manifest_exists("r", img.manifest) == img.manifest
    assert client.manifest_exists("r", "t") is None
    assert [s.method for s in srv.seen] == ["HEAD"] * 5
    srv.script("HEAD", "/v2/r/manifests/t", Reply(403))
    with pytest.raises(RegistryAuthError):
        client.manifest_exists("r", "t")


def test_list_tags_keeps_only_strings(srv: Scripted, client: RegistryClient) -> None:
    assert client.list_tags("r") == ["v1", "v2"]
    srv.script("GET", "/v2/r/tags/list", Reply(200, b'{"name": "r", "tags": null}'))
    assert client.list_tags("r") == []
    assert srv.paths() == ["GET /v2/r/tags/list"] * 2


def test_ping_names_the_api_root(srv: Scripted, client: RegistryClient) -> None:
    client.ping()
    srv.script("GET", "/v2/", Reply(404))
    with pytest.raises(ImageUnavailableError) as info:
        client.ping()
    assert info.value.message == f"{srv.host}/v2/ does not exist on {srv.host} (404)."


# ---------------------------------------------------------------------------------------------------
# Blobs and uploads
# ---------------------------------------------------------------------------------------------------


def test_blob_size_and_existence(srv: Scripted, client: RegistryClient) -> None:
    blob = srv.put_blob("r", b"12345")
    assert client.blob_size("r", blob) == 5
    assert client.blob_size("r", ZERO) is None
    assert client.blob_exists("r", blob) is True
    assert client.blob_exists("r", ZERO) is False
    srv.script("HEAD", f"/v2/r/blobs/{blob}", Reply(200, length=False))
    assert client.blob_size("r", blob) == -1
    assert srv.paths() == [f"HEAD /v2/r/blobs/{d}" for d in (blob, ZERO, blob, ZERO, blob)]


def test_get_blob_refuses_a_body_of_another_digest_and_names_a_missing_blob(
    srv: Scripted, client: RegistryClient
) -> None:
    blob = srv.put_blob("r", b"true bytes")
    srv.script("GET", f"/v2/r/blobs/{blob}", Reply(200, b"false bytes"))
    with pytest.raises(DigestIntegrityError) as info:
        client.get_blob("r", blob)
    assert failure(info) == (
        "DigestIntegrityError",
        f"blob {srv.host}/r@{blob}: the blob served hashes to {sha(b'false bytes')}.",
        {"actual": sha(b"false bytes")},
    )
    assert client.get_blob("r", blob) == b"true bytes"
    with pytest.raises(ImageUnavailableError) as missing:
        client.get_blob("r", ZERO)
    assert missing.value.message == (
        f"blob {srv.host}/r@{ZERO} does not exist on {srv.host} (404: BLOB_UNKNOWN blob unknown to registry)."
    )
    assert client.get_blob("r", blob) == b"true bytes"
    assert client.stats == stats(requests=3, cache_hits=1)


def test_a_blob_over_the_config_limit_is_never_read_whole_to_inspect_it(
    srv: Scripted, client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the registry lies about the size in its HEAD; the GET is still bounded by the config limit,
    # not by THEORY_REGISTRY_MAX_RESPONSE_BYTES (which is 100 here)
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "100")
    blob = srv.put_blob("r", b"\x00" * 200)
    srv.script("HEAD", f"/v2/r/blobs/{blob}", Reply(200, headers={"Content-Length": "10"}))
    with pytest.raises(ImageUnavailableError) as info:
        client.resolve_platform("r", blob, "amd64")
    assert info.value.message == f"{srv.host}/r@{blob} is a blob (a layer) in {srv.host}/r, not a manifest."


def test_mount_blob(srv: Scripted, client: RegistryClient) -> None:
    blob = srv.put_blob("base/img", b"shared")
    assert client.mount_blob("app", blob, "base/img") is True
    assert client.mount_blob("app", ZERO, "base/img") is False
    quoted = blob.replace(":", "%3A")
    assert srv.paths() == [
        f"POST /v2/app/blobs/uploads/?mount={quoted}&from=base/img",
        f"POST /v2/app/blobs/uploads/?mount={ZERO.replace(':', '%3A')}&from=base/img",
    ]
    assert [(s.headers["content-length"], s.body) for s in srv.seen] == [("0", b"")] * 2
    assert client.stats == stats(requests=2, blob_mounts=1)
    assert srv.blobs[("app", blob)] == b"shared"
    srv.script("POST", "/v2/app/blobs/uploads/", Reply(403))
    with pytest.raises(RegistryAuthError) as info:
        client.mount_blob("app", blob, "base/img")
    assert info.value.message == (
        f"{srv.host} refused to let us write a mount of {blob} from {srv.host}/base/img anonymously "
        "(REGISTRY_USERNAME/REGISTRY_PASSWORD unset): 403."
    )


def test_upload_blob_posts_then_puts_to_the_location_with_the_digest(srv: Scripted, client: RegistryClient) -> None:
    data = b"layer bytes"
    digest = sha(data)
    assert client.upload_blob("r", digest, data) is True
    quoted = digest.replace(":", "%3A")
    assert srv.paths() == [
        f"HEAD /v2/r/blobs/{digest}",
        "POST /v2/r/blobs/uploads/",
        f"PUT /v2/r/blobs/uploads/u1?_state=s&digest={quoted}",
    ]
    post, put = srv.seen[1], srv.seen[2]
    assert (post.headers["content-length"], post.body) == ("0", b"")
    assert (put.headers["content-type"], put.headers["content-length"], put.body) == (
        "application/octet-stream",
        str(len(data)),
        data,
    )
    assert client.stats == stats(requests=3, blob_uploads=1)
    assert client.upload_blob("r", digest, data) is False
    assert client.stats == stats(requests=4, blob_uploads=1, blob_skips=1)


def test_upload_blob_from_a_file_reopens_it_for_a_retry(srv: Scripted, client: RegistryClient, tmp_path: Path) -> None:
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(b"file bytes " * 100)
    digest = sha(path.read_bytes())
    srv.script("POST", "/v2/r/blobs/uploads/", Reply(202, headers={"Location": f"http://{srv.host}/up/1"}))
    srv.script("PUT", "/up/1", Reply(503), Reply(201))
    assert client.upload_blob("r", digest, path, check_exists=False) is True
    puts = [s for s in srv.seen if s.method == "PUT"]
    assert [s.target for s in puts] == [f"/up/1?digest={digest.replace(':', '%3A')}"] * 2
    assert [(s.headers["content-length"], s.body) for s in puts] == [("1100", path.read_bytes())] * 2
    assert srv.paths()[0] == "POST /v2/r/blobs/uploads/"


def test_upload_blob_from_an_opener_with_its_size(srv: Scripted, client: RegistryClient, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"opened")
    assert client.upload_blob("r", sha(b"opened"), lambda: path.open("rb"), size=6, check_exists=False) is True
    assert srv.blobs[("r", sha(b"opened"))] == b"opened"
    assert srv.seen[-1].headers["content-length"] == "6"


def test_upload_blob_when_the_post_says_the_registry_has_it(srv: Scripted, client: RegistryClient) -> None:
    srv.script("POST", "/v2/r/blobs/uploads/", Reply(201))
    assert client.upload_blob("r", ZERO, b"x", check_exists=False) is False
    assert srv.paths() == ["POST /v2/r/blobs/uploads/"]
    assert client.stats == stats(requests=1)


def test_upload_blob_without_a_location(srv: Scripted, client: RegistryClient) -> None:
    srv.script("POST", "/v2/r/blobs/uploads/", Reply(202))
    with pytest.raises(ImagePushError) as info:
        client.upload_blob("r", ZERO, b"x", check_exists=False)
    assert failure(info) == ("ImagePushError", f"{srv.host}: the upload session for r has no Location header.", {})


def test_upload_blob_restarts_a_lost_session_once(srv: Scripted, client: RegistryClient, lines: list[str]) -> None:
    data = b"again"
    digest = sha(data)
    srv.script("PUT", "/v2/r/blobs/uploads/u1", Reply(404))
    assert client.upload_blob("r", digest, data, check_exists=False) is True
    assert [s.path for s in srv.seen] == [
        "/v2/r/blobs/uploads/",
        "/v2/r/blobs/uploads/u1",
        "/v2/r/blobs/uploads/",
        "/v2/r/blobs/uploads/u2",
    ]
    assert lines == [f"restarting the upload of blob {srv.host}/r@{digest}: the registry lost the upload session"]
    # lost twice: a push error naming it (once an ImageUnavailableError "does not exist"), with what to do
    srv.script("PUT", "/v2/r/blobs/uploads/u3", Reply(404))
    srv.script("PUT", "/v2/r/blobs/uploads/u4", Reply(404))
    with pytest.raises(ImagePushError) as info:
        client.upload_blob("r", digest, data, check_exists=False)
    assert info.value.message == (
        f"blob {srv.host}/r@{digest}: the registry lost the upload session twice (404 on the PUT that completes it)."
    )
    assert info.value.remedy == (
        "Re-run the push: blobs already uploaded are not sent again. If it keeps happening, the registry is "
        "dropping upload sessions (a load balancer spreading one upload over replicas without shared storage, "
        "or an upload purge set too short)."
    )
    assert lines[1:] == [f"restarting the upload of blob {srv.host}/r@{digest}: the registry lost the upload session"]
    assert client.stats == stats(requests=8, blob_uploads=1)


def test_upload_blob_refuses_a_registry_that_stored_another_digest(srv: Scripted, client: RegistryClient) -> None:
    srv.script("PUT", "/v2/r/blobs/uploads/u1", Reply(201, headers={"Docker-Content-Digest": ZERO}))
    digest = sha(b"mine")
    with pytest.raises(DigestIntegrityError) as info:
        client.upload_blob("r", digest, b"mine", check_exists=False)
    assert info.value.message == f"blob {srv.host}/r@{digest}: the registry stored it as {ZERO}."
    srv.script("PUT", "/v2/r/blobs/uploads/u2", Reply(204))
    assert client.upload_blob("r", digest, b"mine", check_exists=False) is True


def test_upload_failures_are_push_errors(srv: Scripted, client: RegistryClient) -> None:
    srv.script("PUT", "/v2/r/blobs/uploads/u1", Reply(400, errors_body("DIGEST_INVALID", "digest mismatch")))
    digest = sha(b"mine")
    with pytest.raises(ImagePushError) as info:
        client.upload_blob("r", digest, b"mine", check_exists=False)
    assert info.value.message == (f"PUT blob {srv.host}/r@{digest} failed: 400: DIGEST_INVALID digest mismatch.")
    srv.script("POST", "/v2/r/blobs/uploads/", Reply(400))
    with pytest.raises(ImagePushError) as post:
        client.upload_blob("r", digest, b"mine", check_exists=False)
    assert post.value.message == f"POST an upload to {srv.host}/r failed: 400."


# ---------------------------------------------------------------------------------------------------
# Small pure helpers: their outputs end up in URLs, headers and messages
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True), ("127.0.0.1", True), ("127.9.9.9", True), ("localhost", True),
        ("localhost:5000", True), ("[::1]:5000", True), ("[::1]", True), ("::1", True),
        ("ghcr.io", False), ("registry.example.com:443", False), ("10.0.0.1:5000", False),
        ("[2001:db8::1]:5000", False), ("0.0.0.0:5000", False), ("LOCALHOST", True), ("LocalHost:5000", True), ("localhost.example", False),
    ],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert oci.is_loopback(host) is loopback
    assert RegistryClient(host).base_url == f"{'http' if loopback else 'https'}://{host}"


def test_insecure_overrides_the_loopback_guess() -> None:
    assert RegistryClient("127.0.0.1:5000", insecure=False).base_url == "https://127.0.0.1:5000"
    assert RegistryClient("registry.internal:5000", insecure=True).url("/v2/") == "http://registry.internal:5000/v2/"


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ('Bearer realm="https://x/token",service="x",scope="repository:a/b:pull,push"',
         ("bearer", {"realm": "https://x/token", "service": "x", "scope": "repository:a/b:pull,push"})),
        ("  BASIC Realm=plain , Charset=UTF-8", ("basic", {"realm": "plain", "charset": "UTF-8"})),
        ('Bearer realm = "a \\"quoted\\" realm", error=insufficient_scope',
         ("bearer", {"realm": 'a \\"quoted\\" realm', "error": "insufficient_scope"})),
        ('Bearer realm=""', ("bearer", {"realm": ""})),
        ("Negotiate", ("negotiate", {})),
        ("", ("", {})),
    ],
)  # fmt: skip
def test_parse_challenge(header: str, parsed: tuple[str, dict[str, str]]) -> None:
    assert oci.parse_challenge(header) == parsed


@pytest.mark.parametrize(
    ("ours", "challenged", "merged"),
    [
        (None, None, ""),
        ("", None, ""),
        (None, "repository:a:pull", "repository:a:pull"),
        ("", "repository:a:pull", "repository:a:pull"),
        ("repository:a:pull", None, "repository:a:pull"),
        ("repository:a:pull", "", "repository:a:pull"),
        ("repository:a:pull", "repository:a:pull", "repository:a:pull"),
        ("repository:a:pull", "repository:a:push", "repository:a:pull,push"),
        ("repository:a:push", "repository:a:pull", "repository:a:pull,push"),
        ("repository:a:pull,push", "repository:a:pull", "repository:a:pull,push"),
        ("repository:a:pull", "repository:a:zap,delete,push", "repository:a:pull,push,delete,zap"),
        ("repository:a:pull", "repository:b:pull", "repository:a:pull repository:b:pull"),
        ("repository:a:pull", "repository:a:push repository:b:pull", "repository:a:pull repository:a:push repository:b:pull"),
        ("registry:catalog:*", "registry:catalog:*,x", "registry:catalog:*,x"),
        (
            "repository:r:pull,push repository:base:pull",
            "repository:r:pull,push repository:base:push",
            "repository:r:pull,push repository:base:pull repository:r:pull,push repository:base:push",
        ),
    ],
)  # fmt: skip
def test_merge_scopes(ours: str | None, challenged: str | None, merged: str) -> None:
    assert oci._merge_scopes(ours, challenged) == merged


@pytest.mark.parametrize(
    ("data", "config"),
    [
        ({"rootfs": {}}, True),
        ({"rootfs": {}, "layers": [], "manifests": []}, True),
        ({"architecture": "amd64", "os": "linux"}, True),
        ({"architecture": "amd64"}, False),
        ({"os": "linux"}, False),
        ({"architecture": "amd64", "os": "linux", "layers": []}, False),
        ({"architecture": "amd64", "os": "linux", "manifests": []}, False),
        ({}, False),
    ],
)
def test_looks_like_config(data: dict[str, Any], config: bool) -> None:
    assert oci._looks_like_config(data) is config


@pytest.mark.parametrize(
    ("data", "guess"),
    [
        ({"manifests": []}, OCI_INDEX),
        ({"manifests": [], "layers": [], "config": {}}, OCI_INDEX),
        ({"manifests": {}}, None),
        ({"layers": [], "config": {}}, OCI_MANIFEST),
        ({"layers": [], "config": []}, None),
        ({"layers": {}, "config": {}}, None),
        ({"layers": []}, None),
        ({"config": {}}, None),
    ],
)
def test_guess_media_type(data: dict[str, Any], guess: str | None) -> None:
    assert oci._guess_media_type(data) == guess


def test_media_type_at_basic_and_chunks(tmp_path: Path) -> None:
    assert oci._media_type(" application/json ; charset=utf-8; q=1") == "application/json"
    assert oci._media_type("") == ""
    assert oci._at(ZERO) == f"@{ZERO}"
    assert oci._at("sha256:short") == "@sha256:short"
    assert oci._at("v1.2") == ":v1.2"
    assert oci._basic(("us er", "p:ss")) == "Basic " + base64.b64encode(b"us er:p:ss").decode()
    assert oci._basic(("u", "\u00e9")) == "Basic dTrDqQ=="
    with pytest.raises(AssertionError):
        oci._basic(None)
    path = tmp_path / "f"
    path.write_bytes(b"abcdefg")
    with path.open("rb") as stream:
        assert list(oci._chunks(stream, 3)) == [b"abc", b"def", b"g"]
    with path.open("rb") as stream:
        assert list(oci._chunks(stream)) == [b"abcdefg"]
    assert oci.sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("http://127.0.0.1:5000/v2/r/blobs/x?_state=abc&digest=y", "127.0.0.1:5000/v2/r/blobs/x"),
        ("https://user:secret@GHCR.io/token?scope=x", "ghcr.io/token"),
        ("http://[::1]:5000/v2/", "[::1]:5000/v2/"),
        ("http://[::1]/v2/", "[::1]/v2/"),
        ("/relative/only", "/relative/only"),
    ],
)
def test_where_names_host_and_path_only(url: str, where: str) -> None:
    assert RegistryClient("ghcr.io")._where(url) == where


def test_retry_policy_delays_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base_delay, policy.factor, policy.max_retry_after) == (3, 1.0, 3.0, 30.0)
    assert [policy.delay(n) for n in (1, 2, 3)] == [1.0, 3.0, 9.0]
    assert RetryPolicy(base_delay=0.5, factor=2.0).delay(3) == 2.0
    monkeypatch.delenv("THEORY_REGISTRY_RETRY_BASE_DELAY", raising=False)
    assert RetryPolicy.from_env() == RetryPolicy()
    for raw, base in [("0.25", 0.25), ("-2", 0.0), ("0.5 ", 0.5), ("soon", 1.0), ("", 1.0)]:
        monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", raw)
        assert RetryPolicy.from_env() == RetryPolicy(base_delay=base), raw
    monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", "0.5")
    assert RegistryClient("ghcr.io").retry == RetryPolicy(base_delay=0.5)


def test_retry_after_seconds() -> None:
    assert oci._retry_after_seconds(None) is None
    assert oci._retry_after_seconds("") is None
    assert oci._retry_after_seconds(" 5 ") == 5.0
    assert oci._retry_after_seconds("1.5") == 1.5
    assert oci._retry_after_seconds("-3") == 0.0
    assert oci._retry_after_seconds("garbage") is None
    assert oci._retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    future = email.utils.formatdate(time.time() + 100, usegmt=True)
    assert 97.0 <= oci._retry_after_seconds(f" {future} ") <= 100.0


def test_verified_bodies_lru() -> None:
    cache = oci._VerifiedBodies(max_bytes=10, max_entry=100)
    cache.put(("blob", "r", "a"), b"aaa", "t/a")
    cache.put(("blob", "r", "b"), b"bbbb")
    assert cache.get(("blob", "r", "a")) == (b"aaa", "t/a")  # a is now the most recent
    cache.put(("blob", "r", "b"), b"BB")  # replacing frees the old size (5 bytes now) and refreshes b
    cache.put(("blob", "r", "c"), b"ccccc")  # exactly 10 bytes: nothing evicted
    assert len(cache) == 3
    cache.put(("blob", "r", "d"), b"d")  # 11: the least recently used (a) goes
    assert [cache.get(("blob", "r", k)) for k in "abcd"] == [None, (b"BB", ""), (b"ccccc", ""), (b"d", "")]
    cache.put(("blob", "r", "e"), b"e" * 10)  # fits alone: everything else goes
    assert len(cache) == 1
    cache.put(("blob", "r", "f"), b"f" * 11)  # larger than the whole cache: not kept, nothing evicted
    assert len(cache) == 1 and cache.get(("blob", "r", "f")) is None
    cache.clear()
    assert len(cache) == 0
    cache.put(("blob", "r", "g"), b"g" * 10)
    assert len(cache) == 1  # clear reset the size too


def test_verified_bodies_bounds() -> None:
    tiny = oci._VerifiedBodies(max_bytes=-5, max_entry=4)
    tiny.put(("blob", "r", "a"), b"")
    assert len(tiny) == 1  # an empty body fits a zero-byte cache
    tiny.put(("blob", "r", "b"), b"b")
    assert tiny.get(("blob", "r", "b")) is None
    small = oci._VerifiedBodies(max_bytes=100, max_entry=4)
    small.put(("blob", "r", "x"), b"xxxx")
    small.put(("blob", "r", "y"), b"yyyyy")
    assert (small.get(("blob", "r", "x")), small.get(("blob", "r", "y"))) == ((b"xxxx", ""), None)


def test_http2_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    for off in ("0", "false", " NO ", "Off"):
        monkeypatch.setenv(oci.HTTP2_ENV, off)
        assert oci._http2_wanted() is False, off
    for on in ("1", "yes", ""):
        monkeypatch.setenv(oci.HTTP2_ENV, on)
        assert oci._http2_wanted() is True, on  # h2 is installed in the dev environment
    monkeypatch.delenv(oci.HTTP2_ENV)
    assert oci._http2_wanted() is True


def test_one_tls_context_per_trust_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ssl

    import certifi

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = oci._shared_ssl_context()
    assert oci._shared_ssl_context() is default
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname is True
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    by_file = oci._shared_ssl_context()
    assert by_file is not default and oci._shared_ssl_context() is by_file
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    by_dir = oci._shared_ssl_context()
    assert by_dir is not default and by_dir is not by_file and oci._shared_ssl_context() is by_dir
    assert by_dir.get_ca_certs() == []  # trust_env: the (empty) directory is the trust store


# ---------------------------------------------------------------------------------------------------
# Client construction and the per-host factory
# ---------------------------------------------------------------------------------------------------


def test_a_new_client_counts_nothing_and_prints_retries_on_stderr(
    srv: Scripted, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", "0")
    srv.script("GET", "/v2/", Reply(503))
    with RegistryClient(srv.host) as c:
        assert c.stats == STATS0
        c.ping()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"retrying GET {srv.host}/v2/ after 503 Service Unavailable (attempt 2/3, in 0.0s)\n"


def test_the_client_honours_a_proxy_from_the_environment(srv: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Scripted()
    try:
        proxy.guard = lambda s: Reply(200, b'{"tags": ["via-proxy"]}')
        monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.host}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with RegistryClient("registry.invalid", insecure=True, retry=NOW) as c:
            assert c.list_tags("r") == ["via-proxy"]
        assert [s.target for s in proxy.seen] == ["http://registry.invalid/v2/r/tags/list"]
    finally:
        proxy.close()


def test_registry_clients_bind_credentials_to_one_host(srv: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THEORY_REGISTRY_HOST", "REGISTRY_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REGISTRY_USERNAME", "robot")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw-" + uuid.uuid4().hex)
    other = Scripted()
    try:
        need_basic = basic_of("robot", __import__("os").environ["REGISTRY_PASSWORD"])
        for server in (srv, other):
            server.guard = lambda s, good=need_basic: (
                None if s.auth == good else Reply(401, b"", {"WWW-Authenticate": 'Basic realm="x"'})
            )
        clients = RegistryClients()
        assert clients.credentials_host is None
        first = clients(srv.host.upper())
        assert clients(srv.host.upper()) is first
        assert clients.credentials_host == srv.host.lower()
        assert first.list_tags("r") == ["v1", "v2"]
        with pytest.raises(RegistryAuthError) as info:
            clients(other.host).list_tags("r")
        assert info.value.message == (
            f"{other.host} refused to let us read tags of {other.host}/r anonymously "
            f"(REGISTRY_USERNAME/REGISTRY_PASSWORD belong to {srv.host}, not to {other.host}; "
            f"set THEORY_REGISTRY_HOST={other.host} to use them here): 401."
        )
        clients.close()
        bound = RegistryClients(credentials_host=f" {other.host.upper()} ")
        assert bound.credentials_host == other.host
        assert bound(other.host).list_tags("r") == ["v1", "v2"]
        with pytest.raises(RegistryAuthError):
            bound(srv.host).list_tags("r")
        bound.close()
        monkeypatch.setenv("THEORY_REGISTRY_HOST", srv.host)
        assert RegistryClients(credentials_host=other.host).credentials_host == srv.host
    finally:
        other.close()


def test_registry_clients_without_credentials(srv: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THEORY_REGISTRY_HOST", "REGISTRY_HOST", "REGISTRY_USERNAME", "REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    clients = RegistryClients()
    srv.guard = lambda s: Reply(401, b"", {"WWW-Authenticate": 'Basic realm="x"'})
    with pytest.raises(RegistryAuthError) as info:
        clients(srv.host).list_tags("r")
    assert info.value.message == (
        f"{srv.host} refused to let us read tags of {srv.host}/r anonymously "
        "(REGISTRY_USERNAME/REGISTRY_PASSWORD unset): 401."
    )
    assert clients.credentials_host is None
    clients.close()


# ---------------------------------------------------------------------------------------------------
# TLS: the shared verifying context, SSL_CERT_FILE, and HTTP/2 offered by ALPN
# ---------------------------------------------------------------------------------------------------


class TlsFront:
    """A TLS listener on 127.0.0.1 with a throwaway certificate; records the ALPN protocol agreed
    per connection and answers HTTP/1.1 `GET /v2/` with 200 (an h2 connection is just closed)."""

    def __init__(self, tmp: Path) -> None:
        import datetime
        import ipaddress
        import ssl

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256())
        )
        self.cert = tmp / "cert.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = tmp / "key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(self.cert, key_path)
        self._ctx.set_alpn_protocols(["h2", "http/1.1"])
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.alpn: list[str | None] = []
        self._thread = threading.Thread(target=self._accept, name="tls-front", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            try:
                conn = self._ctx.wrap_socket(raw, server_side=True)
            except OSError:
                raw.close()
                continue
            self.alpn.append(conn.selected_alpn_protocol())
            if conn.selected_alpn_protocol() == "http/1.1":
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            conn.close()

    def close(self) -> None:
        # shutdown() first: on Linux, close() alone does not wake an accept() blocked in another
        # thread. That thread then keeps the socket listening, unowned, for the rest of the session.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    # Each test builds its own verifying context: one cached by an earlier test in this process (the
    # cache is per process, keyed by the trust settings) would hide how this one is made.
    monkeypatch.setattr(oci, "_SSL_CONTEXTS", {})
    front = TlsFront(tmp_path)
    yield front
    front.close()


ONCE = RetryPolicy(attempts=1, base_delay=0.0)


def test_tls_trusts_ssl_cert_file_and_offers_no_http2_when_switched_off(
    tls: TlsFront, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))
    monkeypatch.setenv(oci.HTTP2_ENV, "0")
    with RegistryClient(tls.host, insecure=False, retry=ONCE, progress=lambda _m: None) as c:
        assert c.base_url == f"https://{tls.host}"
        c.ping()
    assert tls.alpn == ["http/1.1"]


def test_tls_offers_http2_when_h2_is_installed(tls: TlsFront, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))
    monkeypatch.delenv(oci.HTTP2_ENV, raising=False)
    with RegistryClient(tls.host, insecure=False, retry=ONCE, progress=lambda _m: None) as c:
        with pytest.raises(RegistryUnreachableError):
            c.ping()  # the front closes h2 connections unanswered
    assert tls.alpn == ["h2"]


def test_tls_refuses_a_certificate_nobody_trusts(tls: TlsFront, monkeypatch: pytest.MonkeyPatch) -> None:
    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    with RegistryClient(tls.host, insecure=False, retry=ONCE, progress=lambda _m: None) as c:
        with pytest.raises(RegistryUnreachableError) as info:
            c.ping()
    assert (
        info.value.message
        == f"GET {tls.host}/v2/ failed after 1 attempts: a connection error (refused or unreachable)."
    )
    assert tls.alpn == []


def scoped_token_service(srv: Scripted, *, challenge_scope: bool = True) -> list[str]:
    """A registry whose every /v2/<repo>/... request needs a token for that repository and action
    (pull for GET/HEAD, pull,push otherwise); returns the list of scopes tokens were asked for.
    `challenge_scope=False`: its challenges name no scope (the client must know its own)."""
    issued: dict[str, list[str]] = {}
    asked: list[str] = []

    def needed(s: Seen) -> str | None:
        parts = s.path.split("/")
        for marker in ("manifests", "blobs", "tags"):
            if marker in parts:
                repo = "/".join(parts[2 : parts.index(marker)])
                return f"repository:{repo}:{'pull' if s.method in ('GET', 'HEAD') else 'pull,push'}"
        return None

    def guard(s: Seen) -> Reply | None:
        if s.path == "/token":
            scopes = httpx.URL(s.target).params.get_list("scope")
            asked.append(" ".join(scopes))
            token = uuid.uuid4().hex
            issued[token] = scopes
            return token_reply(token)
        scope = needed(s)
        if scope is None:
            return None
        granted = issued.get(s.auth.removeprefix("Bearer "), [])
        if scope in granted or scope.replace(":pull", ":pull,push") in granted:
            return None
        challenge = f'Bearer realm="http://{srv.host}/token",service="reg"'
        if challenge_scope:
            challenge += f',scope="{scope}"'
        return Reply(401, UNAUTHORIZED, {"WWW-Authenticate": challenge})

    srv.guard = guard
    return asked


def test_every_call_asks_a_token_for_its_own_scope_once(srv: Scripted) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    base = srv.put_blob("base", b"base layer")
    asked = scoped_token_service(srv)
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        assert c.head_manifest("r", "t").digest == img.manifest
        assert c.manifest_exists("r", "t") == img.manifest
        assert c.get_manifest("r", "t").digest == img.manifest
        assert c.get_blob("r", img.config) == srv.blobs[("r", img.config)]
        assert c.blob_size("r", img.config) == len(srv.blobs[("r", img.config)])
        assert c.list_tags("r") == ["v1", "v2"]
        assert asked == ["repository:r:pull"]
        assert c.put_manifest("r", "u", img.body, OCI_MANIFEST) == img.manifest
        assert c.mount_blob("r", base, "base") is True
        assert c.upload_blob("r2", sha(b"new"), b"new") is True
        assert c.get_blob("r2", sha(b"new")) == b"new"
        assert c.stats["token_requests"] == 4
    assert asked == [
        "repository:r:pull",
        "repository:r:pull,push",
        "repository:r:pull,push repository:base:pull repository:r:pull,push",
        "repository:r2:pull,push",
    ]


def test_close_joins_the_platform_pool_and_closes_the_connections(srv: Scripted) -> None:
    images = [add_image(srv, "r", arch) for arch in ("amd64", "arm64", "s390x")]
    add_index(srv, "r", [entry(i.manifest, i_arch) for i, i_arch in zip(images, ("amd64", "arm64", "s390x"))], tag="v1")
    before = {t.ident for t in threading.enumerate()}
    c = RegistryClient(srv.host, retry=NOW, progress=lambda _m: None)
    c.resolve_platforms("r", "v1", ["amd64", "arm64", "s390x"])
    pool = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("theory-oci_")]
    # the first platform runs in the calling thread, the other two on the pool
    assert {t.name for t in pool} <= {"theory-oci_0", "theory-oci_1"} and pool
    c.close()
    assert not any(t.is_alive() for t in pool)
    with pytest.raises(RuntimeError):
        c.ping()
    c.close()  # twice is harmless


def test_a_request_that_cannot_be_sent_fails_at_once(srv: Scripted, client: RegistryClient, lines: list[str]) -> None:
    with pytest.raises(RegistryUnreachableError) as info:
        client.put_manifest("r", "t", b"{}", "application/json\nX-Injected: 1")
    assert failure(info) == (
        "RegistryUnreachableError",
        f"PUT {srv.host}/v2/r/manifests/t failed: LocalProtocolError.",
        {},
    )
    assert srv.seen == [] and lines == []


def test_a_proxy_that_refuses_the_tunnel_fails_at_once(monkeypatch: pytest.MonkeyPatch, lines: list[str]) -> None:
    proxy = Scripted()
    try:
        proxy.guard = lambda s: Reply(403)
        monkeypatch.setenv("HTTPS_PROXY", f"http://{proxy.host}")
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        with RegistryClient("registry.invalid", retry=NOW, progress=lines.append) as c:
            with pytest.raises(RegistryUnreachableError) as info:
                c.ping()
        assert failure(info) == ("RegistryUnreachableError", "GET registry.invalid/v2/ failed: ProxyError.", {})
        assert [(s.method, s.target) for s in proxy.seen] == [("CONNECT", "registry.invalid:443")]
        assert lines == []
    finally:
        proxy.close()


def test_a_registry_that_never_accepts_the_connection_times_out() -> None:
    # a listener whose accept queue is full drops further SYNs: only the connect timeout ends the wait
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        queued.append(s)
    try:
        start = time.monotonic()
        with RegistryClient(f"127.0.0.1:{port}", timeout=0.3, retry=ONCE, progress=lambda _m: None) as c:
            with pytest.raises(RegistryUnreachableError) as info:
                c.ping()
        # the connect timeout ended it, not the kernel's own SYN retries (about two minutes)
        assert time.monotonic() - start < 10
        assert info.value.message == f"GET 127.0.0.1:{port}/v2/ failed after 1 attempts: a timeout."
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_head_manifest_failures_name_the_reference(
    srv: Scripted, client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv.script("HEAD", "/v2/r/manifests/t", Reply(400), Reply(404))
    with pytest.raises(ImagePullError) as bad:
        client.head_manifest("r", "t")
    with pytest.raises(ImageUnavailableError) as missing:
        client.head_manifest("r", "t")
    assert bad.value.message == f"HEAD {srv.host}/r:t failed: 400."
    assert missing.value.message == f"{srv.host}/r:t does not exist on {srv.host} (404)."
    # a HEAD's declared length is the manifest's size, not a body to bound
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "10")
    img = add_image(srv, "r", "amd64", tag="t")
    assert client.head_manifest("r", "t") == ManifestHead(img.manifest, OCI_MANIFEST, len(img.body))


def test_every_call_knows_its_own_scope_when_the_challenge_names_none(srv: Scripted) -> None:
    img = add_image(srv, "r", "amd64", tag="t")
    base = srv.put_blob("base", b"base layer")
    asked = scoped_token_service(srv, challenge_scope=False)
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        assert c.head_manifest("r", "t").digest == img.manifest
        assert c.manifest_exists("r", "t") == img.manifest
        assert c.get_manifest("r", img.manifest).digest == img.manifest
        assert c.get_blob("r", img.config) == srv.blobs[("r", img.config)]
        assert c.blob_exists("r", img.config) is True
        assert c.list_tags("r") == ["v1", "v2"]
        assert c.resolve_platform("r", img.manifest, "amd64").config_digest == img.config
        assert asked == ["repository:r:pull"]
        assert c.put_manifest("r", None, img.body, OCI_MANIFEST) == img.manifest
        assert c.mount_blob("r", base, "base") is True
        assert c.upload_blob("r2", sha(b"new"), b"new") is True
    assert asked == [
        "repository:r:pull",
        "repository:r:pull,push",
        "repository:r:pull,push repository:base:pull",
        "repository:r2:pull,push",
    ]


def test_a_config_is_bounded_by_the_config_limit_not_the_response_limit(
    srv: Scripted, client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "100")
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}, "pad": "x" * 200}).encode()
    config_digest = srv.put_blob("r", config)
    digest = _manifest(srv, {"mediaType": OCI_CONFIG, "digest": config_digest}, [])
    assert client.resolve_platform("r", digest, "amd64") == PlatformResolution(
        digest, False, OCI_MANIFEST, config_digest, None
    )


def test_ping_keeps_the_token_of_a_scoped_challenge(srv: Scripted) -> None:
    bearer_guard(srv, {"catalog-token"}, f'Bearer realm="http://{srv.host}/token",scope="registry:catalog:*"')
    srv.script("GET", "/token", token_reply("catalog-token"))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        c.ping()
        c.ping()
        assert c.stats == stats(requests=4, token_requests=1)
    assert srv.paths() == ["GET /v2/", "GET /token?scope=registry:catalog:%2A", "GET /v2/", "GET /v2/"]


def test_ping_names_the_registry_as_written(srv: Scripted) -> None:
    srv.script("GET", "/v2/", Reply(404))
    registry = f"LocalHost:{srv.port}"
    with RegistryClient(registry, insecure=True, retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(ImageUnavailableError) as info:
            c.ping()
    assert info.value.message == f"{registry}/v2/ does not exist on {registry} (404)."


def test_a_token_service_retry_after_is_honoured(srv: Scripted, lines: list[str]) -> None:
    bearer_guard(srv, {"t-after"}, f'Bearer realm="http://{srv.host}/token"')
    srv.script("GET", "/token", Reply(429, headers={"Retry-After": "0"}), token_reply("t-after"))
    with RegistryClient(srv.host, retry=RetryPolicy(base_delay=5.0), progress=lines.append) as c:
        assert c.list_tags("r") == ["v1", "v2"]
    assert lines == [f"retrying GET {srv.host}/token after 429 (attempt 2/3, in 0.0s)"]


def test_a_given_transport_carries_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # the transport seam (what httpx tests and proxies plug in) is used as given, over HTTP/1.1
    monkeypatch.delenv(oci.HTTP2_ENV, raising=False)
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        return httpx.Response(200, json={"tags": ["from-transport"]})

    with RegistryClient("registry.invalid", transport=httpx.MockTransport(answer), retry=NOW) as c:
        assert c.list_tags("r") == ["from-transport"]
    assert seen == ["GET https://registry.invalid/v2/r/tags/list"]


def test_registry_clients_compare_hosts_case_insensitively(srv: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THEORY_REGISTRY_HOST", "REGISTRY_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REGISTRY_USERNAME", "robot")
    monkeypatch.setenv("REGISTRY_PASSWORD", "pw-case-" + uuid.uuid4().hex)
    assert RegistryClients(credentials_host=" Registry.Example:5000 ").credentials_host == "registry.example:5000"
    named = RegistryClients()
    named("Registry.Example:5000")
    assert named.credentials_host == "registry.example:5000"
    good = basic_of("robot", __import__("os").environ["REGISTRY_PASSWORD"])
    srv.guard = lambda s: None if s.auth == good else Reply(401, b"", {"WWW-Authenticate": 'Basic realm="x"'})
    clients = RegistryClients()
    assert clients(f"localhost:{srv.port}").list_tags("r") == ["v1", "v2"]  # its own host keeps the credentials
    clients.close()
    named.close()


# ---------------------------------------------------------------------------------------------------
# The connection pool: max_connections requests at once, every connection kept alive
# ---------------------------------------------------------------------------------------------------


class Gate:
    """A guard for `Scripted`: holds every request until `limit` are in flight at once, waits a moment
    more (so a request over the limit, if the client lets one through, arrives too), then lets the
    round through. Records the peak of requests in flight and the connections (server threads) used."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.peak = 0
        self.connections: set[str] = set()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._open = threading.Event()

    def next_round(self) -> None:
        self._open.clear()

    def __call__(self, s: Seen) -> None:
        with self._lock:
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            self.connections.add(threading.current_thread().name)
            full = self._in_flight >= self.limit
        if full and not self._open.is_set():
            time.sleep(0.1)
            self._open.set()
        self._open.wait(5)
        with self._lock:
            self._in_flight -= 1


@pytest.mark.parametrize("max_connections", [None, 24], ids=["default", "24"])
def test_the_pool_sends_max_connections_requests_at_once_and_keeps_every_connection(
    srv: Scripted, max_connections: int | None
) -> None:
    limit = max_connections or 16
    gate = Gate(limit)
    srv.guard = gate
    sized = {} if max_connections is None else {"max_connections": max_connections}
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None, **sized) as c:
        for _round in range(2):
            gate.next_round()
            with ThreadPoolExecutor(limit + 4) as callers:
                assert list(callers.map(lambda _i: c.list_tags("r"), range(limit + 4))) == [["v1", "v2"]] * (limit + 4)
    assert gate.peak == limit
    # the second round reused every connection of the first: all of them were kept alive
    assert len(gate.connections) == limit
    assert len(srv.seen) == 2 * (limit + 4)


def test_the_platform_pool_has_at_most_max_connections_threads(srv: Scripted) -> None:
    # kills: _each mutmut_3, _5 (a pool of the default size, min(32, cpus + 4), instead of max_connections)
    arches = ("amd64", "arm64", "s390x", "ppc64le")
    images = [add_image(srv, "r", arch) for arch in arches]
    idx = add_index(srv, "r", [entry(i.manifest, arch) for i, arch in zip(images, arches, strict=True)])
    callers: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        # srv's content, through the transport seam: no connection pool to share (and wait for)
        _, _, repo, kind, ref = request.url.path.split("/")
        callers.append(threading.current_thread().name)
        time.sleep(0.01)  # long enough for every platform to be handed to the pool before one ends
        if kind == "manifests":
            body, media_type = srv.manifests[(repo, ref)]
            return httpx.Response(200, content=body, headers={"Content-Type": media_type})
        return httpx.Response(200, content=srv.blobs[(repo, ref)])

    transport = httpx.MockTransport(answer)
    before = {t.ident for t in threading.enumerate()}
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None, transport=transport, max_connections=1) as c:
        got = c.resolve_platforms("r", idx, list(arches))
        pool = {t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("theory-oci_")}
    assert got == {
        arch: PlatformResolution(i.manifest, True, OCI_MANIFEST, i.config, idx)
        for i, arch in zip(images, arches, strict=True)
    }
    # the first platform runs in the calling thread, the other three queue for the pool's one thread
    assert pool == {"theory-oci_0"}
    assert set(callers) == {threading.current_thread().name, "theory-oci_0"}
    assert len(callers) == 9 and srv.seen == []


# ---------------------------------------------------------------------------------------------------
# TLS: one CA bundle load per process; no HTTP/2 without h2; https token realms
# ---------------------------------------------------------------------------------------------------


def test_every_client_trusts_the_ca_bundle_as_the_process_first_read_it(
    tls: TlsFront, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls.cert.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv(oci.HTTP2_ENV, "0")
    with RegistryClient(tls.host, insecure=False, retry=ONCE, progress=lambda _m: None) as first:
        first.ping()
    (tmp_path / "other").mkdir()
    other = TlsFront(tmp_path / "other")
    other.close()
    bundle.write_bytes(other.cert.read_bytes())  # the file now trusts another certificate only
    with RegistryClient(tls.host, insecure=False, retry=ONCE, progress=lambda _m: None) as second:
        second.ping()  # the bundle is loaded once per process, not once per client
    assert tls.alpn == ["http/1.1", "http/1.1"]


def test_without_h2_installed_tls_offers_http1_only(tls: TlsFront, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))
    monkeypatch.delenv(oci.HTTP2_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "h2", None)  # `import h2` fails as when h2 is not installed
    with RegistryClient(tls.host, insecure=False, retry=ONCE, progress=lambda _m: None) as c:
        c.ping()
    assert tls.alpn == ["http/1.1"]


def test_an_https_token_realm_is_asked(srv: Scripted, tls: TlsFront, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))
    monkeypatch.setenv(oci.HTTP2_ENV, "0")
    bearer_guard(srv, set(), f'Bearer realm="https://{tls.host}/token"')
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.list_tags("r")  # the TLS front answers `{}`: a token service without a token
        assert c.stats == stats(requests=2, token_requests=1)
    assert failure(info) == (
        "RegistryAuthError",
        f"{srv.host}: the token service {tls.host}/token returned no token.",
        {},
    )
    assert tls.alpn == ["http/1.1"]


# ---------------------------------------------------------------------------------------------------
# Token requests
# ---------------------------------------------------------------------------------------------------


def test_a_bare_realm_is_asked_without_a_query(srv: Scripted) -> None:
    bearer_guard(srv, {"bare-token"}, f'Bearer realm="http://{srv.host}/token"')
    srv.script("GET", "/token", token_reply("bare-token"))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        c.ping()
    assert srv.paths() == ["GET /v2/", "GET /token", "GET /v2/"]


def test_challenge_scopes_are_separated_by_spaces_only(srv: Scripted) -> None:
    # a tab inside the quoted scope is part of that scope (RFC 6749: scopes are space-delimited)
    bearer_guard(
        srv, {"tab-token"}, f'Bearer realm="http://{srv.host}/token",scope="registry:catalog:*\trepository:r:pull"'
    )
    srv.script("GET", "/token", token_reply("tab-token"))
    with RegistryClient(srv.host, retry=NOW, progress=lambda _m: None) as c:
        c.ping()
    assert srv.paths() == ["GET /v2/", "GET /token?scope=registry:catalog:%2A%09repository:r:pull", "GET /v2/"]


def test_a_token_service_gets_one_attempt_when_the_policy_allows_one(srv: Scripted, lines: list[str]) -> None:
    bearer_guard(srv, {"second"}, f'Bearer realm="http://{srv.host}/token"')
    srv.script("GET", "/token", Reply(503), token_reply("second"))
    with RegistryClient(srv.host, retry=ONCE, progress=lines.append) as c:
        with pytest.raises(RegistryUnreachableError) as info:
            c.list_tags("r")
        assert c.stats == stats(requests=2, token_requests=1)
    assert failure(info) == (
        "RegistryUnreachableError",
        f"{srv.host}: the token service {srv.host}/token answered 503.",
        {},
    )
    assert lines == []


def test_a_token_granted_for_push_serves_a_later_push_without_asking_again(srv: Scripted) -> None:
    # a pull challenged for push gets a pull,push token; it is kept under that scope too
    bearer_guard(srv, {"pp-token"}, f'Bearer realm="http://{srv.host}/token",service="s",scope="repository:r:push"')
    srv.script("GET", "/token", token_reply("pp-token"))
    data = b"pushed later"
    digest = sha(data)
    with RegistryClient(srv.host, credentials=("u", "p"), retry=NOW, progress=lambda _m: None) as c:
        assert c.list_tags("r") == ["v1", "v2"]
        assert c.upload_blob("r", digest, data) is True
        assert c.stats == stats(requests=6, blob_uploads=1, token_requests=1)
    assert srv.paths() == [
        "GET /v2/r/tags/list",
        "GET /token?service=s&scope=repository:r:pull,push",
        "GET /v2/r/tags/list",
        f"HEAD /v2/r/blobs/{digest}",
        "POST /v2/r/blobs/uploads/",
        f"PUT /v2/r/blobs/uploads/u1?_state=s&digest={digest.replace(':', '%3A')}",
    ]
    assert [s.auth for s in srv.seen[3:]] == ["Bearer pp-token"] * 3


def test_without_an_allow_list_no_other_realm_host_is_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(oci.ALLOW_TOKEN_REALM_ENV, raising=False)
    ghcr = RegistryClient("ghcr.io")
    for host in ("xxxx", "auth", "localhost"):
        assert ghcr._realm_refusal(f"https://{host}/token") == f"on another host ({host}) than the registry (ghcr.io)"


# ---------------------------------------------------------------------------------------------------
# Bounded answers: never waited for past the limit, counted whole, named after the call
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [Reply(200, b"x" * 11, length=False), Reply(200, b"", {"Content-Length": "11"})],
    ids=["never-ending", "declared-not-sent"],
)
def test_an_answer_over_the_limit_is_refused_without_waiting_for_its_end(
    srv: Scripted, monkeypatch: pytest.MonkeyPatch, reply: Reply
) -> None:
    # the server keeps the connection open: waiting for the end of the body would wait forever
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "10")
    srv.script("GET", f"/v2/r/blobs/{ZERO}", reply)
    with RegistryClient(srv.host, timeout=1.0, retry=ONCE, progress=lambda _m: None) as c:
        with pytest.raises(ImagePullError) as info:
            c.get_blob("r", ZERO)
    assert failure(info) == (
        "ImagePullError",
        f"GET blob {srv.host}/r@{ZERO}: the registry's answer is larger than the 10-byte limit for it; "
        "refusing to read more.",
        {"registry": srv.host, "limit": 10},
    )


def test_a_body_read_in_pieces_is_bounded_by_its_total_and_kept_whole(
    srv: Scripted, client: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # over 64 KiB: the body arrives in several reads
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "100000")
    fits = srv.put_blob("r", b"a" * 100_000)
    over = srv.put_blob("r", b"b" * 100_001)
    srv.script("GET", f"/v2/r/blobs/{over}", Reply(200, b"b" * 100_001, {"Connection": "close"}, length=False))
    assert client.get_blob("r", fits) == b"a" * 100_000
    with pytest.raises(ImagePullError) as info:
        client.get_blob("r", over)
    assert info.value.message == (
        f"GET blob {srv.host}/r@{over}: the registry's answer is larger than the 100000-byte limit for it; "
        "refusing to read more."
    )


def test_an_upload_answer_over_the_limit_names_the_blob_whether_bytes_or_a_file(
    srv: Scripted, client: RegistryClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(oci.MAX_RESPONSE_BYTES_ENV, "10")
    data = b"layer bytes"
    digest = sha(data)
    path = tmp_path / "layer"
    path.write_bytes(data)
    srv.script("PUT", "/v2/r/blobs/uploads/u1", Reply(201, b"x" * 11))
    srv.script("PUT", "/v2/r/blobs/uploads/u2", Reply(201, b"x" * 11))
    for source in (data, path):
        with pytest.raises(ImagePullError) as info:
            client.upload_blob("r", digest, source)
        assert info.value.message == (
            f"PUT blob {srv.host}/r@{digest}: the registry's answer is larger than the 10-byte limit for it; "
            "refusing to read more."
        )
    assert [p.split("?")[0] for p in srv.paths()] == [
        f"HEAD /v2/r/blobs/{digest}", "POST /v2/r/blobs/uploads/", "PUT /v2/r/blobs/uploads/u1",
        f"HEAD /v2/r/blobs/{digest}", "POST /v2/r/blobs/uploads/", "PUT /v2/r/blobs/uploads/u2",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# What the mutation run of manifest_exists / blob_size / get_blob / mount_blob / upload_blob / close /
# _each left unpinned
# ---------------------------------------------------------------------------------------------------


def test_manifest_exists_names_the_reference_when_the_head_fails(srv: Scripted, client: RegistryClient) -> None:
    # kills: manifest_exists mutmut_9, _15 (subject), _17 (method in the message)
    srv.script("HEAD", "/v2/r/manifests/t", Reply(400), Reply(403))
    with pytest.raises(ImagePullError) as info:
        client.manifest_exists("r", "t")
    assert failure(info) == (
        "ImagePullError",
        f"HEAD {srv.host}/r:t failed: 400.",
        {"registry": srv.host, "status": 400},
    )
    with pytest.raises(RegistryAuthError) as refused:
        client.manifest_exists("r", "t")
    assert refused.value.message == (
        f"{srv.host} refused to let us read {srv.host}/r:t anonymously (REGISTRY_USERNAME/REGISTRY_PASSWORD unset): 403."
    )
    assert srv.paths() == ["HEAD /v2/r/manifests/t"] * 2


def test_blob_size_names_the_blob_when_the_head_fails(srv: Scripted, client: RegistryClient) -> None:
    # kills: blob_size mutmut_8, _13
    srv.script("HEAD", f"/v2/r/blobs/{ZERO}", Reply(403), Reply(400))
    with pytest.raises(RegistryAuthError) as refused:
        client.blob_size("r", ZERO)
    assert refused.value.message == (
        f"{srv.host} refused to let us read blob {srv.host}/r@{ZERO} anonymously "
        "(REGISTRY_USERNAME/REGISTRY_PASSWORD unset): 403."
    )
    # the existence check before an upload asks the same way (with the push scope)
    with pytest.raises(ImagePullError) as info:
        client.upload_blob("r", ZERO, b"x")
    assert info.value.message == f"HEAD blob {srv.host}/r@{ZERO} failed: 400."
    assert srv.paths() == [f"HEAD /v2/r/blobs/{ZERO}"] * 2


def test_a_cached_blob_of_exactly_max_bytes_is_answered_from_the_cache(srv: Scripted, client: RegistryClient) -> None:
    # kills: get_blob mutmut_12 (<= became <)
    blob = srv.put_blob("r", b"q" * 20)
    assert client.get_blob("r", blob) == b"q" * 20
    assert client.get_blob("r", blob, max_bytes=20) == b"q" * 20
    assert srv.paths() == [f"GET /v2/r/blobs/{blob}"]
    assert client.stats == stats(requests=1, cache_hits=1)


def test_a_failed_mount_names_the_method_and_the_mount(srv: Scripted, client: RegistryClient) -> None:
    # kills: mount_blob mutmut_32 ("POST" -> "post" in the message; httpx upper-cases the method on the wire)
    blob = srv.put_blob("base/img", b"shared")
    srv.script("POST", "/v2/app/blobs/uploads/", Reply(400, errors_body("DENIED", "no mounts here")))
    with pytest.raises(ImagePushError) as info:
        client.mount_blob("app", blob, "base/img")
    assert failure(info) == (
        "ImagePushError",
        f"POST a mount of {blob} from {srv.host}/base/img failed: 400: DENIED no mounts here.",
        {"registry": srv.host, "status": 400},
    )


def test_mount_and_upload_posts_send_no_header_but_the_empty_length(srv: Scripted, client: RegistryClient) -> None:
    # kills: mount_blob mutmut_38, upload_blob mutmut_46 (a bogus "XXContent-LengthXX: 0" header)
    blob = srv.put_blob("base/img", b"shared")
    assert client.mount_blob("app", blob, "base/img") is True
    assert client.upload_blob("app", sha(b"new"), b"new", check_exists=False) is True
    posts = [s for s in srv.seen if s.method == "POST"]
    assert len(posts) == 2
    for post in posts:
        assert sorted(post.headers) == [
            "accept",
            "accept-encoding",
            "connection",
            "content-length",
            "host",
            "user-agent",
        ]
        assert (post.headers["content-length"], post.body) == ("0", b"")


def test_a_digest_is_escaped_whole_in_the_mount_and_upload_queries(srv: Scripted, client: RegistryClient) -> None:
    # A digest is one query value: even a '/' in it (say, from a damaged blob-cache record) is escaped.
    # kills: mount_blob mutmut_7, upload_blob mutmut_81 (quote() keeping '/')
    odd = "sha256:ab/cd"
    assert client.mount_blob("app", odd, "base/img") is False
    assert client.upload_blob("app", odd, b"x", check_exists=False) is True
    assert srv.paths() == [
        "POST /v2/app/blobs/uploads/?mount=sha256%3Aab%2Fcd&from=base/img",
        "POST /v2/app/blobs/uploads/",
        "PUT /v2/app/blobs/uploads/u2?_state=s&digest=sha256%3Aab%2Fcd",
    ]


def test_close_waits_for_platform_work_still_running_on_the_pool(srv: Scripted) -> None:
    # kills: close mutmut_3 (shutdown(wait=None) returns at once and closes the connections under the pool)
    amd = add_image(srv, "r", "amd64")
    arm = add_image(srv, "r", "arm64")
    idx = add_index(srv, "r", [entry(amd.manifest, "amd64"), entry(arm.manifest, "arm64")])
    asked, release = threading.Event(), threading.Event()

    def hold_arm(s: Seen) -> Reply | None:
        if s.path == f"/v2/r/manifests/{arm.manifest}":
            asked.set()
            release.wait(5)
        return None

    srv.guard = hold_arm
    c = RegistryClient(srv.host, retry=NOW, progress=lambda _m: None)
    got: dict[str, PlatformResolution] = {}
    resolver = threading.Thread(target=lambda: got.update(c.resolve_platforms("r", idx, ["amd64", "arm64"])))
    resolver.start()
    closer = threading.Thread(target=c.close)
    try:
        assert asked.wait(5)  # arm64 is on the pool, held by the registry
        closer.start()
        closer.join(0.3)
        assert closer.is_alive()  # close() waits for it
    finally:
        release.set()
        resolver.join(5)
        if closer.ident is not None:
            closer.join(5)
    assert not closer.is_alive() and not resolver.is_alive()
    assert got == {
        "amd64": PlatformResolution(amd.manifest, True, OCI_MANIFEST, amd.config, idx),
        "arm64": PlatformResolution(arm.manifest, True, OCI_MANIFEST, arm.config, idx),
    }
    with pytest.raises(RuntimeError):
        c.ping()
