"""The gcp platform through the real cdktf: golden Terraform JSON for the gcp-zurich landing
zone and one cluster of each flavor, and the properties a reviewer would otherwise check by hand.

The specs are resolved for real: the example repository is copied, each example cluster is
placed on a GCP site (and dropped from its own failover list), and `desired` resolves it with
machine types from the GCP catalog. Three more edits make that possible, each the least the
examples need: GPU clusters go to gcp-netherlands (europe-west6 offers no A100); gpu-ai's node
asks for more than any GCP type has, so it is trimmed to what an a2-ultragpu-8g holds; and the
GCP sites get the `iam_domain` label without which access groups cannot become Google groups.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import sys
import time

import pytest

from conftest import DEV_ADMITS_SLURM_HPC, GOLDEN, ROOT, assert_providers_rules_hold, check_golden, make_repo, synthesize_stacks
from reconciler.gitsource import GitSource
from reconciler.run import Desired, desired
from rpi.spec import ClusterSpec

pytestmark = pytest.mark.slow

SITE = "gcp-zurich"
FLAVORS = {"dev": "minimal", "gpu-ai": "gpu", "slurm-hpc": "slurm", "icon": "application"}
PLACEMENT = {"dev": SITE, "slurm-hpc": SITE, "gpu-ai": "gcp-netherlands", "icon": "gcp-netherlands"}
IAM_DOMAIN = "swisstwins.ch"

# The site as it is being added to the repository; written only where the copy lacks it.
NETHERLANDS = """\
# yaml-language-server: $schema=../schema/site.schema.json
name: gcp-netherlands
description: Google Cloud landing zone in Eemshaven, for GPU work (europe-west6 offers no A100)
platform: gcp
account: swisstwins-hpc
region: europe-west4
zones: [europe-west4-a, europe-west4-b]
labels:
  sovereignty: EU
  project: swisstwins-hpc
network:
  cidr: 10.50.0.0/16
  services_subnet: 10.50.0.0/22
  clusters_range: 10.50.128.0/17
services:
  identity:
    ldap:
      base_dn: dc=swisstwins,dc=ch
    keycloak:
      realm: swisstwins
  secrets:
    provider: platform
  control_nodes:
    count: 3
    cores: 8
    memory_gb: 32
state:
  backend: gcs
  bucket: swisstwins-reconcile-state
  prefix: gcp-netherlands
