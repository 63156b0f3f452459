"""Issue 13: every pushed platform manifest carries a signed SLSA provenance, stored as its OCI referrer,
and `processorctl pin` refuses a digest whose provenance is missing, signed by someone else, about
another digest, or altered.

What a provenance *is* is checked with independent verifiers: securesystemslib's DSSE `Envelope.verify`
with the public key read from the key file by `cryptography`, and in-toto-attestation's own Statement
validation; what the registry holds is read with plain HTTP. Images are synthetic (pushed with our
client), the registry is the real loopback Distribution 2.8: no Docker engine needed.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from tests.registry_faults import push_synthetic_image
from theory_deploy import provenance
from theory_deploy.cli import framework, processorctl
from theory_deploy.errors import (
    ProvenanceError,
    ProvenanceMissingError,
    ProvenanceSignerError,
    ProvenanceSubjectError,
)
from theory_deploy.oci import OCI_MANIFEST, ManifestHead, RegistryClient, RetryPolicy
from theory_deploy.refs import ImageRef
from theory_deploy.registry_file import ProvenanceSigner, ProvenanceSpec

REPO_ROOT = Path(__file__).resolve().parents[1]

REGISTRY_YAML = """\
# a processor with a provenance policy
ref: demo/{name}@1

build:
  context: .
  platforms: [linux/amd64, linux/arm64]

image:
  repository: {repository}
  platforms:
    amd64: null  # linux/amd64 manifest
    arm64: null  # linux/arm64 manifest

inputs: {{type: object}}
{policy}"""

LOCAL_POLICY = """
provenance:
  signers:
    - key: local
"""


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own THEORY_STATE_DIR, so 'this machine's key' is made fresh for it."""
    folder = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("THEORY_STATE_DIR", str(folder))
    return folder


def _facts() -> provenance.BuildFacts:
    return provenance.BuildFacts(
        processor="demo/signed@1",
        source_repository="https://github.com/example/processors",
        source_commit="0123456789abcdef0123456789abcdef01234567",
        builder_id="urn:theory-deploy:host:test",
        build_args={"BASE_IMAGE": "python:3.11-slim"},
    )


def _key_from_file(state_dir: Path) -> SSlibKey:
    """The public key, read from the private key file by `cryptography`: not through provenance.py."""
    pem = (state_dir / "signing" / "provenance-ed25519.pem").read_bytes()
    return SSlibKey.from_crypto(load_pem_private_key(pem, password=None).public_key())  # type: ignore[arg-type]


