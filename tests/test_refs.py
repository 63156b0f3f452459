"""Processor refs, environments and app names: the documented examples (README), and properties over any input."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory_deploy.errors import GitContextError, InvalidEnvError, InvalidRefError, NotADigestError
from theory_deploy.refs import (
    APP_NAME_MAX,
    DevIdentity,
    ImageRef,
    ProcessorRef,
    app_name,
    parse_env,
    parse_platforms,
    resolve_dev_identity,
    sanitize,
)

LITELLM = ProcessorRef.parse("llm/litellm@1")
MODAL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def test_slug():
    assert LITELLM.slug == "llm-litellm-v1"
    assert str(LITELLM) == "llm/litellm@1"


@pytest.mark.parametrize(
    "bad",
    [
        "llm/litellm@v1",
        "litellm@1",
        "/litellm@1",
        "llm/@1",
        "llm/litellm@",
        "../x@1",
        "llm/lite llm@1",
        "llm/litellm@1;rm -rf /",
        "llm/litellm@0",
        "LLM/litellm@1",
        "llm/litellm@1 ",
        "",
        "llm/a/b@1",
        "llm/..@1",
    ],
)
def test_bad_refs_are_refused_with_the_expected_form(bad):
    with pytest.raises(InvalidRefError) as info:
        ProcessorRef.parse(bad)
    assert "ns/name@N" in info.value.message


def test_environment_names():
    assert app_name(LITELLM, "main") == "llm-litellm-v1"
    assert app_name(LITELLM, "staging") == "llm-litellm-v1"
    with pytest.raises(InvalidEnvError):
        parse_env("prod")


def test_guide_dev_cases():
    assert (
        app_name(LITELLM, "dev", DevIdentity("feat/websocket-standardization", "veyorokon"))
        == "feat-websocket-standardization-veyorokon-llm-litellm-v1"
    )
    assert (
        app_name(LITELLM, "dev", DevIdentity("feat/complex_branch", "user.name"))
        == "feat-complex-branch-user-name-llm-litellm-v1"
    )


def test_long_names_are_cut_with_a_hash_and_never_collide():
    a = app_name(LITELLM, "dev", DevIdentity("feature/" + "x" * 80 + "-one", "someone"))
    b = app_name(LITELLM, "dev", DevIdentity("feature/" + "x" * 80 + "-two", "someone"))
    assert len(a) <= APP_NAME_MAX and len(b) <= APP_NAME_MAX
    assert a != b
    assert "llm-litellm-v1" in a


names = st.text(min_size=1, max_size=120)


@settings(max_examples=300)
@given(branch=names, user=names)
def test_any_branch_and_user_give_a_valid_deterministic_name(branch, user):
    identity = DevIdentity(branch, user)
    if not sanitize(branch) or not sanitize(user):
        with pytest.raises(GitContextError):
            app_name(LITELLM, "dev", identity)
        return
    name = app_name(LITELLM, "dev", identity)
    assert name == app_name(LITELLM, "dev", identity)
    assert len(name) <= APP_NAME_MAX
    assert MODAL_NAME.match(name)
    assert "--" not in name and not name.startswith("-") and not name.endswith("-")
    assert name == name.lower()


@settings(max_examples=200)
@given(a=names, b=names, user=names)
def test_different_branches_never_share_an_app(a, b, user):
    if sanitize(a) == sanitize(b) or not sanitize(a) or not sanitize(b) or not sanitize(user):
        return
    assert app_name(LITELLM, "dev", DevIdentity(a, user)) != app_name(LITELLM, "dev", DevIdentity(b, user))


def test_identity_precedence():
    env = {
        "GIT_BRANCH": "b1",
        "GIT_USER": "u1",
        "GITHUB_ACTIONS": "true",
        "GITHUB_HEAD_REF": "b2",
        "GITHUB_REF_NAME": "b3",
        "GITHUB_ACTOR": "u2",
    }
    assert resolve_dev_identity(env) == DevIdentity("b1", "u1")
    del env["GIT_BRANCH"], env["GIT_USER"]
    assert resolve_dev_identity(env) == DevIdentity("b2", "u2")
    env["GITHUB_HEAD_REF"] = ""
    assert resolve_dev_identity(env) == DevIdentity("b3", "u2")


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_identity_from_git_and_detached_head_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no global user.name
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    _git(tmp_path, "init", "-q", "-b", "feat/x")
    _git(tmp_path, "config", "user.name", "Dev Person")
    _git(tmp_path, "config", "user.email", "d@example.com")
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "one")
    assert resolve_dev_identity({}, tmp_path) == DevIdentity("feat/x", "Dev Person")
    _git(tmp_path, "checkout", "-q", "--detach")
    with pytest.raises(GitContextError) as info:
        resolve_dev_identity({}, tmp_path)
    assert "GIT_BRANCH" in info.value.message
    _git(tmp_path, "config", "--unset", "user.name")
    with pytest.raises(GitContextError) as info:
        resolve_dev_identity({"GIT_BRANCH": "main"}, tmp_path)
    assert "GIT_USER" in info.value.message


def test_image_refs():
    digest = "sha256:" + "a" * 64
    ref = ImageRef.parse_digest_ref(f"127.0.0.1:5000/theory/llm-litellm@{digest}")
    assert (ref.registry, ref.path, ref.digest) == ("127.0.0.1:5000", "theory/llm-litellm", digest)
    assert ImageRef.parse("ghcr.io/org/x:1.0").tag == "1.0"
    for bad in ["ghcr.io/org/x:latest", "ghcr.io/org/x@sha256:abc", "ghcr.io/org/x@sha256:" + "A" * 64]:
        with pytest.raises(NotADigestError):
            ImageRef.parse_digest_ref(bad)
    with pytest.raises(InvalidRefError):
        ImageRef.parse("theory-local/llm:build-1")  # a local tag has no registry host


def test_platforms():
    assert parse_platforms("linux/amd64,linux/arm64") == ["amd64", "arm64"]
    assert parse_platforms("arm64, amd64,arm64") == ["arm64", "amd64"]
    with pytest.raises(InvalidRefError):
        parse_platforms("linux/s390x")
