"""Where a node finds its identity, its store, its secrets and its mounts, per platform.

- local: /etc/vcluster/platform.json, written by the local runtime (`localhost`) before first
  boot; the store and the secrets are directories the runtime gives the node.
- gcp: instance metadata attributes (`vcluster-*`), Cloud Storage and Secret Manager through
  `gcloud`, with the node's service account.
- aws: instance tags through IMDSv2 (`vcluster-*`), S3 and Secrets Manager through `aws`, with
  the instance profile; EFS mounted over NFS 4.1, FSx for Lustre with the Lustre client.

Cloud calls go through the cloud's own CLI, never hand-signed requests.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

BINDING = Path("/etc/vcluster/platform.json")


class DirectoryStore:
    """A store that is a directory (the local platform's channel and secret store)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a store key: {key!r}")
        return self.root.joinpath(*parts)

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes, mode: int = 0o644) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def create(self, key: str, data: bytes, mode: int = 0o600) -> bool:
        """Write only if absent; False if another writer was first."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class CliStore:
    """An object store through the cloud's CLI: `gcloud storage` or `aws s3`."""

    def __init__(self, url: str, cli: str):
        self.url, self.cli = url.rstrip("/"), cli

    def _run(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
        command = ["gcloud", "storage", *args] if self.cli == "gcloud" else ["aws", "s3", *args]
        return subprocess.run(command, input=data, capture_output=True, timeout=120)

    def read(self, key: str) -> bytes | None:
        done = self._run("cat" if self.cli == "gcloud" else "cp", f"{self.url}/{key}", *([] if self.cli == "gcloud" else ["-"]))
        return done.stdout if done.returncode == 0 else None

    def write(self, key: str, data: bytes, mode: int = 0o644) -> None:
        done = self._run("cp", "-", f"{self.url}/{key}", data=data)
        if done.returncode:
            raise RuntimeError(f"cannot write {self.url}/{key}: {done.stderr.decode(errors='replace').strip()}")

    def delete(self, key: str) -> None:
        self._run("rm", f"{self.url}/{key}")


class Local:
    name = "local"
    init = "direct"  # no init system inside a node's namespaces: daemons are started directly
    nologin = Path("/etc/vcluster/nologin")  # what the local runtime's `enter --user` honours, as pam_nologin does /etc/nologin

    def __init__(self, binding: dict):
        self.binding = binding
        self.hostname, self.pool = binding["hostname"], binding["pool"]
        self.store = DirectoryStore(binding["store"])
        self._secrets = DirectoryStore(binding["secrets"])

    def secret(self, name: str) -> bytes | None:
        return self._secrets.read(name)

    def create_secret(self, name: str, value: bytes) -> bool:
        return self._secrets.create(name, value, 0o600)

    def mounts(self) -> list[tuple[str, str, str]]:
        """(source, mount point, how) for each volume of the cluster."""
        return [(source, target, "bind") for target, source in sorted(self.binding.get("mounts", {}).items())]

    def protect_identity(self) -> None:
        """The local secret store is a root-only directory (0700): nothing to fence off."""

    def package_source(self, manager: str) -> dict | None:
        """The local runtime's nodes share the host's packages: no registry of their own."""
        return None


class Gcp:
    name = "gcp"
    init = "systemd"
    nologin = Path("/etc/nologin")  # pam_nologin: users are refused while it exists, root is not
    _META = "http://metadata.google.internal/computeMetadata/v1/instance/"

    def __init__(self):
        attrs = json.loads(self._meta("attributes/?recursive=true"))
        self.hostname = self._meta("name")
        self.pool, self.project = attrs["vcluster-pool"], attrs["vcluster-project"]
        self._secret_prefix = attrs["vcluster-secret-prefix"]
        self.store = CliStore(attrs["vcluster-channel"], "gcloud")
        self._mounts = json.loads(attrs.get("vcluster-mounts", "{}"))
        self._packages = json.loads(attrs.get("vcluster-packages", "{}"))

    def package_source(self, manager: str) -> dict | None:
        """The site's Artifact Registry repository for this image's package manager, reached
        with the node's own identity: basic authentication with an access token of the
        instance's service account (the user name `oauth2accesstoken`)."""
        registry = self._packages.get({"dnf": "rpm", "apt": "deb"}.get(manager, ""))
        if not registry:
            return None
        token = json.loads(self._meta("service-accounts/default/token"))["access_token"]
        return {"url": registry["url"], "suite": registry["name"], "components": "main",
                "login": "oauth2accesstoken", "password": token}

    def _meta(self, path: str) -> str:
        request = urllib.request.Request(self._META + path, headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.read().decode()

    def secret(self, name: str) -> bytes | None:
        done = subprocess.run(
            ["gcloud", "secrets", "versions", "access", "latest", f"--secret={self._secret_prefix}{name}",
             f"--project={self.project}", "--out-file=/dev/stdout"], capture_output=True, timeout=60)
        return done.stdout if done.returncode == 0 and done.stdout else None

    def create_secret(self, name: str, value: bytes) -> bool:
        if self.secret(name) is not None:
            return False
        done = subprocess.run(
            ["gcloud", "secrets", "versions", "add", f"{self._secret_prefix}{name}", f"--project={self.project}",
             "--data-file=-"], input=value, capture_output=True, timeout=60)
        return done.returncode == 0

    def mounts(self) -> list[tuple[str, str, str]]:
        return [(source, target, "nfs") for target, source in sorted(self._mounts.items())]

    def protect_identity(self) -> None:
        _only_root_reaches("169.254.169.254")


class Aws:
    name = "aws"
    init = "systemd"
    nologin = Path("/etc/nologin")  # pam_nologin: users are refused while it exists, root is not
    _IMDS = "http://169.254.169.254/latest/"

    def __init__(self):
        request = urllib.request.Request(self._IMDS + "api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            self._token = answer.read().decode()
        self.hostname = self._tag("vcluster-hostname")
        self.pool = self._tag("vcluster-pool")
        self._secret_prefix = self._tag("vcluster-secret-prefix")
        self.store = CliStore(self._tag("vcluster-channel"), "aws")
        self._mounts = json.loads(self._tag("vcluster-mounts") or "{}")
        self._packages = self._tag("vcluster-packages", missing_ok=True)

    def _tag(self, name: str, missing_ok: bool = False) -> str:
        request = urllib.request.Request(f"{self._IMDS}meta-data/tags/instance/{name}",
                                         headers={"X-aws-ec2-metadata-token": self._token})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.read().decode()
        except urllib.error.HTTPError as exc:
            if missing_ok and exc.code == 404:
                return ""
            raise

    def package_source(self, manager: str) -> dict | None:
        """The site's package bucket (`rpm/` or `deb/`, a repository as createrepo or
        dpkg-scanpackages left it), synced here with the node's own role through the aws CLI
        (dnf and apt cannot sign S3 requests), then used as a local repository. None where the
        bucket holds no repository for this package manager."""
        part = {"dnf": "rpm", "apt": "deb"}.get(manager, "")
        if not self._packages or not part:
            return None
        local = PACKAGE_CACHE / part
        local.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["aws", "s3", "sync", "--only-show-errors", "--delete", f"{self._packages}/{part}/", str(local)],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise OSError(f"could not sync the site's packages from {self._packages}/{part}/: {done.stderr.strip()[-300:]}")
        index = local / ("repodata/repomd.xml" if part == "rpm" else "Packages")
        if not index.exists():
            return None
        return {"url": f"file://{local}" if part == "rpm" else f"file:{local}", "suite": "./", "components": ""}

    def secret(self, name: str) -> bytes | None:
        done = subprocess.run(["aws", "secretsmanager", "get-secret-value", "--secret-id", f"{self._secret_prefix}{name}",
                               "--query", "SecretBinary", "--output", "text"], capture_output=True, timeout=60)
        if done.returncode or not done.stdout.strip() or done.stdout.strip() == b"None":
            return None
        return base64.b64decode(done.stdout.strip())

    def create_secret(self, name: str, value: bytes) -> bool:
        if self.secret(name) is not None:
            return False
        with tempfile.NamedTemporaryFile(dir="/run", prefix="vcluster-") as blob:  # root-only, never argv
            blob.write(value)
            blob.flush()
            done = subprocess.run(["aws", "secretsmanager", "put-secret-value", "--secret-id",
                                   f"{self._secret_prefix}{name}", "--secret-binary", f"fileb://{blob.name}"],
                                  capture_output=True, timeout=60)
        return done.returncode == 0

    def mounts(self) -> list[tuple[str, str, str]]:
        return aws_mounts(self._mounts)

    def protect_identity(self) -> None:
        _only_root_reaches("169.254.169.254")


def aws_mounts(binding: dict[str, str]) -> list[tuple[str, str, str]]:
    """(source, mount point, how) from the `vcluster-mounts` tag: EFS as NFS 4.1 (`DNS:/`), FSx
    for Lustre by its LNet address (`DNS@tcp:/MOUNTNAME`)."""
    return [(source, target, "lustre" if "@tcp:/" in source else "nfs4") for target, source in sorted(binding.items())]


def _only_root_reaches(address: str) -> None:
    """Only root may talk to the metadata service that hands out the node's identity: otherwise
    any cluster user could fetch the munge key and forge credentials (iptables owner match)."""
    rule = ["OUTPUT", "-d", address, "-m", "owner", "!", "--uid-owner", "0", "-j", "REJECT"]
    if subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode:
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)


PACKAGE_CACHE = Path("/var/lib/vcluster/packages")  # the site's package bucket, synced (aws)


def detect():
    """The platform this node runs on."""
    if BINDING.exists():
        return Local(json.loads(BINDING.read_text()))
    try:
        return Gcp()
    except OSError:
        return Aws()
