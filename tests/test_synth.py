"""Synthesis through the real cdktf: golden Terraform JSON, the same bytes in every run and clone."""

from __future__ import annotations

import json

from conftest import GOLDEN, check_golden, make_repo
from reconciler.gitsource import GitSource
from reconciler.run import desired
from reconciler.synth import synthesize

GOLDEN_UNITS = {
    "site:local-a": "local/landing-zone-local-a.tf.json",
    "cluster:dev@local-a": "local/cluster-dev.tf.json",
    "cluster:slurm-hpc@local-b": "local/cluster-slurm-hpc.tf.json",
    "cluster:gpu-ai@local-a": "local/cluster-gpu-ai.tf.json",  # re-placed: every flavor on every platform
    "cluster:icon@local-b": "local/cluster-icon.tf.json",
}


def synth_out(cli, repo, out) -> dict[str, bytes]:
    code, stdout, err = cli("synth", "--out", str(out), "--repo", str(repo.path))
    assert code == 0, err
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.json"))}


def test_golden_terraform_json(repo, update_golden):
    repo.place("gpu-ai", "local-a")
    repo.place("icon", "local-b")
    units = desired(GitSource(repo.path).working_tree()).units
    documents = synthesize([units[k] for k in GOLDEN_UNITS])
    for key, name in GOLDEN_UNITS.items():
        check_golden(GOLDEN / name, documents[key], update_golden)


def test_byte_identical_across_runs_and_clones(tmp_path, cli):
    first = make_repo(tmp_path / "one")
    second = make_repo(tmp_path / "elsewhere" / "two")
    a = synth_out(cli, first, tmp_path / "out-a")
    b = synth_out(cli, first, tmp_path / "out-b")
    c = synth_out(cli, second, tmp_path / "out-c")
    assert sorted(a) == [
        "aws-frankfurt/cluster-gpu-ai/cdk.tf.json",
        "aws-frankfurt/landing-zone/cdk.tf.json",
        "aws-zurich/landing-zone/cdk.tf.json",
        "gcp-netherlands/cluster-icon/cdk.tf.json",
        "gcp-netherlands/landing-zone/cdk.tf.json",
        "gcp-zurich/landing-zone/cdk.tf.json",
        "local-a/cluster-dev/cdk.tf.json",
        "local-a/landing-zone/cdk.tf.json",
        "local-b/cluster-slurm-hpc/cdk.tf.json",
        "local-b/landing-zone/cdk.tf.json",
    ]
    assert a == b == c
    for name, data in a.items():
        text = data.decode()
        assert str(tmp_path) not in text, f"{name} holds an absolute path"
        backend = json.loads(text)["terraform"]["backend"]
        if "local" in backend:
            assert not backend["local"]["path"].startswith("/"), name
        else:  # a cloud stack's state is in its site's bucket, under the unit's own key
            (kind, settings) = next(iter(backend.items()))
            assert kind == ("gcs" if name.startswith("gcp-") else "s3"), name
            key = settings.get("prefix") or settings["key"]
            assert key.startswith(name.split("/")[0] + "/"), name


def test_cache_gives_the_same_bytes_as_fresh_synthesis(repo, tmp_path):
    units = list(desired(GitSource(repo.path).working_tree()).units.values())
    local = [u for u in units if u.platform == "local"]
    fresh = synthesize(local, tmp_path / "cache")
    assert synthesize(local, tmp_path / "cache") == fresh
    assert len(list((tmp_path / "cache").iterdir())) == len(local)


def test_removed_stack_keeps_only_its_backend(repo):
    unit = desired(GitSource(repo.path).working_tree()).units["cluster:dev@local-a"]
    document = json.loads(synthesize([unit], removed=True)[unit.key])
    assert "resource" not in document
    assert document["terraform"]["backend"]["local"]["path"] == ".reconcile/state/local-a/cluster-dev.tfstate"
