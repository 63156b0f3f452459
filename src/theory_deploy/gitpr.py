"""Commit pins and open (or update) the one bot pull request per processor.

After `processorctl pin` has proven and written digests, `publish_pin_pr` puts them up for review:
one branch per processor, `theory-deploy/pin/<slug>` (`theory-deploy/pin/llm-litellm-v1`), one open
PR per branch, updated in place on every later pin. Nothing is ever pushed to the base branch, so
branch protection needs no bypass and no admin token.

This module holds the publish algorithm and its messages (commit message, PR title and body). git
runs through `gitrun.Git`, pins are read with `registry_pins`, and GitHub is reached through
`github_client.GitHubClient`.

Why one file of this size: the steps below share one worktree, one lease and one bot identity;
split up, one invariant (never overwrite a commit the bot did not make) would be spread over files.

How a pin reaches the branch
----------------------------
0. The whole run holds an exclusive lock on the clone's git folder. Two runs in one clone take
   turns, and the run that gets the lock removes what a killed run left (its bot worktree, its
   private ref locks): a re-run after a crash finishes the job.
1. `git ls-remote` + `git fetch` of the base branch and the bot branch into a private ref namespace
   (`refs/theory-deploy/...`, deleted again at the end), never into the user's branches (the push in
   step 6 does move the clone's remote-tracking ref of the bot branch, as every `git push` to a named
   remote does). Shallow clones (actions/checkout's default) are deepened until base and bot branch
   share a merge base.
2. If the bot branch exists, every commit on it that is not on the base must be a bot commit: the
   `Theory-Deploy-Bot: pin` trailer, *and* as author the bot identity (THEORY_BOT_EMAIL, what git
   commits carry) or a GitHub bot account (`<slug>[bot]@users.noreply.github.com`, the author GitHub
   gives a commit a bot token makes through the API), *and* as committer the bot identity or GitHub
   (`noreply@github.com`, who commits what GitHub signs). See `_Commit.made_by`. Any other commit
   (a human pushed a fix to the branch, someone pressed "Update branch") means the branch is never
   rewritten or pushed: if it already holds our pins the result is `unchanged`, otherwise
   PushConflictError names the commit.
3. A temporary `git worktree` (outside the repository, detached HEAD) is made at the bot branch tip
   (or the base tip when there is no bot branch), and the bot's commits are rebased onto the latest
   base. Commits already on the base (a squash-merged PR) drop out; if the base changed the same pin
   lines, the stale bot commits are dropped (`superseded` in the result) and the base wins.
4. `reapply(tree)` writes the pins into that fresh tree (the comment-preserving editor of
   registry_file). Pins are re-applied, not copied: copying the user's registry.yaml would also copy
   their unrelated uncommitted edits and would undo whatever the base changed in that file since the
   user's checkout.
5. Only that processor's registry.yaml is staged and committed, as the bot, with hooks disabled and
   signing off. A guard (`registry_pins.is_pin_only_change`) refuses to push a commit that changes anything but
   `image.platforms` lines.
6. Publish, with a lease on the sha we based on (none: the branch must not exist yet). If another
   writer moved the branch in between, the lease is lost and nothing of ours lands; we fetch again,
   rebuild on the new tip (keeping the other writer's bot commits) and re-apply, at most
   `max_attempts` times. Two ways, same lease:
   - through GitHub's API, when the GitHub client's token is a bot's (a GitHub App installation
     token; a workflow's GITHUB_TOKEN is one): see "Verified commits" below;
   - else `git push --force-with-lease=refs/heads/<branch>:<sha we based on>` (`--github none`,
     local runs, a plain git remote, a person's token).
7. The PR is found by head branch (open PRs only) and its title/body updated, or created. A create
   that races another job's create (422 "already exists") turns into an update: never two PRs.

Verified commits: the API path
------------------------------
A commit pushed with git is unsigned, and a repository that requires signed commits refuses to
merge a PR holding one. GitHub signs the commits a bot (a GitHub App, and so a workflow's
GITHUB_TOKEN) makes through its API without a custom author, committer or signature, and shows them
as Verified. So when the client's token is a bot's (`GitHubClient.signs_commits`), step 6 does not
push. `api_commits.replay_on_github` re-makes each local commit the remote lacks, oldest first: its
changed files as blobs, its tree on its parent's tree (`base_tree`), the commit with the same message
and the re-made parent. GitHub's blob and tree shas must equal the local ones, so GitHub's commit
holds exactly the content built, re-applied and guarded (pin-only) here. Then the branch is moved
with GraphQL `updateRefs`, whose `beforeOid` is the sha we based on (all zeros: must not exist):
GitHub's compare-and-swap on a ref, so a concurrent writer is never overwritten, even by the forced
update a rebase needs (REST's PATCH /git/refs checks nothing when forced, and without force only
refuses a non-fast-forward; it has no expected-old-value). A refused update is told apart by reading
the branch back: moved elsewhere is a lost lease (rebuild), at our new commit is our own update
whose answer was lost (done), unmoved is an error. Last, the branch is fetched into the clone and
the new commit's tree checked again, so the PR step and a later run see it. No race is left open
on the branch itself; commits made for an attempt that then lost the lease stay unreferenced on
GitHub until it collects them.

A person's token (`ghp_`, `github_pat_`) keeps the git push: GitHub would not sign its API commits,
and their author would be that person, whom step 2 could not tell from a human.

Which credentials git uses
--------------------------
Steps 1 and 6 (the push, or the fetch after an API update) reach the remote. When theory-deploy
knows a GitHub token (the one its REST calls use: GITHUB_TOKEN / GH_TOKEN or the GitHub App's
installation token, i.e. the actions' `github-token` input), git authenticates to an http(s) remote
with that token, as `x-access-token`, and whatever actions/checkout persisted for that server is
not sent (see `gitrun.Git.with_http_token`: the token goes into git's environment only, never argv
or a config file). So the bot branch is written by the same identity that opens the PR (a GitHub
App's push or API update triggers the PR's checks, a GITHUB_TOKEN's does not), and
`persist-credentials: false` works. Without a token git uses its own configuration. The result's
status is "pushed" either way (the branch holds the new commit).

A refused push is explained by its cause: a branch protection rule or ruleset covering the bot's
branches (GH006 / GH013, or "Protected branch update failed" from the API), no credentials at all,
credentials GitHub refused, or a token without `contents: write` (which the API path needs too:
Git database writes and `updateRefs` are Contents writes).

Why the worktree and not a temporary index: the re-apply step needs real files of the *base*
revision to edit (the editor reads, validates and splices text), and the rebase in step 3 needs a
work tree. A worktree gives both without touching the user's HEAD, index or files: their dirty and
untracked files stay exactly as they were, uncommitted. Its cost is one checkout of the tree into a
temporary folder (git LFS smudging is skipped).

Bot loops, and why a `[skip ci]` marker is not used
---------------------------------------------------
(a) Pushes and PRs made with the workflow's GITHUB_TOKEN do not trigger `on: push` or
    `on: pull_request` workflows at all (GitHub's rule against recursive runs). A bot PR opened with
    GITHUB_TOKEN therefore starts nothing, which also means required checks do not run on it; use a
    GitHub App installation token (`GITHUB_APP_ID`, `GITHUB_APP_PRIVATE_KEY`,
    `GITHUB_APP_INSTALLATION_ID`) when the PR must run checks. Then (b) is what stops a loop.
(b) Every bot commit changes only `image.platforms.<platform>` lines of registry.yaml files and
    carries the `Theory-Deploy-Bot: pin` trailer. The pipeline's plan step calls
    `is_pin_only_change(repo, before, after)` (and `is_bot_commit`) and, when it is true, skips
    build and pin: a pin-only change (the bot branch's PR run, or the merge of a pin PR into main)
    only validates and deploys the pinned digests, which writes nothing to git. Nothing can come
    back round. `paths-ignore` cannot express "only the pin lines of that file", hence a function.
(c) `[skip ci]` in the message is deliberately *not* used: it would also skip the required checks
    on the PR (leaving it unmergeable) and, in a squash merge, skip the deploy of the merged pins.
(d) Re-running with the same pins changes nothing: no commit, no push, no PR write.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from . import api_commits, output
from .errors import (
    GitError,
    GitHubError,
    PlatformMismatchError,
    ProcessorNotFoundError,
    PushConflictError,
    TheoryDeployError,
    UsageError,
)
from .files import exclusive_lock
from .github_client import GitHubClient
from .gitrun import QUIET_FETCH, Git, mask_tokens, not_an_option
from .oci import RegistryClients
from .pin import verify_pin_candidate
from .refs import ImageRef, ProcessorRef
from .registry_file import LoadedProcessor
from .registry_pins import is_pin_only_change, pins_at, pins_in_text

__all__ = [  # GitHubClient, is_pin_only_change and mask_tokens live elsewhere; tests import them from here
    "BOT_TRAILER",
    "BRANCH_PREFIX",
    "BotIdentity",
    "GitHubClient",
    "PinChange",
    "commit_message",
    "is_bot_commit",
    "is_pin_only_change",
    "mask_tokens",
    "pin_branch",
    "pin_reapplier",
    "pr_body",
    "pr_title",
    "propose_pins",
    "publish_pin_pr",
    "verify_proposed_pins",
]

BRANCH_PREFIX = "theory-deploy/pin/"
BOT_TRAILER_KEY = "Theory-Deploy-Bot"
BOT_TRAILER_VALUE = "pin"
BOT_TRAILER = f"{BOT_TRAILER_KEY}: {BOT_TRAILER_VALUE}"
DEFAULT_BOT_NAME = "theory-deploy[bot]"
DEFAULT_BOT_EMAIL = "theory-deploy[bot]@users.noreply.github.com"
PRIVATE_REF_PREFIX = "refs/theory-deploy/remotes"
# Who GitHub makes the author of a commit a bot token creates through the API, and its committer.
_GITHUB_BOT_ADDRESS = re.compile(r"(?:[0-9]+\+)?[a-z0-9][a-z0-9-]*\[bot\]@users\.noreply\.github\.com")
GITHUB_COMMITTER_EMAIL = "noreply@github.com"

_LEASE_REJECTED = ("stale info", "cannot lock ref", "incorrect old value", "fetch first")
# What git (and GitHub, through it as `remote: ...`) prints when a push or fetch is refused, by cause.
# Branch protection; rulesets; the same refusals of an API ref update (no GH-number there).
_PROTECTED = (
    "GH006",
    "GH013",
    "protected branch hook declined",
    "Protected branch update failed",
    "Repository rule violations found",
)
_NO_CREDENTIALS = ("could not read Username", "could not read Password")
_BAD_CREDENTIALS = ("Authentication failed", "Invalid username or token", "returned error: 401")
_FORBIDDEN = ("returned error: 403", "Write access to repository not granted")
_CREDENTIAL_SOURCES = (
    "the action's `github-token` input, or GITHUB_TOKEN / GH_TOKEN (or the GITHUB_APP_* variables) for processorctl"
)


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


@dataclass
class PinChange:
    """Pins that changed in one processor's registry.yaml: {platform: (old ref or None, new ref)}."""

    ref: str  # processor ref, ns/name@N
    registry_path: str  # repo-relative, e.g. processors/llm/litellm/registry.yaml
    repository: str  # image repository, e.g. ghcr.io/acme/llm-litellm
    platforms: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class BotIdentity:
    name: str
    email: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BotIdentity:
        env = os.environ if environ is None else environ
        return cls(
            name=env.get("THEORY_BOT_NAME") or DEFAULT_BOT_NAME,
            email=env.get("THEORY_BOT_EMAIL") or DEFAULT_BOT_EMAIL,
        )


