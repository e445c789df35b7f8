"""Review of issue 12 (exception-router): defects in the pure rules, proven without I/O.

Each test states what the rules should do and is marked xfail(strict=True) with the defect it exposes."""

from __future__ import annotations

import pytest

from services.exception_router.decider import CaseState, Reroute, State, decide
from services.exception_router.domain import Route

HOUR = 3_600_000_000_000


@pytest.mark.xfail(
    strict=True,
    reason="decider._reroute (and Sweeper.reroute) compare only the destination, never the revision: a replica "
    "whose policy view still holds revision 1 re-routes an exception that revision 2 already re-routed back to "
    "revision 1's team; each replica remembers only its own revision, so the two write reroutes against each "
    "other until the lagging one catches up (one more transition and audit entry each way)",
)
def test_a_reroute_never_goes_back_to_an_older_policy_revision() -> None:
    under_revision_2 = Route("warehouse-east", "medium", HOUR, "procurement-ops", "exceptions.routes[2]", 2)
    under_revision_1 = Route("procurement-ops", "medium", HOUR, "", "exceptions.routes[4]", 1)
    state = CaseState(state=State.OPEN, type_name="over_receipt", route=under_revision_2, owner_team="warehouse-east")
    assert decide(Reroute(under_revision_1), state) is None
