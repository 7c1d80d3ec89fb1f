"""The `--json` contract: one model per command's document, from which `scripts/gen-schema`
writes `schema/output/<command>.schema.json` (unknown keys refused, required keys listed).

Every document carries `format_version`; it changes only when a key is removed or changes
meaning, never when one is added. A test runs every command with `--json` and validates what
it prints against these schemas, so the code and the contract cannot drift apart. The
documents themselves are built where the text is (cli, render): these models describe them,
and are never in the path of a run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Document(_Out):
    format_version: Literal[1] = Field(description="Changes only when a key is removed or changes meaning")
    exit_code: int = Field(description="The process's exit code, repeated: 0 ok, 1 failed, 2 changes pending, 130 interrupted")


# ---------------------------------------------------------------- errors


class ProblemOut(_Out):
    file: str
    line: int = Field(description="1-based; 0 when the problem is the whole file")
    column: int
    field: str = Field(description="Dotted path of the field, e.g. node_pools.compute.cores; empty for the file")
    message: str
    hint: str


class InvalidDefinitions(Document):
    """Exit 1: the definitions do not validate; nothing was planned or applied."""

    error: Literal["invalid definitions"]
    problems: list[ProblemOut]


class Error(Document):
    """Exit 1 (or 130 when interrupted): a failure the user can act on."""

    error: str


# ---------------------------------------------------------------- plans (plan, apply, failover --dry-run)


class Counts(_Out):
    """Resource changes, with the words the text uses."""

    create: int
    update: int
    replace: int
    destroy: int
    move: int
    import_: int = Field(alias="import")


class Resource(_Out):
    address: str
    action: str = Field(description="create, update, replace, destroy, forget (a kept volume let go), move, read, no-op (an import alone)")
    previous_address: str
    reason: str
    drains: bool = Field(description="Replacing this node drains it first (running jobs finish)")


class ChangeClass(_Out):
    kind: str
    detail: str
    batches: list[list[str]]


class Copy(_Out):
    volume: str
    address: str
    files: int
    bytes: int
    route: Literal["rsync", "rclone", "storage-transfer", "datasync", "staged"] = Field(description="How the volume is copied (rpi.copyroute)")
    measured: bool = Field(description="Whether files and bytes were measured; a cloud file system is measured by its transfer service")


class Adopted(_Out):
    id: str
    address: str
    retained_at: str


class Unit(_Out):
    key: str = Field(description="site:NAME or cluster:NAME@SITE")
    kind: Literal["site", "cluster"]
    name: str
    site: str
    platform: str
    stack: str
    action: Literal["apply", "destroy"]
    reasons: list[str]
    depends_on: list[str]
    config_hash: str
    status: str = Field(description="The plan's status: planned, planned offline, failed, ...")
    pending: bool = Field(description="Changes remain after this run (after an apply: what it did not apply)")
    blocked: str = Field(description="Why this unit may not run; empty when it may")
    kept: list[str]
    kept_replaced: list[str] = Field(description="Data holders replaced in place whose old volume is retained (storage.on_move: keep)")
    copies: list[Copy]
    copy_note: str
    adopts: list[Adopted]
    health_probe: str
    change_class: ChangeClass | None = None
    changes: Counts | None = None
    destroys_data: list[str] | None = None
    resources: list[Resource] | None = None
    error: str | None = None
    outcome: str | None = Field(None, description="apply only: what the apply did with this unit")
    detail: str | None = Field(None, description="apply only: the outcome's detail")


class Head(_Out):
    label: str
    revision: str | None
    dirty: bool


class Move(_Out):
    cluster: str
    from_: str = Field(alias="from")
    to: str
    source: str
    target: str


class Plan(Document):
    """`plan --json`, `--dry-run --json` and `apply --json`."""

    head: Head
    base: str
    engine: str | None
    units: list[Unit]
    up_to_date: list[str]
    unchecked: list[str]
    out_of_scope: list[str]
    totals: Counts
    moves: list[Move]
    error: str | None = None


class Decision(_Out):
    cluster: str
    path: str
    source: str
    target: str | None = Field(description="null: refused")
    reasons: list[str]


class FailoverPlan(Plan):
    """`failover --dry-run --json`: the proposed change, planned."""

    failover: list[Decision]


class Failover(Document):
    """`failover --json` (a branch or a patch)."""

    failover: list[Decision]


# ---------------------------------------------------------------- the other commands


class Verdict(_Out):
    cluster: str
    site: str
    platform: str
    region: str
    role: str = Field(description="placement, or failover N")
    realizable: bool
    emulated: bool = Field(description="Realizable only as records: the local platform's records runtime runs nothing")
    reasons: list[str]
    machine_types: dict[str, str]
    zone: str = Field(description="The zone the cluster goes to on this site: one that offers every pool's type")


class Portability(Document):
    verdicts: list[Verdict]


class ValidUnit(_Out):
    key: str
    platform: str
    synthesizable: bool
    inputs: list[str]


class Validate(Document):
    valid: Literal[True]
    units: list[ValidUnit]
    portability: list[Verdict]
    ignored: list[str] = Field(description="Files beside the definitions that are not definitions, never read")


class Synth(Document):
    written: list[str]
    not_synthesizable: list[str]


class NodeStatus(_Out):
    hostname: str
    role: str
    in_git: bool
    applied: bool
    config: str
    config_version: str
    slurm: str
    sssd: str
    problem: str


class ClusterStatus(_Out):
    cluster: str
    site: str
    platform: str
    config_in_git: str
    published: str
    not_checked: str
    nodes: list[NodeStatus]


class Status(Document):
    clusters: list[ClusterStatus]


class Volume(_Out):
    id: str
    address: str
    platform: str
    site: str
    cluster: str
    volume: str
    kind: str
    size_gb: int
    status: Literal["retained", "in use", "left by a copy"] = Field(
        description="`left by a copy`: a staging area, transfer stack or unfinished copy (`kind`) that a copy noted; "
        "an apply removes it once its move has ended"
    )
    stack: str = Field(description="The stack that holds it; empty when retained")
    path: str = Field(description="The local platform's directory (or bucket); a staging area's place on any platform; empty otherwise")
    retained_at: str = Field(description="Empty when in use")
    revision: str | None
    from_stack: str = Field(description="The stack that let go of it; empty when in use")


class Volumes(Document):
    volumes: list[Volume]
    not_checked: list[str]


class WaveUnit(_Out):
    key: str
    title: str
    action: Literal["apply", "destroy"]
    reasons: list[str]
    config_hash: str
    needs: list[str] = Field(description="Units of earlier waves that must be done first (applied at this config hash, or destroyed)")


class Wave(_Out):
    name: Literal["landing-zones", "clusters", "cluster-destroys", "landing-zone-destroys"]
    units: list[WaveUnit] = Field(description="Applied at once, one runner each: `reconcile apply --only KEY`")
    jobs: list[str] = Field(
        description="The wave's units as at most `--max-jobs` runner jobs (GitHub runs at most 256 of one matrix), "
        "each a comma-separated list for `reconcile apply --only`: one unit a job while they fit"
    )


class Waves(Document):
    """`waves --json`: the units that need work, in the four ordered waves of a fanned-out apply."""

    head: Head
    waves: list[Wave] = Field(min_length=4, max_length=4)
    jobs: list[str] = Field(description="Every wave's units as at most `--max-jobs` jobs: a fanned-out plan's matrix (`--unit`)")


# The document each command prints with --json, and the file its schema is written to.
DOCUMENTS: dict[str, type[Document]] = {
    "plan": Plan,
    "failover-plan": FailoverPlan,
    "failover": Failover,
    "validate": Validate,
    "portability": Portability,
    "synth": Synth,
    "status": Status,
    "volumes": Volumes,
    "waves": Waves,
    "error": Error,
    "invalid-definitions": InvalidDefinitions,
}
