"""Supplier data, normalized with the field's own libraries. Pure: no I/O.

Names: unicode NFKC, whitespace, and a matching key without legal form
(cleanco), case or punctuation. Countries: ISO 3166-1 alpha-2 (pycountry).
Identifiers: compacted and validated with their check digits by
python-stdnum (EU and other VAT numbers, US EIN, GB VAT, CH UID, LEI, IBAN,
BIC; GLN as a GS1 13-digit number; DUNS by format, stdnum has no DUNS
module). Phones: E.164 (phonenumbers). Postal codes: case and spacing by
country. Every change is a :class:`Correction`; every value that cannot be
made valid is a :class:`Finding` — never a silent drop.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cleanco
import phonenumbers
import pycountry
from stdnum import bic as stdnum_bic
from stdnum import ean, iban, lei
from stdnum.exceptions import ValidationError
from stdnum.util import get_cc_module

from libs.runtime.caches import BytesBoundedCache

if TYPE_CHECKING:  # python-stdnum declares its module protocol for type checkers only
    from stdnum.util import NumberValidationModule

_SPACES = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[^\w\s]")
# Strong identifiers: one of them equal means the same legal entity (or the same bank account).
STRONG_SCHEMES = ("vat", "ein", "uid", "lei", "duns", "gln", "iban", "tax")


@dataclass(frozen=True, slots=True)
class Correction:
    field: str
    original: str
    normalized: str
    rule: str


@dataclass(frozen=True, slots=True)
class Finding:
    field: str
    value: str
    problem: str


@dataclass(frozen=True, slots=True)
class Identifier:
    scheme: str  # as given: eu_vat, de_vat, us_ein, gb_vat, ch_uid, lei, duns, gln, ...
    value: str
    country: str = ""


@dataclass(frozen=True, slots=True)
class Address:
    lines: tuple[str, ...] = ()
    locality: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass(frozen=True, slots=True)
class BankAccount:
    iban: str
    bic: str = ""
    holder_name: str = ""


@dataclass(frozen=True, slots=True)
class Contact:
    name: str = ""
    email: str = ""
    phone: str = ""
    role: str = ""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A supplier as one system holds it."""

    source_system: str
    local_id: str
    legal_name: str
    country: str = ""
    identifiers: tuple[Identifier, ...] = ()
    addresses: tuple[Address, ...] = ()
    contacts: tuple[Contact, ...] = ()
    bank_accounts: tuple[BankAccount, ...] = ()
    payment_terms: str = ""
    source_version: int = 0


@dataclass(frozen=True, slots=True)
class NormalizedRecord:
    record: SourceRecord  # the record with every value normalized (invalid ones left as given)
    name_key: str  # legal form, case, punctuation and accents removed: what names are compared on
    strong_keys: frozenset[tuple[str, str]]  # (family, compact value) of every *valid* strong identifier
    corrections: tuple[Correction, ...] = ()
    findings: tuple[Finding, ...] = field(default=())

    @property
    def tax_keys(self) -> dict[str, str]:
        """Family -> value of the legal-entity identifiers (not bank accounts)."""
        return {family: value for family, value in self.strong_keys if family not in ("iban",)}


