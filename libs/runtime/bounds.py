"""Bounds for every field of every request, defined once and applied at the edge.

The edge interceptor checks each request against these bounds before ownership is decided or the
servicer runs, so a refused request writes nothing and every RPC added later is covered without code:
the walker for a request type is built once from its protobuf descriptor. The bounds are the ones an
ERP puts on its own fields (a quantity has at most 13 integer digits and 6 decimals, an id has a
length and a character set, a document a maximum number of lines); docs/reliability.md ("Field
bounds") is their one table, and a test keeps the two in step.

Rules, most specific first:

- well-known types are checked as values: ``google.type.Decimal``, ``google.type.Money``,
  ``google.type.Date``, ``google.protobuf.Timestamp``, ``google.protobuf.Duration``;
- enums hold only numbers the contract defines (0, ``*_UNSPECIFIED``, is "absent" and left to the
  domain);
- strings, integers and repeated fields take their bound from :data:`BY_FIELD` (the field's full
  name), then :data:`BY_NAME` (its name), then :data:`BY_SUFFIX`, then the default of their type.

A violation names the field by its path in the request (``purchase_order.lines[2].quantity``). Unset
fields cost nothing: a message is walked through ``ListFields``, which holds only the set ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from enum import Enum
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from libs.runtime import errors
from libs.runtime.errors import FieldViolation, InvalidArgument

# Versions and revisions are counted from 1; 2^31-1 leaves every language's int a safe home for them.
MAX_VERSION = 2**31 - 1
# ERP line numbers (SAP EBELP: 5 digits); one more digit of room.
MAX_LINE_NUMBER = 999_999
# google.type.Decimal quantities and google.type.Money units: ERP amount and quantity fields.
MAX_INTEGER_DIGITS = 13
MAX_DECIMALS = 6
# Longest decimal string considered at all (leading zeros and exponents included); 13 + 6 digits fit twice.
MAX_DECIMAL_CHARS = 64
MAX_MONEY_UNITS = 10**MAX_INTEGER_DIGITS - 1
NANOS_PER_SECOND = 1_000_000_000
# google.protobuf.Timestamp: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z (the type's own range).
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
# google.protobuf.Duration: +-10,000 years (the type's own range).
MAX_DURATION_SECONDS = 315_576_000_000
# Every integer field of the contracts is a count, a number or a version: none is negative.
MAX_INT64 = 2**63 - 1
MAX_BYTES = 8 * 1024 * 1024  # JetStream's largest message (libs.runtime.streams); gRPC's limit binds first
DEFAULT_MAX_ITEMS = 1_000
# The most violations one answer lists (the status travels in a trailer, which has a size limit): the errors'.
MAX_VIOLATIONS = errors.MAX_VIOLATIONS


class Charset(Enum):
    """What characters a string may hold."""

    # Printable (no control, format or separator characters other than the space, so no NUL, CR, LF,
    # ANSI escape, bidi override or isolate, zero-width space) and not blank.
    ID = "id"
    # Anything but control characters (tab, LF and CR excepted) and bidi overrides or isolates.
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class Text:
    """A string bound: its longest length in characters (code points) and its character set."""

    max_chars: int
    charset: Charset = Charset.TEXT


@dataclass(frozen=True, slots=True)
class Range:
    """An integer bound, inclusive."""

    low: int
    high: int


@dataclass(frozen=True, slots=True)
class Items:
    """A repeated field's (or map's) largest number of entries."""

    max_items: int


Bound = Text | Range | Items

ID = Text(256, Charset.ID)  # libs.runtime.subjects.MAX_KEY_CHARS: every id can become an object key
IDEMPOTENCY_KEY = Text(512, Charset.ID)
PAGE_TOKEN = Text(512, Charset.ID)
CODE = Text(64, Charset.ID)
EMAIL = Text(254, Charset.ID)  # RFC 5321's longest path
PHONE = Text(64, Charset.ID)
IBAN = Text(42, Charset.ID)  # 34 characters, in groups of four
BIC = Text(16, Charset.ID)  # 8 or 11 characters, perhaps spaced
NAME = Text(1_000)
ADDRESS_PART = Text(256)
TEXT = Text(2_000)  # descriptions, reasons, comments: and any string no rule names
DETAIL = Text(10_000)
DOCUMENT = Text(1024 * 1024)  # a policy document (YAML)
VERSION = Range(0, MAX_VERSION)
LINE_NUMBER = Range(0, MAX_LINE_NUMBER)
NON_NEGATIVE = Range(0, MAX_INT64)
DOCUMENT_LINES = Items(5_000)  # services/po_publication/domain.py MAX_LINES
INVOICE_LINES = Items(3_000)  # services/invoice_status/domain.py MAX_LINES: an invoice's status must fit 4 MiB
PARTY_ITEMS = Items(50)  # a supplier's addresses, contacts, tax ids, bank accounts

# By full field name: the most specific rules, and the PO fields the domain bounds more tightly.
BY_FIELD: Mapping[str, Bound] = {
    "syncgov.po.v1.PurchaseOrder.lines": DOCUMENT_LINES,
    "syncgov.receipt.v1.GoodsReceipt.lines": DOCUMENT_LINES,
    "syncgov.invoice.v1.Invoice.lines": INVOICE_LINES,
    "syncgov.po.v1.PurchaseOrder.supplier_id": Text(128, Charset.ID),
    "syncgov.po.v1.PurchaseOrderLine.item_id": Text(128, Charset.ID),
    "syncgov.po.v1.PurchaseOrderLine.unit_of_measure": Text(16, Charset.ID),
    "syncgov.common.v1.PostalAddress.lines": Items(10),
    "syncgov.supplier.v1.TaxIdentifier.value": CODE,
    "syncgov.controlplane.v1.ReportSystemStateRequest.objects": Items(1_000),  # one drift report batch
    "syncgov.controlplane.v1.SystemObjectState.content_sha256": Text(64, Charset.ID),  # SHA-256, hex
    "syncgov.exception.v1.OriginalMessage.subject": Text(1_024, Charset.ID),
    "syncgov.exception.v1.Exception.evidence": Text(64 * 1024),  # JSON documents: services/exception_router/mapping.py
    "syncgov.exception.v1.OriginalMessage.HeadersEntry.key": Text(256, Charset.ID),
    "syncgov.exception.v1.OriginalMessage.HeadersEntry.value": Text(4_096),
}
# By field name, in any message.
BY_NAME: Mapping[str, Bound] = {
    "idempotency_key": IDEMPOTENCY_KEY,
    "page_token": PAGE_TOKEN,
    "system": ID,
    "source_system": ID,
    "approved_by": ID,
    "raised_by": ID,
    "fingerprint": ID,
    "business_unit": CODE,
    "ship_to_site": CODE,
    "cost_center": CODE,
    "unit_of_measure": CODE,
    "object_type": CODE,
    "owner_team": CODE,
    "scheme": CODE,
    "stream": CODE,
    "consumer": CODE,
    "postal_code": Text(32, Charset.ID),
    "field": Text(256, Charset.ID),
    "email": EMAIL,
    "phone": PHONE,
    "iban": IBAN,
    "bic": BIC,
    "legal_name": NAME,
    "name": NAME,
    "holder_name": NAME,
    "lines": ADDRESS_PART,  # a postal address's lines (document lines are messages, bounded above)
    "locality": ADDRESS_PART,
    "region": ADDRESS_PART,
    "role": ADDRESS_PART,
    "payment_terms": ADDRESS_PART,
    "description": TEXT,
    "reason": TEXT,
    "comment": TEXT,
    "resolution": TEXT,
    "detail": DETAIL,
    "last_error": DETAIL,
    "document_yaml": DOCUMENT,
    "version": VERSION,
    "revision": VERSION,
    "page_size": Range(0, 2**31 - 1),
    "line_number": LINE_NUMBER,
    "tax_ids": PARTY_ITEMS,
    "addresses": PARTY_ITEMS,
    "contacts": PARTY_ITEMS,
    "bank_accounts": PARTY_ITEMS,
    "headers": Items(100),
    "evidence": Items(100),
}
# By the end of a field's name, first match wins; each suffix applies to one kind of field only.
BY_SUFFIX: tuple[tuple[str, Bound], ...] = (
    ("_id", ID),
    ("_key", ID),
    ("_number", ID),
    ("_reference", ID),
    ("_code", CODE),
    ("_version", VERSION),
    ("_revision", VERSION),
    ("_line_number", LINE_NUMBER),
)
DEFAULT_TEXT = TEXT
DEFAULT_ITEMS = Items(DEFAULT_MAX_ITEMS)

_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    }
)
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})


def bound_for(field: FieldDescriptor, kind: type[Text] | type[Range] | type[Items]) -> Bound | None:
    """The bound of ``kind`` a field takes from the tables, or None (then the default of its type applies).

    ``Items`` asks for a repeated field's count; ``Text`` or ``Range`` for each of its values."""
    explicit = BY_FIELD.get(field.full_name)
    if isinstance(explicit, kind):
        return explicit
    named = BY_NAME.get(field.name)
    if isinstance(named, kind):
        return named
    for suffix, bound in BY_SUFFIX:
        if isinstance(bound, kind) and field.name.endswith(suffix):
            return bound
    return None


