"""The pull-request plan comment over real plan JSON recorded by the terraform-json project:
golden text, splitting below GitHub's size limit, no values ever, the reviewed block."""

from __future__ import annotations

import copy
import hashlib
import json
import re

import pytest

from conftest import GOLDEN, check_golden, plan_fixture
from reconciler.affected import APPLY, DESTROY, Selected
from reconciler.apply import APPLIED, NOTHING, REFUSED, SKIPPED, ApplyResult
from reconciler.apply import FAILED as APPLY_FAILED
from reconciler.comment import (
    APPLY_MARKER,
    LIMIT,
    MARKER,
    MARKER_PREFIX,
    parse_reviewed,
    render_apply_result,
    render_comment,
    reviewed_line,
    split,
)
from reconciler.plan import config_diff, summarize
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.run import FAILED, OFFLINE, PLANNED, UNSUPPORTED, UnitPlan
from rpi.spec import StateLocation

COMMENTS = GOLDEN / "comments"
HEAD = "4f0c2a1d9e8b7c6a5f4e3d2c1b0a998877665544"
RUN = "https://github.example/swisstwins/hpc/actions/runs/4711"
GITHUB_MAX = 65_536


def as_destroy(plan: dict) -> dict:
    """The recorded plan turned into the plan of destroying the same resources."""
    plan = copy.deepcopy(plan)
    for rc in plan["resource_changes"]:
        if rc.get("mode") != "data":
            rc["change"]["actions"] = ["delete"]
    return plan


def config_hash(kind: str, name: str, site: str) -> str:
    return hashlib.sha256(f"{kind}:{name}@{site}".encode()).hexdigest()


def unit_plan(kind, name, site, plan_json=None, action=APPLY, reasons=None, platform="local", status=PLANNED):
    reasons = reasons or (f"cluster file changed: clusters/{name}.yaml",)
    inputs = (f"sites/{site}.yaml",) if kind == SITE else (f"clusters/{name}.yaml",)
    unit = Unit(kind, name, site, platform, inputs, (), None, config_hash(kind, name, site), StateLocation("local", site, name))
    summary = summarize(plan_json) if plan_json is not None else None
    return UnitPlan(Selected(unit, action, tuple(reasons)), status, summary)


