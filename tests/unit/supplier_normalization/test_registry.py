"""Normalization, matching and golden records, on the cases DESIGN §5.1 and the issue name."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.policy.engine import Policy
from services.supplier_normalization.domain import SupplierRegistry
from services.supplier_normalization.matching import Outcome
from services.supplier_normalization.normalize import (
    Address,
    BankAccount,
    Contact,
    Identifier,
    SourceRecord,
    normalize,
)

ROOT = Path(__file__).resolve().parents[3]
POLICY = Policy.from_text((ROOT / "deploy" / "policy" / "default.yaml").read_text(), 1)


def owner_of(field: str) -> str:
    return POLICY.ownership_of("supplier", field).system_of_record


@pytest.fixture
def registry() -> SupplierRegistry:
    return SupplierRegistry(owner_of)


def supplier(system: str, local_id: str, name: str, *, vat: str = "", country: str = "DE", **extra) -> SourceRecord:
    identifiers = (Identifier("vat", vat),) if vat else ()
    return SourceRecord(system, local_id, name, country, identifiers, **extra)


@pytest.mark.parametrize("written", ["DE 136 695 976", "de136695976", "DE-136.695.976", "136695976"])
def test_a_vat_number_written_any_way_compacts_to_one_key(written):
    assert normalize(supplier("erp", "1", "Acme GmbH", vat=written)).strong_keys == {("vat", "DE136695976")}


def test_the_same_vat_number_written_four_ways_matches(registry):
    ways = ["DE 136 695 976", "de136695976", "DE-136.695.976", "136695976"]
    placed = [registry.submit(supplier(f"sys-{i}", str(i), f"Company {i} Holding", vat=v)) for i, v in enumerate(ways)]
    assert len({p.golden_id for p in placed}) == 1
    assert [p.outcome for p in placed] == [Outcome.NEW, Outcome.MERGED, Outcome.MERGED, Outcome.MERGED]


def test_legal_form_spellings_with_the_same_tax_id_merge(registry):
    first = registry.submit(supplier("procurement", "P-1", "ACME Industrial Supply GmbH", vat="DE136695976"))
    second = registry.submit(supplier("erp", "100234", "Acme Industrial Supply G.m.b.H.", vat="DE 136695976"))
    assert second.golden_id == first.golden_id
    assert registry.golden_of("erp", "100234") == registry.golden_of("procurement", "P-1")


def test_similar_names_with_different_valid_tax_ids_stay_apart(registry):
    first = registry.submit(supplier("procurement", "P-1", "Acme Industrial Supply GmbH", vat="DE136695976"))
    other = registry.submit(supplier("procurement", "P-2", "Acme Industrial Supplies GmbH", vat="DE129273398"))
    assert other.golden_id != first.golden_id
    assert other.outcome is Outcome.NEW
    assert other.suspected == ()


def test_an_invalid_check_digit_is_a_finding_not_a_drop(registry):
    placed = registry.submit(supplier("erp", "9", "Broken Digits AG", vat="DE136695977"))
    [finding] = placed.normalized.findings
    assert finding.field == "identifiers[0]"
    assert "check digit" in finding.problem
    assert placed.normalized.record.identifiers[0].value == "DE136695977"
    assert placed.normalized.strong_keys == frozenset()


@pytest.mark.parametrize(
    ("identifier", "valid"),
    [
        (Identifier("us_ein", "04-2103594"), True),
        (Identifier("gb_vat", "GB 980 7806 84"), True),
        (Identifier("ch_uid", "CHE-100.155.212"), True),
        (Identifier("lei", "529900T8BM49AURSDO55"), True),
        (Identifier("lei", "529900T8BM49AURSDO56"), False),
        (Identifier("gln", "4006381333931"), True),
        (Identifier("gln", "4006381333932"), False),
        (Identifier("duns", "15-048-3782"), True),
        (Identifier("duns", "1504837"), False),
        (Identifier("xx_nonsense", "1"), False),
    ],
)
def test_identifiers_are_checked_by_python_stdnum(identifier, valid):
    normalized = normalize(SourceRecord("erp", "1", "Some Company", "US", (identifier,)))
    assert bool(normalized.strong_keys) is valid
    assert bool(normalized.findings) is not valid


def test_corrections_are_recorded_with_their_rule():
    normalized = normalize(
        SourceRecord(
            "erp", "1", "  ACME   Supply  GmbH ", "Germany", (Identifier("vat", "de 136 695 976"),),
            addresses=(Address(("Hafenstrasse 1",), "Hamburg", "", "20457"),),
            contacts=(Contact("Jo", "JO@ACME.DE", "040 1234567"),),
            bank_accounts=(BankAccount("de89 3704 0044 0532 0130 00", "COBADEFFXXX"),),
        )
    )  # fmt: skip
    rules = {c.field: (c.original, c.normalized, c.rule) for c in normalized.corrections}
    assert rules["legal_name"] == ("  ACME   Supply  GmbH ", "ACME Supply GmbH", "unicode_nfkc_whitespace")
    assert rules["country"] == ("Germany", "DE", "iso3166_alpha2")
    assert rules["identifiers[0]"][1] == "DE136695976"
    assert rules["contacts[0].phone"] == ("040 1234567", "+49401234567", "e164")
    assert rules["bank_accounts[0].iban"][1] == "DE89370400440532013000"
    assert normalized.findings == ()


def test_postal_codes_and_phones_that_cannot_be_right_are_findings():
    normalized = normalize(
        SourceRecord("erp", "1", "Acme Ltd", "GB", addresses=(Address(("1 High St",), "London", "", "sw1a1aa"),),
                     contacts=(Contact(phone="12"),))
    )  # fmt: skip
    assert normalized.record.addresses[0].postal_code == "SW1A 1AA"
    assert [f.field for f in normalized.findings] == ["contacts[0].phone"]


def test_field_ownership_decides_which_bank_account_wins(registry):
    procurement = supplier("procurement", "P-1", "Acme Industrial Supply GmbH", vat="DE136695976",
                           bank_accounts=(BankAccount("DE89370400440532013000"),), payment_terms="NET60")  # fmt: skip
    erp = supplier("erp", "100234", "ACME INDUSTRIAL SUPPLY", vat="DE136695976",
                   bank_accounts=(BankAccount("DE02120300000000202051"),), payment_terms="NET30")  # fmt: skip
    golden = registry.submit(procurement).golden_id
    registry.submit(erp)
    view = registry.view(golden)
    assert view.values["bank_accounts"][0].iban == "DE02120300000000202051"
    assert view.values["payment_terms"] == "NET30"
    assert view.values["legal_name"] == "Acme Industrial Supply GmbH"
    provenance = {p.field: (p.source_system, p.local_id, p.owner) for p in view.provenance}
    assert provenance["bank_accounts"] == ("erp", "100234", True)
    assert provenance["legal_name"] == ("procurement", "P-1", True)


def test_a_value_only_another_system_has_fills_in_and_says_so(registry):
    golden = registry.submit(supplier("erp", "1", "Acme GmbH", vat="DE136695976")).golden_id
    view = registry.view(golden)
    assert ("legal_name", "erp", "1", False) in {
        (p.field, p.source_system, p.local_id, p.owner) for p in view.provenance
    }


def test_grey_zone_is_suspected_and_a_decision_is_not_asked_again(registry):
    address = (Address(("Industriestrasse 5",), "Köln", "", "50667"),)
    first = registry.submit(supplier("procurement", "P-1", "Rheinland Logistik Partner GmbH", addresses=address))
    maybe = supplier(
        "erp", "E-1", "Rheinland Logistic Partners", addresses=(Address(("Industriestr. 7",), "Köln", "", "50667"),)
    )
    second = registry.submit(maybe)
    assert second.outcome is Outcome.SUSPECTED
    assert [c.golden_id for c in second.suspected] == [first.golden_id]
    assert dict(second.suspected[0].field_scores)["name"] > 80
    registry.keep_apart(second.golden_id, first.golden_id)
    again = registry.submit(maybe)
    assert again.suspected == ()
    assert again.golden_id == second.golden_id


def test_a_merge_decision_joins_the_records_and_is_remembered(registry):
    first = registry.submit(supplier("procurement", "P-1", "Bavaria Tools GmbH"))
    second = registry.submit(supplier("erp", "E-1", "Bavaria Werkzeuge"))  # the same firm, in German
    assert second.golden_id != first.golden_id
    registry.merge(first.golden_id, second.golden_id)
    assert registry.golden_of("erp", "E-1") == first.golden_id
    assert registry.index.decision(first.golden_id, second.golden_id) is True
    assert len(registry) == 1
    assert registry.submit(supplier("erp", "E-1", "Bavaria Werkzeuge")).golden_id == first.golden_id


def test_a_repeated_upsert_is_idempotent(registry):
    record = supplier("procurement", "P-1", "Acme Industrial Supply GmbH", vat="DE136695976")
    first = registry.submit(record)
    again = registry.submit(record)
    assert again.golden_id == first.golden_id
    assert not again.changed
    assert registry.view(first.golden_id).version == 1
    assert len(registry) == 1
