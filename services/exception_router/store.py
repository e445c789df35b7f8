"""The exception book: every exception folded from the exception stream, in memory (DESIGN rule 10).

A projection that knows its stream sequence: a follower feeds it every event of the exception stream in order
(raises and transitions alike), from the first at start-up, so it comes out the same after any restart and no
replica holds anything the stream does not. ``read_through`` is the sequence up to which it has folded; a
decision that must see everything up to a raise waits for it (``read_up_to``).

Per exception it keeps the transitions' state (decider.evolve) and what the raises folded into it add up to:
count, first and last seen, the newest raise's id, the newest raise carrying an original message. Evidence and
original bytes stay in the stream (GetException reads them); the first raise's detail is kept clipped, so an
exception costs about 1.6 KB however large its raises were (bench/exceptions.py measures it; names that repeat
across exceptions — types, severities, raisers, object types — are shared, not copied).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from libs.runtime.commands import recorded
from libs.runtime.events import StoredEvent
from services.exception_router import events
from services.exception_router.decider import INITIAL, CaseState, State, evolve
from services.exception_router.domain import case_id
from syncgov.exception.v1 import exception_pb2

log = logging.getLogger(__name__)

DETAIL_KEPT = 500  # characters of the first raise's detail kept in memory; GetException reads the whole


@dataclass(slots=True)
class CaseView:
    case_id: str
    type_name: str
    object_type: str
    object_key: str
    object_version: int
    fingerprint: str
    raised_by: str
    detail: str
    site_id: str
    business_unit: str
    workflow_key: str
    raised_severity: str
    first_sequence: int  # the first raise: evidence, whole detail
    first_raised_at_ns: int
    last_raised_at_ns: int = 0
    last_raised_id: str = ""
    last_raised_sequence: int = 0
    original_sequence: int = 0  # the newest raise carrying an original message (what a replay delivers)
    occurrences: int = 0
    state: CaseState = field(default_factory=lambda: INITIAL)

    @property
    def unresolved(self) -> bool:
        return not self.state.state.closed


def case_of(raised: exception_pb2.Exception) -> str:
    return case_id(
        events.type_name(raised.type), raised.object.object_type, raised.object.object_key, raised.fingerprint
    )


class ExceptionBook:
    def __init__(self) -> None:
        self.cases: dict[str, CaseView] = {}  # in the order of their first raise
        self.read_through = 0
        self.raises = 0
        self._moved = asyncio.Event()
        # Where each exception starts in the listing (first sequences ascend as the stream is folded in order), so a
        # page starts by bisection instead of a scan from the first exception.
        self._positions: list[int] = []
        self._ids: list[str] = []
        # Escalation deadlines, soonest first; an entry whose exception's deadline changed since is skipped.
        self._deadlines: list[tuple[int, str]] = []

    def follow(self, stored: StoredEvent) -> None:
        """The follower's handler: fold one event of the exception stream, in stream order."""
        try:
            self._fold(stored)
        finally:
            if stored.sequence > self.read_through:
                self.read_through = stored.sequence
                self._moved.set()
                self._moved = asyncio.Event()

    def _fold(self, stored: StoredEvent) -> None:
        raised = events.decode_raised(stored)
        if raised is not None:
            self._count(stored, raised)
            return
        change = events.decode(stored)
        if change is None:
            return
        view = self.cases.get(stored.envelope.object_key)
        if view is None:  # its raises expired from the stream (or were never stored): listed where it first shows
            view = self._add(
                CaseView(
                    stored.envelope.object_key,
                    change.type_name,
                    "",
                    "",
                    0,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    stored.sequence,
                    0,
                )
            )
        if view.state.last_sequence >= stored.sequence:
            return
        before = view.state.escalate_at_ns
        view.state = evolve(view.state, recorded(stored, change))
        if view.state.escalate_at_ns and view.state.escalate_at_ns != before:
            heapq.heappush(self._deadlines, (view.state.escalate_at_ns, view.case_id))

    def _count(self, stored: StoredEvent, raised: exception_pb2.Exception) -> None:
        self.raises += 1
        key = case_of(raised)
        at = stored.envelope.recorded_at.ToNanoseconds()
        view = self.cases.get(key)
        if view is None:
            ref = raised.object
            view = self._add(
                CaseView(
                    case_id=key,
                    type_name=events.type_name(raised.type),
                    object_type=sys.intern(ref.object_type),
                    object_key=ref.object_key,
                    object_version=ref.version,
                    fingerprint=raised.fingerprint,
                    raised_by=sys.intern(raised.raised_by),
                    detail=raised.detail[:DETAIL_KEPT],
                    site_id=raised.site_id,
                    business_unit=raised.business_unit,
                    workflow_key=raised.workflow_key,
                    raised_severity=events.severity_name(raised.severity),
                    first_sequence=stored.sequence,
                    first_raised_at_ns=at,
                )
            )
        elif not view.first_raised_at_ns:  # known from its transitions only: what its first raise says
            ref = raised.object
            view.object_type, view.object_key, view.object_version = ref.object_type, ref.object_key, ref.version
            view.fingerprint, view.raised_by, view.detail = (
                raised.fingerprint,
                raised.raised_by,
                raised.detail[:DETAIL_KEPT],
            )
            view.site_id, view.business_unit, view.workflow_key = (
                raised.site_id,
                raised.business_unit,
                raised.workflow_key,
            )
            view.raised_severity, view.first_raised_at_ns = events.severity_name(raised.severity), at
        view.occurrences += 1
        view.last_raised_at_ns = at
        view.last_raised_id = raised.exception_id
        view.last_raised_sequence = stored.sequence
        if raised.HasField("original_message"):
            view.original_sequence = stored.sequence

    def _add(self, view: CaseView) -> CaseView:
        self.cases[view.case_id] = view
        self._positions.append(view.first_sequence)
        self._ids.append(view.case_id)
        return view

    def after(self, position: int) -> Iterator[CaseView]:
        """The exceptions whose first event is after ``position`` (a page token), in listing order."""
        start = bisect.bisect_right(self._positions, position)
        return (self.cases[key] for key in self._ids[start:])

    def due(self, now_ns: int) -> list[CaseView]:
        """The unresolved, unescalated exceptions whose escalation deadline has passed."""
        found: list[CaseView] = []
        while self._deadlines and self._deadlines[0][0] <= now_ns:
            deadline, key = heapq.heappop(self._deadlines)
            view = self.cases.get(key)
            if view is None or view.state.escalate_at_ns != deadline or view.state.escalated or not view.unresolved:
                continue  # moved, escalated or closed since
            found.append(view)
        return found

    def retry_due(self, view: CaseView) -> None:
        """Put an exception whose escalation failed back for the next sweep."""
        heapq.heappush(self._deadlines, (view.state.escalate_at_ns, view.case_id))

    async def opened(self, case_id: str) -> CaseView:
        """The exception once the intake has opened it (the caller bounds the wait)."""
        while True:
            view = self.cases.get(case_id)
            if view is not None and view.state.exists:
                return view
            await self._moved.wait()

    async def read_up_to(self, sequence: int) -> None:
        """Wait until every event up to ``sequence`` is folded (the caller bounds the wait)."""
        while self.read_through < sequence:
            await self._moved.wait()

    def get(self, exception_id: str) -> CaseView | None:
        return self.cases.get(exception_id)

    def unresolved(self) -> Iterator[CaseView]:
        return (view for view in list(self.cases.values()) if view.state.exists and view.unresolved)

    def needs_decision(self, view: CaseView | None, raised_sequence: int, delivery_exhausted: bool) -> bool:
        """Whether the raise at ``raised_sequence`` may change the exception (open or reopen it); False: a repeat
        the book counts. Only valid once the book has read up to that raise."""
        if view is None or not view.state.exists:
            return True
        state = view.state
        if state.state.closed:
            return raised_sequence > state.closed_sequence
        return state.replay_pending and delivery_exhausted and raised_sequence > state.replay_sequence

    def count_states(self) -> dict[State, int]:
        counts: dict[State, int] = {}
        for view in self.cases.values():
            counts[view.state.state] = counts.get(view.state.state, 0) + 1
        return counts
