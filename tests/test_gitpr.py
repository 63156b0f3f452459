"""The bot-PR step: real git over smart HTTP and real PyGithub, both against the GitHub stand-in.

Each test builds `remote.git` (a bare repository) holding one processor whose registry.yaml is a
hand-written fixture full of comments, serves it with the GitHub stand-in at
`<url>/acme/processors.git` (authenticated, private, branch protection on request), and clones it
over HTTP into `work`, where `processorctl pin` would have written the pins. The clone keeps the
token the way actions/checkout persists it (`http.<url>/.extraheader: AUTHORIZATION: basic ...`);
the product's git calls authenticate with the GitHub client's token instead when it has one (a clone
without persisted credentials, `persist=False`, proves it), and with the persisted one otherwise
(`github=None`, the other writers of the race tests).
Pins are written with registry_file.write_pins, both in the work tree (the pin step) and, through
`pin_reapplier`, in the bot's temporary worktree.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from github import GithubException

from tests.github_standin import GitHubStandIn
from theory_deploy import gitpr, registry_file
from theory_deploy.errors import GitError, GitHubError, PushConflictError, UsageError
from theory_deploy.gitpr import GitHubClient, PinChange, is_bot_commit, is_pin_only_change, publish_pin_pr

# Every test runs real git against bare remotes and PyGithub against the stand-in server.
pytestmark = pytest.mark.slow

TOKEN = "ghp_" + "T0ken" * 8
REF = "llm/litellm@1"
REG = "processors/llm/litellm/registry.yaml"
REPO = "ghcr.io/acme/llm-litellm"
BRANCH = "theory-deploy/pin/llm-litellm-v1"
BOT_EMAIL = gitpr.DEFAULT_BOT_EMAIL
HUMAN = ["-c", "user.name=Hu Man", "-c", "user.email=human@example.com"]


def digest(ch: str) -> str:
    return f"{REPO}@sha256:{ch * 64}"


FIXTURE = f"""\
# llm/litellm@1: a hand-written fixture whose comments must survive every pin.
ref: llm/litellm@1

build:
  context: .  # build from this folder
  port: 8000

image:
  repository: {REPO}
  platforms:
    # The two lines below are written by the pin bot; everything else by hand.
    amd64: {digest("a")}  # linux/amd64
    arm64: null    # linux/arm64: not built yet

runtime:
  cpu: 1      # one vCPU
  memory_gb: 2

secrets:
  required: [OPENAI_API_KEY]

inputs:
  type: object
"""


def git(cwd: Path, *args: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_EDITOR"] = "true"
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THEORY_BOT_NAME", "THEORY_BOT_EMAIL", "GITHUB_TOKEN", "GH_TOKEN", "THEORY_REPO_ROOT"):
        monkeypatch.delenv(name, raising=False)


class World:
    """The bare remote, served over HTTP by `self.gh` (start()ed here; `close()` stops it)."""

    def __init__(self, tmp: Path, *, private: bool = True) -> None:
        self.tmp = tmp
        self.remote = tmp / "remote.git"
        git(tmp, "init", "--quiet", "--bare", "-b", "main", str(self.remote))
        seed = tmp / "seed"
        git(tmp, "init", "--quiet", "-b", "main", str(seed))
        (seed / REG).parent.mkdir(parents=True)
        (seed / REG).write_text(FIXTURE)
        (seed / "README.md").write_text("processors\n")
        (seed / "app.py").write_text("print('hi')\n")
        git(seed, "add", ".")
        git(seed, *HUMAN, "commit", "--quiet", "-m", "initial")
        git(seed, "remote", "add", "origin", str(self.remote))
        git(seed, "push", "--quiet", "origin", "main")  # the repository's creation, on disk
        self.gh = GitHubStandIn(
            owner="acme", repo="processors", tokens={TOKEN}, git_remote=self.remote, private=private
        ).start()
        self.work = self.clone("work")

    def clone(
        self, name: str, *extra: str, token: str | None = TOKEN, persist: bool = True, user: str = "x-access-token"
    ) -> Path:
        """A clone over HTTP with `token` (as `user`); kept as actions/checkout does (`clone -c` persists
        it), or, with `persist=False`, used for the clone only (`git -c ... clone`: persist-credentials: false)."""
        path = self.tmp / name
        auth = ["-c", f"http.{self.gh.url}/.extraheader={GitHubStandIn.extraheader(token, user)}"] if token else []
        if persist:
            git(self.tmp, "clone", "--quiet", *auth, *extra, self.gh.git_url, str(path))
        else:
            git(self.tmp, *auth, "clone", "--quiet", *extra, self.gh.git_url, str(path))
        return path

    def close(self) -> None:
        self.gh.stop()

    def bot_pushes(self) -> list[str]:
        """The refs the product's pushes tried to update, as the stand-in's pre-receive hook saw them."""
        return [p["ref"] for p in self.gh.pushes]

    def pin(self, tree: Path, **pins: str | None) -> list[PinChange]:
        """What `processorctl pin` does in the user's tree."""
        changed = registry_file.write_pins(tree / REG, pins)  # type: ignore[arg-type]
        return [PinChange(REF, REG, REPO, dict(changed))] if changed else []

    def remote_sha(self, branch: str) -> str | None:
        out = git(self.remote, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        return out or None

    def remote_file(self, rev: str) -> str:
        return git(self.remote, "show", f"{rev}:{REG}") + "\n"

    def commits_over_main(self, branch: str = BRANCH) -> list[str]:
        return git(self.remote, "rev-list", branch, "--not", "main").splitlines()

    def human_push_to_main(self, text: str, message: str = "human change") -> None:
        """A change on main made on disk (the admin's write: no protection applies, no hook log)."""
        clone = self.tmp / f"human-{len(list(self.tmp.iterdir()))}"
        git(self.tmp, "clone", "--quiet", str(self.remote), str(clone))
        (clone / REG).write_text(text)
        git(clone, "add", ".")
        git(clone, *HUMAN, "commit", "--quiet", "-m", message)
        git(clone, "push", "--quiet", "origin", "main")


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def gh(world: World) -> GitHubStandIn:
    return world.gh


def client(gh: GitHubStandIn, token: str = TOKEN) -> GitHubClient:
    return GitHubClient(
        "acme/processors",
        token=token,
        base_url=gh.url,
        retries=0,
        seconds_between_requests=0,
        seconds_between_writes=0,
    )


def pygithub_repo(gh: GitHubStandIn):
    """PyGithub, for what a human does on GitHub (merge, close) in these tests."""
    from github import Auth, Github

    g = Github(base_url=gh.url, auth=Auth.Token(TOKEN), seconds_between_requests=0, seconds_between_writes=0)
    return g.get_repo("acme/processors")


def publish(world: World, changes: list[PinChange], gh: GitHubStandIn | None, tree: Path | None = None, **kw):
    return publish_pin_pr(
        tree or world.work,
        changes,
        base_branch="main",
        github=client(gh) if gh is not None else None,
        reapply=gitpr.pin_reapplier(changes),
        **kw,
    )


def writes(gh: GitHubStandIn) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in gh.requests if r.method != "GET"]


