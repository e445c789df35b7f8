"""invoice-status under hostile input: suppliers, orders and receipts to match against, seeds, structured requests.

Before the service starts, the supplier events are seeded (``SUP-ACME`` active, ``SUP-BLOCKED`` blocked,
``SUP-SLEEPY`` inactive), po-publication publishes the orders invoices name (``PO-IN-1`` open, ``PO-IN-2``
changed to version 2, ``PO-IN-3`` cancelled) and receipt-reconciliation posts receipts on them, all in the
namespace invoice-status will run in, so a submission reaches every match path: matched, price and quantity
variances, awaiting receipt, unknown PO lines, a cancelled order, currency mismatches, totals that do not add up,
duplicates. The seeds submit a few invoices (matched, blocked for each of several reasons, one released, one
disputed, one paid, a credit note), collect a page token the listing really issued, and wait until the service's
re-match consumers have read every PO, receipt and invoice event (so no background write lands while a refused request
is checked for writes).

Besides the descriptor-built requests every RPC gets, each of the six RPCs gets a structured strategy here, drawn
as often: whole invoices (decimals with exponents, NaN-like words and other scripts' digits in quantities; Money
with nanos out of range, mismatched signs and other currencies than the invoice's; control, bidi and invisible
characters in ids and numbers; duplicate line numbers; 4,999 to 5,003 lines, or thousands of orders; credit notes
crediting themselves, unknown invoices or nothing; totals that do not add up), releases and disputes with empty,
huge or hostile reasons and person ids, payments with odd references, and listings by undefined reasons, unknown
suppliers, odd ``blocked_before`` times and crafted page tokens.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.type import date_pb2, decimal_pb2, money_pb2
from hypothesis import strategies as st

from libs.runtime.paging import encode_page_cursor, encode_page_token
from libs.runtime.settings import RuntimeSettings
from services.invoice_status.domain import MAX_LINES
from tests.fuzz.strategies import (
    HOSTILE_DECIMALS,
    HOSTILE_STRINGS,
    OTHER_DIGITS,
    decimal_strings,
    mostly_plausible,
    timestamp,
    whole_seconds_now,
)

SERVICE = "/syncgov.invoice.v1.InvoiceStatusService/"
LISTING = "invoice.blocked"  # services/invoice_status/servicer.py BLOCKED_LISTING

OPEN_PO = "PO-IN-1"  # version 1: line 1 is 10 EA at 12.50 EUR, line 2 is 2.5 KGM at 3.00 EUR (sample_order)
CHANGED_PO = "PO-IN-2"  # version 2 lowered line 1 to 6 EA
CANCELLED_PO = "PO-IN-3"  # cancelled (version 2)
UNKNOWN_PO = "PO-IN-404"  # never published
PAYABLE_PO = "PO-IN-4"  # line 1 is 1,000 EA, all received: the matched invoices payments and releases name
ORDERS = (OPEN_PO, CHANGED_PO, CANCELLED_PO, UNKNOWN_PO, PAYABLE_PO)
PRICES = {1: Decimal("12.50"), 2: Decimal("3.00")}  # unit price per PO line, every order
ACME, BLOCKED_SUPPLIER, INACTIVE_SUPPLIER, UNKNOWN_SUPPLIER = "SUP-ACME", "SUP-BLOCKED", "SUP-SLEEPY", "SUP-NOBODY"
SUPPLIERS = (ACME, ACME, ACME, BLOCKED_SUPPLIER, INACTIVE_SUPPLIER, UNKNOWN_SUPPLIER)
SYSTEMS = ("procurement", "erp", "ops-console", "wms-east")
TAX = Decimal("0.19")
CENT = Decimal("0.01")

# Seeded invoices (submitted by :func:`seed`): what each one is, for the strategies that name them.
MATCHED = "INV-FZ-1"  # 4 EA of PO-IN-1 line 1 at 12.50, received 8: matched
PRICE_BLOCKED = "INV-FZ-2"  # at 13.50: blocked for price
CANCELLED_BLOCKED = "INV-FZ-3"  # on the cancelled order
UNKNOWN_LINE = "INV-FZ-4"  # on an order never published
ARITHMETIC = "INV-FZ-5"  # totals that do not add up
PAID = "INV-FZ-6"  # matched, then paid by the ERP (PAY-FZ-6)
RELEASED = "INV-FZ-7"  # blocked awaiting receipt (PO-IN-1 line 2 received only 1), released by ops-console
DISPUTED = "INV-FZ-8"  # blocked for price, disputed
CREDIT = "CN-FZ-1"  # a credit note of INV-FZ-1
USD = "INV-FZ-9"  # in USD on a EUR order: blocked currency_mismatch
PAYABLE = tuple(f"INV-FZ-M{n}" for n in range(1, 25))  # 1 EA of PO-IN-4 each: matched, approvable
SEEDED = (MATCHED, PRICE_BLOCKED, CANCELLED_BLOCKED, UNKNOWN_LINE, ARITHMETIC, PAID, RELEASED, DISPUTED, CREDIT, USD)
SEEDED_NUMBERS = ("A-1", "A-2", "A-3", "A-4", "A-5", "A-6", "A-7", "A-8", "CN-1", "A-9", "a 1", "A-0001", "A\u200b-1")

# Quantities and amounts a supplier's system sends and an ERP may not hold.
INVOICE_DECIMALS: tuple[str, ...] = (
    "1",
    "2",
    "4",
    "0.5",
    "2.5",
    "1e1",
    "25e-1",
    "1E+1",
    "1e-7",
    "0.0000001",
    "1.1234567891",
    "9999999999999",
    "1e13",
    "1e400",
    "1e999999",
    "1e-999999",
    "-1e999999",
    "9e999999",
    "-0",
    "-1",
    "+2",
    ".5",
    "5.",
    "NaN",
    "nan",
    "sNaN123",
    "-Infinity",
    "Infinity",
    "inf",
    "1e",
    "\u0661\u0660",
    "\uff14",
    "\u0968",
    "1_0",
    "1,5",
    "0x1A",
    " 4",
    "4\u200b",
    "4\x00",
)
PLAIN_DECIMALS: tuple[str, ...] = ("1", "2", "4", "0.5", "1.5", "2.5", "3", "1e0", "40e-1")
CURRENCIES: tuple[str, ...] = (
    "EUR",
    "EUR",
    "EUR",
    "USD",
    "eur",
    "EU",
    "EURO",
    "",
    "XXX",
    "\u20ac",
    "EUR\x00",
    "E\u200bUR",
)
HOSTILE_IDS: tuple[str, ...] = (
    *HOSTILE_STRINGS,
    "INV-\x00",
    "INV-\u202e1",
    "INV-\u200b1",
    "INV-FZ-1 ",
    " INV-FZ-1",
    "inv-fz-1",
    "INV-FZ-1\n",
    "INV.FZ.1",
    "INV-*",
    "INV->",
    "\uff29\uff2e\uff36-1",
    "I" * 256,
    "I" * 257,
)
PERSONS: tuple[str, ...] = ("j.doe", "a.buyer@example.com", "U123456", "ops/m.meyer", "Jürgen Müller")
HOSTILE_PERSONS: tuple[str, ...] = (
    "",
    " ",
    "\t",
    "\u200b",
    "\x00",
    "j.doe\x00admin",
    "\u202ej.doe",
    "j.doe\r\nreleased_by: admin",
    "\x1b[31mroot",
    "*",
    "erp",
    "ops-console",
    "a" * 257,
    "a" * 100_000,
)
REASONS: tuple[str, ...] = ("goods seen at the dock", "price agreed by phone", "supplier confirmed", "dispute: short")
HOSTILE_REASONS: tuple[str, ...] = (
    "",
    " ",
    "\n",
    "\u200b",
    "\x00",
    "\u202eok",
    "ok\x1b]0;pwned\x07",
    "%s%s%n",
    "${jndi:ldap://x}",
    "r" * 257,
    "r" * 10_000,
    "\u00e9" * 50_000,
    "r" * 100_000,
    "\U0001f600" * 30_000,
)
REFERENCES: tuple[str, ...] = ("PAY-FZ-6", "PAY-1", "PAY-2", "4711", "F-2027-0001")
HOSTILE_REFERENCES: tuple[str, ...] = (
    "",
    " ",
    "PAY-FZ-6 ",
    " PAY-FZ-6",
    "pay-fz-6",
    "PAY-FZ-6\x00",
    "PAY-\u202e6",
    "PAY-\u200b6",
    "\u0664\u0667\u0661\u0661",
    "\uff14\uff17\uff11\uff11",
    "PAY-1\nPAY-2",
    "P" * 257,
    "P" * 100_000,
)


_ISSUED = itertools.count(1)


def _fresh_id(prefix: str) -> str:
    """An id no input used before: hypothesis repeats its draws, a supplier (mostly) does not."""
    return f"{prefix}-FZ-N{next(_ISSUED)}"


def money(amount: Decimal, currency: str = "EUR") -> money_pb2.Money:
    units = int(amount)
    return money_pb2.Money(currency_code=currency, units=units, nanos=int((amount - units) * 1_000_000_000))


def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# -- suppliers, orders, receipts; seeds -------------------------------------------------------------------


async def before_start(settings: RuntimeSettings) -> None:
    """Suppliers seeded; po-publication and receipt-reconciliation, in the namespace invoice-status will run in,
    publish the orders invoices name and post receipts on them."""
    from libs.runtime.testing import running_service
    from services.po_publication.settings import Settings as PoSettings
    from services.po_publication.wiring import wire as wire_po
    from services.receipt_reconciliation.wiring import wire as wire_receipts
    from syncgov.po.v1 import po_service_pb2 as po
    from syncgov.po.v1 import po_service_pb2_grpc as po_rpc
    from syncgov.receipt.v1 import receipt_service_pb2_grpc as receipt_rpc
    from syncgov.supplier.v1 import supplier_pb2
    from tests.integration.helpers import (
        ERP,
        PROCUREMENT,
        goods_receipt,
        receipt_settings,
        sample_order,
        seed_supplier,
    )

    await seed_supplier(settings.nats_url, settings.namespace, ACME)
    await seed_supplier(settings.nats_url, settings.namespace, BLOCKED_SUPPLIER, supplier_pb2.SUPPLIER_STATUS_BLOCKED)
    await seed_supplier(settings.nats_url, settings.namespace, INACTIVE_SUPPLIER, supplier_pb2.SUPPLIER_STATUS_INACTIVE)
    po_settings = PoSettings(
        grpc_port=0,
        nats_url=settings.nats_url,
        redis_url=settings.redis_url,
        namespace=settings.namespace,
        log_format="console",
        hold_sweep_seconds=86_400.0,
    )
    async with running_service(po_settings, wire_po) as (_, channel, _):
        stub = po_rpc.PurchaseOrderServiceStub(channel)
        for po_id, quantity in ((OPEN_PO, "10"), (CHANGED_PO, "10"), (CANCELLED_PO, "10"), (PAYABLE_PO, "1000")):
            await stub.PublishPurchaseOrder(
                po.PublishPurchaseOrderRequest(purchase_order=sample_order(po_id, quantity=quantity)),
                metadata=PROCUREMENT,
            )
        lowered = sample_order(CHANGED_PO, quantity="6")
        lowered.version = 2
        await _retrying(
            lambda: stub.ChangePurchaseOrder(
                po.ChangePurchaseOrderRequest(purchase_order=lowered), metadata=PROCUREMENT
            )
        )
        await _retrying(
            lambda: stub.CancelPurchaseOrder(
                po.CancelPurchaseOrderRequest(po_id=CANCELLED_PO, version=2, reason="fuzz"), metadata=PROCUREMENT
            )
        )
    async with running_service(receipt_settings(po_settings), wire_receipts) as (_, channel, _):
        receipts = receipt_rpc.ReceiptReconciliationServiceStub(channel)
        for request in (
            goods_receipt("GR-IN-1", OPEN_PO, (1, "8"), (2, "1", "KGM")),
            goods_receipt("GR-IN-2", CHANGED_PO, (1, "6"), version=2),
            goods_receipt("GR-IN-3", PAYABLE_PO, (1, "1000")),
        ):
            await receipts.PostGoodsReceipt(request, metadata=ERP)


async def _retrying(call: Any, attempts: int = 100) -> Any:
    """A change order is UNAVAILABLE while po-publication still reads the receipt stream at start."""
    import grpc

    for _ in range(attempts - 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.1)
    return await call()


def invoice(
    invoice_id: str,
    number: str,
    *lines: tuple[str, int, str, str],
    supplier: str = ACME,
    currency: str = "EUR",
    credited: str = "",
    total_off: Decimal = Decimal(0),
) -> Any:
    """An Invoice; each line is (po id, po line, quantity, unit price); 19% tax; totals add up (+ ``total_off``)."""
    from syncgov.invoice.v1 import invoice_pb2

    built = invoice_pb2.Invoice(
        invoice_id=invoice_id,
        supplier_id=supplier,
        invoice_number=number,
        invoice_date=date_pb2.Date(year=2027, month=1, day=20),
        currency_code=currency,
        credit_note=bool(credited),
        credited_invoice_id=credited,
    )
    net = tax = Decimal(0)
    for number_, (po_id, po_line, quantity, price) in enumerate(lines, start=1):
        amount = _cents(Decimal(quantity) * Decimal(price))
        line_tax = _cents(amount * TAX)
        net, tax = net + amount, tax + line_tax
        built.lines.add(
            line_number=number_,
            po_id=po_id,
            po_line_number=po_line,
            quantity=decimal_pb2.Decimal(value=quantity),
            unit_price=money(Decimal(price), currency),
            line_amount=money(amount, currency),
            tax_amount=money(line_tax, currency),
        )
    built.net_amount.CopyFrom(money(net, currency))
    built.tax_amount.CopyFrom(money(tax, currency))
    built.total_amount.CopyFrom(money(net + tax + total_off, currency))
    return built


async def seed(call: Any) -> Any:
    """Invoices submitted before the fuzz (as procurement), released, disputed and paid, and the seeds built on them."""
    from syncgov.common.v1 import types_pb2
    from syncgov.invoice.v1 import invoice_pb2
    from syncgov.invoice.v1 import invoice_service_pb2 as pb
    from tests.fuzz.targets import Seeds

    def submit(built: Any, key: str = "") -> Any:
        return pb.SubmitInvoiceRequest(invoice=built, idempotency_key=key)

    submitted = [
        submit(invoice(MATCHED, "A-1", (OPEN_PO, 1, "4", "12.50"))),
        submit(invoice(PRICE_BLOCKED, "A-2", (OPEN_PO, 1, "2", "13.50"))),
        submit(invoice(CANCELLED_BLOCKED, "A-3", (CANCELLED_PO, 1, "1", "12.50"))),
        submit(invoice(UNKNOWN_LINE, "A-4", (UNKNOWN_PO, 1, "1", "12.50"))),
        submit(invoice(ARITHMETIC, "A-5", (OPEN_PO, 1, "1", "12.50"), total_off=Decimal("7.77"))),
        submit(invoice(PAID, "A-6", (CHANGED_PO, 1, "2", "12.50")), key="fz-invoice-6"),
        submit(invoice(RELEASED, "A-7", (OPEN_PO, 2, "2.5", "3.00"))),
        submit(invoice(DISPUTED, "A-8", (CHANGED_PO, 1, "1", "19.00"))),
        submit(invoice(CREDIT, "CN-1", (OPEN_PO, 1, "1", "12.50"), credited=MATCHED)),
        submit(invoice(USD, "A-9", (OPEN_PO, 1, "1", "12.50"), currency="USD")),
    ]
    payable = [submit(invoice(invoice_id, f"M-{invoice_id}", (PAYABLE_PO, 1, "1", "12.50"))) for invoice_id in PAYABLE]
    for request in (*submitted, *payable):
        await call(SERVICE + "SubmitInvoice", request, "procurement")
    release = pb.ReleaseInvoiceRequest(invoice_id=RELEASED, reason="goods seen at the dock", released_by="j.doe")
    dispute = pb.DisputeInvoiceRequest(invoice_id=DISPUTED, reason="price not agreed")
    payment = pb.RecordInvoicePaymentRequest(invoice_id=PAID, payment_reference="PAY-FZ-6")
    await call(SERVICE + "ReleaseInvoice", release, "ops-console")
    await call(SERVICE + "DisputeInvoice", dispute, "procurement")
    await call(SERVICE + "RecordInvoicePayment", payment, "erp")
    listing: Any = await call(
        SERVICE + "ListBlockedInvoices",
        pb.ListBlockedInvoicesRequest(page=types_pb2.PageRequest(page_size=1)),
        "procurement",
    )
    tokens = [listing.page_info.next_page_token] if listing.page_info.next_page_token else []
    seeds = Seeds(
        plausible={
            "invoice_id": [*SEEDED, *PAYABLE[:4], "INV-FZ-404"],
            "credited_invoice_id": [MATCHED, PAID, "INV-FZ-404"],
            "supplier_id": [ACME, BLOCKED_SUPPLIER, UNKNOWN_SUPPLIER],
            "invoice_number": list(SEEDED_NUMBERS),
            "po_id": list(ORDERS),
            "currency_code": list(CURRENCIES),
            "reason": list(REASONS),
            "released_by": list(PERSONS),
            "payment_reference": list(REFERENCES),
            "page_token": [*tokens, *crafted_tokens()],
        },
        systems={
            "SubmitInvoice": ["procurement"] * 5 + ["erp", "ops-console", "wms-east"],
            "GetInvoice": list(SYSTEMS),
            "ListBlockedInvoices": list(SYSTEMS),
            "ReleaseInvoice": ["ops-console", "ops-console", "procurement", "erp", "wms-east"],
            "DisputeInvoice": ["ops-console", "procurement", "procurement", "erp", "wms-east"],
            "RecordInvoicePayment": ["erp", "erp", "erp", "procurement", "ops-console", "wms-east"],
        },
    )
    seeds.add(*submitted, release, dispute, payment)
    seeds.add(
        submit(invoice("INV-FZ-20", "B-1", (OPEN_PO, 1, "1", "12.50"), (OPEN_PO, 2, "0.5", "3.00"))),
        submit(invoice("INV-FZ-21", "a-1", (OPEN_PO, 1, "1", "12.50"))),  # A-1 written differently: a duplicate
        submit(invoice("CN-FZ-2", "CN-2", (OPEN_PO, 1, "1", "12.50"), credited="INV-FZ-404")),
        submit(invoice("INV-FZ-22", "B-2", *((OPEN_PO, 1 + n % 2, "0.001", "1") for n in range(MAX_LINES)))),
        pb.GetInvoiceRequest(invoice_id=MATCHED),
        pb.GetInvoiceRequest(invoice_id="INV-FZ-404"),
        pb.ListBlockedInvoicesRequest(),
        pb.ListBlockedInvoicesRequest(reason=invoice_pb2.BLOCK_REASON_PRICE_VARIANCE, supplier_id=ACME),
        pb.ListBlockedInvoicesRequest(
            blocked_before=timestamp(whole_seconds_now()), page=types_pb2.PageRequest(page_size=2)
        ),
        *(pb.ListBlockedInvoicesRequest(page=types_pb2.PageRequest(page_token=token)) for token in tokens),
        pb.ReleaseInvoiceRequest(invoice_id=PRICE_BLOCKED, reason="price agreed by phone", released_by="a.buyer"),
        pb.DisputeInvoiceRequest(invoice_id=CANCELLED_BLOCKED, reason="order was cancelled"),
        pb.RecordInvoicePaymentRequest(invoice_id=MATCHED, payment_reference="PAY-1"),
        pb.RecordInvoicePaymentRequest(invoice_id=PAYABLE[0], payment_reference="PAY-M1"),
        pb.RecordInvoicePaymentRequest(invoice_id=PAID, payment_reference="PAY-2"),  # another reference
    )
    for message, strategy in structured(tokens).items():
        seeds.strategies.setdefault(message, []).append(strategy)
    return seeds


def crafted_tokens() -> list[str]:
    """Page tokens the listing never issued but that decode: odd cursors, another listing's, offsets."""
    cursors = (
        "",
        "|",
        "abc",
        "1",
        "1|",
        f"|{MATCHED}",
        f"-1|{MATCHED}",
        f"1.5|{MATCHED}",
        f"1e3|{MATCHED}",
        *(f"{digits}|{MATCHED}" for digits in OTHER_DIGITS),
        "9" * 20 + f"|{MATCHED}",
        "9" * 21 + f"|{MATCHED}",
        "9" * 400 + f"|{MATCHED}",
        "0|\x00",
        "1|" + "x" * 300,
        "nan|x",
        "1|2|3",
        f"18446744073709551616|{MATCHED}",
    )
    return [
        *(encode_page_cursor(LISTING, cursor) for cursor in cursors),
        encode_page_token(LISTING, 5),
        encode_page_cursor("receipt.findings", "1|erp/GR-FZ-1"),
        encode_page_cursor("po.unacknowledged", "1|PO-1"),
        "aW52b2ljZS5ibG9ja2Vk",  # the listing's name alone
        "!!!",
    ]


