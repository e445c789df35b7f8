"""Benchmark: the governed write paths (PublishPurchaseOrder, ChangePurchaseOrder, PostGoodsReceipt,
SubmitInvoice) beside
two raw baselines, in one run.

    make bench                      # or: .venv/bin/python bench/publish_po.py --seconds 8

Scenarios, each at concurrency 1 and 64, against servers this script starts:
  governed       gRPC -> edge (identity, bounds, ownership) -> validate -> decide -> JetStream publish with
                 ack -> read model (Valkey), through po-publication as its own process
  governed-traced       governed, through a second po-publication that traces at the default sampling
                        (libs/runtime/telemetry.py: parent-based, ratio 0.1) and exports its spans over OTLP/gRPC to
                        a sink (bench/otlp_sink.py) standing in for a collector; every other scenario runs with
                        tracing off (OTEL_TRACES_SAMPLER=always_off). Its ratio to governed is the cost of tracing.
  governed-change       a change order (v2) of an order this service published: its folded state is cached
  governed-change-cold  a change order of an order another replica published: the state is folded from the
                        stream first (what every change cost before states were cached)
  governed-receipt      a goods receipt (one line, part of the ordered quantity) posted by the ERP against an
                        order published beforehand, through receipt-reconciliation as its own process: edge
                        (incl. the site check) -> validate -> the order's newest PO event (one direct get) ->
                        the document index (Valkey) -> decide -> JetStream publish with ack -> index write
  governed-invoice      SubmitInvoice of one line (4 EA at the PO's price, 19% tax) by procurement, billing an
                        order published and received (4 EA) beforehand, through invoice-status as its own
                        process (each order at its own price, so amounts differ as a supplier's do): edge
                        -> validate -> the supplier (memory) -> the order's newest PO event and its
                        newest receipt event (two direct gets) -> three-way match and duplicate check (memory)
                        -> decide -> JetStream publish with ack -> read models
  raw-composite  a bare grpc.aio handler: one Valkey SET NX + one JetStream publish with ack
  raw-publish    nats-py JetStream publish-with-ack of the same bytes, no gRPC, no Valkey
Each governed scenario is measured in alternating 0.5 s slices with the raw composite (its ratio is to those slices),
with the services off its path stopped meanwhile (--bystanders-run keeps them running); --baseline-tree PATH adds
another checkout's po-publication to the governed and governed-change rotations, and its invoice-status (in a
namespace of its own, with this checkout's po-publication and receipt-reconciliation there) to the governed-invoice
one. Only each slice's steady part counts:
the calls answered from 0.15 s after its start (--settle) to its end, with the CPU used over that window; every
request a scenario sends is serialized before the clock starts, as the raw composite's is.
Prints RPS, p50 and p99 per scenario, the governed/raw-composite ratio and the governed-traced/governed one,
with the spans the sink received. Figures only:
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import nats
import uvloop
from google.type import date_pb2, decimal_pb2, money_pb2

from syncgov.invoice.v1 import invoice_pb2, invoice_service_pb2
from syncgov.po.v1 import po_pb2, po_service_pb2
from syncgov.receipt.v1 import receipt_pb2, receipt_service_pb2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.runtime.app import GC_THRESHOLDS
from libs.runtime.local_servers import NatsServer, ValkeyServer, die_with_parent, free_port
from libs.runtime.probe import health_status
from libs.runtime.streams import PO, provision_streams
from libs.runtime.subjects import Namespace
from tests.integration.helpers import sample_order, seed_supplier

Call = Callable[[int], Awaitable[object]]
# The services are paused (SIGSTOP) while other paths are measured: were this script killed meanwhile, a SIGTERM would
# wait for ever behind the stop, so they are SIGKILLed when it dies (its normal end stops them with SIGTERM).
KILLED_WITH_PARENT = functools.partial(die_with_parent, signal.SIGKILL)
COUNTER = itertools.count()  # one sequence for the whole run: every governed request is a new PO
PREPARED = 1_000_000_000  # where the measured publishes' order numbers start, apart from COUNTER's


def _fields(message) -> dict:
    return {field.name: value for field, value in message.ListFields()}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time each process has used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / ticks
    return used


async def measure(
    call: Call,
    concurrency: int,
    seconds: float,
    pids: dict[str, int],
    samples: list[float] | None = None,
    settle: float = 0.0,
) -> dict[str, float]:
    """One slice of ``call``: the calls answered and the CPU each process used (``cpu_s_<name>``) in its steady part,
    and that part's length; the answered calls' latencies are added to ``samples`` (``combined`` makes the figures).

    Only the steady part counts: the calls answered from ``settle`` seconds after the start to the deadline, over
    that window's time, with the CPU the processes used in that same window. The start (``concurrency`` calls arriving
    at once at a service that was just let go on, its timers catching up) and the drain (the last calls answered
    after the deadline, with fewer and fewer in flight) are worked through but not counted: they cost a path that
    answers in 100 ms more than one that answers in 5 ms, and the alternating slices have many of them. Calls count
    by when they were answered (a call of the start answered in the window counts, with its latency); the service
    being saturated through the window, they are answered at its steady rate whatever waves the start set off. A
    window in which no call was answered (a path answering more slowly than the window lasts) counts as that: no
    calls over its time, its CPU spent towards the calls the other slices answered."""
    latencies: list[float] = []
    answered: list[float] = []  # when each call was answered, beside its latency
    started = time.perf_counter()
    deadline = started + seconds
    window: list[tuple[float, dict[str, float]]] = []  # (when, CPU so far) at the window's start and end

    def mark() -> None:
        window.append((time.perf_counter(), cpu_seconds(pids)))

    loop = asyncio.get_running_loop()
    if settle > 0:
        loop.call_later(settle, mark)
    else:
        mark()
    ending = loop.call_later(seconds, mark)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            await call(next(COUNTER))
            done = time.perf_counter()
            latencies.append(done - sent)
            answered.append(done)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if len(window) < 2:  # every worker left before the deadline's callback ran
        ending.cancel()
        mark()
    (opened, cpu_before), (closed, cpu_after) = window[0], window[-1]
    counted = [latency for latency, at in zip(latencies, answered, strict=True) if opened <= at <= closed]
    if samples is not None:
        samples.extend(counted)
    return {
        **{f"cpu_s_{name}": cpu_after[name] - cpu_before[name] for name in pids},
        "seconds": closed - opened,
        "count": len(counted),
    }


Tally = tuple[list[dict[str, float]], list[float]]  # one scenario's slices and latencies


async def measure_pair(
    calls: dict[str, Call],
    concurrency: int,
    seconds: float,
    pids: dict[str, dict[str, int]],
    tallies: dict[str, Tally],
    step: float = 0.5,
    settle: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Each call measured in alternating slices of ``step`` seconds (A B C C B A ...), ``seconds`` each in all (rounded
    up to whole slices), so what else loads the machine meanwhile loads all alike: for a ratio of two paths on a shared
    machine. During a slice the other calls' servers are stopped, so work one path leaves behind (a consumer of its own
    events, a span exporter) is done in its own slices, not in the next path's. Each call's slices and latencies are
    added to its tally too."""
    order = list(calls)
    spent = 0.0
    while spent < seconds:
        for name in order:
            slices, samples = tallies[name]
            others = {pids[other]["server"] for other in calls} - {pids[name]["server"], pids[name]["client"]}
            with paused(others):
                slices.append(await measure(calls[name], concurrency, step, pids[name], samples, settle))
        order.reverse()
        spent += step
    return {name: combined(*tallies[name]) for name in calls}


