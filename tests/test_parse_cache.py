"""The parse cache (`REPO/.reconcile/cache/parsed`): a definition is parsed again only when its
bytes change, and an entry that does not read back as the one expected is never trusted."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler import load as load_module


def entries(repo) -> list[Path]:
    return sorted((repo.path / ".reconcile" / "cache" / "parsed").glob("*/*.json"))


def test_a_changed_profile_reselects_its_clusters_through_the_cache(applied, cli):
    repo = str(applied.path)
    code, out, err = cli("--dry-run", "--json", "--repo", repo)
    assert code == 0, out + err  # applied, nothing to do: every file now parsed and kept
    kept = entries(applied)
    assert len(kept) >= len(list((applied.path / "sites").glob("*.yaml"))) + len(list((applied.path / "clusters").rglob("*.yaml")))

    applied.replace("clusters/profiles/slurm.yaml", "      MaxJobCount: 50000\n", "      MaxJobCount: 60000\n")
    code, out, err = cli("--dry-run", "--json", "--repo", repo)
    assert code == 2, err
    plan = json.loads(out)
    assert {u["key"] for u in plan["units"]} == {"cluster:slurm-hpc@local-b", "cluster:icon@gcp-netherlands"}  # its users
    assert all("profile changed: clusters/profiles/slurm.yaml" in u["reasons"] for u in plan["units"])
    assert len(entries(applied)) == len(kept) + 1  # the profile's new bytes: one new entry, the rest reused

    applied.replace("clusters/profiles/slurm.yaml", "      MaxJobCount: 60000\n", "      MaxJobCount: 50000\n")
    code, out, err = cli("--dry-run", "--repo", repo)
    assert code == 0 and "Nothing to do" in out, out + err


def test_a_damaged_or_foreign_entry_is_ignored_and_written_again(repo, cli):
    path = str(repo.path)
    code, out, err = cli("validate", "--json", "--repo", path)
    assert code == 0, err
    first = json.loads(out)
    kept = entries(repo)
    assert kept
    damaged, foreign, other = kept[0], kept[1], kept[2]
    damaged.write_text(damaged.read_text()[:40])  # cut short
    stored = json.loads(other.read_text())
    foreign.write_text(json.dumps({**stored, "key": json.loads(foreign.read_text())["key"]}))  # another file's parse, relabelled
    code, out, err = cli("validate", "--json", "--repo", path)
    assert code == 0, err
    assert json.loads(out)["units"] == first["units"]  # the same definitions, not another file's
    assert json.loads(damaged.read_text())["key"] == damaged.stem  # whole again
    rewritten = json.loads(foreign.read_text())
    assert rewritten["key"] == foreign.stem and rewritten["path"] != stored["path"]  # its own file's parse again


def test_a_file_with_problems_is_never_kept(repo, cli, tmp_path):
    load_module.use_cache(tmp_path / "cache")
    try:
        repo.replace("clusters/dev.yaml", "    cores: 8\n", "    cores: 8\n    cores: 9\n")  # a duplicate key
        code, out, err = cli("validate", "--repo", str(repo.path))
        assert code == 1 and "clusters/dev.yaml" in err
        code, out, err = cli("validate", "--repo", str(repo.path))  # reported again: nothing kept hid it
        assert code == 1 and "clusters/dev.yaml" in err
        assert not any('"clusters/dev.yaml"' in p.read_text() for p in (repo.path / ".reconcile" / "cache" / "parsed").glob("*/*.json"))
    finally:
        load_module.use_cache(None)
