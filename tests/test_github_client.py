"""GitHubClient over real HTTP against the GitHub stand-in: the drift report's issue calls, and how the
client retries (PyGithub's GithubRetry) what GitHub answers with 5xx or a secondary rate limit."""

from __future__ import annotations

import time

import pytest

from tests.github_standin import GitHubStandIn
from theory_deploy.errors import GitHubError
from theory_deploy.github_client import GitHubClient

TOKEN = "ghp_" + "i" * 36
LABEL = "theory-deploy-drift"
ISSUES = "/repos/acme/processors/issues"


@pytest.fixture
def gh():
    with GitHubStandIn(owner="acme", repo="processors", tokens={TOKEN}) as standin:
        yield standin


def client(gh: GitHubStandIn, token: str = TOKEN) -> GitHubClient:
    return GitHubClient(
        "acme/processors",
        token=token,
        base_url=gh.url,
        retries=0,
        seconds_between_requests=0,
        seconds_between_writes=0,
    )


def test_issue_lifecycle(gh: GitHubStandIn) -> None:
    c = client(gh)
    assert c.find_open_issues(LABEL) == []

    first = c.create_issue("Drift: 1 app", "llm-litellm-v1 runs sha256:aaa", [LABEL])
    other = c.create_issue("Unrelated", "not ours", ["bug"])
    assert (first, other) == (1, 2)
    assert c.find_open_issues(LABEL) == [
        {"number": 1, "title": "Drift: 1 app", "body": "llm-litellm-v1 runs sha256:aaa"}
    ]
    assert [i["number"] for i in c.find_open_issues("bug")] == [2]

    c.update_issue(first, body="llm-litellm-v1 runs sha256:bbb")
    c.comment_on_issue(first, "Still drifting on the next night.")
    assert c.find_open_issues(LABEL)[0]["body"] == "llm-litellm-v1 runs sha256:bbb"
    assert gh.comments == [{"issue": 1, "body": "Still drifting on the next night.", "id": 9000}]

    c.update_issue(first, state="closed", state_reason="completed")
    assert c.find_open_issues(LABEL) == []
    closed = gh.issues[0]
    assert (closed["state"], closed["state_reason"], closed["labels"]) == ("closed", "completed", [LABEL])

    writes = [(r.method, r.path, r.body) for r in gh.requests if r.method != "GET"]
    assert writes == [
        ("POST", ISSUES, {"title": "Drift: 1 app", "body": "llm-litellm-v1 runs sha256:aaa", "labels": [LABEL]}),
        ("POST", ISSUES, {"title": "Unrelated", "body": "not ours", "labels": ["bug"]}),
        ("PATCH", f"{ISSUES}/1", {"body": "llm-litellm-v1 runs sha256:bbb"}),
        ("POST", f"{ISSUES}/1/comments", {"body": "Still drifting on the next night."}),
        ("PATCH", f"{ISSUES}/1", {"state": "closed", "state_reason": "completed"}),
    ]
    lookups = [r.query for r in gh.requests if r.method == "GET" and r.path == ISSUES]
    assert lookups[0] == {"state": "open", "labels": LABEL}
    assert all(r.authorization == f"token {TOKEN}" for r in gh.requests)


def test_nothing_to_change_sends_nothing(gh: GitHubStandIn) -> None:
    c = client(gh)
    number = c.create_issue("t", "b", [LABEL])
    gh.clear_requests()
    c.update_issue(number)
    assert gh.requests == []
    with pytest.raises(GitHubError, match="'open' or 'closed'"):
        c.update_issue(number, state="resolved")
    assert gh.requests == []


def test_refusals_are_github_errors_with_remedies(gh: GitHubStandIn) -> None:
    c = client(gh)
    with pytest.raises(GitHubError) as info:
        c.create_issue("", "no title", [LABEL])
    assert info.value.details["status"] == 422 and "title" in info.value.remedy

    with pytest.raises(GitHubError) as info:
        c.update_issue(41, body="x")
    assert info.value.details["status"] == 404 and "issue number" in info.value.remedy
    with pytest.raises(GitHubError) as info:
        c.comment_on_issue(41, "x")
    assert info.value.details["status"] == 404 and "#41" in info.value.message

    number = c.create_issue("t", "b", [LABEL])
    with pytest.raises(GitHubError) as info:
        c.comment_on_issue(number, "")
    assert info.value.details["status"] == 422

    gh.fail_next(403, "Resource not accessible by integration", method="POST")
    with pytest.raises(GitHubError) as info:
        c.create_issue("t", "b", [LABEL])
    assert info.value.details["status"] == 403 and "issues: write" in info.value.remedy


