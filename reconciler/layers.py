"""PURE: layers 2 (services) and 3 (user environment) of a vCluster, rendered once.

The result is a cloud-init document that every platform hands to its nodes unchanged (GCP
metadata `user-data`, AWS launch-template user data, the local platform's node inputs). It
depends on the cluster definition only: hostnames, never addresses, and landing-zone services
by stable names that each site's private DNS answers. So moving a cluster to another site or
cloud leaves these bytes identical: only layer 1 changes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json

from ruamel.yaml import YAML

from reconciler import nodepkg
from reconciler.model import GPU_MEMORY_GB, Cluster
from rpi.spec import SERVICE_DOMAIN, SERVICE_PORTS  # the sites' private zones answer these names, on these ports

ENDPOINTS = {
    "ldap": f"ldaps://ldap.{SERVICE_DOMAIN}:{SERVICE_PORTS['ldap']}",
    "keycloak": f"https://keycloak.{SERVICE_DOMAIN}:{SERVICE_PORTS['keycloak']}",
    "vault": f"https://vault.{SERVICE_DOMAIN}:{SERVICE_PORTS['vault']}",
    "consul": f"consul.{SERVICE_DOMAIN}:{SERVICE_PORTS['consul']}",
    "nomad": f"https://nomad.{SERVICE_DOMAIN}:{SERVICE_PORTS['nomad']}",
    "registry": f"registry.{SERVICE_DOMAIN}:{SERVICE_PORTS['registry']}",
    "build_cache": f"https://cache.{SERVICE_DOMAIN}:{SERVICE_PORTS['build_cache']}/spack",
}


def hostnames(cluster: Cluster, pool: str) -> list[str]:
    return [f"{cluster.name}-{pool}-{i}" for i in range(cluster.node_pools[pool].count)]


def controller(cluster: Cluster) -> str:
    """The node that runs slurmctld: the first node of the first login pool (of the first pool
    when there is none). It does not depend on any pool's size."""
    pools = [p for p, spec in cluster.node_pools.items() if spec.role == "login"] or list(cluster.node_pools)
    return f"{cluster.name}-{pools[0]}-0"


# Dynamic nodes register themselves, so slurm.conf names no node and no count: the ceiling is
# what a pool may grow to (NodePool.count).
MAX_NODES_PER_POOL = 1024


def state_save_location(cluster: Cluster) -> str:
    """On the shared filesystem when there is one, so that a new controller keeps every job."""
    if cluster.storage.shared:
        return f"{cluster.storage.shared.mount.rstrip('/')}/.vcluster/slurmctld"
    return "/var/spool/slurmctld/state"