def changed_lines(repo: Path, rev: str) -> list[str]:
    diff = git(repo, "show", "--format=", "-U0", rev)
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


# ---------------------------------------------------------------------------------------------------
# The happy path and idempotence
# ---------------------------------------------------------------------------------------------------


def test_first_pin_creates_branch_commit_and_pr(world: World, gh: GitHubStandIn) -> None:
    changes = world.pin(world.work, amd64=digest("b"), arm64=digest("c"))
    result = publish(world, changes, gh)

    [entry] = result["processors"]
    assert entry["status"] == "pushed" and entry["branch"] == BRANCH and entry["attempts"] == 1
    assert entry["pr"]["result"] == "created"
    assert entry["commit"] == world.remote_sha(BRANCH)
    assert world.commits_over_main() == [entry["commit"]]
    # Over smart HTTP with the clone's persisted token: one push, of the bot branch only.
    assert world.bot_pushes() == [f"refs/heads/{BRANCH}"]
    assert {(r.service, r.user, r.status) for r in gh.git_requests} == {
        ("git-upload-pack", "x-access-token", 200),
        ("git-receive-pack", "x-access-token", 200),
    }

    # The commit: the bot's identity, the trailer, and a message listing each image.
    fmt = git(world.remote, "log", "-1", "--format=%an|%ae|%cn|%ce", BRANCH)
    assert fmt == f"theory-deploy[bot]|{BOT_EMAIL}|theory-deploy[bot]|{BOT_EMAIL}"
    message = git(world.remote, "log", "-1", "--format=%B", BRANCH)
    assert message.splitlines()[0] == f"pin({REF}): amd64, arm64"
    assert f"amd64: {digest('a')} → sha256:{'b' * 64}" in message
    assert f"arm64: (unpinned) → {digest('c')}" in message
    assert message.rstrip().endswith(gitpr.BOT_TRAILER)

    # Only the two digest lines moved; every comment survived.
    lines = changed_lines(world.remote, BRANCH)
    assert len(lines) == 4
    assert all("amd64:" in line or "arm64:" in line for line in lines)
    assert world.remote_file(BRANCH) == FIXTURE.replace(digest("a"), digest("b")).replace(
        "arm64: null   ", f"arm64: {digest('c')}   "
    )
    assert is_pin_only_change(world.remote, "main", BRANCH)
    assert is_bot_commit(world.remote, BRANCH)

    # One PR, its table and verify note; the calls PyGithub made.
    [pr] = gh.pulls
    assert pr["head"] == BRANCH and pr["base"] == "main" and pr["state"] == "open"
    assert pr["title"] == f"pin({REF}): amd64, arm64"
    assert "| processor | platform | old digest → new digest | repository |" in pr["body"]
    assert f"| `{REF}` | amd64 | `sha256:{'a' * 64}` → `sha256:{'b' * 64}` | `{REPO}` |" in pr["body"]
    assert f"| `{REF}` | arm64 | (unpinned) → `sha256:{'c' * 64}` | `{REPO}` |" in pr["body"]
    assert f"skopeo inspect --raw docker://{digest('b')}" in pr["body"]
    assert [(r.method, r.path) for r in gh.requests] == [
        ("GET", "/repos/acme/processors"),
        ("GET", "/repos/acme/processors/pulls"),
        ("POST", "/repos/acme/processors/pulls"),
    ]
    assert gh.requests[1].query == {"state": "open", "head": f"acme:{BRANCH}"}
    assert all(r.authorization == f"token {TOKEN}" for r in gh.requests)
    assert entry["pr"]["url"].endswith("/pull/1")


def test_second_pin_updates_the_same_pr(world: World, gh: GitHubStandIn) -> None:
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    first = world.remote_sha(BRANCH)

    result = publish(world, world.pin(world.work, amd64=digest("d"), arm64=digest("e")), gh)
    [entry] = result["processors"]
    assert entry["status"] == "pushed" and entry["pr"]["result"] == "updated"
    # Built on the bot branch: both bot commits are there, fast-forward from the first.
    assert world.commits_over_main() == [entry["commit"], first]
    assert git(world.remote, "rev-parse", f"{entry['commit']}^") == first
    assert entry["changes"] == {
        "amd64": {"old": digest("b"), "new": digest("d")},
        "arm64": {"old": None, "new": digest("e")},
    }
    assert len(gh.pulls) == 1
    [pr] = gh.pulls
    # The PR shows base → latest, not the intermediate digest.
    assert f"`sha256:{'a' * 64}` → `sha256:{'d' * 64}`" in pr["body"]
    assert "b" * 64 not in pr["body"]
    assert pr["title"] == f"pin({REF}): amd64, arm64"
    assert writes(gh) == [
        ("POST", "/repos/acme/processors/pulls"),
        ("PATCH", "/repos/acme/processors/pulls/1"),
    ]


