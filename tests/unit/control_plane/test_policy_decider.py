"""The policy as a decider: given the stored revisions, when a document is applied, then a revision or a refusal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from control_plane import domain
from libs.runtime.decider import Recorded, RefusalKind

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = (ROOT / "deploy" / "policy" / "default.yaml").read_text()
STRICT = (ROOT / "deploy" / "policy" / "strict-finance.yaml").read_text()
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def given(*documents: str) -> domain.PolicyState:
    state = domain.POLICY_INITIAL
    for number, text in enumerate(documents, start=1):
        event = domain.RevisionStored(number, text, "ops-console", "", "sha", NOW)
        state = domain.evolve_policy(state, Recorded(event, number, "", 0, "", "ops-console"))
    return state


def apply(text: str, expected: int, *, force_new: bool = False, bootstrap: str = DEFAULT) -> domain.ApplyPolicy:
    return domain.ApplyPolicy(text, expected, "why", "ops-console", bootstrap, force_new=force_new)


def test_a_first_revision_over_the_bootstrap_is_revision_one_even_with_the_same_text():
    decision = domain.decide_apply(apply(DEFAULT, 0), given(), NOW)
    assert isinstance(decision, domain.RevisionStored)
    assert (decision.revision, decision.document_yaml, decision.applied_by, decision.applied_at) == (
        1,
        DEFAULT,
        "ops-console",
        NOW,
    )
    assert len(decision.sha256) == 64


def test_the_next_revision_follows_the_latest_stored():
    decision = domain.decide_apply(apply(STRICT, 2), given(DEFAULT, DEFAULT), NOW)
    assert isinstance(decision, domain.RevisionStored)
    assert decision.revision == 3


def test_the_document_in_force_again_stores_nothing():
    assert domain.decide_apply(apply(DEFAULT, 1), given(DEFAULT), NOW) is None


def test_a_rollback_stores_a_new_revision_even_for_the_same_text():
    decision = domain.decide_apply(apply(DEFAULT, 1, force_new=True), given(DEFAULT), NOW)
    assert isinstance(decision, domain.RevisionStored)
    assert decision.revision == 2


def test_an_expected_revision_that_is_not_the_latest_is_refused_with_the_current_one():
    refusal = domain.decide_apply(apply(DEFAULT, 1), given(DEFAULT, STRICT), NOW)
    assert not isinstance(refusal, domain.RevisionStored)
    assert refusal is not None
    assert (refusal.kind, refusal.reason) == (RefusalKind.PRECONDITION, "STALE_POLICY_REVISION")
    assert refusal.metadata["current_revision"] == "2"


def test_an_invalid_document_is_refused_with_every_problem_and_its_path():
    broken = DEFAULT.replace("version: 1", "version: 99", 1) + "\nunknown_section: {}\n"
    refusal = domain.decide_apply(apply(broken, 0), given(), NOW)
    assert refusal is not None
    assert not isinstance(refusal, domain.RevisionStored)
    assert (refusal.kind, refusal.reason) == (RefusalKind.INVALID, "INVALID_POLICY")
    assert len(refusal.violations) >= 1
    assert all(path.startswith("document_yaml:") for path, _ in refusal.violations)


def test_evolve_keeps_the_highest_revision():
    state = given(DEFAULT, STRICT)
    assert (state.revision, state.document_yaml, state.stored) == (2, STRICT, True)
    older = Recorded(domain.RevisionStored(1, DEFAULT, "x", "", "", NOW), 1, "", 0, "", "x")
    assert domain.evolve_policy(state, older) == state
    assert not domain.POLICY_INITIAL.stored
    assert domain.in_force(domain.POLICY_INITIAL, "bootstrap") == "bootstrap"
    assert domain.in_force(state, "bootstrap") == STRICT


def test_the_apply_that_stored_the_latest_revision_sent_again_is_nothing_new():
    assert domain.decide_apply(apply(STRICT, 1), given(DEFAULT, STRICT), NOW) is None
