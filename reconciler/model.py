"""Typed definitions: a Site (one landing zone) and a Cluster (one vCluster).

These are the validated shapes. Files are partial documents (a cluster composes profiles),
so `load.py` merges them first and validates the result here. Unknown keys are refused and
nothing is coerced silently (`strict`): `cores: "48"` is an error, not 48.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, Union

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator, model_validator,
)

NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-', 1-40 characters")]


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"not an IPv4 network in CIDR notation such as 10.10.0.0/16 ({exc})") from None


Cidr = Annotated[str, AfterValidator(_cidr), Field(description="IPv4 network, e.g. 10.10.0.0/16")]

VOLUME_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$"
ZONE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
# A label key every platform takes (Google Cloud's rule, the strictest; lower case is applied there).
LABEL_KEY_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
LABEL_VALUE_PATTERN = r"^[^\x00-\x1f\x7f]{0,255}$"
REGION_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
ACCOUNT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$|^$"
MOUNT_PATTERN = r"^/[A-Za-z0-9._/-]{0,255}$"
SLURM_KEY_PATTERN = r"^[A-Za-z][A-Za-z0-9]{0,63}$"
SLURM_VALUE_PATTERN = r"^[^\x00-\x1f\x7f#]{0,1024}$"
PORT_PATTERN = r"^[0-9]{1,5}(-[0-9]{1,5})?$"
IAM_ROLE_PATTERN = r"^arn:aws(-[a-z]+)*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"
DN_PATTERN = r"^[A-Za-z][A-Za-z0-9-]*=[^,=+\x00-\x1f\x7f]+(,[A-Za-z][A-Za-z0-9-]*=[^,=+\x00-\x1f\x7f]+)*$"
# What each pattern means, for messages that name no regular expression.
PATTERN_WORDS = {
    NAME_PATTERN: "a name of lower-case letters, digits and '-', 1-40 characters, starting with a letter and not ending in '-'",
    VOLUME_ID_PATTERN: "a volume id, as `reconcile volumes` lists it, or the cloud's resource id",
    ZONE_PATTERN: "a zone name of lower-case letters, digits and '-', at most 63 characters (e.g. europe-west4-a)",
    LABEL_KEY_PATTERN: "a label key of letters, digits, '_' and '-', at most 63 characters, starting with a letter",
    LABEL_VALUE_PATTERN: "a label value of at most 255 characters, without control characters",
    REGION_PATTERN: "a region name of lower-case letters, digits and '-' (e.g. europe-west4)",
    ACCOUNT_PATTERN: "a project or account ID of letters, digits and '-'",
    MOUNT_PATTERN: "an absolute path of letters, digits, '.', '_', '-' and '/'",
    SLURM_KEY_PATTERN: "a slurm.conf parameter name (letters and digits, e.g. SchedulerType)",
    SLURM_VALUE_PATTERN: "a slurm.conf value on one line: no control characters and no '#'",
    IAM_ROLE_PATTERN: "an IAM role's ARN such as arn:aws:iam::111122223333:role/reconcile-apply",
    PORT_PATTERN: "a port (6817) or a range of ports (60000-61000)",
    DN_PATTERN: "an LDAP distinguished name such as dc=cscs,dc=ch (attribute=value, separated by commas)",
}


AWS_ZONE_ID = re.compile(r"^[a-z]{2,5}[0-9]+(-[a-z]+[0-9]+)?-az[0-9]+$")  # euc1-az2, use1-atl2-az1 (a Local Zone)


def _no_repeats(items: list) -> list:
    seen = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{item} is listed twice: list each once")
        seen.add(item)
    return items


Zone = Annotated[str, Field(pattern=ZONE_PATTERN)]
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN)]

VolumeId = Annotated[
    str,
    Field(
        pattern=VOLUME_ID_PATTERN,
        description="The id of an existing volume (as `reconcile volumes` lists it, or the cloud's resource id): "
        "this volume is that one, imported instead of created",
    ),
]

Platform = Literal["local", "gcp", "aws"]
Flavor = Literal["minimal", "gpu", "slurm", "application"]
GpuModel = Literal[
    "nvidia-a100-40gb",
    "nvidia-a100-80gb",
    "nvidia-h100-80gb",
    "nvidia-h100-94gb",
    "nvidia-l4",
    "nvidia-a10g",
    "nvidia-t4",
    "nvidia-v100",
]
GPU_MEMORY_GB: dict[str, int] = {
    "nvidia-a100-40gb": 40,
    "nvidia-a100-80gb": 80,
    "nvidia-h100-80gb": 80,
    "nvidia-h100-94gb": 94,
    "nvidia-l4": 24,
    "nvidia-a10g": 24,
    "nvidia-t4": 16,
    "nvidia-v100": 16,
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---------------------------------------------------------------- site (landing zone)


class SiteNetwork(Strict):
    cidr: Cidr = Field(description="The site's whole address space")
    services_subnet: Cidr = Field(description="Subnet for landing-zone services and control nodes")
    clusters_range: Cidr = Field(description="Range from which each cluster gets its own subnet")
    cluster_prefix: int = Field(24, ge=16, le=28, description="Prefix length of each cluster subnet")
    egress: Literal["nat", "private"] = Field(
        "nat",
        description="How nodes reach beyond the site: `nat`, the internet through NAT; `private`, no NAT, only "
        "the platform's private endpoints (which the landing zone creates) and the site's own registries",
    )
    runner_ranges: Annotated[list[Cidr], AfterValidator(_no_repeats)] = Field(
        [],
        description="Where the site's CI runners and operators come from: besides the services subnet, the only "
        "sources the control nodes and the Kubernetes API answer",
    )

    @model_validator(mode="after")
    def _nested(self) -> "SiteNetwork":
        outer = ipaddress.IPv4Network(self.cidr)
        services = ipaddress.IPv4Network(self.services_subnet)
        clusters = ipaddress.IPv4Network(self.clusters_range)
        for label, net in (("services_subnet", services), ("clusters_range", clusters)):
            if not net.subnet_of(outer):
                raise ValueError(f"{label} {net} is not inside cidr {outer}")
        if services.overlaps(clusters):
            raise ValueError(f"services_subnet {services} overlaps clusters_range {clusters}")
        if self.cluster_prefix < clusters.prefixlen:
            raise ValueError(f"cluster_prefix /{self.cluster_prefix} is larger than clusters_range {clusters}")
        return self


class Ldap(Strict):
    base_dn: str = Field(pattern=DN_PATTERN, max_length=1024, description="e.g. dc=cscs,dc=ch")


class Keycloak(Strict):
    realm: str = "hpc"


class Identity(Strict):
    ldap: Ldap
    keycloak: Keycloak = Keycloak()


class Secrets(Strict):
    provider: Literal["vault", "platform"] = Field(
        "vault", description="vault: HashiCorp Vault in the landing zone; platform: the cloud's secret manager"
    )


class ControlNodes(Strict):
    count: int = Field(3, ge=1, le=9)
    cores: int = Field(4, ge=1, le=512)
    memory_gb: int = Field(16, ge=1, le=32768)


def _check_endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    if "@" in value:
        raise ValueError("endpoint must not carry credentials: give them through the environment")
    if not re.fullmatch(r"""https?://[A-Za-z0-9.\-\[\]:]+(/[^\s?#'"`$\\]*)?""", value):
        raise ValueError("endpoint must be a URL such as https://s3.example.org or http://127.0.0.1:9000, with no query")
    return value


