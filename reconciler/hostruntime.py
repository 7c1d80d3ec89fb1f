"""Whether this machine can run the local platform's `slurm` runtime for the plans at hand.

The node package answers (`vcnode.localhost check`, in a process of its own: the reconciler
never imports it). `plan` only warns, so a pull request's plan job, which runs unprivileged,
still works; `apply` refuses before it creates anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from reconciler import nodepkg
from reconciler.errors import ReconcileError


def needs_runtime(plans, sites) -> list:
    """The pending plans of units on a site whose runtime is `slurm`."""
    def real(p) -> bool:
        unit = p.selected.unit
        site = sites.get(unit.site)
        return getattr(unit.spec, "runtime", "") == "slurm" or (site is not None and site.runtime == "slurm")

    return [p for p in plans if p.pending and real(p)]


def localhost_argv(*args: str) -> list[str]:
    """The command line of the node package's local runtime (`vcnode.localhost`)."""
    return [sys.executable, "-m", "vcnode.localhost", *args]


def localhost_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment it runs in: `base` (default: a PATH with the sbin directories) plus the
    node package on PYTHONPATH and `extra`."""
    env = dict(base) if base is not None else {"PATH": _path()}
    return {**env, "PYTHONPATH": str(nodepkg.source_dir().parent), **extra}


def problem() -> str:
    """Why this host cannot run the slurm runtime, or ""."""
    done = subprocess.run(localhost_argv("check"), capture_output=True, text=True, timeout=30, env=localhost_env())
    return "" if done.returncode == 0 else (done.stderr.strip().removeprefix("local runtime: error: ") or "the check failed")


def health(state_root, nodes: dict[str, dict]) -> dict[str, str]:
    """{address: why} of the nodes (address -> their resource input) that lost a daemon or
    their namespaces; {} when all run, or when this host cannot tell (not root)."""
    env = localhost_env(RECONCILE_STATE_ROOT=str(state_root), VC_INPUT=json.dumps({"nodes": nodes}))
    done = subprocess.run(localhost_argv("health"), capture_output=True, text=True, timeout=60, env=env)
    if done.returncode:
        return {}
    return json.loads(done.stdout or "{}")


def _path() -> str:
    return os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") + ":/usr/sbin:/sbin"


def cluster_access(state_root, site_dir: str, cluster: str, state: str, timeout_s: int) -> None:
    """Open, close or drain a cluster of the slurm runtime (`vcnode.localhost access`): its
    partitions, and its nodes' nologin. Raises RuntimeFault with the runtime's own words."""
    spec = {"site_dir": site_dir, "cluster": cluster, "state": state, "timeout_s": timeout_s}
    env = localhost_env(RECONCILE_STATE_ROOT=str(state_root), VC_INPUT=json.dumps(spec))
    done = subprocess.run(localhost_argv("access"), capture_output=True, text=True, timeout=timeout_s + 120, env=env)
    if done.returncode:
        lines = [line.removeprefix("local runtime: ") for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeFault(f"{cluster} could not be {state}: {lines[-1] if lines else 'no message'}")


def sync_node(state_root, site_dir: str, hostname: str, timeout_s: float = 24 * 3600) -> None:
    """Run one node's `vcnode sync` now (`vcnode.localhost sync`): what a cloud node's timer
    does every minute. Raises RuntimeFault with the runtime's own words."""
    env = localhost_env(RECONCILE_STATE_ROOT=str(state_root), VC_INPUT=json.dumps({"site_dir": site_dir, "hostname": hostname}))
    done = subprocess.run(localhost_argv("sync"), capture_output=True, text=True, timeout=timeout_s + 60, env=env)
    if done.returncode:
        lines = [line.removeprefix("local runtime: ") for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeFault(f"{hostname}: {lines[-1] if lines else 'sync failed'}")


class RuntimeFault(ReconcileError):
    """The local slurm runtime refused or failed."""
