"""Ownership enforced at the edge (DESIGN §3.6): the policy decides, before the servicer runs.

A refused write is PERMISSION_DENIED with the decision's reason, writes
nothing, and leaves two traces: an audit record (refusal) and an
``ownership_violation`` exception routed by policy. A caller whose system the
policy does not declare is UNAUTHENTICATED.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from google.protobuf.message import Message

from libs.policy.engine import Policy
from libs.runtime.access import (
    AccessRule,
    Administer,
    Read,
    Report,
    ReportHoldings,
    Write,
    resolve,
    touched_fields,
)
from libs.runtime.audit import AuditRecorder
from libs.runtime.errors import PermissionDenied, Unauthenticated
from libs.runtime.exception_reporter import ExceptionReporter, severity
from libs.runtime.identity import Caller
from libs.runtime.policy_store import PolicyView
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2

log = logging.getLogger(__name__)

# Objects whose rule key is a purchase order id: the workflow key of what their refusals raise.
_KEYED_BY_ORDER = frozenset({"purchase_order", "goods_receipt"})


class OwnershipGuard:
    def __init__(
        self,
        policy: PolicyView,
        rules: Mapping[str, AccessRule],
        exceptions: ExceptionReporter,
        audit: AuditRecorder,
    ) -> None:
        self._policy = policy
        self._rules = dict(rules)
        self._exceptions = exceptions
        self._audit = audit

    def rule_for(self, method: str) -> AccessRule | None:
        return self._rules.get(method)

    async def authorize(self, method: str, request: Message, caller: Caller) -> Policy:
        """The policy the call was allowed under; raises UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        policy = self._policy.current
        if not policy.is_known_system(caller.system):
            raise Unauthenticated(
                f"system {caller.system!r} is not declared in policy revision {policy.revision}",
                reason="UNKNOWN_SYSTEM",
                metadata={"system": caller.system, "policy_revision": str(policy.revision)},
            )
        rule = self._rules.get(method)
        if rule is None:
            raise PermissionDenied(f"{method} declares no access rule; refused", reason="NO_ACCESS_RULE")
        if isinstance(rule, Read):
            if not policy.may_read(caller.system, rule.object_type):
                await self._refuse(
                    policy,
                    caller,
                    method,
                    rule.object_type,
                    "",
                    0,
                    f"{caller.system} may not read {rule.object_type}",
                    [],
                )
        elif isinstance(rule, Administer):
            if not policy.is_administrator(caller.system):
                await self._refuse(
                    policy,
                    caller,
                    method,
                    "policy",
                    "policy",
                    policy.revision,
                    f"{caller.system} is not a policy administrator",
                    [],
                )
        elif isinstance(rule, Report):
            source = str(resolve(request, rule.source) or "")
            key = str(resolve(request, rule.key) or "")
            if source != caller.system:
                await self._refuse(
                    policy,
                    caller,
                    method,
                    rule.object_type,
                    key,
                    0,
                    f"{caller.system} may report only its own records, not {source or 'none'}'s",
                    [],
                )
            if not policy.is_source_of(caller.system, rule.object_type):
                await self._refuse(
                    policy,
                    caller,
                    method,
                    rule.object_type,
                    key,
                    0,
                    f"{caller.system} writes no part of {rule.object_type}",
                    [],
                )
        elif isinstance(rule, ReportHoldings):
            system = str(resolve(request, rule.system) or "")
            if system != caller.system and not policy.is_administrator(caller.system):
                await self._refuse(
                    policy,
                    caller,
                    method,
                    rule.object_type,
                    "",
                    0,
                    f"{caller.system} may report only what it holds itself, not {system or 'none'}'s, "
                    "unless it is a policy administrator",
                    [],
                )
            # Only a system the object is synced to holds a copy to compare; any other would learn every object's
            # key and version (and, with repair, its content) from a report of nothing.
            if policy.is_known_system(system) and not (
                policy.holds_copy(system, rule.object_type) and policy.may_read(system, rule.object_type)
            ):
                await self._refuse(
                    policy,
                    caller,
                    method,
                    rule.object_type,
                    "",
                    0,
                    f"{rule.object_type} is not synced to {system} (policy ownership.{rule.object_type}.sync.to): "
                    "it holds no copy whose drift could be reported",
                    [],
                )
        elif isinstance(rule, Write):
            document = resolve(request, rule.document) if rule.document else None
            fields = (
                touched_fields(document)
                if isinstance(document, Message) and not policy.writes_every_field(caller.system, rule.object_type)
                else {""}
            )
            decision = policy.may_write(caller.system, rule.object_type, fields)
            site = str(resolve(request, rule.site) or "") if rule.site else ""
            # A site no system declares is a typo for the servicer to answer (INVALID_ARGUMENT), not a violation.
            foreign_site = bool(site) and site in policy.sites and not policy.serves_site(caller.system, site)
            if not decision.allowed or foreign_site:
                key = str(resolve(request, rule.key) or "")
                version = resolve(request, rule.version) if rule.version else 0  # an integer field of the request
                refused = sorted(r.field for r in decision.refusals if r.field)
                await self._refuse(
                    policy,
                    caller,
                    method,
                    rule.object_type,
                    key,
                    version if isinstance(version, int) else 0,
                    decision.reason() if not decision.allowed else f"{caller.system} does not serve site {site!r}",
                    refused,
                )
        return policy

    async def _refuse(
        self,
        policy: Policy,
        caller: Caller,
        method: str,
        object_type: str,
        key: str,
        version: int,
        reason: str,
        fields: list[str],
    ) -> None:
        object_ref = types_pb2.ObjectRef(object_type=object_type, object_key=key, version=version)
        exception_id = ""
        # A refusal that cannot be audited is counted and raised as audit_failed by the recorder.
        await self._audit.record(
            actor=caller.system,
            action="refusal",
            object_ref=object_ref,
            outcome="denied",
            reason=f"{method}: {reason}",
            policy_revision=policy.revision,
        )
        try:
            route = policy.route("ownership_violation")
            exception = await self._exceptions.raise_exception(
                exception_pb2.EXCEPTION_TYPE_OWNERSHIP_VIOLATION,
                severity(route.severity),
                object_ref,
                f"{method} refused: {reason}",
                workflow_key=key if object_type in _KEYED_BY_ORDER else "",
                discriminator=caller.system,
                policy_revision=policy.revision,
            )
            exception_id = exception.exception_id
        except Exception:
            # The refusal stands either way (and is audited above); the broker refused the exception.
            log.exception("could not raise ownership_violation for %s by %s", method, caller.system)
        raise PermissionDenied(
            reason,
            reason="OWNERSHIP_VIOLATION",
            metadata={
                "system": caller.system,
                "object_type": object_type,
                "fields": ",".join(fields)[:1000],
                "policy_revision": str(policy.revision),
                "exception_id": exception_id,
            },
        )
