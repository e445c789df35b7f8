"""Chaos run: a retrying client drives load while faults are injected; the streams then judge the outcome.

    make chaos                                   # the full run (about two minutes)
    .venv/bin/python bench/chaos.py --seconds 20 --seed 7 --json out.json   # the CI-size run

What it starts, all on loopback, all dying with this script (PR_SET_PDEATHSIG, as ``syncgov up``):
nats-server (JetStream, file storage, ``sync_interval: always``) and valkey-server through
libs/runtime/local_servers.py with a user per component (libs/cli/stack.py's Stack), a fault-injecting
TCP proxy (bench/fault_proxy.py) in front of each of them and of each gRPC port the client calls, and
control-plane, supplier-normalization, po-publication, receipt-reconciliation, invoice-status and exception-router
as separate processes with the environment ``syncgov up`` gives them (their NATS and Valkey URLs point at the
proxies).

The client: ``--workers`` workers, each owning its purchase orders, publish orders, change them (never
below what may have been received), acknowledge versions as the ERP, submit supplier records, and now
and then re-send an order's first version with other content under the same idempotency key (a
duplicate transaction, refused with an exception). Against their orders they post goods receipts as
erp or wms-east (EA or CS, sometimes prepared from the superseded version, with a line the order lacks
or goods rejected at the dock), returns of those receipts (now and then more than was received), the
same document again (a replay), and a document id used before with other content, against its order
or another (refused ALREADY_EXISTS with an exception). Against their orders and receipts they submit
invoices: within what was received at the order's price, before any receipt (awaiting_receipt, re-matched by
invoice-status itself once a receipt lands), over the price tolerance, an earlier invoice's number written
otherwise (INV-3-00012 as "inv 3 12": duplicate_invoice), the same invoice again (a replay), an invoice id reused
with other content (ALREADY_EXISTS); a person releases blocked ones (through ops-console or procurement) and the
ERP pays matched or released ones (a release or payment the invoice's state moved past meanwhile is rightly
FAILED_PRECONDITION). Meanwhile ``--handlers`` people at the ops-console handle the exceptions those commands raise
(refusals, receipt findings, blocked invoices): they page through ListExceptions with a filter, acknowledge open ones
and resolve acknowledged or open ones (a kind, a note, a person of PERSONS; one another person took, or one that
closed meanwhile, is rightly FAILED_PRECONDITION), raise problems by hand with an idempotency key (the same raise
again, and its key with other content: ALREADY_EXISTS), and read SummarizeExceptions. Every command keeps its
request bytes and idempotency key; UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED and RESOURCE_EXHAUSTED are
retried with backoff until an answer; INTERNAL and UNKNOWN are retried too but count as violations. The client
records every command answered OK.

The faults (seeded, one at a time, every kind at least once when the run is long enough; ``--min-faults`` keeps the
load and the faults up past ``--seconds`` until that many were dealt): SIGKILL of
po-publication, supplier-normalization, receipt-reconciliation, invoice-status or exception-router (restarted at
once), SIGKILL of nats-server (restarted on the same port and data after a pause), SIGSTOP/SIGCONT of valkey-server
(frozen), FLUSHALL as the operator (wiped), and the proxies cutting every connection or holding every byte for a
while.

At the end, once the faults stopped and the services serve again, and invoice-status's re-match consumers, then
exception-router's intake and advisory consumers and the control plane's chaining of exception transitions, have
acknowledged every event (a message whose acknowledgment a fault lost comes back after the consumer's 30 s
ack_wait), it reads the streams and the audit chain as the operator and checks the invariants (see ``verify`` and
``verify_exceptions``, which ends with one more SIGKILL and restart of exception-router); it prints the faults, the
commands and each invariant, and exits 1 if any invariant was violated. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
import yaml
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from google.type import decimal_pb2
from grpc_status import rpc_status

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fault_proxy import FaultProxy
from libs.cli import samples
from libs.cli.components import COMPONENTS, Component
from libs.cli.stack import RunningComponent, Stack, StackOptions
from libs.runtime.audit import AuditChain
from libs.runtime.commands import recorded
from libs.runtime.events import EventReader, StoredEvent
from libs.runtime.local_servers import ServerError, free_port, free_port_range
from libs.runtime.probe import health_status
from libs.runtime.requests import Requests
from libs.runtime.settings import DEFAULT_POLICY_FILE
from libs.runtime.subjects import Namespace
from libs.runtime.values import date_to_proto, money_to_proto
from services.exception_router import decider as exception_decider
from services.exception_router import events as exception_router_events
from services.exception_router import mapping as exception_mapping
from services.exception_router.store import ExceptionBook, case_of
from services.exception_router.summary import summarize
from services.invoice_status import decider as invoice_decider
from services.invoice_status import events as invoice_events
from services.invoice_status import mapping as invoice_mapping
from services.invoice_status.findings import exception_id as invoice_exception_id
from services.po_publication import domain as po_domain
from services.po_publication import events as po_events
from services.receipt_reconciliation import events as receipt_events
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from syncgov.controlplane.v1 import controlplane_service_pb2_grpc as cp_rpc
from syncgov.exception.v1 import events_pb2 as exception_events
from syncgov.exception.v1 import exception_pb2
from syncgov.exception.v1 import exception_service_pb2 as exc
from syncgov.exception.v1 import exception_service_pb2_grpc as exc_rpc
from syncgov.invoice.v1 import events_pb2 as invoice_event_messages
from syncgov.invoice.v1 import invoice_pb2
from syncgov.invoice.v1 import invoice_service_pb2 as inv
from syncgov.invoice.v1 import invoice_service_pb2_grpc as inv_rpc
from syncgov.po.v1 import events_pb2 as po_event_messages
from syncgov.po.v1 import po_pb2
from syncgov.po.v1 import po_service_pb2 as po
from syncgov.po.v1 import po_service_pb2_grpc as po_rpc
from syncgov.receipt.v1 import events_pb2 as receipt_event_messages
from syncgov.receipt.v1 import receipt_pb2
from syncgov.receipt.v1 import receipt_service_pb2 as rc
from syncgov.receipt.v1 import receipt_service_pb2_grpc as rc_rpc
from syncgov.supplier.v1 import supplier_pb2
from syncgov.supplier.v1 import supplier_service_pb2 as sp
from syncgov.supplier.v1 import supplier_service_pb2_grpc as sp_rpc

STARTED = (
    "control-plane",
    "supplier-normalization",
    "po-publication",
    "receipt-reconciliation",
    "invoice-status",
    "exception-router",
)
# The ports the client calls.
SERVED = ("po-publication", "supplier-normalization", "receipt-reconciliation", "invoice-status", "exception-router")
FORK_ATTEMPTS = 10  # a restart whose fork dies before exec (a harness artefact, docs/reliability.md) is tried again
T = TypeVar("T")
RETRIED = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]
FAULT_KINDS = (
    "kill po-publication",
    "kill supplier-normalization",
    "kill receipt-reconciliation",
    "kill invoice-status",
    "kill exception-router",
    "kill nats-server",
    "freeze valkey",
    "wipe valkey",
    "cut nats connections",
    "cut valkey connections",
    "cut grpc connections",
    "stall nats connections",
    "stall valkey connections",
)
SYLLABLES = (
    "ka", "lo", "mi", "nu", "pe", "ra", "so", "ti", "vu", "we", "xa", "yo",
    "zu", "bri", "cor", "dal", "fen", "gor", "hul", "jin", "kes", "lum", "mar", "nor",
)  # fmt: skip
CITIES = [("Hamburg", "DE", "20457"), ("Lyon", "FR", "69001"), ("Turin", "IT", "10121"), ("Porto", "PT", "4000-001")]
# Who posts receipts where (the default policy: erp receives at both DCs, wms-east at DC-EAST only), and the units
# the chaos orders' one line (EA) converts from.
RECEIPT_POSTERS = (("erp", "DC-HAMBURG"), ("erp", "DC-EAST"), ("wms-east", "DC-EAST"))
UNIT_FACTORS = {"EA": 1, "CS": 12}
RECEIPT_KINDS = ("receipt", "return", "receipt replay", "receipt conflict")
# Invoices against the orders and receipts: one within what was received at the order's price, one before any
# receipt (awaiting_receipt, re-matched by itself when the receipt lands), one over the price tolerance, one whose
# number is an earlier invoice's written otherwise (duplicate_invoice), the same invoice again, an invoice id
# reused with other content (ALREADY_EXISTS); releases by a person and payments by the ERP.
INVOICE_KINDS = (
    "invoice",
    "invoice early",
    "invoice over price",
    "invoice duplicate",
    "invoice replay",
    "invoice conflict",
    "release",
    "payment",
)
SUBMISSIONS = frozenset(INVOICE_KINDS[:5])  # the kinds that submit an invoice answered OK
PO_PRICE = Decimal("12.50")  # samples.purchase_order's line 1
OVER_PRICE = Decimal("13.00")  # 4 % over it: beyond the default policy's 2 % upper price tolerance
VAT = Decimal("0.19")
CENT = Decimal("0.01")
PERSONS = ("j.doe", "a.buyer", "m.meyer")
# invoice-status's re-match consumers (services/invoice_status/rematch.py): durables named so, on these streams.
REMATCH_PREFIX = "invoice-status-rematch-"
REMATCH_DOMAINS = ("po", "receipt", "invoice")
# exception-router's durable consumers (services/exception_router/wiring.py) and the control plane's chaining of the
# exception stream's transitions (control_plane/events.py), each on its stream's domain: judged once all are idle.
EXCEPTION_CONSUMERS = (
    ("exception", "exception-router-intake"),
    ("advisory", "exception-router-advisories"),
    ("exception", "control-plane-audit-exception"),
)
# The ops-console's exception handling (``handler``): what it does, as the report's command kinds.
EXCEPTION_KINDS = (
    "exception list",
    "exception summary",
    "exception raise",
    "exception raise again",
    "exception key reuse",
    "exception acknowledge",
    "exception resolve",
)
# What a person raises by hand through the console, one kind per object of the handler's (so repeats fold into one
# exception, and reopen it once it was closed): (type, object type, site).
HAND_RAISES = (
    (exception_pb2.EXCEPTION_TYPE_DRIFT_DETECTED, "purchase_order", ""),
    (exception_pb2.EXCEPTION_TYPE_SLA_BREACH, "purchase_order", ""),
    (exception_pb2.EXCEPTION_TYPE_VALIDATION_FAILED, "supplier", ""),
    (exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT, "goods_receipt", "DC-EAST"),  # routed to warehouse-east by its site
    (exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT, "goods_receipt", "DC-HAMBURG"),
    (exception_pb2.EXCEPTION_TYPE_ERP_REJECTED, "purchase_order", ""),
)
HAND_OBJECTS = 8  # objects per handler its raises are about
TEAMS = ("integration-team", "procurement-ops", "accounts-payable", "supplier-master-data", "warehouse-east")
RESOLUTION_KINDS = (
    exception_pb2.RESOLUTION_KIND_FIXED,
    exception_pb2.RESOLUTION_KIND_ACCEPTED,
    exception_pb2.RESOLUTION_KIND_FALSE_POSITIVE,
    exception_pb2.RESOLUTION_KIND_DUPLICATE,
    exception_pb2.RESOLUTION_KIND_WONT_FIX,
)
GET_SAMPLE = 200  # exceptions (and as many raise ids) GetException is compared with the fold for
# A third into the load an administrator applies a policy revision whose every exception route escalates after this
# long: exception-router re-routes the open exceptions nobody took, and escalates what nobody handles in time.
ESCALATE_AFTER_SECONDS = 4


def as_system(system: str) -> tuple[tuple[str, str], ...]:
    return (("x-syncgov-system", system),)


def now_timestamp() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC).replace(microsecond=0))
    return stamp


# --------------------------------------------------------------------------------------------- the client


@dataclass
class Order:
    po_id: str
    approved_at: timestamp_pb2.Timestamp
    version: int = 0  # the latest version answered OK
    acknowledged: int = 0  # the latest version whose acknowledgment was answered OK
    broken: bool = False  # a command on it was refused unexpectedly: the client's picture is no longer sure
    # Every EA ever sent in a receipt against it, answered or not: more than it can have received, so a change
    # order never lowers the line below what was received (po-publication refuses that).
    received_bound: int = 0
    # What invoice-status must find received on line 1, at least: receipts answered OK at the current version with
    # nothing rejected and no finding, less every EA sent back in a return (answered or not).
    received_low: int = 0
    # EA invoiced on line 1 by every invoice sent against it (answered or not, refused reuses aside).
    invoiced: int = 0
    awaited: bool = False  # an invoice was submitted before any receipt was posted against it


@dataclass(frozen=True)
class Command:
    kind: str  # publish | change | acknowledge | supplier | conflict | receipt | return | receipt replay | ...
    key: str  # the idempotency key (explicit or natural); for a receipt command its document key
    po_id: str = ""
    version: int = 0
    quantity: str = ""
    local_id: str = ""


@dataclass(frozen=True)
class SentDocument:
    """What a receipt or return answered OK holds, in the order line's unit (EA): what the stream must hold."""

    po_id: str
    kind: str  # receipt | return
    quantities: tuple[tuple[int, Decimal, Decimal], ...]  # (po line, quantity, rejected)


@dataclass
class Posted:
    """A document answered OK, kept by its worker to repeat it, reuse its id, or return its goods."""

    system: str
    site: str
    receipt_id: str
    po_id: str
    kind: str
    request: rc.PostGoodsReceiptRequest
    received: int = 0  # EA received on line 1 (a receipt)
    returned: int = 0  # EA its returns gave back so far

    @property
    def key(self) -> str:
        return f"{self.system}/{self.receipt_id}"


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    refused_expected: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    replays: Counter[str] = field(
        default_factory=Counter
    )  # OK answers rebuilt from history (a retry of an applied one)
    broken: list[str] = field(default_factory=list)  # INTERNAL / UNKNOWN answers
    unexpected: list[str] = field(default_factory=list)  # a valid command refused
    unresolved: list[str] = field(default_factory=list)  # no answer before the drain deadline
    accepted: list[tuple[Command, Message]] = field(default_factory=list)  # every command answered OK
    exception_ids: list[str] = field(default_factory=list)  # exceptions the services said they raised
    documents: dict[str, SentDocument] = field(default_factory=dict)  # receipts and returns answered OK, by key
    refused: list[Command] = field(default_factory=list)  # commands refused as expected
    invoices: dict[str, invoice_pb2.Invoice] = field(default_factory=dict)  # invoices answered OK, by invoice id
    releases: list[tuple[str, str, str]] = field(default_factory=list)  # (invoice id, person, reason) answered OK
    payments: list[tuple[str, str]] = field(default_factory=list)  # (invoice id, payment reference) answered OK
    # RaiseException answered OK, by the raise id its key derives (mapping.raise_id): the request and the answers.
    hand_raises: dict[str, HandRaise] = field(default_factory=dict)
    key_reuses: list[str] = field(default_factory=list)  # raise ids whose key was reused with other content, refused
    handled: list[Handled] = field(default_factory=list)  # acknowledgments and resolutions answered OK


@dataclass
class HandRaise:
    """A RaiseException answered OK (once or more, the same key): what was sent and what the answers named."""

    request: exc.RaiseExceptionRequest
    answered: set[str] = field(default_factory=set)  # the exception ids answered
    last_raised: set[str] = field(default_factory=set)  # the answers' last_raised_id


