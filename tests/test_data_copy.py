"""`storage.on_move: copy`: the data moves with the cluster through `reconcile apply`, on real
directories with Debian's rsync and a real read-only bind mount (the freeze), as root.

Each test moves `dev` from local-a to local-b with a tree of 1,000 small files and one 100 MB
file in its shared volume.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GIT_ENV
from reconciler import datacopy

pytestmark = pytest.mark.slow

BIG = 100 * 1024 * 1024
RECONCILE = str(Path(sys.executable).with_name("reconcile"))


def volume(cli, repo, site: str) -> Path | None:
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    assert code == 0, out + err
    found = [v for v in json.loads(out)["volumes"] if (v["site"], v["cluster"], v["volume"]) == (site, "dev", "shared")]
    return Path(found[0]["path"]) if found else None


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(path) in line]


@pytest.fixture
def filled(applied, cli):
    """dev applied on local-a, its shared volume holding 1,000 small files, one of 100 MB and a symlink."""
    source = volume(cli, applied, "local-a")
    for i in range(1000):
        (source / "tree" / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (source / "tree" / f"d{i % 10}" / f"f{i}.txt").write_text(f"result {i}\n" * (i % 7 + 1))
    with (source / "big.bin").open("wb") as handle:
        for _ in range(BIG // (4 << 20)):
            handle.write(os.urandom(4 << 20))
    (source / "latest").symlink_to("big.bin")
    text = applied.read("clusters/dev.yaml")
    text = text.replace("site: local-a\nfailover: [local-b]", "site: local-b\nfailover: [local-a]")
    applied.write("clusters/dev.yaml", text.replace("storage:\n", "storage:\n  on_move: copy\n"))
    return applied, source, datacopy.manifest(source)


def test_the_data_moves_with_the_cluster_verified_before_the_source_goes(filled, cli):
    repo, source, before = filled
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert "copies its data to local-b first (storage.on_move: copy): shared (1,001 files, 100.0 MiB, by rsync)" in out
    assert "steps: bulk copy while live; freeze the source (read-only); final pass; verify checksums; then destroy here" in out

    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    assert "cluster dev on local-a: applied: copied shared to local-b (1,001 files" in out and "verified by checksums" in out
    target = volume(cli, repo, "local-b")
    assert datacopy.manifest(target) == before
    assert not source.exists()  # destroyed, after verification
    assert mounts_under(repo.path) == []  # the freeze ended
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert code == 0, out + err  # converged


def test_a_corrupted_copy_keeps_the_source_and_fails_the_move(filled, cli, monkeypatch):
    repo, source, before = filled

    def corrupt(source_dir: Path, target_dir: Path) -> None:
        with (target_dir / "big.bin").open("r+b") as handle:
            handle.seek(BIG // 2)
            byte = handle.read(1)
            handle.seek(BIG // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))

    monkeypatch.setattr(datacopy, "before_verify", corrupt)
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1
    assert "cluster dev on local-a: failed: shared: the copy differs from the source after the final pass (1 path differs: big.bin (big.bin: file 100644 " in out
    assert re.search(r"file 100644 0:0 [0-9a-f]{12} in the source, file 100644 0:0 [0-9a-f]{12} in the copy\)\); the source stays", out), out
    assert datacopy.manifest(source) == before  # the source is intact, in its stack, and writable again
    assert mounts_under(repo.path) == []
    (source / "written-after-the-failed-move").write_text("ok\n")
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert "MOVE dev 2/2: destroy on local-a" in out  # the move is still to finish

    monkeypatch.undo()  # the next run copies again, and finishes
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    assert (volume(cli, repo, "local-b") / "written-after-the-failed-move").read_text() == "ok\n"


def rsyncs_into(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if argv and argv[0].endswith(b"rsync") and any(str(path).encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def test_a_killed_copy_resumes_and_sends_less_than_a_fresh_one(filled, cli):
    repo, source, before = filled
    env = {**os.environ, **GIT_ENV, datacopy.BWLIMIT_ENV: "25000"}  # ~25 MB/s: the copy takes seconds
    process = subprocess.Popen(
        [RECONCILE, "apply", "--auto-approve", "--repo", str(repo.path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        partial = None
        while time.monotonic() < deadline and partial is None:
            target = volume_path_on_disk(repo, "local-b")
            big = target / "big.bin" if target else None
            if big is not None and big.exists() and 10 << 20 < big.stat().st_size < BIG:
                partial = big.stat().st_size
            time.sleep(0.05)
        assert partial is not None, "the copy never got under way"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # reconcile, and rsync in its session of its own
        for pid in rsyncs_into(repo.path):
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert source.exists() and datacopy.manifest(source) == before  # both sides intact
    assert mounts_under(repo.path) == []  # killed during the bulk copy: nothing was frozen yet

    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    total, sent = (int(n.replace(",", "")) for n in re.search(r"files, ([\d,]+) bytes; ([\d,]+) bytes sent", out).groups())
    assert sent < total - (5 << 20), out  # it resumed from what the killed copy had written
    assert datacopy.manifest(volume(cli, repo, "local-b")) == before
    assert not source.exists()


def volume_path_on_disk(repo, site: str) -> Path | None:
    """The target's volume directory, found on disk while another process applies."""
    directory = repo.path / ".reconcile" / "state" / site / "volumes"
    state = repo.path / ".reconcile" / "state" / site / "cluster-dev.tfstate"
    try:
        document = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    for resource in document.get("resources", []):
        for instance in resource.get("instances") or [] if resource.get("name") == "storage_shared" else []:
            return directory / instance["attributes"]["id"]
    return None