def pin_branch(ref: str) -> str:
    """`llm/litellm@1` → `theory-deploy/pin/llm-litellm-v1`. Stable: the same processor, the same branch."""
    return BRANCH_PREFIX + ProcessorRef.parse(ref, where="pin ref").slug


# ---------------------------------------------------------------------------------------------------
# git: fetching, the bot's commits, the temporary worktree
# ---------------------------------------------------------------------------------------------------


def _private_ref(remote: str, branch: str) -> str:
    return f"{PRIVATE_REF_PREFIX}/{re.sub(r'[^A-Za-z0-9._-]+', '_', remote)}/{branch}"


def _remote_failure(what: str, output: str, *, git: Git, remote: str, branch: str, remedy: str) -> GitError:
    """The error for a fetch or push the remote refused, with the remedy for its cause (`remedy` when
    none is recognised). `git.network_env` is set when git was given our token for the remote's URL
    (see publish_pin_pr)."""
    said = mask_tokens(output.strip())
    details: dict[str, Any] = {"branch": branch, "remote": remote}
    with_token = bool(git.network_env)
    if any(marker in output for marker in _PROTECTED):
        return GitError(
            f"{what} failed: GitHub refused it because a branch protection rule or ruleset covers {branch}. "
            f"git said: {said}",
            remedy=f"The pin bot pushes only to its own branches, {BRANCH_PREFIX}<processor> (never to the base "
            f"branch), so no rule has to cover them: narrow the branch pattern of the rule or ruleset that matches "
            f"{branch} so it leaves {BRANCH_PREFIX}* out, or add the bot (the GitHub App, or the token's user) to "
            "its bypass list (Settings > Branches, or Settings > Rules > Rulesets), then re-run.",
            details={**details, "cause": "branch-protection"},
        )
    # With our token, "could not read Username" too means GitHub refused it: git asked for other
    # credentials after the 401 (and may not prompt).
    if not with_token and any(marker in output for marker in _NO_CREDENTIALS):
        return GitError(
            f"{what} failed: git has no credentials for {remote} that GitHub accepts (none were persisted, or "
            f"those were refused). git said: {said}",
            remedy=f"Give theory-deploy the token to use ({_CREDENTIAL_SOURCES}): git then authenticates with it and "
            "needs no credentials persisted by actions/checkout (`persist-credentials: false` is fine). "
            "Without a token, keep actions/checkout's default `persist-credentials: true`.",
            details={**details, "cause": "no-credentials"},
        )
    if any(marker in output for marker in _BAD_CREDENTIALS + _NO_CREDENTIALS):
        remedy = (
            "GitHub refused the token for git: it is invalid or expired, or the GitHub App is not installed on "
            f"this repository. Pass a valid one ({_CREDENTIAL_SOURCES})."
            if with_token
            else "GitHub refused the credentials git has for this remote (persisted by actions/checkout, or a "
            f"credential helper). Pass the token theory-deploy should push with ({_CREDENTIAL_SOURCES})."
        )
        return GitError(
            f"{what} failed: GitHub refused the {'token' if with_token else 'credentials'} git sent. git said: {said}",
            remedy=remedy,
            details={**details, "cause": "bad-credentials"},
        )
    if any(marker in output for marker in _FORBIDDEN) or re.search(r"Permission to \S+ denied", output):
        return GitError(
            f"{what} failed: {said}",
            remedy="The token may not push: give it contents: write (a workflow's `permissions: contents: write`; "
            "a GitHub App's Contents: Read and write).",
            details={**details, "cause": "forbidden"},
        )
    return GitError(f"{what} failed: {said}", remedy=remedy, details=details)