"""

# The node an a2-ultragpu-8g satisfies (48 cores, 1360 GiB, 8x A100 80GB, 3221 GB local SSD).
GPU_AI_NODE = {"cores": 48, "memory_gb": 1152, "local_ssd_gb": 3000}

MAX_PROVIDER_SUBMODULES = 40  # of ~1,500: proof that the provider package is loaded lazily
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


# ---------------------------------------------------------------- building the specs


def _rewrite(repo, path: str, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, replacement, repo.read(path), flags=re.MULTILINE)
    assert count == 1, (path, pattern)
    repo.write(path, text)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Desired:
    """The example definitions with every cluster placed on a GCP site, resolved."""
    repo = make_repo(tmp_path_factory.mktemp("gcp") / "repo")
    if not (repo.path / "sites/gcp-netherlands.yaml").exists():
        repo.write("sites/gcp-netherlands.yaml", NETHERLANDS)
    for site in sorted(set(PLACEMENT.values())):
        path = f"sites/{site}.yaml"
        if "iam_domain:" not in repo.read(path):
            _rewrite(repo, path, r"^labels:\n", f"labels:\n  iam_domain: {IAM_DOMAIN}\n")
    for name, site in PLACEMENT.items():
        path = f"clusters/{name}.yaml"
        _rewrite(repo, path, r"^(placement:\n  site: )\S+", rf"\g<1>{site}")
        failover = re.search(r"^failover: \[(.*)\]$", repo.read(path), flags=re.MULTILINE)
        if failover:  # a cluster never fails over to where it runs
            others = [s for s in failover.group(1).split(", ") if s and s != site]
            _rewrite(repo, path, r"^failover: \[.*\]$", f"failover: [{', '.join(others)}]")
    repo.write("clusters/dev.yaml", repo.read("clusters/dev.yaml") + DEV_ADMITS_SLURM_HPC)
    for key, value in GPU_AI_NODE.items():
        _rewrite(repo, "clusters/gpu-ai.yaml", rf"^(    {key}: )\d+.*$", rf"\g<1>{value}")
    return desired(GitSource(repo.path).working_tree())


def cluster(example: Desired, name: str) -> ClusterSpec:
    return example.units[f"cluster:{name}@{PLACEMENT[name]}"].spec


def synthesize(stacks: dict) -> dict[str, str]:
    return synthesize_stacks("gcp", stacks)


def with_pool(spec: ClusterSpec, name: str, **changes) -> ClusterSpec:
    return dataclasses.replace(
        spec, pools=tuple(dataclasses.replace(p, **changes) if p.name == name else p for p in spec.pools)
    )


@pytest.fixture(scope="module")
def specs(example) -> dict:
    """The golden stacks and the variants, by stack name."""
    out = {"landing-zone": example.units[f"site:{SITE}"].spec}
    out |= {f"cluster-{name}": cluster(example, name) for name in FLAVORS}
    out["variant-netherlands"] = example.units["site:gcp-netherlands"].spec
    dev = out["cluster-dev"]
    out["variant-public"] = dataclasses.replace(
        dev, public_login=True, allowed_cidrs=("192.0.2.0/24", "198.51.100.0/24")
    )
    compute = next(p for p in dev.pools if p.name == "compute")
    out["variant-local-ssd"] = with_pool(dev, "compute", node=dataclasses.replace(compute.node, local_ssd_gb=1000))
    gpu = out["cluster-gpu-ai"]
    out["variant-adopted"] = dataclasses.replace(gpu, storage=tuple(dataclasses.replace(v, adopt=ADOPT.get(v.name, "")) for v in gpu.storage))
    out["landing-zone-private"] = private_site(out["landing-zone"])
    return out


# A site with `egress: private` and runners of its own: golden too, so that the reachability
# test (tests/test_reachability.py) reads both kinds of site.
RUNNERS = ("192.0.2.0/28",)


def private_site(lz):
    return dataclasses.replace(lz, network=dataclasses.replace(lz.network, egress="private", runner_ranges=RUNNERS))


# Volumes adopted with storage.<volume>.from: a Filestore instance's id, and a bucket's name.
ADOPT = {"shared": "projects/swisstwins-ai/locations/europe-west4-b/instances/kept-home", "datasets": "kept-datasets"}


@pytest.fixture(scope="module")
def synthesized(specs) -> dict[str, str]:
    started = time.perf_counter()
    documents = synthesize(specs)
    seconds = time.perf_counter() - started
    print(f"\nsynthesized {len(documents)} gcp stacks in {seconds:.1f} s")
    return documents


def doc(synthesized, name: str) -> dict:
    return json.loads(synthesized[name])


def resources(document: dict, kind: str) -> dict:
    return document.get("resource", {}).get(kind, {})


def instances(document: dict) -> dict:
    return resources(document, "google_compute_instance")


# ---------------------------------------------------------------- golden files


GOLDEN_STACKS = {
    "landing-zone": f"gcp/landing-zone-{SITE}.tf.json",
    "landing-zone-private": f"gcp/landing-zone-{SITE}-private.tf.json",
    **{f"cluster-{name}": f"gcp/cluster-{name}.tf.json" for name in FLAVORS},
}


@pytest.mark.parametrize("stack", sorted(GOLDEN_STACKS))
def test_golden_terraform_json(synthesized, stack, update_golden):
    check_golden(GOLDEN / GOLDEN_STACKS[stack], synthesized[stack], update_golden)


def test_the_flavors_are_the_examples(specs):
    assert {name: specs[f"cluster-{name}"].flavor for name in FLAVORS} == FLAVORS


def test_the_catalog_resolves_the_machine_types(specs):
    types = {(name, p.name): p.machine_type for name in FLAVORS for p in specs[f"cluster-{name}"].pools}
    assert types == {
        ("dev", "login"): "c2-standard-8",
        ("dev", "compute"): "c2-standard-16",
        ("gpu-ai", "login"): "c3-standard-8",
        ("gpu-ai", "gpu"): "a2-ultragpu-8g",
        ("slurm-hpc", "login"): "c2-standard-8",
        ("slurm-hpc", "compute"): "n2-standard-128",
        ("icon", "login"): "c3-standard-8",
        ("icon", "compute"): "a2-ultragpu-8g",
    }
    assert {p.fabric for name in FLAVORS for p in specs[f"cluster-{name}"].pools} == {""}


def test_a_stack_alone_has_the_same_bytes(specs, synthesized):
    """What reconciler.synth does (one stack per App) gives what the golden files hold."""
    assert synthesize({"cluster-icon": specs["cluster-icon"]}) == {"cluster-icon": synthesized["cluster-icon"]}


def test_every_stack_keeps_its_providers_rules(specs, synthesized):
    assert_providers_rules_hold(specs, synthesized)


def test_no_absolute_paths(synthesized, tmp_path_factory):
    for name, text in synthesized.items():
        for path in (str(ROOT), str(tmp_path_factory.getbasetemp()), sys.prefix):
            assert path not in text, f"{name} holds {path}"


def test_provider_is_loaded_lazily(synthesized):
    loaded = {m.split(".")[1] for m in sys.modules if m.startswith("cdktf_cdktf_provider_google.")} - {"_jsii"}
    assert 15 < len(loaded) <= MAX_PROVIDER_SUBMODULES, sorted(loaded)


# ---------------------------------------------------------------- every stack


def test_backend_is_gcs_with_the_units_prefix(specs, synthesized):
    for name, spec in specs.items():
        backend = doc(synthesized, name)["terraform"]["backend"]
        assert backend == {"gcs": {"bucket": "swisstwins-reconcile-state", "prefix": spec.state.key}}, name
    assert specs["cluster-icon"].state.key == "gcp-netherlands/cluster-icon"
    assert specs["landing-zone"].state.key == "gcp-zurich/landing-zone"


def test_provider_is_pinned_to_the_project_with_valid_labels(synthesized):
    (provider,) = doc(synthesized, "cluster-slurm-hpc")["provider"]["google"]
    assert (provider["project"], provider["region"]) == ("swisstwins-hpc", "europe-west6")
    assert provider["default_labels"] == {
        "cluster": "slurm-hpc",
        "flavor": "slurm",
        "iam_domain": "swisstwins_ch",
        "project": "swisstwins-hpc",
        "sovereignty": "ch",
    }
    for name in synthesized:
        (provider,) = doc(synthesized, name)["provider"]["google"]
        assert all(LABEL_VALUE.match(v) for v in provider["default_labels"].values()), name


def test_labels_are_made_valid_or_refused():
    from rpi.gcp import gcp_labels

    assert gcp_labels((("Sovereignty", "CH"), ("domain", "Swiss Twins.ch"), ("long", "x" * 70))) == {
        "sovereignty": "ch",
        "domain": "swiss_twins_ch",
        "long": "x" * 63,
    }
    with pytest.raises(ValueError, match="cannot be a Google Cloud label key"):
        gcp_labels((("1st", "a"),))


def test_nothing_is_open_to_the_internet(synthesized):
    for name in synthesized:
        for rule_name, rule in resources(doc(synthesized, name), "google_compute_firewall").items():
            if rule["direction"] == "EGRESS":  # egress: private: only what keeps nodes inside
                assert name == "landing-zone-private", (name, rule_name)
                continue
            assert "0.0.0.0/0" not in rule.get("source_ranges", []), (name, rule_name)
            assert rule["target_tags"], f"{name}: {rule_name} would apply to every instance of the VPC"


# ---------------------------------------------------------------- landing zone


def test_landing_zone_network(synthesized, example):
    from rpi.spec import network_name

    lz = doc(synthesized, "landing-zone")
    (vpc,) = resources(lz, "google_compute_network").values()
    assert (vpc["name"], vpc["auto_create_subnetworks"]) == (network_name(SITE), False)
    subnet = resources(lz, "google_compute_subnetwork")["subnet_services"]
    assert (subnet["ip_cidr_range"], subnet["region"], subnet["private_ip_google_access"]) == (
        "10.30.0.0/22",
        "europe-west6",
        True,
    )
    secondary = {r["range_name"]: r["ip_cidr_range"] for r in subnet["secondary_ip_range"]}
    ranges = lz["output"]["ranges"]["value"]
    assert secondary == {"gke-pods": ranges["gke-pods"], "gke-services": ranges["gke-services"]}
    assert ranges == {
        "gke-pods": "10.30.16.0/20",
        "private-services": "10.30.32.0/20",
        "gke-services": "10.30.4.0/24",
        "gke-control-plane": "10.30.5.0/28",
    }
    site = example.definitions.sites[SITE]
    taken = [ipaddress.IPv4Network(site.network.clusters_range), ipaddress.IPv4Network("10.30.0.0/22")]
    for name, cidr in ranges.items():
        block = ipaddress.IPv4Network(cidr)
        assert block.subnet_of(ipaddress.IPv4Network(site.network.cidr)), name
        assert not any(block.overlaps(t) for t in taken), name
        taken.append(block)
    gke = resources(lz, "google_container_cluster")["gke"]
    assert gke["private_cluster_config"]["master_ipv4_cidr_block"] == ranges["gke-control-plane"]
    psa = resources(lz, "google_compute_global_address")["private_services_range"]
    assert f"{psa['address']}/{psa['prefix_length']}" == ranges["private-services"]
    assert resources(lz, "google_service_networking_connection")["private_services"]["reserved_peering_ranges"] == [
        "${google_compute_global_address.private_services_range.name}"
    ]
    nat = resources(lz, "google_compute_router_nat")["nat"]
    assert nat["source_subnetwork_ip_ranges_to_nat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"  # cluster subnets too
    firewall = resources(lz, "google_compute_firewall")
    # the services subnet reaches the control nodes; the cluster subnets their services' ports only
    assert firewall["firewall_internal"]["source_ranges"] == ["10.30.0.0/22"]
    assert firewall["firewall_clusters_to_services"]["source_ranges"] == ["10.30.128.0/17"]
    assert firewall["firewall_clusters_to_services"]["allow"] == [
        {"ports": ["636", "4646", "5000", "8200", "8443", "8501", "9443"], "protocol": "tcp"}
    ]
    private = doc(synthesized, "landing-zone-private")
    assert "google_compute_router_nat" not in private["resource"]  # egress: private: no NAT
    assert resources(private, "google_compute_firewall")["firewall_internal"]["source_ranges"] == [
        "10.30.0.0/22", "192.0.2.0/28"
    ]
    zones = {z["dns_name"] for z in resources(private, "google_dns_managed_zone").values()}
    assert zones == {"vcluster.internal.", "googleapis.com.", "pkg.dev."}
    assert firewall["firewall_iap_ssh"]["source_ranges"] == ["35.235.240.0/20"]
    assert firewall["firewall_iap_ssh"]["allow"] == [{"ports": ["22"], "protocol": "tcp"}]


def test_site_ranges_stay_put_and_refuse_a_vpc_too_small():
    from rpi.gcp.landing_zone import site_ranges

    # The netherlands site has the same plan, shifted: the ranges depend on the VPC only.
    assert site_ranges("10.50.0.0/16", ["10.50.0.0/22"])["gke-pods"] == "10.50.16.0/20"
    # A larger services subnet pushes the ranges past it, never into the upper half.
    assert site_ranges("10.1.0.0/16", ["10.1.0.0/19"]) == {
        "gke-pods": "10.1.32.0/20",
        "private-services": "10.1.48.0/20",
        "gke-services": "10.1.64.0/24",
        "gke-control-plane": "10.1.65.0/28",
    }
    with pytest.raises(ValueError, match="too small"):
        site_ranges("10.1.0.0/20", ["10.1.0.0/22"])


def test_gke_is_private_and_regional_with_workload_identity(synthesized):
    lz = doc(synthesized, "landing-zone")
    gke = resources(lz, "google_container_cluster")["gke"]
    assert gke["location"] == "europe-west6"  # regional control plane
    assert gke["private_cluster_config"]["enable_private_endpoint"] is True
    assert gke["private_cluster_config"]["enable_private_nodes"] is True
    # the services subnet (and a site's runners), never the cluster subnets
    assert gke["master_authorized_networks_config"]["cidr_blocks"] == [
        {"cidr_block": "10.30.0.0/22", "display_name": "services subnet"}
    ]
    private = resources(doc(synthesized, "landing-zone-private"), "google_container_cluster")["gke"]
    assert private["master_authorized_networks_config"]["cidr_blocks"] == [
        {"cidr_block": "10.30.0.0/22", "display_name": "services subnet"},
        {"cidr_block": "192.0.2.0/28", "display_name": "runners 0"},
    ]
    assert gke["workload_identity_config"] == {"workload_pool": "swisstwins-hpc.svc.id.goog"}
    assert gke["remove_default_node_pool"] is True
    assert lz["output"]["gke_endpoint"]["sensitive"] is False
    pool = resources(lz, "google_container_node_pool")["control_nodes"]
    assert pool["node_config"]["machine_type"] == "n2-standard-16"  # 3 nodes of 8 cores / 32 GB
    assert pool["node_config"]["workload_metadata_config"] == {"mode": "GKE_METADATA"}
    assert pool["node_config"]["service_account"] == "${google_service_account.gke_nodes.email}"
    assert (pool["node_locations"], pool["node_count"]) == (["europe-west6-a", "europe-west6-b", "europe-west6-c"], 1)
    two_zones = resources(doc(synthesized, "variant-netherlands"), "google_container_node_pool")["control_nodes"]
    assert (two_zones["node_locations"], two_zones["node_count"]) == (["europe-west4-a"], 3)
    bindings = resources(lz, "google_service_account_iam_member")
    assert sorted(b["member"] for b in bindings.values()) == [
        f"serviceAccount:swisstwins-hpc.svc.id.goog[{name}/gcp-zurich-{name}]"
        for name in ("consul", "keycloak", "ldap", "nomad", "store", "vault")
    ]
    # two sites in one project share its Workload Identity pool: their subjects differ
    other = resources(doc(synthesized, "variant-netherlands"), "google_service_account_iam_member")
    assert doc(synthesized, "variant-netherlands")["provider"]["google"][0]["project"] == "swisstwins-hpc"
    assert {b["member"] for b in bindings.values()}.isdisjoint(b["member"] for b in other.values())
    for binding in bindings.values():
        assert binding["role"] == "roles/iam.workloadIdentityUser"
        assert binding["depends_on"] == ["google_container_cluster.gke"]  # the pool exists with the cluster
    accounts = {a["account_id"] for a in resources(lz, "google_service_account").values()}
    services = ("consul", "keycloak", "ldap", "nomad", "store", "vault")
    assert accounts == {f"gcp-zurich-{name}" for name in (*services, "gke-nodes")}


def test_control_plane_sizing():
    from rpi.gcp.landing_zone import control_machine_type, node_zones
    from rpi.spec import ComputePool, NodeSpec

    def pool(cores, memory_gb, machine_type=""):
        return ComputePool("control", "service", 3, NodeSpec(cores, memory_gb), "spread", (), (), machine_type)

    assert control_machine_type(pool(4, 16), "europe-west6") == "n2-standard-8"
    assert control_machine_type(pool(4, 33), "europe-west6") == "n2-standard-16"  # n2-standard-8 has 32 GB
    assert control_machine_type(pool(4, 16, "c2-standard-8"), "europe-west6") == "c2-standard-8"
    with pytest.raises(ValueError, match="no n2-standard type"):
        control_machine_type(pool(65, 16), "europe-west6")
    assert node_zones(3, ["a", "b", "c"]) == (["a", "b", "c"], 1)
    assert node_zones(4, ["a", "b", "c"]) == (["a", "b"], 2)
    assert node_zones(3, ["a", "b"]) == (["a"], 3)
    assert node_zones(1, ["a", "b"]) == (["a"], 1)


def test_registries_secrets_and_buckets(synthesized):
    lz = doc(synthesized, "landing-zone")
    registries = resources(lz, "google_artifact_registry_repository")
    assert {r["repository_id"]: r["format"] for r in registries.values()} == {
        "gcp-zurich-container": "DOCKER",
        "gcp-zurich-deb": "APT",
        "gcp-zurich-rpm": "YUM",
    }
    assert registries["registry_container"]["docker_config"] == {"immutable_tags": True}
    assert lz["output"]["registries"]["value"]["gcp-zurich-container"] == (
        "europe-west6-docker.pkg.dev/swisstwins-hpc/"
        "${google_artifact_registry_repository.registry_container.repository_id}"
    )
    secrets = resources(lz, "google_secret_manager_secret")
    assert sorted(s["secret_id"] for s in secrets.values()) == [
        "gcp-zurich-keycloak-admin",
        "gcp-zurich-ldap-admin",
        "gcp-zurich-vault-unseal",
    ]
    for secret in secrets.values():
        assert secret["replication"] == {"user_managed": {"replicas": [{"location": "europe-west6"}]}}
    assert "google_secret_manager_secret_version" not in lz["resource"]  # containers only, never values
    grants = resources(lz, "google_secret_manager_secret_iam_member").values()
    readers = {(g["secret_id"].split(".")[1], g["member"]) for g in grants}
    assert readers == {
        ("secret_keycloak-admin", "serviceAccount:${google_service_account.service_keycloak.email}"),
        ("secret_ldap-admin", "serviceAccount:${google_service_account.service_ldap.email}"),
        ("secret_vault-unseal", "serviceAccount:${google_service_account.service_vault.email}"),
    }
    buckets = resources(lz, "google_storage_bucket")
    assert {b["name"]: b["versioning"]["enabled"] for b in buckets.values()} == {
        "swisstwins-hpc-gcp-zurich-state": True,
        "swisstwins-hpc-gcp-zurich-build-cache": False,
        "swisstwins-hpc-gcp-zurich-access-logs": False,
    }
    # every other bucket logs who read and wrote what into the usage-log bucket, which Cloud
    # Storage's analytics group may write and which keeps logs for the site's retention
    logs = buckets["bucket_access_logs"]
    assert [r["condition"] for r in logs["lifecycle_rule"]] == [{"age": 90}] and logs["lifecycle_rule"][0]["action"] == {"type": "Delete"}
    for name, bucket in buckets.items():
        if name != "bucket_access_logs":
            assert bucket["logging"] == {"log_bucket": "${google_storage_bucket.bucket_access_logs.name}",
                                         "log_object_prefix": bucket["name"]}, name
    (writer,) = [g for g in resources(lz, "google_storage_bucket_iam_member").values() if g["bucket"].endswith("bucket_access_logs.name}")]
    assert (writer["role"], writer["member"]) == ("roles/storage.objectCreator", "group:cloud-storage-analytics@google.com")
    for bucket in buckets.values():
        assert bucket["uniform_bucket_level_access"] is True
        assert bucket["public_access_prevention"] == "enforced"
        assert bucket["location"] == "EUROPE-WEST6"


# ---------------------------------------------------------------- clusters


def test_icon_runs_on_a2_ultragpu_with_its_built_in_gpus(specs, synthesized):
    icon = doc(synthesized, "cluster-icon")
    node = instances(icon)["node_compute_0"]
    assert node["machine_type"] == "a2-ultragpu-8g"
    assert "guest_accelerator" not in node  # Google refuses one on accelerator-optimized types
    assert "scratch_disk" not in node  # the type bundles its 8 x 375 GiB (3,221 GB) of local SSD
    assert node["scheduling"] == {"on_host_maintenance": "TERMINATE", "automatic_restart": True}
    # A2 is not in Google's table of accelerator images: the HPC image, and the driver at first boot
    assert node["boot_disk"]["initialize_params"]["image"] == "cloud-hpc-image-public/hpc-rocky-linux-8"
    assert "install_driver" in node["metadata"]["startup-script"]
    assert node["shielded_instance_config"]["enable_secure_boot"] is False  # the driver's module is unsigned
    assert not resources(icon, "google_compute_resource_policy")  # one compact node: nothing to place together
    assert icon["output"]["filesystems"]["value"] == {
        "scratch": {"type": "local-ssd", "mount": "/scratch", "gb_per_node": {"compute": 3221}}
    }
    assert not resources(icon, "google_filestore_instance")  # scratch is no network file system
    login = instances(icon)["node_login_0"]
    assert login["scheduling"]["on_host_maintenance"] == "MIGRATE"
    assert login["shielded_instance_config"] == {
        "enable_secure_boot": True,
        "enable_vtpm": True,
        "enable_integrity_monitoring": True,
    }


def test_compact_pools_of_several_nodes_get_a_collocated_placement_policy(synthesized):
    gpu = doc(synthesized, "cluster-gpu-ai")
    policy = resources(gpu, "google_compute_resource_policy")["placement_gpu"]
    assert policy["group_placement_policy"] == {"collocation": "COLLOCATED"}
    assert policy["region"] == "europe-west4"
    for index in (0, 1):
        node = instances(gpu)[f"node_gpu_{index}"]
        assert node["resource_policies"] == ["${google_compute_resource_policy.placement_gpu.id}"]
        assert node["scheduling"]["on_host_maintenance"] == "TERMINATE"
    assert "resource_policies" not in instances(gpu)["node_login_0"]
    slurm = doc(synthesized, "cluster-slurm-hpc")
    assert set(resources(slurm, "google_compute_resource_policy")) == {"placement_compute"}
    assert instances(slurm)["node_compute_3"]["scheduling"]["on_host_maintenance"] == "TERMINATE"


def test_local_ssd_disks_cover_the_node_spec(synthesized):
    variant = instances(doc(synthesized, "variant-local-ssd"))
    # 1000 GB on a c2-standard-16: three 375 GB disks would do, the type takes 2, 4 or 8
    assert variant["node_compute_0"]["scratch_disk"] == [{"interface": "NVME"}] * 4
    assert "scratch_disk" not in variant["node_login_0"]
    assert all("scratch_disk" not in n for n in instances(doc(synthesized, "cluster-dev")).values())


def test_local_ssd_disk_counts():
    from rpi.catalog import catalog
    from rpi.gcp.cluster import local_ssd_disks

    types = catalog("gcp").machine_types
    assert local_ssd_disks(types["n2-standard-2"], 1) == 1
    assert local_ssd_disks(types["n2-standard-2"], 751) == 2  # a disk is 375 GiB: 402 GB
    assert local_ssd_disks(types["n2-standard-2"], 806) == 4  # 3 disks' worth: the next valid count
    assert local_ssd_disks(types["n2-standard-128"], 1) == 16  # large n2 types take at least 16
    assert local_ssd_disks(types["n2-standard-16"], 7000) == 24
    assert local_ssd_disks(types["c2-standard-60"], 375) == 8
    assert local_ssd_disks(types["a2-highgpu-2g"], 375) == 2
    assert local_ssd_disks(types["a2-ultragpu-8g"], 3000) == 0  # bundled
    assert local_ssd_disks(types["c3-standard-8"], 0) == 0
    assert local_ssd_disks(types["c2-standard-16"], 3221) == 8
    with pytest.raises(ValueError, match="at most 8 disks"):
        local_ssd_disks(types["c2-standard-16"], 3222)


def test_gpus_are_attached_only_to_types_without_their_own():
    """No catalog type takes attached GPUs today, so this rule is checked on a type built here."""
    from rpi.catalog import MachineType, catalog
    from rpi.gcp.cluster import guest_accelerators
    from rpi.spec import NodeSpec

    node = NodeSpec(cores=8, memory_gb=60, gpu_model="nvidia-a100-40gb", gpu_count=2)
    general = MachineType("n1-standard-16", "n1-standard", 16, 8, 60, None, 0, 0, "attachable", "")
    assert guest_accelerators(general, node) == [("nvidia-tesla-a100", 2)]
    assert guest_accelerators(catalog("gcp").machine_types["a2-highgpu-2g"], node) == []
    assert guest_accelerators(general, NodeSpec(cores=8, memory_gb=60)) == []


def unescape(template: str) -> str:
    """What Terraform makes of a string without interpolations: its escapes undone."""
    return re.sub(r"([$%])\1\{", r"\1{", template)


def test_every_node_boots_the_cluster_cloud_init(specs, synthesized):
    for name in FLAVORS:
        for node_name, node in instances(doc(synthesized, f"cluster-{name}")).items():
            assert unescape(node["metadata"]["user-data"]) == specs[f"cluster-{name}"].user_data, (name, node_name)
            assert node["metadata"]["enable-oslogin"] == "TRUE"
            assert "command -v cloud-init" in node["metadata"]["startup-script"]  # images without it
            # login nodes (the controller, a staged copy's legs) run as an account of their own
            account = "login_account" if f"{name}-login" in node["tags"] else "node_account"
            assert node["service_account"]["email"] == f"${{google_service_account.{account}.email}}"


def test_cloud_init_reaches_the_node_unchanged_by_terraform():
    from rpi.spec import terraform_literal

    script = 'echo "${HOME}" %{if} $${already} $$ % {}'
    assert terraform_literal(script) == 'echo "$${HOME}" %%{if} $$${already} $$ % {}'
    assert unescape(terraform_literal(script)) == script


def test_nodes_keep_their_addresses_and_names(specs, synthesized):
    spec = specs["cluster-slurm-hpc"]
    slurm = doc(synthesized, "cluster-slurm-hpc")
    nodes = instances(slurm)
    for pool in spec.pools:
        for index, (hostname, address) in enumerate(zip(pool.hostnames, pool.addresses, strict=True)):
            node = nodes[f"node_{pool.name}_{index}"]
            assert (node["name"], node["zone"], node["machine_type"]) == (hostname, spec.zone, pool.machine_type)
            (interface,) = node["network_interface"]
            assert interface["network_ip"] == address
            assert "access_config" not in interface  # no public address
    assert len(nodes) == slurm["output"]["node_count"]["value"] == 5
    assert slurm["output"]["login_addresses"]["value"] == [
        "${google_compute_instance.node_login_0.network_interface[0].network_ip}"
    ]
    assert slurm["output"]["nodes"]["value"] == {p.name: list(p.hostnames) for p in spec.pools}
    assert slurm["output"]["public_login_addresses"]["value"] == []


def test_storage_by_flavor(specs, synthesized):
    dev = doc(synthesized, "cluster-dev")  # minimal: HDD
    (home,) = resources(dev, "google_filestore_instance").values()
    assert (home["tier"], home["file_shares"]["capacity_gb"], home["location"]) == ("BASIC_HDD", 1024, "europe-west6-a")
    assert home["file_shares"]["nfs_export_options"] == [
        {"ip_ranges": [specs["cluster-dev"].subnet.cidr], "access_mode": "READ_WRITE", "squash_mode": "NO_ROOT_SQUASH"}
    ]
    assert home["networks"] == [
        {
            "network": "${data.google_compute_network.network.name}",
            "modes": ["MODE_IPV4"],
            "connect_mode": "PRIVATE_SERVICE_ACCESS",
        }
    ]
    callbacks = resources(dev, "google_compute_firewall")["firewall_storage_shared"]
    range_ = "data.google_compute_global_address.private_services_range"
    assert callbacks["source_ranges"] == [f"${{{range_}.address}}/${{{range_}.prefix_length}}"]
    assert resources(dev, "google_compute_firewall") and doc(synthesized, "cluster-dev")["data"]["google_compute_global_address"][
        "private_services_range"]["name"] == "gcp-zurich-private-services"
    assert callbacks["target_tags"] == ["dev-node"]
    slurm = doc(synthesized, "cluster-slurm-hpc")  # slurm: SSD, and scratch without local SSD
    assert resources(slurm, "google_filestore_instance")["storage_shared"]["tier"] == "BASIC_SSD"
    assert resources(slurm, "google_filestore_instance")["storage_shared"]["file_shares"]["capacity_gb"] == 2560
    filesystems = slurm["output"]["filesystems"]["value"]
    assert filesystems["scratch"]["type"] == "none" and "local_ssd_gb" in filesystems["scratch"]["note"]
    assert filesystems["shared"]["source"] == (
        "${element(google_filestore_instance.storage_shared.networks[0].ip_addresses, 0)}:/shared"
    )
    gpu = doc(synthesized, "cluster-gpu-ai")
    assert resources(gpu, "google_filestore_instance")["storage_shared"]["file_shares"]["capacity_gb"] == 4800
    buckets = resources(gpu, "google_storage_bucket")
    assert sorted(b["name"] for b in buckets.values()) == [
        "swisstwins-hpc-gcp-netherlands-gpu-ai-checkpoints",
        "swisstwins-hpc-gcp-netherlands-gpu-ai-datasets",
    ]
    for bucket in buckets.values():
        assert (bucket["uniform_bucket_level_access"], bucket["public_access_prevention"]) == (True, "enforced")
    # datasets: lock_days 30, governance: a retention policy, unlocked, in place of versions (GCS
    # takes one or the other), whose earlier versions still expire; checkpoints: versioned
    datasets, checkpoints = buckets["bucket_datasets"], buckets["bucket_checkpoints"]
    assert datasets["retention_policy"] == {"retention_period": 30 * 86400, "is_locked": False}
    assert datasets["versioning"] == {"enabled": False} and checkpoints["versioning"] == {"enabled": True}
    assert "retention_policy" not in checkpoints
    assert all(b["lifecycle_rule"][0]["condition"] == {"days_since_noncurrent_time": 90} for b in (datasets, checkpoints))


def test_filestore_tiers_and_capacity():
    from rpi.gcp.cluster import filestore_capacity_gib, filestore_tier

    assert [filestore_tier(gb, fast=False) for gb in (1, 65433, 65434)] == ["BASIC_HDD", "BASIC_HDD", "ZONAL"]
    assert [filestore_tier(gb, fast=True) for gb in (1, 65433, 65434)] == ["BASIC_SSD", "BASIC_SSD", "ZONAL"]
    assert [filestore_capacity_gib("BASIC_HDD", gb) for gb in (1, 1024, 1025)] == [1024, 1024, 1025]
    assert [filestore_capacity_gib("BASIC_SSD", gb) for gb in (500, 2560, 4800)] == [2560, 2560, 4800]
    assert [filestore_capacity_gib("ZONAL", gb) for gb in (65434, 66560, 66561)] == [66560, 66560, 69120]
    with pytest.raises(ValueError, match="largest Filestore ZONAL"):
        filestore_capacity_gib("ZONAL", 102401)


def test_cluster_finds_the_site_network_by_name(synthesized):
    dev = doc(synthesized, "cluster-dev")
    lz = doc(synthesized, "landing-zone")
    (vpc,) = resources(lz, "google_compute_network").values()
    assert dev["data"]["google_compute_network"]["network"]["name"] == vpc["name"] == "gcp-zurich-vpc"
    subnet = resources(dev, "google_compute_subnetwork")["subnet"]
    assert subnet["network"] == "${data.google_compute_network.network.id}"
    assert (subnet["name"], subnet["ip_cidr_range"], subnet["region"]) == (
        "gcp-zurich-cluster-dev",
        "10.30.154.0/24",
        "europe-west6",
    )
    assert instances(dev)["node_login_0"]["network_interface"][0]["subnetwork"] == (
        "${google_compute_subnetwork.subnet.id}"
    )


def test_ssh_reaches_login_nodes_only_from_allowed_networks_and_iap(synthesized):
    dev = doc(synthesized, "cluster-dev")
    ssh = resources(dev, "google_compute_firewall")["firewall_ssh"]
    assert ssh["source_ranges"] == ["35.235.240.0/20"]
    assert (ssh["allow"], ssh["target_tags"]) == ([{"ports": ["22"], "protocol": "tcp"}], ["dev-login"])
    internal = resources(dev, "google_compute_firewall")["firewall_internal"]
    assert internal["source_tags"] == internal["target_tags"] == ["dev-node"]
    assert instances(dev)["node_login_0"]["tags"] == ["dev-node", "dev-login"]
    assert instances(dev)["node_compute_0"]["tags"] == ["dev-node"]
    public = doc(synthesized, "variant-public")
    ssh = resources(public, "google_compute_firewall")["firewall_ssh"]
    assert ssh["source_ranges"] == ["192.0.2.0/24", "198.51.100.0/24", "35.235.240.0/20"]
    (address,) = resources(public, "google_compute_address").values()
    assert address["name"] == "gcp-zurich-dev-login-0"
    # The address is a forwarding rule's: the login node itself has none, and egress stays the site's
    assert all("access_config" not in i["network_interface"][0] for i in instances(public).values())
    (target,) = resources(public, "google_compute_target_instance").values()
    assert (target["instance"], target["zone"]) == ("${google_compute_instance.node_login_0.self_link}", "europe-west6-a")
    (rule,) = resources(public, "google_compute_forwarding_rule").values()
    assert {k: rule[k] for k in ("ip_address", "ip_protocol", "port_range", "target", "load_balancing_scheme")} == {
        "ip_address": "${google_compute_address.node_login_0_public.address}", "ip_protocol": "TCP",
        "port_range": "22", "target": "${google_compute_target_instance.node_login_0_target.self_link}",
        "load_balancing_scheme": "EXTERNAL",
    }
    # a replaced login node replaces its target instance, which GCP will not delete while the rule points at it
    assert rule["lifecycle"]["replace_triggered_by"] == ["google_compute_target_instance.node_login_0_target"]
    assert public["output"]["public_login_addresses"]["value"] == [
        "${google_compute_address.node_login_0_public.address}"
    ]


def test_an_admitted_cluster_reaches_the_nodes_on_its_ports_one_way(synthesized):
    """dev admits slurm-hpc on port 22: one rule on dev's nodes, from slurm-hpc's nodes by their
    tag, TCP and UDP 22; slurm-hpc's stack lets nothing of dev in."""
    rule = resources(doc(synthesized, "cluster-dev"), "google_compute_firewall")["firewall_from_slurm-hpc"]
    assert (rule["direction"], rule["source_tags"], rule["target_tags"]) == ("INGRESS", ["slurm-hpc-node"], ["dev-node"])
    assert rule["allow"] == [{"protocol": "tcp", "ports": ["22"]}, {"protocol": "udp", "ports": ["22"]}]
    assert rule["name"].startswith("gcp-zurich-dev-from-slurm-hpc-") and len(rule["name"]) == len("gcp-zurich-dev-from-slurm-hpc-") + 6
    hpc = resources(doc(synthesized, "cluster-slurm-hpc"), "google_compute_firewall")
    assert not [r for r in hpc.values() if "dev-node" in r.get("source_tags", [])]


