"""Copies between clouds (`storage.on_move: copy`): the route each volume takes, the volumes read
from a stack's state, and the transfer stacks (Storage Transfer Service, DataSync) as
synthesized, checked against golden JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import check_golden
from rpi import copyroute
from rpi.copyroute import DATASYNC, RCLONE, RSYNC, STAGED, STORAGE_TRANSFER, CloudVolume, TransferSpec
from rpi.spec import StateLocation

GOLDEN = Path(__file__).parent / "golden" / "transfer"


class LocalBucket:
    store = {"backend": "s3", "endpoint": "http://127.0.0.1:9000"}


GCS = CloudVolume("gcp", "bucket", "gcs", "a-bucket", "europe-west6", (("project", "p"),))
S3 = CloudVolume("aws", "bucket", "s3", "b-bucket", "eu-central-2", (("arn", "arn:aws:s3:::b-bucket"),))
EFS = CloudVolume("aws", "filesystem", "efs", "fs-1", "eu-central-2")
LUSTRE = CloudVolume("aws", "filesystem", "lustre", "fs-2", "eu-central-2")
FILESTORE = CloudVolume("gcp", "filesystem", "filestore", "projects/p/locations/z/instances/i", "z")


@pytest.mark.parametrize(
    "source_platform,source,target_platform,target,expected",
    [
        ("local", Path("/v/a"), "local", Path("/v/b"), RSYNC),
        ("local", LocalBucket(), "gcp", "bucket", RCLONE),
        ("gcp", GCS, "aws", "bucket", RCLONE),
        ("aws", S3, "gcp", GCS, RCLONE),
        ("aws", S3, "local", Path("/v/b"), RCLONE),
        ("gcp", GCS, "gcp", "bucket", STORAGE_TRANSFER),
        ("aws", S3, "aws", "bucket", DATASYNC),
        ("aws", EFS, "aws", "filesystem", DATASYNC),
        ("aws", EFS, "aws", EFS, DATASYNC),
        ("aws", EFS, "aws", LUSTRE, STAGED),  # DataSync does not carry EFS into Lustre here
        ("gcp", FILESTORE, "gcp", "filesystem", STAGED),
        ("gcp", FILESTORE, "aws", "filesystem", STAGED),
        ("local", Path("/v/a"), "aws", "filesystem", STAGED),
        ("aws", EFS, "gcp", "bucket", STAGED),
    ],
)
def test_each_pair_of_volumes_takes_its_route(source_platform, source, target_platform, target, expected):
    assert copyroute.route(source_platform, source, target_platform, target) == expected


def test_a_cloud_stacks_volumes_are_read_from_its_state():
    resources = [
        ("aws_subnet", "subnet", {"arn": "arn:aws:ec2:eu-central-2:1:subnet/s-1"}),
        ("aws_security_group", "security_group_login", {"arn": "arn:aws:ec2:eu-central-2:1:security-group/sg-l"}),
        ("aws_security_group", "security_group_nodes", {"arn": "arn:aws:ec2:eu-central-2:1:security-group/sg-n"}),
        ("aws_efs_file_system", "storage_shared", {"id": "fs-1", "arn": "arn:aws:elasticfilesystem:eu-central-2:1:file-system/fs-1"}),
        ("aws_s3_bucket", "bucket_datasets", {"bucket": "b", "arn": "arn:aws:s3:::b", "region": "eu-central-2"}),
        ("aws_instance", "node_login_0", {"id": "i-1"}),
    ]
    found = copyroute.locate("aws", resources)
    assert sorted(found) == ["aws_efs_file_system.storage_shared", "aws_s3_bucket.bucket_datasets"]
    efs = found["aws_efs_file_system.storage_shared"]
    assert (efs.kind, efs.service, efs.id, efs.region) == ("filesystem", "efs", "fs-1", "eu-central-2")
    assert efs.fact("subnet_arn").endswith("subnet/s-1") and efs.fact("security_group_arn").endswith("sg-n")
    assert found["aws_s3_bucket.bucket_datasets"].store == {"backend": "s3", "region": "eu-central-2"}
    gcs = copyroute.locate("gcp", [("google_storage_bucket", "bucket_datasets", {"name": "g", "project": "p", "location": "EUROPE-WEST6"})])
    assert gcs["google_storage_bucket.bucket_datasets"].store == {"backend": "gcs", "project": "p"}
    assert str(gcs["google_storage_bucket.bucket_datasets"]) == "gcs://g"


def _synth(platform_name: str, spec: TransferSpec) -> str:
    from reconciler.synth import render_json
    from rpi import cdk, registry

    platform = registry.platform(platform_name)

    def build(app):
        stack = cdk.new_stack(app, spec.stack)
        platform.transfer(stack, spec)
        return {spec.stack: stack}

    return render_json(cdk.synthesize(build)[spec.stack])


@pytest.mark.slow
def test_the_storage_transfer_stack_grants_only_what_the_job_needs(update_golden):
    target = CloudVolume("gcp", "bucket", "gcs", "proj-gcp-zurich-dev-datasets", "europe-west6", (("project", "proj"),))
    source = CloudVolume("gcp", "bucket", "gcs", "proj-gcp-netherlands-dev-datasets", "europe-west4", (("project", "proj"),))
    spec = TransferSpec("gcp", "gcp-zurich", "proj", "europe-west6", "dev",
                        StateLocation("gcs", "proj-gcp-zurich-state", "hpc/gcp-zurich/transfer-dev"), (("datasets", source, target),))
    text = _synth("gcp", spec)
    check_golden(GOLDEN / "gcp-transfer-dev.tf.json", text, update_golden)
    doc = json.loads(text)
    job = doc["resource"]["google_storage_transfer_job"]["transfer_datasets"]
    assert "schedule" not in job, "the reconciler runs the job; a schedule would run it again by itself"
    assert job["transfer_spec"]["gcs_data_source"]["bucket_name"] == source.id
    assert job["transfer_spec"]["gcs_data_sink"]["bucket_name"] == target.id
    grants = doc["resource"]["google_storage_bucket_iam_member"].values()
    assert {(g["bucket"], g["role"]) for g in grants} == {
        (source.id, "roles/storage.objectViewer"), (source.id, "roles/storage.legacyBucketReader"),
        (target.id, "roles/storage.legacyBucketWriter"), (target.id, "roles/storage.objectViewer"),
    }
    assert all("transfer_agent" in g["member"] for g in grants)
    assert doc["terraform"]["backend"]["gcs"]["prefix"] == "hpc/gcp-zurich/transfer-dev"


@pytest.mark.slow
def test_the_datasync_stack_verifies_and_reaches_only_its_volumes(update_golden):
    efs = lambda fs, site: CloudVolume(  # noqa: E731
        "aws", "filesystem", "efs", fs, "eu-central-2",
        (("arn", f"arn:aws:elasticfilesystem:eu-central-2:111122223333:file-system/{fs}"),
         ("subnet_arn", f"arn:aws:ec2:eu-central-2:111122223333:subnet/subnet-{site}"),
         ("security_group_arn", f"arn:aws:ec2:eu-central-2:111122223333:security-group/sg-{site}")),
    )
    bucket = lambda name: CloudVolume("aws", "bucket", "s3", name, "eu-central-2", (("arn", f"arn:aws:s3:::{name}"),))  # noqa: E731
    spec = TransferSpec(
        "aws", "aws-zurich", "111122223333", "eu-central-2", "dev",
        StateLocation("s3", "state-aws-zurich", "hpc/aws-zurich/transfer-dev.tfstate", "eu-central-2"),
        (("shared", efs("fs-source", "a"), efs("fs-target", "b")), ("datasets", bucket("src-datasets"), bucket("dst-datasets"))),
    )
    text = _synth("aws", spec)
    check_golden(GOLDEN / "aws-transfer-dev.tf.json", text, update_golden)
    doc = json.loads(text)
    tasks = doc["resource"]["aws_datasync_task"]
    assert sorted(tasks) == ["transfer_datasets", "transfer_shared"]
    for task in tasks.values():
        assert task["options"]["verify_mode"] == "POINT_IN_TIME_CONSISTENT"
        assert task["options"]["preserve_deleted_files"] == "REMOVE"
        assert task["excludes"] == {"filter_type": "SIMPLE_PATTERN", "value": "/.vcluster"}
    trust = json.loads(doc["resource"]["aws_iam_role"]["transfer_role"]["assume_role_policy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "datasync.amazonaws.com"}
    assert trust["Statement"][0]["Condition"] == {  # no other account's DataSync can be made to use it
        "StringEquals": {"aws:SourceAccount": "111122223333"},
        "ArnLike": {"aws:SourceArn": "arn:aws:datasync:eu-central-2:111122223333:*"},
    }
    policy = json.loads(doc["resource"]["aws_iam_role_policy"]["transfer_buckets"]["policy"])
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    writes = {r for s in policy["Statement"] if "s3:PutObject" in s["Action"] for r in s["Resource"]}
    assert writes == {"arn:aws:s3:::dst-datasets/*"}, "the source bucket is read, never written"
    assert resources == {"arn:aws:s3:::src-datasets", "arn:aws:s3:::dst-datasets", "arn:aws:s3:::src-datasets/*", "arn:aws:s3:::dst-datasets/*"}
    locations = doc["resource"]["aws_datasync_location_efs"]
    assert {loc["ec2_config"]["subnet_arn"].rsplit("-", 1)[-1] for loc in locations.values()} == {"a", "b"}


def _datasync(emulator):
    import boto3

    return boto3.client(
        "datasync", endpoint_url=emulator.endpoint, region_name="eu-central-2",
        aws_access_key_id="emulated", aws_secret_access_key="emulated",
    )


def _task(client, name: str) -> str:
    """A task between two S3 locations, made as the transfer stack's resources make it."""
    arns = [
        client.create_location_s3(
            S3BucketArn=f"arn:aws:s3:::{bucket}", Subdirectory="/", S3Config={"BucketAccessRoleArn": "arn:aws:iam::123456789012:role/t"}
        )["LocationArn"]
        for bucket in (f"{name}-src", f"{name}-dst")
    ]
    return client.create_task(SourceLocationArn=arns[0], DestinationLocationArn=arns[1], Name=name)["TaskArn"]


