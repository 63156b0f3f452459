"""Uploading built images by digest, then joining them into one multi-arch index.

Docker's recipe for multi-runner builds, done with our own registry client so that every
per-platform *manifest* digest is known (docker/build-push-action only reports the index):

1. `docker save` the local image. Engine 20.10 writes the legacy layout (`manifest.json`,
   `<id>.json` config, `<layer>/layer.tar`); newer engines write an OCI layout with the same
   `manifest.json`. Each layer is checked against the config's diff_id.
2. Each layer is normalised (`normalise_layer`), then gzipped deterministically (mtime 0, no file
   name), so the same content always gives the same blob digest. A blob the registry already has is
   not uploaded.
3. The config is normalised to match (`normalise_config`: the new diff_ids, `created` at the epoch)
   and uploaded; its digest is therefore not the local image id.
4. An OCI image manifest per platform is PUT by digest, then an OCI image index listing exactly
   those manifests with `{os: linux, architecture}`.

Same source in, same digests out, whatever the build cache or engine (reproducible images). The
engine's layers are not: with an empty build cache (every fresh CI runner) each RUN writes its files
at the build's time, each COPY takes the checkout's mtimes, and the config's `created` and history
carry the build time; the engine's built-in BuildKit ignores SOURCE_DATE_EPOCH for all of these.
So every layer tar is rewritten with each entry's mtime clamped to build.SOURCE_DATE_EPOCH (0),
atime/ctime dropped, owner names dropped (numeric uid/gid kept: that is what runtimes apply), and
entries in one stable order (path components, like a directory walk); file contents, modes, xattrs,
links and whiteouts are untouched. What a build writes that depends on time *inside* files is the
Dockerfile's business (SOURCE_DATE_EPOCH, hash-based .pyc: see build.py). An unchanged layer gives the
same normalised digest, so the registry already has it and it is skipped, as `docker push` would.

A local cache (`$THEORY_BLOB_CACHE_DIR`, else `$THEORY_STATE_DIR/blobs`, else
`~/.cache/theory-deploy/blobs`) remembers, per engine layer (diff_id), the normalised layer's diff_id,
compressed digest and size, per image its normalised config digest (records keyed by NORMALISATION),
and per blob the repositories it was pushed to (mount sources).
A warm push therefore neither saves nor gzips nor uploads: `docker image inspect`, a HEAD per
blob, and HEADs of the manifests are all it does.

Tags (moving, for people browsing the registry; pins never use them): the index is tagged
`<slug>` (e.g. `llm-litellm-v1`) and each platform manifest `<slug>-<arch>`. Never `latest`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import output
from .build import SOURCE_DATE_EPOCH, BuiltImage
from .docker import Docker, inspect_image
from .docker import docker_client as default_docker_client
from .errors import ImagePushError, TheoryDeployError
from .files import atomic_write
from .oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    RegistryClient,
    sha256_digest,
)
from .refs import PLATFORMS, ImageRef

GZIP_LEVEL = 6
# Bump when normalise_layer/normalise_config change their output: the blob cache's records are keyed
# by it, so a push never reuses a digest computed by another normalisation.
NORMALISATION = "n1"
_LAYERS = f"layers-{NORMALISATION}"  # original diff_id -> normalised diff_id, gzip digest, size
_IMAGES = f"images-{NORMALISATION}"  # image id -> normalised config digest, size, original diff_ids
SAVE_TIMEOUT_S = 3600.0
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PushResult:
    index: ImageRef
    platforms: dict[str, ImageRef]
    uploaded_blobs: int = 0
    skipped_blobs: int = 0  # already there, or mounted from another repository (no bytes sent)
    mounted_blobs: int = 0
    uploaded_bytes: int = 0
    tags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": str(self.index),
            "platforms": {arch: str(ref) for arch, ref in self.platforms.items()},
        }


# ---------------------------------------------------------------------------------------------------
# The blob cache
# ---------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    # Its own variable so a CI job can keep the cache across runs (actions/cache on this folder alone)
    # and several state folders (one per deployment under test, say) can share one.
    explicit = os.environ.get("THEORY_BLOB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    state = os.environ.get("THEORY_STATE_DIR")
    if state:
        return Path(state) / "blobs"
    return Path.home() / ".cache" / "theory-deploy" / "blobs"


class BlobCache:
    """diff_id → (normalised diff_id, compressed digest, size); image id → (config digest, size); blob digest → the
    repositories it was last seen in (so a push to a new repository can mount instead of upload).
    Small JSON files, written atomically, so concurrent pushes never see half a record."""

    _MAX_SOURCES = 8

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, kind: str, digest: str) -> Path:
        return self.root / kind / (digest.replace(":", "-") + ".json")

    def get(self, kind: str, digest: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(kind, digest).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def sources(self, digest: str, registry: str) -> list[str]:
        """Repositories (paths) of `registry` where this blob was seen, most recent first."""
        record = self.get("located", digest) or {}
        prefix = f"{registry}/"
        return [r[len(prefix) :] for r in record.get("repositories", []) if str(r).startswith(prefix)]

    def add_source(self, digest: str, repository: str) -> None:
        known = [r for r in (self.get("located", digest) or {}).get("repositories", []) if r != repository]
        self.put("located", digest, {"repositories": [repository, *known][: self._MAX_SOURCES]})

    def put(self, kind: str, digest: str, record: dict[str, Any]) -> None:
        path = self._path(kind, digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(record))
        except OSError as exc:  # a cache that cannot be written only costs speed
            output.progress(f"warning: cannot write the blob cache {self.root}: {exc.strerror}")


# ---------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _dumps(obj: Any) -> bytes:
    # Fixed key order (insertion) and separators: the same content always hashes the same.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def image_manifest_bytes(config: Descriptor, layers: list[Descriptor]) -> bytes:
    return _dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    )


def index_bytes(entries: list[tuple[str, str | None, Descriptor]]) -> bytes:
    """entries: (architecture, variant, manifest descriptor), in platform order."""
    manifests = []
    for arch, variant, desc in entries:
        platform: dict[str, str] = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        manifests.append({**desc.to_json(), "platform": platform})
    return _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


# ---------------------------------------------------------------------------------------------------
# Reproducible layers and config
# ---------------------------------------------------------------------------------------------------

# PAX records that restate header fields (tarfile re-adds those it needs) or carry times: everything
# else (SCHILY.xattr.*: file capabilities, ...) is kept as the engine wrote it.
_PAX_DROPPED = frozenset({"path", "linkpath", "uname", "gname", "uid", "gid", "size", "mtime", "atime", "ctime"})


def _walk_key(name: str) -> tuple[str, ...]:
    """Directory-walk order: by path components, so `a/` and `a/b` come before `a-b` (a plain string sort
    would not), and a directory always precedes its contents. Code-point order is UTF-8 byte order."""
    return tuple(name.removeprefix("./").strip("/").split("/"))


class _TarSink:
    """What tarfile writes: hashed uncompressed (the diff_id), gzipped deterministically, hashed again."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.raw = hashlib.sha256()
        self.gz_hash = hashlib.sha256()
        self.size = 0
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self, mtime=0, compresslevel=GZIP_LEVEL)

    def write(self, data: bytes) -> int:  # called by GzipFile with compressed bytes
        self.gz_hash.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