@dataclass(frozen=True)
class Handled:
    """An acknowledgment or resolution answered OK, as the stream must hold it."""

    transition: str  # acknowledged | resolved
    exception_id: str  # the exception answered (the request may have named one of its raises)
    person: str
    kind: int = 0  # a resolution's ResolutionKind
    note: str = ""


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


class Client:
    """Sends commands through the gRPC proxies and retries them until they are answered."""

    def __init__(self, addresses: dict[str, str], tally: Tally, rng: random.Random) -> None:
        self.control_channel = grpc.aio.insecure_channel(addresses["control-plane"], options=CHANNEL_OPTIONS)
        self.po_channel = grpc.aio.insecure_channel(addresses["po-publication"], options=CHANNEL_OPTIONS)
        self.supplier_channel = grpc.aio.insecure_channel(addresses["supplier-normalization"], options=CHANNEL_OPTIONS)
        self.receipt_channel = grpc.aio.insecure_channel(addresses["receipt-reconciliation"], options=CHANNEL_OPTIONS)
        self.invoice_channel = grpc.aio.insecure_channel(addresses["invoice-status"], options=CHANNEL_OPTIONS)
        self.exception_channel = grpc.aio.insecure_channel(addresses["exception-router"], options=CHANNEL_OPTIONS)
        self.orders = po_rpc.PurchaseOrderServiceStub(self.po_channel)
        self.suppliers = sp_rpc.SupplierNormalizationServiceStub(self.supplier_channel)
        self.receipts = rc_rpc.ReceiptReconciliationServiceStub(self.receipt_channel)
        self.invoices = inv_rpc.InvoiceStatusServiceStub(self.invoice_channel)
        self.exceptions = exc_rpc.ExceptionRouterServiceStub(self.exception_channel)
        self.control = cp_rpc.ControlPlaneServiceStub(self.control_channel)
        self.tally = tally
        self.rng = rng
        self.give_up_at = float("inf")  # set when the load stops: the drain deadline
        self.call_timeout = 3.0

    async def close(self) -> None:
        await self.po_channel.close()
        await self.supplier_channel.close()
        await self.receipt_channel.close()
        await self.invoice_channel.close()
        await self.exception_channel.close()
        await self.control_channel.close()

    async def send(
        self,
        command: Command,
        call: Callable[..., Any],
        request: Message,
        system: str,
        *,
        expect: grpc.StatusCode | None = None,
        tolerate: grpc.StatusCode | None = None,
        retry_invalid_until: float = 0.0,
        keep: bool = True,
    ) -> Message | grpc.aio.AioRpcError | None:
        """The answer (a response or a definitive refusal), or None when none came before the drain deadline.
        ``expect``: the refusal due (an OK is unexpected); ``tolerate``: a refusal the service may rightly answer
        instead of OK (the object moved on meanwhile, e.g. a re-match cleared the block a release was meant for);
        ``keep``: False for a read, whose answer is not kept in ``tally.accepted``."""
        self.tally.sent[command.kind] += 1
        backoff = 0.05
        while True:
            self.tally.attempts += 1
            try:
                pending = call(request, metadata=as_system(system), timeout=self.call_timeout)
                response = await pending
                if ("syncgov-idempotent-replay", "true") in tuple(await pending.initial_metadata() or ()):
                    self.tally.replays[command.kind] += 1
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code in BROKEN:
                    self.tally.broken.append(f"{command.kind} {command.key}: {code.name} {error.details()}")
                elif code not in RETRIED and not (
                    code == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() < retry_invalid_until
                ):
                    self._refused(command, error, expect or tolerate)
                    return error
                self.tally.retries[code.name] += 1
                if time.monotonic() > self.give_up_at:
                    self.tally.unresolved.append(f"{command.kind} {command.key}: last {code.name}")
                    return None
                await asyncio.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, 1.0)
                continue
            if expect is not None:
                self.tally.unexpected.append(f"{command.kind} {command.key}: OK where {expect.name} was due")
                return response
            self.tally.ok[command.kind] += 1
            if keep:
                self.tally.accepted.append((command, response))
            return response

    def _refused(self, command: Command, error: grpc.aio.AioRpcError, expect: grpc.StatusCode | None) -> None:
        info = error_info(error)
        reason = info.reason if info is not None else ""
        # A refusal naming the exception it raised; the router's own refusals name the exception acted on.
        if info is not None and info.metadata.get("exception_id") and not command.kind.startswith("exception "):
            self.tally.exception_ids.append(info.metadata["exception_id"])
        if expect is not None and error.code() == expect:
            self.tally.refused_expected[f"{command.kind}: {error.code().name} {reason}"] += 1
            self.tally.refused.append(command)
            return
        self.tally.unexpected.append(f"{command.kind} {command.key}: {error.code().name} {reason} {error.details()}")


def purchase_order(order: Order, version: int, quantity: str, supplier_id: str) -> po_pb2.PurchaseOrder:
    return samples.purchase_order(order.po_id, version, quantity, supplier_id, order.approved_at, "chaos")


def supplier_record(local_id: str, rng: random.Random) -> supplier_pb2.SupplierRecord:
    name = " ".join("".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize() for _ in range(2))
    city, country, postal = rng.choice(CITIES)
    return supplier_pb2.SupplierRecord(
        source_system="procurement",
        local_id=local_id,
        legal_name=f"{name} {local_id} Trading",
        addresses=[
            types_pb2.PostalAddress(
                lines=[f"{rng.randint(1, 300)} {name} Street"], locality=city, postal_code=postal, country_code=country
            )
        ],
    )


@dataclass
class LoadWindow:
    """Until when the load and the faults run: ``stop_at``, and past it until ``min_faults`` faults were dealt (the
    workers and the faults ask the same window, so the load never stops before the faults do)."""

    stop_at: float
    min_faults: int = 0
    dealt: Callable[[], int] = lambda: 0

    def open(self) -> bool:
        return time.monotonic() < self.stop_at or self.dealt() < self.min_faults


async def worker(index: int, client: Client, run_id: str, supplier_id: str, window: LoadWindow, pace: float) -> None:
    rng = random.Random(f"{run_id}-{index}")
    orders: list[Order] = []
    posted: list[Posted] = []  # this worker's receipts and returns answered OK
    made = 0
    suppliers = 0
    documents = 0
    billing = Billing(index, run_id, supplier_id)
    while window.open():
        live = [o for o in orders if not o.broken]
        roll = rng.random()
        if not live or (roll < 0.20 and len(live) < 40):
            made += 1
            order = Order(f"CHAOS-{run_id}-{index}-{made}", now_timestamp())
            orders.append(order)
            quantity = str(rng.randint(1, 999))
            key = f"chaos:{order.po_id}:v1"
            command = Command("publish", key, order.po_id, 1, quantity)
            request = po.PublishPurchaseOrderRequest(
                purchase_order=purchase_order(order, 1, quantity, supplier_id), idempotency_key=key
            )
            answer = await client.send(command, client.orders.PublishPurchaseOrder, request, "procurement")
            _settle(order, answer, version=1)
        elif roll < 0.25:
            suppliers += 1
            local_id = f"CS-{run_id}-{index}-{suppliers}"
            key = f"chaos-supplier:{local_id}"
            command = Command("supplier", key, local_id=local_id)
            submission = sp.SubmitSupplierRecordRequest(record=supplier_record(local_id, rng), idempotency_key=key)
            await client.send(command, client.suppliers.SubmitSupplierRecord, submission, "procurement")
        elif roll < 0.28:
            order = rng.choice(live)
            quantity = str(1000 + rng.randint(1, 999))  # never the first version's quantity
            key = f"chaos:{order.po_id}:v1"
            command = Command("conflict", key, order.po_id, 1, quantity)
            request = po.PublishPurchaseOrderRequest(
                purchase_order=purchase_order(order, 1, quantity, supplier_id), idempotency_key=key
            )
            await client.send(
                command,
                client.orders.PublishPurchaseOrder,
                request,
                "procurement",
                expect=grpc.StatusCode.ALREADY_EXISTS,
            )
        elif roll < 0.50:
            documents += 1
            await receiving(client, rng, live, posted, f"{run_id}-{index}-{documents}")
        elif roll < 0.68:
            await invoicing(client, rng, live, billing)
        else:
            order = rng.choice(live)
            if order.acknowledged < order.version and rng.random() < 0.5:
                version = order.version
                acknowledged_at = now_timestamp()
                command = Command("acknowledge", f"erp:ack:{order.po_id}:v{version}", order.po_id, version)
                ack_request = po.AcknowledgePurchaseOrderRequest(
                    po_id=order.po_id,
                    version=version,
                    erp_document_number=f"ERP-{order.po_id}",
                    acknowledged_at=acknowledged_at,
                )
                answer = await client.send(command, client.orders.AcknowledgePurchaseOrder, ack_request, "erp")
                if isinstance(answer, Message):
                    order.acknowledged = version
                elif answer is not None:
                    order.broken = True
            else:
                version = order.version + 1
                # Never below what may have been received: po-publication refuses such a change order.
                low = max(1, order.received_bound)
                quantity = str(rng.randint(low, max(low, 999)) if low <= 999 else low + rng.randint(0, 99))
                key = po_domain.natural_idempotency_key("procurement", order.po_id, version)
                command = Command("change", key, order.po_id, version, quantity)
                change_request = po.ChangePurchaseOrderRequest(
                    purchase_order=purchase_order(order, version, quantity, supplier_id)
                )
                answer = await client.send(command, client.orders.ChangePurchaseOrder, change_request, "procurement")
                _settle(order, answer, version=version)
        if pace:
            await asyncio.sleep(pace * (0.5 + rng.random()))


def goods_receipt(
    receipt_id: str,
    order: Order,
    version: int,
    site: str,
    lines: list[tuple[int, int, str, int]],
    *,
    reverses: str = "",
) -> rc.PostGoodsReceiptRequest:
    """A receipt (or, naming the receipt it reverses, a return): lines of (po line, quantity, unit, rejected)."""
    document = receipt_pb2.GoodsReceipt(
        receipt_id=receipt_id,
        po_id=order.po_id,
        po_version=version,
        site_id=site,
        kind=receipt_pb2.RECEIPT_KIND_RETURN if reverses else receipt_pb2.RECEIPT_KIND_RECEIPT,
        reverses_receipt_id=reverses,
    )
    for number, (po_line, quantity, unit, rejected) in enumerate(lines, start=1):
        line = document.lines.add(
            line_number=number,
            po_line_number=po_line,
            quantity=decimal_pb2.Decimal(value=str(quantity)),
            unit_of_measure=unit,
        )
        if rejected:
            line.rejected_quantity.value = str(rejected)
            line.reject_reason_code = "damaged"
    return rc.PostGoodsReceiptRequest(receipt=document)


def sent_document(request: rc.PostGoodsReceiptRequest) -> SentDocument:
    document = request.receipt
    return SentDocument(
        document.po_id,
        "return" if document.kind == receipt_pb2.RECEIPT_KIND_RETURN else "receipt",
        tuple(
            (
                line.po_line_number,
                Decimal(line.quantity.value) * UNIT_FACTORS[line.unit_of_measure],
                Decimal(line.rejected_quantity.value or "0") * UNIT_FACTORS[line.unit_of_measure],
            )
            for line in document.lines
        ),
    )


async def receiving(client: Client, rng: random.Random, live: list[Order], posted: list[Posted], name: str) -> None:
    """One receiving command: a new receipt (EA or CS, sometimes from the superseded version, sometimes with a line
    the order lacks or goods rejected at the dock), a return of an earlier receipt (now and then more than it
    received), the same document again, or a document id used before with other content (on its order or
    another)."""
    roll = rng.random()
    receipts = [p for p in posted if p.kind == "receipt"]
    if posted and roll < 0.12:
        again = rng.choice(posted)
        command = Command("receipt replay", again.key, again.po_id)
        await client.send(command, client.receipts.PostGoodsReceipt, again.request, again.system)
        return
    if posted and roll < 0.20:
        reused = rng.choice(posted)
        request = rc.PostGoodsReceiptRequest()
        request.CopyFrom(reused.request)
        request.receipt.lines[0].quantity.value = str(int(Decimal(request.receipt.lines[0].quantity.value)) + 1000)
        # A receipt's id against another order of this worker too (a return's would name a receipt that order
        # does not hold, a refusal of its own when the document index is being rebuilt).
        if reused.kind == "receipt" and rng.random() < 0.4:
            other = rng.choice(live)
            request.receipt.po_id, request.receipt.po_version = other.po_id, other.version
        command = Command("receipt conflict", reused.key, request.receipt.po_id)
        await client.send(
            command, client.receipts.PostGoodsReceipt, request, reused.system, expect=grpc.StatusCode.ALREADY_EXISTS
        )
        return
    by_order = {order.po_id: order for order in live}
    returnable = [p for p in receipts if p.po_id in by_order and p.returned < p.received]
    if returnable and roll < 0.40:
        original = rng.choice(returnable)
        order = by_order[original.po_id]
        quantity = rng.randint(1, original.received - original.returned)
        if rng.random() < 0.1:
            quantity = original.received - original.returned + 1  # more than is left: an over-return finding
        request = goods_receipt(
            f"RT-{name}", order, order.version, original.site, [(1, quantity, "EA", 0)], reverses=original.receipt_id
        )
        document = Posted(original.system, original.site, f"RT-{name}", order.po_id, "return", request)
        original.returned += quantity
        order.received_low -= quantity  # answered or not, it may have been stored
    else:
        awaited = [o for o in live if o.awaited]  # an invoice waits for its first receipt: land it now and then
        order = rng.choice(awaited) if awaited and rng.random() < 0.5 else rng.choice(live)
        system, site = rng.choice(RECEIPT_POSTERS)
        unit = "CS" if rng.random() < 0.25 else "EA"
        quantity = 1 if unit == "CS" else rng.randint(1, 5)
        rejected = 1 if rng.random() < 0.1 else 0
        lines = [(1, quantity, unit, rejected)]
        if rng.random() < 0.05:
            lines.append((2, 1, "EA", 0))  # a line the order does not have: a finding
        version = order.version - 1 if order.version > 1 and rng.random() < 0.15 else order.version
        request = goods_receipt(f"GR-{name}", order, version, site, lines)
        received = quantity * UNIT_FACTORS[unit]
        order.received_bound += received
        document = Posted(system, site, f"GR-{name}", order.po_id, "receipt", request, received=received)
    command = Command(document.kind, document.key, document.po_id)
    answer = await client.send(command, client.receipts.PostGoodsReceipt, document.request, document.system)
    if isinstance(answer, Message):
        posted.append(document)
        client.tally.documents.setdefault(document.key, sent_document(document.request))
        receipt = document.request.receipt
        plain = len(receipt.lines) == 1 and not receipt.lines[0].rejected_quantity.value
        if document.kind == "receipt" and plain and receipt.po_version == order.version:
            order.received_low += document.received
            order.awaited = False


@dataclass
class Invoiced:
    """An invoice answered OK, kept by its worker to repeat it, reuse its id, write its number otherwise, release
    or pay it."""

    request: inv.SubmitInvoiceRequest
    number: int  # its number is INV-<worker>-<number in 5 digits>
    state: int  # the state last answered (invoice_pb2.InvoiceState)
    release: tuple[str, str] | None = None  # (person, reason) of a release answered OK

    @property
    def invoice_id(self) -> str:
        return self.request.invoice.invoice_id


