"""Drift reconciliation's rules (issue 13): what a system reports it holds, against the system of record. Pure.

A system reports, in batches, the objects it holds (object type, key, version, content hash). Each batch covers a
key range completely: every object the system holds with a key in ``(covers_after_key, covers_through_key]`` is in
it (both empty: the whole snapshot; ``through`` empty: to the last key). So an object syncgov holds in that range and
the batch lacks is *missing*, with no state kept between batches. Keys compare as Python strings (by code point,
which is also their UTF-8 byte order).

Of each object:

- the system holds the authoritative version (and, when it sent a hash, the same content): **in sync**;
- an older version: **stale**;
- the authoritative version number with other content: **content_differs**;
- nothing, though syncgov holds it in the range: **missing** — except an order whose latest version is a
  cancellation and of which the reporting system never acknowledged any version: it never reached the system, and
  there is nothing left for it to hold;
- an object syncgov does not know, or a version ahead of syncgov's latest: **unknown**.

Stale, missing and differing objects can be repaired (the authoritative version sent to the system's adapter);
unknown ones are for a person (``drift_detected`` names them all).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from libs.runtime.subjects import MAX_KEY_CHARS

PURCHASE_ORDER = "purchase_order"
OBJECT_TYPES = (PURCHASE_ORDER,)  # what drift is reconciled for: the PO stream is the system of record for POs
MAX_OBJECTS = 1_000  # per report batch (libs/runtime/bounds.py holds the edge's copy)
_SHA256_HEX = re.compile("[0-9a-f]{64}")


class Kind(StrEnum):
    IN_SYNC = "in_sync"
    STALE = "stale"
    MISSING = "missing"
    UNKNOWN = "unknown"
    CONTENT_DIFFERS = "content_differs"


DRIFT_KINDS = (Kind.STALE, Kind.MISSING, Kind.UNKNOWN, Kind.CONTENT_DIFFERS)
REPAIRABLE = frozenset({Kind.STALE, Kind.MISSING, Kind.CONTENT_DIFFERS})


@dataclass(frozen=True, slots=True)
class Held:
    """One object a system reports it holds."""

    object_type: str
    key: str
    version: int
    sha256: str = ""  # empty: not compared (version only)


@dataclass(frozen=True, slots=True)
class Authoritative:
    """The system of record's latest version of an order, and where its event is in the stream."""

    key: str
    version: int
    sequence: int
    cancelled: bool = False
    acknowledged_by: frozenset[str] = frozenset()  # systems that acknowledged any version of it


@dataclass(frozen=True, slots=True)
class Finding:
    """One object of a report, classified."""

    key: str
    kind: Kind
    authoritative_version: int  # 0: syncgov holds none
    reported_version: int  # 0: the system holds none
    reason: str
    authoritative_sha256: str = ""
    reported_sha256: str = ""

    @property
    def drifted(self) -> bool:
        return self.kind is not Kind.IN_SYNC

    @property
    def repairable(self) -> bool:
        return self.kind in REPAIRABLE


def covers(key: str, after: str, through: str) -> bool:
    """Whether ``key`` lies in the batch's range ``(after, through]`` (``through`` empty: no upper end)."""
    return key > after and (not through or key <= through)


def problems(
    system: str, declared: Collection[str], objects: Sequence[Held], after: str, through: str
) -> list[tuple[str, str]]:
    """Every reason the batch cannot be compared, as (request field path, why); empty when it can."""
    found: list[tuple[str, str]] = []
    if not system:
        found.append(("system", "is required: the system whose holdings are reported"))
    elif system not in declared:
        found.append(("system", f"{system!r} is not a system the policy in force declares"))
    if through and through <= after:
        found.append(("covers_through_key", f"must come after covers_after_key {after!r} (keys compare as strings)"))
    if len(objects) > MAX_OBJECTS:
        found.append(("objects", f"must have at most {MAX_OBJECTS} entries per batch, got {len(objects)}"))
        return found
    seen: set[str] = set()
    for index, held in enumerate(objects):
        at = f"objects[{index}].object"
        if held.object_type not in OBJECT_TYPES:
            found.append(
                (f"{at}.object_type", f"{held.object_type!r} is not reconciled; supported: {', '.join(OBJECT_TYPES)}")
            )
        if not held.key.strip():
            found.append((f"{at}.object_key", "is required"))
        elif len(held.key) > MAX_KEY_CHARS:
            found.append((f"{at}.object_key", f"must be at most {MAX_KEY_CHARS} characters"))
        elif not covers(held.key, after, through):
            found.append((f"{at}.object_key", f"{held.key!r} lies outside the batch's range {_range(after, through)}"))
        elif held.key in seen:
            found.append((f"{at}.object_key", f"{held.key!r} is reported twice in the batch"))
        seen.add(held.key)
        if held.version < 1:
            found.append((f"{at}.version", "must be at least 1: the version the system holds"))
        if held.sha256 and not _SHA256_HEX.fullmatch(held.sha256):
            found.append((f"objects[{index}].content_sha256", "must be empty or 64 lower-case hex digits (SHA-256)"))
    return found