class ObjectStore(Strict):
    """Where a local site's buckets live: the centre's own S3-compatible store (Ceph RGW, MinIO)
    or a GCS-compatible one. Reached with rclone, with the credentials of the apply's environment."""

    backend: Literal["s3", "gcs"]
    endpoint: str | None = Field(None, description="the store's base URL; default: AWS's or Google's own")
    region: str | None = Field(None, description="s3 only: the region buckets are created in")
    project: str | None = Field(None, description="gcs only: the project number buckets are created in (needed on Google's own)")

    _endpoint = field_validator("endpoint")(_check_endpoint)

    @model_validator(mode="after")
    def _fits(self) -> "ObjectStore":
        if self.backend == "gcs" and self.region:
            raise ValueError("region is for an s3 store; a gcs store takes project")
        if self.backend == "s3" and self.project:
            raise ValueError("project is for a gcs store; an s3 store takes region")
        if self.backend == "gcs" and not self.endpoint and not self.project:
            raise ValueError("a gcs store on Google's own endpoint needs project: the project number its buckets are created in")
        return self


class LandingZoneServices(Strict):
    identity: Identity
    secrets: Secrets = Secrets()
    artifact_registries: list[Literal["rpm", "deb", "container"]] = Field(
        ["rpm", "deb", "container"], description="Trusted sources of OS packages and images"
    )
    control_nodes: ControlNodes = ControlNodes()
    orchestration: list[Literal["consul", "nomad", "vault"]] = Field(
        ["consul", "nomad", "vault"], description="Control daemons whose lifecycle the landing zone manages"
    )
    slurm_versions: list[Annotated[str, Field(pattern=r"^\d+\.\d+$")]] = Field(
        [],
        description="the Slurm versions (major.minor) this site's nodes can install, from its package registry or "
        "images; a cluster asking for another is refused. Empty: not stated, any version is taken on trust. The local "
        "slurm runtime provides Debian's, whatever this says",
    )
    object_store: ObjectStore | None = Field(
        None,
        description="local platform only: the store that holds the clusters' buckets (storage.object); "
        "without it, each bucket is a directory beside the site's state",
    )