def test_bad_token_is_401_and_never_shown(gh: GitHubStandIn) -> None:
    bad = "ghp_" + "x" * 36
    with pytest.raises(GitHubError) as info:
        client(gh, token=bad).find_open_issues(LABEL)
    assert info.value.details["status"] == 401
    assert bad not in info.value.render() and TOKEN not in info.value.render()
    assert [r.status for r in gh.requests] == [401]


# ---------------------------------------------------------------------------------------------------
# Retries (GitHubClient's default: PyGithub's GithubRetry, total=3, no backoff between 5xx retries,
# for GET, POST and PATCH; out of retries, GitHub's last answer is the error)
# ---------------------------------------------------------------------------------------------------

BRANCH = "theory-deploy/pin/llm-litellm-v1"
PULLS = "/repos/acme/processors/pulls"
SECONDARY = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."


def retrying(gh: GitHubStandIn, **kwargs) -> GitHubClient:
    """The client as the product builds it (default retries), minus the polite pauses between calls."""
    return GitHubClient(
        "acme/processors", token=TOKEN, base_url=gh.url, seconds_between_requests=0, seconds_between_writes=0, **kwargs
    )


def calls(gh: GitHubStandIn) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in gh.requests]


@pytest.fixture
def branch(gh: GitHubStandIn) -> str:
    gh.commit("main", {"registry.yaml": "amd64: a\n"}, "initial")
    gh.commit(BRANCH, {"registry.yaml": "amd64: b\n"}, "pin", parent="main")
    return BRANCH


def test_transient_5xx_on_reads_are_retried_then_succeed(gh: GitHubStandIn, branch: str) -> None:
    gh.fail_next(502, "Server Error", method="GET", times=2)
    assert retrying(gh).find_open_prs(branch) == []
    assert calls(gh) == [
        ("GET", "/repos/acme/processors", 502),
        ("GET", "/repos/acme/processors", 502),
        ("GET", "/repos/acme/processors", 200),
        ("GET", PULLS, 200),
    ]


def test_500_on_create_is_retried_and_opens_one_pr(gh: GitHubStandIn, branch: str) -> None:
    gh.fail_next(500, "Server Error", method="POST")  # refused before GitHub acted
    url, outcome = retrying(gh, retries=2).open_or_update_pr(branch, "main", "t", "body")
    assert outcome == "created" and url.endswith("/pull/1")
    assert calls(gh)[-2:] == [("POST", PULLS, 500), ("POST", PULLS, 201)]
    assert len(gh.pulls) == 1


def test_lost_answer_to_a_create_never_makes_a_second_pr(gh: GitHubStandIn, branch: str) -> None:
    """PyGithub retries POSTs on 5xx. GitHub made the PR but its answer was a 502: the retried POST
    gets 422 "already exists", which the client turns into a lookup of the PR it made."""
    gh.fail_next(502, "Server Error", method="POST", applied=True)
    url, outcome = retrying(gh).open_or_update_pr(branch, "main", "t", "body")
    assert url.endswith("/pull/1") and outcome == "created"  # made by this call, though its answer was lost
    assert [(p["number"], p["title"], p["body"]) for p in gh.pulls] == [(1, "t", "body")]
    assert calls(gh) == [
        ("GET", "/repos/acme/processors", 200),
        ("GET", PULLS, 200),
        ("POST", PULLS, 502),
        ("POST", PULLS, 422),
        ("GET", PULLS, 200),
    ]


def test_secondary_rate_limit_waits_for_retry_after(gh: GitHubStandIn, branch: str) -> None:
    gh.fail_next(403, SECONDARY, method="GET", headers={"Retry-After": "1"})
    started = time.monotonic()
    assert retrying(gh, retries=2).find_open_prs(branch) == []
    assert time.monotonic() - started >= 1.0  # GitHub's Retry-After was honoured
    assert calls(gh)[:2] == [("GET", "/repos/acme/processors", 403), ("GET", "/repos/acme/processors", 200)]


