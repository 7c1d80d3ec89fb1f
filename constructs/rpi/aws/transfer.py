"""The transfer stack on AWS (`rpi.copyroute`): a DataSync task per volume, S3 to S3, EFS to
EFS or FSx for Lustre to FSx for Lustre, in the target site's region. DataSync reaches the
buckets through a role of this stack (trusted by datasync.amazonaws.com for this account
only, allowed those two buckets), and the file systems through the subnet and node security
group of each cluster's own stack.

Each task copies what changed (`TRANSFER_MODE=CHANGED`), removes what the source no longer
has, and verifies the whole destination against the source (`POINT_IN_TIME_CONSISTENT`):
the reconciler starts it for the bulk pass and again for the final pass, and the final
execution's verification must pass before the source is destroyed. The cluster's own state on
a shared volume (`/.vcluster`) is excluded, as on every route.
"""

from __future__ import annotations

import json

from rpi import cdk
from rpi.aws import _provider
from rpi.copyroute import CloudVolume, TransferSpec, transfer_name

OPTIONS = {
    "verify_mode": "POINT_IN_TIME_CONSISTENT",
    "transfer_mode": "CHANGED",
    "preserve_deleted_files": "REMOVE",
    "overwrite_mode": "ALWAYS",
    "log_level": "BASIC",
}


def aws(submodule: str):
    return cdk.provider_module("aws", submodule)


def build(stack, spec: TransferSpec) -> None:
    cdk.backend(stack, spec.state)
    _provider(stack, spec.region, spec.account, (("vcluster", spec.cluster), ("purpose", "transfer")))
    arn = lambda v: v.fact("arn") or f"arn:aws:s3:::{v.id}"  # noqa: E731
    sources = sorted({arn(s) for _, s, _ in spec.pairs if s.kind == "bucket"})
    targets = sorted({arn(t) for _, _, t in spec.pairs if t.kind == "bucket"})
    role = _bucket_role(stack, spec, sources, targets) if sources or targets else None
    tasks = {}
    for volume, source, target in spec.pairs:
        locations = [_location(stack, f"{volume}_{side}", v, role) for side, v in (("source", source), ("target", target))]
        task = aws("datasync_task").DatasyncTask(
            stack,
            f"transfer_{volume}",
            name=transfer_name(spec, volume),
            source_location_arn=locations[0].arn,
            destination_location_arn=locations[1].arn,
            options=aws("datasync_task").DatasyncTaskOptions(**OPTIONS),
            excludes=aws("datasync_task").DatasyncTaskExcludes(filter_type="SIMPLE_PATTERN", value="/.vcluster"),
        )
        tasks[volume] = task.arn
    cdk.output(stack, "transfers", tasks, "DataSync task per volume")


def _bucket_role(stack, spec: TransferSpec, sources: list[str], targets: list[str]):
    """DataSync's role: the source buckets read, the destination buckets written (and read, for
    its verification); nothing else."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "datasync.amazonaws.com"},
            "Action": "sts:AssumeRole",
            # the confused-deputy guard AWS documents for DataSync: this account's DataSync in
            # this region only
            "Condition": {
                "StringEquals": {"aws:SourceAccount": spec.account},
                "ArnLike": {"aws:SourceArn": f"arn:aws:datasync:{spec.region}:{spec.account}:*"},
            },
        }],
    }
    role = aws("iam_role").IamRole(
        stack, "transfer_role", name=f"{spec.site}-{spec.cluster}-transfer"[:64], assume_role_policy=json.dumps(trust, sort_keys=True)
    )
    statements = [
        {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
         "Resource": sorted({*sources, *targets})},
    ]
    if sources:
        statements.append({"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectTagging"], "Resource": [f"{a}/*" for a in sources]})
    if targets:
        statements.append({
            "Effect": "Allow",
            "Action": [
                "s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:GetObjectTagging",
                "s3:ListMultipartUploadParts", "s3:PutObject", "s3:PutObjectTagging",
            ],
            "Resource": [f"{a}/*" for a in targets],
        })
    policy = {"Version": "2012-10-17", "Statement": statements}
    aws("iam_role_policy").IamRolePolicy(stack, "transfer_buckets", name="buckets", role=role.name, policy=json.dumps(policy, sort_keys=True))
    return role


def _location(stack, construct: str, volume: CloudVolume, role):
    if volume.service == "s3":
        module = aws("datasync_location_s3")
        return module.DatasyncLocationS3(
            stack, f"location_{construct}", s3_bucket_arn=volume.fact("arn") or f"arn:aws:s3:::{volume.id}", subdirectory="/",
            s3_config=module.DatasyncLocationS3S3Config(bucket_access_role_arn=role.arn),
        )
    groups = [g for g in volume.fact("security_group_arn").split(",") if g]
    if volume.service == "efs":
        module = aws("datasync_location_efs")
        return module.DatasyncLocationEfs(
            stack, f"location_{construct}", efs_file_system_arn=volume.fact("arn"), subdirectory="/",
            ec2_config=module.DatasyncLocationEfsEc2Config(subnet_arn=volume.fact("subnet_arn"), security_group_arns=groups),
        )
    return aws("datasync_location_fsx_lustre_file_system").DatasyncLocationFsxLustreFileSystem(
        stack, f"location_{construct}", fsx_filesystem_arn=volume.fact("arn"), security_group_arns=groups, subdirectory="/",
    )
