"""The one command loop every write runs through (DESIGN §3 rule 9): read, fold, decide, append, evolve.

``CommandHandler.run(key, decide)`` reads the object's history from its log,
folds it with the domain's ``evolve``, asks ``decide`` (a pure function of the
state) what happens, appends the event guarded by the last sequence it read,
and only then folds the appended event into the state and tells the
projections. When another writer got there first the guard trips, the handler
reads what it missed and decides again — a bounded number of times, then
ABORTED. Nothing outside the log changes unless the log acknowledged the append.

Folded states are kept in a small in-process cache bounded by bytes, each with
the stream sequence it reflects: a state is never trusted on its own. Before it
answers with a refusal or a replay it reads whatever came after that sequence
(one round trip that normally finds nothing), and an append from a stale state
is refused by the stream's guard. A command that creates an object may skip the
read altogether (``assume_new``): the guard "no event yet" checks the guess.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from redis.exceptions import RedisError

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from libs.runtime.errors import Aborted
from libs.runtime.events import Event, EventPublisher, EventReader, StoredEvent, WrongLastSequence
from libs.runtime.idempotency import IdempotencyConflict, IdempotencyStore

log = logging.getLogger(__name__)

S = TypeVar("S")
E = TypeVar("E")
S_contra = TypeVar("S_contra", contravariant=True)  # a projection of a wider state serves a narrower one

DEFAULT_ATTEMPTS = 5
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Entry(Generic[E]):
    """One entry of an object's log: its sequence, and the domain event it holds (None: not one of ours)."""

    sequence: int
    recorded: Recorded[E] | None


@dataclass(frozen=True, slots=True)
class Appended(Generic[E]):
    """What the log says of an append: where the event landed, or that it held this write already."""

    recorded: Recorded[E]
    duplicate_of_other_object: bool = False  # the idempotency key names an event of another object
    duplicate: bool = False  # the log recognised the write (same idempotency key) and stored nothing new
    same_content: bool = True  # for a duplicate: whether what the log holds under the key is this very write


class EventLog(Protocol[E]):
    """Where an object type's events live. ``append`` raises WrongLastSequence when the guard trips."""

    async def read(self, key: str, after: int) -> Sequence[Entry[E]]: ...

    async def append(self, key: str, event: E, expected_last_sequence: int) -> Appended[E]: ...