# -- structured requests ----------------------------------------------------------------------------------


def _text(
    plausible: Sequence[str], hostile: Sequence[str] = HOSTILE_IDS, *, wild: bool = True
) -> st.SearchStrategy[str]:
    return mostly_plausible(plausible, hostile, wild=wild)


def _numbers(plausible: tuple[int, int], *, wild: bool = True) -> st.SearchStrategy[int]:
    if not wild:
        return st.integers(*plausible)
    return st.one_of(
        st.integers(*plausible),
        st.integers(*plausible),
        st.sampled_from((0, -1, 999_999, 2**31 - 1, -(2**31))),
    )


def quantities(*, wild: bool = True) -> st.SearchStrategy[str]:
    if not wild:
        return st.sampled_from(PLAIN_DECIMALS)
    return st.one_of(
        st.sampled_from(INVOICE_DECIMALS),
        st.sampled_from(INVOICE_DECIMALS),
        st.sampled_from(HOSTILE_DECIMALS),
        decimal_strings(),
    )


def amounts(plausible: Decimal, currency: str, *, wild: bool = True) -> st.SearchStrategy[money_pb2.Money | None]:
    """Money for an amount: the right one; when ``wild`` also missing, in another currency, nanos out of range,
    units and nanos of mismatched signs, negative, off by a cent or by a lot, type extremes."""
    right = st.just(money(plausible, currency))
    if not wild:
        return right
    nanos = (1_000_000_000, -1_000_000_000, 2**31 - 1, -(2**31), 999_999_999, -1)
    return st.one_of(
        right,
        right,
        right,
        st.none(),
        st.sampled_from(("USD", "eur", "", "XXX", "EUR ", "\u20ac")).map(lambda code: money(plausible, code)),
        st.sampled_from(nanos).map(lambda n: money_pb2.Money(currency_code=currency, units=int(plausible), nanos=n)),
        st.just(money_pb2.Money(currency_code=currency, units=-1, nanos=500_000_000)),
        st.just(money(-plausible - 1, currency)),
        st.sampled_from((CENT, -CENT, Decimal("0.99"), Decimal("1.01"), Decimal(1000))).map(
            lambda off: money(plausible + off, currency)
        ),
        st.sampled_from((2**63 - 1, -(2**63), 10**13)).map(
            lambda units: money_pb2.Money(currency_code=currency, units=units)
        ),
    )


