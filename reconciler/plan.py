"""PURE: Terraform plan JSON (`show -json` of a saved plan) -> per-unit change summaries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

HoldsData = Callable[[str, dict], bool]  # (resource type, its attributes or body) -> holds data?

ACTIONS = ("create", "update", "replace", "delete")


@dataclass(frozen=True)
class Change:
    address: str
    action: str  # create | update | replace | delete | read | move | no-op
    previous_address: str = ""
    reason: str = ""  # Terraform's action_reason, e.g. replace_because_cannot_update
    holds_data: bool = False  # the resource as it is now holds data (a filesystem, a bucket)
    imported: bool = False  # an import block brings an existing resource under this stack
    drains: bool = False  # a node that runs jobs: drained before it goes
    kept: bool = False  # a data holder replaced in place whose old volume is retained (storage.on_move: keep)
    same_name: str = ""  # a replacement whose new resource takes the old one's unique name (the name)

    @property
    def loses_data(self) -> bool:
        """Destroying or replacing a resource that holds data loses the data, unless the old
        volume is kept."""
        return self.holds_data and self.action in ("delete", "replace") and not self.kept


@dataclass(frozen=True)
class PlanSummary:
    changes: tuple[Change, ...]
    output_changes: tuple[str, ...] = ()

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def counts(self) -> dict[str, int]:
        return {**{action: self.count(action) for action in (*ACTIONS, "move")}, "import": sum(c.imported for c in self.changes)}

    @property
    def has_changes(self) -> bool:
        return bool(self.visible) or bool(self.output_changes)

    @property
    def visible(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.imported or c.action not in ("no-op", "read"))

    @property
    def replaces_all(self) -> bool:
        """Every resource that exists is replaced (two at least): a change that rebuilds the whole
        stack, such as a new zone or network, rather than a change to some part of it."""
        existing = [c for c in self.changes if c.action not in ("create", "read")]
        return len(existing) >= 2 and all(c.action == "replace" for c in existing)

    @property
    def data_lost(self) -> tuple[str, ...]:
        return tuple(c.address for c in self.changes if c.loses_data)


def action_of(actions: list[str], previous_address: str = "") -> str:
    if actions == ["no-op"]:
        return "move" if previous_address else "no-op"
    if sorted(actions) == ["create", "delete"]:
        return "replace"
    if len(actions) == 1 and actions[0] in ("create", "update", "delete", "read"):
        return actions[0]
    return "+".join(actions)


def _never(resource_type: str, body: dict) -> bool:
    return False


# The attribute that names a resource uniquely in its project, account or the world: the new
# resource of a replacement cannot take it while the old one exists (a kept volume).
UNIQUE_NAME = {
    "google_filestore_instance": "name",
    "google_storage_bucket": "name",
    "aws_s3_bucket": "bucket",
    "aws_efs_file_system": "creation_token",
}


def _same_name(rtype: str, before, after) -> str:
    attribute = UNIQUE_NAME.get(rtype)
    if not attribute or not isinstance(before, dict) or not isinstance(after, dict):
        return ""
    name = before.get(attribute)
    return str(name) if name and after.get(attribute) == name else ""


def summarize(plan: dict[str, Any], holds_data: HoldsData = _never) -> PlanSummary:
    """Per-resource actions from plan JSON. Values are never copied: only addresses, actions and
    whether the resource holds data (asked of `holds_data` with its attributes before the change)."""
    changes = []
    for rc in plan.get("resource_changes", []):
        if rc.get("mode") == "data":
            continue
        previous = rc.get("previous_address", "")
        before = rc["change"].get("before")
        changes.append(
            Change(
                address=rc["address"],
                action=action_of(rc["change"]["actions"], previous),
                previous_address=previous,
                reason=rc.get("action_reason", ""),
                holds_data=isinstance(before, dict) and holds_data(rc.get("type", ""), before),
                imported=bool(rc["change"].get("importing")),
                drains=_drains(before, action_of(rc["change"]["actions"], previous)),
                same_name=_same_name(rc.get("type", ""), before, rc["change"].get("after")),
            )
        )
    outputs = tuple(
        sorted(name for name, oc in (plan.get("output_changes") or {}).items() if oc.get("actions") != ["no-op"])
    )
    return PlanSummary(tuple(sorted(changes, key=lambda c: c.address)), outputs)


def _drains(before, action: str) -> bool:
    """A compute node of the slurm runtime is drained before it is destroyed or replaced (for
    at most the cluster's drain_timeout_s)."""
    node = (before or {}).get("input") if isinstance(before, dict) else None
    if action not in ("delete", "replace") or not isinstance(node, dict) or node.get("role") != "compute":
        return False
    return "site_dir" in node


def _resources(document: dict | None) -> dict[str, dict]:
    """{address: body} of the managed resources in a Terraform JSON document, metadata removed."""
    out = {}
    for rtype, by_name in ((document or {}).get("resource") or {}).items():
        for name, body in by_name.items():
            out[f"{rtype}.{name}"] = {k: v for k, v in body.items() if k != "//"}
    return out


def config_diff(base: dict | None, head: dict | None, holds_data: HoldsData = _never) -> PlanSummary:
    """A configuration-level diff between two synthesized documents, for when no live plan can run
    (no credentials). It cannot tell an update from a replace: only a live plan can."""
    before, after = _resources(base), _resources(head)
    changes = []
    for address in sorted(set(before) | set(after)):
        if address not in before:
            action = "create"
        elif address not in after:
            action = "delete"
        elif before[address] != after[address]:
            action = "update"
        else:
            action = "no-op"
        changes.append(Change(address, action, holds_data=address in before and holds_data(address.split(".")[0], before[address])))
    outputs_before = (base or {}).get("output") or {}
    outputs_after = (head or {}).get("output") or {}
    changed_outputs = tuple(sorted(k for k in set(outputs_before) | set(outputs_after) if outputs_before.get(k) != outputs_after.get(k)))
    return PlanSummary(tuple(changes), changed_outputs)


# ---------------------------------------------------------------- what a change does to a running cluster

NODE_ADDRESS = re.compile(r"^(terraform_data|google_compute_instance|aws_instance)\.node_(?P<pool>.+)_(?P<index>\d+)$")
CONFIG_ONLY, CREATES_ONLY, REMOVES, ROLLING, REPLACE_ALL, DATA = (
    "config only", "creates only", "removes nodes", "rolling", "replace-all", "data",
)
BATCH = 1  # nodes replaced at a time when a pool rolls


@dataclass(frozen=True)
class ChangeClass:
    """One class per change to a cluster, from the least to the most disruptive, with what it
    means in words and, for a rolling change, the batches the apply goes through."""

    kind: str
    detail: str
    batches: tuple[tuple[str, ...], ...] = ()


def controller_address(summary: PlanSummary, cluster: str, hostname: str) -> str:
    """The address of the node whose hostname is `hostname` (`CLUSTER-POOL-INDEX`)."""
    for c in summary.changes:
        match = NODE_ADDRESS.match(c.address)
        if match and f"{cluster}-{match['pool']}-{match['index']}".replace("_", "-") == hostname.replace("_", "-"):
            return c.address
    return ""


def classify(summary: PlanSummary, rolls: bool, controller: str = "", batch: int = BATCH) -> ChangeClass | None:
    """What `summary` does to a running cluster. `rolls`: this platform replaces nodes in
    batches of `batch` (drain, replace, wait until healthy); elsewhere nodes are replaced at
    once. `controller`: the controller node's address, which rolls last, alone."""
    active = [c for c in summary.changes if c.action not in ("no-op", "read")]
    if not active:
        return None
    if summary.data_lost:
        return ChangeClass(DATA, f"destroys data: {', '.join(summary.data_lost)}")
    pools: dict[str, list[Change]] = {}
    for c in summary.changes:
        match = NODE_ADDRESS.match(c.address)
        if match:
            pools.setdefault(match["pool"], []).append(c)
    replaced = [c.address for cs in pools.values() for c in cs if c.action == "replace"]
    removed = [c.address for cs in pools.values() for c in cs if c.action == "delete"]
    created = [c.address for cs in pools.values() for c in cs if c.action == "create"]
    at_once = sorted(
        pool for pool, cs in pools.items()
        if (existing := [c for c in cs if c.action != "create"]) and all(c.action == "replace" for c in existing)
        and (not rolls or len(existing) <= batch)
    )
    if replaced and (at_once or not rolls):
        which = ", ".join(at_once) if at_once else "some"
        return ChangeClass(REPLACE_ALL, f"replaces every node of pool {which} at once ({len(replaced)} nodes): running jobs there are lost")
    if replaced:
        others = sorted(a for a in replaced if a != controller)
        batches = tuple(tuple(others[i : i + batch]) for i in range(0, len(others), batch))
        batches += ((controller,),) if controller in replaced else ()  # the controller goes last, alone
        return ChangeClass(ROLLING, f"{len(replaced)} nodes drained and replaced, {batch} at a time, the controller last", batches)
    if removed:
        return ChangeClass(REMOVES, f"{len(removed)} nodes drained, then removed")
    others = [c for c in active if not NODE_ADDRESS.match(c.address)]
    if created and all(c.action == "create" for c in others):
        return ChangeClass(CREATES_ONLY, f"{len(created)} node{'s' if len(created) != 1 else ''} created; no running node changes")
    if all(c.action == "create" for c in active):
        return ChangeClass(CREATES_ONLY, "only new resources; no running node changes")
    return ChangeClass(CONFIG_ONLY, "no node is created, replaced or removed")
