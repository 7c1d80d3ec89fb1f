"""A Google Cloud vCluster: its subnet in the site's VPC, one Compute Engine instance per node,
Filestore for shared storage, buckets, firewall rules, and IAM that lets the access groups log
in through OS Login.

The VPC belongs to the landing-zone stack; it is looked up by the name that stack gives it.
Egress needs nothing here: the site's Cloud NAT serves every subnet of the VPC, present and
future. Nodes keep the names and addresses the spec gives them, and every node boots with the
cluster's cloud-init (`spec.user_data`: layers 2 and 3, the same bytes as on any other
platform) as its `user-data` metadata.

Images (`boot_image`, from the catalog's `boot_images`): CPU nodes boot Google's HPC VM
image (Rocky Linux 8 tuned for tightly coupled MPI, which Slurm on Google Cloud boots by
default). A GPU node boots the Rocky Linux 8 accelerator image with the NVIDIA 580 driver
where Google's table of accelerator images lists its machine series (A3 High with 8 GPUs, A3
Ultra, A3 Mega, A4); on any other series (A2, N1 with attached GPUs) it boots the HPC image,
and Google's driver installer runs from the startup script before cloud-init, at every boot
until the driver answers (`GPU_DRIVER_STEP`: the installer reboots the node between its
stages). All are Rocky Linux 8, so Spack builds and Slurm run the same on every node of a
cluster, and the driver never comes from cloud-init, which stays the same bytes on every
platform. The driver branch is pinned in the family name: `-latest` would change it under a
running cluster.
Google's Rocky Linux images boot with Google's guest agent, and cloud-init is not part of every
one of them: a small startup script (`CLOUD_INIT_SHIM`, which the guest agent runs at every
boot) runs the user data unless cloud-init has finished it for this very instance (the image
may lack cloud-init, ship it disabled, or carry the marker of the instance it was built on),
installing cloud-init where it is missing, and says so in the journal.

Access: an access group `g` is the Google group `group:g@DOMAIN`, where DOMAIN is the site's
label `iam_domain` (e.g. `iam_domain: swisstwins.ch` in `sites/gcp-zurich.yaml`). Group names
in cluster definitions are bare names (`hpc-admins`) and the spec carries no domain, and an
invented domain would grant access to whoever owns it, so `check` refuses a cluster with
access groups on a site without that label, saying what to add. Groups get OS Login on the
instances themselves, not on the project: users (role `user`) on the login nodes only,
`admin` and `operator` as OS admin on every node. With them come IAP tunnelling to the
login nodes (the only nodes SSH reaches from outside; admins go on from there) and acting as
the nodes' service account, both of which an SSH session through IAP needs. The label is
itself turned into a valid label value like any other (`swisstwins_ch`); only this module
reads its raw value.

Storage: shared volumes are Filestore instances reached through the site's private services
access range (see the landing zone), exported to the cluster's subnet only. Scratch is the
nodes' local SSD, not a network file system. Object storage is one bucket per volume.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from rpi import cdk, registry
from rpi.catalog import MachineType, catalog
from rpi.gcp.landing_zone import (
    FLOW_LOGS,
    IAP_RANGE,
    registry_address,
    service_account,
    account_id,
    bucket_name,
    dns_zone_name,
    private_services_name,
    google,
    access_logs_bucket,
    private_bucket,
    resource_name,
    role_id,
    service_account_member,
)
from rpi.spec import (
    PRIVATE_DOMAIN, ClusterSpec, ComputePool, NodeSpec, StorageVolume, channel_objects, channel_prefix, network_name,
    node_identities, node_identity, terraform_literal,
)

@dataclass(frozen=True)
class BootImage:
    image: str  # project/family
    installs_driver: bool  # a GPU node on an image without the driver: installed at first boot


def boot_image(machine: MachineType, gpu: bool) -> BootImage:
    """The boot image of a node, from the catalog's `boot_images` (Google's own table of which
    accelerator image serves which machine series). A GPU series that table lists gets its
    accelerator image, driver included; any other GPU node (A2, N1 with attached GPUs) gets the
    HPC image and Google's driver installer at first boot."""
    images = _boot_images()
    cpu = f"{images['cpu']['project']}/{images['cpu']['family']}"
    if not gpu:
        return BootImage(cpu, False)
    series = images["series"].get(machine.name) or images["series"].get(machine.family)
    for row in images["accelerator"]:
        if row["family"] == images["preferred_accelerator"] and series in row["series"]:
            return BootImage(f"{row['project']}/{row['family']}", False)
    return BootImage(cpu, True)


@cache
def _boot_images() -> dict:
    return json.loads((Path(__file__).parent / "catalog.json").read_text())["boot_images"]