def _dates(*, wild: bool = True) -> st.SearchStrategy[date_pb2.Date | None]:
    plausible = st.builds(lambda day: date_pb2.Date(year=2027, month=1, day=day), st.integers(1, 28))
    if not wild:
        return plausible
    odd = st.sampled_from(
        (
            (2027, 2, 29),
            (2028, 2, 29),
            (1, 1, 1),
            (9999, 12, 31),
            (10000, 1, 1),
            (0, 1, 1),
            (2027, 0, 0),
            (2027, 13, 1),
            (-1, 1, 1),
            (2**31 - 1, 12, 31),
        )
    ).map(lambda ymd: date_pb2.Date(year=ymd[0], month=ymd[1], day=ymd[2]))
    return st.one_of(plausible, plausible, st.none(), odd)


def _safe_product(quantity: str, price: Decimal) -> Decimal:
    """What an honest supplier would have billed for ``quantity``, or a cent when the quantity is no number."""
    try:
        value = Decimal(quantity.strip())
        if not value.is_finite() or abs(value.adjusted()) > 12:
            return CENT
        return _cents(value * price)
    except (InvalidOperation, ValueError):
        return CENT


@st.composite
def invoice_lines(draw: st.DrawFn, currency: str, wild: bool) -> list[Any]:
    """A few lines on the seeded orders (plausible, or each field sometimes hostile), duplicated line numbers,
    odd numbers, or thousands (:func:`many_lines`)."""
    from syncgov.invoice.v1 import invoice_pb2

    def line(number: int) -> Any:
        po_id = draw(_text((OPEN_PO, OPEN_PO, CHANGED_PO, CANCELLED_PO, UNKNOWN_PO), wild=wild))
        po_line = draw(_numbers((1, 3), wild=wild))
        quantity = draw(quantities(wild=wild))
        expected = PRICES.get(po_line, Decimal("9.99"))
        price = draw(st.sampled_from((expected, expected, expected, expected * Decimal("1.03"), expected + 10)))
        amount = _safe_product(quantity, price)
        built = invoice_pb2.InvoiceLine(
            line_number=number, po_id=po_id, po_line_number=po_line, quantity=decimal_pb2.Decimal(value=quantity)
        )
        for name, value in (("unit_price", price), ("line_amount", amount), ("tax_amount", _cents(amount * TAX))):
            drawn = draw(amounts(value, currency, wild=wild))
            if drawn is not None:
                getattr(built, name).CopyFrom(drawn)
        return built

    shapes: tuple[str, ...] = ("few", "few", "few", "few", "duplicate", "odd numbers", "many")
    if not wild:
        shapes = ("few", "few", "few", "few", "few", "many")
    shape = draw(st.sampled_from(shapes))
    if shape == "many":
        return draw(many_lines(currency))
    lines = [line(number) for number in range(1, draw(st.integers(0 if wild else 1, 4)) + 1)]
    if shape == "duplicate" and lines:
        repeated = invoice_pb2.InvoiceLine()
        repeated.CopyFrom(draw(st.sampled_from(lines)))
        lines.insert(draw(st.integers(0, len(lines))), repeated)
    elif shape == "odd numbers":
        for item in lines:
            item.line_number = draw(_numbers((1, 3)))
    return lines


