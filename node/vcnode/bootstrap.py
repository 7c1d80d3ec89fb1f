"""A node's first boot and its day-to-day config, by role, on every platform.

    vcnode bootstrap /etc/vcluster/cluster.json   cloud-init's runcmd, once per node
    vcnode sync                                   apply the channel's current config version (on
                                                  cloud nodes a systemd timer runs it every minute)
    vcnode drain HOSTNAME --timeout S             on the controller: drain a node, wait for its jobs
    vcnode forget HOSTNAME                        on the controller: delete a stopped dynamic node
    vcnode access open|closed|drained --timeout S on the controller: every partition UP, DOWN (no
                                                  job starts), or DRAIN and wait for running jobs

Nothing here prints a secret: the munge key goes from the secret store to a 0600 file.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from vcnode import channel, platforms

FACTS = Path("/etc/vcluster/cluster.json")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
# What provides each command, by package manager: Debian and Ubuntu (apt), and Rocky and
# Amazon Linux (dnf: Slurm from EPEL, the Lustre client from Amazon Linux's own repository).
PACKAGES = {
    "munged": {"apt": "munge", "dnf": "munge"},
    "slurmctld": {"apt": "slurmctld", "dnf": "slurm-slurmctld"},
    "slurmd": {"apt": "slurmd", "dnf": "slurm-slurmd"},
    "scontrol": {"apt": "slurm-client", "dnf": "slurm"},
    "mount.nfs": {"apt": "nfs-common", "dnf": "nfs-utils"},
    "mount.lustre": {"apt": "lustre-client-utils", "dnf": "lustre-client"},
    "rclone": {"apt": "rclone", "dnf": "rclone"},  # a staged copy's legs (dnf: EPEL)
    "sssd": {"apt": "sssd", "dnf": "sssd"},  # once the landing zone's directory answers
}
MOUNT_HELPERS = {"nfs": "mount.nfs", "nfs4": "mount.nfs", "lustre": "mount.lustre"}
MOUNT_OPTIONS = {"nfs": "hard,timeo=600,retrans=3", "nfs4": "hard,timeo=600,retrans=3", "lustre": "relatime,flock"}
WAIT_S = 60


class BootError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"vcnode: {message}", file=sys.stderr, flush=True)


def run(*command: str, check: bool = True, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode:
        raise BootError(f"{' '.join(command)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}")
    return done


def until(what: str, probe, timeout: float = WAIT_S, interval: float = 0.2):
    """Poll `probe` until it returns something true, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BootError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def daemon(*command: str) -> None:
    """Start a daemon in a session of its own with no inherited descriptors, so that it
    outlives whoever started it and never holds their output open."""
    subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True, close_fds=True, check=True, timeout=60)


# ---------------------------------------------------------------- steps


def package_manager() -> str:
    return "apt" if shutil.which("apt-get") else "dnf" if shutil.which("dnf") else ""


def missing_packages(wanted: list[str], manager: str) -> list[str]:
    """The packages that provide the commands of `wanted` this image lacks."""
    absent = [b for b in wanted if shutil.which(b) is None and not any(Path(d, b).exists() for d in ("/usr/sbin", "/sbin"))]
    return sorted({PACKAGES[b][manager or "apt"] for b in absent})


SITE_REPOSITORY = "vcluster-site"


def repository_files(manager: str, source: dict, etc: Path = Path("/etc")) -> dict[Path, str]:
    """The files that make the site's package registry a repository of `manager`, preferred
    to the image's own ones (dnf: priority 1; apt: pinned at 990). `source`: the platform's
    `package_source`: url, suite, components, and credentials where the registry asks for them.
    Packages are not signature-checked: the registry is the site's own, reached over TLS with
    the node's identity (or synced with it), and what the site builds it does not sign."""
    if manager == "dnf":
        lines = [f"[{SITE_REPOSITORY}]", "name=the site's package registry", f"baseurl={source['url']}", "enabled=1",
                 "priority=1", "gpgcheck=0", "repo_gpgcheck=0"]
        if source.get("login"):
            lines += [f"username={source['login']}", f"password={source['password']}"]
        return {etc / "yum.repos.d" / f"{SITE_REPOSITORY}.repo": "\n".join(lines) + "\n"}
    line = f"deb [trusted=yes] {source['url']} {source['suite']} {source.get('components', '')}".rstrip()
    files = {
        etc / "apt" / "sources.list.d" / f"{SITE_REPOSITORY}.list": line + "\n",
        etc / "apt" / "preferences.d" / f"{SITE_REPOSITORY}.pref":
            f"Package: *\nPin: origin \"{urllib.parse.urlsplit(source['url']).hostname or ''}\"\nPin-Priority: 990\n",
    }
    if source.get("login"):
        url = urllib.parse.urlsplit(source["url"])
        # apt(auth.conf): an entry without a scheme matches https only
        machine = f"{'' if url.scheme == 'https' else url.scheme + '://'}{url.netloc}{url.path}"
        files[etc / "apt" / "auth.conf.d" / f"{SITE_REPOSITORY}.conf"] = (
            f"machine {machine}\nlogin {source['login']}\npassword {source['password']}\n"
        )
    return files


