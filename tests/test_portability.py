"""One cluster definition on every platform, and the refusals that come before any synthesis.

Real repositories built from the example definitions, the real catalogs, and (for the test
marked slow) the real cdktf synthesis on local, gcp and aws.
"""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from reconciler.gitsource import GitSource
from reconciler.run import desired
from reconciler.synth import synthesize
from reconciler import portability


def nothing_applied(repo) -> bool:
    return not (repo.path / ".reconcile" / "state").exists()


def test_icon_resolves_to_the_type_that_matches_its_node_exactly(repo):
    spec = desired(GitSource(repo.path).working_tree()).units["cluster:icon@gcp-netherlands"].spec
    compute = next(p for p in spec.pools if p.name == "compute")
    assert compute.machine_type == "a2-ultragpu-8g"  # 48 cores, 1,360 GiB, 8x A100 80 GB, 3,221 GB local SSD
    node = compute.node
    assert (node.cores, node.memory_gb, node.gpu_model, node.gpu_count, node.local_ssd_gb) == (
        48,
        1360,
        "nvidia-a100-80gb",
        8,
        3000,
    )


def test_portability_matrix_explains_every_refusal(repo, cli):
    code, out, _ = cli("portability", "--repo", str(repo.path), "--json")
    assert code == 0
    verdicts = {(v["cluster"], v["site"]): v for v in json.loads(out)["verdicts"]}
    assert verdicts["icon", "gcp-netherlands"]["realizable"]
    assert verdicts["icon", "gcp-netherlands"]["machine_types"]["compute"] == "a2-ultragpu-8g"
    (why,) = verdicts["icon", "gcp-zurich"]["reasons"]
    assert why == (
        "node_pools.compute.gpu.model: nvidia-a100-80gb is not offered in europe-west6; offered in europe-west4, us-central1"
    )
    (why,) = verdicts["icon", "aws-frankfurt"]["reasons"]
    assert "p4de.24xlarge lacks memory (1152 < 1360 GiB)" in why
    assert verdicts["icon", "local-a"]["realizable"]
    assert verdicts["gpu-ai", "aws-frankfurt"]["machine_types"]["gpu"] == "p4de.24xlarge"
    assert "a2-ultragpu-8g lacks local SSD (3221 < 7600 GB)" in verdicts["gpu-ai", "gcp-netherlands"]["reasons"][0]
    assert verdicts["slurm-hpc", "aws-zurich"]["machine_types"]["compute"] == "c6i.32xlarge"


def test_region_without_the_gpu_is_refused_before_synthesis(repo, cli):
    repo.place("icon", "gcp-zurich")
    code, _, err = cli("--dry-run", "--repo", str(repo.path))
    assert code == 1
    assert err.startswith("clusters/icon.yaml:17:7: error: node_pools.compute.gpu.model: cluster icon cannot run on its placement site")
    assert "nvidia-a100-80gb is not offered in europe-west6; offered in europe-west4, us-central1" in err
    assert "nothing was planned or applied" in err
    assert nothing_applied(repo)


def test_impossible_node_spec_names_the_nearest_types(repo, cli):
    repo.replace("clusters/icon.yaml", "memory_gb: 1360", "memory_gb: 4000")
    code, _, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1
    assert "clusters/icon.yaml:15:5: error: node_pools.compute.memory_gb:" in err  # what the nearest type lacks
    assert "no type in europe-west4 has 48 cores, 4000 GiB, 8x nvidia-a100-80gb, 3000 GB local SSD" in err
    assert "nearest: a2-ultragpu-8g lacks memory (1360 < 4000 GiB)" in err
    assert nothing_applied(repo)


def test_unknown_gpu_model_is_refused_with_the_valid_ones(repo, cli):
    repo.replace("clusters/icon.yaml", "model: nvidia-a100-80gb", "model: nvidia-a100-90gb")
    code, _, err = cli("validate", "--repo", str(repo.path))
    assert code == 1
    assert err.startswith("clusters/icon.yaml:17:14: error: node_pools.compute.gpu.model:")
    assert "nvidia-a100-80gb" in err  # what would be valid
    assert nothing_applied(repo)


@pytest.mark.slow
def test_one_definition_synthesizes_on_local_gcp_and_aws_with_only_its_site_changed(repo):
    """The dev cluster, unchanged but for its site: three platforms, one cloud-init."""
    documents, user_data = {}, {}
    for site in ("local-a", "gcp-zurich", "aws-zurich"):
        repo.place("dev", site)
        unit = desired(GitSource(repo.path).working_tree()).units[f"cluster:dev@{site}"]
        (text,) = synthesize([unit]).values()
        documents[site] = json.loads(text)
        user_data[site] = unit.spec.user_data
    assert user_data["local-a"] == user_data["gcp-zurich"] == user_data["aws-zurich"]

    local = documents["local-a"]["resource"]["terraform_data"]
    assert set(local) >= {"node_login_0", "node_compute_0", "node_compute_1", "storage_shared"}
    gcp = documents["gcp-zurich"]["resource"]["google_compute_instance"]
    assert sorted(i["name"] for i in gcp.values()) == ["dev-compute-0", "dev-compute-1", "dev-login-0"]
    assert {i["machine_type"] for i in gcp.values()} == {"c2-standard-8", "c2-standard-16"}
    for instance in gcp.values():  # Terraform's escapes for ${ and %{ are undone by Terraform itself
        carried = instance["metadata"]["user-data"].replace("$${", "${").replace("%%{", "%{")
        assert carried == user_data["gcp-zurich"]
    aws = documents["aws-zurich"]["resource"]
    assert sorted(i["tags"]["Name"] for i in aws["aws_instance"].values()) == ["dev-compute-0", "dev-compute-1", "dev-login-0"]
    for template in aws["aws_launch_template"].values():
        assert gzip.decompress(base64.b64decode(template["user_data"])).decode() == user_data["aws-zurich"]
    for site, document in documents.items():
        assert set(document["output"]) >= {"login_addresses", "node_count", "nodes"}, site


