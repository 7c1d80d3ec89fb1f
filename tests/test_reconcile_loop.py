"""The whole loop on the local platform, with real git repositories and a real engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

LOCAL_UNITS = ["site:local-a", "site:local-b", "cluster:dev@local-a", "cluster:slurm-hpc@local-b"]
ENGINES = ["embedded"] + (["terraform"] if shutil.which("terraform") else []) + (["tofu"] if shutil.which("tofu") else [])


def dry_run(cli, repo, *extra):
    code, out, err = cli("--dry-run", "--json", "--repo", str(repo.path), *extra)
    return code, json.loads(out)


def state_resources(repo, site: str, stack: str) -> list[str]:
    path = repo.path / ".reconcile" / "state" / site / f"{stack}.tfstate"
    state = json.loads(path.read_text())
    return sorted(f"{r['type']}.{r['name']}" for r in state.get("resources", []))


@pytest.mark.parametrize("engine", ENGINES)
def test_dry_run_apply_then_nothing_to_do(repo, cli, engine):
    code, plan = dry_run(cli, repo, "--engine", engine)
    assert code == 2
    assert [u["key"] for u in plan["units"]] == LOCAL_UNITS
    assert all(u["reasons"] == ["never applied"] and u["changes"]["create"] > 0 for u in plan["units"])
    state = repo.path / ".reconcile" / "state"  # a plan leaves no empty state directory behind (its lock made them)
    assert not state.is_dir() or list(state.iterdir()) == []
    assert sorted(plan["unchecked"]) == [
        "cluster:gpu-ai@aws-frankfurt",
        "cluster:icon@gcp-netherlands",
        "site:aws-frankfurt",
        "site:aws-zurich",
        "site:gcp-netherlands",
        "site:gcp-zurich",
    ]
    assert engine in plan["engine"]

    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", engine)
    assert code == 0, err
    assert "cluster dev on local-a: applied" in out
    nodes = [r for r in state_resources(repo, "local-a", "cluster-dev") if r.startswith("terraform_data.node_")]
    assert nodes == ["terraform_data.node_compute_0", "terraform_data.node_compute_1", "terraform_data.node_login_0"]

    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", engine)
    assert code == 0, out
    assert "Nothing to do" in out
    assert "Up to date: site local-a, site local-b, cluster dev on local-a, cluster slurm-hpc on local-b\n" in out  # named


def test_a_long_list_of_stacks_is_counted_not_named():
    """Beyond a dozen, the summary's lists are counts by kind (a thousand names on one line
    hide the one that matters); `--json` still lists every stack."""
    from types import SimpleNamespace

    from reconciler.render import MAX_LISTED, listing

    def units(sites, clusters):
        return ([SimpleNamespace(kind="site", title=f"site s{i}") for i in range(sites)]
                + [SimpleNamespace(kind="cluster", title=f"cluster c{i} on s0") for i in range(clusters)])

    assert listing(units(2, MAX_LISTED - 2)) == ", ".join(u.title for u in units(2, MAX_LISTED - 2))
    assert listing(units(8, 980)) == "988 stacks (8 sites, 980 clusters; `--json` lists each)"
    assert listing(units(1, MAX_LISTED)) == f"{MAX_LISTED + 1} stacks (1 site, {MAX_LISTED} clusters; `--json` lists each)"


def test_parallel_plans_give_what_serial_plans_give(repo, cli):
    """Independent stacks plan at once (--parallelism, as apply); the output keeps its order."""
    base = ("plan", "--json", "--repo", str(repo.path), "--engine", "embedded")
    code, serial, err = cli(*base, "--parallelism", "1")
    assert code == 2, err
    code, parallel, err = cli(*base, "--parallelism", "4")
    assert code == 2, err
    assert json.loads(parallel) == json.loads(serial)
    assert sum(u["status"] == "planned" for u in json.loads(serial)["units"]) >= 4
    code, out, _ = cli(*base, "--parallelism", "0")
    assert code == 1 and json.loads(out)["error"] == "--parallelism 0: give a whole number of stacks, 1 or more"


def test_editing_a_cluster_selects_only_that_cluster(applied, cli):
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, plan = dry_run(cli, applied)
    assert code == 2
    (unit,) = plan["units"]
    assert unit["key"] == "cluster:dev@local-a"
    assert unit["reasons"][0] == "cluster file changed: clusters/dev.yaml"
    # growing a pool creates a node and changes nothing else (nodes are dynamic: no list to update)
    assert unit["changes"] == {"create": 1, "update": 0, "replace": 0, "destroy": 0, "move": 0, "import": 0}
    assert [r["address"] for r in unit["resources"]] == ["terraform_data.node_compute_2"]


def test_reshaping_nodes_replaces_them(applied, cli):
    applied.replace("clusters/dev.yaml", "    cores: 8\n", "    cores: 16\n")
    code, plan = dry_run(cli, applied)
    (unit,) = plan["units"]
    assert unit["changes"]["replace"] == 2


def test_editing_a_site_selects_the_site_and_its_clusters(applied, cli):
    applied.replace("sites/local-a.yaml", "operator: scitas", "operator: scitas-ops")
    code, plan = dry_run(cli, applied)
    assert code == 2
    reasons = {u["key"]: u["reasons"][0] for u in plan["units"]}
    assert reasons == {"site:local-a": "site changed: sites/local-a.yaml", "cluster:dev@local-a": "site changed: sites/local-a.yaml"}


def test_editing_a_profile_selects_the_clusters_that_use_it(applied, cli):
    applied.replace("clusters/profiles/slurm.yaml", "MaxJobCount: 50000", "MaxJobCount: 90000")
    code, plan = dry_run(cli, applied)
    assert code == 2
    units = {u["key"]: u for u in plan["units"]}
    assert set(units) == {"cluster:slurm-hpc@local-b", "cluster:icon@gcp-netherlands"}
    assert units["cluster:slurm-hpc@local-b"]["reasons"][0] == "profile changed: clusters/profiles/slurm.yaml"
    assert units["cluster:slurm-hpc@local-b"]["changes"]["update"] == 2  # the scheduler, and the config version
    icon = units["cluster:icon@gcp-netherlands"]  # no credentials: a configuration-level diff
    assert icon["status"] == "offline" and icon["changes"]["update"] > 0


def test_committed_change_on_a_branch_is_compared_with_main(applied, cli):
    applied.git("checkout", "-q", "-b", "more-nodes")
    applied.replace("clusters/slurm-hpc.yaml", "count: 4", "count: 6")
    applied.commit("more nodes")
    code, plan = dry_run(cli, applied)
    assert code == 2
    (unit,) = plan["units"]
    assert unit["key"] == "cluster:slurm-hpc@local-b" and unit["reasons"][0] == "cluster file changed: clusters/slurm-hpc.yaml"
    # --head reads the committed revision, not the working tree
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, plan = dry_run(cli, applied, "--head", "HEAD")
    assert [u["key"] for u in plan["units"]] == ["cluster:slurm-hpc@local-b"]


def test_live_state_out_of_date_without_any_git_change(applied, cli):
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 0, err
    applied.git("checkout", "--", "clusters/dev.yaml")  # git is back, live is not
    code, plan = dry_run(cli, applied)
    assert code == 2
    (unit,) = plan["units"]
    assert unit["key"] == "cluster:dev@local-a"
    assert unit["reasons"] == [f"live state differs from git (last applied at {plan['head']['revision'][:7]})"]
    assert unit["changes"]["destroy"] == 1 and unit["changes"]["update"] == 0


def test_removed_definition_is_destroyed_explicitly(applied, cli):
    applied.git("checkout", "-q", "-b", "retire-dev")
    (applied.path / "clusters" / "dev.yaml").unlink()
    applied.commit("retire dev")
    code, plan = dry_run(cli, applied)
    assert code == 2
    (unit,) = plan["units"]
    assert (unit["key"], unit["action"], unit["reasons"]) == ("cluster:dev@local-a", "destroy", ["definition removed: clusters/dev.yaml"])
    assert unit["changes"]["destroy"] == len(state_resources(applied, "local-a", "cluster-dev")) and unit["changes"]["create"] == 0
    assert unit["destroys_data"] == ["terraform_data.storage_shared"]  # shown before any decision is asked
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 1 and "destroying cluster dev on local-a needs an explicit decision" in err
    assert "terraform_data.node_compute_0" in state_resources(applied, "local-a", "cluster-dev")
    code, out, err = cli("apply", "--auto-approve", "--allow-destroy", "--repo", str(applied.path))
    assert code == 1 and "would destroy data (terraform_data.storage_shared)" in err  # its shared filesystem
    assert "terraform_data.storage_shared" in state_resources(applied, "local-a", "cluster-dev")
    code, out, err = cli("apply", "--auto-approve", "--allow-destroy", "--allow-data-loss", "--repo", str(applied.path))
    assert code == 0, err
    assert state_resources(applied, "local-a", "cluster-dev") == []
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert code == 0, out


def test_stack_in_live_state_but_in_no_definition_is_destroyed(applied, cli):
    (applied.path / "clusters" / "dev.yaml").unlink()
    applied.commit("retire dev on main directly")  # base == head: only live state remembers dev
    code, plan = dry_run(cli, applied)
    (unit,) = plan["units"]
    assert unit["action"] == "destroy" and unit["reasons"] == ["in live state but defined neither at base nor at head"]


def test_a_site_removed_with_its_cluster_on_main_is_found_from_history_and_destroyed(applied, cli):
    """Site local-a and its cluster removed in one commit on main (base == head) and then a run
    skipped: neither revision names local-a any more, so only git's history says where its
    state lived. Its stacks are found there and destroyed as a reviewed destroy."""
    (applied.path / "clusters" / "dev.yaml").unlink()
    (applied.path / "sites" / "local-a.yaml").unlink()
    applied.replace("clusters/slurm-hpc.yaml", "failover: [local-a, aws-zurich]", "failover: [aws-zurich]")
    applied.replace("clusters/icon.yaml", ", local-a]", "]")
    applied.commit("retire local-a and dev")
    applied.replace("clusters/slurm-hpc.yaml", "description:", "# a later commit: the removal is no longer the last one\ndescription:")
    applied.commit("later change")
    code, plan = dry_run(cli, applied)
    assert code == 2
    destroyed = {u["key"]: u["reasons"] for u in plan["units"] if u["action"] == "destroy"}
    assert set(destroyed) == {"site:local-a", "cluster:dev@local-a"}, plan["units"]
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 1 and "needs an explicit decision" in err  # a destroy is never silent
    code, out, err = cli("apply", "--auto-approve", "--allow-destroy", "--allow-data-loss", "--repo", str(applied.path))
    assert code == 0, out + err
    assert state_resources(applied, "local-a", "cluster-dev") == [] and state_resources(applied, "local-a", "landing-zone") == []
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert code == 0, out + err


def test_invalid_input_exits_1_and_applies_nothing(repo, cli):
    repo.replace("clusters/dev.yaml", "    cores: 8\n", "    cores: eight\n")
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1
    assert "clusters/dev.yaml:13:12: error: node_pools.compute.cores: Input should be a valid integer, got 'eight'" in err
    assert "nothing was planned or applied" in err
    assert not (repo.path / ".reconcile" / "state").exists()
    code, out, err = cli("validate", "--json", "--repo", str(repo.path))
    assert code == 1 and json.loads(out)["problems"][0]["line"] == 13


def test_a_failed_plan_exits_1(applied, cli):
    state = applied.path / ".reconcile" / "state" / "local-a" / "cluster-dev.tfstate"
    state.write_text("{ this is not state")
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert code == 1
    assert "plan FAILED" in out


def test_apply_without_a_terminal_needs_auto_approve(repo, cli):
    code, out, err = cli("apply", "--repo", str(repo.path))
    assert code == 1 and "--auto-approve" in err
    assert not list((repo.path / ".reconcile" / "state").rglob("*.reconcile.json"))


def test_usage_errors_exit_1_not_2(cli):
    code, out, err = cli("plan", "--engine", "nonsense")
    assert code == 1 and "invalid choice" in err


def test_nothing_affected_does_not_start_node(applied):
    script = (
        "import json, sys\n"
        "from reconciler.cli import main\n"
        f"code = main(['--dry-run', '--repo', {str(applied.path)!r}])\n"
        "print(json.dumps({'code': int(code), 'node': any(m in sys.modules for m in ('jsii', 'cdktf'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "node": False}


def test_readme_command_runs_from_the_wrapper(repo):
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "reconcile"), "--dry-run", "--repo", str(repo.path)],
        capture_output=True, text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "cluster dev on local-a [local]" in done.stdout and "Plan:" in done.stdout


def test_all_plans_every_readable_stack_and_finds_no_drift_after_apply(applied, cli):
    code, plan = dry_run(cli, applied, "--all")
    assert code == 0
    assert [u["key"] for u in plan["units"]] == LOCAL_UNITS
    assert all(u["reasons"] == ["requested with --all"] and not u["pending"] for u in plan["units"])


def move_dev(repo, extra: str = "", on_move: str = "") -> None:
    repo.git("checkout", "-q", "-b", "move-dev")
    repo.replace("clusters/dev.yaml", "site: local-a\nfailover: [local-b]", "site: local-b\nfailover: [local-a]")
    if on_move:
        repo.replace("clusters/dev.yaml", "storage:\n", f"storage:\n  on_move: {on_move}\n")
    if extra:
        repo.write("clusters/dev.yaml", repo.read("clusters/dev.yaml") + extra)
    repo.commit("move dev to local-b")


def test_move_creates_the_target_checks_it_then_destroys_the_source_keeping_data(applied, cli):
    move_dev(applied, on_move="keep")
    code, plan = dry_run(cli, applied)
    assert code == 2
    units = {(u["action"], u["key"]): u for u in plan["units"]}
    assert units[("apply", "cluster:dev@local-b")]["reasons"][0] == "placed here, was on local-a"
    source = units[("destroy", "cluster:dev@local-a")]
    assert source["reasons"] == ["moved to local-b: destroy here"]
    assert plan["moves"] == [{"cluster": "dev", "from": "local-a", "to": "local-b", "source": "cluster:dev@local-a", "target": "cluster:dev@local-b"}]
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert "MOVE cluster dev: local-a [local] -> local-b [local] (make before break)" in out
    assert "MOVE dev 2/2: destroy on local-a, only once local-b is healthy" in out
    assert source["kept"] == ["terraform_data.storage_shared"]
    actions = {r["address"]: r["action"] for r in source["resources"]}
    assert actions["terraform_data.storage_shared"] == "forget" and actions["terraform_data.node_compute_0"] == "destroy"
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 0, out + err
    assert "cluster dev on local-b: applied: healthy: outputs agree with the definition" in out
    assert state_resources(applied, "local-a", "cluster-dev") == []
    assert "terraform_data.node_compute_1" in state_resources(applied, "local-b", "cluster-dev")
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert code == 0, out


def test_move_of_a_cluster_holding_data_needs_a_decision(applied, cli):
    move_dev(applied)
    code, plan = dry_run(cli, applied)
    assert code == 2
    (source,) = [u for u in plan["units"] if u["action"] == "destroy"]
    assert source["blocked"].startswith("the move would destroy data (terraform_data.storage_shared); set storage.on_move")
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 1
    assert "cluster dev on local-a: refused" in out
    assert "terraform_data.storage_shared" in state_resources(applied, "local-a", "cluster-dev")


def test_unhealthy_target_leaves_the_source_in_place_and_exits_1(applied, cli):
    probe = "health_check:\n  command: [sh, -c, 'echo slurmctld down >&2; exit 1']\n  timeout_s: 1\n"
    move_dev(applied, probe, on_move="drop")
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 1
    assert "health check failed, the source stays" in out and "slurmctld down" in out
    assert "terraform_data.node_compute_0" in state_resources(applied, "local-a", "cluster-dev")
    assert "terraform_data.node_compute_0" in state_resources(applied, "local-b", "cluster-dev")
    code, plan = dry_run(cli, applied)  # the source's destroy is still pending, gated again
    keys = {(u["action"], u["key"]) for u in plan["units"]}
    assert keys == {("destroy", "cluster:dev@local-a"), ("apply", "cluster:dev@local-b")}
