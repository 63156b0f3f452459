"""The Distribution v2 client against the real loopback registry (no Docker engine needed)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from tests.registry_faults import FaultProxy, SyntheticImage, push_attestation, push_index, push_synthetic_image
from theory_deploy import oci
from theory_deploy.errors import (
    ConfigDigestError,
    ImageUnavailableError,
    PlatformMismatchError,
)
from theory_deploy.oci import RegistryClient, RetryPolicy, parse_challenge

FAST = RetryPolicy(base_delay=0.01)


@pytest.fixture
def client(registry: str):
    with RegistryClient(registry, retry=FAST, progress=lambda _m: None) as c:
        yield c


@pytest.fixture
def repo() -> str:
    return f"test/oci-{uuid.uuid4().hex[:10]}"


def test_loopback_hosts_are_plain_http() -> None:
    for host in ("127.0.0.1:5000", "localhost:5000", "localhost", "127.0.0.2", "[::1]:5000"):
        assert oci.is_loopback(host), host
        assert RegistryClient(host).base_url.startswith("http://")
    for host in ("ghcr.io", "registry.example.com:443", "10.0.0.1:5000"):
        assert not oci.is_loopback(host), host
        assert RegistryClient(host).base_url.startswith("https://")


def test_parse_bearer_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/x:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://ghcr.io/token",
        "service": "ghcr.io",
        "scope": "repository:org/x:pull",
    }
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_retry_policy_matches_go_containerregistry() -> None:
    policy = RetryPolicy()
    assert policy.attempts == 3
    assert [policy.delay(1), policy.delay(2)] == [1.0, 3.0]
    assert oci.RETRY_STATUSES == {408, 429, 499, 500, 502, 503, 504, 522}


def test_blob_upload_is_idempotent_and_verified(client: RegistryClient, repo: str) -> None:
    data = b"some bytes " + uuid.uuid4().bytes
    digest = oci.sha256_digest(data)
    assert not client.blob_exists(repo, digest)
    assert client.upload_blob(repo, digest, data) is True
    assert client.blob_exists(repo, digest)
    assert client.upload_blob(repo, digest, data) is False  # HEAD first: not sent again
    assert client.get_blob(repo, digest) == data


def test_upload_keeps_the_state_query_and_handles_relative_location(registry: str, repo: str) -> None:
    # distribution's Location carries `?_state=...`; the proxy makes it relative too.
    with FaultProxy(registry, relative_location=True) as proxy:
        with RegistryClient(proxy.host, retry=FAST, progress=lambda _m: None) as c:
            data = uuid.uuid4().bytes * 100
            digest = oci.sha256_digest(data)
            assert c.upload_blob(repo, digest, data)
        puts = [r for r in proxy.requests if r.method == "PUT"]
        assert len(puts) == 1
    with RegistryClient(registry) as direct:
        assert direct.get_blob(repo, digest) == data


def test_manifest_roundtrip_and_digest_checks(client: RegistryClient, repo: str) -> None:
    image = push_synthetic_image(client, repo, "amd64")
    got = client.get_manifest(repo, image.manifest_digest)
    assert got.digest == image.manifest_digest and got.is_image
    head = client.head_manifest(repo, image.manifest_digest)
    assert head.digest == image.manifest_digest
    assert head.media_type == oci.OCI_MANIFEST


def test_resolve_image_manifest(client: RegistryClient, repo: str) -> None:
    image = push_synthetic_image(client, repo, "arm64")
    res = client.resolve_platform(repo, image.manifest_digest, "arm64")
    assert res.manifest_digest == image.manifest_digest
    assert res.from_index is False
    assert res.config_digest == image.config_digest
    with pytest.raises(PlatformMismatchError, match="linux/arm64 image, not linux/amd64"):
        client.resolve_platform(repo, image.manifest_digest, "amd64")


@pytest.mark.parametrize("index_type", [oci.OCI_INDEX, oci.DOCKER_MANIFEST_LIST])
def test_resolve_index_skips_attestations(client: RegistryClient, repo: str, index_type: str) -> None:
    amd = push_synthetic_image(client, repo, "amd64", "a")
    arm = push_synthetic_image(client, repo, "arm64", "b")
    att = push_attestation(client, repo, amd.manifest_digest)
    index = push_index(client, repo, [amd, arm], attestations={amd.manifest_digest: att}, media_type=index_type)
    for image in (amd, arm):
        res = client.resolve_platform(repo, index, image.arch)
        assert res.manifest_digest == image.manifest_digest
        assert res.from_index is True
        assert res.index_digest == index


def test_resolve_docker_v2_manifest(client: RegistryClient, repo: str) -> None:
    image = push_synthetic_image(client, repo, "amd64", media_type=oci.DOCKER_MANIFEST)
    res = client.resolve_platform(repo, image.manifest_digest, "amd64")
    assert res.media_type == oci.DOCKER_MANIFEST


def test_index_without_the_platform(client: RegistryClient, repo: str) -> None:
    amd = push_synthetic_image(client, repo, "amd64")
    index = push_index(client, repo, [amd])
    with pytest.raises(PlatformMismatchError, match="without a linux/arm64 image; its platforms: linux/amd64"):
        client.resolve_platform(repo, index, "arm64")


def _lying_entry(image: SyntheticImage, arch: str) -> SyntheticImage:
    """The same image, listed in an index under another architecture than its config says."""
    return dataclasses.replace(image, arch=arch)


@pytest.mark.parametrize("index_type", [oci.OCI_INDEX, oci.DOCKER_MANIFEST_LIST])
def test_an_index_entry_whose_config_is_another_platform_is_refused(
    client: RegistryClient, repo: str, index_type: str
) -> None:
    """The index says linux/amd64, the child manifest's config says arm64: the config is what runs."""
    arm = push_synthetic_image(client, repo, "arm64", "really-arm")
    index = push_index(client, repo, [_lying_entry(arm, "amd64")], media_type=index_type)
    with pytest.raises(PlatformMismatchError, match="is a linux/arm64 image, not linux/amd64") as info:
        client.resolve_platform(repo, index, "amd64")
    assert info.value.code == "ERR_PLATFORM_MISMATCH"
    assert info.value.details == {"digest": arm.manifest_digest, "os": "linux", "architecture": "arm64"}
    with pytest.raises(PlatformMismatchError):  # the several-platforms path (concurrent) checks it too
        client.resolve_platforms(repo, index, ["amd64"])


