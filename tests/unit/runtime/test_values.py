from datetime import date
from decimal import Decimal

import pytest
from google.type import date_pb2, decimal_pb2, money_pb2
from hypothesis import given
from hypothesis import strategies as st

from libs.runtime.values import (
    date_from_proto,
    decimal_from_proto,
    decimal_to_proto,
    money_from_proto,
    money_to_proto,
)

amounts = st.decimals(min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=9, allow_nan=False)


@given(amounts)
def test_money_round_trips_exactly(amount):
    assert money_from_proto(money_to_proto(amount, "EUR")) == amount


def test_money_is_exact_where_floats_are_not():
    total = sum((money_from_proto(money_pb2.Money(units=0, nanos=100_000_000)) for _ in range(3)), Decimal(0))
    assert total == Decimal("0.3")


@pytest.mark.parametrize(
    "money",
    [money_pb2.Money(units=1, nanos=-5), money_pb2.Money(units=-1, nanos=5), money_pb2.Money(nanos=1_000_000_000)],
)
def test_inconsistent_money_is_refused(money):
    with pytest.raises(ValueError, match="nanos"):
        money_from_proto(money)


def test_more_than_nine_places_cannot_become_money():
    with pytest.raises(ValueError, match="9 decimal places"):
        money_to_proto(Decimal("0.0000000001"), "EUR")


@pytest.mark.parametrize("text", ["", "ten", "NaN", "Infinity"])
def test_bad_decimal_strings_are_refused(text):
    with pytest.raises(ValueError, match=r"required|not a decimal|not a finite"):
        decimal_from_proto(decimal_pb2.Decimal(value=text))


def test_decimal_strings_keep_their_scale():
    assert decimal_from_proto(decimal_pb2.Decimal(value=" 2.50 ")) == Decimal("2.50")
    assert decimal_to_proto(Decimal("1E+3")).value == "1000"


def test_dates_unset_partial_and_full():
    assert date_from_proto(date_pb2.Date()) is None
    assert date_from_proto(date_pb2.Date(year=2027, month=2, day=28)) == date(2027, 2, 28)
    with pytest.raises(ValueError, match="calendar date"):
        date_from_proto(date_pb2.Date(year=2027, month=2, day=30))


def test_timestamps_become_utc_datetimes_exactly():
    from datetime import UTC, datetime

    from google.protobuf import timestamp_pb2

    from libs.runtime.values import datetime_from_proto

    moment = datetime(2026, 11, 26, 15, 4, 5, 123456, tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    assert datetime_from_proto(stamp) == moment
