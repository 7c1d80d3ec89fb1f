"""How `storage.on_move: copy` carries a volume between two platforms: which tool, run by whom,
with whose identity. Pure (no Node, no cloud call): the plan shows the route, apply runs it.

A volume is named by what its stack's state says of it (`locate`): a local directory, a
bucket in a store (a local site's object store, GCS or S3), or a cloud file system (Filestore,
EFS, FSx for Lustre). The routes:

  rsync             directory to directory, on the machine that applies (local sites);
  rclone            bucket to bucket across stores (local store, S3, GCS, either way), and
                    between a directory and a bucket: on the machine that applies, with the
                    credentials of its environment (in the apply workflow, each cloud's OIDC
                    identity: no key is stored);
  storage-transfer  GCS bucket to GCS bucket: Google's Storage Transfer Service, a job in a
                    transfer stack of the target site, run by Google with its service agent;
  datasync          within AWS: S3 to S3, EFS to EFS, FSx for Lustre to FSx for Lustre, a
                    DataSync task in a transfer stack of the target site, which verifies
                    what it transferred (POINT_IN_TIME_CONSISTENT);
  staged            a cloud file system to another platform, or a directory to a cloud file
                    system: through a bucket, written and read by the clusters' login nodes
                    with their own identities (reconciler.stagedcopy); also any file system
                    whose cluster says `storage.copy_via: nodes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RSYNC, RCLONE, STORAGE_TRANSFER, DATASYNC, STAGED = "rsync", "rclone", "storage-transfer", "datasync", "staged"

# How each platform's stacks name a volume's resource, and what the resource is.
BUCKET_TYPES = {"google_storage_bucket": "gcs", "aws_s3_bucket": "s3"}
FILESYSTEM_TYPES = {"google_filestore_instance": "filestore", "aws_efs_file_system": "efs", "aws_fsx_lustre_file_system": "lustre"}


@dataclass(frozen=True)
class CloudVolume:
    """A volume of a cloud stack, from its state: a bucket (`id` is its name) or a file system
    (`id` is the provider's id). `facts`: what a transfer service needs of it (ARNs, project,
    the subnet and security groups its mount targets use)."""

    platform: str
    kind: str  # bucket | filesystem
    service: str  # gcs | s3 | filestore | efs | lustre
    id: str
    region: str = ""
    facts: tuple[tuple[str, str], ...] = field(default=())

    def fact(self, name: str) -> str:
        return dict(self.facts).get(name, "")

    @property
    def store(self) -> dict | None:
        """A bucket as rclone reaches it (an `ObjectStore.describe()`), or None."""
        if self.service == "gcs":
            return {"backend": "gcs", "project": self.fact("project")}
        if self.service == "s3":
            return {"backend": "s3", "region": self.region}
        return None

    def __str__(self) -> str:
        return f"{self.service}://{self.id}" if self.kind == "bucket" else f"{self.service} {self.id}"


def locate(platform: str, resources: list[tuple[str, str, dict]]) -> dict[str, CloudVolume]:
    """{address: CloudVolume} of the data volumes of a cloud stack, from its state's resources
    ((type, name, attributes)). The subnet and security group of the stack are facts of its
    file systems: DataSync reaches EFS through them."""
    subnets = [a.get("arn", "") for t, _, a in resources if t == "aws_subnet" and a.get("arn")]
    groups = sorted(a.get("arn", "") for t, n, a in resources if t == "aws_security_group" and n == "security_group_nodes" and a.get("arn"))
    out = {}
    for rtype, name, a in resources:
        if rtype == "google_storage_bucket" and a.get("name"):
            out[f"{rtype}.{name}"] = CloudVolume(
                platform, "bucket", "gcs", a["name"], str(a.get("location", "")).lower(), (("project", str(a.get("project", ""))),)
            )
        elif rtype == "aws_s3_bucket" and a.get("bucket"):
            out[f"{rtype}.{name}"] = CloudVolume(
                platform, "bucket", "s3", a["bucket"], str(a.get("region", "")), (("arn", str(a.get("arn", ""))),)
            )
        elif rtype in ("aws_efs_file_system", "aws_fsx_lustre_file_system") and a.get("id"):
            facts = [("arn", str(a.get("arn", ""))), ("subnet_arn", subnets[0] if subnets else "")]
            facts += [("security_group_arn", ",".join(groups))]
            region = str(a.get("arn", "")).split(":")[3] if str(a.get("arn", "")).count(":") >= 3 else ""
            out[f"{rtype}.{name}"] = CloudVolume(platform, "filesystem", FILESYSTEM_TYPES[rtype], str(a["id"]), region, tuple(facts))
        elif rtype == "google_filestore_instance" and a.get("id"):
            share = ((a.get("file_shares") or [{}])[0] or {}).get("name", "")
            out[f"{rtype}.{name}"] = CloudVolume(
                platform, "filesystem", "filestore", str(a["id"]), str(a.get("location", "")), (("share", str(share)),)
            )
    return out


def route(source_platform: str, source, target_platform: str, target) -> str:
    """The route of one volume's copy. `source` and `target` are what `locate` (clouds) or the
    local platform (a directory path, or a bucket with a `store`) say of the volume. The
    target's volume may not exist yet when this is planned: then `target` is its kind alone,
    "bucket" or "filesystem"."""
    source_kind, target_kind = _kind(source), _kind(target)
    if source_kind == "directory" and target_kind == "directory":
        return RSYNC
    if source_kind == "bucket" and target_kind == "bucket":
        if source_platform == target_platform == "gcp":
            return STORAGE_TRANSFER
        if source_platform == target_platform == "aws":
            return DATASYNC
        return RCLONE
    if "bucket" in (source_kind, target_kind) and "filesystem" not in (source_kind, target_kind):
        return RCLONE  # a directory and a bucket
    if source_platform == target_platform == "aws" and source_kind == target_kind == "filesystem":
        if _service(source) == _service(target) or _service(target) == "":
            return DATASYNC
    return STAGED


def _kind(volume) -> str:
    if isinstance(volume, str):
        return volume
    if isinstance(volume, CloudVolume):
        return volume.kind
    return "bucket" if getattr(volume, "store", None) is not None else "directory"


def _service(volume) -> str:
    return volume.service if isinstance(volume, CloudVolume) else ""


@dataclass(frozen=True)
class TransferSpec:
    """A transfer stack: the transfer-service jobs that copy one cluster's volumes into the
    target site, in that site's account and region, with its state beside the site's stacks.
    It lives only while a copy runs: applied before the transfers, destroyed after them."""

    platform: str
    site: str
    account: str  # GCP project or AWS account of the target site
    region: str
    cluster: str
    state: object  # rpi.spec.StateLocation
    pairs: tuple[tuple[str, CloudVolume, CloudVolume], ...]  # (volume, source, target)

    @property
    def stack(self) -> str:
        return f"transfer-{self.cluster}"


def transfer_name(spec: TransferSpec, volume: str) -> str:
    """A transfer's name: unique in the account (the site is in it), at most 64 characters."""
    return f"{spec.site}-{spec.cluster}-{volume}"[:64]