def test_rerun_without_change_writes_nothing(world: World, gh: GitHubStandIn) -> None:
    changes = world.pin(world.work, amd64=digest("b"))
    publish(world, changes, gh)
    sha = world.remote_sha(BRANCH)
    gh.clear_requests()

    # The same pins again (a re-run of the job): no commit, no push, only the PR lookup.
    result = publish(world, changes, gh)
    [entry] = result["processors"]
    assert entry["status"] == "unchanged" and entry["commit"] is None
    assert entry["pr"]["result"] == "unchanged"
    assert world.remote_sha(BRANCH) == sha
    assert writes(gh) == []
    assert [r.path for r in gh.requests] == ["/repos/acme/processors", "/repos/acme/processors/pulls"]


def test_pins_already_on_base_means_no_branch_and_no_pr(world: World, gh: GitHubStandIn) -> None:
    # The user's tree pins amd64 to what main already has: nothing to propose.
    changes = [PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("a"))})]
    result = publish(world, changes, gh)
    assert result["processors"][0]["status"] == "unchanged"
    assert result["processors"][0]["pr"] is None
    assert world.remote_sha(BRANCH) is None
    assert gh.requests == []


def test_github_none_pushes_without_pr(world: World) -> None:
    result = publish(world, world.pin(world.work, amd64=digest("b")), None)
    assert result["processors"][0]["status"] == "pushed" and result["processors"][0]["pr"] is None
    assert world.remote_sha(BRANCH) is not None


def test_bot_identity_from_env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THEORY_BOT_NAME", "pin-app[bot]")
    monkeypatch.setenv("THEORY_BOT_EMAIL", "123+pin-app[bot]@users.noreply.github.com")
    publish(world, world.pin(world.work, amd64=digest("b")), None)
    out = git(world.remote, "log", "-1", "--format=%an|%ae|%ce", BRANCH)
    assert out == "pin-app[bot]|123+pin-app[bot]@users.noreply.github.com|123+pin-app[bot]@users.noreply.github.com"


# ---------------------------------------------------------------------------------------------------
# The user's work tree
# ---------------------------------------------------------------------------------------------------


def test_dirty_work_tree_is_left_alone(world: World, gh: GitHubStandIn) -> None:
    work = world.work
    (work / "app.py").write_text("print('work in progress')\n")  # modified, unstaged
    (work / "README.md").write_text("staged edit\n")
    git(work, "add", "README.md")  # staged
    (work / "notes.txt").write_text("untracked\n")  # untracked
    # The pin step wrote the pin; the user also has an unrelated local edit in the same file.
    changes = world.pin(work, amd64=digest("b"))
    text = (work / REG).read_text().replace("# one vCPU", "# one vCPU (local note, not for the bot)")
    (work / REG).write_text(text)

    head, status = git(work, "rev-parse", "HEAD"), git(work, "status", "--porcelain")
    index = git(work, "diff", "--cached")
    publish(world, changes, gh)

    assert git(work, "rev-parse", "HEAD") == head
    assert git(work, "status", "--porcelain") == status
    assert git(work, "diff", "--cached") == index
    assert (work / REG).read_text() == text
    assert git(work, "stash", "list") == ""
    assert len(git(work, "worktree", "list").splitlines()) == 1
    assert git(work, "for-each-ref", "refs/theory-deploy") == ""  # no private refs left behind
    # Only the pin reached the bot commit: not the local note, not app.py, README.md or notes.txt.
    assert git(world.remote, "show", "--name-only", "--format=", BRANCH) == REG
    assert "local note" not in world.remote_file(BRANCH)
    assert all("amd64:" in line for line in changed_lines(world.remote, BRANCH))


def test_detached_head_in_a_shallow_clone(world: World, gh: GitHubStandIn) -> None:
    """actions/checkout: depth 1, detached HEAD, base moved on since the bot branch was made."""
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    for n in range(3):
        world.human_push_to_main(FIXTURE.replace("memory_gb: 2", f"memory_gb: {n + 3}"), f"tune {n}")
    ci = world.clone("ci", "--depth", "1", "--no-local")
    git(ci, "checkout", "--quiet", "--detach", "HEAD")
    assert git(ci, "rev-parse", "--is-shallow-repository") == "true"

    result = publish(world, world.pin(ci, arm64=digest("c")), gh, tree=ci)
    [entry] = result["processors"]
    assert entry["status"] == "pushed" and entry["pr"]["result"] == "updated"
    # The earlier bot commit was rebased onto the new main; ours sits on top; memory_gb from main kept.
    assert len(world.commits_over_main()) == 2
    assert git(world.remote, "merge-base", "--is-ancestor", "main", BRANCH, check=False) == ""
    final = world.remote_file(BRANCH)
    assert "memory_gb: 5" in final and digest("b") in final and digest("c") in final
    assert is_pin_only_change(world.remote, "main", BRANCH)


# ---------------------------------------------------------------------------------------------------
# Concurrent writers and humans on the bot branch
# ---------------------------------------------------------------------------------------------------


def test_concurrent_bot_push_is_kept_and_ours_reapplied(world: World, gh: GitHubStandIn) -> None:
    """Two pin jobs for one processor (amd64 and arm64 legs of a matrix) race on the bot branch.

    The other job pushes between our fetch and our push; our lease is rejected, we fetch again and
    re-apply on top of its commit. Both commits are kept: its amd64 pin and our arm64 pin.
    """
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    other = world.clone("other")
    other_changes = world.pin(other, amd64=digest("d"))
    calls: list[int] = []

    def race(ref: str, attempt: int) -> None:
        calls.append(attempt)
        if attempt == 1:
            publish(world, other_changes, None, tree=other)

    result = publish(world, world.pin(world.work, arm64=digest("c")), gh, before_push=race)
    [entry] = result["processors"]
    assert calls == [1, 2] and entry["attempts"] == 2 and entry["status"] == "pushed"
    commits = world.commits_over_main()
    assert len(commits) == 3  # first pin, the other job's amd64 pin, our arm64 pin
    assert git(world.remote, "log", "-1", "--format=%s", commits[1]) == f"pin({REF}): amd64"
    assert git(world.remote, "log", "-1", "--format=%s", commits[0]) == f"pin({REF}): arm64"
    final = world.remote_file(BRANCH)
    assert digest("d") in final and digest("c") in final
    assert len(gh.pulls) == 1
    assert f"`sha256:{'a' * 64}` → `sha256:{'d' * 64}`" in gh.pulls[0]["body"]


