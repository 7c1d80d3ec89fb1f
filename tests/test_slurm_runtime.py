"""The local platform's `slurm` runtime: the example cluster `laptop` runs for real.

Debian's slurmctld, slurmd, slurm-client and munge (installed by scripts/test), each node in
network, UTS and mount namespaces of its own behind one bridge in the site's namespace, all of
it created and destroyed by Terraform through `reconcile apply`. Needs root.

The tests share one applied cluster and run in order; the last one destroys it and checks that
nothing is left. Whatever happens, the module's teardown stops what is left by process id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import make_repo

pytestmark = pytest.mark.slow

SITE_DIR = ".reconcile/state/local-slurm"
SITE_DIR_B = ".reconcile/state/local-slurm-b"  # where the move test takes the cluster
NODES = ["laptop-login-0", "laptop-compute-0", "laptop-compute-1", "laptop-compute-2"]


def _why_not() -> str:
    if os.geteuid() != 0:
        return "the slurm runtime needs root"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "srun") if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    return f"missing {', '.join(missing)} (scripts/test installs them as root)" if missing else ""


if _why_not():  # CI runs as root and scripts/test installs the packages: there this never skips
    pytestmark = [pytestmark, pytest.mark.skip(reason=_why_not())]


class Cluster:
    def __init__(self, repo, cli):
        self.repo, self.cli = repo, cli
        self.site_dir = repo.path / SITE_DIR
        self.sites = ["local-slurm"]

    def apply(self, *flags: str) -> tuple[int, str, str]:
        sites = [f for site in self.sites for f in ("--site", site)]
        return self.cli("apply", "--auto-approve", "--repo", str(self.repo.path), "--engine", "embedded", *sites, *flags)

    def on(self, hostname: str, *command: str, timeout: float = 60, user: str = "", at: str = SITE_DIR) -> subprocess.CompletedProcess:
        """Run a command on a node: as root, or as `user` the way a user logs in (refused while
        the node says nologin)."""
        node = ["env", f"RECONCILE_STATE_ROOT={self.repo.path}", f"PYTHONPATH={_node_package()}", f"VC_USER={user}",
                "python3", "-m", "vcnode.localhost", "enter", at, hostname]
        return subprocess.run([*node, *command], capture_output=True, text=True, timeout=timeout)

    def sinfo(self) -> dict[str, str]:
        done = self.on("laptop-login-0", "sinfo", "-N", "-h", "-o", "%N %t")
        return dict(line.split() for line in done.stdout.splitlines())

    def partitions(self, at: str) -> dict[str, str]:
        """{partition: up | down | drain} as the cluster's controller on that site sees it."""
        done = self.on("laptop-login-0", "sinfo", "-h", "-o", "%R %a", at=at)
        return dict(line.split() for line in done.stdout.splitlines())

    def booted_at(self, hostname: str) -> int:
        """When the node last booted: its first-boot data is written anew at every boot."""
        return (self.site_dir / "runtime" / "nodes" / hostname / "user-data").stat().st_mtime_ns

    def ns_inode(self, hostname: str) -> tuple[int, int, int]:
        ns = self.site_dir / "runtime" / "ns"
        return tuple(os.stat(p).st_ino for p in (ns / f"{hostname}.uts", ns / f"{hostname}.mnt", _netns_file(self, hostname)))


def _node_package() -> str:
    from reconciler import nodepkg

    return str(nodepkg.source_dir().parent)


def _site(root: Path, site_dir: str = SITE_DIR):
    """The runtime's own view of the test's site (the node package's host side, by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vcnode_localhost_under_test", Path(_node_package()) / "vcnode" / "localhost.py")
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, _node_package())
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module.Site(root, site_dir)


def _netns_file(cluster: Cluster, hostname: str) -> Path:
    return Path("/run/netns") / _site(cluster.repo.path).node(hostname).netns


def _ours(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(network namespaces, live processes, mounts) that belong to this test's state root."""
    names = set()
    for site in (_site(root), _site(root, SITE_DIR_B)):
        names |= {site.netns} | {site.node(h).netns for h in [*NODES, "laptop-compute-3"]}
    namespaces = [n for n in os.listdir("/run/netns") if n in names] if Path("/run/netns").is_dir() else []
    pids = []
    for name in namespaces:
        pids += [int(p) for p in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()]
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(root) in line]
    return namespaces, pids, mounts


