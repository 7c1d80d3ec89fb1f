"""ADAPTER over the GitHub REST API (github3.py): the sticky plan comment, the apply result,
commit statuses, and the drift issue.

Faults are expected: 5xx answers and secondary rate limits are retried with backoff, and a
comment is never posted twice (before a create is retried, the comments are read again and
a part that already landed is edited instead).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable


from reconciler.errors import ReconcileError

PUBLIC_API = "https://api.github.com"
RETRY_STATUSES = {500, 502, 503, 504}


class GitHubError(ReconcileError):
    """The GitHub API refused or kept failing."""


@dataclass(frozen=True)
class Posted:
    ids: tuple[int, ...]
    created: int
    edited: int
    deleted: int


# Who posts: GITHUB_TOKEN acts as the Actions bot. A GitHub App or a PAT posts as its own
# login, which RECONCILE_BOT_LOGIN names. Only comments by this login are read or edited.
DEFAULT_AUTHOR = "github-actions[bot]"

def _part_key(body: str, marker: str) -> str | None:
    """The first line of a part ('<!-- reconcile:plan part=2/3 -->'), or None if not ours."""
    first = body.split("\n", 1)[0]
    return first if first.startswith(marker.rstrip(" ->")) else None


class GitHub:
    """One repository on github.com or on a GitHub Enterprise Server."""

    def __init__(
        self,
        repository: str,
        token: str,
        api_url: str = PUBLIC_API,
        attempts: int = 5,
        backoff_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        author: str = DEFAULT_AUTHOR,
    ):
        owner, _, name = repository.partition("/")
        if not owner or not name:
            raise GitHubError(f"repository must be OWNER/NAME, got {repository!r}")
        import github3  # here, not at the top: every run imports this module, few talk to GitHub

        api_url = api_url.rstrip("/")
        if api_url == PUBLIC_API:
            self.gh = github3.GitHub(token=token)
        else:  # GitHub Enterprise Server: github3 wants the host URL and adds /api/v3 itself
            self.gh = github3.GitHubEnterprise(re.sub(r"/api/v3$", "", api_url), token=token)
        self.owner, self.name = owner, name
        self.author = author  # the login this token posts as: only its comments are ours
        self.attempts, self.backoff_s, self.sleep = attempts, backoff_s, sleep
        self._repo = None

    # -- retries

    def _call(self, what: str, fn: Callable, before_retry: Callable[[], object] | None = None):
        """Run `fn`, retrying 5xx answers and rate limits with exponential backoff."""
        from github3 import exceptions as gh_errors

        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except gh_errors.GitHubError as exc:
                status = getattr(exc, "code", None) or getattr(getattr(exc, "response", None), "status_code", None)
                message = str(getattr(exc, "msg", "") or exc)
                limited = status in (403, 429) and "rate limit" in message.lower()
                if attempt == self.attempts or not (status in RETRY_STATUSES or limited):
                    raise GitHubError(f"GitHub {what} failed ({status}): {message}") from None
                retry_after = _retry_after(exc)
                self.sleep(retry_after if retry_after is not None else self.backoff_s * 2 ** (attempt - 1))
                if before_retry is not None:
                    found = before_retry()
                    if found is not None:
                        return found
        raise AssertionError("unreachable")

    @property
    def repo(self):
        if self._repo is None:
            self._repo = self._call("repository lookup", lambda: self.gh.repository(self.owner, self.name))
            if self._repo is None:
                raise GitHubError(f"repository {self.owner}/{self.name} not found or not visible to this token")
        return self._repo

    # -- comments

    def _issue(self, number: int):
        issue = self._call(f"reading #{number}", lambda: self.repo.issue(number))
        if issue is None:
            raise GitHubError(f"#{number} not found in {self.owner}/{self.name}")
        return issue

    def _own(self, issue) -> list:
        """The comments on an issue that this token's identity wrote; nobody else's count."""
        comments = self._call("listing comments", lambda: list(issue.comments()))
        return [c for c in comments if c.user is not None and c.user.login == self.author]

    def _ours(self, issue, marker: str) -> dict[str, object]:
        found = {}
        for comment in self._own(issue):
            key = _part_key(comment.body or "", marker)
            if key is not None and key not in found:
                found[key] = comment
        return found

    def upsert(self, number: int, bodies: list[str], marker: str) -> Posted:
        """Make the comments marked `marker` on #number read `bodies`: edit in place, create what
        is missing, delete parts left over from a longer earlier version."""
        issue = self._issue(number)
        existing = self._ours(issue, marker)
        ids, created, edited = [], 0, 0
        for body in bodies:
            key = _part_key(body, marker)
            if key is None:
                raise ValueError(f"comment part does not start with the marker {marker!r}")
            comment = existing.pop(key, None)
            if comment is not None:
                if comment.body != body:
                    self._call("editing a comment", lambda c=comment, b=body: c.edit(b))
                    edited += 1
                ids.append(comment.id)
                continue
            posted = self._call(
                "posting a comment",
                lambda b=body: issue.create_comment(b),
                before_retry=lambda k=key: self._ours(issue, marker).get(k),
            )
            if posted is not None and posted.body != body:  # found after a retry: an older text
                self._call("editing a comment", lambda c=posted, b=body: c.edit(b))
            ids.append(posted.id)
            created += 1
        for comment in existing.values():
            self._call("deleting a stale comment", comment.delete)
        return Posted(tuple(ids), created, edited, len(existing))

    def comment(self, number: int, body: str) -> int:
        """A new comment (apply results are history, not sticky)."""
        issue = self._issue(number)
        return self._call("posting a comment", lambda: issue.create_comment(body)).id

    def own_comments(self, number: int) -> list[str]:
        """The bodies of the comments on #number written by this token's identity."""
        return [c.body or "" for c in self._own(self._issue(number))]

    def pull_request_head(self, number: int) -> str:
        """The commit a pull request's head points at now."""
        pull = self._call(f"reading pull request #{number}", lambda: self.repo.pull_request(number))
        return pull.head.sha

    def pulls_of_commit(self, sha: str) -> list[tuple[int, bool, str | None]]:
        """The pull requests GitHub associates with a commit: (number, merged, merge commit)."""
        commit = self._call(f"reading commit {sha[:7]}", lambda: self.repo.commit(sha))
        if commit is None:
            raise GitHubError(f"commit {sha} not found in {self.owner}/{self.name}")
        pulls = self._call(f"listing the pull requests of {sha[:7]}", lambda: list(commit.associated_pull_requests()))
        return [(p.number, p.merged_at is not None, p.merge_commit_sha) for p in pulls]

    def labels(self, number: int) -> set[str]:
        issue = self._issue(number)
        return {label.name for label in self._call("reading labels", lambda: list(issue.labels()))}

    # -- statuses and issues

    def status(self, sha: str, state: str, context: str, description: str, target_url: str = "") -> None:
        self._call(
            "setting a commit status",
            lambda: self.repo.create_status(sha, state, target_url or None, description[:140], context),
        )

    def drift_issue(self, title: str, body: str | None, label: str = "drift") -> int | None:
        """Open or update the one drift issue while `body` is given; close it when `body` is None."""
        open_issues = self._call("listing issues", lambda: list(self.repo.issues(state="open", labels=label)))
        current = next((i for i in open_issues if i.title == title), None)
        if body is None:
            if current is not None:
                self._call("closing the drift issue", current.close)
            return None
        if current is None:
            return self._call("opening the drift issue", lambda: self.repo.create_issue(title, body=body, labels=[label])).number
        if current.body != body:
            self._call("updating the drift issue", lambda: current.edit(body=body))
        return current.number


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
