"""Control-plane rules: what applying a policy document means. Pure: no I/O here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from libs.policy.catalog import OBJECT_TYPES
from libs.policy.engine import normalized, unified_diff
from libs.policy.problems import Problem
from libs.policy.validate import check


@dataclass(frozen=True, slots=True)
class ApplyPlan:
    """What applying ``text`` over the current revision would do."""

    problems: list[Problem]
    diff: str
    unchanged: bool
    sha256: str


def plan_apply(text: str, current_text: str, *, stored: bool) -> ApplyPlan:
    """``current_text`` is what is in force: the latest stored revision, or (``stored`` False) the
    bootstrap document services run as revision 0. Only a stored revision can be left unchanged."""
    document, problems = check(text)
    if document is None:
        return ApplyPlan(problems, "", False, "")
    diff = unified_diff(current_text, text)
    unchanged = stored and normalized(current_text) == normalized(text)
    return ApplyPlan([], diff, unchanged, hashlib.sha256(text.encode()).hexdigest())


def stale_revision_message(expected: int, current: int) -> str:
    return (
        f"expected to replace revision {expected}, but the current revision is {current}: "
        f"review `syncgov policy diff` against revision {current} and apply again with --expected-revision {current}"
    )


def field_problem(object_type: str, field: str) -> str | None:
    """Why ``field`` cannot be explained for ``object_type``, or None when it can."""
    known = OBJECT_TYPES.get(object_type)
    if known is None:
        return f"unknown object type {object_type!r}; known: {', '.join(OBJECT_TYPES)}"
    if not field:
        return None
    paths = known.field_paths()
    if not paths:
        return f"{object_type} is governed as a whole; ask without a field"
    if field in paths or field.replace("[]", "") in {p.replace("[]", "") for p in paths}:
        return None
    return f"{object_type} has no field {field!r}"
