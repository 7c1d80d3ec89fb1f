"""An AWS landing zone: the VPC and its routes, an EKS control plane, identities for the
landing-zone services, registries, secrets and a state bucket.

One stack per site. Cluster stacks find what they share with it (the VPC, the private route
table) by the Name tags set here, through `rpi.spec.network_name` and `private_route_table_name`, because a
cluster stack cannot read another stack's resources. The small helpers at the end (policies,
roles, private buckets) are the conventions both kinds of stack follow.

Blocks inside a list are given as struct classes, never as dicts: jsii would pass a dict's
snake_case keys through unconverted and cdktf would drop them, leaving `[{}]` in the JSON.

Address plan of the VPC (`zone_subnets`): the services subnet from the spec is the private
subnet of the first zone. Every zone also gets a public /24 (the first zone's holds the NAT
gateway), and every zone after the first a private /24, so that EKS has private subnets in two
zones. Those /24s come from the lower half of the VPC's range, because the clusters range is
the upper half on every site (see README and `sites/`); the spec does not carry that range.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Sequence

from rpi import cdk
from rpi.spec import PRIVATE_DOMAIN, SERVICE_DOMAIN, ComputePool, LandingZoneSpec, landing_zone_ports, service_ip

# Managed policies, by the role that needs them (AWS documents these for EKS).
EKS_CLUSTER_POLICIES = ("AmazonEKSClusterPolicy",)
EKS_NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")

# `egress: private`: the interface endpoints a site without NAT needs. Session Manager (ssm,
# ssmmessages, ec2messages), the secrets, container images (ecr.api, ecr.dkr; their layers come
# from S3, a gateway endpoint), logs, and what EKS's private nodes need to join (ec2, sts, eks,
# eks-auth for Pod Identity), as AWS lists them for private clusters.
INTERFACE_ENDPOINTS = (
    "ssm", "ssmmessages", "ec2messages", "secretsmanager", "ecr.api", "ecr.dkr", "logs", "ec2", "sts", "eks", "eks-auth",
)


# m6i sizes by vCPU count; every size has 4 GiB of memory per vCPU.
M6I_SIZES = {
    2: "large",
    4: "xlarge",
    8: "2xlarge",
    16: "4xlarge",
    32: "8xlarge",
    48: "12xlarge",
    64: "16xlarge",
    96: "24xlarge",
    128: "32xlarge",
}


def aws(submodule: str):
    """One submodule of the AWS provider package, loaded on its own (see `cdk.provider_module`)."""
    return cdk.provider_module("aws", submodule)


def private_route_table_name(site: str) -> str:
    """The Name tag of the route table that sends private subnets out through the NAT gateway."""
    return f"{site}-private"


def build(stack, spec: LandingZoneSpec) -> None:
    """Add the whole landing zone to `stack` (backend and provider are set by the platform)."""
    network = _network(stack, spec)
    _flow_logs(stack, spec, network["vpc"])
    _session_logs(stack, spec)
    _dns(stack, spec, network["vpc"])
    control_plane = _control_plane_security_group(stack, spec, network["vpc"])
    eks = _eks(stack, spec, network["private"], control_plane)
    secrets = _secrets(stack, spec)
    _service_identities(stack, spec, eks, secrets)
    registries = _registries(stack, spec)
    logs = _access_logs(stack, spec)
    state = private_bucket(stack, "state", bucket_name(spec.account, spec.site, "state"), versioned=True, log_to=logs.bucket)

    cdk.output(stack, "vpc_id", network["vpc"].id, "The site's VPC")
    cdk.output(stack, "subnet_ids", {name: s.id for name, s in sorted(network["subnets"].items())}, "Subnets by name")
    cdk.output(stack, "eks_cluster_name", eks.name, "The control plane's EKS cluster")
    cdk.output(stack, "eks_endpoint", eks.endpoint, "Private API endpoint of the EKS cluster")
    cdk.output(stack, "ecr_urls", registries["ecr"], "Container registries")
    cdk.output(stack, "buckets", {"state": state.bucket, **registries["buckets"]}, "S3 buckets")


# ---------------------------------------------------------------- network


def log_group(stack, construct_id: str, name: str, days: int):
    return aws("cloudwatch_log_group").CloudwatchLogGroup(
        stack, f"logs_{construct_id}", name=name, retention_in_days=days
    )


def session_document_name(site: str) -> str:
    """The site's Session Manager shell document: the only one admins and operators may start."""
    return f"{site}-logged-shell"


