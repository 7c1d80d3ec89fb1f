"""The pull-request plan comment over real plan JSON: golden text, splitting, no values ever."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import GOLDEN, SHARED, check_golden
from reconciler.affected import APPLY, DESTROY, Selected
from reconciler.comment import LIMIT, MARKER, parse_reviewed, render_comment, split
from reconciler.plan import summarize
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.run import PLANNED, UnitPlan
from rpi.spec import StateLocation

FIXTURES = SHARED / "fixtures" / "terraform-json"
HEAD = "4f0c2a1d9e8b7c6a5f4e3d2c1b0a998877665544"


def fixture(name: str) -> dict:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{path} is not beside this repository")
    return json.loads(path.read_text())


def unit_plan(kind, name, site, plan_json, action=APPLY, reasons=("cluster file changed: clusters/x.yaml",), platform="local"):
    unit = Unit(kind, name, site, platform, (), (), None, f"hash-{name}-{site}", StateLocation("local", site, name))
    return UnitPlan(Selected(unit, action, tuple(reasons)), PLANNED, summarize(plan_json))


def test_golden_comment_over_recorded_plans(update_golden):
    plans = [
        unit_plan(SITE, "local-a", "local-a", fixture("basic.plan.json"), reasons=("site changed: sites/local-a.yaml",)),
        unit_plan(CLUSTER, "dev", "local-b", fixture("moved_block.plan.json"), reasons=("placed here, was on local-a",)),
        unit_plan(CLUSTER, "dev", "local-a", fixture("action_reason.plan.json"), DESTROY, ("moved to local-b: destroy here",)),
        unit_plan(CLUSTER, "old", "local-a", fixture("config_resource_depends_on.plan.json"), DESTROY, ("definition removed: clusters/old.yaml",)),
    ]
    plans[3].blocked = "destroying cluster old on local-a needs an explicit decision"
    (body,) = render_comment(plans, {"cluster:dev@local-b": "realizable"}, HEAD, "https://ci.example/run/1")
    check_golden(GOLDEN / "comments" / "recorded-plans.md", body, update_golden)
    assert body.startswith("<!-- reconcile:plan part=1/1 -->\n" + MARKER)
    assert "**MOVE** cluster `dev`: local-a → local-b" in body and "**DESTROY** cluster old on local-a" in body
    assert "**NEEDS A DECISION**" in body


def test_hundreds_of_changes_split_below_the_limit_with_the_summary_first():
    base = fixture("basic.plan.json")
    plans = []
    for u in range(30):
        plan = copy.deepcopy(base)
        template = next(rc for rc in plan["resource_changes"] if rc["change"]["actions"] == ["create"])
        plan["resource_changes"] = []
        for r in range(25):
            rc = copy.deepcopy(template)
            rc["address"] = f"module.cluster_{u:02d}.terraform_data.node_with_a_long_descriptive_name_{r:03d}" + "_x" * 300
            plan["resource_changes"].append(rc)
        plans.append(unit_plan(CLUSTER, f"c{u:02d}", "local-a", plan))
    parts = render_comment(plans, {}, HEAD)
    assert len(parts) > 1
    assert all(len(p) < 65_536 and len(p) <= LIMIT for p in parts)
    assert all(p.startswith(f"<!-- reconcile:plan part={i}/{len(parts)} -->") for i, p in enumerate(parts, 1))
    assert all(f"cluster `c{u:02d}`" in parts[0] for u in range(30)), "the whole summary is in the first part"
    assert parse_reviewed(parts[0])["units"]["cluster:c07@local-a"]["config_hash"] == "hash-c07-local-a"
    text = "".join(parts)
    for u in range(30):
        for r in range(25):
            address = f"module.cluster_{u:02d}.terraform_data.node_with_a_long_descriptive_name_{r:03d}" + "_x" * 300
            assert text.count(address) == 1


def test_sensitive_values_never_appear():
    plan = copy.deepcopy(fixture("basic.plan.json"))
    secret = "s3cr3t-value-123"
    rc = plan["resource_changes"][1]
    rc["change"]["after"] = {"password": secret}
    rc["change"]["after_sensitive"] = {"password": True}
    plan["output_changes"]["db_password"] = {"actions": ["create"], "before": None, "after": secret, "after_sensitive": True}
    plans = [unit_plan(CLUSTER, "dev", "local-a", plan)]
    assert all(secret not in part for part in render_comment(plans, {}, HEAD))
    assert "db_password" in render_comment(plans, {}, HEAD)[0]  # the output's name, never its value


def test_split_keeps_blocks_whole_and_cuts_only_an_oversized_one():
    header = "H" * 100
    blocks = ["a" * 400, "b" * 400, "c" * 5000]
    parts = split(header, blocks, limit=1000)
    assert parts[0].count("H") == 100 and "a" * 400 in parts[0]
    assert all(len(p) <= 1000 for p in parts)
    assert "cut to fit one comment" in parts[-1]


def test_reviewed_block_round_trips_and_lists_only_pending_stacks():
    plans = [unit_plan(CLUSTER, "dev", "local-a", fixture("basic.plan.json")), unit_plan(CLUSTER, "noop", "local-a", fixture("no_changes.plan.json"))]
    plans[1].summary = summarize({"resource_changes": []})
    reviewed = parse_reviewed(render_comment(plans, {}, HEAD)[0])
    assert reviewed == {"head": HEAD, "units": {"cluster:dev@local-a": {"action": "apply", "config_hash": "hash-dev-local-a"}}}
    assert parse_reviewed("no block here") is None
