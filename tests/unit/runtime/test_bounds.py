"""Field bounds (libs/runtime/bounds.py): each rule, the paths violations name, and the table in the docs."""

from __future__ import annotations

import base64
import importlib
import pkgutil
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from google.type import date_pb2, decimal_pb2, money_pb2
from hypothesis import given
from hypothesis import strategies as st

import syncgov
from libs.runtime import bounds
from libs.runtime.bounds import RequestBounds, decimal_problem, text_problem
from libs.runtime.errors import InvalidArgument
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_service_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_pb2, po_service_pb2
from syncgov.supplier.v1 import supplier_pb2, supplier_service_pb2

BOUNDS = RequestBounds()
REPO = Path(__file__).resolve().parents[3]


def order(**fields: object) -> po_pb2.PurchaseOrder:
    line = po_pb2.PurchaseOrderLine(
        line_number=1,
        item_id="ITEM-42",
        description="Pallet wrap 500mm\twide\r\nsecond line",
        quantity=decimal_pb2.Decimal(value="10.5"),
        unit_of_measure="EA",
        unit_price=money_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000),
        requested_delivery_date=date_pb2.Date(year=2027, month=1, day=15),
    )
    message = po_pb2.PurchaseOrder(
        po_id="PO-1001",
        version=1,
        supplier_id="SUP-ACME",
        currency_code="EUR",
        business_unit="BU-NORTH",
        ship_to_site="DC-HAMBURG",
        payment_terms="NET30",
        approved_by="j.doe",
        approved_at=timestamp_pb2.Timestamp(seconds=1_767_225_600),
        lines=[line, line, line],
        status=po_pb2.PURCHASE_ORDER_STATUS_OPEN,
    )
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def publish(purchase_order: po_pb2.PurchaseOrder, key: str = "") -> po_service_pb2.PublishPurchaseOrderRequest:
    return po_service_pb2.PublishPurchaseOrderRequest(purchase_order=purchase_order, idempotency_key=key)


def fields_of(message: Message) -> dict[str, str]:
    return {v.field: v.description for v in BOUNDS.violations(message)}


def test_a_sound_order_fits_every_bound() -> None:
    assert BOUNDS.violations(publish(order(), key="procurement:PO-1001:v1")) == []


# --- google.type.Decimal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["10", "-3", "+7", "0", "0.5", ".5", "5.", "9999999999999.999999", "-9999999999999.999999", "1.5e3", "15E-1", ""],
)
def test_quantities_an_erp_holds_are_accepted(text: str) -> None:
    assert decimal_problem(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "1e400",
        "1e-400",
        "1e999999999999999999",
        "\u0661\u0662\u0663",  # Arabic-Indic digits
        "\uff11\uff12",  # full-width digits
        "1_000",
        "1" * 100_000,
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        "sNaN",
        "10000000000000",  # 14 integer digits
        "0.0000001",  # 7 decimals
        "1e13",
        "0e999999999",
        "0E1000000000000000000",  # beyond decimal.Decimal's own exponent limit
        "1e-99999999999999999999",
        " 1",
        "1 ",
        "1,5",
        "0x10",
        "--1",
        "e5",
        ".",
    ],
)
def test_quantities_no_erp_holds_are_refused(text: str) -> None:
    assert decimal_problem(text) is not None


@given(st.one_of(st.text(max_size=80), st.from_regex(bounds._DECIMAL, fullmatch=True)))
def test_every_accepted_decimal_is_a_finite_number_within_the_digit_bounds(text: str) -> None:
    if decimal_problem(text) is not None or not text:
        return
    number = Decimal(text)
    assert number.is_finite()
    assert abs(number) < Decimal(10) ** bounds.MAX_INTEGER_DIGITS
    assert number == number.quantize(Decimal(1).scaleb(-bounds.MAX_DECIMALS))
    assert len(format(number, "f")) <= bounds.MAX_INTEGER_DIGITS + bounds.MAX_DECIMALS + 2


@given(
    st.integers(min_value=-(10**13) + 1, max_value=10**13 - 1),
    st.integers(min_value=0, max_value=bounds.MAX_DECIMALS),
)
def test_every_number_within_the_digit_bounds_is_accepted(units: int, decimals: int) -> None:
    text = format(Decimal(units).scaleb(-decimals), "f")
    assert decimal_problem(text) is None, text


