"""A Google Cloud landing zone: the VPC with its NAT and firewall, a private GKE control plane,
identities and secrets for the landing-zone services, Artifact Registry, and buckets.

One stack per site. Cluster stacks find the VPC by its name (`rpi.spec.network_name`), because a
cluster stack cannot read another stack's resources. The small helpers at the end (names,
buckets, IAM members) are the conventions both kinds of stack follow.

Blocks inside a list are given as struct classes, never as dicts: jsii would pass a dict's
snake_case keys through unconverted and cdktf would drop them, leaving `[{}]` in the JSON.

Address plan of the VPC (`site_ranges`). The spec gives the services subnet; everything else
the landing zone needs is carved from the lower half of the VPC's range, because the clusters
range is the upper half on every site (see README and `sites/`; the spec does not carry it):
GKE's pod and service ranges (secondary ranges of the services subnet), the /28 of GKE's
control plane, and the private services access range that Filestore instances of every
cluster take their addresses from. Cluster stacks therefore never have to coordinate
addresses with each other: their subnets come from the clusters range, their file systems
from the private services range.

Firewall: Google Cloud denies all ingress that no rule allows. Each stack opens only what it
owns: this one lets the VPC reach the control nodes and IAP reach them over SSH; a cluster
stack opens its own nodes (see `cluster.py`).

Every project-wide name (service accounts, secrets, GKE, firewall rules) starts with the site,
because two sites may share a project (the example sites do). The project's APIs (compute,
container, artifactregistry, secretmanager, file, servicenetworking, iap) are enabled when the
project is set up: they belong to the project, not to one of the sites in it.

The Kubernetes namespaces of the services are created by the services' own deployment (the
kubernetes provider is not part of this stack); here each service gets the Google service
account its Kubernetes service account `<name>/<name>` acts as through Workload Identity.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence

from rpi import cdk
from rpi.catalog import catalog
from rpi.spec import PRIVATE_DOMAIN, SERVICE_DOMAIN, ComputePool, LandingZoneSpec, landing_zone_ports, service_ip

# Where Identity-Aware Proxy's TCP forwarding comes from (Google documents this range).
IAP_RANGE = "35.235.240.0/20"
# private.googleapis.com: Google's APIs for Private Google Access, routed inside Google's network.
PRIVATE_GOOGLE_ACCESS_RANGE = "199.36.153.8/30"

# Ranges carved from the lower half of the VPC, in this order, each in the first free block of
# its size: largest first, so the small ones fill the gaps the large ones leave. A range added
# at the end never moves the ones before it.
SITE_RANGES = (
    ("gke-pods", 20),  # a /24 per node at GKE's default of 110 pods: 16 control nodes
    ("private-services", 20),  # Filestore takes a /29 (basic) or a /26 (zonal) per instance
    ("gke-services", 24),
    ("gke-control-plane", 28),  # GKE requires exactly a /28
)


# What GKE nodes need: Google's minimal node role, and reading the site's own registries.
# VPC flow logs of every subnet, with their metadata, sampled by half; in place on a running
# subnet. Cloud Logging keeps them for the retention of the project's log bucket.
FLOW_LOGS = {"aggregation_interval": "INTERVAL_5_SEC", "flow_sampling": 0.5, "metadata": "INCLUDE_ALL_METADATA"}
GKE_NODE_ROLES = ("roles/container.defaultNodeServiceAccount", "roles/artifactregistry.reader")

REGISTRY_FORMATS = {"container": "DOCKER", "deb": "APT", "rpm": "YUM"}

CONTROL_FAMILY = "n2-standard"  # general purpose: control nodes run services, not jobs
CONTROL_DISK_GB = 100

# The MTU Google recommends for HPC: MPI and NFS move fewer, larger packets.
VPC_MTU = 8896


def google(submodule: str):
    """One submodule of the Google provider package, loaded on its own (see `cdk.provider_module`)."""
    return cdk.provider_module("google", submodule)


def control_tag(site: str) -> str:
    """The network tag of the GKE control nodes, which the landing zone's firewall rules target."""
    return f"{site}-control"


