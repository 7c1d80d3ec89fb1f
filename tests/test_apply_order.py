"""Parallel apply: dependency order, a bound on parallelism, failures stop only dependents.

The engine here is a stand-in that implements the same interface as the real one (it records
what ran when, and fails where told), because ordering under concurrency is what is tested.
"""

from __future__ import annotations

import threading
import time

from reconciler.affected import APPLY, DESTROY, Selected
from reconciler.apply import APPLIED, FAILED, REFUSED, SKIPPED, apply
from reconciler.errors import EngineError
from reconciler.gitsource import Snapshot
from reconciler.plan import Change, PlanSummary
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.run import PLANNED, UnitPlan
from rpi.spec import ClusterSpec, StateLocation, Subnet


class StandInEngine:
    name = "stand-in"

    def __init__(self, seconds: dict[str, float], fail: set[str] = frozenset()):
        self.seconds, self.fail = seconds, fail
        self.events: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.active = self.peak = 0

    def apply(self, workdir):
        key = workdir.name
        with self.lock:
            self.events.append((time.monotonic(), "start", key))
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.seconds.get(key, 0.05))
        with self.lock:
            self.active -= 1
            self.events.append((time.monotonic(), "end", key))
        if key in self.fail:
            raise EngineError(f"{key} failed")

    def outputs(self, workdir):
        """What a cluster stack with no pools outputs: agrees with EMPTY_CLUSTER."""
        return {"node_count": {"value": 0}, "nodes": {"value": {}}, "login_addresses": {"value": []}}

    def order(self, kind: str) -> dict[str, float]:
        return {key: t for t, k, key in self.events if k == kind}


class NullStore:
    def write(self, *args):
        pass

    def forget(self, *args):
        pass


def cluster_spec(name: str, site: str, health_command=()) -> ClusterSpec:
    state = StateLocation("local", site, name)
    return ClusterSpec(
        name, "minimal", site, "local", "", "", (), Subnet("s", "10.0.0.0/24", "10.0.0.1"), False, (), (), (), (),
        None, False, None, (), (), (), state, health_command=tuple(health_command), health_timeout_s=1,
    )


def unit(kind: str, name: str, site: str, health_command=()) -> Unit:
    deps = (f"site:{site}",) if kind == CLUSTER else ()
    spec = cluster_spec(name, site, health_command) if kind == CLUSTER else None
    return Unit(kind, name, site, "local", (), deps, spec, "h", StateLocation("local", site, name))


def planned(u: Unit, action: str = APPLY) -> UnitPlan:
    p = UnitPlan(Selected(u, action, ("test",)), PLANNED, PlanSummary((Change("terraform_data.x", "create"),)))
    from pathlib import Path

    p.workdir = Path("/nonexistent") / u.key.replace(":", "_")
    return p


SNAP = Snapshot("test", None, False, {})


def test_landing_zone_first_then_clusters_in_parallel_within_the_bound():
    site = planned(unit(SITE, "a", "a"))
    clusters = [planned(unit(CLUSTER, f"c{i}", "a")) for i in range(4)]
    engine = StandInEngine({})
    results = apply([site, *clusters], engine, NullStore(), SNAP, parallelism=2)
    assert [r.outcome for r in results] == [APPLIED] * 5
    starts, ends = engine.order("start"), engine.order("end")
    assert all(starts[c.workdir.name] >= ends[site.workdir.name] for c in clusters)
    assert engine.peak == 2


def test_a_failed_stack_stops_its_dependents_and_not_the_rest():
    a, b = planned(unit(SITE, "a", "a")), planned(unit(SITE, "b", "b"))
    on_a, on_b = planned(unit(CLUSTER, "x", "a")), planned(unit(CLUSTER, "y", "b"))
    engine = StandInEngine({}, fail={a.workdir.name})
    results = {r.plan.selected.unit.key: r for r in apply([a, b, on_a, on_b], engine, NullStore(), SNAP)}
    assert results["site:a"].outcome == FAILED
    assert results["cluster:x@a"].outcome == SKIPPED and "site:a" in results["cluster:x@a"].detail
    assert results["site:b"].outcome == APPLIED and results["cluster:y@b"].outcome == APPLIED


def test_make_before_break_and_sites_destroyed_last():
    target = planned(unit(CLUSTER, "dev", "b"))
    source = planned(unit(CLUSTER, "dev", "a"), DESTROY)
    site_a = planned(unit(SITE, "a", "a"), DESTROY)
    engine = StandInEngine({target.workdir.name: 0.2})
    apply([target, source, site_a], engine, NullStore(), SNAP)
    starts, ends = engine.order("start"), engine.order("end")
    assert starts[source.workdir.name] >= ends[target.workdir.name]
    assert starts[site_a.workdir.name] >= ends[source.workdir.name]


def test_failed_target_keeps_the_source():
    target = planned(unit(CLUSTER, "dev", "b"))
    source = planned(unit(CLUSTER, "dev", "a"), DESTROY)
    engine = StandInEngine({}, fail={target.workdir.name})
    results = apply([target, source], engine, NullStore(), SNAP)
    assert [r.outcome for r in results] == [FAILED, SKIPPED]
    assert source.workdir.name not in engine.order("start")


def test_unhealthy_target_keeps_the_source():
    target = planned(unit(CLUSTER, "dev", "b", health_command=["sh", "-c", "echo no scheduler >&2; exit 3"]))
    source = planned(unit(CLUSTER, "dev", "a"), DESTROY)
    engine = StandInEngine({})
    results = apply([target, source], engine, NullStore(), SNAP)
    assert results[0].outcome == FAILED and "health check failed" in results[0].detail and "no scheduler" in results[0].detail
    assert results[1].outcome == SKIPPED
    assert source.workdir.name not in engine.order("start")


def test_blocked_plan_is_refused_and_stops_nothing_else():
    blocked = planned(unit(CLUSTER, "dev", "a"), DESTROY)
    blocked.blocked = "the move would destroy data"
    other = planned(unit(SITE, "b", "b"))
    results = apply([blocked, other], StandInEngine({}), NullStore(), SNAP)
    assert [r.outcome for r in results] == [REFUSED, APPLIED]