def _network(git: Git, what: str, *args: str, remote: str, branch: str) -> str:
    """Run a git call that reaches `remote`; its stdout, or the explained failure."""
    proc = git.run(*args, check=False, network=True)
    if proc.returncode != 0:
        raise _remote_failure(
            what,
            proc.stderr or proc.stdout,
            git=git,
            remote=remote,
            branch=branch,
            remedy=f"Check that {remote} is reachable and the token may read it, and read git's message.",
        )
    return proc.stdout


def _fetch(git: Git, remote: str, base_branch: str, branch: str) -> tuple[str, str | None]:
    """Fetch base and bot branch into private refs; return their shas (bot: None when absent)."""
    listing = _network(
        git,
        f"reading {base_branch} and {branch} from {remote} (git ls-remote)",
        "ls-remote",
        remote,
        f"refs/heads/{base_branch}",
        f"refs/heads/{branch}",
        remote=remote,
        branch=branch,
    )
    remote_refs = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        remote_refs[name.strip()] = sha.strip()
    if f"refs/heads/{base_branch}" not in remote_refs:
        raise GitError(
            f"base branch {base_branch!r} does not exist on remote {remote!r}.",
            remedy="Pass the branch PRs should target (--base, default: the repository's default branch).",
        )
    base_ref, bot_ref = _private_ref(remote, base_branch), _private_ref(remote, branch)
    refspecs = [f"+refs/heads/{base_branch}:{base_ref}"]
    if f"refs/heads/{branch}" in remote_refs:
        refspecs.append(f"+refs/heads/{branch}:{bot_ref}")
    _network(
        git,
        f"fetching {base_branch} and {branch} from {remote}",
        *QUIET_FETCH,
        remote,
        *refspecs,
        remote=remote,
        branch=branch,
    )
    base_sha = git.rev(base_ref)
    assert base_sha is not None
    bot_sha = git.rev(bot_ref) if len(refspecs) == 2 else None
    if bot_sha is None:
        git.run("update-ref", "-d", bot_ref, check=False)
    else:
        _ensure_merge_base(git, remote, branch, refspecs, base_sha, bot_sha)
    return base_sha, bot_sha


