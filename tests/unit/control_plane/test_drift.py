"""Drift reconciliation's rules (control_plane/drift.py): what a reported object is against the system of record."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from control_plane import drift
from control_plane.drift import Authoritative, Held, Kind
from control_plane.reconciliation import OrderIndex
from libs.runtime.content_hash import content_sha256
from libs.runtime.events import StoredEvent
from syncgov.common.v1 import envelope_pb2
from syncgov.po.v1 import po_pb2

A = "a" * 64
B = "b" * 64


def held(key: str, version: int, sha256: str = "") -> Held:
    return Held(drift.PURCHASE_ORDER, key, version, sha256)


def found(reported: Held | None, syncgov: Authoritative | None, sha256: str = "") -> drift.Finding:
    """The finding for an object that matters (classify answers None only for what neither side needs)."""
    finding = drift.classify("erp", reported, syncgov, sha256)
    assert finding is not None
    return finding


def latest(key: str, version: int, *, cancelled: bool = False, acknowledged_by: frozenset[str] = frozenset()):
    return Authoritative(key, version, 10 * version, cancelled, acknowledged_by)


def test_the_same_version_is_in_sync_and_an_older_one_stale():
    assert found(held("PO-1", 2), latest("PO-1", 2)).kind is Kind.IN_SYNC
    stale = found(held("PO-1", 1), latest("PO-1", 2))
    assert (stale.kind, stale.authoritative_version, stale.reported_version) == (Kind.STALE, 2, 1)
    assert "v1" in stale.reason
    assert "v2" in stale.reason
    assert stale.repairable


def test_a_version_ahead_or_an_object_syncgov_never_had_is_unknown_and_not_repaired():
    ahead = found(held("PO-1", 3), latest("PO-1", 2))
    assert ahead.kind is Kind.UNKNOWN
    assert "ahead" in ahead.reason
    assert not ahead.repairable
    never = found(held("PO-X", 1), None)
    assert (never.kind, never.authoritative_version, never.reported_version) == (Kind.UNKNOWN, 0, 1)


def test_content_is_compared_only_when_both_hashes_are_known():
    assert found(held("PO-1", 2, A), latest("PO-1", 2), B).kind is Kind.CONTENT_DIFFERS
    assert found(held("PO-1", 2, A), latest("PO-1", 2), A).kind is Kind.IN_SYNC
    assert found(held("PO-1", 2), latest("PO-1", 2), B).kind is Kind.IN_SYNC  # version only
    assert found(held("PO-1", 2, A), latest("PO-1", 2), "").kind is Kind.IN_SYNC


def test_missing_unless_a_cancelled_order_never_reached_the_system():
    missing = found(None, latest("PO-1", 2))
    assert (missing.kind, missing.authoritative_version, missing.reported_version) == (Kind.MISSING, 2, 0)
    assert drift.classify("erp", None, latest("PO-1", 3, cancelled=True)) is None
    reached = found(None, latest("PO-1", 3, cancelled=True, acknowledged_by=frozenset({"erp"})))
    assert reached is not None
    assert reached.kind is Kind.MISSING
    # Held in an older version, a cancelled order is stale: the system must learn of the cancellation.
    assert found(held("PO-1", 2), latest("PO-1", 3, cancelled=True)).kind is Kind.STALE


def test_compare_covers_the_union_by_key_and_counts_each_kind():
    authoritative = {"PO-1": latest("PO-1", 2), "PO-2": latest("PO-2", 1), "PO-3": latest("PO-3", 1)}
    findings = drift.compare("erp", [held("PO-1", 1), held("PO-3", 1, A), held("PO-9", 4)], authoritative, {"PO-3": B})
    assert [(f.key, f.kind) for f in findings] == [
        ("PO-1", Kind.STALE),
        ("PO-2", Kind.MISSING),
        ("PO-3", Kind.CONTENT_DIFFERS),
        ("PO-9", Kind.UNKNOWN),
    ]
    counts = drift.counts(findings)
    assert counts[Kind.IN_SYNC] == 0
    assert sum(counts.values()) == 4
    assert drift.needs_content([held("PO-1", 1, A), held("PO-3", 1, A), held("PO-2", 1)], authoritative) == ["PO-3"]


def test_problems_name_each_field_and_nothing_passes_outside_the_range():
    objects = [
        Held("supplier", "S-1", 1),
        held("PO-2", 0),
        held("PO-3", 1, "ABC"),
        held("PO-3", 1),
        held("ZZ", 1),
        held(" ", 1),
    ]
    found = dict(drift.problems("erp", {"erp"}, objects, "PO-1", "PO-5"))
    assert "supported: purchase_order" in found["objects[0].object.object_type"]
    assert "at least 1" in found["objects[1].object.version"]
    assert "hex" in found["objects[2].content_sha256"]
    assert "twice" in found["objects[3].object.object_key"]
    assert "outside" in found["objects[4].object.object_key"]
    assert "required" in found["objects[5].object.object_key"]
    assert dict(drift.problems("nobody", {"erp"}, [], "", ""))["system"].endswith("declares")
    assert "covers_through_key" in dict(drift.problems("erp", {"erp"}, [], "PO-5", "PO-1"))
    assert drift.problems("erp", {"erp"}, [held("PO-2", 1, A)], "PO-1", "") == []
    too_many = [held(f"PO-{i:05d}", 1) for i in range(drift.MAX_OBJECTS + 1)]
    assert "objects" in dict(drift.problems("erp", {"erp"}, too_many, "", ""))


def test_the_discriminator_names_the_drift_so_a_repeated_report_is_the_same_exception():
    first = found(held("PO-1", 1), latest("PO-1", 2))
    again = found(held("PO-1", 1), latest("PO-1", 2))
    later = found(held("PO-1", 1), latest("PO-1", 3))
    assert drift.discriminator("erp", first) == drift.discriminator("erp", again)
    assert drift.discriminator("erp", first) != drift.discriminator("erp", later)
    assert drift.discriminator("erp", first) != drift.discriminator("wms", first)


versions = st.integers(min_value=1, max_value=50)
hashes = st.sampled_from(["", A, B])


@given(reported=st.one_of(st.none(), st.tuples(versions, hashes)), held_by=st.one_of(st.none(), versions), sha=hashes)
def test_every_object_has_one_kind_and_in_sync_means_the_same_version(reported, held_by, sha):
    finding = drift.classify(
        "erp",
        held("PO-1", *reported) if reported else None,
        latest("PO-1", held_by) if held_by else None,
        sha,
    )
    if reported is None and held_by is None:
        assert finding is None
        return
    assert finding is not None
    if finding.kind is Kind.IN_SYNC:
        assert reported is not None
        assert held_by == reported[0]
        assert not (reported[1] and sha and reported[1] != sha)
    if finding.kind is Kind.STALE:
        assert reported is not None
        assert held_by is not None
        assert reported[0] < held_by
    if finding.repairable:
        assert held_by is not None  # only what syncgov holds can be re-published


@given(keys=st.lists(st.text(min_size=1, max_size=6), unique=True, max_size=40), after=st.text(max_size=6))
def test_the_index_answers_exactly_the_keys_in_the_range(keys, after):
    index = OrderIndex()
    for sequence, key in enumerate(keys, start=1):
        index.follow(_stored("published", key, 1, sequence))
    through = max(keys) if keys and max(keys) > after else ""
    assert [e.key for e in index.in_range(after, through)] == sorted(k for k in keys if drift.covers(k, after, through))


def test_the_index_keeps_the_latest_version_its_cancellation_and_who_acknowledged():
    index = OrderIndex()
    index.follow(_stored("published", "PO-1", 1, 1))
    index.follow(_stored("acknowledged", "PO-1", 1, 2, source="erp"))
    index.follow(_stored("changed", "PO-1", 2, 3))
    index.follow(_stored("held", "PO-1", 4, 4))  # a held version is not the latest
    index.follow(_stored("cancelled", "PO-1", 3, 5))
    entry = index.get("PO-1")
    assert entry == Authoritative("PO-1", 3, 5, True, frozenset({"erp"}))


def _stored(name: str, key: str, version: int, sequence: int, source: str = "procurement") -> StoredEvent:
    envelope = envelope_pb2.EventEnvelope(object_key=key, object_version=version, source_system=source)
    return StoredEvent("SG_PO", sequence, f"sg.po.{key}.{name}", {}, b"", envelope)


def test_the_content_hash_is_the_sha256_of_the_deterministic_encoding():
    order = po_pb2.PurchaseOrder(po_id="PO-1", version=2, supplier_id="SUP-ACME", currency_code="EUR")
    expected = hashlib.sha256(order.SerializeToString(deterministic=True)).hexdigest()
    assert content_sha256(order) == expected
    assert len(expected) == 64
    assert expected == expected.lower()
    copy = po_pb2.PurchaseOrder()
    copy.ParseFromString(order.SerializeToString())
    assert content_sha256(copy) == expected
    copy.version = 1
    assert content_sha256(copy) != expected
