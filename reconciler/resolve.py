"""PURE: validated definitions -> units of platform-neutral RPI resources.

A unit is one Terraform stack: a site's landing zone, or one cluster placed on one site. A
cluster unit depends on its site's unit. Each unit carries the files it was made from (for
the reasons it is selected) and a configuration hash (to compare with what was applied).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping

from reconciler import layers, portability, unitcache
from reconciler.errors import Location, Problem, Problems
from reconciler.load import Definitions
from reconciler.model import Cluster, GcsState, LocalState, S3State, Site
from rpi import registry
from rpi.spec import (
    AccessGroup,
    ClusterSpec,
    ComputePool,
    LandingZoneSpec,
    Network,
    NodeSpec,
    ObjectStore,
    Peer,
    Registry,
    SERVICE_PORTS,
    SchedulerSpec,
    Service,
    StateLocation,
    StorageVolume,
    Subnet,
    canonical,
    digest,
    network_name,
)

SITE, CLUSTER = "site", "cluster"


class Deferred:
    """A kept unit's spec, made the first time it is read (`make`), with what the units of a
    run that plans nothing ask of it, known without making it."""

    __slots__ = ("make", "runtime")

    def __init__(self, make, runtime: str):
        self.make, self.runtime = make, runtime


class _SpecField:
    """`Unit.spec`: a spec, None, or a `Deferred` made into its spec when first read (once,
    whichever of the planning threads reads it first)."""

    _making = threading.Lock()

    def __get__(self, unit, owner=None):
        if unit is None:
            raise AttributeError("spec")  # a field without a default
        value = unit.__dict__["_spec"]
        if type(value) is Deferred:
            with self._making:
                value = unit.__dict__["_spec"]
                if type(value) is Deferred:
                    value = unit.__dict__["_spec"] = value.make()
        return value

    def __set__(self, unit, value) -> None:
        unit.__dict__["_spec"] = value


@dataclass(frozen=True)
class Unit:
    """One stack: what it is, where it runs, what it depends on, and what it is made from."""

    kind: str  # site | cluster
    name: str
    site: str
    platform: str
    inputs: tuple[str, ...]  # definition files, the unit's own file first
    depends_on: tuple[str, ...]  # unit keys
    spec: LandingZoneSpec | ClusterSpec | None = _SpecField()  # None: known only from live state (an orphan)
    config_hash: str
    state: StateLocation

    @property
    def key(self) -> str:
        return f"site:{self.site}" if self.kind == SITE else f"cluster:{self.name}@{self.site}"

    @property
    def stack(self) -> str:
        """The stack's name: unique per site, stable across runs and clones."""
        return "landing-zone" if self.kind == SITE else f"cluster-{self.name}"

    @property
    def title(self) -> str:
        return f"site {self.site}" if self.kind == SITE else f"cluster {self.name} on {self.site}"

    @property
    def runtime(self) -> str:
        """The local platform's runtime of the unit's site; an orphan's is not known (slurm:
        whatever real nodes it has are looked at)."""
        value = self.__dict__["_spec"]
        return value.runtime if type(value) is Deferred else getattr(value, "runtime", "slurm")

    def ref(self):
        """What reading its live state needs, in a form that needs none of the models."""
        from reconciler.backends import UnitRef

        return UnitRef(self.kind, self.name, self.site, self.platform, self.stack, self.key, self.title, self.state,
                       self.runtime, self.config_hash)

    @property
    def synthesizable(self) -> bool:
        return registry.implemented(self.platform)