def test_an_index_entry_whose_config_is_another_os_is_refused(client: RegistryClient, repo: str) -> None:
    windows = push_synthetic_image(client, repo, "amd64", "win", os_name="windows")
    index = push_index(client, repo, [windows])  # listed as linux/amd64
    with pytest.raises(PlatformMismatchError, match="is a windows/amd64 image, not linux/amd64") as info:
        client.resolve_platform(repo, index, "amd64")
    assert info.value.code == "ERR_PLATFORM_MISMATCH"


def test_swapped_index_entries_are_refused_for_both_platforms(client: RegistryClient, repo: str) -> None:
    """Both entries lie (each points at the other platform's manifest): neither platform resolves,
    whether asked one at a time or together (the platforms are then resolved concurrently)."""
    amd = push_synthetic_image(client, repo, "amd64", "a")
    arm = push_synthetic_image(client, repo, "arm64", "b")
    swapped = push_index(client, repo, [_lying_entry(arm, "amd64"), _lying_entry(amd, "arm64")], tag="swapped")
    for arch, actual in (("amd64", "arm64"), ("arm64", "amd64")):
        with pytest.raises(PlatformMismatchError, match=f"linux/{actual} image, not linux/{arch}"):
            client.resolve_platform(repo, swapped, arch)
    for order in (["amd64", "arm64"], ["arm64", "amd64"]):
        with pytest.raises(PlatformMismatchError, match=f"not linux/{order[0]}"):
            client.resolve_platforms(repo, "swapped", order)


