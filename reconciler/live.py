"""ADAPTER over live state: the record of what was last applied to each stack, and the checks
that come before a stack's state is trusted.

The record (revision, configuration hash, time, engine, and the state's lineage and serial at
that apply) is kept beside the stack's state, in the same backend, never only on a runner's
disk. Local sites keep it next to the state file; GCS and S3 sites need credentials, and
without them the live state is UNKNOWN.

State is never trusted blindly: before a stack is planned, its state must parse, belong to
the stack the record names (lineage) and be no older than the last apply (serial). A state
that fails is not planned over: planning it would propose to create everything that exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from concurrent.futures import ThreadPoolExecutor

from reconciler import datacopy, hostruntime
from reconciler.backends import (
    FILE_MODE,
    RECORD_SUFFIX,
    BackendError,
    Backends,
    LocalBlobs,
    NoCredentials,
    Place,
    keys,
    stack_of,
    state_pattern,
    write_atomic,
)
from reconciler.errors import ReconcileError
from reconciler.locks import LockInfo
from rpi import copyroute, local_volumes
from rpi.spec import StateLocation, channel_prefix, local_channel_dir

if TYPE_CHECKING:  # not imported: the records helper (prefetch) reads records without the models
    from reconciler.resolve import Unit

BACKUP_SUFFIX = ".backup"  # Terraform's local backend keeps the state it started from here


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


class StateLocationError(ReconcileError):
    """A local state path that leaves the state root (through `..` or a symlink)."""


@dataclass(frozen=True)
class LiveRecord:
    unit: str
    kind: str
    name: str
    site: str
    platform: str
    stack: str
    config_hash: str  # "" when state exists but no record does (an interrupted apply)
    revision: str | None
    dirty: bool
    applied_at: str
    engine: str
    state_backend: str
    state_bucket: str
    state_key: str
    state_region: str = ""  # s3
    state_endpoint: str = ""  # an S3-compatible store's or a GCS emulator's
    state_lineage: str = ""  # of the state this apply wrote; "" in records older than the check
    state_serial: int = -1
    resources: int = -1
    interrupted_at: str = ""  # an apply of this stack was stopped by an interrupt at this time
    # Read, never saved: real things behind the stack that are broken ((address, why), e.g. a
    # node of the local slurm runtime whose slurmd is gone). The next apply replaces them.
    unhealthy: tuple[tuple[str, str], ...] = ()

    @property
    def state(self) -> StateLocation:
        return StateLocation(self.state_backend, self.state_bucket, self.state_key, self.state_region, self.state_endpoint)

    @classmethod
    def load(cls, path: Path) -> "LiveRecord":
        return cls.parse(path.read_bytes(), str(path))

    @classmethod
    def parse(cls, raw: bytes, where: str) -> "LiveRecord":
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in json.loads(raw).items() if k in known})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ReconcileError(f"the live record {where} cannot be read ({exc}); restore it or remove it") from None


@dataclass(frozen=True)
class StateHeader:
    """What identifies one version of a Terraform state."""

    lineage: str
    serial: int
    resources: int


def read_header(path: Path) -> StateHeader | str:
    """The state's lineage, serial and resource count, or why it is not a usable state."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return parse_header(raw)


def parse_header(raw: bytes | None) -> StateHeader | str:
    if raw is None:
        return "is missing"
    if not raw.strip():
        return f"is empty ({len(raw)} bytes)"
    try:
        document = json.loads(raw)
    except ValueError as exc:
        return f"is not valid JSON ({len(raw)} bytes, {exc.msg} at byte {exc.pos}: truncated?)"
    if not isinstance(document, dict) or not isinstance(document.get("serial"), int) or not document.get("lineage"):
        return "is not a Terraform state (no lineage or serial)"
    return StateHeader(str(document["lineage"]), document["serial"], len(document.get("resources") or []))


READ_CONCURRENCY = 16  # records of remote backends read at once


