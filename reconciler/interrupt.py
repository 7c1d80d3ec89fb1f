"""SIGINT and SIGTERM: stop the way Terraform does, never half-way through a write.

The first signal sets a flag: no new stack starts, and every running engine process (each in
a session of its own, so a terminal's Ctrl-C reaches it only through here) gets one SIGINT,
its own graceful stop: it finishes the resource it is on, writes its state and releases its
lock. Work in progress ends, and the run reports what finished and what was interrupted, with
exit code 130. A second signal is passed on too: engines then stop at once.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time

from reconciler.errors import Exit, ReconcileError
from reconciler.settings import env_seconds

_requested = threading.Event()
_lock = threading.Lock()
_processes: set[subprocess.Popen] = set()
_received: list[str] = []
_stepwise = threading.Event()


class Interrupted(ReconcileError):
    """The run was stopped by SIGINT or SIGTERM."""

    exit_code = Exit.INTERRUPTED


@contextlib.contextmanager
def handled():
    """SIGINT and SIGTERM are handled here for the length of one run, then as before. A run's
    interrupt ends with it: what runs next in the same process (a library caller) starts clean."""
    reset()
    if threading.current_thread() is not threading.main_thread():  # only the main thread can
        try:
            yield
        finally:
            reset()
        return
    previous = {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        reset()


def reset() -> None:
    """No interrupt pending: how every run starts and ends."""
    _requested.clear()
    _received.clear()


def _on_signal(signum, frame) -> None:
    _received.append(signal.Signals(signum).name)
    _requested.set()
    with _lock:
        running = list(_processes)
    for process in running:
        try:
            process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
    if not running and not _stepwise.is_set():
        # Nothing is being planned or written (loading, synthesis, a prompt): stop right here.
        raise KeyboardInterrupt


@contextlib.contextmanager
def stepwise():
    """While stacks are planned or applied, a signal never stops this process mid-step: it only
    stops new steps from starting and stops the engines gracefully; `checkpoint` then stops the
    run between two steps, saying where."""
    outer = _stepwise.is_set()  # re-entrant: a rolling apply plans inside its apply
    _stepwise.set()
    try:
        yield
    finally:
        if not outer:
            _stepwise.clear()


def requested() -> bool:
    return _requested.is_set()


def received() -> str:
    return _received[0] if _received else "an interrupt"


def checkpoint(where: str) -> None:
    """Stop here, between two steps, if an interrupt came."""
    if _requested.is_set():
        raise Interrupted(f"{received()} received {where}")


def poll(pending, timeout_s: float, poll_s: float, where) -> str:
    """Ask `pending` what is still awaited until it answers "" or `timeout_s` runs out; an
    interrupt stops it between two asks, saying `where(what is awaited)`. Returns its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        still = pending()
        if not still or time.monotonic() > deadline:
            return still
        checkpoint(where(still))
        time.sleep(poll_s)


PROBE_EVERY_S, PROBE_FAILURES, GRACE_S = 10.0, 2, 5.0  # grace: its backend is gone, it cannot write state anyway


class Stalled(ReconcileError):
    """What an engine depends on stopped answering; the engine was stopped."""


class TimedOut(ReconcileError):
    """An engine ran past its time limit; it was stopped."""


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """The engine's graceful stop, then SIGKILL after `grace_s`."""
    process.send_signal(signal.SIGINT)
    try:
        process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


STOP_GRACE_S = 60.0  # an engine past its time limit: its own graceful stop writes its state


def run(argv: list[str], probe=None, probe_every: float | None = None, limit_s: float | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` for an engine command: in a session of its own, stopped through here.

    `probe`: asked every `probe_every` seconds while the engine runs; it answers why the engine
    cannot go on (its state backend no longer answers), or None. After PROBE_FAILURES answers in
    a row the engine gets its graceful stop, then SIGKILL, and Stalled is raised: an engine
    whose backend has gone never hangs the run (some backends' clients retry forever).

    `limit_s`: past it the engine gets its graceful stop (SIGINT), then SIGKILL after
    STOP_GRACE_S, and TimedOut is raised."""
    if probe is not None and probe_every is None:
        probe_every = env_seconds("RECONCILE_BACKEND_PROBE_S", PROBE_EVERY_S)
    process = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    with _lock:
        _processes.add(process)
    stalled: list[str] = []
    deadline = time.monotonic() + limit_s if limit_s else None
    try:
        if _requested.is_set():  # the signal came while it started: it still gets its graceful stop
            process.send_signal(signal.SIGINT)
        while True:
            waits = [w for w in (probe_every if probe else None, deadline and max(deadline - time.monotonic(), 0.0)) if w is not None]
            try:
                out, err = process.communicate(timeout=min(waits) if waits else None)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    _stop(process, STOP_GRACE_S)
                    raise TimedOut(f"ran past its time limit of {limit_s:.0f} s and was stopped")
                if probe is None:
                    continue
                why = probe()
                stalled = stalled + [why] if why else []
                if len(stalled) >= PROBE_FAILURES:
                    _stop(process, GRACE_S)
                    raise Stalled(f"{stalled[-1]}; the engine was stopped after {len(stalled)} failed checks")
    finally:
        with _lock:
            _processes.discard(process)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)