def test_one_lying_entry_next_to_a_true_one(client: RegistryClient, repo: str) -> None:
    """An index whose amd64 entry is true and whose arm64 entry points at the amd64 image: amd64
    resolves, arm64 is refused, and asking for both is refused (never half a result)."""
    amd = push_synthetic_image(client, repo, "amd64", "a")
    index = push_index(client, repo, [amd, _lying_entry(amd, "arm64")], tag="half")
    assert client.resolve_platform(repo, index, "amd64").manifest_digest == amd.manifest_digest
    with pytest.raises(PlatformMismatchError, match="linux/amd64 image, not linux/arm64"):
        client.resolve_platform(repo, index, "arm64")
    with pytest.raises(PlatformMismatchError):
        client.resolve_platforms(repo, "half", ["amd64", "arm64"])


def test_attestation_only_index_and_attestation_manifest(client: RegistryClient, repo: str) -> None:
    amd = push_synthetic_image(client, repo, "amd64")
    att = push_attestation(client, repo, amd.manifest_digest)
    only_att = push_index(client, repo, [], attestations={amd.manifest_digest: att})
    with pytest.raises(PlatformMismatchError, match="only attestation entries"):
        client.resolve_platform(repo, only_att, "amd64")
    with pytest.raises(PlatformMismatchError, match="attestation"):
        client.resolve_platform(repo, att.manifest_digest, "amd64")


def test_config_digest_is_named_as_such(client: RegistryClient, repo: str) -> None:
    image = push_synthetic_image(client, repo, "amd64")
    with pytest.raises(ConfigDigestError, match="image config"):
        client.resolve_platform(repo, image.config_digest, "amd64")
    # No retries wasted on distribution's 500 for a config digest: one GET, then the blob check.
    assert client.stats["retries"] == 0


def test_unknown_digest_and_layer_digest(client: RegistryClient, repo: str) -> None:
    image = push_synthetic_image(client, repo, "amd64")
    with pytest.raises(ImageUnavailableError, match="no manifest"):
        client.resolve_platform(repo, "sha256:" + "0" * 64, "amd64")
    with pytest.raises(ImageUnavailableError):
        client.resolve_platform(repo, image.layer_digest, "amd64")


def test_put_manifest_by_tag_and_head_by_tag(client: RegistryClient, repo: str) -> None:
    image = push_synthetic_image(client, repo, "amd64")
    body = client.get_manifest(repo, image.manifest_digest).body
    assert client.put_manifest(repo, "t1", body, oci.OCI_MANIFEST) == image.manifest_digest
    assert client.head_manifest(repo, "t1").digest == image.manifest_digest
    assert client.manifest_exists(repo, "t1") == image.manifest_digest
    assert client.manifest_exists(repo, "nope") is None
    assert "t1" in client.list_tags(repo)


def test_index_bytes_are_deterministic() -> None:
    from theory_deploy import push

    desc = push.Descriptor(oci.OCI_MANIFEST, "sha256:" + "1" * 64, 10)
    one = push.index_bytes([("amd64", None, desc)])
    two = push.index_bytes([("amd64", None, desc)])
    assert one == two
    assert json.loads(one)["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}


def test_resolve_platforms_fetches_the_index_once(client: RegistryClient, repo: str) -> None:
    amd = push_synthetic_image(client, repo, "amd64", "a")
    arm = push_synthetic_image(client, repo, "arm64", "b")
    push_index(client, repo, [amd, arm], tag="v1")
    before = client.stats["requests"]
    found = client.resolve_platforms(repo, "v1", ["linux/amd64", "arm64"])
    assert found["linux/amd64"].manifest_digest == amd.manifest_digest
    assert found["arm64"].manifest_digest == arm.manifest_digest
    assert client.stats["requests"] - before == 5  # index + 2 x (manifest + config)
    with pytest.raises(ImageUnavailableError):
        client.resolve_platforms(repo, "nope", ["amd64"])