# --- google.type.Money, Timestamp, Date, Duration ------------------------------------------------


def line_with(**fields: object) -> po_service_pb2.PublishPurchaseOrderRequest:
    message = order()
    for name, value in fields.items():
        getattr(message.lines[2], name).CopyFrom(value)
    return publish(message)


@pytest.mark.parametrize(
    ("money", "path"),
    [
        (money_pb2.Money(currency_code="EUR", units=10**13), "purchase_order.lines[2].unit_price"),
        (money_pb2.Money(currency_code="EUR", units=-(10**13)), "purchase_order.lines[2].unit_price"),
        (money_pb2.Money(currency_code="EUR", nanos=1_000_000_000), "purchase_order.lines[2].unit_price"),
        (money_pb2.Money(currency_code="EUR", units=1, nanos=-1), "purchase_order.lines[2].unit_price"),
        (money_pb2.Money(currency_code="eur", units=1), "purchase_order.lines[2].unit_price.currency_code"),
        (money_pb2.Money(currency_code="EURO", units=1), "purchase_order.lines[2].unit_price.currency_code"),
        (money_pb2.Money(currency_code="E\u0301UR", units=1), "purchase_order.lines[2].unit_price.currency_code"),
    ],
)
def test_money_out_of_bounds_names_the_amount_or_its_currency(money: money_pb2.Money, path: str) -> None:
    assert list(fields_of(line_with(unit_price=money))) == [path]


@pytest.mark.parametrize(
    "money",
    [
        money_pb2.Money(currency_code="EUR", units=9_999_999_999_999, nanos=999_999_999),
        money_pb2.Money(currency_code="EUR", units=-3, nanos=-500_000_000),
        money_pb2.Money(units=3),  # the line takes the order's currency
    ],
)
def test_money_within_bounds_is_accepted(money: money_pb2.Money) -> None:
    assert fields_of(line_with(unit_price=money)) == {}


@pytest.mark.parametrize(
    ("seconds", "nanos", "ok"),
    [
        (bounds.MIN_TIMESTAMP_SECONDS, 0, True),
        (bounds.MAX_TIMESTAMP_SECONDS, 999_999_999, True),
        (bounds.MIN_TIMESTAMP_SECONDS - 1, 0, False),
        (bounds.MAX_TIMESTAMP_SECONDS + 1, 0, False),
        (2**62, 0, False),
        (0, -1, False),
        (0, 2_000_000_000, False),
    ],
)
def test_timestamps_lie_between_year_1_and_9999(seconds: int, nanos: int, ok: bool) -> None:
    request = po_service_pb2.AcknowledgePurchaseOrderRequest(
        po_id="PO-1", version=1, erp_document_number="4500001", acknowledged_at=timestamp_pb2.Timestamp()
    )
    request.acknowledged_at.seconds = seconds
    request.acknowledged_at.nanos = nanos
    assert list(fields_of(request)) == ([] if ok else ["acknowledged_at"])


@pytest.mark.parametrize(
    ("year", "month", "day", "ok"),
    [
        (2024, 2, 29, True),
        (0, 0, 0, True),
        (9999, 12, 31, True),
        (2023, 2, 29, False),
        (2024, 13, 1, False),
        (0, 1, 15, False),
        (2024, 0, 0, False),
        (-1, 1, 1, False),
        (10_000, 1, 1, False),
    ],
)
def test_dates_are_calendar_dates_or_unset(year: int, month: int, day: int, ok: bool) -> None:
    date = date_pb2.Date(year=year, month=month, day=day)
    assert list(fields_of(line_with(requested_delivery_date=date))) == (
        [] if ok else ["purchase_order.lines[2].requested_delivery_date"]
    )


