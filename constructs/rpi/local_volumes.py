"""The local platform's volumes: one real directory each, named by the resource's id, below
the state root that reconcile passes to the engine (RECONCILE_STATE_ROOT), so that the
synthesized JSON stays relative.

A directory is created with its resource and removed with it, by provisioners. Left in place
when a `removed` block forgets the resource: that is what keeping a volume means. An adopted
volume (an import) is never created: its directory is already there. A resource whose
configuration is gone (a removed cluster, a dropped volume) is destroyed through a `removed`
block that carries the same destroy-time provisioner.

Pure, and outside the `local` package (whose import starts Node), so the reconciler can build
`removed` blocks without cdktf; part of the local platform's code digest (registry.code_digest).
"""

from __future__ import annotations

from rpi.spec import StateLocation

_GUARD = (
    'test -n "$RECONCILE_STATE_ROOT" || { echo "RECONCILE_STATE_ROOT is not set: run this stack through reconcile" >&2; exit 1; }; '
    # one path component, never the volumes' directory itself nor a way out of it
    'case "${self.id}" in ""|.|..|*/*) echo "not a volume id: ${self.id}" >&2; exit 1;; esac'
)


def volume_root(state: StateLocation) -> str:
    """Where a local site's volumes live, relative to the state root: beside its state."""
    return f"{state.local_dir}/volumes"


def _where(state: StateLocation) -> str:
    return f'"$RECONCILE_STATE_ROOT/{volume_root(state)}/${{self.id}}"'


def create_command(state: StateLocation) -> str:
    root = f'"$RECONCILE_STATE_ROOT/{volume_root(state)}"'
    return f"{_GUARD}; mkdir -p -m 0700 -- {root} && mkdir -m 0700 -- {_where(state)}"


def destroy_command(state: StateLocation) -> str:
    return f"{_GUARD}; rm -rf -- {_where(state)}"


def provisioners(state: StateLocation) -> list[dict]:
    """The `provisioner` list of a volume's resource."""
    return [
        {"local-exec": {"command": create_command(state)}},
        {"local-exec": {"when": "destroy", "command": destroy_command(state)}},
    ]


def removed_block(address: str, state: StateLocation) -> dict:
    """Destroy a volume whose configuration is gone, its directory with it."""
    return {
        "from": address,
        "lifecycle": {"destroy": True},
        "provisioner": [{"local-exec": {"when": "destroy", "command": destroy_command(state)}}],
    }