@pytest.fixture(scope="module")
def laptop(tmp_path_factory):
    from reconciler.cli import main

    repo = make_repo(tmp_path_factory.mktemp("slurm") / "repo", real_runtime=True)

    def cli(*argv: str):
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return int(code), out.getvalue(), err.getvalue()

    cluster = Cluster(repo, cli)
    cluster.home_before = sorted(os.listdir("/home"))
    # The engine's own trace of the first apply. Each engine process truncates TF_LOG_PATH, so
    # it is a named pipe that a thread drains into one file, every process after the other.
    cluster.tf_log = repo.path.parent / "tf.log"
    pipe = repo.path.parent / "tf.pipe"
    os.mkfifo(pipe)
    stop = threading.Event()

    def drain():
        with open(cluster.tf_log, "ab") as out:
            while not stop.is_set():
                with open(pipe, "rb") as source:  # blocks until an engine opens it
                    shutil.copyfileobj(source, out)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    saved = {k: os.environ.get(k) for k in ("TF_LOG", "TF_LOG_PATH", "AWS_SECRET_ACCESS_KEY")}
    # a credential of the runner's, which no node may inherit
    os.environ.update(TF_LOG="TRACE", TF_LOG_PATH=str(pipe), AWS_SECRET_ACCESS_KEY="runner-credential-not-for-nodes")
    try:
        code, out, err = cluster.apply()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        stop.set()
        with open(pipe, "wb"):  # wakes the reader for its last round
            pass
        reader.join(timeout=10)
    cluster.first_output = out + err
    try:
        assert code == 0, out + err
        yield cluster
    finally:
        _force_cleanup(repo.path)


def _force_cleanup(root: Path) -> None:
    """Stop whatever a failed test left, by process id, and remove its namespaces and mounts."""
    namespaces, pids, _ = _ours(root)
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for name in namespaces:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point.startswith(str(root)):
            subprocess.run(["umount", "-l", point], capture_output=True)


def test_the_cluster_runs_jobs_across_its_nodes_on_shared_storage(laptop):
    assert laptop.sinfo() == {h: "idle" for h in NODES[1:]}
    done = laptop.on("laptop-login-0", "srun", "-N3", "hostname")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == NODES[1:]  # every node its own hostname
    token = f"written on compute-0 at {time.time()}"
    assert laptop.on("laptop-login-0", "srun", "-w", "laptop-compute-0", "sh", "-c", f"echo '{token}' > /home/probe").returncode == 0
    done = laptop.on("laptop-login-0", "srun", "-w", "laptop-compute-2", "cat", "/home/probe")
    assert done.stdout.strip() == token
    volumes = list((laptop.site_dir / "volumes").iterdir())
    assert len(volumes) == 1 and (volumes[0] / "probe").read_text().strip() == token
    for hostname in NODES:
        seen = laptop.on(hostname, "findmnt", "-n", "-o", "SOURCE", "/home").stdout
        assert volumes[0].name in seen, (hostname, seen)
        assert laptop.on(hostname, "hostname").stdout.strip() == hostname
    assert sorted(os.listdir("/home")) == laptop.home_before and not Path("/home/probe").exists()
    # the command users have: reconcile enter NODE COMMAND
    import sys

    entered = subprocess.run([str(Path(sys.executable).with_name("reconcile")), "enter", "laptop-compute-1", "cat", "/home/probe"],
                             capture_output=True, text=True, cwd=laptop.repo.path, timeout=60)
    assert entered.returncode == 0 and entered.stdout.strip() == token, entered.stderr
    # slurmctld keeps its state on the shared volume: a new controller keeps every job
    assert (volumes[0] / ".vcluster" / "slurmctld").is_dir()


