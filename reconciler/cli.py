"""argv -> settings -> one command -> exit code (0 nothing to do / 2 changes / 1 failed / 3 bug)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import traceback
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from reconciler import affected, comment, failover, gate, ghflow, health, hostruntime, interrupt, locks, portability, render, status
from reconciler.affected import DESTROY
from reconciler.resolve import CLUSTER
from reconciler import event as event_module
from reconciler.apply import APPLIED, DEFAULT_PARALLELISM, FAILED as APPLY_FAILED, INTERRUPTED, NOT_STARTED, NOTHING, REFUSED, apply, delete_volume
from reconciler.engine import CHOICES, select_engine
from reconciler.errors import FORMAT_VERSION, Exit, InvalidDefinitions, NotConfirmed, ReconcileError, printable
from reconciler.gitsource import GitSource, Snapshot, tracks
from reconciler.live import LiveRecord, LiveStore, RetainedVolume, volume_name
from reconciler import load as load_module
from reconciler import unitcache
from reconciler.load import load
from reconciler.run import (
    FAILED, OFFLINE, PLANNED, UNSUPPORTED, Assessment, UnitPlan, assess, check_state_locations, desired, plan, summary_record,
    unlock_stack,
)
from reconciler.settings import Settings
from reconciler.synth import synthesize


class UsageError(ReconcileError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit 2, which means "changes pending" here
        raise UsageError(f"{self.prog}: {message}")


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--repo", default=default, help="repository with sites/ and clusters/ (default: .)")
    parser.add_argument("--base", default=default, help="compare with this revision (default: merge-base with main)")
    parser.add_argument("--head", default=default, help="desired state at this revision (default: the working tree)")
    parser.add_argument("--engine", choices=CHOICES, default=default, help="default: tofu, else terraform, else embedded")
    parser.add_argument("--state-root", default=default, help="local state paths are relative to this (default: --repo)")
    parser.add_argument("--work-dir", default=default, help="synthesized stacks and plans (default: REPO/.reconcile)")
    parser.add_argument("--lock-timeout", default=default, help="wait this long for a stack's state lock, e.g. 0s or 2m (default 10s)")
    parser.add_argument(
        "--no-lock", action="store_true", default=False if top else argparse.SUPPRESS,
        help="plan without taking state locks, for an identity that may only read the state buckets (apply always locks)",
    )
    parser.add_argument("--parallelism", default=default, help=f"stacks planned, and applied, at once (default {DEFAULT_PARALLELISM}; RECONCILE_PARALLELISM)")
    parser.add_argument("--json", action="store_true", default=False if top else argparse.SUPPRESS, help="machine-readable output")
    parser.add_argument("--all", action="store_true", default=False if top else argparse.SUPPRESS, help="plan every stack, changed or not (drift)")


def _scope(parser: argparse.ArgumentParser, top: bool) -> None:
    default = [] if top else argparse.SUPPRESS
    parser.add_argument("--site", action="append", default=default, dest="sites", help="only this site's units, and the rest of their change groups (repeatable)")
    parser.add_argument("--unit", action="append", default=default, dest="units", metavar="UNIT[,UNIT…]", help="only this unit, e.g. cluster:dev@local-a, and the rest of its change group (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reconcile",
        description="Reconcile HPC sites and vClusters defined in git with what is live.",
        epilog="exit codes: 0 nothing to do, 2 changes pending, 1 invalid input or failed operation, 3 internal error",
    )
    parser.add_argument("--dry-run", action="store_true", help="plan what differs from git and change nothing (the same as `plan`)")
    _common(parser, top=True)
    _scope(parser, top=True)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, text in (
        ("validate", "check every definition and show the units they make"),
        ("plan", "plan the stacks that differ from git; change nothing"),
        ("apply", "plan, confirm, then apply the saved plans"),
        ("waves", "the units that need work, in the ordered waves of a fanned-out apply (one runner per unit)"),
        ("report", "post the outcome of a fanned-out apply, from the `apply --only --json` documents of its units"),
        ("synth", "write the Terraform JSON of every synthesizable stack"),
        ("portability", "show which sites each cluster can run on (placement and failover), and why not"),
        ("failover", "re-place every cluster of a site that is down at its first realizable failover site"),
        ("comment", "post a plan comment written by `plan --comment-dir` (GitHub Actions, trusted job)"),
        ("restore-state", "put a stack's last good state back after a damaged write (the engine's backup, or the bucket's earlier version)"),
        ("unlock", "release a stack's state lock that a run left behind (killed, its runner lost)"),
        ("volumes", "list the data volumes of the local sites: retained by a move (storage.on_move: keep) and in use; --delete ID removes a retained one"),
        ("status", "what each cluster's nodes run: Slurm state and config version, against git"),
        ("enter", "run a command on a node of the local slurm runtime (default: a shell), as root or --user"),
    ):
        command = sub.add_parser(name, help=text, description=text)
        _common(command, top=False)
        if name in ("plan", "apply", "waves"):
            _scope(command, top=False)
            command.add_argument("--pr", help="pull request number, or 'auto' for the GitHub Actions event's")
            command.add_argument("--github-repo", help="OWNER/NAME (default: GITHUB_REPOSITORY)")
        if name == "plan":
            command.add_argument("--comment-dir", help="write the plan comment here (parts and meta.json) instead of posting it")
            command.add_argument("--drift-issue", action="store_true", help="open, update or close the drift issue")
            command.add_argument("--save-summaries", metavar="DIR", help="write each unit's plan summary here (addresses and actions, no value): one runner's part of a fanned-out plan")
            command.add_argument("--summaries-from", metavar="DIR", help="use the summaries other runners saved for the units whose configuration they match; plan the rest here")
        if name == "comment":
            command.add_argument("--from", dest="from_dir", required=True, help="a directory written by plan --comment-dir")
            command.add_argument("--expect-head", help="refuse unless the comment was planned for this commit")
            command.add_argument("--github-repo", help="OWNER/NAME (default: GITHUB_REPOSITORY)")
            command.add_argument(
                "--render", action="store_true",
                help="plan the planned commit here, offline, and post this job's own comment instead of the artifact's "
                "(a fork's pull request: with --base)",
            )
        if name == "waves":
            command.add_argument("--max-jobs", type=_positive, default=256, metavar="N",
                                 help="split each wave (and the whole, for a fanned-out plan) into at most N jobs (default 256: GitHub's matrix limit)")
        if name == "report":
            command.add_argument("--from", dest="from_dir", required=True, help="waves.json (`waves --json`) and one apply-*/ per runner: unit.txt and apply.json (`apply --only UNIT --json`); read as data, within bounds")
            command.add_argument("--pr", help="pull request number, or 'auto' for the one the pushed commit merged")
            command.add_argument("--github-repo", help="OWNER/NAME (default: GITHUB_REPOSITORY)")
        if name == "apply":
            command.add_argument("--auto-approve", action="store_true", help="apply without asking")
            command.add_argument("--only", action="append", default=[], metavar="UNIT[,UNIT…]",
                                 help="apply only these units (one wave's part of a fanned-out apply); refused unless what they depend on is live at its desired config hash")
            command.add_argument("--allow-destroy", action="store_true", help="allow destroying stacks whose definitions were removed")
            command.add_argument("--allow-data-loss", action="store_true", help="allow destroying or replacing resources that hold data")
            command.add_argument("--allow-replace", action="store_true", help="allow changes that replace every resource of a stack")
        if name == "status":
            command.add_argument("cluster", nargs="?", help="only this cluster")
        if name == "enter":
            command.add_argument("hostname", help="the node, e.g. laptop-login-0")
            command.add_argument("--user", default="", help="as this user, the way a user logs in: refused while the cluster is closed")
            command.add_argument("node_command", nargs=argparse.REMAINDER, help="the command and its arguments")
        if name == "volumes":
            command.add_argument("--delete", metavar="ID", help="delete this retained volume (it needs --allow-data-loss)")
            command.add_argument("--allow-data-loss", action="store_true", help="the data decision a deletion needs")
            command.add_argument("--auto-approve", action="store_true", help="delete without asking")
        if name in ("restore-state", "unlock"):
            command.add_argument("unit", help="the unit, e.g. cluster:dev@local-a (as the plan names it)")
        if name == "unlock":
            command.add_argument("--lock-id", required=True, help="the lock's ID, as the refused plan printed it")
            command.add_argument("--yes", action="store_true", help="release it without asking")
        if name == "synth":
            command.add_argument("--out", required=True, help="directory to write SITE/STACK/cdk.tf.json into")
        if name == "failover":
            command.add_argument("--site", required=True, help="the site that is down")
            command.add_argument("--branch", help="branch to commit the change on (default: failover/SITE)")
            command.add_argument("--patch", help="write the change as a patch to this file ('-': standard output) instead")
            command.add_argument("--force", action="store_true", help="replace the branch if an earlier failover left it")
            command.add_argument("--allow-emulated", action="store_true",
                                 help="let a cluster that runs for real fail over to emulated nodes (a records site)")
            command.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help="show the plan of the change; create nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    with interrupt.handled():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        command = args.command or ("plan" if args.dry_run else None)
        args.dry_run = getattr(args, "dry_run", False)
        if command is None:
            parser.print_help(sys.stderr)
            return Exit.FAILED
        settings = Settings.build(
            args.repo or ".",
            base=args.base,
            head=args.head,
            engine=args.engine,
            state_root=args.state_root,
            work_dir=args.work_dir,
            lock_timeout=args.lock_timeout,
            lock=not args.no_lock,
            parallelism=args.parallelism,
            output_json=args.json,
            select_all=args.all,
            auto_approve=getattr(args, "auto_approve", False),
            sites=frozenset(getattr(args, "sites", ())),
            units=_keys(getattr(args, "units", ())) | _only(args),
        )
        cache = _cache_dir(settings)
        load_module.use_cache(cache and cache / "parsed")  # definitions parsed again only when their bytes change
        unitcache.use(cache and cache / "units")  # and clusters resolved again only when what they follow from does
        if not settings.lock and command != "plan":
            raise ReconcileError(f"--no-lock is for plans only: {command} takes the state locks it needs")
        if command in USES_WORK_DIR or getattr(args, "delete", None) or getattr(args, "render", False):
            with locks.RunLock(settings.work_dir, command):
                return COMMANDS[command](settings, args)
        return COMMANDS[command](settings, args)
    except InvalidDefinitions as exc:
        if as_json:
            _emit({"error": "invalid definitions", "problems": [p.as_dict() for p in exc.problems], "exit_code": 1})
        else:
            sys.stderr.write(render.problems_text(exc.problems))
        return Exit.FAILED
    except ReconcileError as exc:
        stopped = interrupt.requested() or isinstance(exc, interrupt.Interrupted)
        code = Exit.INTERRUPTED if stopped else exc.exit_code
        if as_json:
            _emit({"error": str(exc), "exit_code": int(code)})
        else:
            sys.stderr.write(f"{'interrupted' if stopped else 'error'}: {exc}\n")
        return code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: nothing more was started\n")
        return Exit.INTERRUPTED
    except BrokenPipeError:  # the reader left (`reconcile validate | head -1`): quiet, as git is
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE
    except Exception:  # a bug: say so, with the traceback
        if interrupt.requested():  # a helper process (Node) stopped by the same Ctrl-C: not a bug
            sys.stderr.write(f"interrupted: {interrupt.received()} received; nothing more was started\n")
            return Exit.INTERRUPTED
        traceback.print_exc()
        sys.stderr.write("internal error: this is a bug in reconcile, please report it with the traceback above\n")
        return Exit.INTERNAL


def _cache_dir(settings: Settings) -> Path | None:
    """The content caches (`WORK_DIR/cache`), unless git tracks them. An entry holds its own
    checksum, which anyone can write: a cache that arrives with a checkout (a pull request can
    commit one, and CI checks it out) is never read, so it cannot stand in for a definition."""
    cache = settings.work_dir / "cache"
    try:
        tracked = tracks(settings.root, cache)
    except OSError:
        tracked = True
    if tracked:
        print(f"warning: git tracks {cache}: its entries are not read (a cache that comes with a checkout is never trusted); "
              "remove it from git (git rm -r --cached)", file=sys.stderr)
        return None
    return cache


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _keys(values) -> frozenset[str]:
    """`--unit a,b --unit c` (or `--only`): the unit keys given, each option a comma-separated list."""
    return frozenset(k.strip() for value in values for k in value.split(",") if k.strip())


def _only(args) -> frozenset[str]:
    """`--only a,b --only c`: the units a fanned-out apply's runner applies."""
    return _keys(getattr(args, "only", ()))


