"""Who is calling: the system identity every request carries.

Two ways to prove it, chosen by configuration:

* bearer tokens (``authorization: Bearer <token>``), mapped to system ids by
  ``SYNCGOV_CALLER_TOKENS``; an unknown or missing token is UNAUTHENTICATED;
* with no tokens configured (local development only), the caller *declares*
  its system in ``x-syncgov-system``; the server logs a warning at start-up.

mTLS identities come with the control-plane work (see docs/decisions.md).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from libs.runtime.errors import Unauthenticated

DECLARED_SYSTEM_HEADER = "x-syncgov-system"
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    system: str
    authenticated: bool


_current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "syncgov_caller",
    default=Caller(ANONYMOUS, False),  # noqa: B039 - Caller is frozen
)


def current_caller() -> Caller:
    return _current_caller.get()


def set_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _current_caller.set(caller)


def reset_caller(token: contextvars.Token[Caller]) -> None:
    _current_caller.reset(token)


class IdentityResolver:
    def __init__(self, tokens: Mapping[str, str], mtls: bool = False) -> None:
        self._tokens = dict(tokens)
        self._mtls = mtls

    @property
    def tokens_required(self) -> bool:
        return bool(self._tokens)

    @property
    def uses_certificates(self) -> bool:
        return self._mtls

    @property
    def development_mode(self) -> bool:
        return not self._tokens and not self._mtls

    def resolve(
        self,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        auth_context: Mapping[str, Sequence[bytes]] | None = None,
    ) -> Caller:
        if self._mtls:
            names = (auth_context or {}).get("x509_common_name") or ()
            if not names:
                raise Unauthenticated("no client certificate: this server requires mTLS", reason="NO_CREDENTIALS")
            return Caller(names[0].decode(), True)
        headers = {key.lower(): value for key, value in (metadata or ()) if isinstance(value, str)}
        if self._tokens:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("missing bearer token in 'authorization' metadata", reason="NO_CREDENTIALS")
            system = self._tokens.get(token.strip())
            if system is None:
                raise Unauthenticated("unknown bearer token", reason="UNKNOWN_CREDENTIALS")
            return Caller(system, True)
        declared = headers.get(DECLARED_SYSTEM_HEADER, "").strip()
        return Caller(declared or ANONYMOUS, False)
