"""The reconcile loop as a straight sequence of steps, each one call.

desired (git -> load -> resolve) -> assess (base, live, affected) -> plan (synth, engine)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reconciler import affected, datacopy, health, interrupt, locks
from reconciler.affected import APPLY, DESTROY, Selected
from reconciler.backends import keys
from reconciler.engine import Engine
from reconciler.errors import EngineError, InvalidDefinitions, Location, Problems, ReconcileError
from reconciler.gitsource import GitSource, Snapshot
from reconciler.live import UNKNOWN, LiveRecord, LiveStore, RetainedVolume, StateLocationError, volume_name
from reconciler.load import Definitions, load
from reconciler import plan as plan_module
from reconciler.plan import ChangeClass, PlanSummary, config_diff, summarize
from reconciler import prefetch
from reconciler.prefetch import Prefetch
from reconciler.resolve import CLUSTER, Unit, resolve, state_location
from reconciler.settings import Settings
from reconciler.synth import render_json, synthesize
from rpi import copyroute, local_runtime, local_volumes, registry
from rpi.spec import ClusterSpec

PLANNED, OFFLINE, UNSUPPORTED, FAILED = "planned", "offline", "not synthesizable yet", "failed"

# Environment variables that say a run may reach a cloud's API (and its state backend).
CREDENTIALS = {
    "gcp": ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_OAUTH_ACCESS_TOKEN", "GOOGLE_CREDENTIALS"),
    "aws": ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
}


def has_credentials(platform: str, environ=None) -> bool:
    """Local stacks need none; a cloud stack is planned live only where its credentials are set."""
    environ = os.environ if environ is None else environ
    return platform not in CREDENTIALS or any(environ.get(name) for name in CREDENTIALS[platform])


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
    out_of_scope: tuple[Selected, ...] = ()  # would be selected, but --site/--unit leave them out

    @property
    def unchecked(self) -> list[Unit]:
        """Units whose live state cannot be read here (cloud backends without credentials)."""
        chosen = {s.unit.key for s in (*self.selected, *self.out_of_scope)}
        return [u for k, u in self.head.units.items() if k not in chosen and self.live.get(k) is UNKNOWN]

    @property
    def up_to_date(self) -> list[Unit]:
        chosen = {s.unit.key for s in (*self.selected, *self.out_of_scope)}
        return [u for k, u in self.head.units.items() if k not in chosen and isinstance(self.live.get(k), LiveRecord)]


@dataclass
class UnitPlan:
    selected: Selected
    status: str
    summary: PlanSummary | None = None
    error: str = ""
    workdir: Path | None = None
    blocked: str = ""  # why apply must refuse this plan until the definition decides
    kept: tuple[str, ...] = ()  # data-holding resources a move leaves in place (forgotten, not destroyed)
    kept_replaced: tuple[str, ...] = ()  # data holders replaced in place whose old volume is retained (on_move: keep)
    probe: str = ""  # the definition's health probe, when it is new or changed: it will run on the apply runner
    adopted: tuple[RetainedVolume, ...] = ()  # retained volumes this apply takes back (import blocks)
    copies: tuple[datacopy.VolumeCopy, ...] = ()  # storage.on_move: copy, before this source is destroyed
    copy_target: Unit | None = None  # where the copies go
    copy_note: str = ""  # why no copy is possible (the source cannot be read)
    cutover: tuple[bool, bool] = (False, False)  # whether the source, the target runs for real: closed, drained, opened
    change_class: ChangeClass | None = None  # what a cluster's change does to the running cluster
    replace: tuple[str, ...] = ()  # resources planned with -replace (broken behind Terraform's back)
    document_sha: str = ""  # of the synthesized document this plan is of

    @property
    def copies_cover_data(self) -> bool:
        """Every data-holding resource this plan destroys is copied first (storage.on_move: copy)."""
        lost = self.summary.data_lost if self.summary is not None else ()
        return bool(lost) and set(lost) <= {c.address for c in self.copies}

    @property
    def record_outdated(self) -> bool:
        return self.selected.action == APPLY and any(
            r == "never applied" or r.startswith(("live state differs", "last apply was interrupted")) for r in self.selected.reasons
        )

    @property
    def pending(self) -> bool:
        if self.status == UNSUPPORTED:
            return True
        if self.status not in (PLANNED, OFFLINE):
            return False
        return self.summary.has_changes or self.record_outdated


def desired(snapshot: Snapshot) -> Desired:
    """Load, validate and resolve one snapshot. Raises InvalidDefinitions."""
    definitions = load(snapshot)
    return Desired(snapshot, definitions, resolve(definitions))


def assess(settings: Settings, store: LiveStore, head_snapshot: Snapshot | None = None) -> Assessment:
    """Desired at head and base, live records, and the units that need work, with reasons.

    `head_snapshot` replaces the head that settings name (a proposed change, e.g. a failover).
    """
    helper = prefetch.for_run(settings.root, store.state_root)  # reads remote records while this process reads git
    try:
        head, base, note, units, live, orphans = _desired_and_live(settings, store, head_snapshot, helper)
    finally:
        helper.close()
    changed = affected.changed_files(base.snapshot.files if base else None, head.snapshot.files)
    selected = affected.select(
        head.units, base.units if base else None, changed, live, orphans, settings.select_all
    )
    _check_scope(settings, {**units, **{s.unit.key: s.unit for s in selected}})  # orphans too: a move's source that git no longer names
    in_scope = affected.scoped(selected, settings.sites, settings.units)
    kept = {id(s) for s in in_scope}
    left_out = tuple(s for s in selected if id(s) not in kept)
    return Assessment(head, base, note, live, in_scope, left_out)


def _desired_and_live(settings: Settings, store: LiveStore, head_snapshot: Snapshot | None, helper: Prefetch):
    source = GitSource(settings.root)
    if head_snapshot is None:
        head_snapshot = source.working_tree() if settings.head is None else source.at_revision(settings.head)
    head = desired(head_snapshot)

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
    check_state_locations(store, head, units)
    directories = state_directories(units.values())
    directories += removed_site_directories(source, units, directories)
    remote = {k: u for k, u in units.items() if u.state.backend != "local"}
    answer = helper.collect(remote, [d for d in directories if d.backend != "local"]) if remote else None
    if answer is None:  # no helper: read here
        live = store.read_all(units)
        known = store.known_records(live)
        orphans = [r for state in directories for r in store.records_under(state, known)]
    else:
        remote_live, remote_under = answer
        local = {k: u for k, u in units.items() if k not in remote}
        read_here = store.read_all(local)
        found = {**read_here, **{k: UNKNOWN if v == "UNKNOWN" else v for k, v in remote_live.items()}}
        live = {k: found[k] for k in units}
        known = store.known_records(read_here)
        orphans = [r for state in directories if state.backend == "local" for r in store.records_under(state, known)]
        orphans += [r for listed in remote_under for r in listed]
    return head, base, note, units, live, orphans


def removed_site_directories(source: GitSource, units: dict[str, Unit], known: list) -> list:
    """The local state directories of sites deleted from git at any time, that neither the head
    nor the base names: what their stacks left behind is listed as orphans, so a local site
    removed in a run that was skipped, or applied from a checkout whose base already lacks it,
    is still destroyed (as a reviewed destroy). Only state on this machine: a site git no
    longer names is never contacted over the network, with whatever credentials this run has
    (for remote state the base names a removed site: the apply workflow passes the push's
    `before`). A removed file that no longer validates is passed over."""
    named = {u.site for u in units.values()}
    seen = {(d.backend, d.endpoint, d.bucket, keys(d)[0]) for d in known}
    out = []
    for path, raw in sorted(source.removed_sites().items()):
        try:
            defs = load(Snapshot(f"{path} before its removal", None, False, {path: raw}))
        except InvalidDefinitions:
            continue
        for site in defs.sites.values():
            state = state_location(site, "landing-zone")
            if state.backend != "local":
                continue
            key = (state.backend, state.endpoint, state.bucket, keys(state)[0])
            if site.name not in named and key not in seen:
                seen.add(key)
                out.append(state)
    return out


def state_directories(units) -> list:
    """One state location per site directory (a local directory, or a bucket's prefix at one
    endpoint): where to list records of stacks that git no longer names."""
    found = {}
    for unit in units:
        state = unit.state
        found.setdefault((state.backend, state.endpoint, state.bucket, keys(state)[0]), state)
    return [found[k] for k in sorted(found)]


def _check_scope(settings: Settings, units: dict[str, Unit]) -> None:
    """--site and --unit name what exists at the base or the head, or is live and selected."""
    sites = {u.site for u in units.values()}
    if unknown := sorted(settings.sites - sites):
        raise ReconcileError(f"--site {unknown[0]}: no such site (sites: {', '.join(sorted(sites))})")
    if unknown := sorted(settings.units - set(units)):
        raise ReconcileError(f"--unit {unknown[0]}: no such unit (units: {', '.join(units)})")


def check_state_locations(store: LiveStore, head: Desired, units: dict[str, Unit]) -> None:
    """Every local state path stays inside the state root, symlinks resolved, before any is read."""
    problems = Problems()
    memo: dict[str, str] = {}  # each site's directory resolved once
    for unit in units.values():
        try:
            store.check_location(unit.state, memo)
        except StateLocationError as exc:
            where = head.definitions.locate_site(unit.site, ("state", "path")) if unit.site in head.definitions.sites else Location("")
            problems.add(where, "state.path", str(exc))
    problems.raise_if_any()


def plan(settings: Settings, assessment: Assessment, engine: Engine | None, store: LiveStore,
         recorded: dict[tuple[str, str], dict] | None = None) -> list[UnitPlan]:
    """Synthesize and plan every selected unit that can be; one unit's failure does not stop the rest.

    Stacks whose cloud credentials are absent get an offline plan: a configuration-level diff
    of the synthesized stack against the base revision's. `recorded`: summaries that other
    runners planned (`plan --save-summaries`), used for the units whose configuration hash and
    synthesized document they match, instead of planning those again.
    """
    plans = [UnitPlan(s, PLANNED if s.unit.synthesizable else UNSUPPORTED) for s in assessment.selected]
    base_clusters = {u.name: u for u in (assessment.base.units.values() if assessment.base else ()) if u.kind == CLUSTER}
    for p in plans:
        p.probe = _new_probe(p.selected, base_clusters)
    for p in plans:
        unit = p.selected.unit
        if p.status == PLANNED and (not has_credentials(unit.platform) or assessment.live.get(unit.key) is UNKNOWN):
            p.status = OFFLINE  # the platform's API or the state backend cannot be reached from here
    cache = settings.work_dir / "cache" / "synth"
    wanted = [p for p in plans if p.status in (PLANNED, OFFLINE)]
    try:
        documents = {
            **synthesize([p.selected.unit for p in wanted if p.selected.action == APPLY], cache),
            **synthesize([p.selected.unit for p in wanted if p.selected.action == DESTROY], cache, removed=True),
        }
    except Exception:
        interrupt.checkpoint("during synthesis")  # Node stopped by the terminal's Ctrl-C: say so, no traceback
        raise
    interrupt.checkpoint("after synthesis, before planning")
    for p in wanted:
        key = p.selected.unit.key
        if p.selected.action == DESTROY:
            documents[key] = _protect_data(p, assessment, documents[key], cache, store)
        elif p.selected.unit.kind == CLUSTER:
            documents[key] = _adopt_volumes(p, assessment, documents[key], store)
        if p.selected.unit.platform == "local":
            documents[key] = _destroy_what_left(p.selected.unit, documents[key], store)
    for p in wanted:
        p.document_sha = document_sha(documents[p.selected.unit.key])
    for p in plans:
        if p.status in (PLANNED, OFFLINE) and recorded:
            _use_recorded(p, recorded.get((p.selected.action, p.selected.unit.key)), settings)
    for p in plans:
        if p.status == OFFLINE and p.summary is None:
            p.summary = _keep_replaced(p, _offline(p, assessment, documents, cache))
            p.change_class = _change_class(p)
    work = [p for p in plans if p.status == PLANNED and p.summary is None]
    if work and engine is None:
        raise ReconcileError("an engine is needed to plan")
    # Independent stacks plan at once (each in its own directory, with its own engine process),
    # at most `parallelism` of them; the plans keep their order, whichever finishes first.
    with interrupt.stepwise(), ThreadPoolExecutor(max_workers=settings.parallelism, thread_name_prefix="plan") as pool:
        futures = [pool.submit(_plan_one, p, settings, assessment, engine, store, documents) for p in work]
        for future in futures:
            future.result()  # an interrupt: the others stop at their next step too
        interrupt.checkpoint("while planning: nothing was applied")
    _tidy(plans, store)
    return plans


# ---------------------------------------------------------------- summaries planned elsewhere

SUMMARY_FORMAT = 1


def document_sha(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def summary_record(p: UnitPlan) -> dict:
    """What a runner of a fanned-out plan hands on for one unit: the plan's summary (addresses,
    actions and flags: never a value), tied to the configuration it planned."""
    s = p.summary
    return {
        "format": SUMMARY_FORMAT, "key": p.selected.unit.key, "action": p.selected.action,
        "config_hash": p.selected.unit.config_hash, "document_sha": p.document_sha,
        "status": p.status, "error": p.error,
        "changes": [dataclasses.asdict(c) for c in s.changes] if s is not None else None,
        "output_changes": list(s.output_changes) if s is not None else [],
    }


def _use_recorded(p: UnitPlan, record: dict | None, settings: Settings) -> None:
    """Take another runner's summary of this unit when it planned exactly this configuration;
    otherwise leave the unit to be planned here."""
    unit = p.selected.unit
    if not isinstance(record, dict) or record.get("format") != SUMMARY_FORMAT:
        return
    if record.get("config_hash") != unit.config_hash or record.get("document_sha") != p.document_sha:
        return
    status = record.get("status")
    try:
        if status == FAILED:
            p.status, p.error = FAILED, str(record.get("error") or "failed on its runner")
            return
        if status not in (PLANNED, OFFLINE):
            return
        changes = tuple(plan_module.Change(**c) for c in record["changes"])
        if not all(isinstance(c.address, str) and isinstance(c.action, str) for c in changes):
            return
        summary = PlanSummary(tuple(sorted(changes, key=lambda c: c.address)), tuple(str(o) for o in record.get("output_changes") or ()))
    except (KeyError, TypeError, ValueError):
        return
    p.status = status
    p.workdir = settings.work_dir / "stacks" / unit.site / unit.stack
    p.summary = _keep_replaced(p, dataclasses.replace(summary, changes=tuple(dataclasses.replace(c, kept=False) for c in summary.changes)))
    p.change_class = _change_class(p)


def _plan_one(p: UnitPlan, settings: Settings, assessment: Assessment, engine: Engine, store: LiveStore,
              documents: dict[str, str]) -> None:
    """Init and plan one stack; its failure is its own (p.status FAILED, p.error)."""
    interrupt.checkpoint("while planning: nothing was applied")
    unit = p.selected.unit
    p.workdir = settings.work_dir / "stacks" / unit.site / unit.stack
    untrusted = store.verify(unit, assessment.live.get(unit.key))
    if untrusted:
        p.status, p.error = FAILED, untrusted
        return
    try:
        _prepare(p.workdir, documents[unit.key])
        if unit.state.backend != "local":  # a backend that goes away mid-run never hangs it
            engine.watch(p.workdir, lambda state=unit.state, site=unit.site: store.probe(state, site))
        backend = {"path": str(store.state_file(unit.state))} if unit.state.backend == "local" else {}
        engine.init(p.workdir, backend)
        record = assessment.live.get(unit.key)
        broken = tuple(a for a, _ in record.unhealthy) if isinstance(record, LiveRecord) else ()
        p.replace = broken
        document = engine.plan(p.workdir, replace=broken)
        try:
            p.summary = _keep_replaced(p, summarize(document, holds_data_of(unit.platform)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineError(f"{engine.name} show -json in {p.workdir} gave a plan this cannot read ({exc!r})") from None
        p.change_class = _change_class(p)
    except ReconcileError as exc:
        interrupt.checkpoint("while planning: nothing was applied")
        p.status, p.error = FAILED, engine_failure(store, unit, exc)


def _keep_replaced(p: UnitPlan, summary: PlanSummary) -> PlanSummary:
    """`storage.on_move: keep` holds for a volume that a change replaces in place too (a zone, a
    shrink, a kind that the platform cannot change): the old volume is retained and recorded,
    and a new, empty one is created. Apply makes the stack forget the old one first
    (`apply.forget_replaced`)."""
    if p.selected.action != APPLY or getattr(p.selected.unit.spec, "on_move", "") != "keep":
        return summary
    kept = tuple(c.address for c in summary.changes if c.holds_data and c.action == "replace")
    if not kept:
        return summary
    taken = [c for c in summary.changes if c.address in kept and c.same_name]
    if taken:  # the cloud refuses a second volume of that name while the kept one exists
        p.blocked = "; ".join(
            f"storage.on_move: keep: the new {c.address} would take the kept one's name ({c.same_name}), which the cloud "
            "refuses while the old one exists: "
            + (f"rename bucket {volume_name(c.address)} in {p.selected.unit.inputs[0]} (a new name makes a new bucket, and the "
               "old one is kept), or decide drop" if c.address.split(".", 1)[0] in copyroute.BUCKET_TYPES else
               f"its name follows from the cluster and volume {volume_name(c.address)}, so the replacement can only drop the "
               "old one (storage.on_move: drop, or --allow-data-loss): copy its data out first")
            for c in taken
        )
        return summary
    p.kept_replaced = kept
    return dataclasses.replace(summary, changes=tuple(dataclasses.replace(c, kept=True) if c.address in kept else c for c in summary.changes))


def _tidy(plans: list[UnitPlan], store: LiveStore) -> None:
    """A plan of a stack never applied leaves no trace: the engine's lock made its local state
    directory, which would outlive the site if its definition went away. Only empty ones go."""
    for p in plans:
        unit = p.selected.unit
        if unit.state.backend == "local" and p.selected.action == APPLY:
            directory = store.state_file(unit.state).parent
            try:
                directory.rmdir()  # fails, and stays, unless empty
            except OSError:
                pass


def unlock_stack(settings: Settings, unit: Unit, engine: Engine, lock_id: str) -> None:
    """The engine's own force-unlock, in the stack's working directory, initialized on its backend."""
    workdir = settings.work_dir / "stacks" / unit.site / unit.stack
    (document,) = synthesize([unit], settings.work_dir / "cache" / "synth").values()
    _prepare(workdir, document)
    engine.init(workdir, {})
    engine.force_unlock(workdir, lock_id)


def engine_failure(store: LiveStore, unit: Unit, exc: ReconcileError, step: str = "planned") -> str:
    """What an engine's failure means for a stack: a held state lock names its holder."""
    text = str(exc)
    if locks.LOCK_ERROR not in text:
        if unit.state.backend == "local":
            return text
        return f"site {unit.site}, state {store.where(unit.state)}: {text}"
    info = store.lock_info(unit.state) or locks.LockInfo.parse_output(text)
    return locks.held_message(unit.title, unit.key, info, store.where(unit.state), step)


