"""Platform-neutral resource specs: what a landing zone or a vCluster needs, not how.

`reconciler.resolve` derives these from the definitions; each platform turns them into
constructs. They are plain frozen data, so they hash and compare cheaply without Node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Subnet:
    name: str
    cidr: str
    gateway: str


@dataclass(frozen=True)
class Network:
    name: str
    cidr: str
    subnets: tuple[Subnet, ...]
    clusters_range: str = ""  # where the site's cluster subnets are carved: what may reach its services
    egress: str = "nat"  # nat | private: whether nodes reach the internet (through NAT) or private endpoints only
    runner_ranges: tuple[str, ...] = ()  # besides the services subnet, what may reach the control nodes and their API


@dataclass(frozen=True)
class NodeSpec:
    cores: int
    memory_gb: int
    gpu_model: str | None = None
    gpu_count: int = 0
    gpu_memory_gb: int = 0
    local_ssd_gb: int = 0


@dataclass(frozen=True)
class ComputePool:
    name: str
    role: str  # login | compute | service
    count: int
    node: NodeSpec
    placement: str  # spread | compact
    hostnames: tuple[str, ...]
    addresses: tuple[str, ...]
    machine_type: str = ""  # the platform's type from its catalog; "" on local
    fabric: str = ""  # high-speed interconnect the type supports, e.g. "efa" on AWS
    generation: int = 0  # raised to roll the pool on purpose: every node replaced (0: never rolled)


@dataclass(frozen=True)
class ObjectStore:
    """Where a local site's buckets live (services.object_store): an S3- or GCS-compatible store."""

    backend: str  # s3 | gcs
    endpoint: str = ""  # "" for AWS's or Google's own
    region: str = ""  # s3
    project: str = ""  # gcs: the project number buckets are created in

    def describe(self) -> dict:
        """What a bucket's resource records of its store, so that its state alone says where it is."""
        return {"backend": self.backend, "endpoint": self.endpoint, "region": self.region, "project": self.project}


@dataclass(frozen=True)
class StorageVolume:
    name: str
    kind: str  # shared | scratch | object
    size_gb: int  # 0 for object storage: it grows
    mount: str  # "" for object storage
    adopt: str = ""  # storage.<volume>.from: the id of an existing volume this one is (an import)
    store: ObjectStore | None = None  # local platform: the site's object store, for a bucket; None: a directory
    lock_days: int = 0  # a bucket's object lock: objects kept unchanged that long after written (0: none)
    lock_mode: str = ""  # governance | compliance, with lock_days


@dataclass(frozen=True)
class Peer:
    """Another cluster of the site that one cluster's nodes reach, or are reached from (`network.admit`)."""

    cluster: str
    cidr: str  # that cluster's subnet
    ports: tuple[str, ...] = ()  # TCP and UDP ports and ranges ("6817", "60000-61000"); () is every port and protocol


@dataclass(frozen=True)
class AccessGroup:
    name: str
    role: str


@dataclass(frozen=True)
class Service:
    """A landing-zone service (identity, secrets, orchestration): where it answers, how it is set up."""

    name: str
    kind: str
    address: str
    settings: tuple[tuple[str, str], ...] = ()

    def secret_names(self) -> list[str]:
        """The secrets this service keeps in the platform's secret store. Platforms create only
        the containers; the values are put in by whoever bootstraps the service, never in git."""
        names = [SERVICE_SECRETS[self.name]] if self.name in SERVICE_SECRETS else []
        if dict(self.settings).get("provider") == "vault" and "vault-unseal" not in names:
            names.append("vault-unseal")  # a secrets store that is Vault unseals like Vault
        return names


SERVICE_SECRETS = {"ldap": "ldap-admin", "keycloak": "keycloak-admin", "vault": "vault-unseal"}


@dataclass(frozen=True)
class Registry:
    name: str
    format: str  # rpm | deb | container


@dataclass(frozen=True)
class StateLocation:
    """Where a stack's Terraform state lives; local paths are relative to the state root."""

    backend: str  # local | gcs | s3
    bucket: str
    key: str
    region: str = ""
    endpoint: str = ""  # an S3-compatible store (path-style) or a GCS endpoint of its own; "" for the cloud's

    @property
    def local_dir(self) -> str:
        """Where a local-platform site keeps what lives on this machine (volumes, the slurm
        runtime), relative to the state root: beside its state, or for a remote backend a
        directory named after the bucket and prefix."""
        if self.backend == "local":
            return self.bucket
        prefix = self.key.rsplit("/", 1)[0] if "/" in self.key else ""
        return "/".join(part for part in (".reconcile", "sites", self.backend, self.bucket, prefix) if part)


