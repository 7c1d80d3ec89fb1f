"""Apply saved plans: independent stacks in parallel (bounded), each stack after the stacks it
depends on; a failed stack stops its dependents and not the rest.

Wall time is the critical path, not the sum: a landing zone and its four clusters take one
landing zone plus one cluster.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from reconciler import affected, datacopy, health, hostruntime, interrupt, stagedcopy, transfer
from reconciler.affected import APPLY, DESTROY
from reconciler.backends import BackendError, NoCredentials, keys
from reconciler.engine import Engine
from reconciler.errors import ReconcileError
from reconciler.gitsource import Snapshot
from reconciler.live import LiveStore, RetainedVolume, volume_name
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.settings import DEFAULT_PARALLELISM, env_seconds
from reconciler.plan import PlanSummary, summarize
from reconciler.run import PLANNED, UnitPlan, engine_failure, holds_data_of
from reconciler.synth import render_json
from rpi import copyroute, local_runtime, local_volumes, retained
from rpi.spec import StateLocation

APPLIED, SKIPPED, FAILED, NOTHING, REFUSED = "applied", "skipped", "failed", "no changes", "refused"
INTERRUPTED, NOT_STARTED = "interrupted", "not started"


@dataclass(frozen=True)
class ApplyResult:
    plan: UnitPlan
    outcome: str
    detail: str = ""


def _id(p: UnitPlan) -> tuple[str, str]:
    return (p.selected.action, p.selected.unit.key)


def blockers(p: UnitPlan, plans: list[UnitPlan]) -> set[tuple[str, str]]:
    """The plans in this run that must succeed before `p` starts."""
    return affected.needs(p.selected, [q.selected for q in plans])


def apply(
    plans: list[UnitPlan], engine: Engine, store: LiveStore, head: Snapshot, parallelism: int = DEFAULT_PARALLELISM,
    context: list[UnitPlan] | None = None,
) -> list[ApplyResult]:
    """Apply each planned unit's saved plan, then record what was applied beside its state.

    `context`: every plan of the run, when `plans` is a part of it (`apply --only`): the moves
    it holds still gate and close their targets, as they would in a run that applies it all.
    """
    results: dict[tuple[str, str], ApplyResult] = {}
    whole = plans if context is None else context
    moved = {p.selected.unit.name for p in whole if p.selected.action == DESTROY and p.selected.unit.kind == CLUSTER}
    gated = {
        _id(p) for p in plans if p.selected.action == APPLY and p.selected.unit.kind == CLUSTER and p.selected.unit.name in moved
    }
    # a move's target that copies its data boots closed to users: its nodes read the channel first
    closing = {q.copy_target.key for q in whole if q.copies and q.copy_target is not None and (q.cutover[1] or q.copy_target.platform != "local")}
    waiting = list(plans)
    running: dict[Future, UnitPlan] = {}
    ok = {APPLIED, NOTHING}
    with interrupt.stepwise(), ThreadPoolExecutor(max_workers=max(1, parallelism), thread_name_prefix="apply") as pool:
        while waiting or running:
            if interrupt.requested():  # no new stack starts; the running ones stop gracefully
                for p in waiting:
                    results[_id(p)] = ApplyResult(p, NOT_STARTED, f"{interrupt.received()} came first")
                waiting = []
            for p in list(waiting):
                needs = blockers(p, plans)
                failed = sorted(key for need in needs if (r := results.get(need)) and r.outcome not in ok for key in need[1:])
                if p.status != PLANNED:  # not synthesizable yet, or its plan failed: dependents wait
                    results[_id(p)] = ApplyResult(p, SKIPPED, p.error or p.status)
                elif p.blocked:
                    results[_id(p)] = ApplyResult(p, REFUSED, p.blocked)
                elif failed:
                    results[_id(p)] = ApplyResult(p, SKIPPED, f"{', '.join(failed)} did not succeed")
                elif all(n in results for n in needs) and len(running) < parallelism:
                    running[pool.submit(_apply_one, p, engine, store, head, _id(p) in gated, closed_first=p.selected.action == APPLY and p.selected.unit.key in closing)] = p
                else:
                    continue
                waiting.remove(p)
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    p = running.pop(future)
                    results[_id(p)] = future.result()
            elif waiting and not any(all(n in results for n in blockers(p, plans)) for p in waiting):
                raise ReconcileError("dependency cycle among " + ", ".join(p.selected.unit.key for p in waiting))
    if not interrupt.requested():
        _tell(results, plans, sweep(plans, results, engine, store))
    return [results[_id(p)] for p in plans]


def sweep(plans: list[UnitPlan], results: dict, engine: Engine, store: LiveStore) -> dict[str, list[str]]:
    """What copies left in the sites of this run (staging areas, transfer stacks, the marks of
    unfinished copies: `leftovers`) goes once its move has ended, whichever run or checkout
    ended it: one of the move's two stacks is no longer applied (the move finished, chose keep
    or drop, was reverted, or the cluster went). While both are, it stays: the next copy sends
    only what differs. Returns {cluster: what was removed, or why not}."""
    told: dict[str, list[str]] = {}
    seen = set()
    workroot = next((q.workdir.parent for q in plans if q.workdir is not None), None)
    for p in plans:
        state = p.selected.unit.state
        place = (state.backend, state.endpoint, state.bucket, state.region, keys(state)[0])
        if place in seen or not store.readable(state):
            continue
        seen.add(place)
        try:
            noted = store.leftovers(state)
        except (BackendError, ReconcileError) as exc:
            told.setdefault(p.selected.unit.name, []).append(f"the leftovers of copies on {p.selected.unit.site} could not be listed ({exc})")
            continue
        for name, body in noted.items():
            what = {"staging": f"the staging area of {body.get('volume')} on {body.get('site')}",
                    "transfer-stack": f"the transfer stack {name}"}.get(body["kind"], "")
            try:
                if _move_pending(store, body):
                    continue
                if body["kind"] == "staging":
                    stagedcopy.remove(store, state, name, body)
                elif body["kind"] == "transfer-stack" and workroot is not None:
                    _remove_transfer_stack(engine, store, state, name, body, workroot / name)
                elif body["kind"] == "unfinished-copy":
                    store.clear_leftover(state, name)  # the move ended: no copy into it is pending
                    continue
                else:
                    continue
            except (ReconcileError, BackendError, OSError, KeyError, TypeError) as exc:
                told.setdefault(body["cluster"], []).append(f"{what}, left by a copy, could not be removed ({exc}); the next apply tries again")
            else:
                told.setdefault(body["cluster"], []).append(f"removed {what}, left by a copy")
    return told


def _move_pending(store: LiveStore, body: dict) -> bool:
    """Whether the move a leftover belongs to is still under way: both its stacks applied. A
    note that names no move, or one this runner cannot read, is left alone."""
    move = body.get("move")
    if not isinstance(move, dict):
        return True
    try:
        return all(store.has_record(StateLocation(**move[side])) for side in ("source", "target"))
    except (BackendError, ReconcileError, KeyError, TypeError):
        return True


def _remove_transfer_stack(engine: Engine, store: LiveStore, state: StateLocation, name: str, body: dict, workdir: Path) -> None:
    """A transfer stack a run left (failed or killed before its destroy): destroyed from its
    state, through a configuration with its backend and provider and no resource."""
    from rpi import cdk, registry  # starts Node: only when a transfer stack was left

    spec = copyroute.TransferSpec(
        body["platform"], body["site"], body["account"], body["region"], body["cluster"], StateLocation(**body["state"]), (),
    )

    def build(app):
        stack = cdk.new_stack(app, spec.stack)
        registry.platform(spec.platform).transfer(stack, spec)
        return {spec.stack: stack}

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cdk.tf.json").write_text(render_json(cdk.synthesize(build)[spec.stack]))
    engine.init(workdir, {})
    _destroy_noted(engine, store, workdir, state, name)


def _tell(results: dict, plans: list[UnitPlan], told: dict[str, list[str]]) -> None:
    """The sweep's lines, on the result of a unit of the same cluster, or on standard error."""
    for cluster, lines in told.items():
        at = next((_id(p) for p in plans if p.selected.unit.name == cluster), None)
        if at is None:
            sys.stderr.write("".join(f"note: cluster {cluster}: {line}\n" for line in lines))
            continue
        r = results[at]
        results[at] = ApplyResult(r.plan, r.outcome, "; ".join([d for d in (r.detail, *lines) if d]))