def ensure_packages(wanted: list[str], node=None) -> None:
    """Install what the image lacks: from the site's package registry where the site has one
    (the image's repositories stay behind it), else from the image's repositories. The
    registry's files, which may hold a short-lived token, go once the install is done."""
    manager = package_manager()
    missing = missing_packages(wanted, manager)
    if not missing:
        return
    if manager not in ("apt", "dnf"):
        raise BootError(f"{', '.join(missing)} missing and no apt-get or dnf to install them")
    source = node.package_source(manager) if node is not None else None
    written = repository_files(manager, source) if source else {}
    log(f"installing {', '.join(missing)}" + (" from the site's package registry first" if written else ""))
    try:
        for path, text in written.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold a token
            with os.fdopen(fd, "w") as out:
                out.write(text)
        if manager == "apt":
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            if written:
                run("apt-get", "update", "-q", timeout=900, env=env)
            run("apt-get", "install", "-y", "-q", *missing, timeout=900, env=env)
        else:
            run("dnf", "install", "-y", *missing, timeout=900)
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def set_hostname(hostname: str) -> None:
    if socket.gethostname() != hostname:
        run("hostname", hostname)
        Path("/etc/hostname").write_text(hostname + "\n")


def install_munge_key(node, controller: bool) -> None:
    """The controller's first boot makes the cluster's key and puts it in the secret store;
    every other node waits for it there. It never passes through Terraform or a log."""
    if controller and node.secret("munge-key") is None:
        node.create_secret("munge-key", os.urandom(1024))  # a racing controller may win: read below
    key = until("the cluster's munge key in the secret store", lambda: node.secret("munge-key"))
    munge = pwd.getpwnam("munge")
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(MUNGE_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.chmod(MUNGE_KEY, 0o600)
    os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
    os.chown(MUNGE_KEY.parent, munge.pw_uid, munge.pw_gid)
    os.chmod(MUNGE_KEY.parent, 0o700)


def mount_storage(node) -> None:
    for source, target, how in node.mounts():
        Path(target).mkdir(parents=True, exist_ok=True)
        if run("mountpoint", "-q", target, check=False).returncode == 0:
            continue
        if how == "bind":
            run("mount", "--bind", source, target)
            os.chmod(target, 0o755)  # the root of a shared filesystem, as on a file server
        else:
            run("mount", "-t", how, "-o", MOUNT_OPTIONS[how], source, target, timeout=120)
        log(f"mounted {target}")


def apply_config(node, takes_slurm_files: bool) -> tuple[str, bool]:
    """Write the channel's current config; (version, whether a slurm file changed)."""
    version, files = channel.current(node.store)
    if not version:
        raise BootError("the config channel has no version yet")
    slurm_changed = False
    for path, spec in sorted(files.items()):
        if spec.get("on") == "slurm-clients" and not takes_slurm_files:
            continue
        target = Path(path)
        content = spec["content"].encode()
        if target.exists() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.new")
        tmp.write_bytes(content)
        os.chmod(tmp, int(spec.get("mode", "0644"), 8))
        os.replace(tmp, target)
        slurm_changed |= path.startswith("/etc/slurm/")
    Path("/var/lib/vcluster").mkdir(parents=True, exist_ok=True)
    Path("/var/lib/vcluster/config-version").write_text(version + "\n")
    return version, slurm_changed


def slurm_setting(name: str, default: str) -> str:
    if SLURM_CONF.exists():
        for line in SLURM_CONF.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip().lower() == name.lower():
                return value.split("#")[0].strip()
    return default


def start_munge(node) -> None:
    munge = pwd.getpwnam("munge")
    for directory, mode in (("/run/munge", 0o755), ("/var/lib/munge", 0o711), ("/var/log/munge", 0o700)):
        Path(directory).mkdir(parents=True, exist_ok=True)
        os.chown(directory, munge.pw_uid, munge.pw_gid)
        os.chmod(directory, mode)
    if node.init == "systemd":
        run("systemctl", "enable", "munge")
        run("systemctl", "restart", "munge")
    else:
        daemon("runuser", "-u", "munge", "--", "/usr/sbin/munged")
    until("munged's socket", MUNGE_SOCKET.exists)


def start_slurmctld(node) -> None:
    slurm = pwd.getpwnam(slurm_setting("SlurmUser", "slurm"))
    for directory in (slurm_setting("StateSaveLocation", "/var/spool/slurmctld"), "/var/spool/slurmctld", "/var/log/slurm"):
        path = Path(directory)
        for parent in reversed(path.parents):  # traversable by slurm, whatever the umask
            if not parent.exists():
                parent.mkdir(mode=0o755)
                os.chmod(parent, 0o755)
        path.mkdir(exist_ok=True, mode=0o700)
        os.chown(path, slurm.pw_uid, slurm.pw_gid)
    if node.init == "systemd":
        run("systemctl", "enable", "slurmctld")
        run("systemctl", "restart", "slurmctld")
    else:
        daemon("/usr/sbin/slurmctld")
    until("slurmctld to answer", lambda: "is UP" in run("scontrol", "ping", check=False).stdout)


def slurmd_options(facts: dict, pool: str) -> list[str]:
    """A dynamic node (`slurmd -Z`): the controller learns it when it registers, so adding a
    node changes nothing on any other node."""
    shape = facts["pools"][pool]
    conf = f"CPUs={shape['cores']} RealMemory={shape['real_memory_mb']} Feature={pool}"
    if shape.get("gpu"):
        conf += f" Gres=gpu:{shape['gpu']['type']}:{shape['gpu']['count']}"
    return ["-Z", "--conf-server", facts["controller"], "--conf", conf]


def start_slurmd(node, facts: dict) -> None:
    options = slurmd_options(facts, node.pool)
    Path("/var/spool/slurmd").mkdir(parents=True, exist_ok=True)
    Path("/var/log/slurm").mkdir(parents=True, exist_ok=True)
    if node.init == "systemd":
        quoted = " ".join(f"'{o}'" for o in options)
        Path("/etc/default/slurmd").write_text(f"SLURMD_OPTIONS={json.dumps(quoted)}\n")
        run("systemctl", "enable", "slurmd")
        run("systemctl", "restart", "slurmd")
    else:
        daemon("/usr/sbin/slurmd", *options)
    until(f"{node.hostname} to register with {facts['controller']}", lambda: node_state(node.hostname, local=True))


def node_state(hostname: str, local: bool = False) -> str:
    """The node's Slurm state as slurmctld sees it ("" when unknown). On a configless node the
    commands read the config that slurmd fetched."""
    env = _configless_env() if local else None
    if env and not Path(env["SLURM_CONF"]).exists():
        return ""
    done = run("scontrol", "show", "node", hostname, "-o", check=False, env=env)
    for field in done.stdout.split():
        if field.startswith("State="):
            state = field.removeprefix("State=")
            return "" if state.startswith("DOWN") or "NOT_RESPONDING" in state else state
    return ""


def _configless_env() -> dict | None:
    """The environment for Slurm's commands on a configless node: the config slurmd fetched."""
    return None if SLURM_CONF.exists() else dict(os.environ, SLURM_CONF="/var/spool/slurmd/conf-cache/slurm.conf")


def directory_service(facts: dict, node=None) -> str:
    """SSSD runs only where the landing zone's directory answers, installed then if the image
    lacks it (from the site's registry first); otherwise it stays off, and the report says why."""
    address = facts["endpoints"]["ldap"].split("//", 1)[-1].split("/", 1)[0]
    host, _, port = address.partition(":")
    try:
        socket.create_connection((host, int(port or 636)), timeout=2).close()
    except OSError:
        return f"off: {host} does not answer"
    try:
        ensure_packages(["sssd"], node)
    except (BootError, OSError, subprocess.TimeoutExpired) as exc:
        return f"off: sssd could not be installed ({str(exc)[-200:]})"
    if shutil.which("sssd") or Path("/usr/sbin/sssd").exists():
        daemon("sssd", "-D")
        return "on"
    return "off: sssd is not installed"


# ---------------------------------------------------------------- commands


def bootstrap(facts_path: Path) -> None:
    facts = json.loads(Path(facts_path).read_text())
    node = platforms.detect()
    role = facts["pools"][node.pool]["role"]
    controller = node.hostname == facts["controller"]
    scheduled = facts.get("scheduler") is not None
    log(f"{node.hostname}: {role}{' and controller' if controller else ''} on {node.name}")
    wanted = ["munged", "scontrol"] + (["slurmctld", "rclone"] if controller else []) + (["slurmd"] if role == "compute" else [])
    wanted = (wanted if scheduled else []) + sorted({MOUNT_HELPERS[how] for _, _, how in node.mounts() if how in MOUNT_HELPERS})
    ensure_packages(wanted, node)
    set_hostname(node.hostname)
    node.protect_identity()
    mount_storage(node)
    wanted = channel.wanted_access(node.store)
    if wanted["state"] != "open":  # users are refused before any daemon starts: a move's target boots closed
        take_access(node, False, False, wanted, 0)
    version, _ = apply_config(node, takes_slurm_files=role != "compute")
    sssd = directory_service(facts, node)
    daemons = []
    if scheduled:
        install_munge_key(node, controller)
        start_munge(node)
        daemons.append("munged")
        if controller:
            start_slurmctld(node)
            daemons.append("slurmctld")
        if role == "compute":
            start_slurmd(node, facts)
            daemons.append("slurmd")
            resume_if_rolled(node.hostname)
    if wanted["state"] != "open" and controller and scheduled:
        access(wanted["state"], facts.get("drain_timeout_s", 600))
    # `booted`: this boot's own mark, which a rolling change waits to see change on a replaced
    # node; `drain_serial`: a drain asked before this boot is not this node's to run. Written
    # before the sync timer starts, so that no sync writes back an earlier boot's report.
    channel.report(node.store, node.hostname, pool=node.pool, role=role, controller=controller,
                   config_version=version, ready=True, daemons=daemons, sssd=sssd,
                   access=wanted["state"], access_serial=wanted["serial"], booted=os.urandom(8).hex(),
                   drain_serial=channel.wanted_drain(node.store)["serial"])
    if node.init == "systemd":
        install_sync_timer()
    log(f"{node.hostname}: ready, config {version}, sssd {sssd}")


ROLLED = "reconcile: replaced by a rolling change"  # the drain reason of a node a rollout replaces


def resume_if_rolled(hostname: str) -> None:
    """A node that replaces one a rollout drained takes jobs again: the controller keeps the
    drain of its name, and ReturnToService brings back DOWN nodes only. Run once slurmd has
    registered (start_slurmd waits for it); on a configless node with the config it fetched."""
    env = _configless_env()
    shown = run("scontrol", "show", "node", hostname, "-o", check=False, env=env).stdout
    state = next((f.removeprefix("State=") for f in shown.split() if f.startswith("State=")), "")
    if ROLLED in shown and "DRAIN" in state:
        run("scontrol", "update", f"nodename={hostname}", "state=resume", check=False, env=env)
        log(f"{hostname}: resumed after its replacement")


SYNC_EVERY_S = 60  # how soon a running cloud node takes a new config version from the channel
SYSTEMD_UNITS = Path("/etc/systemd/system")


def sync_units(every_s: int = SYNC_EVERY_S) -> dict[str, str]:
    """A systemd timer that runs `vcnode sync` on a node: the way a config published to the
    channel reaches running cloud nodes (the local runtime syncs its nodes when it publishes)."""
    return {
        "vcluster-sync.service": (
            "[Unit]\nDescription=Apply the cluster's current config version from its channel\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\nType=oneshot\nExecStart=/usr/bin/python3 /usr/libexec/vcluster/vcnode.pyz sync\n"
            "TimeoutStartSec=1d\n"  # a staged copy's leg, or a drain, may take long
        ),
        "vcluster-sync.timer": (
            "[Unit]\nDescription=Keep the node on its cluster's current config version\n\n"
            f"[Timer]\nOnBootSec={every_s}s\nOnUnitActiveSec={every_s}s\nRandomizedDelaySec={max(every_s // 4, 1)}s\n\n"
            "[Install]\nWantedBy=timers.target\n"
        ),
    }


def install_sync_timer(units_dir: Path = SYSTEMD_UNITS) -> None:
    units_dir.mkdir(parents=True, exist_ok=True)
    for name, text in sync_units().items():
        (units_dir / name).write_text(text)
    run("systemctl", "daemon-reload")
    run("systemctl", "enable", "--now", "vcluster-sync.timer")
    log("config sync timer enabled")


def sync() -> None:
    facts = json.loads(FACTS.read_text())
    node = platforms.detect()
    role = facts["pools"][node.pool]["role"]
    controller = node.hostname == facts["controller"]
    version, slurm_changed = apply_config(node, takes_slurm_files=role != "compute")
    if controller and slurm_changed:
        run("scontrol", "reconfigure")  # configless slurmd nodes fetch the new files from here
        log(f"{node.hostname}: slurmctld reconfigured to config {version}")
    previous = json.loads(node.store.read(f"nodes/{node.hostname}.json") or b"{}")
    kept = {k: v for k, v in previous.items() if k not in ("hostname", "reported_at")}
    wanted = channel.wanted_access(node.store)
    if wanted["serial"] and wanted["serial"] != previous.get("access_serial"):
        take_access(node, controller, facts.get("scheduler") is not None, wanted, facts.get("drain_timeout_s", 600))
        kept.update(access=wanted["state"], access_serial=wanted["serial"])
    if controller and facts.get("scheduler") is not None:
        drain_asked(node, previous, kept)
    channel.report(node.store, node.hostname, **{**kept, "config_version": version})
    run_task(node)


def drain_asked(node, previous: dict, kept: dict) -> None:
    """On the controller: drain the nodes a rolling change replaces next (the channel's
    `drain`), once per request, and say in the report when they are drained, or why not. A
    drain that runs out kills nothing: the nodes stay drained and the rollout stops."""
    wanted = channel.wanted_drain(node.store)
    if not wanted["serial"] or wanted["serial"] == previous.get("drain_serial"):
        return
    error = ""
    try:
        drain(wanted["hosts"], wanted["timeout_s"], ROLLED)
    except BootError as exc:
        error = str(exc)
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = f"draining {', '.join(wanted['hosts'])} failed: {exc}"
    kept.update(drain_serial=wanted["serial"], drain_error=error)
    log(f"{node.hostname}: drained {', '.join(wanted['hosts'])}" if not error else f"{node.hostname}: {error}")


def drain(hostnames: list[str], timeout: float, reason: str) -> None:
    """Drain the nodes all at once, then wait under one deadline until their jobs are done. On
    timeout they stay drained and nothing is killed: the caller stops and reports."""
    hosts = [h for h in hostnames if node_state(h)]
    for hostname in sorted(set(hostnames) - set(hosts)):
        log(f"{hostname}: not registered or down, nothing to drain")
    for hostname in hosts:
        run("scontrol", "update", f"nodename={hostname}", "state=drain", f"reason={reason}")
    if not hosts:
        return
    log(f"{', '.join(hosts)}: draining (at most {timeout:.0f} s)")
    try:
        until(f"{', '.join(hosts)}'s jobs to finish", lambda: all(_drained(h) for h in hosts), timeout=timeout, interval=0.5)
    except BootError as exc:
        one = len(hosts) == 1
        raise BootError(f"{exc}; the {'node stays' if one else 'nodes stay'} drained and {'its' if one else 'their'} "
                        "jobs keep running") from None


def _drained(hostname: str) -> bool:
    state = node_state(hostname)
    return not state or ("DRAIN" in state and "ALLOCATED" not in state and "MIXED" not in state
                         and "COMPLETING" not in state and "DRAINING" not in state)


PARTITION_STATES = {"open": "UP", "closed": "DOWN", "drained": "DRAIN", "frozen": "DRAIN"}


def partitions() -> list[str]:
    done = run("scontrol", "show", "partition", "-o")
    return [f.removeprefix("PartitionName=") for line in done.stdout.splitlines() for f in line.split() if f.startswith("PartitionName=")]


def access(state: str, timeout: float) -> None:
    """Open or close the cluster to its users' jobs: a move's target stays closed until its data
    is copied and verified, and its source is drained before it is frozen (no job writes to a
    volume that is being copied for the last time). On a drain timeout nothing is killed."""
    names = partitions()
    for name in names:
        run("scontrol", "update", f"partitionname={name}", f"state={PARTITION_STATES[state]}")
    log(f"partitions {', '.join(names) or '(none)'}: {PARTITION_STATES[state]}")
    if state in ("drained", "frozen"):
        until("running jobs to finish", lambda: not run("squeue", "-h", "-t", "R,CG,S", "-o", "%i").stdout.strip(),
              timeout=timeout, interval=0.5)


def take_access(node, controller: bool, scheduled: bool, wanted: dict, timeout: float) -> None:
    """What the channel's `access` asks of this node (a move's cutover, `channel.ACCESS`):
    closed, drained or frozen, users are refused (nologin; root still gets in); the controller
    sets the partitions; frozen, the cluster's volumes are remounted read-only; open undoes it
    all. Taken at first boot (a move's target boots closed) and at every sync."""
    state = wanted["state"]
    if state != "open":
        node.nologin.parent.mkdir(parents=True, exist_ok=True)
        node.nologin.write_text(f"this cluster is {state} while its data moves (reconcile: storage.on_move: copy)\n")
    if controller and scheduled:
        access(state, timeout)
    for _, mount, how in node.mounts() if state in ("frozen", "open") else ():
        options = "remount,bind" if how == "bind" else "remount"
        run("mount", "-o", f"{options},{'ro' if state == 'frozen' else 'rw'}", mount, check=state == "frozen")
    if state == "open":
        node.nologin.unlink(missing_ok=True)
    log(f"{node.hostname}: access {state}")


INTERNAL = ".vcluster"  # the cluster's own state on its shared volume: never copied, nor compared
STAGE_LIMIT_S = 24 * 3600


def manifest(root: Path) -> dict[str, str]:
    """{relative path: "file MODE SHA256" | "link TARGET" | "dir MODE"} below `root`, without
    the cluster's own state: what both ends of a staged copy report, and the reconciler compares."""
    import hashlib

    import stat

    out = {}
    for path, dirs, names in os.walk(root):
        here = Path(path)
        if here == root and INTERNAL in dirs:
            dirs.remove(INTERNAL)
        for name in sorted(dirs) + sorted(names):
            item = here / name
            rel = item.relative_to(root).as_posix()
            info = item.lstat()
            owner = f"{info.st_uid}:{info.st_gid}"
            if stat.S_ISLNK(info.st_mode):
                out[rel] = f"link {os.readlink(item)}"
            elif stat.S_ISDIR(info.st_mode):
                out[rel] = f"dir {info.st_mode:o} {owner}"
            elif stat.S_ISFIFO(info.st_mode):
                out[rel] = f"fifo {info.st_mode:o} {owner}"
            elif stat.S_ISREG(info.st_mode):  # never open anything else: a FIFO blocks its reader
                digest = hashlib.sha256()
                with item.open("rb") as handle:  # not hashlib.file_digest: images ship Pythons older than 3.11
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                out[rel] = f"file {info.st_mode:o} {owner} {digest.hexdigest()}"
    return out


def restore_metadata(mount: Path, listed: dict) -> None:
    """What the staging area does not carry, set from the source's manifest: modes and owners
    (rclone's --metadata is not used: Debian's rclone 1.60 applies a symbolic link's mode to
    the file it points to), empty directories and FIFOs. Nothing is followed through a link,
    and nothing outside `mount` is touched."""
    import stat

    root = os.path.realpath(mount)
    for rel, what in sorted(listed.items()):
        kind, *fields = what.split()
        path = mount / rel
        parent = os.path.realpath(path.parent)
        if parent != root and not parent.startswith(root + os.sep):
            continue  # a parent that is a link out of the volume: never followed
        if kind == "dir" and not path.exists():
            path.mkdir()
        elif kind == "fifo" and not os.path.lexists(path):
            os.mkfifo(path)
        if kind not in ("file", "dir", "fifo") or not os.path.lexists(path) or stat.S_ISLNK(path.lstat().st_mode):
            continue
        uid, gid = (int(n) for n in fields[1].split(":"))
        os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, int(fields[0], 8) & 0o7777)  # not a link (checked above): nothing is followed


