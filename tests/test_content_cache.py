"""The content caches under `REPO/.reconcile/cache`: a definition is parsed again only when its
bytes change (`parsed/`), a cluster resolved again only when what it follows from changes
(`units/`), and an entry that does not read back as the one expected is never trusted."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from reconciler import load as load_module
from reconciler import unitcache
from reconciler.gitsource import GitSource
from reconciler.load import load
from reconciler.resolve import resolve
from rpi.spec import Peer


def entries(repo) -> list[Path]:
    return sorted((repo.path / ".reconcile" / "cache" / "parsed").glob("*/*/*.json"))


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
    damaged, foreign, other, flipped = kept[0], kept[1], kept[2], kept[3]
    damaged.write_text(damaged.read_text()[:40])  # cut short
    stored = json.loads(body(other))
    relabelled = json.dumps({**stored, "key": json.loads(body(foreign))["key"]}).encode()
    foreign.write_bytes(hashlib.sha256(relabelled).hexdigest().encode() + b"\n" + relabelled)  # another file's parse, relabelled
    text = flipped.read_bytes()
    at = text.index(b'"data":{') + 9
    flipped.write_bytes(text[:at] + bytes([text[at] ^ 1]) + text[at + 1:])  # one bit of a field's name
    code, out, err = cli("validate", "--json", "--repo", path)
    assert code == 0, err
    assert json.loads(out)["units"] == first["units"]  # the same definitions, not another file's
    assert json.loads(body(damaged))["key"] == damaged.stem  # whole again
    assert json.loads(body(flipped))["key"] == flipped.stem and b'"data":{' in flipped.read_bytes()
    assert flipped.read_bytes() != text[:at] + bytes([text[at] ^ 1]) + text[at + 1:]
    rewritten = json.loads(body(foreign))
    assert rewritten["key"] == foreign.stem and rewritten["path"] != stored["path"]  # its own file's parse again


def body(entry) -> str:
    """An entry: its checksum, a newline, its JSON."""
    checksum, _, text = entry.read_bytes().partition(b"\n")
    assert hashlib.sha256(text).hexdigest().encode() == checksum
    return text.decode()


def test_a_file_with_problems_is_never_kept(repo, cli, tmp_path):
    load_module.use_cache(tmp_path / "cache")
    try:
        repo.replace("clusters/dev.yaml", "    cores: 8\n", "    cores: 8\n    cores: 9\n")  # a duplicate key
        code, out, err = cli("validate", "--repo", str(repo.path))
        assert code == 1 and "clusters/dev.yaml" in err
        code, out, err = cli("validate", "--repo", str(repo.path))  # reported again: nothing kept hid it
        assert code == 1 and "clusters/dev.yaml" in err
        assert not any('"clusters/dev.yaml"' in p.read_text() for p in (repo.path / ".reconcile" / "cache" / "parsed").glob("*/*/*.json"))
    finally:
        load_module.use_cache(None)


def test_kept_units_are_the_units_resolution_makes_and_damaged_ones_are_made_again(repo, tmp_path, monkeypatch):
    defs = load(GitSource(repo.path).working_tree())
    fresh = resolve(defs)
    unitcache.use(tmp_path / "units")
    try:
        assert resolve(defs) == fresh  # made, and kept
        kept = sorted((tmp_path / "units").glob("*/*/*.json"))
        assert len(kept) == sum(1 for u in fresh.values() if u.kind == "cluster")
        assert resolve(defs) == fresh  # read back
        first, second, third = kept[0], kept[1], kept[2]
        first.write_bytes(first.read_bytes()[:-20])  # cut short
        body = bytearray(second.read_bytes())
        body[-5] = ord("7") if body[-5] != ord("7") else ord("8")  # one byte changed
        second.write_bytes(bytes(body))
        third.write_bytes(kept[3].read_bytes() if len(kept) > 3 else b"{}")  # another key's entry
        assert resolve(defs) == fresh
        for entry in (first, second, third):
            head = entry.read_bytes().partition(b"\n")[0]
            assert json.loads(head)["key"] == entry.stem  # written again, whole
        monkeypatch.setattr(unitcache, "code_digest", lambda: "other code")  # new code never reads old entries
        assert resolve(defs) == fresh
        now = list((tmp_path / "units").glob("*/*/*.json"))
        assert len(now) == len(kept) and not any(p.exists() for p in kept)  # the old code's entries removed, whole
    finally:
        unitcache.use(None)


def test_a_problem_in_a_kept_file_is_placed_as_in_a_fresh_parse(repo, cli):
    """The places of a kept parse's fields are read back only when a problem needs them: the
    same file, line and column as parsing the file again gives."""
    path = str(repo.path)
    code, out, err = cli("validate", "--repo", path)
    assert code == 0, err
    repo.replace("sites/local-b.yaml", "name: local-b\n", "name: local-z\n")  # its clusters now name an unknown site
    code, cached, err = cli("validate", "--json", "--repo", path)
    assert code == 1, err
    problems = json.loads(cached)["problems"]
    assert any(p["file"] == "clusters/slurm-hpc.yaml" and p["field"] == "placement.site" and p["line"] > 1 for p in problems), problems
    for entry in entries(repo):
        entry.unlink()
    code, fresh, err = cli("validate", "--json", "--repo", path)
    assert json.loads(fresh)["problems"] == problems


def test_an_admit_reaches_the_cluster_it_lets_in_through_the_cache(repo, tmp_path):
    """A cluster's `network.admit` changes the stack of the cluster it lets in (on AWS its egress
    rules), though that cluster's own files do not change: its kept unit is made again."""
    repo.write("clusters/dev2.yaml", repo.read("clusters/dev.yaml").replace("name: dev\n", "name: dev2\n"))
    unitcache.use(tmp_path / "units")
    try:
        before = resolve(load(GitSource(repo.path).working_tree()))
        assert before["cluster:dev@local-a"].spec.reaches == before["cluster:dev2@local-a"].spec.admitted == ()
        repo.write("clusters/dev2.yaml", repo.read("clusters/dev2.yaml")
                   + "network:\n  admit:\n    - cluster: dev\n      ports: [22, 60000-60100]\n    - cluster: slurm-hpc\n")
        defs = load(GitSource(repo.path).working_tree())
        after = resolve(defs)
        dev, dev2 = after["cluster:dev@local-a"], after["cluster:dev2@local-a"]
        assert dev2.spec.admitted == (Peer("dev", dev.spec.subnet.cidr, ("22", "60000-60100")),)  # slurm-hpc: another site
        assert dev.spec.reaches == (Peer("dev2", dev2.spec.subnet.cidr, ("22", "60000-60100")),)
        assert dev.config_hash != before["cluster:dev@local-a"].config_hash
        from reconciler import affected

        changed = frozenset({"clusters/dev2.yaml"})
        reasons = {s.unit.key: s.reasons for s in affected.select(after, before, changed, {})}
        assert reasons["cluster:dev@local-a"][0] == "network.admit between it and dev2 changed"  # not "code changed"
        unitcache.use(None)
        assert resolve(defs) == after  # what resolution makes without the cache
    finally:
        unitcache.use(None)


