"""The local platform's volumes: one real directory each, named by the resource's id, below
the state root that reconcile passes to the engine (RECONCILE_STATE_ROOT), so that the
synthesized JSON stays relative.

A directory is created with its resource and removed with it, by provisioners. Left in place
when a `removed` block forgets the resource: that is what keeping a volume means. An adopted
volume (an import) is never created: its directory is already there. A resource whose
configuration is gone (a removed cluster, a dropped volume) is destroyed through a `removed`
block that carries the same destroy-time provisioner.

A bucket (storage.object) on a site with an object store (services.object_store) is a real
bucket there instead, named by the id too, created and removed with rclone (Debian's package)
by the same provisioners. The resource's input records the store, so its state alone says
where the bucket is (`bucket_store`), also once its configuration is gone.

Pure, and outside the `local` package (whose import starts Node), so the reconciler can build
`removed` blocks without cdktf; part of the local platform's code digest (registry.code_digest).
"""

from __future__ import annotations

from rpi.spec import ObjectStore, StateLocation

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


# rclone with the apply's own credentials, one mapping for the provisioners and for reconcile:
# AWS's chain (env_auth) for s3; for gcs a GOOGLE_OAUTH_ACCESS_TOKEN, else Application Default
# Credentials. rclone cannot load AWS_CA_BUNDLE itself (its S3 client refuses a custom bundle),
# so the bundle is handed to rclone's own transport instead. No `${`: Terraform would read it.
RCLONE_ENV = (
    'command -v rclone >/dev/null || { echo "rclone is not on PATH (Debian: apt-get install rclone): '
    'it creates, copies and removes the buckets of sites with an object store" >&2; exit 1; }; '
    'if [ -n "$AWS_CA_BUNDLE" ]; then RCLONE_CA_CERT="$AWS_CA_BUNDLE"; export RCLONE_CA_CERT; unset AWS_CA_BUNDLE; fi; '
    'if [ -n "$GOOGLE_OAUTH_ACCESS_TOKEN" ]; then '
    'RCLONE_GCS_TOKEN="{\\"access_token\\":\\"$GOOGLE_OAUTH_ACCESS_TOKEN\\",\\"token_type\\":\\"Bearer\\"}"; '
    "export RCLONE_GCS_TOKEN; fi"
)
REMOTE_ENV = "RECONCILE_BUCKET_REMOTE"  # the store, as an rclone remote, in the provisioner's environment


def remote(store: dict) -> str:
    """An rclone connection string for a store (`ObjectStore.describe()`), ending in ':', so that
    `remote(store) + bucket` names a bucket. Endpoints are validated URLs with no quote in them."""
    if store.get("backend") == "gcs":
        options = [f"project_number={store.get('project') or 'reconcile'}", "bucket_policy_only=true"]
        if store.get("endpoint"):
            options.append(f"endpoint='{store['endpoint']}'")
        return ":gcs," + ",".join(options) + ":"
    options = ["env_auth=true", f"provider={'Other' if store.get('endpoint') else 'AWS'}"]
    if store.get("endpoint"):
        options.append(f"endpoint='{store['endpoint']}'")
    if store.get("region"):
        options.append(f"region='{store['region']}'")
    return ":s3," + ",".join(options) + ":"


def bucket_store(facts: dict) -> dict | None:
    """The store a volume's resource input names, or None for a directory."""
    store = facts.get("store") if isinstance(facts, dict) else None
    return store if isinstance(store, dict) and store.get("backend") in ("s3", "gcs") else None


def bucket_url(store: dict, name: str) -> str:
    """How a bucket is shown: the store's kind, where it is, and the bucket."""
    where = store.get("endpoint") or ("Google Cloud Storage" if store.get("backend") == "gcs" else "AWS S3")
    return f"{store['backend']}://{name} at {where}"


_BUCKET = f'"${REMOTE_ENV}""${{self.id}}"'  # two words, one argument: the shell ends the name at the quote


def bucket_create_command() -> str:
    return f"{_GUARD}; {RCLONE_ENV}; rclone mkdir -q {_BUCKET}"


def bucket_destroy_command() -> str:
    # emptied first (a bucket that holds objects cannot be removed); gone already is done
    return (
        f"{_GUARD}; {RCLONE_ENV}; buckets=$(rclone lsf -q --dirs-only \"${REMOTE_ENV}\") || exit 1; "
        f'case "$buckets" in *"${{self.id}}/"*) rclone purge -q {_BUCKET};; esac'
    )


def provisioners(state: StateLocation, store: ObjectStore | None = None) -> list[dict]:
    """The `provisioner` list of a volume's resource: a directory, or a bucket in `store`."""
    if store is not None:
        environment = {REMOTE_ENV: remote(store.describe())}
        return [
            {"local-exec": {"command": bucket_create_command(), "environment": environment}},
            {"local-exec": {"when": "destroy", "command": bucket_destroy_command(), "environment": environment}},
        ]
    return [
        {"local-exec": {"command": create_command(state)}},
        {"local-exec": {"when": "destroy", "command": destroy_command(state)}},
    ]


def destroy_provisioner(state: StateLocation, facts: dict | None = None) -> dict:
    """The destroy-time provisioner of a volume known from its state (`facts`: the resource's
    input there): its directory, or its bucket in the store the input names."""
    store = bucket_store(facts or {})
    if store is not None:
        return {"local-exec": {"when": "destroy", "command": bucket_destroy_command(), "environment": {REMOTE_ENV: remote(store)}}}
    return {"local-exec": {"when": "destroy", "command": destroy_command(state)}}


def removed_block(address: str, state: StateLocation, facts: dict | None = None) -> dict:
    """Destroy a volume whose configuration is gone, its directory or bucket with it."""
    return {"from": address, "lifecycle": {"destroy": True}, "provisioner": [destroy_provisioner(state, facts)]}


def deletion_stack(address: str, volume_id: str, facts: dict, state: StateLocation) -> dict:
    """A stack of its own that takes one retained volume back (an import by its id) so that a
    destroy removes it the way its own stack would have: with its destroy-time provisioner."""
    rtype, name = address.split(".", 1)
    return {
        "terraform": {"backend": {"local": {"path": "terraform.tfstate"}}},
        "resource": {rtype: {name: {"input": facts, "provisioner": [destroy_provisioner(state, facts)]}}},
        "import": [{"to": address, "id": volume_id}],
    }
