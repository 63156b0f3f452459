"""GitHubClient's issue calls (the nightly drift report's), over real HTTP against the GitHub stand-in."""

from __future__ import annotations

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