@st.composite
def many_lines(draw: st.DrawFn, currency: str = "EUR") -> list[Any]:
    """Thousands of lines: around the bound (MAX_LINES - 1 .. + 3) on the open order's two lines, on one line, with
    every 250th on a line the order lacks, or each on an order of its own that nobody published (a read each)."""
    from syncgov.invoice.v1 import invoice_pb2

    spread = draw(st.sampled_from(("known lines", "one line", "some unknown", "many orders")))
    count = MAX_LINES + draw(st.sampled_from((-1, 0, 0, 1, 3)))
    quantity = draw(st.sampled_from(("0.001", "1", "1e-6", "2.5")))
    lines = []
    for number in range(1, count + 1):
        po_id, po_line = OPEN_PO, 1
        if spread == "known lines":
            po_line = 1 + number % 2
        elif spread == "some unknown" and number % 250 == 0:
            po_line = number + 2
        elif spread == "many orders":
            po_id = f"PO-IN-M{number}"
        price = PRICES.get(po_line, Decimal("1"))
        amount = _cents(Decimal(quantity) * price)
        lines.append(
            invoice_pb2.InvoiceLine(
                line_number=number,
                po_id=po_id,
                po_line_number=po_line,
                quantity=decimal_pb2.Decimal(value=quantity),
                unit_price=money(price, currency),
                line_amount=money(amount, currency),
            )
        )
    return lines


