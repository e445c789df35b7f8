"""Drift reconciliation's I/O (issue 13): the system of record's side, the report, its exceptions and repairs.

``OrderIndex`` is a projection of the PO stream, followed into memory at start (like the workflow index): per order,
its latest document version (published, changed or cancelled), the stream sequence of that version's event, whether
it is a cancellation and which systems acknowledged any version. Keys are kept sorted for range queries. Content is
not kept: a version's document is read back from the stream by sequence when a hash must be compared or a repair
sent, so memory stays a few dozen bytes per order.

``DriftReconciler.report`` runs one batch: classify (``control_plane.drift``, pure), raise one ``drift_detected`` per
drifted object (its id derived from what was found, so a repeated report raises nothing new), count, and with
``repair`` publish a ``RepairRequested`` per stale, missing or differing order on
``<ns>.repair.<system>.purchase_order.<key>`` for the system's adapter.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry.metrics import Meter

from control_plane import drift
from libs.policy.engine import Policy
from libs.runtime.app import Runtime
from libs.runtime.content_hash import content_sha256
from libs.runtime.errors import FieldViolation, InvalidArgument, Unavailable
from libs.runtime.events import Event, EventPublisher, EventReader, StoredEvent, readable
from libs.runtime.exception_reporter import ExceptionReporter, fingerprint, severity
from libs.runtime.identity import current_caller
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2, controlplane_service_pb2, events_pb2
from syncgov.exception.v1 import events_pb2 as exception_events
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import events_pb2 as po_events
from syncgov.po.v1 import po_pb2

PO_DOMAIN = "po"
REPAIR_DOMAIN = "repair"
DOCUMENT_EVENTS = {
    "published": po_events.PurchaseOrderPublished,
    "changed": po_events.PurchaseOrderChanged,
    "cancelled": po_events.PurchaseOrderCancelled,
}
# The most of syncgov's orders one batch's range may hold: each may be missing, an exception and a repair.
MAX_RANGE_ORDERS = 5_000
READ_CONCURRENCY = 32
KINDS = {
    drift.Kind.STALE: controlplane_pb2.DRIFT_KIND_STALE,
    drift.Kind.MISSING: controlplane_pb2.DRIFT_KIND_MISSING,
    drift.Kind.UNKNOWN: controlplane_pb2.DRIFT_KIND_UNKNOWN,
    drift.Kind.CONTENT_DIFFERS: controlplane_pb2.DRIFT_KIND_CONTENT_DIFFERS,
}


class OrderIndex:
    """PO key -> its latest document version's place in the stream; fed by a StreamFollower, in stream order."""

    def __init__(self) -> None:
        self._latest: dict[str, drift.Authoritative] = {}
        self._sorted: list[str] = []
        self._unsorted: list[str] = []  # keys seen since the last range query: merged in then (one timsort run)
        self._systems: dict[frozenset[str], frozenset[str]] = {}  # interned acknowledger sets

    def follow(self, stored: StoredEvent) -> None:
        name = stored.subject.rsplit(".", 1)[-1]
        envelope = stored.envelope
        key = envelope.object_key
        current = self._latest.get(key)
        if name in DOCUMENT_EVENTS:
            if current is None:
                self._unsorted.append(key)
            if current is None or envelope.object_version > current.version:
                acknowledged = current.acknowledged_by if current is not None else frozenset()
                self._latest[key] = drift.Authoritative(
                    key, envelope.object_version, stored.sequence, name == "cancelled", acknowledged
                )
        elif name == "acknowledged" and current is not None and envelope.source_system not in current.acknowledged_by:
            systems = current.acknowledged_by | {envelope.source_system}
            self._latest[key] = replace(current, acknowledged_by=self._systems.setdefault(systems, systems))

    def get(self, key: str) -> drift.Authoritative | None:
        return self._latest.get(key)

    def in_range(self, after: str, through: str) -> list[drift.Authoritative]:
        """syncgov's orders with a key in ``(after, through]`` (``through`` empty: to the end), by key."""
        if self._unsorted:
            self._sorted += sorted(self._unsorted)
            self._sorted.sort()
            self._unsorted = []
        start = bisect.bisect_right(self._sorted, after)
        end = bisect.bisect_right(self._sorted, through) if through else len(self._sorted)
        return [self._latest[key] for key in self._sorted[start:end]]

    def __len__(self) -> int:
        return len(self._latest)