def test_public_login_is_reached_on_22_from_the_allowed_networks_only(synthesized):
    """The reachability model (tests/test_reachability.py) over the public variant as synthesized:
    from the internet only the login node, only on TCP 22, only from allowed_cidrs, and only
    through the forwarding rule (no node has an address of its own); taken away, nothing is."""
    from test_reachability import Host, gcp_reaches, gcp_site, load

    zone = load("gcp/landing-zone-gcp-zurich.tf.json")
    public = doc(synthesized, "variant-public")

    def reaches(document, source_ip, target, protocol="tcp", port=22):
        site = gcp_site(zone, {"dev": document})
        site.hosts["client"] = Host("client", source_ip, kind="internet")
        return gcp_reaches(site, "client", target, protocol, port)

    allowed, other = "198.51.100.7", "203.0.113.10"
    assert reaches(public, allowed, "dev/node_login_0")
    assert not reaches(public, other, "dev/node_login_0")  # not an allowed network
    assert not reaches(public, allowed, "dev/node_login_0", port=80)
    assert not reaches(public, allowed, "dev/node_compute_0")
    assert not reaches(doc(synthesized, "cluster-dev"), allowed, "dev/node_login_0")  # no public_login: no way in
    without = json.loads(json.dumps(public))
    without["resource"].pop("google_compute_forwarding_rule")
    assert not reaches(without, allowed, "dev/node_login_0")  # the firewall alone opens nothing
    wider = json.loads(json.dumps(public))
    resources(wider, "google_compute_firewall")["firewall_ssh"]["allow"] = [{"protocol": "all"}]
    assert not reaches(wider, allowed, "dev/node_login_0", port=80)  # the rule forwards 22 only
    resources(wider, "google_compute_forwarding_rule")["node_login_0_ssh"]["port_range"] = "1-65535"
    assert reaches(wider, allowed, "dev/node_login_0", port=80)  # both widened: the model sees it


