"""The pull-request flow: post the plan for review, apply exactly what was reviewed on merge,
report the outcome, and keep the drift issue current.

Thin glue between the reconcile loop (run, apply), the comment renderer and the GitHub
adapter. Two gates stand before apply: a stack whose configuration hash differs from the one
in the reviewed plan comment is refused until planned again, and a destroy of a removed
definition needs an explicit signal (the pull request's label, or --allow-destroy).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler import comment
from reconciler.errors import ReconcileError
from reconciler.event import Event
from reconciler.github import DEFAULT_AUTHOR, PUBLIC_API, GitHub, GitHubError
from reconciler.gitsource import GitSource
from reconciler.run import Assessment, UnitPlan, desired
from reconciler.settings import env_seconds

STATUS_CONTEXT = "reconcile/apply"
DRIFT_TITLE = "Drift: live state differs from git"


@dataclass(frozen=True)
class Target:
    repository: str
    pr: int | None


def connect(repository: str | None) -> GitHub:
    """The adapter from the Actions environment: GITHUB_TOKEN, GITHUB_REPOSITORY, GITHUB_API_URL."""
    token = os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN")
    if not token:
        raise ReconcileError("GITHUB_TOKEN is not set: the GitHub flow needs a token")
    repository = repository or os.environ.get("GITHUB_REPOSITORY")
    if not repository:
        raise ReconcileError("no repository: pass --github-repo OWNER/NAME or set GITHUB_REPOSITORY")
    author = os.environ.get("RECONCILE_BOT_LOGIN") or DEFAULT_AUTHOR
    backoff = env_seconds("RECONCILE_GITHUB_BACKOFF_S", 2.0)  # the first retry's wait, doubled on each
    return GitHub(repository, token, os.environ.get("GITHUB_API_URL") or PUBLIC_API, author=author, backoff_s=backoff)


def pr_number(value: str | None, event: Event | None) -> int | None:
    """`--pr N`, or `--pr auto`: the pull request of the current event (None if there is none)."""
    if value is None:
        return None
    if value == "auto":
        return event.pr if event is not None else None
    if not value.isdigit():
        raise ReconcileError(f"--pr takes a number or 'auto', got {value!r}")
    return int(value)


def merged_pull_request(gh: GitHub, sha: str) -> int | str:
    """The one pull request whose merge made `sha` (GitHub's association, merged, with that merge
    commit), or why there is not exactly one. A commit message names whatever its author wrote."""
    merged = sorted(number for number, was_merged, merge_sha in gh.pulls_of_commit(sha) if was_merged and merge_sha == sha)
    if len(merged) == 1:
        return merged[0]
    if not merged:
        return f"no merged pull request has {sha[:7]} as its merge commit"
    return f"{sha[:7]} is the merge commit of several pull requests ({', '.join(f'#{n}' for n in merged)})"


def run_url() -> str:
    env = os.environ
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        return f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    return ""


# ---------------------------------------------------------------- plan comments


def plan_comment(assessment: Assessment, plans: list[UnitPlan], verdicts: dict[str, str]) -> list[str]:
    head = assessment.head.snapshot.revision or ""
    return comment.render_comment(plans, verdicts, head, run_url(), dirty=assessment.head.snapshot.dirty)


def write_comment_dir(directory: Path, bodies: list[str], pr: int | None, head_sha: str) -> None:
    """The comment as files, for a job with write access that must not run pull-request code."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("part-*.md"):
        stale.unlink()
    for index, body in enumerate(bodies, start=1):
        (directory / f"part-{index}.md").write_text(body)
    (directory / "meta.json").write_text(json.dumps({"pr": pr, "head_sha": head_sha, "parts": len(bodies)}) + "\n")


# A plan run's artifact is data from an untrusted run: read within bounds, by exact names only.
ARTIFACT_PARTS, ARTIFACT_PART_CHARS, ARTIFACT_META_BYTES = 50, 65_536, 4096  # GitHub: 65,536 per comment