def _copy_data(p: UnitPlan, store: LiveStore, engine: Engine | None = None) -> list[str]:
    """storage.on_move: copy, before the source is destroyed: each volume into the target's
    volume of the same resource, with a cutover. What was copied, one line per volume.

    1. the target, created and healthy, is closed to its users (partitions down, nologin);
    2. a bulk copy of every volume while the source is live;
    3. the source is drained (no new job, running ones finish) and, volume by volume, frozen
       for the final pass and the verification;
    4. only then does the target open. If anything fails the source opens again and the
       target stays closed: users stay where their data is, and the next run copies again."""
    if not p.copies:
        return []
    source, target = p.selected.unit, p.copy_target
    volumes = _volumes_by_name(store, target)
    pairs, services, staged = [], [], []
    for plan in p.copies:
        if plan.volume not in volumes:
            raise datacopy.CopyError(f"{target.title} has no volume {plan.volume} to copy {plan.address} into; the source stays")
        if plan.route in (copyroute.RSYNC, copyroute.RCLONE):
            pairs.append((plan, datacopy.runner_location(volumes[plan.volume])))
        elif plan.route == copyroute.STAGED:
            staged.append((plan, volumes[plan.volume]))
        else:
            services.append((plan, volumes[plan.volume]))
    source_real, target_real = p.cutover
    # the target holds an unfinished copy until verification: never a move's source to copy from
    unfinished = f"unfinished-{target.name}"
    store.note_leftover(target.state, unfinished, {
        "kind": "unfinished-copy", "cluster": target.name, "site": target.site, "platform": target.platform,
        "from": source.site, "move": stagedcopy.move_of(p),
    })
    try:
        # a transfer service in the target's cloud: a stack of its own, for the copy's time
        transferred = _transfer(p, services, engine, store) if services else []
        transferred += stagedcopy.copy(p, staged, store, _set_access, channel_access) if staged else []
        if pairs:
            transferred += _runner_copies(p, pairs, store)
    except BaseException as exc:
        # whichever route failed, and wherever (a final pass, a verification, a transfer stack's
        # destroy): the source opens again; the target stays closed, and the next run copies again
        still = _reopen(store, source, source_real)
        if still and isinstance(exc, ReconcileError):
            raise datacopy.CopyError(f"{exc}; and {still}") from None
        raise
    store.clear_leftover(target.state, unfinished)  # verified: its volumes are the cluster's data
    _open_target(store, target, target_real)
    return transferred


