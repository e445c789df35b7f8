"""The content fingerprint of a document: one definition for every side that compares content.

The envelope's ``content_sha256``, idempotency's "same key, other content" and drift reconciliation's content
comparison all use it, and so does an adapter reporting what its system holds (examples/erp_adapter): the
SHA-256 (lower-case hex) of the document's deterministic protobuf encoding. It imports protobuf only, so an
adapter can use it without the rest of the runtime.
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message


def content_sha256(document: Message) -> str:
    """Fingerprint of a document: SHA-256 (64 lower-case hex digits) of its deterministic protobuf encoding."""
    return hashlib.sha256(document.SerializeToString(deterministic=True)).hexdigest()
