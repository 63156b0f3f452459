"""Contract tests for gitpr: the pin bot's messages, decisions and publish algorithm, asserted exactly.

tests/test_gitpr.py proves the bot PR end to end (smart HTTP, PyGithub); this file pins down what those
end-to-end tests only sample: the whole commit message, PR title and PR body (reviewers read them, the
loop guard reads the trailer), every error's message, remedy and details (what failed, where, how to
fix it: a contract with the user), the exact result dicts publish_pin_pr and propose_pins return, and
each step of the algorithm (private fetch refs, shallow deepening, the bot-commit check, rebase and
supersede, the lease, stale-worktree reclaim). Git runs for real against local bare remotes (fast: no
HTTP), the GitHub API against the stand-in in tests/github_standin, pins against the loopback registry.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.github_standin import GitHubStandIn
from tests.gitpr_repos import BRANCH, FIXTURE, HUMAN, REF, REG, REPO, Remote, digest

# the other PR tests' git runner, and the repository they publish from
from tests.test_gitpr import git
from theory_deploy import gitpr, registry_file
from theory_deploy.errors import (
    GitError,
    GitHubError,
    InvalidRefError,
    ProcessorNotFoundError,
    PushConflictError,
    UsageError,
)
from theory_deploy.gitpr import BotIdentity, GitHubClient, PinChange, publish_pin_pr
from theory_deploy.gitrun import Git

TOKEN = "ghp_" + "C0ntr4ct" * 5
BOT = f"{gitpr.DEFAULT_BOT_NAME} <{gitpr.DEFAULT_BOT_EMAIL}>"
BOT_CFG = ["-c", f"user.name={gitpr.DEFAULT_BOT_NAME}", "-c", f"user.email={gitpr.DEFAULT_BOT_EMAIL}"]
CREDENTIAL_SOURCES = (
    "the action's `github-token` input, or GITHUB_TOKEN / GH_TOKEN (or the GITHUB_APP_* variables) for processorctl"
)


def sha(ch: str) -> str:
    return f"sha256:{ch * 64}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "THEORY_BOT_NAME",
        "THEORY_BOT_EMAIL",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "THEORY_REPO_ROOT",
        "GITHUB_APP_ID",
        "GITHUB_APP_PRIVATE_KEY",
        "GITHUB_APP_INSTALLATION_ID",
        "GITHUB_REPOSITORY",
        "GITHUB_API_URL",
    ):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------------------------------
# Names: branch, private refs, bot identity
# ---------------------------------------------------------------------------------------------------


def test_pin_branch_is_the_prefix_plus_the_refs_slug() -> None:
    assert gitpr.pin_branch("llm/litellm@1") == BRANCH
    assert gitpr.pin_branch("my_ns/img_tool@12") == "theory-deploy/pin/my-ns-img-tool-v12"


def test_pin_branch_refuses_a_bad_ref_naming_the_pin_ref() -> None:
    with pytest.raises(InvalidRefError) as info:
        gitpr.pin_branch("Bad")
    assert info.value.message == "pin ref: 'Bad' is not a processor ref; expected ns/name@N (e.g. llm/litellm@1)."


def test_private_ref_lives_under_its_own_namespace_with_the_remote_sanitised() -> None:
    assert gitpr._private_ref("origin", BRANCH) == f"refs/theory-deploy/remotes/origin/{BRANCH}"
    assert gitpr._private_ref("https://x:y@h/a b.git", "main") == "refs/theory-deploy/remotes/https_x_y_h_a_b.git/main"
    assert gitpr._private_ref("up-stream_2.x", "main") == "refs/theory-deploy/remotes/up-stream_2.x/main"
    assert gitpr._private_ref("UpStream", "main") == "refs/theory-deploy/remotes/UpStream/main"


def test_bot_identity_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    default = BotIdentity("theory-deploy[bot]", "theory-deploy[bot]@users.noreply.github.com")
    assert BotIdentity.from_env({}) == default
    assert BotIdentity.from_env({"THEORY_BOT_NAME": "", "THEORY_BOT_EMAIL": ""}) == default
    assert BotIdentity.from_env({"THEORY_BOT_NAME": "app[bot]", "THEORY_BOT_EMAIL": "1+app@x"}) == BotIdentity(
        "app[bot]", "1+app@x"
    )
    assert BotIdentity.from_env({"THEORY_BOT_NAME": "only-name"}) == BotIdentity(
        "only-name", "theory-deploy[bot]@users.noreply.github.com"
    )
    # No mapping given: the process environment is read.
    monkeypatch.setenv("THEORY_BOT_NAME", "env[bot]")
    monkeypatch.setenv("THEORY_BOT_EMAIL", "env@example.com")
    assert BotIdentity.from_env() == BotIdentity("env[bot]", "env@example.com")
    assert BotIdentity.from_env({}) == default  # a given mapping wins over the process environment


def _commit(author_email: str, committer_email: str, trailer: str) -> gitpr._Commit:
    return gitpr._Commit("f" * 40, "who", author_email, committer_email, "subject", trailer)


@pytest.mark.parametrize(
    ("author", "committer", "trailer", "expected"),
    [
        ("bot@x", "bot@x", "pin", True),
        ("BOT@X", "Bot@x", "pin", True),  # emails compare case-insensitively
        ("bot@x", "bot@x", "other, pin", True),  # several trailers: any value "pin"
        ("bot@x", "bot@x", " pin ,x", True),
        ("bot@x", "bot@x", "x,pin", True),  # git joins several values with "," alone
        ("human@x", "bot@x", "pin", False),  # author is a human
        ("bot@x", "human@x", "pin", False),  # committer is a human ("Update branch")
        ("bot@x", "bot@x", "", False),  # no trailer
        ("bot@x", "bot@x", "pinned", False),  # not the value
        ("bot@x", "bot@x", "PIN", False),  # the value is case-sensitive
        # Made through GitHub's API (signed): the token's bot account authors, GitHub commits.
        ("41898282+github-actions[bot]@users.noreply.github.com", "noreply@github.com", "pin", True),
        ("4242+pin-app[bot]@users.noreply.github.com", "noreply@github.com", "pin", True),
        ("4242+pin-app[bot]@users.noreply.github.com", "bot@x", "pin", True),  # then rebased here
        ("bot@x", "noreply@github.com", "pin", True),  # THEORY_BOT_EMAIL set to the App's address
        ("41898282+github-actions[bot]@users.noreply.github.com", "noreply@github.com", "", False),
        ("human@x", "noreply@github.com", "pin", False),  # a human's web edit or "Update branch"
        # Another tool's git push as some bot account (author and committer): not ours.
        ("7+other[bot]@users.noreply.github.com", "7+other[bot]@users.noreply.github.com", "pin", False),
        ("github-actions[bot]@users.noreply.github.com.evil.com", "noreply@github.com", "pin", False),
    ],
)
def test_commit_made_by_needs_both_emails_and_the_trailer(
    author: str, committer: str, trailer: str, expected: bool
) -> None:
    assert _commit(author, committer, trailer).made_by(BotIdentity("any name", "Bot@X")) is expected


# ---------------------------------------------------------------------------------------------------
# Messages: commit message, PR title, PR body
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, (None, None)),
        ("", (None, None)),
        (digest("a"), (REPO, sha("a"))),
        ("r/o:tag", ("r/o:tag", None)),
        ("a@b@c", ("a", "b@c")),
    ],
)
def test_split_ref(value: str | None, expected: tuple[str | None, str | None]) -> None:
    assert gitpr._split_ref(value) == expected


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (None, digest("b"), f"amd64: (unpinned) → {digest('b')}"),
        (digest("a"), None, f"amd64: {digest('a')} → (unpinned)"),
        (digest("a"), digest("b"), f"amd64: {digest('a')} → {sha('b')}"),  # same repository: digest only
        (digest("a"), digest("b", "r/n"), f"amd64: {digest('a')} → {digest('b', 'r/n')}"),  # moved: in full
        (REPO, digest("b"), f"amd64: {REPO} → {digest('b')}"),  # old without digest: new in full
        (digest("a"), REPO, f"amd64: {digest('a')} → {REPO}"),  # new without digest: in full
    ],
)
def test_describe_one_pin(old: str | None, new: str | None, expected: str) -> None:
    assert gitpr._describe("amd64", old, new) == expected


def test_commit_message_whole_text() -> None:
    msg = gitpr.commit_message(
        REF,
        {
            "arm64": (None, digest("c")),
            "amd64": (digest("a"), digest("b")),
        },
    )
    assert msg == (
        f"pin({REF}): amd64, arm64\n"
        "\n"
        f"amd64: {digest('a')} → {sha('b')}\n"
        f"arm64: (unpinned) → {digest('c')}\n"
        "\n"
        "Theory-Deploy-Bot: pin\n"
    )


def test_commit_message_of_an_unpin() -> None:
    assert gitpr.commit_message(REF, {"arm64": (digest("c"), None)}) == (
        f"pin({REF}): arm64\n\narm64: {digest('c')} → (unpinned)\n\nTheory-Deploy-Bot: pin\n"
    )


def test_pr_title_sorts_platforms() -> None:
    assert gitpr.pr_title(REF, ["arm64", "amd64"]) == f"pin({REF}): amd64, arm64"
    assert gitpr.pr_title(REF, []) == f"pin({REF}): "


def _body(rows: list[str], verify: list[str]) -> str:
    return (
        "\n".join(
            [
                f"<!-- theory-deploy:pin {REF} -->",
                f"Pins new image digests for **{REF}** in `{REG}`.",
                "",
                "| processor | platform | old digest → new digest | repository |",
                "|---|---|---|---|",
                *rows,
                "",
                "### How to verify",
                "Each new digest must be a single-platform image *manifest* (not an index, config or attestation). "
                "`processorctl pin` proved that before writing it; to check by hand:",
                "",
                "```sh",
                *verify,
                "```",
                "",
                "`mediaType` must be an image manifest (`application/vnd.oci.image.manifest.v1+json` or "
                "`application/vnd.docker.distribution.manifest.v2+json`), and `skopeo inspect docker://<ref>` "
                "must show the platform's `Architecture`.",
                "",
                f"Opened and kept up to date by theory-deploy on branch `{BRANCH}`: one PR per processor, updated "
                "in place by later pins. The bot never force-pushes over commits it did not make. Its commits change "
                "only `image.platforms` lines, so merging this PR deploys these digests without rebuilding or "
                "re-pinning.",
            ]
        )
        + "\n"
    )


def test_pr_body_whole_text() -> None:
    body = gitpr.pr_body(REF, REG, BRANCH, {"arm64": (None, digest("c")), "amd64": (digest("a"), digest("b"))})
    assert body == _body(
        [
            f"| `{REF}` | amd64 | `{sha('a')}` → `{sha('b')}` | `{REPO}` |",
            f"| `{REF}` | arm64 | (unpinned) → `{sha('c')}` | `{REPO}` |",
        ],
        [
            f"skopeo inspect --raw docker://{digest('b')}   # amd64",
            f"skopeo inspect --raw docker://{digest('c')}   # arm64",
        ],
    )


def test_pr_body_of_a_moved_repository_and_an_unpin() -> None:
    body = gitpr.pr_body(
        REF, REG, BRANCH, {"amd64": (digest("a"), digest("b", "ghcr.io/acme/new")), "arm64": (digest("c"), None)}
    )
    assert body == _body(
        [
            # The old digest is from another repository: shown in full, the repository column is the new one.
            f"| `{REF}` | amd64 | `{digest('a')}` → `{sha('b')}` | `ghcr.io/acme/new` |",
            # An unpin: no new digest, nothing to verify; the repository is the old one.
            f"| `{REF}` | arm64 | `{sha('c')}` → (unpinned) | `{REPO}` |",
        ],
        [f"skopeo inspect --raw docker://{digest('b', 'ghcr.io/acme/new')}   # amd64"],
    )


def test_pr_body_with_neither_side_pinned_has_an_empty_repository_cell() -> None:
    body = gitpr.pr_body(REF, REG, BRANCH, {"amd64": (None, None)})
    assert body == _body([f"| `{REF}` | amd64 | (unpinned) → (unpinned) | `` |"], [])


def test_diff_pins_lists_only_differences_sorted() -> None:
    old = {"arm64": None, "amd64": digest("a"), "x": digest("x")}
    new = {"amd64": digest("b"), "arm64": None, "x": digest("x"), "y": digest("y")}
    assert gitpr._diff_pins(old, new) == {"amd64": (digest("a"), digest("b")), "y": (None, digest("y"))}
    assert list(gitpr._diff_pins({"z": "1", "a": "1"}, {})) == ["a", "z"]
    assert gitpr._diff_pins({"a": "1"}, {"a": "1"}) == {}


# ---------------------------------------------------------------------------------------------------
# Grouping the changes per processor
# ---------------------------------------------------------------------------------------------------


def test_group_merges_platforms_of_one_processor_without_touching_the_input() -> None:
    first = PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("b"))})
    second = PinChange(REF, REG, REPO, {"arm64": (None, digest("c"))})
    other = PinChange("img/resize@2", "processors/img/resize/registry.yaml", "r/x", {"amd64": (None, "r/x@d")})
    grouped = gitpr._group([first, other, second])
    assert list(grouped) == [REF, "img/resize@2"]
    assert grouped[REF] == PinChange(
        REF, REG, REPO, {"amd64": (digest("a"), digest("b")), "arm64": (None, digest("c"))}
    )
    assert grouped["img/resize@2"] == other
    assert first.platforms == {"amd64": (digest("a"), digest("b"))}  # a copy was merged into
    assert gitpr._group([]) == {}


def test_group_refuses_two_paths_for_one_processor() -> None:
    with pytest.raises(UsageError) as info:
        gitpr._group([PinChange(REF, REG, REPO, {}), PinChange(REF, "elsewhere/registry.yaml", REPO, {})])
    assert info.value.message == f"{REF}: two registry paths given ({REG}, elsewhere/registry.yaml)."


@pytest.mark.parametrize("path", ["/abs/registry.yaml", "../up/registry.yaml", "processors/../../registry.yaml"])
def test_group_refuses_a_path_outside_the_repository(path: str) -> None:
    with pytest.raises(UsageError) as info:
        gitpr._group([PinChange(REF, path, REPO, {})])
    assert info.value.message == f"{REF}: registry_path {path!r} must be relative to the repository."


def test_group_allows_dots_inside_a_name_and_validates_the_ref() -> None:
    assert list(gitpr._group([PinChange(REF, "processors/a..b/registry.yaml", REPO, {})])) == [REF]
    with pytest.raises(InvalidRefError):
        gitpr._group([PinChange("nope", REG, REPO, {})])


# ---------------------------------------------------------------------------------------------------
# A refused fetch or push, explained by its cause
# ---------------------------------------------------------------------------------------------------

PROTECTED_REMEDY = (
    "The pin bot pushes only to its own branches, theory-deploy/pin/<processor> (never to the base branch), so "
    "no rule has to cover them: narrow the branch pattern of the rule or ruleset that matches "
    f"{BRANCH} so it leaves theory-deploy/pin/* out, or add the bot (the GitHub App, or the token's user) to its "
    "bypass list (Settings > Branches, or Settings > Rules > Rulesets), then re-run."
)
NO_CREDENTIALS_REMEDY = (
    f"Give theory-deploy the token to use ({CREDENTIAL_SOURCES}): git then authenticates with it and needs no "
    "credentials persisted by actions/checkout (`persist-credentials: false` is fine). Without a token, keep "
    "actions/checkout's default `persist-credentials: true`."
)
BAD_TOKEN_REMEDY = (
    "GitHub refused the token for git: it is invalid or expired, or the GitHub App is not installed on this "
    f"repository. Pass a valid one ({CREDENTIAL_SOURCES})."
)
BAD_CREDENTIALS_REMEDY = (
    "GitHub refused the credentials git has for this remote (persisted by actions/checkout, or a credential "
    f"helper). Pass the token theory-deploy should push with ({CREDENTIAL_SOURCES})."
)
FORBIDDEN_REMEDY = (
    "The token may not push: give it contents: write (a workflow's `permissions: contents: write`; a GitHub "
    "App's Contents: Read and write)."
)


def _failure(output: str, *, token: bool, tmp: Path) -> GitError:
    git_ = Git(tmp, network_env={"GIT_CONFIG_COUNT": "0"} if token else None)
    return gitpr._remote_failure("pushing b", output, git=git_, remote="origin", branch=BRANCH, remedy="fallback")


@pytest.mark.parametrize("token", [False, True])
@pytest.mark.parametrize(
    "marker", ["GH006", "GH013", "protected branch hook declined", "remote: error: GH006: could not read Username"]
)
def test_remote_failure_branch_protection(tmp_path: Path, marker: str, token: bool) -> None:
    err = _failure(f"  x {marker} y\n", token=token, tmp=tmp_path)
    assert err.message == (
        f"pushing b failed: GitHub refused it because a branch protection rule or ruleset covers {BRANCH}. "
        f"git said: x {marker} y"
    )
    assert err.remedy == PROTECTED_REMEDY
    assert err.details == {"branch": BRANCH, "remote": "origin", "cause": "branch-protection"}


@pytest.mark.parametrize("marker", ["could not read Username", "could not read Password"])
def test_remote_failure_without_credentials(tmp_path: Path, marker: str) -> None:
    err = _failure(f"fatal: {marker} for 'https://h': No such device\n", token=False, tmp=tmp_path)
    assert err.message == (
        "pushing b failed: git has no credentials for origin that GitHub accepts (none were persisted, or those "
        f"were refused). git said: fatal: {marker} for 'https://h': No such device"
    )
    assert err.remedy == NO_CREDENTIALS_REMEDY
    assert err.details == {"branch": BRANCH, "remote": "origin", "cause": "no-credentials"}


@pytest.mark.parametrize(
    "marker",
    [
        "Authentication failed",
        "Invalid username or token",
        "returned error: 401",
        "could not read Username",  # with our token: GitHub refused it and git asked for other credentials
        "could not read Password",
    ],
)
def test_remote_failure_with_a_refused_token(tmp_path: Path, marker: str) -> None:
    err = _failure(f"fatal: {marker}", token=True, tmp=tmp_path)
    assert err.message == f"pushing b failed: GitHub refused the token git sent. git said: fatal: {marker}"
    assert err.remedy == BAD_TOKEN_REMEDY
    assert err.details == {"branch": BRANCH, "remote": "origin", "cause": "bad-credentials"}


@pytest.mark.parametrize("marker", ["Authentication failed", "Invalid username or token", "returned error: 401"])
def test_remote_failure_with_refused_persisted_credentials(tmp_path: Path, marker: str) -> None:
    err = _failure(f"fatal: {marker}", token=False, tmp=tmp_path)
    assert err.message == f"pushing b failed: GitHub refused the credentials git sent. git said: fatal: {marker}"
    assert err.remedy == BAD_CREDENTIALS_REMEDY
    assert err.details == {"branch": BRANCH, "remote": "origin", "cause": "bad-credentials"}


@pytest.mark.parametrize(
    "said",
    [
        "fatal: unable to access 'https://h/': The requested URL returned error: 403",
        "remote: Write access to repository not granted.",
        "remote: Permission to acme/processors.git denied to someone.",
    ],
)
@pytest.mark.parametrize("token", [False, True])
def test_remote_failure_forbidden(tmp_path: Path, said: str, token: bool) -> None:
    err = _failure(said + "\n", token=token, tmp=tmp_path)
    assert err.message == f"pushing b failed: {said}"
    assert err.remedy == FORBIDDEN_REMEDY
    assert err.details == {"branch": BRANCH, "remote": "origin", "cause": "forbidden"}


def test_remote_failure_of_another_cause_keeps_the_callers_remedy_and_masks_tokens(tmp_path: Path) -> None:
    err = _failure(f"\nfatal: Permission to denied https://x-access-token:{TOKEN}@h/r.git\n", token=True, tmp=tmp_path)
    assert err.message == "pushing b failed: fatal: Permission to denied https://***@h/r.git"
    assert err.remedy == "fallback"
    assert err.details == {"branch": BRANCH, "remote": "origin"}
    assert type(err) is GitError


# ---------------------------------------------------------------------------------------------------
# Which token git pushes with when no PR is opened
# ---------------------------------------------------------------------------------------------------


def test_push_token_from_env_prefers_github_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gitpr._push_token_from_env() is None
    monkeypatch.setenv("GH_TOKEN", "gh-one")
    assert gitpr._push_token_from_env() == "gh-one"
    monkeypatch.setenv("GITHUB_TOKEN", "github-one")
    assert gitpr._push_token_from_env() == "github-one"
    monkeypatch.setenv("GITHUB_TOKEN", "")
    monkeypatch.setenv("GH_TOKEN", "")
    assert gitpr._push_token_from_env() is None
    # Some of the App's variables only: not an App, the plain token is used.
    monkeypatch.setenv("GITHUB_TOKEN", "github-one")
    for name in ("GITHUB_APP_ID", "GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_INSTALLATION_ID"):
        monkeypatch.setenv(name, "set")
    assert gitpr._push_token_from_env() == "github-one"
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/processors")
    monkeypatch.setenv("GITHUB_APP_ID", "")
    assert gitpr._push_token_from_env() == "github-one"


def test_push_token_from_env_mints_the_apps_installation_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with GitHubStandIn(app_id=4242, app_public_key=key.public_key(), installation_id=99) as standin:
        for name, value in {
            "GITHUB_REPOSITORY": "acme/processors",
            "GITHUB_API_URL": standin.url,
            "GITHUB_APP_ID": "4242",
            "GITHUB_APP_PRIVATE_KEY": pem,
            "GITHUB_APP_INSTALLATION_ID": "99",
            "GITHUB_TOKEN": "ignored-when-the-app-is-configured",
        }.items():
            monkeypatch.setenv(name, value)
        token = gitpr._push_token_from_env()
        assert token is not None and token.startswith("ghs_")
        assert [(r.method, r.path) for r in standin.requests] == [("POST", "/app/installations/99/access_tokens")]


# ---------------------------------------------------------------------------------------------------
# The algorithm, through real git on a local bare remote
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def publish(at: Remote, changes: list[PinChange], tree: Path | None = None, **kw) -> dict:
    kw.setdefault("github", None)
    kw.setdefault("reapply", gitpr.pin_reapplier(changes))
    return publish_pin_pr(tree or at.work, changes, base_branch="main", **kw)


def entry(status: str, *, commit: str | None, changes: dict, proposed: dict | None, attempts: int = 1, **kw) -> dict:
    """One processor's result as publish_pin_pr reports it."""
    out = {
        "ref": REF,
        "registry_path": REG,
        "branch": BRANCH,
        "status": status,
        "commit": commit,
        "attempts": attempts,
        "changes": changes,
        "superseded": kw.get("superseded", []),
        "pr": kw.get("pr"),
    }
    if proposed is not None:
        out["proposed"] = proposed
    return out


