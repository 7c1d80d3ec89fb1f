"""Faults on remote state, each its own trial: a run killed with its engine, two applies at once,
the backend gone mid-run, a backend that answers 403, two runs in one checkout. Nothing is
lost, and the next runs converge."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import make_repo, remote_repo
from emulators import S3, S3_ENV
from test_interrupts import engine_running, processes
from test_kill_apply import RECONCILE, _env, engine_applies, set_size

from reconciler.engine import select_engine
from reconciler.locks import LOCK_ERROR

LIMIT_S = 180


def env_for(emulator) -> dict[str, str]:
    return {**_env(), **emulator.env}


def run(repo: Path, emulator, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [RECONCILE, *args, "--repo", str(repo), "--engine", "embedded"],
        capture_output=True, text=True, env=env_for(emulator), timeout=LIMIT_S,
    )
    return done.returncode, done.stdout + done.stderr


def start(repo: Path, emulator, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [RECONCILE, *args, "--repo", str(repo), "--engine", "embedded"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_for(emulator), start_new_session=True,
    )


def wait_until(found, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not found():
        assert process is None or process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "never came"
        time.sleep(0.005)


def nodes_in_bucket(emulator, bucket: str) -> int:
    state = json.loads(emulator.objects(bucket)["hpc/local-a/cluster-dev.tfstate"])
    return sum(1 for r in state["resources"] if r["name"].startswith("node_compute_"))


def converge(repo: Path, emulator) -> str:
    """Apply until done, the way a user would: a lock left by a killed run is released with the
    ID the refusal names. Returns the last apply's output."""
    code, out = run(repo, emulator, "apply", "--auto-approve", "--lock-timeout", "0s")
    if code == 1 and "reconcile unlock" in out:
        unit, lock_id = re.search(r"reconcile unlock (\S+) --lock-id (\S+)", out).groups()
        code, unlocked = run(repo, emulator, "unlock", unit, "--lock-id", lock_id, "--yes")
        assert code == 0, unlocked
        code, out = run(repo, emulator, "apply", "--auto-approve", "--lock-timeout", "0s")
    assert code == 0, out
    return out


@pytest.fixture
def s3_repo(emulators, tmp_path):
    emulator = emulators["s3"]
    repo, bucket = remote_repo(tmp_path / "repo", emulator)
    code, out = run(repo.path, emulator, "apply", "--auto-approve")
    assert code == 0, out
    return emulator, repo, bucket


@pytest.mark.slow
def test_a_run_killed_with_its_engine_mid_apply_converges_on_the_next_runs(s3_repo):
    emulator, repo, bucket = s3_repo
    for trial, (size, delay) in enumerate(((24, 0.0), (40, 0.4), (16, 0.8))):
        before = nodes_in_bucket(emulator, bucket)
        set_size(repo.path, size)
        process = start(repo.path, emulator, "apply", "--auto-approve", "--parallelism", "1")
        wait_until(lambda: engine_applies(repo.path), process)
        time.sleep(delay)
        for pid in [process.pid, *engine_applies(repo.path)]:  # the runner dies: reconcile and its engine
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.communicate(timeout=LIMIT_S)
        out = converge(repo.path, emulator)
        created = [int(n) for n in re.findall(r"(?m)^Plan: (\d+) to create", out)]
        assert sum(created) <= max(0, size - before), f"trial {trial}: more created than the change adds:\n{out}"
        code, out = run(repo.path, emulator, "--dry-run")
        assert code == 0 and "Nothing to do" in out, f"trial {trial}: not converged:\n{out}"
        assert nodes_in_bucket(emulator, bucket) == size, f"trial {trial}"


@pytest.mark.slow
def test_two_applies_at_once_apply_each_stack_once(s3_repo, tmp_path):
    emulator, repo, bucket = s3_repo
    set_size(repo.path, 12)
    runs = [
        # the lock is waited for far longer than one apply takes, even on a loaded machine
        start(repo.path, emulator, "apply", "--auto-approve", "--lock-timeout", f"{LIMIT_S // 2}s", "--work-dir", str(tmp_path / f"work-{n}"))
        for n in (1, 2)
    ]
    outputs = [p.communicate(timeout=LIMIT_S)[0] for p in runs]
    created = [out for out in outputs if "plan: 10 to create" in out and "cluster dev on local-a: applied" in out]
    assert len(created) == 1, "\n---\n".join(outputs)
    other = next(out for out in outputs if out is not created[0])
    # the other run planned after the first had applied (no resource changes: at most its record
    # is written again), or its saved plan went stale under it and the engine refused it
    assert "no resource changes" in other or "Nothing to do" in other or "stale" in other.lower(), other
    code, out = run(repo.path, emulator, "--dry-run")
    assert code == 0 and "Nothing to do" in out, out
    assert nodes_in_bucket(emulator, bucket) == 12


LOCK_KEY = "hpc/local-a/cluster-dev.tfstate.tflock"


