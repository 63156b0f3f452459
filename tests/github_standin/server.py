"""A stand-in for the few GitHub REST endpoints theory-deploy calls through PyGithub: the bot-PR
step's pull requests and the drift report's issues.

Endpoints (all JSON, shaped like api.github.com's answers as far as PyGithub reads them):

- `GET  /repos/{owner}/{repo}`
- `GET  /repos/{owner}/{repo}/pulls?state=&head=owner:branch&base=&per_page=&page=`
- `POST /repos/{owner}/{repo}/pulls`            -> 201; 422 when an open PR for head+base exists,
                                                   or (with `git_remote`) when the head branch is
                                                   not on the remote / has no commits over base
- `PATCH /repos/{owner}/{repo}/pulls/{number}`  -> title, body, base, state
- `GET  /repos/{owner}/{repo}/pulls/{number}`
- `GET  /repos/{owner}/{repo}/issues?state=&labels=a,b&per_page=&page=` (every label must match)
- `POST /repos/{owner}/{repo}/issues`           -> 201; 422 without a title or with labels that are
                                                   not a list of strings
- `GET  /repos/{owner}/{repo}/issues/{number}`  -> 404 for an unknown issue
- `PATCH /repos/{owner}/{repo}/issues/{number}` -> title, body, state, state_reason, labels; 404 for
                                                   an unknown issue, 422 for another state or reason
- `POST /repos/{owner}/{repo}/issues/{number}/comments` -> 201; 404 unknown issue, 422 empty body
- `POST /app/installations/{id}/access_tokens`  -> a fresh installation token (needs a Bearer JWT
                                                   signed by the configured app key)

Issues and pull requests share one number sequence, as on GitHub (unlike GitHub, pull requests
carry no labels here and are not listed among the issues).

Every request needs `Authorization: token X` or `Bearer X` with a known token (401 "Bad credentials"
otherwise). Every request is recorded in `requests` (method, path, query, headers, JSON body,
status answered), including the refused ones, so tests can prove what PyGithub sent and how often.

`fail_next(status, message)` makes the next request (optionally only for one method) fail, for
error-path tests. State lives in memory and is guarded by one lock.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DOCS = "https://docs.github.com/rest"


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
class _Failure:
    status: int
    message: str
    method: str | None


@dataclass
class StandInState:
    owner: str
    repo: str
    tokens: set[str]
    app_id: int | None = None
    app_public_key: Any = None  # a cryptography public key; JWTs must verify against it
    installation_id: int | None = None
    git_remote: Path | None = None
    pulls: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)  # {"issue": number, "body": ...}
    requests: list[RecordedRequest] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_number: int = 1


class GitHubStandIn:
    """Run with `with GitHubStandIn(tokens={"t"}) as gh: Github(base_url=gh.url, ...)`."""

    def __init__(
        self,
        *,
        owner: str = "acme",
        repo: str = "processors",
        tokens: set[str] | None = None,
        git_remote: Path | None = None,
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
            git_remote=git_remote,
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> GitHubStandIn:
        state = self.state

        class Handler(_Handler):
            standin_state = state

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="github-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> GitHubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- test helpers ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

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

    def clear_requests(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    def fail_next(self, status: int, message: str, *, method: str | None = None) -> None:
        with self.state.lock:
            self.state.failures.append(_Failure(status, message, method))

    def add_token(self, token: str) -> None:
        with self.state.lock:
            self.state.tokens.add(token)


class _Handler(BaseHTTPRequestHandler):
    standin_state: StandInState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    # --- plumbing --------------------------------------------------------------------------------
    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
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

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _handle(self, method: str) -> None:
        st = self.standin_state
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self._record = RecordedRequest(method, parts.path, query, {k.lower(): v for k, v in self.headers.items()}, body)
        with st.lock:
            st.requests.append(self._record)
            try:
                self._dispatch(method, parts.path, query, body)
            except Exception as exc:  # a stand-in bug: answer 500 so the test sees it
                self._error(500, f"stand-in error: {exc!r}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

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
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            return self._send(201, {"token": token, "expires_at": expires, "permissions": {}})

        if cred is None or cred[1] not in st.tokens:
            return self._error(401, "Bad credentials")

        if st.failures:
            failure = st.failures[0]
            if failure.method in (None, method):
                st.failures.pop(0)
                return self._error(failure.status, failure.message)

        full = f"{st.owner}/{st.repo}"
        prefix = f"/repos/{full}"
        if not path.startswith(prefix):
            return self._error(404, "Not Found")
        rest = path[len(prefix) :]

        if rest == "" and method == "GET":
            return self._send(200, self._repo_json())
        if rest == "/pulls" and method == "GET":
            return self._list_pulls(query)
        if rest == "/pulls" and method == "POST":
            return self._create_pull(body if isinstance(body, dict) else {})
        match = re.fullmatch(r"/pulls/(\d+)", rest)
        if match:
            pr = next((p for p in st.pulls if p["number"] == int(match[1])), None)
            if pr is None:
                return self._error(404, "Not Found")
            if method == "GET":
                return self._send(200, self._pull_json(pr))
            if method == "PATCH":
                return self._edit_pull(pr, body if isinstance(body, dict) else {})
        if rest == "/issues" and method == "GET":
            return self._list_issues(query)
        if rest == "/issues" and method == "POST":
            return self._create_issue(body if isinstance(body, dict) else {})
        match = re.fullmatch(r"/issues/(\d+)(/comments)?", rest)
        if match:
            issue = next((i for i in st.issues if i["number"] == int(match[1])), None)
            if issue is None:
                return self._error(404, "Not Found")
            if match[2] and method == "POST":
                return self._comment(issue, body if isinstance(body, dict) else {})
            if not match[2] and method == "GET":
                return self._send(200, self._issue_json(issue))
            if not match[2] and method == "PATCH":
                return self._edit_issue(issue, body if isinstance(body, dict) else {})
        return self._error(404, "Not Found")

    # --- resources -------------------------------------------------------------------------------
    def _repo_json(self) -> dict[str, Any]:
        st = self.standin_state
        base = self._base()
        return {
            "id": 1,
            "node_id": "R_1",
            "name": st.repo,
            "full_name": f"{st.owner}/{st.repo}",
            "private": True,
            "owner": {"login": st.owner, "id": 2, "type": "Organization", "url": f"{base}/users/{st.owner}"},
            "html_url": f"https://github.example/{st.owner}/{st.repo}",
            "url": f"{base}/repos/{st.owner}/{st.repo}",
            "pulls_url": f"{base}/repos/{st.owner}/{st.repo}/pulls{{/number}}",
            "default_branch": "main",
            "permissions": {"admin": False, "push": True, "pull": True},
        }

    def _branch_sha(self, branch: str) -> str | None:
        remote = self.standin_state.git_remote
        if remote is None:
            return "0" * 40
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"],
            cwd=remote,
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def _pull_json(self, pr: dict[str, Any]) -> dict[str, Any]:
        st = self.standin_state
        base = self._base()
        number = pr["number"]
        repo_json = self._repo_json()
        return {
            "id": 1000 + number,
            "node_id": f"PR_{number}",
            "number": number,
            "state": pr["state"],
            "title": pr["title"],
            "body": pr["body"],
            "draft": False,
            "merged": False,
            "url": f"{base}/repos/{st.owner}/{st.repo}/pulls/{number}",
            "html_url": f"https://github.example/{st.owner}/{st.repo}/pull/{number}",
            "user": {"login": "theory-deploy[bot]", "id": 3, "type": "Bot"},
            "created_at": pr["created_at"],
            "updated_at": pr["updated_at"],
            "head": {
                "label": f"{st.owner}:{pr['head']}",
                "ref": pr["head"],
                "sha": self._branch_sha(pr["head"]) or "0" * 40,
                "repo": repo_json,
                "user": repo_json["owner"],
            },
            "base": {
                "label": f"{st.owner}:{pr['base']}",
                "ref": pr["base"],
                "sha": self._branch_sha(pr["base"]) or "0" * 40,
                "repo": repo_json,
                "user": repo_json["owner"],
            },
        }

    def _list_pulls(self, query: dict[str, str]) -> None:
        st = self.standin_state
        state = query.get("state", "open")
        head = query.get("head")
        if head is not None and ":" not in head:
            head = f"{st.owner}:{head}"
        found = [
            p
            for p in st.pulls
            if (state == "all" or p["state"] == state)
            and (head is None or f"{st.owner}:{p['head']}" == head)
            and (query.get("base") is None or p["base"] == query["base"])
        ]
        per_page = max(1, min(100, int(query.get("per_page", 30))))
        page = max(1, int(query.get("page", 1)))
        chunk = found[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(found):
            headers["Link"] = (
                f"<{self._base()}/repos/{st.owner}/{st.repo}/pulls?state={state}&per_page={per_page}"
                f'&page={page + 1}>; rel="next"'
            )
        self._send(200, [self._pull_json(p) for p in chunk], headers)

    def _create_pull(self, body: dict[str, Any]) -> None:
        st = self.standin_state
        missing = [k for k in ("head", "base") if not body.get(k)]
        if missing or not body.get("title"):
            return self._error(422, "Validation Failed", errors=[{"resource": "PullRequest", "code": "missing_field"}])
        head = str(body["head"]).split(":", 1)[-1]
        base = str(body["base"])
        if any(p["state"] == "open" and p["head"] == head and p["base"] == base for p in st.pulls):
            return self._error(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for {st.owner}:{head}.",
                    }
                ],
            )
        head_sha, base_sha = self._branch_sha(head), self._branch_sha(base)
        if head_sha is None or base_sha is None:
            return self._error(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "field": "head", "code": "invalid"}],
            )
        if st.git_remote is not None and head_sha == base_sha:
            return self._error(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"No commits between {base} and {head}",
                    }
                ],
            )
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pr = {
            "number": st.next_number,
            "state": "open",
            "title": body["title"],
            "body": body.get("body"),
            "head": head,
            "base": base,
            "created_at": now,
            "updated_at": now,
        }
        st.next_number += 1
        st.pulls.append(pr)
        self._send(201, self._pull_json(pr))

    def _edit_pull(self, pr: dict[str, Any], body: dict[str, Any]) -> None:
        for key in ("title", "body", "base"):
            if key in body:
                pr[key] = body[key]
        if body.get("state") in ("open", "closed"):
            pr["state"] = body["state"]
        pr["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._send(200, self._pull_json(pr))

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
    def _invalid(resource: str, field_name: str, code: str) -> dict[str, Any]:
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
        per_page = max(1, min(100, int(query.get("per_page", 30))))
        page = max(1, int(query.get("page", 1)))
        chunk = found[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(found):
            headers["Link"] = (
                f"<{self._base()}/repos/{st.owner}/{st.repo}/issues?state={state}&labels={','.join(wanted)}"
                f'&per_page={per_page}&page={page + 1}>; rel="next"'
            )
        self._send(200, [self._issue_json(i) for i in chunk], headers)

    def _create_issue(self, body: dict[str, Any]) -> None:
        st = self.standin_state
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            return self._error(422, "Validation Failed", errors=[self._invalid("Issue", "title", "missing_field")])
        labels = body.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
            return self._error(422, "Validation Failed", errors=[self._invalid("Issue", "labels", "invalid")])
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
            return self._error(422, "Validation Failed", errors=[self._invalid("Issue", "state", "invalid")])
        reason = body.get("state_reason")
        if reason not in (None, "completed", "not_planned", "reopened"):
            return self._error(422, "Validation Failed", errors=[self._invalid("Issue", "state_reason", "invalid")])
        if "title" in body and not (isinstance(body["title"], str) and body["title"].strip()):
            return self._error(422, "Validation Failed", errors=[self._invalid("Issue", "title", "missing_field")])
        for key in ("title", "body"):
            if key in body:
                issue[key] = body[key]
        if isinstance(body.get("labels"), list):
            issue["labels"] = [str(name) for name in body["labels"]]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
            return self._error(
                422, "Validation Failed", errors=[self._invalid("IssueComment", "body", "missing_field")]
            )
        comment_id = 9000 + len(st.comments)
        st.comments.append({"issue": issue["number"], "body": text, "id": comment_id})
        issue["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