def build(stack, spec: LandingZoneSpec) -> None:
    """Add the whole landing zone to `stack` (backend and provider are set by the platform)."""
    ranges = site_ranges(spec.network.cidr, [s.cidr for s in spec.network.subnets])
    network, subnets = _network(stack, spec, ranges)
    _firewall(stack, spec, network)
    _dns(stack, spec, network)
    if spec.network.egress == "private":
        _private_google_access_dns(stack, spec, network)
    gke = _gke(stack, spec, network, subnets["services"], ranges)
    identities = _service_identities(stack, spec, gke)
    _secrets(stack, spec, identities)
    registries = _registries(stack, spec)
    logs = _access_logs(stack, spec)
    buckets = {
        # Versioned: the services' own state (Vault storage, Terraform of the services layer).
        "state": private_bucket(
            stack, "state", bucket_name(spec.account, spec.site, "state"), spec.region, versioned=True, log_to=logs.name
        ),
        # Not versioned: a build cache is rebuilt, old versions would only cost.
        "build_cache": private_bucket(
            stack, "build_cache", bucket_name(spec.account, spec.site, "build-cache"), spec.region, versioned=False,
            log_to=logs.name,
        ),
    }

    cdk.output(stack, "network", network.name, "The site's VPC")
    cdk.output(stack, "subnets", {name: s.self_link for name, s in sorted(subnets.items())}, "Subnets by name")
    cdk.output(stack, "ranges", ranges, "Address ranges carved from the VPC's lower half")
    cdk.output(stack, "gke_cluster_name", gke.name, "The control plane's GKE cluster")
    # Not sensitive: a private address, reachable only from the VPC's authorized range, and
    # hiding it would only make plans harder to read.
    cdk.output(stack, "gke_endpoint", gke.endpoint, "Private endpoint of the GKE control plane")
    cdk.output(stack, "registries", registries, "Artifact Registry repositories: where clients point")
    cdk.output(stack, "buckets", {name: b.name for name, b in buckets.items()}, "Cloud Storage buckets")


# ---------------------------------------------------------------- network


def site_ranges(cidr: str, reserved: Sequence[str]) -> dict[str, str]:
    """{range name: CIDR} for SITE_RANGES: each the first free block of its size in the lower half.

    Free means: in the lower half of `cidr` and overlapping none of `reserved` (the services
    subnet) nor a range taken before it.
    """
    network = ipaddress.IPv4Network(cidr)
    lower_half = next(network.subnets(prefixlen_diff=1))
    taken = [ipaddress.IPv4Network(r) for r in reserved]
    out = {}
    for name, prefix in SITE_RANGES:
        blocks = lower_half.subnets(new_prefix=prefix) if prefix > lower_half.prefixlen else iter(())
        block = next((b for b in blocks if not any(b.overlaps(t) for t in taken)), None)
        if block is None:
            raise ValueError(
                f"VPC {cidr} is too small: the landing zone needs a free /{prefix} for {name} in its lower half "
                f"{lower_half} beside the services subnet (use /16, or shrink the services subnet)"
            )
        taken.append(block)
        out[name] = str(block)
    return out