def test_only_admin_groups_log_in_through_os_login_and_act_as_the_nodes(synthesized):
    """Users tunnel through IAP to the login nodes' sshd, where SSSD decides, as their own
    directory account: no group but admin and operator holds osLogin, osAdminLogin or
    serviceAccountUser, on any synthesized stack."""
    shells = ("roles/compute.osLogin", "roles/compute.osAdminLogin", "roles/iam.serviceAccountUser")
    for name in synthesized:
        document = doc(synthesized, name)
        for kind in ("google_compute_instance_iam_member", "google_service_account_iam_member"):
            for key, binding in resources(document, kind).items():
                if binding["role"] in shells:
                    assert binding["member"] == "group:hpc-admins@swisstwins.ch", (name, key)


def test_access_groups_log_in_through_os_login(synthesized):
    gpu = doc(synthesized, "cluster-gpu-ai")
    logins = {
        (b["member"], b["instance_name"].split(".")[1], b["role"])
        for b in resources(gpu, "google_compute_instance_iam_member").values()
    }
    assert logins == {
        ("group:hpc-admins@swisstwins.ch", "node_login_0", "roles/compute.osAdminLogin"),
        ("group:hpc-admins@swisstwins.ch", "node_gpu_0", "roles/compute.osAdminLogin"),
        ("group:hpc-admins@swisstwins.ch", "node_gpu_1", "roles/compute.osAdminLogin"),
    }
    tunnels = {(b["member"], b["instance"]) for b in resources(gpu, "google_iap_tunnel_instance_iam_member").values()}
    assert tunnels == {
        ("group:hpc-admins@swisstwins.ch", "${google_compute_instance.node_login_0.name}"),
        ("group:ml-researchers@swisstwins.ch", "${google_compute_instance.node_login_0.name}"),
    }
    act_as = resources(gpu, "google_service_account_iam_member")
    # users act as no node's account: only admins, whom OS Login lets in as root
    assert {(b["member"], b["service_account_id"], b["role"]) for b in act_as.values()} == {
        ("group:hpc-admins@swisstwins.ch", "${google_service_account.node_account.name}", "roles/iam.serviceAccountUser"),
        ("group:hpc-admins@swisstwins.ch", "${google_service_account.login_account.name}", "roles/iam.serviceAccountUser"),
    }
    roles = {b["role"] for b in resources(gpu, "google_project_iam_member").values()}
    assert roles == {"roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/artifactregistry.reader"}
    accounts = {k: a["account_id"] for k, a in resources(gpu, "google_service_account").items()}
    assert accounts == {"node_account": "gcp-netherlands-vc-gpu-ai", "login_account": "gcp-netherlands-vcl-gpu-ai"}