def resolve(defs: Definitions) -> dict[str, Unit]:
    """Every unit of a snapshot, keyed by unit key. Raises InvalidDefinitions (e.g. address space full)."""
    problems = Problems()
    units: dict[str, Unit] = {}
    site_units: dict[str, Unit] = {}  # each site's unit once: every cluster on it reads its services
    for site in defs.sites.values():
        unit = site_units[site.name] = _site_unit(site, defs.site_files[site.name])
        units[unit.key] = unit
    subnets = _allocate_subnets(defs, problems)
    peers = _peers(defs, subnets, problems)
    for name, subnet in subnets.items():
        cluster = defs.clusters[name]
        site = defs.sites[cluster.placement.site]
        unit = _cluster_unit_kept(cluster, site, subnet, peers.get(name, ((), ())), defs, problems, site_units[site.name])
        if unit is not None:
            units[unit.key] = unit
    _check_state_unique(units.values(), defs, problems)
    problems.raise_if_any()
    return dict(sorted(units.items(), key=lambda kv: (kv[1].kind != SITE, kv[0])))


# ---------------------------------------------------------------- state


def state_location(site: Site, stack: str) -> StateLocation:
    state = site.state
    if isinstance(state, LocalState):
        return StateLocation("local", state.directory, f"{stack}.tfstate")
    if isinstance(state, GcsState):
        return StateLocation("gcs", state.bucket, f"{state.directory}/{stack}".lstrip("/"), endpoint=state.endpoint or "")
    assert isinstance(state, S3State)
    return StateLocation(
        "s3", state.bucket, f"{state.directory}/{stack}.tfstate".lstrip("/"), state.region or site.region, state.endpoint or ""
    )


def _object_store(site: Site) -> ObjectStore | None:
    store = site.services.object_store
    if store is None:
        return None
    return ObjectStore(store.backend, store.endpoint or "", store.region or "", store.project or "")


def _check_state_unique(units, defs: Definitions, problems: Problems) -> None:
    """One state location per stack. Sites whose state places differ cannot collide (load
    checks that), so this holds by construction; it is checked because a collision destroys."""
    seen: dict[tuple[str, str, str, str], Unit] = {}
    for unit in units:
        first = seen.setdefault((unit.state.backend, unit.state.endpoint.rstrip("/"), unit.state.bucket, unit.state.key), unit)
        if first is not unit:
            problems.add(
                defs.locate_site(unit.site, ("state",)),
                "state",
                f"{unit.title} and {first.title} would share the state {unit.state.bucket}/{unit.state.key}",
            )


# ---------------------------------------------------------------- landing zones


def _site_unit(site: Site, path: str) -> Unit:
    net = site.network
    gateway, hosts, _ = usable_hosts(site.platform, ipaddress.IPv4Network(net.services_subnet))
    lz = site.services
    control_addresses = tuple(str(next(hosts)) for _ in range(lz.control_nodes.count))
    service_list = [
        Service("ldap", "identity", f"ldaps://{next(hosts)}:{SERVICE_PORTS['ldap']}", (("base_dn", lz.identity.ldap.base_dn),)),
        Service("keycloak", "identity", f"https://{next(hosts)}:{SERVICE_PORTS['keycloak']}", (("realm", lz.identity.keycloak.realm),)),
        Service("store", "secrets", f"https://{next(hosts)}:{SERVICE_PORTS['vault']}", (("provider", lz.secrets.provider),)),
    ]
    service_list += [
        Service(component, "orchestration", f"{next(hosts)}:{SERVICE_PORTS[component]}") for component in lz.orchestration
    ]
    spec = LandingZoneSpec(
        site=site.name,
        platform=site.platform,
        account=site.account,
        region=site.region,
        zones=tuple(site.zones),
        labels=tuple(sorted(site.labels.items())),
        network=Network(
            name=network_name(site.name),
            cidr=net.cidr,
            subnets=(Subnet("services", net.services_subnet, gateway),),
            clusters_range=net.clusters_range,
            egress=net.egress,
            runner_ranges=tuple(net.runner_ranges),
        ),
        control_plane=ComputePool(
            name="control",
            role="service",
            count=lz.control_nodes.count,
            node=NodeSpec(cores=lz.control_nodes.cores, memory_gb=lz.control_nodes.memory_gb),
            placement="spread",
            hostnames=tuple(f"{site.name}-control-{i}" for i in range(lz.control_nodes.count)),
            addresses=control_addresses,
        ),
        services=tuple(service_list),
        registries=tuple(Registry(f"{site.name}-{fmt}", fmt) for fmt in lz.artifact_registries),
        state=state_location(site, "landing-zone"),
        runtime=site.runtime,
        log_retention_days=site.audit.retention_days,
        kubernetes_admins=tuple(site.kubernetes_admins),
    )
    return Unit(SITE, site.name, site.name, site.platform, (path,), (), spec, _hash(spec), spec.state)


