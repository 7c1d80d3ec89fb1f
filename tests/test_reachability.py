"""Who reaches what, derived from the synthesized Terraform JSON of a site and its clusters.

The golden JSON of each cloud (a landing zone with `egress: nat`, one with `egress: private`
and runners of its own, and the clusters on them) is read into a model of that platform's
packet filter, with the rules the platform adds by itself, and the model answers "may source S
open port P on resource R". The answers are compared with the table below. Mutation tests
inject the rule a hurried change would add and show that the table then fails.

What each model adds by itself, as the platforms document it:
- GCP (https://cloud.google.com/firewall/docs/firewalls#default_firewall_rules): an implied
  rule denies all ingress and one allows all egress, both at priority 65535; the lowest
  priority number decides, a deny winning a tie. GKE creates rules of its own for its nodes
  (https://cloud.google.com/kubernetes-engine/docs/concepts/firewall-rules): from the node
  subnet's primary range (`-vms`), from the pod range (`-all`) and from the control plane
  (`-master`, tcp 443 and 10250). The private endpoint of the API answers the master authorized
  networks only. A VM reaches the internet through its external address or Cloud NAT.
- AWS (https://docs.aws.amazon.com/vpc/latest/userguide/security-group-rules.html): a security
  group allows only what its rules allow, in and out, and a flow needs the source's egress and
  the destination's ingress; Terraform removes the default allow-all egress rule of a group it
  makes. EKS makes a cluster security group that admits itself and lets everything out, and
  puts it on the control plane's interfaces and the managed nodes both
  (https://docs.aws.amazon.com/eks/latest/userguide/sec-group-reqs.html). The network ACLs
  are the VPC's default (all allowed). A private subnet reaches the internet through the NAT
  gateway its route table sends 0.0.0.0/0 to, and S3 through a gateway endpoint on that table.

Landing-zone services answer on the control nodes (GKE's and EKS's managed nodes), at addresses
of the services subnet; Kubernetes LoadBalancer services add their own rules with the services
layer, which is not part of these stacks.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from dataclasses import dataclass, field

import pytest

from conftest import GOLDEN
from reconciler import layers
from rpi.spec import SERVICE_PORTS, landing_zone_ports, service_port

INTERNET = "203.0.113.10"  # any address beyond the site
RUNNER = "192.0.2.5"  # inside the private variants' runner range 192.0.2.0/28
IAP = "35.235.240.7"
GOOGLE_PRIVATE_API = "199.36.153.9"
S3_ADDRESS = "52.219.170.10"  # in com.amazonaws.eu-central-1.s3


def load(path: str) -> dict:
    return json.loads((GOLDEN / path).read_text())


def resources(document: dict, kind: str) -> dict:
    return document.get("resource", {}).get(kind, {})


def host_in(cidr: str, index: int = 10) -> str:
    return str(ipaddress.IPv4Network(cidr).network_address + index)


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    tags: frozenset = frozenset()  # GCP network tags
    groups: frozenset = frozenset()  # AWS security groups, (stack, reference)
    public: bool = False  # has an external address of its own
    kind: str = "vm"  # vm | api | internet | endpoint
    prefix_lists: frozenset = frozenset()
    private_path: bool = False  # a source outside the VPC that reaches it privately (IAP, the site's runners)


def ports_match(protocol: str, ports: list | None, want_protocol: str, want_port: int) -> bool:
    if protocol not in ("all", "-1", want_protocol):
        return False
    if protocol in ("all", "-1") or not ports:
        return True
    for item in ports:
        low, _, high = str(item).partition("-")
        if int(low) <= want_port <= int(high or low):
            return True
    return False


def within(ip: str, cidrs) -> bool:
    return any(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(c) for c in cidrs)


# ---------------------------------------------------------------- GCP


@dataclass
class GcpRule:
    name: str
    direction: str
    priority: int
    action: str  # allow | deny
    ranges: tuple  # source ranges (ingress) or destination ranges (egress)
    source_tags: tuple
    target_tags: tuple  # () for every instance
    allowed: tuple  # (protocol, ports)


@dataclass
class GcpSite:
    rules: list = field(default_factory=list)
    authorized: tuple = ()
    nat: bool = False
    hosts: dict = field(default_factory=dict)
    forwarded: dict = field(default_factory=dict)  # host -> ((protocol, low, high), ...): external protocol forwarding


def gcp_rules(document: dict, tokens: dict) -> list[GcpRule]:
    out = []
    for name, rule in resources(document, "google_compute_firewall").items():
        action = "allow" if rule.get("allow") else "deny"
        blocks = rule.get("allow") or rule.get("deny")
        direction = rule.get("direction", "INGRESS")
        ranges = rule.get("source_ranges" if direction == "INGRESS" else "destination_ranges") or []
        resolved = tuple(tokens.get(r, r) for r in ranges)
        assert not any("${" in r for r in resolved), f"the model cannot read {name}'s ranges {ranges}"
        out.append(GcpRule(
            name, direction, int(rule.get("priority", 1000)), action, resolved, tuple(rule.get("source_tags") or ()),
            tuple(rule.get("target_tags") or ()), tuple((b["protocol"], tuple(b.get("ports") or ())) for b in blocks),
        ))
    return out


def gcp_site(zone: dict, clusters: dict[str, dict]) -> GcpSite:
    site = GcpSite()
    lz = resources
    psa = lz(zone, "google_compute_global_address")["private_services_range"]
    tokens = {
        "${data.google_compute_global_address.private_services_range.address}/"
        "${data.google_compute_global_address.private_services_range.prefix_length}":
            f"{psa['address']}/{psa['prefix_length']}",
    }
    site.rules = gcp_rules(zone, tokens)
    gke = lz(zone, "google_container_cluster")["gke"]
    services = lz(zone, "google_compute_subnetwork")["subnet_services"]
    pods = next(r["ip_cidr_range"] for r in services["secondary_ip_range"] if r["range_name"] == "gke-pods")
    master = gke["private_cluster_config"]["master_ipv4_cidr_block"]
    control = tuple(lz(zone, "google_container_node_pool")["control_nodes"]["node_config"]["tags"])
    # GKE's own rules for its nodes
    site.rules += [
        GcpRule("gke-vms", "INGRESS", 1000, "allow", (services["ip_cidr_range"],), (), control,
                (("tcp", ("1-65535",)), ("udp", ("1-65535",)), ("icmp", ()))),
        GcpRule("gke-all", "INGRESS", 1000, "allow", (pods,), (), control, (("all", ()),)),
        GcpRule("gke-master", "INGRESS", 1000, "allow", (master,), (), control, (("tcp", ("443", "10250")),)),
        GcpRule("implied-deny-ingress", "INGRESS", 65535, "deny", ("0.0.0.0/0",), (), (), (("all", ()),)),
        GcpRule("implied-allow-egress", "EGRESS", 65535, "allow", ("0.0.0.0/0",), (), (), (("all", ()),)),
    ]
    site.authorized = tuple(b["cidr_block"] for b in gke["master_authorized_networks_config"]["cidr_blocks"])
    site.nat = bool(lz(zone, "google_compute_router_nat"))
    site.hosts["control"] = Host("control", host_in(services["ip_cidr_range"]), tags=frozenset(control))
    site.hosts["api"] = Host("api", host_in(master, 2), kind="api")
    site.hosts["internet"] = Host("internet", INTERNET, kind="internet")
    site.hosts["runner"] = Host("runner", RUNNER, kind="internet", private_path=True)
    site.hosts["iap"] = Host("iap", IAP, kind="internet", private_path=True)
    site.hosts["google-apis"] = Host("google-apis", GOOGLE_PRIVATE_API, kind="internet")
    for cluster, document in clusters.items():
        site.rules += gcp_rules(document, tokens)
        for name, node in resources(document, "google_compute_instance").items():
            interface = node["network_interface"][0]
            site.hosts[f"{cluster}/{name}"] = Host(
                f"{cluster}/{name}", interface["network_ip"], tags=frozenset(node.get("tags", ())),
                public=bool(interface.get("access_config")),
            )
        # External protocol forwarding: a forwarding rule's public address delivers its ports to
        # the one instance of its target instance (https://cloud.google.com/load-balancing/docs/protocol-forwarding)
        targets = {f"${{google_compute_target_instance.{name}.self_link}}": t["instance"]
                   for name, t in resources(document, "google_compute_target_instance").items()}
        for rule in resources(document, "google_compute_forwarding_rule").values():
            instance = re.fullmatch(r"\$\{google_compute_instance\.(\w+)\.self_link\}", targets[rule["target"]]).group(1)
            low, _, high = (rule.get("port_range") or "1-65535").partition("-")
            site.forwarded.setdefault(f"{cluster}/{instance}", []).append(
                (rule.get("ip_protocol", "TCP").lower(), int(low), int(high or low)))
    return site


def _gcp_decide(rules: list[GcpRule]) -> bool:
    best = min(r.priority for r in rules)
    return not any(r.action == "deny" for r in rules if r.priority == best)


def gcp_reaches(site: GcpSite, source: str, target: str, protocol: str, port: int) -> bool:
    src, dst = site.hosts[source], site.hosts[target]

    def applies(rule: GcpRule, host: Host) -> bool:
        return not rule.target_tags or bool(host.tags & set(rule.target_tags))

    def carries(rule: GcpRule) -> bool:
        return any(ports_match(p, list(ports), protocol, port) for p, ports in rule.allowed)

    if src.kind == "vm":
        out = [r for r in site.rules if r.direction == "EGRESS" and applies(r, src) and within(dst.ip, r.ranges) and carries(r)]
        if not _gcp_decide(out):
            return False
    if dst.kind == "api":
        return protocol == "tcp" and port == 443 and within(src.ip, site.authorized)
    if dst.kind == "internet":
        # Google's private API range is reached through Private Google Access, without NAT
        return src.public or site.nat or dst.name == "google-apis"
    if src.kind == "internet" and not src.private_path and dst.kind == "vm" and not dst.public and not any(
        p == protocol and low <= port <= high for p, low, high in site.forwarded.get(target, ())
    ):
        return False  # from the internet only to an external address: the node's own, or a forwarding rule's
    into = [r for r in site.rules if r.direction == "INGRESS" and applies(r, dst) and carries(r)
            and (within(src.ip, r.ranges) or bool(src.tags & set(r.source_tags)))]
    return _gcp_decide(into)


# ---------------------------------------------------------------- AWS


EKS_GROUP = "${aws_eks_cluster.eks.vpc_config[0].cluster_security_group_id}"


@dataclass
class AwsRule:
    group: tuple
    direction: str  # ingress | egress
    protocol: str
    low: int | None
    high: int | None
    cidr: str | None
    group_peer: tuple | None
    prefix_list: str | None


@dataclass
class AwsSite:
    rules: list = field(default_factory=list)
    nat: bool = False
    s3_gateway: bool = False
    hosts: dict = field(default_factory=dict)


def aws_group(stack: str, reference: str, zone_stack: str = "landing-zone") -> tuple:
    """A security group by (stack, reference): cluster stacks name the landing zone's by lookups."""
    if reference == EKS_GROUP:
        return (zone_stack, "eks-cluster")
    if reference == "${data.aws_security_group.endpoints.id}":
        return (zone_stack, "${aws_security_group.endpoints.id}")
    assert reference.startswith("${aws_security_group."), f"the model cannot read the group {reference}"
    return (stack, reference)


