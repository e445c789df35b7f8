"""Control-plane rules: what applying a policy document means. Pure: no I/O here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from libs.policy.catalog import OBJECT_TYPES
from libs.policy.engine import normalized, unified_diff
from libs.policy.problems import Problem
from libs.policy.validate import check
from libs.runtime.decider import Recorded, Refusal, RefusalKind


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


# --- The policy as a decider (DESIGN §3 rule 9) -------------------------------------------------------------
# Its history is the revisions stored in the policy bucket; the latest one is its state.


@dataclass(frozen=True, slots=True)
class RevisionStored:
    revision: int
    document_yaml: str
    applied_by: str
    comment: str
    sha256: str
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyState:
    """The latest stored revision (revision 0, nothing stored: services run the bootstrap document)."""

    revision: int = 0
    document_yaml: str = ""

    @property
    def stored(self) -> bool:
        return self.revision > 0


POLICY_INITIAL = PolicyState()


def evolve_policy(state: PolicyState, recorded: Recorded[RevisionStored]) -> PolicyState:
    event = recorded.event
    return PolicyState(event.revision, event.document_yaml) if event.revision > state.revision else state


@dataclass(frozen=True, slots=True)
class ApplyPolicy:
    text: str
    expected_revision: int
    comment: str
    applied_by: str
    bootstrap_text: str  # in force while nothing is stored (revision 0)
    force_new: bool = False  # a rollback stores a new revision even when the text equals the current one


def in_force(state: PolicyState, bootstrap_text: str) -> str:
    return state.document_yaml if state.stored else bootstrap_text


def decide_apply(command: ApplyPolicy, state: PolicyState, now: datetime) -> RevisionStored | Refusal | None:
    """A new revision, nothing (the same document is in force already), or a refusal listing every problem."""
    plan = plan_apply(command.text, in_force(state, command.bootstrap_text), stored=state.stored)
    if plan.problems:
        return Refusal(
            RefusalKind.INVALID,
            "INVALID_POLICY",
            f"the policy has {len(plan.problems)} problem(s); nothing was applied",
            violations=tuple((f"document_yaml:{p.path}", p.message) for p in plan.problems),
        )
    if state.stored and command.expected_revision == state.revision - 1 and command.text == state.document_yaml:
        return None  # the apply that stored the latest revision, sent again (its answer was lost)
    if command.expected_revision != state.revision:
        return Refusal(
            RefusalKind.PRECONDITION,
            "STALE_POLICY_REVISION",
            stale_revision_message(command.expected_revision, state.revision),
            subject="policy",
            metadata={"current_revision": str(state.revision)},
        )
    if plan.unchanged and not command.force_new:
        return None
    return RevisionStored(state.revision + 1, command.text, command.applied_by, command.comment, plan.sha256, now)
