"""SQL for QIDO-RS: a :class:`~drimhub.dicomweb.query.QueryExpression` as a SQLAlchemy ``select()``.

Every value reaches the database as a bound parameter; no SQL text is built from request
strings. Wildcards become ``LIKE`` patterns with an explicit escape character (``%``, ``_`` and
the escape character itself are escaped first). SQLite's ``LIKE`` ignores ASCII case, so on
SQLite a ``GLOB`` on the same pattern is added to keep text matching case-sensitive as on
PostgreSQL (PN keys are folded on both sides, so they are case-insensitive on both).

Study-level keys that describe lower levels (ModalitiesInStudy, SOPClassesInStudy) match through
``EXISTS`` on series / instances. The attributes computed from lower levels (counts, modalities,
SOP classes) are read by one grouped query each, over the rows of the page: a request runs a
constant number of queries, whatever the page size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Unpack

from sqlalchemy import ColumnElement, Select, and_, distinct, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from drimhub.dicomweb.query import (Condition, FuzzyName, Level, QueryExpression, Range, Single, Universal,
                                    ValueList, Wildcard)
from drimhub.store.access import Access
from drimhub.store.models import Instance, Series, Study

_TABLES: dict[str, tuple[Level, type[Any]]] = {
    "study": (Level.STUDY, Study), "series": (Level.SERIES, Series), "instance": (Level.INSTANCE, Instance)}

ESCAPE = "\\"


@dataclass(frozen=True)
class MatchRow:
    """One matching entity with its parents: primary keys, UIDs, the patient and stored DICOM JSON."""

    study_pk: int
    study_uid: str
    study_attrs: bytes
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    series_pk: int | None = None
    series_uid: str | None = None
    series_attrs: bytes | None = None
    instance_pk: int | None = None
    sop_uid: str | None = None
    instance_json: bytes | None = None


def like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern (PS3.4 C.2.2.2.4) as a LIKE pattern escaped with ``ESCAPE``."""
    escaped = pattern.replace(ESCAPE, ESCAPE * 2).replace("%", ESCAPE + "%").replace("_", ESCAPE + "_")
    return escaped.replace("*", "%").replace("?", "_")


def _like(col: Any, pattern: str, sqlite: bool) -> ColumnElement[bool]:
    clause = col.like(like_pattern(pattern), escape=ESCAPE)
    if sqlite:  # GLOB is case-sensitive; '[' is its only other special character
        clause = and_(clause, col.op("GLOB")(pattern.replace("[", "[[]")))
    return clause  # type: ignore[no-any-return]


def _fuzzy(col: Any, words: Sequence[str]) -> ColumnElement[bool]:
    """Each word starts the name or follows a separator (PS3.18 §8.3.4.1 fuzzy matching)."""
    per_word = []
    for word in words:
        w = like_pattern(word)
        per_word.append(or_(*(col.like(p, escape=ESCAPE) for p in (w + "%", "%^" + w + "%", "% " + w + "%",
                                                                    "%-" + w + "%"))))
    return and_(*per_word)


def _predicate(cond: Condition, col: Any, sqlite: bool) -> ColumnElement[bool] | None:
    """The SQL form of one condition on ``col`` (PS3.4 C.2.2.2)."""
    if isinstance(cond, Universal):
        return None  # C.2.2.2.3: no filter
    if isinstance(cond, Single):
        return col == cond.value  # type: ignore[no-any-return]
    if isinstance(cond, ValueList):
        return col.in_(cond.values)  # type: ignore[no-any-return]
    if isinstance(cond, Wildcard):
        return _like(col, cond.pattern, sqlite)
    if isinstance(cond, Range):
        bounds = []
        if cond.low is not None:
            bounds.append(col >= cond.low)
        if cond.high is not None:
            bounds.append(col <= cond.high)
        return and_(*bounds)
    if isinstance(cond, FuzzyName):
        return _fuzzy(col, cond.words)
    raise TypeError(f"unknown condition {cond!r}")


def _clause(cond: Condition, sqlite: bool) -> ColumnElement[bool] | None:
    """One condition; keys on a lower table than their level match via EXISTS."""
    table, _, column = cond.key.column.partition(".")
    table_level, model = _TABLES[table]
    if table_level <= cond.key.level:
        return _predicate(cond, getattr(model, column), sqlite)
    if isinstance(cond, Universal):
        return None
    sub_series = aliased(Series)
    if model is Series:  # ModalitiesInStudy
        pred = _predicate(cond, getattr(sub_series, column), sqlite)
        return exists().where(sub_series.study_pk == Study.pk, pred)  # type: ignore[arg-type]
    sub_instance = aliased(Instance)  # SOPClassesInStudy
    pred = _predicate(cond, getattr(sub_instance, column), sqlite)
    return exists(select(sub_instance.pk).join(sub_series, sub_instance.series_pk == sub_series.pk)
                  .where(sub_series.study_pk == Study.pk, pred))  # type: ignore[arg-type]


