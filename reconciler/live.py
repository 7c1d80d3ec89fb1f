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

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from reconciler import hostruntime
from reconciler.errors import ReconcileError
from reconciler.resolve import Unit
from rpi import local_volumes
from rpi.spec import StateLocation

RECORD_SUFFIX = ".reconcile.json"
BACKUP_SUFFIX = ".backup"  # Terraform's local backend keeps the state it started from here
FILE_MODE, DIRECTORY_MODE = 0o600, 0o700


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
    state_lineage: str = ""  # of the state this apply wrote; "" in records older than the check
    state_serial: int = -1
    resources: int = -1
    interrupted_at: str = ""  # an apply of this stack was stopped by an interrupt at this time
    # Read, never saved: real things behind the stack that are broken ((address, why), e.g. a
    # node of the local slurm runtime whose slurmd is gone). The next apply replaces them.
    unhealthy: tuple[tuple[str, str], ...] = ()

    @property
    def state(self) -> StateLocation:
        return StateLocation(self.state_backend, self.state_bucket, self.state_key)

    @classmethod
    def load(cls, path: Path) -> "LiveRecord":
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ReconcileError(f"the live record {path} cannot be read ({exc}); restore it or remove it") from None


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
    if not raw.strip():
        return f"is empty ({len(raw)} bytes)"
    try:
        document = json.loads(raw)
    except ValueError as exc:
        return f"is not valid JSON ({len(raw)} bytes, {exc.msg} at byte {exc.pos}: truncated?)"
    if not isinstance(document, dict) or not isinstance(document.get("serial"), int) or not document.get("lineage"):
        return "is not a Terraform state (no lineage or serial)"
    return StateHeader(str(document["lineage"]), document["serial"], len(document.get("resources") or []))