class LiveStore:
    """Reads and writes live records beside each stack's state, in the stack's own backend:
    a directory below the state root, an S3 bucket or a GCS bucket. A remote backend that
    cannot be reached from here for want of credentials answers UNKNOWN."""

    def __init__(self, state_root: Path):
        self.state_root = state_root
        self.backends = Backends(state_root)

    def state_file(self, state: StateLocation) -> Path:
        """A local stack's state file."""
        return self.state_root / state.bucket / state.key

    def _place(self, state: StateLocation) -> Place:
        return self.backends.place(state)

    def where(self, state: StateLocation, which: str = "state") -> str:
        """The state (or its record or lock) as a path or URL, for messages."""
        if state.backend == "local":
            directory, *names = keys(state)
            return str(self.state_root / state.bucket / dict(zip(("state", "record", "lock"), names))[which])
        place = self._place(state)
        return place.blobs.url(getattr(place, which))

    def lock_info(self, state: StateLocation) -> "LockInfo | None":
        """The engine's lock information for a stack's state, None when it is not locked (or
        the backend cannot be read from here)."""
        try:
            place = self._place(state)
            return LockInfo.parse_json(place.blobs.get(place.lock))
        except (NoCredentials, BackendError):
            return None

    def clear_lock_info(self, state: StateLocation) -> None:
        """A local state's lock information, left by a run that died (the lock itself, the
        operating system's, died with it)."""
        place = self._place(state)
        place.blobs.delete(place.lock)

    def probe(self, state: StateLocation, site: str) -> str | None:
        """Why a remote backend does not answer now, or None (a read of the stack's record)."""
        try:
            place = self._place(state)
            place.blobs.get(place.record)
        except NoCredentials:
            return None
        except BackendError as exc:
            return f"site {site}: the state backend stopped answering: {exc}"
        return None

    def readable(self, state: StateLocation) -> bool:
        """Credentials for this backend are at hand (local state always is)."""
        try:
            self._place(state)
            return True
        except NoCredentials:
            return False

    def check_location(self, state: StateLocation, memo: dict[str, str] | None = None) -> None:
        """A local state path stays below the state root once symlinks are resolved, and is
        neither the root itself nor inside a .git directory."""
        if state.backend != "local":
            return
        root = os.path.realpath(self.state_root)
        directory = self.state_root / state.bucket
        for path in (directory, self.state_file(state)):
            real = self._real(path, directory, {} if memo is None else memo)
            prefix = root.rstrip(os.sep) + os.sep  # "/" too
            inside = real[len(prefix):] if real.startswith(prefix) else None
            if real == root or inside is None:
                raise StateLocationError(
                    f"{path} resolves to {real}, outside the state root {root}: a symlink must not lead state elsewhere"
                )
            if ".git" in inside.split(os.sep):
                raise StateLocationError(f"{path} resolves to {real}, inside a .git directory")

    @staticmethod
    def _real(path: Path, directory: Path, memo: dict[str, str]) -> str:
        """os.path.realpath(path), each site's directory resolved once a check (`memo`): a file
        directly in it that is not a link is that directory's real path and its name (a
        thousand stacks, ten directories)."""
        if path == directory or path.parent != directory or path.name in ("..", "."):
            if str(path) not in memo:
                memo[str(path)] = os.path.realpath(path)
            return memo[str(path)]
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:  # not there yet: what its name resolves to below the directory
            link = False
        if link:
            return os.path.realpath(path)
        return os.path.join(LiveStore._real(directory, directory, memo), path.name)

    @staticmethod
    def known_records(live: dict[str, object]) -> dict:
        """Records read already, by (backend, endpoint, bucket, state key): for records_under."""
        return {(r.state_backend, r.state_endpoint, r.state_bucket, r.state_key): r for r in live.values() if isinstance(r, LiveRecord)}

    def read_all(self, units: dict[str, Unit]) -> dict[str, object]:
        """{unit key: record, None or UNKNOWN}: remote backends are read concurrently."""
        remote = [k for k, u in units.items() if u.state.backend != "local"]
        out = {k: self.read(u) for k, u in units.items() if u.state.backend == "local"}
        if remote:
            with ThreadPoolExecutor(max_workers=min(READ_CONCURRENCY, len(remote)), thread_name_prefix="live") as pool:
                out.update(zip(remote, pool.map(lambda k: self.read(units[k]), remote)))
        return {k: out[k] for k in units}

    def read(self, unit: Unit) -> LiveRecord | None | _Unknown:
        try:
            place = self._place(unit.state)
        except NoCredentials:
            return UNKNOWN
        raw = self._get(unit, place, place.record)
        if raw is not None:
            loaded = LiveRecord.parse(raw, place.blobs.url(place.record))
            unhealthy = self._runtime_view(unit)
            return replace(loaded, unhealthy=unhealthy) if unhealthy else loaded
        header = parse_header(self._get(unit, place, place.state))
        if header != "is missing" and (not isinstance(header, StateHeader) or header.resources > 0):
            return _unrecorded(unit)  # an unreadable state is left to `verify`
        return None

    @staticmethod
    def _get(unit: Unit, place: Place, key: str) -> bytes | None:
        try:
            return place.blobs.get(key)
        except BackendError as exc:
            whose = "" if unit.kind == "site" else f" (cluster {unit.name})"
            raise BackendError(f"site {unit.site}: its state backend failed{whose}: {exc}; nothing was changed") from None

    def verify(self, unit: Unit, record: object) -> str | None:
        """Why the stack's state must not be planned over, or None when it can be trusted.

        Checked: the state parses as a Terraform state; if the last apply was recorded, the
        state is still there, has that apply's lineage and is not older than it.
        """
        if record is UNKNOWN:
            return None
        place = self._place(unit.state)
        raw = self._get(unit, place, place.state)
        applied = isinstance(record, LiveRecord) and bool(record.config_hash)
        if raw is None and not applied:
            return None  # never applied: there is nothing to trust
        header = parse_header(raw)
        problem = None
        if isinstance(header, str):
            problem = header
        elif applied and record.state_lineage and header.lineage != record.state_lineage:
            problem = f"has lineage {header.lineage}, but the last apply wrote lineage {record.state_lineage}: it is another stack's state"
        elif applied and header.serial < record.state_serial:
            problem = f"is older than the last apply (serial {header.serial}, the last apply wrote serial {record.state_serial})"
        if problem is None:
            return None
        when = f" at {record.applied_at}" if applied and record.applied_at else ""
        where, recorded = self.where(unit.state), self.where(unit.state, "record")
        lines = [f"the state of {unit.title} ({where}) {problem}; the last apply{when} recorded it in {recorded}."]
        lines.append("Nothing was planned for this stack: a plan over this state would propose to create what already exists.")
        if unit.state.backend == "local":
            lines += self._restore_advice(unit, self.state_file(unit.state), record if applied else None)
        else:
            lines += self._version_advice(unit, where, record if applied else None)
        return "\n".join(lines)

    def _last_good_version(self, unit: Unit, record: LiveRecord | None):
        """(version, header) of the newest earlier version of a remote state that is a usable
        state of this stack, or (None, why not)."""
        place = self._place(unit.state)
        versions = place.blobs.versions(place.state)
        if not versions:
            return None, "the bucket keeps no earlier version of it (turn object versioning on for state buckets)"
        for version in versions:
            header = parse_header(place.blobs.get_version(place.state, version.id))
            if isinstance(header, StateHeader) and not (record and record.state_lineage and header.lineage != record.state_lineage):
                return version, header
        return None, f"none of its {len(versions)} earlier versions is a usable state of this stack"

    def _version_advice(self, unit: Unit, where: str, record: LiveRecord | None) -> list[str]:
        version, header = self._last_good_version(unit, record)
        if version is None:
            return [f"It cannot be restored from the bucket: {header}. Restore it from a copy, then plan again."]
        behind = _behind(header, record)
        return [
            f"The last good state is the earlier version {version.id} of {where} (written {version.written}, serial "
            f"{header.serial}, {header.resources} resources).{behind}",
            f"To restore it: reconcile restore-state {unit.key}   (the damaged version stays in the bucket's history), then plan again.",
        ]

    def _restore_advice(self, unit: Unit, path: Path, record: LiveRecord | None) -> list[str]:
        backup = _backup_of(path)
        header = self._usable_backup(backup, record)
        if isinstance(header, StateHeader):
            behind = _behind(header, record)
            return [
                f"The last good state is in {backup} (serial {header.serial}, {header.resources} resources), which the engine "
                f"kept before its last write. Resources that an interrupted apply created after that are not in it.{behind}",
                f"To restore it: reconcile restore-state {unit.key}   (the damaged file is kept beside it), then plan again.",
            ]
        return [
            f"The engine's backup {backup} {header}.",
            f"Restore {path} from a copy of the site's state directory; if nothing of this stack exists any more, "
            f"remove {path} and {self.where(unit.state, 'record')} to start it afresh.",
        ]

    @staticmethod
    def _usable_backup(backup: Path, record: LiveRecord | None) -> StateHeader | str:
        header = read_header(backup)
        if isinstance(header, str):
            return "does not exist" if header == "is missing" else header
        if record is not None and record.state_lineage and header.lineage != record.state_lineage:
            return f"holds another stack's state (lineage {header.lineage})"
        return header

    def restore(self, unit: Unit, now: str) -> str:
        """Put the engine's backup back as the stack's state, keep the damaged file beside it,
        and mark the record so the next run plans the stack against the restored state."""
        if unit.state.backend != "local":
            return self._restore_version(unit)
        path = self.state_file(unit.state)
        record = self.read(unit)
        record = record if isinstance(record, LiveRecord) else None
        if self.verify(unit, record) is None:
            raise ReconcileError(f"the state of {unit.title} ({path}) is sound: nothing to restore")
        backup = _backup_of(path)
        header = self._usable_backup(backup, record)
        if isinstance(header, str):
            raise ReconcileError(f"cannot restore {unit.title}: the engine's backup {backup} {header}")
        kept = path.with_name(f"{path.name}.damaged-{now.replace(':', '')}")
        if path.exists():
            os.replace(path, kept)
        write_atomic(path, backup.read_bytes())
        self._save(_restored(unit, record, header))
        moved = f"; the damaged file is now {kept}" if kept.exists() else ""
        return f"restored {path} from {backup} (serial {header.serial}, {header.resources} resources){moved}"

    def _restore_version(self, unit: Unit) -> str:
        where = self.where(unit.state)
        record = self.read(unit)
        record = record if isinstance(record, LiveRecord) else None
        if self.verify(unit, record) is None:
            raise ReconcileError(f"the state of {unit.title} ({where}) is sound: nothing to restore")
        version, header = self._last_good_version(unit, record)
        if version is None:
            raise ReconcileError(f"cannot restore {unit.title}: {header}")
        place = self._place(unit.state)
        place.blobs.restore_version(place.state, version.id)
        self._save(_restored(unit, record, header))
        return f"restored {where} from its version {version.id} (serial {header.serial}, {header.resources} resources)"

    def resources(self, unit: Unit) -> list[tuple[str, str, dict]]:
        """(type, name, attributes) of each managed resource in a stack's state; [] when it
        cannot be read here. Attributes of dynamic type ({"value", "type"}) are unwrapped."""
        try:
            place = self._place(unit.state)
        except NoCredentials:
            return []
        return _managed(self._get(unit, place, place.state))

    def _runtime_view(self, unit: Unit) -> tuple[tuple[str, str], ...]:
        """The local slurm runtime's view of a stack's nodes: which have lost a daemon or their
        namespaces. Asked of the node package's runtime in a process of its own."""
        if unit.platform != "local" or unit.runtime != "slurm":
            return ()  # only real nodes can break behind the state's back (orphans: checked anyway)
        nodes = {
            f"{t}.{n}": a["input"]
            for t, n, a in self.resources(unit)
            if n.startswith("node_") and isinstance(a.get("input"), dict) and "site_dir" in a["input"]
        }
        if not nodes:
            return ()
        return tuple(sorted(hostruntime.health(self.state_root, nodes).items()))

    def resource_ids(self, unit: Unit) -> dict[str, str]:
        """{address: resource id} of a stack's managed resources (local state)."""
        return {f"{t}.{n}": str(a.get("id") or "") for t, n, a in self.resources(unit)}

    def write(self, unit: Unit, revision: str | None, dirty: bool, applied_at: str, engine: str) -> None:
        """Record an apply. Called after the engine has written the state, whose header is kept."""
        place = self._place(unit.state)
        if unit.state.backend == "local":
            state = self.state_file(unit.state)
            for written in (state, _backup_of(state)):
                if written.is_file():
                    written.chmod(FILE_MODE)
        header = parse_header(self._get(unit, place, place.state))
        self._save(_record(unit, unit.config_hash, revision, dirty, applied_at, engine, header if isinstance(header, StateHeader) else None))

    def mark_interrupted(self, unit: Unit, now: str) -> None:
        """An apply was interrupted: its state may hold part of the change. The record says so,
        and the next run plans the stack whatever its configuration hash says."""
        current = self.read(unit)
        if current is UNKNOWN:
            return
        self._save(replace(current if isinstance(current, LiveRecord) else _unrecorded(unit), interrupted_at=now))

    def _save(self, record: LiveRecord) -> None:
        saved = {k: v for k, v in asdict(record).items() if k != "unhealthy"}
        place = self._place(record.state)
        place.blobs.put(place.record, (json.dumps(saved, indent=2, sort_keys=True) + "\n").encode())

    def forget(self, unit: Unit) -> None:
        """After a destroy: the stack no longer exists."""
        place = self._place(unit.state)
        place.blobs.delete(place.record)

    # ------------------------------------------------------------ config channel

    def channel_of(self, platform: str, state: StateLocation, cluster: str) -> tuple[object, str]:
        """(blobs, key prefix) of a cluster's config channel (`rpi.spec`'s layout), where its
        nodes read it: a directory under the state root on the local platform, the site's state
        bucket on a cloud."""
        if platform == "local":
            return LocalBlobs(self.state_root), local_channel_dir(state, cluster)
        return self._place(state).blobs, channel_prefix(state, cluster)

    def channel_get(self, unit: Unit, key: str) -> bytes | None:
        """One object of a cluster's config channel. Raises NoCredentials or BackendError when
        it cannot be read."""
        blobs, prefix = self.channel_of(unit.platform, unit.state, unit.name)
        return blobs.get(f"{prefix}/{key}")

    def channel_put(self, unit: Unit, key: str, data: bytes) -> None:
        """Write one object of a cluster's config channel, where its nodes read it."""
        blobs, prefix = self.channel_of(unit.platform, unit.state, unit.name)
        blobs.put(f"{prefix}/{key}", data)

    def node_reports(self, unit: Unit) -> dict[str, dict]:
        """{hostname: what the node last reported} of a cluster's nodes, from its channel."""
        blobs, prefix = self.channel_of(unit.platform, unit.state, unit.name)
        out = {}
        for key in blobs.names(f"{prefix}/nodes/", "*.json"):
            try:
                report = json.loads(blobs.get(key) or b"{}")
            except ValueError:
                continue
            out[key.rsplit("/", 1)[-1].removesuffix(".json")] = report if isinstance(report, dict) else {}
        return out

    def channel_delete(self, unit: Unit, key: str) -> None:
        blobs, prefix = self.channel_of(unit.platform, unit.state, unit.name)
        blobs.delete(f"{prefix}/{key}")

    def asked_access(self, unit: Unit) -> str:
        """The access state a cluster's channel asks of its nodes: "" where it asks none (open)."""
        raw = self.channel_get(unit, "config/access")
        try:
            asked = json.loads(raw) if raw else {}
        except ValueError:
            return "unreadable"
        return str(asked.get("state") or "") if isinstance(asked, dict) else "unreadable"

    def ask_access(self, unit: Unit, state: str, serial: str) -> None:
        """Ask a cluster's nodes for an access state (the channel's `access`, vcnode.channel's
        format): a node that boots reads it first, a running one at its next sync."""
        self.channel_put(unit, "config/access", json.dumps({"serial": serial, "state": state}, sort_keys=True).encode())

    # ------------------------------------------------------------ retained volumes

    def volume_path(self, state: StateLocation, volume_id: str) -> Path:
        """The directory of a local-platform volume."""
        return self.state_root / local_volumes.volume_root(state) / volume_id

    def volume_location(self, state: StateLocation, volume_id: str, facts: dict | None = None) -> datacopy.Location:
        """Where a local-platform volume is: its directory, or, when its resource's input
        (`facts`) names a store, its bucket there."""
        return datacopy.located(self.volume_path(state, volume_id), facts or {})

    def volumes_of(self, unit: Unit) -> dict[str, datacopy.Location]:
        """{address: location} of the volumes a local stack's state holds."""
        return {
            f"{t}.{n}": self.volume_location(unit.state, str(a["id"]), a.get("input") if isinstance(a.get("input"), dict) else {})
            for t, n, a in self.resources(unit)
            if n.startswith(_VOLUME_PREFIXES) and a.get("id")
        }

    def data_volumes(self, unit: Unit) -> dict:
        """{address: location} of a stack's data volumes on any platform: a local directory or
        bucket (`volumes_of`), or a cloud's (`rpi.copyroute.locate`), from its state."""
        if unit.platform == "local":
            return self.volumes_of(unit)
        return copyroute.locate(unit.platform, self.resources(unit))

    def retain(self, unit: Unit, addresses: tuple[str, ...], revision: str | None, now: str) -> list[RetainedVolume]:
        """Record the volumes a stack is about to let go of. Written before the apply that
        forgets them: a record whose volume is still in a stack's state counts as in use, so an
        apply that fails or is killed leaves nothing untracked and nothing doubly owned."""
        if not self.readable(unit.state):
            return []
        attributes = {f"{t}.{n}": a for t, n, a in self.resources(unit)}
        kept = []
        for address in addresses:
            found = attributes.get(address)
            if not found or not found.get("id"):
                continue
            facts = found.get("input") if isinstance(found.get("input"), dict) else {}
            local = unit.platform == "local"
            kept.append(
                RetainedVolume(
                    id=str(found["id"]),
                    address=address,
                    platform=unit.platform,
                    site=unit.site,
                    cluster=unit.name,
                    volume=volume_name(address),
                    kind=str(facts.get("kind") or ("object" if address.split(".", 1)[0] in copyroute.BUCKET_TYPES else "shared")),
                    size_gb=int(facts.get("size_gb") or 0),
                    retained_at=now,
                    revision=revision,
                    from_stack=unit.stack,
                    path=str(self.volume_location(unit.state, str(found["id"]), facts)) if local else "",
                    store=local_volumes.bucket_store(facts) or {},
                )
            )
        place = self._place(unit.state)
        for volume in kept:
            place.blobs.put(_retained_key(place, volume.id), (json.dumps(asdict(volume), indent=2, sort_keys=True) + "\n").encode())
        return kept

    def in_use(self, state: StateLocation) -> list[VolumeInUse]:
        """Every data volume that a stack's state in one site's state directory holds."""
        place = self._place(state)
        found = []
        for state_key in place.blobs.names(place.directory, state_pattern(state)):
            for rtype, name, attributes in _managed(place.blobs.get(state_key)):
                rid = str(attributes.get("id") or "")
                if not rid or not name.startswith(_VOLUME_PREFIXES):
                    continue
                facts = attributes.get("input") if isinstance(attributes.get("input"), dict) else {}
                path = self.volume_location(state, rid, facts)
                found.append(
                    VolumeInUse(
                        rid,
                        f"{rtype}.{name}",
                        stack_of(state, state_key),
                        str(facts.get("kind", "")),
                        int(facts.get("size_gb") or 0),
                        str(path) if not isinstance(path, Path) or path.is_dir() else "",
                    )
                )
        return found

    def retained(self, state: StateLocation) -> list[RetainedVolume]:
        """The volumes retained in one site's state directory that no stack holds again, oldest first."""
        place = self._place(state)
        names = place.blobs.names(place.directory + RETAINED_DIR + "/", "*.json")
        if not names:
            return []
        used = {v.id for v in self.in_use(state)}
        known = {f.name for f in fields(RetainedVolume)}
        out = []
        for name in names:
            try:
                volume = RetainedVolume(**{k: v for k, v in json.loads(place.blobs.get(name) or b"").items() if k in known})
            except (ValueError, TypeError, AttributeError) as exc:
                raise ReconcileError(
                    f"the retained-volume record {place.blobs.url(name)} cannot be read ({exc}); restore it or remove it"
                ) from None
            if volume.id not in used:
                out.append(volume)
        return sorted(out, key=lambda v: (v.retained_at, v.id))

    def adoptable(self, unit: Unit, addresses: dict[str, str]) -> dict[str, RetainedVolume]:
        """{address: retained volume} for the data volumes of `unit` (`addresses`: address ->
        kind) that its state does not hold and that this cluster left retained on this site:
        the newest such volume of the same platform, name and kind."""
        if not addresses or not self.readable(unit.state):
            return {}
        have = set(self.resource_ids(unit))
        out = {}
        for volume in self.retained(unit.state):
            kind = addresses.get(volume.address)
            if kind is None or volume.address in have or volume.cluster != unit.name or volume.platform != unit.platform:
                continue
            if volume.kind and kind and volume.kind != kind:
                continue
            out[volume.address] = volume  # sorted oldest first: the newest wins
        return out

    def release(self, state: StateLocation, volume_ids: set[str]) -> None:
        """A retained volume is no longer retained: a stack adopted it, or it was destroyed."""
        place = self._place(state)
        for volume_id in volume_ids:
            place.blobs.delete(_retained_key(place, volume_id))

    # ------------------------------------------------------------ leftovers of copies

    def note_leftover(self, state: StateLocation, name: str, body: dict) -> None:
        """Record, before it exists, something a copy leaves in a site until the move ends (a
        staging area, a transfer stack): a run killed or failed midway leaves it listed, and
        a later apply removes it (`apply.sweep`) once its move has ended."""
        place = self._place(state)
        place.blobs.put(f"{place.directory}{LEFTOVERS_DIR}/{name}.json", json.dumps(body, sort_keys=True).encode())

    def leftovers(self, state: StateLocation) -> dict[str, dict]:
        """{name: record} of what copies left in one site's backend, by name."""
        place = self._place(state)
        out = {}
        for key in place.blobs.names(f"{place.directory}{LEFTOVERS_DIR}/", "*.json"):
            try:
                body = json.loads(place.blobs.get(key) or b"")
            except ValueError as exc:
                raise ReconcileError(f"the leftover record {place.blobs.url(key)} cannot be read ({exc}); restore it or remove it") from None
            if isinstance(body, dict) and body.get("cluster") and body.get("kind"):
                out[key.rsplit("/", 1)[-1].removesuffix(".json")] = body
        return dict(sorted(out.items()))

    def unfinished_copy(self, unit: Unit) -> dict | None:
        """The mark of a copy into this stack that has not been verified yet, or None."""
        return next((b for b in self.leftovers(unit.state).values()
                     if b.get("kind") == "unfinished-copy" and b.get("cluster") == unit.name), None)

    def has_record(self, state: StateLocation) -> bool:
        """Whether the stack whose state is at `state` has a live record (it is applied)."""
        place = self._place(state)
        return place.blobs.get(place.record) is not None

    def clear_leftover(self, state: StateLocation, name: str) -> None:
        place = self._place(state)
        key = f"{place.directory}{LEFTOVERS_DIR}/{name}.json"
        place.blobs.delete(key)
        if isinstance(place.blobs, LocalBlobs):  # a directory: gone with its last note
            with contextlib.suppress(OSError):
                (place.blobs.root / key).parent.rmdir()

    def records_under(self, state: StateLocation, known: dict | None = None) -> list[LiveRecord]:
        """Every record in the state directory of `state` (one site's), to find stacks that git
        no longer names; [] where the backend cannot be read from here. `known`: records read
        already, by (backend, endpoint, bucket, state key): not fetched again."""
        try:
            place = self._place(state)
        except NoCredentials:
            return []
        try:
            names = place.blobs.names(place.directory, "*" + RECORD_SUFFIX)
            by_record = {keys(r.state)[2]: r for k, r in (known or {}).items() if k[:3] == (state.backend, state.endpoint, state.bucket)}
            found = [by_record.get(n) or LiveRecord.parse(place.blobs.get(n) or b"", place.blobs.url(n)) for n in names]
        except BackendError as exc:
            raise BackendError(f"listing the live records failed: {exc}; nothing was changed") from None
        # where the record was found is where its stack's state is (records older than the
        # region and endpoint fields name neither)
        return [replace(r, state_region=state.region, state_endpoint=state.endpoint) for r in found]


