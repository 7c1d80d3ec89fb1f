"""Can a cluster run on a site, and if not, why not. Checked before anything is synthesized.

For every cluster and each site it may run on (its placement, then its failover sites in
order) the verdict is realizable, with the machine type each node pool resolves to, or refused
with the reasons: a GPU model not offered in the region, a node larger than any type, a
service the platform lacks. Pure but for the local slurm runtime, whose nodes are limited by
this machine (`this_host`).
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.load import Definitions
from reconciler.model import GPU_MEMORY_GB, Cluster, Site
from rpi.catalog import catalog, choose_zone, resolve
from rpi.spec import NodeSpec

PLACEMENT = "placement"


@dataclass(frozen=True)
class PoolFit:
    pool: str
    machine_type: str
    fabric: str
    description: str


@dataclass(frozen=True)
class Verdict:
    cluster: str
    site: str
    platform: str
    region: str
    role: str  # "placement" or "failover N"
    reasons: tuple[str, ...]  # empty when realizable
    fits: tuple[PoolFit, ...]
    emulated: bool = False  # nodes are records only (the local platform's records runtime)
    zone: str = ""  # where the cluster goes on this site: a zone that offers every pool's type

    @property
    def realizable(self) -> bool:
        return not self.reasons

    def fit(self, pool: str) -> PoolFit | None:
        return next((f for f in self.fits if f.pool == pool), None)

    def as_dict(self) -> dict:
        return {
            "cluster": self.cluster,
            "site": self.site,
            "platform": self.platform,
            "region": self.region,
            "role": self.role,
            "realizable": self.realizable,
            "emulated": self.emulated,
            "reasons": list(self.reasons),
            "machine_types": {f.pool: f.machine_type for f in self.fits if f.machine_type},
            "zone": self.zone,
        }


def node_spec(cluster: Cluster, pool: str) -> NodeSpec:
    spec = cluster.node_pools[pool]
    gpu = spec.gpu
    return NodeSpec(
        cores=spec.cores,
        memory_gb=spec.memory_gb,
        gpu_model=gpu.model if gpu else None,
        gpu_count=gpu.count if gpu else 0,
        gpu_memory_gb=GPU_MEMORY_GB[gpu.model] if gpu else 0,
        local_ssd_gb=spec.local_ssd_gb,
    )


# The Slurm that the local slurm runtime runs: Debian 12's slurm-wlm.
SLURM_RUNTIME_VERSION = "22.05"


@dataclass(frozen=True)
class Host:
    """What the machine that runs a local slurm runtime can give one node."""

    cores: int
    memory_gb: float


def this_host() -> Host:
    import os

    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        kb = 0
    return Host(os.cpu_count() or 1, kb / 1024 / 1024)


def _real_runtime_reasons(cluster: Cluster, host: Host | None) -> list[str]:
    """On the slurm runtime every node is a slurmd on this machine: a node larger than the
    machine would register short of its configuration, and slurmd would drain it."""
    reasons = []
    scheduler = cluster.services.scheduler
    if scheduler is not None and scheduler.version != SLURM_RUNTIME_VERSION:
        reasons.append(
            f"services.scheduler.version: the local slurm runtime provides Slurm {SLURM_RUNTIME_VERSION} "
            f"(Debian's slurm-wlm), not {scheduler.version}"
        )
    host = host or this_host()
    for pool, spec in cluster.node_pools.items():
        if spec.gpu:
            reasons.append(f"node_pools.{pool}.gpu: the local slurm runtime has no GPUs")
        if spec.cores > host.cores:
            reasons.append(f"node_pools.{pool}.cores: {spec.cores} cores per node, and this machine has {host.cores}")
        if spec.memory_gb > host.memory_gb:
            reasons.append(
                f"node_pools.{pool}.memory_gb: {spec.memory_gb} GiB per node, and this machine has {host.memory_gb:.1f} GiB"
            )
    return reasons


def check(cluster: Cluster, site: Site, role: str = PLACEMENT, host: Host | None = None) -> Verdict:
    """The verdict for one cluster on one site (`host`: this machine, for a local slurm runtime)."""
    reasons: list[str] = []
    fits: list[PoolFit] = []
    if site.platform == "local" and cluster.network.public_login:
        reasons.append("network.public_login: a local site has no public addresses")
    if site.platform == "aws" and cluster.network.public_login:
        reasons.append(
            "network.public_login: not on aws yet (the nodes live in private subnets); users reach the login "
            "nodes through Session Manager (AWS-StartSSHSession), or from network.allowed_cidrs over the site's network"
        )
    if site.platform == "gcp" and cluster.access.groups and "iam_domain" not in site.labels:
        reasons.append(
            f"access.groups: on gcp, access goes to Cloud Identity groups NAME@DOMAIN and site {site.name} "
            "has no label iam_domain to name the domain (add e.g. `iam_domain: example.org` to its labels)"
        )
    if site.runtime == "slurm":
        reasons += _real_runtime_reasons(cluster, host)
    elif (scheduler := cluster.services.scheduler) is not None and site.services.slurm_versions:
        if scheduler.version not in site.services.slurm_versions:
            reasons.append(
                f"services.scheduler.version: site {site.name} provides Slurm {', '.join(site.services.slurm_versions)} "
                f"(its services.slurm_versions), not {scheduler.version}"
            )
    cat = catalog(site.platform)
    for pool, spec in cluster.node_pools.items():
        if cat is None:  # the local platform emulates any node
            fits.append(PoolFit(pool, "", "", f"{spec.cores} cores, {spec.memory_gb} GiB (emulated)"))
            continue
        match = resolve(cat, site.region, node_spec(cluster, pool))
        if match.machine is None:
            reasons.append(f"node_pools.{pool}{_culprit(match)}: {match.explain()}")
            continue
        fabric = match.machine.fabric if spec.placement == "compact" else ""
        fits.append(PoolFit(pool, match.machine.name, fabric, match.machine.describe()))
    fixed = cluster.placement.zone if role == PLACEMENT else None
    zone = fixed or site.zones[0]
    if cat is not None and not reasons:  # every pool has a type: is there a zone that offers them all?
        zone, why = choose_zone(cat, site.region, tuple(site.zones), {f.pool: f.machine_type for f in fits}, fixed)
        if zone is None:
            reasons.append(f"{'placement.zone' if fixed else 'placement.site'}: {why}")
    emulated = site.platform == "local" and site.runtime == "records"
    return Verdict(cluster.name, site.name, site.platform, site.region, role, tuple(reasons), tuple(fits), emulated,
                   zone or "")


# What a nearest type lacks -> the field of the node spec that asks for it.
_SHORTFALL_FIELDS = (("cores (", ".cores"), ("memory (", ".memory_gb"), ("GPUs (", ".gpu.count"), ("local SSD (", ".local_ssd_gb"))


def _culprit(match) -> str:
    """The one field to point at when no type fits: what the nearest type that misses by a single
    thing lacks (12 H100s where a type has 8: `gpu.count`). The GPU model asked for is taken as
    meant, so a type of another model is no guide; without such a type, the pool itself."""
    if "is not offered in" in match.problem:
        return ".gpu.model"
    for _, short in match.nearest:
        if len(short) == 1:
            for prefix, suffix in _SHORTFALL_FIELDS:
                if short[0].startswith(prefix):
                    return suffix
    return ""


def matrix(defs: Definitions) -> list[Verdict]:
    """Every cluster on its placement site, then on each failover site in order."""
    out = []
    for cluster in defs.clusters.values():
        targets = [(cluster.placement.site, PLACEMENT)]
        targets += [(name, f"failover {i + 1}") for i, name in enumerate(cluster.failover)]
        out += [check(cluster, defs.sites[name], role) for name, role in targets if name in defs.sites]
    return out
