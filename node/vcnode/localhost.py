"""The local platform's `slurm` runtime: this machine plays the site's hardware.

Terraform's provisioners call it (the `terraform_data` resources of a `runtime: slurm` site),
with the resource's input as JSON in VC_INPUT and RECONCILE_STATE_ROOT set by reconcile:

    site-up / site-down       one network namespace per site, holding a bridge
    subnet-up / subnet-down   a cluster subnet's gateway on that bridge
    node-up / node-down       one node: network, UTS and mount namespaces of its own, booted
                              with the cluster's first-boot data; down drains it first
    publish                   a config version into the cluster's channel, then sync the nodes
    sync                      what a cloud node's timer does: `vcnode sync` on one node
                              (VC_INPUT {"site_dir", "hostname"}): its config, access, task
    access                    open, close or drain a cluster (VC_INPUT {"site_dir", "cluster",
                              "state", "timeout_s"}): its partitions, and its nodes' nologin
    cluster-down              after the last node: the cluster's channel and secrets
    health                    JSON {address: why} of the nodes (VC_INPUT {"nodes": ...}) that
                              lost their namespaces or a daemon
    check                     exit 1, saying why, where this host cannot run the runtime
    enter SITE_DIR HOST CMD   run a command on a node (`nsenter`, not `ip netns exec`, which
                              remounts /sys and hides the cgroup mounts that slurmd needs); with
                              VC_USER set, as that user, refused while the node says nologin

Everything lives below the site's state directory (`runtime/`): the namespace files
(bind-mounted on a private mount), one directory per node holding what the node sees at its
own /etc/slurm, /etc/munge, /var/spool/slurmd and so on, and the hosts file that all the
site's nodes share as /etc/hosts (the site's private DNS zone). The host's own routes,
interfaces and mounts are never touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from vcnode import channel
from vcnode.platforms import DirectoryStore

NODE_PACKAGE = Path(__file__).resolve().parent.parent
# What each node sees as its own: a directory of the node's, bind-mounted over the host's path.
PRIVATE = (
    "/etc/vcluster", "/etc/slurm", "/etc/munge", "/etc/sssd", "/usr/libexec/vcluster", "/opt/spack",
    "/var/spool/slurmd", "/var/spool/slurmctld", "/var/log/slurm", "/var/log/munge", "/var/lib/munge",
    "/run/munge", "/var/lib/vcluster",
)
NEEDS = ("ip", "nsenter", "unshare", "mount", "munged", "slurmctld", "slurmd", "scontrol")
BOOT_TIMEOUT_S = 180


class RuntimeFault(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"local runtime: {message}", file=sys.stderr, flush=True)


def sh(*command: str, check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode:
        raise RuntimeFault(f"{' '.join(command)}: {(done.stderr or done.stdout).strip()[-400:]}")
    return done


def _h(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


def cannot_run() -> str:
    """Why this host cannot run the slurm runtime ("" when it can)."""
    if os.geteuid() != 0:
        return "the slurm runtime needs root (network and mount namespaces)"
    missing = [b for b in NEEDS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install iproute2 util-linux munge slurmctld slurmd slurm-client)"
    return ""


class Site:
    def __init__(self, state_root: str | Path, site_dir: str):
        if not site_dir or site_dir.startswith("/") or ".." in Path(site_dir).parts:
            raise RuntimeFault(f"not a site directory below the state root: {site_dir!r}")
        self.dir = (Path(state_root) / site_dir).resolve()
        self.runtime = self.dir / "runtime"
        self.netns = f"vcs-{_h(str(self.runtime))}"
        self.ns_dir = self.runtime / "ns"
        self.hosts = self.runtime / "hosts"

    def exists(self) -> bool:
        return Path("/run/netns", self.netns).exists()

    def node(self, hostname: str) -> "Node":
        return Node(self, hostname)

    def nodes(self) -> list["Node"]:
        root = self.runtime / "nodes"
        return [Node(self, p.name) for p in sorted(root.iterdir())] if root.is_dir() else []

    def store(self, cluster: str) -> DirectoryStore:
        return DirectoryStore(self.dir / "channel" / cluster)

    def secrets_dir(self, cluster: str) -> Path:
        return self.dir / "secrets" / cluster

    def volume(self, volume_id: str) -> Path:
        if not volume_id or "/" in volume_id or volume_id in (".", ".."):
            raise RuntimeFault(f"not a volume id: {volume_id!r}")
        return self.dir / "volumes" / volume_id

    @contextmanager
    def locked(self):
        self.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.runtime / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def set_host(self, hostname: str, address: str | None) -> None:
        """Add, replace or remove one name in the site's hosts file, in place: every node has
        this very file (its inode) bind-mounted as /etc/hosts."""
        with self.locked():
            lines = self.hosts.read_text().splitlines() if self.hosts.exists() else []
            kept = [line for line in lines if line.split()[1:2] != [hostname]]
            if address:
                kept.append(f"{address} {hostname}")
            with open(self.hosts, "a+") as out:
                out.seek(0)
                out.truncate()
                out.write("\n".join(kept) + "\n")


class Node:
    def __init__(self, site: Site, hostname: str):
        if not hostname.replace("-", "").isalnum():
            raise RuntimeFault(f"not a hostname: {hostname!r}")
        self.site, self.hostname = site, hostname
        self.dir = site.runtime / "nodes" / hostname
        self.netns = f"vcn-{_h(str(site.runtime), hostname)}"
        self.veth = f"vh{_h(str(site.runtime), hostname, n=10)}"
        self.uts, self.mnt = site.ns_dir / f"{hostname}.uts", site.ns_dir / f"{hostname}.mnt"

    def private(self, path: str) -> Path:
        return self.dir / "root" / path.strip("/").replace("/", "_")

    @property
    def binding(self) -> dict:
        path = self.private("/etc/vcluster") / "platform.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def exists(self) -> bool:
        return Path("/run/netns", self.netns).exists() and self.mnt.exists()

    def enter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", f"--uts={self.uts}", f"--mount={self.mnt}"]

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        # A node's own environment, not the runner's: its daemons must not inherit the tokens and
        # cloud credentials of whoever runs reconcile.
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "HOME": "/root", "PYTHONPATH": str(NODE_PACKAGE)}
        return sh(*self.enter(), *command, check=check, timeout=timeout, env=env)

    def pids(self) -> list[int]:
        if not Path("/run/netns", self.netns).exists():
            return []
        done = sh("ip", "netns", "pids", self.netns, check=False)
        return [int(p) for p in done.stdout.split()]

    def daemons(self) -> dict[str, bool]:
        """Which of the node's daemons run: munged, slurmd, slurmctld by their pid files."""
        found = {}
        for name, pidfile in (("munged", self.private("/run/munge") / "munged.pid"),
                              ("slurmd", self.private("/var/spool/slurmd") / "slurmd.pid"),
                              ("slurmctld", self.private("/var/spool/slurmctld") / "slurmctld.pid")):
            if pidfile.exists():
                found[name] = _alive(pidfile, self.pids())
        return found


