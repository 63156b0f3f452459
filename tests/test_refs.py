"""Processor refs, environments and app names: the documented examples (README), and properties over any input."""

from __future__ import annotations

import hashlib
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


# Branch and user names as git and GitHub allow them (what `sanitize` sees), long enough that
# `{branch}-{user}-{slug}` is often over APP_NAME_MAX, so the cut-and-hash branch of app_name is
# exercised by most examples, not by one hand-picked case.
NAME_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ/_.-")
long_names = st.text(NAME_CHARS, min_size=1, max_size=200).filter(lambda t: sanitize(t) != "")
segments = st.from_regex(r"[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?", fullmatch=True)
refs = st.builds(ProcessorRef, segments, segments, st.integers(min_value=1, max_value=999999))
CUT = re.compile(r"^(?P<head>.*)-(?P<hash>[0-9a-f]{8})$")


def _full(ref: ProcessorRef, branch: str, user: str) -> str:
    return f"{sanitize(branch)}-{sanitize(user)}-{ref.slug}"


def _assert_valid(name: str, ref: ProcessorRef = LITELLM) -> None:
    assert 0 < len(name) <= APP_NAME_MAX, (len(name), name)
    assert MODAL_NAME.match(name)
    assert name == name.lower()
    assert not name.startswith("-") and not name.endswith("-")
    # `a__b` is a valid name whose slug holds `--`; anything else never doubles a '-'
    assert "--" not in name.replace(ref.slug, "_") or "--" in ref.slug, name


@settings(max_examples=400)
@given(ref=refs, branch=long_names, user=long_names)
def test_long_dev_names_are_cut_to_the_limit_with_a_hash(ref, branch, user):
    full = _full(ref, branch, user)
    name = app_name(ref, "dev", DevIdentity(branch, user))
    _assert_valid(name, ref)
    assert name == app_name(ref, "dev", DevIdentity(branch, user))  # deterministic
    if len(full) <= APP_NAME_MAX:
        assert name == full
        return
    # Cut: the slug is kept whole (it says which processor this is) and the name ends with 8 hex of
    # the uncut name's hash, as long as the slug leaves room for them; what is left of branch-user
    # is a prefix of it.
    match = CUT.match(name)
    assert match, name
    assert match["hash"] == hashlib.sha256(full.encode()).hexdigest()[:8]
    if len(ref.slug) + 10 <= APP_NAME_MAX:
        assert match["head"].endswith(ref.slug)
        head = match["head"][: -len(ref.slug)].rstrip("-")
        assert f"{sanitize(branch)}-{sanitize(user)}".startswith(head)
        assert len(name) >= APP_NAME_MAX - 1 or not head  # cut only as much as needed (a '-' may go)


def test_the_long_name_strategy_reaches_the_cut_branch():
    """The property above is about cut names: make sure most examples are long enough to be cut."""
    from hypothesis import find

    find(st.tuples(long_names, long_names), lambda bu: len(_full(LITELLM, *bu)) > APP_NAME_MAX)
    cut = 0
    for branch_len in range(40, 200, 7):
        name = app_name(LITELLM, "dev", DevIdentity("b" * branch_len, "someone"))
        _assert_valid(name)
        cut += bool(CUT.match(name)) and len(_full(LITELLM, "b" * branch_len, "someone")) > APP_NAME_MAX
    assert cut >= 20


@settings(max_examples=300)
@given(ref=refs, prefix=long_names, a=long_names, b=long_names, user=long_names)
def test_long_branches_sharing_a_prefix_never_share_an_app(ref, prefix, a, b, user):
    """Branches that agree on their first 64+ characters differ only in what the cut drops: the hash of
    the uncut name keeps their apps apart."""
    branch_a, branch_b = f"{prefix}/{a}", f"{prefix}/{b}"
    if sanitize(branch_a) == sanitize(branch_b):
        assert app_name(ref, "dev", DevIdentity(branch_a, user)) == app_name(ref, "dev", DevIdentity(branch_b, user))
        return
    name_a = app_name(ref, "dev", DevIdentity(branch_a, user))
    name_b = app_name(ref, "dev", DevIdentity(branch_b, user))
    _assert_valid(name_a, ref)
    _assert_valid(name_b, ref)
    assert name_a != name_b


