"""Contract messages <-> the domain's dataclasses, both ways."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar, cast

from services.supplier_normalization import domain
from services.supplier_normalization.matching import Candidate, Outcome
from services.supplier_normalization.normalize import (
    Address,
    BankAccount,
    Contact,
    Correction,
    Finding,
    Identifier,
    SourceRecord,
)
from syncgov.common.v1 import types_pb2
from syncgov.supplier.v1 import supplier_pb2

OUTCOMES = {
    Outcome.NEW: supplier_pb2.MATCH_OUTCOME_NEW,
    Outcome.MERGED: supplier_pb2.MATCH_OUTCOME_MERGED,
    Outcome.SUSPECTED: supplier_pb2.MATCH_OUTCOME_SUSPECTED,
}
STATUSES = {
    domain.ACTIVE: supplier_pb2.SUPPLIER_STATUS_ACTIVE,
    domain.BLOCKED: supplier_pb2.SUPPLIER_STATUS_BLOCKED,
    domain.INACTIVE: supplier_pb2.SUPPLIER_STATUS_INACTIVE,
    domain.MERGED: supplier_pb2.SUPPLIER_STATUS_MERGED,
}
STATUS_NAMES = {value: key for key, value in STATUSES.items()}

T = TypeVar("T")


def record_from_proto(record: supplier_pb2.SupplierRecord) -> SourceRecord:
    country = next((a.country_code for a in record.addresses if a.country_code), "")
    return SourceRecord(
        source_system=record.source_system,
        local_id=record.local_id,
        legal_name=record.legal_name,
        country=country,
        identifiers=tuple(Identifier(t.scheme, t.value, t.country_code) for t in record.tax_ids),
        addresses=tuple(
            Address(tuple(a.lines), a.locality, a.region, a.postal_code, a.country_code) for a in record.addresses
        ),
        contacts=tuple(Contact(c.name, c.email, c.phone, c.role) for c in record.contacts),
        bank_accounts=tuple(BankAccount(b.iban, b.bic, b.holder_name) for b in record.bank_accounts),
        payment_terms=record.payment_terms,
        source_version=record.source_version,
    )


def _addresses(addresses: Iterable[Address]) -> list[types_pb2.PostalAddress]:
    return [
        types_pb2.PostalAddress(
            lines=a.lines, locality=a.locality, region=a.region, postal_code=a.postal_code, country_code=a.country
        )
        for a in addresses
    ]


def record_to_proto(record: SourceRecord) -> supplier_pb2.SupplierRecord:
    return supplier_pb2.SupplierRecord(
        source_system=record.source_system,
        local_id=record.local_id,
        legal_name=record.legal_name,
        tax_ids=[
            supplier_pb2.TaxIdentifier(scheme=i.scheme, value=i.value, country_code=i.country)
            for i in record.identifiers
        ],
        addresses=_addresses(record.addresses),
        contacts=[
            supplier_pb2.Contact(name=c.name, email=c.email, phone=c.phone, role=c.role) for c in record.contacts
        ],
        bank_accounts=[
            supplier_pb2.BankAccount(iban=b.iban, bic=b.bic, holder_name=b.holder_name) for b in record.bank_accounts
        ],
        payment_terms=record.payment_terms,
        source_version=record.source_version,
    )


def candidate_to_proto(candidate: Candidate) -> supplier_pb2.DuplicateCandidate:
    reasons = [*candidate.reasons, *(f"{name}={score:.1f}" for name, score in candidate.field_scores)]
    return supplier_pb2.DuplicateCandidate(supplier_id=candidate.golden_id, score=candidate.score, reasons=reasons)


def corrections_to_proto(corrections: tuple[Correction, ...]) -> list[supplier_pb2.Correction]:
    return [
        supplier_pb2.Correction(field=c.field, original=c.original, normalized=c.normalized, rule=c.rule)
        for c in corrections
    ]


def findings_to_proto(findings: tuple[Finding, ...]) -> list[supplier_pb2.Finding]:
    return [supplier_pb2.Finding(field=f.field, value=f.value, problem=f.problem) for f in findings]


def _parts(values: Mapping[str, object], name: str, _kind: type[T]) -> tuple[T, ...]:
    """A golden field made of source-record parts: ``GoldenView.values`` holds each field as the source record
    does (a tuple of ``_kind``), keyed by name, so the type is the field's and this is a cast and nothing more."""
    return cast(tuple[T, ...], values.get(name, ()))


def golden_to_proto(view: domain.GoldenView, policy_revision: int) -> supplier_pb2.Supplier:
    values = view.values
    supplier = supplier_pb2.Supplier(
        supplier_id=view.golden_id,
        legal_name=str(values.get("legal_name", "")),
        tax_ids=[
            supplier_pb2.TaxIdentifier(scheme=i.scheme, value=i.value, country_code=i.country)
            for i in _parts(values, "tax_ids", Identifier)
        ],
        addresses=_addresses(_parts(values, "addresses", Address)),
        contacts=[
            supplier_pb2.Contact(name=c.name, email=c.email, phone=c.phone, role=c.role)
            for c in _parts(values, "contacts", Contact)
        ],
        bank_accounts=[
            supplier_pb2.BankAccount(iban=b.iban, bic=b.bic, holder_name=b.holder_name)
            for b in _parts(values, "bank_accounts", BankAccount)
        ],
        payment_terms=str(values.get("payment_terms", "")),
        status=STATUSES[view.status],
        version=view.version,
        provenance=[
            supplier_pb2.FieldProvenance(
                field=p.field,
                source_system=p.source_system,
                policy_revision=policy_revision,
                local_id=p.local_id,
                from_owner=p.owner,
            )
            for p in view.provenance
        ],
        cross_references=[supplier_pb2.CrossReference(system=s, local_id=local) for s, local in view.members],
    )
    return supplier
