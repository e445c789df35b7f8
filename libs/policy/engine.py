"""Decisions from a validated policy: who may write what, where an exception goes, which tolerance holds.

A :class:`Policy` is immutable and carries the revision it came from, so
every decision can say which revision it used.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, Inexact, localcontext

import yaml

from libs.policy.document import ObjectRule, PolicyDocument, Route, Tolerance
from libs.policy.durations import parse_duration
from libs.policy.problems import Problem
from libs.policy.validate import MAX_FACTOR_DECIMALS, check, specificity

_DECISION_CACHE_SIZE = 4096
_ONE = Decimal(1)
_FACTOR_STEP = _ONE.scaleb(-MAX_FACTOR_DECIMALS)


class PolicyInvalid(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the policy")
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who owns one object (or one of its fields), and the rule that says so."""

    object_type: str
    field: str
    system_of_record: str
    writers: tuple[str, ...]
    sync_to: tuple[str, ...]
    conflict: str
    rule_path: str
    revision: int


@dataclass(frozen=True, slots=True)
class FieldRefusal:
    field: str
    ownership: Ownership


@dataclass(frozen=True, slots=True)
class WriteDecision:
    allowed: bool
    system: str
    object_type: str
    refusals: tuple[FieldRefusal, ...]
    revision: int

    def reason(self) -> str:
        if self.allowed:
            return f"{self.system} may write {self.object_type}"
        by_rule: dict[str, list[FieldRefusal]] = {}
        for refusal in self.refusals:
            by_rule.setdefault(refusal.ownership.rule_path, []).append(refusal)
        parts = []
        for rule_path, refusals in by_rule.items():
            fields = [r.field for r in refusals if r.field]
            shown = ", ".join(fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")
            ownership = refusals[0].ownership
            parts.append(
                f"{shown or self.object_type} belong(s) to {ownership.system_of_record} "
                f"(writers: {', '.join(ownership.writers) or 'none'}; rule {rule_path})"
            )
        return f"{self.system} may not write {self.object_type}: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    team: str
    severity: str | None
    escalate_after: timedelta | None
    escalate_to: str | None
    rule_path: str
    revision: int


class Policy:
    def __init__(self, document: PolicyDocument, text: str, revision: int) -> None:
        self.document = document
        self.text = text
        self.revision = revision
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        self._retries: dict[str, tuple[int, tuple[float, ...]]] = {}
        self.systems = frozenset(document.systems)
        self._field_rules = {
            name: sorted(rule.fields.items(), key=lambda item: -len(item[0]))
            for name, rule in document.ownership.items()
        }
        # Decisions are pure functions of this immutable policy: requests of one shape (the usual
        # case) are decided once. Bounded so a stream of odd shapes cannot grow it without limit.
        self._decisions: dict[tuple[str, str, frozenset[str]], WriteDecision] = {}

    @classmethod
    def from_text(cls, text: str, revision: int) -> Policy:
        document, problems = check(text)
        if document is None:
            raise PolicyInvalid(problems)
        return cls(document, text, revision)

    def is_known_system(self, system: str) -> bool:
        return system in self.systems

    def is_administrator(self, system: str) -> bool:
        return system in self.document.administrators

    def ownership_of(self, object_type: str, field: str = "") -> Ownership:
        """The rule governing a field: the most specific field rule that covers it, else the object's."""
        rule: ObjectRule = self.document.ownership[object_type]  # KeyError: not governed
        wanted = field.replace("[]", "")
        for name, field_rule in self._field_rules[object_type]:
            plain = name.replace("[]", "")
            if wanted == plain or wanted.startswith(plain + ".") or wanted.startswith(plain + "["):
                writers = tuple(field_rule.writers or (field_rule.system_of_record,))
                sync_to = tuple(field_rule.sync.to) if field_rule.sync else ()
                return Ownership(
                    object_type,
                    field,
                    field_rule.system_of_record,
                    writers,
                    sync_to,
                    rule.conflict,
                    f"ownership.{object_type}.fields.{name}",
                    self.revision,
                )
        writers = tuple(rule.writers or (rule.system_of_record,))
        sync_to = tuple(rule.sync.to) if rule.sync else ()
        return Ownership(
            object_type,
            field,
            rule.system_of_record,
            writers,
            sync_to,
            rule.conflict,
            f"ownership.{object_type}",
            self.revision,
        )

    def may_write(self, system: str, object_type: str, fields: Iterable[str]) -> WriteDecision:
        key = (system, object_type, frozenset(fields))
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) >= _DECISION_CACHE_SIZE:
                self._decisions.clear()
            decision = self._decisions[key] = self._decide_write(system, object_type, key[2])
        return decision

    def writes_every_field(self, system: str, object_type: str) -> bool:
        """Whether ``system`` may write ``object_type`` whatever fields a write touches: the object is governed
        without field rules and the system is among its writers. The edge then need not list a document's fields."""
        rule = self.document.ownership.get(object_type)
        return rule is not None and not rule.fields and system in (rule.writers or (rule.system_of_record,))

    def _decide_write(self, system: str, object_type: str, fields: frozenset[str]) -> WriteDecision:
        if object_type not in self.document.ownership:
            refusal = FieldRefusal("", Ownership(object_type, "", "(none)", (), (), "", "ownership", self.revision))
            return WriteDecision(False, system, object_type, (refusal,), self.revision)
        refusals = []
        for field in sorted(set(fields)) or [""]:
            ownership = self.ownership_of(object_type, field)
            if system not in ownership.writers:
                refusals.append(FieldRefusal(field, ownership))
        return WriteDecision(not refusals, system, object_type, tuple(refusals), self.revision)

    def is_source_of(self, system: str, object_type: str) -> bool:
        """Whether the system writes the object or any of its fields: it may report its own records of it."""
        rule = self.document.ownership.get(object_type)
        if rule is None:
            return False
        writers = set(rule.writers or (rule.system_of_record,))
        for field_rule in rule.fields.values():
            writers.update(field_rule.writers or (field_rule.system_of_record,))
        return system in writers

    def holds_copy(self, system: str, object_type: str) -> bool:
        """Whether the object is synced to the system (``sync.to``) or kept by it as its system of record: a system
        holding a copy whose drift from the system of record can be reported."""
        rule = self.document.ownership.get(object_type)
        if rule is None:
            return False
        return system == rule.system_of_record or (rule.sync is not None and system in rule.sync.to)

    def may_read(self, system: str, object_type: str) -> bool:
        rule = self.document.ownership.get(object_type)
        if rule is None or rule.readers is None:
            return self.is_known_system(system)
        return system in rule.readers or system in (rule.writers or (rule.system_of_record,))

    def route(self, exception_type: str, severity: str = "", site: str = "", business_unit: str = "") -> RouteDecision:
        """The most specific matching route, else the default team."""
        values = {"type": exception_type, "severity": severity, "site": site, "business_unit": business_unit}
        best: tuple[int, int, Route] | None = None
        for index, route in enumerate(self.document.exceptions.routes):
            if all(not getattr(route.match, d) or values[d] in getattr(route.match, d) for d in values):
                key = (specificity(route), -index)
                if best is None or key > best[:2]:
                    best = (*key, route)
        if best is None:
            return RouteDecision(
                self.document.exceptions.default_team, None, None, None, "exceptions.default_team", self.revision
            )
        route = best[2]
        return RouteDecision(
            route.team,
            route.severity,
            parse_duration(route.escalate_after) if route.escalate_after else None,
            route.escalate_to,
            f"exceptions.routes[{-best[1]}]",
            self.revision,
        )

    def tolerance(self, business_unit: str = "") -> Tolerance:
        return self.document.tolerances.business_units.get(business_unit, self.document.tolerances.default)

    def over_receipt_percent(self, business_unit: str = "") -> Decimal:
        return self.tolerance(business_unit).over_receipt_percent

    def unit_factor(self, from_unit: str, to_unit: str) -> Decimal | None:
        """How many ``to_unit`` one ``from_unit`` is (codes compared upper-cased), or None when the policy
        gives no exact conversion: an unknown pair, or an inverse that 6 decimals cannot hold (1 EA = 1/12 CS)."""
        source, target = from_unit.upper(), to_unit.upper()
        if source == target:
            return _ONE
        return self._unit_factors.get((source, target))

    @functools.cached_property  # a revision never changes: computed once
    def _unit_factors(self) -> dict[tuple[str, str], Decimal]:
        factors: dict[tuple[str, str], Decimal] = {}
        for conversion in self.document.receiving.unit_conversions:
            source, target = conversion.from_.upper(), conversion.to.upper()
            factors[(source, target)] = _plain(conversion.factor)
            inverse = _exact_inverse(conversion.factor)
            if inverse is not None:
                factors[(target, source)] = inverse
        return factors

    def serves_site(self, system: str, site: str) -> bool:
        """Whether the system may act for the site: it declares it, or declares no sites at all (opt-in)."""
        sites = self._sites_by_system.get(system)
        return sites is not None and (not sites or site in sites)

    @functools.cached_property  # a revision never changes: computed once
    def _sites_by_system(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(system.sites) for name, system in self.document.systems.items()}

    def retry(self, consumer: str) -> tuple[int, tuple[float, ...]]:
        """Delivery limit and backoff steps for ``consumer``; read on every delivery, so computed once a revision."""
        known = self._retries.get(consumer)
        if known is None:
            retry = self.document.retries.consumers.get(consumer, self.document.retries.default)
            known = self._retries[consumer] = (
                retry.max_deliveries,
                tuple(parse_duration(step).total_seconds() for step in retry.backoff),
            )
        return known

    def sla(self, workflow: str, criticality: str = "normal") -> timedelta | None:
        within = self.document.sla.get(workflow, {}).get(criticality)
        return parse_duration(within) if within else None

    @functools.cached_property  # a revision never changes: computed once
    def sites(self) -> frozenset[str]:
        """Every site a system declares: where goods may be shipped to."""
        return frozenset(site for system in self.document.systems.values() for site in system.sites)

    @functools.cached_property  # a revision never changes: computed once
    def requested_date_past_margin(self) -> timedelta:
        return parse_duration(self.document.purchase_orders.requested_date_past_margin)

    @functools.cached_property  # a revision never changes: computed once
    def out_of_order_hold(self) -> timedelta:
        return parse_duration(self.document.ordering.out_of_order_hold)


def _plain(value: Decimal) -> Decimal:
    """The value without trailing zeros or exponent (12, 0.025; not 12.0 or 4E+1), as callers will print it."""
    return value.quantize(_ONE) if value == value.to_integral_value() else value.normalize()


def _exact_inverse(factor: Decimal) -> Decimal | None:
    # Rounding 1/12 here would put a rounding into every converted quantity without anyone having decided it.
    with localcontext() as context:
        context.traps[Inexact] = True
        try:
            inverse = _ONE / factor
        except Inexact:
            return None
    return _plain(inverse) if inverse.quantize(_FACTOR_STEP) == inverse else None


def normalized(text: str) -> str:
    """The document with comments, order and layout removed: what a diff should compare."""
    return yaml.safe_dump(yaml.safe_load(text), sort_keys=True, default_flow_style=False, allow_unicode=True)


def unified_diff(old_text: str, new_text: str, old_name: str = "current", new_name: str = "proposed") -> str:
    old = normalized(old_text).splitlines(keepends=True) if old_text else []
    new = normalized(new_text).splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, fromfile=old_name, tofile=new_name))
