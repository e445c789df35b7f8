"""Helpers for tests that run services through the real runtime, against real servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.runtime.app import RunningService, Runtime, S, Service, serve
from libs.runtime.broker_access import COMPONENT_USERS
from libs.runtime.local_servers import LocalServer

# The session's servers by the operator URL the tests hold, so a service under test connects as its
# own component (DESIGN rule 11) even when a test built its settings from the operator URL.
_SERVERS: dict[str, LocalServer] = {}


def register_servers(*servers: LocalServer) -> None:
    for server in servers:
        _SERVERS[server.url] = server


def unregister_servers(*servers: LocalServer) -> None:
    for server in servers:
        _SERVERS.pop(server.url, None)


def as_component(settings: S) -> S:
    """``settings`` with the component's own NATS and Valkey credentials in place of the operator's.

    Settings that name no known component, or servers the fixtures did not start, stay as they are."""
    if settings.service_name not in COMPONENT_USERS:
        return settings
    update: dict[str, str] = {}
    for field, url in (("nats_url", settings.nats_url), ("redis_url", settings.redis_url)):
        server = _SERVERS.get(url)
        if server is not None and server.credentials is not None:
            update[field] = server.url_for(settings.service_name)
    return settings.model_copy(update=update) if update else settings


def unique_namespace() -> str:
    """A namespace no other test uses: streams, subjects and keys stay apart."""
    return "t" + uuid.uuid4().hex[:12]


@asynccontextmanager
async def running_service(
    settings: S, wire: Callable[[Runtime[S]], Service]
) -> AsyncIterator[tuple[RunningService[S], grpc.aio.Channel, InMemorySpanExporter]]:
    """Run a service through ``serve()`` on its settings' port and yield it with a channel and its spans.

    The service connects as its component (:func:`as_component`), with the broker rights it has in
    production; ``running.runtime.settings`` holds the URLs it used. It samples as production does at
    ``OTEL_TRACES_SAMPLER_ARG=1`` (parent-based, every root), so a test sees every span whatever the default ratio."""
    spans = InMemorySpanExporter()
    settings = as_component(settings)
    async with serve(
        settings, wire, span_processors=[SimpleSpanProcessor(spans)], sampler=sampling.ParentBased(sampling.ALWAYS_ON)
    ) as running:
        channel = grpc.aio.insecure_channel(running.address)
        try:
            yield running, channel, spans
        finally:
            await channel.close()
