"""Explicit registry: platform name -> implementation, and what each platform's code hashes to."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from rpi.platform import Platform

KNOWN = ("local", "gcp", "aws")
_HERE = Path(__file__).parent


def platform(name: str) -> Platform | None:
    """The implementation of a platform, or None when it cannot be synthesized yet.

    Imported on demand: a platform's module imports cdktf, which starts Node.
    """
    if name == "local":
        from rpi.local import LocalPlatform

        return LocalPlatform()
    return None


def implemented(name: str) -> bool:
    return name == "local"


@cache
def code_digest(name: str) -> str:
    """Hash of the code that synthesizes a platform's stacks, without importing it.

    Part of every unit's configuration hash: a change to the platform's code is a change to
    the desired state of every stack on that platform.
    """
    h = hashlib.sha256()
    files = [_HERE / "spec.py", _HERE / "cdk.py", _HERE / "platform.py"]
    package = _HERE / name
    if package.is_dir():
        files += sorted(p for p in package.rglob("*") if p.suffix in (".py", ".json"))
    for path in files:
        h.update(path.relative_to(_HERE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# Resource types that hold data a person would miss: shared filesystems and buckets.
_DATA_TYPES = {
    "gcp": {"google_filestore_instance", "google_storage_bucket"},
    "aws": {"aws_efs_file_system", "aws_s3_bucket"},
}


def holds_data(platform: str, resource_type: str, body: dict) -> bool:
    """Whether a synthesized resource holds data (scratch space does not)."""
    if platform == "local":
        return resource_type == "terraform_data" and (body.get("input") or {}).get("kind") in ("shared", "object")
    if resource_type == "aws_fsx_lustre_file_system":
        return str(body.get("deployment_type", "")).startswith("PERSISTENT")
    return resource_type in _DATA_TYPES.get(platform, set())