@dataclass
class Billing:
    """One worker's invoicing: its invoices answered OK and how many it made."""

    index: int
    run_id: str
    supplier_id: str
    invoices: list[Invoiced] = field(default_factory=list)
    made: int = 0


def invoice_request(
    invoice_id: str, number: str, supplier_id: str, po_id: str, quantity: int, price: Decimal
) -> inv.SubmitInvoiceRequest:
    """A one-line invoice on line 1 of ``po_id`` in EUR with 19 % VAT, its amounts adding up."""
    net = (quantity * price).quantize(CENT)
    tax = (net * VAT).quantize(CENT)
    document = invoice_pb2.Invoice(
        invoice_id=invoice_id,
        supplier_id=supplier_id,
        invoice_number=number,
        invoice_date=date_to_proto(datetime.now(UTC).date()),
        currency_code="EUR",
        lines=[
            invoice_pb2.InvoiceLine(
                line_number=1,
                po_id=po_id,
                po_line_number=1,
                quantity=decimal_pb2.Decimal(value=str(quantity)),
                unit_price=money_to_proto(price, "EUR"),
                line_amount=money_to_proto(net, "EUR"),
            )
        ],
        net_amount=money_to_proto(net, "EUR"),
        tax_amount=money_to_proto(tax, "EUR"),
        total_amount=money_to_proto(net + tax, "EUR"),
    )
    return inv.SubmitInvoiceRequest(invoice=document, idempotency_key=f"chaos-invoice:{invoice_id}")


async def submit_invoice(
    client: Client, billing: Billing, kind: str, request: inv.SubmitInvoiceRequest, number: int, *, patience: float = 0
) -> None:
    """Submit one invoice as procurement; one answered OK is kept (and its document remembered for the judgement)."""
    document = request.invoice
    command = Command(kind, document.invoice_id, document.lines[0].po_id, quantity=document.lines[0].quantity.value)
    retry_invalid_until = time.monotonic() + patience if patience else 0.0
    answer = await client.send(
        command, client.invoices.SubmitInvoice, request, "procurement", retry_invalid_until=retry_invalid_until
    )
    if isinstance(answer, inv.SubmitInvoiceResponse):
        if kind != "invoice replay":
            billing.invoices.append(Invoiced(request, number, answer.status.state))
            client.tally.invoices.setdefault(document.invoice_id, document)
        else:
            for invoiced in billing.invoices:
                if invoiced.invoice_id == document.invoice_id:
                    invoiced.state = answer.status.state


async def invoicing(client: Client, rng: random.Random, live: list[Order], billing: Billing) -> None:
    """One invoicing command against this worker's orders: an invoice within what was received at the order's
    price, one before any receipt, one over the price tolerance, an earlier invoice's number written otherwise, the
    same invoice again, an invoice id reused with other content, a release by a person or a payment by the ERP."""
    roll = rng.random()
    earlier = billing.invoices
    by_order = {order.po_id: order for order in live}
    if earlier and roll < 0.10:
        again = rng.choice(earlier)
        await submit_invoice(client, billing, "invoice replay", again.request, again.number)
        return
    if earlier and roll < 0.17:
        reused = rng.choice(earlier)
        line = reused.request.invoice.lines[0]
        other = invoice_request(
            reused.invoice_id,
            reused.request.invoice.invoice_number,
            billing.supplier_id,
            line.po_id,
            int(line.quantity.value) + 1000,
            PO_PRICE,
        )
        command = Command("invoice conflict", reused.invoice_id, line.po_id)
        await client.send(
            command, client.invoices.SubmitInvoice, other, "procurement", expect=grpc.StatusCode.ALREADY_EXISTS
        )
        return
    if earlier and roll < 0.27:
        original = rng.choice(earlier)
        billing.made += 1
        request = inv.SubmitInvoiceRequest()
        request.CopyFrom(original.request)
        invoice_id = f"INV-{billing.run_id}-{billing.index}-{billing.made}"
        request.invoice.invoice_id = invoice_id
        # INV-3-00012 written otherwise: one number once normalized, so a duplicate_invoice block.
        request.invoice.invoice_number = f"inv {billing.index} {original.number}"
        request.idempotency_key = f"chaos-invoice:{invoice_id}"
        order = by_order.get(request.invoice.lines[0].po_id)
        if order is not None:
            order.invoiced += int(request.invoice.lines[0].quantity.value)
        await submit_invoice(client, billing, "invoice duplicate", request, billing.made)
        return
    blocked = [i for i in earlier if i.state == invoice_pb2.INVOICE_STATE_BLOCKED]
    released = [i for i in earlier if i.state == invoice_pb2.INVOICE_STATE_RELEASED and i.release is not None]
    if (blocked or released) and roll < 0.40:
        target = rng.choice(blocked) if blocked and (not released or rng.random() < 0.8) else rng.choice(released)
        person, reason = target.release or (rng.choice(PERSONS), "price agreed with the supplier by phone")
        system = rng.choice(("ops-console", "procurement"))
        release = inv.ReleaseInvoiceRequest(invoice_id=target.invoice_id, reason=reason, released_by=person)
        command = Command("release", target.invoice_id)
        answer = await client.send(
            command, client.invoices.ReleaseInvoice, release, system, tolerate=grpc.StatusCode.FAILED_PRECONDITION
        )
        if isinstance(answer, inv.ReleaseInvoiceResponse):
            target.state = answer.status.state
            target.release = (person, reason)
            client.tally.releases.append((target.invoice_id, person, reason))
        return
    payable = [
        i
        for i in earlier
        if i.state
        in (invoice_pb2.INVOICE_STATE_MATCHED, invoice_pb2.INVOICE_STATE_RELEASED, invoice_pb2.INVOICE_STATE_PAID)
    ]
    if payable and roll < 0.53:
        target = rng.choice(payable)
        reference = f"PAY-{target.invoice_id}"
        payment = inv.RecordInvoicePaymentRequest(invoice_id=target.invoice_id, payment_reference=reference)
        command = Command("payment", target.invoice_id)
        answer = await client.send(
            command, client.invoices.RecordInvoicePayment, payment, "erp", tolerate=grpc.StatusCode.FAILED_PRECONDITION
        )
        if isinstance(answer, inv.RecordInvoicePaymentResponse):
            target.state = answer.status.state
            client.tally.payments.append((target.invoice_id, reference))
        return
    unreceived = [o for o in live if o.received_bound == 0]
    receivable = [o for o in live if o.received_low - o.invoiced >= 1]
    if unreceived and (roll < 0.68 or not receivable):
        kind, order, price = "invoice early", rng.choice(unreceived), PO_PRICE
        quantity = rng.randint(1, 3)
        order.awaited = True
    elif roll < 0.80 or not receivable:
        kind, order, price = "invoice over price", rng.choice(live), OVER_PRICE
        quantity = rng.randint(1, 3)
    else:
        kind, order, price = "invoice", rng.choice(receivable), PO_PRICE
        quantity = rng.randint(1, min(5, order.received_low - order.invoiced))
    billing.made += 1
    invoice_id = f"INV-{billing.run_id}-{billing.index}-{billing.made}"
    number = f"INV-{billing.index}-{billing.made:05d}"
    order.invoiced += quantity
    request = invoice_request(invoice_id, number, billing.supplier_id, order.po_id, quantity, price)
    await submit_invoice(client, billing, kind, request, billing.made)


def _settle(order: Order, answer: object, *, version: int) -> None:
    if isinstance(answer, Message):
        order.version = version
    else:  # refused (recorded as unexpected) or unanswered: the order's next version is no longer known
        order.broken = True


# --------------------------------------------------------------------------------------------- exception handling


@dataclass
class Desk:
    """One ops-console handler's view: the exceptions its last listings showed (updated by its answers), and the
    raises it made (to send again, or to reuse their key with other content)."""

    index: int
    run_id: str
    known: dict[str, exception_pb2.Exception] = field(default_factory=dict)
    raised: list[exc.RaiseExceptionRequest] = field(default_factory=list)
    made: int = 0


async def handler(index: int, client: Client, run_id: str, window: LoadWindow, pace: float) -> None:
    """A person at the ops-console handling exceptions while the workers' commands raise them (refusals, receipt
    findings, blocked invoices): pages through ListExceptions with a filter, acknowledges open ones and resolves
    acknowledged (or open) ones as one of PERSONS, raises problems by hand with an idempotency key (the same raise
    again now and then, and once in a while the key with other content: ALREADY_EXISTS), and reads the summary."""
    rng = random.Random(f"{run_id}-ops-{index}")
    desk = Desk(index, run_id)
    while window.open():
        roll = rng.random()
        if not desk.known or roll < 0.20:
            await browse(client, rng, desk)
        elif roll < 0.38:
            await raise_by_hand(client, rng, desk)
        elif desk.raised and roll < 0.44:
            again = rng.choice(desk.raised)
            await send_raise(client, desk, "exception raise again", again)
        elif desk.raised and roll < 0.47:
            await reuse_raise_key(client, rng, desk)
        elif roll < 0.70:
            await acknowledge(client, rng, desk)
        elif roll < 0.95:
            await resolve(client, rng, desk)
        else:
            command = Command("exception summary", "")
            owner = rng.choice(("", *TEAMS))
            await client.send(
                command,
                client.exceptions.SummarizeExceptions,
                exc.SummarizeExceptionsRequest(owner_team=owner),
                "ops-console",
                keep=False,
            )
        if pace:
            await asyncio.sleep(pace * (0.5 + rng.random()))


async def browse(client: Client, rng: random.Random, desk: Desk) -> None:
    """ListExceptions with a filter a person would use, up to three pages: what the desk knows from now on."""
    request = exc.ListExceptionsRequest(page=types_pb2.PageRequest(page_size=rng.choice((20, 50, 200))))
    roll = rng.random()
    if roll < 0.35:
        request.unresolved_only = True
    elif roll < 0.55:
        request.state = exception_pb2.EXCEPTION_STATE_OPEN
    elif roll < 0.70:
        request.state = exception_pb2.EXCEPTION_STATE_ACKNOWLEDGED
    elif roll < 0.85:
        request.owner_team = rng.choice(TEAMS)
        request.unresolved_only = True
    else:  # the newest: first raised in the last ten seconds
        request.raised_after.FromSeconds(int(time.time()) - 10)
    found: dict[str, exception_pb2.Exception] = {}
    for _ in range(3):
        answer = await client.send(
            Command("exception list", ""), client.exceptions.ListExceptions, request, "ops-console", keep=False
        )
        if not isinstance(answer, exc.ListExceptionsResponse):
            break
        found.update((e.exception_id, e) for e in answer.exceptions)
        if not answer.page_info.next_page_token:
            break
        request.page.page_token = answer.page_info.next_page_token
    if found:
        desk.known = found


def hand_raise(rng: random.Random, desk: Desk) -> exc.RaiseExceptionRequest:
    """A problem a person raises by hand about one of the handler's objects (its kind is the object's)."""
    desk.made += 1
    number = rng.randrange(HAND_OBJECTS)
    type_value, object_type, site = HAND_RAISES[number % len(HAND_RAISES)]
    key = f"OPS-{desk.run_id}-{desk.index}-{number}"
    evidence = json.dumps({"seen": desk.made, "where": site or "central", "by": rng.choice(PERSONS)})
    return exc.RaiseExceptionRequest(
        exception=exception_pb2.Exception(
            type=type_value,
            object=types_pb2.ObjectRef(object_type=object_type, object_key=key),
            detail=f"{exception_pb2.ExceptionType.Name(type_value).lower()} on {key}, noticed the {desk.made}. time",
            site_id=site,
            evidence=[evidence],
        ),
        idempotency_key=f"chaos-raise:{desk.run_id}:{desk.index}:{desk.made}",
    )


async def raise_by_hand(client: Client, rng: random.Random, desk: Desk) -> None:
    request = hand_raise(rng, desk)
    desk.raised.append(request)
    await send_raise(client, desk, "exception raise", request)


async def send_raise(client: Client, desk: Desk, kind: str, request: exc.RaiseExceptionRequest) -> None:
    """RaiseException as ops-console, retried with its key until answered; an answer OK is kept for the judgement."""
    raise_id = exception_mapping.raise_id("ops-console", request.idempotency_key)
    answer = await client.send(
        Command(kind, request.idempotency_key), client.exceptions.RaiseException, request, "ops-console"
    )
    if isinstance(answer, exc.RaiseExceptionResponse):
        record = client.tally.hand_raises.setdefault(raise_id, HandRaise(request))
        record.answered.add(answer.exception.exception_id)
        record.last_raised.add(answer.exception.last_raised_id)
        desk.known[answer.exception.exception_id] = answer.exception
        if kind == "exception raise again":
            client.tally.replays[kind] += 1  # the same key answered again: the raise stored the first time


async def reuse_raise_key(client: Client, rng: random.Random, desk: Desk) -> None:
    """An earlier raise's key with other content: refused ALREADY_EXISTS (IDEMPOTENCY_KEY_REUSED), nothing stored."""
    original = rng.choice(desk.raised)
    request = exc.RaiseExceptionRequest()
    request.CopyFrom(original)
    request.exception.detail += " (and more)"
    answer = await client.send(
        Command("exception key reuse", request.idempotency_key),
        client.exceptions.RaiseException,
        request,
        "ops-console",
        expect=grpc.StatusCode.ALREADY_EXISTS,
    )
    if isinstance(answer, grpc.aio.AioRpcError):
        client.tally.key_reuses.append(exception_mapping.raise_id("ops-console", request.idempotency_key))


def _pick(rng: random.Random, desk: Desk, states: tuple[int, ...]) -> exception_pb2.Exception | None:
    candidates = [e for e in desk.known.values() if e.state in states]
    return rng.choice(candidates) if candidates else None


def _named(rng: random.Random, target: exception_pb2.Exception) -> str:
    """How the person names it: its id, now and then the id of a raise folded into it (what a service answered)."""
    return target.last_raised_id if target.last_raised_id and rng.random() < 0.15 else target.exception_id


async def acknowledge(client: Client, rng: random.Random, desk: Desk) -> None:
    """Take an open exception (now and then a closed one: FAILED_PRECONDITION, unless it reopened meanwhile). Another
    person may have taken it meanwhile (ALREADY_ACKNOWLEDGED): rightly refused."""
    target = _pick(rng, desk, (exception_pb2.EXCEPTION_STATE_OPEN,))
    if target is None or rng.random() < 0.08:
        target = _pick(rng, desk, (exception_pb2.EXCEPTION_STATE_RESOLVED, exception_pb2.EXCEPTION_STATE_REPLAYED))
    if target is None:
        await browse(client, rng, desk)
        return
    person = rng.choice(PERSONS)
    request = exc.AcknowledgeExceptionRequest(exception_id=_named(rng, target), acknowledged_by=person)
    answer = await client.send(
        Command("exception acknowledge", request.exception_id),
        client.exceptions.AcknowledgeException,
        request,
        "ops-console",
        tolerate=grpc.StatusCode.FAILED_PRECONDITION,
    )
    if isinstance(answer, exc.AcknowledgeExceptionResponse):
        client.tally.handled.append(Handled("acknowledged", answer.exception.exception_id, person))
        desk.known[answer.exception.exception_id] = answer.exception
    elif answer is not None:
        desk.known.pop(target.exception_id, None)  # it moved on: the next listing shows where


