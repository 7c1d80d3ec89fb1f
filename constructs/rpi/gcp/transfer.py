"""The transfer stack on Google Cloud (`rpi.copyroute`): a Storage Transfer Service job per
bucket, GCS to GCS, run by Google's service agent of the target's project, which is granted
what the job needs on the two buckets and nothing else: the source is read, the sink written.

The job has no schedule: the reconciler runs it (`transferJobs.run`) for the bulk pass and
again for the final pass, which sends only what changed. Objects that exist only in the sink
are deleted, so that the sink ends as the source is; the manifests compared afterwards are the
reconciler's own (rclone's SHA-256 of both sides' bytes), not the service's.
"""

from __future__ import annotations

from rpi import cdk
from rpi.copyroute import TransferSpec, transfer_name
from rpi.gcp import _provider

SOURCE_ROLES = ("roles/storage.objectViewer", "roles/storage.legacyBucketReader")
SINK_ROLES = ("roles/storage.legacyBucketWriter", "roles/storage.objectViewer")


def google(submodule: str):
    return cdk.provider_module("google", submodule)


def build(stack, spec: TransferSpec) -> None:
    cdk.backend(stack, spec.state)
    _provider(stack, spec.account, spec.region, (("vcluster", spec.cluster), ("purpose", "transfer")))
    agent = google("data_google_storage_transfer_project_service_account").DataGoogleStorageTransferProjectServiceAccount(
        stack, "transfer_agent", project=spec.account
    )
    member = f"serviceAccount:{agent.email}"
    jobs = {}
    for volume, source, target in spec.pairs:
        grants = []
        for side, bucket, roles in (("source", source.id, SOURCE_ROLES), ("sink", target.id, SINK_ROLES)):
            for role in roles:
                grants.append(google("storage_bucket_iam_member").StorageBucketIamMember(
                    stack, f"transfer_{volume}_{side}_{role.rsplit('.', 1)[-1].lower()}", bucket=bucket, role=role, member=member,
                ))
        job_module = google("storage_transfer_job")
        job = job_module.StorageTransferJob(
            stack,
            f"transfer_{volume}",
            project=spec.account,
            description=transfer_name(spec, volume),
            status="ENABLED",
            transfer_spec=job_module.StorageTransferJobTransferSpec(
                gcs_data_source=job_module.StorageTransferJobTransferSpecGcsDataSource(bucket_name=source.id),
                gcs_data_sink=job_module.StorageTransferJobTransferSpecGcsDataSink(bucket_name=target.id),
                transfer_options=job_module.StorageTransferJobTransferSpecTransferOptions(
                    delete_objects_unique_in_sink=True, overwrite_when="DIFFERENT",
                ),
                object_conditions=job_module.StorageTransferJobTransferSpecObjectConditions(exclude_prefixes=[".vcluster/"]),
            ),
            depends_on=grants,
        )
        jobs[volume] = job.name
    cdk.output(stack, "transfers", jobs, "Storage Transfer Service job per volume")
