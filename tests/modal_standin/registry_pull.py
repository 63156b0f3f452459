"""What Modal's image builder does first for ``Image.from_registry``: pull the referenced image.

The stand-in's builder fetches the manifest a ``FROM <ref>`` names from the real OCI registry, over
the Docker Registry HTTP API v2, with plain ``httpx`` (never theory-deploy's own OCI client: a
stand-in must not share the code it tests):

* ``GET /v2/<name>/manifests/<tag|digest>`` anonymously first, as Docker does. On
  ``401 WWW-Authenticate: Basic`` the request is repeated with the registry secret's
  ``REGISTRY_USERNAME``/``REGISTRY_PASSWORD``; on ``Bearer realm=...,service=...,scope=...`` a
  token is fetched from the realm (with those credentials as Basic auth, or anonymously without a
  secret) and the request is repeated with ``Authorization: Bearer``.
* A digest reference must match the sha256 of the body served. An index (OCI index / Docker
  manifest list) resolves to its ``linux/amd64`` entry (attestations, ``unknown/unknown``, are never
  picked): Modal documents that ``from_registry`` images must be built for ``linux/amd64``.
* The image config is fetched (its digest checked) and must say ``linux/amd64``; every layer must
  exist (``HEAD`` on its blob). Layers are not downloaded: their existence is what a pull can fail on.

Failure texts follow Docker's pull errors (``manifest unknown``, ``unauthorized: authentication
required``, ``denied: ...``); Modal's own wording for a failed pull is not documented, so only the
substance (which reference, why) is meant to match.

Assumptions of the stand-in (not Modal rules): registries are reached over plain HTTP and only on
loopback (this machine reaches no other registry, and nothing here may send elsewhere); any other
host fails the build saying so. AWS ECR and GCP Artifact Registry auth are not implemented: a build
with those fails saying so.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
WANTED_PLATFORM = ("linux", "amd64")


class PullError(Exception):
    """The pull failed; ``str()`` is the reason (never a credential)."""


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"


@dataclass
class PullOutcome:
    """What one pull did. ``auth``: how the manifest was finally fetched (anonymous/basic/bearer)."""

    ok: bool
    error: str = ""
    auth: str = "anonymous"
    manifest_digest: str = ""  # the linux/amd64 image manifest pulled
    index_digest: str = ""  # the index the reference named, when it named one
    config: dict[str, Any] = field(default_factory=dict)


def parse_reference(ref: str) -> Reference:
    """Docker's reference grammar: [registry/]repository[:tag][@sha256:...] (docker.io by default)."""
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise PullError(f"invalid reference format: {ref!r} (bad digest)")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not TAG_RE.match(tag):
            raise PullError(f"invalid reference format: {ref!r} (bad tag)")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = "docker.io", rest if "/" in rest else f"library/{rest}"
    if not NAME_RE.match(repository):
        raise PullError(f"invalid reference format: repository name must be lowercase: {ref!r}")
    if digest is None and tag is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))


def _registry_error(resp: httpx.Response) -> str:
    """`CODE: message` from a registry's JSON error body, or the HTTP status."""
    try:
        errors = resp.json().get("errors") or []
        first = errors[0]
        return f"{str(first.get('code', '')).lower()}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP {resp.status_code}"