def test_refusals_say_what_to_change(specs):
    from rpi.gcp.cluster import check

    spec = specs["cluster-dev"]
    with pytest.raises(ValueError, match="node pool compute has no GCP machine type"):
        check(with_pool(spec, "compute", machine_type=""))
    with pytest.raises(ValueError, match="which the gcp catalog does not know"):
        check(with_pool(spec, "compute", machine_type="n1-standard-8"))
    prefix = spec.subnet.cidr.rsplit(".", 1)[0]
    for reserved in (f"{prefix}.1", f"{prefix}.254"):
        with pytest.raises(ValueError, match="which Google Cloud reserves"):
            check(with_pool(spec, "login", addresses=(reserved,)))
    with pytest.raises(ValueError, match="metadata value takes at most 262144"):
        check(dataclasses.replace(spec, user_data="x" * (256 * 1024 + 1)))
    with pytest.raises(ValueError, match="public_login needs network.allowed_cidrs"):
        check(dataclasses.replace(spec, public_login=True))
    with pytest.raises(ValueError, match="never opens SSH to the whole internet"):
        check(dataclasses.replace(spec, allowed_cidrs=("0.0.0.0/0",)))
    unlabelled = dataclasses.replace(spec, labels=tuple(kv for kv in spec.labels if kv[0] != "iam_domain"))
    with pytest.raises(ValueError, match="add `iam_domain: <your Cloud Identity domain>` to the labels of site"):
        check(unlabelled)
    check(dataclasses.replace(unlabelled, access=()))  # without access groups no domain is needed
    compute = next(p for p in spec.pools if p.name == "compute")
    with pytest.raises(ValueError, match="node pool compute: 4000 GB of local SSD do not fit on c2-standard-16"):
        check(with_pool(spec, "compute", node=dataclasses.replace(compute.node, local_ssd_gb=4000)))
    huge = tuple(dataclasses.replace(v, size_gb=200_000) for v in spec.storage)
    with pytest.raises(ValueError, match="storage.shared: 200000 GB exceed the largest Filestore ZONAL"):
        check(dataclasses.replace(spec, storage=huge))


