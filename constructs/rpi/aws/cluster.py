"""An AWS vCluster: its subnet in the site's VPC, one EC2 instance per node, shared storage,
buckets, and IAM groups that reach the nodes through SSM Session Manager.

The VPC and its private route table belong to the landing-zone stack; they are looked up by
the Name tags that stack sets. Nodes keep the addresses the spec gives them, and every node
boots with the cluster's cloud-init (`spec.user_data`: layers 2 and 3, the same bytes as on
any other platform, gzipped to fit EC2's 16 KiB), through its pool's launch template.
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import math

from rpi import cdk, registry
from rpi.catalog import catalog
from rpi.aws.landing_zone import (
    access_logs_bucket,
    aws,
    bucket_name,
    endpoints_group_name,
    iam_role,
    policy,
    private_bucket,
    private_route_table_name,
    session_document_name,
    session_log_group_name,
    statement,
)
from rpi.spec import (
    PRIVATE_DOMAIN, ClusterSpec, landing_zone_ports, ComputePool, Peer, StorageVolume, channel_objects, channel_prefix,
    network_name, node_identities, node_identity,
)

# Public SSM parameters naming the current AMI. The NVIDIA image brings the GPU driver, CUDA
# and the EFA software; every type in the AWS catalog is x86_64.
IMAGES = {
    "cpu": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "gpu": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
}
ROOT_VOLUME_GB = 100
USER_DATA_LIMIT = 16 * 1024  # EC2 refuses more, counted before base64

# FSx for Lustre on SSD takes 1200 GiB, 2400 GiB or a multiple of 2400 GiB (SCRATCH_2 and
# PERSISTENT_2 alike), and PERSISTENT_2 needs a throughput per TiB: the smallest is enough
# for /home and project data, and scratch has its own file system.
LUSTRE_STEP_GIB = 2400
LUSTRE_MIN_GIB = 1200
LUSTRE_THROUGHPUT_MBPS_PER_TIB = 125
LUSTRE_VERSION = "2.15"

# Access roles that may open a session on every node; the others reach login nodes only.
NODE_ROLES = ("admin", "operator")


def build(stack, spec: ClusterSpec) -> None:
    """Add the whole cluster to `stack` (backend and provider are set by the platform)."""
    check(spec)
    vpc, subnet = _subnet(stack, spec)
    groups = _security_groups(stack, spec, vpc)
    identities = _node_profiles(stack, spec)
    images: dict[str, str] = {}
    filesystems, buckets = _storage(stack, spec, subnet, groups["nodes"])
    for name, (_, role) in identities.items():
        _bucket_access(stack, name, role, buckets)
    binding = _channel(stack, spec, identities, filesystems)
    instances = {pool.name: _pool(stack, spec, pool, subnet, groups, identities, images, binding) for pool in spec.pools}
    _names(stack, spec, vpc)
    _access(stack, spec)

    logins = [node.private_ip for pool in spec.pools if pool.role == "login" for node in instances[pool.name]]
    ids = {h: node.id for pool in spec.pools for h, node in zip(pool.hostnames, instances[pool.name], strict=True)}
    cdk.output(stack, "login_addresses", logins, "Where users connect")
    cdk.output(stack, "node_count", sum(p.count for p in spec.pools), "Nodes in all pools")
    cdk.output(stack, "nodes", {p.name: list(p.hostnames) for p in spec.pools}, "Hostnames per pool")
    cdk.output(stack, "instance_ids", ids, "EC2 instance of each node")
    cdk.output(stack, "subnet_id", subnet.id, "The cluster's subnet")
    cdk.output(stack, "filesystems", filesystems, "Shared file systems: where to mount them from")
    cdk.output(stack, "buckets", buckets, "Object storage")


def check(spec: ClusterSpec) -> None:
    """Refuse, with what to change, a spec this platform cannot build as asked."""
    if spec.public_login:
        raise ValueError(
            f"cluster {spec.name}: public_login is not supported on aws yet (nodes live in a private subnet); "
            "reach login nodes through SSM Session Manager or from network.allowed_cidrs"
        )
    # A security group takes 60 inbound and 60 outbound rules unless the account's quota is raised
    # (https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html#vpc-limits-security-groups).
    # The counts are of the rules `_security_groups` gives the nodes' group: keep the two together.
    rules = {"inbound": 2 + sum(len(_peer_ports(p)) for p in spec.admitted),
             "outbound": 1 + len(landing_zone_ports()) + 2 + sum(len(_peer_ports(p)) for p in spec.reaches)}
    for direction, count in rules.items():
        if count > SECURITY_GROUP_RULES:
            field = "network.admit of this cluster" if direction == "inbound" else "network.admit of the clusters that admit it"
            raise ValueError(
                f"cluster {spec.name}: its nodes' security group would hold {count} {direction} rules, more than the "
                f"{SECURITY_GROUP_RULES} AWS allows a group (two per admitted port or range, TCP and UDP): give fewer "
                f"or wider port ranges in {field}, or none for every port"
            )
    for pool in spec.pools:
        if not pool.machine_type:
            raise ValueError(
                f"cluster {spec.name}: node pool {pool.name} has no AWS machine type for {pool.node.cores} cores and "
                f"{pool.node.memory_gb} GB in {spec.region} (the catalog resolved none; see `reconcile portability`)"
            )
    subnet = ipaddress.IPv4Network(spec.subnet.cidr)
    reserved = registry.reserved_addresses("aws", subnet)  # router (.1), DNS (.2), reserved (.3)
    for pool in spec.pools:
        for hostname, address in zip(pool.hostnames, pool.addresses, strict=True):
            if ipaddress.IPv4Address(address) in reserved:
                raise ValueError(
                    f"cluster {spec.name}: node {hostname} has address {address}, which AWS reserves in {subnet} "
                    f"(the first four and the last); node addresses must start at {subnet.network_address + 4}"
                )
    size = len(user_data(spec))
    if size > USER_DATA_LIMIT:
        raise ValueError(f"cluster {spec.name}: cloud-init is {size} bytes gzipped, EC2 takes at most {USER_DATA_LIMIT}")


def user_data(spec: ClusterSpec) -> bytes:
    """The cloud-init as EC2 carries it: gzipped (cloud-init unpacks it), deterministically (no
    timestamp), so that it fits in EC2's 16 KiB; the document inside is the same on every platform."""
    return gzip.compress(spec.user_data.encode(), compresslevel=9, mtime=0) if spec.user_data else b""