def test_a_run_that_plans_nothing_reads_no_kept_spec(applied, cli, monkeypatch):
    """A kept unit's spec, most of its entry, is decoded only when asked for: a no-change
    dry-run asks for none; a change asks for the changed cluster's, and its base revision's."""
    from reconciler import resolve as resolve_module

    made = []
    deferred = resolve_module.Deferred.__init__

    def counting(self, make, runtime):
        deferred(self, lambda: made.append(1) or make(), runtime)

    repo = str(applied.path)
    code, out, err = cli("--dry-run", "--repo", repo)  # every cluster kept
    assert code == 0, out + err
    monkeypatch.setattr(resolve_module.Deferred, "__init__", counting)
    code, out, err = cli("--dry-run", "--repo", repo)
    assert code == 0 and "Nothing to do" in out, out + err
    assert made == []
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, out, err = cli("--dry-run", "--json", "--repo", repo)
    assert code == 2, err
    assert [u["key"] for u in json.loads(out)["units"]] == ["cluster:dev@local-a"]
    assert len(made) == 1  # the base revision's dev, for its health probe: the changed one is made anew


def test_a_kept_spec_that_does_not_decode_is_made_again(repo, tmp_path):
    """An entry whose checksum holds but whose spec is not a spec of this code (forged, or
    written by a bug) is never trusted: the spec is made again when it is read."""
    defs = load(GitSource(repo.path).working_tree())
    fresh = resolve(defs)
    unitcache.use(tmp_path / "units")
    try:
        resolve(defs)
        for entry in sorted((tmp_path / "units").glob("*/*/*.json")):
            head, _, body = entry.read_bytes().partition(b"\n")
            fields, _, _ = body.partition(b"\n")
            forged = fields + b"\n" + json.dumps({"name": "not a spec"}).encode()
            stored = json.loads(head)
            stored["checksum"] = hashlib.sha256(forged).hexdigest()
            entry.write_bytes(json.dumps(stored).encode() + b"\n" + forged)
        assert resolve(defs) == fresh
    finally:
        unitcache.use(None)


def test_a_cache_that_git_tracks_is_not_read(applied, cli):
    """An entry's checksum is anyone's to write: a parse entry forged to say two nodes are seven,
    committed (a pull request can), would plan seven. A cache that git tracks is never read, and
    the run says so; the plan is the definitions' own."""
    repo = str(applied.path)
    code, out, err = cli("--dry-run", "--repo", repo)  # every file parsed and kept
    assert code == 0, out + err
    (forged,) = [e for e in entries(applied) if json.loads(body(e))["path"] == "clusters/dev.yaml"]
    stored = json.loads(body(forged))
    stored["data"]["node_pools"]["compute"]["count"] = 7
    text = json.dumps(stored).encode()
    forged.write_bytes(hashlib.sha256(text).hexdigest().encode() + b"\n" + text)
    units = applied.path / ".reconcile" / "cache" / "units"
    shutil.rmtree(units)  # resolved again, from the parse
    code, out, err = cli("--dry-run", "--json", "--repo", repo)
    assert code == 2 and "cluster:dev@local-a" in out, err  # what an untracked, forged cache does (the user's own)

    from conftest import git

    git(applied.path, "add", "-f", str(forged.relative_to(applied.path)))
    git(applied.path, "commit", "-q", "-m", "a cache, committed")
    shutil.rmtree(units)
    code, out, err = cli("--dry-run", "--repo", repo)
    assert code == 0 and "Nothing to do" in out, out + err
    assert "git tracks" in err and "never trusted" in err


def test_the_entries_of_other_code_versions_are_removed_when_this_one_first_writes(repo, cli):
    """Each code version keeps its entries in a folder of its own, which no other version reads;
    the first entry this version writes removes the other folders (older layouts too), so the
    caches do not grow with every upgrade."""
    cache = repo.path / ".reconcile" / "cache"
    stale = [cache / "parsed" / "0123456789abcdef" / "ab" / "old.json", cache / "parsed" / "ab" / "older-layout.json",
             cache / "units" / "fedcba9876543210" / "cd" / "old.json"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert code == 2, err
    assert not any(p.exists() for p in stale)
    assert entries(repo) and list((cache / "units").glob("*/*/*.json"))  # this version's, kept
