"""Span attribute keys of syncgov's own, in one place (standard ones come from semconv)."""

WORKFLOW_KEY = "syncgov.workflow.key"
OBJECT_TYPE = "syncgov.object.type"
OBJECT_KEY = "syncgov.object.key"
OBJECT_VERSION = "syncgov.object.version"
CALLER_SYSTEM = "syncgov.caller.system"
IDEMPOTENCY_KEY = "syncgov.idempotency.key"
IDEMPOTENT_REPLAY = "syncgov.idempotency.replay"
POLICY_REVISION = "syncgov.policy.revision"
EVENT_TYPE = "syncgov.event.type"

# OpenTelemetry messaging semantic conventions (kept here so the names are typed once).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_OPERATION = "messaging.operation.type"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGING_DELIVERY_COUNT = "messaging.nats.message.delivery_count"