def test_an_adopted_volume_is_imported_under_its_own_name(synthesized):
    """storage.<volume>.from: an import block with the resource id, and the name the id carries,
    so that the import is not followed by a replacement."""
    adopted = doc(synthesized, "variant-adopted")
    imports = {i["to"]: i["id"] for i in adopted["import"]}
    assert imports == {
        "google_filestore_instance.storage_shared": ADOPT["shared"],
        "google_storage_bucket.bucket_datasets": ADOPT["datasets"],
    }
    assert resources(adopted, "google_filestore_instance")["storage_shared"]["name"] == "kept-home"
    assert resources(adopted, "google_storage_bucket")["bucket_datasets"]["name"] == "kept-datasets"
    assert resources(adopted, "google_storage_bucket")["bucket_checkpoints"]["name"] != "kept-datasets"
    assert "import" not in doc(synthesized, "cluster-gpu-ai")


def test_nodes_find_their_channel_and_key_through_their_metadata(specs):
    """The node package's binding: metadata attributes, a channel in the site's state bucket, a
    secret container for the munge key, and grants that reach only those (IAM conditions)."""
    spec = specs["cluster-slurm-hpc"]
    document = json.loads(synthesize_stacks("gcp", {"cluster-slurm-hpc": spec})["cluster-slurm-hpc"])
    resource = document["resource"]
    metadata = resource["google_compute_instance"]["node_compute_0"]["metadata"]
    assert metadata["vcluster-pool"] == "compute"
    assert metadata["vcluster-channel"] == f"gs://{spec.state.bucket}/gcp-zurich/channel/slurm-hpc"
    assert "google_filestore_instance.storage_shared" in metadata["vcluster-mounts"]
    objects = resource["google_storage_bucket_object"]
    assert objects["channel_current"]["content"] == spec.config_version
    assert json.loads(objects["channel_config"]["content"])["files"] == json.loads(spec.config_files)
    def conditions(account: str) -> list[str]:
        member = f"serviceAccount:${{google_service_account.{account}.email}}"
        return sorted(g["condition"]["expression"] for g in resource["google_storage_bucket_iam_member"].values()
                      if g["member"] == member and "condition" in g)

    prefix = f"projects/_/buckets/{spec.state.bucket}/objects/gcp-zurich/channel/slurm-hpc"
    # compute nodes, where any user's job runs, read the config and report: no staged copy's legs
    # and write their own pools' reports only, never the controller's, whose acknowledgement a freeze waits for
    assert conditions("node_account") == sorted([f'resource.name.startsWith("{prefix}/config/")',
                                                 f'resource.name.startsWith("{prefix}/nodes/slurm-hpc-compute-")'])
    assert conditions("login_account") == sorted([
        f'resource.name == "projects/_/buckets/{spec.state.bucket}"',  # a listing, names only: objects are read by prefix
        *(f'resource.name.startsWith("{prefix}/{part}/")' for part in ("config", "nodes", "tasks", "staging")),
    ])
    key_roles = {(g["member"].split(".")[1], g["role"]) for g in resource["google_secret_manager_secret_iam_member"].values()}
    assert key_roles == {
        ("node_account", "roles/secretmanager.secretAccessor"),
        ("login_account", "roles/secretmanager.secretAccessor"),
        ("login_account", "roles/secretmanager.secretVersionAdder"),  # the controller's first boot
    }
    roles = {g["condition"]["title"].rsplit(" ", 1)[-1]: g["role"] for g in resource["google_storage_bucket_iam_member"].values()}
    assert roles["list"] == roles["config"] == "roles/storage.objectViewer", "nothing but reading where no prefix bounds it"
    secret = resource["google_secret_manager_secret"]["munge_key"]
    assert secret["secret_id"] == "vc-gcp-zurich-slurm-hpc-munge-key"
    assert "google_secret_manager_secret_version" not in resource  # the value is the controller's, never Terraform's