def _new_probe(selected: Selected, base_clusters: dict[str, Unit]) -> str:
    """The cluster's own health probe, if the base revision (its clusters by name, whose specs
    are read only for the clusters that plan) did not already have it."""
    unit = selected.unit
    if selected.action != APPLY or not isinstance(unit.spec, ClusterSpec):
        return ""
    probe = health.describe(unit.spec)
    base = base_clusters.get(unit.name)
    return "" if base is not None and health.describe(base.spec) == probe else probe


def _change_class(p: UnitPlan) -> ChangeClass | None:
    """What a cluster's change does to the running cluster: node replacements roll in batches
    on every platform."""
    unit = p.selected.unit
    if p.selected.action != APPLY or unit.kind != CLUSTER or p.summary is None:
        return None
    controller = plan_module.controller_address(p.summary, unit.name, getattr(unit.spec, "controller", ""))
    batch = getattr(unit.spec, "roll_batch", 1)
    # the local runtime's provisioners drain and wait; a cloud's controller drains through the
    # channel and each new node reports its boot there (apply._roll)
    return plan_module.classify(p.summary, rolls=True, controller=controller, batch=batch)


def holds_data_of(platform: str):
    return lambda resource_type, body: registry.holds_data(platform, resource_type, body)


def _protect_data(p: UnitPlan, assessment: Assessment, document: str, cache: Path, store: LiveStore) -> str:
    """A move never destroys data silently: the definition says keep (the source stack forgets
    its shared filesystems and buckets, which stay) or drop; until it does, apply refuses.

    The source's data-holding resources come from its definition, or, for a copy known only
    from live state (a move reverted outside the compared revisions), from its state."""
    unit = p.selected.unit
    target = affected.move_target(unit, assessment.head.units)
    if target is None:
        return document
    if unit.spec is not None:
        source = json.loads(synthesize([unit], cache)[unit.key])
        bodies = [(rtype, name, body) for rtype, by_name in (source.get("resource") or {}).items() for name, body in by_name.items()]
    else:
        bodies = store.resources(unit)
    data = sorted(f"{rtype}.{name}" for rtype, name, body in bodies if registry.holds_data(unit.platform, rtype, body))
    decision = target.spec.on_move
    if not data or decision == "drop":
        return document
    if not decision:
        p.blocked = (
            f"the move would destroy data ({', '.join(data)}); set storage.on_move to keep, drop or copy in "
            f"{target.inputs[0]}"
        )
        return document
    if decision == "copy":
        _plan_copies(p, target, data, store)
        return document  # the source's volumes are destroyed once their copies are verified
    p.kept = tuple(data)
    protected = json.loads(document)
    protected["removed"] = [{"from": address, "lifecycle": {"destroy": False}} for address in data]
    return render_json(protected)


