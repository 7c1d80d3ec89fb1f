"""Real backend protocols on 127.0.0.1: moto's S3 server and the GCS emulator, each a process
of its own on a free port, stopped by process id.

moto serves S3 with the conditional writes that Terraform's `use_lockfile` needs (a held lock
answers 412); gcp-storage-emulator serves GCS's JSON API, which the gcs backend reaches through
`storage_custom_endpoint` and google-cloud-storage through its `api_endpoint`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
START_LIMIT_S = 30

# What each backend's clients (the engine's and reconcile's) need to reach the emulators.
S3_ENV = {"AWS_ACCESS_KEY_ID": "emulated", "AWS_SECRET_ACCESS_KEY": "emulated", "AWS_DEFAULT_REGION": "us-east-1"}
GCS_ENV = {"GOOGLE_OAUTH_ACCESS_TOKEN": "emulated"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    kind = ""
    env: dict[str, str] = {}

    def __init__(self, log: Path, port: int | None = None, **settings: str):
        self.port = port or free_port()
        self.log = log
        self.settings = settings  # the emulator's own environment, e.g. moto's INITIAL_NO_AUTH_ACTION_COUNT
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "Emulator":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.settings}
            )
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            assert self.process.poll() is None, f"{self.kind} emulator exited: {self.log.read_text()[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, f"{self.kind} emulator did not listen on {self.port}"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def client_env(self):
        """Set this backend's credentials for a client made in this process."""
        return _Environ(self.env)


class _Environ:
    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class S3(Emulator):
    kind, env = "s3", S3_ENV

    def argv(self) -> list[str]:
        return [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="emulated", aws_secret_access_key="emulated",
        )

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def enable_versioning(self, bucket: str) -> None:
        self.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def objects(self, bucket: str) -> dict[str, bytes]:
        s3 = self.client()
        found = s3.list_objects_v2(Bucket=bucket).get("Contents", ())
        return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self.client().delete_object(Bucket=bucket, Key=key)

    def buckets(self) -> set[str]:
        return {b["Name"] for b in self.client().list_buckets().get("Buckets", ())}


class GCS(Emulator):
    kind, env = "gcs", GCS_ENV

    def argv(self) -> list[str]:
        return [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory"]

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="emulated", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint})

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def objects(self, bucket: str) -> dict[str, bytes]:
        return {b.name: b.download_as_bytes() for b in self.client().list_blobs(bucket)}

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().bucket(bucket).blob(key).upload_from_string(data)

    def delete(self, bucket: str, key: str) -> None:
        self.client().bucket(bucket).blob(key).delete()

    def buckets(self) -> set[str]:
        return {b.name for b in self.client().list_buckets()}


KINDS = {"s3": S3, "gcs": GCS}


def state_block(kind: str, bucket: str, endpoint: str, prefix: str) -> str:
    """A site file's `state:` block for this emulator."""
    if kind == "s3":
        return f"state:\n  backend: s3\n  bucket: {bucket}\n  key_prefix: {prefix}\n  region: us-east-1\n  endpoint: {endpoint}\n"
    return f"state:\n  backend: gcs\n  bucket: {bucket}\n  prefix: {prefix}\n  endpoint: {endpoint}\n"


def object_store_block(kind: str, endpoint: str) -> str:
    """A site's `services.object_store:`, indented to go right below `services:`."""
    lines = ["  object_store:", f"    backend: {kind}", f"    endpoint: {endpoint}"]
    if kind == "s3":
        lines.append("    region: us-east-1")
    return "\n".join(lines) + "\n"