def test_a_403_without_rate_limit_signs_is_not_retried(gh: GitHubStandIn, branch: str) -> None:
    gh.fail_next(403, "Resource not accessible by integration", method="GET")
    with pytest.raises(GitHubError) as info:
        retrying(gh).find_open_prs(branch)
    assert info.value.code == "ERR_GITHUB" and info.value.details["status"] == 403
    assert calls(gh) == [("GET", "/repos/acme/processors", 403)]


def test_an_identical_pr_found_after_a_create_race_is_unchanged_not_created(gh: GitHubStandIn, branch: str) -> None:
    """Only a create that was *retried* can have made the PR it then finds: when another job opened the
    same PR (same title and body) just before our one and only POST, this call created nothing."""
    gh.before_next(lambda: gh.open_pull(branch, "main", "t", "body"), method="POST")
    url, outcome = retrying(gh).open_or_update_pr(branch, "main", "t", "body")
    assert url.endswith("/pull/1") and outcome == "unchanged"
    assert [(r.method, r.status) for r in gh.requests if r.method == "POST"] == [("POST", 422)]


def test_retries_run_out_into_a_github_error(gh: GitHubStandIn, branch: str) -> None:
    gh.fail_next(502, "Server Error", method="GET", times=3)
    with pytest.raises(GitHubError) as info:
        retrying(gh, retries=2).find_open_prs(branch)
    err = info.value
    assert err.code == "ERR_GITHUB" and "HTTP 502: Server Error" in err.message
    # GitHub's own answer, with its status and remedy: not "cannot reach" the server (urllib3's RetryError).
    assert err.details["status"] == 502 and err.status == 502  # type: ignore[attr-defined]
    assert "cannot reach" not in err.message and "RetryError" not in err.message
    assert "githubstatus.com" in err.remedy and "network" not in err.remedy
    assert TOKEN not in err.render()
    assert calls(gh) == [("GET", "/repos/acme/processors", 502)] * 3  # the first try and 2 retries


def test_pr_update_502_is_retried_then_succeeds(gh: GitHubStandIn, branch: str) -> None:
    """PyGithub's GithubRetry leaves PATCH out; the client allows it (its PATCHes send the whole title
    and body, so a repeat is harmless)."""
    c = retrying(gh)
    c.open_or_update_pr(branch, "main", "t", "body")
    gh.clear_requests()
    gh.fail_next(502, "Server Error", method="PATCH")
    url, outcome = c.open_or_update_pr(branch, "main", "t2", "body2")
    assert url.endswith("/pull/1") and outcome == "updated"
    assert [c for c in calls(gh) if c[0] == "PATCH"] == [("PATCH", f"{PULLS}/1", 502), ("PATCH", f"{PULLS}/1", 200)]
    assert (gh.pulls[0]["title"], gh.pulls[0]["body"]) == ("t2", "body2")


def test_issue_update_502_is_retried_then_succeeds(gh: GitHubStandIn) -> None:
    c = retrying(gh)
    number = c.create_issue("Drift", "old", [LABEL])
    gh.fail_next(502, "Server Error", method="PATCH", applied=True)  # applied, its answer lost: a repeat is harmless
    c.update_issue(number, body="new", state="closed", state_reason="completed")
    patches = [(r.path, r.body, r.status) for r in gh.requests if r.method == "PATCH"]
    sent = {"body": "new", "state": "closed", "state_reason": "completed"}
    assert patches == [(f"{ISSUES}/{number}", sent, 502), (f"{ISSUES}/{number}", sent, 200)]
    issue = gh.issues[0]
    assert (issue["body"], issue["state"], issue["state_reason"]) == ("new", "closed", "completed")


def test_issue_lookup_pages_keep_the_label_filter(gh: GitHubStandIn) -> None:
    """More open drift issues (32) than fit one page (30): every page asks for the label again, so no issue
    without it comes back, and none with it is missed."""
    import httpx

    with httpx.Client(base_url=gh.url, headers={"Authorization": f"token {TOKEN}"}) as http:
        for n in range(48):
            labels = [LABEL] if n % 3 else ["bug"]
            http.post(ISSUES, json={"title": f"issue {n}", "labels": labels}).raise_for_status()
    gh.clear_requests()
    found = client(gh).find_open_issues(LABEL)
    assert [i["title"] for i in found] == [f"issue {n}" for n in range(48) if n % 3]
    pages = [r for r in gh.requests if r.path == ISSUES]
    assert [r.query for r in pages] == [
        {"state": "open", "labels": LABEL},
        {"state": "open", "labels": LABEL, "page": "2"},
    ]