def test_without_a_readable_source_no_copy_is_possible_and_that_needs_the_data_decision(filled, cli):
    repo, source, before = filled
    source.rename(source.with_name("unreachable"))  # the source site's storage is gone (it is down)
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert "NO COPY: no copy is possible: the source volume terraform_data.storage_shared" in out
    assert "the target starts without its data (that needs the data decision)" in out
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1 and "--allow-data-loss" in err
    assert volume(cli, repo, "local-b") is None  # the move's group applied nothing
    code, out, err = cli("apply", "--auto-approve", "--allow-data-loss", "--repo", str(repo.path))
    assert code == 0, out + err


def test_a_failed_staged_copy_leaves_its_staging_listed_and_keep_removes_it_and_opens_the_target(filled, cli, monkeypatch):
    """A staged copy (storage.copy_via: nodes) whose final pass fails keeps its staging areas,
    listed by `reconcile volumes`: the next copy sends only what differs. When the move then
    chooses keep instead, the apply removes them, and a target that the failed copy left closed
    (as a cloud target boots) opens to its users."""
    from reconciler import stagedcopy

    repo, source, before = filled
    repo.write("clusters/dev.yaml", repo.read("clusters/dev.yaml").replace("  on_move: copy\n", "  on_move: copy\n  copy_via: nodes\n"))
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert ("bulk copy while live (staged: the source's volume, by the runner, each site's staging area, "
            "the target's volume, by the runner)") in out, out  # no nodes on these sites: the runner runs the legs
    leg, legs = stagedcopy.leg, []

    def failing(store, unit, op, *args, **kwargs):
        legs.append(op)
        if legs.count("stage-in") == 2:  # the final pass, after the source was frozen
            raise stagedcopy.CopyError("stage-in failed on purpose; the source stays")
        return leg(store, unit, op, *args, **kwargs)

    monkeypatch.setattr(stagedcopy, "leg", failing)
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1 and "stage-in failed on purpose" in out, out + err
    assert datacopy.manifest(source) == before and mounts_under(repo.path) == []  # intact, writable again
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    left = [v for v in json.loads(out)["volumes"] if v["status"] == "left by a copy"]
    assert sorted((v["site"], v["kind"], v["volume"]) for v in left) == [
        ("local-a", "staging", "shared"), ("local-b", "staging", "shared"),
        ("local-b", "unfinished-copy", ""),  # the target's volumes: an unverified copy, never a move's source
    ]
    areas = [Path(v["path"]) for v in left if v["kind"] == "staging"]
    assert all(area.is_dir() for area in areas) and (areas[0] / "big.bin").exists()
    code, out, err = cli("volumes", "--repo", str(repo.path))
    assert "staging left by a copy: removed by an apply once the move of dev has ended" in out, out
    channel = repo.path / ".reconcile" / "state" / "local-b" / "channel" / "dev"  # the target's (rpi.spec.local_channel_dir)
    (channel / "config").mkdir(parents=True, exist_ok=True)
    (channel / "config" / "access").write_text('{"serial": "s-closed", "state": "closed"}')  # as a cloud target boots

    monkeypatch.undo()
    repo.write("clusters/dev.yaml", repo.read("clusters/dev.yaml").replace("  on_move: copy\n", "  on_move: keep\n"))
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    assert ("opened to its users (a copy that failed had left it closed; no copy is pending now); its volumes hold what "
            "the copy from local-a wrote before it failed, unverified") in out, out
    assert json.loads((channel / "config" / "access").read_text())["state"] == "open"
    assert "removed the staging area of shared on local-a, left by a copy" in out, out
    assert not any(area.exists() for area in areas)
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    assert not [v for v in json.loads(out)["volumes"] if v["status"] == "left by a copy"]
    assert [v["status"] for v in json.loads(out)["volumes"] if v["site"] == "local-a" and v["cluster"] == "dev"] == ["retained"]


