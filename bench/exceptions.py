"""Benchmark: exception-router's intake and fold, and its read model's memory, against real servers.

    make bench        # or: .venv/bin/python bench/exceptions.py [--raises 100000] [--distinct 1000]
                      #     [--open-cases 100000] [--publisher raw|reporter] [--no-sync-always] [--py-spy DIR]

It starts its own nats-server (every write fsynced, as bench/publish_po.py) and valkey-server, and
exception-router (``python -m services.exception_router``, default settings) as its own process, then:

  ingest   --raises raises over --distinct problems (type + object + fingerprint), each raise with its own id,
           published from this process by --publishers concurrent publishers, into an exception stream the router
           has never seen anything on. Measured from the first publish until the intake consumer
           (``<ns>-exception-router-intake``) has nothing pending or unacknowledged and SummarizeExceptions counts
           every raise. A repeat writes nothing; each problem's first raise writes one ``opened`` transition.
  memory   a fresh namespace and router; --open-cases raises, each its own problem, so each opens its own
           exception. The router's RSS (VmRSS) before and after, once every exception is open and routed
           (SummarizeExceptions: that many open with an owner team); then the router is restarted and the time
           until it answers again is its start-up refold of that stream; its RSS after the refold is the book
           alone (live, the command handler's state cache holds every opened exception too), and its CPU at rest.
           The first --book-sample of those exceptions are also folded into an ExceptionBook in this process under
           tracemalloc: the book's own bytes, and where they are allocated.

``--publisher raw`` (the default) publishes envelopes built beforehand by ExceptionReporter over an
EventPublisher whose JetStream only records them (same subjects, headers and bytes), so this process's protobuf
work is not done during the measurement; ``--publisher reporter`` calls ExceptionReporter.raise_exception for
each raise during the measurement. CPU seconds are from /proc/<pid>/stat; ``--py-spy DIR`` samples the router
with py-spy in both measurements (raw collapsed stacks, DIR/ingest.txt and DIR/open.txt) and prints where its
samples fall. Figures, with docs/benchmarks.md's "Exception router": nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import nats
import uvloop
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from opentelemetry import trace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish_po import cpu_seconds, wait_quiet
from libs.runtime.events import EventPublisher, StoredEvent, parse_stored
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.local_servers import NatsServer, ValkeyServer, die_with_parent, free_port
from libs.runtime.probe import health_status
from libs.runtime.requests import Requests
from libs.runtime.subjects import Namespace
from services.exception_router.settings import Settings
from services.exception_router.store import ExceptionBook
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2, exception_service_pb2, exception_service_pb2_grpc

TARGET_PER_SECOND = 3_000  # the Done-when, for ingest + fold
OPS = (("x-syncgov-system", "ops-console"),)
RAISED_BY = "receipt-reconciliation"
INTAKE = "exception-router-intake"
REST_SECONDS = 5.0
SWEEP_SECONDS = Settings().sweep_seconds  # the router's default, which the bench leaves as it is


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


# -- the router as a subprocess ------------------------------------------------------------------------------


@dataclass
class Router:
    env: dict[str, str]
    namespace: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None, "the router was started"
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.spawned_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.exception_router"],
            cwd=ROOT,
            env={**self.env, "SYNCGOV_NAMESPACE": self.namespace, "SYNCGOV_GRPC_PORT": str(self.port)},
            preexec_fn=die_with_parent,  # dies with this script, however it ends
        )

    async def wait_serving(self, timeout: float) -> float:
        """Seconds from the spawn until gRPC health says SERVING (the book has read the whole stream by then)."""
        deadline = self.spawned_at + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            while await health_status(channel, deadline_seconds=1.0) != "SERVING":
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"the router exited with code {self.process.returncode} before serving")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the router did not become SERVING within {timeout:.0f}s")
                await asyncio.sleep(0.05)
        return time.monotonic() - self.spawned_at

    def stop(self) -> float:
        """Terminate and wait; the seconds the stop took."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.terminate()
        try:
            self.process.wait(20)  # a service exits within its shutdown grace (10 s) plus 5 s
        except subprocess.TimeoutExpired:
            log("the router did not stop within 20 s; killed")
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started


