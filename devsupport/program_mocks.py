"""The real `__main__.py` under Pulumi's mocks, every registration recorded as the engine receives it.

Used by the unit tests of the resource graph (tests/unit/test_program_graph.py, test_data_protection.py).

How the program is run (`ProgramHarness.run`):

* `pulumi.runtime.set_mocks` with `ProgramMocks` (Pulumi's documented unit-test approach: `new_resource`
  returns `[name + "_id", inputs]` plus the computed outputs the program reads) and a `RecordingMonitor`,
  a `MockMonitor` subclass passed through set_mocks' `monitor=` argument. `MockResourceArgs` has no
  parent, no `depends_on` and no resource options, so the monitor records each `RegisterResource`
  request as the engine receives it: URN, parent URN, provider reference, `dependencies` (explicit
  `depends_on` plus the resources the inputs come from), per-property dependencies,
  `additional_secret_outputs`, and the inputs in wire form (secrets still wrapped, so which inputs are
  secret can be asserted). Like the engine, and unlike `MockMonitor`, it returns the outputs named in
  `additional_secret_outputs` as secrets (e.g. RandomPassword `result`).
* The program runs in `pulumi.runtime.run_in_stack`, the way the Python language host and the
  Automation API run `__main__.py`: it creates the root Stack, runs the program, waits for every
  outstanding registration, and registers the exports as the Stack's outputs. Exports are captured
  from that `RegisterResourceOutputs` call for the Stack's URN: exactly what `pulumi up` would store,
  secret outputs still wrapped as secrets. This follows the engine's path instead of reading the SDK's
  Stack object, and it needs nothing from the program. As a second, independent check, each
  `pulumi.export` value is asked `await Output.is_secret()` at the end of the program (from the
  Stack's `outputs`).
* set_mocks registers a finished root Stack of its own; `run` lets it settle and clears the root
  (what `pulumi.runtime.reset_options` does) so that run_in_stack can create the program's.
* Config comes from `pulumi.runtime.set_all_config` (keys `customer-insights-db:<key>`, secret keys
  listed), as the engine passes it.
"""

from __future__ import annotations

import asyncio
import runpy
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc, settings
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import Stack, wait_for_rpcs

from infra.components.database import DatabaseAndRoles, TablePrivileges
from infra.components.migrations import Migrations
from infra.components.protection import DataProtection
from infra.components.server import PostgresServer
from infra.dynamic.adoption import AdoptedHistory, RolePassword
from infra.dynamic.base import type_token
from infra.dynamic.cron_job import CronJob
from infra.dynamic.data_volume import DataVolumeCheck
from infra.dynamic.migration import Migration
from infra.dynamic.migration_checkpoint import MigrationCheckpoint
from infra.dynamic.server_ready import ServerReady
from infra.dynamic.stack_claim import StackClaim
from infra.preflight import ServerFacts
from infra.token_cleanup import TokenCleanupJob

REPO = Path(__file__).resolve().parents[1]
PROGRAM = REPO / "__main__.py"
PROJECT = "customer-insights-db"
STACK = "unit"

STACK_TYPE = "pulumi:pulumi:Stack"
SERVER_COMPONENT = PostgresServer.TYPE
DB_COMPONENT = DatabaseAndRoles.TYPE
MIGRATIONS_COMPONENT = Migrations.TYPE
JOB_COMPONENT = TokenCleanupJob.TYPE
TABLE_PRIVILEGES_COMPONENT = TablePrivileges.TYPE
DATA_PROTECTION_COMPONENT = DataProtection.TYPE
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
NETWORK = "docker:index/network:Network"
SERVER_READY = type_token(ServerReady)
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
CONTAINER = "docker:index/container:Container"
PG_PROVIDER = "pulumi:providers:postgresql"
ROLE = "postgresql:index/role:Role"
DATABASE = "postgresql:index/database:Database"
GRANT = "postgresql:index/grant:Grant"
DEFAULT_PRIVILEGES = "postgresql:index/defaultPrivileges:DefaultPrivileges"
EXTENSION = "postgresql:index/extension:Extension"
MIGRATION = type_token(Migration)
MIGRATION_CHECKPOINT = type_token(MigrationCheckpoint)
CRON_JOB = type_token(CronJob)
STACK_CLAIM = type_token(StackClaim)
DATA_VOLUME_CHECK = type_token(DataVolumeCheck)
ADOPTED_HISTORY = type_token(AdoptedHistory)
ROLE_PASSWORD = type_token(RolePassword)

