"""tolerances.*.small_difference (issue 11): an amount, 0 by default, validated like an ERP amount."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.policy.engine import Policy
from libs.policy.validate import check

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = (ROOT / "deploy" / "policy" / "default.yaml").read_text()
MULTI = (ROOT / "deploy" / "policy" / "multi-business-unit.yaml").read_text()


def with_small_difference(text: str, value: Any, unit: str | None = None) -> str:
    data = yaml.safe_load(text)
    tolerances = data["tolerances"]
    target = tolerances["default"] if unit is None else tolerances["business_units"][unit]
    target["small_difference"] = value
    return yaml.safe_dump(data, sort_keys=False)


def problems_at(text: str, path: str) -> list[str]:
    document, problems = check(text)
    assert document is None
    return [p.message for p in problems if p.path == path]


def test_the_shipped_default_accepts_one_unit_and_a_policy_without_it_accepts_nothing():
    assert Policy.from_text(DEFAULT, revision=1).tolerance().small_difference == Decimal("1.00")
    multi = Policy.from_text(MULTI, revision=1)
    assert multi.tolerance().small_difference == 0
    assert multi.tolerance("FOOD").small_difference == 0


def test_a_business_unit_has_its_own_and_others_fall_back_to_the_default():
    text = with_small_difference(with_small_difference(MULTI, "0.50"), "2.5", unit="FOOD")
    policy = Policy.from_text(text, revision=1)
    assert policy.tolerance("FOOD").small_difference == Decimal("2.5")
    assert policy.tolerance("INDUSTRIAL").small_difference == Decimal("0.50")


@pytest.mark.parametrize("value", [0, "0", 1.00, "999999.999999", 1_000_000, "0.000001"])
def test_amounts_in_range_are_valid(value):
    document, problems = check(with_small_difference(DEFAULT, value))
    assert problems == []
    assert document is not None
    assert document.tolerances.default.small_difference == Decimal(str(value))


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("-0.01", "must not be negative"),
        (-1, "must not be negative"),
        ("1000000.01", "at most 1,000,000"),
        ("1e300", "at most 1,000,000"),
        ("0.0000001", "more than 6 decimals"),
        ("1e-30", "more than 6 decimals"),
    ],
)
def test_out_of_range_amounts_are_problems_with_their_path(value, words):
    messages = problems_at(with_small_difference(DEFAULT, value), "tolerances.default.small_difference")
    assert messages, "no problem reported"
    assert words in messages[0]


def test_a_business_unit_amount_is_checked_under_its_own_path():
    messages = problems_at(
        with_small_difference(MULTI, "-5", unit="FOOD"), "tolerances.business_units.FOOD.small_difference"
    )
    assert messages
    assert "must not be negative" in messages[0]


@pytest.mark.parametrize("value", [".nan", ".inf", "many"])
def test_not_a_finite_number_is_a_shape_problem(value):
    text = DEFAULT.replace("small_difference: 1.00", f"small_difference: {value}")
    assert text != DEFAULT
    assert problems_at(text, "tolerances.default.small_difference")
