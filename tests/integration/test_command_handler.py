"""The one command loop against a real nats-server: guarded appends, lost races decided again, stale cached
states never trusted, projections told only of what the stream acknowledged.

Two handlers over one stream behave as two replicas of a service; the PO domain is the object type."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nats
import pytest
from opentelemetry.sdk.trace import TracerProvider

from libs.runtime.commands import Appended, CommandHandler, Outcome, StreamLog
from libs.runtime.decider import Recorded, Refusal
from libs.runtime.errors import Aborted
from libs.runtime.events import EventPublisher, EventReader
from libs.runtime.streams import PO, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.testing import unique_namespace
from services.po_publication import domain, mapping
from services.po_publication.store import order_log, size_of
from tests.integration.helpers import message_count, requests_of, sample_order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]
RULES = domain.Rules(hold_window=timedelta(minutes=5))
Handler = CommandHandler[domain.OrderState, domain.OrderEvent]


@dataclass
class Seen:
    """A projection that records what it was told."""

    sequences: list[int] = field(default_factory=list)

    async def applied(
        self, key: str, state: domain.OrderState, sequence: int, recorded: Recorded[domain.OrderEvent] | None
    ) -> None:
        if recorded is not None:
            self.sequences.append(recorded.sequence)


@pytest.fixture
async def env(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    namespace = Namespace(unique_namespace())
    await provision_streams(js, namespace, (PO,))
    publisher = EventPublisher(requests_of(js), namespace, TracerProvider().get_tracer("test"), timeout=5)
    yield js, namespace, publisher, EventReader(requests_of(js), namespace)
    await nc.drain()


def handler(env, projection: Seen | None = None, log=None) -> Handler:
    _, _, publisher, reader = env
    return CommandHandler(
        log or order_log(publisher, reader),
        initial=domain.INITIAL,
        evolve=domain.evolve,
        size_of=size_of,
        projections=(projection,) if projection else (),
        name="purchase order",
    )


def version(number: int, quantity: str = "10"):
    document = sample_order(quantity=quantity)
    document.version = number
    order, problems = mapping.to_domain(document)
    assert order is not None, problems
    return order, document


def publish(number: int = 1, quantity: str = "10") -> domain.OrderCommand:
    order, document = version(number, quantity)
    key = domain.natural_idempotency_key("procurement", order.po_id, number)
    fingerprint = f"fp-{number}-{quantity}"
    if number == 1:
        return domain.PublishOrder(order, document, fingerprint, key, "procurement")
    return domain.ChangeOrder(order, document, fingerprint, key, "procurement")


def acknowledge(number: int) -> domain.OrderCommand:
    return domain.AcknowledgeVersion("PO-1001", number, f"4500{number}", datetime.now(UTC), "erp")


async def run(commands: Handler, command: domain.OrderCommand, **options) -> Outcome | Refusal:
    now = datetime.now(UTC)
    return await commands.run("PO-1001", lambda state: domain.decide(command, state, now, RULES), **options)


async def test_an_append_tells_the_projection_and_a_replay_writes_nothing(env):
    js, namespace, _, _ = env
    seen = Seen()
    commands = handler(env, seen)
    first = await run(commands, publish(), assume_new=True)
    assert isinstance(first, Outcome)
    assert first.recorded is not None
    again = await run(commands, publish(), assume_new=True)
    assert isinstance(again, Outcome)
    assert again.replayed
    assert again.state.latest_version == 1
    assert seen.sequences == [first.recorded.sequence]
    assert await message_count(js, namespace, "po") == 1


async def test_a_replica_with_a_stale_cached_state_loses_the_race_reads_and_decides_again(env):
    js, namespace, _, _ = env
    one, two = handler(env), handler(env)
    await run(one, publish(), assume_new=True)  # replica one caches v1
    assert isinstance(await run(two, publish(2)), Outcome)  # replica two reads v1 and writes v2
    third = await run(one, publish(3))  # one's cache says v1: its append of "v2 next" must not win
    assert isinstance(third, Outcome)
    assert third.recorded is not None
    assert isinstance(third.recorded.event, domain.VersionChanged)
    assert third.state.latest_version == 3
    assert [v.version for v in third.state.versions] == [1, 2, 3]
    assert await message_count(js, namespace, "po") == 3


async def test_a_refusal_from_a_stale_cached_state_is_checked_against_the_stream_first(env):
    one, two = handler(env), handler(env)
    await run(one, publish(), assume_new=True)
    await run(two, publish(2))
    # One's cached state knows no version 2: before refusing "unknown version" it reads what came after.
    acknowledged = await run(one, acknowledge(2))
    assert isinstance(acknowledged, Outcome)
    assert acknowledged.recorded is not None
    assert acknowledged.state.acknowledgments[2].erp_document_number == "45002"
    # And a replay from a stale cache is confirmed the same way.
    assert isinstance(await run(two, acknowledge(2)), Outcome)


async def test_a_refusal_on_the_current_state_is_returned_and_writes_nothing(env):
    js, namespace, _, _ = env
    seen = Seen()
    commands = handler(env, seen)
    await run(commands, publish(), assume_new=True)
    refusal = await run(commands, publish(quantity="11"), assume_new=True)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "DUPLICATE_TRANSACTION"
    assert len(seen.sequences) == 1
    assert await message_count(js, namespace, "po") == 1


class RacingLog(StreamLog[domain.OrderEvent]):
    """A real log where another writer always appends just before this one (the guard trips every time)."""

    def __init__(self, inner: StreamLog[domain.OrderEvent], rival: Handler) -> None:
        self._inner, self._rival, self.appends = inner, rival, 0

    async def read(self, key, after):
        return await self._inner.read(key, after)

    async def append(self, key, event, expected_last_sequence) -> Appended[domain.OrderEvent]:
        self.appends += 1
        rival_event = domain.VersionRejected(1, "rival", f"rival-{self.appends}", "erp")
        await self._rival.run(key, lambda _state: rival_event)
        return await self._inner.append(key, event, expected_last_sequence)


async def test_a_race_lost_every_time_is_aborted_after_the_bounded_attempts_and_projects_nothing(env):
    _, _, publisher, reader = env
    setup = handler(env)
    await run(setup, publish(), assume_new=True)
    rivals = 0

    def decide_reject(state: domain.OrderState) -> domain.Decision:
        nonlocal rivals
        rivals += 1
        return domain.VersionRejected(1, "mine", f"k-{rivals}", "erp")

    rival_log = order_log(publisher, reader)
    rival = CommandHandler(rival_log, initial=domain.INITIAL, evolve=domain.evolve, name="purchase order")
    seen = Seen()
    racing = RacingLog(order_log(publisher, reader), rival)
    commands = handler(env, seen, log=racing)
    with pytest.raises(Aborted) as aborted:
        await commands.run("PO-1001", decide_reject)
    assert aborted.value.reason == "CONCURRENT_WRITE"
    assert racing.appends == 5
    assert seen.sequences == []


async def test_a_key_used_for_another_object_within_the_window_is_refused(env):
    commands = handler(env)
    order, document = version(1)
    first = domain.PublishOrder(order, document, "fp", "shared-key", "procurement")
    other_order = mapping.to_domain(sample_order("PO-2002"))[0]
    assert other_order is not None
    second = domain.PublishOrder(other_order, sample_order("PO-2002"), "fp2", "shared-key", "procurement")
    now = datetime.now(UTC)
    await commands.run("PO-1001", lambda s: domain.decide(first, s, now, RULES), assume_new=True)
    refusal = await commands.run("PO-2002", lambda s: domain.decide(second, s, now, RULES), assume_new=True)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "IDEMPOTENCY_KEY_REUSED"
