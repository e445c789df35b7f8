"""receipt-reconciliation under hostile input: orders to reconcile against, seeds, and structured documents.

Before the service starts, po-publication runs in the same namespace and publishes the orders postings name
(``PO-RC-1`` open, ``PO-RC-2`` changed to version 2, ``PO-RC-3`` cancelled), so postings reach every
reconciliation path: exact receipts, conversions, over-receipts, superseded versions, unknown and cancelled
orders, unknown lines, returns and over-returns. The seeds post a few documents first (so replays, reused
document ids, returns of real receipts and GetGoodsReceipt find something) and collect page tokens the listing
really issued.

Besides the descriptor-built requests every RPC gets, each of the four RPCs gets a structured strategy here:
whole GoodsReceipt documents built line by line from hostile corners (decimals with exponents, signs, NaN-like
and other scripts' digits; ids and unit codes with control, bidi and invisible characters; duplicate line
numbers; enum numbers outside the contract; returns naming no receipt, an unknown one or themselves; 5,000 and
more lines), listings with unknown finding types and crafted or foreign page tokens, and lookups of documents
and orders that exist, do not, or cannot.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.type import decimal_pb2
from hypothesis import strategies as st

from libs.runtime.paging import encode_page_cursor, encode_page_token
from libs.runtime.settings import RuntimeSettings
from tests.fuzz.strategies import (
    HOSTILE_DECIMALS,
    HOSTILE_STRINGS,
    OTHER_DIGITS,
    decimal_strings,
    mostly_plausible,
    timestamp,
    whole_seconds_now,
)

SERVICE = "/syncgov.receipt.v1.ReceiptReconciliationService/"
LISTING = "receipt.findings"  # services/receipt_reconciliation/servicer.py FINDINGS_LISTING

OPEN_PO = "PO-RC-1"  # version 1: line 1 is 10 EA, line 2 is 2.5 KGM (tests/integration/helpers.sample_order)
CHANGED_PO = "PO-RC-2"  # version 2 lowered line 1 to 6 EA: a document from version 1 is superseded
CANCELLED_PO = "PO-RC-3"  # cancelled (version 2)
UNKNOWN_PO = "PO-RC-404"  # never published
ORDERS = (OPEN_PO, CHANGED_PO, CANCELLED_PO, UNKNOWN_PO)
SITES = ("DC-EAST", "DC-HAMBURG", "DC-NOWHERE")  # the third is a site no system declares
SYSTEMS = ("erp", "wms-east", "procurement")  # two writers of goods receipts and one that is not
UNITS = ("EA", "CS", "PK", "DZN", "PF", "KGM", "ea", " cs ", "XX")
RECEIPT, RETURN = 1, 2

# Quantities a warehouse system sends and an ERP may not hold: exponents, signs, NaN-like words, too many
# decimals (also after a conversion: 0.0000001 CS), other scripts' digits, separators.
RECEIPT_DECIMALS: tuple[str, ...] = (
    "1",
    "4",
    "6",
    "10",
    "2.5",
    "0.5",
    "0.25",
    "1e1",
    "1E+1",
    "2.5e0",
    "25e-1",
    "1e-6",
    "1e-7",
    "0.000001",
    "0.0000001",
    "0.0000005",
    "1.1234567",
    "9999999999999",
    "9999999999999.999999",
    "10000000000000",
    "1e13",
    "1e12",
    "0e9",
    "-0",
    "-1",
    "-0.5",
    "+2",
    ".5",
    "5.",
    "nan",
    "NaN",
    "-Infinity",
    "inf",
    "sNaN123",
    "1e",
    "1ee1",
    "\u0661\u0660",
    "\uff11\uff10",
    "1_0",
    "1,5",
    "0x1A",
    " 4",
    "4\u200b",
)
PLAIN_DECIMALS: tuple[str, ...] = ("1", "2", "4", "6", "10", "2.5", "0.5", "0.25", "1e1", "25e-1", "0.001")
# Unit codes: known ones in odd spellings, unknown ones, and characters that must never reach an ERP.
HOSTILE_UNITS: tuple[str, ...] = (
    "",
    " ",
    "E A",
    "EA\x00",
    "\u202eAE",
    "\u200bEA",
    "\uff25\uff21",
    "E\u0301A",
    "\u00df",
    "\ufb03",
    "\u01c5",
    "cs\n",
    "\x1b[31mCS",
    "A" * 65,
    "\u00df" * 40,
    "EA;DROP",
    "*",
    ">",
)
HOSTILE_IDS: tuple[str, ...] = (*HOSTILE_STRINGS, "GR-\x00", "GR-\u202e1", "GR-\u200b1", "erp/GR-FZ-1", "GR-FZ-1 ")
LINE_UNITS = {1: ("EA", "EA", "CS", "PK", "DZN", "ea", " cs "), 2: ("KGM",), 3: ("EA",)}
REASONS = ("damaged", "wrong_item", "late", "")


_ISSUED = itertools.count(1)


def _fresh_id(prefix: str) -> str:
    """A document id no input used before: hypothesis repeats its draws, a warehouse does not."""
    return f"{prefix}-FZ-N{next(_ISSUED)}"


# -- orders and seeds -----------------------------------------------------------------------------------


async def before_start(settings: RuntimeSettings) -> None:
    """po-publication, in the namespace receipt-reconciliation will run in, publishes the orders postings name."""
    from libs.runtime.testing import running_service
    from services.po_publication.settings import Settings as PoSettings
    from services.po_publication.wiring import wire as wire_po
    from syncgov.po.v1 import po_service_pb2 as po
    from syncgov.po.v1 import po_service_pb2_grpc as po_rpc
    from tests.integration.helpers import PROCUREMENT, sample_order, seed_supplier

    await seed_supplier(settings.nats_url, settings.namespace, "SUP-ACME")
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
        for po_id in (OPEN_PO, CHANGED_PO, CANCELLED_PO):
            await stub.PublishPurchaseOrder(
                po.PublishPurchaseOrderRequest(purchase_order=sample_order(po_id)), metadata=PROCUREMENT
            )
        lowered = sample_order(CHANGED_PO, quantity="6")
        lowered.version = 2
        await stub.ChangePurchaseOrder(po.ChangePurchaseOrderRequest(purchase_order=lowered), metadata=PROCUREMENT)
        await stub.CancelPurchaseOrder(
            po.CancelPurchaseOrderRequest(po_id=CANCELLED_PO, version=2, reason="fuzz"), metadata=PROCUREMENT
        )


def document(
    receipt_id: str,
    po_id: str,
    *lines: tuple[int, str, str],
    version: int = 1,
    site: str = "DC-HAMBURG",
    kind: Any = RECEIPT,
    reverses: str = "",
) -> Any:
    from syncgov.receipt.v1 import receipt_pb2

    built = receipt_pb2.GoodsReceipt(
        receipt_id=receipt_id, po_id=po_id, po_version=version, site_id=site, kind=kind, reverses_receipt_id=reverses
    )
    for number, (po_line, quantity, unit) in enumerate(lines, start=1):
        built.lines.add(
            line_number=number,
            po_line_number=po_line,
            quantity=decimal_pb2.Decimal(value=quantity),
            unit_of_measure=unit,
        )
    return built


async def seed(call: Any) -> Any:
    """Documents posted before the fuzz (erp at DC-HAMBURG, wms-east at DC-EAST), and the seeds built on them."""
    from syncgov.common.v1 import types_pb2
    from syncgov.receipt.v1 import receipt_service_pb2 as pb
    from tests.fuzz.targets import Seeds

    def post(built: Any, key: str = "") -> Any:
        return pb.PostGoodsReceiptRequest(receipt=built, idempotency_key=key)

    rejected = document("GR-FZ-5", OPEN_PO, (1, "2", "EA"))
    rejected.lines[0].rejected_quantity.value = "1"
    rejected.lines[0].reject_reason_code = "damaged"
    rejected.lines[0].short_quantity.value = "1"
    rejected.lines[0].short_reason_code = "late"
    rejected.lines[0].lot_number = "LOT-7"
    posted = [
        ("erp", post(document("GR-FZ-1", OPEN_PO, (1, "4", "EA"), (2, "1.5", "KGM")))),
        ("erp", post(document("GR-FZ-2", OPEN_PO, (1, "0.5", "CS")))),  # 6 EA
        ("erp", post(document("GR-FZ-3", CHANGED_PO, (1, "5", "EA"), version=1))),  # superseded
        ("erp", post(document("GR-FZ-4", UNKNOWN_PO, (1, "1", "EA")))),  # unknown order
        ("erp", post(rejected)),
        ("wms-east", post(document("GR-FZ-1", OPEN_PO, (1, "1", "EA"), site="DC-EAST"))),  # another system's id
        ("erp", post(document("RT-FZ-1", OPEN_PO, (1, "1", "EA"), kind=RETURN, reverses="GR-FZ-1"))),
        ("erp", post(document("GR-FZ-6", CANCELLED_PO, (1, "1", "EA"), version=2))),  # cancelled
        ("erp", post(document("GR-FZ-7", OPEN_PO, (9, "1", "EA"), (1, "20", "EA")), key="fz-receipt-7")),
    ]
    for system, request in posted:
        await call(SERVICE + "PostGoodsReceipt", request, system)
    listing: Any = await call(
        SERVICE + "ListReceiptsWithFindings",
        pb.ListReceiptsWithFindingsRequest(page=types_pb2.PageRequest(page_size=1)),
        "procurement",
    )
    tokens = [listing.page_info.next_page_token] if listing.page_info.next_page_token else []
    seeds = Seeds(
        plausible={
            "po_id": list(ORDERS),
            "receipt_id": ["GR-FZ-1", "GR-FZ-2", "GR-FZ-8", "RT-FZ-1", "RT-FZ-2"],
            "reverses_receipt_id": ["GR-FZ-1", "GR-FZ-2", "GR-FZ-404", "RT-FZ-1"],
            "site_id": list(SITES),
            "unit_of_measure": list(UNITS),
            "source_system": list(SYSTEMS),
            "reject_reason_code": ["damaged", "wrong_item"],
            "short_reason_code": ["late", "backorder"],
            "page_token": [*tokens, *crafted_tokens()],
        },
        systems={"PostGoodsReceipt": ["erp", "erp", "wms-east", "procurement"]},
    )
    seeds.add(*(request for _, request in posted))
    seeds.add(
        post(document("GR-FZ-8", OPEN_PO, (1, "2", "EA"), (2, "1", "KGM"), site="DC-EAST")),
        post(document("RT-FZ-2", OPEN_PO, (1, "9", "EA"), kind=RETURN, reverses="GR-FZ-2")),  # over-return
        post(document("GR-FZ-9", CHANGED_PO, (1, "1", "EA"), version=3)),  # a version not published
        # Thousands of lines on the order's lines, and a few hundred each on a line the order lacks (a finding each).
        post(
            document("GR-FZ-10", OPEN_PO, *((1 + n % 2, "0.001", "EA" if n % 2 == 0 else "KGM") for n in range(5_000)))
        ),
        post(document("GR-FZ-11", OPEN_PO, *((3 + n, "1", "EA") for n in range(300)))),
        pb.GetGoodsReceiptRequest(source_system="erp", receipt_id="GR-FZ-1"),
        pb.GetGoodsReceiptRequest(source_system="wms-east", receipt_id="GR-FZ-1"),
        pb.GetPurchaseOrderReceiptStatusRequest(po_id=OPEN_PO),
        pb.GetPurchaseOrderReceiptStatusRequest(po_id=UNKNOWN_PO),
        pb.ListReceiptsWithFindingsRequest(),
        pb.ListReceiptsWithFindingsRequest(site_id="DC-HAMBURG", finding=_finding("OVER_RECEIPT")),
        pb.ListReceiptsWithFindingsRequest(
            posted_before=timestamp(whole_seconds_now()), page=types_pb2.PageRequest(page_size=2)
        ),
        *(pb.ListReceiptsWithFindingsRequest(page=types_pb2.PageRequest(page_token=token)) for token in tokens),
    )
    for message, strategy in structured(tokens).items():
        seeds.strategies.setdefault(message, []).append(strategy)
    return seeds


def _finding(name: str) -> Any:
    from syncgov.exception.v1 import exception_pb2

    return int(exception_pb2.ExceptionType.Value(f"EXCEPTION_TYPE_{name}"))


# Scores that are str.isdigit() and no number to anyone else: Arabic-Indic, superscript, full-width digits.


def crafted_tokens() -> list[str]:
    """Page tokens the listing never issued but that decode: odd cursors, another listing's, offsets."""
    cursors = (
        "",
        "|",
        "abc",
        "1",
        "1|",
        "|erp/GR-FZ-1",
        "-1|erp/GR-FZ-1",
        "1.5|erp/GR-FZ-1",
        "1e3|erp/GR-FZ-1",
        *(f"{score}|erp/GR-FZ-1" for score in OTHER_DIGITS),
        "9" * 400 + "|erp/GR-FZ-1",
        "0|\x00",
        "1|" + "x" * 300,
        "nan|x",
        "inf|x",
        "1|2|3",
    )
    return [
        *(encode_page_cursor(LISTING, cursor) for cursor in cursors),
        encode_page_token(LISTING, 5),
        encode_page_cursor("po.unacknowledged", "1|PO-1"),
        "MTpyZWNlaXB0LmZpbmRpbmdzOmM6",  # a cursor token cut short
        "!!!",
    ]


