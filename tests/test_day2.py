"""Day-2 changes: what a change does to a running cluster, on the synthesized JSON of every
platform and on plan summaries; the local slurm runtime's stacks (golden) and checks."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import GOLDEN, check_golden, make_repo, synthesize_stacks
from reconciler import nodepkg, portability
from reconciler.gitsource import GitSource
from reconciler.plan import (
    CONFIG_ONLY, CREATES_ONLY, DATA, REMOVES, REPLACE_ALL, ROLLING, Change, PlanSummary, classify,
)
from reconciler.run import desired
from reconciler.synth import synthesize


def _resources(text: str) -> dict[str, dict]:
    return {f"{t}.{n}": body for t, by_name in json.loads(text)["resource"].items() for n, body in by_name.items()}


@pytest.mark.slow
@pytest.mark.parametrize("site,platform", [("local-b", "local"), ("gcp-zurich", "gcp"), ("aws-zurich", "aws")])
def test_growing_a_pool_only_creates(tmp_path, site, platform):
    """No existing node, template or resource they reference changes when a pool grows."""
    documents = []
    for count in (4, 5):
        repo = make_repo(tmp_path / f"{count}")
        repo.place("slurm-hpc", site)
        repo.replace("clusters/slurm-hpc.yaml", "count: 4", f"count: {count}")
        spec = desired(GitSource(repo.path).working_tree()).units[f"cluster:slurm-hpc@{site}"].spec
        documents.append(_resources(synthesize_stacks(platform, {"cluster-slurm-hpc": spec})["cluster-slurm-hpc"]))
    before, after = documents
    assert {a for a in before if before[a] != after.get(a)} == set()
    added = set(after) - set(before)
    assert added and all("compute_4" in a for a in added), added


@pytest.mark.slow
def test_the_slurm_runtime_stacks_golden_and_growing_only_creates(tmp_path, update_golden):
    repo = make_repo(tmp_path / "repo", real_runtime=True)
    units = desired(GitSource(repo.path).working_tree()).units
    keys = {"site:local-slurm": "local/landing-zone-local-slurm.tf.json", "cluster:laptop@local-slurm": "local/cluster-laptop.tf.json"}
    documents = synthesize([units[k] for k in keys])
    for key, name in keys.items():
        check_golden(GOLDEN / name, documents[key], update_golden)
        assert str(tmp_path) not in documents[key]  # relative: the same bytes in every clone
    laptop = _resources(documents["cluster:laptop@local-slurm"])
    assert laptop["terraform_data.node_compute_0"]["depends_on"] == [
        "terraform_data.config", "terraform_data.subnet", "terraform_data.node_login_0"]  # the controller first
    repo.replace("clusters/laptop.yaml", "count: 3", "count: 4")
    grown = _resources(synthesize([desired(GitSource(repo.path).working_tree()).units["cluster:laptop@local-slurm"]])["cluster:laptop@local-slurm"])
    assert {a for a in laptop if laptop[a] != grown.get(a)} == set()
    assert set(grown) - set(laptop) == {"terraform_data.node_compute_3"}


def _summary(*changes: tuple[str, str], data: bool = False) -> PlanSummary:
    return PlanSummary(tuple(Change(a, action, holds_data=data and "storage" in a) for a, action in changes))


NODES = [("terraform_data.node_login_0", "no-op"), ("terraform_data.node_compute_0", "no-op"),
         ("terraform_data.node_compute_1", "no-op")]


def _with(*changed: tuple[str, str]) -> PlanSummary:
    by = dict(NODES) | dict(changed)
    return _summary(*by.items())


def test_each_change_class():
    assert classify(_with(), rolls=True) is None
    assert classify(_with(("terraform_data.config", "replace")), rolls=True).kind == CONFIG_ONLY
    assert classify(_with(("terraform_data.node_compute_2", "create")), rolls=True).kind == CREATES_ONLY
    assert classify(_with(("terraform_data.node_compute_1", "delete")), rolls=True).kind == REMOVES
    rolling = classify(_with(("terraform_data.node_compute_0", "replace"), ("terraform_data.node_compute_1", "replace"),
                             ("terraform_data.node_login_0", "no-op")), rolls=True)
    assert rolling.kind == ROLLING
    assert rolling.batches == (("terraform_data.node_compute_0",), ("terraform_data.node_compute_1",))
    # the only node of a pool cannot roll: the pool is replaced at once
    assert classify(_with(("terraform_data.node_login_0", "replace")), rolls=True).kind == REPLACE_ALL
    # where nodes do not roll (the clouds, for now) a replacement is at once
    assert classify(_summary(("aws_instance.node_compute_0", "replace"), ("aws_instance.node_compute_1", "no-op")), rolls=False).kind == REPLACE_ALL
    lost = _summary(("terraform_data.storage_shared", "delete"), ("terraform_data.node_compute_0", "create"), data=True)
    assert classify(lost, rolls=True).kind == DATA


def test_the_controller_rolls_last():
    summary = _summary(("terraform_data.node_login_0", "replace"), ("terraform_data.node_login_1", "replace"),
                       ("terraform_data.node_compute_0", "replace"), ("terraform_data.node_compute_1", "replace"))
    rolling = classify(summary, rolls=True, controller="terraform_data.node_login_0")
    assert rolling.kind == ROLLING
    assert rolling.batches[-1] == ("terraform_data.node_login_0",)
    assert sorted(b[0] for b in rolling.batches) == sorted(c.address for c in summary.changes)


def test_the_slurm_runtime_refuses_what_this_machine_cannot_run(repo):
    defs = desired(GitSource(make_repo(repo.path.parent / "real", real_runtime=True).path).working_tree()).definitions
    laptop, site = defs.clusters["laptop"], defs.sites["local-slurm"]
    assert portability.check(laptop, site, host=portability.Host(2, 4.0)).realizable
    small = portability.check(laptop, site, host=portability.Host(1, 0.5))
    assert [r.split(":")[0] for r in small.reasons] == ["node_pools.login.memory_gb", "node_pools.compute.memory_gb"]
    newer = laptop.model_copy(update={"services": laptop.services.model_copy(
        update={"scheduler": laptop.services.scheduler.model_copy(update={"version": "24.05"})})})
    refused = portability.check(newer, site, host=portability.Host(2, 4.0))
    assert refused.reasons == ("services.scheduler.version: the local slurm runtime provides Slurm 22.05 (Debian's slurm-wlm), not 24.05",)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the check as another user")
def test_an_unprivileged_host_cannot_run_the_slurm_runtime():
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={nodepkg.source_dir().parent}", "python3", "-m", "vcnode.localhost", "check"],
        capture_output=True, text=True,
    )
    assert done.returncode == 1 and "needs root" in done.stderr


def test_batches_take_the_definitions_batch_size_and_the_controller_goes_alone():
    summary = _summary(*((f"terraform_data.node_compute_{i}", "replace") for i in range(5)),
                       *((f"terraform_data.node_login_{i}", "replace") for i in range(3)))
    rolling = classify(summary, rolls=True, controller="terraform_data.node_login_0", batch=2)
    assert rolling.kind == ROLLING and "2 at a time" in rolling.detail
    assert [len(b) for b in rolling.batches] == [2, 2, 2, 1, 1] and rolling.batches[-1] == ("terraform_data.node_login_0",)


@pytest.mark.slow
@pytest.mark.parametrize("site,platform", [("gcp-zurich", "gcp"), ("aws-zurich", "aws")])
def test_raising_a_pools_generation_rolls_it_on_purpose_and_nothing_else(tmp_path, site, platform):
    """`node_pools.X.generation`: the way to roll a cloud pool on purpose (new first-boot data,
    a new image), reviewed like any change. Only that pool's nodes (and on AWS its launch
    template, whose image and user data are otherwise ignored) name the pool's generation,
    whose creation triggers nothing (tests/test_roll.py), so shipping this replaced no node."""
    repo = make_repo(tmp_path / "repo")
    repo.place("slurm-hpc", site)
    repo.replace("clusters/slurm-hpc.yaml", "    count: 4\n", "    count: 4\n    generation: 1\n")
    spec = desired(GitSource(repo.path).working_tree()).units[f"cluster:slurm-hpc@{site}"].spec
    document = _resources(synthesize_stacks(platform, {"cluster-slurm-hpc": spec})["cluster-slurm-hpc"])
    assert document["terraform_data.generation_compute"]["input"] == {"pool": "compute", "generation": 1}
    by_compute = ["terraform_data.generation_compute.output"]
    triggered = sorted(a for a, body in document.items() if (body.get("lifecycle") or {}).get("replace_triggered_by") == by_compute)
    instance = "google_compute_instance" if platform == "gcp" else "aws_instance"
    expected = [f"{instance}.node_compute_{i}" for i in range(4)] + (["aws_launch_template.template_compute"] if platform == "aws" else [])
    assert triggered == sorted(expected)
    assert document["terraform_data.generation_login"]["input"] == {"pool": "login", "generation": 0}  # never rolled
