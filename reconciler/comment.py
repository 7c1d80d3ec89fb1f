"""PURE: the pull-request plan comment and the apply result, as GitHub-flavoured Markdown.

Summary first (a table of every stack), warnings for destroys, moves and blocked plans, then
each stack's changes folded. Only addresses and actions are ever shown, never values, so a
sensitive value cannot reach a comment. Long plans are split below GitHub's 65,536-character
limit; the first part always holds the whole summary. A hidden block records what was
reviewed (each stack's configuration hash), so apply can refuse anything else.
"""

from __future__ import annotations

import json
import re
from typing import Mapping

from reconciler.affected import DESTROY
from reconciler.plan import Change
from reconciler.render import counts_text, moves, totals
from reconciler.run import FAILED, OFFLINE, UNSUPPORTED, UnitPlan

MARKER = "<!-- reconcile:plan -->"
APPLY_MARKER = "<!-- reconcile:apply -->"
LIMIT = 65_000  # GitHub refuses bodies over 65,536 characters; keep headroom
MAX_CHANGES_PER_UNIT = 200
MAX_SUMMARY_ROWS = 300
_REVIEWED = re.compile(r"<!-- reconcile:reviewed (\{.*?\}) -->")


def _part_marker(index: int, count: int) -> str:
    return f"<!-- reconcile:plan part={index}/{count} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _status(p: UnitPlan) -> str:
    if p.blocked:
        return "needs a decision"
    if p.status == UNSUPPORTED:
        return "not synthesizable yet"
    if p.status == FAILED:
        return "**plan failed**"
    if p.status == OFFLINE:
        return "offline (configuration diff)"
    return "changes" if p.pending else "no changes"


def reviewed_block(plans: list[UnitPlan], head_sha: str) -> str:
    units = {
        p.selected.unit.key: {"action": p.selected.action, "config_hash": p.selected.unit.config_hash}
        for p in plans
        if p.pending
    }
    return f"<!-- reconcile:reviewed {json.dumps({'head': head_sha, 'units': units}, sort_keys=True, separators=(',', ':'))} -->"


def parse_reviewed(body: str) -> dict | None:
    """What a plan comment says was reviewed: {"head": sha, "units": {key: {action, config_hash}}}."""
    match = _REVIEWED.search(body or "")
    return json.loads(match.group(1)) if match else None


def summary(plans: list[UnitPlan], verdicts: Mapping[str, str], head_sha: str, run_url: str) -> str:
    pending = [p for p in plans if p.pending]
    counts = totals(plans)
    lines = [f"### reconcile plan for `{head_sha[:7] or 'working tree'}`: "
             + (f"{len(pending)} stack(s) to change" if pending else "nothing to do"), ""]
    if pending:
        lines += [f"**{counts_text(counts)}**", ""]
    warnings = []
    for move in moves(plans):
        s, t = move.source.selected.unit, move.target.selected.unit
        warnings.append(f"**MOVE** cluster `{move.cluster}`: {s.site} → {t.site} (create, check health, then destroy on {s.site})")
    move_sources = {id(m.source) for m in moves(plans)}
    for p in plans:
        if p.selected.action == DESTROY and id(p) not in move_sources:
            warnings.append(f"**DESTROY** {p.selected.unit.title}: {'; '.join(p.selected.reasons)}")
        if p.blocked:
            warnings.append(f"**NEEDS A DECISION** {p.selected.unit.title}: {p.blocked}")
        if p.status == FAILED:
            warnings.append(f"**PLAN FAILED** {p.selected.unit.title}")
    if warnings:
        lines += ["> [!WARNING]"] + [f"> - {w}" for w in warnings] + [""]
    if plans:
        lines += [
            "| stack | platform | site | why | create | update | replace | destroy | portability | status |",
            "|---|---|---|---|--:|--:|--:|--:|---|---|",
        ]
        for p in plans[:MAX_SUMMARY_ROWS]:
            unit = p.selected.unit
            c = p.summary.counts if p.summary is not None else {}
            name = f"{'**DESTROY** ' if p.selected.action == DESTROY else ''}{unit.kind} `{unit.name}`"
            lines.append(
                "| " + " | ".join(
                    _cell(x) for x in (
                        name, unit.platform, unit.site, "; ".join(p.selected.reasons),
                        str(c.get("create", "—")), str(c.get("update", "—")), str(c.get("replace", "—")),
                        str(c.get("delete", "—")), verdicts.get(unit.key, "—"), _status(p),
                    )
                ) + " |"
            )
        if len(plans) > MAX_SUMMARY_ROWS:
            lines.append(f"\n… {len(plans) - MAX_SUMMARY_ROWS} more stacks: see the JSON output of the run")
    if run_url:
        lines += ["", f"[Run]({run_url})"]
    lines += ["", "Merging applies exactly this plan. A stack changed after this comment is refused until planned again."]
    return "\n".join(lines) + "\n"


