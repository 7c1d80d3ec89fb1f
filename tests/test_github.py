"""The GitHub adapter (github3.py) against a stand-in built from GitHub's OpenAPI description."""

from __future__ import annotations

import pytest

from reconciler.github import GitHub, GitHubError

MARKER = "<!-- reconcile:plan -->"


def part(i: int, n: int, text: str) -> str:
    return f"<!-- reconcile:plan part={i}/{n} -->\n{text}"


@pytest.fixture
def client(github):
    github.add_pull_request(7, "Add cluster climate")
    slept: list[float] = []
    gh = GitHub("swisstwins/hpc-sites", "t0ken", api_url=github.url, sleep=slept.append)
    gh.slept = slept
    return gh


def test_sticky_comment_is_edited_in_place(github, client):
    first = client.upsert(7, [part(1, 2, "summary"), part(2, 2, "details")], MARKER)
    assert (first.created, first.edited, first.deleted) == (2, 0, 0)
    second = client.upsert(7, [part(1, 1, "summary, replanned")], MARKER)
    # part 1/1 is a new key: the old 1/2 and 2/2 are stale and deleted
    assert github.comments_on(7) == [part(1, 1, "summary, replanned")]
    assert second.deleted == 2
    third = client.upsert(7, [part(1, 1, "summary, replanned again")], MARKER)
    assert (third.created, third.edited, third.ids) == (0, 1, second.ids)


def test_other_peoples_comments_are_left_alone(github, client):
    client.comment(7, "LGTM")
    client.upsert(7, [part(1, 1, "plan")], MARKER)
    client.upsert(7, [part(1, 1, "plan 2")], MARKER)
    assert github.comments_on(7) == ["LGTM", part(1, 1, "plan 2")]


def test_server_errors_are_retried_with_backoff(github, client):
    github.fail("POST", r"/issues/7/comments$", 502)
    github.fail("POST", r"/issues/7/comments$", 503)
    client.upsert(7, [part(1, 1, "plan")], MARKER)
    assert github.comments_on(7) == [part(1, 1, "plan")]
    assert client.slept == [2.0, 4.0]


def test_a_comment_that_landed_before_the_error_is_not_posted_twice(github, client):
    github.fail("POST", r"/issues/7/comments$", 502, after_effect=True)
    client.upsert(7, [part(1, 1, "plan")], MARKER)
    assert github.comments_on(7) == [part(1, 1, "plan")]


def test_secondary_rate_limit_waits_as_told(github, client):
    github.fail("PATCH", r"/issues/comments/", 403, headers={"Retry-After": "7"}, message="You have exceeded a secondary rate limit")
    client.upsert(7, [part(1, 1, "plan")], MARKER)
    client.upsert(7, [part(1, 1, "plan, edited")], MARKER)
    assert client.slept == [7.0]
    assert github.comments_on(7) == [part(1, 1, "plan, edited")]


def test_persistent_failure_is_an_error_not_a_hang(github, client):
    for _ in range(5):
        github.fail("POST", r"/issues/7/comments$", 500)
    with pytest.raises(GitHubError, match=r"posting a comment failed \(500\)"):
        client.upsert(7, [part(1, 1, "plan")], MARKER)
    assert len(client.slept) == 4


def test_not_found_is_not_retried(github, client):
    with pytest.raises(GitHubError, match=r"reading #99 failed \(404\)"):
        client.upsert(99, [part(1, 1, "plan")], MARKER)
    assert client.slept == []


def test_commit_status_and_labels(github, client):
    github.add_pull_request(8, "Retire dev", labels=["reconcile:allow-destroy"])
    client.status("a" * 40, "success", "reconcile/apply", "4 stacks applied")
    assert github.statuses[0]["state"] == "success" and github.statuses[0]["context"] == "reconcile/apply"
    assert client.labels(8) == {"reconcile:allow-destroy"}


def test_drift_issue_opens_updates_and_closes(github, client):
    number = client.drift_issue("Drift: live state differs from git", "cluster dev on local-a")
    assert client.drift_issue("Drift: live state differs from git", "cluster dev, slurm-hpc") == number
    assert github.issues[number]["body"] == "cluster dev, slurm-hpc"
    client.drift_issue("Drift: live state differs from git", None)
    assert github.issues[number]["state"] == "closed"


def test_the_stand_in_refuses_what_github_would(github, client):
    import requests

    response = requests.post(f"{github.url}/repos/swisstwins/hpc-sites/issues/7/comments", json={"text": "x"}, headers={"Authorization": "token t"})
    assert response.status_code == 422
    assert github.violations and "request body invalid" in github.violations[0]
    github.violations.clear()