def test_the_munge_key_is_the_clusters_own_and_nowhere_else(laptop):
    secret = laptop.site_dir / "secrets" / "laptop" / "munge-key"
    key = secret.read_bytes()
    assert len(key) == 1024 and (secret.stat().st_mode & 0o777) == 0o600
    assert key != Path("/etc/munge/munge.key").read_bytes()  # not the package's default key
    for hostname in NODES:
        node_key = laptop.site_dir / "runtime" / "nodes" / hostname / "root" / "etc_munge" / "munge.key"
        assert hashlib.sha256(node_key.read_bytes()).digest() == hashlib.sha256(key).digest()
        assert (node_key.stat().st_mode & 0o777) == 0o600
        assert laptop.on(hostname, "munge", "-n").returncode == 0  # munged runs with it
    # the daemons do not carry the runner's environment (tokens, cloud credentials)
    pid = (laptop.site_dir / "runtime" / "nodes" / "laptop-compute-0" / "root" / "var_spool_slurmd" / "slurmd.pid").read_text().split()[0]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [e for e in environ if e.startswith((b"GITHUB_", b"AWS_", b"GOOGLE_", b"RECONCILE_", b"VC_"))], environ
    # a cluster user cannot reach the identity (secret) store
    denied = laptop.on("laptop-compute-0", "cat", str(secret), user="nobody")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # in no state, plan, record, output or work file (the key is binary: look for its bytes and hex)
    allowed = {secret} | {laptop.site_dir / "runtime" / "nodes" / h / "root" / "etc_munge" / "munge.key" for h in NODES}
    needles = [key[:64], key.hex()[:64].encode(), __import__("base64").b64encode(key)[:64]]
    for path in (laptop.repo.path / ".reconcile").rglob("*"):
        if path.is_file() and path not in allowed and "ns" not in path.parent.name:
            data = path.read_bytes()
            assert not any(n in data for n in needles), path
    assert not any(n.decode(errors="ignore") in laptop.first_output for n in needles[1:])
    applied = (laptop.repo.path / ".reconcile" / "stacks" / "local-slurm" / "cluster-laptop" / "apply.log").read_text()
    assert "laptop-login-0: login and controller on local" in applied  # the provisioners' output (scanned above)
    trace = laptop.tf_log.read_bytes()  # TF_LOG=TRACE of every engine command of the first apply
    assert b'"apply", "-input=false"' in trace and b"terraform_data.node_login_0" in trace
    assert not any(n in trace for n in needles)


def test_growing_a_pool_creates_one_node_and_spares_the_running_job(laptop):
    before = {h: laptop.ns_inode(h) for h in NODES}
    release = laptop.repo.path.parent / "release-the-job"  # the job runs until the test has looked, however slow the apply
    job = _running(laptop, "laptop-compute-0", 300, until=release)
    laptop.repo.replace("clusters/laptop.yaml", "count: 3", "count: 4")
    code, out, err = laptop.cli("plan", "--json", "--repo", str(laptop.repo.path), "--engine", "embedded", "--site", "local-slurm")
    unit = next(u for u in json.loads(out)["units"] if u["key"] == "cluster:laptop@local-slurm")
    changes = {c["address"]: c["action"] for c in unit["resources"]}
    nodes_changed = {a: v for a, v in changes.items() if ".node_" in a or a.endswith((".config", ".first_boot", ".subnet"))}
    assert nodes_changed == {"terraform_data.node_compute_3": "create"}, changes
    assert unit["change_class"]["kind"] == "creates only", unit
    code, out, err = laptop.apply()
    assert code == 0, out + err
    assert {h: laptop.ns_inode(h) for h in NODES} == before  # no other node was recreated
    assert laptop.sinfo().get("laptop-compute-3") == "idle"
    state = laptop.on("laptop-login-0", "scontrol", "show", "job", job, "-o").stdout
    assert "JobState=RUNNING" in state and "Restarts=0" in state and "NodeList=laptop-compute-0 " in state, state  # where it started
    release.touch()
    deadline = time.monotonic() + 60
    while "JobState=COMPLETED" not in state and time.monotonic() < deadline:
        time.sleep(1)
        state = laptop.on("laptop-login-0", "scontrol", "show", "job", job, "-o").stdout
    release.unlink()
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state