def test_a_datasync_pass_is_started_and_waited_for_through_the_api(emulators, monkeypatch):
    """moto's server speaks DataSync's API (it moves no bytes): an execution runs through its
    states to SUCCESS, and the runner waits for it, polling, and returns it verified."""
    from reconciler import transfer

    monkeypatch.setenv(transfer.POLL_ENV, "0.01")
    client = _datasync(emulators["s3"])
    task = _task(client, "pass")
    done = transfer.run_datasync(task, "eu-central-2", client=client)
    assert done.verified and done.execution.startswith(task + "/execution/")
    assert client.describe_task_execution(TaskExecutionArn=done.execution)["Status"] == "SUCCESS"


def test_a_datasync_pass_that_does_not_finish_in_time_is_cancelled_and_the_source_stays(emulators, monkeypatch):
    from reconciler import transfer
    from reconciler.datacopy import CopyError

    monkeypatch.setenv(transfer.POLL_ENV, "0.01")
    monkeypatch.setenv(transfer.TIMEOUT_ENV, "0")
    client = _datasync(emulators["s3"])
    task = _task(client, "late")
    with pytest.raises(CopyError, match="did not finish in 0 s.*cancelled") as raised:
        transfer.run_datasync(task, "eu-central-2", client=client)
    execution = str(raised.value).split()[2]
    assert client.describe_task_execution(TaskExecutionArn=execution)["Status"] == "ERROR", "cancelled, not left running"


