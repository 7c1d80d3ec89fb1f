"""The protocol each platform implements, one method per RPI unit kind."""

from __future__ import annotations

from typing import Protocol

from rpi.spec import ClusterSpec, LandingZoneSpec


class Platform(Protocol):
    """Turns platform-neutral specs into constructs inside a cdktf stack."""

    name: str

    def landing_zone(self, stack, spec: LandingZoneSpec) -> None:
        """Add the landing zone (network, identity, secrets, registries, control plane) to `stack`."""

    def cluster(self, stack, spec: ClusterSpec) -> None:
        """Add one vCluster (pools, storage, access, services) to `stack`."""