# ---------------------------------------------------------------- network


def _subnet(stack, spec: ClusterSpec):
    """The site's VPC (looked up) and the cluster's subnet in it, routed out through the NAT gateway."""
    data_vpc = aws("data_aws_vpc")
    vpc = data_vpc.DataAwsVpc(
        stack, "vpc", filter=[data_vpc.DataAwsVpcFilter(name="tag:Name", values=[network_name(spec.site)])]
    )
    subnet = aws("subnet").Subnet(
        stack,
        "subnet",
        vpc_id=vpc.id,
        cidr_block=spec.subnet.cidr,
        availability_zone_id=spec.zone,  # a zone ID: the same zone in every account
        tags={"Name": spec.subnet.name},
    )
    data_table = aws("data_aws_route_table")
    table = data_table.DataAwsRouteTable(
        stack,
        "private_route_table",
        vpc_id=vpc.id,
        filter=[data_table.DataAwsRouteTableFilter(name="tag:Name", values=[private_route_table_name(spec.site)])],
    )
    # Without it the subnet would use the VPC's main table: no way out, so no SSM and no packages.
    aws("route_table_association").RouteTableAssociation(
        stack, "subnet_routes", route_table_id=table.id, subnet_id=subnet.id
    )
    return vpc, subnet


def _names(stack, spec: ClusterSpec, vpc) -> None:
    """Each node's name in the site's private hosted zone, at its planned address (VPC DNS
    would call it ip-…): a new node adds its own record and changes no other."""
    zone = aws("data_aws_route53_zone").DataAwsRoute53Zone(
        stack, "dns_private", name=PRIVATE_DOMAIN, private_zone=True, vpc_id=vpc.id
    )
    record = aws("route53_record").Route53Record
    for pool in spec.pools:
        for index, (hostname, address) in enumerate(zip(pool.hostnames, pool.addresses, strict=True)):
            record(stack, f"dns_{pool.name}_{index}", zone_id=zone.zone_id, name=f"{hostname}.{PRIVATE_DOMAIN}",
                   type="A", ttl=60, records=[address])


