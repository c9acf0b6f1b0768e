"""SQL of FHIR search: parsed criteria (:mod:`drimhub.store.fhirquery`) as conditions, pages by key.

Stored types (Patient, DiagnosticReport) are searched through their index rows
(:class:`~drimhub.store.models.FhirIndex`, one per value, see
:class:`~drimhub.store.fhirquery.IndexValue`); ImagingStudy through the study, series and instance
rows it is derived from (:mod:`drimhub.store.fhirstudies`); Endpoint, a handful of resources from
the configuration, in memory. This module dispatches between them and pages every type.
Every query carries the caller's visibility (:func:`drimhub.store.fhir.visibility`,
:meth:`~drimhub.store.access.Access.study_filter`), chained and included resources too. Values
are always bound parameters.

Pages are cut by key (seek), never by OFFSET: a page is the rows after the last one of the
previous page in the order (sort keys..., primary key), so that page 1000 costs what page 1
costs. The cursor (:class:`Cursor`) carries that last row's keys.

Two readings of dates, documented in the CapabilityStatement:

- ImagingStudy ``started`` compares the study's StudyDate/StudyTime as recorded
  (:mod:`drimhub.store.fhirstudies` tells how, and where it differs from the rendered value);
- a ``_sort`` on a date parameter orders by the earliest instant of its values, on a string
  parameter by its smallest folded value; resources without a value come first ascending.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import ColumnElement, DateTime, Select, String, and_, false, func, literal, not_, or_, select, true

from drimhub.dicomweb.normalize import fold_text
from drimhub.errors import InvalidQuery
from drimhub.store.fhir import visibility
from drimhub.store.fhirquery import (Criterion, Query, Ref, Scope, Searched, SortKey, Token, date_match,
                                     utc)
from drimhub.store.fhirstudies import study_filter, study_sort_key
from drimhub.store.models import FhirIndex, FhirResource, Study

#: Sort value of a resource without a value of the sort parameter (first ascending, last descending).
_NO_DATE = datetime(1, 1, 1, tzinfo=timezone.utc)


# --- stored resources -------------------------------------------------------------------------

def _token(t: Token, system: Any, value: Any) -> ColumnElement[bool]:
    """``system|code`` on two columns (search.html §3.1.1.4.10)."""
    clauses = []
    if t.system == "":
        clauses.append(system.is_(None))
    elif t.system is not None:
        clauses.append(system == t.system)
    if t.code is not None:
        clauses.append(value == t.code)
    return and_(*clauses)


def _index_value(c: Criterion, v: Any) -> ColumnElement[bool]:
    """One value of ``c`` on the columns of an index row."""
    kind = "token" if c.modifier == "identifier" else c.param.type
    if kind == "token":
        return _token(v, FhirIndex.system, FhirIndex.value)
    if kind == "string":
        if c.modifier == "exact":
            return FhirIndex.exact == v
        if c.modifier == "contains":
            return FhirIndex.value.contains(fold_text(v), autoescape=True)
        return FhirIndex.value.startswith(fold_text(v), autoescape=True)
    if kind == "date":
        return date_match(v, FhirIndex.low, FhirIndex.high, inclusive_high=False, open_ends=True)
    if kind == "uri":
        return FhirIndex.value == v
    return _ref(v, FhirIndex.ref_type, FhirIndex.ref_id)


def _ref(v: Ref, ref_type: Any, ref_id: Any) -> ColumnElement[bool]:
    if v.foreign:
        return false()
    return and_(ref_id == v.id, *([ref_type == v.type] if v.type else []))


def _rows_of(type_: str, param: str, *conditions: ColumnElement[bool]) -> Select[Any]:
    return select(FhirIndex.resource_pk).where(FhirIndex.type == type_, FhirIndex.param == param, *conditions)


def _stored_criterion(scope: Scope, type_: str, c: Criterion) -> ColumnElement[bool]:
    name = c.param.name
    if name in ("_id", "_lastUpdated") and c.modifier == "missing":  # columns every resource has
        return false() if c.values[0] else true()
    if name == "_id":
        return _id_match(c, FhirResource.id)
    if name == "_lastUpdated":
        return or_(*(date_match(v, FhirResource.last_updated, FhirResource.last_updated, inclusive_high=True,
                                open_ends=False) for v in c.values))
    if c.chain is not None:
        targets = id_select(scope, c.target or "", [c.chain])
        return FhirResource.pk.in_(_rows_of(type_, name, FhirIndex.ref_type == c.target, FhirIndex.ref_id.in_(targets)))
    if c.modifier == "missing":
        present = FhirResource.pk.in_(_rows_of(type_, name))
        return not_(present) if c.values[0] else present
    matching = FhirResource.pk.in_(_rows_of(type_, name, or_(*(_index_value(c, v) for v in c.values))))
    return not_(matching) if c.modifier == "not" else matching


def _id_match(c: Criterion, column: Any) -> ColumnElement[bool]:
    ids = [v.code for v in c.values if v.system is None and v.code]
    return column.not_in(ids) if c.modifier == "not" else column.in_(ids)


def stored_filter(scope: Scope, type_: str, criteria: Sequence[Criterion]) -> list[ColumnElement[bool]]:
    """Conditions on :class:`FhirResource` for the current, visible resources ``criteria`` match."""
    return [FhirResource.deleted.is_(False), *visibility(scope.access, type_),
            *(_stored_criterion(scope, type_, c) for c in criteria)]


# --- ids of any type (chains, conditional interactions) ---------------------------------------

def id_select(scope: Scope, type_: str, criteria: Sequence[Criterion]) -> Any:
    """The ids of the visible resources of ``type_`` ``criteria`` match: a subquery, or a list."""
    if type_ == "ImagingStudy":
        return select(Study.study_uid).where(*study_filter(scope, criteria))
    if type_ == "Endpoint":  # the one type held in memory (memory_match)
        return [r["id"] for r in memory_match(scope, type_, criteria)]
    return select(FhirResource.id).where(FhirResource.type == type_, *stored_filter(scope, type_, criteria))


def match_ids(scope: Scope, query: Query) -> list[str]:
    """Ids of every resource ``query`` matches (conditional interactions), in primary-key order."""
    session = scope.session
    found = id_select(scope, query.type, query.criteria)
    if isinstance(found, list):
        return found
    order = Study.pk if query.type == "ImagingStudy" else FhirResource.pk
    return list(session.scalars(found.order_by(order)))


# --- Endpoint: in memory ----------------------------------------------------------------------

def memory_match(scope: Scope, type_: str, criteria: Sequence[Criterion]) -> list[dict[str, Any]]:
    """The node's Endpoint resources (the only type held in memory) ``criteria`` match."""
    found = scope.endpoints if type_ == "Endpoint" else ()
    return [r for r in found if all(_memory_criterion(r, c) for c in criteria)]


