"""The reconcile loop as a straight sequence of steps, each one call.

desired (git -> load -> resolve) -> assess (base, live, affected) -> plan (synth, engine)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from reconciler import affected
from reconciler.affected import APPLY, DESTROY, Selected
from reconciler.engine import Engine
from reconciler.errors import InvalidDefinitions, ReconcileError
from reconciler.gitsource import GitSource, Snapshot
from reconciler.live import UNKNOWN, LiveRecord, LiveStore
from reconciler.load import Definitions, load
from reconciler.plan import PlanSummary, summarize
from reconciler.resolve import Unit, resolve
from reconciler.settings import Settings
from reconciler.synth import synthesize

PLANNED, UNSUPPORTED, FAILED = "planned", "not synthesizable yet", "failed"


@dataclass(frozen=True)
class Desired:
    """The desired state at one revision (or the working tree)."""

    snapshot: Snapshot
    definitions: Definitions
    units: dict[str, Unit]


@dataclass(frozen=True)
class Assessment:
    head: Desired
    base: Desired | None
    base_note: str  # why there is no base, or what it is
    live: dict[str, object]
    selected: list[Selected]

    @property
    def unchecked(self) -> list[Unit]:
        """Units whose live state cannot be read here (cloud backends without credentials)."""
        chosen = {s.unit.key for s in self.selected}
        return [u for k, u in self.head.units.items() if k not in chosen and self.live.get(k) is UNKNOWN]

    @property
    def up_to_date(self) -> list[Unit]:
        chosen = {s.unit.key for s in self.selected}
        return [u for k, u in self.head.units.items() if k not in chosen and isinstance(self.live.get(k), LiveRecord)]


@dataclass
class UnitPlan:
    selected: Selected
    status: str
    summary: PlanSummary | None = None
    error: str = ""
    workdir: Path | None = None

    @property
    def record_outdated(self) -> bool:
        return self.selected.action == APPLY and any(
            r == "never applied" or r.startswith("live state differs") for r in self.selected.reasons
        )

    @property
    def pending(self) -> bool:
        if self.status == UNSUPPORTED:
            return True
        if self.status != PLANNED:
            return False
        return self.summary.has_changes or self.record_outdated


def desired(snapshot: Snapshot) -> Desired:
    """Load, validate and resolve one snapshot. Raises InvalidDefinitions."""
    definitions = load(snapshot)
    return Desired(snapshot, definitions, resolve(definitions))


def assess(settings: Settings, store: LiveStore) -> Assessment:
    """Desired at head and base, live records, and the units that need work, with reasons."""
    source = GitSource(settings.root)
    head = desired(source.working_tree() if settings.head is None else source.at_revision(settings.head))

    base_rev = source.merge_base(settings.base) if settings.base else source.default_base()
    base, note = None, "no base revision: comparing with live state only"
    if base_rev is not None:
        try:
            base = head if base_rev == head.snapshot.revision and not head.snapshot.dirty else desired(
                source.at_revision(base_rev)
            )
            note = f"base {base_rev[:7]}"
        except InvalidDefinitions:
            note = f"base {base_rev[:7]} does not validate: comparing with live state only"

    units = {**(base.units if base else {}), **head.units}
    live = {key: store.read(unit) for key, unit in units.items()}
    local_dirs = {u.state.bucket for u in units.values() if u.state.backend == "local"}
    orphans = [r for d in sorted(local_dirs) for r in store.records_under(d)]
    changed = affected.changed_files(base.snapshot.files if base else None, head.snapshot.files)
    selected = affected.select(
        head.units, base.units if base else None, changed, live, orphans, settings.select_all
    )
    return Assessment(head, base, note, live, selected)


def plan(settings: Settings, assessment: Assessment, engine: Engine | None, store: LiveStore) -> list[UnitPlan]:
    """Synthesize and plan every selected unit that can be; one unit's failure does not stop the rest."""
    plans = [UnitPlan(s, PLANNED if s.unit.synthesizable else UNSUPPORTED) for s in assessment.selected]
    work = [p for p in plans if p.status == PLANNED]
    if not work:
        return plans
    if engine is None:
        raise ReconcileError("an engine is needed to plan")
    cache = settings.work_dir / "cache" / "synth"
    documents = {
        **synthesize([p.selected.unit for p in work if p.selected.action == APPLY], cache),
        **synthesize([p.selected.unit for p in work if p.selected.action == DESTROY], cache, removed=True),
    }
    for p in work:
        unit = p.selected.unit
        p.workdir = settings.work_dir / "stacks" / unit.site / unit.stack
        try:
            _prepare(p.workdir, documents[unit.key])
            engine.init(p.workdir, {"path": str(store.state_file(unit.state))})
            p.summary = summarize(engine.plan(p.workdir))
        except ReconcileError as exc:
            p.status, p.error = FAILED, str(exc)
    return plans


def _prepare(workdir: Path, document: str) -> None:
    """A clean working directory holding only this stack's configuration."""
    if workdir.exists():
        for child in workdir.iterdir():
            if child.name != ".terraform":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cdk.tf.json").write_text(document)
