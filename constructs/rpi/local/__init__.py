"""The `local` platform: every RPI resource as Terraform's built-in `terraform_data`.

No cloud and no provider download: the whole loop (plan, apply, state, drift) runs for real
on any machine. Attributes are the ones a real platform would set (names, sizes, counts,
addresses from the site's ranges), so a plan here reads like a plan on a cloud.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json

from rpi import cdk
from rpi import local_runtime as runtime
from rpi import local_volumes as volumes
from rpi.spec import ClusterSpec, ComputePool, LandingZoneSpec, StateLocation, terraform_literal


class LocalPlatform:
    name = "local"

    def backend(self, stack, state: StateLocation) -> None:
        cdk.backend(stack, state)

    def landing_zone(self, stack, spec: LandingZoneSpec) -> None:
        self.backend(stack, spec.state)
        labels = dict(spec.labels)
        if spec.runtime == "slurm":
            attributes, blocks = runtime.site(spec.state.local_dir)
            cdk.provisioners(cdk.data_resource(stack, "runtime", attributes, replace_on=attributes), blocks)
        cdk.data_resource(
            stack,
            "network",
            {"name": spec.network.name, "cidr": spec.network.cidr, "region": spec.region, "labels": labels},
            replace_on={"cidr": spec.network.cidr},
        )
        for subnet in spec.network.subnets:
            cdk.data_resource(
                stack,
                f"subnet_{subnet.name}",
                {"name": subnet.name, "cidr": subnet.cidr, "gateway": subnet.gateway},
                replace_on={"cidr": subnet.cidr},
            )
        _pool(stack, spec.control_plane, zone=spec.zones[0])
        for service in spec.services:
            cdk.data_resource(
                stack,
                f"{service.kind}_{service.name}",
                {"name": service.name, "address": service.address, "settings": dict(service.settings)},
            )
        for registry in spec.registries:
            cdk.data_resource(
                stack,
                f"registry_{registry.format}",
                {"name": registry.name, "format": registry.format},
                replace_on={"format": registry.format},
            )
        cdk.output(stack, "network_cidr", spec.network.cidr, "The site's address space")
        cdk.output(stack, "endpoints", {s.name: s.address for s in spec.services}, "Landing-zone service addresses")
        cdk.output(stack, "registries", [r.name for r in spec.registries])

    def cluster(self, stack, spec: ClusterSpec) -> None:
        self.backend(stack, spec.state)
        labels = dict(spec.labels)
        real = spec.runtime == "slurm"
        subnet = {"name": spec.subnet.name, "cidr": spec.subnet.cidr, "gateway": spec.subnet.gateway, "labels": labels}
        prefix = ipaddress.IPv4Network(spec.subnet.cidr).prefixlen
        if real:
            subnet |= {"site_dir": spec.state.local_dir, "prefix": prefix}
        resource = cdk.data_resource(stack, "subnet", subnet, replace_on={"cidr": spec.subnet.cidr})
        if real:
            cdk.provisioners(resource, runtime.subnet())
            # the cluster's template: what a node boots from; a change reaches new nodes only
            template = cdk.data_resource(
                stack,
                "first_boot",
                {"site_dir": spec.state.local_dir, "cluster": spec.name, "user_data": terraform_literal(spec.user_data)},
            )
            cdk.provisioners(template, runtime.first_boot())
            config = cdk.data_resource(
                stack,
                "config",
                {"site_dir": spec.state.local_dir, "cluster": spec.name, "version": spec.config_version,
                 "files": _literal_files(spec.config_files)},
                replace_on={"version": spec.config_version},
            )
            cdk.provisioners(config, runtime.config())
        mounts = {v.mount: f"${{terraform_data.storage_{v.name}.id}}" for v in spec.storage if v.mount}
        controller = _controller_address(spec)
        for pool in spec.pools:
            if not real:
                _pool(stack, pool, zone=spec.zone)
                continue
            for index, (hostname, address) in enumerate(zip(pool.hostnames, pool.addresses)):
                attributes = runtime.node_input(
                    spec.state.local_dir, spec.name, spec.controller, hostname, address, prefix,
                    spec.subnet.gateway, pool.name, pool.role, mounts,
                )
                node = _node(stack, pool, index, spec.zone, attributes)
                cdk.provisioners(node, runtime.node("terraform_data.first_boot", spec.drain_timeout_s))
                after = ["terraform_data.config", "terraform_data.subnet"]
                if hostname != spec.controller and controller:
                    after.append(f"terraform_data.{controller}")
                node.add_override("depends_on", after)
        for volume in spec.storage:
            # No replace_on: the kind follows from the volume's name, and a trigger would turn
            # the import of a kept volume into its replacement.
            attributes = {"name": f"{spec.name}-{volume.name}", "kind": volume.kind, "size_gb": volume.size_gb, "mount": volume.mount}
            if volume.store is not None:  # a bucket in the site's object store
                attributes["store"] = volume.store.describe()
            resource = cdk.data_resource(stack, f"storage_{volume.name}", attributes)
            cdk.provisioners(resource, volumes.provisioners(spec.state, volume.store))
            if volume.adopt:
                cdk.adopt(resource, volume.adopt)
        for group in spec.access:
            cdk.data_resource(stack, f"group_{group.name}", {"name": group.name, "role": group.role, "cluster": spec.name})
        logins = [a for p in spec.pools if p.role == "login" for a in p.addresses]
        cdk.data_resource(
            stack,
            "login_access",
            {"public": spec.public_login, "allowed_cidrs": list(spec.allowed_cidrs), "targets": logins},
        )
        if spec.scheduler is not None:
            cdk.data_resource(
                stack,
                f"scheduler_{spec.scheduler.kind}",
                {
                    "version": spec.scheduler.version,
                    "settings": dict(spec.scheduler.settings),
                    # dynamic nodes: a partition is its pool's node set, whatever the count
                    "partitions": {p.name: f"{p.name}_nodes" for p in spec.pools if p.role == "compute"},
                },
            )
        cdk.data_resource(
            stack,
            "user_environment",
            {
                "spack_version": spec.spack_version or "",
                "spack_specs": list(spec.spack_specs),
                "containers": list(spec.containers),
                "identity": {s.name: s.address for s in spec.identity_endpoints},
                "cloud_init_sha256": hashlib.sha256(spec.user_data.encode()).hexdigest(),
                "config_version": spec.config_version,  # the day-to-day config the nodes should run
            },
        )
        cdk.output(
            stack,
            "volumes",
            {v.name: f"${{terraform_data.storage_{v.name}.id}}" for v in spec.storage},
            f"Volume ids: their directories are under {volumes.volume_root(spec.state)}",
        )
        cdk.output(stack, "login_addresses", logins, "Where users connect")
        cdk.output(stack, "node_count", sum(p.count for p in spec.pools), "Nodes in all pools")
        cdk.output(stack, "nodes", {p.name: list(p.hostnames) for p in spec.pools}, "Hostnames per pool")


def _pool(stack, pool: ComputePool, zone: str) -> None:
    if pool.placement == "compact":
        cdk.data_resource(stack, f"placement_{pool.name}", {"strategy": "compact", "pool": pool.name, "zone": zone})
    for index, (hostname, address) in enumerate(zip(pool.hostnames, pool.addresses)):
        _node(stack, pool, index, zone, {"hostname": hostname, "address": address, "pool": pool.name, "role": pool.role})


def _shape(pool: ComputePool, zone: str) -> dict:
    node = pool.node
    return {
        "cores": node.cores,
        "memory_gb": node.memory_gb,
        "gpu_model": node.gpu_model or "",
        "gpu_count": node.gpu_count,
        "local_ssd_gb": node.local_ssd_gb,
        "zone": zone,
    }


def _node(stack, pool: ComputePool, index: int, zone: str, attributes: dict):
    """A node; raising its pool's generation replaces it (only then is it a trigger: shipping
    that replaces no node), in the batches of a rolling change on the slurm runtime."""
    shape = _shape(pool, zone)
    return cdk.data_resource(
        stack,
        f"node_{pool.name}_{index}",
        {**attributes, **shape},
        replace_on={"address": attributes["address"], **shape, **({"generation": pool.generation} if pool.generation else {})},
    )


def _controller_address(spec: ClusterSpec) -> str:
    for pool in spec.pools:
        for index, hostname in enumerate(pool.hostnames):
            if hostname == spec.controller:
                return f"node_{pool.name}_{index}"
    return ""


def _literal_files(config_files: str) -> dict:
    files = json.loads(config_files or "{}")
    return {path: {**f, "content": terraform_literal(f["content"])} for path, f in files.items()}
