"""Runs one input against a real service and checks the invariants the fuzz holds every service to.

Per input: the status is never INTERNAL, UNKNOWN or DEADLINE_EXCEEDED (under a generous deadline); an
INVALID_ARGUMENT names at least one field violation (google.rpc.BadRequest), unless the body did not decode;
a refused request (any status but OK) adds nothing to the component's domain streams (the exception
and audit streams may grow: refusals are reported and audited); no request makes the streams grow by more
than :data:`WRITE_FACTOR` times its size (at least :data:`WRITE_FLOOR`); the health service answers SERVING
within a second while a slow call is in flight, and every :data:`HEALTH_EVERY` inputs. A raw body
that does not decode as the request message is INVALID_ARGUMENT.

Failures are collected, not raised, so one run lists every distinct problem (RPC, invariant, status,
the server's error log) with the smallest input that showed it; the test fails at its end with the list.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.cli.components import Component
from libs.runtime.access import Report, resolve
from libs.runtime.app import RunningService
from libs.runtime.settings import RuntimeSettings
from libs.runtime.streams import ALL_STREAMS, AUDIT, AUDIT_INBOX, EXCEPTION
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service, unique_namespace
from tests.fuzz.strategies import MessageStrategies, raw_bodies
from tests.fuzz.targets import ODD_SYSTEMS, PREPARATIONS, QUIET_SETTINGS, Rpc, Seeds, access_rules, preferred_systems

CALL_TIMEOUT = 15.0  # seconds: generous; DEADLINE_EXCEEDED under it is a failure
HEALTH_TIMEOUT = 1.0  # seconds: health answers within this under any single request
HEALTH_EVERY = 50  # inputs between health checks of a component
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED})
NOTABLE = frozenset(
    {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Streams a refused request may grow: exceptions are raised and refusals audited.
MAY_GROW = frozenset(spec.domain for spec in (EXCEPTION, AUDIT_INBOX, AUDIT))
# What one request may make the streams grow by (events, exceptions and audit records together): the request
# carried as an event and as evidence a few times over is fine, a multiple of it per line is not.
WRITE_FACTOR = 64
WRITE_FLOOR = 1024 * 1024
SYSTEM_HEADER = "x-syncgov-system"
MAX_REQUEST_BYTES = int(RuntimeSettings.model_fields["max_message_bytes"].default)
REQUEST_BUDGET = MAX_REQUEST_BYTES * 9 // 10  # requests stay below the services' gRPC limit


# -- what was seen -------------------------------------------------------------------------------------


@dataclass
class Failure:
    rpc: str
    invariant: str
    status: str
    details: str
    system: str | None
    request: Message | bytes
    server_errors: list[str] = field(default_factory=list)
    count: int = 1

    @property
    def size(self) -> int:
        return len(self.request) if isinstance(self.request, bytes) else self.request.ByteSize()

    def key(self) -> tuple[str, str, str, str]:
        normalized = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "#", self.details)[:80]
        return (self.rpc, self.invariant, self.status, normalized)

    def reproducer(self, limit: int = 600) -> str:
        if isinstance(self.request, bytes):
            shown = f"raw body ({len(self.request)} bytes): {self.request[:200]!r}"
        else:
            text = text_format.MessageToString(self.request, as_one_line=True, as_utf8=False)
            if len(text) > limit:
                text = text[:limit] + f"... ({len(text)} chars, {self.size} bytes serialized)"
            shown = f"{self.request.DESCRIPTOR.name} {{{text}}}"
        return f"system={self.system!r} {shown}"


@dataclass
class FuzzLog:
    """The failures of one test, distinct by (RPC, invariant, status, details), each with its smallest input."""

    failures: dict[tuple[str, str, str, str], Failure] = field(default_factory=dict)
    shared: bool = True  # False: a known finding replayed on purpose, kept out of the session's summary

    def add(self, failure: Failure) -> None:
        if self.shared:
            RECORD.failures.append(failure)
        known = self.failures.get(failure.key())
        if known is None:
            self.failures[failure.key()] = failure
        else:
            failure.count = known.count + 1
            self.failures[failure.key()] = failure if failure.size < known.size else known
            self.failures[failure.key()].count = failure.count

    def report(self, artifacts: Path | None = None) -> str:
        lines = [f"{len(self.failures)} distinct failure(s):"]
        for number, failure in enumerate(self.failures.values(), 1):
            lines.append(
                f"[{number}] {failure.rpc}: {failure.invariant} — status {failure.status} ({failure.count}x): "
                f"{failure.details[:300]}"
            )
            lines.append(f"    input: {failure.reproducer()}")
            lines.extend(f"    server: {line}" for line in failure.server_errors[:3])
            if artifacts is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
                body = failure.request if isinstance(failure.request, bytes) else failure.request.SerializeToString()
                kind = "raw" if isinstance(failure.request, bytes) else "message"
                safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{failure.rpc}-{kind}-{failure.status}")
                path = artifacts / f"{safe}-{hashlib.sha256(body).hexdigest()[:12]}.bin"
                path.write_bytes(body)
                lines.append(f"    bytes: {path}")
        return "\n".join(lines)


@dataclass
class Record:
    """Everything the session's fuzz did, for the summary at its end."""

    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    raw_statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[Failure] = field(default_factory=list)
    # Statuses a single sequential client should rarely see: the first input that showed each, per RPC.
    notable: dict[tuple[str, str], Failure] = field(default_factory=dict)
    health_checks: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def inputs(self) -> int:
        return sum(sum(c.values()) for c in (*self.statuses.values(), *self.raw_statuses.values()))

    def summary(self) -> list[str]:
        if not self.inputs:
            return []
        lines = [
            f"fuzz: {self.inputs} inputs ({sum(sum(c.values()) for c in self.statuses.values())} messages, "
            f"{sum(sum(c.values()) for c in self.raw_statuses.values())} raw bodies) in "
            f"{time.monotonic() - self.started:.1f} s, {self.health_checks} health checks, "
            f"{len(self.failures)} failing inputs"
        ]
        for rpc in sorted(set(self.statuses) | set(self.raw_statuses)):
            seen = ", ".join(f"{code} {n}" for code, n in self.statuses[rpc].most_common())
            raw = ", ".join(f"{code} {n}" for code, n in self.raw_statuses[rpc].most_common())
            lines.append(f"  {rpc:60} {seen}   | raw: {raw}")
        for (rpc, code), seen_first in sorted(self.notable.items()):
            lines.append(f"  notable: {rpc} answered {code}: {seen_first.details[:200]}")
            lines.append(f"           first input: {seen_first.reproducer(300)}")
        return lines


