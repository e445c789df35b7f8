"""Versions that arrive before their predecessor: applied once it lands, or expired by the periodic sweep.

A held version is a ``held`` event in the order's own subject, so it survives restarts; the Valkey
to-do list of deadlines (HoldDeadlines) is a projection of those events. Every step is a command run
through the same handler as a request's: decided by domain.py, appended under the subject guard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import Message

from libs.policy.engine import Policy
from libs.runtime.commands import Outcome
from libs.runtime.decider import Refusal
from libs.runtime.exception_reporter import ExceptionReporter
from services.po_publication import domain
from services.po_publication.store import HoldDeadlines, OrderCommands
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2

log = logging.getLogger(__name__)


class HeldVersions:
    def __init__(
        self,
        commands: OrderCommands,
        deadlines: HoldDeadlines,
        exceptions: ExceptionReporter,
        policy: Callable[[], Policy],
        received: domain.ReceivedQuantities | None = None,
    ) -> None:
        self._commands = commands
        self._deadlines = deadlines
        self._exceptions = exceptions
        self._policy = policy
        self._received = received if received is not None else domain.ReceivedQuantities()

    async def _run(
        self, po_id: str, command: domain.OrderCommand, decided_on: list[domain.OrderState] | None = None
    ) -> Outcome[domain.OrderState, domain.OrderEvent]:
        rules = domain.Rules(hold_window=self._policy().out_of_order_hold)
        now = datetime.now(UTC)

        def decide(state: domain.OrderState) -> domain.Decision:
            if decided_on is not None:
                decided_on.append(state)  # the state the appended event was decided on (the last one)
            return domain.decide(command, state, now, rules)

        result = await self._commands.run(po_id, decide)
        assert not isinstance(result, Refusal), "releasing and expiring holds are never refused"
        return result

    async def release(self, po_id: str) -> None:
        """Apply held versions whose predecessor has now landed, in order, as their senders sent them — checked
        against what was received, like a change order sent directly: one that lowers a line below it is not
        applied, its hold ends and an out_of_order_version exception says why (raised before the hold ends, under
        an id derived from the held version, so a retry raises it once)."""
        while True:
            command = domain.ReleaseHeld(self._received.of(po_id))
            blocked = domain.unreleasable(await self._commands.state(po_id), command.received)
            if blocked is not None:
                await self._raise_unreleasable(po_id, blocked)
            decided_on: list[domain.OrderState] = []
            outcome = await self._run(po_id, command, decided_on)
            if outcome.recorded is None:
                return
            event = outcome.recorded.event
            if isinstance(event, domain.VersionChanged):
                log.info("applied held version %s of %s", event.order.version, po_id)
            elif isinstance(event, domain.HoldExpired):
                # Decided under the guard, perhaps on a newer state than the check above read: raised (again)
                # from the state it was decided on; the derived id stores it once.
                decided = domain.unreleasable(decided_on[-1], command.received) if decided_on else None
                if decided is not None:
                    await self._raise_unreleasable(po_id, decided)
                log.info("held version %s of %s not applied: it lowers a line below receipts", event.version, po_id)
            if not domain.releasable(outcome.state):
                return

    async def _raise_unreleasable(self, po_id: str, blocked: domain.Unreleasable) -> None:
        held = blocked.held
        await self._exceptions.raise_exception(
            exception_pb2.EXCEPTION_TYPE_OUT_OF_ORDER_VERSION,
            exception_pb2.SEVERITY_HIGH,
            types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=po_id, version=held.version),
            blocked.detail,
            evidence=[_render(held.document)],
            workflow_key=po_id,
            discriminator=f"{held.sequence}|below_received",
            policy_revision=self._policy().revision,
            exception_id=blocked.exception_id,
        )

    async def release_quietly(self, po_id: str) -> None:
        """Release after a request's own write: that write stands whatever happens here, and a release that
        fails now is done by the next sweep (the held version's deadline is in the to-do list)."""
        try:
            await self.release(po_id)
        except Exception as error:
            log.warning("held versions of %s not released now (%s); the sweep releases them", po_id, error)

    async def expire(self) -> None:
        """Raise out_of_order_version for held versions whose predecessor did not come within the window."""
        now = datetime.now(UTC)
        for po_id in await self._deadlines.due(now):
            await self.release(po_id)
            state = await self._commands.state(po_id)
            for held in domain.due_holds(state, now):
                exception = await self._exceptions.raise_exception(
                    exception_pb2.EXCEPTION_TYPE_OUT_OF_ORDER_VERSION,
                    exception_pb2.SEVERITY_HIGH,
                    types_pb2.ObjectRef(object_type=domain.OBJECT_TYPE, object_key=po_id, version=held.version),
                    f"version {held.version} of {po_id} waited for version {state.latest_version + 1} until "
                    f"{held.hold_until.isoformat()}; it was not applied",
                    evidence=[json_format.MessageToJson(held.document, indent=None)],
                    workflow_key=po_id,
                    discriminator=str(held.sequence),
                    policy_revision=self._policy().revision,
                )
                await self._run(po_id, domain.ExpireHold(held.version, exception.exception_id))
            await self._deadlines.reschedule(po_id, await self._commands.state(po_id))


def _render(document: object) -> str:
    return json_format.MessageToJson(document, indent=None) if isinstance(document, Message) else str(document)
