"""Property tests of the gate (Hypothesis, fixed seed, bounded): over random plans and
decisions, no data-holding resource is ever destroyed without `drop`, a verified copy
(`copy`, where the plan copies all it loses) or a decision covering it, no destroy of a removed definition runs without the destroy decision, and no change
group (the two halves of a move; a site with its clusters) is ever half-applied."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, seed, settings
from hypothesis import strategies as st

from reconciler import datacopy, gate
from reconciler.affected import APPLY, DESTROY, Selected, move_target
from reconciler.plan import Change, PlanSummary
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.run import PLANNED, UnitPlan
from rpi.spec import StateLocation

SITES = ("a", "b", "c")
CLUSTERS = ("dev", "web", "hpc")


class Spec:
    def __init__(self, keep):
        self.on_move = {True: "keep", False: "drop", None: ""}.get(keep, keep)


def _unit(kind: str, name: str, site: str, keep=None) -> Unit:
    return Unit(kind, name, site, "local", (f"clusters/{name}.yaml",), (), Spec(keep) if kind == CLUSTER else None, "h", StateLocation("local", site, name))


changes = st.lists(
    st.builds(Change, st.sampled_from(["terraform_data.storage", "terraform_data.node", "terraform_data.bucket"]),
              st.sampled_from(["create", "update", "replace", "delete", "no-op"]), holds_data=st.booleans()),
    max_size=4,
)


@st.composite
def scenarios(draw):
    """Plans for a random subset of (kind, name, site, action), the head they were made for, and decisions."""
    head_clusters = {name: draw(st.sampled_from(SITES)) for name in draw(st.sets(st.sampled_from(CLUSTERS)))}
    keep = {name: draw(st.sampled_from([None, True, False, "copy"])) for name in head_clusters}
    head = {}
    for name, site in head_clusters.items():
        u = _unit(CLUSTER, name, site, keep[name])
        head[u.key] = u
    plans = []
    wanted = draw(st.sets(st.tuples(st.sampled_from([SITE, CLUSTER]), st.sampled_from(CLUSTERS), st.sampled_from(SITES), st.sampled_from([APPLY, DESTROY])), max_size=8))
    # a run plans each (action, unit) once: a site's name is its site
    for kind, name, site, action in sorted({(k, s if k == SITE else n, s, a) for k, n, s, a in wanted}):
        u = head.get(f"cluster:{name}@{site}") if kind == CLUSTER and action == APPLY else None
        u = u or _unit(kind, name, site)
        p = UnitPlan(Selected(u, action, ("random",)), PLANNED, PlanSummary(tuple(draw(changes))))
        if draw(st.integers(0, 9)) == 0:  # not synthesizable yet: pending, with no plan to read
            p.status, p.summary = "not synthesizable yet", None
        if draw(st.integers(0, 9)) == 0:
            p.blocked = "blocked elsewhere"
        if action == DESTROY and p.summary is not None and draw(st.booleans()):  # copies of some of what it loses
            lost = [c.address for c in p.summary.changes if c.loses_data]
            p.copies = tuple(
                datacopy.VolumeCopy(a.split(".")[-1], a, Path("/nonexistent"), 1, 1) for a in lost if draw(st.booleans())
            )
        plans.append(p)
    decisions = gate.Decisions(destroy=draw(st.booleans()), data_loss=draw(st.booleans()))
    return plans, head, decisions


def over_random_runs(test):
    """Hypothesis over `scenarios()`: a fixed seed and a bounded number of examples."""
    return seed(20261201)(settings(max_examples=400, deadline=None)(given(scenarios())(test)))


def runs(p: UnitPlan, refused) -> bool:
    return p.pending and gate.plan_id(p) not in refused


@over_random_runs
def test_no_data_is_destroyed_without_a_decision(scenario):
    plans, head, decisions = scenario
    refused = gate.refusals(plans, head, decisions)
    for p in plans:
        if not runs(p, refused) or p.summary is None or not p.summary.data_lost:
            continue
        target = move_target(p.selected.unit, head) if p.selected.action == DESTROY else None
        copied = set(p.summary.data_lost) <= {c.address for c in p.copies}
        assert decisions.data_loss or (target is not None and (target.spec.on_move == "drop" or (target.spec.on_move == "copy" and copied)))


@over_random_runs
def test_no_removed_definition_is_destroyed_without_a_decision(scenario):
    plans, head, decisions = scenario
    refused = gate.refusals(plans, head, decisions)
    for p in plans:
        if runs(p, refused) and p.selected.action == DESTROY and move_target(p.selected.unit, head) is None:
            assert decisions.destroy


def together(p: UnitPlan, q: UnitPlan) -> bool:
    """The change-group relation, stated independently of gate.change_groups: a move is a
    destroy of a cluster with an apply or destroy of it elsewhere; a removed site goes with the
    destroys of its clusters."""
    u, v = p.selected.unit, q.selected.unit
    move = u.kind == v.kind == CLUSTER and u.name == v.name and u.site != v.site and DESTROY in (p.selected.action, q.selected.action)
    site = {u.kind, v.kind} == {SITE, CLUSTER} and p.selected.action == q.selected.action == DESTROY and u.site == v.site
    return move or site


@over_random_runs
def test_no_change_group_is_half_applied(scenario):
    plans, head, decisions = scenario
    refused = gate.refusals(plans, head, decisions)
    for p in plans:
        for q in plans:
            if together(p, q) and gate.plan_id(p) in refused and q.pending:
                assert gate.plan_id(q) in refused, (p.selected, q.selected)
    # and nothing is refused for a group it is not in: unrelated units still apply
    group = {i: i for i in range(len(plans))}

    def root(i):
        while group[i] != i:
            i = group[i]
        return i

    for i, p in enumerate(plans):
        for k, q in enumerate(plans):
            if together(p, q):
                group[root(i)] = root(k)
    for i, p in enumerate(plans):
        reason = refused.get(gate.plan_id(p), "")
        if reason.startswith("it is one change with"):
            assert any(
                root(k) == root(i) and not refused.get(gate.plan_id(q), "it is one").startswith("it is one change with")
                for k, q in enumerate(plans)
            ), (p.selected, reason)
    # blocked elsewhere stays refused, with its own reason
    for p in plans:
        if p.pending and p.blocked:
            assert refused[gate.plan_id(p)] == p.blocked