# Before cloud-init, on a GPU node whose image has no driver: Google's installer, at every boot
# until the driver answers (it reboots the node between its stages, and is started again here).
GPU_DRIVER_STEP = """if ! nvidia-smi -L >/dev/null 2>&1; then
  installer=/opt/google/cuda-installer/cuda_installer.pyz
  mkdir -p "$(dirname "$installer")"
  [ -s "$installer" ] || curl -fsSL --retry 5 -o "$installer" {url}
  logger -s -t vcluster "no NVIDIA driver answers: installing it with Google's installer (the node reboots)"
  python3 "$installer" install_driver
  if ! nvidia-smi -L >/dev/null 2>&1; then exit 0; fi  # rebooting: the next boot goes on from here
fi
"""
# Run by Google's guest agent at every boot, after the network is up.
CLOUD_INIT_SHIM = """\
#!/bin/bash
# cloud-init reads the user-data metadata. Run it here unless it has finished for this very
# instance: the image may lack it, ship it disabled, or it may not have run. Never silent.
set -eo pipefail
cloud_dir=/var/lib/cloud
if [ -n "$VCLUSTER_CLOUD_DIR" ]; then cloud_dir=$VCLUSTER_CLOUD_DIR; fi  # tests only
id=$(curl -fsS -H 'Metadata-Flavor: Google' http://metadata.google.internal/computeMetadata/v1/instance/id)
finished="$cloud_dir/instances/$id/boot-finished"
if [ -e "$finished" ]; then exit 0; fi
if ! command -v cloud-init >/dev/null; then
  logger -s -t vcluster "cloud-init is missing: installing it to run the user data"
  dnf -y install cloud-init
elif cloud-init status 2>/dev/null | grep -q 'status: running'; then
  cloud-init status --wait >/dev/null 2>&1 || true  # on its way: let it finish
  if [ -e "$finished" ]; then exit 0; fi
fi
logger -s -t vcluster "cloud-init has not run the user data of instance $id: running it now"
cloud-init init --local && cloud-init init
cloud-init modules --mode=config && cloud-init modules --mode=final
"""


def startup_script(image: BootImage) -> str:
    """What the guest agent runs at every boot: the driver step where the image needs it, then
    the cloud-init shim."""
    if not image.installs_driver:
        return CLOUD_INIT_SHIM
    head, rest = CLOUD_INIT_SHIM.split("set -eo pipefail\n", 1)
    return head + "set -eo pipefail\n" + GPU_DRIVER_STEP.format(url=_boot_images()["driver_installer"]) + rest


BOOT_DISK_GB = 100
BOOT_DISK_TYPE = "pd-balanced"  # offered on every series of the catalog (n2, c2, c3, a2, a3)
METADATA_VALUE_LIMIT = 256 * 1024  # bytes in one metadata value; Compute Engine refuses more

# Local SSD comes in disks of 375 GiB (402.65 decimal GB: node specs and the catalog count local
# SSD in decimal GB, as EC2 states it), and a type takes only some counts of them: 1, 2, 4, 8,
# 16 or 24, up to what the catalog says the type can hold, and at least as many as its size
# needs (Google: "Choose a valid number of Local SSD disks"): (up to this many vCPUs, fewest).
LOCAL_SSD_DISK_GIB = 375
LOCAL_SSD_DISK_GB = LOCAL_SSD_DISK_GIB * 1.073741824
LOCAL_SSD_COUNTS = (1, 2, 4, 8, 16, 24)
FEWEST_LOCAL_SSDS = {
    "n2": ((10, 1), (20, 2), (40, 4), (80, 8), (128, 16)),
    "c2": ((8, 1), (16, 2), (30, 4), (60, 8)),
}

# Filestore: tier -> (smallest, largest, step) capacity in GiB. Basic tiers take any size in
# between. Zonal is used only beyond what basic holds (63.9 TiB), so only its large range
# (10 to 100 TiB in steps of 2.5 TiB) is here.
FILESTORE_TIERS = {
    "BASIC_HDD": (1024, 65433, 1),
    "BASIC_SSD": (2560, 65433, 1),
    "ZONAL": (10240, 102400, 2560),
}

NODE_ACCOUNT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/artifactregistry.reader")

# Access roles that may log in on every node, as OS admins; the others reach login nodes only.
NODE_ROLES = ("admin", "operator")
IAM_DOMAIN_LABEL = "iam_domain"


def build(stack, spec: ClusterSpec) -> None:
    """Add the whole cluster to `stack` (backend and provider are set by the platform)."""
    check(spec)
    network, subnet = _subnet(stack, spec)
    _firewall(stack, spec, network)
    accounts = _node_accounts(stack, spec)
    filesystems, buckets = _storage(stack, spec, network)
    for volume, name in sorted(buckets.items()):  # the nodes use their own cluster's buckets, and no other
        for identity, account in accounts.items():
            google("storage_bucket_iam_member").StorageBucketIamMember(
                stack, f"bucket_{volume}_{'nodes' if identity == 'node' else identity}", bucket=name,
                role="roles/storage.objectUser", member=service_account_member(account),
            )
    binding = _channel(stack, spec, accounts, filesystems)
    instances = {pool.name: _pool(stack, spec, pool, subnet, accounts, binding) for pool in spec.pools}
    _names(stack, spec)
    _access(stack, spec, instances, accounts)

    nodes = [node for pool in spec.pools for node in instances[pool.name]]
    logins = [n.instance.network_interface.get(0).network_ip for n in nodes if n.role == "login"]
    public = [n.public_address.address for n in nodes if n.public_address is not None]
    links = {n.hostname: n.instance.self_link for n in nodes}
    cdk.output(stack, "login_addresses", logins, "Where users connect")
    cdk.output(stack, "node_count", sum(p.count for p in spec.pools), "Nodes in all pools")
    cdk.output(stack, "nodes", {p.name: list(p.hostnames) for p in spec.pools}, "Hostnames per pool")
    cdk.output(stack, "public_login_addresses", public, "Public addresses of the login nodes (network.public_login)")
    cdk.output(stack, "instance_self_links", links, "Compute Engine instance of each node")
    cdk.output(stack, "subnet_self_link", subnet.self_link, "The cluster's subnet")
    cdk.output(stack, "filesystems", filesystems, "Shared file systems and scratch: where to mount them from")
    cdk.output(stack, "buckets", buckets, "Object storage")