def test_a_drain_that_runs_out_stops_the_rollout_and_kills_nothing(laptop):
    job = _running(laptop, "laptop-compute-3", 120)
    original = laptop.repo.read("clusters/laptop.yaml")
    laptop.repo.replace("clusters/laptop.yaml", "count: 4", "count: 3")
    laptop.repo.replace("clusters/laptop.yaml", 'version: "22.05"', 'version: "22.05"\n    drain_timeout_s: 3')
    try:
        code, out, err = laptop.apply()
        said = " ".join((out + err).split())  # the engine wraps its lines
        assert code == 1 and "not drained, so not removed; nothing was killed" in said, out + err
        assert "JobState=RUNNING" in _job_state(laptop, job)  # still running, on the node that stays
        assert laptop.sinfo()["laptop-compute-3"] in ("drng", "drain")  # drained: it takes no new job
        assert (laptop.site_dir / "runtime" / "nodes" / "laptop-compute-3").is_dir()
    finally:
        laptop.on("laptop-login-0", "scancel", job)
        laptop.on("laptop-login-0", "scontrol", "update", "nodename=laptop-compute-3", "state=resume")
        laptop.repo.write("clusters/laptop.yaml", original)
    code, out, err = laptop.apply()  # back to what git says: the node takes jobs again
    assert code == 0, out + err
    deadline = time.monotonic() + 20
    while laptop.sinfo().get("laptop-compute-3") != "idle" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert laptop.sinfo().get("laptop-compute-3") == "idle"


def test_shrinking_a_pool_drains_the_node_first(laptop):
    job = _running(laptop, "laptop-compute-3", 15)
    laptop.repo.replace("clusters/laptop.yaml", "count: 4", "count: 3")
    code, out, err = laptop.cli("plan", "--repo", str(laptop.repo.path), "--engine", "embedded", "--site", "local-slurm")
    assert "- terraform_data.node_compute_3 (drained first" in out, out
    started = time.monotonic()
    code, out, err = laptop.apply()
    assert code == 0, out + err
    assert time.monotonic() - started >= 5  # it waited for the job
    state = laptop.on("laptop-login-0", "scontrol", "show", "job", job, "-o").stdout
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state
    assert "laptop-compute-3" not in laptop.sinfo()
    assert not (laptop.site_dir / "runtime" / "nodes" / "laptop-compute-3").exists()


def _running(laptop, node: str, seconds: int, until: Path | None = None) -> str:
    """Submit `sleep SECONDS` to `node` and wait until it runs there: a job still pending when
    a drain starts would never start, and the node would leave at once. With `until`: the job
    ends well (exit 0) as soon as that file exists, and fails after SECONDS."""
    work = f"sleep {seconds}"
    if until is not None:
        work = f"for i in $(seq {seconds * 2}); do [ -e {until} ] && exit 0; sleep 0.5; done; exit 1"
    done = laptop.on("laptop-login-0", "sbatch", "--parsable", "-w", node, "--wrap", work)
    job = done.stdout.strip()
    assert done.returncode == 0 and job, done.stderr
    deadline = time.monotonic() + 30
    while "JobState=RUNNING" not in _job_state(laptop, job) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "JobState=RUNNING" in _job_state(laptop, job)
    return job


def _job_state(laptop, job: str) -> str:
    return laptop.on("laptop-login-0", "scontrol", "show", "job", job, "-o").stdout


def _wait_job(laptop, job: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    state = _job_state(laptop, job)
    while "JobState=COMPLETED" not in state and "JobState=FAILED" not in state and time.monotonic() < deadline:
        time.sleep(1)
        state = _job_state(laptop, job)
    return state


def _plan_json(laptop) -> dict:
    code, out, err = laptop.cli("plan", "--json", "--repo", str(laptop.repo.path), "--engine", "embedded", "--site", "local-slurm")
    return next(u for u in json.loads(out)["units"] if u["key"] == "cluster:laptop@local-slurm")


def test_a_config_change_is_config_only_and_status_shows_nodes_behind_until_applied(laptop):
    laptop.repo.replace("clusters/laptop.yaml", "    - name: hpc-users\n", "    - name: hpc-users\n    - name: students\n")
    unit = _plan_json(laptop)
    assert unit["change_class"]["kind"] == "config only", unit
    code, out, err = laptop.cli("status", "laptop", "--json", "--repo", str(laptop.repo.path))
    cluster = json.loads(out)["clusters"][0]
    assert {n["config"] for n in cluster["nodes"]} == {"behind"}, cluster  # git moved on, the nodes did not
    before = {h: laptop.ns_inode(h) for h in NODES}
    code, out, err = laptop.apply()
    assert code == 0, out + err
    code, out, err = laptop.cli("status", "laptop", "--json", "--repo", str(laptop.repo.path))
    cluster = json.loads(out)["clusters"][0]
    assert {n["config"] for n in cluster["nodes"]} == {"current"}, cluster
    assert {n["config_version"] for n in cluster["nodes"]} == {cluster["config_in_git"]}
    assert {h: laptop.ns_inode(h) for h in NODES} == before  # no node was touched
    groups = laptop.on("laptop-compute-1", "cat", "/etc/vcluster/groups.json").stdout
    assert "students" in groups


def test_a_killed_slurmd_shows_as_down_and_the_next_apply_replaces_that_node(laptop):
    pidfile = laptop.site_dir / "runtime" / "nodes" / "laptop-compute-1" / "root" / "var_spool_slurmd" / "slurmd.pid"
    os.kill(int(pidfile.read_text().split()[0]), 9)
    deadline = time.monotonic() + 10
    while pidfile.exists() and _alive(pidfile) and time.monotonic() < deadline:
        time.sleep(0.1)
    code, out, err = laptop.cli("status", "laptop", "--repo", str(laptop.repo.path))
    line = next(line for line in out.splitlines() if "laptop-compute-1" in line)
    assert "down: slurmd not running" in line and "the next apply replaces it" in line, out
    unit = _plan_json(laptop)
    assert "live state differs from git: laptop-compute-1: slurmd not running" in unit["reasons"]
    assert {(r["address"], r["action"]) for r in unit["resources"]} >= {("terraform_data.node_compute_1", "replace")}
    other = laptop.ns_inode("laptop-compute-0")
    code, out, err = laptop.apply()
    assert code == 0, out + err
    assert laptop.sinfo() == {h: "idle" for h in NODES[1:]}
    assert laptop.ns_inode("laptop-compute-0") == other


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().split()[0]), 0)
        return True
    except (OSError, ValueError):
        return False