SECURITY_GROUP_RULES = 60  # inbound, and outbound, per security group: the default quota


def _peer_ports(peer: Peer) -> list[tuple]:
    """(ip_protocol, from_port, to_port) of each rule a peer needs: every protocol, or TCP and
    UDP on each of its ports and ranges."""
    if not peer.ports:
        return [("-1", None, None)]
    rules = []
    for protocol in ("tcp", "udp"):
        for item in peer.ports:
            low, _, high = item.partition("-")
            rules.append((protocol, int(low), int(high or low)))
    return rules


def _security_groups(stack, spec: ClusterSpec, vpc) -> dict:
    """`nodes` for every node and file system, `login` in addition for login nodes.

    EFA traffic is only allowed between members of one security group that lets all traffic
    in from itself and out to itself; the same self rule carries Lustre, NFS and MPI.
    """
    make = aws("security_group").SecurityGroup
    ingress = aws("vpc_security_group_ingress_rule").VpcSecurityGroupIngressRule
    egress = aws("vpc_security_group_egress_rule").VpcSecurityGroupEgressRule
    nodes = make(
        stack,
        "security_group_nodes",
        name=f"{spec.name}-nodes",
        description=f"Nodes and file systems of cluster {spec.name}",
        vpc_id=vpc.id,
    )
    ingress(
        stack,
        "nodes_from_self",
        security_group_id=nodes.id,
        ip_protocol="-1",
        referenced_security_group_id=nodes.id,
        description="EFA, MPI, Lustre, NFS",
    )
    ingress(
        stack,
        "nodes_from_subnet",
        security_group_id=nodes.id,
        ip_protocol="-1",
        cidr_ipv4=spec.subnet.cidr,
        description="The cluster subnet",
    )
    egress(
        stack,
        "nodes_to_self",
        security_group_id=nodes.id,
        ip_protocol="-1",
        referenced_security_group_id=nodes.id,
        description="EFA needs it explicitly",
    )
    # Out of the cluster: the landing-zone services on their ports, and beyond the VPC HTTP(S)
    # through the NAT gateway (`egress: nat`), or HTTPS to the site's endpoints and S3's gateway
    # endpoint only (`egress: private`). Other clusters and the control nodes are not reached.
    for port, services in landing_zone_ports().items():
        egress(
            stack,
            f"nodes_to_services_{port}",
            security_group_id=nodes.id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            cidr_ipv4=spec.services_cidr,
            description=f"{', '.join(services)} in the services subnet",
        )
    if spec.egress == "nat":
        for port in (80, 443):
            egress(
                stack,
                "nodes_egress" if port == 443 else f"nodes_egress_{port}",
                security_group_id=nodes.id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4="0.0.0.0/0",
                description=f"Out through the NAT gateway: {'HTTPS' if port == 443 else 'HTTP (package mirrors)'}",
            )
    else:
        s3 = aws("data_aws_ec2_managed_prefix_list").DataAwsEc2ManagedPrefixList(
            stack, "s3_prefix_list", name=f"com.amazonaws.{spec.region}.s3"
        )
        egress(stack, "nodes_egress", security_group_id=nodes.id, ip_protocol="tcp", from_port=443, to_port=443,
               prefix_list_id=s3.id, description="S3 through the site's gateway endpoint")
        # The landing zone's endpoints, in every private subnet of the site, by their group
        lookup = aws("data_aws_security_group")
        endpoints = lookup.DataAwsSecurityGroup(
            stack, "endpoints", vpc_id=vpc.id, name=endpoints_group_name(spec.site)
        )
        egress(stack, "nodes_to_endpoints", security_group_id=nodes.id, ip_protocol="tcp", from_port=443, to_port=443,
               referenced_security_group_id=endpoints.id,
               description="The site's interface endpoints (Session Manager, logs, ECR)")
    # network.admit: the admitted clusters' subnets in, and out to the clusters that admit this
    # one (a flow needs the source's egress and the target's ingress), each on its ports.
    for direction, rule, peers in (("from", ingress, spec.admitted), ("to", egress, spec.reaches)):
        for peer in peers:
            for protocol, low, high in _peer_ports(peer):
                rule(  # named by peer, protocol and ports: another port added leaves these alone
                    stack,
                    f"admit_{direction}_{peer.cluster}_" + ("all" if low is None else f"{protocol}_{low}_{high}"),
                    security_group_id=nodes.id,
                    ip_protocol=protocol,
                    from_port=low,
                    to_port=high,
                    cidr_ipv4=peer.cidr,
                    description=f"network.admit: {direction} the nodes of cluster {peer.cluster}",
                )
    login = make(
        stack,
        "security_group_login",
        name=f"{spec.name}-login",
        description=f"SSH to the login nodes of cluster {spec.name}",
        vpc_id=vpc.id,
    )
    for index, cidr in enumerate(spec.allowed_cidrs):
        ingress(
            stack,
            f"login_ssh_{index}",
            security_group_id=login.id,
            ip_protocol="tcp",
            from_port=22,
            to_port=22,
            cidr_ipv4=cidr,
            description="SSH from an allowed network",
        )
    return {"nodes": nodes, "login": login}