def test_an_interrupt_between_a_copys_passes_says_where_it_stopped(filled, cli, monkeypatch):
    """Defect: an interrupt that stopped a copy between its passes was reported as "the engine
    stopped", though no engine ran. The signal comes as Ctrl-C would, during the bulk copy."""
    from reconciler import interrupt

    repo, source, before = filled
    bulk = datacopy.bulk

    def interrupted(plan, into):
        sent = bulk(plan, into)
        interrupt._received.append("SIGINT")  # what the handler records, without a real signal in this thread
        interrupt._requested.set()
        return sent

    monkeypatch.setattr(datacopy, "bulk", interrupted)
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 130, out + err
    assert "cluster dev on local-a: interrupted: SIGINT received after the bulk copies: the source stays" in out, out
    assert datacopy.manifest(source) == before and mounts_under(repo.path) == []


def test_reverting_a_move_whose_copy_failed_never_copies_the_unfinished_copy_back(filled, cli, monkeypatch):
    """Defect (found by review): after a failed copy, moving the cluster back with on_move: copy
    still set rsynced the unverified copy back over the source (with --delete): what was written
    on the source since was lost. A target holds an unfinished copy until verification; a move
    from it that would copy is blocked, and says what to do."""
    repo, source, before = filled

    def corrupt(source_dir: Path, target_dir: Path) -> None:
        (target_dir / "big.bin").write_bytes(b"not the data")

    monkeypatch.setattr(datacopy, "before_verify", corrupt)
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1 and "the copy differs from the source" in out, out + err
    monkeypatch.undo()
    (source / "written-after-the-failed-copy").write_text("keep me\n")
    text = repo.read("clusters/dev.yaml")
    repo.write("clusters/dev.yaml", text.replace("site: local-b\nfailover: [local-a]", "site: local-a\nfailover: [local-b]"))
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert "holds an unfinished copy of the data on local-a (its copy failed before verification)" in out, out
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1 and "unfinished copy" in out + err, out + err
    assert (source / "written-after-the-failed-copy").read_text() == "keep me\n"
    assert (source / "big.bin").stat().st_size == BIG  # never overwritten by the unfinished copy
    repo.write("clusters/dev.yaml", repo.read("clusters/dev.yaml").replace("  on_move: copy\n", "  on_move: drop\n"))
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    assert (source / "written-after-the-failed-copy").read_text() == "keep me\n" and volume(cli, repo, "local-b") is None
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    assert not [v for v in json.loads(out)["volumes"] if v["status"] == "left by a copy"], out  # the mark went with the move
