"""The one service runtime: everything a service needs except its domain.

``run(Settings, wire)`` owns, in this order: settings (a readable error and
exit 2 if invalid) -> logging -> telemetry -> Valkey and NATS with bounded
retries -> idempotent stream and consumer provisioning -> ``wire(runtime)``
-> grpc.aio server with health, reflection and interceptors -> consumers ->
health SERVING. On SIGTERM/SIGINT it unwinds in reverse: NOT_SERVING, stop
fetching, finish in-flight RPCs within the grace period, drain NATS, close
Valkey, flush telemetry.

``serve()`` is the same machinery as an async context manager, so tests run
a service exactly as production does, on port 0.

A port that cannot be bound (gRPC or metrics) is a ``StartupError``: ``run``
logs it as one line and exits 2, like invalid settings, instead of a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
import nats
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.policy.engine import Policy
from libs.runtime.access import AccessRule
from libs.runtime.audit import AuditRecorder
from libs.runtime.broker_access import replace_credentials
from libs.runtime.consumers import ConsumerRunner, ConsumerSpec
from libs.runtime.enforcement import OwnershipGuard
from libs.runtime.events import EventPublisher, EventReader
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.idempotency import IdempotencyStore
from libs.runtime.identity import IdentityResolver
from libs.runtime.interceptors import EdgeInterceptor
from libs.runtime.logs import setup_logging
from libs.runtime.metrics import RuntimeMetrics, consumer_gauges
from libs.runtime.policy_store import PolicyStore, PolicyView
from libs.runtime.replays import ReplayDispatcher, replay_consumer
from libs.runtime.requests import Requests
from libs.runtime.settings import RuntimeSettings
from libs.runtime.streams import ALL_STREAMS, StreamSpec, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.telemetry import Telemetry, setup_telemetry
from libs.runtime.valkey import CoalescingRedis

log = logging.getLogger(__name__)

S = TypeVar("S", bound=RuntimeSettings)
T = TypeVar("T")


class StartupError(Exception):
    """The service cannot start as configured (e.g. a port is taken): one line for the operator, exit 2."""


@dataclass
class Runtime(Generic[S]):
    """What ``wire`` receives: settings and connected infrastructure, nothing domain-specific."""

    settings: S
    namespace: Namespace
    nats: NATS
    js: JetStreamContext
    redis: Redis
    telemetry: Telemetry
    publisher: EventPublisher
    reader: EventReader
    exceptions: ExceptionReporter
    policy: PolicyView
    policy_store: PolicyStore
    audit: AuditRecorder
    metrics: RuntimeMetrics

    def idempotency_store(self, service: str) -> IdempotencyStore:
        return IdempotencyStore(self.redis, self.namespace, service, self.settings.idempotency_ttl_seconds)


@dataclass
class GrpcService:
    descriptor: ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    # Method name -> what it does to which object; the edge refuses methods without a rule.
    access: Mapping[str, AccessRule] = field(default_factory=dict)


@dataclass
class Service:
    """What ``wire`` returns."""

    grpc_services: Sequence[GrpcService]
    consumers: Sequence[ConsumerSpec] = ()
    streams: Sequence[StreamSpec] = ALL_STREAMS
    # Run once streams exist and before the server answers (e.g. rebuilding a read model from a stream).
    startup: Sequence[Callable[[], Awaitable[None]]] = ()
    # Periodic work (e.g. expiring held versions): each runs every ``interval`` seconds while serving.
    periodic: Sequence[tuple[float, Callable[[], Awaitable[None]]]] = ()
    # Work for the service's whole life (a local web server): started once serving, cancelled when it stops.
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()


@dataclass
class RunningService(Generic[S]):
    port: int
    runtime: Runtime[S]
    health: health.aio.HealthServicer
    consumers: list[ConsumerRunner] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.runtime.settings.grpc_host}:{self.port}"


async def _retry(what: str, attempts: int, backoff: float, connect: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return await connect()
        except Exception as error:
            if attempt == attempts:
                raise ConnectionError(f"could not reach {what} after {attempts} attempts: {error}") from error
            log.warning("%s not reachable (attempt %s of %s): %s", what, attempt, attempts, error)
            await asyncio.sleep(backoff)
    raise AssertionError("unreachable")


async def connect_nats(settings: RuntimeSettings) -> NATS:
    # The component's own identity (DESIGN rule 11): from the settings, or carried in the URL.
    urls = replace_credentials(settings.nats_url, settings.nats_user, settings.nats_secret())

    async def connect() -> NATS:
        return await nats.connect(
            servers=[url.strip() for url in urls.split(",")],
            name=settings.service_name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
        )

    return await _retry("NATS", settings.connect_attempts, settings.connect_backoff_seconds, connect)


async def connect_redis(settings: RuntimeSettings) -> Redis:
    # The component's ACL user (DESIGN rule 11): from the settings, or carried in the URL.
    url = replace_credentials(settings.redis_url, settings.redis_user, settings.redis_secret())
    # No per-call socket timeout: redis-py's costs ~30 µs of CPU on every call. A Valkey that stops answering
    # is caught by the watchdog instead (valkey_watchdog), which drops the connections its calls wait on.
    client = CoalescingRedis.from_url(url, socket_connect_timeout=2, health_check_interval=30)

    async def ping() -> Redis:
        await client.ping()
        return client

    return await _retry("Valkey", settings.connect_attempts, settings.connect_backoff_seconds, ping)


def grpc_server_options(settings: RuntimeSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Without this, a second process could silently share the port (SO_REUSEPORT is on by default).
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


@asynccontextmanager
async def serve(
    settings: S,
    wire: Callable[[Runtime[S]], Service],
    *,
    span_processors: Iterable[SpanProcessor] = (),
    sampler: Sampler | None = None,
) -> AsyncIterator[RunningService[S]]:
    metrics_server = _start_metrics_server(settings)
    telemetry = setup_telemetry(
        settings.service_name,
        span_processors=span_processors,
        prometheus=settings.metrics_port is not None,
        sampler=sampler,  # None: the standard variables' (libs/runtime/telemetry.traces_sampler)
    )
    namespace = Namespace(settings.namespace)
    redis = await connect_redis(settings)
    nc = await connect_nats(settings)
    server: grpc.aio.Server | None = None
    health_servicer = health.aio.HealthServicer()
    runners: list[ConsumerRunner] = []
    policy_view: PolicyView | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        js = nc.jetstream(timeout=settings.publish_timeout_seconds)
        metrics = RuntimeMetrics(telemetry.meter)
        requests = Requests(nc)
        publisher = EventPublisher(requests, namespace, telemetry.tracer, settings.publish_timeout_seconds, metrics)
        policy_store = PolicyStore(js, namespace, settings.stream_replicas)
        policy_view = PolicyView(policy_store, Policy.from_text(settings.policy_file.read_text(), revision=0))
        await policy_view.start()
        exceptions = ExceptionReporter(publisher, settings.service_name, metrics)
        runtime = Runtime(
            settings=settings,
            namespace=namespace,
            nats=nc,
            js=js,
            redis=redis,
            telemetry=telemetry,
            publisher=publisher,
            reader=EventReader(requests, namespace, settings.publish_timeout_seconds),
            exceptions=exceptions,
            policy=policy_view,
            policy_store=policy_store,
            audit=AuditRecorder(publisher, exceptions, telemetry.meter),
            metrics=metrics,
        )
        service = wire(runtime)
        await provision_streams(js, namespace, service.streams, settings.stream_replicas)
        for step in service.startup:
            await step()
        for spec in service.consumers:
            runner = ConsumerRunner(
                nc,
                js,
                namespace,
                spec,
                runtime.exceptions,
                telemetry.tracer,
                retry=lambda name: policy_view.current.retry(name),
                metrics=metrics,
            )
            try:
                await runner.provision()
            except NotFoundError:
                if not spec.optional:
                    raise
                log.error("consumer %s not started: its stream %s does not exist", runner.durable, spec.domain)
                continue
            runners.append(runner)
        if runners:  # a message one of them gave up on comes back through here when a person replays it
            dispatcher = ReplayDispatcher(
                {runner.durable: runner.spec for runner in runners}, publisher, runtime.reader
            )
            replays = ConsumerRunner(
                nc,
                js,
                namespace,
                replay_consumer(settings.service_name, dispatcher),
                runtime.exceptions,
                telemetry.tracer,
                retry=lambda name: policy_view.current.retry(name),
                metrics=metrics,
            )
            await replays.provision()
            runners.append(replays)

        identity = IdentityResolver(settings.caller_tokens, mtls=settings.tls_client_ca_file is not None)
        if identity.development_mode:
            log.warning("no SYNCGOV_CALLER_TOKENS and no mTLS: callers declare their system (development mode)")
        rules = {
            f"/{entry.descriptor.full_name}/{name}": rule
            for entry in service.grpc_services
            for name, rule in entry.access.items()
        }
        guard = OwnershipGuard(policy_view, rules, runtime.exceptions, runtime.audit)
        server = grpc.aio.server(
            interceptors=[EdgeInterceptor(identity, guard, telemetry.meter, telemetry.tracer)],
            options=grpc_server_options(settings),
        )
        names = [entry.descriptor.full_name for entry in service.grpc_services]
        for entry in service.grpc_services:
            entry.add_to_server(entry.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
        port = _bind(server, settings)
        await server.start()
        for runner in runners:
            runner.start()
        lag = consumer_gauges(telemetry.meter, js, runners)
        await lag.refresh()  # read once before serving, then every few seconds
        for interval, job in (*service.periodic, lag.periodic):
            tasks.append(asyncio.create_task(_every(interval, job), name=f"periodic {job}"))
        tasks.extend(asyncio.create_task(work(), name=f"background {work}") for work in service.background)
        timeout = settings.redis_timeout_seconds
        watchdog = valkey_watchdog(redis, timeout)
        tasks.append(asyncio.create_task(_every(min(1.0, timeout), watchdog), name="valkey watchdog"))
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving %s on %s:%s",
            ", ".join(names),
            settings.grpc_host,
            port,
            extra={"grpc_port": port, "services": names},
        )
        yield RunningService(port, runtime, health_servicer, runners)
    finally:
        await health_servicer.enter_graceful_shutdown()
        await cancel_until_done(tasks)
        if policy_view is not None:
            await policy_view.stop()
        await asyncio.gather(*(runner.stop() for runner in runners))
        if server is not None:
            await server.stop(settings.shutdown_grace_seconds)
        with contextlib.suppress(Exception):
            await nc.drain()
        await redis.aclose()
        telemetry.shutdown()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        log.info("stopped")


def _start_metrics_server(settings: RuntimeSettings) -> WSGIServer | None:
    """The Prometheus endpoint on ``SYNCGOV_METRICS_PORT``, if set; a taken port is a StartupError."""
    if settings.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(settings.metrics_port, addr=settings.grpc_host)
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on {settings.grpc_host}:{settings.metrics_port} (SYNCGOV_METRICS_PORT): "
            f"{error.strerror or error}"
        ) from None
    return server


def valkey_watchdog(redis: Redis, timeout: float) -> Callable[[], Awaitable[None]]:
    """A periodic check that Valkey answers within ``timeout``; when it does not (frozen, a stalled link), every
    connection is dropped, so calls waiting on it fail (UNAVAILABLE) instead of hanging."""

    async def check() -> None:
        try:
            await asyncio.wait_for(redis.ping(), timeout)
        except (TimeoutError, OSError, RedisError) as error:
            log.warning("Valkey did not answer within %ss (%s); dropping its connections", timeout, error)
            await redis.connection_pool.disconnect(inuse_connections=True)

    return check


async def cancel_until_done(tasks: Sequence[asyncio.Task[Any]], every: float = 0.2) -> None:
    """Cancel the tasks and wait until each ended, cancelling again those still running: on Python 3.11,
    ``asyncio.wait_for`` (which nats-py and redis-py use for every request) loses a cancellation that arrives as its
    inner future completes (CPython gh-86296), so one ``cancel()`` may leave a busy loop running for ever."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a job that failed on its way out was logged by the job's runner