RECORD = Record()


class ServerErrors(logging.Handler):
    """ERROR records the services in this process log while a call is in flight."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        where = ""
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            tb = error.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
            where = f" [{type(error).__name__}: {str(error)[:200]}{where}]"
        self.records.append(f"{record.name}: {record.getMessage()[:300]}{where}")


# -- one running component -----------------------------------------------------------------------------


class Target:
    def __init__(
        self, component: Component, running: RunningService[Any], channel: grpc.aio.Channel, js: JetStreamContext
    ) -> None:
        self.component = component
        self.running = running
        self.channel = channel
        self.js = js
        self.namespace: Namespace = running.runtime.namespace
        self.seeds = Seeds()
        self.strategies = MessageStrategies()
        self.inputs = 0
        self._callables: dict[tuple[str, bool], Any] = {}
        self._health: Any = health_pb2_grpc.HealthStub(channel)  # the typing stubs declare no methods
        self._watched = [self.namespace.stream(s.domain) for s in ALL_STREAMS if s.domain not in MAY_GROW]
        self._watched.append(f"KV_{self.namespace.root}_policy")
        self._streams = [
            *self._watched,
            *(self.namespace.stream(s.domain) for s in ALL_STREAMS if s.domain in MAY_GROW),
        ]
        self.errors = ServerErrors()
        # Waits until the component's background work on what was accepted so far is done (Preparation.settle).
        self.settle: Callable[[], Awaitable[None]] | None = None

    # calls

    def _callable(self, path: str, raw: bool, response: type[Message]) -> Any:
        key = (path, raw)
        if key not in self._callables:
            serialize = (lambda body: body) if raw else (lambda message: message.SerializeToString())
            self._callables[key] = self.channel.unary_unary(
                path, request_serializer=serialize, response_deserializer=response.FromString
            )
        return self._callables[key]

    async def call(self, path: str, request: Message, system: str, response: type[Message] | None = None) -> Message:
        """A plain call (for seeding): raises on any status but OK."""
        rpc = self._find(path)
        return await self._callable(path, False, response or rpc.response_class())(
            request, metadata=((SYSTEM_HEADER, system),), timeout=CALL_TIMEOUT
        )

    def _find(self, path: str) -> Rpc:
        from tests.fuzz.targets import all_rpcs

        for rpc in all_rpcs():
            if rpc.path == path:
                return rpc
        raise KeyError(path)

    # strategies

    def requests(self, rpc: Rpc) -> st.SearchStrategy[Message]:
        name = rpc.method.input_type.full_name
        built = self.strategies.requests(rpc.method.input_type, self.seeds.requests.get(name, ()))
        structured = self.seeds.strategies.get(name, [])
        if not structured:
            return built
        # Half and half (st.one_of would flatten ``built``'s own branches and give each structured one a share).
        either = st.one_of(*structured)
        return st.booleans().flatmap(lambda use_structured: either if use_structured else built)

    def raw_requests(self, rpc: Rpc) -> st.SearchStrategy[bytes]:
        seeds = [m.SerializeToString() for m in self.seeds.requests.get(rpc.method.input_type.full_name, ())]
        return raw_bodies(seeds)

    def systems(self, rpc: Rpc, request: Message | None = None) -> st.SearchStrategy[str | None]:
        """Mostly a system the policy lets make the call (for a report: the source the request names)."""
        policy = self.running.runtime.policy.current
        rule = access_rules(self.component).get(rpc.method.name)
        preferred = self.seeds.systems.get(rpc.method.name) or preferred_systems(rule, policy) or sorted(policy.systems)
        if isinstance(rule, Report) and request is not None:
            try:
                source = resolve(request, rule.source)
            except AttributeError:
                source = None
            if isinstance(source, str) and source.isprintable() and source.isascii() and len(source) <= 256:
                preferred = [source]
        return st.one_of(
            st.sampled_from(preferred),
            st.sampled_from(preferred),
            st.sampled_from(preferred),
            st.sampled_from(sorted(policy.systems)),
            st.sampled_from(ODD_SYSTEMS),
        )

    # invariants

    async def volumes(self) -> dict[str, tuple[int, int]]:
        """(last sequence, bytes held) of every stream of the component's namespace."""

        async def state(stream: str) -> tuple[int, int]:
            try:
                info = (await self.js.stream_info(stream)).state
            except NotFoundError:
                return -1, 0
            return int(info.last_seq), int(info.bytes)

        values = await asyncio.gather(*(state(stream) for stream in self._streams))
        return dict(zip(self._streams, values, strict=True))

    async def health(self) -> str | None:
        """None when SERVING within HEALTH_TIMEOUT, else what went wrong."""
        RECORD.health_checks += 1
        try:
            answer = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return f"health check failed: {error.code().name} {error.details()}"
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return f"health answered {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"
        return None

    async def exercise(self, rpc: Rpc, body: Message | bytes, system: str | None, log: FuzzLog) -> grpc.StatusCode:
        raw = isinstance(body, bytes)
        callable_ = self._callable(rpc.path, raw, rpc.response_class())
        metadata = () if system is None else ((SYSTEM_HEADER, system),)
        if self.settle is not None:  # background work an earlier input started (a re-match) is not this one's write
            await self.settle()
        volumes = await self.volumes()
        before = {stream: last for stream, (last, _) in volumes.items() if stream in self._watched}
        self.errors.records.clear()
        task = asyncio.ensure_future(callable_(body, metadata=metadata, timeout=CALL_TIMEOUT))
        slow_health: str | None = None
        done, _ = await asyncio.wait({task}, timeout=HEALTH_TIMEOUT)
        if not done:  # a slow call: the service must still answer its health check meanwhile
            problem = await self.health()
            if problem is not None:
                slow_health = f"{problem} while {rpc.method.name} was in flight"
        code, details = grpc.StatusCode.OK, ""
        violations: int | None = None  # field violations of an INVALID_ARGUMENT (None: no BadRequest at all)
        try:
            await task
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                violations = _field_violations(error)
        volumes_after = await self.volumes()
        after = {stream: last for stream, (last, _) in volumes_after.items() if stream in self._watched}
        written = sum(max(0, volumes_after[stream][1] - volumes[stream][1]) for stream in volumes)
        self.inputs += 1
        if log.shared:
            (RECORD.raw_statuses if raw else RECORD.statuses)[rpc.name][code.name] += 1

        def fail(invariant: str, extra: str = "") -> None:
            log.add(Failure(rpc.name, invariant, code.name, extra or details, system, body, list(self.errors.records)))

        if log.shared and code in NOTABLE and (rpc.name, code.name) not in RECORD.notable:
            RECORD.notable[(rpc.name, code.name)] = Failure(rpc.name, "notable", code.name, details, system, body)
        if code in FORBIDDEN:
            fail("forbidden status")
        if code != grpc.StatusCode.OK and after != before:
            grown = {name: (before[name], after[name]) for name in after if after[name] != before[name]}
            fail("refused request wrote", f"{details[:200]} — streams grew (last seq before, after): {grown}")
        if raw and code not in FORBIDDEN | {grpc.StatusCode.INVALID_ARGUMENT} and not _decodes(rpc, body):
            fail("undecodable body not INVALID_ARGUMENT")
        if code == grpc.StatusCode.INVALID_ARGUMENT and not violations and (not raw or _decodes(rpc, body)):
            fail("INVALID_ARGUMENT without field violations", f"{details[:200]} — BadRequest: {violations}")
        size = len(body) if isinstance(body, bytes) else body.ByteSize()
        if written > max(WRITE_FLOOR, WRITE_FACTOR * size):
            grew = {
                name: volumes_after[name][1] - volumes[name][1]
                for name in volumes
                if volumes_after[name][1] != volumes[name][1]
            }
            fail("writes out of proportion", f"a {size}-byte request made the streams grow by {written} bytes: {grew}")
        if slow_health is not None:
            fail("health during a slow call", slow_health)
        if self.inputs % HEALTH_EVERY == 0 and (problem := await self.health()) is not None:
            fail("not SERVING", problem)
        return code