def test_every_firewall_source_is_known_at_the_first_plan(synthesized):
    """Defect: the storage firewall took its sources from the Filestore instance's addresses,
    unknown until it exists; the provider then refuses the rule at plan time ("one of
    source_tags, source_ranges, or source_service_accounts must be defined",
    hashicorp/terraform-provider-google#10894). Sources may name data sources (read at plan
    time) and literals, never an attribute of a resource of the same plan."""
    for name, text in synthesized.items():
        for rule, body in resources(json.loads(text), "google_compute_firewall").items():
            for field in ("source_ranges", "source_tags", "source_service_accounts"):
                for value in ([body[field]] if isinstance(body.get(field), str) else body.get(field) or []):
                    assert not re.search(r"\$\{(?!data\.)[a-z_]+\.", value), f"{name}: {rule}.{field} = {value}"


def test_a_landing_zone_can_be_destroyed_past_its_private_services_connection(synthesized):
    """Defect: without deletion_policy ABANDON, destroying the landing zone fails while
    Google's producer services still hold the connection (#16275, #19908)."""
    (connection,) = resources(doc(synthesized, "landing-zone"), "google_service_networking_connection").values()
    assert connection["deletion_policy"] == "ABANDON"


def test_a_node_with_bundled_local_ssd_is_not_replaced_on_every_plan(synthesized):
    """Defect: a2-ultragpu types bundle their local SSDs, which the provider reads back into
    scratch_disk (ForceNew, not Computed): without ignoring it, every plan replaces the node (#19648)."""
    from rpi.catalog import catalog

    machines = catalog("gcp").machine_types
    seen = 0
    for name, text in synthesized.items():
        for node, body in resources(json.loads(text), "google_compute_instance").items():
            ignored = body.get("lifecycle", {}).get("ignore_changes", [])
            bundled = machines[body["machine_type"]].local_ssd == "bundled"
            assert ("scratch_disk" in ignored) == bundled, f"{name}: {node} ({body['machine_type']})"
            seen += bundled
    assert seen  # the GPU example (icon) runs on such a type


def test_nodes_use_their_own_buckets(synthesized):
    """Defect: the node service account had no role on the cluster's buckets."""
    gpu = doc(synthesized, "cluster-gpu-ai")
    grants = {k: g for k, g in resources(gpu, "google_storage_bucket_iam_member").items() if g["bucket"] != "swisstwins-reconcile-state"}
    buckets = resources(gpu, "google_storage_bucket")  # (the state bucket's grant is the config channel's)
    assert {g["bucket"] for g in grants.values()} == {f"${{google_storage_bucket.{b}.name}}" for b in buckets}
    assert {(g["role"], g["member"]) for g in grants.values()} == {
        ("roles/storage.objectUser", "serviceAccount:${google_service_account.node_account.email}"),
        ("roles/storage.objectUser", "serviceAccount:${google_service_account.login_account.email}"),
    }