async def resolve(client: Client, rng: random.Random, desk: Desk) -> None:
    """Close an acknowledged exception (or an open one) with a kind, a note and the person; now and then one that is
    closed already (answered as it stands when it is the same resolution, else FAILED_PRECONDITION)."""
    roll = rng.random()
    if roll < 0.75:
        target = _pick(rng, desk, (exception_pb2.EXCEPTION_STATE_ACKNOWLEDGED,))
    elif roll < 0.92:
        target = _pick(rng, desk, (exception_pb2.EXCEPTION_STATE_OPEN,))
    else:
        target = _pick(rng, desk, (exception_pb2.EXCEPTION_STATE_RESOLVED,))
    if target is None:
        await browse(client, rng, desk)
        return
    # The same resolution again (answered as it stands), a person's: one its source cleared is no person's to repeat.
    if (
        target.state == exception_pb2.EXCEPTION_STATE_RESOLVED
        and target.resolution.kind in RESOLUTION_KINDS
        and rng.random() < 0.5
    ):
        kind, note, person = target.resolution.kind, target.resolution.note, target.resolution.by
    else:
        kind = rng.choice(RESOLUTION_KINDS)
        person = target.acknowledgment.by or rng.choice(PERSONS)
        note = (
            f"{exception_pb2.ResolutionKind.Name(kind).removeprefix('RESOLUTION_KIND_').lower()}: checked by {person}"
        )
    request = exc.ResolveExceptionRequest(
        exception_id=_named(rng, target), resolution=note, kind=kind, resolved_by=person
    )
    answer = await client.send(
        Command("exception resolve", request.exception_id),
        client.exceptions.ResolveException,
        request,
        "ops-console",
        tolerate=grpc.StatusCode.FAILED_PRECONDITION,
    )
    if isinstance(answer, exc.ResolveExceptionResponse):
        client.tally.handled.append(Handled("resolved", answer.exception.exception_id, person, kind, note))
        desk.known[answer.exception.exception_id] = answer.exception
    elif answer is not None:
        desk.known.pop(target.exception_id, None)


def escalating_policy() -> str:
    """The default policy with every exception route escalating after ESCALATE_AFTER_SECONDS (the ones with an
    escalate_to keep it): a change of destination for every open exception nobody took."""
    document = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    document["description"] = f"{document['description']} Chaos: exceptions escalate in seconds."
    for route in document["exceptions"]["routes"]:
        route["escalate_after"] = f"{ESCALATE_AFTER_SECONDS}s"
    return str(yaml.safe_dump(document, sort_keys=False))


async def change_policy(client: Client, at: float) -> None:
    """At ``at``, ops-console (the policy's administrator) applies revision 1 over the bootstrap policy: the escalating
    one. Retried like every command (a retry of an apply that was stored is answered as it stands)."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    request = cp.ApplyPolicyRequest(
        document_yaml=escalating_policy(), expected_revision=0, comment="chaos: exceptions escalate in seconds"
    )
    await client.send(Command("policy change", "revision 1"), client.control.ApplyPolicy, request, "ops-console")


# --------------------------------------------------------------------------------------------- the stack


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.namespace = args.namespace
        components = [c for c in COMPONENTS if c.name in STARTED]
        base = free_port_range(6)
        self.stack = Stack(
            StackOptions(
                data_dir=workdir,
                grpc_port_base=base,
                metrics_port_base=None,
                nats_url=None,
                redis_url=None,
                nats_port=free_port(),
                redis_port=free_port(),
                sync_always=True,
                components=components,
                ready_timeout=90.0,
                server_death_signal=signal.SIGKILL,  # Valkey may be frozen (SIGSTOP) when this script dies
            )
        )
        self.components = {c.name: c for c in components}
        self.running: dict[str, RunningComponent] = {}
        self.killed: set[int] = set()  # pids this script killed on purpose
        self.unexpected_exits: list[str] = []
        self.faults: Counter[str] = Counter()
        self.fault_log: list[str] = []
        self.proxies: dict[str, FaultProxy] = {}
        self.spawn_failures = 0  # forks that died before exec
        self.restarting: set[str] = set()
        self.recovery: list[float] = []  # seconds from a service kill to SERVING again

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.components[name].grpc_port(self.stack.options.grpc_port_base)}"

    async def start(self) -> None:
        os.environ["SYNCGOV_NAMESPACE"] = self.namespace  # the permissions and the components read it
        os.environ["SYNCGOV_LOG_LEVEL"] = self.args.log_level
        self.stack.start_servers()
        assert self.stack.nats_server is not None
        assert self.stack.valkey_server is not None
        self.proxies["nats"] = await FaultProxy("nats", self.stack.nats_server.port).start()
        self.proxies["valkey"] = await FaultProxy("valkey", self.stack.valkey_server.port).start()
        for name in SERVED:
            port = self.components[name].grpc_port(self.stack.options.grpc_port_base)
            self.proxies[name] = await FaultProxy(name, port).start()
        # The components reach NATS and Valkey through the proxies (their credentials as `syncgov up` hands them).
        self.stack.nats_url = f"nats://{self.proxies['nats'].address}"
        self.stack.redis_url = f"redis://{self.proxies['valkey'].address}/0"
        self.stack.start_components()
        for child in self.stack.children:
            self.running[child.component.name] = child
        states = await self.stack.wait_until_serving()
        if any(state != "SERVING" for state in states.values()):
            raise RuntimeError(f"the services did not come up: {states}; logs in {self.workdir / 'logs'}")

    def spawn(self, component: Component) -> RunningComponent:
        """Start one component again, exactly as Stack.start_components started it."""
        everything = self.stack.options.components
        self.stack.options.components = [component]
        try:
            self.stack.start_components()
        finally:
            self.stack.options.components = everything
        child = self.stack.children[-1]
        self.running[component.name] = child
        return child

    async def wait_serving(self, name: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.address(name)) as channel:
            while time.monotonic() < deadline:
                if await health_status(channel, deadline_seconds=1.0) == "SERVING":
                    return True
                await asyncio.sleep(0.2)
        return False

    async def watch(self) -> None:
        """A component that exits without being killed by this script is a finding: note it and restart it."""
        while True:
            await asyncio.sleep(0.5)
            for name, child in list(self.running.items()):
                code = child.process.poll()
                if code is not None and child.process.pid not in self.killed and name not in self.restarting:
                    self.unexpected_exits.append(f"{name} exited with {code}")
                    self.killed.add(child.process.pid)
                    self.spawn(self.components[name])

    async def inject(self, kind: str) -> None:
        rng = self.rng
        started = time.monotonic()
        if kind.startswith("kill ") and kind != "kill nats-server":
            if await self.kill_and_restart(kind.removeprefix("kill ")):
                self.recovery.append(time.monotonic() - started)
        elif kind == "kill nats-server":
            server = self.stack.nats_server
            assert server is not None
            server.kill()
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            # From this (the main) thread: a child's PR_SET_PDEATHSIG follows the thread that forked it.
            for attempt in range(FORK_ATTEMPTS):
                try:
                    server.start()
                    break
                except ServerError:
                    if attempt == FORK_ATTEMPTS - 1:
                        raise
                    self.spawn_failures += 1  # the fork died before exec (see docs/reliability.md); start again
                    await asyncio.sleep(0.2)  # a moment apart: the failures come in runs
        elif kind == "freeze valkey":
            process = self.valkey_process()
            os.kill(process.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(rng.uniform(1.0, 5.0))
            finally:
                os.kill(process.pid, signal.SIGCONT)
        elif kind == "wipe valkey":
            await self.flushall()
        elif kind.startswith("cut "):
            target = kind.split()[1]
            for name in SERVED if target == "grpc" else (target,):
                self.proxies[name].cut()
        elif kind.startswith("stall "):
            proxy = self.proxies[kind.split()[1]]
            proxy.stall()
            try:
                await asyncio.sleep(rng.uniform(1.0, 5.0))
            finally:
                proxy.resume()
        self.faults[kind] += 1
        self.fault_log.append(f"{time.monotonic() - self.t0:6.1f}s {kind} ({time.monotonic() - started:.1f}s)")

    async def kill_and_restart(self, name: str, timeout: float = 60.0) -> bool:
        """SIGKILL the service and start it again at once; whether it serves again within ``timeout``."""
        child = self.running[name]
        self.killed.add(child.process.pid)
        child.process.send_signal(signal.SIGKILL)
        child.process.wait()
        self.restarting.add(name)
        try:
            for _ in range(FORK_ATTEMPTS):
                fresh = self.spawn(self.components[name])
                await asyncio.sleep(0.3)
                if fresh.process.poll() is None or fresh.process.returncode != -signal.SIGSEGV:
                    break
                # The fork died before exec (see docs/reliability.md: a harness artefact, not the service).
                self.killed.add(fresh.process.pid)
                self.spawn_failures += 1
        finally:
            self.restarting.discard(name)
        return await self.wait_serving(name, timeout=timeout)

    def valkey_process(self) -> subprocess.Popen[bytes]:
        server = self.stack.valkey_server
        assert server is not None
        assert server.process is not None
        return server.process

    async def flushall(self) -> None:
        from redis.asyncio import Redis

        assert self.stack.valkey_server is not None
        redis = Redis.from_url(self.stack.valkey_server.url, socket_timeout=5)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()

    async def faults_until(self, window: LoadWindow) -> None:
        """Faults while the load runs; at least ``--min-faults`` of them, the load kept up until they are dealt (on a
        slow machine, each kill waits longer for the service to serve again)."""
        deck: list[str] = []
        await asyncio.sleep(self.args.gap * self.rng.uniform(0.3, 0.8))
        while window.open():
            if not deck:  # every kind once per round, in a seeded order
                deck = list(FAULT_KINDS)
                self.rng.shuffle(deck)
            await self.inject(deck.pop())
            await asyncio.sleep(self.args.gap * self.rng.uniform(0.5, 1.5))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            os.kill(self.valkey_process().pid, signal.SIGCONT)
        self.stack.stop(timeout=10)

    t0 = 0.0


# --------------------------------------------------------------------------------------------- the judgement


@dataclass
class Invariant:
    name: str
    held: bool
    detail: str = ""
    cases: list[str] = field(default_factory=list)  # every case that violated it (the detail shows a few)


def _sample(items: list[str], count: int = 3) -> str:
    shown = "; ".join(items[:count])
    return f"{len(items)}: {shown}" + (" ..." if len(items) > count else "")


async def scan(reader: EventReader, domain: str) -> list[StoredEvent]:
    return [stored async for stored in reader.scan(domain)]


async def verify(chaos: Chaos, client: Client, tally: Tally) -> tuple[list[Invariant], dict[str, float]]:
    nats_server = chaos.stack.nats_server
    assert nats_server is not None
    nc = await nats.connect(nats_server.url, connect_timeout=5)
    try:
        js = nc.jetstream()
        namespace = Namespace(chaos.namespace)
        # invoice-status re-matches in the background: its streams are judged once its consumers are idle; then
        # the raises its re-matches made are folded by exception-router's intake, whose transitions the control
        # plane chains.
        settling = time.monotonic()
        rematch = tuple((domain, REMATCH_PREFIX) for domain in REMATCH_DOMAINS)
        unsettled = await settle_consumers(js, namespace, rematch, chaos.args.heal_timeout)
        settled_after = time.monotonic() - settling
        exceptions_unsettled = await settle_consumers(js, namespace, EXCEPTION_CONSUMERS, chaos.args.heal_timeout)
        # The router's sweeps escalate what nobody handled within the route's escalate_after: the stream is judged
        # once it stopped moving for longer than that, and the control plane chained what they wrote.
        quiet = ESCALATE_AFTER_SECONDS + 2.0
        exceptions_unsettled += await stream_quiet(js, namespace, "exception", quiet, chaos.args.heal_timeout)
        exceptions_unsettled += await settle_consumers(js, namespace, EXCEPTION_CONSUMERS, chaos.args.heal_timeout)
        exceptions_settled_after = time.monotonic() - settling
        reader = EventReader(Requests(nc), namespace)
        po_stream = await scan(reader, po_events.DOMAIN)
        supplier_stream = await scan(reader, "supplier")
        receipt_stream = await scan(reader, receipt_events.DOMAIN)
        invoice_stream = await scan(reader, invoice_events.DOMAIN)
        exception_stream = await scan(reader, exception_router_events.DOMAIN)
        audit = await read_audit(js, namespace)
    finally:
        await nc.drain()
    invariants: list[Invariant] = [
        Invariant("invoice-status's re-match consumers settle after the load", not unsettled, unsettled),
        Invariant(
            "exception-router's intake and advisory consumers and the control plane's transition chaining settle",
            not exceptions_unsettled,
            exceptions_unsettled,
        ),
    ]
    figures: dict[str, float] = {
        "po events": len(po_stream),
        "supplier events": len(supplier_stream),
        "receipt events": len(receipt_stream),
        "invoice events": len(invoice_stream),
        "exception events": len(exception_stream),
        "re-match settled after": settled_after,
        "exception consumers settled after": exceptions_settled_after,
        "audit entries": len(audit),
    }

    # The stream's picture: document events per (po, version), acknowledgments per (po, version), the fold.
    documents: dict[tuple[str, int], list[StoredEvent]] = defaultdict(list)
    acknowledgments: dict[tuple[str, int], list[StoredEvent]] = defaultdict(list)
    by_key: Counter[str] = Counter()
    states: dict[str, tuple[po_domain.OrderState, int]] = {}
    unreadable: list[str] = []
    for stored in po_stream:
        envelope = stored.envelope
        name = stored.subject.rsplit(".", 1)[-1]
        if envelope.idempotency_key:
            by_key[f"{name}|{envelope.idempotency_key}"] += 1
        try:
            event = po_events.decode(stored)
        except Exception as error:
            unreadable.append(f"seq {stored.sequence}: {error}")
            continue
        if event is None:
            continue
        key = envelope.object_key
        if name in po_events.DOCUMENT_EVENTS:
            documents[(key, envelope.object_version)].append(stored)
        elif name == po_events.ACKNOWLEDGED and isinstance(event, po_domain.VersionAcknowledged):
            acknowledgments[(key, event.version)].append(stored)
        state = states.get(key, (po_domain.INITIAL, 0))[0]
        states[key] = (po_domain.evolve(state, recorded(stored, event)), stored.sequence)

    accepted_orders = [(c, r) for c, r in tally.accepted if c.kind in ("publish", "change", "acknowledge")]
    missing: list[str] = []
    duplicated: list[str] = []
    wrong_content: list[str] = []
    for command, _ in accepted_orders:
        where = acknowledgments if command.kind == "acknowledge" else documents
        found = where.get((command.po_id, command.version), [])
        if not found:
            missing.append(f"{command.kind} {command.po_id} v{command.version}")
        elif len(found) > 1:
            duplicated.append(f"{command.kind} {command.po_id} v{command.version} x{len(found)}")
        if command.kind != "acknowledge" and found:
            stored_doc = document_of(found[0])
            if stored_doc.lines[0].quantity.value != command.quantity:
                wrong_content.append(
                    f"{command.po_id} v{command.version}: stored {stored_doc.lines[0].quantity.value}, "
                    f"sent {command.quantity}"
                )
    extra_documents = [f"{k[0]} v{k[1]} x{len(v)}" for k, v in documents.items() if len(v) > 1]
    extra_acks = [f"{k[0]} v{k[1]} x{len(v)}" for k, v in acknowledgments.items() if len(v) > 1]
    repeated_keys = [f"{k} x{n}" for k, n in by_key.items() if n > 1]
    invariants.append(
        Invariant("no acknowledged write lost (every OK'd PO command is in the stream)", not missing, _sample(missing))
    )
    invariants.append(
        Invariant(
            "every accepted command has exactly one effect",
            not duplicated and not extra_documents and not extra_acks,
            _sample(duplicated + extra_documents + extra_acks),
        )
    )
    invariants.append(Invariant("no idempotency key used by two events", not repeated_keys, _sample(repeated_keys)))
    invariants.append(
        Invariant(
            "stored documents are the ones answered OK (conflicts left no trace)",
            not wrong_content,
            _sample(wrong_content),
        )
    )
    invariants.append(Invariant("every stored PO event decodes", not unreadable, _sample(unreadable)))

    # Suppliers: each accepted submission wrote exactly one event under its key, and resolves to its golden record.
    supplier_keys = Counter(s.envelope.idempotency_key for s in supplier_stream)
    accepted_suppliers = [(c, r) for c, r in tally.accepted if c.kind == "supplier"]
    supplier_problems = [f"{c.key} x{supplier_keys[c.key]}" for c, _ in accepted_suppliers if supplier_keys[c.key] != 1]
    invariants.append(
        Invariant(
            "every accepted supplier record written exactly once", not supplier_problems, _sample(supplier_problems)
        )
    )

    # Read models, through the services once they serve again (each gets time to notice a loss and rebuild).
    expected_listing = {
        po_id: (state.latest_version, state.acknowledged_version)
        for po_id, (state, _) in states.items()
        if state.latest is not None and state.acknowledged_version < state.latest_version
    }
    healing = time.monotonic()
    listing, listing_note = await read_listing(client, expected_listing, timeout=chaos.args.heal_timeout)
    figures["listing equal after"] = time.monotonic() - healing
    diff = sorted(
        f"{po_id}: listed {listing.get(po_id)}, stream {expected_listing.get(po_id)}"
        for po_id in set(listing) | set(expected_listing)
        if listing.get(po_id) != expected_listing.get(po_id)
    )
    invariants.append(
        Invariant(
            "the unacknowledged list equals its projection of the stream",
            not diff and not listing_note,
            listing_note or _sample(diff),
        )
    )
    disagreements = await check_gets(client, states)
    invariants.append(
        Invariant("GetPurchaseOrder agrees with the stream for every order", not disagreements, _sample(disagreements))
    )
    unresolved_suppliers = await check_suppliers(client, accepted_suppliers)
    invariants.append(
        Invariant(
            "every accepted supplier resolves to the golden record it was answered with",
            not unresolved_suppliers,
            _sample(unresolved_suppliers),
        )
    )

    raised_count: Counter[str] = Counter(
        stored.unpack(exception_events.ExceptionRaised).exception.exception_id
        for stored in exception_stream
        if stored.envelope.event_type == exception_events.ExceptionRaised.DESCRIPTOR.full_name
    )
    raised = set(raised_count)
    invariants.extend(await verify_receipts(client, tally, receipt_stream, raised_count, states, figures))
    invariants.extend(
        await verify_invoices(client, tally, invoice_stream, receipt_stream, raised_count, figures, chaos.args)
    )
    dropped = [exception_id for exception_id in tally.exception_ids if exception_id not in raised]
    invariants.append(
        Invariant(
            "no exception dropped (every exception id answered is in the exception stream)",
            not dropped and (bool(tally.exception_ids) or tally.sent["conflict"] == 0),
            _sample(dropped) if dropped else f"{len(tally.exception_ids)} exception ids answered",
        )
    )
    invariants.extend(await verify_exceptions(chaos, client, tally, exception_stream, audit, figures))
    invariants.append(Invariant("no INTERNAL or UNKNOWN answer", not tally.broken, _sample(tally.broken)))
    invariants.append(
        Invariant("no valid command refused, every conflict refused", not tally.unexpected, _sample(tally.unexpected))
    )
    invariants.append(
        Invariant("every command answered once the faults stopped", not tally.unresolved, _sample(tally.unresolved))
    )
    invariants.append(
        Invariant("no component died unless killed", not chaos.unexpected_exits, _sample(chaos.unexpected_exits))
    )
    return invariants, figures


@dataclass
class Figures:
    """One order line's receiving figures in EA."""

    received: Decimal = Decimal(0)
    returned: Decimal = Decimal(0)
    rejected: Decimal = Decimal(0)

    def as_tuple(self) -> tuple[Decimal, Decimal, Decimal]:
        return (self.received, self.returned, self.rejected)