def _memory_values(resource: dict[str, Any], name: str) -> list[Any]:
    if name == "_id":
        return [resource.get("id")]
    path = {"connection-type": "connectionType", "status": "status", "name": "name"}[name]
    value = resource.get(path)
    return [] if value is None else value if isinstance(value, list) else [value]


def _memory_criterion(resource: dict[str, Any], c: Criterion) -> bool:
    values = [] if c.param.name == "_lastUpdated" else _memory_values(resource, c.param.name)  # none: configuration
    if c.modifier == "missing":
        return not values if c.values[0] else bool(values)
    hit = any(_memory_value(c, found, v) for found in values for v in c.values)
    return not hit if c.modifier == "not" else hit


def _memory_value(c: Criterion, found: Any, v: Any) -> bool:
    if c.param.type == "string":
        if c.modifier == "exact":
            return bool(found == v)
        folded, wanted = fold_text(str(found)), fold_text(v)
        return wanted in folded if c.modifier == "contains" else folded.startswith(wanted)
    system, code = (found.get("system"), found.get("code")) if isinstance(found, dict) else (None, found)
    if v.system == "":
        return system is None and code == v.code
    return (v.system is None or v.system == system) and (v.code is None or v.code == code)


# --- sorting and paging -----------------------------------------------------------------------

