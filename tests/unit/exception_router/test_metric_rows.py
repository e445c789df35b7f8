"""The exception metrics read the book as the summary does: the backlog and the closures by type and team."""

from __future__ import annotations

from services.exception_router.decider import Change, Resolution, Transition
from services.exception_router.store import ExceptionBook
from services.exception_router.summary import metric_rows
from tests.unit.exception_router.test_store_and_summary import SECOND, Stream, four_opened


def test_metric_rows_split_the_backlog_and_closures_by_type_and_team():
    book, stream = ExceptionBook(), Stream()
    keys = four_opened(book, stream)
    book.follow(stream.change(keys[1], Change(Transition.ACKNOWLEDGED, actor="j"), 110))
    for key, closed_at in ((keys[3], 400), (keys[2], 160)):
        book.follow(stream.change(key, Change(Transition.RESOLVED, actor="j", resolution=Resolution.FIXED), closed_at))

    rows = metric_rows(book.cases.values(), 1000 * SECOND)
    assert rows.backlog == {("price_variance", "accounts-payable"): 2}
    assert rows.closures == {("price_variance", "accounts-payable"): [60.0, 300.0]}
    # Folding the same events again (another replica, a restart) reads the same numbers: nothing is counted twice.
    assert metric_rows(book.cases.values(), 1000 * SECOND) == rows
    # Closures older than the window drop out.
    assert metric_rows(book.cases.values(), 400 * SECOND + 31 * 86400 * SECOND).closures == {}