# ---------------------------------------------------------------- clusters


def _allocate_subnets(defs: Definitions, problems: Problems) -> dict[str, ipaddress.IPv4Network]:
    """Each cluster gets one subnet of its site's clusters_range, chosen by a hash of its name.

    The slot depends on the cluster's name only (not on which other clusters exist), so adding
    a cluster never renumbers another one; on a collision the later name probes onward.
    """
    allocated: dict[str, ipaddress.IPv4Network] = {}
    for site in defs.sites.values():
        clusters_range = ipaddress.IPv4Network(site.network.clusters_range)
        slots = list(clusters_range.subnets(new_prefix=site.network.cluster_prefix))
        taken: set[int] = set()
        for name in sorted(n for n, c in defs.clusters.items() if c.placement.site == site.name):
            start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(slots)
            for offset in range(len(slots)):
                slot = (start + offset) % len(slots)
                if slot not in taken:
                    taken.add(slot)
                    allocated[name] = slots[slot]
                    break
            else:
                problems.add(
                    Location(defs.cluster_files[name][0], 1, 1),
                    "placement.site",
                    f"site {site.name} has no free subnet left in {clusters_range}",
                    "enlarge network.clusters_range or raise network.cluster_prefix in the site",
                )
    return allocated


def _peers(defs: Definitions, subnets: Mapping[str, ipaddress.IPv4Network], problems: Problems) -> dict:
    """{cluster: (admitted, reaches)}: the clusters of its site that its `network.admit` lets in,
    and those whose `network.admit` lets it in, each with that cluster's subnet. An admitted
    cluster must exist; while it runs on another site (a move, a failover) nothing is opened."""
    admitted: dict[str, list[Peer]] = {}
    reaches: dict[str, list[Peer]] = {}
    for name in sorted(defs.clusters):
        cluster = defs.clusters[name]
        for index, entry in enumerate(cluster.network.admit):
            other = defs.clusters.get(entry.cluster)
            if entry.cluster == name or other is None:
                problems.add(
                    defs.locate(name, ("network", "admit", index, "cluster")),
                    f"network.admit.{index}.cluster",
                    f"cluster {name} admits {entry.cluster}, "
                    + ("itself: a cluster's own nodes always reach each other" if entry.cluster == name
                       else "which no file under clusters/ defines"),
                    "name another cluster of the same site" if entry.cluster == name
                    else f"define cluster {entry.cluster}, or remove the entry",
                )
                continue
            if other.placement.site != cluster.placement.site or name not in subnets or entry.cluster not in subnets:
                continue
            ports = tuple(entry.ports)
            admitted.setdefault(name, []).append(Peer(entry.cluster, str(subnets[entry.cluster]), ports))
            reaches.setdefault(entry.cluster, []).append(Peer(name, str(subnets[name]), ports))
    return {name: (tuple(admitted.get(name, ())), tuple(reaches.get(name, ())))
            for name in admitted.keys() | reaches.keys()}


def placement_problems(cluster: Cluster, site: Site, locate) -> tuple[portability.Verdict, list[Problem]]:
    """Why a cluster cannot run on its placement site, each reason at the field it concerns
    (`locate`: a field path -> where it was written). The loader reports these beside schema
    errors in other files, so one run says everything."""
    verdict = portability.check(cluster, site)
    found = []
    for reason in verdict.reasons:
        field_path, _, why = reason.partition(": ")
        found.append(Problem(
            locate(tuple(field_path.split("."))),
            field_path,
            f"cluster {cluster.name} cannot run on its placement site {site.name} ({site.platform} {site.region}): {why}",
            "change the node spec or place the cluster on another site (see `reconcile portability`)",
        ))
    return verdict, found