def on(old: str | None, new: str | None) -> dict:
    return {"old": old, "new": new}


def test_first_publish_result_commit_and_cleanup(remote: Remote) -> None:
    result = publish(remote, remote.pin(amd64=digest("b"), arm64=digest("c")))
    tip = remote.sha(BRANCH)
    changes = {"amd64": on(digest("a"), digest("b")), "arm64": on(None, digest("c"))}
    assert result == {
        "processors": [entry("pushed", commit=tip, changes=changes, proposed=changes)],
        "summary": f"{REF}: pushed on {BRANCH}",
    }
    assert remote.over_main() == [tip]
    assert remote.message(BRANCH) == gitpr.commit_message(
        REF, {"amd64": (digest("a"), digest("b")), "arm64": (None, digest("c"))}
    )
    assert git(remote.path, "log", "-1", "--format=%an|%ae|%cn|%ce", BRANCH) == (
        f"{gitpr.DEFAULT_BOT_NAME}|{gitpr.DEFAULT_BOT_EMAIL}|{gitpr.DEFAULT_BOT_NAME}|{gitpr.DEFAULT_BOT_EMAIL}"
    )
    assert git(remote.path, "show", "--name-only", "--format=", BRANCH) == REG
    assert gitpr.is_bot_commit(remote.path, BRANCH) is True
    # Nothing left in the user's clone: no private refs, no worktree, no FETCH_HEAD.
    work = remote.work
    # (git's push updates the remote-tracking ref of the branch it pushed, as any push does.)
    assert git(work, "for-each-ref", "--format=%(refname)").splitlines() == [
        "refs/heads/main",
        "refs/remotes/origin/HEAD",
        "refs/remotes/origin/main",
        f"refs/remotes/origin/{BRANCH}",
    ]
    assert git(work, "worktree", "list", "--porcelain").splitlines()[0] == f"worktree {work}"
    assert len(git(work, "worktree", "list").splitlines()) == 1
    assert not (work / ".git" / "worktrees").exists() or list((work / ".git" / "worktrees").iterdir()) == []
    assert not (work / ".git" / "FETCH_HEAD").exists()


