"""invoice-status's composition root: the only place its parts meet."""

from __future__ import annotations

from libs.runtime.access import AccessRule, Read, Write
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.buckets import SequenceMark
from libs.runtime.commands import CommandHandler
from libs.runtime.events import StoredEvent
from libs.runtime.follower import ForeignEvents, StreamFollower
from libs.runtime.metrics import PolledGauges, Values
from libs.runtime.streams import AUDIT_INBOX, EXCEPTION, INVOICE, PO, RECEIPT, SUPPLIER
from services.invoice_status import decider, domain, events
from services.invoice_status.domain import Reason
from services.invoice_status.facts import InvoiceLedger, Matcher, OrderLines, ReceivedLines, SupplierStates
from services.invoice_status.findings import TAIL_ON_START, BlockingExceptions, ClearedReasons, TailExceptions
from services.invoice_status.rematch import Rematcher, consumers
from services.invoice_status.servicer import InvoiceServicer
from services.invoice_status.settings import Settings
from services.invoice_status.settlement import (
    MARK_SECONDS,
    MARKS_BUCKET,
    SETTLE_SECONDS,
    SETTLED_THROUGH_KEY,
    Settlements,
)
from services.invoice_status.store import (
    FOLLOW_FLUSH_SECONDS,
    FOREIGN_READ_SECONDS,
    BlockedInvoices,
    InvoiceLog,
    ReadModels,
    size_of,
)
from syncgov.invoice.v1 import invoice_service_pb2, invoice_service_pb2_grpc

ACCESS: dict[str, AccessRule] = {
    "SubmitInvoice": Write("invoice", key="invoice.invoice_id", document="invoice"),
    "GetInvoice": Read("invoice"),
    "ListBlockedInvoices": Read("invoice"),
    "ReleaseInvoice": Write("invoice_release", key="invoice_id"),
    "DisputeInvoice": Write("invoice_release", key="invoice_id"),
    "RecordInvoicePayment": Write("payment", key="invoice_id"),
}