def _network(stack, spec: LandingZoneSpec, ranges: dict[str, str]) -> tuple:
    """VPC, subnets, Cloud Router with NAT, private services access. Returns (network, {name: subnet})."""
    network = google("compute_network").ComputeNetwork(
        stack,
        "vpc",
        name=spec.network.name,
        auto_create_subnetworks=False,  # every subnet comes from the site's address plan
        mtu=VPC_MTU,
    )
    subnetwork = google("compute_subnetwork")
    subnets = {}
    for subnet in spec.network.subnets:
        secondary = []
        if subnet.name == "services":  # GKE's nodes live here, its pods and services beside them
            secondary = [
                subnetwork.ComputeSubnetworkSecondaryIpRange(range_name=name, ip_cidr_range=ranges[name])
                for name in ("gke-pods", "gke-services")
            ]
        subnets[subnet.name] = subnetwork.ComputeSubnetwork(
            stack,
            f"subnet_{subnet.name}",
            name=f"{spec.site}-{subnet.name}",
            network=network.id,
            region=spec.region,
            ip_cidr_range=subnet.cidr,
            private_ip_google_access=True,  # Google APIs without a public address
            secondary_ip_range=secondary or None,
            log_config=FLOW_LOGS,
        )
    router = google("compute_router").ComputeRouter(
        stack, "router", name=f"{spec.site}-router", network=network.id, region=spec.region
    )
    # All subnets, present and future: the subnets that cluster stacks add get egress unasked.
    # None on a site with `egress: private`: its nodes have private endpoints only.
    if spec.network.egress == "nat":
        _nat(stack, spec, router)
    _private_services(stack, spec, network, ranges)
    return network, subnets


def _nat(stack, spec: LandingZoneSpec, router) -> None:
    google("compute_router_nat").ComputeRouterNat(
        stack,
        "nat",
        name=f"{spec.site}-nat",
        router=router.name,
        region=spec.region,
        nat_ip_allocate_option="AUTO_ONLY",
        source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
        log_config={"enable": True, "filter": "ERRORS_ONLY"},
    )


def _private_services(stack, spec: LandingZoneSpec, network, ranges: dict[str, str]) -> None:
    """Private services access: Filestore instances of every cluster take addresses from here."""
    private_services = ipaddress.IPv4Network(ranges["private-services"])
    allocation = google("compute_global_address").ComputeGlobalAddress(
        stack,
        "private_services_range",
        name=private_services_name(spec.site),
        purpose="VPC_PEERING",
        address_type="INTERNAL",
        address=str(private_services.network_address),
        prefix_length=private_services.prefixlen,
        network=network.id,
    )
    # Removing the connection fails while Google still holds producer resources behind it, for
    # a while even after the last Filestore instance is gone ("Producer services ... still using
    # this connection", hashicorp/terraform-provider-google#16275, #19908): a destroy abandons
    # it, and the peering goes with the network.
    google("service_networking_connection").ServiceNetworkingConnection(
        stack,
        "private_services",
        network=network.id,
        service="servicenetworking.googleapis.com",
        reserved_peering_ranges=[allocation.name],
        deletion_policy="ABANDON",
    )


def private_services_name(site: str) -> str:
    """The site's private-services range: cluster stacks read it (their storage firewalls)."""
    return f"{site}-private-services"


def dns_zone_name(site: str) -> str:
    """The site's private Cloud DNS zone: cluster stacks add their nodes' records to it by name."""
    return resource_name(site, "vcluster")


def _dns(stack, spec: LandingZoneSpec, network) -> None:
    """The site's private zone, seen from its VPC only: `HOST.vcluster.internal` for every node
    (the cluster stacks add those) and `NAME.svc.vcluster.internal` for every landing-zone service."""
    zones = google("dns_managed_zone")
    zone = zones.DnsManagedZone(
        stack,
        "dns_private",
        name=dns_zone_name(spec.site),
        dns_name=f"{PRIVATE_DOMAIN}.",
        visibility="private",
        private_visibility_config=zones.DnsManagedZonePrivateVisibilityConfig(
            networks=[zones.DnsManagedZonePrivateVisibilityConfigNetworks(network_url=network.id)]
        ),
        description=f"nodes and services of site {spec.site}",
    )
    for service in spec.services:
        google("dns_record_set").DnsRecordSet(
            stack, f"dns_{service.name}", managed_zone=zone.name, name=f"{service.name}.{SERVICE_DOMAIN}.", type="A",
            ttl=300, rrdatas=[service_ip(service.address)],
        )


