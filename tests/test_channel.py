"""The config channel: one layout, published by the clouds' stacks and the local runtime,
written by the nodes' package, read by `reconcile status` from the site's own store.

The reconciler never imports the node package; these tests import it from its source, to hold
its half of the layout to the reconciler's (`rpi.spec`).
"""

from __future__ import annotations

import json

import pytest

from conftest import make_repo, node_module
from reconciler.gitsource import GitSource
from reconciler.run import desired
from rpi.spec import CHANNEL_CURRENT, channel_node_key, channel_objects, channel_prefix, channel_version_key


def test_the_nodes_and_the_reconciler_read_one_layout(tmp_path):
    channel, platforms = node_module("channel"), node_module("platforms")
    store = platforms.DirectoryStore(tmp_path)
    channel.publish(store, "abc123", {"/etc/slurm/slurm.conf": {"content": "x", "mode": "0644", "on": "all"}})
    channel.report(store, "dev-login-0", config_version="abc123")
    assert (tmp_path / CHANNEL_CURRENT).read_text() == "abc123"
    assert json.loads((tmp_path / channel_version_key("abc123")).read_text())["version"] == "abc123"
    assert json.loads((tmp_path / channel_node_key("dev-login-0")).read_text())["config_version"] == "abc123"
    assert channel.CURRENT == CHANNEL_CURRENT and channel.version_key("v1") == channel_version_key("v1")


class S3Store:
    """The node package's store interface over the emulator's S3: what `aws s3 cp` does on a node."""

    def __init__(self, client, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def write(self, key: str, data: bytes, mode: int = 0o644) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)


@pytest.mark.slow
def test_status_reads_a_cloud_clusters_channel_from_its_state_bucket(tmp_path, emulators, monkeypatch, cli):
    """slurm-hpc on aws-zurich, whose state bucket is moto's: the channel objects the stack
    publishes (`channel_objects`), a state naming two of its nodes, and what those nodes
    reported through the node package. `reconcile status` reads it all from the bucket."""
    s3 = emulators["s3"]
    repo = make_repo(tmp_path / "repo")
    repo.replace("sites/aws-zurich.yaml", "  region: eu-central-2\n", f"  region: eu-central-2\n  endpoint: {s3.endpoint}\n")
    for site in ("aws-frankfurt", "gcp-netherlands", "gcp-zurich"):
        (repo.path / f"sites/{site}.yaml").unlink()
    for cluster in ("gpu-ai", "icon"):
        (repo.path / f"clusters/{cluster}.yaml").unlink()
    repo.replace("clusters/slurm-hpc.yaml", "site: local-b", "site: aws-zurich")
    repo.replace("clusters/slurm-hpc.yaml", "failover: [local-a, aws-zurich]", "failover: [local-a]")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    unit = desired(GitSource(repo.path).working_tree()).units["cluster:slurm-hpc@aws-zurich"]
    spec, client = unit.spec, s3.client()
    client.create_bucket(Bucket=spec.state.bucket)
    for _, key, content, _ in channel_objects(spec):
        client.put_object(Bucket=spec.state.bucket, Key=key, Body=content.encode())
    hosts = [h for p in spec.pools for h in p.hostnames]
    state = {"version": 4, "resources": [
        {"mode": "managed", "type": "aws_instance", "name": f"node_{i}",
         "instances": [{"attributes": {"tags": {"vcluster-hostname": h}}}]} for i, h in enumerate(hosts[:2])
    ]}
    client.put_object(Bucket=spec.state.bucket, Key=spec.state.key, Body=json.dumps(state).encode())
    store = S3Store(client, spec.state.bucket, channel_prefix(spec.state, spec.name))
    channel = node_module("channel")
    channel.report(store, hosts[0], config_version=spec.config_version, role="login")
    channel.report(store, hosts[1], config_version="0ldversion")

    code, out, err = cli("status", "slurm-hpc", "--json", "--repo", str(repo.path))
    assert code == 0, out + err
    (row,) = json.loads(out)["clusters"]
    assert row["not_checked"] == "" and row["published"] == spec.config_version
    nodes = {n["hostname"]: n for n in row["nodes"]}
    assert nodes[hosts[0]]["config"] == "current" and nodes[hosts[0]]["applied"]
    assert nodes[hosts[1]]["config"] == "behind" and nodes[hosts[1]]["config_version"] == "0ldversion"
    assert nodes[hosts[2]]["config"] == "not created yet"
