"""Shared base of this program's dynamic providers (their connection inputs: `infra.connection`)."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import Any, ClassVar, TypeVar

import grpc
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult

from infra.connection import PASSWORD
from infra.migrate import MigrationsError

# The type every dynamic resource had before they got their own (`class X(Resource, module=..., name=...)`).
GENERIC_DYNAMIC_TYPE = "pulumi-python:dynamic:Resource"

# Every dynamic resource stores its pickled provider under this key; a change of the provider's
# code alone changes it, and must never count as a change of the resource.
PROVIDER_KEY = "__provider"


class ProviderFailure(Exception):
    """An expected failure of a dynamic provider: its message says what happened and what to do."""


# Failures whose message is written for the user; anything else is a bug and keeps its traceback.
EXPECTED_FAILURES: tuple[type[Exception], ...] = (ProviderFailure, MigrationsError)

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _servicer_call() -> tuple[Any, grpc.ServicerContext] | None:
    """The gRPC request and context of the dynamic-provider host's call this thread is serving, if any.

    The host (`pulumi.dynamic.__main__`) calls the provider from a servicer method taking
    `(self, request, context)`; both are read from that frame of the call stack.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        context = frame.f_locals.get("context")
        if isinstance(context, grpc.ServicerContext) and "request" in frame.f_locals:
            return frame.f_locals["request"], context
        frame = frame.f_back
    return None


def resource_urn() -> str | None:
    """The URN of the resource the host's current call is about (delete and update requests carry it)."""
    call = _servicer_call()
    return (getattr(call[0], "urn", None) or None) if call else None


def reported(placeholder: Callable[..., Any]) -> Callable[[_Method], _Method]:
    """Makes the engine show an expected failure of a provider method as its message alone.

    The host turns any exception into a gRPC status holding `traceback.format_exc()`, which the
    engine prints under the resource. An expected failure instead sets the status itself (the engine
    prints its details and records nothing) and returns `placeholder(*args)`, which the engine
    discards. Outside the host (unit tests) the failure is raised as is.
    """
    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any) -> Any:
            try:
                return method(self, *args)
            except EXPECTED_FAILURES as failure:
                call = _servicer_call()
                if call is None:
                    raise
                call[1].set_code(grpc.StatusCode.UNKNOWN)
                call[1].set_details(str(failure))
                return placeholder(*args)
        return wrapper  # type: ignore[return-value]
    return decorate


def _no_create(props: dict[str, Any]) -> CreateResult:
    return CreateResult(id_="", outs={})


def _no_update(_id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
    return UpdateResult(outs={})


def _no_delete(_id: str, props: dict[str, Any]) -> None:
    return None


def _no_read(id_: str, props: dict[str, Any]) -> ReadResult:
    return ReadResult(id_=id_, outs=props)


reported_create = reported(_no_create)
reported_update = reported(_no_update)
reported_delete = reported(_no_delete)
reported_read = reported(_no_read)


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


def type_token(resource: type[Resource]) -> str:
    """The type a dynamic resource class registers under: `pulumi-python:dynamic/<module>:<name>`."""
    return f"pulumi-python:{resource._resource_type_name}"


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