def _figures_of(status: receipt_pb2.LineReceiptStatus) -> tuple[Decimal, Decimal, Decimal]:
    return (
        Decimal(status.received_quantity.value or "0"),
        Decimal(status.returned_quantity.value or "0"),
        Decimal(status.rejected_quantity.value or "0"),
    )


async def verify_receipts(
    client: Client,
    tally: Tally,
    receipt_stream: list[StoredEvent],
    raised: Counter[str],
    states: dict[str, tuple[po_domain.OrderState, int]],
    figures: dict[str, float],
) -> list[Invariant]:
    """The receiving invariants, from the receipt stream: each document once, the figures every event carries equal
    to the sum of the order's documents so far (recomputed here from their converted quantities), the service's
    status equal to that sum, and every finding's exception raised exactly once."""
    invariants: list[Invariant] = []
    stored_documents: dict[str, list[tuple[str, receipt_event_messages.GoodsReceiptReconciled]]] = defaultdict(list)
    per_order: dict[str, dict[int, Figures]] = defaultdict(lambda: defaultdict(Figures))
    documents_per_order: Counter[str] = Counter()
    unreadable: list[str] = []
    wrong_figures: list[str] = []
    finding_ids: list[str] = []
    checked_lines = 0
    for stored in receipt_stream:
        if stored.subject.rsplit(".", 1)[-1] != receipt_events.RECONCILED:
            continue
        try:
            payload = stored.unpack(receipt_event_messages.GoodsReceiptReconciled)
            if receipt_events.decode(stored) is None:
                raise ValueError("the service's decoder refused it")
        except Exception as error:
            unreadable.append(f"seq {stored.sequence}: {error}")
            continue
        po_id = stored.envelope.object_key
        key = f"{payload.receipt.source_system}/{payload.receipt.receipt_id}"
        stored_documents[key].append((po_id, payload))
        finding_ids.extend(finding.exception_id for finding in payload.findings)
        if len(stored_documents[key]) > 1:
            continue  # the service folds a document once; the exactly-once invariant reports the second
        documents_per_order[po_id] += 1
        lines = per_order[po_id]
        returning = payload.receipt.kind == receipt_pb2.RECEIPT_KIND_RETURN
        for quantity in payload.quantities:
            line = lines[quantity.po_line_number]
            amount = Decimal(quantity.quantity.value or "0")
            if returning:
                line.received -= amount
                line.returned += amount
            else:
                line.received += amount
                line.rejected += Decimal(quantity.rejected_quantity.value or "0")
        for status in payload.lines:
            checked_lines += 1
            expected = lines[status.po_line_number].as_tuple()
            if _figures_of(status) != expected:
                wrong_figures.append(
                    f"{po_id} line {status.po_line_number} after {key} (seq {stored.sequence}): event says "
                    f"{tuple(str(v) for v in _figures_of(status))}, documents sum to {tuple(str(v) for v in expected)}"
                )
    figures["receipt documents"] = len(stored_documents)
    figures["receipt figures checked"] = checked_lines
    figures["orders received against"] = len(per_order)

    accepted = [c for c, _ in tally.accepted if c.kind in ("receipt", "return", "receipt replay")]
    missing: list[str] = []
    differing: list[str] = []
    for command in accepted:
        found = stored_documents.get(command.key, [])
        sent = tally.documents.get(command.key)
        if len(found) != 1:
            missing.append(f"{command.kind} {command.key}: {len(found)} events")
            continue
        po_id, payload = found[0]
        held = tuple(
            (
                q.po_line_number,
                Decimal(q.quantity.value or "0"),
                Decimal(q.rejected_quantity.value or "0"),
            )
            for q in payload.quantities
        )
        if sent is not None and (po_id != sent.po_id or held != sent.quantities):
            differing.append(f"{command.key}: stored {po_id} {held}, answered OK for {sent.po_id} {sent.quantities}")
    invariants.append(
        Invariant(
            "every receipt and return answered OK is in the receipt stream exactly once, as sent (in EA)",
            not missing and not differing,
            _sample(missing + differing),
        )
    )
    twice = [f"{key} x{len(events)}" for key, events in stored_documents.items() if len(events) > 1]
    traces: list[str] = []
    for command in tally.refused:
        if command.kind != "receipt conflict":
            continue
        original = tally.documents.get(command.key)
        for po_id, payload in stored_documents.get(command.key, []):
            content = tuple(
                (q.po_line_number, Decimal(q.quantity.value or "0"), Decimal(q.rejected_quantity.value or "0"))
                for q in payload.quantities
            )
            if original is None or po_id != original.po_id or content != original.quantities:
                traces.append(f"{command.key} on {po_id}: {content}")
    invariants.append(
        Invariant(
            "no document stored twice; a reused document id left no trace",
            not twice and not traces,
            _sample(twice + traces),
        )
    )
    invariants.append(
        Invariant(
            "each event's cumulative figures equal the sum of its order's documents (receipts minus returns)",
            not wrong_figures and not unreadable,
            _sample(unreadable + wrong_figures),
        )
    )
    replays_ok = tally.ok["receipt replay"]
    invariants.append(
        Invariant(
            "every repeated document answered OK as a replay",
            tally.replays["receipt replay"] >= replays_ok,
            f"{tally.replays['receipt replay']} replay answers for {replays_ok} repeats",
        )
    )
    status_problems = await check_receipt_status(client, per_order, documents_per_order, states)
    invariants.append(
        Invariant(
            "GetPurchaseOrderReceiptStatus equals the recomputation from the stream for every order",
            not status_problems,
            _sample(status_problems),
        )
    )
    not_found = await check_receipt_gets(client, list(tally.documents))
    invariants.append(Invariant("GetGoodsReceipt finds every document answered OK", not not_found, _sample(not_found)))
    not_once = [f"{eid} x{raised[eid]}" for eid in dict.fromkeys(finding_ids) if raised[eid] != 1]
    figures["receipt findings"] = len(set(finding_ids))
    invariants.append(
        Invariant(
            "every exception a receipt finding names is in the exception stream exactly once",
            not not_once,
            _sample(not_once) if not_once else f"{len(set(finding_ids))} finding exceptions",
        )
    )
    return invariants


async def read_audit(js: Any, namespace: Namespace) -> dict[str, tuple[str, str]]:
    """The audit chain as the control plane sealed it: source ("<stream>:<sequence>") -> (action, object key)."""
    return {
        entry.source: (entry.action, entry.object.object_key)
        async for entry in AuditChain(js, namespace).entries()
        if entry.source
    }


@dataclass
class ExceptionStory:
    """One exception as the exception stream tells it: the raises folded into it and its transitions."""

    raises: list[tuple[int, exception_pb2.Exception]] = field(default_factory=list)  # (sequence, raise)
    transitions: list[tuple[StoredEvent, exception_decider.Change]] = field(default_factory=list)
    state: exception_decider.CaseState = field(default_factory=lambda: exception_decider.INITIAL)


def fold_exceptions(stream: list[StoredEvent]) -> tuple[ExceptionBook, str]:
    """An exception book rebuilt offline, fed every stored event in order (what the router's follower does); and
    the last sequence it read."""
    book = ExceptionBook()
    for stored in stream:
        book.follow(stored)
    return book, str(stream[-1].sequence if stream else 0)


def expected_get(book: ExceptionBook, case: str, raises: dict[int, exception_pb2.Exception]) -> exception_pb2.Exception:
    """What GetException must answer for ``case``: the fold, with the first raise's whole detail and evidence and the
    original message of the newest raise carrying one (servicer.GetException reads them from the stream)."""
    view = book.cases[case]
    message = exception_mapping.exception_of(view)
    first = raises.get(view.first_sequence)
    if first is not None:
        message.detail = first.detail
        message.evidence.extend(first.evidence)
    carrier = raises.get(view.original_sequence) if view.original_sequence else None
    if carrier is not None and carrier.HasField("original_message"):
        message.original_message.CopyFrom(carrier.original_message)
    return message


def _differing(got: Message, expected: Message) -> list[str]:
    return sorted(f.name for f in got.DESCRIPTOR.fields if getattr(got, f.name) != getattr(expected, f.name))


async def read_exceptions(client: Client) -> tuple[list[exception_pb2.Exception], str]:
    """Every exception ListExceptions lists without a filter, paged through (pages of 200); a note if unreadable."""
    listed: list[exception_pb2.Exception] = []
    request = exc.ListExceptionsRequest(page=types_pb2.PageRequest(page_size=200))
    while True:
        page = await _answer(
            lambda: client.exceptions.ListExceptions(request, metadata=as_system("ops-console"), timeout=10)
        )
        if isinstance(page, grpc.aio.AioRpcError):
            return listed, f"last answer {page.code().name}: {page.details()}"
        listed.extend(page.exceptions)
        request.page.page_token = page.page_info.next_page_token
        if not request.page.page_token:
            return listed, ""


def listing_differences(listed: list[exception_pb2.Exception], book: ExceptionBook) -> list[str]:
    """How the listing differs from the fold: exceptions missing, extra or out of order, and for each one listed the
    fields that differ (ids, state, owner team, occurrences and every other field exception_of gives)."""
    expected = {case: exception_mapping.exception_of(view) for case, view in book.cases.items() if view.first_sequence}
    answered = {e.exception_id: e for e in listed}
    problems = [f"{case}: in the stream, not listed" for case in expected if case not in answered]
    problems += [f"{case}: listed, not in the stream" for case in answered if case not in expected]
    if not problems and [e.exception_id for e in listed] != list(expected):
        problems.append("listed in another order than the stream's first raises")
    if len(answered) != len(listed):
        problems.append(f"{len(listed) - len(answered)} exceptions listed twice")
    for case, got in answered.items():
        if case in expected and got != expected[case]:
            want = expected[case]
            problems.append(
                f"{case}: listed {exception_pb2.ExceptionState.Name(got.state)} {got.owner_team} x{got.occurrences}, "
                f"the fold {exception_pb2.ExceptionState.Name(want.state)} {want.owner_team} x{want.occurrences}; "
                f"differing {_differing(got, want)}"
            )
    return problems


