"""`--json` is a contract: every command's document validates against its schema in
schema/output/ (generated from reconciler/output.py), which refuses unknown keys and lists the
required ones. Each command runs for real, in-process, on an applied copy of the examples."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT

CLOUD_FILES = ("sites/aws-frankfurt.yaml", "sites/aws-zurich.yaml", "sites/gcp-netherlands.yaml", "sites/gcp-zurich.yaml",
               "clusters/gpu-ai.yaml", "clusters/icon.yaml")


def schema(name: str) -> dict:
    return json.loads((ROOT / "schema" / "output" / f"{name}.schema.json").read_text())


def document(cli, name: str, *argv: str, code: int | None = None) -> dict:
    """Run a command with --json, check its exit code and its document against `name`'s schema."""
    got, out, err = cli(*argv, "--json")
    if code is not None:
        assert got == code, out + err
    doc = json.loads(out)
    jsonschema.validate(doc, schema(name))
    assert doc["format_version"] == 1 and doc["exit_code"] == got
    return doc


def test_every_schema_refuses_unknown_keys_and_requires_the_version():
    for path in sorted((ROOT / "schema" / "output").glob("*.schema.json")):
        s = json.loads(path.read_text())
        assert s["additionalProperties"] is False and {"format_version", "exit_code"} <= set(s["required"]), path.name
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"format_version": 1, "exit_code": 0, "surprise": True}, s)


def test_every_command_prints_what_its_schema_says(applied, cli, tmp_path):
    repo = str(applied.path)
    validated = document(cli, "validate", "validate", "--repo", repo, code=0)
    assert validated["ignored"] == [] and any(v["emulated"] for v in validated["portability"])
    document(cli, "portability", "portability", "--repo", repo, code=0)
    document(cli, "status", "status", "--repo", repo, code=0)
    volumes = document(cli, "volumes", "volumes", "--repo", repo, code=0)
    assert {v["status"] for v in volumes["volumes"]} == {"in use"} and all(v["platform"] == "local" for v in volumes["volumes"])

    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    waves = document(cli, "waves", "waves", "--repo", repo, code=0)
    assert [[u["key"] for u in w["units"]] for w in waves["waves"]] == [[], ["cluster:dev@local-a"], [], []]
    planned = document(cli, "plan", "--dry-run", "--repo", repo, code=2)
    (dev,) = [u for u in planned["units"] if u["key"] == "cluster:dev@local-a"]
    assert dev["pending"] and dev["changes"]["create"] == 1 and "delete" not in dev["changes"]
    assert dev["change_class"]["detail"] == "1 node created; no running node changes"

    done = document(cli, "plan", "apply", "--auto-approve", "--repo", repo, code=0)
    (dev,) = [u for u in done["units"] if u["key"] == "cluster:dev@local-a"]
    assert dev["outcome"] == "applied" and dev["pending"] is False  # applied: nothing left pending

    applied.replace("clusters/dev.yaml", "    count: 3\n", "    count: 2\n")  # one node less: a destroy, as the text says
    planned = document(cli, "plan", "--dry-run", "--repo", repo, code=2)
    (dev,) = [u for u in planned["units"] if u["key"] == "cluster:dev@local-a"]
    assert dev["changes"]["destroy"] == 1 and planned["totals"]["destroy"] == 1
    assert {r["action"] for r in dev["resources"]} == {"destroy"}

    proposed = document(cli, "failover-plan", "failover", "--site", "local-a", "--dry-run", "--repo", repo, code=2)
    assert [d["target"] for d in proposed["failover"]] == ["local-b"]
    document(cli, "failover", "failover", "--site", "local-a", "--patch", str(tmp_path / "f.patch"), "--repo", repo, code=0)

    document(cli, "error", "status", "no-such-cluster", "--repo", repo, code=1)
    applied.replace("clusters/dev.yaml", "    cores: 8\n", "    coress: 8\n")
    refused = document(cli, "invalid-definitions", "validate", "--repo", repo, code=1)
    assert refused["problems"][0]["field"] == "node_pools.compute.coress"


def test_synth_prints_what_its_schema_says(repo, cli, tmp_path):
    for rel in CLOUD_FILES:  # the local stacks only: one Node process, no provider packages
        (repo.path / rel).unlink()
    repo.replace("clusters/slurm-hpc.yaml", "failover: [local-a, aws-zurich]", "failover: [local-a]")
    written = document(cli, "synth", "synth", "--out", str(tmp_path / "out"), "--repo", str(repo.path), code=0)
    assert written["written"] and all(Path(p).is_file() for p in written["written"])