def test_same_platform_race_last_writer_wins_history_kept(world: World, gh: GitHubStandIn) -> None:
    other = world.clone("other")
    other_changes = world.pin(other, amd64=digest("d"))

    def race(ref: str, attempt: int) -> None:
        if attempt == 1:
            publish(world, other_changes, None, tree=other)

    publish(world, world.pin(world.work, amd64=digest("b")), gh, before_push=race)
    commits = world.commits_over_main()
    assert len(commits) == 2  # the other job's commit is kept in history, ours supersedes its digest
    message = git(world.remote, "log", "-1", "--format=%B", BRANCH)
    assert f"amd64: {digest('d')} → sha256:{'b' * 64}" in message
    assert digest("b") in world.remote_file(BRANCH)


def test_branch_that_keeps_moving_gives_push_conflict(world: World, gh: GitHubStandIn) -> None:
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    other = world.clone("other")
    letters = iter("def")

    def race(ref: str, attempt: int) -> None:
        publish(world, world.pin(other, amd64=digest(next(letters))), None, tree=other)

    with pytest.raises(PushConflictError) as info:
        publish(world, world.pin(world.work, arm64=digest("c")), gh, before_push=race, max_attempts=2)
    assert "kept moving" in info.value.message and "2 attempts" in info.value.message
    assert digest("c") not in world.remote_file(BRANCH)
    assert digest("e") in world.remote_file(BRANCH)  # the other writer's last pin stands


def test_human_commit_on_bot_branch_is_never_overwritten(world: World, gh: GitHubStandIn) -> None:
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    human = world.clone("human")
    git(human, "checkout", "--quiet", BRANCH)
    (human / "README.md").write_text("a human fix on the bot branch\n")
    git(human, *HUMAN, "commit", "--quiet", "-am", "fix readme")
    git(human, "push", "--quiet", "origin", BRANCH)
    human_sha = world.remote_sha(BRANCH)
    assert human_sha is not None and not is_bot_commit(world.remote, human_sha)
    gh.clear_requests()

    with pytest.raises(PushConflictError) as info:
        publish(world, world.pin(world.work, amd64=digest("d")), gh)
    assert human_sha[:12] in info.value.message and "human@example.com" in info.value.message
    assert info.value.details["commit"] == human_sha
    assert world.remote_sha(BRANCH) == human_sha
    assert gh.requests == []


def test_human_commit_with_pins_already_there_is_unchanged_not_an_error(world: World, gh: GitHubStandIn) -> None:
    changes = world.pin(world.work, amd64=digest("b"))
    publish(world, changes, gh)
    human = world.clone("human")
    git(human, "checkout", "--quiet", BRANCH)
    (human / "README.md").write_text("a human fix on the bot branch\n")
    git(human, *HUMAN, "commit", "--quiet", "-am", "fix readme")
    git(human, "push", "--quiet", "origin", BRANCH)
    human_sha = world.remote_sha(BRANCH)
    gh.clear_requests()
    # Nothing to write: nothing is overwritten, so a re-run of the same pin is not a failure.
    result = publish(world, changes, gh)
    assert result["processors"][0]["status"] == "unchanged"
    assert world.remote_sha(BRANCH) == human_sha and writes(gh) == []


def test_commit_by_bot_identity_without_trailer_counts_as_foreign(world: World, gh: GitHubStandIn) -> None:
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    human = world.clone("human")
    git(human, "checkout", "--quiet", BRANCH)
    (human / "README.md").write_text("edited\n")
    bot = ["-c", "user.name=theory-deploy[bot]", "-c", f"user.email={BOT_EMAIL}"]
    git(human, *bot, "commit", "--quiet", "-am", "looks like the bot, has no trailer")
    git(human, "push", "--quiet", "origin", BRANCH)
    with pytest.raises(PushConflictError):
        publish(world, world.pin(world.work, amd64=digest("d")), gh)


# ---------------------------------------------------------------------------------------------------
# The base moves on
# ---------------------------------------------------------------------------------------------------


def test_squash_merged_pr_then_new_pin_starts_from_base(world: World, gh: GitHubStandIn) -> None:
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    # The PR is squash-merged on GitHub: main gets the same change as a new commit; the PR is closed.
    status = pygithub_repo(gh).get_pull(1).merge(merge_method="squash")
    assert status.merged and git(world.remote, "log", "-1", "--format=%s", "main") == f"pin({REF}): amd64 (#1)"

    result = publish(world, world.pin(world.work, arm64=digest("c")), gh)
    [entry] = result["processors"]
    assert entry["status"] == "pushed" and entry["pr"]["result"] == "created"
    assert world.commits_over_main() == [entry["commit"]]  # the merged bot commit dropped out
    assert changed_lines(world.remote, BRANCH)[0].startswith("-    arm64")
    assert [p["state"] for p in gh.pulls] == ["closed", "open"]


def test_base_changed_the_same_pin_line_supersedes_stale_bot_commit(world: World, gh: GitHubStandIn) -> None:
    publish(world, world.pin(world.work, amd64=digest("b")), gh)
    stale = world.remote_sha(BRANCH)
    world.human_push_to_main(FIXTURE.replace(digest("a"), digest("f")), "hand pin amd64")

    result = publish(world, world.pin(world.work, arm64=digest("c")), gh)
    [entry] = result["processors"]
    assert entry["superseded"] == [stale]
    assert world.commits_over_main() == [entry["commit"]]
    final = world.remote_file(BRANCH)
    assert digest("f") in final and digest("c") in final and digest("b") not in final
    [pr] = gh.pulls
    assert "amd64" not in pr["title"] and f"`sha256:{'f' * 64}`" not in pr["body"]


