"""Subjects, stream names and keys, derived from one namespace.

External ids (PO numbers, invoice numbers) may hold any character, but a NATS
subject token may not contain ``.``, ``*``, ``>``, whitespace or be empty.
:func:`encode_token` keeps ``[A-Za-z0-9_-]`` as they are, so common ids stay
readable in ``nats`` tooling, and writes every other byte of the UTF-8
encoding as ``~XX``. The mapping is reversible and injective.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[A-Za-z0-9_-]")
_ALL_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
_PRINTABLE = re.compile(r"[!-}]*")  # printable ASCII but space and "~"
MAX_KEY_CHARS = 256


class InvalidKeyError(ValueError):
    """An external id that cannot become an object key."""


def encode_token(external_id: str) -> str:
    if not external_id:
        raise InvalidKeyError("must not be empty")
    if len(external_id) > MAX_KEY_CHARS:
        raise InvalidKeyError(f"must be at most {MAX_KEY_CHARS} characters")
    if _ALL_SAFE.fullmatch(external_id):
        return external_id
    out: list[str] = []
    for char in external_id:
        if _SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def header_value(text: str) -> str:
    """``text`` as a NATS header value: printable ASCII stays (common keys stay readable), every other byte
    of its UTF-8 encoding and ``~`` itself become ``~XX``. Injective, so two ids that differ only by CR/LF
    (which the client would rewrite) never share a ``Nats-Msg-Id``."""
    if _PRINTABLE.fullmatch(text):
        return text
    out: list[str] = []
    for char in text:
        if "!" <= char <= "}" and char != "~":
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def decode_token(token: str) -> str:
    raw = bytearray()
    index = 0
    while index < len(token):
        if token[index] == "~":
            match = _ESCAPE.match(token, index)
            if not match:
                raise InvalidKeyError(f"bad escape at position {index} in {token!r}")
            raw.append(int(match.group(1), 16))
            index = match.end()
        else:
            raw.extend(token[index].encode("ascii"))
            index += 1
    return raw.decode("utf-8")


@dataclass(frozen=True, slots=True)
class Namespace:
    """Names every subject, stream and key a deployment uses."""

    root: str = "sg"

    def stream(self, domain: str) -> str:
        return f"{self.root.upper()}_{domain.upper()}"

    def domain_subjects(self, domain: str) -> str:
        return f"{self.root}.{domain}.>"

    def object_subject(self, domain: str, key: str, event: str) -> str:
        return f"{self.root}.{domain}.{encode_token(key)}.{event}"

    def object_filter(self, domain: str, key: str) -> str:
        return f"{self.root}.{domain}.{encode_token(key)}.*"

    def repair_subject(self, system: str, object_type: str, key: str) -> str:
        """Where the control plane asks ``system``'s adapter to repair one object (the REPAIR stream)."""
        return f"{self.root}.repair.{encode_token(system)}.{encode_token(object_type)}.{encode_token(key)}"

    def repair_filter(self, system: str, object_type: str) -> str:
        """Every repair of ``system``'s objects of ``object_type``: an adapter's consumer filter."""
        return f"{self.root}.repair.{encode_token(system)}.{encode_token(object_type)}.>"

    def bucket(self, name: str) -> str:
        """A JetStream key-value bucket's name (its stream is ``KV_<bucket>``)."""
        return f"{self.root}_{name}"

    def redis_key(self, service: str, *parts: str) -> str:
        return ":".join((self.root, service, *parts))
