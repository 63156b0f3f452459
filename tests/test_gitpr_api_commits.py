"""The pin bot's commits made through GitHub's API, so GitHub signs them: end to end on the stand-in.

Same world as tests/test_gitpr.py (a bare remote served over HTTP by the stand-in, a user's clone),
but the GitHub client holds a bot token (`ghs_`, an installation token: what a GitHub App's token
and a workflow's GITHUB_TOKEN are), so the bot's commits are re-made through the Git database API
and the branch is moved with GraphQL `updateRefs` (a compare-and-swap) instead of `git push`.
Nothing of the product is patched: the only seams are the stand-in's wire and `before_push`.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.github_standin import GitHubStandIn
from tests.github_standin.gitdata import ACTIONS_BOT, GITHUB_COMMITTER
from tests.github_standin.hook import ZERO
from tests.test_gitpr import (
    BRANCH,
    FIXTURE,
    HUMAN,
    REF,
    REG,
    World,
    client,
    digest,
    git,
    publish,
    pygithub_repo,
)
from theory_deploy import gitpr
from theory_deploy.errors import GitError, GitHubError, PushConflictError
from theory_deploy.gitpr import PinChange, is_bot_commit, is_pin_only_change, publish_pin_pr

pytestmark = pytest.mark.slow

BOT_TOKEN = "ghs_" + "B0tT0ken" * 5


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THEORY_BOT_NAME", "THEORY_BOT_EMAIL", "GITHUB_TOKEN", "GH_TOKEN", "THEORY_REPO_ROOT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    w.gh.add_token(BOT_TOKEN)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def gh(world: World) -> GitHubStandIn:
    return world.gh


def bot_publish(world: World, changes: list[PinChange], **kw):
    return publish_pin_pr(
        kw.pop("tree", world.work),
        changes,
        base_branch="main",
        github=client(world.gh, BOT_TOKEN),
        reapply=kw.pop("reapply", gitpr.pin_reapplier(changes)),
        **kw,
    )


def git_writes(gh: GitHubStandIn) -> list[str]:
    """The Git database and GraphQL writes the product sent, in order."""
    return [r.path for r in gh.requests if r.method == "POST" and ("/git/" in r.path or r.path == "/graphql")]


def ref_update_inputs(gh: GitHubStandIn) -> list[dict]:
    return [r.body["variables"]["input"]["refUpdates"][0] for r in gh.requests if r.path == "/graphql"]


# ---------------------------------------------------------------------------------------------------
# Signed commits, no git push
# ---------------------------------------------------------------------------------------------------


def test_first_pin_is_an_api_commit_github_verifies(world: World, gh: GitHubStandIn) -> None:
    result = bot_publish(world, world.pin(world.work, amd64=digest("b"), arm64=digest("c")))
    [entry] = result["processors"]
    sha = entry["commit"]
    assert entry["status"] == "pushed" and entry["attempts"] == 1 and entry["pr"]["result"] == "created"
    assert world.remote_sha(BRANCH) == sha and world.commits_over_main() == [sha]

    # Made through the API, never pushed: the hook saw no push, the branch moved by updateRefs.
    assert gh.pushes == [] and all(r.service == "git-upload-pack" for r in gh.git_requests)
    assert gh.api_commits == [sha]
    assert gh.ref_updates == [{"ref": f"refs/heads/{BRANCH}", "old": ZERO, "new": sha, "via": "graphql"}]
    assert ref_update_inputs(gh) == [
        {"name": f"refs/heads/{BRANCH}", "afterOid": sha, "beforeOid": ZERO, "force": False}
    ]
    # One blob (registry.yaml), one tree, one commit, one ref update.
    assert git_writes(gh) == [
        "/repos/acme/processors/git/blobs",
        "/repos/acme/processors/git/trees",
        "/repos/acme/processors/git/commits",
        "/graphql",
    ]
    commit_request = next(r for r in gh.requests if r.path.endswith("/git/commits"))
    assert set(commit_request.body) == {"message", "tree", "parents"}  # no author/committer: GitHub signs

    # GitHub says Verified, over the wire as a client reads it.
    answer = httpx.get(
        f"{gh.url}/repos/acme/processors/commits/{sha}", headers={"Authorization": f"token {BOT_TOKEN}"}
    ).json()
    assert answer["commit"]["verification"]["verified"] is True
    assert answer["commit"]["verification"]["reason"] == "valid"

    # Author: the token's bot; committer: GitHub. Message and trailer as the git path writes them.
    who = git(world.remote, "log", "-1", "--format=%an|%ae|%cn|%ce", BRANCH)
    assert who == f"{ACTIONS_BOT[0]}|{ACTIONS_BOT[1]}|{GITHUB_COMMITTER[0]}|{GITHUB_COMMITTER[1]}"
    message = git(world.remote, "log", "-1", "--format=%B", BRANCH)
    assert message.splitlines()[0] == f"pin({REF}): amd64, arm64" and message.rstrip().endswith(gitpr.BOT_TRAILER)
    assert is_bot_commit(world.remote, BRANCH) and is_pin_only_change(world.remote, "main", BRANCH)
    assert world.remote_file(BRANCH) == FIXTURE.replace(digest("a"), digest("b")).replace(
        "arm64: null   ", f"arm64: {digest('c')}   "
    )

    # The clone has GitHub's commit (fetched, its tree checked), and no private refs are left.
    assert git(world.work, "cat-file", "-t", sha) == "commit"
    assert git(world.work, "for-each-ref", "refs/theory-deploy") == ""
    [pr] = gh.pulls
    assert pr["head"] == BRANCH and pr["head_sha"] == sha


def test_second_pin_fast_forwards_on_the_api_commit_and_a_rerun_writes_nothing(world: World, gh: GitHubStandIn) -> None:
    first = bot_publish(world, world.pin(world.work, amd64=digest("b")))["processors"][0]["commit"]
    second = world.pin(world.work, arm64=digest("c"))
    result = bot_publish(world, second)
    [entry] = result["processors"]
    assert entry["status"] == "pushed" and entry["pr"]["result"] == "updated"
    assert world.commits_over_main() == [entry["commit"], first]  # the first API commit is the bot's: kept
    assert ref_update_inputs(gh)[-1] == {
        "name": f"refs/heads/{BRANCH}",
        "afterOid": entry["commit"],
        "beforeOid": first,
        "force": False,
    }
    assert all(gh.verification(sha)["verified"] for sha in world.commits_over_main())

    gh.clear_requests()
    again = bot_publish(world, second)
    assert again["processors"][0]["status"] == "unchanged"
    assert git_writes(gh) == [] and gh.ref_updates[-1]["new"] == entry["commit"]


def test_a_pushed_commit_is_never_reported_verified(world: World, gh: GitHubStandIn) -> None:
    """`--github none` keeps git push: its commit is unsigned, and the stand-in says so."""
    result = publish(world, world.pin(world.work, amd64=digest("b")), None)
    sha = result["processors"][0]["commit"]
    assert [p["ref"] for p in gh.pushes] == [f"refs/heads/{BRANCH}"] and gh.api_commits == []
    assert gh.verification(sha) == {
        "verified": False,
        "reason": "unsigned",
        "signature": None,
        "payload": None,
        "verified_at": None,
    }


def test_a_personal_token_keeps_git_push(world: World, gh: GitHubStandIn) -> None:
    """GitHub signs API commits for bots only; a person's token would get unsigned commits authored by
    that person (foreign to the bot check), so the product pushes with git as before."""
    assert client(gh).signs_commits is False and client(gh, BOT_TOKEN).signs_commits is True
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    assert [p["ref"] for p in gh.pushes] == [f"refs/heads/{BRANCH}"] and gh.api_commits == []


# ---------------------------------------------------------------------------------------------------
# The lease, humans, the base
# ---------------------------------------------------------------------------------------------------


def test_a_concurrent_writer_between_read_and_update_loses_us_the_lease_and_we_rebuild(
    world: World, gh: GitHubStandIn
) -> None:
    first = bot_publish(world, world.pin(world.work, amd64=digest("b")))["processors"][0]["commit"]
    other = world.clone("other")
    other_changes = world.pin(other, amd64=digest("d"))
    calls: list[int] = []

    def race(ref: str, attempt: int) -> None:
        # Our commits are made on GitHub; before the ref moves, another job pushes to the branch.
        calls.append(attempt)
        if attempt == 1:
            publish(world, other_changes, None, tree=other)

    gh.clear_requests()
    result = bot_publish(world, world.pin(world.work, arm64=digest("c")), before_push=race)
    [entry] = result["processors"]
    assert calls == [1, 2] and entry["attempts"] == 2 and entry["status"] == "pushed"
    theirs = world.commits_over_main()[1]
    assert world.commits_over_main() == [entry["commit"], theirs, first]  # the other job's commit kept
    final = world.remote_file(BRANCH)
    assert digest("d") in final and digest("c") in final
    # The first update was refused (stale beforeOid) and changed nothing; the second was based on theirs.
    [lost, won] = ref_update_inputs(gh)
    assert lost["beforeOid"] == first and won["beforeOid"] == theirs
    assert [u["new"] for u in gh.ref_updates][-1] == entry["commit"]
    assert len(gh.api_commits) == 3  # the first pin, then one commit per attempt (attempt 1's is orphaned)


def test_a_forced_update_after_a_rebase_is_still_a_compare_and_swap(world: World, gh: GitHubStandIn) -> None:
    """The base moved, so the bot line is rebased and the update is forced, yet it names the tip it
    replaces: a writer landing in between makes it fail, and the retry rebuilds on that writer's tip."""
    bot_publish(world, world.pin(world.work, amd64=digest("b")))
    world.human_push_to_main(FIXTURE.replace("memory_gb: 2", "memory_gb: 5"), "more memory")
    other = world.clone("other")

    def race(ref: str, attempt: int) -> None:
        if attempt == 1:
            publish(world, world.pin(other, amd64=digest("d")), None, tree=other)

    gh.clear_requests()
    result = bot_publish(world, world.pin(world.work, arm64=digest("c")), before_push=race)
    [entry] = result["processors"]
    assert entry["attempts"] == 2 and entry["status"] == "pushed"
    [lost, won] = ref_update_inputs(gh)
    # Forced over our first pin; then, the other writer having rebased the line onto main itself, the
    # retry is a fast-forward on its tip.
    assert lost["force"] is True and won["force"] is False and lost["beforeOid"] != won["beforeOid"]
    final = world.remote_file(BRANCH)
    assert "memory_gb: 5" in final and digest("d") in final and digest("c") in final
    assert git(world.remote, "merge-base", "--is-ancestor", "main", BRANCH, check=False) == ""
    assert gh.verification(entry["commit"])["verified"] is True  # ours; the other job pushed with git
    assert is_pin_only_change(world.remote, "main", BRANCH)


