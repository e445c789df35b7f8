"""exception-router's composition root: the only place its parts meet."""

from __future__ import annotations

import time

from libs.runtime.access import AccessRule, Read, Write
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.commands import CommandHandler, StreamLog
from libs.runtime.consumers import ConsumerSpec
from libs.runtime.follower import StreamFollower
from libs.runtime.metrics import PolledGauges, Values
from libs.runtime.streams import ADVISORY, AUDIT_INBOX, EXCEPTION, MAX_DELIVERIES_ADVISORY
from services.exception_router import events
from services.exception_router.decider import INITIAL, CaseState, Change, evolve
from services.exception_router.domain import percentile
from services.exception_router.intake import Advisories, Intake
from services.exception_router.servicer import ExceptionRouterServicer
from services.exception_router.settings import Settings
from services.exception_router.store import ExceptionBook
from services.exception_router.summary import metric_rows
from services.exception_router.sweeps import Sweeper
from syncgov.exception.v1 import exception_service_pb2, exception_service_pb2_grpc

ACCESS: dict[str, AccessRule] = {
    "RaiseException": Write("exception", key="exception.object.object_key"),
    "GetException": Read("exception"),
    "ListExceptions": Read("exception"),
    "SummarizeExceptions": Read("exception"),
    "AcknowledgeException": Write("exception_handling", key="exception_id"),
    "ResolveException": Write("exception_handling", key="exception_id"),
    "ReplayException": Write("exception_handling", key="exception_id"),
}

# The exception metrics walk every exception in the book: at most this often.
EXCEPTION_METRICS_SECONDS = 15.0
CLOSURE_QUANTILES = (0.5, 0.9, 0.99)


def wire(rt: Runtime[Settings]) -> Service:
    policy = lambda: rt.policy.current  # noqa: E731 - the policy in force at each call
    book = ExceptionBook()
    follower = StreamFollower(rt.js, rt.namespace, events.DOMAIN, book.follow)
    commands: CommandHandler[CaseState, Change] = CommandHandler(
        StreamLog(rt.publisher, rt.reader, events.DOMAIN, encode=events.encode, decode=events.decode),
        initial=INITIAL,
        evolve=evolve,
        size_of=lambda _state: 1024,
        cache_bytes=rt.settings.state_cache_mb * 1024 * 1024,
        name="exception",
    )
    intake = Intake(commands, book, policy)
    advisories = Advisories(rt.js, rt.namespace, rt.exceptions)
    sweeper = Sweeper(commands, book, policy)
    servicer = ExceptionRouterServicer(
        commands, book, intake, rt.publisher, rt.reader, lambda: follower.caught_up, rt.namespace
    )

    async def follow() -> None:
        await follower.start(catch_up_timeout=rt.settings.catch_up_seconds)

    # Read from the book every replica folds (not counted as transitions are folded: every replica folds each one,
    # and again at each start), so every replica reports the same numbers and a restart loses none.
    gauges = PolledGauges(rt.telemetry.meter, every=EXCEPTION_METRICS_SECONDS)
    rows = [metric_rows((), 0)]

    async def backlog() -> Values:
        rows[0] = metric_rows(book.cases.values(), time.time_ns())
        return [(float(count), {"type": t, "team": team}) for (t, team), count in sorted(rows[0].backlog.items())]

    async def closed() -> Values:
        return [(float(len(s)), {"type": t, "team": team}) for (t, team), s in sorted(rows[0].closures.items())]

    async def closure_time() -> Values:
        return [
            (percentile(seconds, q), {"type": t, "team": team, "quantile": str(q)})
            for (t, team), seconds in sorted(rows[0].closures.items())
            for q in CLOSURE_QUANTILES
        ]

    gauges.gauge(
        "syncgov.exceptions.backlog",
        unit="{exception}",
        description="Unresolved exceptions (open or acknowledged) by type and owner team.",
        source=backlog,
        labelled=True,
    )
    gauges.gauge(
        "syncgov.exceptions.closed",
        unit="{exception}",
        description="Exceptions closed (resolved or replayed) within the closure window (30 days), by type and team.",
        source=closed,
        labelled=True,
    )
    gauges.gauge(
        "syncgov.exceptions.closure_time",
        unit="s",
        description="Raise to closure of the exceptions closed within the closure window: quantiles by type and team.",
        source=closure_time,
        labelled=True,
    )

    return Service(
        grpc_services=[
            GrpcService(
                exception_service_pb2.DESCRIPTOR.services_by_name["ExceptionRouterService"],
                exception_service_pb2_grpc.add_ExceptionRouterServiceServicer_to_server,
                servicer,
                access=ACCESS,
            )
        ],
        streams=(EXCEPTION, ADVISORY, AUDIT_INBOX),
        # Every exception is folded from the stream into memory before the service answers.
        startup=[follow, gauges.refresh],
        periodic=[(rt.settings.sweep_seconds, sweeper.sweep), gauges.periodic],
        consumers=(
            # A raise's decision does not depend on the order raises are taken in (each is judged against the
            # exception's closure by stream sequence, under its subject guard): a fetch is taken at once.
            ConsumerSpec(
                "exception-router-intake",
                events.DOMAIN,
                f"{events.DOMAIN}.*.{events.RAISED}",
                intake.on_event,
                filters=(f"{events.DOMAIN}.*.{events.RAISED}", f"{events.DOMAIN}.*.{events.CLEARED}"),
                batch=256,
                concurrent=True,
            ),
            ConsumerSpec(
                "exception-router-advisories",
                ADVISORY.domain,
                f"{MAX_DELIVERIES_ADVISORY}.>",
                advisories.on_advisory,
                raw=True,
                optional=True,
            ),
        ),
    )