class LocalState(Strict):
    backend: Literal["local"]
    path: str = Field(".reconcile/state", description="Directory for state files, relative to the repository root")

    @model_validator(mode="after")
    def _inside(self) -> "LocalState":
        parts = [part for part in self.path.split("/") if part not in ("", ".")]
        if any(ord(c) < 0x20 or c == "\x7f" for c in self.path):
            raise ValueError("path must not hold control characters")
        if self.path.startswith("/") or ".." in parts or "\\" in self.path:
            raise ValueError("path must be relative to the state root and stay inside it, e.g. .reconcile/state/NAME")
        if not parts:
            raise ValueError("path must name a directory below the state root, not the state root itself")
        if parts[0] == ".git":
            raise ValueError("path must not be inside .git")
        return self

    @property
    def directory(self) -> str:
        """The path in one spelling: `./a//b/` and `a/b` are the same directory."""
        return "/".join(part for part in self.path.split("/") if part not in ("", "."))


def _clean_prefix(value: str) -> str:
    return "/".join(part for part in value.split("/") if part)


class GcsState(Strict):
    backend: Literal["gcs"]
    bucket: str = Field(min_length=3)
    prefix: str = "reconcile"
    endpoint: str | None = Field(None, description="a GCS-compatible store's base URL (its JSON API is under /storage/v1/); default: Google's")

    _endpoint = field_validator("endpoint")(_check_endpoint)

    @property
    def directory(self) -> str:
        return _clean_prefix(self.prefix)


class S3State(Strict):
    backend: Literal["s3"]
    bucket: str = Field(min_length=3)
    key_prefix: str = "reconcile"
    region: str | None = None
    endpoint: str | None = Field(
        None, description="an S3-compatible store (Ceph RGW, MinIO) at this URL, addressed path-style; default: AWS"
    )

    _endpoint = field_validator("endpoint")(_check_endpoint)

    @property
    def directory(self) -> str:
        return _clean_prefix(self.key_prefix)


StateBackend = Annotated[Union[LocalState, GcsState, S3State], Field(discriminator="backend")]


# The retentions CloudWatch Logs takes (PutRetentionPolicy), in days.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)


class Audit(Strict):
    """What the site's landing zone logs for an audit trail, and how long it keeps it."""

    retention_days: int = Field(
        90, description="days the site keeps its network flow logs and control-plane logs (AWS: CloudWatch Logs "
        "retention; GCP: the project's log bucket sets it, once per project), and the earlier versions of the objects "
        "in its clusters' buckets (versioned: an overwrite or a delete is undone within this time)",
    )

    @field_validator("retention_days")
    @classmethod
    def _a_retention_cloudwatch_takes(cls, days: int) -> int:
        if days not in LOG_RETENTION_DAYS:
            raise ValueError(f"retention_days {days} is not one CloudWatch Logs takes: one of {', '.join(map(str, LOG_RETENTION_DAYS))}")
        return days


