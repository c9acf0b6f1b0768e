"""A parsed FHIR search as the store reads it: plain values, where it runs, how dates compare.

:mod:`drimhub.fhir.search` parses a request into these (a :class:`Query` of :class:`Criterion`
values); :mod:`drimhub.store.fhirsearch` and :mod:`drimhub.store.fhirstudies` turn them into SQL;
:mod:`drimhub.fhir.indexing` extracts :class:`IndexValue` rows that :mod:`drimhub.store.fhir`
writes. The search parameter and resource type of a criterion are the registry's
(:mod:`drimhub.fhir.registry`), seen here only through what the store reads of them
(:class:`Param`, :class:`Searched`), so that the store never imports the FHIR services.

Also here, shared by the SQL of every type: the :class:`Scope` of a search and
:func:`date_match`, a date criterion against a range by its prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, DateTime, and_, func, or_
from sqlalchemy.orm import Session

from drimhub.store.access import Access
from drimhub.store.models import utc

#: Page size when a search gives no ``_count`` (search.html §3.1.1.5.6).
DEFAULT_COUNT = 50


class Param(Protocol):
    """What the store reads of a search parameter (:class:`drimhub.fhir.registry.SearchParam`)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...


class Searched(Protocol):
    """What the store reads of a resource type (:class:`drimhub.fhir.registry.ResourceType`)."""

    @property
    def name(self) -> str: ...

    def param(self, name: str) -> Param | None: ...


# --- index rows of stored resources ----------------------------------------------------------

@dataclass(frozen=True)
class IndexValue:
    """One value of a search parameter of a stored resource, as a row of ``fhir_index``.

    What each column holds, per parameter type:

    token
        ``system`` and ``value`` (the code, identifier value or boolean text), matched exactly.
    string
        ``value``: folded (accents removed, case folded: :func:`drimhub.dicomweb.normalize.fold_text`)
        for the default starts-with and ``:contains`` matching; ``exact``: the text as written, for
        ``:exact``. Both cut to 255 characters.
    date
        ``low`` and ``high``: the instants ``[low, high)`` the value covers, UTC (a date covers its
        whole day; a Period its start to its end; an open end is None).
    reference
        ``ref_type`` and ``ref_id`` for a literal reference (``Patient/123``, or an absolute URL on
        this server's base); ``system`` and ``value`` for ``Reference.identifier`` (the
        ``:identifier`` modifier). Both may be set on one row.
    uri
        ``value``: the URI as written.
    """

    param: str
    system: str | None = None
    value: str | None = None
    exact: str | None = None
    low: datetime | None = None
    high: datetime | None = None
    ref_type: str | None = None
    ref_id: str | None = None


# --- a parsed search --------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    """``system|code``: ``system`` None matches any system, ``""`` no system; ``code`` None any code."""

    system: str | None
    code: str | None
    #: ``:of-type``: the identifier type coding (system, code) the value must have.
    of_type: tuple[str, str] | None = None


@dataclass(frozen=True)
class DateValue:
    """A date criterion: a prefix and the UTC instants ``[low, high)`` the value covers."""

    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True)
class Ref:
    """A literal reference (``type`` None: any target type) or, with ``:identifier``, a token."""

    type: str | None = None
    id: str | None = None
    identifier: Token | None = None
    #: An absolute URL that is not on this server: it matches nothing stored here.
    foreign: bool = False


@dataclass(frozen=True)
class Criterion:
    """One search parameter occurrence: its values are ORed; criteria of a query are ANDed.

    ``chain`` is the criterion on the target type ``target`` of a chained reference
    (``patient.identifier=...``): then ``values`` is empty.
    """

    param: Param
    modifier: str | None
    values: tuple[Any, ...]
    chain: Criterion | None = None
    target: str | None = None


@dataclass(frozen=True)
class Include:
    """``_include`` / ``_revinclude``: ``source:param`` (to ``target``, None: any of its targets)."""

    source: str
    param: str
    target: str | None

    def __str__(self) -> str:
        return f"{self.source}:{self.param}" + (f":{self.target}" if self.target else "")


@dataclass(frozen=True)
class SortKey:
    """One ``_sort`` key: a parameter name (or ``_id``, ``_lastUpdated``) and its direction."""

    name: str
    descending: bool = False

    def __str__(self) -> str:
        return ("-" if self.descending else "") + self.name


@dataclass
class Query:
    """A parsed search of one type."""

    rtype: Searched
    criteria: list[Criterion] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    cursor: str | None = None
    #: The parameters as received, but ``_cursor``: what paging links repeat.
    pairs: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.rtype.name


# --- where a search runs, and the date comparison every type shares ------------------------

@dataclass(frozen=True)
class Scope:
    """Who searches and where: the session, the caller's access, the node's Endpoint resources."""

    session: Session
    access: Access
    endpoints: tuple[dict[str, Any], ...] = ()

    @property
    def endpoint_ids(self) -> frozenset[str]:
        return frozenset(e["id"] for e in self.endpoints)

    @property
    def sqlite(self) -> bool:
        return self.session.get_bind().dialect.name == "sqlite"


def date_match(v: DateValue, low: Any, high: Any, *, inclusive_high: bool, open_ends: bool,
               fmt: Callable[[datetime], Any] = lambda d: d) -> ColumnElement[bool]:
    """A target range ``[low, high)`` (``high`` its last instant when ``inclusive_high``) against a
    search value, by its prefix (R4 search.html §3.1.1.4.2). With ``open_ends`` a NULL bound is
    an open end (a Period without start or end)."""
    pl, ph = fmt(v.low), fmt(v.high)

    def starts_before(x: Any) -> ColumnElement[bool]:
        return or_(low.is_(None), low < x) if open_ends else low < x

    def ends_after(x: Any) -> ColumnElement[bool]:
        above = high >= x if inclusive_high else high > x
        return or_(high.is_(None), above) if open_ends else above

    def starts_from(x: Any) -> ColumnElement[bool]:
        return low >= x

    def ends_by(x: Any) -> ColumnElement[bool]:
        return high < x if inclusive_high else high <= x

    eq = and_(starts_from(pl), ends_by(ph))
    return {
        "eq": eq,
        "ne": or_(starts_before(pl), ends_after(ph)),
        "gt": ends_after(ph),
        "lt": starts_before(pl),
        "ge": or_(ends_after(ph), eq),
        "le": or_(starts_before(pl), eq),
        "sa": starts_from(ph),
        "eb": ends_by(pl),
        "ap": and_(starts_before(ph), ends_after(pl)),
    }[v.prefix]


def stored_instant(scope: Scope, column: Any) -> Any:
    """A server-default timestamp normalised on SQLite (CURRENT_TIMESTAMP has no fraction, bound
    values have six digits: as text they would not compare)."""
    if scope.sqlite:
        return func.strftime("%Y-%m-%d %H:%M:%f000", column, type_=DateTime(timezone=True))
    return column



__all__ = ["Criterion", "DEFAULT_COUNT", "DateValue", "Include", "IndexValue", "Param", "Query", "Ref", "Scope",
           "Searched", "SortKey", "Token", "date_match", "stored_instant", "utc"]
