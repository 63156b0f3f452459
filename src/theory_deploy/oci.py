"""A Distribution API v2 client over plain httpx: auth, retries, manifests, blobs, indexes.

Why not a library: `oras` cannot push an index and the docker SDK gives no per-platform digests.
Why one file of this size: auth, retries, body verification and the connection pool share state
(the token cache per scope, the retry budget), and every caller relies on one rule for when a body
is trusted. Split up, two halves could disagree on that rule.

This client speaks just enough of the API for theory-deploy:

* **Auth.** Anonymous first. A `401` with `WWW-Authenticate: Basic` makes it send the credentials;
  a `401` with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` makes it fetch a token from
  the realm (with Basic credentials when it has them) and retry. Tokens are cached per scope.
  Credentials are sent only after a challenge, never in a URL, and never appear in a message. They
  belong to one registry host (`RegistryClients`): another registry, and a token realm on another
  host or over plain http, never receive them (THEORY_ALLOW_TOKEN_REALM=host opts a realm in).
* **Bounds.** Every answer's body is read up to a limit (manifests and configs 4 MiB, tokens 1 MiB,
  anything else THEORY_REGISTRY_MAX_RESPONSE_BYTES, default 64 MiB) and cut off beyond it.
* **Retries,** as go-containerregistry does them: 3 attempts, backoff about 1 s then 3 s, on
  408/429/499/500/502/503/504/522 and on connection resets, EOFs and timeouts; `Retry-After` is
  honoured up to a bound. Each retry prints one progress line on stderr. 401/403/404 are never
  retried: they fail at once as `RegistryAuthError` / `ImageUnavailableError`. Exhausted retries
  raise `RegistryUnreachableError`.
* **Integrity.** A manifest fetched by digest must hash to that digest, and to the registry's
  `Docker-Content-Digest`; otherwise `DigestIntegrityError`. Blobs fetched by digest likewise.
* **Speed.** One pooled httpx client per RegistryClient, shared by the threads that use it
  (keep-alive, a pool of `max_connections`); HTTP/2 over TLS when the `h2` package is importable
  (THEORY_REGISTRY_HTTP2=0 turns it off); one CA bundle load per process, not per client. A body
  fetched by digest never changes: manifests and configs (up to their 4 MiB limits) are kept per
  client, by repository and digest, in a bounded LRU (`cache_bytes`, default 32 MiB), and only once
  they hashed to their digest: the cache never holds an unverified byte. Tags are always asked.
  `resolve_platforms` fetches the platforms of one index concurrently (manifest, then its config).
  Threads that meet the same bearer challenge at once fetch one token, not one each.
* **Platforms.** `resolve_platform` turns an index, a manifest list or an image manifest into the
  one image manifest for `linux/<arch>`, checking the image config's `os`/`architecture` itself. It
  skips attestation entries and tells a config digest (which cannot be pulled) from an unknown one.

The client is thread-safe: one instance may serve a thread pool.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import ipaddress
import json
import os
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from . import output
from .errors import (
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
from .refs import DIGEST_RE

# ---------------------------------------------------------------------------------------------------
# Media types
# ---------------------------------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

# BuildKit marks provenance/SBOM manifests inside an index with this annotation (and unknown/unknown).
ATTESTATION_ANNOTATION = "vnd.docker.reference.type"

# Configs are small; a blob bigger than this is a layer, and is never downloaded to be inspected.
_MAX_CONFIG_BYTES = 4 * 1024 * 1024
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_MAX_TOKEN_BYTES = 1024 * 1024
# Any other registry answer (an error body, a token, a tag list, a blob read whole) is cut here, so a
# registry that answers with an endless body cannot eat memory. THEORY_REGISTRY_MAX_RESPONSE_BYTES raises it.
MAX_RESPONSE_BYTES_ENV = "THEORY_REGISTRY_MAX_RESPONSE_BYTES"
_DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Token services on another host than the registry that may receive the credentials (comma-separated
# host or host:port); also allows a plain-http realm.
ALLOW_TOKEN_REALM_ENV = "THEORY_ALLOW_TOKEN_REALM"  # noqa: S105 (a variable name, not a credential)
# Well-known registries whose token service lives on another host.
_KNOWN_REALM_HOSTS = {
    "docker.io": "auth.docker.io",
    "registry-1.docker.io": "auth.docker.io",
    "index.docker.io": "auth.docker.io",
}


def _max_response_bytes() -> int:
    raw = os.environ.get(MAX_RESPONSE_BYTES_ENV, "").strip()
    try:
        value = int(raw) if raw else 0
    except ValueError:
        value = 0
    return value if value > 0 else _DEFAULT_MAX_RESPONSE_BYTES


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Connections: one TLS context per process, HTTP/2 when h2 is installed
# ---------------------------------------------------------------------------------------------------

HTTP2_ENV = "THEORY_REGISTRY_HTTP2"
_SSL_CONTEXTS: dict[tuple[str, str], ssl.SSLContext] = {}
_SSL_LOCK = threading.Lock()


def _shared_ssl_context() -> ssl.SSLContext:
    """httpx's verifying context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR as trust_env reads them),
    built once per process: loading the CA bundle costs tens of milliseconds per client otherwise."""
    key = (os.environ.get("SSL_CERT_FILE", ""), os.environ.get("SSL_CERT_DIR", ""))
    with _SSL_LOCK:
        context = _SSL_CONTEXTS.get(key)
        if context is None:
            context = _SSL_CONTEXTS[key] = httpx.create_ssl_context(verify=True, trust_env=True)
        return context


def _http2_wanted() -> bool:
    """HTTP/2 (negotiated by ALPN over TLS only; plain http stays HTTP/1.1) when `h2` is importable."""
    if os.environ.get(HTTP2_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Verified bodies, by digest
# ---------------------------------------------------------------------------------------------------

DEFAULT_CACHE_BYTES = 32 * 1024 * 1024


class _VerifiedBodies:
    """An LRU of bodies that hashed to their digest, bounded in bytes. Content-addressed: a body
    stored under a digest is that digest's body forever. Callers put only after checking the hash."""

    def __init__(self, max_bytes: int, max_entry: int) -> None:
        self._max_bytes = max(0, max_bytes)
        self._max_entry = min(max_entry, self._max_bytes)
        self._items: OrderedDict[tuple[str, str, str], tuple[bytes, str]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> tuple[bytes, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[str, str, str], body: bytes, media_type: str = "") -> None:
        if len(body) > self._max_entry:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old[0])
            self._items[key] = (body, media_type)
            self._size += len(body)
            while self._size > self._max_bytes and self._items:
                _key, (evicted, _type) = self._items.popitem(last=False)
                self._size -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# ---------------------------------------------------------------------------------------------------
