"""Layers 2 and 3 are portable: rendered once, the same bytes wherever the cluster runs."""

from __future__ import annotations

from reconciler.gitsource import GitSource
from reconciler.layers import slurm_conf, user_data
from reconciler.run import desired


def units(repo):
    return desired(GitSource(repo.path).working_tree()).units


def test_user_data_is_byte_identical_on_local_gcp_and_aws(repo):
    seen = {}
    for site in ("local-a", "gcp-zurich", "aws-zurich"):
        repo.replace("clusters/dev.yaml", repo.read("clusters/dev.yaml").split("site: ")[1].split("\n")[0], site)
        spec = units(repo)[f"cluster:dev@{site}"].spec
        seen[site] = spec.user_data
        assert spec.platform == {"local-a": "local", "gcp-zurich": "gcp", "aws-zurich": "aws"}[site]
    assert seen["local-a"] == seen["gcp-zurich"] == seen["aws-zurich"]
    assert seen["local-a"].startswith("#cloud-config\n")


def test_layer_one_differs_where_layers_two_and_three_do_not(repo):
    before = units(repo)["cluster:dev@local-a"].spec
    repo.replace("clusters/dev.yaml", "site: local-a\nfailover: [local-b]", "site: local-b\nfailover: [local-a]")
    after = units(repo)["cluster:dev@local-b"].spec
    assert before.user_data == after.user_data
    assert before.subnet.cidr != after.subnet.cidr  # addresses come from the new site's range
    assert "10.10." not in before.user_data and "10.20." not in after.user_data


def test_slurm_conf_is_derived_from_the_node_pools(repo):
    defs = desired(GitSource(repo.path).working_tree()).definitions
    conf = slurm_conf(defs.clusters["slurm-hpc"])
    assert "ClusterName=slurm-hpc\n" in conf
    assert "SlurmctldHost=slurm-hpc-login-0\n" in conf
    assert "NodeName=slurm-hpc-compute-[0-3] CPUs=64 RealMemory=249036 ThreadsPerCore=1 State=UNKNOWN\n" in conf
    assert "PartitionName=compute Nodes=slurm-hpc-compute-[0-3] Default=YES" in conf
    assert "MaxJobCount=50000\n" in conf  # from the slurm profile
    icon = slurm_conf(defs.clusters["icon"])
    assert "Gres=gpu:a100:8" in icon and "GresTypes=gpu\n" in icon


def test_user_data_carries_spack_and_containers(repo):
    defs = desired(GitSource(repo.path).working_tree()).definitions
    text = user_data(defs.clusters["icon"])
    assert "/opt/spack/environments/icon/spack.yaml" in text
    assert "icon@2024.10 +gpu" in text
    assert "ghcr.io/c2sm/icon-ch1:2024.10" in text
    assert "ldaps://ldap.svc.vcluster.internal" in text
