"""Locks: the engine's state lock (who holds a stack, read from the lock information the
engine writes beside the state), and the run lock that keeps two runs in one checkout from
sharing a work directory and its saved plans.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from reconciler.errors import ReconcileError

LOCK_ERROR = "Error acquiring the state lock"
_FIELDS = ("ID", "Path", "Operation", "Who", "Version", "Created", "Info")


@dataclass(frozen=True)
class LockInfo:
    """Terraform's lock information (the same fields in every backend)."""

    id: str
    operation: str
    who: str
    created: str  # as the engine wrote it
    version: str = ""
    path: str = ""

    @classmethod
    def parse_json(cls, raw: bytes | None) -> "LockInfo | None":
        try:
            document = json.loads(raw or b"")
        except ValueError:
            return None
        if not isinstance(document, dict) or not document.get("ID"):
            return None
        return cls(
            str(document["ID"]), str(document.get("Operation", "")), str(document.get("Who", "")),
            str(document.get("Created", "")), str(document.get("Version", "")), str(document.get("Path", "")),
        )

    @classmethod
    def parse_output(cls, text: str) -> "LockInfo | None":
        """The "Lock Info:" block of the engine's error, when the lock object cannot be read."""
        found = dict(re.findall(r"(?m)^\s*(" + "|".join(_FIELDS) + r"):[ \t]*(.*?)\s*$", text.split("Lock Info:", 1)[-1]))
        if not found.get("ID"):
            return None
        return cls(found["ID"], found.get("Operation", ""), found.get("Who", ""), found.get("Created", ""),
                   found.get("Version", ""), found.get("Path", ""))

    @property
    def what(self) -> str:
        """`OperationTypeApply` -> `apply`."""
        return self.operation.removeprefix("OperationType").lower() or "an operation"

    def age(self, now: datetime | None = None) -> str:
        when = _parse_time(self.created)
        if when is None:
            return "of unknown age"
        seconds = int(((now or datetime.now(timezone.utc)) - when).total_seconds())
        return f"for {_duration(max(0, seconds))}"

    def describe(self) -> str:
        engine = f", by Terraform {self.version}" if self.version else ""
        return f"held by {self.who or 'someone'} for {self.what} since {self.created} ({self.age()}{engine}), lock ID {self.id}"


def _parse_time(text: str) -> datetime | None:
    """Terraform writes `2026-12-01T18:00:00.123456789Z` (JSON) or `2026-12-01 18:00:00.1 +0000 UTC` (output)."""
    match = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)", text.strip())
    if not match:
        return None
    return datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}+00:00")


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def released_while_read(text: str) -> bool:
    """The engine failed to take a lock and could not read who holds it: its holder let go
    between the two requests (the engine gives up at once then, whatever its -lock-timeout,
    since it has no lock ID to wait on). Taking the lock again is safe: nothing was done."""
    return LOCK_ERROR in text and LockInfo.parse_output(text) is None


def held_message(title: str, stack_key: str, info: LockInfo | None, where: str, step: str = "planned") -> str:
    """What to say when a stack's state lock is held by someone else; `step`: what did not
    happen to the stack (planned, applied)."""
    if info is None:
        return f"the state of {title} ({where}) is locked by another run, and its lock information cannot be read; nothing was {step} for it"
    return (
        f"the state of {title} ({where}) is locked: {info.describe()}. Nothing was {step} for this stack. "
        f"If that run is still going, wait for it; if it is gone for good (killed, its runner lost): "
        f"reconcile unlock {stack_key} --lock-id {info.id}"
    )


def held_by_a_process(state_file: Path) -> bool:
    """A local state's lock is an fcntl lock on the state file, which Terraform holds while it
    runs and the operating system drops when it ends."""
    try:
        fd = os.open(state_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- one run per work directory


class RunLock:
    """An exclusive lock on a work directory for the length of one run (flock: the operating
    system drops it when the process ends, however it ends)."""

    NAME = "run.lock"

    def __init__(self, work_dir: Path, command: str):
        self.path = work_dir / self.NAME
        self.command = command
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ReconcileError(
                f"another reconcile run is using {self.path.parent}{holder}; nothing was done. Wait for it to finish, "
                f"or give this run a work directory of its own (--work-dir)"
            ) from None
        os.ftruncate(fd, 0)
        now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command, "started": now}).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(holder, dict) or "pid" not in holder:
        return ""
    return f" (pid {holder['pid']}, `reconcile {holder.get('command', '?')}`, started at {holder.get('started', '?')})"