def aws_rules(stack: str, document: dict) -> list[AwsRule]:
    out = []
    for direction in ("ingress", "egress"):
        for rule in resources(document, f"aws_vpc_security_group_{direction}_rule").values():
            peer = rule.get("referenced_security_group_id")
            prefix = rule.get("prefix_list_id")
            out.append(AwsRule(
                aws_group(stack, rule["security_group_id"]), direction, rule["ip_protocol"], rule.get("from_port"),
                rule.get("to_port"), rule.get("cidr_ipv4"), aws_group(stack, peer) if peer else None,
                "s3" if prefix == "${data.aws_ec2_managed_prefix_list.s3_prefix_list.id}" else prefix,
            ))
    return out


def aws_site(zone: dict, clusters: dict[str, dict]) -> AwsSite:
    site = AwsSite()
    site.rules = aws_rules("landing-zone", zone)
    eks = ("landing-zone", "eks-cluster")
    site.rules += [  # what EKS gives its cluster security group
        AwsRule(eks, "ingress", "-1", None, None, None, eks, None),
        AwsRule(eks, "egress", "-1", None, None, "0.0.0.0/0", None, None),
    ]
    routes = resources(zone, "aws_route")
    site.nat = any(r.get("nat_gateway_id") for r in routes.values())
    endpoints = resources(zone, "aws_vpc_endpoint")
    site.s3_gateway = any(e["vpc_endpoint_type"] == "Gateway" and e["service_name"].endswith(".s3") for e in endpoints.values())
    services = resources(zone, "aws_subnet")["subnet_services"]["cidr_block"]
    api_groups = {aws_group("landing-zone", g) for g in resources(zone, "aws_eks_cluster")["eks"]["vpc_config"]["security_group_ids"]}
    site.hosts["control"] = Host("control", host_in(services), groups=frozenset({eks}))
    site.hosts["api"] = Host("api", host_in(services, 20), groups=frozenset({eks, *api_groups}))
    if any(e["vpc_endpoint_type"] == "Interface" for e in endpoints.values()):
        group = aws_group("landing-zone", "${aws_security_group.endpoints.id}")
        site.hosts["ssm-endpoint"] = Host("ssm-endpoint", host_in(services, 30), groups=frozenset({group}), kind="endpoint")
    site.hosts["internet"] = Host("internet", INTERNET, kind="internet")
    site.hosts["runner"] = Host("runner", RUNNER, kind="internet")
    site.hosts["s3"] = Host("s3", S3_ADDRESS, kind="internet", prefix_lists=frozenset({"s3"}))
    for cluster, document in clusters.items():
        site.rules += aws_rules(cluster, document)
        for name, interface in resources(document, "aws_network_interface").items():
            if not interface.get("private_ips"):
                continue  # EFA interfaces of the same node
            site.hosts[f"{cluster}/{name}"] = Host(
                f"{cluster}/{name}", interface["private_ips"][0],
                groups=frozenset(aws_group(cluster, g) for g in interface["security_groups"]),
            )
    return site