# --- value checks: each answers a problem description, or None -------------------------------------

# Problems found so far: (path relative to the message being walked, why).
_Problems = list[tuple[str, str]]
# A field's check: its value, and where to append problems.
_Check = Callable[[Any, _Problems], None]


_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_PLAIN_DECIMAL = re.compile(rf"[+-]?[0-9]{{1,{MAX_INTEGER_DIGITS}}}(?:\.[0-9]{{0,{MAX_DECIMALS}}})?")
_DECIMAL = re.compile(
    r"[+-]?(?:(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]*))?|\.(?P<fraction2>[0-9]+))(?:[eE](?P<power>[+-]?[0-9]+))?"
)
_CURRENCY = re.compile("[A-Z]{3}")


def text_problem(value: str, bound: Text) -> str | None:
    """Why a string breaks its bound, or None; an empty string is absent and always fits."""
    if len(value) > bound.max_chars:
        return f"must be at most {bound.max_chars} characters, got {len(value)}"
    if bound.charset is Charset.ID:
        if not value.isprintable():
            return "must be printable: no control, line-break, invisible or bidi-override characters"
        if value and not value.strip(" "):
            return "must not be blank"
        return None
    if value.isascii() and value.isprintable():
        return None
    if _CONTROL_IN_TEXT.search(value):
        return "must not hold control characters (but tab and line breaks) or bidi overrides"
    return None