@st.composite
def large_invoices(draw: st.DrawFn) -> Message:
    """A plausible invoice of MAX_LINES - 1 or MAX_LINES lines (the bound) that the match takes: fresh id and number,
    the seeded supplier, the open or the payable order's lines, totals that add up; what it records and what it
    answers must stay within bounds."""
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    count = MAX_LINES - draw(st.sampled_from((1, 0)))
    # Prices to the nano and quantities to the sixth decimal (within every bound) make each line's figures longest.
    first, second = draw(st.sampled_from((("12.50", "3.00"), ("12.499999999", "3.000000001"))))
    if draw(st.booleans()):  # the open order's two lines
        quantity = draw(st.sampled_from(("0.001", "0.01", "1", "1234.123457")))
        lines = [(OPEN_PO, 1 + n % 2, quantity, first if n % 2 == 0 else second) for n in range(count)]
    else:  # the payable order's line, a little each (3,000 x 0.01 = 30 of the 1,000 received)
        quantity = draw(st.sampled_from(("0.001", "0.01", "0.000001")))
        lines = [(PAYABLE_PO, 1, quantity, first) for _ in range(count)]
    invoice_id = _fresh_id("INV")
    return pb.SubmitInvoiceRequest(invoice=invoice(invoice_id, f"L-{invoice_id}", *lines))