# -- structured requests ----------------------------------------------------------------------------------


def _text(
    plausible: Sequence[str], hostile: Sequence[str] = HOSTILE_IDS, *, wild: bool = True
) -> st.SearchStrategy[str]:
    return mostly_plausible(plausible, hostile, wild=wild)


def quantities(*, wild: bool = True) -> st.SearchStrategy[str]:
    if not wild:
        return st.sampled_from(PLAIN_DECIMALS)
    return st.one_of(
        st.sampled_from(RECEIPT_DECIMALS),
        st.sampled_from(RECEIPT_DECIMALS),
        st.sampled_from(HOSTILE_DECIMALS),
        decimal_strings(),
    )


def _numbers(plausible: tuple[int, int], *, wild: bool = True) -> st.SearchStrategy[int]:
    if not wild:
        return st.integers(*plausible)
    return st.one_of(
        st.integers(*plausible),
        st.integers(*plausible),
        st.sampled_from((0, -1, 999_999, 1_000_000, 2**31 - 1, -(2**31))),
    )


def receipt_lines(*, wild: bool = True, kind: int = RECEIPT) -> st.SearchStrategy[list[Any]]:
    """A document's lines: a few (plausible, or each field sometimes hostile), duplicated line numbers, odd
    numbers, or thousands (:func:`many_lines`)."""
    from syncgov.receipt.v1 import receipt_pb2

    @st.composite
    def build(draw: st.DrawFn) -> list[Any]:
        def line(number: int) -> Any:
            po_line = draw(_numbers((1, 3), wild=wild))
            # Plausible: a unit the order line converts from (line 1 counts EA, line 2 KGM, line 3 is unknown).
            units = UNITS if wild else LINE_UNITS.get(po_line, ("EA",))
            built = receipt_pb2.GoodsReceiptLine(
                line_number=number,
                po_line_number=po_line,
                quantity=decimal_pb2.Decimal(value=draw(quantities(wild=wild))),
                unit_of_measure=draw(_text(units, HOSTILE_UNITS, wild=wild)),
            )
            reasons = REASONS if wild else REASONS[:-1]
            if not wild and kind == RETURN:  # a return gives goods back: nothing rejected or short
                return built
            if draw(st.integers(0, 4)) == 0:
                built.rejected_quantity.value = draw(quantities(wild=wild))
                built.reject_reason_code = draw(_text(reasons, wild=wild))
            if draw(st.integers(0, 6)) == 0:
                built.short_quantity.value = draw(quantities(wild=wild))
                built.short_reason_code = draw(_text(reasons, wild=wild))
            if draw(st.integers(0, 8)) == 0:
                built.lot_number = draw(_text(("LOT-1", "L" * 64), wild=wild))
                built.serial_number = draw(_text(("SN-1", "SN-\u0661"), wild=wild))
            return built

        shapes: tuple[str, ...] = ("few", "few", "few", "few", "duplicate", "odd numbers", "many")
        if not wild:
            shapes = ("few", "few", "few", "few", "many", "many")
        shape = draw(st.sampled_from(shapes))
        if shape == "many":
            return draw(many_lines())
        lines = [line(number) for number in range(1, draw(st.integers(0 if wild else 1, 5)) + 1)]
        if shape == "duplicate" and lines:
            repeated = receipt_pb2.GoodsReceiptLine()
            repeated.CopyFrom(draw(st.sampled_from(lines)))
            lines.insert(draw(st.integers(0, len(lines))), repeated)
        elif shape == "odd numbers":
            for item in lines:
                item.line_number = draw(_numbers((1, 3)))
        return lines

    return build()