def session_log_group_name(site: str) -> str:
    return f"/vcluster/{site}/sessions"


def _session_logs(stack, spec: LandingZoneSpec) -> None:
    """Every shell that Session Manager opens on the site's nodes is streamed to a log group of
    the site's, kept for its retention. Session Manager's own preferences (the document
    SSM-SessionManagerRunShell) belong to the whole account and region, so no stack sets them:
    the site has a shell document of its own instead, and the admins' and operators' policies
    name that document only (ssm:SessionDocumentAccessCheck), so a shell without it is refused.
    Users' SSH sessions (AWS-StartSSHSession) carry SSH, which Session Manager cannot read:
    sshd logs them on the login node."""
    logs = log_group(stack, "sessions", session_log_group_name(spec.site), spec.log_retention_days)
    content = {
        "schemaVersion": "1.0",
        "description": f"A shell on a node of site {spec.site}, logged to {logs.name}",
        "sessionType": "Standard_Stream",
        "inputs": {
            "cloudWatchLogGroupName": session_log_group_name(spec.site),
            "cloudWatchStreamingEnabled": True,
            "cloudWatchEncryptionEnabled": False,
            "s3BucketName": "",
            "runAsEnabled": False,
            "idleSessionTimeout": "20",
        },
    }
    aws("ssm_document").SsmDocument(
        stack, "session_document", name=session_document_name(spec.site), document_type="Session",
        document_format="JSON", content=json.dumps(content, sort_keys=True), depends_on=[logs],
    )