def _firewall(stack, spec: LandingZoneSpec, network) -> None:
    """Who reaches the control nodes: the services subnet (the control nodes themselves, their
    pods) and the site's runner ranges on anything; the cluster subnets on the services' ports
    only (`rpi.spec.SERVICE_PORTS`); IAP on SSH, for repairs. Nothing else: Google Cloud denies
    any ingress that no rule allows. On a site with `egress: private`, the nodes of every subnet
    reach inside the VPC and Google's private API range only.

    All in place on a running landing zone: a rule's `source_ranges`, `allow` and `description`
    are not ForceNew (provider 6.50.0), and the rules added are new resources."""
    firewall = google("compute_firewall")
    firewall.ComputeFirewall(
        stack,
        "firewall_internal",
        name=f"{spec.site}-internal-to-control",
        network=network.id,
        direction="INGRESS",
        source_ranges=list(dict.fromkeys([s.cidr for s in spec.network.subnets] + list(spec.network.runner_ranges))),
        target_tags=[control_tag(spec.site)],
        allow=[firewall.ComputeFirewallAllow(protocol="all")],
        description="The services subnet and the site's runners reach the control nodes",
    )
    if spec.network.clusters_range:
        ports = landing_zone_ports()
        firewall.ComputeFirewall(
            stack,
            "firewall_clusters_to_services",
            name=f"{spec.site}-clusters-to-services",
            network=network.id,
            direction="INGRESS",
            source_ranges=[spec.network.clusters_range],
            target_tags=[control_tag(spec.site)],
            allow=[firewall.ComputeFirewallAllow(protocol="tcp", ports=[str(p) for p in ports])],
            description="The cluster subnets reach the services' ports: "
            + ", ".join(f"{'/'.join(names)} {port}" for port, names in ports.items()),
        )
    firewall.ComputeFirewall(
        stack,
        "firewall_iap_ssh",
        name=f"{spec.site}-iap-ssh-to-control",
        network=network.id,
        direction="INGRESS",
        source_ranges=[IAP_RANGE],
        target_tags=[control_tag(spec.site)],
        allow=[firewall.ComputeFirewallAllow(protocol="tcp", ports=["22"])],
        description="SSH through Identity-Aware Proxy, for repairs",
    )
    if spec.network.egress == "private":
        # Allowed egress at the default priority, every other destination refused just above
        # the implied allow (65535): the VPC (its subnets, GKE's control plane, Filestore's
        # peered range) and Google's private API addresses. The metadata server, which answers
        # DNS, is reached whatever egress rules say.
        firewall.ComputeFirewall(
            stack,
            "firewall_egress_private",
            name=f"{spec.site}-egress-private",
            network=network.id,
            direction="EGRESS",
            priority=1000,
            destination_ranges=[spec.network.cidr, PRIVATE_GOOGLE_ACCESS_RANGE],
            allow=[firewall.ComputeFirewallAllow(protocol="all")],
            description="egress: private: the VPC and Google's private API range",
        )
        firewall.ComputeFirewall(
            stack,
            "firewall_egress_deny",
            name=f"{spec.site}-egress-deny",
            network=network.id,
            direction="EGRESS",
            priority=65000,
            destination_ranges=["0.0.0.0/0"],
            deny=[firewall.ComputeFirewallDeny(protocol="all")],
            description="egress: private: nothing else leaves the VPC",
        )


def _private_google_access_dns(stack, spec: LandingZoneSpec, network) -> None:
    """On a site with `egress: private`, Google's APIs and Artifact Registry by their usual names
    at the addresses of private.googleapis.com, from this VPC only (as Google documents for
    Private Google Access without a default route to the internet)."""
    zones = google("dns_managed_zone")
    record = google("dns_record_set").DnsRecordSet
    addresses = [str(a) for a in ipaddress.IPv4Network(PRIVATE_GOOGLE_ACCESS_RANGE)]
    for label, domain in (("googleapis", "googleapis.com"), ("pkg_dev", "pkg.dev")):
        zone = zones.DnsManagedZone(
            stack,
            f"dns_{label}",
            name=resource_name(spec.site, label.replace("_", "-")),
            dns_name=f"{domain}.",
            visibility="private",
            private_visibility_config=zones.DnsManagedZonePrivateVisibilityConfig(
                networks=[zones.DnsManagedZonePrivateVisibilityConfigNetworks(network_url=network.id)]
            ),
            description=f"{domain} through Private Google Access (site {spec.site}, egress: private)",
        )
        if domain == "googleapis.com":
            record(stack, f"dns_{label}_private", managed_zone=zone.name, name="private.googleapis.com.", type="A",
                   ttl=300, rrdatas=addresses)
            target = "private.googleapis.com."
        else:
            record(stack, f"dns_{label}_apex", managed_zone=zone.name, name=f"{domain}.", type="A", ttl=300,
                   rrdatas=addresses)
            target = f"{domain}."
        record(stack, f"dns_{label}_wildcard", managed_zone=zone.name, name=f"*.{domain}.", type="CNAME", ttl=300,
               rrdatas=[target])


