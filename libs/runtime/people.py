"""The person behind a human decision (a release, an acknowledgment, a resolution): who, for the audit trail."""

from __future__ import annotations

import unicodedata

from libs.runtime.errors import FieldViolation, InvalidArgument
from libs.runtime.subjects import MAX_KEY_CHARS


def person(value: str, field: str, what: str) -> str:
    """``value`` stripped: required, bounded like every id, no control or format characters; else INVALID_ARGUMENT
    naming ``field`` (``what`` completes "name the person who ..."). Nothing is written on a refusal."""
    name = value.strip()
    problem = None
    if not name:
        problem = "is required"
    elif len(name) > MAX_KEY_CHARS:
        problem = f"must be at most {MAX_KEY_CHARS} characters"
    elif any(unicodedata.category(char).startswith("C") for char in name):
        # A user id is printed in audit trails and listings: a line break or a bidi override would forge them.
        problem = "must not contain control or format characters"
    if problem is None:
        return name
    raise InvalidArgument(
        f"{field} {problem}: name the person who {what}; nothing was recorded",
        violations=[FieldViolation(field, problem)],
        reason=f"{field.upper()}_REQUIRED" if not name else f"INVALID_{field.upper()}",
    )