def test_a_task_that_cannot_start_names_it(emulators):
    from reconciler import transfer
    from reconciler.datacopy import CopyError

    client = _datasync(emulators["s3"])
    with pytest.raises(CopyError, match="could not start DataSync task arn:aws:datasync:eu-central-2:123456789012:task/task-missing"):
        transfer.run_datasync("arn:aws:datasync:eu-central-2:123456789012:task/task-missing", "eu-central-2", client=client)


@pytest.mark.parametrize(
    "platform,address,volume_id,requires",
    [
        ("gcp", "google_storage_bucket.bucket_datasets", "p-gcp-zurich-dev-datasets", {"name", "location"}),
        ("gcp", "google_filestore_instance.storage_shared", "projects/p/locations/europe-west6-a/instances/dev-shared",
         {"name", "location", "tier", "file_shares", "networks"}),
        ("aws", "aws_s3_bucket.bucket_datasets", "a-aws-zurich-dev-datasets", {"bucket"}),
        ("aws", "aws_efs_file_system.storage_shared", "fs-0123", set()),
        ("aws", "aws_fsx_lustre_file_system.storage_shared", "fs-0456", {"subnet_ids", "storage_capacity", "deployment_type"}),
    ],
)
def test_a_retained_cloud_volume_is_deleted_by_an_import_that_changes_nothing(platform, address, volume_id, requires):
    from rpi import retained

    doc = retained.deletion_stack(platform, address, volume_id, "proj-or-account", "europe-west6")
    rtype, name = address.split(".")
    body = doc["resource"][rtype][name]
    assert doc["import"] == [{"to": address, "id": volume_id}]
    assert body["lifecycle"] == {"ignore_changes": "all"}, "the import adopts the volume as it is: no update, no replacement"
    assert set(body) - {"lifecycle"} == requires
    assert list(doc["provider"]) == [retained.PROVIDERS[platform][0]]
    assert doc["terraform"]["backend"] == {"local": {"path": "terraform.tfstate"}}
    if rtype == "google_filestore_instance":
        assert (body["name"], body["location"]) == ("dev-shared", "europe-west6-a")


