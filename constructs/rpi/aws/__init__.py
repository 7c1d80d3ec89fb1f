"""The `aws` platform: RPI specs as AWS resources (cdktf-cdktf-provider-aws 21.22.1).

State goes to the site's S3 bucket (encrypted, with Terraform's lock file). Every stack pins
its provider to the site's account and region, and tags every resource with the site's labels.
`landing_zone.py` builds a site, `cluster.py` a vCluster. Provider classes are loaded one
submodule at a time through `cdk.provider_module`: importing the provider package whole costs
17 seconds.
"""

from __future__ import annotations

from rpi import cdk
from rpi.aws import cluster as _cluster
from rpi.aws import landing_zone as _landing_zone
from rpi.spec import ClusterSpec, LandingZoneSpec, StateLocation


class AwsPlatform:
    """Landing zones and vClusters on AWS; see `landing_zone.build` and `cluster.build`."""

    name = "aws"

    def backend(self, stack, state: StateLocation) -> None:
        cdk.backend(stack, state)

    def landing_zone(self, stack, spec: LandingZoneSpec) -> None:
        self.backend(stack, spec.state)
        _provider(stack, spec.region, spec.account, spec.labels)
        _landing_zone.build(stack, spec)

    def cluster(self, stack, spec: ClusterSpec) -> None:
        self.backend(stack, spec.state)
        _provider(stack, spec.region, spec.account, spec.labels)
        _cluster.build(stack, spec)

    def transfer(self, stack, spec) -> None:
        """The transfer stack of a copy into a site of this platform (`rpi.copyroute.TransferSpec`)."""
        from rpi.aws import transfer as _transfer

        _transfer.build(stack, spec)


def _provider(stack, region: str, account: str, labels: tuple[tuple[str, str], ...]) -> None:
    """The AWS provider, refusing any other account: a wrong profile fails instead of building."""
    provider = cdk.provider_module("aws", "provider")
    provider.AwsProvider(
        stack,
        "aws",
        region=region,
        allowed_account_ids=[account],
        default_tags=[provider.AwsProviderDefaultTags(tags=dict(labels))],
    )
