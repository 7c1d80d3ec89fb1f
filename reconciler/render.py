"""PURE: results -> terminal text and JSON. Values from plans are never printed, only addresses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from reconciler import datacopy
from reconciler.affected import APPLY, DESTROY
from reconciler.errors import Problem
from reconciler.plan import ACTIONS, Change
from reconciler.portability import Verdict
from reconciler.resolve import CLUSTER
from reconciler.run import FAILED, OFFLINE, UNSUPPORTED, Assessment, UnitPlan

SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-", "move": "->", "read": "<=", "forget": "o"}
MAX_LINES_PER_UNIT = 40


def header(assessment: Assessment, engine_name: str | None) -> str:
    snap = assessment.head.snapshot
    rev = f"{snap.revision[:7]}" if snap.revision else "no commit"
    head = f"{snap.label} ({'HEAD ' + rev + ', uncommitted changes' if snap.dirty and snap.label == 'working tree' else rev})"
    parts = [f"desired: {head}", assessment.base_note]
    if engine_name:
        parts.append(f"engine: {engine_name}")
    return " | ".join(parts)


def describe_change(change: Change) -> str:
    symbol = SYMBOL.get(change.action, "?")
    text = f"{symbol} {change.address}"
    if change.action == "move":
        text = f"{symbol} {change.address} (moved from {change.previous_address})"
    elif change.action == "replace" and change.reason:
        text += f" ({change.reason.replace('_', ' ')})"
    if change.imported:
        text += " (imported: an existing resource)"
    if change.drains:
        text += " (drained first: its jobs finish within drain_timeout_s, or it stays drained and the apply stops)"
    return text


def counts_text(counts: dict[str, int]) -> str:
    words = {"create": "to create", "update": "to update", "replace": "to replace", "delete": "to destroy"}
    text = ", ".join(f"{counts[a]} {words[a]}" for a in ACTIONS)
    if counts.get("move"):
        text += f", {counts['move']} to move"
    if counts.get("import"):
        text += f", {counts['import']} to import"
    return text


@dataclass(frozen=True)
class Move:
    """One cluster changing site: its two halves, planned and applied as one."""

    cluster: str
    source: UnitPlan
    target: UnitPlan


def moves(plans: list[UnitPlan]) -> list[Move]:
    targets = {
        p.selected.unit.name: p for p in plans if p.selected.action == APPLY and p.selected.unit.kind == CLUSTER
    }
    return [
        Move(p.selected.unit.name, p, targets[p.selected.unit.name])
        for p in plans
        if p.selected.action == DESTROY and p.selected.unit.kind == CLUSTER and p.selected.unit.name in targets
        and targets[p.selected.unit.name].selected.unit.site != p.selected.unit.site
    ]


def plans_text(assessment: Assessment, plans: list[UnitPlan], engine_name: str | None) -> str:
    lines = [header(assessment, engine_name), ""]
    if not plans:
        lines.append("Nothing to do: every checked stack matches git.")
    halves = {}
    for move in moves(plans):
        s, t = move.source.selected.unit, move.target.selected.unit
        halves[id(move.target)] = f"  MOVE {move.cluster} 1/2: create on {t.site}, then check its health"
        halves[id(move.source)] = f"  MOVE {move.cluster} 2/2: destroy on {s.site}, only once {t.site} is healthy"
        lines.append(f"MOVE cluster {move.cluster}: {s.site} [{s.platform}] -> {t.site} [{t.platform}] (make before break)")
    if halves:
        lines.append("")
    for p in plans:
        unit = p.selected.unit
        verb = "DESTROY " if p.selected.action == DESTROY else ""
        lines.append(f"{verb}{unit.title} [{unit.platform}]")
        if id(p) in halves:
            lines.append(halves[id(p)])
        for reason in p.selected.reasons:
            lines.append(f"    why: {reason}")
        if p.blocked:
            lines.append(f"    BLOCKED: {p.blocked}")
        if p.kept:
            lines.append(f"    keeps its data: {', '.join(p.kept)} left in place (storage.on_move: keep)")
        if p.kept_replaced:
            lines.append(
                f"    replaces {', '.join(p.kept_replaced)} in place and keeps the old volume: retained, listed by "
                "`reconcile volumes`, and a new empty one is created (storage.on_move: keep)"
            )
        for v in p.adopted:
            lines.append(f"    adopts retained volume {v.id} as {v.address} (kept by {v.from_stack} at {v.retained_at})")
        if p.copies:
            lines.append(f"    copies its data to {p.copy_target.site} first (storage.on_move: copy): {copies_text(p.copies)}")
            lines.append(f"      steps: {'; '.join(copy_steps(p))}")
        if p.copy_note:
            lines.append(f"    NO COPY: {p.copy_note}")
        if p.summary is not None and p.summary.data_lost:
            when = " (once its copy is verified)" if p.copies_cover_data else ""
            lines.append(f"    DESTROYS DATA{when}: {', '.join(p.summary.data_lost)}")
        if p.summary is not None and p.summary.replaces_all:
            lines.append(f"    REPLACES EVERY RESOURCE ({p.summary.count('replace')}): a decision is needed (--allow-replace)")
        if p.probe:
            lines.append(f"    health check, new or changed (runs on the apply runner, scrubbed environment): {p.probe}")
        if p.status == UNSUPPORTED:
            lines.append(f"    not synthesizable yet: the {unit.platform} platform is not implemented in this version")
        elif p.status == FAILED:
            lines += ["    plan FAILED:"] + [f"      {line}" for line in p.error.splitlines()]
        elif p.summary is not None:
            if p.status == OFFLINE:
                lines.append(
                    f"    offline: no {unit.platform} credentials here, so this is the synthesized configuration"
                    " compared with the base revision; a live plan needs credentials and an engine"
                )
            if not p.summary.has_changes:
                note = "; the live record will be updated on apply" if p.pending else ""
                lines.append(f"    no resource changes{note}")
            else:
                lines.append(f"    plan: {counts_text(p.summary.counts)}")
                if p.change_class is not None:
                    lines.append(f"    to the running cluster: {p.change_class.kind.upper()}: {p.change_class.detail}")
                visible = p.summary.visible
                for change in visible[:MAX_LINES_PER_UNIT]:
                    lines.append(f"      {describe_change(change)}")
                if len(visible) > MAX_LINES_PER_UNIT:
                    lines.append(f"      ... and {len(visible) - MAX_LINES_PER_UNIT} more")
                if p.summary.output_changes:
                    lines.append(f"      outputs: {', '.join(p.summary.output_changes)}")
        lines.append("")
    if assessment.up_to_date:
        lines.append("Up to date: " + listing(assessment.up_to_date))
    if assessment.out_of_scope:
        lines.append("Left out by --site/--unit, still to do: " + listing([s.unit for s in assessment.out_of_scope]))
    if assessment.unchecked:
        lines.append("Not checked (live state in gcs/s3 needs credentials; unchanged in git): " + listing(assessment.unchecked))
    lines.append(footer(plans))
    return "\n".join(lines).rstrip() + "\n"


MAX_LISTED = 12  # stacks named in one line of the summary; beyond, counted (`--json` lists each)


def listing(units: list) -> str:
    """The stacks' titles, or beyond MAX_LISTED their count by kind: a thousand names on one
    line say less than the count."""
    if len(units) <= MAX_LISTED:
        return ", ".join(u.title for u in units)
    sites = sum(1 for u in units if u.kind == "site")
    kinds = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in ((sites, "site"), (len(units) - sites, "cluster")) if n]
    return f"{len(units)} stacks ({', '.join(kinds)}; `--json` lists each)"


def totals(plans: Iterable[UnitPlan]) -> dict[str, int]:
    out = {a: 0 for a in (*ACTIONS, "move", "import")}
    for p in plans:
        if p.summary is not None:
            for action, n in p.summary.counts.items():
                out[action] += n
    return out


def footer(plans: list[UnitPlan]) -> str:
    pending = [p for p in plans if p.pending]
    failed = [p for p in plans if p.status == FAILED]
    unsupported = [p for p in plans if p.status == UNSUPPORTED]
    offline = [p for p in plans if p.status == OFFLINE and p.pending]
    if not pending and not failed:  # with no plan at all, the plan's first line said so
        return "" if not plans else "Nothing to do: the selected stacks match their plans."
    text = f"Plan: {counts_text(totals(plans))} in {len(pending) - len(unsupported)} stack(s)."
    if offline:
        text += f" {len(offline)} of them offline (configuration only)."
    if unsupported:
        text += f" {len(unsupported)} stack(s) not synthesizable yet."
    if failed:
        text += f" {len(failed)} plan(s) FAILED."
    return text


def plans_json(assessment: Assessment, plans: list[UnitPlan], engine_name: str | None, exit_code: int) -> dict:
    snap = assessment.head.snapshot
    return {
        "head": {"label": snap.label, "revision": snap.revision, "dirty": snap.dirty},
        "base": assessment.base_note,
        "engine": engine_name,
        "units": [_unit_json(p) for p in plans],
        "up_to_date": [u.key for u in assessment.up_to_date],
        "unchecked": [u.key for u in assessment.unchecked],
        "out_of_scope": [s.unit.key for s in assessment.out_of_scope],
        "totals": counts_json(totals(plans)),
        "moves": [
            {"cluster": m.cluster, "from": m.source.selected.unit.site, "to": m.target.selected.unit.site,
             "source": m.source.selected.unit.key, "target": m.target.selected.unit.key}
            for m in moves(plans)
        ],
        "exit_code": exit_code,
    }


# The JSON says what the text says: Terraform's "delete" is a destroy.
JSON_ACTION = {"delete": "destroy"}


def counts_json(counts: dict[str, int]) -> dict[str, int]:
    return {JSON_ACTION.get(action, action): n for action, n in counts.items()}


def _unit_json(p: UnitPlan) -> dict:
    unit = p.selected.unit
    out = {
        "key": unit.key,
        "kind": unit.kind,
        "name": unit.name,
        "site": unit.site,
        "platform": unit.platform,
        "stack": unit.stack,
        "action": p.selected.action,
        "reasons": list(p.selected.reasons),
        "depends_on": list(unit.depends_on),
        "config_hash": unit.config_hash,
        "status": p.status,
        "pending": p.pending,
        "blocked": p.blocked,
        "kept": list(p.kept),
        "kept_replaced": list(p.kept_replaced),
        "copies": [
            {"volume": c.volume, "address": c.address, "files": c.files, "bytes": c.bytes, "route": c.route, "measured": c.measured}
            for c in p.copies
        ],
        "copy_note": p.copy_note,
        "adopts": [{"id": v.id, "address": v.address, "retained_at": v.retained_at} for v in p.adopted],
        "health_probe": p.probe,
    }
    if p.change_class is not None:
        out["change_class"] = {"kind": p.change_class.kind, "detail": p.change_class.detail,
                               "batches": [list(b) for b in p.change_class.batches]}
    if p.summary is not None:
        out["changes"] = counts_json(p.summary.counts)
        out["destroys_data"] = list(p.summary.data_lost)
        out["resources"] = [
            {"address": c.address, "action": JSON_ACTION.get(c.action, c.action), "previous_address": c.previous_address,
             "reason": c.reason, "drains": c.drains}
            for c in p.summary.visible
        ]
    if p.error:
        out["error"] = p.error
    return out


def copy_steps(p: UnitPlan) -> list[str]:
    """The cutover, as the plan shows it: a cluster that runs for real (the local slurm runtime)
    is closed, drained and opened around the copy; a bucket is not frozen (datacopy says why);
    a transfer service's copy runs from a transfer stack that lives only while it copies."""
    (source_real, target_real), target = p.cutover, p.copy_target
    services = sorted({c.route for c in p.copies if c.route in ("storage-transfer", "datasync")})
    steps = [f"close the target on {target.site} to users (partitions down, nologin)"] if target_real or target.platform != "local" else []
    if services:
        steps.append(f"apply the transfer stack on {target.site} ({', '.join(services)})")
    if any(c.route == "staged" for c in p.copies):
        # a local cluster without nodes has its leg run by the runner, on its directory
        by = lambda unit, real: f"the {'source' if unit is p.selected.unit else 'target'}'s " + (  # noqa: E731
            "login node" if real or unit.platform != "local" else "volume, by the runner")
        steps.append(f"bulk copy while live (staged: {by(p.selected.unit, source_real)}, each site's staging area, "
                     f"{by(target, target_real)})")
    else:
        steps.append("bulk copy while live")
    if source_real:
        steps.append("drain the source (no new job; running ones finish within drain_timeout_s)")
        if any(not isinstance(c.source, datacopy.Bucket) for c in p.copies):
            steps.append("freeze the source (read-only)")
    local_source = p.selected.unit.platform == "local"
    if local_source and any(not isinstance(c.source, datacopy.Bucket) for c in p.copies) and not source_real:
        steps.append("freeze the source (read-only)")
    if local_source and any(isinstance(c.source, datacopy.Bucket) for c in p.copies):
        steps.append("no freeze for a bucket (nothing here writes to it but its users)")
    if not local_source:
        steps.append("freeze the source through its channel (drained, users refused, volumes read-only; every node acknowledges)")
    steps.append("final pass")
    if any(c.route == "datasync" and not c.measured for c in p.copies):
        steps.append("DataSync verifies the file systems")
    if any(c.measured for c in p.copies):
        steps.append("verify checksums")
    if services:
        steps.append("destroy the transfer stack")
    if target_real or target.platform != "local":
        steps.append(f"open the target on {target.site}")
    return [*steps, "then destroy here"]