def _plan_copies(p: UnitPlan, target: Unit, data: list[str], store: LiveStore) -> None:
    """What `storage.on_move: copy` will copy, by which route (`rpi.copyroute`), with an
    estimate; or why it cannot. Volumes pair by name: `shared` goes into the target's `shared`,
    whatever resource each platform makes of it."""
    unit = p.selected.unit
    kinds = {v.name: _target_kind(target, v) for v in target.spec.storage}
    if not store.readable(unit.state):
        p.blocked = (
            f"storage.on_move: copy: the source's state ({unit.state.backend}://{unit.state.bucket}) cannot be read here, "
            "so its volumes are not known: the copy is planned where the site's credentials are (the apply workflow)"
        )
        return
    unfinished = store.unfinished_copy(unit)
    if unfinished:  # e.g. a revert after a failed copy: the data is still where the copy came from
        p.blocked = (
            f"storage.on_move: copy: {unit.title} holds an unfinished copy of the data on {unfinished.get('from')} (its copy "
            f"failed before verification), which would overwrite the data on {target.site}; set storage.on_move: drop in "
            f"{target.inputs[0]} for this move (the unfinished copy goes, the data on {unfinished.get('from')} stays), or keep"
        )
        return
    sources = store.data_volumes(unit)
    p.copy_target = target
    p.cutover = (runs_for_real(unit, store), runs_for_real(target, store))
    for address in data:
        name, source = volume_name(address), sources.get(address)
        into = kinds.get(name)
        if into is None:
            p.blocked, p.copies = f"storage.on_move: copy: {target.title} has no volume {name} to copy {address} into ({target.inputs[0]})", ()
            return
        route = copyroute.route(unit.platform, source if source is not None else "directory", target.platform, into)
        if route == copyroute.RSYNC and target.spec.copy_via == "nodes":
            route = copyroute.STAGED  # the data passes through the login nodes, not the runner
        if route == copyroute.STAGED and (why := _cannot_stage(unit, target, store)):
            p.blocked, p.copies = f"storage.on_move: copy of {name} is staged through the login nodes, and {why}", ()
            return
        runner_side = route in (copyroute.RSYNC, copyroute.RCLONE)
        if runner_side and (why := datacopy.unavailable(datacopy.runner_location(source), into == "bucket")):
            p.blocked, p.copies = f"storage.on_move: copy cannot run here: {why}", ()
            return
        try:
            readable = source is not None and (not runner_side or datacopy.exists(datacopy.runner_location(source)))
            if readable:
                measure = isinstance(source, (Path, datacopy.Bucket)) or source.kind == "bucket"
                p.copies += (datacopy.estimate(name, address, datacopy.runner_location(source), measure=measure, route=route),)
        except datacopy.CopyError as exc:
            p.blocked, p.copies = f"storage.on_move: copy cannot be planned: {exc}; nothing was copied", ()
            return
        if not readable:
            p.copy_note = (
                f"no copy is possible: the source volume {address} ({source or 'not in the state'}) cannot be read here, "
                "so the target starts without its data (that needs the data decision)"
            )
            p.copies = ()
            return


