"""Apply saved plans in dependency order; a failed stack stops its dependents, not the rest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from reconciler.affected import APPLY, DESTROY
from reconciler.engine import Engine
from reconciler.errors import ReconcileError
from reconciler.gitsource import Snapshot
from reconciler.live import LiveStore
from reconciler.resolve import SITE
from reconciler.run import PLANNED, UnitPlan

APPLIED, SKIPPED, FAILED, NOTHING = "applied", "skipped", "failed", "no changes"


@dataclass(frozen=True)
class ApplyResult:
    plan: UnitPlan
    outcome: str
    detail: str = ""


def blockers(p: UnitPlan, plans: list[UnitPlan]) -> set[str]:
    """Keys of units that must succeed before this one runs."""
    unit = p.selected.unit
    if p.selected.action == APPLY:
        return set(unit.depends_on)
    if unit.kind == SITE:  # a landing zone goes only after every cluster on it is gone
        return {q.selected.unit.key for q in plans if q.selected.action == DESTROY and q.selected.unit.site == unit.site and q is not p}
    return set()


def apply(plans: list[UnitPlan], engine: Engine, store: LiveStore, head: Snapshot) -> list[ApplyResult]:
    """Apply each planned unit's saved plan, then record what was applied beside its state."""
    results: list[ApplyResult] = []
    failed: set[str] = set()
    for p in plans:
        unit = p.selected.unit
        blocked = blockers(p, plans) & failed
        if p.status != PLANNED:  # not synthesizable yet, or its plan failed: dependents wait
            failed.add(unit.key)
            results.append(ApplyResult(p, SKIPPED, p.error or p.status))
            continue
        if blocked:
            failed.add(unit.key)
            results.append(ApplyResult(p, SKIPPED, f"{', '.join(sorted(blocked))} failed"))
            continue
        if not p.pending:
            results.append(ApplyResult(p, NOTHING))
            continue
        try:
            if p.summary.has_changes:
                engine.apply(p.workdir)
            if p.selected.action == DESTROY:
                store.forget(unit)
            else:
                now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
                store.write(unit, head.revision, head.dirty, now, engine.name)
            results.append(ApplyResult(p, APPLIED))
        except ReconcileError as exc:
            failed.add(unit.key)
            results.append(ApplyResult(p, FAILED, str(exc)))
    return results