class Site(Strict):
    """A landing zone on one platform and region, created once and shared by many clusters."""

    name: Name
    description: str = ""
    platform: Platform
    account: str = Field("", pattern=ACCOUNT_PATTERN, description="GCP project ID or AWS account ID; not used on local")
    region: str = Field(pattern=REGION_PATTERN)
    zones: Annotated[list[Zone], AfterValidator(_no_repeats)] = Field(min_length=1)
    labels: dict[LabelKey, LabelValue] = Field({}, max_length=64, description="e.g. sovereignty: CH")
    network: SiteNetwork
    services: LandingZoneServices
    state: StateBackend
    audit: Audit = Audit()
    kubernetes_admins: Annotated[list[Annotated[str, Field(pattern=IAM_ROLE_PATTERN)]], AfterValidator(_no_repeats)] = Field(
        [],
        description="aws only, and needed there: the IAM roles that administer the landing zone's Kubernetes (EKS "
        "access entries with the cluster-admin policy), e.g. the CI apply role and a break-glass role. Once the "
        "cluster exists every other standard access entry is removed, the one EKS gives its creator too",
    )
    runtime: Literal["records", "slurm"] = Field(
        "records",
        description="local platform only. records: every resource is a record (needs nothing installed); slurm: "
        "every node runs for real in namespaces of its own, with Debian's slurm-wlm and munge (needs root)",
    )

    @field_validator("services")
    @classmethod
    def _store_on_local(cls, services: LandingZoneServices, info: ValidationInfo) -> LandingZoneServices:
        platform = info.data.get("platform")
        if services.object_store is not None and platform not in (None, "local"):
            raise ValueError(f"object_store is for the local platform: a {platform} site's buckets are its cloud's own")
        return services

    @field_validator("kubernetes_admins")
    @classmethod
    def _admins_on_aws(cls, admins: list[str], info: ValidationInfo) -> list[str]:
        platform = info.data.get("platform")
        if admins and platform not in (None, "aws"):
            raise ValueError(f"only an aws site takes kubernetes_admins: a {platform} site has no EKS cluster to admit them to")
        return admins

    @field_validator("zones")
    @classmethod
    def _zones_of_the_platform(cls, zones: list[str], info: ValidationInfo) -> list[str]:
        platform, region = info.data.get("platform"), info.data.get("region")
        for zone in zones:
            if platform == "aws" and not AWS_ZONE_ID.match(zone):
                raise ValueError(
                    f"{zone}: on aws, zones are zone IDs such as euc1-az2 (`aws ec2 describe-availability-zones` "
                    "lists them): a zone name such as eu-central-1a means another zone in each account"
                )
            if platform == "gcp" and region and not zone.startswith(f"{region}-"):
                raise ValueError(f"{zone} is not a zone of region {region} (zones of a region are named {region}-a, ...)")
        return zones

    @model_validator(mode="after")
    def _cloud_needs_account(self) -> "Site":
        if self.runtime != "records" and self.platform != "local":
            raise ValueError(f"runtime {self.runtime} is for the local platform: a {self.platform} site runs on its cloud")
        if self.platform != "local" and not self.account:
            noun = "project ID" if self.platform == "gcp" else "account ID"
            raise ValueError(f"a {self.platform} site needs account: the {noun} it lives in")
        if self.platform == "aws" and not self.kubernetes_admins:
            raise ValueError(
                "an aws site needs kubernetes_admins: the IAM roles that administer its EKS cluster (the CI apply "
                "role at least), since the role that creates the cluster does not keep the access EKS gives it"
            )
        return self


# ---------------------------------------------------------------- cluster (vCluster)


class Placement(Strict):
    site: Name
    zone: str | None = Field(None, description="Defaults to the site's first zone")


class Gpu(Strict):
    model: GpuModel
    count: int = Field(ge=1, le=16)
    memory_gb: int | None = Field(None, description="Per GPU; implied by the model, checked when given")

    @model_validator(mode="after")
    def _memory_matches_model(self) -> "Gpu":
        expected = GPU_MEMORY_GB[self.model]
        if self.memory_gb is not None and self.memory_gb != expected:
            raise ValueError(f"{self.model} has {expected} GiB per GPU, not {self.memory_gb}")
        return self


class NodePool(Strict):
    role: Literal["login", "compute", "service"]
    count: int = Field(ge=0, le=1024)
    cores: int = Field(ge=1, le=512, description="Physical cores per node (a cloud vCPU is one hardware thread)")
    memory_gb: int = Field(ge=1, le=32768, description="Memory per node in GiB, as the clouds count it (the name says GB)")
    gpu: Gpu | None = None
    local_ssd_gb: int = Field(0, ge=0, le=1_000_000, description="Local SSD per node in decimal GB, as EC2 counts it (a Google disk of 375 GiB is 402 GB)")
    placement: Literal["spread", "compact"] = Field(
        "spread", description="compact: tightly coupled, low-latency placement for MPI"
    )
    generation: int = Field(
        0, ge=0, le=1_000_000,
        description="Raise it to roll the pool on purpose: every node is replaced with what the definition says now "
        "(first-boot data, image), in batches of services.scheduler.roll_batch, the controller last",
    )

    @field_validator("count")
    @classmethod
    def _a_login_node(cls, count: int, info: ValidationInfo) -> int:
        if count == 0 and info.data.get("role") == "login":
            raise ValueError("a login pool needs at least one node: the cluster's controller and its users' way in run there")
        return count