def test_a_rolling_change_replaces_nodes_one_at_a_time_with_jobs_running_and_the_controller_last(laptop):
    job = _running(laptop, "laptop-compute-2", 12)
    laptop.repo.replace("clusters/laptop.yaml", "    count: 3\n    cores: 1\n    memory_gb: 1", "    count: 3\n    cores: 1\n    memory_gb: 2")
    unit = _plan_json(laptop)
    assert unit["change_class"]["kind"] == "rolling"
    assert unit["change_class"]["batches"] == [[f"terraform_data.node_compute_{i}"] for i in range(3)]
    before = {h: (laptop.ns_inode(h), laptop.booted_at(h)) for h in NODES}
    code, out, err = laptop.apply()
    assert code == 0, out + err
    state = _wait_job(laptop, job)
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state  # it ran throughout, then the node rolled
    after = {h: (laptop.ns_inode(h), laptop.booted_at(h)) for h in NODES}
    assert after["laptop-login-0"] == before["laptop-login-0"]  # the controller's pool did not change
    booted = sorted(NODES[1:], key=lambda h: after[h][1])
    assert booted == NODES[1:] and all(after[h][1] > before[h][1] for h in NODES[1:])  # one after the other
    # each node booted after the one before it was back: one at a time
    assert all(after[a][1] < after[b][1] for a, b in zip(booted, booted[1:]))
    assert laptop.sinfo() == {h: "idle" for h in NODES[1:]}
    real = laptop.on("laptop-login-0", "scontrol", "show", "node", "laptop-compute-0", "-o").stdout
    assert "RealMemory=1945" in real  # the new shape: 2 GB less 5 %


def test_replacing_the_only_controller_is_replace_all_and_needs_a_decision(laptop):
    laptop.repo.replace("clusters/laptop.yaml", "  login:\n    role: login\n    count: 1\n    cores: 1\n    memory_gb: 1",
                        "  login:\n    role: login\n    count: 1\n    cores: 1\n    memory_gb: 2")
    unit = _plan_json(laptop)
    assert unit["change_class"]["kind"] == "replace-all", unit
    code, out, err = laptop.apply()
    assert code == 1 and "--allow-replace" in out + err, out + err
    assert laptop.sinfo() == {h: "idle" for h in NODES[1:]}  # nothing was applied
    laptop.repo.replace("clusters/laptop.yaml", "  login:\n    role: login\n    count: 1\n    cores: 1\n    memory_gb: 2",
                        "  login:\n    role: login\n    count: 1\n    cores: 1\n    memory_gb: 1")