async def _every(interval: float, job: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("periodic job %s failed; it runs again in %ss", job, interval)


def _bind(server: grpc.aio.Server, settings: RuntimeSettings) -> int:
    """The bound port; a taken or unbindable address is a StartupError."""
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        if settings.tls_cert_file is None:
            port = server.add_insecure_port(address)
        else:
            assert settings.tls_key_file is not None, "settings validate the certificate and key together"
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
                root_certificates=settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None,
                require_client_auth=settings.tls_client_ca_file is not None,
            )
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc raises RuntimeError("Failed to bind to address ...") and logs the cause
        port = 0
    if port == 0:
        raise StartupError(f"cannot serve gRPC on {address} (SYNCGOV_GRPC_PORT): address in use or not local")
    return port


# The collector's thresholds (young, middle, old; CPython 3.11's defaults are 700, 10, 10). A service keeps large,
# growing projections in memory (folded states, ledgers, books), and at the defaults the collector took 7% of
# po-publication's CPU and 14% of receipt-reconciliation's in `make bench`, mostly in full collections of ~250 ms
# (docs/benchmarks.md). Reference counting frees everything that is not in a cycle; young collections (now after
# 10,000 net allocations of tracked objects instead of 700) still take short-lived cycles such as an exception with
# its traceback. A full collection comes after at least 1,123 young ones (~11 million allocations) instead of 133
# (~93,000), and, as before, only once the old generation has grown by a quarter since the last.
GC_THRESHOLDS = (10_000, 20, 50)