@dataclass(frozen=True)
class LandingZoneSpec:
    site: str
    platform: str
    account: str  # GCP project or AWS account; "" on local
    region: str
    zones: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    network: Network
    control_plane: ComputePool
    services: tuple[Service, ...]
    registries: tuple[Registry, ...]
    state: StateLocation
    runtime: str = "records"  # local platform: records | slurm
    log_retention_days: int = 90  # flow logs and control-plane logs (site audit.retention_days)
    kubernetes_admins: tuple[str, ...] = ()  # aws: IAM roles with EKS cluster-admin access entries


@dataclass(frozen=True)
class SchedulerSpec:
    kind: str
    version: str
    settings: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    flavor: str
    site: str
    platform: str
    region: str
    zone: str
    labels: tuple[tuple[str, str], ...]
    subnet: Subnet
    public_login: bool
    allowed_cidrs: tuple[str, ...]
    pools: tuple[ComputePool, ...]
    storage: tuple[StorageVolume, ...]
    access: tuple[AccessGroup, ...]
    scheduler: SchedulerSpec | None
    monitoring: bool
    spack_version: str | None
    spack_specs: tuple[str, ...]
    containers: tuple[str, ...]
    identity_endpoints: tuple[Service, ...]
    state: StateLocation
    account: str = ""  # GCP project or AWS account; "" on local
    user_data: str = ""  # layers 2 and 3 as cloud-init: the same bytes on every platform
    health_command: tuple[str, ...] = ()  # the cluster's own health probe, if it names one
    health_url: str = ""
    health_timeout_s: int = 600
    on_move: str = ""  # storage.on_move: keep | drop | copy, "" undecided
    copy_via: str = "runner"  # storage.copy_via: runner | nodes (a copy's data passes through the clusters' login nodes only)
    runtime: str = "records"  # local platform: records | slurm
    controller: str = ""  # the hostname that runs slurmctld
    config_version: str = ""  # the day-to-day config's content hash
    config_files: str = ""  # that config as canonical JSON: {path: {content, mode, on}}
    drain_timeout_s: int = 600  # how long a leaving node's jobs may run once drained
    roll_batch: int = 1  # nodes a rolling change replaces at a time
    package_registries: tuple["Registry", ...] = ()  # the site's OS package registries (rpm, deb): where nodes install from
    retention_days: int = 90  # the site's audit.retention_days: how long a bucket keeps the earlier versions of an object
    services_cidr: str = ""  # the site's services subnet: where the nodes reach the landing-zone services
    egress: str = "nat"  # the site's network.egress: nat | private
    admitted: tuple[Peer, ...] = ()  # clusters of the site whose nodes may reach this cluster's (its network.admit)
    reaches: tuple[Peer, ...] = ()  # clusters of the site that admit this cluster's nodes (their network.admit)


# Every site's private DNS zone (Cloud DNS, Route 53 private hosted zone, the local runtime's
# hosts file): the nodes by hostname, the landing-zone services under `svc.`. The same names on
# every platform, so that layers 2 and 3 never change with the site.
PRIVATE_DOMAIN = "vcluster.internal"
SERVICE_DOMAIN = f"svc.{PRIVATE_DOMAIN}"


# The TCP ports on which the nodes reach the landing-zone services, by the names of the
# endpoints that layers 2 and 3 are rendered with (`reconciler.layers.ENDPOINTS` names each
# port, and the sites' service addresses carry them). Every platform opens these, and only
# these, from the cluster subnets to the landing zone. None is 443: on AWS the Kubernetes API's
# interfaces carry the same EKS cluster security group as the nodes the services run on, so a
# service on 443 would open the API to every cluster. DNS needs no rule: the resolvers the nodes
# ask (GCP's metadata server, AWS's Route 53 Resolver) answer outside firewalls and groups.
SERVICE_PORTS = {
    "ldap": 636,  # LDAPS: SSSD
    "keycloak": 8443,
    "vault": 8200,  # the secrets store, whichever provider
    "consul": 8501,  # Consul's HTTPS API
    "nomad": 4646,
    "registry": 5000,  # the site's container registry
    "build_cache": 9443,  # Spack's build cache, over HTTPS
}


