"""PURE: the pull-request plan comment and the apply result, as GitHub-flavoured Markdown.

The plan comment reads top-down the way a reviewer works: a headline with the totals, a
warning listing every destroy, move and plan that needs a decision, a table with one row per
stack, then each stack's resource changes folded in <details>. Only resource addresses,
actions and output names are shown, never values, so a sensitive value cannot reach a comment.

Parts. GitHub refuses a body over 65,536 characters, so the comment is cut into parts of at
most LIMIT characters. Every part starts with its numbered marker line, then MARKER, so one
search for MARKER (or MARKER_PREFIX) finds them all. The first part holds the headline, the
warnings and the table; only a table of hundreds of stacks continues at the top of the next
parts. Details follow greedily in stack order.

Reviewed block. Each part that summarizes stacks records, on a line of its own above its
table, the head commit and every pending stack's action and configuration hash; apply
refuses whatever differs. No other line starts with `<!--`: each starts with text of our own
(`|`, `>`, `#`, a diff gutter, `<details>`, a sentence), and every value from a plan or a
definition is escaped or indented, so nothing in a plan can forge that line.

The renderer takes the unit plans, not the whole Assessment: everything it shows is in them.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Mapping

from reconciler import gate
from reconciler.affected import APPLY, DESTROY
from reconciler.apply import APPLIED, NOTHING, REFUSED, SKIPPED, ApplyResult
from reconciler.apply import FAILED as APPLY_FAILED
from reconciler.plan import Change
from reconciler.render import copies_text, copy_steps, counts_text, describe_change, moves, totals
from reconciler.resolve import CLUSTER
from reconciler.run import FAILED, OFFLINE, UNSUPPORTED, UnitPlan

MARKER = "<!-- reconcile:plan -->"
MARKER_PREFIX = MARKER.removesuffix(" -->")  # "<!-- reconcile:plan": every part's first line starts with it
APPLY_MARKER = "<!-- reconcile:apply -->"
LIMIT = 65_000  # GitHub refuses bodies over 65,536 characters: keep headroom
MAX_CHANGES_PER_UNIT = 200
MAX_WARNINGS = 50
MAX_ERROR_LINES = 30
MAX_CELL = 300
MAX_NOTE = 1_000

_REVIEWED_LINE = re.compile(r"^<!-- reconcile:reviewed (\{.*\}) -->\r?$", re.MULTILINE)
_GUTTER = {"create": "+", "delete": "-", "replace": "-", "update": "!"}  # the colour GitHub gives a ```diff line
_TABLE_HEAD = (  # what a reviewer scans; the details below say the rest
    "| unit | changes | why | flags |\n"
    "|---|---|---|---|\n"
)
WHY_WORDS = 60  # characters of the reasons in the table; the details hold them whole
_FOOTER = (
    "Merging applies exactly this plan: a stack whose configuration changes after this comment is refused "
    "until it is planned again. Only addresses, actions and output names are shown here, never values."
)


# ---------------------------------------------------------------- escaping


def _inline(text: str, cap: int = MAX_CELL) -> str:
    """Text from a definition or a plan, made inert in Markdown and HTML, on one line."""
    text = " ".join(str(text).split())
    if len(text) > cap:
        text = text[: cap - 1] + "…"
    return html.escape(text, quote=False)


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|")


def _code(text: str) -> str:
    """Text for a line inside a code block: kept verbatim, except that it cannot end the line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _link(url: str) -> str:
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------- reviewed block


def reviewed_line(head_sha: str, units: Mapping[str, Mapping[str, str]]) -> str:
    """The hidden line recording what was reviewed: compact JSON, keys sorted. `<` and `>` are
    written as JSON escapes, so no key can close the HTML comment early."""
    data = json.dumps({"head": head_sha, "units": units}, sort_keys=True, separators=(",", ":"))
    data = data.replace("<", r"\u003c").replace(">", r"\u003e")
    return f"<!-- reconcile:reviewed {data} -->"


