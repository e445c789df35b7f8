"""Validation a person can act on: every problem in a policy document, each with its path.

Shape first (pydantic, per section, so one broken section does not hide the
problems of the others), then meaning: systems that exist, one owner per
field, values in range, routes that name a team and do not overlap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from itertools import combinations
from typing import Any

from pydantic import TypeAdapter, ValidationError

from libs.policy import catalog
from libs.policy.document import (
    REQUIRED_SECTIONS,
    SECTIONS,
    Exceptions,
    ObjectRule,
    PolicyDocument,
    Receiving,
    Retries,
    Route,
    System,
    Tolerance,
    Tolerances,
)
from libs.policy.durations import parse_duration
from libs.policy.problems import Problem
from libs.policy.yamlsource import load

SUPPORTED_FORMAT = 1
_SYSTEM_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_SEVERITY_LIST = ", ".join(catalog.SEVERITIES)
# A conversion factor is held like a quantity an ERP holds (libs/runtime/bounds.py): 13 integer digits, 6 decimals.
MAX_FACTOR_INTEGER_DIGITS = 13
MAX_FACTOR_DECIMALS = 6
MAX_UNIT_CONVERSIONS = 500  # a distributor's conversion table is dozens of rows; thousands is a generated mistake
MAX_UNIT_CODE = 16
_UNIT_CODE = re.compile(r"[!-~]+")  # printable ASCII without spaces: upper-casing it is plain and unambiguous
_FACTOR_LIMIT = Decimal(10) ** MAX_FACTOR_INTEGER_DIGITS
_FACTOR_STEP = Decimal(1).scaleb(-MAX_FACTOR_DECIMALS)
# tolerances.*.small_difference: an amount in the invoice's currency with at most 6 decimals (like every amount an
# ERP holds), and bounded: a million units is a generous small difference even in VND or IDR, and beyond it the
# totals of an invoice would hardly be checked at all. 13 significant digits at most, so YAML's float reading of
# an unquoted 1.00 gives back exactly what was written.
MAX_SMALL_DIFFERENCE = Decimal(1_000_000)
MAX_SMALL_DIFFERENCE_DECIMALS = 6
_SMALL_DIFFERENCE_STEP = Decimal(1).scaleb(-MAX_SMALL_DIFFERENCE_DECIMALS)
_ADAPTERS: dict[str, TypeAdapter[Any]] = {name: TypeAdapter(kind) for name, kind in SECTIONS.items()}


def check(text: str) -> tuple[PolicyDocument | None, list[Problem]]:
    """The parsed document when it is valid, and every problem found (empty when valid)."""
    data, problems = load(text)
    if data is None:
        return None, problems
    if not isinstance(data, dict):
        return None, [*problems, Problem("(document)", "must be a mapping of sections (systems, ownership, ...)")]
    sections: dict[str, Any] = {}
    for key in data:
        if key not in SECTIONS:
            problems.append(Problem(str(key), f"unknown section; known: {', '.join(SECTIONS)}"))
    for key in REQUIRED_SECTIONS:
        if key not in data:
            problems.append(Problem(key, "is required"))
    for key, adapter in _ADAPTERS.items():
        if key in data:
            try:
                sections[key] = adapter.validate_python(data[key])
            except ValidationError as error:
                problems.extend(_shape_problems(key, error))
    problems.extend(_meaning_problems(sections, data))
    if problems:
        return None, problems
    return PolicyDocument.model_validate(data), []


def _shape_problems(section: str, error: ValidationError) -> Iterable[Problem]:
    for detail in error.errors():
        path = section
        for part in detail["loc"]:
            path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}"
        kind = detail["type"]
        if kind == "extra_forbidden":
            message = "unknown key (see docs/policy.md for the keys of this section)"
        elif kind == "missing":
            message = "is required"
        else:
            message = detail["msg"]
        yield Problem(path, message)


def _declared(raw_systems: Any, key: str) -> set[str] | None:
    """Business units or sites the systems declare, read leniently so a shape problem elsewhere in
    ``systems`` does not hide the problems of the sections that name them."""
    if not isinstance(raw_systems, dict):
        return None
    found: set[str] = set()
    for system in raw_systems.values():
        values = system.get(key, []) if isinstance(system, dict) else []
        found.update(str(v) for v in values if isinstance(values, list))
    return found


def _meaning_problems(sections: dict[str, Any], data: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    if "format" in sections and sections["format"] != SUPPORTED_FORMAT:
        problems.append(
            Problem("format", f"format {sections['format']} is not supported; this syncgov reads {SUPPORTED_FORMAT}")
        )
    systems: dict[str, System] | None = sections.get("systems")
    raw_systems = data.get("systems")
    known_systems = {str(k) for k in raw_systems} if isinstance(raw_systems, dict) else None
    units = _declared(raw_systems, "business_units")
    sites = _declared(raw_systems, "sites")
    if systems is not None:
        problems.extend(_check_systems(systems))
    if "administrators" in sections:
        problems.extend(_unknown_systems("administrators", sections["administrators"], known_systems))
    if "ownership" in sections:
        problems.extend(_check_ownership(sections["ownership"], known_systems))
    if "sla" in sections:
        problems.extend(_check_sla(sections["sla"]))
    if "retries" in sections:
        problems.extend(_check_retries(sections["retries"]))
    if "tolerances" in sections:
        problems.extend(_check_tolerances(sections["tolerances"], units))
    if "exceptions" in sections:
        problems.extend(_check_exceptions(sections["exceptions"], sites, units))
    if "ordering" in sections:
        problems.extend(_duration("ordering.out_of_order_hold", sections["ordering"].out_of_order_hold))
    if "purchase_orders" in sections:
        margin = sections["purchase_orders"].requested_date_past_margin
        problems.extend(_duration("purchase_orders.requested_date_past_margin", margin, positive=False))
    if "receiving" in sections:
        problems.extend(_check_receiving(sections["receiving"]))
    return problems


def _check_systems(systems: dict[str, System]) -> Iterable[Problem]:
    if not systems:
        yield Problem("systems", "declare at least one system")
    for system_id, system in systems.items():
        if not _SYSTEM_ID.match(system_id):
            yield Problem(f"systems.{system_id}", "ids are lowercase letters, digits and '-', starting with a letter")
        if system.kind not in catalog.SYSTEM_KINDS:
            yield Problem(
                f"systems.{system_id}.kind",
                f"{system.kind!r} is not a kind; use one of {', '.join(sorted(catalog.SYSTEM_KINDS))}",
            )


def _unknown_systems(path: str, names: Iterable[str], known: set[str] | None) -> Iterable[Problem]:
    if known is None:
        return
    for index, name in enumerate(names):
        if name not in known:
            yield Problem(f"{path}[{index}]", f"unknown system {name!r}; declare it under systems")


def _check_rule(path: str, rule: Any, known: set[str] | None) -> Iterable[Problem]:
    if known is not None and rule.system_of_record not in known:
        yield Problem(f"{path}.system_of_record", f"unknown system {rule.system_of_record!r}; declare it under systems")
    if rule.writers is not None:
        yield from _unknown_systems(f"{path}.writers", rule.writers, known)
        if not rule.writers:
            yield Problem(f"{path}.writers", "is empty: nobody could write; leave it out to mean the system of record")
        elif rule.system_of_record not in rule.writers:
            yield Problem(f"{path}.writers", f"must include the system of record {rule.system_of_record!r}")
    if rule.sync is not None:
        if known is not None and rule.sync.from_ not in known:
            yield Problem(f"{path}.sync.from", f"unknown system {rule.sync.from_!r}")
        elif rule.sync.from_ != rule.system_of_record:
            yield Problem(
                f"{path}.sync.from",
                f"data flows from its system of record {rule.system_of_record!r}, not from {rule.sync.from_!r}",
            )
        yield from _unknown_systems(f"{path}.sync.to", rule.sync.to, known)


def _check_ownership(ownership: dict[str, ObjectRule], known: set[str] | None) -> Iterable[Problem]:
    for name, governed in catalog.OBJECT_TYPES.items():
        if governed.required and name not in ownership:
            yield Problem(f"ownership.{name}", "has no owner: every object syncgov writes needs a system_of_record")
    for name, rule in ownership.items():
        path = f"ownership.{name}"
        object_type = catalog.OBJECT_TYPES.get(name)
        if object_type is None:
            yield Problem(path, f"unknown object type; known: {', '.join(catalog.OBJECT_TYPES)}")
            continue
        yield from _check_rule(path, rule, known)
        if rule.readers is not None:
            yield from _unknown_systems(f"{path}.readers", rule.readers, known)
        if rule.conflict not in catalog.CONFLICT_RULES:
            yield Problem(
                f"{path}.conflict",
                f"{rule.conflict!r} is not a rule; use one of {', '.join(sorted(catalog.CONFLICT_RULES))}",
            )
        yield from _check_fields(path, object_type, rule, known)


def _check_fields(
    path: str, object_type: catalog.ObjectType, rule: ObjectRule, known: set[str] | None
) -> Iterable[Problem]:
    message = object_type.message
    if message is None:
        if rule.fields:
            yield Problem(f"{path}.fields", f"{object_type.name} is governed as a whole; it has no field rules")
        return
    valid = object_type.field_paths()
    by_plain = {p.replace("[]", ""): p for p in valid}
    owners: dict[str, str] = {}
    for field, field_rule in rule.fields.items():
        field_path = f"{path}.fields.{field}"
        canonical = field if field in valid else by_plain.get(field.replace("[]", ""))
        if canonical is None:
            yield Problem(
                field_path,
                f"{object_type.name} has no field {field!r} (fields follow the contract "
                f"{message.full_name}, e.g. {sorted(valid)[0]})",
            )
            continue
        if canonical in owners:
            yield Problem(
                field_path, f"two owners for one field: {field!r} and {owners[canonical]!r} both name {canonical}"
            )
            continue
        owners[canonical] = field
        yield from _check_rule(field_path, field_rule, known)


def _duration(path: str, text: str, *, positive: bool = True) -> Iterable[Problem]:
    try:
        value = parse_duration(text)
    except ValueError as error:
        yield Problem(path, str(error))
        return
    if positive and value.total_seconds() <= 0:
        yield Problem(path, "must be longer than zero")


def _check_sla(sla: dict[str, dict[str, str]]) -> Iterable[Problem]:
    for workflow, levels in sla.items():
        if workflow not in catalog.WORKFLOWS:
            yield Problem(f"sla.{workflow}", f"unknown workflow; known: {', '.join(sorted(catalog.WORKFLOWS))}")
            continue
        for criticality, within in levels.items():
            path = f"sla.{workflow}.{criticality}"
            if criticality not in catalog.CRITICALITIES:
                yield Problem(path, f"unknown criticality; use one of {', '.join(catalog.CRITICALITIES)}")
            else:
                yield from _duration(path, within)


def _check_retries(retries: Retries) -> Iterable[Problem]:
    for path, retry in [
        ("retries.default", retries.default),
        *((f"retries.consumers.{n}", r) for n, r in retries.consumers.items()),
    ]:
        if not 1 <= retry.max_deliveries <= 100:
            yield Problem(f"{path}.max_deliveries", f"must be between 1 and 100, got {retry.max_deliveries}")
        if not retry.backoff:
            yield Problem(f"{path}.backoff", "needs at least one step")
        for index, step in enumerate(retry.backoff):
            yield from _duration(f"{path}.backoff[{index}]", step, positive=False)


def _percent(path: str, value: Decimal) -> Iterable[Problem]:
    if not Decimal(0) <= value <= Decimal(100):
        yield Problem(path, f"must be a percentage between 0 and 100, got {value}")


def _check_tolerance(path: str, tolerance: Tolerance) -> Iterable[Problem]:
    for name in ("upper_percent", "lower_percent"):
        yield from _percent(f"{path}.price.{name}", getattr(tolerance.price, name))
        yield from _percent(f"{path}.quantity.{name}", getattr(tolerance.quantity, name))
    for name in ("upper_absolute", "lower_absolute"):
        value = getattr(tolerance.price, name)
        if value < 0:
            yield Problem(f"{path}.price.{name}", f"must not be negative, got {value}")
    yield from _percent(f"{path}.over_receipt_percent", tolerance.over_receipt_percent)
    yield from _small_difference(f"{path}.small_difference", tolerance.small_difference)


def _small_difference(path: str, amount: Decimal) -> Iterable[Problem]:
    # In this order: quantize needs a value whose integer digits are already known to fit.
    if amount < 0:
        yield Problem(path, f"must not be negative, got {amount}")
    elif amount > MAX_SMALL_DIFFERENCE:
        yield Problem(path, f"must be at most {MAX_SMALL_DIFFERENCE:,}, got {amount}")
    elif amount.quantize(_SMALL_DIFFERENCE_STEP) != amount:
        yield Problem(path, f"has more than {MAX_SMALL_DIFFERENCE_DECIMALS} decimals")


def _check_tolerances(tolerances: Tolerances, units: set[str] | None) -> Iterable[Problem]:
    yield from _check_tolerance("tolerances.default", tolerances.default)
    for unit, tolerance in tolerances.business_units.items():
        path = f"tolerances.business_units.{unit}"
        if units is not None and unit not in units:
            yield Problem(path, f"unknown business unit {unit!r}; declare it on a system's business_units")
        yield from _check_tolerance(path, tolerance)


def _unit_code(path: str, code: str) -> Iterable[Problem]:
    if not code:
        yield Problem(path, "is empty: name a unit of measure code (UN/ECE Rec 20, e.g. EA, CS, KGM)")
    elif len(code) > MAX_UNIT_CODE:
        yield Problem(path, f"has {len(code)} characters; a unit code has at most {MAX_UNIT_CODE}")
    elif not _UNIT_CODE.fullmatch(code):
        yield Problem(path, f"{code!r} is not a unit code: printable ASCII without spaces (EA, CS, KGM)")


def _factor(path: str, factor: Decimal) -> Iterable[Problem]:
    # In this order: quantize needs a value whose integer digits are already known to fit.
    if factor <= 0:
        yield Problem(path, f"must be greater than zero, got {factor}")
    elif factor >= _FACTOR_LIMIT:
        yield Problem(path, f"has more than {MAX_FACTOR_INTEGER_DIGITS} integer digits")
    elif factor.quantize(_FACTOR_STEP) != factor:
        yield Problem(path, f"has more than {MAX_FACTOR_DECIMALS} decimals")


def _check_receiving(receiving: Receiving) -> Iterable[Problem]:
    conversions = receiving.unit_conversions
    if len(conversions) > MAX_UNIT_CONVERSIONS:
        yield Problem("receiving.unit_conversions", f"lists {len(conversions)}; at most {MAX_UNIT_CONVERSIONS}")
    # Both directions of a pair under one key: the engine derives the inverse, so listing it is a second truth.
    pairs: dict[tuple[str, str], int] = {}
    for index, conversion in enumerate(conversions):
        path = f"receiving.unit_conversions[{index}]"
        yield from _unit_code(f"{path}.from", conversion.from_)
        yield from _unit_code(f"{path}.to", conversion.to)
        yield from _factor(f"{path}.factor", conversion.factor)
        source, target = conversion.from_.upper(), conversion.to.upper()
        if source and source == target:
            yield Problem(f"{path}.to", f"is the unit it converts from ({source}); a unit is 1:1 with itself")
            continue
        earlier = pairs.setdefault((min(source, target), max(source, target)), index)
        if earlier != index:
            yield Problem(
                path,
                f"{source} and {target} are already converted by receiving.unit_conversions[{earlier}]; "
                "list one direction only, the other is derived from it",
            )


def _check_exceptions(exceptions: Exceptions, sites: set[str] | None, units: set[str] | None) -> Iterable[Problem]:
    teams = set(exceptions.teams)
    if not teams:
        yield Problem("exceptions.teams", "declare at least one team")
    if exceptions.default_team not in teams:
        yield Problem("exceptions.default_team", f"unknown team {exceptions.default_team!r}; declare it under teams")
    for index, route in enumerate(exceptions.routes):
        path = f"exceptions.routes[{index}]"
        if not route.team:
            yield Problem(f"{path}.team", "names no team: every route must say who owns what it matches")
        elif route.team not in teams:
            yield Problem(f"{path}.team", f"unknown team {route.team!r}; declare it under exceptions.teams")
        for value in route.match.type:
            if value not in catalog.EXCEPTION_TYPES:
                yield Problem(f"{path}.match.type", f"unknown exception type {value!r}")
        for value in route.match.severity:
            if value not in catalog.SEVERITIES:
                yield Problem(f"{path}.match.severity", f"unknown severity {value!r}; use {_SEVERITY_LIST}")
        if route.severity is not None and route.severity not in catalog.SEVERITIES:
            yield Problem(f"{path}.severity", f"unknown severity {route.severity!r}; use {_SEVERITY_LIST}")
        for value in route.match.site:
            if sites is not None and value not in sites:
                yield Problem(f"{path}.match.site", f"unknown site {value!r}; declare it on a system's sites")
        for value in route.match.business_unit:
            if units is not None and value not in units:
                yield Problem(f"{path}.match.business_unit", f"unknown business unit {value!r}")
        if route.escalate_after is not None:
            yield from _duration(f"{path}.escalate_after", route.escalate_after)
        if route.escalate_to is not None:
            if route.escalate_to not in teams:
                yield Problem(f"{path}.escalate_to", f"unknown team {route.escalate_to!r}")
            if route.escalate_after is None:
                yield Problem(f"{path}.escalate_after", "is required with escalate_to: say after how long")
    for (i, first), (j, second) in combinations(enumerate(exceptions.routes), 2):
        if first.team != second.team and routes_overlap(first, second):
            message = (
                f"overlaps exceptions.routes[{i}]: an exception can match both with equal specificity but they "
                f"name different teams ({second.team!r} and {first.team!r}); narrow one of them"
            )
            yield Problem(f"exceptions.routes[{j}]", message)


_DIMENSIONS = ("type", "severity", "site", "business_unit")


def specificity(route: Route) -> int:
    return sum(1 for d in _DIMENSIONS if getattr(route.match, d))


def routes_overlap(first: Route, second: Route) -> bool:
    """Both could match one exception and neither is more specific: the router could not choose."""
    if specificity(first) != specificity(second):
        return False
    for dimension in _DIMENSIONS:
        a, b = set(getattr(first.match, dimension)), set(getattr(second.match, dimension))
        if a and b and not a & b:
            return False
    return True
