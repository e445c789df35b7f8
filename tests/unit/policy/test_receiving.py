"""The receiving section (unit conversions), the site rule and the exception types of issue 10."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.policy.engine import Policy
from libs.policy.validate import MAX_UNIT_CONVERSIONS, check

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = (ROOT / "deploy" / "policy" / "default.yaml").read_text()
MULTI = (ROOT / "deploy" / "policy" / "multi-business-unit.yaml").read_text()


def with_conversions(*conversions: dict[str, Any]) -> str:
    data = yaml.safe_load(DEFAULT)
    data["receiving"] = {"unit_conversions": list(conversions)}
    return yaml.safe_dump(data, sort_keys=False)


def conversion(source: Any = "CS", target: Any = "EA", factor: Any = 12) -> dict[str, Any]:
    return {"from": source, "to": target, "factor": factor}


@pytest.fixture
def policy() -> Policy:
    return Policy.from_text(DEFAULT, revision=1)


@pytest.mark.parametrize(
    ("entries", "path", "words"),
    [
        ([conversion(factor=0)], "receiving.unit_conversions[0].factor", "greater than zero"),
        ([conversion(factor="-12")], "receiving.unit_conversions[0].factor", "greater than zero"),
        ([conversion(factor="0.0000001")], "receiving.unit_conversions[0].factor", "more than 6 decimals"),
        ([conversion(factor="10000000000000")], "receiving.unit_conversions[0].factor", "more than 13 integer digits"),
        ([conversion(factor=0.5)], "receiving.unit_conversions[0].factor", "in quotes"),
        ([conversion(factor="twelve")], "receiving.unit_conversions[0].factor", "decimal"),
        ([conversion(source="")], "receiving.unit_conversions[0].from", "is empty"),
        ([conversion(target="E" * 17)], "receiving.unit_conversions[0].to", "at most 16"),
        ([conversion(source="C S")], "receiving.unit_conversions[0].from", "printable ASCII without spaces"),
        ([conversion(target="E\tA")], "receiving.unit_conversions[0].to", "printable ASCII without spaces"),
        ([conversion(source="EA", target="ea")], "receiving.unit_conversions[0].to", "the unit it converts from"),
        ([conversion(), conversion()], "receiving.unit_conversions[1]", "already converted by"),
        ([conversion(), conversion("cs", "Ea", 12)], "receiving.unit_conversions[1]", "already converted by"),
        # Consistent with [0] and still refused: one direction is enough.
        ([conversion(), conversion("EA", "CS", "0.083333")], "receiving.unit_conversions[1]", "one direction only"),
        ([{"from": "CS", "to": "EA"}], "receiving.unit_conversions[0].factor", "is required"),
        ([{**conversion(), "note": "x"}], "receiving.unit_conversions[0].note", "unknown key"),
        (
            [conversion(f"U{i}", "EA", 2) for i in range(MAX_UNIT_CONVERSIONS + 1)],
            "receiving.unit_conversions",
            f"at most {MAX_UNIT_CONVERSIONS}",
        ),
    ],
)
def test_each_conversion_problem_names_its_path(entries, path, words):
    document, problems = check(with_conversions(*entries))
    assert document is None
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}: {problems}"
    assert words in matching[0].message


@pytest.mark.parametrize(
    "entries",
    [
        [conversion(factor="0.000001"), conversion("PF", "EA", "9999999999999.999999")],
        [conversion(source="A" * 16, target="b-1/2")],
        [conversion(f"U{i}", "EA", 2) for i in range(MAX_UNIT_CONVERSIONS)],
        [conversion("CS", "EA", 12), conversion("PF", "CS", 40), conversion("PF", "EA", 480)],
        [],
    ],
    ids=["factor bounds", "code bounds", "entry bound", "chained pairs listed", "empty"],
)
def test_conversions_at_the_bounds_are_valid(entries):
    assert check(with_conversions(*entries))[1] == []


def test_the_section_is_optional():
    data = yaml.safe_load(DEFAULT)
    del data["receiving"]
    policy = Policy.from_text(yaml.safe_dump(data), revision=1)
    assert policy.document.receiving.unit_conversions == []
    assert policy.unit_factor("CS", "EA") is None
    assert policy.unit_factor("EA", "EA") == 1


def test_unit_factor_direct_and_any_case(policy):
    assert policy.unit_factor("CS", "EA") == 12
    assert policy.unit_factor("cs", "ea") == 12
    assert policy.unit_factor("Pk", "eA") == 6


def test_unit_factor_exact_inverse(policy):
    factor = policy.unit_factor("CS", "PF")  # PF -> CS x40 is listed
    assert factor == Decimal("0.025")
    assert str(factor) == "0.025"


def test_unit_factor_refuses_an_inverse_it_would_have_to_round(policy):
    assert policy.unit_factor("EA", "CS") is None  # 1/12
    assert policy.unit_factor("ea", "cs") is None


def test_unit_factor_of_a_unit_to_itself_is_one_even_when_unlisted(policy):
    assert policy.unit_factor("EA", "EA") == 1
    assert policy.unit_factor("kgm", "KGM") == 1


def test_unit_factor_unknown_and_never_chained(policy):
    assert policy.unit_factor("KGM", "EA") is None
    assert policy.unit_factor("PF", "EA") is None  # PF -> CS -> EA is not derived


@pytest.mark.parametrize(
    ("factor", "forward", "inverse"),
    [
        ("64", "64", "0.015625"),  # an inverse with exactly 6 decimals
        ("128", "128", None),  # 0.0078125: exact, but 7 decimals
        ("12.000", "12", None),
        ("0.025", "0.025", "40"),  # not 4E+1
        ("0.001", "0.001", "1000"),
        ("2.5", "2.5", "0.4"),
        ("3", "3", None),
    ],
)
def test_unit_factor_values_are_plain_and_inverses_exact(factor, forward, inverse):
    policy = Policy.from_text(with_conversions(conversion("BX", "EA", factor)), revision=1)
    assert str(policy.unit_factor("BX", "EA")) == forward
    found = policy.unit_factor("EA", "BX")
    assert (None if found is None else str(found)) == inverse


def test_serves_site_declared_undeclared_and_without_sites(policy):
    assert policy.serves_site("erp", "DC-HAMBURG")  # erp declares DC-EAST and DC-HAMBURG
    assert policy.serves_site("wms-east", "DC-EAST")
    assert not policy.serves_site("wms-east", "DC-HAMBURG")
    # procurement declares no sites: restriction is opt-in, so it serves every site.
    assert policy.serves_site("procurement", "DC-EAST")
    assert policy.serves_site("procurement", "DC-ANYWHERE")
    assert not policy.serves_site("nobody", "DC-EAST")


def test_over_receipt_percent_per_business_unit():
    multi = Policy.from_text(MULTI, revision=1)
    assert multi.over_receipt_percent("FOOD") == 10
    assert multi.over_receipt_percent("INDUSTRIAL") == 2
    assert multi.over_receipt_percent() == 2


@pytest.mark.parametrize("exception_type", ["superseded_version", "over_return"])
def test_new_receiving_exceptions_are_routed_like_over_receipt(policy, exception_type):
    assert policy.route(exception_type, site="DC-EAST").team == "warehouse-east"
    assert policy.route(exception_type, site="DC-HAMBURG").team == "procurement-ops"
    assert policy.route(exception_type, site="DC-EAST").escalate_to == "procurement-ops"