def _runner_copies(p: UnitPlan, pairs: list, store: LiveStore) -> list[str]:
    """rsync and rclone on the runner: a bulk pass while the source is live, then the source
    drained and frozen for the final pass and the verification."""
    source, target = p.selected.unit, p.copy_target
    source_real, target_real = p.cutover
    if target_real:
        _set_access(store, target, "closed")
    sent = {plan.address: datacopy.bulk(plan, into) for plan, into in pairs}
    interrupt.checkpoint("after the bulk copies: the source stays")
    if source_real:
        _set_access(store, source, "drained")
    if source.platform != "local":  # a cloud source is frozen through its channel; a local one by datacopy (a read-only bind mount)
        channel_access(store, source, "frozen")
    copied = [datacopy.finish(plan, into, sent[plan.address]) for plan, into in pairs]
    return [
        f"copied {c.volume} to {target.site} ({c.files:,} files, {c.bytes:,} bytes; {c.sent:,} bytes sent), "
        "verified by checksums, then destroyed here"
        for c in copied
    ]


def _reopen(store: LiveStore, source: Unit, real: bool) -> str:
    """After a failed copy, the source opens again: a cluster that runs for real at once, a cloud
    one at its nodes' next sync. What failed on the way, or ""."""
    if real:
        return _set_access(store, source, "open", quiet=True)
    if source.platform == "local":
        return ""  # a records-runtime volume is frozen by a bind mount, which datacopy ends
    try:
        channel_access(store, source, "open", wait=False)
    except (ReconcileError, BackendError) as exc:
        return f"{source.title} could not be opened again through its channel ({exc}); the next run opens it"
    return ""


