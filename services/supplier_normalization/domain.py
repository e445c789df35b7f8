"""The supplier registry: normalize, match, keep golden records with provenance. Pure: in memory, no I/O.

The service feeds it from its JetStream stream (the source of truth) at start
and with every accepted command after; the benchmark feeds it directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from libs.runtime.decider import Recorded, Refusal, RefusalKind
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
class GoldenView:
    golden_id: str
    values: dict[str, object]
    provenance: tuple[Provenance, ...]
    members: tuple[SourceKey, ...]
    status: str
    version: int


def golden_id_for(system: str, local_id: str) -> str:
    """A new golden record's id, derived from the source record that created it: the same on every replica
    and after every restart (ids never come from a counter in memory). A source record creates at most one
    golden record, so the id is unique; the stream's "no event yet" guard would refuse a collision."""
    digest = hashlib.blake2b(f"{system}\x00{local_id}".encode(), digest_size=10).hexdigest().upper()
    return f"SUP-{digest}"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a source record goes, decided from the registry without changing it."""

    key: SourceKey
    golden_id: str
    outcome: Outcome
    created: bool
    changed: bool
    normalized: NormalizedRecord
    suspected: tuple[Candidate, ...]
    block_keys: frozenset[str] | None = None


class SupplierRegistry:
    def __init__(self, owner_of: OwnerOf, thresholds: Thresholds | None = None) -> None:
        self._owner_of = owner_of
        self.index = MatchIndex(thresholds)
        self._sources: dict[SourceKey, NormalizedRecord] = {}
        self._golden_of: dict[SourceKey, str] = {}
        self._golden: dict[str, Golden] = {}

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

    def submit(self, record: SourceRecord, golden_id: str | None = None) -> Placement:
        """Normalize and place one source record; ``golden_id`` replays a placement already decided."""
        return self.submit_normalized(normalize(record), golden_id)

    def submit_normalized(self, normalized: NormalizedRecord, golden_id: str | None = None) -> Placement:
        """Place a record normalized elsewhere (normalization is pure, so a batch can do it in parallel)."""
        placement = self.plan(normalized, golden_id)
        self.apply(placement)
        return placement

    def plan(self, normalized: NormalizedRecord, golden_id: str | None = None) -> Placement:
        """Where ``normalized`` would go, changing nothing: the decision a command appends before it is applied."""
        record = normalized.record
        key = (record.source_system, record.local_id)
        previous = self._sources.get(key)
        existing = self._golden_of.get(key)
        if existing is not None:
            target = self.resolve(existing)
            changed = previous is None or previous.record != normalized.record
            return Placement(key, target, Outcome.MERGED, False, changed, normalized, ())
        if golden_id is not None:
            created = golden_id not in self._golden
            return Placement(key, golden_id, Outcome.NEW if created else Outcome.MERGED, created, True, normalized, ())
        result = self._match(normalized)
        if result.outcome is Outcome.MERGED and result.golden_id is not None:
            target = self.resolve(result.golden_id)
            return Placement(key, target, Outcome.MERGED, False, True, normalized, (), result.block_keys)
        target = golden_id_for(*key)
        suspected = tuple(
            c
            for c in result.candidates
            if c.score >= self.index.thresholds.suspect_at and self.index.decision(target, c.golden_id) is None
        )
        outcome = Outcome.SUSPECTED if suspected else Outcome.NEW
        return Placement(key, target, outcome, True, True, normalized, suspected, result.block_keys)

    def apply(self, placement: Placement) -> None:
        self._place(placement.key, placement.golden_id, placement.normalized, placement.changed, placement.block_keys)

    def preview(self, placement: Placement) -> GoldenView:
        """The golden record as it will be once ``placement`` is applied (the registry is not changed)."""
        golden = self._golden.get(placement.golden_id) or Golden(placement.golden_id)
        members = list(golden.members)
        if placement.key not in members:
            members.append(placement.key)
        sources = [placement.normalized if k == placement.key else self._sources[k] for k in members]
        version = golden.version + (1 if placement.changed else 0)
        return self._view(golden.golden_id, sources, tuple(members), golden.status, version)

    def record_version(self, golden_id: str, version: int) -> None:
        """Take a golden record's version from the event that stored it: the stream, not this process's
        arithmetic, says which version a record is at (normalization may change between releases)."""
        if version > 0 and golden_id in self._golden:
            self._golden[self.resolve(golden_id)].version = version

    def preview_merge(self, surviving: str, merged: str) -> GoldenView:
        """The surviving golden record as it will be once ``merged`` joined it (the registry is not changed)."""
        keep, gone = self._golden[self.resolve(surviving)], self._golden[self.resolve(merged)]
        keys = (*keep.members, *gone.members)
        return self._view(keep.golden_id, [self._sources[k] for k in keys], keys, keep.status, keep.version + 1)

    def exists(self, golden_id: str) -> bool:
        return golden_id in self._golden

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
        return self._view(golden.golden_id, members, tuple(golden.members), golden.status, golden.version)

    def _view(
        self, golden_id: str, members: list[NormalizedRecord], keys: tuple[SourceKey, ...], status: str, version: int
    ) -> GoldenView:
        values: dict[str, object] = {}
        provenance: list[Provenance] = []
        for name in GOLDEN_FIELDS:
            attribute = _SOURCE_ATTRIBUTE.get(name, name)
            owner = self._owner_of(name)
            filled = [m for m in members if getattr(m.record, attribute)]
            owned = [m for m in filled if m.record.source_system == owner]
            if not filled:  # no source has the field (``owned`` is a part of ``filled``)
                continue
            chosen = (owned or filled)[-1]
            values[name] = getattr(chosen.record, attribute)
            provenance.append(Provenance(name, chosen.record.source_system, chosen.record.local_id, bool(owned)))
        country = next((m.record.country for m in reversed(members) if m.record.country), "")
        values["country"] = country
        return GoldenView(golden_id, values, tuple(provenance), keys, status, version)

    def clusters(self) -> dict[str, list[SourceKey]]:
        return {g.golden_id: list(g.members) for g in self._golden.values() if g.status != MERGED}


# --- A golden record as a decider (DESIGN §3 rule 9) --------------------------------------------------------
#
# Matching decides *where* a record goes (``SupplierRegistry.plan``, from the registry as it is); the golden
# record's own history decides whether that change may be appended: the registry is a projection of the
# stream and changes only once the stream acknowledged the change (``apply`` after the append).

UPSERTED, MERGED_EVENT, DECIDED, STATUS = "upserted", "merged", "decided", "status"


@dataclass(frozen=True, slots=True)
class SupplierChange:
    """One event on a golden record's subject. ``payload`` is its contract form, opaque here."""

    kind: str  # UPSERTED | MERGED_EVENT | DECIDED | STATUS
    golden_id: str
    version: int  # the golden record's version after it (0 for decisions, which change no record)
    idempotency_key: str
    status: str = ""  # STATUS: the new status
    payload: object = None
    source_system: str = ""
    # UPSERTED decided in this process: the placement the registry planned (applied as is, not normalized again)
    placement: Placement | None = None


