"""`storage.on_move: copy` of a bucket between two object stores through `reconcile apply`:
local-a keeps its buckets in moto's S3 server, local-b in the GCS emulator, both on 127.0.0.1,
and rclone (Debian's package) creates, copies, verifies and removes them.

`dev` has a shared volume too (a directory, copied by rsync), so one move copies both kinds.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import make_repo
from emulators import object_store_block
from reconciler import datacopy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("rclone") is None and os.geteuid() != 0, reason="rclone is installed by scripts/test as root (Debian: rclone)"),
]

OBJECTS = {f"runs/{i:03d}/out.txt": f"result {i}\n".encode() * (i + 1) for i in range(40)}
OBJECTS["model.bin"] = os.urandom(6 << 20)  # above rclone's multipart cut-off: no single-part ETag


def bucket_of(cli, repo, site: str) -> str | None:
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    assert code == 0, out + err
    found = [v for v in json.loads(out)["volumes"] if (v["site"], v["cluster"], v["volume"]) == (site, "dev", "results")]
    return found[0]["id"] if found else None


@pytest.fixture
def stores(tmp_path, emulators, monkeypatch, cli):
    """dev on local-a with a bucket `results` in S3 holding OBJECTS; local-b's buckets in GCS."""
    s3, gcs = emulators["s3"], emulators["gcs"]
    repo = make_repo(tmp_path / "repo")
    for rel in ("sites/aws-frankfurt.yaml", "sites/aws-zurich.yaml", "sites/gcp-netherlands.yaml", "sites/gcp-zurich.yaml",
                "clusters/gpu-ai.yaml", "clusters/icon.yaml"):
        (repo.path / rel).unlink()  # the emulators' credentials never meet a real cloud
    repo.replace("clusters/slurm-hpc.yaml", "failover: [local-a, aws-zurich]", "failover: [local-a]")
    for site, store in (("local-a", s3), ("local-b", gcs)):
        repo.replace(f"sites/{site}.yaml", "\nservices:\n", "\nservices:\n" + object_store_block(store.kind, store.endpoint))
    repo.replace("clusters/dev.yaml", "storage:\n", "storage:\n  object:\n    - name: results\n      purpose: job outputs\n")
    repo.commit("buckets in the sites' object stores")
    for key, value in {**s3.env, **gcs.env}.items():
        monkeypatch.setenv(key, value)
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    source = bucket_of(cli, repo, "local-a")
    assert source in s3.buckets()  # a real bucket, named by its volume id
    for key, data in OBJECTS.items():
        s3.put(source, key, data)
    text = repo.read("clusters/dev.yaml").replace("site: local-a\nfailover: [local-b]", "site: local-b\nfailover: [local-a]")
    repo.write("clusters/dev.yaml", text.replace("storage:\n", "storage:\n  on_move: copy\n"))
    return repo, s3, gcs, source


def test_a_bucket_moves_from_s3_to_gcs_verified_before_the_source_goes(stores, cli, monkeypatch):
    repo, s3, gcs, source = stores
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    size = sum(len(data) for data in OBJECTS.values()) / 2**20
    assert f"results ({len(OBJECTS)} files, {size:.1f} MiB, by rclone)" in out, out
    assert "no freeze for a bucket (nothing here writes to it but its users)" in out

    # A byte changed in the target between the final pass and the verification: the move fails
    # and the source bucket stays, whole.
    def corrupt(source_location, target_location) -> None:
        if isinstance(target_location, datacopy.Bucket):
            gcs.put(target_location.name, "runs/007/out.txt", b"not what was written\n")

    monkeypatch.setattr(datacopy, "before_verify", corrupt)
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1, out + err
    assert "results: the copy differs from the source after the final pass (1 path differs: runs/007/out.txt (runs/007/out.txt: " in out
    assert "in the copy)); the source stays" in out
    assert s3.objects(source) == OBJECTS

    monkeypatch.setattr(datacopy, "before_verify", lambda *_: None)
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    assert "copied results to local-b (41 files" in out and "verified by checksums" in out
    target = bucket_of(cli, repo, "local-b")
    assert target in gcs.buckets() and gcs.objects(target) == OBJECTS
    assert source not in s3.buckets()  # destroyed, emptied first, once the copy was verified
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert code == 0, out + err  # converged

    # adopting a bucket that is not in the store is refused before anything is planned
    repo.replace("clusters/dev.yaml", "    - name: results\n", "    - name: results\n      from: no-such-bucket\n")
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert code != 0
    assert "storage.results.from: there is no volume 'no-such-bucket' on site local-b (gcs://no-such-bucket at " in out + err


def test_a_kept_bucket_is_retained_in_its_store_and_deleted_as_a_reviewed_destroy(stores, cli):
    repo, s3, gcs, source = stores
    repo.replace("clusters/dev.yaml", "on_move: copy", "on_move: keep")
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    (kept,) = [v for v in json.loads(out)["volumes"] if v["status"] == "retained" and v["volume"] == "results"]
    assert kept["id"] == source and kept["path"].startswith(f"s3://{source} at {s3.endpoint}")
    assert s3.objects(source) == OBJECTS  # kept: the stack let go of it, its objects stay

    code, out, err = cli("volumes", "--delete", source, "--allow-data-loss", "--auto-approve", "--repo", str(repo.path))
    assert code == 0, out + err
    assert source not in s3.buckets()  # emptied, then removed, by the volume's own provisioner
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    assert not [v for v in json.loads(out)["volumes"] if v["id"] == source]