def decimal_problem(text: str) -> str | None:
    """Why a ``google.type.Decimal`` value is not a quantity an ERP holds, or None (empty is absent)."""
    if not text or _PLAIN_DECIMAL.fullmatch(text):
        return None
    if len(text) > MAX_DECIMAL_CHARS:
        return f"must be at most {MAX_DECIMAL_CHARS} characters, got {len(text)}"
    match = _DECIMAL.fullmatch(text)
    if match is None:
        return "is not a decimal number: ASCII digits with an optional sign and decimal point, e.g. '12.5'"
    # As decimal.Decimal's (coefficient, exponent), but without building one: its exponent has a limit too.
    whole = match.group("whole") or ""
    fraction = match.group("fraction") or match.group("fraction2") or ""
    power = match.group("power")
    exponent = (int(power) if power else 0) - len(fraction)
    significant = (whole + fraction).lstrip("0")
    integer_digits = len(significant) + exponent if significant else 1 + max(exponent, 0)
    if integer_digits > MAX_INTEGER_DIGITS:
        return f"has {integer_digits} integer digits; at most {MAX_INTEGER_DIGITS}"
    if -exponent > MAX_DECIMALS:
        return f"has {-exponent} decimals; at most {MAX_DECIMALS}"
    return None


def money_problems(units: int, nanos: int, currency_code: str) -> list[tuple[str, str]]:
    """``(subfield, why)`` for each problem of a ``google.type.Money`` ("" names the amount itself)."""
    problems: list[tuple[str, str]] = []
    if not -MAX_MONEY_UNITS <= units <= MAX_MONEY_UNITS:
        problems.append(("", f"units must have at most {MAX_INTEGER_DIGITS} digits"))
    if not -NANOS_PER_SECOND < nanos < NANOS_PER_SECOND:
        problems.append(("", "nanos must be between -999,999,999 and +999,999,999"))
    elif (units > 0 and nanos < 0) or (units < 0 and nanos > 0):
        problems.append(("", "units and nanos must have the same sign"))
    if currency_code and not _CURRENCY.fullmatch(currency_code):
        problems.append(("currency_code", "must be three upper-case letters (ISO 4217)"))
    return problems


def timestamp_problem(seconds: int, nanos: int) -> str | None:
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        return "must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
    if not 0 <= nanos < NANOS_PER_SECOND:
        return "nanos must be between 0 and 999,999,999"
    return None


