"""The GitHub stand-in answers like api.github.com (and github.com's git side) for what the pin bot does,
and refuses what GitHub refuses: each rule of its module docstring has a test here."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest

from tests.github_standin import GitHubStandIn

TOKEN = "ghp_" + "s" * 36
PULLS = "/repos/acme/processors/pulls"


@pytest.fixture
def gh():
    with GitHubStandIn(owner="acme", repo="processors", tokens={TOKEN}) as standin:
        standin.commit("main", {"README.md": "hello\n", "conf.txt": "a\nb\nc\n"}, "initial")
        yield standin


def api(gh: GitHubStandIn, token: str | None = TOKEN, scheme: str = "token") -> httpx.Client:
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    return httpx.Client(base_url=gh.url, headers=headers, timeout=10)


def branch(gh: GitHubStandIn, name: str, text: str | None = None, parent: str = "main") -> str:
    """A branch one commit over `parent` (a change to its own file unless `text` edits conf.txt)."""
    files = {"conf.txt": text} if text is not None else {f"{name.replace('/', '_')}.txt": name}
    return gh.commit(name, files, f"work on {name}", parent=parent)


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc


def authed(gh: GitHubStandIn, token: str = TOKEN) -> list[str]:
    return ["-c", f"http.extraheader={gh.extraheader(token)}"]


def clone(gh: GitHubStandIn, tmp_path: Path, name: str = "clone") -> Path:
    path = tmp_path / name
    # `clone -c` keeps the setting in the clone, as actions/checkout persists its token.
    git(tmp_path, "clone", "--quiet", *authed(gh), gh.git_url, str(path))
    for setting in ("user.name=Hu Man", "user.email=human@example.com"):
        git(path, "config", *setting.split("=", 1))
    return path


def commit_file(repo: Path, path: str, text: str, message: str = "edit") -> str:
    (repo / path).write_text(text)
    git(repo, "add", path)
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD").stdout.strip()


# ---------------------------------------------------------------------------------------------------
# REST basics
# ---------------------------------------------------------------------------------------------------


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
    assert repo["private"] is True and repo["clone_url"] == gh.git_url
    assert api(gh).get("/repos/acme/other").status_code == 404
    assert api(gh).get(f"{PULLS}/99").status_code == 404


def test_pull_lifecycle_and_filters(gh: GitHubStandIn) -> None:
    c = api(gh)
    branch(gh, "feat")
    gh.commit("dev", {"dev.txt": "dev"}, parent="main")
    branch(gh, "other", parent="dev")
    created = c.post(PULLS, json={"head": "feat", "base": "main", "title": "T", "body": "B"})
    assert created.status_code == 201
    pr = created.json()
    assert pr["number"] == 1 and pr["state"] == "open" and pr["head"]["ref"] == "feat"
    assert pr["head"]["label"] == "acme:feat" and pr["url"].endswith("/pulls/1")
    assert pr["head"]["sha"] == gh.state.refs()["feat"] and pr["merged"] is False

    c.post(PULLS, json={"head": "acme:other", "base": "dev", "title": "O"})
    assert [p["number"] for p in c.get(PULLS, params={"head": "acme:feat", "state": "open"}).json()] == [1]
    assert c.get(PULLS, params={"head": "elsewhere:feat"}).json() == []
    # A head filter without its owner is silently ignored by GitHub: every open PR comes back.
    assert [p["number"] for p in c.get(PULLS, params={"head": "feat"}).json()] == [2, 1]
    assert [p["number"] for p in c.get(PULLS, params={"base": "dev"}).json()] == [2]
    assert [p["number"] for p in c.get(PULLS).json()] == [2, 1]  # newest first by default
    assert [p["number"] for p in c.get(PULLS, params={"direction": "asc"}).json()] == [1, 2]
    assert [p["number"] for p in c.get(PULLS, params={"sort": "updated"}).json()] == [1, 2]  # asc by default
    listed = c.get(PULLS).json()[0]
    assert "mergeable" not in listed and "merged" not in listed  # the list gives pull-request-simple

    edited = c.patch(f"{PULLS}/1", json={"title": "T2", "body": "B2"}).json()
    assert (edited["title"], edited["body"]) == ("T2", "B2")
    assert c.get(f"{PULLS}/1").json()["title"] == "T2"
    closed = c.patch(f"{PULLS}/1", json={"state": "closed"}).json()
    assert closed["state"] == "closed" and closed["closed_at"] and closed["merged"] is False
    assert c.get(PULLS, params={"head": "acme:feat", "state": "open"}).json() == []
    assert [p["number"] for p in c.get(PULLS, params={"state": "all"}).json()] == [2, 1]
    # A closed PR does not block a new one for the same branch.
    assert c.post(PULLS, json={"head": "feat", "base": "main", "title": "T3"}).status_code == 201

    recorded = [(r.method, r.path, r.status) for r in gh.requests]
    assert recorded[0] == ("POST", PULLS, 201) and ("PATCH", f"{PULLS}/1", 200) in recorded
    assert gh.requests[0].body == {"head": "feat", "base": "main", "title": "T", "body": "B"}


def test_create_pull_refuses_what_github_refuses(gh: GitHubStandIn) -> None:
    c = api(gh)
    branch(gh, "feat")
    gh.commit("empty", {}, parent="main")  # one commit with main's tree: still a commit over main
    git_sha = gh.state.refs()["main"]
    gh.state.git("update-ref", "refs/heads/same", git_sha)  # a branch at main's tip: nothing to propose

    def refused(payload: dict) -> list[dict]:
        resp = c.post(PULLS, json=payload)
        assert resp.status_code == 422, resp.text
        assert resp.json()["message"] == "Validation Failed"
        return resp.json()["errors"]

    base = {"head": "feat", "base": "main", "title": "T"}
    for blank in ({"title": ""}, {"title": "   "}, {"title": None}):
        assert refused({**base, **blank}) == [{"resource": "PullRequest", "field": "title", "code": "missing_field"}]
    assert refused({"base": "main", "title": "x"})[0] == {
        "resource": "PullRequest",
        "field": "head",
        "code": "missing_field",
    }
    assert refused({**base, "head": "nope"}) == [{"resource": "PullRequest", "field": "head", "code": "invalid"}]
    assert refused({**base, "head": "someone-else:feat"})[0]["field"] == "head"  # no forks here
    assert refused({**base, "base": "nope"}) == [{"resource": "PullRequest", "field": "base", "code": "invalid"}]
    assert refused({**base, "head": "main"})[0]["message"] == "No commits between main and main"
    assert refused({**base, "head": "same"})[0]["message"] == "No commits between main and same"
    # A head the base already contains proposes nothing either.
    gh.state.git("update-ref", "refs/heads/old", git_sha)
    branch(gh, "main-moved-on", parent="main")
    assert refused({**base, "head": "old", "base": "main-moved-on"})[0]["message"].startswith("No commits between")

    assert c.post(PULLS, json=base).status_code == 201
    assert refused({**base, "head": "acme:feat", "title": "again"}) == [
        {"resource": "PullRequest", "code": "custom", "message": "A pull request already exists for acme:feat."}
    ]
    assert c.post(PULLS, json={**base, "head": "empty"}).status_code == 201
    assert len(gh.pulls) == 2


def test_edit_pull_refuses_what_github_refuses(gh: GitHubStandIn) -> None:
    c = api(gh)
    branch(gh, "feat")
    gh.commit("dev", {"dev.txt": "dev"}, parent="main")
    number = c.post(PULLS, json={"head": "feat", "base": "main", "title": "T"}).json()["number"]
    url = f"{PULLS}/{number}"

    def refused(payload: dict) -> dict:
        resp = c.patch(url, json=payload)
        assert resp.status_code == 422, resp.text
        return resp.json()["errors"][0]

    assert refused({"state": "merged"}) == {"resource": "PullRequest", "field": "state", "code": "invalid"}
    assert refused({"title": ""})["field"] == "title"
    assert refused({"base": "nope"}) == {"resource": "PullRequest", "field": "base", "code": "invalid"}
    assert c.patch(url, json={"base": "dev"}).json()["base"]["ref"] == "dev"  # an open PR may change base
    closing_with_base = refused({"state": "closed", "base": "main"})
    assert closing_with_base["message"] == "Cannot change the base branch of a closed pull request."
    assert gh.pulls[0]["state"] == "open" and gh.pulls[0]["base"] == "dev"  # nothing of it applied

    assert c.patch(url, json={"state": "closed"}).status_code == 200
    assert refused({"base": "main"}) == {
        "resource": "PullRequest",
        "field": "base",
        "code": "invalid",
        "message": "Cannot change the base branch of a closed pull request.",
    }
    # Reopen: fine after a fast-forward of the head, refused after a force-push or deletion.
    branch(gh, "feat", parent="feat")
    assert c.patch(url, json={"state": "open"}).json()["state"] == "open"
    c.patch(url, json={"state": "closed"})
    gh.commit("feat", {"other.txt": "rewritten"}, parent="main")  # a force-push
    assert refused({"state": "open"}) == {
        "resource": "PullRequest",
        "field": "state",
        "code": "custom",
        "message": "state cannot be changed. The feat branch was force-pushed or recreated.",
    }
    gh.delete_branch("feat")
    assert refused({"state": "open"})["message"] == "state cannot be changed. The feat branch has been deleted."
    assert gh.pulls[0]["state"] == "closed"
    # A closed PR cannot be reopened while another open PR has its head and base.
    branch(gh, "feat2")
    first = c.post(PULLS, json={"head": "feat2", "base": "main", "title": "1"}).json()["number"]
    c.patch(f"{PULLS}/{first}", json={"state": "closed"})
    c.post(PULLS, json={"head": "feat2", "base": "main", "title": "2"})
    resp = c.patch(f"{PULLS}/{first}", json={"state": "open"})
    assert resp.status_code == 422 and "already exists" in resp.json()["errors"][0]["message"]


# ---------------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------------


def test_merge_methods_write_real_commits(gh: GitHubStandIn) -> None:
    from github import Auth, Github

    repo = Github(base_url=gh.url, auth=Auth.Token(TOKEN), seconds_between_requests=0, seconds_between_writes=0)
    repo = repo.get_repo("acme/processors")
    for name in ("m", "s", "r"):
        branch(gh, name)
        gh.commit(name, {f"{name}2.txt": "second"}, f"second on {name}")
    c = api(gh)

    def merged(name: str, method: str) -> tuple[int, str]:
        pr = repo.create_pull(base="main", head=name, title=f"PR {name}", body="")
        assert c.get(f"{PULLS}/{pr.number}/merge").status_code == 404  # not merged yet
        before = gh.state.refs()["main"]
        status = pr.merge(merge_method=method)
        assert status.merged and status.sha == gh.state.refs()["main"]
        assert c.get(f"{PULLS}/{pr.number}/merge").status_code == 204
        again = repo.get_pull(pr.number)
        assert (again.state, again.merged, again.merge_commit_sha) == ("closed", True, status.sha)
        assert again.merged_at is not None and again.mergeable is None
        return pr.number, before

    _n, before = merged("m", "merge")
    tip = gh.state.refs()["main"]
    parents = gh.state.git("log", "-1", "--format=%P", tip).stdout.split()
    assert parents == [before, gh.state.refs()["m"]]  # a merge commit, never a fast-forward
    assert gh.state.git("log", "-1", "--format=%s", tip).stdout.strip() == "Merge pull request #1 from acme/m"

    number, before = merged("s", "squash")
    tip = gh.state.refs()["main"]
    assert gh.state.git("log", "-1", "--format=%P", tip).stdout.split() == [before]
    assert gh.state.git("log", "-1", "--format=%s", tip).stdout.strip() == f"PR s (#{number})"
    assert gh.state.git("ls-tree", "--name-only", tip).stdout.split() == sorted(
        ["README.md", "conf.txt", "m.txt", "m2.txt", "s.txt", "s2.txt"]
    )

    _n, before = merged("r", "rebase")
    replayed = gh.state.git("log", "--format=%s|%ce", f"{before}..main").stdout.splitlines()
    assert replayed == ["second on r|noreply@github.com", "work on r|noreply@github.com"]  # new committer
    assert gh.state.refs()["r"] not in gh.state.git("rev-list", "main").stdout  # new shas, as GitHub's rebase


def test_merge_refusals_and_mergeability(gh: GitHubStandIn) -> None:
    c = api(gh)
    branch(gh, "left", text="a\nLEFT\nc\n")
    branch(gh, "right", text="a\nRIGHT\nc\n")
    left = c.post(PULLS, json={"head": "left", "base": "main", "title": "L"}).json()
    right = c.post(PULLS, json={"head": "right", "base": "main", "title": "R"}).json()
    assert (left["mergeable"], left["mergeable_state"]) == (True, "clean")

    assert c.put(f"{PULLS}/1/merge", json={"merge_method": "octopus"}).status_code == 422
    stale = c.put(f"{PULLS}/1/merge", json={"sha": "1" * 40})
    assert stale.status_code == 409
    assert stale.json()["message"] == "Head branch was modified. Review and try the merge again."
    assert c.put(f"{PULLS}/1/merge", json={"sha": left["head"]["sha"]}).status_code == 200
    # The other PR now conflicts with main.
    after = c.get(f"{PULLS}/2").json()
    assert (after["mergeable"], after["mergeable_state"]) == (False, "dirty")
    conflict = c.put(f"{PULLS}/2/merge", json={})
    assert conflict.status_code == 405 and conflict.json()["message"] == "Pull Request is not mergeable"
    assert c.put(f"{PULLS}/1/merge", json={}).status_code == 405  # already merged
    reopen = c.patch(f"{PULLS}/1", json={"state": "open"})
    assert reopen.status_code == 422 and "merged" in reopen.json()["errors"][0]["message"]
    c.patch(f"{PULLS}/{right['number']}", json={"state": "closed"})
    assert c.put(f"{PULLS}/2/merge", json={}).status_code == 405  # closed

    # Required reviews: blocked until enough approvals.
    gh.protect("main", required_approving_review_count=2)
    branch(gh, "reviewed")
    number = c.post(PULLS, json={"head": "reviewed", "base": "main", "title": "Rv"}).json()["number"]
    assert c.get(f"{PULLS}/{number}").json()["mergeable_state"] == "blocked"
    gh.approve(number)
    blocked = c.put(f"{PULLS}/{number}/merge", json={})
    assert blocked.status_code == 405
    assert blocked.json()["message"] == "At least 2 approving reviews are required by reviewers with write access."
    gh.approve(number, by="second-reviewer")
    assert c.get(f"{PULLS}/{number}").json()["mergeable_state"] == "clean"
    assert c.put(f"{PULLS}/{number}/merge", json={"merge_method": "squash"}).status_code == 200


def test_merge_refused_when_the_base_moved_during_it(gh: GitHubStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.github_standin import server

    c = api(gh)
    head = branch(gh, "feat")
    number = c.post(PULLS, json={"head": "feat", "base": "main", "title": "F"}).json()["number"]
    # Another client's push lands on main after the merge read main's tip and before it moves main:
    # the merge's compare-and-swap of the ref fails, and the other write is kept.
    merge_tree = server._Handler._merge_tree
    landed: list[str] = []

    def racing(handler: server._Handler, base_sha: str, head_sha: str) -> str | None:
        tree = merge_tree(handler, base_sha, head_sha)
        if not landed:
            landed.append(gh.commit("main", {"theirs.txt": "theirs"}, "pushed meanwhile"))
        return tree

    monkeypatch.setattr(server._Handler, "_merge_tree", racing)
    refused = c.put(f"{PULLS}/{number}/merge", json={"sha": head})
    assert (refused.status_code, refused.json()["message"]) == (
        405,
        "Base branch was modified. Review and try the merge again.",
    )
    assert gh.state.refs()["main"] == landed[0]
    pr = c.get(f"{PULLS}/{number}").json()
    assert (pr["state"], pr["merged"], pr["merge_commit_sha"]) == ("open", False, None)
    assert c.get(f"{PULLS}/{number}/merge").status_code == 404
    # Tried again, it merges onto the moved base.
    merged = c.put(f"{PULLS}/{number}/merge", json={"sha": head})
    assert merged.status_code == 200
    assert gh.state.git("log", "-1", "--format=%P", "main").stdout.split() == [landed[0], head]


def test_merge_refused_without_its_base_branch(gh: GitHubStandIn) -> None:
    c = api(gh)
    gh.commit("dev", {"dev.txt": "dev"}, parent="main")
    branch(gh, "feat", parent="dev")
    number = c.post(PULLS, json={"head": "feat", "base": "dev", "title": "F"}).json()["number"]
    gh.delete_branch("dev")
    refused = c.put(f"{PULLS}/{number}/merge", json={})
    assert (refused.status_code, refused.json()["message"]) == (405, "Pull Request is not mergeable")
    assert "dev" not in gh.state.refs()
    assert (gh.pulls[0]["state"], gh.pulls[0]["merged"]) == ("open", False)


# ---------------------------------------------------------------------------------------------------
# Pagination
# ---------------------------------------------------------------------------------------------------


def test_link_header_keeps_every_query_parameter(gh: GitHubStandIn) -> None:
    c = api(gh)
    gh.commit("dev", {"dev.txt": "dev"}, parent="main")
    for n in range(5):
        branch(gh, f"b{n}")
        c.post(PULLS, json={"head": f"b{n}", "base": "main", "title": "t"})
    branch(gh, "d0", parent="dev")
    c.post(PULLS, json={"head": "d0", "base": "dev", "title": "t"})
    params = {"state": "open", "base": "main", "sort": "created", "direction": "asc", "per_page": "2"}
    first = c.get(PULLS, params=params)
    links = {rel: url for url, rel in _links(first.headers["Link"])}
    assert set(links) == {"next", "last"}
    for rel, page in (("next", "2"), ("last", "3")):
        parts = urlsplit(links[rel])
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{gh.url}{PULLS}"
        assert parse_qsl(parts.query) == [*params.items(), ("page", page)]
    second = c.get(links["next"])
    assert [p["head"]["ref"] for p in second.json()] == ["b2", "b3"]
    links = {rel: url for url, rel in _links(second.headers["Link"])}
    assert set(links) == {"prev", "next", "last", "first"}
    assert parse_qsl(urlsplit(links["first"]).query) == [*params.items(), ("page", "1")]
    # A page given in the request keeps its place; only its value changes.
    third = c.get(f"{PULLS}?page=3&base=main&per_page=2")
    prev = dict(_links(third.headers["Link"]))
    assert [k for k, _ in parse_qsl(urlsplit(next(u for u, r in prev.items() if r == "prev")).query)] == [
        "page",
        "base",
        "per_page",
    ]
    assert [p["head"]["ref"] for p in third.json()] == ["b0"]  # desc by default: b4 b3 | b2 b1 | b0
    # Everything on one page: no Link header.
    assert "Link" not in c.get(PULLS, params={"per_page": "100"}).headers


def test_pygithub_pages_through_a_filtered_list(gh: GitHubStandIn) -> None:
    from github import Auth, Github

    c = api(gh)
    gh.commit("dev", {"dev.txt": "dev"}, parent="main")
    for n in range(7):
        branch(gh, f"m{n}")
        c.post(PULLS, json={"head": f"m{n}", "base": "main", "title": f"main {n}"})
        branch(gh, f"d{n}", parent="dev")
        c.post(PULLS, json={"head": f"d{n}", "base": "dev", "title": f"dev {n}"})
    c.patch(f"{PULLS}/1", json={"state": "closed"})  # m0: closed
    gh.clear_requests()

    g = Github(base_url=gh.url, auth=Auth.Token(TOKEN), per_page=2, seconds_between_requests=0)
    pulls = list(g.get_repo("acme/processors").get_pulls(state="open", base="main", sort="created", direction="asc"))
    assert [p.head.ref for p in pulls] == [f"m{n}" for n in range(1, 7)]
    pages = [r for r in gh.requests if r.path == PULLS]
    assert len(pages) == 3
    for n, request in enumerate(pages, start=1):
        expected = {"state": "open", "base": "main", "sort": "created", "direction": "asc", "per_page": "2"}
        assert request.query == (expected if n == 1 else {**expected, "page": str(n)})


def _links(header: str) -> list[tuple[str, str]]:
    out = []
    for part in header.split(","):
        url, rel = part.split(";")
        out.append((url.strip()[1:-1], rel.strip().removeprefix('rel="').removesuffix('"')))
    return out


# ---------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------


def test_fail_next(gh: GitHubStandIn) -> None:
    branch(gh, "a")
    gh.fail_next(502, "Server Error", method="POST")
    c = api(gh)
    assert c.get("/repos/acme/processors").status_code == 200  # only POSTs fail
    assert c.post(PULLS, json={"head": "a", "base": "main", "title": "t"}).status_code == 502
    assert gh.pulls == []
    assert c.post(PULLS, json={"head": "a", "base": "main", "title": "t"}).status_code == 201


def test_fail_next_applied_and_with_headers(gh: GitHubStandIn) -> None:
    branch(gh, "a")
    c = api(gh)
    gh.fail_next(502, "Server Error", method="POST", applied=True)
    lost = c.post(PULLS, json={"head": "a", "base": "main", "title": "t"})
    assert lost.status_code == 502 and lost.json()["message"] == "Server Error"
    assert len(gh.pulls) == 1  # the PR was made; only the answer was lost
    gh.fail_next(403, "You have exceeded a secondary rate limit.", headers={"Retry-After": "1"}, times=2)
    for _ in range(2):
        limited = c.get(PULLS)
        assert limited.status_code == 403 and limited.headers["Retry-After"] == "1"
    assert c.get(PULLS).status_code == 200


def test_before_next_runs_another_clients_write_first(gh: GitHubStandIn) -> None:
    branch(gh, "a")
    gh.before_next(lambda: gh.open_pull("a", "main", "theirs"), method="POST")
    c = api(gh)
    assert c.get(PULLS).json() == []
    resp = c.post(PULLS, json={"head": "a", "base": "main", "title": "ours"})
    assert resp.status_code == 422 and "already exists" in resp.json()["errors"][0]["message"]


def test_git_remote_checks_branches(tmp_path: Path) -> None:
    remote = tmp_path / "r.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    (seed / "f").write_text("x")
    ident = ["-c", "user.name=a", "-c", "user.email=a@example.com"]
    for args in (["add", "f"], [*ident, "commit", "-qm", "c"], ["push", "-q", str(remote), "main", "main:same"]):
        git(seed, *args)
    with GitHubStandIn(tokens={TOKEN}, git_remote=remote) as gh:
        c = api(gh)
        missing = c.post(PULLS, json={"head": "nope", "base": "main", "title": "t"})
        assert missing.status_code == 422
        same = c.post(PULLS, json={"head": "same", "base": "main", "title": "t"})
        assert same.status_code == 422 and "No commits between" in same.json()["errors"][0]["message"]
        assert (remote / "hooks" / "pre-receive").exists()
    assert not (remote / "hooks" / "pre-receive").exists()  # the test's own repository is left as given
    assert remote.is_dir()


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

    branch(gh, "x")
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
        ("GET", PULLS, 200),
        ("POST", PULLS, 201),
        ("PATCH", f"{PULLS}/1", 200),
        ("GET", PULLS, 200),
        ("GET", f"{PULLS}/1", 200),
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
    branch(gh, "feat")
    c.post(PULLS, json={"head": "feat", "base": "main", "title": "P"})
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


def test_unknown_issues_page_sizes_and_branchless_merges(gh: GitHubStandIn) -> None:
    c = api(gh)
    q = "/repos/acme/processors/issues"
    unknown = c.get(f"{q}/41")
    assert (unknown.status_code, unknown.json()["message"]) == (404, "Not Found")
    for n in range(3):
        c.post(q, json={"title": f"i{n}"})
    # per_page is clamped to 1..100, as GitHub documents: 0 gives pages of one, 500 one page of all
    one = c.get(q, params={"per_page": "0"})
    assert [i["number"] for i in one.json()] == [3]
    last = next(url for url, rel in _links(one.headers["Link"]) if rel == "last")
    assert parse_qsl(urlsplit(last).query) == [("per_page", "0"), ("page", "3")]
    every = c.get(q, params={"per_page": "500"})
    assert [i["number"] for i in every.json()] == [3, 2, 1] and "Link" not in every.headers
    # a pull request whose head branch was deleted cannot be merged
    branch(gh, "gone")
    number = c.post(PULLS, json={"head": "gone", "base": "main", "title": "G"}).json()["number"]
    gh.delete_branch("gone")
    refused = c.put(f"{PULLS}/{number}/merge", json={})
    assert (refused.status_code, refused.json()["message"]) == (405, "Pull Request is not mergeable")


# ---------------------------------------------------------------------------------------------------
# Git over smart HTTP: authentication, protection
# ---------------------------------------------------------------------------------------------------


def test_git_http_needs_a_known_token(gh: GitHubStandIn, tmp_path: Path) -> None:
    anonymous = httpx.get(f"{gh.git_url}/info/refs", params={"service": "git-upload-pack"})
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == 'Basic realm="GitHub"'
    wrong = git(tmp_path, *authed(gh, "ghp_" + "w" * 36), "ls-remote", gh.git_url, check=False)
    assert wrong.returncode != 0
    assert git(tmp_path, "ls-remote", gh.git_url, check=False).returncode != 0  # private: no anonymous fetch
    heads = git(tmp_path, *authed(gh), "ls-remote", gh.git_url).stdout
    assert "refs/heads/main" in heads
    # The token as user name (https://TOKEN@github.com/...) works too, and so does the URL without .git.
    token_user = base64.b64encode(f"{TOKEN}:".encode()).decode()
    no_suffix = gh.git_url.removesuffix(".git")
    out = git(tmp_path, "-c", f"http.extraheader=Authorization: Basic {token_user}", "ls-remote", no_suffix).stdout
    assert out == heads
    # Only the smart protocol is served.
    assert httpx.get(f"{gh.git_url}/HEAD", headers={"Authorization": f"Basic {token_user}"}).status_code == 404
    assert [(r.service, r.user, r.status) for r in gh.git_requests][:2] == [
        ("git-upload-pack", None, 401),
        ("git-upload-pack", None, 401),
    ]
    assert ("git-upload-pack", "x-access-token", 200) in [(r.service, r.user, r.status) for r in gh.git_requests]
    assert gh.requests == []  # git traffic is recorded apart from REST


def test_git_http_accepts_the_token_as_user_with_x_oauth_basic(gh: GitHubStandIn, tmp_path: Path) -> None:
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    refs = f"{gh.git_url}/info/refs"
    unknown = "ghp_" + "w" * 36
    for user, password, status in (
        (TOKEN, "x-oauth-basic", 200),  # https://TOKEN:x-oauth-basic@github.com/...
        (TOKEN, "not-x-oauth-basic", 401),  # the token as user name only with that password (or none)
        (unknown, "x-oauth-basic", 401),
    ):
        got = httpx.get(refs, params={"service": "git-upload-pack"}, headers={"Authorization": basic(user, password)})
        assert got.status_code == status, (user, password)
    # A real clone and push with it; the user name (the token) is what the push is recorded under.
    header = f"http.extraheader=Authorization: {basic(TOKEN, 'x-oauth-basic')}"
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", "-c", header, gh.git_url, str(work))
    for setting in ("user.name=Hu Man", "user.email=human@example.com"):
        git(work, "config", *setting.split("=", 1))
    sha = commit_file(work, "oauth.txt", "x")
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/oauth")
    assert gh.state.refs()["oauth"] == sha
    assert [(p["ref"], p["user"], p["refused"]) for p in gh.pushes] == [("refs/heads/oauth", TOKEN, None)]
    assert ("git-receive-pack", TOKEN, 200) in [(r.service, r.user, r.status) for r in gh.git_requests]


def test_public_repository_fetches_anonymously_but_pushes_need_a_token(tmp_path: Path) -> None:
    with GitHubStandIn(tokens={TOKEN}, private=False) as gh:
        gh.commit("main", {"f": "x"})
        work = tmp_path / "w"
        git(tmp_path, "clone", "--quiet", gh.git_url, str(work))  # no credentials
        git(work, "config", "user.name", "a")
        git(work, "config", "user.email", "a@example.com")
        commit_file(work, "g", "y")
        refused = git(work, "push", "origin", "main", check=False)
        assert refused.returncode != 0 and gh.git_requests[-1].status == 401
        assert git(work, *authed(gh), "push", "--quiet", "origin", "main").returncode == 0
        assert gh.pushes[-1]["ref"] == "refs/heads/main" and gh.pushes[-1]["user"] == "x-access-token"


def test_git_http_streams_a_large_chunked_push(gh: GitHubStandIn, tmp_path: Path) -> None:
    work = clone(gh, tmp_path)
    (work / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # over http.postBuffer: sent chunked
    git(work, "add", "blob.bin")
    git(work, "commit", "--quiet", "-m", "big")
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/big")
    assert gh.state.refs()["big"] == git(work, "rev-parse", "HEAD").stdout.strip()
    size = gh.state.git("cat-file", "-s", "big:blob.bin").stdout.strip()
    assert size == str(3 * 1024 * 1024)


def test_protected_branch_refuses_pushes_like_github(gh: GitHubStandIn, tmp_path: Path) -> None:
    work = clone(gh, tmp_path)
    gh.protect("main")
    before = gh.state.refs()["main"]
    commit_file(work, "README.md", "direct\n")
    push = git(work, "push", "--porcelain", "origin", "HEAD:main", check=False)
    assert push.returncode != 0
    assert "remote: error: GH006: Protected branch update failed for refs/heads/main." in push.stderr
    assert "remote: error: Changes must be made through a pull request." in push.stderr
    assert "[remote rejected]" in push.stdout
    assert gh.state.refs()["main"] == before

    # Without required PRs, fast-forwards pass; force-pushes and deletion do not.
    gh.protect("main", require_pull_request=False)
    git(work, "push", "--quiet", "origin", "HEAD:main")
    git(work, "reset", "--quiet", "--hard", "HEAD~1")
    commit_file(work, "README.md", "rewritten\n")
    forced = git(work, "push", "--force", "origin", "HEAD:main", check=False)
    assert forced.returncode != 0 and "remote: error: Cannot force-push to this branch" in forced.stderr
    deleted = git(work, "push", "origin", ":main", check=False)
    assert deleted.returncode != 0 and "remote: error: Cannot delete this branch" in deleted.stderr
    gh.protect("main", require_pull_request=False, allow_force_pushes=True, allow_deletions=True)
    git(work, "push", "--quiet", "--force", "origin", "HEAD:main")
    gh.unprotect("main")

    # Patterns: `*` does not cross `/`. A push with one refused ref is refused whole.
    gh.protect("release/*")
    both = git(work, "push", "origin", "HEAD:refs/heads/release/1", "HEAD:refs/heads/feature", check=False)
    assert both.returncode != 0 and "refs/heads/release/1" in both.stderr
    assert "release/1" not in gh.state.refs() and "feature" not in gh.state.refs()
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/release/1/hotfix")
    refusals = [(p["ref"], p["refused"]) for p in gh.pushes if p["refused"]]
    assert refusals == [
        ("refs/heads/main", "Changes must be made through a pull request."),
        ("refs/heads/main", "Cannot force-push to this branch"),
        ("refs/heads/main", "Cannot delete this branch"),
        ("refs/heads/release/1", "Changes must be made through a pull request."),
        ("refs/heads/feature", "refused with the rest of the push"),
    ]
    # A write straight into the bare repository (the admin on disk) is not a push through GitHub.
    gh.protect("main")
    gh.commit("main", {"admin.txt": "x"})
    git(work, "push", "--quiet", "--force", str(gh.git_dir), "HEAD:main")
    assert gh.state.refs()["main"] == git(work, "rev-parse", "HEAD").stdout.strip()


def test_protection_exact_name_wins_and_patterns_match_as_fnmatch_pathname(gh: GitHubStandIn, tmp_path: Path) -> None:
    work = clone(gh, tmp_path)
    commit_file(work, "work.txt", "work\n")
    # The pattern is added first, so only the exact-name lookup lets the laxer rule win for release/open.
    gh.protect("release/**/*")
    gh.protect("release/open", require_pull_request=False)
    gh.protect("hotfix/*")
    gh.protect("feat/**")
    gh.protect("v?x")
    names = ("release/open", "release/x", "release/a/b", "hotfix/a", "hotfix/a/b", "feat/a", "feat/a/b", "v1x", "v/x")
    for name in names:
        pushed = git(work, "push", "--porcelain", "origin", f"HEAD:refs/heads/{name}", check=False)
        refused = f"remote: error: GH006: Protected branch update failed for refs/heads/{name}." in pushed.stderr
        assert refused == (pushed.returncode != 0), pushed.stderr
    pr_only = "Changes must be made through a pull request."
    assert {p["ref"].removeprefix("refs/heads/"): p["refused"] for p in gh.pushes} == {
        "release/open": None,  # the exact name's rule, though release/**/* matches too
        "release/x": pr_only,  # a segment's leading `**/` is zero or more whole segments: none here,
        "release/a/b": pr_only,  # one here (it crosses `/`)
        "hotfix/a": pr_only,
        "hotfix/a/b": None,  # `*` stops at `/`
        "feat/a": pr_only,
        "feat/a/b": None,  # so does a `**` not followed by `/`: it is a `*`
        "v1x": pr_only,
        "v/x": None,  # and `?`
    }
    assert set(gh.state.refs()) == {"main", "release/open", "hotfix/a/b", "feat/a/b", "v/x"}
    # The REST side reads the same rule.
    c = api(gh)
    lax = c.get("/repos/acme/processors/branches/release/open/protection").json()
    assert "required_pull_request_reviews" not in lax
    unprotected = c.get("/repos/acme/processors/branches/feat/a/b/protection")
    assert (unprotected.status_code, unprotected.json()["message"]) == (404, "Branch not protected")


def test_branch_protection_endpoint(gh: GitHubStandIn) -> None:
    from github import Auth, Github, GithubException

    branch(gh, "theory-deploy/pin/a-b-v1")
    c = api(gh)
    missing = c.get("/repos/acme/processors/branches/main/protection")
    assert missing.status_code == 404 and missing.json()["message"] == "Branch not protected"
    assert c.get("/repos/acme/processors/branches/nope/protection").json()["message"] == "Branch not found"
    gh.protect("main", required_approving_review_count=1)
    gh.protect("theory-deploy/**/*", require_pull_request=False)  # GitHub's form for any depth

    repo = Github(base_url=gh.url, auth=Auth.Token(TOKEN), seconds_between_requests=0).get_repo("acme/processors")
    main = repo.get_branch("main")
    assert main.protected and main.commit.sha == gh.state.refs()["main"]
    protection = main.get_protection()
    assert protection.required_pull_request_reviews.required_approving_review_count == 1
    assert protection.allow_force_pushes is False and protection.allow_deletions is False
    pin = repo.get_branch("theory-deploy/pin/a-b-v1")
    assert pin.protected and pin.get_protection().required_pull_request_reviews is None
    with pytest.raises(GithubException) as info:
        repo.get_branch("nope")
    assert info.value.status == 404
    gh.unprotect("main")
    assert c.get("/repos/acme/processors/branches/main/protection").status_code == 404


# ---------------------------------------------------------------------------------------------------
# The Git database, updateRefs, and commit verification (tests/github_standin/gitdata.py)
# ---------------------------------------------------------------------------------------------------

BOT = "ghs_" + "b" * 36  # an installation token: what a GitHub App's token and GITHUB_TOKEN are
GIT = "/repos/acme/processors/git"
ZERO = "0" * 40


def _bot(gh: GitHubStandIn) -> httpx.Client:
    gh.add_token(BOT)
    return api(gh, BOT)


def _commit_on_main(gh: GitHubStandIn, client: httpx.Client, text: str, **extra: object) -> dict:
    """A commit changing conf.txt on top of main, made through the API (no ref moves)."""
    main = gh.state.refs()["main"]
    base_tree = client.get(f"{GIT}/commits/{main}").json()["tree"]["sha"]
    blob = client.post(f"{GIT}/blobs", json={"content": base64.b64encode(text.encode()).decode(), "encoding": "base64"})
    assert blob.status_code == 201
    tree = client.post(
        f"{GIT}/trees",
        json={
            "base_tree": base_tree,
            "tree": [{"path": "conf.txt", "mode": "100644", "type": "blob", "sha": blob.json()["sha"]}],
        },
    )
    assert tree.status_code == 201
    made = client.post(
        f"{GIT}/commits", json={"message": "api change\n", "tree": tree.json()["sha"], "parents": [main], **extra}
    )
    assert made.status_code == 201
    return made.json()


def test_a_bot_tokens_api_commit_is_signed_and_verified(gh: GitHubStandIn) -> None:
    made = _commit_on_main(gh, _bot(gh), "x\n")
    assert made["verification"]["verified"] is True and made["verification"]["reason"] == "valid"
    assert made["author"]["name"] == "github-actions[bot]" and made["committer"]["email"] == "noreply@github.com"
    for path in (f"{GIT}/commits/{made['sha']}", f"/repos/acme/processors/commits/{made['sha']}"):
        answer = api(gh, BOT).get(path).json()
        verification = answer.get("verification") or answer["commit"]["verification"]
        assert verification["verified"] is True and verification["payload"].startswith(f"tree {made['tree']['sha']}")
    # The signature is in the commit object itself, as GitHub's is: a fetch brings it along.
    assert "\ngpgsig " in gh.state.git("cat-file", "commit", made["sha"]).stdout


def test_a_persons_api_commit_a_custom_author_and_a_pushed_commit_are_not_verified(
    gh: GitHubStandIn, tmp_path: Path
) -> None:
    by_person = _commit_on_main(gh, api(gh), "p\n")
    assert by_person["verification"] == {
        "verified": False,
        "reason": "unsigned",
        "signature": None,
        "payload": None,
        "verified_at": None,
    }
    assert by_person["author"]["email"] == by_person["committer"]["email"] == "token-user@users.noreply.github.com"
    custom = _commit_on_main(gh, _bot(gh), "c\n", author={"name": "Someone", "email": "s@example.com"})
    assert custom["verification"]["verified"] is False and custom["author"]["email"] == "s@example.com"
    work = clone(gh, tmp_path)
    pushed = commit_file(work, "conf.txt", "pushed\n")
    git(work, "push", "--quiet", "origin", "HEAD:main")
    assert api(gh, BOT).get(f"/repos/acme/processors/commits/{pushed}").json()["commit"]["verification"]["reason"] == (
        "unsigned"
    )


def test_tree_refusals(gh: GitHubStandIn) -> None:
    client = _bot(gh)
    main_tree = client.get(f"{GIT}/commits/{gh.state.refs()['main']}").json()["tree"]["sha"]
    entry = {"path": "new.txt", "mode": "100644", "type": "blob", "content": "n\n"}
    cases = [
        {"tree": "no list"},
        {"base_tree": "f" * 40, "tree": [entry]},
        {"tree": [{**entry, "mode": "100600"}]},
        {"tree": [{**entry, "type": "tree"}]},
        {"tree": [{**entry, "sha": "f" * 40}]},  # both sha and content
        {"tree": [{"path": "x", "mode": "100644", "type": "blob", "sha": "f" * 40}]},  # no such blob
        {"base_tree": main_tree, "tree": [{"path": "absent.txt", "mode": "100644", "type": "blob", "sha": None}]},
    ]
    for body in cases:
        assert client.post(f"{GIT}/trees", json=body).status_code == 422, body
    # Deleting a file that exists, and adding one, on top of base_tree.
    made = client.post(
        f"{GIT}/trees",
        json={
            "base_tree": main_tree,
            "tree": [entry, {"path": "README.md", "mode": "100644", "type": "blob", "sha": None}],
        },
    )
    assert made.status_code == 201 and sorted(e["path"] for e in made.json()["tree"]) == ["conf.txt", "new.txt"]


def test_commit_and_blob_refusals(gh: GitHubStandIn) -> None:
    client = _bot(gh)
    main = gh.state.refs()["main"]
    tree = client.get(f"{GIT}/commits/{main}").json()["tree"]["sha"]
    assert client.post(f"{GIT}/commits", json={"tree": tree, "parents": [main]}).status_code == 422
    assert client.post(f"{GIT}/commits", json={"message": "m", "tree": main, "parents": [main]}).status_code == 422
    assert client.post(f"{GIT}/commits", json={"message": "m", "tree": tree, "parents": [tree]}).status_code == 422
    assert client.post(f"{GIT}/blobs", json={"encoding": "base64"}).status_code == 422
    assert client.post(f"{GIT}/blobs", json={"content": "x", "encoding": "latin-1"}).status_code == 422
    assert gh.api_commits == []


def test_rest_ref_writes_and_their_422s(gh: GitHubStandIn) -> None:
    client = _bot(gh)
    main = gh.state.refs()["main"]
    made = _commit_on_main(gh, client, "r\n")["sha"]
    elsewhere = _commit_on_main(gh, client, "s\n")["sha"]  # a sibling of `made`: not a fast-forward from it

    assert client.post(f"{GIT}/refs", json={"ref": "heads/x", "sha": made}).status_code == 422  # not refs/...
    assert client.post(f"{GIT}/refs", json={"ref": "refs/heads/x", "sha": "f" * 40}).status_code == 422
    created = client.post(f"{GIT}/refs", json={"ref": "refs/heads/x", "sha": made})
    assert created.status_code == 201 and created.json()["object"]["sha"] == made
    again = client.post(f"{GIT}/refs", json={"ref": "refs/heads/x", "sha": made})
    assert again.status_code == 422 and again.json()["message"] == "Reference already exists"

    assert client.get(f"{GIT}/ref/heads/x").json()["object"]["sha"] == made
    assert client.get(f"{GIT}/ref/heads/nope").status_code == 404
    assert client.patch(f"{GIT}/refs/heads/nope", json={"sha": made}).json()["message"] == "Reference does not exist"
    not_ff = client.patch(f"{GIT}/refs/heads/x", json={"sha": elsewhere})
    assert not_ff.status_code == 422 and not_ff.json()["message"] == "Update is not a fast forward"
    assert client.patch(f"{GIT}/refs/heads/x", json={"sha": elsewhere, "force": False}).status_code == 422
    assert gh.state.refs()["x"] == made
    forced = client.patch(f"{GIT}/refs/heads/x", json={"sha": elsewhere, "force": True})
    assert forced.status_code == 200 and gh.state.refs()["x"] == elsewhere
    assert client.patch(f"{GIT}/refs/heads/x", json={"sha": main}, headers={}).status_code == 422  # backwards
    assert [u["via"] for u in gh.ref_updates] == ["rest", "rest"]


def test_ref_writes_honour_branch_protection(gh: GitHubStandIn) -> None:
    client = _bot(gh)
    made = _commit_on_main(gh, client, "p\n")["sha"]
    gh.protect("main")
    refused = client.patch(f"{GIT}/refs/heads/main", json={"sha": made})
    assert refused.status_code == 422
    assert refused.json()["message"].startswith("Protected branch update failed for refs/heads/main.")
    answer = client.post("/graphql", json=_update_refs("refs/heads/main", made, gh.state.refs()["main"])).json()
    assert answer["data"]["updateRefs"] is None and "Protected branch update failed" in answer["errors"][0]["message"]
    assert gh.ref_updates == []


def _update_refs(name: str, after: str, before: str | None, *, force: bool = False, repo: str = "R_1") -> dict:
    update: dict[str, object] = {"name": name, "afterOid": after, "force": force}
    if before is not None:
        update["beforeOid"] = before
    return {
        "query": "mutation Mutation($input: UpdateRefsInput!) { updateRefs(input: $input) { clientMutationId } }",
        "variables": {"input": {"repositoryId": repo, "refUpdates": [update]}},
    }


def test_graphql_update_refs_is_a_compare_and_swap(gh: GitHubStandIn) -> None:
    client = _bot(gh)
    first = _commit_on_main(gh, client, "1\n")["sha"]
    second = _commit_on_main(gh, client, "2\n")["sha"]  # a sibling: replacing `first` with it needs force

    created = client.post("/graphql", json=_update_refs("refs/heads/b", first, ZERO)).json()
    assert created == {"data": {"updateRefs": {"clientMutationId": None}}} and gh.state.refs()["b"] == first
    # beforeOid ZERO: "must not exist" — it does now. A stale beforeOid: a generic error, nothing moves.
    for before in (ZERO, second):
        stale = client.post("/graphql", json=_update_refs("refs/heads/b", second, before, force=True))
        assert stale.status_code == 200 and stale.json()["data"]["updateRefs"] is None
        assert stale.json()["errors"][0]["message"].startswith("Something went wrong")
    assert gh.state.refs()["b"] == first
    not_ff = client.post("/graphql", json=_update_refs("refs/heads/b", second, first)).json()
    assert "not a fast forward" in not_ff["errors"][0]["message"] and gh.state.refs()["b"] == first
    forced = client.post("/graphql", json=_update_refs("refs/heads/b", second, first, force=True)).json()
    assert "errors" not in forced and gh.state.refs()["b"] == second
    unknown = client.post("/graphql", json=_update_refs("refs/heads/b", first, second, repo="R_nope")).json()
    assert unknown["errors"][0]["type"] == "NOT_FOUND" and gh.state.refs()["b"] == second
    other = client.post("/graphql", json={"query": "{ viewer { login } }"}).json()
    assert "errors" in other
    assert [(u["old"], u["new"], u["via"]) for u in gh.ref_updates] == [
        (ZERO, first, "graphql"),
        (first, second, "graphql"),
    ]
    assert api(gh, token="nope").post("/graphql", json=_update_refs("refs/heads/b", first, second)).status_code == 401
