"""State in buckets: local-platform sites whose `state:` is s3 or gcs at an endpoint of their own
(how an on-premises centre keeps state in its Ceph RGW or MinIO), served on 127.0.0.1 by moto's
S3 server and the GCS emulator. The engine's backend, its lock, the live records and the
orphan listing all go through those protocols."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, applied_remote_copy, make_repo, remote_repo
from test_kill_apply import ENGINES

KINDS = ["s3", "gcs"]
UNITS = ["site:local-a", "site:local-b", "cluster:dev@local-a", "cluster:slurm-hpc@local-b"]


def state_key(kind: str, site: str, stack: str) -> str:
    return f"hpc/{site}/{stack}.tfstate" if kind == "s3" else f"hpc/{site}/{stack}/default.tfstate"


def record_key(site: str, stack: str) -> str:
    return f"hpc/{site}/{stack}.reconcile.json"


def dry_run(cli, repo, *extra):
    code, out, err = cli("--dry-run", "--json", "--repo", str(repo.path), "--engine", "embedded", *extra)
    return code, json.loads(out), err


@pytest.fixture(params=KINDS)
def remote(request, emulators, tmp_path, monkeypatch):
    emulator = emulators[request.param]
    repo, bucket = remote_repo(tmp_path / "repo", emulator, monkeypatch)
    return emulator, repo, bucket


@pytest.fixture(params=KINDS)
def applied_remote(request, emulators, remote_templates, tmp_path, monkeypatch):
    """The example's local stacks applied with state in a bucket: the session's template, copied."""
    emulator = emulators[request.param]
    repo, bucket = applied_remote_copy(emulator, remote_templates, tmp_path / "repo", monkeypatch)
    return emulator, repo, bucket


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_dry_run_apply_then_nothing_to_do_with_state_in_a_bucket(remote, cli, engine):
    emulator, repo, bucket = remote
    code, out, err = cli("--dry-run", "--json", "--repo", str(repo.path), "--engine", engine)
    plan = json.loads(out)
    assert code == 2, err
    assert engine in plan["engine"]
    assert sorted(u["key"] for u in plan["units"]) == sorted(UNITS)
    assert all(u["reasons"] == ["never applied"] and u["changes"]["create"] > 0 for u in plan["units"])
    assert plan["unchecked"] == []

    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", engine)
    assert code == 0, out + err
    objects = emulator.objects(bucket)
    for site, stack in (("local-a", "landing-zone"), ("local-a", "cluster-dev"), ("local-b", "cluster-slurm-hpc")):
        state = json.loads(objects[state_key(emulator.kind, site, stack)])
        record = json.loads(objects[record_key(site, stack)])
        assert state["resources"] and record["state_lineage"] == state["lineage"] and record["state_serial"] == state["serial"]
        assert record["state_backend"] == emulator.kind and record["state_endpoint"] == emulator.endpoint
    assert not [k for k in objects if k.endswith((".tflock", ".lock.info"))], "a lock was left behind"
    assert not (repo.path / ".reconcile" / "state").exists(), "state went to local disk"

    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", engine)
    assert code == 0, out + err
    assert "Nothing to do" in out and "Not checked" not in out


@pytest.mark.slow
def test_a_stack_deleted_in_a_commit_never_applied_is_found_in_the_bucket(applied_remote, cli):
    emulator, repo, bucket = applied_remote
    (repo.path / "clusters" / "dev.yaml").unlink()
    repo.commit("retire dev on main directly")  # base == head: only the bucket remembers dev
    code, plan, err = dry_run(cli, repo, "--base", "HEAD")
    assert code == 2, err
    (unit,) = plan["units"]
    assert unit["key"] == "cluster:dev@local-a"
    assert unit["action"] == "destroy" and unit["reasons"] == ["in live state but defined neither at base nor at head"]


def test_without_credentials_a_bucket_is_not_checked_and_planned_offline(remote, cli, monkeypatch):
    emulator, repo, bucket = remote
    for key in emulator.env:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    code, plan, err = dry_run(cli, repo)
    assert code == 0, err
    assert plan["units"] == [] and sorted(plan["unchecked"]) == sorted(UNITS)
    repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")  # changed in git: planned offline
    code, plan, err = dry_run(cli, repo)
    assert code == 2, err
    assert [(u["key"], u["status"]) for u in plan["units"]] == [("cluster:dev@local-a", "offline")]
    assert emulator.objects(bucket) == {}, "nothing was written"


def test_without_credentials_no_cloud_client_is_imported_and_no_metadata_service_asked(tmp_path):
    """A laptop with no cloud credentials: neither boto nor google-auth is imported, and no
    instance metadata service is asked (a wait, and traffic off the machine); with a source
    of credentials of either chain, the clients are used as before."""
    from reconciler.backends import aws_credentials_may_exist, gcp_credentials_may_exist

    home = tmp_path / "home"
    home.mkdir()
    bare = {"HOME": str(home), "PATH": "/usr/bin"}
    on_a_cloud = Path("/sys/class/dmi/id/product_name").exists() or Path("/sys/hypervisor/uuid").exists()
    if not on_a_cloud:  # this machine is no cloud instance: only the environment can say yes
        assert not aws_credentials_may_exist(bare) and not gcp_credentials_may_exist(bare)
    assert aws_credentials_may_exist({**bare, "AWS_ACCESS_KEY_ID": "x"})
    assert aws_credentials_may_exist({**bare, "AWS_WEB_IDENTITY_TOKEN_FILE": "/run/token"})  # GitHub OIDC
    assert gcp_credentials_may_exist({**bare, "GOOGLE_APPLICATION_CREDENTIALS": "/run/wif.json"})
    (home / ".aws").mkdir()
    (home / ".aws/config").write_text("[default]\nregion = eu-central-2\n")
    assert aws_credentials_may_exist(bare)
    (home / ".config/gcloud").mkdir(parents=True)
    (home / ".config/gcloud/application_default_credentials.json").write_text("{}")
    assert gcp_credentials_may_exist(bare)

    repo = make_repo(tmp_path / "repo")
    names = "\n".join(p.read_text() for p in (repo.path / "sites").glob("*.yaml"))
    assert "backend: gcs" in names and "backend: s3" in names
    script = (
        "import sys\n"
        "from reconciler.cli import main\n"
        f"code = main(['--dry-run', '--repo', {str(repo.path)!r}, '--engine', 'embedded'])\n"
        "loaded = sorted(m for m in ('boto3', 'botocore', 'google.auth', 'google.cloud.storage') if m in sys.modules)\n"
        "print('LOADED', loaded, code)\n"
    )
    env = {**bare, "PATH": os.environ["PATH"], "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    env["HOME"] = str(tmp_path / "empty-home")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    if not on_a_cloud:
        assert "LOADED [] 2" in done.stdout, done.stdout + done.stderr


def lock_key(kind: str, site: str, stack: str) -> str:
    return state_key(kind, site, stack) + ".tflock" if kind == "s3" else f"hpc/{site}/{stack}/default.tflock"


HELD = {
    "ID": "5f1c-held-by-runner-7", "Operation": "OperationTypeApply", "Info": "", "Who": "ci@runner-7",
    "Version": "1.11.4", "Created": "2026-01-01T08:00:00.000000Z", "Path": "",
}


@pytest.fixture
def applied_s3(emulators, remote_templates, tmp_path, monkeypatch):
    """S3 only: gcp-storage-emulator ignores GCS's preconditions (ifGenerationMatch), on which
    the gcs backend's lock rests, so a held GCS lock cannot be shown against it."""
    repo, bucket = applied_remote_copy(emulators["s3"], remote_templates, tmp_path / "repo", monkeypatch)
    return emulators["s3"], repo, bucket