def _open_target(store: LiveStore, target: Unit, real: bool) -> None:
    """Once every volume is copied and verified: the target, which booted closed, opens."""
    if real:
        _set_access(store, target, "open")
    elif target.platform != "local":  # its nodes open at their next sync
        channel_access(store, target, "open", wait=False)


def _open_if_left_closed(store: LiveStore, target: Unit) -> str:
    """A move's target that no copy comes into in this run opens, if a copy that failed left it
    closed (the move then chose keep or drop): users go where the cluster now runs."""
    from reconciler.run import runs_for_real

    try:
        if target.kind != CLUSTER or store.asked_access(target) in ("", "open"):
            return ""
        partial = store.unfinished_copy(target)
    except (BackendError, ReconcileError, NoCredentials):
        return ""  # a channel this runner cannot read: its nodes keep what they were last asked
    if runs_for_real(target, store):
        _set_access(store, target, "open")
    else:  # its nodes open at their next sync
        channel_access(store, target, "open", wait=False)
    said = "opened to its users (a copy that failed had left it closed; no copy is pending now)"
    if partial:
        said += f"; its volumes hold what the copy from {partial['from']} wrote before it failed, unverified"
    return said


def _volumes_by_name(store: LiveStore, unit: Unit) -> dict[str, object]:
    """{volume name: location} of a stack's data volumes, from its state, on any platform."""
    return {volume_name(address): location for address, location in store.data_volumes(unit).items()}


def _transfer(p: UnitPlan, services: list, engine: Engine, store: LiveStore) -> list[str]:
    """Copies by a transfer service (reconciler.transfer): the transfer stack applied, a bulk
    and a final pass, verification, the stack destroyed; only then may the source go."""
    from rpi import cdk, provider_rules, registry  # starts Node: only a move that copies within a cloud needs it

    source, target = p.selected.unit, p.copy_target
    spec = copyroute.TransferSpec(
        target.platform, target.site, target.spec.account, target.spec.region, target.name,
        _sibling(target.state, target.stack, f"transfer-{target.name}"),
        tuple((plan.volume, plan.source, into) for plan, into in services),
    )
    platform = registry.platform(target.platform)

    def build(app):
        stack = cdk.new_stack(app, spec.stack)
        platform.transfer(stack, spec)
        return {spec.stack: stack}

    document = cdk.synthesize(build)[spec.stack]
    if findings := provider_rules.check(document, spec.site):  # before it exists: nothing to undo
        raise ReconcileError(f"{target.title}: the transfer stack {spec.stack} breaks its provider's rules: "
                             + "; ".join(map(str, findings)))
    workdir = p.workdir.parent / spec.stack
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cdk.tf.json").write_text(render_json(document))
    # noted before it exists: a run that fails or is killed before the destroy leaves it listed,
    # and a later apply destroys it (sweep)
    store.note_leftover(target.state, f"{spec.stack}", {**_transfer_note(spec), "move": stagedcopy.move_of(p)})
    engine.init(workdir, {})
    try:
        engine.plan(workdir)
        engine.apply(workdir)
        ids = (engine.outputs(workdir).get("transfers") or {}).get("value") or {}
        where = target.spec.region if target.platform == "aws" else target.spec.account
        bulk = {plan.volume: transfer.run(plan.route, ids[plan.volume], where) for plan, _ in services}
        interrupt.checkpoint("after the bulk transfers: the source stays")
        lines = []
        channel_access(store, source, "frozen")
        for plan, into in services:
            final = transfer.run(plan.route, ids[plan.volume], where)
            if into.kind == "bucket":
                objects = transfer.verify_buckets(datacopy.runner_location(plan.source), datacopy.runner_location(into))
                how = f"{objects:,} objects verified by checksums"
            elif final.verified:
                how = "verified by DataSync"
            else:
                raise datacopy.CopyError(f"{plan.volume}: {plan.route} did not verify the copy; the source stays")
            sent = bulk[plan.volume].bytes + final.bytes
            lines.append(f"copied {plan.volume} to {target.site} by {plan.route} ({sent:,} bytes sent), {how}, then destroyed here")
    except BaseException:  # the stack lives for the copy's time only, whether it succeeded or not
        if not interrupt.requested():  # an interrupt stops at once: the note stays, a later apply destroys it
            with contextlib.suppress(ReconcileError):  # the copy's own failure is the one to report
                _destroy_noted(engine, store, workdir, target.state, spec.stack)
        raise
    _destroy_noted(engine, store, workdir, target.state, spec.stack)
    return lines  # the target opens once every route has copied (_copy_data)


