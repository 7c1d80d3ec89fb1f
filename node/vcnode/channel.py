"""The config channel: day-to-day config, versioned, in the site's own store.

Layout below a cluster's channel prefix (the same on every platform; the reconciler's
`status` reads it too):

    config/current          the version the nodes should run (text)
    config/<version>.json   {"version": ..., "files": {path: {"content", "mode", "on"}}}
    nodes/<hostname>.json   what a node reports: the version it runs, its role, readiness

`on` says which nodes take a file: "all", or "slurm-clients" for slurm.conf and its siblings,
which configless slurmd nodes fetch from the controller instead (`slurmd --conf-server`).
"""

from __future__ import annotations

import json
import time

CURRENT = "config/current"
ACCESS = "config/access"  # {"state": open | closed | drained | frozen, "serial": ...}: who may use the cluster (a move's cutover)
ACCESS_STATES = ("open", "closed", "drained", "frozen")


def wanted_access(store) -> dict:
    """The access the reconciler asks of a cluster's nodes; open when it asks nothing. A state
    this package does not know is refused, never guessed."""
    raw = store.read(ACCESS)
    wanted = json.loads(raw) if raw else {}
    state = wanted.get("state", "open")
    if state not in ACCESS_STATES:
        raise ValueError(f"access channel: unknown state {state!r}")
    return {"state": state, "serial": str(wanted.get("serial", ""))}


DRAIN = "config/drain"  # {"serial", "hosts", "timeout_s"}: nodes a rolling change replaces next, drained by the controller


def wanted_drain(store) -> dict:
    """The nodes the reconciler asks the controller to drain before it replaces them."""
    raw = store.read(DRAIN)
    wanted = json.loads(raw) if raw else {}
    hosts = wanted.get("hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h and "/" not in h for h in hosts):
        raise ValueError(f"drain channel: not a list of hostnames: {hosts!r}")
    return {"serial": str(wanted.get("serial", "")), "hosts": hosts, "timeout_s": float(wanted.get("timeout_s") or 600)}


def task_key(hostname: str) -> str:
    """Where the reconciler leaves a node its one task (a staged copy's leg): `tasks/HOST`, and
    the node its result: `tasks/HOST.result`. One task at a time per node, named by its id."""
    if not hostname or "/" in hostname:
        raise ValueError(f"not a hostname: {hostname!r}")
    return f"tasks/{hostname}"


def ask_access(store, state: str, serial: str) -> None:
    if state not in ACCESS_STATES:
        raise ValueError(f"not an access state: {state!r}")
    store.write(ACCESS, json.dumps({"state": state, "serial": serial}, sort_keys=True).encode())


def version_key(version: str) -> str:
    if not version or not version.isalnum():
        raise ValueError(f"not a config version: {version!r}")
    return f"config/{version}.json"


def publish(store, version: str, files: dict) -> None:
    """Write a version, then point `current` at it: a node never sees a half-written version."""
    store.write(version_key(version), json.dumps({"version": version, "files": files}, sort_keys=True).encode())
    store.write(CURRENT, version.encode())


def current(store) -> tuple[str, dict]:
    """(version, files) of the config the nodes should run; ("", {}) before the first publish."""
    raw = store.read(CURRENT)
    if not raw:
        return "", {}
    version = raw.decode().strip()
    document = json.loads(store.read(version_key(version)) or b"{}")
    if document.get("version") != version:
        raise RuntimeError(f"config channel: version {version} is named current but not stored")
    return version, document["files"]


def report(store, hostname: str, **facts) -> None:
    facts.update(hostname=hostname, reported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    store.write(f"nodes/{hostname}.json", json.dumps(facts, sort_keys=True).encode())


def forget(store, hostname: str) -> None:
    store.delete(f"nodes/{hostname}.json")