@dataclass(frozen=True, slots=True)
class Report:
    findings: list[drift.Finding]
    counts: dict[drift.Kind, int]
    repairs_requested: int


def held_of(request: controlplane_service_pb2.ReportSystemStateRequest) -> list[drift.Held]:
    return [
        drift.Held(item.object.object_type, item.object.object_key, item.object.version, item.content_sha256)
        for item in request.objects
    ]


def response_of(report: Report) -> controlplane_service_pb2.ReportSystemStateResponse:
    return controlplane_service_pb2.ReportSystemStateResponse(
        drifts=[drift_message(finding) for finding in report.findings if finding.drifted],
        in_sync_count=report.counts[drift.Kind.IN_SYNC],
        stale_count=report.counts[drift.Kind.STALE],
        missing_count=report.counts[drift.Kind.MISSING],
        unknown_count=report.counts[drift.Kind.UNKNOWN],
        content_differs_count=report.counts[drift.Kind.CONTENT_DIFFERS],
        repairs_requested=report.repairs_requested,
    )


def drift_message(finding: drift.Finding, object_type: str = drift.PURCHASE_ORDER) -> controlplane_pb2.Drift:
    return controlplane_pb2.Drift(
        object=types_pb2.ObjectRef(object_type=object_type, object_key=finding.key, version=finding.reported_version),
        authoritative_version=finding.authoritative_version,
        reported_version=finding.reported_version,
        reason=finding.reason,
        kind=KINDS[finding.kind],
        authoritative_content_sha256=finding.authoritative_sha256,
        reported_content_sha256=finding.reported_sha256,
    )


def drift_ref(finding: drift.Finding) -> types_pb2.ObjectRef:
    """The order a drift is about, at the version syncgov holds (or, unknown to syncgov, the one reported)."""
    version = finding.authoritative_version or finding.reported_version
    return types_pb2.ObjectRef(object_type=drift.PURCHASE_ORDER, object_key=finding.key, version=version)


def raised_system(raised: exception_pb2.Exception) -> str:
    """The reporting system a drift_detected names in its evidence."""
    for item in raised.evidence:
        try:
            return str(json.loads(item).get("system", ""))
        except (ValueError, AttributeError):
            continue
    return ""


def document_of(stored: StoredEvent) -> po_pb2.PurchaseOrder:
    """The purchase order version a published, changed or cancelled event carries."""
    kind = DOCUMENT_EVENTS[stored.subject.rsplit(".", 1)[-1]]
    return stored.unpack(kind).purchase_order