def test_the_channel_freezes_and_opens_a_running_cluster_the_way_cloud_nodes_take_it(laptop):
    """A cloud cluster is frozen and opened around a copy through its config channel: the
    reconciler asks (`channel.ACCESS`), every node takes it at its next `vcnode sync`, and the
    reconciler waits until each has acknowledged. The nodes of the local runtime run the same
    sync for real here; only the timer that runs it on a cloud node is replaced by this test."""
    from reconciler.apply import channel_access
    from reconciler.gitsource import GitSource
    from reconciler.live import LiveStore
    from reconciler.run import desired

    unit = desired(GitSource(laptop.repo.path).working_tree()).units["cluster:laptop@local-slurm"]
    store = LiveStore(laptop.repo.path)
    hosts = sorted(store.node_reports(unit))
    assert hosts == ["laptop-compute-0", "laptop-compute-1", "laptop-compute-2", "laptop-login-0"]

    def synced(state: str) -> str:
        asked = {}
        waiting = threading.Thread(target=lambda: asked.setdefault("serial", channel_access(store, unit, state, poll_s=0.2)))
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive(), "it waits for the nodes"
        for host in hosts:
            done = laptop.on(host, "python3", "/usr/libexec/vcluster/vcnode.pyz", "sync", timeout=120)
            assert done.returncode == 0, done.stderr
        waiting.join(timeout=60)
        return asked["serial"]

    serial = synced("frozen")
    assert {store.node_reports(unit)[h]["access_serial"] for h in hosts} == {serial}
    assert laptop.partitions(SITE_DIR) == {"compute": "drain"}
    assert "Read-only" in laptop.on("laptop-compute-1", "touch", "/home/during-the-freeze").stderr
    refused = laptop.on("laptop-login-0", "true", user="nobody")
    assert refused.returncode != 0 and "refuses logins" in refused.stderr

    synced("open")
    assert laptop.partitions(SITE_DIR) == {"compute": "up"}
    assert laptop.on("laptop-compute-1", "touch", "/home/after-the-freeze").returncode == 0
    assert laptop.on("laptop-login-0", "true", user="nobody").returncode == 0


def test_a_cloud_rollout_drains_through_the_channel_and_a_drain_that_runs_out_stops_it(laptop):
    """On a cloud, a rolling change asks the controller to drain the next batch through the
    channel (`config/drain`), and waits for its report before replacing anything. The
    controller of the local runtime runs that same `vcnode sync` for real here, with a job on
    the node: the first drain runs out (the job keeps running, nothing is replaced), the next
    one, after the job, drains it."""
    from reconciler.apply import channel_drain
    from reconciler.errors import ReconcileError
    from reconciler.gitsource import GitSource
    from reconciler.live import LiveStore
    from reconciler.run import desired

    unit = desired(GitSource(laptop.repo.path).working_tree()).units["cluster:laptop@local-slurm"]
    store = LiveStore(laptop.repo.path)
    job = laptop.on("laptop-login-0", "sbatch", "-w", "laptop-compute-2", "--wrap", "sleep 8", "--parsable")
    assert job.returncode == 0, job.stderr

    def job_state() -> str:
        return laptop.on("laptop-login-0", "squeue", "-h", "-j", job.stdout.strip(), "-o", "%T").stdout.strip()

    for _ in range(100):  # bounded: until it runs
        if job_state() == "RUNNING":
            break
        time.sleep(0.2)
    assert job_state() == "RUNNING"

    def drained(timeout_s: float):
        outcome = {}

        def ask():
            try:
                channel_drain(store, unit, ["laptop-compute-2"], timeout_s, poll_s=0.2)
                outcome["ok"] = True
            except ReconcileError as exc:
                outcome["error"] = str(exc)

        waiting = threading.Thread(target=ask)
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive(), "it waits for the controller's report"
        done = laptop.on("laptop-login-0", "python3", "/usr/libexec/vcluster/vcnode.pyz", "sync", timeout=120)
        assert done.returncode == 0, done.stderr
        waiting.join(timeout=60)
        return outcome

    try:
        outcome = drained(1)
        assert "laptop-compute-2's jobs to finish" in outcome.get("error", "") and "the rollout stopped" in outcome["error"], outcome
        assert laptop.sinfo().get("laptop-compute-2") in ("draining", "drng"), laptop.sinfo()  # drained, its job still runs
        for _ in range(100):  # bounded: until the job is done
            if not job_state():
                break
            time.sleep(0.2)
        assert drained(30) == {"ok": True}
        assert laptop.sinfo().get("laptop-compute-2") in ("drained", "drain"), laptop.sinfo()
        # the node that replaces it takes jobs again: its bootstrap resumes a node a rollout drained
        resumed = laptop.on("laptop-compute-2", "python3", "-c", "import sys; sys.path.insert(0, '/usr/libexec/vcluster/vcnode.pyz'); "
                            "from vcnode import bootstrap; bootstrap.resume_if_rolled('laptop-compute-2')")
        assert resumed.returncode == 0, resumed.stderr
        for _ in range(50):  # bounded: sinfo marks a node not responding (`*`) for a moment
            if laptop.sinfo().get("laptop-compute-2") == "idle":
                break
            time.sleep(0.2)
        assert laptop.sinfo().get("laptop-compute-2") == "idle", laptop.sinfo()
        assert store.channel_get(unit, "config/drain") is None, "acknowledged: no later controller runs it again"
    finally:
        laptop.on("laptop-login-0", "scontrol", "update", "nodename=laptop-compute-2", "state=resume")


