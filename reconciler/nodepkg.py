"""The node package (`node/vcnode`) as the zip application that first-boot data carries.

The reconciler ships these bytes to nodes and never imports the package. The archive is built
deterministically (sorted names, fixed timestamps and modes), so the same source gives the same
first-boot data on every machine. Only what runs on a node goes in: the local runtime's host
side (`localhost`, `cloudinit`) stays out.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import zipfile
from pathlib import Path

ON_NODE = ("__init__.py", "__main__.py", "bootstrap.py", "channel.py", "platforms.py")


def source_dir() -> Path:
    """Where the node package lives, found without importing it."""
    spec = importlib.util.find_spec("vcnode")
    if spec is None or spec.origin is None:
        here = Path(__file__).resolve().parent.parent / "node" / "vcnode"
        if here.is_dir():
            return here
        raise RuntimeError("the node package (vcnode) is not installed")
    return Path(spec.origin).parent


@functools.cache
def zipapp() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        root = source_dir()
        for name in ON_NODE:
            info = zipfile.ZipInfo(f"vcnode/{name}", date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (root / name).read_bytes())
        main = zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0))
        main.external_attr = 0o644 << 16
        main.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(main, b"import sys\nfrom vcnode.bootstrap import main\nsys.exit(main())\n")
    return out.getvalue()


def zipapp_b64() -> str:
    return base64.b64encode(zipapp()).decode()


def digest_parts() -> list[bytes]:
    """The bytes that a node runs, for code digests."""
    return [zipapp()]