def combined(slices: list[dict[str, float]], samples: list[float]) -> dict[str, float]:
    """One scenario's figures from its slices (``measure``) and their latencies: RPS, latency percentiles, CPU per
    call of each process (``cpu_us_<name>``)."""
    count = sum(each["count"] for each in slices)
    seconds = sum(each["seconds"] for each in slices)
    if not count:
        raise RuntimeError(f"no call was answered in {len(slices)} slices ({seconds:.2f}s of steady windows)")
    latencies = sorted(samples)
    cpu = {
        key.replace("cpu_s_", "cpu_us_"): sum(each[key] for each in slices) / count * 1e6
        for key in slices[0]
        if key.startswith("cpu_s_")
    }
    return {
        **cpu,
        "rps": count / seconds,
        "seconds": seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "count": count,
    }


@contextlib.contextmanager
def paused(pids: Iterable[int]) -> Iterator[None]:
    """Stop these processes (SIGSTOP) for the block and let them go on after it (SIGCONT): the services that only
    react to the measured path's events (invoice-status re-matching every PO event, po-publication checking every
    receipt against its order) would otherwise take the two cores from the path being measured, which a raw
    baseline never shares. Their work is only deferred: they catch up after the block, before the next scenario."""
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


async def retried(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    request: bytes,
    metadata: tuple[tuple[str, str], ...],
    attempts: int = 12,
) -> bytes:
    """An unmeasured call (the fills) retried while UNAVAILABLE, as the services tell their callers to: a service the
    bench paused may have lost its broker connection for a moment (nats-server drops a client that stops reading)."""
    for attempt in range(attempts - 1):
        try:
            return await call(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
    return await call(request, metadata=metadata)  # the last attempt's error is the caller's


def label(process: subprocess.Popen[bytes]) -> str:
    """What a started process runs: the service module or the script."""
    arguments = [str(argument) for argument in cast(list[Any], process.args)]
    if "-m" in arguments and arguments[-2] == "-m":
        return arguments[-1].rpartition(".")[2]
    if "-c" in arguments:  # another checkout's service, run through runpy
        return "baseline " + arguments[-1].partition("'services.")[2].partition("'")[0]
    scripts = [argument for argument in arguments if argument.endswith(".py")]
    return Path(scripts[0]).stem if scripts else Path(arguments[0]).name


async def wait_quiet(pids: dict[str, int], scenario: str, timeout: float = 300) -> float:
    """Wait until the servers and services together use under 5% of a core over half a second (work left over
    from an earlier scenario, e.g. po-publication checking every receipt against its order, would slow the next
    scenario and flatter or wrong its ratio); the seconds waited."""
    started = time.monotonic()
    used: dict[str, float] = {}
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pids)
        await asyncio.sleep(0.5)
        after = cpu_seconds(pids)
        used = {name: after[name] - before[name] for name in pids}
        if sum(used.values()) < 0.025:  # idle processes use ~0.010
            return time.monotonic() - started
    ranked = sorted(used.items(), key=lambda item: -item[1])[:3]
    busiest = ", ".join(f"{name} {seconds / 0.5:.0%}" for name, seconds in ranked)
    print(
        f"before {scenario}: the servers never went quiet within {timeout:.0f}s (busiest over the last half second, "
        f"as a share of one core: {busiest}); measuring anyway",
        file=sys.stderr,
    )
    return time.monotonic() - started


