"""Real sequences on the engine over three local sites: moves (copy and keep), a revert, a
failover and a removal, each committed and applied the way a user would. After every step,
live state has converged (a dry-run finds nothing to do, every cluster's stack lives where git
places it and nowhere else), and the data went where the definitions said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LOCAL = ("local-a", "local-b", "local-c")


def add_third_site(repo) -> None:
    text = repo.read("sites/local-b.yaml").replace("local-b", "local-c").replace("10.20.", "10.90.")
    repo.write("sites/local-c.yaml", text.replace("region: lugano", "region: geneva"))
    repo.replace("clusters/dev.yaml", "failover: [local-b]", "failover: [local-b, local-c]")
    repo.replace("clusters/dev.yaml", "storage:\n", "storage:\n  on_move: copy\n")
    repo.commit("a third site, and dev copies its data when it moves")


def apply(cli, repo, *extra: str) -> tuple[int, str, str]:
    return cli("apply", "--auto-approve", "--repo", str(repo.path), *extra)


def volumes(cli, repo) -> list[dict]:
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    assert code == 0, out + err
    return [v for v in json.loads(out)["volumes"] if v["cluster"] == "dev" and v["volume"] == "shared"]


def dev_volume(cli, repo, site: str, status: str = "in use") -> Path:
    (found,) = [v for v in volumes(cli, repo) if v["site"] == site and v["status"] == status]
    return Path(found["path"])


def placement(repo) -> dict[str, str]:
    """cluster -> site, for the clusters git places on local sites."""
    out = {}
    for path in (repo.path / "clusters").glob("*.yaml"):
        text = path.read_text()
        site = text.split("placement:\n  site: ", 1)[1].split("\n", 1)[0]
        if site in LOCAL:
            out[text.split("name: ", 1)[1].split("\n", 1)[0]] = site
    return out


def live(repo) -> dict[str, set[str]]:
    """cluster -> the local sites where a record of its stack exists."""
    out: dict[str, set[str]] = {}
    for site in LOCAL:
        for record in (repo.path / ".reconcile" / "state" / site).glob("cluster-*.reconcile.json"):
            out.setdefault(json.loads(record.read_text())["name"], set()).add(site)
    return out


def assert_converged(cli, repo) -> None:
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert code == 0, out + err
    assert live(repo) == {name: {site} for name, site in placement(repo).items()}


def apply_and_converge(cli, repo, *extra: str) -> str:
    """One step: apply what git says, which must succeed, after which nothing is left to do."""
    code, out, err = apply(cli, repo, *extra)
    assert code == 0, out + err
    assert_converged(cli, repo)
    return out


def test_moves_a_revert_a_failover_and_a_removal_over_three_sites(repo, cli):
    add_third_site(repo)
    apply_and_converge(cli, repo)
    (dev_volume(cli, repo, "local-a") / "results.txt").write_text("a month of jobs\n")

    # 1. a -> b, copying: the data arrives, the source is gone
    repo.place("dev", "local-b")
    repo.commit("move dev to local-b")
    assert "copied shared to local-b" in apply_and_converge(cli, repo)
    assert (dev_volume(cli, repo, "local-b") / "results.txt").read_text() == "a month of jobs\n"
    assert not [v for v in volumes(cli, repo) if v["site"] == "local-a"]

    # 2. b -> c, keeping: the target starts empty, the source's volume is retained on b
    repo.place("dev", "local-c")
    repo.replace("clusters/dev.yaml", "on_move: copy", "on_move: keep")
    repo.commit("move dev to local-c, keeping its data on local-b")
    apply_and_converge(cli, repo)
    assert (dev_volume(cli, repo, "local-b", "retained") / "results.txt").exists()
    assert not (dev_volume(cli, repo, "local-c") / "results.txt").exists()

    # 3. revert: back to b, which takes its retained volume back; c's is retained in turn
    repo.git("revert", "--no-edit", "HEAD")
    repo.replace("clusters/dev.yaml", "on_move: copy", "on_move: keep")  # the revert keeps what c holds
    repo.commit("keep what dev wrote on local-c")
    assert "adopts retained volume" in apply_and_converge(cli, repo)
    assert (dev_volume(cli, repo, "local-b") / "results.txt").read_text() == "a month of jobs\n"
    assert dev_volume(cli, repo, "local-c", "retained")

    # 4. local-b is down: fail over, which re-places dev at its first realizable failover site
    code, out, err = cli("failover", "--site", "local-b", "--repo", str(repo.path))
    assert code == 0, out + err
    repo.git("merge", "-q", "--ff-only", "failover/local-b")
    assert "site: local-c" in repo.read("clusters/dev.yaml")
    assert "adopts retained volume" in apply_and_converge(cli, repo)  # what dev left on local-c in step 3
    assert dev_volume(cli, repo, "local-b", "retained")

    # 5. removal: refused without both decisions; with them, dev is gone, its retained volumes stay listed
    repo.git("rm", "-q", "clusters/dev.yaml")
    repo.commit("retire dev")
    code, out, err = apply(cli, repo)
    assert code == 1 and "--allow-destroy" in err
    assert live(repo)["dev"] == {"local-c"}
    code, out, err = apply(cli, repo, "--allow-destroy")
    assert code == 1 and "--allow-data-loss" in err
    apply_and_converge(cli, repo, "--allow-destroy", "--allow-data-loss")
    assert "dev" not in live(repo)
    assert {v["site"] for v in volumes(cli, repo)} == {"local-b"}  # retained on b; c's was destroyed with dev
    assert (dev_volume(cli, repo, "local-b", "retained") / "results.txt").exists()
