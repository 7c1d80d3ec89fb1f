"""The node package (`node/vcnode`) as the directory application that first-boot data carries.

The reconciler ships these files to nodes and never imports the package: the same source gives
the same first-boot data on every machine. Only what runs on a node goes in: the local runtime's host
side (`localhost`, `cloudinit`) stays out.
"""

from __future__ import annotations

import functools
import importlib.util
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


LAUNCHER = "import sys\nfrom vcnode.bootstrap import main\nsys.exit(main())\n"


@functools.cache
def files() -> dict[str, str]:
    """{path inside the application: text} of the node package as first-boot data carries it:
    a directory application (`python3 DIR ARGS` runs its `__main__.py`). Plain text, not a zip:
    the user data is gzipped as a whole on EC2 (16 KiB at most), and gzip packs source text
    better than base64 of a compressed archive."""
    root = source_dir()
    return {"__main__.py": LAUNCHER, **{f"vcnode/{name}": (root / name).read_text() for name in ON_NODE}}


def digest_parts() -> list[bytes]:
    """The bytes that a node runs, for code digests."""
    return [f"{path}\0{text}".encode() for path, text in sorted(files().items())]