class SharedFilesystem(Strict):
    size_gb: int = Field(ge=100, le=10_000_000, description="100 GB to 10 PB")
    mount: str = Field("/home", pattern=MOUNT_PATTERN)
    from_: VolumeId | None = Field(None, alias="from")


class Scratch(Strict):
    size_gb: int = Field(ge=100, le=10_000_000, description="100 GB to 10 PB")
    mount: str = Field("/scratch", pattern=MOUNT_PATTERN)


class Bucket(Strict):
    name: Name
    purpose: str = ""
    from_: VolumeId | None = Field(None, alias="from")
    lock_days: int | None = Field(
        None, ge=1, le=36500,
        description="Object lock: every object is kept unchanged and undeletable for this many days after it is "
        "written (AWS: S3 Object Lock, on the bucket's versions; GCP: the bucket's retention policy, in place of "
        "versioning, which GCS does not combine with it). Not undone: S3 keeps Object Lock on a bucket for good. "
        "The local platform's stand-in store does not enforce it",
    )
    lock_mode: Literal["governance", "compliance"] = Field(
        "governance",
        description="governance: an identity with s3:BypassGovernanceRetention may still remove an object, and the "
        "GCS retention policy stays unlocked; compliance: no one may, not even the account's root, and the GCS "
        "retention policy is locked for good (the bucket cannot be deleted before its objects are old enough)",
    )


class Storage(Strict):
    shared: SharedFilesystem | None = None
    scratch: Scratch | None = None
    object: list[Bucket] = []
    on_move: Literal["keep", "drop", "copy"] | None = Field(
        None,
        description="When the cluster moves: keep the source's shared filesystem and buckets (the source stack "
        "forgets them, the data stays), drop them (destroyed), or copy them to the target (bulk copy, freeze, final "
        "pass, checksum verification, and only then the source is destroyed). A move of a cluster holding data needs one. "
        "`keep` also holds when a change replaces a volume in place (a zone, a shrink): the old volume is retained and a "
        "new, empty one is created; without it, such a replacement needs the data decision.",
    )
    copy_via: Literal["runner", "nodes"] = Field(
        "runner",
        description="How `on_move: copy` carries a file system: `runner` (rsync or rclone on the machine that applies, "
        "where it reaches both volumes) or `nodes` (staged: the source's login node writes the volume to a staging "
        "area of its site with its own identity, and the target's login node reads it, so the data never passes "
        "through the runner within a site). A cloud file system is always staged, and a bucket always copied by the "
        "runner or the cloud's transfer service.",
    )


def _span(port: int | str) -> tuple[int, int]:
    """6817 -> (6817, 6817); "60000-61000" -> (60000, 61000)."""
    low, _, high = str(port).partition("-")
    return int(low), int(high or low)


def _port_range(value: int | str) -> str:
    """6817 or "60000-61000" -> the canonical "6817" or "60000-61000"."""
    if isinstance(value, str) and not re.fullmatch(PORT_PATTERN, value):
        raise ValueError(f"{value!r} is not a port (1-65535) or a range of ports such as 60000-61000")
    first, last = _span(value)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{value!r} is not a port (1-65535) or a range of ports from low to high")
    return str(first) if first == last else f"{first}-{last}"


PortRange = Annotated[
    int | str,
    AfterValidator(_port_range),  # one message for either form
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                              {"type": "string", "pattern": PORT_PATTERN}]}),
    Field(description="A port (6817) or a range of ports (\"60000-61000\")"),
]


def _apart(ports: list[str]) -> list[str]:
    """Ports and ranges that overlap would open one port twice (two rules of one group, the
    second refused by AWS as a duplicate): each port is listed once."""
    spans = sorted((*_span(p), p) for p in ports)
    for (_, high, first), (low, _, second) in zip(spans, spans[1:]):
        if low <= high:
            raise ValueError(f"{first} and {second} overlap: list each port once (one range can hold both)")
    return ports


class Admit(Strict):
    """Another cluster of the same site whose nodes may open connections to this cluster's nodes."""

    cluster: Name = Field(description="The cluster let in. It must exist; while it runs on another site, nothing is opened")
    ports: Annotated[list[PortRange], AfterValidator(_no_repeats), AfterValidator(_apart)] = Field(
        [], description="The TCP and UDP ports it may open; none: every port and protocol"
    )