IMAGE_ID = "sha256:" + "ab" * 32
CRON_JOB_ID = 42  # what the mocked CronJob reports as its pg_cron job id


def password_of(resource_name: str) -> str:
    """What the mocked RandomPassword `resource_name` generates."""
    return f"pw-{resource_name}-0123456789"


# ---------------------------------------------------------------------------------------------- wire values


def reveal(value: Any) -> Any:
    """`value` with every secret unwrapped."""
    if rpc.is_rpc_secret(value):
        return reveal(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def plain_strings(value: Any) -> Iterator[str]:
    """Every string of `value` that is not inside a secret."""
    if rpc.is_rpc_secret(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from plain_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from plain_strings(v)


def contains_secret(value: Any) -> bool:
    if rpc.is_rpc_secret(value):
        return True
    if isinstance(value, dict):
        return any(contains_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_secret(v) for v in value)
    return False


# ---------------------------------------------------------------------------------------------- harness


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    parent: str  # URN
    custom: bool
    provider: str  # provider reference "<provider URN>::<id>", "" for the default provider
    dependencies: list[str]  # URNs
    property_dependencies: dict[str, list[str]]
    additional_secret_outputs: list[str]
    inputs: dict[str, Any]  # wire form: secrets wrapped
    protect: bool = False
    retain_on_delete: bool = False

    def __getitem__(self, key: str) -> Any:
        return reveal(self.inputs[key])

    def get(self, key: str, default: Any = None) -> Any:
        return reveal(self.inputs.get(key, default))

    def is_secret(self, key: str) -> bool:
        return rpc.is_rpc_secret(self.inputs.get(key))


class ProgramMocks(pulumi.runtime.Mocks):
    """Each resource's outputs are its inputs, plus the computed outputs the program reads."""

    def __init__(self) -> None:
        self.created: list[MockResourceArgs] = []
        self.calls: list[MockCallArgs] = []
        self._lock = threading.Lock()

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        with self._lock:
            self.created.append(args)
        outputs = dict(args.inputs)
        if args.typ == RANDOM_PASSWORD:
            outputs["result"] = password_of(args.name)
        elif args.typ == REMOTE_IMAGE:
            outputs["imageId"] = IMAGE_ID
        elif args.typ == CONTAINER:
            outputs["name"] = args.inputs["name"]
            outputs["ports"] = [{"protocol": "tcp", **port} for port in args.inputs.get("ports", [])]
        elif args.typ == CRON_JOB:
            outputs["job_id"] = CRON_JOB_ID
        return f"{args.name}_id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        with self._lock:
            self.calls.append(args)
        return {}, []


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: ProgramMocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []
        self.stack_outputs: dict[str, Any] | None = None
        self.thread_loops: set[asyncio.AbstractEventLoop] = set()
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type == STACK_TYPE:
            return response
        with self._lock:
            # MockMonitor gives each executor thread an event loop that nobody closes: closed after the run
            self.thread_loops.add(asyncio.get_event_loop())
        response = self._engine_secrets(request, response)
        registration = Registration(
            urn=response.urn,
            type=request.type,
            name=request.name,
            parent=request.parent,
            custom=request.custom,
            provider=request.provider,
            dependencies=list(request.dependencies),
            property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
            additional_secret_outputs=list(request.additionalSecretOutputs),
            inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
        )
        with self._lock:
            self.registrations.append(registration)
        return response

    @staticmethod
    def _engine_secrets(request: Any, response: Any) -> Any:
        """The engine returns the outputs named in `additional_secret_outputs` as secrets."""
        names = set(request.additionalSecretOutputs)
        if not names:
            return response
        state = rpc.deserialize_properties(response.object, keep_unknowns=True)
        for key in names & set(state):
            state[key] = rpc.wrap_rpc_secret(state[key])
        loop = asyncio.new_event_loop()
        try:
            wire = loop.run_until_complete(rpc.serialize_properties(state, {}))
        finally:
            loop.close()
        return resource_pb2.RegisterResourceResponse(urn=response.urn, id=response.id, object=wire)

    def RegisterResourceOutputs(self, request: Any) -> Any:
        if f"::{STACK_TYPE}::" in request.urn:
            with self._lock:
                self.stack_outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
        return super().RegisterResourceOutputs(request)


@dataclass
class ProgramRun:
    resources: list[Registration]
    outputs: dict[str, Any]  # the Stack's outputs as registered with the engine (secrets wrapped)
    export_is_secret: dict[str, bool]  # `await Output.is_secret()` of each pulumi.export value
    _by_urn: dict[str, Registration] = field(init=False)

    def __post_init__(self) -> None:
        self._by_urn = {r.urn: r for r in self.resources}

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str) -> Registration:
        found = [r for r in self.resources if r.type == type_ and r.name == name]
        assert len(found) == 1, f"{len(found)} {type_} named {name!r}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return self._by_urn[urn]

    def upstream_of(self, resource: Registration) -> set[str]:
        """Every URN `resource` waits for, directly or through other resources (what the engine orders)."""
        seen: set[str] = set()
        todo = list(resource.dependencies)
        while todo:
            urn = todo.pop()
            if urn in seen:
                continue
            seen.add(urn)
            todo.extend(self.by_urn(urn).dependencies)  # KeyError: a dependency never registered
        return seen

    def parent_of(self, resource: Registration) -> Registration:
        return self.by_urn(resource.parent)

    def children_of(self, parent: Registration) -> list[Registration]:
        return [r for r in self.resources if r.parent == parent.urn]

    def provider_of(self, resource: Registration) -> Registration:
        urn = resource.provider.rsplit("::", 1)[0]
        return self.by_urn(urn)

    def migrations(self) -> list[Registration]:
        """The Migration resources, by version."""
        return sorted((r for r in self.of_type(MIGRATION)), key=lambda r: int(r["version"]))

    def cron_job(self) -> Registration:
        jobs = self.of_type(CRON_JOB)
        assert len(jobs) == 1
        return jobs[0]

    def output(self, name: str) -> Any:
        return reveal(self.outputs[name])


class ProgramHarness:
    """Runs `__main__.py` under mocks; what was registered stays readable when the program fails."""

    def __init__(self) -> None:
        self.mocks = ProgramMocks()
        self.monitor = RecordingMonitor(self.mocks)
        self.export_is_secret: dict[str, bool] = {}

    async def _program(self) -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")
        stack = pulumi.runtime.get_root_resource()
        assert isinstance(stack, Stack)
        for name, value in stack.outputs.items():
            self.export_is_secret[name] = await pulumi.Output.from_input(value).is_secret()

    def run(self, config: dict[str, str], secret_keys: Iterable[str] = ()) -> ProgramRun:
        # Whoever runs next in this thread (another test's `pulumi.runtime.test`) gets its loop back.
        try:
            previous: asyncio.AbstractEventLoop | None = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            previous = None
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            settings.SETTINGS.outputs.clear()  # as pulumi.runtime.test does
            pulumi.runtime.set_mocks(self.mocks, project=PROJECT, stack=STACK, preview=False, monitor=self.monitor)
            # set_mocks registers a root Stack of its own (already finished, with no outputs). Let that
            # settle and start over with no root, so that run_in_stack creates the program's Stack
            # (and its outputs registration is the only one recorded).
            loop.run_until_complete(wait_for_rpcs())
            self.monitor.stack_outputs = None
            settings.ROOT.set(None)
            pulumi.runtime.set_all_config(
                {f"{PROJECT}:{key}": value for key, value in config.items()},
                [f"{PROJECT}:{key}" for key in secret_keys],
            )
            loop.run_until_complete(pulumi.runtime.run_in_stack(self._program))
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            for thread_loop in self.monitor.thread_loops:
                thread_loop.close()
            asyncio.set_event_loop(previous)
            settings.ROOT.set(None)
            pulumi.runtime.set_all_config({})
        assert self.monitor.stack_outputs is not None, "the program's Stack registered no outputs"
        return ProgramRun(list(self.monitor.registrations), self.monitor.stack_outputs, dict(self.export_is_secret))


class FakePreflight:
    """Stands in for `infra.preflight.check_external_server`, which connects to the server: records
    its calls and returns `result` (or raises it)."""

    def __init__(self, result: ServerFacts | Exception) -> None:
        self.result = result
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> ServerFacts:
        self.calls.append(kwargs)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result
