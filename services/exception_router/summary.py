"""What a dashboard shows: the backlog by team and type, and how long closing an exception takes. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.exception_router import events
from services.exception_router.decider import State
from services.exception_router.domain import DEFAULT_CLOSURE_WINDOW, percentile
from services.exception_router.store import CaseView
from syncgov.exception.v1 import exception_service_pb2

NANOS = 1_000_000_000


@dataclass(slots=True)
class _Backlog:
    open: int = 0
    acknowledged: int = 0
    escalated: int = 0
    occurrences: int = 0
    oldest_ns: int = 0


def summarize(
    views: Iterable[CaseView], owner_team: str, closed_after_ns: int | None, now_ns: int
) -> exception_service_pb2.SummarizeExceptionsResponse:
    since = (
        closed_after_ns if closed_after_ns is not None else now_ns - int(DEFAULT_CLOSURE_WINDOW.total_seconds()) * NANOS
    )
    backlog: dict[tuple[str, str], _Backlog] = {}
    closures: dict[str, list[float]] = {}
    for view in list(views):
        state = view.state
        if owner_team and state.owner_team != owner_team:
            continue
        if state.state.closed:
            if state.closed_at_ns >= since and view.first_raised_at_ns:
                # From the raise that opened this episode (a reopened exception counts from its reopening).
                started = max(view.first_raised_at_ns, state.opened_at_ns if state.reopened else 0)
                closures.setdefault(state.owner_team, []).append((state.closed_at_ns - started) / NANOS)
            continue
        row = backlog.setdefault((state.owner_team, view.type_name), _Backlog())
        if state.state is State.ACKNOWLEDGED:
            row.acknowledged += 1
        else:
            row.open += 1
        row.escalated += state.escalated
        row.occurrences += view.occurrences
        if view.first_raised_at_ns and (not row.oldest_ns or view.first_raised_at_ns < row.oldest_ns):
            row.oldest_ns = view.first_raised_at_ns
    response = exception_service_pb2.SummarizeExceptionsResponse()
    for (team, type_name), row in sorted(backlog.items(), key=lambda item: -(item[1].open + item[1].acknowledged)):
        count = response.backlog.add(
            owner_team=team,
            type=events.type_value(type_name or "unspecified"),
            open=row.open,
            acknowledged=row.acknowledged,
            escalated=row.escalated,
            occurrences=row.occurrences,
        )
        if row.oldest_ns:
            count.oldest_raised_at.FromNanoseconds(row.oldest_ns)
    everything = sorted(seconds for per_team in closures.values() for seconds in per_team)
    _fill(response.closure, everything)
    for team, seconds in closures.items():
        _fill(response.closure_by_team[team], sorted(seconds))
    return response


def _fill(times: exception_service_pb2.ClosureTimes, ascending: list[float]) -> None:
    times.closed = len(ascending)
    times.p50_seconds = percentile(ascending, 0.50)
    times.p90_seconds = percentile(ascending, 0.90)
    times.p99_seconds = percentile(ascending, 0.99)


@dataclass(slots=True)
class MetricRows:
    """What the exception metrics report: the unresolved backlog and the closures within the window, by type and
    team (docs/metrics.md)."""

    backlog: dict[tuple[str, str], int]
    closures: dict[tuple[str, str], list[float]]  # ascending seconds from the (re)opening raise to the closure


def metric_rows(views: Iterable[CaseView], now_ns: int) -> MetricRows:
    """The same reading as :func:`summarize` (closures within DEFAULT_CLOSURE_WINDOW), split by type and team."""
    since = now_ns - int(DEFAULT_CLOSURE_WINDOW.total_seconds()) * NANOS
    backlog: dict[tuple[str, str], int] = {}
    closures: dict[tuple[str, str], list[float]] = {}
    for view in list(views):
        state = view.state
        key = (view.type_name or "unspecified", state.owner_team)
        if not state.state.closed:
            backlog[key] = backlog.get(key, 0) + 1
        elif state.closed_at_ns >= since and view.first_raised_at_ns:
            started = max(view.first_raised_at_ns, state.opened_at_ns if state.reopened else 0)
            closures.setdefault(key, []).append((state.closed_at_ns - started) / NANOS)
    for seconds in closures.values():
        seconds.sort()
    return MetricRows(backlog, closures)
