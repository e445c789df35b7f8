"""The JetStream streams of syncgov and their idempotent provisioning.

One stream per domain, holding every subject of that domain's objects
(``<ns>.po.>``). Streams that hold business documents deny deletes: JetStream
is the source of truth (DESIGN §3.1) and history is what makes a retry after
an hour-long outage recognisable. The audit stream also denies purges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from libs.runtime.subjects import Namespace

log = logging.getLogger(__name__)

JS_ERR_SUBJECTS_OVERLAP = 10065
DUPLICATE_WINDOW_SECONDS = 120.0
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamSpec:
    domain: str
    description: str
    deny_purge: bool = False
    max_age_seconds: float | None = None
    # The subjects it holds, when not the domain's own (<ns>.<domain>.>).
    subjects: Callable[[Namespace], list[str]] | None = None
    # A stream the suite works without: one whose subjects another stream of the account holds already (an
    # operator's stream of every advisory) is left out with an error in the log, not a failed start.
    optional: bool = False


SUPPLIER = StreamSpec("supplier", "Golden supplier records and their changes")
PO = StreamSpec("po", "Purchase order versions, acknowledgments and rejections")
RECEIPT = StreamSpec("receipt", "Goods receipts and returns, reconciled")
INVOICE = StreamSpec("invoice", "Invoices, match results and state changes")
EXCEPTION = StreamSpec("exception", "Exceptions raised by every service, and their handling")
AUDIT = StreamSpec("audit", "Hash-chained audit trail; append-only", deny_purge=True)
# Records (refusals, overrides, replays, policy changes) waiting for the control plane to chain them;
# kept a month so a control plane that was down for a while still finds them.
AUDIT_INBOX = StreamSpec("auditin", "Audit records waiting for their place in the chain", max_age_seconds=30 * 86400)

DOMAIN_STREAMS = (SUPPLIER, PO, RECEIPT, INVOICE, EXCEPTION, AUDIT, AUDIT_INBOX)
# Repair instructions for adapters (drift reconciliation): the authoritative version of an object a system reported
# out of step, on <ns>.repair.<system>.<object type>.<key>. Not a domain stream: it records no business event (a
# re-publication in the PO stream would be a second "published" of one version), and an instruction older than a
# week is better found again by the next report than applied late.
REPAIR = StreamSpec("repair", "Repair instructions for adapters, from drift reports", max_age_seconds=7 * 86400)
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


def max_deliveries_advisories(namespace: Namespace) -> list[str]:
    """The server's advisories for messages that hit a consumer's delivery limit in this namespace's streams."""
    return [f"{MAX_DELIVERIES_ADVISORY}.{namespace.stream(spec.domain)}.*" for spec in DOMAIN_STREAMS]


# JetStream announces a message that reached a consumer's max deliveries only as a core-NATS advisory, gone if
# nobody listens at that instant; this stream keeps them for the exception router (a month, like the inbox).
ADVISORY = StreamSpec(
    "advisory",
    "JetStream max-deliveries advisories of this namespace's consumers",
    max_age_seconds=30 * 86400,
    subjects=max_deliveries_advisories,
    optional=True,
)

ALL_STREAMS = (*DOMAIN_STREAMS, REPAIR, ADVISORY)


def stream_config(namespace: Namespace, spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=namespace.stream(spec.domain),
        description=spec.description,
        subjects=spec.subjects(namespace) if spec.subjects else [namespace.domain_subjects(spec.domain)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_msg_size=MAX_MESSAGE_BYTES,
        deny_delete=True,
        deny_purge=spec.deny_purge,
        allow_direct=True,
        max_age=spec.max_age_seconds,
    )


_COMPARED_FIELDS = (
    "subjects",
    "description",
    "duplicate_window",
    "max_msg_size",
    "deny_delete",
    "deny_purge",
    "allow_direct",
    "num_replicas",
    "max_age",
)


def _setting(config: StreamConfig, name: str) -> object:
    value = getattr(config, name)
    return value or 0 if name == "max_age" else value  # the server reports "no limit" as 0


async def provision_streams(
    js: JetStreamContext, namespace: Namespace, specs: Iterable[StreamSpec], replicas: int = 1
) -> list[str]:
    """Create missing streams and bring drifted ones back to spec; running it twice changes nothing."""
    changed: list[str] = []
    for spec in specs:
        wanted = stream_config(namespace, spec, replicas)
        stream = namespace.stream(spec.domain)  # wanted.name
        try:
            current = (await js.stream_info(stream)).config
        except NotFoundError:
            try:
                await js.add_stream(wanted)
            except BadRequestError as error:
                if not (spec.optional and error.err_code == JS_ERR_SUBJECTS_OVERLAP):
                    raise
                log.error(
                    "stream %s not created: its subjects (%s) overlap a stream of this account (%s); whatever "
                    "depends on it runs without it",
                    stream,
                    ", ".join(wanted.subjects or []),
                    error.description,
                    extra={"stream": stream},
                )
                continue
            log.info("created stream %s", stream, extra={"stream": stream})
            changed.append(stream)
            continue
        if any(_setting(current, name) != _setting(wanted, name) for name in _COMPARED_FIELDS):
            await js.update_stream(wanted)
            log.info("updated stream %s to spec", stream, extra={"stream": stream})
            changed.append(stream)
    return changed