def _aws_matches(rule: AwsRule, peer: Host, protocol: str, port: int) -> bool:
    if rule.protocol not in ("-1", protocol):
        return False
    if rule.protocol != "-1" and not (rule.low <= port <= rule.high):
        return False
    if rule.cidr is not None:
        return within(peer.ip, [rule.cidr])
    if rule.group_peer is not None:
        return rule.group_peer in peer.groups
    return rule.prefix_list in peer.prefix_lists


def aws_reaches(site: AwsSite, source: str, target: str, protocol: str, port: int) -> bool:
    src, dst = site.hosts[source], site.hosts[target]
    if src.kind == "vm" and not any(
        r.direction == "egress" and r.group in src.groups and _aws_matches(r, dst, protocol, port) for r in site.rules
    ):
        return False
    if dst.kind == "internet":
        if dst.prefix_lists and site.s3_gateway:
            return True
        return src.public or site.nat
    return any(r.direction == "ingress" and r.group in dst.groups and _aws_matches(r, src, protocol, port)
               for r in site.rules)


# ---------------------------------------------------------------- the table

# (source, target, protocol, port) -> reached, on a site with egress: nat / egress: private.
# "node" is the first node of the first cluster (dev), "peer" its neighbour in the same cluster,
# "other" a node of another cluster of the site (slurm-hpc), which dev admits on port 22
# (tests/conftest.py DEV_ADMITS_SLURM_HPC).
TABLE = {
    ("node", "control", "tcp", 636): (True, True),  # LDAPS
    ("node", "control", "tcp", 8200): (True, True),  # Vault
    ("node", "control", "tcp", 22): (False, False),
    ("node", "control", "tcp", 10250): (False, False),  # the kubelet
    ("node", "api", "tcp", 443): (False, False),  # the Kubernetes API
    ("node", "peer", "tcp", 6818): (True, True),  # slurmd, between the nodes of one cluster
    ("node", "other", "tcp", 22): (False, False),
    ("node", "other", "tcp", 6818): (False, False),
    ("other", "node", "tcp", 22): (True, True),  # dev's network.admit lets slurm-hpc in on 22, one way
    ("other", "node", "udp", 22): (True, True),
    ("other", "node", "tcp", 6818): (False, False),  # and on no other port
    ("node", "internet", "tcp", 443): (True, False),
    ("control", "api", "tcp", 443): (True, True),
    ("runner", "api", "tcp", 443): (False, True),  # only the private variant names runners
    ("internet", "control", "tcp", 22): (False, False),
    ("internet", "node", "tcp", 22): (False, False),
    ("internet", "api", "tcp", 443): (False, False),
}
GCP_ONLY = {
    ("iap", "control", "tcp", 22): (True, True),  # repairs through Identity-Aware Proxy
    ("node", "google-apis", "tcp", 443): (True, True),  # Private Google Access
}
AWS_ONLY = {
    ("node", "s3", "tcp", 443): (True, True),  # NAT, or the gateway endpoint
}
AWS_PRIVATE = {("node", "ssm-endpoint", "tcp", 443): True}  # Session Manager without NAT


