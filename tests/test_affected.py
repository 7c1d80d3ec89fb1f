"""affected.select on its own: every reason a unit is selected, destroys, moves (forward, back,
and unfinished), orphans and order. Pure: built units and records, no git, no engine."""

from __future__ import annotations

from reconciler.affected import APPLY, DESTROY, changed_files, select
from reconciler.live import LiveRecord
from reconciler.resolve import CLUSTER, SITE, Unit
from rpi.spec import StateLocation


def unit(kind: str, name: str, site: str, config_hash: str = "h1", inputs=None) -> Unit:
    stack = "landing-zone" if kind == SITE else f"cluster-{name}"
    inputs = inputs or ((f"sites/{site}.yaml",) if kind == SITE else (f"clusters/{name}.yaml", f"sites/{site}.yaml"))
    depends = () if kind == SITE else (f"site:{site}",)
    return Unit(kind, name, site, "local", tuple(inputs), depends, None, config_hash, StateLocation("local", site, f"{stack}.tfstate"))


def record(u: Unit, config_hash: str = "h1", revision: str = "abcdef1234", interrupted_at: str = "") -> LiveRecord:
    return LiveRecord(
        unit=u.key, kind=u.kind, name=u.name, site=u.site, platform=u.platform, stack=u.stack,
        config_hash=config_hash, revision=revision, dirty=False, applied_at="2026-01-01T00:00:00+00:00",
        engine="test", state_backend="local", state_bucket=u.site, state_key=f"{u.stack}.tfstate",
        interrupted_at=interrupted_at,
    )


SITE_A, SITE_B = unit(SITE, "a", "a"), unit(SITE, "b", "b")
DEV_A, DEV_B = unit(CLUSTER, "dev", "a"), unit(CLUSTER, "dev", "b")
WEB_A = unit(CLUSTER, "web", "a")


def keyed(*units: Unit) -> dict[str, Unit]:
    return {u.key: u for u in units}


def live_of(*units: Unit, **overrides) -> dict[str, object]:
    return {u.key: overrides.get(u.name, record(u)) for u in units}


def chosen(selected) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(s.action, s.unit.key, s.reasons) for s in selected]


def test_nothing_selected_when_git_and_live_agree():
    head = keyed(SITE_A, DEV_A)
    assert select(head, head, frozenset(), live_of(SITE_A, DEV_A)) == []


def test_changed_files_are_the_added_removed_and_edited_paths():
    assert changed_files(None, {"a": b"1"}) == frozenset()
    assert changed_files({"a": b"1", "b": b"2", "c": b"3"}, {"a": b"1", "b": b"9", "d": b"4"}) == {"b", "c", "d"}


def test_each_kind_of_changed_file_gives_its_reason():
    head = keyed(SITE_A, unit(CLUSTER, "dev", "a", inputs=("clusters/dev.yaml", "clusters/profiles/base.yaml", "sites/a.yaml")))
    changed = frozenset({"clusters/dev.yaml", "clusters/profiles/base.yaml", "sites/a.yaml"})
    got = chosen(select(head, head, changed, live_of(*head.values())))
    assert got == [
        (APPLY, "site:a", ("site changed: sites/a.yaml",)),
        (APPLY, "cluster:dev@a", ("cluster file changed: clusters/dev.yaml", "profile changed: clusters/profiles/base.yaml", "site changed: sites/a.yaml")),
    ]


def test_new_never_applied_and_platform_code_reasons():
    base = keyed(SITE_A)
    head = keyed(unit(SITE, "a", "a", config_hash="h2"), DEV_A)
    got = chosen(select(head, base, frozenset(), {"site:a": record(SITE_A), "cluster:dev@a": None}))
    assert got == [
        (APPLY, "site:a", ("local platform code changed", "live state differs from git (last applied at abcdef1)")),
        (APPLY, "cluster:dev@a", ("new definition: clusters/dev.yaml",)),
    ]


def test_live_differs_without_a_revision_and_an_interrupted_apply():
    head = keyed(SITE_A, DEV_A)
    live = {"site:a": record(SITE_A, config_hash="old", revision=None), "cluster:dev@a": record(DEV_A, interrupted_at="2026-02-02T00:00:00+00:00")}
    got = chosen(select(head, head, frozenset(), live))
    assert got == [
        (APPLY, "site:a", ("live state differs from git",)),
        (APPLY, "cluster:dev@a", ("last apply was interrupted at 2026-02-02T00:00:00+00:00",)),
    ]


def test_all_selects_what_can_be_read_and_not_what_cannot():
    head = keyed(SITE_A, DEV_A)
    live = {"site:a": record(SITE_A)}  # dev's live state is unknown (a cloud without credentials)
    assert chosen(select(head, head, frozenset(), live, select_all=True)) == [(APPLY, "site:a", ("requested with --all",))]
    assert select(head, head, frozenset(), live, select_all=False) == []


def test_a_removed_definition_is_destroyed_unless_it_was_never_applied():
    base, head = keyed(SITE_A, DEV_A, WEB_A), keyed(SITE_A)
    live = live_of(SITE_A, DEV_A)
    live[WEB_A.key] = None
    got = chosen(select(head, base, frozenset(), live))
    assert got == [(DESTROY, "cluster:dev@a", ("definition removed: clusters/dev.yaml",))]


