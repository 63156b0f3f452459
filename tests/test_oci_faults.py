"""Retries, fail-fast statuses, bearer auth and digest integrity, through a fault-injecting proxy in
front of the real loopback registry."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import assert_no_canary, make_canary
from tests.registry_faults import Fault, FaultProxy, TokenAuth, push_index, push_synthetic_image
from theory_deploy import oci
from theory_deploy.errors import (
    DigestIntegrityError,
    ImageUnavailableError,
    RegistryAuthError,
    RegistryUnreachableError,
)
from theory_deploy.oci import RegistryClient, RetryPolicy

FAST = RetryPolicy(base_delay=0.01)


@pytest.fixture
def repo() -> str:
    return f"test/faults-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def image(registry: str, repo: str):
    with RegistryClient(registry, retry=FAST, progress=lambda _m: None) as c:
        amd = push_synthetic_image(c, repo, "amd64", "x")
        arm = push_synthetic_image(c, repo, "arm64", "y")
        index = push_index(c, repo, [amd, arm])
    return amd, arm, index


def _client(host: str, lines: list[str], **kw) -> RegistryClient:
    return RegistryClient(host, retry=kw.pop("retry", FAST), progress=lines.append, **kw)


@pytest.mark.parametrize("kind", ["503", "429", "500", "drop"])
def test_transient_failures_are_retried_and_visible(registry: str, repo: str, image, kind: str) -> None:
    amd, _arm, index = image
    lines: list[str] = []
    with FaultProxy(registry, faults=[Fault(r"/manifests/", kind, times=2)]) as proxy:
        with _client(proxy.host, lines) as c:
            res = c.resolve_platform(repo, index, "amd64")
        assert res.manifest_digest == amd.manifest_digest
        assert proxy.count(path=r"/manifests/" + index) == 3  # 2 injected + 1 real
    assert len(lines) == 2
    what = {"drop": "EOF", "503": "503", "429": "429", "500": "500"}[kind]
    assert what in lines[0] and "(attempt 2/3" in lines[0] and "(attempt 3/3" in lines[1]
    assert lines[0].startswith("retrying GET 127.0.0.1:")


def test_retry_after_is_honoured_within_a_bound(registry: str, repo: str, image) -> None:
    _amd, _arm, index = image
    lines: list[str] = []
    slow = RetryPolicy(base_delay=30.0)  # would take 30 s without the proxy's Retry-After: 0
    with FaultProxy(registry, faults=[Fault(r"/manifests/", "429", times=1)]) as proxy:
        with _client(proxy.host, lines, retry=slow) as c:
            c.get_manifest(repo, index)
    assert "in 0.0s" in lines[0]
    assert oci._retry_after_seconds("5") == 5.0
    assert oci._retry_after_seconds("garbage") is None


def test_exhausted_retries_raise_unreachable(registry: str, repo: str, image) -> None:
    _amd, _arm, index = image
    lines: list[str] = []
    with FaultProxy(registry, faults=[Fault(r"/manifests/", "503", times=10)]) as proxy:
        with (
            _client(proxy.host, lines) as c,
            pytest.raises(RegistryUnreachableError, match="after 3 attempts"),
        ):
            c.get_manifest(repo, index)
        assert proxy.count(path=r"/manifests/") == 3
    assert len(lines) == 2


def test_connection_refused_is_unreachable() -> None:
    lines: list[str] = []
    with _client("127.0.0.1:9", lines) as c, pytest.raises(RegistryUnreachableError):
        c.ping()
    assert len(lines) == 2


@pytest.mark.parametrize(
    ("kind", "error"),
    [("401", RegistryAuthError), ("403", RegistryAuthError), ("404", ImageUnavailableError)],
)
def test_auth_and_not_found_fail_fast(registry: str, repo: str, image, kind: str, error: type) -> None:
    amd, _arm, _index = image
    lines: list[str] = []
    with FaultProxy(registry, faults=[Fault(r"/manifests/", kind, times=5)]) as proxy:
        with _client(proxy.host, lines) as c, pytest.raises(error):
            c.get_manifest(repo, amd.manifest_digest)
        assert proxy.count(path=r"/manifests/") == 1  # exactly one attempt
    assert lines == []


def test_tampered_manifest_is_refused(registry: str, repo: str, image) -> None:
    amd, _arm, index = image
    with FaultProxy(registry, faults=[Fault(r"/manifests/", "tamper", times=5, method="GET")]) as proxy:
        with _client(proxy.host, []) as c:
            with pytest.raises(DigestIntegrityError, match="hashes to"):
                c.get_manifest(repo, amd.manifest_digest)
            with pytest.raises(DigestIntegrityError):
                c.resolve_platform(repo, index, "amd64")


def test_tampered_manifest_by_tag_disagrees_with_header(registry: str, repo: str, image) -> None:
    amd, _arm, _index = image
    with RegistryClient(registry) as direct:
        body = direct.get_manifest(repo, amd.manifest_digest).body
        direct.put_manifest(repo, "v1", body, oci.OCI_MANIFEST)
    with FaultProxy(registry, faults=[Fault(r"/manifests/v1", "tamper", method="GET")]) as proxy:
        with _client(proxy.host, []) as c, pytest.raises(DigestIntegrityError, match="Docker-Content-Digest"):
            c.get_manifest(repo, "v1")


def test_bearer_flow_caches_tokens_per_scope(registry: str, repo: str, image) -> None:
    amd, arm, index = image
    password = make_canary()
    auth = TokenAuth("robot", password)
    lines: list[str] = []
    with FaultProxy(registry, token_auth=auth) as proxy:
        with _client(proxy.host, lines, credentials=("robot", password)) as c:
            assert c.resolve_platform(repo, index, "arm64").manifest_digest == arm.manifest_digest
            assert c.resolve_platform(repo, index, "amd64").manifest_digest == amd.manifest_digest
            # a push needs a pull,push token: one more token request, then it is cached too
            data = uuid.uuid4().bytes
            c.upload_blob(repo, oci.sha256_digest(data), data)
            c.upload_blob(repo, oci.sha256_digest(data + b"2"), data + b"2")
        assert auth.token_requests == [f"repository:{repo}:pull", f"repository:{repo}:pull,push"]
        # every request after the first challenge per scope carried the bearer token
        unauth = [r for r in proxy.requests if r.path.startswith("/v2/") and r.authorization == "none"]
        assert len(unauth) == 2
        assert all(r.authorization != "basic" for r in proxy.requests if r.path.startswith("/v2/"))


def test_bearer_with_wrong_password_fails_fast_without_leaking(registry: str, repo: str, image) -> None:
    amd, _arm, _index = image
    real, wrong = make_canary(), make_canary()
    auth = TokenAuth("robot", real)
    with FaultProxy(registry, token_auth=auth) as proxy:
        with _client(proxy.host, [], credentials=("robot", wrong)) as c:
            with pytest.raises(RegistryAuthError) as info:
                c.resolve_platform(repo, amd.manifest_digest, "amd64")
        assert len(auth.token_requests) == 1
    text = info.value.render() + repr(info.value.details)
    assert_no_canary(text, [wrong, real])
    assert "robot" not in text


def test_anonymous_bearer_refused(registry: str, repo: str, image) -> None:
    amd, _arm, _index = image
    with FaultProxy(registry, token_auth=TokenAuth("robot", "secret-pass")) as proxy:
        with _client(proxy.host, []) as c, pytest.raises(RegistryAuthError, match="anonymous"):
            c.get_manifest(repo, amd.manifest_digest)


def test_retry_messages_never_carry_credentials(registry: str, repo: str, image) -> None:
    _amd, _arm, index = image
    password = make_canary()
    lines: list[str] = []
    auth = TokenAuth("robot", password)
    with FaultProxy(registry, token_auth=auth, faults=[Fault(r"/manifests/", "503", times=10)]) as proxy:
        with _client(proxy.host, lines, credentials=("robot", password)) as c:
            with pytest.raises(RegistryUnreachableError) as info:
                c.get_manifest(repo, index)
    assert lines
    assert_no_canary("\n".join(lines) + info.value.render(), [password])