def _ensure_merge_base(git: Git, remote: str, branch: str, refspecs: list[str], base_sha: str, bot_sha: str) -> None:
    """In a shallow clone the base and the bot branch may not meet: deepen until they do."""
    for deepen in ("--deepen=50", "--deepen=1000", "--unshallow"):
        if git.ok("merge-base", base_sha, bot_sha):
            return
        if git.out("rev-parse", "--is-shallow-repository") != "true":
            return  # unrelated histories: the foreign-commit check will say so
        _network(
            git,
            f"deepening the shallow clone from {remote}",
            *QUIET_FETCH,
            deepen,
            remote,
            *refspecs,
            remote=remote,
            branch=branch,
        )


@dataclass(frozen=True)
class _Commit:
    sha: str
    author: str
    author_email: str
    committer_email: str
    subject: str
    trailer: str

    def made_by(self, identity: BotIdentity) -> bool:
        """The trailer, and an author and committer pair only the bot produces.

        A commit the bot made with git (and pushed) has the configured identity (THEORY_BOT_EMAIL) as
        author and committer. A commit it made through GitHub's API, so that GitHub signs it, is
        authored by the token's bot account, whose address GitHub forms as
        `[<id>+]<slug>[bot]@users.noreply.github.com` (`github-actions[bot]`, an App's `<slug>[bot]`),
        and committed by GitHub (`noreply@github.com`, the committer of the commits GitHub signs); a
        later local rebase of it makes the configured identity its committer. So: author the
        configured identity or a GitHub bot account, committer the configured identity or GitHub.
        A human's commit, and "Update branch" (author: the human), stay foreign; so does a commit
        another bot account both authored and committed (another tool's git push), unless it is the
        configured identity (set THEORY_BOT_EMAIL to the App's address to claim its commits)."""
        if BOT_TRAILER_VALUE not in [v.strip() for v in self.trailer.split(",")]:
            return False
        bot, author, committer = identity.email.lower(), self.author_email.lower(), self.committer_email.lower()
        if author != bot and not _GITHUB_BOT_ADDRESS.fullmatch(author):
            return False
        return committer in (bot, GITHUB_COMMITTER_EMAIL)


def _commits(git: Git, range_args: list[str]) -> list[_Commit]:
    fmt = f"%H%x1f%an%x1f%ae%x1f%ce%x1f%s%x1f%(trailers:key={BOT_TRAILER_KEY},valueonly,separator=%x2c)%x1e"
    text = git.run("log", "--no-color", f"--format={fmt}", *range_args).stdout  # no strip(): \x1f is whitespace
    commits = []
    for record in text.split("\x1e"):
        record = record.strip("\n")
        if not record:
            continue
        sha, author, a_email, c_email, subject, trailer = record.split("\x1f")
        commits.append(_Commit(sha, author, a_email, c_email, subject, trailer.strip()))
    return commits


def is_bot_commit(repo_dir: Path, rev: str, identity: BotIdentity | None = None) -> bool:
    """True when `rev` was made by the pin bot (identity and trailer); for the workflow's plan step."""
    git = Git(Path(repo_dir))
    sha = git.rev(rev)
    if sha is None:
        raise GitError(f"{rev!r} is not a commit in {repo_dir}.", remedy="Fetch it first (fetch-depth: 2 or 0).")
    return _commits(git, ["-1", sha])[0].made_by(identity or BotIdentity.from_env())


WORKTREE_PREFIX = "pin-"  # the bot's worktree names: pin-<slug>, and git's pin-<slug>N on a clash
WORKTREE_TMP_PREFIX = "theory-deploy-pin-"


@contextlib.contextmanager
def _worktree(git: Git, rev: str, name: str) -> Iterator[Path]:
    """A temporary worktree at `rev`, removed afterwards, whatever happens.

    Call it only under the clone lock (`_clone_lock`, which publish_pin_pr holds for its whole run):
    that is what lets the next run treat any bot worktree it finds as a killed run's remains.
    """
    tmp = Path(tempfile.mkdtemp(prefix=WORKTREE_TMP_PREFIX))
    path = tmp / name
    try:
        git.run("worktree", "add", "--detach", "--quiet", str(path), rev)
        yield path
    finally:
        # --force twice: a SIGTERM or SIGINT during `git worktree add` stops it half-way (its child is
        # killed with it), leaving the entry locked, and a locked worktree refuses a single --force.
        removed = git.run("worktree", "remove", "--force", "--force", str(path), check=False).returncode == 0
        shutil.rmtree(tmp, ignore_errors=True)
        if not removed:
            # An entry git would not remove (add stopped before the checkout existed). The clone lock is
            # held, so every bot worktree in this clone is this run's or a killed run's: the same sweep
            # the next run would make.
            _reclaim_stale_worktrees(git, _git_common_dir(git))


def _git_common_dir(git: Git) -> Path:
    """The clone's git folder shared by all its worktrees: what the clone lock is taken on."""
    return Path(git.out("rev-parse", "--path-format=absolute", "--git-common-dir"))