def test_a_move_destroys_the_source_after_the_target_and_names_both_sites():
    base, head = keyed(SITE_A, SITE_B, DEV_A), keyed(SITE_A, SITE_B, DEV_B)
    live = {**live_of(SITE_A, SITE_B, DEV_A), DEV_B.key: None}
    got = chosen(select(head, base, frozenset({"clusters/dev.yaml"}), live))
    assert got == [
        (APPLY, "cluster:dev@b", ("placed here, was on a",)),
        (DESTROY, "cluster:dev@a", ("moved to b: destroy here",)),
    ]


def test_an_unfinished_move_keeps_its_target_in_the_run():
    """On main after the merge, base equals head: the source is known from live state only,
    and the target, up to date, is still selected so that its health gates the destroy."""
    head = keyed(SITE_A, SITE_B, DEV_B)
    live = live_of(SITE_A, SITE_B, DEV_B)
    got = chosen(select(head, head, frozenset(), live, orphans=[record(DEV_A)]))
    assert got == [
        (APPLY, "cluster:dev@b", ("target of a move: checked before the source is destroyed",)),
        (DESTROY, "cluster:dev@a", ("moved back to b: live here, but git places it on b; destroy here",)),
    ]


def test_an_orphan_is_destroyed_with_its_reason_and_a_known_unit_is_not_an_orphan():
    head = keyed(SITE_A, DEV_A)
    orphans = [record(WEB_A), record(DEV_A)]
    got = chosen(select(head, head, frozenset(), live_of(SITE_A, DEV_A), orphans=orphans))
    assert got == [(DESTROY, "cluster:web@a", ("in live state but defined neither at base nor at head",))]


def test_a_removed_site_goes_after_its_clusters():
    base, head = keyed(SITE_A, SITE_B, DEV_A, WEB_A), keyed(SITE_B)
    got = [(a, k) for a, k, _ in chosen(select(head, base, frozenset(), live_of(SITE_A, SITE_B, DEV_A, WEB_A)))]
    assert got == [(DESTROY, "cluster:dev@a"), (DESTROY, "cluster:web@a"), (DESTROY, "site:a")]


def test_applies_go_sites_first_then_clusters_then_destroys():
    base = keyed(SITE_A, WEB_A)
    head = keyed(SITE_A, SITE_B, unit(CLUSTER, "dev", "b"))
    live = {SITE_A.key: record(SITE_A), WEB_A.key: record(WEB_A), SITE_B.key: None, "cluster:dev@b": None}
    got = [(a, k) for a, k, _ in chosen(select(head, base, frozenset(), live))]
    assert got == [(APPLY, "site:b"), (APPLY, "cluster:dev@b"), (DESTROY, "cluster:web@a")]


def test_without_a_base_only_live_state_selects():
    head = keyed(SITE_A, DEV_A)
    got = chosen(select(head, None, frozenset({"clusters/dev.yaml"}), {"site:a": record(SITE_A), "cluster:dev@a": None}))
    assert got == [(APPLY, "cluster:dev@a", ("cluster file changed: clusters/dev.yaml", "never applied"))]


def test_a_removed_definition_whose_live_state_is_unknown_is_still_destroyed():
    base, head = keyed(SITE_A, WEB_A, DEV_A), keyed(SITE_A)
    live = {SITE_A.key: record(SITE_A), WEB_A.key: None}  # web never applied; dev cannot be read here
    got = chosen(select(head, base, frozenset(), live))
    assert got == [(DESTROY, "cluster:dev@a", ("definition removed: clusters/dev.yaml",))]


def test_an_orphan_unit_is_what_its_record_says_and_no_more():
    (orphan,) = select(keyed(SITE_A), keyed(SITE_A), frozenset(), live_of(SITE_A), orphans=[record(WEB_A)])
    unit = orphan.unit
    assert (unit.kind, unit.name, unit.site, unit.platform) == (CLUSTER, "web", "a", "local")
    assert (unit.inputs, unit.depends_on, unit.spec, unit.config_hash) == ((), (), None, "")
    assert unit.state == StateLocation("local", "a", "cluster-web.tfstate")


def test_a_move_target_joins_the_run_once_whatever_the_number_of_sources():
    head = keyed(SITE_A, SITE_B, DEV_B)  # up to date itself: it joins only as the target
    orphans = [record(DEV_A), record(unit(CLUSTER, "dev", "c"))]
    got = chosen(select(head, head, frozenset(), live_of(SITE_A, SITE_B, DEV_B), orphans=orphans))
    assert [(a, k) for a, k, _ in got] == [(APPLY, "cluster:dev@b"), (DESTROY, "cluster:dev@a"), (DESTROY, "cluster:dev@c")]


def test_a_new_cluster_beside_others_is_new_not_moved():
    base, head = keyed(SITE_A, WEB_A), keyed(SITE_A, WEB_A, DEV_A)
    got = chosen(select(head, base, frozenset(), {**live_of(SITE_A, WEB_A), DEV_A.key: None}))
    assert got == [(APPLY, "cluster:dev@a", ("new definition: clusters/dev.yaml",))]