class LiveStore:
    """Reads and writes live records for local state; cloud backends answer UNKNOWN for now."""

    def __init__(self, state_root: Path):
        self.state_root = state_root

    def state_file(self, state: StateLocation) -> Path:
        return self.state_root / state.bucket / state.key

    def _record_file(self, state: StateLocation) -> Path:
        return self.state_file(state).with_suffix(RECORD_SUFFIX)

    def check_location(self, state: StateLocation) -> None:
        """A local state path stays below the state root once symlinks are resolved, and is
        neither the root itself nor inside a .git directory."""
        if state.backend != "local":
            return
        root = self.state_root.resolve()
        for path in (self.state_root / state.bucket, self.state_file(state)):
            real = path.resolve()
            if real == root or not real.is_relative_to(root):
                raise StateLocationError(
                    f"{path} resolves to {real}, outside the state root {root}: a symlink must not lead state elsewhere"
                )
            if ".git" in real.relative_to(root).parts:
                raise StateLocationError(f"{path} resolves to {real}, inside a .git directory")

    def read(self, unit: Unit) -> LiveRecord | None | _Unknown:
        if unit.state.backend != "local":
            return UNKNOWN
        record = self._record_file(unit.state)
        if record.is_file():
            loaded = LiveRecord.load(record)
            unhealthy = self._runtime_view(unit)
            return replace(loaded, unhealthy=unhealthy) if unhealthy else loaded
        state = self.state_file(unit.state)
        if state.is_file() and _has_resources(state):
            return _unrecorded(unit)
        return None

    def verify(self, unit: Unit, record: object) -> str | None:
        """Why the stack's state must not be planned over, or None when it can be trusted.

        Checked: the state parses as a Terraform state; if the last apply was recorded, the
        state is still there, has that apply's lineage and is not older than it.
        """
        if unit.state.backend != "local":
            return None
        path = self.state_file(unit.state)
        applied = isinstance(record, LiveRecord) and bool(record.config_hash)
        if not path.exists() and not applied:
            return None  # never applied: there is nothing to trust
        header = read_header(path)
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
        lines = [f"the state of {unit.title} ({path}) {problem}; the last apply{when} recorded it in {self._record_file(unit.state)}."]
        lines.append("Nothing was planned for this stack: a plan over this state would propose to create what already exists.")
        lines += self._restore_advice(unit, path, record if applied else None)
        return "\n".join(lines)

    def _restore_advice(self, unit: Unit, path: Path, record: LiveRecord | None) -> list[str]:
        backup = _backup_of(path)
        header = self._usable_backup(backup, record)
        if isinstance(header, StateHeader):
            behind = ""
            if record is not None and 0 <= header.serial < record.state_serial:
                behind = " It is older than the last recorded apply, so what that apply created is not in it."
            return [
                f"The last good state is in {backup} (serial {header.serial}, {header.resources} resources), which the engine "
                f"kept before its last write. Resources that an interrupted apply created after that are not in it.{behind}",
                f"To restore it: reconcile restore-state {unit.key}   (the damaged file is kept beside it), then plan again.",
            ]
        return [
            f"The engine's backup {backup} {header}.",
            f"Restore {path} from a copy of the site's state directory; if nothing of this stack exists any more, "
            f"remove {path} and {self._record_file(unit.state)} to start it afresh.",
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
            raise ReconcileError(f"{unit.title} keeps its state in {unit.state.backend}: restore an earlier version of the object there")
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
        _write_atomic(path, backup.read_text())
        # An empty configuration hash reads as "live state differs from git": the next plan
        # compares the restored state with the definition and shows what is missing.
        restored = replace(
            record or _unrecorded(unit), config_hash="", state_lineage=header.lineage, state_serial=header.serial, resources=header.resources
        )
        self._save(restored)
        moved = f"; the damaged file is now {kept}" if kept.exists() else ""
        return f"restored {path} from {backup} (serial {header.serial}, {header.resources} resources){moved}"

    def resources(self, unit: Unit) -> list[tuple[str, str, dict]]:
        """(type, name, attributes) of each managed resource in a stack's local state; [] when it
        cannot be read here. Attributes of dynamic type ({"value", "type"}) are unwrapped."""
        if unit.state.backend != "local":
            return []
        return _managed(self.state_file(unit.state))

    def _runtime_view(self, unit: Unit) -> tuple[tuple[str, str], ...]:
        """The local slurm runtime's view of a stack's nodes: which have lost a daemon or their
        namespaces. Asked of the node package's runtime in a process of its own."""
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
        state = self.state_file(unit.state)
        header = read_header(state)
        for written in (state, _backup_of(state)):
            if written.is_file():
                written.chmod(FILE_MODE)
        self._save(_record(unit, unit.config_hash, revision, dirty, applied_at, engine, header if isinstance(header, StateHeader) else None))

    def mark_interrupted(self, unit: Unit, now: str) -> None:
        """An apply was interrupted: its state may hold part of the change. The record says so,
        and the next run plans the stack whatever its configuration hash says."""
        if unit.state.backend != "local":
            return
        current = self.read(unit)
        self._save(replace(current if isinstance(current, LiveRecord) else _unrecorded(unit), interrupted_at=now))

    def _save(self, record: LiveRecord) -> None:
        saved = {k: v for k, v in asdict(record).items() if k != "unhealthy"}
        _write_atomic(self._record_file(record.state), json.dumps(saved, indent=2, sort_keys=True) + "\n")

    def forget(self, unit: Unit) -> None:
        """After a destroy: the stack no longer exists."""
        self._record_file(unit.state).unlink(missing_ok=True)

    # ------------------------------------------------------------ retained volumes

    def volume_path(self, state: StateLocation, volume_id: str) -> Path:
        """The directory of a local-platform volume."""
        return self.state_root / local_volumes.volume_root(state) / volume_id

    def retain(self, unit: Unit, addresses: tuple[str, ...], revision: str | None, now: str) -> list[RetainedVolume]:
        """Record the volumes a stack is about to let go of. Written before the apply that
        forgets them: a record whose volume is still in a stack's state counts as in use, so an
        apply that fails or is killed leaves nothing untracked and nothing doubly owned."""
        if unit.state.backend != "local":
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
                    kind=str(facts.get("kind", "")),
                    size_gb=int(facts.get("size_gb") or 0),
                    retained_at=now,
                    revision=revision,
                    from_stack=unit.stack,
                    path=str(self.volume_path(unit.state, str(found["id"]))) if local else "",
                )
            )
        directory = self.state_root / unit.state.bucket / RETAINED_DIR
        for volume in kept:
            _write_atomic(directory / volume.file_name, json.dumps(asdict(volume), indent=2, sort_keys=True) + "\n")
        return kept

    def in_use(self, state: StateLocation) -> list[VolumeInUse]:
        """Every data volume that a stack's state in one local state directory holds."""
        directory = self.state_root / state.bucket
        found = []
        for state_file in sorted(directory.glob("*.tfstate")) if directory.is_dir() else ():
            for rtype, name, attributes in _managed(state_file):
                rid = str(attributes.get("id") or "")
                if not rid or not name.startswith(_VOLUME_PREFIXES):
                    continue
                facts = attributes.get("input") if isinstance(attributes.get("input"), dict) else {}
                path = self.volume_path(state, rid)
                found.append(
                    VolumeInUse(
                        rid,
                        f"{rtype}.{name}",
                        state_file.stem,
                        str(facts.get("kind", "")),
                        int(facts.get("size_gb") or 0),
                        str(path) if path.is_dir() else "",
                    )
                )
        return found

    def retained(self, state: StateLocation) -> list[RetainedVolume]:
        """The volumes retained in one local state directory that no stack holds again, oldest first."""
        directory = self.state_root / state.bucket / RETAINED_DIR
        if not directory.is_dir():
            return []
        used = {v.id for v in self.in_use(state)}
        known = {f.name for f in fields(RetainedVolume)}
        out = []
        for path in sorted(directory.glob("*.json")):
            try:
                volume = RetainedVolume(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})
            except (ValueError, TypeError, AttributeError) as exc:
                raise ReconcileError(f"the retained-volume record {path} cannot be read ({exc}); restore it or remove it") from None
            if volume.id not in used:
                out.append(volume)
        return sorted(out, key=lambda v: (v.retained_at, v.id))

    def adoptable(self, unit: Unit, addresses: dict[str, str]) -> dict[str, RetainedVolume]:
        """{address: retained volume} for the data volumes of `unit` (`addresses`: address ->
        kind) that its state does not hold and that this cluster left retained on this site:
        the newest such volume of the same platform, name and kind."""
        if unit.state.backend != "local" or not addresses:
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
        for volume_id in volume_ids:
            (self.state_root / state.bucket / RETAINED_DIR / _retained_file(volume_id)).unlink(missing_ok=True)

    def records_under(self, bucket: str) -> list[LiveRecord]:
        """Every record in one local state directory, to find stacks that git no longer names."""
        directory = self.state_root / bucket
        if not directory.is_dir():
            return []
        return [LiveRecord.load(p) for p in sorted(directory.glob(f"*{RECORD_SUFFIX}"))]