def check(spec: ClusterSpec) -> None:
    """Refuse, with what to change, a spec this platform cannot build as asked."""
    cat = catalog("gcp")
    for pool in spec.pools:
        if not pool.machine_type:
            raise ValueError(
                f"cluster {spec.name}: node pool {pool.name} has no GCP machine type for {pool.node.cores} cores and "
                f"{pool.node.memory_gb} GB in {spec.region} (the catalog resolved none; see `reconcile portability`)"
            )
        machine = cat.machine_types.get(pool.machine_type)
        if machine is None:
            raise ValueError(
                f"cluster {spec.name}: node pool {pool.name} asks for {pool.machine_type}, which the gcp catalog "
                "does not know (constructs/rpi/gcp/catalog.json)"
            )
        if pool.node.gpu_count and not machine.gpu_count and pool.node.gpu_model not in cat.gpu_models:
            raise ValueError(
                f"cluster {spec.name}: node pool {pool.name}: {pool.node.gpu_model} has no Google accelerator type "
                "in the gcp catalog's gpu_models"
            )
        try:
            local_ssd_disks(machine, pool.node.local_ssd_gb)
        except ValueError as exc:
            raise ValueError(f"cluster {spec.name}: node pool {pool.name}: {exc}") from None
    subnet = ipaddress.IPv4Network(spec.subnet.cidr)
    first, last = subnet.network_address, subnet.broadcast_address
    reserved = registry.reserved_addresses("gcp", subnet)  # gateway (.1) and the second-to-last
    for pool in spec.pools:
        for hostname, address in zip(pool.hostnames, pool.addresses, strict=True):
            if ipaddress.IPv4Address(address) in reserved:
                raise ValueError(
                    f"cluster {spec.name}: node {hostname} has address {address}, which Google Cloud reserves in "
                    f"{subnet} (the first two and the last two); node addresses must lie in {first + 2}-{last - 2}"
                )
    size = len(spec.user_data.encode())
    if size > METADATA_VALUE_LIMIT:
        raise ValueError(
            f"cluster {spec.name}: cloud-init is {size} bytes, a Compute Engine metadata value takes at most "
            f"{METADATA_VALUE_LIMIT} (move large files out of layers 2 and 3, e.g. into the registry)"
        )
    for cidr in spec.allowed_cidrs:
        if ipaddress.IPv4Network(cidr).prefixlen == 0:
            raise ValueError(
                f"cluster {spec.name}: network.allowed_cidrs holds {cidr}: this platform never opens SSH to the whole "
                "internet; list the networks users come from"
            )
    if spec.public_login and not spec.allowed_cidrs:
        raise ValueError(
            f"cluster {spec.name}: public_login needs network.allowed_cidrs: without them no one could reach the "
            "public address (IAP reaches login nodes without one)"
        )
    if spec.access and not dict(spec.labels).get(IAM_DOMAIN_LABEL):
        raise ValueError(
            f"cluster {spec.name}: access groups become Google groups <name>@<domain> on gcp, and site {spec.site} "
            f"names no domain: add `{IAM_DOMAIN_LABEL}: <your Cloud Identity domain>` to the labels of site {spec.site}"
        )
    fast = shared_on_ssd(spec)
    for volume in spec.storage:
        if volume.kind == "shared":
            try:
                filestore_capacity_gib(filestore_tier(volume.size_gb, fast), volume.size_gb)
            except ValueError as exc:
                raise ValueError(f"cluster {spec.name}: storage.{volume.name}: {exc}") from None


# ---------------------------------------------------------------- network


def node_tag(cluster: str) -> str:
    """The network tag every node of a cluster carries: what its firewall rules match."""
    return f"{cluster}-node"


def login_tag(cluster: str) -> str:
    return f"{cluster}-login"


def _subnet(stack, spec: ClusterSpec) -> tuple:
    """The site's VPC (looked up) and the cluster's subnet in it."""
    network = google("data_google_compute_network").DataGoogleComputeNetwork(
        stack, "network", name=network_name(spec.site)
    )
    subnet = google("compute_subnetwork").ComputeSubnetwork(
        stack,
        "subnet",
        name=resource_name(spec.site, spec.subnet.name),  # subnet names are per project and region
        network=network.id,
        region=spec.region,
        ip_cidr_range=spec.subnet.cidr,
        private_ip_google_access=True,  # Google APIs (logging, registries) without a public address
        log_config=FLOW_LOGS,
    )
    return network, subnet


