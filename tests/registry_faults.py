"""A fault-injecting HTTP proxy in front of a real registry, for tests of the OCI client.

    with FaultProxy("127.0.0.1:5000", faults=[Fault(r"/manifests/", "503", times=2)]) as proxy:
        client = RegistryClient(proxy.host, retry=RetryPolicy(base_delay=0.01))
        ...
        assert proxy.count(path=r"/manifests/") == 3

Fault kinds (each applies to the first `times` requests whose path matches `path`, and method if
given): "503", "500", "429" (with `Retry-After: 0`), "401", "403", "404" (answered by the proxy
without asking upstream), "drop" (close the connection without a response: an EOF for the client),
"tamper" (forward, then change one byte of the body but keep the upstream's Docker-Content-Digest).

`token_auth=TokenAuth(user, password)` makes the proxy a registry that demands bearer tokens:
requests without a valid token get `401 WWW-Authenticate: Bearer realm=<proxy>/token,service,scope`,
and `GET /token` hands out tokens for Basic `user:password`. `relative_location=True` rewrites
upload `Location` headers to relative URLs (some registries send them). Every request is recorded.

Also here: `push_synthetic_image`, which makes a tiny single-platform image in a registry with
the client under test (no Docker needed), and `push_index`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "content-length",
}


@dataclass
class Fault:
    path: str  # regex searched in the request path (no query)
    kind: str  # 503 | 500 | 429 | 401 | 403 | 404 | drop | tamper
    times: int = 1
    method: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.hits >= self.times:
            return False
        if self.method and self.method != method:
            return False
        return re.search(self.path, path) is not None


@dataclass
class TokenAuth:
    user: str
    password: str
    issued: dict[str, str] = field(default_factory=dict)  # token -> scope
    token_requests: list[str] = field(default_factory=list)  # scopes asked for


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    authorization: str  # "none" | "basic" | "bearer": never the value


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        faults: list[Fault] | None = None,
        token_auth: TokenAuth | None = None,
        relative_location: bool = False,
    ) -> None:
        self.upstream = upstream
        self.faults = list(faults or [])
        self.token_auth = token_auth
        self.relative_location = relative_location
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=30.0, follow_redirects=False)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection -------------------------------------------------------------------------------------
    def count(self, *, path: str | None = None, method: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (path is None or re.search(path, r.path)) and (method is None or r.method == method)
            )

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    # -- handling ---------------------------------------------------------------------------------------
    def _read_body(self, handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    handler.rfile.readline()
                    break
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
            return b"".join(chunks)
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _reply(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        headers: dict[str, str],
        body: bytes,
        *,
        head: bool,
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head and body:
            handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        raw_path = handler.path
        path = raw_path.split("?", 1)[0]
        auth = handler.headers.get("Authorization", "")
        kind = "bearer" if auth.startswith("Bearer ") else "basic" if auth.startswith("Basic ") else "none"
        body = self._read_body(handler)
        with self._lock:
            self.requests.append(Recorded(method, path, kind))
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.hits += 1
        head = method == "HEAD"
        if path == "/token" and self.token_auth is not None:
            self._token(handler, raw_path, auth)
            return
        if fault is not None and fault.kind != "tamper":
            if fault.kind == "drop":
                handler.close_connection = True
                try:
                    handler.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            status = int(fault.kind)
            headers = {"Content-Type": "application/json"}
            if status == 429:
                headers["Retry-After"] = "0"
            payload = json.dumps({"errors": [{"code": "INJECTED", "message": f"injected {status}"}]}).encode()
            self._reply(handler, status, headers, payload, head=head)
            return
        if self.token_auth is not None and path.startswith("/v2/") and not self._token_ok(auth):
            scope = self._scope_for(method, path)
            challenge = f'Bearer realm="http://{self.host}/token",service="fault-proxy"'
            if scope:
                challenge += f',scope="{scope}"'
            payload = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}).encode()
            self._reply(
                handler,
                401,
                {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
                payload,
                head=head,
            )
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.token_auth is not None:
            headers.pop("Authorization", None)
        try:
            upstream = self._http.request(method, f"http://{self.upstream}{raw_path}", headers=headers, content=body)
        except httpx.HTTPError:
            self._reply(handler, 502, {}, b"", head=head)
            return
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        location = out_headers.get("location") or out_headers.get("Location")
        if location:
            for key in list(out_headers):
                if key.lower() == "location":
                    del out_headers[key]
            location = location.replace(f"http://{self.upstream}", f"http://{self.host}")
            if self.relative_location:
                location = re.sub(r"^https?://[^/]+", "", location)
            out_headers["Location"] = location
        content = upstream.content
        if fault is not None and fault.kind == "tamper" and content:
            content = content[:-1] + (b" " if content[-1:] != b" " else b"\n")
        self._reply(handler, upstream.status_code, out_headers, content, head=head)

    # -- the tiny token service -----------------------------------------------------------------------
    @staticmethod
    def _scope_for(method: str, path: str) -> str | None:
        match = re.match(r"^/v2/(.+?)/(manifests|blobs|tags)/", path)
        if not match:
            return None
        action = "pull" if method in ("GET", "HEAD") else "pull,push"
        return f"repository:{match.group(1)}:{action}"

    def _token_ok(self, auth: str) -> bool:
        assert self.token_auth is not None
        return auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.token_auth.issued

    def _token(self, handler: BaseHTTPRequestHandler, raw_path: str, auth: str) -> None:
        assert self.token_auth is not None
        query = httpx.URL(raw_path).params
        scope = " ".join(query.get_list("scope"))
        with self._lock:
            self.token_auth.token_requests.append(scope)
        expected = "Basic " + base64.b64encode(f"{self.token_auth.user}:{self.token_auth.password}".encode()).decode()
        if auth != expected:
            self._reply(
                handler,
                401,
                {"Content-Type": "application/json"},
                b'{"errors":[{"code":"DENIED"}]}',
                head=False,
            )
            return
        token = secrets.token_hex(16)
        with self._lock:
            self.token_auth.issued[token] = scope
        self._reply(
            handler,
            200,
            {"Content-Type": "application/json"},
            json.dumps({"token": token}).encode(),
            head=False,
        )


# ---------------------------------------------------------------------------------------------------
# Synthetic images (no Docker): a config, one tiny gzip layer, a manifest
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticImage:
    manifest_digest: str
    config_digest: str
    layer_digest: str
    manifest_size: int
    arch: str


def push_synthetic_image(
    client: Any,
    repo: str,
    arch: str,
    payload: str = "hello",
    *,
    os_name: str = "linux",
    media_type: str | None = None,
) -> SyntheticImage:
    import gzip
    import hashlib
    import io
    import tarfile

    from theory_deploy import oci, push

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = payload.encode()
        info = tarfile.TarInfo("payload.txt")
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))
    raw_bytes = raw.getvalue()
    layer = gzip.compress(raw_bytes, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": arch,
            "os": os_name,
            "config": {"Labels": {"payload": payload}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    layer_digest, config_digest = oci.sha256_digest(layer), oci.sha256_digest(config)
    client.upload_blob(repo, layer_digest, layer)
    client.upload_blob(repo, config_digest, config)
    body = push.image_manifest_bytes(
        push.Descriptor(oci.OCI_CONFIG, config_digest, len(config)),
        [push.Descriptor(oci.OCI_LAYER_GZIP, layer_digest, len(layer))],
    )
    if media_type == oci.DOCKER_MANIFEST:
        doc = json.loads(body)
        doc["mediaType"] = oci.DOCKER_MANIFEST
        doc["config"]["mediaType"] = oci.DOCKER_CONFIG
        doc["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        body = json.dumps(doc).encode()
    digest = client.put_manifest(repo, None, body, media_type or oci.OCI_MANIFEST)
    return SyntheticImage(digest, config_digest, layer_digest, len(body), arch)


def push_attestation(client: Any, repo: str, subject: str) -> SyntheticImage:
    """A BuildKit-style provenance manifest: unknown/unknown config, one in-toto layer."""
    from theory_deploy import oci

    statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"digest": subject}]}).encode()
    config = json.dumps(
        {"architecture": "unknown", "os": "unknown", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    s_digest, c_digest = oci.sha256_digest(statement), oci.sha256_digest(config)
    client.upload_blob(repo, s_digest, statement)
    client.upload_blob(repo, c_digest, config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": c_digest, "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.in-toto+json",
                    "digest": s_digest,
                    "size": len(statement),
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
                }
            ],
        }
    ).encode()
    digest = client.put_manifest(repo, None, body, oci.OCI_MANIFEST)
    return SyntheticImage(digest, c_digest, s_digest, len(body), "unknown")


def push_index(
    client: Any,
    repo: str,
    images: list[SyntheticImage],
    *,
    attestations: dict[str, SyntheticImage] | None = None,
    media_type: str | None = None,
    tag: str | None = None,
) -> str:
    """An index over `images`; `attestations` maps an image's manifest digest to its attestation."""
    from theory_deploy import oci

    entries: list[dict[str, Any]] = []
    for image in images:
        entries.append(
            {
                "mediaType": oci.OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "platform": {"architecture": image.arch, "os": "linux"},
            }
        )
    for subject, att in (attestations or {}).items():
        entries.append(
            {
                "mediaType": oci.OCI_MANIFEST,
                "digest": att.manifest_digest,
                "size": att.manifest_size,
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {
                    "vnd.docker.reference.digest": subject,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
            }
        )
    mt = media_type or oci.OCI_INDEX
    body = json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": entries}).encode()
    return client.put_manifest(repo, tag, body, mt)
