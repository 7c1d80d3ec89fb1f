"""The `gcp` platform: RPI specs as Google Cloud resources (cdktf-cdktf-provider-google 16.12.1,
Terraform provider google 6.50).

State goes to the site's GCS bucket under the unit's prefix (GCS locks state on its own).
Every stack pins its provider to the site's project and region, and labels every resource
with the site's labels through `default_labels`. `landing_zone.py` builds a site,
`cluster.py` a vCluster. Provider classes are loaded one submodule at a time through
`cdk.provider_module`: importing the provider package whole costs 11 seconds.

Labels on Google Cloud are lowercase letters, digits, '_' and '-', at most 63 characters, and
keys start with a letter (`gcp_labels`). Values are made valid by lowercasing them and turning
every other character into '_' (`CH` becomes `ch`, `swisstwins.ch` becomes `swisstwins_ch`); a
key that would need more than lowercasing is refused, because a label key is a name people
query by and silently renaming it would break their filters.
"""

from __future__ import annotations

import re

from rpi import cdk
from rpi.gcp import cluster as _cluster
from rpi.gcp import landing_zone as _landing_zone
from rpi.spec import ClusterSpec, LandingZoneSpec, StateLocation

LABEL_LIMIT = 63
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_NOT_LABEL_CHARACTER = re.compile(r"[^a-z0-9_-]")


class GcpPlatform:
    """Landing zones and vClusters on Google Cloud; see `landing_zone.build` and `cluster.build`."""

    name = "gcp"

    def backend(self, stack, state: StateLocation) -> None:
        cdk.backend(stack, state)

    def landing_zone(self, stack, spec: LandingZoneSpec) -> None:
        self.backend(stack, spec.state)
        _provider(stack, spec.account, spec.region, spec.labels)
        _landing_zone.build(stack, spec)

    def cluster(self, stack, spec: ClusterSpec) -> None:
        self.backend(stack, spec.state)
        _provider(stack, spec.account, spec.region, spec.labels)
        _cluster.build(stack, spec)

    def transfer(self, stack, spec) -> None:
        """The transfer stack of a copy into a site of this platform (`rpi.copyroute.TransferSpec`)."""
        from rpi.gcp import transfer as _transfer

        _transfer.build(stack, spec)


def gcp_labels(labels: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The spec's labels as valid Google Cloud labels (see the module docstring)."""
    out = {}
    for key, value in labels:
        if not _LABEL_KEY.match(key.lower()):
            raise ValueError(
                f"label {key!r} cannot be a Google Cloud label key: start with a letter, then use at most 62 "
                "letters, digits, '_' or '-'"
            )
        out[key.lower()] = _NOT_LABEL_CHARACTER.sub("_", value.lower())[:LABEL_LIMIT]
    return out


def _provider(stack, project: str, region: str, labels: tuple[tuple[str, str], ...]) -> None:
    """The Google provider, bound to the site's project: nothing is built in a default project."""
    provider = cdk.provider_module("google", "provider")
    provider.GoogleProvider(stack, "google", project=project, region=region, default_labels=gcp_labels(labels))
