"""Hypothesis strategies for protobuf request messages, built from their descriptors.

:class:`MessageStrategies` turns any message ``Descriptor`` into a strategy, so a new RPC is fuzzed
the day its request message exists. Every scalar mixes plausible values (what a real client sends:
ids, currency codes, small quantities) with hostile ones (type extremes, NaN, NUL/CR/LF, ANSI
escapes, a right-to-left override, zero-width characters, non-ASCII digits, strings up to
:data:`LONG_TEXT` characters, enum numbers outside the contract, repeated fields with thousands of
items). The well-known value types get their own hostile corners: ``google.type.Decimal`` strings
such as ``1e400``, ``1_000`` or 100,000 digits; ``google.type.Money`` with mismatched signs;
``google.protobuf.Timestamp`` with nanos -1 or 2e9 and seconds beyond year 9999;
``google.type.Date`` that is no date.

:meth:`MessageStrategies.requests` biases toward *valid-looking* requests: a known-good seed request
mutated in one or two places (a field replaced by a hostile value, cleared, a repeated item
duplicated, removed or multiplied), so the fuzz reaches the deep paths behind the first validation.
:func:`raw_bodies` does the same one level down: arbitrary bytes and broken encodings of the seeds.

Nothing here knows a service: plausible values come in by field name (``plausible=``), seeds per
request message from the caller.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

LONG_TEXT = 100_000  # the longest generated string, in characters
MANY_ITEMS = 10_000  # the most items a repeated field is given
REPEATED_BUDGET = 1_000_000  # bytes one multiplied repeated field may take at most

# Characters and fragments that have broken real systems: control characters, terminal escapes,
# bidirectional overrides, invisible characters, non-ASCII digits, subject and key separators.
HOSTILE_FRAGMENTS: tuple[str, ...] = (
    "\x00",
    "\r",
    "\n",
    "\r\n",
    "\t",
    "\x1b[31m",
    "\x1b]0;pwned\x07",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\u2028",
    "\x7f",
    "\x85",
    "e\u0301",
    "\U0001f600",
    "٣",
    "۹",
    "१२",
    "\uff11\uff12\uff13",
    "\U0001d7d7",
    " ",
    "  ",
    ".",
    "*",
    ">",
    "$KV.",
    "..",
    "/",
    "\\",
    ":",
    "'",
    '"',
    "%s",
    "%n",
    "{}",
    "${jndi:ldap://x}",
    "<script>",
    "' OR 1=1 --",
)
HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\u200b",
    "\x00",
    "\r\n",
    "\u202eFZ-1",
    "\x1b[2J",
    "null",
    "None",
    "undefined",
    "NaN",
    "-1",
    "0",
    "9" * 300,
    "A" * 65,
    "A" * 257,
    "a" * 1025,
    "é" * 300,
)

# Decimal strings a lenient parser accepts and an ERP does not.
HOSTILE_DECIMALS: tuple[str, ...] = (
    "1e400",
    "1e-400",
    "1e999999999999999999",
    "-1e999999999999999999",
    "NaN",
    "-NaN",
    "sNaN",
    "Infinity",
    "-inf",
    "1_000",
    "\u0661\u0660",
    "\u0663\u066b\u0665",
    "\uff11\uff12",
    "0x10",
    "1,5",
    "1.000,50",
    " 1",
    "1 ",
    "+1",
    "-0",
    "-10",
    "0",
    ".5",
    "5.",
    "1e",
    "e1",
    "--1",
    "",
    "1.2.3",
    "0.0000000000000000001",
    "99999999999999.999",
    "12345678901234567890",
    "1e3",
)
PLAUSIBLE_DECIMALS: tuple[str, ...] = ("1", "10", "2.5", "0.5", "100", "12.125", "1000")
CURRENCIES: tuple[str, ...] = ("EUR", "USD", "GBP", "JPY", "CHF", "eur", "XXX", "EU", "EURO", "", "€")
COUNTRIES: tuple[str, ...] = ("DE", "US", "FR", "GB", "de", "XX", "ZZ", "DEU", "")

# Plausible values by field name (exact name first, then the longest matching suffix).
DEFAULT_PLAUSIBLE: Mapping[str, Sequence[str]] = {
    "currency_code": CURRENCIES,
    "country_code": COUNTRIES,
    "_id": ("PO-1001", "SUP-ACME", "ITEM-42", "X-1", "1"),
    "system": ("procurement", "erp", "wms-east", "ops-console", "analytics", "unknown-system"),
    "source_system": ("procurement", "erp", "wms-east", "ops-console", "unknown-system"),
    "unit_of_measure": ("EA", "KGM", "MTR", "ea", "PCE"),
    "iban": ("DE89370400440532013000", "DE02120300000000202051", "GB82WEST12345698765432", "DE00000000000000000000"),
    "bic": ("COBADEFFXXX", "DEUTDEFF", "XXXX"),
    "email": ("buyer@example.com", "a@b", "not-an-email", "x@" + "a" * 300 + ".com"),
    "phone": ("+49 40 123456", "+1 (555) 010-0000", "0049401234", "+999999999999999999"),
    "scheme": ("vat", "ein", "duns", "VAT", "unknown"),
    "value": ("DE136695976", "de 136 695 976", "12-3456789", "DE000000000"),
    "payment_terms": ("NET30", "NET60", "2/10 NET30"),
    "business_unit": ("BU-NORTH", "BU-SOUTH"),
    "ship_to_site": ("DC-HAMBURG", "DC-EAST"),
    "object_type": ("purchase_order", "supplier", "invoice", "purchase_order_acknowledgment", "nothing"),
    "field": ("lines[].unit_price", "bank_accounts", "legal_name", "lines[].quantity", "nope[]"),
    "page_token": ("", "abc", "MTA=", "eyJ4IjoxfQ==", "\u0661\u0660", "-1", "99999999999999999999"),
    "reason": ("price agreed", "wrong supplier"),
    "comment": ("fuzz",),
    "legal_name": ("ACME Industrial Supply GmbH", "Acme Industrial Supply G.m.b.H.", "Müller & Söhne KG"),
    "erp_document_number": ("4500001234", "45-0000"),
}


def _int_bounds(field: FieldDescriptor) -> tuple[int, int]:
    signed32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
    unsigned32 = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
    unsigned64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
    if field.type in signed32:
        return -(2**31), 2**31 - 1
    if field.type in unsigned32:
        return 0, 2**32 - 1
    if field.type in unsigned64:
        return 0, 2**64 - 1
    return -(2**63), 2**63 - 1


def integers_for(low: int, high: int) -> st.SearchStrategy[int]:
    """Small plausible numbers, the type's extremes and its edges, and anything in between."""
    edges = [0, 1, 2, 3, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]
    return st.one_of(
        st.integers(max(low, 0), min(high, 5)),
        st.integers(max(low, 0), min(high, 5)),
        st.sampled_from([value for value in edges if low <= value <= high]),
        st.integers(low, high),
    )


