"""Plan summaries over real Terraform plan JSON from the terraform-json project."""

from __future__ import annotations

import pytest

from conftest import plan_fixture
from reconciler.plan import action_of, summarize


def test_basic_counts_creates_and_ignores_data_sources():
    summary = summarize(plan_fixture("basic.plan.json"))
    assert summary.counts == {"create": 7, "update": 0, "replace": 0, "delete": 0, "move": 0, "import": 0}
    assert "data.null_data_source.baz" not in [c.address for c in summary.changes]
    assert "module.foo.null_resource.aliased" in [c.address for c in summary.visible]


def test_replace_carries_terraforms_reason():
    (change,) = summarize(plan_fixture("action_reason.plan.json")).visible
    assert (change.address, change.action, change.reason) == ("null_resource.example", "replace", "replace_because_tainted")


def test_moved_block_is_a_move_not_a_destroy():
    (change,) = summarize(plan_fixture("moved_block.plan.json")).visible
    assert (change.action, change.previous_address) == ("move", "random_id.test")


def test_update_and_no_op():
    assert summarize(plan_fixture("identity.plan.json")).counts["update"] == 1
    no_changes = summarize(plan_fixture("no_changes.plan.json"))
    assert no_changes.visible == () and all(c.action == "no-op" for c in no_changes.changes)


def test_replace_with_depends_on():
    summary = summarize(plan_fixture("config_resource_depends_on.plan.json"))
    assert summary.counts["replace"] == 1 and summary.count("no-op") == 1


@pytest.mark.parametrize(
    "actions,expected",
    [(["create"], "create"), (["delete"], "delete"), (["update"], "update"), (["create", "delete"], "replace"),
     (["delete", "create"], "replace"), (["no-op"], "no-op"), (["read"], "read")],
)
def test_action_of(actions, expected):
    assert action_of(actions) == expected


def test_summaries_never_carry_values():
    plan = plan_fixture("basic.plan.json")
    text = repr(summarize(plan))
    assert "after" not in text and "before" not in text


# ---------------------------------------------------------------- config_diff (offline plans)

BASE_DOC = {
    "resource": {
        "terraform_data": {"node_a": {"input": {"cores": 2}}, "node_b": {"input": {"cores": 2}}, "storage_shared": {"input": {"size": 1}}},
    },
    "output": {"nodes": {"value": ["a", "b"]}},
}


def _doc(**changes) -> dict:
    import copy

    doc = copy.deepcopy(BASE_DOC)
    for key, value in changes.items():
        if value is None:
            del doc["resource"]["terraform_data"][key]
        else:
            doc["resource"]["terraform_data"][key] = value
    return doc


def test_config_diff_tells_create_update_delete_and_no_op_apart():
    from reconciler.plan import config_diff

    head = _doc(node_a={"input": {"cores": 4}}, node_b=None, node_c={"input": {"cores": 2}})
    summary = config_diff(BASE_DOC, head)
    actions = {c.address: c.action for c in summary.changes}
    assert actions == {"terraform_data.node_a": "update", "terraform_data.node_b": "delete",
                       "terraform_data.node_c": "create", "terraform_data.storage_shared": "no-op"}
    assert summary.counts["delete"] == 1 and summary.counts["create"] == 1 and summary.counts["update"] == 1


def test_config_diff_flags_a_deleted_data_holder_and_only_deleted_ones():
    from reconciler.plan import config_diff

    holds = lambda kind, body: "size" in body.get("input", {})  # noqa: E731
    gone = config_diff(BASE_DOC, _doc(storage_shared=None), holds_data=holds)
    assert gone.data_lost == ("terraform_data.storage_shared",)
    kept = config_diff(BASE_DOC, _doc(node_b=None), holds_data=holds)
    assert kept.data_lost == ()
    created = config_diff(None, BASE_DOC, holds_data=holds)  # nothing before: nothing held data
    assert created.data_lost == () and created.counts["create"] == 3


def test_config_diff_sees_an_output_only_change():
    from reconciler.plan import config_diff

    head = _doc()
    head["output"]["nodes"]["value"] = ["a", "b", "c"]
    summary = config_diff(BASE_DOC, head)
    assert all(c.action == "no-op" for c in summary.changes) and summary.output_changes == ("nodes",)
    assert summary.has_changes
    assert not config_diff(BASE_DOC, _doc()).has_changes
    assert config_diff(BASE_DOC, {k: v for k, v in _doc().items() if k != "output"}).output_changes == ("nodes",)
