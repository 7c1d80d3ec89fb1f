"""ADAPTER: a staged copy (`rpi.copyroute.STAGED`): a file system carried through a staging
area of each site by the clusters' own login nodes, so that the data never passes through the
runner within a site (`storage.copy_via: nodes`, and every cloud file system).

Each side's leg is a task in its cluster's config channel (`tasks/HOST`, vcnode's format),
which the login node runs with its own identity at its next sync (`vcnode sync`: the timer on
a cloud node; the reconciler runs it at once on the local slurm runtime), and answers in
`tasks/HOST.result` with a checksum manifest of its volume. A local cluster without nodes has
its leg run here, on its directory. Between the two staging areas the runner carries the
data (rclone), unless they are one place.

The order is the cutover of every copy: the bulk pass (stage out, carry, stage in) while the
source is live; the source drained and frozen; a final pass; the two manifests compared;
the target opened. A failure leaves both sides as they were, and the next run copies again:
rclone sends only what differs, on every leg.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from reconciler import datacopy, hostruntime, interrupt
from reconciler.datacopy import CopyError
from reconciler.live import LiveStore
from reconciler.resolve import Unit
from rpi import local_volumes
from rpi.spec import channel_prefix

TASK_LIMIT_S = 24 * 3600
POLL_S = 5.0
# Not --metadata: Debian's rclone 1.60 applies a symbolic link's mode to the file it points to.
# Modes, owners, empty directories and FIFOs are set from the source's manifest instead.
RCLONE_FLAGS = ["--links", "--create-empty-src-dirs", "--exclude", f"/{datacopy.INTERNAL}/**"]


@dataclass(frozen=True)
class Staging:
    """One site's staging area for one volume: as its login node names it, and as the runner does."""

    node: str
    runner: str


def staging(store: LiveStore, unit: Unit, volume: str) -> Staging:
    """Beside the cluster's channel: a directory under the state root on the local platform, a
    prefix of the site's state bucket on a cloud (the node's role may use `staging/` there)."""
    if unit.platform == "local":
        path = str(store.state_root / unit.state.local_dir / "staging" / unit.name / volume)
        return Staging(path, path)
    where = f"{unit.state.bucket}/{channel_prefix(unit.state, unit.name)}/staging/{volume}"
    if unit.state.backend == "gcs":
        runner = local_volumes.remote({"backend": "gcs", "endpoint": unit.state.endpoint})
        return Staging(f":gcs,bucket_policy_only=true:{where}", runner + where)
    region = unit.state.region
    runner = local_volumes.remote({"backend": "s3", "endpoint": unit.state.endpoint, "region": region})
    return Staging(f":s3,env_auth=true,provider=AWS,region='{region}':{where}", runner + where)


def _has_nodes(unit: Unit, store: LiveStore) -> bool:
    from reconciler.run import runs_for_real

    return unit.platform != "local" or runs_for_real(unit, store)


def login_node(unit: Unit, store: LiveStore) -> tuple[str, dict[str, str]]:
    """(the node that runs a cluster's legs, {volume: where its nodes mount it}): from its
    definition, or, for a copy known only from live state, from its nodes' inputs there."""
    if unit.spec is not None:
        return unit.spec.controller, {v.name: v.mount for v in unit.spec.storage if v.mount}
    resources = store.resources(unit)
    ids = {str(a.get("id")): name.removeprefix("storage_") for _, name, a in resources if name.startswith("storage_")}
    for _, name, a in resources:
        facts = a.get("input") if isinstance(a.get("input"), dict) else {}
        if name.startswith("node_") and facts.get("controller"):
            return facts["controller"], {ids.get(str(v), ""): m for m, v in (facts.get("mounts") or {}).items()}
    return "", {}


def _mount(store: LiveStore, unit: Unit, volume: str) -> str:
    mount = login_node(unit, store)[1].get(volume, "")
    if not mount:
        raise CopyError(f"{unit.title} mounts no volume {volume}; the source stays")
    return mount


def leg(store: LiveStore, unit: Unit, op: str, volume: str, where: Staging, directory: Path | None, modes: dict | None = None) -> dict:
    """One leg: on the cluster's login node through its channel, or here on its directory.
    Returns the result: files, bytes, and the manifest of the volume after the leg."""
    if not _has_nodes(unit, store):
        return _here({"op": op, "mount": str(directory), "modes": modes or {}}, directory, where.runner)
    task = {"id": uuid.uuid4().hex, "op": op, "mount": _mount(store, unit, volume), "remote": where.node, "modes": modes or {}}
    host = login_node(unit, store)[0]
    store.channel_put(unit, f"tasks/{host}", json.dumps(task, sort_keys=True).encode())
    if unit.platform == "local":  # the local runtime's nodes have no timer: their sync runs now
        try:
            hostruntime.sync_node(store.state_root, unit.state.local_dir, host, TASK_LIMIT_S)
        except hostruntime.RuntimeFault as exc:
            raise CopyError(f"{unit.title}: {exc}; the source stays") from None
    result: dict = {}

    def unanswered() -> str:
        raw = store.channel_get(unit, f"tasks/{host}.result")
        result.clear()
        result.update(json.loads(raw) if raw else {})
        return "" if result.get("id") == task["id"] else host

    if interrupt.poll(unanswered, TASK_LIMIT_S, POLL_S, lambda _: f"while {host} runs {op} of {volume}: the source stays"):
        raise CopyError(f"{unit.title}: {host} did not run {op} of {volume} within {TASK_LIMIT_S} s; the source stays")
    if not result.get("ok"):
        raise CopyError(f"{unit.title}: {op} of {volume} on {host} failed: {result.get('error', 'no detail')}; the source stays")
    return result