def _cannot_stage(source: Unit, target: Unit, store: LiveStore) -> str:
    """Why a staged copy cannot run between these clusters, or "". Each side's leg runs on its
    login node (a cloud's, or the local slurm runtime's), or, for a local cluster without nodes,
    on the runner, which also carries the staging area across sites (rclone)."""
    if shutil.which("rclone") is None:
        return "rclone is not on PATH (Debian: apt-get install rclone): it carries the staging area between sites"
    from reconciler.stagedcopy import login_node

    for side in (source, target):
        if (side.platform != "local" or runs_for_real(side, store)) and not login_node(side, store)[0]:
            return f"{side.title} has no login node known to run its leg"
    return ""


def _target_kind(target: Unit, volume) -> str:
    """What a target's volume is for the route: "bucket", "filesystem" (a cloud's) or "directory"."""
    if target.platform == "local":
        return "bucket" if volume.store is not None else "directory"
    return "bucket" if volume.kind == "object" else "filesystem"


def runs_for_real(unit: Unit, store: LiveStore) -> bool:
    """Whether a local cluster's nodes run (the slurm runtime), so that it has users to keep
    out: from its definition, or, for a copy known only from live state, from its state."""
    if unit.platform != "local" or unit.kind != CLUSTER:
        return False
    if unit.spec is not None:
        return unit.spec.runtime == "slurm"
    return any("site_dir" in (a.get("input") or {}) for _, name, a in store.resources(unit) if name.startswith("node_"))


