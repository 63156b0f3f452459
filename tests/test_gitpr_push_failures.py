"""The pin bot's push (gitpr.publish_pin_pr) when git refuses it for a reason other than the lease.

A lease rejection (another writer moved the bot branch) is retried on the new tip; every other
refusal must stop the run at once with ERR_GIT and git's own message: a remote hook that declines
the push, a remote that is gone. Real git against a local bare repository standing in for GitHub's
git side (as in tests/test_gitpr.py), no GitHub API (github=None). Also here: the guard that refuses
to push a bot commit touching more than `image.platforms` lines (registry_pins.is_pin_only_change,
used on the way to the push).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# The same git runner and clean environment as the PR tests, and the repository they publish from.
from tests.gitpr_repos import BRANCH, REF, REG, REPO, Remote, digest
from tests.test_gitpr import _clean_env, git  # noqa: F401 (_clean_env: an autouse fixture)
from theory_deploy import gitpr, registry_file
from theory_deploy.errors import GitError, PushConflictError
from theory_deploy.gitpr import PinChange, publish_pin_pr


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def publish(
    remote: Remote,
    changes: list[PinChange],
    pushes: list[int],
    on_push: Callable[[int], object] | None = None,
    reapply: Callable[[Path], list[PinChange]] | None = None,
    **kw: object,
) -> dict:
    """publish_pin_pr without GitHub; each push attempt's number is recorded in `pushes`, then
    `on_push(attempt)` runs (a test's way to act between the fetch and the push)."""

    def before_push(_ref: str, attempt: int) -> None:
        pushes.append(attempt)
        if on_push is not None:
            on_push(attempt)

    return publish_pin_pr(
        remote.work,
        changes,
        base_branch="main",
        github=None,
        reapply=reapply or gitpr.pin_reapplier(changes),
        before_push=before_push,
        **kw,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------------
# A push refused for another reason than the lease: ERR_GIT at once, git's message, no retry
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "declined"),
    [
        ("pre-receive", "pre-receive hook declined"),
        ("update", "hook declined"),
    ],
)
def test_a_push_a_remote_hook_declines_is_err_git_at_once(remote: Remote, hook: str, declined: str) -> None:
    remote.hook(hook, 'echo "policy: pushes to theory-deploy/* are frozen today" >&2\nexit 1\n')
    pushes: list[int] = []
    with pytest.raises(GitError) as info:
        publish(remote, remote.pin(amd64=digest("b")), pushes)
    err = info.value
    assert type(err) is GitError and err.code == "ERR_GIT" and err.exit_code == 40  # not ERR_PUSH_CONFLICT
    assert f"pushing {BRANCH} to origin failed" in err.message
    assert "policy: pushes to theory-deploy/* are frozen today" in err.message  # git's (and the hook's) words
    assert declined in err.message
    assert pushes == [1]  # one push: a refusal that is not the lease is never retried
    assert remote.sha(BRANCH) is None


def test_a_remote_that_is_gone_at_push_time_is_err_git_at_once(remote: Remote) -> None:
    """The remote is reachable for the fetch, then gone for the push (moved away meanwhile)."""
    pushes: list[int] = []
    moved = remote.tmp / "moved.git"
    with pytest.raises(GitError) as info:
        publish(remote, remote.pin(amd64=digest("b")), pushes, on_push=lambda _: shutil.move(remote.path, moved))
    err = info.value
    assert type(err) is GitError and err.code == "ERR_GIT"
    assert f"pushing {BRANCH} to origin failed" in err.message
    assert "does not appear to be a git repository" in err.message or "Could not read" in err.message, err.message
    assert pushes == [1]
    assert git(moved, "rev-parse", "--verify", "--quiet", f"refs/heads/{BRANCH}", check=False) == ""


def test_a_lease_rejection_is_retried_and_the_other_writers_commit_kept(remote: Remote) -> None:
    """The other side of the rule: a push refused because the branch moved (the lease) is retried."""
    first = remote.pin(amd64=digest("b"))
    publish(remote, first, [])
    other_tip = remote.sha(BRANCH)
    other = remote.tmp / "other"
    git(remote.tmp, "clone", "--quiet", str(remote.path), str(other))
    git(other, "checkout", "--quiet", BRANCH)

    pushes: list[int] = []

    def before_push(attempt: int) -> None:
        if attempt == 1:  # another bot job pushes its own pin commit between our fetch and our push
            registry_file.write_pins(other / REG, {"arm64": digest("c")})
            git(other, "add", REG)
            bot = ["-c", f"user.name={gitpr.DEFAULT_BOT_NAME}", "-c", f"user.email={gitpr.DEFAULT_BOT_EMAIL}"]
            git(other, *bot, "commit", "--quiet", "-m", f"pin({REF}): arm64\n\n{gitpr.BOT_TRAILER}")
            git(other, "push", "--quiet", "origin", BRANCH)

    result = publish(remote, remote.pin(amd64=digest("d")), pushes, on_push=before_push)
    [entry] = result["processors"]
    assert pushes == [1, 2] and entry["attempts"] == 2 and entry["status"] == "pushed"
    assert other_tip is not None
    text = git(remote.path, "show", f"{BRANCH}:{REG}")
    assert digest("d") in text and digest("c") in text  # ours re-applied on top of theirs


def test_a_remote_that_keeps_declining_is_never_mistaken_for_a_moving_branch(remote: Remote) -> None:
    """However many attempts are allowed, a hook's refusal ends the run on the first one."""
    remote.hook("pre-receive", "echo 'denied' >&2\nexit 1\n")
    pushes: list[int] = []
    with pytest.raises(GitError) as info:
        publish(remote, remote.pin(amd64=digest("b")), pushes, max_attempts=6)
    assert not isinstance(info.value, PushConflictError)
    assert pushes == [1]


# ---------------------------------------------------------------------------------------------------
# The guard before the push: a bot commit that changes more than pin lines is never pushed
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "also",
    [
        lambda t: t.replace("# one vCPU", "# 1 vCPU"),  # a comment outside the pins
        lambda t: t.replace("memory_gb: 2", "memory_gb: 4"),  # a value outside the pins
        lambda t: t.replace("  platforms:\n", "  platforms:\n    # edited by the bot\n"),  # a line in the block
        lambda t: t + "extra: 1\n",  # a new key
    ],
)
def test_a_bot_commit_touching_more_than_pin_lines_is_refused_before_the_push(remote: Remote, also) -> None:
    pushes: list[int] = []

    def sloppy(root: Path) -> list[PinChange]:
        path = root / REG
        path.write_text(also(path.read_text().replace(digest("a"), digest("b"))))
        return [PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("b"))})]

    with pytest.raises(GitError, match=r"changes more than image\.platforms lines; refusing to push it"):
        publish(remote, [PinChange(REF, REG, REPO, {})], pushes, reapply=sloppy)
    assert pushes == []  # refused before any push
    assert remote.sha(BRANCH) is None


def test_a_bot_commit_of_pin_lines_only_is_pushed(remote: Remote) -> None:
    pushes: list[int] = []

    def exact(root: Path) -> list[PinChange]:
        path = root / REG
        path.write_text(
            path.read_text().replace(digest("a"), digest("e")).replace("arm64: null", f"arm64: {digest('f')}")
        )
        return [PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("e")), "arm64": (None, digest("f"))})]

    result = publish(remote, [PinChange(REF, REG, REPO, {})], pushes, reapply=exact)
    assert pushes == [1] and result["processors"][0]["status"] == "pushed"
    assert gitpr.is_pin_only_change(remote.path, "main", BRANCH)
