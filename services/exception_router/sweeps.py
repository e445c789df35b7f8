"""Work no request starts: escalating exceptions nobody acted on in time, re-routing after a policy change.

Both run every ``SYNCGOV_SWEEP_SECONDS`` over the book's unresolved exceptions and write through the command
handler, so the decision is made on the exception's own history: two replicas sweeping at once write one
escalation, and an escalation that lost its race to an acknowledgment writes nothing. A failure leaves the
exception for the next sweep.

Re-routing (issue 12): when the policy in force changes, every open exception nobody acknowledged and that did
not escalate is routed again; only a changed destination (team, severity, escalation) is written. Which exceptions
were checked under which revision is remembered in memory only: after a restart they are checked again, which
writes nothing for the ones already rerouted.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from libs.policy.engine import Policy
from libs.runtime.decider import Refusal
from services.exception_router.decider import Escalate, Reroute, State, decide
from services.exception_router.domain import route_for
from services.exception_router.intake import ExceptionCommands
from services.exception_router.store import ExceptionBook

log = logging.getLogger(__name__)

# Every open exception is checked against the policy in force when the revision changes, and again at least this
# often: one opened meanwhile by a replica whose policy view still lagged is re-routed without waiting for a restart.
FULL_CHECK_NS = 30 * 1_000_000_000


class Sweeper:
    def __init__(
        self,
        commands: ExceptionCommands,
        book: ExceptionBook,
        policy: Callable[[], Policy],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._commands = commands
        self._book = book
        self._policy = policy
        self._clock = clock
        self._routed_under: dict[str, int] = {}  # exception -> the policy revision its route was last checked under
        self._swept_revision: int | None = None  # the revision every open exception was checked under
        self._swept_at_ns = 0

    async def sweep(self) -> None:
        await self.escalate_due()
        await self.reroute()

    async def escalate_due(self) -> int:
        now = self._clock()
        escalated = 0
        for view in self._book.due(now):
            try:
                outcome = await self._commands.run(view.case_id, functools.partial(decide, Escalate(now)))
            except Exception:
                log.exception("could not escalate %s; the next sweep tries again", view.case_id)
                self._book.retry_due(view)
                continue
            if not isinstance(outcome, Refusal) and outcome.recorded is not None:
                escalated += 1
                log.info("escalated %s to %s", view.case_id, outcome.state.owner_team)
        return escalated

    async def reroute(self) -> int:
        policy = self._policy()
        now = self._clock()
        if policy.revision == self._swept_revision and now - self._swept_at_ns < FULL_CHECK_NS:
            return 0  # every exception was checked under this revision a moment ago
        rerouted, failed = 0, False
        for view in self._book.unresolved():
            state = view.state
            if state.state is not State.OPEN or state.escalated or state.route is None:
                continue
            if state.route.revision == policy.revision or self._routed_under.get(view.case_id) == policy.revision:
                continue
            route = route_for(policy, view.type_name, view.raised_severity, view.site_id, view.business_unit)
            if state.route.same_destination(route):
                self._routed_under[view.case_id] = policy.revision
                continue
            try:
                outcome = await self._commands.run(view.case_id, functools.partial(decide, Reroute(route)))
            except Exception:
                log.exception("could not re-route %s; the next sweep tries again", view.case_id)
                failed = True
                continue
            self._routed_under[view.case_id] = policy.revision
            if not isinstance(outcome, Refusal) and outcome.recorded is not None:
                rerouted += 1
        if len(self._routed_under) > 2 * max(len(self._book.cases), 1000):
            self._routed_under = {key: value for key, value in self._routed_under.items() if key in self._book.cases}
        if not failed:
            self._swept_revision, self._swept_at_ns = policy.revision, now
        return rerouted