def landing_zone_ports() -> dict[int, tuple[str, ...]]:
    """{port: the services that answer on it}, in port order: what a cluster may reach."""
    ports: dict[int, list[str]] = {}
    for name, port in SERVICE_PORTS.items():
        ports.setdefault(port, []).append(name)
    return {port: tuple(names) for port, names in sorted(ports.items())}


def service_port(address: str) -> int:
    """The TCP port a service's address names, or its scheme's (`ldap://h:389`, `https://h`)."""
    match = re.search(r":(\d+)(?:/|$)", address)
    if match:
        return int(match.group(1))
    scheme = address.split("://", 1)[0] if "://" in address else ""
    return {"ldap": 389, "ldaps": 636, "https": 443, "http": 80}.get(scheme, 0)


def service_ip(address: str) -> str:
    """The IPv4 address in a service's address (`ldap://10.0.0.5:389`, `10.0.0.6:8501`)."""
    match = re.search(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", address)
    if match is None:
        raise ValueError(f"no IPv4 address in {address!r}")
    return match.group(1)


def network_name(site: str) -> str:
    """The name of a site's network: its landing zone creates it, cluster stacks look it up by it
    (a cluster stack cannot read another stack's resources)."""
    return f"{site}-vpc"


def canonical(value) -> str:
    """Canonical JSON of a spec: the same text for the same spec on any machine."""
    return json.dumps(dataclasses.asdict(value), sort_keys=True, separators=(",", ":"))


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def terraform_literal(text: str) -> str:
    """`text` as a Terraform string that means exactly `text`.

    Terraform reads `${` and `%{` in every string of its JSON as template syntax; cloud-init
    scripts and config files use both for themselves.
    """
    return text.replace("${", "$${").replace("%{", "%%{")


def local_channel_dir(state: StateLocation, cluster: str) -> str:
    """A local-platform cluster's config channel: a directory relative to the state root,
    whatever backend holds the site's state."""
    return f"{state.local_dir}/channel/{cluster}"


def node_identity(spec: "ClusterSpec", pool: ComputePool, hostname: str) -> str:
    """Which of a cloud cluster's two identities a node runs as: login nodes and the controller
    (which a cluster without a login pool runs on another node) as `login`, the others as
    `node`: only `login` may add the munge key and run a staged copy's legs."""
    return "login" if pool.role == "login" or hostname == spec.controller else "node"


def node_identities(spec: "ClusterSpec") -> tuple[str, ...]:
    """The identities a cluster's nodes need: `node` always, `login` where a node runs as it."""
    logins = any(node_identity(spec, p, h) == "login" for p in spec.pools for h in p.hostnames)
    return ("node", "login") if logins else ("node",)


def channel_prefix(state: StateLocation, cluster: str) -> str:
    """Where a cluster's config channel lives in its site's store: beside the state. Local: a
    directory relative to the state root; GCS and S3: an object prefix in the state bucket."""
    if state.backend == "local":
        return local_channel_dir(state, cluster)
    directory = state.key.rsplit("/", 1)[0] if "/" in state.key else ""
    return "/".join(part for part in (directory, "channel", cluster) if part)


# The config channel's layout below a cluster's prefix, for what publishes it (the clouds'
# stacks; the local runtime through the node package) and what reads it (`reconcile status`).
# The node package's `vcnode.channel` is the nodes' half; the reconciler never imports it, and
# a test holds the two together.
CHANNEL_CURRENT = "config/current"


def channel_version_key(version: str) -> str:
    return f"config/{version}.json"


def channel_node_key(hostname: str) -> str:
    return f"nodes/{hostname}.json"


def channel_objects(spec: "ClusterSpec") -> list[tuple[str, str, str, str]]:
    """The objects a cloud publishes for a cluster's config channel, version first:
    (construct id, object name, content, content type): the version, then `current` naming it."""
    prefix = channel_prefix(spec.state, spec.name)
    document = json.dumps({"version": spec.config_version, "files": json.loads(spec.config_files or "{}")}, sort_keys=True)
    return [
        ("channel_config", f"{prefix}/{channel_version_key(spec.config_version)}", terraform_literal(document), "application/json"),
        ("channel_current", f"{prefix}/{CHANNEL_CURRENT}", spec.config_version, "text/plain"),
    ]
