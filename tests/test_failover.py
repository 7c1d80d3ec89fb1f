"""Moving and failing over whole clusters between local-a and local-b, on the real engine."""

from __future__ import annotations

import json

from reconciler import run
from reconciler.apply import APPLIED, apply
from reconciler.engine import select_engine
from reconciler.gitsource import GitSource
from reconciler.live import LiveStore
from reconciler.settings import Settings


def resources(repo, site: str, stack: str) -> list[str]:
    path = repo.path / ".reconcile" / "state" / site / f"{stack}.tfstate"
    return sorted(r["name"] for r in json.loads(path.read_text()).get("resources", [])) if path.exists() else []


class Witness:
    """Wraps the real engine and, before each apply, reads the real state files of both sites."""

    def __init__(self, engine, repo):
        self.engine, self.repo, self.seen = engine, repo, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def apply(self, workdir):
        self.seen.append((workdir.parent.name, workdir.name, {s: resources(self.repo, s, "cluster-dev") for s in ("local-a", "local-b")}))
        return self.engine.apply(workdir)


def test_move_then_fail_back(applied, cli):
    # move dev from local-a to local-b through the failover command (a branch with one commit)
    applied.replace("clusters/dev.yaml", "storage:\n", "storage:\n  on_move: keep\n")
    applied.commit("decide what a move does with dev's data")
    code, out, err = cli("failover", "--site", "local-a", "--repo", str(applied.path))
    assert code == 0, err
    assert "cluster dev: local-a -> local-b" in out
    applied.git("checkout", "-q", "failover/local-a")
    assert "site: local-b\nfailover: [local-a]" in applied.read("clusters/dev.yaml")
    assert "    - name: hpc-admins" in applied.read("clusters/dev.yaml")  # layout kept

    settings = Settings.build(applied.path, engine="embedded")
    store = LiveStore(settings.state_root)
    assessment = run.assess(settings, store)
    witness = Witness(select_engine("embedded", settings.work_dir, settings.state_root), applied)
    plans = run.plan(settings, assessment, witness.engine, store)
    results = apply(plans, witness, store, assessment.head.snapshot)
    assert {r.plan.selected.unit.key: r.outcome for r in results}["cluster:dev@local-a"] == APPLIED

    # from the engine's own state: when the source's destroy started, the target existed
    (before_destroy,) = [states for site, stack, states in witness.seen if site == "local-a" and stack == "cluster-dev"]
    assert "node_compute_0" in before_destroy["local-b"] and "node_compute_0" in before_destroy["local-a"]
    (before_create,) = [states for site, stack, states in witness.seen if site == "local-b" and stack == "cluster-dev"]
    assert before_create["local-b"] == []
    assert resources(applied, "local-a", "cluster-dev") == []

    # and back: local-b fails, dev returns to local-a
    applied.git("checkout", "-q", "main")
    applied.git("merge", "-q", "--ff-only", "failover/local-a")
    code, out, err = cli("failover", "--site", "local-b", "--dry-run", "--repo", str(applied.path))
    assert code == 2 and "cluster dev: local-b -> local-a" in out and "cluster slurm-hpc: local-b -> local-a" in out
    code, out, err = cli("failover", "--site", "local-b", "--branch", "back", "--repo", str(applied.path))
    assert code == 0, err
    applied.git("checkout", "-q", "back")
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 0, out + err
    assert "node_compute_0" in resources(applied, "local-a", "cluster-dev")
    assert resources(applied, "local-b", "cluster-dev") == []


def test_failover_refuses_a_cluster_with_no_realizable_target(applied, cli):
    applied.replace("clusters/dev.yaml", "failover: [local-b]", "failover: []")
    applied.commit("no failover for dev")
    code, out, err = cli("failover", "--site", "local-a", "--patch", "-", "--repo", str(applied.path))
    assert code == 1
    assert "cluster dev: REFUSED, no realizable failover site" in err and "no failover sites are listed" in err
    assert "REFUSED" not in out  # standard output is the patch alone


def test_failover_patch_applies_with_git(applied, cli, tmp_path):
    code, out, err = cli("failover", "--site", "local-b", "--patch", str(tmp_path / "f.patch"), "--repo", str(applied.path))
    assert code == 0
    applied.git("apply", "--check", str(tmp_path / "f.patch"))
    applied.git("apply", str(tmp_path / "f.patch"))  # what the patch does: slurm-hpc leaves local-b
    assert "site: local-a" in applied.read("clusters/slurm-hpc.yaml").split("failover:")[0]


def test_a_second_failover_names_the_branch_it_left_and_force_replaces_it(applied, cli):
    code, out, err = cli("failover", "--site", "local-b", "--repo", str(applied.path))
    assert code == 0, err
    first = applied.git("rev-parse", "failover/local-b").strip()
    code, out, err = cli("failover", "--site", "local-b", "--repo", str(applied.path))
    assert code == 1 and "Traceback" not in err
    assert f"branch failover/local-b exists already (at {first[:7]}" in err and "replace it with --force" in err
    code, out, err = cli("failover", "--site", "local-b", "--force", "--repo", str(applied.path))
    assert code == 0, err
    assert "committed definitions only" in out


def test_a_failover_dry_run_shows_uncommitted_edits_and_the_patch_goes_alone_to_stdout(applied, cli, tmp_path):
    applied.replace("clusters/slurm-hpc.yaml", "failover: [local-a, aws-zurich]", "failover: [aws-zurich, local-a]")  # not committed
    code, out, err = cli("failover", "--site", "local-b", "--patch", "-", "--repo", str(applied.path))
    assert "slurm-hpc: local-b -> local-a" in err  # the branch and the patch hold what is committed
    (tmp_path / "f.patch").write_text(out)
    applied.git("stash")
    applied.git("apply", "--check", str(tmp_path / "f.patch"))  # standard output is a patch and nothing else
    applied.git("stash", "pop")
    code, out, err = cli("failover", "--site", "local-b", "--dry-run", "--repo", str(applied.path))
    assert "failover of local-b (from working tree)" in out and "slurm-hpc: local-b -> aws-zurich" in out


def test_a_cluster_that_runs_for_real_never_fails_over_to_emulated_nodes_unasked(repo, cli, tmp_path):
    """icon runs on gcp-netherlands; its last failover site, local-a, is a records site: nothing
    runs there, and its target would pass the health gate on outputs alone."""
    repo.replace("clusters/icon.yaml", "failover: [aws-frankfurt, gcp-zurich, local-a]", "failover: [local-a]")
    repo.commit("icon fails over on premises")
    code, out, err = cli("failover", "--site", "gcp-netherlands", "--patch", str(tmp_path / "f.patch"), "--repo", str(repo.path))
    assert code == 1
    assert "cluster icon: REFUSED" in out and "local-a: emulated nodes" in out and "--allow-emulated" in out
    code, out, err = cli("failover", "--site", "gcp-netherlands", "--patch", str(tmp_path / "f.patch"), "--allow-emulated",
                         "--repo", str(repo.path))
    assert code == 0 and "cluster icon: gcp-netherlands -> local-a" in out, out + err