class _RawWriter:
    def __init__(self, sink: _TarSink) -> None:
        self.sink = sink

    def write(self, data: bytes) -> int:  # called by tarfile with uncompressed bytes
        self.sink.raw.update(data)
        return self.sink.gz.write(data)


def normalise_layer(source: IO[bytes], dest: Path, epoch: int = SOURCE_DATE_EPOCH) -> tuple[str, str, int]:
    """Rewrite the layer tar `source` (seekable, uncompressed) reproducibly, gzipped into `dest`.

    Returns (normalised diff_id, compressed digest, compressed size). Per entry: mtime clamped to
    `epoch`, no atime/ctime, uname/gname empty (uid/gid kept), PAX format; entries in walk order
    (`_walk_key`). A hard link that would now come before the file it links to swaps roles with it
    (the first one written holds the data), so the archive stays extractable in order.
    """
    with tarfile.open(fileobj=source, mode="r:") as tar_in:
        members = tar_in.getmembers()
        by_name = {m.name: m for m in members}
        ordered = sorted(members, key=lambda m: _walk_key(m.name))
        written: set[str] = set()
        data_at: dict[str, str] = {}  # a regular file's name -> the link name that was written with its data
        with dest.open("wb") as out:
            sink = _TarSink(out)
            with tarfile.open(fileobj=_RawWriter(sink), mode="w|", format=tarfile.PAX_FORMAT) as tar_out:  # type: ignore[call-overload]
                for member in ordered:
                    data_from = member if member.isreg() else None
                    info = _normal_info(member, epoch)
                    if member.islnk():
                        target = data_at.get(member.linkname, member.linkname)
                        original = by_name.get(member.linkname)
                        if target not in written and original is not None and original.isreg():
                            # The link comes first in walk order: it carries the data, the file links to it.
                            info = _normal_info(original, epoch)
                            info.name = member.name
                            data_from = original
                            data_at[member.linkname] = member.name
                        else:
                            info.linkname = target
                    elif member.isreg() and member.name in data_at:
                        info.type = tarfile.LNKTYPE
                        info.linkname = data_at[member.name]
                        info.size = 0
                        data_from = None
                    if data_from is not None:
                        tar_out.addfile(info, tar_in.extractfile(data_from))
                    else:
                        tar_out.addfile(info)
                    written.add(member.name)
            sink.gz.close()
    return "sha256:" + sink.raw.hexdigest(), "sha256:" + sink.gz_hash.hexdigest(), sink.size