@dataclass(frozen=True)
class Cursor:
    """Where a page starts: the sort keys and primary key of the last row of the previous page."""

    sort: str
    keys: tuple[Any, ...]
    pk: int

    def encode(self) -> str:
        keys = [k.isoformat() if isinstance(k, datetime) else k for k in self.keys]
        return base64.urlsafe_b64encode(orjson.dumps({"s": self.sort, "k": keys, "p": self.pk})).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, sort: str, kinds: Sequence[str]) -> Cursor:
        """The cursor of a ``next`` link of the same search.

        Raises
        ------
        InvalidQuery
            Not a cursor this server made for this ``_sort`` (tampered, or from another search).
        """
        try:
            data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            keys = data["k"]
            if (set(data) != {"s", "k", "p"} or data["s"] != sort or not isinstance(keys, list)
                    or len(keys) != len(kinds) or type(data["p"]) is not int or data["p"] < 0):
                raise ValueError
            return cls(sort, tuple(_cursor_key(k, kind) for k, kind in zip(keys, kinds)), data["p"])
        except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise InvalidQuery("_cursor: not a paging cursor of this search (use the next link as given)") from None


def _cursor_key(value: Any, kind: str) -> Any:
    if not isinstance(value, str):
        raise ValueError(value)
    if kind == "date":
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return value


@dataclass(frozen=True)
class Plan:
    """How to list one type: the row, its primary key, its filter and sort key expressions."""

    pk: Any
    id: Any
    content: Any
    where: list[ColumnElement[bool]]
    keys: list[tuple[Any, bool, str]]  # (expression, descending, "date" | "string")

    @property
    def sort_spec(self) -> str:
        return ",".join(("-" if d else "") + str(i) for i, (_, d, _) in enumerate(self.keys))


def _stored_sort_key(rtype: Searched, key: SortKey) -> tuple[Any, bool, str]:
    if key.name == "_id":
        return FhirResource.id, key.descending, "string"
    if key.name == "_lastUpdated":
        return FhirResource.last_updated, key.descending, "date"
    param = rtype.param(key.name)
    if param is not None and param.type == "date":
        low = select(func.min(FhirIndex.low)).where(FhirIndex.resource_pk == FhirResource.pk,
                                                    FhirIndex.param == key.name).scalar_subquery()
        return func.coalesce(low, literal(_NO_DATE, DateTime(timezone=True))), key.descending, "date"
    value = select(func.min(FhirIndex.value)).where(FhirIndex.resource_pk == FhirResource.pk,
                                                    FhirIndex.param == key.name).scalar_subquery()
    return func.coalesce(value, literal("", String)), key.descending, "string"


def plan(scope: Scope, query: Query) -> Plan:
    """The rows, filter and order of a search of a stored type or of ImagingStudy."""
    if query.type == "ImagingStudy":
        return Plan(Study.pk, Study.study_uid, literal(None), study_filter(scope, query.criteria),
                    [study_sort_key(scope, k) for k in query.sort])
    return Plan(FhirResource.pk, FhirResource.id, FhirResource.content,
                [FhirResource.type == query.type, *stored_filter(scope, query.type, query.criteria)],
                [_stored_sort_key(query.rtype, k) for k in query.sort])


def _after(p: Plan, cursor: Cursor) -> ColumnElement[bool]:
    """Rows after ``cursor`` in the order (keys..., pk): the lexicographic seek condition."""
    alternatives = []
    for i in range(len(p.keys) + 1):
        equal = [p.keys[j][0] == cursor.keys[j] for j in range(i)]
        if i < len(p.keys):
            expression, descending, _ = p.keys[i]
            beyond = expression < cursor.keys[i] if descending else expression > cursor.keys[i]
        else:
            beyond = p.pk > cursor.pk
        alternatives.append(and_(*equal, beyond))
    return or_(*alternatives)