def _alive(pidfile: Path, pids: list[int]) -> bool:
    try:
        return int(pidfile.read_text().split()[0]) in pids
    except (ValueError, IndexError, OSError):
        return False


# ---------------------------------------------------------------- site and subnet


def site_up(site: Site) -> None:
    why = cannot_run()
    if why:
        raise RuntimeFault(why)
    site.ns_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sh("mountpoint", "-q", str(site.ns_dir), check=False).returncode:
        # namespace files can only be bind-mounted on a private mount
        sh("mount", "--bind", str(site.ns_dir), str(site.ns_dir))
        sh("mount", "--make-private", str(site.ns_dir))
    if not site.hosts.exists():
        site.hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    if not site.exists():
        sh("ip", "netns", "add", site.netns)
        sh("ip", "-n", site.netns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", site.netns, "link", "set", "br0", "up")
        sh("ip", "-n", site.netns, "link", "set", "lo", "up")
        sh("nsenter", f"--net=/run/netns/{site.netns}", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    log(f"site namespace {site.netns} with bridge br0")


def site_down(site: Site) -> None:
    left = [n.hostname for n in site.nodes()]
    if left:
        raise RuntimeFault(f"nodes still run on this site ({', '.join(left)}): destroy their clusters first")
    if site.exists():
        sh("ip", "netns", "del", site.netns)
    if site.ns_dir.exists() and sh("mountpoint", "-q", str(site.ns_dir), check=False).returncode == 0:
        sh("umount", str(site.ns_dir))
    shutil.rmtree(site.runtime, ignore_errors=True)
    for emptied in ("channel", "secrets", "volumes"):  # what its clusters left empty
        try:
            (site.dir / emptied).rmdir()
        except OSError:
            pass
    log(f"site namespace {site.netns} removed")


def subnet_up(site: Site, gateway: str, prefix: int) -> None:
    if not site.exists():
        raise RuntimeFault("the site's namespace does not exist: apply its landing zone first")
    have = sh("ip", "-n", site.netns, "-o", "addr", "show", "dev", "br0").stdout
    if f" {gateway}/{prefix} " not in have:
        sh("ip", "-n", site.netns, "addr", "add", f"{gateway}/{prefix}", "dev", "br0")


def subnet_down(site: Site, gateway: str, prefix: int) -> None:
    if site.exists():
        sh("ip", "-n", site.netns, "addr", "del", f"{gateway}/{prefix}", "dev", "br0", check=False)


# ---------------------------------------------------------------- nodes


def node_up(site: Site, spec: dict, user_data: str) -> None:
    why = cannot_run()
    if why:
        raise RuntimeFault(why)
    if not site.exists():
        raise RuntimeFault("the site's namespace does not exist: apply its landing zone first")
    node = site.node(spec["hostname"])
    if node.exists() or node.dir.exists():
        log(f"{node.hostname}: left over from an earlier run, removed first")
        _teardown(node)
    # network: a veth pair from the node to the site's bridge
    sh("ip", "netns", "add", node.netns)
    sh("ip", "-n", node.netns, "link", "set", "lo", "up")
    sh("ip", "-n", site.netns, "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
    sh("ip", "-n", site.netns, "link", "set", node.veth, "master", "br0", "up")
    sh("ip", "-n", node.netns, "addr", "add", f"{spec['address']}/{spec['prefix']}", "dev", "eth0")
    sh("ip", "-n", node.netns, "link", "set", "eth0", "up")
    sh("ip", "-n", node.netns, "route", "add", "default", "via", spec["gateway"])
    # what the node sees as its own files
    for path in PRIVATE:
        node.private(path).mkdir(parents=True, exist_ok=True)
        Path(path).mkdir(parents=True, exist_ok=True)  # an empty mount point on the host
    binds = [f"mount --bind {node.private(p)} {p}" for p in PRIVATE]
    script = " && ".join([
        f"hostname {spec['hostname']}",
        # the copies of other namespaces' files would keep those namespaces alive
        f"umount -l {site.ns_dir}", "{ umount -l /run/netns 2>/dev/null || true; }",
        f"mount --bind {site.hosts} /etc/hosts", *binds,
    ])
    node.uts.touch()
    node.mnt.touch()
    sh("unshare", f"--uts={node.uts}", f"--mount={node.mnt}", "--propagation", "private", "sh", "-c", script)
    site.set_host(node.hostname, spec["address"])
    secrets = site.secrets_dir(spec["cluster"])
    secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(secrets, 0o700)
    binding = {
        "platform": "local", "cluster": spec["cluster"], "hostname": node.hostname, "pool": spec["pool"],
        "store": str(site.store(spec["cluster"]).root), "secrets": str(secrets),
        "mounts": {mount: str(site.volume(volume_id)) for mount, volume_id in spec.get("mounts", {}).items()},
    }
    (node.private("/etc/vcluster") / "platform.json").write_text(json.dumps(binding, indent=2) + "\n")
    user_data_file = node.dir / "user-data"
    user_data_file.write_text(user_data)
    log(f"{node.hostname}: booting at {spec['address']}")
    done = node.run(sys.executable, "-m", "vcnode.cloudinit", str(user_data_file), str(BOOT_TIMEOUT_S),
                    check=False, timeout=BOOT_TIMEOUT_S + 30)
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise RuntimeFault(f"{node.hostname}: first boot failed (exit {done.returncode})")


def node_down(site: Site, spec: dict) -> None:
    node = site.node(spec["hostname"])
    if not node.dir.exists() and not node.exists():
        log(f"{node.hostname}: already gone")
        return
    controller = site.node(spec["controller"]) if spec.get("controller") else None
    takes_jobs = spec.get("role") == "compute" and controller is not None and controller.hostname != node.hostname
    wait = float(os.environ.get("VC_DRAIN_TIMEOUT_S") or spec.get("drain_timeout_s") or 600)
    if takes_jobs and controller.exists() and controller.daemons().get("slurmctld") and node.daemons().get("slurmd"):
        done = controller.run("python3", "/usr/libexec/vcluster/vcnode.pyz", "drain", node.hostname,
                              "--timeout", str(wait), check=False, timeout=wait + 60)
        sys.stderr.write(done.stderr)
        if done.returncode:
            raise RuntimeFault(f"{node.hostname}: not drained, so not removed; nothing was killed")
    _teardown(node)
    if takes_jobs and controller.exists():
        controller.run("python3", "/usr/libexec/vcluster/vcnode.pyz", "forget", node.hostname, check=False)
    log(f"{node.hostname}: removed")


def _teardown(node: Node) -> None:
    """Stop every process of the node by process id, then remove its namespaces and files."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = node.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while node.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
    if node.pids():
        raise RuntimeFault(f"{node.hostname}: processes {node.pids()} outlived SIGKILL")
    binding = node.binding
    if binding.get("cluster"):
        channel.forget(node.site.store(binding["cluster"]), node.hostname)
    node.site.set_host(node.hostname, None)
    if Path("/run/netns", node.netns).exists():
        sh("ip", "netns", "del", node.netns)  # its veth pair goes with it
    for ns_file in (node.uts, node.mnt):
        if ns_file.exists():
            sh("umount", str(ns_file), check=False)
            ns_file.unlink()
    shutil.rmtree(node.dir, ignore_errors=True)


def cluster_down(site: Site, cluster: str) -> None:
    """The cluster's config channel and secrets (its munge key) go with its last node."""
    left = [n.hostname for n in site.nodes() if n.binding.get("cluster") == cluster]
    if left:
        raise RuntimeFault(f"{cluster}: nodes still run ({', '.join(left)})")
    for directory in (site.dir / "channel" / cluster, site.secrets_dir(cluster)):
        shutil.rmtree(directory, ignore_errors=True)
    log(f"{cluster}: config channel and secrets removed")


def health(root: str, nodes: dict[str, dict]) -> dict[str, str]:
    """{address: why} of the nodes that lost their namespaces or a daemon their role runs."""
    if os.geteuid() != 0:
        raise RuntimeFault("only root can see the nodes' processes")
    broken = {}
    for address, spec in nodes.items():
        node = Site(root, spec["site_dir"]).node(spec["hostname"])
        if not node.exists():
            broken[address] = f"{node.hostname}: its namespaces are gone"
            continue
        wanted = ["munged"]
        if spec.get("controller") == node.hostname:
            wanted.append("slurmctld")
        if spec.get("role") == "compute":
            wanted.append("slurmd")
        running = node.daemons()
        down = [d for d in wanted if not running.get(d)]
        if down:
            broken[address] = f"{node.hostname}: {' and '.join(down)} not running"
    return broken


# ---------------------------------------------------------------- access


def nologin(node: Node) -> Path:
    """What /etc/nologin is to pam_nologin: while it exists, users are refused and root is not."""
    return node.private("/etc/vcluster") / "nologin"


def cluster_access(site: Site, cluster: str, state: str, timeout: float) -> None:
    nodes = [n for n in site.nodes() if n.binding.get("cluster") == cluster and n.exists()]
    controller = next((n for n in nodes if n.daemons().get("slurmctld")), None)
    if controller is None:
        raise RuntimeFault(f"{cluster}: no controller runs, so its partitions cannot be set {state}")
    if state != "open":  # users first: no new login while the partitions close
        for node in nodes:
            nologin(node).write_text(f"{cluster} is {state} while its data moves (reconcile: storage.on_move: copy)\n")
    done = controller.run("python3", "/usr/libexec/vcluster/vcnode.pyz", "access", state, "--timeout", str(timeout),
                          check=False, timeout=timeout + 60)
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise RuntimeFault(f"{cluster}: not {state}")
    # drained: every node's view of the shared volumes read-only too (the host's freeze does
    # not reach into the nodes' own mount namespaces); open: writable again
    if state in ("drained", "open"):
        for node in nodes:
            for mount in node.binding.get("mounts", {}):
                if state == "drained":
                    _remount_read_only(node, mount)
                else:
                    node.run("mount", "-o", "remount,bind,rw", mount, check=False)
    if state == "open":
        for node in nodes:
            nologin(node).unlink(missing_ok=True)
    log(f"{cluster}: {state}")


def _remount_read_only(node: Node, mount: str, attempts: int = 50, pause: float = 0.2) -> None:
    """Make one shared volume read-only in a node's view, once its last writer has closed.

    The kernel refuses (EBUSY) while any file on the mount is open for writing: a job that
    Slurm counts as ended may still have its step daemon flushing the output file. So the
    remount is retried for a bounded ten seconds, and a writer that stays fails the drain.
    """
    for attempt in range(attempts):
        done = node.run("mount", "-o", "remount,bind,ro", mount, check=False)
        if done.returncode == 0:
            return
        if attempt + 1 < attempts:
            time.sleep(pause)
    raise RuntimeFault(f"{node.hostname}: {mount} stays open for writing, so it cannot be made read-only: "
                       f"{done.stderr.strip()}")


# ---------------------------------------------------------------- config


def publish(site: Site, cluster: str, version: str, files: dict) -> None:
    channel.publish(site.store(cluster), version, files)
    log(f"{cluster}: config {version} published")
    nodes = [n for n in site.nodes() if n.binding.get("cluster") == cluster and n.exists()]
    controller_first = sorted(nodes, key=lambda n: not n.daemons().get("slurmctld"))
    for node in controller_first:
        done = node.run("python3", "/usr/libexec/vcluster/vcnode.pyz", "sync", check=False, timeout=120)
        sys.stderr.write(done.stderr)
        if done.returncode:
            raise RuntimeFault(f"{node.hostname}: config {version} not applied")


def sync_node(site: Site, hostname: str) -> None:
    node = site.node(hostname)
    if not node.exists():
        raise RuntimeFault(f"{hostname} does not run")
    done = node.run("python3", "/usr/libexec/vcluster/vcnode.pyz", "sync", check=False, timeout=24 * 3600)
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise RuntimeFault(f"{hostname}: sync failed")


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    os.umask(0o022)  # a node's own umask, whatever reconcile runs with (it keeps state 0600)
    root = os.environ.get("RECONCILE_STATE_ROOT", "")
    try:
        if command == "check":
            why = cannot_run()
            if why:
                raise RuntimeFault(why)
            return 0
        if command == "enter":
            site_dir, hostname, *cmd = rest
            node = Site(root or ".", site_dir).node(hostname)
            if not node.exists():
                raise RuntimeFault(f"{hostname} does not run")
            user = os.environ.get("VC_USER", "")
            if user:
                if nologin(node).exists():
                    raise RuntimeFault(f"{hostname} refuses logins: {nologin(node).read_text().strip()}")
                cmd = ["runuser", "-u", user, "--", *(cmd or ["bash", "-l"])]
            os.execvpe(node.enter()[0], [*node.enter(), *(cmd or ["bash"])], dict(os.environ))
        if not root:
            raise RuntimeFault("RECONCILE_STATE_ROOT is not set: run this stack through reconcile")
        spec = json.loads(os.environ.get("VC_INPUT", "{}"))
        if command == "health":
            print(json.dumps(health(root, spec["nodes"])))
            return 0
        site = Site(root, spec["site_dir"])
        if command == "site-up":
            site_up(site)
        elif command == "site-down":
            site_down(site)
        elif command == "subnet-up":
            subnet_up(site, spec["gateway"], int(spec["prefix"]))
        elif command == "subnet-down":
            subnet_down(site, spec["gateway"], int(spec["prefix"]))
        elif command == "node-up":
            node_up(site, spec, os.environ["VC_USER_DATA"])
        elif command == "node-down":
            node_down(site, spec)
        elif command == "cluster-down":
            cluster_down(site, spec["cluster"])
        elif command == "access":
            cluster_access(site, spec["cluster"], spec["state"], float(spec.get("timeout_s") or 600))
        elif command == "publish":
            publish(site, spec["cluster"], spec["version"], spec["files"])
        elif command == "sync":
            sync_node(site, spec["hostname"])
        else:
            raise RuntimeFault(f"unknown command {command!r}")
    except (RuntimeFault, KeyError, OSError, subprocess.TimeoutExpired) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
