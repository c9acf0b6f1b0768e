"""Byte ranges (RFC 9110 §14) on single-part answers of known length: bulk data and instances.

PS3.18 §8.6.1 lets an origin server honour Range on the resources it returns as one
representation. This node does so for a single-part ``application/dicom`` instance sent as
stored and a single-part ``application/octet-stream`` bulk data value: one range per request
(``bytes=a-b``, ``bytes=a-``, ``bytes=-n``). Several ranges, another unit or a malformed header
are ignored and the whole representation is sent (RFC 9110 §14.2 lets a server ignore Range).
A range starting past the end is a 416.
"""

from __future__ import annotations

import re

from drimhub.errors import RangeNotSatisfiable

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte positions, inclusive, that a Range header asks of ``size`` bytes.

    Parameters
    ----------
    header : str or None
        The Range header field value.
    size : int
        Length of the whole representation.

    Returns
    -------
    tuple of int or None
        None when the whole representation is to be sent (no header, or one this node ignores).

    Raises
    ------
    RangeNotSatisfiable
        The range starts past the end, or asks for the last 0 bytes (RFC 9110 §14.1.1).
    """
    match = _SINGLE.match(header or "")
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignored (RFC 9110 §14.1.1)
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(int(last) if last else size - 1, size - 1)


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"the requested range is outside the {size} bytes of the representation",
                               content_range=f"bytes */{size}")


def content_range(first: int, last: int, size: int) -> str:
    """The Content-Range field value of a 206 answer (RFC 9110 §14.4)."""
    return f"bytes {first}-{last}/{size}"