# ---------------------------------------------------------------- control plane


def control_machine_type(pool: ComputePool, region: str) -> str:
    """The smallest n2-standard type of the catalog with the cores and memory of a control node.

    A pool whose catalog type is resolved keeps it; n2-standard is the general-purpose default.
    """
    if pool.machine_type:
        return pool.machine_type
    fitting = sorted(
        (
            m
            for m in catalog("gcp").offered(region)
            if m.family == CONTROL_FAMILY and m.cores >= pool.node.cores and m.memory_gb >= pool.node.memory_gb
        ),
        key=lambda m: (m.cores, m.memory_gb, m.name),
    )
    if not fitting:
        raise ValueError(
            f"control nodes of {pool.node.cores} cores and {pool.node.memory_gb} GB: no {CONTROL_FAMILY} type in "
            f"{region} is that large (lower services.control_nodes in the site)"
        )
    return fitting[0].name


def node_zones(count: int, zones: Sequence[str]) -> tuple[list[str], int]:
    """(zones, nodes per zone) for a GKE node pool of `count` nodes on a site with `zones`.

    GKE puts the same number of nodes in every zone of a pool, so the pool spans the most of
    the site's zones (in order) that divide `count`: 3 nodes on 3 zones are one per zone,
    3 nodes on 2 zones all go to the first zone. The total is always `count`.
    """
    spread = max(k for k in range(1, len(zones) + 1) if count % k == 0)
    return list(zones[:spread]), count // spread


