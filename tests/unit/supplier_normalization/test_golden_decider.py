"""Golden records as deciders: the registry plans without changing, the golden record's history guards the
append, and the registry folds only what was applied."""

from __future__ import annotations

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from services.supplier_normalization import domain
from services.supplier_normalization.matching import Outcome
from services.supplier_normalization.normalize import normalize
from tests.unit.supplier_normalization.test_registry import owner_of, supplier


def change(kind: str = domain.UPSERTED, version: int = 1, status: str = "") -> domain.SupplierChange:
    return domain.SupplierChange(kind, "SUP-X", version, "key", status)


def given(*changes: domain.SupplierChange) -> domain.GoldenState:
    state = domain.GOLDEN_INITIAL
    for sequence, item in enumerate(changes, start=1):
        state = domain.evolve_golden(state, Recorded(item, sequence, "", 0, "key", "erp"))
    return state


def test_a_new_golden_record_is_appended_on_an_empty_history():
    new = change()
    assert domain.decide_change(new, given(), creates=True) is new


def test_creating_a_golden_record_that_exists_is_a_conflict():
    refusal = domain.decide_change(change(version=1), given(change()), creates=True)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason) == (RefusalKind.CONFLICT, "GOLDEN_ID_TAKEN")


def test_changing_a_golden_record_that_does_not_exist_is_not_found():
    refusal = domain.decide_change(change(version=1), given(), creates=False)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason) == (RefusalKind.NOT_FOUND, "SUPPLIER_NOT_FOUND")


def test_a_change_from_a_registry_behind_the_stream_is_refused():
    refusal = domain.decide_change(change(version=2), given(change(), change(version=2)), creates=False)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason) == (RefusalKind.PRECONDITION, "REGISTRY_BEHIND_STREAM")


def test_the_next_version_is_appended_and_a_decision_needs_no_version():
    state = given(change())
    following = change(version=2)
    assert domain.decide_change(following, state, creates=False) is following
    decision = change(kind=domain.DECIDED, version=0)
    assert domain.decide_change(decision, given(), creates=False) is decision


def test_evolve_follows_versions_and_statuses_and_ignores_decisions():
    state = given(change(), change(kind=domain.STATUS, version=2, status=domain.BLOCKED), change(domain.DECIDED, 0))
    assert (state.version, state.status, state.exists) == (2, domain.BLOCKED, True)
    assert not domain.GOLDEN_INITIAL.exists


def test_golden_ids_come_from_the_creating_record_not_from_arrival_order():
    first, second = domain.SupplierRegistry(owner_of), domain.SupplierRegistry(owner_of)
    acme = supplier("erp", "100", "Acme Tools GmbH", vat="DE136695976")
    other = supplier("erp", "200", "Zeta Paints AG", vat="DE129273398")
    first.submit(acme)
    first.submit(other)
    second.submit(other)
    second.submit(acme)
    assert first.golden_of("erp", "100") == second.golden_of("erp", "100") == domain.golden_id_for("erp", "100")
    assert first.golden_of("erp", "200") == second.golden_of("erp", "200") != first.golden_of("erp", "100")


def test_planning_changes_nothing_and_the_preview_is_what_applying_gives():
    registry = domain.SupplierRegistry(owner_of)
    registry.submit(supplier("procurement", "P-1", "Acme Tools GmbH", vat="DE136695976"))
    before = registry.clusters()
    placement = registry.plan(normalize(supplier("erp", "E-1", "ACME Tools G.m.b.H.", vat="DE 136695976")))
    assert placement.outcome is Outcome.MERGED
    assert not placement.created
    assert registry.clusters() == before
    assert registry.golden_of("erp", "E-1") is None
    preview = registry.preview(placement)
    registry.apply(placement)
    assert registry.view(placement.golden_id) == preview


def test_a_merge_preview_is_the_surviving_record_after_the_merge():
    registry = domain.SupplierRegistry(owner_of)
    keep = registry.submit(supplier("procurement", "P-1", "Bavaria Tools GmbH")).golden_id
    gone = registry.submit(supplier("erp", "E-1", "Bavaria Werkzeuge")).golden_id
    preview = registry.preview_merge(keep, gone)
    registry.merge(keep, gone)
    assert registry.view(keep) == preview


def test_a_status_the_record_has_already_is_not_written_again():
    blocked = given(change(), change(kind=domain.STATUS, version=2, status=domain.BLOCKED))
    again = change(kind=domain.STATUS, version=3, status=domain.BLOCKED)
    assert domain.decide_change(again, blocked, creates=False) is None
    active = change(kind=domain.STATUS, version=3, status=domain.ACTIVE)
    assert domain.decide_change(active, blocked, creates=False) is active


def test_two_records_of_one_golden_supplier_leave_nothing_to_merge_or_decide():
    assert domain.already_one("SUP-A", "SUP-B", "SUP-A", "SUP-B") is None
    refusal = domain.already_one("SUP-A", "SUP-B", "SUP-A", "SUP-A")
    assert refusal is not None
    assert (refusal.kind, refusal.reason) == (RefusalKind.PRECONDITION, "ALREADY_MERGED")