def test_a_human_commit_on_the_bot_branch_is_never_overwritten(world: World, gh: GitHubStandIn) -> None:
    bot_publish(world, world.pin(world.work, amd64=digest("b")))
    human = world.clone("human")
    git(human, "checkout", "--quiet", BRANCH)
    (human / "README.md").write_text("a human fix on the bot branch\n")
    git(human, *HUMAN, "commit", "--quiet", "-am", "fix readme")
    git(human, "push", "--quiet", "origin", BRANCH)
    human_sha = world.remote_sha(BRANCH)
    gh.clear_requests()

    with pytest.raises(PushConflictError) as info:
        bot_publish(world, world.pin(world.work, amd64=digest("d")))
    assert info.value.details["commit"] == human_sha
    assert world.remote_sha(BRANCH) == human_sha
    assert gh.requests == [] and gh.ref_updates[-1]["new"] != human_sha  # nothing made, nothing moved


def test_a_squash_merged_pr_then_a_new_pin_starts_from_the_base(world: World, gh: GitHubStandIn) -> None:
    bot_publish(world, world.pin(world.work, amd64=digest("b")))
    pygithub_repo(gh).get_pull(1).merge(merge_method="squash")
    gh.clear_requests()

    result = bot_publish(world, world.pin(world.work, amd64=digest("b"), arm64=digest("c")))
    [entry] = result["processors"]
    assert entry["status"] == "pushed" and entry["pr"]["result"] == "created"
    # The squashed commit dropped out: one new signed commit on main, replacing the old line (forced,
    # against the old tip).
    assert world.commits_over_main() == [entry["commit"]]
    assert git(world.remote, "rev-parse", f"{entry['commit']}^") == world.remote_sha("main")
    [update] = ref_update_inputs(gh)
    assert update["force"] is True and update["beforeOid"] != ZERO
    assert gh.verification(entry["commit"])["verified"] is True
    assert entry["changes"] == {"arm64": {"old": None, "new": digest("c")}}