RETAINED_DIR = "retained"  # beside the state: one record per volume a move kept
LEFTOVERS_DIR = "leftovers"  # beside the state: what a copy left until its move ends
_VOLUME_PREFIXES = ("storage_", "bucket_")  # how platforms name a volume's resource


@dataclass(frozen=True)
class RetainedVolume:
    """A data-holding resource that a stack let go of (storage.on_move: keep) and that still
    exists: kept in the site's live records until a cluster adopts it or a reviewed destroy
    removes it."""

    id: str  # the resource id: what an import block names, and what `storage.<v>.from` takes
    address: str  # type.name in the stack that kept it; a returning cluster's stack uses the same
    platform: str
    site: str
    cluster: str
    volume: str
    kind: str
    size_gb: int
    retained_at: str
    revision: str | None
    from_stack: str
    path: str = ""  # the local platform's directory (or bucket), "" on clouds
    store: dict = field(default_factory=dict)  # a bucket's object store (its resource's input), {} for a directory

    @property
    def file_name(self) -> str:
        return _retained_file(self.id)


@dataclass(frozen=True)
class VolumeInUse:
    id: str
    address: str
    stack: str
    kind: str
    size_gb: int
    path: str = ""


def volume_name(address: str) -> str:
    """`terraform_data.storage_shared` -> `shared`: the volume a data resource is."""
    name = address.rsplit(".", 1)[-1]
    for prefix in _VOLUME_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _retained_key(place: Place, volume_id: str) -> str:
    return f"{place.directory}{RETAINED_DIR}/{_retained_file(volume_id)}"