def _destroy_noted(engine: Engine, store: LiveStore, workdir: Path, state: StateLocation, name: str) -> None:
    """Destroy a stack that a copy noted as a leftover, then its note."""
    engine.plan(workdir, destroy=True)
    engine.apply(workdir)
    store.clear_leftover(state, name)


def _transfer_note(spec: copyroute.TransferSpec) -> dict:
    """What destroying a transfer stack later needs: where its state is, and its provider's."""
    return {
        "kind": "transfer-stack", "cluster": spec.cluster, "site": spec.site, "platform": spec.platform,
        "account": spec.account, "region": spec.region, "stack": spec.stack, "state": dataclasses.asdict(spec.state),
    }


def _sibling(state: StateLocation, stack: str, other: str) -> StateLocation:
    """The state location of another stack beside `stack`, in the same backend and prefix."""
    at = state.key.rfind(stack)
    key = state.key[:at] + other + state.key[at + len(stack):] if at >= 0 else f"{other}.tfstate"
    return StateLocation(state.backend, state.bucket, key, state.region, state.endpoint)


ACK_SLACK_S = 3 * 60  # a cloud node takes the channel's access at its next sync (every minute), plus its drain


def channel_access(store: LiveStore, unit: Unit, state: str, wait: bool = True, poll_s: float = 5.0) -> str:
    """Ask a cluster's nodes for an access state through its channel, and wait (bounded) until
    every node that reports has taken it: how a cloud cluster is closed, frozen and opened
    around a copy (`vcnode sync` takes it). Returns the serial; raises CopyError on timeout."""
    serial = f"{datetime.now(timezone.utc).isoformat()}-{state}"
    store.ask_access(unit, state, serial)
    if not wait:
        return serial
    timeout = getattr(unit.spec, "drain_timeout_s", local_runtime.DRAIN_TIMEOUT_S) + ACK_SLACK_S
    # every node the definition names must answer, not only those that report: a report that is
    # missing (deleted, or a node that never booted) never counts as an acknowledgement
    expected = {h for pool in getattr(unit.spec, "pools", ()) for h in pool.hostnames}

    def behind() -> str:
        reports = store.node_reports(unit)
        hosts = expected or set(reports)
        late = sorted(h for h in hosts if reports.get(h, {}).get("access_serial") != serial) or ([] if hosts else ["every node"])
        return ", ".join(late)

    still = interrupt.poll(behind, timeout, poll_s, lambda _: f"while {unit.title} becomes {state}: the source stays")
    if still:
        raise datacopy.CopyError(f"{unit.title}: {still} did not take access {state} within {timeout:.0f} s; the source stays")
    return serial