RETAINED_DIR = "retained"  # beside the state: one record per volume a move kept
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
    path: str = ""  # the local platform's directory, "" on clouds

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


def _retained_file(volume_id: str) -> str:
    """A retained volume's record, named by its id (ids may hold '/': hashed)."""
    return hashlib.sha256(volume_id.encode()).hexdigest()[:16] + ".json"


def _managed(state_file: Path) -> list[tuple[str, str, dict]]:
    """(type, name, attributes) of each managed resource instance in a state file; [] when it
    cannot be read. Attributes of dynamic type ({"value", "type"}) are unwrapped."""
    try:
        document = json.loads(state_file.read_text())
    except (OSError, ValueError):
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


def _backup_of(state_file: Path) -> Path:
    return state_file.with_name(state_file.name + BACKUP_SUFFIX)


def _unrecorded(unit: Unit) -> LiveRecord:
    """A stack whose state exists but whose apply was never recorded (an interrupted first apply)."""
    return _record(unit, "", None, False, "", "", None)


def _write_atomic(path: Path, text: str) -> None:
    """Write a file that is never seen half-written: a private temporary file, flushed to disk,
    then renamed over the old one, then the directory flushed."""
    path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
        state_lineage=header.lineage if header else "",
        state_serial=header.serial if header else -1,
        resources=header.resources if header else -1,
    )


def _has_resources(state_file: Path) -> bool:
    """True unless the state is readable and empty: an unreadable state is left to `verify`."""
    header = read_header(state_file)
    return not isinstance(header, StateHeader) or header.resources > 0