def _gke(stack, spec: LandingZoneSpec, network, subnet, ranges: dict[str, str]):
    """A private, regional GKE cluster with Workload Identity and one node pool sized from the spec.

    Regional: the control plane survives the loss of a zone. Private: nodes have no public
    address and the API answers only inside the VPC, so the services layer is deployed from
    there. GKE gives the nodes their addresses in the services subnet: the control addresses
    of the spec are not used on GCP.
    """
    container = google("container_cluster")
    cluster = container.ContainerCluster(
        stack,
        "gke",
        name=f"{spec.site}-control",
        location=spec.region,
        network=network.id,
        subnetwork=subnet.id,
        networking_mode="VPC_NATIVE",
        ip_allocation_policy={
            "cluster_secondary_range_name": "gke-pods",
            "services_secondary_range_name": "gke-services",
        },
        private_cluster_config={
            "enable_private_nodes": True,
            "enable_private_endpoint": True,
            "master_ipv4_cidr_block": ranges["gke-control-plane"],
        },
        master_authorized_networks_config={
            # The services subnet and the site's runners; never the cluster subnets (in place)
            "cidr_blocks": [
                container.ContainerClusterMasterAuthorizedNetworksConfigCidrBlocks(cidr_block=cidr, display_name=name)
                for cidr, name in authorized_networks(spec)
            ]
        },
        workload_identity_config={"workload_pool": workload_pool(spec.account)},
        # The control plane's own logs too (the API server's, the scheduler's, the controller
        # manager's), beside the system components' and the workloads' (changed in place).
        # Who called the API is in Cloud Audit Logs, which the project keeps.
        logging_config={"enable_components": [
            "SYSTEM_COMPONENTS", "WORKLOADS", "APISERVER", "SCHEDULER", "CONTROLLER_MANAGER"]},
        # Kubernetes network policies are enforced (Calico): the services' own policies decide
        # which pod answers whom. Both are changed in place (neither is ForceNew in provider
        # 6.50.0); on a running site GKE then recreates the node pool's nodes one by one.
        addons_config=container.ContainerClusterAddonsConfig(
            network_policy_config=container.ContainerClusterAddonsConfigNetworkPolicyConfig(disabled=False)),
        network_policy={"enabled": True, "provider": "CALICO"},
        # Traffic between pods on one node goes through the VPC too, so the flow logs see it
        # (in place).
        enable_intranode_visibility=True,
        # Kubernetes version left to the channel: upgrades come from GKE, not as drift.
        release_channel={"channel": "REGULAR"},
        # GKE requires a first node pool; ours is managed on its own below.
        remove_default_node_pool=True,
        initial_node_count=1,
        # Removing a site is reviewed in its pull request's plan; Terraform's own guard (on by
        # default for GKE) would only make that reviewed apply fail.
        deletion_protection=False,
    )
    pool = spec.control_plane
    account, granted = service_account(
        stack, "gke_nodes", account_id(spec.site, "gke-nodes"), f"GKE control nodes of site {spec.site}", spec.account,
        GKE_NODE_ROLES,
    )
    zones, per_zone = node_zones(pool.count, spec.zones)
    google("container_node_pool").ContainerNodePool(
        stack,
        "control_nodes",
        name=pool.name,
        cluster=cluster.id,
        location=spec.region,
        node_locations=zones,
        node_count=per_zone,
        node_config={
            "machine_type": control_machine_type(pool, spec.region),
            "disk_size_gb": CONTROL_DISK_GB,
            "disk_type": "pd-balanced",
            "service_account": account.email,
            "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],  # IAM decides, not scopes
            "workload_metadata_config": {"mode": "GKE_METADATA"},  # pods see their own identity only
            "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
            "tags": [control_tag(spec.site)],
        },
        management={"auto_repair": True, "auto_upgrade": True},
        depends_on=granted,  # nodes write logs from their first boot
    )
    return cluster


def authorized_networks(spec: LandingZoneSpec) -> list[tuple[str, str]]:
    """(CIDR, display name) of what may reach the Kubernetes API: the services subnet, where the
    services layer is deployed from, and the site's runner ranges."""
    named = [(s.cidr, f"{s.name} subnet") for s in spec.network.subnets]
    named += [(cidr, f"runners {i}") for i, cidr in enumerate(spec.network.runner_ranges)]
    first: dict[str, str] = {}
    for cidr, name in named:
        first.setdefault(cidr, name)
    return list(first.items())


def workload_pool(project: str) -> str:
    """The Workload Identity pool of a project's GKE clusters (one per project, named by Google)."""
    return f"{project}.svc.id.goog"


def workload_subject(site: str, service: str) -> str:
    """The Kubernetes service account (NAMESPACE/NAME) a service of `site` runs as.

    The Workload Identity pool is the project's: every GKE cluster of the project shares it.
    Its name carries the site, so that two sites in one project cannot act as each other's
    services (the one pool would take `vault/vault` of either cluster for both).
    """
    return f"{service}/{site}-{service}"


def _service_identities(stack, spec: LandingZoneSpec, gke) -> dict:
    """Each service's Google service account, which its Kubernetes service account acts as.

    {service name: service account}. The binding needs the project's Workload Identity pool,
    which exists once a cluster with Workload Identity does: hence the explicit dependency.
    """
    make = google("service_account").ServiceAccount
    bind = google("service_account_iam_member").ServiceAccountIamMember
    identities = {}
    for service in spec.services:
        account = make(
            stack,
            f"service_{service.name}",
            account_id=account_id(spec.site, service.name),
            display_name=f"{service.name} of site {spec.site}",
        )
        bind(
            stack,
            f"service_{service.name}_workload_identity",
            service_account_id=account.name,
            role="roles/iam.workloadIdentityUser",
            member=f"serviceAccount:{workload_pool(spec.account)}[{workload_subject(spec.site, service.name)}]",
            depends_on=[gke],
        )
        identities[service.name] = account
    return identities


