"""Review of issue 12 (exception-router): defects in the pure rules, proven without I/O.

Each test states what the rules should do; it failed before the fix."""

from __future__ import annotations

from services.exception_router.decider import CaseState, Reroute, State, decide
from services.exception_router.domain import Route

HOUR = 3_600_000_000_000


def test_a_reroute_never_goes_back_to_an_older_policy_revision() -> None:
    under_revision_2 = Route("warehouse-east", "medium", HOUR, "procurement-ops", "exceptions.routes[2]", 2)
    under_revision_1 = Route("procurement-ops", "medium", HOUR, "", "exceptions.routes[4]", 1)
    state = CaseState(state=State.OPEN, type_name="over_receipt", route=under_revision_2, owner_team="warehouse-east")
    assert decide(Reroute(under_revision_1), state) is None
