"""Helpers for tests that run services through the real runtime, against real servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.runtime.app import RunningService, Runtime, S, Service, serve


def unique_namespace() -> str:
    """A namespace no other test uses: streams, subjects and keys stay apart."""
    return "t" + uuid.uuid4().hex[:12]


@asynccontextmanager
async def running_service(
    settings: S, wire: Callable[[Runtime[S]], Service]
) -> AsyncIterator[tuple[RunningService[S], grpc.aio.Channel, InMemorySpanExporter]]:
    """Run a service through ``serve()`` on its settings' port and yield it with a channel and its spans."""
    spans = InMemorySpanExporter()
    async with serve(settings, wire, span_processors=[SimpleSpanProcessor(spans)]) as running:
        channel = grpc.aio.insecure_channel(running.address)
        try:
            yield running, channel, spans
        finally:
            await channel.close()
