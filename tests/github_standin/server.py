"""A stand-in for the parts of GitHub theory-deploy talks to: the REST calls PyGithub makes for the
bot-PR step and the drift report, and the git side (smart HTTP) the bot pushes its branches to.

It refuses what GitHub refuses, per docs.github.com (REST reference: pulls, branch protection,
pagination) and, where the docs are silent, per GitHub's observed answers; each such assumption is
marked "Assumption" below.

Git over smart HTTP
-------------------
The repository is served at `<url>/<owner>/<repo>.git` (and, as GitHub does, without `.git`) by
`git http-backend`, run as a CGI subprocess per request (GIT_PROJECT_ROOT, GIT_HTTP_EXPORT_ALL,
PATH_INFO, REQUEST_METHOD, QUERY_STRING, CONTENT_TYPE, CONTENT_LENGTH, REMOTE_USER; request bodies,
chunked or not, are streamed to it, its answer is streamed back chunked). Only the smart protocol
is served (`info/refs?service=...`, `git-upload-pack`, `git-receive-pack`); any other path is 404.
The bare repository is `git_remote` when given, else one the stand-in makes (removed by `stop()`).

- Authentication is HTTP Basic whose password is a known token (GitHub's `x-access-token:<token>`,
  what actions/checkout persists as `http.<server>.extraheader`; any user name is accepted), or the
  token as user name with an empty or `x-oauth-basic` password. Pushes (`git-receive-pack`) always
  need it, fetches too while the repository is private (`private=True`, the default). Otherwise:
  401 with `WWW-Authenticate: Basic realm="GitHub"`. An authenticated request gets REMOTE_USER, the
  Basic user name (http-backend enables receive-pack only with REMOTE_USER, as documented).
- Branch protection: `protect(pattern, require_pull_request=True, required_approving_review_count=0,
  allow_force_pushes=False, allow_deletions=False)`; patterns are GitHub's fnmatch (Ruby's, with
  FNM_PATHNAME: `*` and `?` stop at `/`, only a segment's leading `**/` crosses it, so `qa/**/*`
  covers `qa/a/b` and `qa/**` does not), an exact name wins over a pattern. A pre-receive hook
  (tests/github_standin/hook.py, installed in the bare repository by `start()`) refuses, as GitHub
  does, with
  `remote: error: GH006: Protected branch update failed for refs/heads/<branch>.` and then the
  reason: `Changes must be made through a pull request.` (any update, when PRs are required),
  `Cannot force-push to this branch` (non-fast-forward), `Cannot delete this branch`. Assumption:
  the whole push is refused when one ref is (git's pre-receive is all or nothing); git then reports
  `(pre-receive hook declined)` where GitHub says `(protected branch hook declined)`. Every ref
  update the hook sees is logged in `pushes` (ref, old, new, user, refused reason or None).
  Writes made straight into the bare repository on disk (a test acting as the repository's admin,
  or `commit()`) are not checked: only pushes through the HTTP server carry the hook's state.
- Git requests are recorded in `git_requests` (method, path, service, user, status), apart from the
  REST `requests`.

REST endpoints (JSON shaped like api.github.com's, as far as PyGithub reads it)
------------------------------------------------------------------------------
- `GET  /repos/{o}/{r}`
- `GET  /repos/{o}/{r}/branches/{branch}` -> 404 "Branch not found"
- `GET  /repos/{o}/{r}/branches/{branch}/protection` -> 404 "Branch not protected" when no rule
  covers it (404 "Branch not found" for no such branch). Assumption: every known token may read it
  (GitHub needs admin rights, and answers 404 otherwise).
- `GET  /repos/{o}/{r}/pulls?state=&head=&base=&sort=&direction=&per_page=&page=` -> pull-request
  "simple" objects (no `merged`/`mergeable`, as documented). `head` must be `owner:branch`: a value
  without the owner is ignored, as GitHub silently does. Sorted by `created` (or `updated`), `desc`
  by default when sort is created or absent, else `asc`; popularity/long-running sort as created.
- `POST /repos/{o}/{r}/pulls` -> 201; 422 "Validation Failed" with GitHub's `errors` when: the title
  (or head, base) is missing or blank (`missing_field`); the base branch does not exist (`base`
  `invalid`); the head branch does not exist, or names another owner (`head` `invalid`); head equals
  base or has no commits over it (custom "No commits between <base> and <head>"); an open PR for the
  same head and base exists (custom "A pull request already exists for <owner>:<head>.").
- `GET  /repos/{o}/{r}/pulls/{n}` -> the full object, with `merged`, `mergeable`, `mergeable_state`.
  Assumption: mergeability is computed synchronously (`git merge-tree`), never `null` first as
  GitHub's background job gives it: open PR -> `mergeable` true/false and `mergeable_state`
  `clean`, `blocked` (protection wants more approvals) or `dirty` (conflict); closed, merged or
  headless PR -> `null` / `unknown`. `merge_commit_sha` is null until merged (GitHub shows a test
  merge commit there for open PRs).
- `PATCH /repos/{o}/{r}/pulls/{n}` -> title, body, base, state; 422 when: `state` is not open/closed
  (`state` `invalid`); `base` is sent for a closed PR or together with `state: closed` ("Cannot
  change the base branch of a closed pull request.", `base` `invalid`; assumption: nothing of that
  request is applied); `base` names no branch; reopening a merged PR, or one whose head branch was
  deleted ("state cannot be changed. The <head> branch has been deleted.") or force-pushed since
  the PR was closed ("... was force-pushed or recreated."), or while another open PR has the same
  head and base; a blank title (assumption, as for issues).
- `PUT  /repos/{o}/{r}/pulls/{n}/merge` {merge_method, sha, commit_title, commit_message} -> 200
  {"sha", "merged": true, "message": "Pull Request successfully merged"}, a real merge in the bare
  repository: `merge` makes a merge commit (never a fast-forward, as GitHub's button), `squash` one
  commit on the base, `rebase` replays each commit (new committer, new shas, as GitHub always does).
  405 "Pull Request is not mergeable" for a conflict, a closed or merged PR, or a missing head or
  base branch; 405 "At least N approving review(s) ... required by reviewers with write access."
  when the base's protection wants more approvals than `approve()` gave; 409 "Head branch was
  modified. Review and try the merge again." when `sha` is not the head's tip; 405 "Base branch was
  modified. Review and try the merge again." when the base moved between the merge's read of its
  tip and its update (the ref update is a compare-and-swap: the other write is kept); 422 for
  another merge_method. Afterwards the PR is closed with merged=true, merged_at and merge_commit_sha.
  Merges are the stand-in's own writes: protection's push rules do not apply to them (as on GitHub).
- `GET  /repos/{o}/{r}/pulls/{n}/merge` -> 204 when merged, 404 otherwise.
- `GET  /repos/{o}/{r}/issues?state=&labels=a,b&per_page=&page=` (every label must match; newest first)
- `POST /repos/{o}/{r}/issues` -> 201; 422 without a title or with labels not a list of strings
- `GET  /repos/{o}/{r}/issues/{n}` -> 404 for an unknown issue
- `PATCH /repos/{o}/{r}/issues/{n}` -> title, body, state, state_reason, labels; 404 for an unknown
  issue, 422 for another state or reason
- `POST /repos/{o}/{r}/issues/{n}/comments` -> 201; 404 unknown issue, 422 empty body
- `POST /app/installations/{id}/access_tokens` -> a fresh installation token (needs a Bearer JWT
  signed by the configured app key)
- The Git database, and the signing of commits made through it (tests/github_standin/gitdata.py
  says what is documented, what is assumed, and each refusal): `POST /git/blobs`, `POST /git/trees`
  (`base_tree`), `POST /git/commits` (signed, `verification.verified: true`, only for a bot token
  and no custom author/committer/signature), `GET /git/commits/{sha}`, `GET /commits/{ref}`,
  `GET /git/ref/heads/{branch}`, `POST /git/refs`, `PATCH /git/refs/heads/{branch}` (`force`), and
  GraphQL `POST /graphql` with the `updateRefs` mutation only (`beforeOid`: the compare-and-swap).
  Commits that arrived by `git push` are never reported verified. Test helpers: `api_commits`,
  `ref_updates` (API ref writes), `verification(sha)`.

Pagination: when a list does not fit on one page, `Link` carries `prev`/`next`/`last`/`first` URLs
that repeat every query parameter of the request (state, head, base, labels, sort, direction,
per_page, ...) in the same order, with only `page` changed (added last when absent). per_page is
1..100 (default 30).

Issues and pull requests share one number sequence, as on GitHub (unlike GitHub, pull requests
carry no labels here and are not listed among the issues). Reviews: `approve(n, by=...)` records an
approval (no REST endpoint: every token acts as the PR's author here, and GitHub forbids approving
one's own PR).

Every REST request needs `Authorization: token X` or `Bearer X` with a known token (401 "Bad
credentials" otherwise) and is recorded in `requests` (method, path, query, headers, JSON body,
status answered), including refused ones, so tests can prove what PyGithub sent and how often.

Faults: `tamper_next_blobs(times=1)` stores the next blobs with a byte appended (content changed on
the way). `fail_next(status, message, method=None, headers=None, applied=False, times=1)` makes the
next REST request(s) (of that method) fail with that status, message and headers (e.g.
`{"Retry-After": "1"}` for a secondary rate limit). With `applied=True` the request is carried out
first and only its answer is replaced: a write that happened although the client saw an error, as
when GitHub's front end times out after the back end acted. `before_next(action, method=None)` runs
`action` just before the next REST request is handled: another client's write (e.g. `open_pull`)
landing between two of the client's own requests.

Test helpers that act as the repository's admin or another client, outside the HTTP API: `commit`
(a commit written straight into the bare repository), `delete_branch`, `open_pull`, `approve`,
`protect`/`unprotect`. `clear_requests()` forgets `requests`, `git_requests` and `pushes`.

State lives in memory and is guarded by one re-entrant lock (git requests run outside it: git
locks its refs itself).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from . import gitdata
from .hook import ZERO, rule_for

DOCS = "https://docs.github.com/rest"
HOOK_MARK = "# github-standin pre-receive hook"
GIT_SERVICES = ("git-upload-pack", "git-receive-pack")
MERGER = ("GitHub", "noreply@github.com")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class GitRequest:
    method: str
    path: str  # the part after /<owner>/<repo>.git, e.g. /info/refs or /git-receive-pack
    service: str  # git-upload-pack (fetch) or git-receive-pack (push)
    user: str | None  # the Basic user name when authenticated
    status: int = 0


@dataclass
class Protection:
    """One branch-protection rule, in the terms of GitHub's branch protection settings."""

    require_pull_request: bool = True
    required_approving_review_count: int = 0
    allow_force_pushes: bool = False
    allow_deletions: bool = False


