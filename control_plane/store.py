"""control-plane's storage: policy revisions (JetStream KV) and the audit chain (AUDIT stream)."""

from __future__ import annotations

import asyncio

from libs.runtime.audit import AuditChain
from libs.runtime.policy_store import PolicyStore
from syncgov.controlplane.v1 import controlplane_pb2


class ControlPlaneStore:
    def __init__(self, policies: PolicyStore, chain: AuditChain) -> None:
        self.policies = policies
        self._chain = chain
        self._chain_lock = asyncio.Lock()  # one appender per process; other processes meet the stream's guard

    async def append_audit(self, entry: controlplane_pb2.AuditEntry) -> int:
        async with self._chain_lock:
            return await self._chain.append(entry)

    async def audit_for(self, object_type: str, object_key: str) -> list[controlplane_pb2.AuditEntry]:
        return await self._chain.for_object(object_type, object_key)
