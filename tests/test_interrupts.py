"""Interrupts at named phases: SIGINT to the process group (a terminal's Ctrl-C) or SIGTERM to
the process (a CI runner cancelling a job). Each trial exits 130 with a summary, prints no
traceback, leaves no lock file, and the next run says why it plans what it plans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import make_repo
from test_kill_apply import RECONCILE, _env, engine_applies, set_size

LIMIT_S = 120


def processes(group: int | None, match) -> list[int]:
    """Processes matching `match`, in one process group if given (a run's: it has a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if group is not None and os.getpgid(int(entry.name)) != group:
                    continue
            except OSError:
                continue
            if match(argv):
                found.append(int(entry.name))
    return found


def node_children(parent: int) -> list[int]:
    """The jsii kernel's Node, started by the run (in a session of its own, so not in its group)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and argv[0].endswith(b"node"):
            found.append(int(entry.name))
    return found


def start(repo: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [RECONCILE, *args, "--repo", str(repo), "--engine", "embedded"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True,
    )


def wait_for(process: subprocess.Popen, found) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not found():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the phase never came"
        time.sleep(0.005)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    out, err = process.communicate(timeout=LIMIT_S)
    return process.returncode, out + err


def no_locks(repo: Path) -> list[Path]:
    return sorted(repo.joinpath(".reconcile", "state").rglob("*.lock.info"))


def engine_running(repo: Path, command: bytes):
    return lambda: processes(None, lambda argv: command in argv and any(a.startswith(b"-chdir=" + str(repo).encode()) for a in argv))


def interrupt(process: subprocess.Popen, how: str) -> None:
    if how == "SIGINT":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    else:
        process.send_signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("interrupts") / "repo").path


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_interrupt_during_synthesis(tmp_path, how):
    repo = make_repo(tmp_path / "repo").path  # nothing cached: Node synthesizes
    process = start(repo, "--dry-run")
    wait_for(process, lambda: node_children(process.pid))
    interrupt(process, how)
    code, out = finish(process)
    assert code == 130, out
    assert "Traceback" not in out and "interrupted" in out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_interrupt_during_an_engine_plan(fresh, how):
    process = start(fresh, "--dry-run")
    wait_for(process, engine_running(fresh, b"plan"))
    interrupt(process, how)
    code, out = finish(process)
    assert code == 130, out
    assert "Traceback" not in out and "interrupted" in out and "nothing was applied" in out
    assert no_locks(fresh) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_interrupt_during_an_apply_then_the_next_run_says_so(tmp_path, how):
    repo = make_repo(tmp_path / "repo").path
    set_size(repo, 80)  # an apply long enough to be stopped inside
    process = start(repo, "apply", "--auto-approve", "--parallelism", "1")
    wait_for(process, lambda: engine_applies(repo))
    time.sleep(0.15)
    interrupt(process, how)
    code, out = finish(process)
    assert code == 130, out
    assert "Traceback" not in out
    assert "Apply:" in out and ("interrupted" in out or "not started" in out)
    assert no_locks(repo) == []

    code, out = finish(start(repo, "--dry-run", "--json"))
    assert code == 2
    units = json.loads(out[: out.rindex("}") + 1])["units"]
    reasons = [r for u in units for r in u["reasons"]]
    assert any(r.startswith("last apply was interrupted at ") for r in reasons) or "never applied" in reasons
    code, out = finish(start(repo, "apply", "--auto-approve"))
    assert code == 0, out
    code, out = finish(start(repo, "--dry-run"))
    assert code == 0 and "Nothing to do" in out


@pytest.mark.slow
def test_interrupt_between_stacks_starts_nothing_new(tmp_path):
    repo = make_repo(tmp_path / "repo").path
    process = start(repo, "apply", "--auto-approve", "--parallelism", "1")
    wait_for(process, lambda: engine_applies(repo))
    while engine_applies(repo):  # the first stack's apply ends
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    code, out = finish(process)
    assert code == 130, out
    assert "Traceback" not in out
    summary = out.split("Apply:", 1)[1]
    assert "applied" in summary and "not started: SIGTERM came first" in summary
    assert no_locks(repo) == []



def test_a_signal_between_two_plans_stops_the_run_saying_nothing_was_applied(repo, cli, monkeypatch):
    """The gap after one stack's plan, before the next engine starts, is still planning: the
    signal stops the run at the next step, not wherever Python happens to be."""
    from reconciler.engine import Engine

    real = Engine.plan

    def plan_then_signal(self, *args, **kwargs):
        document = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as if a CI runner cancelled the job just now
        return document

    monkeypatch.setattr(Engine, "plan", plan_then_signal)
    code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 130, out + err
    assert "Traceback" not in err and "SIGTERM received while planning: nothing was applied" in err
    assert no_locks(repo.path) == []