@dataclass(frozen=True, slots=True)
class GoldenState:
    version: int = 0
    status: str = ACTIVE

    @property
    def exists(self) -> bool:
        return self.version > 0


GOLDEN_INITIAL = GoldenState()


def evolve_golden(state: GoldenState, recorded: Recorded[SupplierChange]) -> GoldenState:
    change = recorded.event
    if change.kind == DECIDED:
        return state
    if change.kind == STATUS:
        return GoldenState(change.version, change.status)
    return GoldenState(max(state.version, change.version), state.status)


def decide_change(change: SupplierChange, state: GoldenState, *, creates: bool) -> SupplierChange | Refusal | None:
    """Append ``change`` only if the golden record's history is where the registry believed it was."""
    if creates and state.exists:
        return Refusal(
            RefusalKind.CONFLICT,
            "GOLDEN_ID_TAKEN",
            f"golden supplier {change.golden_id} exists already; its source record was placed before",
        )
    if change.kind == STATUS and state.exists and state.status == change.status:
        return None  # the status asked for is the status it has: a retry, or nothing to do
    if change.kind != DECIDED and not creates and not state.exists:
        return Refusal(RefusalKind.NOT_FOUND, "SUPPLIER_NOT_FOUND", f"no golden supplier {change.golden_id!r}")
    if change.kind != DECIDED and change.version != state.version + 1:
        # Only a second writer moves a golden record behind this process's registry: refuse rather than
        # overwrite what it wrote (supplier-normalization runs as one writer; see docs/decisions.md).
        return Refusal(
            RefusalKind.PRECONDITION,
            "REGISTRY_BEHIND_STREAM",
            f"golden supplier {change.golden_id} is at version {state.version} in the stream, "
            f"not {change.version - 1}; retry once the registry caught up",
            subject=f"{OBJECT_TYPE}/{change.golden_id}",
        )
    return change


def already_one(named: str, other: str, golden: str, other_golden: str) -> Refusal | None:
    """Merging or deciding on two records that resolve to one golden supplier leaves nothing to do."""
    if golden != other_golden:
        return None
    return Refusal(
        RefusalKind.PRECONDITION,
        "ALREADY_MERGED",
        f"{named} and {other} are one golden supplier already ({golden}); nothing is left to decide",
        subject=f"{OBJECT_TYPE}/{golden}",
    )