@st.composite
def many_lines(draw: st.DrawFn) -> list[Any]:
    """Thousands of lines: 4,999 .. 5,003 (the bound is 5,000) on the order's lines, on one line, or with every
    250th on a line the order lacks; or a few hundred each on a line the order lacks (each a finding)."""
    from syncgov.receipt.v1 import receipt_pb2

    spread = draw(st.sampled_from(("known lines", "one line", "some unknown", "unknown lines", "unknown lines")))
    if spread == "unknown lines":
        # A few hundred, not thousands: every finding's exception carries the document, so this many already shows
        # whether what is written grows with lines x document (the write invariant) without filling the disk.
        count = draw(st.sampled_from((150, 300, 600)))
    else:
        count = draw(st.sampled_from((4_999, 5_000, 5_000, 5_001, 5_003)))
    unit = draw(st.sampled_from(("EA", "CS", "KGM")))
    quantity = draw(st.sampled_from(("0.001", "1", "1e-6", "2.5")))
    lines = []
    for number in range(1, count + 1):
        if spread == "known lines":
            po_line = 1 + number % 2
        elif spread == "unknown lines" or (spread == "some unknown" and number % 250 == 0):
            po_line = number + 2
        else:
            po_line = 1
        lines.append(
            receipt_pb2.GoodsReceiptLine(
                line_number=number,
                po_line_number=po_line,
                quantity=decimal_pb2.Decimal(value=quantity),
                unit_of_measure=unit,
            )
        )
    return lines