def _set_access(store: LiveStore, unit: Unit, state: str, quiet: bool = False) -> str:
    """Open, close or drain a cluster that runs for real (the local slurm runtime). `quiet`: on
    the way out of a failure, say what failed instead of raising."""
    drain = getattr(unit.spec, "drain_timeout_s", local_runtime.DRAIN_TIMEOUT_S)
    timeout = drain if state == "drained" else 60
    try:  # the channel first: a node that boots meanwhile takes the same state
        store.ask_access(unit, state, f"{datetime.now(timezone.utc).isoformat()}-{state}")
        hostruntime.cluster_access(store.state_root, unit.state.local_dir, unit.name, state, timeout)
    except hostruntime.RuntimeFault as exc:
        if quiet:
            return str(exc)
        raise datacopy.CopyError(f"{exc}; the source stays") from None
    return ""


def forget_replaced(p: UnitPlan, engine: Engine) -> None:
    """A volume replaced in place whose old one is kept (storage.on_move: keep): the state
    forgets the old volume (it stays, recorded as retained), then the stack is planned again, and
    that plan must hold only what the review showed, with the kept volume created instead of
    replaced. A run killed between the two converges: the old volume is recorded as retained and
    in no state, so the next plan adopts it again (an import) and plans its replacement again.
    On a cloud the new volume needs a name of its own: run._keep_replaced refuses one that would
    take the kept one's name, which the cloud refuses while the old one exists."""
    for address in p.kept_replaced:
        engine.state_rm(p.workdir, address)
    kept = set(p.kept_replaced)
    reviewed = {(c.address, "create" if c.address in kept else c.action) for c in p.summary.changes if c.action not in ("no-op", "read")}
    again = summarize(engine.plan(p.workdir, replace=tuple(a for a in p.replace if a not in kept)), holds_data_of(p.selected.unit.platform))
    unreviewed = sorted(f"{c.action} {c.address}" for c in again.changes if c.action not in ("no-op", "read") and (c.address, c.action) not in reviewed)
    if unreviewed:
        raise ReconcileError(
            f"after forgetting the kept {', '.join(sorted(kept))}, the plan holds what the review did not show "
            f"({', '.join(unreviewed)}); the old volume stays, retained; nothing more was applied: plan again"
        )
    p.summary = again


def _roll(p: UnitPlan, engine: Engine, store: LiveStore | None = None) -> None:
    """A rolling change: the reviewed end state, reached in batches of nodes. Each batch is a
    targeted plan and apply on that same configuration, the controller last; then the rest of
    the reviewed plan, which must hold nothing the review did not show. Its nodes drain, are
    replaced and boot until healthy: on the local platform the runtime's provisioners wait; on
    a cloud the controller drains them through the channel first (`vcnode sync`), and the
    reconciler waits until each new node reports its own boot."""
    reviewed = {(c.address, c.action) for c in p.summary.changes if c.action not in ("no-op", "read")}
    unit = p.selected.unit
    through_channel = unit.platform != "local" and store is not None
    # -replace each batch: a trigger (a pool's generation) fires in the first batch's plan only
    replaced = {c.address for c in p.summary.changes if c.action == "replace"} | set(p.replace)
    for batch in p.change_class.batches:
        interrupt.checkpoint("between the batches of a rolling change")
        hosts = [h for h in map(lambda a: hostname_of(unit, a), batch) if h] if through_channel else []
        booted = {}
        if hosts:
            if getattr(unit.spec, "scheduler", None) is not None:
                channel_drain(store, unit, hosts, getattr(unit.spec, "drain_timeout_s", local_runtime.DRAIN_TIMEOUT_S))
            booted = {h: r.get("booted") for h, r in store.node_reports(unit).items() if h in hosts}
        engine.plan(p.workdir, replace=tuple(a for a in batch if a in replaced), targets=batch)
        engine.apply(p.workdir)
        if hosts:
            wait_booted(store, unit, hosts, booted)
    rest = summarize(engine.plan(p.workdir), holds_data_of(p.selected.unit.platform))
    rolled = {a for batch in p.change_class.batches for a in batch}
    unreviewed = sorted(
        f"{c.action} {c.address}" for c in rest.changes
        if c.action not in ("no-op", "read") and (c.address, c.action) not in reviewed and c.address not in rolled
    )
    if unreviewed:
        raise ReconcileError(
            f"after rolling {', '.join(sorted(rolled))}, the rest of the plan holds what the review did not show "
            f"({', '.join(unreviewed)}); nothing more was applied: plan again"
        )
    if rest.has_changes:
        engine.apply(p.workdir)


