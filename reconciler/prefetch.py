"""Remote live records, read by a forked helper process while this one reads git.

Reading records from S3 or GCS costs little on the wire but much in this process: importing
boto3 and google-cloud-storage and loading botocore's service model take most of a second of
CPU, and Python runs one thread at a time. So the run forks at its start, when the site files
name a remote backend: the child imports the clients while the parent reads and validates the
definitions (on the other core), then reads the records it is sent and answers with them.

Any failure of the helper (it died, it could not fork, its answer cannot be read) leaves the
parent to read the records itself, as it would without it: the helper only saves time.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import threading
from pathlib import Path

from reconciler.backends import clients_named

ANSWER_LIMIT_S = 120  # more than the backends' own retries take to give up


def _send(fd: int, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("!Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int):
    def exactly(n: int) -> bytes:
        parts = []
        while n:
            part = os.read(fd, n)
            if not part:
                raise EOFError
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    (size,) = struct.unpack("!Q", exactly(8))
    return pickle.loads(exactly(size))


class Prefetch:
    """One helper for one run; `collect` at most once, `close` always."""

    def __init__(self, root: Path, state_root: Path):
        self.pid = None
        self.root, self.state_root = root, state_root
        kinds = clients_named(root)
        # fork only a process with one thread: a lock another thread held at the fork (an
        # import's, a logger's) would never be released in the child
        if not kinds or not hasattr(os, "fork") or threading.active_count() > 1:
            return
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (to_child, from_parent, from_child, to_parent):
                os.close(fd)
            return
        if pid == 0:  # the helper: never returns
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles a Ctrl-C and closes the pipe
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(to_child)
                os.close(from_child)
                _serve(kinds, state_root, from_parent, to_parent)
            except BaseException:  # noqa: BLE001 - whatever happens here, the parent reads for itself
                code = 1
            finally:
                os._exit(code)
        os.close(from_parent)
        os.close(to_parent)
        self.pid, self.to_child, self.from_child = pid, to_child, from_child

    def collect(self, units: dict, directories: list):
        """(records by unit key, records under each directory) for the remote `units`, or None
        when the helper cannot answer. Errors the backends gave are raised here."""
        if self.pid is None:
            return None
        try:
            _send(self.to_child, ({k: u.ref() for k, u in units.items()}, directories))
            ready, _, _ = select.select([self.from_child], [], [], ANSWER_LIMIT_S)
            if not ready:  # stuck: the parent reads for itself
                os.kill(self.pid, signal.SIGKILL)
                return None
            answer = _receive(self.from_child)
        except (OSError, EOFError, pickle.PickleError, struct.error, AttributeError, TypeError):
            return None
        finally:
            self.close()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        if self.pid is None:
            return
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.pid = None


_early: Prefetch | None = None


def start_early(root: Path, state_root: Path) -> None:
    """Fork the helper now, before the command's imports (the `reconcile` entry point)."""
    global _early
    _early = Prefetch(root, state_root)


def for_run(root: Path, state_root: Path) -> Prefetch:
    """The helper started early for this repository and state root, or a new one."""
    global _early
    early, _early = _early, None
    if early is not None and early.root == root and early.state_root == state_root and early.pid is not None:
        return early
    if early is not None:
        early.close()
    return Prefetch(root, state_root)


def _serve(kinds: set[str], state_root: Path, requests: int, answers: int) -> None:
    from reconciler.backends import import_clients
    from reconciler.errors import ReconcileError
    from reconciler.live import UNKNOWN, LiveStore

    import_clients(kinds)
    try:
        units, directories = _receive(requests)
    except EOFError:  # the parent needed nothing (or stopped)
        return
    store = LiveStore(state_root)
    try:
        live = store.read_all(units)
        live = {k: ("UNKNOWN" if v is UNKNOWN else v) for k, v in live.items()}
        known = store.known_records(live)
        under = [store.records_under(state, known) for state in directories]
        _send(answers, (live, under))
    except ReconcileError as exc:
        _send(answers, exc)