def _independently_verified(envelope_json: bytes, key: SSlibKey) -> dict:
    """securesystemslib's DSSE verifier and in-toto-attestation's Statement validation; the statement."""
    envelope = Envelope.from_dict(json.loads(envelope_json))
    assert envelope.payload_type == "application/vnd.in-toto+json"
    envelope.verify([key], 1)  # raises VerificationError unless the key signed exactly these bytes
    pb = json_format.ParseDict(json.loads(envelope.payload), statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    return json.loads(envelope.payload)


# ---------------------------------------------------------------------------------------------------
# (a) the statement, the envelope and this machine's key
# ---------------------------------------------------------------------------------------------------


def test_a_statement_signed_with_this_machines_key_verifies_with_securesystemslib(state_dir: Path) -> None:
    digest = "sha256:" + "ab" * 32
    image = ImageRef.parse_digest_ref(f"127.0.0.1:5000/demo/signed@{digest}", where="test")
    signer = provenance.local_signer()
    assert signer is not None
    envelope = provenance.sign(provenance.statement(image, "amd64", _facts()), signer)

    stmt = _independently_verified(provenance.envelope_bytes(envelope), _key_from_file(state_dir))
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["subject"] == [{"name": "127.0.0.1:5000/demo/signed", "digest": {"sha256": "ab" * 32}}]
    assert stmt["predicateType"] == "https://slsa.dev/provenance/v1"
    params = stmt["predicate"]["buildDefinition"]["externalParameters"]
    assert params["source"] == {
        "repository": "https://github.com/example/processors",
        "commit": "0123456789abcdef0123456789abcdef01234567",
    }
    assert params["buildArgs"] == {"BASE_IMAGE": "python:3.11-slim"}
    assert params["platform"] == "linux/amd64" and params["processor"] == "demo/signed@1"
    assert stmt["predicate"]["runDetails"]["builder"]["id"] == "urn:theory-deploy:host:test"

    # another key does not verify it
    with pytest.raises(VerificationError):
        Envelope.from_dict(json.loads(provenance.envelope_bytes(envelope))).verify(
            [CryptoSigner.generate_ed25519().public_key], 1
        )


def test_the_key_is_made_once_outside_the_repository_and_private(state_dir: Path) -> None:
    first = provenance.local_signer()
    second = provenance.local_signer()
    assert first is not None and second is not None
    assert first.public_key.keyid == second.public_key.keyid
    path = state_dir / "signing" / "provenance-ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert provenance.key_path() == path


def test_the_key_command_prints_the_public_half_only(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = framework.run_tool(processorctl.parser(), ["provenance-key", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    private = (state_dir / "signing" / "provenance-ed25519.pem").read_text()
    assert data["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    body = "".join(line for line in private.splitlines() if "-----" not in line)
    assert body not in out and body not in err
    assert data["keyid"] == _key_from_file(state_dir).keyid


# ---------------------------------------------------------------------------------------------------
# (b) stored as a referrer of the platform manifest, and found again
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def client(registry: str):
    with RegistryClient(registry, retry=RetryPolicy(base_delay=0.01), progress=lambda _m: None) as c:
        yield c


def _attest(client: RegistryClient, registry: str, repo: str, image, signer: CryptoSigner | None = None) -> str:
    signer = signer or provenance.local_signer()
    assert signer is not None
    ref = ImageRef.parse_digest_ref(f"{registry}/{repo}@{image.manifest_digest}", where="test")
    attestor = provenance.Attestor(_facts(), signer, progress=lambda _m: None)
    return attestor.attest(
        client, ref, image.arch, ManifestHead(image.manifest_digest, OCI_MANIFEST, image.manifest_size)
    )


def test_the_registry_lists_the_provenance_as_a_referrer(
    registry: str, client: RegistryClient, state_dir: Path
) -> None:
    repo = f"test/prov-{uuid.uuid4().hex[:10]}"
    image = push_synthetic_image(client, repo, "amd64", "a")
    referrer = _attest(client, registry, repo, image)
    accept = {"Accept": "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"}

    # Read back over plain HTTP: Distribution 2.8 has no referrers API, so the tag scheme's index holds it.
    tag = "sha256-" + image.manifest_digest.removeprefix("sha256:")
    index = httpx.get(f"http://{registry}/v2/{repo}/manifests/{tag}", headers=accept).json()
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == [
        (referrer, "application/vnd.in-toto+json")
    ]
    manifest = httpx.get(f"http://{registry}/v2/{repo}/manifests/{referrer}", headers=accept).json()
    assert manifest["subject"]["digest"] == image.manifest_digest
    assert manifest["artifactType"] == "application/vnd.in-toto+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    layer = manifest["layers"][0]
    assert layer["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    envelope = httpx.get(f"http://{registry}/v2/{repo}/blobs/{layer['digest']}").content
    stmt = _independently_verified(envelope, _key_from_file(state_dir))
    assert stmt["subject"][0]["digest"] == {"sha256": image.manifest_digest.removeprefix("sha256:")}

    # Attesting the same facts again adds nothing; our client finds exactly that referrer.
    assert _attest(client, registry, repo, image) == referrer
    assert [m["digest"] for m in client.referrers(repo, image.manifest_digest)] == [referrer]
    assert client.referrers(repo, image.manifest_digest, "application/other") == []


# ---------------------------------------------------------------------------------------------------
# (c) the pin gate
# ---------------------------------------------------------------------------------------------------


def make_processor(root: Path, repository: str, *, policy: str = LOCAL_POLICY, name: str = "signed") -> Path:
    folder = root / "processors" / "demo" / name
    folder.mkdir(parents=True)
    path = folder / "registry.yaml"
    path.write_text(REGISTRY_YAML.format(name=name, repository=repository, policy=policy))
    return path


@pytest.fixture
def pin_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("THEORY_REPO_ROOT", str(tmp_path))
    monkeypatch.setenv("THEORY_REGISTRY_RETRY_BASE_DELAY", "0.01")
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)

    def run(*argv: str) -> tuple[int, dict, str]:
        code = framework.run_tool(processorctl.parser(), ["pin", "--ref", "demo/signed@1", "--json", *argv])
        out, err = capsys.readouterr()
        return code, json.loads(out), err

    return run


def _snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def test_pin_accepts_a_digest_signed_by_this_machine(tmp_path: Path, registry: str, client, pin_cli) -> None:
    repo = f"test/prov-{uuid.uuid4().hex[:10]}"
    image = push_synthetic_image(client, repo, "amd64", "a")
    referrer = _attest(client, registry, repo, image)
    path = make_processor(tmp_path, f"{registry}/{repo}")
    pin = f"{registry}/{repo}@{image.manifest_digest}"
    code, out, err = pin_cli("--platform", "amd64", "--oci", pin)
    assert code == 0, (out, err)
    assert out["provenance"]["amd64"]["referrer"] == referrer
    assert out["provenance"]["amd64"]["builder"] == "urn:theory-deploy:host:test"
    assert f"amd64: {pin}" in path.read_text()


def _tampered(envelope_json: bytes) -> bytes:
    """The same signature over a payload with another builder: what an attacker editing it gets."""
    data = json.loads(envelope_json)
    stmt = json.loads(base64.b64decode(data["payload"]))
    stmt["predicate"]["runDetails"]["builder"]["id"] = "urn:theory-deploy:host:attacker"
    data["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    return json.dumps(data).encode()


def _attach_raw(client: RegistryClient, repo: str, image, envelope_json: bytes) -> str:
    return client.put_referrer(
        repo,
        ManifestHead(image.manifest_digest, OCI_MANIFEST, image.manifest_size),
        artifact_type=provenance.ARTIFACT_TYPE,
        blob=envelope_json,
        blob_media_type=provenance.ENVELOPE_MEDIA_TYPE,
    )


def _envelope_of(client: RegistryClient, repo: str, referrer: str) -> bytes:
    manifest = client.get_manifest(repo, referrer)
    return client.get_blob(repo, manifest.data["layers"][0]["digest"])


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("no_provenance", ProvenanceMissingError),
        ("wrong_signer", ProvenanceSignerError),
        ("another_digest", ProvenanceSubjectError),
        ("tampered", ProvenanceError),
    ],
)
def test_pin_refuses_and_leaves_registry_yaml_untouched(
    tmp_path: Path, registry: str, client, pin_cli, case: str, error: type[ProvenanceError]
) -> None:
    repo = f"test/prov-{uuid.uuid4().hex[:10]}"
    image = push_synthetic_image(client, repo, "amd64", "a")
    provenance.local_signer()  # this machine has a key: the refusals are not for want of one
    if case == "wrong_signer":
        _attest(client, registry, repo, image, signer=CryptoSigner.generate_ed25519())
    elif case == "another_digest":
        other = push_synthetic_image(client, repo, "amd64", "other")
        _attach_raw(client, repo, image, _envelope_of(client, repo, _attest(client, registry, repo, other)))
    elif case == "tampered":
        # a valid provenance of the same image, made in another repository, edited on its way here
        source = f"{repo}-src"
        signed = _envelope_of(
            client, source, _attest(client, registry, source, push_synthetic_image(client, source, "amd64", "a"))
        )
        _attach_raw(client, repo, image, _tampered(signed))
    path = make_processor(tmp_path, f"{registry}/{repo}")
    before = _snapshot(path)

    code, out, err = pin_cli("--platform", "amd64", "--oci", f"{registry}/{repo}@{image.manifest_digest}")

    assert code == error.exit_code, out
    assert out["status"] == "error" and out["error"]["code"] == error.code, out
    assert image.manifest_digest in out["error"]["message"]
    assert _snapshot(path) == before
    assert "Traceback" not in err
    private = (provenance.key_path()).read_text()
    body = "".join(line for line in private.splitlines() if "-----" not in line)
    assert body not in json.dumps(out) and body not in err


def test_a_policy_naming_a_pem_key_accepts_that_signer_only(tmp_path: Path, registry: str, client, pin_cli) -> None:
    repo = f"test/prov-{uuid.uuid4().hex[:10]}"
    release = CryptoSigner.generate_ed25519()
    image = push_synthetic_image(client, repo, "amd64", "a")
    _attest(client, registry, repo, image, signer=release)
    pem = provenance.public_key_pem(release.public_key)
    indented = "".join(f"        {line}\n" for line in pem.splitlines())
    path = make_processor(tmp_path, f"{registry}/{repo}", policy=f"\nprovenance:\n  signers:\n    - key: |\n{indented}")
    code, out, err = pin_cli("--platform", "amd64", "--oci", f"{registry}/{repo}@{image.manifest_digest}")
    assert code == 0, (out, err)
    assert out["provenance"]["amd64"]["keyid"] == release.public_key.keyid
    assert image.manifest_digest in path.read_text()


def test_a_processor_without_a_policy_pins_with_a_warning(tmp_path: Path, registry: str, client, pin_cli) -> None:
    repo = f"test/prov-{uuid.uuid4().hex[:10]}"
    image = push_synthetic_image(client, repo, "amd64", "a")
    path = make_processor(tmp_path, f"{registry}/{repo}", policy="")
    code, out, err = pin_cli("--platform", "amd64", "--oci", f"{registry}/{repo}@{image.manifest_digest}")
    assert code == 0, (out, err)
    assert "provenance" not in out  # the result is what it was before policies existed
    assert "warning:" in err and "no provenance policy" in err
    assert image.manifest_digest in path.read_text()


def test_a_signer_entry_must_be_a_key_or_an_identity_with_its_issuer(tmp_path: Path, registry: str, pin_cli) -> None:
    make_processor(
        tmp_path, f"{registry}/test/x", policy="\nprovenance:\n  signers:\n    - identity: https://example.com/w\n"
    )
    code, out, _ = pin_cli("--platform", "amd64", "--oci", f"{registry}/test/x@sha256:{'0' * 64}")
    assert code != 0 and out["error"]["code"] == "ERR_VALIDATION", out
    assert "issuer" in out["error"]["message"]
    assert os.path.exists(tmp_path / "processors" / "demo" / "signed" / "registry.yaml")


def test_a_keyless_entry_allows_nothing_yet_and_says_so(tmp_path: Path, registry: str, client, pin_cli) -> None:
    """Keyless verification is not wired (docs/provenance.md): such an entry fails closed, by name."""
    repo = f"test/prov-{uuid.uuid4().hex[:10]}"
    image = push_synthetic_image(client, repo, "amd64", "a")
    _attest(client, registry, repo, image)
    policy = (
        "\nprovenance:\n  signers:\n"
        "    - identity: https://github.com/org/repo/.github/workflows/deploy.yml@refs/heads/main\n"
        "      issuer: https://token.actions.githubusercontent.com\n"
    )
    path = make_processor(tmp_path, f"{registry}/{repo}", policy=policy)
    before = _snapshot(path)
    code, out, _ = pin_cli("--platform", "amd64", "--oci", f"{registry}/{repo}@{image.manifest_digest}")
    assert code == ProvenanceSignerError.exit_code and out["error"]["code"] == "ERR_PROVENANCE_SIGNER", out
    assert "not verified by this version" in out["error"]["message"]
    assert _snapshot(path) == before


def test_an_unreadable_key_file_is_refused_without_quoting_it(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = state_dir / "signing"
    folder.mkdir(mode=0o700)
    (folder / "provenance-ed25519.pem").write_text("not-a-key-but-secret-looking-bytes\n")
    code = framework.run_tool(processorctl.parser(), ["provenance-key", "--json"])
    out, err = capsys.readouterr()
    assert code == 54 and json.loads(out)["error"]["code"] == "ERR_SIGNING_KEY"
    assert "secret-looking" not in out + err and "Traceback" not in err


def test_referrers_behind_basic_auth(auth_registry) -> None:
    """The auth registry (:5001): storing and finding a provenance goes through the same challenges."""
    repo = f"test/prov-auth-{uuid.uuid4().hex[:10]}"
    with RegistryClient(
        auth_registry.host,
        credentials=(auth_registry.user, auth_registry.password),
        retry=RetryPolicy(base_delay=0.01),
        progress=lambda _m: None,
    ) as c:
        image = push_synthetic_image(c, repo, "arm64", "z")
        referrer = _attest(c, auth_registry.host, repo, image)
        ref = ImageRef.parse_digest_ref(f"{auth_registry.host}/{repo}@{image.manifest_digest}", where="test")
        policy = ProvenanceSpec(signers=[ProvenanceSigner(key="local")])
        verified = provenance.check(c, ref, policy, where="test")
    assert verified.referrer == referrer and verified.digest == image.manifest_digest


def test_a_referrers_index_anyone_wrote_only_rejects_its_own_entries(registry: str, client: RegistryClient) -> None:
    """The tag scheme's index is writable by anyone with push rights: an entry that is not a provenance
    artifact (here: the image manifest itself) rejects itself; it neither passes nor stops a valid one."""
    from theory_deploy.oci import OCI_INDEX, referrers_tag

    repo = f"test/prov-{uuid.uuid4().hex[:10]}"
    image = push_synthetic_image(client, repo, "amd64", "a")
    ref = ImageRef.parse_digest_ref(f"{registry}/{repo}@{image.manifest_digest}", where="test")
    policy = ProvenanceSpec(signers=[ProvenanceSigner(key="local")])
    provenance.local_signer()
    junk = {
        "mediaType": OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": image.manifest_size,
        "artifactType": provenance.ARTIFACT_TYPE,
    }
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [junk]}).encode()
    client.put_manifest(repo, referrers_tag(image.manifest_digest), index, OCI_INDEX)
    with pytest.raises(ProvenanceError) as refused:
        provenance.check(client, ref, policy, where="test")
    assert refused.value.code == "ERR_PROVENANCE_INVALID"
    assert refused.value.details["rejected"] == [
        {"referrer": image.manifest_digest, "reason": "is not an artifact (its manifest names no subject)"}
    ]

    referrer = _attest(client, registry, repo, image)  # appended to the same index
    assert provenance.check(client, ref, policy, where="test").referrer == referrer
