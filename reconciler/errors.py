"""Error kinds, exit codes, and a collector so one run reports every problem at once."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


FORMAT_VERSION = 1  # of every --json document (reconciler/output.py is the contract)


class Exit(enum.IntEnum):
    """Process exit codes, shared by every subcommand."""

    OK = 0  # nothing to do, or the operation succeeded
    FAILED = 1  # invalid input or a failed operation
    CHANGES = 2  # changes are pending (dry-run / plan)
    INTERNAL = 3  # a bug: please report it
    INTERRUPTED = 130  # stopped by SIGINT or SIGTERM (128 + SIGINT, the shell's convention)


def printable(text: str) -> str:
    """Text from a definition as one safe line: control and format characters (newlines, ANSI
    escapes, bidirectional overrides) written as escapes, so a key cannot forge a log line or
    recolour a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(frozen=True, order=True)
class Location:
    """A place in a definition file; line and column are 1-based."""

    path: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if not self.line:
            return printable(self.path)
        return f"{printable(self.path)}:{self.line}:{self.column}"


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the definitions, located and actionable."""

    location: Location
    field: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location.path else ""
        what = f"{printable(self.field)}: " if self.field else ""
        text = f"{where}error: {what}{printable(self.message)}"
        return f"{text} ({printable(self.hint)})" if self.hint else text

    def as_dict(self) -> dict:
        return {
            "file": self.location.path,
            "line": self.location.line,
            "column": self.location.column,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
        }


class ReconcileError(Exception):
    """A failure the user can act on; maps to exit code 1."""

    exit_code = Exit.FAILED


class InvalidDefinitions(ReconcileError):
    """The definitions in git do not validate. Carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class GitError(ReconcileError):
    """The repository or a revision cannot be read."""


class EngineError(ReconcileError):
    """Terraform/OpenTofu failed; the message carries the engine's own diagnostics."""


class NotConfirmed(ReconcileError):
    """The user declined an apply."""


@dataclass
class Problems:
    """Collects problems across files so a run reports all of them together."""

    items: list[Problem] = field(default_factory=list)

    def add(self, location: Location, field_path: str, message: str, hint: str = "") -> None:
        self.items.append(Problem(location, field_path, message, hint))

    def extend(self, problems: list[Problem]) -> None:
        self.items.extend(problems)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidDefinitions(self.items)