def _retained_file(volume_id: str) -> str:
    """A retained volume's record, named by its id (ids may hold '/': hashed)."""
    return hashlib.sha256(volume_id.encode()).hexdigest()[:16] + ".json"


def _managed(raw: bytes | None) -> list[tuple[str, str, dict]]:
    """(type, name, attributes) of each managed resource instance in a state; [] when it
    cannot be read. Attributes of dynamic type ({"value", "type"}) are unwrapped."""
    try:
        document = json.loads(raw or b"")
    except ValueError:
        return []
    if not isinstance(document, dict):
        return []
    return [
        (resource["type"], resource["name"], {k: _unwrap(v) for k, v in (instance.get("attributes") or {}).items()})
        for resource in document.get("resources") or []
        if resource.get("mode") == "managed"
        for instance in resource.get("instances") or []
    ]


def _unwrap(value):
    """terraform_data keeps attributes of dynamic type as {"value", "type"}."""
    return value["value"] if isinstance(value, dict) and set(value) == {"value", "type"} else value


def _behind(header: StateHeader, record: LiveRecord | None) -> str:
    """What a restore would miss, when the last good state is older than the last apply."""
    if record is not None and 0 <= header.serial < record.state_serial:
        return " It is older than the last recorded apply, so what that apply created is not in it."
    return ""