def _reviewed_entry(p: UnitPlan) -> tuple[str, dict[str, str]] | None:
    if not p.pending:
        return None
    entry = {"action": p.selected.action, "config_hash": p.selected.unit.config_hash}
    needs = gate.needs(p)
    return p.selected.unit.key, {**entry, "needs": needs} if needs else entry


def parse_reviewed(body: str) -> dict | None:
    """What a plan comment says was reviewed: {"head": sha, "units": {key: {action, config_hash}}}.

    `body` is one part, or several parts joined (a table of hundreds of stacks records the
    stacks of each part in that part). None when the text does not start with the plan marker,
    holds no reviewed line, or holds lines that disagree: then nothing counts as reviewed.
    """
    if not body or not body.startswith(MARKER_PREFIX):
        return None
    head, units, found = None, {}, False
    for match in _REVIEWED_LINE.finditer(body):
        try:
            data = json.loads(match.group(1))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("head"), str) or not isinstance(data.get("units"), dict):
            return None
        if found and data["head"] != head:
            return None
        head, found = data["head"], True
        for key, entry in data["units"].items():
            if not _well_formed(entry) or units.setdefault(key, entry) != entry:
                return None
    return {"head": head, "units": units} if found else None


def _well_formed(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and all(isinstance(entry.get(k), str) for k in ("action", "config_hash"))
        and isinstance(entry.get("needs", {}), dict)
    )


# ---------------------------------------------------------------- summary


def _standing(p: UnitPlan, offline: str) -> list[str]:
    """What stands in the way of a unit, or how it was planned: a decision, a failed plan, a
    platform not synthesizable, an offline plan (in the words `offline`)."""
    notes = ["**needs a decision**"] if p.blocked else []
    if p.status == FAILED:
        notes.append("**plan failed**")
    elif p.status == UNSUPPORTED:
        notes.append("not synthesizable yet")
    elif p.status == OFFLINE:
        notes.append(offline)
    return notes


def _status(p: UnitPlan) -> str:
    """The unit's status, plainly (a details section's title when no resource changes)."""
    notes = _standing(p, "offline: configuration diff")
    if p.summary is not None:
        if p.summary.has_changes:
            notes.append("changes")
        elif p.pending:
            notes.append("no resource changes, live record updated")
        else:
            notes.append("no changes")
    return "; ".join(notes)


def _verdict(p: UnitPlan, verdicts: Mapping[str, str]) -> str:
    """Portability of what is applied, by unit key or cluster name; a destroy has none."""
    unit = p.selected.unit
    if p.selected.action == DESTROY:
        return "—"
    return verdicts.get(unit.key) or (verdicts.get(unit.name) if unit.kind == CLUSTER else None) or "—"


def _move_halves(plans: list[UnitPlan]) -> dict[int, str]:
    halves = {}
    for move in moves(plans):
        halves[id(move.target)] = " (move 1/2)"
        halves[id(move.source)] = " (move 2/2)"
    return halves


def _row(p: UnitPlan, verdicts: Mapping[str, str], half: str) -> str:
    unit = p.selected.unit
    name = f"{'**DESTROY** ' if p.selected.action == DESTROY else ''}{_cell(unit.title)}{half}"
    return f"| {name} | {_changes_cell(p)} | {_cell(_short(_why(p)))} | {_flags(p, verdicts, half)} |\n"


def _changes_cell(p: UnitPlan) -> str:
    """The resource changes in a few signs: `+1 ~2 -6`, replacements `-/+1`, moves `->1`."""
    if p.summary is None:
        return "—"
    counts = p.summary.counts
    signs = (("create", "+"), ("update", "~"), ("delete", "-"), ("replace", "-/+"), ("move", "->"))
    parts = [f"{sign}{counts[action]:,}" for action, sign in signs if counts[action]]
    if counts["import"]:
        parts.append(f"{counts['import']:,} imported")
    return " ".join(parts) or "none"


def _why(p: UnitPlan) -> str:
    return "; ".join(p.selected.reasons)