def test_one_branch_and_pr_per_processor(world: World, gh: GitHubStandIn) -> None:
    other_reg = "processors/img/resize/registry.yaml"
    other_repo = "ghcr.io/acme/img-resize"
    text = FIXTURE.replace("llm/litellm@1", "img/resize@2").replace(REPO, other_repo)
    seed = world.clone("seed2")
    (seed / other_reg).parent.mkdir(parents=True)
    (seed / other_reg).write_text(text)
    git(seed, "add", ".")
    git(seed, *HUMAN, "commit", "--quiet", "-m", "add img/resize")
    git(seed, "push", "--quiet", "origin", "main")
    git(world.work, "pull", "--quiet", "--ff-only")

    new = f"{other_repo}@sha256:{'e' * 64}"
    changed = registry_file.write_pins(world.work / other_reg, {"arm64": new})
    changes = [
        *world.pin(world.work, amd64=digest("b")),
        PinChange("img/resize@2", other_reg, other_repo, dict(changed)),
    ]
    result = publish(world, changes, gh)
    branches = [e["branch"] for e in result["processors"]]
    assert branches == [BRANCH, "theory-deploy/pin/img-resize-v2"]
    assert sorted((p["head"], p["title"]) for p in gh.pulls) == [
        ("theory-deploy/pin/img-resize-v2", "pin(img/resize@2): arm64"),
        (BRANCH, f"pin({REF}): amd64"),
    ]
    assert git(world.remote, "show", "--name-only", "--format=", "theory-deploy/pin/img-resize-v2") == other_reg
    assert git(world.remote, "show", "--name-only", "--format=", BRANCH) == REG
    assert "img/resize@2: pushed" in result["summary"]


def test_processor_missing_on_base(world: World) -> None:
    from theory_deploy.errors import ProcessorNotFoundError

    change = PinChange("img/resize@1", "processors/img/resize/registry.yaml", REPO, {"amd64": (None, digest("b"))})
    with pytest.raises(ProcessorNotFoundError):
        publish_pin_pr(world.work, [change], base_branch="main", github=None, reapply=lambda root: [])


# ---------------------------------------------------------------------------------------------------
# Loops: the bot commit is recognisably pin-only
# ---------------------------------------------------------------------------------------------------


def test_reapply_that_touches_more_than_pins_is_refused(world: World) -> None:
    def sloppy(root: Path) -> list[PinChange]:
        path = root / REG
        path.write_text(path.read_text().replace(digest("a"), digest("b")).replace("# one vCPU", "# 1 vCPU"))
        return [PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("b"))})]

    with pytest.raises(GitError, match=r"more than image\.platforms"):
        publish_pin_pr(world.work, [PinChange(REF, REG, REPO, {})], base_branch="main", github=None, reapply=sloppy)
    assert world.remote_sha(BRANCH) is None


def test_text_replace_reapply_works_too(world: World) -> None:
    """Any reapply that edits pin lines works; here a plain text replace instead of write_pins."""

    def replace(root: Path) -> list[PinChange]:
        path = root / REG
        path.write_text(path.read_text().replace(digest("a"), digest("9")))
        return [PinChange(REF, REG, REPO, {"amd64": (digest("a"), digest("9"))})]

    publish_pin_pr(world.work, [PinChange(REF, REG, REPO, {})], base_branch="main", github=None, reapply=replace)
    assert is_pin_only_change(world.remote, "main", BRANCH)
    assert digest("9") in world.remote_file(BRANCH)


def _commit_text(repo: Path, text: str, path: str = REG) -> str:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, *HUMAN, "commit", "--quiet", "--allow-empty", "-m", "change")
    return git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace(digest("a"), digest("b")), True),
        (lambda t: t.replace("arm64: null", f"arm64: {digest('c')}"), True),
        (lambda t: t.replace(digest("a"), digest("b")).replace("arm64: null", "arm64: 'x'"), True),
        (
            lambda t: t.replace("    arm64: null    # linux/arm64: not built yet\n", ""),
            True,
        ),  # platform dropped
        (lambda t: t, True),  # empty diff: nothing to build
        (lambda t: t.replace("# one vCPU", "# 1 vCPU"), False),  # comment outside the pins
        (
            lambda t: t.replace("# The two lines below", "# The lines below"),
            False,
        ),  # comment inside platforms
        (lambda t: t.replace("memory_gb: 2", "memory_gb: 4"), False),
        (lambda t: t.replace(digest("a"), digest("b")).replace("port: 8000", "port: 9000"), False),
        (lambda t: t.replace(f"repository: {REPO}", "repository: ghcr.io/acme/other"), False),
        (lambda t: t.replace("  platforms:\n", "  platforms:\n    riscv: {nested: 1}\n"), False),
        (lambda t: t + "extra: [", False),  # no longer YAML
    ],
)
def test_is_pin_only_change_lines(world: World, edit, expected: bool) -> None:
    base = git(world.work, "rev-parse", "HEAD")
    head = _commit_text(world.work, edit(FIXTURE))
    assert is_pin_only_change(world.work, base, head) is expected


def test_is_pin_only_change_files(world: World) -> None:
    work = world.work
    base = git(work, "rev-parse", "HEAD")
    (work / "app.py").write_text("changed\n")
    head = _commit_text(work, FIXTURE.replace(digest("a"), digest("b")))
    assert not is_pin_only_change(work, base, head)  # another file changed too
    base2 = head
    head2 = _commit_text(work, FIXTURE, "processors/img/resize/registry.yaml")
    assert not is_pin_only_change(work, base2, head2)  # a new registry.yaml is not a pin
    assert not is_pin_only_change(work, "0" * 40, head2)  # a new branch (before = zeros)
    with pytest.raises(GitError, match="not a commit") as info:
        is_pin_only_change(work, "1" * 40, head2)
    assert "fetch-depth" in info.value.remedy


def test_rerun_is_loop_free(world: World, gh: GitHubStandIn) -> None:
    """What a workflow re-triggered by the bot's own push would do: the change is pin-only and a
    bot commit (so the plan step skips build+pin), and even a re-pin of the same digests writes nothing."""
    changes = world.pin(world.work, amd64=digest("b"))
    publish(world, changes, gh)
    assert is_pin_only_change(world.remote, "main", BRANCH) and is_bot_commit(world.remote, BRANCH)
    before = (world.remote_sha(BRANCH), len(gh.pulls))
    gh.clear_requests()
    for _ in range(3):
        publish(world, changes, gh)
    assert (world.remote_sha(BRANCH), len(gh.pulls)) == before
    assert writes(gh) == []