def _names(stack, spec: ClusterSpec) -> None:
    """Each node's name in the site's private zone, at its planned address: a new node adds
    its own record and changes no other."""
    record = google("dns_record_set").DnsRecordSet
    for pool in spec.pools:
        for index, (hostname, address) in enumerate(zip(pool.hostnames, pool.addresses, strict=True)):
            record(stack, f"dns_{pool.name}_{index}", managed_zone=dns_zone_name(spec.site),
                   name=f"{hostname}.{PRIVATE_DOMAIN}.", type="A", ttl=60, rrdatas=[address])


def _firewall(stack, spec: ClusterSpec, network) -> None:
    """All traffic between the cluster's own nodes; SSH to its login nodes from the allowed
    networks and from IAP. Other clusters of the site reach these nodes only as network.admit
    lets them."""
    firewall = google("compute_firewall")
    firewall.ComputeFirewall(
        stack,
        "firewall_internal",
        name=resource_name(spec.site, spec.name, "internal"),
        network=network.id,
        direction="INGRESS",
        source_tags=[node_tag(spec.name)],
        target_tags=[node_tag(spec.name)],
        allow=[firewall.ComputeFirewallAllow(protocol="all")],
        description=f"MPI, Slurm and everything else between the nodes of cluster {spec.name}",
    )
    sources = list(dict.fromkeys([*spec.allowed_cidrs, IAP_RANGE]))
    firewall.ComputeFirewall(
        stack,
        "firewall_ssh",
        name=resource_name(spec.site, spec.name, "ssh"),
        network=network.id,
        direction="INGRESS",
        source_ranges=sources,
        target_tags=[login_tag(spec.name)],
        allow=[firewall.ComputeFirewallAllow(protocol="tcp", ports=["22"])],
        description=f"SSH to the login nodes of cluster {spec.name}: allowed networks and IAP",
    )
    # The clusters that network.admit lets in, by their nodes' tag: one way, on their ports. The
    # egress they need is GCP's implied allow, or the VPC rule of a site with `egress: private`.
    for peer in spec.admitted:
        firewall.ComputeFirewall(
            stack,
            f"firewall_from_{peer.cluster}",
            # names joined by '-' are ambiguous (a-from + b, a + from-b): the pair's hash settles it
            name=resource_name(spec.site, spec.name, "from", peer.cluster,
                               hashlib.sha256(f"{spec.name}\0{peer.cluster}".encode()).hexdigest()[:6]),
            network=network.id,
            direction="INGRESS",
            source_tags=[node_tag(peer.cluster)],
            target_tags=[node_tag(spec.name)],
            allow=[firewall.ComputeFirewallAllow(protocol=p, ports=list(peer.ports)) for p in ("tcp", "udp")]
            if peer.ports
            else [firewall.ComputeFirewallAllow(protocol="all")],
            description=f"network.admit: the nodes of cluster {peer.cluster} to those of {spec.name}, "
            + (f"ports {', '.join(peer.ports)}" if peer.ports else "every port"),
        )


# ---------------------------------------------------------------- nodes


def _public_ssh(stack, spec: ClusterSpec, pool: ComputePool, index: int, hostname: str, instance, address) -> None:
    """`network.public_login`: SSH to a login node at a public address that is a forwarding
    rule's, not the node's. External protocol forwarding delivers TCP 22 to this node alone,
    keeping the client's address (for the firewall's allowed networks and for sshd), and the
    node, with no external address, still leaves the site as its egress says (Cloud NAT, or
    nothing on a private site). The Rocky image's guest agent accepts the forwarded address."""
    target = google("compute_target_instance").ComputeTargetInstance(
        stack, f"node_{pool.name}_{index}_target", name=resource_name(spec.site, hostname), zone=spec.zone,
        instance=instance.self_link,
    )
    rule = google("compute_forwarding_rule").ComputeForwardingRule(
        stack, f"node_{pool.name}_{index}_ssh", name=resource_name(spec.site, hostname, "ssh"), region=spec.region,
        ip_address=address.address, ip_protocol="TCP", port_range="22", target=target.self_link,
        load_balancing_scheme="EXTERNAL",
    )
    # A replaced node replaces its target instance (`instance` is ForceNew), which GCP refuses to
    # delete while a rule points at it: the rule goes first, and comes back at the same address.
    rule.add_override("lifecycle.replace_triggered_by", [f"google_compute_target_instance.node_{pool.name}_{index}_target"])


def _node_accounts(stack, spec: ClusterSpec) -> dict:
    """What the nodes run as, `{identity: service account}`: each may write logs and metrics and
    read the site's registries. Login nodes have an account of their own: they run the
    controller, which adds the munge key, and a staged copy's legs, which no compute node
    (where any user's job runs) may write or forge."""
    accounts = {}
    for identity in node_identities(spec):
        accounts[identity], _ = service_account(
            stack,
            f"{identity}_account",
            # "vc" (nodes) and "vcl" (login nodes): never a landing-zone account's name
            account_id(spec.site, "vcl" if identity == "login" else "vc", spec.name),
            f"{'Login nodes' if identity == 'login' else 'Nodes'} of cluster {spec.name} on site {spec.site}",
            spec.account,
            NODE_ACCOUNT_ROLES,
        )
    return accounts