# ---------------------------------------------------------------- nodes


def _node_profiles(stack, spec: ClusterSpec) -> dict:
    """What the nodes run as, `{identity: (instance profile, role)}`: enough for SSM Session
    Manager, the only way in without SSH. Login nodes have a role of their own: they run the
    controller, which adds the munge key, and a staged copy's legs, which no compute node
    (where any user's job runs) may write or forge."""
    identities = {}
    for name in node_identities(spec):
        role, _ = iam_role(
            stack,
            name,
            f"{spec.site}-{spec.name}-{name}",  # IAM names are global to the account: with the site
            {"Service": "ec2.amazonaws.com"},
            ("AmazonSSMManagedInstanceCore",),
        )
        profile = aws("iam_instance_profile").IamInstanceProfile(stack, f"{name}_profile", name=role.name, role=role.name)
        # the SSM agent streams an admin's shell to the site's session log group
        group = f"arn:aws:logs:{spec.region}:{spec.account}:log-group:{session_log_group_name(spec.site)}"
        aws("iam_role_policy").IamRolePolicy(
            stack, f"{name}_session_logs", name="session-logs", role=role.name,
            policy=policy([
                statement(["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"], [f"{group}:*"], sid="Stream"),
                statement(["logs:DescribeLogGroups"], ["*"], sid="FindGroup"),  # the agent checks the group exists
            ]),
        )
        identities[name] = (profile, role)
    return identities