def test_a_site_that_states_its_slurm_versions_refuses_another(repo):
    from reconciler.load import load

    repo.replace("sites/aws-zurich.yaml", 'slurm_versions: ["24.05"]', 'slurm_versions: ["23.11"]')
    defs = load(GitSource(repo.path).working_tree())
    verdict = portability.check(defs.clusters["slurm-hpc"], defs.sites["aws-zurich"])
    assert not verdict.realizable
    assert "services.scheduler.version: site aws-zurich provides Slurm 23.11 (its services.slurm_versions), not 24.05" in verdict.reasons
    assert portability.check(defs.clusters["slurm-hpc"], defs.sites["aws-frankfurt"]).realizable  # it states 24.05


# ---------------------------------------------------------------- zones

H100_POOL = "  compute:\n    role: compute\n    count: 1\n    cores: 104\n    memory_gb: 1872\n    gpu: {model: nvidia-h100-80gb, count: 8}\n"


def test_a_cluster_goes_to_a_zone_that_offers_every_pool_and_icon_stays_where_it_is(repo):
    """europe-west4-a (gcp-netherlands' first zone) has no a3-highgpu-8g: an H100 cluster lands
    in europe-west4-b, which offers it and the login type; icon's A100s are in -a only."""
    text = repo.read("clusters/icon.yaml")
    head, _ = text.split("node_pools:\n", 1)
    repo.write("clusters/h100.yaml", head.replace("name: icon", "name: h100").replace("failover: [aws-frankfurt, gcp-zurich, local-a]\n", "")
               + "node_pools:\n  login:\n    role: login\n    count: 1\n    cores: 4\n    memory_gb: 16\n" + H100_POOL)
    units = desired(GitSource(repo.path).working_tree()).units
    h100 = units["cluster:h100@gcp-netherlands"].spec
    assert {p.name: p.machine_type for p in h100.pools} == {"login": "c3-standard-8", "compute": "a3-highgpu-8g"}
    assert h100.zone == "europe-west4-b"
    assert units["cluster:icon@gcp-netherlands"].spec.zone == "europe-west4-a"  # unchanged


def test_a_zone_that_lacks_a_pools_type_is_refused_naming_the_zones_that_offer_it(repo, cli):
    text = repo.read("clusters/icon.yaml")
    head, _ = text.split("node_pools:\n", 1)
    head = head.replace("name: icon", "name: h100").replace("failover: [aws-frankfurt, gcp-zurich, local-a]\n", "")
    repo.write("clusters/h100.yaml", head.replace("  site: gcp-netherlands\n", "  site: gcp-netherlands\n  zone: europe-west4-a\n")
               + "node_pools:\n" + H100_POOL)
    code, _, err = cli("validate", "--repo", str(repo.path))
    assert code == 1
    assert "clusters/h100.yaml:" in err and "placement.zone: cluster h100 cannot run on its placement site gcp-netherlands" in err, err
    assert "zone europe-west4-a does not offer every pool's type: login (c3-standard-8) in europe-west4-a, europe-west4-b, " \
           "europe-west4-c; compute (a3-highgpu-8g) in europe-west4-b, europe-west4-c; every pool is offered in europe-west4-b, europe-west4-c" in err, err


def test_aws_zones_are_zone_ids(repo, cli):
    repo.replace("sites/aws-frankfurt.yaml", "zones: [euc1-az1, euc1-az2]", "zones: [eu-central-1a, eu-central-1b]")
    code, _, err = cli("validate", "--repo", str(repo.path))
    assert code == 1 and "sites/aws-frankfurt.yaml:" in err and "on aws, zones are zone IDs such as euc1-az2" in err, err


@pytest.mark.parametrize("platform", ["gcp", "aws"])
def test_offers_per_zone_cover_the_catalog(platform):
    """offers.csv (copied from the catalog's source) has zones for every type the catalog lists
    in a region, and nothing else; regions it has no rows for are named in the sources."""
    from rpi.catalog import catalog
    from reconciler.model import AWS_ZONE_ID

    cat = catalog(platform)
    for region, names in cat.regions.items():
        if not cat.zones_known(region):
            assert platform == "aws" and region == "eu-central-2"  # no rows in the source; said in its sources
            continue
        for name in names:
            zones = cat.zones_of(name, region)
            assert zones, (name, region)
            assert all(z.startswith(f"{region}-") if platform == "gcp" else AWS_ZONE_ID.match(z) for z in zones), zones
    assert {r for _, r in cat.zones} <= set(cat.regions)
    assert all(name in cat.regions[region] for name, region in cat.zones)
