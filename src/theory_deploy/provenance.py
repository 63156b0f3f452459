"""Signed provenance for every platform manifest we push, and the check that gates pins and deploys.

The story of one digest:

1. **Push.** `push.push_platform_images` puts a platform's image manifest, then hands its digest to an
   `Attestor`. The attestor writes an in-toto Statement v1 (`in_toto_attestation` builds and validates
   it) whose subject is that manifest digest and whose predicate is SLSA provenance v1: the source
   repository and commit, the builder (the GitHub workflow, or `urn:theory-deploy:host:<hostname>` on a
   laptop), the processor, the platform and the build arguments. The statement is signed as a DSSE
   envelope by `securesystemslib` with this machine's key, and stored beside the image as an OCI 1.1
   artifact whose `subject` is the platform manifest (`RegistryClient.put_referrer`: the referrers API
   where the registry has one, the `sha256-<hex>` tag scheme where it has not).
2. **This machine's key.** Made on first use (ed25519, by `securesystemslib`), kept outside any
   checkout like the secret store: `$THEORY_STATE_DIR/signing/provenance-ed25519.pem` (default
   `~/.local/state/theory-deploy`), folder 0700, file 0600, written atomically. Its private half never
   leaves that file: nothing prints, logs or returns it.
3. **Gate.** `check` is what `pin`, `start` and `verify-digest` ask before they act on a digest. The
   processor's registry.yaml `provenance.signers` (registry_file.ProvenanceSpec) says who may have
   built it. Every referrer of the digest with our artifact type is read; one that verifies under an
   allowed key, with a statement about exactly that digest, lets the digest through. Otherwise the
   refusal says what was wrong, most telling first:

   | what was found                                               | error                     |
   |--------------------------------------------------------------|---------------------------|
   | no provenance referrer at all                                | ERR_PROVENANCE_MISSING    |
   | a valid signature by an allowed signer, about another digest | ERR_PROVENANCE_SUBJECT    |
   | an allowed signer's key id, but a signature that fails       | ERR_PROVENANCE_INVALID    |
   | only signatures by keys the policy does not name             | ERR_PROVENANCE_SIGNER     |

   A processor without a policy is let through with a warning (today's behaviour).

The signer `key: local` in a committed policy means "this machine's key": it makes a laptop's own
pipeline run pass with nothing to configure, and it never lets in a digest someone pushed from
another machine (their key is not this machine's). `key: <PEM public key>` names a fixed key (a
release key shared by a team). Entries with `identity` and `issuer` name a Sigstore keyless signer
(a GitHub workflow): the schema takes them, but this version neither signs keyless nor verifies a
Sigstore bundle, so such an entry allows nothing (fail closed; docs/provenance.md, "Not done yet").
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from google.protobuf import json_format
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from . import gha, output
from .errors import (
    ConfigDigestError,
    DigestIntegrityError,
    ImagePullError,
    ImageUnavailableError,
    ProvenanceError,
    ProvenanceMissingError,
    ProvenanceSignerError,
    ProvenanceSubjectError,
    SecretStoreError,
    SigningKeyError,
)
from .files import atomic_write, exclusive_lock
from .oci import ManifestHead, RegistryClient
from .refs import DIGEST_RE, ImageRef
from .registry_file import ProvenanceSpec
from .secret_store import _is_within, _make_private_dir, state_dir

# What the artifact is (the OCI manifest's artifactType) and what its one layer holds.
ARTIFACT_TYPE = "application/vnd.in-toto+json"
ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"  # DSSE payloadType of an in-toto statement
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/theory-deploy/theory-deploy/blob/main/docs/provenance.md#build-type-v1"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
# An envelope is a few KiB; anything much bigger is not ours and is not downloaded whole.
MAX_ENVELOPE_BYTES = 1024 * 1024

LOCAL_KEY = "local"
KEY_FOLDER = "signing"
KEY_FILE = "provenance-ed25519.pem"


# ---------------------------------------------------------------------------------------------------
# This machine's signing key
# ---------------------------------------------------------------------------------------------------


def key_path() -> Path:
    return state_dir() / KEY_FOLDER / KEY_FILE


def _private_folder(path: Path) -> None:
    # The secret store's rule for a private folder (0700, ours, tightened if loosened), not a second one.
    try:
        _make_private_dir(path)
    except SecretStoreError as exc:
        raise SigningKeyError(f"the signing key's folder: {exc.message}") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot create the signing key's folder {path}: {exc.strerror}.") from None


def _read_key_file(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SigningKeyError(f"the signing key {path} is not a regular file.")
        if info.st_uid != os.geteuid():
            raise SigningKeyError(f"the signing key {path} belongs to uid {info.st_uid}, not to you.")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o600)  # loosened by someone: private again before it is used
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _signer_from_pem(pem: bytes, path: Path) -> CryptoSigner:
    try:
        private_key = load_pem_private_key(pem, password=None)
        return CryptoSigner(private_key)
    except (ValueError, TypeError):
        # Never quote the file: it is a private key, or meant to be one.
        raise SigningKeyError(f"the signing key {path} is not a readable unencrypted PEM private key.") from None


def local_signer(*, create: bool = True, repo_root: Path | None = None) -> CryptoSigner | None:
    """This machine's signer, made (once, under a lock) when `create` and there is none yet."""
    path = key_path()
    if repo_root is not None and _is_within(path, repo_root):
        raise SigningKeyError(
            f"the signing key {path} would be inside the repository {repo_root}, where it could be committed."
        )
    pem = _read_key_file(path)
    if pem is not None:
        return _signer_from_pem(pem, path)
    if not create:
        return None
    _private_folder(path.parent)
    with exclusive_lock(path.with_name(KEY_FILE + ".lock")):
        pem = _read_key_file(path)  # another process may have made it while we waited
        if pem is None:
            signer = CryptoSigner.generate_ed25519()
            atomic_write(path, signer.private_bytes, mode=0o600)
            output.progress(
                f"created this machine's provenance signing key {path} (keyid {signer.public_key.keyid[:16]})"
            )
            return signer
    return _signer_from_pem(pem, path)