# -- the raises ------------------------------------------------------------------------------------------------


def object_ref(run_id: str, problem: int) -> types_pb2.ObjectRef:
    return types_pb2.ObjectRef(object_type="purchase_order", object_key=f"PO-{run_id}-{problem:06d}", version=1)


def detail(problem: int) -> str:
    return f"{12 + problem % 7} EA received on line 1, 10 EA ordered: beyond the 5% over-receipt tolerance"


def problems(count: int, distinct: int) -> Iterator[int]:
    """Raise n is about problem n % distinct: every problem recurs throughout the run, as a flapping check does."""
    return (n % distinct for n in range(count))


class RecordingRequests:
    """What EventPublisher needs of the broker, recording each publish instead of sending it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, str, dict[str, str]]] = []

    async def publish(
        self, subject: str, data: bytes, *, stream: str, headers: dict[str, str], within: float
    ) -> tuple[str, int, bool]:
        self.messages.append((subject, data, stream, headers))
        return stream, len(self.messages), False


async def prebuilt(namespace: Namespace, run_id: str, count: int, distinct: int) -> RecordingRequests:
    """The raises as ExceptionReporter publishes them: subjects, headers and envelope bytes."""
    recorder = RecordingRequests()
    publisher = EventPublisher(cast(Requests, recorder), namespace, trace.get_tracer("bench"), 10.0)
    reporter = ExceptionReporter(publisher, RAISED_BY)
    refs = [object_ref(run_id, problem) for problem in range(distinct)]
    for problem in problems(count, distinct):
        await reporter.raise_exception(
            exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT, exception_pb2.SEVERITY_MEDIUM, refs[problem], detail(problem)
        )
    return recorder


async def publisher(
    nc: nats.NATS, js: JetStreamContext, namespace: Namespace, kind: str, run_id: str, count: int, distinct: int
) -> Callable[[], Awaitable[None]]:
    """A publisher's loop over ``count`` raises about ``distinct`` problems (the publishers share them). With
    ``raw`` the envelopes are built here, before the clock starts."""
    if kind == "raw":
        messages = iter((await prebuilt(namespace, run_id, count, distinct)).messages)

        async def publish_raw() -> None:
            for subject, payload, stream, headers in messages:
                await js.publish(subject, payload, timeout=10.0, stream=stream, headers=headers)

        return publish_raw

    reporter = ExceptionReporter(EventPublisher(Requests(nc), namespace, trace.get_tracer("bench"), 10.0), RAISED_BY)
    refs = [object_ref(run_id, problem) for problem in range(distinct)]
    todo = problems(count, distinct)

    async def raise_each() -> None:
        for problem in todo:
            await reporter.raise_exception(
                exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT, exception_pb2.SEVERITY_MEDIUM, refs[problem], detail(problem)
            )

    return raise_each


async def publish_all(work: Callable[[], Awaitable[None]], concurrency: int) -> tuple[float, float]:
    """(the clock when the first publish started, the seconds publishing took)"""
    started = time.perf_counter()
    await asyncio.gather(*(work() for _ in range(concurrency)))
    return started, time.perf_counter() - started


# -- waiting for the router ------------------------------------------------------------------------------------


async def intake_backlog(js: JetStreamContext, namespace: Namespace) -> int:
    info = await js.consumer_info(namespace.stream("exception"), f"{namespace.root}-{INTAKE}")
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


@dataclass
class Backlog:
    occurrences: int = 0  # every raise the book has counted (routed or not yet)
    routed_open: int = 0  # open exceptions with an owner team (opened by the intake)
    unrouted: int = 0  # exceptions the book knows that no transition opened yet
    teams: dict[str, int] = field(default_factory=dict)


async def summarize(stub: exception_service_pb2_grpc.ExceptionRouterServiceStub) -> Backlog:
    answer = await stub.SummarizeExceptions(exception_service_pb2.SummarizeExceptionsRequest(), metadata=OPS)
    backlog = Backlog()
    for row in answer.backlog:
        backlog.occurrences += row.occurrences
        if row.owner_team:
            backlog.routed_open += row.open
            backlog.teams[row.owner_team] = backlog.teams.get(row.owner_team, 0) + row.open
        else:
            backlog.unrouted += row.open
    return backlog


async def wait_folded(
    js: JetStreamContext,
    namespace: Namespace,
    stub: exception_service_pb2_grpc.ExceptionRouterServiceStub,
    done: Callable[[Backlog], bool],
    timeout: float,
) -> tuple[bool, Backlog]:
    """Poll until the intake consumer is idle (cheap: nats-server answers) and then until the summary says ``done``
    (the book is read at least as far as the intake, which waits for it on every raise)."""
    deadline = time.monotonic() + timeout
    backlog = Backlog()
    while time.monotonic() < deadline:
        if await intake_backlog(js, namespace) == 0:
            backlog = await summarize(stub)
            if done(backlog):
                return True, backlog
        await asyncio.sleep(0.05)
    return False, backlog


async def stream_messages(js: JetStreamContext, namespace: Namespace) -> int:
    return int((await js.stream_info(namespace.stream("exception"))).state.messages)


async def first_events(js: JetStreamContext, namespace: Namespace, event: str, count: int) -> list[StoredEvent]:
    """The first ``count`` events named ``event`` (``raised``, ``opened``) in the exception stream."""
    stream = namespace.stream("exception")
    subscription = await js.subscribe(
        f"{namespace.root}.exception.*.{event}", stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    stored: list[StoredEvent] = []
    try:
        while len(stored) < count:
            message = await subscription.next_msg(timeout=10.0)
            metadata = message.metadata
            stored.append(
                parse_stored(stream, metadata.sequence.stream, message.subject, message.headers, message.data)
            )
    finally:
        await subscription.unsubscribe()
    return stored


async def book_bytes(js: JetStreamContext, namespace: Namespace, exceptions: int) -> tuple[int, int, list[str]]:
    """The first ``exceptions`` raises of a stream where each raise opened its own exception, with their ``opened``
    transitions (the intake opens in stream order), folded into a fresh ExceptionBook in this process under
    tracemalloc: (bytes the book holds, open exceptions in it, the largest allocation sites per exception). What
    RSS cannot tell apart from the allocator's slack and the rest of the process."""
    raised = await first_events(js, namespace, "raised", exceptions)
    opened = await first_events(js, namespace, "opened", exceptions)
    stored = sorted([*raised, *opened], key=lambda event: event.sequence)
    gc.collect()
    tracemalloc.start()
    try:
        book = ExceptionBook()
        for event in stored:
            book.follow(event)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        sites = tracemalloc.take_snapshot().statistics("lineno")
    finally:
        tracemalloc.stop()
    cases = max(len(book.cases), 1)
    top = [
        f"{site.size / cases:,.0f} B {site.traceback[0].filename.rsplit('/', 1)[-1]}:{site.traceback[0].lineno}"
        for site in sites[:6]
    ]
    return held // cases, sum(view.state.exists for view in book.cases.values()), top


