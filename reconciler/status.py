"""`reconcile status`: what each cluster's nodes run, against git.

Layer-1 drift is Terraform's to find; this is drift in layers 2 and 3. Each node reports the
config version it runs to its site's config channel (`nodes/<hostname>.json`), which is read
here, from the site's own store on every platform (a directory under the state root on the
local platform, the state bucket on a cloud), and compared with the version in git; on the
local slurm runtime, Slurm's own view of each node (`sinfo` on the controller) and the
runtime's view of its daemons are added.
"""

from __future__ import annotations

import json
import os
import subprocess

from reconciler import hostruntime
from reconciler.backends import BackendError, NoCredentials
from reconciler.live import LiveStore
from reconciler.resolve import CLUSTER, Unit
from rpi.spec import CHANNEL_CURRENT, channel_node_key


def _channel_json(store: LiveStore, unit: Unit, key: str) -> dict:
    raw = store.channel_get(unit, key)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def node_hostname(resource_type: str, attributes: dict) -> str:
    """The hostname a node resource in a state is, on each platform: the local platform's
    input, an EC2 instance's `vcluster-hostname` tag, a Compute Engine instance's name."""
    if resource_type == "terraform_data":
        facts = attributes.get("input")
        return str(facts.get("hostname") or "") if isinstance(facts, dict) else ""
    if resource_type == "aws_instance":
        return str((attributes.get("tags") or {}).get("vcluster-hostname") or "")
    if resource_type == "google_compute_instance":
        return str(attributes.get("name") or "")
    return ""


def _slurm_view(store: LiveStore, unit: Unit) -> dict[str, str]:
    """{hostname: state (and reason)} from sinfo on the controller; {} when it cannot be asked."""
    done = subprocess.run(
        hostruntime.localhost_argv("enter", unit.state.bucket, unit.spec.controller, "sinfo", "-N", "-h", "-o", "%N|%T|%E"),
        capture_output=True, text=True, timeout=30,
        env=hostruntime.localhost_env(os.environ, RECONCILE_STATE_ROOT=str(store.state_root)),
    )
    if done.returncode:
        return {}
    view = {}
    for line in done.stdout.splitlines():
        host, state, reason = (line.split("|") + ["", ""])[:3]
        state = state.lower()
        explained = reason and reason.lower() != "none" and ("down" in state or "drain" in state)
        view[host] = f"{state}: {reason}" if explained else state
    return view


def cluster_status(store: LiveStore, unit: Unit) -> dict:
    spec = unit.spec
    out = {"cluster": unit.name, "site": unit.site, "platform": unit.platform, "config_in_git": spec.config_version,
           "published": "", "nodes": [], "not_checked": ""}
    try:
        out["published"] = (store.channel_get(unit, CHANNEL_CURRENT) or b"").decode().strip()
    except NoCredentials:
        out["not_checked"] = f"the site's {unit.state.backend} store needs credentials (not read here)"
        return out
    except BackendError as exc:
        out["not_checked"] = f"its config channel cannot be read: {exc}"
        return out
    planned = {h: p.role for p in spec.pools for h in p.hostnames}
    resources = {}
    for t, n, a in store.resources(unit):
        if n.startswith("node_") and (hostname := node_hostname(t, a)):
            resources[hostname] = (f"{t}.{n}", a["input"] if isinstance(a.get("input"), dict) else {})
    real = {h: (address, i) for h, (address, i) in resources.items() if "site_dir" in i}
    slurm = _slurm_view(store, unit) if real and spec.controller in real else {}
    broken = hostruntime.health(store.state_root, {address: i for address, i in real.values()}) if real else {}
    for hostname in sorted(set(planned) | set(resources), key=lambda h: (h != spec.controller, h)):
        report = _channel_json(store, unit, channel_node_key(hostname))
        running = report.get("config_version", "")
        address = resources.get(hostname, ("", {}))[0]
        row = {
            "hostname": hostname,
            "role": planned.get(hostname) or resources[hostname][1].get("role", ""),
            "in_git": hostname in planned,
            "applied": hostname in resources,
            # Slurm learns of a dead slurmd only after SlurmdTimeout: the runtime's view comes first
            "slurm": "down: " + broken[address].split(": ", 1)[-1] if address in broken
            else slurm.get(hostname, "controller" if hostname == spec.controller and slurm else ""),
            "config_version": running,
            "config": "current" if running and running == spec.config_version else ("behind" if running else "not reported"),
            "problem": broken.get(address, ""),
            "sssd": report.get("sssd", ""),
        }
        if hostname not in resources:
            row["config"] = "not created yet"
        out["nodes"].append(row)
    return out


def statuses(store: LiveStore, units: dict[str, Unit], cluster: str | None) -> list[dict]:
    chosen = [u for u in units.values() if u.kind == CLUSTER and (cluster is None or u.name == cluster)]
    return [cluster_status(store, u) for u in sorted(chosen, key=lambda u: u.name)]


def status_text(rows: list[dict]) -> str:
    lines = []
    for c in rows:
        head = f"cluster {c['cluster']} on {c['site']} [{c['platform']}]: config in git {c['config_in_git']}"
        if c["published"] and c["published"] != c["config_in_git"]:
            head += f", published {c['published']} (apply to publish git's)"
        lines.append(head)
        if c["not_checked"]:
            lines += [f"  not checked: {c['not_checked']}", ""]
            continue
        width = max([len(n["hostname"]) for n in c["nodes"]] + [4])
        lines.append(f"  {'NODE'.ljust(width)}  {'ROLE':8} {'SLURM':24} CONFIG")
        for n in c["nodes"]:
            config = f"{n['config_version'] or '-'} ({n['config']})"
            slurm = n["slurm"] or ("-" if not n["applied"] else "n/a")
            line = f"  {n['hostname'].ljust(width)}  {n['role']:8} {slurm:24} {config}"
            if n["problem"]:
                line += f"  PROBLEM: {n['problem']} (the next apply replaces it)"
            lines.append(line)
        sssd = sorted({n["sssd"] for n in c["nodes"] if n["sssd"]})
        if sssd:
            lines.append(f"  sssd: {'; '.join(sssd)}")
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "No clusters.\n")
