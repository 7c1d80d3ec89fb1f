"""PURE: the GitHub Actions event that started a run (GITHUB_EVENT_NAME, GITHUB_EVENT_PATH)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Event:
    name: str  # pull_request | push | schedule | workflow_dispatch | ...
    repository: str  # OWNER/NAME
    pr: int | None = None
    base_sha: str | None = None
    head_sha: str | None = None
    from_fork: bool = False
    labels: frozenset[str] = frozenset()
    merged: bool = False


def parse(name: str, payload: dict) -> Event:
    repository = (payload.get("repository") or {}).get("full_name", "")
    if name in ("pull_request", "pull_request_target"):
        pr = payload["pull_request"]
        head_repo = (pr.get("head") or {}).get("repo") or {}
        return Event(
            name=name,
            repository=repository,
            pr=int(payload.get("number") or pr["number"]),
            base_sha=pr["base"]["sha"],
            head_sha=pr["head"]["sha"],
            from_fork=head_repo.get("full_name", repository) != repository,
            labels=frozenset(label["name"] for label in pr.get("labels") or []),
            merged=bool(pr.get("merged")),
        )
    if name == "push":
        # No pull request: which one a push merged is asked of the API (ghflow.merged_pull_request),
        # never read from the commit message, which whoever wrote the commit chose.
        return Event(name=name, repository=repository, base_sha=payload.get("before"), head_sha=payload.get("after"))
    return Event(name=name, repository=repository)


def read(name: str | None, path: str | None) -> Event | None:
    """The current event, or None outside GitHub Actions."""
    if not name or not path or not Path(path).is_file():
        return None
    return parse(name, json.loads(Path(path).read_text()))
