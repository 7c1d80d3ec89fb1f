"""ADAPTER over rsync and mount: `storage.on_move: copy` moves a volume's data with its
cluster, with a cutover, between volumes of the local platform (real directories).

The order, run by apply between the target's health check and the source's destroy:
  1. bulk copy while the source is still live (the target is created but not yet in use);
  2. freeze the source: its directory is bind-mounted read-only over itself, so nothing
     writes to it any more (what a cluster's nodes do with partitions down and the volume
     remounted read-only);
  3. a final pass, then verification: a checksum manifest of each side, compared;
  4. only then is the source destroyed. The freeze ends whatever happens.

A failed or interrupted copy leaves both sides intact: the source is not destroyed, and the
next run copies again. rsync writes in place and sends only what differs (`--inplace
--no-whole-file`), so a copy that was killed resumes from what it had written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reconciler import interrupt
from reconciler.errors import ReconcileError

RSYNC = ["-aH", "--numeric-ids", "--delete", "--inplace", "--no-whole-file", "--stats"]
BWLIMIT_ENV = "RECONCILE_COPY_BWLIMIT"  # KiB/s, for rsync's --bwlimit: copies that must share a link


class CopyError(ReconcileError):
    """A copy or its verification failed: the source stays."""


@dataclass(frozen=True)
class VolumeCopy:
    """One volume to copy: the source's directory, and the size the plan estimated."""

    volume: str
    address: str  # the data resource, the same in source and target stacks
    source: Path
    files: int
    bytes: int


@dataclass(frozen=True)
class Copied:
    volume: str
    target: Path
    sent: int  # bytes rsync sent (its "literal data") over both passes
    files: int
    bytes: int


def estimate(volume: str, address: str, source: Path) -> VolumeCopy:
    """Files and bytes below `source`, for the plan."""
    files = size = 0
    for path, _, names in os.walk(source):
        for name in names:
            files += 1
            try:
                size += (Path(path) / name).lstat().st_size
            except OSError:
                pass
    return VolumeCopy(volume, address, source, files, size)


def unavailable() -> str:
    """Why a copy cannot run on this machine, or "" when it can."""
    if shutil.which("rsync") is None:
        return "rsync is not on PATH (Debian: apt-get install rsync)"
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return "freezing the source (a read-only bind mount) needs root on the machine that applies"
    return ""


def copy(plan: VolumeCopy, target: Path) -> Copied:
    """Bulk copy, freeze, final pass, verify. Raises CopyError; the freeze always ends."""
    why = unavailable()
    if why:
        raise CopyError(f"cannot copy {plan.volume}: {why}")
    sent = _rsync(plan.source, target)
    interrupt.checkpoint(f"after the bulk copy of {plan.volume}: the source stays")
    with frozen(plan.source):
        sent += _rsync(plan.source, target)
        before_verify(plan.source, target)
        source_manifest, target_manifest = manifest(plan.source), manifest(target)
        if source_manifest != target_manifest:
            raise CopyError(f"{plan.volume}: the copy differs from the source after the final pass ({_difference(source_manifest, target_manifest)}); the source stays")
    return Copied(plan.volume, target, sent, plan.files, plan.bytes)


def before_verify(source: Path, target: Path) -> None:
    """Called between the final pass and the verification; tests corrupt the target here."""


def _rsync(source: Path, target: Path) -> int:
    argv = ["rsync", *RSYNC]
    if os.environ.get(BWLIMIT_ENV):
        argv.append(f"--bwlimit={os.environ[BWLIMIT_ENV]}")
    done = interrupt.run([*argv, f"{source}/", f"{target}/"], text=True)
    if done.returncode != 0:
        interrupt.checkpoint("during a copy: the source stays")
        raise CopyError(f"rsync from {source} to {target} failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    match = re.search(r"^Literal data: ([\d,]+) bytes", done.stdout, re.MULTILINE)
    return int(match.group(1).replace(",", "")) if match else 0


class frozen:
    """The directory bind-mounted read-only over itself, and unmounted on leaving."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "frozen":
        _mount(["--bind", str(self.path), str(self.path)])
        try:
            _mount(["-o", "remount,bind,ro", str(self.path)])
        except CopyError:
            subprocess.run(["umount", str(self.path)], capture_output=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        done = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
        if done.returncode != 0 and exc[0] is None:
            raise CopyError(f"could not end the freeze of {self.path}: {done.stderr.strip()}")


def _mount(args: list[str]) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise CopyError(f"could not freeze the source (mount {' '.join(args)}): {done.stderr.strip()}")


def manifest(root: Path) -> dict[str, str]:
    """{relative path: what it is}: sha256 and mode of each file, the target of each symlink,
    the mode of each directory."""
    out = {}
    for path, dirs, names in os.walk(root):
        base = Path(path)
        for name in sorted(dirs):
            info = (base / name).lstat()
            rel = (base / name).relative_to(root).as_posix()
            out[rel] = f"link {os.readlink(base / name)}" if (base / name).is_symlink() else f"dir {info.st_mode:o}"
        for name in sorted(names):
            item = base / name
            rel = item.relative_to(root).as_posix()
            if item.is_symlink():
                out[rel] = f"link {os.readlink(item)}"
                continue
            with item.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            out[rel] = f"file {item.lstat().st_mode:o} {digest}"
    return out


def _difference(source: dict[str, str], target: dict[str, str]) -> str:
    differ = sorted(k for k in source.keys() | target.keys() if source.get(k) != target.get(k))
    shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    return f"{len(differ)} path{'s' if len(differ) != 1 else ''} differ: {shown}"
