"""FHIR date, dateTime and instant values as the UTC instants ``[low, high)`` they cover.

One rule for every date the FHIR side compares: search values (:mod:`drimhub.fhir.search`,
:mod:`drimhub.fhir.audit_routes`) and the index rows of stored resources
(:mod:`drimhub.fhir.indexing`).

- A value covers its whole precision (R4 search.html §3.1.1.4.2 "date"): ``2024`` the year,
  ``2024-03`` the month, ``2024-03-05`` the day, ``2024-03-05T10:15`` the minute (a search
  value may stop at minutes), ``…T10:15:30`` the second, ``…T10:15:30.5`` the tenth of a second
  (fractions are a precision too: each digit narrows the range, up to the microsecond).
- A dateTime with a time carries a zone (R4 datatypes.html#dateTime: "If hours and minutes are
  specified, a time zone SHALL be populated"). One without is read as UTC: this server's
  documented reading, the same for search values and stored values, so that two values without
  a zone compare as written.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

#: Comparison prefixes of a date search value (R4 search.html §3.1.1.4.2 / §3.1.1.5.1).
PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
#: date | dateTime | instant (R4 datatypes.html), seconds optional for search values.
_VALUE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
                    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def date_range(value: str) -> tuple[datetime, datetime]:
    """The UTC instants ``[low, high)`` a FHIR date, dateTime or instant covers at its precision.

    Parameters
    ----------
    value : str
        ``YYYY[-MM[-DD[Thh:mm[:ss[.f…]][Z|±hh:mm]]]]``; a time without a zone is UTC.

    Returns
    -------
    tuple of datetime
        Aware UTC ``low`` (inclusive) and ``high`` (exclusive).

    Raises
    ------
    ValueError
        Not a FHIR date, dateTime or instant (or not a calendar date or time).
    """
    match = _VALUE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a FHIR date, dateTime or instant")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    low = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                   int(second or 0), int((fraction or "0")[:6].ljust(6, "0")), tzinfo=_zone(zone))
    if hour is None:
        if day:
            high = low + timedelta(days=1)
        elif month:
            high = low.replace(year=low.year + (low.month == 12), month=low.month % 12 + 1)
        else:
            high = low.replace(year=low.year + 1)
    elif fraction:
        high = low + timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    else:
        high = low + (timedelta(seconds=1) if second else timedelta(minutes=1))
    return low.astimezone(timezone.utc), high.astimezone(timezone.utc)


def split_prefix(value: str) -> tuple[str, str]:
    """``[prefix]value`` → (prefix, value); ``eq`` when none is given (search.html §3.1.1.4.2)."""
    if value[:2] in PREFIXES:
        return value[:2], value[2:]
    return "eq", value


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return timezone.utc
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"{text!r} is not a time zone offset")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if text[0] == "-" else offset)


__all__ = ["PREFIXES", "date_range", "split_prefix"]