def _bucket_access(stack, identity: str, role, buckets: dict) -> None:
    """The nodes read and write their own cluster's buckets, and no other bucket."""
    if not buckets:
        return
    arns = [f"arn:aws:s3:::{name}" for _, name in sorted(buckets.items())]
    aws("iam_role_policy").IamRolePolicy(
        stack, f"{identity}_buckets", name="own-buckets", role=role.name,
        policy=policy([
            statement(["s3:ListBucket", "s3:GetBucketLocation"], arns, sid="List"),
            statement(["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                      [f"{arn}/*" for arn in arns], sid="Objects"),
        ]),
    )


def _channel(stack, spec: ClusterSpec, identities: dict, filesystems: dict) -> dict:
    """The cluster's config channel in the site's state bucket, the secret container of its
    munge key, and what the nodes may do with them: every node reads the config and the key
    and writes its own reports; login nodes also put the key (the controller's first boot)
    and run a staged copy's legs. Returns the nodes' binding: the instance tags the node
    package reads through IMDSv2."""
    prefix = channel_prefix(spec.state, spec.name)
    published = []  # `current` names a version only once the version is there
    for construct_id, key, content, content_type in channel_objects(spec):
        published.append(aws("s3_object").S3Object(
            stack, construct_id, bucket=spec.state.bucket, key=key, content=content, content_type=content_type,
            depends_on=published[-1:] or None,
        ))
    secret_prefix = f"vc-{spec.site}-{spec.name}-"  # Secrets Manager names are account-wide
    secret = aws("secretsmanager_secret").SecretsmanagerSecret(
        stack, "munge_key", name=f"{secret_prefix}munge-key", description=f"munge key of cluster {spec.name}",
        tags={"cluster": spec.name},
    )
    objects_of = f"arn:aws:s3:::{spec.state.bucket}/{prefix}"
    # the site's package bucket (its landing zone's): every node reads it, none writes
    packages = bucket_name(spec.account, spec.site, "packages") if spec.package_registries else ""
    for identity, (_, role) in identities.items():
        login = identity == "login"
        aws("iam_role_policy").IamRolePolicy(
            stack, f"{identity}_channel", name="vcluster-channel", role=role.name,
            policy=policy([
                statement(["s3:GetObject"], [f"{objects_of}/config/*"], sid="ReadConfig"),
                # compute nodes write their own pools' reports only: never the controller's or a login
                # node's, whose acknowledgements a copy's freeze waits for
                *([statement(["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], reports, sid="Report")]
                  if (reports := [f"{objects_of}/nodes/*"] if login else
                      [f"{objects_of}/nodes/{spec.name}-{p.name}-*" for p in spec.pools if p.role != "login"]) else []),
                *([
                    # a staged copy: the legs the reconciler leaves, their results, and what they carry
                    statement(["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                              [f"{objects_of}/tasks/*", f"{objects_of}/staging/*"], sid="Stage"),
                    statement(["s3:ListBucket"], [f"arn:aws:s3:::{spec.state.bucket}"],
                              {"StringLike": {"s3:prefix": [f"{prefix}/staging/*"]}}, sid="ListStaging"),
                ] if login else []),
                statement(["secretsmanager:GetSecretValue", *(["secretsmanager:PutSecretValue"] if login else [])],
                          [secret.arn], sid="MungeKey"),
                *([
                    statement(["s3:ListBucket"], [f"arn:aws:s3:::{packages}"], sid="ListPackages"),
                    statement(["s3:GetObject"], [f"arn:aws:s3:::{packages}/*"], sid="ReadPackages"),
                ] if packages else []),
            ]),
        )
    # what the node package's `aws_mounts` reads: EFS by its DNS name, Lustre by its LNet address
    mounts = {
        fs["mount"]: f"{fs['dns_name']}@tcp:/{fs['mount_name']}" if fs["type"] == "lustre" else f"{fs['dns_name']}:/"
        for fs in filesystems.values()
    }
    binding = {
        "vcluster-channel": f"s3://{spec.state.bucket}/{prefix}",
        "vcluster-secret-prefix": secret_prefix,
        "vcluster-mounts": cdk.cdktf.Fn.jsonencode(mounts),
    }
    if packages:  # the repositories under `rpm/` and `deb/`, which the bootstrap syncs and installs from
        binding["vcluster-packages"] = f"s3://{packages}"
    return binding


def _image(stack, kind: str, images: dict[str, str]) -> str:
    """The current AMI of a kind, read once per stack from its public SSM parameter."""
    if kind not in images:
        parameter = aws("data_aws_ssm_parameter").DataAwsSsmParameter(stack, f"image_{kind}", name=IMAGES[kind])
        images[kind] = parameter.insecure_value  # an AMI id is no secret; `value` would hide it in plans
    return images[kind]


def _pool(stack, spec: ClusterSpec, pool: ComputePool, subnet, groups: dict, identities: dict, images: dict, binding: dict) -> list:
    """A pool's launch template and one instance per node: returns the instances in hostname order."""
    prefix = f"{spec.site}-{spec.name}-{pool.name}"
    placement = None
    if pool.placement == "compact" and pool.count >= 2:
        # Nodes of a tightly coupled pool on the same network spine: lowest latency for MPI/NCCL.
        placement = aws("placement_group").PlacementGroup(
            stack, f"placement_{pool.name}", name=prefix, strategy="cluster"
        )
    image = _image(stack, "gpu" if pool.node.gpu_count else "cpu", images)
    # the template names the nodes' profile; a login node's instance names its own, which EC2
    # changes in place (a template's change would replace every instance that follows it)
    template = _launch_template(stack, spec, pool, prefix, identities["node"][0], image)
    version = cdk.cdktf.Token.as_string(template.latest_version)
    security_groups = [groups["nodes"].id] + ([groups["login"].id] if pool.role == "login" else [])
    tags = {"cluster": spec.name, "pool": pool.name, "role": pool.role}
    if pool.node.local_ssd_gb:
        # Instance-store NVMe comes with the machine type: nothing to attach, cloud-init formats it.
        tags["local-nvme-gb"] = str(pool.node.local_ssd_gb)
    cards = catalog("aws").machine_types[pool.machine_type].efa_interfaces if pool.fabric == "efa" else 0
    instances = []
    for index, (hostname, address) in enumerate(zip(pool.hostnames, pool.addresses, strict=True)):
        interface = _interface(stack, pool, index, hostname, address, subnet, security_groups)
        if cards > 1:
            # EFA on every network card, declared at launch (EFA cannot be attached to a running
            # instance): the primary ENA+EFA interface on card 0, an EFA-only interface (no
            # address, so none of the subnet's planned addresses is taken) on each other card.
            # Through `network_interface`, which takes a card index: `primary_network_interface`
            # conflicts with it and holds one interface only.
            extra = [_efa_only(stack, pool, index, card, hostname, subnet, groups["nodes"].id) for card in range(1, cards)]
            interfaces = {"network_interface": [
                {"device_index": 0, "network_card_index": 0, "network_interface_id": interface.id},
                *({"device_index": 0, "network_card_index": card, "network_interface_id": e.id} for card, e in enumerate(extra, 1)),
            ]}
        else:
            interfaces = {"primary_network_interface": {"network_interface_id": interface.id}}
        node = aws("instance").Instance(
            stack,
            f"node_{pool.name}_{index}",
            launch_template={"id": template.id, "version": version},
            placement_group=placement.name if placement else None,
            # the node package reads its binding from the tags (instance metadata, IMDSv2 only);
            # set on the instance, where a change is made in place
            # hop limit 2: containers on the node (one hop more) get its credentials too
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "instance_metadata_tags": "enabled",
                              "http_put_response_hop_limit": 2},
            tags={"Name": hostname, **tags, **binding, "vcluster-hostname": hostname, "vcluster-pool": pool.name},
            iam_instance_profile=identities["login"][0].name if node_identity(spec, pool, hostname) == "login" else None,
        )
        for block, value in interfaces.items():
            node.add_override(block, value)
        # Interfaces are chosen at launch: a node keeps its own until it is replaced on purpose
        # (a change of interface layout replaces no running node).
        node.add_override("lifecycle.ignore_changes", ["primary_network_interface", "network_interface"])
        instances.append(node)
    # replaced on purpose, with the template: its image and first-boot data are the current ones
    # (a template's changes are otherwise ignored, so that no running node follows them)
    cdk.rolled_by_generation(stack, pool, [template, *instances])
    return instances


def _efa_only(stack, pool: ComputePool, index: int, card: int, hostname: str, subnet, nodes_group: str):
    """An EFA-only interface for one more network card of a node: OS-bypass traffic only."""
    return aws("network_interface").NetworkInterface(
        stack,
        f"node_{pool.name}_{index}_efa_{card}",
        subnet_id=subnet.id,
        security_groups=[nodes_group],  # the group that admits itself carries EFA traffic
        interface_type="efa-only",
        tags={"Name": f"{hostname}-efa-{card}"},
    )


def _interface(stack, pool: ComputePool, index: int, hostname: str, address: str, subnet, security_groups: list):
    """A node's primary network interface, holding its address (and EFA, when the type has it).

    Not in the launch template: EC2 refuses a request with both template interfaces and an
    instance-level subnet or address, and the address differs for every node of a pool.
    """
    return aws("network_interface").NetworkInterface(
        stack,
        f"node_{pool.name}_{index}_interface",
        subnet_id=subnet.id,
        private_ips=[address],
        security_groups=security_groups,
        interface_type="efa" if pool.fabric == "efa" else None,
        tags={"Name": hostname},
    )


def _launch_template(stack, spec: ClusterSpec, pool: ComputePool, name: str, profile, image: str):
    """What every node of a pool boots: type, image, cloud-init, root disk, metadata rules."""
    module = aws("launch_template")
    template = module.LaunchTemplate(
        stack,
        f"template_{pool.name}",
        name=name,
        instance_type=pool.machine_type,
        image_id=image,
        # Encoded here rather than with Terraform's base64encode: the same bytes, visible in the JSON.
        user_data=base64.b64encode(user_data(spec)).decode() if spec.user_data else None,
        iam_instance_profile={"arn": profile.arn},
        # IMDSv2 only. The instances set the rest (hop limit, tags): a change there is made in place,
        # while a new template version would replace every instance that follows it.
        metadata_options={"http_endpoint": "enabled", "http_tokens": "required"},
        block_device_mappings=[
            module.LaunchTemplateBlockDeviceMappings(
                device_name="/dev/xvda",  # the root device of Amazon Linux 2023 images
                ebs={
                    "volume_size": ROOT_VOLUME_GB,
                    "volume_type": "gp3",
                    "encrypted": "true",
                    "delete_on_termination": "true",
                },
            )
        ],
        tags={"Name": name},
    )
    # The SSM parameter moves with every AMI release; following it would replace every node of
    # a running cluster unasked. A new image is taken when the template is replaced on purpose.
    # So with the first-boot data: a new template version would replace every instance that
    # follows it, while only a first boot reads it (day-to-day config comes through the channel).
    template.add_override("lifecycle.ignore_changes", ["image_id", "user_data"])
    return template


# ---------------------------------------------------------------- storage


def lustre_capacity_gib(size_gb: int) -> int:
    """The smallest FSx for Lustre SSD capacity holding `size_gb` (read as GiB: that only rounds up)."""
    if size_gb <= LUSTRE_MIN_GIB:
        return LUSTRE_MIN_GIB
    return math.ceil(size_gb / LUSTRE_STEP_GIB) * LUSTRE_STEP_GIB


def shared_on_lustre(spec: ClusterSpec) -> bool:
    """/home and project data on Lustre where jobs read them hard: EFA pools, Slurm, applications."""
    return any(p.fabric == "efa" for p in spec.pools) or spec.flavor in ("slurm", "application")


def _storage(stack, spec: ClusterSpec, subnet, nodes) -> tuple[dict, dict]:
    """File systems and buckets of the cluster: ({volume: mount facts}, {volume: bucket name})."""
    filesystems, buckets = {}, {}
    for volume in spec.storage:
        if volume.kind == "object":
            # The site is part of the name: bucket names are global, and a move that keeps its
            # data leaves the source's bucket in place while the target creates its own.
            name = volume.adopt or bucket_name(spec.account, spec.site, spec.name, volume.name)
            # versioned: an overwrite or a delete is undone within the site's retention
            bucket = private_bucket(stack, volume.name, name, versioned=True, noncurrent_days=spec.retention_days,
                                    log_to=access_logs_bucket(spec.account, spec.site),
                                    lock_days=volume.lock_days, lock_mode=volume.lock_mode)
            if volume.adopt:  # a bucket's id is its name
                cdk.adopt(bucket, volume.adopt)
            buckets[volume.name] = bucket.bucket
        elif volume.kind == "scratch":
            filesystems[volume.name] = _lustre(stack, spec, volume, "SCRATCH_2", subnet, nodes)
        elif shared_on_lustre(spec):
            filesystems[volume.name] = _lustre(stack, spec, volume, "PERSISTENT_2", subnet, nodes)
        else:
            filesystems[volume.name] = _efs(stack, spec, volume, subnet, nodes)
    return filesystems, buckets


def _lustre(stack, spec: ClusterSpec, volume: StorageVolume, deployment: str, subnet, nodes) -> dict:
    persistent = deployment.startswith("PERSISTENT")
    fs = aws("fsx_lustre_file_system").FsxLustreFileSystem(
        stack,
        f"storage_{volume.name}",
        deployment_type=deployment,
        storage_capacity=lustre_capacity_gib(volume.size_gb),
        per_unit_storage_throughput=LUSTRE_THROUGHPUT_MBPS_PER_TIB if persistent else None,
        file_system_type_version=LUSTRE_VERSION,
        subnet_ids=[subnet.id],
        security_group_ids=[nodes.id],
        tags={"Name": f"{spec.name}-{volume.name}", "mount": volume.mount},
    )
    if volume.adopt:
        cdk.adopt(fs, volume.adopt)
    return {"type": "lustre", "mount": volume.mount, "dns_name": fs.dns_name, "mount_name": fs.mount_name}


def _efs(stack, spec: ClusterSpec, volume: StorageVolume, subnet, nodes) -> dict:
    """EFS grows with its data: `size_gb` is no limit to set, only what the cluster expects."""
    fs = aws("efs_file_system").EfsFileSystem(
        stack,
        f"storage_{volume.name}",
        creation_token=f"{spec.site}-{spec.name}-{volume.name}",  # makes a retried create idempotent
        encrypted=True,
        throughput_mode="elastic",
        tags={"Name": f"{spec.name}-{volume.name}", "mount": volume.mount},
    )
    if volume.adopt:  # an adopted file system was created with a token of its own
        cdk.adopt(fs, volume.adopt)
        fs.add_override("lifecycle", {"ignore_changes": ["creation_token"]})
    aws("efs_mount_target").EfsMountTarget(
        stack, f"storage_{volume.name}_mount", file_system_id=fs.id, subnet_id=subnet.id, security_groups=[nodes.id]
    )
    return {"type": "efs", "mount": volume.mount, "dns_name": fs.dns_name}


# ---------------------------------------------------------------- access


def _access(stack, spec: ClusterSpec) -> None:
    """One IAM group per access group, allowed to open SSM sessions on this cluster's nodes:
    admins and operators a shell on every node, users SSH to the login nodes only.

    Which nodes is decided by their tags (`cluster`, and `role` for users), so nodes added later
    are covered without touching the policy.
    """
    instances = f"arn:aws:ec2:{spec.region}:{spec.account}:instance/*"
    # the site's own shell document, which streams the session to the site's log group
    # (landing_zone._session_logs); never the account's default shell document
    shell = f"arn:aws:ssm:{spec.region}:{spec.account}:document/{session_document_name(spec.site)}"
    ssh = f"arn:aws:ssm:{spec.region}::document/AWS-StartSSHSession"
    for group in spec.access:
        reach = {"ssm:resourceTag/cluster": spec.name}
        # Users get SSH through Session Manager only: sshd and SSSD decide, and they log in as
        # their own directory account. A shell document runs as ssm-user, which has sudo and
        # passes SSSD by: on the login node, which holds the munge key, that is the cluster.
        documents = [shell, ssh] if group.role in NODE_ROLES else [ssh]
        if group.role not in NODE_ROLES:
            reach["ssm:resourceTag/role"] = "login"
        # A session asked for with no document runs the shell document: with this condition
        # Session Manager checks that the caller may use it, instead of letting it through.
        nodes = {"StringEquals": reach, "BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}
        document = policy(
            [
                statement(["ssm:StartSession"], [instances], nodes, sid="ClusterNodes"),
                statement(["ssm:StartSession"], documents, sid="SessionDocuments"),
                # `$${` is Terraform's escape: IAM, not Terraform, fills in the user name.
                statement(
                    ["ssm:TerminateSession", "ssm:ResumeSession"],
                    ["arn:aws:ssm:*:*:session/$${aws:username}-*"],
                    sid="OwnSessions",
                ),
            ]
        )
        # IAM names are global to the account: with the site, so that a move between two sites of
        # one account can create the target's groups while the source's still exist
        iam = aws("iam_group").IamGroup(stack, f"group_{group.name}", name=f"{spec.site}-{spec.name}-{group.name}")
        aws("iam_group_policy").IamGroupPolicy(
            stack, f"group_{group.name}_sessions", name="ssm-sessions", group=iam.name, policy=document
        )