def table_rows(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| unit |")]


# ---------------------------------------------------------------- scenarios (each also a golden file)


def basic() -> tuple[list[UnitPlan], dict[str, str]]:
    """A landing zone and two clusters, applied: creates, an update, changed outputs."""
    plans = [
        unit_plan(SITE, "local-a", "local-a", plan_fixture("basic.plan.json"), reasons=("site changed: sites/local-a.yaml",)),
        unit_plan(CLUSTER, "dev", "local-a", plan_fixture("identity.plan.json"), reasons=("cluster file changed: clusters/dev.yaml",)),
        unit_plan(
            CLUSTER, "hpc", "local-a", plan_fixture("output_depends_on.plan.json"),
            reasons=("profile changed: clusters/profiles/slurm.yaml", "never applied"),
        ),
    ]
    return plans, {"cluster:dev@local-a": "realizable", "hpc": "realizable; cannot fail over to gcp-zurich"}


def moves_and_destroys() -> tuple[list[UnitPlan], dict[str, str]]:
    """A move that keeps its data, a removed cluster waiting for a decision, a replace, a state move."""
    source_plan = as_destroy(plan_fixture("basic.plan.json"))
    for rc in source_plan["resource_changes"]:
        if rc["address"] == "null_resource.bar":
            rc["change"]["actions"] = ["forget"]  # storage.on_move: keep -> a `removed` block
    plans = [
        unit_plan(CLUSTER, "dev", "local-b", plan_fixture("deep_module.plan.json"), reasons=("placed here, was on local-a",)),
        unit_plan(CLUSTER, "gpu", "local-b", plan_fixture("action_reason.plan.json"), reasons=("live state differs from git (last applied at 0badc0f)",)),
        unit_plan(CLUSTER, "hpc", "local-b", plan_fixture("moved_block.plan.json"), reasons=("local platform code changed",)),
        unit_plan(CLUSTER, "dev", "local-a", source_plan, DESTROY, ("moved to local-b: destroy here",)),
        unit_plan(CLUSTER, "old", "local-a", as_destroy(plan_fixture("config_resource_depends_on.plan.json")), DESTROY, ("definition removed: clusters/old.yaml",)),
    ]
    plans[3].kept = ("null_resource.bar",)
    plans[4].blocked = "the move would destroy data (terraform_data.shared); set storage.on_move to keep or drop in clusters/old.yaml"
    return plans, {"dev": "realizable", "cluster:gpu@local-b": "REFUSED: no nvidia-h100 in local-b"}


def statuses() -> tuple[list[UnitPlan], dict[str, str]]:
    """Offline (no credentials), not synthesizable yet, a failed plan, a record-only update."""
    offline_after = {"resource": {"google_compute_instance": {"login": {}, "compute_0": {}}}, "output": {"login": {"value": "x"}}}
    offline_before = {"resource": {"google_compute_instance": {"login": {"machine_type": "c2"}}}}
    offline = unit_plan(CLUSTER, "icon", "gcp-zurich", platform="gcp", status=OFFLINE)
    offline.summary = config_diff(offline_before, offline_after)
    unsupported = unit_plan(CLUSTER, "icon", "aws-zurich", platform="aws", status=UNSUPPORTED)
    failed = unit_plan(SITE, "local-b", "local-b", status=FAILED, reasons=("site changed: sites/local-b.yaml",))
    failed.error = (
        "tofu plan failed in .reconcile/work/stacks/local-b/landing-zone:\n"
        "Error: Invalid reference\n\n  on cdk.tf.json line 12:\n  12: \"input\": \"${terraform_data.nope.id}\"\n"
        "A managed resource \"terraform_data\" \"nope\" has not been declared in the root module. ```"
    )
    quiet = dict(plan_fixture("no_changes.plan.json"), output_changes={})
    record_only = unit_plan(CLUSTER, "dev", "local-a", quiet, reasons=("live state differs from git (last applied at 0badc0f)",))
    up_to_date = unit_plan(CLUSTER, "tiny", "local-a", quiet, reasons=("requested with --all",))
    return [failed, offline, unsupported, record_only, up_to_date], {"icon": "realizable"}


def nothing() -> tuple[list[UnitPlan], dict[str, str]]:
    return [], {}


SCENARIOS = {"basic": basic, "moves-and-destroys": moves_and_destroys, "statuses": statuses, "nothing": nothing}


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_comments(name, update_golden):
    plans, verdicts = SCENARIOS[name]()
    (body,) = render_comment(plans, verdicts, HEAD, RUN)
    check_golden(COMMENTS / f"{name}.md", body, update_golden)
    assert body.startswith(f"<!-- reconcile:plan part=1/1 -->\n{MARKER}\n<!-- reconcile:reviewed ")
    assert len(table_rows(body)) == len(plans), "one row per unit"


def test_summary_first_with_counts_verdicts_and_statuses():
    plans, verdicts = basic()
    (body,) = render_comment(plans, verdicts, HEAD, RUN)
    assert "### reconcile plan for `4f0c2a1`: 3 stacks to change" in body
    assert "**9 to create, 1 to update, 0 to replace, 0 to destroy, 1 to import**" in body  # identity.plan.json imports one
    rows = {row.split(" | ")[0]: row for row in table_rows(body)}
    assert rows["| cluster dev on local-a"].endswith("| ~1 1 imported | cluster file changed: clusters/dev.yaml | — |"), "realizable: no flag"
    assert rows["| cluster hpc on local-a"].endswith("| cannot fail over to gcp-zurich |"), "verdict by cluster name"
    assert rows["| site local-a"].endswith("| — |")
    assert body.index("| unit |") < body.index("<details>"), "the table comes before the details"
    assert "profile changed: clusters/profiles/slurm.yaml; never applied" in rows["| cluster hpc on local-a"]
    assert f"[CI run]({RUN})" in body

    plans, verdicts = statuses()
    (body,) = render_comment(plans, verdicts, HEAD)
    rows = {row.split(" | ")[0]: row for row in table_rows(body)}
    assert rows["| site local-b"].endswith("| — | site changed: sites/local-b.yaml | **plan failed** |")
    assert rows["| cluster icon on aws-zurich"].endswith("| not synthesizable yet |")
    assert rows["| cluster icon on gcp-zurich"].endswith("| +1 ~1 | cluster file changed: clusters/icon.yaml | offline |")
    assert rows["| cluster dev on local-a"].endswith("| live record only |")
    assert "> [!CAUTION]\n> - **PLAN FAILED** site local-b" in body
    assert "Error: Invalid reference" in body and "```\n\n</details>" in body
    assert body.count("```") % 2 == 0, "backticks in an error cannot open or close a fence"


def test_destroys_moves_and_decisions_stand_out_above_the_table():
    plans, verdicts = moves_and_destroys()
    (body,) = render_comment(plans, verdicts, HEAD)
    warning, table = body.index("> [!WARNING]"), body.index("| unit |")
    assert warning < table
    alert = body[warning:table]
    assert "**MOVE** cluster `dev`: local-a [local] → local-b [local]" in alert
    assert "its data stays in place: `null_resource.bar`" in alert
    assert "**DESTROY** cluster old on local-a: definition removed: clusters/old.yaml" in alert
    assert "**NEEDS A DECISION** cluster old on local-a: the move would destroy data" in alert
    assert "**DESTROYS RESOURCES** in cluster gpu on local-b: 1 to replace, 0 to destroy" in alert
    assert "**DESTROY** cluster dev on local-a" not in alert, "a move's source is shown as the move"
    rows = {row.split(" | ")[0]: row for row in table_rows(body)}
    assert "| **DESTROY** cluster old on local-a" in rows and "**needs a decision**" in rows["| **DESTROY** cluster old on local-a"]
    assert "| cluster dev on local-b (move 1/2)" in rows and "| **DESTROY** cluster dev on local-a (move 2/2)" in rows
    assert rows["| cluster gpu on local-b"].endswith("| -/+1 | live state differs from git (last applied at 0badc0f) | destroy, portability refused: no nvidia-h100 in local-b |")
    assert "- null_resource.foo" in body and "- - null_resource" not in body and "- -/+ null_resource.example (replace because tainted)" in body
    assert "  o null_resource.bar (forgotten: left in place, not destroyed)" in body
    assert "  -> random_id.test2 (moved from random_id.test)" in body


def test_nothing_to_do_still_records_the_head():
    (body,) = render_comment([], None, HEAD)
    assert "### reconcile plan for `4f0c2a1`: nothing to do" in body
    assert parse_reviewed(body) == {"head": HEAD, "units": {}}


# ---------------------------------------------------------------- size


def node_address(u: int, r: int) -> str:
    """What a node of a deeply composed cluster stack is called."""
    return (
        f'module.vcluster["climate-{u:02d}"].module.node_pool["compute-large-memory"].module.nodes'
        f'.terraform_data.node["climate-{u:02d}-compute-large-memory-{r:04d}"]'
    )


def many_changes(units: int, per_unit: int, address=node_address) -> list[UnitPlan]:
    base = plan_fixture("basic.plan.json")
    template = next(rc for rc in base["resource_changes"] if rc["change"]["actions"] == ["create"])
    actions = (["create"], ["update"], ["delete", "create"], ["delete"])
    plans = []
    for u in range(units):
        plan = copy.deepcopy(base)
        plan["resource_changes"] = []
        for r in range(per_unit):
            rc = copy.deepcopy(template)
            rc["address"] = address(u, r)
            rc["change"]["actions"] = actions[r % len(actions)]
            plan["resource_changes"].append(rc)
        plans.append(unit_plan(CLUSTER, f"climate-{u:02d}", "local-a", plan))
    return plans


def assert_well_formed(parts: list[str]) -> None:
    for i, part in enumerate(parts, start=1):
        assert len(part) < GITHUB_MAX and len(part) <= LIMIT
        first, second = part.split("\n")[:2]
        assert first == f"<!-- reconcile:plan part={i}/{len(parts)} -->" and first.startswith(MARKER_PREFIX)
        assert second == MARKER
        assert part.count("<details>") == part.count("</details>"), "a part never ends inside a unit's details"
        assert sum(1 for line in part.splitlines() if line.startswith("```")) % 2 == 0


def test_600_changes_over_30_units_split_below_the_limit_with_the_whole_table_first():
    plans = many_changes(30, 20)
    parts = render_comment(plans, {}, HEAD, RUN)
    assert len(parts) > 1
    assert_well_formed(parts)
    assert len(table_rows(parts[0])) == 30 and not any(table_rows(p) for p in parts[1:])
    assert all(f"| cluster climate-{u:02d} on local-a |" in parts[0] for u in range(30))
    assert "> [!WARNING]" in parts[0] and "more units" not in parts[0]
    text = "".join(parts)
    for u in range(30):
        for r in range(20):
            assert text.count(node_address(u, r)) == 1, node_address(u, r)
    assert len(parse_reviewed(parts[0])["units"]) == 30


def test_thousands_of_units_keep_headline_and_warnings_first_and_every_row_somewhere():
    plans = many_changes(2_500, 1, lambda u, r: f"terraform_data.node_{u:04d}")
    plans[7] = unit_plan(CLUSTER, "gone", "local-a", as_destroy(plan_fixture("deep_module.plan.json")), DESTROY, ("definition removed: clusters/gone.yaml",))
    parts = render_comment(plans, {}, HEAD)
    assert_well_formed(parts)
    first = parts[0]
    assert "### reconcile plan for `4f0c2a1`: 2,500 stacks to change" in first
    assert "> [!WARNING]" in first and "**DESTROY** cluster gone on local-a" in first
    assert re.search(r"\n… [\d,]+ more units, see the following comments\n", first)
    rows = [row for part in parts for row in table_rows(part)]
    assert len(rows) == 2_500 and len(set(rows)) == 2_500
    assert 0 < len(table_rows(first)) < 2_500
    everything = parse_reviewed("\n".join(parts))
    assert everything["head"] == HEAD and len(everything["units"]) == 2_500
    assert everything["units"]["cluster:gone@local-a"]["action"] == DESTROY
    assert set(parse_reviewed(first)["units"]) < set(everything["units"]), "one part records only its own rows"


def test_a_unit_too_big_for_one_part_is_cut_with_a_note_and_closed():
    plans = many_changes(2, 150, lambda u, r: f'module.m{u}.terraform_data.node["{r:04d}-{"x" * 600}"]')
    parts = render_comment(plans, {}, HEAD)
    assert len(parts) == 3
    assert_well_formed(parts)
    for u, part in enumerate(parts[1:]):
        assert part.count("<details>") == 1 and f'module.m{u}.terraform_data.node["0000-' in part
        assert "cut to fit one comment" in part and "more lines are in the run's output" in part


def test_each_unit_lists_at_most_200_changes():
    (body,) = render_comment(many_changes(1, 230, lambda u, r: f"terraform_data.n{r:03d}"), {}, HEAD)
    assert "terraform_data.n199" in body and "terraform_data.n200" not in body
    assert "  … and 30 more" in body


def test_split_keeps_blocks_whole_in_order_and_cuts_only_an_oversized_one():
    header = "H" * 100 + "\n"
    blocks = ["a" * 500 + "\n", "b" * 500 + "\n", "<details>\n\n```diff\n" + ("+ x\n" * 1500) + "```\n</details>\n", "d\n"]
    parts = split(header, blocks, limit=1000)
    assert [p.split("\n")[0] for p in parts] == [f"<!-- reconcile:plan part={i}/{len(parts)} -->" for i in range(1, len(parts) + 1)]
    assert all(p.split("\n")[1] == MARKER and len(p) <= 1000 for p in parts)
    assert "H" * 100 in parts[0] and "a" * 500 in parts[0] and "b" * 500 in parts[1] and "b" not in parts[0]
    cut = next(p for p in parts if "cut to fit one comment" in p)
    assert cut.count("```") == 2 and cut.count("<details>") == cut.count("</details>") == 1
    assert parts[-1].endswith("d\n")
    assert split("only a header\n", [], limit=1000) == [f"<!-- reconcile:plan part=1/1 -->\n{MARKER}\nonly a header\n"]


# ---------------------------------------------------------------- values never, reviewed block


def test_sensitive_values_never_appear():
    secret = "s3cr3t-value-123"
    plan = copy.deepcopy(plan_fixture("basic.plan.json"))
    rc = next(rc for rc in plan["resource_changes"] if rc["address"] == "null_resource.bar")
    rc["change"]["after"] = {"triggers": {"password": secret}}
    rc["change"]["after_sensitive"] = {"triggers": {"password": True}}
    plan["output_changes"]["db_password"] = {"actions": ["create"], "before": None, "after": secret, "after_unknown": False, "after_sensitive": True}
    plan["variables"]["db_password"] = {"value": secret}
    changed = copy.deepcopy(plan_fixture("identity.plan.json"))
    changed["resource_changes"][0]["change"]["before"] = {"password": secret}
    changed["resource_changes"][0]["change"]["before_sensitive"] = {"password": True}
    plans = [unit_plan(CLUSTER, "dev", "local-a", plan), unit_plan(CLUSTER, "db", "local-a", changed)]
    parts = render_comment(plans, {}, HEAD, RUN)
    assert all(secret not in part for part in parts)
    assert "`db_password`" in parts[0], "the output's name is shown, never its value"
    assert "null_resource.bar" in parts[0] and "corner_user_identity.user" in parts[0]


def test_reviewed_block_round_trips_and_lists_only_pending_stacks():
    units = {"cluster:dev@local-a": {"action": "apply", "config_hash": "ab" * 32}, "site:local-a": {"action": "destroy", "config_hash": "cd" * 32}}
    line = reviewed_line(HEAD, units)
    assert line == (
        '<!-- reconcile:reviewed {"head":"' + HEAD + '","units":{"cluster:dev@local-a":{"action":"apply","config_hash":"'
        + "ab" * 32 + '"},"site:local-a":{"action":"destroy","config_hash":"' + "cd" * 32 + '"}}} -->'
    )
    assert parse_reviewed(f"{MARKER}\n{line}\n") == {"head": HEAD, "units": units}
    odd = {'cluster:x@a"--><b>': {"action": "apply", "config_hash": "-->"}}
    assert "-->" not in reviewed_line(HEAD, odd).removesuffix(" -->") and parse_reviewed(f"{MARKER}\n{reviewed_line(HEAD, odd)}") == {"head": HEAD, "units": odd}

    plans = [
        unit_plan(CLUSTER, "dev", "local-a", plan_fixture("basic.plan.json")),
        unit_plan(CLUSTER, "noop", "local-a", dict(plan_fixture("no_changes.plan.json"), output_changes={})),
        unit_plan(CLUSTER, "old", "local-a", as_destroy(plan_fixture("deep_module.plan.json")), DESTROY),
    ]
    assert parse_reviewed(render_comment(plans, {}, HEAD)[0]) == {
        "head": HEAD,
        "units": {
            "cluster:dev@local-a": {"action": "apply", "config_hash": config_hash(CLUSTER, "dev", "local-a")},
            # what a decision must cover is recorded with it: a label is bound to what was shown
            "cluster:old@local-a": {"action": "destroy", "config_hash": config_hash(CLUSTER, "old", "local-a"), "needs": {"destroy": True}},
        },
    }
    assert parse_reviewed("no block here") is None and parse_reviewed("") is None
    assert parse_reviewed(line) is None, "only a plan comment (starting with the marker) counts"
    other = render_comment(plans, {}, "0" * 40)[0]
    assert parse_reviewed(render_comment(plans, {}, HEAD)[0] + "\n" + other) is None, "two heads: nothing is reviewed"


def test_nothing_in_a_plan_or_definition_can_forge_the_reviewed_block():
    forged = "\n" + reviewed_line(HEAD, {"cluster:evil@local-a": {"action": "apply", "config_hash": "0" * 64}}) + "\n"
    plan = copy.deepcopy(plan_fixture("deep_module.plan.json"))
    plan["resource_changes"][0]["address"] = f'terraform_data.node["{forged}"]'
    p = unit_plan(CLUSTER, "dev", "local-a", plan, reasons=(f"cluster file changed: clusters/{forged}.yaml",))
    p.blocked = forged
    failed = unit_plan(CLUSTER, "bad", "local-a", status=FAILED)
    failed.error = f"Error:{forged}```{forged}"
    body = "\n".join(render_comment([p, failed], {"dev": forged}, HEAD))
    assert parse_reviewed(body)["units"] == {"cluster:dev@local-a": {"action": "apply", "config_hash": config_hash(CLUSTER, "dev", "local-a")}}
    assert all(line.count("|") - line.count("\\|") == 5 for line in table_rows(body)), "the table keeps its columns"


# ---------------------------------------------------------------- after apply


def apply_results() -> list[ApplyResult]:
    plans = [
        unit_plan(SITE, "local-a", "local-a", plan_fixture("basic.plan.json")),
        unit_plan(CLUSTER, "climate", "local-a", plan_fixture("deep_module.plan.json")),
        unit_plan(CLUSTER, "dev", "local-b", plan_fixture("deep_module.plan.json")),
        unit_plan(CLUSTER, "dev", "local-a", as_destroy(plan_fixture("basic.plan.json")), DESTROY),
        unit_plan(CLUSTER, "old", "local-a", as_destroy(plan_fixture("basic.plan.json")), DESTROY),
        unit_plan(CLUSTER, "tiny", "local-a", dict(plan_fixture("no_changes.plan.json"), output_changes={})),
    ]
    return [
        ApplyResult(plans[0], APPLIED),
        ApplyResult(plans[1], APPLIED, "healthy: 4 nodes, login at 10.10.128.10"),
        ApplyResult(plans[2], APPLY_FAILED, "health check failed, the source stays: ssh 10.20.128.10 sinfo --noheader exited 255\nConnection refused | retry"),
        ApplyResult(plans[3], SKIPPED, "cluster:dev@local-b did not succeed"),
        ApplyResult(plans[4], REFUSED, "destroying cluster old on local-a needs an explicit decision: the `reconcile:allow-destroy` label"),
        ApplyResult(plans[5], NOTHING),
    ]


def test_apply_result(update_golden):
    results = apply_results()
    body = render_apply_result(results, HEAD, RUN)
    check_golden(COMMENTS / "apply-result.md", body, update_golden)
    assert body.startswith(APPLY_MARKER + "\n### reconcile apply of `4f0c2a1`: **failed**")
    caution = body[body.index("> [!CAUTION]") : body.index("| unit |")]
    assert "**FAILED** cluster dev on local-b: health check failed" in caution and "Connection refused" not in caution
    assert "**SKIPPED** cluster dev on local-a" in caution and "**REFUSED** cluster old on local-a" in caution
    assert "climate" not in caution and len(table_rows(body)) == len(results)
    assert parse_reviewed(body) is None

    calm = render_apply_result(results[:2], HEAD)
    assert "[!CAUTION]" not in calm and ": done (2 applied)" in calm and "**failed**" not in calm


def test_a_comment_previewed_from_a_dirty_tree_says_so(repo, cli, tmp_path):
    repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")  # not committed
    code, out, err = cli("plan", "--comment-dir", str(tmp_path / "c"), "--repo", str(repo.path))
    head = repo.git("rev-parse", "HEAD").strip()
    assert f"### reconcile plan for `{head[:7]}` with uncommitted changes:" in (tmp_path / "c" / "part-1.md").read_text()


@pytest.mark.parametrize(
    "line, why",
    [
        ("<!-- reconcile:reviewed {not json} -->", "not JSON"),
        ('<!-- reconcile:reviewed {"head": null, "units": {}} -->', "a null head"),
        ('<!-- reconcile:reviewed {"head": 7, "units": {}} -->', "a head that is not a sha"),
        ('<!-- reconcile:reviewed {"head": "' + HEAD + '", "units": []} -->', "units that are not a mapping"),
        ('<!-- reconcile:reviewed {"head": "' + HEAD + '"} -->', "no units"),
        ('<!-- reconcile:reviewed {"head": "' + HEAD + '", "units": {"site:a": {"action": 1, "config_hash": "x"}}} -->', "an action that is no word"),
        ('<!-- reconcile:reviewed {"head": "' + HEAD + '", "units": {"site:a": {"action": "apply"}}} -->', "no config hash"),
        ('<!-- reconcile:reviewed {"head": "' + HEAD + '", "units": {"site:a": {"action": "apply", "config_hash": "x", "needs": []}}} -->',
         "needs that are not a mapping"),
    ],
    ids=lambda v: v if " " in v and not v.startswith("<") else None,
)
def test_a_bad_reviewed_block_reviews_nothing(line, why):
    good = reviewed_line(HEAD, {"cluster:dev@local-a": {"action": "apply", "config_hash": "ab" * 32}})
    assert parse_reviewed(f"{MARKER}\n{good}\n") is not None
    assert parse_reviewed(f"{MARKER}\n{good}\n{line}\n") is None, why  # one bad line spoils them all
    assert parse_reviewed(f"{MARKER}\n{line}\n") is None, why


def test_parts_agree_on_a_stack_or_nothing_is_reviewed():
    """Parts of a split comment each record their own stacks; the same stack twice must say the
    same, or the comment was tampered with and reviews nothing."""
    one = {"site:a": {"action": "apply", "config_hash": "1" * 64}}
    same = reviewed_line(HEAD, one)
    other = reviewed_line(HEAD, {"site:a": {"action": "apply", "config_hash": "2" * 64}})
    destroy = reviewed_line(HEAD, {"site:a": {"action": "destroy", "config_hash": "1" * 64}})
    more = reviewed_line(HEAD, {"site:b": {"action": "apply", "config_hash": "3" * 64}})
    assert parse_reviewed(f"{MARKER}\n{same}\n{same}\n")["units"] == one
    assert parse_reviewed(f"{MARKER}\n{same}\n{more}\n")["units"].keys() == {"site:a", "site:b"}
    assert parse_reviewed(f"{MARKER}\n{same}\n{other}\n") is None
    assert parse_reviewed(f"{MARKER}\n{same}\n{destroy}\n") is None