PLATFORMS = {
    "gcp": ("gcp/landing-zone-gcp-zurich", ("dev", "slurm-hpc", "icon"), "", gcp_site, gcp_reaches),
    "aws": ("aws/landing-zone-aws-frankfurt", ("dev", "slurm-hpc", "gpu-ai"), "aws", aws_site, aws_reaches),
}


def site_of(platform: str, variant: str, mutate=None):
    zone_path, names, _, build, _ = PLATFORMS[platform]
    zone = load(f"{zone_path}{'-private' if variant == 'private' else ''}.tf.json")
    clusters = {}
    for name in names:
        private = GOLDEN / f"{platform}/cluster-{name}-private.tf.json"
        path = private if variant == "private" and private.exists() else GOLDEN / f"{platform}/cluster-{name}.tf.json"
        document = json.loads(path.read_text())
        if platform == "gcp" and not _on_site(document, zone):
            continue
        clusters[name] = document
    if mutate:
        mutate(zone, clusters)
    return build(zone, clusters)


def _on_site(cluster: dict, zone: dict) -> bool:
    network = resources(zone, "google_compute_network")["vpc"]["name"]
    return cluster.get("data", {}).get("google_compute_network", {}).get("network", {}).get("name") == network


def roles(site, names: tuple) -> dict[str, str]:
    """node, peer and other: two nodes of the first cluster, one of the second."""
    first = sorted(h for h in site.hosts if h.startswith(f"{names[0]}/"))
    second = sorted(h for h in site.hosts if h.startswith(f"{names[1]}/"))
    return {"node": first[0], "peer": first[1], "other": second[0]}


