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

A bucket on a site with an object store (`Bucket`) is copied with rclone instead, between any
two stores (S3 to GCS and back) or between a store and a directory, with the same order. A
bucket is not frozen: on the local platform nothing writes to it but the cluster's users
through the store, and no node mounts it. Its verification compares SHA-256 manifests that
rclone computes from both sides' bytes (`--download`), not the stores' own checksums, which
differ between S3 and GCS and between single and multipart uploads. rclone sends whole
objects, and skips those already there: a killed copy resumes object by object.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from reconciler import interrupt
from reconciler.errors import ReconcileError
from rpi import copyroute, local_volumes

# A cluster's own state on its shared volume (slurmctld's StateSaveLocation, layers.py): each
# copy of the cluster keeps its own, so it is neither copied nor compared, nor deleted.
INTERNAL = ".vcluster"
RSYNC = ["-aH", "--numeric-ids", "--delete", "--inplace", "--no-whole-file", "--stats", f"--exclude=/{INTERNAL}/"]
BWLIMIT_ENV = "RECONCILE_COPY_BWLIMIT"  # KiB/s, for rsync's --bwlimit: copies that must share a link


class CopyError(ReconcileError):
    """A copy or its verification failed: the source stays."""


RCLONE_LIMIT_S = 120  # a listing or a size: what a store that answers does in far less


@dataclass(frozen=True)
class Bucket:
    """A bucket in a local site's object store: `store` as its resource records it."""

    store: dict
    name: str

    @property
    def remote(self) -> str:
        return local_volumes.remote(self.store) + self.name

    def __str__(self) -> str:
        return local_volumes.bucket_url(self.store, self.name)


Location = Path | Bucket


@dataclass(frozen=True)
class VolumeCopy:
    """One volume to copy: the source's directory or bucket, and the size the plan estimated."""

    volume: str
    address: str  # the data resource, the same in source and target stacks
    source: Location
    files: int
    bytes: int
    route: str = "rsync"  # rpi.copyroute: rsync, rclone, storage-transfer, datasync
    measured: bool = True  # False where only the transfer service can measure the source (a cloud file system)


@dataclass(frozen=True)
class Copied:
    volume: str
    target: Location
    sent: int  # bytes sent (rsync's "literal data", rclone's transferred bytes) over both passes
    files: int
    bytes: int


def runner_location(volume):
    """A volume as the machine that applies reaches it: a cloud bucket (`rpi.copyroute.CloudVolume`)
    as a Bucket for rclone; anything else as it is."""
    if isinstance(volume, copyroute.CloudVolume) and volume.store is not None:
        return Bucket(volume.store, volume.id)
    return volume


def located(volume_dir: Path, facts: dict) -> Location:
    """Where a local volume is, from its resource's input: a bucket in its site's store, or
    `volume_dir`, its directory."""
    store = local_volumes.bucket_store(facts)
    return Bucket(store, volume_dir.name) if store is not None else volume_dir


def exists(location: Location) -> bool:
    """Whether the directory or bucket is there. Raises CopyError when the store does not say."""
    if isinstance(location, Path):
        return location.is_dir()
    listed = _rclone(["lsf", "-q", "--dirs-only", local_volumes.remote(location.store)], "list the buckets of")
    return f"{location.name}/" in listed.stdout.splitlines()


def estimate(volume: str, address: str, source, measure: bool = True, route: str = "") -> VolumeCopy:
    """Files and bytes in `source`, for the plan. `measure` False: a cloud file system, which
    only its transfer service reads."""
    route = route or ("rclone" if isinstance(source, Bucket) else "rsync")
    if not measure:
        return VolumeCopy(volume, address, source, 0, 0, route, measured=False)
    if isinstance(source, Bucket):
        size = json.loads(_rclone(["size", "-q", "--json", source.remote], "measure").stdout)
        return VolumeCopy(volume, address, source, int(size.get("count") or 0), int(size.get("bytes") or 0), route)
    files = size = 0
    for path, _, names in _walk(source):
        for name in names:
            try:
                info = (path / name).lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):  # files, as the manifests count them: not links, FIFOs or sockets
                files += 1
                size += info.st_size
    return VolumeCopy(volume, address, source, files, size, route)