@pytest.mark.slow
def test_a_lock_let_go_while_the_engine_reads_it_is_taken_again(s3_repo):
    """The engine's conditional write of the lock fails, and its read of who holds it finds
    nothing (or nothing it can read): the engine gives up at once, whatever -lock-timeout, for
    it has no lock ID to wait on. The other run let go in between; the plan takes the lock
    again. A lock that stays unreadable is reported as such after a few tries."""
    emulator, repo, bucket = s3_repo
    work = repo.path / ".reconcile"
    emulator.put(bucket, LOCK_KEY, b"{}")  # a lock object whose holder cannot be read
    with emulator.client_env():
        engine = select_engine("embedded", work, repo.path, "30s")
    workdir = work / "stacks" / "local-a" / "cluster-dev"
    calls = []

    class LetsGoAfterTheFirstTry:
        name = engine.runner.name

        def run(self, workdir, args, probe=None):
            calls.append(args[0])
            result = engine_runner.run(workdir, args, probe)
            if len(calls) == 1:
                assert result[0] != 0 and LOCK_ERROR in result[1] + result[2], result
                emulator.delete(bucket, LOCK_KEY)  # the other run lets go
            return result

    engine_runner, engine.runner = engine.runner, LetsGoAfterTheFirstTry()
    document = engine.plan(workdir)
    assert calls == ["plan", "plan", "show"] and document["format_version"], calls
    assert LOCK_KEY not in emulator.objects(bucket)  # the plan let go of its lock in turn

    emulator.put(bucket, LOCK_KEY, b"not a lock")
    calls.clear()
    engine.runner = engine_runner
    set_size(repo.path, 4)  # a change, so that the dry-run plans
    started = time.monotonic()
    code, out = run(repo.path, emulator, "--dry-run", "--lock-timeout", "30s")
    assert code == 1 and "is locked by another run, and its lock information cannot be read; nothing was planned" in out, out
    assert time.monotonic() - started < 30  # tried a few times, never waited the lock timeout out
    emulator.delete(bucket, LOCK_KEY)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_the_backend_gone_mid_run_is_exit_1_naming_the_bucket(kind, tmp_path):
    from emulators import KINDS

    emulator = KINDS[kind](tmp_path / "emulator.log").start()
    try:
        repo, bucket = remote_repo(tmp_path / "repo", emulator)
        code, out = run(repo.path, emulator, "apply", "--auto-approve")
        assert code == 0, out
        kept = emulator.objects(bucket)
        repo.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
        emulator.env = {**emulator.env, "RECONCILE_BACKEND_PROBE_S": "2", "RECONCILE_BACKEND_RETRY_S": "3"}  # quick to notice
        process = start(repo.path, emulator, "--dry-run")
        wait_until(engine_running(repo.path, b"plan"), process)  # the records were read; the engine plans
        emulator.stop()
        out, _ = process.communicate(timeout=LIMIT_S)
        assert process.returncode == 1, out
        assert "Traceback" not in out and bucket in out and "site local-" in out, out

        emulator.start()  # it comes back, with what it held
        emulator.make_bucket(bucket)
        for key, data in kept.items():
            emulator.put(bucket, key, data)
        code, out = run(repo.path, emulator, "apply", "--auto-approve")
        assert code == 0 and "cluster dev on local-a: applied" in out, out
        code, out = run(repo.path, emulator, "--dry-run")
        assert code == 0 and "Nothing to do" in out, out
    finally:
        emulator.stop()


def test_a_backend_that_answers_403_is_exit_1_and_changes_nothing(tmp_path, cli, monkeypatch):
    # moto with authentication on after one request: the bucket is made, then every request
    # signed with keys it does not know answers 403 InvalidAccessKeyId
    emulator = S3(tmp_path / "emulator.log", INITIAL_NO_AUTH_ACTION_COUNT="1").start()
    try:
        repo, bucket = remote_repo(tmp_path / "repo", emulator, monkeypatch)
        code, out, err = cli("--dry-run", "--repo", str(repo.path), "--engine", "embedded")
        assert code == 1, out + err
        assert f"s3://{bucket}/hpc/local-" in err and "HTTP 403" in err and "site local-" in err, err
        assert "Traceback" not in err and "nothing was changed" in err
    finally:
        emulator.stop()


@pytest.mark.slow
def test_a_second_run_in_the_same_checkout_is_refused_naming_the_first(tmp_path):
    repo = make_repo(tmp_path / "repo").path
    set_size(repo, 64)  # an apply long enough to overlap
    first = subprocess.Popen(
        [RECONCILE, "apply", "--auto-approve", "--engine", "embedded", "--repo", str(repo)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
    )
    lock = repo / ".reconcile" / "run.lock"
    wait_until(lambda: lock.is_file() and f'"pid": {first.pid}' in lock.read_text(), first)
    second = subprocess.run(
        [RECONCILE, "apply", "--auto-approve", "--engine", "embedded", "--repo", str(repo)],
        capture_output=True, text=True, env=_env(), timeout=LIMIT_S,
    )
    out, _ = first.communicate(timeout=LIMIT_S)
    assert first.returncode == 0, out
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"another reconcile run is using {repo}/.reconcile (pid {first.pid}, `reconcile apply`" in second.stderr
    assert "nothing was done" in second.stderr