def _short(text: str, limit: int = WHY_WORDS) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(";:,")
    return cut + " …"


def _flags(p: UnitPlan, verdicts: Mapping[str, str], half: str) -> str:
    """What needs a reviewer's eye, in words: each stands for a warning above or a detail below."""
    flags = _standing(p, "offline")
    if half:
        flags.append("move")
    counts = p.summary.counts if p.summary is not None else {}
    if p.selected.action == DESTROY or counts.get("delete") or counts.get("replace"):
        flags.append("destroy")
    if p.summary is not None and p.summary.data_lost:
        flags.append("**data**")
    if p.summary is not None and p.summary.replaces_all:
        flags.append("replace-all")
    verdict = _verdict(p, verdicts)
    if verdict.startswith("REFUSED"):
        flags.append(_cell(f"portability refused: {_short(verdict.removeprefix('REFUSED').lstrip(': '), 40)}"))
    elif verdict not in ("—", "realizable"):  # realizable, with a failover site that is not
        flags.append(_cell(_short(verdict.removeprefix("realizable").lstrip("; "), 40)))
    if p.summary is not None and not p.summary.has_changes:
        flags.append("live record only" if p.pending else "no changes")
    return ", ".join(flags) or "—"


def _headline(plans: list[UnitPlan], head_sha: str, dirty: bool = False) -> str:
    changing = [p for p in plans if p.pending and p.status != UNSUPPORTED]
    bits = [f"{_plural(len(changing), 'stack')} to change"] if changing else []
    if unsupported := sum(1 for p in plans if p.status == UNSUPPORTED):
        bits.append(f"{unsupported:,} not synthesizable yet")
    if blocked := sum(1 for p in plans if p.blocked):
        bits.append(f"{blocked:,} {'needs' if blocked == 1 else 'need'} a decision")
    if failed := sum(1 for p in plans if p.status == FAILED):
        bits.append(f"{_plural(failed, 'plan')} failed")
    where = f"`{_inline(head_sha[:7])}`" if head_sha else "the working tree"
    if head_sha and dirty:
        where += " with uncommitted changes"  # a preview from a laptop: not what a pull request would plan
    text = f"### reconcile plan for {where}: {', '.join(bits) or 'nothing to do'}\n\n"
    if changing:
        text += f"**{counts_text(totals(plans))}**\n\n"
    elif not plans:
        text += "Every checked stack matches git.\n\n"
    return text