def _emit(document: dict) -> None:
    """A --json document: the contract of `reconciler/output.py` (schema/output/)."""
    document = {"format_version": FORMAT_VERSION, **document}
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- commands


def cmd_validate(settings: Settings, args) -> int:
    source = GitSource(settings.root)
    state = desired(source.working_tree() if settings.head is None else source.at_revision(settings.head))
    check_state_locations(LiveStore(settings.state_root), state, state.units)
    units = list(state.units.values())
    if settings.output_json:
        verdicts = [v.as_dict() for v in portability.matrix(state.definitions)]
        listed = [{"key": u.key, "platform": u.platform, "synthesizable": u.synthesizable, "inputs": list(u.inputs)} for u in units]
        _emit({"valid": True, "units": listed, "portability": verdicts, "ignored": list(state.definitions.ignored), "exit_code": 0})
        return Exit.OK
    defs = state.definitions
    print(f"{state.snapshot.label}: {len(defs.sites)} sites, {len(defs.clusters)} clusters, all valid")
    for unit in units:
        note = "" if unit.synthesizable else f"  (the {unit.platform} platform is not synthesizable yet)"
        print(f"  {unit.title} [{unit.platform}] <- {', '.join(unit.inputs)}{note}")
    if defs.ignored:
        shown = ", ".join(printable(p) for p in defs.ignored[:10]) + (f" and {len(defs.ignored) - 10} more" if len(defs.ignored) > 10 else "")
        print(f"  not definitions, not read: {shown}")
    refused = [v for v in portability.matrix(defs) if not v.realizable]
    for verdict in refused:
        print(printable(f"warning: cluster {verdict.cluster} cannot fail over to {verdict.site} ({verdict.role}): {'; '.join(verdict.reasons)}"))
    return Exit.OK


