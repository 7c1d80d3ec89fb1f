"""PURE: (changed files, units at base, units at head, live records) -> selected units, each
with the reasons it was selected.

Level-based: a unit whose live record differs from git is selected even when no file changed;
"affected" only narrows the work, it never hides a difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from reconciler.live import UNKNOWN, LiveRecord
from reconciler.resolve import CLUSTER, SITE, Unit

APPLY, DESTROY = "apply", "destroy"


@dataclass(frozen=True)
class Selected:
    unit: Unit
    action: str  # apply | destroy
    reasons: tuple[str, ...]


def changed_files(base: Mapping[str, bytes] | None, head: Mapping[str, bytes]) -> frozenset[str]:
    """Paths added, removed or edited between two snapshots."""
    if base is None:
        return frozenset()
    return frozenset(p for p in set(base) | set(head) if base.get(p) != head.get(p))


def _unexplained(previous: Unit, unit: Unit) -> str:
    """Why a unit whose own files did not change has a new configuration: another cluster's
    `network.admit` lets it in or out (its rules follow), else the code that builds it."""
    moved = set()
    for field in ("reaches", "admitted"):
        before = {p.cluster: p for p in getattr(previous.spec, field, ())}
        after = {p.cluster: p for p in getattr(unit.spec, field, ())}
        moved |= {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    if moved:
        return f"network.admit between it and {', '.join(sorted(moved))} changed"
    return f"{unit.platform} platform code changed"


def file_reason(path: str) -> str:
    if path.startswith("sites/"):
        return f"site changed: {path}"
    if path.startswith("clusters/profiles/"):
        return f"profile changed: {path}"
    return f"cluster file changed: {path}"


def select(
    head: Mapping[str, Unit],
    base: Mapping[str, Unit] | None,
    changed: frozenset[str],
    live: Mapping[str, object],
    orphans: Iterable[LiveRecord] = (),
    select_all: bool = False,
) -> list[Selected]:
    """Units to plan or destroy, in dependency order (destroys of clusters before their sites)."""
    selected: list[Selected] = []
    for key, unit in head.items():
        reasons: list[str] = []
        previous = base.get(key) if base is not None else None
        new = base is not None and previous is None
        if new:  # one reason says it all: its files are new, and it was never applied here
            reasons.append(_new_reason(unit, base))
        else:
            reasons += [file_reason(p) for p in unit.inputs if p in changed]
        if previous is not None and previous.config_hash != unit.config_hash and not reasons:
            reasons.append(_unexplained(previous, unit))
        record = live.get(key, UNKNOWN)
        if record is None and not new:
            reasons.append("never applied")
        elif isinstance(record, LiveRecord) and record.interrupted_at:
            reasons.append(f"last apply was interrupted at {record.interrupted_at}")
        elif isinstance(record, LiveRecord) and record.config_hash != unit.config_hash:
            when = f" (last applied at {record.revision[:7]})" if record.revision else ""
            reasons.append(f"live state differs from git{when}")
        if isinstance(record, LiveRecord) and record.unhealthy:
            reasons.append("live state differs from git: " + "; ".join(why for _, why in record.unhealthy))
        if select_all and not reasons and record is not UNKNOWN:  # drift shows only where live can be read
            reasons.append("requested with --all")
        if reasons:
            selected.append(Selected(unit, APPLY, tuple(reasons)))

    gone = {k: u for k, u in (base or {}).items() if k not in head}
    for key, unit in gone.items():
        if live.get(key, UNKNOWN) is None:
            continue  # removed before it was ever applied: nothing exists to destroy
        selected.append(Selected(unit, DESTROY, (_removed_reason(unit, head),)))
    for record in orphans:
        if record.unit not in head and record.unit not in gone:
            unit = Unit(
                record.kind, record.name, record.site, record.platform, (), (), None, "", record.state
            )
            # Live on a site where neither revision places it: if git places the cluster
            # elsewhere, this is the source of a move (a revert moves it back), else an orphan.
            target = move_target(unit, head)
            reason = (
                f"moved back to {target.site}: live here, but git places it on {target.site}; destroy here"
                if target is not None
                else "in live state but defined neither at base nor at head"
            )
            selected.append(Selected(unit, DESTROY, (reason,)))
    # A move's target is always in the run: its health gates the destroy of the source, on
    # every run until the source is gone (a move whose target failed stays unfinished).
    chosen = {s.unit.key for s in selected}
    for s in list(selected):
        target = move_target(s.unit, head) if s.action == DESTROY else None
        if target is not None and target.key not in chosen:
            selected.append(Selected(target, APPLY, ("target of a move: checked before the source is destroyed",)))
            chosen.add(target.key)
    return order(selected)


def together(a: Selected, b: Selected) -> bool:
    """Whether two selected units are one change, applied all or nothing: the two halves of a
    move (a cluster destroyed on one site, applied or destroyed on another), or a removed site
    and the destroy of a cluster on it."""
    u, v = a.unit, b.unit
    if a is b:
        return False
    if u.kind == v.kind == CLUSTER:
        return u.name == v.name and u.site != v.site and DESTROY in (a.action, b.action)
    return {u.kind, v.kind} == {SITE, CLUSTER} and a.action == b.action == DESTROY and u.site == v.site


def groups(selected: list[Selected]) -> list[list[Selected]]:
    """The selected units in change groups (`together`, closed transitively), in selection order."""
    owner = list(range(len(selected)))

    def root(i: int) -> int:
        while owner[i] != i:
            i = owner[i]
        return i

    for i, a in enumerate(selected):
        for k in range(i + 1, len(selected)):
            if together(a, selected[k]):
                owner[root(k)] = root(i)
    out: dict[int, list[Selected]] = {}
    for i, s in enumerate(selected):
        out.setdefault(root(i), []).append(s)
    return list(out.values())


def scoped(selected: list[Selected], sites: frozenset[str], units: frozenset[str]) -> list[Selected]:
    """Only the units on `sites` or named in `units`, with the rest of each one's change group
    (a move scoped by its source still creates its target first)."""
    if not sites and not units:
        return selected
    kept = {
        id(s) for group in groups(selected) if any(s.unit.site in sites or s.unit.key in units for s in group) for s in group
    }
    return [s for s in selected if id(s) in kept]


def move_target(unit: Unit, head: Mapping[str, Unit]) -> Unit | None:
    """The copy of a cluster on another site at head, when `unit` is its old placement."""
    if unit.kind != CLUSTER:
        return None
    return next((u for u in head.values() if u.kind == CLUSTER and u.name == unit.name and u.site != unit.site), None)


def order(selected: list[Selected]) -> list[Selected]:
    """Applies: sites before clusters. Destroys: clusters before sites, after the applies that
    may replace them (make before break)."""

    def rank(s: Selected) -> tuple:
        if s.action == APPLY:
            return (0, s.unit.kind != SITE, s.unit.key)
        return (1, s.unit.kind == SITE, s.unit.key)

    return sorted(selected, key=rank)


def needs(s: Selected, selected: Iterable[Selected]) -> set[tuple[str, str]]:
    """The (action, unit key) among `selected` that must succeed before `s` starts: an apply
    after the applies it depends on; a landing zone's destroy after every cluster on it is
    gone; a cluster's destroy after its copy placed elsewhere is created (make before break)."""
    unit, selected = s.unit, list(selected)
    if s.action == APPLY:
        wanted = {(APPLY, key) for key in unit.depends_on}
    elif unit.kind == SITE:
        wanted = {(DESTROY, q.unit.key) for q in selected if q.unit.kind == CLUSTER and q.unit.site == unit.site}
    else:
        wanted = {(APPLY, q.unit.key) for q in selected if q.unit.kind == CLUSTER and q.unit.name == unit.name}
    present = {(q.action, q.unit.key) for q in selected}
    return (wanted & present) - {(s.action, unit.key)}


