"""`storage.on_move: keep` holds for a volume that a change replaces in place: the old volume is
retained and recorded, a new empty one is created, and no decision is asked for. Without
`keep`, that replacement is a data loss that needs the data decision.

A real stack on a real engine: a local volume (`terraform_data`, with the local platform's
own directory provisioners) whose replacement is forced by a trigger, as a cloud's zone or
shrink forces a Filestore's or an FSx's."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reconciler import gate
from reconciler.affected import APPLY, Selected
from reconciler.apply import APPLIED, apply
from reconciler.live import LiveStore
from reconciler.plan import summarize
from reconciler.resolve import CLUSTER, Unit
from reconciler.run import PLANNED, UnitPlan, _keep_replaced, holds_data_of
from rpi import local_volumes
from rpi.spec import StateLocation
from reconciler.engine import select_engine
from test_apply_order import EMPTY_OUTPUTS, SNAP, cluster_spec

STATE = StateLocation("local", "state/a", "cluster-dev.tfstate")


def _document(zone: str) -> str:
    volume = {
        "input": {"name": "dev-shared", "kind": "shared", "size_gb": 100, "mount": "/home"},
        "triggers_replace": {"zone": zone},
        "provisioner": local_volumes.provisioners(STATE),
    }
    return json.dumps({
        "terraform": {"backend": {"local": {}}},
        "resource": {"terraform_data": {"storage_shared": volume}},
        "output": {k: {"value": v["value"]} for k, v in EMPTY_OUTPUTS.items()},
    })


@pytest.fixture
def engine(tmp_path):
    """The engine, with this test's directory as its state root: the volumes' directories are there."""
    return select_engine("auto", tmp_path / "work", tmp_path)


def _planned(tmp_path, engine, on_move: str) -> tuple[UnitPlan, LiveStore, str]:
    store = LiveStore(tmp_path)
    spec = dataclasses.replace(cluster_spec("dev", "a", STATE), on_move=on_move)
    unit = Unit(CLUSTER, "dev", "a", "local", (), ("site:a",), spec, "h" * 64, STATE)
    workdir = tmp_path / "work" / "dev"
    workdir.mkdir(parents=True)
    (workdir / "cdk.tf.json").write_text(_document("zone-a"))
    engine.init(workdir, {"path": str(store.state_file(STATE))})
    engine.plan(workdir)
    engine.apply(workdir)
    (old_id,) = store.resource_ids(unit).values()
    (store.volume_path(STATE, old_id) / "results.csv").write_text("written before the change\n")
    (workdir / "cdk.tf.json").write_text(_document("zone-b"))  # forces the replacement
    p = UnitPlan(Selected(unit, APPLY, ("test",)), PLANNED)
    p.summary = _keep_replaced(p, summarize(engine.plan(workdir), holds_data_of("local")))
    p.workdir = workdir
    return p, store, old_id


@pytest.mark.slow
def test_a_volume_replaced_in_place_keeps_the_old_one_when_the_definition_says_keep(tmp_path, engine):
    p, store, old_id = _planned(tmp_path, engine, "keep")
    assert p.kept_replaced == ("terraform_data.storage_shared",)
    assert p.summary.data_lost == () and gate.needs(p) == {}
    assert gate.refusals([p], {p.selected.unit.key: p.selected.unit}, gate.Decisions()) == {}

    (result,) = apply([p], engine, store, SNAP)
    assert result.outcome == APPLIED, result.detail
    (new_id,) = store.resource_ids(p.selected.unit).values()
    assert new_id != old_id
    assert (store.volume_path(STATE, old_id) / "results.csv").read_text() == "written before the change\n"
    assert store.volume_path(STATE, new_id).is_dir() and not any(store.volume_path(STATE, new_id).iterdir())
    (retained,) = store.retained(STATE)
    assert (retained.id, retained.address, retained.cluster) == (old_id, "terraform_data.storage_shared", "dev")


@pytest.mark.slow
def test_without_keep_the_same_replacement_needs_the_data_decision(tmp_path, engine):
    p, store, old_id = _planned(tmp_path, engine, "")
    assert p.kept_replaced == () and p.summary.data_lost == ("terraform_data.storage_shared",)
    refused = gate.refusals([p], {p.selected.unit.key: p.selected.unit}, gate.Decisions())
    assert "would destroy data (terraform_data.storage_shared)" in refused[(APPLY, p.selected.unit.key)]


@pytest.mark.parametrize("rtype, attribute", [
    ("google_filestore_instance", "name"), ("aws_efs_file_system", "creation_token"), ("google_storage_bucket", "name"),
])
def test_keep_is_refused_where_the_cloud_would_refuse_the_new_volume_its_name(rtype, attribute):
    """Defect: on a cloud, `keep` on an in-place replacement created the new volume under the
    kept one's unique name (a Filestore instance's, an EFS creation token, a bucket's), which
    the cloud refuses (ALREADY_EXISTS) while the old one exists. The plan says what to change;
    a replacement that takes a new name keeps the old volume."""
    spec = dataclasses.replace(cluster_spec("dev", "a", STATE), on_move="keep")
    unit = Unit(CLUSTER, "dev", "gcp-zurich", "gcp", ("clusters/dev.yaml",), (), spec, "h" * 64, STATE)

    def plan(after_name: str) -> tuple[UnitPlan, object]:
        document = {"resource_changes": [{
            "address": f"{rtype}.storage_shared", "mode": "managed", "type": rtype, "name": "storage_shared",
            "change": {"actions": ["delete", "create"], "before": {attribute: "gcp-zurich-dev-shared", "id": "x"},
                       "after": {attribute: after_name}},
            "action_reason": "replace_because_cannot_update",
        }]}
        p = UnitPlan(Selected(unit, APPLY, ("definition changed",)), PLANNED)
        return p, _keep_replaced(p, summarize(document, lambda rtype, before: True))

    p, summary = plan("gcp-zurich-dev-shared")
    assert p.kept_replaced == () and summary.changes[0].loses_data
    assert p.blocked.startswith(f"storage.on_move: keep: the new {rtype}.storage_shared would take the kept one's name "
                                "(gcp-zurich-dev-shared), which the cloud refuses while the old one exists: "), p.blocked
    if rtype == "google_storage_bucket":  # a bucket's name is the definition's to change
        assert "rename bucket shared in clusters/dev.yaml" in p.blocked, p.blocked
    else:  # a file system's follows from the cluster and volume: only drop is possible
        assert "can only drop the old one (storage.on_move: drop, or --allow-data-loss): copy its data out first" in p.blocked
    p, summary = plan("gcp-zurich-dev-shared-2")
    assert p.blocked == "" and p.kept_replaced == (f"{rtype}.storage_shared",) and not summary.changes[0].loses_data