def guest_accelerators(machine: MachineType, node: NodeSpec) -> list[tuple[str, int]]:
    """(accelerator type, count) to attach to a node: none when the type has its GPUs built in.

    Accelerator-optimized types (a2, a3, g2) come with their GPUs and refuse a
    guest_accelerator block; a general-purpose type gets the node's GPUs attached.
    """
    if machine.gpu_count or not node.gpu_count:
        return []
    return [(catalog("gcp").gpu_models[node.gpu_model], node.gpu_count)]


def local_ssd_disks(machine: MachineType, size_gb: int) -> int:
    """How many 375 GiB local SSD disks to attach for `size_gb` (decimal GB) of local SSD.

    0 when nothing is asked, when the type bundles its own (a2-ultragpu and a3 come with
    theirs) or when it takes none.
    """
    if size_gb <= 0 or machine.local_ssd != "attachable":
        return 0
    most = round(machine.local_ssd_gb / LOCAL_SSD_DISK_GB)  # the catalog's figure is n disks, floored
    least = max(math.ceil(size_gb / LOCAL_SSD_DISK_GB), _fewest_local_ssds(machine))
    count = next((c for c in LOCAL_SSD_COUNTS if least <= c <= most), None)
    if count is None:
        raise ValueError(
            f"{size_gb} GB of local SSD do not fit on {machine.name}, which takes at most {most} disks of "
            f"{LOCAL_SSD_DISK_GIB} GiB ({machine.local_ssd_gb} GB; lower local_ssd_gb)"
        )
    return count


def _fewest_local_ssds(machine: MachineType) -> int:
    if machine.family.startswith("a2-"):
        return min(machine.gpu_count, 8)  # a2-highgpu-Ng takes at least N disks, 8 at most
    steps = FEWEST_LOCAL_SSDS.get(machine.family.split("-")[0], ())
    return next((fewest for vcpus, fewest in steps if machine.vcpus <= vcpus), 1)


def local_ssd_gb(machine: MachineType, node: NodeSpec) -> int:
    """The local SSD a node of `machine` has: the bundled disks, or the ones attached for it."""
    if machine.local_ssd == "bundled":
        return machine.local_ssd_gb
    return math.floor(local_ssd_disks(machine, node.local_ssd_gb) * LOCAL_SSD_DISK_GB)


class Node(NamedTuple):
    hostname: str
    role: str
    instance: Any  # google_compute_instance
    public_address: Any  # google_compute_address, or None without network.public_login


def secret_prefix(spec: ClusterSpec) -> str:
    """Secret Manager ids are project-wide: the site keeps a moving cluster's two copies apart."""
    return resource_name("vc", spec.site, spec.name, limit=40) + "-"


def _channel(stack, spec: ClusterSpec, accounts: dict, filesystems: dict) -> dict:
    """The cluster's config channel in the site's state bucket, the secret container of its
    munge key, and what the nodes may do with them: every node reads the config and the key
    and writes its own reports; login nodes also add the key (the controller's first boot)
    and run a staged copy's legs. Returns the nodes' binding: the metadata attributes the
    node package reads."""
    prefix = channel_prefix(spec.state, spec.name)
    published = []  # `current` names a version only once the version is there
    for construct_id, name, content, content_type in channel_objects(spec):
        published.append(google("storage_bucket_object").StorageBucketObject(
            stack, construct_id, bucket=spec.state.bucket, name=name, content=content, content_type=content_type,
            depends_on=published[-1:] or None,
        ))
    bucket_iam = google("storage_bucket_iam_member")
    objects_of = f"projects/_/buckets/{spec.state.bucket}/objects/{prefix}"
    grants = [
        ("config", "roles/storage.objectViewer", f"{objects_of}/config/", "node"),
        ("reports", "roles/storage.objectUser", f"{objects_of}/nodes/", "node"),
        ("tasks", "roles/storage.objectUser", f"{objects_of}/tasks/", "login"),  # a staged copy's legs, and their results
        ("staging", "roles/storage.objectUser", f"{objects_of}/staging/", "login"),  # what the legs carry
    ]
    for identity, account in accounts.items():
        who = "nodes" if identity == "node" else identity
        member = service_account_member(account)
        for name, role, where, least in grants:
            if least == "login" and identity != "login":
                continue
            expression = f'resource.name.startsWith("{where}")'
            if name == "reports" and identity == "node":
                # compute nodes write their own pools' reports only: never the controller's or a
                # login node's, whose acknowledgements a copy's freeze waits for
                expression = " || ".join(f'resource.name.startsWith("{where}{spec.name}-{p.name}-")'
                                         for p in spec.pools if p.role != "login")
                if not expression:
                    continue
            bucket_iam.StorageBucketIamMember(
                stack, f"channel_{name}_{who}", bucket=spec.state.bucket, role=role, member=member,
                condition={"title": f"vcluster {spec.name} {name}", "expression": expression},
            )
        if identity == "login":
            # rclone lists the staging area; a listing is checked on the bucket, not on its objects
            bucket_iam.StorageBucketIamMember(
                stack, "channel_list_login", bucket=spec.state.bucket, role="roles/storage.objectViewer", member=member,
                condition={"title": f"vcluster {spec.name} list",
                           "expression": f'resource.name == "projects/_/buckets/{spec.state.bucket}"'},
            )
    secret = google("secret_manager_secret").SecretManagerSecret(
        stack, "munge_key", secret_id=f"{secret_prefix(spec)}munge-key", replication={"auto": {}},
        labels={"cluster": spec.name},
    )
    for identity, account in accounts.items():
        # every node reads the key; only the controller (a login node) adds it, at its first boot
        roles = ("roles/secretmanager.secretAccessor",) + (("roles/secretmanager.secretVersionAdder",) if identity == "login" else ())
        for role in roles:
            google("secret_manager_secret_iam_member").SecretManagerSecretIamMember(
                stack, f"munge_key_{role_id(role)}{'' if identity == 'node' else '_' + identity}",
                secret_id=secret.id, role=role, member=service_account_member(account),
            )
    mounts = {fs["mount"]: fs["source"] for fs in filesystems.values() if fs.get("type") == "filestore"}
    binding = {
        "vcluster-project": spec.account,
        "vcluster-secret-prefix": secret_prefix(spec),
        "vcluster-channel": f"gs://{spec.state.bucket}/{prefix}",
        "vcluster-mounts": cdk.cdktf.Fn.jsonencode(mounts),
    }
    if spec.package_registries:
        # the site's own package registries (its landing zone's Artifact Registry), read with the
        # nodes' identity (roles/artifactregistry.reader): where the bootstrap installs from
        binding["vcluster-packages"] = json.dumps(
            # an APT repository's name is its suite
            {r.format: {"url": registry_address(spec.region, spec.account, r.format, r.name), "name": r.name}
             for r in spec.package_registries},
            sort_keys=True, separators=(",", ":"),
        )
    return binding