def test_the_pinned_providers_of_deletion_stacks_are_those_the_platforms_synthesize():
    from rpi import retained

    for platform, (provider, version) in retained.PROVIDERS.items():
        golden = json.loads((Path(__file__).parent / "golden" / platform / "cluster-dev.tf.json").read_text())
        assert golden["terraform"]["required_providers"][provider]["version"] == version


def test_a_retained_type_this_tool_cannot_delete_is_refused_by_name():
    from rpi import retained

    with pytest.raises(ValueError, match="aws_instance cannot be deleted by this tool"):
        retained.deletion_stack("aws", "aws_instance.x", "i-1", "1", "eu-central-2")


class _StandInEngine:
    """The engine's interface for a transfer stack, whose provider cannot be downloaded here:
    it records the calls and fails the destroy's apply while `fail_destroy` holds."""

    name = "stand-in"

    def __init__(self, fail_destroy: bool):
        self.fail_destroy, self.calls, self.destroying = fail_destroy, [], False

    def init(self, workdir, env):
        self.calls.append(("init", Path(workdir).name))

    def plan(self, workdir, destroy=False, **kwargs):
        self.destroying = destroy
        self.calls.append(("plan-destroy" if destroy else "plan", Path(workdir).name))

    def apply(self, workdir):
        self.calls.append(("apply-destroy" if self.destroying else "apply", Path(workdir).name))
        if self.destroying and self.fail_destroy:
            from reconciler.errors import ReconcileError

            raise ReconcileError("the engine could not destroy the transfer stack (stand-in)")

    def outputs(self, workdir):
        return {"transfers": {"value": {"shared": "arn:aws:datasync:eu-central-2:123456789012:task/task-0"}}}


def _a_move_within_aws(tmp_path, monkeypatch):
    """A cluster moving between two AWS sites whose file system DataSync copies: (plan, store,
    the channel states asked for, source, target). The engine is the caller's stand-in."""
    from types import SimpleNamespace

    from reconciler import apply as apply_module, transfer
    from reconciler.apply import APPLIED, ApplyResult
    from reconciler.datacopy import VolumeCopy
    from reconciler.errors import ReconcileError
    from reconciler.live import LiveStore
    from reconciler.resolve import Unit

    def unit(site: str) -> Unit:
        state = StateLocation("local", site, "cluster-dev.tfstate")  # the state's backend: a stand-in for the site's S3
        spec = SimpleNamespace(account="123456789012", region="eu-central-2", drain_timeout_s=1)
        return Unit("cluster", "dev", site, "aws", (), (), spec, "h", state)

    source, target = unit("aws-frankfurt"), unit("aws-zurich")
    efs = lambda i: CloudVolume("aws", "filesystem", "efs", f"fs-{i}", "eu-central-2", (("arn", f"arn:aws:elasticfilesystem:eu-central-2:123456789012:file-system/fs-{i}"),))  # noqa: E731
    copy = VolumeCopy("shared", "aws_efs_file_system.storage_shared", efs(1), 0, 0, DATASYNC, False)
    workdir = tmp_path / "work" / "cluster-dev"
    workdir.mkdir(parents=True)
    p = SimpleNamespace(selected=SimpleNamespace(unit=source, action="destroy"), copy_target=target, copies=(copy,),
                        cutover=(False, False), workdir=workdir)
    store = LiveStore(tmp_path / "state")
    asked = []
    monkeypatch.setattr(apply_module, "channel_access", lambda store, u, state, wait=True: asked.append((u.site, state)))
    monkeypatch.setattr(apply_module, "_volumes_by_name", lambda store, u: {"shared": efs(2)})
    monkeypatch.setattr(transfer, "run", lambda route, task, where: transfer.Pass(files=1, bytes=7, verified=True, execution=task + "/execution/e"))
    return p, store, asked, source, target