# ---------------------------------------------------------------------------------------------------
# Branch protection and authentication on the git side
# ---------------------------------------------------------------------------------------------------


def test_protected_base_is_never_pushed_to_only_reached_through_the_pr(world: World, gh: GitHubStandIn) -> None:
    gh.protect("main", required_approving_review_count=1)
    main = world.remote_sha("main")
    changes = world.pin(world.work, amd64=digest("b"))
    result = publish(world, changes, gh)
    assert result["processors"][0]["pr"]["result"] == "created"
    assert world.bot_pushes() == [f"refs/heads/{BRANCH}"]  # never main, not even an attempt
    assert world.remote_sha("main") == main

    # main moves only by the PR's merge: blocked until reviewed.
    pr = pygithub_repo(gh).get_pull(1)
    assert (pr.mergeable, pr.mergeable_state) == (True, "blocked")
    with pytest.raises(GithubException) as info:
        pr.merge()
    assert info.value.status == 405 and "approving review" in info.value.data["message"]
    gh.approve(1)
    assert pr.merge().merged
    assert digest("b") in world.remote_file("main")

    # The same pins again: they are on main now, so nothing is pushed and no PR is touched.
    gh.clear_requests()
    again = publish(world, changes, gh)
    assert again["processors"][0]["status"] == "unchanged" and again["processors"][0]["pr"] is None
    assert world.bot_pushes() == [] and gh.requests == []


def test_base_branch_equal_to_the_bot_branch_is_refused_before_any_git_traffic(world: World, gh: GitHubStandIn) -> None:
    changes = world.pin(world.work, amd64=digest("b"))
    gh.clear_requests()  # the work clone's fetch
    with pytest.raises(UsageError) as info:
        publish_pin_pr(world.work, changes, base_branch=BRANCH, github=client(gh), reapply=gitpr.pin_reapplier(changes))
    assert info.value.code == "ERR_USAGE" and "cannot be the bot branch" in info.value.message
    assert gh.git_requests == [] and gh.requests == [] and world.bot_pushes() == []


def test_push_refused_by_branch_protection_is_a_git_error(world: World, gh: GitHubStandIn) -> None:
    """Someone protected the bot's branches too: GitHub refuses the push (GH006) and no PR is made."""
    gh.protect("theory-deploy/pin/*")
    main = world.remote_sha("main")
    with pytest.raises(GitError) as info:
        publish(world, world.pin(world.work, amd64=digest("b")), gh)
    err = info.value
    assert err.code == "ERR_GIT" and err.to_json()["error"]["code"] == "ERR_GIT"
    assert f"remote: error: GH006: Protected branch update failed for refs/heads/{BRANCH}." in err.message
    assert "Changes must be made through a pull request." in err.message
    assert TOKEN not in err.render() and "T0ken" not in err.render()
    # Its own explanation: which branch, that a protection rule or ruleset covers the bot's branches, and
    # how to take them out of it; not the generic "contents: write" of a token without push rights.
    assert f"a branch protection rule or ruleset covers {BRANCH}" in err.message
    assert "theory-deploy/pin/*" in err.remedy and "bypass list" in err.remedy and "ruleset" in err.remedy
    assert "contents: write" not in err.render()
    assert err.details == {"branch": BRANCH, "remote": "origin", "cause": "branch-protection"}
    assert [(p["ref"], p["refused"]) for p in gh.pushes] == [
        (f"refs/heads/{BRANCH}", "Changes must be made through a pull request.")
    ]
    assert world.remote_sha(BRANCH) is None and world.remote_sha("main") == main
    assert gh.requests == []  # no PR for a branch that is not there


def _config_text(repo: Path) -> str:
    """Every git config file of the clone (its own and its worktrees'): where a persisted token would be."""
    return "".join(p.read_text() for p in (repo / ".git").rglob("config*") if p.is_file())


def test_push_authenticates_with_the_api_token_without_persisted_credentials(world: World, gh: GitHubStandIn) -> None:
    """actions/checkout with `persist-credentials: false` on a private repository: the clone keeps no
    credentials, and the product fetches and pushes with the token its GitHub client uses."""
    ci = world.clone("ci", persist=False)
    assert "extraheader" not in _config_text(ci)
    gh.clear_requests()

    result = publish(world, world.pin(ci, amd64=digest("b")), gh, tree=ci)
    [entry] = result["processors"]
    assert entry["status"] == "pushed" and entry["pr"]["result"] == "created"
    assert entry["commit"] == world.remote_sha(BRANCH)
    assert [(p["ref"], p["user"], p["refused"]) for p in gh.pushes] == [
        (f"refs/heads/{BRANCH}", "x-access-token", None)
    ]
    assert {(r.service, r.user, r.status) for r in gh.git_requests} == {
        ("git-upload-pack", "x-access-token", 200),
        ("git-receive-pack", "x-access-token", 200),
    }
    # Nothing was persisted on the way: the clone is as credential-free as before.
    assert "extraheader" not in _config_text(ci) and TOKEN not in _config_text(ci)


def test_the_clients_token_wins_over_a_persisted_one(world: World, gh: GitHubStandIn) -> None:
    """actions/checkout persisted the workflow's GITHUB_TOKEN (here: another valid token, sent as user
    `github-actions`); the pin step was given another token (e.g. a GitHub App's): git pushes with
    that one alone, so the push is the App's (and triggers the PR's checks)."""
    checkout_token = "ghs_" + "Ch3ck0ut" * 5
    gh.add_token(checkout_token)
    ci = world.clone("ci", token=checkout_token, user="github-actions")
    gh.clear_requests()

    publish(world, world.pin(ci, amd64=digest("b")), gh, tree=ci)
    assert [p["user"] for p in gh.pushes] == ["x-access-token"]
    assert {r.user for r in gh.git_requests} == {"x-access-token"}  # the persisted header was not sent first

    # Without a client (and no git_token) git uses what was persisted: the stand-in tells them apart.
    gh.clear_requests()
    publish(world, world.pin(ci, arm64=digest("c")), None, tree=ci)
    assert [p["user"] for p in gh.pushes] == ["github-actions"]


