"""Proving a digest is the right platform's manifest, then writing it into registry.yaml.

A pin is `repository@sha256:<manifest digest>` of the image for one platform. Everything else is
refused before the file is touched, each with its own error code:

| what was given                                   | error                    |
|--------------------------------------------------|--------------------------|
| a tag, a local build tag, a placeholder          | ERR_NOT_A_DIGEST         |
| another repository than `image.repository`       | ERR_REPOSITORY_MISMATCH  |
| an image *config* digest (cannot be pulled)      | ERR_CONFIG_DIGEST        |
| another platform's manifest, an attestation      | ERR_PLATFORM_MISMATCH    |
| a digest the registry does not have              | ERR_IMAGE_UNAVAILABLE    |

An index (or Docker manifest list) digest is accepted and resolved to the platform's manifest; the
pin is the manifest digest, and `resolved_from_index` says so. The registry is asked, and what it
serves is hashed: a pin is never written on trust. (Within one client a body already proved against
its digest is not fetched twice: pinning amd64 and arm64 from one index reads the index once.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import output, registry_file
from .errors import NotADigestError, RepositoryMismatchError
from .oci import RegistryClient
from .refs import ImageRef, Platform, parse_platform, parse_repository

ClientFactory = Callable[[str], RegistryClient]


@dataclass(frozen=True)
class PinCandidate:
    ref: ImageRef  # repository@sha256:<platform manifest digest>
    platform: Platform
    resolved_from_index: bool
    given: str  # what the user passed
    media_type: str = ""
    config_digest: str = ""

    @property
    def pin(self) -> str:
        return str(self.ref)

    def to_json(self) -> dict[str, Any]:
        return {
            "pin": self.pin,
            "platform": self.platform,
            "resolved_from_index": self.resolved_from_index,
            "given": self.given,
            "media_type": self.media_type,
            "config_digest": self.config_digest,
        }


def parse_pin_text(oci_text: str, *, where: str = "--oci") -> ImageRef:
    """`repo@sha256:<64 hex>` or NotADigestError (naming what it looks like instead)."""
    text = (oci_text or "").strip()
    if "@" not in text:
        if text.startswith("theory-local/"):
            raise NotADigestError(
                f"{where}: {text!r} is a local build tag; it exists only on the machine that built it.",
                remedy="Push first (`processorctl push --ref R --json`) and pin the digests it prints.",
            )
        if "REPLACE" in text.upper() or not text:
            raise NotADigestError(f"{where}: {text!r} is a placeholder, not a digest ref.")
        raise NotADigestError(f"{where}: {text!r} is a tag, not a digest; tags move, pins must not.")
    return ImageRef.parse_digest_ref(text, where=where)


def verify_pin_candidate(
    oci_text: str,
    platform: str,
    client_factory: ClientFactory,
    *,
    expected_repository: str | None = None,
    where: str = "--oci",
) -> PinCandidate:
    """Check `oci_text` is (or is an index holding) the linux/<platform> image manifest.

    `expected_repository` is the processor's `image.repository`; a candidate from another
    repository is refused (move the processor first with `processorctl set-repository`).
    """
    arch = parse_platform(platform)
    ref = parse_pin_text(oci_text, where=where)
    if expected_repository is not None:
        expected = parse_repository(expected_repository, where="image.repository").repository
        if ref.repository != expected:
            raise RepositoryMismatchError(
                f"{where}: {ref.repository} is not the processor's image.repository ({expected}).",
                details={"given": ref.repository, "expected": expected},
                remedy="Pin digests from image.repository, or move the processor first: "
                "`processorctl set-repository --ref R --repository REPO`.",
            )
    client = client_factory(ref.registry)
    assert ref.digest is not None
    resolution = client.resolve_platform(ref.path, ref.digest, arch)
    return PinCandidate(
        ref=ref.with_digest(resolution.manifest_digest),
        platform=arch,
        resolved_from_index=resolution.from_index,
        given=str(ref),
        media_type=resolution.media_type,
        config_digest=resolution.config_digest,
    )


def pin_digests(registry_path: Path, candidates: Mapping[str, PinCandidate]) -> dict[str, dict[str, Any]]:
    """Write the verified pins; {platform: {"old", "new", "changed"}}. Same digest: nothing written."""
    current = registry_file.load_path(registry_path).spec.pins()
    wanted: dict[Platform, str | None] = {}
    for platform, candidate in candidates.items():
        arch = parse_platform(platform)
        if candidate.platform != arch:
            raise NotADigestError(f"internal: candidate for {candidate.platform} offered as {arch}.")
        wanted[arch] = candidate.pin
    changed = registry_file.write_pins(registry_path, wanted) if wanted else {}
    result: dict[str, dict[str, Any]] = {}
    for arch, new in wanted.items():
        if arch in changed:
            old, written = changed[arch]
            result[arch] = {"old": old, "new": written, "changed": True}
        else:
            result[arch] = {"old": current.get(arch), "new": new, "changed": False}
    return result


def verify_and_pin(
    processor: registry_file.LoadedProcessor,
    wanted: Mapping[str, str],
    client_factory: ClientFactory,
    progress: Callable[[str], None] = output.progress,
) -> dict[str, Any]:
    """Verify every {platform: digest ref} against the registry, then write them in one locked write."""
    candidates: dict[str, PinCandidate] = {}
    for arch, text in wanted.items():
        candidates[arch] = verify_pin_candidate(
            text, arch, client_factory, expected_repository=processor.spec.image.repository, where=f"{arch} digest"
        )
        note = " (resolved from its index)" if candidates[arch].resolved_from_index else ""
        progress(f"verified {arch}: {candidates[arch].pin} is a linux/{arch} image manifest{note}")
    results = pin_digests(processor.path, candidates)
    lines = []
    for arch, outcome in results.items():
        if outcome["changed"]:
            lines.append(f"  {arch}: {outcome['old'] or '(none)'} -> {outcome['new']}")
        else:
            lines.append(f"  {arch}: unchanged ({outcome['new']})")
    changed = [a for a, o in results.items() if o["changed"]]
    head = f"pinned {', '.join(changed)} in {processor.path}" if changed else f"{processor.path}: pins unchanged"
    return {
        "ref": str(processor.ref),
        "file": str(processor.path),
        "pins": results,
        "changed": changed,
        "candidates": {arch: c.to_json() for arch, c in candidates.items()},
        "summary": "\n".join([head, *lines]),
    }
