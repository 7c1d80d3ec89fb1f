"""Layers 2 and 3 are portable: rendered once, the same bytes wherever the cluster runs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import node_module
from reconciler import layers, nodepkg
from reconciler.gitsource import GitSource
from reconciler.layers import slurm_conf
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


def test_slurm_conf_is_derived_from_the_node_pools_and_names_no_node(repo):
    defs = desired(GitSource(repo.path).working_tree()).definitions
    conf = slurm_conf(defs.clusters["slurm-hpc"])
    assert "ClusterName=slurm-hpc\n" in conf
    assert "SlurmctldHost=slurm-hpc-login-0\n" in conf
    assert "SlurmctldParameters=enable_configless\n" in conf  # slurmd nodes fetch it from the controller
    assert "NodeName" not in conf  # dynamic nodes register themselves (slurmd -Z)
    assert "NodeSet=compute_nodes Feature=compute\nPartitionName=compute Nodes=compute_nodes Default=YES" in conf
    assert "StateSaveLocation=/home/.vcluster/slurmctld\n" in conf  # on shared storage: survives the controller
    assert "MaxJobCount=50000\n" in conf  # from the slurm profile
    assert conf.count("SelectType=") == 1  # a profile's setting replaces the default, never doubles it
    icon = slurm_conf(defs.clusters["icon"])
    assert "GresTypes=gpu\n" in icon
    assert "Name=gpu Type=a100 File=/dev/nvidia[0-7]" in layers.gres_conf(defs.clusters["icon"])


def test_first_boot_and_config_do_not_change_with_node_count(repo):
    """Growing a pool changes neither the first-boot data nor the day-to-day config: only a
    node is created."""
    before = units(repo)["cluster:slurm-hpc@local-b"].spec
    repo.replace("clusters/slurm-hpc.yaml", "count: 4", "count: 9")
    after = units(repo)["cluster:slurm-hpc@local-b"].spec
    assert sum(p.count for p in after.pools) == sum(p.count for p in before.pools) + 5
    assert after.user_data == before.user_data
    assert after.config_files == before.config_files and after.config_version == before.config_version


def test_first_boot_carries_the_node_package_and_runs_its_bootstrap(repo, tmp_path):
    spec = units(repo)["cluster:icon@gcp-netherlands"].spec
    document = json.loads(spec.user_data.removeprefix("#cloud-config\n"))
    files = {f["path"]: f for f in document["write_files"]}
    facts = json.loads(files["/etc/vcluster/cluster.json"]["content"])
    assert facts["controller"] == "icon-login-0" and "hostnames" not in json.dumps(facts)
    application = tmp_path / "vcnode.pyz"  # a directory application, as cloud-init writes it
    prefix = layers.NODE_PACKAGE_PATH + "/"
    shipped = {path.removeprefix(prefix): f for path, f in files.items() if path.startswith(prefix)}
    assert all("encoding" not in f for f in shipped.values()), "plain text: the user data is gzipped as a whole"
    for rel, f in shipped.items():
        (application / rel).parent.mkdir(parents=True, exist_ok=True)
        (application / rel).write_text(f["content"])
    assert document["runcmd"] == [["python3", layers.NODE_PACKAGE_PATH, "bootstrap", "/etc/vcluster/cluster.json"]]
    source = nodepkg.source_dir()
    for name in nodepkg.ON_NODE:
        assert shipped[f"vcnode/{name}"]["content"] == (source / name).read_text()
    assert "vcnode/localhost.py" not in shipped  # the local runtime's host side stays on the host
    done = subprocess.run([sys.executable, str(application), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "bootstrap" in done.stdout


def test_config_channel_carries_spack_containers_and_groups(repo):
    spec = units(repo)["cluster:icon@gcp-netherlands"].spec
    files = json.loads(spec.config_files)
    assert "icon@2024.10 +gpu" in files["/opt/spack/environments/icon/spack.yaml"]["content"]
    assert "ghcr.io/c2sm/icon-ch1:2024.10" in files["/etc/vcluster/containers.txt"]["content"]
    assert "ldaps://ldap.svc.vcluster.internal" in files["/etc/sssd/sssd.conf"]["content"]
    assert files["/etc/sssd/sssd.conf"]["mode"] == "0600"
    assert files["/etc/slurm/slurm.conf"]["on"] == "slurm-clients"
    assert spec.config_version == layers.config_version(files)


def test_cloud_nodes_sync_with_the_channel_on_a_timer(tmp_path):
    """Running cloud nodes take a new config version without being replaced: the bootstrap
    installs a systemd timer that runs `vcnode sync`; systemd itself checks the units."""
    import shutil

    units = node_module("bootstrap").sync_units(60)
    assert f"ExecStart=/usr/bin/python3 {layers.NODE_PACKAGE_PATH} sync" in units["vcluster-sync.service"]
    assert "OnUnitActiveSec=60s" in units["vcluster-sync.timer"] and "WantedBy=timers.target" in units["vcluster-sync.timer"]
    if shutil.which("systemd-analyze") is None:
        return
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in units)], capture_output=True, text=True)
    problems = [line for line in done.stderr.splitlines() if "vcluster-sync" in line]
    assert not problems, done.stderr