def _posted_at(*, wild: bool = True) -> st.SearchStrategy[timestamp_pb2.Timestamp | None]:
    now = whole_seconds_now()
    past = st.sampled_from((now - timedelta(hours=1), now - timedelta(days=400))).map(timestamp)
    if not wild:
        return st.one_of(st.none(), past)
    return st.one_of(
        st.none(),
        past,
        st.sampled_from(
            (
                now + timedelta(minutes=4),
                now + timedelta(minutes=6),
                now + timedelta(days=3650),
                datetime(1970, 1, 1, tzinfo=UTC),
                datetime(1, 1, 1, tzinfo=UTC),
            )
        ).map(timestamp),
        st.builds(
            lambda seconds, nanos: timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
            st.sampled_from((-62_135_596_801, 253_402_300_800, 2**63 - 1, -1)),
            st.sampled_from((0, -1, 1_000_000_000)),
        ),
    )


@st.composite
def post_requests(draw: st.DrawFn) -> Message:
    """One PostGoodsReceiptRequest built field by field: half of them plausible throughout (so they reach
    reconciliation: fresh ids, the seeded orders, receipts and returns of real receipts), half with any field
    hostile."""
    from syncgov.receipt.v1 import receipt_pb2
    from syncgov.receipt.v1 import receipt_service_pb2 as pb

    wild = draw(st.booleans())
    kinds = (RECEIPT, RECEIPT, RECEIPT, RETURN, RETURN)
    kind = draw(st.sampled_from((*kinds, *kinds)) | _numbers((0, 3)) if wild else st.sampled_from(kinds))
    prefix = "RT" if kind == RETURN else "GR"
    # Mostly new ids; sometimes one of a small pool (posted earlier by the fuzz: a replay, a reuse with other
    # content, a receipt a return can name) or a seeded one.
    # (hypothesis's one_of counts a strategy object once however often it is named: weights are new objects)
    fresh = [st.just(prefix).map(_fresh_id) for _ in range(3)]
    pooled = st.integers(1, 60).map(lambda n: f"{prefix}-FZ-P{n}")
    known = ("GR-FZ-1", "GR-FZ-2", "RT-FZ-1")
    receipt_id = draw(st.one_of(*fresh, pooled, _text(known, wild=wild)))
    orders = (OPEN_PO, OPEN_PO, OPEN_PO, *ORDERS)
    po_id = draw(_text(orders, wild=wild))
    # The versions each order has (PO-RC-2's first is superseded), and now and then the one after its latest.
    versions = st.sampled_from({OPEN_PO: (1, 1, 1, 2), CHANGED_PO: (1, 2, 2, 3)}.get(po_id, (1, 2, 2, 3)))
    built = receipt_pb2.GoodsReceipt(
        receipt_id=receipt_id,
        po_id=po_id,
        po_version=draw(st.one_of(versions, _numbers((0, 3)), st.just(2**63 - 1)) if wild else versions),
        site_id=draw(_text(SITES if wild else ("DC-EAST", "DC-EAST", "DC-HAMBURG"), wild=wild)),
        kind=kind,  # type: ignore[arg-type]  # an enum number outside the contract is the point
        lines=draw(receipt_lines(wild=wild, kind=kind)),
    )
    if kind == RETURN or (wild and draw(st.integers(0, 9)) == 0):
        # Returns of real receipts, of unknown ones, of themselves, of nothing; a receipt that names one.
        reversed_ids = ("GR-FZ-1", "GR-FZ-2", "GR-FZ-5", "GR-FZ-7", "GR-FZ-8", "GR-FZ-404", "RT-FZ-1")
        choices = [_text(reversed_ids, wild=wild), st.integers(1, 60).map(lambda n: f"GR-FZ-P{n}")]
        if wild:
            choices += [st.just(""), st.just(receipt_id)]
        built.reverses_receipt_id = draw(st.one_of(*choices))
    stamp = draw(_posted_at(wild=wild))
    if stamp is not None:
        built.posted_at.CopyFrom(stamp)
    if wild and draw(st.integers(0, 5)) == 0:
        built.source_system = draw(_text(("erp", "wms-east", "spoofed")))  # syncgov sets it from the caller
    key = ""
    if draw(st.integers(0, 9)) == 0:  # an explicit key: a fresh one, or one used before
        fresh_keys = [st.just("K").map(_fresh_id) for _ in range(2)]
        key = draw(st.one_of(*fresh_keys, _text(("fz-receipt-7", "fz-key-1"), wild=wild)))
    return pb.PostGoodsReceiptRequest(receipt=built, idempotency_key=key)


