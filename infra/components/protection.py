"""The stack-wide stop for `pulumi destroy` while the data is protected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pulumi


class DataProtection(pulumi.ComponentResource):
    """Protected while `protectData` is true, and depending on every other resource of the stack.

    `protect` on the volume and the database alone is not enough: `pulumi destroy` deletes in reverse
    dependency order and stops only when it reaches a protected resource, after the cron job, the
    grants and the roles are gone. The engine deletes dependents first, so this component (which
    depends on everything, components expanding to all their children) is the first and only
    candidate: destroy fails on it before anything else is touched.
    """

    TYPE: ClassVar[str] = "customer-insights:db:DataProtection"

    def __init__(self, name: str, protect: bool, guarded: Sequence[pulumi.Resource]) -> None:
        super().__init__(self.TYPE, name, None,
                         pulumi.ResourceOptions(protect=protect, depends_on=list(guarded)))
        self.register_outputs({"protected": protect})
