"""Which golden record a normalized supplier record belongs to. Pure: an in-memory index, no I/O.

1. Strong identifiers first: an equal VAT/EIN/UID/LEI/DUNS/GLN number or IBAN
   names the same supplier. Two records whose legal-entity identifiers of one
   family *differ* are different companies, however alike their names.
2. Then names and addresses, compared only within blocks (country + a name
   token, country + postal code) so the work per record stays near-constant
   as the index grows. Tokens that would make a huge block (``services``,
   ``trading``) are not used as block keys.
3. A score at or above ``merge_at`` merges; from ``suspect_at`` it is a
   suspected duplicate for a person; below, a new golden record. A person's
   decision on a pair is remembered and wins over every later score.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum

from rapidfuzz import fuzz, process

from services.supplier_normalization.normalize import NormalizedRecord

MAX_BLOCK = 80  # a block key shared by more golden records than this is too common to compare on
MAX_SCORED = 25  # candidates scored in full per record, best names first
MAX_STREETS = 8  # street spellings kept per golden record for address comparison
NAME_WEIGHT, STREET_WEIGHT, POSTAL_WEIGHT = 0.6, 0.3, 0.1
ADDRESS_WEIGHT = STREET_WEIGHT + POSTAL_WEIGHT
_STOPWORDS = frozenset({"the", "and", "of", "for", "de", "la", "le", "der", "die", "und", "et", "co", "company"})


class Outcome(Enum):
    NEW = "new"
    MERGED = "merged"
    SUSPECTED = "suspected"


@dataclass(frozen=True, slots=True)
class Thresholds:
    merge_at: float = 92.0
    suspect_at: float = 80.0


@dataclass(frozen=True, slots=True)
class Candidate:
    golden_id: str
    score: float
    reasons: tuple[str, ...]
    field_scores: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class MatchResult:
    outcome: Outcome
    golden_id: str | None  # the golden record merged into; None for NEW and SUSPECTED
    candidates: tuple[Candidate, ...]  # best first
    block_keys: frozenset[str] = frozenset()  # the record's blocks, so placing it need not compute them again


@dataclass
class _Features:
    name_key: str
    country: str
    postal_codes: set[str] = field(default_factory=set)
    streets: set[str] = field(default_factory=set)
    tax_keys: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def _block_keys(record: NormalizedRecord) -> set[str]:
    country = record.record.country
    tokens = [t for t in record.name_key.split() if len(t) >= 3 and t not in _STOPWORDS]
    keys = {f"n:{country}:{token[:6]}" for token in tokens[:4]}
    if record.name_key:
        keys.add(f"p:{country}:{record.name_key[:4]}")
    for address in record.record.addresses:
        if address.postal_code:
            keys.add(f"z:{country}:{address.postal_code}")
    return keys


def _street(record: NormalizedRecord) -> set[str]:
    return {" ".join(a.lines).casefold() for a in record.record.addresses if a.lines}


class MatchIndex:
    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self._strong: dict[tuple[str, str], str] = {}
        self._blocks: dict[str, list[str]] = defaultdict(list)
        self._features: dict[str, _Features] = {}
        self._decisions: dict[frozenset[str], bool] = {}  # pair of golden ids -> same supplier?

    def __len__(self) -> int:
        return len(self._features)

    def remember_decision(self, first: str, second: str, same: bool) -> None:
        self._decisions[frozenset((first, second))] = same

    def decision(self, first: str, second: str) -> bool | None:
        return self._decisions.get(frozenset((first, second)))

    def match(self, record: NormalizedRecord, *, exclude: str | None = None) -> MatchResult:
        """Where ``record`` belongs, without changing the index."""
        candidates: dict[str, Candidate] = {}
        for key in record.strong_keys:
            golden = self._strong.get(key)
            if golden is not None and golden != exclude:
                reason = f"same_{key[0]}"
                previous = candidates.get(golden)
                reasons = (*previous.reasons, reason) if previous else (reason,)
                candidates[golden] = Candidate(golden, 100.0, reasons)
        keys = frozenset(_block_keys(record))
        pool: set[str] = set()
        for block_key in keys:
            block = self._blocks.get(block_key)
            if block and len(block) <= MAX_BLOCK:
                pool.update(block)
        pool.difference_update(candidates)
        pool.discard(exclude or "")
        if pool:
            # Names first, in rapidfuzz's C loop: a candidate whose name is too far off cannot reach the
            # suspect threshold whatever its address, so only the survivors are scored in full.
            names = {golden: self._features[golden].name_key for golden in pool}
            cutoff = self._name_cutoff()
            streets = _street(record)
            postal = {a.postal_code for a in record.record.addresses if a.postal_code}
            for _, name_score, golden in process.extract(
                record.name_key, names, scorer=fuzz.WRatio, score_cutoff=cutoff, limit=MAX_SCORED
            ):
                candidate = self._score(record, golden, name_score, streets, postal)
                if candidate.score >= self.thresholds.suspect_at:
                    candidates[golden] = candidate
        for golden, candidate in list(candidates.items()):
            conflict = self._conflicting_tax_ids(record, golden)
            if conflict:
                capped = min(candidate.score, self.thresholds.suspect_at - 1)
                reasons = (*candidate.reasons, f"different_{conflict}")
                candidates[golden] = Candidate(golden, capped, reasons, candidate.field_scores)
        ranked = tuple(sorted(candidates.values(), key=lambda c: -c.score))
        return self._decide(ranked, keys)

    def _decide(self, ranked: tuple[Candidate, ...], keys: frozenset[str] = frozenset()) -> MatchResult:
        for candidate in ranked:
            if candidate.score < self.thresholds.suspect_at:
                break
            return MatchResult(
                Outcome.MERGED if candidate.score >= self.thresholds.merge_at else Outcome.SUSPECTED,
                candidate.golden_id if candidate.score >= self.thresholds.merge_at else None,
                ranked,
                keys,
            )
        return MatchResult(Outcome.NEW, None, ranked, keys)

    def apply_decisions(self, result: MatchResult, known_pairs: dict[str, bool]) -> MatchResult:
        """A person's earlier word on (this record's golden record, candidate) overrides the score."""
        for candidate in result.candidates:
            same = known_pairs.get(candidate.golden_id)
            if same is True:
                return MatchResult(Outcome.MERGED, candidate.golden_id, result.candidates)
        remaining = tuple(c for c in result.candidates if known_pairs.get(c.golden_id) is not False)
        return self._decide(remaining, result.block_keys)

    def add(self, golden_id: str, record: NormalizedRecord, keys: frozenset[str] | None = None) -> None:
        """Make ``record`` findable as part of ``golden_id``."""
        features = self._features.get(golden_id)
        if features is None:
            features = self._features[golden_id] = _Features(record.name_key, record.record.country)
        for key in record.strong_keys:
            self._strong.setdefault(key, golden_id)
        for family, value in record.tax_keys.items():
            features.tax_keys[family].add(value)
        features.postal_codes.update(a.postal_code for a in record.record.addresses if a.postal_code)
        if len(features.streets) < MAX_STREETS:  # a golden record's addresses are few; stop a runaway
            features.streets.update(_street(record))
        for block_key in keys if keys is not None else _block_keys(record):
            block = self._blocks[block_key]
            if golden_id not in block and len(block) <= MAX_BLOCK:
                block.append(golden_id)

    def _name_cutoff(self) -> float:
        """The lowest name score that can still reach the suspect threshold with a perfect address."""
        return max(0.0, (self.thresholds.suspect_at - ADDRESS_WEIGHT * 100) / NAME_WEIGHT)

    def _score(
        self, record: NormalizedRecord, golden: str, name: float, streets: set[str], postal: set[str]
    ) -> Candidate:
        features = self._features[golden]
        scores = [("name", name)]
        reasons = ["similar_name"]
        if streets and features.streets:
            street = max(process.extractOne(a, features.streets, scorer=fuzz.token_set_ratio)[1] for a in streets)
            scores.append(("street", street))
            same_postal = bool(postal & features.postal_codes)
            scores.append(("postal_code", 100.0 if same_postal else 0.0))
            # A near-identical name at the same address is strong; the same name elsewhere is not.
            score = NAME_WEIGHT * name + STREET_WEIGHT * street + POSTAL_WEIGHT * (100.0 if same_postal else 0.0)
            reasons.append("similar_address" if street >= 80 else "different_address")
        else:
            score = name
        if record.record.country and features.country and record.record.country != features.country:
            score -= 15
            reasons.append("different_country")
        return Candidate(golden, round(score, 2), tuple(reasons), tuple(scores))

    def _conflicting_tax_ids(self, record: NormalizedRecord, golden: str) -> str | None:
        features = self._features[golden]
        for family, value in record.tax_keys.items():
            known = features.tax_keys.get(family)
            if known and value not in known:
                return f"{family}"
        return None