def test_the_pin_only_guard_stops_before_anything_reaches_github(world: World, gh: GitHubStandIn) -> None:
    changes = world.pin(world.work, amd64=digest("b"))

    def reapply(root: Path) -> list[PinChange]:
        gitpr.pin_reapplier(changes)(root)
        text = (root / REG).read_text()
        (root / REG).write_text(text.replace("memory_gb: 2", "memory_gb: 64"))
        return changes

    with pytest.raises(GitError, match=r"more than image\.platforms"):
        bot_publish(world, changes, reapply=reapply)
    assert git_writes(gh) == [] and world.remote_sha(BRANCH) is None


def test_a_protected_bot_branch_is_named_as_such(world: World, gh: GitHubStandIn) -> None:
    gh.protect("theory-deploy/pin/*")
    bot_publish_error = None
    bot_publish_error_cause = None
    try:
        bot_publish(world, world.pin(world.work, amd64=digest("b")))
    except GitError as err:
        bot_publish_error, bot_publish_error_cause = err, err.details.get("cause")
    assert bot_publish_error is not None and bot_publish_error_cause == "branch-protection"
    assert BOT_TOKEN not in str(bot_publish_error.message) + str(bot_publish_error.remedy)
    assert world.remote_sha(BRANCH) is None and gh.ref_updates == []


