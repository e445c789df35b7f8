"""`syncgov up` as a user runs it: real processes, health SERVING, reflection, clean stop on Ctrl-C.

The demo scenario then runs against it, and the stack is read as an operator
would: every service's /metrics, the spans every process exports over OTLP
(to a small receiver this test runs), and every process's log.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from libs.cli.components import existing_components
from libs.runtime.local_servers import free_port_range
from libs.runtime.probe import health_status, reflected_services
from libs.runtime.telemetry import DURATION_BUCKETS
from tests.integration.helpers import syncgov_up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: trace_pb2.Span.SpanKind.ValueType
    trace_id: str
    span_id: str
    parent_span_id: str


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The trace half of an OTLP collector: keeps every span the stack's processes export."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received.extend(
                    ReceivedSpan(
                        attributes.get("service.name", ""),
                        span.name,
                        span.kind,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                    )
                    for span in scope_spans.spans
                )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[OtlpReceiver, str]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def stack(tmp_path: Path, otlp_receiver: tuple[OtlpReceiver, str]):
    base = free_port_range(6)
    po_port = base + 2
    metrics_po_port = free_port_range(6) + 2
    # Every service exports its spans to the test's receiver, in batches flushed every 200 ms.
    traced = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_receiver[1], "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with syncgov_up(tmp_path / "stack", po_port - 2, metrics_po_port - 2, **traced) as (process, output):
        yield process, po_port, metrics_po_port, output, tmp_path / "stack"


async def _probe(address: str, service: str = "") -> tuple[str, list[str]]:
    async with grpc.aio.insecure_channel(address) as channel:
        return await health_status(channel, service), await reflected_services(channel)


def test_up_serves_every_existing_service_and_stops_cleanly_on_ctrl_c(stack):
    process, po_port, metrics_port, output, data_dir = stack
    components = existing_components()
    assert "po-publication" in [c.name for c in components]
    printed = "".join(output)
    for component in components:
        address = f"127.0.0.1:{component.grpc_port(po_port - 2)}"
        assert address in printed
        health, services = asyncio.run(_probe(address))
        assert health == "SERVING", component.name
        assert "grpc.health.v1.Health" in services
        assert any(name.startswith("syncgov.") for name in services), component.name
    health, _ = asyncio.run(_probe(f"127.0.0.1:{po_port}", "syncgov.po.v1.PurchaseOrderService"))
    assert health == "SERVING"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        assert response.status == 200

    children = subprocess.run(
        ["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) >= 2, "nats-server and valkey-server run with the stack's data folder"

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    remaining = process.stdout.read() if process.stdout else ""
    assert "stopped." in remaining
    still_running = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False)
    assert still_running.stdout.strip() == "", "every server the stack started is gone"
    log = (data_dir / "logs" / "po-publication.log").read_text()
    assert '"msg": "stopped"' in log


def test_up_refuses_an_unknown_component(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "libs.cli", "up", "--only", "billing", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "billing" in result.stdout


def test_demo_scenario_runs_clean_against_the_stack(stack, otlp_receiver):
    _, po_port, metrics_port, _, data_dir = stack
    receiver, _ = otlp_receiver
    result = subprocess.run(
        [sys.executable, "-m", "libs.cli", "demo", "--grpc-port-base", str(po_port - 2)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "COLUMNS": "220"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    summary = [line for line in result.stdout.splitlines() if "steps as expected" in line]
    assert summary
    done, _, total = summary[0].split()[:3]
    assert done == total
    assert int(total) >= 29
    _assert_the_warehouse_step_was_caught(result.stdout, po_port - 2)
    _assert_the_invoice_step_held(result.stdout, po_port - 2)
    _assert_the_exceptions_step_held(result.stdout, po_port - 2)

    components = existing_components()
    _assert_rpc_durations_read_right(components, metrics_port - 2)
    _assert_one_trace_from_grpc_through_nats_to_a_consumer(receiver)
    _assert_no_error_logged(data_dir / "logs", [c.name for c in components])


def _cli(*args: str, columns: int = 220) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def _assert_the_warehouse_step_was_caught(output: str, base: int) -> None:
    """The receipt prepared from version 4 was reconciled against 5, its findings raised, and the CLI reads it back."""
    run_id = re.search(r"syncgov demo (\d+)", output)
    assert run_id, output
    po_id, receipt = f"PO-DEMO-{run_id[1]}", f"erp/GR-{run_id[1]}"
    assert "the ERP receives 20, prepared from v4" in output
    exception_ids = {}
    for finding, line in (("superseded_version", r"\(document\)"), ("over_receipt", "1")):
        found = re.search(rf"│ {finding} +│ {line} +│ ({UUID}) +│", output)
        assert found, f"no {finding} with its exception id in the demo's findings table:\n{output}"
        exception_ids[finding] = found[1]
    assert f"receipts of {po_id} at version 5" in output

    address = (
        f"127.0.0.1:{next(c for c in existing_components() if c.name == 'receipt-reconciliation').grpc_port(base)}"
    )
    status = _cli("receipts", "status", po_id, "--address", address)
    assert status.returncode == 0, status.stdout + status.stderr
    # The invoice step then added line 2 (version 6) and received it.
    assert f"receipts of {po_id} at version 6" in status.stdout
    assert re.search(r"│ 1 +│ 12 +│ 20 +│ 0 +│ 0 +│ -8 +│ EA +│ yes +│", status.stdout), status.stdout
    assert re.search(r"│ 2 +│ 5 +│ 5 +│ 0 +│ 0 +│ 0 +│ EA +│ yes +│", status.stdout), status.stdout
    listed = _cli("receipts", "findings", "--finding", "superseded_version", "--address", address)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert receipt in listed.stdout
    assert exception_ids["superseded_version"] in listed.stdout
    assert exception_ids["over_receipt"] in listed.stdout


def _assert_the_invoice_step_held(output: str, base: int) -> None:
    """The early invoice was blocked awaiting its receipt, re-matched by itself and paid; the one over the price
    tolerance was blocked with its limit and exception, and released by j.doe; both read back with the CLI."""
    run_id = re.search(r"syncgov demo (\d+)", output)
    assert run_id, output
    early, priced = f"INV-{run_id[1]}-1", f"INV-{run_id[1]}-2"
    blocked = re.search(rf"blocked: awaiting_receipt; exception ({UUID})", output)
    assert blocked, f"the early invoice's reason and exception are not printed:\n{output}"
    assert re.search(rf"│ {early} +│ .+│ paid +│ - +│", output), output
    row = re.search(
        rf"│ {priced} +│ .+│ released +│ price_variance +│ upper percent 2 [^│]+│ ({UUID}) +│ j\.doe via", output
    )
    assert row, f"no released price_variance invoice with its exception in the demo's invoices table:\n{output}"

    address = f"127.0.0.1:{next(c for c in existing_components() if c.name == 'invoice-status').grpc_port(base)}"
    shown = _cli("invoices", "show", early, "--address", address, "--system", "procurement", columns=400)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"invoice {early}: paid" in shown.stdout
    assert re.search(rf"│ 1 +│ PO-DEMO-{run_id[1]}/2 +│ .+│ matched +│", shown.stdout), shown.stdout
    shown = _cli("invoices", "show", priced, "--address", address, "--system", "procurement", columns=400)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"invoice {priced}: released" in shown.stdout
    assert re.search(rf"│ 1 +│ PO-DEMO-{run_id[1]}/1 +│ .+│ upper percent 2 .+│ price_variance +│", shown.stdout), (
        shown.stdout
    )
    assert (
        "released by j.doe through ops-console: price rise agreed with the supplier by phone (overrode price_variance)"
        in " ".join(shown.stdout.split())
    ), shown.stdout
    assert f"exceptions: {row[1]}" in shown.stdout


def _assert_the_exceptions_step_held(output: str, base: int) -> None:
    """Every exception the story raised was routed to its owner team; the price variance of the released invoice was
    acknowledged and resolved by j.doe through ops-console; the CLI reads all of it back from exception-router."""
    run_id = re.search(r"syncgov demo (\d+)", output)
    assert run_id, output
    run, priced = run_id[1], f"INV-{run_id[1]}-2"
    assert f"exceptions raised by demo {run}" in output
    exception_id = r"EXC-[0-9a-f]{24}"
    row = re.search(
        rf"│ ({exception_id}) +│ price_variance +│ medium +│ resolved +│ accounts-payable +│ invoice:{priced} +│ 1 +│",
        output,
    )
    assert row, f"no resolved price_variance exception in the demo's exceptions table:\n{output}"
    refusals = re.findall(
        rf"│ {exception_id} +│ ownership_violation +│ critical +│ open +│ integration-team +│ \w+:\S*{run}\S* +│",
        output,
    )
    assert len(refusals) == 4, f"four refusals routed to integration-team expected:\n{output}"
    for finding in ("superseded_version", "over_receipt"):
        assert re.search(rf"│ {finding} +│ medium +│ open +│ procurement-ops +│ goods_receipt:erp/GR-{run} +│", output)
    # Its receipt landed, the invoice matched, invoice-status cleared it: closed without anyone.
    assert re.search(rf"│ awaiting_receipt +│ medium +│ resolved +│ accounts-payable +│ invoice:INV-{run}-1 +│", output)
    reported = re.search(rf"│ {priced} +│ .+│ released +│ price_variance +│ [^│]+│ ({UUID}) +│", output)
    assert reported, output

    address = f"127.0.0.1:{next(c for c in existing_components() if c.name == 'exception-router').grpc_port(base)}"
    # invoice-status answered with the id of its raise; the router finds the exception by it.
    shown = _cli("exceptions", "show", reported[1], "--address", address, columns=400)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"exception {row[1]}" in shown.stdout
    assert re.search(r"│ acknowledged +│ by j\.doe through ops-console at \S+Z +│", shown.stdout), shown.stdout
    assert re.search(
        r"│ resolved +│ accepted by j\.doe through ops-console at \S+Z: price rise agreed with the supplier by phone; "
        r"invoice released +│",
        shown.stdout,
    ), shown.stdout
    assert re.search(r"│ routed by +│ exceptions\.routes\[\d+\] of policy revision \d+ +│", shown.stdout), shown.stdout

    listed = _cli("exceptions", "list", "--object", f"invoice:{priced}", "--json", "--address", address)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    exceptions = json.loads(listed.stdout)
    assert [(e["exception_id"], e["type"], e["state"]) for e in exceptions] == [
        (row[1], "EXCEPTION_TYPE_PRICE_VARIANCE", "EXCEPTION_STATE_RESOLVED")
    ]
    assert exceptions[0]["resolution"]["kind"] == "RESOLUTION_KIND_ACCEPTED"
    backlog = _cli(
        "exceptions", "list", "--team", "integration-team", "--type", "ownership_violation", "--open", "--json",
        "--address", address,
    )  # fmt: skip
    assert backlog.returncode == 0, backlog.stdout + backlog.stderr
    assert len([e for e in json.loads(backlog.stdout) if run in e["object"]["object_key"]]) == 4
    summary = _cli("exceptions", "summary", "--team", "accounts-payable", "--json", "--address", address)
    assert summary.returncode == 0, summary.stdout + summary.stderr
    closures = json.loads(summary.stdout)["closure_by_team"]["accounts-payable"]
    assert int(closures["closed"]) >= 1
    assert closures["p50_seconds"] > 0


def _scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _assert_rpc_durations_read_right(components: list[Any], metrics_base: int) -> None:
    """Every service exports the RPC duration histogram, in seconds, with second-scale buckets that spread."""
    cumulative: dict[float, float] = {}
    for component in components:
        families = _scrape(metrics_base + component.port_offset)
        family = families.get("rpc_server_call_duration_seconds")
        assert family is not None, f"{component.name}: no rpc_server_call_duration_seconds in {sorted(families)}"
        assert family.type == "histogram", component.name
        counts = [s for s in family.samples if s.name.endswith("_count") and s.value > 0]
        assert counts, f"{component.name}: the demo's calls were not counted"
        assert all(s.labels["rpc_system"] == "grpc" and s.labels["rpc_service"] for s in counts), counts
        assert all(s.labels["rpc_method"] and s.labels["rpc_grpc_status_code"].isdigit() for s in counts), counts
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                cumulative[bound] = cumulative.get(bound, 0.0) + sample.value
        if component.name == "po-publication":
            published = [s for s in counts if s.labels["rpc_method"] == "PublishPurchaseOrder"]
            assert published, counts
            assert published[0].labels["rpc_service"] == "syncgov.po.v1.PurchaseOrderService"
            assert published[0].labels["rpc_grpc_status_code"] == "0"
    bounds = sorted(cumulative)
    assert bounds == [*DURATION_BUCKETS, math.inf], f"buckets are not the second-scale ones: {bounds}"
    assert 0.005 in bounds
    per_bucket = {
        bound: cumulative[bound] - (cumulative[below] if below is not None else 0.0)
        for below, bound in zip([None, *bounds[:-1]], bounds, strict=True)
    }
    total = cumulative[math.inf]
    assert total >= 10
    assert per_bucket[bounds[0]] < total, f"every call landed in the first bucket: {per_bucket}"
    assert any(per_bucket[bound] > 0 for bound in bounds[1:-1]), f"no call in a middle bucket: {per_bucket}"


def _wait_for(what: str, found: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = found()
        if result or time.monotonic() > deadline:
            assert result, what
            return result
        time.sleep(0.2)


def _assert_one_trace_from_grpc_through_nats_to_a_consumer(receiver: OtlpReceiver) -> None:
    """PublishPurchaseOrder's server span, its publish to JetStream and another process's consumer: one trace."""
    server_name = "/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"

    def chain() -> tuple[ReceivedSpan, ReceivedSpan, ReceivedSpan] | None:
        spans = receiver.spans()
        by_id = {span.span_id: span for span in spans}
        for consumer in spans:
            if consumer.kind != trace_pb2.Span.SPAN_KIND_CONSUMER or consumer.service == "po-publication":
                continue
            producer = by_id.get(consumer.parent_span_id)
            if producer is None or producer.kind != trace_pb2.Span.SPAN_KIND_PRODUCER:
                continue
            ancestor = by_id.get(producer.parent_span_id)
            while ancestor is not None and ancestor.kind != trace_pb2.Span.SPAN_KIND_SERVER:
                ancestor = by_id.get(ancestor.parent_span_id)
            if ancestor is not None and ancestor.name == server_name and ancestor.service == "po-publication":
                return ancestor, producer, consumer
        return None

    def summary() -> str:
        spans = receiver.spans()
        return f"{len(spans)} spans received, e.g. " + ", ".join(
            sorted({f"{s.service}:{trace_pb2.Span.SpanKind.Name(s.kind)}" for s in spans})
        )

    try:
        server, producer, consumer = _wait_for("the chain", chain)
    except AssertionError:
        raise AssertionError(f"no trace runs PublishPurchaseOrder -> publish -> consumer; {summary()}") from None
    assert server.trace_id == producer.trace_id == consumer.trace_id
    assert producer.service == "po-publication"
    assert producer.name.startswith("publish ")  # "publish <ns>.<domain>.*.<event>" (messaging conventions)
    assert consumer.service != producer.service, "the consumer runs in another process"


def _assert_no_error_logged(logs: Path, names: list[str]) -> None:
    """Every process logged JSON lines, none of them at ERROR or above."""
    problems = []
    for name in names:
        lines = (logs / f"{name}.log").read_text().splitlines()
        assert lines, f"{name} logged nothing"
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                problems.append(f"{name}: not a JSON log line: {line}")
                continue
            if entry.get("level") in ("error", "critical"):
                problems.append(f"{name}: {line}")
    assert not problems, "the stack logged errors:\n" + "\n".join(problems)