async def listing_equal(client: Client, book: ExceptionBook, timeout: float) -> list[str]:
    """The listing's differences from the fold, read again until there are none or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        listed, note = await read_exceptions(client)
        problems = [note] if note else listing_differences(listed, book)
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(1.0)


async def check_exception_gets(
    client: Client, book: ExceptionBook, raises: dict[int, exception_pb2.Exception], rng: random.Random
) -> tuple[list[str], int]:
    """GetException, by the exception's id and by one of its raises' ids, against the fold for a sample: every
    exception the ops-console handled or that reopened, and others at random up to GET_SAMPLE."""
    cases = [case for case, view in book.cases.items() if view.first_sequence]
    touched = [case for case in cases if book.cases[case].state.acknowledged_by or book.cases[case].state.reopened]
    others = [case for case in cases if case not in set(touched)]
    sample = touched[:GET_SAMPLE] + rng.sample(others, min(len(others), max(0, GET_SAMPLE - len(touched))))
    raise_ids = {sequence: raised.exception_id for sequence, raised in raises.items()}
    by_raise = [(raise_ids[sequence], case_of(raised)) for sequence, raised in raises.items()]
    raise_sample = rng.sample(by_raise, min(len(by_raise), GET_SAMPLE))

    def judge(named_case: tuple[str, str], got: Any) -> list[str]:
        named, case = named_case
        expected = expected_get(book, case, raises)
        if got.exception == expected:
            return []
        return [f"{named}: differing {_differing(got.exception, expected)} from the fold of {case}"]

    problems = await _ask_each(
        [*((case, case) for case in sample), *raise_sample],
        lambda named_case: named_case[0],
        lambda named_case: client.exceptions.GetException(
            exc.GetExceptionRequest(exception_id=named_case[0]), metadata=as_system("ops-console"), timeout=5
        ),
        judge,
    )
    return problems, len(sample) + len(raise_sample)


def life_problems(case: str, story: ExceptionStory, raises: dict[int, exception_pb2.Exception]) -> list[str]:
    """The transitions of one exception, folded with decider.evolve, checked against the lifecycle's rules; its
    final state is left in ``story.state``."""
    Transition, State = exception_decider.Transition, exception_decider.State
    problems: list[str] = []
    state = exception_decider.INITIAL
    for stored, change in story.transitions:
        before, name, at = state, change.transition, stored.sequence
        where = f"{case} {name.value} at seq {at}"
        if stored.unpack(exception_events.ExceptionStateChanged).exception_id != case:
            problems.append(f"{where}: its payload names another exception")
        if not before.exists and name is not Transition.OPENED:
            problems.append(f"{where}: before the exception was opened")
        elif name is Transition.OPENED and before.exists:
            problems.append(f"{where}: opened again (opened at seq {story.transitions[0][0].sequence})")
        elif before.state.closed and name not in (Transition.REOPENED, Transition.REPLAYED):
            problems.append(f"{where}: on an exception closed at seq {before.closed_sequence}")
        elif (name is Transition.ACKNOWLEDGED and before.state is not State.OPEN) or (
            name is Transition.RESOLVED and before.state not in (State.OPEN, State.ACKNOWLEDGED)
        ):
            problems.append(f"{where}: the exception was {before.state.value}")
        elif name is Transition.ESCALATED and before.escalated:
            problems.append(f"{where}: escalated twice in one opening (at {before.escalated_at_ns})")
        elif name is Transition.REROUTED and (before.state is not State.OPEN or before.escalated):
            problems.append(f"{where}: rerouted an exception {before.state.value}, escalated {before.escalated}")
        elif name is Transition.REPLAY_REQUESTED and before.type_name != "delivery_exhausted":
            problems.append(f"{where}: a replay of a {before.type_name} exception")
        if name in (Transition.OPENED, Transition.REOPENED):
            cause = raises.get(change.cause_sequence)
            if cause is None or case_of(cause) != case or change.cause_sequence >= at:
                problems.append(f"{where}: its cause (seq {change.cause_sequence}) is no earlier raise of it")
            elif name is Transition.REOPENED:
                after_closure = before.state.closed and change.cause_sequence > before.closed_sequence
                failed_replay = (
                    before.replay_pending
                    and cause.type == exception_pb2.EXCEPTION_TYPE_DELIVERY_EXHAUSTED
                    and change.cause_sequence > before.replay_sequence
                )
                if not after_closure and not failed_replay:
                    problems.append(
                        f"{where}: caused by the raise at seq {change.cause_sequence}, the exception "
                        f"{before.state.value} (closed at seq {before.closed_sequence}, "
                        f"replay at seq {before.replay_sequence})"
                    )
        state = exception_decider.evolve(state, recorded(stored, change))
    story.state = state
    return problems


async def rescan_exceptions(chaos: Chaos) -> tuple[list[StoredEvent], str]:
    """The exception stream once it stopped moving (a restarted router's first sweeps are done), and a note if it
    did not stop."""
    nats_server = chaos.stack.nats_server
    assert nats_server is not None
    nc = await nats.connect(nats_server.url, connect_timeout=5)
    try:
        js = nc.jetstream()
        namespace = Namespace(chaos.namespace)
        quiet = ESCALATE_AFTER_SECONDS + 2.0
        note = await stream_quiet(js, namespace, exception_router_events.DOMAIN, quiet, chaos.args.heal_timeout)
        return await scan(EventReader(Requests(nc), namespace), exception_router_events.DOMAIN), note
    finally:
        await nc.drain()


async def verify_exceptions(
    chaos: Chaos,
    client: Client,
    tally: Tally,
    stream: list[StoredEvent],
    audit: dict[str, tuple[str, str]],
    figures: dict[str, float],
) -> list[Invariant]:
    """The exception-router invariants, from the exception stream once its consumers settled: raises fold into
    exceptions opened once, every exception's transitions make a consistent life (decider.evolve), nothing recurring
    stays closed, the router answers (ListExceptions, GetException, SummarizeExceptions) what an ExceptionBook fed
    the stream offline holds, and again after a final SIGKILL and restart, every raise, acknowledgment and
    resolution answered OK is in the stream, and every transition is chained in the audit trail."""
    invariants: list[Invariant] = []
    stories: dict[str, ExceptionStory] = defaultdict(ExceptionStory)
    raises: dict[int, exception_pb2.Exception] = {}  # by sequence
    raise_ids: dict[str, list[tuple[int, exception_pb2.Exception]]] = defaultdict(list)
    unreadable: list[str] = []
    for stored in stream:
        name = exception_router_events.event_name(stored)
        if name == exception_router_events.CLEARED:
            continue  # a source saying what it raised is over: the router's resolution is the transition checked
        if name == exception_router_events.RAISED:
            raised = exception_router_events.decode_raised(stored)
            if raised is None or raised.exception_id != stored.envelope.object_key:
                unreadable.append(f"seq {stored.sequence} {stored.subject}")
                continue
            raises[stored.sequence] = raised
            raise_ids[raised.exception_id].append((stored.sequence, raised))
            stories[case_of(raised)].raises.append((stored.sequence, raised))
            continue
        change = exception_router_events.decode(stored)
        if change is None:
            unreadable.append(f"seq {stored.sequence} {stored.subject}")
            continue
        stories[stored.envelope.object_key].transitions.append((stored, change))
    Transition = exception_decider.Transition
    transitions = [stored for story in stories.values() for stored, _ in story.transitions]
    figures["raises"] = len(raises)
    figures["exceptions"] = sum(1 for story in stories.values() if story.raises)
    for transition in Transition:
        figures[f"transitions {transition.value}"] = sum(
            1 for story in stories.values() for _, change in story.transitions if change.transition is transition
        )

    not_opened = [
        f"{case} ({len(story.raises)} raises, first at seq {story.raises[0][0]}): "
        f"{sum(1 for _, c in story.transitions if c.transition is Transition.OPENED)} opened"
        for case, story in stories.items()
        if story.raises and sum(1 for _, c in story.transitions if c.transition is Transition.OPENED) != 1
    ]
    orphans = [f"{case}: transitions, no raise" for case, story in stories.items() if not story.raises]
    twice = [f"raise {raise_id} stored x{len(found)}" for raise_id, found in raise_ids.items() if len(found) > 1]
    invariants.append(
        Invariant(
            "every raise folds into an exception opened exactly once (no subject holds two opened)",
            not not_opened and not orphans and not twice and not unreadable,
            _sample(unreadable + not_opened + orphans + twice),
            unreadable + not_opened + orphans + twice,
        )
    )
    inconsistent = [problem for case, story in stories.items() for problem in life_problems(case, story, raises)]
    invariants.append(
        Invariant(
            "every exception's transitions fold (decider.evolve) into a consistent life",
            not inconsistent,
            _sample(inconsistent),
            inconsistent,
        )
    )
    recurring: list[str] = []
    for case, story in stories.items():
        state = story.state
        if state.state.closed:
            later = [sequence for sequence, _ in story.raises if sequence > state.closed_sequence]
            if later:
                recurring.append(f"{case} {state.state.value} at seq {state.closed_sequence}, raised at seq {later}")
        elif state.replay_pending:
            failed = [
                sequence
                for sequence, raised in story.raises
                if sequence > state.replay_sequence and raised.type == exception_pb2.EXCEPTION_TYPE_DELIVERY_EXHAUSTED
            ]
            if failed:
                recurring.append(f"{case} replay at seq {state.replay_sequence} pending, handed off at seq {failed}")
    figures["exceptions reopened"] = sum(1 for story in stories.values() if story.state.reopened)
    for kind in exception_decider.State:
        figures[f"exceptions {kind.value}"] = sum(1 for story in stories.values() if story.state.state is kind)
    invariants.append(
        Invariant(
            "no recurring exception stays closed (a raise stored after its closure reopened it)",
            not recurring,
            _sample(recurring),
            recurring,
        )
    )

    # The router's answers against the fold an ExceptionBook makes offline of the same stream.
    book, _ = fold_exceptions(stream)
    healing = time.monotonic()
    differences = await listing_equal(client, book, chaos.args.heal_timeout)
    figures["exception list equal after"] = time.monotonic() - healing
    invariants.append(
        Invariant(
            "ListExceptions, every page, equals the fold of the exception stream (ExceptionBook.follow)",
            not differences,
            _sample(differences),
            differences,
        )
    )
    get_problems, asked = await check_exception_gets(client, book, raises, random.Random(chaos.args.seed))
    figures["GetException compared"] = asked
    invariants.append(
        Invariant(
            "GetException, by exception id and by raise id, equals the fold for a sample",
            not get_problems,
            _sample(get_problems),
            get_problems,
        )
    )
    summary = await _answer(
        lambda: client.exceptions.SummarizeExceptions(
            exc.SummarizeExceptionsRequest(), metadata=as_system("ops-console"), timeout=10
        )
    )
    expected_summary = summarize(book.cases.values(), "", None, time.time_ns())
    summary_note = (
        f"{summary.code().name}: {summary.details()}"
        if isinstance(summary, grpc.aio.AioRpcError)
        else ""
        if summary == expected_summary
        else f"differing {_differing(summary, expected_summary)}"
    )
    invariants.append(Invariant("SummarizeExceptions equals the summary of the fold", not summary_note, summary_note))

    # What was answered OK is in the stream.
    lost: list[str] = []
    for raise_id, record in tally.hand_raises.items():
        stored_raises = raise_ids.get(raise_id, [])
        expected = exception_mapping.raised_from_request(record.request, "ops-console")
        expected.exception_id = raise_id
        case = case_of(expected)
        if len(stored_raises) != 1:
            lost.append(f"raise {raise_id} ({record.request.idempotency_key}): stored x{len(stored_raises)}")
            continue
        held = exception_pb2.Exception()
        held.CopyFrom(stored_raises[0][1])
        held.ClearField("raised_at")
        if held != expected:
            lost.append(f"raise {raise_id}: stored differs in {_differing(held, expected)}")
        if record.answered != {case}:
            lost.append(f"raise {raise_id}: answered {sorted(record.answered)}, it folds into {case}")
        strays = [r for r in record.last_raised if not any(case_of(x) == case for _, x in raise_ids.get(r, []))]
        if strays:
            lost.append(f"raise {raise_id}: answered last_raised_id {strays}, no raise of {case}")
    for raise_id in tally.key_reuses:
        first = tally.hand_raises.get(raise_id)
        held_raises = [raised for _, raised in raise_ids.get(raise_id, [])]
        if first is None:
            continue  # its first raise was never answered OK: nothing to compare with
        if any(raised.detail != first.request.exception.detail for raised in held_raises):
            lost.append(f"raise {raise_id}: the key reused with other content left a trace")
    for handled in tally.handled:
        found = [
            change
            for _, change in (stories[handled.exception_id].transitions if handled.exception_id in stories else [])
            if change.transition.value == handled.transition
            and change.actor == handled.person
            and change.through == "ops-console"
            and (
                handled.transition != "resolved"
                or (
                    exception_router_events.resolution_value(change.resolution) == handled.kind
                    and change.reason == handled.note
                )
            )
        ]
        if not found:
            lost.append(f"{handled.transition} of {handled.exception_id} by {handled.person}: not in the stream")
    figures["exceptions handled"] = len({h.exception_id for h in tally.handled})
    invariants.append(
        Invariant(
            "every RaiseException, acknowledge and resolve answered OK is in the exception stream, as answered",
            not lost and bool(tally.hand_raises),
            _sample(lost) if lost or tally.hand_raises else "no RaiseException answered OK",
            lost,
        )
    )
    unchained: list[str] = []
    for stored in transitions:
        name = exception_router_events.event_name(stored)
        entry = audit.get(f"{stored.stream}:{stored.sequence}")
        if entry is None:
            unchained.append(f"{stored.envelope.object_key} {name} at seq {stored.sequence}: no audit entry")
        elif entry != (f"exception_{name}", stored.envelope.object_key):
            unchained.append(f"{stored.envelope.object_key} {name} at seq {stored.sequence}: chained as {entry}")
    invariants.append(
        Invariant(
            "the audit chain holds an entry for every exception transition",
            not unchained,
            _sample(unchained) if unchained else f"{len(transitions)} transitions",
            unchained,
        )
    )

    # The book is a projection: a SIGKILL and a restart read it back from the stream, the same.
    before, before_note = await read_exceptions(client)
    restarting = time.monotonic()
    serving = await chaos.kill_and_restart("exception-router", timeout=chaos.args.heal_timeout)
    chaos.fault_log.append(f"{time.monotonic() - chaos.t0:6.1f}s final kill exception-router (judgement)")
    figures["exception-router serving after its final restart"] = time.monotonic() - restarting
    after_stream, moving = await rescan_exceptions(chaos)
    after_book, _ = fold_exceptions(after_stream)
    problems = [] if serving else ["exception-router did not serve again after its final restart"]
    if before_note:
        problems.append(f"before the restart: {before_note}")
    if moving:
        problems.append(moving)
    last = stream[-1].sequence if stream else 0
    written = [stored for stored in after_stream if stored.sequence > last]
    if written:  # the stream was quiet before the restart: whatever came after it, the restart wrote
        kinds = Counter(exception_router_events.event_name(stored) for stored in written)
        examples = "; ".join(
            f"{s.envelope.object_key} {exception_router_events.event_name(s)} at seq {s.sequence}" for s in written[:4]
        )
        problems.append(
            f"the restarted router wrote {len(written)} events "
            f"({', '.join(f'{k} x{n}' for k, n in kinds.items())}), e.g. {examples}"
        )
    figures["events the final restart wrote"] = len(written)
    problems += await listing_equal(client, after_book, chaos.args.heal_timeout)
    after, after_note = await read_exceptions(client)
    if after_note:
        problems.append(f"after the restart: {after_note}")
    elif after != before:
        changed = [a.exception_id for a, b in zip(after, before, strict=False) if a != b]
        problems.append(f"{len(before)} listed before, {len(after)} after; {len(changed)} differ: {changed[:3]}")
    figures["exception list equal after the final restart"] = time.monotonic() - restarting
    invariants.append(
        Invariant(
            "after a final SIGKILL and restart of exception-router, ListExceptions is identical (the fold again)",
            not problems,
            _sample(problems),
            problems,
        )
    )
    return invariants


async def stream_quiet(js: Any, namespace: Namespace, domain: str, quiet: float, timeout: float) -> str:
    """Wait until the domain's stream has taken no message for ``quiet`` seconds; "" then, else how it moved."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            sequence = int((await js.stream_info(namespace.stream(domain))).state.last_seq or 0)
        except Exception:  # the broker restarting: asked again
            sequence = last
        if sequence != last:
            last, since = sequence, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return ""
        await asyncio.sleep(0.5)
    return f"the {domain} stream still moved {timeout:.0f}s after the consumers settled (last seq {last})"


async def settle_consumers(
    js: Any, namespace: Namespace, consumers: tuple[tuple[str, str], ...], timeout: float
) -> str:
    """Wait until every durable consumer named ``<ns>-<prefix>*`` on its domain's stream, for each (domain, prefix)
    of ``consumers``, has read and acknowledged every message, as tests/fuzz/targets.py's settle hook does (two
    readings in a row, so work one consumer hands the next is seen); "" then, else what was still pending at
    ``timeout``."""
    deadline = time.monotonic() + timeout
    idle_readings = 0
    while True:
        pending: dict[str, int] = {}
        note = ""
        try:
            for domain in dict.fromkeys(domain for domain, _ in consumers):
                prefixes = [f"{namespace.root}-{prefix}" for d, prefix in consumers if d == domain]
                for info in await js.consumers_info(namespace.stream(domain)):
                    name = info.name or ""
                    if any(name.startswith(prefix) for prefix in prefixes):
                        pending[name] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        except Exception as error:  # the broker restarting: asked again
            note = f"consumer info unavailable: {type(error).__name__} {error}"
        absent = [
            f"{namespace.root}-{prefix}* on {namespace.stream(domain)}"
            for domain, prefix in consumers
            if not any(name.startswith(f"{namespace.root}-{prefix}") for name in pending)
        ]
        if not note and absent:
            note = f"no consumer {', '.join(absent)}"
        idle_readings = idle_readings + 1 if not note and not any(pending.values()) else 0
        if idle_readings >= 2:
            return ""
        if time.monotonic() > deadline:
            return note or ", ".join(f"{name} {left} pending" for name, left in pending.items() if left)
        await asyncio.sleep(0.2)


@dataclass
class InvoiceHistory:
    """One invoice as its events on the stream tell it."""

    state: invoice_decider.InvoiceState = field(default_factory=lambda: invoice_decider.INITIAL)
    submitted: list[invoice_pb2.Invoice] = field(default_factory=list)  # every submitted event's document
    paid: list[invoice_decider.Paid] = field(default_factory=list)
    releases: set[tuple[str, str]] = field(default_factory=set)  # (person, reason)
    first_reasons: tuple[str, ...] = ()  # the blocking reasons of the submission's match


def received_lines(receipt_stream: list[StoredEvent]) -> dict[tuple[str, int], Decimal]:
    """Per (PO, line) what the receipt stream's newest event says was received before returns (received net of
    returns plus returned): what invoice-status's match reads (services/invoice_status/facts.py)."""
    gross: dict[tuple[str, int], Decimal] = {}
    for stored in receipt_stream:
        if stored.subject.rsplit(".", 1)[-1] != receipt_events.RECONCILED:
            continue
        try:
            payload = stored.unpack(receipt_event_messages.GoodsReceiptReconciled)
        except Exception:
            continue  # reported by the receipt invariants
        for status in payload.lines:
            net, returned, _ = _figures_of(status)
            gross[(stored.envelope.object_key, status.po_line_number)] = net + returned
    return gross


async def verify_invoices(
    client: Client,
    tally: Tally,
    invoice_stream: list[StoredEvent],
    receipt_stream: list[StoredEvent],
    raised: Counter[str],
    figures: dict[str, float],
    args: argparse.Namespace,
) -> list[Invariant]:
    """The invoicing invariants, from the invoice stream folded with invoice-status's own ``evolve``: each invoice
    answered OK submitted exactly once as sent, no trace of a refused reuse, repeats answered as replays, releases
    and payments answered OK recorded (and no invoice paid twice), GetInvoice and ListBlockedInvoices equal to the
    fold, every blocking reason's exception raised exactly once, and no re-match missed: no invoice still awaiting a
    receipt its PO line has."""
    invariants: list[Invariant] = []
    histories: dict[str, InvoiceHistory] = defaultdict(InvoiceHistory)
    unreadable: list[str] = []
    expected_exceptions: dict[str, str] = {}  # exception id -> "<invoice> <reason> by its <event> at seq <n>"
    for stored in invoice_stream:
        invoice_id = stored.envelope.object_key
        history = histories[invoice_id]
        name = stored.subject.rsplit(".", 1)[-1]
        event = invoice_events.decode(stored)  # None for an event it cannot read (logged there)
        if event is None:
            unreadable.append(f"{invoice_id} {name} (seq {stored.sequence})")
            continue
        if isinstance(event, invoice_decider.InvoiceSubmitted):
            history.submitted.append(stored.unpack(invoice_event_messages.InvoiceSubmitted).invoice)
            if not history.state.exists:
                history.first_reasons = tuple(reason.value for reason in event.match.reasons)
        elif isinstance(event, invoice_decider.Paid):
            history.paid.append(event)
        elif isinstance(event, invoice_decider.Released):
            history.releases.add((event.released_by, event.reason))
        history.state = invoice_decider.evolve(history.state, recorded(stored, event))
        state = history.state
        if state.exceptions_sequence == stored.sequence and state.match is not None:
            # This event left the invoice blocked: one exception per blocking reason, its id derived.
            for reason in state.match.reasons:
                expected_exceptions[invoice_exception_id(invoice_id, reason, stored.sequence)] = (
                    f"{invoice_id} {reason.value} by its {name} event at seq {stored.sequence}"
                )
    states = {invoice_id: h.state for invoice_id, h in histories.items() if h.state.exists}
    figures["invoices"] = len(states)
    for status in invoice_decider.InvoiceStatus:
        figures[f"invoices {status.value}"] = sum(1 for s in states.values() if s.status is status)

    missing: list[str] = []
    for invoice_id, sent in tally.invoices.items():
        stored_documents = histories[invoice_id].submitted if invoice_id in histories else []
        if len(stored_documents) != 1:
            missing.append(f"{invoice_id}: {len(stored_documents)} submitted events")
        elif stored_documents[0] != sent:
            missing.append(f"{invoice_id}: stored {stored_documents[0]}, answered OK for {sent}")
    invariants.append(
        Invariant(
            "every invoice answered OK is in the invoice stream exactly once, as sent",
            not missing,
            _sample(missing),
        )
    )
    twice = [f"{i} x{len(h.submitted)}" for i, h in histories.items() if len(h.submitted) > 1]
    traces: list[str] = []
    for command in tally.refused:
        if command.kind != "invoice conflict":
            continue
        original = tally.invoices.get(command.key)
        for document in histories[command.key].submitted if command.key in histories else []:
            if document != original:
                traces.append(f"{command.key}: stored lines {list(document.lines)}")
    invariants.append(
        Invariant(
            "no invoice submitted twice; an invoice id reused with other content left no trace",
            not twice and not traces,
            _sample(twice + traces),
        )
    )
    invariants.append(
        Invariant(
            "every repeated invoice answered OK as a replay",
            tally.replays["invoice replay"] >= tally.ok["invoice replay"],
            f"{tally.replays['invoice replay']} replay answers for {tally.ok['invoice replay']} repeats",
        )
    )
    lost: list[str] = []
    for invoice_id, person, why in tally.releases:
        if (person, why) not in (histories[invoice_id].releases if invoice_id in histories else set()):
            lost.append(f"release of {invoice_id} by {person}")
    for invoice_id, reference in tally.payments:
        paid = histories[invoice_id].paid if invoice_id in histories else []
        gross = tally.invoices[invoice_id].total_amount if invoice_id in tally.invoices else None
        if not any(
            p.payment_reference == reference and (gross is None or money_to_proto(p.amount, p.currency) == gross)
            for p in paid
        ):
            lost.append(f"payment {reference} of {invoice_id}: stream has {[p.payment_reference for p in paid]}")
    paid_twice = [f"{i} paid x{len(h.paid)}" for i, h in histories.items() if len(h.paid) > 1]
    figures["invoices paid"] = sum(1 for h in histories.values() if h.paid)
    invariants.append(
        Invariant(
            "every release and payment answered OK is in the invoice stream; no invoice paid twice",
            not lost and not paid_twice,
            _sample(lost + paid_twice),
        )
    )
    invariants.append(Invariant("every stored invoice event decodes", not unreadable, _sample(unreadable)))

    differing = await check_invoice_gets(client, states)
    invariants.append(
        Invariant(
            "GetInvoice equals the fold of the invoice's events for every invoice", not differing, _sample(differing)
        )
    )
    expected_blocked = {i for i, s in states.items() if s.status is invoice_decider.InvoiceStatus.BLOCKED}
    healing = time.monotonic()
    listed, note = await read_blocked(client, expected_blocked, timeout=args.heal_timeout)
    figures["blocked list equal after"] = time.monotonic() - healing
    diff = sorted(
        [
            f"{i}: listed, the stream has it {states[i].status if i in states else 'nowhere'}"
            for i in listed - expected_blocked
        ]
        + [f"{i}: blocked in the stream, not listed" for i in expected_blocked - listed]
    )
    invariants.append(
        Invariant(
            "ListBlockedInvoices, every page, equals the invoices the stream leaves blocked",
            not diff and not note,
            note or _sample(diff),
        )
    )
    not_once = [f"{eid} x{raised[eid]} ({what})" for eid, what in expected_exceptions.items() if raised[eid] != 1]
    figures["invoice block exceptions"] = len(expected_exceptions)
    invariants.append(
        Invariant(
            "every blocking reason of a blocked match raised its exception exactly once",
            not not_once,
            _sample(not_once, 10) if not_once else f"{len(expected_exceptions)} exceptions",
            not_once,
        )
    )
    received = received_lines(receipt_stream)
    waiting: list[str] = []
    for invoice_id, state in states.items():
        if state.match is None or state.status not in invoice_decider.REMATCHABLE:
            continue
        for line in state.match.lines:
            awaiting = any(reason.value == "awaiting_receipt" for reason in line.reasons)
            if awaiting and received.get((line.po_id, line.po_line_number), Decimal(0)) > 0:
                waiting.append(
                    f"{invoice_id} ({state.status.value}, match at seq {state.match_sequence}) awaits a receipt of "
                    f"{line.po_id} line {line.po_line_number}; the receipt stream has "
                    f"{received[(line.po_id, line.po_line_number)]} received"
                )
    figures["invoices re-matched after their receipt"] = sum(
        1
        for invoice_id, history in histories.items()
        if "awaiting_receipt" in history.first_reasons
        and history.state.match is not None
        and all(reason.value != "awaiting_receipt" for reason in history.state.match.reasons)
    )
    invariants.append(
        Invariant(
            "after settling, no invoice awaits a receipt its PO line has (re-matched when the receipt landed)",
            not waiting,
            _sample(waiting),
        )
    )
    return invariants


async def check_invoice_gets(client: Client, states: dict[str, invoice_decider.InvoiceState]) -> list[str]:
    def judge(invoice_id: str, got: Any) -> list[str]:
        folded = invoice_mapping.status_message(states[invoice_id])
        if got.status == folded:
            return []
        answered = invoice_pb2.InvoiceState.Name(got.status.state)
        expected = invoice_pb2.InvoiceState.Name(folded.state)
        fields = sorted(
            f.name
            for f in invoice_pb2.InvoiceStatus.DESCRIPTOR.fields
            if getattr(got.status, f.name) != getattr(folded, f.name)
        )
        return [f"{invoice_id}: answered {answered}, the stream folds to {expected}; differing {fields}"]

    return await _ask_each(
        states,
        str,
        lambda invoice_id: client.invoices.GetInvoice(
            inv.GetInvoiceRequest(invoice_id=invoice_id), metadata=as_system("procurement"), timeout=5
        ),
        judge,
    )


async def read_blocked(client: Client, expected: set[str], timeout: float) -> tuple[set[str], str]:
    """Page through ListBlockedInvoices until it lists ``expected`` or ``timeout`` passes (the list is rebuilt after
    Valkey lost it): the last listing read, and a note when none could be read."""
    deadline = time.monotonic() + timeout
    listed: set[str] = set()
    note = "never listed"
    while True:
        try:
            listed = set()
            token = ""
            while True:
                page = await client.invoices.ListBlockedInvoices(
                    inv.ListBlockedInvoicesRequest(page=types_pb2.PageRequest(page_size=200, page_token=token)),
                    metadata=as_system("procurement"),
                    timeout=10,
                )
                listed.update(status.invoice.invoice_id for status in page.statuses)
                token = page.page_info.next_page_token
                if not token:
                    break
            note = ""
            if listed == expected:
                return listed, note
        except grpc.aio.AioRpcError as error:
            note = f"last answer {error.code().name}: {error.details()}"
        if time.monotonic() > deadline:
            return listed, note
        await asyncio.sleep(1.0)


async def _answer(call: Callable[[], Any]) -> Any:
    """A read, retried while the service heals (UNAVAILABLE while a read model is rebuilt); an error it keeps."""
    for _ in range(20):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRIED:
                return error
            last = error
        await asyncio.sleep(0.5)
    return last


async def _ask_each(
    items: Iterable[T],
    label: Callable[[T], str],
    ask: Callable[[T], Awaitable[Any]],
    judge: Callable[[T, Any], list[str]] = lambda _item, _answer: [],
    concurrency: int = 16,
) -> list[str]:
    """Ask the suite about each item, a few at a time (each read retried by ``_answer``): a call that still fails,
    and whatever ``judge`` finds wrong in an answer, is a problem."""
    problems: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: T) -> None:
        async with semaphore:
            got = await _answer(lambda: ask(item))
        if isinstance(got, grpc.aio.AioRpcError):
            problems.append(f"{label(item)}: {got.code().name} {got.details()}")
        else:
            problems.extend(judge(item, got))

    await asyncio.gather(*(one(item) for item in items))
    return problems