def _range(after: str, through: str) -> str:
    return f"({after!r}, {through!r}]" if through else f"({after!r}, end]"


def needs_content(objects: Iterable[Held], authoritative: Mapping[str, Authoritative]) -> list[str]:
    """Keys whose authoritative content must be read to compare: the system holds that version and sent a hash."""
    return [
        held.key
        for held in objects
        if held.sha256 and held.key in authoritative and authoritative[held.key].version == held.version
    ]


def classify(system: str, held: Held | None, latest: Authoritative | None, latest_sha256: str = "") -> Finding | None:
    """One object: what ``system`` holds (None: nothing) against syncgov's latest (None: nothing); None when neither
    matters (an order cancelled before it ever reached the system, which it does not hold)."""
    if held is None:
        if latest is None:
            return None
        if latest.cancelled and system not in latest.acknowledged_by:
            return None
        return Finding(
            latest.key,
            Kind.MISSING,
            latest.version,
            0,
            f"{system} holds no version; syncgov's latest is v{latest.version}",
            authoritative_sha256=latest_sha256,
        )
    if latest is None:
        return Finding(
            held.key,
            Kind.UNKNOWN,
            0,
            held.version,
            f"syncgov holds no {held.object_type} {held.key!r}",
            "",
            held.sha256,
        )
    if held.version < latest.version:
        return Finding(
            held.key,
            Kind.STALE,
            latest.version,
            held.version,
            f"{system} holds v{held.version}; syncgov's latest is v{latest.version}",
            latest_sha256,
            held.sha256,
        )
    if held.version > latest.version:
        return Finding(
            held.key,
            Kind.UNKNOWN,
            latest.version,
            held.version,
            f"{system} holds v{held.version}, ahead of syncgov's latest v{latest.version}",
            latest_sha256,
            held.sha256,
        )
    if held.sha256 and latest_sha256 and held.sha256 != latest_sha256:
        return Finding(
            held.key,
            Kind.CONTENT_DIFFERS,
            latest.version,
            held.version,
            f"{system} holds v{held.version} with content {held.sha256[:12]}…; syncgov's v{latest.version} is "
            f"{latest_sha256[:12]}…",
            latest_sha256,
            held.sha256,
        )
    return Finding(held.key, Kind.IN_SYNC, latest.version, held.version, "", latest_sha256, held.sha256)


def compare(
    system: str,
    objects: Sequence[Held],
    authoritative: Mapping[str, Authoritative],
    sha256s: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Every object of the batch's range, by key: what the system reported against ``authoritative`` (syncgov's
    latest of each order in the range) and ``sha256s`` (the content hashes read for :func:`needs_content`)."""
    hashes = sha256s or {}
    reported = {held.key: held for held in objects}
    findings = []
    for key in sorted(reported.keys() | authoritative.keys()):
        finding = classify(system, reported.get(key), authoritative.get(key), hashes.get(key, ""))
        if finding is not None:
            findings.append(finding)
    return findings


def counts(findings: Iterable[Finding]) -> dict[Kind, int]:
    """How many findings of each kind (every kind present, 0 included)."""
    out = dict.fromkeys(Kind, 0)
    for finding in findings:
        out[finding.kind] += 1
    return out


def discriminator(system: str, finding: Finding) -> str:
    """What makes a drift one ``drift_detected`` exception (with the object and its version): the system, the kind
    and both versions. The same drift reported again is the same exception; another one is another."""
    return f"{system}|{finding.kind.value}|v{finding.reported_version}|a{finding.authoritative_version}"


def repair_idempotency_key(system: str, object_type: str, key: str, version: int, report_id: str) -> str:
    """A repair's ``Nats-Msg-Id``: one instruction per report (``report_id``, fresh for each), so a drift found
    again a minute later is repaired again, never dropped as a duplicate of the last repair. A report retried after
    a timeout may queue a version twice; the adapter applies a version it holds already as nothing."""
    return f"repair:{system}:{object_type}:{key}:v{version}:{report_id}"