def _secrets(stack, spec: LandingZoneSpec, identities: dict) -> dict:
    """Secret Manager containers, one per secret a service needs; only that service may read it.

    Replicated in the site's region only: a secret stays where the site's labels say its data
    may be (user-managed replication; automatic replication would copy it worldwide).
    """
    module = google("secret_manager_secret")
    grant = google("secret_manager_secret_iam_member").SecretManagerSecretIamMember
    secrets = {}
    for service in spec.services:
        for name in service.secret_names():
            if name not in secrets:
                secrets[name] = module.SecretManagerSecret(
                    stack,
                    f"secret_{name}",
                    secret_id=f"{spec.site}-{name}",
                    replication={
                        "user_managed": {
                            "replicas": [module.SecretManagerSecretReplicationUserManagedReplicas(location=spec.region)]
                        }
                    },
                )
            grant(
                stack,
                f"secret_{name}_{service.name}",
                secret_id=secrets[name].secret_id,
                role="roles/secretmanager.secretAccessor",
                member=service_account_member(identities[service.name]),
            )
    return secrets


def _registries(stack, spec: LandingZoneSpec) -> dict[str, str]:
    """One Artifact Registry repository per registry: {name: the address clients configure}.

    For APT the address is the project's repository root; the repository's name is the suite.
    """
    make = google("artifact_registry_repository").ArtifactRegistryRepository
    out = {}
    for registry in spec.registries:
        fmt = REGISTRY_FORMATS[registry.format]
        repo = make(
            stack,
            f"registry_{registry.format}",
            repository_id=registry.name,
            location=spec.region,
            format=fmt,
            description=f"{registry.format} packages of site {spec.site}",
            # A tag always names the same image: reproducible clusters.
            docker_config={"immutable_tags": True} if fmt == "DOCKER" else None,
        )
        out[registry.name] = registry_address(spec.region, spec.account, registry.format, repo.repository_id)
    return out


def registry_address(region: str, project: str, fmt: str, repository: str) -> str:
    """Where clients reach an Artifact Registry repository. For APT it is the project's
    repository root, and the repository's name is the suite."""
    kind = REGISTRY_FORMATS[fmt]
    host = f"{region}-{kind.lower()}.pkg.dev"
    return {
        "DOCKER": f"{host}/{project}/{repository}",
        "APT": f"https://{host}/projects/{project}",
        "YUM": f"https://{host}/projects/{project}/{repository}",
    }[kind]


# ---------------------------------------------------------------- shared with cluster stacks

_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def resource_name(*parts: str, limit: int = 63) -> str:
    """A deterministic name for a project-wide resource: the parts joined with '-'.

    Too long a name keeps its start and ends with 8 hex digits of its hash, so it stays
    unique and the same in every run.
    """
    name = "-".join(parts).lower()
    if len(name) > limit:
        name = name[: limit - 9].rstrip("-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid Google Cloud name: lowercase letters, digits and '-'")
    return name


def service_account(stack, construct_id: str, account: str, display_name: str, project: str, roles) -> tuple:
    """A service account and its roles on the project (`CONSTRUCT_ID_ROLE`): (account, grants)."""
    made = google("service_account").ServiceAccount(stack, construct_id, account_id=account, display_name=display_name)
    grants = [
        google("project_iam_member").ProjectIamMember(
            stack, f"{construct_id}_{role_id(role)}", project=project, role=role, member=service_account_member(made),
        )
        for role in roles
    ]
    return made, grants


def account_id(*parts: str) -> str:
    """A service account id (6 to 30 characters) from the parts, shortened like `resource_name`."""
    name = resource_name(*parts, limit=30)
    if len(name) < 6:
        name = resource_name(name, "sa", limit=30)
    return name


