"""Parallel apply: wall time against the critical path.

The talk measured about 23 minutes for a landing zone and 7 for a vCluster. This applies one
landing zone and four clusters through the real scheduler (`reconciler.apply.apply`) with an
engine stand-in that sleeps those durations scaled down (1 minute -> SCALE seconds), and prints
wall time divided by the critical path (landing zone + one cluster). Target: at most 1.1.
Sequential apply would take the sum instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reconciler.affected import APPLY, Selected
from reconciler.apply import APPLIED, apply
from reconciler.gitsource import Snapshot
from reconciler.plan import Change, PlanSummary
from reconciler.resolve import CLUSTER, SITE, Unit
from reconciler.run import PLANNED, UnitPlan
from rpi.spec import StateLocation

LANDING_ZONE_MINUTES, CLUSTER_MINUTES = 23, 7


class SleepingEngine:
    """Same interface as reconciler.engine.Engine for apply; sleeps instead of calling Terraform."""

    name = "stand-in"

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def apply(self, workdir: Path) -> None:
        time.sleep(self.seconds[workdir.name])


class NoStore:
    def write(self, *args) -> None:
        pass

    def forget(self, *args) -> None:
        pass


def planned(kind: str, name: str) -> UnitPlan:
    deps = ("site:zurich",) if kind == CLUSTER else ()
    unit = Unit(kind, name, "zurich", "local", (), deps, None, "", StateLocation("local", "zurich", name))
    p = UnitPlan(Selected(unit, APPLY, ("bench",)), PLANNED, PlanSummary((Change("x.y", "create"),)))
    p.workdir = Path(name)
    return p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1, help="seconds per talk-minute (default 0.1)")
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    plans = [planned(SITE, "zurich")] + [planned(CLUSTER, f"c{i}") for i in range(args.clusters)]
    seconds = {"zurich": LANDING_ZONE_MINUTES * args.scale, **{f"c{i}": CLUSTER_MINUTES * args.scale for i in range(args.clusters)}}
    start = time.perf_counter()
    results = apply(plans, SleepingEngine(seconds), NoStore(), Snapshot("bench", None, False, {}), parallelism=args.clusters)
    wall = time.perf_counter() - start
    assert all(r.outcome == APPLIED for r in results)
    critical = seconds["zurich"] + CLUSTER_MINUTES * args.scale
    total = sum(seconds.values())
    figures = {"wall_s": round(wall, 3), "critical_path_s": round(critical, 3), "sum_s": round(total, 3), "wall_over_critical_path": round(wall / critical, 3)}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"apply of 1 landing zone + {args.clusters} clusters (1 talk-minute = {args.scale}s):")
        print(f"  wall {wall:.2f}s, critical path {critical:.2f}s, sequential sum {total:.2f}s")
        print(f"  wall / critical path = {wall / critical:.3f} (target <= 1.1)")
    return 0 if wall / critical <= 1.1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
