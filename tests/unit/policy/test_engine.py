from datetime import timedelta
from pathlib import Path

import pytest

from libs.policy.durations import format_duration, parse_duration
from libs.policy.engine import Policy, PolicyInvalid, unified_diff

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_TEXT = (ROOT / "deploy" / "policy" / "default.yaml").read_text()
MULTI_TEXT = (ROOT / "deploy" / "policy" / "multi-business-unit.yaml").read_text()


@pytest.fixture
def policy() -> Policy:
    return Policy.from_text(DEFAULT_TEXT, revision=7)


def test_erp_may_not_write_a_po_price_and_the_decision_says_why(policy):
    decision = policy.may_write("erp", "purchase_order", ["lines[].unit_price"])
    assert not decision.allowed
    assert decision.revision == 7
    [refusal] = decision.refusals
    assert refusal.ownership.system_of_record == "procurement"
    assert refusal.ownership.rule_path == "ownership.purchase_order"
    assert "lines[].unit_price belong(s) to procurement" in decision.reason()


def test_procurement_may_write_the_same_field(policy):
    assert policy.may_write("procurement", "purchase_order", ["lines[].unit_price", "po_id"]).allowed


def test_field_rules_override_the_object_rule(policy):
    assert policy.ownership_of("supplier", "bank_accounts[].iban").system_of_record == "erp"
    assert policy.ownership_of("supplier", "legal_name").system_of_record == "procurement"
    assert not policy.may_write("procurement", "supplier", ["legal_name", "bank_accounts[].iban"]).allowed
    assert policy.may_write("erp", "supplier", ["bank_accounts[].iban"]).allowed


def test_field_rule_for_a_line_field_covers_only_that_field():
    multi = Policy.from_text(MULTI_TEXT, revision=1)
    assert multi.may_write("wms-north", "purchase_order", ["lines[].requested_delivery_date"]).allowed
    assert not multi.may_write("wms-north", "purchase_order", ["lines[].quantity"]).allowed


def test_a_writer_of_an_object_without_field_rules_writes_every_field_and_no_one_else_does(policy):
    """What lets the edge skip listing a document's fields: only where every field's rule is the object's."""
    assert policy.writes_every_field("procurement", "invoice")
    assert not policy.writes_every_field("erp", "invoice")  # not among the writers: the fields name the refusal
    assert not policy.writes_every_field("procurement", "supplier")  # field rules: the fields decide
    assert not policy.writes_every_field("erp", "supplier")
    assert not policy.writes_every_field("procurement", "spaceship")
    for fields in (["invoice_number"], ["lines[].unit_price", "supplier_id"]):
        assert policy.may_write("procurement", "invoice", fields).allowed
        assert not policy.may_write("erp", "invoice", fields).allowed


def test_ungoverned_object_is_refused(policy):
    assert not policy.may_write("procurement", "spaceship", ["x"]).allowed


def test_reads_are_open_to_known_systems_unless_restricted(policy):
    assert policy.may_read("erp", "purchase_order")
    assert not policy.may_read("stranger", "purchase_order")
    strict = Policy.from_text((ROOT / "deploy" / "policy" / "strict-finance.yaml").read_text(), 1)
    assert strict.may_read("finance-console", "purchase_order")
    assert strict.may_read("procurement", "goods_receipt")


def test_most_specific_route_wins(policy):
    assert policy.route("over_receipt", site="DC-EAST").team == "warehouse-east"
    assert policy.route("over_receipt", site="DC-WEST").team == "procurement-ops"
    assert policy.route("sla_breach").escalate_to == "integration-team"
    assert policy.route("price_variance").escalate_after == timedelta(days=1)
    assert policy.route("something_new").team == "integration-team"


def test_business_unit_tolerances_fall_back_to_the_default():
    multi = Policy.from_text(MULTI_TEXT, revision=1)
    assert multi.tolerance("FOOD").over_receipt_percent == 10
    assert multi.tolerance("INDUSTRIAL").over_receipt_percent == 2


def test_retry_sla_and_hold_window(policy):
    assert policy.retry("any-consumer") == (5, (0.5, 2.0, 10.0, 30.0))
    assert policy.sla("po_acknowledgment", "high") == timedelta(seconds=60)
    assert policy.sla("po_acknowledgment", "nonexistent") is None
    assert policy.out_of_order_hold == timedelta(minutes=5)


def test_invalid_text_raises_with_every_problem():
    with pytest.raises(PolicyInvalid) as failure:
        Policy.from_text("format: 1\nsystems: {}\n", revision=1)
    assert {p.path for p in failure.value.problems} >= {"ownership", "exceptions", "systems"}


def test_diff_ignores_comments_and_layout_but_shows_changes():
    assert unified_diff(DEFAULT_TEXT, DEFAULT_TEXT + "\n# a comment\n") == ""
    diff = unified_diff(DEFAULT_TEXT, DEFAULT_TEXT.replace("out_of_order_hold: 5m", "out_of_order_hold: 10m"))
    assert "-  out_of_order_hold: 5m" in diff
    assert "+  out_of_order_hold: 10m" in diff


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("60s", 60), ("5m", 300), ("4h", 14400), ("3d", 259200)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


@pytest.mark.parametrize("bad", ["", "5", "five minutes", "-1s", None, [1]])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)
