"""control-plane's storage: policy revisions (JetStream KV) and the audit chain (AUDIT stream)."""

from __future__ import annotations

import asyncio
from datetime import UTC

from control_plane import domain
from libs.runtime.audit import AuditChain
from libs.runtime.commands import Appended, CommandHandler, Entry
from libs.runtime.decider import Recorded
from libs.runtime.events import WrongLastSequence
from libs.runtime.policy_store import PolicyStore, RevisionConflict
from syncgov.controlplane.v1 import controlplane_pb2


class ControlPlaneStore:
    def __init__(self, policies: PolicyStore, chain: AuditChain) -> None:
        self.policies = policies
        self._chain = chain
        self._chain_lock = asyncio.Lock()  # one appender per process; other processes meet the stream's guard

    async def append_audit(self, entry: controlplane_pb2.AuditEntry) -> None:
        async with self._chain_lock:
            await self._chain.append(entry)

    async def audit_for(self, object_type: str, object_key: str) -> list[controlplane_pb2.AuditEntry]:
        return await self._chain.for_object(object_type, object_key)


class PolicyLog:
    """The policy's history for the command handler: the revisions in the policy bucket. Only the latest
    matters to its state, so a read returns that one; an append creates ``rev.<n>``, which only one writer
    can do — the guard that makes two operators expecting the same revision unable to both win."""

    def __init__(self, policies: PolicyStore) -> None:
        self._policies = policies

    async def read(self, key: str, after: int) -> list[Entry[domain.RevisionStored]]:
        found = await self._policies.latest_with_sequence()
        if found is None or found[0] <= after:
            return []
        sequence, revision = found
        return [Entry(sequence, Recorded(revision_stored(revision), sequence, "", 0, "", revision.applied_by))]

    async def append(
        self, key: str, event: domain.RevisionStored, expected_last_sequence: int
    ) -> Appended[domain.RevisionStored]:
        try:
            sequence = await self._policies.create(revision_of(event))
        except RevisionConflict:
            raise WrongLastSequence(f"policy revision {event.revision} exists already") from None
        at = int(event.applied_at.timestamp() * 1_000_000_000)
        return Appended(Recorded(event, sequence, "", at, "", event.applied_by))


def revision_of(event: domain.RevisionStored) -> controlplane_pb2.PolicyRevision:
    revision = controlplane_pb2.PolicyRevision(
        revision=event.revision,
        document_yaml=event.document_yaml,
        applied_by=event.applied_by,
        comment=event.comment,
        document_sha256=event.sha256,
    )
    revision.applied_at.FromDatetime(event.applied_at)
    return revision


def revision_stored(revision: controlplane_pb2.PolicyRevision) -> domain.RevisionStored:
    return domain.RevisionStored(
        revision.revision,
        revision.document_yaml,
        revision.applied_by,
        revision.comment,
        revision.document_sha256,
        revision.applied_at.ToDatetime(tzinfo=UTC),
    )


PolicyCommands = CommandHandler[domain.PolicyState, domain.RevisionStored]


def policy_commands(policies: PolicyStore) -> PolicyCommands:
    return CommandHandler(
        PolicyLog(policies), initial=domain.POLICY_INITIAL, evolve=domain.evolve_policy, name="policy"
    )