def role_id(role: str) -> str:
    """A construct id for an IAM role: `roles/logging.logWriter` -> `logging_logwriter`."""
    return _snake(role.removeprefix("roles/"))


def service_account_member(account) -> str:
    return f"serviceAccount:{account.email}"


_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")


def bucket_name(*parts: str) -> str:
    """A deterministic bucket name, shortened like `resource_name`; bucket names are global, so
    they start with the project."""
    name = "-".join(parts).lower()
    if len(name) > 63:
        name = name[:54].rstrip("-_") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    if not _BUCKET_NAME.match(name) or name.startswith("goog") or "google" in name:
        raise ValueError(
            f"bucket name {name!r} is not valid: lowercase letters, digits, '-' and '_', "
            "not starting with 'goog' nor containing 'google'"
        )
    return name


def access_logs_bucket(account: str, site: str) -> str:
    """The site's bucket of usage logs: every bucket of the site logs there."""
    return bucket_name(account, site, "access-logs")


# Cloud Storage writes usage logs as this group, which needs to create objects in the log bucket
# (cloud.google.com/storage/docs/access-logs).
STORAGE_ANALYTICS = "group:cloud-storage-analytics@google.com"


def _access_logs(stack, spec: LandingZoneSpec):
    """Where the site's buckets log who read and wrote what (Cloud Storage usage logs), kept for
    the site's retention; each bucket's logging block is changed in place (not ForceNew)."""
    logs = private_bucket(stack, "access_logs", access_logs_bucket(spec.account, spec.site), spec.region, versioned=False,
                          expire_days=spec.log_retention_days)
    google("storage_bucket_iam_member").StorageBucketIamMember(
        stack, "bucket_access_logs_writer", bucket=logs.name, role="roles/storage.objectCreator", member=STORAGE_ANALYTICS,
    )
    return logs


def private_bucket(stack, construct_id: str, name: str, region: str, versioned: bool, noncurrent_days: int = 0, log_to: str = "",
                   lock_days: int = 0, lock_locked: bool = False, expire_days: int = 0):
    """A bucket in the site's region that no one outside the project can read.

    Uniform access: IAM alone decides, no object ACLs. Public access prevention enforced:
    not even a later IAM grant to allUsers can open it. `noncurrent_days`: a versioned
    bucket deletes an object's earlier versions that long after a newer one replaced them.
    `log_to`: the bucket its usage logs go to. `lock_days`: its retention policy
    (`lock_locked`: locked for good). `expire_days`: every object is deleted that old.
    """
    bucket = google("storage_bucket")
    # the struct classes, not dicts: jsii reads a dict's keys as the provider's camelCase names
    # and drops the others silently, which would leave a Delete rule with no condition
    if expire_days:
        condition = bucket.StorageBucketLifecycleRuleCondition(age=expire_days)
    else:
        condition = bucket.StorageBucketLifecycleRuleCondition(days_since_noncurrent_time=noncurrent_days)
    expiry = {"lifecycle_rule": [bucket.StorageBucketLifecycleRule(
        action=bucket.StorageBucketLifecycleRuleAction(type="Delete"), condition=condition,
    )]}
    return bucket.StorageBucket(
        stack,
        f"bucket_{construct_id}",
        name=name,
        location=region.upper(),  # how the API reports it: no perpetual diff
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        versioning={"enabled": versioned},
        # (kept on a bucket whose versioning a lock turned off: its earlier versions still go)
        **(expiry if noncurrent_days or expire_days else {}),
        # who read and wrote what: `log_to`, the site's usage-log bucket, under the bucket's name
        **({"logging": bucket.StorageBucketLogging(log_bucket=log_to, log_object_prefix=name)} if log_to else {}),
        # object lock: no object is deleted or replaced before it is `lock_days` old (in place;
        # `is_locked` makes that permanent, and the bucket cannot go before its objects)
        **({"retention_policy": bucket.StorageBucketRetentionPolicy(retention_period=lock_days * 86400, is_locked=lock_locked)}
           if lock_days else {}),
    )


def _snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