def test_a_transfer_stack_that_breaks_its_providers_rules_is_refused_before_it_exists(tmp_path, monkeypatch):
    """The transfer stack is checked like every synthesized cloud stack (rpi.provider_rules):
    a finding stops the copy before the stack is noted or applied, and the source opens again."""
    from reconciler import apply as apply_module
    from reconciler.errors import ReconcileError
    from rpi import provider_rules

    p, store, asked, source, target = _a_move_within_aws(tmp_path, monkeypatch)
    checked = []

    def broken(stack, site):
        checked.append((sorted(stack.get("resource", {})), site))
        return [provider_rules.Finding("aws_iam_role.transfer_role", "global-name", "a name without the site", "test")]

    monkeypatch.setattr(provider_rules, "check", broken)
    engine = _StandInEngine(fail_destroy=False)
    with pytest.raises(ReconcileError, match="the transfer stack transfer-dev breaks its provider's rules: aws_iam_role.transfer_role"):
        apply_module._copy_data(p, store, engine)
    assert checked and "aws_datasync_task" in checked[0][0] and checked[0][1] == "aws-zurich"
    assert engine.calls == [], "nothing was applied"
    assert "transfer-dev" not in store.leftovers(target.state), "no stack was made, none is noted"
    assert asked[-1] == ("aws-frankfurt", "open")


def test_a_copy_that_fails_after_the_freeze_opens_the_source_and_its_transfer_stack_goes_later(tmp_path, monkeypatch):
    """Defect: a failure after the source was frozen (here the transfer stack's destroy, after a
    verified final pass) left a cloud source frozen, and the transfer stack tracked nowhere.
    Now the source opens again whatever failed, the stack is noted before it exists, and a
    later apply (its sweep) destroys it from its state. The DataSync API is moto's elsewhere in
    this file; here the engine is a stand-in (no provider can be downloaded)."""
    from types import SimpleNamespace

    from reconciler import apply as apply_module
    from reconciler.apply import APPLIED, ApplyResult
    from reconciler.errors import ReconcileError

    p, store, asked, source, target = _a_move_within_aws(tmp_path, monkeypatch)
    engine = _StandInEngine(fail_destroy=True)
    with pytest.raises(ReconcileError, match="could not destroy the transfer stack"):
        apply_module._copy_data(p, store, engine)
    assert asked == [("aws-frankfurt", "frozen"), ("aws-frankfurt", "open")], "frozen for the final pass, then opened again"
    assert ("aws-zurich", "open") not in asked, "the target stays closed: the next run copies again"
    noted = store.leftovers(target.state)
    assert sorted(noted) == ["transfer-dev", "unfinished-dev"]  # the stack, and the target's unverified copy
    assert noted["transfer-dev"]["kind"] == "transfer-stack" and noted["transfer-dev"]["state"]["key"] == "transfer-dev.tfstate"
    assert noted["unfinished-dev"] == {**noted["unfinished-dev"], "kind": "unfinished-copy", "from": "aws-frankfurt"}

    engine = _StandInEngine(fail_destroy=False)  # a later apply, the move over (no stack of it is applied here)
    p.copies = ()
    there = SimpleNamespace(selected=SimpleNamespace(unit=target, action="apply"), copies=(), workdir=tmp_path / "work" / "cluster-dev")
    results = {("destroy", source.key): ApplyResult(p, APPLIED), ("apply", target.key): ApplyResult(there, APPLIED)}
    told = apply_module.sweep([p, there], results, engine, store)
    assert engine.calls == [("init", "transfer-dev"), ("plan-destroy", "transfer-dev"), ("apply-destroy", "transfer-dev")]
    assert told == {"dev": ["removed the transfer stack transfer-dev, left by a copy"]}
    assert store.leftovers(target.state) == {}
    synthesized = json.loads((tmp_path / "work" / "transfer-dev" / "cdk.tf.json").read_text())
    assert "resource" not in synthesized and synthesized["terraform"]["backend"]["local"], "backend and provider, no resource"
