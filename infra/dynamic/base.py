"""Shared base of this program's dynamic providers (their connection inputs: `infra.connection`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import DiffResult, ResourceProvider

from infra.connection import PASSWORD

# The type every dynamic resource had before they got their own (`class X(Resource, module=..., name=...)`).
GENERIC_DYNAMIC_TYPE = "pulumi-python:dynamic:Resource"

# Every dynamic resource stores its pickled provider under this key; a change of the provider's
# code alone changes it, and must never count as a change of the resource.
PROVIDER_KEY = "__provider"


class DiffingProvider(ResourceProvider):
    """A dynamic provider whose diff compares only the inputs that matter.

    Subclasses list the inputs that force a replacement (`replace_keys`) and those the diff ignores
    (`ignored_keys`, e.g. connection details that do not change what exists on the server).
    """

    replace_keys: ClassVar[frozenset[str]] = frozenset()
    ignored_keys: ClassVar[frozenset[str]] = frozenset()

    def changed_keys(self, olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
        skip = {PROVIDER_KEY, *self.ignored_keys}
        keys = (set(olds) | set(news)) - skip
        return sorted(k for k in keys if olds.get(k) != news.get(k))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = self.changed_keys(olds, news)
        replaces = [k for k in changed if k in self.replace_keys]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)


def password_kept_secret(opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Options that keep the password secret in the outputs too: delete and refresh read it there."""
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=[PASSWORD]))


def renamed_from_generic_type(opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Options that adopt a resource recorded under the generic dynamic type: same name and parent,
    so stacks created before the rename see an unchanged resource, not a replacement."""
    renamed = pulumi.ResourceOptions(aliases=[pulumi.Alias(type_=GENERIC_DYNAMIC_TYPE)])
    return pulumi.ResourceOptions.merge(opts, renamed)


def stop_waiting_on_property_outputs(resource: pulumi.Resource, names: Iterable[str]) -> None:
    """Takes a resource's own property outputs out of the set the Python SDK waits on at exit.

    After the program returns, the SDK (3.272) waits for every tracked Output with
    `asyncio.wait(..., FIRST_COMPLETED)`; each wake-up re-arms a callback on every pending one. A
    chain of N resources with k properties each therefore costs O(k * N^2): measured on 300
    migrations, a no-change preview took 27 s, 11.6 s without it (bench/README.md). These outputs are
    resolved by the resource's RegisterResource call, which the SDK awaits anyway (and whose failure
    it reports); `urn` and `id` stay tracked. A failed registration's property outputs are marked
    retrieved, so asyncio does not print their exception a second time.
    """
    for name in names:
        data = getattr(getattr(resource, name, None), "_data", None)
        untrack = getattr(getattr(resource, name, None), "_untrack", None)
        if isinstance(data, asyncio.Future) and callable(untrack):
            untrack()
            data.add_done_callback(lambda f: f.cancelled() or f.exception())
