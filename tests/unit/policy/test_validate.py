"""Validation lists every problem at once, each with its path; the examples shipped are valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from libs.policy.validate import check

ROOT = Path(__file__).resolve().parents[3]
POLICIES = sorted((ROOT / "deploy" / "policy").glob("*.yaml"))
DEFAULT = (ROOT / "deploy" / "policy" / "default.yaml").read_text()


def mutated(change) -> str:
    data = yaml.safe_load(DEFAULT)
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


def paths(text: str) -> list[str]:
    document, problems = check(text)
    assert document is None
    return [p.path for p in problems]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_shipped_policies_are_valid(policy):
    document, problems = check(policy.read_text())
    assert problems == []
    assert document is not None


def test_at_least_three_example_policies_ship():
    assert {p.name for p in POLICIES} >= {"default.yaml", "multi-business-unit.yaml", "strict-finance.yaml"}


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (lambda d: d.update(colour="blue"), "colour", "unknown section"),
        (lambda d: d["systems"]["erp"].update(owner="me"), "systems.erp.owner", "unknown key"),
        (
            lambda d: d["ownership"]["purchase_order"].update(writers=["procurement", "sap"]),
            "ownership.purchase_order.writers[1]",
            "unknown system 'sap'",
        ),
        (lambda d: d["ownership"].pop("goods_receipt"), "ownership.goods_receipt", "has no owner"),
        (
            lambda d: d["ownership"]["purchase_order"].pop("system_of_record"),
            "ownership.purchase_order.system_of_record",
            "is required",
        ),
        (
            lambda d: d["ownership"].update(purchse_order={"system_of_record": "procurement"}),
            "ownership.purchse_order",
            "unknown object type",
        ),
        (
            lambda d: d["ownership"]["supplier"]["fields"].update(bank_acounts={"system_of_record": "erp"}),
            "ownership.supplier.fields.bank_acounts",
            "has no field",
        ),
        (
            lambda d: d["ownership"]["purchase_order"].update(writers=["erp"]),
            "ownership.purchase_order.writers",
            "must include the system of record",
        ),
        (
            lambda d: d["ownership"]["purchase_order"].update(sync={"from": "erp", "to": ["procurement"]}),
            "ownership.purchase_order.sync.from",
            "flows from its system of record",
        ),
        (
            lambda d: d["ownership"]["purchase_order"].update(conflict="coin_toss"),
            "ownership.purchase_order.conflict",
            "not a rule",
        ),
        (
            lambda d: d["tolerances"]["default"]["price"].update(upper_percent=150),
            "tolerances.default.price.upper_percent",
            "between 0 and 100",
        ),
        (
            lambda d: d["tolerances"]["default"]["price"].update(upper_absolute=-1),
            "tolerances.default.price.upper_absolute",
            "must not be negative",
        ),
        (
            lambda d: d["tolerances"]["default"].update(over_receipt_percent=101),
            "tolerances.default.over_receipt_percent",
            "between 0 and 100",
        ),
        (lambda d: d["exceptions"]["routes"][0].pop("team"), "exceptions.routes[0].team", "names no team"),
        (lambda d: d["exceptions"]["routes"][0].update(team="nobody"), "exceptions.routes[0].team", "unknown team"),
        (
            lambda d: d["exceptions"]["routes"][1].update(escalate_to="integration-team", escalate_after=None),
            "exceptions.routes[1].escalate_after",
            "is required with escalate_to",
        ),
        (
            lambda d: d["exceptions"]["routes"].append(
                {"match": {"type": ["price_variance"]}, "team": "procurement-ops"}
            ),
            "exceptions.routes[7]",
            "overlaps exceptions.routes[4]",
        ),
        (
            lambda d: d["exceptions"]["routes"][2]["match"].update(site=["DC-MARS"]),
            "exceptions.routes[2].match.site",
            "unknown site",
        ),
        (lambda d: d["exceptions"].update(default_team="ghosts"), "exceptions.default_team", "unknown team"),
        (lambda d: d["sla"].update(po_acknowledgement={"high": "60s"}), "sla.po_acknowledgement", "unknown workflow"),
        (lambda d: d["sla"]["po_acknowledgment"].update(high="soon"), "sla.po_acknowledgment.high", "not a duration"),
        (
            lambda d: d["retries"]["default"].update(max_deliveries=0),
            "retries.default.max_deliveries",
            "between 1 and 100",
        ),
        (lambda d: d["ordering"].update(out_of_order_hold="0s"), "ordering.out_of_order_hold", "longer than zero"),
        (lambda d: d["systems"]["erp"].update(kind="mainframe"), "systems.erp.kind", "not a kind"),
        (lambda d: d.update(administrators=["root"]), "administrators[0]", "unknown system"),
        (lambda d: d.update(format=2), "format", "not supported"),
    ],
)
def test_each_problem_names_its_path(change, path, words):
    document, problems = check(mutated(change))
    assert document is None
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}: {problems}"
    assert words in matching[0].message


def test_every_problem_is_listed_at_once():
    def many(d):
        d["ownership"]["purchase_order"]["writers"] = ["procurement", "sap"]
        d["tolerances"]["default"]["price"]["upper_percent"] = 150
        d["exceptions"]["routes"][0].pop("team")
        d["systems"]["erp"]["owner"] = "me"

    assert set(paths(mutated(many))) >= {
        "ownership.purchase_order.writers[1]",
        "tolerances.default.price.upper_percent",
        "exceptions.routes[0].team",
        "systems.erp.owner",
    }


def test_two_owners_for_one_field_written_twice_in_yaml():
    text = DEFAULT.replace(
        "      payment_terms: {system_of_record: erp, writers: [erp], sync: {from: erp, to: [procurement]}}",
        "      payment_terms: {system_of_record: erp, writers: [erp], sync: {from: erp, to: [procurement]}}\n"
        "      payment_terms: {system_of_record: procurement}",
    )
    problems = check(text)[1]
    assert any(p.path == "ownership.supplier.fields.payment_terms" and "appears twice" in p.message for p in problems)


def test_two_owners_for_one_field_under_two_spellings():
    def spellings(d):
        d["ownership"]["purchase_order"]["fields"] = {
            "lines[].unit_price": {"system_of_record": "procurement"},
            "lines.unit_price": {"system_of_record": "erp"},
        }

    problems = check(mutated(spellings))[1]
    assert any("two owners for one field" in p.message for p in problems)


def test_not_yaml_and_empty_documents_are_problems_not_crashes():
    assert check("ownership: [unclosed")[1][0].path == "(document)"
    assert check("")[1][0].message == "is empty"
    assert check("- a list")[1][0].message.startswith("must be a mapping")


def test_docs_explain_every_key_of_the_format():
    from pydantic import BaseModel

    from libs.policy import document

    docs = (ROOT / "docs" / "policy.md").read_text()
    models = [m for m in vars(document).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    keys = {field.alias or name for model in models for name, field in model.model_fields.items()}
    import re

    def documented(key: str) -> bool:  # as a key of a backticked path in a table row: `a.key.b` or `key`
        return re.search(rf"^\|\s*`(?:[^`|]*\.)?{re.escape(key)}(?:[.`\[][^`|]*)?`", docs, re.MULTILINE) is not None

    missing = sorted(key for key in keys if not documented(key))
    assert missing == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("format: &f [*f]\n", "refers to itself"),
        ("format: 1\nsystems: &s {x: *s}\n", "refers to itself"),
        ("a: " + "{a: " * 2000 + "1" + "}" * 2000, "nest"),
        ("a: " + "[" * 100 + "]" * 100, "nest"),
    ],
)
def test_documents_that_cannot_be_read_safely_are_one_problem_not_a_crash(text, says):
    from libs.policy.yamlsource import load

    data, problems = load(text)
    assert data is None
    [problem] = problems
    assert says in problem.message


def test_an_alias_bomb_is_refused_before_it_expands():
    from libs.policy.yamlsource import load

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    data, problems = load("\n".join(lines))
    assert data is None
    assert "expands to more than" in problems[0].message


def test_a_document_with_thousands_of_problems_lists_a_readable_number():
    from libs.policy.yamlsource import MAX_PROBLEMS, load

    _, problems = load("\n".join("x: 1" for _ in range(5_000)))
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].message == f"and {4_999 - MAX_PROBLEMS} more"


def test_a_value_python_will_not_read_is_a_problem_not_a_crash():
    from libs.policy.yamlsource import load

    data, [problem] = load("format: " + "9" * 6_000)
    assert data is None
    assert "cannot be read" in problem.message


def test_routes_may_name_exactly_the_exception_types_of_the_contract():
    from libs.policy import catalog
    from syncgov.exception.v1 import exception_pb2

    names = {
        value.name.removeprefix("EXCEPTION_TYPE_").lower() for value in exception_pb2.ExceptionType.DESCRIPTOR.values
    }
    assert names - {"unspecified"} == catalog.EXCEPTION_TYPES
