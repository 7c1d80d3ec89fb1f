"""One frozen settings object for a run: paths, engine, revisions, flags."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReconcileError


DEFAULT_PARALLELISM = 4


@dataclass(frozen=True)
class Settings:
    root: Path  # the repository with sites/ and clusters/
    work_dir: Path  # synthesized stacks, plans, caches: .reconcile/ by default (git-ignored)
    state_root: Path  # local sites' state paths are relative to this (default: the repository root)
    engine: str = "auto"  # auto | tofu | terraform | embedded
    base: str | None = None  # None: the merge-base of HEAD with main
    head: str | None = None  # None: the working tree, uncommitted edits included
    output_json: bool = False
    select_all: bool = False
    auto_approve: bool = False
    sites: frozenset[str] = frozenset()  # --site: only these sites' units (and the rest of their change groups)
    units: frozenset[str] = frozenset()  # --unit: only these units (likewise)
    lock_timeout: str = "10s"  # how long the engine waits for a stack's state lock
    lock: bool = True  # False: plans read state without locking it (a read-only identity)
    parallelism: int = DEFAULT_PARALLELISM  # stacks planned, and applied, at once

    @classmethod
    def build(cls, root: str | Path, **overrides) -> "Settings":
        """Settings from a root, environment variables (RECONCILE_*), then explicit overrides."""
        root = Path(root).resolve()
        env = os.environ
        values = dict(
            root=root,
            work_dir=Path(env.get("RECONCILE_WORK_DIR", root / ".reconcile")),
            state_root=Path(env.get("RECONCILE_STATE_ROOT", root)),
            engine=env.get("RECONCILE_ENGINE", "auto"),
            lock_timeout=env.get("RECONCILE_LOCK_TIMEOUT", "10s"),
            parallelism=env.get("RECONCILE_PARALLELISM", DEFAULT_PARALLELISM),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not re.fullmatch(r"\d+(ms|s|m|h)", str(values["lock_timeout"])):
            raise ReconcileError(f"--lock-timeout {values['lock_timeout']}: give a duration such as 0s, 30s or 5m")
        if not re.fullmatch(r"[1-9]\d*", str(values["parallelism"])):
            raise ReconcileError(f"--parallelism {values['parallelism']}: give a whole number of stacks, 1 or more")
        values["parallelism"] = int(values["parallelism"])
        values["work_dir"] = Path(values["work_dir"]).resolve()
        values["state_root"] = Path(values["state_root"]).resolve()
        return cls(**values)


def env_seconds(name: str, default: float) -> float:
    """A duration in seconds from the environment (an operator's knob), else `default`."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        raise ReconcileError(f"{name}={os.environ[name]!r}: give a number of seconds") from None
    return value if value > 0 else default