# -- py-spy ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs (raw collapsed stacks in ``output``); nothing without one."""
    if output is None:
        yield
        return
    binary = Path(sys.executable).parent / "py-spy"
    command = [str(binary), "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking"]
    process = subprocess.Popen(
        [*command, "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    time.sleep(0.5)  # attached before the first publish
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def print_profile(path: Path, during: str, top: int = 18) -> None:
    """Where the samples fall: by the function on top of the stack (self) and by any frame on it (inclusive)."""
    if not path.exists():
        print(f"\npy-spy wrote no {path}")
        return
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            function, _, where = frame.partition(" (")
            frames.append(f"{function} {where.rstrip(')').rsplit('/', 1)[-1]}")
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not total:
        print("\npy-spy recorded no samples")
        return
    print(f"\npy-spy on the router during {during}: {total} samples at 200/s of threads running (idle omitted)")
    print("  self (top of stack):")
    for name, count in own.most_common(top):
        print(f"    {count / total:6.1%}  {name}")
    print("  inclusive:")
    for name, count in anywhere.most_common(top):
        print(f"    {count / total:6.1%}  {name}")


# -- the two measurements --------------------------------------------------------------------------------------


@dataclass
class Figures:
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))


async def ingest(
    args: argparse.Namespace,
    env: dict[str, str],
    servers: dict[str, int],
    figures: Figures,
    routers: list[Router],
) -> None:
    namespace = Namespace("bx" + uuid.uuid4().hex[:6])
    router = Router(env, namespace.root)
    routers.append(router)
    router.start()
    started_in = await router.wait_serving(60)
    log(f"ingest: router serving on an empty stream after {started_in:.1f}s; building and publishing")
    nc = await nats.connect(env["SYNCGOV_NATS_URL"])
    channel = grpc.aio.insecure_channel(router.address)
    try:
        js = nc.jetstream(timeout=10.0)
        stub = exception_service_pb2_grpc.ExceptionRouterServiceStub(channel)
        run_id = uuid.uuid4().hex[:8]
        pids = {**servers, "router": router.pid, "bench": os.getpid()}
        work = await publisher(nc, js, namespace, args.publisher, run_id, args.raises, args.distinct)
        await wait_quiet(pids, "ingest")
        cpu_before = cpu_seconds(pids)
        with py_spy(router.pid, args.py_spy / "ingest.txt" if args.py_spy else None):
            first, publishing = await publish_all(work, args.publishers)
            behind, published_at = await intake_backlog(js, namespace), time.perf_counter()
            finished, backlog = await wait_folded(
                js, namespace, stub, lambda b: b.occurrences >= args.raises, timeout=max(120.0, args.raises / 500)
            )
            ended = time.perf_counter()
            elapsed = ended - first
        cpu_after = cpu_seconds(pids)
        used = {name: cpu_after[name] - cpu_before[name] for name in pids}
        transitions = await stream_messages(js, namespace) - args.raises
    finally:
        await channel.close()
        await nc.drain()
    figures.add("ingest: raises published", f"{args.raises:,} over {args.distinct:,} problems ({args.publisher})")
    figures.add("ingest: published", f"{args.raises / publishing:,.0f} raises/s ({publishing:.1f} s)")
    drained = f": drained at {behind / (ended - published_at):,.0f} raises/s" if finished and behind >= 1000 else ""
    figures.add("ingest: intake backlog when publishing ended", f"{behind:,} raises{drained}")
    if finished:
        rate = args.raises / elapsed
        verdict = "met" if rate >= TARGET_PER_SECOND else "NOT met"
        figures.add("ingest: ingested and folded, end to end", f"{rate:,.0f} raises/s ({elapsed:.1f} s)")
        figures.add(f"ingest: target >= {TARGET_PER_SECOND:,}/s", verdict)
    else:
        figures.add(
            "ingest: ingested and folded, end to end",
            f"NOT FINISHED after {elapsed:.0f} s: {backlog.occurrences:,} of {args.raises:,} counted",
        )
    teams = ", ".join(f"{team}: {open_:,}" for team, open_ in backlog.teams.items()) or "no team"
    figures.add("ingest: exceptions", f"{backlog.routed_open:,} open ({teams}), {backlog.unrouted:,} not routed yet")
    figures.add("ingest: transitions written", f"{transitions:,} (one opened per problem; a repeat writes none)")
    for name in ("router", "nats", "valkey", "bench"):
        figures.add(
            f"ingest: CPU {name}",
            f"{used[name]:.1f} s ({used[name] / args.raises * 1e6:,.0f} µs/raise,"
            f" {used[name] / elapsed:.0%} of a core)",
        )
    router.stop()