def stage(task: dict) -> dict:
    """One leg of a staged copy, with this node's own identity (rclone's env_auth: the
    instance's metadata credentials; a directory on the local platform): `stage-out` syncs the
    volume at `mount` into `remote`, `stage-in` syncs `remote` into it and sets modes, owners,
    empty directories and FIFOs from the source's manifest (`restore_metadata`); rclone keeps
    symbolic links (`--links`). The result's manifest is of `mount`. The reconciler runs the
    same leg on its own machine for a local cluster without nodes (`vcnode stage`)."""
    mount = Path(task["mount"])
    if not mount.is_absolute() or not mount.is_dir():
        raise BootError(f"stage: {mount} is not a mounted volume here")
    ends = [str(mount), task["remote"]] if task["op"] == "stage-out" else [task["remote"], str(mount)]
    if task["op"] not in ("stage-out", "stage-in"):
        raise BootError(f"stage: unknown operation {task['op']!r}")
    run("rclone", "sync", "--links", "--create-empty-src-dirs", "--exclude", f"/{INTERNAL}/**", *ends, timeout=STAGE_LIMIT_S)
    if task["op"] == "stage-in":
        restore_metadata(mount, task.get("modes") or {})
    listed = manifest(mount)
    size = sum((mount / rel).lstat().st_size for rel, what in listed.items() if what.startswith("file "))
    return {"files": sum(1 for what in listed.values() if what.startswith("file ")), "bytes": size, "manifest": listed}