def _pool(stack, spec: ClusterSpec, pool: ComputePool, subnet, accounts: dict, binding: dict) -> list[Node]:
    """One instance per node, in hostname order."""
    machine = catalog("gcp").machine_types[pool.machine_type]
    module = google("compute_instance")
    policy = None
    if pool.placement == "compact" and pool.count >= 2:
        # Nodes of a tightly coupled pool close together in the data centre: lowest latency for MPI/NCCL.
        placement = google("compute_resource_policy")
        policy = placement.ComputeResourcePolicy(
            stack,
            f"placement_{pool.name}",
            name=resource_name(spec.site, spec.name, pool.name),
            region=spec.region,
            group_placement_policy={"collocation": "COLLOCATED"},
        )
    gpu = bool(pool.node.gpu_count or machine.gpu_count)
    accelerators = [
        module.ComputeInstanceGuestAccelerator(type=kind, count=count)
        for kind, count in guest_accelerators(machine, pool.node)
    ]
    disks = local_ssd_disks(machine, pool.node.local_ssd_gb)
    scratch = [module.ComputeInstanceScratchDisk(interface="NVME") for _ in range(disks)]
    tags = [node_tag(spec.name)] + ([login_tag(spec.name)] if pool.role == "login" else [])
    metadata = {"enable-oslogin": "TRUE"}  # IAM decides who logs in; SSH keys in metadata are ignored
    metadata |= {**binding, "vcluster-pool": pool.name}  # where the node package finds its channel and secrets
    image = boot_image(machine, gpu)
    if spec.user_data:
        metadata |= {"user-data": terraform_literal(spec.user_data), "startup-script": startup_script(image)}
    public = spec.public_login and pool.role == "login"
    nodes = []
    for index, (hostname, address) in enumerate(zip(pool.hostnames, pool.addresses, strict=True)):
        external = None
        if public:
            # A reserved address: the login node keeps it across replacements, so what users and
            # their networks' allow lists know stays valid.
            external = google("compute_address").ComputeAddress(
                stack, f"node_{pool.name}_{index}_public", name=resource_name(spec.site, hostname), region=spec.region
            )
        instance = module.ComputeInstance(
            stack,
            f"node_{pool.name}_{index}",
            name=hostname,
            zone=spec.zone,
            machine_type=pool.machine_type,
            tags=tags,
            labels={"pool": pool.name, "role": pool.role},
            boot_disk={
                "initialize_params": {
                    "image": image.image,
                    "size": BOOT_DISK_GB,
                    "type": BOOT_DISK_TYPE,
                }
            },
            network_interface=[
                module.ComputeInstanceNetworkInterface(
                    subnetwork=subnet.id,
                    network_ip=address,
                    nic_type="GVNIC",  # required by c3, a3 and h3; the faster NIC on every other series
                    # no access_config: no node has an address of its own (public_login's is a
                    # forwarding rule's, `_public_ssh`)
                )
            ],
            guest_accelerator=accelerators or None,
            scratch_disk=scratch or None,
            # GPU nodes cannot live-migrate, and compact placement does not promise it: such a
            # node is stopped for host maintenance and started again.
            scheduling={"on_host_maintenance": "TERMINATE" if gpu or policy else "MIGRATE", "automatic_restart": True},
            # Secure Boot on CPU nodes only: it refuses kernel modules unsigned by a key the firmware
            # trusts, and a GPU driver's module need not be signed by one.
            shielded_instance_config={
                "enable_secure_boot": not gpu,
                "enable_vtpm": True,
                "enable_integrity_monitoring": True,
            },
            # IAM decides, not scopes
            service_account={"email": accounts[node_identity(spec, pool, hostname)].email, "scopes": ["cloud-platform"]},
            metadata=metadata,
            resource_policies=[policy.id] if policy is not None else None,
            # A new machine type is applied by stopping and starting the node: same disk, same address.
            allow_stopping_for_update=True,
        )
        if external is not None:
            _public_ssh(stack, spec, pool, index, hostname, instance, external)
        # The image family moves with every release; following it would replace every node of a
        # running cluster unasked. A new image is taken when a node is replaced on purpose. The
        # first-boot data only matters at a node's first boot: a new version reaches the nodes
        # created after it, and running nodes when they are replaced on purpose (day-to-day
        # config comes through the config channel).
        ignored = ["boot_disk[0].initialize_params[0].image", 'metadata["user-data"]']
        if catalog("gcp").machine_types[pool.machine_type].local_ssd == "bundled":
            # The provider reads a type's bundled local SSDs back into scratch_disk, which is
            # ForceNew and not Computed: every later plan would replace the node and wipe
            # /scratch (hashicorp/terraform-provider-google#19648; the maintainers' workaround).
            ignored.append("scratch_disk")
        instance.add_override("lifecycle.ignore_changes", ignored)
        nodes.append(Node(hostname, pool.role, instance, external))
    cdk.rolled_by_generation(stack, pool, [n.instance for n in nodes])  # replaced on purpose: new first-boot data, new image
    return nodes


