"""Paging for every listing RPC: page sizes within the server's bounds, and opaque page tokens.

A page token is opaque to callers: ``urlsafe_base64(b"<version>:<listing>:<position>")`` without
padding, where ``listing`` names the RPC's listing (e.g. ``"controlplane.policy_revisions"``) and
``position`` is where the next page starts in that listing's own terms (a revision, a stream
sequence, an offset). Binding the token to its listing means a token from one listing is refused by
another instead of silently paging through the wrong thing; the version prefix lets the format
change later while old tokens are still recognised (or refused cleanly). A malformed token is
``INVALID_ARGUMENT`` with a field violation on ``page.page_token``, never ``INTERNAL``.
"""

from __future__ import annotations

import base64
import binascii

from libs.runtime.errors import FieldViolation, InvalidArgument

PAGE_TOKEN_FIELD = "page.page_token"
_TOKEN_VERSION = "1"


def page_size(requested: int, default: int = 50, maximum: int = 500) -> int:
    """``default`` when the caller names none (or nonsense, like a negative size); never above ``maximum``."""
    if requested <= 0:
        return default
    return min(requested, maximum)


def encode_page_token(listing: str, position: int) -> str:
    """The opaque token for ``position`` (>= 0) in ``listing``; hand it out as ``next_page_token``."""
    if position < 0:
        raise ValueError(f"a page position is never negative: {position}")
    if not listing or ":" in listing:
        raise ValueError(f"a listing name is non-empty and has no ':': {listing!r}")
    raw = f"{_TOKEN_VERSION}:{listing}:{position}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(listing: str, token: str) -> int | None:
    """The position a token from :func:`encode_page_token` carries; ``None`` for an empty token (first page).

    Raises :class:`InvalidArgument` (violation on ``page.page_token``) when the token is not one this
    server issued for ``listing``.
    """
    if not token:
        return None
    issued_for, _, position = _decoded(token).rpartition(":")
    if issued_for != listing:
        raise _bad_token("belongs to another listing; send the token the previous page of this listing returned")
    if not position.isascii() or not position.isdigit() or len(position) > 19:
        raise _bad_token("is not a page token this server issued")
    return int(position)


def _decoded(token: str) -> str:
    """What a token carries after its version: ``<listing>:<position>`` or ``<listing>:c:<cursor>``."""
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        raise _bad_token("is not a page token this server issued") from None
    version, _, rest = raw.partition(":")
    if version != _TOKEN_VERSION:
        raise _bad_token("is not a page token this server issued")
    return rest


def _bad_token(why: str) -> InvalidArgument:
    message = f"page_token {why}"
    return InvalidArgument(message, violations=[FieldViolation(PAGE_TOKEN_FIELD, message)], reason="INVALID_PAGE_TOKEN")


def encode_page_cursor(listing: str, cursor: str) -> str:
    """The opaque token for a keyset ``cursor`` (any text: e.g. the last row's sort key and id) in ``listing``:
    the next page starts after that row, so rows added or removed meanwhile never shift it."""
    if not listing or ":" in listing:
        raise ValueError(f"a listing name is non-empty and has no ':': {listing!r}")
    raw = f"{_TOKEN_VERSION}:{listing}:c:{cursor}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_cursor(listing: str, token: str) -> str | None:
    """The cursor a token from :func:`encode_page_cursor` carries; ``None`` for an empty token (first page)."""
    if not token:
        return None
    issued_for, _, rest = _decoded(token).partition(":")
    kind, _, cursor = rest.partition(":")
    if kind != "c":
        raise _bad_token("is not a page token this server issued")
    if issued_for != listing:
        raise _bad_token("belongs to another listing; send the token the previous page of this listing returned")
    return cursor