def hostname_of(unit: Unit, address: str) -> str:
    """The hostname of a node's resource address (`…node_POOL_INDEX`), from the definition."""
    from reconciler.plan import NODE_ADDRESS

    match = NODE_ADDRESS.match(address)
    if not match or unit.spec is None:
        return ""
    for pool in unit.spec.pools:
        if pool.name == match["pool"] and int(match["index"]) < len(pool.hostnames):
            return pool.hostnames[int(match["index"])]
    return ""


def channel_drain(store: LiveStore, unit: Unit, hosts: list[str], timeout_s: float, poll_s: float = 5.0) -> None:
    """Ask the controller to drain `hosts` through the channel (`config/drain`), and wait
    (bounded) until its report says they are drained. Raises ReconcileError if the drain ran
    out or the controller did not answer: the rollout stops, nothing is killed."""
    serial = f"{datetime.now(timezone.utc).isoformat()}-drain"
    store.channel_put(unit, "config/drain", json.dumps({"serial": serial, "hosts": hosts, "timeout_s": timeout_s}, sort_keys=True).encode())
    controller = getattr(unit.spec, "controller", "")
    report: dict = {}

    def unanswered() -> str:
        report.clear()
        report.update(store.node_reports(unit).get(controller, {}))
        return "" if report.get("drain_serial") == serial else controller

    if interrupt.poll(unanswered, timeout_s + ACK_SLACK_S, poll_s, lambda _: f"while {', '.join(hosts)} drain: nothing was replaced"):
        raise ReconcileError(f"{unit.title}: the controller {controller} did not drain {', '.join(hosts)} within "
                             f"{timeout_s + ACK_SLACK_S:.0f} s; the rollout stopped, nothing was replaced or killed")
    store.channel_delete(unit, "config/drain")  # done: no later controller runs it again
    if report.get("drain_error"):
        raise ReconcileError(f"{unit.title}: {report['drain_error']}; the rollout stopped before replacing {', '.join(hosts)}")


BOOT_TIMEOUT_S = 30 * 60  # a replaced cloud node's first boot, packages included


def wait_booted(store: LiveStore, unit: Unit, hosts: list[str], before: dict, poll_s: float = 5.0) -> None:
    """Wait (bounded) until each replaced node reports a boot of its own, ready."""
    timeout = env_seconds("RECONCILE_BOOT_TIMEOUT_S", BOOT_TIMEOUT_S)

    def behind() -> str:
        reports = store.node_reports(unit)
        return ", ".join(sorted(h for h in hosts if not (reports.get(h, {}).get("ready") and reports[h].get("booted") not in (None, before.get(h)))))

    still = interrupt.poll(behind, timeout, poll_s, lambda late: f"while {late} boot: the rest of the rollout waits")
    if still:
        raise ReconcileError(f"{unit.title}: {still} did not report a new boot within {timeout:.0f} s; the rollout stopped there")