class ClusterNetwork(Strict):
    public_login: bool = Field(False, description="Expose login nodes on a public address")
    allowed_cidrs: list[Cidr] = Field([], description="Networks allowed to reach the login nodes")
    admit: list[Admit] = Field(
        [],
        description="Other clusters of the site whose nodes may reach this cluster's nodes, one way, on the ports "
        "given. Clusters reach no other cluster unless that cluster admits them here",
    )

    @field_validator("admit")
    @classmethod
    def _each_cluster_once(cls, admit: list[Admit]) -> list[Admit]:
        _no_repeats([entry.cluster for entry in admit])
        return admit


class Group(Strict):
    name: Name
    role: Literal["user", "admin", "operator"] = "user"


class Access(Strict):
    groups: list[Group] = []


class Scheduler(Strict):
    kind: Literal["slurm"]
    version: str = "24.05"
    settings: dict[
        Annotated[str, Field(pattern=SLURM_KEY_PATTERN)],
        Annotated[str, Field(pattern=SLURM_VALUE_PATTERN)] | int | bool,
    ] = Field({}, max_length=200, description="Extra slurm.conf settings, one line each")
    drain_timeout_s: int = Field(
        600, ge=1, le=7 * 86400,
        description="How long a node that leaves (a pool shrinks, a node is replaced) may keep running its jobs "
        "once drained; when the wait runs out the rollout stops and reports, and nothing is killed",
    )
    roll_batch: int = Field(
        1, ge=1, le=1024,
        description="How many nodes a rolling change drains and replaces at a time (the controller always alone, last)",
    )


class Services(Strict):
    scheduler: Scheduler | None = None
    monitoring: bool = True


class Spack(Strict):
    version: str = "0.23"
    specs: list[str] = Field(min_length=1)
    build_cache: bool = True


class UserEnvironment(Strict):
    spack: Spack | None = None
    containers: list[str] = []


class HealthCheck(Strict):
    """How to tell that a new copy of a cluster works, before the old copy is destroyed."""

    command: list[str] = Field(
        [], description="Run on the runner; '{login}' becomes the first login address. Exit 0 means healthy."
    )
    url: str = Field("", description="Must answer HTTP 2xx; '{login}' becomes the first login address")
    timeout_s: int = Field(600, ge=1, le=7200)

    @model_validator(mode="after")
    def _one_probe(self) -> "HealthCheck":
        if self.command and self.url:
            raise ValueError("give either command or url, not both")
        return self


class Cluster(Strict):
    """A whole HPC system (vCluster): infrastructure, services and user environment."""

    name: Name
    description: str = ""
    profiles: Annotated[list[Name], AfterValidator(_no_repeats)] = Field(
        [], description="Profiles under clusters/profiles/ to compose, in order"
    )
    placement: Placement
    failover: Annotated[list[Name], AfterValidator(_no_repeats)] = Field(
        [], description="Sites to fail over to, in order of preference"
    )
    flavor: Flavor
    node_pools: dict[Name, NodePool] = Field(min_length=1)
    storage: Storage = Storage()
    network: ClusterNetwork = ClusterNetwork()
    access: Access = Access()
    services: Services = Field(Services(), validate_default=True)
    environment: UserEnvironment = UserEnvironment()
    health_check: HealthCheck | None = Field(None, description="Overrides the flavor's default health check")

    # What a flavor needs is checked on the field that lacks it, so the error points there.
    @field_validator("node_pools")
    @classmethod
    def _gpu_flavor_has_gpus(cls, pools: dict[str, NodePool], info: ValidationInfo) -> dict[str, NodePool]:
        if info.data.get("flavor") == "gpu" and not any(p.gpu for p in pools.values()):
            raise ValueError("flavor gpu needs at least one node pool with gpu")
        return pools

    @field_validator("services")
    @classmethod
    def _slurm_flavor_has_a_scheduler(cls, services: Services, info: ValidationInfo) -> Services:
        if info.data.get("flavor") == "slurm" and services.scheduler is None:
            raise ValueError("flavor slurm needs services.scheduler")
        return services

    @field_validator("failover")
    @classmethod
    def _not_where_it_runs(cls, failover: list[str], info: ValidationInfo) -> list[str]:
        placement = info.data.get("placement")
        if placement is not None and placement.site in failover:
            raise ValueError(f"failover lists the placement site {placement.site}: a cluster fails over elsewhere")
        return failover


# Fields a profile may not set: they say which cluster this is and where it runs.
CLUSTER_ONLY_FIELDS = ("name", "profiles", "placement", "failover")
