"""A fanned-out apply: `reconcile waves` orders the units that need work, and each runner applies
its part with `reconcile apply --only`, which refuses a unit whose dependencies another runner
has not finished. The fan-out test runs each unit as its own `reconcile` process, in a clone of
its own, every process of a wave at once, with the stacks' state and records in one S3 bucket
(moto's server on 127.0.0.1): the runners of GitHub Actions, short of GitHub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GIT_ENV, git, remote_repo
from reconciler.backends import RECORD_SUFFIX

RECONCILE = str(Path(sys.executable).with_name("reconcile"))
LIMIT_S = 300


def keys(waves: dict) -> list[list[str]]:
    return [[u["key"] for u in wave["units"]] for wave in waves["waves"]]


def test_waves_order_a_landing_zone_change_a_cluster_change_and_a_move(applied, cli):
    repo = str(applied.path)
    applied.replace("sites/local-b.yaml", "    count: 1\n", "    count: 2\n")  # the landing zone changes
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")  # a cluster changes
    applied.place("slurm-hpc", "local-a")  # a move: created on local-a, then destroyed on local-b
    code, out, err = cli("waves", "--json", "--repo", repo)
    assert code == 0, err
    waves = json.loads(out)
    assert [w["name"] for w in waves["waves"]] == ["landing-zones", "clusters", "cluster-destroys", "landing-zone-destroys"]
    assert keys(waves) == [
        ["site:local-b"],
        ["cluster:dev@local-a", "cluster:slurm-hpc@local-a"],
        ["cluster:slurm-hpc@local-b"],
        [],
    ]
    units = {u["key"]: u for wave in waves["waves"] for u in wave["units"]}
    assert units["cluster:slurm-hpc@local-b"]["action"] == "destroy"
    assert units["cluster:slurm-hpc@local-b"]["needs"] == ["cluster:slurm-hpc@local-a"]
    assert units["cluster:dev@local-a"]["needs"] == [] and units["cluster:dev@local-a"]["reasons"][0] == "cluster file changed: clusters/dev.yaml"
    assert all(len(u["config_hash"]) == 64 for u in units.values())

    code, out, _ = cli("waves", "--repo", repo)  # the same, as text
    assert code == 0
    assert out.index("wave 1 (landing-zones)") < out.index("wave 2 (clusters)") < out.index("wave 3 (cluster-destroys)")
    assert "destroy cluster slurm-hpc on local-b" in out and "after cluster:slurm-hpc@local-a" in out


def test_apply_only_refuses_a_cluster_whose_landing_zone_is_not_live(repo, cli):
    path = str(repo.path)
    args = ("apply", "--auto-approve", "--engine", "embedded", "--repo", path)
    code, out, err = cli(*args, "--only", "cluster:dev@local-a")
    assert code == 1
    assert "cluster dev on local-a: it needs site:local-a (apply), which was never applied" in err
    assert not list((repo.path / ".reconcile" / "state" / "local-a").glob("*" + RECORD_SUFFIX)), "something was applied"

    code, out, err = cli(*args, "--only", "site:local-a", "--json")
    assert code == 0, out + err
    assert [(u["key"], u["outcome"]) for u in json.loads(out)["units"]] == [("site:local-a", "applied")]  # nothing else
    code, out, err = cli(*args, "--only", "cluster:dev@local-a")
    assert code == 0, out + err

    repo.replace("sites/local-a.yaml", "    count: 3\n", "    count: 2\n")  # the landing zone is live, but not as git says
    repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, out, err = cli(*args, "--only", "cluster:dev@local-a")
    assert code == 1 and "it needs site:local-a (apply), which is live at config hash" in err and "not at the desired" in err

    code, out, err = cli(*args, "--only", "cluster:nope@local-a")
    assert code == 1 and "cluster:nope@local-a: no such unit" in err


# ---------------------------------------------------------------- the fan-out


def _env(emulator) -> dict[str, str]:
    env = {**os.environ, **GIT_ENV, **emulator.env, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    for name in ("RECONCILE_ENGINE", "RECONCILE_STATE_ROOT", "RECONCILE_WORK_DIR", "GITHUB_ACTIONS", "GITHUB_TOKEN"):
        env.pop(name, None)
    return env


class Runners:
    """Each runner a fresh clone of the repository and one `reconcile` process, as a matrix job is."""

    def __init__(self, origin: Path, root: Path, emulator):
        self.origin, self.root, self.env = origin, root, _env(emulator)
        self.count = 0

    def clone(self) -> Path:
        self.count += 1
        path = self.root / f"runner-{self.count}"
        git(self.root, "clone", "-q", str(self.origin), str(path))
        return path

    def start(self, *args: str) -> subprocess.Popen:
        path = self.clone()
        return subprocess.Popen([RECONCILE, *args, "--engine", "embedded", "--repo", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)

    def run(self, *args: str) -> tuple[int, str, str]:
        process = self.start(*args)
        out, err = process.communicate(timeout=LIMIT_S)
        return process.returncode, out, err

    def fan_out(self, *flags: str) -> list[list[str]]:
        """Every wave's units at once, each in its own process; the next wave after. Returns the
        waves that were run, and checks that every runner applied its unit."""
        code, out, err = self.run("waves", "--json")
        assert code == 0, err
        ordered = keys(json.loads(out))
        for wave in ordered:
            running = [(key, self.start("apply", "--auto-approve", "--json", "--only", key, *flags)) for key in wave]
            for key, process in running:
                out, err = process.communicate(timeout=LIMIT_S)
                assert process.returncode == 0, f"{key}: {out}{err}"
                document = json.loads(out)
                assert [(u["key"], u["outcome"]) for u in document["units"]] == [(key, "applied")], out
        return ordered


def records(emulator, bucket: str) -> dict[str, tuple[str, str, str]]:
    """The live records in a bucket: {object key: (unit, config hash, revision)}."""
    out = {}
    for key, data in emulator.objects(bucket).items():
        if key.endswith(RECORD_SUFFIX):
            record = json.loads(data)
            out[key] = (record["unit"], record["config_hash"], record["revision"])
    return out


def restore(emulator, bucket: str, objects: dict[str, bytes]) -> None:
    for key in emulator.objects(bucket):
        emulator.delete(bucket, key)
    for key, data in objects.items():
        emulator.put(bucket, key, data)


@pytest.mark.slow
def test_a_fanned_out_apply_converges_to_what_one_apply_gives(emulators, tmp_path):
    """Each step fanned out, then the same step as one apply from the same state: the records
    (unit, config hash, revision) agree. The hashes name the bucket, so both use the same one."""
    emulator = emulators["s3"]
    origin, bucket = remote_repo(tmp_path / "origin", emulator)
    runners = Runners(origin.path, tmp_path, emulator)

    def single_apply_agrees(before: dict[str, bytes], *flags: str) -> None:
        fanned, after = records(emulator, bucket), emulator.objects(bucket)
        restore(emulator, bucket, before)
        code, out, err = runners.run("apply", "--auto-approve", *flags)
        assert code == 0, out + err
        assert fanned and fanned == records(emulator, bucket)
        restore(emulator, bucket, after)  # the fan-out's own state goes on

    # 1. From nothing: the landing zones at once, then the clusters at once.
    ran = runners.fan_out()
    assert ran == [["site:local-a", "site:local-b"], ["cluster:dev@local-a", "cluster:slurm-hpc@local-b"], [], []]
    revision = origin.git("rev-parse", "HEAD").strip()
    assert {r[2] for r in records(emulator, bucket).values()} == {revision}
    assert not [k for k in emulator.objects(bucket) if k.endswith((".tflock", ".lock.info"))], "a lock was left behind"
    single_apply_agrees({})

    # 2. A landing-zone change, a cluster change and a move, in one commit.
    before = emulator.objects(bucket)
    origin.replace("sites/local-b.yaml", "    count: 1\n", "    count: 2\n")
    origin.replace("clusters/slurm-hpc.yaml", "    count: 4\n", "    count: 3\n")
    origin.place("dev", "local-b")  # its volume is dropped: the emulated volumes are directories of the runner that made them
    origin.replace("clusters/dev.yaml", "storage:\n", "storage:\n  on_move: drop\n")
    origin.commit("a landing zone, a cluster and a move")
    ran = runners.fan_out("--allow-destroy")
    assert ran == [["site:local-b"], ["cluster:dev@local-b", "cluster:slurm-hpc@local-b"], ["cluster:dev@local-a"], []]
    assert "hpc/local-a/cluster-dev" + RECORD_SUFFIX not in records(emulator, bucket)
    single_apply_agrees(before, "--allow-destroy")

    # 3. A second run finds nothing to do.
    code, out, err = runners.run("waves", "--json")
    assert code == 0 and keys(json.loads(out)) == [[], [], [], []], out + err
    code, out, err = runners.run("plan")
    assert code == 0 and "Nothing to do" in out, out + err


def test_a_fanned_out_plan_gives_what_one_plan_gives(applied, cli, tmp_path):
    """plan.yml's fan-out: one `plan --unit KEY --save-summaries` per unit, then one
    `plan --summaries-from` that plans nothing it was handed, and shows what one plan shows."""
    repo = str(applied.path)
    applied.replace("sites/local-b.yaml", "    count: 1\n", "    count: 2\n")
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    applied.place("slurm-hpc", "local-a")
    code, out, err = cli("plan", "--no-lock", "--json", "--repo", repo)
    assert code == 2, err
    whole = json.loads(out)["units"]
    code, out, _ = cli("waves", "--json", "--max-jobs", "3", "--repo", repo)
    waves = json.loads(out)
    units = [key for wave in keys(waves) for key in wave]
    assert len(units) == 4
    # GitHub runs at most 256 jobs of a matrix: beyond --max-jobs, runs of neighbouring units share a job
    assert waves["jobs"] == [",".join(units[0:2]), ",".join(units[2:4])]
    for wave in waves["waves"]:  # each wave's own jobs: its units, in order, in at most 3 jobs
        assert len(wave["jobs"]) <= 3
        assert [k for job in wave["jobs"] for k in job.split(",")] == [u["key"] for u in wave["units"]]
    for n, job in enumerate(waves["jobs"]):
        code, out, err = cli("plan", "--no-lock", "--unit", job, "--save-summaries", str(tmp_path / "s" / str(n)), "--repo", repo)
        assert code == 2, out + err
    code, out, err = cli("plan", "--no-lock", "--json", "--summaries-from", str(tmp_path / "s"), "--repo", repo)
    assert code == 2, err
    assert json.loads(out)["units"] == whole

    # What it was handed is what it shows (it did not plan those units again) ...
    records = [p for p in (tmp_path / "s").rglob("*.json") if json.loads(p.read_text())["key"] == "cluster:dev@local-a"]
    handed = json.loads(records[0].read_text())

    def hand(text: str) -> list[dict]:
        for record in records:
            record.write_text(text)
        code, out, err = cli("plan", "--no-lock", "--json", "--summaries-from", str(tmp_path / "s"), "--repo", repo)
        assert code == 2, err
        return json.loads(out)["units"]

    (dev,) = [u for u in hand(json.dumps({**handed, "changes": [], "output_changes": []})) if u["key"] == "cluster:dev@local-a"]
    assert dev["resources"] == [] and dev["changes"]["create"] == 0
    # ... unless it is not of this configuration, or does not read: then the unit is planned here.
    assert hand(json.dumps({**handed, "changes": [], "config_hash": "0" * 64})) == whole
    assert hand(json.dumps({**handed, "changes": [], "document_sha": "0" * 64})) == whole
    assert hand("{not json") == whole
    assert hand(json.dumps({**handed, "changes": [{"address": 3, "action": "create"}]})) == whole


def test_a_run_of_units_in_one_job_is_reported_unit_by_unit(tmp_path):
    """A job that applied several units (`--only A,B`, beyond 256 jobs of a matrix) names them
    all in its unit.txt: each gets its own outcome from the job's document (one it leaves out had
    nothing to apply when its runner planned it, as for a job of one unit)."""
    from reconciler import ghflow

    def unit(key):
        return {"key": key, "title": key, "action": "apply", "reasons": ["x"], "config_hash": "h", "needs": []}

    names = ["cluster:a@s", "cluster:b@s", "cluster:c@s"]
    waves = [{"name": "landing-zones", "units": [], "jobs": []},
             {"name": "clusters", "units": [unit(k) for k in names], "jobs": [",".join(names[:2]), names[2]]},
             {"name": "cluster-destroys", "units": [], "jobs": []}, {"name": "landing-zone-destroys", "units": [], "jobs": []}]
    head = {"label": "HEAD", "revision": "a" * 40, "dirty": False}
    (tmp_path / "waves.json").write_text(json.dumps({"format_version": 1, "head": head, "waves": waves, "jobs": [], "exit_code": 0}))
    for n, (job, applied) in enumerate(((",".join(names[:2]) + "\n", names[:1]), (names[2], names[2:]))):
        (tmp_path / f"apply-{n}").mkdir()
        (tmp_path / f"apply-{n}" / "unit.txt").write_text(job)
        document = {"head": head, "units": [{"key": k, "outcome": "applied", "detail": ""} for k in applied], "exit_code": 0}
        (tmp_path / f"apply-{n}" / "apply.json").write_text(json.dumps(document))
    results, revision = ghflow.gathered_results(tmp_path)
    assert revision == "a" * 40
    assert [r.outcome for r in results] == ["applied", "no changes", "applied"]  # b: in the job, nothing to apply