def test_a_move_with_its_data_keeps_users_where_the_data_is_until_the_copy_is_verified(laptop, monkeypatch):
    from reconciler import datacopy

    token = f"written before the move at {time.time()}"
    assert laptop.on("laptop-login-0", "srun", "sh", "-c", f"echo '{token}' > /home/moved").returncode == 0
    site = laptop.repo.read("sites/local-slurm.yaml").replace("name: local-slurm\n", "name: local-slurm-b\n")
    laptop.repo.write("sites/local-slurm-b.yaml", site.replace("10.70.", "10.71.").replace(SITE_DIR, SITE_DIR_B))
    text = laptop.repo.read("clusters/laptop.yaml").replace("site: local-slurm\n", "site: local-slurm-b\n")
    laptop.repo.write("clusters/laptop.yaml", text.replace("storage:\n", "storage:\n  on_move: copy\n"))
    laptop.sites = ["local-slurm", "local-slurm-b"]
    laptop.repo.commit("laptop moves to local-slurm-b, with its data")  # the destroy test removes both sites
    code, out, err = laptop.cli("--dry-run", "--repo", str(laptop.repo.path), "--site", "local-slurm-b")
    assert ("steps: close the target on local-slurm-b to users (partitions down, nologin); bulk copy while live; "
            "drain the source (no new job; running ones finish within drain_timeout_s); freeze the source (read-only); "
            "final pass; verify checksums; open the target on local-slurm-b; then destroy here") in out, out + err

    seen = {}

    def during(source, target) -> None:  # after the final pass, before the verification
        seen["target"], seen["source"] = laptop.partitions(SITE_DIR_B), laptop.partitions(SITE_DIR)
        seen["user on the target"] = laptop.on("laptop-login-0", "true", user="nobody", at=SITE_DIR_B)
        seen["write on the source"] = laptop.on("laptop-compute-0", "touch", "/home/too-late")

    monkeypatch.setattr(datacopy, "before_verify", during)
    from reconciler import apply as apply_module

    set_access = apply_module._set_access

    def first_sight(store, unit, state, quiet=False):  # the target as it booted: closed already
        if state == "closed" and "booted" not in seen:
            seen["booted"] = laptop.partitions(SITE_DIR_B)
            seen["user at boot"] = laptop.on("laptop-login-0", "true", user="nobody", at=SITE_DIR_B)
        return set_access(store, unit, state, quiet)

    monkeypatch.setattr(apply_module, "_set_access", first_sight)
    code, out, err = laptop.apply()
    assert code == 0, out + err
    assert "cluster laptop on local-slurm: applied: copied shared to local-slurm-b" in out, out
    assert seen["booted"] == {"compute": "down"}, "the target booted closed, before its health check: " + str(seen)
    assert seen["user at boot"].returncode != 0 and "refuses logins" in seen["user at boot"].stderr
    assert seen["target"] == {"compute": "down"} and seen["source"] == {"compute": "drain"}, seen
    assert seen["user on the target"].returncode != 0 and "refuses logins" in seen["user on the target"].stderr
    assert seen["write on the source"].returncode != 0 and "Read-only" in seen["write on the source"].stderr
    # now open, with the data, and the source gone
    assert laptop.partitions(SITE_DIR_B) == {"compute": "up"}
    assert laptop.on("laptop-login-0", "true", user="nobody", at=SITE_DIR_B).returncode == 0
    done = laptop.on("laptop-login-0", "srun", "-w", "laptop-compute-1", "cat", "/home/moved", at=SITE_DIR_B)
    assert done.stdout.strip() == token, done.stderr
    assert not (laptop.site_dir / "runtime" / "nodes" / "laptop-login-0").exists()
    laptop.site_dir = laptop.repo.path / SITE_DIR_B