def _adopt_volumes(p: UnitPlan, assessment: Assessment, document: str, store: LiveStore) -> str:
    """A cluster that comes back to a site where it left a volume (storage.on_move: keep) takes
    that volume back instead of creating an empty one: an import block with its resource id.

    A volume adopted explicitly (`storage.<volume>.from`) must exist: on the local platform its
    directory or bucket is checked here, before anything is planned."""
    unit = p.selected.unit
    synthesized = json.loads(document)
    bodies = {
        f"{rtype}.{name}": body for rtype, by_name in (synthesized.get("resource") or {}).items() for name, body in by_name.items()
    }
    for volume in unit.spec.storage if unit.platform == "local" else ():
        if not volume.adopt:
            continue
        problem = ""
        if "/" in volume.adopt or volume.adopt in (".", ".."):
            problem = f"{volume.adopt!r} is not a volume id of the local platform (one name, as `reconcile volumes` lists it)"
        elif problem := _missing(store.volume_location(unit.state, volume.adopt, {"store": volume.store and volume.store.describe()})):
            problem = f"there is no volume {volume.adopt!r} on site {unit.site} ({problem}); `reconcile volumes` lists the volumes there"
        elif users := sorted({v.stack for v in store.in_use(unit.state) if v.id == volume.adopt} - {unit.stack}):
            problem = f"volume {volume.adopt!r} on site {unit.site} is in use by {', '.join(users)}: a volume has one owner"
        if problem:
            where = assessment.head.definitions.locate(unit.name, ("storage", volume.name if volume.kind != "object" else "object", "from"))
            p.status, p.error = FAILED, f"{where}: storage.{volume.name}.from: {problem}"
            return document
    explicit = {f"{i['to']}" for i in synthesized.get("import") or ()}
    data = {
        address: str((body.get("input") or {}).get("kind", ""))
        for address, body in bodies.items()
        if address not in explicit and registry.holds_data(unit.platform, address.split(".", 1)[0], body)
    }
    adoptions = store.adoptable(unit, data)
    if not adoptions:
        return document
    p.adopted = tuple(adoptions[a] for a in sorted(adoptions))
    synthesized["import"] = [*(synthesized.get("import") or ()), *({"to": v.address, "id": v.id} for v in p.adopted)]
    return render_json(synthesized)