def date_problem(year: int, month: int, day: int) -> str | None:
    if year == month == day == 0:
        return None
    try:
        date(year, month, day)
    except ValueError:
        return "must be a calendar date (year 1-9999) or entirely unset"
    return None


def duration_problem(seconds: int, nanos: int) -> str | None:
    if not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS:
        return "must be within 10,000 years"
    if not -NANOS_PER_SECOND < nanos < NANOS_PER_SECOND:
        return "nanos must be between -999,999,999 and +999,999,999"
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        return "seconds and nanos must have the same sign"
    return None


def _value_type_check(problems: Callable[[Any], list[tuple[str, str]] | str | None]) -> Callable[[str], _Check]:
    """A well-known type's check, given where it sits: ``problems`` answers (subfield, why) pairs or one why."""

    def at(path: str) -> _Check:
        def check(value: Any, out: _Problems) -> None:
            found = problems(value)
            if not found:
                return
            if isinstance(found, str):
                out.append((path, found))
                return
            for sub, why in found:
                out.append((f"{path}.{sub}" if path and sub else path or sub, why))

        return check

    return at


_VALUE_TYPES: Mapping[str, Callable[[str], _Check]] = {
    "google.type.Decimal": _value_type_check(lambda m: decimal_problem(m.value)),
    "google.type.Money": _value_type_check(lambda m: money_problems(m.units, m.nanos, m.currency_code)),
    "google.type.Date": _value_type_check(lambda m: date_problem(m.year, m.month, m.day)),
    "google.protobuf.Timestamp": _value_type_check(lambda m: timestamp_problem(m.seconds, m.nanos)),
    "google.protobuf.Duration": _value_type_check(lambda m: duration_problem(m.seconds, m.nanos)),
}

# --- the walker ----------------------------------------------------------------------------------


class _Walker:
    """Checks one message type: a check per field, built once from the descriptor.

    Unset fields cost one attribute read each: a scalar or repeated field is skipped when empty (its default
    always fits), a singular message field when not present."""

    __slots__ = ("messages", "values")

    def __init__(self) -> None:
        self.values: list[tuple[str, _Check]] = []
        self.messages: list[tuple[str, _Check]] = []

    def visit(self, message: Message, out: _Problems) -> None:
        for name, check in self.values:
            value = getattr(message, name)
            if value:
                check(value, out)
        for name, check in self.messages:
            if message.HasField(name):
                check(getattr(message, name), out)
        if len(out) > MAX_VIOLATIONS:
            del out[MAX_VIOLATIONS:]


def _prefix(out: _Problems, start: int, prefix: str) -> None:
    """Problems from ``start`` on were found inside ``prefix``: make their paths relative to its parent."""
    out[start:] = [(f"{prefix}.{path}" if path else prefix, why) for path, why in out[start:]]