@pytest.mark.parametrize(
    ("seconds", "nanos", "ok"),
    [(60, 0, True), (-60, -5, True), (0, 0, True), (bounds.MAX_DURATION_SECONDS + 1, 0, False), (1, -1, False)],
)
def test_durations_are_sane(seconds: int, nanos: int, ok: bool) -> None:
    problem = bounds.duration_problem(seconds, nanos)
    assert (problem is None) is ok
    # and the walker checks a Duration wherever one sits
    check = bounds._VALUE_TYPES[duration_pb2.Duration.DESCRIPTOR.full_name]("timeout")
    found: list[tuple[str, str]] = []
    check(duration_pb2.Duration(seconds=seconds, nanos=nanos), found)
    assert [path for path, _ in found] == ([] if ok else ["timeout"])


# --- enums and integers ---------------------------------------------------------------------------


def test_enum_values_outside_the_contract_are_refused_and_unspecified_is_absent() -> None:
    assert fields_of(publish(order(status=99))) == {
        "purchase_order.status": "99 is not a value of syncgov.po.v1.PurchaseOrderStatus"
    }
    assert fields_of(publish(order(status=po_pb2.PURCHASE_ORDER_STATUS_UNSPECIFIED))) == {}
    listing = controlplane_service_pb2.ListPolicyRevisionsRequest()
    assert fields_of(listing) == {}
    change = supplier_service_pb2.ChangeSupplierStatusRequest(supplier_id="S-1", status=-7)  # type: ignore[arg-type]
    assert list(fields_of(change)) == ["status"]


@pytest.mark.parametrize(
    ("version", "ok"), [(1, True), (bounds.MAX_VERSION, True), (bounds.MAX_VERSION + 1, False), (2**63 - 1, False)]
)
def test_versions_are_bounded(version: int, ok: bool) -> None:
    assert list(fields_of(publish(order(version=version)))) == ([] if ok else ["purchase_order.version"])
    cancel = po_service_pb2.CancelPurchaseOrderRequest(po_id="PO-1", version=version)
    assert list(fields_of(cancel)) == ([] if ok else ["version"])


def test_negative_integers_are_refused() -> None:
    assert list(fields_of(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1", version=-1))) == ["version"]
    page = po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(page=types_pb2.PageRequest(page_size=-1))
    assert list(fields_of(page)) == ["page.page_size"]
    duplicates = supplier_service_pb2.ListDuplicateCandidatesRequest(page_size=-5)
    assert list(fields_of(duplicates)) == ["page_size"]
    rollback = controlplane_service_pb2.RollbackPolicyRequest(target_revision=-1, expected_revision=3)
    assert list(fields_of(rollback)) == ["target_revision"]
    line = order()
    line.lines[0].line_number = bounds.MAX_LINE_NUMBER + 1
    assert list(fields_of(publish(line))) == ["purchase_order.lines[0].line_number"]


# --- strings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        "PO\x00-1",
        "PO-1\r\nX-Injected: yes",
        "PO-1\n",
        "\x1b[31mPO-1",
        "PO-\u202e1001",  # right-to-left override
        "PO-\u2066 1001",  # left-to-right isolate
        "\u200b",  # only a zero-width space
        "PO-\u200b1001",  # a zero-width space inside
        "\ufeff",
        "   ",
        "PO\u00a01",  # no-break space
        "x" * 257,
    ],
)
def test_ids_have_a_length_and_a_character_set(bad_id: str) -> None:
    for request, path in [
        (po_service_pb2.GetPurchaseOrderRequest(po_id=bad_id), "po_id"),
        (publish(order(po_id=bad_id)), "purchase_order.po_id"),
        (supplier_service_pb2.ResolveSupplierRequest(system="erp", local_id=bad_id), "local_id"),
        (
            po_service_pb2.AcknowledgePurchaseOrderRequest(po_id="PO-1", erp_document_number=bad_id),
            "erp_document_number",
        ),
    ]:
        assert list(fields_of(request)) == [path], (bad_id, path)


@pytest.mark.parametrize("good_id", ["PO-1001", "x" * 256, "Müller & Söhne/4711", "発注-42", "PO 1001", "a"])
def test_ordinary_ids_are_accepted(good_id: str) -> None:
    assert fields_of(po_service_pb2.GetPurchaseOrderRequest(po_id=good_id)) == {}


