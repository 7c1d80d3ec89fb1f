"""PURE: which planned units may apply, given the decisions a person made.

One gate for every path that destroys: a removed definition or site needs the destroy
decision; destroying or replacing a resource that holds data needs the data decision (a move
says it in the definition, `storage.on_move`); and a change group applies all or nothing:
both halves of a move, or a site with the clusters removed with it. A refusal that comes
from elsewhere (a plan whose move is undecided, a stack that differs from the reviewed
plan) is already on the plan as `blocked`, and refuses its whole group too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from reconciler import affected
from reconciler.affected import APPLY, DESTROY, move_target
from reconciler.plan import REPLACE_ALL
from reconciler.resolve import Unit
from reconciler.run import UnitPlan

ALLOW_DESTROY_LABEL = "reconcile:allow-destroy"
ALLOW_DATA_LOSS_LABEL = "reconcile:allow-data-loss"
ALLOW_REPLACE_LABEL = "reconcile:allow-replace"

PlanId = tuple[str, str]  # (action, unit key): one unit can be destroyed and applied in one run


@dataclass(frozen=True)
class Decisions:
    """What a person allowed: a flag locally, a pull-request label in the pull-request flow.

    In the pull-request flow a decision covers only what the reviewed plan showed (`shown`:
    unit key -> `needs(plan)` as the reviewed comment recorded it): a label never extends to a
    stack or a resource that was not on the plan the reviewers read."""

    destroy: bool = False
    data_loss: bool = False
    replace: bool = False
    shown: Mapping[str, Mapping] | None = None  # None: decided at a terminal, over the plan just shown


def needs(p: UnitPlan) -> dict:
    """What of this plan a decision would have to cover, per class: recorded in the reviewed
    comment, so that a decision is bound to it."""
    summary = p.summary
    wanted = {
        "destroy": p.selected.action == DESTROY,
        "data": sorted(summary.data_lost) if summary is not None else [],
        "replace_all": bool(summary is not None and summary.replaces_all) or _replaces_at_once(p),
    }
    return {k: v for k, v in wanted.items() if v}  # only what applies: one line holds hundreds of stacks


def _covers(decisions: Decisions, decision: str, p: UnitPlan) -> bool:
    if not getattr(decisions, decision):
        return False
    if decisions.shown is None:
        return True
    shown = decisions.shown.get(p.selected.unit.key) or {}
    if decision == "data_loss":
        return set(needs(p).get("data", ())) <= set(shown.get("data") or ())
    return bool(shown.get("destroy" if decision == "destroy" else "replace_all"))


def _unreviewed(decisions: Decisions, decision: str) -> str:
    """Why a decision that was given does not cover this plan, or ""."""
    if not getattr(decisions, decision) or decisions.shown is None:
        return ""
    label = {"destroy": ALLOW_DESTROY_LABEL, "data_loss": ALLOW_DATA_LOSS_LABEL, "replace": ALLOW_REPLACE_LABEL}[decision]
    return f"; the `{label}` decision covers only what the reviewed plan showed, and it did not show this: plan again"


def plan_id(p: UnitPlan) -> PlanId:
    return (p.selected.action, p.selected.unit.key)


def change_groups(plans: Sequence[UnitPlan]) -> list[list[UnitPlan]]:
    """Plans that must apply together (`affected.together`): the halves of each move, and a
    removed site with its clusters' destroys. Every other plan is a group of its own."""
    by_selected = {id(p.selected): p for p in plans}
    return [[by_selected[id(s)] for s in group] for group in affected.groups([p.selected for p in plans])]


def refusals(plans: Sequence[UnitPlan], head: Mapping[str, Unit], decisions: Decisions) -> dict[PlanId, str]:
    """Why each refused plan may not apply; plans not named may. Nothing here has side effects."""
    refused: dict[PlanId, str] = {}
    for p in plans:
        if not p.pending:
            continue
        if p.blocked:
            refused[plan_id(p)] = p.blocked
            continue
        unit = p.selected.unit
        target = move_target(unit, head) if p.selected.action == DESTROY else None
        lost = p.summary.data_lost if p.summary is not None else ()
        if p.selected.action == DESTROY and target is None and not _covers(decisions, "destroy", p):
            refused[plan_id(p)] = (
                f"destroying {unit.title} needs an explicit decision: the `{ALLOW_DESTROY_LABEL}` label on the "
                "pull request, or --allow-destroy" + _unreviewed(decisions, "destroy")
            )
        elif lost and not _covers(decisions, "data_loss", p) and not (target is not None and _decided(target, p)):
            refused[plan_id(p)] = (
                f"{'destroying' if p.selected.action == DESTROY else 'this change to'} {unit.title} would destroy data "
                f"({', '.join(lost)}); that needs an explicit decision: the `{ALLOW_DATA_LOSS_LABEL}` label on the "
                "pull request, or --allow-data-loss" + (f"; or storage.on_move in {target.inputs[0]}" if target is not None else "")
                + _unreviewed(decisions, "data_loss")
            )
        elif _replaces_at_once(p) and not _covers(decisions, "replace", p):
            refused[plan_id(p)] = (
                f"this change to {unit.title} {p.change_class.detail}; that needs an explicit decision: the "
                f"`{ALLOW_REPLACE_LABEL}` label on the pull request, or --allow-replace" + _unreviewed(decisions, "replace")
            )
        elif p.summary is not None and p.summary.replaces_all and not _covers(decisions, "replace", p):
            refused[plan_id(p)] = (
                f"this change replaces every resource of {unit.title} ({p.summary.count('replace')}); that needs an explicit "
                f"decision: the `{ALLOW_REPLACE_LABEL}` label on the pull request, or --allow-replace"
                + _unreviewed(decisions, "replace")
            )
    for group in change_groups(plans):
        first = next((p for p in group if plan_id(p) in refused), None)
        if first is None:
            continue
        for p in group:
            if plan_id(p) not in refused and (p.pending or p.selected.action == APPLY):
                refused[plan_id(p)] = (
                    f"it is one change with {_half(first)}, which is refused: no part of it applies"
                )
    return refused


def _replaces_at_once(p: UnitPlan) -> bool:
    """Every node of a pool replaced at once (a change class of its own: replace-all)."""
    change_class = getattr(p, "change_class", None)
    return change_class is not None and change_class.kind == REPLACE_ALL


def _decided(target: Unit, p: UnitPlan) -> bool:
    """The definition decided: drop the data, or copy it, where the plan copies all it loses."""
    on_move = getattr(target.spec, "on_move", "")
    return on_move == "drop" or (on_move == "copy" and p.copies_cover_data)


def _half(p: UnitPlan) -> str:
    verb = "destroying" if p.selected.action == DESTROY else "applying"
    return f"{verb} {p.selected.unit.title}"
