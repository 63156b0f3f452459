"""The GitHub REST calls theory-deploy makes, over PyGithub, with typed errors and no token leaks.

`GitHubClient` is used by the pin bot (find, open or update the one pull request of a bot branch)
and by the nightly drift report (find, open, update, comment on and close its issue). Every call
goes through `_call`, which retries transient failures (PyGithub's `GithubRetry`) and turns
GitHub's answers into `GitHubError` with the HTTP status in `details` and a remedy for that status.
The token or GitHub App key is registered with the scrubber and masked out of every message.

Retries: 5xx answers and secondary rate limits are retried up to `retries` times, for GET, POST and
also PATCH (PyGithub's default leaves PATCH out; every PATCH sent here carries the whole title, body
or state, so sending it twice leaves the same result). When they run out, the last answer is
reported with its status (`raise_on_status=False`), not as an unreachable server. A POST is retried
too, so a create whose answer was lost (GitHub made the PR, the answer was a 5xx) is retried and gets
422 "already exists": `open_or_update_pr` then finds the PR it made and reports it as `created`.

`git_token()` is the token these calls use (the given one, or the GitHub App's installation token),
for `gitpr` to fetch (and, without the API path, push) the bot branch with the same identity that
opens the PR.

The Git database calls (`create_blob`, `create_tree`, `create_commit`, `branch_sha`, `move_branch`)
are how `api_commits` writes the bot's commits so that GitHub signs them: a commit made through the
API by a bot (a GitHub App installation token, which GITHUB_TOKEN is too) with no custom author,
committer or signature is signed by GitHub and shown as Verified. `signs_commits` says whether this
client's token is such a bot token. `move_branch` is the lease: GraphQL `updateRefs` with
`beforeOid`, a compare-and-swap on the branch (REST's PATCH /git/refs has none for a forced update).

Credentials: `GITHUB_TOKEN` (or `GH_TOKEN`), or a GitHub App (`GITHUB_APP_ID`,
`GITHUB_APP_PRIVATE_KEY`, `GITHUB_APP_INSTALLATION_ID`); `GITHUB_REPOSITORY` is owner/name and
`GITHUB_API_URL` the API root (GitHub Enterprise, or a local stand-in in tests).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from functools import cache, partial
from typing import Any
from urllib.parse import quote

from . import secret_values as _secrets
from .errors import GitHubError
from .gitrun import mask_tokens

DEFAULT_API_URL = "https://api.github.com"
ZERO_OID = "0" * 40  # GraphQL updateRefs: as beforeOid, "the ref must not exist yet"
# GitHub's documented token prefixes: `ghs_` is a GitHub App installation access token, which is also
# what a workflow's GITHUB_TOKEN is. Commits such a token makes through the API are signed by GitHub.
_INSTALLATION_TOKEN_PREFIX = "ghs_"  # noqa: S105 (a prefix, not a secret)

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
# Issue calls (the drift report) need other permissions and fail for other reasons than PR calls.
_ISSUE_REMEDY_BY_STATUS = {
    **_REMEDY_BY_STATUS,
    403: "The token may not write issues: give the workflow `permissions: issues: write`.",
    404: "No such issue or repository visible to the token: check the issue number, GITHUB_REPOSITORY and GITHUB_API_URL.",
    422: "GitHub refused the issue as invalid: it needs a non-empty title (and a comment a non-empty body).",
}


# The Git database and ref calls: GraphQL answers a refused mutation with HTTP 200 and `errors`,
# which PyGithub reports as 400.
_REF_REMEDY_BY_STATUS = {
    **_REMEDY_BY_STATUS,
    400: "GitHub refused the branch update: read its message. A branch protection rule or ruleset covering "
    "the bot's branches refuses it too; the token needs contents: write.",
    403: "The token may not write the repository's git data: it needs contents: write.",
    422: "GitHub refused the git object as invalid: read its message (a bug in theory-deploy if it persists).",
}


class GitHubClient:
    """The pull-request calls of the pin bot and the issue calls of the drift report, over PyGithub."""

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
        from urllib3 import Retry

        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repository or ""):
            raise GitHubError(
                f"GITHUB_REPOSITORY {repository!r} is not owner/name.",
                remedy="Set GITHUB_REPOSITORY=owner/name (GitHub Actions sets it for you).",
            )
        self.repository = repository
        self.owner = repository.split("/", 1)[0]
        self.base_url = (base_url or DEFAULT_API_URL).rstrip("/")
        self._secrets: list[str] = []
        self._token = token or None
        # (method, url) of every retry granted, in order: tells a create that was sent twice.
        self._retried: list[tuple[str, str]] = []
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
        self._auth = auth
        retry = None
        if retries:
            retry = _retry_class()(
                total=retries,
                # Out of retries, hand back GitHub's last answer: an HTTP status with its remedy, not
                # urllib3's MaxRetryError (which would read as "cannot reach" the server).
                raise_on_status=False,
                allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"GET", "POST", "PATCH"},
                on_retry=self._note_retry,
            )
        self._gh = Github(
            base_url=self.base_url,
            auth=auth,
            timeout=timeout,
            retry=retry,
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

    def git_token(self) -> str:
        """The token the API calls use, for git to push with: the given token, or the GitHub App's
        installation token (requested now if PyGithub has none yet; registered with the scrubber)."""
        if self._token:
            return self._token
        token = str(self._call("installation token request", lambda: self._auth.token))
        self._secrets.append(token)
        _secrets.register_secret_value(token)
        return token

    @property
    def signs_commits(self) -> bool:
        """True when commits this client makes through the API are signed by GitHub (Verified): its
        token is a GitHub App's installation token (the App's, or a workflow's GITHUB_TOKEN). A
        personal token's API commits are not signed, and their author is that person."""
        return self.auth_kind == "app" or (self._token or "").startswith(_INSTALLATION_TOKEN_PREFIX)

    def _note_retry(self, method: str, url: str) -> None:
        self._retried.append((method.upper(), url))

    # --- error handling ---------------------------------------------------------------------------
    def _error(self, action: str, exc: BaseException, remedies: Mapping[int, str] = _REMEDY_BY_STATUS) -> GitHubError:
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
            remedy = remedies.get(
                status or 0,
                "GitHub answered with an error: check https://www.githubstatus.com and re-run (re-runs are safe).",
            )
        else:
            text = f"GitHub {action} for {self.repository}: cannot reach {self.base_url} ({type(exc).__name__}: {exc})."
            remedy = "Check network access to GITHUB_API_URL and re-run (re-runs are safe)."
        err = GitHubError(mask_tokens(text, *self._secrets), remedy=remedy, details={"status": status})
        err.status = status  # type: ignore[attr-defined]
        return err

    def _call(self, action: str, fn: Callable[[], Any], remedies: Mapping[int, str] = _REMEDY_BY_STATUS) -> Any:
        import requests
        from github import GithubException

        try:
            return fn()
        except (GithubException, requests.exceptions.RequestException) as exc:
            raise self._error(action, exc, remedies) from None

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
        create_was_retried = False
        for _ in range(2):
            existing = self.find_open_prs(branch)
            if existing:
                pr = existing[0]
                if pr.title == title and _norm(pr.body) == _norm(body):
                    # Our create was sent twice and the second got "already exists": the first made
                    # this PR (its answer was lost), so this call created it.
                    made_by_us = create_was_retried and pr.base.ref == base
                    return pr.html_url, "created" if made_by_us else "unchanged"
                self._call(f"update of PR #{pr.number}", partial(pr.edit, title=title, body=body))
                return pr.html_url, "updated"
            repo = self._repository()
            retries_before = len(self._retried)
            try:
                pr = self._call(
                    "pull request creation",
                    partial(repo.create_pull, base=base, head=branch, title=title, body=body),
                )
            except GitHubError as err:
                if getattr(err, "status", None) == 422 and "already exists" in err.message:
                    # Another job created it between our lookup and create (update that one), or
                    # our own first try did and its answer was lost (see above).
                    create_was_retried = any(m == "POST" for m, _ in self._retried[retries_before:])
                    continue
                raise
            return pr.html_url, "created"
        raise GitHubError(f"GitHub reported an open PR for {branch} but none could be found.")

    # --- the Git database (signed bot commits) ---------------------------------------------------
    def _rest(self, action: str, verb: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One REST call by path (the Git database has no PyGithub object this needs); its JSON."""
        url = f"/repos/{self.repository}{path}"
        call = partial(self._gh.requester.requestJsonAndCheck, verb, url, input=body)
        _headers, data = self._call(action, call, _REF_REMEDY_BY_STATUS)
        return data

    def create_blob(self, content: bytes) -> str:
        """Store `content` as a blob; its sha (git's own blob id of those bytes)."""
        encoded = base64.b64encode(content).decode()
        return str(self._rest("blob creation", "POST", "/git/blobs", {"content": encoded, "encoding": "base64"})["sha"])

    def create_tree(self, base_tree: str, entries: list[dict[str, Any]]) -> str:
        """A tree: `base_tree` with `entries` ({path, mode, type, sha}; sha None deletes) applied; its sha."""
        data = self._rest("tree creation", "POST", "/git/trees", {"base_tree": base_tree, "tree": entries})
        return str(data["sha"])

    def create_commit(self, message: str, tree: str, parents: list[str]) -> dict[str, Any]:
        """A commit with no custom author, committer or signature, so GitHub signs it when the token is a
        bot's: {"sha", "tree", "verified", "reason"}."""
        data = self._rest(
            "commit creation", "POST", "/git/commits", {"message": message, "tree": tree, "parents": parents}
        )
        verification = data.get("verification") or {}
        return {
            "sha": str(data["sha"]),
            "tree": str((data.get("tree") or {}).get("sha") or ""),
            "verified": bool(verification.get("verified")),
            "reason": str(verification.get("reason") or "unsigned"),
        }

    def branch_sha(self, branch: str) -> str | None:
        """The commit `branch` points at on GitHub now, or None when there is no such branch."""
        try:
            data = self._rest(f"lookup of branch {branch}", "GET", f"/git/ref/heads/{quote(branch)}")
        except GitHubError as err:
            if getattr(err, "status", None) == 404:
                return None
            raise
        return str(data["object"]["sha"])

    def move_branch(self, branch: str, new_sha: str, *, expected_sha: str | None, force: bool) -> bool:
        """Point `branch` at `new_sha` only if it still points at `expected_sha` (None: only if it does
        not exist): GraphQL `updateRefs` with `beforeOid`, GitHub's compare-and-swap on a ref.

        True when the branch now points at `new_sha`; False when another writer moved it first (the
        lease is lost, nothing was changed). GitHub answers a stale `beforeOid` with a generic error,
        so after any refusal the branch is read again: moved elsewhere is a lost lease, at `new_sha`
        is our own update whose answer was lost (a retried request), unmoved is a real error."""
        repo = self._repository()
        update = {
            "name": f"refs/heads/{branch}",
            "afterOid": new_sha,
            "beforeOid": expected_sha or ZERO_OID,
            "force": force,
        }
        mutation = partial(
            self._gh.requester.graphql_named_mutation,
            "updateRefs",
            {"repositoryId": repo.node_id, "refUpdates": [update]},
            "clientMutationId",
        )
        try:
            self._call(f"update of branch {branch}", mutation, _REF_REMEDY_BY_STATUS)
        except GitHubError:
            now = self.branch_sha(branch)
            if now == new_sha:
                return True
            if now != expected_sha:
                return False
            raise
        return True

    # --- issues -----------------------------------------------------------------------------------
    def find_open_issues(self, label: str) -> list[dict[str, Any]]:
        """Open issues (not pull requests) carrying `label`, oldest first: [{number, title, body}]."""
        repo = self._repository()
        issues = self._call(
            f"lookup of open issues labelled {label!r}",
            lambda: list(repo.get_issues(state="open", labels=[label])),
            _ISSUE_REMEDY_BY_STATUS,
        )
        found = [
            {"number": i.number, "title": i.title, "body": i.body or ""}
            for i in issues
            if i.pull_request is None  # GitHub lists pull requests among issues too
        ]
        return sorted(found, key=lambda i: i["number"])

    def create_issue(self, title: str, body: str, labels: list[str] | None = None) -> int:
        """Open an issue; return its number."""
        repo = self._repository()
        issue = self._call(
            "issue creation",
            partial(repo.create_issue, title=title, body=body, labels=list(labels or [])),
            _ISSUE_REMEDY_BY_STATUS,
        )
        return int(issue.number)

    def update_issue(
        self,
        number: int,
        *,
        body: str | None = None,
        state: str | None = None,
        state_reason: str | None = None,
    ) -> None:
        """Change an issue's body and/or state ("open" | "closed"; state_reason e.g. "completed")."""
        if state is not None and state not in ("open", "closed"):
            raise GitHubError(f"issue state must be 'open' or 'closed', not {state!r}.", remedy="Pass open or closed.")
        changes: dict[str, Any] = {}
        if body is not None:
            changes["body"] = body
        if state is not None:
            changes["state"] = state
        if state_reason is not None:
            changes["state_reason"] = state_reason
        if not changes:
            return
        issue = self._issue(number)
        self._call(f"update of issue #{number}", partial(issue.edit, **changes), _ISSUE_REMEDY_BY_STATUS)

    def comment_on_issue(self, number: int, body: str) -> None:
        issue = self._issue(number)
        self._call(f"comment on issue #{number}", partial(issue.create_comment, body), _ISSUE_REMEDY_BY_STATUS)

    def _issue(self, number: int) -> Any:
        repo = self._repository()
        # Lazy in PyGithub: no request until the edit or comment itself.
        return self._call(f"lookup of issue #{number}", partial(repo.get_issue, int(number)), _ISSUE_REMEDY_BY_STATUS)


@cache
def _retry_class() -> type[Any]:
    """PyGithub's GithubRetry, reporting every retry it grants to `on_retry(method, url)`.

    Built on first use: PyGithub is imported only when a client is made."""
    from github.GithubRetry import GithubRetry

    class _ReportingRetry(GithubRetry):
        def __init__(self, *, on_retry: Callable[[str, str], None] | None = None, **kwargs: Any) -> None:
            self.on_retry = on_retry
            super().__init__(**kwargs)

        def new(self, **kwargs: Any) -> Any:
            kwargs["on_retry"] = self.on_retry  # urllib3 makes a new Retry per attempt
            return super().new(**kwargs)

        def increment(self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any) -> Any:
            retry = super().increment(method, url, *args, **kwargs)  # raises when none is left
            if self.on_retry is not None:
                self.on_retry(method or "", url or "")
            return retry

    return _ReportingRetry


def _norm(text: str | None) -> str:
    return (text or "").replace("\r\n", "\n").strip()
