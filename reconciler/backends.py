"""ADAPTER over the places where a stack's state lives: a directory on this machine, an S3
bucket (AWS, or an S3-compatible store such as Ceph RGW or MinIO at an endpoint of its own) or
a GCS bucket. Each is a flat namespace of objects, read and written with the ecosystem's own
clients (boto3, google-cloud-storage) and their own retry settings.

The engine reads and writes the state itself, through its backend block; this module reads
that state and keeps the live records, the retained-volume records and the lock information
beside it, in the same backend.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.errors import ReconcileError
from reconciler.settings import env_seconds
from rpi.spec import StateLocation

FILE_MODE, DIRECTORY_MODE = 0o600, 0o700
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5, 20
RETRY_DEADLINE_S = 10.0  # GCS: the library's own retry, bounded (RECONCILE_BACKEND_RETRY_S)
S3_ATTEMPTS = 4


class BackendError(ReconcileError):
    """A state backend refused or did not answer: nothing was changed."""


class NoCredentials(Exception):
    """No credentials for this backend here: its live state is UNKNOWN, never an error."""


class Blobs(Protocol):
    """One bucket (or one local directory): objects by key."""

    def url(self, key: str) -> str: ...

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def names(self, prefix: str, pattern: str) -> list[str]:
        """Keys below `prefix` whose rest matches `pattern` (`*` never crosses a `/`), sorted."""
        ...

    def versions(self, key: str) -> list["Version"]:
        """The object's earlier versions (bucket versioning), newest first, the current one
        excluded; [] where the store keeps none."""
        ...

    def get_version(self, key: str, version: str) -> bytes: ...

    def restore_version(self, key: str, version: str) -> None:
        """Make an earlier version the current one (a copy: the damaged one stays a version)."""
        ...


@dataclass(frozen=True)
class Version:
    id: str  # S3's VersionId, GCS's generation
    written: str  # when, as the store says it
    size: int


def _matches(rest: str, pattern: str) -> bool:
    return rest.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rest, pattern)


@dataclass(frozen=True)
class Place:
    """Where one stack's objects are: the store and their keys in it."""

    blobs: Blobs
    directory: str  # the site's prefix, "" or ending in "/"
    state: str  # the state object the engine writes
    record: str  # the live record beside it
    lock: str  # the engine's lock information while it holds the state


RECORD_SUFFIX = ".reconcile.json"


def keys(state: StateLocation) -> tuple[str, str, str, str]:
    """(directory, state, record, lock) keys of a stack's objects, as each backend names them.

    local: the state root's directory holds `STACK.tfstate` (lock `.STACK.tfstate.lock.info`);
    s3: `PREFIX/STACK.tfstate` (lock `….tflock`, `use_lockfile`); gcs: the prefix `PREFIX/STACK`
    holds `default.tfstate` and `default.tflock` (the default workspace)."""
    if state.backend == "local":
        stem = state.key.removesuffix(".tfstate")
        return "", state.key, stem + RECORD_SUFFIX, f".{state.key}.lock.info"
    directory = state.key.rsplit("/", 1)[0] + "/" if "/" in state.key else ""
    if state.backend == "s3":
        stem = state.key.removesuffix(".tfstate")
        return directory, state.key, stem + RECORD_SUFFIX, state.key + ".tflock"
    return directory, f"{state.key}/default.tfstate", state.key + RECORD_SUFFIX, f"{state.key}/default.tflock"


def stack_of(state: StateLocation, state_key: str) -> str:
    """The stack whose state object `state_key` is, in `state`'s directory."""
    directory = keys(state)[0]
    rest = state_key[len(directory):]
    return rest.removesuffix("/default.tfstate") if state.backend == "gcs" else rest.removesuffix(".tfstate")


def state_pattern(state: StateLocation) -> str:
    return "*/default.tfstate" if state.backend == "gcs" else "*.tfstate"


# ------------------------------------------------------------------ local directory


