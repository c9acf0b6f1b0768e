"""UID syntax (PS3.5 §9.1): digits and dots, at most 64 characters.

The check is deliberately lenient on one point: components with a leading zero, which PS3.5
forbids, are accepted, because real modalities emit them and refusing their images helps nobody.
"""

from __future__ import annotations

import re

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Longest UID (PS3.5 §9.1).
MAX_UID_LENGTH = 64


def is_valid_uid(value: str) -> bool:
    """True for a UID made of digits and dots, at most 64 characters long."""
    return 0 < len(value) <= MAX_UID_LENGTH and bool(_UID.match(value))