def run_task(node) -> None:
    """The task the reconciler left this node, once: its result names the task's id."""
    raw = node.store.read(channel.task_key(node.hostname))
    if not raw:
        return
    task = json.loads(raw)
    result_key = channel.task_key(node.hostname) + ".result"
    done = json.loads(node.store.read(result_key) or b"{}")
    if done.get("id") == task.get("id"):
        return
    try:
        result = {"id": task["id"], "ok": True, **stage(task)}
    except (BootError, OSError, KeyError, subprocess.TimeoutExpired) as exc:
        result = {"id": task.get("id", ""), "ok": False, "error": str(exc)[-400:]}
    node.store.write(result_key, json.dumps(result, sort_keys=True).encode())
    log(f"{node.hostname}: task {task.get('id')} ({task.get('op')}) {'done' if result['ok'] else 'failed'}")


def forget(hostname: str) -> None:
    run("scontrol", "delete", f"nodename={hostname}", check=False)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="vcnode")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("bootstrap").add_argument("facts", type=Path, nargs="?", default=FACTS)
    commands.add_parser("sync")
    drain_cmd = commands.add_parser("drain")
    drain_cmd.add_argument("hostname")
    drain_cmd.add_argument("--timeout", type=float, default=600)
    drain_cmd.add_argument("--reason", default="reconcile: node leaves its pool")
    commands.add_parser("forget").add_argument("hostname")
    access_cmd = commands.add_parser("access")
    access_cmd.add_argument("state", choices=sorted(PARTITION_STATES))
    access_cmd.add_argument("--timeout", type=float, default=600)
    # what the reconciler runs on its own machine, so that both ends of a copy are checked and
    # staged by this one code: a directory's manifest, and a staged copy's leg (a task file)
    commands.add_parser("manifest").add_argument("root", type=Path)
    commands.add_parser("stage").add_argument("task", type=Path)
    args = parser.parse_args(argv)
    os.umask(0o022)  # a node's own umask, whatever reconcile runs with (it keeps state 0600)
    try:
        if args.command == "bootstrap":
            bootstrap(args.facts)
        elif args.command == "sync":
            sync()
        elif args.command == "drain":
            drain([args.hostname], args.timeout, args.reason)
        elif args.command == "access":
            access(args.state, args.timeout)
        elif args.command == "manifest":
            json.dump(manifest(args.root), sys.stdout, sort_keys=True)
        elif args.command == "stage":
            json.dump(stage(json.loads(args.task.read_text())), sys.stdout, sort_keys=True)
        else:
            forget(args.hostname)
    except (BootError, OSError, KeyError, ValueError, subprocess.TimeoutExpired) as exc:
        log(f"error: {exc}")
        return 1
    return 0