def test_push_without_any_credentials_says_how_to_give_a_token(tmp_path: Path) -> None:
    """No persisted credentials and no token given (github=None): on a public repository the fetch
    needs none, the push is refused with 401 and git cannot ask for a user name."""
    world = World(tmp_path, private=False)
    try:
        ci = world.clone("ci", token=None)
        with pytest.raises(GitError) as info:
            publish(world, world.pin(ci, amd64=digest("b")), None, tree=ci)
        err = info.value
        assert err.code == "ERR_GIT" and f"pushing {BRANCH} to origin failed" in err.message
        assert "could not read Username" in err.message and "no credentials" in err.message
        assert "github-token" in err.remedy and "GITHUB_TOKEN" in err.remedy
        assert "persist-credentials" in err.remedy and "contents: write" not in err.remedy
        assert err.details["cause"] == "no-credentials"
        receive = [r for r in world.gh.git_requests if r.service == "git-receive-pack"]
        assert receive and all((r.user, r.status) == (None, 401) for r in receive)
        assert world.remote_sha(BRANCH) is None and world.gh.requests == []
    finally:
        world.close()


def test_a_token_github_refuses_for_git_is_named_as_such(world: World, gh: GitHubStandIn) -> None:
    """The client's token is unknown to GitHub: git is refused at its first request (the persisted,
    valid credential is not used instead) and the error says the token was refused, not "no access"."""
    wrong = "ghp_" + "Wr0ng" * 8
    gh.clear_requests()
    with pytest.raises(GitError) as info:
        publish(world, world.pin(world.work, amd64=digest("b")), None, git_token=wrong)
    err = info.value
    assert err.code == "ERR_GIT" and err.details["cause"] == "bad-credentials"
    assert "refused the token" in err.message and "invalid or expired" in err.remedy
    assert wrong not in err.render() + repr(err.to_json()) and "Wr0ng" not in err.render()
    assert [(r.user, r.status) for r in gh.git_requests][:1] == [(None, 401)]
    assert gh.pushes == [] and world.remote_sha(BRANCH) is None