def _cluster_unit_kept(
    cluster: Cluster, site: Site, subnet: ipaddress.IPv4Network, peers: tuple, defs: Definitions, problems: Problems,
    site_unit: Unit,
) -> Unit | None:
    """`_cluster_unit`, kept by what it follows from (`unitcache`): resolved again only when
    the cluster's files, its site, its subnet, its peers or the code change."""
    if not unitcache.enabled():
        return _cluster_unit(cluster, site, subnet, peers, defs, problems, site_unit)
    paths = (*defs.cluster_files[cluster.name], defs.site_files[site.name])
    # on the slurm runtime the nodes are this machine's: whether they fit follows from its size too
    host = repr(portability.this_host()).encode() if site.runtime == "slurm" else b""
    key = unitcache.key([cluster.name.encode(), str(subnet).encode(), site_unit.config_hash.encode(),
                         repr(peers).encode(), host, *(path.encode() + b"\0" + defs.files[path] for path in paths)])
    kept = unitcache.read(key, Unit, ClusterSpec)
    if kept is not None and kept[0].kind == CLUSTER and kept[0].name == cluster.name and kept[0].spec is None:
        unit, load_spec = kept

        def make() -> ClusterSpec:
            try:  # its user data kept as the facts it carries: the rest is the same for every cluster
                spec = load_spec()
                return dataclasses.replace(spec, user_data=layers.user_data_of(spec.user_data))
            except ValueError:  # checked, yet not a spec of this code: made again (never trusted)
                again = Problems()
                made = _cluster_unit(cluster, site, subnet, peers, defs, again, site_unit)
                again.raise_if_any()  # a kept unit had none: the same inputs make none
                return made.spec

        return dataclasses.replace(unit, spec=Deferred(make, site.runtime))
    unit = _cluster_unit(cluster, site, subnet, peers, defs, problems, site_unit)
    if unit is not None:
        unitcache.write(key, dataclasses.replace(unit, spec=dataclasses.replace(unit.spec, user_data=layers.cluster_facts(cluster))))
    return unit


