"""The supplier registry: normalize, match, keep golden records with provenance. Pure: in memory, no I/O.

The service feeds it from its JetStream stream (the source of truth) at start
and with every accepted command after; the benchmark feeds it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from services.supplier_normalization.matching import Candidate, MatchIndex, MatchResult, Outcome, Thresholds
from services.supplier_normalization.normalize import NormalizedRecord, SourceRecord, normalize

OBJECT_TYPE = "supplier"
# Golden-record fields and the record attribute each comes from.
GOLDEN_FIELDS = ("legal_name", "tax_ids", "addresses", "contacts", "bank_accounts", "payment_terms")
_SOURCE_ATTRIBUTE = {"tax_ids": "identifiers"}

ACTIVE, BLOCKED, INACTIVE, MERGED = "active", "blocked", "inactive", "merged"

SourceKey = tuple[str, str]  # (system, local id)
OwnerOf = Callable[[str], str]  # golden field -> owning system (from policy)


@dataclass(frozen=True, slots=True)
class Provenance:
    field: str
    source_system: str
    local_id: str
    owner: bool  # False: the owning system had no value, so another source filled in


@dataclass
class Golden:
    golden_id: str
    members: list[SourceKey] = field(default_factory=list)
    status: str = ACTIVE
    merged_into: str | None = None
    version: int = 0


@dataclass(frozen=True, slots=True)
class Submission:
    golden_id: str
    outcome: Outcome
    created: bool
    changed: bool
    normalized: NormalizedRecord
    suspected: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class GoldenView:
    golden_id: str
    values: dict[str, object]
    provenance: tuple[Provenance, ...]
    members: tuple[SourceKey, ...]
    status: str
    version: int


class SupplierRegistry:
    def __init__(
        self, owner_of: OwnerOf, thresholds: Thresholds | None = None, new_id: Callable[[], str] | None = None
    ) -> None:
        self._owner_of = owner_of
        self.index = MatchIndex(thresholds)
        self._sources: dict[SourceKey, NormalizedRecord] = {}
        self._golden_of: dict[SourceKey, str] = {}
        self._golden: dict[str, Golden] = {}
        self._counter = 0
        self._new_id = new_id or self._next_id

    def _next_id(self) -> str:
        self._counter += 1
        return f"SUP-{self._counter:08d}"

    def __len__(self) -> int:
        return sum(1 for g in self._golden.values() if g.status != MERGED)

    def resolve(self, golden_id: str) -> str:
        golden = self._golden[golden_id]
        while golden.merged_into is not None:
            golden = self._golden[golden.merged_into]
        return golden.golden_id

    def golden_of(self, system: str, local_id: str) -> str | None:
        golden = self._golden_of.get((system, local_id))
        return self.resolve(golden) if golden else None

    def source(self, system: str, local_id: str) -> NormalizedRecord | None:
        return self._sources.get((system, local_id))

    def submit(self, record: SourceRecord, golden_id: str | None = None) -> Submission:
        """Normalize and place one source record; ``golden_id`` replays a placement already decided."""
        return self.submit_normalized(normalize(record), golden_id)

    def submit_normalized(self, normalized: NormalizedRecord, golden_id: str | None = None) -> Submission:
        """Place a record normalized elsewhere (normalization is pure, so a batch can do it in parallel)."""
        record = normalized.record
        key = (record.source_system, record.local_id)
        previous = self._sources.get(key)
        existing = self._golden_of.get(key)
        if existing is not None:
            target = self.resolve(existing)
            changed = previous is None or previous.record != normalized.record
            self._place(key, target, normalized, changed)
            return Submission(target, Outcome.MERGED, False, changed, normalized, ())
        if golden_id is not None:
            created = golden_id not in self._golden
            self._place(key, golden_id, normalized, True)
            return Submission(golden_id, Outcome.NEW if created else Outcome.MERGED, created, True, normalized, ())
        result = self._match(normalized)
        if result.outcome is Outcome.MERGED and result.golden_id is not None:
            target = self.resolve(result.golden_id)
            self._place(key, target, normalized, True, result.block_keys)
            return Submission(target, Outcome.MERGED, False, True, normalized, ())
        target = self._new_id()
        self._place(key, target, normalized, True, result.block_keys)
        suspected = tuple(
            c
            for c in result.candidates
            if c.score >= self.index.thresholds.suspect_at and self.index.decision(target, c.golden_id) is None
        )
        outcome = Outcome.SUSPECTED if suspected else Outcome.NEW
        return Submission(target, outcome, True, True, normalized, suspected)

    def candidates(self, record: SourceRecord) -> MatchResult:
        """Where a record would land, placing nothing (candidates resolved to surviving golden records)."""
        return self._match(normalize(record))

    def _match(self, normalized: NormalizedRecord) -> MatchResult:
        result = self.index.match(normalized)
        resolved = tuple(
            Candidate(self.resolve(c.golden_id), c.score, c.reasons, c.field_scores) for c in result.candidates
        )
        unique: dict[str, Candidate] = {}
        for candidate in resolved:
            if self._golden[candidate.golden_id].status == MERGED:
                continue
            unique.setdefault(candidate.golden_id, candidate)
        golden = self.resolve(result.golden_id) if result.golden_id else None
        return MatchResult(result.outcome, golden, tuple(unique.values()), result.block_keys)

    def _place(
        self,
        key: SourceKey,
        golden_id: str,
        normalized: NormalizedRecord,
        changed: bool,
        block_keys: frozenset[str] | None = None,
    ) -> None:
        golden = self._golden.get(golden_id)
        if golden is None:
            golden = self._golden[golden_id] = Golden(golden_id)
        if key not in golden.members:
            golden.members.append(key)
        self._sources[key] = normalized
        self._golden_of[key] = golden_id
        self.index.add(golden_id, normalized, block_keys)
        if changed:
            golden.version += 1

    def merge(self, surviving: str, merged: str) -> None:
        surviving, merged = self.resolve(surviving), self.resolve(merged)
        if surviving == merged:
            return
        keep, gone = self._golden[surviving], self._golden[merged]
        for key in gone.members:
            keep.members.append(key)
            self._golden_of[key] = surviving
            self.index.add(surviving, self._sources[key])
        gone.members = []
        gone.status, gone.merged_into = MERGED, surviving
        keep.version += 1
        self.index.remember_decision(surviving, merged, True)

    def keep_apart(self, first: str, second: str) -> None:
        self.index.remember_decision(self.resolve(first), self.resolve(second), False)

    def set_status(self, golden_id: str, status: str) -> None:
        golden = self._golden[self.resolve(golden_id)]
        golden.status = status
        golden.version += 1

    def view(self, golden_id: str) -> GoldenView:
        """The golden record: each field from the newest source of the system that owns it."""
        golden = self._golden[self.resolve(golden_id)]
        members = [self._sources[k] for k in golden.members]
        values: dict[str, object] = {}
        provenance: list[Provenance] = []
        for name in GOLDEN_FIELDS:
            attribute = _SOURCE_ATTRIBUTE.get(name, name)
            owner = self._owner_of(name)
            filled = [m for m in members if getattr(m.record, attribute)]
            owned = [m for m in filled if m.record.source_system == owner]
            chosen = (owned or filled or [None])[-1]
            if chosen is None:
                continue
            values[name] = getattr(chosen.record, attribute)
            provenance.append(Provenance(name, chosen.record.source_system, chosen.record.local_id, bool(owned)))
        country = next((m.record.country for m in reversed(members) if m.record.country), "")
        values["country"] = country
        return GoldenView(
            golden.golden_id, values, tuple(provenance), tuple(golden.members), golden.status, golden.version
        )

    def clusters(self) -> dict[str, list[SourceKey]]:
        return {g.golden_id: list(g.members) for g in self._golden.values() if g.status != MERGED}
