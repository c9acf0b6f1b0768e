"""Write one parsed instance into the study / series / instance rows.

Study and series rows are created on first sight with ``INSERT ... ON CONFLICT DO NOTHING`` so
that concurrent STOW requests for the same study neither fail nor duplicate rows; the first
instance of a study or series provides its attributes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from drimhub.store.models import Instance, Series, Study


class Outcome(enum.Enum):
    """What happened to one instance."""

    STORED = "stored"
    #: The same SOP Instance UID with the same bytes was already there: nothing changed.
    ALREADY_STORED = "already-stored"
    #: The same SOP Instance UID with other bytes replaced the stored one (policy overwrite).
    REPLACED = "replaced"
    #: The same SOP Instance UID with other bytes is already stored (policy reject).
    DUPLICATE = "duplicate"
    #: The instance's series already belongs to another study.
    SERIES_IN_OTHER_STUDY = "series-in-other-study"


@dataclass(frozen=True)
class InstanceRow:
    """Plain values of one instance to index (from :mod:`drimhub.dicomweb.ingest`)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    study_attrs: bytes
    series_attrs: bytes
    dicom_json: bytes
    blob_key: str
    size: int
    digest: str


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    #: Blob that is no longer referenced and may be deleted once the transaction committed.
    obsolete_blob: str | None = None


def _insert(session: Session, model: type[Any], values: dict[str, Any], key: str) -> None:
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = ins(model).values(**values).on_conflict_do_nothing(index_elements=[key])
    session.execute(stmt)


def _study_pk(session: Session, row: InstanceRow) -> int:
    pk = session.scalar(select(Study.pk).where(Study.study_uid == row.study_uid))
    if pk is None:
        _insert(session, Study, {"study_uid": row.study_uid, "attrs": row.study_attrs, **row.study}, "study_uid")
        pk = session.scalar(select(Study.pk).where(Study.study_uid == row.study_uid))
    assert pk is not None
    return pk


def _series_pk(session: Session, row: InstanceRow, study_pk: int) -> int | None:
    """Primary key of the instance's series, or None when it belongs to another study."""
    found = session.execute(select(Series.pk, Series.study_pk).where(Series.series_uid == row.series_uid)).first()
    if found is None:
        _insert(session, Series, {"series_uid": row.series_uid, "study_pk": study_pk,
                                  "attrs": row.series_attrs, **row.series}, "series_uid")
        found = session.execute(select(Series.pk, Series.study_pk).where(Series.series_uid == row.series_uid)).one()
    return found.pk if found.study_pk == study_pk else None


def find_instance(session: Session, sop_uid: str) -> tuple[str, str] | None:
    """(digest, blob key) of a stored instance, or None."""
    found = session.execute(select(Instance.digest, Instance.blob_key).where(Instance.sop_uid == sop_uid)).first()
    return (found.digest, found.blob_key) if found else None


def store_instance(session: Session, row: InstanceRow, overwrite: bool) -> StoreResult:
    """Index ``row`` in the open transaction of ``session`` (the caller commits).

    Parameters
    ----------
    session : Session
        A session in a write transaction.
    row : InstanceRow
        The instance, its blob already in place.
    overwrite : bool
        Replace a stored instance with the same SOP Instance UID and other bytes.
    """
    existing = session.execute(
        select(Instance.pk, Instance.digest, Instance.blob_key, Series.series_uid, Study.study_uid)
        .join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
        .where(Instance.sop_uid == row.sop_uid)
    ).first()
    if existing is not None:
        if existing.digest == row.digest:
            return StoreResult(Outcome.ALREADY_STORED, obsolete_blob=row.blob_key)
        same_place = (existing.series_uid, existing.study_uid) == (row.series_uid, row.study_uid)
        if not overwrite or not same_place:
            return StoreResult(Outcome.DUPLICATE, obsolete_blob=row.blob_key)
        session.execute(delete(Instance).where(Instance.pk == existing.pk))
    study_pk = _study_pk(session, row)
    series_pk = _series_pk(session, row, study_pk)
    if series_pk is None:
        return StoreResult(Outcome.SERIES_IN_OTHER_STUDY, obsolete_blob=row.blob_key)
    values = {"series_pk": series_pk, "sop_uid": row.sop_uid, "blob_key": row.blob_key, "size": row.size,
              "digest": row.digest, "dicom_json": row.dicom_json, **row.instance}
    _insert(session, Instance, values, "sop_uid")
    winner = find_instance(session, row.sop_uid)
    if winner is None or winner[1] != row.blob_key:
        # a concurrent request stored this SOP Instance UID first
        outcome = Outcome.ALREADY_STORED if winner and winner[0] == row.digest else Outcome.DUPLICATE
        return StoreResult(outcome, obsolete_blob=row.blob_key)
    if existing is not None:
        return StoreResult(Outcome.REPLACED, obsolete_blob=existing.blob_key)
    return StoreResult(Outcome.STORED)
