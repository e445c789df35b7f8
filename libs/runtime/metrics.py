"""The suite's own metrics (docs/metrics.md catalogues every one): instruments shared by the runtime, and gauges
whose values an async job refreshes.

Everything is OpenTelemetry, on the process's meter (``Telemetry.meter``); the Prometheus exporter turns
``syncgov.publish.duration`` with unit ``s`` into ``syncgov_publish_duration_seconds``, and a counter's name gets
``_total``. Labels are low-cardinality only: a stream, a consumer, an object type, a reason, a team, never an
object's id.

An observable gauge's callback runs where the exporter collects (the Prometheus endpoint's HTTP thread), so it
must neither wait on Valkey or NATS nor walk state the event loop is changing. :class:`PolledGauges` therefore
reads its sources in the event loop, at most every :data:`REFRESH_SECONDS` (a storm of scrapes costs nothing),
and its callbacks only hand out the last values read. A source that fails keeps its previous values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from nats.js import JetStreamContext
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from libs.runtime.telemetry import DURATION_BUCKETS

if TYPE_CHECKING:
    from libs.runtime.consumers import ConsumerRunner

log = logging.getLogger(__name__)

# How often polled gauges (consumer lag, read-model counts) are read again while the process serves.
REFRESH_SECONDS = 5.0
# Business durations (approval -> ERP acknowledgment, raise -> closure): seconds up to a week.
BUSINESS_DURATION_BUCKETS: tuple[float, ...] = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
    172800.0,
    604800.0,
)

# Values of one gauge: (value, labels) pairs.
Values = list[tuple[float, Mapping[str, str]]]
Source = Callable[[], Awaitable[Values]]


class RuntimeMetrics:
    """The instruments every process has: publish latency, redeliveries, hand-offs, duplicate transactions."""

    def __init__(self, meter: Meter) -> None:
        self.publish_duration = meter.create_histogram(
            "syncgov.publish.duration",
            unit="s",
            description="Time from publishing an event to JetStream's acknowledgment of it, by domain (stream).",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.redeliveries = meter.create_counter(
            "syncgov.consumer.redeliveries",
            unit="{delivery}",
            description="Deliveries of a message that had been delivered before, by consumer.",
        )
        self.handed_off = meter.create_counter(
            "syncgov.consumer.handed_off",
            unit="{message}",
            description="Messages a consumer gave up on and handed to the exception router, by consumer.",
        )
        self.duplicate_transactions = meter.create_counter(
            "syncgov.duplicate_transactions",
            unit="{transaction}",
            description="Writes refused as duplicate transactions (duplicate_transaction raised), by object type.",
        )

    def published(self, domain: str, started: float) -> None:
        self.publish_duration.record(time.perf_counter() - started, {"domain": domain})

    def expect_duplicates(self, *object_types: str) -> None:
        """Report 0 duplicate transactions of these object types until one is caught, so the series exist."""
        for object_type in object_types:
            self.duplicate_transactions.add(0, {"object_type": object_type})

    def duplicate_caught(self, object_type: str) -> None:
        self.duplicate_transactions.add(1, {"object_type": object_type})


class PolledGauges:
    """Observable gauges whose values ``refresh`` reads in the event loop (a service's periodic job and start-up
    step); the exporter's callbacks return the last values read. A gauge with no labels always reports (0 until
    its first read), so it shows on /metrics from the start."""

    def __init__(self, meter: Meter, every: float = REFRESH_SECONDS) -> None:
        self._meter = meter
        self._every = every
        self._sources: list[tuple[str, Source]] = []
        self._values: dict[str, Values] = {}
        self._read_at = float("-inf")

    def gauge(self, name: str, *, unit: str, description: str, source: Source, labelled: bool = False) -> None:
        self._sources.append((name, source))
        self._values[name] = [] if labelled else [(0.0, {})]
        self._meter.create_observable_gauge(name, callbacks=[self._callback(name)], unit=unit, description=description)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, dict(labels)) for value, labels in self._values[name]]

        return observe

    async def refresh(self) -> None:
        """Read every source again, unless they were read less than half the interval ago."""
        now = time.monotonic()
        if now - self._read_at < self._every / 2:
            return
        self._read_at = now
        for name, source in self._sources:
            try:
                self._values[name] = await source()
            except Exception as error:  # a metric must never take the service down; the old values stay
                log.warning("metric %s not refreshed: %r", name, error)

    @property
    def periodic(self) -> tuple[float, Callable[[], Awaitable[None]]]:
        """The job to list in ``Service.periodic``."""
        return (self._every, self.refresh)


def consumer_gauges(
    meter: Meter, js: JetStreamContext, runners: Sequence[ConsumerRunner], every: float = REFRESH_SECONDS
) -> PolledGauges:
    """Lag (messages not yet delivered) and pending acks (delivered, not yet acknowledged) of each durable consumer
    of the process, from JetStream's consumer info, read at most every REFRESH_SECONDS."""
    infos: dict[str, tuple[float, float]] = {}

    async def read() -> None:
        for runner in runners:
            try:
                info = await js.consumer_info(runner.stream, runner.durable, timeout=2.0)
            except Exception as error:
                log.warning("consumer info of %s not read: %r", runner.durable, error)
                continue
            infos[runner.spec.name] = (float(info.num_pending or 0), float(info.num_ack_pending or 0))

    async def lag() -> Values:
        await read()
        return [(pending, {"consumer": name}) for name, (pending, _) in sorted(infos.items())]

    async def ack_pending() -> Values:
        return [(acks, {"consumer": name}) for name, (_, acks) in sorted(infos.items())]

    gauges = PolledGauges(meter, every)
    gauges.gauge(
        "syncgov.consumer.lag",
        unit="{message}",
        description="Messages of a durable consumer's stream it has not been delivered yet (JetStream num_pending).",
        source=lag,
        labelled=True,
    )
    gauges.gauge(
        "syncgov.consumer.ack_pending",
        unit="{message}",
        description="Messages delivered to a durable consumer and not yet acknowledged (JetStream num_ack_pending).",
        source=ack_pending,
        labelled=True,
    )
    return gauges
