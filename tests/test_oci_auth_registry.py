"""Basic auth against the real htpasswd registry (scripts/dev-services: 127.0.0.1:5001)."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import AuthRegistry, assert_no_canary, make_canary
from tests.registry_faults import push_index, push_synthetic_image
from theory_deploy.errors import RegistryAuthError
from theory_deploy.oci import RegistryClient, RetryPolicy

FAST = RetryPolicy(base_delay=0.01)


def test_push_and_resolve_with_basic_auth(auth_registry: AuthRegistry) -> None:
    repo = f"test/auth-{uuid.uuid4().hex[:10]}"
    lines: list[str] = []
    with RegistryClient(
        auth_registry.host,
        credentials=(auth_registry.user, auth_registry.password),
        retry=FAST,
        progress=lines.append,
    ) as c:
        amd = push_synthetic_image(c, repo, "amd64")
        arm = push_synthetic_image(c, repo, "arm64")
        index = push_index(c, repo, [amd, arm])
        assert c.resolve_platform(repo, index, "arm64").manifest_digest == arm.manifest_digest
    assert lines == []  # no retries: a Basic challenge is answered, not retried


def test_anonymous_and_wrong_password_fail_fast_without_leaking(auth_registry: AuthRegistry) -> None:
    repo = "test/auth-missing"
    with RegistryClient(auth_registry.host, retry=FAST, progress=lambda _m: None) as c:
        with pytest.raises(RegistryAuthError, match="anonymously"):
            c.head_manifest(repo, "sha256:" + "0" * 64)
        assert c.stats["requests"] == 1
    wrong = make_canary()
    with RegistryClient(
        auth_registry.host, credentials=(auth_registry.user, wrong), retry=FAST, progress=lambda _m: None
    ) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.resolve_platform(repo, "sha256:" + "0" * 64, "amd64")
        assert c.stats["requests"] == 2  # anonymous → challenge → once with credentials → refused
    assert_no_canary(info.value.render() + repr(info.value.details), [wrong, auth_registry.password])
