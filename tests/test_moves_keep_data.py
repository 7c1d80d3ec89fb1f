"""Moves never lose data: each case reproduces a way the earlier main lost data or half-applied
a change, on the real engine with local sites, and shows what happens now."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler import datacopy, gate
from reconciler.affected import APPLY, DESTROY, Selected
from reconciler.plan import Change, PlanSummary
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.run import OFFLINE, PLANNED, UnitPlan
from rpi.spec import StateLocation


def resources(repo, site: str, stack: str = "cluster-dev") -> list[str]:
    path = repo.path / ".reconcile" / "state" / site / f"{stack}.tfstate"
    if not path.exists():
        return []
    return sorted(f"{r['type']}.{r['name']}" for r in json.loads(path.read_text()).get("resources", []))


def record(repo, site: str, stack: str = "cluster-dev"):
    path = repo.path / ".reconcile" / "state" / site / f"{stack}.reconcile.json"
    return json.loads(path.read_text()) if path.exists() else None


def place_dev(repo, site: str, on_move: str = "") -> None:
    other = "local-a" if site == "local-b" else "local-b"
    text = repo.read("clusters/dev.yaml")
    for here in ("local-a", "local-b"):
        text = text.replace(f"site: {here}\nfailover: [{'local-b' if here == 'local-a' else 'local-a'}]", f"site: {site}\nfailover: [{other}]")
    if on_move:
        text = text.replace("storage:\n", f"storage:\n  on_move: {on_move}\n")
    repo.write("clusters/dev.yaml", text)


def apply(cli, repo, *extra):
    return cli("apply", "--auto-approve", "--repo", str(repo.path), *extra)


def test_reverting_a_move_is_blocked_and_destroys_nothing(applied, cli):
    place_dev(applied, "local-b", on_move="keep")  # moved, uncommitted, and applied
    code, out, err = apply(cli, applied)
    assert code == 0, out + err
    assert "terraform_data.storage_shared" in resources(applied, "local-b")

    applied.git("checkout", "clusters/dev.yaml")  # back to local-a, which says nothing of its data
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert "why: moved back to local-a: live here, but git places it on local-a; destroy here" in out
    assert "MOVE cluster dev: local-b [local] -> local-a [local]" in out
    assert "BLOCKED: the move would destroy data (terraform_data.storage_shared)" in out
    code, out, err = apply(cli, applied)
    assert code == 1
    assert "terraform_data.storage_shared" in resources(applied, "local-b")  # the data is still there
    assert "terraform_data.node_compute_0" in resources(applied, "local-b")  # and so is the cluster
    assert resources(applied, "local-a") == []  # no half of the move ran
    assert "refused: cluster dev on local-a: it is one change with destroying cluster dev on local-b" in err


def test_a_blocked_move_creates_nothing(applied, cli):
    place_dev(applied, "local-b")  # no storage.on_move: the destroy half is blocked
    code, out, err = apply(cli, applied)
    assert code == 1
    assert "refused: cluster dev on local-b: it is one change with destroying cluster dev on local-a" in err
    assert resources(applied, "local-b") == [] and record(applied, "local-b") is None
    assert "terraform_data.storage_shared" in resources(applied, "local-a")


def test_a_move_whose_target_failed_stays_unfinished_after_merge(applied, cli):
    probe = "health_check:\n  command: [sh, -c, 'test -e \"$HOME/healthy-marker\"']\n  timeout_s: 1\n"
    applied.git("checkout", "-q", "-b", "move-dev")
    place_dev(applied, "local-b", on_move="drop")
    applied.write("clusters/dev.yaml", applied.read("clusters/dev.yaml") + probe)
    applied.commit("move dev to local-b")
    code, out, err = apply(cli, applied)
    assert code == 1 and "health check failed, the source stays" in out

    applied.git("checkout", "-q", "main")
    applied.git("merge", "-q", "--no-ff", "move-dev", "-m", "Merge move-dev")
    for _ in range(2):  # on main the compared revisions are equal: the source is known from live state only
        code, out, err = apply(cli, applied, "--allow-destroy", "--allow-data-loss")
        assert code == 1, out + err
        assert "cluster dev on local-b: failed: health check failed, the source stays" in out
        assert "cluster dev on local-a: skipped: cluster:dev@local-b did not succeed" in out
        assert "terraform_data.storage_shared" in resources(applied, "local-a")
        assert "terraform_data.node_compute_0" in resources(applied, "local-a")


def test_an_apply_of_offline_plans_only_names_what_it_did_not_apply(applied, cli, monkeypatch):
    applied.replace("sites/gcp-zurich.yaml", "    count: 3\n", "    count: 5\n")
    code, out, err = apply(cli, applied)
    assert code == 2, out + err  # the change is still pending
    assert "not applied: site gcp-zurich: planned offline, no gcp credentials here; its changes are still pending" in err
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # the apply workflow expects every unit to apply
    code, out, err = apply(cli, applied)
    assert code == 1 and "not applied: site gcp-zurich" in err


# ---------------------------------------------------------------- the gate on its own


def _unit(kind: str, name: str, site: str, keep=None) -> Unit:
    spec = type("Spec", (), {"on_move": {True: "keep", False: "drop", None: ""}[keep]})() if kind == CLUSTER else None
    return Unit(kind, name, site, "local", (f"clusters/{name}.yaml",), (), spec, "h", StateLocation("local", site, f"{name}.tfstate"))


def _plan(unit: Unit, action: str, *changes: Change) -> UnitPlan:
    return UnitPlan(Selected(unit, action, ("test",)), PLANNED, PlanSummary(changes or (Change("terraform_data.x", "create"),)))


DATA = Change("terraform_data.storage_shared", "delete", holds_data=True)
NODE = Change("terraform_data.node_0", "delete")


def test_gate_refuses_data_loss_without_a_decision_and_the_whole_group():
    source, target = _unit(CLUSTER, "dev", "local-a"), _unit(CLUSTER, "dev", "local-b")
    other = _unit(CLUSTER, "web", "local-a")
    plans = [_plan(target, APPLY), _plan(source, DESTROY, DATA, NODE), _plan(other, APPLY)]
    refused = gate.refusals(plans, {target.key: target, other.key: other}, gate.Decisions())
    assert set(refused) == {(DESTROY, source.key), (APPLY, target.key)}
    assert "would destroy data (terraform_data.storage_shared)" in refused[(DESTROY, source.key)]
    assert refused[(APPLY, target.key)].startswith("it is one change with destroying cluster dev on local-a")
    assert gate.refusals(plans, {target.key: target, other.key: other}, gate.Decisions(data_loss=True)) == {}


def test_gate_lets_a_move_that_drops_its_data_through():
    source, target = _unit(CLUSTER, "dev", "local-a"), _unit(CLUSTER, "dev", "local-b", keep=False)
    plans = [_plan(target, APPLY), _plan(source, DESTROY, DATA)]
    assert gate.refusals(plans, {target.key: target}, gate.Decisions()) == {}


def test_gate_keeps_a_site_with_the_clusters_removed_with_it():
    site, cluster = _unit(SITE, "local-c", "local-c"), _unit(CLUSTER, "dev", "local-c")
    plans = [_plan(cluster, DESTROY, NODE), _plan(site, DESTROY, NODE)]
    assert set(gate.refusals(plans, {}, gate.Decisions())) == {(DESTROY, site.key), (DESTROY, cluster.key)}
    plans = [_plan(cluster, DESTROY, DATA), _plan(site, DESTROY, NODE)]
    refused = gate.refusals(plans, {}, gate.Decisions(destroy=True))
    assert "would destroy data" in refused[(DESTROY, cluster.key)]
    assert refused[(DESTROY, site.key)].startswith("it is one change with destroying cluster dev on local-c")


def test_gate_passes_what_is_not_pending_and_keeps_earlier_refusals():
    unit = _unit(CLUSTER, "dev", "local-a")
    idle = UnitPlan(Selected(unit, APPLY, ("test",)), PLANNED, PlanSummary(()))
    assert gate.refusals([idle], {unit.key: unit}, gate.Decisions()) == {}
    reviewed = _plan(unit, APPLY)
    reviewed.blocked = "differs from the reviewed plan"
    assert gate.refusals([reviewed], {unit.key: unit}, gate.Decisions(True, True)) == {(APPLY, unit.key): "differs from the reviewed plan"}
    offline = _plan(unit, APPLY)
    offline.status = OFFLINE
    assert gate.refusals([offline], {unit.key: unit}, gate.Decisions()) == {}


def test_gate_messages_say_what_to_decide_and_where():
    site, source, target = _unit(SITE, "local-c", "local-c"), _unit(CLUSTER, "dev", "local-a"), _unit(CLUSTER, "dev", "local-b")
    changed = _unit(CLUSTER, "web", "local-a")
    plans = [_plan(site, DESTROY, NODE), _plan(target, APPLY), _plan(source, DESTROY, DATA), _plan(changed, APPLY, Change("terraform_data.storage_shared", "replace", holds_data=True))]
    refused = gate.refusals(plans, {target.key: target, changed.key: changed}, gate.Decisions())
    assert refused == {
        (DESTROY, site.key): "destroying site local-c needs an explicit decision: the `reconcile:allow-destroy` label on the pull request, or --allow-destroy",
        (DESTROY, source.key): "destroying cluster dev on local-a would destroy data (terraform_data.storage_shared); that needs an explicit decision: "
        "the `reconcile:allow-data-loss` label on the pull request, or --allow-data-loss; or storage.on_move in clusters/dev.yaml",
        (APPLY, target.key): "it is one change with destroying cluster dev on local-a, which is refused: no part of it applies",
        (APPLY, changed.key): "this change to cluster web on local-a would destroy data (terraform_data.storage_shared); that needs an explicit decision: "
        "the `reconcile:allow-data-loss` label on the pull request, or --allow-data-loss",
    }
    target.spec.on_move = ""
    refused = gate.refusals([_plan(target, APPLY, Change("terraform_data.a", "delete", holds_data=True), Change("terraform_data.b", "replace", holds_data=True)), _plan(source, DESTROY, NODE)], {target.key: target}, gate.Decisions())
    assert refused[(APPLY, target.key)].startswith("this change to cluster dev on local-b would destroy data (terraform_data.a, terraform_data.b);")
    assert refused[(DESTROY, source.key)] == "it is one change with applying cluster dev on local-b, which is refused: no part of it applies"


def test_gate_refuses_an_idle_move_target_with_its_refused_source():
    """The target was applied by an earlier run; its source's destroy is refused: the target
    is refused too, so that the run reports the move as not done."""
    source, target = _unit(CLUSTER, "dev", "local-a"), _unit(CLUSTER, "dev", "local-b")
    idle = UnitPlan(Selected(target, APPLY, ("target of a move",)), PLANNED, PlanSummary(()))
    refused = gate.refusals([idle, _plan(source, DESTROY, DATA)], {target.key: target}, gate.Decisions())
    assert set(refused) == {(APPLY, target.key), (DESTROY, source.key)}


def test_gate_passes_a_plan_that_has_no_summary():
    unit = _unit(CLUSTER, "dev", "local-a")
    unsupported = UnitPlan(Selected(unit, APPLY, ("test",)), "not synthesizable yet")
    assert unsupported.pending and gate.refusals([unsupported], {unit.key: unit}, gate.Decisions()) == {}


def test_site_and_unit_scope_an_apply_and_keep_change_groups_whole(repo, cli):
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--site", "local-b")
    assert code == 0, out + err
    assert "Left out by --site/--unit, still to do: site local-a, cluster dev on local-a" in out
    assert resources(repo, "local-b", "landing-zone") and resources(repo, "local-a", "landing-zone") == []
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--unit", "site:local-a")
    assert code == 0, out + err
    assert resources(repo, "local-a", "landing-zone") and resources(repo, "local-a") == []  # dev is not in scope
    code, out, err = apply(cli, repo)
    assert code == 0, out + err

    place_dev(repo, "local-b", on_move="keep")
    code, out, err = cli("--dry-run", "--json", "--repo", str(repo.path), "--unit", "cluster:dev@local-a")
    keys = [(u["action"], u["key"]) for u in json.loads(out)["units"]]
    assert keys == [(APPLY, "cluster:dev@local-b"), (DESTROY, "cluster:dev@local-a")]  # the whole move
    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--site", "local-c")
    assert code == 1 and "--site local-c: no such site (sites: aws-frankfurt, aws-zurich," in err


# ---------------------------------------------------------------- retained volumes


def volumes(cli, repo) -> list[dict]:
    code, out, err = cli("volumes", "--json", "--repo", str(repo.path))
    assert code == 0, out + err
    return json.loads(out)["volumes"]


def volume_of(cli, repo, site: str, cluster: str = "dev", status: str = "in use") -> dict:
    (found,) = [v for v in volumes(cli, repo) if (v["site"], v["cluster"], v["volume"], v["status"]) == (site, cluster, "shared", status)]
    return found


def test_a_kept_volume_is_listed_and_taken_back_when_the_cluster_returns(applied, cli):
    first = volume_of(cli, applied, "local-a")
    marker = Path(first["path"]) / "written-before-the-move.txt"
    marker.write_text("results of a month of jobs\n")

    place_dev(applied, "local-b", on_move="keep")
    code, out, err = apply(cli, applied)
    assert code == 0, out + err
    retained = volume_of(cli, applied, "local-a", status="retained")
    assert retained["id"] == first["id"] and retained["size_gb"] == 500 and retained["from_stack"] == "cluster-dev"
    assert marker.read_text() == "results of a month of jobs\n"  # kept: forgotten by the stack, not destroyed
    code, out, err = cli("volumes", "--repo", str(applied.path))
    assert f"local-a      {first['id']}" in out and "retained since" in out

    place_dev(applied, "local-a")  # back (on_move: keep stays): the kept volume is adopted, not created anew
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert f"adopts retained volume {first['id']} as terraform_data.storage_shared" in out
    assert "~ terraform_data.storage_shared (imported: an existing resource)" in out
    code, out, err = apply(cli, applied)
    assert code == 0, out + err
    assert volume_of(cli, applied, "local-a")["id"] == first["id"]
    assert marker.read_text() == "results of a month of jobs\n"
    assert volume_of(cli, applied, "local-b", status="retained")  # what dev wrote there is kept in turn
    assert not [v for v in volumes(cli, applied) if v["site"] == "local-a" and v["status"] == "retained"]

    # deleting a retained volume is a reviewed destroy: shown, then only with the data decision
    kept = volume_of(cli, applied, "local-b", status="retained")
    code, out, err = cli("volumes", "--delete", kept["id"], "--repo", str(applied.path))
    assert code == 1 and f"DELETE retained volume {kept['id']} on local-b: shared of cluster dev" in out
    assert "BLOCKED: deleting a volume is the data decision: pass --allow-data-loss" in out and Path(kept["path"]).is_dir()
    code, out, err = cli("volumes", "--delete", first["id"], "--allow-data-loss", "--auto-approve", "--repo", str(applied.path))
    assert code == 1 and f"volume {first['id']} is in use by cluster-dev: only a retained volume can be deleted" in err
    code, out, err = cli("volumes", "--delete", kept["id"], "--allow-data-loss", "--auto-approve", "--repo", str(applied.path))
    assert code == 0, out + err
    assert f"deleted {kept['id']} (1 resource destroyed with its data)" in out
    assert not Path(kept["path"]).exists() and not [v for v in volumes(cli, applied) if v["status"] == "retained"]

    code, out, err = cli("--dry-run", "--repo", str(applied.path))  # converged: nothing left to do
    assert code == 0, out + err


def test_a_move_that_drops_its_data_removes_the_volume(applied, cli):
    first = volume_of(cli, applied, "local-a")
    place_dev(applied, "local-b", on_move="drop")
    code, out, err = apply(cli, applied)
    assert code == 0, out + err
    assert not Path(first["path"]).exists()
    assert not [v for v in volumes(cli, applied) if v["status"] == "retained"]


def test_from_adopts_a_retained_volume_explicitly_and_must_name_one_that_exists(applied, cli):
    place_dev(applied, "local-b", on_move="keep")
    assert apply(cli, applied)[0] == 0
    kept = volume_of(cli, applied, "local-a", status="retained")
    (Path(kept["path"]) / "dataset.csv").write_text("a,b\n")

    text = applied.read("clusters/dev.yaml").replace("name: dev\n", "name: analysis\n").replace("site: local-b", "site: local-a")
    text = text.replace("failover: [local-a]", "failover: [local-b]")
    applied.write("clusters/analysis.yaml", text.replace("    size_gb: 500\n", "    size_gb: 500\n    from: nope\n"))
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert code == 1
    assert "clusters/analysis.yaml:" in out and "storage.shared.from: there is no volume 'nope' on site local-a" in out

    in_use = next(v for v in volumes(cli, applied) if v["cluster"] == "slurm-hpc" and v["volume"] == "shared")
    on_b = text.replace("site: local-a", "site: local-b").replace("failover: [local-b]", "failover: [local-a]")
    applied.write("clusters/analysis.yaml", on_b.replace("    size_gb: 500\n", f"    size_gb: 500\n    from: {in_use['id']}\n"))
    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert code == 1  # another cluster's volume: a volume has one owner
    assert f"storage.shared.from: volume '{in_use['id']}' on site local-b is in use by cluster-slurm-hpc" in out

    applied.write("clusters/analysis.yaml", text.replace("    size_gb: 500\n", f"    size_gb: 500\n    from: {kept['id']}\n"))
    code, out, err = apply(cli, applied)
    assert code == 0, out + err
    taken = volume_of(cli, applied, "local-a", cluster="analysis")
    assert taken["id"] == kept["id"] and (Path(taken["path"]) / "dataset.csv").read_text() == "a,b\n"
    assert not [v for v in volumes(cli, applied) if v["site"] == "local-a" and v["status"] == "retained"]


def test_gate_lets_a_copy_through_only_where_it_copies_all_the_data_it_loses():
    source, target = _unit(CLUSTER, "dev", "local-a"), _unit(CLUSTER, "dev", "local-b")
    target.spec.on_move = "copy"
    other = Change("terraform_data.storage_datasets", "delete", holds_data=True)
    copied = _plan(source, DESTROY, DATA, other)
    copied.copies = tuple(datacopy.VolumeCopy(a.split("_")[-1], a, Path("/src"), 1, 1) for a in (DATA.address, other.address))
    assert gate.refusals([_plan(target, APPLY), copied], {target.key: target}, gate.Decisions()) == {}

    partly = _plan(source, DESTROY, DATA, other)
    partly.copies = copied.copies[:1]
    refused = gate.refusals([_plan(target, APPLY), partly], {target.key: target}, gate.Decisions())
    assert "would destroy data (terraform_data.storage_shared, terraform_data.storage_datasets)" in refused[(DESTROY, source.key)]

    nothing = _plan(source, DESTROY, DATA)  # the source cannot be read (a failover): no copy is possible
    nothing.copy_note = "no copy is possible"
    assert (DESTROY, source.key) in gate.refusals([_plan(target, APPLY), nothing], {target.key: target}, gate.Decisions())
    assert gate.refusals([_plan(target, APPLY), nothing], {target.key: target}, gate.Decisions(data_loss=True)) == {}


def test_gate_binds_a_decision_to_what_was_shown_and_asks_for_one_to_replace_everything():
    cluster = _unit(CLUSTER, "dev", "local-a")
    removed = _plan(cluster, DESTROY, DATA, NODE)
    shown_all = {cluster.key: {"destroy": True, "data": [DATA.address]}}
    allow = gate.Decisions(destroy=True, data_loss=True, shown=shown_all)
    assert gate.refusals([removed], {}, allow) == {}
    refused = gate.refusals([removed], {}, gate.Decisions(destroy=True, data_loss=True, shown={cluster.key: {"destroy": True}}))
    assert refused[(DESTROY, cluster.key)].endswith(
        "the `reconcile:allow-data-loss` decision covers only what the reviewed plan showed, and it did not show this: plan again"
    )
    assert (DESTROY, cluster.key) in gate.refusals([removed], {}, gate.Decisions(destroy=True, data_loss=True, shown={}))

    rebuilt = _plan(cluster, APPLY, Change("terraform_data.node_0", "replace"), Change("terraform_data.node_1", "replace"), Change("terraform_data.extra", "create"))
    assert rebuilt.summary.replaces_all and gate.needs(rebuilt) == {"replace_all": True}
    assert "replaces every resource of cluster dev on local-a (2)" in gate.refusals([rebuilt], {cluster.key: cluster}, gate.Decisions())[(APPLY, cluster.key)]
    assert gate.refusals([rebuilt], {cluster.key: cluster}, gate.Decisions(replace=True)) == {}
    partly = _plan(cluster, APPLY, Change("terraform_data.node_0", "replace"), Change("terraform_data.node_1", "update"))
    assert not partly.summary.replaces_all and gate.refusals([partly], {cluster.key: cluster}, gate.Decisions()) == {}


def test_gate_needs_and_the_scope_of_each_decision():
    cluster = _unit(CLUSTER, "dev", "local-a")
    removed = _plan(cluster, DESTROY, DATA, NODE)
    assert gate.needs(removed) == {"destroy": True, "data": [DATA.address]}
    assert gate.needs(_plan(cluster, APPLY, Change("terraform_data.node_0", "update"))) == {}
    unplanned = _plan(cluster, DESTROY)
    unplanned.status, unplanned.summary = "not synthesizable yet", None  # pending, with no plan to read
    assert gate.needs(unplanned) == {"destroy": True}
    rebuilt = _plan(cluster, APPLY, Change("terraform_data.node_0", "replace"), Change("terraform_data.node_1", "replace"))
    head = {cluster.key: cluster}
    # a replace decision is covered only by a reviewed replace-all, not by a reviewed destroy
    assert (APPLY, cluster.key) in gate.refusals([rebuilt], head, gate.Decisions(replace=True, shown={cluster.key: {"destroy": True}}))
    assert gate.refusals([rebuilt], head, gate.Decisions(replace=True, shown={cluster.key: {"replace_all": True}})) == {}
    unshown = gate.refusals([rebuilt], head, gate.Decisions(replace=True, shown={}))[(APPLY, cluster.key)]
    assert unshown.endswith("the `reconcile:allow-replace` decision covers only what the reviewed plan showed, and it did not show this: plan again")
    # no decision given: the refusal says what is needed, and nothing about a scope
    undecided = gate.refusals([removed], {}, gate.Decisions(shown={}))[(DESTROY, cluster.key)]
    assert undecided.endswith("or --allow-destroy")
