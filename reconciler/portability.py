"""PURE: can a cluster run on a site, and if not, why not. Checked before anything is synthesized.

For every cluster and each site it may run on (its placement, then its failover sites in
order) the verdict is realizable, with the machine type each node pool resolves to, or refused
with the reasons: a GPU model not offered in the region, a node larger than any type, a
service the platform lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.load import Definitions
from reconciler.model import GPU_MEMORY_GB, Cluster, Site
from rpi.catalog import catalog, resolve
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
            "reasons": list(self.reasons),
            "machine_types": {f.pool: f.machine_type for f in self.fits if f.machine_type},
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


def check(cluster: Cluster, site: Site, role: str = PLACEMENT) -> Verdict:
    """The verdict for one cluster on one site."""
    reasons: list[str] = []
    fits: list[PoolFit] = []
    if site.platform == "local" and cluster.network.public_login:
        reasons.append("network.public_login: a local site has no public addresses")
    if site.platform == "gcp" and cluster.access.groups and "iam_domain" not in site.labels:
        reasons.append(
            f"access.groups: on gcp, access goes to Cloud Identity groups NAME@DOMAIN and site {site.name} "
            "has no label iam_domain to name the domain (add e.g. `iam_domain: example.org` to its labels)"
        )
    cat = catalog(site.platform)
    for pool, spec in cluster.node_pools.items():
        if cat is None:  # the local platform emulates any node
            fits.append(PoolFit(pool, "", "", f"{spec.cores} cores, {spec.memory_gb} GB (emulated)"))
            continue
        match = resolve(cat, site.region, node_spec(cluster, pool))
        if match.machine is None:
            reasons.append(f"node_pools.{pool}: {match.explain()}")
            continue
        fabric = match.machine.fabric if spec.placement == "compact" else ""
        fits.append(PoolFit(pool, match.machine.name, fabric, match.machine.describe()))
    return Verdict(cluster.name, site.name, site.platform, site.region, role, tuple(reasons), tuple(fits))


def matrix(defs: Definitions) -> list[Verdict]:
    """Every cluster on its placement site, then on each failover site in order."""
    out = []
    for cluster in defs.clusters.values():
        targets = [(cluster.placement.site, PLACEMENT)]
        targets += [(name, f"failover {i + 1}") for i, name in enumerate(cluster.failover)]
        out += [check(cluster, defs.sites[name], role) for name, role in targets if name in defs.sites]
    return out
