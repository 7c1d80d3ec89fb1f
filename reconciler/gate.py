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
from reconciler.resolve import Unit
from reconciler.run import UnitPlan

ALLOW_DESTROY_LABEL = "reconcile:allow-destroy"
ALLOW_DATA_LOSS_LABEL = "reconcile:allow-data-loss"

PlanId = tuple[str, str]  # (action, unit key): one unit can be destroyed and applied in one run


@dataclass(frozen=True)
class Decisions:
    """What a person allowed: a flag locally, a pull-request label in the pull-request flow."""

    destroy: bool = False
    data_loss: bool = False


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
        if p.selected.action == DESTROY and target is None and not decisions.destroy:
            refused[plan_id(p)] = (
                f"destroying {unit.title} needs an explicit decision: the `{ALLOW_DESTROY_LABEL}` label on the "
                "pull request, or --allow-destroy"
            )
        elif lost and not decisions.data_loss and not (target is not None and _decided(target, p)):
            refused[plan_id(p)] = (
                f"{'destroying' if p.selected.action == DESTROY else 'this change to'} {unit.title} would destroy data "
                f"({', '.join(lost)}); that needs an explicit decision: the `{ALLOW_DATA_LOSS_LABEL}` label on the "
                "pull request, or --allow-data-loss" + (f"; or storage.on_move in {target.inputs[0]}" if target is not None else "")
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


def _decided(target: Unit, p: UnitPlan) -> bool:
    """The definition decided: drop the data, or copy it, where the plan copies all it loses."""
    on_move = getattr(target.spec, "on_move", "")
    return on_move == "drop" or (on_move == "copy" and p.copies_cover_data)


def _half(p: UnitPlan) -> str:
    verb = "destroying" if p.selected.action == DESTROY else "applying"
    return f"{verb} {p.selected.unit.title}"