@contextlib.contextmanager
def _clone_lock(git: Git) -> Iterator[None]:
    """Hold the clone's publish lock for a whole run, after clearing what a killed run left.

    Only a run holding this lock makes bot worktrees or writes the private refs, so the run that gets
    it knows that any bot worktree or private ref lock it finds belongs to a run that was killed
    (SIGKILL leaves both: a kill inside `git worktree add` leaves a locked admin entry with no valid
    HEAD that `git worktree prune` keeps and that breaks every later fetch; a kill inside `git fetch`
    leaves `refs/theory-deploy/...lock`, and git then refuses to update that ref ever again). Both
    are removed first: a re-run after a crash finishes the job instead of tripping over its remains.
    Two runs in one clone take turns.
    """
    common = _git_common_dir(git)
    with exclusive_lock(common, timeout_s=600, what=f"{common} (another pin PR run is using this clone)"):
        _reclaim_stale_worktrees(git, common)
        _remove_stale_private_ref_locks(common)
        yield


def _remove_stale_private_ref_locks(common: Path) -> list[str]:
    """Delete the ref lock files a killed run left under the private namespace (clone lock held).

    Only that namespace is ours: a lock on a user's ref, or on packed-refs, may belong to a git
    command the user is running, so those are left for git to report."""
    private = common / PRIVATE_REF_PREFIX
    removed = []
    for leftover in sorted(private.rglob("*.lock")) if private.is_dir() else []:
        if leftover.is_dir():
            continue  # git never makes one: not a lock, so not ours to delete (git will name it)
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
        removed.append(leftover.relative_to(common).as_posix())
    if removed:
        output.progress(f"removed {len(removed)} ref lock(s) left by an interrupted run: {', '.join(removed)}")
    return removed


def _reclaim_stale_worktrees(git: Git, common: Path) -> list[str]:
    """Remove the bot worktrees a killed run left (call only under the clone lock)."""
    reclaimed = []
    admin_root = common / "worktrees"
    for admin in sorted(admin_root.glob(f"{WORKTREE_PREFIX}*")) if admin_root.is_dir() else []:
        checkout = _worktree_checkout(admin)
        # Only our own temporary checkouts are deleted; an entry pointing elsewhere loses its admin
        # entry only (a user's worktree is never named pin-*, but if one were, its files stay).
        if checkout is not None and checkout.parent.name.startswith(WORKTREE_TMP_PREFIX):
            shutil.rmtree(checkout.parent, ignore_errors=True)
        shutil.rmtree(admin, ignore_errors=True)
        reclaimed.append(admin.name)
    if reclaimed:
        git.run("worktree", "prune", check=False)
        output.progress(f"removed {len(reclaimed)} worktree(s) left by an interrupted run: {', '.join(reclaimed)}")
    return reclaimed


def _worktree_checkout(admin: Path) -> Path | None:
    """The checkout folder an admin entry points at (its `gitdir` file names <checkout>/.git)."""
    try:
        pointer = (admin / "gitdir").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(pointer).parent if pointer else None


# ---------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------


def _split_ref(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    repo, sep, digest = value.partition("@")
    return (repo, digest) if sep else (value, None)


def _describe(platform: str, old: str | None, new: str | None) -> str:
    old_repo, old_digest = _split_ref(old)
    new_repo, new_digest = _split_ref(new)
    if old is None:
        return f"{platform}: (unpinned) → {new}"
    if new is None:
        return f"{platform}: {old} → (unpinned)"
    if old_repo == new_repo and old_digest and new_digest:
        return f"{platform}: {old} → {new_digest}"
    return f"{platform}: {old} → {new}"


def commit_message(ref: str, changes: dict[str, tuple[str | None, str | None]]) -> str:
    platforms = sorted(changes)
    lines = [f"pin({ref}): {', '.join(platforms)}", ""]
    lines += [_describe(p, *changes[p]) for p in platforms]
    lines += ["", BOT_TRAILER]
    return "\n".join(lines) + "\n"


def pr_title(ref: str, platforms: list[str]) -> str:
    return f"pin({ref}): {', '.join(sorted(platforms))}"


def pr_body(ref: str, registry_path: str, branch: str, changes: dict[str, tuple[str | None, str | None]]) -> str:
    """Markdown: what changed (base → this branch), and how to check each new digest."""
    rows = []
    verify = []
    for platform in sorted(changes):
        old, new = changes[platform]
        old_repo, old_digest = _split_ref(old)
        new_repo, new_digest = _split_ref(new)
        repository = new_repo or old_repo or ""
        old_cell = "(unpinned)" if old is None else (f"`{old_digest}`" if old_repo == repository else f"`{old}`")
        new_cell = "(unpinned)" if new is None else f"`{new_digest}`"
        rows.append(f"| `{ref}` | {platform} | {old_cell} → {new_cell} | `{repository}` |")
        if new is not None:
            verify.append(f"skopeo inspect --raw docker://{new}   # {platform}")
    parts = [
        f"<!-- theory-deploy:pin {ref} -->",
        f"Pins new image digests for **{ref}** in `{registry_path}`.",
        "",
        "| processor | platform | old digest → new digest | repository |",
        "|---|---|---|---|",
        *rows,
        "",
        "### How to verify",
        "Each new digest must be a single-platform image *manifest* (not an index, config or "
        "attestation). `processorctl pin` proved that before writing it; to check by hand:",
        "",
        "```sh",
        *verify,
        "```",
        "",
        "`mediaType` must be an image manifest (`application/vnd.oci.image.manifest.v1+json` or "
        "`application/vnd.docker.distribution.manifest.v2+json`), and "
        "`skopeo inspect docker://<ref>` must show the platform's `Architecture`.",
        "",
        f"Opened and kept up to date by theory-deploy on branch `{branch}`: one PR per processor, updated in "
        "place by later pins. The bot never force-pushes over commits it did not make. Its commits "
        "change only `image.platforms` lines, so merging this PR deploys these digests without "
        "rebuilding or re-pinning.",
    ]
    return "\n".join(parts) + "\n"


def _diff_pins(old: dict[str, str | None], new: dict[str, str | None]) -> dict[str, tuple[str | None, str | None]]:
    return {p: (old.get(p), new.get(p)) for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)}


