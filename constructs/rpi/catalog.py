"""Machine catalogs per platform and region (data in `rpi/<platform>/catalog.json`), and the
rule that turns a node spec into a machine type: the smallest type that satisfies it.

Pure data and pure functions: reading a catalog never starts Node.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from rpi.spec import NodeSpec

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class MachineType:
    name: str
    family: str
    vcpus: int
    cores: int
    memory_gb: int
    gpu_model: str | None
    gpu_count: int
    local_ssd_gb: int
    local_ssd: str  # bundled | attachable | none
    fabric: str  # e.g. "efa"; "" when none
    efa_interfaces: int = 0  # AWS: the EFA interfaces the type takes, one per network card that has one

    def describe(self) -> str:
        gpu = f", {self.gpu_count}x {self.gpu_model}" if self.gpu_count else ""
        ssd = f", {self.local_ssd_gb} GB local SSD" if self.local_ssd_gb else ""
        return f"{self.name} ({self.cores} cores, {self.memory_gb} GiB{gpu}{ssd})"


@dataclass(frozen=True)
class Catalog:
    platform: str
    machine_types: dict[str, MachineType]
    regions: dict[str, tuple[str, ...]]
    gpu_models: dict[str, str]
    zones: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)  # (type, region) -> zones

    def offered(self, region: str) -> list[MachineType]:
        return [self.machine_types[n] for n in self.regions.get(region, ())]

    def zones_known(self, region: str) -> bool:
        """Whether offers per zone are recorded for `region` (offers.csv has rows for it)."""
        return any(r == region for _, r in self.zones)

    def zones_of(self, machine_type: str, region: str) -> tuple[str, ...]:
        return self.zones.get((machine_type, region), ())


def choose_zone(cat: Catalog, region: str, zones: tuple[str, ...], types: dict[str, str],
                fixed: str | None = None) -> tuple[str | None, str]:
    """The zone a cluster goes to: `fixed` (its placement.zone) if it offers every pool's type,
    else the first of the site's `zones` that does. (zone, "") or (None, why not: the zones
    that offer each pool). `types`: pool -> machine type. Where offers per zone are not
    recorded for the region, the fixed zone or the site's first, unchecked."""
    if not cat.zones_known(region):
        return fixed or zones[0], ""
    candidates = (fixed,) if fixed else zones
    for zone in candidates:
        if all(zone in cat.zones_of(t, region) for t in types.values()):
            return zone, ""
    lacking = [f"{pool} ({t}) in {', '.join(cat.zones_of(t, region)) or 'no zone'}" for pool, t in types.items()]
    where = f"zone {fixed} does not offer" if fixed else f"no zone of the site ({', '.join(zones)}) offers"
    every = sorted(set.intersection(*(set(cat.zones_of(t, region)) for t in types.values()))) if types else []
    hint = f"; every pool is offered in {', '.join(every)}" if every else "; no zone of the region offers every pool"
    return None, f"{where} every pool's type: {'; '.join(lacking)}{hint}"


@dataclass(frozen=True)
class Match:
    """The chosen type, or why none fits with the nearest candidates and what each lacks."""

    machine: MachineType | None
    problem: str = ""
    nearest: tuple[tuple[MachineType, tuple[str, ...]], ...] = ()

    def explain(self) -> str:
        if self.machine is not None:
            return self.machine.describe()
        text = self.problem
        if self.nearest:
            text += "; nearest: " + "; ".join(f"{m.name} lacks {', '.join(short)}" for m, short in self.nearest)
        return text


@cache
def catalog(platform: str) -> Catalog | None:
    """The platform's catalog, or None for a platform without one (local takes any node spec)."""
    path = _HERE / platform / "catalog.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    types = {name: MachineType(name=name, **fields) for name, fields in raw["machine_types"].items()}
    regions = {region: tuple(names) for region, names in raw["regions"].items()}
    zones: dict[tuple[str, str], list[str]] = {}
    offers = _HERE / platform / "offers.csv"
    if offers.is_file():
        with offers.open(newline="") as handle:
            for row in csv.DictReader(handle):
                zones.setdefault((row["machine_type"], row["region"]), []).append(row["zone"])
    return Catalog(raw["platform"], types, regions, dict(raw.get("gpu_models", {})),
                   {k: tuple(v) for k, v in zones.items()})


def shortfalls(machine: MachineType, node: NodeSpec) -> tuple[str, ...]:
    """What a machine type lacks for a node spec; empty when it fits."""
    out = []
    if machine.cores < node.cores:
        out.append(f"cores ({machine.cores} < {node.cores})")
    if machine.memory_gb < node.memory_gb:
        out.append(f"memory ({machine.memory_gb} < {node.memory_gb} GiB)")
    if node.gpu_model:
        if machine.gpu_model != node.gpu_model:
            out.append(f"{node.gpu_model} (has {machine.gpu_model or 'no GPU'})")
        elif machine.gpu_count < node.gpu_count:
            out.append(f"GPUs ({machine.gpu_count} < {node.gpu_count})")
    elif machine.gpu_count:
        out.append("a CPU-only type (it carries GPUs)")
    if machine.local_ssd_gb < node.local_ssd_gb:
        out.append(f"local SSD ({machine.local_ssd_gb} < {node.local_ssd_gb} GB)")
    return tuple(out)


def _size(machine: MachineType) -> tuple:
    return (machine.gpu_count, machine.cores, machine.memory_gb, machine.local_ssd_gb, machine.name)


def resolve(cat: Catalog, region: str, node: NodeSpec) -> Match:
    """The smallest type offered in `region` that satisfies `node`."""
    if region not in cat.regions:
        known = ", ".join(sorted(cat.regions))
        return Match(None, f"region {region} is not in the {cat.platform} catalog (known: {known})")
    offered = cat.offered(region)
    if node.gpu_model and not any(m.gpu_model == node.gpu_model for m in offered):
        anywhere = sorted({r for r, names in cat.regions.items() if any(cat.machine_types[n].gpu_model == node.gpu_model for n in names)})
        where = f"; offered in {', '.join(anywhere)}" if anywhere else f"; {cat.platform} offers it in no catalogued region"
        return Match(None, f"{node.gpu_model} is not offered in {region}{where}")
    fitting = sorted((m for m in offered if not shortfalls(m, node)), key=_size)
    if fitting:
        return Match(fitting[0])
    ranked = sorted(offered, key=lambda m: (len(shortfalls(m, node)), -m.gpu_count, -m.cores, -m.memory_gb, m.name))
    nearest = tuple((m, shortfalls(m, node)) for m in ranked[:3])
    return Match(None, f"no type in {region} has {_wanted(node)}", nearest)


def _wanted(node: NodeSpec) -> str:
    parts = [f"{node.cores} cores", f"{node.memory_gb} GiB"]
    if node.gpu_model:
        parts.append(f"{node.gpu_count}x {node.gpu_model}")
    if node.local_ssd_gb:
        parts.append(f"{node.local_ssd_gb} GB local SSD")
    return ", ".join(parts)
