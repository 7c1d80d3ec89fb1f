"""The only module that imports cdktf (deprecated upstream in December 2025).

Everything else builds stacks through these few functions, so a successor to cdktf replaces
this one file. Importing it starts Node (jsii): import it only when something must be synthesized.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def _node_in_a_session_of_its_own() -> None:
    """A terminal's Ctrl-C goes to this process's whole group. Node (the jsii kernel) is put in
    a session of its own, so that it is never stopped under our feet: reconcile stops, and
    stops Node cleanly on exit, instead of writing to a dead pipe."""
    node = shutil.which("node")
    if "JSII_NODE" in os.environ or os.name != "posix" or node is None:
        return
    directory = tempfile.mkdtemp(prefix="reconcile-jsii-")
    wrapper = Path(directory) / "node"
    wrapper.write_text(f"#!{sys.executable}\nimport os, sys\nos.setsid()\nos.execv({node!r}, [{node!r}, *sys.argv[1:]])\n")
    wrapper.chmod(0o700)
    os.environ["JSII_NODE"] = str(wrapper)
    atexit.register(shutil.rmtree, directory, True)  # after jsii's own exit hook, which runs first


_node_in_a_session_of_its_own()

import cdktf  # noqa: E402

VERSION = "0.21.0"

Stack = cdktf.TerraformStack


def local_backend(stack: Stack, path: str) -> None:
    """State in a local file. `path` stays relative so the JSON is the same in every clone."""
    cdktf.LocalBackend(stack, path=path)


def data_resource(stack: Stack, name: str, attributes: dict[str, Any], replace_on: dict[str, Any] | None = None):
    """Terraform's built-in `terraform_data`: a real resource with state and no provider.

    Changing `attributes` updates it in place; changing `replace_on` replaces it, the way a
    cloud replaces an instance whose machine type changes.
    """
    resource = cdktf.TerraformResource(stack, name, terraform_resource_type="terraform_data")
    resource.add_override("input", attributes)
    if replace_on is not None:
        resource.add_override("triggers_replace", replace_on)
    return resource


def rolled_by_generation(stack: Stack, pool, resources: list) -> None:
    """A pool rolled on purpose (`generation` raised): its nodes are replaced when the pool's
    generation changes, through a `terraform_data` of the pool that each node's
    `replace_triggered_by` names. Its creation triggers nothing (Terraform replaces on an
    update only), so every pool has one from the start, and shipping this replaced no node."""
    data_resource(stack, f"generation_{pool.name}", {"pool": pool.name, "generation": pool.generation})
    for resource in resources:
        resource.add_override("lifecycle.replace_triggered_by", [f"terraform_data.generation_{pool.name}.output"])


def provisioners(resource, blocks: list[dict]) -> None:
    """Provisioners of a resource, as Terraform JSON: [{"local-exec": {...}}, ...]."""
    resource.add_override("provisioner", blocks)


def adopt(resource, resource_id: str) -> None:
    """An import block: the resource is the existing one with this id, not a new one."""
    resource.import_from(resource_id)


def output(stack: Stack, name: str, value: Any, description: str = "", sensitive: bool = False) -> None:
    cdktf.TerraformOutput(stack, name, value=value, description=description or None, sensitive=sensitive)


def synthesize(build: Callable[[cdktf.App], dict[str, Stack]]) -> dict[str, dict]:
    """Run `build` on a fresh App and return {key: Terraform JSON document} for its stacks."""
    with tempfile.TemporaryDirectory(prefix="reconcile-synth-") as out:
        app = cdktf.App(outdir=out)
        stacks = build(app)
        app.synth()
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        by_name = {name: entry["synthesizedStackPath"] for name, entry in manifest["stacks"].items()}
        return {
            key: json.loads((Path(out) / by_name[stack.node.id]).read_text())
            for key, stack in stacks.items()
        }


def new_stack(app: cdktf.App, name: str) -> Stack:
    return cdktf.TerraformStack(app, name)


def backend(stack: Stack, state) -> None:
    """The stack's backend block, whatever its platform: a site's `state:` picks it."""
    if state.backend == "local":
        local_backend(stack, f"{state.bucket}/{state.key}")
    elif state.backend == "gcs":
        gcs_backend(stack, state.bucket, state.key, state.endpoint)
    else:
        s3_backend(stack, state.bucket, state.key, state.region, state.endpoint)


def gcs_backend(stack: Stack, bucket: str, prefix: str, endpoint: str = "") -> None:
    """State in GCS, locked by the backend's lock object. `endpoint`: a GCS-compatible store's
    base URL (its JSON API under /storage/v1/)."""
    backend = cdktf.GcsBackend(stack, bucket=bucket, prefix=prefix)
    if endpoint:
        base = endpoint.rstrip("/").removesuffix("/storage/v1")
        backend.add_override("storage_custom_endpoint", f"{base}/storage/v1/")


def s3_backend(stack: Stack, bucket: str, key: str, region: str, endpoint: str = "") -> None:
    """Encrypted state in S3, locked by Terraform's lock file (Terraform/OpenTofu 1.10+).

    cdktf 0.21.0's S3Backend does not know `use_lockfile` (a TypeError), nor the `endpoints`
    block of Terraform 1.6+, so they go in as overrides. With `endpoint` (Ceph RGW, MinIO, any
    S3-compatible store): path-style addressing, and none of the AWS-only checks (STS, account
    ID, region names) that such a store cannot answer.
    """
    backend = cdktf.S3Backend(stack, bucket=bucket, key=key, region=region, encrypt=True)
    backend.add_override("use_lockfile", True)
    if endpoint:
        backend.add_override("endpoints", {"s3": endpoint})
        for flag in ("use_path_style", "skip_credentials_validation", "skip_requesting_account_id", "skip_region_validation"):
            backend.add_override(flag, True)


PROVIDER_PACKAGES = {"google": "cdktf_cdktf_provider_google", "aws": "cdktf_cdktf_provider_aws"}


def provider_module(provider: str, submodule: str):
    """One submodule of a prebuilt provider package, e.g. ("google", "compute_network").

    The package's own __init__ imports all of its ~1,500 submodules (11 s for google, 17 s for
    aws, per process). Here the package is registered empty, only its jsii assembly is loaded,
    and then only the submodules asked for: the same classes and the same synthesized bytes.
    """
    package = PROVIDER_PACKAGES[provider]
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError(f"{package} is not installed")
        shell = types.ModuleType(package)
        shell.__spec__ = spec
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__file__ = spec.origin
        sys.modules[package] = shell
        importlib.import_module(f"{package}._jsii")  # loads the assembly into the jsii kernel
    return importlib.import_module(f"{package}.{submodule}")