def run(settings_class: type[S], wire: Callable[[Runtime[S]], Service]) -> None:
    """Entry point of every service's ``__main__``."""
    try:
        settings = settings_class()
    except ValidationError as error:
        problems = "\n".join(
            f"  SYNCGOV_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        )
        print(f"invalid configuration for {settings_class.__name__}:\n{problems}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    setup_logging(settings.service_name, settings.log_level, settings.log_format)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        _run_loop(_serve_until_signalled(settings, wire))
    except ConnectionError as error:
        log.error("%s", error)
        raise SystemExit(1) from None
    except StartupError as error:
        log.error("%s", error)
        raise SystemExit(2) from None


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        asyncio.run(main)
    else:
        uvloop.run(main)


SHUTDOWN_SLACK_SECONDS = 5.0  # beyond the RPC grace: consumers finishing a message, the NATS drain, Valkey


def _give_up_shutdown(deadline: float) -> None:
    log.error("shutdown did not finish within %.1fs; exiting without finishing it", deadline)
    logging.shutdown()
    os._exit(1)


async def _serve_until_signalled(settings: S, wire: Callable[[Runtime[S]], Service]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(settings, wire):
        await stop.wait()
        log.info("signal received, shutting down")
        # A shutdown step that never ends (a handler waiting on a broker that is gone) must not leave the process
        # running for ever once its parent (syncgov up, a test, the kubelet) asked it to stop.
        deadline = settings.shutdown_grace_seconds + SHUTDOWN_SLACK_SECONDS
        loop.call_later(deadline, _give_up_shutdown, deadline)