def _flow_logs(stack, spec: LandingZoneSpec, vpc) -> None:
    """Every flow of the site's VPC (the clusters' subnets are in it), accepted or rejected,
    to CloudWatch Logs for the site's retention, through a role only VPC Flow Logs may assume."""
    logs = log_group(stack, "flow", f"/vcluster/{spec.site}/vpc-flow-logs", spec.log_retention_days)
    role, _ = iam_role(stack, "flow_logs", f"{spec.site}-vpc-flow-logs", {"Service": "vpc-flow-logs.amazonaws.com"}, ())
    aws("iam_role_policy").IamRolePolicy(
        stack, "role_flow_logs_delivery", name="deliver", role=role.name,
        policy=policy([statement(["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                                 [logs.arn, f"{logs.arn}:*"])]),
    )
    aws("flow_log").FlowLog(
        stack, "flow_log", vpc_id=vpc.id, traffic_type="ALL", log_destination_type="cloud-watch-logs",
        log_destination=logs.arn, iam_role_arn=role.arn, max_aggregation_interval=60,
        tags={"Name": f"{spec.site}-vpc"},
    )


def _dns(stack, spec: LandingZoneSpec, vpc) -> None:
    """The site's private hosted zone, for its VPC only: `HOST.vcluster.internal` for every node
    (the cluster stacks add those) and `NAME.svc.vcluster.internal` for every landing-zone
    service. The VPC's DHCP options make it the search domain, so short hostnames resolve."""
    zones = aws("route53_zone")
    zone = zones.Route53Zone(
        stack, "dns_private", name=PRIVATE_DOMAIN, vpc=[zones.Route53ZoneVpc(vpc_id=vpc.id)],
        comment=f"nodes and services of site {spec.site}",
    )
    for service in spec.services:
        aws("route53_record").Route53Record(
            stack, f"dns_{service.name}", zone_id=zone.zone_id, name=f"{service.name}.{SERVICE_DOMAIN}", type="A",
            ttl=300, records=[service_ip(service.address)],
        )
    options = aws("vpc_dhcp_options").VpcDhcpOptions(
        stack, "dhcp_options", domain_name=PRIVATE_DOMAIN, domain_name_servers=["AmazonProvidedDNS"],
        tags={"Name": f"{spec.site}-dhcp"},
    )
    aws("vpc_dhcp_options_association").VpcDhcpOptionsAssociation(
        stack, "dhcp_options_association", vpc_id=vpc.id, dhcp_options_id=options.id
    )


def zone_subnets(cidr: str, reserved: Sequence[str], zone_count: int) -> list[tuple[str, str]]:
    """(public, private) /24s for zone 0, 1, ...: zone i takes the i-th pair of free /24s.

    Free means: in the lower half of `cidr` and overlapping none of `reserved` (the services
    subnet). The pair of a zone depends only on its position, so adding a zone at the end never
    renumbers another. Zone 0 keeps the services subnet as its private subnet, so the second /24
    of its pair stays unused. At least two pairs are returned: EKS needs two zones.
    """
    network = ipaddress.IPv4Network(cidr)
    if network.prefixlen > 23:
        raise ValueError(
            f"VPC {cidr} is too small: the landing zone carves /24s from its lower half (use /20 or larger)"
        )
    lower_half = next(network.subnets(prefixlen_diff=1))
    taken = [ipaddress.IPv4Network(r) for r in reserved]
    free = [block for block in lower_half.subnets(new_prefix=24) if not any(block.overlaps(t) for t in taken)]
    pairs = max(zone_count, 2)
    if len(free) < 2 * pairs:
        raise ValueError(
            f"VPC {cidr}: {2 * pairs} free /24s are needed in its lower half {lower_half} beside the services "
            f"subnet for {pairs} zones, only {len(free)} are free (enlarge the VPC or shrink the services subnet)"
        )
    return [(str(free[2 * i]), str(free[2 * i + 1])) for i in range(pairs)]


def _network(stack, spec: LandingZoneSpec) -> dict:
    """VPC, subnets, internet and NAT gateways, routes. Returns the pieces others attach to."""
    vpc = aws("vpc").Vpc(
        stack,
        "vpc",
        cidr_block=spec.network.cidr,
        enable_dns_support=True,  # EKS private endpoints and FSx/EFS names resolve through the VPC
        enable_dns_hostnames=True,
        tags={"Name": spec.network.name},
    )
    # The VPC's default security group, which every interface without one of its own would
    # get, and which admits its own members and lets out everything: taken over with no rule
    # at all (Terraform adopts the existing group and removes its rules: in place).
    aws("default_security_group").DefaultSecurityGroup(
        stack, "default_group", vpc_id=vpc.id, tags={"Name": f"{spec.site}-default-unused"}
    )
    services = spec.network.subnets
    pairs = zone_subnets(spec.network.cidr, [s.cidr for s in services], len(spec.zones))
    public = {f"public-{zone}": (pairs[i][0], zone) for i, zone in enumerate(spec.zones)}
    private = {s.name: (s.cidr, spec.zones[0]) for s in services}  # the spec's subnets: first zone
    for i, (label, zone) in enumerate(_private_zones(stack, spec), start=1):
        private[f"private-{label}"] = (pairs[i][1], zone)
    subnets = {name: _subnet(stack, spec.site, vpc, name, *place) for name, place in (public | private).items()}

    igw = aws("internet_gateway").InternetGateway(
        stack, "internet_gateway", vpc_id=vpc.id, tags={"Name": f"{spec.site}-igw"}
    )
    # Routes as their own resources: inline route blocks in Terraform JSON need every attribute.
    _route_table(stack, "public", vpc, f"{spec.site}-public", {n: subnets[n] for n in public}, gateway_id=igw.id)
    if spec.network.egress == "nat":
        # One NAT gateway, in the first zone: private subnets of other zones lose egress when that
        # zone is down, a trade of availability for cost that suits a landing zone's control traffic.
        eip = aws("eip").Eip(stack, "nat_address", domain="vpc", tags={"Name": f"{spec.site}-nat"})
        nat = aws("nat_gateway").NatGateway(
            stack,
            "nat_gateway",
            allocation_id=eip.allocation_id,
            subnet_id=subnets[f"public-{spec.zones[0]}"].id,
            tags={"Name": f"{spec.site}-nat"},
            depends_on=[igw],
        )
        target = {"nat_gateway_id": nat.id}
    else:
        target = {}  # egress: private: no route out of the VPC, the endpoints only
    table = _route_table(
        stack, "private", vpc, private_route_table_name(spec.site), {n: subnets[n] for n in private}, **target
    )
    private_subnets = [subnets[n] for n in private]
    if spec.network.egress == "private":
        _endpoints(stack, spec, vpc, private_subnets, table)
    return {"vpc": vpc, "subnets": subnets, "private": private_subnets}


def endpoints_group_name(site: str) -> str:
    """The security group of a private site's interface endpoints: cluster stacks look it up."""
    return f"{site}-endpoints"


def _endpoints(stack, spec: LandingZoneSpec, vpc, private: list, table) -> None:
    """`egress: private`: what nodes and EKS reach without NAT. S3 through a gateway endpoint
    on the private route table (which the clusters' subnets join), every other service through
    an interface endpoint with private DNS in the private subnets, answering HTTPS from the VPC."""
    group = aws("security_group").SecurityGroup(
        stack, "endpoints", name=endpoints_group_name(spec.site), description="AWS service endpoints, HTTPS from the VPC",
        vpc_id=vpc.id,
    )
    aws("vpc_security_group_ingress_rule").VpcSecurityGroupIngressRule(
        stack, "endpoints_from_vpc", security_group_id=group.id, ip_protocol="tcp", from_port=443, to_port=443,
        cidr_ipv4=spec.network.cidr, description="HTTPS from the VPC",
    )
    endpoint = aws("vpc_endpoint").VpcEndpoint
    endpoint(stack, "endpoint_s3", vpc_id=vpc.id, service_name=f"com.amazonaws.{spec.region}.s3",
             vpc_endpoint_type="Gateway", route_table_ids=[table.id], tags={"Name": f"{spec.site}-s3"})
    for service in INTERFACE_ENDPOINTS:
        endpoint(
            stack, f"endpoint_{service.replace('.', '_').replace('-', '_')}", vpc_id=vpc.id,
            service_name=f"com.amazonaws.{spec.region}.{service}", vpc_endpoint_type="Interface",
            private_dns_enabled=True, subnet_ids=[s.id for s in private], security_group_ids=[group.id],
            tags={"Name": f"{spec.site}-{service}"},
        )


def _subnet(stack, site: str, vpc, name: str, cidr: str, zone: str):
    return aws("subnet").Subnet(
        stack, f"subnet_{name}", vpc_id=vpc.id, cidr_block=cidr, availability_zone_id=zone, tags={"Name": f"{site}-{name}"}
    )


def _private_zones(stack, spec: LandingZoneSpec) -> list[tuple[str, str]]:
    """(label, zone) of the private subnets beside the services subnet: the site's other zones.

    EKS refuses a cluster whose subnets are in fewer than two zones. A one-zone site gets its
    second private subnet in the first other zone the region offers (a data source, sorted by
    AWS): only the EKS control plane uses it, cluster nodes stay in the site's zone. Zones are
    zone IDs (euc1-az2): a zone name means another zone in each account.
    """
    if len(spec.zones) >= 2:
        return [(zone, zone) for zone in spec.zones[1:]]
    zones = aws("data_aws_availability_zones")
    others = zones.DataAwsAvailabilityZones(
        stack,
        "other_zones",
        state="available",
        exclude_zone_ids=[spec.zones[0]],
        # Local and Wavelength Zones are opt-in: leaving them out keeps to the region's own zones.
        filter=[zones.DataAwsAvailabilityZonesFilter(name="opt-in-status", values=["opt-in-not-required"])],
    )
    return [("other-zone", cdk.cdktf.Fn.element(others.zone_ids, 0))]


def _route_table(stack, name: str, vpc, tag: str, subnets: dict, **target):
    """A route table for `subnets`, with a default route to `target` if one is given."""
    table = aws("route_table").RouteTable(stack, f"route_table_{name}", vpc_id=vpc.id, tags={"Name": tag})
    if target:
        aws("route").Route(
            stack, f"route_{name}_default", route_table_id=table.id, destination_cidr_block="0.0.0.0/0", **target
        )
    associate = aws("route_table_association").RouteTableAssociation
    for subnet_name, subnet in subnets.items():
        associate(stack, f"route_{name}_{subnet_name}", route_table_id=table.id, subnet_id=subnet.id)
    return table


def _control_plane_security_group(stack, spec: LandingZoneSpec, vpc):
    """The EKS API's network interfaces answer HTTPS from the services subnet and the site's
    runner ranges only: never from the cluster subnets, nor from the internet. The rule that
    let the whole VPC in keeps its name and becomes the services subnet's (updated in place)."""
    group = aws("security_group").SecurityGroup(
        stack,
        "control_plane",
        name=f"{spec.site}-control-plane",
        description="Landing-zone services, reachable from the VPC",  # ForceNew: kept as it was
        vpc_id=vpc.id,
    )
    ingress = aws("vpc_security_group_ingress_rule").VpcSecurityGroupIngressRule
    sources = list(dict.fromkeys([s.cidr for s in spec.network.subnets] + list(spec.network.runner_ranges)))
    for index, cidr in enumerate(sources):
        ingress(
            stack,
            "control_plane_from_vpc" if index == 0 else f"control_plane_from_runners_{index}",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4=cidr,
            description="The Kubernetes API from the services subnet" if index == 0 else "The Kubernetes API from the site's runners",
        )
    aws("vpc_security_group_egress_rule").VpcSecurityGroupEgressRule(
        stack,
        "control_plane_egress",
        security_group_id=group.id,
        ip_protocol="-1",
        cidr_ipv4=spec.network.cidr,
        description="To the nodes in the VPC",
    )
    return group


# ---------------------------------------------------------------- control plane


def control_instance_type(pool: ComputePool) -> str:
    """The m6i size for a control node: the smallest with 2 vCPUs per core and the memory asked.

    A pool whose catalog type is resolved keeps it; m6i is the general-purpose default.
    """
    if pool.machine_type:
        return pool.machine_type
    vcpus = max(2 * pool.node.cores, math.ceil(pool.node.memory_gb / 4))
    size = next((n for n in sorted(M6I_SIZES) if n >= vcpus), None)
    if size is None:
        raise ValueError(f"control nodes of {pool.node.cores} cores and {pool.node.memory_gb} GB exceed m6i.32xlarge")
    return f"m6i.{M6I_SIZES[size]}"


def _eks(stack, spec: LandingZoneSpec, private: list, control_plane):
    """EKS with a private endpoint and a managed node group sized from the control-plane spec.

    EKS gives the nodes their addresses in the private subnets: the control addresses of the
    spec are not used on AWS.
    """
    role, attached = iam_role(
        stack, "eks_cluster", f"{spec.site}-eks-cluster", {"Service": "eks.amazonaws.com"}, EKS_CLUSTER_POLICIES
    )
    # The control plane's logs go to the group EKS writes to, made first with the site's
    # retention (EKS would make it itself, keeping the logs forever).
    logs = log_group(stack, "eks", f"/aws/eks/{spec.site}-control/cluster", spec.log_retention_days)
    # Kubernetes version left to EKS's default at creation: upgrades are deliberate, not drift.
    cluster = aws("eks_cluster").EksCluster(
        stack,
        "eks",
        name=f"{spec.site}-control",
        role_arn=role.arn,
        vpc_config={
            "subnet_ids": [s.id for s in private],
            "endpoint_private_access": True,
            "endpoint_public_access": False,
            "security_group_ids": [control_plane.id],
        },
        # Access entries only (no aws-auth ConfigMap). The creator's admin entry that EKS makes is
        # removed once the cluster exists (`_kubernetes_admins`): this flag cannot change without
        # replacing the control plane, so it stays as it was.
        access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
        # the audit trail, every log type of the control plane: API calls, the audit log, who
        # authenticated, and the controller manager's and the scheduler's (changed in place)
        enabled_cluster_log_types=["api", "audit", "authenticator", "controllerManager", "scheduler"],
        # EKS needs its policy before it can create its network interfaces, and the log group
        # before it logs
        depends_on=[*attached, logs],
    )
    # The managed nodes, where the services run, carry EKS's cluster security group, which
    # admits only itself: the clusters' subnets reach the services' ports, and nothing else.
    for port, services in landing_zone_ports().items():
        names = ", ".join(services)
        aws("vpc_security_group_ingress_rule").VpcSecurityGroupIngressRule(
            stack,
            f"services_from_clusters_{port}",
            security_group_id=cluster.vpc_config.cluster_security_group_id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            cidr_ipv4=spec.network.clusters_range,
            description=f"{names} from the cluster subnets",
        )
    node_role, node_attached = iam_role(
        stack, "eks_nodes", f"{spec.site}-eks-nodes", {"Service": "ec2.amazonaws.com"}, EKS_NODE_POLICIES
    )
    pool = spec.control_plane
    aws("eks_node_group").EksNodeGroup(
        stack,
        "control_nodes",
        cluster_name=cluster.name,
        node_group_name=pool.name,
        node_role_arn=node_role.arn,
        subnet_ids=[s.id for s in private],
        instance_types=[control_instance_type(pool)],
        ami_type="AL2023_x86_64_STANDARD",
        scaling_config={"desired_size": pool.count, "min_size": pool.count, "max_size": pool.count},
        depends_on=node_attached,
    )
    # Pod Identity associations work only with this agent running on the nodes.
    aws("eks_addon").EksAddon(
        stack, "pod_identity_agent", cluster_name=cluster.name, addon_name="eks-pod-identity-agent"
    )
    _kubernetes_admins(stack, spec, cluster)
    return cluster


# EKS gives the principal that creates a cluster an access entry with the cluster-admin policy
# (bootstrap_cluster_creator_admin_permissions), which no configuration shows. This removes it,
# once, right after the cluster is created (or, for a cluster made before, at the first apply
# that has this), before the site's declared admins get their entries: every STANDARD entry
# there is then goes, whoever made the cluster (a laptop, a former CI role), and the apply role
# among the admins gets its entry back, now one the configuration holds. The nodes' EC2_LINUX
# entries stay. The AWS CLI does it (GitHub's runners carry it): Terraform cannot delete an
# object that it does not manage, and importing the entry would keep it. The values arrive as
# environment variables, never as a part of the command; any refusal stops the apply, and the
# removal is tried again at the next one.
REMOVE_UNDECLARED_ENTRIES = """\
set -f
command -v aws >/dev/null 2>&1 || { echo "removing the EKS creator's access entry needs the AWS CLI (aws) where this applies" >&2; exit 1; }
eks() { aws eks "$@" --region "$VC_REGION" --cluster-name "$VC_CLUSTER"; }
principals=$(eks list-access-entries --query 'accessEntries[]' --output text) || exit 1
removed=0
for principal in $principals; do
  [ "$principal" != None ] || continue
  kind=$(eks describe-access-entry --principal-arn "$principal" --query 'accessEntry.type' --output text) || exit 1
  [ "$kind" = STANDARD ] || continue
  if out=$(eks delete-access-entry --principal-arn "$principal" 2>&1); then
    echo "removed the access entry of $principal from EKS cluster $VC_CLUSTER (no configuration declares it)"
    removed=$((removed + 1))
  else
    case "$out" in
      *ResourceNotFoundException*) ;;
      *) printf '%s\\n' "$out" >&2; exit 1 ;;
    esac
  fi
done
[ "$removed" -gt 0 ] || echo "EKS cluster $VC_CLUSTER has no access entry that no configuration declares"
"""

EKS_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"


def _kubernetes_admins(stack, spec: LandingZoneSpec, cluster) -> None:
    """The site's `kubernetes_admins`, each an access entry with the cluster-admin policy on the
    whole cluster, made after every undeclared entry is removed (both in place: access entries
    are objects of their own, and the cluster is not changed). A replaced cluster runs the
    removal again and gets its admins' entries again."""
    removed = cdk.data_resource(stack, "creator_access_removed", {"cluster": f"{spec.site}-control"},
                                replace_on=[cluster.created_at])
    cdk.provisioners(removed, [{"local-exec": {
        "interpreter": ["/bin/sh", "-c"],
        "command": REMOVE_UNDECLARED_ENTRIES,
        "environment": {"VC_REGION": spec.region, "VC_CLUSTER": cluster.name},
    }}])
    entry = aws("eks_access_entry").EksAccessEntry
    association = aws("eks_access_policy_association").EksAccessPolicyAssociation
    for arn in spec.kubernetes_admins:
        # named by account and role name (unique in an account, whatever the path): removing one
        # admin from the list leaves the others' entries alone
        account, _, name = arn.split(":", 4)[4].partition(":role/")
        label = re.sub(r"[^A-Za-z0-9_-]", "_", f"kubernetes_admin_{account}_{name.rsplit('/', 1)[-1]}")
        made = entry(stack, label, cluster_name=cluster.name, principal_arn=arn, type="STANDARD", depends_on=[removed])
        made.add_override("lifecycle.replace_triggered_by", ["terraform_data.creator_access_removed"])
        policy_of = association(stack, f"{label}_policy", cluster_name=cluster.name, principal_arn=made.principal_arn,
                                policy_arn=EKS_ADMIN_POLICY, access_scope={"type": "cluster"})
        policy_of.add_override("lifecycle.replace_triggered_by", [f"aws_eks_access_entry.{label}"])  # EKS drops it with its entry


def _secrets(stack, spec: LandingZoneSpec) -> dict:
    """Secrets Manager containers, one per secret a service needs: {name: secret}."""
    names = sorted({name for service in spec.services for name in service.secret_names()})
    make = aws("secretsmanager_secret").SecretsmanagerSecret
    return {
        name: make(
            stack,
            f"secret_{name}",
            name=f"{spec.site}/{name}",
            description=f"{name} of site {spec.site}; the value is set outside git",
        )
        for name in names
    }


def _service_identities(stack, spec: LandingZoneSpec, eks, secrets: dict) -> None:
    """Each service runs in its own namespace with a service account bound to its own IAM role.

    EKS Pod Identity instead of IRSA: no OIDC provider to manage, one trust policy for all.
    A role may read its own secrets and nothing else.
    """
    trust = {"Service": "pods.eks.amazonaws.com"}
    for service in spec.services:
        role, _ = iam_role(
            stack,
            f"service_{service.name}",
            f"{spec.site}-{service.name}",
            trust,
            (),
            actions=["sts:AssumeRole", "sts:TagSession"],
        )
        mine = [secrets[name].arn for name in service.secret_names()]
        if mine:
            aws("iam_role_policy").IamRolePolicy(
                stack,
                f"service_{service.name}_secrets",
                name="read-own-secrets",
                role=role.name,
                policy=policy([statement(["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"], mine)]),
            )
        aws("eks_pod_identity_association").EksPodIdentityAssociation(
            stack,
            f"service_{service.name}_identity",
            cluster_name=eks.name,
            namespace=service.name,
            service_account=service.name,
            role_arn=role.arn,
        )


def _registries(stack, spec: LandingZoneSpec) -> dict:
    """ECR for container registries, one versioned bucket for the RPM and DEB repositories."""
    ecr = {}
    for registry in spec.registries:
        if registry.format == "container":
            module = aws("ecr_repository")
            repo = module.EcrRepository(
                stack,
                f"registry_{registry.name}",
                name=registry.name,
                image_tag_mutability="IMMUTABLE",  # a tag always names the same image: reproducible clusters
                image_scanning_configuration={"scan_on_push": True},
                encryption_configuration=[module.EcrRepositoryEncryptionConfiguration(encryption_type="AES256")],
            )
            ecr[registry.name] = repo.repository_url
    buckets = {}
    if any(r.format in ("rpm", "deb") for r in spec.registries):
        packages = private_bucket(stack, "packages", bucket_name(spec.account, spec.site, "packages"), versioned=True,
                                  log_to=access_logs_bucket(spec.account, spec.site))
        buckets["packages"] = packages.bucket
    return {"ecr": ecr, "buckets": buckets}


# ---------------------------------------------------------------- shared with cluster stacks


def policy(statements: list[dict]) -> str:
    """An IAM policy document as JSON text, keys sorted: the same bytes in every run."""
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def statement(actions: list[str], resources: list[str], condition: dict | None = None, sid: str = "") -> dict:
    out = {"Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        out["Condition"] = condition
    if sid:
        out["Sid"] = sid
    return out


def iam_role(stack, construct_id: str, name: str, principal: dict, managed: Sequence[str], actions=("sts:AssumeRole",)):
    """A role `principal` may assume, with AWS managed policies attached: (role, attachments)."""
    trust = policy([{"Effect": "Allow", "Principal": principal, "Action": list(actions)}])
    role = aws("iam_role").IamRole(stack, f"role_{construct_id}", name=name, assume_role_policy=trust)
    attach = aws("iam_role_policy_attachment").IamRolePolicyAttachment
    attached = [
        attach(stack, f"role_{construct_id}_{_snake(arn)}", role=role.name, policy_arn=f"arn:aws:iam::aws:policy/{arn}")
        for arn in managed
    ]
    return role, attached


_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def bucket_name(*parts: str) -> str:
    """A deterministic S3 bucket name; bucket names are global, so they start with the account."""
    name = "-".join(parts).lower()
    if not _BUCKET_NAME.match(name):
        raise ValueError(f"S3 bucket name {name!r} is not valid: 3 to 63 lowercase letters, digits and hyphens")
    return name


def access_logs_bucket(account: str, site: str) -> str:
    """The site's bucket of S3 server access logs: every bucket of the site logs there."""
    return bucket_name(account, site, "access-logs")


def _access_logs(stack, spec: LandingZoneSpec):
    """Where the site's buckets log who read and wrote what (S3 server access logs), kept for
    the site's retention. S3's logging service writes there, for this account's buckets only;
    made beside the buckets, each of which gets a logging resource of its own (in place)."""
    logs = private_bucket(stack, "access_logs", access_logs_bucket(spec.account, spec.site), versioned=False)
    lifecycle = aws("s3_bucket_lifecycle_configuration")
    lifecycle.S3BucketLifecycleConfiguration(
        stack,
        "bucket_access_logs_lifecycle",
        bucket=logs.id,
        rule=[lifecycle.S3BucketLifecycleConfigurationRule(
            id="expire-logs",
            status="Enabled",
            filter=[lifecycle.S3BucketLifecycleConfigurationRuleFilter()],
            expiration=[lifecycle.S3BucketLifecycleConfigurationRuleExpiration(days=spec.log_retention_days)],
            abort_incomplete_multipart_upload=[
                lifecycle.S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(days_after_initiation=1)],
        )],
    )
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "S3ServerAccessLogs",
            "Effect": "Allow",
            "Principal": {"Service": "logging.s3.amazonaws.com"},
            "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{logs.bucket}/*",
            "Condition": {"StringEquals": {"aws:SourceAccount": spec.account}},
        }],
    }
    aws("s3_bucket_policy").S3BucketPolicy(stack, "bucket_access_logs_policy", bucket=logs.id, policy=json.dumps(policy))
    return logs


def private_bucket(stack, construct_id: str, name: str, versioned: bool, noncurrent_days: int = 0, log_to: str = "",
                   lock_days: int = 0, lock_mode: str = ""):
    """An S3 bucket no one outside the account can read, encrypted at rest. `noncurrent_days`:
    a versioned bucket expires an object's earlier versions that long after a newer one
    replaced them. `log_to`: the bucket its server access logs go to, under its own name.
    `lock_days`: S3 Object Lock, each version unchanged that long after it is written, in
    `lock_mode` (governance or compliance)."""
    s3 = aws("s3_bucket").S3Bucket(stack, f"bucket_{construct_id}", bucket=name)
    if log_to:
        aws("s3_bucket_logging").S3BucketLoggingA(
            stack, f"bucket_{construct_id}_logging", bucket=s3.id, target_bucket=log_to, target_prefix=f"{name}/"
        )
    aws("s3_bucket_public_access_block").S3BucketPublicAccessBlock(
        stack,
        f"bucket_{construct_id}_public_access",
        bucket=s3.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
    )
    sse = aws("s3_bucket_server_side_encryption_configuration")
    sse.S3BucketServerSideEncryptionConfigurationA(
        stack,
        f"bucket_{construct_id}_encryption",
        bucket=s3.id,
        rule=[
            sse.S3BucketServerSideEncryptionConfigurationRuleA(
                apply_server_side_encryption_by_default={"sse_algorithm": "AES256"}
            )
        ],
    )
    if versioned:
        versioning = aws("s3_bucket_versioning").S3BucketVersioningA(
            stack, f"bucket_{construct_id}_versioning", bucket=s3.id, versioning_configuration={"status": "Enabled"}
        )
        if noncurrent_days:
            lifecycle = aws("s3_bucket_lifecycle_configuration")  # struct classes: a dict's snake_case keys are dropped
            lifecycle.S3BucketLifecycleConfiguration(
                stack,
                f"bucket_{construct_id}_lifecycle",
                bucket=s3.id,
                rule=[lifecycle.S3BucketLifecycleConfigurationRule(
                    id="expire-earlier-versions",
                    status="Enabled",
                    filter=[lifecycle.S3BucketLifecycleConfigurationRuleFilter()],  # every object
                    noncurrent_version_expiration=[
                        lifecycle.S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(noncurrent_days=noncurrent_days)
                    ],
                    # the parts of an upload that never completed cost until removed
                    abort_incomplete_multipart_upload=[
                        lifecycle.S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(days_after_initiation=7)],
                )],
                depends_on=[versioning],  # S3 takes a noncurrent rule once versioning is on
            )
        if lock_days:
            # On an existing bucket too: this resource turns Object Lock on once versioning is
            # (provider 6.x, "new and existing buckets"), and S3 never turns it off again.
            lock = aws("s3_bucket_object_lock_configuration")
            lock.S3BucketObjectLockConfigurationA(
                stack, f"bucket_{construct_id}_object_lock", bucket=s3.id,
                rule=lock.S3BucketObjectLockConfigurationRuleA(
                    default_retention=lock.S3BucketObjectLockConfigurationRuleDefaultRetentionA(
                        mode=lock_mode.upper(), days=lock_days)),
                depends_on=[versioning],
            )
    return s3


def _snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