def _plan_all(settings: Settings, recorded: dict | None = None) -> tuple[Assessment, list[UnitPlan], object, LiveStore]:
    store = LiveStore(settings.state_root)
    assessment = assess(settings, store)
    needs_engine = any(s.unit.synthesizable for s in assessment.selected)
    engine = select_engine(settings.engine, settings.work_dir, settings.state_root, settings.lock_timeout, settings.lock) if needs_engine else None
    return assessment, plan(settings, assessment, engine, store, recorded), engine, store


SUMMARY_FILES, SUMMARY_BYTES = 5000, 4 * 1024 * 1024


def _recorded_summaries(directory: str | None) -> dict | None:
    """The summaries other runners planned (`plan --save-summaries`): data, read within bounds.
    One that does not read, or does not match what this run synthesizes, is planned here."""
    if not directory:
        return None
    found = {}
    for path in sorted(Path(directory).rglob("*.json"))[:SUMMARY_FILES]:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > SUMMARY_BYTES:
                continue
            record = json.loads(path.read_text(encoding="utf-8"))
            found[(record["action"], record["key"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _save_summaries(directory: str, plans: list[UnitPlan]) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for p in plans:
        if p.status in (PLANNED, OFFLINE, FAILED) and p.document_sha:
            name = hashlib.sha256(f"{p.selected.action}:{p.selected.unit.key}".encode()).hexdigest()[:16]
            (out / f"{name}.json").write_text(json.dumps(summary_record(p), indent=1, sort_keys=True) + "\n")


def _plan_exit(plans: list[UnitPlan]) -> int:
    if any(p.status == FAILED for p in plans):
        return Exit.FAILED
    return Exit.CHANGES if any(p.pending for p in plans) else Exit.OK


def _runtime_problem(assessment: Assessment, plans: list[UnitPlan]) -> tuple[list[UnitPlan], str]:
    """The pending plans on `runtime: slurm` sites, and why this host cannot apply them ("" when it can)."""
    real = hostruntime.needs_runtime(plans, assessment.head.definitions.sites)
    why = hostruntime.problem() if real else ""
    return real, (f"this host cannot run the slurm runtime: {why}" if why else "")


def cmd_plan(settings: Settings, args) -> int:
    assessment, plans, engine, _ = _plan_all(settings, _recorded_summaries(getattr(args, "summaries_from", None)))
    if getattr(args, "save_summaries", None):
        _save_summaries(args.save_summaries, plans)
    code = _plan_exit(plans)
    real, problem = _runtime_problem(assessment, plans)
    if problem:
        titles = ", ".join(p.selected.unit.title for p in real)
        sys.stderr.write(f"warning: {titles}: {problem}; apply will refuse them here\n")
    name = engine.name if engine else None
    if settings.output_json:
        _emit(render.plans_json(assessment, plans, name, int(code)))
    else:
        sys.stdout.write(render.plans_text(assessment, plans, name))
    event = _event()
    pr = ghflow.pr_number(getattr(args, "pr", None), event)
    comment_dir = getattr(args, "comment_dir", None)
    if comment_dir or pr is not None:
        bodies = ghflow.plan_comment(assessment, plans, _verdicts(assessment))
        if comment_dir:
            pr = pr if pr is not None else (event.pr if event else None)
            ghflow.write_comment_dir(Path(comment_dir), bodies, pr, assessment.head.snapshot.revision or "")
        else:
            ghflow.connect(args.github_repo).upsert(pr, bodies, comment.MARKER)
            sys.stderr.write(f"plan comment posted on #{pr}\n")
    if getattr(args, "drift_issue", False):
        number = ghflow.drift_issue(ghflow.connect(args.github_repo), plans)
        sys.stderr.write(f"drift issue #{number} is open\n" if number else "no drift: the drift issue is closed\n")
    return code


def _event():
    return event_module.read(os.environ.get("GITHUB_EVENT_NAME"), os.environ.get("GITHUB_EVENT_PATH"))


def _verdicts(assessment: Assessment) -> dict[str, str]:
    """Portability per cluster unit, for the plan comment."""
    out = {}
    for verdict in portability.matrix(assessment.head.definitions):
        key = f"cluster:{verdict.cluster}@{assessment.head.definitions.clusters[verdict.cluster].placement.site}"
        if verdict.role == portability.PLACEMENT:
            out.setdefault(key, "realizable")
        elif not verdict.realizable:
            out[key] = out.get(key, "realizable") + f"; cannot fail over to {verdict.site}"
    return out


def cmd_comment(settings: Settings, args) -> int:
    """Post a plan run's comment. This checkout (default-branch code) reads the planned commit's
    definitions as data and recomputes the hashes; with --render it plans that commit itself,
    offline and unlocked, and posts its own comment: nothing the plan run wrote is shown."""
    directory = Path(args.from_dir)
    gh = ghflow.connect(args.github_repo)
    if args.render:
        pr, head, _ = ghflow.planned(gh, directory, args.expect_head)
        trusted = replace(settings, head=head, lock=False)
        assessment, plans, _, _ = _plan_all(trusted)
        directory = settings.work_dir / "comment"
        ghflow.write_comment_dir(directory, ghflow.plan_comment(assessment, plans, _verdicts(assessment)), pr, head)
    pr = ghflow.post_comment_dir(gh, directory, args.expect_head, GitSource(settings.root))
    sys.stderr.write(f"plan comment posted on #{pr}\n")
    return Exit.OK


def cmd_apply(settings: Settings, args) -> int:
    assessment, plans, engine, store = _plan_all(settings)
    name = engine.name if engine else None
    if not settings.output_json:
        sys.stdout.write(render.plans_text(assessment, plans, name))
    if any(p.status == FAILED for p in plans):
        if settings.output_json:  # the plans carry each failure; a bare error would hide them
            _emit({**render.plans_json(assessment, plans, name, int(Exit.FAILED)), "error": "some plans failed; nothing was applied"})
            return Exit.FAILED
        raise ReconcileError("some plans failed; nothing was applied")
    pr, gh = _refuse_what_may_not_run(args, assessment, plans)
    context, only = plans, _only(args)
    if only:
        plans = _only_these(assessment, plans, only, engine)
    real, problem = _runtime_problem(assessment, plans)
    for p in real if problem else ():  # refused before any of their resources exists; the rest go on
        p.blocked = p.blocked or problem
    refused = [p for p in plans if p.blocked and p.pending]
    for p in refused:
        sys.stderr.write(f"refused: {p.selected.unit.title}: {p.blocked}\n")
    runnable = [p for p in plans if p.pending and p.status == PLANNED and not p.blocked]
    unapplied = [p for p in plans if p.pending and p.status in (OFFLINE, UNSUPPORTED) and not p.blocked]
    for p in unapplied:
        why = f"planned offline, no {p.selected.unit.platform} credentials here" if p.status == OFFLINE else p.status
        sys.stderr.write(f"not applied: {p.selected.unit.title}: {why}; its changes are still pending\n")
    # In the apply workflow every unit is expected to apply: one that cannot is a failure there.
    expected_all = os.environ.get("GITHUB_ACTIONS") == "true" and unapplied
    if not runnable and not refused:
        code = Exit.FAILED if expected_all else _plan_exit(plans)
        if settings.output_json:
            _emit(render.plans_json(assessment, plans, name, int(code)))
        return code
    if runnable and not settings.auto_approve:
        _confirm(len(runnable))
    results = apply(plans, engine, store, assessment.head.snapshot, settings.parallelism, context=context)
    failed = [r for r in results if r.outcome in (APPLY_FAILED, REFUSED)]
    left = [r for r in results if r.outcome not in (APPLIED, NOTHING, APPLY_FAILED, REFUSED)]
    code = Exit.FAILED if failed or expected_all else (Exit.CHANGES if left else Exit.OK)
    if any(r.outcome in (INTERRUPTED, NOT_STARTED) for r in results):
        code = Exit.INTERRUPTED
    if settings.output_json:
        document = render.plans_json(assessment, plans, name, int(code))
        outcome = {r.plan.selected.unit.key: {"outcome": r.outcome, "detail": r.detail} for r in results}
        for unit in document["units"]:
            unit.update(outcome[unit["key"]])
            if unit["outcome"] in (APPLIED, NOTHING):  # what was applied is no longer pending
                unit["pending"] = False
        _emit(document)
    else:
        print("\nApply:")
        for r in results:
            detail = f": {r.detail.splitlines()[0]}" if r.detail else ""
            print(f"  {r.plan.selected.unit.title}: {r.outcome}{detail}")
        for r in failed:
            sys.stderr.write(f"\n{r.plan.selected.unit.title} failed:\n{r.detail}\n")
    if only:  # one runner of a fanned-out apply: `reconcile report` posts the one outcome of them all
        return code
    if gh is not None or (os.environ.get("GITHUB_ACTIONS") == "true" and os.environ.get("GITHUB_TOKEN")):
        # Report on the pull request and as a commit status; a failure to report never hides
        # a failed apply, and is itself a failure.
        problems = ghflow.report_apply(gh or ghflow.connect(args.github_repo), pr, assessment.head.snapshot.revision or "", results, bool(failed))
        for problem in problems:
            sys.stderr.write(f"warning: could not report the outcome: {problem}\n")
        if problems and code == Exit.OK:
            code = Exit.FAILED
    return code


def _refuse_what_may_not_run(args, assessment: Assessment, plans: list[UnitPlan]):
    """Mark every plan that may not run (`blocked`): what the pull request did not review, then
    the gate over the decisions given by flags or labels. Returns the pull request and adapter."""
    event = _event()
    pr, gh, unmatched = ghflow.pr_number(getattr(args, "pr", None), event), None, ""
    if getattr(args, "pr", None) == "auto" and event is not None and event.name == "push":
        gh = ghflow.connect(args.github_repo)  # which pull request a push merged is GitHub's to say
        found = ghflow.merged_pull_request(gh, assessment.head.snapshot.revision or event.head_sha or "")
        pr, unmatched = (found, "") if isinstance(found, int) else (None, found)
    gh = gh or (ghflow.connect(args.github_repo) if pr is not None else None)
    labels = gh.labels(pr) if pr is not None else set()
    if unmatched:
        ghflow.refuse_unreviewed(plans, f"{unmatched}, so no reviewed plan applies; merge through a pull request")
    shown = None  # at a terminal: the decisions cover the plan just shown
    if pr is not None:
        reviewed = ghflow.reviewed_plan(gh, pr)
        ghflow.gate_reviewed(plans, reviewed, pr, gh.pull_request_head(pr))
        shown = {key: entry.get("needs") or {} for key, entry in (reviewed or {}).get("units", {}).items()}
    elif unmatched:
        shown = {}
    decisions = gate.Decisions(
        destroy=args.allow_destroy or gate.ALLOW_DESTROY_LABEL in labels,
        data_loss=args.allow_data_loss or gate.ALLOW_DATA_LOSS_LABEL in labels,
        replace=args.allow_replace or gate.ALLOW_REPLACE_LABEL in labels,
        shown=shown,
    )
    refused = gate.refusals(plans, assessment.head.units, decisions)
    for p in plans:
        p.blocked = refused.get(gate.plan_id(p), p.blocked)
    return pr, gh


def _only_these(assessment: Assessment, plans: list[UnitPlan], only: frozenset[str], engine) -> list[UnitPlan]:
    """The plans `--only` names, once every unit they need that this runner does not apply is
    done: an apply live at its desired config hash (and, for a move's target, healthy), a
    destroy gone. Raises, with every reason, before anything is applied."""
    chosen = [p for p in plans if p.selected.unit.key in only]
    by_id = {(p.selected.action, p.selected.unit.key): p for p in plans}
    everything = [*assessment.selected, *assessment.out_of_scope]  # what a run of it all would apply
    refused = []
    for p in chosen:
        for action, key in sorted(affected.needs(p.selected, everything)):
            if key in only:
                continue
            why = _not_done(assessment, action, key, by_id.get((action, key)), p, engine)
            if why:
                refused.append(f"{p.selected.unit.title}: it needs {key} ({action}), which {why}")
    if refused:
        raise ReconcileError("refused, nothing was applied:\n  " + "\n  ".join(refused) + "\n  apply the earlier waves first (`reconcile waves`)")
    return chosen


def _not_done(assessment: Assessment, action: str, key: str, need: UnitPlan | None, p: UnitPlan, engine) -> str:
    """Why a unit that `p` needs, applied by another runner, is not done ("" when it is)."""
    record = assessment.live.get(key)
    if action == DESTROY:
        return "" if record is None else "is not destroyed yet"
    if not isinstance(record, LiveRecord):
        return "was never applied" if record is None else "cannot be read here"
    desired_hash = assessment.head.units[key].config_hash
    if record.interrupted_at:
        return f"was interrupted at {record.interrupted_at}"
    if record.config_hash != desired_hash:
        return f"is live at config hash {record.config_hash[:12]}, not at the desired {desired_hash[:12]}"
    if record.unhealthy:
        return "is unhealthy: " + "; ".join(why for _, why in record.unhealthy)
    if p.selected.action == DESTROY and need is not None and need.selected.unit.kind == CLUSTER and need.status == PLANNED and engine is not None:
        verdict = health.check(need.selected.unit.spec, engine.outputs(need.workdir))  # a move's source goes only after this
        if not verdict.ok:
            return f"fails its health check: {verdict.detail}"
    return ""


def cmd_waves(settings: Settings, args) -> int:
    """The selected units in the ordered waves of a fanned-out apply. Reads definitions and live
    records only: nothing is synthesized or planned."""
    store = LiveStore(settings.state_root)
    assessment = assess(settings, store)
    selected = assessment.selected
    ordered = affected.waves(selected)
    if settings.output_json:
        _emit({
            "head": {"label": assessment.head.snapshot.label, "revision": assessment.head.snapshot.revision, "dirty": assessment.head.snapshot.dirty},
            "waves": [{"name": name, "units": [_wave_unit(s, selected) for s in wave], "jobs": _jobs([s.unit.key for s in wave], args.max_jobs)}
                      for name, wave in zip(affected.WAVES, ordered)],
            "jobs": _jobs([s.unit.key for wave in ordered for s in wave], args.max_jobs),
            "exit_code": 0,
        })
        return Exit.OK
    if not selected:
        print("nothing to do: every unit is live as git says")
    for number, (name, wave) in enumerate(zip(affected.WAVES, ordered), start=1):
        if wave:
            print(f"wave {number} ({name}):")
            for s in wave:
                needs = sorted(k for _, k in affected.needs(s, selected))
                after = f"  after {', '.join(needs)}" if needs else ""
                print(printable(f"  {s.action} {s.unit.title}: {'; '.join(s.reasons)}{after}"))
    return Exit.OK


def _jobs(keys: list[str], most: int) -> list[str]:
    """The units as at most `most` runner jobs, each a comma-separated list for `--only` (or
    `--unit`): one unit a job while they fit, then even runs of neighbours (GitHub runs at most
    256 jobs of one matrix)."""
    if not keys:
        return []
    size = -(-len(keys) // most)  # ceil
    return [",".join(keys[i:i + size]) for i in range(0, len(keys), size)]


def _wave_unit(s, selected) -> dict:
    return {
        "key": s.unit.key, "title": s.unit.title, "action": s.action, "reasons": list(s.reasons),
        "config_hash": s.unit.config_hash, "needs": sorted(k for _, k in affected.needs(s, selected)),
    }


def cmd_report(settings: Settings, args) -> int:
    """The one outcome of a fanned-out apply: each runner's `apply --only --json` document is
    read as data (bounded, checked against its schema's shape), then posted as one comment on
    the merged pull request and one commit status, as a single-runner apply posts them."""
    results, revision = ghflow.gathered_results(Path(args.from_dir))
    failed = any(r.outcome in (APPLY_FAILED, REFUSED, "skipped", "missing") for r in results)
    for r in results:
        print(printable(f"  {r.plan.selected.unit.title}: {r.outcome}" + (f": {r.detail.splitlines()[0]}" if r.detail else "")))
    event = _event()
    gh = ghflow.connect(args.github_repo)
    pr = ghflow.pr_number(args.pr, event)
    if args.pr == "auto" and event is not None and event.name == "push":
        found = ghflow.merged_pull_request(gh, revision or event.head_sha or "")
        pr = found if isinstance(found, int) else None
    problems = ghflow.report_apply(gh, pr, revision, results, failed)
    for problem in problems:
        sys.stderr.write(f"warning: could not report the outcome: {problem}\n")
    return Exit.FAILED if failed or problems else Exit.OK


def _confirm(count: int) -> None:
    if not sys.stdin.isatty():
        raise NotConfirmed("apply needs confirmation: run it in a terminal, or pass --auto-approve")
    answer = input(f"\nApply {count} stack(s)? Only 'yes' will be accepted: ")
    if answer.strip() != "yes":
        raise NotConfirmed("apply cancelled; nothing was changed")


def _named_unit(settings: Settings, key: str):
    """The unit `key` names at the head, and the live store, its state location checked."""
    source = GitSource(settings.root)
    state = desired(source.working_tree() if settings.head is None else source.at_revision(settings.head))
    unit = state.units.get(key)
    if unit is None:
        raise ReconcileError(f"no unit {key!r} at {state.snapshot.label}; units: {', '.join(state.units)}")
    store = LiveStore(settings.state_root)
    check_state_locations(store, state, {unit.key: unit})
    return unit, store


def cmd_unlock(settings: Settings, args) -> int:
    unit, store = _named_unit(settings, args.unit)
    info = store.lock_info(unit.state)
    if info is None:
        raise ReconcileError(f"the state of {unit.title} ({store.where(unit.state)}) is not locked: nothing to release")
    if info.id != args.lock_id:
        raise ReconcileError(
            f"--lock-id {args.lock_id} is not the lock that holds the state of {unit.title} now: it is {info.describe()}; "
            "nothing was released (check the ID, or whether another run took the lock meanwhile)"
        )
    print(f"The state of {unit.title} ({store.where(unit.state)}) is {info.describe()}.")
    if not (args.yes or settings.auto_approve):
        if not sys.stdin.isatty():
            raise NotConfirmed("unlock needs confirmation: run it in a terminal, or pass --yes")
        answer = input("Release it? Only if that run is gone for good: a run still applying would then share the state. Only 'yes' will be accepted: ")
        if answer.strip() != "yes":
            raise NotConfirmed("unlock cancelled; the lock stays")
    if unit.state.backend == "local":
        if locks.held_by_a_process(store.state_file(unit.state)):
            raise ReconcileError(f"a process that is still running holds the state of {unit.title}: wait for it; nothing was released")
        store.clear_lock_info(unit.state)  # the lock itself died with its process: only its information was left
    else:
        engine = select_engine(settings.engine, settings.work_dir, settings.state_root, settings.lock_timeout)
        unlock_stack(settings, unit, engine, info.id)
    print(f"released the lock {info.id} of {unit.title}")
    return Exit.OK


def cmd_restore_state(settings: Settings, args) -> int:
    unit, store = _named_unit(settings, args.unit)
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    print(store.restore(unit, now))
    print("plan again: the stack is planned against the restored state")
    return Exit.OK


def cmd_volumes(settings: Settings, args) -> int:
    """Retained volumes first (what a move kept and nothing uses), then volumes in use."""
    source = GitSource(settings.root)
    state = desired(source.working_tree() if settings.head is None else source.at_revision(settings.head))
    store = LiveStore(settings.state_root)
    check_state_locations(store, state, state.units)
    sites = {u.site: u.state for u in state.units.values() if u.kind == "site"}
    platforms = {u.site: u.platform for u in state.units.values() if u.kind == "site"}
    rows, unreadable = [], []
    for site, location in sorted(sites.items()):
        if not store.readable(location):
            unreadable.append(site)
            continue
        for v in store.retained(location):
            rows.append({**asdict(v), "status": "retained", "stack": ""})
        for name, body in store.leftovers(location).items():
            rows.append(
                {"id": name, "address": "", "platform": body.get("platform", platforms[site]), "site": site, "cluster": body["cluster"],
                 "volume": str(body.get("volume") or ""), "kind": body["kind"], "stack": str(body.get("stack") or ""),
                 "path": str(body.get("where") or ""), "status": "left by a copy", "size_gb": 0, "retained_at": "",
                 "revision": None, "from_stack": ""}
            )
        for v in store.in_use(location):
            stack = v.stack
            cluster = stack.removeprefix("cluster-") if stack.startswith("cluster-") else ""
            rows.append(
                {"id": v.id, "address": v.address, "platform": platforms[site], "site": site, "cluster": cluster,
                 "volume": volume_name(v.address), "kind": v.kind, "stack": stack, "path": v.path, "status": "in use",
                 "size_gb": v.size_gb, "retained_at": "", "revision": None, "from_stack": ""}
            )
    if args.delete:
        return _delete_volume(settings, args, store, sites, rows, state)
    if settings.output_json:
        _emit({"volumes": rows, "not_checked": unreadable, "exit_code": 0})
        return Exit.OK
    sys.stdout.write(render.volumes_text(rows))
    if unreadable:
        print(f"Not checked (state in gcs/s3 needs credentials): {', '.join(unreadable)}")
    return Exit.OK


def _delete_volume(settings: Settings, args, store: LiveStore, sites: dict, rows: list[dict], state) -> int:
    """A retained volume deleted as a reviewed destroy: the plan names it, the data decision
    is needed, and the destroy runs through the engine with the volume's own provisioner."""
    found = [r for r in rows if r["id"] == args.delete]
    retained = [r for r in found if r["status"] == "retained"]
    if not retained:
        if found and found[0]["status"] == "left by a copy":
            raise ReconcileError(f"{args.delete} is a {found[0]['kind']} left by a copy: an apply removes it once the move of "
                                 f"{found[0]['cluster']} has ended")
        if found:
            raise ReconcileError(f"volume {args.delete} is in use by {found[0]['stack']}: only a retained volume can be deleted")
        listed = ", ".join(r["id"] for r in rows if r["status"] == "retained") or "none"
        raise ReconcileError(f"no retained volume {args.delete!r} (retained: {listed}); `reconcile volumes` lists them")
    row = retained[0]
    volume = RetainedVolume(**{f.name: row[f.name] for f in fields(RetainedVolume) if f.name in row})
    print(f"DELETE retained volume {volume.id} on {volume.site}: {volume.volume} of cluster {volume.cluster}"
          f" ({volume.kind}, {volume.size_gb} GB), kept at {volume.retained_at} by {volume.from_stack}")
    print(f"  DESTROYS DATA: {volume.address} ({volume.path or volume.id})")
    if not args.allow_data_loss:
        print("  BLOCKED: deleting a volume is the data decision: pass --allow-data-loss")
        return Exit.FAILED
    if not settings.auto_approve:
        if not sys.stdin.isatty():
            raise NotConfirmed("deleting a volume needs confirmation: run it in a terminal, or pass --auto-approve")
        if input("\nDelete it? Only 'yes' will be accepted: ").strip() != "yes":
            raise NotConfirmed("deletion cancelled; the volume stays")
    engine = select_engine(settings.engine, settings.work_dir, settings.state_root, settings.lock_timeout)
    workdir = settings.work_dir / "volumes" / hashlib.sha256(volume.id.encode()).hexdigest()[:16]
    site = state.definitions.sites.get(volume.site)
    account, region = (getattr(site, "account", "") or "", getattr(site, "region", "") or "") if site is not None else ("", "")
    summary = delete_volume(engine, store, workdir, volume, sites[volume.site], account, region)
    print(f"deleted {volume.id} ({summary.count('delete')} resource destroyed with its data); its record is gone")
    return Exit.OK


def cmd_status(settings: Settings, args) -> int:
    source = GitSource(settings.root)
    state = desired(source.working_tree() if settings.head is None else source.at_revision(settings.head))
    if args.cluster is not None and args.cluster not in state.definitions.clusters:
        raise ReconcileError(f"no cluster {args.cluster!r} (clusters: {', '.join(sorted(state.definitions.clusters))})")
    store = LiveStore(settings.state_root)
    check_state_locations(store, state, state.units)
    rows = status.statuses(store, state.units, args.cluster)
    if settings.output_json:
        _emit({"clusters": rows, "exit_code": 0})
    else:
        sys.stdout.write(status.status_text(rows))
    return Exit.OK


def cmd_enter(settings: Settings, args) -> int:
    """Hand this process over to `nsenter` in the node's namespaces (the runtime's own `enter`)."""
    state = desired(GitSource(settings.root).working_tree())
    store = LiveStore(settings.state_root)
    for unit in state.units.values():
        if unit.kind == "cluster" and getattr(unit.spec, "runtime", "") == "slurm":
            if any(args.hostname in p.hostnames for p in unit.spec.pools):
                check_state_locations(store, state, {unit.key: unit})
                command = args.node_command[1:] if args.node_command[:1] == ["--"] else args.node_command
                env = hostruntime.localhost_env(os.environ, RECONCILE_STATE_ROOT=str(settings.state_root.resolve()), VC_USER=args.user)
                argv = hostruntime.localhost_argv("enter", unit.state.local_dir, args.hostname, *command)
                sys.stdout.flush()
                os.execvpe(argv[0], argv, env)
    raise ReconcileError(f"no node {args.hostname!r} on a site with runtime: slurm in this repository")


def cmd_synth(settings: Settings, args) -> int:
    source = GitSource(settings.root)
    state = desired(source.working_tree() if settings.head is None else source.at_revision(settings.head))
    units = [u for u in state.units.values() if u.synthesizable]
    documents = synthesize(units, settings.work_dir / "cache" / "synth")
    out = Path(args.out)
    written = []
    for unit in units:
        path = out / unit.site / unit.stack / "cdk.tf.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(documents[unit.key])
        written.append(path)
    skipped = [u for u in state.units.values() if not u.synthesizable]
    if settings.output_json:
        _emit({"written": [str(p) for p in written], "not_synthesizable": [u.key for u in skipped], "exit_code": 0})
    else:
        for path in written:
            print(f"wrote {path}")
        for unit in skipped:
            print(f"skipped {unit.title}: the {unit.platform} platform is not synthesizable yet")
    return Exit.OK


def cmd_portability(settings: Settings, args) -> int:
    source = GitSource(settings.root)
    defs = load(source.working_tree() if settings.head is None else source.at_revision(settings.head))
    verdicts = portability.matrix(defs)
    refused_placement = any(v.role == portability.PLACEMENT and not v.realizable for v in verdicts)
    code = Exit.FAILED if refused_placement else Exit.OK
    if settings.output_json:
        _emit({"verdicts": [v.as_dict() for v in verdicts], "exit_code": int(code)})
    else:
        sys.stdout.write("\n".join(printable(line) for line in render.portability_text(verdicts).split("\n")))
    return code


def cmd_failover(settings: Settings, args) -> int:
    source = GitSource(settings.root)
    dry_run = getattr(args, "dry_run", False)
    # a dry-run shows the working tree, as every other command does; the branch or patch holds
    # only what is committed
    snapshot = source.working_tree() if dry_run and settings.head is None else source.at_revision(settings.head or "HEAD")
    decisions = failover.decide(load(snapshot), args.site, args.allow_emulated)
    after = failover.changed_files(snapshot, decisions)
    refused = [d for d in decisions if d.target is None]
    scope = "" if dry_run else ": committed definitions only"
    lines = [f"failover of {args.site} (from {snapshot.label}{scope}):"]
    for d in decisions:
        if d.target is None:
            lines.append(f"  cluster {d.cluster}: REFUSED, no realizable failover site")
        else:
            lines.append(f"  cluster {d.cluster}: {d.source} -> {d.target} ({d.path})")
        lines += [f"      skipped {reason}" for reason in d.reasons]
    if not decisions:
        lines.append("  no cluster is placed there: nothing to do")
    report = "\n".join(lines) + "\n"
    code = Exit.FAILED if refused else Exit.OK
    if dry_run:
        store = LiveStore(settings.state_root)
        proposed = Snapshot(f"failover of {args.site} (proposed)", snapshot.revision, True, after)
        assessment = assess(settings, store, proposed)
        needs_engine = any(s.unit.synthesizable for s in assessment.selected)
        engine = select_engine(settings.engine, settings.work_dir, settings.state_root, settings.lock_timeout, settings.lock) if needs_engine else None
        plans = plan(settings, assessment, engine, store)
        if not refused:
            code = _plan_exit(plans)
        if settings.output_json:
            document = render.plans_json(assessment, plans, engine.name if engine else None, int(code))
            document["failover"] = [d.__dict__ for d in decisions]
            _emit(document)
        else:
            sys.stdout.write(report + "\n" + render.plans_text(assessment, plans, engine.name if engine else None))
        return code
    if settings.output_json:
        _emit({"failover": [d.__dict__ for d in decisions], "exit_code": int(code)})
    else:  # with `--patch -` standard output is the patch alone
        (sys.stderr if args.patch == "-" else sys.stdout).write(report)
    if not any(d.target for d in decisions):
        return code
    message = f"Fail over {args.site}\n\n" + "\n".join(
        f"{d.cluster}: {d.source} -> {d.target}" for d in decisions if d.target
    ) + "\n"
    if args.patch:
        text = failover.patch(snapshot, after)
        if args.patch == "-":
            sys.stdout.write(text)
        else:
            Path(args.patch).write_text(text)
            sys.stderr.write(f"wrote {args.patch}\n")
    else:
        branch = args.branch or f"failover/{args.site}"
        commit = failover.commit_branch(settings.root, branch, snapshot.revision, after, message, args.force)
        sys.stderr.write(f"committed {commit[:7]} on branch {branch}: open a pull request to review and apply it\n")
    return code


# Commands that write into the work directory (stacks, saved plans): one run at a time there.
USES_WORK_DIR = frozenset({"plan", "apply", "failover", "restore-state", "unlock"})

COMMANDS = {
    "comment": cmd_comment,
    "failover": cmd_failover,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "waves": cmd_waves,
    "report": cmd_report,
    "synth": cmd_synth,
    "portability": cmd_portability,
    "restore-state": cmd_restore_state,
    "unlock": cmd_unlock,
    "volumes": cmd_volumes,
    "status": cmd_status,
    "enter": cmd_enter,
}