def _cluster_unit(
    cluster: Cluster, site: Site, subnet: ipaddress.IPv4Network, peers: tuple, defs: Definitions, problems: Problems,
    site_unit: Unit,
) -> Unit | None:
    gateway, hosts, capacity = usable_hosts(site.platform, subnet)
    needed = sum(p.count for p in cluster.node_pools.values())
    if needed > capacity:
        problems.add(
            Location(defs.cluster_files[cluster.name][0], 1, 1),
            "node_pools",
            f"{needed} nodes do not fit in a /{subnet.prefixlen} subnet ({capacity} addresses)",
            f"lower cluster_prefix of site {site.name}",
        )
        return None
    verdict, refused = placement_problems(cluster, site, lambda path: defs.locate(cluster.name, path))
    if refused:
        problems.extend(refused)
        return None
    pools = []
    for name, pool in cluster.node_pools.items():
        fit = verdict.fit(name)
        pools.append(
            ComputePool(
                name=name,
                role=pool.role,
                count=pool.count,
                node=portability.node_spec(cluster, name),
                placement=pool.placement,
                hostnames=tuple(layers.hostnames(cluster, name)),
                addresses=tuple(str(next(hosts)) for _ in range(pool.count)),
                machine_type=fit.machine_type,
                fabric=fit.fabric,
                generation=pool.generation,
            )
        )
    storage = []
    if cluster.storage.shared:
        shared = cluster.storage.shared
        storage.append(StorageVolume("shared", "shared", shared.size_gb, shared.mount, adopt=shared.from_ or ""))
    if cluster.storage.scratch:
        storage.append(
            StorageVolume("scratch", "scratch", cluster.storage.scratch.size_gb, cluster.storage.scratch.mount)
        )
    store = _object_store(site)
    storage += [
        StorageVolume(b.name, "object", 0, "", adopt=b.from_ or "", store=store, lock_days=b.lock_days or 0,
                      lock_mode=b.lock_mode if b.lock_days else "")
        for b in cluster.storage.object
    ]
    scheduler = cluster.services.scheduler
    env = cluster.environment
    stack = f"cluster-{cluster.name}"
    config = layers.config_files(cluster)
    spec = ClusterSpec(
        name=cluster.name,
        flavor=cluster.flavor,
        site=site.name,
        platform=site.platform,
        region=site.region,
        zone=verdict.zone,
        labels=tuple(sorted({**site.labels, "cluster": cluster.name, "flavor": cluster.flavor}.items())),
        subnet=Subnet(stack, str(subnet), gateway),
        public_login=cluster.network.public_login,
        allowed_cidrs=tuple(cluster.network.allowed_cidrs),
        pools=tuple(pools),
        storage=tuple(storage),
        access=tuple(AccessGroup(g.name, g.role) for g in cluster.access.groups),
        scheduler=SchedulerSpec(
            scheduler.kind, scheduler.version, tuple(sorted((k, str(v)) for k, v in scheduler.settings.items()))
        )
        if scheduler
        else None,
        monitoring=cluster.services.monitoring,
        spack_version=env.spack.version if env.spack else None,
        spack_specs=tuple(env.spack.specs) if env.spack else (),
        containers=tuple(env.containers),
        identity_endpoints=tuple(s for s in site_unit.spec.services if s.kind == "identity"),
        state=state_location(site, stack),
        account=site.account,
        user_data=layers.user_data(cluster),
        health_command=tuple(cluster.health_check.command) if cluster.health_check else (),
        health_url=cluster.health_check.url if cluster.health_check else "",
        health_timeout_s=cluster.health_check.timeout_s if cluster.health_check else 600,
        on_move=cluster.storage.on_move or "",
        copy_via=cluster.storage.copy_via,
        runtime=site.runtime,
        controller=layers.controller(cluster),
        config_version=layers.config_version(config),
        config_files=json.dumps(config, sort_keys=True, separators=(",", ":")),
        drain_timeout_s=scheduler.drain_timeout_s if scheduler else 600,
        roll_batch=scheduler.roll_batch if scheduler else 1,
        package_registries=tuple(r for r in site_unit.spec.registries if r.format in ("rpm", "deb")),
        services_cidr=site.network.services_subnet,
        egress=site.network.egress,
        retention_days=site.audit.retention_days,
        admitted=peers[0],
        reaches=peers[1],
    )
    inputs = (*defs.cluster_files[cluster.name], defs.site_files[site.name])
    return Unit(CLUSTER, cluster.name, site.name, site.platform, inputs, (site_unit.key,), spec, _hash(spec), spec.state)


def usable_hosts(platform: str, subnet: ipaddress.IPv4Network) -> tuple[str, Iterator[str], int]:
    """(gateway, the addresses nodes and services may take in order, how many there are).

    The gateway is the first host address on every platform; the platform's other reserved
    addresses (AWS: .2 and .3) are skipped, so a spec never hands out an address the cloud keeps.
    """
    start, end = registry.reserved_hosts(platform)
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - 1 - end
    free = range(first + start, last + 1)
    return str(ipaddress.IPv4Address(first)), (str(ipaddress.IPv4Address(a)) for a in free), len(free)


def _hash(spec) -> str:
    return digest(canonical(spec), registry.code_digest(spec.platform))


def dependency_order(units: Mapping[str, Unit]) -> list[str]:
    """Unit keys with every unit after the units it depends on (sites, then their clusters)."""
    return sorted(units, key=lambda k: (len(units[k].depends_on), k))
