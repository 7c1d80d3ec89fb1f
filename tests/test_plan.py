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
