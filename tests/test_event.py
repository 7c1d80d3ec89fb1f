"""Real webhook payloads from @octokit/webhooks-examples, read as GitHub Actions event files."""

from __future__ import annotations

import json

import pytest

from reconciler.event import parse, read


@pytest.fixture(scope="module")
def examples(octokit):
    catalogue = json.loads((octokit / "webhooks-examples" / "api.github.com" / "index.json").read_text())
    return {entry["name"]: entry["examples"] for entry in catalogue}


def test_pull_request_opened(examples):
    payload = next(e for e in examples["pull_request"] if e["action"] == "opened")
    event = parse("pull_request", payload)
    assert event.pr == payload["number"]
    assert event.head_sha == payload["pull_request"]["head"]["sha"] and event.base_sha == payload["pull_request"]["base"]["sha"]
    assert event.repository == payload["repository"]["full_name"]


def test_every_pull_request_example_parses(examples):
    for payload in examples["pull_request"]:
        event = parse("pull_request", payload)
        assert event.pr and event.head_sha and isinstance(event.from_fork, bool)


def test_labeled_pull_request_carries_its_labels(examples):
    payload = next(e for e in examples["pull_request"] if e["action"] == "labeled")
    assert parse("pull_request", payload).labels == {label["name"] for label in payload["pull_request"]["labels"]}


def test_fork_is_detected(examples):
    payload = json.loads(json.dumps(next(e for e in examples["pull_request"] if e["action"] == "opened")))
    payload["pull_request"]["head"]["repo"]["full_name"] = "someone/fork"
    assert parse("pull_request", payload).from_fork


def test_push_event(examples, tmp_path):
    payload = examples["push"][0]
    event = parse("push", payload)
    assert (event.base_sha, event.head_sha) == (payload["before"], payload["after"])
    path = tmp_path / "event.json"
    path.write_text(json.dumps(payload))
    assert read("push", str(path)) == event
    assert event.pr is None  # a push names no pull request: the API says which one merged it
    assert read(None, None) is None