def _artifact_file(directory: Path, name: str, limit: int) -> str:
    path = directory / name
    if path.is_symlink() or not path.is_file():
        raise ReconcileError(f"the plan artifact has no regular file {name}; refusing to post it")
    if path.stat().st_size > limit * 4:  # at most 4 bytes a character
        raise ReconcileError(f"the plan artifact's {name} is larger than {limit:,} characters; refusing to post it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReconcileError(f"the plan artifact's {name} is not UTF-8 text; refusing to post it") from None
    if len(text) > limit:
        raise ReconcileError(f"the plan artifact's {name} is larger than {limit:,} characters; refusing to post it")
    return text


def _meta(directory: Path) -> dict:
    try:
        meta = json.loads(_artifact_file(directory, "meta.json", ARTIFACT_META_BYTES))
    except ValueError:
        raise ReconcileError("the plan artifact's meta.json is not JSON; refusing to post it") from None
    parts = meta.get("parts") if isinstance(meta, dict) else None
    if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= ARTIFACT_PARTS:
        raise ReconcileError(f"the plan artifact's meta.json names no number of parts from 1 to {ARTIFACT_PARTS}; refusing to post it")
    return meta


def planned(gh: GitHub, directory: Path, expect_head: str | None) -> tuple[int, str, int]:
    """(pull request, planned commit, parts) of a plan run's artifact, read once and checked:
    the number is a number, the commit the one expected, and still the pull request's head."""
    meta = _meta(directory)
    pr, head = meta.get("pr"), meta.get("head_sha")
    if not isinstance(pr, int) or pr <= 0:
        raise ReconcileError(f"{directory}/meta.json names no pull request")
    if not isinstance(head, str) or (expect_head and head != expect_head):
        raise ReconcileError(f"the comment was planned for {head}, not for {expect_head}; refusing to post it")
    current = gh.pull_request_head(pr)
    if current != head:
        raise ReconcileError(f"#{pr} has moved on to {current[:7]} since {str(head)[:7]} was planned; a newer plan will comment")
    return pr, head, meta["parts"]


def post_comment_dir(gh: GitHub, directory: Path, expect_head: str | None, source: GitSource | None = None) -> int:
    """Post prepared parts as the sticky comment. The files are data from an untrusted run: the
    pull request number must be a number, its head must still be the commit planned, and (with
    `source`, this job's checkout) the reviewed hashes must be the ones recomputed here."""
    pr, head, parts = planned(gh, directory, expect_head)
    bodies = [_artifact_file(directory, f"part-{i}.md", ARTIFACT_PART_CHARS) for i in range(1, parts + 1)]
    if not all(body.startswith(comment.MARKER.rstrip(" ->")) for body in bodies):
        raise ReconcileError("a comment part does not start with the plan marker")
    if source is not None:
        check_reviewed_hashes(comment.parse_reviewed("\n".join(bodies)), source, head)
    gh.upsert(pr, bodies, comment.MARKER)
    return pr


def check_reviewed_hashes(reviewed: dict | None, source: GitSource, head: str) -> None:
    """The hashes that the gate will trust after merge are recomputed here, by this job's own
    code, from the planned commit's definitions read as data (no Node, nothing of the pull
    request executed). An artifact whose reviewed block disagrees is refused, naming the stack:
    the plan run wrote it, and for a fork that run is the fork's own code."""
    if reviewed is None:
        raise ReconcileError("the comment holds no well-formed reviewed block; refusing to post it")
    if reviewed["head"] != head:
        raise ReconcileError(f"the reviewed block names {reviewed['head'][:12]}, not the planned {head[:12]}; refusing to post it")
    try:
        snapshot = source.at_revision(head)
    except ReconcileError:
        raise ReconcileError(
            f"the planned commit {head[:12]} is not in this checkout: fetch it first (git fetch origin {head}); "
            "nothing was posted"
        ) from None
    units = desired(snapshot).units
    wrong = []
    for key, entry in sorted(reviewed["units"].items()):
        unit = units.get(key)
        if entry["action"] == "destroy":
            if unit is not None:
                wrong.append(f"{key}: the artifact says destroy, and {head[:7]} defines it")
        elif unit is None:
            wrong.append(f"{key}: the artifact says {entry['action']}, and {head[:7]} defines no such stack")
        elif unit.config_hash != entry["config_hash"]:
            wrong.append(
                f"{key}: the artifact's configuration hash {entry['config_hash'][:12]} is not the one {head[:7]}'s "
                f"definitions give here ({unit.config_hash[:12]})"
            )
    if wrong:
        raise ReconcileError(
            "the plan artifact disagrees with this job's own reading of the planned definitions; nothing was posted:\n  "
            + "\n  ".join(wrong)
            + "\n(a pull request that also changes reconcile's own code plans with that code, whose hashes this "
            "default-branch job does not share: merge code changes on their own, then plan the definitions)"
        )


# ---------------------------------------------------------------- gates before apply


def reviewed_plan(gh: GitHub, pr: int) -> dict | None:
    """The reviewed block of our own sticky plan comment on #pr, if there is one: a block in
    anybody else's comment is ignored, whatever it says."""
    for body in gh.own_comments(pr):
        reviewed = comment.parse_reviewed(body)
        if reviewed is not None:
            return reviewed
    return None


def gate_reviewed(plans: list[UnitPlan], reviewed: dict | None, pr: int, pr_head: str) -> None:
    """Refuse every pending stack whose configuration is not the one reviewed on #pr, and
    everything if the reviewed plan was not made for the pull request's last head commit."""
    if reviewed is None:
        refuse_unreviewed(plans, f"no reviewed plan was found on #{pr}; plan it on a pull request first")
        return
    if reviewed.get("head") != pr_head:
        refuse_unreviewed(
            plans,
            f"#{pr}'s reviewed plan was made for {str(reviewed.get('head'))[:7]}, but its last head commit is {pr_head[:7]}: "
            "plan the pull request again",
        )
        return
    units = reviewed.get("units", {})
    for p in plans:
        if not p.pending or p.blocked:
            continue
        key, action = p.selected.unit.key, p.selected.action
        seen = units.get(key)
        if seen is None or seen.get("action") != action:
            p.blocked = f"#{pr}'s reviewed plan did not {action} {key}; plan again"
        elif seen.get("config_hash") != p.selected.unit.config_hash:
            p.blocked = f"the configuration of {key} differs from the one reviewed on #{pr}; plan again"


def refuse_unreviewed(plans: list[UnitPlan], reason: str) -> None:
    """Refuse every pending stack: nothing here can be matched with a review."""
    for p in plans:
        if p.pending and not p.blocked:
            p.blocked = reason


# ---------------------------------------------------------------- after apply


def report_apply(gh: GitHub, pr: int | None, head_sha: str, results, failed: bool) -> list[str]:
    """Post the outcome on the pull request and as a commit status. Returns what could not be
    reported: the caller's exit code must still say whether apply failed."""
    problems = []
    state = "failure" if failed else "success"
    applied = sum(1 for r in results if r.outcome == "applied")
    try:
        gh.status(head_sha, state, STATUS_CONTEXT, f"{applied} stack(s) applied" + (", some failed" if failed else ""), run_url())
    except GitHubError as exc:
        problems.append(str(exc))
    if pr is not None:
        try:
            gh.comment(pr, comment.render_apply_result(results, head_sha, run_url()))
        except GitHubError as exc:
            problems.append(str(exc))
    return problems


def drift_issue(gh: GitHub, plans: list[UnitPlan]) -> int | None:
    """Open or update the drift issue while live differs from git; close it when clean."""
    drifting = [p for p in plans if p.pending]
    if not drifting:
        gh.drift_issue(DRIFT_TITLE, None)
        return None
    lines = ["Scheduled `reconcile plan --all` found stacks whose live state differs from git:", ""]
    for p in drifting:
        lines.append(f"- {p.selected.unit.title}: {'; '.join(p.selected.reasons)}")
    url = run_url()
    if url:
        lines += ["", f"Run: {url}"]
    return gh.drift_issue(DRIFT_TITLE, "\n".join(lines) + "\n")


# ---------------------------------------------------------------- a fanned-out apply's outcome

GATHERED_UNITS, GATHERED_BYTES = 5000, 4 * 1024 * 1024


@dataclass(frozen=True)
class _Named:
    title: str


@dataclass(frozen=True)
class _Chosen:
    unit: _Named
    action: str


@dataclass(frozen=True)
class _Planned:
    selected: _Chosen


@dataclass(frozen=True)
class GatheredResult:
    """One unit's outcome as a runner reported it: the shape the apply comment reads."""

    plan: _Planned
    outcome: str
    detail: str = ""


def _title(key: str) -> str:
    kind, _, rest = key.partition(":")
    name, _, site = rest.partition("@")
    return f"site {rest}" if kind == "site" else f"cluster {name} on {site}"


def _json_file(path: Path, limit: int):
    if path.is_symlink() or not path.is_file() or path.stat().st_size > limit:
        raise ValueError(f"{path.name} is missing, not a regular file, or over {limit:,} bytes")
    return json.loads(path.read_text(encoding="utf-8"))


def gathered_results(directory: Path) -> tuple[list[GatheredResult], str]:
    """The per-unit outcomes of a fanned-out apply, from what its runners uploaded: data from
    other jobs, read within bounds and by exact names. `directory/waves.json` is the `waves
    --json` document that planned the run; each `directory/apply-*/` holds one runner's
    `unit.txt` (the unit it applied) and `apply.json` (its `apply --only --json` document). A
    unit of the waves with no readable document is reported as missing, never as applied."""
    try:
        planned = _json_file(directory / "waves.json", GATHERED_BYTES)
        expected = [(u["key"], u["action"]) for wave in planned["waves"] for u in wave["units"]]
        revision = planned["head"]["revision"] or ""
    except (ValueError, KeyError, TypeError) as exc:
        raise ReconcileError(f"{directory}/waves.json is not a `reconcile waves --json` document: {exc}") from None
    if len(expected) > GATHERED_UNITS:
        raise ReconcileError(f"{directory}/waves.json names more than {GATHERED_UNITS:,} units")
    reported: dict[str, tuple[str, str]] = {}
    for part in sorted(directory.glob("apply-*"))[: GATHERED_UNITS + 1]:
        keys: list[str] = []
        try:  # the units its runner applied: one, or a run of them (`--only A,B`)
            if (part / "unit.txt").is_file():
                text = (part / "unit.txt").read_text(encoding="utf-8")[: 300 * GATHERED_UNITS]
                keys = [k.strip()[:300] for k in text.split(",") if k.strip()][:GATHERED_UNITS]
            document = _json_file(part / "apply.json", GATHERED_BYTES)
        except (ValueError, OSError) as exc:
            reported |= {key: ("failed", f"its runner's document could not be read: {exc}") for key in keys}
            continue
        if not isinstance(document, dict) or not keys:
            continue
        head = document.get("head") or {}
        if isinstance(head, dict) and head.get("revision") not in (None, revision):
            reported |= {key: ("failed", f"its runner applied {str(head.get('revision'))[:7]}, not {revision[:7]}") for key in keys}
            continue
        for key in keys:
            entry = next((u for u in document.get("units") or () if isinstance(u, dict) and u.get("key") == key), None)
            if entry is None:
                error = document.get("error")
                reported[key] = ("failed", str(error)) if error else ("no changes", "nothing to apply when its runner planned it")
            elif isinstance(entry.get("outcome"), str):
                reported[key] = (entry["outcome"], str(entry.get("detail") or ""))
            elif entry.get("pending"):
                reported[key] = ("not applied", str(entry.get("error") or entry.get("blocked") or entry.get("status") or ""))
            else:
                reported[key] = ("no changes", "")
    results = []
    for key, action in expected:
        outcome, detail = reported.get(key, ("missing", "its runner reported nothing: it did not run, or was lost"))
        results.append(GatheredResult(_Planned(_Chosen(_Named(_title(key)), action)), outcome, detail))
    return results, revision