@settings(max_examples=200)
@given(refs_ab=st.lists(refs, min_size=2, max_size=2, unique_by=lambda r: r.slug), branch=long_names, user=long_names)
def test_two_processors_of_one_developer_never_share_an_app(refs_ab, branch, user):
    first, second = refs_ab
    names = [app_name(r, "dev", DevIdentity(branch, user)) for r in (first, second)]
    assert names[0] != names[1]
    for ref, name in zip((first, second), names, strict=True):
        _assert_valid(name, ref)


def test_the_cut_keeps_the_whole_slug_and_the_limit_exactly():
    # A slug too long to stand whole beside the hash: the slug is cut, the hash of the uncut name never
    # is, so the limit holds and two branches still get two apps. (ProcessorRef.parse refuses slugs
    # over 64 characters; app_name stays safe for any ref it is handed.)
    ref = ProcessorRef("n" * 40, "p" * 40, 123456)
    assert len(ref.slug) == 89
    one = app_name(ref, "dev", DevIdentity("feature/one", "someone"))
    two = app_name(ref, "dev", DevIdentity("feature/two", "someone"))
    for name, branch in ((one, "feature/one"), (two, "feature/two")):
        _assert_valid(name, ref)
        assert name.endswith("-" + hashlib.sha256(_full(ref, branch, "someone").encode()).hexdigest()[:8])
        assert ref.slug.startswith(name[:-9])
    assert one != two
    ref = ProcessorRef.parse("a-very-long-namespace-name/and-a-long-processor-name@123456")  # 60 characters
    name = app_name(ref, "dev", DevIdentity("feature/" + "y" * 100, "someone"))
    _assert_valid(name, ref)
    short_ref = LITELLM
    for n in range(1, 120):
        branch = "x" * n
        name = app_name(short_ref, "dev", DevIdentity(branch, "u"))
        full = _full(short_ref, branch, "u")
        assert (
            name == full
            if len(full) <= APP_NAME_MAX
            else (
                len(name) == APP_NAME_MAX
                and name.endswith(f"-{short_ref.slug}-{hashlib.sha256(full.encode()).hexdigest()[:8]}")
            )
        )


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


def test_refs_whose_app_name_modal_would_refuse_are_refused_when_parsed():
    # ns (40) + name (17) + "-" + "-v1" = 61 + ... : build one exactly at the limit, one over.
    at_limit = f"{'a' * 40}/{'b' * 19}@1"  # slug: 40 + 1 + 19 + 3 = 63
    assert len(ProcessorRef.parse(at_limit).slug) == 63
    exactly = f"{'a' * 40}/{'b' * 20}@1"
    assert len(ProcessorRef.parse(exactly).slug) == APP_NAME_MAX
    over = f"{'a' * 40}/{'b' * 21}@1"
    with pytest.raises(InvalidRefError) as err:
        ProcessorRef.parse(over, where="registry.yaml:2")
    message = str(err.value)
    assert message.startswith("registry.yaml:2: ") and "65 characters" in message and "by 1" in message


@settings(max_examples=300)
@given(
    text=st.from_regex(
        r"[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?/[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?@[1-9][0-9]{0,5}", fullmatch=True
    )
)
def test_every_parsed_ref_names_apps_modal_accepts_in_every_environment(text):
    try:
        ref = ProcessorRef.parse(text)
    except InvalidRefError:
        return
    for env in ("staging", "main"):
        _assert_valid(app_name(ref, env), ref)
    _assert_valid(app_name(ref, "dev", DevIdentity("feature/x", "octocat")), ref)