# ---------------------------------------------------------------- storage


def shared_on_ssd(spec: ClusterSpec) -> bool:
    """/home and project data on SSD where jobs read them hard: GPU pools, Slurm, applications."""
    return any(p.node.gpu_count for p in spec.pools) or spec.flavor in ("slurm", "application")


def filestore_tier(size_gb: int, fast: bool) -> str:
    """Basic SSD for a fast volume, basic HDD otherwise; zonal beyond what a basic tier holds."""
    tier = "BASIC_SSD" if fast else "BASIC_HDD"
    return tier if size_gb <= FILESTORE_TIERS[tier][1] else "ZONAL"


def filestore_capacity_gib(tier: str, size_gb: int) -> int:
    """The smallest capacity of `tier` holding `size_gb` (read as GiB: that only rounds up)."""
    smallest, largest, step = FILESTORE_TIERS[tier]
    capacity = max(smallest, math.ceil(size_gb / step) * step)
    if capacity > largest:
        raise ValueError(
            f"{size_gb} GB exceed the largest Filestore {tier} instance ({largest} GiB); split the data or "
            "lower size_gb"
        )
    return capacity


def _storage(stack, spec: ClusterSpec, network) -> tuple[dict, dict]:
    """File systems and buckets of the cluster: ({volume: mount facts}, {volume: bucket name})."""
    filesystems, buckets = {}, {}
    private_services = None  # the site's range (its landing zone allocates it), read at plan time
    for volume in spec.storage:
        if volume.kind == "shared" and private_services is None:
            private_services = google("data_google_compute_global_address").DataGoogleComputeGlobalAddress(
                stack, "private_services_range", name=private_services_name(spec.site)
            )
        if volume.kind == "object":
            bucket = private_bucket(
                stack,
                volume.name,
                # With the site: a move that keeps the source's data leaves its bucket in place,
                # and bucket names are global, so the target's bucket needs a name of its own.
                volume.adopt or bucket_name(spec.account, spec.site, spec.name, volume.name),
                spec.region,
                # versioned: an overwrite or a delete by a job or a user is undone within the
                # site's retention, after which the earlier versions go (audit.retention_days)
                # (GCS does not combine versions with a retention policy: a locked bucket keeps
                # each object unchanged instead)
                versioned=not volume.lock_days,
                log_to=access_logs_bucket(spec.account, spec.site),
                noncurrent_days=spec.retention_days,
                lock_days=volume.lock_days,
                lock_locked=volume.lock_mode == "compliance",
            )
            if volume.adopt:  # a bucket's id is its name
                cdk.adopt(bucket, volume.adopt)
            buckets[volume.name] = bucket.name
        elif volume.kind == "scratch":
            filesystems[volume.name] = _scratch(spec, volume)
        else:
            filesystems[volume.name] = _filestore(stack, spec, volume, network, private_services)
    return filesystems, buckets


def _scratch(spec: ClusterSpec, volume: StorageVolume) -> dict:
    """Scratch is each node's local SSD, striped by cloud-init: nothing to create here."""
    machines = catalog("gcp").machine_types
    per_pool = {p.name: local_ssd_gb(machines[p.machine_type], p.node) for p in spec.pools}
    per_pool = {name: gb for name, gb in per_pool.items() if gb}
    if not per_pool:
        return {
            "type": "none",
            "mount": volume.mount,
            "note": "no node has local SSD: give the compute pools local_ssd_gb to get scratch space",
        }
    return {"type": "local-ssd", "mount": volume.mount, "gb_per_node": per_pool}


