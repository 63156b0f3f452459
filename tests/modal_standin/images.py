"""Tiny real images in the loopback registries, for tests whose deploys the stand-in must pull.

``tiny_image(payload)`` builds the bytes of a one-layer image (a file holding ``payload``, a
``linux/<arch>`` config, an OCI manifest) reproducibly, so its digest is known before anything is
pushed and can be a test constant. ``push_image`` / ``push_tiny_image`` upload it with plain
``httpx`` (no Docker, no theory-deploy code) and return ``host/repository@sha256:...``;
``push_tiny_index`` joins pushed manifests into an OCI index. Both authenticate with Basic
credentials when given (the auth registry of scripts/dev-services uses htpasswd Basic auth).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class TinyImage:
    """The bytes of a one-layer image; a pure function of (payload, arch, os), so its digest is too."""

    layer: bytes
    config: bytes
    manifest: bytes
    arch: str

    @property
    def digest(self) -> str:
        return _digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return _digest(self.config)

    @property
    def layer_digest(self) -> str:
        return _digest(self.layer)


@dataclass(frozen=True)
class PushedImage:
    ref: str  # host/repository@sha256:... (the image manifest)
    repository: str  # host/repository
    digest: str  # of the manifest
    config_digest: str
    layer_digest: str
    size: int  # of the manifest
    arch: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes], *, mtime: int = 0) -> bytes:
    """An uncompressed layer holding ``files`` (name -> bytes), in name order, every entry at ``mtime``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def image_config(layer: bytes, *, arch: str, os_name: str = "linux", labels: dict[str, str] | None = None) -> bytes:
    """The config of a one-layer ``os_name/arch`` image whose uncompressed layer is ``layer``."""
    config: dict[str, object] = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]}
    if labels:
        config["Labels"] = labels
    return json.dumps(
        {
            "architecture": arch,
            "os": os_name,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        },
        sort_keys=True,
    ).encode()


def tiny_image(payload: str = "a", *, arch: str = "amd64", os_name: str = "linux") -> TinyImage:
    """Build (not push) a one-layer image holding ``payload.txt``; same arguments, same digest."""
    raw = layer_tar({"payload.txt": payload.encode()})
    layer = gzip.compress(raw, mtime=0)
    config = image_config(raw, arch=arch, os_name=os_name, labels={"payload": payload})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": _digest(layer), "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    return TinyImage(layer, config, manifest, arch)


def _client(credentials: tuple[str, str] | None) -> httpx.Client:
    headers = {}
    if credentials:
        user, password = credentials
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return httpx.Client(timeout=30.0, trust_env=False, headers=headers)


def _upload_blob(http: httpx.Client, host: str, repository: str, data: bytes) -> str:
    digest = _digest(data)
    if http.head(f"http://{host}/v2/{repository}/blobs/{digest}").status_code == 200:
        return digest
    start = http.post(f"http://{host}/v2/{repository}/blobs/uploads/")
    start.raise_for_status()
    location = str(httpx.URL(f"http://{host}").join(start.headers["location"]))
    # Append the digest to the upload URL's own query (its `_state`); params= would replace it.
    url = location + ("&" if "?" in location else "?") + f"digest={digest}"
    put = http.put(url, content=data, headers={"Content-Type": "application/octet-stream"})
    put.raise_for_status()
    return digest


def _put_manifest(http: httpx.Client, host: str, repository: str, reference: str, body: bytes, media_type: str) -> str:
    resp = http.put(
        f"http://{host}/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
    )
    resp.raise_for_status()
    return _digest(body)


def push_image(
    host: str,
    repository: str,
    image: TinyImage,
    *,
    tag: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> PushedImage:
    """Push ``image`` (blobs, then the manifest by digest, or as ``tag``)."""
    with _client(credentials) as http:
        _upload_blob(http, host, repository, image.layer)
        _upload_blob(http, host, repository, image.config)
        digest = _put_manifest(http, host, repository, tag or image.digest, image.manifest, OCI_MANIFEST)
    return PushedImage(
        ref=f"{host}/{repository}@{digest}",
        repository=f"{host}/{repository}",
        digest=digest,
        config_digest=image.config_digest,
        layer_digest=image.layer_digest,
        size=len(image.manifest),
        arch=image.arch,
    )


def push_tiny_image(
    host: str,
    repository: str,
    *,
    payload: str = "a",
    arch: str = "amd64",
    os_name: str = "linux",
    tag: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> PushedImage:
    """``push_image(host, repository, tiny_image(payload, arch=, os_name=))``."""
    return push_image(
        host, repository, tiny_image(payload, arch=arch, os_name=os_name), tag=tag, credentials=credentials
    )


def push_tiny_index(
    host: str,
    repository: str,
    images: list[PushedImage],
    *,
    tag: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> str:
    """Push an OCI index over ``images`` (linux/<arch> each); returns ``host/repository@sha256:...``."""
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": i.digest,
                    "size": i.size,
                    "platform": {"architecture": i.arch, "os": "linux"},
                }
                for i in images
            ],
        },
        sort_keys=True,
    ).encode()
    with _client(credentials) as http:
        digest = _put_manifest(http, host, repository, tag or _digest(body), body, OCI_INDEX)
    return f"{host}/{repository}@{digest}"
