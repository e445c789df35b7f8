"""Money and quantities between protobuf and :class:`decimal.Decimal` — never floats.

``google.type.Decimal`` carries a decimal string; ``google.type.Money`` carries
units + nanos with the same sign. Conversions are exact; malformed values raise
:class:`ValueError` with a message fit for a field violation.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from google.protobuf import timestamp_pb2
from google.type import date_pb2, decimal_pb2, money_pb2

from syncgov.po.v1 import po_pb2

NANOS_PER_UNIT = 1_000_000_000
_NANO = Decimal(1) / NANOS_PER_UNIT
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def decimal_from_proto(value: decimal_pb2.Decimal) -> Decimal:
    text = value.value.strip()
    if not text:
        raise ValueError("is required (a decimal string such as '12.5')")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return number


def decimal_to_proto(number: Decimal) -> decimal_pb2.Decimal:
    message = decimal_pb2.Decimal()
    fill_decimal(message, number)
    return message


def fill_decimal(target: decimal_pb2.Decimal, number: Decimal) -> None:
    """Write ``number`` into a message's decimal field in place (cheaper than building one and copying it in)."""
    target.value = format(number, "f")


def money_from_proto(money: money_pb2.Money) -> Decimal:
    if not -NANOS_PER_UNIT < money.nanos < NANOS_PER_UNIT:
        raise ValueError("nanos must be between -999,999,999 and +999,999,999")
    if (money.units > 0 and money.nanos < 0) or (money.units < 0 and money.nanos > 0):
        raise ValueError("units and nanos must have the same sign")
    return Decimal(money.units) + Decimal(money.nanos) * _NANO


def money_to_proto(amount: Decimal, currency_code: str) -> money_pb2.Money:
    if amount != amount.quantize(_NANO):
        raise ValueError(f"{amount} has more than 9 decimal places")
    units = int(amount)
    nanos = int((amount - units) * NANOS_PER_UNIT)
    return money_pb2.Money(currency_code=currency_code, units=units, nanos=nanos)


def date_from_proto(value: date_pb2.Date) -> date | None:
    """A full date, or None when unset (all zero); partial dates are refused."""
    if value.year == 0 and value.month == 0 and value.day == 0:
        return None
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        raise ValueError(f"{value.year:04d}-{value.month:02d}-{value.day:02d} is not a calendar date") from None


def datetime_from_proto(stamp: timestamp_pb2.Timestamp) -> datetime:
    """A UTC datetime, exact to the microsecond (protobuf's own ToDatetime is slower Python)."""
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def date_to_proto(value: date) -> date_pb2.Date:
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def criticality_name(value: int) -> str:
    """``high`` for PURCHASE_ORDER_CRITICALITY_HIGH: the policy's name (``sla.po_acknowledgment.high``). Unset, or a
    number the contract lacks (an order stored by a newer writer), reads as ``normal``."""
    if value == po_pb2.PURCHASE_ORDER_CRITICALITY_UNSPECIFIED or value not in po_pb2.PurchaseOrderCriticality.values():
        return "normal"
    return po_pb2.PurchaseOrderCriticality.Name(value).removeprefix("PURCHASE_ORDER_CRITICALITY_").lower()
