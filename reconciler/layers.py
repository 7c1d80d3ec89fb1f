"""PURE: layers 2 (services) and 3 (user environment) of a vCluster, rendered once.

The result is a cloud-init document that every platform hands to its nodes unchanged (GCP
metadata `user-data`, AWS launch-template user data, the local platform's node inputs). It
depends on the cluster definition only: hostnames, never addresses, and landing-zone services
by stable names that each site's private DNS answers. So moving a cluster to another site or
cloud leaves these bytes identical: only layer 1 changes.
"""

from __future__ import annotations

import io
import json

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import LiteralScalarString

from reconciler.model import GPU_MEMORY_GB, Cluster

SERVICE_DOMAIN = "svc.vcluster.internal"
ENDPOINTS = {
    "ldap": f"ldaps://ldap.{SERVICE_DOMAIN}",
    "keycloak": f"https://keycloak.{SERVICE_DOMAIN}",
    "vault": f"https://vault.{SERVICE_DOMAIN}:8200",
    "consul": f"consul.{SERVICE_DOMAIN}:8501",
    "nomad": f"https://nomad.{SERVICE_DOMAIN}:4646",
    "registry": f"registry.{SERVICE_DOMAIN}",
    "build_cache": f"https://cache.{SERVICE_DOMAIN}/spack",
}


def hostnames(cluster: Cluster, pool: str) -> list[str]:
    return [f"{cluster.name}-{pool}-{i}" for i in range(cluster.node_pools[pool].count)]


def _hostlist(cluster: Cluster, pool: str) -> str:
    count = cluster.node_pools[pool].count
    return f"{cluster.name}-{pool}-[0-{count - 1}]" if count > 1 else f"{cluster.name}-{pool}-0"


def slurm_conf(cluster: Cluster) -> str:
    """slurm.conf derived from the node pools: the same on every platform."""
    scheduler = cluster.services.scheduler
    controllers = [p for p, spec in cluster.node_pools.items() if spec.role == "login" and spec.count] or [
        p for p, spec in cluster.node_pools.items() if spec.count
    ]
    lines = [
        f"# slurm.conf for {cluster.name}, rendered by reconcile from clusters/{cluster.name}.yaml",
        f"ClusterName={cluster.name}",
        f"SlurmctldHost={cluster.name}-{controllers[0]}-0",
        "AuthType=auth/munge",
        "ProctrackType=proctrack/cgroup",
        "TaskPlugin=task/cgroup,task/affinity",
    ]
    if any(spec.gpu for spec in cluster.node_pools.values()):
        lines.append("GresTypes=gpu")
    lines += [f"{key}={_value(value)}" for key, value in sorted(scheduler.settings.items()) if key != "GresTypes"]
    lines.append("")
    for name, spec in cluster.node_pools.items():
        if spec.role != "compute" or not spec.count:
            continue
        gres = f" Gres=gpu:{_gpu_name(spec.gpu.model)}:{spec.gpu.count}" if spec.gpu else ""
        memory_mb = int(spec.memory_gb * 1024 * 0.95)  # leave room for the OS
        lines.append(
            f"NodeName={_hostlist(cluster, name)} CPUs={spec.cores} RealMemory={memory_mb}"
            f" ThreadsPerCore=1{gres} State=UNKNOWN"
        )
    partitions = [n for n, s in cluster.node_pools.items() if s.role == "compute" and s.count]
    for index, name in enumerate(partitions):
        default = "YES" if index == 0 else "NO"
        lines.append(f"PartitionName={name} Nodes={_hostlist(cluster, name)} Default={default} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def gres_conf(cluster: Cluster) -> str:
    lines = []
    for name, spec in cluster.node_pools.items():
        if spec.gpu and spec.count:
            lines.append(
                f"NodeName={_hostlist(cluster, name)} Name=gpu Type={_gpu_name(spec.gpu.model)}"
                f" File=/dev/nvidia[0-{spec.gpu.count - 1}]"
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
    facts = {
        "name": cluster.name,
        "flavor": cluster.flavor,
        "pools": {
            name: {
                "role": spec.role,
                "hostnames": hostnames(cluster, name),
                "cores": spec.cores,
                "memory_gb": spec.memory_gb,
                "gpu": {"model": spec.gpu.model, "count": spec.gpu.count, "memory_gb": GPU_MEMORY_GB[spec.gpu.model]}
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
        "groups": [{"name": g.name, "role": g.role} for g in cluster.access.groups],
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


def user_data(cluster: Cluster) -> str:
    """The cloud-init document for every node of `cluster`."""
    files = [("/etc/vcluster/cluster.json", cluster_facts(cluster)), ("/etc/sssd/sssd.conf", sssd_conf(cluster))]
    if cluster.services.scheduler is not None:
        files.append(("/etc/slurm/slurm.conf", slurm_conf(cluster)))
        if any(spec.gpu for spec in cluster.node_pools.values()):
            files.append(("/etc/slurm/gres.conf", gres_conf(cluster)))
    if cluster.environment.spack is not None:
        files.append((f"/opt/spack/environments/{cluster.name}/spack.yaml", spack_yaml(cluster)))
    if cluster.environment.containers:
        files.append(("/etc/vcluster/containers.txt", "\n".join(cluster.environment.containers) + "\n"))
    document = {
        "write_files": [
            {"path": path, "permissions": "0600" if "sssd" in path else "0644", "content": LiteralScalarString(text)}
            for path, text in files
        ],
        "runcmd": [["/usr/libexec/vcluster/bootstrap", "/etc/vcluster/cluster.json"]],
    }
    return "#cloud-config\n" + _dump(document)


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
