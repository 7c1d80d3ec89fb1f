"""ADAPTER over live state: the record of what was last applied to each stack.

The record (revision, configuration hash, time, engine) is kept beside the stack's state, in
the same backend, never only on a runner's disk. Local sites keep it next to the state file;
GCS and S3 sites need credentials, and without them the live state is UNKNOWN.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from reconciler.resolve import Unit
from rpi.spec import StateLocation

RECORD_SUFFIX = ".reconcile.json"


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


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

    @property
    def state(self) -> StateLocation:
        return StateLocation(self.state_backend, self.state_bucket, self.state_key)


class LiveStore:
    """Reads and writes live records for local state; cloud backends answer UNKNOWN for now."""

    def __init__(self, state_root: Path):
        self.state_root = state_root

    def state_file(self, state: StateLocation) -> Path:
        return self.state_root / state.bucket / state.key

    def _record_file(self, state: StateLocation) -> Path:
        return self.state_file(state).with_suffix(RECORD_SUFFIX)

    def read(self, unit: Unit) -> LiveRecord | None | _Unknown:
        if unit.state.backend != "local":
            return UNKNOWN
        record = self._record_file(unit.state)
        if record.is_file():
            return LiveRecord(**json.loads(record.read_text()))
        state = self.state_file(unit.state)
        if state.is_file() and _has_resources(state):
            return _record(unit, "", None, False, "", "")
        return None

    def write(self, unit: Unit, revision: str | None, dirty: bool, applied_at: str, engine: str) -> None:
        path = self._record_file(unit.state)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = _record(unit, unit.config_hash, revision, dirty, applied_at, engine)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    def forget(self, unit: Unit) -> None:
        """After a destroy: the stack no longer exists."""
        self._record_file(unit.state).unlink(missing_ok=True)

    def records_under(self, bucket: str) -> list[LiveRecord]:
        """Every record in one local state directory, to find stacks that git no longer names."""
        directory = self.state_root / bucket
        if not directory.is_dir():
            return []
        return [LiveRecord(**json.loads(p.read_text())) for p in sorted(directory.glob(f"*{RECORD_SUFFIX}"))]


def _record(unit: Unit, config_hash: str, revision, dirty, applied_at, engine) -> LiveRecord:
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
    )


def _has_resources(state_file: Path) -> bool:
    """True unless the state is readable and empty: an unreadable state is left to the engine to report."""
    try:
        return bool(json.loads(state_file.read_text() or "{}").get("resources"))
    except (ValueError, AttributeError):
        return True