def _normal_info(member: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.name)
    info.type = member.type
    info.mode = member.mode
    info.uid, info.gid = member.uid, member.gid
    info.uname = info.gname = ""  # the build host's user names (Go looks them up): not the image's business
    info.size = member.size if member.isreg() else 0
    info.linkname = member.linkname
    info.devmajor, info.devminor = member.devmajor, member.devminor
    info.mtime = min(int(member.mtime), epoch)
    info.pax_headers = {k: v for k, v in sorted(member.pax_headers.items()) if k not in _PAX_DROPPED}
    return info


def normalise_config(config: dict[str, Any], diff_ids: list[str], epoch: int = SOURCE_DATE_EPOCH) -> bytes:
    """The image config as pushed: the normalised layers' diff_ids, `created` (image and history) at the
    epoch, no legacy-builder container fields (a random container id), canonical JSON (sorted keys)."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    out = {k: v for k, v in config.items() if k not in ("container", "container_config")}
    if "created" in out:
        out["created"] = created
    if isinstance(out.get("history"), list):
        out["history"] = [{**h, "created": created} if "created" in h else h for h in out["history"]]
    out["rootfs"] = {**(out.get("rootfs") or {}), "diff_ids": diff_ids}
    return json.dumps(out, separators=(",", ":"), ensure_ascii=True, sort_keys=True).encode()


# ---------------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------------


@dataclass
class _PlatformManifest:
    arch: str
    variant: str | None
    descriptor: Descriptor
    body: bytes


class Pusher:
    def __init__(
        self,
        client: RegistryClient,
        repository: ImageRef,
        *,
        docker_client: str | None = None,
        cache: BlobCache | None = None,
        progress: Callable[[str], None] = output.progress,
    ) -> None:
        if repository.registry != client.registry:
            raise ImagePushError(f"internal: client for {client.registry} cannot push to {repository.repository}.")
        self.client = client
        self.repo = repository.path
        self.repository = repository
        self.docker = docker_client or default_docker_client()
        self.cache = cache or BlobCache(default_cache_dir())
        self.progress = progress
        self.uploaded = 0
        self.skipped = 0
        self.mounted = 0
        self.uploaded_bytes = 0
        self._known_present: set[str] = set()

    # -- blobs --------------------------------------------------------------------------------------
    def _has_blob(self, digest: str, size: int | None = None) -> bool:
        """The repository has the blob, or it was mounted from another repository of the same
        registry where an earlier push saw it (no bytes sent, no `docker save`, no gzip)."""
        if digest in self._known_present:
            return True
        found = self.client.blob_size(self.repo, digest, scope=f"repository:{self.repo}:pull,push")
        if found is not None and (size is None or found < 0 or found == size):
            self._seen(digest)
            return True
        for source in self.cache.sources(digest, self.client.registry):
            if source != self.repo and self.client.mount_blob(self.repo, digest, source):
                self.progress(f"mounted {digest[:19]} from {self.client.registry}/{source}")
                self.mounted += 1
                self._seen(digest)
                return True
        return False

    def _seen(self, digest: str) -> None:
        self._known_present.add(digest)
        self.cache.add_source(digest, self.repository.repository)

    def _upload(self, digest: str, data: bytes | Path, size: int, what: str) -> None:
        self.progress(f"uploading {what} {digest[:19]} ({_human(size)}) to {self.repository.repository}")
        self.client.upload_blob(self.repo, digest, data, size=size, check_exists=False)
        self._seen(digest)
        self.uploaded += 1
        self.uploaded_bytes += size

    # -- one platform ------------------------------------------------------------------------------
    def push_platform(self, image: BuiltImage) -> _PlatformManifest:
        info = inspect_image(self.docker, image.image_id)
        arch, os_name = info.get("Architecture"), info.get("Os")
        if arch != image.platform or os_name != "linux":
            raise ImagePushError(
                f"{image.local_tag} ({image.image_id}) is {os_name}/{arch}, not linux/{image.platform}; "
                f"refusing to push it as {image.platform}.",
                remedy="Rebuild it: `processorctl build --ref R`.",
            )
        variant = info.get("Variant") or None
        warm = self._warm(image, info)
        if warm is not None:
            config, layers = warm
            self.skipped += 1 + len(layers)
            self.progress(f"{image.platform}: every blob is already in {self.repository.repository} (warm cache)")
        else:
            config, layers, variant = self._cold(image, variant)
        body = image_manifest_bytes(config, layers)
        desc = Descriptor(OCI_MANIFEST, sha256_digest(body), len(body))
        return _PlatformManifest(image.platform, variant if image.platform == "arm64" else None, desc, body)

    def _warm(self, image: BuiltImage, info: dict[str, Any]) -> tuple[Descriptor, list[Descriptor]] | None:
        """From the cache and HEADs only; None as soon as anything is unknown or missing."""
        record = self.cache.get(_IMAGES, image.image_id)
        diff_ids = (info.get("RootFS") or {}).get("Layers") or []
        if not record or record.get("diff_ids") != diff_ids:
            return None
        config = Descriptor(OCI_CONFIG, record["config_digest"], int(record["config_size"]))
        layers = []
        for diff_id in diff_ids:
            layer = self.cache.get(_LAYERS, diff_id)
            if not layer:
                return None
            layers.append(Descriptor(OCI_LAYER_GZIP, layer["digest"], int(layer["size"])))
        for desc in (config, *layers):
            if not self._has_blob(desc.digest, desc.size):
                return None
        return config, layers

    def _cold(self, image: BuiltImage, variant: str | None) -> tuple[Descriptor, list[Descriptor], str | None]:
        with tempfile.TemporaryDirectory(prefix="theory-push-") as tmp:
            archive = Path(tmp) / "image.tar"
            self.progress(f"{image.platform}: docker save {image.local_tag}")
            _docker_save(self.docker, image.image_id, archive)
            with tarfile.open(archive, "r:") as tar:
                manifest = json.loads(_member_bytes(tar, "manifest.json"))
                if not isinstance(manifest, list) or len(manifest) != 1:
                    raise ImagePushError(f"docker save of {image.local_tag} holds {len(manifest)} images, expected 1.")
                entry = manifest[0]
                config_json = json.loads(_member_bytes(tar, entry["Config"]))
                if config_json.get("architecture") != image.platform or config_json.get("os") != "linux":
                    raise ImagePushError(
                        f"{image.local_tag}: its config says "
                        f"{config_json.get('os')}/{config_json.get('architecture')}, "
                        f"not linux/{image.platform}."
                    )
                variant = config_json.get("variant") or variant
                diff_ids = (config_json.get("rootfs") or {}).get("diff_ids") or []
                layer_paths = entry.get("Layers") or []
                if len(diff_ids) != len(layer_paths):
                    raise ImagePushError(
                        f"{image.local_tag}: its config lists {len(diff_ids)} layers "
                        f"but the export has {len(layer_paths)}."
                    )
                normalised = [
                    self._layer(tar, path, diff_id, Path(tmp), image)
                    for path, diff_id in zip(layer_paths, diff_ids, strict=True)
                ]
            layers = [layer for layer, _ in normalised]
            config_bytes = normalise_config(config_json, [new_diff_id for _, new_diff_id in normalised])
            config_digest = sha256_digest(config_bytes)
            config = Descriptor(OCI_CONFIG, config_digest, len(config_bytes))
            if self._has_blob(config_digest, len(config_bytes)):
                self.skipped += 1
            else:
                self._upload(config_digest, config_bytes, len(config_bytes), f"{image.platform} config")
        self.cache.put(
            _IMAGES,
            image.image_id,
            {
                "config_digest": config_digest,
                "config_size": len(config_bytes),
                "diff_ids": diff_ids,
            },
        )
        return config, layers, variant

    def _layer(
        self, tar: tarfile.TarFile, member: str, diff_id: str, tmp: Path, image: BuiltImage
    ) -> tuple[Descriptor, str]:
        """The layer as pushed (normalised, gzipped) and its normalised diff_id."""
        known = self.cache.get(_LAYERS, diff_id)
        if known and self._has_blob(known["digest"], int(known["size"])):
            self.skipped += 1
            return Descriptor(OCI_LAYER_GZIP, known["digest"], int(known["size"])), str(known["diff_id"])
        source = tar.extractfile(member)
        if source is None:
            raise ImagePushError(f"{image.local_tag}: layer {member} is missing from the docker save export.")
        # The engine's tar, uncompressed, on disk (normalising reads it in another order than written),
        # checked against the config's diff_id on the way.
        raw = tmp / "layer.tar"
        head = source.read(2)
        stream: Any = _Prefixed(head, source)
        if head == b"\x1f\x8b":
            # Already compressed (an engine with the containerd image store exports blobs as stored).
            stream = gzip.GzipFile(fileobj=stream, mode="rb")
        actual = hashlib.sha256()
        with raw.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                actual.update(chunk)
                out.write(chunk)
        if "sha256:" + actual.hexdigest() != diff_id:
            raise ImagePushError(
                f"{image.local_tag}: layer {member} hashes to sha256:{actual.hexdigest()}, but the config says {diff_id}."
            )
        blob = tmp / "layer.gz"
        with raw.open("rb") as handle:
            new_diff_id, digest, size = normalise_layer(handle, blob)
        raw.unlink()
        if self._has_blob(digest, size):
            self.skipped += 1
        else:
            self._upload(digest, blob, size, f"{image.platform} layer")
        self.cache.put(_LAYERS, diff_id, {"diff_id": new_diff_id, "digest": digest, "size": size})
        blob.unlink()
        return Descriptor(OCI_LAYER_GZIP, digest, size), new_diff_id

    # -- manifests ------------------------------------------------------------------------------------
    def put_manifest(self, body: bytes, media_type: str, tag: str | None) -> str:
        digest = sha256_digest(body)
        if self.client.manifest_exists(self.repo, digest) != digest:
            self.client.put_manifest(self.repo, None, body, media_type)
        if tag and self.client.manifest_exists(self.repo, tag) != digest:
            self.client.put_manifest(self.repo, tag, body, media_type)
        return digest


def push_platform_images(
    built: Mapping[str, BuiltImage],
    repository: ImageRef,
    client: RegistryClient,
    *,
    tag: str | None = None,
    docker_client: str | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = output.progress,
) -> PushResult:
    """Push each built image by digest and join them into an index; return the manifest digests.

    `repository` is a bare repository (registry/path). `tag`, if given, tags the index `<tag>` and
    each platform manifest `<tag>-<arch>` (the CLI passes the processor's slug).
    """
    if repository.tag or repository.digest:
        raise ImagePushError(f"push to a bare repository, not {repository}.")
    if not built:
        raise ImagePushError("nothing to push: no built images.")
    pusher = Pusher(
        client,
        repository,
        docker_client=docker_client,
        cache=BlobCache(cache_dir) if cache_dir else None,
        progress=progress,
    )
    order = [p for p in PLATFORMS if p in built] + sorted(p for p in built if p not in PLATFORMS)
    manifests: list[_PlatformManifest] = []
    platforms: dict[str, ImageRef] = {}
    tags: list[str] = []
    try:
        for arch in order:
            image = built[arch]
            if image.platform != arch:
                raise ImagePushError(f"internal: image for {arch} was built for {image.platform}.")
            pm = pusher.push_platform(image)
            platform_tag = f"{tag}-{arch}" if tag else None
            digest = pusher.put_manifest(pm.body, OCI_MANIFEST, platform_tag)
            if platform_tag:
                tags.append(platform_tag)
            manifests.append(pm)
            platforms[arch] = repository.with_digest(digest)
            progress(f"{arch}: {repository.with_digest(digest)}")
        body = index_bytes([(m.arch, m.variant, m.descriptor) for m in manifests])
        index_digest = pusher.put_manifest(body, OCI_INDEX, tag)
        if tag:
            tags.append(tag)
    except TheoryDeployError:
        raise
    except OSError as exc:
        raise ImagePushError(f"pushing to {repository.repository} failed: {exc}.") from None
    progress(
        f"pushed {repository.with_digest(index_digest)}: {pusher.uploaded} blob(s) uploaded "
        f"({_human(pusher.uploaded_bytes)}), {pusher.skipped} already there ({pusher.mounted} mounted)"
    )
    return PushResult(
        index=repository.with_digest(index_digest),
        platforms=platforms,
        uploaded_blobs=pusher.uploaded,
        skipped_blobs=pusher.skipped,
        mounted_blobs=pusher.mounted,
        uploaded_bytes=pusher.uploaded_bytes,
        tags=tags,
    )


# ---------------------------------------------------------------------------------------------------
# docker helpers
# ---------------------------------------------------------------------------------------------------


def _docker_save(client: str, image_id: str, dest: Path) -> None:
    proc = Docker(client).run(
        ["save", "-o", str(dest), image_id], timeout=SAVE_TIMEOUT_S, check=False, what=f"docker save {image_id}"
    )
    if proc.returncode != 0:
        raise ImagePushError(
            f"docker save {image_id} failed: {proc.stderr.strip()[-500:]}",
            remedy="Build it first: `processorctl build --ref R`.",
        )


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        handle = tar.extractfile(name)
    except KeyError:
        handle = None
    if handle is None:
        raise ImagePushError(f"the docker save export has no {name}.")
    return handle.read()


class _Prefixed:
    """A stream that first returns `head`, then the rest of `stream` (we peeked at 2 bytes)."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head = head
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        if self.head:
            head, self.head = self.head, b""
            rest = self.stream.read(size - len(head) if size > 0 else -1) if size != len(head) else b""
            return head + rest
        return self.stream.read(size)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