def _no_surrogates(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=["Cs"]), min_size=min_size, max_size=max_size)


def long_text(max_chars: int = LONG_TEXT) -> st.SearchStrategy[str]:
    """A short unit repeated up to ``max_chars`` characters: cheap to draw, expensive to handle."""
    unit = st.one_of(st.sampled_from(("A", "9", "é", "\u200b", "\x00", "ab ", "٣", "\U0001f600")), _no_surrogates(8, 1))
    return st.builds(lambda u, n: (u * (n // len(u) + 1))[:n], unit, st.integers(1_000, max_chars))


def _spliced(plausible: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A plausible value with a hostile fragment before, inside or after it."""

    def splice(value: str, fragment: str, where: int) -> str:
        cut = min(where, len(value))
        return value[:cut] + fragment + value[cut:]

    return st.builds(splice, plausible, st.sampled_from(HOSTILE_FRAGMENTS), st.integers(0, 20))


def decimal_strings() -> st.SearchStrategy[str]:
    huge = st.builds(
        lambda n, neg: ("-" if neg else "") + ("1234567890" * (n // 10 + 1))[:n],
        st.integers(20, 100_000),
        st.booleans(),
    )
    fraction = st.builds(lambda n: "0." + "0" * n + "1", st.integers(4, 20_000))
    return st.one_of(
        st.sampled_from(PLAUSIBLE_DECIMALS),
        st.sampled_from(PLAUSIBLE_DECIMALS),
        st.sampled_from(HOSTILE_DECIMALS),
        st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**6), max_value=10**16).map(str),
        huge,
        fraction,
        _spliced(st.sampled_from(PLAUSIBLE_DECIMALS)),
    )


@dataclass(frozen=True)
class Mutation:
    """Where a mutation applies: ``field`` of ``message``, or item ``index`` of a repeated field."""

    message: Message
    field: Any  # a FieldDescriptor
    index: int | None = None


class MessageStrategies:
    """Strategies for any message, from its descriptor; ``plausible`` adds values by field name."""

    def __init__(self, plausible: Mapping[str, Sequence[str]] | None = None, *, max_depth: int = 4) -> None:
        merged = {name: list(values) for name, values in DEFAULT_PLAUSIBLE.items()}
        for name, values in (plausible or {}).items():
            merged[name] = [*values, *merged.get(name, [])]
        self._plausible = merged
        self._max_depth = max_depth
        self._texts: dict[str, st.SearchStrategy[str]] = {}
        self._messages: dict[tuple[str, int], st.SearchStrategy[Message]] = {}
        self._special: dict[str, Callable[[int], st.SearchStrategy[Message]]] = {
            "google.type.Decimal": self._decimal,
            "google.type.Money": self._money,
            "google.protobuf.Timestamp": self._timestamp,
            "google.protobuf.Duration": self._duration,
            "google.type.Date": self._date,
        }

    # -- scalars ---------------------------------------------------------------------------------

    def plausible_text(self, name: str) -> st.SearchStrategy[str] | None:
        if name in self._plausible:
            return st.sampled_from(self._plausible[name])
        suffixes = [key for key in self._plausible if key.startswith("_") and name.endswith(key)]
        if suffixes:
            return st.sampled_from(self._plausible[max(suffixes, key=len)])
        return None

    def text(self, name: str) -> st.SearchStrategy[str]:
        if name not in self._texts:
            self._texts[name] = self._text(name)
        return self._texts[name]

    def _text(self, name: str) -> st.SearchStrategy[str]:
        plausible = self.plausible_text(name)
        if plausible is None:
            plausible = st.from_regex(r"\A[A-Z]{1,4}-[0-9]{1,6}\Z")
        options = [
            plausible,
            plausible,
            plausible,
            st.sampled_from(HOSTILE_STRINGS),
            st.sampled_from(HOSTILE_FRAGMENTS),
            _spliced(plausible),
            _no_surrogates(40),
            long_text(),
        ]
        if name.endswith("_yaml") or name.endswith("document"):
            options.append(self._documents(name))
        return st.one_of(*options)

    def _documents(self, name: str) -> st.SearchStrategy[str]:
        """Multi-line plausible documents (e.g. a policy) with a line dropped, duplicated or replaced."""
        documents = [value for value in self._plausible.get(name, ()) if "\n" in value]
        bombs = st.sampled_from(YAML_BOMBS)
        if not documents:
            return bombs

        @st.composite
        def mutated(draw: st.DrawFn) -> str:
            lines = draw(st.sampled_from(documents)).split("\n")
            for _ in range(draw(st.integers(1, 3))):
                at = draw(st.integers(0, len(lines) - 1))
                how = draw(st.sampled_from(("drop", "repeat", "replace", "indent", "truncate")))
                if how == "drop":
                    del lines[at]
                elif how == "repeat":
                    lines.insert(at, lines[at])
                elif how == "indent":
                    lines[at] = "  " + lines[at]
                elif how == "truncate":
                    lines = lines[:at]
                else:
                    lines[at] = (
                        lines[at].split(":")[0] + ": " + draw(st.sampled_from((*HOSTILE_STRINGS, *HOSTILE_FRAGMENTS)))
                    )
                if not lines:
                    lines = [""]
            return "\n".join(lines)

        return st.one_of(mutated(), mutated(), bombs)

    def scalar(self, field: Any) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == FieldDescriptor.TYPE_STRING:
            return self.text(field.name)
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=64), long_text(10_000).map(lambda s: s.encode()))
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            floats = st.floats() if kind == FieldDescriptor.TYPE_DOUBLE else st.floats(width=32)
            return st.one_of(st.sampled_from((0.0, -0.0, 1.0, float("nan"), float("inf"), float("-inf"))), floats)
        if kind == FieldDescriptor.TYPE_ENUM:
            defined = [value.number for value in field.enum_type.values]
            return st.one_of(
                st.sampled_from(defined),
                st.sampled_from(defined),
                st.sampled_from([max(defined) + 1, -1, 2**31 - 1, -(2**31)]),
                st.integers(-(2**31), 2**31 - 1),
            )
        return integers_for(*_int_bounds(field))

    # -- messages --------------------------------------------------------------------------------

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._messages:
            special = self._special.get(descriptor.full_name)
            self._messages[key] = special(depth) if special is not None else self._generic(descriptor, depth)
        return self._messages[key]

    def _generic(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = GetMessageClass(descriptor)
        fields = list(descriptor.fields)
        max_depth = self._max_depth

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message = cls()
            for field in fields:
                if field.message_type is not None and depth >= max_depth:
                    continue
                if not draw(st.booleans()):
                    continue
                set_field(message, field, draw(self.field_value(field, depth + 1)))
            return message

        return build()

    def field_value(self, field: Any, depth: int = 0) -> st.SearchStrategy[Any]:
        """The value of a whole field: one item, or a list of items for a repeated field (a dict for a map)."""
        if _is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            return st.dictionaries(self.item(key_field, depth), self.item(value_field, depth), max_size=4)
        if field.is_repeated:
            return self.items(field, depth)
        return self.item(field, depth)

    def item(self, field: FieldDescriptor, depth: int = 0) -> st.SearchStrategy[Any]:
        if field.message_type is not None:
            return self.message(field.message_type, depth)
        return self.scalar(field)

    def items(self, field: FieldDescriptor, depth: int = 0) -> st.SearchStrategy[list[Any]]:
        """0..4 items usually; sometimes one item multiplied up to MANY_ITEMS (within REPEATED_BUDGET bytes)."""
        item = self.item(field, depth)

        @st.composite
        def many(draw: st.DrawFn) -> list[Any]:
            one = draw(item)
            size = max(1, _encoded_size(one) + 3)
            most = max(1, min(MANY_ITEMS, REPEATED_BUDGET // size))
            return [one] * draw(st.integers(1, most))

        return st.one_of(st.lists(item, max_size=4), st.lists(item, max_size=4), st.lists(item, max_size=4), many())

    # -- well-known value types ------------------------------------------------------------------

    def _decimal(self, depth: int) -> st.SearchStrategy[Message]:
        from google.type import decimal_pb2

        return decimal_strings().map(lambda value: decimal_pb2.Decimal(value=value))

    def _money(self, depth: int) -> st.SearchStrategy[Message]:
        from google.type import money_pb2

        nanos = st.one_of(
            st.sampled_from((0, 500_000_000, 999_999_999, -1, -500_000_000, 1_000_000_000, 2**31 - 1, -(2**31))),
            st.integers(-(2**31), 2**31 - 1),
        )
        return st.builds(
            lambda code, units, n: money_pb2.Money(currency_code=code, units=units, nanos=n),
            st.one_of(st.sampled_from(CURRENCIES), self.text("currency_code")),
            integers_for(-(2**63), 2**63 - 1),
            nanos,
        )

    def _seconds_and_nanos(self) -> tuple[st.SearchStrategy[int], st.SearchStrategy[int]]:
        seconds = st.one_of(
            st.integers(1_600_000_000, 1_900_000_000),  # 2020..2030
            st.integers(1_600_000_000, 1_900_000_000),
            st.sampled_from((0, -1, -62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800)),
            st.sampled_from((2**63 - 1, -(2**63), 2**31 - 1, -(2**31), 2**53)),
            st.integers(-(2**63), 2**63 - 1),
        )
        nanos = st.one_of(
            st.just(0),
            st.integers(0, 999_999_999),
            st.sampled_from((-1, 1_000_000_000, 2_000_000_000, 2**31 - 1, -(2**31))),
        )
        return seconds, nanos

    def _timestamp(self, depth: int) -> st.SearchStrategy[Message]:
        from google.protobuf import timestamp_pb2

        seconds, nanos = self._seconds_and_nanos()
        return st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), seconds, nanos)

    def _duration(self, depth: int) -> st.SearchStrategy[Message]:
        from google.protobuf import duration_pb2

        seconds, nanos = self._seconds_and_nanos()
        return st.builds(lambda s, n: duration_pb2.Duration(seconds=s, nanos=n), seconds, nanos)

    def _date(self, depth: int) -> st.SearchStrategy[Message]:
        from google.type import date_pb2

        int32 = st.integers(-(2**31), 2**31 - 1)
        year = st.one_of(st.integers(2020, 2035), st.sampled_from((0, 1, 1582, 9999, 10000, -1, 2**31 - 1)), int32)
        month = st.one_of(st.integers(1, 12), st.sampled_from((0, 13, -1, 2**31 - 1)), int32)
        day = st.one_of(st.integers(1, 28), st.sampled_from((0, 29, 30, 31, 32, -1, 2**31 - 1)), int32)
        return st.builds(lambda y, m, d: date_pb2.Date(year=y, month=m, day=d), year, month, day)

    # -- valid-looking requests ------------------------------------------------------------------

    def mutated(self, seeds: Sequence[Message]) -> st.SearchStrategy[Message]:
        """One of ``seeds`` changed in one to three places."""

        @st.composite
        def mutate(draw: st.DrawFn) -> Message:
            message = copy.deepcopy(draw(st.sampled_from(list(seeds))))
            for _ in range(draw(st.sampled_from((1, 1, 1, 2, 3)))):
                spots = list(mutation_spots(message))
                if not spots:
                    break
                spot = draw(st.sampled_from(spots))
                self._apply(draw, spot)
            return message

        return mutate()

    def _apply(self, draw: st.DrawFn, spot: Mutation) -> None:
        message, field = spot.message, spot.field
        if spot.index is not None:  # one item of a repeated field
            container = getattr(message, field.name)
            how = draw(st.sampled_from(("replace", "remove", "duplicate", "multiply")))
            if how == "remove":
                del container[spot.index]
            elif how == "duplicate":
                container.append(container[spot.index])
            elif how == "multiply":
                item = container[spot.index]
                most = max(1, min(MANY_ITEMS, REPEATED_BUDGET // max(1, _encoded_size(item) + 3)))
                container.extend([item] * draw(st.integers(1, most)))
            elif field.message_type is not None:
                container[spot.index].CopyFrom(draw(self.message(field.message_type, 1)))
            else:
                container[spot.index] = draw(self.scalar(field))
            return
        if draw(st.integers(0, 5)) == 0:
            message.ClearField(field.name)
            return
        set_field(message, field, draw(self.field_value(field, 1)))

    def requests(self, descriptor: Descriptor, seeds: Sequence[Message] = ()) -> st.SearchStrategy[Message]:
        """Mostly mutated seeds (deep paths), sometimes the seeds themselves, sometimes anything at all."""
        generic = self.message(descriptor)
        if not seeds:
            return generic
        return st.one_of(
            self.mutated(seeds),
            self.mutated(seeds),
            self.mutated(seeds),
            st.sampled_from(list(seeds)),
            generic,
        )


def _is_map(field: Any) -> bool:
    return field.is_repeated and field.message_type is not None and field.message_type.GetOptions().map_entry


def set_field(message: Message, field: Any, value: Any) -> None:
    """Set ``field`` to ``value`` (an item, a list of items, or a dict for a map), replacing what it held."""
    if _is_map(field):
        container = getattr(message, field.name)
        container.clear()
        value_is_message = field.message_type.fields_by_name["value"].message_type is not None
        for key, item in value.items():
            if value_is_message:
                container[key].CopyFrom(item)
            else:
                container[key] = item
        return
    if field.is_repeated:
        message.ClearField(field.name)
        getattr(message, field.name).extend(value)
        return
    if field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
        return
    setattr(message, field.name, value)


def mutation_spots(message: Message) -> Iterator[Mutation]:
    """Every field of ``message`` and of the messages set inside it, and every item of its repeated fields."""
    for field in message.DESCRIPTOR.fields:
        yield Mutation(message, field)
        if _is_map(field):
            continue
        if field.is_repeated:
            items = getattr(message, field.name)
            for index in range(min(len(items), 8)):
                yield Mutation(message, field, index)
                if field.message_type is not None:
                    yield from mutation_spots(items[index])
        elif field.message_type is not None and message.HasField(field.name):
            yield from mutation_spots(getattr(message, field.name))


def _encoded_size(value: Any) -> int:
    if isinstance(value, Message):
        return value.ByteSize()
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    return 10


# Policy-shaped YAML that expands (aliases), recurses, or nests without end.
YAML_BOMBS: tuple[str, ...] = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    "format: 1\nsystems: *e\nownership: *e\n",
    "format: 1\nsystems: &s {x: *s}\n",
    "format: &f [*f]\n",
    "format: 1\nsystems: " + "[" * 5_000 + "]" * 5_000 + "\n",
    "format: 1\nsystems: " + "{a: " * 2_000 + "1" + "}" * 2_000 + "\n",
    "!!python/object/apply:os.system ['true']\n",
    "format: !!binary AAAA\n",
    "format: 1\n" + "x: 1\n" * 50_000,
    "\x00format: 1\n",
    "format: 1\nsystems: {procurement: {kind: procurement}}\n" * 2,
    "---\nformat: 1\n---\nformat: 2\n",
)


# -- raw bodies ----------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


# Encodings no valid message has: truncated varints and lengths, reserved wire types, field number 0,
# lengths past the end, deep nesting, groups that never end, invalid UTF-8 in field 1.
BROKEN_ENCODINGS: tuple[bytes, ...] = (
    b"\x08",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x0a\x05abc",
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x0f",
    b"\x00\x00",
    b"\x0b",
    b"\x0c",
    b"\x0a\x02\xc3\x28",
    b"\x0a\x04\xed\xa0\x80\x00",
    b"\x0a\x03\xff\xfe\xfd",
    b"\x0a" + _varint(2**31) + b"x",
    (b"\x0a\x80\x01" + b"\x0a\x7d" + b"x" * 125),
    b"\x0b" * 200,
    b"\x12\x02\x08",
)


def _nested(depth: int) -> bytes:
    body = b""
    for _ in range(depth):
        body = b"\x0a" + _varint(len(body)) + body
    return body


def raw_bodies(seeds: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, known-broken encodings, deeply nested fields, and seeds cut, flipped or spliced."""
    options: list[st.SearchStrategy[bytes]] = [
        st.binary(max_size=256),
        st.sampled_from(BROKEN_ENCODINGS),
        st.integers(90, 10_000).map(_nested),
        st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=4), st.integers(1, 200_000)),
    ]
    if seeds:

        @st.composite
        def broken_seed(draw: st.DrawFn) -> bytes:
            data = bytearray(draw(st.sampled_from(list(seeds))))
            how = draw(st.sampled_from(("truncate", "flip", "insert", "append", "splice")))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if how == "truncate":
                return bytes(data[:at])
            if how == "flip" and data:
                data[at] ^= draw(st.integers(1, 255))
            elif how == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif how == "append":
                data += draw(st.sampled_from(BROKEN_ENCODINGS))
            else:
                data[at:at] = draw(st.sampled_from(BROKEN_ENCODINGS))
            return bytes(data)

        options += [broken_seed(), broken_seed(), broken_seed(), st.sampled_from(list(seeds))]
    return st.one_of(*options)


# -- pieces the structured strategies of several services share --------------------------------------------

OTHER_DIGITS = ("\u0661\u0662\u0663", "\u00b2", "\uff11", "\u0661")  # digits of other scripts, superscripts


def mostly_plausible(plausible: Sequence[str], hostile: Sequence[str], *, wild: bool = True) -> st.SearchStrategy[str]:
    """A plausible value; when ``wild``, sometimes a hostile one or a plausible one with a fragment spliced in."""
    if not wild:
        return st.sampled_from(list(plausible))
    spliced = st.builds(
        lambda value, fragment, at: value[: min(at, len(value))] + fragment + value[min(at, len(value)) :],
        st.sampled_from(list(plausible)),
        st.sampled_from(HOSTILE_FRAGMENTS),
        st.integers(0, 8),
    )
    return st.one_of(
        st.sampled_from(list(plausible)),
        st.sampled_from(list(plausible)),
        st.sampled_from(list(plausible)),
        st.sampled_from(list(hostile)),
        spliced,
    )


def whole_seconds_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