def _alert(kind: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = items[:MAX_WARNINGS]
    if len(items) > MAX_WARNINGS:
        shown.append(f"… and {len(items) - MAX_WARNINGS:,} more: see the table")
    return f"> [!{kind}]\n" + "".join(f"> - {item}\n" for item in shown) + "\n"


def _warnings(plans: list[UnitPlan]) -> str:
    """Destroys, moves, destructive changes and decisions first; failed plans after."""
    warn = []
    move_list = moves(plans)
    for move in move_list:
        s, t = move.source.selected.unit, move.target.selected.unit
        text = (
            f"**MOVE** cluster `{_inline(move.cluster)}`: {_inline(s.site)} [{_inline(s.platform)}] → "
            f"{_inline(t.site)} [{_inline(t.platform)}]: created on {_inline(t.site)}, health-checked, "
            f"then destroyed on {_inline(s.site)}"
        )
        if move.source.kept:
            text += f"; its data stays in place: {', '.join(f'`{_inline(a)}`' for a in move.source.kept)}"
        warn.append(text)
    sources = {id(m.source) for m in move_list}
    for p in plans:
        unit, counts = p.selected.unit, p.summary.counts if p.summary is not None else {}
        if p.selected.action == DESTROY and id(p) not in sources:
            warn.append(f"**DESTROY** {_inline(unit.title)}: {_inline('; '.join(p.selected.reasons), MAX_NOTE)}")
        elif p.selected.action == APPLY and (counts.get("delete") or counts.get("replace")):
            warn.append(
                f"**DESTROYS RESOURCES** in {_inline(unit.title)}: "
                f"{counts['replace']:,} to replace, {counts['delete']:,} to destroy"
            )
        if p.blocked:
            warn.append(f"**NEEDS A DECISION** {_inline(unit.title)}: {_inline(p.blocked, MAX_NOTE)}")
        if p.summary is not None and p.summary.data_lost:
            lost = ", ".join(f"`{_inline(a)}`" for a in p.summary.data_lost[:20])
            when = " (once its copy is verified)" if p.copies_cover_data else ""
            warn.append(f"**DESTROYS DATA**{when} in {_inline(unit.title)}: {lost}")
        if p.summary is not None and p.summary.replaces_all:
            warn.append(f"**REPLACES EVERY RESOURCE** of {_inline(unit.title)}: needs the `{gate.ALLOW_REPLACE_LABEL}` label")
        if p.probe:
            warn.append(f"**RUNS ON THE APPLY RUNNER** {_inline(unit.title)}: its health check is new or changed: `{_inline(p.probe, MAX_NOTE).replace('`', chr(39))}`")
    failed = [f"**PLAN FAILED** {_inline(p.selected.unit.title)}: see its details below" for p in plans if p.status == FAILED]
    return _alert("WARNING", warn) + _alert("CAUTION", failed)


def _summary(head_sha: str, top: str, rows: list[str], entries: list, more: int, tail: str) -> str:
    text = reviewed_line(head_sha, dict(e for e in entries if e)) + "\n" + top
    if rows:
        text += _TABLE_HEAD + "".join(rows)
    if more:
        text += f"\n… {more:,} more units, see the following comments\n"
    return text + ("\n" if rows or more else "") + tail


def _continuation(head_sha: str, start: int, total: int, rows: list[str], entries: list) -> str:
    recorded = dict(e for e in entries if e)
    text = (reviewed_line(head_sha, recorded) + "\n") if recorded else ""
    text += f"#### reconcile plan, summary continued: units {start + 1:,}–{start + len(rows):,} of {total:,}\n\n"
    return text + _TABLE_HEAD + "".join(rows)


def _most_that_fit(render: Callable[[int], str], available: int, room: int) -> int:
    """The largest n (0..available) whose rendering fits in `room` characters."""
    low, high = 0, available
    while low < high:
        middle = (low + high + 1) // 2
        if len(render(middle)) <= room:
            low = middle
        else:
            high = middle - 1
    return low


# ---------------------------------------------------------------- details


def _change_line(change: Change) -> str:
    gutter, text = _GUTTER.get(change.action, " "), describe_change(change)
    if text.startswith(gutter + " "):  # the gutter already says it: `+ addr`, never `+ + addr`
        text = text[len(gutter) + 1:]
    line = f"{gutter} {_code(text)}"
    if change.action == "forget":
        line += " (forgotten: left in place, not destroyed)"
    return line


def details(p: UnitPlan) -> str:
    """One stack's changes, folded: addresses and actions, output names, never values."""
    unit = p.selected.unit
    outcome = counts_text(p.summary.counts) if p.summary is not None and p.summary.visible else _status(p).replace("**", "")
    title = f"{'DESTROY ' if p.selected.action == DESTROY else ''}{unit.title} [{unit.platform}]: {outcome}"
    lines = [f"<details><summary>{_inline(title)}</summary>", ""]
    if len(_why(p)) > WHY_WORDS:
        lines += [f"Why: {_inline(_why(p), MAX_NOTE)}", ""]
    if p.blocked:
        lines += [f"**Needs a decision:** {_inline(p.blocked, MAX_NOTE)}", ""]
    if p.change_class is not None:
        lines += [f"To the running cluster: **{_inline(p.change_class.kind)}**: {_inline(p.change_class.detail, MAX_NOTE)}.", ""]
    if p.kept:
        lines += [f"Keeps its data: {', '.join(f'`{_inline(a)}`' for a in p.kept)} left in place (storage.on_move: keep).", ""]
    if p.kept_replaced:
        lines += [
            f"Replaces {', '.join(f'`{_inline(a)}`' for a in p.kept_replaced)} in place and keeps the old volume "
            "(retained; a new empty one is created; storage.on_move: keep).", "",
        ]
    if p.copies:
        lines += [
            f"Copies its data to {_inline(p.copy_target.site)} first (storage.on_move: copy): {_inline(copies_text(p.copies))}. "
            f"Steps: {', '.join(copy_steps(p))}.",
            "",
        ]
    if p.copy_note:
        lines += [f"**No copy:** {_inline(p.copy_note, MAX_NOTE)}", ""]
    if p.adopted:
        adopted = ", ".join(f"`{_inline(v.id)}` as `{_inline(v.address)}`" for v in p.adopted)
        lines += [f"Adopts retained volumes (kept by an earlier move): {adopted}.", ""]
    if p.probe:
        lines += [
            "Health check, new or changed; it runs on the apply runner, with no tokens or cloud credentials:",
            "", "```text", f"  {_code(p.probe)}".replace("`", "'"), "```", "",
        ]
    if p.status == UNSUPPORTED:
        lines += [f"Not synthesizable yet: the {_inline(unit.platform)} platform is not implemented in this version.", ""]
    elif p.status == OFFLINE:
        lines += [
            (
                f"Offline: no {_inline(unit.platform)} credentials here, so this is the synthesized configuration "
                "compared with the base revision; a live plan needs credentials."
            ),
            "",
        ]
    if p.status == FAILED:
        error = p.error.splitlines() or ["(no output)"]
        lines += ["The plan failed:", "", "```text"]
        lines += [f"  {_code(line)}".replace("`", "'").rstrip() for line in error[:MAX_ERROR_LINES]]
        if len(error) > MAX_ERROR_LINES:
            lines.append(f"  … and {len(error) - MAX_ERROR_LINES:,} more lines in the run's output")
        lines += ["```", ""]
    if p.summary is not None:
        visible = p.summary.visible
        if visible:
            lines.append("```diff")
            lines += [_change_line(change) for change in visible[:MAX_CHANGES_PER_UNIT]]
            if len(visible) > MAX_CHANGES_PER_UNIT:
                lines.append(f"  … and {len(visible) - MAX_CHANGES_PER_UNIT:,} more")
            lines += ["```", ""]
        else:
            lines += ["No resource changes.", ""]
        if p.summary.output_changes:
            names = ", ".join(f"`{_inline(name)}`" for name in p.summary.output_changes)
            lines += [f"Outputs changed (names only): {names}", ""]
    lines.append("</details>")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- parts


def part_marker(index: int, count: int) -> str:
    return f"{MARKER_PREFIX} part={index}/{count} -->"


def _room(limit: int) -> int:
    """What a part holds after its two marker lines (sized for any plausible part count)."""
    return limit - len(part_marker(99_999, 99_999)) - len(MARKER) - 2


def _cut(text: str, room: int) -> str:
    """Whole lines of `text` up to `room` characters, a note of what was left out, and the
    code fence and <details> it leaves open closed again."""
    if len(text) <= room:
        return text
    lines, kept, size = text.splitlines(keepends=True), [], 0
    budget = room - 300  # the note and the closing tags
    for line in lines:
        if size + len(line) > budget:
            break
        kept.append(line)
        size += len(line)
    out = "".join(kept)
    if not out.endswith("\n"):
        out += "\n"
    if sum(1 for line in kept if line.lstrip().startswith("```")) % 2:
        out += "```\n"
    out += f"\n*… cut to fit one comment: {len(lines) - len(kept):,} more lines are in the run's output.*\n"
    open_details = out.count("<details>") - out.count("</details>")
    out += "\n</details>\n" * max(open_details, 0)
    return out


def split(header: str, blocks: list[str], limit: int = LIMIT) -> list[str]:
    """Bodies of at most `limit` characters: the header opens the first, the blocks follow
    greedily in order, and a block longer than a whole part is cut with a note. Every body
    starts with its numbered marker line and MARKER."""
    room = _room(limit)
    parts = [_cut(header, room)]
    for block in blocks:
        block = _cut(block, room)
        if len(parts[-1]) + 1 + len(block) > room:
            parts.append(block)
        else:
            parts[-1] += "\n" + block
    count = len(parts)
    return [f"{part_marker(i, count)}\n{MARKER}\n{body}" for i, body in enumerate(parts, start=1)]


def render_comment(
    plans: list[UnitPlan],
    verdicts: Mapping[str, str] | None,
    head_sha: str,
    run_url: str = "",
    dirty: bool = False,
) -> list[str]:
    """The plan comment's parts, in order. `verdicts` maps a unit key or a cluster name to its
    portability verdict. The first part holds the headline, the warnings and the summary
    table (a table too long for it continues at the top of the next parts)."""
    verdicts = verdicts or {}
    halves = _move_halves(plans)
    rows = [_row(p, verdicts, halves.get(id(p), "")) for p in plans]
    entries = [_reviewed_entry(p) for p in plans]
    top = _headline(plans, head_sha, dirty) + _warnings(plans)
    tail = (f"[CI run]({_link(run_url)}) · " if run_url else "") + _FOOTER + "\n"
    room = _room(LIMIT) - 1  # a block joins a part with a newline

    def first(n: int) -> str:
        return _summary(head_sha, top, rows[:n], entries[:n], len(rows) - n, tail)

    in_first = _most_that_fit(first, len(rows), room)
    blocks, shown = [], in_first
    while shown < len(rows):

        def chunk(n: int, start: int = shown) -> str:
            return _continuation(head_sha, start, len(rows), rows[start : start + n], entries[start : start + n])

        n = max(1, _most_that_fit(chunk, len(rows) - shown, room))
        blocks.append(chunk(n))
        shown += n
    return split(first(in_first), blocks + [details(p) for p in plans])


# ---------------------------------------------------------------- after apply


def render_apply_result(results: Iterable[ApplyResult], head_sha: str, run_url: str = "") -> str:
    """The outcome of an apply, one row per stack; failures, refusals and skips stand out."""
    results = list(results)
    tally: dict[str, int] = {}
    for r in results:
        tally[r.outcome] = tally.get(r.outcome, 0) + 1
    known = (APPLIED, NOTHING, APPLY_FAILED, REFUSED, SKIPPED)
    counted = ", ".join(f"{tally[o]:,} {o}" for o in (*known, *sorted(set(tally) - set(known))) if tally.get(o))
    bad = [r for r in results if r.outcome not in (APPLIED, NOTHING)]
    where = f"`{_inline(head_sha[:7])}`" if head_sha else "the working tree"
    body = f"{APPLY_MARKER}\n### reconcile apply of {where}: {'**failed**' if bad else 'done'} ({counted or 'nothing to apply'})\n\n"
    body += _alert("CAUTION", [f"**{r.outcome.upper()}** {_inline(r.plan.selected.unit.title)}: {_first_line(r.detail)}" for r in bad])
    tail = f"\n[CI run]({_link(run_url)})\n" if run_url else ""
    if results:
        body += "| unit | action | outcome | detail |\n|---|---|---|---|\n"
    for i, r in enumerate(results):
        outcome = f"**{r.outcome}**" if r.outcome not in (APPLIED, NOTHING) else r.outcome
        row = f"| {_cell(r.plan.selected.unit.title)} | {r.plan.selected.action} | {outcome} | {_first_line(r.detail)} |\n"
        if len(body) + len(row) + len(tail) + 100 > LIMIT:
            body += f"\n… {len(results) - i:,} more units: see the run's output\n"
            break
        body += row
    return body + tail


def _first_line(text: str) -> str:
    first = (text or "").strip().splitlines()[:1]
    return _cell(first[0]) if first else ""