# Retry policy
# ---------------------------------------------------------------------------------------------------

RETRY_STATUSES = frozenset({408, 429, 499, 500, 502, 503, 504, 522})


@dataclass(frozen=True)
class RetryPolicy:
    """go-containerregistry's: 3 attempts, waits of `base_delay` then `base_delay * factor` (1 s, 3 s).

    `THEORY_REGISTRY_RETRY_BASE_DELAY` (seconds) scales the waits, so tests of the CLI stay fast.
    A `Retry-After` header replaces the computed wait, capped at `max_retry_after`.
    """

    attempts: int = 3
    base_delay: float = 1.0
    factor: float = 3.0
    max_retry_after: float = 30.0

    def delay(self, retry_number: int) -> float:
        """Wait before retry number `retry_number` (1 = the first retry)."""
        return self.base_delay * (self.factor ** (retry_number - 1))

    @classmethod
    def from_env(cls) -> RetryPolicy:
        raw = os.environ.get("THEORY_REGISTRY_RETRY_BASE_DELAY")
        if raw:
            try:
                return cls(base_delay=max(0.0, float(raw)))
            except ValueError:
                pass
        return cls()


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes
    data: dict[str, Any] = field(repr=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def is_image(self) -> bool:
        return self.media_type in IMAGE_MANIFEST_TYPES


@dataclass(frozen=True)
class PlatformResolution:
    """The image manifest for one platform. `from_index` says the digest asked for was an index."""

    manifest_digest: str
    from_index: bool
    media_type: str
    config_digest: str = ""
    index_digest: str | None = None


def is_loopback(registry: str) -> bool:
    host = registry
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":  # host names are case-insensitive
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------
# Auth challenges
# ---------------------------------------------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://x/token",service="x",scope="repository:a:pull"` → ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def _pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


# ---------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------

Body = bytes | Path | Callable[[], IO[bytes]] | None


class RegistryClient:
    def __init__(
        self,
        registry: str,
        *,
        credentials: tuple[str, str] | None = None,
        insecure: bool | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        progress: Callable[[str], None] | None = None,
        max_connections: int = 16,
        credentials_note: str | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.registry = registry
        self.insecure = is_loopback(registry) if insecure is None else insecure
        self.base_url = f"{'http' if self.insecure else 'https'}://{registry}"
        self._credentials = credentials
        # Why there are no credentials, for messages (e.g. they belong to another registry host).
        self._credentials_note = credentials_note or "REGISTRY_USERNAME/REGISTRY_PASSWORD unset"
        self.retry = retry or RetryPolicy.from_env()
        self._progress = progress or output.progress
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            transport=transport,
            follow_redirects=True,  # blob GETs redirect to storage; httpx drops Authorization off-origin
            trust_env=True,
            verify=_shared_ssl_context(),
            http2=transport is None and _http2_wanted(),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._max_connections = max(1, max_connections)
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        self._use_basic = False
        self._bodies = _VerifiedBodies(cache_bytes, max(_MAX_MANIFEST_BYTES, _MAX_CONFIG_BYTES))
        self._pool: ThreadPoolExecutor | None = None
        # Counters, for tests and the benchmark: how much work a call really did.
        self.stats: dict[str, int] = {
            "requests": 0,
            "retries": 0,
            "blob_uploads": 0,
            "blob_skips": 0,
            "blob_mounts": 0,
            "cache_hits": 0,
            "token_requests": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._http.close()

    def clear_cache(self) -> None:
        """Forget the verified bodies kept by digest (the next reads ask the registry again)."""
        self._bodies.clear()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] = self.stats.get(key, 0) + n

    # -- helpers ----------------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _where(self, url: str) -> str:
        """A URL for messages: host and path only (no query, no userinfo)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        if ":" in (parts.hostname or "") and not host.startswith("["):
            host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        return f"{host}{parts.path}"

    def _auth_header(self, scope: str | None) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope or "")
            if token is None and scope:
                # A push token also covers pulls of the same repository.
                if scope.endswith(":pull"):
                    token = self._tokens.get(scope + ",push")
            use_basic = self._use_basic
        if token:
            return {"Authorization": f"Bearer {token}"}
        if use_basic and self._credentials:
            return {"Authorization": _basic(self._credentials)}
        return {}

    # -- the request loop -----------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        headers: dict[str, str] | None = None,
        body: Body = None,
        ok: tuple[int, ...] = (200,),
        not_found_ok: bool = False,
        write: bool = False,
        what: str = "",
        before_retry: Callable[[httpx.Response], None] | None = None,
        max_body: int | None = None,
    ) -> httpx.Response:
        """Send with auth and retries. Returns a response whose status is in `ok` (or 404 when
        `not_found_ok`); raises the right error for anything else."""
        attempts = max(1, self.retry.attempts)
        attempt = 1
        auth_tries = 0
        while True:
            req_headers = dict(headers or {})
            req_headers.update(self._auth_header(scope))
            try:
                response = self._send_once(method, url, req_headers, body, max_body=max_body, what=what)
            except httpx.TransportError as exc:
                reason = _describe_transport_error(exc)
                if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError):
                    raise RegistryUnreachableError(f"{method} {self._where(url)} failed: {reason}.") from None
                if attempt >= attempts:
                    raise RegistryUnreachableError(
                        f"{method} {self._where(url)} failed after {attempts} attempts: {reason}.",
                        details={"registry": self.registry},
                    ) from None
                self._backoff(method, url, reason, attempt, attempts, None)
                attempt += 1
                continue
            status = response.status_code
            if status == 401 and auth_tries < 2:
                challenge = response.headers.get("www-authenticate", "")
                if self._answer_challenge(challenge, scope, sent=req_headers.get("Authorization")):
                    auth_tries += 1
                    continue
            if status in ok or (status == 404 and not_found_ok):
                return response
            if status in RETRY_STATUSES:
                reason = f"{status}{(' ' + response.reason_phrase) if response.reason_phrase else ''}"
                if attempt >= attempts:
                    raise RegistryUnreachableError(
                        f"{method} {self._where(url)} kept failing: {reason} after {attempts} attempts"
                        f"{_registry_error_suffix(response)}.",
                        details={"registry": self.registry, "status": status},
                    )
                if before_retry is not None:
                    before_retry(response)  # may raise a better error than retrying would
                self._backoff(method, url, reason, attempt, attempts, response.headers.get("retry-after"))
                attempt += 1
                continue
            raise self._error_for(method, url, response, write=write, what=what)

    def _send_once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body,
        *,
        max_body: int | None = None,
        what: str = "",
    ) -> httpx.Response:
        self._count("requests")
        if body is None or isinstance(body, bytes):
            return self._send_bounded(method, url, headers, body, max_body, what)
        if isinstance(body, Path):
            path = body

            def opener() -> IO[bytes]:
                return path.open("rb")
        else:
            opener = body
        with opener() as stream:
            return self._send_bounded(method, url, headers, _chunks(stream), max_body, what)

    def _send_bounded(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | Iterator[bytes] | None,
        max_body: int | None,
        what: str,
    ) -> httpx.Response:
        """Send, then read the answer's body (decoded) up to `max_body` bytes, never more: a registry
        answering a huge or endless body is cut off with ImagePullError instead of eating memory."""
        limit = max_body if max_body is not None else _max_response_bytes()
        request = self._http.build_request(method, url, headers=headers, content=content)
        response = self._http.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            too_big = method != "HEAD" and declared.isdigit() and int(declared) > limit
            chunks: list[bytes] = []
            size = 0
            if not too_big:
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        too_big = True
                        break
                    chunks.append(chunk)
        finally:
            response.close()
        if too_big:
            raise ImagePullError(
                f"{method} {what or self._where(url)}: the registry's answer is larger than the "
                f"{limit}-byte limit for it; refusing to read more.",
                remedy=f"Check the registry (or a proxy in front of it); if the answer is genuine, raise "
                f"{MAX_RESPONSE_BYTES_ENV}=<bytes> (manifests and configs have fixed limits of "
                f"{_MAX_MANIFEST_BYTES} and {_MAX_CONFIG_BYTES} bytes).",
                details={"registry": self.registry, "limit": limit},
            )
        response._content = b"".join(chunks)  # what Response.read() sets; the stream is consumed
        return response

    def _backoff(
        self, method: str, url: str, reason: str, attempt: int, attempts: int, retry_after: str | None
    ) -> None:
        wait = self.retry.delay(attempt)
        hinted = _retry_after_seconds(retry_after)
        if hinted is not None:
            wait = min(hinted, self.retry.max_retry_after)
        self._count("retries")
        self._progress(
            f"retrying {method} {self._where(url)} after {reason} (attempt {attempt + 1}/{attempts}, in {wait:.1f}s)"
        )
        if wait > 0:
            time.sleep(wait)

    def _answer_challenge(self, challenge: str, scope: str | None, *, sent: str | None) -> bool:
        """Act on a 401's challenge (`sent`: the Authorization header it answered). True when a retry
        with new auth makes sense."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self._credentials and not self._use_basic:
                with self._lock:
                    self._use_basic = True
                return True
            return False
        if scheme == "bearer" and params.get("realm"):
            refusal = self._realm_refusal(params["realm"]) if self._credentials else None
            if refusal:
                raise RegistryAuthError(
                    f"{self.registry}: its token service {self._where(params['realm'])} is {refusal}; "
                    "refusing to send REGISTRY_USERNAME/REGISTRY_PASSWORD there.",
                    remedy=f"If that token service is trusted for {self.registry}, allow it with "
                    f"{ALLOW_TOKEN_REALM_ENV}=<its host> (comma-separated for several).",
                    details={"registry": self.registry},
                )
            token_scope = _merge_scopes(scope, params.get("scope"))
            with self._lock:
                scope_lock = self._token_locks.setdefault(token_scope, threading.Lock())
            # One token fetch per scope at a time: threads challenged together wait for the first one's
            # token instead of each asking the token service (a token that was refused is fetched anew).
            with scope_lock:
                with self._lock:
                    token = self._tokens.get(token_scope)
                if token is None or sent == f"Bearer {token}":
                    token = self._fetch_token(params["realm"], params.get("service"), token_scope)
                with self._lock:
                    # Kept under the scope asked for and under the request's own: a challenge without
                    # a scope (`GET /v2/`) keys its token by "", which the retry looks up.
                    self._tokens[token_scope] = token
                    self._tokens[scope or ""] = token
            return True
        return False

    def _realm_refusal(self, realm: str) -> str | None:
        """Why the credentials must not go to this token realm, or None when they may: the realm must
        be on the registry's own host over https (plain http only when registry and realm are both
        loopback and the registry itself is plain http), unless THEORY_ALLOW_TOKEN_REALM names it."""
        parts = urlsplit(realm)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            return "not a valid URL"
        allowed = {h.strip().lower() for h in os.environ.get(ALLOW_TOKEN_REALM_ENV, "").split(",") if h.strip()}
        if host and (host in allowed or (port and f"{host}:{port}" in allowed)):
            return None
        registry_host = (urlsplit(f"//{self.registry}").hostname or "").lower()
        if host != registry_host and host != _KNOWN_REALM_HOSTS.get(registry_host):
            return f"on another host ({host or '?'}) than the registry ({registry_host})"
        scheme = parts.scheme.lower()
        if scheme == "https":
            return None
        if scheme == "http" and self.insecure and is_loopback(self.registry) and is_loopback(host):
            return None
        return f"reached over {scheme or '?'}://, not https://"

    def _fetch_token(self, realm: str, service: str | None, scope: str) -> str:
        query = []
        if service:
            query.append(f"service={quote(service, safe='')}")
        for item in scope.split(" "):
            if item:
                query.append(f"scope={quote(item, safe=':,/')}")
        url = realm + (("&" if "?" in realm else "?") + "&".join(query) if query else "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryAuthError(f"{self.registry}: the registry's token realm is not an http(s) URL.")
        headers = {"Authorization": _basic(self._credentials)} if self._credentials else {}
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            self._count("token_requests")
            try:
                response = self._send_once("GET", url, headers, None, max_body=_MAX_TOKEN_BYTES, what="a token")
            except httpx.TransportError as exc:
                reason = _describe_transport_error(exc)
                if attempt >= attempts:
                    raise RegistryUnreachableError(
                        f"GET {self._where(realm)} (token) failed after {attempts} attempts: {reason}."
                    ) from None
                self._backoff("GET", realm, reason, attempt, attempts, None)
                continue
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                self._backoff(
                    "GET",
                    realm,
                    str(response.status_code),
                    attempt,
                    attempts,
                    response.headers.get("retry-after"),
                )
                continue
            if response.status_code in (401, 403):
                who = "the given credentials" if self._credentials else f"anonymous access ({self._credentials_note})"
                raise RegistryAuthError(
                    f"{self.registry}: the token service {self._where(realm)} refused {who} "
                    f"for scope {scope!r} "
                    f"({response.status_code})."
                )
            if response.status_code != 200:
                raise RegistryUnreachableError(
                    f"{self.registry}: the token service {self._where(realm)} answered {response.status_code}."
                )
            try:
                payload = response.json()
            except ValueError:
                payload = None
            # a JSON answer that is not an object (an array, a string) holds no token either
            token = (payload.get("token") or payload.get("access_token")) if isinstance(payload, dict) else None
            if not isinstance(token, str) or not token:
                raise RegistryAuthError(f"{self.registry}: the token service {self._where(realm)} returned no token.")
            if not token.isascii() or not token.isprintable() or token != token.strip():
                raise RegistryAuthError(
                    f"{self.registry}: the token service {self._where(realm)} returned a token that cannot "
                    "be sent in an HTTP header (control characters or whitespace)."
                )
            from .secret_values import register_secret_value

            register_secret_value(token)
            return token
        raise AssertionError("unreachable")

    def _error_for(
        self, method: str, url: str, response: httpx.Response, *, write: bool, what: str
    ) -> TheoryDeployError:
        status = response.status_code
        subject = what or self._where(url)
        suffix = _registry_error_suffix(response)
        if status in (401, 403):
            who = "with the given credentials" if self._credentials else f"anonymously ({self._credentials_note})"
            verb = "write" if write else "read"
            return RegistryAuthError(
                f"{self.registry} refused to let us {verb} {subject} {who}: {status}{suffix}.",
                details={"registry": self.registry, "status": status},
            )
        if status == 404:
            return ImageUnavailableError(
                f"{subject} does not exist on {self.registry} (404{suffix}).",
                details={"registry": self.registry, "status": status},
            )
        cls = ImagePushError if write else ImagePullError
        return cls(
            f"{method} {subject} failed: {status}{suffix}.",
            details={"registry": self.registry, "status": status},
        )

    # -- API: ping ----------------------------------------------------------------------------------------
    def ping(self) -> None:
        """GET /v2/: reachable, and (after any challenge) allowed."""
        self._request("GET", self.url("/v2/"), scope=None, what=f"{self.registry}/v2/")

    # -- API: manifests -----------------------------------------------------------------------------------
    def head_manifest(self, repo: str, reference: str) -> ManifestHead:
        url = self.url(f"/v2/{repo}/manifests/{reference}")
        what = f"{self.registry}/{repo}{_at(reference)}"
        response = self._request("HEAD", url, scope=_pull_scope(repo), headers={"Accept": ACCEPT_MANIFESTS}, what=what)
        header_digest = response.headers.get("docker-content-digest", "")
        if DIGEST_RE.match(reference) and header_digest and header_digest != reference:
            raise DigestIntegrityError(
                f"{what}: the registry says its digest is {header_digest}, not the digest asked for."
            )
        digest = header_digest or (reference if DIGEST_RE.match(reference) else "")
        if not digest:
            # No header on a tag HEAD: fall back to GET, which we can hash ourselves.
            return self._head_from_get(repo, reference)
        media_type = _media_type(response.headers.get("content-type", ""))
        size = int(response.headers.get("content-length") or 0)
        return ManifestHead(digest, media_type, size)

    def _head_from_get(self, repo: str, reference: str) -> ManifestHead:
        manifest = self.get_manifest(repo, reference)
        return ManifestHead(manifest.digest, manifest.media_type, len(manifest.body))

    def get_manifest(self, repo: str, reference: str) -> Manifest:
        """GET a manifest by tag or digest and prove it: it must hash to the digest asked for and to the
        registry's Docker-Content-Digest. A digest this client already proved is answered from its
        cache of verified bodies (tags are always asked)."""
        url = self.url(f"/v2/{repo}/manifests/{reference}")
        what = f"{self.registry}/{repo}{_at(reference)}"
        if DIGEST_RE.match(reference):
            cached = self._bodies.get(("manifest", repo, reference))
            if cached is not None:
                self._count("cache_hits")
                body, media_type = cached
                return Manifest(reference, media_type, body, json.loads(body))

        def config_instead(response: httpx.Response) -> None:
            # distribution 2.x answers a manifest GET of a *config* digest with 500 (it fails to parse
            # the blob as a manifest); say what it is instead of retrying something that cannot work.
            if response.status_code == 500 and DIGEST_RE.match(reference):
                if self._blob_kind(repo, reference) == "other":
                    raise ImageUnavailableError(
                        f"{what} is a blob (a layer) in {self.registry}/{repo}, not a manifest.",
                        details={"digest": reference},
                    )

        response = self._request(
            "GET",
            url,
            scope=_pull_scope(repo),
            headers={"Accept": ACCEPT_MANIFESTS},
            what=what,
            before_retry=config_instead,
            max_body=_MAX_MANIFEST_BYTES,
        )
        body = response.content  # at most _MAX_MANIFEST_BYTES: _send_bounded refuses to read more
        actual = sha256_digest(body)
        header_digest = response.headers.get("docker-content-digest", "")
        if DIGEST_RE.match(reference) and actual != reference:
            raise DigestIntegrityError(
                f"{what}: the manifest served hashes to {actual}, not to the digest asked for.",
                details={"requested": reference, "actual": actual},
            )
        if header_digest and header_digest != actual:
            raise DigestIntegrityError(
                f"{what}: the manifest served hashes to {actual}, but the registry's "
                f"Docker-Content-Digest says {header_digest}.",
                details={"header": header_digest, "actual": actual},
            )
        try:
            data = json.loads(body)
        except ValueError:
            raise ImagePullError(f"{what}: the registry served a manifest that is not JSON.") from None
        if not isinstance(data, dict):
            raise ImagePullError(f"{what}: the registry served a manifest that is not a JSON object.")
        media_type = data.get("mediaType") or _media_type(response.headers.get("content-type", ""))
        if media_type not in MANIFEST_TYPES:
            media_type = _guess_media_type(data) or media_type
        if media_type not in MANIFEST_TYPES:
            if _looks_like_config(data):
                raise ConfigDigestError(
                    f"{what} is an image config, not a manifest; a config cannot be pulled.",
                    details={"digest": actual},
                )
            raise ImagePullError(f"{what}: unsupported manifest type {media_type or '(none)'!r}.")
        # `actual` is the sha256 of exactly these bytes: whatever was asked, they are its body.
        self._bodies.put(("manifest", repo, actual), body, media_type)
        return Manifest(actual, media_type, body, data)

    def put_manifest(self, repo: str, reference: str | None, body: bytes, media_type: str) -> str:
        """PUT a manifest by its digest (reference None) or under a tag. Returns its digest."""
        digest = sha256_digest(body)
        reference = reference or digest
        url = self.url(f"/v2/{repo}/manifests/{reference}")
        what = f"{self.registry}/{repo}{_at(reference)}"
        response = self._request(
            "PUT",
            url,
            scope=_push_scope(repo),
            headers={"Content-Type": media_type},
            body=body,
            ok=(200, 201, 202),
            write=True,
            what=what,
        )
        header_digest = response.headers.get("docker-content-digest", "")
        if header_digest and header_digest != digest:
            raise DigestIntegrityError(
                f"{what}: the registry stored the manifest as {header_digest}, but its sha256 is {digest}."
            )
        return digest

    def manifest_exists(self, repo: str, reference: str) -> str | None:
        """The digest under `reference`, or None if there is none (404)."""
        url = self.url(f"/v2/{repo}/manifests/{reference}")
        response = self._request(
            "HEAD",
            url,
            scope=_pull_scope(repo),
            headers={"Accept": ACCEPT_MANIFESTS},
            not_found_ok=True,
            what=f"{self.registry}/{repo}{_at(reference)}",
        )
        if response.status_code == 404:
            return None
        return response.headers.get("docker-content-digest") or (reference if DIGEST_RE.match(reference) else None)

    # -- API: blobs ---------------------------------------------------------------------------------------
    def blob_size(self, repo: str, digest: str, *, scope: str | None = None) -> int | None:
        """HEAD a blob: its size, or None if the repository does not have it."""
        url = self.url(f"/v2/{repo}/blobs/{digest}")
        response = self._request(
            "HEAD",
            url,
            scope=scope or _pull_scope(repo),
            not_found_ok=True,
            what=f"blob {self.registry}/{repo}@{digest}",
        )
        if response.status_code == 404:
            return None
        return int(response.headers.get("content-length") or -1)

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self.blob_size(repo, digest) is not None

    def get_blob(self, repo: str, digest: str, *, max_bytes: int | None = None) -> bytes:
        """GET a blob whole; it must hash to `digest`. Small blobs (configs) this client already proved
        are answered from its cache of verified bodies."""
        url = self.url(f"/v2/{repo}/blobs/{digest}")
        what = f"blob {self.registry}/{repo}@{digest}"
        cached = self._bodies.get(("blob", repo, digest))
        if cached is not None and (max_bytes is None or len(cached[0]) <= max_bytes):
            self._count("cache_hits")
            return cached[0]
        response = self._request("GET", url, scope=_pull_scope(repo), what=what, max_body=max_bytes)
        body = response.content
        if max_bytes is not None and len(body) > max_bytes:
            raise ImagePullError(f"{what} is larger than {max_bytes} bytes.")
        actual = sha256_digest(body)
        if actual != digest:
            raise DigestIntegrityError(f"{what}: the blob served hashes to {actual}.", details={"actual": actual})
        self._bodies.put(("blob", repo, digest), body)
        return body

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Link a blob this registry already holds in `from_repo` into `repo`, sending no bytes.

        True when mounted (201). A registry that declines (no such blob there, no pull right on the
        source) answers 202 with an upload session instead; that session is left to expire and
        False tells the caller to upload as usual.
        """
        url = (
            self.url(f"/v2/{repo}/blobs/uploads/")
            + f"?mount={quote(digest, safe='')}&from={quote(from_repo, safe='/')}"
        )
        response = self._request(
            "POST",
            url,
            scope=f"{_push_scope(repo)} {_pull_scope(from_repo)}",
            ok=(201, 202),
            write=True,
            headers={"Content-Length": "0"},
            body=b"",
            what=f"a mount of {digest} from {self.registry}/{from_repo}",
        )
        if response.status_code == 201:
            self._count("blob_mounts")
            return True
        return False

    def upload_blob(
        self,
        repo: str,
        digest: str,
        data: bytes | Path,
        *,
        size: int | None = None,
        check_exists: bool = True,
    ) -> bool:
        """Upload a blob unless the repository has it. True when bytes were sent.

        POST starts an upload session; a monolithic PUT to its Location with `digest=` appended
        (by hand: httpx's `params=` would drop the session's `_state` query) completes it. A
        session that the registry forgot (404 on the PUT) is started again once.
        """
        scope = _push_scope(repo)
        if check_exists and self.blob_size(repo, digest, scope=scope) is not None:
            self._count("blob_skips")
            return False
        if size is None:
            size = len(data) if isinstance(data, bytes) else data.stat().st_size
        what = f"blob {self.registry}/{repo}@{digest}"
        for session in (1, 2):
            start = self._request(
                "POST",
                self.url(f"/v2/{repo}/blobs/uploads/"),
                scope=scope,
                ok=(202, 201),
                write=True,
                headers={"Content-Length": "0"},
                body=b"",
                what=f"an upload to {self.registry}/{repo}",
            )
            if start.status_code == 201:  # the registry mounted/had it already
                return False
            location = start.headers.get("location")
            if not location:
                raise ImagePushError(f"{self.registry}: the upload session for {repo} has no Location header.")
            put_url = urljoin(self.url(f"/v2/{repo}/blobs/uploads/"), location)
            put_url += ("&" if "?" in put_url else "?") + "digest=" + quote(digest, safe="")
            response = self._request(
                "PUT",
                put_url,
                scope=scope,
                body=data,
                ok=(201, 204),
                not_found_ok=True,
                write=True,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                what=what,
            )
            if response.status_code == 404:
                if session == 2:
                    break
                self._progress(f"restarting the upload of {what}: the registry lost the upload session")
                continue
            stored = response.headers.get("docker-content-digest", "")
            if stored and stored != digest:
                raise DigestIntegrityError(f"{what}: the registry stored it as {stored}.")
            self._count("blob_uploads")
            return True
        raise ImagePushError(
            f"{what}: the registry lost the upload session twice (404 on the PUT that completes it).",
            remedy="Re-run the push: blobs already uploaded are not sent again. If it keeps happening, the "
            "registry is dropping upload sessions (a load balancer spreading one upload over replicas "
            "without shared storage, or an upload purge set too short).",
        )

    # -- API: platforms ---------------------------------------------------------------------------------
    def resolve_platforms(self, repo: str, reference: str, platforms: list[str]) -> dict[str, PlatformResolution]:
        """`resolve_platform` for several platforms, fetching the index (or tag) only once; the
        platforms of an index are resolved concurrently (each: its manifest, then its config)."""
        what = f"{self.registry}/{repo}{_at(reference)}"
        try:
            top = self.get_manifest(repo, reference)
        except ImageUnavailableError:
            if DIGEST_RE.match(reference):
                self._explain_missing_manifest(repo, reference)
            raise
        arches = list(dict.fromkeys(p.removeprefix("linux/") for p in platforms))
        if top.is_index and len(arches) > 1:
            found = self._each(lambda arch: self._resolve_from(repo, top, arch, what), arches)
        else:
            found = [self._resolve_from(repo, top, arch, what) for arch in arches]
        by_arch = dict(zip(arches, found, strict=True))
        return {p: by_arch[p.removeprefix("linux/")] for p in platforms}

    def _each(self, fn: Callable[[str], PlatformResolution], items: list[str]) -> list[PlatformResolution]:
        """fn over items: the first in this thread, the others on the client's pool. Waits for all;
        raises the error of the first item (in order) that failed, as a sequential loop would."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_connections, thread_name_prefix="theory-oci")
            pool = self._pool
        futures: list[Future[PlatformResolution]] = [pool.submit(fn, item) for item in items[1:]]
        results: list[PlatformResolution] = []
        error: BaseException | None = None
        try:
            results.append(fn(items[0]))
        except BaseException as exc:  # noqa: BLE001 (re-raised below, after the others finished)
            error = exc
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
        if error is not None:
            raise error
        return results

    def resolve_platform(self, repo: str, digest: str, platform: str) -> PlatformResolution:
        """The image manifest for `linux/<platform>` that `digest` is or lists.

        Raises ConfigDigestError for an image config digest, PlatformMismatchError for the wrong
        platform (or an attestation), ImageUnavailableError for a digest the repository lacks.
        """
        arch = platform.removeprefix("linux/")
        what = f"{self.registry}/{repo}@{digest}"
        try:
            top = self.get_manifest(repo, digest)
        except ImageUnavailableError:
            self._explain_missing_manifest(repo, digest)
            raise
        return self._resolve_from(repo, top, arch, what)

    def _resolve_from(self, repo: str, top: Manifest, arch: str, what: str) -> PlatformResolution:
        if top.is_index:
            entry = _pick_index_entry(top.data, arch, what)
            child = self.get_manifest(repo, entry["digest"])
            if not child.is_image:
                raise PlatformMismatchError(
                    f"{what}: its linux/{arch} entry {entry['digest']} is a {child.media_type}, not an image manifest."
                )
            config_digest = self._check_image_config(repo, child, arch, f"{self.registry}/{repo}@{child.digest}")
            return PlatformResolution(child.digest, True, child.media_type, config_digest, top.digest)
        config_digest = self._check_image_config(repo, top, arch, what)
        return PlatformResolution(top.digest, False, top.media_type, config_digest, None)

    def _explain_missing_manifest(self, repo: str, digest: str) -> None:
        """A digest that is not a manifest: tell a config (or layer) blob from nothing at all."""
        what = f"{self.registry}/{repo}@{digest}"
        kind = self._blob_kind(repo, digest)
        if kind == "missing":
            raise ImageUnavailableError(
                f"{what}: no manifest (or blob) with that digest in {self.registry}/{repo}.",
                details={"registry": self.registry, "repository": repo, "digest": digest},
            )
        if kind == "other":
            raise ImageUnavailableError(
                f"{what} is a blob (a layer) in {self.registry}/{repo}, not a manifest.",
                details={"digest": digest},
            )

    def _blob_kind(self, repo: str, digest: str) -> str:
        """What a blob with this digest is: "missing", "manifest" or "other". Raises
        ConfigDigestError if it is an image config."""
        what = f"{self.registry}/{repo}@{digest}"
        size = self.blob_size(repo, digest)
        if size is None:
            return "missing"
        if not 0 <= size <= _MAX_CONFIG_BYTES:
            return "other"
        try:
            data = json.loads(self.get_blob(repo, digest, max_bytes=_MAX_CONFIG_BYTES))
        except ValueError:
            return "other"
        if not isinstance(data, dict):
            return "other"
        if data.get("mediaType") in MANIFEST_TYPES or _guess_media_type(data):
            return "manifest"
        if _looks_like_config(data):
            raise ConfigDigestError(
                f"{what} is the image config ({data.get('os', '?')}/{data.get('architecture', '?')}), "
                "not a manifest; "
                "a config cannot be pulled.",
                details={"digest": digest},
            )
        return "other"

    def _check_image_config(self, repo: str, manifest: Manifest, arch: str, what: str) -> str:
        config = manifest.data.get("config") or {}
        layers = manifest.data.get("layers") or []
        config_type = config.get("mediaType", "")
        config_digest = config.get("digest", "")
        if (
            any("in-toto" in str(layer.get("mediaType", "")) for layer in layers)
            or config_type not in IMAGE_CONFIG_TYPES
        ):
            raise PlatformMismatchError(
                f"{what} is an attestation or non-image artifact "
                f"(config type {config_type or '(none)'!r}), not a "
                f"linux/{arch} image manifest.",
                details={"digest": manifest.digest},
            )
        if not DIGEST_RE.match(config_digest):
            raise ImagePullError(f"{what}: its config digest {config_digest!r} is not a sha256 digest.")
        try:
            data = json.loads(self.get_blob(repo, config_digest, max_bytes=_MAX_CONFIG_BYTES))
        except ValueError:
            raise ImagePullError(f"{what}: its config {config_digest} is not JSON.") from None
        os_name, actual_arch = data.get("os"), data.get("architecture")
        if os_name != "linux" or actual_arch != arch:
            raise PlatformMismatchError(
                f"{what} is a {os_name}/{actual_arch} image, not linux/{arch}.",
                details={"digest": manifest.digest, "os": os_name, "architecture": actual_arch},
            )
        return config_digest

    # -- API: tags ----------------------------------------------------------------------------------------
    def list_tags(self, repo: str) -> list[str]:
        response = self._request(
            "GET",
            self.url(f"/v2/{repo}/tags/list"),
            scope=_pull_scope(repo),
            what=f"tags of {self.registry}/{repo}",
        )
        tags = response.json().get("tags") or []
        return [t for t in tags if isinstance(t, str)]


def _merge_scopes(ours: str | None, challenged: str | None) -> str:
    """The scope to ask a token for: ours, widened by the challenge's actions on the same
    repository (a HEAD before a push is challenged for `pull`; the token must also allow `push`)."""
    if not ours:
        return challenged or ""
    if not challenged or challenged == ours:
        return ours
    ours_prefix, _, ours_actions = ours.rpartition(":")
    ch_prefix, _, ch_actions = challenged.rpartition(":")
    if " " not in challenged and ours_prefix == ch_prefix:
        actions = list(dict.fromkeys([*ours_actions.split(","), *ch_actions.split(",")]))
        order = {"pull": 0, "push": 1}
        return f"{ours_prefix}:{','.join(sorted(actions, key=lambda a: (order.get(a, 2), a)))}"
    return f"{ours} {challenged}"


def _pick_index_entry(index: dict[str, Any], arch: str, what: str) -> dict[str, Any]:
    entries = index.get("manifests") or []
    candidates = []
    seen = []
    for entry in entries:
        plat = entry.get("platform") or {}
        os_name, entry_arch = plat.get("os", "unknown"), plat.get("architecture", "unknown")
        annotations = entry.get("annotations") or {}
        if ATTESTATION_ANNOTATION in annotations or (os_name, entry_arch) == ("unknown", "unknown"):
            continue
        seen.append(f"{os_name}/{entry_arch}" + (f"/{plat['variant']}" if plat.get("variant") else ""))
        if os_name == "linux" and entry_arch == arch and DIGEST_RE.match(entry.get("digest", "")):
            candidates.append(entry)
    if not candidates:
        listed = ", ".join(seen) or "none (only attestation entries)"
        raise PlatformMismatchError(
            f"{what} is an index without a linux/{arch} image; its platforms: {listed}.",
            details={"platforms": seen},
        )
    # arm64 may carry a variant; prefer v8 or none.
    candidates.sort(key=lambda e: e.get("platform", {}).get("variant") not in (None, "", "v8"))
    return candidates[0]


def _looks_like_config(data: dict[str, Any]) -> bool:
    return "rootfs" in data or (
        "architecture" in data and "os" in data and "layers" not in data and "manifests" not in data
    )


def _guess_media_type(data: dict[str, Any]) -> str | None:
    if isinstance(data.get("manifests"), list):
        return OCI_INDEX
    if isinstance(data.get("layers"), list) and isinstance(data.get("config"), dict):
        return OCI_MANIFEST
    return None


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip()


def _at(reference: str) -> str:
    return f"@{reference}" if DIGEST_RE.match(reference) or reference.startswith("sha256:") else f":{reference}"


def _basic(credentials: tuple[str, str] | None) -> str:
    assert credentials is not None
    user, password = credentials
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _chunks(stream: IO[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk


def _describe_transport_error(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "a timeout"
    if isinstance(exc, httpx.ConnectError):
        return "a connection error (refused or unreachable)"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection closing early (EOF)"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "a connection reset"
    return type(exc).__name__


def _registry_error_suffix(response: httpx.Response) -> str:
    """`: MANIFEST_UNKNOWN manifest unknown` from a registry's JSON error body, never its headers."""
    try:
        payload = response.json()
    except ValueError:
        return ""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not errors or not isinstance(errors, list) or not isinstance(errors[0], dict):
        return ""
    first = errors[0]
    code, message = str(first.get("code", ""))[:60], str(first.get("message", ""))[:200]
    text = " ".join(part for part in (code, message) if part)
    return f": {text}" if text else ""


class RegistryClients:
    """One RegistryClient per registry host. REGISTRY_USERNAME/REGISTRY_PASSWORD (when both are set)
    belong to one registry host and are sent to no other: THEORY_REGISTRY_HOST (or REGISTRY_HOST)
    when set, else `credentials_host` (the processor's image.repository registry, from callers that
    know it), else the first registry this factory is asked for (the one the verb was pointed at).
    Callable as a client factory: `clients(host)`."""

    def __init__(self, credentials_host: str | None = None) -> None:
        from .secret_values import registry_credentials, registry_credentials_host

        self._clients: dict[str, RegistryClient] = {}
        self._credentials = registry_credentials()
        configured = registry_credentials_host()
        self._credentials_host = configured or (credentials_host.strip().lower() if credentials_host else None)

    @property
    def credentials_host(self) -> str | None:
        """The registry host the credentials are bound to (None until known)."""
        return self._credentials_host

    def __call__(self, registry: str) -> RegistryClient:
        if registry not in self._clients:
            credentials, note = self._credentials, None
            if credentials is not None:
                if self._credentials_host is None:
                    self._credentials_host = registry.lower()
                if registry.lower() != self._credentials_host:
                    credentials = None
                    note = (
                        f"REGISTRY_USERNAME/REGISTRY_PASSWORD belong to {self._credentials_host}, not to "
                        f"{registry}; set THEORY_REGISTRY_HOST={registry} to use them here"
                    )
            self._clients[registry] = RegistryClient(registry, credentials=credentials, credentials_note=note)
        return self._clients[registry]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