def _walk(root: Path):
    """os.walk below a volume's directory, as Paths, without the cluster's own INTERNAL state."""
    for path, dirs, names in os.walk(root):
        if Path(path) == root and INTERNAL in dirs:
            dirs.remove(INTERNAL)
        yield Path(path), dirs, names


def unavailable(source: Location | None = None, target_in_store: bool = False) -> str:
    """Why a copy from `source` (a directory by default) cannot run on this machine, or "" when
    it can. `target_in_store`: the target is a bucket."""
    if isinstance(source, Bucket) or target_in_store:
        if shutil.which("rclone") is None:
            return "rclone is not on PATH (Debian: apt-get install rclone): it copies buckets"
        if isinstance(source, Bucket):
            return ""
    elif shutil.which("rsync") is None:
        return "rsync is not on PATH (Debian: apt-get install rsync)"
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return "freezing the source (a read-only bind mount) needs root on the machine that applies"
    return ""


def copy(plan: VolumeCopy, target: Location) -> Copied:
    """Bulk copy, freeze, final pass, verify. Raises CopyError; the freeze always ends."""
    sent = bulk(plan, target)
    interrupt.checkpoint(f"after the bulk copy of {plan.volume}: the source stays")
    return finish(plan, target, sent)


def bulk(plan: VolumeCopy, target: Location) -> int:
    """The bulk copy, while the source is live: the bytes sent."""
    why = unavailable(plan.source, isinstance(target, Bucket))
    if why:
        raise CopyError(f"cannot copy {plan.volume}: {why}")
    return _sync(plan.source, target) if _objects(plan.source, target) else _rsync(plan.source, target)


def finish(plan: VolumeCopy, target: Location, sent: int) -> Copied:
    """Freeze the source (a directory: a read-only bind mount; a bucket is not frozen), the
    final pass, then the manifests of both sides compared. The freeze always ends."""
    source, objects = plan.source, _objects(plan.source, target)
    with frozen(source) if isinstance(source, Path) else contextlib.nullcontext():
        sent += _sync(source, target) if objects else _rsync(source, target)
        before_verify(source, target)
        take = object_manifest if objects else manifest
        source_manifest, target_manifest = take(source), take(target)
    if source_manifest != target_manifest:
        raise CopyError(f"{plan.volume}: the copy differs from the source after the final pass ({difference(source_manifest, target_manifest)}); the source stays")
    return Copied(plan.volume, target, sent, plan.files, plan.bytes)


def _objects(source: Location, target: Location) -> bool:
    """rclone's copy (a bucket on either side), or rsync's (directories)."""
    return isinstance(source, Bucket) or isinstance(target, Bucket)


def _where(location: Location) -> str:
    return location.remote if isinstance(location, Bucket) else str(location)


def _sync(source: Location, target: Location) -> int:
    """rclone sync, source to target; the bytes it transferred."""
    argv = rclone_argv(["sync", "-v", "--use-json-log", "--stats", "0", "--exclude", f"/{INTERNAL}/**", _where(source), _where(target)])
    if os.environ.get(BWLIMIT_ENV):
        argv.append(f"--bwlimit={os.environ[BWLIMIT_ENV]}k")
    done = interrupt.run(argv, text=True)
    if done.returncode != 0:
        interrupt.checkpoint("during a copy: the source stays")
        raise CopyError(f"rclone sync from {source} to {target} failed (exit {done.returncode}): {rclone_errors(done.stderr)}")
    sent = 0
    for line in done.stderr.splitlines():
        try:
            stats = json.loads(line).get("stats")
        except (ValueError, AttributeError):
            continue
        if isinstance(stats, dict):
            sent = int(stats.get("bytes") or 0)
    return sent


