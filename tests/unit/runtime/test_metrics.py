"""Polled gauges hand out what the event loop last read; the runtime's counters start at 0 for known labels."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from libs.runtime.metrics import PolledGauges, RuntimeMetrics, Values


def _points(reader: InMemoryMetricReader) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [
                    (getattr(point, "value", getattr(point, "count", None)), dict(point.attributes or {}))
                    for point in metric.data.data_points
                ]
    return found


def test_a_polled_gauge_reports_the_last_read_and_keeps_it_when_a_read_fails():
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    gauges = PolledGauges(meter, every=0.0)
    outcomes: list[Values | Exception] = [[(3.0, {})], RuntimeError("valkey down")]
    reads = iter(outcomes)

    async def source() -> Values:
        value = next(reads)
        if isinstance(value, Exception):
            raise value
        return value

    async def by_reason() -> Values:
        return [(1.0, {"reason": "price_variance"})]

    gauges.gauge("syncgov.test.count", unit="{thing}", description="", source=source)
    gauges.gauge("syncgov.test.by_reason", unit="{thing}", description="", source=by_reason, labelled=True)
    assert _points(reader) == {"syncgov.test.count": [(0.0, {})]}  # before the first read: 0, no labelled series

    asyncio.run(gauges.refresh())
    points = _points(reader)
    assert points["syncgov.test.count"] == [(3.0, {})]
    assert points["syncgov.test.by_reason"] == [(1.0, {"reason": "price_variance"})]

    asyncio.run(gauges.refresh())  # the source fails: the last value stays
    assert _points(reader)["syncgov.test.count"] == [(3.0, {})]


def test_refreshes_closer_than_half_the_interval_read_nothing():
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("test")
    gauges = PolledGauges(meter, every=60.0)
    calls = []

    async def source() -> Values:
        calls.append(1)
        return []

    gauges.gauge("syncgov.test.count", unit="{thing}", description="", source=source)
    asyncio.run(gauges.refresh())
    asyncio.run(gauges.refresh())
    assert len(calls) == 1
    assert gauges.periodic[0] == 60.0


def test_duplicate_transactions_start_at_zero_per_object_type():
    reader = InMemoryMetricReader()
    metrics = RuntimeMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    metrics.expect_duplicates("purchase_order", "invoice")
    metrics.duplicate_caught("invoice")
    points = sorted(_points(reader)["syncgov.duplicate_transactions"], key=lambda p: p[1]["object_type"])
    assert points == [(1, {"object_type": "invoice"}), (0, {"object_type": "purchase_order"})]