def _filestore(stack, spec: ClusterSpec, volume: StorageVolume, network, private_services) -> dict:
    """A Filestore instance; `private_services`: the site's range, as a data source."""
    module = google("filestore_instance")
    tier = filestore_tier(volume.size_gb, shared_on_ssd(spec))
    capacity = filestore_capacity_gib(tier, volume.size_gb)
    share = volume.name.replace("-", "_")[:16]  # share names: letters, digits and '_', at most 16
    fs = module.FilestoreInstance(
        stack,
        f"storage_{volume.name}",
        # An adopted instance keeps its name: projects/P/locations/ZONE/instances/NAME
        name=volume.adopt.rsplit("/", 1)[-1] if volume.adopt else resource_name(spec.site, spec.name, volume.name),
        location=spec.zone,
        tier=tier,
        file_shares={
            "name": share,
            "capacity_gb": capacity,
            # Only this cluster's subnet mounts it; root on the nodes creates the home directories.
            "nfs_export_options": [
                module.FilestoreInstanceFileSharesNfsExportOptions(
                    ip_ranges=[spec.subnet.cidr], access_mode="READ_WRITE", squash_mode="NO_ROOT_SQUASH"
                )
            ],
        },
        networks=[
            module.FilestoreInstanceNetworks(
                network=network.name, modes=["MODE_IPV4"], connect_mode="PRIVATE_SERVICE_ACCESS"
            )
        ],
    )
    if volume.adopt:
        cdk.adopt(fs, volume.adopt)
    # NFSv3 calls back into its clients (lock manager, status monitor) on ports the client
    # picks: the rule admits the site's private-services range, where every Filestore instance
    # of the site takes its addresses, and nothing else. Not the instance's own addresses: they
    # are unknown at the first plan, and the provider refuses a rule whose sources it cannot see
    # (hashicorp/terraform-provider-google#10894). The range is read at plan time.
    firewall = google("compute_firewall")
    firewall.ComputeFirewall(
        stack,
        f"firewall_storage_{volume.name}",
        name=resource_name(spec.site, spec.name, volume.name, "nfs"),
        network=network.id,
        direction="INGRESS",
        source_ranges=[f"{private_services.address}/{cdk.cdktf.Token.as_string(private_services.prefix_length)}"],
        target_tags=[node_tag(spec.name)],
        allow=[firewall.ComputeFirewallAllow(protocol="all")],
        description=f"NFS callbacks from file system {volume.name} to the nodes of cluster {spec.name}",
    )
    address = cdk.cdktf.Fn.element(fs.networks.get(0).ip_addresses, 0)
    return {
        "type": "filestore",
        "tier": tier,
        "capacity_gib": capacity,
        "mount": volume.mount,
        "source": f"{address}:/{share}",
    }


# ---------------------------------------------------------------- access


def iam_domain(spec: ClusterSpec) -> str:
    return dict(spec.labels)[IAM_DOMAIN_LABEL]


def _access(stack, spec: ClusterSpec, instances: dict, accounts: dict) -> None:
    """Per access group: IAP tunnelling to the login nodes, where sshd and SSSD decide who logs
    in, as the user's own directory account. Admin and operator groups also get OS Login with
    sudo on every node and act as the nodes' service accounts (OS Login asks for that on
    instances that run as one); no other group gets a role that gives a shell from the cloud
    or the nodes' identity (`roles/compute.osLogin`, `osAdminLogin`, `iam.serviceAccountUser`)."""
    if not spec.access:
        return
    login = google("compute_instance_iam_member").ComputeInstanceIamMember
    tunnel = google("iap_tunnel_instance_iam_member").IapTunnelInstanceIamMember
    act_as = google("service_account_iam_member").ServiceAccountIamMember
    domain = iam_domain(spec)
    for group in spec.access:
        member = f"group:{group.name}@{domain}"
        admin = group.role in NODE_ROLES
        for pool in spec.pools:
            if not admin and pool.role != "login":
                continue
            for index, node in enumerate(instances[pool.name]):
                if admin:
                    login(
                        stack,
                        f"group_{group.name}_login_{pool.name}_{index}",
                        instance_name=node.instance.name,
                        zone=spec.zone,
                        role="roles/compute.osAdminLogin",
                        member=member,
                    )
                if pool.role == "login":  # the firewall lets IAP reach login nodes only
                    tunnel(
                        stack,
                        f"group_{group.name}_iap_{pool.name}_{index}",
                        instance=node.instance.name,
                        zone=spec.zone,
                        role="roles/iap.tunnelResourceAccessor",
                        member=member,
                    )
        if not admin:
            continue
        for identity, account in accounts.items():
            act_as(
                stack,
                f"group_{group.name}_act_as_{'nodes' if identity == 'node' else identity}",
                service_account_id=account.name,
                role="roles/iam.serviceAccountUser",
                member=member,
            )