def _base(level: Level) -> Select[Unpack[tuple[Any, ...]]]:
    """Columns and joins of a level, in a deterministic order (stable limit/offset pages)."""
    study_cols = (Study.pk, Study.study_uid, Study.attrs, Study.patient_id, Study.issuer_of_patient_id)
    if level is Level.STUDY:
        return select(*study_cols).order_by(Study.study_date.desc().nulls_last(),
                                            Study.study_time.desc().nulls_last(), Study.pk)
    series_cols = (Series.pk, Series.series_uid, Series.attrs)
    order = (Series.study_pk, Series.series_number.nulls_last(), Series.pk)
    if level is Level.SERIES:
        return select(*study_cols, *series_cols).join(Study, Series.study_pk == Study.pk).order_by(*order)
    return (select(*study_cols, *series_cols, Instance.pk, Instance.sop_uid, Instance.dicom_json)
            .join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
            .order_by(*order, Instance.instance_number.nulls_last(), Instance.pk))


def search_statement(expr: QueryExpression, limit: int, access: Access,
                     sqlite: bool = False) -> Select[Unpack[tuple[Any, ...]]]:
    """The ``select()`` of the entities matching ``expr``, ``limit`` rows from ``expr.offset``.

    Parameters
    ----------
    expr : QueryExpression
        The parsed query.
    limit : int
        Rows to fetch (PS3.18 §8.3.4.4; the caller adds one to detect truncation).
    access : Access
        The organisations (and patient) whose studies may match; applied in SQL.
    sqlite : bool
        Add the SQLite-only GLOB clauses that keep text matching case-sensitive.

    Returns
    -------
    Select
    """
    stmt = _base(expr.level).where(*access.study_filter())
    for cond in expr.conditions:
        clause = _clause(cond, sqlite)
        if clause is not None:
            stmt = stmt.where(clause)
    return stmt.limit(limit).offset(expr.offset)


def find_matches(session: Session, expr: QueryExpression, limit: int, access: Access) -> list[MatchRow]:
    """Run :func:`search_statement` and return its rows as :class:`MatchRow`.

    Parameters
    ----------
    session : Session
        A read session.
    expr : QueryExpression
        The parsed query.
    limit : int
        Rows to fetch at most.
    access : Access
        The organisations (and patient) whose studies may match.

    Returns
    -------
    list of MatchRow
    """
    sqlite = session.get_bind().dialect.name == "sqlite"
    rows = session.execute(search_statement(expr, limit, access, sqlite)).all()
    return [MatchRow(*_plain(row)) for row in rows]


def _plain(row: Sequence[Any]) -> list[Any]:
    """Row values with binary columns as ``bytes`` (some drivers give ``memoryview``)."""
    return [bytes(v) if isinstance(v, memoryview) else v for v in row]


# --- computed attributes (PS3.18 Table 6.7.1-2 / 2a), one grouped query each ---------------

def study_counts(session: Session, study_pks: Iterable[int]) -> dict[int, tuple[int, int]]:
    """NumberOfStudyRelatedSeries and NumberOfStudyRelatedInstances, per study pk."""
    stmt = (select(Series.study_pk, func.count(distinct(Series.pk)), func.count(Instance.pk))
            .outerjoin(Instance, Instance.series_pk == Series.pk)
            .where(Series.study_pk.in_(list(study_pks))).group_by(Series.study_pk))
    return {pk: (n_series, n_instances) for pk, n_series, n_instances in session.execute(stmt)}


def series_counts(session: Session, series_pks: Iterable[int]) -> dict[int, int]:
    """NumberOfSeriesRelatedInstances, per series pk."""
    stmt = (select(Instance.series_pk, func.count(Instance.pk))
            .where(Instance.series_pk.in_(list(series_pks))).group_by(Instance.series_pk))
    return {pk: n for pk, n in session.execute(stmt)}


def study_modalities(session: Session, study_pks: Iterable[int]) -> dict[int, list[str]]:
    """ModalitiesInStudy (distinct, sorted), per study pk."""
    stmt = (select(Series.study_pk, Series.modality).distinct()
            .where(Series.study_pk.in_(list(study_pks)), Series.modality.is_not(None)))
    return _grouped(session.execute(stmt))


def study_sop_classes(session: Session, study_pks: Iterable[int]) -> dict[int, list[str]]:
    """SOPClassesInStudy (distinct, sorted), per study pk."""
    stmt = (select(Series.study_pk, Instance.sop_class_uid).distinct()
            .join(Instance, Instance.series_pk == Series.pk).where(Series.study_pk.in_(list(study_pks))))
    return _grouped(session.execute(stmt))


def _grouped(rows: Iterable[Any]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for pk, value in rows:
        out[pk].append(value)
    return {pk: sorted(values) for pk, values in out.items()}