@st.composite
def get_requests(draw: st.DrawFn) -> Message:
    from syncgov.receipt.v1 import receipt_service_pb2 as pb

    return pb.GetGoodsReceiptRequest(
        source_system=draw(_text((*SYSTEMS, "ERP", "erp/GR-FZ-1"))),
        receipt_id=draw(_text(("GR-FZ-1", "GR-FZ-2", "RT-FZ-1", "GR-FZ-404", "FZ-1/GR"))),
    )


@st.composite
def status_requests(draw: st.DrawFn) -> Message:
    from syncgov.receipt.v1 import receipt_service_pb2 as pb

    return pb.GetPurchaseOrderReceiptStatusRequest(
        po_id=draw(st.one_of(_text((*ORDERS, "po-rc-1", "PO-RC-1 ")), st.sampled_from(("P" * 256, "P" * 257))))
    )


def listing_requests(tokens: Sequence[str] = ()) -> st.SearchStrategy[Message]:
    """Listings by site, finding type (receipt findings, other exception types, numbers outside the contract)
    and age, with page sizes and tokens issued, crafted (:func:`crafted_tokens`) or garbage."""
    from syncgov.common.v1 import types_pb2
    from syncgov.exception.v1 import exception_pb2
    from syncgov.receipt.v1 import receipt_service_pb2 as pb

    defined = [value.number for value in exception_pb2.ExceptionType.DESCRIPTOR.values]
    receipt_findings = [
        _finding(name) for name in ("OVER_RECEIPT", "RECEIPT_UNKNOWN_PO", "SUPERSEDED_VERSION", "OVER_RETURN")
    ]
    issued = st.sampled_from(list(tokens)) if tokens else st.just("")
    crafted = [st.sampled_from(crafted_tokens()) for _ in range(2)]
    digits = st.sampled_from([encode_page_cursor(LISTING, f"{score}|erp/GR-FZ-1") for score in OTHER_DIGITS])
    page_tokens = st.one_of(st.just(""), issued, *crafted, digits, _text(("MTA=", "abc")))

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        wild = draw(st.booleans())
        findings = [st.just(0), st.sampled_from(receipt_findings)]
        if wild:
            findings += [
                st.sampled_from(defined),  # mostly exception types that are not a receipt's finding
                st.sampled_from((max(defined) + 1, 99, -1, 2**31 - 1)),
            ]
        finding: Any = draw(st.one_of(*findings))
        request = pb.ListReceiptsWithFindingsRequest(
            site_id=draw(st.one_of(st.just(""), _text(SITES, wild=wild))), finding=finding
        )
        stamp = draw(_posted_at(wild=wild))
        if stamp is not None:
            request.posted_before.CopyFrom(stamp)
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
    return {
        "syncgov.receipt.v1.PostGoodsReceiptRequest": post_requests(),
        "syncgov.receipt.v1.GetGoodsReceiptRequest": get_requests(),
        "syncgov.receipt.v1.GetPurchaseOrderReceiptStatusRequest": status_requests(),
        "syncgov.receipt.v1.ListReceiptsWithFindingsRequest": listing_requests(tokens),
    }