def _restored(unit: Unit, record: LiveRecord | None, header: StateHeader) -> LiveRecord:
    """The record after a restore. An empty configuration hash reads as "live state differs
    from git": the next plan compares the restored state with the definition."""
    return replace(
        record or _unrecorded(unit), config_hash="", state_lineage=header.lineage, state_serial=header.serial, resources=header.resources
    )


def _backup_of(state_file: Path) -> Path:
    return state_file.with_name(state_file.name + BACKUP_SUFFIX)


def _unrecorded(unit: Unit) -> LiveRecord:
    """A stack whose state exists but whose apply was never recorded (an interrupted first apply)."""
    return _record(unit, "", None, False, "", "", None)


def _record(unit: Unit, config_hash: str, revision, dirty, applied_at, engine, header: StateHeader | None) -> LiveRecord:
    return LiveRecord(
        unit=unit.key,
        kind=unit.kind,
        name=unit.name,
        site=unit.site,
        platform=unit.platform,
        stack=unit.stack,
        config_hash=config_hash,
        revision=revision,
        dirty=dirty,
        applied_at=applied_at,
        engine=engine,
        state_backend=unit.state.backend,
        state_bucket=unit.state.bucket,
        state_key=unit.state.key,
        state_region=unit.state.region,
        state_endpoint=unit.state.endpoint,
        state_lineage=header.lineage if header else "",
        state_serial=header.serial if header else -1,
        resources=header.resources if header else -1,
    )