async def wait_consumers_idle(js, namespace: Namespace, domains: tuple[str, ...], timeout: float = 120) -> None:
    """Wait until every durable consumer of these streams has handled everything (the fills' events)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [info for domain in domains for info in await js.consumers_info(namespace.stream(domain))]
        if all(info.num_pending == 0 and info.num_ack_pending == 0 for info in infos):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the services' consumers did not catch up with the fill")


async def wait_serving(address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        while await health_status(channel) != "SERVING":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} did not become SERVING")
            await asyncio.sleep(0.2)


async def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


SCENARIOS = (
    "governed",
    "governed-traced",
    "governed-change",
    "governed-change-cold",
    "governed-receipt",
    "governed-invoice",
    "raw-composite",
    "raw-publish",
)
# With --baseline-tree: governed, governed-change and governed-invoice there.
BASELINE_SCENARIOS = ("baseline", "baseline-change", "baseline-invoice")


async def run(
    seconds: float,
    sync_always: bool,
    concurrencies: list[int],
    profile: Path | None = None,
    only: tuple[str, ...] = SCENARIOS,
    trace_ratio: float | None = None,
    bystanders_run: bool = False,
    baseline_tree: Path | None = None,
    profiled: str = "po-publication",
    step: float = 0.5,
    settle: float = 0.15,
) -> None:
    def under_profile(service: str) -> list[str]:
        """cProfile's arguments for the service ``--profile`` names (the measured process), none for the rest."""
        return ["-m", "cProfile", "-o", str(profile)] if profile is not None and service == profiled else []

    workdir = Path(tempfile.mkdtemp(prefix="syncgov-bench-"))
    nats_server = NatsServer(data_dir=workdir / "nats", sync_always=sync_always).start()
    valkey = ValkeyServer(data_dir=workdir / "valkey").start()
    processes: list[subprocess.Popen[bytes]] = []
    sink: subprocess.Popen[bytes] | None = None  # the OTLP sink of the traced scenario, when it runs
    try:
        namespace = "bench" + uuid.uuid4().hex[:6]
        env = {
            # Tracing off unless a scenario says otherwise, whatever OTEL_* the shell holds.
            **{name: value for name, value in os.environ.items() if not name.startswith("OTEL_")},
            "OTEL_TRACES_SAMPLER": "always_off",
            "SYNCGOV_NATS_URL": nats_server.url,
            "SYNCGOV_REDIS_URL": valkey.url,
            "SYNCGOV_NAMESPACE": namespace,
            "SYNCGOV_LOG_LEVEL": "ERROR",
        }
        await seed_supplier(nats_server.url, namespace, "SUP-ACME")  # the supplier every benchmark order names

        def start_service(
            module: str, port: int, *, may_profile: bool = False, namespace_of_it: str = namespace
        ) -> None:
            """This checkout's ``services.<module>`` on ``port``; under cProfile if ``--profile`` names it."""
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        *(under_profile(module.replace("_", "-")) if may_profile else []),
                        "-m",
                        f"services.{module}",
                    ],
                    cwd=ROOT,
                    env={**env, "SYNCGOV_NAMESPACE": namespace_of_it, "SYNCGOV_GRPC_PORT": str(port)},
                    preexec_fn=KILLED_WITH_PARENT,  # dies with this script, however it ends, paused or not
                )
            )

        service_port, raw_port = free_port(), free_port()
        start_service("po_publication", service_port, may_profile=True)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        raw_ns = Namespace("raw" + uuid.uuid4().hex[:6])
        await provision_streams(js, raw_ns, (PO,))
        raw_root = f"{raw_ns.root}.po"
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "raw_composite.py"),
                    "--port",
                    str(raw_port),
                    "--nats-url",
                    nats_server.url,
                    "--redis-url",
                    valkey.url,
                    "--subject-root",
                    raw_root,
                ],
                preexec_fn=KILLED_WITH_PARENT,
            )
        )
        # A second replica in the same namespace: orders it publishes are ones the measured service has never
        # seen, so changing them folds their history from the stream (its state cache is cold for them).
        replica_port = free_port()
        start_service("po_publication", replica_port)
        # receipt-reconciliation in the same namespace: it reads the orders po-publication publishes.
        receipt_port = free_port()
        start_service("receipt_reconciliation", receipt_port, may_profile=True)
        # invoice-status in the same namespace: it reads the orders and the receipts of the two services above.
        invoice_port = free_port()
        start_service("invoice_status", invoice_port, may_profile=True)
        # Tracing on at the default sampling, exported over OTLP to a sink: a po-publication of its own, so the
        # traced and the untraced publish differ in nothing else.
        traced_port, sink_port = free_port(), free_port()
        traced: subprocess.Popen[bytes] | None = None
        if "governed-traced" in only:
            sink = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "otlp_sink.py"), "--port", str(sink_port)],
                stdout=subprocess.PIPE,
                preexec_fn=KILLED_WITH_PARENT,
            )
            traced_env = {name: value for name, value in env.items() if name != "OTEL_TRACES_SAMPLER"}
            if trace_ratio is not None:  # else the services' default
                traced_env["OTEL_TRACES_SAMPLER_ARG"] = str(trace_ratio)
            traced = subprocess.Popen(
                [sys.executable, "-m", "services.po_publication"],
                cwd=ROOT,
                env={
                    **traced_env,
                    "SYNCGOV_GRPC_PORT": str(traced_port),
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                },
                preexec_fn=KILLED_WITH_PARENT,  # dies with this script, however it ends, paused or not
            )
            processes.extend((sink, traced))
            await wait_port(sink_port)
            await wait_serving(f"127.0.0.1:{traced_port}")
        await wait_serving(f"127.0.0.1:{service_port}")
        await wait_serving(f"127.0.0.1:{invoice_port}")
        await wait_serving(f"127.0.0.1:{replica_port}")
        await wait_serving(f"127.0.0.1:{receipt_port}")

        # Another checkout's services (--baseline-tree), measured in the same alternating slices as this one's, so a
        # change is compared with the code before it on the same machine at the same moment, each in a namespace of
        # its own: its po-publication (the publish and change scenarios), its invoice-status (beside this checkout's
        # po-publication and receipt-reconciliation, which publish and receive the orders it bills; in one namespace
        # two invoice-status processes would each fold the other's invoices).
        def start_baseline(module: str, namespace_of_it: str, port: int) -> subprocess.Popen[bytes]:
            assert baseline_tree is not None
            # At this checkout's collector thresholds: the comparison is of the code, not of the collector's settings.
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"import gc, runpy; gc.set_threshold(*{GC_THRESHOLDS!r}); "
                    f"runpy.run_module('services.{module}', run_name='__main__', alter_sys=True)",
                ],
                cwd=baseline_tree,
                env={
                    **env,
                    "PYTHONPATH": f"{baseline_tree / 'libs' / 'genproto'}{os.pathsep}{baseline_tree}",
                    "SYNCGOV_NAMESPACE": namespace_of_it,
                    "SYNCGOV_GRPC_PORT": str(port),
                },
                preexec_fn=KILLED_WITH_PARENT,  # dies with this script, however it ends, paused or not
            )
            processes.append(process)
            return process

        baseline_port, invoice_baseline_port = free_port(), free_port()
        baseline: subprocess.Popen[bytes] | None = None
        invoice_baseline: subprocess.Popen[bytes] | None = None
        if baseline_tree is not None and {"governed", "governed-change"} & set(only):
            await seed_supplier(nats_server.url, namespace + "b", "SUP-ACME")
            baseline = start_baseline("po_publication", namespace + "b", baseline_port)
            await wait_serving(f"127.0.0.1:{baseline_port}")
        invoiced_ns = namespace + "i"  # the baseline invoice-status's
        orders_for_baseline_port, receipts_for_baseline_port = free_port(), free_port()
        if baseline_tree is not None and "governed-invoice" in only:
            if (baseline_tree / "services" / "invoice_status").is_dir():
                await seed_supplier(nats_server.url, invoiced_ns, "SUP-ACME")
                start_service("po_publication", orders_for_baseline_port, namespace_of_it=invoiced_ns)
                start_service("receipt_reconciliation", receipts_for_baseline_port, namespace_of_it=invoiced_ns)
                invoice_baseline = start_baseline("invoice_status", invoiced_ns, invoice_baseline_port)
                for port in (orders_for_baseline_port, receipts_for_baseline_port, invoice_baseline_port):
                    await wait_serving(f"127.0.0.1:{port}")
            else:
                print(f"{baseline_tree} has no invoice-status: governed-invoice has no baseline", file=sys.stderr)
        await wait_port(raw_port)

        template = sample_order("BENCH")
        payload = po_service_pb2.PublishPurchaseOrderRequest(purchase_order=template).SerializeToString()
        service_channel = grpc.aio.insecure_channel(f"127.0.0.1:{service_port}")
        raw_channel = grpc.aio.insecure_channel(f"127.0.0.1:{raw_port}")
        raw_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = raw_channel.unary_unary("/bench.RawComposite/Do")
        metadata = (("x-syncgov-system", "procurement"),)
        run_id = uuid.uuid4().hex[:8]

        # The measured publishes' requests are serialized before the clock starts, as the raw scenarios' bytes are,
        # so the client's protobuf work does not take CPU from the service being measured. They take their order
        # numbers from a range of their own (every other call, fills included, counts from 0).
        prepared = [
            po_service_pb2.PublishPurchaseOrderRequest(
                purchase_order=po_pb2.PurchaseOrder(**{**_fields(template), "po_id": f"PO-{run_id}-{PREPARED + n}"})
            ).SerializeToString()
            for n in range(int((seconds + 2) * 3000 * len(concurrencies)) + 10_000)
        ]
        next_prepared = itertools.count(PREPARED)
        publish_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = service_channel.unary_unary(
            "/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"
        )

        published: collections.deque[int] = collections.deque()  # orders the measured service published
        published_elsewhere: collections.deque[int] = collections.deque()  # orders the other replica published
        replica_channel = grpc.aio.insecure_channel(f"127.0.0.1:{replica_port}")
        replica_publish: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = replica_channel.unary_unary(
            "/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"
        )

        def publish_request(n: int) -> bytes:
            if PREPARED <= n < PREPARED + len(prepared):
                return prepared[n - PREPARED]
            order = po_service_pb2.PublishPurchaseOrderRequest()
            order.purchase_order.CopyFrom(template)
            order.purchase_order.po_id = f"PO-{run_id}-{n}"
            return order.SerializeToString()

        async def governed(_: int) -> object:
            n = next(next_prepared)
            answer = await publish_call(publish_request(n), metadata=metadata)
            published.append(n)
            return answer

        traced_channel = grpc.aio.insecure_channel(f"127.0.0.1:{traced_port}")
        traced_publish: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = traced_channel.unary_unary(
            "/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"
        )

        async def governed_traced(_: int) -> object:
            return await traced_publish(publish_request(next(next_prepared)), metadata=metadata)

        async def fill(
            pool: collections.deque[int], call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], count: int
        ) -> None:
            """Publish orders, unmeasured, until ``pool`` holds ``count`` of them to change."""

            async def worker() -> None:
                while len(pool) < count:
                    n = next(COUNTER)
                    await retried(call, publish_request(n), metadata)
                    pool.append(n)

            await asyncio.gather(*(worker() for _ in range(64)))

        # A change order (version 2, one quantity changed) of an order the publish scenario created; the
        # change path reads the order's history from the stream before it writes.
        change_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = service_channel.unary_unary(
            "/syncgov.po.v1.PurchaseOrderService/ChangePurchaseOrder"
        )
        second = po_pb2.PurchaseOrder()
        second.CopyFrom(template)
        second.version = 2
        second.lines[0].quantity.value = "11"

        def changing(
            pool: collections.deque[int],
            newest_first: bool,
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = change_call,
        ) -> Call:
            # Warm: the orders published last, whose states the service still holds (as an order changed
            # while it is active would be); cold: orders the service never saw.
            async def change(_: int) -> object:
                if not pool:
                    raise RuntimeError("the change scenario ran out of published orders")
                second.po_id = f"PO-{run_id}-{pool.pop() if newest_first else pool.popleft()}"
                request = po_service_pb2.ChangePurchaseOrderRequest(purchase_order=second).SerializeToString()
                return await call(request, metadata=metadata)

            return change

        governed_change, governed_change_cold = changing(published, True), changing(published_elsewhere, False)

        baseline_channel = grpc.aio.insecure_channel(f"127.0.0.1:{baseline_port}")
        baseline_publish_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = baseline_channel.unary_unary(
            "/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"
        )
        baseline_published: collections.deque[int] = collections.deque()  # orders the baseline published

        async def baseline_publish(_: int) -> object:
            n = next(next_prepared)
            answer = await baseline_publish_call(publish_request(n), metadata=metadata)
            baseline_published.append(n)
            return answer

        baseline_change = changing(
            baseline_published,
            True,
            baseline_channel.unary_unary("/syncgov.po.v1.PurchaseOrderService/ChangePurchaseOrder"),
        )

        receipt_channel = grpc.aio.insecure_channel(f"127.0.0.1:{receipt_port}")
        post_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = receipt_channel.unary_unary(
            "/syncgov.receipt.v1.ReceiptReconciliationService/PostGoodsReceipt"
        )
        erp = (("x-syncgov-system", "erp"),)
        receivable: collections.deque[int] = collections.deque()  # orders published for the receipt scenario
        # The receipts and invoices of the measured calls, serialized before the clock starts (as the publishes' are):
        # one for each order published (and received) beforehand, named after it.
        receipts_ready: collections.deque[bytes] = collections.deque()
        invoices_ready: collections.deque[bytes] = collections.deque()

        def receipt_request(n: int, order: int) -> bytes:
            document = receipt_pb2.GoodsReceipt(
                receipt_id=f"GR-{run_id}-{n}",
                po_id=f"PO-{run_id}-{order}",
                po_version=1,
                site_id=template.ship_to_site,
                kind=receipt_pb2.RECEIPT_KIND_RECEIPT,
            )
            document.lines.add(
                line_number=1, po_line_number=1, quantity=decimal_pb2.Decimal(value="4"), unit_of_measure="EA"
            )
            return receipt_service_pb2.PostGoodsReceiptRequest(receipt=document).SerializeToString()

        async def governed_receipt(_: int) -> object:
            if not receipts_ready:
                raise RuntimeError("the receipt scenario ran out of published orders")
            return await post_call(receipts_ready.popleft(), metadata=erp)

        invoice_channel = grpc.aio.insecure_channel(f"127.0.0.1:{invoice_port}")
        submit_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = invoice_channel.unary_unary(
            "/syncgov.invoice.v1.InvoiceStatusService/SubmitInvoice"
        )

        def cents_of(order: int) -> int:
            """Line 1's unit price in cents: the orders (and so the invoices' amounts) differ, as a supplier's do."""
            return 1_000 + order % 9_973

        def priced_order(order: int) -> bytes:
            request = po_service_pb2.PublishPurchaseOrderRequest()
            request.purchase_order.CopyFrom(template)
            request.purchase_order.po_id = f"PO-{run_id}-{order}"
            cents = cents_of(order)
            request.purchase_order.lines[0].unit_price.units = cents // 100
            request.purchase_order.lines[0].unit_price.nanos = cents % 100 * 10_000_000
            return request.SerializeToString()

        async def fill_received(
            count: int,
            ready: collections.deque[bytes] = invoices_ready,
            publish: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = publish_call,
            post: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = post_call,
        ) -> None:
            """Publish orders (line 1 at its own price) and post a receipt of 4 EA on line 1 of each, unmeasured."""

            async def worker() -> None:
                while len(ready) < count:
                    n = next(COUNTER)
                    await retried(publish, priced_order(n), metadata)
                    await retried(post, receipt_request(n, n), erp)
                    ready.append(invoice_request(f"{run_id}-{n}", n))

            await asyncio.gather(*(worker() for _ in range(64)))

        async def governed_invoice(_: int) -> object:
            if not invoices_ready:
                raise RuntimeError("the invoice scenario ran out of received orders")
            return await submit_call(invoices_ready.popleft(), metadata=metadata)

        invoice_baseline_channel = grpc.aio.insecure_channel(f"127.0.0.1:{invoice_baseline_port}")
        baseline_submit_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = invoice_baseline_channel.unary_unary(
            "/syncgov.invoice.v1.InvoiceStatusService/SubmitInvoice"
        )

        orders_for_baseline = grpc.aio.insecure_channel(f"127.0.0.1:{orders_for_baseline_port}")
        receipts_for_baseline = grpc.aio.insecure_channel(f"127.0.0.1:{receipts_for_baseline_port}")
        baseline_invoices_ready: collections.deque[bytes] = collections.deque()

        async def fill_received_for_baseline(count: int) -> None:
            await fill_received(
                count,
                baseline_invoices_ready,
                orders_for_baseline.unary_unary("/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"),
                receipts_for_baseline.unary_unary("/syncgov.receipt.v1.ReceiptReconciliationService/PostGoodsReceipt"),
            )

        async def baseline_invoice(_: int) -> object:
            if not baseline_invoices_ready:
                raise RuntimeError("the baseline invoice scenario ran out of received orders")
            return await baseline_submit_call(baseline_invoices_ready.popleft(), metadata=metadata)

        def invoice_request(invoice_id: str, order: int) -> bytes:
            """4 EA of the order's line 1 at its price, 19% tax, dated one of 336 days: a matching invoice."""

            def eur(cents: int) -> money_pb2.Money:
                return money_pb2.Money(currency_code="EUR", units=cents // 100, nanos=cents % 100 * 10_000_000)

            price = cents_of(order)
            net = 4 * price
            tax = (net * 19 + 50) // 100  # cents, rounded half up
            document = invoice_pb2.Invoice(
                invoice_id=f"INV-{invoice_id}",
                supplier_id="SUP-ACME",
                invoice_number=f"B-{invoice_id}",
                invoice_date=date_pb2.Date(year=2027, month=1 + order // 28 % 12, day=1 + order % 28),
                currency_code="EUR",
                net_amount=eur(net),
                tax_amount=eur(tax),
                total_amount=eur(net + tax),
            )
            document.lines.add(
                line_number=1,
                po_id=f"PO-{run_id}-{order}",
                po_line_number=1,
                quantity=decimal_pb2.Decimal(value="4"),
                unit_price=eur(price),
                line_amount=eur(net),
                tax_amount=eur(tax),
            )
            return invoice_service_pb2.SubmitInvoiceRequest(invoice=document).SerializeToString()

        async def raw_composite(n: int) -> object:
            return await raw_call(payload)

        async def raw_publish(n: int) -> object:
            key = f"{run_id}-{n}"
            return await js.publish(f"{raw_root}.{key}.published", payload, headers={"Nats-Msg-Id": key})

        scenarios = {
            "governed": governed,
            "governed-traced": governed_traced,
            "governed-change": governed_change,
            "governed-change-cold": governed_change_cold,
            "governed-receipt": governed_receipt,
            "governed-invoice": governed_invoice,
            "raw-composite": raw_composite,
            "raw-publish": raw_publish,
            "baseline": baseline_publish,
            "baseline-change": baseline_change,
            "baseline-invoice": baseline_invoice,
        }
        results: dict[tuple[str, int], dict[str, float]] = {}
        baselines: dict[tuple[str, int], float] = {}  # the raw composite's RPS in the slices paired with a scenario
        raw_tally: dict[int, tuple[list[dict[str, float]], list[float]]] = {c: ([], []) for c in concurrencies}
        assert nats_server.process is not None, "nats-server was started above"
        assert valkey.process is not None, "valkey-server was started above"
        servers = {
            "governed": processes[0].pid,
            "governed-traced": traced.pid if traced is not None else None,
            "governed-change": processes[0].pid,
            "governed-change-cold": processes[0].pid,
            "governed-receipt": processes[3].pid,
            "governed-invoice": processes[4].pid,
            "raw-composite": processes[1].pid,
            "baseline": baseline.pid if baseline is not None else None,
            "baseline-change": baseline.pid if baseline is not None else None,
            "baseline-invoice": invoice_baseline.pid if invoice_baseline is not None else None,
        }
        # Each governed scenario is measured in alternating slices with the raw composite, so the ratio compares
        # the two under the same load of the shared machine (back to back, the same code measured 38-54%).
        pairing = "raw-composite" in only and any(name.startswith("governed") for name in only)
        for concurrency in concurrencies:
            for name in scenarios:
                if name not in only or (name, concurrency) in results or (name == "raw-composite" and pairing):
                    continue
                # Enough orders to change for the warm-up and the measured time, published beforehand.
                needed = int((seconds + 1.0) * (3000 if concurrency > 1 else 1500))
                if name == "governed-change":
                    await fill(published, publish_call, needed)
                    if baseline is not None:
                        await fill(baseline_published, baseline_publish_call, needed)
                elif name == "governed-change-cold":
                    await fill(published_elsewhere, replica_publish, needed)
                elif name == "governed-receipt":
                    await fill(receivable, publish_call, needed)
                    receipts_ready.extend(receipt_request(order, order) for order in receivable)
                    receivable.clear()
                elif name == "governed-invoice":  # ~1,000 invoices a second at 64, ~470 at 1 (2026-11-27)
                    invoices = int((seconds + 1.0) * (2500 if concurrency > 1 else 1000))
                    await fill_received(invoices)
                    if invoice_baseline is not None:
                        await fill_received_for_baseline(invoices)
                if name.startswith(("governed-change", "governed-receipt", "governed-invoice")):
                    # Let the servers finish the fill's background work first: the consumers of its events
                    # (invoice-status re-matches on every PO and receipt event), then whatever else settles.
                    await wait_consumers_idle(js, Namespace(namespace), ("po", "receipt"))
                    if name == "governed-invoice" and invoice_baseline is not None:
                        await wait_consumers_idle(js, Namespace(invoiced_ns), ("po", "receipt"))
                # Every scenario starts on quiet servers, whatever the one before left them doing.
                await wait_quiet(
                    {
                        "nats": nats_server.process.pid,
                        "valkey": valkey.process.pid,
                        **{f"{label(process)} ({process.pid})": process.pid for process in processes},
                    },
                    f"{name} at concurrency {concurrency}",
                )
                group = [name]
                if name == "governed" and "governed-traced" in only and traced is not None:
                    group.append("governed-traced")  # tracing off and on, alternating too
                if (baseline is not None and name in ("governed", "governed-change")) or (
                    invoice_baseline is not None and name == "governed-invoice"
                ):
                    group.append(name.replace("governed", "baseline"))  # the other checkout, alternating too
                if pairing and name.startswith("governed"):
                    group.append("raw-composite")
                base = {"client": os.getpid(), "nats": nats_server.process.pid, "valkey": valkey.process.pid}
                pids = {each: {**base, "server": servers.get(each) or os.getpid()} for each in group}
                on_path = {pids[each]["server"] for each in group} | (
                    {sink.pid} if "governed-traced" in group and sink else set()
                )
                bystanders = [] if bystanders_run else [p.pid for p in processes if p.pid not in on_path]
                with paused(bystanders):
                    for each in group:
                        others = {pids[other]["server"] for other in group} - {pids[each]["server"], os.getpid()}
                        with paused(others):
                            await measure(scenarios[each], concurrency, min(1.0, seconds / 4), pids[each])  # warm-up
                    if len(group) == 1:
                        latencies: list[float] = []
                        alone = await measure(scenarios[name], concurrency, seconds, pids[name], latencies, settle)
                        results[(name, concurrency)] = combined([alone], latencies)
                        continue
                    tallies: dict[str, Tally] = {each: ([], []) for each in group}
                    paired = await measure_pair(
                        {each: scenarios[each] for each in group}, concurrency, seconds, pids, tallies, step, settle
                    )
                for each, figures in paired.items():
                    if each == "raw-composite":
                        for governed_name in group[:-1]:
                            baselines[(governed_name, concurrency)] = figures["rps"]
                        raw_tally[concurrency][0].extend(tallies[each][0])
                        raw_tally[concurrency][1].extend(tallies[each][1])
                    else:
                        results[(each, concurrency)] = figures
            if pairing and raw_tally[concurrency][0]:
                results[("raw-composite", concurrency)] = combined(*raw_tally[concurrency])
        await service_channel.close()
        await traced_channel.close()
        await replica_channel.close()
        await receipt_channel.close()
        await invoice_channel.close()
        await raw_channel.close()
        await baseline_channel.close()
        await invoice_baseline_channel.close()
        await orders_for_baseline.close()
        await receipts_for_baseline.close()
        await nc.drain()
        report(
            results, baselines, concurrencies, seconds, settle, sync_always, len(payload), trace_ratio, bystanders_run
        )
    finally:
        # The sink last: the traced service exports its last spans as it stops.
        services = [process for process in processes if process is not sink]
        for process in services:
            process.terminate()
        for process in services:
            # A service exits within its shutdown grace (10 s) plus 5 s, whatever it waits on (libs/runtime/app.py).
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                print(f"{process.args!r} did not stop within 20 s; killed", file=sys.stderr)
                process.kill()
                process.wait()
        if sink is not None:
            sink.terminate()
            try:
                received = sink.communicate(timeout=10)[0].decode().strip()
                print(f"spans the traced po-publication exported: {received.removeprefix('otlp-sink: ')}")
            except subprocess.TimeoutExpired:
                sink.kill()
                sink.wait()
        valkey.stop()
        nats_server.stop()


def report(
    results: dict[tuple[str, int], dict[str, float]],
    baselines: dict[tuple[str, int], float],
    concurrencies: list[int],
    seconds: float,
    settle: float,
    sync_always: bool,
    payload_bytes: int,
    trace_ratio: float | None,
    bystanders_run: bool,
) -> None:
    print(
        f"\nPublishPurchaseOrder benchmark: {seconds:g}s per scenario (the first {settle:g}s of each slice not "
        f"counted), {os.cpu_count()} cores, "
        f"request {payload_bytes} bytes, JetStream sync_interval={'always' if sync_always else 'default (2 min)'}, "
        f"services off the measured path {'running' if bystanders_run else 'paused'}"
    )
    print(
        f"{'scenario':<21}{'conc':>5}{'RPS':>8}{'p50 ms':>9}{'p99 ms':>9}{'requests':>9}"
        f"   CPU us/request: {'server':>7}{'nats':>7}{'valkey':>7}{'client':>7}"
    )
    for concurrency in concurrencies:
        for name in (*SCENARIOS, *BASELINE_SCENARIOS):
            r = results.get((name, concurrency))
            if r is None:
                continue
            server = "-" if name == "raw-publish" else f"{r['cpu_us_server']:.0f}"
            print(
                f"{name:<21}{concurrency:>5}{r['rps']:>8.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['count']:>9.0f}"
                f"                   {server:>7}{r['cpu_us_nats']:>7.0f}{r['cpu_us_valkey']:>7.0f}"
                f"{r['cpu_us_client']:>7.0f}"
            )
    for concurrency in concurrencies:
        rps = {name: r["rps"] for (name, at), r in results.items() if at == concurrency}
        for baseline in ("raw-composite", "raw-publish"):
            if baseline not in rps:
                continue
            ratios = []
            for name in SCENARIOS:
                if not name.startswith("governed") or name not in rps:
                    continue
                paired = baselines.get((name, concurrency)) if baseline == "raw-composite" else None
                against = paired if paired is not None else rps[baseline]
                ratios.append(f"{name}/{baseline} = {rps[name] / against:.0%}" if against else f"{name}/{baseline} = -")
            if ratios:
                alternating = baseline == "raw-composite" and any(at == concurrency for _, at in baselines)
                how = " (each against the raw composite's slices alternating with it)" if alternating else ""
                print(f"ratio at concurrency {concurrency}{how}: {', '.join(ratios)}")
    for concurrency in concurrencies:
        rps = {name: r["rps"] for (name, at), r in results.items() if at == concurrency}
        for name in BASELINE_SCENARIOS:
            ours = name.replace("baseline", "governed")
            if name in rps and ours in rps:
                raw = baselines.get((ours, concurrency)) or rps.get("raw-composite")
                against_raw = f", {name}/raw-composite = {rps[name] / raw:.0%}" if raw else ""
                ours_to_theirs = f"{rps[ours] / rps[name]:.0%}" if rps[name] else "-"
                where = f"against the baseline tree at concurrency {concurrency}"
                print(f"{where}: {ours}/{name} = {ours_to_theirs}{against_raw}")
        if "governed" in rps and "governed-traced" in rps:
            print(
                f"tracing at concurrency {concurrency}: governed-traced/governed = "
                f"{rps['governed-traced'] / rps['governed']:.0%} (tracing on, "
                f"{'at the default sampling' if trace_ratio is None else f'sampling ratio {trace_ratio:g}'}, "
                "exported, against tracing off)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per scenario and concurrency")
    parser.add_argument("--no-sync-always", action="store_true", help="JetStream's default fsync (every 2 min)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--profile", type=Path, help="run one service under cProfile and write its stats here")
    parser.add_argument(
        "--profile-service",
        choices=("po-publication", "receipt-reconciliation", "invoice-status"),
        default="po-publication",
        help="the service --profile runs under cProfile (default: the measured po-publication)",
    )
    parser.add_argument(
        "--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), help="run only these scenarios"
    )
    parser.add_argument(
        "--trace-ratio",
        type=float,
        help="OTEL_TRACES_SAMPLER_ARG of the governed-traced scenario's service (default: the services' default)",
    )
    parser.add_argument(
        "--bystanders-run",
        action="store_true",
        help="keep the services off the measured path running while it is measured (default: paused, SIGSTOP)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout (stubs generated: make proto there) whose po-publication the governed and "
        "governed-change scenarios, and whose invoice-status the governed-invoice scenario, are also measured "
        "against, in the same alternating slices",
    )
    parser.add_argument("--slice", type=float, default=0.5, help="seconds of each alternating slice")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.15,
        help="seconds at the start of each slice (and of a scenario measured alone) worked through but not counted",
    )
    args = parser.parse_args()
    if not 0 <= args.settle < min(args.slice, args.seconds):
        parser.error("--settle must be at least 0 and shorter than --slice and --seconds")
    uvloop.run(
        run(
            args.seconds,
            not args.no_sync_always,
            args.concurrency,
            args.profile,
            tuple(args.scenarios),
            args.trace_ratio,
            args.bystanders_run,
            args.baseline_tree,
            args.profile_service,
            args.slice,
            args.settle,
        )
    )
    if args.profile:
        import pstats

        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(25)