def _sum(lines: Sequence[Any], name: str) -> Decimal:
    total = Decimal(0)
    for line in lines:
        if line.HasField(name):
            value = getattr(line, name)
            if -1_000_000_000 < value.nanos < 1_000_000_000 and abs(value.units) < 10**15:
                total += Decimal(value.units) + Decimal(value.nanos) / Decimal(1_000_000_000)
    return total


@st.composite
def submit_requests(draw: st.DrawFn) -> Message:
    """One SubmitInvoiceRequest built field by field: half of them plausible throughout (so they reach the match:
    fresh ids, the seeded supplier and orders, totals that add up), half with any field hostile."""
    from syncgov.invoice.v1 import invoice_pb2
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    wild = draw(st.booleans())
    credit = draw(st.integers(0, 5)) == 0
    prefix = "CN" if credit else "INV"
    # Mostly new ids; sometimes one of a small pool (submitted earlier by the fuzz: a replay, other content under
    # the same id) or a seeded one. (one_of counts a strategy object once: the weights are new objects)
    fresh = [st.just(prefix).map(_fresh_id) for _ in range(3)]
    pooled = st.integers(1, 60).map(lambda n: f"{prefix}-FZ-P{n}")
    invoice_id = draw(st.one_of(*fresh, pooled, _text(SEEDED, wild=wild)))
    currency = draw(st.sampled_from(CURRENCIES) if wild else st.just("EUR"))
    numbers = st.one_of(st.just("B").map(_fresh_id), st.just("B").map(_fresh_id), _text(SEEDED_NUMBERS, wild=wild))
    lines = draw(invoice_lines(currency, wild))
    net = _sum(lines, "line_amount")
    tax = _sum(lines, "tax_amount")
    # Totals that add up, mostly; off by a small difference or by a lot, missing, or hostile.
    off = draw(st.sampled_from((Decimal(0), Decimal(0), Decimal(0), CENT, Decimal("0.99"), Decimal(5), -net)))
    built = invoice_pb2.Invoice(
        invoice_id=invoice_id,
        supplier_id=draw(_text(SUPPLIERS, wild=wild) if wild else st.just(ACME)),
        invoice_number=draw(numbers),
        currency_code=currency,
        lines=lines,
    )
    stamp = draw(_dates(wild=wild))
    if stamp is not None:
        built.invoice_date.CopyFrom(stamp)
    for name, value in (("net_amount", net), ("tax_amount", tax), ("total_amount", net + tax + off)):
        drawn = draw(amounts(value, currency, wild=wild))
        if drawn is not None:
            getattr(built, name).CopyFrom(drawn)
    if credit or (wild and draw(st.integers(0, 9)) == 0):
        # Credit notes of real invoices, of unknown ones, of themselves, of nothing; an invoice that names one.
        choices = [_text((MATCHED, PAID, PRICE_BLOCKED, "INV-FZ-404"), wild=wild)]
        if wild:
            choices += [
                st.just(""),
                st.just(invoice_id),
                st.just(invoice_id + " "),
                st.integers(1, 60).map(lambda n: f"INV-FZ-P{n}"),
            ]
        built.credited_invoice_id = draw(st.one_of(*choices))
        built.credit_note = credit or draw(st.booleans())
    key = ""
    if draw(st.integers(0, 9)) == 0:  # an explicit key: a fresh one, or one used before
        fresh_keys = [st.just("K").map(_fresh_id) for _ in range(2)]
        key = draw(st.one_of(*fresh_keys, _text(("fz-invoice-6", "fz-key-1"), wild=wild)))
    return pb.SubmitInvoiceRequest(invoice=built, idempotency_key=key)