def _here(task: dict, directory: Path | None, remote: str) -> dict:
    """A leg of a local cluster without nodes, run here on its directory by the node package
    (`vcnode stage`): the same leg, restore and manifest as a login node's."""
    if directory is None:
        raise CopyError(f"{task['op']}: no directory for the volume at {task['mount']}; the source stays")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="vcnode-task-") as handle:
        json.dump({**task, "mount": str(directory), "remote": remote}, handle)
        handle.flush()
        return {"ok": True, **json.loads(datacopy.node_package(["stage", handle.name], f"{task['op']} {directory}", TASK_LIMIT_S))}


def _rclone(args: list[str], doing: str) -> None:
    argv = datacopy.rclone_argv(args)
    done = interrupt.run(argv, text=True)
    if done.returncode != 0:
        interrupt.checkpoint("during a staged copy: the source stays")
        raise CopyError(f"rclone could not {doing} ({' '.join(args[-2:])}): {datacopy.rclone_errors(done.stderr)}; the source stays")


def one_pass(store: LiveStore, source: Unit, target: Unit, plan, into, directories: tuple) -> tuple[dict, dict]:
    """Stage out, carry, stage in: the source's and the target's manifests."""
    out_area, in_area = staging(store, source, plan.volume), staging(store, target, plan.volume)
    out = leg(store, source, "stage-out", plan.volume, out_area, directories[0])
    if out_area.runner != in_area.runner:
        _rclone(["sync", *RCLONE_FLAGS, out_area.runner, in_area.runner], "carry the staging area")
    inn = leg(store, target, "stage-in", plan.volume, in_area, directories[1], out["manifest"])
    return out, inn


def copy(p, staged: list, store: LiveStore, set_access, channel_access) -> list[str]:
    """The staged copies of one move, with its cutover; what was copied, one line per volume.
    A failure raises, and the caller opens the source again. The staging areas and the legs'
    tasks are noted as leftovers before they exist: they stay while the copy is pending (the
    next run sends only what differs) and go once the move ends (`apply.sweep`)."""
    source, target = p.selected.unit, p.copy_target
    source_nodes, target_nodes = _has_nodes(source, store), _has_nodes(target, store)
    directory = lambda location: location if isinstance(location, Path) else None  # noqa: E731
    work = [(plan, into, (directory(plan.source), directory(into))) for plan, into in staged]
    for plan, _, _ in work:
        for unit, has_nodes in ((source, source_nodes), (target, target_nodes)):
            note(store, unit, plan.volume, login_node(unit, store)[0] if has_nodes else "", move_of(p))
    if target_nodes and target.platform == "local":
        set_access(store, target, "closed")
    for plan, into, dirs in work:  # the bulk pass, while the source is live
        one_pass(store, source, target, plan, into, dirs)
    interrupt.checkpoint("after the bulk staged copies: the source stays")
    lines = []
    if source_nodes and source.platform == "local":
        set_access(store, source, "drained")  # partitions drained, the nodes' view read-only
    elif source_nodes:
        channel_access(store, source, "frozen")
    for plan, into, dirs in work:
        with datacopy.frozen(dirs[0]) if dirs[0] is not None and not source_nodes else contextlib.nullcontext():
            out, inn = one_pass(store, source, target, plan, into, dirs)
        if out["manifest"] != inn["manifest"]:
            raise CopyError(
                f"{plan.volume}: the staged copy differs from the source ({datacopy.difference(out['manifest'], inn['manifest'])}); the source stays"
            )
        lines.append(
            f"copied {plan.volume} to {target.site} through the login nodes ({out['files']:,} files), verified by checksums, "
            "then destroyed here"
        )
    return lines


def move_of(p) -> dict:
    """The move a leftover belongs to: the state locations of its source and target stacks. It
    is pending while both are applied; once either is gone (the move finished, or was reverted,
    or the cluster removed), what it left goes (apply.sweep)."""
    return {"source": dataclasses.asdict(p.selected.unit.state), "target": dataclasses.asdict(p.copy_target.state)}


def note(store: LiveStore, unit: Unit, volume: str, host: str, move: dict) -> None:
    """A staging area (and the leg's task, on a cluster with nodes), noted in its site's backend."""
    store.note_leftover(unit.state, f"staging-{unit.name}-{volume}", {
        "kind": "staging", "cluster": unit.name, "site": unit.site, "platform": unit.platform, "volume": volume,
        "where": staging(store, unit, volume).runner, "host": host, "move": move,
    })


def remove(store: LiveStore, state, name: str, body: dict) -> None:
    """Remove a noted staging area and its leg's task, then the note. Raises CopyError, and the
    note stays, when the area cannot be removed."""
    area = body["where"]
    if area.startswith("/"):
        shutil.rmtree(area, ignore_errors=True)
        if Path(area).exists():
            raise CopyError(f"the staging area {area} could not be removed")
        for parent in (Path(area).parent, Path(area).parent.parent):  # staging/CLUSTER, staging: when empty
            with contextlib.suppress(OSError):
                parent.rmdir()
    else:
        done = subprocess.run(datacopy.rclone_argv(["purge", "-q", area]), capture_output=True, text=True, timeout=600)
        if done.returncode != 0 and "directory not found" not in done.stderr:
            raise CopyError(f"the staging area {area} could not be removed: {datacopy.rclone_errors(done.stderr)}")
    if body.get("host"):
        blobs, prefix = store.channel_of(body["platform"], state, body["cluster"])
        for key in (f"tasks/{body['host']}", f"tasks/{body['host']}.result"):
            blobs.delete(f"{prefix}/{key}")
    store.clear_leftover(state, name)