def copies_text(copies) -> str:
    return "; ".join(
        f"{c.volume} ({c.files:,} files, {_size(c.bytes)}, by {c.route})"
        if c.measured else f"{c.volume} (by {c.route}, which measures it)"
        for c in copies
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def volumes_text(rows: list[dict]) -> str:
    """`reconcile volumes`: one line per volume, retained ones first."""
    if not rows:
        return "no volumes at the local sites\n"
    lines = []
    for r in rows:
        if r["status"] == "retained":
            status = f"retained since {r['retained_at']} (kept by {r['from_stack']})"
        elif r["status"] == "left by a copy":
            status = f"{r['kind']} left by a copy: removed by an apply once the move of {r['cluster']} has ended"
        else:
            status = f"in use by {r['stack']}"
        size = f"{r['size_gb']} GB" if r.get("size_gb") else "-"
        lines.append(f"{r['site']:<12} {r['id']:<38} {r['cluster'] or '-':<12} {r['volume']:<10} {size:>8}  {status}")
        if r.get("path"):
            lines.append(f"{'':12} {r['path']}")
    return "\n".join(lines) + "\n"


def problems_text(problems: list[Problem]) -> str:
    n = len(problems)
    return "\n".join(str(p) for p in problems) + f"\n{n} problem{'s' if n != 1 else ''} found; nothing was planned or applied.\n"


def portability_text(verdicts: list[Verdict]) -> str:
    lines: list[str] = []
    current = None
    for v in verdicts:
        if v.cluster != current:
            current = v.cluster
            lines.append(f"{'' if not lines else chr(10)}cluster {v.cluster}")
        where = f"{v.site} ({v.platform} {v.region})"
        if v.realizable:
            types = ", ".join(f"{f.pool}: {f.machine_type}" for f in v.fits if f.machine_type)
            types = types or ("emulated nodes" if v.emulated else "real nodes on the applying machine")
            if v.platform != "local" and v.zone:
                types += f" (zone {v.zone})"
            lines.append(f"  {v.role:<11} {where:<40} realizable  {types}")
        else:
            lines.append(f"  {v.role:<11} {where:<40} REFUSED")
            lines += [f"      {reason}" for reason in v.reasons]
    return "\n".join(lines) + "\n"
