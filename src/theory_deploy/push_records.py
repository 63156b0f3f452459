"""Push records: what one push handed on, and joining per-platform pushes into one index.

A push record is the JSON `processorctl push --json` prints and the engine writes as
`push-<slug>.json`: `{"ref", "index", "platforms": {"amd64": "repo@sha256:…", …}}`. It is how a push
made in one job (or on one runner per platform) reaches the pin, deploy and merge steps of another.

When each platform is built on its own runner, each push makes its own one-platform index. `merge`
joins the platform manifests of several records into one multi-arch index, after proving from the
registry that each digest is an image manifest whose config names that platform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import output
from .errors import PlatformMismatchError, UsageError
from .files import UnreadableFile, atomic_write, read_regular_file
from .oci import OCI_INDEX, RegistryClients
from .push import Descriptor, PushResult, index_bytes
from .refs import PLATFORMS, ImageRef, parse_platform

# A config blob is a few KiB; anything near this is not an image config.
_MAX_CONFIG_BYTES = 4 * 1024 * 1024
# A push record lists a handful of digests.
_MAX_RECORD_BYTES = 1024 * 1024


def record_name(slug: str) -> str:
    return f"push-{slug}.json"


@dataclass(frozen=True)
class PushRecord:
    ref: str
    platforms: dict[str, str]  # platform -> repo@sha256:… of its image manifest
    index: str | None = None

    @classmethod
    def from_result(cls, ref: str, result: PushResult) -> PushRecord:
        return cls(ref, {arch: str(r) for arch, r in result.platforms.items()}, str(result.index))

    @classmethod
    def read(cls, path: Path, slug: str, *, where: str = "from-push") -> PushRecord:
        """A record file, or the `push-<slug>.json` inside a folder of them."""
        if path.is_dir():
            path = path / record_name(slug)
        try:
            data = json.loads(read_regular_file(path, _MAX_RECORD_BYTES).decode("utf-8"))
        except OSError as exc:
            raise UsageError(f"{where} {path}: cannot read it ({exc.strerror}).") from None
        except UnreadableFile as exc:
            raise UsageError(f"{where} {path}: {exc} (a push record is a small JSON file).") from None
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise UsageError(f"{where} {path}: not JSON (expected the output of `processorctl push --json`).") from None
        platforms = data.get("platforms") if isinstance(data, dict) else None
        if not isinstance(platforms, dict) or not platforms:
            raise UsageError(f'{where} {path}: no "platforms" object (expected `processorctl push --json` output).')
        clean = {str(parse_platform(str(k), where=f"{where} {path}")): str(v) for k, v in platforms.items()}
        index = data.get("index")
        return cls(str(data.get("ref") or ""), clean, str(index) if index else None)

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "index": self.index, "platforms": dict(self.platforms)}

    def write(self, folder: Path, slug: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / record_name(slug)
        atomic_write(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path


def collect_records(source: Path, slug: str) -> dict[str, str]:
    """Every platform digest in the `push-<slug>.json` files under `source` (any depth): one digest a platform."""
    if not source.is_dir():
        raise UsageError(f"--from {source}: not a folder of {record_name(slug)} files.")
    platforms: dict[str, str] = {}
    for part in sorted(source.rglob(record_name(slug))):
        for arch, digest in PushRecord.read(part, slug, where="--from").platforms.items():
            if arch in platforms and platforms[arch] != digest:
                raise UsageError(
                    f"--from {source}: two different {arch} digests to merge ({platforms[arch]}, {digest}).",
                    remedy="Give each platform's push one folder; remove the stale record.",
                )
            platforms[arch] = digest
    if not platforms:
        raise UsageError(
            f"--from {source}: no {record_name(slug)} under it.",
            remedy="Did the per-platform push jobs run and hand on their records?",
        )
    return platforms


def merge(ref: str, slug: str, platforms: dict[str, str], clients: RegistryClients) -> PushRecord:
    """PUT one OCI index over the given platform manifests (one repository); return the merged record."""
    refs = {arch: ImageRef.parse_digest_ref(text, where=f"{arch} digest") for arch, text in platforms.items()}
    repositories = {r.repository for r in refs.values()}
    if len(repositories) != 1:
        raise UsageError(
            f"{ref}: the platform digests name different repositories ({', '.join(sorted(repositories))})."
        )
    first = next(iter(refs.values()))
    client = clients(first.registry)
    entries = []
    for arch in [a for a in PLATFORMS if a in refs] + sorted(a for a in refs if a not in PLATFORMS):
        image = refs[arch]
        manifest = client.get_manifest(image.path, str(image.digest))
        if not manifest.is_image:
            raise PlatformMismatchError(f"{image} is not an image manifest ({manifest.media_type}).")
        config_digest = str(manifest.data.get("config", {}).get("digest", ""))
        config = json.loads(client.get_blob(image.path, config_digest, max_bytes=_MAX_CONFIG_BYTES))
        if config.get("architecture") != arch:
            raise PlatformMismatchError(f"{image} is a {config.get('architecture')} image, not {arch}.")
        entries.append(
            (arch, config.get("variant"), Descriptor(manifest.media_type, manifest.digest, len(manifest.body)))
        )
    digest = client.put_manifest(first.path, slug, index_bytes(entries), OCI_INDEX)
    index = str(first.with_digest(digest))
    output.progress(f"{ref}: index {index} over {', '.join(sorted(platforms))}")
    return PushRecord(ref, {arch: str(r) for arch, r in refs.items()}, index)
