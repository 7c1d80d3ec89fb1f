"""A real cluster on this machine: the time from `apply` until every node of the example
`laptop` cluster (site local-slurm, runtime slurm) is idle, and the time to destroy it.

Runs in a temporary git repository holding this repository's definitions, with the embedded
engine, as root with Debian's slurm-wlm and munge. Target: under 20 s to idle on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reconciler import hostruntime
from reconciler.cli import main

ROOT = Path(__file__).resolve().parent.parent
SITE_DIR = ".reconcile/state/local-slurm"


def reconcile(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return int(main(list(argv)))


def idle(repo: Path) -> bool:
    done = subprocess.run(
        hostruntime.localhost_argv("enter", SITE_DIR, "laptop-login-0", "sinfo", "-h", "-N", "-o", "%t"),
        capture_output=True, text=True, cwd=repo, timeout=30,
        env=hostruntime.localhost_env(os.environ, RECONCILE_STATE_ROOT=str(repo)),
    )
    states = done.stdout.split()
    return len(states) == 3 and set(states) == {"idle"}


def main_bench() -> int:
    why = hostruntime.problem()
    if why:
        print(f"real cluster: not measured here ({why})")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        for name in ("sites", "clusters", "schema"):
            shutil.copytree(ROOT / name, repo / name)
        env = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
               "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}
        for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "definitions"]):
            subprocess.run(["git", *command], cwd=repo, check=True, env={**os.environ, **env})
        common = ("--repo", str(repo), "--engine", "embedded", "--site", "local-slurm", "--auto-approve")
        started = time.monotonic()
        code = reconcile("apply", *common)
        deadline = time.monotonic() + 120
        while code == 0 and not idle(repo) and time.monotonic() < deadline:
            time.sleep(0.2)
        to_idle = time.monotonic() - started
        ok = code == 0 and idle(repo)
        for rel in ("clusters/laptop.yaml", "sites/local-slurm.yaml"):
            (repo / rel).unlink()
        started = time.monotonic()
        gone = reconcile("apply", *common, "--allow-destroy", "--allow-data-loss")
        destroy = time.monotonic() - started
    if not ok:
        print(f"real cluster: apply exited {code}, nodes not idle after {to_idle:.1f} s")
        return 1
    print(f"real cluster (laptop: 1 login + 3 compute nodes, embedded engine, {os.cpu_count()} cores)")
    print(f"  apply until every node is idle   {to_idle:6.1f} s   (target < 20 s)")
    print(f"  destroy, nothing left            {destroy:6.1f} s   (exit {gone})")
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
