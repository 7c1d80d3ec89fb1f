"""Explicit registry: platform name -> implementation, and what each platform's code hashes to."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import ipaddress
from functools import cache
from pathlib import Path

from rpi.platform import Platform

_HERE = Path(__file__).parent
_IMPLEMENTATIONS = {"local": "LocalPlatform", "gcp": "GcpPlatform", "aws": "AwsPlatform"}


def platform(name: str) -> Platform | None:
    """The implementation of a platform, or None when it cannot be synthesized.

    Imported on demand: a platform's module imports cdktf, which starts Node.
    """
    if not implemented(name):
        return None
    module = importlib.import_module(f"rpi.{name}")
    return getattr(module, _IMPLEMENTATIONS[name])()


def implemented(name: str) -> bool:
    """Whether a platform's package is here, checked without importing it (no Node)."""
    return name in _IMPLEMENTATIONS and (_HERE / name / "__init__.py").is_file()


@cache
def code_digest(name: str) -> str:
    """Hash of the code that synthesizes a platform's stacks, without importing it.

    Part of every unit's configuration hash: a change to the platform's code is a change to
    the desired state of every stack on that platform.
    """
    h = hashlib.sha256()
    files = [_HERE / "spec.py", _HERE / "cdk.py", _HERE / "platform.py"]
    package = _HERE / name
    files += sorted(_HERE.glob(f"{name}_*.py"))  # pure helpers of a platform, kept outside its package (no Node)
    if package.is_dir():
        files += sorted(p for p in package.rglob("*") if p.suffix in (".py", ".json"))
    for path in files:
        h.update(path.relative_to(_HERE).as_posix().encode())
        h.update(path.read_bytes())
    if name == "local":  # the runtime that the local platform's provisioners call
        for path in _local_runtime_files():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _local_runtime_files() -> list[Path]:
    spec = importlib.util.find_spec("vcnode")
    root = Path(spec.origin).parent if spec and spec.origin else _HERE.parent.parent / "node" / "vcnode"
    return [root / "localhost.py", root / "cloudinit.py"]


# Addresses a platform keeps for itself in every subnet, besides the network and broadcast
# addresses: (at the start, from the gateway at .1 on; at the end). AWS keeps .1 to .3 (router,
# DNS, future use), Google Cloud .1 (gateway) and the second-to-last address.
_RESERVED_HOSTS = {"local": (1, 0), "gcp": (1, 1), "aws": (3, 0)}


def reserved_hosts(name: str) -> tuple[int, int]:
    """How many host addresses of a subnet the platform reserves: (at the start, at the end)."""
    return _RESERVED_HOSTS.get(name, (1, 0))


def reserved_addresses(name: str, subnet: ipaddress.IPv4Network) -> set[ipaddress.IPv4Address]:
    """Every address of `subnet` no node may take on the platform, network and broadcast included."""
    start, end = reserved_hosts(name)
    first, last = subnet.network_address, subnet.broadcast_address
    return {first + i for i in range(start + 1)} | {last - i for i in range(end + 1)}


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