@dataclass(frozen=True)
class Page:
    """One page of matches: (id, stored JSON or None) in order, and the cursor of the next page."""

    rows: list[tuple[str, bytes | None]]
    next: Cursor | None


def page_statement(p: Plan, count: int, cursor: Cursor | None) -> Select[Any]:
    """The SELECT of one page (``count`` + 1 rows: the extra one tells that a next page exists)."""
    stmt = select(p.pk, p.id, p.content, *(k for k, _, _ in p.keys)).where(*p.where)
    if cursor is not None:
        stmt = stmt.where(_after(p, cursor))
    order = [k.desc() if d else k.asc() for k, d, _ in p.keys]
    return stmt.order_by(*order, p.pk.asc()).limit(count + 1)


def page(scope: Scope, query: Query) -> Page:
    """One page of a search of a stored type or of ImagingStudy.

    Raises
    ------
    InvalidQuery
        A tampered ``_cursor``.
    """
    p = plan(scope, query)
    cursor = Cursor.decode(query.cursor, p.sort_spec, [k for _, _, k in p.keys]) if query.cursor else None
    found = scope.session.execute(page_statement(p, query.count, cursor)).all()
    rows = [(r[1], r[2]) for r in found[:query.count]]
    following = None
    if len(found) > query.count and query.count:
        last = found[query.count - 1]
        keys = tuple(utc(k) if isinstance(k, datetime) else k for k in last[3:])
        following = Cursor(p.sort_spec, keys, last[0])
    return Page(rows, following)


def count(scope: Scope, query: Query) -> int:
    """How many resources match (``_total=accurate``, ``_summary=count``)."""
    p = plan(scope, query)
    return int(scope.session.scalar(select(func.count()).select_from(select(p.pk).where(*p.where).subquery())) or 0)


# --- what includes need -----------------------------------------------------------------------

def stored_by_ids(scope: Scope, type_: str, ids: Sequence[str], limit: int) -> list[tuple[str, bytes]]:
    """(id, JSON) of the visible, current resources of ``type_`` among ``ids``."""
    if not ids:
        return []
    stmt = (select(FhirResource.id, FhirResource.content)
            .where(FhirResource.type == type_, FhirResource.id.in_(sorted(set(ids))),
                   *stored_filter(scope, type_, []))
            .order_by(FhirResource.pk).limit(limit))
    return [(i, c) for i, c in scope.session.execute(stmt)]


def references_of(scope: Scope, type_: str, ids: Sequence[str], param: str) -> list[tuple[str, str]]:
    """(type, id) of the literal references ``param`` of the stored ``type_`` resources ``ids`` hold."""
    if not ids:
        return []
    stmt = (select(FhirIndex.ref_type, FhirIndex.ref_id).distinct()
            .join(FhirResource, FhirResource.pk == FhirIndex.resource_pk)
            .where(FhirResource.type == type_, FhirResource.id.in_(list(ids)), FhirIndex.param == param,
                   FhirIndex.ref_id.is_not(None)))
    return [(t, i) for t, i in scope.session.execute(stmt)]


def stored_referring(scope: Scope, source: str, param: str, target: str, ids: Sequence[str],
                     limit: int) -> list[tuple[str, bytes]]:
    """(id, JSON) of the visible ``source`` resources whose ``param`` references ``target/<one of ids>``."""
    if not ids:
        return []
    referring = _rows_of(source, param, FhirIndex.ref_type == target, FhirIndex.ref_id.in_(list(ids)))
    stmt = (select(FhirResource.id, FhirResource.content)
            .where(FhirResource.type == source, FhirResource.pk.in_(referring), *stored_filter(scope, source, []))
            .order_by(FhirResource.pk).limit(limit))
    return [(i, c) for i, c in scope.session.execute(stmt)]


__all__ = ["Cursor", "Page", "Plan", "count", "id_select", "match_ids", "memory_match", "page", "page_statement",
           "plan", "references_of", "stored_by_ids", "stored_filter", "stored_referring"]