def local_public_key() -> SSlibKey | None:
    """The public half of this machine's key, or None when it has none yet (nothing was signed here)."""
    signer = local_signer(create=False)
    return signer.public_key if signer is not None else None


def public_key_from_pem(pem: str, *, where: str) -> SSlibKey:
    try:
        return SSlibKey.from_crypto(load_pem_public_key(pem.encode()))
    except (ValueError, TypeError) as exc:
        raise ProvenanceError(f"{where}: not a PEM public key securesystemslib can use ({exc}).") from None


def public_key_pem(key: SSlibKey) -> str:
    """A key as the PEM a policy's `key:` takes (`processorctl provenance-key` prints this machine's).
    securesystemslib keeps ECDSA and RSA public keys as PEM already, ed25519 ones as raw hex."""
    public = str(key.keyval["public"]).strip()
    if public.startswith("-----BEGIN"):
        return public + "\n"
    raw = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    return raw.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


# ---------------------------------------------------------------------------------------------------
# The statement
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildFacts:
    """What a provenance records besides its subject: where the source came from, who built it, how."""

    processor: str
    source_repository: str | None
    source_commit: str | None
    builder_id: str
    build_args: Mapping[str, str] = field(default_factory=dict)
    invocation_id: str | None = None

    @classmethod
    def here(
        cls,
        processor: str,
        repo_root: Path,
        build_args: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> BuildFacts:
        """The facts of a build on this machine: a GitHub workflow run, or this host."""
        from .build import source_url
        from .gitrun import Git

        env = os.environ if environ is None else environ
        commit = env.get("GITHUB_SHA") or Git(repo_root, timeout=15).try_out("rev-parse", "HEAD")
        server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        workflow_ref = env.get("GITHUB_WORKFLOW_REF")
        if workflow_ref:
            builder_id = f"{server}/{workflow_ref}"
            invocation = None
            if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
                invocation = (
                    f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
                    f"/attempts/{env.get('GITHUB_RUN_ATTEMPT', '1')}"
                )
        else:
            builder_id = f"urn:theory-deploy:host:{socket.gethostname()}"
            invocation = None
        return cls(
            processor=processor,
            source_repository=source_url(repo_root, env),
            source_commit=(commit or "").strip() or None,
            builder_id=builder_id,
            build_args=dict(build_args or {}),
            invocation_id=invocation,
        )


def statement(subject: ImageRef, platform: str, facts: BuildFacts) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA provenance v1) for one platform manifest, as JSON."""
    assert subject.digest is not None
    algorithm, _, hexdigest = subject.digest.partition(":")
    source: dict[str, Any] = {}
    if facts.source_repository:
        source["repository"] = facts.source_repository
    if facts.source_commit:
        source["commit"] = facts.source_commit
    dependencies = []
    if facts.source_repository and facts.source_commit:
        dependencies.append(
            {
                "uri": f"git+{facts.source_repository}@{facts.source_commit}",
                "digest": {"gitCommit": facts.source_commit},
            }
        )
    run_details: dict[str, Any] = {"builder": {"id": facts.builder_id}}
    if facts.invocation_id:
        run_details["metadata"] = {"invocationId": facts.invocation_id}
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "processor": facts.processor,
                "platform": f"linux/{platform}",
                "source": source,
                "buildArgs": dict(sorted(facts.build_args.items())),
            },
            "resolvedDependencies": dependencies,
        },
        "runDetails": run_details,
    }
    built = Statement(
        [ResourceDescriptor(name=subject.repository, digest={algorithm: hexdigest}).pb],
        SLSA_PROVENANCE_V1,
        predicate,
    )
    built.validate()  # in-toto-attestation's own rules: type, a subject with a digest, a predicate
    return json_format.MessageToDict(built.pb, preserving_proto_field_name=False)


def sign(statement_json: Mapping[str, Any], signer: CryptoSigner) -> Envelope:
    payload = json.dumps(statement_json, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return envelope


def envelope_bytes(envelope: Envelope) -> bytes:
    return json.dumps(envelope.to_dict(), sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------------
# Pushing it beside the image
# ---------------------------------------------------------------------------------------------------


@dataclass
class Attestor:
    """Signs and stores the provenance of each platform manifest a push puts (push.py calls it)."""

    facts: BuildFacts
    signer: CryptoSigner
    progress: Callable[[str], None] = output.progress
    attached: dict[str, str] = field(default_factory=dict)  # platform -> the referrer's digest

    def attest(self, client: RegistryClient, image: ImageRef, platform: str, head: ManifestHead) -> str:
        envelope = sign(statement(image, platform, self.facts), self.signer)
        digest = client.put_referrer(
            image.path,
            head,
            artifact_type=ARTIFACT_TYPE,
            blob=envelope_bytes(envelope),
            blob_media_type=ENVELOPE_MEDIA_TYPE,
            annotations={PREDICATE_ANNOTATION: SLSA_PROVENANCE_V1},
        )
        self.attached[platform] = digest
        self.progress(f"{platform}: provenance {digest} signed by key {self.signer.public_key.keyid[:16]}")
        return digest


def local_attestor(facts: BuildFacts, repo_root: Path | None = None) -> Attestor:
    signer = local_signer(create=True, repo_root=repo_root)
    assert signer is not None
    return Attestor(facts, signer)


# ---------------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowedKeys:
    """The policy's signers as keys. `described` names them for messages (never a private byte)."""

    keys: list[SSlibKey]
    described: list[str]
    keyless: list[str]

    @classmethod
    def from_policy(cls, policy: ProvenanceSpec, *, where: str) -> AllowedKeys:
        keys: list[SSlibKey] = []
        described: list[str] = []
        keyless: list[str] = []
        for i, signer in enumerate(policy.signers):
            if signer.key == LOCAL_KEY:
                local = local_public_key()
                if local is None:
                    described.append("this machine's key (none yet: nothing was signed on this machine)")
                else:
                    keys.append(local)
                    described.append(f"this machine's key {local.keyid[:16]}")
            elif signer.key:
                key = public_key_from_pem(signer.key, where=f"{where}: provenance.signers[{i}].key")
                keys.append(key)
                described.append(f"key {key.keyid[:16]}")
            else:
                keyless.append(f"{signer.identity} (issuer {signer.issuer})")
        return cls(keys, described, keyless)

    def describe(self) -> str:
        # Keyless entries are kept in messages so nobody wonders why they did not match: this version
        # verifies no Sigstore bundle yet (docs/provenance.md, "Not done yet"), so they allow nothing.
        names = self.described + [f"keyless {k} (not verified by this version)" for k in self.keyless]
        return ", ".join(names) or "nobody"