@dataclass
class _Failure:
    status: int
    message: str
    method: str | None
    headers: dict[str, str] = field(default_factory=dict)
    applied: bool = False


@dataclass
class StandInState:
    owner: str
    repo: str
    tokens: set[str]
    app_id: int | None = None
    app_public_key: Any = None  # a cryptography public key; JWTs must verify against it
    installation_id: int | None = None
    git_remote: Path | None = None  # the bare repository given by the test, if any
    git_dir: Path | None = None  # the bare repository served (git_remote or one of our own)
    state_dir: Path | None = None  # protection.json and pushes.jsonl, shared with the hook
    private: bool = True
    protection: dict[str, Protection] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)  # {"issue": number, "body": ...}
    requests: list[RecordedRequest] = field(default_factory=list)
    git_requests: list[GitRequest] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    before: list[tuple[str | None, Callable[[], None]]] = field(default_factory=list)
    # Re-entrant: a `before_next` action runs under the lock and may call the helpers that take it.
    lock: threading.RLock = field(default_factory=threading.RLock)
    next_number: int = 1
    app_tokens: set[str] = field(default_factory=set)  # installation tokens minted for the App
    # Commits the stand-in made and signed through the API: sha -> (signature, payload, verified_at).
    signed_commits: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    api_commits: list[str] = field(default_factory=list)  # every commit made through the API, in order
    ref_updates: list[dict[str, str]] = field(default_factory=list)  # REST/GraphQL ref writes: ref, old, new, via
    tamper_blobs: int = 0  # a fault: the next N POST /git/blobs store other bytes than were sent

    def add_pull(self, head: str, base: str, title: str, body: str | None, head_sha: str) -> dict[str, Any]:
        now = _now()
        pr = {
            "number": self.next_number,
            "state": "open",
            "title": title,
            "body": body,
            "head": head,
            "base": base,
            "head_sha": head_sha,
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
            "closed_head_sha": None,
            "merged": False,
            "merged_at": None,
            "merge_commit_sha": None,
            "approvals": [],
        }
        self.next_number += 1
        self.pulls.append(pr)
        return pr

    # --- git in the bare repository (the stand-in's own reads and writes) -------------------------
    def git(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        assert self.git_dir is not None, "start() the stand-in first"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        full_env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", **(env or {}))
        if cwd is None:
            full_env["GIT_DIR"] = str(self.git_dir)
        proc = subprocess.run(
            ["git", "-c", "core.hooksPath=/dev/null", *args],
            cwd=cwd or self.git_dir,
            env=full_env,
            capture_output=True,
            text=True,
            check=False,
            input=input,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def refs(self) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/heads").stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def rule(self, branch: str) -> Protection | None:
        found = rule_for({k: asdict(v) for k, v in self.protection.items()}, branch)
        return Protection(**found) if found is not None else None

    def write_protection(self) -> None:
        assert self.state_dir is not None
        data = {k: asdict(v) for k, v in self.protection.items()}
        (self.state_dir / "protection.json").write_text(json.dumps(data), encoding="utf-8")


class GitHubStandIn:
    """Run with `with GitHubStandIn(tokens={"t"}) as gh: Github(base_url=gh.url, ...)`; git at `gh.git_url`."""

    def __init__(
        self,
        *,
        owner: str = "acme",
        repo: str = "processors",
        tokens: set[str] | None = None,
        git_remote: Path | None = None,
        private: bool = True,
        app_id: int | None = None,
        app_public_key: Any = None,
        installation_id: int | None = None,
    ) -> None:
        self.state = StandInState(
            owner=owner,
            repo=repo,
            tokens=set(tokens or ()),
            app_id=app_id,
            app_public_key=app_public_key,
            installation_id=installation_id,
            git_remote=Path(git_remote) if git_remote is not None else None,
            private=private,
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._hook: Path | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> GitHubStandIn:
        state = self.state
        state.state_dir = Path(tempfile.mkdtemp(prefix="github-standin-"))
        if state.git_remote is not None:
            state.git_dir = state.git_remote.resolve()
        else:
            state.git_dir = state.state_dir / "repos" / f"{state.repo}.git"
            state.git_dir.parent.mkdir()
            subprocess.run(
                ["git", "init", "--quiet", "--bare", "-b", "main", str(state.git_dir)], check=True, capture_output=True
            )
        state.write_protection()
        self._install_hook()

        class Handler(_Handler):
            standin_state = state

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # serve_forever() polls, then accepts. A connection that is gone by then (reset by its client,
        # or taken by a thread left over from another test that still accepts on a reused descriptor)
        # would block a blocking accept() for good, and stop() with it. Non-blocking, such an accept
        # raises, serve_forever() ignores it and polls again; each accepted connection is blocking.
        self._server.socket.setblocking(False)
        # A short poll: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="github-standin", daemon=True
        )
        self._thread.start()
        return self

    def _install_hook(self) -> None:
        assert self.state.git_dir is not None
        hooks = self.state.git_dir / "hooks"
        hooks.mkdir(exist_ok=True)
        hook = hooks / "pre-receive"
        if hook.exists() and HOOK_MARK not in hook.read_text(errors="replace"):
            raise RuntimeError(f"{hook} exists and is not the stand-in's; refusing to replace it")
        script = Path(__file__).with_name("hook.py")
        hook.write_text(f'#!/bin/sh\n{HOOK_MARK}\nexec "{sys.executable}" "{script}" "$@"\n', encoding="utf-8")
        hook.chmod(0o755)
        self._hook = hook

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._hook is not None:
            self._hook.unlink(missing_ok=True)  # a test's own bare repository is left as it was given
            self._hook = None
        if self.state.state_dir is not None:
            shutil.rmtree(self.state.state_dir, ignore_errors=True)
            self.state.state_dir = None

    def __enter__(self) -> GitHubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def git_url(self) -> str:
        return f"{self.url}/{self.state.owner}/{self.state.repo}.git"

    @property
    def git_dir(self) -> Path:
        assert self.state.git_dir is not None, "start() the stand-in first"
        return self.state.git_dir

    @staticmethod
    def extraheader(token: str, user: str = "x-access-token") -> str:
        """The `http.<url>.extraheader` value actions/checkout persists for a token."""
        basic = base64.b64encode(f"{user}:{token}".encode()).decode()
        return f"AUTHORIZATION: basic {basic}"

    # --- test helpers ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def git_requests(self) -> list[GitRequest]:
        with self.state.lock:
            return list(self.state.git_requests)

    @property
    def pushes(self) -> list[dict[str, Any]]:
        """Every ref update the pre-receive hook saw over HTTP: {ref, old, new, user, refused}."""
        assert self.state.state_dir is not None
        log = self.state.state_dir / "pushes.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]

    @property
    def pulls(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(p) for p in self.state.pulls]

    @property
    def issues(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(i, labels=list(i["labels"])) for i in self.state.issues]

    @property
    def comments(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(c) for c in self.state.comments]

    @property
    def api_commits(self) -> list[str]:
        """Every commit made through the REST API (POST /git/commits), oldest first."""
        with self.state.lock:
            return list(self.state.api_commits)

    @property
    def ref_updates(self) -> list[dict[str, str]]:
        """Every ref write made through the API (REST or GraphQL): {ref, old, new, via}."""
        with self.state.lock:
            return [dict(u) for u in self.state.ref_updates]

    def verification(self, sha: str) -> dict[str, Any]:
        """What GET /commits/{sha} reports as the commit's `verification`."""
        with self.state.lock:
            return gitdata.verification(self.state, sha)

    def clear_requests(self) -> None:
        """Forget the recorded REST and git requests and the hook's push log."""
        with self.state.lock:
            self.state.requests.clear()
            self.state.git_requests.clear()
            if self.state.state_dir is not None:
                (self.state.state_dir / "pushes.jsonl").unlink(missing_ok=True)

    def fail_next(
        self,
        status: int,
        message: str,
        *,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        applied: bool = False,
        times: int = 1,
    ) -> None:
        with self.state.lock:
            for _ in range(times):
                self.state.failures.append(_Failure(status, message, method, dict(headers or {}), applied))

    def tamper_next_blobs(self, times: int = 1) -> None:
        """A fault no real answer shows: the next `times` blobs are stored with a byte appended (a
        server, or a proxy, that changed the content), so the client's own sha check must catch it."""
        with self.state.lock:
            self.state.tamper_blobs += times

    def before_next(self, action: Callable[[], None], *, method: str | None = None) -> None:
        """Run `action` just before the next REST request (of `method`) is handled, under the lock:
        another client's write landing between two of ours (e.g. `open_pull` before our create)."""
        with self.state.lock:
            self.state.before.append((method, action))

    def open_pull(self, head: str, base: str, title: str, body: str = "") -> int:
        """Open a PR as another client would have (no HTTP, no checks but that both branches exist)."""
        with self.state.lock:
            refs = self.state.refs()
            assert head in refs and base in refs, f"{head} and {base} must exist"
            return int(self.state.add_pull(head, base, title, body, refs[head])["number"])

    def add_token(self, token: str) -> None:
        with self.state.lock:
            self.state.tokens.add(token)

    def protect(
        self,
        branch: str,
        *,
        require_pull_request: bool = True,
        required_approving_review_count: int = 0,
        allow_force_pushes: bool = False,
        allow_deletions: bool = False,
    ) -> None:
        with self.state.lock:
            self.state.protection[branch] = Protection(
                require_pull_request, required_approving_review_count, allow_force_pushes, allow_deletions
            )
            self.state.write_protection()

    def unprotect(self, branch: str) -> None:
        with self.state.lock:
            self.state.protection.pop(branch, None)
            self.state.write_protection()

    def approve(self, number: int, by: str = "reviewer") -> None:
        with self.state.lock:
            pr = next(p for p in self.state.pulls if p["number"] == number)
            if by not in pr["approvals"]:
                pr["approvals"].append(by)

    def commit(self, branch: str, files: dict[str, str], message: str = "change", *, parent: str | None = None) -> str:
        """Write a commit on `branch` straight into the bare repository (an admin's write: no hook).

        It goes on top of `parent` (a branch or sha), else the branch's tip, else it is a root commit."""
        st = self.state
        with st.lock, tempfile.TemporaryDirectory() as tmp:
            env = {
                "GIT_INDEX_FILE": str(Path(tmp) / "index"),
                "GIT_AUTHOR_NAME": "Hu Man",
                "GIT_AUTHOR_EMAIL": "human@example.com",
                "GIT_COMMITTER_NAME": "Hu Man",
                "GIT_COMMITTER_EMAIL": "human@example.com",
            }
            base = st.refs().get(branch) if parent is None else st.git("rev-parse", "--verify", parent).stdout.strip()
            if base:
                st.git("read-tree", base, env=env)
            for path, text in files.items():
                blob = st.git("hash-object", "-w", "--stdin", input=text).stdout.strip()
                st.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
            tree = st.git("write-tree", env=env).stdout.strip()
            sha = st.git("commit-tree", tree, *(["-p", base] if base else []), "-m", message, env=env).stdout.strip()
            st.git("update-ref", f"refs/heads/{branch}", sha)
            return sha

    def delete_branch(self, branch: str) -> None:
        with self.state.lock:
            self.state.git("update-ref", "-d", f"refs/heads/{branch}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


class _Handler(BaseHTTPRequestHandler):
    standin_state: StandInState
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per answer

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    # --- plumbing --------------------------------------------------------------------------------
    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        override: _Failure | None = getattr(self, "_override", None)
        if override is not None:  # an `applied` fault: the work is done, the answer is lost
            self._override = None
            status, headers = override.status, override.headers
            payload = {"message": override.message, "documentation_url": DOCS, "status": str(override.status)}
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-GitHub-Request-Id", secrets.token_hex(8))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self._record.status = status

    def _error(self, status: int, message: str, **extra: Any) -> None:
        self._send(status, {"message": message, "documentation_url": DOCS, "status": str(status), **extra})

    def _invalid(self, *errors: dict[str, Any]) -> None:
        self._error(422, "Validation Failed", errors=list(errors))

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _route(self, method: str) -> None:
        st = self.standin_state
        parts = urlsplit(self.path)
        match = re.fullmatch(rf"/{re.escape(st.owner)}/{re.escape(st.repo)}(?:\.git)?(/.*)", parts.path)
        if match:
            return self._git_http(method, match[1], parts.query)
        self._handle(method, parts.path, parts.query)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    # --- git over smart HTTP ---------------------------------------------------------------------
    def _basic_user(self) -> str | None:
        """The user name of a Basic credential carrying a known token, else None."""
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        tokens = self.standin_state.tokens
        if password in tokens or (user in tokens and password in ("", "x-oauth-basic")):
            return user
        return None

    def _git_http(self, method: str, sub: str, query: str) -> None:
        st = self.standin_state
        params = dict(parse_qsl(query))
        if method == "GET" and sub == "/info/refs" and params.get("service") in GIT_SERVICES:
            service = params["service"]
        elif method == "POST" and sub.lstrip("/") in GIT_SERVICES:
            service = sub.lstrip("/")
        else:
            service = ""
        with st.lock:
            user = self._basic_user()
            record = GitRequest(method, sub, service, user)
            st.git_requests.append(record)
        if not service:  # GitHub serves the smart protocol only
            self._drain_body()
            return self._plain(record, 404, "Not Found\n")
        if user is None and (service == "git-receive-pack" or st.private):
            self._drain_body()
            return self._plain(
                record,
                401,
                "Invalid username or token. Password authentication is not supported for Git operations.\n",
                {"WWW-Authenticate": 'Basic realm="GitHub"'},
            )
        assert st.git_dir is not None and st.state_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL="HTTP/1.1",
            REMOTE_ADDR=self.client_address[0],
            GIT_PROJECT_ROOT=str(st.git_dir.parent),
            GIT_HTTP_EXPORT_ALL="1",
            PATH_INFO=f"/{st.git_dir.name}{sub}",
            REQUEST_METHOD=method,
            QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            GITHUB_STANDIN_STATE=str(st.state_dir),  # the hook's rules and log
        )
        if user is not None:
            env["REMOTE_USER"] = user
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if not chunked and self.headers.get("Content-Length"):
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "HTTP_GIT_PROTOCOL")):
            if self.headers.get(header):
                env[var] = self.headers[header]
        proc = subprocess.Popen(
            ["git", "http-backend"],
            env=env,
            cwd=st.git_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr: list[bytes] = []
        feeder = threading.Thread(target=self._feed, args=(proc.stdin, chunked), daemon=True)
        drainer = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        feeder.start()
        drainer.start()
        status, headers = 200, []
        while True:
            line = proc.stdout.readline().rstrip(b"\r\n")
            if not line:
                break
            key, _, value = line.decode("latin-1").partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((key, value.strip()))
        record.status = status  # before the answer, as in _plain
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")
        feeder.join(timeout=30)
        drainer.join(timeout=30)
        proc.wait(timeout=30)

    def _feed(self, sink: BinaryIO, chunked: bool) -> None:
        """Stream the request body to http-backend: de-chunked, or Content-Length bytes."""
        with contextlib.suppress(BrokenPipeError), sink:
            if chunked:
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline().strip():  # trailers
                            pass
                        return
                    remaining = size
                    while remaining:
                        data = self.rfile.read(min(remaining, 65536))
                        if not data:
                            return
                        sink.write(data)
                        remaining -= len(data)
                    self.rfile.readline()  # the CRLF after each chunk
            else:
                remaining = int(self.headers.get("Content-Length") or 0)
                while remaining:
                    data = self.rfile.read(min(remaining, 65536))
                    if not data:
                        return
                    sink.write(data)
                    remaining -= len(data)

    def _drain_body(self) -> None:
        """Read (and drop) a refused request's body, so the connection stays usable."""
        with open(os.devnull, "wb") as sink:
            self._feed(sink, "chunked" in (self.headers.get("Transfer-Encoding") or "").lower())

    def _plain(self, record: GitRequest, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        record.status = status  # before the answer: the client may be done (and the test reading) once it has it
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    # --- REST ------------------------------------------------------------------------------------
    def _handle(self, method: str, path: str, query_string: str) -> None:
        st = self.standin_state
        pairs = parse_qsl(query_string, keep_blank_values=True)
        query = dict(pairs)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self._record = RecordedRequest(method, path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        self._pairs = pairs
        self._override = None
        self._refs_cache = None  # one handler serves every request of a kept-alive connection
        with st.lock:
            st.requests.append(self._record)
            try:
                self._dispatch(method, path, query, body)
            except Exception as exc:  # a stand-in bug: answer 500 so the test sees it
                self._override = None
                self._error(500, f"stand-in error: {exc!r}")

    # --- auth ------------------------------------------------------------------------------------
    def _credential(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not value:
            return None
        return scheme.lower(), value.strip()

    def _jwt_ok(self, token: str) -> bool:
        st = self.standin_state
        if st.app_public_key is None or st.app_id is None:
            return False
        import jwt  # PyJWT, a PyGithub dependency

        try:
            claims = jwt.decode(token, st.app_public_key, algorithms=["RS256"], options={"verify_aud": False})
        except jwt.PyJWTError:
            return False
        return str(claims.get("iss")) == str(st.app_id)

    # --- routing ---------------------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        st = self.standin_state
        cred = self._credential()

        match = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if match and method == "POST":
            if cred is None or cred[0] != "bearer" or not self._jwt_ok(cred[1]):
                return self._error(401, "A JSON web token could not be decoded")
            if st.installation_id is None or int(match[1]) != st.installation_id:
                return self._error(404, "Not Found")
            token = "ghs_" + secrets.token_hex(18)
            st.tokens.add(token)
            st.app_tokens.add(token)
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            return self._send(201, {"token": token, "expires_at": expires, "permissions": {}})

        if cred is None or cred[1] not in st.tokens:
            return self._error(401, "Bad credentials")

        if st.before and st.before[0][0] in (None, method):
            st.before.pop(0)[1]()
        if st.failures:
            failure = st.failures[0]
            if failure.method in (None, method):
                st.failures.pop(0)
                if not failure.applied:
                    return self._send(
                        failure.status,
                        {"message": failure.message, "documentation_url": DOCS, "status": str(failure.status)},
                        failure.headers,
                    )
                self._override = failure

        if path == "/graphql" and method == "POST":
            return self._send(*gitdata.graphql(st, body, self._repo_json()["node_id"]))
        prefix = f"/repos/{st.owner}/{st.repo}"
        if not path.startswith(prefix):
            return self._error(404, "Not Found")
        rest = path[len(prefix) :]
        data = body if isinstance(body, dict) else {}
        if rest.startswith(("/git/", "/commits/")):
            return self._git_database(method, rest, data, cred[1])

        if rest == "" and method == "GET":
            return self._send(200, self._repo_json())
        match = re.fullmatch(r"/branches/(.+?)(/protection)?", rest)
        if match and method == "GET":
            return self._branch(match[1], bool(match[2]))
        if rest == "/pulls" and method == "GET":
            return self._list_pulls(query)
        if rest == "/pulls" and method == "POST":
            return self._create_pull(data)
        match = re.fullmatch(r"/pulls/(\d+)(/merge)?", rest)
        if match:
            pr = next((p for p in st.pulls if p["number"] == int(match[1])), None)
            if pr is None:
                return self._error(404, "Not Found")
            if match[2] and method == "GET":
                return self._send(204, None) if pr["merged"] else self._error(404, "Not Found")
            if match[2] and method == "PUT":
                return self._merge_pull(pr, data)
            if not match[2] and method == "GET":
                return self._send(200, self._pull_json(pr))
            if not match[2] and method == "PATCH":
                return self._edit_pull(pr, data)
        if rest == "/issues" and method == "GET":
            return self._list_issues(query)
        if rest == "/issues" and method == "POST":
            return self._create_issue(data)
        match = re.fullmatch(r"/issues/(\d+)(/comments)?", rest)
        if match:
            issue = next((i for i in st.issues if i["number"] == int(match[1])), None)
            if issue is None:
                return self._error(404, "Not Found")
            if match[2] and method == "POST":
                return self._comment(issue, data)
            if not match[2] and method == "GET":
                return self._send(200, self._issue_json(issue))
            if not match[2] and method == "PATCH":
                return self._edit_issue(issue, data)
        return self._error(404, "Not Found")

    def _git_database(self, method: str, rest: str, data: dict[str, Any], token: str) -> None:
        st = self.standin_state
        base = f"{self._base()}/repos/{st.owner}/{st.repo}"
        if rest == "/git/blobs" and method == "POST":
            return self._send(*gitdata.create_blob(st, base, data))
        if rest == "/git/trees" and method == "POST":
            return self._send(*gitdata.create_tree(st, base, data))
        if rest == "/git/commits" and method == "POST":
            return self._send(*gitdata.create_commit(st, base, token, data))
        if rest == "/git/refs" and method == "POST":
            return self._send(*gitdata.create_ref(st, base, data))
        match = re.fullmatch(r"/git/refs/(.+)", rest)
        if match and method == "PATCH":
            return self._send(*gitdata.update_ref(st, base, f"refs/{unquote(match[1])}", data))
        match = re.fullmatch(r"/git/ref/(.+)", rest)
        if match and method == "GET":
            ref = f"refs/{unquote(match[1])}"
            sha = gitdata.ref_sha(st, ref)
            return self._send(200, gitdata.ref_json(base, ref, sha)) if sha else self._error(404, "Not Found")
        match = re.fullmatch(r"/git/commits/([0-9a-f]{40})", rest)
        if match and method == "GET":
            if gitdata.object_type(st, match[1]) != "commit":
                return self._error(404, "Not Found")
            return self._send(200, gitdata.git_commit_json(st, base, match[1]))
        match = re.fullmatch(r"/commits/([^/]+)", rest)
        if match and method == "GET":
            sha = (
                match[1]
                if gitdata.object_type(st, match[1]) == "commit"
                else gitdata.ref_sha(st, f"refs/heads/{unquote(match[1])}")
            )
            if sha is None:
                return self._error(422, f"No commit found for SHA: {match[1]}")
            return self._send(200, gitdata.commit_json(st, base, sha))
        return self._error(404, "Not Found")

    # --- pagination ------------------------------------------------------------------------------
    def _paginate(self, path: str, query: dict[str, str], items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """One page of `items`, and a Link header whose URLs keep every query parameter but `page`."""
        per_page = max(1, min(100, _int(query.get("per_page"), 30)))
        page = max(1, _int(query.get("page"), 1))
        last = max(1, math.ceil(len(items) / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        if len(items) <= per_page:
            return chunk, {}  # all on one page: no Link header, as documented

        def url(number: int) -> str:
            pairs = [(k, str(number) if k == "page" else v) for k, v in self._pairs]
            if not any(k == "page" for k, _ in pairs):
                pairs.append(("page", str(number)))
            return f"{self._base()}{path}?{urlencode(pairs)}"

        links = []
        if page > 1:
            links.append(f'<{url(min(page - 1, last))}>; rel="prev"')
        if page < last:
            links += [f'<{url(page + 1)}>; rel="next"', f'<{url(last)}>; rel="last"']
        if page > 1:
            links.append(f'<{url(1)}>; rel="first"')
        return chunk, {"Link": ", ".join(links)}

    # --- repository and branches -----------------------------------------------------------------
    def _repo_json(self) -> dict[str, Any]:
        st = self.standin_state
        base = self._base()
        return {
            "id": 1,
            "node_id": "R_1",
            "name": st.repo,
            "full_name": f"{st.owner}/{st.repo}",
            "private": st.private,
            "owner": {"login": st.owner, "id": 2, "type": "Organization", "url": f"{base}/users/{st.owner}"},
            "html_url": f"https://github.example/{st.owner}/{st.repo}",
            "clone_url": f"{base}/{st.owner}/{st.repo}.git",
            "url": f"{base}/repos/{st.owner}/{st.repo}",
            "pulls_url": f"{base}/repos/{st.owner}/{st.repo}/pulls{{/number}}",
            "default_branch": "main",
            "permissions": {"admin": False, "push": True, "pull": True},
        }

    def _branch(self, branch: str, protection: bool) -> None:
        st = self.standin_state
        sha = st.refs().get(branch)
        if sha is None:
            return self._error(404, "Branch not found")
        base = f"{self._base()}/repos/{st.owner}/{st.repo}/branches/{branch}"
        rule = st.rule(branch)
        if not protection:
            return self._send(
                200,
                {
                    "name": branch,
                    "commit": {"sha": sha, "url": f"{self._base()}/repos/{st.owner}/{st.repo}/commits/{sha}"},
                    "protected": rule is not None,
                    "protection_url": f"{base}/protection",
                    "_links": {"self": base, "html": f"https://github.example/{st.owner}/{st.repo}/tree/{branch}"},
                },
            )
        if rule is None:
            return self._error(404, "Branch not protected")
        payload: dict[str, Any] = {
            "url": f"{base}/protection",
            "enforce_admins": {"url": f"{base}/protection/enforce_admins", "enabled": False},
            "required_linear_history": {"enabled": False},
            "allow_force_pushes": {"enabled": rule.allow_force_pushes},
            "allow_deletions": {"enabled": rule.allow_deletions},
            "required_conversation_resolution": {"enabled": False},
        }
        if rule.require_pull_request:
            payload["required_pull_request_reviews"] = {
                "url": f"{base}/protection/required_pull_request_reviews",
                "dismiss_stale_reviews": False,
                "require_code_owner_reviews": False,
                "required_approving_review_count": rule.required_approving_review_count,
            }
        self._send(200, payload)

    # --- pull requests ---------------------------------------------------------------------------
    def _refs(self) -> dict[str, str]:
        cached: dict[str, str] | None = getattr(self, "_refs_cache", None)
        if cached is None:
            cached = self._refs_cache = self.standin_state.refs()
        return cached

    def _head_sha(self, pr: dict[str, Any]) -> str | None:
        sha = self._refs().get(pr["head"])
        if sha is not None and not pr["merged"] and pr["state"] == "open":
            pr["head_sha"] = sha  # GitHub keeps showing the last head once the branch is gone
        return sha

    def _merge_tree(self, base_sha: str, head_sha: str) -> str | None:
        """The tree of merging head into base, or None on a conflict (or unrelated histories)."""
        proc = self.standin_state.git("merge-tree", "--write-tree", "--no-messages", base_sha, head_sha, check=False)
        return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.strip() else None

    def _mergeability(self, pr: dict[str, Any]) -> tuple[bool | None, str]:
        if pr["state"] != "open":
            return None, "unknown"
        head, base = self._head_sha(pr), self._refs().get(pr["base"])
        if head is None or base is None:
            return None, "unknown"
        if self._merge_tree(base, head) is None:
            return False, "dirty"
        rule = self.standin_state.rule(pr["base"])
        if rule is not None and len(pr["approvals"]) < rule.required_approving_review_count:
            return True, "blocked"
        return True, "clean"

    def _pull_json(self, pr: dict[str, Any], *, full: bool = True) -> dict[str, Any]:
        st = self.standin_state
        base = self._base()
        number = pr["number"]
        repo_json = self._repo_json()
        self._head_sha(pr)
        out: dict[str, Any] = {
            "id": 1000 + number,
            "node_id": f"PR_{number}",
            "number": number,
            "state": pr["state"],
            "locked": False,
            "title": pr["title"],
            "body": pr["body"],
            "draft": False,
            "url": f"{base}/repos/{st.owner}/{st.repo}/pulls/{number}",
            "html_url": f"https://github.example/{st.owner}/{st.repo}/pull/{number}",
            "issue_url": f"{base}/repos/{st.owner}/{st.repo}/issues/{number}",
            "user": {"login": "theory-deploy[bot]", "id": 3, "type": "Bot"},
            "created_at": pr["created_at"],
            "updated_at": pr["updated_at"],
            "closed_at": pr["closed_at"],
            "merged_at": pr["merged_at"],
            "merge_commit_sha": pr["merge_commit_sha"],
            "head": {
                "label": f"{st.owner}:{pr['head']}",
                "ref": pr["head"],
                "sha": pr["head_sha"],
                "repo": repo_json,
                "user": repo_json["owner"],
            },
            "base": {
                "label": f"{st.owner}:{pr['base']}",
                "ref": pr["base"],
                "sha": self._refs().get(pr["base"]) or ZERO,
                "repo": repo_json,
                "user": repo_json["owner"],
            },
        }
        if full:
            mergeable, mergeable_state = self._mergeability(pr)
            out.update(
                merged=pr["merged"],
                mergeable=mergeable,
                mergeable_state=mergeable_state,
                merged_by={"login": MERGER[0]} if pr["merged"] else None,
            )
        return out

    def _list_pulls(self, query: dict[str, str]) -> None:
        st = self.standin_state
        state = query.get("state", "open")
        head = query.get("head")
        if head is not None and ":" not in head:
            head = None  # GitHub ignores a head filter without its `owner:` part
        found = [
            p
            for p in st.pulls
            if (state == "all" or p["state"] == state)
            and (head is None or f"{st.owner}:{p['head']}" == head)
            and (query.get("base") is None or p["base"] == query["base"])
        ]
        sort = query.get("sort", "created")
        key = "updated_at" if sort == "updated" else "created_at"
        default_desc = sort not in ("updated", "popularity", "long-running")
        desc = query.get("direction", "desc" if default_desc else "asc") == "desc"
        found.sort(key=lambda p: (p[key], p["number"]), reverse=desc)
        chunk, headers = self._paginate(f"/repos/{st.owner}/{st.repo}/pulls", query, found)
        self._send(200, [self._pull_json(p, full=False) for p in chunk], headers)

    def _has_commits(self, base_sha: str, head_sha: str) -> bool:
        out = self.standin_state.git("rev-list", "--count", head_sha, "--not", base_sha).stdout.strip()
        return out not in ("", "0")

    def _open_duplicate(self, head: str, base: str, skip: int | None = None) -> bool:
        return any(
            p["state"] == "open" and p["head"] == head and p["base"] == base and p["number"] != skip
            for p in self.standin_state.pulls
        )

    def _create_pull(self, body: dict[str, Any]) -> None:
        st = self.standin_state
        for key in ("title", "head", "base"):
            if not isinstance(body.get(key), str) or not body[key].strip():
                return self._invalid({"resource": "PullRequest", "field": key, "code": "missing_field"})
        owner, _, head = str(body["head"]).rpartition(":")
        base = str(body["base"])
        refs = self._refs()
        if base not in refs:
            return self._invalid({"resource": "PullRequest", "field": "base", "code": "invalid"})
        if (owner and owner != st.owner) or head not in refs:
            return self._invalid({"resource": "PullRequest", "field": "head", "code": "invalid"})
        if self._open_duplicate(head, base):
            return self._invalid(
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {st.owner}:{head}.",
                }
            )
        if head == base or not self._has_commits(refs[base], refs[head]):
            return self._invalid(
                {"resource": "PullRequest", "code": "custom", "message": f"No commits between {base} and {head}"}
            )
        pr = st.add_pull(head, base, body["title"], body.get("body"), refs[head])
        self._send(201, self._pull_json(pr))

    def _edit_pull(self, pr: dict[str, Any], body: dict[str, Any]) -> None:
        state = body.get("state", pr["state"])
        if state not in ("open", "closed"):
            return self._invalid({"resource": "PullRequest", "field": "state", "code": "invalid"})
        if "title" in body and not (isinstance(body["title"], str) and body["title"].strip()):
            return self._invalid({"resource": "PullRequest", "field": "title", "code": "missing_field"})
        if "base" in body:
            if pr["state"] == "closed" or state == "closed":
                return self._invalid(
                    {
                        "resource": "PullRequest",
                        "field": "base",
                        "code": "invalid",
                        "message": "Cannot change the base branch of a closed pull request.",
                    }
                )
            if body["base"] not in self._refs():
                return self._invalid({"resource": "PullRequest", "field": "base", "code": "invalid"})
        if state == "open" and pr["state"] == "closed":
            why = self._reopen_refusal(pr)
            if why:
                return self._invalid({"resource": "PullRequest", "field": "state", "code": "custom", "message": why})
        for key in ("title", "body", "base"):
            if key in body:
                pr[key] = body[key]
        now = _now()
        if state != pr["state"]:
            if state == "closed":
                pr["closed_head_sha"] = self._head_sha(pr) or pr["head_sha"]
            pr["state"] = state
            pr["closed_at"] = now if state == "closed" else None
        pr["updated_at"] = now
        self._send(200, self._pull_json(pr))

    def _reopen_refusal(self, pr: dict[str, Any]) -> str | None:
        st = self.standin_state
        if pr["merged"]:
            return "state cannot be changed. The pull request has already been merged."
        head_sha = self._refs().get(pr["head"])
        if head_sha is None:
            return f"state cannot be changed. The {pr['head']} branch has been deleted."
        closed_at_sha = pr["closed_head_sha"]
        if (
            closed_at_sha
            and not st.git("merge-base", "--is-ancestor", closed_at_sha, head_sha, check=False).returncode == 0
        ):
            return f"state cannot be changed. The {pr['head']} branch was force-pushed or recreated."
        if self._open_duplicate(pr["head"], pr["base"], skip=pr["number"]):
            return f"state cannot be changed. A pull request already exists for {st.owner}:{pr['head']}."
        return None

    def _merge_pull(self, pr: dict[str, Any], body: dict[str, Any]) -> None:
        st = self.standin_state
        method = body.get("merge_method", "merge")
        if method not in ("merge", "squash", "rebase"):
            return self._invalid({"resource": "PullRequest", "field": "merge_method", "code": "invalid"})
        if pr["merged"] or pr["state"] != "open":
            return self._error(405, "Pull Request is not mergeable")
        refs = self._refs()
        head_sha, base_sha = refs.get(pr["head"]), refs.get(pr["base"])
        if head_sha is None or base_sha is None:
            return self._error(405, "Pull Request is not mergeable")
        if body.get("sha") and body["sha"] != head_sha:
            return self._error(409, "Head branch was modified. Review and try the merge again.")
        rule = st.rule(pr["base"])
        if rule is not None and len(pr["approvals"]) < rule.required_approving_review_count:
            n = rule.required_approving_review_count
            return self._error(
                405,
                f"At least {n} approving review{' is' if n == 1 else 's are'} required by reviewers with write access.",
            )
        tree = self._merge_tree(base_sha, head_sha)
        if tree is None:
            return self._error(405, "Pull Request is not mergeable")
        number, title = pr["number"], body.get("commit_title")
        message = body.get("commit_message")
        merger = {
            "GIT_COMMITTER_NAME": MERGER[0],
            "GIT_COMMITTER_EMAIL": MERGER[1],
            "GIT_AUTHOR_NAME": MERGER[0],
            "GIT_AUTHOR_EMAIL": MERGER[1],
        }
        if method == "merge":
            default_title = f"Merge pull request #{number} from {st.owner}/{pr['head']}"
            text = f"{title or default_title}\n\n{message if message is not None else pr['title']}"
            new = st.git("commit-tree", tree, "-p", base_sha, "-p", head_sha, "-m", text, env=merger).stdout.strip()
        elif method == "squash":
            subjects = st.git("log", "--reverse", "--format=* %s", head_sha, "--not", base_sha).stdout.strip()
            default_title = f"{pr['title']} (#{number})"
            text = f"{title or default_title}\n\n{message if message is not None else subjects}"
            author = st.git("log", "-1", "--reverse", "--format=%an%x00%ae", head_sha, "--not", base_sha).stdout
            name, _, email = author.strip().partition("\x00")
            env = {**merger, "GIT_AUTHOR_NAME": name or MERGER[0], "GIT_AUTHOR_EMAIL": email or MERGER[1]}
            new = st.git("commit-tree", tree, "-p", base_sha, "-m", text, env=env).stdout.strip()
        else:
            rebased = self._rebase(base_sha, head_sha, merger)
            if rebased is None:
                return self._error(405, "Pull Request is not mergeable")
            new = rebased
        moved = st.git("update-ref", f"refs/heads/{pr['base']}", new, base_sha, check=False)
        if moved.returncode != 0:
            return self._error(405, "Base branch was modified. Review and try the merge again.")
        now = _now()
        pr.update(
            merged=True,
            merged_at=now,
            merge_commit_sha=new,
            state="closed",
            closed_at=now,
            closed_head_sha=head_sha,
            head_sha=head_sha,
            updated_at=now,
        )
        self._refs_cache = None
        self._send(200, {"sha": new, "merged": True, "message": "Pull Request successfully merged"})

    def _rebase(self, base_sha: str, head_sha: str, committer: dict[str, str]) -> str | None:
        """Replay head's commits onto base in a throw-away worktree; None when one does not apply."""
        st = self.standin_state
        commits = st.git("rev-list", "--reverse", "--no-merges", head_sha, "--not", base_sha).stdout.split()
        with tempfile.TemporaryDirectory(prefix="standin-rebase-") as tmp:
            tree = Path(tmp) / "wt"
            st.git("worktree", "add", "--detach", "--quiet", str(tree), base_sha)
            try:
                env = {k: v for k, v in committer.items() if k.startswith("GIT_COMMITTER")}
                for sha in commits:
                    picked = st.git("cherry-pick", "--allow-empty", sha, env=env, cwd=tree, check=False)
                    if picked.returncode != 0:
                        st.git("cherry-pick", "--abort", cwd=tree, check=False)
                        return None
                return st.git("rev-parse", "HEAD", cwd=tree).stdout.strip()
            finally:
                st.git("worktree", "remove", "--force", str(tree), check=False)
                st.git("worktree", "prune", check=False)

    # --- issues ----------------------------------------------------------------------------------
    def _issue_json(self, issue: dict[str, Any]) -> dict[str, Any]:
        st = self.standin_state
        base = self._base()
        number = issue["number"]
        return {
            "id": 5000 + number,
            "node_id": f"I_{number}",
            "number": number,
            "state": issue["state"],
            "state_reason": issue["state_reason"],
            "title": issue["title"],
            "body": issue["body"],
            "labels": [
                {
                    "id": 100 + n,
                    "name": name,
                    "color": "ededed",
                    "url": f"{base}/repos/{st.owner}/{st.repo}/labels/{name}",
                }
                for n, name in enumerate(issue["labels"])
            ],
            "comments": sum(1 for c in st.comments if c["issue"] == number),
            "url": f"{base}/repos/{st.owner}/{st.repo}/issues/{number}",
            "repository_url": f"{base}/repos/{st.owner}/{st.repo}",
            "html_url": f"https://github.example/{st.owner}/{st.repo}/issues/{number}",
            "user": {"login": "theory-deploy[bot]", "id": 3, "type": "Bot"},
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "closed_at": issue["closed_at"],
        }

    @staticmethod
    def _field(resource: str, field_name: str, code: str) -> dict[str, Any]:
        return {"resource": resource, "field": field_name, "code": code}

    def _list_issues(self, query: dict[str, str]) -> None:
        st = self.standin_state
        state = query.get("state", "open")
        wanted = [name for name in query.get("labels", "").split(",") if name]
        found = [
            i
            for i in st.issues
            if (state == "all" or i["state"] == state) and all(name in i["labels"] for name in wanted)
        ]
        found.sort(key=lambda i: i["number"], reverse=True)  # GitHub's default: newest first
        chunk, headers = self._paginate(f"/repos/{st.owner}/{st.repo}/issues", query, found)
        self._send(200, [self._issue_json(i) for i in chunk], headers)

    def _create_issue(self, body: dict[str, Any]) -> None:
        st = self.standin_state
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            return self._invalid(self._field("Issue", "title", "missing_field"))
        labels = body.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
            return self._invalid(self._field("Issue", "labels", "invalid"))
        now = _now()
        issue = {
            "number": st.next_number,
            "state": "open",
            "state_reason": None,
            "title": title,
            "body": body.get("body"),
            "labels": list(dict.fromkeys(labels)),
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
        }
        st.next_number += 1
        st.issues.append(issue)
        self._send(201, self._issue_json(issue))

    def _edit_issue(self, issue: dict[str, Any], body: dict[str, Any]) -> None:
        state = body.get("state", issue["state"])
        if state not in ("open", "closed"):
            return self._invalid(self._field("Issue", "state", "invalid"))
        reason = body.get("state_reason")
        if reason not in (None, "completed", "not_planned", "reopened"):
            return self._invalid(self._field("Issue", "state_reason", "invalid"))
        if "title" in body and not (isinstance(body["title"], str) and body["title"].strip()):
            return self._invalid(self._field("Issue", "title", "missing_field"))
        for key in ("title", "body"):
            if key in body:
                issue[key] = body[key]
        if isinstance(body.get("labels"), list):
            issue["labels"] = [str(name) for name in body["labels"]]
        now = _now()
        if state != issue["state"]:
            issue["state"] = state
            issue["closed_at"] = now if state == "closed" else None
            issue["state_reason"] = reason or ("completed" if state == "closed" else "reopened")
        elif reason is not None:
            issue["state_reason"] = reason
        issue["updated_at"] = now
        self._send(200, self._issue_json(issue))

    def _comment(self, issue: dict[str, Any], body: dict[str, Any]) -> None:
        st = self.standin_state
        text = body.get("body")
        if not isinstance(text, str) or not text.strip():
            return self._invalid(self._field("IssueComment", "body", "missing_field"))
        comment_id = 9000 + len(st.comments)
        st.comments.append({"issue": issue["number"], "body": text, "id": comment_id})
        issue["updated_at"] = _now()
        base = self._base()
        self._send(
            201,
            {
                "id": comment_id,
                "node_id": f"IC_{comment_id}",
                "body": text,
                "url": f"{base}/repos/{st.owner}/{st.repo}/issues/comments/{comment_id}",
                "html_url": f"https://github.example/{st.owner}/{st.repo}/issues/{issue['number']}#issuecomment-{comment_id}",
                "issue_url": f"{base}/repos/{st.owner}/{st.repo}/issues/{issue['number']}",
                "user": {"login": "theory-deploy[bot]", "id": 3, "type": "Bot"},
                "created_at": issue["updated_at"],
                "updated_at": issue["updated_at"],
            },
        )