async def check_receipt_status(
    client: Client,
    per_order: dict[str, dict[int, Figures]],
    documents: Counter[str],
    states: dict[str, tuple[po_domain.OrderState, int]],
) -> list[str]:
    def judge(po_id: str, got: Any) -> list[str]:
        problems = []
        answered = {status.po_line_number: _figures_of(status) for status in got.lines}
        for number, expected in per_order[po_id].items():
            if answered.get(number) != expected.as_tuple():
                problems.append(f"{po_id} line {number}: answered {answered.get(number)}, stream {expected.as_tuple()}")
        state = states.get(po_id)
        latest = state[0].latest_version if state is not None else 0
        if got.documents != documents[po_id] or got.po_version != latest:
            problems.append(
                f"{po_id}: answered {got.documents} documents at v{got.po_version}, "
                f"stream {documents[po_id]} at v{latest}"
            )
        return problems

    return await _ask_each(
        per_order,
        str,
        lambda po_id: client.receipts.GetPurchaseOrderReceiptStatus(
            rc.GetPurchaseOrderReceiptStatusRequest(po_id=po_id), metadata=as_system("erp"), timeout=5
        ),
        judge,
        concurrency=8,
    )


async def check_receipt_gets(client: Client, keys: list[str]) -> list[str]:
    def ask(key: str) -> Awaitable[Any]:
        system, _, receipt_id = key.partition("/")
        return client.receipts.GetGoodsReceipt(
            rc.GetGoodsReceiptRequest(source_system=system, receipt_id=receipt_id), metadata=as_system("erp"), timeout=5
        )

    return await _ask_each(keys, str, ask)


