"""The GitHub stand-in answers like api.github.com for the calls the pin bot makes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import jwt
import pytest

from tests.github_standin import GitHubStandIn

TOKEN = "ghp_" + "s" * 36


@pytest.fixture
def gh():
    with GitHubStandIn(owner="acme", repo="processors", tokens={TOKEN}) as standin:
        yield standin


def api(gh: GitHubStandIn, token: str | None = TOKEN, scheme: str = "token") -> httpx.Client:
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    return httpx.Client(base_url=gh.url, headers=headers, timeout=5)


def test_auth_schemes_and_401(gh: GitHubStandIn) -> None:
    assert api(gh).get("/repos/acme/processors").status_code == 200
    assert api(gh, scheme="Bearer").get("/repos/acme/processors").status_code == 200
    for client in (api(gh, token=None), api(gh, token="nope"), api(gh, scheme="Basic")):
        resp = client.get("/repos/acme/processors")
        assert resp.status_code == 401 and resp.json()["message"] == "Bad credentials"
    # Refused requests are recorded too, with what was sent.
    assert [r.status for r in gh.requests] == [200, 200, 401, 401, 401]
    assert gh.requests[3].authorization == "token nope"


def test_repo_and_unknown_paths(gh: GitHubStandIn) -> None:
    repo = api(gh).get("/repos/acme/processors").json()
    assert repo["full_name"] == "acme/processors" and repo["url"] == f"{gh.url}/repos/acme/processors"
    assert api(gh).get("/repos/acme/other").status_code == 404
    assert api(gh).get("/repos/acme/processors/pulls/99").status_code == 404


def test_pull_lifecycle_and_filters(gh: GitHubStandIn) -> None:
    c = api(gh)
    created = c.post("/repos/acme/processors/pulls", json={"head": "feat", "base": "main", "title": "T", "body": "B"})
    assert created.status_code == 201
    pr = created.json()
    assert pr["number"] == 1 and pr["state"] == "open" and pr["head"]["ref"] == "feat"
    assert pr["head"]["label"] == "acme:feat" and pr["url"].endswith("/pulls/1")

    dup = c.post("/repos/acme/processors/pulls", json={"head": "acme:feat", "base": "main", "title": "again"})
    assert dup.status_code == 422 and "already exists" in dup.json()["errors"][0]["message"]
    assert c.post("/repos/acme/processors/pulls", json={"base": "main", "title": "x"}).status_code == 422

    c.post("/repos/acme/processors/pulls", json={"head": "other", "base": "dev", "title": "O"})
    q = "/repos/acme/processors/pulls"
    assert [p["number"] for p in c.get(q, params={"head": "acme:feat", "state": "open"}).json()] == [1]
    assert [p["number"] for p in c.get(q, params={"head": "feat"}).json()] == [1]  # owner optional
    assert [p["number"] for p in c.get(q, params={"base": "dev"}).json()] == [2]
    assert [p["number"] for p in c.get(q).json()] == [1, 2]

    edited = c.patch(f"{q}/1", json={"title": "T2", "body": "B2"}).json()
    assert (edited["title"], edited["body"]) == ("T2", "B2")
    assert c.get(f"{q}/1").json()["title"] == "T2"
    c.patch(f"{q}/1", json={"state": "closed"})
    assert c.get(q, params={"head": "acme:feat", "state": "open"}).json() == []
    assert [p["number"] for p in c.get(q, params={"state": "all"}).json()] == [1, 2]
    # A closed PR does not block a new one for the same branch.
    assert c.post(q, json={"head": "feat", "base": "main", "title": "T3"}).status_code == 201

    recorded = [(r.method, r.path, r.status) for r in gh.requests]
    assert recorded[0] == ("POST", q, 201) and ("PATCH", f"{q}/1", 200) in recorded
    assert gh.requests[0].body == {"head": "feat", "base": "main", "title": "T", "body": "B"}


def test_pagination_link_header(gh: GitHubStandIn) -> None:
    c = api(gh)
    for n in range(3):
        c.post("/repos/acme/processors/pulls", json={"head": f"b{n}", "base": "main", "title": "t"})
    first = c.get("/repos/acme/processors/pulls", params={"per_page": 2})
    assert len(first.json()) == 2 and 'rel="next"' in first.headers["Link"]
    second = c.get("/repos/acme/processors/pulls", params={"per_page": 2, "page": 2})
    assert [p["head"]["ref"] for p in second.json()] == ["b2"] and "Link" not in second.headers


def test_fail_next(gh: GitHubStandIn) -> None:
    gh.fail_next(502, "Server Error", method="POST")
    c = api(gh)
    assert c.get("/repos/acme/processors").status_code == 200  # only POSTs fail
    assert c.post("/repos/acme/processors/pulls", json={"head": "a", "base": "main", "title": "t"}).status_code == 502
    assert c.post("/repos/acme/processors/pulls", json={"head": "a", "base": "main", "title": "t"}).status_code == 201


def test_git_remote_checks_branches(tmp_path: Path) -> None:
    remote = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "f").write_text("x")
    ident = ["-c", "user.name=a", "-c", "user.email=a@example.com"]
    for args in (
        ["add", "f"],
        [*ident, "commit", "-qm", "c"],
        ["push", "-q", str(remote), "main", "main:same"],
    ):
        subprocess.run(["git", *args], cwd=seed, check=True)
    with GitHubStandIn(tokens={TOKEN}, git_remote=remote) as gh:
        c = api(gh)
        missing = c.post("/repos/acme/processors/pulls", json={"head": "nope", "base": "main", "title": "t"})
        assert missing.status_code == 422
        same = c.post("/repos/acme/processors/pulls", json={"head": "same", "base": "main", "title": "t"})
        assert same.status_code == 422 and "No commits between" in same.json()["errors"][0]["message"]


def test_app_installation_tokens() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with GitHubStandIn(app_id=7, app_public_key=key.public_key(), installation_id=3) as gh:
        now = int(time.time())

        def jwt_for(k, iss=7) -> str:
            return jwt.encode({"iat": now - 60, "exp": now + 300, "iss": str(iss)}, k, algorithm="RS256")

        url = "/app/installations/3/access_tokens"
        assert api(gh, jwt_for(other), "Bearer").post(url).status_code == 401  # wrong key
        assert api(gh, jwt_for(key, iss=8), "Bearer").post(url).status_code == 401  # wrong app
        assert api(gh, jwt_for(key), "Bearer").post("/app/installations/4/access_tokens").status_code == 404
        token = api(gh, jwt_for(key), "Bearer").post(url).json()["token"]
        assert token.startswith("ghs_")
        assert api(gh, token).get("/repos/acme/processors").status_code == 200


def test_pygithub_against_the_standin(gh: GitHubStandIn) -> None:
    """The requests PyGithub really makes for lookup, create and edit are the ones served here."""
    from github import Auth, Github

    g = Github(base_url=gh.url, auth=Auth.Token(TOKEN), seconds_between_requests=0, seconds_between_writes=0)
    repo = g.get_repo("acme/processors")
    assert list(repo.get_pulls(state="open", head="acme:x")) == []
    pr = repo.create_pull(base="main", head="x", title="t", body="b")
    pr.edit(title="t2")
    [again] = list(repo.get_pulls(state="open", head="acme:x", base="main"))
    assert (again.number, again.title, again.head.ref, again.html_url) == (1, "t2", "x", pr.html_url)
    assert repo.get_pull(1).title == "t2"
    assert [(r.method, r.path, r.status) for r in gh.requests] == [
        ("GET", "/repos/acme/processors", 200),
        ("GET", "/repos/acme/processors/pulls", 200),
        ("POST", "/repos/acme/processors/pulls", 201),
        ("PATCH", "/repos/acme/processors/pulls/1", 200),
        ("GET", "/repos/acme/processors/pulls", 200),
        ("GET", "/repos/acme/processors/pulls/1", 200),
    ]
    assert gh.requests[4].query == {"state": "open", "head": "acme:x", "base": "main"}
    assert all(r.authorization == f"token {TOKEN}" for r in gh.requests)


def test_issue_endpoints_refuse_what_github_refuses(gh: GitHubStandIn) -> None:
    c = api(gh)
    q = "/repos/acme/processors/issues"
    assert api(gh, token=None).get(q).status_code == 401
    assert api(gh, token=None).post(q, json={"title": "t"}).status_code == 401
    missing = c.post(q, json={"body": "no title"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "title"
    assert c.post(q, json={"title": "t", "labels": "drift"}).status_code == 422  # labels must be a list
    assert c.patch(f"{q}/5", json={"body": "x"}).status_code == 404
    assert c.post(f"{q}/5/comments", json={"body": "x"}).status_code == 404

    # Pull requests and issues share one number sequence.
    c.post("/repos/acme/processors/pulls", json={"head": "feat", "base": "main", "title": "P"})
    issue = c.post(q, json={"title": "Drift", "body": "b", "labels": ["drift", "nightly"]}).json()
    assert issue["number"] == 2 and [label["name"] for label in issue["labels"]] == ["drift", "nightly"]
    c.post(q, json={"title": "Other", "labels": ["drift"]})
    assert [i["number"] for i in c.get(q, params={"labels": "drift,nightly"}).json()] == [2]
    assert [i["number"] for i in c.get(q, params={"labels": "drift"}).json()] == [3, 2]  # newest first

    assert c.patch(f"{q}/2", json={"state": "done"}).status_code == 422
    assert c.post(f"{q}/2/comments", json={"body": ""}).status_code == 422
    assert c.post(f"{q}/2/comments", json={"body": "seen again"}).status_code == 201
    closed = c.patch(f"{q}/2", json={"state": "closed", "state_reason": "not_planned"}).json()
    assert (closed["state"], closed["state_reason"], closed["comments"]) == ("closed", "not_planned", 1)
    assert [i["number"] for i in c.get(q, params={"labels": "drift"}).json()] == [3]
    assert [i["number"] for i in c.get(q, params={"labels": "drift", "state": "all"}).json()] == [3, 2]
