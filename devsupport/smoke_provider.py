"""A minimal dynamic provider for the toolchain smoke test. It lives in an importable module: the
dynamic-provider host unpickles it in another process."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, Resource, ResourceProvider


class MarkerProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["value"], outs=props)


class Marker(Resource):
    value: pulumi.Output[str]

    def __init__(self, name: str, value: pulumi.Input[str]) -> None:
        super().__init__(MarkerProvider(), name, {"value": value, "secret": pulumi.Output.secret("s3cr3t-" + name)},
                         pulumi.ResourceOptions(additional_secret_outputs=["secret"]))