def _apply_one(p: UnitPlan, engine: Engine, store: LiveStore, head: Snapshot, gate: bool, closed_first: bool = False) -> ApplyResult:
    """Apply one saved plan and record it; a move's target must then pass its health check.
    `closed_first`: the target of a move that copies its data, whose nodes boot closed."""
    unit = p.selected.unit
    try:
        if p.pending:
            now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
            if closed_first:
                store.ask_access(unit, "closed", f"{now}-closed")
            if p.kept or p.kept_replaced:  # recorded first: the volumes this apply lets go of are never untracked
                store.retain(unit, p.kept or p.kept_replaced, head.revision, now)
            if p.kept_replaced:
                forget_replaced(p, engine)
            copied = _copy_data(p, store, engine)  # raises: the source stays
            if p.summary.has_changes and p.change_class is not None and p.change_class.batches:
                _roll(p, engine, store)
            elif p.summary.has_changes:
                engine.apply(p.workdir)
            if p.selected.action == DESTROY:
                store.forget(unit)
                if unit.kind == CLUSTER:  # a cluster placed here again later boots open
                    store.channel_delete(unit, "config/access")
                if copied:
                    return ApplyResult(p, APPLIED, "; ".join(copied))
            else:
                try:
                    store.write(unit, head.revision, head.dirty, now, engine.name)
                except BackendError as exc:
                    return ApplyResult(
                        p, FAILED, f"applied, but its live record could not be written ({exc}). The state is sound; "
                        "the record is stale, and the next run plans this stack again and writes it",
                    )
                adopted = {v.id for v in p.adopted} | {v.adopt for v in getattr(unit.spec, "storage", ()) if v.adopt}
                if adopted:
                    store.release(unit.state, adopted)
        outcome = APPLIED if p.pending else NOTHING
        if not gate:
            return ApplyResult(p, outcome)
        verdict = health.check(unit.spec, engine.outputs(p.workdir))
        if not verdict.ok:
            return ApplyResult(p, FAILED, f"health check failed, the source stays: {verdict.detail}")
        opened = "" if closed_first else _open_if_left_closed(store, unit)
        return ApplyResult(p, outcome, "; ".join(d for d in (f"healthy: {verdict.detail}", opened) if d))
    except ReconcileError as exc:
        if interrupt.requested():
            now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
            store.mark_interrupted(unit, now)
            if isinstance(exc, interrupt.Interrupted):  # between two steps (a copy's passes, a rollout's batches)
                return ApplyResult(p, INTERRUPTED, str(exc))
            return ApplyResult(p, INTERRUPTED, f"the engine stopped at {interrupt.received()} and wrote its state")
        return ApplyResult(p, FAILED, engine_failure(store, unit, exc, "applied"))


def delete_volume(
    engine: Engine, store: LiveStore, workdir: Path, volume: RetainedVolume, state: StateLocation, account: str = "", region: str = "",
) -> PlanSummary:
    """Delete a retained volume through the engine: a stack of its own imports it by its id,
    then a destroy removes it. On the local platform, with its destroy-time provisioner (the
    directory, or the bucket emptied and removed); on a cloud (`account`, `region`: its site's),
    with the provider, a bucket emptied first by rclone. Its record goes last, so that a
    deletion that fails or is killed leaves the volume listed. Returns what the destroy did."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    if volume.platform == "local":
        facts = {"name": f"{volume.cluster}-{volume.volume}", "kind": volume.kind, "size_gb": volume.size_gb, "mount": ""}
        if volume.store:
            facts["store"] = volume.store
        document = local_volumes.deletion_stack(volume.address, volume.id, facts, state)
    else:
        document = retained.deletion_stack(volume.platform, volume.address, volume.id, account, region)
    (workdir / "cdk.tf.json").write_text(render_json(document))
    engine.init(workdir, {})
    engine.plan(workdir)
    engine.apply(workdir)  # the import: nothing is created, nothing changed
    rtype = volume.address.split(".", 1)[0]
    if volume.platform != "local" and rtype in copyroute.BUCKET_TYPES:
        store_of = {"backend": "gcs", "project": account} if rtype == "google_storage_bucket" else {"backend": "s3", "region": region}
        interrupt.checkpoint(f"before emptying retained bucket {volume.id}: it stays")
        datacopy.empty(datacopy.Bucket(store_of, volume.id))
    summary = summarize(engine.plan(workdir, destroy=True), holds_data_of(volume.platform))
    interrupt.checkpoint(f"before deleting retained volume {volume.id}: it stays")
    engine.apply(workdir)
    store.release(state, {volume.id})
    shutil.rmtree(workdir, ignore_errors=True)
    return summary