def document_of(stored: StoredEvent) -> po_pb2.PurchaseOrder:
    """The purchase order a stored document event (published, changed, cancelled) carries."""
    name = stored.subject.rsplit(".", 1)[-1]
    if name == po_events.PUBLISHED:
        return stored.unpack(po_event_messages.PurchaseOrderPublished).purchase_order
    if name == po_events.CHANGED:
        return stored.unpack(po_event_messages.PurchaseOrderChanged).purchase_order
    return stored.unpack(po_event_messages.PurchaseOrderCancelled).purchase_order


async def read_listing(
    client: Client, expected: dict[str, tuple[int, int]], timeout: float
) -> tuple[dict[str, tuple[int, int]], str]:
    """Page through ListUnacknowledgedPurchaseOrders until it equals ``expected`` or ``timeout`` passes; the last
    listing read (and a note when none could be read)."""
    deadline = time.monotonic() + timeout
    listing: dict[str, tuple[int, int]] = {}
    note = "never listed"
    while True:
        try:
            listing = {}
            token = ""
            while True:
                page = await client.orders.ListUnacknowledgedPurchaseOrders(
                    po.ListUnacknowledgedPurchaseOrdersRequest(
                        page=types_pb2.PageRequest(page_size=200, page_token=token)
                    ),
                    metadata=as_system("erp"),
                    timeout=10,
                )
                for entry in page.purchase_orders:
                    listing[entry.po_id] = (entry.latest_version, entry.acknowledged_version)
                token = page.page_info.next_page_token
                if not token:
                    break
            note = ""
            if listing == expected:
                return listing, note
        except grpc.aio.AioRpcError as error:
            note = f"last answer {error.code().name}: {error.details()}"
        if time.monotonic() > deadline:
            return listing, note
        await asyncio.sleep(1.0)


async def check_gets(client: Client, states: dict[str, tuple[po_domain.OrderState, int]]) -> list[str]:
    problems: list[str] = []
    semaphore = asyncio.Semaphore(8)

    async def one(po_id: str, state: po_domain.OrderState) -> None:
        async with semaphore:
            for _ in range(20):
                try:
                    got = await client.orders.GetPurchaseOrder(
                        po.GetPurchaseOrderRequest(po_id=po_id), metadata=as_system("erp"), timeout=5
                    )
                    break
                except grpc.aio.AioRpcError as error:
                    if error.code() not in RETRIED:
                        problems.append(f"{po_id}: {error.code().name} {error.details()}")
                        return
                    await asyncio.sleep(0.5)
            else:
                problems.append(f"{po_id}: no answer")
                return
        highest = state.highest_acknowledgment()
        acknowledged = highest.version if highest is not None else 0
        answered = got.erp_acknowledgment.version if got.HasField("erp_acknowledgment") else 0
        if got.latest_version != state.latest_version or answered != acknowledged:
            problems.append(
                f"{po_id}: answered v{got.latest_version} ack {answered}, "
                f"stream v{state.latest_version} ack {acknowledged}"
            )

    await asyncio.gather(*(one(po_id, state) for po_id, (state, _) in states.items() if state.exists))
    return problems


async def check_suppliers(client: Client, accepted: list[tuple[Command, Message]]) -> list[str]:
    problems: list[str] = []
    for command, response in accepted:
        assert isinstance(response, sp.SubmitSupplierRecordResponse)
        try:
            got = await client.suppliers.ResolveSupplier(
                sp.ResolveSupplierRequest(system="procurement", local_id=command.local_id),
                metadata=as_system("procurement"),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            problems.append(f"{command.local_id}: {error.code().name} {error.details()}")
            continue
        if got.supplier.supplier_id != response.supplier.supplier_id:
            problems.append(f"{command.local_id}: {got.supplier.supplier_id} != {response.supplier.supplier_id}")
    return problems


# --------------------------------------------------------------------------------------------- the run


def print_report(
    args: argparse.Namespace, chaos: Chaos, tally: Tally, invariants: list[Invariant], figures: dict[str, Any]
) -> None:
    print(
        f"\nchaos run: seed {args.seed}, {args.seconds:.0f}s of load, {args.workers} workers, "
        f"{args.handlers} exception handlers, {figures['duration']:.0f}s in all"
    )
    print("\nfaults injected")
    for kind in FAULT_KINDS:
        print(f"  {kind:<32} {chaos.faults[kind]:>5}")
    print(f"  {'total':<32} {sum(chaos.faults.values()):>5}")
    if chaos.spawn_failures:
        print(f"  (forks that died before exec and were started again: {chaos.spawn_failures})")
    if chaos.recovery:
        print(
            f"  service kill -> SERVING again: median {sorted(chaos.recovery)[len(chaos.recovery) // 2]:.1f}s, "
            f"max {max(chaos.recovery):.1f}s"
        )
    print("\ncommands                          sent     ok  refused  replayed")
    for kind in (
        "publish",
        "change",
        "acknowledge",
        "supplier",
        "conflict",
        *RECEIPT_KINDS,
        *INVOICE_KINDS,
        *EXCEPTION_KINDS,
        "policy change",
    ):
        refused = sum(n for label, n in tally.refused_expected.items() if label.startswith(kind + ":"))
        print(f"  {kind:<30} {tally.sent[kind]:>6} {tally.ok[kind]:>6} {refused:>8} {tally.replays[kind]:>9}")
    print(
        f"  {'total':<30} {sum(tally.sent.values()):>6} {sum(tally.ok.values()):>6} "
        f"{sum(tally.refused_expected.values()):>8} {sum(tally.replays.values()):>9}"
    )
    retried = ", ".join(f"{code} {n}" for code, n in tally.retries.most_common()) or "none"
    print(f"  attempts {tally.attempts}, retried: {retried}")
    print(
        f"  stream: {figures['po events']:.0f} PO events, {figures['supplier events']:.0f} supplier events, "
        f"{figures['receipt events']:.0f} receipt events ({figures['receipt findings']:.0f} finding exceptions), "
        f"{figures['exception events']:.0f} exception events; unacknowledged list equal to the stream "
        f"{figures['listing equal after']:.1f}s after the load stopped"
    )
    print(
        f"  receiving: {figures['receipt documents']:.0f} documents on {figures['orders received against']:.0f} "
        f"orders, {figures['receipt figures checked']:.0f} line figures recomputed from the stream"
    )
    states = ", ".join(
        f"{status.value} {figures[f'invoices {status.value}']:.0f}"
        for status in invoice_decider.InvoiceStatus
        if figures.get(f"invoices {status.value}")
    )
    print(
        f"  invoicing: {figures['invoice events']:.0f} invoice events on {figures['invoices']:.0f} invoices "
        f"({states}); "
        f"{figures['invoices re-matched after their receipt']:.0f} re-matched by themselves once their receipt landed, "
        f"{figures['invoice block exceptions']:.0f} blocking exceptions; re-match consumers idle "
        f"{figures['re-match settled after']:.1f}s and the blocked list equal to the stream "
        f"{figures['blocked list equal after']:.1f}s after the load stopped"
    )
    refusals = ", ".join(
        f"{label} {n}"
        for label, n in sorted(tally.refused_expected.items())
        if label.startswith(("release", "payment"))
    )
    if refusals:
        print(f"  releases and payments the invoice's state had moved past: {refusals}")
    if "raises" in figures:
        transitions = ", ".join(
            f"{transition.value} {figures[f'transitions {transition.value}']:.0f}"
            for transition in exception_decider.Transition
            if figures.get(f"transitions {transition.value}")
        )
        states = ", ".join(
            f"{state.value} {figures[f'exceptions {state.value}']:.0f}"
            for state in exception_decider.State
            if figures.get(f"exceptions {state.value}")
        )
        print(
            f"  exceptions: {figures['raises']:.0f} raises folded into {figures['exceptions']:.0f} exceptions "
            f"({states}; {figures['exceptions reopened']:.0f} reopened), transitions: {transitions}; "
            f"{figures['exceptions handled']:.0f} handled at the ops-console; consumers idle "
            f"{figures['exception consumers settled after']:.1f}s after the load stopped, the list equal to the "
            f"fold {figures['exception list equal after']:.1f}s later; {figures['audit entries']:.0f} audit entries; "
            f"after a final SIGKILL serving again in {figures['exception-router serving after its final restart']:.1f}s"
        )
    exception_refusals = ", ".join(
        f"{label} {n}" for label, n in sorted(tally.refused_expected.items()) if label.startswith("exception ")
    )
    if exception_refusals:
        print(f"  exception handling refused as due (moved on meanwhile, or a key reused): {exception_refusals}")
    print("\ninvariants")
    for invariant in invariants:
        verdict = "held" if invariant.held else "VIOLATED"
        detail = f"  ({invariant.detail})" if invariant.detail and not invariant.held else ""
        print(f"  {invariant.name:<80} {verdict}{detail}")
    violated = sum(not i.held for i in invariants)
    print(f"\n{len(invariants) - violated} invariants held, {violated} violated")


async def run(args: argparse.Namespace) -> int:
    workdir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="syncgov-chaos-"))
    started = time.monotonic()
    chaos = Chaos(args, workdir)
    tally = Tally()
    client: Client | None = None
    watcher: asyncio.Task[None] | None = None
    ok = False
    try:
        await chaos.start()
        print(f"stack up in {time.monotonic() - started:.1f}s (data and logs in {workdir})", flush=True)
        watcher = asyncio.create_task(chaos.watch())
        addresses = {name: chaos.proxies[name].address for name in SERVED}
        addresses["control-plane"] = chaos.address("control-plane")  # no proxy: it is not the service under test
        client = Client(addresses, tally, random.Random(args.seed))
        run_id = f"{args.seed}x{int(time.time()) % 100000}"
        # One golden supplier every order names; po-publication learns of it from the supplier stream a moment later.
        anchor = Command("supplier", f"chaos-supplier:anchor-{run_id}", local_id=f"ANCHOR-{run_id}")
        answer = await client.send(
            anchor,
            client.suppliers.SubmitSupplierRecord,
            sp.SubmitSupplierRecordRequest(
                record=supplier_record(anchor.local_id, random.Random(args.seed)), idempotency_key=anchor.key
            ),
            "procurement",
        )
        if not isinstance(answer, sp.SubmitSupplierRecordResponse):
            raise RuntimeError(f"the anchor supplier was not accepted: {answer}")
        supplier_id = answer.supplier.supplier_id
        warm = Order(f"CHAOS-{run_id}-warmup", now_timestamp())
        warm_request = po.PublishPurchaseOrderRequest(
            purchase_order=purchase_order(warm, 1, "1", supplier_id), idempotency_key=f"chaos:{warm.po_id}:v1"
        )
        await client.send(
            Command("publish", f"chaos:{warm.po_id}:v1", warm.po_id, 1, "1"),
            client.orders.PublishPurchaseOrder,
            warm_request,
            "procurement",
            retry_invalid_until=time.monotonic() + 30,
        )
        # invoice-status too learns of the supplier from its stream: the first invoice waits for that (it awaits a
        # receipt the warm-up order never gets).
        warm_invoice = invoice_request(f"INV-{run_id}-warmup", "INV-W-00001", supplier_id, warm.po_id, 1, PO_PRICE)
        await submit_invoice(client, Billing(-1, run_id, supplier_id), "invoice early", warm_invoice, 1, patience=30)
        chaos.t0 = time.monotonic()
        window = LoadWindow(chaos.t0 + args.seconds, args.min_faults, chaos.faults.total)
        faults = asyncio.create_task(chaos.faults_until(window))
        workers = [
            asyncio.create_task(worker(i, client, run_id, supplier_id, window, args.pace)) for i in range(args.workers)
        ]
        workers += [asyncio.create_task(handler(i, client, run_id, window, args.pace)) for i in range(args.handlers)]
        if not args.no_policy_change:
            workers.append(asyncio.create_task(change_policy(client, chaos.t0 + args.seconds / 3)))
        await faults
        client.give_up_at = time.monotonic() + args.drain_timeout
        await asyncio.gather(*workers)
        load_seconds = time.monotonic() - chaos.t0
        serving = {name: await chaos.wait_serving(name, timeout=args.heal_timeout) for name in STARTED}
        print(f"load and faults over after {load_seconds:.1f}s; serving: {serving}", flush=True)
        invariants, figures = await verify(chaos, client, tally)
        invariants.append(Invariant("every service SERVING after the faults", all(serving.values()), str(serving)))
        figures["duration"] = time.monotonic() - started
        figures["load_seconds"] = load_seconds
        print_report(args, chaos, tally, invariants, figures)
        if args.verbose:
            print("\nfault log")
            for line in chaos.fault_log:
                print("  " + line)
        ok = all(i.held for i in invariants)
        if args.json:
            write_json(
                args.json,
                json.dumps(
                    {
                        "seed": args.seed,
                        "seconds": args.seconds,
                        "workers": args.workers,
                        "handlers": args.handlers,
                        "figures": figures,
                        "faults": dict(chaos.faults),
                        "fault_log": chaos.fault_log,
                        "sent": dict(tally.sent),
                        "ok": dict(tally.ok),
                        "refused_expected": dict(tally.refused_expected),
                        "retries": dict(tally.retries),
                        "replays": dict(tally.replays),
                        "unexpected_refusals": tally.unexpected,
                        "broken_answers": tally.broken,
                        "spawn_failures": chaos.spawn_failures,
                        "attempts": tally.attempts,
                        "invariants": [
                            {"name": i.name, "held": i.held, "detail": i.detail, "cases": i.cases} for i in invariants
                        ],
                    },
                    indent=2,
                ),
            )
        return 0 if ok else 1
    finally:
        if watcher is not None:
            watcher.cancel()
        if client is not None:
            await client.close()
        for proxy in chaos.proxies.values():
            await proxy.close()
        chaos.stop()
        if ok and not args.keep and not args.data_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            print(f"data and logs kept in {workdir}")


def write_json(path: str, text: str) -> None:
    Path(path).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="how long the load and the faults run")
    parser.add_argument("--seed", type=int, default=1, help="seeds the fault schedule and the client")
    parser.add_argument("--workers", type=int, default=6, help="concurrent client workers")
    parser.add_argument("--handlers", type=int, default=2, help="people handling exceptions at the ops-console")
    parser.add_argument(
        "--no-policy-change", action="store_true", help="keep the bootstrap policy (no exception escalates in the run)"
    )
    parser.add_argument("--pace", type=float, default=0.02, help="mean pause between a worker's commands (s)")
    parser.add_argument("--gap", type=float, default=3.0, help="mean pause between faults (s)")
    parser.add_argument(
        "--min-faults", type=int, default=0, help="keep the load and the faults up past --seconds until this many"
    )
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="how long in-flight commands may retry")
    parser.add_argument("--heal-timeout", type=float, default=45.0, help="how long read models may take to heal")
    parser.add_argument("--namespace", default="chaos")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--data-dir", default="", help="keep data and logs here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder after a clean run")
    parser.add_argument("--json", default="", help="also write the figures and invariants to this file")
    parser.add_argument("--verbose", action="store_true", help="print the fault log")
    args = parser.parse_args()
    # die_with_parent (run in each forked child before exec) imports ctypes and opens libc: done here first,
    # the child finds both loaded instead of importing and allocating while gRPC's threads hold locks.
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True)
    for name in list(os.environ):  # nothing of the caller's shell configures the stack under test
        if name.startswith(("SYNCGOV_", "OTEL_")):
            del os.environ[name]
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
