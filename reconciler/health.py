"""ADAPTER: health checks that gate a move. The source copy of a cluster is destroyed only
after the target copy passes.

Every platform: the stack's outputs must exist and agree with the definition (node names and
counts, login addresses). Then the cluster's own probe, or its flavor's default on a cloud:
a command run on the runner, or an HTTP endpoint. The local platform has no real nodes to
reach, so by default it checks outputs only; a probe the definition names still runs.

A probe from a definition is shown in the plan whenever it is new or changed, and runs with a
scrubbed environment (no tokens, no cloud credentials), in a scratch directory, in its own
process group, and is killed at its timeout.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from reconciler.model import HealthCheck
from rpi.spec import ClusterSpec

SSH = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "{login}"]
FLAVOR_DEFAULTS = {
    "minimal": HealthCheck(command=[*SSH, "true"]),
    "gpu": HealthCheck(command=[*SSH, "nvidia-smi", "-L"]),
    "slurm": HealthCheck(command=[*SSH, "sinfo", "--noheader"]),
    "application": HealthCheck(command=[*SSH, "sinfo", "--noheader"]),
}
RETRY_SECONDS = 10


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


def probe_for(spec: ClusterSpec) -> HealthCheck | None:
    """The cluster's own probe, else its flavor's default on a cloud; none on local by default."""
    if spec.health_command or spec.health_url:
        return HealthCheck(command=list(spec.health_command), url=spec.health_url, timeout_s=spec.health_timeout_s)
    return None if spec.platform == "local" else FLAVOR_DEFAULTS[spec.flavor]


def check_outputs(spec: ClusterSpec, outputs: dict) -> list[str]:
    """Differences between a cluster stack's outputs and its definition."""
    problems = []
    expected_nodes = {p.name: list(p.hostnames) for p in spec.pools}
    expected_logins = [a for p in spec.pools if p.role == "login" for a in p.addresses]
    actual = {name: entry.get("value") for name, entry in outputs.items()}
    for name, expected in (("node_count", sum(p.count for p in spec.pools)), ("nodes", expected_nodes), ("login_addresses", expected_logins)):
        if name not in actual:
            problems.append(f"output {name} is missing")
        elif actual[name] != expected:
            problems.append(f"output {name} is {actual[name]!r}, the definition says {expected!r}")
    return problems


def check(spec: ClusterSpec, outputs: dict, sleep=time.sleep) -> Health:
    """Outputs first, then the probe, retried until it passes or its timeout runs out."""
    problems = check_outputs(spec, outputs)
    if problems:
        return Health(False, "; ".join(problems))
    probe = probe_for(spec)
    if probe is None or not (probe.command or probe.url):
        return Health(True, "outputs agree with the definition")
    logins = (outputs.get("login_addresses") or {}).get("value") or [""]
    trusted = not (spec.health_command or spec.health_url)  # a flavor default is our own code
    deadline = time.monotonic() + probe.timeout_s
    while True:
        ok, detail = _run(probe, logins[0], max(1, int(deadline - time.monotonic())), trusted)
        if ok or time.monotonic() + RETRY_SECONDS > deadline:
            return Health(ok, detail)
        sleep(RETRY_SECONDS)


def describe(spec: ClusterSpec) -> str:
    """The cluster's own probe as a reviewer reads it; "" when it names none."""
    if spec.health_command:
        return "command: " + shlex.join(spec.health_command)
    return f"url: {spec.health_url}" if spec.health_url else ""


def probe_environment(login: str, trusted: bool, environ=None) -> dict[str, str]:
    """What a probe's process sees: a search path, a home and the login address, nothing else.
    No GitHub token and no cloud credentials reach a command that a definition wrote; only the
    built-in defaults (ssh to the login node) also get the SSH agent."""
    environ = os.environ if environ is None else environ
    env = {
        "PATH": environ.get("PATH") or os.defpath,
        "HOME": environ.get("HOME") or "/",
        "LANG": "C.UTF-8",
        "RECONCILE_LOGIN": login,
    }
    if trusted and environ.get("SSH_AUTH_SOCK"):
        env["SSH_AUTH_SOCK"] = environ["SSH_AUTH_SOCK"]
    return env


def _run(probe: HealthCheck, login: str, timeout: int, trusted: bool = False) -> tuple[bool, str]:
    if probe.command:
        argv = [part.replace("{login}", login) for part in probe.command]
        with tempfile.TemporaryDirectory(prefix="reconcile-probe-") as scratch:
            try:  # its own session, so a timeout stops the whole process group, children included
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env=probe_environment(login, trusted), cwd=scratch, start_new_session=True,
                )
            except OSError as exc:
                return False, f"{shlex.join(argv)}: {exc}"
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return False, f"{shlex.join(argv)}: no answer within {timeout} s"
        tail = (err or out).strip().splitlines()[-1:] or [""]
        return process.returncode == 0, f"{shlex.join(argv)} exited {process.returncode} {tail[0]}".strip()
    url = probe.url.replace("{login}", login)
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, 30)) as response:
            return 200 <= response.status < 300, f"GET {url}: {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"GET {url}: {exc}"