# ---------------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------------


def pin_reapplier(changes: list[PinChange]) -> Callable[[Path], list[PinChange]]:
    """The usual `reapply`: write each change's new pins into the tree with registry_file.write_pins."""
    from . import registry_file

    def reapply(root: Path) -> list[PinChange]:
        out = []
        for change in changes:
            pins = {p: new for p, (_old, new) in change.platforms.items()}
            changed = registry_file.write_pins(root / change.registry_path, pins)  # type: ignore[arg-type]
            if changed:
                made: dict[str, tuple[str | None, str | None]] = {str(p): v for p, v in changed.items()}
                out.append(PinChange(change.ref, change.registry_path, change.repository, made))
        return out

    return reapply


def _group(changes: list[PinChange]) -> dict[str, PinChange]:
    grouped: dict[str, PinChange] = {}
    for change in changes:
        pin_branch(change.ref)  # validates the ref
        if Path(change.registry_path).is_absolute() or ".." in Path(change.registry_path).parts:
            raise UsageError(
                f"{change.ref}: registry_path {change.registry_path!r} must be relative to the repository."
            )
        seen = grouped.get(change.ref)
        if seen is None:
            grouped[change.ref] = PinChange(change.ref, change.registry_path, change.repository, dict(change.platforms))
        elif seen.registry_path != change.registry_path:
            raise UsageError(f"{change.ref}: two registry paths given ({seen.registry_path}, {change.registry_path}).")
        else:
            seen.platforms.update(change.platforms)
    return grouped