@pytest.mark.parametrize(
    "case, finished_for, has_cloud_init, status, runs",
    [
        ("finished for this instance", "4242", True, "status: done", False),
        ("shipped disabled", "", True, "status: disabled", True),
        ("finished for the image's build instance only", "17", True, "status: done", True),
        ("missing from the image", "", False, "", True),
    ],
)
def test_the_shim_runs_the_user_data_unless_cloud_init_finished_it_for_this_instance(
    tmp_path, case, finished_for, has_cloud_init, status, runs
):
    """Defect: the shim only checked that cloud-init was installed, so an image shipping it
    disabled skipped the user data without a word. The metadata server, cloud-init and dnf
    cannot run here: they are stand-ins on PATH that record their calls; the shim is the real one."""
    import subprocess

    from rpi.gcp.cluster import CLOUD_INIT_SHIM

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    stubs = {
        "curl": "echo 4242",
        "logger": 'echo "logger $*" >&2',
        "dnf": f'echo "dnf $*" >> {calls}; printf \'#!/bin/sh\\necho "cloud-init $*" >> {calls}\\n\' > {bin_dir}/cloud-init; chmod +x {bin_dir}/cloud-init',
    }
    if has_cloud_init:
        stubs["cloud-init"] = f'echo "cloud-init $*" >> {calls}; [ "$1" = status ] && echo "{status}"; true'
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    if finished_for:
        (tmp_path / "cloud" / "instances" / finished_for).mkdir(parents=True)
        (tmp_path / "cloud" / "instances" / finished_for / "boot-finished").write_text("")
    script = tmp_path / "shim.sh"
    script.write_text(CLOUD_INIT_SHIM)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "VCLUSTER_CLOUD_DIR": str(tmp_path / "cloud")}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    made = calls.read_text().splitlines() if calls.exists() else []
    ran = "cloud-init modules --mode=final" in made
    assert ran == runs, (case, made, done.stderr)
    if runs:
        assert "cloud-init init --local" in made and "running it now" in done.stderr  # said, never silent
    assert ("dnf -y install cloud-init" in made) == (not has_cloud_init)


def test_every_gpu_node_boots_an_image_its_series_is_listed_for_or_installs_its_driver(synthesized):
    """Defect 8: the A2 example booted rocky-linux-8-optimized-gcp-nvidia-580, which Google's
    table of accelerator images lists for A4 and A3 only. Each GPU node's image is read against
    that table as the catalog commits it (its source named there)."""
    from rpi.catalog import catalog

    raw = json.loads((ROOT / "constructs/rpi/gcp/catalog.json").read_text())["boot_images"]
    assert any("docs.cloud.google.com/ai-hypercomputer/docs/images" in s for s in raw["sources"])
    listed = {f"{row['project']}/{row['family']}": set(row["series"]) for row in raw["accelerator"]}
    hpc = f"{raw['cpu']['project']}/{raw['cpu']['family']}"
    machines = catalog("gcp").machine_types
    seen = set()
    for name, text in synthesized.items():
        for node, body in instances(json.loads(text)).items():
            machine = machines[body["machine_type"]]
            image = body["boot_disk"]["initialize_params"]["image"]
            gpu = bool(machine.gpu_count or body.get("guest_accelerator"))
            script = body["metadata"].get("startup-script", "")
            if not gpu:
                assert image == hpc and "install_driver" not in script, f"{name}: {node}"
                continue
            series = raw["series"].get(machine.name) or raw["series"].get(machine.family)
            if image in listed:
                assert series in listed[image], f"{name}: {node} ({machine.name}, {series}) boots {image}"
                assert "install_driver" not in script
            else:
                assert image == hpc and f'python3 "$installer" install_driver' in script, f"{name}: {node}"
                assert raw["driver_installer"] in script
            seen.add((series, image in listed))
    assert ("A2 Ultra", False) in seen  # icon: a2-ultragpu, the driver installed at first boot


def test_the_boot_image_follows_the_series_table():
    from rpi.catalog import catalog
    from rpi.gcp.cluster import boot_image

    machines = catalog("gcp").machine_types
    assert boot_image(machines["a3-highgpu-8g"], True).image.endswith("/rocky-linux-8-optimized-gcp-nvidia-580")
    assert not boot_image(machines["a3-highgpu-8g"], True).installs_driver
    assert boot_image(machines["a2-ultragpu-8g"], True) == boot_image(machines["n2-standard-8"], False).__class__(
        "cloud-hpc-image-public/hpc-rocky-linux-8", True)
    assert not boot_image(machines["n2-standard-8"], False).installs_driver


@pytest.mark.parametrize("answers_after, installs, goes_on", [(0, False, True), (1, True, True), (None, True, False)],
                         ids=["driver present", "installed now", "installer reboots"])
def test_the_driver_step_installs_until_the_driver_answers(tmp_path, answers_after, installs, goes_on):
    """The startup script of a GPU node without a driver in its image: Google's installer runs
    (downloaded once) until `nvidia-smi` answers; while it reboots, cloud-init waits for the
    next boot. The metadata server, nvidia-smi, the installer and cloud-init are stand-ins on
    PATH that record their calls; the script is the real one."""
    import subprocess

    from rpi.catalog import catalog
    from rpi.gcp.cluster import boot_image, startup_script

    script = startup_script(boot_image(catalog("gcp").machine_types["a2-ultragpu-8g"], True))
    bin_dir, calls, state = tmp_path / "bin", tmp_path / "calls", tmp_path / "driver"
    bin_dir.mkdir()
    answers = "exit 1" if answers_after is None else f'[ -e {state} ] || [ {answers_after} = 0 ]'
    stubs = {
        "curl": f'if [ "$1" = -fsS ]; then echo 4242; else echo "curl $*" >> {calls}; touch "${{@: -2:1}}"; fi',
        "logger": 'echo "logger $*" >&2',
        "nvidia-smi": answers,
        "python3": f'echo "python3 $*" >> {calls}; touch {state}',
        "cloud-init": f'echo "cloud-init $*" >> {calls}; true',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    path = tmp_path / "startup.sh"
    path.write_text(script.replace("/opt/google/cuda-installer", str(tmp_path / "installer")))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "VCLUSTER_CLOUD_DIR": str(tmp_path / "cloud")}
    done = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    made = calls.read_text().splitlines() if calls.exists() else []
    assert any(line.startswith("python3 ") and line.endswith("cuda_installer.pyz install_driver") for line in made) == installs, made
    assert any(line.startswith("curl ") and "cuda-installer-v1.9.1/cuda_installer.pyz" in line for line in made) == installs, made
    assert ("cloud-init modules --mode=final" in made) == goes_on, made


def test_every_subnet_logs_its_flows_and_gke_its_control_plane(synthesized):
    """Flow logs on the landing zone's subnets and on every cluster's, and the GKE control
    plane's own components logged; both change a running landing zone in place."""
    for name, text in synthesized.items():
        for subnet in resources(json.loads(text), "google_compute_subnetwork").values():
            assert subnet["log_config"] == {"aggregation_interval": "INTERVAL_5_SEC", "flow_sampling": 0.5,
                                            "metadata": "INCLUDE_ALL_METADATA"}, name
    gke = resources(doc(synthesized, "landing-zone"), "google_container_cluster")["gke"]
    assert {"APISERVER", "SCHEDULER", "CONTROLLER_MANAGER", "SYSTEM_COMPONENTS", "WORKLOADS"} == set(
        gke["logging_config"]["enable_components"])


def test_a_controller_without_a_login_pool_runs_as_the_login_account(specs):
    """Defect: a cluster without a login pool runs its controller on another pool's node, which
    ran as the compute account: no right to add the munge key or run a staged copy's legs."""
    from conftest import without_login_pool

    spec = without_login_pool(specs["cluster-gpu-ai"])
    document = json.loads(synthesize_stacks("gcp", {"cluster-gpu-ai": spec})["cluster-gpu-ai"])
    accounts = {k: i["service_account"]["email"] for k, i in document["resource"]["google_compute_instance"].items()}
    assert accounts == {"node_gpu_0": "${google_service_account.login_account.email}",
                        "node_gpu_1": "${google_service_account.node_account.email}"}