def wire(rt: Runtime[Settings]) -> Service:
    name = rt.settings.service_name
    policy = lambda: rt.policy.current  # noqa: E731 - the policy in force at each call

    def on_read(stored: StoredEvent) -> None:  # other replicas' appends reach the blocked list through here
        read_models.followed(stored)
        state = ledger.state_of(stored.envelope.object_key)
        tail.followed(stored.envelope.object_key, state, stored.sequence)
        cleared.followed(stored.envelope.object_key, state, stored.sequence)
        settlements.followed(stored)

    ledger = InvoiceLedger(on_read)
    blocked = BlockedInvoices(rt.redis, rt.namespace.redis_key(name, "blocked"))
    read_models = ReadModels(rt.redis, rt.reader, blocked, ledger.state_of)
    suppliers = SupplierStates()
    blocking = BlockingExceptions(rt.exceptions, policy)
    tail = TailExceptions(blocking, lambda: rt.reader.last_sequence(events.DOMAIN))

    async def raise_stored(raise_id: str) -> bool:
        return await rt.reader.last(EXCEPTION.domain, raise_id) is not None

    cleared = ClearedReasons(blocking, lambda: rt.reader.last_sequence(events.DOMAIN), raise_stored)
    supplier_follower = StreamFollower(rt.js, rt.namespace, "supplier", suppliers.apply)

    # Caught up at start by the follower, then only other writers' events are read back (ForeignEvents).
    invoice_follower = StreamFollower(rt.js, rt.namespace, events.DOMAIN, ledger.follow)
    foreign = ForeignEvents(rt.reader, events.DOMAIN, ledger)
    settlements = Settlements(
        lambda stored: rematcher.settle(stored),
        lambda sequence: rt.reader.at(events.DOMAIN, sequence),
        lambda: ledger.read_through,
        lambda: rt.reader.position(events.DOMAIN),
        TAIL_ON_START,
        SequenceMark(
            rt.js,
            rt.namespace.bucket(MARKS_BUCKET),
            SETTLED_THROUGH_KEY,
            "invoice-status: the invoice stream's sequence up to which what follows each submission is settled",
            replicas=rt.settings.stream_replicas,
        ),
    )
    commands = CommandHandler(
        InvoiceLog(rt.publisher, rt.reader, ledger),
        initial=decider.InvoiceState(),
        evolve=decider.evolve,
        size_of=size_of,
        cache_bytes=rt.settings.state_cache_mb * 1024 * 1024,
        # Settlements notes an own submission before anything after its append is awaited.
        projections=(ledger, settlements, blocked, cleared),
        claims=rt.idempotency_store(name),
        name="invoice",
    )
    matcher = Matcher(rt.reader, OrderLines(rt.reader), ReceivedLines(rt.reader), ledger)
    rematcher = Rematcher(
        commands,
        matcher,
        ledger,
        blocking,
        policy,
        lambda invoice_id: rt.reader.history(events.DOMAIN, invoice_id),
        lambda invoice_id, sequence: settlements.request_ended(invoice_id, sequence, settled=True),
    )
    servicer = InvoiceServicer(
        commands,
        matcher,
        suppliers,
        ledger,
        blocked,
        lambda: invoice_follower.caught_up or foreign.reached_end,
        rt.exceptions,
        blocking,
        policy,
        lambda invoice_id, sequence: settlements.request_ended(
            invoice_id, sequence, settled=rematcher.settled_by_request(invoice_id, sequence)
        ),
    )
    rt.metrics.expect_duplicates(domain.OBJECT_TYPE)
    gauges = PolledGauges(rt.telemetry.meter)
    by_reason: dict[Reason, int] = {}

    async def blocked_count() -> Values:
        total, counts = await blocked.counts()
        by_reason.update(counts)
        return [(float(total), {})]

    async def blocked_by_reason() -> Values:
        return [(float(count), {"reason": reason.value}) for reason, count in by_reason.items()]

    gauges.gauge(
        "syncgov.invoices.blocked",
        unit="{invoice}",
        description="Invoices whose latest state is blocked for payment (the blocked list).",
        source=blocked_count,
    )

    async def settlements_failing() -> Values:
        return [(float(settlements.failing), {})]

    gauges.gauge(
        "syncgov.invoices.settlements_failing",
        unit="{settlement}",
        description="Submissions and re-match blocks whose follow-up (re-match, raise) failed in this process and "
        "waits to be tried again; the settled-through mark stays before the oldest.",
        source=settlements_failing,
    )
    gauges.gauge(
        "syncgov.invoices.blocked_by_reason",
        unit="{invoice}",
        description="Blocked invoices by blocking reason; an invoice blocked for two reasons counts under both.",
        source=blocked_by_reason,
        labelled=True,
    )
    return Service(
        grpc_services=[
            GrpcService(
                invoice_service_pb2.DESCRIPTOR.services_by_name["InvoiceStatusService"],
                invoice_service_pb2_grpc.add_InvoiceStatusServiceServicer_to_server,
                servicer,
                access=ACCESS,
            )
        ],
        streams=(INVOICE, PO, RECEIPT, SUPPLIER, EXCEPTION, AUDIT_INBOX),
        # The blocked list is checked (rebuilt from the stream when Valkey lost it) and its newest entries projected
        # again; suppliers' states and every invoice recorded so far are followed into memory, caught up before
        # serving.
        # The blocking matches among the newest invoice events raise their exceptions again (a process killed between
        # an append and its raises), the reasons those events ended are cleared again, and what follows those events
        # is settled again (settlement.py).
        startup=[
            read_models.start,
            supplier_follower.start,
            tail.begin,
            cleared.begin,
            settlements.begin,
            invoice_follower.start,
            invoice_follower.stop,
            settlements.started,
            tail.raise_all,
            cleared.start,
            gauges.refresh,
        ],
        # The blocked list notices a lost Valkey (or a failed write) and rebuilds while serving; what the follower
        # folded of other replicas' appends is written to it; what follows a submission that its request did not
        # settle is settled.
        periodic=[
            (rt.settings.read_model_check_seconds, read_models.check),
            (FOREIGN_READ_SECONDS, foreign.tick),
            (FOLLOW_FLUSH_SECONDS, read_models.flush),
            (FOLLOW_FLUSH_SECONDS, cleared.flush),
            (SETTLE_SECONDS, settlements.tick),
            (MARK_SECONDS, settlements.save),
            gauges.periodic,
        ],
        # Receipts and PO versions re-match the invoices waiting on their PO (after the followers caught up).
        consumers=consumers(rematcher),
    )