def _invoice_ids() -> st.SearchStrategy[str]:
    """Seeded invoices in every state, the matched ones payments and releases use up, invoices the fuzz submitted
    (pooled ids), unknown ones, hostile ones, and ids at and past the 256-character bound."""
    pooled = st.integers(1, 60).map(lambda n: f"INV-FZ-P{n}")
    return st.one_of(
        _text((*SEEDED, "INV-FZ-404", "INV-FZ-20")),
        st.sampled_from(PAYABLE),
        st.sampled_from(PAYABLE),
        pooled,
        st.sampled_from(("I" * 256, "I" * 257, " " * 300)),
    )


@st.composite
def get_requests(draw: st.DrawFn) -> Message:
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    return pb.GetInvoiceRequest(invoice_id=draw(_invoice_ids()))


@st.composite
def release_requests(draw: st.DrawFn) -> Message:
    """Releases of blocked, matched, paid, disputed and unknown invoices, with empty, huge or hostile reasons and
    person ids (``released_by`` is required)."""
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    return pb.ReleaseInvoiceRequest(
        invoice_id=draw(_invoice_ids()),
        reason=draw(_text(REASONS, HOSTILE_REASONS)),
        released_by=draw(_text(PERSONS, HOSTILE_PERSONS)),
    )


@st.composite
def dispute_requests(draw: st.DrawFn) -> Message:
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    return pb.DisputeInvoiceRequest(invoice_id=draw(_invoice_ids()), reason=draw(_text(REASONS, HOSTILE_REASONS)))


