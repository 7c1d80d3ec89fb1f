"""Fault test: the engine is killed (SIGKILL) at many points of its apply, and every trial
converges without a stack ever being planned as "create everything" over live resources.

Each trial changes the size of cluster dev, starts `reconcile apply` as a process, waits for
the engine's apply process, kills it after a delay spread over the measured length of an
apply, then recovers the way a user would: apply again, and where the state was damaged,
run the `reconcile restore-state` the error names. Live state (the state file) must then
match git, and a plan must find nothing to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GIT_ENV, make_repo

RECONCILE = str(Path(sys.executable).with_name("reconcile"))
SIZES = (40, 64)  # dev's compute pool alternates between these, so every apply has work to do
TRIALS = {"embedded": 7, "terraform": 3, "tofu": 3}  # 10 kills with a binary on PATH (CI has terraform)
ENGINES = ["embedded"] + [e for e in ("terraform", "tofu") if shutil.which(e)]
POLL_S, LIMIT_S = 0.002, 120


def run(repo: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run([RECONCILE, *args, "--repo", str(repo)], capture_output=True, text=True, env=_env(), timeout=LIMIT_S)
    return done.returncode, done.stdout + done.stderr


def _env() -> dict[str, str]:
    env = {**os.environ, **GIT_ENV, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    for name in ("RECONCILE_ENGINE", "RECONCILE_STATE_ROOT", "RECONCILE_WORK_DIR"):
        env.pop(name, None)
    return env


def engine_applies(repo: Path) -> list[int]:
    """Engine processes applying a stack of this repository (`... -chdir=REPO/... apply ...`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"apply" in argv and any(a.startswith(b"-chdir=" + str(repo).encode()) for a in argv):
            found.append(int(entry.name))
    return found


def apply_and_kill(repo: Path, engine: str, delay: float | None) -> tuple[int, str, float]:
    """Run apply; once the engine applies, kill it after `delay` s (None: let it finish).
    Returns the exit code, the output and how long the engine ran."""
    process = subprocess.Popen(
        [RECONCILE, "apply", "--auto-approve", "--engine", engine, "--parallelism", "1", "--repo", str(repo)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
    )
    deadline = time.monotonic() + LIMIT_S
    pids: list[int] = []
    while not pids and process.poll() is None and time.monotonic() < deadline:
        pids = engine_applies(repo)
        time.sleep(POLL_S)
    started = time.monotonic()
    if pids and delay is not None:
        time.sleep(delay)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it finished first: the trial is then an apply that was not interrupted
    try:
        out, _ = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, out, time.monotonic() - started


def set_size(repo: Path, count: int) -> None:
    path = repo / "clusters" / "dev.yaml"
    text, n = re.subn(r"(compute:\n    role: compute\n    count: )\d+", rf"\g<1>{count}", path.read_text())
    assert n == 1
    path.write_text(text)


def nodes_in_state(repo: Path) -> int:
    state = json.loads((repo / ".reconcile" / "state" / "local-a" / "cluster-dev.tfstate").read_text())
    return sum(1 for r in state["resources"] if r["name"].startswith("node_compute_"))


def dev_plan(output: str) -> dict | None:
    units = json.loads(output[output.index("{"):])["units"]
    return next((u for u in units if u["key"] == "cluster:dev@local-a"), None)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_killing_the_engine_mid_apply_always_converges(tmp_path, engine):
    repo = make_repo(tmp_path / "repo").path
    set_size(repo, SIZES[0])
    code, out, length = apply_and_kill(repo, engine, None)
    assert code == 0, out
    set_size(repo, SIZES[1])
    code, out, length = apply_and_kill(repo, engine, None)  # measures one apply of the change
    assert code == 0, out

    trials, outcomes = TRIALS[engine], {"killed": 0, "restored": 0, "finished first": 0}
    for trial in range(trials):
        before, after = nodes_in_state(repo), SIZES[trial % 2]
        set_size(repo, after)
        delay = length * 1.1 * trial / (trials - 1)  # from the first instant to just past the end
        code, out, _ = apply_and_kill(repo, engine, delay)
        outcomes["killed" if code != 0 else "finished first"] += 1

        code, out = run(repo, "apply", "--auto-approve", "--json", "--engine", engine)
        if code == 1 and "reconcile restore-state" in out:
            assert "The last good state is in" in out and "Nothing was planned for this stack" in out, out
            code, restored = run(repo, "restore-state", "cluster:dev@local-a")
            assert code == 0, restored
            outcomes["restored"] += 1
            code, out = run(repo, "apply", "--auto-approve", "--json", "--engine", engine)
        assert code == 0, f"trial {trial} (kill after {delay:.2f} s) did not converge:\n{out}"
        dev = dev_plan(out)
        if dev is not None and "changes" in dev:
            # never "create everything": at most the nodes that the change adds
            assert dev["changes"]["create"] <= max(0, after - before), f"trial {trial}: {dev['changes']}"

        code, out = run(repo, "--dry-run", "--engine", engine)
        assert code == 0 and "Nothing to do" in out, f"trial {trial}: not converged:\n{out}"
        assert nodes_in_state(repo) == after

    assert outcomes["killed"] >= trials // 2, outcomes  # the kills really landed inside applies
    print(f"{engine}: {outcomes}")