def _diff_line(change: Change) -> str:
    """One change as a line of a ```diff block: GitHub colours + green, - red, ! orange."""
    reason = f", {change.reason.replace('_', ' ')}" if change.reason and change.action == "replace" else ""
    return {
        "create": f"+ {change.address}",
        "delete": f"- {change.address}",
        "update": f"! {change.address} (update in place)",
        "replace": f"! {change.address} (replace{reason})",
        "move": f"  {change.address} (moved from {change.previous_address})",
        "forget": f"  {change.address} (forgotten: left in place, not destroyed)",
    }.get(change.action, f"  {change.address} ({change.action})")


def details(p: UnitPlan) -> str:
    unit = p.selected.unit
    head = f"{'DESTROY ' if p.selected.action == DESTROY else ''}{unit.title} [{unit.platform}]"
    lines = [f"<details><summary>{head}: {_status(p)}</summary>", "", "```diff"]
    if p.summary is not None:
        visible = p.summary.visible
        lines += [_diff_line(change) for change in visible[:MAX_CHANGES_PER_UNIT]]
        if len(visible) > MAX_CHANGES_PER_UNIT:
            lines.append(f"  … and {len(visible) - MAX_CHANGES_PER_UNIT} more")
        if p.summary.output_changes:
            lines.append(f"  outputs changed: {', '.join(p.summary.output_changes)}")
        if not visible:
            lines.append("  no resource changes")
    elif p.error:
        lines += [f"  {line}" for line in p.error.splitlines()[:50]]
    else:
        lines.append(f"  {_status(p)}")
    lines += ["```", "", "</details>"]
    return "\n".join(lines) + "\n"


def split(header: str, blocks: list[str], limit: int = LIMIT) -> list[str]:
    """Bodies of at most `limit` characters: the header opens the first, blocks follow greedily.
    Each body starts with a part marker (filled in once the count is known)."""
    room = limit - len(_part_marker(999, 999)) - 2
    if len(header) > room:
        header = header[: room - 40] + "\n… (summary cut to fit)\n"
    parts: list[str] = [header]
    for block in blocks:
        if len(block) > room:
            block = block[: room - 60] + "\n```\n… (cut to fit one comment)\n</details>\n"
        if len(parts[-1]) + len(block) + 1 > room:
            parts.append("")
        parts[-1] += "\n" + block
    count = len(parts)
    return [f"{_part_marker(i, count)}\n{body}" for i, body in enumerate(parts, start=1)]


def render_comment(
    plans: list[UnitPlan],
    verdicts: Mapping[str, str] | None,
    head_sha: str,
    run_url: str = "",
) -> list[str]:
    """The plan comment's parts. The first carries the summary and the reviewed block."""
    header = f"{MARKER}\n{reviewed_block(plans, head_sha)}\n{summary(plans, verdicts or {}, head_sha, run_url)}"
    return split(header, [details(p) for p in plans])


def render_apply_result(results, head_sha: str, run_url: str = "") -> str:
    failed = [r for r in results if r.outcome in ("failed", "refused")]
    title = "failed" if failed else "applied"
    lines = [APPLY_MARKER, f"### reconcile apply of `{head_sha[:7]}`: {title}", ""]
    if failed:
        lines += ["> [!CAUTION]"] + [f"> {r.plan.selected.unit.title}: {r.outcome}" for r in failed] + [""]
    lines += ["| stack | action | outcome | detail |", "|---|---|---|---|"]
    for r in results:
        unit = r.plan.selected.unit
        detail = (r.detail or "").splitlines()[0][:300] if r.detail else ""
        lines.append(f"| {unit.title} | {r.plan.selected.action} | {r.outcome} | {_cell(detail)} |")
    if run_url:
        lines += ["", f"[Run]({run_url})"]
    return "\n".join(lines) + "\n"