@st.composite
def payment_requests(draw: st.DrawFn) -> Message:
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    return pb.RecordInvoicePaymentRequest(
        invoice_id=draw(_invoice_ids()), payment_reference=draw(_text(REFERENCES, HOSTILE_REFERENCES))
    )


def _blocked_before(*, wild: bool = True) -> st.SearchStrategy[timestamp_pb2.Timestamp | None]:
    now = whole_seconds_now()
    plausible = st.sampled_from((now, now - timedelta(days=7), now + timedelta(hours=1))).map(timestamp)
    if not wild:
        return st.one_of(st.none(), plausible)
    return st.one_of(
        st.none(),
        plausible,
        st.sampled_from(
            (datetime(1970, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))
        ).map(timestamp),
        st.builds(
            lambda seconds, nanos: timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
            st.sampled_from((-62_135_596_801, 253_402_300_800, 2**63 - 1, -(2**63), -1, 0)),
            st.sampled_from((0, -1, 1_000_000_000, 2**31 - 1)),
        ),
    )


def listing_requests(tokens: Sequence[str] = ()) -> st.SearchStrategy[Message]:
    """Listings by reason (defined, unspecified, numbers outside the contract), supplier (the seeded one, unknown
    ones, hostile ones), ``blocked_before`` in odd ranges, page sizes and tokens issued, crafted or garbage."""
    from syncgov.common.v1 import types_pb2
    from syncgov.invoice.v1 import invoice_pb2
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    defined = [value.number for value in invoice_pb2.BlockReason.DESCRIPTOR.values]
    issued = st.sampled_from(list(tokens)) if tokens else st.just("")
    crafted = [st.sampled_from(crafted_tokens()) for _ in range(2)]
    digits = st.sampled_from([encode_page_cursor(LISTING, f"{score}|{MATCHED}") for score in OTHER_DIGITS])
    page_tokens = st.one_of(st.just(""), issued, *crafted, digits, _text(("MTA=", "abc")))

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        wild = draw(st.booleans())
        reasons = [st.just(0), st.sampled_from(defined)]
        if wild:
            reasons.append(st.sampled_from((max(defined) + 1, 99, -1, 2**31 - 1, -(2**31))))
        reason: Any = draw(st.one_of(*reasons))
        suppliers = (ACME, UNKNOWN_SUPPLIER, BLOCKED_SUPPLIER, "sup-acme", "SUP-ACME ")
        request = pb.ListBlockedInvoicesRequest(
            reason=reason, supplier_id=draw(st.one_of(st.just(""), _text(suppliers, wild=wild)))
        )
        stamp = draw(_blocked_before(wild=wild))
        if stamp is not None:
            request.blocked_before.CopyFrom(stamp)
        if draw(st.integers(0, 2)) > 0:
            sizes = st.sampled_from((0, 1, 2, 500, 501))
            request.page.CopyFrom(
                types_pb2.PageRequest(
                    page_size=draw(st.one_of(sizes, _numbers((1, 3))) if wild else sizes),
                    page_token=draw(page_tokens),
                )
            )
        return request

    return build()


def structured(tokens: Sequence[str] = ()) -> dict[str, st.SearchStrategy[Message]]:
    """The structured strategy of each RPC's request, by request message full name (``tokens``: page tokens the
    listing issued)."""
    # One in six a large plausible invoice (each distinct object counts once in one_of: the weights are copies).
    submissions = st.one_of(*(submit_requests() for _ in range(5)), large_invoices())
    return {
        "syncgov.invoice.v1.SubmitInvoiceRequest": submissions,
        "syncgov.invoice.v1.GetInvoiceRequest": get_requests(),
        "syncgov.invoice.v1.ListBlockedInvoicesRequest": listing_requests(tokens),
        "syncgov.invoice.v1.ReleaseInvoiceRequest": release_requests(),
        "syncgov.invoice.v1.DisputeInvoiceRequest": dispute_requests(),
        "syncgov.invoice.v1.RecordInvoicePaymentRequest": payment_requests(),
    }