async def memory(
    args: argparse.Namespace,
    env: dict[str, str],
    servers: dict[str, int],
    figures: Figures,
    routers: list[Router],
) -> None:
    count = args.open_cases
    namespace = Namespace("bm" + uuid.uuid4().hex[:6])
    router = Router(env, namespace.root)
    routers.append(router)
    router.start()
    empty_start = await router.wait_serving(60)
    nc = await nats.connect(env["SYNCGOV_NATS_URL"])
    channel = grpc.aio.insecure_channel(router.address)
    try:
        js = nc.jetstream(timeout=10.0)
        stub = exception_service_pb2_grpc.ExceptionRouterServiceStub(channel)
        await summarize(stub)  # the summary path's imports and buffers, before the baseline
        work = await publisher(nc, js, namespace, args.publisher, uuid.uuid4().hex[:8], count, count)
        await wait_quiet({**servers, "router": router.pid}, "memory")
        rss_before = rss_bytes(router.pid)
        log(f"memory: router serving on an empty stream, RSS {rss_before / 2**20:.1f} MiB; raising {count:,} problems")
        cpu_before = cpu_seconds({"router": router.pid})
        with py_spy(router.pid, args.py_spy / "open.txt" if args.py_spy else None):
            first, publishing = await publish_all(work, args.publishers)
            finished, backlog = await wait_folded(
                js, namespace, stub, lambda b: b.routed_open >= count, timeout=max(180.0, count / 200)
            )
            opened_in = time.perf_counter() - first
        router_cpu = cpu_seconds({"router": router.pid})["router"] - cpu_before["router"]
        log(f"memory: {backlog.routed_open:,} open after {opened_in:.1f}s; waiting for quiet")
        await wait_quiet({**servers, "router": router.pid}, "memory, once every problem is open")
        rss_after, peak = rss_bytes(router.pid), rss_bytes(router.pid, "VmHWM")
        messages = await stream_messages(js, namespace)
        await channel.close()

        stopped_in = router.stop()
        log(f"memory: router stopped in {stopped_in:.1f}s; restarting over {messages:,} messages")
        again = Router(env, namespace.root)
        routers.append(again)
        again.start()
        refold = await again.wait_serving(max(120.0, count / 500))
        channel = grpc.aio.insecure_channel(again.address)
        stub = exception_service_pb2_grpc.ExceptionRouterServiceStub(channel)
        await stub.ListExceptions(exception_service_pb2.ListExceptionsRequest(), metadata=OPS)
        answered = time.monotonic() - again.spawned_at
        after_restart = await summarize(stub)
        await wait_quiet({**servers, "router": again.pid}, "memory, after the restart")
        rss_refolded = rss_bytes(again.pid)
        await asyncio.sleep(REST_SECONDS)  # past its first sweeps after the start (one re-routing scan of everything)
        resting = cpu_seconds({"router": again.pid})["router"]
        await asyncio.sleep(REST_SECONDS)  # nothing asked of it: what remains is its periodic sweeps
        resting = cpu_seconds({"router": again.pid})["router"] - resting
        held, sampled, sites = await book_bytes(js, namespace, min(after_restart.routed_open, args.book_sample))
    finally:
        await channel.close()
        await nc.drain()
    figures.add(
        "memory: open exceptions",
        f"{backlog.routed_open:,} of {count:,}" + ("" if finished else " (NOT FINISHED: measured anyway)"),
    )
    figures.add("memory: published", f"{count / publishing:,.0f} raises/s ({publishing:.1f} s)")
    figures.add(
        "memory: opened and routed, end to end",
        f"{count / opened_in:,.0f} exceptions/s ({opened_in:.1f} s;"
        f" router CPU {router_cpu / count * 1e6:,.0f} µs each)",
    )
    figures.add("memory: router RSS before (empty stream)", f"{rss_before / 2**20:,.1f} MiB")
    figures.add(
        "memory: router RSS after (live)",
        f"{rss_after / 2**20:,.1f} MiB (peak {peak / 2**20:,.1f}): "
        f"{(rss_after - rss_before) / max(backlog.routed_open, 1):,.0f} bytes/exception (book + state cache)",
    )
    figures.add(
        "memory: router RSS after a restart (refolded)",
        f"{rss_refolded / 2**20:,.1f} MiB: {(rss_refolded - rss_before) / max(after_restart.routed_open, 1):,.0f}"
        " bytes/exception (book only)",
    )
    figures.add(f"memory: the book alone (tracemalloc, {sampled:,} open exceptions)", f"{held:,} bytes/exception")
    figures.add("memory: the book's largest allocation sites", ", ".join(sites))
    figures.add(
        f"memory: router CPU at rest with {after_restart.routed_open:,} open",
        f"{resting / REST_SECONDS:.0%} of a core over {REST_SECONDS:.0f} s (the escalation and re-routing sweeps,"
        f" every {SWEEP_SECONDS:g} s)",
    )
    figures.add("memory: start-up on an empty stream", f"{empty_start:.1f} s to SERVING")
    figures.add(
        f"memory: start-up over {messages:,} messages",
        f"{refold:.1f} s to SERVING, {answered:.1f} s to the first ListExceptions answer"
        f" (~{messages / max(refold - empty_start, 0.001):,.0f} messages/s beyond the empty start);"
        f" {after_restart.routed_open:,} open after it",
    )
    figures.add("memory: stop (SIGTERM to exit)", f"{stopped_in:.1f} s")
    again.stop()


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="syncgov-bench-exceptions-"))
    nats_server = NatsServer(data_dir=workdir / "nats", sync_always=not args.no_sync_always).start()
    valkey = ValkeyServer(data_dir=workdir / "valkey").start()
    routers: list[Router] = []
    figures = Figures()
    version = code_version()  # when the routers start: the code they run
    try:
        assert nats_server.process is not None, "nats-server was started above"
        assert valkey.process is not None, "valkey-server was started above"
        servers = {"nats": nats_server.process.pid, "valkey": valkey.process.pid}
        env = {
            **os.environ,
            "SYNCGOV_NATS_URL": nats_server.url,
            "SYNCGOV_REDIS_URL": valkey.url,
            "SYNCGOV_LOG_LEVEL": "ERROR",
        }
        if args.raises:
            await ingest(args, env, servers, figures, routers)
        if args.open_cases:
            await memory(args, env, servers, figures, routers)
    finally:
        for router in routers:
            router.stop()
        valkey.stop()
        nats_server.stop()
    report(args, figures, version)


