"""The exception router's pure rules: which raises are one exception, where it goes, summaries. No I/O.

Folding (issue 12): raises of the same type, about the same object, with the same fingerprint are one exception.
Its id derives from those three, so every replica, every restart and every rebuild names it the same way without
asking anyone; raises are never rewritten, only counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from libs.policy.engine import Policy
from libs.runtime.exception_reporter import CASE_ID_PREFIX, case_id

__all__ = ["ID_PREFIX", "Route", "case_id", "is_case_id", "percentile", "route_for"]

ID_PREFIX = CASE_ID_PREFIX
# Closures older than this do not count for the summary's percentiles unless asked for.
DEFAULT_CLOSURE_WINDOW = timedelta(days=30)


def is_case_id(text: str) -> bool:
    return text.startswith(ID_PREFIX) and len(text) == len(ID_PREFIX) + 24


@dataclass(frozen=True, slots=True)
class Route:
    """Where the policy in force sends an exception, and when it escalates."""

    team: str
    severity: str  # low .. critical
    escalate_after_ns: int  # 0: never
    escalate_to: str
    rule_path: str
    revision: int

    def same_destination(self, other: Route) -> bool:
        """Whether ``other`` changes nothing a person sees (who, how urgent, when it escalates, to whom)."""
        return (self.team, self.severity, self.escalate_after_ns, self.escalate_to) == (
            other.team,
            other.severity,
            other.escalate_after_ns,
            other.escalate_to,
        )


def route_for(policy: Policy, type_name: str, raised_severity: str, site: str, business_unit: str) -> Route:
    """The route of DESIGN §5.5: the most specific policy route; its severity, else the raiser's, else medium."""
    decision = policy.route(type_name, raised_severity, site, business_unit)
    after = decision.escalate_after
    return Route(
        team=decision.team,
        severity=decision.severity or raised_severity or "medium",
        escalate_after_ns=int(after.total_seconds() * 1_000_000_000) if after else 0,
        escalate_to=decision.escalate_to or "",
        rule_path=decision.rule_path,
        revision=decision.revision,
    )


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ascending ``sorted_values`` (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]