def _missing(location: datacopy.Location) -> str:
    """Why a volume to adopt is not there, or "" when it is."""
    try:
        return "" if datacopy.exists(location) else f"{location} does not exist"
    except datacopy.CopyError as exc:
        return str(exc)


def _destroy_what_left(unit: Unit, document: str, store: LiveStore) -> str:
    """Terraform drops the destroy-time provisioners of a resource whose configuration is gone,
    so each local resource that has real things behind it gets a `removed` block carrying them:

    - a volume (its cluster removed or moved, or the volume dropped from the definition): its
      directory or bucket goes with it. Volumes a move keeps already have a `removed` block (destroy =
      false) and are left alone;
    - on the slurm runtime, a node (a pool shrinks, or the cluster goes: drained first, then
      its daemons and namespaces), a subnet's gateway, a site's namespace."""
    synthesized = json.loads(document)
    configured = {f"{t}.{n}" for t, by_name in (synthesized.get("resource") or {}).items() for n in by_name}
    configured |= {block["from"] for block in synthesized.get("removed") or ()}
    gone = {f"{t}.{n}": attributes for t, n, attributes in store.resources(unit) if f"{t}.{n}" not in configured}
    volumes = sorted(a for a in gone if a.split(".", 1)[1].startswith("storage_"))
    real = {a for a, attributes in gone.items() if "site_dir" in (attributes.get("input") or {})}
    blocks = [local_volumes.removed_block(a, unit.state, gone[a].get("input") or {}) for a in volumes]
    drain = getattr(unit.spec, "drain_timeout_s", local_runtime.DRAIN_TIMEOUT_S)
    blocks += [local_runtime.removed_block(a, drain) for a in local_runtime.removed_addresses(real)]
    if not blocks:
        return document
    synthesized["removed"] = [*(synthesized.get("removed") or ()), *blocks]
    return render_json(synthesized)


def _offline(p: UnitPlan, assessment: Assessment, documents: dict[str, str], cache: Path) -> PlanSummary:
    """What the synthesized stack adds, changes or removes relative to the base revision."""
    key = p.selected.unit.key
    base_unit = assessment.base.units.get(key) if assessment.base else None
    before = json.loads(synthesize([base_unit], cache)[key]) if base_unit is not None else None
    after = json.loads(documents[key])
    return config_diff(before, after, holds_data_of(p.selected.unit.platform))


def _prepare(workdir: Path, document: str) -> None:
    """A clean working directory holding only this stack's configuration."""
    if workdir.exists():
        for child in workdir.iterdir():
            if child.name != ".terraform":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cdk.tf.json").write_text(document)
