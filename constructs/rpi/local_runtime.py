"""The local platform's `slurm` runtime as Terraform: provisioners that call the local runtime
of the node package (`vcnode.localhost`) with the resource's own input.

Every resource carries what its destroy needs in its `input` (destroy-time provisioners may
only read `self`), and the commands name nothing absolute: reconcile gives the engine
RECONCILE_STATE_ROOT and RECONCILE_NODE_PACKAGE. Pure, and outside the `local` package (whose
import starts Node), so `removed` blocks can be built without cdktf.
"""

from __future__ import annotations

_GUARD = (
    'test -n "$RECONCILE_STATE_ROOT" -a -n "$RECONCILE_NODE_PACKAGE" || '
    '{ echo "RECONCILE_STATE_ROOT or RECONCILE_NODE_PACKAGE is not set: run this stack through reconcile" >&2; exit 1; }'
)
_RUN = 'PYTHONPATH="$RECONCILE_NODE_PACKAGE" python3 -m vcnode.localhost'
# What a node's destroy waits for its jobs before it gives up (and keeps the node, drained),
# unless the cluster says otherwise (services.scheduler.drain_timeout_s).
DRAIN_TIMEOUT_S = 600


def _exec(command: str, when: str = "", **environment: str) -> dict:
    block = {
        "command": f"{_GUARD}; {_RUN} {command}",
        "environment": {"VC_INPUT": "${jsonencode(self.input)}", **environment},
    }
    if when:
        block["when"] = when
    return {"local-exec": block}


def provisioners(up: str, down: str) -> list[dict]:
    return [_exec(up), _exec(down, when="destroy")]


def site(site_dir: str) -> tuple[dict, list[dict]]:
    """(input, provisioners) of a site's runtime: its namespace and bridge."""
    return {"site_dir": site_dir}, provisioners("site-up", "site-down")


def subnet() -> list[dict]:
    return provisioners("subnet-up", "subnet-down")


def node_input(site_dir: str, cluster: str, controller: str, hostname: str, address: str, prefix: int,
               gateway: str, pool: str, role: str, mounts: dict[str, str]) -> dict:
    return {
        "site_dir": site_dir, "cluster": cluster, "controller": controller, "hostname": hostname,
        "address": address, "prefix": prefix, "gateway": gateway, "pool": pool, "role": role, "mounts": mounts,
    }


def node(first_boot_address: str, drain_timeout_s: int = DRAIN_TIMEOUT_S) -> list[dict]:
    """A node boots from its cluster's first-boot data (the cluster's template) and is drained
    before it goes. The wait is the cluster's current one, a literal of the configuration (not
    of the node's input, which a destroy reads from state)."""
    return [
        _exec("node-up", VC_USER_DATA=f"${{{first_boot_address}.input.user_data}}"),
        _exec("node-down", when="destroy", VC_DRAIN_TIMEOUT_S=str(drain_timeout_s)),
    ]


def first_boot() -> list[dict]:
    """The cluster's template; when it goes (after every node), so do the cluster's config
    channel and secrets."""
    return [_exec("cluster-down", when="destroy")]


def config() -> list[dict]:
    """Publishing a config version to the channel applies it to the running nodes."""
    return [_exec("publish")]


def removed_block(address: str, drain_timeout_s: int = DRAIN_TIMEOUT_S) -> dict:
    """Destroy a runtime resource whose configuration is gone with its destroy-time provisioner
    (its input is in state; a node's drain wait is the cluster's current one)."""
    name = address.split(".", 1)[1]
    command = {"subnet": "subnet-down", "first_boot": "cluster-down", "runtime": "site-down"}.get(name, "node-down")
    extra = {"VC_DRAIN_TIMEOUT_S": str(drain_timeout_s)} if command == "node-down" else {}
    return {"from": address, "lifecycle": {"destroy": True}, "provisioner": [_exec(command, when="destroy", **extra)]}


def removed_addresses(addresses: set[str]) -> list[str]:
    """Of a stack's resources, the runtime's ones that must be destroyed by their provisioner,
    nodes first."""
    order = {"first_boot": 1, "subnet": 2, "runtime": 3}
    names = {a: a.split(".", 1)[1] for a in addresses}
    runtime = [a for a, name in names.items() if name.startswith("node_") or name in order]
    return sorted(runtime, key=lambda a: (order.get(names[a], 0), a))