class RequestBounds:
    """The bounds of every request type, each type's walker built on first use and kept."""

    def __init__(self) -> None:
        self._walkers: dict[str, _Walker] = {}

    def violations(self, message: Message) -> list[FieldViolation]:
        """Every field of ``message`` that breaks its bound (at most :data:`MAX_VIOLATIONS`), by path."""
        out: _Problems = []
        self._walker_of(message).visit(message, out)
        return [FieldViolation(path, why) for path, why in out[:MAX_VIOLATIONS]]

    def check(self, message: Message) -> None:
        """Raise INVALID_ARGUMENT with a field violation per problem; return quietly when every field fits."""
        out: _Problems = []
        self._walker_of(message).visit(message, out)
        if out:
            violations = [FieldViolation(path, why) for path, why in out[:MAX_VIOLATIONS]]
            raise InvalidArgument(
                f"{len(violations)} field(s) out of bounds, e.g. {violations[0].field}: {violations[0].description}; "
                "nothing was written (bounds: docs/reliability.md)",
                violations=violations,
                reason="FIELD_OUT_OF_BOUNDS",
            )

    def _walker_of(self, message: Message) -> _Walker:
        walker = self._walkers.get(message.DESCRIPTOR.full_name)
        return walker if walker is not None else self.walker(cast(Descriptor, message.DESCRIPTOR))

    def prepare(self, message_type: type[Message]) -> None:
        """Build the walker of ``message_type`` (and of every type it holds) now rather than on first use."""
        self.walker(cast(Descriptor, message_type.DESCRIPTOR))

    def walker(self, descriptor: Descriptor) -> _Walker:
        walker = self._walkers.get(descriptor.full_name)
        if walker is None:
            # Registered before its fields are built, so a recursive type finds itself.
            walker = self._walkers[descriptor.full_name] = _Walker()
            for field in descriptor.fields:
                singular_message = field.message_type is not None and not field.is_repeated
                (walker.messages if singular_message else walker.values).append((field.name, self._field_check(field)))
        return walker

    def _field_check(self, field: FieldDescriptor) -> _Check:
        name = field.name
        message_type = field.message_type
        if not field.is_repeated:
            if message_type is None or message_type.full_name in _VALUE_TYPES:
                return self._value_check(field, name)
            inner = self._value_check(field, "")

            def nested(value: Any, out: _Problems) -> None:
                start = len(out)
                inner(value, out)
                if len(out) > start:
                    _prefix(out, start, name)

            return nested
        bound = bound_for(field, Items)
        limit = bound.max_items if isinstance(bound, Items) else DEFAULT_ITEMS.max_items
        too_many = f"must have at most {limit} entries"
        if message_type is not None and message_type.GetOptions().map_entry:
            key_check = self._value_check(message_type.fields_by_name["key"], "")
            value_check = self._value_check(message_type.fields_by_name["value"], "")

            def mapping(values: Any, out: _Problems) -> None:
                if len(values) > limit:
                    out.append((name, f"{too_many}, got {len(values)}"))
                    return
                for key, value in values.items():
                    start = len(out)
                    key_check(key, out)
                    value_check(value, out)
                    if len(out) > start:
                        shown = str(key)[:64] if str(key).isprintable() else "?"
                        _prefix(out, start, f"{name}[{shown!r}]")
                        if len(out) >= MAX_VIOLATIONS:
                            return

            return mapping
        item_check = self._value_check(field, "")

        def repeated(values: Any, out: _Problems) -> None:
            if len(values) > limit:
                out.append((name, f"{too_many}, got {len(values)}"))
                return
            for index, item in enumerate(values):
                start = len(out)
                item_check(item, out)
                if len(out) > start:
                    _prefix(out, start, f"{name}[{index}]")
                    if len(out) >= MAX_VIOLATIONS:
                        return

        return repeated

    def _value_check(self, field: FieldDescriptor, path: str) -> _Check:
        """The check of one value of ``field``; a scalar's problems are appended under ``path``, a message's
        problems under paths relative to it."""
        message_type = field.message_type
        if message_type is not None:
            value_type = _VALUE_TYPES.get(message_type.full_name)
            if value_type is not None:
                return value_type(path)
            return self.walker(message_type).visit
        enum_type = field.enum_type
        if enum_type is not None:
            known = frozenset(enum_type.values_by_number)
            unknown = f"is not a value of {enum_type.full_name}"

            def enum(value: int, out: _Problems) -> None:
                if value not in known:
                    out.append((path, f"{value} {unknown}"))

            return enum
        if field.type == FieldDescriptor.TYPE_STRING:
            text = bound_for(field, Text)
            bound = text if isinstance(text, Text) else DEFAULT_TEXT

            longest = bound.max_chars
            ids = bound.charset is Charset.ID

            def string(value: str, out: _Problems) -> None:
                # The common case, answered without a call: short, printable, not starting with a space.
                if len(value) <= longest and value.isprintable() and value[:1] != " " and (ids or value.isascii()):
                    return
                problem = text_problem(value, bound)
                if problem:
                    out.append((path, problem))

            return string
        if field.type in _INTEGERS:
            limits = bound_for(field, Range)
            low, high = (limits.low, limits.high) if isinstance(limits, Range) else (0, MAX_INT64)
            outside = f"must be between {low:,} and {high:,}"

            def integer(value: int, out: _Problems) -> None:
                if not low <= value <= high:
                    out.append((path, f"{outside}, got {value}"))

            return integer
        if field.type in _FLOATS:

            def floating(value: float, out: _Problems) -> None:
                if not math.isfinite(value):
                    out.append((path, "must be a finite number"))

            return floating
        if field.type == FieldDescriptor.TYPE_BYTES:

            def raw(value: bytes, out: _Problems) -> None:
                if len(value) > MAX_BYTES:
                    out.append((path, f"must be at most {MAX_BYTES:,} bytes, got {len(value):,}"))

            return raw
        return _nothing


def _nothing(value: Any, out: _Problems) -> None:
    return None
