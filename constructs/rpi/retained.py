"""PURE: the deletion stack of a retained volume on a cloud, as Terraform JSON (the local
platform's is `local_volumes.deletion_stack`).

`reconcile volumes --delete ID` takes the volume back into a stack of its own by an import
block with its id, then destroys it through the engine: a reviewed destroy, as on the local
platform. The stack holds only the provider, the import and the resource with what its type
requires; `ignore_changes = all` makes the import a pure adoption, so nothing of the volume
is changed (nor replaced) before it is destroyed. A bucket is emptied by the reconciler
(rclone) before its destroy: a bucket that holds objects cannot be removed.
"""

from __future__ import annotations

# The pinned providers, as the platforms' stacks name them (cdktf's prebuilt packages).
PROVIDERS = {"gcp": ("google", "6.50.0"), "aws": ("aws", "6.25.0")}


def _filestore(volume_id: str, region: str) -> dict:
    # projects/P/locations/ZONE/instances/NAME
    parts = volume_id.split("/")
    zone, name = (parts[3], parts[5]) if len(parts) == 6 else (region, volume_id)
    return {
        "name": name, "location": zone, "tier": "BASIC_HDD",
        "file_shares": {"name": "share", "capacity_gb": 1024},
        "networks": [{"network": "default", "modes": ["MODE_IPV4"]}],
    }


def _required(rtype: str, volume_id: str, region: str) -> dict:
    """What a resource type requires in configuration, whatever its values (they are ignored)."""
    if rtype == "google_storage_bucket":
        return {"name": volume_id, "location": region.upper()}
    if rtype == "google_filestore_instance":
        return _filestore(volume_id, region)
    if rtype == "aws_s3_bucket":
        return {"bucket": volume_id}
    if rtype == "aws_efs_file_system":
        return {}
    if rtype == "aws_fsx_lustre_file_system":
        return {"subnet_ids": ["subnet-00000000"], "storage_capacity": 1200, "deployment_type": "PERSISTENT_2"}
    raise ValueError(f"a retained {rtype} cannot be deleted by this tool: delete it with the cloud's own tools")


def deletion_stack(platform: str, address: str, volume_id: str, account: str, region: str) -> dict:
    rtype, name = address.split(".", 1)
    provider, version = PROVIDERS[platform]
    settings = {"project": account, "region": region} if platform == "gcp" else {"region": region, "allowed_account_ids": [account]}
    body = {**_required(rtype, volume_id, region), "lifecycle": {"ignore_changes": "all"}}
    return {
        "terraform": {"backend": {"local": {"path": "terraform.tfstate"}}, "required_providers": {provider: {"source": provider, "version": version}}},
        "provider": {provider: [settings]},
        "resource": {rtype: {name: body}},
        "import": [{"to": address, "id": volume_id}],
    }
