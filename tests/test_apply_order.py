"""Parallel apply: dependency order, a bound on parallelism, failures stop only dependents.

Real stacks through the real scheduler (`reconciler.apply.apply`), the embedded engine and a
`LiveStore`: each stack is a `terraform_data` whose local-exec provisioner writes when it
starts and ends (and sleeps, or fails, where told) to one events file. Order and concurrency
are read from that file, written by the engine's own processes; the records from the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.affected import APPLY, DESTROY, Selected
from reconciler.apply import APPLIED, FAILED, REFUSED, SKIPPED, apply
from reconciler.engine import select_engine
from reconciler.gitsource import Snapshot
from reconciler.live import LiveRecord, LiveStore
from reconciler.plan import summarize
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.run import PLANNED, UnitPlan
from rpi.spec import ClusterSpec, StateLocation, Subnet

SNAP = Snapshot("test", "0" * 40, False, {})
# What a cluster stack with no pools outputs: the health check's outputs agree with EMPTY specs.
EMPTY_OUTPUTS = {"node_count": {"value": 0}, "nodes": {"value": {}}, "login_addresses": {"value": []}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("apply-order")
    return select_engine("auto", root / "work", root)  # the order is the scheduler's, whichever engine runs


class Stacks:
    """Stacks made, initialised and planned for real; `apply` runs them through the scheduler."""

    def __init__(self, root: Path, engine):
        self.root, self.engine = root, engine
        self.events = root / "events.log"
        self.store = LiveStore(root)

    def planned(self, kind: str, name: str, site: str, action: str = APPLY, seconds: float = 0.2, fail: bool = False,
                health_command=()) -> UnitPlan:
        deps = (f"site:{site}",) if kind == CLUSTER else ()
        stack = f"cluster-{name}" if kind == CLUSTER else "landing-zone"
        state = StateLocation("local", f"state/{site}", f"{stack}.tfstate")
        spec = cluster_spec(name, site, state, health_command) if kind == CLUSTER else None
        unit = Unit(kind, name, site, "local", (), deps, spec, "h" * 64, state)
        key = unit.key.replace(":", "_").replace("@", "_")
        workdir = self.root / "work" / key
        workdir.mkdir(parents=True, exist_ok=True)
        command = (f"echo start {key} $(date +%s.%N) >> {self.events}; sleep {seconds}; "
                   f"echo end {key} $(date +%s.%N) >> {self.events}" + ("; exit 3" if fail else ""))
        resource = {"input": key, "provisioner": [{"local-exec": {"command": command}}]}
        if action == DESTROY:  # the provisioner runs at destroy time: a destroy that is applied for real
            resource["provisioner"][0]["local-exec"]["when"] = "destroy"
        document = {"terraform": {"backend": {"local": {}}}, "resource": {"terraform_data": {"x": resource}},
                    "output": {k: {"value": v["value"]} for k, v in EMPTY_OUTPUTS.items()}}
        (workdir / "cdk.tf.json").write_text(json.dumps(document))
        self.engine.init(workdir, {"path": str(self.store.state_file(state))})
        if action == DESTROY:  # a stack that exists, to be destroyed
            self.engine.plan(workdir)
            self.engine.apply(workdir)
        summary = summarize(self.engine.plan(workdir, destroy=action == DESTROY))
        p = UnitPlan(Selected(unit, action, ("test",)), PLANNED, summary)
        p.workdir = workdir
        return p

    def apply(self, plans, parallelism: int = 4):
        self.events.unlink(missing_ok=True)  # what the set-up's applies wrote is not the run's
        return apply(plans, self.engine, self.store, SNAP, parallelism)

    def times(self, kind: str) -> dict[str, float]:
        lines = self.events.read_text().splitlines() if self.events.exists() else []
        return {key: float(t) for k, key, t in (line.split() for line in lines) if k == kind}

    def peak(self) -> int:
        lines = sorted((float(t), k) for k, _, t in (line.split() for line in self.events.read_text().splitlines()))
        active = peak = 0
        for _, k in lines:
            active += 1 if k == "start" else -1
            peak = max(peak, active)
        return peak


def cluster_spec(name: str, site: str, state: StateLocation, health_command=()) -> ClusterSpec:
    return ClusterSpec(
        name, "minimal", site, "local", "", "", (), Subnet("s", "10.0.0.0/24", "10.0.0.1"), False, (), (), (), (),
        None, False, None, (), (), (), state, health_command=tuple(health_command), health_timeout_s=5,
    )


@pytest.fixture
def stacks(tmp_path, engine) -> Stacks:
    return Stacks(tmp_path, engine)


def recorded(stacks: Stacks, p: UnitPlan) -> bool:
    """The store holds a record of this very configuration (not just a state without one)."""
    record = stacks.store.read(p.selected.unit)
    return isinstance(record, LiveRecord) and record.config_hash == p.selected.unit.config_hash


def key(p: UnitPlan) -> str:
    return p.workdir.name


def test_landing_zone_first_then_clusters_in_parallel_within_the_bound(stacks):
    site = stacks.planned(SITE, "a", "a")
    clusters = [stacks.planned(CLUSTER, f"c{i}", "a", seconds=0.6) for i in range(4)]
    results = stacks.apply([site, *clusters], parallelism=2)
    assert [r.outcome for r in results] == [APPLIED] * 5
    starts, ends = stacks.times("start"), stacks.times("end")
    assert all(starts[key(c)] >= ends[key(site)] for c in clusters)
    assert stacks.peak() == 2  # two at once, never more
    for p in (site, *clusters):  # each applied stack is recorded in its site's store
        assert recorded(stacks, p)


def test_a_failed_stack_stops_its_dependents_and_not_the_rest(stacks):
    a, b = stacks.planned(SITE, "a", "a", fail=True), stacks.planned(SITE, "b", "b")
    on_a, on_b = stacks.planned(CLUSTER, "x", "a"), stacks.planned(CLUSTER, "y", "b")
    results = {r.plan.selected.unit.key: r for r in stacks.apply([a, b, on_a, on_b])}
    assert results["site:a"].outcome == FAILED
    assert results["cluster:x@a"].outcome == SKIPPED and "site:a" in results["cluster:x@a"].detail
    assert results["site:b"].outcome == APPLIED and results["cluster:y@b"].outcome == APPLIED
    assert key(on_a) not in stacks.times("start")
    assert not recorded(stacks, a) and recorded(stacks, b)  # a failed apply is not recorded


def test_make_before_break_and_sites_destroyed_last(stacks):
    target = stacks.planned(CLUSTER, "dev", "b", seconds=0.5)
    source = stacks.planned(CLUSTER, "dev", "a", DESTROY)
    site_a = stacks.planned(SITE, "a", "a", DESTROY)
    results = stacks.apply([target, source, site_a])
    assert [r.outcome for r in results] == [APPLIED] * 3
    starts, ends = stacks.times("start"), stacks.times("end")
    assert starts[key(source)] >= ends[key(target)]
    assert starts[key(site_a)] >= ends[key(source)]


def test_failed_target_keeps_the_source(stacks):
    target = stacks.planned(CLUSTER, "dev", "b", fail=True)
    source = stacks.planned(CLUSTER, "dev", "a", DESTROY)
    results = stacks.apply([target, source])
    assert [r.outcome for r in results] == [FAILED, SKIPPED]
    assert key(source) not in stacks.times("start")
    assert stacks.store.state_file(source.selected.unit.state).is_file()  # the source's state is whole


def test_unhealthy_target_keeps_the_source(stacks):
    target = stacks.planned(CLUSTER, "dev", "b", health_command=["sh", "-c", "echo no scheduler >&2; exit 3"])
    source = stacks.planned(CLUSTER, "dev", "a", DESTROY)
    results = stacks.apply([target, source])
    assert results[0].outcome == FAILED and "health check failed" in results[0].detail and "no scheduler" in results[0].detail
    assert results[1].outcome == SKIPPED
    assert key(source) not in stacks.times("start")


def test_blocked_plan_is_refused_and_stops_nothing_else(stacks):
    blocked = stacks.planned(CLUSTER, "dev", "a", DESTROY)
    blocked.blocked = "the move would destroy data"
    other = stacks.planned(SITE, "b", "b")
    results = stacks.apply([blocked, other])
    assert [r.outcome for r in results] == [REFUSED, APPLIED]
    assert key(blocked) not in stacks.times("start")
