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