@pytest.fixture
def git_argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` first on PATH that logs each command line the product runs, then runs the real git."""
    import shutil

    real = shutil.which("git")
    assert real is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "git-argv.log"
    wrapper = bindir / "git"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_the_token_never_shows_in_argv_config_output_or_errors(
    world: World, gh: GitHubStandIn, git_argv_log: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A canary token (not shaped like a GitHub token, so only the product's own masking can hide it),
    on success and on failure: never in git's command lines, a config file, printed output, the
    error's message, remedy, details or JSON, nor in base64 as the Authorization header."""
    import base64
    import json

    canary = "canary-" + os.urandom(12).hex()
    forms = (canary, base64.b64encode(f"x-access-token:{canary}".encode()).decode())
    gh.add_token(canary)
    ci = world.clone("ci", persist=False)

    def assert_clean(*texts: str) -> None:
        captured = capfd.readouterr()
        for text in (*texts, captured.out, captured.err, git_argv_log.read_text(), _config_text(ci)):
            for form in forms:
                assert form not in text

    changes = world.pin(ci, amd64=digest("b"))
    result = publish_pin_pr(
        ci, changes, base_branch="main", github=client(gh, token=canary), reapply=gitpr.pin_reapplier(changes)
    )
    assert [p["user"] for p in gh.pushes] == ["x-access-token"]  # the canary did authenticate the push
    assert " push " in git_argv_log.read_text()  # and the log did see the product's git calls
    assert_clean(json.dumps(result))

    gh.protect("theory-deploy/pin/*")  # the next push is refused: the failure path
    with pytest.raises(GitError) as info:
        publish(world, world.pin(ci, arm64=digest("c")), None, tree=ci, git_token=canary)
    err = info.value
    assert err.details["cause"] == "branch-protection"
    assert_clean(err.render(), repr(err), json.dumps(err.to_json()), str(err.details))

    gh.unprotect("theory-deploy/pin/*")
    with pytest.raises(GitError) as info:  # a token GitHub refuses, the other failure path
        publish(world, world.pin(ci, arm64=digest("d")), None, tree=ci, git_token=canary + "x")
    assert info.value.details["cause"] == "bad-credentials"
    assert_clean(info.value.render(), json.dumps(info.value.to_json()))


# ---------------------------------------------------------------------------------------------------
# GitHub errors
# ---------------------------------------------------------------------------------------------------


def test_401_is_a_github_error_without_the_token(world: World, gh: GitHubStandIn) -> None:
    wrong = "ghp_" + "Wr0ng" * 8
    changes = world.pin(world.work, amd64=digest("b"))
    with pytest.raises(GitHubError) as info:
        publish_pin_pr(
            world.work,
            changes,
            base_branch="main",
            github=client(gh, token=wrong),
            reapply=gitpr.pin_reapplier(changes),
            git_token=TOKEN,  # git pushes with a good token; only the API refuses its own
        )
    err = info.value
    assert err.details["status"] == 401 and err.status == 401  # type: ignore[attr-defined]
    assert "401" in err.message and "Bad credentials" in err.message
    rendered = err.render() + repr(err.to_json())
    assert wrong not in rendered and "Wr0ng" not in rendered
    assert "GITHUB_TOKEN" in err.remedy
    assert err.details["pushed"] is True  # the branch went up; a re-run only opens the PR
    assert gh.requests[0].authorization == f"token {wrong}"

    # The re-run with a good token finds the pushed branch unchanged and opens the PR.
    result = publish(world, changes, gh)
    assert result["processors"][0]["status"] == "unchanged"
    assert result["processors"][0]["pr"]["result"] == "created"


def test_403_and_404_have_remedies(gh: GitHubStandIn) -> None:
    gh.fail_next(403, "Resource not accessible by integration", method="GET")
    with pytest.raises(GitHubError) as info:
        client(gh).open_or_update_pr("b", "main", "t", "body")
    assert info.value.details["status"] == 403 and "pull-requests: write" in info.value.remedy

    other = GitHubClient("acme/nope", token=TOKEN, base_url=gh.url, retries=0, seconds_between_requests=0)
    with pytest.raises(GitHubError) as info:
        other.open_or_update_pr("b", "main", "t", "body")
    assert info.value.details["status"] == 404 and "GITHUB_REPOSITORY" in info.value.remedy


def test_unreachable_api_is_a_github_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gh = GitHubClient("acme/processors", token=TOKEN, base_url=f"http://127.0.0.1:{port}", retries=0, timeout=2)
    with pytest.raises(GitHubError, match="cannot reach") as info:
        gh.open_or_update_pr("b", "main", "t", "body")
    assert TOKEN not in info.value.render()


def test_create_race_turns_into_update(world: World, gh: GitHubStandIn) -> None:
    """Another job opened the PR between our lookup and our create: update it, never a second PR."""
    gh.commit(BRANCH, {"README.md": "theirs\n"}, parent="main")
    # The other job's create lands just before ours reaches GitHub (after our lookup found nothing).
    gh.before_next(lambda: gh.open_pull(BRANCH, "main", "theirs"), method="POST")
    url, outcome = client(gh).open_or_update_pr(BRANCH, "main", "ours", "body")
    assert outcome == "updated" and url.endswith("/pull/1")
    assert [(p["number"], p["title"]) for p in gh.pulls] == [(1, "ours")]
    assert [(r.method, r.status) for r in gh.requests if r.path.endswith("/pulls") or "/pulls/" in r.path] == [
        ("GET", 200),
        ("POST", 422),
        ("GET", 200),
        ("PATCH", 200),
    ]


def _branches(gh: GitHubStandIn, *names: str) -> None:
    """main plus one branch per name with a commit over it: what a PR needs on GitHub."""
    gh.commit("main", {"README.md": "processors\n"}, "initial")
    for name in names:
        gh.commit(name, {"README.md": f"{name}\n"}, parent="main")


def test_client_from_env() -> None:
    with GitHubStandIn(tokens={TOKEN}) as gh:
        _branches(gh, "x")
        env = {"GITHUB_REPOSITORY": "acme/processors", "GITHUB_API_URL": gh.url + "/", "GH_TOKEN": TOKEN}
        c = GitHubClient.from_env(env, retries=0, seconds_between_requests=0, seconds_between_writes=0)
        assert c.auth_kind == "token" and c.base_url == gh.url
        assert c.open_or_update_pr("x", "main", "t", "b")[1] == "created"
        assert c.open_or_update_pr("x", "main", "t", "b\r\n")[1] == "unchanged"
        assert c.open_or_update_pr("x", "main", "t2", "b")[1] == "updated"
        assert len(gh.pulls) == 1
    with pytest.raises(GitHubError, match="GITHUB_REPOSITORY"):
        GitHubClient.from_env({"GITHUB_TOKEN": TOKEN})
    with pytest.raises(GitHubError, match="No GitHub credentials"):
        GitHubClient.from_env({"GITHUB_REPOSITORY": "acme/processors"})
    with pytest.raises(GitHubError, match="owner/name"):
        GitHubClient.from_env({"GITHUB_REPOSITORY": "nonsense", "GITHUB_TOKEN": TOKEN})


def test_github_app_installation_token(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with GitHubStandIn(app_id=4242, app_public_key=key.public_key(), installation_id=99) as standin:
        _branches(standin, "theory-deploy/pin/x-y-v1")
        env = {
            "GITHUB_REPOSITORY": "acme/processors",
            "GITHUB_API_URL": standin.url,
            "GITHUB_APP_ID": "4242",
            "GITHUB_APP_PRIVATE_KEY": pem,
            "GITHUB_APP_INSTALLATION_ID": "99",
            "GITHUB_TOKEN": "ignored-when-app-is-configured",
        }
        c = GitHubClient.from_env(env, retries=0, seconds_between_requests=0, seconds_between_writes=0)
        assert c.auth_kind == "app"
        _url, outcome = c.open_or_update_pr("theory-deploy/pin/x-y-v1", "main", "t", "b")
        assert outcome == "created"
        reqs = standin.requests
        assert (reqs[0].method, reqs[0].path) == ("POST", "/app/installations/99/access_tokens")
        assert reqs[0].authorization.startswith("Bearer eyJ")
        assert all(r.authorization.startswith("token ghs_") for r in reqs[1:])
        # git pushes with the same installation token as the API calls (no second token is minted).
        assert c.git_token().startswith("ghs_") and reqs[-1].authorization == f"token {c.git_token()}"
        assert [r.path for r in standin.requests].count("/app/installations/99/access_tokens") == 1


def test_mask_tokens() -> None:
    text = (
        f"token {TOKEN} github_pat_{'A' * 30} https://x-access-token:ghs_{'b' * 36}@github.com/a/b "
        "https://user:hunter22@example.com Authorization: Bearer abc.def "
        "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2ln"
    )
    masked = gitpr.mask_tokens(text, "hunter22")
    for secret in (TOKEN, "github_pat_", "ghs_", "hunter22", "abc.def", "eyJhbGci"):
        assert secret not in masked


def test_commit_message_and_branch_names() -> None:
    assert gitpr.pin_branch("llm/litellm@1") == BRANCH
    assert gitpr.pin_branch("my_ns/img_tool@12") == "theory-deploy/pin/my-ns-img-tool-v12"
    msg = gitpr.commit_message(
        REF,
        {
            "arm64": (None, digest("c")),
            "amd64": (digest("a"), digest("b")),
            "x": ("r/o@sha256:1", "r/n@sha256:2"),
        },
    )
    lines = msg.splitlines()
    assert lines[0] == f"pin({REF}): amd64, arm64, x"
    assert lines[2] == f"amd64: {digest('a')} → sha256:{'b' * 64}"
    assert lines[3] == f"arm64: (unpinned) → {digest('c')}"
    assert lines[4] == "x: r/o@sha256:1 → r/n@sha256:2"  # repository moved: show both in full
    assert lines[-1] == "Theory-Deploy-Bot: pin"
    assert "[skip ci]" not in msg