class DriftReconciler:
    def __init__(
        self,
        index: OrderIndex,
        reader: EventReader,
        publisher: EventPublisher,
        exceptions: ExceptionReporter,
        meter: Meter,
        *,
        caught_up: Callable[[], bool] = lambda: True,
    ) -> None:
        self._index = index
        self._reader = reader
        self._publisher = publisher
        self._exceptions = exceptions
        self._caught_up = caught_up
        # The drift_detected exceptions this component raised and has not cleared, by system and order, from the
        # exception stream (rebuilt at every start): raised once while open, cleared when a report finds it gone.
        self._open: dict[tuple[str, str], dict[str, exception_pb2.Exception]] = {}
        self._open_at: dict[str, tuple[str, str]] = {}
        self._drifted = meter.create_counter(
            "syncgov.drift.objects",
            unit="{object}",
            description="Objects a system reported out of step with the system of record (ReportSystemState), by "
            "system, object type and kind (stale, missing, unknown, content_differs); each report counts again.",
        )

    def on_exception(self, stored: StoredEvent) -> None:
        """The exception stream's events (the control plane's exception follower): this component's drift raises
        and clearings."""
        name = stored.subject.rsplit(".", 1)[-1]
        component = self._exceptions.component
        if name == "raised":
            raised = readable(stored, lambda s: s.unpack(exception_events.ExceptionRaised))
            if raised is not None and self._ours(raised.exception):
                system = raised_system(raised.exception)
                if system:
                    self._remember(system, raised.exception)
        elif name == "cleared" and stored.subject.split(".")[-2] == component:
            cleared = readable(stored, lambda s: s.unpack(exception_events.ExceptionCleared))
            if cleared is not None and self._ours(cleared.exception):
                self._forget(cleared.exception.fingerprint)

    def _ours(self, exception: exception_pb2.Exception) -> bool:
        return (
            exception.type == exception_pb2.EXCEPTION_TYPE_DRIFT_DETECTED
            and exception.raised_by == self._exceptions.component
        )

    def _remember(self, system: str, raised: exception_pb2.Exception) -> None:
        where = (system, raised.object.object_key)
        self._open.setdefault(where, {})[raised.fingerprint] = raised
        self._open_at[raised.fingerprint] = where

    def _forget(self, fingerprint_: str) -> None:
        where = self._open_at.pop(fingerprint_, None)
        if where is not None:
            open_here = self._open.get(where, {})
            open_here.pop(fingerprint_, None)
            if not open_here:
                self._open.pop(where, None)

    def expect(self, systems: Sequence[str]) -> None:
        """Report 0 drifted objects of each system, object type and kind until one is found, so the series exist."""
        for system in systems:
            for object_type in drift.OBJECT_TYPES:
                for kind in drift.DRIFT_KINDS:
                    self._drifted.add(0, {"system": system, "object_type": object_type, "kind": kind.value})

    async def report(self, request: controlplane_service_pb2.ReportSystemStateRequest, policy: Policy) -> Report:
        """Compare one batch; INVALID_ARGUMENT (nothing written) when it cannot be compared."""
        system, after, through = request.system, request.covers_after_key, request.covers_through_key
        objects = held_of(request)
        found = drift.problems(system, policy.systems, objects, after, through)
        if found:
            raise InvalidArgument(
                f"the report cannot be compared: {found[0][0]} {found[0][1]}; nothing was written",
                violations=[FieldViolation(path, why) for path, why in found],
                reason="INVALID_DRIFT_REPORT",
            )
        if not self._caught_up():
            raise Unavailable(
                "purchase orders are still being read from the PO stream; retry shortly", reason="ORDERS_CATCHING_UP"
            )
        in_range = self._index.in_range(after, through)
        if len(in_range) > MAX_RANGE_ORDERS:
            split = in_range[MAX_RANGE_ORDERS - 1].key
            raise InvalidArgument(
                f"the range holds {len(in_range)} of syncgov's orders, more than {MAX_RANGE_ORDERS} per batch; "
                f"end this batch at {split!r} and report the rest in the next",
                violations=[FieldViolation("covers_through_key", f"narrow the range, e.g. to {split!r}")],
                reason="DRIFT_RANGE_TOO_LARGE",
                metadata={"split_at_key": split},
            )
        authoritative = {entry.key: entry for entry in in_range}
        documents = await self._documents([authoritative[key] for key in drift.needs_content(objects, authoritative)])
        hashes = {key: content_sha256(document) for key, document in documents.items()}
        findings = drift.compare(system, objects, authoritative, hashes)
        drifted = [finding for finding in findings if finding.drifted]
        for finding in findings:
            await self._settle(system, finding, authoritative.get(finding.key), policy)
        repairs = 0
        if request.repair:
            repairable = [finding for finding in drifted if finding.repairable]
            read = await self._documents(
                [authoritative[f.key] for f in repairable if f.key not in documents], already=documents
            )
            report_id = uuid.uuid4().hex
            for finding in repairable:
                await self._repair(system, finding, authoritative[finding.key], read[finding.key], policy, report_id)
                repairs += 1
        self.expect(sorted(policy.systems))
        tally = drift.counts(findings)
        for kind in drift.DRIFT_KINDS:
            if tally[kind]:
                labels = {"system": system, "object_type": drift.PURCHASE_ORDER, "kind": kind.value}
                self._drifted.add(tally[kind], labels)
        return Report(findings, tally, repairs)

    async def _documents(
        self, entries: Sequence[drift.Authoritative], already: dict[str, po_pb2.PurchaseOrder] | None = None
    ) -> dict[str, po_pb2.PurchaseOrder]:
        """The authoritative documents of ``entries``, read from the PO stream by sequence (a bounded few at once)."""
        out = dict(already or {})
        limit = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(entry: drift.Authoritative) -> None:
            async with limit:
                out[entry.key] = document_of(await self._reader.at(PO_DOMAIN, entry.sequence))

        await asyncio.gather(*(read(entry) for entry in entries))
        return out

    async def _settle(
        self, system: str, finding: drift.Finding, latest: drift.Authoritative | None, policy: Policy
    ) -> None:
        """Raise the drift found unless it is open already; clear what was open about this order and is gone (in
        sync now, or drifted otherwise)."""
        ref, discriminator = drift_ref(finding), drift.discriminator(system, finding)
        now = fingerprint(exception_pb2.EXCEPTION_TYPE_DRIFT_DETECTED, ref, discriminator) if finding.drifted else ""
        for open_fingerprint, raised in list(self._open.get((system, finding.key), {}).items()):
            if open_fingerprint != now:
                why = "in sync" if not finding.drifted else f"drifted otherwise ({finding.kind.value})"
                await self._exceptions.clear_exception(
                    raised,
                    f"{system} reported {finding.key} v{finding.reported_version}: {why}",
                    clear_id=f"drift-{open_fingerprint}-{uuid.uuid4().hex}",
                )
                self._forget(open_fingerprint)
        if finding.drifted and now not in self._open_at:
            self._remember(system, await self._raise(system, finding, latest, policy))

    async def _raise(
        self, system: str, finding: drift.Finding, latest: drift.Authoritative | None, policy: Policy
    ) -> exception_pb2.Exception:
        route = policy.route("drift_detected")
        evidence = {
            "system": system,
            "kind": finding.kind.value,
            "authoritative_version": finding.authoritative_version,
            "reported_version": finding.reported_version,
            "authoritative_content_sha256": finding.authoritative_sha256,
            "reported_content_sha256": finding.reported_sha256,
            "source": f"{self._reader_stream()}:{latest.sequence}" if latest is not None else "",
        }
        return await self._exceptions.raise_exception(
            exception_pb2.EXCEPTION_TYPE_DRIFT_DETECTED,
            severity(route.severity, exception_pb2.SEVERITY_HIGH),
            drift_ref(finding),
            f"drift in {system} ({finding.kind.value}): {finding.reason}",
            evidence=[json.dumps(evidence, sort_keys=True)],
            workflow_key=finding.key,
            discriminator=drift.discriminator(system, finding),
            policy_revision=policy.revision,
        )

    def _reader_stream(self) -> str:
        return self._publisher.namespace.stream(PO_DOMAIN)

    async def _repair(
        self,
        system: str,
        finding: drift.Finding,
        latest: drift.Authoritative,
        document: po_pb2.PurchaseOrder,
        policy: Policy,
        report_id: str,
    ) -> None:
        sha256 = content_sha256(document)
        message = drift_message(replace(finding, authoritative_sha256=sha256))
        payload = events_pb2.RepairRequested(
            system=system,
            drift=message,
            purchase_order=document,
            source=f"{self._reader_stream()}:{latest.sequence}",
        )
        namespace = self._publisher.namespace
        await self._publisher.publish(
            Event(
                domain=REPAIR_DOMAIN,
                object_type=drift.PURCHASE_ORDER,
                object_key=finding.key,
                object_version=latest.version,
                name="requested",
                payload=payload,
                idempotency_key=drift.repair_idempotency_key(
                    system, drift.PURCHASE_ORDER, finding.key, latest.version, report_id
                ),
                source_system=current_caller().system,
                content_sha256=sha256,
                workflow_key=finding.key,
                policy_revision=policy.revision,
            ),
            subject=namespace.repair_subject(system, drift.PURCHASE_ORDER, finding.key),
        )


def drift_reconciler(rt: Runtime[Any], index: OrderIndex, caught_up: Callable[[], bool]) -> DriftReconciler:
    """The reconciler of a control plane, on the order index its PO stream follower feeds."""
    reconciler = DriftReconciler(index, rt.reader, rt.publisher, rt.exceptions, rt.telemetry.meter, caught_up=caught_up)
    reconciler.expect(sorted(rt.policy.current.systems))
    return reconciler