def _field_violations(error: grpc.aio.AioRpcError) -> int | None:
    """How many field violations the google.rpc.Status of an error carries; None when it carries no BadRequest."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return len(bad_request.field_violations)
    return None


def _decodes(rpc: Rpc, body: Message | bytes) -> bool:
    assert isinstance(body, bytes)
    try:
        rpc.request_class().FromString(body)
    except (DecodeError, ValueError, RuntimeError):
        return False
    return True


class Pool:
    """Components started on first use, each in its own namespace, all stopped at the end of the session."""

    def __init__(self, nats_url: str, redis_url: str) -> None:
        self._nats_url = nats_url
        self._redis_url = redis_url
        self._stack = AsyncExitStack()
        self._targets: dict[str, Target] = {}
        self._lock = asyncio.Lock()
        self._nc: Any = None

    async def get(self, component: Component) -> Target:
        async with self._lock:
            if component.name not in self._targets:
                self._targets[component.name] = await self._start(component)
            return self._targets[component.name]

    async def _start(self, component: Component) -> Target:
        import importlib

        if self._nc is None:
            self._nc = await nats.connect(self._nats_url)
            self._stack.push_async_callback(self._nc.drain)
        settings_class = importlib.import_module(f"{component.module}.settings").Settings
        wire = importlib.import_module(f"{component.module}.wiring").wire
        quiet = {name: value for name, value in QUIET_SETTINGS.items() if name in settings_class.model_fields}
        settings = settings_class(
            grpc_port=0,
            nats_url=self._nats_url,
            redis_url=self._redis_url,
            namespace=unique_namespace(),
            log_format="console",
            max_message_bytes=MAX_REQUEST_BYTES,
            **quiet,
        )
        preparation = PREPARATIONS.get(component.name)
        if preparation is not None and preparation.before_start is not None:
            await preparation.before_start(settings)
        running, channel, _ = await self._stack.enter_async_context(running_service(settings, wire))
        target = Target(component, running, channel, self._nc.jetstream())
        logging.getLogger().addHandler(target.errors)
        self._stack.callback(logging.getLogger().removeHandler, target.errors)
        if preparation is not None and preparation.seeds is not None:
            target.seeds = await preparation.seeds(target.call)
        if preparation is not None and preparation.settle is not None:
            settle = preparation.settle
            await settle(settings, target.js)
            target.settle = lambda: settle(settings, target.js)
        target.strategies = MessageStrategies(target.seeds.plausible)
        return target

    async def aclose(self) -> None:
        await self._stack.aclose()


# -- sizes ---------------------------------------------------------------------------------------------


def total_inputs() -> int:
    """How many inputs the whole fuzz aims at: SYNCGOV_FUZZ_INPUTS, else the CI size."""
    return int(os.environ.get("SYNCGOV_FUZZ_INPUTS", "0") or 0)


def examples_per_rpc(rpcs: Sequence[Rpc], ci_messages: int = 20, ci_raw: int = 6) -> tuple[int, int]:
    """(message examples, raw-body examples) per RPC: 80/20 of SYNCGOV_FUZZ_INPUTS, or the CI size."""
    total = total_inputs()
    if total <= 0 or not rpcs:
        return ci_messages, ci_raw
    per_rpc = -(-total // len(rpcs))
    raw = max(1, per_rpc // 5)
    return per_rpc - raw, raw