def test_an_update_whose_answer_was_lost_is_not_retried_as_a_conflict(world: World, gh: GitHubStandIn) -> None:
    """GitHub moved the branch but the answer was a 502: the branch is read back, it holds our commit,
    so the run finishes (no second attempt, no second commit)."""

    def lose_the_answer(ref: str, attempt: int) -> None:
        gh.fail_next(502, "Server Error", method="POST", applied=True)

    result = bot_publish(world, world.pin(world.work, amd64=digest("b")), before_push=lose_the_answer)
    [entry] = result["processors"]
    assert entry["attempts"] == 1 and entry["status"] == "pushed" and world.remote_sha(BRANCH) == entry["commit"]
    assert len(gh.api_commits) == 1


def test_a_refused_update_that_moved_nothing_is_a_github_error_without_the_token(
    world: World, gh: GitHubStandIn
) -> None:
    def refuse(ref: str, attempt: int) -> None:
        gh.fail_next(403, "Resource not accessible by integration", method="POST")

    with pytest.raises(GitHubError) as info:
        bot_publish(world, world.pin(world.work, amd64=digest("b")), before_push=refuse)
    assert info.value.details["status"] == 403 and "contents: write" in info.value.remedy
    assert BOT_TOKEN not in info.value.message and world.remote_sha(BRANCH) is None


def test_a_rerun_after_a_crash_between_the_commit_and_the_ref_finishes_the_job(world: World, gh: GitHubStandIn) -> None:
    """A run killed after making its commits on GitHub, before moving the branch (here: the update
    fails on the wire), leaves only unreferenced objects; the re-run makes them again and publishes."""

    def die(ref: str, attempt: int) -> None:
        gh.fail_next(500, "Server Error", method="POST")

    changes = world.pin(world.work, amd64=digest("b"))
    with pytest.raises(GitHubError):
        bot_publish(world, changes, before_push=die)
    assert world.remote_sha(BRANCH) is None and len(gh.api_commits) == 1
    result = bot_publish(world, changes)
    assert result["processors"][0]["status"] == "pushed" and gh.verification(world.remote_sha(BRANCH))["verified"]


def test_api_and_git_runs_take_turns_on_one_branch(world: World, gh: GitHubStandIn) -> None:
    """A CI run (API, signed) then a laptop run (`--github none`, git push, which rebases the signed
    commit onto a moved base: its committer becomes the configured bot) then CI again: each run
    recognises the others' commits as the bot's and builds on them."""
    signed = bot_publish(world, world.pin(world.work, amd64=digest("b")))["processors"][0]["commit"]
    world.human_push_to_main(FIXTURE.replace("memory_gb: 2", "memory_gb: 5"), "more memory")
    laptop = publish(world, world.pin(world.work, arm64=digest("c")), None)["processors"][0]
    assert laptop["status"] == "pushed" and signed not in world.commits_over_main()  # rebased: a new sha
    rebased = world.commits_over_main()[1]
    assert git(world.remote, "log", "-1", "--format=%ae|%ce", rebased) == f"{ACTIONS_BOT[1]}|{gitpr.DEFAULT_BOT_EMAIL}"
    assert is_bot_commit(world.remote, rebased)

    again = bot_publish(world, world.pin(world.work, amd64=digest("d")))["processors"][0]
    assert again["status"] == "pushed" and again["attempts"] == 1
    assert world.commits_over_main()[1:] == [laptop["commit"], rebased]  # both kept, ours on top
    assert gh.verification(again["commit"])["verified"] is True
    final = world.remote_file(BRANCH)
    assert "memory_gb: 5" in final and digest("d") in final and digest("c") in final


def test_content_github_stored_otherwise_is_caught_before_the_branch_moves(world: World, gh: GitHubStandIn) -> None:
    gh.tamper_next_blobs()
    with pytest.raises(GitError, match="differs from the one built here") as info:
        bot_publish(world, world.pin(world.work, amd64=digest("b")))
    assert info.value.details["expected"] != info.value.details["got"]
    assert gh.api_commits == [] and gh.ref_updates == [] and world.remote_sha(BRANCH) is None