def test_idempotency_keys_hold_512_characters() -> None:
    assert fields_of(publish(order(), key="k" * 512)) == {}
    assert list(fields_of(publish(order(), key="k" * 513))) == ["idempotency_key"]
    assert list(fields_of(publish(order(), key="k" * 70_000))) == ["idempotency_key"]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("Pallet wrap, 500 mm", True),
        ("two\nlines\r\nand a\ttab", True),
        ("Straße — ½ Palette ✓ 🚚", True),
        ("bell\x07", False),
        ("nul\x00", False),
        ("escape \x1b[2J", False),
        ("C1 \x85", False),
        ("override \u202e", False),
        ("isolate \u2068", False),
        ("x" * 2000, True),
        ("x" * 2001, False),
    ],
)
def test_free_text_refuses_control_characters_and_bidi_overrides(text: str, ok: bool) -> None:
    request = supplier_service_pb2.MergeSuppliersRequest(
        surviving_supplier_id="S-1", merged_supplier_id="S-2", reason=text
    )
    assert list(fields_of(request)) == ([] if ok else ["reason"])


def test_a_one_megabyte_description_is_refused() -> None:
    message = order()
    message.lines[1].description = "x" * 1_000_000
    assert fields_of(publish(message)) == {
        "purchase_order.lines[1].description": "must be at most 2000 characters, got 1000000"
    }


def test_policy_documents_may_be_large_but_not_unbounded() -> None:
    fits = controlplane_service_pb2.ValidatePolicyRequest(document_yaml="a: 1\r\n" * 100_000)
    assert fields_of(fits) == {}
    too_large = controlplane_service_pb2.ValidatePolicyRequest(document_yaml="#" * (1024 * 1024 + 1))
    assert list(fields_of(too_large)) == ["document_yaml"]


def test_short_fields_take_short_bounds() -> None:
    contact = supplier_pb2.Contact(name="Jo", email="j" * 255, phone="+49 40 " + "1" * 60, role="buyer")
    record = supplier_pb2.SupplierRecord(
        source_system="erp",
        local_id="L-1",
        legal_name="ACME",
        contacts=[contact],
        bank_accounts=[supplier_pb2.BankAccount(iban="DE89 3704 0044 0532 0130 00" + "0" * 20)],
    )
    assert set(fields_of(supplier_service_pb2.SubmitSupplierRecordRequest(record=record))) == {
        "record.contacts[0].email",
        "record.contacts[0].phone",
        "record.bank_accounts[0].iban",
    }


@given(st.text(max_size=300))
def test_an_accepted_id_is_printable_and_never_blank(text: str) -> None:
    if text_problem(text, bounds.ID) is not None or not text:
        return
    assert len(text) <= 256
    assert text.strip()
    for char in text:
        assert unicodedata.category(char) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@given(st.text(max_size=300))
def test_accepted_free_text_holds_no_controls_but_tab_and_line_breaks_and_no_bidi_override(text: str) -> None:
    if text_problem(text, bounds.TEXT) is not None:
        return
    for char in text:
        assert char in "\t\n\r" or unicodedata.category(char) != "Cc"
        assert not "\u202a" <= char <= "\u202e"
        assert not "\u2066" <= char <= "\u2069"


# --- repeated fields, paths, the error ---------------------------------------------------------------


def test_repeated_fields_have_a_maximum_count() -> None:
    many_lines = order()
    del many_lines.lines[:]
    many_lines.lines.extend(po_pb2.PurchaseOrderLine(line_number=n + 1) for n in range(5001))
    assert fields_of(publish(many_lines)) == {"purchase_order.lines": "must have at most 5000 entries, got 5001"}
    record = supplier_pb2.SupplierRecord(source_system="erp", local_id="L-1", legal_name="ACME")
    record.addresses.extend(types_pb2.PostalAddress(lines=["Hafenstrasse 1"]) for _ in range(10_000))
    assert list(fields_of(supplier_service_pb2.SubmitSupplierRecordRequest(record=record))) == ["record.addresses"]
    address = types_pb2.PostalAddress(lines=["line"] * 11)
    record = supplier_pb2.SupplierRecord(source_system="erp", local_id="L-1", addresses=[address])
    assert list(fields_of(supplier_service_pb2.SubmitSupplierRecordRequest(record=record))) == [
        "record.addresses[0].lines"
    ]