def table(platform: str, variant: str) -> dict:
    column = 0 if variant == "nat" else 1
    rows = {k: v[column] for k, v in TABLE.items()}
    rows |= {k: v[column] for k, v in (GCP_ONLY if platform == "gcp" else AWS_ONLY).items()}
    if platform == "aws" and variant == "private":
        rows |= AWS_PRIVATE
    return rows


def derived(platform: str, variant: str, mutate=None) -> dict:
    _, names, _, _, reaches = PLATFORMS[platform]
    site = site_of(platform, variant, mutate)
    named = roles(site, names)
    return {
        (s, t, p, port): reaches(site, named.get(s, s), named.get(t, t), p, port)
        for (s, t, p, port) in table(platform, variant)
    }


@pytest.mark.parametrize("variant", ["nat", "private"])
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_who_reaches_what_is_the_table(platform, variant):
    assert derived(platform, variant) == table(platform, variant)


def test_a_cluster_reaches_the_service_ports_of_the_control_nodes_and_no_other():
    for platform in PLATFORMS:
        _, names, _, _, reaches = PLATFORMS[platform]
        site = site_of(platform, "nat")
        node = roles(site, names)["node"]
        for port in (*landing_zone_ports(), 22, 443, 2049, 6817, 10250):
            assert reaches(site, node, "control", "tcp", port) == (port in landing_zone_ports()), (platform, port)


