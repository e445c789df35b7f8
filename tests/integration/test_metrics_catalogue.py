"""docs/metrics.md is the catalogue of every metric: each process's /metrics shows what it lists for that process,
and nothing named ``syncgov_`` that it does not list.

The stack runs as ``syncgov up`` runs it (one process per component, each with its metrics port), the demo
scenario drives traffic through every component (POs published, changed and acknowledged by the ERP, receipts with
findings, blocked and released invoices, exceptions raised, routed and resolved), then every process is scraped.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from libs.cli.components import COMPONENTS, Component, existing_components
from libs.runtime.consumers import ConsumerRunner, ConsumerSpec
from libs.runtime.events import EventPublisher
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.local_servers import free_port_range
from libs.runtime.metrics import RuntimeMetrics, consumer_gauges
from libs.runtime.streams import EXCEPTION, PO, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.testing import unique_namespace
from tests.integration.helpers import raised_exceptions, requests_of, syncgov_up
from tests.integration.test_jetstream_runtime import po_published

pytestmark = [pytest.mark.timeout(180)]

CATALOGUE = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
TYPES = {"counter", "gauge", "histogram"}
# Polled gauges are read every few seconds (the exception metrics every 15): how long a scrape may wait for them.
SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class Catalogued:
    name: str
    type: str
    labels: frozenset[str]
    processes: frozenset[str]  # each exposes it
    may: frozenset[str]  # may expose it (in parentheses: once it has something to report)


def catalogue() -> dict[str, Catalogued]:
    """The table of docs/metrics.md: metric name (as Prometheus shows it) -> its row."""
    rows: dict[str, Catalogued] = {}
    every = frozenset(component.name for component in COMPONENTS)
    for line in CATALOGUE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`"):
            continue
        name, kind, _unit, labels, process, meaning = cells
        name = name.strip("`")
        assert name not in rows, f"{name} is catalogued twice"
        assert meaning, name
        listed = [p.strip() for p in process.split(",")]
        processes = every if process == "every process" else frozenset(p for p in listed if not p.startswith("("))
        rows[name] = Catalogued(
            name,
            kind.split()[0],
            frozenset(re.findall(r"`([a-z_]+)`", labels)),
            processes,
            processes | {p.strip("()") for p in listed if p.startswith("(")},
        )
    return rows


def test_the_catalogue_is_well_formed():
    rows = catalogue()
    known = {component.name for component in COMPONENTS}
    assert len(rows) >= 15
    for row in rows.values():
        assert row.type in TYPES, row
        assert row.processes <= row.may <= known, row
        assert re.fullmatch(r"[a-z][a-z0-9_]*", row.name), row
        if row.type == "counter":
            assert row.name.endswith("_total"), row
        assert not {"po_id", "invoice_id", "exception_id", "object_key", "id"} & row.labels, row
    for business in (
        "syncgov_po_propagation_duration_seconds",
        "syncgov_po_awaiting_erp",
        "syncgov_receipts_with_findings",
        "syncgov_invoices_blocked_by_reason",
        "syncgov_duplicate_transactions_total",
        "syncgov_exceptions_backlog",
        "syncgov_exceptions_closure_time_seconds",
        "syncgov_consumer_lag",
        "syncgov_consumer_ack_pending",
        "syncgov_consumer_redeliveries_total",
        "syncgov_publish_duration_seconds",
        "rpc_server_call_duration_seconds",
    ):
        assert business in rows, business


@dataclass(frozen=True)
class Exposed:
    type: str
    labels: frozenset[str]
    samples: int


def scrape(port: int) -> dict[str, Exposed]:
    """Metric name as Prometheus shows it (a counter with its ``_total``) -> what the process exposes of it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, Exposed] = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = frozenset(
            label
            for sample in family.samples
            for label in sample.labels
            if label != "le" and not label.startswith("otel_")
        )
        found[name] = Exposed(family.type, labels, len(family.samples))
    return found


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``syncgov up`` on free ports: (gRPC port base, metrics port base)."""
    grpc_base = free_port_range(6)
    metrics_base = free_port_range(6)
    with syncgov_up(tmp_path / "stack", grpc_base, metrics_base):
        yield grpc_base, metrics_base


def _missing(component: Component, rows: dict[str, Catalogued], exposed: dict[str, Exposed]) -> list[str]:
    problems = []
    for row in rows.values():
        if component.name not in row.processes:
            continue
        found = exposed.get(row.name)
        if found is None or not found.samples:
            problems.append(f"{row.name} is not exposed")
        elif found.type != row.type:
            problems.append(f"{row.name} is a {found.type}, catalogued as a {row.type}")
        elif row.labels != found.labels:
            problems.append(f"{row.name} has the labels {sorted(found.labels)}, catalogued {sorted(row.labels)}")
    return problems


@pytest.mark.e2e
def test_every_process_exposes_what_the_catalogue_lists_for_it(stack):
    grpc_base, metrics_base = stack
    demo = subprocess.run(
        [sys.executable, "-m", "libs.cli", "demo", "--grpc-port-base", str(grpc_base)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "COLUMNS": "220"},
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    rows = catalogue()
    components = existing_components()
    assert len(components) == 6
    exposed: dict[str, dict[str, Exposed]] = {}
    problems: dict[str, list[str]] = {}
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        for component in components:
            exposed[component.name] = scrape(metrics_base + component.port_offset)
            problems[component.name] = _missing(component, rows, exposed[component.name])
        if not any(problems.values()) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not any(problems.values()), {name: found for name, found in problems.items() if found}

    for component in components:
        ours = {name for name in exposed[component.name] if name.startswith("syncgov_")}
        listed = {name for name, row in rows.items() if component.name in row.may}
        assert ours <= listed, f"{component.name} exposes metrics the catalogue does not list: {sorted(ours - listed)}"

    # The demo's story, read in numbers: the ERP acknowledged versions, receipts had findings, an invoice was
    # blocked and exceptions were routed to teams and some closed.
    po = _families(metrics_base, "po-publication")
    assert _value(po, "syncgov_po_propagation_duration_seconds_count") >= 1
    receipts = _families(metrics_base, "receipt-reconciliation")
    assert _value(receipts, "syncgov_receipts_with_findings") >= 1
    router = _families(metrics_base, "exception-router")
    teams = {s.labels["team"] for s in router["syncgov_exceptions_backlog"].samples}
    assert {"integration-team", "procurement-ops"} <= teams, teams
    closed = [s for s in router["syncgov_exceptions_closure_time_seconds"].samples if s.labels["quantile"] == "0.5"]
    assert any(s.labels["team"] == "accounts-payable" and s.value > 0 for s in closed), closed
    invoices = _families(metrics_base, "invoice-status")
    reasons = {s.labels["reason"] for s in invoices["syncgov_invoices_blocked_by_reason"].samples}
    assert {"price_variance", "awaiting_receipt"} <= reasons
    lag = {s.labels["consumer"] for s in router["syncgov_consumer_lag"].samples}
    assert "exception-router-intake" in lag, lag
    published = {s.labels["domain"] for s in po["syncgov_publish_duration_seconds"].samples if "domain" in s.labels}
    assert "po" in published, published


def _families(metrics_base: int, name: str) -> dict[str, Metric]:
    component = next(c for c in COMPONENTS if c.name == name)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_base + component.port_offset}/metrics", timeout=5) as r:
        text = r.read().decode()
    families: dict[str, Metric] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
    return families


def _value(families: dict[str, Metric], sample_name: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name:
                return float(sample.value)
    return 0.0


def _sums(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(instrument, labels) -> a counter's or gauge's value, a histogram's count."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = tuple(sorted((k, str(v)) for k, v in (point.attributes or {}).items()))
                    found[(metric.name, labels)] = float(getattr(point, "value", getattr(point, "count", 0)))
    return found


@pytest.mark.integration
async def test_redeliveries_hand_offs_lag_and_publish_latency_are_counted(nats_server):
    """Two messages that fail and are handed off on their third delivery: four redeliveries, two hand-offs; the
    consumer's lag reads what waits for it; every publish is timed by domain."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    metrics = RuntimeMetrics(meter)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        namespace = Namespace(unique_namespace())
        await provision_streams(js, namespace, (PO, EXCEPTION))
        tracer = TracerProvider().get_tracer("test")
        publisher = EventPublisher(requests_of(js), namespace, tracer, 5, metrics)

        async def fails(_event: object) -> None:
            raise RuntimeError("ERP adapter down")

        spec = ConsumerSpec("test-metrics", "po", "po.*.published", fails)
        runner = ConsumerRunner(
            nc, js, namespace, spec, ExceptionReporter(publisher, "tests", metrics), tracer,
            retry=lambda _name: (3, (0.05,)), metrics=metrics,
        )  # fmt: skip
        await runner.provision()
        lag = consumer_gauges(meter, js, [runner], every=0.0)  # read at every refresh
        await publisher.publish(po_published("P-M1"))
        await publisher.publish(po_published("P-M2"))
        await lag.refresh()
        consumer = (("consumer", "test-metrics"),)
        assert _sums(reader)[("syncgov.consumer.lag", consumer)] == 2
        assert _sums(reader)[("syncgov.consumer.redeliveries", consumer)] == 0
        runner.start()
        try:
            async with asyncio.timeout(10):
                while len(await raised_exceptions(js, namespace)) < 2:  # noqa: ASYNC110 - polling a server
                    await asyncio.sleep(0.05)
        finally:
            await runner.stop()
        sums = _sums(reader)
        assert sums[("syncgov.consumer.redeliveries", consumer)] == 4
        assert sums[("syncgov.consumer.handed_off", consumer)] == 2
        assert sums[("syncgov.publish.duration", (("domain", "po"),))] == 2
        assert sums[("syncgov.publish.duration", (("domain", "exception"),))] == 2
        await lag.refresh()
        assert _sums(reader)[("syncgov.consumer.lag", consumer)] == 0
        assert _sums(reader)[("syncgov.consumer.ack_pending", consumer)] == 0
    finally:
        await nc.drain()
