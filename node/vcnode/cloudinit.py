"""The part of cloud-init that the local runtime needs: `write_files` and `runcmd`.

A node of the local `slurm` runtime has no cloud-init of its own, so the runtime hands it the
same first-boot document that a cloud node gets and runs it with this, inside the node's
namespaces. The document is JSON after its `#cloud-config` line (JSON is YAML, so cloud-init
itself reads the same bytes), which the standard library can parse.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

HEADER = "#cloud-config\n"


def parse(text: str) -> dict:
    if not text.startswith(HEADER):
        raise ValueError("not a #cloud-config document")
    return json.loads(text[len(HEADER):])


def write_files(entries: list[dict]) -> None:
    for entry in entries:
        data = entry.get("content", "").encode()
        encoding = entry.get("encoding", "text/plain")
        if encoding in ("b64", "base64"):
            data = base64.b64decode(data)
        elif encoding in ("gz+b64", "gzip+base64", "gz+base64"):
            data = gzip.decompress(base64.b64decode(data))
        elif encoding != "text/plain":
            raise ValueError(f"{entry['path']}: encoding {encoding!r} is not supported")
        path = Path(entry["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(path, int(entry.get("permissions", "0644"), 8))


def runcmd(commands: list, timeout: float) -> None:
    for command in commands:
        argv = command if isinstance(command, list) else ["sh", "-c", command]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=timeout)
        if done.returncode:
            raise SystemExit(f"cloud-init: {' '.join(argv)} exited {done.returncode}")


def main(argv: list[str]) -> int:
    document = parse(Path(argv[0]).read_text())
    write_files(document.get("write_files", []))
    runcmd(document.get("runcmd", []), timeout=float(argv[1]) if len(argv) > 1 else 300)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