@pytest.mark.slow
def test_a_held_lock_names_its_holder_and_unlock_releases_it(applied_s3, cli):
    emulator, repo, bucket = applied_s3
    lock = lock_key(emulator.kind, "local-a", "cluster-dev")
    emulator.put(bucket, lock, json.dumps(HELD).encode())
    repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", "embedded", "--lock-timeout", "0s")
    assert code == 1, out + err
    assert "cluster dev on local-a" in out and "is locked: held by ci@runner-7 for apply since 2026-01-01T08:00:00" in out
    assert "lock ID 5f1c-held-by-runner-7" in out and "reconcile unlock cluster:dev@local-a --lock-id 5f1c-held-by-runner-7" in out
    before = emulator.objects(bucket)
    code, out, err = cli("--dry-run", "--no-lock", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 2, out + err  # a read-only identity plans without locking, and writes nothing
    assert emulator.objects(bucket) == before

    code, out, err = cli("unlock", "cluster:dev@local-a", "--lock-id", "another-id", "--yes", "--repo", str(repo.path))
    assert code == 1 and "--lock-id another-id is not the lock that holds" in err and lock in emulator.objects(bucket)
    code, out, err = cli("unlock", "cluster:dev@local-a", "--lock-id", HELD["ID"], "--repo", str(repo.path))
    assert code == 1 and "needs confirmation" in err and lock in emulator.objects(bucket)  # no terminal, no --yes
    code, out, err = cli("unlock", "cluster:dev@local-a", "--lock-id", HELD["ID"], "--yes", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 0, out + err
    assert lock not in emulator.objects(bucket)
    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", "embedded", "--lock-timeout", "0s")
    assert code == 2, out + err


@pytest.mark.slow
def test_a_skipped_run_is_caught_up_from_the_record_whatever_base_says(applied_remote, cli):
    """Merge-to-deploy converges on remote state: a commit whose apply never ran is planned by
    the next run, although `--base` (the commit before it) says nothing changed since."""
    emulator, repo, bucket = applied_remote
    repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    repo.commit("grow dev; its apply run was cancelled")
    code, plan, err = dry_run(cli, repo, "--base", "HEAD")
    assert code == 2, err
    (unit,) = plan["units"]
    assert unit["key"] == "cluster:dev@local-a" and unit["changes"]["create"] == 1
    assert any(r.startswith("live state differs from git") for r in unit["reasons"]), unit["reasons"]


@pytest.mark.slow
def test_a_record_write_that_fails_after_an_apply_is_reported_and_repaired_next_run(applied_s3, cli, monkeypatch):
    from reconciler import backends

    emulator, repo, bucket = applied_s3
    real_put = backends.S3Blobs.put

    def put_failing_records(self, key, data):
        if key.endswith(backends.RECORD_SUFFIX):  # the bucket refuses the record, after the engine wrote the state
            raise backends.BackendError(f"{self.url(key)}: SlowDown (HTTP 503): injected")
        return real_put(self, key, data)

    repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    with monkeypatch.context() as patch:
        patch.setattr(backends.S3Blobs, "put", put_failing_records)
        code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 1, out + err
    assert "applied, but its live record could not be written" in out and "The state is sound" in out, out
    state = json.loads(emulator.objects(bucket)["hpc/local-a/cluster-dev.tfstate"])
    assert sum(r["name"].startswith("node_compute_") for r in state["resources"]) == 3  # the apply itself stands

    code, plan, err = dry_run(cli, repo)
    assert code == 2, err
    (unit,) = plan["units"]
    assert unit["key"] == "cluster:dev@local-a" and unit["changes"]["create"] == 0  # only the record is stale
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 0, out + err
    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 0 and "Nothing to do" in out, out


@pytest.mark.slow
def test_the_records_helper_and_the_run_itself_read_the_same(applied_remote, cli):
    """`reconcile` forks a helper that reads remote records while the run reads git; without it
    (RECONCILE_NO_PREFETCH) the run reads them itself. Both see the same: an orphan, a change."""
    import os
    import subprocess

    from test_kill_apply import RECONCILE, _env

    emulator, repo, bucket = applied_remote
    (repo.path / "clusters" / "dev.yaml").unlink()
    repo.commit("retire dev on main directly")
    repo.replace("clusters/slurm-hpc.yaml", "failover: [local-a]", "failover: []")
    outputs = []
    for extra in ({}, {"RECONCILE_NO_PREFETCH": "1"}):
        done = subprocess.run(
            [RECONCILE, "--dry-run", "--json", "--repo", str(repo.path), "--engine", "embedded", "--base", "HEAD"],
            capture_output=True, text=True, env={**_env(), **emulator.env, **extra}, timeout=300,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        outputs.append({u["key"]: (u["action"], u["reasons"]) for u in json.loads(done.stdout)["units"]})
    assert outputs[0] == outputs[1]
    assert outputs[0]["cluster:dev@local-a"][0] == "destroy" and "cluster:slurm-hpc@local-b" in outputs[0]


@pytest.mark.slow
def test_a_damaged_state_object_is_not_planned_over_and_its_last_good_version_is_restored(emulators, tmp_path, cli, monkeypatch):
    emulator = emulators["s3"]
    repo, bucket = remote_repo(tmp_path / "repo", emulator, monkeypatch)
    emulator.enable_versioning(bucket)  # as the set-up asks of every state bucket
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 0, out + err
    key = state_key("s3", "local-a", "cluster-dev")
    good = json.loads(emulator.objects(bucket)[key])
    emulator.put(bucket, key, emulator.objects(bucket)[key][:100])  # a write cut short: truncated JSON
    repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")

    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 1, out + err
    assert f"s3://{bucket}/{key}" in out and "is not valid JSON (100 bytes" in out and "Nothing was planned for this stack" in out
    assert f"serial {good['serial']}, {len(good['resources'])} resources" in out
    assert "reconcile restore-state cluster:dev@local-a" in out

    code, out, err = cli("restore-state", "cluster:dev@local-a", "--repo", str(repo.path))
    assert code == 0, out + err
    assert json.loads(emulator.objects(bucket)[key])["lineage"] == good["lineage"]
    code, plan, err = dry_run(cli, repo)
    assert code == 2, err
    (unit,) = plan["units"]
    assert unit["key"] == "cluster:dev@local-a" and unit["changes"]["create"] == 1  # never "create everything"
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 0, out + err
    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 0 and "Nothing to do" in out, out