class LocalBlobs:
    def __init__(self, root: Path):
        self.root = root

    def url(self, key: str) -> str:
        return str(self.root / key)

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"{self.root / key} cannot be read ({exc.strerror})") from None

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self.root / key, data)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def versions(self, key: str) -> list[Version]:
        return []  # a local directory keeps none: the engine's own backup file stands in

    def get_version(self, key: str, version: str) -> bytes:
        raise BackendError(f"{self.root / key}: a local directory keeps no versions")

    restore_version = get_version

    def names(self, prefix: str, pattern: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(prefix + p.relative_to(base).as_posix() for p in base.glob(pattern) if p.is_file())


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file that is never seen half-written: a private temporary file, flushed to disk,
    then renamed over the old one, then the directory flushed."""
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ------------------------------------------------------------------ S3 and S3-compatible


_session_lock = threading.Lock()
_loaders: list = []


def _boto_session():
    """A new boto3 session (credentials are resolved afresh: a run never inherits another's)
    on one botocore loader per process, which keeps botocore's service model once loaded."""
    import boto3
    import botocore.loaders
    import botocore.session

    with _session_lock:
        if not _loaders:
            _loaders.append(botocore.loaders.create_loader())
        core = botocore.session.get_session()
        core.register_component("data_loader", _loaders[0])
        return boto3.session.Session(botocore_session=core)


def _first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


def aws_credentials_may_exist(environ=None) -> bool:
    """Whether any source of boto's credential chain can be here, without importing boto or
    asking the instance metadata service of a machine that is no EC2 instance (a laptop, a
    runner elsewhere: a one-second wait, and traffic to a link-local address)."""
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME", "~")).expanduser()
    return bool(
        any(env.get(n) for n in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"))
        or Path(env.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws/credentials")).is_file()
        or Path(env.get("AWS_CONFIG_FILE", home / ".aws/config")).is_file()
        or _first_line("/sys/class/dmi/id/sys_vendor") == "Amazon EC2"
        or _first_line("/sys/hypervisor/uuid").startswith("ec2")
        or _first_line("/sys/class/dmi/id/board_asset_tag").startswith("i-")
    )


def gcp_credentials_may_exist(environ=None) -> bool:
    """Whether any source of Application Default Credentials can be here, without importing
    google-auth or asking the metadata server of a machine that is not on Google Cloud."""
    env = os.environ if environ is None else environ
    config = Path(env.get("CLOUDSDK_CONFIG") or Path(env.get("HOME", "~")).expanduser() / ".config/gcloud")
    return bool(
        any(env.get(n) for n in ("GOOGLE_OAUTH_ACCESS_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_IP"))
        or (config / "application_default_credentials.json").is_file()
        or _first_line("/sys/class/dmi/id/product_name") in ("Google", "Google Compute Engine")
    )


class S3Blobs:
    def __init__(self, bucket: str, region: str, endpoint: str):
        if not aws_credentials_may_exist():
            raise NoCredentials(f"s3://{bucket}")
        from botocore.config import Config

        session = _boto_session()
        with _session_lock:  # a boto3 session is not thread-safe: its clients are made one at a time
            credentials = session.get_credentials()
        if credentials is None:  # the standard chain: env, profiles, SSO, container, IMDS
            raise NoCredentials(f"s3://{bucket}")
        config = Config(
            retries={"mode": "standard", "max_attempts": S3_ATTEMPTS},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            s3={"addressing_style": "path"} if endpoint else None,
        )
        self.bucket, self.endpoint = bucket, endpoint
        with _session_lock:
            self.client = session.client("s3", region_name=region or None, endpoint_url=endpoint or None, config=config)

    def url(self, key: str) -> str:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{key}{at}"

    def _fail(self, key: str, exc: Exception) -> BackendError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            why = f"{error.get('Code', 'error')} (HTTP {status}): {error.get('Message', '')}".rstrip(": ")
        else:
            why = f"no answer ({exc})"
        return BackendError(f"{self.url(key)}: {why}")

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(key, exc) from None
        except BotoCoreError as exc:
            raise self._fail(key, exc) from None

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json")
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(key, exc) from None

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(key, exc) from None

    def versions(self, key: str) -> list[Version]:
        from botocore.exceptions import BotoCoreError, ClientError

        found = []
        try:
            for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key):
                found += [v for v in page.get("Versions", ()) if v["Key"] == key]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(key, exc) from None
        found = [v for v in found if not v.get("IsLatest") and v.get("VersionId") not in (None, "null")]
        found.sort(key=lambda v: v["LastModified"], reverse=True)
        return [Version(v["VersionId"], v["LastModified"].isoformat(), int(v.get("Size", 0))) for v in found]

    def get_version(self, key: str, version: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(key, exc) from None

    def restore_version(self, key: str, version: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key, "VersionId": version})
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(key, exc) from None

    def names(self, prefix: str, pattern: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                found += [o["Key"] for o in page.get("Contents", ()) if _matches(o["Key"][len(prefix):], pattern)]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(prefix, exc) from None
        return sorted(found)


# ------------------------------------------------------------------ Google Cloud Storage


class GcsBlobs:
    def __init__(self, bucket: str, endpoint: str):
        if not gcp_credentials_may_exist():
            raise NoCredentials(f"gs://{bucket}")
        import google.auth
        from google.api_core.retry import Retry
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        token = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")  # what Terraform's gcs backend takes too
        if token:
            from google.oauth2.credentials import Credentials

            credentials = Credentials(token)
        else:
            try:
                credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
            except google.auth.exceptions.DefaultCredentialsError:
                raise NoCredentials(f"gs://{bucket}") from None
        options = {"api_endpoint": endpoint.rstrip("/").removesuffix("/storage/v1")} if endpoint else None
        self.bucket_name, self.endpoint = bucket, endpoint
        self.client = storage.Client(project="-", credentials=credentials, client_options=options)
        self.bucket = self.client.bucket(bucket)
        self.retry: Retry = DEFAULT_RETRY.with_timeout(env_seconds("RECONCILE_BACKEND_RETRY_S", RETRY_DEADLINE_S))
        self.timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)

    def url(self, key: str) -> str:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"gs://{self.bucket_name}/{key}{at}"

    def _fail(self, key: str, exc: Exception) -> BackendError:
        code = getattr(exc, "code", None)
        why = f"HTTP {code}: {getattr(exc, 'message', exc)}" if code else f"no answer ({exc})"
        return BackendError(f"{self.url(key)}: {why}")

    def _errors(self):
        import google.api_core.exceptions as api
        import google.auth.exceptions
        import requests

        return api.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException

    def get(self, key: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            return self.bucket.blob(key).download_as_bytes(retry=self.retry, timeout=self.timeout)
        except NotFound:
            return None
        except self._errors() as exc:
            raise self._fail(key, exc) from None

    def put(self, key: str, data: bytes) -> None:
        try:  # overwriting with the same bytes is idempotent: retried like a read
            self.bucket.blob(key).upload_from_string(data, content_type="application/json", retry=self.retry, timeout=self.timeout)
        except self._errors() as exc:
            raise self._fail(key, exc) from None

    def delete(self, key: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self.bucket.blob(key).delete(retry=self.retry, timeout=self.timeout)
        except NotFound:
            pass
        except self._errors() as exc:
            raise self._fail(key, exc) from None

    def versions(self, key: str) -> list[Version]:
        try:
            found = [b for b in self.client.list_blobs(self.bucket_name, prefix=key, versions=True, retry=self.retry, timeout=self.timeout)
                     if b.name == key]
        except self._errors() as exc:
            raise self._fail(key, exc) from None
        found.sort(key=lambda b: int(b.generation or 0), reverse=True)
        return [Version(str(b.generation), b.updated.isoformat() if b.updated else "", int(b.size or 0)) for b in found[1:]]

    def get_version(self, key: str, version: str) -> bytes:
        try:
            return self.bucket.blob(key, generation=int(version)).download_as_bytes(retry=self.retry, timeout=self.timeout)
        except self._errors() as exc:
            raise self._fail(key, exc) from None

    def restore_version(self, key: str, version: str) -> None:
        try:
            source = self.bucket.blob(key, generation=int(version))
            self.bucket.copy_blob(source, self.bucket, key, source_generation=int(version), retry=self.retry, timeout=self.timeout)
        except self._errors() as exc:
            raise self._fail(key, exc) from None

    def names(self, prefix: str, pattern: str) -> list[str]:
        try:
            found = [b.name for b in self.client.list_blobs(self.bucket_name, prefix=prefix, retry=self.retry, timeout=self.timeout)]
        except self._errors() as exc:
            raise self._fail(prefix, exc) from None
        return sorted(n for n in found if _matches(n[len(prefix):], pattern))


@dataclass(frozen=True)
class UnitRef:
    """A unit as the live store reads it (resolve.Unit without its spec)."""

    kind: str
    name: str
    site: str
    platform: str
    stack: str
    key: str
    title: str
    state: StateLocation
    runtime: str
    config_hash: str


# ------------------------------------------------------------------ one client per bucket

_CLIENTS = {"s3": ("boto3", "botocore.config"), "gcs": ("google.cloud.storage", "google.oauth2.credentials")}


def clients_named(root: Path) -> set[str]:
    """The remote backends that the site files name: a hint read from their text, before they
    are validated (what to import ahead of time; a wrong hint costs only time)."""
    if os.environ.get("RECONCILE_NO_PREFETCH"):
        return set()
    wanted = set()
    for path in (root / "sites").glob("*.y*ml"):
        try:
            # a hint only: no link is followed (it could be /dev/zero), and no more than a
            # definition may hold is read
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as handle:
                text = handle.read(1 << 20).decode(errors="replace")
        except OSError:
            continue
        wanted |= {kind for kind in _CLIENTS if f"backend: {kind}" in text}
    # Without credentials a store is never made: nothing to import, and no helper to fork.
    reachable = {"s3": aws_credentials_may_exist, "gcs": gcp_credentials_may_exist}
    return {kind for kind in wanted if reachable[kind]()}


def import_clients(kinds: set[str]) -> None:
    """Import the clients, and have botocore load its S3 model (a client made for nothing)."""
    import importlib

    for kind in sorted(kinds):
        for module in _CLIENTS[kind]:
            importlib.import_module(module)
    if "s3" in kinds:
        session = _boto_session()
        with _session_lock:
            session.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")


class Backends:
    """The stores of one run: made once per bucket and endpoint, shared by every thread."""

    def __init__(self, state_root: Path):
        self.state_root = state_root
        self._lock = threading.Lock()
        self._locks: dict[tuple, threading.Lock] = {}
        self._made: dict[tuple, Blobs | NoCredentials] = {}

    def blobs(self, state: StateLocation) -> Blobs:
        """The store of `state`; raises NoCredentials when it cannot be reached from here."""
        if state.backend == "local":
            return LocalBlobs(self.state_root / state.bucket)
        key = (state.backend, state.bucket, state.region, state.endpoint)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one client per bucket, made once; the S3 and GCS clients are made at once
            made = self._made.get(key)
            if made is None:
                try:
                    made = S3Blobs(state.bucket, state.region, state.endpoint) if state.backend == "s3" else GcsBlobs(state.bucket, state.endpoint)
                except NoCredentials as exc:
                    made = exc
                self._made[key] = made
        if isinstance(made, NoCredentials):
            raise made
        return made

    def place(self, state: StateLocation) -> Place:
        return Place(self.blobs(state), *keys(state))