def publish_pin_pr(
    repo_dir: Path,
    changes: list[PinChange],
    *,
    remote: str = "origin",
    base_branch: str,
    github: GitHubClient | None,
    reapply: Callable[[Path], list[PinChange]],
    max_attempts: int = 4,
    before_push: Callable[[str, int], None] | None = None,
    git_token: str | None = None,
) -> dict[str, Any]:
    """Commit each processor's pins to its bot branch and open/update its PR.

    The commits reach the branch through GitHub's API, signed, when `github`'s token is a bot's
    (`GitHubClient.signs_commits`), else by `git push` (see "Verified commits" above).
    git authenticates to an http(s) remote with `git_token`, else with the token `github` uses for
    the API (`GitHubClient.git_token`), else with git's own configuration (see "Which credentials git
    uses" above).

    `reapply(tree)` must write the pins into the registry.yaml files under `tree` (a fresh checkout of
    the branch being built) and return what it changed; it is called once per attempt.
    `before_push(ref, attempt)` runs just before each push, or each API branch update (after the
    commits were made on GitHub): a seam for tests and progress output.
    Returns {"processors": [...], "summary": str}; each entry has ref, branch, status ("pushed" |
    "unchanged"), commit, attempts, changes, superseded and pr ({"url", "result"} or None).
    Processors are handled one after another; a failure raises and leaves earlier ones published
    (re-running is safe: published pins come back `unchanged`).
    """
    repo_dir = Path(repo_dir).resolve()
    if max_attempts < 1:
        raise UsageError("max_attempts must be at least 1.")
    base_branch = not_an_option(base_branch.removeprefix("refs/heads/"), "base branch", UsageError)
    not_an_option(remote, "remote", UsageError)
    identity = BotIdentity.from_env()
    probe = Git(repo_dir)
    top = probe.run("rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise GitError(f"{repo_dir} is not inside a git repository.", remedy="Run from a clone of your repository.")
    grouped = _group(changes)
    git = Git(Path(top.stdout.strip()), identity)
    token = git_token or (github.git_token() if github is not None else None)
    if token:
        git = git.with_http_token(token, git.remote_urls(remote))
    with _clone_lock(git):
        try:
            results = [
                _publish_one(
                    git,
                    change,
                    remote=remote,
                    base_branch=base_branch,
                    github=github,
                    reapply=reapply,
                    max_attempts=max_attempts,
                    identity=identity,
                    before_push=before_push,
                    api_commits_by=github if github is not None and github.signs_commits else None,
                )
                for change in grouped.values()
            ]
        finally:
            # Leave no refs behind: the private fetch refs only served this run.
            for name in {base_branch, *(pin_branch(r) for r in grouped)}:
                probe.run("update-ref", "-d", _private_ref(remote, name), check=False)
    lines = []
    for r in results:
        pr = f", PR {r['pr']['result']}: {r['pr']['url']}" if r["pr"] else ""
        lines.append(f"{r['ref']}: {r['status']} on {r['branch']}{pr}")
    return {"processors": results, "summary": "\n".join(lines) or "no processors to publish"}


def _publish_one(
    git: Git,
    change: PinChange,
    *,
    remote: str,
    base_branch: str,
    github: GitHubClient | None,
    reapply: Callable[[Path], list[PinChange]],
    max_attempts: int,
    identity: BotIdentity,
    before_push: Callable[[str, int], None] | None,
    api_commits_by: GitHubClient | None,
) -> dict[str, Any]:
    ref, path = change.ref, change.registry_path
    branch = pin_branch(ref)
    if branch == base_branch:
        raise UsageError(f"the base branch cannot be the bot branch {branch}.")
    last_seen: str | None = None
    for attempt in range(1, max_attempts + 1):
        base_sha, bot_sha = _fetch(git, remote, base_branch, branch)
        pending_commits: list[_Commit] = []
        foreign: list[_Commit] = []
        if bot_sha is not None:
            pending_commits = _commits(git, [bot_sha, "--not", base_sha])
            foreign = [c for c in pending_commits if not c.made_by(identity)]
        superseded: list[str] = []
        # What every result of this attempt says, whatever its outcome.
        finish = partial(
            _finish,
            git,
            change,
            branch=branch,
            base_branch=base_branch,
            github=github,
            base_sha=base_sha,
            attempts=attempt,
        )
        with _worktree(git, bot_sha or base_sha, f"pin-{branch.rsplit('/', 1)[-1]}") as tree:
            wt = git.with_cwd(tree)
            # With a foreign commit on the branch nothing is rebased or pushed; we only look whether
            # the branch already has our pins (then: unchanged), else stop with PushConflictError.
            if bot_sha is not None and not foreign and not wt.ok("merge-base", "--is-ancestor", base_sha, "HEAD"):
                rebased = wt.run("rebase", "--quiet", "--empty=drop", "--no-autosquash", base_sha, check=False)
                if rebased.returncode != 0:
                    wt.run("rebase", "--abort", check=False)
                    wt.run("reset", "--quiet", "--hard", base_sha)
                    superseded = [c.sha for c in pending_commits]
            if not (tree / path).is_file():
                raise ProcessorNotFoundError(
                    f"{ref}: {path} does not exist on {remote}/{base_branch}; "
                    "the pin bot can only pin processors "
                    "that are already on the base branch.",
                    remedy=f"Merge the processor into {base_branch} first, or commit the pin on your own branch.",
                )
            head_sha = wt.out("rev-parse", "HEAD")
            pending = head_sha != base_sha
            before = pins_in_text(wt.show("HEAD", path))
            reapply(tree)
            wt.run("add", "--", path)
            new_blob = wt.blob(":0", path)  # the staged registry.yaml
            target_blob = wt.blob(bot_sha, path) if (pending and bot_sha) else wt.blob(base_sha, path)
            if new_blob == target_blob:
                return finish(tip_sha=bot_sha if pending else None, status="unchanged", made={}, superseded=superseded)
            if foreign:
                c = foreign[0]
                raise PushConflictError(
                    f"{remote}/{branch} holds commit {c.sha[:12]} "
                    f"({c.subject!r} by {c.author} <{c.author_email}>) "
                    f"that theory-deploy did not make; refusing to overwrite it. {ref} was not published.",
                    remedy=f"Merge or close the PR from {branch} "
                    "(or move that commit elsewhere and delete the "
                    "branch), then re-run the pin.",
                    details={"branch": branch, "commit": c.sha, "author": c.author_email},
                )
            made: dict[str, tuple[str | None, str | None]] = {}
            if new_blob != wt.blob("HEAD", path):
                made = _diff_pins(before, pins_in_text((tree / path).read_text(encoding="utf-8")))
                if made:
                    wt.run("commit", "--quiet", "--no-verify", "-m", commit_message(ref, made))
                if not made or not is_pin_only_change(tree, "HEAD^", "HEAD"):
                    raise GitError(
                        f"{ref}: the pin commit for {path} changes more than image.platforms lines; "
                        "refusing to push it.",
                        remedy="Re-run `processorctl validate`; "
                        "if registry.yaml is valid this is a bug in the pin editor.",
                    )
            new_sha = wt.out("rev-parse", "HEAD")
            if api_commits_by is not None:
                published = _publish_through_api(
                    git,
                    api_commits_by,
                    remote=remote,
                    branch=branch,
                    base_sha=base_sha,
                    bot_sha=bot_sha,
                    local_tip=new_sha,
                    before_update=partial(before_push, ref, attempt) if before_push is not None else None,
                )
                if published is not None:
                    return finish(tip_sha=published, status="pushed", made=made, superseded=superseded)
                last_seen = bot_sha
                continue
            if before_push is not None:
                before_push(ref, attempt)
            lease = f"--force-with-lease=refs/heads/{branch}:{bot_sha or ''}"
            pushed = wt.run(
                "push",
                "--porcelain",
                "--no-verify",
                "--quiet",
                lease,
                remote,
                f"{new_sha}:refs/heads/{branch}",
                check=False,
                network=True,
            )
        if pushed.returncode == 0:
            return finish(tip_sha=new_sha, status="pushed", made=made, superseded=superseded)
        output = f"{pushed.stdout}\n{pushed.stderr}"
        if not any(marker in output for marker in _LEASE_REJECTED):
            raise _remote_failure(
                f"pushing {branch} to {remote}",
                output,
                git=git,
                remote=remote,
                branch=branch,
                remedy="Check that the token may push branches (contents: write) and read git's message.",
            )
        last_seen = bot_sha
    raise PushConflictError(
        f"{remote}/{branch} kept moving while {ref} was being pinned ({max_attempts} attempts; last based on "
        f"{(last_seen or 'no branch')[:12]}); nothing of ours was pushed.",
        details={"branch": branch, "attempts": max_attempts},
    )


def _publish_through_api(
    git: Git,
    github: GitHubClient,
    *,
    remote: str,
    branch: str,
    base_sha: str,
    bot_sha: str | None,
    local_tip: str,
    before_update: Callable[[], None] | None,
) -> str | None:
    """Step 6 through GitHub's API: re-make the local commits on GitHub (signed), then move the branch
    from `bot_sha` (None: create it) with a compare-and-swap. The sha GitHub gave the tip, now also
    fetched into the clone; None when another writer moved the branch first (the lease is lost)."""
    on_remote = [base_sha, *([bot_sha] if bot_sha else [])]
    tip = api_commits.replay_on_github(git, github, local_tip=local_tip, on_remote=on_remote)
    if before_update is not None:
        before_update()
    # Forced only when the line was rebased; the compare-and-swap on bot_sha is what keeps it safe.
    fast_forward = bot_sha is None or git.ok("merge-base", "--is-ancestor", bot_sha, local_tip)
    try:
        moved = github.move_branch(branch, tip, expected_sha=bot_sha, force=not fast_forward)
    except GitHubError as err:
        if any(marker in err.message for marker in _PROTECTED):
            raise _remote_failure(
                f"updating {branch} through GitHub's API",
                err.message,
                git=git,
                remote=remote,
                branch=branch,
                remedy=err.remedy,
            ) from None
        err.details.setdefault("branch", branch)
        raise
    if not moved:
        return None
    api_commits.fetch_published(git, remote, branch, _private_ref(remote, branch), tip=tip, local_tip=local_tip)
    return tip


def _finish(
    git: Git,
    change: PinChange,
    *,
    branch: str,
    base_branch: str,
    github: GitHubClient | None,
    base_sha: str,
    tip_sha: str | None,
    status: str,
    attempts: int,
    made: dict[str, tuple[str | None, str | None]],
    superseded: list[str],
) -> dict[str, Any]:
    """Report one processor; open/update its PR when the branch proposes something over the base.

    `tip_sha` is the bot branch's commit when it proposes something (None: nothing to propose),
    `made` what this run changed, `superseded` the bot commits dropped because the base won."""
    result: dict[str, Any] = {
        "ref": change.ref,
        "registry_path": change.registry_path,
        "branch": branch,
        "status": status,
        "commit": tip_sha if status == "pushed" else None,
        "attempts": attempts,
        "changes": {p: {"old": o, "new": n} for p, (o, n) in made.items()},
        "superseded": superseded,
        "pr": None,
    }
    if tip_sha is None:
        return result
    proposed = _diff_pins(
        pins_in_text(git.show(base_sha, change.registry_path)),
        pins_in_text(git.show(tip_sha, change.registry_path)),
    )
    result["proposed"] = {p: {"old": o, "new": n} for p, (o, n) in proposed.items()}
    if github is not None and proposed:
        try:
            url, outcome = github.open_or_update_pr(
                branch,
                base_branch,
                pr_title(change.ref, list(proposed)),
                pr_body(change.ref, change.registry_path, branch, proposed),
            )
        except TheoryDeployError as err:
            err.details.setdefault("branch", branch)
            err.details.setdefault("pushed", status == "pushed")
            raise
        result["pr"] = {"url": url, "result": outcome}
    return result


# ---------------------------------------------------------------------------------------------------
# From a work tree's pins to the PRs
# ---------------------------------------------------------------------------------------------------


def verify_proposed_pins(changes: list[PinChange]) -> None:
    """Ask the registry about every pin the PR would propose, exactly as `pin` does: a hand-edited
    registry.yaml must not get a digest the registry lacks, or one for the wrong platform, into review."""
    clients = RegistryClients(credentials_host=ImageRef.parse(changes[0].repository).registry if changes else None)
    try:
        for change in changes:
            for platform, (_old, new) in change.platforms.items():
                if new is None:
                    continue
                where = f"{change.registry_path} image.platforms.{platform}"
                candidate = verify_pin_candidate(
                    new, platform, clients, expected_repository=change.repository, where=where
                )
                if candidate.pin != new:
                    raise PlatformMismatchError(
                        f"{where}: {new} is a multi-platform index, not the linux/{platform} manifest "
                        f"({candidate.pin}).",
                        remedy=f"Pin the manifest: `processorctl pin --ref {change.ref} --platform {platform} --oci {new}`.",
                    )
                output.progress(f"verified {platform}: {new} is a linux/{platform} image manifest")
    finally:
        clients.close()


def _push_token_from_env() -> str | None:
    """The token to push with when no PR is opened (no API client is made): GITHUB_TOKEN or GH_TOKEN
    when set, or a GitHub App's installation token when its variables and GITHUB_REPOSITORY are."""
    app = ("GITHUB_APP_ID", "GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_INSTALLATION_ID", "GITHUB_REPOSITORY")
    if all(os.environ.get(name) for name in app):
        return GitHubClient.from_env().git_token()
    return os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN") or None


def propose_pins(
    processors: list[LoadedProcessor], *, base: str, remote: str = "origin", open_pr: bool = True
) -> dict[str, Any]:
    """Commit the work tree's pins of `processors` to their bot branches and open or update one PR
    each (only the branch, with `open_pr` False). Pins equal to the base branch's propose nothing."""
    not_an_option(remote, "remote", UsageError)
    not_an_option(base, "base branch", UsageError)
    changes: list[PinChange] = []
    repo_root = None
    for processor in processors:
        repo_root = processor.repo_root
        relative = processor.path.resolve().relative_to(processor.repo_root.resolve()).as_posix()
        # "old" is only for the commit message and PR body; what really changes is decided against
        # the freshly fetched base inside publish_pin_pr, where the pins are re-applied.
        before = pins_at(Git(processor.repo_root, timeout=30), f"{remote}/{base}", relative) or {}
        platforms: dict[str, tuple[str | None, str | None]] = {
            platform: (before.get(platform), pin)
            for platform, pin in processor.spec.pins().items()
            if pin is not None and before.get(platform) != pin
        }
        if platforms:
            changes.append(PinChange(str(processor.ref), relative, processor.spec.image.repository, platforms))
    if not changes or repo_root is None:
        return {"processors": [], "summary": "no pins differ from the base branch: nothing to commit, no PR"}
    verify_proposed_pins(changes)
    github = GitHubClient.from_env() if open_pr else None
    result = publish_pin_pr(
        repo_root,
        changes,
        remote=remote,
        base_branch=base,
        github=github,
        reapply=pin_reapplier(changes),
        git_token=None if open_pr else _push_token_from_env(),
    )
    urls = [p["pr"]["url"] for p in result["processors"] if p.get("pr")]
    result["pr_url"] = urls[0] if len(urls) == 1 else None
    result["pr_urls"] = urls
    return result