# The waves of a fanned-out run, in order. A unit's needs are all in earlier waves, so the
# units of one wave run at once, each on its own runner (`reconcile apply --only`).
WAVES = ("landing-zones", "clusters", "cluster-destroys", "landing-zone-destroys")


def wave_of(s: Selected) -> int:
    if s.action == APPLY:
        return 0 if s.unit.kind == SITE else 1
    return 2 if s.unit.kind == CLUSTER else 3


def waves(selected: list[Selected]) -> list[list[Selected]]:
    """The selected units in the four WAVES, each wave in selection order: landing zones;
    clusters, the targets of moves included; then destroys, the sources of moves after their
    targets (and their health checks); then the landing zones that were removed."""
    out: list[list[Selected]] = [[] for _ in WAVES]
    for s in selected:
        out[wave_of(s)].append(s)
    index = {(s.action, s.unit.key): wave_of(s) for s in selected}
    for s in selected:  # holds by construction; a new kind of dependency must keep it
        late = [key for need in needs(s, selected) if index[need] >= wave_of(s) for key in need[1:]]
        if late:
            raise AssertionError(f"{s.unit.key} needs {', '.join(late)} in its own wave or a later one")
    return out


def _new_reason(unit: Unit, base: Mapping[str, Unit]) -> str:
    if unit.kind == CLUSTER:
        before = [u.site for u in base.values() if u.kind == CLUSTER and u.name == unit.name]
        if before:
            return f"placed here, was on {before[0]}"
    return f"new definition: {unit.inputs[0]}"


def _removed_reason(unit: Unit, head: Mapping[str, Unit]) -> str:
    target = move_target(unit, head)
    if target is not None:
        return f"moved to {target.site}: destroy here"
    return f"definition removed: {unit.inputs[0]}"