def empty(bucket: Bucket) -> None:
    """Delete every object of a bucket (not the bucket): what a cloud's destroy needs first."""
    _rclone(["delete", "-q", bucket.remote], "empty")


def object_manifest(location: Location) -> dict[str, str]:
    """{path: sha256} of every object or file, computed from its bytes."""
    listed = _rclone(["hashsum", "-q", "sha256", "--download", "--exclude", f"/{INTERNAL}/**", _where(location)], "checksum")
    out = {}
    for line in listed.stdout.splitlines():
        digest, _, name = line.partition("  ")
        if name:
            out[name] = digest
    return out


def rclone_argv(args: list[str]) -> list[str]:
    """rclone with the apply's credentials, mapped as the volumes' provisioners map them."""
    return ["sh", "-c", f'{local_volumes.RCLONE_ENV}; exec rclone "$@"', "rclone", *args]


def _rclone(args: list[str], doing: str) -> subprocess.CompletedProcess:
    target = args[-1]
    try:
        done = subprocess.run(rclone_argv(args), capture_output=True, text=True, timeout=RCLONE_LIMIT_S)
    except subprocess.TimeoutExpired:
        raise CopyError(f"could not {doing} {target}: rclone did not answer in {RCLONE_LIMIT_S} s") from None
    if done.returncode != 0:
        raise CopyError(f"could not {doing} {target} (rclone exit {done.returncode}): {rclone_errors(done.stderr)}")
    return done


def rclone_errors(stderr: str) -> str:
    """rclone's last error, without its timestamps and retry chatter."""
    lines = [re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", "", line) for line in stderr.strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith("NOTICE")]
    return (lines[-1] if lines else "no message")[-400:]


def before_verify(source: Location, target: Location) -> None:
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
    """{relative path: what it is}: mode, owner and sha256 of each file, mode and owner of each
    directory and FIFO, the target of each symlink. Sockets and devices are left out, and no
    file that is not a regular one is ever opened (a FIFO would block the reader). Made by the
    node package (`vcnode manifest`), in a process of its own: the one code that nodes run for
    a staged copy's manifests, so that both ends of every copy are compared alike."""
    return json.loads(node_package(["manifest", str(root)], f"list {root}"))


def node_package(args: list[str], doing: str, timeout_s: float = 24 * 3600) -> str:
    """Run the node package here (`python -m vcnode ARGS`); its standard output. The reconciler
    never imports it: it is what nodes run."""
    from reconciler import hostruntime

    try:
        done = interrupt.run([sys.executable, "-m", "vcnode", *args], text=True, env=hostruntime.localhost_env(dict(os.environ)),
                             limit_s=timeout_s)
    except (OSError, interrupt.TimedOut) as exc:
        raise CopyError(f"could not {doing}: {exc}") from None
    if done.returncode != 0:
        interrupt.checkpoint(f"while the node package was asked to {doing}: the source stays")
        raise CopyError(f"could not {doing}: {done.stderr.strip()[-400:] or f'exit {done.returncode}'}; the source stays")
    return done.stdout


def difference(source: dict[str, str], target: dict[str, str]) -> str:
    differ = sorted(k for k in source.keys() | target.keys() if source.get(k) != target.get(k))
    shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    first = differ[0] if differ else ""
    detail = f" ({first}: {_short(source.get(first))} in the source, {_short(target.get(first))} in the copy)" if first else ""
    return f"{len(differ)} {'path differs' if len(differ) == 1 else 'paths differ'}: {shown}{detail}"


def _short(entry: str | None) -> str:
    """A manifest entry as a message shows it: its kind and mode, and a digest's first 12 digits."""
    if entry is None:
        return "absent"
    parts = entry.split()
    return " ".join(p[:12] if len(p) == 64 else p for p in parts)