def test_publishing_nothing_reports_nothing(remote: Remote) -> None:
    assert publish(remote, []) == {"processors": [], "summary": "no processors to publish"}


def test_rerun_of_the_same_pins_is_unchanged_and_still_proposes(remote: Remote) -> None:
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    tip = remote.sha(BRANCH)
    result = publish(remote, changes)
    assert result == {
        "processors": [entry("unchanged", commit=None, changes={}, proposed={"amd64": on(digest("a"), digest("b"))})],
        "summary": f"{REF}: unchanged on {BRANCH}",
    }
    assert remote.sha(BRANCH) == tip


def test_pins_equal_to_the_base_propose_nothing(remote: Remote) -> None:
    result = publish(remote, [PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("a"))})])
    assert result["processors"] == [entry("unchanged", commit=None, changes={}, proposed=None)]
    assert remote.sha(BRANCH) is None


def test_second_pin_is_built_on_the_bot_branch(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    first = remote.sha(BRANCH)
    result = publish(remote, remote.pin(amd64=digest("d"), arm64=digest("e")))
    tip = remote.sha(BRANCH)
    assert result["processors"] == [
        entry(
            "pushed",
            commit=tip,
            changes={"amd64": on(digest("b"), digest("d")), "arm64": on(None, digest("e"))},
            proposed={"amd64": on(digest("a"), digest("d")), "arm64": on(None, digest("e"))},
        )
    ]
    assert remote.over_main() == [tip, first]
    assert remote.message(tip) == (
        f"pin({REF}): amd64, arm64\n\namd64: {digest('b')} → {sha('d')}\narm64: (unpinned) → {digest('e')}\n\n"
        "Theory-Deploy-Bot: pin\n"
    )


def test_base_moved_elsewhere_in_the_file_rebases_and_pushes_without_a_new_commit(remote: Remote) -> None:
    """The base changed another line of registry.yaml; the same pins again: nothing to commit, but the
    bot branch is rebased onto the new base and pushed (changes: none, commit: the rebased tip)."""
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    stale = remote.sha(BRANCH)
    remote.commit("main", lambda t: t.replace("memory_gb: 2", "memory_gb: 3"), "tune")
    result = publish(remote, changes)
    tip = remote.sha(BRANCH)
    assert tip != stale
    assert result["processors"] == [
        entry("pushed", commit=tip, changes={}, proposed={"amd64": on(digest("a"), digest("b"))})
    ]
    assert remote.over_main() == [tip]
    assert git(remote.path, "rev-parse", f"{tip}^") == remote.sha("main")
    assert remote.file(BRANCH) == FIXTURE.replace("memory_gb: 2", "memory_gb: 3").replace(digest("a"), digest("b"))


def test_base_moved_in_another_file_rebases_then_adds_the_new_pin(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    remote.commit("main", lambda t: "changed\n", "readme", path="README.md")
    result = publish(remote, remote.pin(arm64=digest("c")))
    [e] = result["processors"]
    assert (e["status"], e["superseded"], e["attempts"]) == ("pushed", [], 1)
    over = remote.over_main()
    assert len(over) == 2 and over[0] == e["commit"]
    assert [git(remote.path, "log", "-1", "--format=%s", c) for c in over] == [
        f"pin({REF}): arm64",
        f"pin({REF}): amd64",
    ]


def test_base_that_changed_the_same_pin_supersedes_the_stale_bot_commit(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    stale = remote.sha(BRANCH)
    remote.commit("main", lambda t: t.replace(digest("a"), digest("f")), "hand pin")
    result = publish(remote, remote.pin(arm64=digest("c")))
    tip = remote.sha(BRANCH)
    assert result["processors"] == [
        entry(
            "pushed",
            commit=tip,
            changes={"arm64": on(None, digest("c"))},
            proposed={"arm64": on(None, digest("c"))},
            superseded=[stale],
        )
    ]
    assert remote.over_main() == [tip]
    assert remote.file(BRANCH) == FIXTURE.replace(digest("a"), digest("f")).replace(
        "arm64: null   ", f"arm64: {digest('c')}   "
    )


def test_squash_merged_bot_commit_drops_out(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    # The PR was squash-merged: main has the same change as a new (human) commit.
    remote.commit("main", lambda t: t.replace(digest("a"), digest("b")), "pin (#1)")
    result = publish(remote, remote.pin(arm64=digest("c")))
    tip = remote.sha(BRANCH)
    assert result["processors"] == [
        entry("pushed", commit=tip, changes={"arm64": on(None, digest("c"))}, proposed={"arm64": on(None, digest("c"))})
    ]
    assert remote.over_main() == [tip]


def test_squash_merged_and_nothing_new_is_unchanged_without_proposal(remote: Remote) -> None:
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    remote.commit("main", lambda t: t.replace(digest("a"), digest("b")), "pin (#1)")
    stale = remote.sha(BRANCH)
    result = publish(remote, changes)
    assert result["processors"] == [entry("unchanged", commit=None, changes={}, proposed=None)]
    assert remote.sha(BRANCH) == stale  # nothing pushed


def test_squash_merged_then_base_moved_on_is_unchanged_and_nothing_pushed(remote: Remote) -> None:
    """The bot commit was squash-merged and main then changed another line of the same file: the bot
    commit drops out in the rebase, the pins are main's already, so nothing is pushed (the stale branch
    is left as it is, not reset to main)."""
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    stale = remote.sha(BRANCH)
    remote.commit("main", lambda t: t.replace(digest("a"), digest("b")), "pin (#1)")
    remote.commit("main", lambda t: t.replace("memory_gb: 2", "memory_gb: 3"), "tune")
    result = publish(remote, changes)
    assert result["processors"] == [entry("unchanged", commit=None, changes={}, proposed=None)]
    assert remote.sha(BRANCH) == stale


def _human_commit_on_branch(remote: Remote) -> str:
    return remote.commit(BRANCH, lambda t: t.replace("# one vCPU", "# one vCPU, says a human"), "human fix")


def test_foreign_commit_on_the_bot_branch_is_a_push_conflict(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    human = _human_commit_on_branch(remote)
    with pytest.raises(PushConflictError) as info:
        publish(remote, remote.pin(amd64=digest("d")))
    err = info.value
    assert err.message == (
        f"origin/{BRANCH} holds commit {human[:12]} ('human fix' by Hu Man <human@example.com>) that "
        f"theory-deploy did not make; refusing to overwrite it. {REF} was not published."
    )
    assert err.remedy == (
        f"Merge or close the PR from {BRANCH} (or move that commit elsewhere and delete the branch), "
        "then re-run the pin."
    )
    assert err.details == {"branch": BRANCH, "commit": human, "author": "human@example.com"}
    assert remote.sha(BRANCH) == human


def test_foreign_commit_names_the_first_foreign_commit_newest_first(remote: Remote) -> None:
    _human_commit_on_branch(remote)
    newer = remote.commit(BRANCH, lambda t: t + "# more\n", "second human fix")
    with pytest.raises(PushConflictError) as info:
        publish(remote, remote.pin(amd64=digest("d")))
    assert info.value.details["commit"] == newer


def test_foreign_commit_with_our_pins_already_there_is_unchanged(remote: Remote) -> None:
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    human = _human_commit_on_branch(remote)
    result = publish(remote, changes)
    assert result["processors"] == [
        entry("unchanged", commit=None, changes={}, proposed={"amd64": on(digest("a"), digest("b"))})
    ]
    assert remote.sha(BRANCH) == human


def test_foreign_commit_when_the_base_moved_is_not_rebased(remote: Remote) -> None:
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    human = _human_commit_on_branch(remote)
    remote.commit("main", lambda t: "moved\n", "readme", path="README.md")
    result = publish(remote, changes)
    assert [e["status"] for e in result["processors"]] == ["unchanged"]
    assert remote.sha(BRANCH) == human


def test_bot_identity_without_the_trailer_is_foreign(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    fake = remote.commit(BRANCH, lambda t: t + "# x\n", "looks like the bot", who=BOT_CFG)
    with pytest.raises(PushConflictError) as info:
        publish(remote, remote.pin(amd64=digest("d")))
    assert info.value.details == {"branch": BRANCH, "commit": fake, "author": gitpr.DEFAULT_BOT_EMAIL}


def test_another_bots_commits_are_kept_and_ours_added(remote: Remote) -> None:
    """Another job (the bot identity and trailer) pushed a pin commit: ours goes on top of it."""
    theirs = remote.commit(
        BRANCH,
        lambda t: t.replace("arm64: null   ", f"arm64: {digest('c')}   "),
        f"pin({REF}): arm64\n\n{gitpr.BOT_TRAILER}",
        who=BOT_CFG,
    )
    result = publish(remote, remote.pin(amd64=digest("b")))
    tip = remote.sha(BRANCH)
    assert result["processors"] == [
        entry(
            "pushed",
            commit=tip,
            changes={"amd64": on(digest("a"), digest("b"))},
            proposed={"amd64": on(digest("a"), digest("b")), "arm64": on(None, digest("c"))},
        )
    ]
    assert remote.over_main() == [tip, theirs]


def test_lease_rejection_is_retried_on_the_new_tip(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    attempts: list[tuple[str, int]] = []
    theirs: list[str] = []

    def race(ref: str, attempt: int) -> None:
        attempts.append((ref, attempt))
        if attempt == 1:
            theirs.append(
                remote.commit(
                    BRANCH,
                    lambda t: t.replace("arm64: null   ", f"arm64: {digest('c')}   "),
                    f"pin({REF}): arm64\n\n{gitpr.BOT_TRAILER}",
                    who=BOT_CFG,
                )
            )

    result = publish(remote, remote.pin(amd64=digest("d")), before_push=race)
    tip = remote.sha(BRANCH)
    assert attempts == [(REF, 1), (REF, 2)]
    assert result["processors"] == [
        entry(
            "pushed",
            commit=tip,
            attempts=2,
            changes={"amd64": on(digest("b"), digest("d"))},
            proposed={"amd64": on(digest("a"), digest("d")), "arm64": on(None, digest("c"))},
        )
    ]
    assert remote.over_main()[:2] == [tip, theirs[0]]


def test_branch_that_keeps_moving_is_a_push_conflict(remote: Remote) -> None:
    publish(remote, remote.pin(amd64=digest("b")))
    letters = iter("defghi")
    seen: list[str | None] = []

    def race(ref: str, attempt: int) -> None:
        seen.append(remote.sha(BRANCH))
        ch = next(letters)
        remote.commit(
            BRANCH,
            lambda t: t.replace("arm64: null", f"arm64: {digest(ch)}"),
            f"pin\n\n{gitpr.BOT_TRAILER}",
            who=BOT_CFG,
        )

    with pytest.raises(PushConflictError) as info:
        publish(remote, remote.pin(amd64=digest("9")), before_push=race)  # the default: 4 attempts
    err = info.value
    assert len(seen) == 4
    assert err.message == (
        f"origin/{BRANCH} kept moving while {REF} was being pinned (4 attempts; last based on "
        f"{seen[-1][:12]}); nothing of ours was pushed."
    )
    assert err.details == {"branch": BRANCH, "attempts": 4}
    assert err.remedy == PushConflictError.remedy


def test_branch_created_under_us_with_one_attempt_says_no_branch(remote: Remote) -> None:
    def race(ref: str, attempt: int) -> None:
        remote.commit(BRANCH, lambda t: t, f"pin\n\n{gitpr.BOT_TRAILER}", who=BOT_CFG)

    with pytest.raises(PushConflictError) as info:
        publish(remote, remote.pin(amd64=digest("b")), before_push=race, max_attempts=1)
    assert info.value.message == (
        f"origin/{BRANCH} kept moving while {REF} was being pinned (1 attempts; last based on no branch); "
        "nothing of ours was pushed."
    )


def test_a_push_refused_otherwise_names_the_push_and_its_generic_remedy(remote: Remote) -> None:
    hook = remote.path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'frozen today' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(GitError) as info:
        publish(remote, remote.pin(amd64=digest("b")))
    err = info.value
    # git's whole answer: the porcelain report on stdout (the ref and why it was refused), then stderr.
    url = re.escape(str(remote.path))
    assert re.fullmatch(
        rf"pushing {BRANCH} to origin failed: To {url}\n"
        rf"!\t[0-9a-f]{{40}}:refs/heads/{BRANCH}\t\[remote rejected\] \(pre-receive hook declined\)\nDone\n"
        rf"\nremote: frozen today *\nerror: failed to push some refs to '{url}'",
        err.message,
    ), err.message
    assert err.remedy == "Check that the token may push branches (contents: write) and read git's message."
    assert err.details == {"branch": BRANCH, "remote": "origin"}


def test_processor_missing_on_the_base(remote: Remote) -> None:
    change = PinChange("img/resize@1", "processors/img/resize/registry.yaml", REPO, {"amd64": (None, digest("b"))})
    with pytest.raises(ProcessorNotFoundError) as info:
        publish(remote, [change], reapply=lambda root: [])
    err = info.value
    assert err.message == (
        "img/resize@1: processors/img/resize/registry.yaml does not exist on origin/main; the pin bot can only "
        "pin processors that are already on the base branch."
    )
    assert err.remedy == "Merge the processor into main first, or commit the pin on your own branch."


def test_reapply_that_touches_more_than_pins_is_refused(remote: Remote) -> None:
    def sloppy(root: Path) -> list[PinChange]:
        path = root / REG
        path.write_text(path.read_text().replace(digest("a"), digest("b")).replace("# one vCPU", "# 1 vCPU"))
        return []

    with pytest.raises(GitError) as info:
        publish(remote, [PinChange(REF, REG, REPO, {})], reapply=sloppy)
    assert info.value.message == (
        f"{REF}: the pin commit for {REG} changes more than image.platforms lines; refusing to push it."
    )
    assert info.value.remedy == (
        "Re-run `processorctl validate`; if registry.yaml is valid this is a bug in the pin editor."
    )
    assert remote.sha(BRANCH) is None


def test_reapply_that_changes_no_pin_but_the_file_is_refused_without_a_commit(remote: Remote) -> None:
    def comment_only(root: Path) -> list[PinChange]:
        path = root / REG
        path.write_text(path.read_text().replace("# one vCPU", "# 1 vCPU"))
        return []

    with pytest.raises(GitError) as info:
        publish(remote, [PinChange(REF, REG, REPO, {})], reapply=comment_only)
    assert info.value.message == (
        f"{REF}: the pin commit for {REG} changes more than image.platforms lines; refusing to push it."
    )
    assert remote.sha(BRANCH) is None


def test_reapply_is_called_once_per_attempt_on_a_fresh_tree(remote: Remote) -> None:
    trees: list[Path] = []
    inner = gitpr.pin_reapplier(remote.pin(amd64=digest("b")))

    def reapply(root: Path) -> list[PinChange]:
        trees.append(root)
        assert root.name == "pin-llm-litellm-v1" and root.parent.name.startswith("theory-deploy-pin-")
        assert (root / REG).read_text() == FIXTURE  # the base's file, not the user's tree
        return inner(root)

    publish(remote, [PinChange(REF, REG, REPO, {})], reapply=reapply)
    assert len(trees) == 1 and not trees[0].parent.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_attempts": 0}, UsageError, "max_attempts must be at least 1."),
        ({"base_branch": BRANCH}, UsageError, f"the base branch cannot be the bot branch {BRANCH}."),
        (
            {"base_branch": "-main"},
            UsageError,
            "base branch '-main' starts with '-', so git would read it as an option; refusing it.",
        ),
        ({"base_branch": "refs/heads/"}, UsageError, "base branch is empty."),
        (
            {"remote": "--upload-pack=x"},
            UsageError,
            "remote '--upload-pack=x' starts with '-', so git would read it as an option; refusing it.",
        ),
        ({"base_branch": "dev"}, GitError, "base branch 'dev' does not exist on remote 'origin'."),
    ],
)
def test_publish_refuses_bad_arguments(remote: Remote, kwargs: dict, error: type, message: str) -> None:
    changes = remote.pin(amd64=digest("b"))
    args = {"base_branch": "main", "github": None, "reapply": gitpr.pin_reapplier(changes), **kwargs}
    with pytest.raises(error) as info:
        publish_pin_pr(remote.work, changes, **args)
    assert type(info.value) is error and info.value.message == message
    assert remote.sha(BRANCH) is None


def test_missing_base_branch_remedy(remote: Remote) -> None:
    with pytest.raises(GitError) as info:
        publish_pin_pr(remote.work, remote.pin(amd64=digest("b")), base_branch="dev", github=None, reapply=lambda r: [])
    assert info.value.remedy == "Pass the branch PRs should target (--base, default: the repository's default branch)."
    assert info.value.details == {}


def test_base_given_as_a_full_ref_name(remote: Remote) -> None:
    changes = remote.pin(amd64=digest("b"))
    result = publish_pin_pr(
        remote.work, changes, base_branch="refs/heads/main", github=None, reapply=gitpr.pin_reapplier(changes)
    )
    assert [e["status"] for e in result["processors"]] == ["pushed"]
    assert git(remote.work, "for-each-ref", "refs/theory-deploy") == ""


def test_not_a_git_repository(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    with pytest.raises(GitError) as info:
        publish_pin_pr(folder, [], base_branch="main", github=None, reapply=lambda r: [])
    assert info.value.message == f"{folder.resolve()} is not inside a git repository."
    assert info.value.remedy == "Run from a clone of your repository."


def test_publish_from_a_subfolder_and_from_a_linked_worktree(remote: Remote) -> None:
    changes = remote.pin(amd64=digest("b"))
    sub = remote.work / "processors" / "llm"
    result = publish(remote, changes, tree=sub)
    assert [e["status"] for e in result["processors"]] == ["pushed"]
    linked = remote.tmp / "linked"
    git(remote.work, "worktree", "add", "--quiet", "--detach", str(linked))
    again = publish(remote, remote.pin(arm64=digest("c")), tree=linked)
    assert [e["status"] for e in again["processors"]] == ["pushed"]
    assert len(git(remote.work, "worktree", "list").splitlines()) == 2  # the user's linked worktree stays


def test_remote_given_as_a_path_and_private_refs_removed(remote: Remote) -> None:
    changes = remote.pin(amd64=digest("b"))
    result = publish(remote, changes, remote=str(remote.path))
    assert [e["status"] for e in result["processors"]] == ["pushed"]
    assert remote.sha(BRANCH) == result["processors"][0]["commit"]
    assert git(remote.work, "for-each-ref", "refs/theory-deploy") == ""


def test_bot_identity_comes_from_the_environment(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THEORY_BOT_NAME", "pin-app[bot]")
    monkeypatch.setenv("THEORY_BOT_EMAIL", "7+pin-app[bot]@users.noreply.github.com")
    publish(remote, remote.pin(amd64=digest("b")))
    assert git(remote.path, "log", "-1", "--format=%an|%ae|%cn|%ce", BRANCH) == (
        "pin-app[bot]|7+pin-app[bot]@users.noreply.github.com|pin-app[bot]|7+pin-app[bot]@users.noreply.github.com"
    )
    # That identity's commits are the bot's; the default identity's are foreign now.
    assert gitpr.is_bot_commit(remote.path, BRANCH) is True
    assert gitpr.is_bot_commit(remote.path, BRANCH, BotIdentity("x", gitpr.DEFAULT_BOT_EMAIL)) is False
    result = publish(remote, remote.pin(arm64=digest("c")))
    assert [e["status"] for e in result["processors"]] == ["pushed"]


def test_two_processors_two_branches_and_a_summary(remote: Remote) -> None:
    other_reg = "processors/img/resize/registry.yaml"
    remote.commit("main", lambda t: FIXTURE.replace("llm/litellm@1", "img/resize@2"), "add", path=other_reg)
    git(remote.work, "pull", "--quiet", "--ff-only")
    changed = registry_file.write_pins(remote.work / other_reg, {"arm64": digest("e")})
    changes = [*remote.pin(amd64=digest("b")), PinChange("img/resize@2", other_reg, REPO, dict(changed))]
    result = publish(remote, changes)
    assert result["summary"] == (f"{REF}: pushed on {BRANCH}\nimg/resize@2: pushed on theory-deploy/pin/img-resize-v2")
    assert git(remote.work, "for-each-ref", "refs/theory-deploy") == ""


# ---------------------------------------------------------------------------------------------------
# Fetching into private refs, the bot's commits, the temporary worktree
# ---------------------------------------------------------------------------------------------------


def _private_refs(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/theory-deploy")
    return dict(line.split(" ") for line in out.splitlines())


def test_fetch_without_a_bot_branch(remote: Remote) -> None:
    work = remote.work
    # A private bot ref left by an earlier run is dropped when the remote has no bot branch.
    git(work, "update-ref", f"refs/theory-deploy/remotes/origin/{BRANCH}", "HEAD")
    main = remote.commit("main", lambda t: "new\n", "moved", path="README.md")
    assert gitpr._fetch(Git(work), "origin", "main", BRANCH) == (main, None)
    assert _private_refs(work) == {"refs/theory-deploy/remotes/origin/main": main}
    assert git(work, "rev-parse", "main") != main  # the user's branch is untouched


def test_fetch_with_a_bot_branch_and_no_tags(remote: Remote) -> None:
    work = remote.work
    bot = remote.commit(BRANCH, lambda t: t + "# x\n", "bot")
    git(remote.path, "tag", "v1", "main")
    main = remote.sha("main")
    assert gitpr._fetch(Git(work), "origin", "main", BRANCH) == (main, bot)
    assert _private_refs(work) == {
        "refs/theory-deploy/remotes/origin/main": main,
        f"refs/theory-deploy/remotes/origin/{BRANCH}": bot,
    }
    assert git(work, "tag") == ""  # --no-tags
    assert not (work / ".git" / "FETCH_HEAD").exists()  # --no-write-fetch-head
    assert git(work, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"


def test_fetch_forces_the_private_refs_to_a_rewritten_remote(remote: Remote) -> None:
    work = remote.work
    first = remote.commit(BRANCH, lambda t: t + "# x\n", "bot")
    gitpr._fetch(Git(work), "origin", "main", BRANCH)
    # The branch is rewritten (not a fast-forward): the private ref follows (`+` refspec).
    git(remote.path, "update-ref", f"refs/heads/{BRANCH}", "main")
    rewritten = remote.commit(BRANCH, lambda t: t + "# y\n", "bot again")
    assert first != rewritten
    assert gitpr._fetch(Git(work), "origin", "main", BRANCH) == (remote.sha("main"), rewritten)


def test_fetch_of_a_missing_base_branch(remote: Remote) -> None:
    with pytest.raises(GitError) as info:
        gitpr._fetch(Git(remote.work), "origin", "dev", BRANCH)
    assert info.value.message == "base branch 'dev' does not exist on remote 'origin'."
    assert info.value.remedy == "Pass the branch PRs should target (--base, default: the repository's default branch)."
    assert _private_refs(remote.work) == {}


def _git_cannot_lock(lock: Path) -> str:
    """What git says when a ref's lock file exists (a killed git left it)."""
    return (
        "error: cannot lock ref "
        f"'refs/theory-deploy/remotes/origin/main': Unable to create '{lock}': File exists.\n\n"
        "Another git process seems to be running in this repository, e.g.\nan editor opened by 'git commit'. "
        "Please make sure all processes\nare terminated then try again. If it still fails, a git process\n"
        "may have crashed in this repository earlier:\nremove the file manually to continue."
    )


def test_fetch_from_a_remote_that_is_gone(remote: Remote) -> None:
    gone = remote.tmp / "gone.git"
    remote.path.rename(gone)
    with pytest.raises(GitError) as info:
        gitpr._fetch(Git(remote.work), "origin", "main", BRANCH)
    err = info.value
    assert err.message == (
        f"reading main and {BRANCH} from origin (git ls-remote) failed: fatal: '{remote.path}' does not appear to be "
        "a git repository\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct "
        "access rights\nand the repository exists."
    )
    assert err.remedy == "Check that origin is reachable and the token may read it, and read git's message."
    assert err.details == {"branch": BRANCH, "remote": "origin"}


def test_fetch_that_fails_after_the_listing(remote: Remote) -> None:
    work = remote.work
    # The private ref is locked (a concurrent git): ls-remote works, the fetch cannot update the ref.
    lock = work / ".git" / "refs" / "theory-deploy" / "remotes" / "origin" / "main.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    with pytest.raises(GitError) as info:
        gitpr._fetch(Git(work), "origin", "main", BRANCH)
    err = info.value
    # git's words only (a quiet fetch: no "From ..." progress lines around them).
    assert err.message == f"fetching main and {BRANCH} from origin failed: " + _git_cannot_lock(lock)
    assert err.remedy == "Check that origin is reachable and the token may read it, and read git's message."
    assert err.details == {"branch": BRANCH, "remote": "origin"}


def _linear(repo: Path, n: int, message: str) -> None:
    """n empty commits on HEAD, quickly (fast-import would need a stream; commit-tree is fine for ~100)."""
    script = f'for i in $(seq {n}); do git -c user.name=h -c user.email=h@x commit --quiet --allow-empty -m "{message} $i"; done'
    subprocess.run(
        ["sh", "-c", script],
        cwd=repo,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    )


def test_shallow_clone_is_deepened_until_base_and_bot_branch_meet(remote: Remote) -> None:
    """depth 1, the bot branch forked 30 commits below main's tip, history 80 deep: one --deepen=50 is enough,
    the clone stays shallow (no --unshallow)."""
    seed = remote.clone("deep-seed")
    _linear(seed, 40, "old")
    git(seed, "push", "--quiet", "origin", "main")
    remote.commit(BRANCH, lambda t: t + "# bot\n", "bot")
    _linear(seed, 30, "new")
    git(seed, "push", "--quiet", "origin", "main")
    ci = remote.clone("ci", "--depth", "1", "--no-local")
    assert git(ci, "rev-parse", "--is-shallow-repository") == "true"
    base, bot = gitpr._fetch(Git(ci), "origin", "main", BRANCH)
    assert (base, bot) == (remote.sha("main"), remote.sha(BRANCH))
    assert git(ci, "merge-base", base, bot) == git(remote.path, "merge-base", "main", BRANCH)
    assert git(ci, "rev-parse", "--is-shallow-repository") == "true"
    assert len(git(ci, "rev-list", base).splitlines()) == 51  # 1 + 50


def _history(tmp: Path, main_commits: int, fork_at: int) -> Path:
    """A bare remote written with fast-import: main is `main_commits` commits long; the bot branch has
    one commit on top of main's commit number `fork_at`."""
    bare = tmp / "deep.git"
    git(tmp, "init", "--quiet", "--bare", "-b", "main", str(bare))
    parts = []
    for n in range(1, main_commits + 1):
        parts.append(f"commit refs/heads/main\nmark :{n}\ncommitter h <h@x> {1700000000 + n} +0000\ndata 0\n")
        if n == 1:
            parts.append("M 644 inline README.md\ndata 2\nx\n")
    parts.append(
        f"commit refs/heads/{BRANCH}\ncommitter h <h@x> 1800000000 +0000\ndata 3\nbot\nfrom :{fork_at}\n"
        "M 644 inline bot.txt\ndata 2\nb\n"
    )
    subprocess.run(["git", "fast-import", "--quiet"], cwd=bare, input="".join(parts), text=True, check=True)
    return bare


def test_deep_fork_is_found_with_1000_then_unshallow(tmp_path: Path) -> None:
    """The bot branch forked 1100 commits below main's tip: --deepen=50 and --deepen=1000 do not reach
    the fork, --unshallow does."""
    bare = _history(tmp_path, 1110, 10)
    ci = tmp_path / "ci"
    git(tmp_path, "clone", "--quiet", "--depth", "1", f"file://{bare}", str(ci))
    base, bot = gitpr._fetch(Git(ci), "origin", "main", BRANCH)
    assert (base, bot) == (git(bare, "rev-parse", "main"), git(bare, "rev-parse", BRANCH))
    assert git(ci, "merge-base", base, bot) == git(bare, "rev-parse", f"{BRANCH}^")
    assert git(ci, "rev-parse", "--is-shallow-repository") == "false"


def test_fork_within_1000_stays_shallow(tmp_path: Path) -> None:
    bare = _history(tmp_path, 1200, 1110)  # 90 commits below the tip: past 50, within 1000
    ci = tmp_path / "ci"
    git(tmp_path, "clone", "--quiet", "--depth", "1", f"file://{bare}", str(ci))
    base, bot = gitpr._fetch(Git(ci), "origin", "main", BRANCH)
    assert git(ci, "merge-base", base, bot) == git(bare, "rev-parse", f"{BRANCH}^")
    assert git(ci, "rev-parse", "--is-shallow-repository") == "true"
    assert len(git(ci, "rev-list", base).splitlines()) == 1051  # 1 + 50 + 1000


def test_unrelated_bot_branch_is_not_deepened_and_is_foreign(remote: Remote) -> None:
    orphan = remote.clone("orphan")
    git(orphan, "checkout", "--quiet", "--orphan", "x")
    git(orphan, *HUMAN, "commit", "--quiet", "--allow-empty", "-m", "unrelated")
    git(orphan, "push", "--quiet", "origin", f"HEAD:refs/heads/{BRANCH}")
    assert gitpr._fetch(Git(remote.work), "origin", "main", BRANCH) == (remote.sha("main"), remote.sha(BRANCH))
    with pytest.raises(PushConflictError) as info:
        publish(remote, remote.pin(amd64=digest("b")))
    assert info.value.details["commit"] == remote.sha(BRANCH)


def test_is_bot_commit_reads_identity_and_trailer(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    bot = remote.commit(BRANCH, lambda t: t + "# a\n", f"pin: x\n\nOther: y\n{gitpr.BOT_TRAILER}", who=BOT_CFG)
    assert gitpr.is_bot_commit(remote.path, bot) is True
    assert gitpr.is_bot_commit(remote.path, BRANCH) is True  # any revision name
    no_trailer = remote.commit(BRANCH, lambda t: t + "# b\n", "pin: y", who=BOT_CFG)
    assert gitpr.is_bot_commit(remote.path, no_trailer) is False
    other_value = remote.commit(BRANCH, lambda t: t + "# c\n", "pin\n\nTheory-Deploy-Bot: other", who=BOT_CFG)
    assert gitpr.is_bot_commit(remote.path, other_value) is False
    almost = remote.commit(BRANCH, lambda t: t + "# x\n", "pin\n\nTheory-Deploy-Bot: pinX", who=BOT_CFG)
    assert gitpr.is_bot_commit(remote.path, almost) is False
    human = remote.commit(BRANCH, lambda t: t + "# d\n", f"pin\n\n{gitpr.BOT_TRAILER}")
    assert gitpr.is_bot_commit(remote.path, human) is False
    assert gitpr.is_bot_commit(remote.path, human, BotIdentity("Hu Man", "human@example.com")) is True
    # Without an identity given, the environment's bot identity is the one asked about.
    monkeypatch.setenv("THEORY_BOT_EMAIL", "HUMAN@example.com")
    assert gitpr.is_bot_commit(remote.path, human) is True
    assert gitpr.is_bot_commit(remote.path, bot) is False


def test_commits_parses_every_field(remote: Remote) -> None:
    a = remote.commit(BRANCH, lambda t: t + "# a\n", f"first, subject\n\n{gitpr.BOT_TRAILER}", who=BOT_CFG)
    b = remote.commit(BRANCH, lambda t: t + "# b\n", "second\n\nTheory-Deploy-Bot: pin\nTheory-Deploy-Bot: x")
    commits = gitpr._commits(Git(remote.path), [b, "--not", "main"])
    assert commits == [
        gitpr._Commit(b, "Hu Man", "human@example.com", "human@example.com", "second", "pin,x"),
        gitpr._Commit(
            a, gitpr.DEFAULT_BOT_NAME, gitpr.DEFAULT_BOT_EMAIL, gitpr.DEFAULT_BOT_EMAIL, "first, subject", "pin"
        ),
    ]
    assert gitpr._commits(Git(remote.path), ["main", "--not", "main"]) == []


def test_is_bot_commit_of_an_unknown_revision(remote: Remote) -> None:
    with pytest.raises(GitError) as info:
        gitpr.is_bot_commit(remote.path, "nope")
    assert info.value.message == f"'nope' is not a commit in {remote.path}."
    assert info.value.remedy == "Fetch it first (fetch-depth: 2 or 0)."


def test_git_common_dir_of_a_clone_and_of_its_worktree(remote: Remote) -> None:
    common = (remote.work / ".git").resolve()
    assert gitpr._git_common_dir(Git(remote.work)) == common
    assert gitpr._git_common_dir(Git(remote.work / "processors")) == common
    linked = remote.tmp / "linked"
    git(remote.work, "worktree", "add", "--quiet", "--detach", str(linked))
    assert gitpr._git_common_dir(Git(linked)) == common


def test_worktree_checkout_reads_the_gitdir_pointer(tmp_path: Path) -> None:
    admin = tmp_path / "pin-x"
    admin.mkdir()
    assert gitpr._worktree_checkout(admin) is None  # no gitdir file
    (admin / "gitdir").write_text("")
    assert gitpr._worktree_checkout(admin) is None  # empty
    (admin / "gitdir").write_text("  \n")
    assert gitpr._worktree_checkout(admin) is None
    (admin / "gitdir").write_bytes(b"\xff\xfe/bad")
    assert gitpr._worktree_checkout(admin) is None  # not UTF-8
    (admin / "gitdir").write_text("/tmp/theory-deploy-pin-abc/pin-x/.git\n")
    assert gitpr._worktree_checkout(admin) == Path("/tmp/theory-deploy-pin-abc/pin-x")


def _admin_entries(work: Path) -> list[str]:
    admin_root = work / ".git" / "worktrees"
    return sorted(p.name for p in admin_root.iterdir()) if admin_root.is_dir() else []


def test_a_worktree_left_locked_by_an_interrupted_add_is_still_removed(remote: Remote) -> None:
    """SIGTERM/SIGINT inside `git worktree add` kills git half-way: its entry stays locked, and a single
    --force refuses a locked worktree (bench/reliability.py R2 saw it left behind after a SIGTERM)."""
    with pytest.raises(RuntimeError, match="interrupted"), gitpr._worktree(Git(remote.work), "HEAD", "pin-x") as tree:
        git(remote.work, "worktree", "lock", "--reason", "initializing", str(tree))
        raise RuntimeError("interrupted")
    assert _admin_entries(remote.work) == []
    assert not tree.parent.exists()


def test_an_entry_whose_checkout_never_existed_is_removed(remote: Remote) -> None:
    """Killed before the checkout was written: git no longer knows the path as a worktree; the entry
    pointing into our temporary folder is dropped all the same, and a user's worktree is kept."""
    users = remote.tmp / "users-tree"
    git(remote.work, "worktree", "add", "--quiet", "--detach", str(users))
    with pytest.raises(RuntimeError, match="interrupted"), gitpr._worktree(Git(remote.work), "HEAD", "pin-y") as tree:
        git(remote.work, "worktree", "lock", str(tree))
        (tree / ".git").unlink()
        raise RuntimeError("interrupted")
    assert _admin_entries(remote.work) == ["users-tree"]
    assert not tree.parent.exists() and users.is_dir()


def _stale_worktree(work: Path, tmp_root: Path, folder_prefix: str, name: str) -> Path:
    """A bot worktree as a killed run leaves it: registered with git, its folder still there."""
    folder = tmp_root / f"{folder_prefix}{name}-x"
    folder.mkdir(parents=True)
    git(work, "worktree", "add", "--quiet", "--detach", str(folder / name))
    return folder / name


def test_reclaim_removes_only_the_bots_stale_worktrees(remote: Remote, capfd: pytest.CaptureFixture[str]) -> None:
    work = remote.work
    ours_b = _stale_worktree(work, remote.tmp, "theory-deploy-pin-", "pin-b")
    ours_a = _stale_worktree(work, remote.tmp, "theory-deploy-pin-", "pin-a")
    users = _stale_worktree(work, remote.tmp, "mine-", "pin-c")  # named pin-* but not in our temp folder
    other = _stale_worktree(work, remote.tmp, "theory-deploy-pin-", "feature")  # not a pin-* worktree
    common = gitpr._git_common_dir(Git(work))
    capfd.readouterr()
    assert gitpr._reclaim_stale_worktrees(Git(work), common) == ["pin-a", "pin-b", "pin-c"]
    assert capfd.readouterr().err == "removed 3 worktree(s) left by an interrupted run: pin-a, pin-b, pin-c\n"
    assert not ours_a.parent.exists() and not ours_b.parent.exists()
    assert users.is_dir() and (users / REG).is_file()  # the user's files stay; only git's entry went
    assert other.is_dir()
    assert sorted(p.name for p in (common / "worktrees").iterdir()) == ["feature"]
    listed = git(work, "worktree", "list", "--porcelain")
    assert str(other) in listed and str(users) not in listed
    # Nothing left: nothing reclaimed, nothing printed.
    assert gitpr._reclaim_stale_worktrees(Git(work), common) == []
    assert capfd.readouterr().err == ""


def test_reclaim_survives_what_a_tmp_cleaner_or_a_crash_left(remote: Remote) -> None:
    """The temp folder of a stale worktree is already gone (a reboot cleaned /tmp), and a stray file is named
    like a bot entry: reclaiming neither fails nor leaves an entry behind (git's prune drops the file)."""
    import shutil

    work = remote.work
    gone = _stale_worktree(work, remote.tmp, "theory-deploy-pin-", "pin-gone")
    shutil.rmtree(gone.parent)
    common = gitpr._git_common_dir(Git(work))
    (common / "worktrees" / "pin-stray").write_text("junk\n")
    assert gitpr._reclaim_stale_worktrees(Git(work), common) == ["pin-gone", "pin-stray"]
    assert not (common / "worktrees").exists()
    assert git(work, "worktree", "list", "--porcelain").splitlines()[0] == f"worktree {work}"
    assert len(git(work, "worktree", "list").splitlines()) == 1


def test_reclaim_without_any_worktree_folder(remote: Remote) -> None:
    common = gitpr._git_common_dir(Git(remote.work))
    assert not (common / "worktrees").exists()
    assert gitpr._reclaim_stale_worktrees(Git(remote.work), common) == []


def test_a_killed_runs_worktree_is_reclaimed_before_the_fetch(
    remote: Remote, capfd: pytest.CaptureFixture[str]
) -> None:
    """A kill inside `git worktree add` leaves a locked admin entry without a valid HEAD: it breaks git
    itself until removed, so publish reclaims it first and finishes the job."""
    work = remote.work
    stale = _stale_worktree(work, remote.tmp, "theory-deploy-pin-", "pin-llm-litellm-v1")
    admin = work / ".git" / "worktrees" / "pin-llm-litellm-v1"
    (admin / "HEAD").write_text("garbage\n")
    (admin / "locked").write_text("initializing\n")
    capfd.readouterr()
    result = publish(remote, remote.pin(amd64=digest("b")))
    assert [e["status"] for e in result["processors"]] == ["pushed"]
    assert capfd.readouterr().err == "removed 1 worktree(s) left by an interrupted run: pin-llm-litellm-v1\n"
    assert not stale.parent.exists() and not admin.exists()
    assert len(git(work, "worktree", "list").splitlines()) == 1


def test_a_killed_fetchs_private_ref_locks_are_removed_and_a_users_lock_is_kept(
    remote: Remote, capfd: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL inside `git fetch` leaves `<ref>.lock` under the private namespace, and git then refuses
    to update that ref ever again: a re-run removes those (only our runs write there, and they hold the
    clone lock) and finishes the job. A lock on the user's own ref may be a git command they are
    running, so it stays."""
    work = remote.work
    private = work / ".git" / "refs" / "theory-deploy" / "remotes" / "origin"
    stale_base = private / "main.lock"
    stale_bot = private / "theory-deploy" / "pin" / "llm-litellm-v1.lock"
    users = work / ".git" / "refs" / "heads" / "feature.lock"
    for lock in (stale_base, stale_bot, users):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("")
    capfd.readouterr()
    result = publish(remote, remote.pin(amd64=digest("b")))
    assert [e["status"] for e in result["processors"]] == ["pushed"]
    assert capfd.readouterr().err == (
        "removed 2 ref lock(s) left by an interrupted run: refs/theory-deploy/remotes/origin/main.lock, "
        "refs/theory-deploy/remotes/origin/theory-deploy/pin/llm-litellm-v1.lock\n"
    )
    assert not stale_base.exists() and not stale_bot.exists()
    assert users.exists()
    assert remote.file(BRANCH) == FIXTURE.replace(digest("a"), digest("b"))


def test_the_clone_lock_is_held_for_the_whole_run(remote: Remote) -> None:
    """The lock-file and worktree reclaim above is only safe because no other run can be writing
    them: every step of a run, from the first fetch to the last push, happens under the clone lock."""
    from theory_deploy.errors import LockTimeoutError
    from theory_deploy.files import exclusive_lock

    common = (remote.work / ".git").resolve()
    inner = gitpr.pin_reapplier(remote.pin(amd64=digest("b")))
    refused: list[str] = []

    def still_locked(step: str) -> None:
        with pytest.raises(LockTimeoutError):
            with exclusive_lock(common, timeout_s=0.1):
                pass
        refused.append(step)

    def reapply(root: Path) -> list[PinChange]:
        still_locked("reapply")
        return inner(root)

    publish(remote, [PinChange(REF, REG, REPO, {})], reapply=reapply, before_push=lambda ref, n: still_locked("push"))
    assert refused == ["reapply", "push"]
    with exclusive_lock(common, timeout_s=0.1):  # released at the end
        pass


def test_worktree_folder_is_made_in_the_temp_dir_and_removed(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    tmp_root = remote.tmp / "tmp-root"
    tmp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    seen: list[list[str]] = []
    inner = gitpr.pin_reapplier(remote.pin(amd64=digest("b")))

    def reapply(root: Path) -> list[PinChange]:
        seen.append(sorted(p.name for p in tmp_root.iterdir()))
        assert root.parent.parent == tmp_root and root.name == "pin-llm-litellm-v1"
        assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached
        return inner(root)

    publish(remote, [PinChange(REF, REG, REPO, {})], reapply=reapply)
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith("theory-deploy-pin-")
    assert list(tmp_root.iterdir()) == []
    assert (
        not (remote.work / ".git" / "worktrees").exists() or list((remote.work / ".git" / "worktrees").iterdir()) == []
    )


def test_pin_reapplier_writes_each_change_and_reports_what_changed(tmp_path: Path) -> None:
    (tmp_path / REG).parent.mkdir(parents=True)
    (tmp_path / REG).write_text(FIXTURE)
    changes = [PinChange(REF, REG, REPO, {"amd64": ("ignored", digest("b")), "arm64": (None, None)})]
    reapply = gitpr.pin_reapplier(changes)
    assert reapply(tmp_path) == [PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("b"))})]
    assert (tmp_path / REG).read_text() == FIXTURE.replace(digest("a"), digest("b"))
    assert reapply(tmp_path) == []  # already there: nothing changed, nothing reported


@pytest.fixture
def gh(remote: Remote):
    standin = GitHubStandIn(tokens={TOKEN}, git_remote=remote.path).start()
    try:
        yield standin
    finally:
        standin.stop()


def client(gh: GitHubStandIn) -> GitHubClient:
    return GitHubClient(
        "acme/processors", token=TOKEN, base_url=gh.url, retries=0, seconds_between_requests=0, seconds_between_writes=0
    )


def test_publish_opens_the_pr_with_the_exact_title_and_body(remote: Remote, gh: GitHubStandIn) -> None:
    result = publish(remote, remote.pin(amd64=digest("b"), arm64=digest("c")), github=client(gh))
    [pr] = gh.pulls
    url = result["processors"][0]["pr"]["url"]
    assert url.endswith("/pull/1")
    changes = {"amd64": on(digest("a"), digest("b")), "arm64": on(None, digest("c"))}
    assert result == {
        "processors": [
            entry(
                "pushed",
                commit=remote.sha(BRANCH),
                changes=changes,
                proposed=changes,
                pr={"url": url, "result": "created"},
            )
        ],
        "summary": f"{REF}: pushed on {BRANCH}, PR created: {url}",
    }
    assert (pr["head"], pr["base"], pr["state"]) == (BRANCH, "main", "open")
    assert pr["title"] == f"pin({REF}): amd64, arm64"
    assert pr["body"] == gitpr.pr_body(
        REF, REG, BRANCH, {"amd64": (digest("a"), digest("b")), "arm64": (None, digest("c"))}
    )


def test_the_pr_shows_base_to_tip_and_is_updated_in_place(remote: Remote, gh: GitHubStandIn) -> None:
    url = publish(remote, remote.pin(amd64=digest("b")), github=client(gh))["processors"][0]["pr"]["url"]
    result = publish(remote, remote.pin(amd64=digest("d")), github=client(gh))
    [pr] = gh.pulls
    assert result["processors"][0]["pr"] == {"url": url, "result": "updated"}
    assert pr["title"] == f"pin({REF}): amd64"
    assert pr["body"] == gitpr.pr_body(REF, REG, BRANCH, {"amd64": (digest("a"), digest("d"))})
    again = publish(remote, remote.pin(amd64=digest("d")), github=client(gh))
    [e] = again["processors"]
    assert (e["status"], e["pr"]) == ("unchanged", {"url": url, "result": "unchanged"})
    assert again["summary"] == f"{REF}: unchanged on {BRANCH}, PR unchanged: {url}"


def test_nothing_to_propose_never_asks_github(remote: Remote, gh: GitHubStandIn) -> None:
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    remote.commit("main", lambda t: t.replace(digest("a"), digest("b")), "pin (#1)")  # squash-merged
    gh.clear_requests()
    result = publish(remote, changes, github=client(gh))
    assert result["processors"] == [entry("unchanged", commit=None, changes={}, proposed=None)]
    assert gh.requests == []


def test_over_http_git_authenticates_with_the_given_token_or_the_clients(remote: Remote, gh: GitHubStandIn) -> None:
    """A private repository over smart HTTP, cloned without persisted credentials (persist-credentials:
    false): every fetch and push needs the token, given as git_token or taken from the GitHub client."""
    ci = remote.tmp / "ci"
    auth = f"http.{gh.url}/.extraheader={GitHubStandIn.extraheader(TOKEN)}"
    git(remote.tmp, "-c", auth, "clone", "--quiet", gh.git_url, str(ci))
    gh.clear_requests()
    changes = [PinChange(REF, REG, REPO, dict(registry_file.write_pins(ci / REG, {"amd64": digest("b")})))]
    first = publish(remote, changes, tree=ci, git_token=TOKEN)
    assert [e["status"] for e in first["processors"]] == ["pushed"]
    changes = [PinChange(REF, REG, REPO, dict(registry_file.write_pins(ci / REG, {"arm64": digest("c")})))]
    second = publish(remote, changes, tree=ci, github=client(gh))
    assert [(e["status"], e["pr"]["result"]) for e in second["processors"]] == [("pushed", "created")]
    assert [(p["ref"], p["user"]) for p in gh.pushes] == [(f"refs/heads/{BRANCH}", "x-access-token")] * 2
    assert {(r.user, r.status) for r in gh.git_requests} == {("x-access-token", 200)}


def test_pinning_back_to_the_base_digest_pushes_but_opens_no_pr(remote: Remote, gh: GitHubStandIn) -> None:
    """The bot branch proposed amd64=b; the user pins amd64 back to main's digest: the commit goes up (the
    branch must not keep proposing b), but the branch now proposes nothing, so no PR is opened."""
    publish(remote, remote.pin(amd64=digest("b")))
    gh.clear_requests()
    result = publish(remote, remote.pin(amd64=digest("a")), github=client(gh))
    tip = remote.sha(BRANCH)
    assert result["processors"] == [
        entry("pushed", commit=tip, changes={"amd64": on(digest("b"), digest("a"))}, proposed={})
    ]
    assert remote.file(BRANCH) == FIXTURE
    assert gh.requests == [] and gh.pulls == []


def test_a_github_failure_after_the_push_says_the_branch_was_pushed(remote: Remote, gh: GitHubStandIn) -> None:
    gh.fail_next(403, "Resource not accessible by integration", method="GET")
    changes = remote.pin(amd64=digest("b"))
    with pytest.raises(GitHubError) as info:
        publish(remote, changes, github=client(gh))
    assert info.value.details["branch"] == BRANCH and info.value.details["pushed"] is True
    assert remote.sha(BRANCH) is not None
    gh.fail_next(403, "Resource not accessible by integration", method="GET")
    with pytest.raises(GitHubError) as info:
        publish(remote, changes, github=client(gh))  # nothing new to push this time
    assert info.value.details["branch"] == BRANCH and info.value.details["pushed"] is False


# ---------------------------------------------------------------------------------------------------
# propose_pins / verify_proposed_pins: the work tree's pins, checked against the loopback registry
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def loopback(registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A remote whose processor lives in the loopback registry with a real amd64 and arm64 manifest and
    an index over both."""
    import uuid

    from tests.modal_standin.images import push_tiny_image, push_tiny_index

    for name in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", "THEORY_REGISTRY_HOST", "REGISTRY_HOST"):
        monkeypatch.delenv(name, raising=False)
    path = f"test/gitpr-contract-{uuid.uuid4().hex[:10]}"
    repository = f"{registry}/{path}"
    amd = push_tiny_image(registry, path, payload="gitpr-contract-amd64")
    arm = push_tiny_image(registry, path, payload="gitpr-contract-arm64", arch="arm64")
    index = push_tiny_index(registry, path, [amd, arm])
    r = Remote(tmp_path, FIXTURE.replace(REPO, repository))
    return {"remote": r, "repository": repository, "amd64": amd.ref, "arm64": arm.ref, "index": index}


def _loaded(r: Remote, path: str = REG):
    return registry_file.load_path(r.work / path, r.work)


@pytest.mark.registry
def test_propose_pins_pushes_the_branch_without_a_pr(loopback: dict, capfd: pytest.CaptureFixture[str]) -> None:
    r: Remote = loopback["remote"]
    repository = loopback["repository"]
    registry_file.write_pins(r.work / REG, {"amd64": loopback["amd64"], "arm64": loopback["arm64"]})
    capfd.readouterr()
    result = gitpr.propose_pins([_loaded(r)], base="main", open_pr=False)
    old = digest("a", repository)
    changes = {"amd64": on(old, loopback["amd64"]), "arm64": on(None, loopback["arm64"])}
    assert result == {
        "processors": [entry("pushed", commit=r.sha(BRANCH), changes=changes, proposed=changes)],
        "summary": f"{REF}: pushed on {BRANCH}",
        "pr_url": None,
        "pr_urls": [],
    }
    assert capfd.readouterr().err.splitlines() == [
        f"verified amd64: {loopback['amd64']} is a linux/amd64 image manifest",
        f"verified arm64: {loopback['arm64']} is a linux/arm64 image manifest",
    ]


@pytest.mark.registry
def test_propose_pins_opens_the_pr(loopback: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    r: Remote = loopback["remote"]
    registry_file.write_pins(r.work / REG, {"arm64": loopback["arm64"]})
    with GitHubStandIn(tokens={TOKEN}, git_remote=r.path) as standin:
        monkeypatch.setenv("GITHUB_REPOSITORY", "acme/processors")
        monkeypatch.setenv("GITHUB_API_URL", standin.url)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        result = gitpr.propose_pins([_loaded(r)], base="main", remote="origin")
        [pr] = standin.pulls
        url = result["processors"][0]["pr"]["url"]
        assert (result["pr_url"], result["pr_urls"]) == (url, [url])
        assert result["processors"][0]["pr"]["result"] == "created"
        assert pr["title"] == f"pin({REF}): arm64"


@pytest.mark.registry
def test_propose_pins_with_nothing_new_does_nothing(loopback: dict) -> None:
    r: Remote = loopback["remote"]
    assert gitpr.propose_pins([_loaded(r)], base="main", open_pr=False) == {
        "processors": [],
        "summary": "no pins differ from the base branch: nothing to commit, no PR",
    }
    assert gitpr.propose_pins([], base="main") == {
        "processors": [],
        "summary": "no pins differ from the base branch: nothing to commit, no PR",
    }
    assert r.sha(BRANCH) is None


@pytest.mark.registry
def test_propose_pins_refuses_an_index_for_a_platform(loopback: dict) -> None:
    r: Remote = loopback["remote"]
    index = loopback["index"]
    registry_file.write_pins(r.work / REG, {"amd64": index})
    with pytest.raises(gitpr.PlatformMismatchError) as info:
        gitpr.propose_pins([_loaded(r)], base="main", open_pr=False)
    where = f"{REG} image.platforms.amd64"
    assert info.value.message == (
        f"{where}: {index} is a multi-platform index, not the linux/amd64 manifest ({loopback['amd64']})."
    )
    assert info.value.remedy == f"Pin the manifest: `processorctl pin --ref {REF} --platform amd64 --oci {index}`."
    assert r.sha(BRANCH) is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"base": "-x"}, "base branch '-x' starts with '-', so git would read it as an option; refusing it."),
        (
            {"base": "main", "remote": "-x"},
            "remote '-x' starts with '-', so git would read it as an option; refusing it.",
        ),
    ],
)
def test_propose_pins_refuses_option_like_names(kw: dict, message: str) -> None:
    with pytest.raises(UsageError) as info:
        gitpr.propose_pins([], **kw)
    assert info.value.message == message


def test_verify_proposed_pins_refuses_a_pin_from_another_repository() -> None:
    """A hand-edited registry.yaml pinning another repository's digest: refused before any registry call."""
    from theory_deploy.errors import RepositoryMismatchError

    change = PinChange(REF, REG, "ghcr.io/acme/other", {"arm64": (None, None), "amd64": (None, digest("b"))})
    with pytest.raises(RepositoryMismatchError) as info:
        gitpr.verify_proposed_pins([change])
    assert info.value.message == (
        f"{REG} image.platforms.amd64: {REPO} is not the processor's image.repository (ghcr.io/acme/other)."
    )
    assert info.value.details == {"given": REPO, "expected": "ghcr.io/acme/other"}


@pytest.mark.registry
def test_verify_proposed_pins_skips_unpins_and_checks_each_platform(loopback: dict, capfd) -> None:
    repository = loopback["repository"]
    capfd.readouterr()
    gitpr.verify_proposed_pins(
        [PinChange(REF, REG, repository, {"amd64": (None, None), "arm64": (None, loopback["arm64"])})]
    )
    assert capfd.readouterr().err == f"verified arm64: {loopback['arm64']} is a linux/arm64 image manifest\n"
    gitpr.verify_proposed_pins([])  # nothing to verify, no registry asked


def test_fetching_and_deepening_write_only_the_private_refs(remote: Remote) -> None:
    """A shallow CI clone that maps every remote branch (`+refs/heads/*:refs/remotes/origin/*`), with a
    checked-out submodule and `fetch.recurseSubmodules` on, and a tag in the history the deepening
    brings in: base and bot branch alone are fetched and deepened (no other branch, no FETCH_HEAD, no
    tag, the submodule not fetched)."""
    tmp = remote.tmp
    sub = tmp / "sub.git"
    git(tmp, "init", "--quiet", "--bare", "-b", "main", str(sub))
    sub_seed = tmp / "sub-seed"
    git(tmp, "init", "--quiet", "-b", "main", str(sub_seed))
    git(sub_seed, *HUMAN, "commit", "--quiet", "--allow-empty", "-m", "s1")
    git(sub_seed, "push", "--quiet", str(sub), "main")
    seed = remote.clone("deep-seed")
    git(seed, "-c", "protocol.file.allow=always", "submodule", "--quiet", "add", "../sub.git", "sub")
    git(seed, *HUMAN, "commit", "--quiet", "-m", "add the submodule")
    git(seed, "push", "--quiet", "origin", "main")
    remote.commit(BRANCH, lambda t: t + "# bot\n", "bot")
    _linear(seed, 3, "new")
    git(seed, "push", "--quiet", "origin", "main")
    git(remote.path, "tag", "v1", "main~1")  # below the depth-1 clone's tip: only a deepening brings it
    git(remote.path, "branch", "feature", "main~2")
    ci = remote.clone("ci", "--depth", "1", "--no-local")
    git(ci, "-c", "protocol.file.allow=always", "submodule", "--quiet", "update", "--init")
    git(ci, "config", "fetch.recurseSubmodules", "true")
    git(ci, "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*")
    git(sub_seed, *HUMAN, "commit", "--quiet", "--allow-empty", "-m", "s2")
    git(sub_seed, "push", "--quiet", str(sub), "main")
    s2 = git(sub_seed, "rev-parse", "HEAD")

    base, bot = gitpr._fetch(Git(ci), "origin", "main", BRANCH)
    assert (base, bot) == (remote.sha("main"), remote.sha(BRANCH))
    assert git(ci, "merge-base", base, bot) == git(remote.path, "merge-base", "main", BRANCH)
    assert _private_refs(ci) == {
        "refs/theory-deploy/remotes/origin/main": base,
        f"refs/theory-deploy/remotes/origin/{BRANCH}": bot,
    }
    # git's opportunistic update moves the remote-tracking refs of the two branches fetched, no other
    assert git(ci, "for-each-ref", "--format=%(refname)", "refs/remotes").splitlines() == [
        "refs/remotes/origin/HEAD",
        "refs/remotes/origin/main",
        f"refs/remotes/origin/{BRANCH}",
    ]
    assert git(ci, "tag") == ""
    assert not (ci / ".git" / "FETCH_HEAD").exists()
    assert git(ci / "sub", "cat-file", "-t", s2, check=False) == ""


def test_a_failed_deepening_fetch_names_the_step_the_remote_and_the_branch(remote: Remote) -> None:
    """main is rewound while a shallow clone is being deepened, and the private ref it is fetched into
    is locked then (a concurrent git): the deepening fetch fails, reported as that step with git's
    words only (a quiet fetch: no "From ..." lines) and the remote and branch it was about."""
    seed = remote.clone("deep-seed")
    remote.commit(BRANCH, lambda t: t + "# bot\n", "bot")
    _linear(seed, 3, "new")
    git(seed, "push", "--quiet", "origin", "main")
    ci = remote.clone("ci", "--depth", "1", "--no-local")
    lock = ci / ".git" / "refs" / "theory-deploy" / "remotes" / "origin" / "main.lock"
    # The clone's third upload-pack (ls-remote, fetch, then the deepening fetch) rewinds main by one
    # commit and locks the private ref main is fetched into, then serves the fetch.
    calls = remote.tmp / "upload-pack-calls"
    script = remote.tmp / "upload-pack"
    script.write_text(
        "#!/bin/sh\n"
        f'echo x >> "{calls}"\n'
        f'if [ "$(wc -l < "{calls}")" -eq 3 ]; then\n'
        f'  git -C "{remote.path}" update-ref refs/heads/main refs/heads/main~1\n'
        f'  : > "{lock}"\n'
        "fi\n"
        'exec git-upload-pack "$@"\n'
    )
    script.chmod(0o755)
    git(ci, "config", "remote.origin.uploadpack", str(script))
    with pytest.raises(GitError) as info:
        gitpr._fetch(Git(ci), "origin", "main", BRANCH)
    err = info.value
    assert err.message == "deepening the shallow clone from origin failed: " + _git_cannot_lock(lock)
    assert err.remedy == "Check that origin is reachable and the token may read it, and read git's message."
    assert err.details == {"branch": BRANCH, "remote": "origin"}
    assert calls.read_text() == "x\nx\nx\n"


def test_a_registry_path_starting_with_a_dash_is_staged_as_a_path(remote: Remote) -> None:
    path = "-legacy/registry.yaml"
    remote.commit("main", lambda t: FIXTURE, "add", path=path)
    git(remote.work, "pull", "--quiet", "--ff-only")
    changed = registry_file.write_pins(remote.work / path, {"amd64": digest("b")})
    result = publish(remote, [PinChange(REF, path, REPO, dict(changed))])
    tip = remote.sha(BRANCH)
    assert [(e["registry_path"], e["status"], e["commit"]) for e in result["processors"]] == [(path, "pushed", tip)]
    assert git(remote.path, "show", "--name-only", "--format=", BRANCH) == path
    assert git(remote.path, "show", f"{BRANCH}:{path}") + "\n" == FIXTURE.replace(digest("a"), digest("b"))


def test_foreign_commit_is_not_rebased_even_when_the_base_conflicts_with_it(remote: Remote) -> None:
    """A human's commit on the bot branch and a base that changed the same line: nothing is rebased
    (so nothing is superseded); the branch already holds our pin, so the result is unchanged."""
    changes = remote.pin(amd64=digest("b"))
    publish(remote, changes)
    human = _human_commit_on_branch(remote)
    remote.commit("main", lambda t: t.replace("# one vCPU", "# one vCPU, says main"), "main edits that line")
    result = publish(remote, changes)
    assert result["processors"] == [
        entry("unchanged", commit=None, changes={}, proposed={"amd64": on(digest("a"), digest("b"))})
    ]
    assert remote.sha(BRANCH) == human


def test_a_bot_branch_that_already_holds_the_base_is_not_rebased(remote: Remote) -> None:
    """All commits over the base are the bot's, one a merge of main (bot identity and trailer): main is
    already in the branch, so it is not rebased (a rebase would flatten the merge away); the new pin
    commit goes on top of the merge."""
    publish(remote, remote.pin(amd64=digest("b")))
    first = remote.sha(BRANCH)
    remote.commit("main", lambda t: "moved\n", "readme", path="README.md")
    merger = remote.clone("merger")
    git(merger, "checkout", "--quiet", "-B", "bot", f"origin/{BRANCH}")
    git(merger, *BOT_CFG, "merge", "--quiet", "--no-ff", "-m", f"merge main\n\n{gitpr.BOT_TRAILER}", "origin/main")
    git(merger, "push", "--quiet", "origin", f"HEAD:refs/heads/{BRANCH}")
    merge = git(merger, "rev-parse", "HEAD")
    result = publish(remote, remote.pin(arm64=digest("c")))
    tip = remote.sha(BRANCH)
    assert [(e["status"], e["commit"], e["superseded"]) for e in result["processors"]] == [("pushed", tip, [])]
    assert git(remote.path, "rev-parse", f"{tip}^@").splitlines() == [merge]
    assert git(remote.path, "rev-parse", f"{merge}^@").splitlines() == [first, remote.sha("main")]


def test_a_base_branch_no_ref_can_be_named_after_is_reported_missing(remote: Remote) -> None:
    """`a/` is no branch on the remote; the clean-up that follows (deleting private refs, one of them
    with a name git refuses) must not replace that message with its own failure."""
    changes = remote.pin(amd64=digest("b"))
    with pytest.raises(GitError) as info:
        publish_pin_pr(remote.work, changes, base_branch="a/", github=None, reapply=gitpr.pin_reapplier(changes))
    assert info.value.message == "base branch 'a/' does not exist on remote 'origin'."
    assert git(remote.work, "for-each-ref", "refs/theory-deploy") == ""


@pytest.mark.registry
def test_propose_pins_reads_and_pushes_the_given_remote(loopback: dict) -> None:
    """The clone's remote is called upstream (there is no origin): the base pins are read from
    upstream/main and the branch is pushed to upstream."""
    r: Remote = loopback["remote"]
    git(r.work, "remote", "rename", "origin", "upstream")
    registry_file.write_pins(r.work / REG, {"arm64": loopback["arm64"]})
    result = gitpr.propose_pins([_loaded(r)], base="main", remote="upstream", open_pr=False)
    changes = {"arm64": on(None, loopback["arm64"])}
    assert result == {
        "processors": [entry("pushed", commit=r.sha(BRANCH), changes=changes, proposed=changes)],
        "summary": f"{REF}: pushed on {BRANCH}",
        "pr_url": None,
        "pr_urls": [],
    }


@pytest.mark.registry
def test_propose_pins_with_a_github_app_mints_one_installation_token(
    loopback: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the PR as a GitHub App: the bot's commit is made through the API with the installation
    token of the client that opens the PR (and git fetches with it), so exactly one token is minted;
    GitHub signs the commit, authored by the App's bot account."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    r: Remote = loopback["remote"]
    registry_file.write_pins(r.work / REG, {"arm64": loopback["arm64"]})
    with GitHubStandIn(app_id=4242, app_public_key=key.public_key(), installation_id=99, git_remote=r.path) as standin:
        for name, value in {
            "GITHUB_REPOSITORY": "acme/processors",
            "GITHUB_API_URL": standin.url,
            "GITHUB_APP_ID": "4242",
            "GITHUB_APP_PRIVATE_KEY": pem,
            "GITHUB_APP_INSTALLATION_ID": "99",
        }.items():
            monkeypatch.setenv(name, value)
        result = gitpr.propose_pins([_loaded(r)], base="main")
        assert [e["pr"]["result"] for e in result["processors"]] == ["created"]
        assert [(q.method, q.path) for q in standin.requests] == [
            ("POST", "/app/installations/99/access_tokens"),
            ("POST", "/repos/acme/processors/git/blobs"),
            ("POST", "/repos/acme/processors/git/trees"),
            ("POST", "/repos/acme/processors/git/commits"),
            ("GET", "/repos/acme/processors"),
            ("POST", "/graphql"),
            ("GET", "/repos/acme/processors/pulls"),
            ("POST", "/repos/acme/processors/pulls"),
        ]
        [commit] = standin.api_commits
        assert standin.verification(commit)["verified"] is True and r.sha(BRANCH) == commit
        assert git(r.path, "log", "-1", "--format=%ae|%ce", commit) == (
            "4242+theory-deploy-app[bot]@users.noreply.github.com|noreply@github.com"
        )
        assert gitpr.is_bot_commit(r.path, commit)


@pytest.mark.registry
def test_propose_pins_without_a_pr_pushes_with_the_environments_token(
    loopback: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PR (no API client is made), over smart HTTP from a clone that kept no credentials: git
    fetches and pushes with GITHUB_TOKEN, and GitHub's API is never asked."""
    r: Remote = loopback["remote"]
    with GitHubStandIn(tokens={TOKEN}, git_remote=r.path) as standin:
        ci = r.tmp / "ci"
        auth = f"http.{standin.url}/.extraheader={GitHubStandIn.extraheader(TOKEN)}"
        git(r.tmp, "-c", auth, "clone", "--quiet", standin.git_url, str(ci))
        registry_file.write_pins(ci / REG, {"arm64": loopback["arm64"]})
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        standin.clear_requests()
        result = gitpr.propose_pins([registry_file.load_path(ci / REG, ci)], base="main", open_pr=False)
        assert [(e["status"], e["pr"]) for e in result["processors"]] == [("pushed", None)]
        assert [(p["ref"], p["user"]) for p in standin.pushes] == [(f"refs/heads/{BRANCH}", "x-access-token")]
        assert {(q.user, q.status) for q in standin.git_requests} == {("x-access-token", 200)}
        assert standin.requests == []


def test_a_folder_named_like_a_private_ref_lock_is_left_alone(tmp_path: Path) -> None:
    """Only lock files are removed: a folder named `*.lock` in the private namespace (git never makes
    one) is not a lock and stays; the lock file beside it goes."""
    private = tmp_path / "refs" / "theory-deploy" / "remotes" / "origin"
    folder = private / "main.lock"
    folder.mkdir(parents=True)
    (private / "other.lock").write_text("")
    assert gitpr._remove_stale_private_ref_locks(tmp_path) == ["refs/theory-deploy/remotes/origin/other.lock"]
    assert folder.is_dir() and not (private / "other.lock").exists()
