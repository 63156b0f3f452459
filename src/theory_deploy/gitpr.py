"""Commit pins and open (or update) the one bot pull request per processor.

After `processorctl pin` has proven and written digests, `publish_pin_pr` puts them up for review:
one branch per processor, `theory-deploy/pin/<slug>` (`theory-deploy/pin/llm-litellm-v1`), one open
PR per branch, updated in place on every later pin. Nothing is ever pushed to the base branch, so
branch protection needs no bypass and no admin token (original item 12).

How a pin reaches the branch
----------------------------
1. `git ls-remote` + `git fetch` of the base branch and the bot branch into a private ref namespace
   (`refs/theory-deploy/...`, deleted again at the end), never into the user's branches. Shallow
   clones (actions/checkout's default) are deepened until base and bot branch share a merge base.
2. If the bot branch exists, every commit on it that is not on the base must be a bot commit: author
   *and* committer email equal to the bot identity *and* a `Theory-Deploy-Bot: pin` trailer. Any
   other commit (a human pushed a fix to the branch, someone pressed "Update branch") means the
   branch is never rewritten or pushed: if it already holds our pins the result is `unchanged`,
   otherwise PushConflictError names the commit.
3. A temporary `git worktree` (outside the repository, detached HEAD) is made at the bot branch tip
   (or the base tip when there is no bot branch), and the bot's commits are rebased onto the latest
   base. Commits already on the base (a squash-merged PR) drop out; if the base changed the same pin
   lines, the stale bot commits are dropped (`superseded` in the result) and the base wins.
4. `reapply(tree)` writes the pins into that fresh tree (the comment-preserving editor of
   registry_file). Pins are re-applied, not copied: copying the user's registry.yaml would also copy
   their unrelated uncommitted edits and would undo whatever the base changed in that file since the
   user's checkout.
5. Only that processor's registry.yaml is staged and committed, as the bot, with hooks disabled and
   signing off. A guard (`is_pin_only_change`) refuses to push a commit that changes anything but
   `image.platforms` lines.
6. `git push --force-with-lease=refs/heads/<branch>:<sha we based on>` (empty for a new branch). If
   another writer moved the branch in between, the lease is rejected; we fetch again, rebuild on the
   new tip (keeping the other writer's bot commits) and re-apply, at most `max_attempts` times.
7. The PR is found by head branch (open PRs only) and its title/body updated, or created. A create
   that races another job's create (422 "already exists") turns into an update: never two PRs.

Why the worktree and not a temporary index: the re-apply step needs real files of the *base*
revision to edit (the editor reads, validates and splices text), and the rebase in step 3 needs a
work tree. A worktree gives both without touching the user's HEAD, index or files: their dirty and
untracked files stay exactly as they were, uncommitted. Its cost is one checkout of the tree into a
temporary folder (git LFS smudging is skipped).

Loops (original item 11) and why a `[skip ci]` marker is not used
-----------------------------------------------------------------
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
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from . import secrets as _secrets
from .errors import (
    GitError,
    GitHubError,
    ProcessorNotFoundError,
    PushConflictError,
    TheoryDeployError,
    UsageError,
)
from .refs import ProcessorRef

BRANCH_PREFIX = "theory-deploy/pin/"
BOT_TRAILER_KEY = "Theory-Deploy-Bot"
BOT_TRAILER_VALUE = "pin"
BOT_TRAILER = f"{BOT_TRAILER_KEY}: {BOT_TRAILER_VALUE}"
DEFAULT_BOT_NAME = "theory-deploy[bot]"
DEFAULT_BOT_EMAIL = "theory-deploy[bot]@users.noreply.github.com"
DEFAULT_API_URL = "https://api.github.com"
REGISTRY_FILE = "registry.yaml"
PRIVATE_REF_PREFIX = "refs/theory-deploy/remotes"

_LOCAL_TIMEOUT_S = 120
_NETWORK_TIMEOUT_S = 300
_ZERO_SHA = re.compile(r"^0+$")
_LEASE_REJECTED = ("stale info", "cannot lock ref", "incorrect old value", "fetch first")


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
# Masking
# ---------------------------------------------------------------------------------------------------

_TOKEN_PATTERNS = (
    re.compile(r"\bgh[pousr]_[A-Za-z0-9_]{16,}"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),  # JWTs
    re.compile(r"(?i)(?<=authorization: )(?:token|bearer|basic) \S+"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs
    re.compile(r"(?<=x-access-token:)[^@\s]+"),
)


def mask_tokens(text: str, *secret_values: str | None) -> str:
    """Replace the given secret values and anything shaped like a GitHub token or JWT with `***`."""
    for value in sorted((v for v in secret_values if v), key=len, reverse=True):
        text = text.replace(value, "***")
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub("***", text)
    return _secrets.scrub(text)


# ---------------------------------------------------------------------------------------------------
# git plumbing
# ---------------------------------------------------------------------------------------------------

# Variables that would point git at another repository or index than the one we name.
_GIT_ENV_DROP = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_PREFIX",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
)


class _Git:
    """Runs git in one folder with a fixed, hook-free, prompt-free configuration."""

    def __init__(self, cwd: Path, identity: BotIdentity | None = None, hooks_dir: Path | None = None):
        self.cwd = cwd
        self.identity = identity
        self.hooks_dir = hooks_dir
        env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
        env.update(
            LC_ALL="C",
            LANGUAGE="C",
            GIT_TERMINAL_PROMPT="0",
            GCM_INTERACTIVE="never",
            GIT_LFS_SKIP_SMUDGE="1",
            GIT_OPTIONAL_LOCKS="0",
        )
        if identity is not None:
            env.update(
                GIT_AUTHOR_NAME=identity.name,
                GIT_AUTHOR_EMAIL=identity.email,
                GIT_COMMITTER_NAME=identity.name,
                GIT_COMMITTER_EMAIL=identity.email,
            )
        self.env = env

    def with_cwd(self, cwd: Path) -> _Git:
        return _Git(cwd, self.identity, self.hooks_dir)

    def run(
        self, *args: str, check: bool = True, network: bool = False, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = [
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            "-c",
            "log.showSignature=false",
            "-c",
            "rebase.updateRefs=false",
            "-c",
            "rebase.autoStash=false",
            "-c",
            "core.quotePath=false",
            "-c",
            "advice.detachedHead=false",
        ]
        if self.hooks_dir is not None:
            config += ["-c", f"core.hooksPath={self.hooks_dir}"]
        argv = ["git", *config, *args]
        try:
            proc = subprocess.run(
                argv,
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout or (_NETWORK_TIMEOUT_S if network else _LOCAL_TIMEOUT_S),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise GitError("git is not installed (no `git` on PATH).", remedy="Install git.") from exc
        except subprocess.TimeoutExpired as exc:
            raise GitError(
                f"`git {' '.join(args[:2])}` in {self.cwd} did not finish in {exc.timeout:.0f}s.",
                remedy="Check network access to the git remote and re-run; nothing was changed in your work tree.",
            ) from None
        if check and proc.returncode != 0:
            raise GitError(
                mask_tokens(
                    f"`git {' '.join(args)}` failed in {self.cwd} (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()}"
                )
            )
        return proc

    def out(self, *args: str, network: bool = False) -> str:
        return self.run(*args, network=network).stdout.strip()

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).returncode == 0

    def rev(self, spec: str) -> str | None:
        proc = self.run("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def blob(self, rev: str, path: str) -> str | None:
        proc = self.run("rev-parse", "--verify", "--quiet", f"{rev}:{path}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def show(self, rev: str, path: str) -> str | None:
        proc = self.run("show", f"{rev}:{path}", check=False)
        return proc.stdout if proc.returncode == 0 else None


def _private_ref(remote: str, branch: str) -> str:
    return f"{PRIVATE_REF_PREFIX}/{re.sub(r'[^A-Za-z0-9._-]+', '_', remote)}/{branch}"


def _fetch(git: _Git, remote: str, base_branch: str, branch: str) -> tuple[str, str | None]:
    """Fetch base and bot branch into private refs; return their shas (bot: None when absent)."""
    listing = git.out("ls-remote", remote, f"refs/heads/{base_branch}", f"refs/heads/{branch}", network=True)
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
    git.run(
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-recurse-submodules",
        remote,
        *refspecs,
        network=True,
    )
    base_sha = git.rev(base_ref)
    assert base_sha is not None
    bot_sha = git.rev(bot_ref) if len(refspecs) == 2 else None
    if bot_sha is None:
        git.run("update-ref", "-d", bot_ref, check=False)
    else:
        _ensure_merge_base(git, remote, refspecs, base_sha, bot_sha)
    return base_sha, bot_sha


def _ensure_merge_base(git: _Git, remote: str, refspecs: list[str], base_sha: str, bot_sha: str) -> None:
    """In a shallow clone the base and the bot branch may not meet: deepen until they do."""
    for deepen in ("--deepen=50", "--deepen=1000", "--unshallow"):
        if git.ok("merge-base", base_sha, bot_sha):
            return
        if git.out("rev-parse", "--is-shallow-repository") != "true":
            return  # unrelated histories: the foreign-commit check will say so
        git.run(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            deepen,
            remote,
            *refspecs,
            network=True,
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
        bot = identity.email.lower()
        return (
            self.author_email.lower() == bot
            and self.committer_email.lower() == bot
            and BOT_TRAILER_VALUE in [v.strip() for v in self.trailer.split(",")]
        )


def _commits(git: _Git, range_args: list[str]) -> list[_Commit]:
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
    git = _Git(Path(repo_dir))
    sha = git.rev(rev)
    if sha is None:
        raise GitError(f"{rev!r} is not a commit in {repo_dir}.", remedy="Fetch it first (fetch-depth: 2 or 0).")
    return _commits(git, ["-1", sha])[0].made_by(identity or BotIdentity.from_env())


@contextlib.contextmanager
def _worktree(git: _Git, rev: str, name: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="theory-deploy-pin-"))
    path = tmp / name
    try:
        git.run("worktree", "add", "--detach", "--quiet", str(path), rev)
        yield path
    finally:
        removed = git.run("worktree", "remove", "--force", str(path), check=False).returncode == 0
        shutil.rmtree(tmp, ignore_errors=True)
        if not removed:
            # Our admin entry is left pointing at a folder that is gone; prune drops such entries only.
            git.run("worktree", "prune", check=False)


# ---------------------------------------------------------------------------------------------------
# Reading pins and checking diffs
# ---------------------------------------------------------------------------------------------------


def _safe_load(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


def pins_in_text(text: str | None) -> dict[str, str | None]:
    """`image.platforms` of a registry.yaml text ({} when absent or unreadable)."""
    if not text:
        return {}
    try:
        doc = _safe_load(text)
    except YAMLError:
        return {}
    platforms = (doc.get("image") or {}).get("platforms") if isinstance(doc, dict) else None
    if not isinstance(platforms, dict):
        return {}
    return {str(k): (None if v is None else str(v)) for k, v in platforms.items()}


def _pin_lines(text: str) -> set[int] | None:
    """1-based line numbers holding `image.platforms` (its key line and every platform's key and
    value lines); None when the text has no such mapping or does not parse."""
    try:
        doc = YAML(typ="rt").load(text)
    except YAMLError:
        return None
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("image"), CommentedMap):
        return None
    image = doc["image"]
    if "platforms" not in image:
        return None
    lines = {image.lc.key("platforms")[0] + 1}
    platforms = image["platforms"]
    if isinstance(platforms, CommentedMap):
        for key in platforms:
            lines.add(platforms.lc.key(key)[0] + 1)
            lines.add(platforms.lc.value(key)[0] + 1)
            value = platforms[key]
            if value is not None and not isinstance(value, str):
                return None  # a nested structure under a platform is not a pin
    elif platforms is not None:
        return None
    return lines


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _changed_lines(diff: str) -> tuple[set[int], set[int]]:
    old: set[int] = set()
    new: set[int] = set()
    for line in diff.splitlines():
        match = _HUNK.match(line)
        if not match:
            continue
        a, b = int(match[1]), int(match[2]) if match[2] is not None else 1
        c, d = int(match[3]), int(match[4]) if match[4] is not None else 1
        old.update(range(a, a + b))
        new.update(range(c, c + d))
    return old, new


def _without_pins(text: str) -> Any:
    doc = _safe_load(text)
    if isinstance(doc, dict) and isinstance(doc.get("image"), dict):
        doc["image"].pop("platforms", None)
    return doc


def is_pin_only_change(repo_dir: Path, base_rev: str, head_rev: str) -> bool:
    """True when every file changed between the two revisions is a registry.yaml and every changed
    line (removed or added) is an `image.platforms` line, and the files mean the same once the pins
    are set aside. An empty diff counts as pin-only (nothing to build). A `base_rev` of all zeros
    (GitHub's `before` for a new branch) is never pin-only. Raises GitError when a revision is not in
    the clone (fetch it: a shallow checkout needs `fetch-depth: 2` or more).
    """
    if _ZERO_SHA.match(base_rev or "0"):
        return False
    git = _Git(Path(repo_dir))
    shas = []
    for rev in (base_rev, head_rev):
        sha = git.rev(rev)
        if sha is None:
            raise GitError(
                f"{rev!r} is not a commit in {repo_dir}.",
                remedy="Fetch enough history for both revisions "
                "(actions/checkout `fetch-depth: 0`, or fetch the `before` sha).",
            )
        shas.append(sha)
    base, head = shas
    listing = git.out("diff", "--no-renames", "--no-ext-diff", "--name-status", "-z", base, head)
    fields = [f for f in listing.split("\0") if f]
    entries = list(zip(fields[0::2], fields[1::2], strict=False))
    for status, path in entries:
        if status != "M" or Path(path).name != REGISTRY_FILE:
            return False
        old_text, new_text = git.show(base, path), git.show(head, path)
        if old_text is None or new_text is None:
            return False
        old_lines, new_lines = _pin_lines(old_text), _pin_lines(new_text)
        if old_lines is None or new_lines is None:
            return False
        diff = git.out("diff", "--no-ext-diff", "--no-textconv", "--no-color", "-U0", base, head, "--", path)
        removed, added = _changed_lines(diff)
        if not removed <= old_lines or not added <= new_lines:
            return False
        try:
            if _without_pins(old_text) != _without_pins(new_text):
                return False
        except YAMLError:
            return False
    return True


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
# GitHub
# ---------------------------------------------------------------------------------------------------

_REMEDY_BY_STATUS = {
    401: "The GitHub token is invalid or expired: set GITHUB_TOKEN (or the GITHUB_APP_* variables) to a valid one.",
    403: (
        "The token may not do this: it needs contents: write and pull-requests: write. With GITHUB_TOKEN, "
        "also enable Settings > Actions > General > "
        "'Allow GitHub Actions to create and approve pull requests'."
    ),
    404: "Repository not found or not visible to the token: check GITHUB_REPOSITORY (owner/name) and GITHUB_API_URL.",
    422: "GitHub refused the request as invalid: check that the pin branch was pushed and that the base branch exists.",
}


class GitHubClient:
    """The few pull-request calls the pin bot needs, over PyGithub, with typed errors and no token leaks."""

    def __init__(
        self,
        repository: str,
        *,
        token: str | None = None,
        app_id: int | str | None = None,
        app_private_key: str | None = None,
        installation_id: int | str | None = None,
        base_url: str = DEFAULT_API_URL,
        timeout: int = 15,
        retries: int = 3,
        seconds_between_requests: float | None = 0.25,
        seconds_between_writes: float | None = 1.0,
    ) -> None:
        from github import Auth, Github
        from github.GithubRetry import GithubRetry

        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repository or ""):
            raise GitHubError(
                f"GITHUB_REPOSITORY {repository!r} is not owner/name.",
                remedy="Set GITHUB_REPOSITORY=owner/name (GitHub Actions sets it for you).",
            )
        self.repository = repository
        self.owner = repository.split("/", 1)[0]
        self.base_url = (base_url or DEFAULT_API_URL).rstrip("/")
        self._secrets: list[str] = []
        auth: Any
        if token:
            self._secrets.append(token)
            auth = Auth.Token(token)
            self.auth_kind = "token"
        elif app_id and app_private_key and installation_id:
            self._secrets.append(app_private_key)
            try:
                auth = Auth.AppAuth(int(app_id), app_private_key).get_installation_auth(int(installation_id))
            except (ValueError, TypeError) as exc:
                raise GitHubError(
                    "GITHUB_APP_ID and GITHUB_APP_INSTALLATION_ID must be numbers.",
                    remedy="Copy them from the GitHub App's settings page and its installation URL.",
                ) from exc
            self.auth_kind = "app"
        else:
            raise GitHubError(
                "No GitHub credentials: GITHUB_TOKEN is not set (nor GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY "
                "and GITHUB_APP_INSTALLATION_ID).",
                remedy="In a workflow pass `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}` "
                "(permissions: contents: write, pull-requests: write), or the GitHub App's variables.",
            )
        if token:
            _secrets.register_secret_value(token)
        self._gh = Github(
            base_url=self.base_url,
            auth=auth,
            timeout=timeout,
            retry=GithubRetry(total=retries) if retries else None,
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
            user_agent="theory-deploy",
        )
        self._repo: Any = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> GitHubClient:
        env = os.environ if environ is None else environ
        repository = env.get("GITHUB_REPOSITORY", "")
        if not repository:
            raise GitHubError(
                "GITHUB_REPOSITORY is not set.",
                remedy="Set GITHUB_REPOSITORY=owner/name (GitHub Actions sets it for you).",
            )
        app = (
            env.get("GITHUB_APP_ID"),
            env.get("GITHUB_APP_PRIVATE_KEY"),
            env.get("GITHUB_APP_INSTALLATION_ID"),
        )
        token = None if all(app) else (env.get("GITHUB_TOKEN") or env.get("GH_TOKEN"))
        return cls(
            repository,
            token=token,
            app_id=app[0],
            app_private_key=app[1],
            installation_id=app[2],
            base_url=env.get("GITHUB_API_URL") or DEFAULT_API_URL,
            **kwargs,
        )

    # --- error handling ---------------------------------------------------------------------------
    def _error(self, action: str, exc: BaseException) -> GitHubError:
        from github import GithubException

        status: int | None = None
        if isinstance(exc, GithubException):
            status = exc.status
            data = exc.data if isinstance(exc.data, dict) else {}
            message = str(data.get("message") or exc.message or "").strip()
            extra = [str(e.get("message") or e.get("code")) for e in data.get("errors", []) if isinstance(e, dict)]
            if extra:
                message = f"{message} ({'; '.join(extra)})"
            text = f"GitHub {action} for {self.repository} failed: HTTP {status}: {message or 'no message'}."
            remedy = _REMEDY_BY_STATUS.get(
                status or 0,
                "GitHub answered with an error: check https://www.githubstatus.com and re-run (re-runs are safe).",
            )
        else:
            text = f"GitHub {action} for {self.repository}: cannot reach {self.base_url} ({type(exc).__name__}: {exc})."
            remedy = "Check network access to GITHUB_API_URL and re-run (re-runs are safe)."
        err = GitHubError(mask_tokens(text, *self._secrets), remedy=remedy, details={"status": status})
        err.status = status  # type: ignore[attr-defined]
        return err

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        import requests
        from github import GithubException

        try:
            return fn()
        except (GithubException, requests.exceptions.RequestException) as exc:
            raise self._error(action, exc) from None

    def _repository(self) -> Any:
        if self._repo is None:
            self._repo = self._call("repository lookup", lambda: self._gh.get_repo(self.repository))
        return self._repo

    # --- pull requests ----------------------------------------------------------------------------
    def find_open_prs(self, branch: str) -> list[Any]:
        repo = self._repository()
        pulls = self._call(
            "pull request lookup",
            lambda: list(repo.get_pulls(state="open", head=f"{self.owner}:{branch}")),
        )
        return sorted((p for p in pulls if p.head.ref == branch), key=lambda p: p.number)

    def open_or_update_pr(self, branch: str, base: str, title: str, body: str) -> tuple[str, str]:
        """Return (html_url, "created" | "updated" | "unchanged"). Never opens a second PR for a branch."""
        for _ in range(2):
            existing = self.find_open_prs(branch)
            if existing:
                pr = existing[0]
                if pr.title == title and _norm(pr.body) == _norm(body):
                    return pr.html_url, "unchanged"
                self._call(f"update of PR #{pr.number}", partial(pr.edit, title=title, body=body))
                return pr.html_url, "updated"
            repo = self._repository()
            try:
                pr = self._call(
                    "pull request creation",
                    partial(repo.create_pull, base=base, head=branch, title=title, body=body),
                )
            except GitHubError as err:
                if getattr(err, "status", None) == 422 and "already exists" in err.message:
                    continue  # another job created it between our lookup and create: update that one
                raise
            return pr.html_url, "created"
        raise GitHubError(f"GitHub reported an open PR for {branch} but none could be found.")


def _norm(text: str | None) -> str:
    return (text or "").replace("\r\n", "\n").strip()


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
) -> dict[str, Any]:
    """Commit and push each processor's pins to its bot branch and open/update its PR.

    `reapply(tree)` must write the pins into the registry.yaml files under `tree` (a fresh checkout of
    the branch being built) and return what it changed; it is called once per attempt.
    `before_push(ref, attempt)` runs just before each push (a seam for tests and progress output).
    Returns {"processors": [...], "summary": str}; each entry has ref, branch, status ("pushed" |
    "unchanged"), commit, attempts, changes, superseded and pr ({"url", "result"} or None).
    Processors are handled one after another; a failure raises and leaves earlier ones published
    (re-running is safe: published pins come back `unchanged`).
    """
    repo_dir = Path(repo_dir).resolve()
    if max_attempts < 1:
        raise UsageError("max_attempts must be at least 1.")
    base_branch = base_branch.removeprefix("refs/heads/")
    identity = BotIdentity.from_env()
    probe = _Git(repo_dir)
    top = probe.run("rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise GitError(f"{repo_dir} is not inside a git repository.", remedy="Run from a clone of your repository.")
    grouped = _group(changes)
    hooks = Path(tempfile.mkdtemp(prefix="theory-deploy-nohooks-"))
    try:
        git = _Git(Path(top.stdout.strip()), identity, hooks)
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
            )
            for change in grouped.values()
        ]
    finally:
        shutil.rmtree(hooks, ignore_errors=True)
        # Leave no refs behind: the private fetch refs only served this run.
        for name in {base_branch, *(pin_branch(r) for r in grouped)}:
            probe.run("update-ref", "-d", _private_ref(remote, name), check=False)
    lines = []
    for r in results:
        pr = f", PR {r['pr']['result']}: {r['pr']['url']}" if r["pr"] else ""
        lines.append(f"{r['ref']}: {r['status']} on {r['branch']}{pr}")
    return {"processors": results, "summary": "\n".join(lines) or "no processors to publish"}


def _publish_one(
    git: _Git,
    change: PinChange,
    *,
    remote: str,
    base_branch: str,
    github: GitHubClient | None,
    reapply: Callable[[Path], list[PinChange]],
    max_attempts: int,
    identity: BotIdentity,
    before_push: Callable[[str, int], None] | None,
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
                return _finish(
                    git,
                    change,
                    branch,
                    base_branch,
                    remote,
                    github,
                    base_sha,
                    bot_sha if pending else None,
                    "unchanged",
                    attempt,
                    {},
                    superseded,
                )
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
            return _finish(
                git,
                change,
                branch,
                base_branch,
                remote,
                github,
                base_sha,
                new_sha,
                "pushed",
                attempt,
                made,
                superseded,
            )
        output = f"{pushed.stdout}\n{pushed.stderr}"
        if not any(marker in output for marker in _LEASE_REJECTED):
            raise GitError(
                mask_tokens(f"pushing {branch} to {remote} failed: {output.strip()}"),
                remedy="Check that the token may push branches (contents: write) and read git's message.",
            )
        last_seen = bot_sha
    raise PushConflictError(
        f"{remote}/{branch} kept moving while {ref} was being pinned ({max_attempts} attempts; last based on "
        f"{(last_seen or 'no branch')[:12]}); nothing of ours was pushed.",
        details={"branch": branch, "attempts": max_attempts},
    )


def _finish(
    git: _Git,
    change: PinChange,
    branch: str,
    base_branch: str,
    remote: str,
    github: GitHubClient | None,
    base_sha: str,
    tip_sha: str | None,
    status: str,
    attempts: int,
    made: dict[str, tuple[str | None, str | None]],
    superseded: list[str],
) -> dict[str, Any]:
    """Report one processor; open/update its PR when the branch proposes something over the base."""
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
