"""Queries behind WADO-RS and DELETE: the instance rows of a study, a series or one instance.

Rows come back as plain frozen values (:class:`StoredInstance`), so that a streamed answer
needs no session once the view has returned. Order is series number, instance number
(unnumbered last), then insertion order. Every query takes the caller's
:class:`~drimhub.store.access.Access` and applies it in SQL: a study of an organisation the
caller may not see is not found.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, NamedTuple

import logging

from sqlalchemy import Delete, Select, bindparam, delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from drimhub.store.access import Access
from drimhub.store.models import Instance, Series, Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInstance:
    """What WADO-RS needs to serve one instance from its blob."""

    pk: int
    sop_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    digest: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    samples_per_pixel: int | None
    number_of_frames: int | None
    pixel_offset: int | None
    pixel_length: int | None


_COLUMNS = (Instance.pk, Instance.sop_uid, Instance.transfer_syntax, Instance.blob_key, Instance.size,
            Instance.digest, Instance.rows, Instance.columns, Instance.bits_allocated,
            Instance.samples_per_pixel, Instance.number_of_frames, Instance.pixel_offset,
            Instance.pixel_length)


@dataclass(frozen=True)
class StudyRef:
    """A stored study: its owner and its patient."""

    pk: int
    study_uid: str
    org: str
    patient_id: str | None
    issuer_of_patient_id: str | None


_STUDY_COLUMNS = (Study.pk, Study.study_uid, Study.org, Study.patient_id, Study.issuer_of_patient_id)


def locate_study(session: Session, study: str, access: Access) -> StudyRef | None:
    """The study ``study`` when it exists in an organisation ``access`` sees (its patient is not checked).

    Parameters
    ----------
    session : Session
        A read session.
    study : str
        Study Instance UID.
    access : Access
        The caller's access; all of it but its patient is applied here (organisations, shared,
        only and opposed studies), so that the caller can tell "no such study" (None) from
        "another patient's study" (a ref it may not read).

    Returns
    -------
    StudyRef or None
    """
    stmt = (select(Study.pk, Study.study_uid, Study.org, Study.patient_id, Study.issuer_of_patient_id)
            .where(Study.study_uid == study, *replace(access, patient=None).study_filter()))
    row = session.execute(stmt).first()
    return StudyRef(*row) if row else None


def _scoped(stmt: Select[Any], study: Any, series: Any, sop: Any, access: Access) -> Select[Any]:
    stmt = (stmt.join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
            .where(Study.study_uid == study, *access.study_filter()))
    if series is not None:
        stmt = stmt.where(Series.series_uid == series)
    if sop is not None:
        stmt = stmt.where(Instance.sop_uid == sop)
    return stmt.order_by(Series.series_number.asc().nulls_last(), Series.pk,
                         Instance.instance_number.asc().nulls_last(), Instance.pk)


def instances(session: Session, access: Access, study: str, series: str | None = None,
              sop: str | None = None) -> list[StoredInstance]:
    """Instances of a study, of one of its series, or one instance of that series.

    Parameters
    ----------
    session : Session
        A read session.
    access : Access
        The caller's access (organisations and patient).
    study, series, sop : str
        The Study, Series and SOP Instance UIDs; ``series`` and ``sop`` narrow the scope.

    Returns
    -------
    list of StoredInstance
        Empty when nothing visible matches (unknown UID, a series of another study, a study
        the caller may not see).
    """
    rows = session.execute(_scoped(select(*_COLUMNS), study, series, sop, access)).all()
    return [StoredInstance(*row) for row in rows]


@lru_cache(maxsize=256)
def _instance_in_study_stmt(access: Access) -> Select[Any]:
    """The statement of :func:`instance_in_study`, built once per access (the UIDs are bound per call)."""
    return _scoped(select(*_COLUMNS, *_STUDY_COLUMNS), bindparam("study"), bindparam("series"), bindparam("sop"),
                   access).limit(1)


def instance_in_study(session: Session, access: Access, study: str, series: str,
                      sop: str) -> tuple[StudyRef, StoredInstance] | None:
    """One instance and its study in one query (frames, bulk data): what :func:`locate_study`
    then :func:`instances` would find, under the same access filter.

    Returns
    -------
    (StudyRef, StoredInstance) or None
        None when nothing visible matches; the caller then tells "no such study" (404) from
        "another patient's study" (403) from "no such instance" (404) with the two queries.
    """
    row = session.connection().execute(_instance_in_study_stmt(access),
                                       {"study": study, "series": series, "sop": sop}).first()
    if row is None:
        return None
    cut = len(_COLUMNS)
    return StudyRef(*row[cut:]), StoredInstance(*row[:cut])


def metadata(session: Session, access: Access, study: str, series: str | None = None,
             sop: str | None = None) -> list[tuple[int, str, bytes]]:
    """(pk, digest, DICOM JSON) of each visible instance in scope, in retrieval order."""
    stmt = _scoped(select(Instance.pk, Instance.digest, Instance.dicom_json), study, series, sop, access)
    return [(row[0], row[1], row[2]) for row in session.execute(stmt)]


class DeletedInstance(NamedTuple):
    """What :func:`delete_instances` removed of one instance."""

    blob_key: str
    sop_uid: str
    sop_class_uid: str
    org: str


def delete_instances(session: Session, access: Access, study: str, series: str | None = None,
                     sop: str | None = None) -> list[DeletedInstance]:
    """Delete the visible instances in scope, then their series and study if left empty.

    The foreign keys do not cascade (migration 0003): children are deleted here, explicitly,
    and a parent only when it has no child left, even one a concurrent STOW is inserting.

    Runs in the caller's write transaction; the caller deletes the returned blobs once it has
    committed (a crash in between leaves orphan blobs for the sweep, never a dangling row).

    Returns
    -------
    list of DeletedInstance
        The deleted instances (their blobs still to delete); empty when nothing matched.
    """
    found = session.execute(_scoped(select(Instance.pk, Instance.blob_key, Instance.series_pk, Instance.sop_uid,
                                           Instance.sop_class_uid, Study.org),
                                     study, series, sop, access)).all()
    if not found:
        return []
    series_pks = {row.series_pk for row in found}
    pks = [row.pk for row in found]
    for start in range(0, len(pks), 500):
        session.execute(delete(Instance).where(Instance.pk.in_(pks[start:start + 500])))
    study_pks = set(session.scalars(select(Series.study_pk).where(Series.pk.in_(series_pks))))
    has_instances = exists().where(Instance.series_pk == Series.pk)
    for pk in sorted(series_pks):
        _delete_if_empty(session, delete(Series).where(Series.pk == pk, ~has_instances), "series")
    has_series = exists().where(Series.study_pk == Study.pk)
    for pk in sorted(study_pks):
        _delete_if_empty(session, delete(Study).where(Study.pk == pk, ~has_series), "study")
    return [DeletedInstance(row.blob_key, row.sop_uid, row.sop_class_uid, row.org) for row in found]


def _delete_if_empty(session: Session, stmt: Delete, level: str) -> None:
    """Run ``stmt`` (a series or study without children) in a SAVEPOINT; keep the row if it has children now.

    The foreign keys do not cascade: when a concurrent STOW inserted a child the statement did
    not see (PostgreSQL, READ COMMITTED), the database refuses the delete once that STOW
    committed, and the parent stays with its new child.
    """
    try:
        with session.begin_nested():
            session.execute(stmt)
    except IntegrityError:
        log.info("kept a %s a concurrent store has just written into", level)