def slurm_conf(cluster: Cluster) -> str:
    """slurm.conf: the same on every platform, and for any number of nodes.

    Nodes are dynamic (`slurmd -Z`, each with its pool as feature); each compute pool is a
    partition over the node set of that feature. slurmd nodes fetch this file from the
    controller (configless), so a new version reaches them with `scontrol reconfigure`."""
    scheduler = cluster.services.scheduler
    compute = [n for n, s in cluster.node_pools.items() if s.role == "compute"]
    base = {
        "ClusterName": cluster.name,
        "SlurmctldHost": controller(cluster),
        "SlurmctldParameters": "enable_configless",
        "AuthType": "auth/munge",
        "SlurmUser": "slurm",
        "ProctrackType": "proctrack/cgroup",
        "TaskPlugin": "task/cgroup,task/affinity",
        "SelectType": "select/cons_tres",
        "StateSaveLocation": state_save_location(cluster),
        "SlurmdSpoolDir": "/var/spool/slurmd",
        "SlurmctldPidFile": "/var/spool/slurmctld/slurmctld.pid",
        "SlurmdPidFile": "/var/spool/slurmd/slurmd.pid",
        "SlurmctldLogFile": "/var/log/slurm/slurmctld.log",
        "SlurmdLogFile": "/var/log/slurm/slurmd.log",
        "MaxNodeCount": MAX_NODES_PER_POOL * max(1, len(compute)),
        "TreeWidth": 65533,  # dynamic nodes: no message forwarding through nodes that may go
        "ReturnToService": 2,
    }
    if any(spec.gpu for spec in cluster.node_pools.values()):
        base["GresTypes"] = "gpu"
    settings = {key: value for key, value in scheduler.settings.items() if key not in ("GresTypes", "ClusterName")}
    lines = [f"# slurm.conf for {cluster.name}, rendered by reconcile from clusters/{cluster.name}.yaml"]
    lines += [f"{key}={_value(value)}" for key, value in base.items() if key not in settings]
    lines += [f"{key}={_value(value)}" for key, value in sorted(settings.items())]
    lines.append("")
    for index, name in enumerate(compute):
        default = "YES" if index == 0 else "NO"
        lines.append(f"NodeSet={name}_nodes Feature={name}")
        lines.append(f"PartitionName={name} Nodes={name}_nodes Default={default} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def cgroup_conf() -> str:
    return "CgroupPlugin=autodetect\nConstrainCores=no\nConstrainRAMSpace=no\n"


def real_memory_mb(memory_gb: int) -> int:
    return int(memory_gb * 1024 * 0.95)  # leave room for the OS


def gres_conf(cluster: Cluster) -> str:
    """One line per GPU type: a node takes the lines its own Gres (from its pool) names."""
    lines = sorted(
        {
            f"Name=gpu Type={_gpu_name(spec.gpu.model)} File=/dev/nvidia[0-{spec.gpu.count - 1}]"
            for spec in cluster.node_pools.values()
            if spec.gpu
        }
    )
    return "\n".join(lines) + "\n"


def spack_yaml(cluster: Cluster) -> str:
    spack = cluster.environment.spack
    document = {
        "spack": {
            "specs": list(spack.specs),
            "view": True,
            "concretizer": {"unify": True},
            "mirrors": {"landing-zone": ENDPOINTS["build_cache"]} if spack.build_cache else {},
        }
    }
    return _dump(document)


def cluster_facts(cluster: Cluster) -> str:
    """What a node needs at first boot: the same for any number of nodes."""
    scheduler = cluster.services.scheduler
    facts = {
        "name": cluster.name,
        "flavor": cluster.flavor,
        "controller": controller(cluster),
        "scheduler": {"kind": scheduler.kind, "version": scheduler.version} if scheduler else None,
        "pools": {
            name: {
                "role": spec.role,
                "cores": spec.cores,
                "memory_gb": spec.memory_gb,
                "real_memory_mb": real_memory_mb(spec.memory_gb),
                "gpu": {
                    "model": spec.gpu.model,
                    "type": _gpu_name(spec.gpu.model),
                    "count": spec.gpu.count,
                    "memory_gb": GPU_MEMORY_GB[spec.gpu.model],
                }
                if spec.gpu
                else None,
                "local_ssd_gb": spec.local_ssd_gb,
            }
            for name, spec in cluster.node_pools.items()
        },
        "storage": {
            "shared": cluster.storage.shared.mount if cluster.storage.shared else None,
            "scratch": cluster.storage.scratch.mount if cluster.storage.scratch else None,
            "buckets": [b.name for b in cluster.storage.object],
        },
        "endpoints": ENDPOINTS,
        "monitoring": cluster.services.monitoring,
    }
    return json.dumps(facts, indent=2, sort_keys=True) + "\n"


def sssd_conf(cluster: Cluster) -> str:
    allowed = ", ".join(g.name for g in cluster.access.groups) or "root"
    return (
        "[sssd]\nservices = nss, pam\ndomains = vcluster\n\n"
        "[domain/vcluster]\nid_provider = ldap\nauth_provider = ldap\n"
        f"ldap_uri = {ENDPOINTS['ldap']}\n"
        "# the search base comes from the directory's rootDSE, so this file is the same at every site\n"
        "access_provider = simple\n"
        f"simple_allow_groups = {allowed}\n"
    )


def config_files(cluster: Cluster) -> dict[str, dict[str, str]]:
    """The day-to-day config, by path on the node: what the config channel carries.

    `on` is "all" or "slurm-clients": configless slurmd nodes take slurm.conf and its siblings
    from the controller instead."""
    files = {
        "/etc/sssd/sssd.conf": (sssd_conf(cluster), "0600", "all"),
        "/etc/vcluster/groups.json": (
            json.dumps([{"name": g.name, "role": g.role} for g in cluster.access.groups], indent=2) + "\n",
            "0644",
            "all",
        ),
    }
    if cluster.services.scheduler is not None:
        files["/etc/slurm/slurm.conf"] = (slurm_conf(cluster), "0644", "slurm-clients")
        files["/etc/slurm/cgroup.conf"] = (cgroup_conf(), "0644", "slurm-clients")
        if any(spec.gpu for spec in cluster.node_pools.values()):
            files["/etc/slurm/gres.conf"] = (gres_conf(cluster), "0644", "slurm-clients")
    if cluster.environment.spack is not None:
        files[f"/opt/spack/environments/{cluster.name}/spack.yaml"] = (spack_yaml(cluster), "0644", "all")
    if cluster.environment.containers:
        files["/etc/vcluster/containers.txt"] = ("\n".join(cluster.environment.containers) + "\n", "0644", "all")
    return {path: {"content": text, "mode": mode, "on": on} for path, (text, mode, on) in sorted(files.items())}


def config_version(files: dict[str, dict[str, str]]) -> str:
    """The version of a day-to-day config: its content hash."""
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def user_data(cluster: Cluster) -> str:
    """The first-boot cloud-init of every node of `cluster`: identical bytes on every platform
    and for any number of nodes. It writes the cluster's facts and the node package and runs
    the bootstrap; everything that changes day to day comes from the config channel.

    JSON after the `#cloud-config` line: cloud-init reads it as YAML, and the node side (the
    local runtime) reads it with the standard library."""
    return user_data_of(cluster_facts(cluster))


def user_data_of(facts: str) -> str:
    """The user data that carries these facts (`cluster_facts`)."""
    return _user_data_template().replace(json.dumps(_FACTS), json.dumps(facts), 1)


_FACTS = "\0the cluster's facts\0"  # no file of the node package holds it: checked below


@functools.cache
def _user_data_template() -> str:
    """The user data with a stand-in for the cluster's facts, the only part that differs between
    clusters: made once a run, not once a cluster (the node package is most of it)."""
    document = {
        "write_files": [
            {"path": "/etc/vcluster/cluster.json", "permissions": "0644", "content": _FACTS},
            *({"path": f"{NODE_PACKAGE_PATH}/{rel}", "permissions": "0644", "content": text} for rel, text in nodepkg.files().items()),
        ],
        "runcmd": [["python3", NODE_PACKAGE_PATH, "bootstrap", "/etc/vcluster/cluster.json"]],
    }
    text = "#cloud-config\n" + json.dumps(document, indent=1, sort_keys=True) + "\n"
    if text.count(json.dumps(_FACTS)) != 1:
        raise AssertionError("the stand-in for the cluster's facts is not unique in the user data")
    return text


NODE_PACKAGE_PATH = "/usr/libexec/vcluster/vcnode.pyz"  # a directory application: python3 runs its __main__.py


def _gpu_name(model: str) -> str:
    return model.removeprefix("nvidia-").split("-")[0]


def _value(value) -> str:
    if isinstance(value, bool):
        return "YES" if value else "NO"
    return str(value)


def _dump(document) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()
