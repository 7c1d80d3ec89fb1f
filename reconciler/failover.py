"""Fail over every cluster of a site that is down: re-place each at its first realizable
failover site, as a reviewable change (a branch with one commit, or a patch).

The change is to the definitions only; applying it is the ordinary reviewed loop, where each
re-placed cluster is a move (create on the target, check, then destroy what is left of the
source). The failed site goes to the end of the cluster's failover list, ready to fail back.
"""

from __future__ import annotations

import difflib
import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from reconciler import portability
from reconciler.errors import GitError, ReconcileError
from reconciler.gitsource import Snapshot
from reconciler.load import Definitions


@dataclass(frozen=True)
class Decision:
    cluster: str
    path: str
    source: str
    target: str | None  # None: refused
    reasons: tuple[str, ...]  # why each earlier candidate was skipped, or why all were refused


def emulated(site) -> bool:
    """A site whose nodes are records (the local platform's default runtime): nothing runs there."""
    return site.platform == "local" and site.runtime == "records"


def decide(defs: Definitions, down: str, allow_emulated: bool = False) -> list[Decision]:
    """For each cluster placed on `down`, its first failover site that can run it. A cluster
    that runs for real never goes to emulated nodes unless `allow_emulated`: its target would
    pass the health gate on outputs alone, and the real source would then be destroyed."""
    if down not in defs.sites:
        raise ReconcileError(f"unknown site {down!r}; sites: {', '.join(defs.sites)}")
    decisions = []
    for name, cluster in defs.clusters.items():
        if cluster.placement.site != down:
            continue
        skipped: list[str] = []
        target = None
        for index, candidate in enumerate(cluster.failover, start=1):
            site = defs.sites[candidate]
            verdict = portability.check(cluster, site, f"failover {index}")
            if verdict.realizable and emulated(site) and not emulated(defs.sites[down]) and not allow_emulated:
                skipped.append(f"{candidate}: emulated nodes (a records site runs no job), and {name} runs for real on {down}; "
                               "pass --allow-emulated to fail over there anyway")
                continue
            if verdict.realizable:
                target = candidate
                break
            skipped.append(f"{candidate}: {'; '.join(verdict.reasons)}")
        if target is None and not cluster.failover:
            skipped.append("no failover sites are listed")
        decisions.append(Decision(name, defs.cluster_files[name][0], down, target, tuple(skipped)))
    return decisions


def rewrite(text: str, source: str, target: str) -> str:
    """The cluster file with its placement moved; comments and layout are kept."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout of the example files
    data = yaml.load(text)
    data["placement"]["site"] = target
    failover = data.get("failover")
    if failover is not None:
        if target in failover:
            failover.remove(target)
        if source not in failover:
            failover.append(source)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def changed_files(snapshot: Snapshot, decisions: list[Decision]) -> dict[str, bytes]:
    out = dict(snapshot.files)
    for d in decisions:
        if d.target is not None:
            out[d.path] = rewrite(snapshot.files[d.path].decode(), d.source, d.target).encode()
    return out


def patch(before: Snapshot, after: dict[str, bytes]) -> str:
    """A unified diff that `git apply` takes."""
    chunks = []
    for path in sorted(after):
        old, new = before.files.get(path, b"").decode(), after[path].decode()
        if old != new:
            chunks += difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}")
    return "".join(chunks)


def commit_branch(root: Path, branch: str, base_revision: str, after: dict[str, bytes], message: str, force: bool = False) -> str:
    """Create `branch` at `base_revision` plus the change, without touching the working tree."""
    def git(*args: str, cwd: Path = root) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            raise GitError(f"git {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    existing = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd=root,
                              capture_output=True, text=True).stdout.strip()
    if existing and not force:
        raise ReconcileError(
            f"branch {branch} exists already (at {existing[:7]}, an earlier failover's?): replace it with --force, "
            "or name another with --branch NAME; nothing was written"
        )
    with tempfile.TemporaryDirectory(prefix="reconcile-failover-") as tmp:
        tree = Path(tmp) / "tree"
        git("worktree", "add", "--quiet", "-B" if force else "-b", branch, str(tree), base_revision)
        try:
            for path, data in after.items():
                (tree / path).write_bytes(data)
            git("commit", "--quiet", "-am", message, cwd=tree)
            return git("rev-parse", "HEAD", cwd=tree).strip()
        finally:
            git("worktree", "remove", "--force", str(tree))
