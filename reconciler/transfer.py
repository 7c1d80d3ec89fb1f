"""ADAPTER over the clouds' transfer services: `storage.on_move: copy` within one cloud runs
Google's Storage Transfer Service (GCS to GCS) or AWS DataSync (S3, EFS, FSx for Lustre).

The order, inside the copy phase of a move (apply.py), for the volumes whose route is a
transfer service (`rpi.copyroute`):
  1. the transfer stack (`transfer-<cluster>` in the target site's state) is applied: the
     jobs or tasks, and the grants they need, nothing that holds data;
  2. a bulk pass: each job or task runs once, and is waited for;
  3. a final pass: each runs again, sending only what changed;
  4. verification: buckets by the reconciler's own SHA-256 manifests of both sides (rclone,
     as on every other route); file systems by DataSync's own verification of the final
     execution (POINT_IN_TIME_CONSISTENT), which must be SUCCESS;
  5. the transfer stack is destroyed, and only then may the source be.
A failure at any step raises CopyError: the source stays, the move stays unfinished, and the
next run applies the same transfer stack again (its state is in the target's backend) and
copies again; both services send only what differs.

The calls go through the clouds' SDKs with the credentials of the environment (in the apply
workflow, the OIDC identities): boto3 for DataSync, google-auth's authorized session for the
Storage Transfer API (`transferJobs.run`, then the operation it returns).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from reconciler import datacopy, interrupt
from reconciler.datacopy import CopyError

TIMEOUT_ENV, POLL_ENV = "RECONCILE_TRANSFER_TIMEOUT_S", "RECONCILE_TRANSFER_POLL_S"
DEFAULT_TIMEOUT_S, DEFAULT_POLL_S = 6 * 3600, 15.0
STORAGE_TRANSFER_API = "https://storagetransfer.googleapis.com/v1/"


@dataclass(frozen=True)
class Pass:
    """What one run of a job or task transferred, and how it ended."""

    files: int
    bytes: int
    verified: bool  # the service verified the destination against the source (DataSync)
    execution: str = ""  # the service's name for this run


def _bounds() -> tuple[float, float]:
    return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S), float(os.environ.get(POLL_ENV) or DEFAULT_POLL_S)


def run_datasync(task_arn: str, region: str, client=None) -> Pass:
    """Start a DataSync task and wait for its execution; cancelled on an interrupt or timeout."""
    if client is None:
        import boto3

        client = boto3.client("datasync", region_name=region)
    timeout, poll = _bounds()
    try:
        execution = client.start_task_execution(TaskArn=task_arn)["TaskExecutionArn"]
    except Exception as exc:  # botocore's errors: no credentials, access denied, a task already running
        raise CopyError(f"could not start DataSync task {task_arn}: {exc}") from None
    deadline = time.monotonic() + timeout
    while True:
        described = client.describe_task_execution(TaskExecutionArn=execution)
        status = described.get("Status", "")
        if status == "SUCCESS":
            result = described.get("Result") or {}
            verified = result.get("VerifyStatus", "SUCCESS") == "SUCCESS"
            return Pass(int(described.get("FilesTransferred") or 0), int(described.get("BytesTransferred") or 0), verified, execution)
        if status == "ERROR":
            result = described.get("Result") or {}
            detail = result.get("ErrorDetail") or result.get("VerifyStatus") or "no detail"
            raise CopyError(f"DataSync execution {execution} failed: {detail}")
        if interrupt.requested() or time.monotonic() > deadline:
            try:
                client.cancel_task_execution(TaskExecutionArn=execution)
            except Exception:  # noqa: BLE001 - it may have ended meanwhile; the error below says what happened
                pass
            interrupt.checkpoint("during a DataSync transfer: it was cancelled, the source stays")
            raise CopyError(f"DataSync execution {execution} of {task_arn} did not finish in {timeout:.0f} s ({TIMEOUT_ENV}): cancelled")
        time.sleep(poll)


def run_storage_transfer(job_name: str, project: str, session=None) -> Pass:
    """Run a Storage Transfer Service job once and wait for the operation it starts."""
    if session is None:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        try:
            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        except Exception as exc:  # google.auth's DefaultCredentialsError: no identity here
            raise CopyError(f"no Google credentials to run transfer job {job_name}: {exc}") from None
        session = AuthorizedSession(credentials)
    timeout, poll = _bounds()
    started = session.post(f"{STORAGE_TRANSFER_API}{job_name}:run", json={"projectId": project}, timeout=60)
    if started.status_code != 200:
        raise CopyError(f"could not run transfer job {job_name}: HTTP {started.status_code} {started.text[:300]}")
    operation = started.json().get("name", "")
    deadline = time.monotonic() + timeout
    while True:
        got = session.get(f"{STORAGE_TRANSFER_API}{operation}", timeout=60)
        if got.status_code != 200:
            raise CopyError(f"could not read transfer operation {operation}: HTTP {got.status_code} {got.text[:300]}")
        body = got.json()
        if body.get("done"):
            if body.get("error"):
                raise CopyError(f"transfer operation {operation} failed: {body['error'].get('message', body['error'])}")
            counters = (body.get("metadata") or {}).get("counters") or {}
            return Pass(int(counters.get("objectsCopiedToSink") or 0), int(counters.get("bytesCopiedToSink") or 0), False, operation)
        if interrupt.requested() or time.monotonic() > deadline:
            session.post(f"{STORAGE_TRANSFER_API}{operation}:cancel", json={}, timeout=60)
            interrupt.checkpoint("during a Storage Transfer Service job: it was cancelled, the source stays")
            raise CopyError(f"transfer operation {operation} did not finish in {timeout:.0f} s ({TIMEOUT_ENV}): cancelled")
        time.sleep(poll)


def run(route: str, transfer_id: str, where: str) -> Pass:
    """One pass of a transfer: `where` is the AWS region or the Google project."""
    if route == "datasync":
        return run_datasync(transfer_id, where)
    return run_storage_transfer(transfer_id, where)


def verify_buckets(source: datacopy.Bucket, target: datacopy.Bucket) -> int:
    """The reconciler's own check of a bucket copied by a service: the objects' SHA-256 on both
    sides, from their bytes. Returns the number of objects; raises CopyError on a difference."""
    datacopy.before_verify(source, target)
    theirs, ours = datacopy.object_manifest(source), datacopy.object_manifest(target)
    if theirs != ours:
        raise CopyError(f"the copy of {source} into {target} differs from its source: {datacopy.difference(theirs, ours)}; the source stays")
    return len(theirs)