class _Session:
    def __init__(self, ref: Reference, credentials: tuple[str, str] | None, timeout: float) -> None:
        self.ref = ref
        self.credentials = credentials
        self.base = f"http://{ref.registry}"
        self.http = httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)
        self.auth_header: str | None = None
        self.auth = "anonymous"

    def close(self) -> None:
        self.http.close()

    def _basic(self) -> str:
        assert self.credentials is not None
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm", "")
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not is_loopback(parsed.netloc):
            raise PullError(f"stand-in: token realm {realm!r} is not on loopback; it is never contacted")
        query = {k: v for k, v in (("service", params.get("service", "")),) if v}
        query["scope"] = params.get("scope") or f"repository:{self.ref.repository}:pull"
        # Append to the realm's own query string (httpx's params= would replace it).
        url = realm + ("&" if parsed.query else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": self._basic()} if self.credentials else {}
        try:
            resp = self.http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise PullError(f"failed to fetch a token from {parsed.netloc}: {type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            if self.credentials:
                raise PullError("unauthorized: the registry refused the credentials of the registry secret")
            raise PullError("unauthorized: authentication required (no registry secret is attached)")
        if resp.status_code != 200:
            raise PullError(f"failed to fetch a token: HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise PullError("failed to fetch a token: the token response holds none")
        return f"Bearer {token}"

    def request(self, method: str, path: str, accept: str | None = None) -> httpx.Response:
        """One request, authenticating once when the registry challenges (Docker's order)."""
        url = self.base + path
        for attempt in range(2):
            headers = {"Accept": accept} if accept else {}
            if self.auth_header:
                headers["Authorization"] = self.auth_header
            try:
                resp = self.http.request(method, url, headers=headers)
                if resp.status_code in (301, 302, 307, 308) and method in ("GET", "HEAD"):
                    location = resp.headers.get("location", "")
                    target = urllib.parse.urljoin(url, location)
                    if not is_loopback(urllib.parse.urlsplit(target).netloc):
                        raise PullError(f"stand-in: the registry redirects to {target!r}, which is not on loopback")
                    resp = self.http.request(method, target)
            except httpx.HTTPError as exc:
                raise PullError(f"cannot reach the registry {self.ref.registry}: {type(exc).__name__}") from None
            if resp.status_code != 401 or attempt == 1:
                break
            scheme, params = _challenge(resp.headers.get("www-authenticate", ""))
            if scheme == "basic":
                if not self.credentials:
                    raise PullError("unauthorized: authentication required (no registry secret is attached)")
                self.auth_header, self.auth = self._basic(), "basic"
            elif scheme == "bearer":
                self.auth_header, self.auth = self._token(params), "bearer"
            else:
                raise PullError(f"unauthorized: unsupported authentication scheme {scheme!r}")
        if resp.status_code == 401:
            if self.credentials:
                raise PullError("unauthorized: the registry refused the credentials of the registry secret")
            raise PullError("unauthorized: authentication required (no registry secret is attached)")
        if resp.status_code == 403:
            raise PullError(f"denied: requested access to the resource is denied ({_registry_error(resp)})")
        return resp

    def manifest(self, reference: str) -> tuple[str, str, bytes]:
        """(media type, digest, body) of a manifest; 404 -> manifest unknown."""
        resp = self.request("GET", f"/v2/{self.ref.repository}/manifests/{reference}", MANIFEST_ACCEPT)
        if resp.status_code == 404:
            sep = "@" if DIGEST_RE.match(reference) else ":"
            raise PullError(
                f"manifest unknown: {self.ref.registry}/{self.ref.repository}{sep}{reference} does not exist"
            )
        if resp.status_code != 200:
            raise PullError(f"unexpected status {resp.status_code} for manifest {reference}: {_registry_error(resp)}")
        body = resp.content
        digest = _sha256(body)
        if DIGEST_RE.match(reference) and digest != reference:
            raise PullError(f"manifest verification failed for digest {reference} (the body hashes to {digest})")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        try:
            doc = json.loads(body)
        except ValueError:
            raise PullError(f"manifest {reference} is not JSON") from None
        return doc.get("mediaType") or media_type, digest, body

    def blob(self, digest: str, *, fetch: bool) -> bytes:
        resp = self.request("GET" if fetch else "HEAD", f"/v2/{self.ref.repository}/blobs/{digest}")
        if resp.status_code == 404:
            raise PullError(f"blob unknown: {digest} is missing from {self.ref.registry}/{self.ref.repository}")
        if resp.status_code != 200:
            raise PullError(f"unexpected status {resp.status_code} for blob {digest}")
        if fetch and _sha256(resp.content) != digest:
            raise PullError(f"blob verification failed for {digest}")
        return resp.content if fetch else b""


def pull(ref: str, credentials: tuple[str, str] | None, *, timeout: float = 20.0) -> PullOutcome:
    """Pull ``ref`` (manifest, platform, config, layer existence); a refusal is an outcome, not a raise."""
    outcome = PullOutcome(ok=False)
    try:
        parsed = parse_reference(ref)
        if not is_loopback(parsed.registry):
            raise PullError(
                f"stand-in: {parsed.registry} is not a loopback registry; nothing else is reachable from "
                "here (push the image to a loopback registry)"
            )
        session = _Session(parsed, credentials, timeout)
        try:
            _pull(session, ref, outcome)
        finally:
            outcome.auth = session.auth
            session.close()
    except PullError as exc:
        outcome.error = f"failed to pull {ref}: {exc}"
    except ValueError as exc:  # a body that is not the JSON it claims to be
        outcome.error = f"failed to pull {ref}: malformed registry response ({exc})"
    return outcome


def _pull(session: _Session, ref: str, outcome: PullOutcome) -> None:
    media_type, digest, body = session.manifest(session.ref.reference)
    doc = json.loads(body)
    if media_type in INDEX_TYPES or "manifests" in doc:
        outcome.index_digest = digest
        wanted = [
            m
            for m in doc.get("manifests", [])
            if (m.get("platform") or {}).get("os") == WANTED_PLATFORM[0]
            and (m.get("platform") or {}).get("architecture") == WANTED_PLATFORM[1]
        ]
        if not wanted:
            raise PullError(f"no matching manifest for {'/'.join(WANTED_PLATFORM)} in the manifest list entries")
        media_type, digest, body = session.manifest(str(wanted[0].get("digest", "")))
        doc = json.loads(body)
    config_desc = doc.get("config") or {}
    if not DIGEST_RE.match(str(config_desc.get("digest", ""))):
        raise PullError(f"manifest {digest} has no image config (it is not a runnable image)")
    config = json.loads(session.blob(config_desc["digest"], fetch=True))
    platform = (config.get("os"), config.get("architecture"))
    if platform != WANTED_PLATFORM:
        raise PullError(
            f"image does not match the required platform: wanted {'/'.join(WANTED_PLATFORM)}, "
            f"actual: {platform[0]}/{platform[1]}"
        )
    for layer in doc.get("layers") or []:
        session.blob(str(layer.get("digest", "")), fetch=False)
    outcome.ok, outcome.manifest_digest, outcome.config = True, digest, config