class Projection(Protocol[S_contra, E]):
    """A read model fed by the handler after the log acknowledged an append (``recorded``), and after a replay
    (``recorded`` None: the state the command found, at ``sequence``), so a projection that missed the original
    append catches up. It must be idempotent and must not fail the command: the event is stored by then."""

    async def applied(self, key: str, state: S_contra, sequence: int, recorded: Recorded[E] | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome(Generic[S, E]):
    """A command that was not refused: the state after it, and the event it appended (None: nothing new —
    the command had been applied already, so the answer is a replay)."""

    state: S
    recorded: Recorded[E] | None

    @property
    def replayed(self) -> bool:
        return self.recorded is None


@dataclass(frozen=True, slots=True)
class Claim:
    """A caller-chosen idempotency key and the fingerprint of the content it stands for. A natural key names
    the object and version, so the object's history judges it; a chosen key could name anything, so it is
    checked against the keys seen before (Valkey, then the broker's window)."""

    key: str
    fingerprint: str


def key_reused(key: str) -> Refusal:
    return Refusal(
        RefusalKind.CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
        f"the idempotency key {key!r} was used before for other content; choose a new key for a new command",
        metadata={"idempotency_key": key},
        exception="duplicate_transaction",
    )


@dataclass(frozen=True, slots=True)
class _Folded(Generic[S]):
    state: S
    last_sequence: int
    verified: bool  # read up to the log's end during this command


class CommandHandler(Generic[S, E]):
    def __init__(
        self,
        log_: EventLog[E],
        *,
        initial: S,
        evolve: Callable[[S, Recorded[E]], S],
        size_of: Callable[[S], int] = lambda _state: 1024,
        projections: Sequence[Projection[S, E]] = (),
        attempts: int = DEFAULT_ATTEMPTS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        claims: IdempotencyStore | None = None,
        name: str = "object",
    ) -> None:
        self._log = log_
        self._initial = initial
        self._evolve = evolve
        self._size_of = size_of
        self._projections = tuple(projections)
        self._attempts = attempts
        self._cache_limit = cache_bytes
        self._cache: OrderedDict[str, tuple[S, int, int]] = OrderedDict()
        self._cached_bytes = 0
        self._claims = claims
        self._name = name

    async def state(self, key: str) -> S:
        """The object's current state, read to the log's end (for queries)."""
        return (await self._load(key)).state

    async def run(
        self,
        key: str,
        decide: Callable[[S], E | Refusal | None],
        *,
        assume_new: bool = False,
        claim: Claim | None = None,
    ) -> Outcome[S, E] | Refusal:
        if claim is not None and self._claims is not None:
            try:
                await self._claims.lookup(claim.key, claim.fingerprint)
            except IdempotencyConflict:
                return key_reused(claim.key)
            except RedisError as error:  # Valkey is a cache: the broker's window and the history still judge
                log.warning("idempotency key not checked in Valkey (%s); the stream decides", error)
        folded = self._guess(key, assume_new) or await self._load(key)
        for _attempt in range(self._attempts):
            decision = decide(folded.state)
            if decision is None or isinstance(decision, Refusal):
                if not folded.verified:  # a guessed or cached state: make sure nothing came after it
                    folded = await self._load(key, folded)
                    continue
                if decision is None:
                    await self._project(key, folded.state, folded.last_sequence, None)
                    return Outcome(folded.state, None)
                return decision
            try:
                appended = await self._log.append(key, decision, folded.last_sequence)
            except WrongLastSequence:
                before = folded.last_sequence
                folded = await self._load(key, folded)  # another writer won: read what it wrote, decide again
                if folded.last_sequence == before:  # nothing after the cached state: it is not the stream's
                    self.forget(key)
                    folded = await self._load(key)
                continue
            if appended.duplicate_of_other_object:
                return key_reused(appended.recorded.idempotency_key)
            if appended.duplicate:  # the log holds a write under this command's idempotency key already
                folded = await self._load(key, folded)
                if appended.same_content:  # this very write, stored before: a replay
                    await self._project(key, folded.state, folded.last_sequence, None)
                    return Outcome(folded.state, None)
                # Other content under the key: the history judges (a duplicate transaction), else the key
                # was reused for a new write — never answered OK, since nothing would be stored.
                again = decide(folded.state)
                if isinstance(again, Refusal):
                    return again
                if again is None:
                    await self._project(key, folded.state, folded.last_sequence, None)
                    return Outcome(folded.state, None)
                return key_reused(appended.recorded.idempotency_key)
            state = self._evolve(folded.state, appended.recorded)
            self._remember(key, state, appended.recorded.sequence)
            await self._project(key, state, appended.recorded.sequence, appended.recorded)
            if claim is not None and self._claims is not None:
                try:
                    await self._claims.remember(claim.key, claim.fingerprint, key.encode())
                except IdempotencyConflict:  # the append stands; the other command is refused
                    pass
                except RedisError as error:  # the stream holds the event; the broker's window covers the key
                    log.warning("idempotency key %r not remembered in Valkey: %s", claim.key[:80], error)
            return Outcome(state, appended.recorded)
        raise Aborted(
            f"{self._name} {key} kept changing while this command was decided ({self._attempts} attempts); "
            "read it again and retry",
            reason="CONCURRENT_WRITE",
            metadata={"key": key},
        )

    async def _project(self, key: str, state: S, sequence: int, recorded: Recorded[E] | None) -> None:
        for projection in self._projections:
            await projection.applied(key, state, sequence, recorded)

    def forget(self, key: str) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cached_bytes -= entry[2]

    def _guess(self, key: str, assume_new: bool) -> _Folded[S] | None:
        """A state to decide on before reading: the cached one, or (creating) "no event yet"; None: read first."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return _Folded(cached[0], cached[1], verified=False)
        if assume_new:
            return _Folded(self._initial, 0, verified=False)
        return None

    async def _load(self, key: str, start: _Folded[S] | None = None) -> _Folded[S]:
        """Fold whatever the log holds after ``start`` (the cached state, else nothing)."""
        if start is None:
            cached = self._cache.get(key)
            start = _Folded(cached[0], cached[1], False) if cached else _Folded(self._initial, 0, False)
        state, last = start.state, start.last_sequence
        entries = await self._log.read(key, last)
        for entry in entries:
            if entry.recorded is not None:
                state = self._evolve(state, entry.recorded)
            last = entry.sequence
        if entries:  # an object with no events is not cached: a query for any id must not evict real states
            self._remember(key, state, last)
        return _Folded(state, last, verified=True)

    def _remember(self, key: str, state: S, sequence: int) -> None:
        size = self._size_of(state)
        self.forget(key)
        if size > self._cache_limit // 4:  # one huge object must not empty the cache for everyone else
            return
        self._cache[key] = (state, sequence, size)
        self._cached_bytes += size
        while self._cached_bytes > self._cache_limit and self._cache:
            _, (_, _, evicted) = self._cache.popitem(last=False)
            self._cached_bytes -= evicted


class StreamLog(Generic[E]):
    """An :class:`EventLog` over a domain stream: one subject per object (``<ns>.<domain>.<key>.<event>``),
    the envelope around every event, the subject guard of DESIGN §3 rule 2."""

    def __init__(
        self,
        publisher: EventPublisher,
        reader: EventReader,
        domain: str,
        *,
        encode: Callable[[str, E], Event],
        decode: Callable[[StoredEvent], E | None],
        settle: Callable[[E, Event], E] | None = None,
    ) -> None:
        self._publisher = publisher
        self._reader = reader
        self._domain = domain
        self._encode = encode
        self._decode = decode
        # What the decided event becomes once encoded, when encoding completes it (e.g. a document built from
        # the previous version's): the state must fold what the stream holds.
        self._settle = settle

    async def read(self, key: str, after: int) -> list[Entry[E]]:
        return [self.entry(stored) for stored in await self._reader.history(self._domain, key, after=after)]

    def entry(self, stored: StoredEvent) -> Entry[E]:
        event = self._decode(stored)
        return Entry(stored.sequence, None if event is None else recorded(stored, event))

    async def append(self, key: str, event: E, expected_last_sequence: int) -> Appended[E]:
        message = self._encode(key, event)
        published = await self._publisher.publish(message, expected_last_sequence=expected_last_sequence)
        envelope = published.envelope
        if published.duplicate:
            stored = await self._reader.at(self._domain, published.sequence)
            other = stored.envelope.object_key != key or stored.envelope.object_type != message.object_type
            decoded = self._decode(stored)
            return Appended(
                recorded(stored, decoded if decoded is not None else event),
                duplicate_of_other_object=other,
                duplicate=True,
                same_content=stored.envelope.payload.value == envelope.payload.value,
            )
        if self._settle is not None:
            event = self._settle(event, message)
        return Appended(
            Recorded(
                event,
                published.sequence,
                envelope.event_id,
                envelope.recorded_at.ToNanoseconds(),
                envelope.idempotency_key,
                envelope.source_system,
            )
        )


def recorded(stored: StoredEvent, event: E) -> Recorded[E]:
    envelope = stored.envelope
    return Recorded(
        event,
        stored.sequence,
        envelope.event_id,
        envelope.recorded_at.ToNanoseconds(),
        envelope.idempotency_key,
        envelope.source_system,
    )


async def fold_stream(
    reader: EventReader,
    domain: str,
    decode: Callable[[StoredEvent], E | None],
    evolve: Callable[[S, Recorded[E]], S],
    initial: S,
) -> tuple[dict[str, tuple[S, int]], int]:
    """Every object of a domain's stream folded from its events, oldest first, with the sequence of its last event,
    and how many events were read (events ``decode`` does not know are skipped): what a read model's rebuild
    projects."""
    states: dict[str, tuple[S, int]] = {}
    count = 0
    async for stored in reader.scan(domain):
        count += 1
        event = decode(stored)
        if event is None:
            continue
        key = stored.envelope.object_key
        state = states.get(key, (initial, 0))[0]
        states[key] = (evolve(state, recorded(stored, event)), stored.sequence)
    return states, count