def test_paths_name_the_element_of_a_repeated_field() -> None:
    message = order()
    message.lines[2].quantity.value = "1e400"
    message.lines[0].item_id = "bad\x00"
    record = supplier_pb2.SupplierRecord(
        source_system="erp",
        local_id="L-1",
        addresses=[types_pb2.PostalAddress(), types_pb2.PostalAddress(lines=["ok", "bad\x1b"])],
    )
    assert set(fields_of(publish(message))) == {"purchase_order.lines[0].item_id", "purchase_order.lines[2].quantity"}
    assert list(fields_of(supplier_service_pb2.FindDuplicateSuppliersRequest(record=record))) == [
        "record.addresses[1].lines[1]"
    ]


def test_map_entries_are_checked_by_key() -> None:
    original = exception_pb2.OriginalMessage(subject="sg.po.x", headers={"Nats-Msg-Id": "k\x00"})
    request = exception_pb2.Exception(exception_id="E-1", original_message=original)
    assert list(fields_of(request)) == ["original_message.headers['Nats-Msg-Id']"]


def test_violations_are_capped_and_raised_as_invalid_argument_with_field_violations() -> None:
    message = order()
    del message.lines[:]
    message.lines.extend(po_pb2.PurchaseOrderLine(line_number=n + 1, item_id="\x00") for n in range(200))
    with pytest.raises(InvalidArgument) as raised:
        BOUNDS.check(publish(message))
    status = raised.value.to_status()
    [packed, *_] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert packed.Unpack(bad_request)
    assert len(bad_request.field_violations) == bounds.MAX_VIOLATIONS
    assert bad_request.field_violations[3].field == "purchase_order.lines[3].item_id"
    assert raised.value.reason == "FIELD_OUT_OF_BOUNDS"
    # It travels base64-encoded in a trailer, whose limit is 8 KiB by default: a quarter of it is plenty.
    assert len(base64.b64encode(status.SerializeToString())) < 4 * 1024


def _request_types() -> list[type[Message]]:
    """The request message of every RPC of every contract, served yet or not."""
    found: list[type[Message]] = []
    for info in pkgutil.walk_packages(syncgov.__path__, "syncgov."):
        if not info.name.endswith("_service_pb2"):
            continue
        module = importlib.import_module(info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append(getattr(module, method.input_type.name))
    return found


REQUEST_TYPES = _request_types()


def test_every_request_of_every_contract_has_a_walker_and_its_empty_form_fits() -> None:
    assert len(REQUEST_TYPES) > 30
    for request_type in REQUEST_TYPES:
        BOUNDS.prepare(request_type)
        assert BOUNDS.violations(request_type()) == [], request_type


def test_every_string_field_of_every_request_has_a_deliberate_or_default_bound() -> None:
    """The table decides every string: ids by suffix, named fields by name; nothing escapes the default."""
    seen: set[str] = set()

    def strings(descriptor: Any) -> None:
        if descriptor.full_name in seen or descriptor.full_name.startswith("google."):
            return
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            if field.message_type is not None:
                strings(field.message_type)
            elif field.type == field.TYPE_STRING:
                bound = bounds.bound_for(field, bounds.Text)
                if field.name.endswith("_id"):
                    assert isinstance(bound, bounds.Text), field.full_name
                    assert bound.charset is bounds.Charset.ID, field.full_name

    for request_type in REQUEST_TYPES:
        strings(request_type.DESCRIPTOR)
    assert "syncgov.po.v1.PurchaseOrderLine" in seen


def test_the_docs_table_lists_every_rule() -> None:
    text = (REPO / "docs" / "reliability.md").read_text()
    section = text.split("## Field bounds", 1)[1].split("\n## ", 1)[0]
    names: list[str] = [*bounds.BY_FIELD, *bounds.BY_NAME, *(f"*{suffix}" for suffix, _ in bounds.BY_SUFFIX)]
    shown = [".".join(name.split(".")[-2:]) if name.startswith("syncgov.") else name for name in names]
    missing = [name for name in shown if f"`{name}`" not in section]
    assert not missing, f"docs/reliability.md does not list {missing}"
    for number in ("5,000", "2,147,483,647", "512", "256", "1 MiB", "13", "9999-12-31"):
        assert number in section
    assert section.count("(default)") >= 5