def test_the_ports_are_the_ports_the_nodes_use():
    """One table (rpi.spec.SERVICE_PORTS) for the firewalls, the rendered endpoints and the
    sites' service addresses."""
    assert {name: service_port(url) for name, url in layers.ENDPOINTS.items()} == SERVICE_PORTS
    assert 443 not in SERVICE_PORTS.values()  # the Kubernetes API's port, on AWS's shared group
    from reconciler.gitsource import GitSource
    from reconciler.run import desired
    from conftest import ROOT

    units = desired(GitSource(ROOT).working_tree()).units
    for key, unit in units.items():
        if key.startswith("site:"):
            for service in unit.spec.services:
                name = "vault" if service.name == "store" else service.name
                assert service_port(service.address) == SERVICE_PORTS[name], (key, service)


# ---------------------------------------------------------------- mutations: the model can fail


def _gcp_allow_all(zone, clusters):
    first = next(iter(clusters.values()))
    resources(first, "google_compute_firewall")["injected"] = {
        "direction": "INGRESS", "source_ranges": ["0.0.0.0/0"], "allow": [{"protocol": "all"}],
    }


def _gcp_vpc_to_api(zone, clusters):
    blocks = resources(zone, "google_container_cluster")["gke"]["master_authorized_networks_config"]["cidr_blocks"]
    blocks.append({"cidr_block": "10.30.0.0/16", "display_name": "site VPC"})


def _gcp_nat(zone, clusters):
    zone["resource"].setdefault("google_compute_router_nat", {})["nat"] = {"name": "injected"}
    zone["resource"]["google_compute_firewall"].pop("firewall_egress_deny", None)


def _aws_allow_all(zone, clusters):
    resources(zone, "aws_vpc_security_group_ingress_rule")["injected"] = {
        "security_group_id": EKS_GROUP, "ip_protocol": "-1", "cidr_ipv4": "10.60.0.0/16",
    }


def _aws_egress_all(zone, clusters):
    first_name, first = next(iter(clusters.items()))
    resources(first, "aws_vpc_security_group_egress_rule")["injected"] = {
        "security_group_id": "${aws_security_group.security_group_nodes.id}", "ip_protocol": "-1",
        "cidr_ipv4": "0.0.0.0/0",
    }
    zone["resource"]["aws_route"]["injected"] = {"nat_gateway_id": "${aws_nat_gateway.injected.id}"}


def _aws_api_from_vpc(zone, clusters):
    resources(zone, "aws_vpc_security_group_ingress_rule")["injected"] = {
        "security_group_id": "${aws_security_group.control_plane.id}", "ip_protocol": "tcp", "from_port": 443,
        "to_port": 443, "cidr_ipv4": "10.60.0.0/16",
    }


def _gcp_admit_widened(zone, clusters):
    resources(clusters["dev"], "google_compute_firewall")["firewall_from_slurm-hpc"]["allow"] = [{"protocol": "all"}]


def _aws_admit_widened(zone, clusters):
    rules = (("dev", "ingress", "admit_from_slurm-hpc_tcp_22_22"), ("slurm-hpc", "egress", "admit_to_dev_tcp_22_22"))
    for name, direction, rule in rules:
        resources(clusters[name], f"aws_vpc_security_group_{direction}_rule")[rule]["ip_protocol"] = "-1"


MUTATIONS = {
    "gcp allow-all ingress": ("gcp", "nat", _gcp_allow_all, ("node", "control", "tcp", 22)),
    "gcp API open to the VPC": ("gcp", "nat", _gcp_vpc_to_api, ("node", "api", "tcp", 443)),
    "gcp NAT on a private site": ("gcp", "private", _gcp_nat, ("node", "internet", "tcp", 443)),
    "aws allow-all on the EKS group": ("aws", "nat", _aws_allow_all, ("node", "api", "tcp", 443)),
    "aws egress and NAT on a private site": ("aws", "private", _aws_egress_all, ("node", "internet", "tcp", 443)),
    "aws API open to the VPC": ("aws", "nat", _aws_api_from_vpc, ("node", "api", "tcp", 443)),
    "gcp admit on every port": ("gcp", "nat", _gcp_admit_widened, ("other", "node", "tcp", 6818)),
    "aws admit on every port": ("aws", "private", _aws_admit_widened, ("other", "node", "tcp", 6818)),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_an_injected_rule_fails_the_table(mutation):
    platform, variant, mutate, row = MUTATIONS[mutation]
    got = derived(platform, variant, lambda z, c: mutate(z, c))
    assert got != table(platform, variant)
    assert got[row] is True and table(platform, variant)[row] is False
