"""Queries behind WADO-RS and DELETE: the instance rows of a study, a series or one instance.

Rows come back as plain frozen values (:class:`StoredInstance`), so that a streamed answer
needs no session once the view has returned. Order is series number, instance number
(unnumbered last), then insertion order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, exists, select
from sqlalchemy.orm import Session

from drimhub.store.models import Instance, Series, Study


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


def _scoped(stmt: Select[Any], study: str, series: str | None, sop: str | None) -> Select[Any]:
    stmt = (stmt.join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
            .where(Study.study_uid == study))
    if series is not None:
        stmt = stmt.where(Series.series_uid == series)
    if sop is not None:
        stmt = stmt.where(Instance.sop_uid == sop)
    return stmt.order_by(Series.series_number.asc().nulls_last(), Series.pk,
                         Instance.instance_number.asc().nulls_last(), Instance.pk)


def instances(session: Session, study: str, series: str | None = None,
              sop: str | None = None) -> list[StoredInstance]:
    """Instances of a study, of one of its series, or one instance of that series.

    Parameters
    ----------
    session : Session
        A read session.
    study, series, sop : str
        The Study, Series and SOP Instance UIDs; ``series`` and ``sop`` narrow the scope.

    Returns
    -------
    list of StoredInstance
        Empty when nothing matches (unknown UID, or a series of another study).
    """
    rows = session.execute(_scoped(select(*_COLUMNS), study, series, sop)).all()
    return [StoredInstance(*row) for row in rows]


def metadata(session: Session, study: str, series: str | None = None,
             sop: str | None = None) -> list[tuple[int, str, bytes]]:
    """(pk, digest, DICOM JSON) of each instance in scope, in retrieval order."""
    stmt = _scoped(select(Instance.pk, Instance.digest, Instance.dicom_json), study, series, sop)
    return [(row[0], row[1], row[2]) for row in session.execute(stmt)]


def delete_instances(session: Session, study: str, series: str | None = None,
                     sop: str | None = None) -> list[str]:
    """Delete the instances in scope, then their series and study if left empty.

    Runs in the caller's write transaction; the caller deletes the returned blobs once it has
    committed (a crash in between leaves orphan blobs for the sweep, never a dangling row).

    Returns
    -------
    list of str
        Blob keys of the deleted instances; empty when nothing matched.
    """
    found = session.execute(_scoped(select(Instance.pk, Instance.blob_key, Instance.series_pk),
                                     study, series, sop)).all()
    if not found:
        return []
    series_pks = {row.series_pk for row in found}
    pks = [row.pk for row in found]
    for start in range(0, len(pks), 500):
        session.execute(delete(Instance).where(Instance.pk.in_(pks[start:start + 500])))
    has_instances = exists().where(Instance.series_pk == Series.pk)
    study_pks = set(session.scalars(select(Series.study_pk).where(Series.pk.in_(series_pks))))
    session.execute(delete(Series).where(Series.pk.in_(series_pks), ~has_instances))
    has_series = exists().where(Series.study_pk == Study.pk)
    session.execute(delete(Study).where(Study.pk.in_(study_pks), ~has_series))
    return [row.blob_key for row in found]