def test_a_move_through_the_login_nodes_carries_modes_links_and_data_and_verifies_them(laptop):
    """`storage.copy_via: nodes`: the data passes through the clusters' own login nodes and
    each site's staging area (a cloud file system always goes so), not through the runner's
    rsync. The legs are tasks in the clusters' channels that the nodes' `vcnode sync` runs."""
    victim = laptop.repo.path.parent / "outside-the-volume"
    victim.write_text("not the cluster's\n")
    victim.chmod(0o600)
    assert laptop.on("laptop-login-0", "sh", "-c", "mkdir -m 0700 /home/private && echo secret > /home/private/key && "
                     "chmod 0600 /home/private/key && ln -s private/key /home/link && chown 1234:1234 /home/private/key && "
                     f"mkdir /home/empty && mkfifo /home/pipe && ln -s {victim} /home/out", at=SITE_DIR_B).returncode == 0
    text = laptop.repo.read("clusters/laptop.yaml").replace("site: local-slurm-b\n", "site: local-slurm\n")
    laptop.repo.write("clusters/laptop.yaml", text.replace("  on_move: copy\n", "  on_move: copy\n  copy_via: nodes\n"))
    laptop.repo.commit("laptop moves back, its data through the login nodes")
    code, out, err = laptop.cli("--dry-run", "--json", "--repo", str(laptop.repo.path))
    source = next(u for u in json.loads(out)["units"] if u["key"] == "cluster:laptop@local-slurm-b")
    assert [(c["volume"], c["route"]) for c in source["copies"]] == [("shared", "staged")], source

    code, out, err = laptop.apply()
    assert code == 0, out + err
    assert "cluster laptop on local-slurm-b: applied: copied shared to local-slurm through the login nodes" in out, out
    laptop.site_dir = laptop.repo.path / SITE_DIR
    done = laptop.on("laptop-login-0", "sh", "-c", "stat -c '%a %n' /home/private /home/private/key; readlink /home/link; "
                     "cat /home/private/key /home/moved")
    lines = done.stdout.splitlines()
    assert lines[:3] == ["700 /home/private", "600 /home/private/key", "private/key"], done.stdout + done.stderr
    done = laptop.on("laptop-login-0", "sh", "-c", "stat -c '%u:%g' /home/private/key; test -d /home/empty && test -p /home/pipe && echo ok")
    assert done.stdout.split() == ["1234:1234", "ok"], done.stdout + done.stderr
    assert oct(victim.stat().st_mode & 0o777) == "0o600", "nothing outside the volume is touched through a link"
    assert lines[3] == "secret" and lines[4].startswith("written before the move"), done.stdout
    assert laptop.partitions(SITE_DIR) == {"compute": "up"}
    assert not (laptop.repo.path / SITE_DIR_B / "runtime" / "nodes" / "laptop-login-0").exists(), "the source is gone"
    assert not list((laptop.repo.path).glob(".reconcile/**/staging/laptop")), "the staging areas went with the move"


def test_destroy_leaves_no_namespace_process_mount_or_directory(laptop):
    for rel in ("clusters/laptop.yaml", "sites/local-slurm.yaml", "sites/local-slurm-b.yaml"):
        if (laptop.repo.path / rel).exists():
            (laptop.repo.path / rel).unlink()
    code, out, err = laptop.apply("--allow-destroy", "--allow-data-loss")
    assert code == 0, out + err
    deadline = time.monotonic() + 20
    while _ours(laptop.repo.path)[1] and time.monotonic() < deadline:
        time.sleep(0.2)
    namespaces, pids, mounts = _ours(laptop.repo.path)
    assert (namespaces, pids, mounts) == ([], [], [])
    for site_dir in {laptop.repo.path / SITE_DIR, laptop.site_dir}:
        left = sorted(p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*"))
        assert left == sorted(f for f in left if re.fullmatch(r"(cluster-laptop|landing-zone)\.tfstate(\.backup)?", f)), left