def code_version() -> str:
    """The commit measured, and whether the router's or the runtime's code differed from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "services/exception_router", "libs/runtime"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes to the router or runtime" if changed else "")


def report(args: argparse.Namespace, figures: Figures, version: str) -> None:
    sync = "default (2 min)" if args.no_sync_always else "always"
    print(
        f"\nexception-router benchmark: {os.cpu_count()} cores, {args.publishers} concurrent publishers,"
        f" JetStream sync_interval={sync}, code {version}"
    )
    width = max(len(name) for name, _ in figures.rows) + 2
    for name, value in figures.rows:
        print(f"{name:<{width}}{value}")
    if args.py_spy is not None:
        print_profile(args.py_spy / "ingest.txt", "the ingest (repeats)")
        print_profile(args.py_spy / "open.txt", "the opening of distinct exceptions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raises", type=int, default=100_000, help="raises to ingest and fold (0: skip)")
    parser.add_argument("--distinct", type=int, default=1_000, help="distinct problems the raises are about")
    parser.add_argument(
        "--open-cases", type=int, default=100_000, help="open exceptions for the memory figure (0: skip)"
    )
    parser.add_argument(
        "--book-sample", type=int, default=10_000, help="exceptions folded in this process under tracemalloc"
    )
    parser.add_argument("--publishers", type=int, default=64, help="concurrent publishers in this process")
    parser.add_argument(
        "--publisher",
        choices=("raw", "reporter"),
        default="raw",
        help="raw: ExceptionReporter's envelopes built beforehand, then js.publish; reporter: raise_exception each",
    )
    parser.add_argument("--no-sync-always", action="store_true", help="JetStream's default fsync (every 2 min)")
    parser.add_argument(
        "--py-spy", type=Path, help="sample the router with py-spy in both measurements (raw stacks into this folder)"
    )
    args = parser.parse_args()
    if args.raises and not 0 < args.distinct <= args.raises:
        parser.error("--distinct must be between 1 and --raises")
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
