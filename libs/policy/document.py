"""The policy document's shape, as pydantic models: unknown keys and wrong types are refused here.

Meaning (unknown systems, owners, ranges, overlaps) is checked in validate.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class System(Strict):
    kind: str
    description: str = ""
    business_units: list[str] = Field(default_factory=list)
    sites: list[str] = Field(default_factory=list)


class Sync(Strict):
    from_: str = Field(alias="from")
    to: list[str] = Field(default_factory=list)


class FieldRule(Strict):
    system_of_record: str
    writers: list[str] | None = None
    sync: Sync | None = None


class ObjectRule(Strict):
    system_of_record: str
    writers: list[str] | None = None
    readers: list[str] | None = None
    sync: Sync | None = None
    conflict: str = "system_of_record_wins"
    fields: dict[str, FieldRule] = Field(default_factory=dict)


class Retry(Strict):
    max_deliveries: int
    backoff: list[str]


class Retries(Strict):
    default: Retry = Retry(max_deliveries=5, backoff=["500ms", "2s", "10s", "30s"])
    consumers: dict[str, Retry] = Field(default_factory=dict)


class PriceTolerance(Strict):
    upper_percent: Decimal = Decimal(0)
    lower_percent: Decimal = Decimal(100)
    upper_absolute: Decimal = Decimal(0)
    lower_absolute: Decimal = Decimal(0)


class QuantityTolerance(Strict):
    upper_percent: Decimal = Decimal(0)
    lower_percent: Decimal = Decimal(100)


class Tolerance(Strict):
    price: PriceTolerance = PriceTolerance()
    quantity: QuantityTolerance = QuantityTolerance()
    over_receipt_percent: Decimal = Decimal(0)
    # An invoice whose totals differ from what its lines add up to by at most this amount (in the invoice's
    # currency) is accepted, the difference reported as a small difference; above it the invoice is blocked.
    small_difference: Decimal = Decimal(0)


class Tolerances(Strict):
    default: Tolerance = Tolerance()
    business_units: dict[str, Tolerance] = Field(default_factory=dict)


class RouteMatch(Strict):
    type: list[str] = Field(default_factory=list)
    severity: list[str] = Field(default_factory=list)
    site: list[str] = Field(default_factory=list)
    business_unit: list[str] = Field(default_factory=list)


class Route(Strict):
    match: RouteMatch = RouteMatch()
    team: str = ""
    severity: str | None = None
    escalate_after: str | None = None
    escalate_to: str | None = None


class Team(Strict):
    description: str = ""
    contact: str = ""


class Exceptions(Strict):
    default_team: str
    teams: dict[str, Team]
    routes: list[Route] = Field(default_factory=list)


class Ordering(Strict):
    out_of_order_hold: str = "5m"


class PurchaseOrders(Strict):
    requested_date_past_margin: str = "7d"


class UnitConversion(Strict):
    """1 ``from`` = ``factor`` ``to`` (1 CS = 12 EA)."""

    from_: str = Field(alias="from")
    to: str
    factor: Decimal

    @field_validator("factor", mode="before")
    @classmethod
    def _not_a_float(cls, value: Any) -> Any:
        # YAML reads an unquoted 0.5 as binary floating point, which keeps about 15 digits: a factor with 13
        # integer digits and 6 decimals could come back changed, and a factor multiplies every quantity.
        if isinstance(value, float):
            raise ValueError('write a fractional factor in quotes (factor: "0.5") so it is read as a decimal')
        return value


class Receiving(Strict):
    unit_conversions: list[UnitConversion] = Field(default_factory=list)


class PolicyDocument(Strict):
    format: int
    description: str = ""
    systems: dict[str, System]
    administrators: list[str] = Field(default_factory=list)
    ownership: dict[str, ObjectRule]
    sla: dict[str, dict[str, str]] = Field(default_factory=dict)
    retries: Retries = Retries()
    tolerances: Tolerances = Tolerances()
    exceptions: Exceptions
    ordering: Ordering = Ordering()
    purchase_orders: PurchaseOrders = PurchaseOrders()
    receiving: Receiving = Receiving()


# Each top-level section and the type pydantic validates it as (a class or a generic alias such as dict[str, System]).
SECTIONS: dict[str, Any] = {
    "format": int,
    "description": str,
    "systems": dict[str, System],
    "administrators": list[str],
    "ownership": dict[str, ObjectRule],
    "sla": dict[str, dict[str, str]],
    "retries": Retries,
    "tolerances": Tolerances,
    "exceptions": Exceptions,
    "ordering": Ordering,
    "purchase_orders": PurchaseOrders,
    "receiving": Receiving,
}
REQUIRED_SECTIONS = ("format", "systems", "ownership", "exceptions")