@dataclass(frozen=True)
class Verified:
    digest: str
    referrer: str
    keyid: str
    builder: str
    source: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "referrer": self.referrer,
            "keyid": self.keyid,
            "builder": self.builder,
            "source": self.source,
        }


class _Rejected(Exception):
    """One referrer's reason (ranked: the higher, the closer it came to passing)."""

    def __init__(self, rank: int, reason: str) -> None:
        super().__init__(reason)
        self.rank, self.reason = rank, reason


_SIGNER, _INVALID, _SUBJECT = 1, 2, 3


def _verify_one(envelope_json: bytes, allowed: AllowedKeys, digest: str) -> tuple[str, dict[str, Any]]:
    """(the key id that verified, the statement), or _Rejected saying why not."""
    try:
        envelope = Envelope.from_dict(json.loads(envelope_json))
    except (ValueError, KeyError, TypeError):
        raise _Rejected(_INVALID, "is not a DSSE envelope") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise _Rejected(_INVALID, f"has payloadType {envelope.payload_type!r}, not {PAYLOAD_TYPE!r}")
    known = {key.keyid for key in allowed.keys}
    ids = [sig.keyid for sig in envelope.signatures.values()]
    if not known & set(ids):
        shown = ", ".join(i[:16] for i in ids) or "no signature"
        raise _Rejected(_SIGNER, f"is signed by {shown}, which the policy does not allow")
    try:
        accepted = envelope.verify(list[Key](allowed.keys), 1)
    except VerificationError:
        raise _Rejected(_INVALID, "carries a signature that does not verify (the envelope was altered)") from None
    try:
        stmt = json.loads(envelope.payload)
    except ValueError:
        raise _Rejected(_INVALID, "has a payload that is not JSON") from None
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE:
        raise _Rejected(_INVALID, f"does not hold an in-toto Statement v1 ({STATEMENT_TYPE})")
    if stmt.get("predicateType") != SLSA_PROVENANCE_V1:
        raise _Rejected(_INVALID, f"holds a {stmt.get('predicateType')!r} predicate, not SLSA provenance v1")
    algorithm, _, hexdigest = digest.partition(":")
    subjects = [s.get("digest", {}).get(algorithm) for s in stmt.get("subject") or [] if isinstance(s, dict)]
    if hexdigest not in subjects:
        others = ", ".join(f"{algorithm}:{s}" for s in subjects if s) or "no digest"
        raise _Rejected(_SUBJECT, f"is a valid provenance of {others}, not of {digest}")
    return next(iter(accepted)), stmt


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Reading a referrer's manifest or envelope: one the registry lacks, or serves wrong, rejects that
    referrer (another may still pass). Auth and reachability errors propagate: they say nothing about it."""
    try:
        yield
    except (ImageUnavailableError, DigestIntegrityError, ImagePullError, ConfigDigestError) as exc:
        raise _Rejected(_INVALID, f"has a {what} that cannot be read ({exc.message})") from None


def check(client: RegistryClient, image: ImageRef, policy: ProvenanceSpec, *, where: str) -> Verified:
    """Prove `image` (repository@digest of a platform manifest) has a provenance the policy allows."""
    assert image.digest is not None
    allowed = AllowedKeys.from_policy(policy, where=where)
    found = client.referrers(image.path, image.digest, ARTIFACT_TYPE)
    details: dict[str, Any] = {"digest": image.digest, "allowed": allowed.describe()}
    if not found:
        raise ProvenanceMissingError(
            f"{where}: {image} has no provenance in {image.registry} (no {ARTIFACT_TYPE} referrer).",
            details=details,
        )
    rejections: list[tuple[str, _Rejected]] = []
    for descriptor in found:
        referrer = str(descriptor.get("digest") or "")
        try:
            if not DIGEST_RE.match(referrer):  # a tag index is anyone's to write: never follow a tag from it
                raise _Rejected(_INVALID, "is listed without a digest")
            with _reading("manifest"):
                manifest = client.get_manifest(image.path, referrer)
            subject = (manifest.data.get("subject") or {}).get("digest")
            if not subject:
                raise _Rejected(_INVALID, "is not an artifact (its manifest names no subject)")
            if subject != image.digest:
                raise _Rejected(_SUBJECT, f"is listed for {image.digest} but its manifest's subject is {subject}")
            layers = [
                layer
                for layer in manifest.data.get("layers") or []
                if isinstance(layer, dict) and layer.get("mediaType") == ENVELOPE_MEDIA_TYPE
            ]
            if not layers:
                raise _Rejected(_INVALID, "holds no DSSE envelope")
            envelope_digest = str(layers[0].get("digest"))
            if not DIGEST_RE.match(envelope_digest):
                raise _Rejected(_INVALID, "names its envelope without a digest")
            with _reading("envelope"):
                blob = client.get_blob(image.path, envelope_digest, max_bytes=MAX_ENVELOPE_BYTES)
            keyid, stmt = _verify_one(blob, allowed, image.digest)
        except _Rejected as rejected:
            rejections.append((referrer, rejected))
            continue
        predicate = stmt.get("predicate") or {}
        return Verified(
            digest=image.digest,
            referrer=referrer,
            keyid=keyid,
            builder=str(((predicate.get("runDetails") or {}).get("builder") or {}).get("id") or ""),
            source=dict(((predicate.get("buildDefinition") or {}).get("externalParameters") or {}).get("source") or {}),
        )
    rank = max(r.rank for _, r in rejections)
    reasons = "; ".join(f"provenance {ref[:19]}… {r.reason}" for ref, r in rejections)
    message = f"{where}: {image} has no provenance the policy allows ({allowed.describe()}): {reasons}."
    details["rejected"] = [{"referrer": ref, "reason": r.reason} for ref, r in rejections]
    if rank == _SUBJECT:
        raise ProvenanceSubjectError(message, details=details)
    if rank == _INVALID:
        raise ProvenanceError(message, details=details)
    raise ProvenanceSignerError(message, details=details)


# Repositories already warned about in this process: a pipeline gates pin, start and verify of one
# processor, and one warning says all there is to say.
_warned: set[str] = set()


def gate(
    client_for: Callable[[str], RegistryClient],
    image: ImageRef,
    policy: ProvenanceSpec | None,
    *,
    where: str,
    progress: Callable[[str], None] = output.progress,
) -> Verified | None:
    """`check`, or, for a processor without a policy, a warning and None (today's behaviour).

    The warning goes to stderr and, in GitHub Actions, to an annotation: it is not progress of the
    verb that asked (callers' progress lines stay what they were)."""
    if policy is None:
        if image.repository not in _warned:
            _warned.add(image.repository)
            message = (
                f"{where}: no provenance policy in registry.yaml, so {image.repository} digests are used without "
                "checking who built them (add `provenance: {signers: [{key: local}]}`; see docs/provenance.md)."
            )
            output.progress(f"warning: {message}")
            gha.annotate("warning", message)
        return None
    verified = check(client_for(image.registry), image, policy, where=where)
    progress(f"{where}: provenance {verified.referrer[:19]}… of {image.digest} verified (key {verified.keyid[:16]})")
    return verified


def decode_payload(envelope_json: bytes) -> dict[str, Any]:
    """The statement inside an envelope, unverified (for display and tests)."""
    data = json.loads(envelope_json)
    return dict(json.loads(base64.b64decode(data["payload"])))