def tidy_text(value: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", value)).strip()


# Names repeat (the same supplier from several systems, the same query again): memoized within a byte budget.
_NAME_KEYS: BytesBoundedCache[str, str] = BytesBoundedCache(max_bytes=16 * 1024 * 1024, max_entry_bytes=4096)


def name_key(name: str) -> str:
    """``ACME Industrial Supply GmbH`` and ``Acme Industrial Supply G.m.b.H.`` share one key."""
    return _NAME_KEYS.get(name, _name_key)


def _name_key(name: str) -> str:
    base = cleanco.basename(tidy_text(name)) or tidy_text(name)
    folded = unicodedata.normalize("NFKD", base.casefold())
    without_accents = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", without_accents)).strip()


@functools.lru_cache(maxsize=1024)
def country_code(value: str) -> str | None:
    """ISO 3166-1 alpha-2 for a code or name (``DE``, ``DEU``, ``Germany``), None if unknown."""
    if not value.strip():
        return None
    try:
        return pycountry.countries.lookup(value.strip()).alpha_2
    except LookupError:
        return None


def _identifier_module(scheme: str, country: str) -> tuple[str, NumberValidationModule] | None:
    """The python-stdnum module for a scheme: ``eu_vat``, ``vat`` (+ country), ``<cc>_<name>``, ``lei``, ..."""
    scheme = scheme.lower()
    if scheme in ("eu_vat", "vat"):
        if scheme == "eu_vat" or not country:
            from stdnum.eu import vat

            return "vat", vat
        module = get_cc_module(country.lower(), "vat")
        return None if module is None else ("vat", module)
    if scheme == "lei":
        return "lei", lei
    if scheme == "iban":
        return "iban", iban
    if scheme == "gln":
        return "gln", ean
    if "_" in scheme:
        cc, name = scheme.split("_", 1)
        module = get_cc_module(cc, name)
        if module is not None:
            family = "vat" if name == "vat" else name
            return family, module
    return None


def normalize_identifier(identifier: Identifier, country: str) -> tuple[tuple[str, str] | None, str | None, str]:
    """(strong key, problem, normalized value). The key is None when the identifier is invalid."""
    raw = identifier.value.strip()
    scheme = identifier.scheme.lower().strip()
    if scheme == "duns":
        digits = re.sub(r"[\s.-]", "", raw)
        if re.fullmatch(r"\d{9}", digits):
            return ("duns", digits), None, digits
        return None, "a DUNS number is 9 digits", raw
    found = _identifier_module(scheme, identifier.country or country)
    if found is None:
        return None, f"unknown identifier scheme {identifier.scheme!r}", raw
    family, module = found
    try:
        compact = module.compact(raw)
        if family == "vat" and scheme in ("vat",) and country and not compact[:2].isalpha():
            compact = country.upper() + compact
        if family == "gln" and len(re.sub(r"\D", "", compact)) != 13:
            return None, "a GLN is 13 digits", raw
        module.validate(compact)
    except ValidationError as error:
        return None, f"invalid {identifier.scheme}: {error}", raw
    except Exception as error:  # stdnum raises a few plain errors on odd input
        return None, f"invalid {identifier.scheme}: {error}", raw
    if family == "vat" and not compact[:2].isalpha():
        # A national VAT number without its country prefix still names one entity per country.
        compact = (identifier.country or country).upper() + compact
    return (family, compact.upper()), None, compact.upper()


_POSTAL_FORMATS = {
    "US": (re.compile(r"^\d{5}(-\d{4})?$"), None),
    "DE": (re.compile(r"^\d{5}$"), None),
    "FR": (re.compile(r"^\d{5}$"), None),
    "NL": (re.compile(r"^\d{4} [A-Z]{2}$"), lambda v: re.sub(r"^(\d{4})\s*([A-Z]{2})$", r"\1 \2", v)),
    "GB": (re.compile(r"^[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}$"), lambda v: re.sub(r"\s*(\d[A-Z]{2})$", r" \1", v)),
    "CA": (re.compile(r"^[A-Z]\d[A-Z] \d[A-Z]\d$"), lambda v: re.sub(r"^(\w{3})\s*(\w{3})$", r"\1 \2", v)),
    "CH": (re.compile(r"^\d{4}$"), None),
    "AT": (re.compile(r"^\d{4}$"), None),
    "BE": (re.compile(r"^\d{4}$"), None),
}


def normalize_postal_code(value: str, country: str) -> tuple[str, str | None]:
    cleaned = _SPACES.sub(" ", value.strip().upper())
    rule = _POSTAL_FORMATS.get(country)
    if rule is None or not cleaned:
        return cleaned, None
    pattern, reformat = rule
    if reformat is not None:
        cleaned = reformat(cleaned)
    return cleaned, None if pattern.match(cleaned) else f"not a {country} postal code"


def normalize_phone(value: str, country: str) -> tuple[str, str | None]:
    try:
        number = phonenumbers.parse(value, country or None)
    except phonenumbers.NumberParseException as error:
        return value, f"not a phone number: {error}"
    if not phonenumbers.is_valid_number(number):
        return value, "not a valid phone number for its country"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


def normalize(record: SourceRecord) -> NormalizedRecord:
    corrections: list[Correction] = []
    findings: list[Finding] = []

    def changed(path: str, before: str, after: str, rule: str) -> str:
        if before != after:
            corrections.append(Correction(path, before, after, rule))
        return after

    legal_name = changed("legal_name", record.legal_name, tidy_text(record.legal_name), "unicode_nfkc_whitespace")
    if not legal_name:
        findings.append(Finding("legal_name", record.legal_name, "a supplier needs a legal name"))
    country = ""
    if record.country:
        code = country_code(record.country)
        if code is None:
            findings.append(Finding("country", record.country, "not an ISO 3166 country"))
        else:
            country = changed("country", record.country, code, "iso3166_alpha2")

    strong: set[tuple[str, str]] = set()
    identifiers = []
    for index, identifier in enumerate(record.identifiers):
        key, problem, value = normalize_identifier(identifier, country)
        path = f"identifiers[{index}]"
        if problem is not None:
            findings.append(Finding(path, identifier.value, problem))
            identifiers.append(identifier)
            continue
        changed(path, identifier.value, value, f"stdnum_{identifier.scheme.lower()}")
        identifiers.append(Identifier(identifier.scheme.lower(), value, identifier.country or country))
        assert key is not None  # a valid identifier has a strong key
        strong.add(key)

    addresses = []
    for index, address in enumerate(record.addresses):
        path = f"addresses[{index}]"
        address_country = country
        if address.country:
            address_country = country_code(address.country) or ""
            if not address_country:
                findings.append(Finding(f"{path}.country", address.country, "not an ISO 3166 country"))
        postal, problem = normalize_postal_code(address.postal_code, address_country)
        if problem:
            findings.append(Finding(f"{path}.postal_code", address.postal_code, problem))
        changed(f"{path}.postal_code", address.postal_code, postal, "postal_code_format")
        lines = tuple(tidy_text(line) for line in address.lines if tidy_text(line))
        addresses.append(
            Address(
                lines,
                tidy_text(address.locality),
                tidy_text(address.region),
                postal,
                address_country or address.country,
            )
        )

    contacts = []
    for index, contact in enumerate(record.contacts):
        phone = contact.phone
        if phone:
            phone, problem = normalize_phone(contact.phone, country)
            if problem:
                findings.append(Finding(f"contacts[{index}].phone", contact.phone, problem))
            else:
                changed(f"contacts[{index}].phone", contact.phone, phone, "e164")
        contacts.append(Contact(tidy_text(contact.name), contact.email.strip().lower(), phone, contact.role))

    accounts = []
    for index, account in enumerate(record.bank_accounts):
        key, problem, value = normalize_identifier(Identifier("iban", account.iban), country)
        if problem:
            findings.append(Finding(f"bank_accounts[{index}].iban", account.iban, problem))
            value = account.iban
        else:
            changed(f"bank_accounts[{index}].iban", account.iban, value, "stdnum_iban")
            assert key is not None  # a valid IBAN has a strong key
            strong.add(key)
        bic_value = account.bic.strip().upper().replace(" ", "")
        if bic_value:
            try:
                stdnum_bic.validate(bic_value)
            except ValidationError as error:
                findings.append(Finding(f"bank_accounts[{index}].bic", account.bic, f"invalid BIC: {error}"))
        accounts.append(BankAccount(value, bic_value, tidy_text(account.holder_name)))

    normalized = SourceRecord(
        source_system=record.source_system,
        local_id=record.local_id,
        legal_name=legal_name,
        country=country,
        identifiers=tuple(identifiers),
        addresses=tuple(addresses),
        contacts=tuple(contacts),
        bank_accounts=tuple(accounts),
        payment_terms=record.payment_terms.strip(),
        source_version=record.source_version,
    )
    return NormalizedRecord(normalized, name_key(legal_name), frozenset(strong), tuple(corrections), tuple(findings))
